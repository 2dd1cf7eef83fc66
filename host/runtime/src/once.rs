//! At most once: the requests from outside (a node's host: `Node::call`,
//! the CLI, the admin socket) that a shard's reactors took, with the reply
//! each gave, kept a while.
//!
//! A request from outside can reach its reactor twice. Its caller's node
//! sends it again, with the same correlation id, when the node its target
//! ran on went down and the target turns up elsewhere (taken over from its
//! standby) or back (restarted from its journal); and the first copy may
//! still arrive, by the path it was on, after the reactor moved. Whichever
//! copy the reactor takes second is not handed to it: it is answered with
//! the reply the first one got, or, if that reply has not been given yet,
//! dropped (the reply, when it comes, goes to the same sender and
//! correlation id, and the caller waits on that id). The requests a
//! takeover or a restart replayed count as taken, with their replayed
//! replies: one applied before the node went down is not applied again.
//!
//! Requests between reactors are not kept: a reactor never sends one again.
//! Correlation ids of requests from outside come from the node's tag space,
//! unique across its restarts, so a new request is never taken for an old
//! one.
//!
//! Bounded: entries go after [`KEEP_FOR`] (well past the time a caller's
//! node waits for a takeover before it sends again), the oldest first past
//! [`MAX_KEYS`] per shard, and replies are kept only within
//! [`MAX_REPLY_BYTES`] per shard (beyond it a request is still known as
//! taken, and a copy of it is dropped).
use reactor_types::{Address, Envelope};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

/// How long a taken request is remembered.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(120);
/// Most requests remembered per shard.
pub(crate) const MAX_KEYS: usize = 1 << 16;
/// Most reply bytes kept per shard.
pub(crate) const MAX_REPLY_BYTES: usize = 16 << 20;

/// A request: (reactor, its sender, its correlation id).
type Key = (Address, Address, u64);

/// What [`Once::take`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Taken {
    /// Not taken before: the reactor takes it now.
    New,
    /// Taken, not answered yet (or its reply was too large to keep).
    Unanswered,
    /// Taken and answered with this reply.
    Answered(Envelope),
}

#[derive(Debug, Default)]
pub(crate) struct Once {
    /// When each request was taken, and the reply it got.
    taken: HashMap<Key, (Instant, Option<Envelope>)>,
    /// Keys in the order they were taken, for expiry.
    order: VecDeque<(Instant, Key)>,
    reply_bytes: usize,
}

impl Once {
    pub(crate) fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// Whether `reactor` took the request `(from, corr)` before; if not, it
    /// is recorded as taken now.
    pub(crate) fn take(&mut self, reactor: Address, from: Address, corr: u64, now: Instant) -> Taken {
        self.expire(now);
        match self.taken.entry((reactor, from, corr)) {
            Entry::Occupied(e) => match &e.get().1 {
                Some(reply) => Taken::Answered(reply.clone()),
                None => Taken::Unanswered,
            },
            Entry::Vacant(v) => {
                v.insert((now, None));
                self.order.push_back((now, (reactor, from, corr)));
                Taken::New
            }
        }
    }

    /// `reactor` failed on `(from, corr)`: not taken after all (a retry of
    /// it is taken as new).
    pub(crate) fn forget(&mut self, reactor: Address, from: Address, corr: u64) {
        if let Some((_, Some(r))) = self.taken.remove(&(reactor, from, corr)) {
            self.reply_bytes -= r.payload.len();
        }
    }

    /// A reactor sent `reply` to `to`: kept if it answers a request taken
    /// here that has no reply yet, within the byte budget.
    pub(crate) fn replied(&mut self, to: Address, reply: &Envelope) {
        let Some((_, slot @ None)) = self.taken.get_mut(&(reply.from, to, reply.corr)) else { return };
        let len = reply.payload.len();
        if self.reply_bytes + len <= MAX_REPLY_BYTES {
            *slot = Some(reply.clone());
            self.reply_bytes += len;
        }
    }

    /// Forgets every request `reactor` took (its copy here was dropped:
    /// what it took was not applied to the copy that lives on).
    pub(crate) fn forget_reactor(&mut self, reactor: Address) {
        let mut freed = 0;
        self.taken.retain(|k, (_, r)| {
            let keep = k.0 != reactor;
            if !keep {
                freed += r.as_ref().map_or(0, |r| r.payload.len());
            }
            keep
        });
        self.reply_bytes -= freed;
        self.order.retain(|(_, k)| k.0 != reactor);
    }

    /// Drops what is older than [`KEEP_FOR`], and the oldest past
    /// [`MAX_KEYS`].
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, k)) = self.order.front() {
            if now.saturating_duration_since(t) < KEEP_FOR && self.taken.len() < MAX_KEYS {
                break;
            }
            self.order.pop_front();
            // Only the entry this one recorded (a key forgotten and taken
            // again has a newer one).
            if self.taken.get(&k).is_some_and(|(at, _)| *at == t)
                && let Some((_, Some(r))) = self.taken.remove(&k)
            {
                self.reply_bytes -= r.payload.len();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.taken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_sdk::abi;

    fn reply(from: Address, corr: u64, bytes: usize) -> Envelope {
        Envelope { kind: abi::KIND_REPLY, flags: 0, from, corr, payload: vec![7; bytes] }
    }

    const R: Address = Address(0x0001_0000_0000_0001);
    const H: Address = Address(0x0003_0000_0000_0000);

    #[test]
    fn a_request_is_taken_once_and_a_copy_gets_its_reply() {
        let mut o = Once::default();
        let now = Instant::now();
        assert_eq!(o.take(R, H, 5, now), Taken::New);
        assert_eq!(o.take(R, H, 5, now), Taken::Unanswered);
        o.replied(H, &reply(R, 5, 3));
        assert_eq!(o.take(R, H, 5, now), Taken::Answered(reply(R, 5, 3)));
        // Another id, another reactor: new.
        assert_eq!(o.take(R, H, 6, now), Taken::New);
        assert_eq!(o.take(Address(R.0 + 1), H, 5, now), Taken::New);
        // A reply to a request not taken here is not kept.
        o.replied(H, &reply(R, 99, 3));
        assert_eq!(o.take(R, H, 99, now), Taken::New);
    }

    #[test]
    fn a_failed_request_may_be_taken_again() {
        let mut o = Once::default();
        let now = Instant::now();
        assert_eq!(o.take(R, H, 5, now), Taken::New);
        o.forget(R, H, 5);
        assert_eq!(o.take(R, H, 5, now), Taken::New);
    }

    #[test]
    fn entries_expire_by_age_and_by_count() {
        let mut o = Once::default();
        let t0 = Instant::now();
        o.take(R, H, 1, t0);
        o.replied(H, &reply(R, 1, 10));
        assert_eq!(o.take(R, H, 2, t0 + KEEP_FOR), Taken::New);
        assert_eq!(o.len(), 1, "the first is forgotten after KEEP_FOR");
        assert_eq!(o.reply_bytes, 0);
        for c in 0..(MAX_KEYS as u64 + 10) {
            o.take(R, H, 1000 + c, t0 + KEEP_FOR);
        }
        assert_eq!(o.len(), MAX_KEYS);
    }

    #[test]
    fn forgetting_a_key_and_taking_it_again_keeps_the_new_entry_past_the_old_expiry() {
        let mut o = Once::default();
        let t0 = Instant::now();
        o.take(R, H, 1, t0);
        o.forget(R, H, 1);
        let t1 = t0 + KEEP_FOR / 2;
        o.take(R, H, 1, t1);
        // The old order entry expires; the new one stays.
        assert_eq!(o.take(R, H, 2, t0 + KEEP_FOR), Taken::New);
        assert_eq!(o.take(R, H, 1, t0 + KEEP_FOR), Taken::Unanswered);
    }

    #[test]
    fn replies_are_kept_within_the_byte_budget_and_a_dropped_copy_forgets_its_reactor() {
        let mut o = Once::default();
        let now = Instant::now();
        o.take(R, H, 1, now);
        o.replied(H, &reply(R, 1, MAX_REPLY_BYTES));
        o.take(R, H, 2, now);
        o.replied(H, &reply(R, 2, 1));
        assert_eq!(o.take(R, H, 2, now), Taken::Unanswered, "over the budget: known, not kept");
        o.forget_reactor(R);
        assert_eq!(o.reply_bytes, 0);
        assert!(o.is_empty());
        assert_eq!(o.take(R, H, 1, now), Taken::New);
    }
}
