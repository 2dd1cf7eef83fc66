//! The node's admin socket (see the protocol in the parent module's docs):
//! the server, and a small blocking client the CLI uses.
#![forbid(unsafe_code)]

use super::{Node, NodeError};
use reactor_runtime::abi;
use reactor_types::{Address, CallError, ParseAddressError, SendError, SpawnError};
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

/// Longest request line accepted (a message is at most the payload limit,
/// written as JSON).
const MAX_LINE: usize = 64 << 20;

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
}

impl AdminSocket {
    /// Binds the admin socket of `node` at `<data-dir>/admin.sock`,
    /// replacing a stale one a previous run of the node left (the data
    /// directory is the node's). Once this returns, clients can connect.
    pub fn bind(node: &Node) -> Result<AdminSocket, AdminError> {
        let path = node.config.data_dir.join("admin.sock");
        let _ = std::fs::remove_file(&path);
        let listen_err = |source| AdminError::Listen { path: path.clone(), source };
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(AdminSocket { listener, path })
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

/// An error and its causes, joined by `: ` (what the node answers with).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn bad(what: &str) -> AdminError {
    AdminError::BadRequest(what.to_owned())
}

/// Serves admin requests on `socket` until `shutdown` or a `stop` request.
async fn serve(
    node: Arc<Node>,
    socket: AdminSocket,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AdminError> {
    let AdminSocket { listener, path } = socket;
    let listener = UnixListener::from_std(listener).map_err(|source| AdminError::Listen { path: path.clone(), source })?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = stop_rx.changed() => break,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => c,
                    Err(e) => { tracing::warn!("admin accept: {e}"); continue; }
                };
                tokio::spawn(connection(node.clone(), stream, stop_tx.clone()));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn connection(node: Arc<Node>, stream: tokio::net::UnixStream, stop: watch::Sender<bool>) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut rd).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => {
                let _ = tx.send(json!({"id": null, "err": format!("request over {MAX_LINE} bytes")}).to_string());
                break;
            }
            Ok(_) => {}
        }
        let req: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(json!({"id": null, "err": format!("not a JSON request: {e}")}).to_string());
                continue;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        if req.get("op").and_then(Value::as_str) == Some("stop") {
            let _ = tx.send(json!({"id": id, "ok": null}).to_string());
            let _ = stop.send(true);
            break;
        }
        let (node, tx) = (node.clone(), tx.clone());
        // Calls block on their answer: off the network threads.
        tokio::task::spawn_blocking(move || {
            let answer = match handle(&node, &req) {
                Ok(v) => json!({"id": id, "ok": v}),
                Err(e) => json!({"id": id, "err": describe(&e)}),
            };
            let _ = tx.send(answer.to_string());
        });
    }
    drop(tx);
    let _ = writer.await;
}

use tokio::io::AsyncReadExt as _;

/// Reads an address: `"#n.s:serial"` or a number.
pub fn parse_address(v: &Value) -> Result<Address, AdminError> {
    match v {
        Value::Number(n) => n.as_u64().map(Address).ok_or_else(|| bad("an address number must be a u64")),
        Value::String(s) => Ok(s.parse::<Address>()?),
        _ => Err(bad("an address is a string like \"#1.0:5\" or a number")),
    }
}

fn handle(node: &Node, req: &Value) -> Result<Value, AdminError> {
    let op = req.get("op").and_then(Value::as_str).ok_or_else(|| bad("the request has no \"op\""))?;
    match op {
        "status" => Ok(node.status()),
        "spawn" => {
            let name = req.get("module").and_then(Value::as_str).ok_or_else(|| bad("spawn needs \"module\""))?;
            let module = node.module(name)?;
            let init = match req.get("init") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::to_vec(v).map_err(AdminError::Encode)?,
            };
            let shard = node.runtime.shards();
            let pick = (node.runtime.stats().spawned as usize) % shard.max(1);
            let flags = if init.is_empty() { 0 } else { abi::FLAG_TEXT };
            let a = node.runtime.spawn_on(pick, &module, init, flags)?;
            Ok(json!({"address": a.to_string(), "tag": a.0}))
        }
        "send" | "call" => {
            let to = parse_address(req.get("to").ok_or_else(|| bad("needs \"to\""))?)?;
            let msg = serde_json::to_vec(req.get("msg").ok_or_else(|| bad("needs \"msg\""))?)
                .map_err(AdminError::Encode)?;
            if op == "send" {
                node.runtime.send(to, msg, true)?;
                return Ok(Value::Null);
            }
            let timeout = req
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .map_or(node.default_call_timeout(), Duration::from_millis);
            let pending = node.runtime.request(to, msg, true)?;
            let reply = pending.wait(Some(timeout))?;
            if reply.text {
                serde_json::from_slice(&reply.payload).map_err(AdminError::ReplyNotJson)
            } else {
                Ok(json!({"binary": hex::encode(&reply.payload)}))
            }
        }
        "mailbox" => {
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
        _ => Err(AdminError::BadRequest(format!("unknown op `{op}` (status, spawn, send, call, mailbox, stop)"))),
    }
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
        let s = std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).map_err(not_running)?;
        Ok(Self { rd: BufReader::new(s.try_clone().map_err(not_running)?), wr: s, next: 1 })
    }

    /// Sends one request (an object with `"op"`) and waits for its answer.
    pub fn request(&mut self, mut req: Value) -> Result<Value, AdminError> {
        let id = self.next;
        self.next += 1;
        req["id"] = json!(id);
        let mut line = req.to_string();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).map_err(|e| AdminError::Closed(Some(e)))?;
        loop {
            let mut answer = String::new();
            if self.rd.read_line(&mut answer).map_err(|e| AdminError::Closed(Some(e)))? == 0 {
                return Err(AdminError::Closed(None));
            }
            let v: Value = serde_json::from_str(&answer).map_err(AdminError::BadAnswer)?;
            if v.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(err) = v.get("err") {
                return Err(AdminError::Refused(err.as_str().unwrap_or("error").to_owned()));
            }
            return Ok(v.get("ok").cloned().unwrap_or(Value::Null));
        }
    }
}
