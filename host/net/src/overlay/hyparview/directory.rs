//! What a node knows of the others: their [`NodeInfo`], whether they are
//! up, when they were last heard from, and the route to each.
//!
//! **Failure detection.** A node is Up once heard from (a connection, a
//! message, its announcement); it is Down when silent for the down period,
//! or when it was an active neighbour whose connection dropped and it was
//! not heard from within the lost period — never while it is an active
//! neighbour. A higher incarnation replaces a node (Down, then Up once
//! heard from). Down nodes are forgotten after `forget_after` unless a
//! view still holds them.
//!
//! **Whose word.** A node's incarnation is taken only from the node itself
//! ([`Directory::learn`]: its connection, its own messages, its verified
//! announcements). What other nodes say of it ([`Directory::hearsay`]:
//! walks, shuffles, announcements whose signature cannot be checked) can
//! introduce an unknown node, unconfirmed, or give an address to dial for
//! a known one that is not up; it never changes a confirmed incarnation
//! and never brings a node up (since commit 3f98414 the mesh does the same).
//!
//! **Routing** (DSDV's rule). Each broadcast names its origin, incarnation
//! and sequence number, and every push or `IHave` of it from a neighbour
//! carries the neighbour's distance from the origin. Per origin we keep
//! the best offer: the newest `(incarnation, seq)`, then the shortest
//! distance, and the neighbour that made it. A node's value for an origin
//! never decreases: a neighbour leaving the active view only invalidates
//! the routes through it (their value stays, so only a newer broadcast
//! replaces them). A neighbour made an offer `(v, d)` only if its own
//! value was `(v, d - 1)` or better, so along any path of next hops the
//! value strictly increases, and routes never loop.

use crate::node::{NodeId, NodeInfo};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What the directory tells the node.
#[derive(Debug)]
pub(super) enum Event {
    /// The node is up (or up again).
    Up(NodeInfo),
    /// The node is believed failed.
    Down(NodeId),
    /// The node restarted: its links to the old run are gone.
    Replaced(NodeInfo),
}

#[derive(Debug)]
struct Known {
    info: NodeInfo,
    /// `info.incarnation` came from the node itself (else from hearsay,
    /// which the node's own word replaces whatever its value).
    confirmed: bool,
    /// Reported Up (and not Down since).
    up: bool,
    /// Last time it was heard from.
    heard: Option<Instant>,
    /// Since when it is Down (for forgetting).
    down_since: Option<Instant>,
    /// Newest announcement seen from its incarnation.
    seq: u64,
    /// When its connection as an active neighbour dropped.
    lost_at: Option<Instant>,
    /// When it was first learned of (or its incarnation replaced).
    learned: Instant,
}

impl Known {
    fn new(info: NodeInfo, confirmed: bool, now: Instant) -> Self {
        Known { info, confirmed, up: false, heard: None, down_since: None, seq: 0, lost_at: None, learned: now }
    }
}

/// The best route to one origin. Invariant: `(incarnation, seq, -dist)`
/// never decreases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Route {
    incarnation: u64,
    seq: u64,
    dist: u32,
    /// The neighbour it goes through; `None` once that neighbour left.
    via: Option<NodeId>,
}

/// Timing of the failure detector (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Detection {
    pub(super) down_after: Duration,
    pub(super) lost_after: Duration,
    pub(super) forget_after: Duration,
}

/// The directory of one node. See the module docs.
#[derive(Debug)]
pub(super) struct Directory {
    me: NodeId,
    max_nodes: usize,
    known: FxHashMap<NodeId, Known>,
    routes: FxHashMap<NodeId, Route>,
    events: Vec<Event>,
}

impl Directory {
    pub(super) fn new(me: NodeId, max_nodes: usize) -> Self {
        Directory { me, max_nodes, known: FxHashMap::default(), routes: FxHashMap::default(), events: Vec::new() }
    }

    /// The events so far.
    pub(super) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// What we know of `id`.
    pub(super) fn info(&self, id: NodeId) -> Option<&NodeInfo> {
        self.known.get(&id).map(|k| &k.info)
    }

    /// Nodes believed up.
    pub(super) fn up_count(&self) -> usize {
        self.known.values().filter(|k| k.up).count()
    }

    /// The lowest id of a node believed up.
    pub(super) fn lowest_up(&self) -> Option<NodeId> {
        self.known.iter().filter(|(_, k)| k.up).map(|(&id, _)| id).min()
    }

    /// The nodes believed up, by id.
    pub(super) fn members(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.known.values().filter(|k| k.up).map(|k| k.info.clone()).collect();
        v.sort_by_key(|i| i.id);
        v
    }

    /// Nodes to re-join through: those up or never found down (all known
    /// if none), by id.
    pub(super) fn contacts(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.known.values().filter(|k| k.up || k.down_since.is_none()).map(|k| k.info.clone()).collect();
        if v.is_empty() {
            v = self.known.values().map(|k| k.info.clone()).collect();
        }
        v.sort_by_key(|i| i.id);
        v
    }

    /// Records `info` (checked by the caller), told by the node itself.
    /// `alive`: it comes from the node, now.
    pub(super) fn learn(&mut self, now: Instant, info: &NodeInfo, alive: bool) {
        let id = info.id;
        if id == self.me || id == 0 {
            return;
        }
        match self.known.get_mut(&id) {
            Some(k) if !k.confirmed => {
                // Hearsay gave way to the node's own word, whatever the
                // incarnation hearsay claimed.
                if k.info.incarnation != info.incarnation {
                    k.seq = 0;
                }
                k.info = info.clone();
                k.confirmed = true;
                if k.up {
                    self.events.push(Event::Up(info.clone()));
                }
            }
            Some(k) if info.incarnation < k.info.incarnation => return,
            Some(k) if info.incarnation > k.info.incarnation => {
                if k.up {
                    self.events.push(Event::Down(id));
                }
                *k = Known::new(info.clone(), true, now);
                self.events.push(Event::Replaced(info.clone()));
            }
            Some(k) => {
                if k.info != *info {
                    k.info = info.clone();
                }
            }
            None => {
                if self.known.len() >= self.max_nodes {
                    return;
                }
                self.known.insert(id, Known::new(info.clone(), true, now));
            }
        }
        if alive {
            self.heard(now, id);
        }
    }

    /// Records what another node said of `info.id` (checked by the
    /// caller): an unknown node is introduced, unconfirmed and not up; a
    /// known one that is not up gets the address if hearsay speaks of a
    /// newer run (its incarnation stays); a node that is up is left alone.
    /// Whether the node is worth dialling (the handshake then says which
    /// run answers).
    pub(super) fn hearsay(&mut self, now: Instant, info: &NodeInfo) -> bool {
        let id = info.id;
        if id == self.me || id == 0 {
            return false;
        }
        match self.known.get_mut(&id) {
            None => {
                if self.known.len() >= self.max_nodes {
                    return false;
                }
                self.known.insert(id, Known::new(info.clone(), false, now));
                true
            }
            Some(k) if k.up => false,
            Some(k) if !k.confirmed => {
                if info.incarnation >= k.info.incarnation {
                    k.info = info.clone();
                }
                true
            }
            Some(k) if info.incarnation > k.info.incarnation => {
                k.info.addr = info.addr.clone();
                true
            }
            Some(_) => false,
        }
    }

    /// `id` showed it is alive now.
    pub(super) fn heard(&mut self, now: Instant, id: NodeId) {
        let Some(k) = self.known.get_mut(&id) else { return };
        k.heard = Some(now);
        if !k.up {
            k.up = true;
            k.down_since = None;
            self.events.push(Event::Up(k.info.clone()));
        }
    }

    /// A message came from `id` now (refreshes, does not bring it up).
    pub(super) fn touch(&mut self, now: Instant, id: NodeId) {
        if let Some(k) = self.known.get_mut(&id) {
            k.heard = Some(now);
        }
    }

    /// `id`'s announcement `seq` arrived, verified as its own: it is up
    /// unless stale.
    pub(super) fn announced(&mut self, now: Instant, info: &NodeInfo, seq: u64) {
        self.learn(now, info, false);
        let Some(k) = self.known.get_mut(&info.id) else { return };
        if k.info.incarnation != info.incarnation || seq <= k.seq {
            return; // stale
        }
        k.seq = seq;
        self.heard(now, info.id);
    }

    /// `id` entered the active view.
    pub(super) fn neighbour_up(&mut self, now: Instant, id: NodeId) {
        self.heard(now, id);
        if let Some(k) = self.known.get_mut(&id) {
            k.lost_at = None;
        }
    }

    /// Active neighbour `id`'s connection dropped now.
    pub(super) fn lost(&mut self, now: Instant, id: NodeId) {
        if let Some(k) = self.known.get_mut(&id) {
            k.lost_at = Some(now);
        }
    }

    /// `via` left the active view: routes through it are void.
    pub(super) fn neighbour_down(&mut self, via: NodeId) {
        for r in self.routes.values_mut() {
            if r.via == Some(via) {
                r.via = None;
            }
        }
    }

    /// Active neighbour `via` is `round` hops from `origin` for broadcast
    /// `(incarnation, seq)`: take the route if better (DSDV's rule).
    pub(super) fn offer_route(&mut self, origin: NodeId, incarnation: u64, seq: u64, round: u16, via: NodeId) {
        if origin == self.me || origin == 0 || via == self.me {
            return;
        }
        let offer = Route { incarnation, seq, dist: u32::from(round) + 1, via: Some(via) };
        match self.routes.get_mut(&origin) {
            Some(r) => {
                let better = (incarnation, seq) > (r.incarnation, r.seq) || ((incarnation, seq) == (r.incarnation, r.seq) && offer.dist < r.dist);
                if better {
                    *r = offer;
                }
            }
            None => {
                if self.routes.len() < self.max_nodes {
                    self.routes.insert(origin, offer);
                }
            }
        }
    }

    /// The neighbour a message for `to` goes through (`to` not active).
    pub(super) fn next_hop(&self, to: NodeId, active: &BTreeSet<NodeId>) -> Option<NodeId> {
        self.known.get(&to).filter(|k| k.up)?;
        self.routes.get(&to)?.via.filter(|v| active.contains(v))
    }

    /// The failure detector's pass: nodes silent too long go Down (never
    /// active neighbours), Down nodes not `kept` are forgotten.
    pub(super) fn check(&mut self, now: Instant, timing: Detection, active: &BTreeSet<NodeId>, kept: impl Fn(NodeId) -> bool) {
        let mut down = Vec::new();
        let mut forget = Vec::new();
        for (&id, k) in self.known.iter_mut() {
            if k.up {
                let silent = k.heard.is_none_or(|h| now >= h + timing.down_after);
                let lost = k.lost_at.is_some_and(|l| k.heard.is_none_or(|h| h <= l) && now >= l + timing.lost_after);
                if (silent || lost) && !active.contains(&id) {
                    k.up = false;
                    k.down_since = Some(now);
                    down.push(id);
                }
            } else if now >= k.down_since.or(k.heard).unwrap_or(k.learned) + timing.forget_after && !active.contains(&id) && !kept(id) {
                forget.push(id);
            }
        }
        down.sort_unstable();
        forget.sort_unstable();
        self.events.extend(down.into_iter().map(Event::Down));
        for id in forget {
            self.known.remove(&id);
            self.routes.remove(&id);
        }
    }
}
