//! A closed-loop load generator: keeps `window` [`MigrantReq::Seq`]
//! requests outstanding to its `target` (sequence numbers 1, 2, 3, … with
//! its `sender` id), each reply sending the next, and times every request
//! from its send to its reply (monotonic clock) into a fixed log-linear
//! histogram (no allocation per request).
//!
//! Replies are expected in the order the requests were sent and echoing
//! their sequence number; anything else counts as a bad reply.
//!
//! **Failed requests.** The SDK reports a request the host refuses at once
//! (`Context::request` returns an error: no such reactor, inbox full, …)
//! and nothing else: a request that was accepted but never answered is
//! never reported to the sender (there is no timer either). So a refusal is
//! counted in `errors`, its sequence number is kept for the next attempt
//! (the target never saw it: the stream stays gap-free), and the attempt is
//! made when the next reply or the next message to this reactor arrives; a
//! loadgen whose every request was refused therefore waits for a message
//! (`Resume` or `Stats` will do). A request lost after it was accepted
//! shrinks the window by one for good: `in_flight` in the stats shows it,
//! and the target's sequence counters show the gap.
use guest_sdk::prelude::*;
use protocols::{LoadgenInit, LoadgenReply, LoadgenReq, MigrantReply, MigrantReq};
use std::time::Instant;

/// Sub-buckets per power of two: 32, so a bucket is at most ~3 % wide.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below `2 * SUB` have a bucket each; above, `SUB` buckets per
/// power of two up to 2^64.
const BUCKETS: usize = (2 * SUB + (63 - SUB_BITS as u64) * SUB) as usize;

/// A log-linear histogram of nanoseconds, allocated once.
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    samples: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Self { counts: vec![0; BUCKETS], samples: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // > SUB_BITS
        let sub = (v >> (e - SUB_BITS)) - SUB;
        (2 * SUB + u64::from(e - SUB_BITS - 1) * SUB + sub) as usize
    }

    /// The largest value in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let k = i - 2 * SUB;
        let e = (k / SUB) as u32 + SUB_BITS + 1;
        let sub = k % SUB;
        ((SUB + sub + 1) << (e - SUB_BITS)).wrapping_sub(1)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.samples += 1;
        self.max = self.max.max(v);
    }

    /// The value at quantile `num / den` (the upper bound of its bucket,
    /// never above the largest value seen); 0 without samples.
    fn quantile(&self, num: u64, den: u64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let rank = (self.samples * num).div_ceil(den).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    fn clear(&mut self) {
        self.counts.fill(0);
        self.samples = 0;
        self.max = 0;
    }
}

#[derive(Default)]
struct Loadgen {
    /// The target's address.
    target: u64,
    sender: u64,
    window: u32,
    stop_after: Option<u64>,
    /// The next sequence number to send (from 1).
    next_seq: u64,
    replied: u64,
    errors: u64,
    bad_replies: u64,
    /// Outstanding requests, oldest first: id, sequence number, sent at.
    in_flight: VecDeque<(RequestId, u64, Instant)>,
    latency: Histogram,
    paused: bool,
}

impl Loadgen {
    /// Sends until `window` requests are outstanding (unless paused, done,
    /// or the host refuses one).
    fn fill(&mut self, cx: &mut Context, now: Instant) {
        while !self.paused
            && self.in_flight.len() < self.window as usize
            && self.stop_after.is_none_or(|n| self.next_seq <= n)
        {
            let seq = self.next_seq;
            match cx.request(Address(self.target), &MigrantReq::Seq { sender: self.sender, seq }) {
                Ok(id) => {
                    self.in_flight.push_back((id, seq, now));
                    self.next_seq += 1;
                }
                Err(_) => {
                    // Kept for the next attempt: see the crate doc.
                    self.errors += 1;
                    break;
                }
            }
        }
    }

    fn stats(&self) -> LoadgenReply {
        let h = &self.latency;
        LoadgenReply::Stats {
            sent: self.next_seq - 1,
            replied: self.replied,
            errors: self.errors,
            bad_replies: self.bad_replies,
            in_flight: self.in_flight.len() as u32,
            samples: h.samples,
            p50_ns: h.quantile(1, 2),
            p99_ns: h.quantile(99, 100),
            p999_ns: h.quantile(999, 1000),
            max_ns: h.max,
            paused: self.paused,
        }
    }
}

impl Reactor for Loadgen {
    type Msg = LoadgenReq;

    fn start(&mut self, cx: &mut Context, init: Payload<'_>) {
        let init: LoadgenInit = init.decode().unwrap_or_else(|e| panic!("loadgen init: {e}"));
        self.target = init.target;
        self.sender = init.sender;
        self.window = init.window;
        self.stop_after = init.stop_after;
        self.next_seq = 1;
        self.in_flight.reserve(init.window as usize);
        self.latency = Histogram::new();
        self.fill(cx, Instant::now());
    }

    fn react(&mut self, cx: &mut Context, msg: LoadgenReq) {
        let reply = match msg {
            LoadgenReq::Stats => self.stats(),
            LoadgenReq::Reset => {
                self.latency.clear();
                LoadgenReply::Done
            }
            LoadgenReq::Pause => {
                self.paused = true;
                LoadgenReply::Done
            }
            LoadgenReq::Resume => {
                self.paused = false;
                LoadgenReply::Done
            }
            LoadgenReq::SetWindow { window } => {
                self.window = window;
                self.in_flight.reserve((window as usize).saturating_sub(self.in_flight.len()));
                LoadgenReply::Done
            }
        };
        if cx.is_request() {
            let _ = cx.reply(&reply);
        }
        // Also the retry after a refusal (see the crate doc).
        self.fill(cx, Instant::now());
    }

    fn on_reply(&mut self, cx: &mut Context, id: RequestId, reply: Payload<'_>) {
        let now = Instant::now();
        let expected = match self.in_flight.front() {
            Some(&(first, _, _)) if first == id => self.in_flight.pop_front(),
            _ => {
                // Not the oldest: out of order, or not ours at all.
                self.bad_replies += 1;
                let i = self.in_flight.iter().position(|&(r, _, _)| r == id);
                i.and_then(|i| self.in_flight.remove(i))
            }
        };
        if let Some((_, seq, sent_at)) = expected {
            self.replied += 1;
            self.latency.record(now.duration_since(sent_at).as_nanos() as u64);
            if !matches!(reply.decode::<MigrantReply>(), Ok(MigrantReply::Seq { seq: s }) if s == seq) {
                self.bad_replies += 1;
            }
        }
        self.fill(cx, now);
    }
}

guest_sdk::export!(Loadgen);
