//! Node-to-node networking: what crosses the wire between nodes.
//!
//! - `frame`: the length-delimited wire format, with a decoder that treats
//!   every byte as hostile (fuzzed: `host/fuzz`, target `frame_decoder`).
//! - `auth`: mutual authentication of two nodes over a fresh connection (an
//!   HMAC-SHA256 challenge over a shared cluster secret; the secret never
//!   travels), as an I/O-free state machine.
//!
//! The transport, overlays, channels and the node process build on these.

pub mod auth;
pub mod frame;
