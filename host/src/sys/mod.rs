//! Platform code: the only module that maps memory or calls the kernel's
//! memory-management system calls. Everything else in the host is safe Rust.
//!
//! What lives here now:
//! - [`MmapMemoryCreator`], the linear-memory allocator wasmtime uses for every
//!   reactor (see `memory`).

mod memory;

pub(crate) use memory::MmapMemoryCreator;
