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
use crate::secure::{SigningKey, SigningKeys};
use std::sync::Arc;

/// Whether an overlay checks that what a node broadcasts about itself
/// (HyParView's announcements, relayed by other members) comes from that
/// node.
#[derive(Clone, Debug)]
pub enum Origins {
    /// Taken as they come: any member can forge another node's
    /// announcement. For `--insecure-plaintext` (whose connections carry
    /// no signing keys) and simulations.
    Unchecked,
    /// This node signs its announcements with `key`; an announcement of
    /// another node is believed only with a valid signature by the key
    /// that node sent in its own handshake (`keys`, the keyring). One
    /// whose origin's key is not known yet is hearsay: an address to dial,
    /// never an incarnation. A bad signature drops the message (counted).
    Signed {
        /// This node's signing key.
        key: Arc<SigningKey>,
        /// The signing keys other nodes proved (the keyring).
        keys: Arc<dyn SigningKeys>,
    },
}

/// The overlay of `kind` for node `me`, with default settings, its
/// randomness seeded from `seed`, announcements authenticated as `origins`
/// says (HyParView; the other overlays take facts about a node only from
/// its own connection).
pub fn build(kind: OverlayKind, me: NodeInfo, seed: u64, origins: Origins) -> Box<dyn Overlay> {
    build_with(kind, me, seed, origins, None)
}

/// [`build`], a member whose connections dropped declared Down after
/// `suspicion` instead of the overlay's default (full mesh and
/// client–server: 3 s; HyParView: a lost active neighbour, 7 s).
pub fn build_with(kind: OverlayKind, me: NodeInfo, seed: u64, origins: Origins, suspicion: Option<std::time::Duration>) -> Box<dyn Overlay> {
    match kind {
        OverlayKind::FullMesh => {
            let mut c = mesh::MeshConfig::default();
            c.suspicion = suspicion.unwrap_or(c.suspicion);
            Box::new(mesh::FullMesh::new(me, c, seed))
        }
        OverlayKind::ClientServer => {
            let mut c = client_server::ClientServerConfig::default();
            c.suspicion = suspicion.unwrap_or(c.suspicion);
            Box::new(client_server::ClientServer::new(me, c, seed))
        }
        OverlayKind::HyParView => {
            let mut c = hyparview::HyParViewConfig::default();
            c.lost_neighbour_after = suspicion.unwrap_or(c.lost_neighbour_after);
            Box::new(hyparview::HyParView::new(me, c, seed).with_origins(origins))
        }
    }
}
