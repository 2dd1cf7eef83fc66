//! `host node` (run a node of a cluster) and the commands that talk to a
//! running node through its admin socket: `status`, `spawn`, `send`,
//! `call`, `stop`.
#![forbid(unsafe_code)]

use reactor_runtime::journal::Level;
use super::engine_args::EngineArgs;
use host::node::admin::{AdminSocket, Client};
use host::node::{Node, NodeConfig};
use reactor_net::auth::Secret;
use reactor_net::fault::Schedule;
use reactor_net::secure::Keyring;
use reactor_net::{NodeRole, OverlayKind};
use reactor_transport::ChannelSpec;
use anyhow::Context as _;
use serde_json::{Value, json};
use reactor_runtime::local_fs::{self, Access};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `host node`.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// Settings from a TOML file, its keys the long flags (`shards = 2`,
    /// `seed = ["10.0.0.1:7000"]`, `insecure-plaintext = true`); a flag
    /// given here wins over the file. At most 1 MiB, not writable by group
    /// or others.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id in the cluster, 1 to 32767 (the node bits of its
    /// reactors' addresses; unique in the cluster).
    #[arg(long)]
    id: u16,
    /// This node's name [default: node<ID>].
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on and to be reached at, `ip:port` (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A node to join through, `ip:port` (repeatable).
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
    /// The cluster's overlay: mesh, client-server or hyparview.
    #[arg(long, default_value = "mesh")]
    overlay: OverlayKind,
    /// This node's role: peer, server or client (client–server overlays).
    #[arg(long, default_value = "peer", value_parser = parse_role)]
    role: NodeRole,
    /// The cluster's name.
    #[arg(long, default_value = "reactors")]
    cluster: String,
    /// File holding the cluster secret (16 bytes to 4 KiB; every node of
    /// the cluster needs the same one). It must be a regular file owned by
    /// this user (or root) that group and others can neither read nor
    /// write (chmod 600), or the node refuses to start.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// Where the node keeps its state (tags, incarnation) and its admin
    /// socket.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Shard threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Parallel connections of the default application channel.
    #[arg(long, default_value_t = 4)]
    lanes: u16,
    /// An application channel: `name[:lanes=N][:reliable][:min-bytes=N]`
    /// (repeatable; messages of at least min-bytes go on it, the others on
    /// the first channel without a rule).
    #[arg(long = "channel", value_name = "SPEC")]
    channels: Vec<ChannelSpec>,
    /// Baseline: one connection per pair of nodes carries every channel
    /// (the distributed-Erlang design).
    #[arg(long)]
    multiplex: bool,
    /// Make the default channel reliable (sequence numbers, acks,
    /// retransmission, de-duplication).
    #[arg(long)]
    reliable: bool,
    /// Make the default channel causally ordered (implies --reliable).
    #[arg(long)]
    causal: bool,
    /// Fault injection: a schedule file (JSON: a seed and timed rules,
    /// partitions, crashes; at most 1 MiB) applied to every connection of
    /// this node.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// Pass every frame through a tracing hook (see it with `--log trace`).
    #[arg(long)]
    trace_frames: bool,
    /// Pin the cluster's static keys: a file of `<node id> <public key>`
    /// lines (each node's key is in `<its data dir>/node.pub`; at most
    /// 4 MiB, owned by this user or root, not writable by group or
    /// others). Only the nodes listed may connect, each with its own key;
    /// without it, the first key a node id is seen with is trusted for that
    /// id.
    #[arg(long, value_name = "FILE")]
    peer_keys: Option<PathBuf>,
    /// Do not encrypt: only the handshake is authenticated, and anyone on
    /// the path can read, inject or alter frames after it. For measuring
    /// and debugging; every node of the cluster must use it.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Checkpoint every reactor into the data directory every SECS seconds
    /// while running (incremental, copy-on-write); 0: only when stopping.
    /// A node started on a data directory with checkpoints restores its
    /// reactors at their addresses; after a kill -9, as of the last one.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    checkpoint_every: u64,
    /// Store checkpoints' pages LZ4-compressed: smaller files, written
    /// faster than a slow disk takes raw pages; a restart then decompresses
    /// every page instead of mapping them lazily.
    #[arg(long)]
    compress_checkpoints: bool,
    /// Journal every reactor spawned from outside that does not say
    /// otherwise (`host spawn --durable`): every input it consumes is
    /// recorded in `<data-dir>/journal/` at this level — `written` (handed
    /// to the OS), `synced` (on disk before its replies leave) or `standby`
    /// (also held by a standby on another node, which takes it over if
    /// this node goes down) — and a failure leaves a post-mortem bundle in
    /// `<data-dir>/postmortem/`.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    durable: Option<Level>,
    /// Journal segments kept per journaled reactor besides the one being
    /// written (one starts at every checkpoint).
    #[arg(long, value_name = "N", default_value_t = 2)]
    journal_keep: usize,
    /// A journaled reactor that fails is restarted from its last snapshot
    /// and its journal (up to the message that failed it), its mailbox
    /// kept: at most N restarts within --restart-window; one more gives it
    /// up (it stays failed). 0: never restarted.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_restarts: u32,
    /// The window of --max-restarts, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    restart_window: u64,
    /// How many times in all a message that fails a journaled reactor is
    /// given to it before it is a dead letter (a request answered with the
    /// failure).
    #[arg(long, value_name = "N", default_value_t = 1)]
    message_attempts: u32,
    /// How long a member whose connections dropped is suspected before it
    /// is declared down, in milliseconds (default: the overlay's, 3 s for
    /// the full mesh and client–server). Standbys take over the reactors
    /// of a node declared down: shorter is a faster failover, at the risk
    /// of taking over from a node that was only slow.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=600_000))]
    suspect_after: Option<u64>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (reactors by
    /// state, messages in and out, inbox depth, dead letters and why,
    /// snapshots, restores, checkpoints and migrations with their
    /// durations, members and lanes per peer, journals, failover,
    /// supervision). Say 127.0.0.1 unless a scraper elsewhere needs it:
    /// the figures are not secret but not public either.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Serve the live cluster view (a web page: the nodes and the
    /// overlay's graph, this node's reactors with memory and mailbox,
    /// live message rates, migrations, recent failures; snapshot, migrate
    /// or stop a reactor from it) at http://ADDR/. Every request needs the
    /// token kept in `<data-dir>/http.token` (made at the first start,
    /// 0600); the address printed at start carries it. Say 127.0.0.1: it
    /// is an operator's console.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// How long an admin client may take to send a request line or to take
    /// an answer, in milliseconds, before its connection is closed (not
    /// counting time its requests are running).
    #[arg(long, default_value_t = host::node::admin::IDLE_TIMEOUT.as_millis() as u64, value_name = "MS")]
    admin_idle_timeout: u64,
}

/// A durability level as the command line spells it.
pub(crate) fn parse_level(s: &str) -> Result<Level, String> {
    match s {
        "written" => Ok(Level::Written),
        "synced" => Ok(Level::Synced),
        "standby" => Ok(Level::Standby),
        _ => Err(format!("{s:?} is not a durability level: `written`, `synced` or `standby`")),
    }
}

fn parse_role(s: &str) -> Result<NodeRole, String> {
    match s {
        "peer" => Ok(NodeRole::Peer),
        "server" => Ok(NodeRole::Server),
        "client" => Ok(NodeRole::Client),
        _ => Err(format!("unknown role `{s}` (peer, server, client)")),
    }
}

/// Options of the commands that talk to a running node.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The data directory of the node to talk to.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

/// `host spawn`.
#[derive(Debug, clap::Args)]
pub(crate) struct SpawnArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A built guest's name (counter, kv, pingpong) or a module file.
    module: String,
    /// The init argument, as JSON.
    init: Option<String>,
    /// Journal it: every input it consumes is recorded (`written`;
    /// `synced`: on disk before its replies leave; `standby`: also held by
    /// a standby on another node, which takes it over when this node goes
    /// down), so a failure can be replayed (`host replay`) and a restart
    /// loses none of it; `none`: not journaled. Without it, the node's
    /// `--durable` applies.
    #[arg(long, value_name = "LEVEL", value_parser = parse_spawn_level, num_args = 0..=1, default_missing_value = "synced")]
    durable: Option<&'static str>,
    /// With `--durable standby`: the node that stands by (default: the
    /// node up that stands by for the fewest of this node's reactors).
    #[arg(long, value_name = "NODE")]
    standby: Option<u16>,
}

fn parse_spawn_level(s: &str) -> Result<&'static str, String> {
    if s == "none" { Ok("none") } else { parse_level(s).map(Level::name) }
}

/// `host send` and `host call`.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The reactor, `#<node>.<shard>:<serial>`, on any node of the cluster.
    to: String,
    /// The message, as JSON.
    msg: String,
    /// How long `call` waits for the answer.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
}

/// The largest cluster secret file read: 4 KiB (a secret needs 16 bytes;
/// 32 random ones are plenty).
pub(crate) const MAX_SECRET_FILE: u64 = 4 << 10;
/// The largest `--peer-keys` file read: 4 MiB (a line per node id, 32,767
/// ids of ~72 bytes each, with room for comments).
pub(crate) const MAX_PEER_KEYS_FILE: u64 = 4 << 20;
/// The largest `--faults` schedule read: 1 MiB of JSON.
pub(crate) const MAX_FAULTS_FILE: u64 = 1 << 20;

/// Reads a file named on the command line as `local_fs::read_file` checks
/// it (a regular file within `limit`, with the owner and mode `access`
/// asks; never blocks on a FIFO, never reads past the limit) as text.
fn read_text(path: &Path, what: &'static str, limit: u64, access: Access) -> anyhow::Result<String> {
    let (bytes, _) = local_fs::read_file(path, what, limit, access)?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{what} {} is not UTF-8 text: {}", path.display(), e.utf8_error()))
}

pub(crate) fn node(engine_args: &EngineArgs, args: &NodeArgs) -> anyhow::Result<ExitCode> {
    // A secret: owned by this user (or root) and closed to group and
    // others, as ssh requires of a private key.
    let (secret, _) = local_fs::read_file(&args.secret_file, "the cluster secret", MAX_SECRET_FILE, Access::Private)?;
    let secret = Secret::new(secret).map_err(|e| anyhow::anyhow!("{}: {e}", args.secret_file.display()))?;
    let mut default = ChannelSpec::new("default", args.lanes);
    default.reliable = args.reliable || args.causal;
    default.causal = args.causal;
    let mut channels = vec![default];
    channels.extend(args.channels.iter().cloned());
    let config = NodeConfig {
        id: args.id,
        name: args.name.clone().unwrap_or_else(|| format!("node{}", args.id)),
        listen: args.listen.clone(),
        seeds: args.seeds.clone(),
        overlay: args.overlay,
        role: args.role,
        cluster: args.cluster.clone(),
        secret,
        data_dir: args.data_dir.clone(),
        runtime: engine_args.runtime_config(args.shards)?,
        channels,
        multiplex: args.multiplex,
        trace: args.trace_frames,
        insecure_plaintext: args.insecure_plaintext,
        checkpoint_every: (args.checkpoint_every > 0).then(|| std::time::Duration::from_secs(args.checkpoint_every)),
        compress_checkpoints: args.compress_checkpoints,
        suspicion: args.suspect_after.map(std::time::Duration::from_millis),
        durable: args.durable,
        journal_keep: args.journal_keep.max(1),
        supervision: (args.max_restarts > 0).then(|| host::node::supervise::Policy {
            max_restarts: args.max_restarts,
            within: std::time::Duration::from_secs(args.restart_window),
            attempts: args.message_attempts.max(1),
            ..host::node::supervise::Policy::default()
        }),
        peer_keys: match &args.peer_keys {
            Some(f) => {
                // A trust anchor: nobody else may be able to write it.
                let text = read_text(f, "the peer keys file", MAX_PEER_KEYS_FILE, Access::NotWritableByOthers)?;
                Some(Keyring::parse_pins(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?)
            }
            None => None,
        },
        faults: match &args.faults {
            Some(f) => {
                let text = read_text(f, "the fault schedule", MAX_FAULTS_FILE, Access::Any)?;
                Some(Schedule::from_json(&text).with_context(|| format!("{} is not a fault schedule", f.display()))?)
            }
            None => None,
        },
    };
    let node = Arc::new(Node::start(engine_args.engine()?, config)?);
    // Bound before the line below announces the node: whoever reads it
    // can connect at once.
    let admin = AdminSocket::bind(&node)?.idle_timeout(std::time::Duration::from_millis(args.admin_idle_timeout));
    let metrics = match args.metrics {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for --metrics on {addr}"))?;
            Some(host::node::http::serve_metrics(&node, l).context("cannot serve --metrics")?)
        }
        None => None,
    };
    let view = match args.http {
        Some(addr) => {
            let token = host::node::http::token(&args.data_dir).map_err(|e| anyhow::anyhow!("the web view: {e}"))?;
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for --http on {addr}"))?;
            let bound = host::node::http::serve_view(&node, l, token.clone()).context("cannot serve --http")?;
            Some((bound, token))
        }
        None => None,
    };
    let info = node.info();
    if args.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: frames between nodes are neither encrypted nor authenticated");
    }
    say(format_args!(
        "node {} ({}) listening on {} (incarnation {}, overlay {}); admin socket {}; public key {}",
        info.id,
        info.name,
        info.addr,
        info.incarnation,
        args.overlay,
        args.data_dir.join("admin.sock").display(),
        node.public_key()
    ));
    if let Some((addr, token)) = &view {
        say(format_args!("node {} serves its cluster view at http://{addr}/?token={token}", info.id));
    }
    if let Some(addr) = metrics {
        say(format_args!("node {} serves metrics at http://{addr}/metrics", info.id));
    }
    if !node.restored().is_empty() {
        say(format_args!("node {} restored {} reactor(s) from its checkpoints", info.id, node.restored().len()));
    }
    admin.serve(&node, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })?;
    // A graceful stop keeps the reactors: they come back at the next start.
    match node.shutdown() {
        Ok(t) => say(format_args!("node {} checkpointed {} reactor(s) into {}", node.info().id, t.reactors, t.path.display())),
        Err(e) => {
            eprintln!("error: node {} could not checkpoint its reactors before stopping: {e}", node.info().id);
            return Ok(ExitCode::FAILURE);
        }
    }
    say(format_args!("node {} stopped", node.info().id));
    Ok(ExitCode::SUCCESS)
}

/// A line on standard output for whoever watches the node; a closed or
/// full output never stops it (`println!` would panic on a broken pipe).
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
}

/// `host checkpoint`.
pub(crate) fn checkpoint(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    print(&Client::connect(&args.data_dir)?.request(json!({"op": "checkpoint"}))?);
    Ok(ExitCode::SUCCESS)
}

/// `host migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The reactor's address (as printed by spawn, e.g. `#1.0:5`).
    address: String,
    /// The id of the node to move it to.
    #[arg(long, value_name = "NODE")]
    to: u16,
    /// Stop the reactor first and copy it whole (no pre-copy rounds): the
    /// baseline live migration is measured against.
    #[arg(long)]
    stop_and_copy: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `host migrate`: moves a live reactor to another node, showing progress.
pub(crate) fn migrate(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let address: reactor_runtime::Address =
        args.address.parse().with_context(|| format!("{:?} is not an address (e.g. #1.0:5)", args.address))?;
    let mut client = Client::connect(&args.admin.data_dir)?;
    let req = json!({"op": "migrate", "address": address.to_string(), "to": args.to, "precopy": !args.stop_and_copy});
    let quiet = args.json;
    let report = client.request_with_progress(req, &mut |p| {
        if quiet {
            return;
        }
        let mib = |k: &str| p.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as f64 / (1 << 20) as f64;
        eprintln!(
            "  {:<8} layer {:>2}: {:>8.1} / {:>8.1} MiB   ({:.1} MiB sent)",
            p.get("phase").and_then(serde_json::Value::as_str).unwrap_or("?"),
            p.get("layer").and_then(serde_json::Value::as_u64).unwrap_or(0),
            mib("sent"),
            mib("total"),
            mib("bytes"),
        );
    })?;
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let f = |k: &str| report.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let u = |k: &str| report.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    println!(
        "moved {} from node {} to node {}: {} pre-copy rounds, {:.1} MiB sent ({:.1} KiB while stopped), total {:.1} ms, \
         downtime {:.3} ms (restore {:.3} ms), {} messages held and forwarded, {} nodes told",
        report.get("address").and_then(serde_json::Value::as_str).unwrap_or("?"),
        u("from"),
        u("to"),
        u("rounds"),
        u("bytes") as f64 / (1 << 20) as f64,
        u("last_bytes") as f64 / 1024.0,
        f("total_ms"),
        f("downtime_ms"),
        f("restore_ms"),
        u("held"),
        u("told"),
    );
    Ok(ExitCode::SUCCESS)
}

/// `host rebalance`: the node moves reactors to less loaded members while
/// it runs more than its share.
pub(crate) fn rebalance(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&args.data_dir)?;
    let r = client.request_with_progress(json!({"op": "rebalance"}), &mut |_| {})?;
    let counts = |k: &str| {
        r[k].as_array()
            .map(|a| a.iter().map(|p| format!("node {}: {}", p[0], p[1])).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    println!("reactors before: {}", counts("before"));
    for m in r["moves"].as_array().into_iter().flatten() {
        println!(
            "  moved {} to node {} ({:.1} MiB, down {:.2} ms)",
            m["address"].as_str().unwrap_or("?"),
            m["to"],
            m["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            m["downtime_ms"].as_f64().unwrap_or(0.0)
        );
    }
    for f in r["failed"].as_array().into_iter().flatten() {
        println!("  did not move {}", f.as_str().unwrap_or("?"));
    }
    println!("reactors after:  {}", counts("after"));
    Ok(ExitCode::SUCCESS)
}

/// An absolute form of a path the user gave (the node does not share our
/// working directory).
fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let p = std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    p.to_str().map(str::to_owned).with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `host snapshot --data-dir`: live reactors of a running node into a file.
pub(crate) fn snapshot_live(
    dir: &std::path::Path,
    reactors: &[String],
    all: bool,
    out: &std::path::Path,
    incremental: bool,
    compress: bool,
) -> anyhow::Result<ExitCode> {
    let reactors = if all {
        json!("all")
    } else if reactors.is_empty() {
        anyhow::bail!("say which reactors: one or more addresses, or --all");
    } else {
        json!(reactors)
    };
    let v = Client::connect(dir)?.request(json!({
        "op": "snapshot", "reactors": reactors, "path": absolute(out)?, "incremental": incremental,
        "compress": compress,
    }))?;
    print(&v);
    Ok(ExitCode::SUCCESS)
}

/// `host restore --data-dir`: snapshot files into a running node.
pub(crate) fn restore_live(dir: &std::path::Path, files: &[PathBuf], lazy: bool) -> anyhow::Result<ExitCode> {
    let files = files.iter().map(|f| absolute(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let v = Client::connect(dir)?.request(json!({"op": "restore", "files": files, "lazy": lazy}))?;
    print(&v);
    Ok(ExitCode::SUCCESS)
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

pub(crate) fn status(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    print(&Client::connect(&args.data_dir)?.request(json!({"op": "status"}))?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn stop(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    Client::connect(&args.data_dir)?.request(json!({"op": "stop"}))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn spawn(args: &SpawnArgs) -> anyhow::Result<ExitCode> {
    let init: Value = match &args.init {
        Some(s) => serde_json::from_str(s).with_context(|| format!("the init argument is not JSON: {s}"))?,
        None => Value::Null,
    };
    let mut req = json!({"op": "spawn", "module": args.module, "init": init});
    if let Some(level) = args.durable {
        req["durable"] = json!(level);
    }
    if let Some(n) = args.standby {
        req["standby"] = json!(n);
    }
    let v = Client::connect(&args.admin.data_dir)?.request(req)?;
    println!("{}", v.get("address").and_then(Value::as_str).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn send(args: &SendArgs, call: bool) -> anyhow::Result<ExitCode> {
    let msg: Value = serde_json::from_str(&args.msg).with_context(|| format!("the message is not JSON: {}", args.msg))?;
    let op = if call { "call" } else { "send" };
    let v = Client::connect(&args.admin.data_dir)?.request(
        json!({"op": op, "to": args.to, "msg": msg, "timeout_ms": args.timeout_ms}),
    )?;
    if call {
        println!("{v}");
    }
    Ok(ExitCode::SUCCESS)
}
