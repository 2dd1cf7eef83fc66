//! Page protection for snapshots: write tracking and concurrent
//! copy-on-write capture of linear memories.
//!
//! # The mechanism
//!
//! A *region* is a linear memory the host tracks: one atomic state byte per
//! page, registered in a process-wide table that a `SIGSEGV` handler consults.
//! The handler is installed once, right after the first wasmtime engine
//! exists, and chains to whatever handler was there before (wasmtime's, which
//! chains to Rust's), so faults that are not ours behave exactly as before.
//!
//! Page states:
//! - `CLEAN`: write-protected, unchanged since the last capture;
//! - `DIRTY`: writable, written since the last capture;
//! - `PENDING`: write-protected, must be copied into the capture in progress
//!   before anyone writes it;
//! - `COPYING`: being copied right now (by the copier thread or the handler).
//!
//! A capture is armed at a message boundary, on the reactor's own thread:
//! the pages it covers become `PENDING` and are write-protected, and the
//! reactor goes on at once. A background thread copies `PENDING` pages
//! (`PENDING → COPYING → CLEAN`, leaving them protected). A write to a page
//! still `PENDING` faults; the handler claims the page with the same
//! compare-and-swap, copies it first, unprotects it and marks it `DIRTY`, and
//! the write proceeds. Whoever wins the swap copies the page; the other
//! waits for `COPYING` to end. So the capture holds every page exactly as it
//! was at the boundary, whatever the reactor writes meanwhile.
//!
//! A write to a `CLEAN` page (outside any capture) just unprotects it and
//! marks it `DIRTY`: that is the dirty tracking incremental captures use.
//! A region that is not kept for tracking is unprotected as a whole by the
//! copier once its copy is complete (one `mprotect`, off the reactor's
//! thread, so the kernel merges its mappings again); the reactor only drops
//! the registration at its next boundary. Re-arming a tracked region of the
//! same size turns its states over in place.
//!
//! Zero pages are detected while copying and not stored.
//!
//! # Costs and limits
//! - Arming costs one state byte per page plus one `mprotect` over the
//!   range (the kernel walks the present page-table entries): proportional to
//!   the resident pages, not to a copy.
//! - Each first write to a protected page costs a fault, a page copy (if
//!   pending) and an `mprotect` of that page. Unprotecting single pages
//!   splits the kernel mapping; a whole-range `mprotect` merges it again.
//! - At most [`MAX_REGIONS`] regions are tracked at once; arming more fails
//!   with an error the caller turns into a blocking copy.
//! - A memory that must move (growth past its reserved capacity) while
//!   tracked first finishes any capture in progress on its own thread, then
//!   stops being tracked: the next incremental capture is refused and a full
//!   one is needed.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, Once};

use super::memory::page_size;

const CLEAN: u8 = 0;
const DIRTY: u8 = 1;
const PENDING: u8 = 2;
const COPYING: u8 = 3;

/// Most regions tracked at once in the process.
pub(crate) const MAX_REGIONS: usize = 16384;

// ---------------------------------------------------------------------------
// Anonymous mappings used as capture buffers.

/// A private anonymous `MAP_NORESERVE` mapping: untouched pages cost nothing,
/// so a capture buffer the size of the memory only costs its non-zero pages.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Invariant: a live mapping of `len` bytes owned by this value (or
    /// dangling when `len == 0`).
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this value; shared access only reads it
// through `as_slice` or writes disjoint pages through the capture protocol.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self { ptr: ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: p.cast(), len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes (invariant).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    #[cfg(test)]
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: the mapping this value owns (invariant).
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

// ---------------------------------------------------------------------------
// Page copies.

/// Whether a page is all zero. Non-zero pages almost always differ in their
/// first bytes, so this usually costs one cache line.
fn page_is_zero(page: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only splits.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && body.chunks(8).all(|c| c.iter().fold(0, |a, &w| a | w) == 0)
}

/// Copies page `p` from `src` to the same offset in `dst` unless it is zero;
/// returns whether it was non-zero.
///
/// # Safety
/// `src + p*ps` and `dst + p*ps` must each be `ps` readable (resp. writable)
/// bytes, and no one may write the source page meanwhile.
unsafe fn copy_page(src: *const u8, dst: *mut u8, p: usize, ps: usize) -> bool {
    // SAFETY: the caller guarantees a stable readable source page.
    let page = unsafe { std::slice::from_raw_parts(src.add(p * ps), ps) };
    if page_is_zero(page) {
        return false;
    }
    // SAFETY: the caller guarantees a writable destination page that nothing
    // else writes (each page is claimed by exactly one copier).
    unsafe { ptr::copy_nonoverlapping(page.as_ptr(), dst.add(p * ps), ps) };
    true
}

/// Most pages copied by one `memcpy` (large copies let the C library use
/// its fastest strategy; the bound keeps a waiting writer's wait short).
const RUN_PAGES: usize = 256;

/// Full copy of `[src, src+len)` into `dst` (same length), skipping zero
/// pages; returns the bitmap of non-zero pages. Used for blocking captures.
/// Runs of non-zero pages are copied with one `memcpy` each.
///
/// # Safety
/// `src` must be `len` readable bytes nobody writes during the call.
unsafe fn copy_all(src: *const u8, len: usize, dst: &mut Mapping) -> Vec<u64> {
    let ps = page_size();
    let pages = len / ps;
    assert!(dst.len() >= pages * ps, "destination too small");
    let mut nonzero = vec![0u64; pages.div_ceil(64)];
    let mut p = 0;
    while p < pages {
        // SAFETY: page `p` is inside the source (caller's contract).
        let page = unsafe { std::slice::from_raw_parts(src.add(p * ps), ps) };
        if page_is_zero(page) {
            p += 1;
            continue;
        }
        let start = p;
        nonzero[p / 64] |= 1 << (p % 64);
        p += 1;
        while p < pages && p - start < RUN_PAGES {
            // SAFETY: as above.
            let page = unsafe { std::slice::from_raw_parts(src.add(p * ps), ps) };
            if page_is_zero(page) {
                break;
            }
            nonzero[p / 64] |= 1 << (p % 64);
            p += 1;
        }
        // SAFETY: pages `start..p` are inside both ranges; the caller keeps
        // the source stable and `dst` is borrowed exclusively.
        unsafe { ptr::copy_nonoverlapping(src.add(start * ps), dst.ptr.add(start * ps), (p - start) * ps) };
    }
    nonzero
}

// ---------------------------------------------------------------------------
// Regions and captures.

/// A tracked memory: `[base, base + pages * page_size)`.
#[derive(Debug)]
pub(crate) struct Region {
    base: usize,
    pages: usize,
    states: Box<[AtomicU8]>,
    /// The capture in progress, shared with the handler (a raw `Arc`).
    capture: AtomicPtr<Capture>,
    /// Set when the memory moved or went away: tracking information is void.
    detached: AtomicBool,
    /// Set when the copier lifted the protection of the whole region after
    /// a capture that does not keep tracking.
    open: AtomicBool,
}

/// One capture: pages copied into `dest` at their own offsets.
#[derive(Debug)]
pub(crate) struct Capture {
    dest: Mapping,
    pages: usize,
    /// Pages this capture covers (all of them for a full capture).
    included: Vec<u64>,
    full: bool,
    /// Covered pages found non-zero.
    nonzero: Box<[AtomicU64]>,
    /// Covered pages not copied yet.
    pending: AtomicUsize,
    /// Lift the region's protection once copied (no tracking kept).
    open_after: bool,
    /// Pages copied by the fault handler (written before the copier got
    /// to them).
    faulted: AtomicUsize,
    done: Mutex<bool>,
    done_cv: Condvar,
}

fn bit(bits: &[u64], p: usize) -> bool {
    bits[p / 64] & (1 << (p % 64)) != 0
}

impl Capture {
    /// A full capture copied now, while nothing runs: `[src, src + len)`
    /// into a fresh buffer at memcpy speed, zero pages skipped.
    ///
    /// # Safety
    /// `src` must be `len` readable bytes (a page multiple) that nobody
    /// writes during the call.
    pub(crate) unsafe fn blocking(src: *const u8, len: usize) -> io::Result<Arc<Capture>> {
        let pages = len / page_size();
        let mut dest = Mapping::new(pages * page_size())?;
        // SAFETY: forwarded from this function's contract.
        let nonzero = unsafe { copy_all(src, len, &mut dest) };
        Ok(Arc::new(Capture {
            dest,
            pages,
            included: Vec::new(),
            full: true,
            nonzero: nonzero.into_iter().map(AtomicU64::new).collect(),
            pending: AtomicUsize::new(0),
            open_after: false,
            faulted: AtomicUsize::new(0),
            done: Mutex::new(true),
            done_cv: Condvar::new(),
        }))
    }

    /// Blocks until every covered page is copied.
    pub(crate) fn wait(&self) {
        let mut done = self.done.lock().unwrap();
        while !*done {
            done = self.done_cv.wait(done).unwrap();
        }
    }

    /// Pages the reactor wrote before the copier reached them (each copied
    /// first by the fault handler).
    pub(crate) fn faulted(&self) -> usize {
        self.faulted.load(Relaxed)
    }

    /// Whether every covered page is copied.
    pub(crate) fn is_done(&self) -> bool {
        *self.done.lock().unwrap()
    }

    fn mark_done(&self) {
        *self.done.lock().unwrap() = true;
        self.done_cv.notify_all();
    }

    /// The finished capture's contents. Waits for it first.
    pub(crate) fn image(&self) -> CapturedPages<'_> {
        self.wait();
        CapturedPages {
            bytes: self.dest.as_slice(),
            pages: self.pages,
            full: self.full,
            included: &self.included,
            nonzero: self.nonzero.iter().map(|w| w.load(Acquire)).collect(),
        }
    }
}

/// A finished capture, borrowed.
#[derive(Debug)]
pub(crate) struct CapturedPages<'a> {
    /// The memory image: covered non-zero pages at their own offsets.
    pub(crate) bytes: &'a [u8],
    /// Pages in the memory at capture time.
    pub(crate) pages: usize,
    /// Whether every page is covered (else only `included` ones).
    pub(crate) full: bool,
    pub(crate) included: &'a [u64],
    pub(crate) nonzero: Vec<u64>,
}

impl CapturedPages<'_> {
    /// Whether page `p` is part of this capture.
    pub(crate) fn covers(&self, p: usize) -> bool {
        self.full || bit(self.included, p)
    }

    /// Whether page `p` was captured non-zero.
    pub(crate) fn is_nonzero(&self, p: usize) -> bool {
        bit(&self.nonzero, p)
    }

    /// Runs of covered pages, each all non-zero or all zero and at most
    /// `max` pages long: `(first page, end page, non-zero)`.
    pub(crate) fn runs(&self, max: usize) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        let mut p = 0;
        std::iter::from_fn(move || {
            while p < self.pages && !self.covers(p) {
                p += 1;
            }
            if p == self.pages {
                return None;
            }
            let (start, nonzero) = (p, self.is_nonzero(p));
            while p < self.pages && self.covers(p) && self.is_nonzero(p) == nonzero && p - start < max {
                p += 1;
            }
            Some((start, p, nonzero))
        })
    }
}

/// Which pages a capture covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cover {
    /// Every page.
    All,
    /// Pages written since the previous capture (and pages the memory grew
    /// by since then).
    Dirty,
}

/// Why a capture could not be armed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArmError {
    /// Dirty pages are only known after a tracked capture of this memory.
    #[error("no dirty-page record for this memory: take a full snapshot first (tracking starts with it)")]
    NoBase,
    /// The region table is full.
    #[error("too many memories are tracked at once (limit {MAX_REGIONS})")]
    TooMany,
    /// A system call failed.
    #[error("page protection failed: {0}")]
    Os(#[from] io::Error),
}

/// A memory's tracking state, owned by its reactor (on the reactor's thread).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    region: Option<Arc<Region>>,
    slot: Option<usize>,
    capture: Option<Arc<Capture>>,
    keep: bool,
}

impl Tracker {
    /// Arms a capture of the memory `[base, base + len)` and hands the copy
    /// to the background copier. Returns at once; the reactor may run on.
    /// With `keep_tracking`, the memory stays write-protected afterwards so
    /// the next capture can take only the pages written in between.
    ///
    /// # Safety
    /// `[base, base + len)` must be a linear memory mapping (read-write,
    /// page-aligned, `len` a page multiple) that stays mapped at `base` until
    /// this tracker is released or the memory calls [`before_move`]
    /// (which every move and free does), and that no other thread writes. No Wasm or host code may
    /// be writing it during this call.
    pub(crate) unsafe fn arm(
        &mut self,
        base: *mut u8,
        len: usize,
        cover: Cover,
        keep_tracking: bool,
    ) -> Result<Arc<Capture>, ArmError> {
        install_handler();
        self.finish();
        let ps = page_size();
        let pages = len / ps;
        let base = base as usize;
        // Fallible allocation first, before any tracking state changes.
        let dest = Mapping::new(pages * ps)?;
        // Dirty pages are only a valid delta base if the previous capture
        // asked to keep tracking.
        let kept = std::mem::take(&mut self.keep);
        let old = self.region.take().filter(|r| !r.detached.load(Acquire) && r.base == base);
        if cover == Cover::Dirty && (old.is_none() || !kept) {
            // Unprotect and unregister the old region (if any) as a whole.
            self.region = old;
            self.release();
            return Err(ArmError::NoBase);
        }
        let mut included = vec![0u64; pages.div_ceil(64)];
        // Pages writable now: all of them, unless an earlier capture left
        // them protected (then only those written since, and new ones).
        let mut writable = vec![0u64; pages.div_ceil(64)];
        let mut count = 0;
        let mut mark = |p: usize, was: Option<u8>| -> u8 {
            if was.is_none_or(|w| w == DIRTY) {
                writable[p / 64] |= 1 << (p % 64);
            }
            if cover == Cover::All || was.is_none_or(|w| w == DIRTY) {
                included[p / 64] |= 1 << (p % 64);
                count += 1;
                PENDING
            } else {
                CLEAN
            }
        };
        // The same memory, tracked since the last capture and still the same
        // size: turn its page states over in place and keep its registration
        // (no allocation proportional to the memory, no table update).
        let reusable = old.as_ref().is_some_and(|r| kept && r.pages == pages && !r.open.load(Acquire));
        let (region, fresh) = match old {
            Some(r) if reusable => {
                for (p, st) in r.states.iter().enumerate() {
                    st.store(mark(p, Some(st.load(Acquire))), Release);
                }
                (r, false)
            }
            old => {
                let states: Box<[AtomicU8]> = {
                    let prior = region_states(&old);
                    (0..pages).map(|p| AtomicU8::new(mark(p, prior(p)))).collect()
                };
                let region = Arc::new(Region {
                    base,
                    pages,
                    states,
                    capture: AtomicPtr::new(ptr::null_mut()),
                    detached: AtomicBool::new(false),
                    open: AtomicBool::new(false),
                });
                drop(old);
                (region, true)
            }
        };
        let capture = Arc::new(Capture {
            dest,
            pages,
            included,
            full: cover == Cover::All,
            nonzero: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pending: AtomicUsize::new(count),
            open_after: !keep_tracking && count > 0,
            faulted: AtomicUsize::new(0),
            done: Mutex::new(count == 0),
            done_cv: Condvar::new(),
        });
        region.capture.store(Arc::into_raw(capture.clone()).cast_mut(), Release);
        if fresh {
            // Swap the registration before protecting, so no fault in the
            // range ever finds no region.
            if let Some(slot) = self.slot.take() {
                unregister(slot);
            }
            let slot = match register(&region) {
                Some(s) => s,
                None => {
                    // SAFETY: the pointer came from Arc::into_raw above and
                    // the region was never published.
                    drop(unsafe { Arc::from_raw(region.capture.load(Acquire)) });
                    unprotect(base, pages * ps)?;
                    return Err(ArmError::TooMany);
                }
            };
            self.slot = Some(slot);
        }
        // Arming costs a page-table walk per protected page; pages an
        // earlier capture left protected need none.
        let protected = protect_runs(base, &writable, pages, ps);
        if let Err(e) = protected {
            self.region = Some(region);
            self.capture = Some(capture.clone());
            self.keep = false;
            self.release();
            return Err(ArmError::Os(e));
        }
        self.region = Some(region.clone());
        self.capture = Some(capture.clone());
        self.keep = keep_tracking;
        if count > 0 {
            copier().submit(region, capture.clone());
        }
        Ok(capture)
    }

    /// Whether dirty pages are being recorded (an incremental capture is
    /// possible).
    pub(crate) fn tracking(&self) -> bool {
        self.keep && self.region.as_ref().is_some_and(|r| !r.detached.load(Acquire))
    }

    /// Called at message boundaries: once the capture completed, drops it
    /// and, unless tracking is kept, unprotects the memory.
    pub(crate) fn settle(&mut self) {
        if self.capture.as_ref().is_some_and(|c| c.is_done()) {
            self.detach_capture();
        }
        if self.capture.is_none() && !self.keep && self.region.is_some() {
            self.release();
        }
        if self.region.as_ref().is_some_and(|r| r.detached.load(Acquire)) {
            self.release();
        }
    }

    /// Waits for the capture in progress, if any, to complete.
    pub(crate) fn finish(&mut self) {
        if let Some(c) = &self.capture {
            c.wait();
        }
        self.detach_capture();
    }

    /// Stops tracking: waits for any capture, unprotects, unregisters.
    pub(crate) fn release(&mut self) {
        self.finish();
        if let Some(slot) = self.slot.take() {
            unregister(slot);
        }
        if let Some(r) = self.region.take()
            && !r.detached.swap(true, AcqRel)
            && !r.open.load(Acquire)
        {
            let _ = unprotect(r.base, r.pages * page_size());
        }
        self.keep = false;
    }

    fn detach_capture(&mut self) {
        let Some(r) = &self.region else { return };
        let p = r.capture.swap(ptr::null_mut(), AcqRel);
        if !p.is_null() {
            // SAFETY: the pointer came from Arc::into_raw in `arm`; the
            // capture is complete, so no handler dereferences it any more
            // (it does so only after winning a PENDING page, and none is
            // left), and the swap makes this the only release.
            drop(unsafe { Arc::from_raw(p) });
        }
        self.capture = None;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.release();
    }
}

/// The state each page had in `old` (None: unknown, i.e. writable),
/// ignoring a region whose protection was lifted as a whole.
fn region_states(old: &Option<Arc<Region>>) -> impl Fn(usize) -> Option<u8> + '_ {
    let live = old.as_ref().filter(|r| !r.open.load(Acquire));
    move |p| live.filter(|r| p < r.pages).map(|r| r.states[p].load(Acquire))
}

fn protect(base: usize, len: usize) -> io::Result<()> {
    mprotect(base, len, libc::PROT_READ)
}

fn unprotect(base: usize, len: usize) -> io::Result<()> {
    mprotect(base, len, libc::PROT_READ | libc::PROT_WRITE)
}

fn mprotect(base: usize, len: usize, prot: i32) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: callers pass ranges inside memories the tracker was armed on
    // (see `Tracker::arm`'s contract); changing protection moves no data.
    if unsafe { libc::mprotect(base as *mut libc::c_void, len, prot) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gaps between runs shorter than this are protected along with them:
/// re-protecting a few already-protected pages is cheaper than a system call.
const MERGE_GAP_PAGES: usize = 32;

/// Protects the runs of set bits (nearby runs merged), or the whole range
/// when there are many.
fn protect_runs(base: usize, bits: &[u64], pages: usize, ps: usize) -> io::Result<()> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut p = 0;
    while p < pages {
        if !bit(bits, p) {
            p += 1;
            continue;
        }
        let start = p;
        while p < pages && bit(bits, p) {
            p += 1;
        }
        match runs.last_mut() {
            Some((s, n)) if start - (*s + *n) < MERGE_GAP_PAGES => *n = p - *s,
            _ => runs.push((start, p - start)),
        }
        if runs.len() > 4096 {
            return protect(base, pages * ps);
        }
    }
    runs.iter().try_for_each(|&(s, n)| protect(base + s * ps, n * ps))
}

// ---------------------------------------------------------------------------
// Claiming and copying pages (copier thread and fault handler alike).

impl Region {
    /// Copies page `p` into the capture if it is still pending. Returns
    /// false if someone else has it.
    ///
    /// `then` is the state the page gets after the copy: `CLEAN` (copier:
    /// the page stays protected) or `DIRTY` (handler: the page is about to be
    /// written and gets unprotected).
    fn claim_and_copy(&self, p: usize, then: u8) -> bool {
        if self.states[p].compare_exchange(PENDING, COPYING, AcqRel, Acquire).is_err() {
            return false;
        }
        let c = self.capture.load(Acquire);
        debug_assert!(!c.is_null(), "a pending page implies a live capture");
        // SAFETY: a page was PENDING, so the capture is live (it is released
        // only once no page is pending, and ours is counted until below).
        let c = unsafe { &*c };
        let ps = page_size();
        // SAFETY: page `p` lies inside the tracked memory (p < pages) and is
        // write-protected, so nobody writes it; the destination page is ours
        // alone because we won the state swap.
        let nonzero = unsafe { copy_page(self.base as *const u8, c.dest.ptr, p, ps) };
        if nonzero {
            c.nonzero[p / 64].fetch_or(1 << (p % 64), Release);
        }
        if then == DIRTY {
            c.faulted.fetch_add(1, Relaxed);
            let _ = unprotect(self.base + p * ps, ps);
        }
        self.states[p].store(then, Release);
        c.pending.fetch_sub(1, AcqRel);
        true
    }

    /// Handles a write fault at page `p`. Async-signal-safe: atomics, a
    /// page copy and `mprotect` only.
    fn on_write_fault(&self, p: usize) {
        let ps = page_size();
        loop {
            match self.states[p].load(Acquire) {
                PENDING => {
                    if self.claim_and_copy(p, DIRTY) {
                        return;
                    }
                }
                CLEAN => {
                    if self.states[p].compare_exchange(CLEAN, COPYING, AcqRel, Acquire).is_ok() {
                        let _ = unprotect(self.base + p * ps, ps);
                        self.states[p].store(DIRTY, Release);
                        return;
                    }
                }
                COPYING => std::hint::spin_loop(),
                // Writable already (a race with an unprotect): retry the write.
                _ => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The copier thread.

struct Copier {
    tx: Mutex<std::sync::mpsc::Sender<(Arc<Region>, Arc<Capture>)>>,
}

fn copier() -> &'static Copier {
    static C: std::sync::OnceLock<Copier> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(Arc<Region>, Arc<Capture>)>();
        std::thread::Builder::new()
            .name("snapshot-copier".into())
            .spawn(move || {
                for (region, capture) in rx {
                    run_copy(&region, &capture);
                }
            })
            .expect("cannot start the snapshot copier thread");
        Copier { tx: Mutex::new(tx) }
    })
}

impl Copier {
    fn submit(&self, region: Arc<Region>, capture: Arc<Capture>) {
        self.tx.lock().unwrap().send((region, capture)).expect("snapshot copier is gone");
    }
}

/// Copies every page still pending (claiming runs of them and copying each
/// run with one `memcpy`), then waits for pages the handler is copying, then
/// declares the capture done.
fn run_copy(region: &Region, capture: &Capture) {
    let ps = page_size();
    let mut p = 0;
    while p < region.pages {
        // Claim a run of pending, non-zero pages.
        let start = p;
        while p < region.pages && p - start < RUN_PAGES {
            if region.states[p].compare_exchange(PENDING, COPYING, AcqRel, Acquire).is_err() {
                break;
            }
            // SAFETY: page `p` is inside the memory and protected (pending).
            let page = unsafe { std::slice::from_raw_parts((region.base + p * ps) as *const u8, ps) };
            if page_is_zero(page) {
                region.states[p].store(CLEAN, Release);
                capture.pending.fetch_sub(1, AcqRel);
                p += 1;
                break;
            }
            p += 1;
        }
        // `start..end` are ours (COPYING) and non-zero; `end` may be a zero
        // page already released above.
        let mut end = p;
        if end > start && region.states[end - 1].load(Acquire) != COPYING {
            end -= 1;
        }
        if end > start {
            // SAFETY: the pages are inside the memory, write-protected (a
            // writer waits while they are COPYING), and the destination
            // pages are ours alone since we won their state swaps.
            unsafe {
                ptr::copy_nonoverlapping(
                    (region.base + start * ps) as *const u8,
                    capture.dest.ptr.add(start * ps),
                    (end - start) * ps,
                )
            };
            for q in start..end {
                capture.nonzero[q / 64].fetch_or(1 << (q % 64), Release);
                region.states[q].store(CLEAN, Release);
            }
            capture.pending.fetch_sub(end - start, AcqRel);
        }
        if p == start {
            p += 1;
        }
    }
    while capture.pending.load(Acquire) != 0 {
        std::thread::yield_now();
    }
    // Lift the protection here, off the reactor's thread, unless tracking
    // goes on. Before `mark_done`: a memory that moves or is freed waits for
    // that first (`before_move`), so this never touches a reused range.
    if capture.open_after && !region.detached.load(Acquire) {
        let _ = unprotect(region.base, region.pages * ps);
        region.open.store(true, Release);
    }
    capture.mark_done();
}

// ---------------------------------------------------------------------------
// Memory moves and frees.

/// Called by a memory before it moves or is unmapped: finishes any capture
/// of it on this thread, unprotects it and ends its tracking.
pub(crate) fn before_move(base: usize) {
    let high = HIGH.load(Acquire);
    for s in &SLOTS[..high] {
        if s.lo.load(Acquire) != base {
            continue;
        }
        s.users.fetch_add(1, SeqCst);
        let r = s.region.load(SeqCst);
        // SAFETY: `users` is raised, so the region is not freed meanwhile
        // (see `unregister`).
        if let Some(r) = unsafe { r.as_ref() }
            && r.base == base
            && !r.detached.load(Acquire)
        {
            // Help copy whatever is pending, then wait for the copier.
            for p in 0..r.pages {
                if r.states[p].load(Relaxed) == PENDING {
                    r.claim_and_copy(p, CLEAN);
                }
            }
            let c = r.capture.load(Acquire);
            // SAFETY: the tracker releases the capture only on this thread
            // (the memory's owner) and we hold `users`; a non-null pointer
            // is live.
            if let Some(c) = unsafe { c.as_ref() } {
                // Until the copier is completely done with the range.
                c.wait();
            }
            let was_open = r.open.load(Acquire);
            r.detached.store(true, Release);
            if !was_open {
                let _ = unprotect(r.base, r.pages * page_size());
            }
        }
        s.users.fetch_sub(1, SeqCst);
    }
}

// ---------------------------------------------------------------------------
// The region table and the signal handler.

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

fn register(region: &Arc<Region>) -> Option<usize> {
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

fn unregister(i: usize) {
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
                r.on_write_fault((addr - r.base) / page_size());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(m: &mut Mapping, seed: u8) {
        let ps = page_size();
        for (p, page) in m.as_mut_slice().chunks_mut(ps).enumerate() {
            if p % 3 != 2 {
                page.fill(seed.wrapping_add(p as u8) | 1);
            }
        }
    }

    #[test]
    fn zero_pages_are_detected() {
        let ps = page_size();
        let mut page = vec![0u8; ps];
        assert!(page_is_zero(&page));
        page[ps - 1] = 1;
        assert!(!page_is_zero(&page));
    }

    #[test]
    fn capture_equals_boundary_state_despite_concurrent_writes() {
        let ps = page_size();
        let pages = 512;
        let mut mem = Mapping::new(pages * ps).unwrap();
        fill(&mut mem, 7);
        let before = mem.as_slice().to_vec();
        let mut t = Tracker::default();
        // SAFETY: `mem` outlives the tracker's use (released below) and only
        // this thread writes it.
        let cap = unsafe { t.arm(mem.ptr, mem.len(), Cover::All, true) }.unwrap();
        // Write every page while the copier runs: each write faults first.
        for p in (0..pages).rev() {
            // SAFETY: inside the mapping; the handler makes it writable.
            unsafe { mem.ptr.add(p * ps + 5).write_volatile(0xEE) };
        }
        let img = cap.image();
        for p in 0..pages {
            let want = &before[p * ps..(p + 1) * ps];
            if page_is_zero(want) {
                assert!(!img.is_nonzero(p), "page {p} was zero");
            } else {
                assert!(img.is_nonzero(p));
                assert_eq!(&img.bytes[p * ps..(p + 1) * ps], want, "page {p}");
            }
        }
        // Dirty tracking: exactly the written pages are in the next delta.
        t.settle();
        let half: Vec<usize> = (0..pages).step_by(2).collect();
        // SAFETY: as above.
        let cap2 = unsafe { t.arm(mem.ptr, mem.len(), Cover::Dirty, true) }.unwrap();
        for &p in &half {
            // SAFETY: as above.
            unsafe { mem.ptr.add(p * ps).write_volatile(1) };
        }
        let img2 = cap2.image();
        // Every page was written after the first arm, so all are covered.
        assert!((0..pages).all(|p| img2.covers(p)));
        drop(img2);
        t.settle();
        // SAFETY: as above.
        let cap3 = unsafe { t.arm(mem.ptr, mem.len(), Cover::Dirty, false) }.unwrap();
        let img3 = cap3.image();
        for p in 0..pages {
            assert_eq!(img3.covers(p), p % 2 == 0, "page {p}");
        }
        drop(img3);
        t.release();
        // Writable again without faults.
        mem.as_mut_slice().fill(3);
    }

    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Write `value` at byte `offset` of page `page`.
        Write { page: usize, offset: usize, value: u8 },
        /// Arm a capture (then the next writes race its copier).
        Arm { dirty: bool, keep: bool },
        /// A message boundary.
        Settle,
    }

    fn op(pages: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..pages, 0..4096usize, any::<u8>()).prop_map(|(page, offset, value)| Op::Write { page, offset, value }),
            1 => (any::<bool>(), any::<bool>()).prop_map(|(dirty, keep)| Op::Arm { dirty, keep }),
            1 => Just(Op::Settle),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the order of writes, arms and boundaries, every capture
        /// holds exactly the memory as it was when it was armed (for a
        /// delta: every page written since the previous capture, and the
        /// pages it does not cover are unchanged since then).
        #[test]
        fn every_capture_equals_memory_at_its_arm(ops in proptest::collection::vec(op(64), 1..200)) {
            let ps = page_size();
            let pages = 64;
            let mut mem = Mapping::new(pages * ps).unwrap();
            let mut t = Tracker::default();
            // (capture, memory at arm, memory at the previous capture)
            let mut taken = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            for op in ops {
                match op {
                    Op::Write { page, offset, value } => {
                        // SAFETY: inside the mapping; the handler makes
                        // protected pages writable first.
                        unsafe { mem.ptr.add(page * ps + offset).write_volatile(value) };
                    }
                    Op::Arm { dirty, keep } => {
                        let cover = if dirty { Cover::Dirty } else { Cover::All };
                        // SAFETY: `mem` outlives the tracker (released
                        // below) and only this thread writes it.
                        match unsafe { t.arm(mem.ptr, mem.len(), cover, keep) } {
                            Ok(c) => {
                                let now = mem.as_slice().to_vec();
                                taken.push((c, now.clone(), if dirty { last.clone() } else { None }));
                                last = keep.then_some(now);
                            }
                            Err(ArmError::NoBase) => {
                                prop_assert!(dirty);
                                last = None;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    Op::Settle => t.settle(),
                }
            }
            for (c, at_arm, before) in &taken {
                let img = c.image();
                for p in 0..pages {
                    let want = &at_arm[p * ps..(p + 1) * ps];
                    if img.covers(p) {
                        if img.is_nonzero(p) {
                            prop_assert_eq!(&img.bytes[p * ps..(p + 1) * ps], want, "page {}", p);
                        } else {
                            prop_assert!(page_is_zero(want), "page {} captured as zero", p);
                        }
                    } else {
                        let before = before.as_ref().expect("only deltas leave pages out");
                        prop_assert_eq!(&before[p * ps..(p + 1) * ps], want, "uncovered page {} changed", p);
                    }
                }
            }
            drop(taken);
            t.release();
            // Writable again everywhere.
            mem.as_mut_slice().fill(1);
        }
    }

    #[test]
    fn incremental_needs_a_base() {
        let mem = Mapping::new(16 * page_size()).unwrap();
        let mut t = Tracker::default();
        // SAFETY: as in the test above.
        let r = unsafe { t.arm(mem.ptr, mem.len(), Cover::Dirty, true) };
        assert!(matches!(r, Err(ArmError::NoBase)));
    }

    #[test]
    fn faults_outside_tracked_memory_still_reach_the_previous_handler() {
        // A tracked region exists; an unrelated read of a PROT_NONE page in
        // a child process must still kill it with SIGSEGV (the chain ends in
        // the default action), not loop or be swallowed.
        install_handler();
        // SAFETY: fork in a test: the child only touches memory and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: a fresh PROT_NONE page, then a read of it.
            unsafe {
                let p = libc::mmap(ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
                std::ptr::read_volatile(p.cast::<u8>());
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "child exited normally: status {status}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
    }
}
