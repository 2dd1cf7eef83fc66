//! Filling a fresh instance from a chain of snapshots.

use super::format::{ReactorEntry, SnapshotFile};
use super::{Error, Part};
use crate::reactor::{Address, Reactor};
use crate::sys::image::Target;
use crate::sys::page_size;

/// How pages reach the restored memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Copied (or read from the file) now.
    Eager,
    /// File pages mapped copy-on-write: read on first touch, private on
    /// first write. From an in-memory checkpoint this is the same as
    /// `Eager`.
    Lazy,
}

/// Restore settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Eager or lazy.
    pub load: Load,
    /// Check the page data's checksum before restoring from a file (reads
    /// the whole data section once). Without it, a damaged page is restored
    /// as it is: it can only corrupt the restored reactor, which is
    /// sandboxed like any other, never the host.
    pub verify: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self { load: Load::Eager, verify: true }
    }
}

impl RestoreOptions {
    /// Lazy, without reading the data first (the fast path).
    pub fn lazy() -> Self {
        Self { load: Load::Lazy, verify: false }
    }
}

/// Runs shorter than this are read, not mapped (a mapping per tiny run
/// costs more than the copy and a kernel mapping each).
const MIN_MAPPED_PAGES: u64 = 4;
/// Most runs one restore maps; the rest are read.
const MAX_MAPPED_RUNS: usize = 4096;

/// One reactor's entry in one checkpoint of a chain, oldest first.
#[derive(Debug)]
pub(crate) enum Layer<'a> {
    File(&'a SnapshotFile, &'a ReactorEntry),
    Memory(&'a Part),
}

impl Layer<'_> {
    pub(crate) fn entry(&self) -> &ReactorEntry {
        match self {
            Layer::File(_, e) => e,
            Layer::Memory(p) => &p.entry,
        }
    }
}

/// Writes the layers' pages and the last layer's globals into `reactor`, a
/// fresh instance that has not run.
pub(crate) fn fill(reactor: &mut Reactor, address: Address, layers: &[Layer<'_>], load: Load) -> Result<(), Error> {
    let last = layers.last().expect("at least one layer").entry();
    let size = usize::try_from(last.memory_size).map_err(|_| Error::MemoryCap {
        address,
        needed: last.memory_size,
        cap: reactor.memory_cap(),
    })?;
    if size > reactor.memory_cap() {
        return Err(Error::MemoryCap { address, needed: last.memory_size, cap: reactor.memory_cap() });
    }
    reactor
        .grow_memory_to(size)
        .map_err(|reason| Error::Mismatch { address, reason: format!("cannot size the memory: {reason}") })?;
    let (base, len) = reactor.memory_extent();
    if len != size {
        return Err(Error::Mismatch {
            address,
            reason: format!("the module's memory is {len} bytes at instantiation, more than the snapshot's {size}"),
        });
    }
    let os = |e: std::io::Error| Error::Os { address, reason: e.to_string() };
    // SAFETY: the reactor's memory is a live host mapping of `len` bytes at
    // `base`, page aligned (wasm sizes are 64 KiB multiples), and we hold the
    // fresh reactor mutably: nothing runs in it or writes it meanwhile.
    let mut target = unsafe { Target::new(base as *mut u8, len) };
    // Drop what instantiation wrote (data segments): a full layer says
    // every page, zero included.
    target.zero(0, len).map_err(os)?;
    let ps = page_size();
    let mut mapped = 0usize;
    for (i, layer) in layers.iter().enumerate() {
        match layer {
            Layer::File(file, entry) => {
                for run in &entry.runs {
                    let off = run.first_page as usize * ps;
                    let n = run.pages as usize * ps;
                    match run.data {
                        None => target.zero(off, n).map_err(os)?,
                        Some(d) => {
                            let at = file.file_offset(d);
                            if load == Load::Lazy && run.pages >= MIN_MAPPED_PAGES && mapped < MAX_MAPPED_RUNS {
                                mapped += 1;
                                target.map_from(file.file(), at, off, n).map_err(os)?;
                            } else {
                                target.read_from(file.file(), at, off, n).map_err(os)?;
                            }
                        }
                    }
                }
            }
            Layer::Memory(part) => {
                let img = part.pages.image();
                // The first layer went onto zeroed memory: its zero pages
                // need nothing.
                let zero_needed = i > 0;
                for (start, p, nonzero) in img.runs(usize::MAX) {
                    if nonzero {
                        target.write(start * ps, &img.bytes[start * ps..p * ps]).map_err(os)?;
                    } else if zero_needed {
                        target.zero(start * ps, (p - start) * ps).map_err(os)?;
                    }
                }
            }
        }
    }
    reactor.write_globals(&last.globals).map_err(|reason| Error::Mismatch { address, reason })?;
    Ok(())
}
