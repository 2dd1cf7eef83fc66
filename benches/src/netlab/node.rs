//! A `host node` process inside a lab namespace, and a client for its admin
//! socket (newline-delimited JSON; requests carry an `id`, answers may come
//! back in any order, so many calls can be in flight on one connection;
//! `{"id":…,"progress":…}` lines before a request's final answer are
//! skipped).
#![forbid(unsafe_code)]

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Writes a cluster secret file only its owner can read (`0600`): nodes
/// refuse a secret group or others can read.
pub(crate) fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// The `host` executable to run nodes with: `$HOST_BIN`, else the `host`
/// beside this executable (same target directory and profile). Under
/// `cargo run` that one is (re)built first, so it matches the sources.
pub(crate) fn host_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOST_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "HOST_BIN={} is not a file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let dir = exe.parent().context("the bench executable has no directory")?;
    let host = dir.join("host");
    // `cargo run` tells its child where cargo and the workspace are: build
    // the host with the same profile (a no-op when it is current).
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("release");
        let profile = if profile == "debug" { "dev" } else { profile };
        crate::harness::progress(format!("building the host binary (cargo build -p host --profile {profile})"));
        let status = Command::new(cargo)
            .current_dir(Path::new(&manifest).join(".."))
            .args(["build", "--quiet", "-p", "host", "--profile", profile])
            .status()
            .context("running cargo build -p host")?;
        ensure!(status.success(), "cargo build -p host --profile {profile} failed");
    }
    ensure!(
        host.is_file(),
        "no host binary at {}: build it with the bench's profile first (`cargo build --profile perf -p host`) \
         or set HOST_BIN",
        host.display()
    );
    Ok(host)
}

/// How to start one node.
#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    pub(crate) id: u16,
    pub(crate) name: String,
    /// Network namespace to run in (empty: the current one, e.g. loopback).
    pub(crate) netns: String,
    /// More `host node` options.
    pub(crate) extra: Vec<String>,
    pub(crate) listen: SocketAddr,
    pub(crate) seeds: Vec<SocketAddr>,
    /// `--lanes N`, or `--multiplex` when `None`.
    pub(crate) lanes: Option<u32>,
    /// `--channel SPEC` options.
    pub(crate) channels: Vec<String>,
    pub(crate) shards: Option<u32>,
    pub(crate) cluster: String,
    pub(crate) secret_file: PathBuf,
    pub(crate) data_dir: PathBuf,
}

impl NodeSpec {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "node".into(),
            "--id".into(),
            self.id.to_string(),
            "--name".into(),
            self.name.clone(),
            "--listen".into(),
            self.listen.to_string(),
            "--overlay".into(),
            "mesh".into(),
            "--role".into(),
            "peer".into(),
            "--cluster".into(),
            self.cluster.clone(),
            "--secret-file".into(),
            self.secret_file.display().to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        for s in &self.seeds {
            a.push("--seed".into());
            a.push(s.to_string());
        }
        if let Some(n) = self.shards {
            a.push("--shards".into());
            a.push(n.to_string());
        }
        match self.lanes {
            Some(n) => {
                a.push("--lanes".into());
                a.push(n.to_string());
            }
            None => a.push("--multiplex".into()),
        }
        for c in &self.channels {
            a.push("--channel".into());
            a.push(c.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A running node. Dropping it kills the process if [`Node::stop`] was not
/// called.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    child: Option<Child>,
    pub(crate) admin: Admin,
    log: PathBuf,
}

impl Node {
    /// Starts the node and waits (up to 20 s) until its admin socket answers
    /// `status`.
    pub(crate) fn start(host: &Path, spec: NodeSpec) -> Result<Self> {
        std::fs::create_dir_all(&spec.data_dir)?;
        let log = spec.data_dir.join("node.log");
        let out = std::fs::File::create(&log)?;
        let mut command = if spec.netns.is_empty() {
            Command::new(host)
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &spec.netns]).arg(host);
            c
        };
        let child = command
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting node {} ({} node ...)", spec.name, host.display()))?;
        let mut child = Some(child);
        let sock = spec.data_dir.join("admin.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin = loop {
            if let Some(c) = child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                let tail = log_tail(&log);
                bail!("node {} exited at start ({status}):\n{tail}", spec.name);
            }
            if sock.exists()
                && let Ok(a) = Admin::connect(&sock)
                && a.call(json!({"op": "status"})).is_ok()
            {
                break a;
            }
            if Instant::now() > deadline {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                bail!("node {} did not answer on {} within 20 s:\n{}", spec.name, sock.display(), log_tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Self { spec, child, admin, log })
    }

    /// The last lines of the node's log (stdout and stderr).
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// `status`.
    pub(crate) fn status(&self) -> Result<Value> {
        self.admin.call(json!({"op": "status"}))
    }

    /// Spawns a reactor of `module` (a bundled guest's name or a `.wasm`
    /// path); returns its tag.
    pub(crate) fn spawn(&self, module: &str, init: Value) -> Result<u64> {
        let r = self.admin.call(json!({"op": "spawn", "module": module, "init": init}))?;
        r.get("tag").and_then(Value::as_u64).with_context(|| format!("spawn answered without a tag: {r}"))
    }

    /// Waits until `status` lists node `peer_id` among the members, up (or
    /// its events say the node came up and did not go down since).
    pub(crate) fn wait_member(&self, peer_id: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            let has_peer = s.get("members").and_then(Value::as_array).is_some_and(|ms| {
                ms.iter().any(|m| {
                    m.get("id").and_then(Value::as_u64) == Some(u64::from(peer_id))
                        && m.get("up").and_then(Value::as_bool) != Some(false)
                })
            });
            // Or the node reported it up (and not down since) in its events.
            let reported_up = s.get("events").and_then(Value::as_array).is_some_and(|es| {
                es.iter().rev().find_map(|e| {
                    if e.get("up").and_then(Value::as_u64) == Some(u64::from(peer_id)) {
                        Some(true)
                    } else if e.get("down").and_then(Value::as_u64) == Some(u64::from(peer_id)) {
                        Some(false)
                    } else {
                        None
                    }
                }) == Some(true)
            });
            if has_peer || reported_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} does not see node {peer_id} after {timeout:?}; status: {s}", self.spec.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the node to stop, waits up to 5 s, then kills it.
    pub(crate) fn stop(mut self) -> Result<()> {
        let _ = self.admin.send_only(json!({"op": "stop"}));
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    c.kill()?;
                    c.wait()?;
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Node {
    /// Asks the node to stop and waits up to `limit` for it to exit by
    /// itself (a graceful stop checkpoints every reactor first); kills it
    /// past that. Whether it exited by itself.
    pub(crate) fn stop_within(mut self, limit: Duration) -> Result<bool> {
        let _ = self.admin.send_only(json!({"op": "stop"}));
        let Some(mut c) = self.child.take() else { return Ok(true) };
        let deadline = Instant::now() + limit;
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                c.kill()?;
                c.wait()?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(true)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

type Answer = std::result::Result<Value, String>;
/// Callers waiting for an answer, by request id; `None` once the
/// connection has closed.
type Waiters = Arc<Mutex<Option<HashMap<u64, mpsc::Sender<Answer>>>>>;

/// A connection to a node's admin socket, shared by many callers.
#[derive(Debug)]
pub(crate) struct Admin {
    writer: Mutex<UnixStream>,
    pending: Waiters,
    next_id: AtomicU64,
}

/// An answer still to come.
#[derive(Debug)]
pub(crate) struct Pending {
    rx: mpsc::Receiver<Answer>,
    what: String,
}

impl Pending {
    /// Waits for the answer.
    pub(crate) fn wait(self, timeout: Duration) -> Result<Value> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(anyhow!("{}: {e}", self.what)),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("{}: no answer within {timeout:?}", self.what),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{}: the admin connection closed", self.what),
        }
    }
}

impl Admin {
    pub(crate) fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
        let reader = stream.try_clone()?;
        let pending: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        let p = pending.clone();
        std::thread::Builder::new().name("admin-reader".into()).spawn(move || {
            let mut lines = BufReader::new(reader).lines();
            while let Some(Ok(line)) = lines.next() {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let Some(id) = v.get("id").and_then(Value::as_u64) else { continue };
                // A long request (e.g. `migrate`) may report progress
                // before its one final answer: not an answer.
                if v.get("progress").is_some() && v.get("ok").is_none() && v.get("err").is_none() {
                    continue;
                }
                let answer = match (v.get("ok"), v.get("err")) {
                    (_, Some(e)) => Err(e.as_str().map(String::from).unwrap_or_else(|| e.to_string())),
                    (Some(ok), None) => Ok(ok.clone()),
                    (None, None) => Ok(Value::Null),
                };
                let tx = p.lock().expect("admin table").as_mut().and_then(|m| m.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(answer);
                }
            }
            // Closed: every caller still waiting learns it.
            p.lock().expect("admin table").take();
        })?;
        Ok(Self { writer: Mutex::new(stream), pending, next_id: AtomicU64::new(1) })
    }

    /// Sends `req` (an object without `id`) and returns the answer to come.
    pub(crate) fn request(&self, mut req: Value) -> Result<Pending> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let what = format!("admin {}", req.get("op").and_then(Value::as_str).unwrap_or("?"));
        req["id"] = json!(id);
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().expect("admin table").as_mut() {
            Some(m) => m.insert(id, tx),
            None => bail!("{what}: the admin connection is closed"),
        };
        let mut line = serde_json::to_vec(&req)?;
        line.push(b'\n');
        self.writer.lock().expect("admin writer").write_all(&line).with_context(|| what.clone())?;
        Ok(Pending { rx, what })
    }

    /// Sends `req` and waits up to 60 s for its answer.
    pub(crate) fn call(&self, req: Value) -> Result<Value> {
        self.request(req)?.wait(Duration::from_secs(60))
    }

    /// Sends `req` without waiting for an answer.
    pub(crate) fn send_only(&self, req: Value) -> Result<()> {
        self.request(req).map(drop)
    }

    /// `call` of `msg` to the reactor `to`, answered within `timeout`.
    pub(crate) fn call_reactor(&self, to: u64, msg: &impl serde::Serialize, timeout: Duration) -> Result<Pending> {
        self.request(json!({
            "op": "call",
            "to": to,
            "msg": serde_json::to_value(msg)?,
            "timeout_ms": timeout.as_millis() as u64,
        }))
    }
}
