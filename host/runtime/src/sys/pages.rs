//! Pages: the page size, anonymous mappings used as capture buffers, page
//! copies that skip zero pages, and page protection. The leaf of `sys`:
//! every other platform module builds on these.
//!
//! `cached_page_size`, `page_is_zero`, `copy_page` and `unprotect_raw` are
//! async-signal-safe (plain loads and stores, `memcpy`, one system call):
//! the `SIGSEGV` handler (`protect::handler`) calls them.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The page size, once known (0 before the first [`page_size`]).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The system's page size (asked of the system once, then cached).
pub(crate) fn page_size() -> usize {
    match PAGE_SIZE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let p = usize::try_from(p).unwrap_or(4096);
            PAGE_SIZE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// The cached page size, for the signal handler: a plain atomic load, no
/// system call. Valid once [`page_size`] has run (the handler is installed
/// after it, and a tracked region exists only after it).
pub(crate) fn cached_page_size() -> usize {
    PAGE_SIZE.load(Ordering::Relaxed)
}

pub(crate) fn page_round(n: usize) -> Option<usize> {
    let p = page_size();
    n.checked_add(p - 1).map(|v| v & !(p - 1))
}

/// Mappings of at least this many bytes get transparent huge pages (see
/// [`map_anonymous`]).
pub(crate) const HUGE_FROM: usize = 32 << 20;
const HUGE: usize = 2 << 20;

/// A fresh private anonymous `MAP_NORESERVE` mapping of `len` bytes,
/// readable and writable. With `huge`, one of [`HUGE_FROM`] bytes or more
/// starts at a 2 MiB boundary (mapped 2 MiB larger and trimmed) and is
/// advised for transparent huge pages: it faults in 2 MiB at a time.
pub(crate) fn map_anonymous(len: usize, huge: bool) -> io::Result<*mut u8> {
    let huge = huge && len >= HUGE_FROM;
    let total = if huge { len + HUGE } else { len };
    // SAFETY: a fresh anonymous mapping at an address the kernel picks;
    // no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if !huge {
        return Ok(p.cast());
    }
    let start = p as usize;
    let aligned = (start + HUGE - 1) & !(HUGE - 1);
    let (head, tail) = (aligned - start, total - len - (aligned - start));
    // SAFETY: both ranges lie inside the mapping just made and outside the
    // `len` bytes kept from `aligned`; nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // Advice only: a kernel without huge pages, or refusing, leaves 4 KiB
    // pages.
    // SAFETY: MADV_HUGEPAGE changes no contents or protections, only how
    // the kernel backs the range, which is the mapping kept above.
    unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    Ok(aligned as *mut u8)
}

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
        Self::with_pages(len, false)
    }

    /// A buffer filled in one go while nothing else runs (a blocking
    /// capture): from [`HUGE_FROM`] bytes on it gets transparent huge
    /// pages, so filling it faults once per 2 MiB instead of per page.
    /// Not for a copy-on-write capture's buffer: its pages are written one
    /// by one from the fault handler, where a fault on a fresh huge page
    /// (2 MiB zeroed) stalls the reactor's write (measured: messages during
    /// a copy 2.5 times slower).
    pub(crate) fn new_filled_at_once(len: usize) -> io::Result<Self> {
        Self::with_pages(len, true)
    }

    fn with_pages(len: usize, huge: bool) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self { ptr: ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        Ok(Self { ptr: map_anonymous(len, huge)?, len })
    }

    /// Start of the mapping (for page copies through the capture protocol).
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
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

/// Whether a page is all zero. Non-zero pages almost always differ in their
/// first bytes, so this usually costs one cache line.
pub(crate) fn page_is_zero(page: &[u8]) -> bool {
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
pub(crate) unsafe fn copy_page(src: *const u8, dst: *mut u8, p: usize, ps: usize) -> bool {
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
pub(crate) const RUN_PAGES: usize = 256;

/// Full copy of `[src, src+len)` into `dst` (same length), skipping zero
/// pages; returns the bitmap of non-zero pages. Used for blocking captures.
/// Runs of non-zero pages are copied with one `memcpy` each.
///
/// # Safety
/// `src` must be `len` readable bytes nobody writes during the call.
pub(crate) unsafe fn copy_all(src: *const u8, len: usize, dst: &mut Mapping) -> Vec<u64> {
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

/// Whether bit `p` of a page bitmap is set.
pub(crate) fn bit(bits: &[u64], p: usize) -> bool {
    bits[p / 64] & (1 << (p % 64)) != 0
}

pub(crate) fn protect(base: usize, len: usize) -> io::Result<()> {
    mprotect(base, len, libc::PROT_READ)
}

pub(crate) fn unprotect(base: usize, len: usize) -> io::Result<()> {
    mprotect(base, len, libc::PROT_READ | libc::PROT_WRITE)
}

/// Makes `[base, base + len)` writable; false if the kernel refused.
/// Async-signal-safe (one system call, no `io::Error`): what the `SIGSEGV`
/// handler uses.
pub(crate) fn unprotect_raw(base: usize, len: usize) -> bool {
    // SAFETY: as in `mprotect`.
    len == 0 || unsafe { libc::mprotect(base as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE) } == 0
}

fn mprotect(base: usize, len: usize, prot: i32) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: callers pass ranges inside mappings they own or that a
    // tracker was armed on (see `Tracker::arm`'s contract); changing
    // protection moves no data.
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
pub(crate) fn protect_runs(base: usize, bits: &[u64], pages: usize, ps: usize) -> io::Result<()> {
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


#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer filled at once from 32 MiB on starts at a 2 MiB boundary
    /// (so all of it can be huge pages), reads as zeros and takes writes
    /// at both ends; a smaller one is an ordinary mapping. Both unmap
    /// cleanly (the trimmed head and tail are not theirs).
    #[test]
    fn buffers_filled_at_once_are_aligned_for_huge_pages_from_32_mib() {
        for len in [HUGE_FROM, HUGE_FROM + 5 * page_size(), 64 << 20] {
            let mut m = Mapping::new_filled_at_once(len).unwrap();
            assert_eq!(m.as_mut_ptr() as usize % HUGE, 0, "{len} bytes: not 2 MiB aligned");
            assert_eq!(m.len(), len);
            let s = m.as_mut_slice();
            assert!(s[0] == 0 && s[len - 1] == 0);
            s[0] = 1;
            s[len - 1] = 2;
            assert_eq!((m.as_slice()[0], m.as_slice()[len - 1]), (1, 2));
        }
        let small = Mapping::new_filled_at_once(HUGE_FROM - page_size()).unwrap();
        assert_eq!(small.len(), HUGE_FROM - page_size());
        let plain = Mapping::new(64 << 20).unwrap();
        assert!(plain.as_slice().iter().step_by(1 << 20).all(|b| *b == 0));
    }
}
