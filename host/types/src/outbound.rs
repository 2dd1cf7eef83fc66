//! The way out of a runtime to other nodes.

use crate::address::{Address, NodeId};
use crate::envelope::Envelope;
use crate::error::SendError;

/// The way out to other nodes: a node's transport implements it, and the
/// runtime hands it every message for an address whose node bits are not
/// its own. Called on shard threads, so it must not block.
pub trait Outbound: Send + Sync + std::fmt::Debug {
    /// Queues `env` for `to`, a reactor or host on another node. `Ok` once
    /// queued; [`SendError::InboxFull`] when the way to that node is backed
    /// up (the sender may retry); [`SendError::NoSuchReactor`] when no live
    /// node has that id. Nothing is queued on an error. `affinity` is the
    /// sender's partition key (0: the destination).
    fn send(&self, to: Address, env: Envelope, affinity: u64) -> Result<(), SendError>;

    /// Queues `env` for `to`, a reactor that ran on this node and moved
    /// away: towards the newest location the network knows, else `hint`
    /// (where it went from here). Forwarded messages of one reactor keep
    /// their order.
    fn forward(&self, to: Address, env: Envelope, hint: NodeId) -> Result<(), SendError>;
}
