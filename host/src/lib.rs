//! A node of the reactor sandbox: a runtime (`reactor-runtime`) whose
//! reactors reach reactors on other nodes through the transport
//! (`reactor-transport`), in a cluster held together by an overlay
//! (`reactor-net`), with a local admin socket. The `host` binary
//! (`src/main.rs`, `src/cli/`) is thin over this and the crates below.
//!
//! # Layout
//! - [`node`] — a node process: runtime + transport + overlay, its
//!   directory and admin socket; typed [`node::NodeError`]s.
#![forbid(unsafe_code)]

pub mod node;
