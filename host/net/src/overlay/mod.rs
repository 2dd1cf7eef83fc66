//! Overlays: who a node connects to, who it believes is alive, and how a
//! message reaches a node it is not connected to.
//!
//! Every overlay is a state machine that does no I/O and reads no clock
//! (the quinn-proto / foca style): the transport feeds it `handle_*(now, …)`
//! and carries out what `poll_action()` returns. The same code runs under
//! the tokio transport and under the deterministic simulator (`net::sim`).
#![forbid(unsafe_code)]

pub mod client_server;
mod codec;
pub mod hyparview;
pub mod mesh;
mod protocol;

pub use codec::MAX_ADDR_LEN;
pub use protocol::{Action, Overlay, OverlayError};

use crate::node::{NodeInfo, OverlayKind};

/// The overlay of `kind` for node `me`, with default settings and its
/// randomness seeded from `seed`.
pub fn build(kind: OverlayKind, me: NodeInfo, seed: u64) -> Box<dyn Overlay> {
    match kind {
        OverlayKind::FullMesh => Box::new(mesh::FullMesh::new(me, mesh::MeshConfig::default(), seed)),
        OverlayKind::ClientServer => {
            Box::new(client_server::ClientServer::new(me, client_server::ClientServerConfig::default(), seed))
        }
        OverlayKind::HyParView => Box::new(hyparview::HyParView::new(me, hyparview::HyParViewConfig::default(), seed)),
    }
}
