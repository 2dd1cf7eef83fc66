//! The native host of the reactor sandbox.
//!
//! A *reactor* is an actor whose whole state is one WebAssembly linear
//! memory. This crate loads reactor modules, runs thousands of reactors as
//! isolated wasmtime instances, and moves messages between them.
//!
//! # Layout
//! - `engine` — wasmtime engine and linker, ABI validation of modules, the
//!   content-addressed module cache (memory and disk), epoch preemption.
//! - `reactor` — one live instance: store, memory, entry points, limits, and
//!   the readable [`Failure`] a misbehaving guest turns into.
//! - `hostcalls` — the `reactor::*` functions guests import; every argument
//!   checked.
//! - `inbox` — bounded per-reactor inboxes with backpressure.
//! - `shard` — a [`Shard`]: one thread's reactors, routing, round-robin
//!   scheduling of batches; usable alone (single-threaded, deterministic).
//! - `runtime` — the [`Runtime`]: one shard per core, linked by
//!   single-producer rings per ordered pair of shards, fed from outside by a
//!   multi-producer command ring each.
//! - `port` — the outside world's port: answers to requests, the host mailbox.
//! - [`refs`] — restart-stable tags (addresses, blob tags, correlation ids
//!   from one node-wide, optionally persisted counter) and shared immutable
//!   blobs reactors hold by tag.
//! - [`net`] — node-to-node networking: wire frames, authentication,
//!   overlays, reliable and causal channels, fault injection, the transport.
//! - [`node`] — a node process: runtime + transport + overlay, its
//!   directory and admin socket.
//! - [`sys`] — the only platform code: host-owned linear memories
//!   (mmap/mremap), process memory figures.
//! - `guests` — paths of the example reactors the build compiles.
//! - `cli` — the `host` command's subcommands, thin over the above.
#![deny(unsafe_op_in_unsafe_fn)]

mod engine;
mod hostcalls;
mod inbox;
pub mod net;
pub mod node;
mod port;
mod reactor;
pub mod refs;
mod runtime;
mod shard;
pub mod snapshot;
pub mod sys;

pub mod cli;
pub mod guests;

pub use engine::{CodeSource, Engine, EngineConfig, LoadError, LoadedModule, ModuleHash};
pub use hostcalls::GuestFault;
pub use reactor::{Address, Failure, FailureReason, Limits};
pub use port::Outbound;
pub use runtime::{PendingCall, Runtime, RuntimeConfig};
pub use shard::{
    CallError, Envelope, ReactorState, Reply, RequestId, SendError, Shard, ShardConfig, ShardStats, SpawnError,
};
pub use guest_sdk::abi;
pub use protocols;
