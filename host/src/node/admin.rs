//! The node's admin socket (see the protocol in the parent module's docs):
//! the server, and a small blocking client the CLI uses.
//!
//! # Who may connect
//! The socket is `<data-dir>/admin.sock`, mode `0600`, in the node's
//! data directory (created `0700`; see [`super::lock`]). It is bound in a
//! private staging directory and renamed into place, so at no moment can
//! another user reach it through a wider mode. Each connection's peer is
//! identified by the kernel (`SO_PEERCRED`): only the node's own (effective)
//! uid and root are served; anyone else gets one error line
//! (`{"id":null,"err":"refused: …"}`), the connection is closed and the
//! attempt is logged.
//!
//! # Bounds
//! At most [`MAX_CONNECTIONS`] connections are served at once (more get an
//! error line and are closed); a request line is at most
//! [`protocol::MAX_LINE`] bytes (a longer one gets an error answer and its
//! connection is closed; the reader never buffers more); at most
//! [`MAX_PENDING`] requests of one connection run at once (the node stops
//! reading that connection until one is answered), and answers wait in a
//! bounded queue (a client that does not read its answers stops being
//! read). Nothing per connection grows without bound.
//!
//! # Deadlines
//! A client has [`IDLE_TIMEOUT`] (30 s; [`AdminSocket::idle_timeout`]
//! changes it) to send each whole request line, counted while none of its
//! requests is running (then it is waiting for the node, not the other way
//! round); one that sends nothing, or part of a line and then nothing, for
//! that long gets a line saying so (`{"id":null,"err":"closing the
//! connection: …"}`), is disconnected, and the reason is logged. Each
//! answer line must be taken by the client within the same time, or the
//! connection is closed (its running requests finish, their answers are
//! dropped). So an idle or stalled client holds a connection slot for a
//! bounded time.
#![forbid(unsafe_code)]

pub mod protocol;

use reactor_runtime::journal::Level;
use super::{Node, NodeError};
use protocol::{ModuleRef, Op, answer_err, answer_ok};
use reactor_runtime::abi;
use reactor_types::{CallError, ParseAddressError, SendError, SpawnError};
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, mpsc, watch};

pub use protocol::parse_address;

/// The socket's name in the data directory.
pub const SOCKET: &str = "admin.sock";

/// Most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Most requests of one connection running at once.
pub const MAX_PENDING: usize = 32;

/// How long a client may take to send a request line, or to take an answer
/// line, before its connection is closed (see the module docs).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an admin request failed, on either side of the socket. A request
/// that fails changes nothing on the node unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is not one the protocol knows (missing or mistyped
    /// field, unknown op).
    #[error("{0}")]
    BadRequest(String),
    /// A field that should be an address is not one.
    #[error(transparent)]
    Address(#[from] ParseAddressError),
    /// A message or init argument could not be turned into JSON bytes.
    #[error("cannot encode the message as JSON")]
    Encode(#[source] serde_json::Error),
    /// The module to spawn could not be loaded.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The spawn was refused or the reactor failed starting (it does not
    /// exist afterwards).
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The message was not taken.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The request got no answer (it may have been handled).
    #[error(transparent)]
    Call(#[from] CallError),
    /// A snapshot could not be taken or written (nothing was written).
    #[error(transparent)]
    Snapshot(#[from] reactor_runtime::snapshot::SnapshotError),
    /// A restore was refused (nothing was restored).
    #[error(transparent)]
    Restore(#[from] crate::node::RestoreError),
    /// The node's checkpoint could not be taken.
    #[error(transparent)]
    Durable(#[from] crate::node::durable::DurableError),
    /// A migration did not happen (or is undecided).
    #[error(transparent)]
    Migrate(#[from] crate::node::migrate::MigrateError),
    /// The reactor answered, but not with JSON.
    #[error("the reply is not JSON")]
    ReplyNotJson(#[source] serde_json::Error),
    /// The admin socket could not be bound; the node does not serve.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No node answers on the data directory's socket.
    #[error("no node is running with data directory {} ({})", dir.display(), dir.join("admin.sock").display())]
    NotRunning {
        /// The data directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The admin socket exists but this user may not connect to it.
    #[error("permission denied on {}: the admin socket is only for the node's user", path.display())]
    Denied {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The connection to the node broke or was closed by it.
    #[error("the node closed the admin connection")]
    Closed(#[source] Option<io::Error>),
    /// The node's answer is not JSON.
    #[error("the node's answer is not JSON")]
    BadAnswer(#[source] serde_json::Error),
    /// The node answered the request with this error.
    #[error("{0}")]
    Refused(String),
}

/// A node's admin socket, bound but not served yet: clients can connect
/// (their requests wait until [`AdminSocket::serve`]).
#[derive(Debug)]
pub struct AdminSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    idle: Duration,
}

impl AdminSocket {
    /// Binds the admin socket of `node` at `<data-dir>/admin.sock` (mode
    /// `0600`), replacing a stale one a previous run of the node left (the
    /// node holds the data directory's lock, so no other node is using
    /// it). Once this returns, clients can connect.
    pub fn bind(node: &Node) -> Result<AdminSocket, AdminError> {
        let dir = &node.config.data_dir;
        let path = dir.join(SOCKET);
        let listen_err = |source| AdminError::Listen { path: path.clone(), source };
        // Bound in a directory only this user can enter, made owner-only,
        // then moved into place: never reachable with the umask's mode.
        let staging = dir.join(format!(".a{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::DirBuilder::new().mode(0o700).create(&staging).map_err(listen_err)?;
        let bound = (|| {
            let tmp = staging.join(SOCKET);
            let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            listener.set_nonblocking(true)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::rename(&tmp, &path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        let listener = bound.map_err(listen_err)?;
        Ok(AdminSocket { listener, path, idle: IDLE_TIMEOUT })
    }

    /// Sets how long a client may take to send a request line or take an
    /// answer line ([`IDLE_TIMEOUT`] by default; at least 1 ms).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(1));
        self
    }

    /// Serves `node`'s admin requests until a `stop` request or `shutdown`
    /// resolves; then removes the socket and stops the node's transport.
    pub fn serve(self, node: &Arc<Node>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AdminError> {
        let served = node.clone();
        node.tokio.block_on(async move {
            let r = serve(served.clone(), self, shutdown).await;
            served.transport.stop();
            r
        })
    }
}


/// Answers a connection that is not served with one error line and closes
/// it, without waiting: the line fits an empty socket buffer, and a peer
/// that does not read it loses nothing it was owed.
fn turn_away(stream: tokio::net::UnixStream, why: &str) {
    if let Ok(mut s) = stream.into_std() {
        let mut line = answer_err(&Value::Null, why);
        line.push('\n');
        let _ = s.write(line.as_bytes());
    }
}

/// Whether a peer is served: the node's own uid or root.
fn allowed(peer: u32, me: u32) -> bool {
    peer == me || peer == 0
}

/// Serves admin requests on `socket` until `shutdown` or a `stop` request.
async fn serve(
    node: Arc<Node>,
    socket: AdminSocket,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AdminError> {
    let AdminSocket { listener, path, idle } = socket;
    let listener = UnixListener::from_std(listener).map_err(|source| AdminError::Listen { path: path.clone(), source })?;
    let me = rustix::process::geteuid().as_raw();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = stop_rx.changed() => break,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("admin accept: {e}");
                        // Out of descriptors, say: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                match stream.peer_cred() {
                    Ok(c) if allowed(c.uid(), me) => {}
                    Ok(c) => {
                        tracing::warn!(
                            "admin socket: refused a connection from uid {} (pid {}): only uid {me} (the node's user) \
                             and root may use it",
                            c.uid(),
                            c.pid().map_or("unknown".to_owned(), |p| p.to_string()),
                        );
                        turn_away(stream, &format!(
                            "refused: uid {} may not use this node's admin socket (only uid {me}, the node's user, and root)",
                            c.uid()
                        ));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("admin socket: refused a connection whose peer cannot be identified: {e}");
                        turn_away(stream, "refused: cannot identify the connecting process");
                        continue;
                    }
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!("admin socket: refused a connection: {MAX_CONNECTIONS} connections are open");
                    turn_away(stream, &format!("refused: the node already serves {MAX_CONNECTIONS} admin connections"));
                    continue;
                };
                let (node, stop) = (node.clone(), stop_tx.clone());
                tokio::spawn(async move {
                    connection(node, stream, stop, idle).await;
                    drop(slot);
                });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Serves one connection: its requests (read by [`read_requests`]) run
/// concurrently, their answers go out through [`write_answers`]. Ends when
/// the client closes, misbehaves or stalls (logged), or asks to stop.
async fn connection(node: Arc<Node>, stream: tokio::net::UnixStream, stop: watch::Sender<bool>, idle: Duration) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<String>(MAX_PENDING + 1);
    let mut writer = tokio::spawn(write_answers(wr, rx, idle));
    let why = tokio::select! {
        why = read_requests(node, rd, tx, stop, idle) => why,
        // The client stopped taking its answers (logged by the writer) or
        // went away: reading on would only run requests nobody reads.
        _ = &mut writer => return,
    };
    if let Some(why) = why {
        tracing::warn!("admin socket: closing a connection: {why}");
    }
    // Running requests still answer; the writer ends when they have.
    let _ = writer.await;
}

/// Writes answer lines until every sender is gone; gives up on a client
/// that does not take one within `idle`.
async fn write_answers(mut wr: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<String>, idle: Duration) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        match tokio::time::timeout(idle, wr.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(
                    "admin socket: closing a connection: the client took no answer for {idle:?} (its running \
                     requests finish unanswered)"
                );
                return;
            }
        }
    }
}

/// Reads and starts requests until the client closes the connection
/// (`None`) or must be disconnected (`Some(why)`). A request line must
/// arrive whole within `idle`, not counting time during which requests of
/// this connection run or finish.
async fn read_requests(
    node: Arc<Node>,
    rd: tokio::net::unix::OwnedReadHalf,
    tx: mpsc::Sender<String>,
    stop: watch::Sender<bool>,
    idle: Duration,
) -> Option<String> {
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    // Requests of this connection finished so far: a wait during which one
    // finished was not idle.
    let finished = Arc::new(AtomicU64::new(0));
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        loop {
            let finished_before = finished.load(Ordering::Relaxed);
            // `read_until` keeps what it read in `line` if the deadline
            // cuts it short, so a wait that is extended resumes the line.
            let room = (protocol::MAX_LINE + 1 - line.len()) as u64;
            match tokio::time::timeout(idle, (&mut rd).take(room).read_until(b'\n', &mut line)).await {
                Ok(Ok(0)) if line.is_empty() => return None,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => return Some(format!("cannot read from it: {e}")),
                Err(_) => {
                    let busy = pending.available_permits() < MAX_PENDING;
                    if busy || finished.load(Ordering::Relaxed) != finished_before {
                        continue;
                    }
                    let why = if line.is_empty() {
                        format!("the client sent nothing for {idle:?}")
                    } else {
                        format!("the client sent {} bytes of a request line, then nothing for {idle:?}", line.len())
                    };
                    // Said to the client too, if its socket has room.
                    let _ = tx.try_send(answer_err(&Value::Null, &format!("closing the connection: {why}")));
                    return Some(why);
                }
            }
        }
        if line.len() > protocol::MAX_LINE {
            let why = format!("request line over {} bytes", protocol::MAX_LINE);
            let _ = tx.send(answer_err(&Value::Null, &format!("{why}; closing the connection"))).await;
            return Some(why);
        }
        let req = match protocol::parse_request(&line) {
            Ok(r) => r,
            Err((id, e)) => {
                if tx.send(answer_err(&id, &e.to_string())).await.is_err() {
                    return None;
                }
                continue;
            }
        };
        if req.op == Op::Stop {
            let _ = tx.send(answer_ok(&req.id, Value::Null)).await;
            let _ = stop.send(true);
            return None;
        }
        let Ok(permit) = pending.clone().acquire_owned().await else { return None };
        let (node, tx, finished) = (node.clone(), tx.clone(), finished.clone());
        // Calls block on their answer: off the network threads.
        tokio::task::spawn_blocking(move || {
            let id = req.id.clone();
            let progress_tx = tx.clone();
            let mut progress = move |p: Value| {
                // Progress is best effort: a slow client misses some.
                let _ = progress_tx.try_send(protocol::answer_progress(&id, p));
            };
            let answer = match handle(&node, req.op, &mut progress) {
                Ok(v) => answer_ok(&req.id, v),
                Err(e) => answer_err(&req.id, &reactor_types::error_chain(&e)),
            };
            let _ = tx.blocking_send(answer);
            finished.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

fn handle(node: &Node, op: Op, progress: &mut dyn FnMut(Value)) -> Result<Value, AdminError> {
    match op {
        Op::Rebalance => Ok(json!(node.rebalance(&mut |p| progress(json!(p)))?)),
        Op::Migrate { address, to, precopy } => {
            let options = crate::node::migrate::MigrateOptions { precopy, ..Default::default() };
            let report = node.migrate(address, to, options, &mut |p| progress(json!(p)))?;
            Ok(json!(report))
        }
        Op::Status => Ok(node.status()),
        Op::Spawn { module, init, durable, standby } => {
            let module = match module {
                ModuleRef::Hash(hash) => node.runtime.engine().module(&hash).ok_or_else(|| {
                    AdminError::BadRequest(format!("no module with hash sha256:{hash} is loaded on this node"))
                })?,
                ModuleRef::Name(name) => node.module(&name)?,
            };
            let init = match init {
                None => Vec::new(),
                Some(v) => serde_json::to_vec(&v).map_err(AdminError::Encode)?,
            };
            let shard = node.runtime.shards();
            let pick = (node.runtime.stats().spawned as usize) % shard.max(1);
            let flags = if init.is_empty() { 0 } else { abi::FLAG_TEXT };
            let level = match durable {
                None => node.default_durability(),
                Some(protocol::Durability::Off) => None,
                Some(protocol::Durability::Written) => Some(Level::Written),
                Some(protocol::Durability::Synced) => Some(Level::Synced),
                Some(protocol::Durability::Standby) => Some(Level::Standby),
            };
            if level == Some(Level::Standby) {
                node.standby().check_target(standby).map_err(AdminError::BadRequest)?;
            }
            let a = node.runtime.spawn_journaled(pick, &module, init, flags, level)?;
            let standby = if level == Some(Level::Standby) {
                match node.standby().attach(a, standby, true) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        // Nothing it sent has left (no standby held it):
                        // it goes as if never spawned.
                        let _ = node.runtime.drop_copy(a);
                        return Err(AdminError::BadRequest(format!("{a} has no standby, and is not kept: {e}")));
                    }
                }
            } else {
                None
            };
            Ok(json!({
                "address": a.to_string(), "tag": a.0, "module": format!("sha256:{}", module.hash),
                "durable": level.map(Level::name), "standby": standby,
            }))
        }
        Op::Send { to, msg } => {
            let msg = serde_json::to_vec(&msg).map_err(AdminError::Encode)?;
            node.runtime.send(to, msg, true)?;
            Ok(Value::Null)
        }
        Op::Call { to, msg, timeout_ms } => {
            let msg = serde_json::to_vec(&msg).map_err(AdminError::Encode)?;
            let timeout = timeout_ms.map_or(node.default_call_timeout(), Duration::from_millis);
            let reply = node.call(to, msg, true, timeout)?;
            if reply.text {
                serde_json::from_slice(&reply.payload).map_err(AdminError::ReplyNotJson)
            } else {
                Ok(json!({"binary": hex::encode(&reply.payload)}))
            }
        }
        Op::Mailbox => {
            // One-way messages sent to this node's host (`#<node>.host`),
            // oldest first.
            let msgs: Vec<Value> = node
                .runtime
                .drain_host_messages()
                .into_iter()
                .map(|env| {
                    let body = if env.is_text() {
                        serde_json::from_slice(&env.payload).unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&env.payload)}))
                    } else {
                        json!({"binary": hex::encode(&env.payload)})
                    };
                    json!({"from": env.from.to_string(), "msg": body})
                })
                .collect();
            Ok(Value::Array(msgs))
        }
        Op::Snapshot { reactors, path, incremental, compress } => {
            Ok(node.snapshot(reactors, Path::new(&path), incremental, compress)?)
        }
        Op::Restore { files, lazy } => {
            let files: Vec<PathBuf> = files.into_iter().map(PathBuf::from).collect();
            let restored = node.restore(&files, lazy)?;
            Ok(json!({"reactors": restored.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
        }
        Op::Checkpoint => {
            let t = node.checkpoint()?;
            Ok(taken_json(&t))
        }
        Op::Stop => Ok(Value::Null),
    }
}

/// A checkpoint the node took, as an answer.
pub fn taken_json(t: &crate::node::durable::Taken) -> Value {
    let kind = crate::node::kind_json(t.kind);
    json!({
        "file": t.path.display().to_string(),
        "kind": kind,
        "reactors": t.reactors,
        "file_bytes": t.file_bytes,
        "ms": t.elapsed.as_secs_f64() * 1e3,
        "deleted": t.deleted,
    })
}

/// A blocking admin client (what the CLI uses).
#[derive(Debug)]
pub struct Client {
    rd: BufReader<std::os::unix::net::UnixStream>,
    wr: std::os::unix::net::UnixStream,
    next: u64,
}

impl Client {
    /// Connects to the node whose data directory is `dir`.
    pub fn connect(dir: &Path) -> Result<Self, AdminError> {
        let not_running = |source| AdminError::NotRunning { dir: dir.to_owned(), source };
        let path = dir.join(SOCKET);
        let s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => AdminError::Denied { path: path.clone(), source: e },
            _ => not_running(e),
        })?;
        Ok(Self { rd: BufReader::new(s.try_clone().map_err(not_running)?), wr: s, next: 1 })
    }

    /// Sends one request (an object with `"op"`) and waits for its answer.
    pub fn request(&mut self, req: Value) -> Result<Value, AdminError> {
        self.request_with_progress(req, &mut |_| {})
    }

    /// [`Client::request`], handing each progress line's value to
    /// `progress` while it waits.
    pub fn request_with_progress(&mut self, mut req: Value, progress: &mut dyn FnMut(&Value)) -> Result<Value, AdminError> {
        let id = self.next;
        self.next += 1;
        req["id"] = json!(id);
        let mut line = req.to_string();
        line.push('\n');
        if let Err(e) = self.wr.write_all(line.as_bytes()) {
            // The node may have refused the connection and closed it
            // before reading: its reason is waiting to be read.
            let mut answer = String::new();
            if self.rd.read_line(&mut answer).is_ok()
                && let Ok(v) = serde_json::from_str::<Value>(&answer)
                && v.get("id").is_none_or(Value::is_null)
                && let Some(err) = v.get("err")
            {
                return Err(AdminError::Refused(err.as_str().unwrap_or("error").to_owned()));
            }
            return Err(AdminError::Closed(Some(e)));
        }
        loop {
            let mut answer = String::new();
            if self.rd.read_line(&mut answer).map_err(|e| AdminError::Closed(Some(e)))? == 0 {
                return Err(AdminError::Closed(None));
            }
            let v: Value = serde_json::from_str(&answer).map_err(AdminError::BadAnswer)?;
            if v.get("id") != Some(&json!(id)) {
                // An error for no request: the node refused the connection
                // or could not read a line of it.
                if v.get("id").is_none_or(Value::is_null)
                    && let Some(err) = v.get("err")
                {
                    return Err(AdminError::Refused(err.as_str().unwrap_or("error").to_owned()));
                }
                continue;
            }
            if let Some(err) = v.get("err") {
                return Err(AdminError::Refused(err.as_str().unwrap_or("error").to_owned()));
            }
            if let Some(p) = v.get("progress") {
                progress(p);
                continue;
            }
            return Ok(v.get("ok").cloned().unwrap_or(Value::Null));
        }
    }
}
