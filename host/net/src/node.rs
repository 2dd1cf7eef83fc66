//! What the cluster knows of a node, and the overlays it can run.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use reactor_types::NodeId;

/// What a node is in its overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// A member of a full mesh or a peer-to-peer overlay.
    Peer,
    /// A server of a client–server overlay: connected to every server,
    /// routes for its clients.
    Server,
    /// A client of a client–server overlay: talks only to servers.
    Client,
}

/// What the cluster knows of a node: enough to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id (unique in the cluster).
    pub id: NodeId,
    /// Its name (for people).
    pub name: String,
    /// Where it listens, `host:port`.
    pub addr: String,
    /// Its role in the overlay.
    pub role: NodeRole,
    /// Which run of the node this is: greater after each restart.
    pub incarnation: u64,
}

/// The overlays a cluster can run; chosen at run time, reactors unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OverlayKind {
    /// Every node connected to every other.
    FullMesh,
    /// Clients connect only to servers; servers form a full mesh and route.
    ClientServer,
    /// HyParView membership (active and passive views) with Plumtree
    /// broadcast; messages to non-neighbours are forwarded.
    HyParView,
}

impl fmt::Display for OverlayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayKind::FullMesh => "mesh",
            OverlayKind::ClientServer => "client-server",
            OverlayKind::HyParView => "hyparview",
        })
    }
}

/// A name that is not an overlay's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown overlay `{0}` (expected mesh, client-server or hyparview)")]
pub struct UnknownOverlay(pub String);

impl FromStr for OverlayKind {
    type Err = UnknownOverlay;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mesh" | "full-mesh" => Ok(OverlayKind::FullMesh),
            "client-server" => Ok(OverlayKind::ClientServer),
            "hyparview" | "p2p" => Ok(OverlayKind::HyParView),
            _ => Err(UnknownOverlay(s.to_owned())),
        }
    }
}
