//! The interposition pipeline: every frame a node sends or receives passes
//! through an ordered list of [`Hook`]s, where tracing ([`Trace`]) and
//! fault injection ([`FaultInjector`]) plug in. I/O-free: the driver feeds
//! frames in with `handle_*(now, …)` and writes or processes what
//! [`Pipeline::poll_release`] gives back, at the time it says.
//!
//! A hook may pass a frame, drop it, delay it, duplicate it, hold it back
//! so the next frame overtakes it, or mark it to be corrupted on the wire.
//! Corruption damages the frame's *encoded bytes* ([`Damage::apply`]) in a
//! way the frame decoder always refuses (a bad version or kind byte, a bad
//! length prefix, a body cut short or with bytes after it), so the
//! receiving side closes the connection as it would for real damage.
//!
//! The [`FaultInjector`] is seeded (ChaCha8; node `n` draws from stream `n`
//! of the seed) and driven by a [`Schedule`], a timed list of fault events
//! (set or remove a rule, partition, heal, crash) that serializes to JSON:
//! a run saved with its seed and schedule replays the same decisions given
//! the same inputs (tested).
//!
//! # Driver call order
//!
//! - A frame to write: [`Pipeline::handle_send`] with the connection's id
//!   (any number the driver picks; hooks carry it through).
//! - A frame decoded from a connection: [`Pipeline::handle_receive`].
//! - Then, and whenever [`Pipeline::poll_timeout`] passes
//!   ([`Pipeline::handle_timeout`] first): loop [`Pipeline::poll_release`]
//!   and carry out each packet: a `Send` one is encoded, damaged with
//!   [`Damage::apply`] if `corrupt` is set, and written to its connection;
//!   a `Receive` one whose `corrupt` is set counts as a decode error (close
//!   the connection), else it goes to the reliable/causal layers. A packet
//!   whose connection (`conn`) is gone is dropped.
//! - Loop [`Pipeline::poll_event`] and carry out each [`FaultEvent`]
//!   (crash this node; close connections to peers cut off by a partition).
#![forbid(unsafe_code)]

use crate::node::NodeId;
use crate::frame::{Frame, MAX_FRAME_LEN};
use rand::rngs::ChaCha8Rng;
use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Longest delay or hold a rule can impose: one day (longer values in a
/// schedule are cut to it).
pub const MAX_FAULT_MS: u64 = 24 * 3600 * 1000;

/// Which way a frame is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From this node to the peer.
    Send,
    /// From the peer to this node.
    Receive,
}

/// A frame in the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Which way it goes.
    pub dir: Direction,
    /// The node at the other end of its connection.
    pub peer: NodeId,
    /// The index of its connection's channel.
    pub channel: u16,
    /// The driver's id of its connection; hooks carry it through.
    pub conn: u64,
    /// The frame.
    pub frame: Frame,
    /// Not released before this time.
    pub release_at: Instant,
    /// Damage to do to its encoding (a `Receive` packet marked so counts as
    /// undecodable).
    pub corrupt: Option<Damage>,
}

/// Damage to one encoded frame that the frame decoder always refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// The version byte XOR this (non-zero) value.
    Version(u8),
    /// The kind byte set to this undefined kind (0 or 10..=255; 1..=9 are
    /// the frame kinds, 9 the Noise record).
    Kind(u8),
    /// The length prefix set past the limit by 1 + this (mod 4096).
    Oversize(u16),
    /// The length prefix set to this (0 or 1): too short for a header.
    Undersize(u8),
    /// The length prefix shortened by 1 + this (mod the body length): the
    /// body ends inside a field.
    Shorten(u32),
    /// This byte appended to the body and counted in the length prefix.
    Trailing(u8),
}

impl Damage {
    /// A damage drawn from `rng`.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Damage {
        match rng.random_range(0..6u8) {
            0 => Damage::Version(rng.random_range(1..=255)),
            1 => {
                let k = rng.random_range(9..=255u8);
                Damage::Kind(if k == 9 { 0 } else { k })
            }
            2 => Damage::Oversize(rng.random()),
            3 => Damage::Undersize(rng.random_range(0..2)),
            4 => Damage::Shorten(rng.random()),
            _ => Damage::Trailing(rng.random()),
        }
    }

    /// Damages `frame`, the encoding of exactly one frame (as
    /// `Frame::encode` wrote it). Afterwards `Frame::decode` refuses it.
    pub fn apply(self, frame: &mut Vec<u8>) {
        if frame.len() < 6 {
            // Not a frame: make it one the decoder refuses.
            frame.clear();
            frame.extend_from_slice(&[0, 0, 0, 0]);
            return;
        }
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let set_len = |f: &mut Vec<u8>, l: usize| f[..4].copy_from_slice(&(l as u32).to_le_bytes());
        match self {
            Damage::Version(x) => frame[4] ^= x.max(1),
            Damage::Kind(k) => frame[5] = if (1..=9).contains(&k) { 0 } else { k },
            Damage::Oversize(x) => set_len(frame, MAX_FRAME_LEN + 1 + (x as usize % 4096)),
            Damage::Undersize(x) => set_len(frame, (x % 2) as usize),
            Damage::Shorten(x) => {
                if len <= 2 {
                    set_len(frame, 0);
                } else {
                    let cut = 1 + (x as usize % (len - 2));
                    set_len(frame, len - cut);
                    frame.truncate(4 + len - cut);
                }
            }
            Damage::Trailing(b) => {
                frame.push(b);
                set_len(frame, len + 1);
            }
        }
    }
}

/// Damages one encoded frame with a damage drawn from `rng`, and says which.
pub fn corrupt_encoded<R: Rng + ?Sized>(frame: &mut Vec<u8>, rng: &mut R) -> Damage {
    let d = Damage::random(rng);
    d.apply(frame);
    d
}

/// Something a hook asks the driver to do to the node itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultEvent {
    /// Crash this node now (the driver stops it abruptly, losing its state;
    /// whether and when it restarts is the driver's business).
    Crash,
    /// A partition now separates this node from these peers: close the
    /// connections to them (frames to and from them are dropped until
    /// [`FaultEvent::Healed`]).
    Cut {
        /// The peers cut off.
        peers: Vec<NodeId>,
    },
    /// The partition that cut this node off is gone.
    Healed,
}

/// A stage of the interposition pipeline. Each call gets one packet and
/// pushes what should go on to `out`: nothing (drop), the packet (maybe
/// with a later `release_at`, or `corrupt` set), several (duplicates), or
/// packets it held back before.
pub trait Hook: Send + fmt::Debug + Any {
    /// A frame on its way out.
    fn before_send(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>);
    /// A frame that came in.
    fn on_receive(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>);
    /// When [`Hook::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// Time passed: release held packets into `out`.
    fn handle_timeout(&mut self, _now: Instant, _out: &mut Vec<Packet>) {}
    /// Something for the driver to do.
    fn poll_event(&mut self) -> Option<FaultEvent> {
        None
    }
    /// For [`Pipeline::hook`].
    fn as_any(&self) -> &dyn Any;
    /// For [`Pipeline::hook_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Hooks in order, and the packets they released, by release time.
#[derive(Debug, Default)]
pub struct Pipeline {
    hooks: Vec<Box<dyn Hook>>,
    /// Released packets by (release time, arrival order).
    queue: BTreeMap<(Instant, u64), Packet>,
    next: u64,
}

impl Pipeline {
    /// A pipeline that passes everything.
    pub fn new() -> Self {
        Pipeline::default()
    }

    /// Appends a hook (frames meet hooks in the order they were added, in
    /// both directions).
    pub fn with(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Box::new(hook));
        self
    }

    /// The first hook of type `T`.
    pub fn hook<T: Hook>(&self) -> Option<&T> {
        self.hooks.iter().find_map(|h| h.as_any().downcast_ref())
    }

    /// The first hook of type `T`, to change it.
    pub fn hook_mut<T: Hook>(&mut self) -> Option<&mut T> {
        self.hooks.iter_mut().find_map(|h| h.as_any_mut().downcast_mut())
    }

    /// A frame to write to connection `conn` to `peer`.
    pub fn handle_send(&mut self, now: Instant, peer: NodeId, channel: u16, conn: u64, frame: Frame) {
        let p = Packet { dir: Direction::Send, peer, channel, conn, frame, release_at: now, corrupt: None };
        self.run(0, now, vec![p]);
    }

    /// A frame decoded from connection `conn` from `peer`.
    pub fn handle_receive(&mut self, now: Instant, peer: NodeId, channel: u16, conn: u64, frame: Frame) {
        let p = Packet { dir: Direction::Receive, peer, channel, conn, frame, release_at: now, corrupt: None };
        self.run(0, now, vec![p]);
    }

    fn run(&mut self, from: usize, now: Instant, mut packets: Vec<Packet>) {
        for hook in &mut self.hooks[from..] {
            if packets.is_empty() {
                return;
            }
            let mut out = Vec::with_capacity(packets.len());
            for p in packets {
                match p.dir {
                    Direction::Send => hook.before_send(now, p, &mut out),
                    Direction::Receive => hook.on_receive(now, p, &mut out),
                }
            }
            packets = out;
        }
        for mut p in packets {
            p.release_at = p.release_at.max(now);
            self.queue.insert((p.release_at, self.next), p);
            self.next += 1;
        }
    }

    /// Time passed: hooks whose timers expired release what they held.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.hooks.len() {
            if self.hooks[i].poll_timeout().is_some_and(|t| t <= now) {
                let mut out = Vec::new();
                self.hooks[i].handle_timeout(now, &mut out);
                self.run(i + 1, now, out);
            }
        }
    }

    /// The next packet due at `now`, in release-time order (ties in the
    /// order they were released).
    pub fn poll_release(&mut self, now: Instant) -> Option<Packet> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    /// The next event a hook asks the driver to carry out.
    pub fn poll_event(&mut self) -> Option<FaultEvent> {
        self.hooks.iter_mut().find_map(|h| h.poll_event())
    }

    /// When [`Pipeline::handle_timeout`] or [`Pipeline::poll_release`] is
    /// next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queued = self.queue.keys().next().map(|k| k.0);
        self.hooks.iter().filter_map(|h| h.poll_timeout()).chain(queued).min()
    }

    /// Packets waiting for their release time.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// One frame as a trace records it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Microseconds since the trace's start.
    pub at_us: u64,
    /// Which way.
    pub dir: Direction,
    /// The peer.
    pub peer: NodeId,
    /// The channel.
    pub channel: u16,
    /// The connection.
    pub conn: u64,
    /// The frame's kind.
    pub kind: String,
    /// A data frame's `seq`, an ack's `seq`, else 0.
    pub seq: u64,
    /// A data frame's `corr`, else 0.
    pub corr: u64,
    /// Its release time, microseconds since the start.
    pub release_us: u64,
    /// Its damage, if marked.
    pub corrupt: Option<Damage>,
}

/// A hook that passes everything and records what it saw, keeping the
/// last `capacity` events (older ones are counted in
/// [`Trace::forgotten`]), and emits each as a `tracing` event at TRACE
/// level. Place it after an injector to see what survives.
#[derive(Debug)]
pub struct Trace {
    start: Instant,
    capacity: usize,
    events: VecDeque<TraceEvent>,
    forgotten: u64,
}

impl Trace {
    /// A trace whose times count from `start`.
    pub fn new(start: Instant, capacity: usize) -> Self {
        Trace { start, capacity, events: VecDeque::new(), forgotten: 0 }
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &TraceEvent> {
        self.events.iter()
    }

    /// Events dropped to respect the capacity.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    fn record(&mut self, now: Instant, p: &Packet) {
        if self.capacity == 0 {
            self.forgotten += 1;
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
            self.forgotten += 1;
        }
        let us = |t: Instant| t.saturating_duration_since(self.start).as_micros() as u64;
        let (seq, corr) = match &p.frame {
            Frame::Data(d) => (d.seq, d.corr),
            Frame::Ack { seq, .. } => (*seq, 0),
            _ => (0, 0),
        };
        tracing::trace!(
            dir = ?p.dir, peer = p.peer, channel = p.channel, conn = p.conn, kind = p.frame.name(), seq, corr,
            delay_us = p.release_at.saturating_duration_since(now).as_micros() as u64, corrupt = ?p.corrupt,
            "frame"
        );
        self.events.push_back(TraceEvent {
            at_us: us(now),
            dir: p.dir,
            peer: p.peer,
            channel: p.channel,
            conn: p.conn,
            kind: p.frame.name().to_owned(),
            seq,
            corr,
            release_us: us(p.release_at),
            corrupt: p.corrupt,
        });
    }
}

impl Hook for Trace {
    fn before_send(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>) {
        self.record(now, &packet);
        out.push(packet);
    }
    fn on_receive(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>) {
        self.record(now, &packet);
        out.push(packet);
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// What a fault rule does to the frames it matches. Probabilities are per
/// frame, drawn independently; absent fields are `None`/0 in JSON.
///
/// Rules touch traffic frames (data, ack, control, ping, pong), never the
/// handshake (hello, auth) or close: connection-level faults are
/// partitions, crashes, and corruption of traffic (which closes the
/// connection).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Only at this node (the node whose injector applies it).
    pub node: Option<NodeId>,
    /// Only frames to or from this peer.
    pub peer: Option<NodeId>,
    /// Only frames of this channel.
    pub channel: Option<u16>,
    /// Only frames going this way.
    pub direction: Option<Direction>,
    /// Probability of dropping the frame.
    pub drop: f64,
    /// Probability of sending it twice.
    pub duplicate: f64,
    /// Probability of holding it back until the next frame on the same
    /// connection and way has passed (or `hold_ms` elapsed).
    pub reorder: f64,
    /// Probability of corrupting its encoding.
    pub corrupt: f64,
    /// Delay it by a uniform draw from `[lo, hi]` milliseconds (at most
    /// [`MAX_FAULT_MS`]).
    pub delay_ms: Option<(u64, u64)>,
    /// Longest a frame is held back to be reordered. 0 means 50 ms; at
    /// most [`MAX_FAULT_MS`].
    pub hold_ms: u64,
}

impl Rule {
    fn matches(&self, me: NodeId, p: &Packet) -> bool {
        self.node.is_none_or(|n| n == me)
            && self.peer.is_none_or(|n| n == p.peer)
            && self.channel.is_none_or(|c| c == p.channel)
            && self.direction.is_none_or(|d| d == p.dir)
    }
}

/// One fault event of a [`Schedule`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleEvent {
    /// Add a rule, or replace the rule of that name in place. The first
    /// matching rule (in order of addition) decides a frame's fate.
    SetRule {
        /// Its name.
        name: String,
        /// The rule.
        rule: Rule,
    },
    /// Remove the rule of that name.
    RemoveRule {
        /// Its name.
        name: String,
    },
    /// Remove every rule.
    ClearRules,
    /// Nodes in different sides cannot exchange frames; nodes in no side
    /// are not affected. Replaces any previous partition.
    Partition {
        /// The sides.
        sides: Vec<Vec<NodeId>>,
    },
    /// Remove the partition.
    Heal,
    /// Crash this node.
    Crash {
        /// The node.
        node: NodeId,
    },
}

/// An event at a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    /// Milliseconds after the run's start.
    pub at_ms: u64,
    /// What happens.
    pub event: ScheduleEvent,
}

/// A seed and a timed list of fault events, for a whole cluster: each
/// node's injector applies the events that concern it. Serializes to JSON
/// to save a run and replay it as a regression test.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The injectors' seed (node `n` uses ChaCha8 stream `n`).
    pub seed: u64,
    /// Events; applied in time order (ties in list order).
    pub events: Vec<Timed>,
}

impl Schedule {
    /// The schedule as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a schedule always serializes")
    }

    /// A schedule from JSON.
    pub fn from_json(s: &str) -> Result<Schedule, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// What the injector did to a frame (or to itself), for its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Dropped by a rule.
    Dropped,
    /// Dropped by a partition.
    Partitioned,
    /// Sent twice.
    Duplicated,
    /// Held back to be reordered.
    Held,
    /// Released after being held.
    Released,
    /// Delayed by this many microseconds.
    Delayed(u64),
    /// Marked to be damaged.
    Corrupted(Damage),
    /// A schedule event was applied (its index in the schedule).
    Applied(usize),
}

/// One line of the injector's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Microseconds since the start.
    pub at_us: u64,
    /// Which way the frame went (`Send` for schedule events).
    pub dir: Direction,
    /// The peer (0 for schedule events).
    pub peer: NodeId,
    /// The frame's kind (empty for schedule events).
    pub kind: String,
    /// A data or ack frame's `seq`.
    pub seq: u64,
    /// What happened.
    pub fate: Fate,
}

#[derive(Debug)]
struct Held {
    key: (Direction, NodeId, u16, u64),
    packet: Packet,
    until: Instant,
}

/// The fault-injection hook. See the module docs.
#[derive(Debug)]
pub struct FaultInjector {
    me: NodeId,
    start: Instant,
    rng: ChaCha8Rng,
    /// Events not applied yet, in time order.
    pending: VecDeque<(usize, Timed)>,
    rules: Vec<(String, Rule)>,
    sides: Vec<Vec<NodeId>>,
    held: Vec<Held>,
    events: VecDeque<FaultEvent>,
    log: VecDeque<Decision>,
    log_capacity: usize,
}

impl FaultInjector {
    /// The injector of node `me` for a run started at `start`.
    pub fn new(me: NodeId, schedule: &Schedule, start: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(schedule.seed);
        rng.set_stream(u64::from(me));
        let mut pending: Vec<(usize, Timed)> = schedule.events.iter().cloned().enumerate().collect();
        pending.sort_by_key(|(i, t)| (t.at_ms, *i));
        FaultInjector {
            me,
            start,
            rng,
            pending: pending.into(),
            rules: Vec::new(),
            sides: Vec::new(),
            held: Vec::new(),
            events: VecDeque::new(),
            log: VecDeque::new(),
            log_capacity: 10_000,
        }
    }

    /// For a node that restarted during the run: the injector of its new
    /// process, which applies the schedule's past rules and partitions at
    /// once but not its past crashes (which would crash it again and
    /// again). The random draws start over, so a run with restarts replays
    /// identically only if the driver keeps the injector across the
    /// restart (the simulator does) instead of calling this.
    pub fn resumed(mut self, now: Instant) -> Self {
        let elapsed = now.saturating_duration_since(self.start);
        self.pending.retain(|(_, t)| {
            !(matches!(t.event, ScheduleEvent::Crash { .. }) && Duration::from_millis(t.at_ms) <= elapsed)
        });
        self
    }

    /// Keep at most this many log lines (default 10,000; oldest dropped).
    pub fn with_log_capacity(mut self, capacity: usize) -> Self {
        self.log_capacity = capacity;
        self
    }

    /// The log, oldest first.
    pub fn log(&self) -> impl Iterator<Item = &Decision> {
        self.log.iter()
    }

    /// Whether a partition separates this node from `peer` now.
    pub fn is_cut(&self, peer: NodeId) -> bool {
        self.separated(self.me, peer)
    }

    fn separated(&self, a: NodeId, b: NodeId) -> bool {
        let side = |n: NodeId| self.sides.iter().position(|s| s.contains(&n));
        matches!((side(a), side(b)), (Some(x), Some(y)) if x != y)
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }

    fn note(&mut self, now: Instant, p: Option<&Packet>, fate: Fate) {
        if self.log_capacity == 0 {
            return;
        }
        if self.log.len() == self.log_capacity {
            self.log.pop_front();
        }
        let (dir, peer, kind, seq) = match p {
            Some(p) => {
                let seq = match &p.frame {
                    Frame::Data(d) => d.seq,
                    Frame::Ack { seq, .. } => *seq,
                    _ => 0,
                };
                (p.dir, p.peer, p.frame.name().to_owned(), seq)
            }
            None => (Direction::Send, 0, String::new(), 0),
        };
        let at_us = self.us(now);
        self.log.push_back(Decision { at_us, dir, peer, kind, seq, fate });
    }

    /// Applies a fault event now (the schedule does this at its times; a
    /// driver may also call it, e.g. from an operator's command). Events it
    /// raises come out of [`Hook::poll_event`].
    pub fn apply(&mut self, event: ScheduleEvent) {
        match event {
            ScheduleEvent::SetRule { name, rule } => match self.rules.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = rule,
                None => self.rules.push((name, rule)),
            },
            ScheduleEvent::RemoveRule { name } => self.rules.retain(|(n, _)| *n != name),
            ScheduleEvent::ClearRules => self.rules.clear(),
            ScheduleEvent::Partition { sides } => {
                let was_cut = self.sides.iter().any(|s| s.contains(&self.me));
                self.sides = sides;
                let peers: Vec<NodeId> = {
                    let mut all: Vec<NodeId> = self.sides.iter().flatten().copied().collect();
                    all.sort_unstable();
                    all.dedup();
                    all.into_iter().filter(|&p| self.separated(self.me, p)).collect()
                };
                if !peers.is_empty() {
                    self.events.push_back(FaultEvent::Cut { peers });
                } else if was_cut {
                    self.events.push_back(FaultEvent::Healed);
                }
            }
            ScheduleEvent::Heal => {
                if self.sides.iter().any(|s| s.contains(&self.me)) {
                    self.events.push_back(FaultEvent::Healed);
                }
                self.sides.clear();
            }
            ScheduleEvent::Crash { node } => {
                if node == self.me {
                    self.events.push_back(FaultEvent::Crash);
                }
            }
        }
    }

    fn apply_due(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        while self.pending.front().is_some_and(|(_, t)| Duration::from_millis(t.at_ms) <= elapsed) {
            let (i, t) = self.pending.pop_front().expect("checked");
            self.note(now, None, Fate::Applied(i));
            self.apply(t.event);
        }
    }

    fn handle(&mut self, now: Instant, mut p: Packet, out: &mut Vec<Packet>) {
        self.apply_due(now);
        if self.separated(self.me, p.peer) {
            self.note(now, Some(&p), Fate::Partitioned);
            return;
        }
        let key = (p.dir, p.peer, p.channel, p.conn);
        let traffic = matches!(
            p.frame,
            Frame::Data(_) | Frame::Ack { .. } | Frame::Control { .. } | Frame::Ping { .. } | Frame::Pong { .. }
        );
        let rule = if traffic {
            self.rules.iter().find(|(_, r)| r.matches(self.me, &p)).map(|(_, r)| r.clone())
        } else {
            None
        };
        let mut dup = false;
        if let Some(rule) = rule {
            // A fixed number of draws per matching frame, so a change to one
            // probability does not shift the others' draws.
            let draws: [f64; 5] = std::array::from_fn(|_| self.rng.random());
            if draws[0] < rule.drop {
                self.note(now, Some(&p), Fate::Dropped);
                self.release_held(key, now, out);
                return;
            }
            if draws[1] < rule.corrupt {
                let d = Damage::random(&mut self.rng);
                p.corrupt = Some(d);
                self.note(now, Some(&p), Fate::Corrupted(d));
            }
            if let Some((lo, hi)) = rule.delay_ms {
                let (lo, hi) = (lo.min(hi).min(MAX_FAULT_MS), lo.max(hi).min(MAX_FAULT_MS));
                let us = lo * 1000 + (draws[2] * ((hi - lo) * 1000) as f64) as u64;
                if us > 0 {
                    p.release_at = p.release_at.max(now + Duration::from_micros(us));
                    self.note(now, Some(&p), Fate::Delayed(us));
                }
            }
            dup = draws[3] < rule.duplicate;
            if draws[4] < rule.reorder {
                let hold_ms = if rule.hold_ms == 0 { 50 } else { rule.hold_ms.min(MAX_FAULT_MS) };
                self.note(now, Some(&p), Fate::Held);
                if dup {
                    self.note(now, Some(&p), Fate::Duplicated);
                    out.push(p.clone());
                }
                self.held.push(Held { key, packet: p, until: now + Duration::from_millis(hold_ms) });
                return;
            }
        }
        if dup {
            self.note(now, Some(&p), Fate::Duplicated);
            out.push(p.clone());
        }
        out.push(p);
        self.release_held(key, now, out);
    }

    fn release_held(&mut self, key: (Direction, NodeId, u16, u64), now: Instant, out: &mut Vec<Packet>) {
        self.release_where(now, out, |h| h.key == key);
    }

    /// Releases (in hold order) every held packet `which` picks.
    fn release_where(&mut self, now: Instant, out: &mut Vec<Packet>, which: impl Fn(&Held) -> bool) {
        let mut i = 0;
        while i < self.held.len() {
            if which(&self.held[i]) {
                let h = self.held.remove(i);
                self.note(now, Some(&h.packet), Fate::Released);
                let mut p = h.packet;
                p.release_at = p.release_at.max(now);
                out.push(p);
            } else {
                i += 1;
            }
        }
    }
}

impl Hook for FaultInjector {
    fn before_send(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>) {
        self.handle(now, packet, out);
    }
    fn on_receive(&mut self, now: Instant, packet: Packet, out: &mut Vec<Packet>) {
        self.handle(now, packet, out);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let next_event = self.pending.front().and_then(|(_, t)| self.start.checked_add(Duration::from_millis(t.at_ms)));
        self.held.iter().map(|h| h.until).chain(next_event).min()
    }
    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Packet>) {
        self.apply_due(now);
        self.release_where(now, out, |h| h.until <= now);
    }
    fn poll_event(&mut self) -> Option<FaultEvent> {
        self.events.pop_front()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Data, Hello};
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<[u64; 3]>(),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(v, meta, payload)| Frame::Data(Data {
                    seq: v[0],
                    ack: 0,
                    to: v[1],
                    from: v[2],
                    corr: 0,
                    channel: 1,
                    hops: 0,
                    msg_kind: 0,
                    flags: 0,
                    meta,
                    payload
                })),
            any::<(u16, u64)>().prop_map(|(channel, seq)| Frame::Ack { channel, seq }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            "[a-z]{0,10}".prop_map(|reason| Frame::Close { reason }),
            proptest::collection::vec(any::<u8>(), 0..50).prop_map(|payload| Frame::Control { payload }),
            Just(Frame::Hello(Hello {
                cluster: "c".into(),
                node: 1,
                incarnation: 2,
                name: "n".into(),
                channel: "ch".into(),
                lane: 0,
                nonce: [7; 32]
            })),
            Just(Frame::Auth { mac: [1; 32] }),
        ]
    }

    proptest! {
        /// Whatever the frame and the draw, the damaged encoding is refused
        /// by the decoder, and the damage is a function of the seed.
        #[test]
        fn damaged_frames_are_always_refused(f in frame(), seed in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut b = Vec::new();
            f.encode(&mut b);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut again = b.clone();
            let d = corrupt_encoded(&mut b, &mut rng);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            prop_assert_eq!(corrupt_encoded(&mut again, &mut rng), d);
            prop_assert_eq!(&b, &again);
            b.extend_from_slice(&tail);
            prop_assert!(Frame::decode(&b).is_err(), "{:?} accepted after {:?}", f, d);
        }
    }

    fn ping(n: u64) -> Frame {
        Frame::Ping { nonce: n }
    }

    #[test]
    fn pipeline_orders_releases_and_hooks_reorder() {
        let t0 = Instant::now();
        let rule = Rule { reorder: 1.0, hold_ms: 10, ..Default::default() };
        let sched = Schedule {
            seed: 1,
            events: vec![Timed { at_ms: 0, event: ScheduleEvent::SetRule { name: "r".into(), rule } }],
        };
        let mut p = Pipeline::new().with(FaultInjector::new(1, &sched, t0)).with(Trace::new(t0, 100));
        p.handle_send(t0, 2, 0, 1, ping(1));
        assert_eq!(p.poll_release(t0), None, "held");
        let t1 = p.poll_timeout().unwrap();
        assert_eq!(t1, t0 + Duration::from_millis(10));
        p.handle_timeout(t1);
        assert_eq!(p.poll_release(t1).map(|p| p.frame), Some(ping(1)));
        // A rule that only delays, then a partition.
        let rule = Rule { delay_ms: Some((5, 5)), ..Default::default() };
        p.hook_mut::<FaultInjector>().unwrap().apply(ScheduleEvent::SetRule { name: "r".into(), rule });
        p.handle_send(t1, 2, 0, 1, ping(2));
        p.handle_receive(t1, 2, 0, 1, Frame::Close { reason: String::new() });
        assert_eq!(
            p.poll_release(t1).map(|p| p.frame),
            Some(Frame::Close { reason: String::new() }),
            "close is not traffic"
        );
        assert_eq!(p.poll_release(t1), None);
        let t2 = t1 + Duration::from_millis(5);
        assert_eq!(p.poll_timeout(), Some(t2));
        assert_eq!(p.poll_release(t2).map(|p| p.frame), Some(ping(2)));
        p.hook_mut::<FaultInjector>().unwrap().apply(ScheduleEvent::Partition { sides: vec![vec![1], vec![2, 3]] });
        assert_eq!(p.poll_event(), Some(FaultEvent::Cut { peers: vec![2, 3] }));
        p.handle_send(t2, 2, 0, 1, Frame::Auth { mac: [0; 32] });
        p.handle_send(t2, 4, 0, 1, ping(3));
        assert_eq!(p.poll_release(t2), None, "still delayed by the rule");
        let t3 = t2 + Duration::from_millis(5);
        assert_eq!(p.poll_release(t3).map(|p| (p.peer, p.frame)), Some((4, ping(3))), "4 is in no side");
        assert_eq!(p.poll_release(t2 + Duration::from_secs(1)), None);
        p.hook_mut::<FaultInjector>().unwrap().apply(ScheduleEvent::Heal);
        assert_eq!(p.poll_event(), Some(FaultEvent::Healed));
        assert_eq!(p.hook::<Trace>().unwrap().events().count(), 4);
    }

    #[test]
    fn a_resumed_injector_does_not_crash_again() {
        let t0 = Instant::now();
        let sched = Schedule {
            seed: 1,
            events: vec![
                Timed { at_ms: 10, event: ScheduleEvent::Crash { node: 1 } },
                Timed { at_ms: 10, event: ScheduleEvent::Partition { sides: vec![vec![1], vec![2]] } },
                Timed { at_ms: 90, event: ScheduleEvent::Crash { node: 1 } },
            ],
        };
        let later = t0 + Duration::from_millis(50);
        let mut p = Pipeline::new().with(FaultInjector::new(1, &sched, t0).resumed(later));
        p.handle_timeout(later);
        assert_eq!(p.poll_event(), Some(FaultEvent::Cut { peers: vec![2] }));
        assert_eq!(p.poll_event(), None, "the past crash is not repeated");
        let t = p.poll_timeout().unwrap();
        assert_eq!(t, t0 + Duration::from_millis(90));
        p.handle_timeout(t);
        assert_eq!(p.poll_event(), Some(FaultEvent::Crash), "a future one still happens");
    }

    #[test]
    fn schedule_round_trips_through_json_and_replays_the_same_decisions() {
        let sched = Schedule {
            seed: 42,
            events: vec![
                Timed {
                    at_ms: 0,
                    event: ScheduleEvent::SetRule {
                        name: "chaos".into(),
                        rule: Rule {
                            drop: 0.2,
                            duplicate: 0.2,
                            reorder: 0.2,
                            corrupt: 0.1,
                            delay_ms: Some((1, 20)),
                            ..Default::default()
                        },
                    },
                },
                Timed { at_ms: 50, event: ScheduleEvent::Partition { sides: vec![vec![1, 2], vec![3]] } },
                Timed { at_ms: 80, event: ScheduleEvent::Heal },
                Timed { at_ms: 90, event: ScheduleEvent::Crash { node: 1 } },
            ],
        };
        let json = sched.to_json();
        let back = Schedule::from_json(&json).unwrap();
        assert_eq!(back, sched);
        let run = |s: &Schedule| {
            let t0 = Instant::now();
            let mut p = Pipeline::new().with(FaultInjector::new(1, s, t0));
            let mut out = Vec::new();
            for i in 0..400u64 {
                let now = t0 + Duration::from_micros(i * 250);
                p.handle_send(now, 2 + (i % 2) as u16, 0, 7, ping(i));
                p.handle_timeout(now);
                while let Some(r) = p.poll_release(now) {
                    out.push((i, r.peer, r.frame, r.release_at - t0, r.corrupt));
                }
                while let Some(e) = p.poll_event() {
                    out.push((i, 0, Frame::Close { reason: format!("{e:?}") }, Duration::ZERO, None));
                }
            }
            let log: Vec<Decision> = p.hook::<FaultInjector>().unwrap().log().cloned().collect();
            (out, log)
        };
        let a = run(&sched);
        let b = run(&back);
        assert_eq!(a, b);
        let fates = |f: fn(&Fate) -> bool| a.1.iter().filter(|d| f(&d.fate)).count();
        assert!(fates(|f| matches!(f, Fate::Dropped)) > 10);
        assert!(fates(|f| matches!(f, Fate::Duplicated)) > 10);
        assert!(fates(|f| matches!(f, Fate::Held)) > 10);
        assert!(fates(|f| matches!(f, Fate::Corrupted(_))) > 5);
        assert!(fates(|f| matches!(f, Fate::Partitioned)) > 10);
        assert!(a.0.iter().any(|o| matches!(&o.2, Frame::Close { reason } if reason == "Crash")));
        // Another seed decides otherwise.
        let other = run(&Schedule { seed: 43, ..sched.clone() });
        assert_ne!(a.1, other.1);
    }
}
