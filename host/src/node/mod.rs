//! A node process: a [`Runtime`] whose reactors reach reactors on other
//! nodes through the [`Transport`], in a cluster held together by an
//! overlay, with a local admin socket for the `host spawn/send/call/status`
//! commands.
//!
//! # Directory
//! A reactor's address carries the id of the node that spawned it
//! (`[node 16][shard 8][serial 40]`), so the directory the cluster keeps is
//! the map node id → identity, address and liveness. Every node keeps its
//! own copy, fed by the overlay's membership (joins, announcements, failure
//! detection); there is no coordinator. A node that restarts comes back with
//! a higher incarnation (persisted in its data directory) and replaces its
//! old entry everywhere.
//!
//! # Admin protocol
//! A Unix stream socket at `<data-dir>/admin.sock` (only local users with
//! access to the directory can reach it). Newline-delimited JSON; each
//! request has an `"id"`; each answer is one line `{"id":…,"ok":…}` or
//! `{"id":…,"err":"…"}`. Requests on one connection run concurrently and
//! may be answered out of order.
//! - `{"op":"status"}` → the node, its overlay, members, lanes, counters;
//! - `{"op":"spawn","module":NAME|PATH,"init":JSON,"durable":"none"|"written"|"synced"}` →
//!   `{"address","tag","module","durable"}` (without `"durable"`: the node's default);
//! - `{"op":"send","to":ADDR,"msg":JSON}` → `null`;
//! - `{"op":"call","to":ADDR,"msg":JSON,"timeout_ms":N}` → the reply;
//! - `{"op":"mailbox"}` → the messages sent to this node's host
//!   (`#<node>.host`), oldest first, each `{"from","msg"}`;
//! - `{"op":"snapshot","reactors":"all"|[ADDR…],"path":ABS,"incremental":B,"compress":B}`
//!   → the file written, its kind and reactors (copy-on-write: the reactors
//!   keep serving);
//! - `{"op":"restore","files":[ABS…],"lazy":B}` → the reactors restored;
//! - `{"op":"checkpoint"}` → the node's own checkpoint just taken (journaled
//!   reactors start a new journal segment from it);
//! - `{"op":"stop"}` → `null`, then the node takes a last checkpoint and
//!   exits.
//!
//! # Durability
//! A node keeps a chain of checkpoints of all its reactors and the modules
//! they run in its data directory (`durable`): one at every graceful stop,
//! and one every `checkpoint_every` while it runs. A node that starts on a
//! data directory with checkpoints restores its reactors, lazily, at the
//! same addresses. After `SIGKILL`, state is as of the last checkpoint,
//! but for journaled reactors (spawned with `"durable"`, or by the node's
//! default): their journals (`<data-dir>/journal/`) are replayed from the
//! checkpoint (`recovery`) before any message reaches them. A journaled
//! reactor that fails leaves a post-mortem bundle (`postmortem`) and is
//! restarted by the node's supervisor (`supervise`).
//!
//! `ADDR` is `"#<node>.<shard>:<serial>"` or the tag as a number. Messages
//! are JSON text payloads (guests decode them with serde_json), and so are
//! the replies to them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod durable;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod migrate;
pub mod postmortem;
pub mod recovery;
pub mod standby;
pub mod supervise;

use reactor_net::auth::Secret;
use reactor_net::secure::{self, Binding, Keyring, PublicKey, SigningKey, StaticKey};
use reactor_net::fault::Schedule;
use reactor_net::overlay;
use reactor_net::{NodeId, NodeInfo, NodeRole, OverlayKind};
use reactor_runtime::local_fs::{self, Access, FileError};
use reactor_runtime::{Address, CallError, Engine, Envelope, LoadError, LoadedModule, Runtime, RuntimeConfig, SendError};
use reactor_transport::{ChannelSpec, Inbound, Member, NodeEvent, StartError, Transport, TransportConfig};
use reactor_types::address::MAX_NODE;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Why a node could not start, load a module or serve. Nothing is left
/// running by a failed start: the runtime and transport it had started are
/// dropped, and the data directory keeps only what was written before
/// (the incarnation, the tag high-water mark), which the next start reads.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The record of moves (`<data-dir>/moves`) is damaged: starting
    /// anyway could run a reactor on two nodes. Nothing was started.
    #[error("the record of moves is damaged: {0}")]
    DamagedMoves(String),
    /// The migration machinery could not start.
    #[error("cannot start migrations: {0}")]
    Migrations(String),
    /// The data directory is unusable (another user's, writable by others)
    /// or another node holds it. Nothing was started or changed.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The node id does not fit a tag. Nothing was started.
    #[error("--id must be 1 to {MAX_NODE}, not {0}")]
    BadId(NodeId),
    /// The data directory or a file in it could not be read or written.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The incarnation file holds something other than a number: starting
    /// anyway could reuse an incarnation the cluster has seen. Nothing was
    /// started.
    #[error("{} is damaged: {content:?}", path.display())]
    DamagedIncarnation {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// The node's static key file is not a key: starting with a new one
    /// would make it another node to its peers. Nothing was started.
    #[error("{} is damaged: {len} bytes, a key is 32 (move it away to make a new key, and tell the cluster)", path.display())]
    DamagedKey {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The file of peer keys learned on first use is not one this node
    /// wrote (truncated, edited, another file): starting without it would
    /// let anyone claim the node ids it knew. Nothing was started.
    #[error("{} is damaged: {why} (it binds node ids to the keys first seen for them; fix it, or move it away to trust every node id anew)", path.display())]
    DamagedKnownPeers {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        why: String,
    },
    /// The node's static key file can be read by others than its owner.
    /// Nothing was started.
    #[error("{} has mode {mode:o}; a private key must be readable by its owner only (chmod 600)", path.display())]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file in the data directory is not a regular file of a sane size.
    /// Nothing was started.
    #[error(transparent)]
    File(#[from] FileError),
    /// The runtime (shard threads, tag source) could not start.
    #[error("cannot start the runtime")]
    Runtime(#[source] io::Error),
    /// The network threads could not start.
    #[error("cannot start the network threads")]
    Threads(#[source] io::Error),
    /// The listener could not be bound or started.
    #[error(transparent)]
    Transport(#[from] StartError),
    /// The listen address is not one other nodes can reach.
    #[error("--listen {0}: give the address other nodes reach this one at, not an unspecified one")]
    UnspecifiedListen(String),
    /// The node's checkpoints or kept modules could not be read or written.
    #[error(transparent)]
    Durable(#[from] durable::DurableError),
    /// The reactors of the node's last checkpoint could not be restored.
    /// Nothing was deleted: move `<data-dir>/checkpoints` away to start
    /// empty.
    #[error("cannot restore the node's reactors from its checkpoints ({files})")]
    Restore {
        /// The chain's files.
        files: String,
        /// Why.
        #[source]
        source: reactor_runtime::snapshot::SnapshotError,
    },
    /// A module could not be loaded; the node runs on without it.
    #[error("cannot load module `{name}`")]
    Module {
        /// The name or path asked for.
        name: String,
        /// Why.
        #[source]
        source: LoadError,
    },
}

impl From<durable::WriteFailure> for NodeError {
    fn from(w: durable::WriteFailure) -> Self {
        NodeError::Io { op: w.op, path: w.path, source: w.source }
    }
}

/// Why a restore into a running node was refused. Nothing was restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A file is not a usable snapshot.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: reactor_runtime::snapshot::SnapshotError,
    },
    /// A reactor of the snapshot belongs to another node.
    #[error("reactor {address} is node {}'s, not this node's ({node}): an address names the node that runs it", address.node())]
    OtherNode {
        /// The reactor.
        address: Address,
        /// This node.
        node: NodeId,
    },
    /// A module the snapshot needs is not available.
    #[error("module {0}: {1}")]
    Module(reactor_runtime::ModuleHash, String),
    /// The restore itself failed.
    #[error(transparent)]
    Snapshot(#[from] reactor_runtime::snapshot::SnapshotError),
}

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Its id, at least 1 (the node bits of its tags).
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// `ip:port` to listen on (port 0: any).
    pub listen: String,
    /// Addresses of nodes to join through.
    pub seeds: Vec<String>,
    /// The cluster's overlay.
    pub overlay: OverlayKind,
    /// Its role (client–server overlays).
    pub role: NodeRole,
    /// The cluster's name.
    pub cluster: String,
    /// The cluster's secret.
    pub secret: Secret,
    /// Where it keeps its state: tags, incarnation, admin socket.
    pub data_dir: PathBuf,
    /// Settings of the runtime (shards, limits).
    pub runtime: RuntimeConfig,
    /// Application channels.
    pub channels: Vec<ChannelSpec>,
    /// The single-connection baseline.
    pub multiplex: bool,
    /// A fault-injection schedule applied to every connection.
    pub faults: Option<Schedule>,
    /// A tracing hook on every connection.
    pub trace: bool,
    /// No encryption between nodes (only the handshake authenticated).
    pub insecure_plaintext: bool,
    /// The static public keys of the cluster's nodes, when pinned: then only
    /// these node ids, each with its key, may connect. `None`: trust on
    /// first use.
    pub peer_keys: Option<HashMap<NodeId, PublicKey>>,
    /// How often the running node checkpoints its reactors (`None`: only
    /// when it stops).
    pub checkpoint_every: Option<Duration>,
    /// Checkpoints store their pages LZ4-compressed (format version 3):
    /// smaller files; a restart decompresses instead of mapping lazily.
    pub compress_checkpoints: bool,
    /// Reactors spawned from outside without a durability of their own are
    /// journaled at this level (`None`: not journaled).
    pub durable: Option<reactor_runtime::journal::Level>,
    /// Journal segments each journaled reactor keeps besides the one being
    /// written (at least 1).
    pub journal_keep: usize,
    /// How journaled reactors that fail are restarted (`None`: they are
    /// not; see `supervise`).
    pub supervision: Option<supervise::Policy>,
    /// How long a member whose connections dropped is suspected before it
    /// is declared down (`None`: the overlay's default). A standby takes
    /// over no sooner.
    pub suspicion: Option<Duration>,
}

/// The journals' directory in a data directory.
pub const JOURNALS: &str = "journal";

/// What a node remembers of cluster events (newest last, bounded).
const EVENT_LOG: usize = 256;
/// How long [`Node::call`] waits before it sends a request again to the
/// node it went to (back up after a restart, or answering "no live
/// reactor" while the reactor settles elsewhere).
const AGAIN_AFTER: Duration = Duration::from_millis(50);

/// A running node. See the module docs.
pub struct Node {
    config: NodeConfig,
    info: NodeInfo,
    runtime: Arc<Runtime>,
    transport: Transport,
    tokio: tokio::runtime::Runtime,
    events: Arc<Mutex<VecDeque<(SystemTime, NodeEvent)>>>,
    public_key: PublicKey,
    /// Its chain of checkpoints (one writer at a time).
    checkpoints: Arc<Mutex<durable::Checkpoints>>,
    /// Reactors restored from it at start.
    restored: Vec<Address>,
    /// The periodic checkpoint thread and its stop signal.
    ticker: Mutex<Option<Ticker>>,
    /// Its journaled reactors' journals, under `<data-dir>/journal/`.
    journals: Arc<reactor_runtime::journal::Journals>,
    /// Restarts its journaled reactors that fail.
    supervisor: Arc<supervise::Supervisor>,
    /// The last snapshot taken through [`Node::snapshot`]: what the next
    /// incremental one is a delta on.
    last_snapshot: Mutex<Option<reactor_runtime::snapshot::SnapshotId>>,
    /// Snapshots and restores asked of it, for its metrics.
    activity: Mutex<Activity>,
    /// Its migrations, both ends.
    hub: Arc<migrate::Hub>,
    /// Its standbys, both ends.
    standby: Arc<standby::Standby>,
    /// Held for the node's life: no second node on its data directory.
    _lock: lock::DataDirLock,
}

/// The thread that checkpoints a running node periodically.
struct Ticker {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    fn start(
        every: Duration,
        runtime: Arc<Runtime>,
        checkpoints: Arc<Mutex<durable::Checkpoints>>,
    ) -> io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            let (lock, cv) = &*signal;
            let mut stopped = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                let (s, _) = cv.wait_timeout(stopped, every).unwrap_or_else(std::sync::PoisonError::into_inner);
                stopped = s;
                if *stopped {
                    return;
                }
                drop(stopped);
                let taken = checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(&runtime);
                match taken {
                    Ok(t) => tracing::debug!(file = %t.path.display(), reactors = t.reactors, "periodic checkpoint"),
                    Err(e) => tracing::error!("periodic checkpoint failed: {e}"),
                }
                stopped = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        })?;
        Ok(Self { stop, thread })
    }

    fn stop(self) {
        *self.stop.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        let _ = self.thread.join();
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("info", &self.info).finish()
    }
}

struct RuntimeInbound {
    runtime: Arc<Runtime>,
    events: Arc<Mutex<VecDeque<(SystemTime, NodeEvent)>>>,
    /// Set once the transport runs (location messages, where reactors live).
    transport: std::sync::OnceLock<Transport>,
    /// Set once the node's migrations can be taken.
    hub: std::sync::OnceLock<Arc<migrate::Hub>>,
    /// Set once its standbys run.
    standby: std::sync::OnceLock<Arc<standby::Standby>>,
    /// Set once the supervisor can take messages from other nodes.
    supervisor: std::sync::OnceLock<Arc<supervise::Supervisor>>,
}

impl Inbound for RuntimeInbound {
    fn deliver(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
        if env.kind != reactor_runtime::KIND_NODE {
            return self.runtime.deliver_from_network(to, env);
        }
        // The node's own messages: to its host address only.
        if !to.is_host() {
            return Ok(());
        }
        if reactor_net::locate::LocationMsg::is_location(&env.payload) {
            if let Some(t) = self.transport.get() {
                t.location_message(&env);
            }
            return Ok(());
        }
        if supervise::wire::is_tree(&env.payload) {
            match (supervise::wire::decode(&env.payload), self.supervisor.get()) {
                (Ok(m), Some(sup)) => sup.deliver(env.from.node(), m),
                (Ok(_), None) => return Err((SendError::InboxFull(to), env)),
                (Err(e), _) => tracing::debug!(from = %env.from, "dropped a supervision message: {e}"),
            }
            return Ok(());
        }
        if standby::wire::is_standby(&env.payload) {
            let Some(sb) = self.standby.get() else { return Err((SendError::InboxFull(to), env)) };
            return match standby::wire::decode(&env.payload) {
                Ok(m) => {
                    if sb.deliver(env.from.node(), m) {
                        Ok(())
                    } else {
                        Err((SendError::InboxFull(to), env))
                    }
                }
                Err(e) => {
                    tracing::debug!(from = %env.from, "dropped a standby message: {e}");
                    Ok(())
                }
            };
        }
        let Some(hub) = self.hub.get() else { return Err((SendError::InboxFull(to), env)) };
        match migrate::wire::decode(&env.payload) {
            Ok(step) => hub.deliver(env.from.node(), step).map_err(|_| (SendError::InboxFull(to), env)),
            Err(e) => {
                tracing::debug!(from = %env.from, "dropped a node message: {e}");
                Ok(())
            }
        }
    }

    fn claims(&self, to: Address) -> bool {
        self.runtime.hosts(to)
    }

    fn switched(&self, address: Address) {
        self.runtime.arrived(address);
    }

    fn event(&self, event: NodeEvent) {
        if let Some(sb) = self.standby.get() {
            match &event {
                NodeEvent::Down(node) => sb.node_down(*node),
                NodeEvent::Up(info) => sb.node_up(info.id),
                NodeEvent::Broadcast { .. } => {}
            }
        }
        if let (NodeEvent::Down(node), Some(sup)) = (&event, self.supervisor.get()) {
            sup.node_down(*node);
        }
        if let NodeEvent::Down(node) = &event {
            let node = *node;
            match self.transport.get() {
                Some(t) => self.runtime.fail_calls_where(|a| t.location(a).0 == node, |a| CallError::NodeDown(a, node)),
                None => self.runtime.fail_calls_to_node(node, |a| CallError::NodeDown(a, node)),
            }
        }
        let mut log = self.events.lock().unwrap();
        if log.len() >= EVENT_LOG {
            log.pop_front();
        }
        log.push_back((SystemTime::now(), event));
    }
}

/// A private key of the node: `<dir>/<name>` (32 bytes, mode 0600), made
/// with `generate` on first start (created `O_EXCL` as a temporary file,
/// fsynced, renamed into place). Read through `local_fs` (a regular file,
/// bounded, checked on the opened descriptor). A key file readable by
/// group or others, or not 32 bytes long, stops the node.
fn key_file(dir: &Path, name: &str, generate: impl FnOnce() -> Result<[u8; 32], String>) -> Result<[u8; 32], NodeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    match local_fs::read_file(&path, "a private key of the node", 4096, Access::Any) {
        Ok((bytes, meta)) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(NodeError::KeyPermissions { path, mode });
            }
            bytes.as_slice().try_into().map_err(|_| NodeError::DamagedKey { path: path.clone(), len: bytes.len() })
        }
        Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let key = generate().map_err(|e| NodeError::Io {
                op: "generate a key for",
                path: path.clone(),
                source: io::Error::other(e),
            })?;
            durable::write_durably(dir, name, &key)?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a public key beside its private one (`<dir>/<name>`, hex).
fn write_public(dir: &Path, name: &str, public: &dyn std::fmt::Display) -> Result<(), NodeError> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{public}\n")).map_err(|source| NodeError::Io { op: "write", path, source })
}

/// The node's static key: `<dir>/node.key`, made on first start; its
/// public half is written beside it as `node.pub` (hex), for the cluster's
/// pinned keys.
fn static_key(dir: &Path) -> Result<StaticKey, NodeError> {
    let private = key_file(dir, "node.key", || StaticKey::generate().map(|k| *k.private()).map_err(|e| e.to_string()))?;
    let key = StaticKey::from_private(private);
    write_public(dir, "node.pub", &key.public())?;
    Ok(key)
}

/// The node's signing key: `<dir>/node.sign.key`, made on first start;
/// its public half is written beside it as `node.sign.pub`. Peers learn it
/// in the handshake and check this node's announcements with it.
fn signing_key(dir: &Path) -> Result<SigningKey, NodeError> {
    let secret = key_file(dir, "node.sign.key", || SigningKey::generate().map(|k| k.to_bytes()).map_err(|e| e.to_string()))?;
    let key = SigningKey::from_bytes(secret);
    write_public(dir, "node.sign.pub", &key.public())?;
    Ok(key)
}

/// The file of peer keys learned on first use.
const KNOWN_PEERS: &str = "known_peers";

/// The keyring of a node that trusts on first use: the bindings stored in
/// `<dir>/known_peers` by earlier runs (none if there is no file; a file
/// that does not parse stops the node), and every new one stored there
/// before it is used.
fn stored_keyring(dir: &Path) -> Result<Keyring, NodeError> {
    use std::io::Read as _;
    let path = dir.join(KNOWN_PEERS);
    let known = match std::fs::File::open(&path) {
        Ok(f) => {
            let mut text = String::new();
            f.take(secure::MAX_KNOWN_LEN as u64 + 1).read_to_string(&mut text).map_err(|e| NodeError::DamagedKnownPeers {
                path: path.clone(),
                why: format!("cannot read it as text: {e}"),
            })?;
            secure::parse_known(&text).map_err(|why| NodeError::DamagedKnownPeers { path: path.clone(), why })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(NodeError::Io { op: "read", path, source }),
    };
    let dir = dir.to_owned();
    let store: secure::KnownStore = Box::new(move |all: &[Binding]| store_known(&dir, all));
    Keyring::trust_on_first_use_stored(known, store).map_err(|e| NodeError::DamagedKnownPeers { path, why: e.to_string() })
}

/// Replaces `<dir>/known_peers` with `bindings`, atomically: a temporary
/// file created 0600, written, fsynced, renamed over it, the directory
/// fsynced.
fn store_known(dir: &Path, bindings: &[Binding]) -> Result<(), String> {
    durable::write_durably(dir, KNOWN_PEERS, secure::format_known(bindings).as_bytes())
        .map_err(|w| format!("cannot {} {}: {}", w.op, w.path.display(), w.source))
}

/// Reads, increments and durably stores the node's incarnation.
fn next_incarnation(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join("incarnation");
    // A number and a newline; checked on the opened descriptor.
    let prev = match local_fs::read_file(&path, "the incarnation file", 64, Access::Any) {
        Ok((bytes, _)) => {
            let damaged = |bytes: &[u8]| NodeError::DamagedIncarnation {
                path: path.clone(),
                content: String::from_utf8_lossy(bytes).into_owned(),
            };
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| damaged(&bytes))?
        }
        Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let next = prev
        .checked_add(1)
        .ok_or_else(|| NodeError::DamagedIncarnation { path: path.clone(), content: prev.to_string() })?;
    durable::write_durably(dir, "incarnation", format!("{next}\n").as_bytes())?;
    Ok(next)
}

impl Node {
    /// Starts the runtime, the transport and the overlay, and joins the
    /// seeds. Errors say which part could not start.
    pub fn start(engine: Arc<Engine>, config: NodeConfig) -> Result<Self, NodeError> {
        if config.id < 1 || config.id > MAX_NODE {
            return Err(NodeError::BadId(config.id));
        }
        let lock = lock::DataDirLock::acquire(&config.data_dir)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::Io {
            op: "create the data directory",
            path: config.data_dir.clone(),
            source,
        })?;
        let key = static_key(&config.data_dir)?;
        let sign = Arc::new(signing_key(&config.data_dir)?);
        let keyring = Arc::new(match &config.peer_keys {
            Some(keys) => Keyring::pinned(keys.clone()),
            None => stored_keyring(&config.data_dir)?,
        });
        let incarnation = next_incarnation(&config.data_dir)?;
        let mut rc = config.runtime.clone();
        rc.node = config.id;
        rc.data_dir = Some(config.data_dir.clone());
        let runtime = Arc::new(Runtime::new(engine, rc).map_err(NodeError::Runtime)?);
        let (journals, supervisor) = start_journals(&config, &runtime)?;
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("net")
            .enable_all()
            .build()
            .map_err(NodeError::Threads)?;
        let mut info = NodeInfo {
            id: config.id,
            name: config.name.clone(),
            addr: config.listen.clone(),
            role: config.role,
            incarnation,
        };
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let inbound = Arc::new(RuntimeInbound {
            runtime: runtime.clone(),
            events: events.clone(),
            transport: std::sync::OnceLock::new(),
            hub: std::sync::OnceLock::new(),
            standby: std::sync::OnceLock::new(),
            supervisor: std::sync::OnceLock::new(),
        });
        let mut tc = TransportConfig::new(info.clone(), &config.cluster, config.secret.clone());
        if !config.channels.is_empty() {
            tc.channels = config.channels.clone();
        }
        if !tc.channels.iter().any(|c| c.name == standby::CHANNEL) {
            // Journals and snapshots for standbys: in order per reactor,
            // resent across broken connections.
            let mut c = ChannelSpec::new(standby::CHANNEL, 2);
            c.min_bytes = Some(usize::MAX);
            c.reliable = true;
            tc.channels.push(c);
        }
        if !tc.channels.iter().any(|c| c.name == migrate::CHANNEL) {
            // Migrations' bulk: never picked by size for reactor messages.
            let mut c = ChannelSpec::new(migrate::CHANNEL, 2);
            c.min_bytes = Some(usize::MAX);
            // Resent across broken connections: a lost piece would stall it.
            c.reliable = true;
            tc.channels.push(c);
        }
        tc.multiplex = config.multiplex;
        tc.faults = config.faults.clone();
        tc.trace = config.trace;
        let public_key = key.public();
        tc.static_key = Arc::new(key);
        tc.insecure_plaintext = config.insecure_plaintext;
        tc.signing_key = sign.clone();
        tc.keyring = keyring.clone();
        tc.validate().map_err(StartError::Config)?;
        // Bind first: the overlay announces the bound address (port 0
        // picks one).
        let listener = Transport::bind(&tc)?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
        if local.ip().is_unspecified() {
            return Err(NodeError::UnspecifiedListen(config.listen.clone()));
        }
        info.addr = local.to_string();
        tc.me.addr = info.addr.clone();
        // Plaintext connections carry no signing keys: nothing to check
        // announcements with.
        let origins = if config.insecure_plaintext {
            overlay::Origins::Unchecked
        } else {
            overlay::Origins::Signed { key: sign, keys: keyring }
        };
        let ov = overlay::build_with(config.overlay, info.clone(), seed_of(&info), origins, config.suspicion);
        let moves = migrate::read_moves(&config.data_dir).map_err(NodeError::DamagedMoves)?;
        let transport = tokio.block_on(Transport::start(tc, listener, ov, inbound.clone()))?;
        let _ = inbound.transport.set(transport.clone());
        runtime.set_remote(Arc::new(transport.clone()));
        {
            let t = transport.clone();
            runtime.set_fence_handler(Box::new(move |to, fence| t.fence_reached(to, fence)));
        }
        // Back to where it stopped: its modules, then its reactors at the
        // same addresses (lazily: pages are read on first touch), but those
        // that moved away or were moving when it stopped.
        durable::load_kept_modules(&config.data_dir, runtime.engine())?;
        let mut checkpoints = durable::Checkpoints::open(&config.data_dir)?;
        if config.compress_checkpoints {
            checkpoints.set_compression(reactor_runtime::snapshot::Compression::Lz4);
        }
        let chain = checkpoints.open_chain()?;
        let away = migrate::Hub::away(&moves);
        // Reactors whose move was not settled are given back from the chain
        // as it is now, if their target never got them.
        let mut unsettled: HashMap<Address, Vec<reactor_runtime::snapshot::SnapshotFile>> = HashMap::new();
        for m in moves.iter().filter(|m| !m.done) {
            unsettled.insert(m.address, checkpoints.open_chain()?);
        }
        // Journaled reactors are brought up to date from their journals
        // right after the restore, on their shards, before any message.
        let in_chain: std::collections::HashSet<Address> =
            chain.last().map(|f| f.meta().reactors.iter().map(|r| Address(r.address)).collect()).unwrap_or_default();
        let plans = recovery::plans(
            &config.data_dir.join(JOURNALS),
            chain.last().map(|f| (f.header().id, &in_chain)),
            &away,
        );
        // Those with a standby go back to it once they are up to date.
        let with_standby: Vec<Address> = plans
            .iter()
            .filter(|p| {
                p.segments.last().and_then(|(_, b)| journal_format::Journal::open(b).ok()).is_some_and(|j| j.header().level == journal_format::Level::Standby)
            })
            .map(|p| p.address)
            .collect();
        // Messages for them that come before (the transport is up) wait.
        for p in &plans {
            let a = p.address;
            runtime
                .inspect(a.shard() % runtime.shards(), move |s| s.hold(a))
                .map_err(|e| NodeError::Io { op: "hold messages for", path: config.data_dir.clone(), source: std::io::Error::other(e) })?;
        }
        let recover = recover_on_shards(plans, runtime.clone());
        let files = checkpoints.chain().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let restored = runtime
            .restore_files_then(chain, reactor_runtime::snapshot::RestoreOptions::lazy(), away, recover)
            .map_err(|source| NodeError::Restore { files, source })?;
        for &a in &restored {
            if a.node() != config.id {
                // Moved here before the stop: it lives here.
                let epoch = moves.iter().filter(|m| m.address == a).map(|m| m.epoch).max().unwrap_or(1);
                transport.set_location(a, config.id, epoch);
            }
        }
        let checkpoints = Arc::new(Mutex::new(checkpoints));
        let periodic = config.checkpoint_every.is_some_and(|e| !e.is_zero());
        let hub = migrate::Hub::start(config.id, &config.data_dir, runtime.clone(), transport.clone(), checkpoints.clone(), moves, periodic)
            .map_err(|e| NodeError::Migrations(e.to_string()))?;
        let _ = inbound.hub.set(hub.clone());
        let standby = standby::Standby::start(config.id, &config.data_dir, runtime.clone(), transport.clone(), journals.clone(), hub.clone())
            .map_err(|source| NodeError::Io { op: "start the standbys in", path: config.data_dir.join(standby::DIR), source })?;
        for a in with_standby {
            standby.resume(a, standby::recorded_standby(journals.dir(), a));
        }
        {
            // A reactor spawned one at level standby (`spawn_durable`): it
            // gets a standby off the shard's thread (or, none up, one is
            // looked for until one is; what it sends waits meanwhile).
            let sb = Arc::downgrade(&standby);
            runtime.set_standby_handler(Box::new(move |a| {
                let sb = sb.clone();
                let _ = std::thread::Builder::new().name("standby-attach".into()).spawn(move || {
                    if let Some(sb) = sb.upgrade() {
                        sb.attach_or_look(a);
                    }
                });
            }));
        }
        let _ = inbound.standby.set(standby.clone());
        supervisor.set_transport(transport.clone());
        let _ = inbound.supervisor.set(supervisor.clone());
        {
            // A reactor asked to be moved next to another: after its call,
            // on a thread of its own (one move of it at a time).
            let (hub, transport, me) = (Arc::downgrade(&hub), transport.clone(), config.id);
            runtime.set_move_handler(Box::new(move |address, peer| {
                let (node, _) = transport.location(peer);
                let Some(h) = hub.upgrade() else { return };
                if node == me || !h.claim(address) {
                    return;
                }
                let _ = std::thread::Builder::new().name("migrate-asked".into()).spawn(move || {
                    match h.migrate(address, node, migrate::MigrateOptions::default(), &mut |_| {}) {
                        Ok(r) => tracing::info!(%address, %peer, "moved {address} next to {peer} on node {node}, as it asked ({:.2} ms down)", r.downtime_ms),
                        Err(e) => tracing::warn!(%address, %peer, "could not move {address} next to {peer} as it asked: {e}"),
                    }
                    h.release(address);
                });
            }));
        }
        {
            let rt = runtime.clone();
            let unsettled = Mutex::new(unsettled);
            hub.recover(Arc::new(move |a: Address| {
                let chain = unsettled.lock().unwrap().remove(&a).unwrap_or_default();
                rt.reattach_files(a, chain, reactor_runtime::snapshot::RestoreOptions::lazy()).map_err(|e| e.to_string())
            }));
        }
        transport.join(config.seeds.clone());
        let ticker = match config.checkpoint_every {
            Some(every) if !every.is_zero() => {
                Some(Ticker::start(every, runtime.clone(), checkpoints.clone()).map_err(NodeError::Threads)?)
            }
            _ => None,
        };
        Ok(Self {
            config,
            info,
            runtime,
            transport,
            tokio,
            events,
            public_key,
            checkpoints,
            restored,
            ticker: Mutex::new(ticker),
            journals,
            supervisor,
            last_snapshot: Mutex::new(None),
            activity: Mutex::new(Activity::default()),
            hub,
            standby,
            _lock: lock,
        })
    }

    /// Moves the live reactor `address` to node `to` (see `migrate`);
    /// `progress` hears how far it got. A reactor living on another node is
    /// moved by that node.
    pub fn migrate(
        &self,
        address: Address,
        to: NodeId,
        options: migrate::MigrateOptions,
        progress: &mut dyn FnMut(&migrate::Progress),
    ) -> Result<migrate::Report, migrate::MigrateError> {
        self.hub.migrate(address, to, options, progress)
    }

    /// Moves reactors of this node to less loaded members while it runs
    /// more than its share (see `migrate::Hub::rebalance`).
    pub fn rebalance(&self, progress: &mut dyn FnMut(&migrate::Progress)) -> Result<migrate::Rebalanced, migrate::MigrateError> {
        self.hub.rebalance(progress)
    }

    /// Reactors restored from the node's checkpoints when it started.
    pub fn restored(&self) -> &[Address] {
        &self.restored
    }

    /// Takes one of the node's own checkpoints now (see `durable`).
    pub fn checkpoint(&self) -> Result<durable::Taken, durable::DurableError> {
        self.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(&self.runtime)
    }

    /// Stops the periodic checkpoints and takes a last one: what a graceful
    /// stop does before the node exits.
    pub fn shutdown(&self) -> Result<durable::Taken, durable::DurableError> {
        if let Some(t) = self.ticker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            t.stop();
        }
        let taken = self.checkpoint();
        self.journals.sync();
        taken
    }

    /// The journaling level of reactors spawned from outside that do not
    /// ask for one.
    pub fn default_durability(&self) -> Option<reactor_runtime::journal::Level> {
        self.config.durable
    }

    /// Its journals (under `<data-dir>/journal/`).
    pub fn journals(&self) -> &Arc<reactor_runtime::journal::Journals> {
        &self.journals
    }

    /// Snapshots live reactors of this node (`None`: all) into `path`,
    /// copy-on-write: they keep serving while it is copied. Incremental: a
    /// delta on the last snapshot taken this way (its id is in the answer);
    /// reactors whose written pages were not tracked since then (new ones,
    /// ones whose memory moved, ones the node checkpointed meanwhile) go
    /// into it whole. Pages stay tracked afterwards. `compress`: pages
    /// stored LZ4-compressed (format version 3).
    pub fn snapshot(
        &self,
        reactors: Option<Vec<Address>>,
        path: &Path,
        incremental: bool,
        compress: bool,
    ) -> Result<serde_json::Value, reactor_runtime::snapshot::SnapshotError> {
        let started = Instant::now();
        let r = self.snapshot_into(reactors, path, incremental, compress);
        let mut a = self.activity.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &r {
            Ok(_) => {
                a.snapshots += 1;
                a.snapshot_seconds += started.elapsed().as_secs_f64();
            }
            Err(_) => a.snapshots_failed += 1,
        }
        r
    }

    fn snapshot_into(
        &self,
        reactors: Option<Vec<Address>>,
        path: &Path,
        incremental: bool,
        compress: bool,
    ) -> Result<serde_json::Value, reactor_runtime::snapshot::SnapshotError> {
        use reactor_runtime::snapshot::{Capture, Compression, SnapshotError, SnapshotOptions};
        if let Some(list) = &reactors
            && let Some(&a) = list.iter().find(|a| self.runtime.state(**a) != Some(reactor_runtime::ReactorState::Running))
        {
            return Err(SnapshotError::NoSuchReactor(a));
        }
        let started = std::time::Instant::now();
        let options = SnapshotOptions {
            capture: if incremental { Capture::Incremental } else { Capture::Concurrent },
            track: true,
            journal: false,
        };
        let mut last = self.last_snapshot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let base = match (incremental, *last) {
            (true, None) => {
                return Err(SnapshotError::Chain(
                    "no snapshot was taken through this node since it started: take a full one first".into(),
                ));
            }
            (true, Some(id)) => Some(id),
            (false, _) => None,
        };
        let scope = reactor_runtime::CheckpointScope { reactors: reactors.map(|v| v.into_iter().collect()), base };
        let cp = self.runtime.checkpoint_with(options, scope)?;
        let captured = started.elapsed();
        let compression = if compress { Compression::Lz4 } else { Compression::None };
        let report = cp.write_with(path, compression, &mut |_, _| {})?;
        // Only a snapshot that reached its file can be a delta's base.
        *last = Some(cp.id());
        drop(last);
        let kind = kind_json(cp.kind());
        Ok(serde_json::json!({
            "file": path.display().to_string(),
            "id": cp.id().to_string(),
            "kind": kind,
            "reactors": cp.reactors().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "file_bytes": report.file_bytes,
            "page_bytes": report.page_bytes,
            "captured_ms": captured.as_secs_f64() * 1e3,
            "total_ms": started.elapsed().as_secs_f64() * 1e3,
        }))
    }

    /// Restores a chain of snapshot files into this running node. Only
    /// reactors whose addresses are this node's: an address names the
    /// node that runs it.
    pub fn restore(&self, files: &[PathBuf], lazy: bool) -> Result<Vec<Address>, RestoreError> {
        let started = Instant::now();
        let r = self.restore_from(files, lazy);
        let mut a = self.activity.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &r {
            Ok(restored) => {
                a.restores += 1;
                a.restored_reactors += restored.len() as u64;
                a.restore_seconds += started.elapsed().as_secs_f64();
            }
            Err(_) => a.restores_failed += 1,
        }
        r
    }

    fn restore_from(&self, files: &[PathBuf], lazy: bool) -> Result<Vec<Address>, RestoreError> {
        use reactor_runtime::snapshot::{Load, RestoreOptions, SnapshotFile};
        let chain = files
            .iter()
            .map(|p| SnapshotFile::open(p, reactor_runtime::abi::ABI_VERSION).map_err(|e| RestoreError::File { path: p.clone(), source: e.into() }))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(last) = chain.last() {
            for r in &last.meta().reactors {
                let a = Address(r.address);
                if a.node() != self.info.id {
                    return Err(RestoreError::OtherNode { address: a, node: self.info.id });
                }
                let hash = reactor_runtime::ModuleHash(r.module);
                if self.runtime.engine().module(&hash).is_none() {
                    self.load_guest_by_hash(&hash)?;
                }
            }
        }
        let options = RestoreOptions { load: if lazy { Load::Lazy } else { Load::Eager }, verify: !lazy, foreign: false };
        Ok(self.runtime.restore_files(chain, options)?)
    }

    /// Loads the built guest whose hash is `hash`, if there is one.
    fn load_guest_by_hash(&self, hash: &reactor_runtime::ModuleHash) -> Result<(), RestoreError> {
        let Some((_, bytes)) = built_guest(hash) else {
            return Err(RestoreError::Module(
                *hash,
                "not loaded on this node (spawn a reactor of it first) and not a built guest".into(),
            ));
        };
        let (m, _) = self.runtime.engine().load(&bytes).map_err(|e| RestoreError::Module(*hash, e.to_string()))?;
        durable::keep_module(&self.config.data_dir, &m.hash, &bytes).map_err(|e| RestoreError::Module(*hash, e.to_string()))
    }

    /// This node's static public key (its identity on the wire).
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// This node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Its runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Its transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The directory: every node this one knows, itself included.
    pub fn members(&self) -> Vec<Member> {
        self.transport.members()
    }

    /// A module by guest name (`counter`, `kv`, `pingpong`, `faulty`) or path.
    pub fn module(&self, name: &str) -> Result<Arc<LoadedModule>, NodeError> {
        let engine = self.runtime.engine();
        if let Some(m) = engine.module_by_name(name) {
            return Ok(m);
        }
        let bytes = match example_guests::bytes(name) {
            Some(b) => b.to_vec(),
            None => Engine::read_module_file(&PathBuf::from(name)).map_err(|source| NodeError::Module { name: name.to_owned(), source })?,
        };
        let (m, _) = engine.load(&bytes).map_err(|source| NodeError::Module { name: name.to_owned(), source })?;
        // Kept so that a restart can instantiate its reactors again.
        durable::keep_module(&self.config.data_dir, &m.hash, &bytes)?;
        engine.register_name(name, &m);
        Ok(m)
    }

    /// The status report (what `host status` prints).
    pub fn status(&self) -> serde_json::Value {
        let members: Vec<serde_json::Value> = self
            .members()
            .into_iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.info.id, "name": m.info.name, "addr": m.info.addr, "role": m.info.role,
                    "incarnation": m.info.incarnation, "up": m.up, "via": m.via,
                })
            })
            .collect();
        let events: Vec<serde_json::Value> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, e)| {
                let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                match e {
                    NodeEvent::Up(i) => serde_json::json!({"at": secs, "up": i.id, "incarnation": i.incarnation}),
                    NodeEvent::Down(id) => serde_json::json!({"at": secs, "down": id}),
                    NodeEvent::Broadcast { origin, payload } => serde_json::json!({"at": secs, "broadcast_from": origin, "bytes": payload.len()}),
                }
            })
            .collect();
        let stats = self.runtime.stats();
        let j = self.journals.stats().figures();
        let journal = serde_json::json!({
            "records": j.records, "bytes_written": j.bytes_written, "rounds": j.rounds, "syncs": j.syncs,
            "mean_sync_us": j.sync_nanos.checked_div(j.syncs).unwrap_or(0) / 1000,
            "max_sync_us": j.max_sync_nanos / 1000, "errors": j.errors,
        });
        serde_json::json!({
            "node": self.info,
            "cluster": self.config.cluster,
            "overlay": self.config.overlay.to_string(),
            "multiplex": self.config.multiplex,
            "public_key": self.public_key.to_string(),
            "encrypted": !self.config.insecure_plaintext,
            "members": members,
            "lanes": self.transport.lanes(),
            "reactors": stats.live,
            "delivered": stats.delivered,
            "remote_sends": stats.remote,
            "dead_letters": stats.dead_letters + self.transport.dead_letters(),
            "refused_connections": self.transport.refused(),
            "bad_signatures": self.transport.bad_signatures(),
            "forwarded": stats.forwarded,
            "migrations": self.hub.counters(),
            "standby": serde_json::to_value(self.standby.counters()).unwrap_or_default(),
            "answered_again": stats.answered_again,
            "dropped_again": stats.dropped_again,
            "fence_timeouts": self.transport.fence_timeouts(),
            "journal": journal,
            "supervision": serde_json::to_value(self.supervisor.counters()).unwrap_or_default(),
            "events": events,
        })
    }

    /// The node's standbys (see `standby`).
    pub fn standby(&self) -> &Arc<standby::Standby> {
        &self.standby
    }

    /// Sends a request from outside to `to` and waits up to `timeout` for
    /// its reply. When the node `to` runs on goes down meanwhile and `to`
    /// turns up on another node within the time (taken over from its
    /// standby) or on that node again (restarted, from its journal), the
    /// request goes there again with the same correlation id. So does a
    /// request that a node answers with "no live reactor" because it
    /// dropped its copy for one another node took over (a node back from a
    /// restart or a partition). The reactor takes it once (see the
    /// runtime's `once`): a copy taken already, replayed or live, gets the
    /// reply the first got.
    pub fn call(&self, to: Address, msg: Vec<u8>, text: bool, timeout: Duration) -> Result<reactor_runtime::Reply, reactor_runtime::CallError> {
        use reactor_runtime::CallError;
        let deadline = Instant::now() + timeout;
        let (mut node, _) = self.transport.location(to);
        let mut pending = match self.runtime.request(to, msg.clone(), text) {
            Ok(p) => p,
            // Refused at once (this node answers for it, e.g. taking it
            // over, but it is not live yet): as for an answer below.
            Err(SendError::NoSuchReactor(_)) if self.may_turn_up(to, node) => {
                tracing::debug!(reactor = %to, "a request refused at once (node {node}): waiting for where it turns up");
                node = self.home_of(to, node, deadline).ok_or(CallError::Send(SendError::NoSuchReactor(to)))?;
                tracing::debug!(reactor = %to, "sending the request to node {node}");
                self.runtime.request(to, msg.clone(), text)?
            }
            Err(e) => {
                tracing::debug!(reactor = %to, "a request refused at once (node {node}): {e}");
                return Err(e.into());
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let corr = pending.corr();
            match pending.wait(Some(left)) {
                // Its node went down (the reactor may turn up on another
                // node, taken over, or on that one again, restarted), or
                // that node had no live copy and it may be elsewhere.
                Err(e @ CallError::NodeDown(..)) | Err(e @ CallError::Send(SendError::NoSuchReactor(_)))
                    if matches!(e, CallError::NodeDown(..)) || self.may_turn_up(to, node) =>
                {
                    tracing::debug!(reactor = %to, corr, "{e} (node {node}): waiting for where it turns up");
                    node = self.home_of(to, node, deadline).ok_or(e)?;
                    tracing::debug!(reactor = %to, corr, "sending the request again to node {node}");
                    pending = self.runtime.request_again(to, corr, msg.clone(), text)?;
                }
                Err(e) => {
                    tracing::debug!(reactor = %to, corr, "the request to node {node} failed: {e}");
                    return Err(e);
                }
                r => return r,
            }
        }
    }

    /// Waits (until `deadline`) for `to`, which `node` did not have, to
    /// turn up: its node went down (it turns up elsewhere, or on that node
    /// again once it is back: restarted, it brings its journaled reactors
    /// back), another node took it over (it lives there now), or this node
    /// stands by for it and is taking it over (it will live here). Where it
    /// lives, or `None` at the deadline. The same node again only after
    /// [`AGAIN_AFTER`], so that a node that keeps answering "no live
    /// reactor" is not asked in a busy loop.
    fn home_of(&self, to: Address, node: NodeId, deadline: Instant) -> Option<NodeId> {
        let since = Instant::now();
        loop {
            if self.runtime.state(to) == Some(reactor_runtime::ReactorState::Running) {
                return Some(self.config.id);
            }
            let (now_at, _) = self.transport.location(to);
            if now_at != node && now_at != self.config.id {
                return Some(now_at);
            }
            if now_at == node && node != self.config.id && since.elapsed() >= AGAIN_AFTER && self.is_up(node) {
                return Some(node);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether a call to `to` answered "no live reactor" by `node` may
    /// find it elsewhere soon: that node is down, or `to` moved on from it
    /// (taken over), or this node stands by for `to` (and may be taking it
    /// over).
    fn may_turn_up(&self, to: Address, node: NodeId) -> bool {
        self.standby.stands_by(to) || (node != self.config.id && (!self.is_up(node) || self.transport.location(to).0 != node))
    }

    fn is_up(&self, node: NodeId) -> bool {
        self.transport.members().iter().any(|m| m.info.id == node && m.up)
    }

    /// How long a `call` without a timeout waits.
    pub fn default_call_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// What each shard runs right after a restart's restore: the recovery of
/// its journaled reactors (see `recovery`).
fn recover_on_shards(plans: Vec<recovery::Plan>, runtime: Arc<Runtime>) -> reactor_runtime::AfterRestore {
    let n = runtime.shards();
    let engine = runtime.engine().clone();
    Arc::new(move |shard, i| {
        for p in plans.iter().filter(|p| p.address.shard() % n == i) {
            let Some(module) = engine.module(&p.module) else {
                tracing::error!(reactor = %p.address, "the journal of {} is not replayed: its module {} is not kept", p.address, p.module);
                continue;
            };
            match shard.recover_journal(&module, &p.segments) {
                Ok(r) if r.failed => tracing::warn!(
                    reactor = %p.address,
                    "{}: its journal replayed {} call(s) to the failure it ended with; it stays failed",
                    p.address,
                    r.steps
                ),
                Ok(r) => tracing::info!(
                    reactor = %p.address,
                    "{}: brought up to date from its journal ({} call(s) replayed); journaled on from step {}",
                    p.address,
                    r.steps,
                    r.next_step
                ),
                Err(e) => tracing::error!(reactor = %p.address, "{}: its journal could not be replayed: {e}", p.address),
            }
            shard.end_hold(p.address);
        }
    })
}

/// Starts the node's journal writer in `<data-dir>/journal/`, hands it to
/// every shard, and makes a journaled reactor's failure leave a post-mortem
/// bundle (`postmortem`).
type JournalParts = (Arc<reactor_runtime::journal::Journals>, Arc<supervise::Supervisor>);

fn start_journals(config: &NodeConfig, runtime: &Arc<Runtime>) -> Result<JournalParts, NodeError> {
    use reactor_runtime::journal::{JournalConfig, Journals};
    let dir = config.data_dir.join(JOURNALS);
    let io = |op, source| NodeError::Io { op, path: dir.clone(), source };
    let journals = Journals::start(JournalConfig { dir: dir.clone(), keep: config.journal_keep.max(1) })
        .map_err(|e| io("start the journals in", e))?;
    runtime.set_journals(&journals).map_err(|e| io("hand the journals to the shards for", std::io::Error::other(e)))?;
    let policy = config.supervision.filter(|p| p.max_restarts > 0);
    if policy.is_some() {
        for i in 0..runtime.shards() {
            runtime.inspect(i, |s| s.set_supervised(true)).map_err(|e| io("supervise the shards of", std::io::Error::other(e)))?;
        }
    }
    // Always there: monitors and links work without restarts.
    let supervisor = supervise::Supervisor::start(runtime.clone(), config.data_dir.clone(), journals.clone(), policy)
        .map_err(|e| io("start the supervisor for", e))?;
    let supervisor = Arc::new(supervisor);
    let (data_dir, limits, sup) = (config.data_dir.clone(), runtime.limits(), supervisor.clone());
    journals.set_failure_hook(Box::new(move |f| {
        match postmortem::make(&data_dir, f, limits) {
            Ok(p) => tracing::warn!(
                reactor = %f.address,
                "journaled reactor {} failed at step {}; its post-mortem bundle is {} (replay it with `host replay {}`)",
                f.address,
                f.step,
                p.display(),
                p.display()
            ),
            Err(e) => tracing::error!(reactor = %f.address, "journaled reactor {} failed at step {}; no post-mortem bundle: {e}", f.address, f.step),
        }
        sup.failed(f);
    }));
    Ok((journals, supervisor))
}

/// A snapshot's kind as the admin protocol answers it: `"full"` or
/// `{"delta_on": ID}`.
pub fn kind_json(kind: reactor_runtime::snapshot::Kind) -> serde_json::Value {
    match kind {
        reactor_runtime::snapshot::Kind::Full => serde_json::json!("full"),
        reactor_runtime::snapshot::Kind::Delta { base } => serde_json::json!({"delta_on": base.to_string()}),
    }
}

/// The built guest (`example_guests`, compiled into this binary) whose
/// module hash is `hash`: its name and bytes.
pub fn built_guest(hash: &reactor_runtime::ModuleHash) -> Option<(&'static str, Vec<u8>)> {
    example_guests::ALL.iter().find_map(|&name| {
        let bytes = example_guests::bytes(name)?;
        (reactor_runtime::ModuleHash::of(bytes) == *hash).then(|| (name, bytes.to_vec()))
    })
}

/// Snapshots and restores asked of a node (`host snapshot --data-dir`,
/// `host restore --data-dir`) since it started.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Activity {
    /// Snapshots written.
    pub snapshots: u64,
    /// Seconds they took, in all.
    pub snapshot_seconds: f64,
    /// Snapshots that failed.
    pub snapshots_failed: u64,
    /// Restores done.
    pub restores: u64,
    /// Reactors they restored.
    pub restored_reactors: u64,
    /// Seconds they took, in all.
    pub restore_seconds: f64,
    /// Restores that failed.
    pub restores_failed: u64,
}

/// A per-node seed for the overlay's randomness.
fn seed_of(info: &NodeInfo) -> u64 {
    let mut s = [0u8; 8];
    getrandom::fill(&mut s).expect("the OS random source works");
    u64::from_le_bytes(s) ^ ((info.id as u64) << 48) ^ info.incarnation
}
