//! The `SIGSEGV` handler and everything it runs: the table of tracked
//! regions it looks faults up in, and the page-claiming protocol a write
//! fault follows. Everything reachable from `on_sigsegv` is
//! async-signal-safe: atomics, a page `memcpy` and `mprotect` — no lock, no
//! allocation, no I/O. (`register`, `unregister` and `install_handler` run
//! on ordinary threads; they live here because the table's protocol — the
//! `users` count that keeps a region alive while a handler looks at it —
//! must be read in one place.)
//!
//! The handler is installed once, right after the first wasmtime engine
//! exists, and chains to whatever handler was there before (wasmtime's,
//! which chains to Rust's), so faults that are not ours behave exactly as
//! before.

use super::region::{CLEAN, COPYING, DIRTY, PENDING, Region};
use crate::sys::pages::{copy_page, page_size, unprotect};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, Once};

/// Most regions tracked at once in the process.
pub(crate) const MAX_REGIONS: usize = 16384;

/// Copies page `p` into the capture if it is still pending. Returns
/// false if someone else has it.
///
/// `then` is the state the page gets after the copy: `CLEAN` (copier:
/// the page stays protected) or `DIRTY` (handler: the page is about to be
/// written and gets unprotected).
pub(super) fn claim_and_copy(region: &Region, p: usize, then: u8) -> bool {
    if region.states[p].compare_exchange(PENDING, COPYING, AcqRel, Acquire).is_err() {
        return false;
    }
    let c = region.capture.load(Acquire);
    debug_assert!(!c.is_null(), "a pending page implies a live capture");
    // SAFETY: a page was PENDING, so the capture is live (it is released
    // only once no page is pending, and ours is counted until below).
    let c = unsafe { &*c };
    let ps = page_size();
    // SAFETY: page `p` lies inside the tracked memory (p < pages) and is
    // write-protected, so nobody writes it; the destination page is ours
    // alone because we won the state swap.
    let nonzero = unsafe { copy_page(region.base as *const u8, c.dest.as_mut_ptr(), p, ps) };
    if nonzero {
        c.nonzero[p / 64].fetch_or(1 << (p % 64), Release);
    }
    if then == DIRTY {
        c.faulted.fetch_add(1, Relaxed);
        let _ = unprotect(region.base + p * ps, ps);
    }
    region.states[p].store(then, Release);
    c.pending.fetch_sub(1, AcqRel);
    true
}

/// Handles a write fault at page `p`. Async-signal-safe: atomics, a
/// page copy and `mprotect` only.
fn on_write_fault(region: &Region, p: usize) {
    let ps = page_size();
    loop {
        match region.states[p].load(Acquire) {
            PENDING => {
                if claim_and_copy(region, p, DIRTY) {
                    return;
                }
            }
            CLEAN => {
                if region.states[p].compare_exchange(CLEAN, COPYING, AcqRel, Acquire).is_ok() {
                    let _ = unprotect(region.base + p * ps, ps);
                    region.states[p].store(DIRTY, Release);
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
// The region table.

struct Slot {
    /// Range prefilter (authoritative range is the region's own).
    lo: AtomicUsize,
    hi: AtomicUsize,
    region: AtomicPtr<Region>,
    /// Handlers and helpers currently looking at `region`.
    users: AtomicUsize,
}

static SLOTS: [Slot; MAX_REGIONS] = [const {
    Slot { lo: AtomicUsize::new(0), hi: AtomicUsize::new(0), region: AtomicPtr::new(ptr::null_mut()), users: AtomicUsize::new(0) }
}; MAX_REGIONS];
/// Slots in use are all below this.
static HIGH: AtomicUsize = AtomicUsize::new(0);
static CLAIM: Mutex<()> = Mutex::new(());

pub(super) fn register(region: &Arc<Region>) -> Option<usize> {
    let _g = CLAIM.lock().unwrap();
    let i = SLOTS.iter().position(|s| s.region.load(Acquire).is_null() && s.hi.load(Acquire) == 0)?;
    let s = &SLOTS[i];
    s.lo.store(region.base, Release);
    s.hi.store(region.base + region.pages * page_size(), Release);
    s.region.store(Arc::into_raw(region.clone()).cast_mut(), SeqCst);
    if i >= HIGH.load(Acquire) {
        HIGH.store(i + 1, Release);
    }
    Some(i)
}

pub(super) fn unregister(i: usize) {
    let s = &SLOTS[i];
    let p = s.region.swap(ptr::null_mut(), SeqCst);
    while s.users.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    if !p.is_null() {
        // SAFETY: from Arc::into_raw in `register`; unpublished above and no
        // user holds it any more.
        drop(unsafe { Arc::from_raw(p) });
    }
    let _g = CLAIM.lock().unwrap();
    s.lo.store(0, Release);
    s.hi.store(0, Release);
}

/// Runs `f` on every live region registered at `base`, holding it against
/// `unregister` meanwhile.
pub(super) fn with_regions_at(base: usize, mut f: impl FnMut(&Region)) {
    let high = HIGH.load(Acquire);
    for s in &SLOTS[..high] {
        if s.lo.load(Acquire) != base {
            continue;
        }
        s.users.fetch_add(1, SeqCst);
        let r = s.region.load(SeqCst);
        // SAFETY: `users` is raised, so the region is not freed meanwhile
        // (see `unregister`).
        if let Some(r) = unsafe { r.as_ref() } {
            f(r);
        }
        s.users.fetch_sub(1, SeqCst);
    }
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

/// Handles a fault at `addr` if it is a write to a tracked page.
fn handle(addr: usize) -> bool {
    let high = HIGH.load(Acquire);
    for s in &SLOTS[..high] {
        if addr < s.lo.load(Acquire) || addr >= s.hi.load(Acquire) {
            continue;
        }
        s.users.fetch_add(1, SeqCst);
        let r = s.region.load(SeqCst);
        // SAFETY: `users` is raised before the load, so `unregister` waits
        // for us before freeing the region (it nulls the pointer first).
        let handled = match unsafe { r.as_ref() } {
            Some(r) if addr >= r.base && addr < r.base + r.pages * page_size() && !r.detached.load(Acquire) => {
                on_write_fault(r, (addr - r.base) / page_size());
                true
            }
            _ => false,
        };
        s.users.fetch_sub(1, SeqCst);
        if handled {
            return true;
        }
    }
    false
}

