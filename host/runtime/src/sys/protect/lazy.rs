//! Pages restored lazily, checked on first touch.
//!
//! A lazy restore maps runs of a snapshot file over a memory; nothing is
//! read until the reactor touches a page. To check those pages against the
//! file's page checksums without reading them all up front, each mapped
//! run is made inaccessible (`PROT_NONE`) and registered as a [`LazyRun`]:
//! the first touch of a page faults, and the `SIGSEGV` handler checks the
//! whole *chunk* around it (makes it readable, hashes its pages, compares
//! them with the file's checksums), then makes it readable and writable
//! and lets the access go on. A chunk is checked once.
//!
//! A damaged page is still made accessible (the faulting access may be the
//! host's own, which must not crash), but it is recorded in the memory's
//! [`Damage`]: the reactor is failed with that cause before it can act on
//! what it read — every host call through which a reactor acts checks the
//! record first, and so does the end of every call into it.
//!
//! Chunks: at least 16 pages, and at most 256 chunks per run, so a run
//! touched at every other chunk splits into at most ~512 kernel mappings.
//! An `mprotect` that fails in the handler (`vm.max_map_count`) checks the
//! whole run at once instead (its protection changed in one call, which
//! merges its mappings). Everything the handler runs here is
//! async-signal-safe: atomics, hashing (`hash` is a plain function over a
//! slice), `mprotect`.
//!
//! A fault in a chunk found checked already is either a race (another
//! thread checked it between the fault and the look) or not ours (a write
//! to a page a capture protects): the handler asks the tracked regions
//! first, and retries the access if they decline and the chunk is open.

use super::handler::{LAZY, install_handler};
use super::table::Entry;
use crate::sys::pages::{bit, cached_page_size, page_size, unprotect_raw};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::*};

const UNCHECKED: u8 = 0;
const CHECKING: u8 = 1;
const CHECKED: u8 = 2;

/// Fewest pages per chunk.
const MIN_CHUNK_PAGES: usize = 16;
/// Most chunks per run.
const MAX_CHUNKS: usize = 256;

/// The checksum of page data: `hash(index, page)`, where `index` is the
/// page's number in the snapshot's data section.
pub(crate) type PageHash = fn(u64, &[u8]) -> u64;

/// What the pages of a run must hash to.
#[derive(Debug)]
pub(crate) struct Expected {
    /// The data-section number of the run's first page.
    pub(crate) first_data_page: u64,
    /// Page `i` must hash to `hashes[i]`...
    pub(crate) hashes: Vec<u64>,
    /// ...unless bit `i` is set here.
    pub(crate) skip: Vec<u64>,
    /// The checksum function.
    pub(crate) hash: PageHash,
}

/// The first damaged page found in a memory restored lazily.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    /// Its memory page + 1 (0: none found).
    memory_page: AtomicU64,
    /// Its page in the snapshot's data section (valid when `memory_page`
    /// is set; `u64::MAX`: could not be checked at all).
    data_page: AtomicU64,
}

impl Damage {
    /// `(memory page, data page)` of the first damaged page found; a data
    /// page of `u64::MAX` means the pages could not be checked (protection
    /// could not be changed) and are treated as damaged.
    pub(crate) fn found(&self) -> Option<(u64, u64)> {
        match self.memory_page.load(Acquire) {
            0 => None,
            p => Some((p - 1, self.data_page.load(Acquire))),
        }
    }

    /// Records a damaged page unless one was found first. Async-signal-safe.
    fn record(&self, memory_page: u64, data_page: u64) {
        // data_page first: whoever sees memory_page set sees it too.
        if self.memory_page.load(Acquire) == 0 {
            self.data_page.store(data_page, Release);
            let _ = self.memory_page.compare_exchange(0, memory_page + 1, AcqRel, Acquire);
        }
    }
}

/// What a fault in a guarded run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Touch {
    /// It checked the chunk, or waited for whoever was: retry the access.
    Checked,
    /// The chunk was checked and opened before: the fault is not ours, or
    /// it raced with the checker (then retrying succeeds).
    Open,
    /// The chunk was checked but could not be opened: not ours to retry.
    Stuck,
}

/// One run of a memory mapped from a snapshot file, checked chunk by chunk
/// on first touch.
#[derive(Debug)]
pub(crate) struct LazyRun {
    base: usize,
    pages: usize,
    chunk_pages: usize,
    /// `UNCHECKED`, `CHECKING` or `CHECKED` per chunk.
    states: Box<[AtomicU8]>,
    /// The expected checksum of each page.
    expected: Box<[u64]>,
    /// Pages not to check: written over by a later layer of the restore,
    /// and checked there.
    skip: Box<[u64]>,
    /// The data-section page number of its first page.
    first_data_page: u64,
    /// The memory page number of its first page.
    first_memory_page: u64,
    hash: PageHash,
    /// Chunks not checked yet.
    remaining: AtomicUsize,
    /// Set when a checked chunk could not be opened.
    stuck: std::sync::atomic::AtomicBool,
    damage: Arc<Damage>,
    slot: AtomicUsize,
}

impl Entry for LazyRun {
    fn span(&self) -> (usize, usize) {
        (self.base, self.base + self.pages * cached_page_size())
    }

    fn slot(&self) -> &AtomicUsize {
        &self.slot
    }
}

fn set_protection(base: usize, len: usize, prot: i32) -> bool {
    // SAFETY: callers pass ranges of a registered run, which lies inside a
    // live memory mapping its owner keeps mapped while registered (it
    // unregisters before unmapping); protection moves no data.
    len == 0 || unsafe { libc::mprotect(base as *mut libc::c_void, len, prot) } == 0
}

impl LazyRun {
    /// A fault at `addr`, inside the run: checks its chunk if no one has.
    /// Async-signal-safe.
    pub(super) fn on_fault(&self, addr: usize) -> Touch {
        let c = (addr - self.base) / cached_page_size() / self.chunk_pages;
        let mut waited = false;
        loop {
            match self.states[c].load(Acquire) {
                UNCHECKED => {
                    if self.states[c].compare_exchange(UNCHECKED, CHECKING, AcqRel, Acquire).is_ok() {
                        self.check_chunk(c);
                        return Touch::Checked;
                    }
                }
                CHECKING => {
                    waited = true;
                    std::hint::spin_loop();
                }
                _ if waited => return Touch::Checked,
                _ if self.stuck.load(Acquire) => return Touch::Stuck,
                _ => return Touch::Open,
            }
        }
    }

    fn chunk_range(&self, c: usize) -> (usize, usize) {
        let first = c * self.chunk_pages;
        (first, self.chunk_pages.min(self.pages - first))
    }

    /// Hashes pages `first..first + n` (readable now) and records the first
    /// that does not match.
    fn hash_pages(&self, first: usize, n: usize) {
        let ps = cached_page_size();
        for i in first..first + n {
            if bit(&self.skip, i) {
                continue;
            }
            // SAFETY: page `i` is inside the run (i < pages), mapped and
            // readable: the caller made it so and holds its chunk.
            let page = unsafe { std::slice::from_raw_parts((self.base + i * ps) as *const u8, ps) };
            let data_page = self.first_data_page + i as u64;
            if (self.hash)(data_page, page) != self.expected[i] {
                self.damage.record(self.first_memory_page + i as u64, data_page);
                return;
            }
        }
    }

    /// Checks chunk `c`, which the caller claimed (`CHECKING`), and opens
    /// it. Async-signal-safe.
    fn check_chunk(&self, c: usize) {
        let ps = cached_page_size();
        let (first, n) = self.chunk_range(c);
        let (lo, len) = (self.base + first * ps, n * ps);
        if !set_protection(lo, len, libc::PROT_READ) {
            self.check_whole(Some(c));
            return;
        }
        self.hash_pages(first, n);
        if !unprotect_raw(lo, len) {
            self.check_whole(Some(c));
            return;
        }
        self.states[c].store(CHECKED, Release);
        self.remaining.fetch_sub(1, AcqRel);
    }

    /// Protection of one chunk could not be changed: checks every chunk
    /// not checked yet (`mine` is claimed by the caller) with the whole
    /// run's protection changed at once, then opens the whole run.
    /// Async-signal-safe.
    fn check_whole(&self, mine: Option<usize>) {
        let ps = cached_page_size();
        let readable = set_protection(self.base, self.pages * ps, libc::PROT_READ);
        let mut claimed = 0;
        for c in 0..self.states.len() {
            if Some(c) != mine {
                loop {
                    match self.states[c].load(Acquire) {
                        UNCHECKED if self.states[c].compare_exchange(UNCHECKED, CHECKING, AcqRel, Acquire).is_ok() => {
                            break;
                        }
                        CHECKED => break,
                        _ => std::hint::spin_loop(),
                    }
                }
                if self.states[c].load(Acquire) == CHECKED {
                    continue;
                }
            }
            let (first, n) = self.chunk_range(c);
            if readable {
                self.hash_pages(first, n);
            } else {
                self.damage.record(self.first_memory_page + first as u64, u64::MAX);
            }
            claimed += 1;
        }
        // Opening merges the run's mappings: it needs none more. Should it
        // fail all the same, the page stays inaccessible and the reactor is
        // failed by the record.
        if !unprotect_raw(self.base, self.pages * ps) {
            self.stuck.store(true, Release);
            self.damage.record(self.first_memory_page, u64::MAX);
        }
        for st in self.states.iter() {
            if st.load(Acquire) == CHECKING {
                st.store(CHECKED, Release);
            }
        }
        self.remaining.fetch_sub(claimed, AcqRel);
    }

    /// Checks every chunk not checked yet (an ordinary thread: the memory's
    /// own).
    fn check_rest(&self) {
        for c in 0..self.states.len() {
            if self.states[c].compare_exchange(UNCHECKED, CHECKING, AcqRel, Acquire).is_ok() {
                self.check_chunk(c);
            }
        }
    }
}

/// The runs of one memory restored lazily, still being checked, and the
/// record of damage found in them. Owned by the memory's reactor.
#[derive(Debug, Default)]
pub(crate) struct LazyPages {
    runs: Vec<Arc<LazyRun>>,
    damage: Arc<Damage>,
}

impl LazyPages {
    /// The damage record (shared with the host calls of the reactor).
    pub(crate) fn damage(&self) -> &Arc<Damage> {
        &self.damage
    }

    /// Whether runs are still being checked.
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Makes the `pages` pages at `addr` inaccessible until first touched,
    /// then checked against `expected`; `memory_base` is the start of the
    /// memory. Returns false (nothing changed) when the run cannot be
    /// guarded: the caller checks it now.
    ///
    /// # Safety
    /// `[addr, addr + pages * page_size)` must lie inside the live memory
    /// at `memory_base` of the caller's reactor, whose thread alone touches
    /// it; the memory must unregister its runs before it moves or is
    /// unmapped ([`forget`]).
    pub(crate) unsafe fn guard(
        &mut self,
        memory_base: usize,
        addr: usize,
        pages: usize,
        expected: Expected,
    ) -> io::Result<bool> {
        let ps = page_size();
        let Expected { first_data_page, hashes, skip, hash } = expected;
        if pages == 0 || hashes.len() != pages || skip.len() < pages.div_ceil(64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "checksums do not match the run"));
        }
        install_handler();
        let chunk_pages = pages.div_ceil(MAX_CHUNKS).max(MIN_CHUNK_PAGES);
        let chunks = pages.div_ceil(chunk_pages);
        let run = Arc::new(LazyRun {
            base: addr,
            pages,
            chunk_pages,
            states: (0..chunks).map(|_| AtomicU8::new(UNCHECKED)).collect(),
            expected: hashes.into_boxed_slice(),
            skip: skip.into_boxed_slice(),
            first_data_page,
            first_memory_page: ((addr - memory_base) / ps) as u64,
            hash,
            remaining: AtomicUsize::new(chunks),
            stuck: std::sync::atomic::AtomicBool::new(false),
            damage: self.damage.clone(),
            slot: AtomicUsize::new(usize::MAX),
        });
        if LAZY.register(&run).is_none() {
            return Ok(false);
        }
        if !set_protection(addr, pages * ps, libc::PROT_NONE) {
            let e = io::Error::last_os_error();
            LAZY.unregister_entry(&run);
            // Too many mappings: the caller checks it now instead.
            return if e.raw_os_error() == Some(libc::ENOMEM) { Ok(false) } else { Err(e) };
        }
        self.runs.push(run);
        Ok(true)
    }

    /// Drops the runs checked whole (at a message boundary).
    pub(crate) fn settle(&mut self) {
        self.runs.retain(|r| {
            let done = r.remaining.load(Acquire) == 0;
            if done {
                LAZY.unregister_entry(r);
            }
            !done
        });
    }

    /// Checks every chunk not checked yet, now, and drops every run: before
    /// a capture reads the memory or changes its protection. The damage
    /// record says what was found.
    pub(crate) fn check_all(&mut self) {
        for r in self.runs.drain(..) {
            r.check_rest();
            LAZY.unregister_entry(&r);
        }
    }
}

impl Drop for LazyPages {
    fn drop(&mut self) {
        for r in &self.runs {
            LAZY.unregister_entry(r);
        }
    }
}

/// Unregisters the runs inside `[base, base + len)`: a memory about to be
/// unmapped. Their pages are not checked (nothing will read them).
pub(crate) fn forget(base: usize, len: usize) {
    LAZY.unregister_within(base, base + len, |_| {});
}

/// Checks every chunk not checked yet of the runs inside `[base, base +
/// len)`, then unregisters them: a memory about to move (its pages keep
/// their protection, their addresses change). Called on the memory's
/// own thread.
pub(crate) fn before_move(base: usize, len: usize) {
    LAZY.unregister_within(base, base + len, LazyRun::check_rest);
}
