//! Byte budgets: what a reactor, and the node, may make the host hold.
//!
//! Every byte a guest can make the host keep counts against two budgets:
//! its reactor's [`Account`] (its linear memory, the blobs it holds, the
//! bytes queued for it, the init payloads of the spawns it asked for) and
//! the node's [`NodeBudget`] (every growth of a linear memory past the
//! initial size its module declares, every live blob once, every queued
//! byte). Initial memory sizes are not the node's to refuse: they come from
//! modules the operator loaded, and `max_reactors` bounds how many there
//! are; 100,000 idle reactors declare far more memory than they touch. A charge that would pass either is refused and
//! nothing is charged: the memory does not grow, the blob is not made or
//! held, the message is not queued (its sender gets backpressure).
//!
//! Reactor accounts are touched only by their shard's thread; the node
//! budget is shared, so shards draw the bytes they queue from it in blocks
//! ([`LocalBudget`]) and the hot path takes no shared atomic.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes a shard draws from the node budget at a time for queued messages.
pub(crate) const BLOCK: usize = 1 << 20;

/// The node's byte budget, shared by its shards and blobs.
#[derive(Debug)]
pub struct NodeBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl NodeBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit: AtomicUsize::new(limit), used: AtomicUsize::new(0) })
    }

    /// Sets the limit (charges made stay; new ones see the new limit).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `n` bytes unless that passes the limit.
    pub(crate) fn try_charge(&self, n: usize) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| u.checked_add(n).filter(|&t| t <= limit))
            .is_ok()
    }

    /// Returns `n` charged bytes.
    pub(crate) fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Charges `n` bytes whatever the limit (what a restore brings back,
    /// messages accepted before).
    fn charge_forced(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }
}

/// `n` bytes charged to a node budget, returned when dropped (a live blob,
/// a reactor's memory).
#[derive(Debug)]
pub(crate) struct NodeCharge {
    budget: Arc<NodeBudget>,
    bytes: usize,
}

impl NodeCharge {
    /// Nothing charged yet.
    pub(crate) fn empty(budget: Arc<NodeBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    /// `n` bytes charged whatever the limit (what a restore brings back).
    pub(crate) fn forced(budget: Arc<NodeBudget>, n: usize) -> Self {
        budget.charge_forced(n);
        Self { budget, bytes: n }
    }

    /// Charges `n` more bytes; false (nothing charged) past the limit.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let ok = self.budget.try_charge(n);
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for NodeCharge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// One reactor's byte budget: its memory, the blobs it holds and the bytes
/// queued for it. Only its shard's thread touches it.
#[derive(Debug)]
pub(crate) struct Account {
    limit: usize,
    used: AtomicUsize,
}

impl Account {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    /// Charges `n` bytes unless that passes the limit.
    #[inline]
    pub(crate) fn try_charge(&self, n: usize) -> bool {
        // One thread at a time: a load and a store, no read-modify-write.
        let used = self.used.load(Ordering::Relaxed);
        match used.checked_add(n) {
            Some(t) if t <= self.limit => {
                self.used.store(t, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Charges `n` bytes whatever the limit (what a restore brings back).
    pub(crate) fn force_charge(&self, n: usize) {
        let used = self.used.load(Ordering::Relaxed);
        self.used.store(used.saturating_add(n), Ordering::Relaxed);
    }

    /// Returns `n` charged bytes.
    #[inline]
    pub(crate) fn release(&self, n: usize) {
        let used = self.used.load(Ordering::Relaxed);
        self.used.store(used.saturating_sub(n), Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// A shard's block of the node budget for the bytes it queues.
#[derive(Debug)]
pub(crate) struct LocalBudget {
    node: Arc<NodeBudget>,
    /// Drawn from the node and not used.
    free: usize,
    /// Drawn from the node in all.
    drawn: usize,
}

impl LocalBudget {
    pub(crate) fn new(node: Arc<NodeBudget>) -> Self {
        Self { node, free: 0, drawn: 0 }
    }

    /// Takes `n` bytes, drawing from the node when the block runs out;
    /// false (nothing taken) when the node has no room.
    #[inline]
    pub(crate) fn try_take(&mut self, n: usize) -> bool {
        if n <= self.free {
            self.free -= n;
            return true;
        }
        let draw = (n - self.free).max(BLOCK);
        if !self.node.try_charge(draw) {
            return false;
        }
        self.drawn += draw;
        self.free = self.free + draw - n;
        true
    }

    /// Takes `n` bytes whatever the node's limit (messages accepted before,
    /// moved or restored).
    pub(crate) fn take_forced(&mut self, n: usize) {
        if n <= self.free {
            self.free -= n;
        } else {
            let draw = n - self.free;
            self.node.charge_forced(draw);
            self.drawn += draw;
            self.free = 0;
        }
    }

    /// Gives back `n` bytes; returns to the node what exceeds two blocks.
    #[inline]
    pub(crate) fn give(&mut self, n: usize) {
        self.free += n;
        if self.free > 2 * BLOCK {
            let back = self.free - BLOCK;
            self.free -= back;
            self.drawn -= back;
            self.node.release(back);
        }
    }
}

impl Drop for LocalBudget {
    fn drop(&mut self) {
        self.node.release(self.drawn);
    }
}

/// 80 % of the machine's physical memory (the default node budget), or
/// `usize::MAX` if `/proc/meminfo` cannot be read.
pub fn default_node_limit() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    total_kib.map_or(usize::MAX, |k| usize::try_from(k.saturating_mul(1024) / 5 * 4).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reactor_account_refuses_past_its_limit_and_charges_nothing() {
        let a = Account::new(100);
        assert!(a.try_charge(60));
        assert!(!a.try_charge(41));
        assert_eq!(a.used(), 60);
        assert!(a.try_charge(40));
        a.release(100);
        assert_eq!(a.used(), 0);
        assert!(!a.try_charge(usize::MAX));
    }

    #[test]
    fn the_node_budget_is_shared_and_charges_return_on_drop() {
        let node = NodeBudget::new(3 * BLOCK);
        let mut blob = NodeCharge::empty(node.clone());
        assert!(blob.grow(BLOCK));
        let mut shard = LocalBudget::new(node.clone());
        assert!(shard.try_take(10), "draws one block");
        assert_eq!(node.used(), 2 * BLOCK);
        assert!(shard.try_take(BLOCK - 10), "the rest of its block");
        assert!(shard.try_take(BLOCK), "one more block");
        assert!(!shard.try_take(1), "the node is full");
        assert!(!NodeCharge::empty(node.clone()).grow(1));
        drop(blob);
        assert!(shard.try_take(1), "a dropped charge makes room");
        shard.give(2 * BLOCK + 1);
        assert_eq!(node.used(), BLOCK, "all given back: keeps one block, returns the rest");
        drop(shard);
        assert_eq!(node.used(), 0);
    }
}
