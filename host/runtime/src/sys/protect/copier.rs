//! The background copier thread, and what a memory does before it moves.

use super::handler::{claim_and_copy, unindex, with_regions_at};
use super::region::{CLEAN, COPYING, PENDING, PageCopy, Region};
use crate::sys::pages::{RUN_PAGES, page_is_zero, page_size, unprotect};
use std::ptr;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex};

pub(super) struct Copier {
    tx: Mutex<std::sync::mpsc::Sender<(Arc<Region>, Arc<PageCopy>)>>,
}

pub(super) fn copier() -> &'static Copier {
    static C: std::sync::OnceLock<Copier> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(Arc<Region>, Arc<PageCopy>)>();
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
    pub(super) fn submit(&self, region: Arc<Region>, capture: Arc<PageCopy>) {
        self.tx.lock().unwrap().send((region, capture)).expect("snapshot copier is gone");
    }
}

/// Copies every page still pending (claiming runs of them and copying each
/// run with one `memcpy`), then waits for pages the handler is copying, then
/// declares the capture done.
fn run_copy(region: &Region, capture: &PageCopy) {
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
                    capture.dest.as_mut_ptr().add(start * ps),
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
    with_regions_at(base, |r| {
        if r.base != base || r.detached.load(Acquire) {
            return;
        }
        // Help copy whatever is pending, then wait for the copier.
        for p in 0..r.pages {
            if r.states[p].load(Relaxed) == PENDING {
                claim_and_copy(r, p, CLEAN);
            }
        }
        let c = r.capture.load(Acquire);
        // SAFETY: the tracker releases the capture only on this thread
        // (the memory's owner) and `with_regions_at` holds the region; a
        // non-null pointer is live.
        if let Some(c) = unsafe { c.as_ref() } {
            // Until the copier is completely done with the range.
            c.wait();
        }
        let was_open = r.open.load(Acquire);
        r.detached.store(true, Release);
        if !was_open {
            let _ = unprotect(r.base, r.pages * page_size());
        }
        unindex(r);
    });
}
