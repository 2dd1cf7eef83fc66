//! Reactor linear memories, owned by the host rather than by wasmtime.
//!
//! Each memory is one private anonymous mapping, readable and writable over
//! its whole *capacity*, created with `MAP_NORESERVE`, so:
//!
//! - it is **one** kernel mapping (VMA), and neighbouring memories with the
//!   same flags merge with it: tens of thousands of reactors stay far below
//!   `vm.max_map_count` (wasmtime's default layout spends three mappings and
//!   ~8 GiB of address space per memory);
//! - growth inside the capacity is free, and growth past it is an
//!   `mremap(MREMAP_MAYMOVE)` to twice the size — the kernel moves page-table
//!   entries, it copies no data — so a reactor growing to gigabytes costs
//!   O(log n) remaps, not O(n) copies;
//! - untouched pages cost nothing: resident memory is what the guest touched;
//! - it stays on 4 KiB pages (only a blocking capture's buffer of 32 MiB
//!   or more gets transparent huge pages, see `pages::map_anonymous`):
//!   measured with huge pages here, copy-on-write captures made messages
//!   during a copy about 2.5 times slower, and a small reactor would hold
//!   2 MiB.
//!
//! The price is that generated code bounds-checks every access against the
//! current length (the engine is configured with a zero reservation and no
//! guard region). Bytes between the length and the capacity are mapped but
//! unreachable from Wasm, and stay zero because Wasm memories never shrink.
//!
//! Snapshots operate on these mappings: page protection and dirty tracking
//! (`protect`), and lazy restore, which maps snapshot file pages over part of
//! a memory (after which growth past the capacity copies instead of
//! `mremap`, since the memory is then several kernel mappings).

use super::pages::{page_round, page_size};
use std::ptr::NonNull;
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Creates [`MmapMemory`]s for wasmtime.
#[derive(Debug, Default)]
pub(crate) struct MmapMemoryCreator;

// SAFETY: every memory returned is a fresh zero-filled mapping of at least
// `minimum` bytes that this object alone owns until it is dropped; growth
// either stays inside the mapping or moves it with `mremap`, which wasmtime
// allows because the engine sets `memory_may_move(true)` and reloads the base
// pointer after any call that may grow memory.
unsafe impl MemoryCreator for MmapMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if guard_size_in_bytes != 0 {
            return Err("host memories need an engine configured without guard regions".into());
        }
        let capacity = page_round(minimum.max(reserved_size_in_bytes.unwrap_or(0)).max(page_size()))
            .ok_or("memory size overflows")?;
        let mem = MmapMemory::new(capacity, minimum, maximum.unwrap_or(usize::MAX))
            .map_err(|e| format!("cannot map {capacity} bytes for a linear memory: {e}"))?;
        Ok(Box::new(mem))
    }
}

/// One linear memory: a private anonymous mapping of `capacity` bytes of
/// which the first `size` are the Wasm-visible memory.
#[derive(Debug)]
pub(crate) struct MmapMemory {
    /// Invariant: start of a live mapping of exactly `capacity` bytes, owned
    /// by this value.
    base: NonNull<u8>,
    /// Invariant: a multiple of the page size, `>= size`.
    capacity: usize,
    /// Wasm-visible length in bytes.
    size: usize,
    /// Largest size growth may reach (the memory type's maximum).
    maximum: usize,
}

// SAFETY: the mapping is plain memory owned by this value; wasmtime
// serialises access to it through the owning `Store`.
unsafe impl Send for MmapMemory {}
// SAFETY: as above; `&MmapMemory` only reads the fields.
unsafe impl Sync for MmapMemory {}

impl MmapMemory {
    fn new(capacity: usize, size: usize, maximum: usize) -> std::io::Result<Self> {
        // 4 KiB pages (see the module doc).
        let base = NonNull::new(super::pages::map_anonymous(capacity, false)?).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { base, capacity, size, maximum })
    }

    /// Grows the capacity by mapping a new region and copying the memory.
    fn move_by_copy(&mut self, new_cap: usize) -> std::io::Result<()> {
        let fresh = Self::new(new_cap, self.size, self.maximum)?;
        // SAFETY: both are live mappings owned by values here, at least
        // `size` bytes each, and distinct.
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr(), fresh.base.as_ptr(), self.size) };
        let old = std::mem::replace(self, fresh);
        drop(old);
        Ok(())
    }
}

impl Drop for MmapMemory {
    fn drop(&mut self) {
        super::protect::before_move(self.base.as_ptr() as usize);
        super::protect::lazy::forget(self.base.as_ptr() as usize, self.capacity);
        super::image::forget_mappings(self.base.as_ptr() as usize);
        // SAFETY: `base`/`capacity` describe a mapping this value owns (field
        // invariant) and nothing refers to it once wasmtime drops the memory.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.capacity) };
    }
}

// SAFETY: `as_ptr` points at `byte_capacity` mapped, readable and writable
// bytes whose first `byte_size` are the memory; growth keeps the contents.
unsafe impl LinearMemory for MmapMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.maximum {
            wasmtime::bail!("memory cannot grow past its maximum of {} bytes", self.maximum);
        }
        if new_size > self.capacity {
            let want = new_size.max(self.capacity.saturating_mul(2)).min(self.maximum.max(new_size));
            let new_cap = page_round(want).ok_or_else(|| wasmtime::format_err!("memory size overflows"))?;
            // A capture in progress must finish before the pages move, and
            // pages restored lazily be checked while their addresses hold.
            super::protect::before_move(self.base.as_ptr() as usize);
            super::protect::lazy::before_move(self.base.as_ptr() as usize, self.capacity);
            // SAFETY: remaps exactly the mapping this value owns; with
            // MREMAP_MAYMOVE the kernel keeps the contents and may return a
            // new address, which replaces `base` below.
            let p = unsafe {
                libc::mremap(self.base.as_ptr().cast(), self.capacity, new_cap, libc::MREMAP_MAYMOVE)
            };
            if p == libc::MAP_FAILED {
                // mremap moves one kernel mapping only; a memory restored
                // lazily from a file is several. Copy it instead.
                self.move_by_copy(new_cap)?;
            } else {
                // One kernel mapping moved: none of it came from a file.
                super::image::forget_mappings(self.base.as_ptr() as usize);
                self.base = NonNull::new(p.cast::<u8>()).expect("mremap returned null");
                self.capacity = new_cap;
            }
        }
        self.size = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_place_then_moves_keeping_contents() {
        let mut m = MmapMemory::new(65536, 65536, 1 << 30).unwrap();
        // SAFETY: within the mapping.
        unsafe { m.as_ptr().add(100).write(7) };
        m.grow_to(65536).unwrap();
        m.grow_to(10 << 20).unwrap();
        assert!(m.byte_capacity() >= 10 << 20);
        // SAFETY: within the (possibly moved) mapping.
        unsafe {
            assert_eq!(m.as_ptr().add(100).read(), 7);
            assert_eq!(m.as_ptr().add((10 << 20) - 1).read(), 0);
        }
        assert!(m.grow_to(2 << 30).is_err(), "maximum must hold");
        assert_eq!(m.byte_size(), 10 << 20);
    }
}
