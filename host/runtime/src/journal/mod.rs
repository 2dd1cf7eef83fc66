//! Journals: the record of every input a journaled (durable) reactor
//! consumed since its last snapshot — the messages it was given, what its
//! host calls returned (clocks, randomness, statuses, addresses and tags)
//! — so that the snapshot plus the journal reproduce it exactly.
//!
//! - `tap` — the per-reactor tap its host calls go through: recording
//!   results and digesting outputs, or answering from a recording in a
//!   replay.
//! - `writer` — segments on disk and the node's writer thread (group
//!   commit).
//!
//! The file format is the `journal-format` crate's.

mod tap;
mod writer;

pub use journal_format::Level;

/// Why a journaled reactor could not be brought up to date from its
/// journal after a restart. The reactor is left as restored (or not
/// started); nothing on disk was changed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A segment is damaged (not just torn at its end) or malformed.
    #[error("{file}: {source}")]
    Journal { file: String, source: journal_format::JournalError },
    /// The journal does not fit the reactor as restored, or replaying it
    /// does not give what it recorded.
    #[error("{0}")]
    Mismatch(String),
    /// The segment could not be reopened for writing.
    #[error("cannot reopen {file}: {source}")]
    Io { file: String, source: std::io::Error },
}

/// What recovering a journaled reactor did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Calls replayed.
    pub steps: u64,
    /// The step number of its next call.
    pub next_step: u64,
    /// The journal ended with its failure: replayed, it failed again.
    pub failed: bool,
    /// The reactor.
    pub address: reactor_types::Address,
    /// The replies its replayed calls made, to whom (when asked:
    /// `Shard::take_over_journal`).
    pub replies: Vec<(u64, reactor_types::Envelope)>,
}
pub use tap::Diverged;
pub(crate) use tap::Tap;
pub use writer::{
    FailedReactor, FailureHook, JournalConfig, JournalFigures, JournalStats, Journals, ReplicaHook, Shipped, WRITTEN_GAP, Waker, first_step_of,
    reactor_dir, segment_path, segments,
};
pub(crate) use writer::{ReactorJournal, Ticket};
