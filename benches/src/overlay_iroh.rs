//! The baseline of the `overlay` benchmark's HyParView figures: the
//! HyParView + Plumtree overlay as it was before it was written in
//! `reactor-net` — an adapter around `iroh_gossip::proto` (iroh-gossip
//! 0.101), the crate we did not use (its `n0-future` dependency pulls tokio
//! into an I/O-free crate). Copied from `host/net/src/overlay/hyparview.rs`
//! at the commit before the rewrite, with only what it takes to build
//! outside `reactor-net`: the codec helpers (private there) are copied
//! below, items are `pub(crate)`, a warning goes to stderr (no `tracing`
//! here), and the tests are left behind. The adapter's own notes follow.
//!
//! Peer-to-peer overlay: HyParView membership with Plumtree broadcast.
//!
//! The protocols themselves are `iroh_gossip::proto` (an I/O-less, actively
//! maintained HyParView + Plumtree) on one topic for the whole cluster, with
//! our [`NodeInfo`] (postcard) as each peer's `PeerData`. This module adapts
//! it to [`Overlay`] and adds what it lacks:
//!
//! - **Hostile input.** Every message is first decoded into a private mirror
//!   of iroh's wire types (same postcard layout) and checked: size, trailing
//!   bytes, TTLs and rounds within the configuration, list lengths, the
//!   `NodeInfo` in every `PeerData` (its id must match the peer it
//!   describes), a node's own id where it cannot be. Only then is it handed
//!   to iroh. The 32-byte topic id is left off the wire (one topic) and put
//!   back before decoding.
//! - **Directory and failure detection.** Every node broadcasts an
//!   announcement of itself (its `NodeInfo` and a sequence number) every
//!   `max(announce_interval, n / announce_budget)`, so the cluster as a
//!   whole makes at most `announce_budget` announcements a second and a
//!   node's cost stays flat as the cluster grows; `members()` is the nodes
//!   heard from recently. A node not heard from for `down_after` (at least
//!   3.2 announcement periods), or an active neighbour whose connection
//!   dropped and that is not heard from within `lost_neighbour_after` (at
//!   least a period and two ticks), is [`Action::Down`]. A higher
//!   incarnation replaces a node (Down then Up). Connections to nodes
//!   outside the active view are closed after `idle_close` without traffic.
//! - **Two iroh-gossip 0.101 leaks worked around** (see
//!   `HyParView::settle` and `HyParView::check`): a pending neighbour
//!   request is kept for good for every peer iroh *answered*, which stops
//!   it refilling its active view; and Plumtree adopts the sender of a late
//!   Prune/Graft/IHave as a peer even after it left the active view.
//! - **Routing to non-neighbours.** Broadcasts (announcements and data)
//!   carry a per-origin sequence number, and every Plumtree push or `IHave`
//!   from a neighbour carries its *round*: that neighbour's distance from
//!   the origin. Before handing them to iroh the adapter reads them and
//!   keeps, per origin, the best route: the newest sequence, then the
//!   shortest distance, and the neighbour that offered it (DSDV's rule; the
//!   `IHave`s of the lazy links reveal shorter paths than Plumtree's one
//!   shared eager tree). `next_hop(to)` is `to` when it is an active
//!   neighbour, else that neighbour if it is still active, else `None`
//!   until the next announcement (at most one period) brings a fresh
//!   route. This never loops: the neighbour had `(seq, d - 1)` or
//!   better when we took `(seq, d)` through it and routes only get better,
//!   so along any path `(seq, -distance)` strictly increases. (Falling back
//!   to older routes would break this and is not done.)
//! - **Repair gaps.** iroh refills the active view from the passive view
//!   when an active peer fails, but not after a failed dial to a passive
//!   peer; the adapter then asks it to refill (by handing it an empty
//!   shuffle reply, which only triggers a refill), also periodically while
//!   the active view is below half, and re-joins through any known node
//!   while the active view is empty.
#![forbid(unsafe_code)]

use reactor_net::frame::{MAX_CONTROL_LEN, MAX_NAME_LEN};
use reactor_net::node::{NodeId, NodeInfo};
use reactor_net::overlay::{Action, MAX_ADDR_LEN, Overlay, OverlayError};
use iroh_gossip::proto::{self as gossip, Command, Event, InEvent, OutEvent, PeerData, Scope, TopicId};
use rand::rngs::{ChaCha12Rng, Xoshiro256PlusPlus};
use rand::{RngExt, SeedableRng};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

// ---- codec helpers (private in reactor-net; copied) -------------------------

/// Decodes one overlay message, treating `bytes` as hostile: refuses more
/// than `max_len` bytes before decoding, any postcard error and trailing
/// bytes.
fn decode_message<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, OverlayError> {
    if bytes.len() > max_len {
        return Err(OverlayError::Malformed(format!("{} bytes, more than the limit {max_len}", bytes.len())));
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| OverlayError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(OverlayError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(msg)
}

/// Checks a [`NodeInfo`] received from the network.
fn check_info(info: &NodeInfo) -> Result<(), OverlayError> {
    if info.id == 0 {
        return Err(OverlayError::Refused("node id 0".into()));
    }
    if info.name.len() > MAX_NAME_LEN {
        return Err(OverlayError::Refused(format!("node name of {} bytes", info.name.len())));
    }
    if info.addr.len() > MAX_ADDR_LEN {
        return Err(OverlayError::Refused(format!("node address of {} bytes", info.addr.len())));
    }
    Ok(())
}

/// The one topic of the cluster.
const TOPIC: [u8; 32] = *b"reactor-cluster/overlay/v1\0\0\0\0\0\0";
/// Largest delivery round accepted (a path longer than any real one).
const MAX_ROUND: u16 = 1024;
/// Most ids in one `IHave`.
const MAX_IHAVES: usize = 4096;

/// Settings of a [`HyParView`] node.
#[derive(Clone, Debug)]
pub(crate) struct HyParViewConfig {
    /// iroh-gossip's settings (HyParView view sizes, walk lengths, shuffle
    /// period; Plumtree timeouts). Defaults: iroh's (active view 5, passive
    /// 30, walks 6/3, Plumtree graft timeouts 80/40 ms) except the shuffle
    /// period, 10 s (iroh: 60 s), so passive views refresh faster, and the
    /// `IHave` batching delay, 100 ms (iroh: 5 ms).
    pub(crate) proto: gossip::Config,
    /// Shortest period of a node's announcement of itself. Default 5 s.
    pub(crate) announce_interval: Duration,
    /// Announcements per second the cluster may make in all: with `n`
    /// nodes each announces every `max(announce_interval, n / budget)`
    /// seconds, so the per-node cost stops growing with the cluster
    /// (every node receives every announcement). Default 50.
    pub(crate) announce_budget: f64,
    /// A node not heard from for this long is Down; scaled up to 3.2 ×
    /// the announcement period in use. Default 16 s.
    pub(crate) down_after: Duration,
    /// An active neighbour whose connection dropped is Down if not heard
    /// from within this long. Default 7 s.
    pub(crate) lost_neighbour_after: Duration,
    /// Down nodes are forgotten after this long. Default 60 s.
    pub(crate) forget_after: Duration,
    /// A connection to a node outside the active view is closed after
    /// this long without a message. Default 3 s.
    pub(crate) idle_close: Duration,
    /// Period of the membership check and view repair. Default 1 s.
    pub(crate) tick: Duration,
    /// Largest overlay message accepted, and largest broadcast payload
    /// (less a few bytes). Default 64 KiB.
    pub(crate) max_message_size: usize,
    /// Most nodes remembered. Default 4096.
    pub(crate) max_nodes: usize,
}

impl Default for HyParViewConfig {
    fn default() -> Self {
        let mut proto = gossip::Config::default();
        proto.membership.shuffle_interval = Duration::from_secs(10);
        // Batch IHaves longer (iroh: 5 ms): announcements are frequent,
        // and IHaves are most of the messages.
        proto.broadcast.dispatch_timeout = Duration::from_millis(100);
        HyParViewConfig {
            proto,
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

// ---- wire mirror ------------------------------------------------------------
//
// The same serde shape as iroh-gossip 0.101's `proto::topic::Message<u16>`
// (whose fields are private), to check a message before iroh sees it. A test
// checks they agree on every message a simulated cluster sends.

#[derive(Debug, Serialize, Deserialize)]
enum WireMsg {
    Swarm(WireSwarm),
    Gossip(WireGossip),
}

#[derive(Debug, Serialize, Deserialize)]
enum WireSwarm {
    Join(Option<Vec<u8>>),
    ForwardJoin { peer: WirePeer, ttl: u16 },
    Shuffle { origin: NodeId, nodes: Vec<WirePeer>, ttl: u16 },
    ShuffleReply { nodes: Vec<WirePeer> },
    Neighbor { priority: WirePriority, data: Option<Vec<u8>> },
    Disconnect { alive: bool, respond: bool },
}

#[derive(Debug, Serialize, Deserialize)]
struct WirePeer {
    id: NodeId,
    data: Option<Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
enum WirePriority {
    High,
    Low,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireGossip {
    Gossip { id: [u8; 32], content: Vec<u8>, scope: WireScope },
    Prune,
    Graft { id: Option<[u8; 32]>, round: u16 },
    IHave(Vec<WireIHave>),
}

#[derive(Debug, Serialize, Deserialize)]
enum WireScope {
    Swarm(u16),
    Neighbors,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireIHave {
    id: [u8; 32],
    round: u16,
}

/// What travels in a Plumtree broadcast.
#[derive(Debug, Serialize, Deserialize)]
enum Bcast {
    /// A node announcing itself; `seq` grows with each announcement of one
    /// incarnation.
    Announce { info: NodeInfo, seq: u64 },
    /// An application broadcast; `seq` counts with the announcements'.
    Data { origin: NodeId, incarnation: u64, seq: u64, payload: Vec<u8> },
}

// ---- state -------------------------------------------------------------------

#[derive(Debug)]
struct Known {
    info: NodeInfo,
    /// Reported Up (and not Down since).
    up: bool,
    /// Last time it was heard from (announcement, message, connection).
    heard: Option<Instant>,
    /// Since when it is Down (for forgetting).
    down_since: Option<Instant>,
    /// Newest announcement seen from its incarnation.
    seq: u64,
    /// Best route: the newest broadcast of it seen, then the shortest
    /// distance to it, and the neighbour that reported that distance.
    route: Option<Route>,
    /// When its connection as an active neighbour dropped.
    lost_at: Option<Instant>,
    /// When it was first learned of (or its incarnation replaced).
    learned: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Route {
    via: NodeId,
    seq: u64,
    dist: u16,
}

/// The HyParView + Plumtree overlay. See the module docs.
#[derive(Debug)]
pub(crate) struct HyParView {
    me: NodeInfo,
    config: HyParViewConfig,
    topic: TopicId,
    state: gossip::State<NodeId, ChaCha12Rng>,
    rng: Xoshiro256PlusPlus,
    started: bool,
    /// iroh's timers, by deadline then order of scheduling.
    timers: BTreeMap<(Instant, u64), gossip::Timer<NodeId>>,
    timer_seq: u64,
    next_tick: Option<Instant>,
    next_announce: Option<Instant>,
    /// Sequence number of our broadcasts (announcements and data).
    bcast_seq: u64,
    /// Whether we announced ourselves since starting.
    announced: bool,
    last_rejoin: Option<Instant>,
    /// The active view (from iroh's neighbour events).
    active: BTreeSet<NodeId>,
    /// Nodes with a control connection now, and when it last carried a
    /// message (either way).
    connected: BTreeMap<NodeId, Instant>,
    /// Connections we closed: their `handle_disconnected` is expected.
    closing: BTreeSet<NodeId>,
    /// Peers iroh answered with a `Neighbor` message and so counts as
    /// pending for good (see [`HyParView::settle`]).
    neighbour_pending: BTreeSet<NodeId>,
    /// The peer whose `Neighbor` message iroh is handling now.
    answering: Option<NodeId>,
    known: FxHashMap<NodeId, Known>,
    /// Recent broadcasts by id: `(origin, incarnation, seq, seen)`, to read
    /// routes from `IHave`s.
    broadcast_ids: FxHashMap<[u8; 32], (NodeId, u64, u64, Instant)>,
    actions: VecDeque<Action>,
}

/// The peer of an iroh `PendingNeighborRequest` timer (its fields are
/// private; its `Debug` form names the peer).
fn pending_timer_peer(timer: &gossip::Timer<NodeId>) -> Option<NodeId> {
    let text = format!("{timer:?}");
    let start = text.find("PendingNeighborRequest(")? + "PendingNeighborRequest(".len();
    let end = start + text[start..].find(')')?;
    text[start..end].parse().ok()
}

fn decode_info(data: &[u8]) -> Option<NodeInfo> {
    let info: NodeInfo = decode_message(data, 1024).ok()?;
    check_info(&info).ok()?;
    Some(info)
}

impl HyParView {
    /// A HyParView node `me`, its randomness seeded by `seed`.
    pub(crate) fn new(me: NodeInfo, config: HyParViewConfig, seed: u64) -> Self {
        let data = PeerData::new(postcard::to_allocvec(&me).unwrap_or_default());
        let state = gossip::State::new(me.id, data, config.proto.clone(), ChaCha12Rng::seed_from_u64(seed));
        HyParView {
            me,
            topic: TopicId::from_bytes(TOPIC),
            state,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed),
            started: false,
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_tick: None,
            next_announce: None,
            bcast_seq: 0,
            announced: false,
            last_rejoin: None,
            active: BTreeSet::new(),
            connected: BTreeMap::new(),
            closing: BTreeSet::new(),
            neighbour_pending: BTreeSet::new(),
            answering: None,
            known: FxHashMap::default(),
            broadcast_ids: FxHashMap::default(),
            actions: VecDeque::new(),
            config,
        }
    }

    /// The active view (same as [`Overlay::neighbours`]).
    #[allow(dead_code)]
    pub(crate) fn active_view(&self) -> &BTreeSet<NodeId> {
        &self.active
    }

    /// The announcement period in use (see `announce_budget`).
    fn announce_period(&self) -> Duration {
        let n = self.known.values().filter(|k| k.up).count() + 1;
        let budget = if self.config.announce_budget > 0.0 { self.config.announce_budget } else { f64::INFINITY };
        self.config.announce_interval.max(Duration::from_secs_f64(n as f64 / budget))
    }

    /// The silence after which a node is Down.
    fn down_period(&self) -> Duration {
        self.config.down_after.max(self.announce_period().mul_f64(3.2))
    }

    /// Creates the topic state on the first input (iroh needs a time).
    fn start(&mut self, now: Instant, bootstrap: Vec<NodeId>) {
        if !self.started || !bootstrap.is_empty() {
            self.started = true;
            self.feed(now, InEvent::Command(self.topic, Command::Join(bootstrap)));
        }
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
    }

    fn feed(&mut self, now: Instant, event: InEvent<NodeId>) {
        let out: Vec<OutEvent<NodeId>> = self.state.handle(event, now.into(), None).collect();
        for ev in out {
            self.handle_out(now, ev);
        }
    }

    fn handle_out(&mut self, now: Instant, ev: OutEvent<NodeId>) {
        match ev {
            OutEvent::SendMessage(to, msg) => {
                if to == self.me.id {
                    return;
                }
                let Ok(bytes) = postcard::to_allocvec(&msg) else { return };
                if bytes.len() < 32 || bytes[..32] != TOPIC {
                    return;
                }
                let payload = bytes[32..].to_vec();
                if payload.starts_with(&[0, 4]) && self.answering == Some(to) {
                    // Swarm(Neighbor(..)) answering one: no reply will come.
                    self.neighbour_pending.insert(to);
                }
                self.closing.remove(&to);
                if let Some(t) = self.connected.get_mut(&to) {
                    *t = now;
                } else {
                    if let Some(k) = self.known.get(&to) {
                        self.actions.push_back(Action::Connect(k.info.clone()));
                    }
                }
                self.actions.push_back(Action::Send { to, payload });
            }
            OutEvent::ScheduleTimer(delay, timer) => {
                self.timer_seq += 1;
                self.timers.insert((now + delay, self.timer_seq), timer);
            }
            OutEvent::DisconnectPeer(peer) => {
                if peer == self.me.id {
                    return;
                }
                if self.connected.remove(&peer).is_some() {
                    self.closing.insert(peer);
                }
                self.actions.push_back(Action::Disconnect(peer));
            }
            OutEvent::PeerData(peer, data) => {
                if let Some(info) = decode_info(data.as_bytes())
                    && info.id == peer {
                        self.learn_info(now, info, false);
                    }
            }
            OutEvent::EmitEvent(_, event) => match event {
                Event::NeighborUp(peer) => {
                    self.active.insert(peer);
                    self.heard(now, peer);
                    if let Some(k) = self.known.get_mut(&peer) {
                        k.lost_at = None;
                    }
                    // Announce soon after joining, so others learn of us.
                    if !self.announced {
                        let soon = now + Duration::from_millis(self.rng.random_range(10..200));
                        self.next_announce = Some(self.next_announce.map_or(soon, |t| t.min(soon)));
                    }
                }
                Event::NeighborDown(peer) => {
                    self.active.remove(&peer);
                }
                Event::Received(msg) => self.on_broadcast(now, msg.delivered_from, &msg.content),
            },
        }
    }

    /// Records `info` (from a connection, a `PeerData` or an announcement).
    /// `alive` marks it heard from now.
    fn learn_info(&mut self, now: Instant, info: NodeInfo, alive: bool) {
        if info.id == self.me.id {
            return;
        }
        let id = info.id;
        match self.known.get_mut(&id) {
            Some(k) if info.incarnation < k.info.incarnation => return,
            Some(k) if info.incarnation > k.info.incarnation => {
                if k.up {
                    self.actions.push_back(Action::Down(id));
                }
                k.up = false;
                k.info = info;
                k.seq = 0;
                k.route = None;
                k.down_since = None;
                k.heard = None;
                k.lost_at = None;
                k.learned = now;
            }
            Some(k) => {
                if k.info.addr != info.addr || k.info.name != info.name || k.info.role != info.role {
                    k.info = info;
                }
            }
            None => {
                if self.known.len() >= self.config.max_nodes {
                    return;
                }
                self.known.insert(
                    id,
                    Known { info, up: false, heard: None, down_since: None, seq: 0, route: None, lost_at: None, learned: now },
                );
            }
        }
        if alive {
            self.heard(now, id);
        }
    }

    /// `id` showed it is alive now.
    fn heard(&mut self, now: Instant, id: NodeId) {
        let Some(k) = self.known.get_mut(&id) else { return };
        k.heard = Some(now);
        if !k.up {
            k.up = true;
            k.down_since = None;
            self.actions.push_back(Action::Up(k.info.clone()));
        }
    }

    fn on_broadcast(&mut self, now: Instant, from: NodeId, content: &[u8]) {
        let Ok(msg) = decode_message::<Bcast>(content, self.config.max_message_size) else { return };
        match msg {
            Bcast::Announce { info, seq } => {
                if info.id == self.me.id || check_info(&info).is_err() {
                    return;
                }
                let id = info.id;
                let incarnation = info.incarnation;
                self.learn_info(now, info, false);
                let Some(k) = self.known.get_mut(&id) else { return };
                if k.info.incarnation != incarnation || seq <= k.seq {
                    return; // stale
                }
                k.seq = seq;
                self.heard(now, id);
            }
            Bcast::Data { origin, incarnation, seq, payload } => {
                if origin == self.me.id {
                    return;
                }
                self.actions.push_back(Action::Deliver { origin, payload });
                let _ = (incarnation, seq, from);
            }
        }
    }

    /// Checks a message (decoded as the wire mirror) before iroh sees it.
    /// `Ok(false)`: well-formed but to be ignored.
    fn check(&self, from: NodeId, msg: &WireMsg) -> Result<bool, OverlayError> {
        let refuse = |why: String| Err(OverlayError::Refused(why));
        let m = &self.config.proto.membership;
        let peer_data = |id: NodeId, data: &Option<Vec<u8>>| -> Result<(), OverlayError> {
            match data {
                None => Ok(()),
                Some(d) => match decode_info(d) {
                    Some(info) if info.id == id => Ok(()),
                    Some(info) => Err(OverlayError::Refused(format!("peer data of node {} for node {id}", info.id))),
                    None => Err(OverlayError::Refused(format!("bad peer data for node {id}"))),
                },
            }
        };
        let nodes_limit = 2 * (m.shuffle_active_view_count + m.shuffle_passive_view_count + 1);
        match msg {
            WireMsg::Swarm(s) => match s {
                WireSwarm::Join(data) => {
                    if data.is_none() {
                        return refuse("join without node info".into());
                    }
                    peer_data(from, data)?;
                }
                WireSwarm::ForwardJoin { peer, ttl } => {
                    if *ttl > m.active_random_walk_length.0 {
                        return refuse(format!("forward-join ttl {ttl}"));
                    }
                    peer_data(peer.id, &peer.data)?;
                    if peer.id == self.me.id || peer.id == 0 {
                        return Ok(false);
                    }
                }
                WireSwarm::Shuffle { origin, nodes, ttl } => {
                    if *ttl > m.shuffle_random_walk_length.0 {
                        return refuse(format!("shuffle ttl {ttl}"));
                    }
                    if nodes.len() > nodes_limit {
                        return refuse(format!("{} nodes in a shuffle", nodes.len()));
                    }
                    if *origin == self.me.id || *origin == 0 {
                        return refuse("shuffle from ourselves".into());
                    }
                    for n in nodes {
                        peer_data(n.id, &n.data)?;
                    }
                }
                WireSwarm::ShuffleReply { nodes } => {
                    if nodes.len() > nodes_limit {
                        return refuse(format!("{} nodes in a shuffle reply", nodes.len()));
                    }
                    for n in nodes {
                        peer_data(n.id, &n.data)?;
                    }
                }
                WireSwarm::Neighbor { data, .. } => peer_data(from, data)?,
                WireSwarm::Disconnect { .. } => {}
            },
            WireMsg::Gossip(g) => match g {
                WireGossip::Gossip { content, scope, .. } => {
                    if let WireScope::Swarm(round) = scope
                        && *round > MAX_ROUND {
                            return refuse(format!("round {round}"));
                        }
                    if content.len() > self.config.max_message_size {
                        return refuse(format!("{} bytes of broadcast", content.len()));
                    }
                }
                WireGossip::Prune => {}
                WireGossip::Graft { round, .. } => {
                    if *round > MAX_ROUND {
                        return refuse(format!("round {round}"));
                    }
                }
                WireGossip::IHave(list) => {
                    if list.len() > MAX_IHAVES {
                        return refuse(format!("{} ids in an IHave", list.len()));
                    }
                    if list.iter().any(|i| i.round > MAX_ROUND) {
                        return refuse("round out of range".into());
                    }
                }
            },
        }
        // iroh-gossip 0.101 puts the sender of a Prune, Graft or IHave into
        // Plumtree's peer sets without checking it is a neighbour; one
        // arriving just after the neighbour left the active view would keep
        // it there (and its connection open) for good.
        if matches!(msg, WireMsg::Gossip(_)) && !self.active.contains(&from) {
            return Ok(false);
        }
        Ok(true)
    }

    /// A neighbour pushed a broadcast to us at `round` (its distance from
    /// the origin): remember the broadcast's id and offer the route.
    fn observe_gossip(&mut self, now: Instant, from: NodeId, id: &[u8; 32], bcast: Bcast, round: u16) {
        let (origin, incarnation, seq) = match bcast {
            Bcast::Announce { info, seq } => {
                let key = (info.id, info.incarnation, seq);
                self.learn_info(now, info, false);
                key
            }
            Bcast::Data { origin, incarnation, seq, .. } => (origin, incarnation, seq),
        };
        if self.broadcast_ids.len() < 4 * self.config.max_nodes {
            self.broadcast_ids.insert(*id, (origin, incarnation, seq, now));
        }
        self.offer_route(origin, incarnation, seq, round, from);
    }

    /// Neighbour `via` has broadcast `seq` of `origin` at distance `dist`:
    /// take it if it is newer, or as new and shorter (DSDV's rule, which
    /// keeps routes loop-free).
    fn offer_route(&mut self, origin: NodeId, incarnation: u64, seq: u64, dist: u16, via: NodeId) {
        if origin == self.me.id || !self.active.contains(&via) {
            return;
        }
        let Some(k) = self.known.get_mut(&origin) else { return };
        if k.info.incarnation != incarnation {
            return;
        }
        let offer = Route { via, seq, dist: dist.saturating_add(1) };
        let better = match k.route {
            None => true,
            Some(r) => seq > r.seq || (seq == r.seq && offer.dist < r.dist),
        };
        if better {
            k.route = Some(offer);
        }
    }

    /// Works around iroh-gossip 0.101 keeping a "pending neighbour
    /// request" for every peer it *answered* with a `Neighbor` message (no
    /// reply ever clears it); once active + pending reach the active view's
    /// capacity it stops refilling the view. For each active peer iroh
    /// answered, hand it a `Neighbor` "from" that peer: iroh takes it as
    /// the reply, clears the entry and sends nothing (the peer is already
    /// active). Requests iroh *made* are left alone: their reply comes.
    fn settle(&mut self, now: Instant) {
        if self.neighbour_pending.is_empty() {
            return;
        }
        let stale: Vec<NodeId> = self.neighbour_pending.intersection(&self.active).copied().collect();
        for peer in stale {
            self.neighbour_pending.remove(&peer);
            let wire = WireMsg::Swarm(WireSwarm::Neighbor { priority: WirePriority::Low, data: None });
            let mut bytes = TOPIC.to_vec();
            bytes.extend(postcard::to_allocvec(&wire).unwrap_or_default());
            if let Ok(msg) = postcard::from_bytes::<gossip::Message<NodeId>>(&bytes) {
                self.feed(now, InEvent::RecvMessage(peer, msg));
            }
        }
    }

    /// Asks iroh to refill its active view from its passive view (an empty
    /// shuffle reply "from ourselves" does only that).
    fn kick_refill(&mut self, now: Instant) {
        let mut bytes = TOPIC.to_vec();
        bytes.extend(postcard::to_allocvec(&WireMsg::Swarm(WireSwarm::ShuffleReply { nodes: Vec::new() })).unwrap_or_default());
        if let Ok(msg) = postcard::from_bytes::<gossip::Message<NodeId>>(&bytes) {
            self.feed(now, InEvent::RecvMessage(self.me.id, msg));
        }
    }

    fn tick(&mut self, now: Instant) {
        self.next_tick = Some(now + self.config.tick);
        // Failure detection.
        let down_after = self.down_period();
        let lost_after = self.config.lost_neighbour_after.max(self.announce_period() + self.config.tick * 2);
        let mut down = Vec::new();
        let mut forget = Vec::new();
        for (&id, k) in self.known.iter_mut() {
            if k.up {
                let silent = k.heard.is_none_or(|h| now >= h + down_after);
                let lost = k.lost_at.is_some_and(|l| k.heard.is_none_or(|h| h <= l) && now >= l + lost_after);
                if (silent || lost) && !self.active.contains(&id) {
                    k.up = false;
                    k.down_since = Some(now);
                    k.route = None;
                    down.push(id);
                }
            } else if now >= k.down_since.or(k.heard).unwrap_or(k.learned) + self.config.forget_after && !self.active.contains(&id) {
                forget.push(id);
            }
        }
        down.sort_unstable();
        forget.sort_unstable();
        for id in down {
            self.actions.push_back(Action::Down(id));
        }
        for id in forget {
            self.known.remove(&id);
        }
        let keep = self.announce_period() * 3;
        self.broadcast_ids.retain(|_, e| now < e.3 + keep);
        // Connections outside the active view that fell idle.
        let idle: Vec<NodeId> = self
            .connected
            .iter()
            .filter(|&(id, &t)| !self.active.contains(id) && now >= t + self.config.idle_close)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.connected.remove(&id);
            self.closing.insert(id);
            self.actions.push_back(Action::Disconnect(id));
        }
        // View repair.
        let cap = self.config.proto.membership.active_view_capacity;
        if self.active.is_empty() {
            let due = self.last_rejoin.is_none_or(|t| now >= t + self.config.tick * 2);
            if due {
                let mut candidates: Vec<NodeId> = self.known.iter().filter(|(_, k)| k.up || k.down_since.is_none()).map(|(&id, _)| id).collect();
                if candidates.is_empty() {
                    candidates = self.known.keys().copied().collect();
                }
                candidates.sort_unstable();
                if !candidates.is_empty() {
                    self.last_rejoin = Some(now);
                    let to = candidates[self.rng.random_range(0..candidates.len())];
                    self.feed(now, InEvent::Command(self.topic, Command::Join(vec![to])));
                }
            }
            self.kick_refill(now);
        } else if self.active.len() < cap.div_ceil(2) {
            self.kick_refill(now);
        }
    }

    fn announce(&mut self, now: Instant) {
        let base = self.announce_period();
        let jitter = Duration::from_millis(self.rng.random_range(0..=base.as_millis().max(1) as u64 / 5));
        self.next_announce = Some(now + base - base / 10 + jitter);
        if self.active.is_empty() {
            return;
        }
        self.bcast_seq += 1;
        self.announced = true;
        let msg = Bcast::Announce { info: self.me.clone(), seq: self.bcast_seq };
        let content = postcard::to_allocvec(&msg).unwrap_or_default();
        self.feed(now, InEvent::Command(self.topic, Command::Broadcast(content.into(), Scope::Swarm)));
    }
}

impl Overlay for HyParView {
    fn me(&self) -> &NodeInfo {
        &self.me
    }

    fn handle_seed(&mut self, now: Instant, seed: NodeInfo) {
        if seed.id == self.me.id || check_info(&seed).is_err() {
            return;
        }
        self.learn_info(now, seed.clone(), true);
        self.start(now, vec![seed.id]);
        self.settle(now);
    }

    fn handle_connected(&mut self, now: Instant, peer: NodeInfo) {
        self.start(now, Vec::new());
        if peer.id == self.me.id || check_info(&peer).is_err() {
            return;
        }
        self.connected.insert(peer.id, now);
        self.closing.remove(&peer.id);
        self.learn_info(now, peer, true);
    }

    fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.start(now, Vec::new());
        self.connected.remove(&peer);
        if self.closing.remove(&peer) {
            return; // we closed it
        }
        let was_active = self.active.contains(&peer);
        if was_active
            && let Some(k) = self.known.get_mut(&peer) {
                k.lost_at = Some(now);
            }
        self.neighbour_pending.remove(&peer);
        self.feed(now, InEvent::PeerDisconnected(peer));
        if !was_active && self.active.len() < self.config.proto.membership.active_view_capacity {
            // A dial to a passive peer failed: iroh forgets it but does
            // not try another.
            self.kick_refill(now);
        }
        self.settle(now);
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError> {
        if from == self.me.id {
            return Err(OverlayError::Refused("message from ourselves".into()));
        }
        let wire: WireMsg = decode_message(payload, self.config.max_message_size)?;
        // A broadcast's content must be ours (checked whoever sent it).
        let bcast = match &wire {
            WireMsg::Gossip(WireGossip::Gossip { content, .. }) => {
                let bcast: Bcast = decode_message(content, self.config.max_message_size)?;
                match &bcast {
                    Bcast::Announce { info, .. } => check_info(info)?,
                    Bcast::Data { origin: 0, .. } => return Err(OverlayError::Refused("broadcast from node 0".into())),
                    Bcast::Data { .. } => {}
                }
                Some(bcast)
            }
            _ => None,
        };
        if !self.check(from, &wire)? {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(32 + payload.len());
        bytes.extend_from_slice(&TOPIC);
        bytes.extend_from_slice(payload);
        let msg: gossip::Message<NodeId> =
            postcard::from_bytes(&bytes).map_err(|e| OverlayError::Malformed(format!("gossip message: {e}")))?;
        self.start(now, Vec::new());
        if let Some(k) = self.known.get_mut(&from) {
            k.heard = Some(now);
        }
        if let Some(t) = self.connected.get_mut(&from) {
            *t = now;
        }
        match &wire {
            WireMsg::Swarm(WireSwarm::Neighbor { .. }) => {
                self.neighbour_pending.remove(&from);
                self.answering = Some(from);
            }
            WireMsg::Swarm(WireSwarm::Disconnect { .. }) => {
                self.neighbour_pending.remove(&from);
            }
            WireMsg::Gossip(WireGossip::Gossip { id, content, scope: WireScope::Swarm(round) }) => {
                // Only a valid id names the broadcast (iroh drops others).
                if let Some(bcast) = bcast.filter(|_| blake3::hash(content).as_bytes() == id) {
                    self.observe_gossip(now, from, id, bcast, *round);
                }
            }
            WireMsg::Gossip(WireGossip::IHave(list)) => {
                for ihave in list {
                    if let Some(&(origin, incarnation, seq, _)) = self.broadcast_ids.get(&ihave.id) {
                        self.offer_route(origin, incarnation, seq, ihave.round, from);
                    }
                }
            }
            _ => {}
        }
        self.feed(now, InEvent::RecvMessage(from, msg));
        self.answering = None;
        self.settle(now);
        Ok(())
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Some(peer) = pending_timer_peer(&timer) {
                self.neighbour_pending.remove(&peer);
            }
            self.feed(now, InEvent::TimerExpired(timer));
        }
        if self.next_announce.is_some_and(|t| t <= now) {
            self.announce(now);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.settle(now);
    }

    fn broadcast(&mut self, now: Instant, payload: Vec<u8>) {
        self.start(now, Vec::new());
        if payload.len() + 64 > self.config.max_message_size {
            eprintln!("broadcast payload of {} bytes too large for the overlay; dropped", payload.len());
            return;
        }
        self.bcast_seq += 1;
        let bcast = Bcast::Data { origin: self.me.id, incarnation: self.me.incarnation, seq: self.bcast_seq, payload };
        let content = postcard::to_allocvec(&bcast).unwrap_or_default();
        self.feed(now, InEvent::Command(self.topic, Command::Broadcast(content.into(), Scope::Swarm)));
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.timers.first_key_value().map(|(k, _)| k.0), self.next_tick, self.next_announce].into_iter().flatten().min()
    }

    fn next_hop(&self, to: NodeId) -> Option<NodeId> {
        if self.active.contains(&to) {
            return Some(to);
        }
        let k = self.known.get(&to).filter(|k| k.up)?;
        k.route.map(|r| r.via).filter(|r| self.active.contains(r))
    }

    fn members(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.known.values().filter(|k| k.up).map(|k| k.info.clone()).collect();
        v.push(self.me.clone());
        v.sort_by_key(|i| i.id);
        v
    }

    fn neighbours(&self) -> Vec<NodeId> {
        self.active.iter().copied().collect()
    }
}
