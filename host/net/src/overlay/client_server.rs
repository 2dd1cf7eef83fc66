//! Client–server: servers form a full mesh and route for their clients.
//!
//! - **Servers** (role [`NodeRole::Server`]; a `Peer` is treated as one)
//!   join through a seed server like the full mesh (`Join`, `Servers`,
//!   `AnnounceServer`), keep a connection to every server, detect failures
//!   by lost connections (re-dial with backoff, Down after `suspicion`) and
//!   run anti-entropy among themselves (`Digest` every `sync_interval`;
//!   a differing digest is answered with the server list and the client
//!   table).
//! - **Clients** (role [`NodeRole::Client`]) connect only to servers: they
//!   *attach* to one (`Attach`, with an epoch that grows at each attach),
//!   keep standby connections to `servers_per_client - 1` more, and fail
//!   over when their server's connection drops (to a standby, else to
//!   another known server, round robin with backoff).
//! - **The client table** (which client is attached to which server) is
//!   replicated among servers: the server a client attaches to tells the
//!   others (`Attached`); the newest `(incarnation, epoch)` wins. A client
//!   whose connection to its server stays down for `suspicion` is declared
//!   gone by that server (`Detached`); clients of a server that is Down are
//!   declared Down by every server if they do not re-attach within
//!   `suspicion`.
//! - **Membership** reaches clients through their server: the whole
//!   directory after an attach (`Directory`, in chunks), then batched
//!   changes (`Update`) every `push_interval`.
//! - **Routing**: client → its server → (the destination's server →)
//!   destination; clients never relay (they refuse server-only messages,
//!   and servers refuse them from clients). **Broadcast** goes to the
//!   origin's server, which sends it to every server and to its clients;
//!   every server hands it to its own clients.
#![forbid(unsafe_code)]

use super::codec::{check_chunk, check_info, decode_message, encode_message};
use super::protocol::{Action, Overlay, OverlayError};
use crate::frame::MAX_CONTROL_LEN;
use crate::node::{NodeId, NodeInfo, NodeRole};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Settings of a [`ClientServer`] node.
#[derive(Clone, Debug)]
pub struct ClientServerConfig {
    /// Servers a client keeps connections to (it is attached to one, the
    /// others are standbys for fast failover). Default 1.
    pub servers_per_client: usize,
    /// First delay before re-dialling. Default 250 ms.
    pub retry_initial: Duration,
    /// Longest delay between dials. Default 5 s.
    pub retry_max: Duration,
    /// How long a server may stay unconnected, or a client unattached,
    /// before it is Down. Default 3 s.
    pub suspicion: Duration,
    /// Down nodes are forgotten after this long. Default 60 s.
    pub forget_after: Duration,
    /// Period of the anti-entropy digest between servers. Default 5 s.
    pub sync_interval: Duration,
    /// A server batches membership changes for its clients this long.
    /// Default 100 ms.
    pub push_interval: Duration,
    /// Period of the failure-detection scan. Default 250 ms.
    pub tick: Duration,
    /// Largest overlay message accepted. Default 256 KiB.
    pub max_message_size: usize,
    /// Most nodes remembered. Default 4096.
    pub max_nodes: usize,
}

impl Default for ClientServerConfig {
    fn default() -> Self {
        ClientServerConfig {
            servers_per_client: 1,
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            suspicion: Duration::from_secs(3),
            forget_after: Duration::from_secs(60),
            sync_interval: Duration::from_secs(5),
            push_interval: Duration::from_millis(100),
            tick: Duration::from_millis(250),
            max_message_size: (256 << 10).min(MAX_CONTROL_LEN),
            max_nodes: 4096,
        }
    }
}

/// Most entries in one list message.
const CHUNK: usize = 256;

/// Which server a client is attached to.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Attachment {
    client: NodeInfo,
    server: NodeId,
    epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    /// New server → seed server.
    Join(NodeInfo),
    /// Live servers (sender included), one chunk.
    Servers(Vec<NodeInfo>),
    /// Seed → servers: a server joined.
    AnnounceServer(NodeInfo),
    /// Live client attachments, one chunk.
    Clients(Vec<Attachment>),
    /// Server → servers: this client attached to me.
    Attached(Attachment),
    /// Server → servers: this attachment ended (client gone).
    Detached { id: NodeId, incarnation: u64, epoch: u64 },
    /// Anti-entropy between servers.
    Digest { count: u32, hash: u64 },
    /// Client → server: attach me.
    Attach { info: NodeInfo, epoch: u64 },
    /// Server → client: the live members, one chunk; `last` ends it.
    Directory { nodes: Vec<NodeInfo>, last: bool },
    /// Server → client: membership changes.
    Update { up: Vec<NodeInfo>, down: Vec<NodeId> },
    /// A broadcast from `origin`.
    Broadcast { origin: NodeId, payload: Vec<u8> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Up,
    Down,
}

#[derive(Debug)]
struct ServerRec {
    info: NodeInfo,
    status: Status,
    connected: bool,
    since: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct ClientRec {
    info: NodeInfo,
    server: NodeId,
    epoch: u64,
    up: bool,
    /// Attached to us and connected now.
    connected: bool,
    /// Since when it is unconnected (ours) or orphaned (its server Down),
    /// or Down.
    since: Option<Instant>,
}

fn mix(id: NodeId, a: u64, b: u64) -> u64 {
    let mut x = (u64::from(id) << 48) ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(29);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A server's state.
#[derive(Debug, Default)]
struct Server {
    servers: BTreeMap<NodeId, ServerRec>,
    clients: BTreeMap<NodeId, ClientRec>,
    next_sync: Option<Instant>,
    next_push: Option<Instant>,
    push_up: Vec<NodeInfo>,
    push_down: Vec<NodeId>,
}

/// A client's state.
#[derive(Debug, Default)]
struct Client {
    /// Known servers.
    servers: BTreeMap<NodeId, NodeInfo>,
    /// Servers connected now.
    connected: BTreeSet<NodeId>,
    /// The server we are attached to (sent `Attach` on its connection).
    primary: Option<NodeId>,
    epoch: u64,
    /// Members as the primary told us (servers and clients, not us).
    members: BTreeMap<NodeId, NodeInfo>,
    /// A `Directory` being received.
    incoming: Option<Vec<NodeInfo>>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Round-robin cursor over `servers` for dials.
    cursor: NodeId,
}

#[derive(Debug)]
enum Role {
    Server(Server),
    Client(Client),
}

/// The client–server overlay. See the module docs.
#[derive(Debug)]
pub struct ClientServer {
    me: NodeInfo,
    config: ClientServerConfig,
    rng: Xoshiro256PlusPlus,
    role: Role,
    /// Roles of the peers connected now (from their handshake).
    peer_roles: BTreeMap<NodeId, NodeRole>,
    next_tick: Option<Instant>,
    actions: VecDeque<Action>,
}

fn is_server(role: NodeRole) -> bool {
    role != NodeRole::Client
}

impl ClientServer {
    /// A node `me` (a server or a client, by its role), its randomness
    /// seeded by `seed`.
    pub fn new(me: NodeInfo, config: ClientServerConfig, seed: u64) -> Self {
        let role = if is_server(me.role) {
            Role::Server(Server::default())
        } else {
            Role::Client(Client { backoff: config.retry_initial, ..Client::default() })
        };
        ClientServer {
            me,
            config,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            role,
            peer_roles: BTreeMap::new(),
            next_tick: None,
            actions: VecDeque::new(),
        }
    }

    /// The server this client is attached to (`None` for a server).
    pub fn attached_to(&self) -> Option<NodeId> {
        match &self.role {
            Role::Client(c) => c.primary,
            Role::Server(_) => None,
        }
    }

    /// For a server: the server client `id` is attached to, as far as it
    /// knows.
    pub fn server_of(&self, id: NodeId) -> Option<NodeId> {
        match &self.role {
            Role::Server(s) => s.clients.get(&id).filter(|c| c.up).map(|c| c.server),
            Role::Client(_) => None,
        }
    }

    fn send(&mut self, to: NodeId, msg: &Msg) {
        self.actions.push_back(Action::Send { to, payload: encode_message(msg) });
    }

    fn start(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.config.tick);
        }
        if let Role::Server(s) = &mut self.role
            && s.next_sync.is_none() {
                let j = self.rng.random_range(0..=self.config.sync_interval.as_millis().max(1) as u64);
                s.next_sync = Some(now + self.config.sync_interval / 2 + Duration::from_millis(j));
            }
    }

    // ---- server side ------------------------------------------------------

    fn server(&mut self) -> Option<&mut Server> {
        match &mut self.role {
            Role::Server(s) => Some(s),
            Role::Client(_) => None,
        }
    }

    fn live_servers(&self) -> Vec<NodeInfo> {
        let Role::Server(s) = &self.role else { return Vec::new() };
        let mut v: Vec<NodeInfo> = s.servers.values().filter(|r| r.status == Status::Up).map(|r| r.info.clone()).collect();
        v.push(self.me.clone());
        v
    }

    fn live_attachments(&self) -> Vec<Attachment> {
        let Role::Server(s) = &self.role else { return Vec::new() };
        s.clients.values().filter(|c| c.up).map(|c| Attachment { client: c.info.clone(), server: c.server, epoch: c.epoch }).collect()
    }

    fn digest(&self) -> (u32, u64) {
        let Role::Server(s) = &self.role else { return (0, 0) };
        let mut count = 1u32;
        let mut hash = mix(self.me.id, self.me.incarnation, 0);
        for r in s.servers.values().filter(|r| r.status == Status::Up) {
            count += 1;
            hash ^= mix(r.info.id, r.info.incarnation, 0);
        }
        for c in s.clients.values().filter(|c| c.up) {
            count += 1;
            hash ^= mix(c.info.id, c.info.incarnation, c.epoch ^ u64::from(c.server) << 48);
        }
        (count, hash)
    }

    fn send_state(&mut self, to: NodeId) {
        let servers = self.live_servers();
        for chunk in servers.chunks(CHUNK) {
            self.send(to, &Msg::Servers(chunk.to_vec()));
        }
        let clients = self.live_attachments();
        for chunk in clients.chunks(CHUNK) {
            self.send(to, &Msg::Clients(chunk.to_vec()));
        }
    }

    /// Queues a membership change for our clients.
    fn push_change(&mut self, now: Instant, up: Option<NodeInfo>, down: Option<NodeId>) {
        let interval = self.config.push_interval;
        let Some(s) = self.server() else { return };
        s.push_up.extend(up);
        s.push_down.extend(down);
        if s.next_push.is_none() {
            s.next_push = Some(now + interval);
        }
    }

    fn emit_up(&mut self, now: Instant, info: NodeInfo) {
        self.actions.push_back(Action::Up(info.clone()));
        self.push_change(now, Some(info), None);
    }

    fn emit_down(&mut self, now: Instant, id: NodeId) {
        self.actions.push_back(Action::Down(id));
        self.push_change(now, None, Some(id));
    }

    /// A server learns of server `info` from a message.
    fn learn_server(&mut self, now: Instant, info: NodeInfo) {
        if info.id == self.me.id || check_info(&info).is_err() || !is_server(info.role) {
            return;
        }
        let initial = self.config.retry_initial;
        let max_nodes = self.config.max_nodes;
        let Some(s) = self.server() else { return };
        let was_up = match s.servers.get_mut(&info.id) {
            Some(r) if info.incarnation > r.info.incarnation => {
                let was_up = r.status == Status::Up;
                r.info = info.clone();
                r.status = Status::Pending;
                r.connected = false;
                r.since = now;
                r.backoff = initial;
                r.retry_at = Some(now + initial);
                was_up
            }
            Some(_) => return,
            None => {
                if s.servers.len() + s.clients.len() >= max_nodes {
                    return;
                }
                s.servers.insert(
                    info.id,
                    ServerRec { info: info.clone(), status: Status::Pending, connected: false, since: now, backoff: initial, retry_at: Some(now + initial) },
                );
                false
            }
        };
        if was_up {
            self.server_down(now, info.id);
        }
        self.actions.push_back(Action::Connect(info));
    }

    /// Server `id` is Down (or replaced): its clients become orphans.
    fn server_down(&mut self, now: Instant, id: NodeId) {
        if let Some(s) = self.server() {
            for c in s.clients.values_mut() {
                if c.up && c.server == id && c.since.is_none() {
                    c.since = Some(now);
                }
            }
        }
        self.emit_down(now, id);
    }

    /// Applies an attachment; returns whether it was news.
    fn apply_attachment(&mut self, now: Instant, a: Attachment) -> bool {
        if a.client.id == self.me.id || check_info(&a.client).is_err() || a.client.role != NodeRole::Client {
            return false;
        }
        let me = self.me.id;
        let max_nodes = self.config.max_nodes;
        let Some(s) = self.server() else { return false };
        let server_known = a.server == me || s.servers.get(&a.server).is_some_and(|r| r.status != Status::Down);
        let (emit_down, emit_up) = match s.clients.get_mut(&a.client.id) {
            Some(c) if (a.client.incarnation, a.epoch) <= (c.info.incarnation, c.epoch) => return false,
            Some(c) => {
                let restarted = a.client.incarnation > c.info.incarnation;
                let down = restarted && c.up;
                let up = restarted || !c.up;
                c.info = a.client.clone();
                c.server = a.server;
                c.epoch = a.epoch;
                c.up = true;
                c.connected = false;
                c.since = if server_known { None } else { Some(now) };
                (down, up)
            }
            None => {
                if s.servers.len() + s.clients.len() >= max_nodes {
                    return false;
                }
                s.clients.insert(
                    a.client.id,
                    ClientRec {
                        info: a.client.clone(),
                        server: a.server,
                        epoch: a.epoch,
                        up: true,
                        connected: false,
                        since: if server_known { None } else { Some(now) },
                    },
                );
                (false, true)
            }
        };
        if emit_down {
            self.emit_down(now, a.client.id);
        }
        if emit_up {
            self.emit_up(now, a.client.clone());
        }
        true
    }

    fn server_message(&mut self, now: Instant, from: NodeId, msg: Msg) -> Result<(), OverlayError> {
        let from_role = self.peer_roles.get(&from).copied();
        let from_client = from_role == Some(NodeRole::Client);
        let client_only = matches!(msg, Msg::Attach { .. } | Msg::Broadcast { .. });
        if from_client && !client_only {
            return Err(OverlayError::Refused(format!("server message from client {from}")));
        }
        match msg {
            Msg::Join(info) => {
                check_info(&info)?;
                if info.id != from || !is_server(info.role) {
                    return Err(OverlayError::Refused(format!("join of node {} from node {from}", info.id)));
                }
                self.learn_server(now, info.clone());
                self.send_state(from);
                let Some(s) = self.server() else { return Ok(()) };
                let others: Vec<NodeId> = s.servers.values().filter(|r| r.connected && r.info.id != from).map(|r| r.info.id).collect();
                let bytes = encode_message(&Msg::AnnounceServer(info));
                for id in others {
                    self.actions.push_back(Action::Send { to: id, payload: bytes.clone() });
                }
            }
            Msg::Servers(list) => {
                check_chunk(&list, CHUNK, "servers")?;
                for info in list {
                    self.learn_server(now, info);
                }
            }
            Msg::AnnounceServer(info) => {
                check_info(&info)?;
                self.learn_server(now, info);
            }
            Msg::Clients(list) => {
                if list.len() > CHUNK {
                    return Err(OverlayError::Refused(format!("{} clients in one message", list.len())));
                }
                for a in &list {
                    check_info(&a.client)?;
                }
                for a in list {
                    self.apply_attachment(now, a);
                }
            }
            Msg::Attached(a) => {
                check_info(&a.client)?;
                if a.server != from {
                    return Err(OverlayError::Refused(format!("server {from} reports an attachment to server {}", a.server)));
                }
                self.apply_attachment(now, a);
            }
            Msg::Detached { id, incarnation, epoch } => {
                let Some(s) = self.server() else { return Ok(()) };
                let gone = match s.clients.get_mut(&id) {
                    Some(c) if c.up && c.server == from && (c.info.incarnation, c.epoch) == (incarnation, epoch) => {
                        c.up = false;
                        c.since = Some(now);
                        true
                    }
                    _ => false,
                };
                if gone {
                    self.emit_down(now, id);
                }
            }
            Msg::Digest { count, hash } => {
                if (count, hash) != self.digest() {
                    self.send_state(from);
                }
            }
            Msg::Attach { info, epoch } => {
                check_info(&info)?;
                if info.id != from || info.role != NodeRole::Client {
                    return Err(OverlayError::Refused(format!("attach of node {} from node {from}", info.id)));
                }
                let a = Attachment { client: info, server: self.me.id, epoch };
                let fresh = self.apply_attachment(now, a.clone());
                let me = self.me.id;
                let Some(s) = self.server() else { return Ok(()) };
                let Some(c) = s.clients.get_mut(&from) else { return Ok(()) };
                if c.server != me || c.epoch != epoch {
                    return Ok(()); // a newer attachment elsewhere won
                }
                c.connected = true;
                c.since = None;
                if fresh {
                    let others: Vec<NodeId> = s.servers.values().filter(|r| r.connected).map(|r| r.info.id).collect();
                    let bytes = encode_message(&Msg::Attached(a));
                    for id in others {
                        self.actions.push_back(Action::Send { to: id, payload: bytes.clone() });
                    }
                }
                // The whole directory for the client.
                let mut nodes = self.live_servers();
                nodes.extend(self.live_attachments().into_iter().map(|a| a.client).filter(|c| c.id != from));
                let n = nodes.len().div_ceil(CHUNK).max(1);
                for (i, chunk) in nodes.chunks(CHUNK).enumerate() {
                    self.send(from, &Msg::Directory { nodes: chunk.to_vec(), last: i + 1 == n });
                }
            }
            Msg::Broadcast { origin, payload } => {
                if from_client && origin != from {
                    return Err(OverlayError::Refused(format!("client {from} relays a broadcast of {origin}")));
                }
                let me = self.me.id;
                let Some(s) = self.server() else { return Ok(()) };
                let mine: Vec<NodeId> = s.clients.values().filter(|c| c.up && c.connected && c.server == me && c.info.id != origin).map(|c| c.info.id).collect();
                let peers: Vec<NodeId> = if from_client { s.servers.values().filter(|r| r.connected).map(|r| r.info.id).collect() } else { Vec::new() };
                let bytes = encode_message(&Msg::Broadcast { origin, payload: payload.clone() });
                for id in peers.into_iter().chain(mine) {
                    self.actions.push_back(Action::Send { to: id, payload: bytes.clone() });
                }
                self.actions.push_back(Action::Deliver { origin, payload });
            }
            Msg::Directory { .. } | Msg::Update { .. } => {
                return Err(OverlayError::Refused("client message sent to a server".into()));
            }
        }
        Ok(())
    }

    fn server_tick(&mut self, now: Instant) {
        let cfg = self.config.clone();
        let me = self.me.id;
        let Role::Server(s) = &mut self.role else { return };
        let mut down_servers = Vec::new();
        let mut dial = Vec::new();
        let mut forget = Vec::new();
        for r in s.servers.values_mut() {
            if r.connected {
                continue;
            }
            match r.status {
                Status::Pending if now >= r.since + cfg.suspicion => forget.push(r.info.id),
                Status::Up if now >= r.since + cfg.suspicion => {
                    r.status = Status::Down;
                    r.since = now;
                    down_servers.push(r.info.id);
                }
                Status::Down if now >= r.since + cfg.forget_after => forget.push(r.info.id),
                _ => {}
            }
            if r.retry_at.is_some_and(|t| t <= now) {
                let backoff = if r.status == Status::Down { cfg.retry_max } else { r.backoff };
                r.retry_at = Some(now + backoff);
                r.backoff = (r.backoff * 2).min(cfg.retry_max);
                dial.push(r.info.clone());
            }
        }
        for id in &forget {
            s.servers.remove(id);
        }
        let mut detached = Vec::new();
        let mut down_clients = Vec::new();
        let mut forget_clients = Vec::new();
        for c in s.clients.values_mut() {
            match (c.up, c.since) {
                (true, Some(t)) if now >= t + cfg.suspicion => {
                    c.up = false;
                    c.since = Some(now);
                    if c.server == me {
                        detached.push((c.info.id, c.info.incarnation, c.epoch));
                    }
                    down_clients.push(c.info.id);
                }
                (false, Some(t)) if now >= t + cfg.forget_after => forget_clients.push(c.info.id),
                _ => {}
            }
        }
        for id in &forget_clients {
            s.clients.remove(id);
        }
        let connected: Vec<NodeId> = s.servers.values().filter(|r| r.connected).map(|r| r.info.id).collect();
        for info in dial {
            self.actions.push_back(Action::Connect(info));
        }
        for id in down_servers {
            self.server_down(now, id);
        }
        for id in down_clients {
            self.emit_down(now, id);
        }
        for (id, incarnation, epoch) in detached {
            let bytes = encode_message(&Msg::Detached { id, incarnation, epoch });
            for &to in &connected {
                self.actions.push_back(Action::Send { to, payload: bytes.clone() });
            }
        }
    }

    fn server_timers(&mut self, now: Instant) {
        let Role::Server(s) = &mut self.role else { return };
        if s.next_sync.is_some_and(|t| t <= now) {
            let j = self.rng.random_range(0..=self.config.sync_interval.as_millis().max(1) as u64);
            s.next_sync = Some(now + self.config.sync_interval / 2 + Duration::from_millis(j));
            let connected: Vec<NodeId> = s.servers.values().filter(|r| r.connected).map(|r| r.info.id).collect();
            if !connected.is_empty() {
                let to = connected[self.rng.random_range(0..connected.len())];
                let (count, hash) = self.digest();
                self.send(to, &Msg::Digest { count, hash });
            }
        }
        let Role::Server(s) = &mut self.role else { return };
        if s.next_push.is_some_and(|t| t <= now) {
            s.next_push = None;
            let up = std::mem::take(&mut s.push_up);
            let down = std::mem::take(&mut s.push_down);
            let mine: Vec<NodeId> = s.clients.values().filter(|c| c.up && c.connected && c.server == self.me.id).map(|c| c.info.id).collect();
            for id in mine {
                let up: Vec<NodeInfo> = up.iter().filter(|i| i.id != id).cloned().collect();
                for chunk in up.chunks(CHUNK) {
                    self.send(id, &Msg::Update { up: chunk.to_vec(), down: Vec::new() });
                }
                for chunk in down.chunks(CHUNK) {
                    self.send(id, &Msg::Update { up: Vec::new(), down: chunk.to_vec() });
                }
            }
        }
    }

    // ---- client side ------------------------------------------------------

    fn client(&mut self) -> Option<&mut Client> {
        match &mut self.role {
            Role::Client(c) => Some(c),
            Role::Server(_) => None,
        }
    }

    fn attach(&mut self, to: NodeId) {
        let me = self.me.clone();
        let Some(c) = self.client() else { return };
        c.primary = Some(to);
        c.epoch += 1;
        c.retry_at = None;
        c.incoming = None;
        let epoch = c.epoch;
        self.send(to, &Msg::Attach { info: me, epoch });
    }

    /// Dials the next known server we are not connected to.
    fn client_dial_next(&mut self, now: Instant) {
        let max = self.config.retry_max;
        let Some(c) = self.client() else { return };
        let candidates: Vec<&NodeInfo> = c.servers.values().filter(|i| !c.connected.contains(&i.id)).collect();
        if candidates.is_empty() {
            return;
        }
        let next = candidates.iter().find(|i| i.id > c.cursor).or(candidates.first()).map(|i| (*i).clone());
        let Some(info) = next else { return };
        c.cursor = info.id;
        c.retry_at = Some(now + c.backoff);
        c.backoff = (c.backoff * 2).min(max);
        self.actions.push_back(Action::Connect(info));
    }

    fn client_member_up(&mut self, info: NodeInfo) {
        if info.id == self.me.id || check_info(&info).is_err() {
            return;
        }
        let Some(c) = self.client() else { return };
        if is_server(info.role) {
            c.servers.insert(info.id, info.clone());
        }
        let (down, up) = match c.members.get(&info.id) {
            Some(old) if old.incarnation > info.incarnation => return,
            Some(old) if old.incarnation == info.incarnation => {
                if *old != info {
                    c.members.insert(info.id, info);
                }
                return;
            }
            Some(_) => (true, true),
            None => (false, true),
        };
        c.members.insert(info.id, info.clone());
        if down {
            self.actions.push_back(Action::Down(info.id));
        }
        if up {
            self.actions.push_back(Action::Up(info));
        }
    }

    fn client_member_down(&mut self, id: NodeId) {
        let Some(c) = self.client() else { return };
        if c.members.remove(&id).is_some() {
            if c.primary != Some(id) {
                c.servers.remove(&id);
            }
            self.actions.push_back(Action::Down(id));
        }
    }

    fn client_message(&mut self, _now: Instant, from: NodeId, msg: Msg) -> Result<(), OverlayError> {
        let from_server = self.peer_roles.get(&from).is_some_and(|r| is_server(*r));
        if !from_server {
            return Err(OverlayError::Refused(format!("client got a message from non-server {from}")));
        }
        let primary = self.client().and_then(|c| c.primary);
        match msg {
            Msg::Directory { nodes, last } => {
                if nodes.len() > CHUNK {
                    return Err(OverlayError::Refused(format!("{} nodes in one message", nodes.len())));
                }
                for i in &nodes {
                    check_info(i)?;
                }
                if primary != Some(from) {
                    return Ok(());
                }
                let max_nodes = self.config.max_nodes;
                let Some(c) = self.client() else { return Ok(()) };
                let incoming = c.incoming.get_or_insert_with(Vec::new);
                if incoming.len() + nodes.len() > max_nodes {
                    c.incoming = None;
                    return Err(OverlayError::Refused("directory larger than max_nodes".into()));
                }
                incoming.extend(nodes);
                if last {
                    let all = c.incoming.take().unwrap_or_default();
                    let ids: BTreeSet<NodeId> = all.iter().map(|i| i.id).collect();
                    let gone: Vec<NodeId> = c.members.keys().filter(|id| !ids.contains(id)).copied().collect();
                    for id in gone {
                        self.client_member_down(id);
                    }
                    for info in all {
                        self.client_member_up(info);
                    }
                }
            }
            Msg::Update { up, down } => {
                if up.len() > CHUNK || down.len() > CHUNK {
                    return Err(OverlayError::Refused("update too long".into()));
                }
                for i in &up {
                    check_info(i)?;
                }
                if primary != Some(from) {
                    return Ok(());
                }
                for id in down {
                    if id != self.me.id {
                        self.client_member_down(id);
                    }
                }
                for info in up {
                    self.client_member_up(info);
                }
            }
            Msg::Broadcast { origin, payload } => {
                if origin != self.me.id {
                    self.actions.push_back(Action::Deliver { origin, payload });
                }
            }
            _ => return Err(OverlayError::Refused("server message sent to a client".into())),
        }
        Ok(())
    }

    fn client_tick(&mut self, now: Instant) {
        let want = self.config.servers_per_client.max(1);
        let Some(c) = self.client() else { return };
        if c.primary.is_none()
            && let Some(&standby) = c.connected.iter().next() {
                self.attach(standby);
                return;
            }
        let Some(c) = self.client() else { return };
        if c.connected.len() < want && c.retry_at.is_none_or(|t| t <= now) {
            self.client_dial_next(now);
        }
    }
}

impl Overlay for ClientServer {
    fn me(&self) -> &NodeInfo {
        &self.me
    }

    fn handle_seed(&mut self, now: Instant, seed: NodeInfo) {
        if seed.id == self.me.id || check_info(&seed).is_err() {
            return;
        }
        self.start(now);
        self.handle_connected(now, seed.clone());
        if let Role::Server(_) = self.role {
            self.send(seed.id, &Msg::Join(self.me.clone()));
        }
    }

    fn handle_connected(&mut self, now: Instant, peer: NodeInfo) {
        if peer.id == self.me.id || check_info(&peer).is_err() {
            return;
        }
        self.start(now);
        self.peer_roles.insert(peer.id, peer.role);
        let initial = self.config.retry_initial;
        match &mut self.role {
            Role::Server(s) => {
                if !is_server(peer.role) {
                    return; // a client: it attaches with a message
                }
                let up = match s.servers.get_mut(&peer.id) {
                    Some(r) if peer.incarnation < r.info.incarnation => return,
                    Some(r) => {
                        let restarted = peer.incarnation > r.info.incarnation && r.status == Status::Up;
                        let up = restarted || r.status != Status::Up;
                        r.info = peer.clone();
                        r.connected = true;
                        r.status = Status::Up;
                        r.since = now;
                        r.backoff = initial;
                        r.retry_at = None;
                        if restarted {
                            self.server_down(now, peer.id);
                        }
                        up
                    }
                    None => {
                        s.servers.insert(
                            peer.id,
                            ServerRec { info: peer.clone(), status: Status::Up, connected: true, since: now, backoff: initial, retry_at: None },
                        );
                        true
                    }
                };
                if up {
                    self.emit_up(now, peer);
                }
            }
            Role::Client(c) => {
                if !is_server(peer.role) {
                    // Clients never talk to clients.
                    self.actions.push_back(Action::Disconnect(peer.id));
                    return;
                }
                c.servers.insert(peer.id, peer.clone());
                c.connected.insert(peer.id);
                c.backoff = initial;
                c.retry_at = None;
                if c.primary.is_none() {
                    self.attach(peer.id);
                }
            }
        }
    }

    fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.start(now);
        self.peer_roles.remove(&peer);
        let max = self.config.retry_max;
        match &mut self.role {
            Role::Server(s) => {
                if let Some(r) = s.servers.get_mut(&peer) {
                    if r.connected {
                        r.connected = false;
                        if r.status == Status::Up {
                            r.since = now;
                        }
                    }
                    if r.retry_at.is_none() {
                        r.retry_at = Some(now + r.backoff);
                        r.backoff = (r.backoff * 2).min(max);
                    }
                } else if let Some(c) = s.clients.get_mut(&peer)
                    && c.connected {
                        c.connected = false;
                        if c.up && c.since.is_none() {
                            c.since = Some(now);
                        }
                    }
            }
            Role::Client(c) => {
                c.connected.remove(&peer);
                if c.primary == Some(peer) {
                    c.primary = None;
                    c.incoming = None;
                    // Fail over at once to a standby, else dial another.
                    if let Some(&standby) = c.connected.iter().next() {
                        self.attach(standby);
                    } else {
                        self.client_dial_next(now);
                    }
                } else if c.retry_at.is_none() {
                    c.retry_at = Some(now + c.backoff);
                }
            }
        }
    }

    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError> {
        let msg: Msg = decode_message(payload, self.config.max_message_size)?;
        if from == self.me.id {
            return Err(OverlayError::Refused("message from ourselves".into()));
        }
        self.start(now);
        match self.role {
            Role::Server(_) => self.server_message(now, from, msg),
            Role::Client(_) => self.client_message(now, from, msg),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_some_and(|t| t <= now) {
            self.next_tick = Some(now + self.config.tick);
            match self.role {
                Role::Server(_) => self.server_tick(now),
                Role::Client(_) => self.client_tick(now),
            }
        }
        self.server_timers(now);
    }

    fn broadcast(&mut self, now: Instant, payload: Vec<u8>) {
        self.start(now);
        let origin = self.me.id;
        let bytes = encode_message(&Msg::Broadcast { origin, payload });
        let to: Vec<NodeId> = match &self.role {
            Role::Server(s) => s
                .servers
                .values()
                .filter(|r| r.connected)
                .map(|r| r.info.id)
                .chain(s.clients.values().filter(|c| c.up && c.connected && c.server == origin).map(|c| c.info.id))
                .collect(),
            Role::Client(c) => c.primary.into_iter().collect(),
        };
        for id in to {
            self.actions.push_back(Action::Send { to: id, payload: bytes.clone() });
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let (sync, push) = match &self.role {
            Role::Server(s) => (s.next_sync, s.next_push),
            Role::Client(_) => (None, None),
        };
        [self.next_tick, sync, push].into_iter().flatten().min()
    }

    fn next_hop(&self, to: NodeId) -> Option<NodeId> {
        if to == self.me.id {
            return None;
        }
        match &self.role {
            Role::Server(s) => {
                if let Some(r) = s.servers.get(&to) {
                    return r.connected.then_some(to);
                }
                let c = s.clients.get(&to).filter(|c| c.up)?;
                if c.server == self.me.id {
                    c.connected.then_some(to)
                } else {
                    s.servers.get(&c.server).filter(|r| r.connected).map(|_| c.server)
                }
            }
            Role::Client(c) => {
                let primary = c.primary?;
                if c.connected.contains(&to) && (to == primary || c.servers.contains_key(&to)) {
                    return Some(to);
                }
                c.members.contains_key(&to).then_some(primary)
            }
        }
    }

    fn members(&self) -> Vec<NodeInfo> {
        let mut v = match &self.role {
            Role::Server(s) => {
                let mut v = self.live_servers();
                v.extend(s.clients.values().filter(|c| c.up).map(|c| c.info.clone()));
                v
            }
            Role::Client(c) => {
                let mut v: Vec<NodeInfo> = c.members.values().cloned().collect();
                v.push(self.me.clone());
                v
            }
        };
        v.sort_by_key(|i| i.id);
        v
    }

    fn neighbours(&self) -> Vec<NodeId> {
        match &self.role {
            Role::Server(s) => s
                .servers
                .values()
                .filter(|r| r.connected)
                .map(|r| r.info.id)
                .chain(s.clients.values().filter(|c| c.connected && c.server == self.me.id).map(|c| c.info.id))
                .collect(),
            Role::Client(c) => c.connected.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{MembershipEvent, Sim, sim_info};

    fn converge(sim: &mut Sim) {
        let ok = sim.run_until(Sim::members_converged, Duration::from_secs(60));
        let e = sim.membership_errors();
        assert!(ok, "no convergence: {} errors, e.g. {:?}", e.len(), &e[..e.len().min(10)]);
    }

    fn all_routes(sim: &Sim) {
        let ids = sim.alive_ids();
        for &a in &ids {
            for &b in &ids {
                let path = sim.route(a, b).unwrap_or_else(|e| panic!("{a} -> {b}: {e}"));
                assert!(path.len() <= 4, "{path:?}");
                // Clients never relay.
                for hop in path.iter().skip(1).take(path.len().saturating_sub(2)) {
                    assert_ne!(sim.info(*hop).unwrap().role, NodeRole::Client, "{path:?}");
                }
            }
        }
    }

    #[test]
    fn three_servers_thirty_clients_converge_route_and_broadcast() {
        let mut sim = Sim::client_server(3, 30, 21);
        converge(&mut sim);
        for id in 4..=33 {
            assert_eq!(sim.connections(id), 1, "client {id}");
        }
        for id in 1..=3 {
            assert_eq!(sim.connections(id), 2 + 10, "server {id}");
        }
        all_routes(&sim);
        for origin in [2, 17] {
            sim.broadcast(origin, vec![origin as u8; 10]);
            sim.run_for(Duration::from_millis(200));
            for id in sim.alive_ids() {
                let got = sim.take_deliveries(id);
                if id != origin {
                    assert_eq!(got, vec![(origin, vec![origin as u8; 10])], "node {id}");
                }
            }
        }
        assert!(sim.alive_ids().iter().all(|&id| sim.stats(id).refused == 0));
    }

    #[test]
    fn a_client_fails_over_when_its_server_dies() {
        let mut sim = Sim::client_server(3, 30, 22);
        converge(&mut sim);
        sim.record_events(true);
        // Clients of server 2 are 5, 8, 11, ...
        sim.crash(2);
        sim.run_for(Duration::from_secs(8));
        converge(&mut sim);
        for id in sim.alive_ids() {
            let ev = sim.take_events(id);
            assert!(ev.contains(&MembershipEvent::Down(2)), "node {id}: {ev:?}");
            // No client was declared Down: they all re-attached in time.
            assert!(!ev.iter().any(|e| matches!(e, MembershipEvent::Down(x) if *x != 2)), "node {id}: {ev:?}");
            assert!(sim.connections(id) > 0);
        }
        all_routes(&sim);
        // Server 2 comes back, then a client restarts.
        let info = sim.restart(2, 1).unwrap();
        converge(&mut sim);
        assert!(sim.overlay(9).unwrap().members().contains(&info));
        sim.crash(9);
        sim.run_for(Duration::from_secs(6));
        converge(&mut sim);
        for id in sim.alive_ids() {
            assert!(sim.take_events(id).contains(&MembershipEvent::Down(9)), "node {id}");
        }
        let info = sim.restart(9, 3).unwrap();
        converge(&mut sim);
        for id in sim.alive_ids().into_iter().filter(|&id| id != 9) {
            assert!(sim.take_events(id).contains(&MembershipEvent::Up(info.clone())), "node {id}");
        }
        all_routes(&sim);
    }

    #[test]
    fn clients_are_refused_server_messages() {
        let mut s = ClientServer::new(sim_info(1, NodeRole::Server, 1), ClientServerConfig::default(), 0);
        let now = Instant::now();
        s.handle_connected(now, sim_info(5, NodeRole::Client, 1));
        let msg = encode_message(&Msg::Servers(vec![sim_info(7, NodeRole::Server, 1)]));
        assert!(matches!(s.handle_message(now, 5, &msg), Err(OverlayError::Refused(_))));
        let msg = encode_message(&Msg::Broadcast { origin: 6, payload: vec![] });
        assert!(matches!(s.handle_message(now, 5, &msg), Err(OverlayError::Refused(_))));
        let msg = encode_message(&Msg::Attach { info: sim_info(6, NodeRole::Client, 1), epoch: 1 });
        assert!(matches!(s.handle_message(now, 5, &msg), Err(OverlayError::Refused(_))));
        let mut c = ClientServer::new(sim_info(5, NodeRole::Client, 1), ClientServerConfig::default(), 0);
        c.handle_connected(now, sim_info(6, NodeRole::Client, 1));
        assert_eq!(c.poll_action(), Some(Action::Disconnect(6)));
        let msg = encode_message(&Msg::Update { up: vec![sim_info(7, NodeRole::Client, 1)], down: vec![] });
        assert!(matches!(c.handle_message(now, 6, &msg), Err(OverlayError::Refused(_))));
    }
}
