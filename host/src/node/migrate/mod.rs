//! Live migration: moving a running reactor to another node, with its
//! address.
//!
//! # The protocol (source S, target T; steps in [`wire`])
//! 1. S snapshots the reactor copy-on-write (it keeps running, its writes
//!    tracked) and offers it to T: ABI version, module hash, memory size.
//!    T refuses a different ABI, memory it cannot hold, or an address it
//!    has live; nothing stopped yet. T asks for the module's bytes only if
//!    it lacks them.
//! 2. Pre-copy: layer 0 (every page) goes over, then rounds of the pages
//!    written meanwhile, each a delta on the one before, while the last
//!    round is larger than [`SMALL_ENOUGH`], shrank by at least a fifth
//!    ([`SHRINK`]) and fewer than [`MAX_ROUNDS`] ran. T acknowledges what it
//!    wrote ([`WINDOW`] bytes may be in flight). Everything travels on the
//!    `migration` channel, which ordinary messages never use.
//! 3. S records its intent durably (`<data-dir>/moves`), then stops the
//!    reactor at a message boundary: the last layer holds its last dirty
//!    pages, globals, queued messages and outstanding requests; messages
//!    for it from then on are held at S in arrival order.
//!    S also sends a flush down every lane to every node
//!    ([`reactor_transport::Transport::flush`]) and waits for every answer
//!    before the commit: what the reactor sent from S is taken in
//!    everywhere before it sends anything from T.
//! 4. S sends `Commit` right behind the last layer (one lane: T takes them
//!    in order), without waiting for T's acknowledgements of it; T has
//!    opened each layer as it completed, checks the chain (`Ready`, or
//!    `Failed`, which gives the reactor back to S), restores it (lazily)
//!    and says `Active`. S then records the move, forwards what it
//!    held and everything that comes later, in order, and tells every node
//!    where the reactor lives (`reactor_transport::Transport::announce_moved`;
//!    senders switch paths behind fences, so per-sender order holds).
//!
//! Before `Commit` any failure (T refuses, fails, dies, or the link breaks
//! for [`PATIENCE`]) gives the reactor back to S from its in-memory layers
//! with the held messages after its own: nothing lost. After `Commit`, S
//! asks T until it answers: `Active` completes the move, anything else
//! gives it back. A node restarted with an intent asks the same way before
//! the reactor runs anywhere. Only the node where a reactor lives moves it,
//! one move at a time ([`MigrateError::AlreadyMoving`]); a request made on
//! another node is passed there.
//!
//! Layers are spooled as snapshot files in a private directory on tmpfs
//! (`/dev/shm`, else the data directory).

pub mod wire;

use crate::node::durable::{self, Checkpoints};
use reactor_net::NodeId;
use reactor_runtime::snapshot::{Capture, Checkpoint, Kind, RestoreOptions, SnapshotError, SnapshotFile, SnapshotOptions};
use reactor_runtime::{Address, Envelope, KIND_NODE, ModuleHash, ReactorState, Runtime, abi};
use reactor_transport::Transport;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wire::{CHUNK, Standing, Step};

/// The transport channel migrations travel on.
pub const CHANNEL: &str = "migration";
/// Pre-copy rounds at most (after the first, full layer).
pub const MAX_ROUNDS: u32 = 8;
/// A round this small (bytes of pages) ends pre-copy.
pub const SMALL_ENOUGH: u64 = 256 << 10;
/// A round must be below this fraction of the one before to go on.
pub const SHRINK: f64 = 0.8;
/// Bytes sent but not acknowledged, at most.
pub const WINDOW: u64 = 32 << 20;
/// How long the source waits for any answer of the target before it gives
/// up (before the commit) or starts asking (after).
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How long the source waits for every node to take in what the stopped
/// reactor sent before it commits the move (a flush down every lane; a
/// slow link with deep queues needs a while).
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(2);
/// An incoming migration nobody spoke of for this long is dropped.
const INCOMING_IDLE: Duration = Duration::from_secs(120);
/// The file of a node's moves in its data directory.
pub const MOVES: &str = "moves";

/// Why a migration did not happen. Unless it says otherwise the reactor
/// runs where it was, with nothing lost.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// No such live reactor here, and no other node known to run it.
    #[error("reactor {0} does not run on this node")]
    NotHere(Address),
    /// A migration of it is under way already.
    #[error("reactor {0} is being moved already")]
    AlreadyMoving(Address),
    /// It runs on the node named already.
    #[error("reactor {0} runs on node {1} already")]
    AlreadyThere(Address, NodeId),
    /// No live node with that id.
    #[error("node {0} is not a live member of the cluster")]
    NoSuchNode(NodeId),
    /// The target said no (before anything stopped).
    #[error("node {node} refused reactor {address}: {reason}")]
    Refused {
        /// The reactor.
        address: Address,
        /// The target.
        node: NodeId,
        /// Its reason.
        reason: String,
    },
    /// The target did not answer, or the link broke; the reactor runs here.
    #[error("moving reactor {address} to node {node} failed: {why}; it runs here still")]
    GaveUp {
        /// The reactor.
        address: Address,
        /// The target.
        node: NodeId,
        /// What happened.
        why: String,
    },
    /// After the commit the target could not be reached: the reactor is
    /// held here (its messages kept) until it answers.
    #[error("reactor {address} was committed to node {node}, which has not answered; its messages are held here until it does")]
    Undecided {
        /// The reactor.
        address: Address,
        /// The target.
        node: NodeId,
    },
    /// Taking or restoring its state failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A file could not be written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The node that runs it answered a passed-on request with this.
    #[error("{0}")]
    Remote(String),
}

/// Settings of one migration.
#[derive(Clone, Copy, Debug)]
pub struct MigrateOptions {
    /// Pre-copy rounds while the reactor runs (else stop-and-copy: the
    /// reactor stops, then all of it goes).
    pub precopy: bool,
    /// Rounds at most.
    pub max_rounds: u32,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self { precopy: true, max_rounds: MAX_ROUNDS }
    }
}

/// How far a migration got (for progress lines).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Progress {
    /// `precopy`, `stop`, `switch`.
    pub phase: &'static str,
    /// The layer being sent (0: full).
    pub layer: u32,
    /// Bytes of that layer sent.
    pub sent: u64,
    /// Its length.
    pub total: u64,
    /// Bytes sent in all.
    pub bytes: u64,
}

/// What a migration did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The reactor.
    pub address: String,
    /// From this node.
    pub from: NodeId,
    /// To this one.
    pub to: NodeId,
    /// Pre-copy rounds after the full layer.
    pub rounds: u32,
    /// Bytes of snapshot files (and module) sent.
    pub bytes: u64,
    /// Bytes of the last layer (sent while the reactor was stopped).
    pub last_bytes: u64,
    /// The module's bytes went too.
    pub module_sent: bool,
    /// From the call to the end.
    pub total_ms: f64,
    /// Pre-copy (until the reactor stopped).
    pub precopy_ms: f64,
    /// The reactor stopped here → the target said it runs there.
    pub downtime_ms: f64,
    /// The target's restore.
    pub restore_ms: f64,
    /// Where the downtime went: the reactor stopped and its last layer
    /// taken, spooled, sent, the flush answered by every node, committed
    /// and restored (`Active`).
    pub stop_parts_ms: [f64; 5],
    /// Everything it sent before it stopped was taken in by every node (a
    /// flush down every lane answered) before it ran at the target; false:
    /// the wait for that passed [`FLUSH_PATIENCE`].
    pub flushed: bool,
    /// The last layer was taken whole while the reactor was stopped:
    /// stop-and-copy was asked for, or page tracking was lost during the
    /// pre-copy (e.g. at the kernel's limit of mappings).
    #[serde(default)]
    pub whole_at_stop: bool,
    /// Messages held here while it moved, forwarded after.
    pub held: u64,
    /// Nodes told where it lives.
    pub told: usize,
}

/// What [`Hub::rebalance`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rebalanced {
    /// (node, live reactors) before, this node first.
    pub before: Vec<(NodeId, u64)>,
    /// And after.
    pub after: Vec<(NodeId, u64)>,
    /// The moves made.
    pub moves: Vec<Report>,
    /// Moves that did not happen, and why (those reactors run here still).
    pub failed: Vec<String>,
}

/// A move this node recorded: an intent (the reactor stopped here to go
/// to `to`) or a move done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The migration.
    pub id: u64,
    /// The reactor.
    pub address: Address,
    /// Where it went.
    pub to: NodeId,
    /// Its move count there.
    pub epoch: u64,
    /// Done (else only intended).
    pub done: bool,
}

/// Reads `<data-dir>/moves`: the header, then `<id hex> <address tag> <to>
/// <epoch> intent|moved` per line. A damaged file is an error (a node
/// that forgot a move could run a reactor twice).
pub fn read_moves(data_dir: &Path) -> Result<Vec<Move>, String> {
    let path = data_dir.join(MOVES);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = match reactor_runtime::local_fs::read_file(&path, "the record of moves", 16 << 20, reactor_runtime::local_fs::Access::Private) {
        Ok((b, _)) => String::from_utf8(b).map_err(|_| format!("{} is not text", path.display()))?,
        Err(e) => return Err(e.to_string()),
    };
    let mut lines = text.lines();
    if lines.next() != Some(MOVES_HEADER) {
        return Err(format!("{}: no header line", path.display()));
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            let bad = || format!("{} line {}: not `<id> <address> <node> <epoch> intent|moved`", path.display(), i + 2);
            let f: Vec<&str> = l.split(' ').collect();
            let [id, address, to, epoch, state] = f.as_slice() else { return Err(bad()) };
            let address = Address(address.parse().map_err(|_| bad())?);
            if !address.is_reactor() {
                return Err(bad());
            }
            Ok(Move {
                id: u64::from_str_radix(id, 16).map_err(|_| bad())?,
                address,
                to: to.parse().ok().filter(|n| (1..=reactor_types::address::MAX_NODE).contains(n)).ok_or_else(bad)?,
                epoch: epoch.parse().map_err(|_| bad())?,
                done: match *state {
                    "moved" => true,
                    "intent" => false,
                    _ => return Err(bad()),
                },
            })
        })
        .collect()
}

const MOVES_HEADER: &str = "# reactor host moves v1";

fn write_moves(data_dir: &Path, moves: &[Move]) -> Result<(), MigrateError> {
    let mut text = String::from(MOVES_HEADER);
    text.push('\n');
    for m in moves {
        text.push_str(&format!(
            "{:x} {} {} {} {}\n",
            m.id,
            m.address.0,
            m.to,
            m.epoch,
            if m.done { "moved" } else { "intent" }
        ));
    }
    durable::write_durably(data_dir, MOVES, text.as_bytes())
        .map_err(|w| MigrateError::Io { op: w.op, path: w.path, source: w.source })
}

/// An incoming migration (this node the target).
struct Incoming {
    from: NodeId,
    address: Address,
    epoch: u64,
    module: ModuleHash,
    module_bytes: Option<Vec<u8>>,
    layers: Vec<PathBuf>,
    /// The layers received whole, opened as each completed (so the commit
    /// does not read their headers while the reactor is stopped).
    opened: Vec<SnapshotFile>,
    open: Option<(u32, fs::File, u64)>,
    ready: bool,
    standing: Standing,
    touched: Instant,
    /// Its journal level at the source (journaled here too, from the
    /// checkpoint right after it arrives).
    journal: Option<journal_format::Level>,
}

/// A node's migrations: both ends. See the module docs.
pub struct Hub {
    /// Itself, for the threads it starts.
    this: std::sync::Weak<Hub>,
    me: NodeId,
    data_dir: PathBuf,
    spool: PathBuf,
    runtime: Arc<Runtime>,
    transport: Transport,
    checkpoints: Arc<Mutex<Checkpoints>>,
    /// Reactors being moved from here now.
    moving: Mutex<HashSet<Address>>,
    /// Reactors that asked to be moved, whose move has not started.
    asked: Mutex<HashSet<Address>>,
    /// Migrations from here waiting for answers, by id.
    waiters: Mutex<HashMap<u64, Sender<(NodeId, Step)>>>,
    /// Steps for the target side's worker.
    work: SyncSender<(NodeId, Step)>,
    /// The moves file's content.
    moves: Mutex<Vec<Move>>,
    /// Where finished outgoing migrations stand (for a target's query).
    decided: Mutex<HashMap<u64, Standing>>,
    counters: Mutex<Counters>,
    /// Take a checkpoint of the node soon after a reactor moved in (the
    /// node checkpoints periodically; without, it keeps reactors as of its
    /// stop only, and one that moved in is not in any checkpoint until
    /// then).
    checkpoint_after_move_in: bool,
}

/// Figures for status.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Reactors moved from here.
    pub moved_out: u64,
    /// Reactors taken in.
    pub moved_in: u64,
    /// Migrations from here that did not happen.
    pub failed_out: u64,
    /// Incoming ones refused or failed.
    pub refused_in: u64,
    /// Seconds the moves from here took, in all (call to end).
    pub seconds_out: f64,
    /// Seconds those reactors were stopped, in all (downtime).
    pub downtime_seconds: f64,
    /// The last move's downtime, in seconds.
    pub last_downtime_seconds: f64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("me", &self.me).finish()
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MigrateError {
    let path = path.to_owned();
    move |source| MigrateError::Io { op, path, source }
}

/// A private spool directory for this node's layers: on tmpfs if there is
/// one, else in the data directory. Emptied at start.
fn spool_dir(data_dir: &Path, me: NodeId) -> Result<PathBuf, MigrateError> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        let uid = fs::metadata(data_dir).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0);
        shm.join(format!("reactor-host-{uid}-{me}-{}", std::process::id()))
    } else {
        data_dir.join("spool")
    };
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new().mode(0o700).recursive(true).create(&dir).map_err(io_err("create", &dir))?;
    Ok(dir)
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system's random source");
    u64::from_le_bytes(b) | 1
}

impl Hub {
    /// The hub of a node whose runtime and transport run; starts the
    /// target side's worker thread. Reads nothing: see [`Hub::recover`].
    pub fn start(
        me: NodeId,
        data_dir: &Path,
        runtime: Arc<Runtime>,
        transport: Transport,
        checkpoints: Arc<Mutex<Checkpoints>>,
        moves: Vec<Move>,
        checkpoint_after_move_in: bool,
    ) -> Result<Arc<Self>, MigrateError> {
        let spool = spool_dir(data_dir, me)?;
        let (work, rx) = mpsc::sync_channel(256);
        let hub = Arc::new_cyclic(|this| Self {
            this: this.clone(),
            me,
            data_dir: data_dir.to_owned(),
            spool,
            runtime,
            transport,
            checkpoints,
            moving: Mutex::new(HashSet::new()),
            asked: Mutex::new(HashSet::new()),
            waiters: Mutex::new(HashMap::new()),
            work,
            moves: Mutex::new(moves),
            decided: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
            checkpoint_after_move_in,
        });
        let weak = Arc::downgrade(&hub);
        std::thread::Builder::new()
            .name("migrate-in".into())
            .spawn(move || target_worker(weak, rx))
            .map_err(io_err("start the migration thread for", data_dir))?;
        Ok(hub)
    }

    /// Figures for status.
    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap()
    }

    /// A step that arrived from node `from` (on a transport thread: never
    /// blocks). `Err` when the worker's queue is full (the transport
    /// holds the message and tries again).
    pub fn deliver(&self, from: NodeId, step: Step) -> Result<(), Step> {
        match &step {
            Step::Accepted { .. }
            | Step::Refused { .. }
            | Step::Got { .. }
            | Step::Ready { .. }
            | Step::Active { .. }
            | Step::Failed { .. }
            | Step::Stands { .. }
            | Step::LoadIs { .. }
            | Step::Outcome { .. } => {
                if let Some(w) = self.waiters.lock().unwrap().get(&step.id()) {
                    let _ = w.send((from, step));
                }
                Ok(())
            }
            _ => match self.work.try_send((from, step)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full((_, s)) | TrySendError::Disconnected((_, s))) => Err(s),
            },
        }
    }

    fn send(&self, to: NodeId, id: u64, step: &Step) -> Result<(), String> {
        let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(self.me), corr: 0, payload: wire::encode(step) };
        self.transport.send_on(CHANNEL, to, Address::host_of(to), env, id).map_err(|e| format!("cannot reach node {to}: {e}"))
    }

    /// Moves the live reactor `address` to node `to` (see the module docs);
    /// `progress` hears how far it got. If the reactor lives on another
    /// node, the request is passed there (and no progress is heard).
    pub fn migrate(
        &self,
        address: Address,
        to: NodeId,
        options: MigrateOptions,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Report, MigrateError> {
        self.migrate_hops(address, to, options, progress, 0)
    }

    fn migrate_hops(
        &self,
        address: Address,
        to: NodeId,
        options: MigrateOptions,
        progress: &mut dyn FnMut(&Progress),
        hops: u8,
    ) -> Result<Report, MigrateError> {
        if !address.is_reactor() {
            return Err(MigrateError::NotHere(address));
        }
        let here = self.runtime.state(address) == Some(ReactorState::Running);
        if !here {
            let (node, _) = self.transport.location(address);
            if node == self.me || hops >= 3 {
                return Err(MigrateError::NotHere(address));
            }
            if node == to {
                return Err(MigrateError::AlreadyThere(address, to));
            }
            return self.ask(node, address, to, options, hops);
        }
        if to == self.me {
            return Err(MigrateError::AlreadyThere(address, to));
        }
        if !self.transport.members().iter().any(|m| m.info.id == to && m.up) {
            return Err(MigrateError::NoSuchNode(to));
        }
        if !self.moving.lock().unwrap().insert(address) {
            return Err(MigrateError::AlreadyMoving(address));
        }
        let id = random_id();
        let (tx, rx) = mpsc::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        let r = self.move_out(id, address, to, options, progress, &rx);
        self.waiters.lock().unwrap().remove(&id);
        self.moving.lock().unwrap().remove(&address);
        let mut c = self.counters.lock().unwrap();
        match &r {
            Ok(report) => {
                c.moved_out += 1;
                c.seconds_out += report.total_ms / 1e3;
                c.downtime_seconds += report.downtime_ms / 1e3;
                c.last_downtime_seconds = report.downtime_ms / 1e3;
            }
            Err(_) => c.failed_out += 1,
        }
        r
    }

    /// The reactors being moved from this node now.
    pub fn moving(&self) -> Vec<Address> {
        self.moving.lock().unwrap().iter().copied().collect()
    }

    /// Marks `address` as about to be moved (false if it is being moved
    /// already): a reactor that asks again and again starts one move.
    pub fn claim(&self, address: Address) -> bool {
        self.asked.lock().unwrap().insert(address) && !self.moving.lock().unwrap().contains(&address)
    }

    /// Ends [`Hub::claim`] (its move starts now, or will not).
    pub fn release(&self, address: Address) {
        self.asked.lock().unwrap().remove(&address);
    }

    /// Passes a migration request to `node`, where `address` lives.
    fn ask(&self, node: NodeId, address: Address, to: NodeId, options: MigrateOptions, hops: u8) -> Result<Report, MigrateError> {
        let id = random_id();
        let (tx, rx) = mpsc::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        let step = Step::Please { id, address: address.0, to, precopy: options.precopy, hops: hops + 1 };
        let r = self.send(node, id, &step).map_err(MigrateError::Remote).and_then(|()| {
            // A migration of a large reactor over a slow link takes a while.
            match rx.recv_timeout(Duration::from_secs(3600)) {
                Ok((_, Step::Outcome { result: Ok(json), .. })) => {
                    serde_json::from_str::<Report>(&json).map_err(|e| MigrateError::Remote(e.to_string()))
                }
                Ok((_, Step::Outcome { result: Err(e), .. })) => Err(MigrateError::Remote(e)),
                Ok(_) => Err(MigrateError::Remote("an unexpected answer".into())),
                Err(_) => Err(MigrateError::Remote(format!("node {node} did not answer"))),
            }
        });
        self.waiters.lock().unwrap().remove(&id);
        r
    }

    /// Waits for the target's next answer to migration `id`.
    fn answer(&self, rx: &Receiver<(NodeId, Step)>, to: NodeId, patience: Duration) -> Result<Step, String> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((from, step)) if from == to => return Ok(step),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(format!("node {to} did not answer for {patience:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err("the node is stopping".into()),
            }
        }
    }

    /// Sends the file `path` as layer `layer`, within the window.
    #[allow(clippy::too_many_arguments)]
    fn send_layer(
        &self,
        id: u64,
        to: NodeId,
        layer: u32,
        path: &Path,
        last: bool,
        rx: &Receiver<(NodeId, Step)>,
        bytes: &mut u64,
        progress: &mut dyn FnMut(&Progress),
        phase: &'static str,
    ) -> Result<u64, String> {
        let file = fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let total = file.metadata().map_err(|e| e.to_string())?.len();
        let mut sent = 0u64;
        let mut acked = 0u64;
        let mut buf = vec![0u8; CHUNK];
        let mut pieces = 0u64;
        // The last layer: the commit follows it on the same lane, so its
        // acknowledgements are not waited for.
        while sent < total || !last && acked < total {
            while sent < total && sent - acked < WINDOW {
                let n = (total - sent).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..n], sent).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let step = Step::Layer { id, layer, offset: sent, total, last, bytes: buf[..n].to_vec() };
                self.send(to, id, &step)?;
                sent += n as u64;
                *bytes += n as u64;
                pieces += 1;
                if pieces.is_multiple_of(16) || sent == total {
                    progress(&Progress { phase, layer, sent, total, bytes: *bytes });
                }
            }
            if last && sent == total {
                break;
            }
            match self.answer(rx, to, PATIENCE)? {
                Step::Got { layer: l, upto, .. } if l == layer => acked = acked.max(upto.min(total)),
                Step::Got { .. } => {}
                Step::Failed { reason, .. } | Step::Refused { reason, .. } => return Err(reason),
                other => return Err(format!("node {to} answered {other:?} while receiving")),
            }
        }
        Ok(total)
    }

    fn layer_path(&self, id: u64, layer: u32) -> PathBuf {
        self.spool.join(format!("out-{id:016x}-{layer}.snap"))
    }

    fn move_out(
        &self,
        id: u64,
        address: Address,
        to: NodeId,
        options: MigrateOptions,
        progress: &mut dyn FnMut(&Progress),
        rx: &Receiver<(NodeId, Step)>,
    ) -> Result<Report, MigrateError> {
        let started = Instant::now();
        let gave_up = |why: String| MigrateError::GaveUp { address, node: to, why };
        // No checkpoint of the node in between: it would re-base the
        // tracked pages the rounds are deltas of.
        let _no_checkpoints = self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = self.transport.location(address).1 + 1;
        let mut files: Vec<PathBuf> = Vec::new();
        let cleanup = |files: &[PathBuf]| {
            for f in files {
                let _ = fs::remove_file(f);
            }
        };
        let mut chain: Vec<Checkpoint> = Vec::new();
        // Round 0 (pre-copy: copy-on-write, tracked) before the offer: its
        // memory size is the offer's.
        let first = if options.precopy {
            Some(self.runtime.snapshot(address, SnapshotOptions { capture: Capture::Concurrent, track: true, journal: false })?)
        } else {
            None
        };
        let memory = match &first {
            Some(cp) => cp.memory_bytes(),
            None => self.runtime.memory_size(address).unwrap_or(0) as u64,
        };
        let module = self.runtime.module_of(address).ok_or(MigrateError::NotHere(address))?;
        // A journaled reactor stays journaled at its level there.
        let journal = self.runtime.journal_level(address).map(|l| l as u32);
        let offer = Step::Offer { id, address: address.0, epoch, abi: abi::ABI_VERSION, module: module.0, memory, journal };
        self.send(to, id, &offer).map_err(gave_up)?;
        let need_module = match self.answer(rx, to, PATIENCE).map_err(gave_up)? {
            Step::Accepted { need_module, .. } => need_module,
            Step::Refused { reason, .. } => return Err(MigrateError::Refused { address, node: to, reason }),
            other => return Err(gave_up(format!("node {to} answered the offer with {other:?}"))),
        };
        let mut bytes = 0u64;
        if need_module {
            let path = self.data_dir.join(durable::MODULES).join(format!("{}.wasm", module.to_hex()));
            let code = fs::read(&path).map_err(io_err("read", &path))?;
            for (i, piece) in code.chunks(CHUNK).enumerate() {
                let step = Step::Module { id, offset: (i * CHUNK) as u64, total: code.len() as u64, bytes: piece.to_vec() };
                self.send(to, id, &step).map_err(gave_up)?;
            }
            bytes += code.len() as u64;
        }
        let abort = |why: String, files: &[PathBuf]| {
            let _ = self.send(to, id, &Step::Abort { id });
            cleanup(files);
            gave_up(why)
        };
        // Pre-copy.
        let mut rounds = 0u32;
        let mut whole_at_stop = !options.precopy;
        if let Some(cp) = first {
            let mut last_bytes = u64::MAX;
            let mut cp = cp;
            loop {
                let layer = chain.len() as u32;
                let path = self.layer_path(id, layer);
                let t = Instant::now();
                cp.write(&path, &mut |_, _| {}).map_err(|e| abort(e.to_string(), &files))?;
                let written = t.elapsed();
                files.push(path.clone());
                let this = cp.page_bytes();
                chain.push(cp);
                self.send_layer(id, to, layer, &path, false, rx, &mut bytes, progress, "precopy")
                    .map_err(|e| abort(e, &files))?;
                tracing::debug!(%address, layer, bytes = this, ?written, sent = ?t.elapsed() - written, "pre-copy layer");
                let shrinking = layer == 0 || (this as f64) < SHRINK * last_bytes as f64;
                if this <= SMALL_ENOUGH && layer > 0 || !shrinking || rounds >= options.max_rounds {
                    break;
                }
                last_bytes = this;
                cp = match self.runtime.snapshot(address, SnapshotOptions { capture: Capture::Incremental, track: true, journal: false }) {
                    Ok(cp) if cp.kind() == (Kind::Delta { base: chain.last().expect("a layer").id() }) => cp,
                    // Its writes are not tracked any more (page protection
                    // gave up, e.g. at the kernel's limit of mappings), or
                    // someone else re-based them: the last layer will be
                    // whole, taken while it is stopped.
                    Ok(_) | Err(SnapshotError::NoBase(_)) => {
                        whole_at_stop = true;
                        break;
                    }
                    Err(e) => return Err(abort(e.to_string(), &files)),
                };
                rounds += 1;
            }
        }
        // Intent, durably, before it stops.
        self.record(Move { id, address, to, epoch, done: false }).map_err(|e| abort(e.to_string(), &files))?;
        let precopy_ms = started.elapsed().as_secs_f64() * 1e3;
        let stopped = Instant::now();
        let capture = if whole_at_stop { Capture::Blocking } else { Capture::Incremental };
        let detached = match self.runtime.detach(address, SnapshotOptions { capture, track: false, journal: false }) {
            // Tracking lost since the last round: all of it, stopped.
            Err(SnapshotError::NoBase(_)) => {
                whole_at_stop = true;
                self.runtime.detach(address, SnapshotOptions { capture: Capture::Blocking, track: false, journal: false })
            }
            other => other,
        };
        let last = match detached {
            Ok(cp) => cp,
            Err(e) => {
                self.unrecord(id);
                return Err(abort(e.to_string(), &files));
            }
        };
        // Behind everything it sent: answered once every node took it in
        // (waited for before the commit, while the last layer goes).
        let flush = self.transport.flush();
        // From here on the reactor is stopped: any failure gives it back.
        let give_back = |why: String, chain: Vec<Checkpoint>, files: &[PathBuf]| -> MigrateError {
            let _ = self.send(to, id, &Step::Abort { id });
            // Forgets the flush (it stays here).
            self.transport.flush_wait(flush, Duration::ZERO);
            cleanup(files);
            self.unrecord(id);
            match self.runtime.reattach(address, chain) {
                Ok(()) => gave_up(why),
                Err(e) => {
                    tracing::error!(%address, "could not give reactor {address} back after a failed move: {e}");
                    MigrateError::GaveUp { address, node: to, why: format!("{why}; and giving it back failed: {e}") }
                }
            }
        };
        if !whole_at_stop
            && let Some(prev) = chain.last()
            && last.kind() != (Kind::Delta { base: prev.id() })
        {
            chain.push(last);
            return Err(give_back("its pages were snapshotted by someone else meanwhile".into(), chain, &files));
        }
        let mut parts = [0.0f64; 5];
        let mut lap = stopped;
        let mut split = |i: usize| {
            parts[i] = lap.elapsed().as_secs_f64() * 1e3;
            lap = Instant::now();
        };
        split(0);
        let layer = chain.len() as u32;
        let path = self.layer_path(id, layer);
        if let Err(e) = last.write(&path, &mut |_, _| {}) {
            chain.push(last);
            return Err(give_back(e.to_string(), chain, &files));
        }
        chain.push(last);
        files.push(path.clone());
        split(1);
        let last_bytes = match self.send_layer(id, to, layer, &path, true, rx, &mut bytes, progress, "stop") {
            Ok(n) => n,
            Err(e) => return Err(give_back(e, chain, &files)),
        };
        split(2);
        progress(&Progress { phase: "switch", layer, sent: last_bytes, total: last_bytes, bytes });
        // What it sent before it stopped reaches its destinations before
        // anything it sends from the target (bounded: a stuck peer delays
        // the move by at most this).
        let flushed = self.transport.flush_wait(flush, FLUSH_PATIENCE);
        split(3);
        // Commit, right behind the last layer (one lane, in order; the
        // target checks the chain first and fails the commit if it does
        // not hold): from now on only the target's answer decides. The
        // target may run it (and it may send from there) before its
        // answer is here.
        self.decided.lock().unwrap().insert(id, Standing::Active);
        self.transport.set_location(address, to, epoch);
        let _ = self.send(to, id, &Step::Commit { id });
        let restore_us = match self.await_outcome(id, to, rx) {
            Outcome::Active(us) => us,
            Outcome::NotThere(why) => {
                self.decided.lock().unwrap().insert(id, Standing::Failed);
                self.transport.set_location(address, self.me, epoch);
                return Err(give_back(why, chain, &files));
            }
            Outcome::Silent => {
                // Held here; a thread keeps asking.
                cleanup(&files);
                self.keep_asking(id, address, to, chain);
                return Err(MigrateError::Undecided { address, node: to });
            }
        };
        split(4);
        let downtime_ms = stopped.elapsed().as_secs_f64() * 1e3;
        let (held, told) = self.switch(id, address, to, epoch);
        cleanup(&files);
        Ok(Report {
            address: address.to_string(),
            from: self.me,
            to,
            rounds,
            bytes,
            last_bytes,
            module_sent: need_module,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
            precopy_ms,
            downtime_ms,
            restore_ms: restore_us as f64 / 1e3,
            stop_parts_ms: parts,
            flushed,
            whole_at_stop,
            held,
            told,
        })
    }

    /// After the commit: waits for `Active` or `Failed`, asking while the
    /// target is silent, for up to [`PATIENCE`] in all.
    fn await_outcome(&self, id: u64, to: NodeId, rx: &Receiver<(NodeId, Step)>) -> Outcome {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.answer(rx, to, Duration::from_secs(2)) {
                Ok(Step::Active { restore_us, .. }) => return Outcome::Active(restore_us),
                Ok(Step::Failed { reason, .. }) => return Outcome::NotThere(reason),
                Ok(Step::Stands { standing: Standing::Active, .. }) => return Outcome::Active(0),
                Ok(Step::Stands { standing: Standing::Unknown | Standing::Failed, .. }) => {
                    return Outcome::NotThere(format!("node {to} does not run it"));
                }
                Ok(Step::Stands { standing: Standing::Receiving, .. }) => {
                    // The commit may have been lost with a connection.
                    let _ = self.send(to, id, &Step::Commit { id });
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = self.send(to, id, &Step::Query { id });
                }
            }
        }
        Outcome::Silent
    }

    /// The move happened: where it lives, what was held forwarded, every
    /// node told, the move recorded. Returns (held, told).
    fn switch(&self, id: u64, address: Address, to: NodeId, epoch: u64) -> (u64, usize) {
        self.transport.set_location(address, to, epoch);
        let held = match self.runtime.forward_to(address, to) {
            Ok(n) => n as u64,
            Err(e) => {
                tracing::error!(%address, "could not forward what was held for {address}: {e}");
                0
            }
        };
        let told = self.transport.announce_moved(address, to, epoch);
        if let Err(e) = self.record(Move { id, address, to, epoch, done: true }) {
            tracing::error!(%address, "could not record the move of {address}: {e}");
        }
        (held, told)
    }

    /// A move committed whose target went silent: asks it until it
    /// answers, holding the reactor's messages meanwhile.
    fn keep_asking(&self, id: u64, address: Address, to: NodeId, chain: Vec<Checkpoint>) {
        let (tx, rx) = mpsc::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        let me = self.this.clone();
        let _ = std::thread::Builder::new().name("migrate-ask".into()).spawn(move || {
            let Some(hub) = me.upgrade() else { return };
            loop {
                let _ = hub.send(to, id, &Step::Query { id });
                match hub.answer(&rx, to, Duration::from_secs(2)) {
                    Ok(Step::Active { .. } | Step::Stands { standing: Standing::Active, .. }) => {
                        let epoch = hub.transport.location(address).1 + 1;
                        hub.switch(id, address, to, epoch);
                        break;
                    }
                    Ok(Step::Failed { .. } | Step::Stands { standing: Standing::Unknown | Standing::Failed, .. }) => {
                        hub.unrecord(id);
                        hub.transport.set_location(address, hub.me, hub.transport.location(address).1);
                        if let Err(e) = hub.runtime.reattach(address, chain) {
                            tracing::error!(%address, "could not give reactor {address} back: {e}");
                        }
                        break;
                    }
                    Ok(Step::Stands { standing: Standing::Receiving, .. }) => {
                        let _ = hub.send(to, id, &Step::Commit { id });
                    }
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
            hub.waiters.lock().unwrap().remove(&id);
        });
    }

    /// Records a move (replacing an intent of the same id).
    /// Records durably that `address`, which ran here, lives on node `to`
    /// at move count `epoch` now (another node took it over from its
    /// standby copy): a restart neither restores nor journals it here, and
    /// forwards what comes for it.
    pub fn record_away(&self, address: Address, to: NodeId, epoch: u64) -> Result<(), MigrateError> {
        self.record(Move { id: random_id(), address, to, epoch, done: true })
    }

    fn record(&self, m: Move) -> Result<(), MigrateError> {
        let mut moves = self.moves.lock().unwrap();
        moves.retain(|o| o.id != m.id && !(m.done && o.address == m.address));
        moves.push(m);
        write_moves(&self.data_dir, &moves)
    }

    /// Forgets the intent `id` (the reactor stays or came back here).
    fn unrecord(&self, id: u64) {
        let mut moves = self.moves.lock().unwrap();
        moves.retain(|o| o.id != id);
        if let Err(e) = write_moves(&self.data_dir, &moves) {
            tracing::error!("could not update {}: {e}", self.data_dir.join(MOVES).display());
        }
    }

    /// Forgets that `address` moved away (it is back here).
    pub(crate) fn arrived(&self, address: Address) {
        let mut moves = self.moves.lock().unwrap();
        let before = moves.len();
        moves.retain(|o| o.address != address);
        if moves.len() != before
            && let Err(e) = write_moves(&self.data_dir, &moves)
        {
            tracing::error!("could not update {}: {e}", self.data_dir.join(MOVES).display());
        }
    }

    /// After a restart: reactors that moved away are forwarded; intents
    /// (the node stopped during a move) are settled with their targets in
    /// the background, their reactors held until then and given back from
    /// `restore` (the node's own checkpoint chain) if the target never got
    /// them.
    pub fn recover(self: &Arc<Self>, restore: Arc<dyn Fn(Address) -> Result<(), String> + Send + Sync>) {
        let moves = self.moves.lock().unwrap().clone();
        for m in moves {
            if m.done {
                self.transport.set_location(m.address, m.to, m.epoch);
                if let Err(e) = self.runtime.set_moved(m.address, m.to) {
                    tracing::error!("cannot forward for {}: {e}", m.address);
                }
                continue;
            }
            if let Err(e) = self.runtime.hold(m.address) {
                tracing::error!("cannot hold messages for {}: {e}", m.address);
            }
            let hub = Arc::downgrade(self);
            let restore = restore.clone();
            let _ = std::thread::Builder::new().name("migrate-settle".into()).spawn(move || {
                let (tx, rx) = mpsc::channel();
                let Some(h) = hub.upgrade() else { return };
                h.waiters.lock().unwrap().insert(m.id, tx);
                drop(h);
                loop {
                    let Some(h) = hub.upgrade() else { return };
                    let _ = h.send(m.to, m.id, &Step::Query { id: m.id });
                    match h.answer(&rx, m.to, Duration::from_secs(2)) {
                        Ok(Step::Stands { standing: Standing::Active, .. } | Step::Active { .. }) => {
                            h.switch(m.id, m.address, m.to, m.epoch);
                            break;
                        }
                        Ok(Step::Stands { standing: Standing::Receiving, .. }) => {
                            h.decided.lock().unwrap().insert(m.id, Standing::Active);
                            let _ = h.send(m.to, m.id, &Step::Commit { id: m.id });
                        }
                        Ok(Step::Stands { standing: Standing::Unknown | Standing::Failed, .. } | Step::Failed { .. }) => {
                            h.unrecord(m.id);
                            if let Err(e) = restore(m.address) {
                                tracing::error!(address = %m.address, "could not restore a reactor whose move did not happen: {e}");
                            }
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(500)),
                    }
                }
                if let Some(h) = hub.upgrade() {
                    h.waiters.lock().unwrap().remove(&m.id);
                }
            });
        }
    }

    /// Sheds load: asks every live member how many reactors it runs, then
    /// moves reactors of this node, one at a time and largest last, to the
    /// least loaded member while this node runs more than its share (the
    /// cluster's reactors over its live nodes, rounded up). What moved, and
    /// the counts before and after (as this node saw them).
    pub fn rebalance(&self, progress: &mut dyn FnMut(&Progress)) -> Result<Rebalanced, MigrateError> {
        let members: Vec<NodeId> =
            self.transport.members().into_iter().filter(|m| m.up && m.info.id != self.me).map(|m| m.info.id).collect();
        let mut load: Vec<(NodeId, u64)> = vec![(self.me, self.runtime.live().len() as u64)];
        for m in members {
            let id = random_id();
            let (tx, rx) = mpsc::channel();
            self.waiters.lock().unwrap().insert(id, tx);
            let answer = self.send(m, id, &Step::Load { id }).and_then(|()| self.answer(&rx, m, Duration::from_secs(5)));
            self.waiters.lock().unwrap().remove(&id);
            match answer {
                Ok(Step::LoadIs { reactors, .. }) => load.push((m, reactors)),
                Ok(_) | Err(_) => tracing::warn!("node {m} did not say how loaded it is; leaving it out of the rebalance"),
            }
        }
        let before = load.clone();
        let total: u64 = load.iter().map(|(_, n)| n).sum();
        let share = total.div_ceil(load.len() as u64);
        // Smallest first: the most reactors moved for the bytes sent.
        let mut mine = self.runtime.live();
        mine.sort_by_key(|&(a, m)| (m, a));
        let mut moves = Vec::new();
        let mut failed = Vec::new();
        for (address, _) in mine {
            if load[0].1 <= share {
                break;
            }
            let Some((i, _)) = load.iter().enumerate().skip(1).min_by_key(|(_, (_, n))| *n) else { break };
            if load[i].1 + 1 > share {
                break;
            }
            let to = load[i].0;
            match self.migrate(address, to, MigrateOptions::default(), progress) {
                Ok(r) => {
                    load[0].1 -= 1;
                    load[i].1 += 1;
                    moves.push(r);
                }
                Err(e) => failed.push(format!("{address} → node {to}: {e}")),
            }
        }
        Ok(Rebalanced { before, after: load, moves, failed })
    }

    /// Reactors the record of moves names (moved away, or being moved
    /// when the node stopped): not to be restored at start.
    pub fn away(moves: &[Move]) -> HashSet<Address> {
        moves.iter().map(|m| m.address).collect()
    }

    fn reply(&self, to: NodeId, step: &Step) {
        if let Err(e) = self.send(to, step.id(), step) {
            tracing::debug!("could not answer node {to}: {e}");
        }
    }
}

enum Outcome {
    Active(u64),
    NotThere(String),
    Silent,
}


/// The chain from its last full layer on (a move whose tracking was lost
/// sends its last layer whole).
fn from_last_full(mut chain: Vec<SnapshotFile>) -> Vec<SnapshotFile> {
    if let Some(full) = chain.iter().rposition(|f| f.header().kind == Kind::Full) {
        chain.drain(..full);
    }
    chain
}

/// What a target knows of itself when it is offered a reactor.
#[derive(Clone, Copy, Debug)]
pub struct Here {
    /// Its ABI version.
    pub abi: u32,
    /// The most memory a reactor may have here.
    pub memory_cap: u64,
    /// Bytes free of its node budget.
    pub free: u64,
    /// A reactor with that address is live here already.
    pub live: bool,
}

/// Why a target refuses an offer of `address` (ABI version `abi`, `memory`
/// bytes of linear memory), if it does: checked before the source stops
/// anything.
pub fn refusal(here: &Here, address: Address, abi: u32, memory: u64) -> Option<String> {
    if abi != here.abi {
        return Some(format!("this node runs ABI version {}, the reactor ABI version {abi}", here.abi));
    }
    if !address.is_reactor() {
        return Some(format!("{address} is not a reactor's address"));
    }
    if here.live {
        return Some(format!("reactor {address} runs here already"));
    }
    if memory > here.memory_cap {
        return Some(format!(
            "it has {} MiB of memory and reactors here may have at most {} MiB",
            memory.div_ceil(1 << 20),
            here.memory_cap >> 20
        ));
    }
    if memory > here.free {
        return Some(format!(
            "it needs {} MiB of memory and this node has {} MiB free of its budget",
            memory.div_ceil(1 << 20),
            here.free >> 20
        ));
    }
    None
}

/// The target side: one thread takes every incoming step in order.
fn target_worker(hub: std::sync::Weak<Hub>, rx: Receiver<(NodeId, Step)>) {
    let mut incoming: HashMap<u64, Incoming> = HashMap::new();
    loop {
        let msg = rx.recv_timeout(Duration::from_secs(1));
        let Some(hub) = hub.upgrade() else { return };
        match msg {
            Ok((from, step)) => hub.take(from, step, &mut incoming),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        incoming.retain(|id, m| {
            let keep = m.standing == Standing::Active || m.touched.elapsed() < INCOMING_IDLE;
            if !keep {
                tracing::warn!(id, address = %m.address, "dropped an incoming migration nobody spoke of for {INCOMING_IDLE:?}");
                for f in &m.layers {
                    let _ = fs::remove_file(f);
                }
            }
            keep
        });
    }
}

impl Hub {
    /// One incoming step (on the worker thread).
    fn take(self: &Arc<Self>, from: NodeId, step: Step, incoming: &mut HashMap<u64, Incoming>) {
        let id = step.id();
        match step {
            Step::Offer { id, address, epoch, abi: their_abi, module, memory, journal } => {
                let address = Address(address);
                let budget = self.runtime.budget();
                let here = Here {
                    abi: abi::ABI_VERSION,
                    memory_cap: self.runtime.limits().memory_cap as u64,
                    free: budget.limit().saturating_sub(budget.used()) as u64,
                    live: self.runtime.state(address) == Some(ReactorState::Running),
                };
                if let Some(reason) = refusal(&here, address, their_abi, memory) {
                    self.counters.lock().unwrap().refused_in += 1;
                    return self.reply(from, &Step::Refused { id, reason });
                }
                let journal = match journal.map(|c| journal_format::Level::from_code(c).ok_or(c)) {
                    None => None,
                    Some(Ok(level)) => Some(level),
                    Some(Err(c)) => return self.reply(from, &Step::Refused { id, reason: format!("an unknown journal level {c}") }),
                };
                let module = ModuleHash(module);
                let need_module = self.runtime.engine().module(&module).is_none() && !self.load_known(&module);
                incoming.insert(
                    id,
                    Incoming {
                        from,
                        address,
                        epoch,
                        module,
                        module_bytes: need_module.then(Vec::new),
                        layers: Vec::new(),
                        opened: Vec::new(),
                        open: None,
                        ready: false,
                        standing: Standing::Receiving,
                        touched: Instant::now(),
                        journal,
                    },
                );
                self.reply(from, &Step::Accepted { id, need_module });
            }
            Step::Module { offset, total, bytes, .. } => {
                let Some(m) = incoming.get_mut(&id).filter(|m| m.from == from) else { return };
                m.touched = Instant::now();
                let Some(code) = m.module_bytes.as_mut() else { return };
                if offset != code.len() as u64 || total > reactor_runtime::Engine::MAX_MODULE_FILE {
                    return self.fail_incoming(incoming, id, "module bytes out of order or too large".into());
                }
                code.extend_from_slice(&bytes);
                if code.len() as u64 == total {
                    let code = m.module_bytes.take().unwrap_or_default();
                    let hash = m.module;
                    if let Err(e) = durable::load_and_keep(&self.data_dir, self.runtime.engine(), &hash, &code) {
                        self.fail_incoming(incoming, id, e);
                    }
                }
            }
            Step::Layer { layer, offset, total, last, bytes, .. } => {
                let Some(m) = incoming.get_mut(&id).filter(|m| m.from == from && m.standing == Standing::Receiving) else {
                    return;
                };
                m.touched = Instant::now();
                if m.module_bytes.is_some() {
                    return self.fail_incoming(incoming, id, "a layer before the module".into());
                }
                if m.open.as_ref().is_none_or(|(l, _, _)| *l != layer) {
                    if offset != 0 || layer as usize != m.layers.len() {
                        return self.fail_incoming(incoming, id, format!("layer {layer} out of order"));
                    }
                    let path = self.spool.join(format!("in-{id:016x}-{layer}.snap"));
                    let file = match fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path) {
                        Ok(f) => f,
                        Err(e) => return self.fail_incoming(incoming, id, format!("cannot create {}: {e}", path.display())),
                    };
                    m.layers.push(path);
                    m.open = Some((layer, file, 0));
                }
                let Some((_, file, written)) = m.open.as_mut() else { return };
                if offset != *written {
                    return self.fail_incoming(incoming, id, format!("layer {layer} bytes out of order"));
                }
                if let Err(e) = file.write_all_at(&bytes, offset) {
                    return self.fail_incoming(incoming, id, format!("cannot write layer {layer}: {e}"));
                }
                *written += bytes.len() as u64;
                let upto = *written;
                self.reply(from, &Step::Got { id, layer, upto });
                if upto == total {
                    m.open = None;
                    let path = m.layers.last().expect("the layer being written");
                    match SnapshotFile::open(path, abi::ABI_VERSION) {
                        Ok(f) => m.opened.push(f),
                        Err(e) => return self.fail_incoming(incoming, id, format!("layer {layer}: {e}")),
                    }
                    if last {
                        match self.check_chain(m) {
                            Ok(()) => {
                                m.ready = true;
                                self.reply(from, &Step::Ready { id });
                            }
                            Err(e) => self.fail_incoming(incoming, id, e),
                        }
                    }
                }
            }
            Step::Commit { .. } => {
                let Some(m) = incoming.get_mut(&id).filter(|m| m.from == from) else {
                    return self.reply(from, &Step::Stands { id, standing: Standing::Unknown });
                };
                m.touched = Instant::now();
                match m.standing {
                    Standing::Active => return self.reply(from, &Step::Active { id, restore_us: 0 }),
                    Standing::Failed => return self.reply(from, &Step::Failed { id, reason: "it failed here".into() }),
                    _ if !m.ready => return self.reply(from, &Step::Stands { id, standing: Standing::Receiving }),
                    _ => {}
                }
                let started = Instant::now();
                let (address, epoch) = (m.address, m.epoch);
                // This node's own earlier messages to it are on the way to
                // the source: what it sends now waits for them.
                self.runtime.arriving(address);
                self.runtime.adopt(address);
                self.transport.arrive(address, from, epoch);
                let chain = from_last_full(std::mem::take(&mut m.opened));
                // Taken at the source: its correlation counter is the source's.
                let options = RestoreOptions { foreign: true, ..RestoreOptions::lazy() };
                let restored = self.runtime.restore_moved_files(chain, options).map_err(|e| e.to_string());
                for f in &m.layers {
                    // Mapped pages keep the file's memory; the name goes.
                    let _ = fs::remove_file(f);
                }
                match restored {
                    Ok(_) => {
                        m.standing = Standing::Active;
                        let restore_us = started.elapsed().as_micros() as u64;
                        self.reply(from, &Step::Active { id, restore_us });
                        self.counters.lock().unwrap().moved_in += 1;
                        self.arrived(address);
                        tracing::info!(%address, from, restore_us, "took in reactor {address} from node {from}");
                        let journaled = m.journal.is_some_and(|level| self.journal_from_here(address, level));
                        if self.checkpoint_after_move_in || journaled {
                            self.checkpoint_soon();
                        }
                    }
                    Err(e) => {
                        // It stays at the source: messages from here go there.
                        self.transport.set_location(address, from, epoch);
                        self.runtime.arrived(address);
                        self.fail_incoming(incoming, id, format!("the restore failed: {e}"));
                    }
                }
            }
            Step::Abort { .. } => {
                if let Some(m) = incoming.remove(&id).filter(|m| m.from == from && m.standing != Standing::Active) {
                    for f in &m.layers {
                        let _ = fs::remove_file(f);
                    }
                }
            }
            Step::Query { .. } => {
                let standing = match incoming.get(&id) {
                    Some(m) => m.standing,
                    None => self.decided.lock().unwrap().get(&id).copied().unwrap_or(Standing::Unknown),
                };
                self.reply(from, &Step::Stands { id, standing });
            }
            Step::Load { .. } => {
                let live = self.runtime.live();
                let memory = live.iter().map(|(_, m)| m).sum();
                self.reply(from, &Step::LoadIs { id, reactors: live.len() as u64, memory });
            }
            Step::Please { address, to, precopy, hops, .. } => {
                // Runs the move on its own thread: this one keeps taking steps.
                let hub = self.clone();
                let _ = std::thread::Builder::new().name("migrate-out".into()).spawn(move || {
                    let options = MigrateOptions { precopy, ..MigrateOptions::default() };
                    let result = hub
                        .migrate_hops(Address(address), to, options, &mut |_| {}, hops)
                        .map(|r| serde_json::to_string(&r).unwrap_or_default())
                        .map_err(|e| e.to_string());
                    hub.reply(from, &Step::Outcome { id, result });
                });
            }
            _ => {}
        }
    }

    /// The last layer arrived: the chain opens and holds the reactor.
    fn check_chain(&self, m: &Incoming) -> Result<(), String> {
        match m.opened.last().map(|f| f.meta().reactors.as_slice()) {
            Some([r]) if Address(r.address) == m.address && ModuleHash(r.module) == m.module => Ok(()),
            _ => Err("the last layer does not hold the reactor offered".into()),
        }
    }

    fn fail_incoming(&self, incoming: &mut HashMap<u64, Incoming>, id: u64, reason: String) {
        if let Some(m) = incoming.get_mut(&id) {
            tracing::warn!(id, address = %m.address, "an incoming migration failed: {reason}");
            m.standing = Standing::Failed;
            m.open = None;
            for f in &m.layers {
                let _ = fs::remove_file(f);
            }
            self.counters.lock().unwrap().refused_in += 1;
            self.reply(m.from, &Step::Failed { id, reason });
        }
    }

    /// Loads a module by hash from the node's kept modules or the built
    /// guests, if it has it.
    fn load_known(&self, hash: &ModuleHash) -> bool {
        durable::module_bytes(&self.data_dir, hash)
            .is_some_and(|bytes| durable::load_and_keep(&self.data_dir, self.runtime.engine(), hash, &bytes).is_ok())
    }

    /// A journaled reactor arrived: journaled here at `level` from the
    /// checkpoint taken right after (an older journal of it here, from a
    /// time it lived here before, is set aside in `<data-dir>/dropped/`).
    /// False if it cannot be.
    fn journal_from_here(&self, address: Address, level: journal_format::Level) -> bool {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let journals = self.data_dir.join(super::JOURNALS);
        if let Err(e) = durable::set_journal_aside(&self.data_dir, &journals, address, &format!("before-{ms}")) {
            tracing::error!(reactor = %address, "{address} is not journaled here: its old journal cannot be set aside: {e}");
            return false;
        }
        let on = self.runtime.journal_from_next_checkpoint(address, level);
        if !on {
            tracing::warn!(reactor = %address, "{address} was journaled at its source; this node keeps no journals, so it is not here");
        }
        on
    }

    /// Takes a node checkpoint on a thread of its own (a reactor came in:
    /// a restart must find it).
    pub(crate) fn checkpoint_soon(&self) {
        let (runtime, checkpoints) = (self.runtime.clone(), self.checkpoints.clone());
        let _ = std::thread::Builder::new().name("migrate-ckpt".into()).spawn(move || {
            let taken = checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(&runtime);
            if let Err(e) = taken {
                tracing::error!("the checkpoint after taking in a reactor failed: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_refused_for_another_abi_too_little_memory_or_a_live_twin() {
        let here = Here { abi: 3, memory_cap: 64 << 20, free: 32 << 20, live: false };
        let a = Address::new(1, 0, 5);
        assert_eq!(refusal(&here, a, 3, 16 << 20), None);
        assert!(refusal(&here, a, 4, 16 << 20).unwrap().contains("ABI version 3, the reactor ABI version 4"));
        assert!(refusal(&here, a, 3, 100 << 20).unwrap().contains("at most 64 MiB"));
        assert!(refusal(&here, a, 3, 48 << 20).unwrap().contains("32 MiB free"));
        assert!(refusal(&Here { live: true, ..here }, a, 3, 1).unwrap().contains("runs here already"));
        assert!(refusal(&here, Address::host_of(1), 3, 1).unwrap().contains("not a reactor"));
    }

    #[test]
    fn the_moves_file_reads_back_what_was_written_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("reactor-moves-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        assert_eq!(read_moves(&dir).unwrap(), vec![]);
        let moves = vec![
            Move { id: 0xabc, address: Address::new(1, 0, 5), to: 2, epoch: 1, done: true },
            Move { id: 7, address: Address::new(3, 1, 9), to: 1, epoch: 4, done: false },
        ];
        write_moves(&dir, &moves).unwrap();
        assert_eq!(read_moves(&dir).unwrap(), moves);
        for bad in ["", "# reactor host moves v1\nabc 1 2 3 gone\n", "# reactor host moves v1\n1 2 0 1 moved\n", "junk\n"] {
            fs::write(dir.join(MOVES), bad).unwrap();
            assert!(read_moves(&dir).is_err(), "{bad:?}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
