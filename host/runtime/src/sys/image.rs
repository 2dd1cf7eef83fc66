//! Writing a snapshot's pages back into a linear memory: eagerly (copy or
//! read) or lazily (map the snapshot file's pages copy-on-write over the
//! memory, so each page is read from the page cache on its first touch and
//! becomes private on its first write).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::pages::page_size;

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
