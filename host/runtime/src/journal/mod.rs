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
pub use tap::Diverged;
pub(crate) use tap::Tap;
pub use writer::{FailedReactor, FailureHook, JournalConfig, JournalFigures, JournalStats, Journals, Waker, reactor_dir, segments};
pub(crate) use writer::{ReactorJournal, Ticket};
