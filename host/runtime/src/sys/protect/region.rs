//! The shared state of page protection: a tracked memory (`Region`), the
//! page copy in progress on it (`PageCopy`), and a finished copy's
//! contents (`PageImage`). The protocol that moves pages between states is
//! in `handler` (what the fault handler runs) and `copier`.

use crate::sys::pages::{Mapping, bit, copy_all, page_size};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};

/// Write-protected, unchanged since the last capture.
pub(super) const CLEAN: u8 = 0;
/// Writable, written since the last capture.
pub(super) const DIRTY: u8 = 1;
/// Write-protected, must be copied into the capture in progress before
/// anyone writes it.
pub(super) const PENDING: u8 = 2;
/// Being copied right now (by the copier thread or the handler).
pub(super) const COPYING: u8 = 3;

/// A tracked memory: `[base, base + pages * page_size)`.
#[derive(Debug)]
pub(crate) struct Region {
    pub(super) base: usize,
    pub(super) pages: usize,
    /// One of `CLEAN`, `DIRTY`, `PENDING`, `COPYING` per page.
    pub(super) states: Box<[AtomicU8]>,
    /// The copy in progress, shared with the handler (a raw `Arc`).
    /// Invariant: non-null while any page is `PENDING` or `COPYING`.
    pub(super) capture: AtomicPtr<PageCopy>,
    /// Set when the memory moved or went away: tracking information is void.
    pub(super) detached: AtomicBool,
    /// Set when the copier lifted the protection of the whole region after
    /// a capture that does not keep tracking (or the handler did, after an
    /// `mprotect` failed).
    pub(super) open: AtomicBool,
    /// Set when page protection failed on it (the handler could not make a
    /// page writable, e.g. the mapping count hit `vm.max_map_count`): its
    /// capture was finished by copying the rest at once and its protection
    /// lifted; its dirty-page record is void (the next incremental capture
    /// is refused: a full one is needed).
    pub(super) lost: AtomicBool,
    /// Its slot in the handler's table (`usize::MAX` until registered).
    pub(super) slot: AtomicUsize,
}

/// One copy of a memory's pages into `dest`, at their own offsets.
#[derive(Debug)]
pub(crate) struct PageCopy {
    pub(super) dest: Mapping,
    pub(super) pages: usize,
    /// Pages this copy covers (all of them for a full copy).
    pub(super) included: Vec<u64>,
    pub(super) full: bool,
    /// Covered pages found non-zero.
    pub(super) nonzero: Box<[AtomicU64]>,
    /// Covered pages not copied yet.
    pub(super) pending: AtomicUsize,
    /// Lift the region's protection once copied (no tracking kept).
    pub(super) open_after: bool,
    /// Pages copied by the fault handler (written before the copier got
    /// to them).
    pub(super) faulted: AtomicUsize,
    /// Set when page protection failed during this copy and the handler
    /// finished it by copying every page still pending at once.
    pub(super) degraded: AtomicBool,
    pub(super) done: Mutex<bool>,
    pub(super) done_cv: Condvar,
}

impl PageCopy {
    /// A full copy made now, while nothing runs: `[src, src + len)`
    /// into a fresh buffer at memcpy speed, zero pages skipped.
    ///
    /// # Safety
    /// `src` must be `len` readable bytes (a page multiple) that nobody
    /// writes during the call.
    pub(crate) unsafe fn blocking(src: *const u8, len: usize) -> io::Result<Arc<PageCopy>> {
        let pages = len / page_size();
        let mut dest = Mapping::new_filled_at_once(pages * page_size())?;
        // SAFETY: forwarded from this function's contract.
        let nonzero = unsafe { copy_all(src, len, &mut dest) };
        Ok(Arc::new(PageCopy {
            dest,
            pages,
            included: Vec::new(),
            full: true,
            nonzero: nonzero.into_iter().map(AtomicU64::new).collect(),
            pending: AtomicUsize::new(0),
            open_after: false,
            faulted: AtomicUsize::new(0),
            degraded: AtomicBool::new(false),
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

    /// Whether page protection failed during this copy (it was finished
    /// by copying every pending page at once; the copy is still exact).
    pub(crate) fn degraded(&self) -> bool {
        self.degraded.load(Acquire)
    }

    /// Whether every covered page is copied.
    pub(crate) fn is_done(&self) -> bool {
        *self.done.lock().unwrap()
    }

    pub(super) fn mark_done(&self) {
        *self.done.lock().unwrap() = true;
        self.done_cv.notify_all();
    }

    /// The finished capture's contents. Waits for it first.
    pub(crate) fn image(&self) -> PageImage<'_> {
        self.wait();
        PageImage {
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
pub(crate) struct PageImage<'a> {
    /// The memory image: covered non-zero pages at their own offsets.
    pub(crate) bytes: &'a [u8],
    /// Pages in the memory at capture time.
    pub(crate) pages: usize,
    /// Whether every page is covered (else only `included` ones).
    pub(crate) full: bool,
    pub(crate) included: &'a [u64],
    pub(crate) nonzero: Vec<u64>,
}

impl PageImage<'_> {
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

