//! Plumtree broadcast (Leitão, Pereira, Rodrigues, SRDS 2007) over the
//! active view: each neighbour is *eager* (broadcasts are pushed to it in
//! full) or *lazy* (it gets batched `IHave`s naming them). A broadcast
//! received twice makes a link lazy (`Prune`); one announced by an `IHave`
//! but not received within `graft_timeout` is asked for (`Graft`), which
//! makes that link eager, and from the next announcer after `graft_retry`.
//! The link a broadcast first came on is made eager (the paper's rule; it
//! also mends a link left eager at one end only by a `Prune` and a `Graft`
//! that crossed).
//!
//! **One tree, rooted.** Every node broadcasts (announcements), and the
//! eager links form one tree that all origins share. The paper's
//! optimisation (a lazy link that offered a broadcast closer to its origin
//! replaces the eager link that delivered it) would shape that tree for
//! each origin in turn and never settle; pruning whichever copy came
//! second leaves a random spanning tree, deep and slow (its depth also
//! makes routes long). So the tree is shaped for one origin only, the
//! *root* (the member with the lowest id, which every node agrees on once
//! memberships converge): for the root's broadcasts, a neighbour that
//! offers one `optimization_threshold` hops closer to the root than our
//! *parent* (the neighbour it came from) becomes our parent (`Graft`
//! without an id tells it so; the old parent gets a `Prune`). Depth only
//! decreases, so the tree settles into a shortest-path tree of the root:
//! about `log(n)` deep. A duplicate cuts a link that is neither our parent
//! nor a child's (a neighbour that told us we are its parent), so the
//! tree's own links survive the pruning.
//!
//! Received broadcasts are kept for `message_retention` (within
//! `message_cache_bytes`) to answer grafts; their ids for
//! `message_id_retention` (at most `message_ids`) to drop duplicates.
//!
//! No I/O: inputs are `handle_*`, `broadcast`, the neighbour changes and
//! the root, outputs the [`Out`]s taken with [`Plumtree::take_out`].
//! Messages are only ever handed to it from active neighbours.

use super::config::{HyParViewConfig, MAX_IHAVES, MAX_ROUND};
use super::wire::{Bcast, IHAVE_MAX_LEN, IHave, Message, MsgId};
use crate::node::NodeId;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

/// What the broadcast layer asks of the node.
#[derive(Debug)]
pub(super) enum Out {
    /// Send this message to each of these neighbours.
    Send(Vec<NodeId>, Message),
    /// A broadcast reached us for the first time.
    Deliver(Bcast),
}

/// Ids seen recently, with the neighbour each first came from (`None`:
/// ours), oldest first out.
#[derive(Debug, Default)]
struct Seen {
    ids: FxHashMap<MsgId, Option<NodeId>>,
    order: VecDeque<(Instant, MsgId)>,
}

/// Broadcasts kept to answer grafts, oldest first out.
#[derive(Debug, Default)]
struct Cache {
    /// Id → (our distance from its origin, the broadcast).
    entries: FxHashMap<MsgId, (u16, Bcast)>,
    order: VecDeque<(Instant, MsgId)>,
    /// Invariant: the sum of the entries' weights.
    bytes: usize,
}

/// Our place in the root's tree.
#[derive(Clone, Copy, Debug)]
struct Parent {
    /// The neighbour the root's broadcasts come from.
    peer: NodeId,
    /// The root's latest broadcast, and `peer`'s round for it (its depth).
    id: MsgId,
    round: u16,
}

/// The Plumtree state of one node. See the module docs.
#[derive(Debug)]
pub(super) struct Plumtree {
    config: HyParViewConfig,
    /// Invariant: `eager` and `lazy` are disjoint; together they are the
    /// active view.
    eager: BTreeSet<NodeId>,
    lazy: BTreeSet<NodeId>,
    /// `IHave`s waiting for the next dispatch, per lazy neighbour.
    queue: BTreeMap<NodeId, Vec<IHave>>,
    dispatch_at: Option<Instant>,
    /// Broadcasts announced to us but not received: who announced them, at
    /// which round, first first.
    missing: FxHashMap<MsgId, VecDeque<(NodeId, u16)>>,
    /// When to graft each missing broadcast next. Invariant: at most one
    /// entry per key of `missing`.
    grafts: BTreeSet<(Instant, MsgId)>,
    seen: Seen,
    cache: Cache,
    /// The origin whose broadcasts shape the tree.
    root: Option<NodeId>,
    /// Our parent in the root's tree. Invariant: an active neighbour.
    parent: Option<Parent>,
    /// Neighbours whose parent we are. Invariant: active neighbours.
    children: BTreeSet<NodeId>,
    out: Vec<Out>,
}

impl Plumtree {
    pub(super) fn new(config: HyParViewConfig) -> Self {
        Plumtree {
            config,
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            queue: BTreeMap::new(),
            dispatch_at: None,
            missing: FxHashMap::default(),
            grafts: BTreeSet::new(),
            seen: Seen::default(),
            cache: Cache::default(),
            root: None,
            parent: None,
            children: BTreeSet::new(),
            out: Vec::new(),
        }
    }

    /// The outputs so far.
    pub(super) fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.grafts.first().map(|g| g.0).into_iter().chain(self.dispatch_at).min()
    }

    /// Sets the root of the tree; a new root starts a new tree shape.
    pub(super) fn set_root(&mut self, root: NodeId) {
        if self.root != Some(root) {
            self.root = Some(root);
            self.parent = None;
            self.children.clear();
        }
    }

    /// A new neighbour starts eager.
    pub(super) fn neighbor_up(&mut self, peer: NodeId) {
        self.lazy.remove(&peer);
        self.eager.insert(peer);
    }

    /// A neighbour left: forget what it announced and what we owe it.
    pub(super) fn neighbor_down(&mut self, peer: NodeId) {
        self.eager.remove(&peer);
        self.lazy.remove(&peer);
        self.queue.remove(&peer);
        self.children.remove(&peer);
        if self.parent.is_some_and(|p| p.peer == peer) {
            self.parent = None;
        }
        for announcers in self.missing.values_mut() {
            announcers.retain(|(p, _)| *p != peer);
        }
    }

    fn make_eager(&mut self, peer: NodeId) {
        if self.lazy.remove(&peer) {
            self.eager.insert(peer);
        }
    }

    /// Makes the link to `peer` lazy at both ends.
    fn prune(&mut self, peer: NodeId) {
        if self.eager.remove(&peer) {
            self.lazy.insert(peer);
        }
        self.children.remove(&peer);
        self.out.push(Out::Send(vec![peer], Message::Prune));
    }

    fn is_neighbour(&self, peer: NodeId) -> bool {
        self.eager.contains(&peer) || self.lazy.contains(&peer)
    }

    /// Whether the link to `peer` is one of the root's tree.
    fn in_tree(&self, peer: NodeId) -> bool {
        self.parent.is_some_and(|p| p.peer == peer) || self.children.contains(&peer)
    }

    /// Records a broadcast we now have at distance `round`, pushes it to the
    /// eager neighbours and queues `IHave`s for the lazy ones (but `from`).
    fn spread(&mut self, now: Instant, from: Option<NodeId>, round: u16, bcast: &Bcast) {
        let id = bcast.id();
        self.seen.insert(now + self.config.message_id_retention, id, from, self.config.message_ids);
        self.cache.insert(now + self.config.message_retention, id, round, bcast.clone(), self.config.message_cache_bytes);
        let eager: Vec<NodeId> = self.eager.iter().copied().filter(|&p| Some(p) != from).collect();
        if !eager.is_empty() {
            self.out.push(Out::Send(eager, Message::Gossip { round, bcast: bcast.clone() }));
        }
        let lazy: Vec<NodeId> = self.lazy.iter().copied().filter(|&p| Some(p) != from).collect();
        for p in lazy {
            self.queue.entry(p).or_default().push(IHave { id, round });
        }
        if !self.queue.is_empty() && self.dispatch_at.is_none() {
            self.dispatch_at = Some(now + self.config.ihave_delay);
        }
    }

    /// Broadcasts `bcast` from this node.
    pub(super) fn broadcast(&mut self, now: Instant, bcast: Bcast) {
        self.spread(now, None, 0, &bcast);
    }

    /// A checked broadcast-layer message from active neighbour `from`.
    pub(super) fn handle_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if !self.is_neighbour(from) {
            return;
        }
        match msg {
            Message::Gossip { round, bcast } => self.on_gossip(now, from, round, bcast),
            Message::IHave(list) => self.on_ihave(now, from, &list),
            Message::Graft { id, .. } => {
                self.make_eager(from);
                match id {
                    // A child of ours in the root's tree.
                    None => {
                        if self.parent.is_none_or(|p| p.peer != from) {
                            self.children.insert(from);
                        }
                    }
                    Some(id) => {
                        if let Some((round, bcast)) = self.cache.entries.get(&id) {
                            let msg = Message::Gossip { round: *round, bcast: bcast.clone() };
                            self.out.push(Out::Send(vec![from], msg));
                        }
                    }
                }
            }
            Message::Prune => {
                if self.eager.remove(&from) {
                    self.lazy.insert(from);
                }
                self.children.remove(&from);
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, now: Instant, from: NodeId, round: u16, bcast: Bcast) {
        let id = bcast.id();
        if let Some(first) = self.seen.first_from(&id) {
            // A cycle of eager links: cut one that is not the tree's.
            if !self.in_tree(from) {
                self.prune(from);
            } else if let Some(first) = first.filter(|&f| f != from && self.eager.contains(&f) && !self.in_tree(f)) {
                self.prune(first);
            }
            return;
        }
        // The paper: the link a broadcast first came on is eager.
        self.make_eager(from);
        let ours = round.saturating_add(1).min(MAX_ROUND);
        self.spread(now, Some(from), ours, &bcast);
        if Some(id.origin) == self.root {
            self.adopt(id, from, round);
        }
        if let Some(announcers) = self.missing.remove(&id) {
            self.grafts.retain(|g| g.1 != id);
            if let Some((peer, r)) = announcers.iter().min_by_key(|a| a.1).copied() {
                self.reparent(id, peer, r);
            }
        }
        self.out.push(Out::Deliver(bcast));
    }

    /// The root's broadcast `id` first came from `peer`, `round` hops from
    /// the root: `peer` is our parent (and is told so if it is new).
    fn adopt(&mut self, id: MsgId, peer: NodeId, round: u16) {
        let new = self.parent.is_none_or(|p| p.peer != peer);
        self.parent = Some(Parent { peer, id, round });
        self.children.remove(&peer);
        if new {
            self.out.push(Out::Send(vec![peer], Message::Graft { id: None, round }));
        }
    }

    /// The tree optimisation, for the root's broadcasts only: neighbour
    /// `peer` had the root's broadcast `id` at `round`, at least
    /// `optimization_threshold` hops closer to the root than our parent.
    /// Then `peer` becomes our parent and the old parent is pruned. The
    /// tree stays a tree (`peer`, closer to the root, is not below us) and
    /// our depth only decreases.
    fn reparent(&mut self, id: MsgId, peer: NodeId, round: u16) {
        let Some(threshold) = self.config.optimization_threshold else { return };
        let Some(parent) = self.parent else { return };
        if parent.id != id || peer == parent.peer || round >= parent.round || parent.round - round < threshold.max(1) || !self.is_neighbour(peer) {
            return;
        }
        self.make_eager(peer);
        self.adopt(id, peer, round);
        self.prune(parent.peer);
    }

    fn on_ihave(&mut self, now: Instant, from: NodeId, list: &[IHave]) {
        for ihave in list {
            if self.seen.first_from(&ihave.id).is_some() {
                self.reparent(ihave.id, from, ihave.round);
                continue;
            }
            match self.missing.get_mut(&ihave.id) {
                Some(announcers) => {
                    if announcers.len() < self.config.active_view_capacity.max(1) && !announcers.iter().any(|a| a.0 == from) {
                        announcers.push_back((from, ihave.round));
                    }
                }
                None => {
                    if self.missing.len() >= self.config.message_ids {
                        continue;
                    }
                    self.missing.insert(ihave.id, VecDeque::from([(from, ihave.round)]));
                    self.grafts.insert((now + self.config.graft_timeout, ihave.id));
                }
            }
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.grafts.first() {
            if at > now {
                break;
            }
            self.grafts.pop_first();
            if self.seen.first_from(&id).is_some() {
                self.missing.remove(&id);
                continue;
            }
            let next = self.missing.get_mut(&id).and_then(VecDeque::pop_front);
            match next {
                Some((peer, round)) => {
                    self.make_eager(peer);
                    self.out.push(Out::Send(vec![peer], Message::Graft { id: Some(id), round }));
                    self.grafts.insert((now + self.config.graft_retry, id));
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        if self.dispatch_at.is_some_and(|t| t <= now) {
            self.dispatch_at = None;
            let per_message = ((self.config.max_message_size.saturating_sub(16)) / IHAVE_MAX_LEN).clamp(1, MAX_IHAVES);
            for (peer, list) in std::mem::take(&mut self.queue) {
                for chunk in list.chunks(per_message) {
                    self.out.push(Out::Send(vec![peer], Message::IHave(chunk.to_vec())));
                }
            }
        }
    }

    /// Drops what outlived its retention.
    pub(super) fn expire(&mut self, now: Instant) {
        self.seen.expire(now);
        self.cache.expire(now);
    }
}

impl Seen {
    /// `Some(first sender)` if `id` was seen.
    fn first_from(&self, id: &MsgId) -> Option<Option<NodeId>> {
        self.ids.get(id).copied()
    }

    fn insert(&mut self, until: Instant, id: MsgId, from: Option<NodeId>, max: usize) {
        if self.ids.insert(id, from).is_none() {
            self.order.push_back((until, id));
        }
        while self.ids.len() > max.max(1) {
            let Some((_, old)) = self.order.pop_front() else { break };
            self.ids.remove(&old);
        }
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|e| e.0 <= now) {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

impl Cache {
    fn insert(&mut self, until: Instant, id: MsgId, round: u16, bcast: Bcast, max_bytes: usize) {
        let weight = bcast.weight();
        if self.entries.contains_key(&id) || weight > max_bytes {
            return;
        }
        self.entries.insert(id, (round, bcast));
        self.order.push_back((until, id));
        self.bytes += weight;
        while self.bytes > max_bytes {
            if !self.pop() {
                break;
            }
        }
    }

    fn pop(&mut self) -> bool {
        let Some((_, id)) = self.order.pop_front() else { return false };
        if let Some((_, b)) = self.entries.remove(&id) {
            self.bytes -= b.weight();
        }
        true
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|e| e.0 <= now) {
            self.pop();
        }
    }
}
