//! HyParView membership (Leitão, Pereira, Rodrigues, DSN 2007): a small
//! symmetric *active view* of neighbours with open connections, a larger
//! *passive view* of candidates, joins by random walks, periodic shuffles
//! that keep passive views fresh, and repair from the passive view when a
//! neighbour fails.
//!
//! Departures from the paper, all about keeping the two ends of a link in
//! agreement:
//! - A node enters an active view only after the other end agreed: a
//!   `Join`, or a `Neighbor` request (also the one that ends a join's walk)
//!   is answered with a `NeighborReply`; the requester adds the link when
//!   the reply accepts it. Every request we made is *pending* until its
//!   reply, a `Disconnect`, the connection's end or `neighbor_timeout`,
//!   whichever comes first, so no request is pending for good.
//! - A reply that comes after its request timed out is still honoured: the
//!   link is added if there is room, else the other end is told
//!   `Disconnect`. A refusal for a link we hold drops it.
//! - A failed neighbour is replaced by asking passive nodes one after the
//!   other (each at most once per repair), so repair stops when every
//!   candidate refused; a periodic repair (`tick`) tries again while the
//!   active view is below half its capacity, and when that too found no
//!   taker the node re-joins through a node it knows (`Join` is never
//!   refused and starts new walks), which is also how a small island of
//!   nodes that only have each other rejoins the cluster.
//! - A dial that fails removes the node from the passive view; a
//!   connection the other end closed after a shuffle or a refusal does not.
//!
//! No I/O: inputs are `handle_*` and `join`/`tick`, outputs are the
//! [`Out`]s taken with [`Membership::take_out`].

use super::config::HyParViewConfig;
use super::wire::{Message, Priority};
use crate::node::{NodeId, NodeInfo};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// What the membership layer asks of the node.
#[derive(Debug)]
pub(super) enum Out {
    /// Send a message (connecting first if needed).
    Send(NodeId, Message),
    /// Close the connection to this node: we are done with it.
    Close(NodeId),
    /// The node entered the active view.
    Up(NodeId),
    /// The node left the active view.
    Down(NodeId),
}

/// A request of ours waiting for its `NeighborReply`.
#[derive(Clone, Copy, Debug)]
struct Pending {
    deadline: Instant,
    /// A `Join` or a high-priority `Neighbor` request: its acceptance
    /// enters the active view even when full.
    high: bool,
    /// A `Join` (its expiry does not make the node a bad candidate).
    join: bool,
}

/// The HyParView state of one node. See the module docs.
#[derive(Debug)]
pub(super) struct Membership {
    me: NodeInfo,
    config: HyParViewConfig,
    rng: Xoshiro256PlusPlus,
    /// Invariant: disjoint from `passive` and `pending`; at most
    /// `active_view_capacity` nodes; never `me`.
    active: BTreeSet<NodeId>,
    /// Invariant: at most `passive_view_capacity` nodes; never `me`.
    passive: BTreeSet<NodeId>,
    /// Requests of ours not yet answered (to passive nodes, or joins).
    pending: BTreeMap<NodeId, Pending>,
    /// Candidates asked during the current repair.
    tried: BTreeSet<NodeId>,
    /// The last repair asked every candidate and the view is still not
    /// full: only a re-join can help (an island of a few nodes whose
    /// candidates all have full views, say).
    stalled: bool,
    /// What we sent in our last shuffle (evicted first when the reply
    /// comes in).
    last_shuffle: Vec<NodeId>,
    next_shuffle: Option<Instant>,
    /// What we know of the nodes in our views and requests.
    infos: FxHashMap<NodeId, NodeInfo>,
    out: Vec<Out>,
}

/// Up to `k` distinct random elements of `items`, in random order.
fn sample(items: &mut Vec<NodeId>, k: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<NodeId> {
    let k = k.min(items.len());
    for i in 0..k {
        let j = rng.random_range(i..items.len());
        items.swap(i, j);
    }
    items.truncate(k);
    std::mem::take(items)
}

fn pick(items: &[NodeId], rng: &mut Xoshiro256PlusPlus) -> Option<NodeId> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}

impl Membership {
    pub(super) fn new(me: NodeInfo, config: HyParViewConfig, seed: u64) -> Self {
        Membership {
            me,
            config,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            active: BTreeSet::new(),
            passive: BTreeSet::new(),
            pending: BTreeMap::new(),
            tried: BTreeSet::new(),
            stalled: false,
            last_shuffle: Vec::new(),
            next_shuffle: None,
            infos: FxHashMap::default(),
            out: Vec::new(),
        }
    }

    /// The active view.
    pub(super) fn active(&self) -> &BTreeSet<NodeId> {
        &self.active
    }

    /// Whether `peer` is in a view or has a request of ours pending.
    pub(super) fn knows(&self, peer: NodeId) -> bool {
        self.active.contains(&peer) || self.passive.contains(&peer) || self.pending.contains_key(&peer)
    }

    /// Whether we need the connection to `peer` now.
    pub(super) fn engaged(&self, peer: NodeId) -> bool {
        self.active.contains(&peer) || self.pending.contains_key(&peer)
    }

    /// What we know of `peer` (if it is in a view).
    pub(super) fn info(&self, peer: NodeId) -> Option<&NodeInfo> {
        self.infos.get(&peer)
    }

    /// The outputs so far.
    pub(super) fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// Starts the shuffle timer (on the first input).
    pub(super) fn start(&mut self, now: Instant) {
        if self.next_shuffle.is_none() {
            self.next_shuffle = Some(now + self.config.shuffle_interval);
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).chain(self.next_shuffle).min()
    }

    // ---- views ------------------------------------------------------------

    /// Keeps `info` if its node is in a view or a request (and is not an
    /// older incarnation than what we have).
    fn learn(&mut self, info: &NodeInfo) {
        if self.knows(info.id) && self.infos.get(&info.id).is_none_or(|k| k.incarnation <= info.incarnation) {
            self.infos.insert(info.id, info.clone());
        }
    }

    fn remember(&mut self, peer: NodeId, info: Option<&NodeInfo>) {
        if let Some(info) = info.filter(|i| i.id == peer) {
            let newer = self.infos.get(&peer).is_none_or(|k| k.incarnation <= info.incarnation);
            if newer {
                self.infos.insert(peer, info.clone());
            }
        }
    }

    /// Drops `peer`'s info once it is in no view and no request.
    fn tidy(&mut self, peer: NodeId) {
        if !self.knows(peer) {
            self.infos.remove(&peer);
        }
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.out.push(Out::Send(to, msg));
    }

    /// Closes the connection to `peer` unless we still need it.
    fn close(&mut self, peer: NodeId) {
        if !self.engaged(peer) {
            self.out.push(Out::Close(peer));
        }
    }

    fn add_passive(&mut self, peer: NodeId, info: Option<&NodeInfo>, evict_first: &[NodeId]) {
        if peer == self.me.id || peer == 0 || self.active.contains(&peer) {
            return;
        }
        if !self.passive.contains(&peer) {
            if self.config.passive_view_capacity == 0 {
                return;
            }
            if self.passive.len() >= self.config.passive_view_capacity {
                let preferred: Vec<NodeId> =
                    evict_first.iter().copied().filter(|p| self.passive.contains(p) && !self.pending.contains_key(p)).collect();
                let victim = pick(&preferred, &mut self.rng).or_else(|| {
                    let all: Vec<NodeId> = self.passive.iter().copied().filter(|p| !self.pending.contains_key(p)).collect();
                    pick(&all, &mut self.rng)
                });
                let Some(victim) = victim else { return };
                self.passive.remove(&victim);
                self.tidy(victim);
            }
            self.passive.insert(peer);
        }
        if let Some(info) = info {
            self.learn(info);
        }
    }

    /// Puts `peer` in the active view (dropping a random neighbour with a
    /// `Disconnect` if full and `force`); whether it is in.
    fn add_active(&mut self, peer: NodeId, force: bool) -> bool {
        if peer == self.me.id || peer == 0 {
            return false;
        }
        if self.active.contains(&peer) {
            return true;
        }
        let cap = self.config.active_view_capacity;
        if cap == 0 || (self.active.len() >= cap && !force) {
            return false;
        }
        while self.active.len() >= cap {
            let all: Vec<NodeId> = self.active.iter().copied().collect();
            let Some(victim) = pick(&all, &mut self.rng) else { break };
            self.remove_active(victim);
            self.send(victim, Message::Disconnect { alive: true });
            self.add_passive(victim, None, &[]);
            self.close(victim);
        }
        self.passive.remove(&peer);
        self.pending.remove(&peer);
        self.active.insert(peer);
        self.stalled = false;
        self.out.push(Out::Up(peer));
        true
    }

    fn remove_active(&mut self, peer: NodeId) -> bool {
        let was = self.active.remove(&peer);
        if was {
            self.out.push(Out::Down(peer));
        }
        was
    }

    /// Asks `peer` to become a neighbour.
    fn request(&mut self, now: Instant, peer: NodeId, priority: Priority) {
        let deadline = now + self.config.neighbor_timeout;
        self.pending.insert(peer, Pending { deadline, high: priority == Priority::High, join: false });
        self.send(peer, Message::Neighbor { priority });
    }

    /// Asks passive nodes not yet tried in this repair to become
    /// neighbours, until active view and pending requests fill the
    /// capacity. High priority while the active view is empty (one such
    /// request at a time).
    fn refill(&mut self, now: Instant) {
        let cap = self.config.active_view_capacity;
        while self.active.len() + self.pending.len() < cap {
            let candidates: Vec<NodeId> =
                self.passive.iter().copied().filter(|p| !self.pending.contains_key(p) && !self.tried.contains(p)).collect();
            let Some(peer) = pick(&candidates, &mut self.rng) else {
                self.stalled = self.pending.is_empty();
                break;
            };
            self.tried.insert(peer);
            let high = self.active.is_empty() && !self.pending.values().any(|p| p.high);
            self.request(now, peer, if high { Priority::High } else { Priority::Low });
        }
    }

    /// Starts a repair: every passive node is a candidate again.
    fn repair(&mut self, now: Instant) {
        self.tried.clear();
        self.refill(now);
    }

    // ---- inputs -----------------------------------------------------------

    /// Joins the cluster through `contact`.
    pub(super) fn join(&mut self, now: Instant, contact: &NodeInfo) {
        let peer = contact.id;
        if peer == self.me.id || peer == 0 || self.engaged(peer) {
            return;
        }
        let deadline = now + self.config.neighbor_timeout;
        self.stalled = false;
        self.pending.insert(peer, Pending { deadline, high: true, join: true });
        self.remember(peer, Some(contact));
        self.send(peer, Message::Join { info: self.me.clone() });
    }

    /// A checked membership message from `from` (`info`: what the
    /// connection told of it).
    pub(super) fn handle_message(&mut self, now: Instant, from: NodeId, info: Option<&NodeInfo>, msg: Message) {
        match msg {
            Message::Join { info } => self.on_join(from, &info),
            Message::ForwardJoin { peer, ttl } => self.on_forward_join(now, from, peer, ttl),
            Message::Neighbor { priority } => self.on_neighbor(from, info, priority),
            Message::NeighborReply { accepted } => self.on_reply(now, from, info, accepted),
            Message::Disconnect { alive } => self.on_disconnect(now, from, info, alive),
            Message::Shuffle { origin, nodes, ttl } => self.on_shuffle(from, origin, nodes, ttl),
            Message::ShuffleReply { nodes } => {
                let sent = std::mem::take(&mut self.last_shuffle);
                for n in &nodes {
                    self.add_passive(n.id, Some(n), &sent);
                }
                self.close(from);
            }
            Message::Gossip { .. } | Message::IHave(_) | Message::Graft { .. } | Message::Prune => {}
        }
    }

    fn on_join(&mut self, from: NodeId, info: &NodeInfo) {
        // A request of ours to it, crossing this join, is answered by it.
        self.pending.remove(&from);
        if !self.active.contains(&from) {
            self.add_active(from, true);
            let ttl = self.config.active_walk_length;
            let others: Vec<NodeId> = self.active.iter().copied().filter(|&p| p != from).collect();
            for p in others {
                self.send(p, Message::ForwardJoin { peer: info.clone(), ttl });
            }
        }
        self.remember(from, Some(info));
        self.send(from, Message::NeighborReply { accepted: true });
    }

    fn on_forward_join(&mut self, now: Instant, from: NodeId, peer: NodeInfo, ttl: u16) {
        let id = peer.id;
        if id == self.me.id || self.engaged(id) {
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.remember(id, Some(&peer));
            self.request(now, id, Priority::High);
            return;
        }
        if ttl == self.config.passive_walk_length {
            self.add_passive(id, Some(&peer), &[]);
        }
        let next: Vec<NodeId> = self.active.iter().copied().filter(|&p| p != from && p != id).collect();
        match pick(&next, &mut self.rng) {
            Some(next) => self.send(next, Message::ForwardJoin { peer, ttl: ttl - 1 }),
            None => {
                self.remember(id, Some(&peer));
                self.request(now, id, Priority::High);
            }
        }
    }

    fn on_neighbor(&mut self, from: NodeId, info: Option<&NodeInfo>, priority: Priority) {
        // A request of ours to it, crossing this one, is answered by ours.
        self.pending.remove(&from);
        let room = self.active.len() < self.config.active_view_capacity;
        if self.active.contains(&from) || ((priority == Priority::High || room) && self.add_active(from, true)) {
            self.remember(from, info);
            self.send(from, Message::NeighborReply { accepted: true });
        } else {
            self.send(from, Message::NeighborReply { accepted: false });
            self.tidy(from);
            self.close(from);
        }
    }

    fn on_reply(&mut self, now: Instant, from: NodeId, info: Option<&NodeInfo>, accepted: bool) {
        let request = self.pending.remove(&from);
        if accepted {
            if self.active.contains(&from) {
                return;
            }
            let room = self.active.len() < self.config.active_view_capacity;
            let force = request.is_some_and(|r| r.high);
            if (room || force) && self.add_active(from, force) {
                self.remember(from, info);
            } else {
                // Late, or no room left: take back what it agreed to.
                self.send(from, Message::Disconnect { alive: true });
                self.add_passive(from, info, &[]);
                self.close(from);
            }
        } else {
            if self.remove_active(from) {
                self.add_passive(from, info, &[]);
                self.repair(now);
            } else if request.is_some() {
                self.refill(now);
            }
            self.tidy(from);
            self.close(from);
        }
    }

    fn on_disconnect(&mut self, now: Instant, from: NodeId, info: Option<&NodeInfo>, alive: bool) {
        let request = self.pending.remove(&from);
        if self.remove_active(from) {
            if alive {
                self.add_passive(from, info, &[]);
            }
            self.repair(now);
        } else if request.is_some() {
            self.refill(now);
        }
        self.tidy(from);
        self.close(from);
    }

    fn on_shuffle(&mut self, from: NodeId, origin: NodeInfo, nodes: Vec<NodeInfo>, ttl: u16) {
        if ttl > 0 && self.active.len() > 1 {
            let next: Vec<NodeId> = self.active.iter().copied().filter(|&p| p != from && p != origin.id).collect();
            if let Some(next) = pick(&next, &mut self.rng) {
                self.send(next, Message::Shuffle { origin, nodes, ttl: ttl - 1 });
                return;
            }
        }
        // The walk ends here: answer with as many of ours, then keep theirs.
        let want = (nodes.len() + 1).min(self.config.shuffle_limit());
        let mut passive: Vec<NodeId> = self.passive.iter().copied().filter(|&p| p != origin.id && self.infos.contains_key(&p)).collect();
        let mut reply = sample(&mut passive, want, &mut self.rng);
        if reply.len() < want {
            let mut active: Vec<NodeId> = self.active.iter().copied().filter(|&p| p != origin.id && self.infos.contains_key(&p)).collect();
            reply.extend(sample(&mut active, want - reply.len(), &mut self.rng));
        }
        let infos: Vec<NodeInfo> = reply.iter().filter_map(|p| self.infos.get(p).cloned()).collect();
        self.send(origin.id, Message::ShuffleReply { nodes: infos });
        self.add_passive(origin.id, Some(&origin), &reply);
        for n in &nodes {
            self.add_passive(n.id, Some(n), &reply);
        }
    }

    /// The connection to `peer` ended; `was_up` tells whether it had been
    /// established (else a dial failed).
    pub(super) fn handle_disconnected(&mut self, now: Instant, peer: NodeId, was_up: bool) {
        let request = self.pending.remove(&peer);
        if self.remove_active(peer) {
            // Failed: not kept as a candidate.
            self.repair(now);
        } else {
            if !was_up {
                self.passive.remove(&peer);
            }
            if request.is_some() {
                self.refill(now);
            }
        }
        self.tidy(peer);
    }

    /// `peer` came back with a new incarnation: the link to its old run is
    /// gone (no message owed to it); it stays a candidate.
    pub(super) fn handle_replaced(&mut self, now: Instant, info: &NodeInfo) {
        let peer = info.id;
        self.pending.remove(&peer);
        let was_active = self.remove_active(peer);
        if was_active {
            self.add_passive(peer, Some(info), &[]);
        }
        self.learn(info);
        if was_active {
            self.repair(now);
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<(NodeId, Pending)> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(&id, &p)| (id, p)).collect();
        for (peer, request) in &expired {
            self.pending.remove(peer);
            if !request.join {
                // Unresponsive: not a candidate any more.
                self.passive.remove(peer);
            }
            self.tidy(*peer);
            self.close(*peer);
        }
        if !expired.is_empty() {
            self.refill(now);
        }
        if self.next_shuffle.is_some_and(|t| t <= now) {
            self.next_shuffle = Some(now + self.config.shuffle_interval);
            self.shuffle();
        }
    }

    /// Sends a sample of our views on a random walk from a random
    /// neighbour.
    fn shuffle(&mut self) {
        let all: Vec<NodeId> = self.active.iter().copied().collect();
        let Some(first) = pick(&all, &mut self.rng) else { return };
        let mut active: Vec<NodeId> = self.active.iter().copied().filter(|&p| p != first && self.infos.contains_key(&p)).collect();
        let mut passive: Vec<NodeId> = self.passive.iter().copied().filter(|p| self.infos.contains_key(p)).collect();
        let mut nodes = sample(&mut active, self.config.shuffle_active, &mut self.rng);
        nodes.extend(sample(&mut passive, self.config.shuffle_passive, &mut self.rng));
        let infos: Vec<NodeInfo> = nodes.iter().filter_map(|p| self.infos.get(p).cloned()).collect();
        self.last_shuffle = nodes;
        let msg = Message::Shuffle { origin: self.me.clone(), nodes: infos, ttl: self.config.shuffle_walk_length };
        self.send(first, msg);
    }

    /// Whether to re-join through some node we know: no request pending
    /// and the active view empty, or below half with every candidate of
    /// the last repair asked in vain.
    pub(super) fn wants_rejoin(&self) -> bool {
        self.pending.is_empty()
            && (self.active.is_empty() || (self.stalled && self.active.len() < self.config.active_view_capacity.div_ceil(2)))
    }

    /// Periodic repair: while the active view is below half its capacity
    /// and no request is pending, ask the passive view again.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.active.len() < self.config.active_view_capacity.div_ceil(2) && self.pending.is_empty() {
            self.repair(now);
        }
    }
}
