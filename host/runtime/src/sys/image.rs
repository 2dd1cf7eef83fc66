//! Writing a snapshot's pages back into a linear memory: eagerly (copy or
//! read) or lazily (map the snapshot file's pages copy-on-write over the
//! memory, so each page is read from the page cache on its first touch and
//! becomes private on its first write).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use super::pages::page_size;

// ---------------------------------------------------------------------------
// The node-wide budget of file mappings.
//
// Each run mapped from a snapshot file is a kernel mapping of its own (two,
// counting the split of the anonymous memory around it), and the kernel
// caps a process's mappings (`vm.max_map_count`, 65,530 by default): past
// it every `mmap`, `mprotect` and thread stack fails, for every reactor.
// So the runs mapped by all lazy restores of the process share one budget;
// a restore past it reads its runs instead (eager for those runs).

/// Runs mapped from snapshot files by live memories, process-wide.
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// The budget; 0 until first needed (then [`default_budget`]).
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// Runs mapped into each live memory, by the memory's base address.
fn by_memory() -> MutexGuard<'static, HashMap<usize, usize>> {
    static M: LazyLock<Mutex<HashMap<usize, usize>>> = LazyLock::new(Mutex::default);
    // The map is consistent before anything that can panic under the lock.
    M.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A quarter of `vm.max_map_count` (each mapped run costs up to two
/// mappings; the rest is left to memories, stacks, libraries and captures).
fn default_budget() -> usize {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    (limit / 4).max(1)
}

/// The number of runs lazy restores may keep mapped at once, process-wide.
pub(crate) fn map_budget() -> usize {
    match BUDGET.load(Ordering::Acquire) {
        0 => {
            let b = default_budget();
            match BUDGET.compare_exchange(0, b, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => b,
                Err(set) => set,
            }
        }
        b => b,
    }
}

/// Sets the budget (at least 1); returns the previous one. Mappings
/// already made stay.
pub(crate) fn set_map_budget(runs: usize) -> usize {
    let previous = map_budget();
    BUDGET.store(runs.max(1), Ordering::Release);
    previous
}

/// Runs mapped from snapshot files by live memories, process-wide.
pub(crate) fn mapped_runs() -> usize {
    MAPPED.load(Ordering::Acquire)
}

/// Takes one run of the budget for the memory at `memory`; false when the
/// budget is spent.
fn reserve_mapping(memory: usize) -> bool {
    let budget = map_budget();
    let taken = MAPPED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < budget).then_some(n + 1));
    if taken.is_err() {
        return false;
    }
    *by_memory().entry(memory).or_default() += 1;
    true
}

/// Gives back one run reserved for `memory` whose mapping failed.
fn unreserve_mapping(memory: usize) {
    let mut m = by_memory();
    if let Some(n) = m.get_mut(&memory) {
        *n -= 1;
        if *n == 0 {
            m.remove(&memory);
        }
        MAPPED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Called by a memory before it moves or is unmapped: the runs mapped
/// into it go back to the budget.
pub(crate) fn forget_mappings(memory: usize) {
    if let Some(n) = by_memory().remove(&memory) {
        MAPPED.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A linear memory being restored: `[base, base + len)`, page aligned, owned
/// by a reactor store that is not running.
#[derive(Debug)]
pub(crate) struct Target {
    base: *mut u8,
    len: usize,
}

impl Target {
    /// # Safety
    /// `[base, base + len)` must be a read-write mapping owned by a linear
    /// memory (`sys::memory`) that nothing reads or writes while this value
    /// is used, and `base` and `len` must be page aligned.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Self {
        assert!((base as usize).is_multiple_of(page_size()) && len.is_multiple_of(page_size()), "unaligned restore target");
        Self { base, len }
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len && offset.is_multiple_of(page_size()) => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "page range outside the memory")),
        }
    }

    /// Replaces `[offset, offset + len)` with fresh zero pages (dropping
    /// whatever was there, including pages mapped from a file).
    pub(crate) fn zero(&mut self, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range lies inside the target memory (checked), which
        // the constructor's contract says we may replace; MAP_FIXED swaps the
        // pages in place without moving the rest of the memory.
        let p = unsafe {
            libc::mmap(
                self.base.add(offset).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The bytes at `[offset, offset + len)`, as the reactor will see them
    /// (for pages mapped from a file: read through the mapping, so checking
    /// them checks what the reactor reads).
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> io::Result<&[u8]> {
        self.check(offset, len.next_multiple_of(page_size()))?;
        // SAFETY: inside the target (checked), which nothing else writes
        // (contract); the borrow of `self` keeps `write`/`zero`/`map_from`
        // from changing it while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(self.base.add(offset), len) })
    }

    /// Maps `len` bytes of `file` at `file_offset` over `offset` as
    /// [`Target::map_from`] does if the node-wide mapping budget has room
    /// (returns true), else reads them (returns false).
    pub(crate) fn map_or_read(&mut self, file: &File, file_offset: u64, offset: usize, len: usize) -> io::Result<bool> {
        let memory = self.base as usize;
        if !reserve_mapping(memory) {
            self.read_from(file, file_offset, offset, len)?;
            return Ok(false);
        }
        match self.map_from(file, file_offset, offset, len) {
            Ok(()) => Ok(true),
            Err(e) => {
                unreserve_mapping(memory);
                Err(e)
            }
        }
    }

    /// The bytes at `[offset, offset + len)` to write into (`offset` page
    /// aligned).
    pub(crate) fn bytes_mut(&mut self, offset: usize, len: usize) -> io::Result<&mut [u8]> {
        self.check(offset, len.next_multiple_of(page_size()))?;
        // SAFETY: inside the target (checked), exclusively ours (contract);
        // the mutable borrow of `self` keeps every other access out while
        // the slice lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) })
    }

    /// Copies `bytes` to `offset`.
    pub(crate) fn write(&mut self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        self.check(offset, bytes.len().next_multiple_of(page_size()))?;
        // SAFETY: inside the target (checked), exclusively ours (contract).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len()) };
        Ok(())
    }

    /// Reads `len` bytes of `file` at `file_offset` into `offset`.
    pub(crate) fn read_from(&mut self, file: &File, file_offset: u64, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: inside the target (checked), exclusively ours (contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) };
        file.read_exact_at(dst, file_offset)
    }

    /// Maps `len` bytes of `file` at `file_offset` (page aligned) over
    /// `offset`, private copy-on-write: no data is read now.
    pub(crate) fn map_from(&mut self, file: &File, file_offset: u64, offset: usize, len: usize) -> io::Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if !file_offset.is_multiple_of(page_size() as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "file offset not page aligned"));
        }
        let file_len = file.metadata()?.len();
        if file_offset.checked_add(len as u64).is_none_or(|e| e > file_len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "page range past the end of the file"));
        }
        let off = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
        // SAFETY: the range lies inside the target memory (checked) which we
        // may replace (contract); the file range exists (checked above), and
        // the mapping is private, so writes never reach the file.
        let p = unsafe {
            libc::mmap(
                self.base.add(offset).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
