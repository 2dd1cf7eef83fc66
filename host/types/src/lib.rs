//! The vocabulary of the reactor host: the types every other crate of the
//! host speaks, and nothing that does work.
//!
//! # Layout
//! - [`address`] — [`Address`]: a reactor's (or a node's host's) name, a
//!   restart-stable tag `[node 16][shard 8][serial 40]`, and that layout's
//!   constants and accessors; [`NodeId`].
//! - [`module`] — [`ModuleHash`]: the SHA-256 of a module's bytes, its
//!   identity everywhere (cache, spawn references, snapshots).
//! - [`envelope`] — [`Envelope`] (a message in flight), [`Reply`],
//!   [`RequestId`].
//! - [`failure`] — [`Failure`] and [`FailureReason`]: what is left of a
//!   reactor that failed; [`ReactorState`].
//! - [`error`] — [`SendError`], [`CallError`], [`SpawnError`]: why the
//!   runtime did not take a message, answer a request or start a reactor.
//! - [`outbound`] — [`Outbound`]: the trait through which a runtime hands a
//!   message for another node to the network.
//!
//! No module here uses another except through these re-exports' types
//! (`error` names `Address` and `Failure`; `envelope` names `Address`), and
//! this crate depends on neither wasmtime nor tokio.
#![forbid(unsafe_code)]

pub mod address;
pub mod envelope;
pub mod error;
pub mod failure;
pub mod module;
pub mod outbound;

pub use address::{Address, NodeId, ParseAddressError};
pub use envelope::{Envelope, KIND_FENCE, KIND_NODE, Reply, RequestId};
pub use error::{CallError, SendError, SpawnError, error_chain};
pub use failure::{Failure, FailureReason, ReactorState};
pub use module::ModuleHash;
pub use outbound::Outbound;
