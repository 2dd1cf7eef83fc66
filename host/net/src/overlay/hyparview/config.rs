//! The settings of a [`HyParView`](super::HyParView) node and the bounds on
//! what a peer may send it.

use crate::frame::MAX_CONTROL_LEN;
use std::time::Duration;

/// Largest delivery round accepted (a path longer than any real one).
pub(super) const MAX_ROUND: u16 = 1024;
/// Most ids in one `IHave`.
pub(super) const MAX_IHAVES: usize = 4096;

/// Settings of a [`HyParView`](super::HyParView) node.
///
/// The membership and broadcast settings should be the same on every node
/// (a node refuses walks longer, and shuffles larger, than its own settings
/// allow).
#[derive(Clone, Debug)]
pub struct HyParViewConfig {
    /// Size of the active view: the neighbours a node keeps connections
    /// to. Default 5 (the paper's `log10(n) + 1` for n up to 10,000).
    pub active_view_capacity: usize,
    /// Size of the passive view: nodes known alive, candidates for the
    /// active view. Default 30.
    pub passive_view_capacity: usize,
    /// Hops of a `ForwardJoin` random walk (ARWL): where it ends, the new
    /// node enters an active view. Default 6.
    pub active_walk_length: u16,
    /// Remaining hops of a `ForwardJoin` at which the node it passes keeps
    /// the new node in its passive view (PRWL). Default 3.
    pub passive_walk_length: u16,
    /// Hops of a `Shuffle` random walk. Default 6.
    pub shuffle_walk_length: u16,
    /// Active-view nodes a shuffle carries. Default 3.
    pub shuffle_active: usize,
    /// Passive-view nodes a shuffle carries. Default 4.
    pub shuffle_passive: usize,
    /// Period of a node's shuffle. Default 10 s.
    pub shuffle_interval: Duration,
    /// A `Neighbor` request (or a `Join`) not answered within this long
    /// failed; the next candidate is tried. Default 500 ms.
    pub neighbor_timeout: Duration,
    /// Plumtree: after an `IHave` for a message not received, how long to
    /// wait for it before asking (`Graft`) the node that announced it.
    /// Default 80 ms.
    pub graft_timeout: Duration,
    /// Plumtree: after a `Graft`, how long to wait before asking the next
    /// node that announced the message. Default 40 ms.
    pub graft_retry: Duration,
    /// Plumtree: `IHave`s to a lazy neighbour are batched this long.
    /// Default 100 ms (announcements are frequent, and `IHave`s are most
    /// of the messages).
    pub ihave_delay: Duration,
    /// Plumtree's tree optimisation, for the root's broadcasts only (see
    /// the `plumtree` module): a neighbour that offers the root's broadcast
    /// this many hops closer to the root than our parent in the tree
    /// becomes our parent. `None`: off (the tree is whatever pruning
    /// duplicates leaves: a random spanning tree, deep). Default 1.
    pub optimization_threshold: Option<u16>,
    /// Plumtree: how long a received broadcast is kept, to answer grafts.
    /// Default 30 s.
    pub message_retention: Duration,
    /// Plumtree: how long the id of a received broadcast is kept, to drop
    /// duplicates. Default 90 s.
    pub message_id_retention: Duration,
    /// Plumtree: most bytes of broadcasts kept for grafts (the oldest go
    /// first). Default 16 MiB.
    pub message_cache_bytes: usize,
    /// Plumtree: most broadcast ids kept (the oldest go first). Default
    /// 65,536.
    pub message_ids: usize,
    /// Shortest period of a node's announcement of itself. Default 5 s.
    pub announce_interval: Duration,
    /// Announcements per second the cluster may make in all: with `n`
    /// nodes each announces every `max(announce_interval, n / budget)`
    /// seconds, so the per-node cost stops growing with the cluster
    /// (every node receives every announcement). Default 50.
    pub announce_budget: f64,
    /// A node not heard from for this long is Down; scaled up to 3.2 ×
    /// the announcement period in use. Default 16 s.
    pub down_after: Duration,
    /// An active neighbour whose connection dropped is Down if not heard
    /// from within this long. Default 7 s.
    pub lost_neighbour_after: Duration,
    /// Down nodes are forgotten after this long. Default 60 s.
    pub forget_after: Duration,
    /// A connection to a node outside the active view is closed after
    /// this long without a message. Default 3 s.
    pub idle_close: Duration,
    /// Period of the membership check and view repair. Default 1 s.
    pub tick: Duration,
    /// Largest overlay message accepted, and largest broadcast payload
    /// (less a few bytes). Default 64 KiB.
    pub max_message_size: usize,
    /// Most nodes remembered. Default 4096.
    pub max_nodes: usize,
}

impl Default for HyParViewConfig {
    fn default() -> Self {
        HyParViewConfig {
            active_view_capacity: 5,
            passive_view_capacity: 30,
            active_walk_length: 6,
            passive_walk_length: 3,
            shuffle_walk_length: 6,
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_interval: Duration::from_secs(10),
            neighbor_timeout: Duration::from_millis(500),
            graft_timeout: Duration::from_millis(80),
            graft_retry: Duration::from_millis(40),
            ihave_delay: Duration::from_millis(100),
            optimization_threshold: Some(1),
            message_retention: Duration::from_secs(30),
            message_id_retention: Duration::from_secs(90),
            message_cache_bytes: 16 << 20,
            message_ids: 1 << 16,
            announce_interval: Duration::from_secs(5),
            announce_budget: 50.0,
            down_after: Duration::from_secs(16),
            lost_neighbour_after: Duration::from_secs(7),
            forget_after: Duration::from_secs(60),
            idle_close: Duration::from_secs(3),
            tick: Duration::from_secs(1),
            max_message_size: (64 << 10).min(MAX_CONTROL_LEN),
            max_nodes: 4096,
        }
    }
}

impl HyParViewConfig {
    /// Most nodes accepted in a shuffle or a shuffle reply: twice what
    /// ours carry (the origin included), so nodes whose settings differ a
    /// little still understand each other.
    pub(super) fn shuffle_limit(&self) -> usize {
        2 * (self.shuffle_active + self.shuffle_passive + 1)
    }
}
