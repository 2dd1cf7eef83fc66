//! What an overlay is to its driver: the [`Overlay`] trait, the
//! [`Action`]s it asks for, and the [`OverlayError`] it refuses input with.

use crate::node::{NodeId, NodeInfo};
use std::time::Instant;

/// What an overlay asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a control connection to this node (if there is none).
    Connect(NodeInfo),
    /// Close the connections to this node.
    Disconnect(NodeId),
    /// Send an overlay message to a node (connecting first if needed).
    Send {
        /// The node.
        to: NodeId,
        /// The encoded overlay message.
        payload: Vec<u8>,
    },
    /// A node joined (or came back with a new incarnation).
    Up(NodeInfo),
    /// A node is believed to have failed (or left).
    Down(NodeId),
    /// A broadcast reached this node.
    Deliver {
        /// The node that broadcast it.
        origin: NodeId,
        /// What it broadcast.
        payload: Vec<u8>,
    },
}

/// Why an overlay refused a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    /// The bytes are not a message of this overlay. Nothing changed; the
    /// driver closes the connection it came on.
    #[error("malformed overlay message: {0}")]
    Malformed(String),
    /// A well-formed message this node may not receive (a client relaying,
    /// a message about a node from the wrong peer). Nothing changed.
    #[error("overlay message refused: {0}")]
    Refused(String),
}

/// A membership and routing protocol. See the module docs.
pub trait Overlay: Send + std::fmt::Debug {
    /// This node.
    fn me(&self) -> &NodeInfo;

    /// Join the cluster through a node the driver has just connected to at
    /// a seed address (its identity learned by the handshake).
    fn handle_seed(&mut self, now: Instant, seed: NodeInfo);

    /// A control connection to `peer` is up (either side opened it).
    fn handle_connected(&mut self, now: Instant, peer: NodeInfo);

    /// The control connection to `peer` is gone, or could not be opened.
    fn handle_disconnected(&mut self, now: Instant, peer: NodeId);

    /// An overlay message from a connected peer.
    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError>;

    /// Time passed; called at or after [`Overlay::poll_timeout`].
    fn handle_timeout(&mut self, now: Instant);

    /// Broadcasts `payload` to every member (Plumtree in a peer-to-peer
    /// overlay, direct sends in a mesh, through the servers otherwise).
    fn broadcast(&mut self, now: Instant, payload: Vec<u8>);

    /// The next thing for the driver to do.
    fn poll_action(&mut self) -> Option<Action>;

    /// When [`Overlay::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The neighbour a message for `to` goes to next: `to` itself when the
    /// overlay keeps a connection to it, a relay otherwise; `None` if `to`
    /// is not reachable now.
    fn next_hop(&self, to: NodeId) -> Option<NodeId>;

    /// The members this node believes alive, itself included.
    fn members(&self) -> Vec<NodeInfo>;

    /// The nodes this node keeps connections to.
    fn neighbours(&self) -> Vec<NodeId>;

    /// Whether messages between reactors are relayed by other nodes (their
    /// `next_hop` is not always the destination). When not, the driver
    /// accepts a message only from the node its sender's address names.
    fn relays(&self) -> bool {
        true
    }

    /// Broadcasts dropped so far because their origin's signature did not
    /// verify (see [`Origins`](super::Origins)); 0 for overlays that
    /// relay no statements of other nodes.
    fn bad_signatures(&self) -> u64 {
        0
    }
}

