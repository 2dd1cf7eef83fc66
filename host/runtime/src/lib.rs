//! The reactor runtime: wasmtime instances whose linear memory is their
//! whole state, run thread-per-core, messaging each other through rings,
//! snapshotted and restored as memory copies.
//!
//! # Layout
//! Modules form a stack; each uses only those above it in this list:
//! - `sys` — the only platform code: host-owned linear memories
//!   (mmap/mremap), page protection with its `SIGSEGV` handler and copier
//!   thread, writing snapshot pages back into memory; process memory
//!   figures.
//! - [`local_fs`] — files and directories other local users may control:
//!   bounded reads of regular files (checked on the opened descriptor),
//!   the owner and mode of every ancestor of a directory.
//! - [`journal`] — the record of what a journaled reactor consumed: the
//!   tap its host calls go through (record, or answer from a recording in
//!   a replay) and segments on disk written by one thread with group
//!   commit.
//! - [`budget`] — byte budgets: each reactor's (memory, held blobs, queued
//!   bytes) and the node's, which every byte a guest can make the host
//!   hold is charged to.
//! - [`refs`] — restart-stable tags (addresses, blob tags, correlation ids
//!   from one node-wide, optionally persisted counter) and shared immutable
//!   blobs reactors hold by tag.
//! - `guest_output` — a reactor's stdout and stderr, captured into the log
//!   line by line under a rate limit; a write never blocks.
//! - `store` — what a reactor's wasmtime store holds (`ReactorData`), and
//!   the `HostContext` trait through which host calls reach the runtime.
//! - `hostcalls` — the `reactor::*` functions guests import; every argument
//!   checked; typed errors become ABI status codes here and only here.
//! - `engine` — wasmtime engine and linker, ABI validation of modules, the
//!   load-time rewrite that exports every mutable global, the
//!   content-addressed module cache (memory and disk), epoch preemption.
//! - `reactor` — one live instance: store, memory, entry points, limits, and
//!   the readable [`Failure`] a misbehaving guest turns into.
//! - `inbox` — bounded per-reactor inboxes with backpressure.
//! - [`tree`] — the supervision tree's events (groups, monitors, links,
//!   reactors gone), handed through the port to whoever keeps the tree.
//! - `port` — the outside world's port: answers to requests, the host
//!   mailbox, the way out to other nodes.
//! - [`snapshot`] — capture (blocking, copy-on-write, incremental), the
//!   in-memory checkpoint and writing it, restore planning and filling.
//! - `links` — the single-producer rings between shards.
//! - `shard` — a [`Shard`]: one thread's reactors, routing, round-robin
//!   scheduling of batches; usable alone (single-threaded, deterministic).
//! - `runtime` — the [`Runtime`]: one shard per core, linked by the pair
//!   rings, fed from outside by a multi-producer command ring each.
//! - [`replay`] — a journaled reactor re-executed from its snapshot (or
//!   spawn) and its journal on a shard of its own, checked call by call
//!   against the recording.
//!
//! The vocabulary (addresses, envelopes, errors, failures) comes from
//! `reactor-types` and is re-exported here.
#![deny(unsafe_op_in_unsafe_fn)]

mod sys;
pub mod local_fs;
pub mod journal;
pub mod budget;
pub mod refs;
mod guest_output;
mod store;
mod hostcalls;
mod engine;
mod reactor;
mod inbox;
pub mod tree;
mod port;
pub mod snapshot;
mod links;
mod once;
mod shard;
mod runtime;
pub mod replay;

pub use engine::{CodeSource, EngineConfig, LoadError};
pub use hostcalls::GuestFault;
pub use port::{FenceHandler, MoveHandler, StandbyHandler};
pub use tree::TreeHandler;
pub use reactor::Limits;
pub use runtime::{AfterRestore, CheckpointScope, PendingCall, Runtime, RuntimeConfig, ShardDown};
pub use shard::{Engine, LoadSummary, LoadedModule, ReactorRow, Replayed, Shard, ShardConfig, ShardStats};
pub use sys::{mappings, resident_bytes};

pub use guest_sdk::abi;
pub use reactor_types::{
    Address, CallError, Envelope, Failure, KIND_FENCE, KIND_NODE, FailureReason, ModuleHash, NodeId, Outbound, ReactorState, Reply,
    RequestId, SendError, SpawnError,
};
