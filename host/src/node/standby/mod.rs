//! Standby failover: a reactor journaled at level `standby` has a copy of
//! its state on another node, kept as it runs, and that node takes it over
//! when the node that ran it (its *primary*) goes down.
//!
//! # What the standby holds
//! The primary sends its standby, on the `standby` channel (reliable, one
//! lane per reactor, so in order):
//! - the module's bytes (once per standby node and module);
//! - `Attach`: stand by for this reactor, at this move count, keeping its
//!   journal from this step on;
//! - its journal segments byte for byte, as the journal writer writes them
//!   (`Journals::set_replica_hook`); the standby checks every record as it
//!   comes and answers `Held` with the count it holds. What the reactor
//!   sent in a call leaves the primary only once its record is synced
//!   there *and* held by the standby (`Ticket::is_synced`): a caller's
//!   request is answered only when the standby could answer it too;
//! - every [`SNAPSHOT_EVERY`] (when its journal grew), a full snapshot of
//!   the reactor alone, copy-on-write, that starts its next segment: the
//!   standby then drops the segments before it, so a takeover replays a
//!   short tail.
//!
//! Bytes that went before the standby was told, or were lost with a
//! connection, leave a hole: the standby asks for the file from where it
//! has it (`Gap`) and the primary sends it from its own copy.
//!
//! # Takeover
//! When the standby's node sees the primary's node down and sees a
//! majority of the cluster's nodes up (itself among them), it restores the
//! newest snapshot it holds whole (with the segment that starts at it, or
//! none: from the spawn), replays the journal tail with nothing reaching
//! the world (`Runtime::take_over`), journals on from there, and announces
//! the reactor at its own node with the move count one higher. The replies
//! of the replayed calls are kept a while: a request its caller's node
//! sends again (the same sender and correlation id; `Node::call` does so
//! when the node its target ran on went down and the target turns up
//! elsewhere) gets that reply instead of being applied twice. The new
//! primary then finds a standby of its own among the nodes up.
//!
//! # One copy
//! Who may run a reactor's copy is decided per *generation*: the attach at
//! its spawn is generation 1; a takeover, and a primary giving the reactor
//! a new standby after losing its own, each need the next generation,
//! granted by a majority of the cluster's nodes (`Claim`/`Vote`; each node
//! grants one claimant per generation and none below one it granted, and
//! records it durably before it says so). So a standby cut off from its
//! primary while both still see a majority (an asymmetric partition), or a
//! standby that comes back with a stale copy, cannot take over behind the
//! primary's back: one of them loses the claim. A standby that loses drops
//! its copy; a primary that loses waits, its output held, to hear who won.
//!
//! The primary's copy can answer nothing its standby does not hold, and a
//! standby that took a reactor over holds nothing more for the old
//! primary: it answers its journal with `TookOver`. A node that receives
//! `TookOver` (told again until it answers, also when it comes back up,
//! restarted or after a partition healed) drops its own copy, with what it
//! was holding back unsent, records the reactor as moved away, and routes
//! to the live copy.

pub mod wire;

use crate::node::durable;
use reactor_net::NodeId;
use reactor_runtime::journal::{Journals, Shipped, first_step_of, reactor_dir, segment_path};
use reactor_runtime::snapshot::{SnapshotFile, SnapshotId};
use reactor_runtime::{Address, Envelope, KIND_NODE, ModuleHash, Runtime, abi};
use reactor_transport::Transport;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wire::{CHUNK, Msg};

/// The transport channel standby traffic travels on.
pub const CHANNEL: &str = "standby";
/// How often a primary sends its standby a new snapshot of a reactor whose
/// journal grew since the last.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// The standbys' directory in a data directory.
pub const DIR: &str = "standby";
/// How long a restarted primary waits for the standby it had to be up
/// before another node stands by instead.
pub const STANDBY_PATIENCE: Duration = Duration::from_secs(30);
/// How often the primary side looks for work (snapshots due, reactors
/// without a standby).
const TICK: Duration = Duration::from_millis(100);
/// Where a journaled reactor's standby is recorded, in its journal
/// directory: `<node> <epoch> <generation>`.
const STANDBY_FILE: &str = "standby";
/// In a standby's directory: what it stands by for (`<primary> <epoch>
/// <module hex> <from step> <generation>`).
const ATTACH_FILE: &str = "attach";
/// The generations this node granted: `<address hex> <generation> <node>`
/// per line.
const VOTES_FILE: &str = "votes";
/// How long a claim waits for votes.
const CLAIM_PATIENCE: Duration = Duration::from_secs(2);
/// In a standby's directory once it took the reactor over: `<old primary>
/// <epoch>`.
const OWNED_FILE: &str = "owned";

/// Figures for status.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Reactors of this node with a standby elsewhere.
    pub primaries: usize,
    /// Reactors of other nodes this node stands by for.
    pub standing_by: usize,
    /// Journal bytes sent to standbys.
    pub journal_bytes_out: u64,
    /// Journal bytes taken in as a standby.
    pub journal_bytes_in: u64,
    /// Snapshots sent to standbys.
    pub snapshots_out: u64,
    /// Holes asked for (`Gap`) as a standby.
    pub gaps: u64,
    /// Reactors this node took over.
    pub takeovers: u64,
    /// The last takeover: from seeing the node down to the reactor
    /// announced here, ms.
    pub last_takeover_ms: f64,
    /// Calls the last takeover replayed.
    pub last_takeover_steps: u64,
    /// Copies of reactors dropped here because another node took them over.
    pub copies_dropped: u64,
}

/// Where the votes on one claim of this node go: (voter, granted).
type Ballot = mpsc::Sender<(NodeId, bool)>;

/// A module's bytes as they arrive.
type ModuleBytes = Vec<u8>;

/// A reactor of this node with a standby.
struct Out {
    /// `None`: it has none now (the last went down); one is looked for.
    standby: Option<NodeId>,
    /// The standby was sent what it needs (else it is, once it is up).
    connected: bool,
    /// Since when its standby is not up (while not connected).
    missing: Option<Instant>,
    /// The standby generation it holds (see [`Standby::claim`]).
    generation: u64,
    /// It lost a claim: another node holds the next generation (took it
    /// over); it waits to hear so, and looks for no standby.
    blocked: bool,
    epoch: u64,
    module: ModuleHash,
    /// The last snapshot sent, and when.
    seq: u64,
    snapped: Instant,
    /// A snapshot sent and not yet held: its number and the step its
    /// segment starts at.
    pending: Option<(u64, u64)>,
    /// Journal bytes went since the last snapshot.
    grew: bool,
    /// Journal bytes that found the lane full were dropped: the segment
    /// (its first step) and the offset to send its file from again.
    resend: Option<(u64, u64)>,
}

impl Out {
    fn new(standby: Option<NodeId>, connected: bool, generation: u64, epoch: u64, module: ModuleHash) -> Self {
        Self {
            standby,
            connected,
            missing: None,
            generation,
            blocked: false,
            epoch,
            module,
            seq: 0,
            snapped: Instant::now(),
            pending: None,
            grew: false,
            resend: None,
        }
    }
}

/// A segment a standby is receiving.
struct SegIn {
    file: fs::File,
    bytes: Vec<u8>,
    cursor: Option<journal_format::Cursor>,
    records: u64,
    base: Option<SnapshotId>,
    /// Damaged: no more is taken (the takeover stops before it).
    broken: bool,
    /// The hole last asked for (`have`), not asked again.
    asked: Option<u64>,
}

/// A reactor this node stands by for.
struct In {
    primary: NodeId,
    epoch: u64,
    /// The generation it stands by in.
    generation: u64,
    module: ModuleHash,
    from_step: u64,
    dir: PathBuf,
    segs: BTreeMap<u64, SegIn>,
    /// The snapshot a takeover starts from (with the segment based on it).
    snap: Option<SnapshotId>,
    /// A snapshot held whole whose segment has not come yet.
    next: Option<SnapshotId>,
    /// A snapshot arriving: its number, file and bytes written.
    part: Option<(u64, fs::File, u64)>,
}

/// Takes a reactor out of `Standby::taking` when its claim and takeover
/// end, however they end.
struct Taking<'a>(&'a Mutex<HashSet<Address>>, Address);

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.1);
    }
}

enum Work {
    Msg(NodeId, Msg),
    Down(NodeId),
}

/// A node's standbys, both ends. See the module docs.
pub struct Standby {
    me: NodeId,
    data_dir: PathBuf,
    dir: PathBuf,
    runtime: Arc<Runtime>,
    transport: Transport,
    journals: Arc<Journals>,
    /// Where a copy lost to a takeover is recorded as moved away.
    hub: Arc<crate::node::migrate::Hub>,
    out: Mutex<HashMap<Address, Out>>,
    modules_sent: Mutex<HashSet<(NodeId, ModuleHash)>>,
    /// Modules arriving, by sender and hash.
    parts: Mutex<HashMap<(NodeId, [u8; 32]), ModuleBytes>>,
    ins: Mutex<HashMap<Address, In>>,
    /// Reactors whose copy left `ins` to be taken over, while the claim
    /// and the takeover run (this node still stands by for them).
    taking: Mutex<HashSet<Address>>,
    /// Reactors this node took over: from which node, at which move count.
    owned: Mutex<HashMap<Address, (NodeId, u64)>>,
    /// Of those, the ones whose old node said it runs no copy (`Detach`
    /// in answer to `TookOver`); the others are told again while it is up.
    confirmed: Mutex<HashSet<Address>>,
    /// Generations this node granted, per reactor: the generation and to
    /// whom (`<data-dir>/standby/votes`, written before a vote is sent).
    votes: Mutex<HashMap<Address, (u64, NodeId)>>,
    /// Claims of other nodes, for the vote thread.
    voter: Mutex<SyncSender<(NodeId, Address, u64)>>,
    /// Claims of this node waiting for votes.
    ballots: Mutex<HashMap<(Address, u64), Ballot>>,
    /// Ticks since the start (some work is done every few).
    ticks: std::sync::atomic::AtomicU64,
    /// Primaries seen down whose reactors were not taken over yet (no
    /// majority): looked at again on every tick.
    waiting: Mutex<HashSet<NodeId>>,
    work: SyncSender<Work>,
    /// Node down events on this node: when the last one was seen, per node.
    down_at: Mutex<HashMap<NodeId, Instant>>,
    counters: Mutex<Counters>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby").field("me", &self.me).finish()
    }
}

/// A module hash as the standby's files write it (64 hex digits).
fn parse_module(s: &str) -> Option<ModuleHash> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).ok()?;
    Some(ModuleHash(b))
}

fn write_failure(e: durable::WriteFailure) -> String {
    format!("cannot {} {}: {}", e.op, e.path.display(), e.source)
}

fn make_dir(p: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

fn read_small(path: &Path) -> Option<String> {
    read_small_limit(path, 4096)
}

fn read_small_limit(path: &Path, limit: u64) -> Option<String> {
    reactor_runtime::local_fs::read_file(path, "a standby record", limit, reactor_runtime::local_fs::Access::Private)
        .ok()
        .and_then(|(b, _)| String::from_utf8(b).ok())
}

/// The standby recorded in a journaled reactor's directory: its node, the
/// reactor's move count and the standby generation.
pub fn recorded_standby(journal_dir: &Path, address: Address) -> Option<(NodeId, u64, u64)> {
    let text = read_small(&reactor_dir(journal_dir, address).join(STANDBY_FILE))?;
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

impl Standby {
    /// Starts both ends for a node whose runtime, transport and journals
    /// run: reads what `<data-dir>/standby/` holds (reactors it stands by
    /// for, reactors it took over) and sets the journals' replica hook.
    pub fn start(
        me: NodeId,
        data_dir: &Path,
        runtime: Arc<Runtime>,
        transport: Transport,
        journals: Arc<Journals>,
        hub: Arc<crate::node::migrate::Hub>,
    ) -> std::io::Result<Arc<Self>> {
        let dir = data_dir.join(DIR);
        make_dir(&dir)?;
        let (work, rx) = mpsc::sync_channel(4096);
        let (voter, claims) = mpsc::sync_channel::<(NodeId, Address, u64)>(1024);
        let this = Arc::new(Self {
            me,
            data_dir: data_dir.to_owned(),
            dir,
            runtime,
            transport,
            journals: journals.clone(),
            hub,
            out: Mutex::default(),
            modules_sent: Mutex::default(),
            parts: Mutex::default(),
            ins: Mutex::default(),
            taking: Mutex::default(),
            owned: Mutex::default(),
            confirmed: Mutex::default(),
            votes: Mutex::default(),
            voter: Mutex::new(voter),
            ballots: Mutex::default(),
            ticks: std::sync::atomic::AtomicU64::new(0),
            waiting: Mutex::default(),
            work,
            down_at: Mutex::default(),
            counters: Mutex::default(),
        });
        this.load()?;
        let weak = Arc::downgrade(&this);
        journals.set_replica_hook(Box::new(move |s: &Shipped<'_>| {
            if let Some(me) = weak.upgrade() {
                me.ship(s);
            }
        }));
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new().name("standby-in".into()).spawn(move || worker(&weak, &rx))?;
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new().name("standby-out".into()).spawn(move || ticker(&weak))?;
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new().name("standby-vote".into()).spawn(move || {
            while let Ok((from, a, generation)) = claims.recv() {
                let Some(me) = weak.upgrade() else { return };
                let granted = me.grant(a, generation, from);
                if let Err(e) = me.send(from, a, &Msg::Vote { address: a.0, generation, granted }) {
                    tracing::debug!("cannot answer node {from}'s claim: {e}");
                }
            }
        })?;
        Ok(this)
    }

    /// Reads the standby directory: what this node stands by for (its
    /// segments and snapshot) and what it took over.
    fn load(&self) -> std::io::Result<()> {
        if let Some(t) = read_small_limit(&self.dir.join(VOTES_FILE), 16 << 20) {
            let mut votes = self.votes.lock().unwrap();
            for l in t.lines() {
                let f: Vec<&str> = l.split(' ').collect();
                if let [a, g, n] = f.as_slice()
                    && let (Ok(a), Ok(g), Ok(n)) = (u64::from_str_radix(a, 16), g.parse(), n.parse())
                {
                    votes.insert(Address(a), (g, n));
                }
            }
        }
        for e in fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let Some(address) = e.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok()).map(Address) else { continue };
            let d = e.path();
            if let Some(t) = read_small(&d.join(OWNED_FILE)) {
                let mut f = t.split_whitespace();
                if let (Some(Ok(p)), Some(Ok(ep))) = (f.next().map(str::parse), f.next().map(str::parse)) {
                    self.owned.lock().unwrap().insert(address, (p, ep));
                    if self.runtime.hosts(address) {
                        self.transport.set_location(address, self.me, ep);
                    }
                }
                continue;
            }
            let Some(t) = read_small(&d.join(ATTACH_FILE)) else { continue };
            let f: Vec<&str> = t.split_whitespace().collect();
            let (Some(primary), Some(epoch), Some(module), Some(from_step), Some(generation)) = (
                f.first().and_then(|s| s.parse().ok()),
                f.get(1).and_then(|s| s.parse().ok()),
                f.get(2).and_then(|s| parse_module(s)),
                f.get(3).and_then(|s| s.parse().ok()),
                f.get(4).and_then(|s| s.parse().ok()),
            ) else {
                tracing::warn!("{} is damaged: the standby copy of {address} is not used", d.join(ATTACH_FILE).display());
                continue;
            };
            let mut inn =
                In { primary, epoch, generation, module, from_step, dir: d.clone(), segs: BTreeMap::new(), snap: None, next: None, part: None };
            if let Ok(f) = SnapshotFile::open(&d.join("snapshot.snap"), abi::ABI_VERSION) {
                inn.snap = Some(f.header().id);
            }
            for p in reactor_runtime::journal::segments(&d).unwrap_or_default() {
                let Some(first) = first_step_of(&p) else { continue };
                let Ok(bytes) = fs::read(&p) else { continue };
                let Ok(file) = fs::OpenOptions::new().append(true).open(&p) else { continue };
                let mut seg = SegIn { file, bytes: Vec::new(), cursor: None, records: 0, base: None, broken: false, asked: None };
                seg.take(&bytes);
                inn.segs.insert(first, seg);
            }
            self.ins.lock().unwrap().insert(address, inn);
        }
        Ok(())
    }

    /// Whether this node stands by for `address` (it may take it over,
    /// or is taking it over now).
    pub fn stands_by(&self, address: Address) -> bool {
        self.ins.lock().unwrap().contains_key(&address) || self.taking.lock().unwrap().contains(&address)
    }

    /// Figures for status.
    pub fn counters(&self) -> Counters {
        let mut c = *self.counters.lock().unwrap();
        c.primaries = self.out.lock().unwrap().len();
        c.standing_by = self.ins.lock().unwrap().len();
        c
    }

    /// Sends `msg` to node `to` on the lane of reactor `key` (waits for
    /// room on a full lane: never on a transport thread).
    fn send(&self, to: NodeId, key: Address, msg: &Msg) -> Result<(), String> {
        let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(self.me), corr: 0, payload: wire::encode(msg) };
        self.transport.send_on(CHANNEL, to, Address::host_of(to), env, key.0).map_err(|e| format!("cannot reach node {to}: {e}"))
    }

    /// A message that arrived from node `from` (on a transport thread:
    /// never blocks). Acknowledgements are taken here; the rest goes to the
    /// worker. `false` when its queue is full (the transport holds the
    /// message and tries again).
    pub fn deliver(&self, from: NodeId, msg: Msg) -> bool {
        tracing::trace!(from, "standby message {}", msg.name());
        match msg {
            Msg::Held { address, first_step, records } => {
                let a = Address(address);
                if self.out.lock().unwrap().get(&a).is_some_and(|o| o.standby == Some(from)) {
                    self.journals.held(a, first_step, records);
                } else {
                    tracing::debug!(reactor = %a, "node {from} holds {records} records of segment {first_step}, but does not stand by for it");
                }
                true
            }
            Msg::HeldSnapshot { address, seq } => {
                let a = Address(address);
                let step = {
                    let mut out = self.out.lock().unwrap();
                    match out.get_mut(&a) {
                        Some(o) if o.standby == Some(from) && o.pending.is_some_and(|(s, _)| s == seq) => o.pending.take().map(|(_, st)| st),
                        _ => None,
                    }
                };
                if let Some(step) = step {
                    // Calls before the snapshot are in it, held by the
                    // standby: what they sent may leave.
                    self.journals.held_before(a, step);
                }
                true
            }
            Msg::Claim { address, generation } => {
                // Answered on the vote thread (it writes a file and sends,
                // which may wait: never on this one), which no claim of
                // this node's waits on.
                self.voter.lock().unwrap().try_send((from, Address(address), generation)).is_ok()
            }
            Msg::Vote { address, generation, granted } => {
                if let Some(tx) = self.ballots.lock().unwrap().get(&(Address(address), generation)) {
                    let _ = tx.send((from, granted));
                }
                true
            }
            m => match self.work.try_send(Work::Msg(from, m)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
        }
    }

    /// The transport says node `node` is down.
    pub fn node_down(&self, node: NodeId) {
        self.down_at.lock().unwrap().insert(node, Instant::now());
        for o in self.out.lock().unwrap().values_mut() {
            if o.standby == Some(node) && o.connected {
                o.standby = None;
                o.connected = false;
            }
        }
        let _ = self.work.try_send(Work::Down(node));
    }

    /// The transport says node `node` is up (again): it hears of every
    /// reactor this node took over from it.
    pub fn node_up(&self, node: NodeId) {
        // Told from the ticker (sending may wait for room; this runs on a
        // transport thread): now, not at its next round.
        let mut confirmed = self.confirmed.lock().unwrap();
        for (a, (p, _)) in self.owned.lock().unwrap().iter() {
            if *p == node {
                confirmed.remove(a);
            }
        }
        drop(confirmed);
        self.ticks.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes the journal writer wrote of a `Standby` segment (on its
    /// thread): to the reactor's standby, if it has one.
    fn ship(&self, s: &Shipped<'_>) {
        let to = {
            let mut out = self.out.lock().unwrap();
            let Some(o) = out.get_mut(&s.address) else { return };
            o.grew = true;
            o.standby
        };
        let Some(to) = to else { return };
        self.counters.lock().unwrap().journal_bytes_out += s.bytes.len() as u64;
        // Never waits here (the writer thread serves every journal of the
        // node): bytes that find the lane full go again from the file,
        // from the ticker.
        for (i, piece) in s.bytes.chunks(CHUNK).enumerate() {
            let offset = s.offset + (i * CHUNK) as u64;
            let msg = Msg::Journal { address: s.address.0, first_step: s.first_step, offset, bytes: piece.to_vec() };
            let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(self.me), corr: 0, payload: wire::encode(&msg) };
            match self.transport.try_send_on(CHANNEL, to, Address::host_of(to), env, s.address.0) {
                Ok(()) => {}
                Err(reactor_runtime::SendError::InboxFull(_)) => {
                    if let Some(o) = self.out.lock().unwrap().get_mut(&s.address) {
                        let from = o.resend.filter(|r| r.0 == s.first_step).map_or(offset, |r| r.1.min(offset));
                        o.resend = Some((s.first_step, from));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(reactor = %s.address, "journal bytes for its standby on node {to} did not go: {e}");
                    return;
                }
            }
        }
    }

    /// Whether a reactor spawned here now could have a standby (on node
    /// `to`, or on one picked): the reason if not, before it is spawned.
    pub fn check_target(&self, to: Option<NodeId>) -> Result<(), String> {
        match to {
            Some(n) if n == self.me => Err("a reactor's standby is on another node than the reactor".into()),
            Some(n) if !self.transport.members().iter().any(|m| m.info.id == n && m.up) => {
                Err(format!("node {n} is not up: it cannot stand by"))
            }
            Some(_) => Ok(()),
            None => self.pick(None).map(|_| ()).ok_or_else(|| "no other node is up to stand by for it".to_string()),
        }
    }

    /// Gives the journaled reactor `address` (level `standby`) of this node
    /// a standby: node `to`, or one picked among the nodes up. Journaled
    /// from its spawn (`from_spawn`), its journal so far goes; otherwise a
    /// snapshot starts it.
    pub fn attach(&self, address: Address, to: Option<NodeId>, from_spawn: bool) -> Result<NodeId, String> {
        let module = self.runtime.module_of(address).ok_or_else(|| format!("{address} does not run here"))?;
        let to = match to {
            Some(n) if n == self.me => return Err("a reactor's standby is on another node than the reactor".into()),
            Some(n) => {
                if !self.transport.members().iter().any(|m| m.info.id == n && m.up) {
                    return Err(format!("node {n} is not up: it cannot stand by for {address}"));
                }
                n
            }
            None => self.pick(None).ok_or_else(|| "no other node is up to stand by for it".to_string())?,
        };
        let epoch = self.transport.location(address).1;
        self.out.lock().unwrap().insert(
            address,
            Out::new(Some(to), true, 1, epoch, module),
        );
        self.connect(address, to, from_spawn)?;
        Ok(to)
    }

    /// A reactor of this node journaled at level `standby` came back at a
    /// restart: its standby was `recorded`. It goes back to that node once
    /// it is up (with a new snapshot); that node, if it took the reactor
    /// over meanwhile, says so, and the copy here is dropped. Only if that
    /// node stays down for [`STANDBY_PATIENCE`] (and this node sees a
    /// majority) does another stand by. Until a standby holds its journal,
    /// nothing it sends leaves.
    pub fn resume(&self, address: Address, recorded: Option<(NodeId, u64, u64)>) {
        let Some(module) = self.runtime.module_of(address) else { return };
        let epoch = self.transport.location(address).1.max(recorded.map_or(0, |r| r.1));
        let out = Out::new(recorded.map(|r| r.0), false, recorded.map_or(1, |r| r.2), epoch, module);
        self.out.lock().unwrap().insert(address, out);
    }

    /// Gives `address` (spawned at level `standby` by a reactor) a standby:
    /// one picked now, or, with none up, one the ticker finds later (what
    /// it sends waits meanwhile).
    pub fn attach_or_look(&self, address: Address) {
        match self.attach(address, None, true) {
            Ok(n) => tracing::info!(reactor = %address, "node {n} stands by for {address}, spawned at level standby by a reactor"),
            Err(e) => {
                tracing::warn!(reactor = %address, "{address} has no standby yet ({e}); one is looked for");
                let Some(module) = self.runtime.module_of(address) else { return };
                let epoch = self.transport.location(address).1;
                self.out.lock().unwrap().entry(address).or_insert(Out::new(None, false, 0, epoch, module));
            }
        }
    }

    /// Sends `to` what it needs to stand by for `address`.
    fn connect(&self, address: Address, to: NodeId, from_spawn: bool) -> Result<(), String> {
        let (module, epoch, generation) = {
            let out = self.out.lock().unwrap();
            let o = out.get(&address).ok_or_else(|| format!("{address} has no standby"))?;
            (o.module, o.epoch, o.generation)
        };
        if !self.modules_sent.lock().unwrap().contains(&(to, module)) {
            let bytes = durable::module_bytes(&self.data_dir, &module).ok_or_else(|| format!("module {module} is not kept here"))?;
            let total = bytes.len() as u64;
            for (i, piece) in bytes.chunks(CHUNK).enumerate() {
                let msg = Msg::Module { hash: module.0, offset: (i * CHUNK) as u64, total, bytes: piece.to_vec() };
                self.send(to, address, &msg)?;
            }
            self.modules_sent.lock().unwrap().insert((to, module));
        }
        let dir = reactor_dir(self.journals.dir(), address);
        // The writer thread may not have made it yet.
        make_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        durable::write_durably(&dir, STANDBY_FILE, format!("{to} {epoch} {generation}\n").as_bytes()).map_err(write_failure)?;
        if from_spawn {
            self.send(to, address, &Msg::Attach { address: address.0, epoch, generation, module: module.0, from_step: 0 })?;
            // What the writer wrote before the standby was named.
            self.journals.sync();
            self.resend(to, address, 0, 0);
        } else {
            let step = self.runtime.journal_step(address).ok_or_else(|| format!("{address} is not journaled here"))?;
            self.send(to, address, &Msg::Attach { address: address.0, epoch, generation, module: module.0, from_step: step })?;
            self.snapshot(address)?;
        }
        tracing::info!(reactor = %address, "node {to} stands by for {address}");
        Ok(())
    }

    /// Sends the standby of `address` a snapshot of it that starts its next
    /// journal segment.
    fn snapshot(&self, address: Address) -> Result<(), String> {
        let (cp, step) = self.runtime.snapshot_rolling(address).map_err(|e| format!("cannot snapshot {address}: {e}"))?;
        let (to, seq) = {
            let mut out = self.out.lock().unwrap();
            let Some(o) = out.get_mut(&address) else { return Ok(()) };
            let Some(to) = o.standby else { return Ok(()) };
            o.seq += 1;
            o.snapped = Instant::now();
            o.grew = false;
            o.pending = Some((o.seq, step));
            (to, o.seq)
        };
        let spool = self.dir.join(format!(".out-{:016x}.snap", address.0));
        cp.write(&spool, &mut |_, _| {}).map_err(|e| format!("cannot write a snapshot of {address}: {e}"))?;
        let r = (|| {
            let f = fs::File::open(&spool).map_err(|e| e.to_string())?;
            let total = f.metadata().map_err(|e| e.to_string())?.len();
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0u64;
            while off < total {
                let n = (total - off).min(CHUNK as u64) as usize;
                f.read_exact_at(&mut buf[..n], off).map_err(|e| e.to_string())?;
                self.send(to, address, &Msg::Snapshot { address: address.0, seq, offset: off, total, bytes: buf[..n].to_vec() })?;
                off += n as u64;
            }
            Ok::<(), String>(())
        })();
        let _ = fs::remove_file(&spool);
        if r.is_ok() {
            self.counters.lock().unwrap().snapshots_out += 1;
        }
        r
    }

    /// Sends node `to` the segment of `address` starting at `first_step`
    /// from byte `from` on, from this node's file.
    fn resend(&self, to: NodeId, address: Address, first_step: u64, from: u64) {
        let path = segment_path(self.journals.dir(), address, first_step);
        let Ok(f) = fs::File::open(&path) else { return };
        let len = f.metadata().map_or(0, |m| m.len());
        let mut off = from;
        let mut buf = vec![0u8; CHUNK];
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            if f.read_exact_at(&mut buf[..n], off).is_err() {
                return;
            }
            let msg = Msg::Journal { address: address.0, first_step, offset: off, bytes: buf[..n].to_vec() };
            if self.send(to, address, &msg).is_err() {
                return;
            }
            off += n as u64;
        }
    }

    /// Stops standing by for `address` (it stopped, or failed for good).
    pub fn detach(&self, address: Address) {
        if let Some(o) = self.out.lock().unwrap().remove(&address)
            && let Some(to) = o.standby
        {
            let _ = self.send(to, address, &Msg::Detach { address: address.0 });
        }
    }

    /// Grants generation `generation` of `a` to `node` unless this node granted
    /// that generation to another, or a later one: one holder per
    /// generation. Recorded durably before it is said.
    fn grant(&self, a: Address, generation: u64, node: NodeId) -> bool {
        let mut votes = self.votes.lock().unwrap();
        match votes.get(&a) {
            Some(&(g, n)) if g > generation || g == generation && n != node => return false,
            Some(&(g, _)) if g == generation => return true,
            _ => {}
        }
        votes.insert(a, (generation, node));
        let mut text = String::new();
        for (a, (g, n)) in votes.iter() {
            text.push_str(&format!("{:016x} {g} {n}\n", a.0));
        }
        match durable::write_durably(&self.dir, VOTES_FILE, text.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("cannot record a vote: {}", write_failure(e));
                false
            }
        }
    }

    /// Asks every node up to grant this node generation `generation` of `a` (the
    /// right to take it over, or to give it a new standby); true when a
    /// majority of the cluster's nodes, itself among them, granted it. Two
    /// nodes cut off from each other but not from the rest (each seeing a
    /// majority) cannot both win: each node grants one of them.
    fn claim(&self, a: Address, generation: u64) -> bool {
        let members = self.transport.members();
        let total = members.len() + usize::from(!members.iter().any(|m| m.info.id == self.me));
        let (tx, rx) = mpsc::channel();
        self.ballots.lock().unwrap().insert((a, generation), tx);
        let mut granted = usize::from(self.grant(a, generation, self.me));
        let mut asked = 0;
        for m in members.iter().filter(|m| m.up && m.info.id != self.me) {
            if self.send(m.info.id, a, &Msg::Claim { address: a.0, generation }).is_ok() {
                asked += 1;
            }
        }
        let deadline = Instant::now() + CLAIM_PATIENCE;
        let mut answered = 0;
        while granted * 2 <= total && answered < asked {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((_, yes)) => {
                    answered += 1;
                    granted += usize::from(yes);
                }
                Err(_) => break,
            }
        }
        self.ballots.lock().unwrap().remove(&(a, generation));
        let won = granted * 2 > total;
        tracing::info!(reactor = %a, "claim of generation {generation} of {a}: {granted} of {total} nodes granted it ({})", if won { "won" } else { "lost" });
        won
    }

    /// Whether this node sees a strict majority of the cluster's nodes up,
    /// itself among them.
    fn majority(&self) -> bool {
        let members = self.transport.members();
        let mut total = members.len();
        let mut up = members.iter().filter(|m| m.up && m.info.id != self.me).count() + 1;
        if !members.iter().any(|m| m.info.id == self.me) {
            total += 1;
        } else {
            up = up.min(total);
        }
        up * 2 > total
    }

    /// A node up to stand by, other than this one and `not`: the one that
    /// stands by for the fewest reactors of this node.
    fn pick(&self, not: Option<NodeId>) -> Option<NodeId> {
        let load: HashMap<NodeId, usize> = self.out.lock().unwrap().values().filter_map(|o| o.standby).fold(HashMap::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        });
        self.transport
            .members()
            .iter()
            .filter(|m| m.up && m.info.id != self.me && Some(m.info.id) != not)
            .map(|m| m.info.id)
            .min_by_key(|n| (load.get(n).copied().unwrap_or(0), *n))
    }

    /// The primary side's periodic work: snapshots due, reactors without a
    /// standby given one (while this node sees a majority), primaries down
    /// whose reactors wait for a majority to be taken over.
    fn tick(&self) {
        let now = Instant::now();
        let up: HashSet<NodeId> = self.transport.members().iter().filter(|m| m.up).map(|m| m.info.id).collect();
        let (due, orphans, reconnect) = {
            let mut out = self.out.lock().unwrap();
            let mut reconnect = Vec::new();
            for (a, o) in out.iter_mut() {
                let Some(n) = o.standby.filter(|_| !o.connected) else { continue };
                if up.contains(&n) {
                    o.missing = None;
                    reconnect.push((*a, n));
                } else if now.duration_since(*o.missing.get_or_insert(now)) >= STANDBY_PATIENCE {
                    o.standby = None;
                }
            }
            let due: Vec<Address> = out
                .iter()
                .filter(|(_, o)| o.connected && o.grew && o.pending.is_none() && now.duration_since(o.snapped) >= SNAPSHOT_EVERY)
                .map(|(a, _)| *a)
                .collect();
            let orphans: Vec<Address> = out.iter().filter(|(_, o)| o.standby.is_none() && !o.blocked).map(|(a, _)| *a).collect();
            (due, orphans, reconnect)
        };
        for (a, n) in reconnect {
            self.reconnect(a, n);
        }
        let resend: Vec<(Address, NodeId, u64, u64)> = self
            .out
            .lock()
            .unwrap()
            .iter_mut()
            .filter_map(|(a, o)| Some((*a, o.standby.filter(|_| o.connected)?, o.resend.take()?)))
            .map(|(a, n, (first, from))| (a, n, first, from))
            .collect();
        for (a, n, first, from) in resend {
            // The file holds what the lane had no room for, and all after.
            self.resend(n, a, first, from);
        }
        for a in due {
            if let Err(e) = self.snapshot(a) {
                if self.runtime.module_of(a).is_none() {
                    // Stopped, failed for good, or moved away.
                    self.detach(a);
                } else {
                    tracing::warn!(reactor = %a, "no snapshot for its standby: {e}");
                }
            }
        }
        if !orphans.is_empty() && self.majority() {
            for a in orphans {
                if self.runtime.module_of(a).is_none() {
                    self.out.lock().unwrap().remove(&a);
                    continue;
                }
                let Some(to) = self.pick(None) else { break };
                // A new standby is a new generation: won, or the reactor
                // was taken over (this copy waits to hear so).
                let generation = self.out.lock().unwrap().get(&a).map_or(0, |o| o.generation) + 1;
                if !self.claim(a, generation) {
                    if let Some(o) = self.out.lock().unwrap().get_mut(&a) {
                        o.blocked = true;
                    }
                    tracing::warn!(reactor = %a, "{a} lost its standby and another node holds its next generation: it waits");
                    continue;
                }
                if let Some(o) = self.out.lock().unwrap().get_mut(&a) {
                    o.generation = generation;
                }
                self.reconnect(a, to);
            }
        }
        // The nodes reactors were taken over from hear of it until they
        // answer (a message sent as one came back up can be lost with a
        // connection that was not ready).
        if self.ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(10) {
            let tell: Vec<(Address, NodeId, u64)> = {
                let confirmed = self.confirmed.lock().unwrap();
                self.owned
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(a, (p, _))| !confirmed.contains(a) && up.contains(p))
                    .map(|(a, (p, e))| (*a, *p, *e))
                    .collect()
            };
            for (a, p, epoch) in tell {
                let _ = self.send(p, a, &Msg::TookOver { address: a.0, epoch });
            }
        }
        let waiting: Vec<NodeId> = self.waiting.lock().unwrap().iter().copied().collect();
        for n in waiting {
            let _ = self.work.try_send(Work::Down(n));
        }
    }

    /// Makes node `to` the standby of `a`, with a new snapshot.
    fn reconnect(&self, a: Address, to: NodeId) {
        if let Some(o) = self.out.lock().unwrap().get_mut(&a) {
            o.standby = Some(to);
            o.connected = true;
            o.pending = None;
        }
        if let Err(e) = self.connect(a, to, false) {
            tracing::warn!(reactor = %a, "node {to} could not be made its standby: {e}");
            if let Some(o) = self.out.lock().unwrap().get_mut(&a)
                && o.standby == Some(to)
            {
                o.connected = false;
            }
        }
    }

    /// Takes one message on the worker thread.
    fn take(&self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Module { hash, offset, total, bytes } => self.take_module(from, ModuleHash(hash), offset, total, &bytes),
            Msg::Attach { address, epoch, generation, module, from_step } => {
                let a = Address(address);
                if let Some(&(_, e)) = self.owned.lock().unwrap().get(&a) {
                    let _ = self.send(from, a, &Msg::TookOver { address, epoch: e });
                    return;
                }
                if self.runtime.module_of(a).is_some() {
                    tracing::warn!(reactor = %a, "node {from} asked this node to stand by for {a}, which runs here");
                    return;
                }
                if self.ins.lock().unwrap().get(&a).is_some_and(|i| i.generation > generation) {
                    tracing::warn!(reactor = %a, "node {from} asked this node to stand by for {a} in an older generation ({generation})");
                    return;
                }
                let dir = self.dir.join(format!("{address:016x}"));
                let _ = fs::remove_dir_all(&dir);
                let r = make_dir(&dir).map_err(|e| e.to_string()).and_then(|()| {
                    let text = format!("{from} {epoch} {} {from_step} {generation}\n", ModuleHash(module).to_hex());
                    durable::write_durably(&dir, ATTACH_FILE, text.as_bytes()).map_err(write_failure)
                });
                if let Err(e) = r {
                    tracing::error!(reactor = %a, "cannot stand by for {a}: {e}");
                    return;
                }
                let inn = In {
                    primary: from,
                    epoch,
                    generation,
                    module: ModuleHash(module),
                    from_step,
                    dir,
                    segs: BTreeMap::new(),
                    snap: None,
                    next: None,
                    part: None,
                };
                self.ins.lock().unwrap().insert(a, inn);
                tracing::info!(reactor = %a, "standing by for {a} of node {from}");
            }
            Msg::Journal { address, first_step, offset, bytes } => self.take_journal(from, Address(address), first_step, offset, &bytes),
            Msg::Snapshot { address, seq, offset, total, bytes } => self.take_snapshot(from, Address(address), seq, offset, total, &bytes),
            Msg::Gap { address, first_step, have } => {
                let a = Address(address);
                if self.out.lock().unwrap().get(&a).is_some_and(|o| o.standby == Some(from)) {
                    self.resend(from, a, first_step, have);
                }
            }
            Msg::Detach { address } => {
                let a = Address(address);
                if self.owned.lock().unwrap().get(&a).is_some_and(|&(p, _)| p == from) {
                    // The node it was taken over from runs no copy.
                    self.confirmed.lock().unwrap().insert(a);
                    return;
                }
                let gone = {
                    let mut ins = self.ins.lock().unwrap();
                    match ins.get(&a) {
                        Some(i) if i.primary == from => ins.remove(&a),
                        _ => None,
                    }
                };
                if let Some(i) = gone {
                    let _ = fs::remove_dir_all(&i.dir);
                    tracing::info!(reactor = %a, "no longer standing by for {a}");
                }
            }
            Msg::TookOver { address, epoch } => {
                self.lost(from, Address(address), epoch);
                // No copy here (any more): said, so it is not told again.
                let _ = self.send(from, Address(address), &Msg::Detach { address });
            }
            Msg::Held { .. } | Msg::HeldSnapshot { .. } | Msg::Claim { .. } | Msg::Vote { .. } => {}
        }
    }

    fn take_module(&self, from: NodeId, hash: ModuleHash, offset: u64, total: u64, bytes: &[u8]) {
        if self.runtime.engine().module(&hash).is_some() || total > reactor_runtime::Engine::MAX_MODULE_FILE {
            return;
        }
        // Pieces of one module come in order on one lane; gathered here.
        {
            let mut p = self.parts.lock().unwrap();
            let code = p.entry((from, hash.0)).or_default();
            if offset != code.len() as u64 {
                p.remove(&(from, hash.0));
                return;
            }
            code.extend_from_slice(bytes);
            if code.len() as u64 == total {
                let code = p.remove(&(from, hash.0)).unwrap_or_default();
                if let Err(e) = durable::load_and_keep(&self.data_dir, self.runtime.engine(), &hash, &code) {
                    tracing::warn!("node {from} sent module {hash}: {e}");
                }
            }
        }
    }

    fn take_journal(&self, from: NodeId, a: Address, first_step: u64, offset: u64, bytes: &[u8]) {
        if let Some(&(_, epoch)) = self.owned.lock().unwrap().get(&a) {
            let _ = self.send(from, a, &Msg::TookOver { address: a.0, epoch });
            return;
        }
        let mut ins = self.ins.lock().unwrap();
        let Some(inn) = ins.get_mut(&a).filter(|i| i.primary == from) else { return };
        if first_step < inn.from_step {
            return;
        }
        self.counters.lock().unwrap().journal_bytes_in += bytes.len() as u64;
        if !inn.segs.contains_key(&first_step) {
            if offset != 0 {
                self.ask_gap(from, a, first_step, 0, inn);
                return;
            }
            let path = inn.dir.join(format!("{first_step:020}.journal"));
            let file = match fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(reactor = %a, "cannot keep its journal as its standby: {e}");
                    return;
                }
            };
            inn.segs.insert(first_step, SegIn { file, bytes: Vec::new(), cursor: None, records: 0, base: None, broken: false, asked: None });
        }
        let seg = inn.segs.get_mut(&first_step).expect("just made");
        let have = seg.bytes.len() as u64;
        if offset > have {
            self.ask_gap(from, a, first_step, have, inn);
            return;
        }
        let mut skip = (have - offset) as usize;
        let overlap = skip.min(bytes.len());
        if seg.bytes[offset as usize..offset as usize + overlap] != bytes[..overlap] {
            // The primary cut its file there (a failed call cut by its
            // restart) and wrote on: its file is the truth.
            if let Err(e) = seg.cut(offset) {
                tracing::error!(reactor = %a, "cannot keep its journal as its standby: {e}");
                seg.broken = true;
                return;
            }
            skip = 0;
        }
        if skip >= bytes.len() || seg.broken {
            return;
        }
        let new = &bytes[skip..];
        if let Err(e) = seg.file.write_all(new) {
            tracing::error!(reactor = %a, "cannot keep its journal as its standby: {e}");
            seg.broken = true;
            return;
        }
        seg.asked = None;
        let before = seg.records;
        seg.take(new);
        let (records, base) = (seg.records, seg.base);
        if (records != before || before == 0)
            && let Err(e) = self.send(from, a, &Msg::Held { address: a.0, first_step, records })
        {
            tracing::debug!(reactor = %a, "cannot tell node {from} what this node holds: {e}");
        }
        if base.is_some() && base == inn.next {
            inn.promote();
        }
    }

    fn ask_gap(&self, from: NodeId, a: Address, first_step: u64, have: u64, inn: &mut In) {
        let seg = inn.segs.get_mut(&first_step);
        if seg.as_ref().is_some_and(|s| s.asked == Some(have)) {
            return;
        }
        if let Some(s) = seg {
            s.asked = Some(have);
        }
        self.counters.lock().unwrap().gaps += 1;
        let _ = self.send(from, a, &Msg::Gap { address: a.0, first_step, have });
    }

    fn take_snapshot(&self, from: NodeId, a: Address, seq: u64, offset: u64, total: u64, bytes: &[u8]) {
        let mut ins = self.ins.lock().unwrap();
        let Some(inn) = ins.get_mut(&a).filter(|i| i.primary == from) else { return };
        let part = inn.dir.join("next.part");
        if offset == 0 {
            match fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&part) {
                Ok(f) => inn.part = Some((seq, f, 0)),
                Err(e) => {
                    tracing::error!(reactor = %a, "cannot keep its snapshot as its standby: {e}");
                    return;
                }
            }
        }
        let Some((s, f, written)) = inn.part.as_mut() else { return };
        if *s != seq || *written != offset {
            inn.part = None;
            return;
        }
        if let Err(e) = f.write_all_at(bytes, offset) {
            tracing::error!(reactor = %a, "cannot keep its snapshot as its standby: {e}");
            inn.part = None;
            return;
        }
        *written += bytes.len() as u64;
        if *written < total {
            return;
        }
        let (_, f, _) = inn.part.take().expect("checked");
        let next = inn.dir.join("next.snap");
        let opened = f
            .sync_all()
            .map_err(|e| e.to_string())
            .and_then(|()| fs::rename(&part, &next).map_err(|e| e.to_string()))
            .and_then(|()| SnapshotFile::open(&next, abi::ABI_VERSION).map_err(|e| e.to_string()));
        match opened {
            Ok(file) if file.meta().reactors.iter().map(|r| r.address).eq([a.0]) => {
                inn.next = Some(file.header().id);
                if inn.segs.values().any(|s| s.base == inn.next) {
                    inn.promote();
                }
                drop(ins);
                let _ = self.send(from, a, &Msg::HeldSnapshot { address: a.0, seq });
            }
            Ok(_) => tracing::warn!(reactor = %a, "node {from} sent a snapshot for {a} that holds other reactors"),
            Err(e) => tracing::warn!(reactor = %a, "node {from} sent a snapshot for {a} that is not usable: {e}"),
        }
    }

    /// Node `node` is down: take over what this node stands by for of its,
    /// if this node sees a majority (else wait for one).
    fn primary_down(&self, node: NodeId) {
        let mine: Vec<Address> = self.ins.lock().unwrap().iter().filter(|(_, i)| i.primary == node).map(|(a, _)| *a).collect();
        if mine.is_empty() {
            self.waiting.lock().unwrap().remove(&node);
            return;
        }
        if self.transport.members().iter().any(|m| m.info.id == node && m.up) {
            // Back up before this ran.
            self.waiting.lock().unwrap().remove(&node);
            return;
        }
        if !self.majority() {
            if self.waiting.lock().unwrap().insert(node) {
                tracing::warn!("node {node} is down, but this node sees no majority of the cluster: it does not take over its reactors yet");
            }
            return;
        }
        self.waiting.lock().unwrap().remove(&node);
        let seen = self.down_at.lock().unwrap().get(&node).copied().unwrap_or_else(Instant::now);
        for a in mine {
            let inn = {
                let mut ins = self.ins.lock().unwrap();
                let Some(inn) = ins.remove(&a) else { continue };
                self.taking.lock().unwrap().insert(a);
                inn
            };
            let _taking = Taking(&self.taking, a);
            if !self.claim(a, inn.generation + 1) {
                // Another node holds the next generation (the primary gave
                // the reactor another standby, or another took it over):
                // this copy is stale.
                tracing::warn!(reactor = %a, "node {node} is down, but this node's copy of {a} is not the one to take over: dropped");
                let _ = fs::remove_dir_all(&inn.dir);
                continue;
            }
            match self.take_over(a, inn) {
                Ok(steps) => {
                    let ms = seen.elapsed().as_secs_f64() * 1e3;
                    let mut c = self.counters.lock().unwrap();
                    c.takeovers += 1;
                    c.last_takeover_ms = ms;
                    c.last_takeover_steps = steps;
                    tracing::warn!(reactor = %a, "node {node} is down: took {a} over ({steps} call(s) replayed, {ms:.1} ms after node {node} was seen down)");
                }
                Err(e) => tracing::error!(reactor = %a, "node {node} is down, and {a} could not be taken over: {e}"),
            }
        }
    }

    /// Takes `a` over from its standby copy `inn`; the calls replayed.
    fn take_over(&self, a: Address, inn: In) -> Result<u64, String> {
        let module = match self.runtime.engine().module(&inn.module) {
            Some(m) => m,
            None => {
                let bytes = durable::module_bytes(&self.data_dir, &inn.module).ok_or_else(|| format!("its module {} is not here", inn.module))?;
                durable::load_and_keep(&self.data_dir, self.runtime.engine(), &inn.module, &bytes)?
            }
        };
        // From the newest snapshot held with its segment, or from the spawn.
        let (chain, start) = match inn.snap {
            Some(id) => {
                let f = SnapshotFile::open(&inn.dir.join("snapshot.snap"), abi::ABI_VERSION).map_err(|e| e.to_string())?;
                if f.header().id != id {
                    return Err("its snapshot changed under it".into());
                }
                let first = inn.segs.iter().find(|(_, s)| s.base == Some(id)).map(|(k, _)| *k).ok_or("no segment starts at its snapshot")?;
                (vec![f], first)
            }
            None => {
                let first = inn.segs.iter().find(|(_, s)| s.is_from_spawn()).map(|(k, _)| *k).ok_or("it has neither a snapshot nor its journal from its spawn")?;
                (Vec::new(), first)
            }
        };
        let jdir = reactor_dir(self.journals.dir(), a);
        make_dir(&jdir).map_err(|e| e.to_string())?;
        let mut segs = Vec::new();
        for (first, s) in inn.segs.range(start..) {
            if s.broken {
                break;
            }
            let from = inn.dir.join(format!("{first:020}.journal"));
            let to = segment_path(self.journals.dir(), a, *first);
            fs::rename(&from, &to).map_err(|e| format!("cannot move {}: {e}", from.display()))?;
            segs.push((to, s.bytes.clone()));
        }
        let epoch = inn.epoch + 1;
        let generation = inn.generation + 1;
        let (r, kept) = self.runtime.take_over(a, module, chain, segs)?;
        if r.failed {
            return Err(format!("its journal ends with its failure; it stays failed ({} call(s) replayed)", r.steps));
        }
        durable::write_durably(&inn.dir, OWNED_FILE, format!("{} {epoch}\n", inn.primary).as_bytes()).map_err(write_failure)?;
        self.owned.lock().unwrap().insert(a, (inn.primary, epoch));
        self.transport.set_location(a, self.me, epoch);
        self.transport.announce_moved(a, self.me, epoch);
        tracing::debug!(reactor = %a, "{kept} replies kept for requests sent again");
        // It lives here now, even if it once moved away from here (or was
        // taken over from here): a restart restores it.
        self.hub.arrived(a);
        // Its journal here starts at the standby's snapshot, which no
        // checkpoint of this node holds: a restart would not find it.
        self.hub.checkpoint_soon();
        // It needs a standby of its own: the ticker finds one.
        self.out.lock().unwrap().insert(
            a,
            Out::new(None, false, generation, epoch, inn.module),
        );
        Ok(r.steps)
    }

    /// Node `from` took `a` over at move count `epoch`: a copy here (this
    /// node ran it, and was down or cut off meanwhile) is dropped.
    fn lost(&self, from: NodeId, a: Address, epoch: u64) {
        if self.owned.lock().unwrap().get(&a).is_some_and(|&(_, e)| e >= epoch) {
            return;
        }
        let (_, known) = self.transport.location(a);
        if known > epoch {
            return;
        }
        let had_out = self.out.lock().unwrap().remove(&a).is_some();
        let live = self.runtime.module_of(a).is_some();
        self.transport.set_location(a, from, epoch);
        let dropped = (had_out || live) && self.runtime.drop_copy(a).unwrap_or(false);
        if a.node() == self.me {
            // Messages for it that reach this node go on to where it lives.
            let _ = self.runtime.set_moved(a, from);
        }
        if let Err(e) = self.hub.record_away(a, from, epoch) {
            tracing::error!(reactor = %a, "cannot record that {a} lives on node {from} now: {e}");
        }
        if !had_out && !live {
            return;
        }
        // Its journal here is kept aside, not replayed at a restart.
        let _ = durable::set_journal_aside(&self.data_dir, self.journals.dir(), a, &format!("epoch{epoch}"));
        if dropped {
            self.counters.lock().unwrap().copies_dropped += 1;
            tracing::warn!(reactor = %a, "node {from} took {a} over while this node was down or cut off: the copy here is dropped, with what it had not sent");
        }
    }
}

impl SegIn {
    /// Takes `new` bytes in: counts the records whole and checked.
    fn take(&mut self, new: &[u8]) {
        self.bytes.extend_from_slice(new);
        if self.broken || self.bytes.len() < journal_format::HEADER_LEN {
            return;
        }
        let j = match journal_format::Journal::open(&self.bytes) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("a standby journal segment is damaged: {e}");
                self.broken = true;
                return;
            }
        };
        if self.base.is_none() {
            let h = j.header();
            self.base = (!h.from_spawn()).then_some(SnapshotId(h.base));
        }
        let mut recs = match self.cursor {
            Some(c) => j.resume(c),
            None => j.records(),
        };
        loop {
            let before = recs.cursor();
            match recs.next() {
                None => {
                    // At the end for now (not `done`: more may come).
                    self.cursor = Some(before);
                    break;
                }
                Some(Ok(_)) => self.records += 1,
                Some(Err(journal_format::JournalError::Torn { .. })) => {
                    self.cursor = Some(before);
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!("a standby journal segment is damaged: {e}");
                    self.broken = true;
                    break;
                }
            }
        }
    }

    /// Cuts the segment at `len` bytes and counts its records again.
    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        let mut kept = std::mem::take(&mut self.bytes);
        kept.truncate(len as usize);
        (self.cursor, self.records, self.base, self.broken) = (None, 0, None, false);
        self.take(&kept);
        Ok(())
    }

    fn is_from_spawn(&self) -> bool {
        self.bytes.len() >= journal_format::HEADER_LEN && self.base.is_none() && !self.broken
    }
}

impl In {
    /// The snapshot held whole becomes the one a takeover starts from (its
    /// segment is here): older segments go.
    fn promote(&mut self) {
        let Some(id) = self.next.take() else { return };
        if fs::rename(self.dir.join("next.snap"), self.dir.join("snapshot.snap")).is_err() {
            return;
        }
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.snap = Some(id);
        let Some(first) = self.segs.iter().find(|(_, s)| s.base == Some(id)).map(|(k, _)| *k) else { return };
        let older: Vec<u64> = self.segs.range(..first).map(|(k, _)| *k).collect();
        for k in older {
            self.segs.remove(&k);
            let _ = fs::remove_file(self.dir.join(format!("{k:020}.journal")));
        }
    }
}

fn worker(this: &Weak<Standby>, rx: &Receiver<Work>) {
    loop {
        let w = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => {
                if this.strong_count() == 0 {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(me) = this.upgrade() else { return };
        match w {
            Work::Msg(from, m) => me.take(from, m),
            Work::Down(n) => me.primary_down(n),
        }
    }
}

fn ticker(this: &Weak<Standby>) {
    loop {
        std::thread::sleep(TICK);
        let Some(me) = this.upgrade() else { return };
        me.tick();
    }
}
