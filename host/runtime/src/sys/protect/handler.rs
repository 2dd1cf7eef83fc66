//! The `SIGSEGV` handler and everything it runs: the tables it looks
//! faults up in (tracked regions; runs restored lazily and checked on first
//! touch, whose protocol is `lazy`'s), and the page-claiming protocol a
//! write fault follows. Everything reachable from `on_sigsegv` is
//! async-signal-safe: atomics, page `memcpy`s and `mprotect` — no lock, no
//! allocation, no I/O, no `sysconf` (the page size is cached). The region
//! of a faulting address is found by bisection in a fixed, double-buffered
//! sorted index (O(log n) for n tracked regions, n ≤ [`MAX_REGIONS`]). An
//! `mprotect` that fails in the handler gives the region up (`give_up`):
//! the capture is finished by copying, the protection lifted as a whole.
//! (`register`, `unregister` and `install_handler` run
//! on ordinary threads; they live here because the table's protocol — the
//! `users` count that keeps a region alive while a handler looks at it —
//! must be read in one place.)
//!
//! The handler is installed once, right after the first wasmtime engine
//! exists, and chains to whatever handler was there before (wasmtime's,
//! which chains to Rust's), so faults that are not ours behave exactly as
//! before.

use super::lazy::{LazyRun, Touch};
use super::region::{CLEAN, COPYING, DIRTY, PENDING, Region};
use super::table::{Entry, Table};
use crate::sys::pages::{cached_page_size, copy_page, page_size, unprotect_raw};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Once};

pub(crate) use super::table::MAX_REGIONS;

/// Copies page `p` into the capture if it is still pending. Returns
/// false if someone else has it.
///
/// `then` is the state the page gets after the copy: `CLEAN` (copier:
/// the page stays protected) or `DIRTY` (handler: the page is about to be
/// written and gets unprotected). If it cannot be unprotected, the page is
/// left `CLEAN` and the whole region given up ([`give_up`]).
pub(super) fn claim_and_copy(region: &Region, p: usize, then: u8) -> bool {
    if region.states[p].compare_exchange(PENDING, COPYING, AcqRel, Acquire).is_err() {
        return false;
    }
    let c = region.capture.load(Acquire);
    debug_assert!(!c.is_null(), "a pending page implies a live capture");
    // SAFETY: a page was PENDING, so the capture is live (it is released
    // only once no page is pending, and ours is counted until below).
    let c = unsafe { &*c };
    let ps = cached_page_size();
    // SAFETY: page `p` lies inside the tracked memory (p < pages) and is
    // write-protected, so nobody writes it; the destination page is ours
    // alone because we won the state swap.
    let nonzero = unsafe { copy_page(region.base as *const u8, c.dest.as_mut_ptr(), p, ps) };
    if nonzero {
        c.nonzero[p / 64].fetch_or(1 << (p % 64), Release);
    }
    let mut failed = false;
    if then == DIRTY {
        c.faulted.fetch_add(1, Relaxed);
        failed = !unprotect_raw(region.base + p * ps, ps);
    }
    region.states[p].store(if failed { CLEAN } else { then }, Release);
    c.pending.fetch_sub(1, AcqRel);
    if failed {
        give_up(region);
    }
    true
}

/// Page protection failed on `region` (the kernel would not split its
/// mapping once more: `vm.max_map_count`): finishes the capture in
/// progress by copying every page still pending now, waits for pages being
/// copied elsewhere, then lifts the protection of the whole region with one
/// `mprotect` (which merges its mappings again), marks every page `DIRTY`
/// and the region `lost` (its dirty-page record is void). The capture stays
/// exact: no page is writable before it is copied. Async-signal-safe.
fn give_up(region: &Region) {
    region.lost.store(true, Release);
    for p in 0..region.pages {
        if region.states[p].load(Acquire) == PENDING {
            // CLEAN, not DIRTY: no per-page unprotect (it would fail again).
            claim_and_copy(region, p, CLEAN);
        }
    }
    let c = region.capture.load(Acquire);
    // SAFETY: the capture is released only at a boundary on the reactor's
    // thread, once complete; while its pages are counted pending it is live.
    if let Some(c) = unsafe { c.as_ref() } {
        c.degraded.store(true, Release);
        // Pages the copier claimed (COPYING) must be copied before any
        // of them becomes writable.
        while c.pending.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
    }
    let ps = cached_page_size();
    // Merging cannot need more mappings; should it fail all the same, the
    // write faults again and this runs again.
    if unprotect_raw(region.base, region.pages * ps) {
        region.open.store(true, Release);
        for st in region.states.iter() {
            st.store(DIRTY, Release);
        }
    }
}

/// Handles a write fault at page `p`. Async-signal-safe: atomics, page
/// copies and `mprotect` only.
fn on_write_fault(region: &Region, p: usize) {
    let ps = cached_page_size();
    loop {
        match region.states[p].load(Acquire) {
            PENDING => {
                if claim_and_copy(region, p, DIRTY) {
                    return;
                }
            }
            CLEAN => {
                if region.states[p].compare_exchange(CLEAN, COPYING, AcqRel, Acquire).is_ok() {
                    if unprotect_raw(region.base + p * ps, ps) {
                        region.states[p].store(DIRTY, Release);
                    } else {
                        region.states[p].store(CLEAN, Release);
                        give_up(region);
                    }
                    return;
                }
            }
            COPYING => std::hint::spin_loop(),
            // Writable already (a race with an unprotect): retry the write.
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The tables the handler looks faults up in.

/// Tracked memories.
static REGIONS: Table<Region> = Table::new();
/// Runs of lazily restored memories not all checked yet.
pub(super) static LAZY: Table<LazyRun> = Table::new();

impl Entry for Region {
    fn span(&self) -> (usize, usize) {
        (self.base, self.base + self.pages * cached_page_size())
    }

    fn slot(&self) -> &AtomicUsize {
        &self.slot
    }
}

pub(super) fn register(region: &Arc<Region>) -> Option<usize> {
    REGIONS.register(region)
}

pub(super) fn unregister(i: usize) {
    REGIONS.unregister(i);
}

/// Takes a detached region's range out of the index (its slot stays
/// taken until its tracker unregisters it), so a memory mapped later at
/// the same addresses is never shadowed by it.
pub(super) fn unindex(region: &Region) {
    REGIONS.unindex(region);
}

/// Runs `f` on the live region registered at `base`, if any, holding it
/// against `unregister` meanwhile.
pub(super) fn with_regions_at(base: usize, f: impl FnOnce(&Region)) {
    REGIONS.with_entry_at(base, |r| {
        if let Some(r) = r
            && r.base == base
        {
            f(r);
        }
    });
}

// ---------------------------------------------------------------------------
// The handler.

/// The handler that was installed before ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());

/// Installs the `SIGSEGV` handler once. Must run after wasmtime installed its
/// own (which happens when the first engine is built), so ours sees write
/// faults from JIT code first and passes on everything else.
pub(crate) fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The handler reads the cached page size: make sure it is cached.
        page_size();
        let prev = Box::into_raw(Box::new(
            // SAFETY: sigaction is plain data; all-zero is a valid value.
            unsafe { std::mem::zeroed::<libc::sigaction>() },
        ));
        // SAFETY: as above.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = on_sigsegv as *const () as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        // SAFETY: the mask is ours to initialise.
        unsafe { libc::sigemptyset(&mut ours.sa_mask) };
        // SAFETY: installs a handler that only reads process-lifetime
        // statics; `prev` receives the old action and is never freed.
        let rc = unsafe { libc::sigaction(libc::SIGSEGV, &ours, prev) };
        assert_eq!(rc, 0, "cannot install the SIGSEGV handler: {}", io::Error::last_os_error());
        PREVIOUS.store(prev, Release);
    });
}

extern "C" fn on_sigsegv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    // SAFETY: reading errno is always allowed; restored before returning.
    let errno = unsafe { *libc::__errno_location() };
    let handled = handle(addr);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    if handled {
        return;
    }
    let prev = PREVIOUS.load(Acquire);
    // SAFETY: set before the handler was installed, never freed.
    let prev = unsafe { &*prev };
    if prev.sa_flags & libc::SA_SIGINFO != 0 && prev.sa_sigaction > 1 {
        // SAFETY: the previous SA_SIGINFO handler, called as the kernel would.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig, info, ctx);
    } else if prev.sa_sigaction == libc::SIG_DFL || prev.sa_sigaction == libc::SIG_IGN {
        // Re-executing the faulting instruction under the default action
        // terminates the process as it would have without us.
        // SAFETY: restores the previous disposition.
        unsafe { libc::sigaction(sig, prev, ptr::null_mut()) };
    } else {
        // SAFETY: the previous plain handler, called as the kernel would.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
        f(sig);
    }
}

/// Handles a fault at `addr` if it is a touch of a lazily restored page
/// not checked yet, or a write to a tracked page.
fn handle(addr: usize) -> bool {
    let lazy = LAZY.with_entry_at(addr, |r| r.map(|r| r.on_fault(addr)));
    if lazy == Some(Touch::Checked) {
        return true;
    }
    let tracked = REGIONS.with_entry_at(addr, |r| match r {
        Some(r) if !r.detached.load(Acquire) => {
            on_write_fault(r, (addr - r.base) / cached_page_size());
            true
        }
        _ => false,
    });
    // A chunk checked and opened by another thread after this fault: the
    // access succeeds when retried.
    tracked || lazy == Some(Touch::Open)
}
