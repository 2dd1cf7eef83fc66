//! What HyParView and Plumtree nodes send each other (postcard, one flat
//! enum), and the checks a message from the network passes before it
//! changes any state.
//!
//! A broadcast is named by its origin, the origin's incarnation and the
//! origin's sequence number ([`MsgId`]), all read from the broadcast
//! itself, so an id cannot disagree with its content, and an `IHave` tells
//! whose broadcast it announces (which is what routing reads from it).

use super::config::{HyParViewConfig, MAX_IHAVES, MAX_ROUND};
use crate::node::{NodeId, NodeInfo};
use crate::overlay::OverlayError;
use crate::overlay::codec::check_info;
use crate::secure::SIGNATURE_LEN;
use serde::{Deserialize, Serialize};

/// The id of a broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(super) struct MsgId {
    /// The node that broadcast it.
    pub(super) origin: NodeId,
    /// Which run of that node.
    pub(super) incarnation: u64,
    /// Its number among that run's broadcasts (from 1).
    pub(super) seq: u64,
}

/// Most bytes of one encoded [`IHave`] (varints at their longest).
pub(super) const IHAVE_MAX_LEN: usize = 3 + 10 + 10 + 3;

/// Whether a `Neighbor` request may be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Priority {
    /// From a node without neighbours, or ending a join's walk: never
    /// refused (the receiver drops a random neighbour if its view is full).
    High,
    /// Refused when the receiver's active view is full.
    Low,
}

/// An overlay message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Message {
    // ---- HyParView ----
    /// The sender joins the cluster through the receiver. Answered with a
    /// `NeighborReply`.
    Join {
        /// The sender.
        info: NodeInfo,
    },
    /// `peer` joined; the walk goes on for `ttl` more hops.
    ForwardJoin {
        /// The node that joined.
        peer: NodeInfo,
        /// Hops left.
        ttl: u16,
    },
    /// The sender asks to enter the receiver's active view.
    Neighbor {
        /// Whether it may be refused.
        priority: Priority,
    },
    /// The answer to a `Join` or a `Neighbor` request.
    NeighborReply {
        /// Whether the sender put the receiver in its active view.
        accepted: bool,
    },
    /// The sender took the receiver out of its active view.
    Disconnect {
        /// The sender stays up (the receiver may keep it as passive).
        alive: bool,
    },
    /// A sample of `origin`'s views on a random walk.
    Shuffle {
        /// The node that started the shuffle.
        origin: NodeInfo,
        /// Nodes of its views.
        nodes: Vec<NodeInfo>,
        /// Hops left.
        ttl: u16,
    },
    /// A sample of the views of the node where a shuffle's walk ended, to
    /// the shuffle's origin.
    ShuffleReply {
        /// Nodes of its views.
        nodes: Vec<NodeInfo>,
    },
    // ---- Plumtree ----
    /// A broadcast, eagerly pushed, `round` hops from its origin at the
    /// sender (0 at the origin).
    Gossip {
        /// The sender's distance from the origin.
        round: u16,
        /// The broadcast.
        bcast: Bcast,
    },
    /// Broadcasts the sender has (lazy push).
    IHave(Vec<IHave>),
    /// The sender makes the link eager again, and asks for `id` if set;
    /// without an id, it tells the receiver it is now its parent in the
    /// root's tree.
    Graft {
        /// The broadcast wanted.
        id: Option<MsgId>,
        /// The round of the `IHave` that announced it.
        round: u16,
    },
    /// The sender makes the link lazy (it got a broadcast twice).
    Prune,
}

/// One broadcast the sender of an `IHave` has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IHave {
    /// The broadcast.
    pub(super) id: MsgId,
    /// The sender's distance from its origin.
    pub(super) round: u16,
}

/// What travels in a broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Bcast {
    /// A node announcing itself; `seq` grows with each broadcast of one
    /// incarnation. `sig` is the node's Ed25519 signature of
    /// [`announce_bytes`]`(info, seq)`, or empty from a node without a
    /// signing key (`Origins::Unchecked`).
    Announce {
        /// The node.
        info: NodeInfo,
        /// Its broadcast sequence number.
        seq: u64,
        /// Its signature: [`SIGNATURE_LEN`] bytes, or none.
        sig: Vec<u8>,
    },
    /// An application broadcast; `seq` counts with the announcements'.
    Data {
        /// The node that broadcast it.
        origin: NodeId,
        /// Its incarnation.
        incarnation: u64,
        /// Its broadcast sequence number.
        seq: u64,
        /// The application's bytes.
        payload: Vec<u8>,
    },
}

impl Bcast {
    /// The broadcast's id.
    pub(super) fn id(&self) -> MsgId {
        match self {
            Bcast::Announce { info, seq, .. } => MsgId { origin: info.id, incarnation: info.incarnation, seq: *seq },
            Bcast::Data { origin, incarnation, seq, .. } => MsgId { origin: *origin, incarnation: *incarnation, seq: *seq },
        }
    }

    /// About its encoded size (for the cache's byte budget).
    pub(super) fn weight(&self) -> usize {
        32 + match self {
            Bcast::Announce { info, sig, .. } => info.name.len() + info.addr.len() + sig.len(),
            Bcast::Data { payload, .. } => payload.len(),
        }
    }
}

/// What a node signs when it announces itself: a domain tag, its
/// [`NodeInfo`] (postcard: self-delimiting) and the sequence number, so
/// a signature covers every field a receiver takes from the announcement
/// and is good for nothing else.
pub(super) fn announce_bytes(info: &NodeInfo, seq: u64) -> Vec<u8> {
    let mut b = ANNOUNCE_DOMAIN.to_vec();
    b.extend_from_slice(&crate::overlay::codec::encode_message(info));
    b.extend_from_slice(&seq.to_le_bytes());
    b
}

const ANNOUNCE_DOMAIN: &[u8] = b"reactor-net hyparview announce v1\0";

impl Message {
    /// Whether Plumtree handles it (else HyParView).
    pub(super) fn is_broadcast_layer(&self) -> bool {
        matches!(self, Message::Gossip { .. } | Message::IHave(_) | Message::Graft { .. } | Message::Prune)
    }
}

fn refuse<T>(why: String) -> Result<T, OverlayError> {
    Err(OverlayError::Refused(why))
}

/// Checks a decoded message from `from` to `me` against `config` before it
/// changes any state: walks and rounds within bounds, list lengths, every
/// [`NodeInfo`] valid, a sender's description of itself really its own.
/// `Ok(false)`: well-formed but to be ignored.
pub(super) fn check(msg: &Message, from: NodeId, me: NodeId, config: &HyParViewConfig) -> Result<bool, OverlayError> {
    let limit = config.shuffle_limit();
    match msg {
        Message::Join { info } => {
            check_info(info)?;
            if info.id != from {
                return refuse(format!("join from node {from} describing node {}", info.id));
            }
        }
        Message::ForwardJoin { peer, ttl } => {
            if *ttl > config.active_walk_length {
                return refuse(format!("forward-join ttl {ttl}"));
            }
            check_info(peer)?;
            if peer.id == me || peer.id == from {
                return Ok(false);
            }
        }
        Message::Neighbor { .. } | Message::NeighborReply { .. } | Message::Disconnect { .. } | Message::Prune => {}
        Message::Shuffle { origin, nodes, ttl } => {
            if *ttl > config.shuffle_walk_length {
                return refuse(format!("shuffle ttl {ttl}"));
            }
            if nodes.len() > limit {
                return refuse(format!("{} nodes in a shuffle", nodes.len()));
            }
            check_info(origin)?;
            if origin.id == me {
                return refuse("shuffle from ourselves".into());
            }
            nodes.iter().try_for_each(check_info)?;
        }
        Message::ShuffleReply { nodes } => {
            if nodes.len() > limit {
                return refuse(format!("{} nodes in a shuffle reply", nodes.len()));
            }
            nodes.iter().try_for_each(check_info)?;
        }
        Message::Gossip { round, bcast } => {
            if *round > MAX_ROUND {
                return refuse(format!("round {round}"));
            }
            match bcast {
                Bcast::Announce { info, sig, .. } => {
                    check_info(info)?;
                    if !sig.is_empty() && sig.len() != SIGNATURE_LEN {
                        return refuse(format!("a signature of {} bytes", sig.len()));
                    }
                }
                Bcast::Data { origin: 0, .. } => return refuse("broadcast from node 0".into()),
                Bcast::Data { .. } => {}
            }
        }
        Message::IHave(list) => {
            if list.len() > MAX_IHAVES {
                return refuse(format!("{} ids in an IHave", list.len()));
            }
            if list.iter().any(|i| i.round > MAX_ROUND) {
                return refuse("round out of range".into());
            }
            if list.iter().any(|i| i.id.origin == 0) {
                return refuse("broadcast from node 0".into());
            }
        }
        Message::Graft { round, .. } => {
            if *round > MAX_ROUND {
                return refuse(format!("round {round}"));
            }
        }
    }
    Ok(true)
}
