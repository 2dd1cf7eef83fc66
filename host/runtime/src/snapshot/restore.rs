//! Restoring from a chain of snapshots (a full one, then deltas, each on
//! the one before): planning which layers make up each reactor, checking
//! everything that can be checked before touching anything, and filling a
//! fresh instance from its layers.

use super::capture::{Checkpoint, Part, envelope};
use super::error::SnapshotError;
use crate::budget::Account;
use crate::engine::Engine;
use crate::reactor::{Limits, Reactor};
use crate::refs::{Blob, Refs};
use crate::store::HostContext;
use crate::sys::image::Target;
use crate::sys::protect::lazy::Expected;
use crate::sys::page_size;
use reactor_types::{Address, Envelope, ModuleHash};
use snapshot_format::{FormatError, Kind, PAGE_SIZE, ReactorEntry, SnapshotFile, SnapshotId};
use std::sync::Arc;

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
///
/// Files of format version 2 have a checksum per page: every page a
/// reactor restores from is checked, eager or lazy, whatever `verify`
/// says. Eagerly restored pages are checked as they land: a damaged page
/// fails only the reactor that restores from it
/// ([`SnapshotError::DamagedPage`]), the others are restored. Pages mapped
/// lazily are checked on first touch, a chunk at a time
/// (`sys::protect::lazy`): a damaged one fails its reactor at that touch,
/// before it can act on what it read (its failure names the page, as
/// `DamagedPage` does), and any capture of a reactor checks its untouched
/// pages first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Eager or lazy.
    pub load: Load,
    /// Check the whole data section's checksum before restoring from a
    /// file (reads it once more). Needed only for format version 1 files,
    /// which have no page checksums: without it such a file is restored
    /// eagerly as it is (a damaged page can only corrupt the restored
    /// reactor, which is sandboxed like any other, never the host); a
    /// version 1 file restored lazily is always verified whole first.
    pub verify: bool,
    /// The files were taken on another node (a reactor moving here): the
    /// correlation counter they carry is that node's, so it is neither
    /// checked against this node's tags nor observed by them (the
    /// correlation ids of its outstanding requests name their node and are
    /// checked as always).
    pub foreign: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self { load: Load::Eager, verify: true, foreign: false }
    }
}

impl RestoreOptions {
    /// Lazy, without reading the data first (the fast path).
    pub fn lazy() -> Self {
        Self { load: Load::Lazy, verify: false, foreign: false }
    }
}

/// Runs shorter than this (256 KiB) are read and checked now, not mapped:
/// a mapped run costs two kernel mappings, a guard registration and a
/// fault per chunk touched, more than reading and hashing a few pages
/// (restoring 10,000 small reactors lazily took 1.16 s with a 4-page
/// threshold).
const MIN_MAPPED_PAGES: u64 = 64;
/// Most runs one reactor maps; the rest are read. All reactors together
/// map at most the node-wide budget ([`lazy_map_budget`]).
const MAX_MAPPED_RUNS: usize = 4096;

/// How many runs lazy restores may keep mapped from snapshot files at once,
/// process-wide (by default a quarter of `vm.max_map_count`): past it,
/// lazy restores read their runs instead, as eager restores do.
pub fn lazy_map_budget() -> usize {
    crate::sys::image::map_budget()
}

/// Sets [`lazy_map_budget`] (at least 1); returns the previous budget.
/// Runs mapped already stay mapped.
pub fn set_lazy_map_budget(runs: usize) -> usize {
    crate::sys::image::set_map_budget(runs)
}

/// Runs currently mapped from snapshot files by live reactors,
/// process-wide (never more than [`lazy_map_budget`] when it was not
/// lowered meanwhile).
pub fn lazy_mapped_runs() -> usize {
    crate::sys::image::mapped_runs()
}

/// One reactor's entry in one checkpoint of a chain, oldest first.
#[derive(Debug)]
enum Layer<'a> {
    File(&'a SnapshotFile, &'a ReactorEntry),
    Memory(&'a Part),
}

impl Layer<'_> {
    fn entry(&self) -> &ReactorEntry {
        match self {
            Layer::File(_, e) => e,
            Layer::Memory(p) => &p.entry,
        }
    }
}

/// Checks the pages of `run` now in `target` against the file's page
/// checksums (if it has them).
fn check_run(
    target: &Target,
    file: &SnapshotFile,
    address: Address,
    run: &snapshot_format::Run,
    data: u64,
) -> Result<(), SnapshotError> {
    if !file.has_page_hashes() {
        return Ok(());
    }
    let ps = page_size();
    let (off, n) = (run.first_page as usize * ps, run.pages as usize * ps);
    let bytes = target.bytes(off, n).map_err(|e| SnapshotError::Os { address, reason: e.to_string() })?;
    file.check_pages(data, bytes).map_err(|source| {
        let memory_page = match source {
            FormatError::PageCorrupt { page, .. } => run.first_page + (page - data / ps as u64),
            _ => run.first_page,
        };
        SnapshotError::DamagedPage { address, memory_page, source }
    })
}

/// A run mapped from a file, checked on first touch.
struct Deferred<'a> {
    file: &'a SnapshotFile,
    run: &'a snapshot_format::Run,
    data: u64,
    /// Its pages a later layer writes (checked by that layer).
    skip: Vec<u64>,
}

impl<'a> Deferred<'a> {
    fn new(file: &'a SnapshotFile, run: &'a snapshot_format::Run, data: u64) -> Self {
        Self { file, run, data, skip: vec![0; (run.pages as usize).div_ceil(64)] }
    }

    /// A later layer writes memory pages `first..first + pages`.
    fn overwritten(&mut self, first: u64, pages: u64) {
        let (lo, hi) = (first.max(self.run.first_page), (first + pages).min(self.run.first_page + self.run.pages));
        for p in lo..hi {
            let i = (p - self.run.first_page) as usize;
            self.skip[i / 64] |= 1 << (i % 64);
        }
    }

    /// Makes its pages checked on first touch, or checks them now when
    /// that cannot be arranged.
    fn guard<H: HostContext>(self, reactor: &mut Reactor<H>, target: &Target, address: Address) -> Result<(), SnapshotError> {
        let ps = page_size();
        let pages = self.run.pages as usize;
        let expected = self.file.page_hashes(self.data, self.run.pages).ok_or_else(|| SnapshotError::Mismatch {
            address,
            reason: "a mapped run has no page checksums".into(),
        })?;
        let (base, _) = reactor.memory_extent();
        // SAFETY: the run lies inside the reactor's memory (`fill` checked
        // it when mapping it), a live host mapping that only the reactor's
        // thread touches; the memory unregisters its runs before it moves
        // or is unmapped (`sys::memory`).
        let guarded = unsafe {
            reactor.lazy_pages().guard(
                base,
                base + self.run.first_page as usize * ps,
                pages,
                Expected {
                    first_data_page: self.data / PAGE_SIZE as u64,
                    hashes: expected.to_vec(),
                    skip: self.skip,
                    hash: snapshot_format::page_hash,
                },
            )
        }
        .map_err(|e| SnapshotError::Os { address, reason: e.to_string() })?;
        if !guarded {
            check_run(target, self.file, address, self.run, self.data)?;
        }
        Ok(())
    }
}

/// Writes the layers' pages and the last layer's globals into `reactor`, a
/// fresh instance that has not run. Pages from files with page checksums
/// are checked as they land ([`SnapshotError::DamagedPage`]).
fn fill<H: HostContext>(reactor: &mut Reactor<H>, address: Address, layers: &[Layer<'_>], load: Load) -> Result<(), SnapshotError> {
    let last = layers.last().expect("at least one layer").entry();
    let size = usize::try_from(last.memory_size).map_err(|_| SnapshotError::MemoryCap {
        address,
        needed: last.memory_size,
        cap: reactor.memory_cap(),
    })?;
    if size > reactor.memory_cap() {
        return Err(SnapshotError::MemoryCap { address, needed: last.memory_size, cap: reactor.memory_cap() });
    }
    reactor
        .grow_memory_to(size)
        .map_err(|e| SnapshotError::Mismatch { address, reason: format!("cannot size the memory: {e}") })?;
    let (base, len) = reactor.memory_extent();
    if len != size {
        return Err(SnapshotError::Mismatch {
            address,
            reason: format!("the module's memory is {len} bytes at instantiation, more than the snapshot's {size}"),
        });
    }
    let os = |e: std::io::Error| SnapshotError::Os { address, reason: e.to_string() };
    // SAFETY: the reactor's memory is a live host mapping of `len` bytes at
    // `base`, page aligned (wasm sizes are 64 KiB multiples), and we hold the
    // fresh reactor mutably: nothing runs in it or writes it meanwhile.
    let mut target = unsafe { Target::new(base as *mut u8, len) };
    // Drop what instantiation wrote (data segments): a full layer says
    // every page, zero included.
    target.zero(0, len).map_err(os)?;
    let ps = page_size();
    let mut mapped = 0usize;
    // Runs mapped from files, to be checked on first touch once every
    // layer is in place.
    let mut deferred: Vec<Deferred<'_>> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        match layer {
            Layer::File(file, entry) => {
                for run in &entry.runs {
                    let off = run.first_page as usize * ps;
                    let n = run.pages as usize * ps;
                    // Pages this layer writes are checked by it, not by an
                    // earlier run mapped under them.
                    for d in &mut deferred {
                        d.overwritten(run.first_page, run.pages);
                    }
                    match run.data {
                        None => target.zero(off, n).map_err(os)?,
                        Some(d) if !file.mappable() => {
                            // Compressed: decompressed straight into the memory.
                            file.read_data(d, target.bytes_mut(off, n).map_err(os)?).map_err(|source| match source {
                                FormatError::FrameCorrupt { data_offset, .. } => SnapshotError::DamagedPage {
                                    address,
                                    memory_page: run.first_page + data_offset.saturating_sub(d) / ps as u64,
                                    source,
                                },
                                other => other.into(),
                            })?;
                            check_run(&target, file, address, run, d)?;
                        }
                        Some(d) => {
                            let at = file.file_offset(d);
                            let lazy = load == Load::Lazy && run.pages >= MIN_MAPPED_PAGES && mapped < MAX_MAPPED_RUNS;
                            if lazy && target.map_or_read(file.file(), at, off, n).map_err(os)? {
                                mapped += 1;
                                if file.has_page_hashes() && ps == PAGE_SIZE {
                                    deferred.push(Deferred::new(file, run, d));
                                    continue;
                                }
                            } else if !lazy {
                                target.read_from(file.file(), at, off, n).map_err(os)?;
                            }
                            check_run(&target, file, address, run, d)?;
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
    for d in deferred {
        d.guard(reactor, &target, address)?;
    }
    reactor.write_globals(&last.globals).map_err(|e| SnapshotError::Mismatch { address, reason: e.to_string() })?;
    Ok(())
}

/// Where a restore finds the shared blobs its reactors hold.
type BlobSource<'a> = dyn Fn(u64, &Refs) -> Result<Arc<Blob>, SnapshotError> + 'a;

/// A checked chain and, for each reactor of its last snapshot, the layers
/// that make it up: what a shard restores.
pub(crate) struct Plan<'a> {
    reactors: Vec<(Address, Vec<Layer<'a>>)>,
    load: Load,
    /// See [`RestoreOptions::foreign`].
    foreign: bool,
    blobs: Box<BlobSource<'a>>,
}

/// One reactor rebuilt from its layers, ready for its shard to adopt.
#[derive(Debug)]
pub(crate) struct Restored<H: HostContext> {
    /// Its address.
    pub(crate) address: Address,
    /// The instance, filled, holding its blobs; it has not run.
    pub(crate) reactor: Reactor<H>,
    /// Its queued messages, oldest first (accepted once: never refuse them).
    pub(crate) inbox: Vec<Envelope>,
    /// Set when its pages are damaged: the shard records it as failed
    /// with this cause instead of running it (the instance is not filled).
    pub(crate) damaged: Option<SnapshotError>,
    /// Its requests waiting for replies: (correlation id, the reactor
    /// asked).
    pub(crate) outstanding: Vec<(u64, Address)>,
}

impl<'a> Plan<'a> {
    /// The plan of a chain of in-memory checkpoints (restored eagerly).
    pub(crate) fn from_checkpoints(chain: &'a [&'a Checkpoint]) -> Result<Self, SnapshotError> {
        let links: Vec<(SnapshotId, Kind)> = chain.iter().map(|c| (c.id, c.kind)).collect();
        check_chain(&links)?;
        let last = chain.last().expect("checked non-empty");
        let by_address: Vec<std::collections::HashMap<u64, &Part>> =
            chain.iter().map(|c| c.parts.iter().map(|p| (p.entry.address, p)).collect()).collect();
        let reactors = layers_of(last.parts.iter().map(|p| p.entry.address), chain.len(), |i, a| {
            by_address[i].get(&a).map(|p| Layer::Memory(p))
        })?;
        let blobs = move |tag: u64, refs: &Refs| -> Result<Arc<Blob>, SnapshotError> {
            let b = chain
                .iter()
                .rev()
                .find_map(|c| c.blobs.get(&tag).cloned())
                .ok_or_else(|| SnapshotError::Chain(format!("blob {tag:#x} is held but not stored")))?;
            Ok(refs.relink_blob(tag, || b.bytes().to_vec()))
        };
        Ok(Self { reactors, load: Load::Eager, foreign: false, blobs: Box::new(blobs) })
    }

    /// The plan of a chain of snapshot files, for the reactors `wanted`
    /// accepts. Verifies the files' page data first if `options` ask.
    pub(crate) fn from_files(
        chain: &'a [SnapshotFile],
        options: RestoreOptions,
        wanted: &dyn Fn(Address) -> bool,
    ) -> Result<Self, SnapshotError> {
        let links: Vec<(SnapshotId, Kind)> = chain.iter().map(|f| (f.header().id, f.header().kind)).collect();
        check_chain(&links)?;
        for f in chain {
            if options.verify {
                f.verify_data(&mut |_, _| {})?;
            } else if options.load == Load::Lazy && !f.has_page_hashes() {
                // Format version 1: no page checksums to check on the lazy
                // path, so the whole data section is checked first.
                tracing::warn!(
                    file = %f.path().display(),
                    "snapshot of format version 1 has no page checksums: verifying its whole data section \
                     before restoring lazily"
                );
                f.verify_data(&mut |_, _| {})?;
            }
        }
        let last = chain.last().expect("checked non-empty");
        let wanted_here = last.meta().reactors.iter().map(|e| e.address).filter(|&a| wanted(Address(a)));
        // Each file's entries by address: one lookup per reactor and layer
        // (a linear search made restoring n reactors O(n²)).
        let by_address: Vec<std::collections::HashMap<u64, &ReactorEntry>> =
            chain.iter().map(|f| f.meta().reactors.iter().map(|e| (e.address, e)).collect()).collect();
        let reactors = layers_of(wanted_here, chain.len(), |i, a| by_address[i].get(&a).map(|e| Layer::File(&chain[i], e)))?;
        let blobs = move |tag: u64, refs: &Refs| -> Result<Arc<Blob>, SnapshotError> {
            if let Some(b) = refs.blob(tag) {
                return Ok(b);
            }
            let (file, entry) = chain
                .iter()
                .rev()
                .find_map(|f| f.meta().blobs.iter().find(|b| b.tag == tag).map(|b| (f, b)))
                .ok_or_else(|| SnapshotError::Chain(format!("blob {tag:#x} is held but not stored")))?;
            let bytes = file.read_blob(entry)?;
            Ok(refs.relink_blob(tag, || bytes))
        };
        Ok(Self { reactors, load: options.load, foreign: options.foreign, blobs: Box::new(blobs) })
    }

    /// The reactors it restores, in order.
    pub(crate) fn addresses(&self) -> impl Iterator<Item = Address> + '_ {
        self.reactors.iter().map(|(a, _)| *a)
    }

    /// Checks what can be checked before anything is restored: every
    /// module loaded and snapshottable, no address `in_use`, no tag or
    /// counter beyond what the node could have issued (`refs`).
    pub(crate) fn check<H: HostContext>(
        &self,
        engine: &Engine<H>,
        refs: &Refs,
        in_use: impl Fn(Address) -> bool,
    ) -> Result<(), SnapshotError> {
        for (address, layers) in &self.reactors {
            let entry = layers.last().expect("a reactor has a layer").entry();
            check_counters(*address, entry, refs, self.foreign)?;
            let module = engine.module(&ModuleHash(entry.module)).ok_or_else(|| SnapshotError::ModuleNotLoaded {
                address: *address,
                module: hex::encode(entry.module),
            })?;
            if let Some(reason) = module.snapshot_blocker() {
                return Err(SnapshotError::Unsupported { address: *address, reason: reason.to_owned() });
            }
            if in_use(*address) {
                return Err(SnapshotError::AddressInUse(*address));
            }
        }
        Ok(())
    }

    /// Rebuilds the `i`-th reactor: a fresh instance of its module (no
    /// init runs), its pages and globals, its blobs relinked through
    /// `refs`, its address and pending correlation ids observed so new tags
    /// never collide with them.
    pub(crate) fn rebuild<H: HostContext>(
        &self,
        i: usize,
        engine: &Engine<H>,
        limits: Limits,
        refs: &Refs,
    ) -> Result<Restored<H>, SnapshotError> {
        let (address, layers) = &self.reactors[i];
        let address = *address;
        let entry = layers.last().expect("a reactor has a layer").entry();
        let module = engine.module(&ModuleHash(entry.module)).ok_or_else(|| SnapshotError::ModuleNotLoaded {
            address,
            module: hex::encode(entry.module),
        })?;
        let account = Account::new(limits.budget_bytes());
        let (mut reactor, _) = Reactor::instantiate_bare(engine, &module, address, limits, account, refs.budget().clone())
            .map_err(|f| SnapshotError::Instantiate(address, f))?;
        refs.observe(address.0);
        if address.node() == refs.node() && !self.foreign {
            refs.tags().observe(entry.next_corr);
        }
        let damaged = match fill(&mut reactor, address, layers, self.load) {
            Ok(()) => None,
            Err(e @ SnapshotError::DamagedPage { .. }) => Some(e),
            Err(e) => return Err(e),
        };
        if damaged.is_none() {
            for &tag in &entry.blobs {
                reactor.hold_blob((self.blobs)(tag, refs)?);
            }
        }
        let inbox = if damaged.is_none() { entry.inbox.iter().map(envelope).collect() } else { Vec::new() };
        let outstanding = entry.outstanding.iter().map(|&(corr, to)| (corr, Address(to))).collect();
        Ok(Restored { address, reactor, inbox, damaged, outstanding })
    }
}

/// Refuses a reactor whose tags or counters this node could not have
/// issued (see [`TagSource::check_restorable`](crate::refs::TagSource::check_restorable)).
fn check_counters(address: Address, entry: &ReactorEntry, refs: &Refs, foreign: bool) -> Result<(), SnapshotError> {
    let refuse = |what, value| move |source| SnapshotError::Counter { address, what, value, source };
    refs.check_restorable(address.0).map_err(refuse("its address", address.0))?;
    if address.node() == refs.node() && !foreign {
        refs.tags().check_restorable(entry.next_corr).map_err(refuse("a correlation counter", entry.next_corr))?;
    }
    for &tag in &entry.blobs {
        refs.check_restorable(tag).map_err(refuse("a held blob tag", tag))?;
    }
    for &(corr, _) in &entry.outstanding {
        refs.check_restorable_corr(corr).map_err(refuse("an outstanding request", corr))?;
    }
    Ok(())
}

/// For each reactor of the chain's last checkpoint, its layers in chain
/// order (`find(i, address)`: its entry in checkpoint `i`). A reactor may
/// first appear late in the chain (spawned after the base), but once there
/// it must be in every later checkpoint.
fn layers_of<'a>(
    addresses: impl Iterator<Item = u64>,
    chain_len: usize,
    find: impl Fn(usize, u64) -> Option<Layer<'a>>,
) -> Result<Vec<(Address, Vec<Layer<'a>>)>, SnapshotError> {
    addresses
        .map(|a| {
            let address = Address(a);
            let mut layers = Vec::new();
            for i in 0..chain_len {
                match find(i, a) {
                    Some(l) => layers.push(l),
                    None if layers.is_empty() => {}
                    None => {
                        return Err(SnapshotError::Chain(format!(
                            "reactor {address} is missing from snapshot {i} of the chain but present after it"
                        )));
                    }
                }
            }
            Ok((address, layers))
        })
        .collect()
}

/// A chain must be one full snapshot followed by deltas, each on the one
/// before it.
fn check_chain(links: &[(SnapshotId, Kind)]) -> Result<(), SnapshotError> {
    if links.is_empty() {
        return Err(SnapshotError::Chain("no snapshot given".into()));
    }
    match chain_break(links) {
        None => Ok(()),
        Some((_, ChainBreak::DeltaFirst { base })) => Err(SnapshotError::Chain(format!(
            "the first snapshot is a delta on {base}: give its full base snapshot first"
        ))),
        Some((_, ChainBreak::FullAfter)) => Err(FormatError::NotADelta.into()),
        Some((_, ChainBreak::OtherBase { expected, found })) => Err(FormatError::DeltaBase { expected, found }.into()),
    }
}

/// How a chain of snapshots (their ids and kinds, in order) breaks the
/// rule of one full snapshot followed by deltas each on the one before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The first is a delta on `base`.
    DeltaFirst {
        /// The base it names.
        base: SnapshotId,
    },
    /// A full snapshot after the first.
    FullAfter,
    /// A delta on `expected`, after snapshot `found`.
    OtherBase {
        /// The base it names.
        expected: SnapshotId,
        /// The snapshot before it.
        found: SnapshotId,
    },
}

/// The chain that ends at snapshot `id`, as positions in `links` (full
/// first, then each delta on the one before), if every link of it is
/// there; a cycle of deltas is no chain.
pub fn chain_ending_at(links: &[(SnapshotId, Kind)], id: SnapshotId) -> Option<Vec<usize>> {
    let find = |id: SnapshotId| links.iter().position(|(i, _)| *i == id);
    let mut chain = vec![find(id)?];
    while let (_, Kind::Delta { base }) = links[*chain.last().expect("not empty")] {
        if chain.len() > links.len() {
            return None;
        }
        chain.push(find(base)?);
    }
    chain.reverse();
    Some(chain)
}

/// Where a chain breaks the rule (the position of the offending snapshot),
/// if it does: for reports that name files.
pub fn chain_break(links: &[(SnapshotId, Kind)]) -> Option<(usize, ChainBreak)> {
    let mut prev: Option<SnapshotId> = None;
    for (i, &(id, kind)) in links.iter().enumerate() {
        match (kind, prev) {
            (Kind::Delta { base }, None) => return Some((i, ChainBreak::DeltaFirst { base })),
            (Kind::Full, Some(_)) => return Some((i, ChainBreak::FullAfter)),
            (Kind::Delta { base }, Some(found)) if base != found => {
                return Some((i, ChainBreak::OtherBase { expected: base, found }));
            }
            _ => {}
        }
        prev = Some(id);
    }
    None
}
