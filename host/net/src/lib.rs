//! Node-to-node networking without I/O: what crosses the wire between
//! nodes, and the protocols that decide it. Nothing here opens a socket,
//! reads a clock or spawns a task; the transport crate drives these state
//! machines over tokio, and the simulators drive them with a fake clock.
//!
//! # Layout
//! - [`node`] — [`NodeInfo`], [`NodeRole`], [`OverlayKind`]: what the
//!   cluster knows of a node, and which overlay it runs.
//! - [`frame`] — the length-delimited wire format, with a decoder that
//!   treats every byte as hostile (fuzz target `frame_decoder` in `fuzz/`).
//! - [`auth`] — mutual authentication of two nodes over a fresh connection
//!   (an HMAC-SHA256 challenge over a shared cluster secret; the secret
//!   never travels); the plaintext mode, kept for `--insecure-plaintext`.
//! - [`secure`] — the default: every connection encrypted and authenticated
//!   with Noise `XXpsk3` (the cluster secret as pre-shared key, a static
//!   X25519 key per node bound to its node id by a [`secure::Keyring`]), and
//!   the record layer frames travel in after the handshake.
//! - [`locate`] — where reactors live: the location notices and fences
//!   nodes exchange when a reactor moves, as hostile bytes.
//! - [`overlay`] — the membership and routing protocols (full mesh,
//!   client–server, HyParView + Plumtree) behind one [`overlay::Overlay`]
//!   trait.
//! - [`reliable`] — per-stream sequence numbers, acks, retransmission and
//!   de-duplication; [`causal`] — causal order of point-to-point messages
//!   (matrix clocks); [`fault`] — the interposition pipeline (tracing,
//!   seeded fault injection, replayable schedules).
//! - `sim` (feature `sim`, and in this crate's tests) — whole clusters of
//!   overlays run deterministically: fake clock, latency, crashes,
//!   partitions, overhead counts. `chansim` (tests only) does the same for
//!   reliable and causal channels under faults.
//!
//! Modules form a stack: `node`, `frame` at the bottom; `auth`, `reliable`,
//! `secure` (over `auth`), `causal`, `fault`, `overlay` over them; the simulators on top.
#![forbid(unsafe_code)]

pub mod auth;
pub mod causal;
#[cfg(test)]
mod chansim;
pub mod fault;
pub mod frame;
pub mod locate;
pub mod node;
pub mod overlay;
pub mod reliable;
pub mod secure;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use node::{NodeId, NodeInfo, NodeRole, OverlayKind, UnknownOverlay};
