//! The reactor the migration benchmark moves between nodes: a state of real
//! pages that it keeps dirtying at a set rate, its own view of downtime, and
//! sequence checks on the streams sent to it.
//!
//! - **State**: `state_mib` MiB allocated at start, every page filled with
//!   non-zero pseudo-random bytes (so a snapshot cannot skip it as a zero
//!   page).
//! - **Writes**: on every message it handles it reads the wall clock and
//!   writes one byte in each of `rate × (time since the last write)` pages
//!   chosen pseudo-randomly (at most [`MIGRANT_MAX_PAGES_PER_MESSAGE`] per
//!   message, and at most one second's worth: after a long pause the rest of
//!   the debt is forgiven rather than paid in one stall).
//! - **Downtime**: the wall-clock gap since the message before; it keeps the
//!   largest and the last [`MIGRANT_GAPS_KEPT`] over
//!   [`MIGRANT_GAP_THRESHOLD_NS`]. Moved to another node while under load,
//!   the largest gap is the time from the last message handled at the source
//!   to the first handled at the target. The wall clock (WASI realtime), not
//!   the monotonic one: the two ends are different processes, whose
//!   monotonic clocks WASI does not promise to share.
//! - **Sequences**: per sender, [`MigrantReq::Seq`] numbers are expected to
//!   run 1, 2, 3, …; each is counted ok, a gap (numbers skipped) or a
//!   duplicate (not past the last).
//!
//! Per message it reads the clock once, looks its sender up among a handful
//! and allocates only the reply's encoding.
use guest_sdk::prelude::*;
use protocols::{
    Gap, MIGRANT_GAP_THRESHOLD_NS, MIGRANT_GAPS_KEPT, MIGRANT_MAX_PAGES_PER_MESSAGE, MigrantInit, MigrantReply,
    MigrantReq, SenderSeq,
};
use std::time::UNIX_EPOCH;

const PAGE: usize = 4096;
const NS_PER_SEC: u64 = 1_000_000_000;

/// xorshift64*: cheap and deterministic.
fn next(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[derive(Default)]
struct Migrant {
    /// The state: `pages` pages of non-zero bytes.
    state: Vec<u8>,
    pages: u64,
    rate: u32,
    rng: u64,
    /// When pages were last paid for (wall ns).
    last_write_ns: u64,
    /// Page writes owed but not yet whole, in page·ns/s (< `NS_PER_SEC`
    /// after each payment).
    owed: u64,
    pages_written: u64,
    handled: u64,
    last_handled_ns: u64,
    max_gap_ns: u64,
    /// The most recent big gaps, oldest first (capacity reserved at start).
    big_gaps: VecDeque<Gap>,
    senders: Vec<SenderSeq>,
    /// Index in `senders` of the last sender looked up.
    last_sender: usize,
}

impl Migrant {
    fn now_ns(cx: &Context) -> u64 {
        cx.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }

    /// Records the gap since the message before.
    fn handle_gap(&mut self, now: u64) {
        let gap = now.saturating_sub(self.last_handled_ns);
        self.last_handled_ns = now;
        self.handled += 1;
        self.max_gap_ns = self.max_gap_ns.max(gap);
        if gap > MIGRANT_GAP_THRESHOLD_NS {
            if self.big_gaps.len() == MIGRANT_GAPS_KEPT {
                self.big_gaps.pop_front();
            }
            self.big_gaps.push_back(Gap { at_ns: now, gap_ns: gap });
        }
    }

    /// Writes the pages owed since the last write.
    fn handle_writes(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last_write_ns).min(NS_PER_SEC);
        self.last_write_ns = now;
        if self.rate == 0 || self.pages == 0 {
            self.owed = 0;
            return;
        }
        self.owed += dt * u64::from(self.rate);
        let due = self.owed / NS_PER_SEC;
        self.owed -= due * NS_PER_SEC;
        let n = due.min(u64::from(MIGRANT_MAX_PAGES_PER_MESSAGE));
        for _ in 0..n {
            let r = next(&mut self.rng);
            let page = ((r >> 32) * self.pages) >> 32;
            let at = page as usize * PAGE + (r as usize & (PAGE - 1));
            // Always a different, non-zero value.
            self.state[at] = self.state[at].wrapping_add(1) | 1;
        }
        self.pages_written += n;
    }

    fn handle_seq(&mut self, sender: u64, seq: u64) {
        let i = match self.senders.get(self.last_sender) {
            Some(s) if s.sender == sender => self.last_sender,
            _ => match self.senders.iter().position(|s| s.sender == sender) {
                Some(i) => i,
                None => {
                    self.senders.push(SenderSeq { sender, ..SenderSeq::default() });
                    self.senders.len() - 1
                }
            },
        };
        self.last_sender = i;
        let s = &mut self.senders[i];
        if seq == s.last + 1 {
            s.ok += 1;
        } else if seq > s.last {
            s.gaps += 1;
        } else {
            s.dups += 1;
        }
        s.last = s.last.max(seq);
    }
}

impl Reactor for Migrant {
    type Msg = MigrantReq;

    fn start(&mut self, cx: &mut Context, init: Payload<'_>) {
        let init: MigrantInit = init.decode().unwrap_or_else(|e| panic!("migrant init: {e}"));
        let bytes = (init.state_mib as usize)
            .checked_mul(1 << 20)
            .unwrap_or_else(|| panic!("migrant: {} MiB of state do not fit a 32-bit memory", init.state_mib));
        // Zeroed memory straight from `memory.grow`; then every byte made
        // non-zero.
        let mut state = vec![0u8; bytes];
        let mut rng = init.seed | 1;
        for word in state.chunks_exact_mut(8) {
            word.copy_from_slice(&(next(&mut rng) | 0x0101_0101_0101_0101).to_le_bytes());
        }
        self.state = state;
        self.pages = (bytes / PAGE) as u64;
        self.rate = init.write_pages_per_sec;
        self.rng = rng;
        self.big_gaps.reserve_exact(MIGRANT_GAPS_KEPT);
        self.senders.reserve(16);
        let now = Self::now_ns(cx);
        self.last_write_ns = now;
        self.last_handled_ns = now;
    }

    fn react(&mut self, cx: &mut Context, msg: MigrantReq) {
        let now = Self::now_ns(cx);
        self.handle_gap(now);
        self.handle_writes(now);
        let reply = match msg {
            MigrantReq::Seq { sender, seq } => {
                self.handle_seq(sender, seq);
                MigrantReply::Seq { seq }
            }
            MigrantReq::Stats => MigrantReply::Stats {
                handled: self.handled,
                senders: self.senders.clone(),
                max_gap_ns: self.max_gap_ns,
                big_gaps: self.big_gaps.iter().copied().collect(),
                state_bytes: self.state.len() as u64,
                pages_written: self.pages_written,
                write_pages_per_sec: self.rate,
            },
            MigrantReq::ResetGaps => {
                self.max_gap_ns = 0;
                self.big_gaps.clear();
                MigrantReply::Done
            }
            MigrantReq::SetRate { write_pages_per_sec } => {
                self.rate = write_pages_per_sec;
                self.owed = 0;
                MigrantReply::Done
            }
        };
        if cx.is_request() {
            let _ = cx.reply(&reply);
        }
    }
}

guest_sdk::export!(Migrant);
