//! Full mesh: every node keeps a control connection to every member.
//!
//! - **Join.** The driver connects to a seed and calls
//!   [`Overlay::handle_seed`]; the newcomer sends `Join` with its
//!   [`NodeInfo`]. The seed answers with its member list (`Members`, in
//!   chunks) and tells every member it is connected to about the newcomer
//!   (`Announce`). Whoever learns of a member it has no connection to asks
//!   the driver to connect; a member is [`Action::Up`] once a connection to
//!   it is up.
//! - **Anti-entropy.** Every `sync_interval` a node sends a digest of its
//!   live members (`Digest`) to one random neighbour; a neighbour whose
//!   digest differs answers with its member list. Lost announcements and
//!   partitions heal this way.
//! - **Failure detection.** Connections are the failure detector: when the
//!   driver reports one gone (or a dial failed) the member is suspected and
//!   re-dialled with exponential backoff; after `suspicion` without a
//!   connection it is [`Action::Down`]. Down members are re-dialled at the
//!   longest backoff until `forget_after`, then forgotten. A node restarted
//!   with a higher incarnation replaces the old entry and comes back
//!   [`Action::Up`] when connected.
//! - **Broadcast** sends the payload to every connected member; **routing**
//!   is direct: `next_hop(to) == Some(to)` when connected.
#![forbid(unsafe_code)]

use super::codec::{check_chunk, check_info, decode_message, encode_message};
use super::protocol::{Action, Overlay, OverlayError};
use crate::frame::MAX_CONTROL_LEN;
use crate::node::{NodeId, NodeInfo};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Settings of a [`FullMesh`].
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// First delay before re-dialling a member whose connection failed.
    /// Default 250 ms.
    pub retry_initial: Duration,
    /// Longest delay between dials (the backoff doubles up to it).
    /// Default 5 s.
    pub retry_max: Duration,
    /// How long a member may stay without a connection before it is
    /// declared [`Action::Down`]. Default 3 s.
    pub suspicion: Duration,
    /// How long a Down member is still re-dialled before it is forgotten.
    /// Default 60 s.
    pub forget_after: Duration,
    /// Period of the anti-entropy digest sent to one random member.
    /// Default 5 s.
    pub sync_interval: Duration,
    /// Largest overlay message accepted. Default 256 KiB (at most the
    /// frame layer's control limit).
    pub max_message_size: usize,
    /// Most members remembered; others are ignored. Default 4096.
    pub max_members: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            suspicion: Duration::from_secs(3),
            forget_after: Duration::from_secs(60),
            sync_interval: Duration::from_secs(5),
            max_message_size: (256 << 10).min(MAX_CONTROL_LEN),
            max_members: 4096,
        }
    }
}

/// Most members in one `Members` message.
const MEMBERS_CHUNK: usize = 256;

/// The messages of the full mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    /// A newcomer to its seed: here I am.
    Join(NodeInfo),
    /// Members the sender believes alive (itself included), one chunk.
    Members(Vec<NodeInfo>),
    /// The seed to its members: a node joined.
    Announce(NodeInfo),
    /// Anti-entropy: how many live members the sender knows and a hash of
    /// their ids and incarnations.
    Digest { count: u32, hash: u64 },
    /// A broadcast payload from the sender.
    Broadcast(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Heard of, never connected yet.
    Pending,
    /// Connected (or was, and is being re-dialled within `suspicion`).
    Up,
    /// Was up, no connection for `suspicion` or more.
    Down,
}

#[derive(Debug)]
struct Member {
    info: NodeInfo,
    /// `info` came from the node itself (its authenticated connection, or
    /// a message it sent): only then is its incarnation a fact. What others
    /// say of a node introduces it, never changes it.
    verified: bool,
    status: Status,
    connected: bool,
    /// Since when `status` (or, while Up and unconnected, the suspicion).
    since: Instant,
    backoff: Duration,
    /// When to dial it next (only while not connected).
    retry_at: Option<Instant>,
    /// The deadline registered in `FullMesh::deadlines`.
    deadline: Option<Instant>,
}

/// The full-mesh overlay. See the module docs.
#[derive(Debug)]
pub struct FullMesh {
    me: NodeInfo,
    config: MeshConfig,
    rng: Xoshiro256PlusPlus,
    members: BTreeMap<NodeId, Member>,
    /// `(deadline, member)` for every member with one.
    deadlines: BTreeSet<(Instant, NodeId)>,
    next_sync: Option<Instant>,
    actions: VecDeque<Action>,
}

/// A mixing hash of one member for the anti-entropy digest.
fn member_hash(id: NodeId, incarnation: u64) -> u64 {
    let mut x = (u64::from(id) << 48) ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl FullMesh {
    /// A mesh node `me`, its randomness seeded by `seed`.
    pub fn new(me: NodeInfo, config: MeshConfig, seed: u64) -> Self {
        FullMesh {
            me,
            config,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            members: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_sync: None,
            actions: VecDeque::new(),
        }
    }

    fn send(&mut self, to: NodeId, msg: &Msg) {
        self.actions.push_back(Action::Send { to, payload: encode_message(msg) });
    }

    fn set_deadline(&mut self, id: NodeId, at: Option<Instant>) {
        let Some(m) = self.members.get_mut(&id) else { return };
        if m.deadline == at {
            return;
        }
        if let Some(old) = m.deadline.take() {
            self.deadlines.remove(&(old, id));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, id));
        }
        m.deadline = at;
    }

    /// Recomputes a member's deadline from its state.
    fn refresh_deadline(&mut self, id: NodeId) {
        let Some(m) = self.members.get(&id) else { return };
        let status_deadline = match (m.status, m.connected) {
            (_, true) => None,
            (Status::Pending, false) => Some(m.since + self.config.suspicion),
            (Status::Up, false) => Some(m.since + self.config.suspicion),
            (Status::Down, false) => Some(m.since + self.config.forget_after),
        };
        let at = match (status_deadline, m.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.set_deadline(id, at);
    }

    fn remove_member(&mut self, id: NodeId) {
        self.set_deadline(id, None);
        self.members.remove(&id);
    }

    /// Live members (Up), `me` included, for `Members` messages.
    fn live_infos(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.members.values().filter(|m| m.status == Status::Up).map(|m| m.info.clone()).collect();
        v.push(self.me.clone());
        v
    }

    fn digest(&self) -> (u32, u64) {
        let mut count = 1u32;
        let mut hash = member_hash(self.me.id, self.me.incarnation);
        for m in self.members.values().filter(|m| m.status == Status::Up) {
            count += 1;
            hash ^= member_hash(m.info.id, m.info.incarnation);
        }
        (count, hash)
    }

    fn send_members(&mut self, to: NodeId) {
        let infos = self.live_infos();
        for chunk in infos.chunks(MEMBERS_CHUNK) {
            self.send(to, &Msg::Members(chunk.to_vec()));
        }
    }

    /// Learns of `info` from a message of node `from`: a new node is
    /// dialled; a new incarnation too, but only when `from` speaks of
    /// itself. Another member's word about a known node never changes its
    /// incarnation (a member announcing someone's incarnation as `u64::MAX`
    /// would otherwise shut the real node out); of a newer run of a member
    /// without a connection, it only gives an address to dial.
    fn learn(&mut self, now: Instant, from: NodeId, info: NodeInfo) {
        if info.id == self.me.id || check_info(&info).is_err() {
            return;
        }
        let own_word = info.id == from;
        match self.members.get_mut(&info.id) {
            Some(m) if own_word && info.incarnation > m.info.incarnation => {
                // Restarted: the old incarnation is gone.
                let was_up = m.status == Status::Up;
                m.info = info.clone();
                m.verified = true;
                m.status = Status::Pending;
                m.since = now;
                if m.connected {
                    // The connection we have is to the old incarnation; the
                    // driver will report the new one.
                    m.connected = false;
                }
                m.backoff = self.config.retry_initial;
                m.retry_at = Some(now + self.config.retry_initial);
                if was_up {
                    self.actions.push_back(Action::Down(info.id));
                }
                self.actions.push_back(Action::Connect(info.clone()));
                self.refresh_deadline(info.id);
            }
            Some(m) if !own_word && info.incarnation > m.info.incarnation && !m.connected => {
                // Hearsay of a newer run of a member this node has no
                // connection to (it restarted elsewhere): dial the address
                // given. The incarnation stays; the connection's handshake
                // (authenticated, the node id bound to its key) says which
                // run answers there, if any.
                m.info.addr = info.addr.clone();
                let dial = m.info.clone();
                self.actions.push_back(Action::Connect(dial));
            }
            Some(_) => {}
            None => {
                if self.members.len() >= self.config.max_members {
                    return;
                }
                let id = info.id;
                self.members.insert(
                    id,
                    Member {
                        info: info.clone(),
                        verified: own_word,
                        status: Status::Pending,
                        connected: false,
                        since: now,
                        backoff: self.config.retry_initial,
                        retry_at: Some(now + self.config.retry_initial),
                        deadline: None,
                    },
                );
                self.actions.push_back(Action::Connect(info));
                self.refresh_deadline(id);
            }
        }
    }

    fn schedule_sync(&mut self, now: Instant) {
        // Jitter in [0.5, 1.5) × interval so digests do not synchronise.
        let base = self.config.sync_interval;
        let jitter = self.rng.random_range(0..=base.as_millis().max(1) as u64);
        self.next_sync = Some(now + base / 2 + Duration::from_millis(jitter));
    }
}

impl Overlay for FullMesh {
    fn me(&self) -> &NodeInfo {
        &self.me
    }

    fn handle_seed(&mut self, now: Instant, seed: NodeInfo) {
        if seed.id == self.me.id {
            return;
        }
        self.handle_connected(now, seed.clone());
        self.send(seed.id, &Msg::Join(self.me.clone()));
    }

    fn handle_connected(&mut self, now: Instant, peer: NodeInfo) {
        if peer.id == self.me.id || check_info(&peer).is_err() {
            return;
        }
        if self.next_sync.is_none() {
            self.schedule_sync(now);
        }
        let initial = self.config.retry_initial;
        let id = peer.id;
        let up = match self.members.get_mut(&id) {
            // An older run than the node itself said it is: a stale
            // connection. (A claim by another member does not count.)
            Some(m) if m.verified && peer.incarnation < m.info.incarnation => return,
            Some(m) => {
                let newer = peer.incarnation > m.info.incarnation;
                if newer && m.status == Status::Up {
                    self.actions.push_back(Action::Down(id));
                }
                let up = newer || m.status != Status::Up;
                m.info = peer;
                m.verified = true;
                m.connected = true;
                m.status = Status::Up;
                m.since = now;
                m.backoff = initial;
                m.retry_at = None;
                up
            }
            None => {
                if self.members.len() >= self.config.max_members {
                    return;
                }
                self.members.insert(
                    id,
                    Member {
                        info: peer,
                        verified: true,
                        status: Status::Up,
                        connected: true,
                        since: now,
                        backoff: initial,
                        retry_at: None,
                        deadline: None,
                    },
                );
                true
            }
        };
        if up {
            let info = self.members[&id].info.clone();
            self.actions.push_back(Action::Up(info));
        }
        self.refresh_deadline(id);
    }

    fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        let max = self.config.retry_max;
        let Some(m) = self.members.get_mut(&peer) else { return };
        if m.connected {
            m.connected = false;
            if m.status == Status::Up {
                m.since = now; // suspicion starts
            }
        }
        if m.retry_at.is_none() {
            m.retry_at = Some(now + m.backoff);
            m.backoff = (m.backoff * 2).min(max);
        }
        self.refresh_deadline(peer);
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError> {
        let msg: Msg = decode_message(payload, self.config.max_message_size)?;
        match msg {
            Msg::Join(info) => {
                check_info(&info)?;
                if info.id != from {
                    return Err(OverlayError::Refused(format!("join for node {} from node {from}", info.id)));
                }
                self.learn(now, from, info.clone());
                self.send_members(from);
                let others: Vec<NodeId> = self
                    .members
                    .values()
                    .filter(|m| m.connected && m.status == Status::Up && m.info.id != from)
                    .map(|m| m.info.id)
                    .collect();
                let announce = encode_message(&Msg::Announce(info));
                for id in others {
                    self.actions.push_back(Action::Send { to: id, payload: announce.clone() });
                }
            }
            Msg::Members(infos) => {
                check_chunk(&infos, MEMBERS_CHUNK, "members")?;
                for info in infos {
                    self.learn(now, from, info);
                }
            }
            Msg::Announce(info) => {
                check_info(&info)?;
                self.learn(now, from, info);
            }
            Msg::Digest { count, hash } => {
                if (count, hash) != self.digest() {
                    self.send_members(from);
                }
            }
            Msg::Broadcast(payload) => self.actions.push_back(Action::Deliver { origin: from, payload }),
        }
        Ok(())
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let (suspicion, forget, max) = (self.config.suspicion, self.config.forget_after, self.config.retry_max);
            let Some(m) = self.members.get_mut(&id) else { continue };
            m.deadline = None;
            if m.connected {
                continue;
            }
            match m.status {
                Status::Pending if now >= m.since + suspicion => {
                    self.remove_member(id);
                    continue;
                }
                Status::Up if now >= m.since + suspicion => {
                    m.status = Status::Down;
                    m.since = now;
                    self.actions.push_back(Action::Down(id));
                }
                Status::Down if now >= m.since + forget => {
                    self.remove_member(id);
                    continue;
                }
                _ => {}
            }
            let Some(m) = self.members.get_mut(&id) else { continue };
            if m.retry_at.is_some_and(|t| t <= now) {
                let backoff = if m.status == Status::Down { max } else { m.backoff };
                m.retry_at = Some(now + backoff);
                m.backoff = (m.backoff * 2).min(max);
                self.actions.push_back(Action::Connect(m.info.clone()));
            }
            self.refresh_deadline(id);
        }
        if self.next_sync.is_some_and(|t| t <= now) {
            self.schedule_sync(now);
            let connected: Vec<NodeId> = self.members.values().filter(|m| m.connected).map(|m| m.info.id).collect();
            if !connected.is_empty() {
                let to = connected[self.rng.random_range(0..connected.len())];
                let (count, hash) = self.digest();
                self.send(to, &Msg::Digest { count, hash });
            }
        }
    }

    fn broadcast(&mut self, _now: Instant, payload: Vec<u8>) {
        let bytes = encode_message(&Msg::Broadcast(payload));
        let to: Vec<NodeId> = self.members.values().filter(|m| m.connected).map(|m| m.info.id).collect();
        for id in to {
            self.actions.push_back(Action::Send { to: id, payload: bytes.clone() });
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let first = self.deadlines.first().map(|&(t, _)| t);
        match (first, self.next_sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_hop(&self, to: NodeId) -> Option<NodeId> {
        self.members.get(&to).filter(|m| m.connected).map(|_| to)
    }

    fn relays(&self) -> bool {
        false
    }

    fn members(&self) -> Vec<NodeInfo> {
        self.live_infos()
    }

    fn neighbours(&self) -> Vec<NodeId> {
        self.members.values().filter(|m| m.connected).map(|m| m.info.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{MembershipEvent, Sim};
    use crate::node::NodeRole;

    fn converge(sim: &mut Sim) {
        let ok = sim.run_until(Sim::members_converged, Duration::from_secs(60));
        assert!(ok, "no convergence: {:?}", &sim.membership_errors()[..sim.membership_errors().len().min(10)]);
    }

    fn info(id: NodeId, incarnation: u64) -> NodeInfo {
        NodeInfo { id, name: format!("n{id}"), addr: format!("127.0.0.1:{}", 9000 + id), role: NodeRole::Peer, incarnation }
    }

    #[test]
    fn only_a_node_itself_says_which_incarnation_it_is() {
        let now = Instant::now();
        let mut m = FullMesh::new(info(1, 1), MeshConfig::default(), 1);
        m.handle_connected(now, info(2, 1));
        m.handle_connected(now, info(3, 1));
        while m.poll_action().is_some() {}
        // Node 3 announces node 2 as incarnation u64::MAX, and an unknown
        // node 4 likewise.
        m.handle_message(now, 3, &encode_message(&Msg::Announce(info(2, u64::MAX)))).unwrap();
        m.handle_message(now, 3, &encode_message(&Msg::Members(vec![info(4, u64::MAX)]))).unwrap();
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
        assert!(!actions.iter().any(|a| matches!(a, Action::Down(2))), "{actions:?}");
        assert!(actions.iter().any(|a| matches!(a, Action::Connect(i) if i.id == 4)), "{actions:?}");
        assert_eq!(m.members().iter().find(|i| i.id == 2).map(|i| i.incarnation), Some(1));
        // The real node 4 connects as incarnation 1 and is up as that.
        m.handle_connected(now, info(4, 1));
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, Action::Up(i) if i.id == 4 && i.incarnation == 1)), "{actions:?}");
        // Node 2 itself says it restarted: that is believed.
        m.handle_message(now, 2, &encode_message(&Msg::Announce(info(2, 2)))).unwrap();
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
        assert!(actions.iter().any(|a| matches!(a, Action::Down(2))), "{actions:?}");
    }

    #[test]
    fn mesh_of_20_converges_and_broadcasts() {
        let mut sim = Sim::mesh(20, 1);
        converge(&mut sim);
        for id in sim.alive_ids() {
            assert_eq!(sim.connections(id), 19, "node {id}");
            assert_eq!(sim.overlay(id).unwrap().neighbours().len(), 19);
        }
        sim.broadcast(7, b"hello".to_vec());
        sim.run_for(Duration::from_millis(100));
        for id in sim.alive_ids() {
            let got = sim.take_deliveries(id);
            if id == 7 {
                assert!(got.is_empty());
            } else {
                assert_eq!(got, vec![(7, b"hello".to_vec())], "node {id}");
            }
        }
        for a in sim.alive_ids() {
            for b in sim.alive_ids() {
                assert_eq!(sim.route(a, b).unwrap().len(), if a == b { 1 } else { 2 });
            }
        }
        assert!(sim.alive_ids().iter().all(|&id| sim.stats(id).refused == 0));
    }

    #[test]
    fn mesh_detects_a_crash_and_takes_back_a_restart() {
        let mut sim = Sim::mesh(20, 2);
        converge(&mut sim);
        sim.record_events(true);
        sim.crash(5);
        // Down everywhere after detection delay + suspicion.
        sim.run_for(Duration::from_secs(6));
        assert!(sim.members_converged());
        for id in sim.alive_ids() {
            let ev = sim.take_events(id);
            assert_eq!(ev, vec![MembershipEvent::Down(5)], "node {id}");
            assert!(!sim.overlay(id).unwrap().members().iter().any(|i| i.id == 5));
        }
        let info = sim.restart(5, 1).unwrap();
        assert_eq!(info.incarnation, 2);
        converge(&mut sim);
        for id in sim.alive_ids() {
            let ev = sim.take_events(id);
            if id == 5 {
                assert_eq!(ev.len(), 19);
            } else {
                assert_eq!(ev, vec![MembershipEvent::Up(info.clone())], "node {id}");
            }
            assert_eq!(sim.connections(id), 19);
        }
    }

    #[test]
    fn mesh_heals_a_partition() {
        let mut sim = Sim::mesh(10, 3);
        converge(&mut sim);
        let (a, b): (Vec<NodeId>, Vec<NodeId>) = sim.alive_ids().into_iter().partition(|&id| id <= 5);
        sim.partition(&[&a, &b]);
        sim.run_for(Duration::from_secs(8));
        for &id in &a {
            assert_eq!(sim.overlay(id).unwrap().members().len(), 5);
        }
        sim.heal();
        converge(&mut sim);
    }

    #[test]
    fn mesh_refuses_hostile_messages() {
        let me = NodeInfo { id: 1, name: "a".into(), addr: "x:1".into(), role: NodeRole::Peer, incarnation: 1 };
        let mut m = FullMesh::new(me.clone(), MeshConfig::default(), 0);
        let now = Instant::now();
        let other = NodeInfo { id: 2, ..me.clone() };
        // A join for someone else.
        let bad = encode_message(&Msg::Join(NodeInfo { id: 3, ..me.clone() }));
        assert!(matches!(m.handle_message(now, 2, &bad), Err(OverlayError::Refused(_))));
        // Truncated and trailing bytes.
        let good = encode_message(&Msg::Announce(other.clone()));
        assert!(matches!(m.handle_message(now, 2, &good[..good.len() - 1]), Err(OverlayError::Malformed(_))));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(m.handle_message(now, 2, &long), Err(OverlayError::Malformed(_))));
        // A huge list length.
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(m.handle_message(now, 2, &huge), Err(OverlayError::Malformed(_))));
        // Too big.
        let big = vec![0u8; m.config.max_message_size + 1];
        assert!(matches!(m.handle_message(now, 2, &big), Err(OverlayError::Malformed(_))));
        // An overlong name.
        let bad = encode_message(&Msg::Announce(NodeInfo { name: "x".repeat(1000), ..other.clone() }));
        assert!(matches!(m.handle_message(now, 2, &bad), Err(OverlayError::Refused(_))));
        assert!(m.members().len() == 1 && m.poll_action().is_none());
        m.handle_message(now, 2, &good).unwrap();
        assert_eq!(m.poll_action(), Some(Action::Connect(other)));
    }
}
