//! Restart-stable tags, and the shared immutable blobs they name.
//!
//! Snapshots store *tags*, never host pointers: every reference a reactor
//! holds to something outside its own memory (another reactor's
//! [`Address`], a shared [`Blob`], a pending request's correlation id) is a
//! number that no other thing on any node has had or will have.
//!
//! # Tags
//!
//! A tag is `[node: 16 bits][shard: 8 bits][serial: 40 bits]` (the layout is
//! vocabulary: `reactor_types::address`). The node is a configured id
//! (`MAX_NODE` at most, so a tag stays positive as an `i64`, which host
//! calls return with negative statuses); the shard is where an address
//! lives (0 for blobs); the serial comes from the node-wide
//! [`TagSource`], shared by all shards, so a serial never repeats on a node
//! whatever shard it went to. Serial 0 is never handed out ([`Address::HOST`]
//! is 0).
//!
//! With a data directory the source persists a high-water mark in
//! `<dir>/tags.hwm` before handing out any serial at or above the previous
//! mark, reserving [`PERSIST_AHEAD`] serials at a time, and resumes above the
//! mark when reopened: after a clean stop, a crash or a power cut no serial
//! is reused. Without a data directory ([`TagSource::ephemeral`]) serials
//! start at 1 in every process: tags are then unique only within the process.
//!
//! Shards take serials in blocks of [`SHARD_BLOCK`] ([`LocalTags`]), so the
//! source's lock is taken once per block, and the disk touched once per
//! [`PERSIST_AHEAD`] serials.
//!
//! # Correlation ids
//!
//! A correlation id is `[node: 16 bits][serial: 40 bits][n: 8 bits]`: each
//! serial drawn from the source yields [`CORR_PER_SERIAL`] ids, so ids are
//! unique across shards, the outside world, nodes and restarts (a restored
//! reactor's pending ids are never issued again) while costing the tag space
//! one serial per 256 requests.
//!
//! # Blobs
//!
//! A [`Blob`] is an immutable byte string in host memory with a tag from the
//! same source. It exists once however many reactors hold it: [`Refs`] keeps
//! a table from tag to a weak reference, each holder (a reactor's store, or
//! the host through [`Refs::create_host_blob`]) an `Arc`. The blob is freed
//! when its last holder lets go (closes it, fails, or is released).
//! [`Refs::relink_blob`] gives a restored reactor the live blob of a tag, or
//! rebuilds it once from a snapshot's bytes.
//!
//! A blob is a capability, not a name anyone may use: blob tags come from
//! the same sequential source as addresses, so knowing one proves nothing.
//! A reactor opens a blob only if it created it, was given it
//! ([`Refs::grant_blob`], the `blob_give` host call) or the host published
//! it ([`Refs::create_host_blob`]); for any other tag it is told there is no
//! such blob. Grants live with the blob in memory: a blob rebuilt by a
//! restore in another process knows only the holds the snapshot recorded.
#![forbid(unsafe_code)]

use crate::budget::{NodeBudget, NodeCharge};
use reactor_types::Address;
use reactor_types::address::{MAX_NODE, MAX_SERIAL, NODE_SHIFT, tag, tag_node, tag_serial};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// Serials a shard (or the host port) takes from the source at a time.
pub const SHARD_BLOCK: u64 = 4096;
/// Serials reserved on disk per write of the high-water mark.
pub const PERSIST_AHEAD: u64 = 1 << 20;
/// Correlation ids made from one serial.
pub const CORR_PER_SERIAL: u32 = 1 << CORR_BITS;
/// Name of the high-water mark file in the data directory.
pub const HWM_FILE: &str = "tags.hwm";
/// Serials an ephemeral source keeps free above anything a restore brings
/// back (a source without a data directory cannot know what earlier
/// processes issued, so it bounds restored serials to leave this many).
pub const RESTORE_HEADROOM: u64 = 1 << 32;

const CORR_BITS: u32 = 8;
const HWM_MAGIC: &[u8; 8] = b"RTAGHWM1";
const HWM_LEN: usize = 24;

/// Why tags or blobs could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RefsError {
    /// Reading or writing the high-water mark failed.
    #[error("tag high-water mark {}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The high-water mark file is not one this host wrote.
    #[error(
        "tag high-water mark {} is corrupt ({reason}); refusing to start, because serials handed out \
         before could be handed out again. Restore the file from a backup, or delete it only if no \
         snapshot and no other node holds a tag of this node",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Every serial of this node has been handed out.
    #[error("all {MAX_SERIAL} tag serials of this node are used up")]
    Exhausted,
    /// The node id does not fit a tag.
    #[error("node id {0} is out of range: at most {MAX_NODE}, so tags stay positive as i64")]
    NodeOutOfRange(u16),
    /// A restore brought a serial this node never issued (see
    /// [`TagSource::check_restorable`]).
    #[error(
        "serial {serial} is beyond what this node could have issued (at most {limit}{why})",
        why = if *persisted { ", its persisted high-water mark" } else { ", keeping room for new tags" }
    )]
    BeyondIssued {
        /// The serial found.
        serial: u64,
        /// The largest serial accepted.
        limit: u64,
        /// Whether the limit is the persisted high-water mark (else it is
        /// the headroom of an ephemeral source).
        persisted: bool,
    },
    /// A blob over `abi::MAX_BLOB_LEN`.
    #[error("a blob of {0} bytes exceeds the limit of {max} bytes", max = guest_sdk::abi::MAX_BLOB_LEN)]
    BlobTooLarge(usize),
    /// The node's byte budget has no room for a blob this large.
    #[error("the node's byte budget has no room for a blob of {0} bytes")]
    OverBudget(usize),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent before anything
    // that can panic, so a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct SourceState {
    /// Next serial to hand out.
    next: u64,
    /// Serials below this may have been handed out in some run; with a data
    /// directory it is what the file says.
    reserved: u64,
}

/// Hands out serials, node-wide, in blocks; optionally persisted so a serial
/// is never reused after a restart or crash. See the module docs.
#[derive(Debug)]
pub struct TagSource {
    state: Mutex<SourceState>,
    /// The largest serial observed: blocks already handed out below it are
    /// abandoned by their holders ([`Refs::serial`]).
    floor: AtomicU64,
    /// `<dir>/tags.hwm`, when persisted.
    file: Option<PathBuf>,
}

impl TagSource {
    /// A source that starts at 1 and persists nothing: its serials are
    /// unique within this process only.
    pub fn ephemeral() -> Self {
        Self {
            state: Mutex::new(SourceState { next: 1, reserved: MAX_SERIAL + 1 }),
            floor: AtomicU64::new(0),
            file: None,
        }
    }

    /// A source persisted in `dir` (created if missing): resumes above the
    /// high-water mark in `<dir>/tags.hwm`, or starts at 1 if there is none.
    /// A mark that is unreadable, truncated or fails its checksum is an
    /// error: starting anyway could reuse serials.
    pub fn open(dir: &Path) -> Result<Self, RefsError> {
        let io_err = |path: &Path, op, source| RefsError::Io { path: path.to_owned(), op, source };
        fs::create_dir_all(dir).map_err(|e| io_err(dir, "create the data directory", e))?;
        let file = dir.join(HWM_FILE);
        let next = match fs::read(&file) {
            Ok(bytes) => decode_hwm(&bytes).map_err(|reason| RefsError::Corrupt { path: file.clone(), reason })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io_err(&file, "read it", e)),
        };
        Ok(Self {
            state: Mutex::new(SourceState { next, reserved: next }),
            floor: AtomicU64::new(0),
            file: Some(file),
        })
    }

    /// The persisted high-water mark file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Hands out up to `n` consecutive serials never handed out before (fewer
    /// only when the serial space runs out; empty for `n == 0`). With a data
    /// directory, the serials are covered by the mark on disk before this
    /// returns.
    pub fn take(&self, n: u64) -> Result<Range<u64>, RefsError> {
        let mut st = lock(&self.state);
        if n == 0 {
            return Ok(st.next..st.next);
        }
        if st.next > MAX_SERIAL {
            return Err(RefsError::Exhausted);
        }
        let end = st.next.saturating_add(n).min(MAX_SERIAL + 1);
        if end > st.reserved {
            let file = self.file.as_deref().expect("an ephemeral source reserves every serial");
            let mark = end.saturating_add(PERSIST_AHEAD).min(MAX_SERIAL + 1);
            write_hwm(file, mark)?;
            st.reserved = mark;
        }
        let block = st.next..end;
        st.next = end;
        Ok(block)
    }

    /// Makes every serial handed out from now on larger than `serial` (used
    /// when a reactor with an old tag is restored), including those issued
    /// from blocks shards took earlier. Persisted with the next block handed
    /// out.
    pub fn observe(&self, serial: u64) {
        let mut st = lock(&self.state);
        st.next = st.next.max(serial.saturating_add(1));
        self.floor.fetch_max(serial, Ordering::AcqRel);
    }

    /// Whether a restore may bring back `serial` (and so
    /// [`observe`](TagSource::observe) it): a persisted source accepts only
    /// serials up to its high-water mark, since no run of this node issued
    /// (or recorded as next) any other; an ephemeral one accepts serials that leave
    /// [`RESTORE_HEADROOM`] free. Changes nothing.
    pub fn check_restorable(&self, serial: u64) -> Result<(), RefsError> {
        let (limit, persisted) = match self.file {
            // `next` never passes `reserved`, and a capture records `next`.
            Some(_) => (lock(&self.state).reserved, true),
            None => (MAX_SERIAL - RESTORE_HEADROOM, false),
        };
        if serial > limit {
            return Err(RefsError::BeyondIssued { serial, limit, persisted });
        }
        Ok(())
    }

    /// The largest serial observed so far (0 if none).
    pub fn observed(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// The serial [`TagSource::take`] would hand out next.
    pub fn peek(&self) -> u64 {
        lock(&self.state).next
    }
}

fn hwm_check(head: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(head);
    digest[..8].try_into().expect("a SHA-256 digest has 32 bytes")
}

/// `magic[8] | mark u64 LE | first 8 bytes of SHA-256 of the first 16`.
fn encode_hwm(mark: u64) -> [u8; HWM_LEN] {
    let mut out = [0u8; HWM_LEN];
    out[..8].copy_from_slice(HWM_MAGIC);
    out[8..16].copy_from_slice(&mark.to_le_bytes());
    let check = hwm_check(&out[..16]);
    out[16..].copy_from_slice(&check);
    out
}

fn decode_hwm(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != HWM_LEN {
        return Err(format!("{} bytes, expected {HWM_LEN}", bytes.len()));
    }
    if &bytes[..8] != HWM_MAGIC {
        return Err("wrong magic bytes".into());
    }
    if bytes[16..] != hwm_check(&bytes[..16]) {
        return Err("checksum mismatch".into());
    }
    let mark = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if mark == 0 || mark > MAX_SERIAL + 1 {
        return Err(format!("mark {mark} is outside 1..=2^40"));
    }
    Ok(mark)
}

/// Writes `mark` durably: temp file, fsync, rename, fsync the directory.
fn write_hwm(file: &Path, mark: u64) -> Result<(), RefsError> {
    let io_err = |path: &Path, op, source| RefsError::Io { path: path.to_owned(), op, source };
    let tmp = file.with_extension("hwm.tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create it", e))?;
    f.write_all(&encode_hwm(mark)).map_err(|e| io_err(&tmp, "write it", e))?;
    f.sync_all().map_err(|e| io_err(&tmp, "fsync it", e))?;
    drop(f);
    fs::rename(&tmp, file).map_err(|e| io_err(file, "rename the new mark over it", e))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, "fsync the directory", e))?;
    Ok(())
}

/// A shard's (or the host port's) private block of serials, refilled from
/// the node's [`TagSource`] through [`Refs`]: the hot path takes no lock.
#[derive(Debug, Default)]
pub(crate) struct LocalTags {
    serials: Range<u64>,
    corr_base: u64,
    corr_left: u32,
}

/// An immutable byte string in host memory, shared by every holder; see
/// the module docs.
pub struct Blob {
    tag: u64,
    bytes: Box<[u8]>,
    access: Mutex<Access>,
    /// Its bytes, charged to the node's budget while it lives.
    _charge: NodeCharge,
}

/// Who may open a blob.
#[derive(Debug, Default)]
struct Access {
    /// Published by the host: every reactor of the node.
    public: bool,
    /// Reactors (addresses) that created it or were given it.
    grants: rustc_hash::FxHashSet<u64>,
}

/// Most reactors one blob may be given to.
pub const MAX_BLOB_GRANTS: usize = guest_sdk::abi::MAX_BLOB_GRANTS as usize;

impl Blob {
    /// Its tag: its identity in messages and snapshots.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Its contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn new(tag: u64, bytes: Box<[u8]>, charge: NodeCharge) -> Self {
        Self { tag, bytes, access: Mutex::default(), _charge: charge }
    }

    /// Whether the reactor `who` may open it.
    pub fn may_open(&self, who: Address) -> bool {
        let a = lock(&self.access);
        a.public || a.grants.contains(&who.0)
    }

    /// Lets `who` open it; false if it has [`MAX_BLOB_GRANTS`] grants
    /// already (and `who` is not among them).
    pub fn grant(&self, who: Address) -> bool {
        let mut a = lock(&self.access);
        if a.grants.len() >= MAX_BLOB_GRANTS && !a.grants.contains(&who.0) {
            return false;
        }
        a.grants.insert(who.0);
        true
    }

    /// Lets every reactor of the node open it.
    fn publish(&self) {
        lock(&self.access).public = true;
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("tag", &self.tag).field("len", &self.bytes.len()).finish()
    }
}

#[derive(Debug, Default)]
struct BlobTable {
    by_tag: FxHashMap<u64, Weak<Blob>>,
    /// Dead entries are swept when the table reaches this size.
    sweep_at: usize,
}

impl BlobTable {
    fn live(&self, tag: u64) -> Option<Arc<Blob>> {
        self.by_tag.get(&tag).and_then(Weak::upgrade)
    }

    fn insert(&mut self, blob: &Arc<Blob>) {
        if self.by_tag.len() >= self.sweep_at {
            self.by_tag.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_tag.len() * 2).max(64);
        }
        self.by_tag.insert(blob.tag, Arc::downgrade(blob));
    }
}

/// A node's tags, shared blobs and byte budget: one per runtime, shared
/// by its shards.
#[derive(Debug)]
pub struct Refs {
    node: u16,
    tags: TagSource,
    budget: Arc<NodeBudget>,
    blobs: Mutex<BlobTable>,
    /// Blobs the host holds (see [`Refs::create_host_blob`]).
    host_held: Mutex<FxHashMap<u64, Arc<Blob>>>,
    /// The block from which blobs made outside any shard take their tags.
    host_tags: Mutex<LocalTags>,
}

impl Refs {
    /// Node 0 with an [`ephemeral`](TagSource::ephemeral) source: tags unique
    /// within this process only.
    pub fn ephemeral() -> Self {
        Self::new(0, TagSource::ephemeral()).expect("node 0 is in range")
    }

    /// Node `node` drawing from `tags`.
    pub fn new(node: u16, tags: TagSource) -> Result<Self, RefsError> {
        if node > MAX_NODE {
            return Err(RefsError::NodeOutOfRange(node));
        }
        Ok(Self {
            node,
            tags,
            budget: NodeBudget::new(crate::budget::default_node_limit()),
            blobs: Mutex::default(),
            host_held: Mutex::default(),
            host_tags: Mutex::default(),
        })
    }

    /// Node `node` with its tag source persisted in `dir` (see
    /// [`TagSource::open`]).
    pub fn open(dir: &Path, node: u16) -> Result<Self, RefsError> {
        Self::new(node, TagSource::open(dir)?)
    }

    /// This node's id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// The serial source.
    pub fn tags(&self) -> &TagSource {
        &self.tags
    }

    /// The node's byte budget (see [`crate::budget`]; by default 80 % of
    /// physical memory).
    pub fn budget(&self) -> &Arc<NodeBudget> {
        &self.budget
    }

    /// Makes every later tag of this node larger than `tag` (an address or a
    /// blob tag found in a snapshot). Tags of other nodes need nothing.
    pub fn observe(&self, tag: u64) {
        if tag_node(tag) == self.node {
            self.tags.observe(tag_serial(tag));
        }
    }

    /// Whether a restore may bring back the tag `tag` (an address or a blob
    /// tag): tags of other nodes always, tags of this node only if
    /// [`TagSource::check_restorable`] accepts their serial.
    pub fn check_restorable(&self, tag: u64) -> Result<(), RefsError> {
        if tag_node(tag) != self.node {
            return Ok(());
        }
        self.tags.check_restorable(tag_serial(tag))
    }

    /// [`Refs::check_restorable`] for a correlation id.
    pub fn check_restorable_corr(&self, corr: u64) -> Result<(), RefsError> {
        if tag_node(corr) != self.node {
            return Ok(());
        }
        self.tags.check_restorable((corr >> CORR_BITS) & MAX_SERIAL)
    }

    /// [`Refs::observe`] for a correlation id found in a snapshot.
    pub fn observe_corr(&self, corr: u64) {
        if tag_node(corr) == self.node {
            self.tags.observe((corr >> CORR_BITS) & MAX_SERIAL);
        }
    }

    /// A serial from `local`, refilled from the source when empty or when a
    /// later [`observe`](TagSource::observe) overtook it.
    pub(crate) fn serial(&self, local: &mut LocalTags) -> Result<u64, RefsError> {
        if local.serials.start <= self.tags.observed() || local.serials.is_empty() {
            local.serials = self.tags.take(SHARD_BLOCK)?;
        }
        local.serials.next().ok_or(RefsError::Exhausted)
    }

    /// A correlation id `[node][serial][n]`, unique across shards, nodes and
    /// restarts (see the module docs).
    pub(crate) fn corr(&self, local: &mut LocalTags) -> Result<u64, RefsError> {
        if local.corr_left == 0 || (local.corr_base >> CORR_BITS) & MAX_SERIAL <= self.tags.observed() {
            let serial = self.serial(local)?;
            local.corr_base = ((self.node as u64) << NODE_SHIFT) | (serial << CORR_BITS);
            local.corr_left = CORR_PER_SERIAL;
        }
        local.corr_left -= 1;
        Ok(local.corr_base | (CORR_PER_SERIAL - 1 - local.corr_left) as u64)
    }

    /// Creates a blob with a fresh tag (shard bits 0) from `local`'s block.
    pub(crate) fn create_blob_in(
        &self,
        local: &mut LocalTags,
        bytes: impl Into<Box<[u8]>>,
    ) -> Result<Arc<Blob>, RefsError> {
        let bytes = bytes.into();
        if bytes.len() > guest_sdk::abi::MAX_BLOB_LEN as usize {
            return Err(RefsError::BlobTooLarge(bytes.len()));
        }
        let mut charge = NodeCharge::empty(self.budget.clone());
        if !charge.grow(bytes.len()) {
            return Err(RefsError::OverBudget(bytes.len()));
        }
        let blob = Arc::new(Blob::new(tag(self.node, 0, self.serial(local)?), bytes, charge));
        lock(&self.blobs).insert(&blob);
        Ok(blob)
    }

    /// Creates a blob with a fresh tag. It lives while the returned `Arc` (or
    /// any holder it is given to) does. At most `abi::MAX_BLOB_LEN` bytes.
    pub fn create_blob(&self, bytes: impl Into<Box<[u8]>>) -> Result<Arc<Blob>, RefsError> {
        let mut local = lock(&self.host_tags);
        self.create_blob_in(&mut local, bytes)
    }

    /// The live blob with this tag, if any holder keeps it alive.
    pub fn blob(&self, tag: u64) -> Option<Arc<Blob>> {
        lock(&self.blobs).live(tag)
    }

    /// The live blob with this tag if the reactor `who` may open it (see
    /// the module docs); `None` alike for a blob that does not exist and
    /// one it may not open.
    pub fn open_blob(&self, tag: u64, who: Address) -> Option<Arc<Blob>> {
        self.blob(tag).filter(|b| b.may_open(who))
    }

    /// Lets the reactor `to` open the live blob `tag`; false if there is no
    /// such blob or it has [`MAX_BLOB_GRANTS`] grants already.
    pub fn grant_blob(&self, tag: u64, to: Address) -> bool {
        self.blob(tag).is_some_and(|b| b.grant(to))
    }

    /// For restore: the live blob with `tag` if there is one (never a second
    /// copy), otherwise a blob built from `bytes()` and registered under
    /// `tag`. Also [`observe`](Refs::observe)s the tag. `bytes` runs without
    /// any lock held; should another thread relink the same tag meanwhile,
    /// the first registered copy wins and is returned to both.
    pub fn relink_blob(&self, tag: u64, bytes: impl FnOnce() -> Vec<u8>) -> Arc<Blob> {
        self.observe(tag);
        if let Some(b) = self.blob(tag) {
            return b;
        }
        let bytes = bytes().into_boxed_slice();
        // A restore is the operator's decision: its blobs are counted, not
        // refused (the reactors holding them are checked against theirs).
        let mut charge = NodeCharge::empty(self.budget.clone());
        if !charge.grow(bytes.len()) {
            tracing::warn!(tag, "a restored blob of {} bytes takes the node past its byte budget", bytes.len());
            charge = NodeCharge::forced(self.budget.clone(), bytes.len());
        }
        let built = Arc::new(Blob::new(tag, bytes, charge));
        let mut table = lock(&self.blobs);
        if let Some(b) = table.live(tag) {
            return b;
        }
        table.insert(&built);
        built
    }

    /// Live blobs (held by some reactor or the host).
    pub fn live_blobs(&self) -> usize {
        lock(&self.blobs).by_tag.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Creates a blob the host holds until [`Refs::release_host_blob`] and
    /// publishes it: every reactor of the node may open it by its tag
    /// (reference data). Returns the tag.
    pub fn create_host_blob(&self, bytes: impl Into<Box<[u8]>>) -> Result<u64, RefsError> {
        let blob = self.create_blob(bytes)?;
        blob.publish();
        let tag = blob.tag;
        lock(&self.host_held).insert(tag, blob);
        Ok(tag)
    }

    /// Makes the host hold `blob` (e.g. one relinked at restore) until
    /// [`Refs::release_host_blob`].
    pub fn hold_host_blob(&self, blob: Arc<Blob>) {
        lock(&self.host_held).insert(blob.tag, blob);
    }

    /// Stops the host holding the blob `tag`; false if it did not. The blob
    /// is freed once no reactor holds it either.
    pub fn release_host_blob(&self, tag: u64) -> bool {
        let released = lock(&self.host_held).remove(&tag);
        released.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_types::Address;
    use std::collections::HashSet;

    #[test]
    fn blocks_never_overlap_across_threads() {
        let src = Arc::new(TagSource::ephemeral());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let src = src.clone();
                std::thread::spawn(move || (0..200).map(|_| src.take(SHARD_BLOCK).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut blocks: Vec<Range<u64>> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        blocks.sort_by_key(|b| b.start);
        assert_eq!(blocks.len(), 1600);
        assert_eq!(blocks[0].start, 1);
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].end - pair[0].start, SHARD_BLOCK);
            assert_eq!(pair[0].end, pair[1].start, "blocks are disjoint and leave no gaps");
        }
    }

    #[test]
    fn persisted_source_resumes_above_everything_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut max = 0;
        for round in 0..3 {
            let src = TagSource::open(dir.path()).unwrap();
            let first = src.take(10).unwrap();
            assert!(first.start > max, "round {round}: {} reused (max {max})", first.start);
            // More than one reservation's worth, so the mark moves mid-run.
            let big = src.take(PERSIST_AHEAD + 5).unwrap();
            max = big.end - 1;
            if round == 1 {
                // A crash: no destructor, no clean shutdown.
                std::mem::forget(src);
            }
        }
        assert!(!dir.path().join("tags.hwm.tmp").exists());
    }

    #[test]
    fn persistence_happens_before_handing_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = TagSource::open(dir.path()).unwrap();
        let block = src.take(3).unwrap();
        let on_disk = decode_hwm(&fs::read(dir.path().join(HWM_FILE)).unwrap()).unwrap();
        assert!(on_disk >= block.end);
        // A fresh source in the same directory while the first is live
        // (as after a crash) never overlaps it.
        let again = TagSource::open(dir.path()).unwrap().take(1).unwrap();
        assert!(again.start >= on_disk);
    }

    #[test]
    fn observe_moves_past_the_serial() {
        let src = TagSource::ephemeral();
        src.observe(1000);
        assert_eq!(src.take(1).unwrap().start, 1001);
        src.observe(5);
        assert_eq!(src.take(1).unwrap().start, 1002);
        let refs = Refs::new(3, TagSource::ephemeral()).unwrap();
        refs.observe(Address::new(4, 0, 50_000).0);
        assert_eq!(refs.tags().peek(), 1, "other nodes' tags do not matter");
        refs.observe(Address::new(3, 9, 50_000).0);
        assert_eq!(refs.tags().peek(), 50_001);
    }

    #[test]
    fn observe_overtakes_blocks_already_taken() {
        let refs = Refs::ephemeral();
        let mut local = LocalTags::default();
        let first = refs.serial(&mut local).unwrap();
        let corr = refs.corr(&mut local).unwrap();
        refs.observe(Address::new(0, 0, first + 100).0);
        assert!(refs.serial(&mut local).unwrap() > first + 100);
        refs.observe_corr(corr + (1000 << CORR_BITS));
        let serial_of = |c: u64| (c >> CORR_BITS) & MAX_SERIAL;
        assert!(serial_of(refs.corr(&mut local).unwrap()) > serial_of(corr) + 1000);
    }

    #[test]
    fn observed_serials_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let src = TagSource::open(dir.path()).unwrap();
        src.observe(PERSIST_AHEAD * 3);
        let s = src.take(1).unwrap().start;
        assert_eq!(s, PERSIST_AHEAD * 3 + 1);
        drop(src);
        assert!(TagSource::open(dir.path()).unwrap().take(1).unwrap().start > s);
    }

    #[test]
    fn corrupt_marks_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        TagSource::open(dir.path()).unwrap().take(1).unwrap();
        let file = dir.path().join(HWM_FILE);
        let good = fs::read(&file).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..HWM_LEN - 1].to_vec(), "23 bytes"),
            (Vec::new(), "0 bytes"),
            ({ let mut b = good.clone(); b[9] ^= 1; b }, "checksum"),
            ({ let mut b = good.clone(); b[0] = b'X'; b }, "magic"),
            (encode_hwm(0).to_vec(), "outside"),
        ];
        for (bytes, want) in cases {
            fs::write(&file, &bytes).unwrap();
            let err = TagSource::open(dir.path()).unwrap_err();
            assert!(matches!(err, RefsError::Corrupt { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("refusing to start"), "{msg}");
        }
    }

    #[test]
    fn exhaustion_is_an_error_not_a_wrap() {
        let src = TagSource::ephemeral();
        src.observe(MAX_SERIAL - 3);
        assert_eq!(src.take(10).unwrap(), MAX_SERIAL - 2..MAX_SERIAL + 1);
        assert!(matches!(src.take(1), Err(RefsError::Exhausted)));
    }

    #[test]
    fn node_ids_must_keep_tags_positive() {
        assert!(matches!(Refs::new(MAX_NODE + 1, TagSource::ephemeral()), Err(RefsError::NodeOutOfRange(_))));
        let refs = Refs::new(MAX_NODE, TagSource::ephemeral()).unwrap();
        let mut local = LocalTags::default();
        assert!(refs.corr(&mut local).unwrap() as i64 > 0);
        assert!(refs.create_blob(vec![1]).unwrap().tag() as i64 > 0);
    }

    #[test]
    fn correlation_ids_are_unique_and_carry_the_node() {
        let refs = Arc::new(Refs::new(7, TagSource::ephemeral()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let refs = refs.clone();
                std::thread::spawn(move || {
                    let mut local = LocalTags::default();
                    let mut ids = Vec::new();
                    for _ in 0..20_000 {
                        ids.push(refs.corr(&mut local).unwrap());
                        // Addresses come from the same block.
                        if ids.len() % 100 == 0 {
                            refs.serial(&mut local).unwrap();
                        }
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert_eq!(tag_node(id), 7);
                assert!(id > 0 && (id as i64) > 0);
                assert!(all.insert(id), "duplicate correlation id {id:#x}");
            }
        }
        let top = *all.iter().max().unwrap();
        refs.observe_corr(top);
        assert!(refs.tags().peek() > (top >> CORR_BITS) & MAX_SERIAL);
    }

    #[test]
    fn blobs_are_shared_and_freed_with_their_last_holder() {
        let refs = Refs::ephemeral();
        let blob = refs.create_blob(vec![1, 2, 3]).unwrap();
        let tag = blob.tag();
        assert_eq!(tag_node(tag), 0);
        assert!(Arc::ptr_eq(&refs.blob(tag).unwrap(), &blob));
        let again = refs.relink_blob(tag, || panic!("a live blob is never rebuilt"));
        assert!(Arc::ptr_eq(&again, &blob));
        assert_eq!(refs.live_blobs(), 1);
        drop((blob, again));
        assert!(refs.blob(tag).is_none());
        assert_eq!(refs.live_blobs(), 0);
        let rebuilt = refs.relink_blob(tag, || vec![9; 4]);
        assert_eq!(rebuilt.bytes(), &[9, 9, 9, 9]);
        assert!(Arc::ptr_eq(&refs.blob(tag).unwrap(), &rebuilt));
    }

    #[test]
    fn relinking_observes_the_tag() {
        let refs = Refs::ephemeral();
        let tag = Address::new(0, 0, 77_777).0;
        let b = refs.relink_blob(tag, || vec![1]);
        assert_eq!(b.tag(), tag);
        assert!(refs.create_blob(vec![2]).unwrap().tag() > tag);
    }

    #[test]
    fn host_held_blobs_live_until_released() {
        let refs = Refs::ephemeral();
        let tag = refs.create_host_blob(vec![5; 10]).unwrap();
        assert_eq!(refs.blob(tag).unwrap().len(), 10);
        assert!(refs.release_host_blob(tag));
        assert!(!refs.release_host_blob(tag));
        assert!(refs.blob(tag).is_none());
        assert!(matches!(
            refs.create_blob(vec![0u8; guest_sdk::abi::MAX_BLOB_LEN as usize + 1]),
            Err(RefsError::BlobTooLarge(_))
        ));
    }

    #[test]
    fn dead_entries_are_swept() {
        let refs = Refs::ephemeral();
        for _ in 0..10_000 {
            drop(refs.create_blob(vec![0u8]).unwrap());
        }
        assert!(lock(&refs.blobs).by_tag.len() < 200);
    }
}
