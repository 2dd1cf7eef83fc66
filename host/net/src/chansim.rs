//! A deterministic channel simulator for tests: several nodes' reliable
//! senders and receivers (and causal states) driven through their
//! interposition pipelines over simulated connections, with a fake clock.
//!
//! One channel (index 0) with `lanes` parallel streams per ordered pair of
//! nodes. Each stream has its own simulated connection: data flows from the
//! dialer (the stream's source) and acks come back, both FIFO (TCP) with a
//! latency and jitter. A connection closes when the simulation's own dice
//! say so, when a frame arrives damaged (the decoder refuses it, as in the
//! real driver), or when a partition cuts it; it comes back after
//! `reconnect_delay` unless a partition still separates the two nodes.
//! The driver logic here is the call order documented in `reliable`,
//! `causal` and `fault`, so these tests also check that the order works.
#![forbid(unsafe_code)]

use crate::node::NodeId;
use crate::causal::{Causal, CausalConfig, CausalError};
use crate::fault::{Decision, Direction, FaultEvent, FaultInjector, Pipeline, Schedule, Trace, TraceEvent};
use crate::frame::{Data, Frame};
use crate::reliable::{Receiver, ReceiverConfig, Sender, SenderConfig};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// (source, destination, lane).
pub(crate) type StreamKey = (NodeId, NodeId, u16);

#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) lanes: u16,
    pub(crate) causal: Option<CausalConfig>,
    pub(crate) sender: SenderConfig,
    pub(crate) receiver: ReceiverConfig,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    /// Probability that writing a frame kills its connection.
    pub(crate) conn_drop: f64,
    pub(crate) reconnect_delay: Duration,
    /// How long a crashed node stays down.
    pub(crate) restart_delay: Duration,
    pub(crate) schedule: Schedule,
    pub(crate) seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: vec![1, 2, 3],
            lanes: 2,
            causal: None,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
            conn_drop: 0.0,
            reconnect_delay: Duration::from_millis(20),
            restart_delay: Duration::from_millis(100),
            schedule: Schedule::default(),
            seed: 0,
        }
    }
}

/// A message handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) at_us: u64,
    pub(crate) node: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) from: NodeId,
    pub(crate) lane: u16,
    pub(crate) corr: u64,
}

#[derive(Debug)]
struct SimNode {
    incarnation: u64,
    up: bool,
    pipeline: Pipeline,
    /// Outgoing streams, keyed (peer, lane).
    senders: BTreeMap<(NodeId, u16), Sender>,
    /// Incoming streams, keyed (peer, lane).
    receivers: BTreeMap<(NodeId, u16), Receiver>,
    /// Messages waiting for room in their sender (already stamped).
    outbox: BTreeMap<(NodeId, u16), VecDeque<Data>>,
    causal: Option<Causal>,
    /// A message the causal buffer gave back, per incoming stream.
    stalled: BTreeMap<(NodeId, u16), Data>,
}

#[derive(Debug, Default)]
struct Conn {
    /// Current connection id; 0 when down.
    id: u64,
    down_until: Option<Instant>,
    fwd: VecDeque<(Instant, Vec<u8>)>,
    back: VecDeque<(Instant, Vec<u8>)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) frames_written: u64,
    pub(crate) conn_drops: u64,
    pub(crate) decode_closes: u64,
    pub(crate) corrupt_receives: u64,
    pub(crate) stale_packets: u64,
    pub(crate) abandoned: u64,
    pub(crate) crashes: u64,
    pub(crate) causal_full_retries: u64,
    pub(crate) cuts: u64,
}

pub(crate) struct Sim {
    pub t0: Instant,
    pub(crate) now: Instant,
    config: SimConfig,
    rng: ChaCha8Rng,
    nodes: BTreeMap<NodeId, SimNode>,
    conns: BTreeMap<StreamKey, Conn>,
    conn_ids: BTreeMap<u64, StreamKey>,
    next_conn: u64,
    /// Crashed nodes and when they come back.
    restarts: Vec<(Instant, NodeId)>,
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) stats: Stats,
    pub(crate) errors: Vec<String>,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            t0,
            now: t0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            nodes: BTreeMap::new(),
            conns: BTreeMap::new(),
            conn_ids: BTreeMap::new(),
            next_conn: 1,
            restarts: Vec::new(),
            deliveries: Vec::new(),
            stats: Stats::default(),
            errors: Vec::new(),
            config,
        };
        for &n in &sim.config.nodes.clone() {
            let node = sim.fresh_node(n, 1);
            sim.nodes.insert(n, node);
        }
        for &a in &sim.config.nodes {
            for &b in &sim.config.nodes {
                for lane in 0..sim.config.lanes {
                    if a != b {
                        sim.conns.insert((a, b, lane), Conn { down_until: Some(t0), ..Default::default() });
                    }
                }
            }
        }
        sim
    }

    fn fresh_node(&self, me: NodeId, incarnation: u64) -> SimNode {
        let c = &self.config;
        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for &p in c.nodes.iter().filter(|&&p| p != me) {
            for lane in 0..c.lanes {
                senders.insert((p, lane), Sender::new(c.sender.clone()));
                receivers.insert((p, lane), Receiver::new(c.receiver.clone()));
            }
        }
        let causal = c.causal.clone().map(|cfg| {
            let mut causal = Causal::new(me, incarnation, cfg);
            for (&p, n) in &self.nodes {
                causal.handle_member(p, n.incarnation);
            }
            for &p in &c.nodes {
                causal.handle_member(p, 1);
            }
            causal
        });
        SimNode {
            incarnation,
            up: true,
            pipeline: Pipeline::new()
                .with(FaultInjector::new(me, &c.schedule, self.t0))
                .with(Trace::new(self.t0, 1 << 20)),
            senders,
            receivers,
            outbox: BTreeMap::new(),
            causal,
            stalled: BTreeMap::new(),
        }
    }

    fn us(&self) -> u64 {
        (self.now - self.t0).as_micros() as u64
    }

    pub(crate) fn ms(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    #[allow(dead_code)]
    pub(crate) fn incarnation(&self, node: NodeId) -> u64 {
        self.nodes[&node].incarnation
    }

    #[allow(dead_code)]
    pub(crate) fn is_up(&self, node: NodeId) -> bool {
        self.nodes[&node].up
    }

    /// The application at `from` sends message `corr` to `to` on `lane`.
    /// Returns false if `from` is down (the message is not sent).
    pub(crate) fn send(&mut self, from: NodeId, to: NodeId, lane: u16, corr: u64) -> bool {
        let node = self.nodes.get_mut(&from).expect("node");
        if !node.up {
            return false;
        }
        let mut data = Data {
            seq: 0,
            ack: 0,
            to: u64::from(to) << 48,
            from: u64::from(from) << 48,
            corr,
            channel: 0,
            hops: 0,
            msg_kind: 0,
            flags: 0,
            meta: Vec::new(),
            payload: corr.to_le_bytes().to_vec(),
        };
        if let Some(c) = &mut node.causal {
            c.prepare(to, &mut data).expect("prepare");
        }
        node.outbox.entry((to, lane)).or_default().push_back(data);
        true
    }

    /// Nothing left to do: no message waiting anywhere, nothing in flight.
    pub(crate) fn idle(&self) -> bool {
        self.nodes.values().all(|n| {
            n.outbox.values().all(|q| q.is_empty())
                && n.senders.values().all(|s| s.unacked() == 0)
                && n.stalled.is_empty()
                && n.causal.as_ref().is_none_or(|c| c.waiting() == 0)
                && n.receivers.values().all(|r| !r.has_ready())
        }) && self.conns.values().all(|c| c.fwd.is_empty() && c.back.is_empty())
    }

    pub(crate) fn trace(&self, node: NodeId) -> Vec<TraceEvent> {
        self.nodes[&node].pipeline.hook::<Trace>().unwrap().events().cloned().collect()
    }

    pub(crate) fn decisions(&self, node: NodeId) -> Vec<Decision> {
        self.nodes[&node].pipeline.hook::<FaultInjector>().unwrap().log().cloned().collect()
    }

    fn next_event(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut add = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for n in self.nodes.values() {
            add(n.pipeline.poll_timeout());
            if n.up {
                n.senders.values().for_each(|s| add(s.poll_timeout()));
                n.receivers.values().for_each(|r| add(r.poll_timeout()));
            }
        }
        for r in &self.restarts {
            add(Some(r.0));
        }
        for c in self.conns.values() {
            add(c.down_until);
            add(c.fwd.front().map(|f| f.0));
            add(c.back.front().map(|f| f.0));
        }
        t
    }

    /// Runs every event up to and including `limit`, then sets the clock to it.
    pub(crate) fn run_until(&mut self, limit: Instant) {
        loop {
            match self.next_event() {
                Some(t) if t <= limit => {
                    // Guarantee progress even if a timer is already past.
                    self.now = t.max(self.now);
                    self.process();
                    if self.next_event().is_some_and(|t| t <= self.now) {
                        self.now += Duration::from_micros(1);
                    }
                }
                _ => {
                    self.now = limit.max(self.now);
                    self.process();
                    return;
                }
            }
        }
    }

    fn close(&mut self, key: StreamKey) {
        let now = self.now;
        let c = self.conns.get_mut(&key).expect("conn");
        if c.id == 0 {
            return;
        }
        self.conn_ids.remove(&c.id);
        c.id = 0;
        c.fwd.clear();
        c.back.clear();
        c.down_until = Some(now + self.config.reconnect_delay);
        let (src, dst, lane) = key;
        if let Some(n) = self.nodes.get_mut(&src).filter(|n| n.up) {
            n.senders.get_mut(&(dst, lane)).unwrap().handle_disconnected(now);
        }
        if let Some(n) = self.nodes.get_mut(&dst).filter(|n| n.up) {
            n.receivers.get_mut(&(src, lane)).unwrap().handle_disconnected(now);
        }
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        [a, b]
            .iter()
            .any(|n| self.nodes[n].pipeline.hook::<FaultInjector>().unwrap().is_cut(if *n == a { b } else { a }))
    }

    fn process(&mut self) {
        let now = self.now;
        loop {
            let mut progress = false;
            progress |= self.reconnect();
            progress |= self.arrivals();
            for id in self.config.nodes.clone() {
                progress |= self.node_step(id);
            }
            if !progress {
                break;
            }
            debug_assert_eq!(now, self.now);
        }
    }

    fn reconnect(&mut self) -> bool {
        let now = self.now;
        let mut progress = false;
        let keys: Vec<StreamKey> =
            self.conns.iter().filter(|(_, c)| c.down_until.is_some_and(|t| t <= now)).map(|(k, _)| *k).collect();
        for key in keys {
            let (src, dst, lane) = key;
            if !self.nodes[&src].up || !self.nodes[&dst].up || self.cut(src, dst) {
                self.conns.get_mut(&key).unwrap().down_until = Some(now + self.config.reconnect_delay);
                continue;
            }
            progress = true;
            let id = self.next_conn;
            self.next_conn += 1;
            let c = self.conns.get_mut(&key).unwrap();
            c.id = id;
            c.down_until = None;
            self.conn_ids.insert(id, key);
            let (src_inc, dst_inc) = (self.nodes[&src].incarnation, self.nodes[&dst].incarnation);
            let s = self.nodes.get_mut(&src).unwrap();
            if let Some(causal) = &mut s.causal {
                causal.handle_member(dst, dst_inc);
            }
            match s.senders.get_mut(&(dst, lane)).unwrap().handle_connected(now, dst_inc) {
                Ok(abandoned) => self.stats.abandoned += abandoned.len() as u64,
                Err(e) => self.errors.push(format!("sender {key:?}: {e}")),
            }
            let d = self.nodes.get_mut(&dst).unwrap();
            if let Some(causal) = &mut d.causal {
                causal.handle_member(src, src_inc);
            }
            if let Err(e) = d.receivers.get_mut(&(src, lane)).unwrap().handle_connected(now, src_inc) {
                self.errors.push(format!("receiver {key:?}: {e}"));
            }
        }
        progress
    }

    /// Bytes that reached the far end of their connection are decoded and
    /// enter the receiving node's pipeline.
    fn arrivals(&mut self) -> bool {
        let now = self.now;
        let mut progress = false;
        let keys: Vec<StreamKey> = self.conns.keys().copied().collect();
        for key in keys {
            for fwd in [true, false] {
                loop {
                    let c = self.conns.get_mut(&key).unwrap();
                    let q = if fwd { &mut c.fwd } else { &mut c.back };
                    if q.front().is_none_or(|f| f.0 > now) {
                        break;
                    }
                    let (_, bytes) = q.pop_front().unwrap();
                    let id = c.id;
                    progress = true;
                    let (src, dst, _) = key;
                    let (to, peer) = if fwd { (dst, src) } else { (src, dst) };
                    match Frame::decode(&bytes) {
                        Ok(Some((frame, n))) if n == bytes.len() => {
                            self.nodes.get_mut(&to).unwrap().pipeline.handle_receive(now, peer, 0, id, frame);
                        }
                        other => {
                            assert!(other.is_err(), "a damaged frame must be refused, got {other:?}");
                            self.stats.decode_closes += 1;
                            self.close(key);
                            break;
                        }
                    }
                }
            }
        }
        progress
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        let keys: Vec<StreamKey> = self.conns.keys().copied().filter(|&(a, b, _)| a == id || b == id).collect();
        for k in keys {
            self.close(k);
        }
        let n = self.nodes.get_mut(&id).unwrap();
        n.up = false;
        n.outbox.clear();
        n.stalled.clear();
        n.senders.clear();
        n.receivers.clear();
        n.causal = None;
        // The harness (its pipeline) survives; the node comes back later.
        let inc = n.incarnation + 1;
        let restart = self.now + self.config.restart_delay;
        let mut fresh = self.fresh_node(id, inc);
        let n = self.nodes.get_mut(&id).unwrap();
        fresh.pipeline = std::mem::take(&mut n.pipeline);
        fresh.up = false;
        *n = fresh;
        // Reconnection waits for the restart.
        for (k, c) in self.conns.iter_mut() {
            if k.0 == id || k.1 == id {
                c.down_until = Some(restart);
            }
        }
        self.restarts.push((restart, id));
    }

    fn node_step(&mut self, id: NodeId) -> bool {
        let now = self.now;
        let mut progress = false;
        // Restarts due.
        while let Some(i) = self.restarts.iter().position(|&(t, n)| n == id && t <= now) {
            self.restarts.remove(i);
            self.nodes.get_mut(&id).unwrap().up = true;
            progress = true;
        }
        // Pipeline timers, events and releases.
        {
            let n = self.nodes.get_mut(&id).unwrap();
            if n.pipeline.poll_timeout().is_some_and(|t| t <= now) {
                n.pipeline.handle_timeout(now);
            }
        }
        while let Some(e) = self.nodes.get_mut(&id).unwrap().pipeline.poll_event() {
            progress = true;
            match e {
                FaultEvent::Crash => {
                    if self.nodes[&id].up {
                        self.crash(id);
                    }
                }
                FaultEvent::Cut { peers } => {
                    self.stats.cuts += 1;
                    let keys: Vec<StreamKey> = self
                        .conns
                        .keys()
                        .copied()
                        .filter(|&(a, b, _)| (a == id && peers.contains(&b)) || (b == id && peers.contains(&a)))
                        .collect();
                    for k in keys {
                        self.close(k);
                    }
                }
                FaultEvent::Healed => {}
            }
        }
        while let Some(p) = self.nodes.get_mut(&id).unwrap().pipeline.poll_release(now) {
            progress = true;
            let Some(&key) = self.conn_ids.get(&p.conn) else {
                self.stats.stale_packets += 1;
                continue;
            };
            let (src, dst, lane) = key;
            match p.dir {
                Direction::Send => {
                    let mut bytes = Vec::new();
                    p.frame.encode(&mut bytes);
                    if let Some(d) = p.corrupt {
                        d.apply(&mut bytes);
                    }
                    self.stats.frames_written += 1;
                    if self.config.conn_drop > 0.0 && self.rng.random_bool(self.config.conn_drop) {
                        self.stats.conn_drops += 1;
                        self.close(key);
                        continue;
                    }
                    let jitter = self.rng.random_range(0..=self.config.jitter.as_micros() as u64);
                    let at = now + self.config.latency + Duration::from_micros(jitter);
                    let c = self.conns.get_mut(&key).unwrap();
                    let q = if id == src { &mut c.fwd } else { &mut c.back };
                    let at = q.back().map_or(at, |b| b.0.max(at));
                    q.push_back((at, bytes));
                }
                Direction::Receive => {
                    if p.corrupt.is_some() {
                        self.stats.corrupt_receives += 1;
                        self.close(key);
                        continue;
                    }
                    let n = self.nodes.get_mut(&id).unwrap();
                    match p.frame {
                        Frame::Data(d) if id == dst => {
                            if let Err(e) = n.receivers.get_mut(&(src, lane)).unwrap().handle_data(now, d) {
                                self.errors.push(format!("data on {key:?}: {e}"));
                            }
                        }
                        Frame::Ack { seq, .. } if id == src => {
                            if let Err(e) = n.senders.get_mut(&(dst, lane)).unwrap().handle_ack(now, seq) {
                                self.errors.push(format!("ack on {key:?}: {e}"));
                                self.close(key);
                            }
                        }
                        f => self.errors.push(format!("unexpected {f:?} on {key:?} at {id}")),
                    }
                }
            }
        }
        if !self.nodes[&id].up {
            return progress;
        }
        let inc = self.nodes[&id].incarnation;
        let us = self.us();
        let n = self.nodes.get_mut(&id).unwrap();
        // Senders: fill from the outbox, transmit.
        for (&(peer, lane), s) in n.senders.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            if let Some(q) = n.outbox.get_mut(&(peer, lane)) {
                while let Some(d) = q.pop_front() {
                    if let Err(full) = s.try_send(d) {
                        q.push_front(full.0);
                        break;
                    }
                    progress = true;
                }
            }
            let conn = self.conns[&(id, peer, lane)].id;
            while let Some(d) = s.poll_transmit(now) {
                progress = true;
                n.pipeline.handle_send(now, peer, 0, conn, Frame::Data(d));
            }
        }
        // Receivers: deliver (through the causal layer if any), ack.
        let mut delivered = Vec::new();
        loop {
            let mut moved = false;
            for (&(peer, lane), r) in n.receivers.iter_mut() {
                let conn = self.conns[&(peer, id, lane)].id;
                loop {
                    let d = match n.stalled.remove(&(peer, lane)) {
                        Some(d) => d,
                        None => match r.poll_deliver() {
                            Some(d) => d,
                            None => break,
                        },
                    };
                    match &mut n.causal {
                        None => {
                            delivered.push(Delivery {
                                at_us: us,
                                node: id,
                                incarnation: inc,
                                from: peer,
                                lane,
                                corr: d.corr,
                            });
                            moved = true;
                        }
                        Some(c) => match c.handle_data((d.from >> 48) as NodeId, d) {
                            Ok(()) => {
                                moved = true;
                                while let Some((from, d)) = c.poll_deliver() {
                                    delivered.push(Delivery {
                                        at_us: us,
                                        node: id,
                                        incarnation: inc,
                                        from,
                                        lane,
                                        corr: d.corr,
                                    });
                                }
                            }
                            Err(CausalError::Full(d)) => {
                                self.stats.causal_full_retries += 1;
                                n.stalled.insert((peer, lane), d);
                                break;
                            }
                            Err(e) => self.errors.push(format!("causal at {id}: {e}")),
                        },
                    }
                }
                if conn != 0
                    && let Some(a) = r.poll_ack(now)
                {
                    progress = true;
                    n.pipeline.handle_send(now, peer, 0, conn, Frame::Ack { channel: 0, seq: a });
                }
            }
            if !moved {
                break;
            }
            progress = true;
        }
        self.deliveries.extend(delivered);
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{Rule, ScheduleEvent, Timed};

    fn chaos(seed: u64, until_ms: u64) -> Schedule {
        Schedule {
            seed,
            events: vec![
                Timed {
                    at_ms: 0,
                    event: ScheduleEvent::SetRule {
                        name: "chaos".into(),
                        rule: Rule {
                            drop: 0.08,
                            duplicate: 0.08,
                            reorder: 0.1,
                            corrupt: 0.01,
                            delay_ms: Some((0, 8)),
                            hold_ms: 20,
                            ..Default::default()
                        },
                    },
                },
                Timed { at_ms: until_ms, event: ScheduleEvent::ClearRules },
            ],
        }
    }

    /// Runs until every message is through (or panics after `limit_ms`).
    fn drain(sim: &mut Sim, limit_ms: u64) {
        let mut t = sim.now;
        while !sim.idle() {
            t += Duration::from_millis(10);
            assert!(t < sim.ms(limit_ms), "not idle after {limit_ms} ms: {:?}", sim.stats);
            sim.run_until(t);
        }
    }

    /// (a) Reliable streams deliver every message exactly once and in
    /// order, across dropped connections and with the injector dropping,
    /// duplicating, reordering, delaying and corrupting frames (a corrupted
    /// frame closes its connection, as the real decoder would).
    #[test]
    fn reliable_streams_deliver_exactly_once_in_order_under_faults() {
        for seed in 0..3 {
            reliable_run(seed);
        }
    }

    /// More seeds of (a), (b) and (b'): `cargo test --release -- --ignored`
    /// (about a minute).
    #[test]
    #[ignore]
    fn seed_sweep() {
        for seed in 10..40 {
            reliable_run(seed);
            let (sim, oracle) = causal_run(vec![1, 2, 3, 4], seed, 1000, Vec::new());
            assert!(sim.errors.is_empty(), "seed {seed}: {:?}", sim.errors);
            assert!(oracle.done.iter().all(|&d| d), "seed {seed}: not everything delivered");
            let crash =
                vec![Timed { at_ms: 300 + seed * 10, event: ScheduleEvent::Crash { node: 1 + (seed % 4) as u16 } }];
            let (sim, oracle) = causal_run(vec![1, 2, 3, 4], seed, 1000, crash);
            assert!(sim.errors.iter().all(|e| e.contains("previous incarnation")), "seed {seed}: {:?}", sim.errors);
            for i in 0..oracle.msgs.len() {
                assert!(oracle.done[i] || oracle.msgs[i].3 < 800, "seed {seed}: message {i} lost after the restart");
            }
        }
    }

    fn reliable_run(seed: u64) {
        {
            let mut sim = Sim::new(SimConfig {
                nodes: vec![1, 2, 3],
                lanes: 2,
                sender: SenderConfig { max_unacked: 64, ..Default::default() },
                receiver: ReceiverConfig { max_held: 16, ..Default::default() },
                conn_drop: 0.002,
                schedule: chaos(seed, 3000),
                seed,
                ..Default::default()
            });
            let mut next: BTreeMap<StreamKey, u64> = BTreeMap::new();
            for ms in 0..3000 {
                for a in 1..=3u16 {
                    for b in 1..=3u16 {
                        for lane in 0..2 {
                            if a != b && (ms + a as u64 + lane as u64).is_multiple_of(3) {
                                let n = next.entry((a, b, lane)).or_insert(0);
                                *n += 1;
                                sim.send(a, b, lane, *n);
                            }
                        }
                    }
                }
                let t = sim.ms(ms + 1);
                sim.run_until(t);
            }
            drain(&mut sim, 60_000);
            assert!(sim.errors.is_empty(), "{:?}", sim.errors);
            let mut got: BTreeMap<StreamKey, Vec<u64>> = BTreeMap::new();
            for d in &sim.deliveries {
                got.entry((d.from, d.node, d.lane)).or_default().push(d.corr);
            }
            for (k, n) in &next {
                let g = got.get(k).map(Vec::as_slice).unwrap_or(&[]);
                assert!(g.iter().copied().eq(1..=*n), "seed {seed} stream {k:?}: {} of {n}", g.len());
            }
            let s = &sim.stats;
            assert!(s.conn_drops > 0 && s.decode_closes + s.corrupt_receives > 0, "faults happened: {s:?}");
            let fates: Vec<_> = (1..=3).flat_map(|n| sim.decisions(n)).collect();
            for want in ["dropped", "duplicated", "held", "corrupted", "delayed"] {
                assert!(
                    fates.iter().any(|d| serde_json::to_string(&d.fate).unwrap().contains(want)),
                    "no {want} decision"
                );
            }
        }
    }

    /// (a') Crashes: no duplicate ever, order kept, messages lost only
    /// around a restart, and traffic flows again after it.
    #[test]
    fn crashes_lose_at_most_once_and_never_duplicate() {
        let mut schedule = chaos(7, 2500);
        schedule.events.push(Timed { at_ms: 700, event: ScheduleEvent::Crash { node: 2 } });
        schedule.events.push(Timed { at_ms: 1500, event: ScheduleEvent::Crash { node: 3 } });
        let mut sim = Sim::new(SimConfig { nodes: vec![1, 2, 3], lanes: 2, schedule, seed: 7, ..Default::default() });
        let mut next: BTreeMap<StreamKey, u64> = BTreeMap::new();
        let mut sent_after: BTreeMap<StreamKey, u64> = BTreeMap::new();
        for ms in 0..2500 {
            for a in 1..=3u16 {
                for b in 1..=3u16 {
                    let lane = (ms % 2) as u16;
                    if a != b && ms % 2 == 0 {
                        let n = next.entry((a, b, lane)).or_insert(0);
                        if sim.send(a, b, lane, *n + 1) {
                            *n += 1;
                            if ms >= 1700 {
                                sent_after.entry((a, b, lane)).or_insert(*n);
                            }
                        }
                    }
                }
            }
            let t = sim.ms(ms + 1);
            sim.run_until(t);
        }
        drain(&mut sim, 60_000);
        assert_eq!(sim.stats.crashes, 2);
        assert!(sim.stats.abandoned > 0, "{:?}", sim.stats);
        assert!(sim.errors.is_empty(), "{:?}", sim.errors);
        let mut got: BTreeMap<StreamKey, Vec<u64>> = BTreeMap::new();
        for d in &sim.deliveries {
            got.entry((d.from, d.node, d.lane)).or_default().push(d.corr);
        }
        for (k, n) in &next {
            let g = &got[k];
            assert!(g.windows(2).all(|w| w[0] < w[1]), "{k:?} duplicated or reordered");
            // Everything sent after the last restart arrived.
            let first = sent_after[k];
            let tail: Vec<u64> = g.iter().copied().filter(|&c| c >= first).collect();
            assert!(tail.iter().copied().eq(first..=*n), "{k:?} lost messages after the last restart");
        }
    }

    /// A process: a node in one incarnation (a restarted node is a new
    /// process; what the old one knew is gone).
    type Proc = (NodeId, u64);

    /// Happened-before, computed from the simulated history with vector
    /// clocks over processes (never sent on the wire).
    #[derive(Default)]
    struct Oracle {
        /// Per message: (sender, destination node, vector clock at send, sent at ms).
        msgs: Vec<(Proc, NodeId, BTreeMap<Proc, u64>, u64)>,
        clocks: BTreeMap<Proc, BTreeMap<Proc, u64>>,
        /// Per receiving process, the messages it delivered, in order.
        delivered: BTreeMap<Proc, Vec<u64>>,
        /// Every message delivered anywhere.
        done: Vec<bool>,
        /// Check that every predecessor was delivered first (no crash in the
        /// run); else only that none is delivered after a successor.
        strict: bool,
    }

    impl Oracle {
        fn next_id(&self) -> u64 {
            self.msgs.len() as u64
        }

        fn send(&mut self, from: Proc, to: NodeId, ms: u64) {
            let vc = self.clocks.entry(from).or_default();
            *vc.entry(from).or_insert(0) += 1;
            self.msgs.push((from, to, vc.clone(), ms));
            self.done.push(false);
        }

        fn before(a: &BTreeMap<Proc, u64>, b: &BTreeMap<Proc, u64>) -> bool {
            a != b && a.iter().all(|(k, v)| b.get(k).copied().unwrap_or(0) >= *v)
        }

        fn deliver(&mut self, at: Proc, id: u64) {
            let (_, to, vc, _) = self.msgs[id as usize].clone();
            assert_eq!(to, at.0);
            assert!(!self.done[id as usize], "message {id} delivered twice");
            let mine = self.delivered.entry(at).or_default();
            for &m in mine.iter() {
                assert!(
                    !Self::before(&vc, &self.msgs[m as usize].2),
                    "message {id} delivered at {at:?} after its causal successor {m}"
                );
            }
            if self.strict {
                for (i, (_, to2, vc2, _)) in self.msgs.iter().enumerate() {
                    if *to2 == at.0 && Self::before(vc2, &vc) {
                        assert!(self.done[i], "message {id} delivered at {at:?} before its causal predecessor {i}");
                    }
                }
            }
            mine.push(id);
            self.done[id as usize] = true;
            let clock = self.clocks.entry(at).or_default();
            for (k, v) in vc {
                let e = clock.entry(k).or_insert(0);
                *e = (*e).max(v);
            }
            *clock.entry(at).or_insert(0) += 1;
        }
    }

    fn causal_run(nodes: Vec<NodeId>, seed: u64, spontaneous_until: u64, extra: Vec<Timed>) -> (Sim, Oracle) {
        let mut schedule = chaos(seed, spontaneous_until + 500);
        let strict = extra.is_empty();
        schedule.events.extend(extra);
        let mut sim = Sim::new(SimConfig {
            nodes: nodes.clone(),
            lanes: 3,
            causal: Some(CausalConfig { max_buffered: 8, ..Default::default() }),
            receiver: ReceiverConfig { max_held: 16, ..Default::default() },
            conn_drop: 0.001,
            schedule,
            seed,
            ..Default::default()
        });
        let mut oracle = Oracle { strict, ..Default::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabc);
        let mut seen = 0;
        let pick = |rng: &mut ChaCha8Rng, not: NodeId| loop {
            let n = nodes[rng.random_range(0..nodes.len())];
            if n != not {
                break n;
            }
        };
        let send = |sim: &mut Sim, oracle: &mut Oracle, rng: &mut ChaCha8Rng, a: NodeId, ms: u64| {
            let b = pick(rng, a);
            let id = oracle.next_id();
            if sim.send(a, b, rng.random_range(0..3), id) {
                oracle.send((a, sim.incarnation(a)), b, ms);
            }
        };
        let mut ms = 0;
        while ms < spontaneous_until || !sim.idle() {
            assert!(ms < 60_000, "causal run stuck: {:?}", sim.stats);
            if ms < spontaneous_until {
                for &a in &nodes {
                    if rng.random_bool(0.05) {
                        send(&mut sim, &mut oracle, &mut rng, a, ms);
                    }
                }
            }
            let t = sim.ms(ms + 1);
            sim.run_until(t);
            // React to deliveries: some cause further messages.
            while seen < sim.deliveries.len() {
                let d = sim.deliveries[seen].clone();
                seen += 1;
                oracle.deliver((d.node, d.incarnation), d.corr);
                if ms < spontaneous_until + 200 && rng.random_bool(0.6) {
                    send(&mut sim, &mut oracle, &mut rng, d.node, ms);
                }
            }
            ms += 1;
        }
        (sim, oracle)
    }

    /// (b) Causal channels never deliver out of causal order under
    /// injected reordering, delay, loss and duplication, with messages of
    /// one pair spread over 3 lanes (no FIFO), a tiny causal buffer (so the
    /// `Full` path runs), and every message is eventually delivered.
    #[test]
    fn causal_channels_respect_happened_before_and_deliver_everything() {
        for (nodes, seed) in [(vec![1, 2, 3], 1), (vec![1, 2, 3, 4, 5], 2), (vec![2, 5, 9, 11], 3)] {
            let (sim, oracle) = causal_run(nodes, seed, 1500, Vec::new());
            assert!(sim.errors.is_empty(), "{:?}", sim.errors);
            let total = oracle.done.iter().filter(|&&d| d).count();
            assert_eq!(total, oracle.msgs.len(), "every message delivered");
            assert!(total > 300, "enough traffic: {total}");
            assert!(sim.stats.causal_full_retries > 0, "the full buffer path ran: {:?}", sim.stats);
        }
    }

    /// (b') A crash and restart on a causal channel: no message is ever
    /// delivered twice or after one it causally precedes, the restarted
    /// node's old dependencies never block anyone, and every message sent
    /// once everyone knows of the restart is delivered.
    #[test]
    fn causal_order_survives_a_crash() {
        let crash = vec![Timed { at_ms: 600, event: ScheduleEvent::Crash { node: 3 } }];
        let (sim, oracle) = causal_run(vec![1, 2, 3, 4], 4, 1500, crash);
        assert_eq!(sim.stats.crashes, 1);
        // Messages to or from the crashed node's old run, or whose
        // causal past includes them, are refused as stale: reported, not
        // a failure.
        assert!(sim.errors.iter().all(|e| e.contains("previous incarnation")), "{:?}", sim.errors);
        let late: Vec<usize> = (0..oracle.msgs.len()).filter(|&i| oracle.msgs[i].3 >= 1000).collect();
        assert!(late.len() > 100);
        for i in late {
            assert!(oracle.done[i], "message {i} sent after the restart was lost");
        }
        let lost = oracle.done.iter().filter(|&&d| !d).count();
        assert!(lost > 0, "the crash lost something");
    }

    /// (c) A schedule saved as JSON replays to an identical trace: every
    /// node's frames (kind, sequence, times, damage), the injectors'
    /// decisions, and every delivery.
    #[test]
    fn a_saved_schedule_replays_to_an_identical_trace() {
        const SAVED: &str = r#"{
          "seed": 99,
          "events": [
            { "at_ms": 0, "event": { "set_rule": { "name": "lossy", "rule": {
                "drop": 0.1, "duplicate": 0.05, "reorder": 0.1, "corrupt": 0.02, "delay_ms": [0, 5] } } } },
            { "at_ms": 0, "event": { "set_rule": { "name": "slow-2", "rule": {
                "node": 2, "channel": 0, "direction": "receive", "delay_ms": [10, 30] } } } },
            { "at_ms": 300, "event": { "partition": { "sides": [[1, 2], [3]] } } },
            { "at_ms": 600, "event": "heal" },
            { "at_ms": 700, "event": { "crash": { "node": 3 } } },
            { "at_ms": 900, "event": { "remove_rule": { "name": "lossy" } } },
            { "at_ms": 1000, "event": "clear_rules" }
          ]
        }"#;
        let schedule = Schedule::from_json(SAVED).unwrap();
        assert_eq!(Schedule::from_json(&schedule.to_json()).unwrap(), schedule);
        let run = |schedule: Schedule| {
            let mut sim = Sim::new(SimConfig { schedule, seed: 5, conn_drop: 0.002, ..Default::default() });
            let mut n = 0;
            for ms in 0..1200 {
                for a in 1..=3u16 {
                    for b in 1..=3u16 {
                        if a != b && ms % 4 == 0 {
                            n += 1;
                            sim.send(a, b, (n % 2) as u16, n);
                        }
                    }
                }
                let t = sim.ms(ms + 1);
                sim.run_until(t);
            }
            drain(&mut sim, 30_000);
            let traces: Vec<_> = (1..=3).map(|n| (sim.trace(n), sim.decisions(n))).collect();
            (traces, sim.deliveries.clone(), sim.stats.clone())
        };
        let a = run(schedule.clone());
        let b = run(Schedule::from_json(&schedule.to_json()).unwrap());
        assert!(a.2.crashes == 1 && a.2.cuts > 0, "{:?}", a.2);
        assert!(a.0.iter().all(|(t, d)| !t.is_empty() && !d.is_empty()));
        assert_eq!(a.2, b.2);
        assert_eq!(a.1, b.1, "same deliveries");
        assert!(a.0 == b.0, "same traces and decisions");
    }
}
