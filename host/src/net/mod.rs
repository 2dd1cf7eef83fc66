//! Node-to-node networking: what crosses the wire between nodes.
//!
//! - `frame`: the length-delimited wire format, with a decoder that treats
//!   every byte as hostile (fuzzed: `host/fuzz`, target `frame_decoder`).
//! - `auth`: mutual authentication of two nodes over a fresh connection (an
//!   HMAC-SHA256 challenge over a shared cluster secret; the secret never
//!   travels), as an I/O-free state machine.
//! - `overlay`: the membership and routing protocols (full mesh,
//!   client–server, HyParView + Plumtree), I/O-free state machines behind
//!   one [`overlay::Overlay`] trait; `sim` runs whole clusters of them
//!   deterministically.
//! - `reliable`: per-stream sequence numbers, acks, retransmission and
//!   de-duplication; `causal`: causal order of point-to-point messages
//!   (matrix clocks); `fault`: the interposition pipeline (tracing, seeded
//!   fault injection, replayable schedules). All I/O-free.
//! - `transport`: the tokio driver: TCP connections per channel and lane,
//!   authentication, frames, pings, and the overlay task.
#![forbid(unsafe_code)]

pub mod auth;
pub mod causal;
#[cfg(test)]
mod chansim;
pub mod fault;
pub mod frame;
pub mod overlay;
pub mod reliable;
pub mod sim;
pub mod transport;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A node's id in its cluster: the node bits of every tag it issues.
/// 0 is the id of a process that is not in a cluster.
pub type NodeId = u16;

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

impl FromStr for OverlayKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mesh" | "full-mesh" => Ok(OverlayKind::FullMesh),
            "client-server" => Ok(OverlayKind::ClientServer),
            "hyparview" | "p2p" => Ok(OverlayKind::HyParView),
            _ => Err(format!("unknown overlay `{s}` (expected mesh, client-server or hyparview)")),
        }
    }
}
