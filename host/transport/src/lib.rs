//! The tokio transport: real TCP connections between nodes, carrying the
//! frames of `frame`, authenticated by `auth`, organised in channels and
//! lanes, driving an [`Overlay`].
//!
//! # Connections
//! - A connection carries one *channel* (by name) and one *lane* of it,
//!   named in the connector's hello. In multiplexed mode (the baseline: the
//!   distributed-Erlang design) one connection per pair of nodes carries
//!   every channel, named `*`.
//! - Each node sends data only on connections it dialed, so every stream
//!   is one-directional and its acks and pongs come back on the same socket.
//!   No dial races, no choosing between two connections.
//! - A message picks its lane by affinity: a hash of its partition key (the
//!   destination reactor unless the channel says otherwise) modulo the
//!   channel's lanes, so per-destination order holds while unrelated traffic
//!   flows on other connections.
//! - Channel 0 is `control` (overlay and membership), never carrying
//!   reactor data, so it never queues behind bulk payloads.
//!
//! # Failure
//! Every byte read is untrusted: a frame that does not decode, an oversized
//! one, a frame out of place or a failed handshake closes that connection
//! with a logged reason; nothing else is affected. Pings detect dead peers
//! on quiet connections. A lane whose connection drops dials again with
//! backoff; what an unreliable channel had written but the peer not read is
//! lost (at-most-once), what a reliable channel had not had acknowledged is
//! sent again on the new connection.
#![forbid(unsafe_code)]

use reactor_net::auth::{Handshake, Role, Secret, Step};
use reactor_net::causal::{Causal, CausalConfig};
use reactor_net::fault::{FaultEvent, FaultInjector, Pipeline, Schedule, Trace};
use reactor_net::frame::{Data, Frame, FrameError, Hello};
use reactor_net::overlay::{Action, Overlay};
use reactor_net::reliable;
use reactor_net::{NodeId, NodeInfo};
use reactor_types::{Address, Envelope, Outbound, SendError};
use guest_sdk::abi;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// Hops after which a forwarded message is dropped (a routing loop).
pub const MAX_HOPS: u8 = 16;

/// Index of the control channel.
pub const CONTROL: u16 = 0;

/// One named channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Its name (in hellos and status).
    pub name: String,
    /// Parallel connections per peer.
    pub lanes: u16,
    /// Sequence numbers, acks, retransmission, de-duplication.
    pub reliable: bool,
    /// Causal order across the nodes of the channel (implies `reliable`).
    pub causal: bool,
    /// Messages of at least this many bytes go on this channel (the first
    /// channel whose rule matches wins; `None`: only by name).
    pub min_bytes: Option<usize>,
}

impl ChannelSpec {
    /// A channel with `lanes` connections, unreliable, no rule.
    pub fn new(name: &str, lanes: u16) -> Self {
        Self { name: name.to_owned(), lanes: lanes.max(1), reliable: false, causal: false, min_bytes: None }
    }
}

impl std::str::FromStr for ChannelSpec {
    type Err = String;

    /// `name[:lanes=N][:reliable][:causal][:min-bytes=N]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || name.len() > reactor_net::frame::MAX_NAME_LEN || name == "*" || name == "control" {
            return Err(format!("`{s}`: a channel needs a name of 1 to 64 bytes other than `*` and `control`"));
        }
        let mut spec = ChannelSpec::new(name, 1);
        for p in parts {
            match p.split_once('=') {
                Some(("lanes", n)) => {
                    spec.lanes = n.parse().ok().filter(|&n| (1..=256).contains(&n)).ok_or(format!("`{s}`: lanes must be 1 to 256"))?
                }
                Some(("min-bytes", n)) => spec.min_bytes = Some(n.parse().map_err(|_| format!("`{s}`: min-bytes must be a number"))?),
                None if p == "reliable" => spec.reliable = true,
                None if p == "causal" => {
                    spec.causal = true;
                    spec.reliable = true;
                }
                _ => return Err(format!("`{s}`: unknown channel option `{p}` (lanes=N, reliable, causal, min-bytes=N)")),
            }
        }
        Ok(spec)
    }
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub me: NodeInfo,
    /// The cluster's name (hellos of other clusters are refused).
    pub cluster: String,
    /// The cluster secret.
    pub secret: Secret,
    /// Application channels; the control channel is added in front.
    pub channels: Vec<ChannelSpec>,
    /// One connection per pair of nodes for everything (the baseline).
    pub multiplex: bool,
    /// Interval of pings on a connection.
    pub ping_interval: Duration,
    /// A connection that reads nothing for this long is dead.
    pub idle_timeout: Duration,
    /// Limit on dialing plus authenticating.
    pub connect_timeout: Duration,
    /// Messages queued per lane before senders see `INBOX_FULL`.
    pub lane_capacity: usize,
    /// Fault injection: every connection's frames pass a [`FaultInjector`]
    /// driven by this schedule (times from the transport's start).
    pub faults: Option<Schedule>,
    /// Every connection's frames pass a [`Trace`] hook (logged at `trace`
    /// level, the last 1,024 kept per connection).
    pub trace: bool,
}

impl TransportConfig {
    /// Defaults around `me`: one application channel `default` with 4 lanes.
    pub fn new(me: NodeInfo, cluster: &str, secret: Secret) -> Self {
        Self {
            me,
            cluster: cluster.to_owned(),
            secret,
            channels: vec![ChannelSpec::new("default", 4)],
            multiplex: false,
            ping_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
            lane_capacity: 4096,
            faults: None,
            trace: false,
        }
    }
}

/// What the node hears from its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node joined or came back.
    Up(NodeInfo),
    /// A node is believed to have failed.
    Down(NodeId),
    /// A broadcast arrived.
    Broadcast {
        /// Who broadcast it.
        origin: NodeId,
        /// What.
        payload: Vec<u8>,
    },
}

/// Where messages from the network go: the node's runtime.
pub trait Inbound: Send + Sync + 'static {
    /// Hands over a message for `to` on this node. `InboxFull` makes the
    /// transport hold it and stop reading that connection until it fits.
    fn deliver(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)>;
    /// A node event.
    fn event(&self, event: NodeEvent);
}

/// A directory entry: what this node knows of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity and address.
    pub info: NodeInfo,
    /// Believed alive.
    pub up: bool,
    /// The next hop towards it, if reachable.
    pub via: Option<NodeId>,
}

/// Counters of one lane.
#[derive(Debug, Default)]
struct LaneStats {
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    connects: AtomicU64,
    up: AtomicBool,
}

/// A lane's figures for status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LaneStatus {
    /// The peer.
    pub peer: NodeId,
    /// The channel's name.
    pub channel: String,
    /// Lane index.
    pub lane: u16,
    /// Connected now.
    pub up: bool,
    /// Frames written.
    pub frames: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Connections made (more than 1: it reconnected).
    pub connects: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LaneKey {
    peer: NodeId,
    channel: u16,
    lane: u16,
}

enum Outgoing {
    Data(Data),
    Control(Vec<u8>),
}

impl Outgoing {
    fn into_frame(self) -> Frame {
        match self {
            Outgoing::Data(d) => Frame::Data(d),
            Outgoing::Control(payload) => Frame::Control { payload },
        }
    }
}

struct LaneHandle {
    tx: mpsc::Sender<Outgoing>,
    close: Arc<Notify>,
    stats: Arc<LaneStats>,
}

/// What the overlay task is told.
enum OverlayInput {
    Seed(NodeInfo),
    Connected(NodeInfo),
    Disconnected(NodeId),
    Message(NodeId, Vec<u8>),
    Broadcast(Vec<u8>),
}

/// The shared state of a running transport.
struct Inner {
    config: TransportConfig,
    /// Control channel first, then the application channels.
    channels: Vec<ChannelSpec>,
    handle: tokio::runtime::Handle,
    inbound: Arc<dyn Inbound>,
    lanes: Mutex<HashMap<LaneKey, LaneHandle>>,
    directory: RwLock<HashMap<NodeId, Member>>,
    /// Live control connections this node dialed, per peer.
    control_links: Mutex<HashMap<NodeId, u32>>,
    overlay_tx: mpsc::UnboundedSender<OverlayInput>,
    /// Receive state of reliable streams between connections:
    /// (peer, channel, lane).
    receivers: Mutex<HashMap<(NodeId, u16, u16), reliable::Receiver>>,
    /// Causal state of each causal channel (by index).
    causal: Vec<Option<Mutex<Causal>>>,
    /// Fault schedule and the time it counts from.
    faults: Option<(Schedule, Instant)>,
    next_conn: AtomicU64,
    dead_letters: AtomicU64,
    refused: AtomicU64,
    stopping: AtomicBool,
}

/// A running transport. Dropping it does not stop it; call
/// [`Transport::stop`].
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    local: SocketAddr,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("me", &self.inner.config.me.id).field("local", &self.local).finish()
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound. Nothing was started.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Why a connection ended (logged).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("authentication failed: {0}")]
    Auth(#[from] reactor_net::auth::AuthError),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the peer closed the connection: {0}")]
    Closed(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("node {0} is on the other side of an injected partition")]
    Partitioned(NodeId),
}

fn partition_hash(key: u64) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

impl Transport {
    /// Binds `config.me.addr`.
    pub fn bind(config: &TransportConfig) -> Result<std::net::TcpListener, StartError> {
        let err = |source| StartError::Listen { addr: config.me.addr.clone(), source };
        let l = std::net::TcpListener::bind(&config.me.addr).map_err(err)?;
        l.set_nonblocking(true).map_err(err)?;
        Ok(l)
    }

    /// Starts the accept loop on `listener` and the overlay task, on the
    /// current tokio runtime. Messages for this node go to `inbound`.
    pub async fn start(
        config: TransportConfig,
        listener: std::net::TcpListener,
        overlay: Box<dyn Overlay>,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Self, StartError> {
        let listener = TcpListener::from_std(listener).map_err(|source| StartError::Listen { addr: config.me.addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen { addr: config.me.addr.clone(), source })?;
        let mut channels = vec![ChannelSpec::new("control", 1)];
        channels[0].reliable = false;
        channels.extend(config.channels.iter().cloned());
        let (overlay_tx, overlay_rx) = mpsc::unbounded_channel();
        let mut me = config.me.clone();
        me.addr = local.to_string();
        let mut directory = HashMap::default();
        directory.insert(me.id, Member { info: me, up: true, via: None });
        let causal = channels
            .iter()
            .map(|c| c.causal.then(|| Mutex::new(Causal::new(config.me.id, config.me.incarnation, CausalConfig::default()))))
            .collect();
        let faults = config.faults.clone().map(|s| (s, Instant::now()));
        let inner = Arc::new(Inner {
            receivers: Mutex::new(HashMap::default()),
            causal,
            faults,
            next_conn: AtomicU64::new(1),
            config,
            channels,
            handle: tokio::runtime::Handle::current(),
            inbound,
            lanes: Mutex::new(HashMap::default()),
            directory: RwLock::new(directory),
            control_links: Mutex::new(HashMap::default()),
            overlay_tx,
            dead_letters: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        tokio::spawn(overlay_task(inner.clone(), overlay, overlay_rx));
        Ok(Self { inner, local })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Joins the cluster through nodes at these addresses.
    pub fn join(&self, seeds: Vec<String>) {
        for addr in seeds {
            let inner = self.inner.clone();
            self.inner.handle.spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    if inner.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match dial(&inner, &addr, LaneKey { peer: 0, channel: CONTROL, lane: 0 }).await {
                        Ok((_, _, peer)) => {
                            // The seed's identity: what the handshake proved.
                            let info = NodeInfo {
                                id: peer.node,
                                name: peer.name,
                                addr: addr.clone(),
                                role: reactor_net::NodeRole::Peer,
                                incarnation: peer.incarnation,
                            };
                            let _ = inner.overlay_tx.send(OverlayInput::Seed(info));
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("seed {addr}: {e}; retrying in {backoff:?}");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
    }

    /// Broadcasts `payload` to every node through the overlay.
    pub fn broadcast(&self, payload: Vec<u8>) {
        let _ = self.inner.overlay_tx.send(OverlayInput::Broadcast(payload));
    }

    /// What this node knows of the cluster, itself included.
    pub fn members(&self) -> Vec<Member> {
        let mut m: Vec<Member> = self.inner.directory.read().unwrap().values().cloned().collect();
        m.sort_by_key(|m| m.info.id);
        m
    }

    /// Every lane this node has opened, with its figures.
    pub fn lanes(&self) -> Vec<LaneStatus> {
        let lanes = self.inner.lanes.lock().unwrap();
        let mut v: Vec<LaneStatus> = lanes
            .iter()
            .map(|(k, h)| LaneStatus {
                peer: k.peer,
                channel: self.inner.channel_name(k.channel),
                lane: k.lane,
                up: h.stats.up.load(Ordering::Relaxed),
                frames: h.stats.frames_out.load(Ordering::Relaxed),
                bytes: h.stats.bytes_out.load(Ordering::Relaxed),
                connects: h.stats.connects.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| (a.peer, &a.channel, a.lane).cmp(&(b.peer, &b.channel, b.lane)));
        v
    }

    /// Messages dropped because no node could take them.
    pub fn dead_letters(&self) -> u64 {
        self.inner.dead_letters.load(Ordering::Relaxed)
    }

    /// Connections refused or closed for a protocol or authentication error.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Closes every connection and stops dialing.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for h in self.inner.lanes.lock().unwrap().values() {
            h.close.notify_one();
        }
    }
}

impl Outbound for Transport {
    fn send(&self, to: Address, env: Envelope, affinity: u64) -> Result<(), SendError> {
        self.inner.try_route(to, env, 0, affinity).map_err(|(e, _)| e)
    }
}

impl Inner {
    fn channel_name(&self, channel: u16) -> String {
        if self.config.multiplex {
            return "*".into();
        }
        self.channels.get(channel as usize).map_or_else(|| format!("#{channel}"), |c| c.name.clone())
    }

    /// The channel for a message: the first application channel whose size
    /// rule matches, else the first application channel.
    fn pick_channel(&self, len: usize) -> u16 {
        self.channels
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, c)| c.min_bytes.is_some_and(|m| len >= m))
            .or_else(|| self.channels.iter().enumerate().skip(1).find(|(_, c)| c.min_bytes.is_none()))
            .map_or(1, |(i, _)| i as u16)
    }

    /// The lane of `peer` a message on `channel` goes on.
    fn lane_key(&self, peer: NodeId, channel: u16, key: u64) -> LaneKey {
        if self.config.multiplex {
            return LaneKey { peer, channel: 0, lane: 0 };
        }
        let lanes = self.channels[channel as usize].lanes.max(1) as u64;
        LaneKey { peer, channel, lane: (partition_hash(key) % lanes) as u16 }
    }

    /// Routes a message towards the node of `to`: delivered here, or queued
    /// on the lane of the next hop, picked by `affinity` (the partition key;
    /// 0: the destination). Gives the message back with the status when it
    /// cannot go now.
    fn try_route(self: &Arc<Self>, to: Address, env: Envelope, hops: u8, affinity: u64) -> Result<(), (SendError, Envelope)> {
        let me = self.config.me.id;
        let dest = to.node();
        if dest == me {
            return match self.inbound.deliver(to, env) {
                Ok(()) => Ok(()),
                Err((SendError::InboxFull(_), env)) => Err((SendError::InboxFull(to), env)),
                Err((_, env)) => Err((SendError::NoSuchReactor(to), env)),
            };
        }
        if hops >= MAX_HOPS {
            tracing::warn!("dropped a message for {to} after {hops} hops (a routing loop?)");
            return Err((SendError::NoSuchReactor(to), env));
        }
        let Some(next) = self.directory.read().unwrap().get(&dest).filter(|m| m.up).and_then(|m| m.via) else {
            return Err((SendError::NoSuchReactor(to), env));
        };
        let channel = self.pick_channel(env.payload.len());
        let key = self.lane_key(next, channel, if affinity == 0 { to.0 } else { affinity });
        let mut data = Data {
            seq: 0,
            ack: 0,
            to: to.0,
            from: env.from.0,
            corr: env.corr,
            channel,
            hops: hops + 1,
            msg_kind: env.kind,
            flags: env.flags,
            meta: Vec::new(),
            payload: env.payload,
        };
        let back = |d: Data| Envelope { kind: d.msg_kind, flags: d.flags, from: Address(d.from), corr: d.corr, payload: d.payload };
        let tx = self.lane(key);
        // A causal channel stamps a message when it is queued: stamping and
        // queuing happen under its lock, so stamps follow queue order.
        let causal = if hops == 0 { self.causal.get(channel as usize).and_then(Option::as_ref) } else { None };
        if let Some(c) = causal {
            {
                let mut g = c.lock().unwrap();
                let permit = match tx.try_reserve() {
                    Ok(p) => p,
                    Err(mpsc::error::TrySendError::Full(())) => return Err((SendError::InboxFull(to), back(data))),
                    Err(mpsc::error::TrySendError::Closed(())) => return Err((SendError::NoSuchReactor(to), back(data))),
                };
                if let Err(e) = g.prepare(dest, &mut data) {
                    tracing::warn!("cannot stamp a causal message for node {dest}: {e}");
                    return Err((SendError::NoSuchReactor(to), back(data)));
                }
                permit.send(Outgoing::Data(data));
                return Ok(());
            }
        }
        match tx.try_send(Outgoing::Data(data)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Outgoing::Data(d))) => Err((SendError::InboxFull(to), back(d))),
            Err(mpsc::error::TrySendError::Closed(Outgoing::Data(d))) => Err((SendError::NoSuchReactor(to), back(d))),
            Err(_) => unreachable!("only data was sent"),
        }
    }

    /// The lane for `key`, started if need be.
    fn lane(self: &Arc<Self>, key: LaneKey) -> mpsc::Sender<Outgoing> {
        let mut lanes = self.lanes.lock().unwrap();
        if let Some(h) = lanes.get(&key).filter(|h| !h.tx.is_closed()) {
            return h.tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.lane_capacity);
        let close = Arc::new(Notify::new());
        let stats = Arc::new(LaneStats::default());
        lanes.insert(key, LaneHandle { tx: tx.clone(), close: close.clone(), stats: stats.clone() });
        self.handle.spawn(lane_task(self.clone(), key, rx, close, stats));
        tx
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        self.directory.read().unwrap().get(&node).map(|m| m.info.addr.clone())
    }

    fn note_control_link(&self, peer: &NodeInfo, up: bool) {
        let mut links = self.control_links.lock().unwrap();
        let n = links.entry(peer.id).or_insert(0);
        if up {
            *n += 1;
            if *n == 1 {
                let _ = self.overlay_tx.send(OverlayInput::Connected(peer.clone()));
            }
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                links.remove(&peer.id);
                let _ = self.overlay_tx.send(OverlayInput::Disconnected(peer.id));
            }
        }
    }

    /// A frame that arrived on an authenticated connection; maybe a frame
    /// to answer with.
    async fn handle_incoming(
        self: &Arc<Self>,
        peer: &reactor_net::auth::Peer,
        frame: Frame,
        streams: &mut Streams,
    ) -> Result<Option<Frame>, ConnError> {
        match frame {
            Frame::Data(d) => {
                let channel = d.channel;
                let Some(spec) = self.channels.get(channel as usize).filter(|_| channel != CONTROL) else {
                    return Err(ConnError::Protocol(format!("data on channel {channel}")));
                };
                if !self.config.multiplex && spec.name != peer.channel {
                    return Err(ConnError::Protocol(format!("data of channel {} on a `{}` connection", spec.name, peer.channel)));
                }
                let to = Address(d.to);
                if !to.is_reactor() && !to.is_host() {
                    return Err(ConnError::Protocol(format!("data for {to}, not an address")));
                }
                if !matches!(d.msg_kind, abi::KIND_MESSAGE | abi::KIND_REQUEST | abi::KIND_REPLY) || d.flags & !abi::FLAG_TEXT != 0 {
                    return Err(ConnError::Protocol(format!("data of kind {} flags {}", d.msg_kind, d.flags)));
                }
                if !spec.reliable {
                    if d.seq != 0 {
                        return Err(ConnError::Protocol("a sequenced frame on an unreliable channel".into()));
                    }
                    self.accept_data(d).await;
                    return Ok(None);
                }
                let now = Instant::now();
                let r = match streams.receivers.entry(channel) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let kept = self.receivers.lock().unwrap().remove(&(peer.node, channel, peer.lane));
                        let mut r = kept.unwrap_or_else(|| reliable::Receiver::new(reliable::ReceiverConfig::default()));
                        r.handle_connected(now, peer.incarnation).map_err(|e| ConnError::Protocol(e.to_string()))?;
                        e.insert(r)
                    }
                };
                r.handle_data(now, d).map_err(|e| ConnError::Protocol(e.to_string()))?;
                while let Some(d) = r.poll_deliver() {
                    self.accept_data(d).await;
                }
                Ok(None)
            }
            Frame::Control { payload } => {
                if self.config.multiplex || peer.channel == "control" {
                    let _ = self.overlay_tx.send(OverlayInput::Message(peer.node, payload));
                    Ok(None)
                } else {
                    Err(ConnError::Protocol("control frame on a data channel".into()))
                }
            }
            Frame::Ping { nonce } => Ok(Some(Frame::Pong { nonce })),
            Frame::Close { reason } => Err(ConnError::Closed(reason)),
            f => Err(ConnError::Protocol(format!("{} frame on an accepted connection", f.name()))),
        }
    }

    /// A message taken off a stream (in order, once): through causal order
    /// if its channel has it, then delivered or forwarded.
    async fn accept_data(self: &Arc<Self>, d: Data) {
        let Some(causal) = self.causal.get(d.channel as usize).and_then(Option::as_ref) else {
            return self.deliver_data(d).await;
        };
        let origin = Address(d.from).node();
        let mut pending = Some(d);
        loop {
            let mut ready = Vec::new();
            {
                let mut c = causal.lock().unwrap();
                if let Some(d) = pending.take() {
                    match c.handle_data(origin, d) {
                        Ok(()) => {}
                        Err(reactor_net::causal::CausalError::Full(d)) => pending = Some(d),
                        Err(e) => {
                            self.dead_letters.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("a causal message from node {origin} was dropped: {e}");
                        }
                    }
                }
                while let Some((_, d)) = c.poll_deliver() {
                    ready.push(d);
                }
            }
            for d in ready {
                self.deliver_data(d).await;
            }
            if pending.is_none() {
                return;
            }
            // The causal buffer is full: other streams' deliveries free it.
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    /// Delivers or forwards one message, waiting while the destination is
    /// backed up (which stops reading this connection: backpressure).
    async fn deliver_data(self: &Arc<Self>, d: Data) {
        let to = Address(d.to);
        let mut env = Envelope { kind: d.msg_kind, flags: d.flags, from: Address(d.from), corr: d.corr, payload: d.payload };
        let mut wait = Duration::from_micros(50);
        loop {
            match self.try_route(to, env, d.hops, 0) {
                Ok(()) => return,
                Err((SendError::InboxFull(_), back)) if !self.stopping.load(Ordering::Relaxed) => {
                    env = back;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(5));
                }
                Err(_) => {
                    self.dead_letters.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// A fresh interposition pipeline for connection `conn`, if faults are
    /// set. Each connection draws from its own stream of the schedule's
    /// seed (mixed with the connection's number): with one shared stream,
    /// a stream's n-th frame would meet the same fate on every reconnect,
    /// and a resend of the same frames would fail the same way forever.
    fn pipeline(&self, conn: u64) -> Option<Pipeline> {
        if self.faults.is_none() && !self.config.trace {
            return None;
        }
        let mut p = Pipeline::new();
        if self.config.trace {
            p = p.with(Trace::new(Instant::now(), 1024));
        }
        if let Some((schedule, start)) = self.faults.as_ref() {
            let mut schedule = schedule.clone();
            schedule.seed ^= partition_hash(conn);
            p = p.with(FaultInjector::new(self.config.me.id, &schedule, *start).resumed(Instant::now()));
        }
        Some(p)
    }

    /// Whether the fault schedule has `peer` on the other side of a
    /// partition now (connections to it are refused after the handshake).
    fn cut_off(&self, peer: NodeId) -> bool {
        let Some((schedule, start)) = self.faults.as_ref() else { return false };
        let mut p = Pipeline::new().with(FaultInjector::new(self.config.me.id, schedule, *start).resumed(Instant::now()));
        p.handle_timeout(Instant::now());
        p.hook::<FaultInjector>().is_some_and(|f| f.is_cut(peer))
    }

    /// Carries out what the fault injector asks of the node itself.
    fn carry_out_faults(&self, p: &mut Pipeline) {
        while let Some(event) = p.poll_event() {
            match event {
                FaultEvent::Crash => {
                    tracing::error!("fault injection: crashing node {} now", self.config.me.id);
                    std::process::abort();
                }
                FaultEvent::Cut { peers } => {
                    for peer in peers {
                        self.close_peer(peer);
                    }
                }
                FaultEvent::Healed => {}
            }
        }
    }
}

/// Dials `addr` for `key` and authenticates. For `key.peer` 0 (a seed) any
/// node is accepted; otherwise it must be that node.
async fn dial(inner: &Arc<Inner>, addr: &str, key: LaneKey) -> Result<(TcpStream, Vec<u8>, reactor_net::auth::Peer), ConnError> {
    let timeout = inner.config.connect_timeout;
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let hello = inner.hello(key);
        let (mut hs, first) = Handshake::start(Role::Connector, inner.config.secret.clone(), hello);
        write_frame(&mut stream, &first, &mut Vec::new()).await?;
        let mut buf = Vec::new();
        loop {
            let f = read_frame(&mut stream, &mut buf).await?;
            match hs.on_frame(f)? {
                Step::Send(f) => write_frame(&mut stream, &f, &mut Vec::new()).await?,
                Step::Done(peer) => return Ok::<_, ConnError>((stream, buf, peer)),
            }
        }
    };
    let (stream, buf, peer) = tokio::time::timeout(timeout, fut).await.map_err(|_| ConnError::Timeout("connecting"))??;
    if key.peer != 0 && peer.node != key.peer {
        return Err(ConnError::Protocol(format!("{addr} is node {}, expected node {}", peer.node, key.peer)));
    }
    if peer.node == inner.config.me.id {
        return Err(ConnError::Protocol(format!("{addr} is this node (id {})", peer.node)));
    }
    if inner.cut_off(peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    Ok((stream, buf, peer))
}

impl Inner {
    fn hello(&self, key: LaneKey) -> Hello {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        Hello {
            cluster: self.config.cluster.clone(),
            node: self.config.me.id,
            incarnation: self.config.me.incarnation,
            name: self.config.me.name.clone(),
            channel: self.channel_name(key.channel),
            lane: key.lane,
            nonce,
        }
    }
}

async fn write_frame(stream: &mut (impl AsyncWriteExt + Unpin), frame: &Frame, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    frame.encode(buf);
    stream.write_all(buf).await
}

/// Writes `bytes`, failing if the peer takes nothing for `stall` (a frame
/// of megabytes on a slow link may take longer than that in all, which is
/// fine as long as it moves).
async fn write_live(wr: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8], stall: Duration) -> Result<(), ConnError> {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + (256 << 10)).min(bytes.len());
        match tokio::time::timeout(stall, wr.write(&bytes[at..end])).await {
            Ok(Ok(0)) => return Err(ConnError::Closed("the peer stopped reading".into())),
            Ok(Ok(n)) => at += n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(ConnError::Timeout("writing: the peer took nothing")),
        }
    }
    Ok(())
}

/// Reads one frame; `buf` keeps bytes read past it. Cancel-safe (it is
/// used in `select!`): bytes are only ever appended to `buf` by `read_buf`.
async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Result<Frame, ConnError> {
    loop {
        if let Some((f, n)) = Frame::decode(buf)? {
            buf.drain(..n);
            return Ok(f);
        }
        // Room for the rest of the frame when its length is known (up to
        // the limit the decoder checked), else for a good read.
        let want = match buf.get(..4) {
            Some(p) => (u32::from_le_bytes(p.try_into().expect("4 bytes")) as usize + 4).saturating_sub(buf.len()),
            None => 0,
        };
        buf.reserve(want.clamp(64 * 1024, 16 << 20));
        if stream.read_buf(buf).await? == 0 {
            return Err(ConnError::Closed("end of stream".into()));
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&inner, stream).await {
                match e {
                    ConnError::Closed(_) | ConnError::Partitioned(_) => tracing::debug!("connection from {from} ended: {e}"),
                    ConnError::Io(_) => tracing::info!("connection from {from} ended: {e}"),
                    _ => {
                        inner.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("closed the connection from {from}: {e}");
                    }
                }
            }
        });
    }
}

/// An accepted connection: authenticate, then read frames until it ends.
async fn serve(inner: &Arc<Inner>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let handshake = async {
        // The acceptor's hello echoes the channel and lane asked for.
        let first = read_frame(&mut stream, &mut buf).await?;
        let Frame::Hello(theirs) = &first else {
            return Err(ConnError::Protocol(format!("{} frame before the hello", first.name())));
        };
        let mut hello = inner.hello(LaneKey { peer: 0, channel: 0, lane: theirs.lane });
        hello.channel = theirs.channel.clone();
        let (mut hs, mine) = Handshake::start(Role::Acceptor, inner.config.secret.clone(), hello);
        write_frame(&mut stream, &mine, &mut out).await?;
        let mut next = Some(first);
        loop {
            let f = match next.take() {
                Some(f) => f,
                None => read_frame(&mut stream, &mut buf).await?,
            };
            match hs.on_frame(f)? {
                Step::Send(f) => write_frame(&mut stream, &f, &mut out).await?,
                Step::Done(peer) => return Ok(peer),
            }
        }
    };
    let peer = tokio::time::timeout(inner.config.connect_timeout, handshake)
        .await
        .map_err(|_| ConnError::Timeout("authenticating"))??;
    if peer.node == inner.config.me.id || peer.node == 0 {
        return Err(ConnError::Protocol(format!("the peer claims node id {}", peer.node)));
    }
    if inner.cut_off(peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    let is_control = peer.channel == "control" || peer.channel == "*";
    if !is_control && !inner.channels.iter().skip(1).any(|c| c.name == peer.channel) {
        return Err(ConnError::Protocol(format!("unknown channel `{}`", peer.channel)));
    }
    tracing::debug!("node {} ({}) connected: channel {} lane {}", peer.node, peer.name, peer.channel, peer.lane);
    for c in inner.causal.iter().flatten() {
        c.lock().unwrap().handle_member(peer.node, peer.incarnation);
    }
    // The overlay hears of links this node dialed (the ones its messages
    // go on); the peer reports its own.
    serve_frames(inner, &peer, &mut stream, &mut buf, &mut out).await
}

async fn serve_frames(
    inner: &Arc<Inner>,
    peer: &reactor_net::auth::Peer,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), ConnError> {
    // Reliable streams this connection carries: their receive state lives
    // in `inner.receivers` between connections.
    let mut streams = Streams::default();
    let result = serve_loop(inner, peer, stream, buf, out, &mut streams).await;
    let now = Instant::now();
    let mut receivers = inner.receivers.lock().unwrap();
    for (channel, mut r) in streams.receivers.drain() {
        r.handle_disconnected(now);
        receivers.insert((peer.node, channel, peer.lane), r);
    }
    result
}

/// Receive state of the reliable streams of one accepted connection.
#[derive(Default)]
struct Streams {
    receivers: HashMap<u16, reliable::Receiver>,
}

async fn serve_loop(
    inner: &Arc<Inner>,
    peer: &reactor_net::auth::Peer,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    streams: &mut Streams,
) -> Result<(), ConnError> {
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut pipeline = inner.pipeline(conn);
    let (mut rd, mut wr) = stream.split();
    let mut last_read = Instant::now();
    // Bytes buffered at the last check (progress inside a frame).
    let mut seen = buf.len();
    loop {
        let now = Instant::now();
        // Frames the pipeline lets through now, and acks that are due.
        let mut to_write: Vec<Frame> = Vec::new();
        let incoming = match pipeline.as_mut() {
            Some(p) => release_due(inner, p, now, &mut wr, out, None).await?,
            None => Vec::new(),
        };
        for f in incoming {
            match inner.handle_incoming(peer, f, streams).await? {
                Some(answer) => to_write.push(answer),
                None => {}
            }
        }
        for (&channel, r) in streams.receivers.iter_mut() {
            if let Some(seq) = r.poll_ack(now) {
                to_write.push(Frame::Ack { channel, seq });
            }
        }
        for f in to_write {
            match pipeline.as_mut() {
                Some(p) => p.handle_send(now, peer.node, 0, conn, f),
                None => write_frame(&mut wr, &f, out).await?,
            }
        }
        if pipeline.as_ref().is_some_and(|p| p.poll_timeout().is_some_and(|t| t <= Instant::now())) {
            continue;
        }
        let timer = streams
            .receivers
            .values()
            .filter_map(|r| r.poll_timeout())
            .chain(pipeline.as_ref().and_then(|p| p.poll_timeout()))
            .min()
            .unwrap_or(last_read + inner.config.idle_timeout)
            .min(last_read + inner.config.idle_timeout);
        tokio::select! {
            r = read_frame(&mut rd, buf) => {
                let f = r?;
                last_read = Instant::now();
                seen = buf.len();
                match pipeline.as_mut() {
                    Some(p) => p.handle_receive(last_read, peer.node, frame_channel(&f), conn, f),
                    None => {
                        if let Some(answer) = inner.handle_incoming(peer, f, streams).await? {
                            write_frame(&mut wr, &answer, out).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {
                // Bytes of a frame still arriving count as life: a large
                // frame on a slow link takes longer than the timeout.
                if buf.len() != seen {
                    seen = buf.len();
                    last_read = Instant::now();
                } else if last_read.elapsed() >= inner.config.idle_timeout {
                    return Err(ConnError::Timeout("waiting for frames"));
                }
            }
        }
    }
}

fn frame_channel(f: &Frame) -> u16 {
    match f {
        Frame::Data(d) => d.channel,
        Frame::Ack { channel, .. } => *channel,
        _ => CONTROL,
    }
}

/// Lets a connection's pipeline release what is due: writes the frames
/// going out (damaged if marked so), returns the frames coming in (a
/// damaged one ends the connection, as a real decode error would), and
/// carries out fault events.
async fn release_due(
    inner: &Inner,
    p: &mut Pipeline,
    now: Instant,
    wr: &mut (impl AsyncWriteExt + Unpin),
    out: &mut Vec<u8>,
    stats: Option<&LaneStats>,
) -> Result<Vec<Frame>, ConnError> {
    p.handle_timeout(now);
    let mut incoming = Vec::new();
    while let Some(packet) = p.poll_release(now) {
        match packet.dir {
            reactor_net::fault::Direction::Send => {
                out.clear();
                packet.frame.encode(out);
                if let Some(damage) = packet.corrupt {
                    damage.apply(out);
                }
                write_live(wr, out, inner.config.idle_timeout).await?;
                if let Some(s) = stats {
                    s.frames_out.fetch_add(1, Ordering::Relaxed);
                    s.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
                }
            }
            reactor_net::fault::Direction::Receive if packet.corrupt.is_some() => {
                return Err(ConnError::Protocol("a damaged frame (injected)".into()));
            }
            reactor_net::fault::Direction::Receive => incoming.push(packet.frame),
        }
    }
    inner.carry_out_faults(p);
    Ok(incoming)
}

/// One outgoing lane: dials, authenticates, writes what is queued, pings,
/// and dials again after a failure. Reliable channels keep their send state
/// here, across connections.
async fn lane_task(
    inner: Arc<Inner>,
    key: LaneKey,
    mut rx: mpsc::Receiver<Outgoing>,
    close: Arc<Notify>,
    stats: Arc<LaneStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut head: VecDeque<Outgoing> = VecDeque::new();
    let mut senders: HashMap<u16, reliable::Sender> = HashMap::default();
    let is_control = key.channel == CONTROL;
    loop {
        if inner.stopping.load(Ordering::Relaxed) {
            break;
        }
        // A data lane dials only when there is something to send.
        if head.is_empty() && !is_control && senders.values().all(|s| s.unacked() == 0) {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => head.push_back(m),
                    None => break,
                },
                _ = close.notified() => break,
            }
        }
        let Some(addr) = inner.addr_of(key.peer).filter(|a| !a.is_empty()) else {
            tracing::warn!("no address for node {}; dropping {} queued messages", key.peer, head.len());
            inner.dead_letters.fetch_add(head.len() as u64, Ordering::Relaxed);
            head.clear();
            if is_control {
                let _ = inner.overlay_tx.send(OverlayInput::Disconnected(key.peer));
                break;
            }
            continue;
        };
        let (mut stream, mut buf, peer) = match dial(&inner, &addr, key).await {
            Ok(x) => x,
            Err(e) => {
                tracing::info!("lane {:?} to node {} at {addr}: {e}", key, key.peer);
                if is_control {
                    let _ = inner.overlay_tx.send(OverlayInput::Disconnected(key.peer));
                    break;
                }
                let up = inner.directory.read().unwrap().get(&key.peer).is_some_and(|m| m.up);
                if !up {
                    // The node is gone: what waits for it is undeliverable.
                    let mut lost = head.len() as u64 + senders.values().map(|s| s.unacked() as u64).sum::<u64>();
                    head.clear();
                    senders.clear();
                    while rx.try_recv().is_ok() {
                        lost += 1;
                    }
                    inner.dead_letters.fetch_add(lost, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = close.notified() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.up.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let mut refused = false;
        for s in senders.values_mut() {
            match s.handle_connected(now, peer.incarnation) {
                Ok(abandoned) => {
                    if !abandoned.is_empty() {
                        tracing::warn!("node {} restarted: {} unacknowledged messages may be lost", key.peer, abandoned.len());
                        inner.dead_letters.fetch_add(abandoned.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!("lane {:?}: {e}", key);
                    refused = true;
                }
            }
        }
        if refused {
            stats.up.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            continue;
        }
        let info = inner.directory.read().unwrap().get(&key.peer).map(|m| m.info.clone());
        let info = info.unwrap_or(NodeInfo {
            id: peer.node,
            name: peer.name.clone(),
            addr: addr.clone(),
            role: reactor_net::NodeRole::Peer,
            incarnation: peer.incarnation,
        });
        if is_control {
            inner.note_control_link(&info, true);
        }
        let mut lane = Lane { inner: &inner, key, peer_incarnation: peer.incarnation, senders: &mut senders, stats: &stats };
        let end = lane.run(&mut stream, &mut buf, &mut rx, &mut head, &close).await;
        stats.up.store(false, Ordering::Relaxed);
        let now = Instant::now();
        for s in senders.values_mut() {
            s.handle_disconnected(now);
        }
        if is_control {
            inner.note_control_link(&info, false);
        }
        match end {
            Ok(()) => break,
            Err(e) => {
                tracing::info!("lane {:?} to node {}: {e}", key, key.peer);
                if is_control {
                    break;
                }
            }
        }
    }
    let mut lanes = inner.lanes.lock().unwrap();
    if lanes.get(&key).is_some_and(|h| Arc::ptr_eq(&h.stats, &stats)) {
        lanes.remove(&key);
    }
}

/// One connection of a lane.
struct Lane<'a> {
    inner: &'a Arc<Inner>,
    key: LaneKey,
    peer_incarnation: u64,
    senders: &'a mut HashMap<u16, reliable::Sender>,
    stats: &'a LaneStats,
}

impl Lane<'_> {
    /// Writes queued messages on one authenticated connection until it
    /// fails (`Err`) or the lane is closed (`Ok`).
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        rx: &mut mpsc::Receiver<Outgoing>,
        head: &mut VecDeque<Outgoing>,
        close: &Notify,
    ) -> Result<(), ConnError> {
        let inner = self.inner;
        let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut pipeline = inner.pipeline(conn);
        let (mut rd, mut wr) = stream.split();
        let mut out = Vec::with_capacity(64 * 1024);
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        let mut last_read = Instant::now();
        let mut nonce = 0u64;
        let mut read_buf = std::mem::take(buf);
        // A reliable channel whose send buffer is full stops taking from the
        // queue until an ack frees room.
        let mut blocked = false;
        loop {
            let now = Instant::now();
            let mut frames: Vec<Frame> = Vec::new();
            // 1. Take what is queued (unless a reliable send buffer is full).
            while !blocked {
                let Some(m) = head.pop_front().or_else(|| rx.try_recv().ok()) else { break };
                match m {
                    Outgoing::Data(d) if self.reliable(d.channel) => {
                        let cfg = reliable::SenderConfig::default();
                        let inc = self.peer_incarnation;
                        let s = self.senders.entry(d.channel).or_insert_with(|| {
                            let mut s = reliable::Sender::new(cfg);
                            let _ = s.handle_connected(now, inc);
                            s
                        });
                        if let Err(reliable::Full(d)) = s.try_send(d) {
                            head.push_front(Outgoing::Data(d));
                            blocked = true;
                        }
                    }
                    m => frames.push(m.into_frame()),
                }
            }
            // 2. What reliable streams have to (re)transmit.
            for s in self.senders.values_mut() {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                while let Some(d) = s.poll_transmit(now) {
                    frames.push(Frame::Data(d));
                }
            }
            // 3. Through the interposition pipeline, onto the wire.
            for f in frames {
                match pipeline.as_mut() {
                    Some(p) => p.handle_send(now, self.key.peer, frame_channel(&f), conn, f),
                    None => {
                        self.write(&mut wr, &f, &mut out).await?;
                        // The peer took a frame: it is alive even if its
                        // pongs queue behind our data.
                        last_read = Instant::now();
                    }
                }
            }
            let acks = match pipeline.as_mut() {
                Some(p) => release_due(inner, p, now, &mut wr, &mut out, Some(self.stats)).await?,
                None => Vec::new(),
            };
            for f in acks {
                if self.on_frame(f)? {
                    blocked = false;
                }
            }
            if pipeline.as_ref().is_some_and(|p| p.poll_timeout().is_some_and(|t| t <= Instant::now())) {
                continue;
            }
            let timer = self
                .senders
                .values()
                .filter_map(|s| s.poll_timeout())
                .chain(pipeline.as_ref().and_then(|p| p.poll_timeout()))
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                m = rx.recv(), if !blocked => match m {
                    Some(m) => head.push_back(m),
                    None => return Ok(()),
                },
                _ = close.notified() => {
                    let mut b = Vec::new();
                    let _ = write_frame(&mut wr, &Frame::Close { reason: "closing".into() }, &mut b).await;
                    return Ok(());
                }
                _ = ping.tick() => {
                    if last_read.elapsed() > inner.config.idle_timeout {
                        return Err(ConnError::Timeout("waiting for a pong"));
                    }
                    nonce += 1;
                    let mut b = Vec::new();
                    write_frame(&mut wr, &Frame::Ping { nonce }, &mut b).await?;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {}
                r = read_frame(&mut rd, &mut read_buf) => {
                    let f = r?;
                    last_read = Instant::now();
                    match pipeline.as_mut() {
                        Some(p) => p.handle_receive(last_read, self.key.peer, frame_channel(&f), conn, f),
                        None => {
                            if self.on_frame(f)? {
                                blocked = false;
                            }
                        }
                    }
                }
            }
        }
    }

    fn reliable(&self, channel: u16) -> bool {
        self.inner.channels.get(channel as usize).is_some_and(|c| c.reliable)
    }

    async fn write(&self, wr: &mut (impl AsyncWriteExt + Unpin), f: &Frame, out: &mut Vec<u8>) -> Result<(), ConnError> {
        out.clear();
        f.encode(out);
        write_live(wr, out, self.inner.config.idle_timeout).await?;
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A frame read on this dialed connection; true if an ack freed room.
    fn on_frame(&mut self, f: Frame) -> Result<bool, ConnError> {
        match f {
            Frame::Pong { .. } => Ok(false),
            Frame::Ack { channel, seq } => {
                let Some(s) = self.senders.get_mut(&channel) else {
                    return Err(ConnError::Protocol(format!("ack on channel {channel}, which has no reliable stream here")));
                };
                s.handle_ack(Instant::now(), seq).map_err(|e| ConnError::Protocol(e.to_string()))?;
                Ok(true)
            }
            Frame::Close { reason } => Err(ConnError::Closed(reason)),
            f => Err(ConnError::Protocol(format!("{} frame on a dialed connection", f.name()))),
        }
    }
}

/// Runs the overlay: feeds it what the transport hears, carries out its
/// actions, and keeps the directory's routes current.
async fn overlay_task(inner: Arc<Inner>, mut overlay: Box<dyn Overlay>, mut rx: mpsc::UnboundedReceiver<OverlayInput>) {
    loop {
        let now = Instant::now();
        while let Some(action) = overlay.poll_action() {
            carry_out(&inner, action);
        }
        refresh_routes(&inner, overlay.as_ref());
        let deadline = overlay.poll_timeout();
        let input = match deadline {
            Some(d) => {
                let d = tokio::time::Instant::from_std(d.max(now));
                tokio::select! {
                    i = rx.recv() => i,
                    _ = tokio::time::sleep_until(d) => { overlay.handle_timeout(Instant::now()); continue; }
                }
            }
            None => rx.recv().await,
        };
        let Some(input) = input else { return };
        let now = Instant::now();
        match input {
            OverlayInput::Seed(info) => {
                inner.learn(&info);
                overlay.handle_seed(now, info);
            }
            OverlayInput::Connected(info) => overlay.handle_connected(now, info),
            OverlayInput::Disconnected(id) => overlay.handle_disconnected(now, id),
            OverlayInput::Message(from, payload) => {
                if let Err(e) = overlay.handle_message(now, from, &payload) {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("overlay message from node {from} refused: {e}; closing its connections");
                    inner.close_peer(from);
                }
            }
            OverlayInput::Broadcast(payload) => overlay.broadcast(now, payload),
        }
    }
}

impl Inner {
    /// Records a node's identity and address.
    fn learn(&self, info: &NodeInfo) {
        if info.id == self.config.me.id || info.addr.is_empty() {
            return;
        }
        let mut dir = self.directory.write().unwrap();
        let e = dir.entry(info.id).or_insert_with(|| Member { info: info.clone(), up: false, via: None });
        if info.incarnation >= e.info.incarnation {
            e.info = info.clone();
        }
    }

    fn close_peer(&self, peer: NodeId) {
        for (k, h) in self.lanes.lock().unwrap().iter() {
            if k.peer == peer {
                h.close.notify_one();
            }
        }
    }
}

fn carry_out(inner: &Arc<Inner>, action: Action) {
    match action {
        Action::Connect(info) => {
            inner.learn(&info);
            let _ = inner.lane(LaneKey { peer: info.id, channel: CONTROL, lane: 0 });
        }
        Action::Disconnect(id) => inner.close_peer(id),
        Action::Send { to, payload } => {
            let key = LaneKey { peer: to, channel: CONTROL, lane: 0 };
            if inner.lane(key).try_send(Outgoing::Control(payload)).is_err() {
                tracing::warn!("control lane to node {to} is backed up; an overlay message was dropped");
            }
        }
        Action::Up(info) => {
            inner.learn(&info);
            for c in inner.causal.iter().flatten() {
                c.lock().unwrap().handle_member(info.id, info.incarnation);
            }
            if let Some(m) = inner.directory.write().unwrap().get_mut(&info.id) {
                m.up = true;
            }
            tracing::info!("node {} ({}) at {} is up (incarnation {})", info.id, info.name, info.addr, info.incarnation);
            inner.inbound.event(NodeEvent::Up(info));
        }
        Action::Down(id) => {
            if let Some(m) = inner.directory.write().unwrap().get_mut(&id) {
                m.up = false;
                m.via = None;
            }
            tracing::warn!("node {id} is down");
            inner.inbound.event(NodeEvent::Down(id));
        }
        Action::Deliver { origin, payload } => inner.inbound.event(NodeEvent::Broadcast { origin, payload }),
    }
}

fn refresh_routes(inner: &Inner, overlay: &dyn Overlay) {
    let mut dir = inner.directory.write().unwrap();
    for m in overlay.members() {
        if m.id != inner.config.me.id && !m.addr.is_empty() {
            let e = dir.entry(m.id).or_insert_with(|| Member { info: m.clone(), up: true, via: None });
            if m.incarnation >= e.info.incarnation {
                e.info = m;
            }
        }
    }
    let me = inner.config.me.id;
    for (id, m) in dir.iter_mut() {
        if *id != me {
            // A live node the overlay has no route to this instant (a
            // connection being replaced) keeps its last route: a lane to a
            // gone relay fails over on its own, and `Down` clears it.
            m.via = if m.up { overlay.next_hop(*id).or(m.via) } else { None };
        }
    }
}
