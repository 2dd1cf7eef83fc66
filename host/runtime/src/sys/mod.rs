//! Platform code: the only module that maps memory or calls the kernel's
//! memory-management system calls. Everything else in the host is safe Rust.
//!
//! What lives here, each module using only those above it:
//! - `pages`: the page size, anonymous mappings, page copies that skip zero
//!   pages, `mprotect`;
//! - `protect`: page protection, the `SIGSEGV` handler, dirty-page tracking
//!   and concurrent copy-on-write capture for snapshots;
//! - `image`: writing snapshot pages back into a memory, eagerly or by
//!   mapping the snapshot file copy-on-write;
//! - `memory`: `MmapMemoryCreator`, the linear-memory allocator wasmtime
//!   uses for every reactor (a memory that moves or is freed first tells
//!   `protect`).

pub(crate) mod image;
mod memory;
mod pages;
pub(crate) mod protect;

pub(crate) use memory::MmapMemoryCreator;
pub(crate) use pages::page_size;

/// Resident memory of this process in bytes (from `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size() as u64)
}

/// Number of memory mappings of this process (from `/proc/self/maps`), and
/// the kernel's limit on it (`vm.max_map_count`).
pub fn mappings() -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?.trim().parse().ok()?;
    Some((maps.lines().count(), limit))
}
