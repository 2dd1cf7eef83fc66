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
//! - `{"op":"spawn","module":NAME|PATH,"init":JSON}` → `{"address","tag"}`;
//! - `{"op":"send","to":ADDR,"msg":JSON}` → `null`;
//! - `{"op":"call","to":ADDR,"msg":JSON,"timeout_ms":N}` → the reply;
//! - `{"op":"mailbox"}` → the messages sent to this node's host
//!   (`#<node>.host`), oldest first, each `{"from","msg"}`;
//! - `{"op":"stop"}` → `null`, then the node exits.
//!
//! `ADDR` is `"#<node>.<shard>:<serial>"` or the tag as a number. Messages
//! are JSON text payloads (guests decode them with serde_json), and so are
//! the replies to them.
#![forbid(unsafe_code)]

pub mod admin;
pub mod lock;

use reactor_net::auth::Secret;
use reactor_net::secure::{Keyring, PublicKey, StaticKey};
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
use std::time::{Duration, SystemTime};

/// Why a node could not start, load a module or serve. Nothing is left
/// running by a failed start: the runtime and transport it had started are
/// dropped, and the data directory keeps only what was written before
/// (the incarnation, the tag high-water mark), which the next start reads.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
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
}

/// What a node remembers of cluster events (newest last, bounded).
const EVENT_LOG: usize = 256;

/// A running node. See the module docs.
pub struct Node {
    config: NodeConfig,
    info: NodeInfo,
    runtime: Arc<Runtime>,
    transport: Transport,
    tokio: tokio::runtime::Runtime,
    events: Arc<Mutex<VecDeque<(SystemTime, NodeEvent)>>>,
    public_key: PublicKey,
    /// Held for the node's life: no second node on its data directory.
    _lock: lock::DataDirLock,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("info", &self.info).finish()
    }
}

struct RuntimeInbound {
    runtime: Arc<Runtime>,
    events: Arc<Mutex<VecDeque<(SystemTime, NodeEvent)>>>,
}

impl Inbound for RuntimeInbound {
    fn deliver(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
        self.runtime.deliver_from_network(to, env)
    }

    fn event(&self, event: NodeEvent) {
        if let NodeEvent::Down(node) = &event {
            let node = *node;
            self.runtime.fail_calls_to_node(node, |a| CallError::Send(SendError::NoSuchReactor(a)));
        }
        let mut log = self.events.lock().unwrap();
        if log.len() >= EVENT_LOG {
            log.pop_front();
        }
        log.push_back((SystemTime::now(), event));
    }
}

/// The node's static key: `<dir>/node.key` (32 bytes, mode 0600), made on
/// first start; its public half is written beside it as `node.pub` (hex),
/// for the cluster's pinned keys.
fn static_key(dir: &Path) -> Result<StaticKey, NodeError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io_err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| NodeError::Io { op, path, source }
    };
    let path = dir.join("node.key");
    // Checked on the opened descriptor: a regular file, bounded.
    let key = match local_fs::read_file(&path, "the node's static key", 4096, Access::Any) {
        Ok((bytes, meta)) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(NodeError::KeyPermissions { path, mode });
            }
            let private: [u8; 32] =
                bytes.as_slice().try_into().map_err(|_| NodeError::DamagedKey { path: path.clone(), len: bytes.len() })?;
            StaticKey::from_private(private)
        }
        Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let key = StaticKey::generate().map_err(|e| NodeError::Io {
                op: "generate a static key for",
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            let tmp = dir.join("node.key.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(key.private()).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("rename the new key over", &path))?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))?;
            key
        }
        Err(e) => return Err(e.into()),
    };
    let public = dir.join("node.pub");
    std::fs::write(&public, format!("{}\n", key.public())).map_err(io_err("write", &public))?;
    Ok(key)
}

/// Reads, increments and durably stores the node's incarnation.
fn next_incarnation(dir: &Path) -> Result<u64, NodeError> {
    fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NodeError + use<> {
        let path = path.to_owned();
        move |source| NodeError::Io { op, path, source }
    }
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
    let tmp = dir.join("incarnation.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(io_err("write", &tmp))?;
        writeln!(f, "{next}").map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err("rename the new incarnation over", &path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))?;
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
        let incarnation = next_incarnation(&config.data_dir)?;
        let mut rc = config.runtime.clone();
        rc.node = config.id;
        rc.data_dir = Some(config.data_dir.clone());
        let runtime = Arc::new(Runtime::new(engine, rc).map_err(NodeError::Runtime)?);
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
        let inbound = Arc::new(RuntimeInbound { runtime: runtime.clone(), events: events.clone() });
        let mut tc = TransportConfig::new(info.clone(), &config.cluster, config.secret.clone());
        if !config.channels.is_empty() {
            tc.channels = config.channels.clone();
        }
        tc.multiplex = config.multiplex;
        tc.faults = config.faults.clone();
        tc.trace = config.trace;
        let public_key = key.public();
        tc.static_key = Arc::new(key);
        tc.insecure_plaintext = config.insecure_plaintext;
        tc.keyring = Arc::new(match &config.peer_keys {
            Some(keys) => Keyring::pinned(keys.clone()),
            None => Keyring::trust_on_first_use(),
        });
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
        let ov = overlay::build(config.overlay, info.clone(), seed_of(&info));
        let transport = tokio.block_on(Transport::start(tc, listener, ov, inbound))?;
        runtime.set_remote(Arc::new(transport.clone()));
        transport.join(config.seeds.clone());
        Ok(Self { config, info, runtime, transport, tokio, events, public_key, _lock: lock })
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
        let path = if example_guests::ALL.contains(&name) { example_guests::path(name) } else { PathBuf::from(name) };
        let (m, _) = engine.load_file(&path).map_err(|source| NodeError::Module { name: name.to_owned(), source })?;
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
            "events": events,
        })
    }

    /// How long a `call` without a timeout waits.
    pub fn default_call_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// A per-node seed for the overlay's randomness.
fn seed_of(info: &NodeInfo) -> u64 {
    let mut s = [0u8; 8];
    getrandom::fill(&mut s).expect("the OS random source works");
    u64::from_le_bytes(s) ^ ((info.id as u64) << 48) ^ info.incarnation
}
