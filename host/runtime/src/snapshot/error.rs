//! Why a snapshot could not be taken, written or restored. Each variant's
//! doc says what the failure did to state: none leaves a reactor half
//! captured or half restored.
#![forbid(unsafe_code)]

use crate::refs::RefsError;
use reactor_types::{Address, Failure};
use snapshot_format::FormatError;

/// Why a snapshot could not be taken, written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot file problem (unreadable, corrupt, another format…).
    #[error(transparent)]
    File(#[from] FormatError),
    /// No live reactor at that address.
    #[error("no live reactor at {0}")]
    NoSuchReactor(Address),
    /// The module keeps state outside memory and globals.
    #[error("reactor {address} cannot be snapshotted: {reason}")]
    Unsupported {
        /// The reactor.
        address: Address,
        /// What its module does that snapshots cannot capture.
        reason: String,
    },
    /// An incremental snapshot without a tracked previous snapshot.
    #[error("reactor {0} has no tracked previous snapshot to take a delta on: take one with `track: true` first")]
    NoBase(Address),
    /// Page protection or a mapping failed.
    #[error("snapshot of {address} failed: {reason}")]
    Os {
        /// The reactor.
        address: Address,
        /// The system's error.
        reason: String,
    },
    /// The snapshot names a module this host has not loaded.
    #[error("the snapshot's reactor {address} runs module {module}, which is not loaded: load that module first")]
    ModuleNotLoaded {
        /// The reactor.
        address: Address,
        /// The module's SHA-256 (hex).
        module: String,
    },
    /// A reactor with that address is alive already.
    #[error("a reactor with address {0} is alive here already: restore into another runtime, or stop it first")]
    AddressInUse(Address),
    /// The snapshot's memory exceeds this host's memory cap.
    #[error("reactor {address} needs {needed} bytes of memory, over this host's cap of {cap}")]
    MemoryCap {
        /// The reactor.
        address: Address,
        /// The snapshot's memory size.
        needed: u64,
        /// The cap.
        cap: usize,
    },
    /// The snapshot does not fit the module (globals, memory).
    #[error("snapshot of {address} does not fit its module: {reason}")]
    Mismatch {
        /// The reactor.
        address: Address,
        /// What differs.
        reason: String,
    },
    /// A chain of snapshots that do not follow each other.
    #[error("snapshot chain is broken: {0}")]
    Chain(String),
    /// Page data a reactor restores from does not match its checksum. The
    /// restore goes on for the other reactors; this one is left failed
    /// with this as its cause.
    #[error("snapshot of reactor {address} is damaged: its memory page {memory_page} comes from {source}")]
    DamagedPage {
        /// The reactor.
        address: Address,
        /// The first damaged page of its memory (its offset / 4096).
        memory_page: u64,
        /// The damaged page of the file ([`FormatError::PageCorrupt`]).
        source: FormatError,
    },
    /// The snapshot carries a tag or counter of this node that the node
    /// never issued: restoring it would make the node skip (and lose) the
    /// tag space up to it. Nothing was restored and the node's counters are
    /// unchanged.
    #[error(
        "snapshot of reactor {address} carries {what} {value:#x}, beyond any tag this node could have issued: \
         {source}; refusing the restore (the file is damaged or forged, or it was taken by another node with this node id)"
    )]
    Counter {
        /// The reactor.
        address: Address,
        /// What the value is (its address, its correlation counter, a held
        /// blob's tag).
        what: &'static str,
        /// The value.
        value: u64,
        /// Why it is refused.
        source: RefsError,
    },
    /// The fresh instance could not be created.
    #[error("cannot instantiate reactor {0} for restore: {1}")]
    Instantiate(Address, Failure),
    /// The shard that runs the reactor (or one of the shards of a
    /// checkpoint or restore) has stopped: its thread panicked. A restore
    /// removed what it had restored.
    #[error("shard {0} has stopped: its thread panicked, its reactors are gone")]
    ShardDown(usize),
    /// The reactor failed when the snapshot was to be taken (its lazily
    /// restored pages were damaged): nothing was captured.
    #[error("reactor {0} failed: {1}")]
    Failed(Address, String),
}

