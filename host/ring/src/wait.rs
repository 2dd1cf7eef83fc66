//! Waiting without burning a core: [`Backoff`] (spin a little, yield a
//! little, then say "park") and [`EventCount`] (park until notified, with
//! no lost wake-ups and a notify that costs a fence and a load when nobody
//! sleeps).
//!
//! # The protocol
//! A waiter announces itself before its last look at the condition, and a
//! notifier looks for waiters after making the condition true:
//!
//! ```text
//! waiter                               notifier
//! w = ec.prepare_wait()  (+1 waiter;   publish (e.g. push: Release store)
//!                          fence)      ec.notify()  (fence; any waiter?
//! if ready() { w.cancel() }                          then bump the epoch
//! else       { w.wait() }  (sleeps while              and wake them)
//!                           the epoch is unchanged)
//! ```
//!
//! The two `SeqCst` fences order "+1 waiter" and "publish": either the
//! notifier sees the waiter (and bumps the epoch, which the waiter then sees
//! under the lock), or the waiter's re-check sees the publish. That re-check
//! must read what the notifier wrote (the rings' `is_empty` and `try_*` do).
#![forbid(unsafe_code)]

use crate::sync::atomic::{AtomicU64, Ordering::*, fence};
use crate::sync::{Condvar, Mutex, spin_loop, yield_now};
use std::fmt;
use std::sync::PoisonError;

/// Bounded waiting before parking: `snooze` spins with
/// [`std::hint::spin_loop`] in doubling rounds, then yields the thread a few
/// times, then returns `false`: the caller should park (for example with
/// [`EventCount::wait_until`]). Nothing here spins without bound: with more
/// busy threads than cores, spinning starves the very thread being waited
/// for.
#[derive(Clone, Debug)]
pub struct Backoff {
    step: u32,
    spin_steps: u32,
    yield_steps: u32,
}

#[cfg(not(loom))]
const DEFAULT_LIMITS: (u32, u32) = (7, 4);
// Tiny under loom: every spin is a scheduling point it must explore.
#[cfg(loom)]
const DEFAULT_LIMITS: (u32, u32) = (1, 1);

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Spin rounds of 1, 2, 4, …, 64 hints (127 in all), then 4 yields.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_LIMITS.0, DEFAULT_LIMITS.1)
    }

    /// `spin_steps` doubling spin rounds (at most 2^15 hints each), then
    /// `yield_steps` yields.
    pub fn with_limits(spin_steps: u32, yield_steps: u32) -> Self {
        Self { step: 0, spin_steps, yield_steps }
    }

    /// Starts over (after progress).
    #[inline]
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// Whether spinning and yielding are used up: time to park.
    #[inline]
    pub fn is_completed(&self) -> bool {
        self.step >= self.spin_steps + self.yield_steps
    }

    /// Waits a little: one spin round, or one yield once the spin rounds
    /// are used up. Returns `false`, without waiting, once both are used up.
    #[inline]
    pub fn snooze(&mut self) -> bool {
        if self.step < self.spin_steps {
            for _ in 0..1u32 << self.step.min(15) {
                spin_loop();
            }
        } else if self.step < self.spin_steps + self.yield_steps {
            yield_now();
        } else {
            return false;
        }
        self.step += 1;
        true
    }
}

/// Waiters (low 32 bits of [`EventCount::state`]) and the epoch (high 32).
const WAITER: u64 = 1;
const WAITERS: u64 = (1 << 32) - 1;
const EPOCH: u64 = 1 << 32;

/// An event count: threads wait for "something changed", and whoever
/// changes it calls [`notify`](Self::notify). Many waiters and many
/// notifiers may share one (a shard's consumer thread waiting on all its
/// inbound rings; producers waiting for room). See the module docs for the
/// protocol.
pub struct EventCount {
    /// High 32 bits: the epoch, bumped (under `lock`) by every `notify` that
    /// finds a waiter. Low 32 bits: threads between `prepare_wait` and the
    /// end of their `wait` or `cancel`.
    /// Invariant: a waiter whose epoch is still current has not been woken.
    state: AtomicU64,
    /// Guards the epoch bump against a waiter's check-then-sleep.
    lock: Mutex<()>,
    cond: Condvar,
}

impl Default for EventCount {
    fn default() -> Self {
        Self::new()
    }
}

impl EventCount {
    /// An event count with no waiters.
    pub fn new() -> Self {
        Self { state: AtomicU64::new(0), lock: Mutex::new(()), cond: Condvar::new() }
    }

    /// Announces a waiter. Check the condition after this: if it holds,
    /// drop (or [`cancel`](Waiter::cancel)) the waiter, else
    /// [`wait`](Waiter::wait).
    pub fn prepare_wait(&self) -> Waiter<'_> {
        let state = self.state.fetch_add(WAITER, Relaxed);
        // Orders "+1 waiter" before the caller's re-check; pairs with the
        // fence in `notify`.
        fence(SeqCst);
        Waiter { ec: self, epoch: (state >> 32) as u32 }
    }

    /// Wakes every waiter, if there is any. Call it after making the
    /// condition true (e.g. after a push or a pop). Costs a fence and a load
    /// of a line that only changes when someone goes to sleep.
    #[inline]
    pub fn notify(&self) {
        // Orders the caller's publish before the look for waiters; pairs
        // with the fence in `prepare_wait`.
        fence(SeqCst);
        if self.state.load(Relaxed) & WAITERS != 0 {
            self.notify_slow();
        }
    }

    #[cold]
    fn notify_slow(&self) {
        {
            // Under the lock: a waiter checks the epoch under it and then
            // sleeps atomically with releasing it, so it cannot miss this.
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.state.fetch_add(EPOCH, Relaxed);
        }
        self.cond.notify_all();
    }

    /// Waits until `ready()` returns true: calls it, snoozes with `backoff`
    /// while that lasts, then parks until notified (re-checking after
    /// announcing itself, so a notify cannot be lost). Resets `backoff` on
    /// success. `ready` should be the operation itself (e.g. a `try_pop`
    /// that stores what it got) or a look at what the notifier publishes.
    pub fn wait_until(&self, backoff: &mut Backoff, mut ready: impl FnMut() -> bool) {
        loop {
            if ready() {
                backoff.reset();
                return;
            }
            if backoff.snooze() {
                continue;
            }
            let waiter = self.prepare_wait();
            if ready() {
                waiter.cancel();
                backoff.reset();
                return;
            }
            waiter.wait();
        }
    }
}

/// A thread announced as waiting on an [`EventCount`]. Dropping it without
/// [`wait`](Self::wait)ing cancels.
#[must_use = "check the condition, then wait() or cancel()"]
pub struct Waiter<'a> {
    ec: &'a EventCount,
    /// The epoch when announced: a notify since then bumped it.
    epoch: u32,
}

impl Waiter<'_> {
    /// Sleeps until a [`notify`](EventCount::notify) after
    /// [`prepare_wait`](EventCount::prepare_wait) (returns at once if there
    /// already was one).
    pub fn wait(self) {
        let ec = self.ec;
        let mut guard = ec.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while (ec.state.load(Relaxed) >> 32) as u32 == self.epoch {
            guard = ec.cond.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops waiting without sleeping (what dropping does).
    pub fn cancel(self) {}
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.ec.state.fetch_sub(WAITER, Relaxed);
    }
}

impl fmt::Debug for EventCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Relaxed);
        f.debug_struct("EventCount").field("epoch", &(s >> 32)).field("waiters", &(s & WAITERS)).finish()
    }
}

impl fmt::Debug for Waiter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").field("epoch", &self.epoch).finish()
    }
}
