//! A memory's tracking state, owned by its reactor: arming a capture,
//! settling at message boundaries, releasing.

use super::handler::{self, MAX_REGIONS};
use super::region::{CLEAN, DIRTY, PENDING, PageCopy, Region};
use super::copier;
use crate::sys::pages::{Mapping, page_size, protect_runs, unprotect};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};

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
    capture: Option<Arc<PageCopy>>,
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
    ) -> Result<Arc<PageCopy>, ArmError> {
        handler::install_handler();
        self.finish();
        let ps = page_size();
        let pages = len / ps;
        let base = base as usize;
        // Fallible allocation first, before any tracking state changes.
        let dest = Mapping::new(pages * ps)?;
        // Dirty pages are only a valid delta base if the previous capture
        // asked to keep tracking.
        let kept = std::mem::take(&mut self.keep);
        // A region whose protection failed has no dirty-page record either.
        let old = self.region.take().filter(|r| !r.detached.load(Acquire) && r.base == base);
        let kept = kept && old.as_ref().is_some_and(|r| !r.lost.load(Acquire));
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
                    lost: AtomicBool::new(false),
                    slot: AtomicUsize::new(usize::MAX),
                });
                drop(old);
                (region, true)
            }
        };
        let capture = Arc::new(PageCopy {
            dest,
            pages,
            included,
            full: cover == Cover::All,
            nonzero: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            pending: AtomicUsize::new(count),
            open_after: !keep_tracking && count > 0,
            faulted: AtomicUsize::new(0),
            degraded: AtomicBool::new(false),
            done: Mutex::new(count == 0),
            done_cv: Condvar::new(),
        });
        region.capture.store(Arc::into_raw(capture.clone()).cast_mut(), Release);
        if fresh {
            // Swap the registration before protecting, so no fault in the
            // range ever finds no region.
            if let Some(slot) = self.slot.take() {
                handler::unregister(slot);
            }
            let slot = match handler::register(&region) {
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
            copier::copier().submit(region, capture.clone());
        }
        Ok(capture)
    }

    /// Whether dirty pages are being recorded (an incremental capture is
    /// possible).
    pub(crate) fn tracking(&self) -> bool {
        self.keep && self.region.as_ref().is_some_and(|r| !r.detached.load(Acquire) && !r.lost.load(Acquire))
    }

    /// Called at message boundaries: once the capture completed, drops it
    /// and, unless tracking is kept, unprotects the memory.
    pub(crate) fn settle(&mut self) {
        if self.capture.as_ref().is_some_and(|c| c.is_done()) {
            self.detach_capture();
        }
        if self.region.as_ref().is_some_and(|r| r.lost.load(Acquire)) {
            // Protection failed (reported by the capture: `degraded`); the
            // handler lifted it as a whole. Stop tracking.
            self.release();
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
            handler::unregister(slot);
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

