//! Supervision, in the spirit of OTP: the node keeps a tree of
//! supervision groups, monitors and links, and restarts journaled reactors
//! that fail.
//!
//! **Restarts.** A journaled reactor that fails is restarted from its last
//! snapshot and its journal, replayed up to (not including) the call that
//! failed it; its mailbox is kept (the shard parks what comes for it
//! meanwhile). The message that failed it is tried again, up to
//! `attempts` times in all, then given up as a dead letter (a request
//! answered with the failure). Restarts after the first in a window wait
//! the backoff, doubled each time.
//!
//! **Groups.** A reactor's durable children (`spawn_durable`) are one group
//! with the reactor as supervisor, in spawn order. By default the group is
//! one-for-one, resumed, with the node's intensity ([`Policy`]); the
//! reactor can declare another (`supervise`): one-for-all or rest-for-one,
//! each member restarted resumed (snapshot and journal) or fresh (from its
//! spawn with its init argument again, its old journal set aside under
//! `<data-dir>/dropped/`). A group's restart intensity counts the
//! restarts of all its members. One restart more *escalates*: every
//! member stops (given up: what waits on it is answered with the failure)
//! and the supervisor fails, with no message to blame; its own supervisor
//! (its parent's group, or the node for a reactor the host spawned)
//! decides what follows. When the supervisor is restarted, resumed, its
//! group is restarted with it; restarted fresh, its old children stop
//! and the new instance spawns its own. A reactor the host spawned escalates to the
//! operator: it is given up (it stays failed). A supervisor gone for good
//! takes its group with it.
//!
//! **Monitors and links.** A reactor gone for good (failed and not to be
//! restarted, given up, stopped) sends a `KIND_DOWN` envelope to each
//! reactor monitoring it; each reactor linked to it fails too (through its
//! own supervision), unless it traps exits, which turns that into a
//! `KIND_DOWN` envelope. A restart keeps the address and the mailbox: it
//! is not "gone". Across nodes ([`wire`]): the watcher's node records the
//! watch and sends it to the node where the target lives, which records
//! it too and sends a `Down` back when the target is gone (or at once, if
//! it is not there). When a node is declared down, every watch of a
//! reactor there fires with "node N is down" (Erlang's `noconnection`),
//! and watches it held of reactors here are forgotten. A `Down` from a
//! peer counts only for a watch this node recorded, of a reactor that
//! lives on that peer.
//!
//! The tree is kept in `<data-dir>/supervision/tree.json` (written
//! durably when it changed; each member's init argument in
//! `<data-dir>/supervision/<address>.init`), so a node restarted after a
//! crash supervises its journaled reactors as before. It all runs on one
//! thread, fed by the journal writer's failure hook (once the failed
//! journal is sealed and its post-mortem bundle made) and by the shards
//! through the runtime's tree handler.
#![forbid(unsafe_code)]

pub mod wire;

use super::durable::write_durably;
use super::postmortem::newest_start;
use reactor_runtime::journal::{FailedReactor, Journals, Level, reactor_dir, segments};
use reactor_runtime::local_fs::{self, Access};
use reactor_runtime::snapshot::SnapshotFile;
use reactor_runtime::tree::{GroupSpec, RestartFrom, Strategy, TreeEvent, WatchOp};
use reactor_runtime::{Address, Envelope, Failure, KIND_NODE, ModuleHash, NodeId, ReactorState, Runtime, abi};
use reactor_transport::Transport;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How a node restarts its journaled reactors (and the default of a
/// group whose supervisor declared nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Restarts allowed within [`Policy::within`] (0: never restart).
    pub max_restarts: u32,
    pub within: Duration,
    /// The wait before a restart that is not the first in the window
    /// (doubled for each further one).
    pub backoff: Duration,
    /// How many times in all a message that fails the reactor is given to
    /// it before it is a dead letter.
    pub attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { max_restarts: 1, within: Duration::from_secs(5), backoff: Duration::from_millis(10), attempts: 1 }
    }
}

impl Policy {
    /// The group spec of a supervisor that declared none.
    fn spec(self) -> GroupSpec {
        GroupSpec {
            strategy: Strategy::OneForOne,
            restart: RestartFrom::Resume,
            max_restarts: self.max_restarts,
            within: self.within,
            backoff: self.backoff,
            attempts: self.attempts.max(1),
        }
    }
}

/// The longest a backoff waits (the supervisor thread waits it).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The most reactors one reactor monitors and links at once.
pub const MAX_WATCHES: u32 = 4096;
/// The most `KIND_DOWN` envelopes kept for one reactor whose inbox is
/// full (tried again every [`RETRY_DOWNS`]); more are dropped, counted.
pub const MAX_PENDING_DOWNS: usize = 1024;
const RETRY_DOWNS: Duration = Duration::from_millis(20);

/// A message given up on: it failed its reactor `attempts` times, or its
/// reactor was given up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub reactor: String,
    pub step: u64,
    pub from: String,
    pub kind: &'static str,
    pub bytes: usize,
    pub failure: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

/// What the supervisor did, for the node's status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    /// Reactors restarted after they failed.
    pub restarts: u64,
    /// Members restarted because another of their group failed
    /// (one-for-all, rest-for-one) or their supervisor was restarted.
    pub group_restarts: u64,
    /// Restart intensities exceeded.
    pub escalations: u64,
    pub restart_failures: u64,
    pub dead_letters: u64,
    /// `KIND_DOWN` envelopes delivered (monitors, trapped links).
    pub downs: u64,
    /// `KIND_DOWN` envelopes dropped: their reactor had [`MAX_PENDING_DOWNS`]
    /// waiting for room in its inbox already.
    pub downs_dropped: u64,
    /// Monitors and links refused: their reactor had [`MAX_WATCHES`].
    pub watches_refused: u64,
    /// Reactors failed because a reactor linked to them was gone.
    pub link_failures: u64,
    /// Groups, monitors and links in the tree now.
    pub groups: usize,
    pub monitors: usize,
    pub links: usize,
    /// The latest dead letters (at most [`KEPT`]).
    pub recent_dead_letters: VecDeque<DeadLetter>,
}

/// Dead letters kept for the status report.
pub const KEPT: usize = 32;

enum Event {
    Failed(FailedReactor),
    Tree(TreeEvent),
    /// The node's transport, once it runs: watches across nodes.
    Net(Transport),
    /// A tree message from a peer.
    Remote(NodeId, wire::Msg),
    NodeDown(NodeId),
    /// Stop a reactor for good (the operator asked): not restarted.
    Stop(Address),
}

/// The node's supervisor.
pub struct Supervisor {
    tx: Mutex<Option<Sender<Event>>>,
    counters: Arc<Mutex<Counters>>,
    /// The last [`RECENT`] failures of journaled reactors (when, which,
    /// why), for the web view: they are restarted, so they leave no failed
    /// reactor behind to show.
    recent: Mutex<VecDeque<(std::time::SystemTime, Address, String)>>,
}

/// How many recent failures a supervisor remembers.
const RECENT: usize = 50;

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts the supervisor thread for `runtime`, whose data directory is
    /// `data_dir`, and makes it the keeper of the runtime's tree. Without
    /// a `policy` nothing is restarted (monitors and links still work).
    pub fn start(runtime: Arc<Runtime>, data_dir: PathBuf, journals: Arc<Journals>, policy: Option<Policy>) -> std::io::Result<Self> {
        let (tx, rx) = channel::<Event>();
        let counters: Arc<Mutex<Counters>> = Arc::default();
        let dir = data_dir.join(TREE_DIR);
        let tree = match Tree::load(&dir) {
            Ok(t) => t,
            Err(why) => {
                // The node goes on: its reactors run, unsupervised by
                // groups until they declare again; the damaged file stays
                // for the operator.
                tracing::error!("{why}; supervision groups, monitors and links start empty");
                let _ = std::fs::rename(dir.join(TREE_FILE), dir.join(format!("{TREE_FILE}.damaged")));
                Tree::default()
            }
        };
        let tree_tx = Mutex::new(tx.clone());
        runtime.set_tree_handler(Box::new(move |e| {
            let _ = tree_tx.lock().expect("tree sender").send(Event::Tree(e));
        }));
        let mut keeper = Keeper {
            runtime,
            journal_dir: journals.dir().to_path_buf(),
            journals,
            data_dir,
            dir,
            policy,
            counters: counters.clone(),
            watches: tree.watch_counts(),
            tree,
            top_history: HashMap::new(),
            stopping: HashSet::new(),
            attempts: HashMap::new(),
            dirty: false,
            pending: VecDeque::new(),
            pending_for: HashMap::new(),
            net: None,
        };
        std::thread::Builder::new().name("supervisor".into()).spawn(move || keeper.run(&rx))?;
        Ok(Self { tx: Mutex::new(Some(tx)), counters, recent: Mutex::new(VecDeque::new()) })
    }

    fn send(&self, e: Event) {
        if let Some(tx) = self.tx.lock().expect("supervisor").as_ref() {
            let _ = tx.send(e);
        }
    }

    /// Hands a failed journaled reactor to the supervisor.
    pub fn failed(&self, f: &FailedReactor) {
        {
            let mut r = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if r.len() >= RECENT {
                r.pop_front();
            }
            r.push_back((std::time::SystemTime::now(), f.address, f.failure.clone()));
        }
        self.send(Event::Failed(f.clone()));
    }

    /// The last failures of journaled reactors, oldest first.
    pub fn recent_failures(&self) -> Vec<(std::time::SystemTime, Address, String)> {
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
    }

    /// Gives the supervisor the node's transport: monitors and links of
    /// reactors on other nodes.
    pub fn set_transport(&self, t: Transport) {
        self.send(Event::Net(t));
    }

    /// A tree message from node `from` (on a transport thread: queued).
    pub fn deliver(&self, from: NodeId, msg: wire::Msg) {
        self.send(Event::Remote(from, msg));
    }

    /// Node `node` was declared down.
    pub fn node_down(&self, node: NodeId) {
        self.send(Event::NodeDown(node));
    }

    /// Stops the reactor `a` of this node for good, as its operator asks
    /// (the web view's stop): it fails with "stopped by the operator" and
    /// is not restarted, whatever its supervision; its monitors get their
    /// `Down`.
    pub fn stop(&self, a: Address) {
        self.send(Event::Stop(a));
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().expect("counters").clone()
    }
}

const TREE_DIR: &str = "supervision";
const TREE_FILE: &str = "tree.json";
/// The largest tree file read back (a damaged or planted one is refused).
const MAX_TREE_FILE: u64 = 256 << 20;

/// A member of a group: what a fresh restart needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Member {
    address: u64,
    /// Hex SHA-256 of its module.
    module: String,
    level: u32,
    flags: u8,
}

impl Member {
    fn module(&self) -> Option<ModuleHash> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&self.module, &mut h).ok()?;
        Some(ModuleHash(h))
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Group {
    parent: u64,
    spec: Option<GroupSpec>,
    members: Vec<Member>,
    /// Restart times in the intensity window.
    #[serde(skip)]
    history: VecDeque<Instant>,
    /// Members stopped by an escalation, with the step to bring each back
    /// to, restarted when the supervisor is.
    #[serde(skip)]
    stopped: Vec<(Address, u64)>,
}

/// The supervision tree, as kept on disk.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Tree {
    groups: Vec<Group>,
    /// (target, watcher)
    monitors: BTreeSet<(u64, u64)>,
    /// Both ways: (a, b) with a < b.
    links: BTreeSet<(u64, u64)>,
    trapping: BTreeSet<u64>,
}

impl Tree {
    fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(TREE_FILE);
        match local_fs::read_file(&path, "the supervision tree", MAX_TREE_FILE, Access::Any) {
            Ok((bytes, _)) => serde_json::from_slice(&bytes).map_err(|e| format!("{} is damaged: {e}", path.display())),
            Err(local_fs::FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn group(&self, parent: Address) -> Option<&Group> {
        self.groups.iter().find(|g| g.parent == parent.0)
    }

    fn group_mut(&mut self, parent: Address) -> &mut Group {
        match self.groups.iter().position(|g| g.parent == parent.0) {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(Group { parent: parent.0, ..Group::default() });
                self.groups.last_mut().expect("just pushed")
            }
        }
    }

    fn parent_of(&self, child: Address) -> Option<Address> {
        self.groups.iter().find(|g| g.members.iter().any(|m| m.address == child.0)).map(|g| Address(g.parent))
    }

    fn member(&self, parent: Address, child: Address) -> Option<&Member> {
        self.group(parent)?.members.iter().find(|m| m.address == child.0)
    }

    /// How many reactors each reactor monitors and links.
    fn watch_counts(&self) -> HashMap<u64, u32> {
        let mut n: HashMap<u64, u32> = HashMap::new();
        for &(_, w) in &self.monitors {
            *n.entry(w).or_default() += 1;
        }
        for &(a, b) in &self.links {
            *n.entry(a).or_default() += 1;
            *n.entry(b).or_default() += 1;
        }
        n
    }

    fn linked(&self, a: Address) -> Vec<Address> {
        self.links.iter().filter_map(|&(x, y)| if x == a.0 { Some(Address(y)) } else if y == a.0 { Some(Address(x)) } else { None }).collect()
    }
}

fn link_key(a: Address, b: Address) -> (u64, u64) {
    (a.0.min(b.0), a.0.max(b.0))
}

struct Keeper {
    runtime: Arc<Runtime>,
    journals: Arc<Journals>,
    journal_dir: PathBuf,
    data_dir: PathBuf,
    /// `<data-dir>/supervision`
    dir: PathBuf,
    policy: Option<Policy>,
    counters: Arc<Mutex<Counters>>,
    tree: Tree,
    /// Restart times of reactors the host spawned (each its own intensity).
    top_history: HashMap<Address, VecDeque<Instant>>,
    /// Reactors being stopped by the operator (see `Supervisor::stop`).
    stopping: HashSet<Address>,
    attempts: HashMap<(Address, u64), u32>,
    dirty: bool,
    /// How many reactors each reactor monitors and links.
    watches: HashMap<u64, u32>,
    /// `KIND_DOWN` envelopes waiting for room in their reactor's inbox,
    /// and how many for each reactor.
    pending: VecDeque<(Address, Envelope)>,
    pending_for: HashMap<Address, usize>,
    /// The node's transport (watches across nodes), once it runs.
    net: Option<Transport>,
}

type Dead = Option<(Envelope, Failure)>;

impl Keeper {
    fn run(&mut self, rx: &Receiver<Event>) {
        loop {
            let wait = if self.pending.is_empty() { Duration::from_secs(3600) } else { RETRY_DOWNS };
            match rx.recv_timeout(wait) {
                Ok(e) => {
                    self.handle(e);
                    // Everything already queued, then one write of the tree.
                    while let Ok(e) = rx.try_recv() {
                        self.handle(e);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.retry_downs();
            if self.dirty {
                self.save();
            }
        }
    }

    /// Tries the waiting `KIND_DOWN` envelopes again, in order.
    fn retry_downs(&mut self) {
        for _ in 0..self.pending.len() {
            let Some((to, env)) = self.pending.pop_front() else { break };
            self.pending_for.entry(to).and_modify(|n| *n -= 1);
            self.deliver(to, env);
        }
        self.pending_for.retain(|_, n| *n > 0);
    }

    fn handle(&mut self, e: Event) {
        match e {
            Event::Failed(f) => self.failed(f),
            Event::Tree(t) => self.tree_event(t),
            Event::Net(t) => self.net = Some(t),
            Event::Remote(from, m) => self.remote(from, m),
            Event::NodeDown(n) => self.node_down(n),
            Event::Stop(a) => {
                self.stopping.insert(a);
                self.fail_from_outside(a, "stopped by the operator".into());
                self.stopping.remove(&a);
            }
        }
        let mut c = self.counters.lock().expect("counters");
        c.groups = self.tree.groups.len();
        c.monitors = self.tree.monitors.len();
        c.links = self.tree.links.len();
    }

    fn save(&mut self) {
        self.dirty = false;
        let bytes = serde_json::to_vec(&self.tree).expect("the tree serializes");
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir) {
            tracing::error!("cannot create {}: {e}; the supervision tree is not kept", self.dir.display());
            return;
        }
        if let Err(w) = write_durably(&self.dir, TREE_FILE, &bytes) {
            tracing::error!("cannot {} {}: {}; the supervision tree on disk is behind", w.op, w.path.display(), w.source);
        }
    }

    fn shard(&self, a: Address) -> usize {
        a.shard() % self.runtime.shards()
    }

    /// Runs `f` on `a`'s shard (`None` if the shard is down).
    fn on<R: Send + 'static>(&self, a: Address, f: impl FnOnce(&mut reactor_runtime::Shard) -> R + Send + 'static) -> Option<R> {
        self.runtime.inspect(self.shard(a), f).ok()
    }

    fn tree_event(&mut self, e: TreeEvent) {
        match e {
            TreeEvent::Supervise { parent, spec } => {
                self.tree.group_mut(parent).spec = Some(spec);
                self.dirty = true;
            }
            TreeEvent::Spawned { parent, child, module, init, flags, level } => {
                if !parent.is_reactor() {
                    return;
                }
                // What a fresh restart starts it with.
                if let Err(w) = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))
                    .and_then(|()| {
                        write_durably(&self.dir, &init_name(child), &init)
                            .map_err(|w| format!("cannot {} {}: {}", w.op, w.path.display(), w.source))
                    })
                {
                    tracing::error!(reactor = %child, "{w}; a fresh restart of {child} will not be possible");
                }
                let m = Member { address: child.0, module: module.to_hex(), level: level as u32, flags };
                self.tree.group_mut(parent).members.push(m);
                self.dirty = true;
            }
            TreeEvent::Watch { me, target, op } => self.watch(me, target, op),
            TreeEvent::TrapExits { me, on } => {
                self.dirty |= if on { self.tree.trapping.insert(me.0) } else { self.tree.trapping.remove(&me.0) };
            }
            TreeEvent::Gone { address, reason } => self.gone(address, &reason),
        }
    }

    fn is_live(&self, a: Address) -> bool {
        matches!(self.runtime.state(a), Some(ReactorState::Running))
    }

    /// Counts one more watch of `me`'s; false (refused, logged) past
    /// [`MAX_WATCHES`].
    fn one_more_watch(&mut self, me: Address) -> bool {
        let n = self.watches.entry(me.0).or_default();
        if *n >= MAX_WATCHES {
            self.counters.lock().expect("counters").watches_refused += 1;
            tracing::warn!(reactor = %me, "{me} monitors and links {MAX_WATCHES} reactors already: one more is refused");
            return false;
        }
        *n += 1;
        true
    }

    fn one_less_watch(&mut self, me: u64) {
        if let Some(n) = self.watches.get_mut(&me) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.watches.remove(&me);
            }
        }
    }

    fn me(&self) -> NodeId {
        self.runtime.refs().node()
    }

    /// Whether `a` is a reactor of this node (live, failed or waiting for
    /// its supervisor).
    fn here(&self, a: Address) -> bool {
        self.runtime.state(a).is_some()
    }

    /// The node where `a` lives, if not this one and the transport runs.
    fn elsewhere(&self, a: Address) -> Option<NodeId> {
        if self.here(a) {
            return None;
        }
        let node = self.net.as_ref()?.location(a).0;
        (node != self.me()).then_some(node)
    }

    /// Sends a tree message to `node` (waits for room: this thread only);
    /// false if it cannot go.
    fn send(&self, node: NodeId, key: Address, msg: &wire::Msg) -> bool {
        let Some(net) = &self.net else { return false };
        let me = self.me();
        let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(me), corr: 0, payload: wire::encode(msg) };
        match net.send_on(super::standby::CHANNEL, node, Address::host_of(node), env, key.0) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot tell node {node} of {msg:?}: {e}");
                false
            }
        }
    }

    fn watch(&mut self, me: Address, target: Address, op: WatchOp) {
        if let Some(node) = self.elsewhere(target) {
            return self.watch_remote(me, target, op, node);
        }
        self.watch_local(me, target, op);
    }

    /// `me` (here or on another node) watches `target` (of this node, or
    /// nowhere).
    fn watch_local(&mut self, me: Address, target: Address, op: WatchOp) {
        match op {
            WatchOp::Monitor => {
                if self.is_live(target) {
                    if !self.tree.monitors.contains(&(target.0, me.0)) && self.one_more_watch(me) {
                        self.tree.monitors.insert((target.0, me.0));
                        self.dirty = true;
                    }
                } else {
                    self.down(me, target, abi::DOWN_MONITOR, &format!("no live reactor {target} on this node"));
                }
            }
            WatchOp::Demonitor => {
                if self.tree.monitors.remove(&(target.0, me.0)) {
                    self.one_less_watch(me.0);
                    self.dirty = true;
                }
            }
            WatchOp::Link => {
                if self.is_live(target) {
                    if !self.tree.links.contains(&link_key(me, target)) && self.one_more_watch(me) {
                        if self.one_more_watch(target) {
                            self.tree.links.insert(link_key(me, target));
                            self.dirty = true;
                        } else {
                            self.one_less_watch(me.0);
                        }
                    }
                } else {
                    self.linked_gone(me, target, &format!("no live reactor {target} on this node"));
                }
            }
            WatchOp::Unlink => {
                if self.tree.links.remove(&link_key(me, target)) {
                    self.one_less_watch(me.0);
                    self.one_less_watch(target.0);
                    self.dirty = true;
                }
            }
        }
    }

    /// `me` (here) watches `target` on `node`: recorded here (for that
    /// node's going down), and asked of that node.
    fn watch_remote(&mut self, me: Address, target: Address, op: WatchOp, node: NodeId) {
        let op = match op {
            WatchOp::Monitor => {
                if self.tree.monitors.contains(&(target.0, me.0)) || !self.one_more_watch(me) {
                    return;
                }
                self.tree.monitors.insert((target.0, me.0));
                wire::OP_MONITOR
            }
            WatchOp::Demonitor => {
                if !self.tree.monitors.remove(&(target.0, me.0)) {
                    return;
                }
                self.one_less_watch(me.0);
                wire::OP_DEMONITOR
            }
            WatchOp::Link => {
                if self.tree.links.contains(&link_key(me, target)) || !self.one_more_watch(me) {
                    return;
                }
                self.tree.links.insert(link_key(me, target));
                wire::OP_LINK
            }
            WatchOp::Unlink => {
                if !self.tree.links.remove(&link_key(me, target)) {
                    return;
                }
                self.one_less_watch(me.0);
                wire::OP_UNLINK
            }
        };
        self.dirty = true;
        if !self.send(node, target, &wire::Msg::Watch { watcher: me.0, target: target.0, op }) && matches!(op, wire::OP_MONITOR | wire::OP_LINK) {
            // Not recorded there: it fires now, as for a node that is down.
            let reason = format!("node {node} cannot be reached");
            if op == wire::OP_MONITOR {
                self.tree.monitors.remove(&(target.0, me.0));
                self.one_less_watch(me.0);
                self.down(me, target, abi::DOWN_MONITOR, &reason);
            } else {
                self.tree.links.remove(&link_key(me, target));
                self.one_less_watch(me.0);
                self.linked_gone(me, target, &reason);
            }
        }
    }

    /// A tree message from node `from`.
    fn remote(&mut self, from: NodeId, m: wire::Msg) {
        let lives_on = |k: &Self, a: Address| k.net.as_ref().is_some_and(|n| n.location(a).0 == from);
        match m {
            wire::Msg::Watch { watcher, target, op } => {
                let (watcher, target) = (Address(watcher), Address(target));
                // Only for a watcher of the node that asks.
                if !lives_on(self, watcher) || self.here(watcher) {
                    tracing::debug!("node {from} asked a watch for {watcher}, which does not live there: dropped");
                    return;
                }
                let op = match op {
                    wire::OP_MONITOR => WatchOp::Monitor,
                    wire::OP_DEMONITOR => WatchOp::Demonitor,
                    wire::OP_LINK => WatchOp::Link,
                    _ => WatchOp::Unlink,
                };
                // As a watch made here, but not forwarded again.
                if !self.here(target) && matches!(op, WatchOp::Monitor | WatchOp::Link) {
                    let link = op == WatchOp::Link;
                    let reason = format!("no live reactor {target} on node {}", self.me());
                    self.send(from, watcher, &wire::Msg::Down { to: watcher.0, from: target.0, link, reason });
                    return;
                }
                self.watch_local(watcher, target, op);
            }
            wire::Msg::Down { to, from: gone, link, reason } => {
                let (to, gone) = (Address(to), Address(gone));
                // Only for a watch recorded here, of a reactor of that node.
                let recorded = if link {
                    self.tree.links.contains(&link_key(to, gone))
                } else {
                    self.tree.monitors.contains(&(gone.0, to.0))
                };
                if !recorded || !lives_on(self, gone) || !self.here(to) {
                    tracing::debug!("node {from} said {gone} is gone, for no watch of {to}'s recorded here: dropped");
                    return;
                }
                self.dirty = true;
                if link {
                    self.tree.links.remove(&link_key(to, gone));
                    self.one_less_watch(to.0);
                    self.linked_gone(to, gone, &reason);
                } else {
                    self.tree.monitors.remove(&(gone.0, to.0));
                    self.one_less_watch(to.0);
                    self.down(to, gone, abi::DOWN_MONITOR, &reason);
                }
            }
        }
    }

    /// Node `node` is down: every watch of a reactor there fires (as
    /// Erlang's `noconnection`), watches it held of reactors here go.
    fn node_down(&mut self, node: NodeId) {
        let Some(net) = self.net.clone() else { return };
        let rt = self.runtime.clone();
        let there = move |a: u64| net.location(Address(a)).0 == node && rt.state(Address(a)).is_none();
        let monitors: Vec<(u64, u64)> = self.tree.monitors.iter().copied().filter(|&(t, w)| there(t) || there(w)).collect();
        let links: Vec<(u64, u64)> = self.tree.links.iter().copied().filter(|&(a, b)| there(a) || there(b)).collect();
        if monitors.is_empty() && links.is_empty() {
            return;
        }
        self.dirty = true;
        let reason = format!("node {node} is down");
        for (t, w) in monitors {
            self.tree.monitors.remove(&(t, w));
            self.one_less_watch(w);
            if there(t) && self.here(Address(w)) {
                self.down(Address(w), Address(t), abi::DOWN_MONITOR, &reason);
            }
        }
        for (a, b) in links {
            self.tree.links.remove(&(a, b));
            self.one_less_watch(a);
            self.one_less_watch(b);
            let (mine, theirs) = if there(a) { (b, a) } else { (a, b) };
            if self.here(Address(mine)) {
                self.linked_gone(Address(mine), Address(theirs), &reason);
            }
        }
    }

    /// Sends `to` a `KIND_DOWN` envelope from `from` (through its node, if
    /// it lives on another).
    fn down(&mut self, to: Address, from: Address, how: u8, reason: &str) {
        if let Some(node) = self.elsewhere(to) {
            let reason = clip(reason).to_owned();
            self.send(node, to, &wire::Msg::Down { to: to.0, from: from.0, link: how == abi::DOWN_LINK, reason });
            return;
        }
        let reason = clip(reason);
        let mut payload = Vec::with_capacity(1 + reason.len());
        payload.push(how);
        payload.extend_from_slice(reason.as_bytes());
        let env = Envelope { kind: abi::KIND_DOWN, flags: 0, from, corr: 0, payload };
        self.deliver(to, env);
    }

    /// Queues a `KIND_DOWN` envelope, or keeps it to try again while its
    /// reactor's inbox is full (up to [`MAX_PENDING_DOWNS`] for it).
    fn deliver(&mut self, to: Address, env: Envelope) {
        let from = env.from;
        match self.on(to, move |s| s.signal(to, env)) {
            Some(Ok(true)) => self.counters.lock().expect("counters").downs += 1,
            Some(Err(env)) => {
                let n = self.pending_for.entry(to).or_default();
                if *n < MAX_PENDING_DOWNS {
                    *n += 1;
                    self.pending.push_back((to, env));
                } else {
                    self.counters.lock().expect("counters").downs_dropped += 1;
                    tracing::warn!(reactor = %to, "{to} has {MAX_PENDING_DOWNS} notices waiting for room already: the one that {from} is gone is dropped");
                }
            }
            Some(Ok(false)) | None => tracing::debug!(reactor = %to, "{to} is not here to be told that {from} is gone"),
        }
    }

    /// `address` is gone for good: its monitors are told, its links fire,
    /// its group (if it supervised one) goes with it.
    fn gone(&mut self, address: Address, reason: &str) {
        let watchers: Vec<Address> =
            self.tree.monitors.range((address.0, 0)..=(address.0, u64::MAX)).map(|&(_, w)| Address(w)).collect();
        for w in &watchers {
            self.tree.monitors.remove(&(address.0, w.0));
            self.one_less_watch(w.0);
        }
        // What it watched does not need to tell it any more.
        self.tree.monitors.retain(|&(_, w)| w != address.0);
        let linked = self.tree.linked(address);
        for l in &linked {
            self.tree.links.remove(&link_key(address, *l));
            self.one_less_watch(l.0);
        }
        self.watches.remove(&address.0);
        self.tree.trapping.remove(&address.0);
        self.dirty = true;
        for w in watchers {
            self.down(w, address, abi::DOWN_MONITOR, reason);
        }
        for l in linked {
            self.linked_gone(l, address, reason);
        }
        if self.tree.group(address).is_some() {
            self.stop_subtree(address, &format!("its supervisor {address} is gone: {reason}"));
        }
    }

    /// `me` is linked to `other`, which is gone: a `KIND_DOWN` envelope if
    /// it traps exits, else it fails too.
    fn linked_gone(&mut self, me: Address, other: Address, reason: &str) {
        if let Some(node) = self.elsewhere(me) {
            self.send(node, me, &wire::Msg::Down { to: me.0, from: other.0, link: true, reason: clip(reason).to_owned() });
            return;
        }
        if self.tree.trapping.contains(&me.0) {
            self.down(me, other, abi::DOWN_LINK, reason);
            return;
        }
        let why = format!("linked reactor {other} is gone: {reason}");
        self.counters.lock().expect("counters").link_failures += 1;
        tracing::warn!(reactor = %me, "{me} fails: {why}");
        self.fail_from_outside(me, why);
    }

    /// Fails `a` with no message to blame: a supervised journaled reactor
    /// goes to its supervision (restarted as it was); any other is gone
    /// for good.
    fn fail_from_outside(&mut self, a: Address, why: String) {
        if self.policy.is_some() {
            let module = self.runtime.module_of(a);
            let w = why.clone();
            if let (Some(module), Some(Some(step))) = (module, self.on(a, move |s| s.suspend(a, &w))) {
                self.journals.sync();
                self.failed(FailedReactor { address: a, module, step, failure: why, segments: Vec::new() });
                return;
            }
        }
        let w = why.clone();
        if self.on(a, move |s| s.stop_for_good(a, &w)) != Some(true) {
            tracing::debug!(reactor = %a, "{a} is not here to fail ({why})");
        }
    }

    /// A supervised journaled reactor failed (its journal sealed): restart
    /// it, with whom its group's strategy says, or escalate.
    fn failed(&mut self, f: FailedReactor) {
        if self.stopping.contains(&f.address) {
            // Stopped by the operator: given up, not restarted.
            let a = f.address;
            if self.on(a, move |s| s.give_up(a)).flatten().is_some() {
                self.note_dead(&f, None);
            }
            return;
        }
        let Some(policy) = self.policy else { return };
        let parent = self.tree.parent_of(f.address);
        let spec = parent.and_then(|p| self.tree.group(p)?.spec).unwrap_or_else(|| policy.spec());
        let now = Instant::now();
        let history = match parent {
            Some(p) => &mut self.tree.group_mut(p).history,
            None => self.top_history.entry(f.address).or_default(),
        };
        while history.front().is_some_and(|t| now.duration_since(*t) > spec.within) {
            history.pop_front();
        }
        if history.len() >= spec.max_restarts as usize {
            self.escalate(&f, parent, &spec);
            return;
        }
        let before = history.len();
        history.push_back(now);
        if before > 0 {
            let wait = spec.backoff.saturating_mul(2u32.saturating_pow(before as u32 - 1)).min(MAX_BACKOFF);
            std::thread::sleep(wait);
        }
        let n = self.attempts.entry((f.address, f.step)).or_insert(0);
        *n += 1;
        let retry = *n < spec.attempts;
        // Who restarts with it, in spawn order.
        let with: Vec<Address> = match parent.and_then(|p| self.tree.group(p)) {
            None => Vec::new(),
            Some(g) => {
                let all: Vec<Address> = g.members.iter().map(|m| Address(m.address)).collect();
                let at = all.iter().position(|a| *a == f.address).unwrap_or(0);
                match spec.strategy {
                    Strategy::OneForOne => Vec::new(),
                    Strategy::OneForAll => all.into_iter().filter(|a| *a != f.address).collect(),
                    Strategy::RestForOne => all.into_iter().skip(at + 1).collect(),
                }
            }
        };
        // Stopped in the reverse order, as OTP stops them.
        let mut stopped: Vec<(Address, u64)> = Vec::new();
        for &m in with.iter().rev() {
            let why = format!("restarted with its group: {} failed", f.address);
            if let Some(Some(step)) = self.on(m, move |s| s.suspend(m, &why)) {
                stopped.push((m, step));
            }
        }
        if !stopped.is_empty() {
            self.journals.sync();
        }
        let order: Vec<Address> = match parent.and_then(|p| self.tree.group(p)) {
            Some(g) => g.members.iter().map(|m| Address(m.address)).collect(),
            None => vec![f.address],
        };
        for a in order {
            if a == f.address {
                match self.restart(parent, spec.restart, f.address, Some(f.module), f.step, retry) {
                    Ok(dead) => {
                        self.counters.lock().expect("counters").restarts += 1;
                        tracing::warn!(
                            reactor = %f.address,
                            "restarted {} ({}); the message that failed it is {}",
                            f.address,
                            match spec.restart {
                                RestartFrom::Resume => "from its journal",
                                RestartFrom::Fresh => "from its spawn",
                            },
                            if retry { "tried again" } else { "a dead letter" }
                        );
                        if let Some(d) = dead {
                            self.note_dead(&f, Some(d));
                        }
                        self.restart_stopped_group(f.address);
                    }
                    Err(why) => self.could_not_restart(f.address, &why),
                }
            } else if let Some(&(_, step)) = stopped.iter().find(|(m, _)| *m == a) {
                self.restart_with_group(parent, spec.restart, a, step);
            }
        }
    }

    fn restart_with_group(&mut self, parent: Option<Address>, from: RestartFrom, a: Address, step: u64) {
        match self.restart(parent, from, a, None, step, false) {
            Ok(_) => {
                self.counters.lock().expect("counters").group_restarts += 1;
                tracing::warn!(reactor = %a, "restarted {a} with its group");
                self.restart_stopped_group(a);
            }
            Err(why) => self.could_not_restart(a, &why),
        }
    }

    fn could_not_restart(&mut self, a: Address, why: &str) {
        self.on(a, move |s| s.give_up(a));
        self.counters.lock().expect("counters").restart_failures += 1;
        tracing::error!(reactor = %a, "could not restart {a}: {why}; it stays failed");
    }

    /// `a` was restarted: the members of its group an escalation stopped
    /// are restarted too (its intensity window starts over).
    fn restart_stopped_group(&mut self, a: Address) {
        let Some(g) = self.tree.groups.iter_mut().find(|g| g.parent == a.0) else { return };
        let stopped = std::mem::take(&mut g.stopped);
        if stopped.is_empty() {
            return;
        }
        g.history.clear();
        let from = g.spec.map_or(RestartFrom::Resume, |s| s.restart);
        for (m, step) in stopped {
            self.restart_with_group(Some(a), from, m, step);
        }
    }

    /// More restarts than the intensity allows: a reactor the host spawned
    /// is given up; a group stops and its supervisor fails.
    fn escalate(&mut self, f: &FailedReactor, parent: Option<Address>, spec: &GroupSpec) {
        self.counters.lock().expect("counters").escalations += 1;
        let a = f.address;
        let Some(p) = parent else {
            let given_up = self.on(a, move |s| s.give_up(a)).flatten();
            tracing::error!(
                reactor = %a,
                "{a} failed again at step {}: more than {} restart(s) within {:?}; escalated, it stays failed",
                f.step,
                spec.max_restarts,
                spec.within
            );
            if given_up.is_some() {
                self.note_dead(f, None);
            }
            return;
        };
        let why = format!(
            "escalated: its child {a} failed more than {} time(s) within {:?} (last: {})",
            spec.max_restarts, spec.within, f.failure
        );
        tracing::error!(reactor = %p, "{p} fails: {why}; its group stops");
        let members: Vec<Address> = self.tree.group(p).map(|g| g.members.iter().map(|m| Address(m.address)).collect()).unwrap_or_default();
        let mut stopped = Vec::new();
        for &m in members.iter().rev() {
            if m == a {
                stopped.push((m, f.step));
            } else {
                let w = format!("its supervision group stopped: {why}");
                if let Some(Some(step)) = self.on(m, move |s| s.suspend(m, &w)) {
                    stopped.push((m, step));
                }
            }
        }
        self.journals.sync();
        for &(m, _) in &stopped {
            if self.on(m, move |s| s.give_up(m)).flatten().is_some() && m == a {
                self.note_dead(f, None);
            }
        }
        stopped.reverse();
        let g = self.tree.group_mut(p);
        g.stopped = stopped;
        g.history.clear();
        self.fail_from_outside(p, why);
    }

    /// Stops `a`'s group for good, and theirs, and forgets them (`a`
    /// starts over or is gone).
    fn stop_subtree(&mut self, a: Address, why: &str) {
        let Some(i) = self.tree.groups.iter().position(|g| g.parent == a.0) else { return };
        let g = self.tree.groups.remove(i);
        self.dirty = true;
        for m in g.members.iter().rev() {
            let m = Address(m.address);
            self.stop_subtree(m, why);
            let w = why.to_owned();
            self.on(m, move |s| s.stop_for_good(m, &w));
            let _ = std::fs::remove_file(self.dir.join(init_name(m)));
        }
    }

    /// Restarts `a` (a member of `parent`'s group, or a reactor the host
    /// spawned) from `from`: resumed up to `step`, or fresh.
    fn restart(&mut self, parent: Option<Address>, from: RestartFrom, a: Address, module: Option<ModuleHash>, step: u64, retry: bool) -> Result<Dead, String> {
        let member = parent.and_then(|p| self.tree.member(p, a)).cloned();
        let module = module.or_else(|| member.as_ref().and_then(Member::module)).ok_or("its module is not known")?;
        let loaded = self.runtime.engine().module(&module).ok_or_else(|| format!("its module {module} is not loaded"))?;
        let fresh = match (&member, from) {
            (Some(m), RestartFrom::Fresh) if m.level == Level::Standby as u32 => {
                tracing::warn!(reactor = %a, "{a} has a standby: restarted from its journal, not from its spawn");
                None
            }
            (Some(m), RestartFrom::Fresh) => Some(m.clone()),
            _ => None,
        };
        let Some(m) = fresh else {
            return resume(&self.runtime, &self.data_dir, &self.journal_dir, a, &loaded, step, retry);
        };
        let init_path = self.dir.join(init_name(a));
        let (init, _) = local_fs::read_file(&init_path, "an init argument", abi::MAX_PAYLOAD_LEN as u64, Access::Any)
            .map_err(|e| format!("cannot read {}: {e}", init_path.display()))?;
        let level = Level::from_code(m.level).ok_or("its journal level is damaged in the tree")?;
        // Its old children stop: the new instance spawns its own.
        self.stop_subtree(a, &format!("its supervisor {a} restarted from its spawn"));
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        super::durable::set_journal_aside(&self.data_dir, &self.journal_dir, a, &format!("fresh-{ms}"))
            .map_err(|e| format!("cannot set its journal aside: {e}"))?;
        let env = Envelope { kind: abi::KIND_MESSAGE, flags: m.flags, from: parent.unwrap_or(Address::HOST), corr: 0, payload: init };
        self.on(a, move |s| s.restart_fresh(a, &loaded, env, level, retry))
            .ok_or("its shard is down")?
            .map_err(|e| e.to_string())
    }

    fn note_dead(&mut self, f: &FailedReactor, killer: Dead) {
        let mut c = self.counters.lock().expect("counters");
        c.dead_letters += 1;
        let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let (from, kind, bytes) = match &killer {
            Some((e, _)) => (e.from.to_string(), Envelope::kind_name(e.kind), e.payload.len()),
            None => ("?".into(), "message", 0),
        };
        c.recent_dead_letters.push_back(DeadLetter {
            reactor: f.address.to_string(),
            step: f.step,
            from,
            kind,
            bytes,
            failure: f.failure.clone(),
            at,
        });
        while c.recent_dead_letters.len() > KEPT {
            c.recent_dead_letters.pop_front();
        }
    }
}

/// A reason cut to what a `Down` carries ([`wire::MAX_REASON`] bytes, at a
/// character boundary).
fn clip(reason: &str) -> &str {
    &reason[..reason.floor_char_boundary(wire::MAX_REASON)]
}

fn init_name(a: Address) -> String {
    format!("{:016x}.init", a.0)
}

/// Restarts `address` on its shard from its journal: the newest segment
/// whose start the node still has, the segments after it, and that
/// checkpoint's chain, replayed up to `step` (not included).
fn resume(
    runtime: &Arc<Runtime>,
    data_dir: &Path,
    journal_dir: &Path,
    address: Address,
    module: &Arc<reactor_runtime::LoadedModule>,
    step: u64,
    retry: bool,
) -> Result<Dead, String> {
    let paths = segments(&reactor_dir(journal_dir, address)).map_err(|e| format!("cannot read its journal: {e}"))?;
    let mut segs = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        segs.push((p, bytes));
    }
    let (first, chain) = newest_start(data_dir, &segs).ok_or("no segment of its journal starts where the node can start it from")?;
    let chain = (!chain.is_empty()).then_some(chain);
    let chain: Option<Vec<SnapshotFile>> = match chain {
        None => None,
        Some(paths) => Some(
            paths
                .iter()
                .map(|p| SnapshotFile::open(p, abi::ABI_VERSION).map_err(|e| format!("{}: {e}", p.display())))
                .collect::<Result<_, _>>()?,
        ),
    };
    let segs: Vec<(PathBuf, Vec<u8>)> = segs.into_iter().skip(first).collect();
    let module = module.clone();
    runtime
        .inspect(address.shard() % runtime.shards(), move |s| s.restart_journaled(&module, chain.as_deref(), &segs, step, retry))
        .map_err(|e| e.to_string())?
        .map(|(_, dead)| dead)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("supervise-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_missing_tree_is_empty_and_a_damaged_one_is_refused_by_name() {
        let d = scratch("damaged");
        assert!(Tree::load(&d).unwrap().groups.is_empty());
        for bad in [&b"{\"groups\": [{\"parent\": 1, \"spec\": 7"[..], b"\xff\xfe", b"[]"] {
            std::fs::write(d.join(TREE_FILE), bad).unwrap();
            let e = Tree::load(&d).unwrap_err();
            assert!(e.contains("tree.json is damaged"), "{e}");
        }
    }

    #[test]
    fn the_tree_round_trips_and_its_watches_are_counted() {
        let d = scratch("round");
        let mut t = Tree::default();
        let spec = Policy::default().spec();
        let g = t.group_mut(Address(1));
        g.spec = Some(GroupSpec { strategy: Strategy::RestForOne, restart: RestartFrom::Fresh, ..spec });
        g.members.push(Member { address: 2, module: ModuleHash([7; 32]).to_hex(), level: Level::Synced as u32, flags: 0 });
        g.members.push(Member { address: 3, module: ModuleHash([7; 32]).to_hex(), level: Level::Written as u32, flags: 1 });
        t.monitors.insert((2, 9));
        t.monitors.insert((3, 9));
        t.links.insert(link_key(Address(9), Address(2)));
        write_durably(&d, TREE_FILE, &serde_json::to_vec(&t).unwrap()).unwrap();
        let back = Tree::load(&d).unwrap();
        assert_eq!(back.parent_of(Address(3)), Some(Address(1)));
        assert_eq!(back.parent_of(Address(1)), None);
        assert_eq!(back.group(Address(1)).unwrap().spec.unwrap().strategy, Strategy::RestForOne);
        assert_eq!(back.member(Address(1), Address(2)).unwrap().module(), Some(ModuleHash([7; 32])));
        assert_eq!(back.linked(Address(2)), vec![Address(9)]);
        let n = back.watch_counts();
        assert_eq!((n[&9], n[&2]), (3, 1));
    }
}
