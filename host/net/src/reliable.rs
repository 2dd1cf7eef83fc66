//! Reliable delivery on one stream: sequence numbers, cumulative acks,
//! retransmission and deduplication, as I/O-free state machines.
//!
//! A *stream* is one direction of one lane of one channel between two
//! nodes: the node that dialed the connection sends its data frames on it,
//! and the acks for them come back on the same connection. The driver owns
//! one [`Sender`] per outgoing stream and one [`Receiver`] per incoming
//! stream, and keeps both across dropped connections: a connection is
//! transport, the stream is the state.
//!
//! - [`Sender`] numbers messages from 1, keeps every message until it is
//!   acknowledged (bounded in count and bytes: a full buffer gives the
//!   message back, [`Full`], which is the channel's backpressure), re-sends
//!   everything unacknowledged in order on each new connection, and
//!   retransmits on a timer (RTO from RTT samples, Karn's rule, exponential
//!   backoff) when frames are lost on a live connection. TCP loses nothing,
//!   so on a live connection only interposition (the fault injector) loses
//!   frames; recovery therefore favours simplicity over bandwidth and goes
//!   back N: after a timeout every unacknowledged frame is sent again.
//! - [`Receiver`] hands messages out in sequence order exactly once, drops
//!   duplicates (and acks again, since a duplicate means an ack was lost or
//!   late), buffers frames that arrive early up to a bound and drops those
//!   beyond it (unacknowledged, so the sender sends them again), and
//!   coalesces acks (one per [`ReceiverConfig::ack_delay`], or sooner after
//!   [`ReceiverConfig::ack_every`] deliveries or a duplicate or a gap). An
//!   ack covers what the driver *took* with [`Receiver::poll_deliver`], so a
//!   driver that stops taking (a full inbox, a full causal buffer) stops
//!   acknowledging, and the sender's buffer fills: backpressure end to end.
//!
//! Unreliable channels bypass this module: their data frames carry `seq` 0
//! and are neither numbered, buffered nor acknowledged.
//!
//! Acks travel as `Ack` frames on the stream's own connection; the `ack`
//! field of `Data` is left 0 (a stream's reverse direction is another
//! stream on another connection, so there is nothing to piggyback on).
//!
//! # What "exactly once" means
//!
//! Within one incarnation of each side (see `Hello::incarnation`), every
//! message accepted by [`Sender::try_send`] is delivered by the receiving
//! [`Receiver`] exactly once and in order, whatever connections drop and
//! whatever frames are lost, duplicated, delayed or reordered, as long as
//! connections keep coming back.
//!
//! Across a restart no message is ever delivered twice, and messages may be
//! lost (at most once):
//! - *The sender restarts.* Its unacknowledged messages died with it. The
//!   new run numbers from 1 again; the receiver sees the higher incarnation
//!   in the new connection's hello ([`Receiver::handle_connected`]) and
//!   starts over, dropping what it held of the old run but had not handed
//!   out (those messages are lost, never duplicated).
//! - *The receiver restarts.* What it had delivered is gone with it. The
//!   sender sees the higher incarnation ([`Sender::handle_connected`]),
//!   gives back its unacknowledged messages as *abandoned* (each may or may
//!   not have been delivered to the old run; the driver reports them as
//!   undelivered, it does not resend them) and numbers from 1 again.
//!
//! A connection whose hello carries a *lower* incarnation than one already
//! seen belongs to a previous run: both state machines refuse it
//! ([`IncarnationError`]) and the driver closes it.
//!
//! # Driver call order, per stream
//!
//! Outgoing stream (a [`Sender`]):
//! 1. A connection is up and authenticated, the peer's hello read:
//!    [`Sender::handle_connected`]; report the abandoned messages.
//! 2. Each message: [`Sender::try_send`] (on `Full`, hold the message and
//!    stop taking from the reactor side until an ack frees room).
//! 3. Loop [`Sender::poll_transmit`] and write each frame (through the
//!    interposition pipeline) until it returns `None`.
//! 4. An `Ack` frame from the connection: [`Sender::handle_ack`], then 3.
//! 5. At [`Sender::poll_timeout`]: [`Sender::handle_timeout`], then 3.
//! 6. The connection drops: [`Sender::handle_disconnected`]; dial again.
//!
//! Incoming stream (a [`Receiver`]):
//! 1. A connection is up: [`Receiver::handle_connected`].
//! 2. Each `Data` frame: [`Receiver::handle_data`]; then take messages
//!    with [`Receiver::poll_deliver`] while there is room for them; then
//!    [`Receiver::poll_ack`] and write the `Ack` frame if one is due.
//! 3. At [`Receiver::poll_timeout`]: [`Receiver::poll_ack`].
//! 4. The connection drops: [`Receiver::handle_disconnected`].
#![forbid(unsafe_code)]

use crate::frame::Data;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Bytes a message counts for in the buffers: its meta and payload plus a
/// fixed allowance for the frame's other fields.
pub fn cost(data: &Data) -> usize {
    64 + data.meta.len() + data.payload.len()
}

/// How a [`Sender`] buffers and retransmits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// Most unacknowledged messages kept (the window). Default 4096.
    pub max_unacked: usize,
    /// Most unacknowledged bytes kept (by [`cost`]). Default 16 MiB. A
    /// single message larger than this is accepted when the buffer is
    /// empty, so that it can be sent at all.
    pub max_unacked_bytes: usize,
    /// Retransmission timeout before any RTT sample. Default 500 ms.
    pub initial_rto: Duration,
    /// Least retransmission timeout. Default 100 ms.
    pub min_rto: Duration,
    /// Greatest retransmission timeout, backoff included. Default 10 s.
    pub max_rto: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            max_unacked: 4096,
            max_unacked_bytes: 16 << 20,
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(100),
            max_rto: Duration::from_secs(10),
        }
    }
}

/// How a [`Receiver`] buffers and acknowledges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Most messages held: received in order but not yet taken, plus
    /// received early (after a gap). Beyond it frames are dropped
    /// unacknowledged and the sender sends them again. Default 1024.
    pub max_held: usize,
    /// Most bytes held (by [`cost`]), same rule. Default 16 MiB. The frame
    /// that fills the next gap is never refused for early frames: the
    /// furthest early frames are dropped to make room for it (so the
    /// buffer cannot wedge the stream), and it is accepted over the byte
    /// bound when nothing early is left to drop.
    pub max_held_bytes: usize,
    /// Longest an ack waits to be coalesced with later ones. Default 5 ms.
    pub ack_delay: Duration,
    /// Ack at once after this many messages taken since the last ack.
    /// Default 64.
    pub ack_every: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig { max_held: 1024, max_held_bytes: 16 << 20, ack_delay: Duration::from_millis(5), ack_every: 64 }
    }
}

/// The send buffer is full; the message is given back, nothing changed.
/// Wait for acks ([`Sender::handle_ack`]) and try again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("send buffer full")]
pub struct Full(pub Data);

/// A hello from an earlier run of the peer than one already seen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer incarnation {found} is older than {known}")]
pub struct IncarnationError {
    /// The incarnation in the connection's hello.
    pub found: u64,
    /// The newest incarnation seen before.
    pub known: u64,
}

/// Why a [`Sender`] refused an ack.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The ack covers messages never sent: the peer is confused or
    /// hostile. Nothing changed; the driver closes the connection.
    #[error("ack for {seq}, but only {highest} were sent")]
    Unsent {
        /// The acknowledged sequence number.
        seq: u64,
        /// The highest sequence number assigned.
        highest: u64,
    },
}

/// Why a [`Receiver`] refused a data frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// Sequence number 0 (an unreliable frame) on a reliable stream.
    /// Nothing changed; the driver closes the connection.
    #[error("unsequenced data frame on a reliable stream")]
    Unsequenced,
}

/// What [`Receiver::handle_data`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// New and next in order: it can be taken with
    /// [`Receiver::poll_deliver`] (with any buffered ones it unblocked).
    Accepted,
    /// New but early: kept until the gap before it fills.
    Buffered,
    /// Already received: dropped, and an ack is due again.
    Duplicate,
    /// New, but over the receiver's bounds: dropped unacknowledged; the
    /// sender will send it again.
    Dropped,
}

#[derive(Debug)]
struct Entry {
    data: Data,
    cost: usize,
    /// When it was last written to a connection.
    sent_at: Option<Instant>,
    /// Written more than once (its ack is no RTT sample: Karn's rule).
    retransmitted: bool,
}

/// The sending side of a reliable stream. See the module docs.
#[derive(Debug)]
pub struct Sender {
    config: SenderConfig,
    /// The next sequence number to assign (starts at 1).
    next_seq: u64,
    /// Everything up to here is acknowledged.
    acked: u64,
    /// Unacknowledged messages. Invariant: `queue[i].data.seq == acked + 1 + i`
    /// and `acked + queue.len() + 1 == next_seq`.
    queue: VecDeque<Entry>,
    /// Invariant: the sum of `queue[..].cost`.
    bytes: usize,
    /// Invariant: `cursor <= queue.len()`; `queue[..cursor]` were written
    /// on the current connection since it came up or since the last
    /// go-back; `queue[cursor..]` are due.
    cursor: usize,
    connected: bool,
    peer_incarnation: Option<u64>,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The timeout before backoff.
    rto: Duration,
    /// Timeouts in a row since the last ack that made progress.
    backoff: u32,
    /// Invariant: `Some` only while connected with frames in flight.
    deadline: Option<Instant>,
}

impl Sender {
    /// A stream with nothing sent yet, not connected.
    pub fn new(config: SenderConfig) -> Self {
        let rto = config.initial_rto;
        Sender {
            config,
            next_seq: 1,
            acked: 0,
            queue: VecDeque::new(),
            bytes: 0,
            cursor: 0,
            connected: false,
            peer_incarnation: None,
            srtt: None,
            rttvar: Duration::ZERO,
            rto,
            backoff: 0,
            deadline: None,
        }
    }

    /// Takes a message: assigns it the next sequence number (set in
    /// `data.seq`, returned; `data.ack` is set to 0) and queues it for
    /// [`Sender::poll_transmit`]. A full buffer gives it back.
    pub fn try_send(&mut self, mut data: Data) -> Result<u64, Full> {
        let cost = cost(&data);
        if self.queue.len() >= self.config.max_unacked
            || (!self.queue.is_empty() && self.bytes + cost > self.config.max_unacked_bytes)
        {
            return Err(Full(data));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        data.seq = seq;
        data.ack = 0;
        self.bytes += cost;
        self.queue.push_back(Entry { data, cost, sent_at: None, retransmitted: false });
        Ok(seq)
    }

    /// Whether a message of `cost` bytes would be taken now.
    pub fn has_room(&self, cost: usize) -> bool {
        self.queue.len() < self.config.max_unacked
            && (self.queue.is_empty() || self.bytes + cost <= self.config.max_unacked_bytes)
    }

    /// A connection to the peer is up, its hello carrying
    /// `peer_incarnation`. Everything unacknowledged will be sent again,
    /// in order. If the peer restarted, the unacknowledged messages are
    /// returned as abandoned (outcome unknown) and numbering restarts at 1.
    /// A hello from an older run is refused and nothing changes.
    pub fn handle_connected(&mut self, _now: Instant, peer_incarnation: u64) -> Result<Vec<Data>, IncarnationError> {
        let mut abandoned = Vec::new();
        match self.peer_incarnation {
            Some(known) if peer_incarnation < known => {
                return Err(IncarnationError { found: peer_incarnation, known });
            }
            Some(known) if peer_incarnation > known => {
                abandoned = self.queue.drain(..).map(|e| e.data).collect();
                self.bytes = 0;
                self.acked = 0;
                self.next_seq = 1;
                for d in &mut abandoned {
                    d.seq = 0;
                }
            }
            _ => {}
        }
        self.peer_incarnation = Some(peer_incarnation);
        self.connected = true;
        self.cursor = 0;
        self.deadline = None;
        self.backoff = 0;
        Ok(abandoned)
    }

    /// The connection dropped: nothing is written until the next
    /// [`Sender::handle_connected`]; nothing is forgotten.
    pub fn handle_disconnected(&mut self, _now: Instant) {
        self.connected = false;
        self.cursor = 0;
        self.deadline = None;
    }

    /// A cumulative ack: every message up to `seq` arrived. Frees them and
    /// returns how many were newly acknowledged (0 for a stale ack).
    pub fn handle_ack(&mut self, now: Instant, seq: u64) -> Result<usize, AckError> {
        let highest = self.next_seq - 1;
        if seq > highest {
            return Err(AckError::Unsent { seq, highest });
        }
        if seq <= self.acked {
            return Ok(0);
        }
        let n = (seq - self.acked) as usize;
        let mut sample = None;
        for _ in 0..n {
            let e = self.queue.pop_front().expect("invariant: queue holds acked+1..next_seq");
            self.bytes -= e.cost;
            if !e.retransmitted {
                sample = e.sent_at.map(|t| now.saturating_duration_since(t));
            }
        }
        self.acked = seq;
        self.cursor = self.cursor.saturating_sub(n);
        if let Some(rtt) = sample {
            self.observe_rtt(rtt);
        }
        self.backoff = 0;
        self.deadline = (self.connected && self.cursor > 0).then(|| now + self.current_rto());
        Ok(n)
    }

    fn observe_rtt(&mut self, rtt: Duration) {
        // RFC 6298.
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.expect("set above");
        self.rto =
            (srtt + (self.rttvar * 4).max(Duration::from_millis(1))).clamp(self.config.min_rto, self.config.max_rto);
    }

    /// The retransmission timeout now, backoff included.
    pub fn current_rto(&self) -> Duration {
        let factor = 1u32 << self.backoff.min(16);
        self.rto.saturating_mul(factor).min(self.config.max_rto)
    }

    /// Time passed. If the retransmission timer expired, every
    /// unacknowledged frame becomes due again (go back N) and the timeout
    /// doubles.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.deadline
            && now >= t
        {
            self.deadline = None;
            if self.connected && self.cursor > 0 {
                self.cursor = 0;
                self.backoff = (self.backoff + 1).min(16);
            }
        }
    }

    /// The next frame to write on the current connection, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Data> {
        if !self.connected || self.cursor >= self.queue.len() {
            return None;
        }
        let e = &mut self.queue[self.cursor];
        if e.sent_at.is_some() {
            e.retransmitted = true;
        }
        e.sent_at = Some(now);
        let data = e.data.clone();
        self.cursor += 1;
        if self.deadline.is_none() {
            self.deadline = Some(now + self.current_rto());
        }
        Some(data)
    }

    /// When [`Sender::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Messages sent or queued and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.queue.len()
    }

    /// Their bytes, by [`cost`].
    pub fn unacked_bytes(&self) -> usize {
        self.bytes
    }

    /// The highest sequence number acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.acked + self.queue.len() as u64 + 1, self.next_seq);
        for (i, e) in self.queue.iter().enumerate() {
            assert_eq!(e.data.seq, self.acked + 1 + i as u64);
        }
        assert_eq!(self.bytes, self.queue.iter().map(|e| e.cost).sum::<usize>());
        assert!(self.cursor <= self.queue.len());
        assert!(self.deadline.is_none() || self.connected);
    }
}

/// The receiving side of a reliable stream. See the module docs.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiverConfig,
    peer_incarnation: Option<u64>,
    /// The highest sequence number taken by [`Receiver::poll_deliver`].
    delivered: u64,
    /// Invariant: `ready` holds exactly `delivered + 1 ..= delivered + ready.len()`, in order.
    ready: VecDeque<Data>,
    /// Invariant: every key is greater than `delivered + ready.len() + 1`.
    early: BTreeMap<u64, Data>,
    /// Invariant: the sum of [`cost`] over `ready` and `early`.
    held_bytes: usize,
    /// The last ack returned by [`Receiver::poll_ack`].
    acked: u64,
    /// An ack is due at once (duplicate, gap, new connection).
    ack_now: bool,
    /// When a coalesced ack is due.
    ack_due: Option<Instant>,
}

impl Receiver {
    /// A stream with nothing received.
    pub fn new(config: ReceiverConfig) -> Self {
        Receiver {
            config,
            peer_incarnation: None,
            delivered: 0,
            ready: VecDeque::new(),
            early: BTreeMap::new(),
            held_bytes: 0,
            acked: 0,
            ack_now: false,
            ack_due: None,
        }
    }

    /// A connection from the peer is up, its hello carrying
    /// `peer_incarnation`. If the peer restarted, everything of its
    /// previous run is forgotten (held, untaken messages are dropped) and
    /// `Ok(true)` is returned. An ack of what was taken so far is due at
    /// once. A hello from an older run is refused and nothing changes.
    pub fn handle_connected(&mut self, _now: Instant, peer_incarnation: u64) -> Result<bool, IncarnationError> {
        let mut reset = false;
        match self.peer_incarnation {
            Some(known) if peer_incarnation < known => {
                return Err(IncarnationError { found: peer_incarnation, known });
            }
            Some(known) if peer_incarnation > known => {
                let config = self.config.clone();
                *self = Receiver::new(config);
                reset = true;
            }
            _ => {}
        }
        self.peer_incarnation = Some(peer_incarnation);
        self.ack_now = self.delivered > 0;
        Ok(reset)
    }

    /// The connection dropped. Frames received early (after a gap) are
    /// dropped: they were never acknowledged, so the sender sends them
    /// again, and a peer that disconnects cannot leave memory held here.
    /// What was received in order is kept; pending acks wait for the next
    /// connection.
    pub fn handle_disconnected(&mut self, _now: Instant) {
        self.ack_now = false;
        self.ack_due = None;
        for (_, d) in std::mem::take(&mut self.early) {
            self.held_bytes -= cost(&d);
        }
    }

    fn next_expected(&self) -> u64 {
        self.delivered + self.ready.len() as u64 + 1
    }

    /// A data frame from the connection. See [`Received`].
    pub fn handle_data(&mut self, _now: Instant, data: Data) -> Result<Received, ReceiveError> {
        let seq = data.seq;
        if seq == 0 {
            return Err(ReceiveError::Unsequenced);
        }
        let next = self.next_expected();
        if seq < next || self.early.contains_key(&seq) {
            self.ack_now = true;
            return Ok(Received::Duplicate);
        }
        let c = cost(&data);
        if seq == next {
            // The gap-filler comes first: make room for it by dropping the
            // furthest early frames (they will be sent again). Only a full
            // `ready` queue (the driver not taking) refuses it.
            while self.ready.len() + self.early.len() >= self.config.max_held
                || (self.held_bytes + c > self.config.max_held_bytes && !self.early.is_empty())
            {
                let Some((_, d)) = self.early.pop_last() else { return Ok(Received::Dropped) };
                self.held_bytes -= cost(&d);
            }
            self.held_bytes += c;
            self.ready.push_back(data);
            while let Some(d) = self.early.remove(&self.next_expected()) {
                self.ready.push_back(d);
            }
            Ok(Received::Accepted)
        } else {
            if self.ready.len() + self.early.len() >= self.config.max_held
                || self.held_bytes + c > self.config.max_held_bytes
            {
                return Ok(Received::Dropped);
            }
            self.held_bytes += c;
            self.early.insert(seq, data);
            // A gap: tell the sender where we are.
            self.ack_now = true;
            Ok(Received::Buffered)
        }
    }

    /// The next message in order, exactly once.
    pub fn poll_deliver(&mut self) -> Option<Data> {
        let d = self.ready.pop_front()?;
        self.held_bytes -= cost(&d);
        self.delivered += 1;
        debug_assert_eq!(d.seq, self.delivered);
        Some(d)
    }

    /// Whether [`Receiver::poll_deliver`] has a message.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The cumulative ack to write now (the highest sequence number
    /// taken), if one is due; else arms the coalescing timer
    /// ([`Receiver::poll_timeout`]).
    pub fn poll_ack(&mut self, now: Instant) -> Option<u64> {
        if self.delivered == 0 {
            self.ack_now = false;
            return None;
        }
        let behind = self.delivered - self.acked;
        let due = self.ack_now || behind >= self.config.ack_every || self.ack_due.is_some_and(|t| now >= t);
        if due && (behind > 0 || self.ack_now) {
            self.ack_now = false;
            self.ack_due = None;
            self.acked = self.delivered;
            return Some(self.delivered);
        }
        if behind > 0 && self.ack_due.is_none() {
            self.ack_due = Some(now + self.config.ack_delay);
        }
        None
    }

    /// When [`Receiver::poll_ack`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The highest sequence number taken.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Messages held (ready and early).
    pub fn held(&self) -> usize {
        self.ready.len() + self.early.len()
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (i, d) in self.ready.iter().enumerate() {
            assert_eq!(d.seq, self.delivered + 1 + i as u64);
        }
        let next = self.next_expected();
        assert!(self.early.keys().all(|&k| k > next));
        let bytes: usize = self.ready.iter().chain(self.early.values()).map(cost).sum();
        assert_eq!(bytes, self.held_bytes);
        assert!(self.acked <= self.delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(n: u64) -> Data {
        Data {
            seq: 0,
            ack: 0,
            to: 1,
            from: 2,
            corr: n,
            channel: 0,
            hops: 0,
            msg_kind: 0,
            flags: 0,
            meta: Vec::new(),
            payload: n.to_le_bytes().to_vec(),
        }
    }

    #[test]
    fn early_frames_are_dropped_when_the_connection_drops() {
        let t = Instant::now();
        let mut r = Receiver::new(ReceiverConfig::default());
        r.handle_connected(t, 1).unwrap();
        for seq in [3, 4, 5] {
            let mut d = msg(seq);
            d.seq = seq;
            assert_eq!(r.handle_data(t, d), Ok(Received::Buffered));
        }
        assert_eq!(r.held(), 3);
        r.handle_disconnected(t);
        assert_eq!(r.held(), 0, "a peer that leaves takes its early frames' memory with it");
        r.check_invariants();
        // The sender sends them again after the gap; nothing is lost.
        r.handle_connected(t, 1).unwrap();
        for seq in 1..=5 {
            let mut d = msg(seq);
            d.seq = seq;
            r.handle_data(t, d).unwrap();
        }
        let got: Vec<u64> = std::iter::from_fn(|| r.poll_deliver()).map(|d| d.seq).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        r.check_invariants();
    }

    #[test]
    fn full_buffer_gives_the_message_back() {
        let mut s = Sender::new(SenderConfig { max_unacked: 2, ..Default::default() });
        assert_eq!(s.try_send(msg(1)), Ok(1));
        assert_eq!(s.try_send(msg(2)), Ok(2));
        let Err(Full(back)) = s.try_send(msg(3)) else { panic!("not full") };
        assert_eq!(back.corr, 3);
        let t = Instant::now();
        s.handle_connected(t, 1).unwrap();
        assert!(s.poll_transmit(t).is_some());
        assert_eq!(s.handle_ack(t, 1), Ok(1));
        assert_eq!(s.try_send(msg(3)), Ok(3));
        assert_eq!(s.handle_ack(t, 9), Err(AckError::Unsent { seq: 9, highest: 3 }));
        s.check_invariants();
    }

    #[test]
    fn reconnect_resends_in_order_and_timer_goes_back_n() {
        let t0 = Instant::now();
        let mut s = Sender::new(SenderConfig::default());
        for i in 1..=3 {
            s.try_send(msg(i)).unwrap();
        }
        assert_eq!(s.poll_transmit(t0), None, "not connected");
        s.handle_connected(t0, 7).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| s.poll_transmit(t0)).map(|d| d.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        s.handle_ack(t0 + Duration::from_millis(10), 1).unwrap();
        let due = s.poll_timeout().unwrap();
        s.handle_timeout(due);
        let seqs: Vec<u64> = std::iter::from_fn(|| s.poll_transmit(due)).map(|d| d.seq).collect();
        assert_eq!(seqs, [2, 3], "go back N after a timeout");
        assert!(s.poll_timeout().unwrap() - due >= s.current_rto() / 2);
        s.handle_disconnected(due);
        s.handle_connected(due, 7).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| s.poll_transmit(due)).map(|d| d.seq).collect();
        assert_eq!(seqs, [2, 3]);
        // The peer restarted: unacked messages are abandoned, numbering restarts.
        s.handle_disconnected(due);
        let abandoned = s.handle_connected(due, 8).unwrap();
        assert_eq!(abandoned.iter().map(|d| d.corr).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(s.try_send(msg(9)), Ok(1));
        assert_eq!(s.handle_connected(due, 7), Err(IncarnationError { found: 7, known: 8 }));
        s.check_invariants();
    }

    #[test]
    fn receiver_dedups_reorders_and_resets_on_restart() {
        let t = Instant::now();
        let mut r = Receiver::new(ReceiverConfig { max_held: 3, ..Default::default() });
        r.handle_connected(t, 1).unwrap();
        let d = |seq| Data { seq, ..msg(seq) };
        assert_eq!(r.handle_data(t, d(2)), Ok(Received::Buffered));
        assert_eq!(r.handle_data(t, d(2)), Ok(Received::Duplicate));
        assert_eq!(r.handle_data(t, d(4)), Ok(Received::Buffered));
        assert_eq!(r.handle_data(t, d(5)), Ok(Received::Buffered));
        assert_eq!(r.handle_data(t, d(6)), Ok(Received::Dropped), "over the bound");
        assert_eq!(r.poll_deliver(), None);
        // The gap-filler gets in, evicting the furthest early frame.
        assert_eq!(r.handle_data(t, d(1)), Ok(Received::Accepted));
        assert_eq!(r.poll_deliver().map(|d| d.seq), Some(1));
        assert_eq!(r.poll_deliver().map(|d| d.seq), Some(2));
        assert_eq!(r.poll_deliver(), None);
        assert_eq!(r.handle_data(t, d(5)), Ok(Received::Buffered), "5 was evicted");
        let mut r = Receiver::new(ReceiverConfig::default());
        r.handle_connected(t, 1).unwrap();
        r.handle_data(t, d(2)).unwrap();
        assert_eq!(r.handle_data(t, d(1)), Ok(Received::Accepted));
        assert_eq!(r.poll_deliver().map(|d| d.seq), Some(1));
        assert_eq!(r.poll_deliver().map(|d| d.seq), Some(2));
        assert_eq!(r.poll_deliver(), None);
        assert_eq!(r.poll_ack(t), Some(2), "the gap made the ack urgent");
        assert_eq!(r.handle_data(t, d(3)), Ok(Received::Accepted));
        r.poll_deliver().unwrap();
        assert_eq!(r.poll_ack(t), None, "coalesced");
        let due = r.poll_timeout().unwrap();
        assert_eq!(r.poll_ack(due), Some(3));
        assert_eq!(r.handle_data(t, d(1)), Ok(Received::Duplicate));
        assert_eq!(r.poll_ack(t), Some(3), "a duplicate is acked again");
        assert_eq!(r.handle_data(t, d(0)), Err(ReceiveError::Unsequenced));
        r.handle_data(t, d(4)).unwrap();
        assert_eq!(r.handle_connected(t, 2), Ok(true));
        assert_eq!(r.poll_deliver(), None, "the old run's message is dropped");
        assert_eq!(r.handle_data(t, d(1)), Ok(Received::Accepted));
        r.check_invariants();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send,
        Transmit,
        /// Deliver the k-th frame in flight (mod), maybe duplicated.
        Arrive(usize, bool),
        /// Lose the k-th frame in flight.
        Lose(usize),
        Ack,
        LoseAck,
        Reconnect,
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Send),
            3 => Just(Op::Transmit),
            4 => (any::<usize>(), any::<bool>()).prop_map(|(k, d)| Op::Arrive(k, d)),
            1 => any::<usize>().prop_map(Op::Lose),
            2 => Just(Op::Ack),
            1 => Just(Op::LoseAck),
            1 => Just(Op::Reconnect),
            2 => (0..2000u16).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever the interleaving of sends, losses, duplicates,
        /// reorderings, acks and reconnects: the receiver hands out
        /// 1, 2, 3, … with no gap and no repeat, both sides keep their
        /// invariants, and once the network behaves everything arrives.
        #[test]
        fn sender_receiver_invariants(ops in proptest::collection::vec(op(), 1..300)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut s = Sender::new(SenderConfig { max_unacked: 16, ..Default::default() });
            let mut r = Receiver::new(ReceiverConfig { max_held: 6, ..Default::default() });
            s.handle_connected(now, 1).unwrap();
            r.handle_connected(now, 1).unwrap();
            let mut in_flight: Vec<Data> = Vec::new();
            let mut acks: Vec<u64> = Vec::new();
            let mut sent = 0u64;
            let mut got = Vec::new();
            let step = |s: &mut Sender, r: &mut Receiver, in_flight: &mut Vec<Data>, acks: &mut Vec<u64>, got: &mut Vec<u64>, now: Instant, op: &Op, sent: &mut u64| {
                match op {
                    Op::Send => {
                        if s.try_send(msg(*sent + 1)).is_ok() { *sent += 1; }
                    }
                    Op::Transmit => { if let Some(d) = s.poll_transmit(now) { in_flight.push(d); } }
                    Op::Arrive(k, dup) => {
                        if !in_flight.is_empty() {
                            let i = k % in_flight.len();
                            let d = if *dup { in_flight[i].clone() } else { in_flight.remove(i) };
                            r.handle_data(now, d).unwrap();
                            while let Some(d) = r.poll_deliver() { got.push(d.corr); }
                            if let Some(a) = r.poll_ack(now) { acks.push(a); }
                        }
                    }
                    Op::Lose(k) => { if !in_flight.is_empty() { let i = k % in_flight.len(); in_flight.remove(i); } }
                    Op::Ack => { if !acks.is_empty() { let a = acks.remove(0); s.handle_ack(now, a).unwrap(); } }
                    Op::LoseAck => { if !acks.is_empty() { acks.remove(0); } }
                    Op::Reconnect => {
                        in_flight.clear(); acks.clear();
                        s.handle_disconnected(now); r.handle_disconnected(now);
                        assert!(s.handle_connected(now, 1).unwrap().is_empty());
                        assert!(!r.handle_connected(now, 1).unwrap());
                        if let Some(a) = r.poll_ack(now) { acks.push(a); }
                    }
                    Op::Tick(_) => {
                        s.handle_timeout(now);
                        if let Some(a) = r.poll_ack(now) { acks.push(a); }
                    }
                }
            };
            for op in &ops {
                if let Op::Tick(ms) = op { now += Duration::from_millis(*ms as u64); }
                step(&mut s, &mut r, &mut in_flight, &mut acks, &mut got, now, op, &mut sent);
                s.check_invariants();
                r.check_invariants();
                prop_assert!(got.iter().copied().eq(1..=got.len() as u64), "in order, exactly once: {:?}", got);
                prop_assert!(s.acked() <= got.len() as u64);
            }
            // Now a perfect network until everything is acknowledged.
            let mut rounds = 0;
            while s.unacked() > 0 {
                rounds += 1;
                prop_assert!(rounds < 10_000, "stuck");
                now += Duration::from_millis(50);
                s.handle_timeout(now);
                while let Some(d) = s.poll_transmit(now) { in_flight.push(d); }
                for d in in_flight.drain(..) {
                    r.handle_data(now, d).unwrap();
                    while let Some(d) = r.poll_deliver() { got.push(d.corr); }
                }
                if let Some(a) = r.poll_ack(now) { acks.push(a); }
                for a in acks.drain(..) { s.handle_ack(now, a).unwrap(); }
            }
            prop_assert!(got.iter().copied().eq(1..=sent), "all {} delivered once: {:?}", sent, got);
        }
    }
}
