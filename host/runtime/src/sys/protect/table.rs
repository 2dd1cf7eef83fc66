//! A process-wide table of address ranges the `SIGSEGV` handler looks faults
//! up in: one for tracked memories (`Region`), one for lazily restored runs
//! still being checked (`LazyRun`).
//!
//! `slots` holds the registered entries (each with the count of handlers
//! looking at it, so `unregister` frees an entry only when none does). The
//! handler finds the slot of an address through `index`: the slots' ranges
//! sorted by start, searched by bisection — O(log n) in a fixed array, no
//! lock, no allocation. The index is double-buffered: a writer (holding
//! `claim`) builds the inactive copy, waits until no reader is left on it,
//! then publishes it; a reader announces itself on the copy it read as
//! active and backs off if that changed meanwhile, so it never reads a copy
//! being written. Lookups (`with_entry_at`) are async-signal-safe; the
//! rest runs on ordinary threads.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};

/// Most entries of one table at once.
pub(crate) const MAX_REGIONS: usize = 16384;

/// What a table holds: a range of addresses and the slot it is registered
/// in.
pub(super) trait Entry {
    /// `[lo, hi)`, fixed while registered.
    fn span(&self) -> (usize, usize);
    /// Its slot (`usize::MAX` while not registered).
    fn slot(&self) -> &AtomicUsize;
}

struct Slot<T> {
    entry: AtomicPtr<T>,
    /// Handlers and helpers currently looking at `entry`.
    users: AtomicUsize,
}

/// One copy of the sorted index: `len` entries `(lo[i], hi[i], slot[i])`,
/// sorted by `lo`, not overlapping.
struct Index {
    lo: [AtomicUsize; MAX_REGIONS],
    hi: [AtomicUsize; MAX_REGIONS],
    slot: [AtomicUsize; MAX_REGIONS],
    len: AtomicUsize,
    /// Readers (handlers, helpers) on this copy now.
    readers: AtomicUsize,
}

/// The table; lives in a `static`.
pub(super) struct Table<T> {
    slots: [Slot<T>; MAX_REGIONS],
    /// Whether a slot is taken (written under `claim` only).
    taken: [AtomicUsize; MAX_REGIONS],
    claim: Mutex<()>,
    index: [Index; 2],
    /// Which copy of `index` readers use.
    active: AtomicUsize,
}

impl<T: Entry> Table<T> {
    pub(super) const fn new() -> Self {
        Self {
            slots: [const { Slot { entry: AtomicPtr::new(ptr::null_mut()), users: AtomicUsize::new(0) } }; MAX_REGIONS],
            taken: [const { AtomicUsize::new(0) }; MAX_REGIONS],
            claim: Mutex::new(()),
            index: [const {
                Index {
                    lo: [const { AtomicUsize::new(0) }; MAX_REGIONS],
                    hi: [const { AtomicUsize::new(0) }; MAX_REGIONS],
                    slot: [const { AtomicUsize::new(0) }; MAX_REGIONS],
                    len: AtomicUsize::new(0),
                    readers: AtomicUsize::new(0),
                }
            }; 2],
            active: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects no data of its own: a panic under it leaves
        // the index consistent (it is published whole or not at all).
        self.claim.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rebuilds the index with `edit` applied to its entries and publishes
    /// it. Caller holds `claim`.
    fn republish(&self, edit: impl FnOnce(&mut Vec<(usize, usize, usize)>)) {
        let cur = self.active.load(SeqCst);
        let next = 1 - cur;
        let a = &self.index[cur];
        let mut v: Vec<(usize, usize, usize)> = (0..a.len.load(SeqCst))
            .map(|i| (a.lo[i].load(Relaxed), a.hi[i].load(Relaxed), a.slot[i].load(Relaxed)))
            .collect();
        edit(&mut v);
        v.sort_unstable();
        let b = &self.index[next];
        while b.readers.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        for (i, &(lo, hi, slot)) in v.iter().enumerate() {
            b.lo[i].store(lo, Relaxed);
            b.hi[i].store(hi, Relaxed);
            b.slot[i].store(slot, Relaxed);
        }
        b.len.store(v.len(), SeqCst);
        self.active.store(next, SeqCst);
    }

    /// The slot whose range holds `addr`, looked up by bisection in the
    /// active index; `f(slot)` runs while the index copy is held.
    /// Async-signal-safe.
    fn find_slot<'a, R>(&'a self, addr: usize, f: impl FnOnce(Option<&'a Slot<T>>) -> R) -> R {
        let ix = loop {
            let i = self.active.load(SeqCst);
            self.index[i].readers.fetch_add(1, SeqCst);
            if self.active.load(SeqCst) == i {
                break &self.index[i];
            }
            self.index[i].readers.fetch_sub(1, SeqCst);
        };
        let len = ix.len.load(SeqCst);
        // The number of entries starting at or below `addr`.
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ix.lo[mid].load(Relaxed) <= addr {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let found = (lo > 0 && addr < ix.hi[lo - 1].load(Relaxed)).then(|| &self.slots[ix.slot[lo - 1].load(Relaxed)]);
        let r = f(found);
        ix.readers.fetch_sub(1, SeqCst);
        r
    }

    /// Runs `f` on the live entry whose range holds `addr` (None if there
    /// is none), holding it against `unregister` meanwhile.
    /// Async-signal-safe (if `f` is).
    pub(super) fn with_entry_at<R>(&self, addr: usize, f: impl FnOnce(Option<&T>) -> R) -> R {
        let held = self.find_slot(addr, |s| {
            let s = s?;
            s.users.fetch_add(1, SeqCst);
            Some(s)
        });
        let Some(s) = held else { return f(None) };
        let e = s.entry.load(SeqCst);
        // SAFETY: `users` is raised before the load, so `unregister` waits
        // for us before freeing the entry (it nulls the pointer first).
        let e = unsafe { e.as_ref() }.filter(|e| {
            let (lo, hi) = e.span();
            addr >= lo && addr < hi
        });
        let r = f(e);
        s.users.fetch_sub(1, SeqCst);
        r
    }

    /// Registers `entry` in a free slot; None when the table is full.
    pub(super) fn register(&self, entry: &Arc<T>) -> Option<usize> {
        let _g = self.lock();
        let i = self.taken.iter().position(|t| t.load(Relaxed) == 0)?;
        self.taken[i].store(1, Relaxed);
        entry.slot().store(i, SeqCst);
        self.slots[i].entry.store(Arc::into_raw(entry.clone()).cast_mut(), SeqCst);
        let (lo, hi) = entry.span();
        self.republish(|v| v.push((lo, hi, i)));
        Some(i)
    }

    /// Frees slot `i`: unpublishes it, waits until no handler looks at its
    /// entry, drops the table's reference.
    pub(super) fn unregister(&self, i: usize) {
        {
            let _g = self.lock();
            self.republish(|v| v.retain(|e| e.2 != i));
        }
        let s = &self.slots[i];
        let p = s.entry.swap(ptr::null_mut(), SeqCst);
        while s.users.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if !p.is_null() {
            // SAFETY: from Arc::into_raw in `register`; unpublished above
            // and no user holds it any more.
            let e = unsafe { Arc::from_raw(p) };
            e.slot().store(usize::MAX, SeqCst);
        }
        let _g = self.lock();
        self.taken[i].store(0, Relaxed);
    }

    /// Unregisters `entry` if it is still registered (its slot may have
    /// been freed by [`Table::unregister_within`] and taken by another).
    pub(super) fn unregister_entry(&self, entry: &Arc<T>) {
        let slot = {
            let _g = self.lock();
            let i = entry.slot().load(SeqCst);
            if i == usize::MAX || self.slots[i].entry.load(SeqCst) != Arc::as_ptr(entry).cast_mut() {
                return;
            }
            // Claimed for us: nobody else unregisters it meanwhile.
            entry.slot().store(usize::MAX, SeqCst);
            i
        };
        self.unregister(slot);
    }

    /// Unregisters every entry whose range starts in `[lo, hi)` (a memory
    /// about to move or be unmapped), running `last` on each first.
    pub(super) fn unregister_within(&self, lo: usize, hi: usize, last: impl Fn(&T)) {
        let slots: Vec<usize> = {
            let _g = self.lock();
            let a = &self.index[self.active.load(SeqCst)];
            let mut found = Vec::new();
            for i in 0..a.len.load(SeqCst) {
                let start = a.lo[i].load(Relaxed);
                let slot = a.slot[i].load(Relaxed);
                let e = self.slots[slot].entry.load(SeqCst);
                if start >= lo && start < hi && !e.is_null() {
                    // SAFETY: registered and published: the table holds a
                    // reference, and we hold the claim, so nobody frees it.
                    unsafe { &*e }.slot().store(usize::MAX, SeqCst);
                    found.push(slot);
                }
            }
            found
        };
        for i in slots {
            let e = self.slots[i].entry.load(SeqCst);
            // SAFETY: the table still holds its reference (taken above, the
            // slot claimed for us): it lives until `unregister` below.
            if let Some(e) = unsafe { e.as_ref() } {
                last(e);
            }
            self.unregister(i);
        }
    }

    /// Takes an entry's range out of the index (its slot stays taken until
    /// it is unregistered), so a memory mapped later at the same addresses
    /// is never shadowed by it.
    pub(super) fn unindex(&self, entry: &T) {
        let i = entry.slot().load(SeqCst);
        if i != usize::MAX {
            let _g = self.lock();
            self.republish(|v| v.retain(|e| e.2 != i));
        }
    }
}
