//! Journals on disk: one directory per journaled reactor under the node's
//! journal directory, one file per segment, written by one writer thread
//! per node with group commit.
//!
//! A shard appends a call's record to the reactor's segment in memory
//! (a lock nobody else holds but the writer, for a moment) and, if the
//! segment is not queued yet, queues it. The writer thread takes every
//! queued segment at once, writes what each has gathered, then makes the
//! ones at level `Synced` or above durable with one `fdatasync` each: the
//! records that arrived while it synced go in the next round. A record is
//! therefore on disk at most two rounds after it was appended.
#![forbid(unsafe_code)]

use journal_format::{Encoder, Header, Level, Record, encode_header};
use reactor_types::{Address, ModuleHash};
use snapshot_format::SnapshotId;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A reactor that failed while journaled: what a post-mortem bundle is
/// made from. Its segments are sealed (synced and closed).
#[derive(Debug, Clone)]
pub struct FailedReactor {
    pub address: Address,
    pub module: ModuleHash,
    /// The step whose call failed it.
    pub step: u64,
    /// Its failure, as recorded.
    pub failure: String,
    /// Its journal's segments on disk, oldest first; the last ends with
    /// the failure.
    pub segments: Vec<PathBuf>,
}

/// Called on the writer thread when a journaled reactor failed and its
/// journal is sealed.
pub type FailureHook = Box<dyn Fn(&FailedReactor) + Send + Sync>;

/// Bytes of a segment at level `Standby` just written to its file, for the
/// reactor's standby: the segment's file from `offset` on.
#[derive(Debug, Clone, Copy)]
pub struct Shipped<'a> {
    pub address: Address,
    /// The step the segment starts at (its name).
    pub first_step: u64,
    /// Where in the file `bytes` go.
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// Called on the writer thread with what it wrote of `Standby` segments
/// (never blocks: it queues them for the network).
pub type ReplicaHook = Box<dyn Fn(&Shipped<'_>) + Send + Sync>;

/// Counters of a node's journals.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub records: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Rounds of the writer that wrote something.
    pub rounds: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub max_sync_nanos: AtomicU64,
    pub errors: AtomicU64,
}

/// What a figure of [`JournalStats`] is now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalFigures {
    pub records: u64,
    pub bytes_written: u64,
    pub rounds: u64,
    pub syncs: u64,
    pub sync_nanos: u64,
    pub max_sync_nanos: u64,
    pub errors: u64,
}

impl JournalStats {
    pub fn figures(&self) -> JournalFigures {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        JournalFigures {
            records: g(&self.records),
            bytes_written: g(&self.bytes_written),
            rounds: g(&self.rounds),
            syncs: g(&self.syncs),
            sync_nanos: g(&self.sync_nanos),
            max_sync_nanos: g(&self.max_sync_nanos),
            errors: g(&self.errors),
        }
    }
}

/// Where a node's journals go and how many old segments each keeps.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory holding one directory per journaled reactor (created
    /// `0700` if missing).
    pub dir: PathBuf,
    /// Segments kept per reactor besides the one being written (older ones
    /// are deleted when a new one starts).
    pub keep: usize,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), keep: 2 }
    }
}

/// The directory of `address`'s journal under `dir`.
pub fn reactor_dir(dir: &Path, address: Address) -> PathBuf {
    dir.join(format!("{:016x}", address.0))
}

/// The file of `address`'s segment that starts at step `first_step`.
pub fn segment_path(dir: &Path, address: Address, first_step: u64) -> PathBuf {
    reactor_dir(dir, address).join(format!("{first_step:020}.journal"))
}

/// The step a segment file starts at, from its name.
pub fn first_step_of(path: &Path) -> Option<u64> {
    path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".journal")).and_then(|n| n.parse::<u64>().ok())
}

/// The segments of the journal in `reactor_dir`, oldest first (by the
/// step they start at).
pub fn segments(reactor_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<(u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(reactor_dir)? {
        let p = e?.path();
        if let Some(s) = first_step_of(&p) {
            v.push((s, p));
        }
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

enum After {
    /// Keep `keep` older segments in its directory.
    Prune(usize),
    /// It held no call: delete it (a later segment starts at the same step).
    Discard,
    /// The reactor failed: hand its journal to the failure hook.
    Failed { address: Address, module: ModuleHash, step: u64, failure: String },
    Nothing,
}

enum Job {
    Flush(Arc<Segment>),
    /// Segments at `Written` are waiting in the lazy list: write them
    /// within [`WRITTEN_GAP`].
    Tick,
    Seal(Arc<Segment>, After),
    /// Answers once everything before it is written and synced.
    Barrier(Sender<()>),
}

/// How long records of a segment at level `Written` may wait to be written
/// (they are gathered meanwhile: one write per segment per gap, not one per
/// record). `Synced` segments are written and synced at once.
pub const WRITTEN_GAP: std::time::Duration = std::time::Duration::from_millis(1);

/// A node's journals: their directory and writer thread.
pub struct Journals {
    config: JournalConfig,
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<JournalStats>,
    hook: Arc<OnceLock<FailureHook>>,
    wakers: Arc<Mutex<Vec<Waker>>>,
    /// `Written` segments with records waiting (see [`WRITTEN_GAP`]).
    lazy: Arc<Mutex<Vec<Arc<Segment>>>>,
    /// Where `Standby` segments' bytes go.
    replica: Arc<OnceLock<ReplicaHook>>,
    /// The open `Standby` segments, by reactor and first step: what a
    /// standby's acknowledgement names.
    standby: Mutex<HashMap<(Address, u64), Weak<Segment>>>,
}

/// Called after records were synced (a shard waiting to release output).
pub type Waker = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for Journals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journals").field("dir", &self.config.dir).field("stats", &self.stats.figures()).finish()
    }
}

impl Journals {
    /// Starts the writer thread for journals under `config.dir`.
    pub fn start(config: JournalConfig) -> std::io::Result<Arc<Self>> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&config.dir)?;
        let (tx, rx) = channel();
        let stats = Arc::new(JournalStats::default());
        let hook: Arc<OnceLock<FailureHook>> = Arc::new(OnceLock::new());
        let wakers: Arc<Mutex<Vec<Waker>>> = Arc::default();
        let lazy: Arc<Mutex<Vec<Arc<Segment>>>> = Arc::default();
        let replica: Arc<OnceLock<ReplicaHook>> = Arc::default();
        let (s, h, w, l) = (stats.clone(), hook.clone(), wakers.clone(), lazy.clone());
        let r = replica.clone();
        let thread = std::thread::Builder::new().name("journal".into()).spawn(move || writer(rx, &s, &h, &w, &l, &r))?;
        Ok(Arc::new(Self {
            config,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats,
            hook,
            wakers,
            lazy,
            replica,
            standby: Mutex::default(),
        }))
    }

    /// Sets where the bytes of `Standby` segments go (once).
    pub fn set_replica_hook(&self, hook: ReplicaHook) -> bool {
        self.replica.set(hook).is_ok()
    }

    /// The reactor's standby holds `records` records of its segment that
    /// starts at `first_step` (`u64::MAX`: all it will ever have, e.g. a
    /// snapshot the standby holds covers them): what the reactor sent in
    /// those calls may leave.
    pub fn held(&self, address: Address, first_step: u64, records: u64) {
        let seg = self.standby.lock().expect("standby segments").get(&(address, first_step)).and_then(Weak::upgrade);
        match seg {
            Some(seg) => {
                seg.held.fetch_max(records, Ordering::Release);
                wake(&self.wakers);
            }
            None => tracing::debug!(reactor = %address, "held records of a segment that is not open (from step {first_step})"),
        }
    }

    /// Every open `Standby` segment of `address` is held (see
    /// [`Journals::held`]): its standby holds a snapshot taken after them.
    pub fn held_before(&self, address: Address, step: u64) {
        let segs: Vec<Arc<Segment>> = self
            .standby
            .lock()
            .expect("standby segments")
            .iter()
            .filter(|((a, first), _)| *a == address && *first < step)
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for seg in segs {
            seg.held.store(u64::MAX, Ordering::Release);
        }
        wake(&self.wakers);
    }

    fn register(&self, seg: &Arc<Segment>, address: Address, first_step: u64) {
        if seg.level == Level::Standby {
            let mut map = self.standby.lock().expect("standby segments");
            map.retain(|_, w| w.strong_count() > 0);
            map.insert((address, first_step), Arc::downgrade(seg));
        }
    }

    /// Calls `waker` after every round that synced records.
    pub fn add_waker(&self, waker: Waker) {
        self.wakers.lock().expect("wakers").push(waker);
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Sets what runs when a journaled reactor fails (once).
    pub fn set_failure_hook(&self, hook: FailureHook) -> bool {
        self.hook.set(hook).is_ok()
    }

    fn send(&self, job: Job) {
        if let Some(tx) = self.tx.lock().expect("journal sender").as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Waits until everything appended before the call is written (and
    /// synced for segments at `Synced` or above).
    pub fn sync(&self) {
        let (tx, rx) = channel();
        self.send(Job::Barrier(tx));
        let _ = rx.recv();
    }

    /// Writes what is pending and stops the writer thread.
    pub fn shutdown(&self) {
        self.sync();
        drop(self.tx.lock().expect("journal sender").take());
        if let Some(t) = self.thread.lock().expect("journal thread").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Journals {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One segment file being written.
pub(crate) struct Segment {
    path: PathBuf,
    level: Level,
    address: Address,
    first_step: u64,
    state: Mutex<SegState>,
    /// Records on disk (`fdatasync` done), counted from the segment's first.
    synced: AtomicU64,
    /// Records the reactor's standby holds (level `Standby`).
    held: AtomicU64,
    /// Why it could not be written, once it could not.
    broken: OnceLock<String>,
}

impl Segment {
    fn new(path: PathBuf, level: Level, (address, first_step): (Address, u64), pending: Vec<u8>, queued: bool) -> Self {
        Self {
            path,
            level,
            address,
            first_step,
            state: Mutex::new(SegState { pending, pending_records: 0, written_records: 0, written_bytes: 0, queued, file: None }),
            synced: AtomicU64::new(0),
            held: AtomicU64::new(0),
            broken: OnceLock::new(),
        }
    }
}

struct SegState {
    pending: Vec<u8>,
    /// Records in `pending`.
    pending_records: u64,
    /// Records written to the file.
    written_records: u64,
    /// Bytes in the file.
    written_bytes: u64,
    queued: bool,
    file: Option<File>,
}

/// What a journaled reactor's held output waits for: its call's record on
/// disk ([`Ticket::is_synced`]).
#[derive(Clone)]
pub(crate) struct Ticket {
    segment: Arc<Segment>,
    records: u64,
}

impl Ticket {

    /// Whether the record is on disk (or can never be: the segment broke,
    /// and the reactor fails instead).
    pub(crate) fn is_synced(&self) -> bool {
        let seg = &self.segment;
        seg.broken.get().is_some()
            || seg.synced.load(Ordering::Acquire) >= self.records
                && (seg.level < Level::Standby || seg.held.load(Ordering::Acquire) >= self.records)
    }
}

/// A journaled reactor's side of its journal (its shard's).
pub(crate) struct ReactorJournal {
    journals: Arc<Journals>,
    segment: Arc<Segment>,
    address: Address,
    module: ModuleHash,
    level: Level,
    /// Index of the next record in the current segment.
    index: u64,
    /// Codes the current segment's records.
    encoder: Encoder,
    /// Call records in the current segment.
    calls: u64,
    /// The step number of the next call.
    step: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ReactorJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorJournal").field("address", &self.address).field("step", &self.step).finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ReactorJournal {
    /// Starts `address`'s journal at step `first_step`: from its spawn
    /// (`base` `None`) or from the snapshot `base` with that state digest.
    /// The file is created by the writer thread.
    pub(crate) fn start(
        journals: &Arc<Journals>,
        address: Address,
        module: ModuleHash,
        level: Level,
        first_step: u64,
        base: Option<(SnapshotId, u64)>,
    ) -> Self {
        Self {
            journals: journals.clone(),
            segment: Self::open_segment(journals, address, module, level, first_step, base),
            address,
            module,
            level,
            index: 0,
            encoder: Encoder::new(),
            calls: 0,
            step: first_step,
            buf: Vec::new(),
        }
    }

    /// Starts `address`'s segment beginning at step `step` (its header
    /// queued for the writer, which creates the file).
    fn open_segment(
        journals: &Journals,
        address: Address,
        module: ModuleHash,
        level: Level,
        step: u64,
        base: Option<(SnapshotId, u64)>,
    ) -> Arc<Segment> {
        let header = Header {
            level,
            address: address.0,
            module: module.0,
            first_step: step,
            base: base.map_or([0; 16], |(id, _)| id.0),
            base_digest: base.map_or(0, |(_, d)| d),
            created_ms: now_ms(),
        };
        let path = segment_path(&journals.config.dir, address, step);
        let segment = Arc::new(Segment::new(path, level, (address, step), encode_header(&header).to_vec(), true));
        journals.register(&segment, address, step);
        journals.send(Job::Flush(segment.clone()));
        segment
    }

    /// The step number the next call will have.
    pub(crate) fn step(&self) -> u64 {
        self.step
    }

    /// Its durability level.
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    /// Goes on writing `address`'s segment at `path` after a restart: the
    /// file is cut to `valid_len` (a torn last record goes) and synced;
    /// `index` records and `calls` call records are in it, the next call is
    /// step `step`; `encoder` goes on from its last record.
    #[expect(clippy::too_many_arguments, reason = "where the segment stands, field by field")]
    pub(crate) fn resume(
        journals: &Arc<Journals>,
        address: Address,
        module: ModuleHash,
        level: Level,
        path: PathBuf,
        valid_len: u64,
        (encoder, calls): (Encoder, u64),
        step: u64,
    ) -> std::io::Result<Self> {
        let index = encoder.next_index();
        let file = OpenOptions::new().append(true).open(&path)?;
        // Not synced here (a restart must be fast): the next records
        // overwrite what was cut, and at `Synced` their sync makes the new
        // length durable with them. A crash before that brings back the cut
        // tail: a failed call and its failure, replayed to the same failure
        // (then restarted again), or a torn record, cut again.
        file.set_len(valid_len)?;
        let first = first_step_of(&path).ok_or_else(|| std::io::Error::other(format!("{} is not named by its first step", path.display())))?;
        let segment = Segment::new(path, level, (address, first), Vec::new(), false);
        {
            let mut st = segment.state.lock().expect("segment state");
            st.file = Some(file);
            st.written_records = index;
            st.written_bytes = valid_len;
        }
        segment.synced.store(index, Ordering::Release);
        // What is in the file was held by the standby it had, or is not
        // any more: a new standby gets a snapshot taken after it.
        segment.held.store(index, Ordering::Release);
        let segment = Arc::new(segment);
        journals.register(&segment, address, first);
        Ok(Self {
            journals: journals.clone(),
            segment,
            address,
            module,
            level,
            index,
            encoder,
            calls,
            step,
            buf: Vec::new(),
        })
    }

    /// Why its segment could not be written, if it could not.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.segment.broken.get().map(String::as_str)
    }

    /// Appends a record to the current segment (queued for the writer).
    pub(crate) fn append(&mut self, record: &Record<'_>) {
        self.buf.clear();
        self.encoder.encode(record, &mut self.buf);
        self.index += 1;
        if matches!(record, Record::Init(_) | Record::Step(_)) {
            self.calls += 1;
            self.step += 1;
        }
        self.journals.stats.records.fetch_add(1, Ordering::Relaxed);
        let mut st = self.segment.state.lock().expect("segment state");
        st.pending.extend_from_slice(&self.buf);
        st.pending_records += 1;
        if !st.queued {
            st.queued = true;
            drop(st);
            if self.level == Level::Written {
                let mut lazy = self.journals.lazy.lock().expect("lazy segments");
                lazy.push(self.segment.clone());
                if lazy.len() == 1 {
                    drop(lazy);
                    self.journals.send(Job::Tick);
                }
            } else {
                self.journals.send(Job::Flush(self.segment.clone()));
            }
        }
    }

    /// Whether what the reactor sends waits for its call's record to be on
    /// disk.
    pub(crate) fn holds_output(&self) -> bool {
        self.level >= Level::Synced
    }

    /// What the output of the call just appended waits for.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket { segment: self.segment.clone(), records: self.index }
    }

    /// Ends the current segment at snapshot `next` (state digest `digest`)
    /// and starts the next from it.
    pub(crate) fn roll(&mut self, next: SnapshotId, digest: u64) {
        let after = if self.calls == 0 {
            After::Discard
        } else {
            self.append(&Record::End { next: next.0, digest });
            After::Prune(self.journals.config.keep)
        };
        self.journals.send(Job::Seal(self.segment.clone(), after));
        self.segment = Self::open_segment(&self.journals, self.address, self.module, self.level, self.step, Some((next, digest)));
        self.index = 0;
        self.encoder = Encoder::new();
        self.calls = 0;
    }

    /// The reactor failed at the call just recorded: records why, seals
    /// the journal and hands it to the failure hook.
    pub(crate) fn fail(mut self, failure: &str) {
        self.append(&Record::Failure(failure));
        let after = After::Failed {
            address: self.address,
            module: self.module,
            step: self.step.saturating_sub(1),
            failure: failure.to_owned(),
        };
        self.journals.send(Job::Seal(self.segment.clone(), after));
    }

    /// The reactor stopped being journaled here (stopped, moved away):
    /// seals the segment.
    pub(crate) fn close(self) {
        self.journals.send(Job::Seal(self.segment.clone(), After::Nothing));
    }
}

fn create_file(path: &Path) -> std::io::Result<File> {
    let dir = path.parent().expect("a segment lives in a directory");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    // The new name is durable with its directory.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Writes what `seg` gathered; true if something was written.
fn write_pending(seg: &Segment, stats: &JournalStats, replica: &OnceLock<ReplicaHook>) -> bool {
    let mut st = seg.state.lock().expect("segment state");
    st.queued = false;
    if st.pending.is_empty() || seg.broken.get().is_some() {
        return false;
    }
    let bytes = std::mem::take(&mut st.pending);
    let records = std::mem::take(&mut st.pending_records);
    let result = (|| {
        if st.file.is_none() {
            st.file = Some(create_file(&seg.path)?);
        }
        st.file.as_mut().expect("opened").write_all(&bytes)
    })();
    let offset = st.written_bytes;
    if result.is_ok() {
        st.written_records += records;
        st.written_bytes += bytes.len() as u64;
    }
    drop(st);
    match result {
        Ok(()) => {
            stats.bytes_written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if seg.level == Level::Standby
                && let Some(ship) = replica.get()
            {
                ship(&Shipped { address: seg.address, first_step: seg.first_step, offset, bytes: &bytes });
            }
            true
        }
        Err(e) => {
            broke(seg, stats, format!("writing {}: {e}", seg.path.display()));
            false
        }
    }
}

fn broke(seg: &Segment, stats: &JournalStats, why: String) {
    tracing::error!("journal: {why}");
    stats.errors.fetch_add(1, Ordering::Relaxed);
    let _ = seg.broken.set(why);
}

fn sync(seg: &Segment, stats: &JournalStats) {
    let st = seg.state.lock().expect("segment state");
    let Some(f) = st.file.as_ref() else { return };
    let records = st.written_records;
    let t = Instant::now();
    let r = f.sync_data();
    if r.is_ok() {
        seg.synced.fetch_max(records, Ordering::Release);
    }
    let ns = t.elapsed().as_nanos() as u64;
    drop(st);
    stats.syncs.fetch_add(1, Ordering::Relaxed);
    stats.sync_nanos.fetch_add(ns, Ordering::Relaxed);
    stats.max_sync_nanos.fetch_max(ns, Ordering::Relaxed);
    if let Err(e) = r {
        broke(seg, stats, format!("syncing {}: {e}", seg.path.display()));
    }
}

fn seal(seg: &Arc<Segment>, after: After, stats: &JournalStats, hook: &OnceLock<FailureHook>, replica: &OnceLock<ReplicaHook>) {
    write_pending(seg, stats, replica);
    sync(seg, stats);
    seg.state.lock().expect("segment state").file = None;
    match after {
        After::Nothing => {}
        After::Discard => {
            let _ = std::fs::remove_file(&seg.path);
        }
        After::Prune(keep) => {
            if let Some(dir) = seg.path.parent()
                && let Ok(all) = segments(dir)
            {
                // `all` ends with the segment just sealed (the next one is
                // not created yet, or is newer); keep `keep` of them.
                let older = all.iter().take_while(|p| **p != seg.path).count();
                for p in all.iter().take(older.saturating_sub(keep.saturating_sub(1))) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        After::Failed { address, module, step, failure } => {
            let dir = seg.path.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut kept = segments(&dir).unwrap_or_default();
            // Segments after this one (none should exist) are not its story.
            if let Some(i) = kept.iter().position(|p| *p == seg.path) {
                kept.truncate(i + 1);
            }
            let failed = FailedReactor { address, module, step, failure, segments: kept };
            match hook.get() {
                Some(h) => h(&failed),
                None => tracing::info!(reactor = %address, "journaled reactor failed at step {step}; its journal is in {}", dir.display()),
            }
        }
    }
}

fn wake(wakers: &Mutex<Vec<Waker>>) {
    for w in wakers.lock().expect("wakers").iter() {
        w();
    }
}

fn writer(
    rx: Receiver<Job>,
    stats: &JournalStats,
    hook: &OnceLock<FailureHook>,
    wakers: &Mutex<Vec<Waker>>,
    lazy: &Mutex<Vec<Arc<Segment>>>,
    replica: &OnceLock<ReplicaHook>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut round: Vec<Job> = Vec::new();
    let mut to_sync: Vec<Arc<Segment>> = Vec::new();
    // When the lazy segments are due to be written.
    let mut lazy_due: Option<Instant> = None;
    let write_lazy = |stats: &JournalStats| {
        let segs = std::mem::take(&mut *lazy.lock().expect("lazy segments"));
        let mut wrote = false;
        for seg in segs {
            wrote |= write_pending(&seg, stats, replica);
        }
        wrote
    };
    loop {
        let first = match lazy_due {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match first {
            Ok(j) => round.push(j),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                write_lazy(stats);
                return;
            }
        }
        while let Ok(j) = rx.try_recv() {
            round.push(j);
        }
        let mut wrote = false;
        for job in round.drain(..) {
            match job {
                Job::Tick => {
                    lazy_due.get_or_insert_with(|| Instant::now() + WRITTEN_GAP);
                }
                Job::Flush(seg) => {
                    if write_pending(&seg, stats, replica) {
                        wrote = true;
                        if seg.level >= Level::Synced && !to_sync.iter().any(|s| Arc::ptr_eq(s, &seg)) {
                            to_sync.push(seg);
                        }
                    }
                }
                Job::Seal(seg, after) => {
                    to_sync.retain(|s| !Arc::ptr_eq(s, &seg));
                    seal(&seg, after, stats, hook, replica);
                    wake(wakers);
                }
                Job::Barrier(done) => {
                    wrote |= write_lazy(stats);
                    lazy_due = None;
                    let synced = !to_sync.is_empty();
                    for s in to_sync.drain(..) {
                        sync(&s, stats);
                    }
                    if synced {
                        wake(wakers);
                    }
                    let _ = done.send(());
                }
            }
        }
        if lazy_due.is_some_and(|d| Instant::now() >= d) {
            wrote |= write_lazy(stats);
            lazy_due = None;
        }
        if !to_sync.is_empty() {
            for s in to_sync.drain(..) {
                sync(&s, stats);
            }
            wake(wakers);
        }
        if wrote {
            stats.rounds.fetch_add(1, Ordering::Relaxed);
        }
    }
}
