//! [`HyParView`]: the [`Overlay`] a node runs, made of the membership
//! layer (HyParView), the broadcast layer (Plumtree) and the directory
//! (failure detection, routes), with what ties them together: decoding
//! and checking every message before any of them sees it, connections,
//! timers, and each node's periodic announcement of itself.

use super::config::HyParViewConfig;
use super::directory::{Detection, Directory, Event};
use super::membership::{self, Membership};
use super::plumtree::{self, Plumtree};
use super::wire::{self, Bcast, Message};
use crate::node::{NodeId, NodeInfo};
use crate::overlay::codec::{check_info, decode_message, encode_message};
use crate::overlay::{Action, Origins, Overlay, OverlayError};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// The HyParView + Plumtree overlay. See the module docs.
#[derive(Debug)]
pub struct HyParView {
    me: NodeInfo,
    config: HyParViewConfig,
    membership: Membership,
    plumtree: Plumtree,
    directory: Directory,
    rng: Xoshiro256PlusPlus,
    /// Whether a first input started the timers.
    started: bool,
    next_tick: Option<Instant>,
    next_announce: Option<Instant>,
    /// Sequence number of our broadcasts (announcements and data).
    bcast_seq: u64,
    /// Whether we announced ourselves since starting.
    announced: bool,
    last_rejoin: Option<Instant>,
    /// Nodes with a control connection now, and when it last carried a
    /// message (either way).
    connected: BTreeMap<NodeId, Instant>,
    /// Connections we closed: their `handle_disconnected` is expected.
    closing: BTreeSet<NodeId>,
    actions: VecDeque<Action>,
    /// How announcements of other nodes are authenticated.
    origins: Origins,
    /// Announcements dropped for a bad signature.
    bad_signatures: u64,
    /// When we last dialled a node on hearsay (at most one dial per node
    /// per announcement period; entries older than that are dropped).
    hearsay_dials: BTreeMap<NodeId, Instant>,
}

/// Whose word an announcement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Its origin's (a valid signature, or `Origins::Unchecked`).
    Own,
    /// The origin's signing key is not known here: hearsay.
    Unknown,
    /// Not its origin's: a bad or missing signature.
    Forged,
}

impl HyParView {
    /// A HyParView node `me`, its randomness seeded by `seed`.
    pub fn new(me: NodeInfo, config: HyParViewConfig, seed: u64) -> Self {
        HyParView {
            membership: Membership::new(me.clone(), config.clone(), seed),
            plumtree: Plumtree::new(config.clone()),
            directory: Directory::new(me.id, config.max_nodes),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed),
            started: false,
            next_tick: None,
            next_announce: None,
            bcast_seq: 0,
            announced: false,
            last_rejoin: None,
            connected: BTreeMap::new(),
            closing: BTreeSet::new(),
            actions: VecDeque::new(),
            origins: Origins::Unchecked,
            bad_signatures: 0,
            hearsay_dials: BTreeMap::new(),
            me,
            config,
        }
    }

    /// Authenticates announcements as `origins` says (the default is
    /// [`Origins::Unchecked`]).
    pub fn with_origins(mut self, origins: Origins) -> Self {
        self.origins = origins;
        self
    }

    /// Announcements dropped so far for a bad signature.
    pub fn bad_signatures(&self) -> u64 {
        self.bad_signatures
    }

    /// Whose word an announcement of `info` is.
    fn origin(&self, info: &NodeInfo, seq: u64, sig: &[u8]) -> Origin {
        match &self.origins {
            Origins::Unchecked => Origin::Own,
            Origins::Signed { keys, .. } => match keys.signing_key(info.id) {
                None => Origin::Unknown,
                Some(key) if key.verify(&wire::announce_bytes(info, seq), sig) => Origin::Own,
                Some(_) => Origin::Forged,
            },
        }
    }

    /// Another node spoke of `info` (hearsay): dial it if that is worth it
    /// and not done lately, so the handshake tells who answers there.
    fn dial_hearsay(&mut self, now: Instant, info: &NodeInfo) {
        if !self.directory.hearsay(now, info) || self.connected.contains_key(&info.id) || info.addr == self.me.addr {
            return;
        }
        let period = self.announce_period();
        if self.hearsay_dials.get(&info.id).is_some_and(|&t| now < t + period) {
            return;
        }
        self.hearsay_dials.insert(info.id, now);
        let dial = self.directory.info(info.id).cloned().unwrap_or_else(|| info.clone());
        self.actions.push_back(Action::Connect(dial));
    }

    /// The active view (same as [`Overlay::neighbours`]).
    pub fn active_view(&self) -> &BTreeSet<NodeId> {
        self.membership.active()
    }

    /// The announcement period in use (see `announce_budget`).
    fn announce_period(&self) -> Duration {
        let n = self.directory.up_count() + 1;
        let budget = if self.config.announce_budget > 0.0 { self.config.announce_budget } else { f64::INFINITY };
        self.config.announce_interval.max(Duration::from_secs_f64(n as f64 / budget))
    }

    fn detection(&self) -> Detection {
        let period = self.announce_period();
        Detection {
            down_after: self.config.down_after.max(period.mul_f64(3.2)),
            lost_after: self.config.lost_neighbour_after.max(period + self.config.tick * 2),
            forget_after: self.config.forget_after,
        }
    }

    /// Starts the timers on the first input.
    fn start(&mut self, now: Instant) {
        if !self.started {
            self.started = true;
            self.membership.start(now);
            self.update_root();
            self.next_tick = Some(now + self.config.tick);
        }
    }

    /// Sends `msg` to each of `to`, encoded once.
    fn send(&mut self, now: Instant, to: &[NodeId], msg: &Message) {
        let payload = encode_message(msg);
        for &peer in to {
            if peer == self.me.id {
                continue;
            }
            self.closing.remove(&peer);
            if let Some(t) = self.connected.get_mut(&peer) {
                *t = now;
            } else if let Some(info) = self.membership.info(peer).or_else(|| self.directory.info(peer)) {
                self.actions.push_back(Action::Connect(info.clone()));
            }
            self.actions.push_back(Action::Send { to: peer, payload: payload.clone() });
        }
    }

    /// Closes our connection to `peer` (if there is one).
    fn close(&mut self, peer: NodeId) {
        if self.connected.remove(&peer).is_some() {
            self.closing.insert(peer);
            self.actions.push_back(Action::Disconnect(peer));
        }
    }

    /// Carries out what the three parts asked for, until none asks more.
    fn pump(&mut self, now: Instant) {
        loop {
            let events = self.directory.take_events();
            let changes = self.membership.take_out();
            let pushes = self.plumtree.take_out();
            if events.is_empty() && changes.is_empty() && pushes.is_empty() {
                return;
            }
            for e in events {
                match e {
                    Event::Up(info) => {
                        self.actions.push_back(Action::Up(info));
                        self.update_root();
                    }
                    Event::Down(id) => {
                        self.actions.push_back(Action::Down(id));
                        self.update_root();
                    }
                    Event::Replaced(info) => self.membership.handle_replaced(now, &info),
                }
            }
            for c in changes {
                match c {
                    membership::Out::Send(to, msg) => self.send(now, &[to], &msg),
                    membership::Out::Close(peer) => self.close(peer),
                    membership::Out::Up(peer) => {
                        self.plumtree.neighbor_up(peer);
                        self.directory.neighbour_up(now, peer);
                        // Announce soon after joining, so others learn of us.
                        if !self.announced {
                            let soon = now + Duration::from_millis(self.rng.random_range(10..200));
                            self.next_announce = Some(self.next_announce.map_or(soon, |t| t.min(soon)));
                        }
                    }
                    membership::Out::Down(peer) => {
                        self.plumtree.neighbor_down(peer);
                        self.directory.neighbour_down(peer);
                    }
                }
            }
            for p in pushes {
                match p {
                    plumtree::Out::Send(to, msg) => self.send(now, &to, &msg),
                    plumtree::Out::Deliver(bcast) => self.deliver(now, bcast),
                }
            }
        }
    }

    /// The tree's root: the member with the lowest id.
    fn update_root(&mut self) {
        let root = self.directory.lowest_up().map_or(self.me.id, |id| id.min(self.me.id));
        self.plumtree.set_root(root);
    }

    /// A broadcast reached us for the first time.
    fn deliver(&mut self, now: Instant, bcast: Bcast) {
        match bcast {
            Bcast::Announce { info, seq, sig } => {
                if info.id == self.me.id {
                    return;
                }
                match self.origin(&info, seq, &sig) {
                    Origin::Own => self.directory.announced(now, &info, seq),
                    Origin::Unknown => self.dial_hearsay(now, &info),
                    // Checked before Plumtree took it; the key may have
                    // changed since.
                    Origin::Forged => self.bad_signatures += 1,
                }
            }
            Bcast::Data { origin, payload, .. } => {
                if origin != self.me.id {
                    self.actions.push_back(Action::Deliver { origin, payload });
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.next_tick = Some(now + self.config.tick);
        let timing = self.detection();
        let membership = &self.membership;
        self.directory.check(now, timing, membership.active(), |id| membership.knows(id));
        self.plumtree.expire(now);
        // Connections we do not need that fell idle.
        let idle: Vec<NodeId> = self
            .connected
            .iter()
            .filter(|&(&id, &t)| !self.membership.engaged(id) && now >= t + self.config.idle_close)
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.close(id);
        }
        let period = self.announce_period();
        self.hearsay_dials.retain(|_, t| now < *t + period);
        // View repair: re-join through any node we know when alone, or
        // when asking the passive view did not help.
        if self.membership.wants_rejoin() {
            let due = self.last_rejoin.is_none_or(|t| now >= t + self.config.tick * 2);
            let active = self.membership.active();
            let contacts: Vec<NodeInfo> = self.directory.contacts().into_iter().filter(|c| !active.contains(&c.id)).collect();
            if due && !contacts.is_empty() {
                self.last_rejoin = Some(now);
                let contact = &contacts[self.rng.random_range(0..contacts.len())];
                self.membership.join(now, contact);
            }
        }
        self.membership.tick(now);
    }

    fn announce(&mut self, now: Instant) {
        let base = self.announce_period();
        let jitter = Duration::from_millis(self.rng.random_range(0..=base.as_millis().max(1) as u64 / 5));
        self.next_announce = Some(now + base - base / 10 + jitter);
        if self.membership.active().is_empty() {
            return;
        }
        self.bcast_seq += 1;
        self.announced = true;
        let seq = self.bcast_seq;
        let sig = match &self.origins {
            Origins::Unchecked => Vec::new(),
            Origins::Signed { key, .. } => key.sign(&wire::announce_bytes(&self.me, seq)).to_vec(),
        };
        self.plumtree.broadcast(now, Bcast::Announce { info: self.me.clone(), seq, sig });
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
        self.start(now);
        self.directory.learn(now, &seed, true);
        self.membership.join(now, &seed);
        self.pump(now);
    }

    fn handle_connected(&mut self, now: Instant, peer: NodeInfo) {
        self.start(now);
        if peer.id == self.me.id || check_info(&peer).is_err() {
            return;
        }
        self.connected.insert(peer.id, now);
        self.closing.remove(&peer.id);
        self.directory.learn(now, &peer, true);
        self.pump(now);
    }

    fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.start(now);
        let was_up = self.connected.remove(&peer).is_some();
        if self.closing.remove(&peer) {
            return; // we closed it
        }
        if self.membership.active().contains(&peer) {
            self.directory.lost(now, peer);
        }
        self.membership.handle_disconnected(now, peer, was_up);
        self.pump(now);
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError> {
        if from == self.me.id {
            return Err(OverlayError::Refused("message from ourselves".into()));
        }
        if from == 0 {
            return Err(OverlayError::Refused("message from node 0".into()));
        }
        let msg: Message = decode_message(payload, self.config.max_message_size)?;
        if !wire::check(&msg, from, self.me.id, &self.config)? {
            return Ok(());
        }
        let broadcast_layer = msg.is_broadcast_layer();
        if broadcast_layer && !self.membership.active().contains(&from) {
            // Plumtree runs over the active view only: a late message from
            // a former neighbour must not make it one again.
            return Ok(());
        }
        if let Message::Gossip { bcast: Bcast::Announce { info, seq, sig }, .. } = &msg
            && info.id != self.me.id
            && self.origin(info, *seq, sig) == Origin::Forged
        {
            // Not its origin's word: dropped before Plumtree records its id
            // (the genuine one may still come) or relays it. The relay may
            // be honest (it could not check), so its link stays.
            self.bad_signatures += 1;
            tracing::debug!(origin = info.id, from, "an announcement with a bad signature; dropped");
            return Ok(());
        }
        self.start(now);
        self.directory.touch(now, from);
        if let Some(t) = self.connected.get_mut(&from) {
            *t = now;
        }
        // What the message tells of other nodes (checked above): the
        // sender's own word about itself, hearsay about the others.
        match &msg {
            Message::Join { info } => self.directory.learn(now, info, true),
            Message::ForwardJoin { peer, .. } => {
                self.directory.hearsay(now, peer);
            }
            Message::Shuffle { origin, nodes, .. } => {
                for n in std::iter::once(origin).chain(nodes) {
                    self.directory.hearsay(now, n);
                }
            }
            Message::ShuffleReply { nodes } => {
                for n in nodes {
                    self.directory.hearsay(now, n);
                }
            }
            Message::Gossip { round, bcast } => {
                let id = bcast.id();
                self.directory.offer_route(id.origin, id.incarnation, id.seq, *round, from);
            }
            Message::IHave(list) => {
                for i in list {
                    self.directory.offer_route(i.id.origin, i.id.incarnation, i.id.seq, i.round, from);
                }
            }
            _ => {}
        }
        // A newer incarnation learned above is handled before the message.
        self.pump(now);
        if broadcast_layer {
            if self.membership.active().contains(&from) {
                self.plumtree.handle_message(now, from, msg);
            }
        } else {
            let info = self.directory.info(from).cloned();
            self.membership.handle_message(now, from, info.as_ref(), msg);
        }
        self.pump(now);
        Ok(())
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.membership.handle_timeout(now);
        self.plumtree.handle_timeout(now);
        if self.next_announce.is_some_and(|t| t <= now) {
            self.announce(now);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.pump(now);
    }

    fn broadcast(&mut self, now: Instant, payload: Vec<u8>) {
        self.start(now);
        if payload.len() + 64 > self.config.max_message_size {
            tracing::warn!(len = payload.len(), "broadcast payload too large for the overlay; dropped");
            return;
        }
        self.bcast_seq += 1;
        let bcast = Bcast::Data { origin: self.me.id, incarnation: self.me.incarnation, seq: self.bcast_seq, payload };
        self.plumtree.broadcast(now, bcast);
        self.pump(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.membership.poll_timeout(), self.plumtree.poll_timeout(), self.next_tick, self.next_announce].into_iter().flatten().min()
    }

    fn next_hop(&self, to: NodeId) -> Option<NodeId> {
        let active = self.membership.active();
        if active.contains(&to) {
            return Some(to);
        }
        self.directory.next_hop(to, active)
    }

    fn members(&self) -> Vec<NodeInfo> {
        let mut v = self.directory.members();
        v.push(self.me.clone());
        v.sort_by_key(|i| i.id);
        v
    }

    fn neighbours(&self) -> Vec<NodeId> {
        self.membership.active().iter().copied().collect()
    }

    fn bad_signatures(&self) -> u64 {
        self.bad_signatures
    }
}
