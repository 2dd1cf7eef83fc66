//! Snapshots: a reactor's whole state is its linear memory, its mutable
//! globals and a little host state, so saving it is a memory copy.
//!
//! # What a snapshot holds
//! Taken at a message boundary (between two calls into the reactor, so no
//! host frame or Wasm stack exists):
//! - the linear memory, page by page, zero pages elided;
//! - every mutable global, including ones the module does not export (the
//!   engine rewrites modules at load so each is reachable: `engine::instrument`);
//! - the host state: the reactor's address (a restart-stable tag), the
//!   messages queued in its inbox, and the tags of the shared blobs it holds.
//!   Its WASI context has no state worth keeping (stdio only, no preopened
//!   files; clocks and randomness are read from the host when asked), and the
//!   ABI has no timers. Tables cannot change after instantiation: modules
//!   whose code could change them (or that drop segments) load fine but their
//!   snapshots are refused with the reason.
//!
//! # How it is taken ([`Capture`])
//! - `Blocking`: copy the memory now (memcpy speed, zero pages skipped); the
//!   reactor waits for the copy.
//! - `Concurrent`: write-protect the memory and let the reactor run on at
//!   once; a background thread copies, and a write to a page not yet copied
//!   copies it first (`sys::protect`). The result equals the boundary state
//!   byte for byte.
//! - `Incremental`: like `Concurrent`, but only pages written since the
//!   reactor's previous snapshot, which must have been taken with
//!   `track: true` (that keeps the memory write-protected between snapshots
//!   so first writes are recorded). The result is a delta on that snapshot.
//!
//! A [`Checkpoint`] is the in-memory result (one reactor, or every reactor of
//! a shard taken at one boundary); [`Checkpoint::write`] stores it in the
//! file format of the `snapshot-format` crate (fsync + atomic rename). Shared blobs are stored
//! once per checkpoint however many reactors hold them, and restore re-links
//! every holder to one blob.
//!
//! # Restore
//! Into a fresh instance of the same module (the module hash and ABI version
//! are checked): no init entry point runs; the memory is grown to the
//! snapshot's size and filled either eagerly (copied / read) or lazily (the
//! file's pages mapped copy-on-write over the memory, read on first touch);
//! globals are set; the inbox is re-queued. A chain `full, delta, delta…`
//! restores to the same bytes as a full snapshot of the last state.
//!
//! # Layout
//! - `error`: [`SnapshotError`], what a snapshot or restore can fail with;
//! - `capture`: taking a reactor's part at a boundary ([`Capture`],
//!   [`SnapshotOptions`], the per-reactor `Tracking`), the in-memory
//!   [`Checkpoint`] and writing it;
//! - `restore`: planning a restore from a chain (full, then deltas) of
//!   checkpoints or files, and filling a fresh instance from it.

mod capture;
mod error;
mod restore;

pub use capture::{Capture, Checkpoint, Compression, SnapshotOptions, WriteReport};
pub(crate) use capture::{HostState, Tracking, capture, checkpoint_kind, record};
pub use error::SnapshotError;
pub use restore::{ChainBreak, Load, RestoreOptions, chain_break, chain_ending_at, lazy_map_budget, lazy_mapped_runs, set_lazy_map_budget};
pub(crate) use restore::{Plan, Restored};
pub use snapshot_format::{FormatError, Kind, SnapshotFile, SnapshotId};
