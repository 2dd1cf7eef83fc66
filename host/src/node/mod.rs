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

use crate::engine::{Engine, LoadedModule};
use crate::net::auth::Secret;
use crate::net::overlay;
use crate::net::transport::{ChannelSpec, Inbound, Member, NodeEvent, Transport, TransportConfig};
use crate::net::{NodeId, NodeInfo, NodeRole, OverlayKind};
use crate::reactor::Address;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::shard::{CallError, Envelope, SendError};
use anyhow::Context as _;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
    pub faults: Option<crate::net::fault::Schedule>,
    /// A tracing hook on every connection.
    pub trace: bool,
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

/// Reads, increments and durably stores the node's incarnation.
fn next_incarnation(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("incarnation");
    let prev = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().with_context(|| format!("{} is damaged: {s:?}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let next = prev + 1;
    let tmp = dir.join("incarnation.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

impl Node {
    /// Starts the runtime, the transport and the overlay, and joins the
    /// seeds. Errors say which part could not start.
    pub fn start(engine: Arc<Engine>, config: NodeConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.id >= 1 && config.id <= crate::refs::MAX_NODE, "--id must be 1 to {}", crate::refs::MAX_NODE);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        let incarnation = next_incarnation(&config.data_dir)?;
        let mut rc = config.runtime.clone();
        rc.node = config.id;
        rc.data_dir = Some(config.data_dir.clone());
        let runtime = Arc::new(Runtime::new(engine, rc).context("cannot start the runtime")?);
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("net")
            .enable_all()
            .build()
            .context("cannot start the network threads")?;
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
        // Bind first: the overlay announces the bound address (port 0
        // picks one).
        let listener = Transport::bind(&tc)?;
        let local = listener.local_addr()?;
        anyhow::ensure!(
            !local.ip().is_unspecified(),
            "--listen {}: give the address other nodes reach this one at, not an unspecified one",
            config.listen
        );
        info.addr = local.to_string();
        tc.me.addr = info.addr.clone();
        let ov = overlay::build(config.overlay, info.clone(), seed_of(&info)).map_err(anyhow::Error::msg)?;
        let transport = tokio.block_on(Transport::start(tc, listener, ov, inbound))?;
        runtime.set_remote(Arc::new(transport.clone()));
        transport.join(config.seeds.clone());
        Ok(Self { config, info, runtime, transport, tokio, events })
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
    pub fn module(&self, name: &str) -> anyhow::Result<Arc<LoadedModule>> {
        let engine = self.runtime.engine();
        if let Some(m) = engine.module_by_name(name) {
            return Ok(m);
        }
        let path = if crate::guests::ALL.contains(&name) { crate::guests::path(name) } else { PathBuf::from(name) };
        let (m, _) = engine.load_file(&path).with_context(|| format!("cannot load module `{name}`"))?;
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

    /// Serves the admin socket until a `stop` request or `shutdown`
    /// resolves; then stops the transport.
    pub fn serve(self: &Arc<Self>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let path = self.config.data_dir.join("admin.sock");
        let node = self.clone();
        self.tokio.block_on(async move {
            let r = admin::serve(node.clone(), &path, shutdown).await;
            node.transport.stop();
            r
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
