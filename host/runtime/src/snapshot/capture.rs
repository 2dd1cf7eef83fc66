//! Taking a reactor's part of a checkpoint at a message boundary, the
//! in-memory [`Checkpoint`], and writing it to a file.

use super::error::SnapshotError;
use crate::reactor::Reactor;
use crate::refs::Blob;
use crate::store::HostContext;
use crate::sys::page_size;
use crate::sys::protect::{ArmError, Cover, PageCopy, Tracker};
use reactor_types::{Address, Envelope};
use snapshot_format::{BlobEntry, EnvelopeRecord, Kind, Meta, ReactorEntry, Run, SnapshotId, Writer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a snapshot is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Copy now; the reactor waits for the copy.
    Blocking,
    /// Copy-on-write: the reactor runs on while a background thread copies.
    Concurrent,
    /// Only the pages written since the reactor's previous tracked snapshot,
    /// as a delta on it; copy-on-write like `Concurrent`.
    Incremental,
}

/// Snapshot settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// How to copy.
    pub capture: Capture,
    /// Keep recording written pages afterwards, so the next snapshot can be
    /// `Incremental`. Costs one page fault per page first written between
    /// snapshots.
    pub track: bool,
    /// Journaled reactors it takes start a new journal segment from it
    /// (snapshots kept as restart points: a node's checkpoints, a user's
    /// snapshot; not a move's layers).
    pub journal: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self { capture: Capture::Concurrent, track: false, journal: false }
    }
}

impl SnapshotOptions {
    /// `capture` without tracking.
    pub fn new(capture: Capture) -> Self {
        Self { capture, track: capture == Capture::Incremental, journal: false }
    }

    /// The same with tracking on.
    pub fn tracked(self) -> Self {
        Self { track: true, ..self }
    }

    /// The same, starting journal segments (see [`SnapshotOptions::journal`]).
    pub fn journaled(self) -> Self {
        Self { journal: true, ..self }
    }
}

/// A reactor's snapshot tracking, kept beside it by its shard: the page
/// protection state of its memory and the snapshot its recorded dirty
/// pages are relative to.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    tracker: Tracker,
    /// The snapshot the tracked dirty pages are relative to.
    base: Option<SnapshotId>,
}

impl Tracking {
    /// The snapshot its dirty pages are relative to, while they are being
    /// recorded (an incremental snapshot on it is possible).
    pub(crate) fn base(&self) -> Option<SnapshotId> {
        self.base.filter(|_| self.tracker.tracking())
    }

    /// Called at message boundaries: lets a finished copy go.
    pub(crate) fn settle(&mut self) {
        self.tracker.settle();
    }
}

/// One reactor's part of a checkpoint.
#[derive(Debug)]
pub(super) struct Part {
    /// Everything but the runs (filled in when written).
    pub(super) entry: ReactorEntry,
    pub(super) pages: Arc<PageCopy>,
}

/// Snapshots of one or more reactors taken at one boundary, in memory.
/// Copies may still be running (`Concurrent`, `Incremental`): every reader
/// waits for them.
#[derive(Debug)]
pub struct Checkpoint {
    pub(super) id: SnapshotId,
    pub(super) kind: Kind,
    created_unix_ms: u64,
    pub(super) parts: Vec<Part>,
    pub(super) blobs: BTreeMap<u64, Arc<Blob>>,
}

/// How [`Checkpoint::write_with`] stores page data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// As it is (format version 2): runs can be mapped lazily on restore.
    #[default]
    None,
    /// LZ4 frames of 1 MiB (format version 3): smaller files for snapshots
    /// kept or shipped; a restore decompresses every page it uses (no lazy
    /// mapping).
    Lz4,
}

/// What [`Checkpoint::write`] did.
#[derive(Clone, Copy, Debug)]
pub struct WriteReport {
    /// File length in bytes.
    pub file_bytes: u64,
    /// Bytes of page data stored (non-zero pages).
    pub page_bytes: u64,
    /// Time from the call to the file being durable (fsync and rename done).
    pub elapsed: Duration,
}

impl Checkpoint {
    pub(crate) fn new(kind: Kind) -> Self {
        Self::with_id(SnapshotId::random(), kind)
    }

    /// An empty checkpoint with a given id (the parts of one checkpoint
    /// taken on several shards).
    pub(crate) fn with_id(id: SnapshotId, kind: Kind) -> Self {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self { id, kind, created_unix_ms, parts: Vec::new(), blobs: BTreeMap::new() }
    }

    /// Adds the reactors and blobs of `other` (a part of the same
    /// checkpoint taken on another shard).
    pub(crate) fn merge(&mut self, other: Checkpoint) {
        self.parts.extend(other.parts);
        self.parts.sort_by_key(|p| p.entry.address);
        self.blobs.extend(other.blobs);
    }

    /// This checkpoint's id (a delta on it names it as its base).
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Full, or a delta on which base.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The reactors in it.
    pub fn reactors(&self) -> Vec<Address> {
        self.parts.iter().map(|p| Address(p.entry.address)).collect()
    }

    /// Whether every background copy has finished.
    pub fn is_complete(&self) -> bool {
        self.parts.iter().all(|p| p.pages.is_done())
    }

    /// Waits for every background copy.
    pub fn wait(&self) {
        for p in &self.parts {
            p.pages.wait();
        }
    }

    /// Sum of the reactors' memory sizes.
    pub fn memory_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.entry.memory_size).sum()
    }

    /// Bytes of non-zero page data captured (what a file stores). Waits for
    /// the copies.
    pub fn page_bytes(&self) -> u64 {
        let ps = page_size() as u64;
        self.parts
            .iter()
            .map(|p| {
                let img = p.pages.image();
                img.runs(usize::MAX).filter(|r| r.2).map(|(a, b, _)| (b - a) as u64 * ps).sum::<u64>()
            })
            .sum()
    }

    /// Pages the reactors wrote while their concurrent copy ran, each
    /// copied first by the write-fault handler (0 for blocking captures).
    pub fn pages_copied_on_write(&self) -> usize {
        self.parts.iter().map(|p| p.pages.faulted()).sum()
    }

    /// Reactors whose copy-on-write capture hit a page-protection failure
    /// (the kernel would not split their memory's mapping further, e.g.
    /// at `vm.max_map_count`): the fault handler finished each of those
    /// captures by copying the rest of the memory at once and stopped
    /// tracking it (their next incremental snapshot needs a full one
    /// first). The captures are exact all the same. Waits for the copies.
    pub fn protection_failures(&self) -> Vec<Address> {
        self.wait();
        self.parts.iter().filter(|p| p.pages.degraded()).map(|p| Address(p.entry.address)).collect()
    }

    /// Distinct shared blobs referred to.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Writes the checkpoint to `path` (fsync, then atomic rename: a crash
    /// never leaves a partial file in place of an existing one). Waits for
    /// background copies. `progress(done, total)` is called as page data is
    /// written.
    pub fn write(&self, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<WriteReport, SnapshotError> {
        self.write_with(path, Compression::None, progress)
    }

    /// [`Checkpoint::write`], storing page data as `compression` says.
    pub fn write_with(
        &self,
        path: &Path,
        compression: Compression,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<WriteReport, SnapshotError> {
        let start = Instant::now();
        let total = self.page_bytes();
        let (abi, kind, id) = (guest_sdk::abi::ABI_VERSION, self.kind, self.id);
        let mut w = match compression {
            Compression::None => Writer::create(path, abi, kind, id)?,
            Compression::Lz4 => Writer::create_compressed(path, abi, kind, id, snapshot_format::DEFAULT_FRAME_LEN)?,
        };
        let mut meta = Meta { created_unix_ms: self.created_unix_ms, blobs: Vec::new(), reactors: Vec::new() };
        for blob in self.blobs.values() {
            let offset = w.append_blob(blob.bytes())?;
            meta.blobs.push(BlobEntry {
                tag: blob.tag(),
                len: blob.bytes().len() as u64,
                offset,
                hash: snapshot_format::blob_hash(blob.bytes()),
            });
        }
        let ps = page_size();
        let delta = matches!(self.kind, Kind::Delta { .. });
        let mut done = 0u64;
        const CHUNK_PAGES: usize = 16 << 20 >> 12;
        for part in &self.parts {
            let img = part.pages.image();
            let mut entry = part.entry.clone();
            for (start, p, nonzero) in img.runs(CHUNK_PAGES) {
                if nonzero {
                    let off = w.append_pages(&img.bytes[start * ps..p * ps])?;
                    // Consecutive chunks of one run land back to back: merge.
                    match entry.runs.last_mut() {
                        Some(r)
                            if r.first_page + r.pages == start as u64
                                && r.data.is_some_and(|d| d + r.pages * ps as u64 == off) =>
                        {
                            r.pages += (p - start) as u64
                        }
                        _ => entry.runs.push(Run {
                            first_page: start as u64,
                            pages: (p - start) as u64,
                            data: Some(off),
                        }),
                    }
                    done += ((p - start) * ps) as u64;
                    progress(done, total);
                } else if delta {
                    match entry.runs.last_mut() {
                        Some(r) if r.data.is_none() && r.first_page + r.pages == start as u64 => {
                            r.pages += (p - start) as u64
                        }
                        _ => entry.runs.push(Run { first_page: start as u64, pages: (p - start) as u64, data: None }),
                    }
                }
            }
            meta.reactors.push(entry);
        }
        let file_bytes = w.finish(&meta)?;
        Ok(WriteReport { file_bytes, page_bytes: done, elapsed: start.elapsed() })
    }
}

/// What a capture records beside the memory: the host state of the reactor
/// at the boundary.
#[derive(Debug)]
pub(crate) struct HostState {
    /// Its queued messages, oldest first.
    pub(crate) inbox: Vec<EnvelopeRecord>,
    /// The next serial its node's tag source would hand out (so a restore
    /// never reissues a correlation id it holds).
    pub(crate) next_corr: u64,
    /// Its requests waiting for replies: (correlation id, the reactor
    /// asked), so replies to them are still taken after a restore.
    pub(crate) outstanding: Vec<(u64, u64)>,
}

/// Takes one reactor's part at a boundary.
pub(crate) fn capture<H: HostContext>(
    reactor: &mut Reactor<H>,
    tracking: &mut Tracking,
    address: Address,
    host: HostState,
    options: SnapshotOptions,
    checkpoint: &mut Checkpoint,
) -> Result<(), SnapshotError> {
    if let Some(reason) = reactor.module().snapshot_blocker() {
        return Err(SnapshotError::Unsupported { address, reason: reason.to_owned() });
    }
    let globals = reactor.read_globals();
    let (base, len) = reactor.memory_extent();
    let os = |e: std::io::Error| SnapshotError::Os { address, reason: e.to_string() };
    let tracked_base = tracking.base();
    let cover = match (options.capture, checkpoint.kind) {
        (Capture::Incremental, Kind::Delta { base: want }) if tracked_base == Some(want) => Cover::Dirty,
        // A reactor new since the base (or whose tracking lapsed) goes into
        // a delta whole.
        (Capture::Incremental, _) => Cover::All,
        _ => Cover::All,
    };
    let pages = if options.capture == Capture::Blocking && !options.track && !tracking.tracker.tracking() {
        tracking.tracker.release();
        // SAFETY: `base..base+len` is the reactor's memory (a live host
        // mapping); we hold the reactor mutably between calls, so neither
        // Wasm nor host calls write it during the copy.
        unsafe { PageCopy::blocking(base as *const u8, len) }.map_err(os)?
    } else {
        // SAFETY: as above for the arming itself; afterwards the memory
        // stays mapped at `base` until it moves or is freed, both of which
        // notify `sys::protect` first, and only this reactor's thread
        // writes it.
        let c = unsafe { tracking.tracker.arm(base as *mut u8, len, cover, options.track) };
        match c {
            Ok(c) => {
                if options.capture == Capture::Blocking {
                    c.wait();
                }
                c
            }
            // Too many memories armed at once (a checkpoint of a huge
            // population): copy this one now instead.
            Err(ArmError::TooMany) if !options.track && cover == Cover::All => {
                // SAFETY: as for the blocking capture above.
                unsafe { PageCopy::blocking(base as *const u8, len) }.map_err(os)?
            }
            Err(ArmError::NoBase) => return Err(SnapshotError::NoBase(address)),
            Err(other) => return Err(SnapshotError::Os { address, reason: other.to_string() }),
        }
    };
    tracking.base = options.track.then_some(checkpoint.id);
    let mut blobs = Vec::new();
    for b in reactor.held_blobs() {
        blobs.push(b.tag());
        checkpoint.blobs.entry(b.tag()).or_insert_with(|| b.clone());
    }
    blobs.sort_unstable();
    checkpoint.parts.push(Part {
        entry: ReactorEntry {
            address: address.0,
            module: reactor.module_hash().0,
            memory_size: len as u64,
            globals,
            inbox: host.inbox,
            blobs,
            next_corr: host.next_corr,
            outstanding: host.outstanding,
            runs: Vec::new(),
        },
        pages,
    });
    Ok(())
}

/// The kind of a checkpoint of reactors whose tracked bases are `bases`:
/// full unless `capture` is incremental, then a delta on the base they all
/// share, or the one most of them share (the others go in whole).
pub(crate) fn checkpoint_kind(
    capture: Capture,
    bases: impl Iterator<Item = Option<SnapshotId>>,
) -> Result<Kind, SnapshotError> {
    if capture != Capture::Incremental {
        return Ok(Kind::Full);
    }
    let mut counts: BTreeMap<[u8; 16], usize> = BTreeMap::new();
    for b in bases.flatten() {
        *counts.entry(b.0).or_default() += 1;
    }
    match counts.into_iter().max_by_key(|&(_, n)| n) {
        Some((id, _)) => Ok(Kind::Delta { base: SnapshotId(id) }),
        None => Err(SnapshotError::Chain(
            "no reactor has a tracked previous checkpoint: take a full one with `track: true` first".into(),
        )),
    }
}

/// A queued message as the file records it.
pub(crate) fn record(env: &Envelope) -> EnvelopeRecord {
    EnvelopeRecord { kind: env.kind, flags: env.flags, from: env.from.0, corr: env.corr, payload: env.payload.clone() }
}

/// A recorded message, queued again.
pub(crate) fn envelope(r: &EnvelopeRecord) -> Envelope {
    Envelope { kind: r.kind, flags: r.flags, from: Address(r.from), corr: r.corr, payload: r.payload.clone() }
}
