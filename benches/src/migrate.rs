//! Live migration of a running reactor between two `host node` processes,
//! under load (issue 12): pre-copy rounds of dirty pages over the
//! transport, stop-and-copy at a message boundary, forwarding after.
//!
//! Two nodes (ids 1 and 2, one shard each, `--insecure-plaintext`) run on
//! loopback and, when the bench runs as root, in the network lab
//! (`netlab`: two namespaces, TUN devices and a user-space delay line)
//! calibrated to 1 ms and 20 ms round trips. On node 1 a `migrant` of
//! 10 MiB, 100 MiB and 1 GiB (`--quick`: 10 and 100 MiB) whose pages are
//! all non-zero, dirtying 0 %, 1 % and 10 % of its pages per second; on
//! node 2, 8 `loadgen`s keep `Seq` requests outstanding to it (closed
//! loop), their windows sized at the start for about 50,000 requests/s in
//! all (the rate got is reported). The migrant is then moved node 1 → 2 →
//! 1 … through the admin op `migrate`, and per configuration this reports:
//!
//! - **downtime**, two ways, median and p99 over the migrations: the
//!   migrant's own largest wall-clock gap between two messages it handled
//!   (reset right before each migration: the last message handled at the
//!   source to the first at the target, as the reactor sees it), and the
//!   node's `downtime_ms` (the source stopping it to the target resuming
//!   it);
//! - **total time** (the node's `total_ms`), **bytes** sent and pre-copy
//!   **rounds** (medians);
//! - **loadgen p99 during migration** against the p99 of a window without
//!   one, as long as the previous migration took, at the same place just
//!   before it (the largest of the 8 loadgens' p99s, each over its own
//!   requests);
//! - **lost / duplicated / out of order**, from the migrant's sequence
//!   counters and the loadgens' stats, the load paused and drained before
//!   and after each configuration: lost = requests sent but never answered
//!   or never seen by the migrant, duplicated = numbers seen again, out of
//!   order = numbers skipped plus replies out of order.
//!
//! Baselines, same run: **stop-and-copy** (the same op with
//! `"precopy": false`) and the **raw transfer** of the migrant's state
//! (`state_mib` MiB) over one plaintext TCP connection between two
//! processes on the same link (this bench and a copy of itself started as a
//! sender; the nodes are started with `--insecure-plaintext`, so neither
//! side encrypts).
//!
//! Targets (100 MiB, 1 %/s writes, loopback, 1,000 migrations; 20 with
//! `--quick`): downtime median ≤ 1 ms and p99 ≤ 5 ms, total time ≤ 1.3 ×
//! raw transfer, loadgen p99 during migration ≤ 2 × without, and — in every
//! configuration — 0 lost, duplicated or out of order. Other
//! configurations migrate 20 times (fewer at 1 GiB; 4 with `--quick`).
//! The run keeps to a budget (`MIGRATE_BUDGET_S`, default 1,800 s):
//! configurations estimated to pass it are skipped, with a note.
//!
//! For `report`'s plots, the downtimes at 1 %/s writes (both measures,
//! median and p99, pre-copy and stop-and-copy) are points against the
//! migrant's size, one chart per link and measure (with `--quick`'s 4
//! stop-and-copy migrations a p99 is their largest).
//!
//! Needs the `host` binary (built by `cargo run` with the bench's profile)
//! and, for the lab links, root.
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, median, num, progress};
use crate::netlab::node::{Node, NodeSpec, host_binary, write_secret};
use crate::netlab::{ADDR_A, ADDR_B, Lab, LabConfig, NS_A, NS_B, pct, sys};
use anyhow::{Context as _, Result, bail, ensure};
use protocols::{LoadgenInit, LoadgenReply, LoadgenReq, MigrantInit, MigrantReply, MigrantReq};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Loadgens on node 2.
const LOADGENS: u64 = 8;
/// Requests per second the loadgens' windows are sized for, in all.
const TARGET_RATE: f64 = 50_000.0;
/// Largest window of one loadgen (8 × 256 in flight stays under a
/// reactor's inbox bound of 4,096).
const MAX_WINDOW: u32 = 256;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Write rates, in % of the migrant's pages per second.
const WRITE_PCTS: [u32; 3] = [0, 1, 10];
/// How long a reactor call through the admin socket may take.
const CALL: Duration = Duration::from_secs(30);
/// How long one migration may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(900);
/// Set (to `"<addr> <bytes>"`) in the environment of the copy of this bench
/// started as the raw transfer's sender.
pub(crate) const RAW_SENDER_ENV: &str = "MIGRATE_BENCH_RAW_SEND";

/// The nodes have no `migrate` admin op (issue 12 not in this build).
#[derive(Debug)]
struct NoMigrateOp(String);

impl std::fmt::Display for NoMigrateOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoMigrateOp {}

/// Where the two nodes run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Loopback,
    /// The lab, calibrated to this round trip.
    Lab(Duration),
}

impl Link {
    fn label(self) -> String {
        match self {
            Link::Loopback => "loopback".into(),
            Link::Lab(rtt) => format!("{} ms link", rtt.as_millis()),
        }
    }

    fn rtt_guess(self) -> Duration {
        match self {
            Link::Loopback => Duration::from_micros(150),
            Link::Lab(rtt) => rtt + Duration::from_micros(150),
        }
    }
}

/// The configuration the targets are for.
fn is_target(link: Link, state_mib: u32, write_pct: u32) -> bool {
    link == Link::Loopback && state_mib == 100 && write_pct == 1
}

/// Migrations with pre-copy and stop-and-copy migrations of a configuration.
fn reps(quick: bool, link: Link, state_mib: u32, write_pct: u32) -> (usize, usize) {
    if is_target(link, state_mib, write_pct) {
        return if quick { (20, 4) } else { (1000, 20) };
    }
    match (quick, state_mib >= 1024, link) {
        (true, _, _) => (4, 4),
        (false, true, Link::Loopback) => (10, 6),
        (false, true, Link::Lab(_)) => (6, 4),
        (false, false, _) => (20, 20),
    }
}

/// About how long a configuration takes: each migration 1.3 × the raw
/// transfer (the target) plus a window as long, 20 ms of calls around
/// each, and 15 s to start the nodes and size the load.
fn estimate(quick: bool, link: Link, state_mib: u32, write_pct: u32, raw: Duration) -> Duration {
    let (pre, stop) = reps(quick, link, state_mib, write_pct);
    let each = raw.mul_f64(2.0 * 1.3) + Duration::from_millis(20);
    each * (pre + stop) as u32 + Duration::from_secs(15)
}

/// What the node answers to `migrate`.
#[derive(Clone, Debug, Deserialize)]
struct MigrateAnswer {
    from: u16,
    to: u16,
    rounds: u32,
    bytes: u64,
    total_ms: f64,
    downtime_ms: f64,
    #[serde(default)]
    precopy_ms: f64,
    #[serde(default)]
    held: u64,
}

/// One loadgen's `Stats`.
#[derive(Clone, Copy, Debug, Default)]
struct LoadStats {
    sent: u64,
    replied: u64,
    errors: u64,
    bad_replies: u64,
    in_flight: u32,
    p99_ns: u64,
}

impl LoadStats {
    fn from_reply(r: LoadgenReply) -> Result<Self> {
        match r {
            LoadgenReply::Stats { sent, replied, errors, bad_replies, in_flight, p99_ns, .. } => {
                Ok(Self { sent, replied, errors, bad_replies, in_flight, p99_ns })
            }
            other => bail!("a loadgen answered {other:?} to Stats"),
        }
    }
}

/// The counters the loss checks compare, summed over the loadgens and the
/// migrant's senders.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    sent: u64,
    replied: u64,
    errors: u64,
    bad_replies: u64,
    in_flight: u64,
    ok: u64,
    gaps: u64,
    dups: u64,
}

impl Counters {
    /// `(lost, duplicated, out of order)` between `self` (before) and
    /// `after`.
    fn faults(&self, after: &Counters) -> (u64, u64, u64) {
        let sent = after.sent - self.sent;
        let unanswered = sent.saturating_sub(after.replied - self.replied);
        let unseen = sent.saturating_sub((after.ok - self.ok) + (after.gaps - self.gaps));
        let lost = unanswered.max(unseen);
        let dups = after.dups - self.dups;
        let disorder = (after.gaps - self.gaps) + (after.bad_replies - self.bad_replies);
        (lost, dups, disorder)
    }
}

/// Two nodes, the migrant and the loadgens.
struct Cluster {
    /// Node 1 and node 2.
    nodes: [Node; 2],
    migrant: u64,
    /// The migrant's address as the node prints it.
    address: String,
    /// Index in `nodes` of the node the migrant lives on now.
    at: usize,
    loadgens: Vec<u64>,
    dir: Option<tempfile::TempDir>,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits for each answer and decodes it as `R`.
fn answers<R: DeserializeOwned>(pending: Vec<crate::netlab::node::Pending>) -> Result<Vec<R>> {
    pending
        .into_iter()
        .map(|p| {
            let v = p.wait(CALL + Duration::from_secs(5))?;
            serde_json::from_value(v.clone()).with_context(|| format!("unexpected answer {v}"))
        })
        .collect()
}

impl Cluster {
    fn start(host: &Path, link: Link, port: u16, state_mib: u32) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("migrate-bench-").tempdir()?;
        let secret = dir.path().join("secret");
        write_secret(&secret, &format!("migrate-bench-secret-{}", std::process::id()))?;
        let memory_cap = (u64::from(state_mib) + 256).max(1024).to_string();
        let spec = |id: u16, netns: &str, listen: SocketAddr, seeds: Vec<SocketAddr>| NodeSpec {
            id,
            name: format!("node{id}"),
            netns: netns.into(),
            // Plaintext like the raw transfer it is compared with; no
            // periodic checkpoints (they would copy the migrant meanwhile);
            // room and time for a 1 GiB migrant's fill at spawn.
            extra: vec![
                "--insecure-plaintext".into(),
                "--checkpoint-every".into(),
                "0".into(),
                "--memory-cap".into(),
                memory_cap.clone(),
                "--cpu-budget".into(),
                "60000".into(),
            ],
            listen,
            seeds,
            lanes: Some(4),
            channels: vec![],
            shards: Some(1),
            cluster: "migrate-bench".into(),
            secret_file: secret.clone(),
            data_dir: dir.path().join(format!("node{id}")),
        };
        let (s1, s2) = match link {
            Link::Loopback => {
                let (a1, a2) = (free_port()?, free_port()?);
                (spec(1, "", a1, vec![]), spec(2, "", a2, vec![a1]))
            }
            Link::Lab(_) => {
                let a1 = SocketAddr::from((ADDR_A, port));
                let a2 = SocketAddr::from((ADDR_B, port + 1));
                (spec(1, NS_A, a1, vec![]), spec(2, NS_B, a2, vec![a1]))
            }
        };
        let n1 = Node::start(host, s1)?;
        let n2 = Node::start(host, s2)?;
        n1.wait_member(2, Duration::from_secs(20))?;
        n2.wait_member(1, Duration::from_secs(20))?;
        ensure!(n1.status()?["encrypted"] == Value::Bool(false), "node 1 is not in plaintext mode");
        let nodes = [n1, n2];

        progress(format!("migrate: {}: spawning a {state_mib} MiB migrant on node 1", link.label()));
        let init = MigrantInit { state_mib, write_pages_per_sec: 0, seed: 0x5eed };
        let r = nodes[0]
            .admin
            .request(json!({"op": "spawn", "module": guest_path("migrant")?, "init": init}))?
            .wait(Duration::from_secs(120))?;
        let migrant = r["tag"].as_u64().with_context(|| format!("spawn answered {r}"))?;
        let address = r["address"].as_str().with_context(|| format!("spawn answered {r}"))?.to_owned();
        ensure!(migrant >> 48 == 1, "the migrant {address} is not node 1's");
        let loadgen = guest_path("loadgen")?;
        let mut loadgens = Vec::new();
        for sender in 1..=LOADGENS {
            // Window 0: nothing is sent until the windows are sized.
            let init = LoadgenInit { target: migrant, sender, window: 0, stop_after: None };
            let l = nodes[1].spawn(&loadgen, serde_json::to_value(init)?)?;
            ensure!(l >> 48 == 2, "loadgen {l:#x} is not node 2's");
            loadgens.push(l);
        }
        Ok(Self { nodes, migrant, address, at: 0, loadgens, dir: Some(dir) })
    }

    /// Node 1's and node 2's log tails, for an error.
    fn logs(&self) -> String {
        format!("node 1 log:\n{}\nnode 2 log:\n{}", self.nodes[0].log_tail(), self.nodes[1].log_tail())
    }

    /// Keeps the nodes' data directories (with their logs); returns where.
    fn keep_logs(&mut self) -> String {
        self.dir.take().map_or_else(|| "(already kept)".into(), |d| d.keep().display().to_string())
    }

    fn migrant_call<R: DeserializeOwned>(&self, msg: &MigrantReq) -> Result<R> {
        let p = self.nodes[self.at].admin.call_reactor(self.migrant, msg, CALL)?;
        Ok(answers(vec![p])?.remove(0))
    }

    /// `msg` to every loadgen at once.
    fn loadgens_call<R: DeserializeOwned>(&self, msg: &LoadgenReq) -> Result<Vec<R>> {
        let admin = &self.nodes[1].admin;
        let pending = self.loadgens.iter().map(|&l| admin.call_reactor(l, msg, CALL)).collect::<Result<Vec<_>>>()?;
        answers(pending)
    }

    fn loadgens_do(&self, msg: &LoadgenReq) -> Result<()> {
        for r in self.loadgens_call::<LoadgenReply>(msg)? {
            ensure!(r == LoadgenReply::Done, "a loadgen answered {r:?} to {msg:?}");
        }
        Ok(())
    }

    fn load_stats(&self) -> Result<Vec<LoadStats>> {
        self.loadgens_call::<LoadgenReply>(&LoadgenReq::Stats)?.into_iter().map(LoadStats::from_reply).collect()
    }

    fn replied(&self) -> Result<u64> {
        Ok(self.load_stats()?.iter().map(|s| s.replied).sum())
    }

    fn reset_gaps(&self) -> Result<()> {
        let done: MigrantReply = self.migrant_call(&MigrantReq::ResetGaps)?;
        ensure!(done == MigrantReply::Done, "the migrant answered {done:?} to ResetGaps");
        Ok(())
    }

    fn migrant_max_gap_ns(&self) -> Result<u64> {
        match self.migrant_call(&MigrantReq::Stats)? {
            MigrantReply::Stats { max_gap_ns, .. } => Ok(max_gap_ns),
            other => bail!("the migrant answered {other:?} to Stats"),
        }
    }

    /// Gives the loadgens `total` requests outstanding in all (windows
    /// differing by at most one).
    fn set_in_flight(&self, total: u32) -> Result<()> {
        let n = self.loadgens.len() as u32;
        let admin = &self.nodes[1].admin;
        let pending = self
            .loadgens
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let window = total / n + u32::from((i as u32) < total % n);
                admin.call_reactor(l, &LoadgenReq::SetWindow { window }, CALL)
            })
            .collect::<Result<Vec<_>>>()?;
        for r in answers::<LoadgenReply>(pending)? {
            ensure!(r == LoadgenReply::Done, "a loadgen answered {r:?} to SetWindow");
        }
        Ok(())
    }

    /// Sizes the loadgens' windows for about [`TARGET_RATE`] requests/s in
    /// all (the migrant on node 1): tries totals of requests in flight,
    /// each corrected by the rate the last gave, until one is within 5 %
    /// or more stop helping; keeps the closest. Returns the total in flight
    /// and the rate measured with it.
    fn size_windows(&self, link: Link, measure: Duration) -> Result<(u32, f64)> {
        let (least, most) = (LOADGENS as u32, LOADGENS as u32 * MAX_WINDOW);
        let mut total = ((TARGET_RATE * link.rtt_guess().as_secs_f64()).ceil() as u32).clamp(least, most);
        let mut tried: Vec<(u32, f64)> = Vec::new();
        for _ in 0..8 {
            self.set_in_flight(total)?;
            std::thread::sleep(Duration::from_millis(300));
            let (r0, t0) = (self.replied()?, Instant::now());
            std::thread::sleep(measure);
            let rate = (self.replied()? - r0) as f64 / t0.elapsed().as_secs_f64();
            progress(format!("migrate: {}: {total} requests in flight: {rate:.0} requests/s", link.label()));
            tried.push((total, rate));
            if (rate / TARGET_RATE - 1.0).abs() <= 0.05 {
                break;
            }
            let scaled = (f64::from(total) * TARGET_RATE / rate.max(1.0)).round() as u32;
            let next = if rate < TARGET_RATE { scaled.max(total + 1) } else { scaled.min(total - 1) };
            let next = next.clamp(least, most);
            // More in flight that did not raise the rate: saturated.
            let saturated = rate < TARGET_RATE && tried.iter().any(|&(t, r)| t < total && r >= rate * 0.95);
            if saturated || tried.iter().any(|&(t, _)| t == next) {
                break;
            }
            total = next;
        }
        // The closest to the target rate, preferring fewer in flight.
        let &(total, rate) = tried
            .iter()
            .min_by(|a, b| {
                let off = |r: f64| (r / TARGET_RATE - 1.0).abs();
                off(a.1).total_cmp(&off(b.1)).then(a.0.cmp(&b.0))
            })
            .expect("at least one total tried");
        self.set_in_flight(total)?;
        Ok((total, rate))
    }

    /// Pauses the load, waits until nothing is outstanding (at most 30 s),
    /// reads every counter, and resumes.
    fn quiesce(&self) -> Result<Counters> {
        self.loadgens_do(&LoadgenReq::Pause)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let loads = loop {
            let s = self.load_stats()?;
            if s.iter().all(|s| s.in_flight == 0) || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let senders = match self.migrant_call(&MigrantReq::Stats)? {
            MigrantReply::Stats { senders, .. } => senders,
            other => bail!("the migrant answered {other:?} to Stats"),
        };
        self.loadgens_do(&LoadgenReq::Resume)?;
        let mut c = Counters::default();
        for s in &loads {
            c.sent += s.sent;
            c.replied += s.replied;
            c.errors += s.errors;
            c.bad_replies += s.bad_replies;
            c.in_flight += u64::from(s.in_flight);
        }
        for s in &senders {
            c.ok += s.ok;
            c.gaps += s.gaps;
            c.dups += s.dups;
        }
        Ok(c)
    }

    /// Moves the migrant to the other node.
    fn migrate(&mut self, precopy: bool) -> Result<MigrateAnswer> {
        let (from, to) = (self.at, 1 - self.at);
        let (from_id, to_id) = (self.nodes[from].spec.id, self.nodes[to].spec.id);
        let req = json!({"op": "migrate", "address": self.address, "to": to_id, "precopy": precopy});
        let answer = self.nodes[from].admin.request(req)?.wait(MIGRATE_TIMEOUT);
        let v = match answer {
            Ok(v) => v,
            Err(e) if format!("{e:#}").contains("unknown op") => {
                return Err(NoMigrateOp(format!(
                    "node {from_id} does not know the admin op `migrate`: live migration (issue 12) is not in this \
                     build of `host`. Everything before the first migration ran (raw transfer measured, nodes up, \
                     guests spawned, load running: see the table above). The node said: {e:#}"
                ))
                .into());
            }
            Err(e) => return Err(e.context(format!("migrating {} from node {from_id} to node {to_id}", self.address))),
        };
        let a: MigrateAnswer =
            serde_json::from_value(v.clone()).with_context(|| format!("unexpected answer to migrate: {v}"))?;
        ensure!(a.from == from_id && a.to == to_id, "migrate answered from {} to {}: {v}", a.from, a.to);
        self.at = to;
        Ok(a)
    }

    fn stop(self) {
        // Killed, not stopped: a graceful stop would checkpoint the migrant.
        drop(self.nodes);
    }
}

/// A built guest's path (spawned by path: the nodes run exactly these).
fn guest_path(name: &str) -> Result<String> {
    let p = example_guests::path(name);
    ensure!(p.is_file(), "the `{name}` guest is missing at {}", p.display());
    Ok(p.display().to_string())
}

/// What one configuration's migrations of one kind measured.
#[derive(Debug, Default)]
struct Runs {
    /// The migrant's largest gap per migration, and per window without
    /// one, ms.
    gap_ms: Vec<f64>,
    gap_without_ms: Vec<f64>,
    node_downtime_ms: Vec<f64>,
    total_ms: Vec<f64>,
    precopy_ms: Vec<f64>,
    bytes: Vec<f64>,
    rounds: Vec<f64>,
    held: Vec<f64>,
    /// Largest loadgen p99 per migration, and per window without one, µs.
    p99_during_us: Vec<f64>,
    p99_without_us: Vec<f64>,
    faults: (u64, u64, u64),
    /// Requests refused at once (sent again) and answered, in all.
    errors: u64,
    answered: u64,
    /// Wall time of the whole series.
    elapsed: Duration,
}

fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    pct(&s, 99)
}

/// `reps` migrations back and forth, each after a window without one as
/// long as the one before took (every `window_every`th).
fn series(cluster: &mut Cluster, what: &str, precopy: bool, reps: usize, first_window: Duration) -> Result<Runs> {
    let window_every = if reps > 100 { 10 } else { 1 };
    let mut r = Runs::default();
    let start = Instant::now();
    let before = cluster.quiesce()?;
    let mut window = first_window;
    let mut last_note = Instant::now();
    for i in 0..reps {
        if i % window_every == 0 {
            cluster.loadgens_do(&LoadgenReq::Reset)?;
            cluster.reset_gaps()?;
            std::thread::sleep(window);
            let s = cluster.load_stats()?;
            r.p99_without_us.push(s.iter().map(|s| s.p99_ns).max().unwrap_or(0) as f64 / 1e3);
            r.gap_without_ms.push(cluster.migrant_max_gap_ns()? as f64 / 1e6);
        }
        cluster.loadgens_do(&LoadgenReq::Reset)?;
        cluster.reset_gaps()?;
        let t = Instant::now();
        let a = cluster.migrate(precopy)?;
        window = t.elapsed();
        let s = cluster.load_stats()?;
        r.p99_during_us.push(s.iter().map(|s| s.p99_ns).max().unwrap_or(0) as f64 / 1e3);
        r.gap_ms.push(cluster.migrant_max_gap_ns()? as f64 / 1e6);
        r.node_downtime_ms.push(a.downtime_ms);
        r.total_ms.push(a.total_ms);
        r.precopy_ms.push(a.precopy_ms);
        r.bytes.push(a.bytes as f64);
        r.rounds.push(f64::from(a.rounds));
        r.held.push(a.held as f64);
        if last_note.elapsed() > Duration::from_secs(10) || i + 1 == reps {
            last_note = Instant::now();
            progress(format!(
                "migrate: {what}: {} of {reps} migrations; last: {:.2} ms down (migrant), {:.1} ms total, {} rounds",
                i + 1,
                r.gap_ms[i],
                a.total_ms,
                a.rounds
            ));
        }
    }
    let after = cluster.quiesce()?;
    r.faults = before.faults(&after);
    r.errors = after.errors - before.errors;
    r.answered = after.replied - before.replied;
    r.elapsed = start.elapsed();
    Ok(r)
}

/// Sends `bytes` bytes to `addr` over one TCP connection: the raw
/// transfer's sender, run as its own process (see [`RAW_SENDER_ENV`]).
pub(crate) fn raw_sender(spec: &str) -> Result<()> {
    let (addr, bytes) = spec.split_once(' ').context("MIGRATE_BENCH_RAW_SEND is \"<addr> <bytes>\"")?;
    let addr: SocketAddr = addr.parse()?;
    let mut left: u64 = bytes.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    let chunk = vec![0x5au8; 1 << 20];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

/// The time to move `bytes` bytes over one plaintext TCP connection from a
/// sender process (node 1's side of the link) to this one (node 2's side),
/// from the accepted connection to the last byte.
fn raw_transfer(link: Link, bytes: u64) -> Result<Duration> {
    let listener = match link {
        Link::Loopback => TcpListener::bind("127.0.0.1:0")?,
        Link::Lab(_) => sys::in_netns(NS_B, || TcpListener::bind((ADDR_B, 0)))??,
    };
    let addr = listener.local_addr()?;
    let exe: PathBuf = std::env::current_exe().context("locating the bench executable")?;
    let mut cmd = match link {
        Link::Loopback => Command::new(&exe),
        Link::Lab(_) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", NS_A]).arg(&exe);
            c
        }
    };
    let mut child = cmd
        .env(RAW_SENDER_ENV, format!("{addr} {bytes}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the raw transfer's sender")?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait()? {
                    bail!("the raw transfer's sender exited before connecting ({status})");
                }
                ensure!(Instant::now() < deadline, "the raw transfer's sender did not connect within 20 s");
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let t = Instant::now();
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    let dt = t.elapsed();
    let status = child.wait()?;
    ensure!(status.success(), "the raw transfer's sender failed ({status})");
    ensure!(got == bytes, "the raw transfer moved {got} of {bytes} bytes");
    Ok(dt)
}

/// The median raw transfer time of `state_mib` MiB on `link`.
fn raw_baseline(link: Link, state_mib: u32) -> Result<Duration> {
    let reps = if state_mib >= 1024 { 1 } else { 3 };
    let bytes = u64::from(state_mib) * MIB;
    let mut v = Vec::new();
    for _ in 0..reps {
        v.push(raw_transfer(link, bytes)?.as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(v)))
}

/// The write rate (% of the migrant's pages per second) whose downtimes
/// the `report` plots show against the migrant's size: the targets' rate.
const PLOT_WRITE_PCT: u32 = 1;

/// The `report` plot of one downtime measure on `link` against the
/// migrant's size ("against memory": `report` draws it on log-log size
/// axes).
fn downtime_chart(link: Link, measure: &str) -> String {
    format!("migration downtime (ms) against memory (MiB), {PLOT_WRITE_PCT} %/s writes, {}: {measure}", link.label())
}

/// Everything measured for one link and one migrant size.
struct Block<'a> {
    report: &'a mut Report,
    link: Link,
    state_mib: u32,
    raw: Duration,
}

impl Block<'_> {
    /// The `report` plots' points of this link and size: both downtime
    /// measures, median and p99, pre-copy and stop-and-copy.
    fn points(&mut self, pre: &Runs, stop: &Runs) {
        let x = f64::from(self.state_mib);
        for (measure, pre_ms, stop_ms) in [
            ("migrant's gap", &pre.gap_ms, &stop.gap_ms),
            ("node's downtime_ms", &pre.node_downtime_ms, &stop.node_downtime_ms),
        ] {
            let chart = downtime_chart(self.link, measure);
            for (kind, v) in [("live pre-copy", pre_ms), ("stop-and-copy", stop_ms)] {
                self.report.point(&chart, &format!("{kind} p50"), x, median(v.clone()));
                self.report.point(&chart, &format!("{kind} p99"), x, p99(v));
            }
        }
    }

    fn figures(&mut self, write_pct: u32, pre: &Runs, stop: &Runs) {
        if write_pct == PLOT_WRITE_PCT {
            self.points(pre, stop);
        }
        let target = is_target(self.link, self.state_mib, write_pct);
        let config = format!("{}, {} MiB, {write_pct} %/s writes", self.link.label(), self.state_mib);
        let name = |what: &str| format!("{config}: {what}");
        let raw_ms = self.raw.as_secs_f64() * 1e3;
        let report = &mut *self.report;
        let with = |f: Figure, goal: Option<f64>| match goal {
            Some(g) if target => f.at_most(g),
            _ => f,
        };
        report.push(with(
            Figure::new(name("downtime p50, migrant's own gap"), median(pre.gap_ms.clone()), "ms")
                .baseline("stop-and-copy", median(stop.gap_ms.clone())),
            Some(1.0),
        ));
        report.push(with(
            Figure::new(name("downtime p99, migrant's own gap"), p99(&pre.gap_ms), "ms")
                .baseline("stop-and-copy", p99(&stop.gap_ms)),
            Some(5.0),
        ));
        // What the migrant's gap measure shows with no migration at all:
        // the machine's scheduling noise under this load.
        let floor = median(pre.gap_without_ms.clone());
        report.push(Figure::new(name("largest gap in a window without migration p50 (noise floor)"), floor, "ms"));
        let floor = p99(&pre.gap_without_ms);
        report.push(Figure::new(name("largest gap in a window without migration p99 (noise floor)"), floor, "ms"));
        report.push(with(
            Figure::new(name("downtime p50, node's downtime_ms"), median(pre.node_downtime_ms.clone()), "ms")
                .baseline("stop-and-copy", median(stop.node_downtime_ms.clone())),
            Some(1.0),
        ));
        report.push(with(
            Figure::new(name("downtime p99, node's downtime_ms"), p99(&pre.node_downtime_ms), "ms")
                .baseline("stop-and-copy", p99(&stop.node_downtime_ms)),
            Some(5.0),
        ));
        let total = Figure::new(name("total time p50"), median(pre.total_ms.clone()), "ms")
            .baseline("raw TCP transfer of the state (plaintext)", raw_ms);
        report.push(if target { total.ratio_at_most(1.3) } else { total });
        report.push(
            Figure::new(name("stop-and-copy total time p50"), median(stop.total_ms.clone()), "ms")
                .baseline("raw TCP transfer of the state (plaintext)", raw_ms),
        );
        report.push(
            Figure::new(name("bytes sent p50"), median(pre.bytes.clone()) / MIB as f64, "MiB")
                .baseline("state", f64::from(self.state_mib)),
        );
        report.push(
            Figure::new(name("pre-copy rounds p50"), median(pre.rounds.clone()), "rounds")
                .baseline("stop-and-copy", median(stop.rounds.clone()))
                .no_ratio(),
        );
        let p99_load = Figure::new(name("loadgen p99 during migration"), median(pre.p99_during_us.clone()), "µs")
            .baseline("p99 in a window as long without one", median(pre.p99_without_us.clone()));
        report.push(if target { p99_load.ratio_at_most(2.0) } else { p99_load });
        for (kind, runs) in [("pre-copy", pre), ("stop-and-copy", stop)] {
            let (lost, dups, disorder) = runs.faults;
            report.push(
                Figure::new(
                    name(&format!("{kind}: requests lost {lost} / duplicated {dups} / out of order {disorder}")),
                    (lost + dups + disorder) as f64,
                    "requests",
                )
                .at_most(0.0),
            );
        }
        report.note(format!(
            "{}: pre-copy {} migrations (held p50 {} messages, pre-copy phase p50 {:.1} ms; {} requests answered at \
             {:.0}/s over the series, {} refused and sent again), stop-and-copy {}",
            name("series"),
            pre.gap_ms.len(),
            num(median(pre.held.clone())),
            median(pre.precopy_ms.clone()),
            pre.answered,
            pre.answered as f64 / pre.elapsed.as_secs_f64(),
            pre.errors + stop.errors,
            stop.gap_ms.len(),
        ));
    }
}

/// Runs the configurations of one link and size on a fresh pair of nodes.
fn run_block(
    host: &Path,
    opts: Opts,
    block: &mut Block<'_>,
    port: u16,
    deadline: Instant,
) -> Result<()> {
    let (link, state_mib) = (block.link, block.state_mib);
    let label = format!("{}, {state_mib} MiB", link.label());
    let mut cluster = Cluster::start(host, link, port, state_mib)?;
    let result = (|| -> Result<()> {
        let measure = if opts.quick { Duration::from_millis(500) } else { Duration::from_secs(1) };
        let (in_flight, rate) = cluster.size_windows(link, measure)?;
        let what = format!("{label}: load, migrant on node 1 ({in_flight} requests in flight)");
        block.report.push(Figure::new(what, rate, "requests/s").baseline("goal", TARGET_RATE));
        // Correctness before timing: the load so far arrived intact.
        let zero = Counters::default();
        let c = cluster.quiesce()?;
        let (lost, dups, disorder) = zero.faults(&c);
        ensure!(
            (lost, dups, disorder) == (0, 0, 0) && c.sent > 0,
            "before any migration: {} sent, {lost} lost, {dups} duplicated, {disorder} out of order",
            c.sent
        );
        let pages = u64::from(state_mib) * MIB / PAGE;
        for pct in WRITE_PCTS {
            let (pre_reps, stop_reps) = reps(opts.quick, link, state_mib, pct);
            let est = estimate(opts.quick, link, state_mib, pct, block.raw).as_secs_f64();
            if Instant::now() + Duration::from_secs_f64(est) > deadline {
                let msg = format!("{label}, {pct} %/s writes: SKIPPED (about {est:.0} s would pass the time budget)");
                progress(format!("migrate: {msg}"));
                block.report.note(msg);
                continue;
            }
            let rate = (pages * u64::from(pct)).div_ceil(100) as u32;
            let done: MigrantReply = cluster.migrant_call(&MigrantReq::SetRate { write_pages_per_sec: rate })?;
            ensure!(done == MigrantReply::Done, "the migrant answered {done:?} to SetRate");
            let what = format!("{label}, {pct} %/s writes ({rate} pages/s)");
            let first = block.raw.mul_f64(1.3);
            let pre = series(&mut cluster, &format!("{what}, pre-copy"), true, pre_reps, first)?;
            let stop = series(&mut cluster, &format!("{what}, stop-and-copy"), false, stop_reps, first)?;
            block.figures(pct, &pre, &stop);
        }
        Ok(())
    })();
    if let Err(e) = result {
        if e.is::<NoMigrateOp>() {
            cluster.stop();
            return Err(e);
        }
        let logs = cluster.logs();
        let kept = cluster.keep_logs();
        cluster.stop();
        return Err(e.context(format!("{label} (node data kept in {kept})\n{logs}")));
    }
    cluster.stop();
    Ok(())
}

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let host = host_binary()?;
    let budget = Duration::from_secs(
        std::env::var("MIGRATE_BUDGET_S").ok().and_then(|s| s.parse().ok()).unwrap_or(1800),
    );
    let started = Instant::now();
    let deadline = started + budget;
    let sizes: &[u32] = if opts.quick { &[10, 100] } else { &[10, 100, 1024] };
    let mut report = Report::new("migrate", "live migration of a reactor under load between two nodes");
    report.param("nodes", "2 host node processes, 1 shard each, --insecure-plaintext, 4 lanes");
    report.param("migrant", format!("{:?} MiB, writes {WRITE_PCTS:?} % of pages/s", sizes));
    let load = format!("{LOADGENS} loadgens on node 2, closed loop, windows sized for {TARGET_RATE:.0} req/s");
    report.param("load", load);
    report.param("budget_s", budget.as_secs());
    report.note(
        "raw transfer baseline: the migrant's state (state_mib MiB) in PLAINTEXT over one std TcpStream connection \
         between two processes on the same link (node 1's side to node 2's), timed from the accepted connection to \
         the last byte; the nodes of the migration runs are started with --insecure-plaintext, so neither side \
         encrypts",
    );
    report.note(
        "downtime 'migrant's own gap': the largest wall-clock gap between two messages the migrant handled, reset \
         just before each migration (last handled at the source -> first at the target); 'node's downtime_ms': the \
         source stopping it -> the target resuming it, as the node reports",
    );
    report.note(
        "loadgen p99: the largest of the 8 loadgens' p99 over each migration, median over migrations; the baseline \
         is the same over a window as long as the previous migration, just before it, with the migrant where the \
         migration starts (every 10th migration in series of over 100); 'largest gap without migration' is the \
         migrant's gap measure over those windows: the scheduling noise the downtime figures stand on",
    );

    let mut links = Vec::new();
    let mut lab = None;
    // Listening ports of the nodes in the lab: fresh for every pair.
    let mut port = 7301;
    for link in [Link::Loopback, Link::Lab(Duration::from_millis(1)), Link::Lab(Duration::from_millis(20))] {
        if let Link::Lab(rtt) = link {
            if !sys::is_root() {
                report.note(format!("{}: skipped (the network lab needs root)", link.label()));
                continue;
            }
            if lab.is_none() {
                match Lab::up(LabConfig::from_env()) {
                    Ok(l) => lab = Some(l),
                    Err(e) => {
                        report.note(format!("lab links skipped: the lab did not come up: {e:#}"));
                        break;
                    }
                }
            }
            let l = lab.as_ref().expect("the lab is up");
            progress(format!("migrate: calibrating the lab to {}", link.label()));
            let samples = if opts.quick { 100 } else { 400 };
            let cal = l.calibrate(rtt, if rtt >= Duration::from_millis(10) { samples / 4 } else { samples })?;
            report.note(format!("calibration: {cal}"));
        }
        links.push(link);
        let mut raw_100: Option<Duration> = None;
        for &state_mib in sizes {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
            let skip = |report: &mut Report, est: f64, from: &str| {
                let msg = format!(
                    "{}, {state_mib} MiB: SKIPPED (about {est:.0} s estimated from {from}; the time budget has \
                     {left:.0} s left)",
                    link.label(),
                );
                progress(format!("migrate: {msg}"));
                report.note(msg);
            };
            // A 1 GiB block as a whole, before its raw transfer (which takes
            // long itself on a slow link): from the 100 MiB one, scaled.
            if state_mib >= 1024
                && let Some(r100) = raw_100
            {
                let raw = r100.mul_f64(f64::from(state_mib) / 100.0);
                let est: f64 =
                    WRITE_PCTS.iter().map(|&p| estimate(opts.quick, link, state_mib, p, raw).as_secs_f64()).sum();
                if est > left {
                    skip(&mut report, est, "the 100 MiB raw transfer");
                    continue;
                }
            }
            if left <= 0.0 {
                skip(&mut report, 0.0, "nothing: the budget is spent");
                continue;
            }
            progress(format!("migrate: {}: raw transfer of {state_mib} MiB", link.label()));
            let raw = raw_baseline(link, state_mib)?;
            if state_mib == 100 {
                raw_100 = Some(raw);
            }
            // At least one configuration must fit.
            let cheapest = WRITE_PCTS
                .iter()
                .map(|&p| estimate(opts.quick, link, state_mib, p, raw).as_secs_f64())
                .fold(f64::INFINITY, f64::min);
            if Instant::now() + Duration::from_secs_f64(cheapest) > deadline {
                skip(&mut report, cheapest, "its raw transfer");
                continue;
            }
            let what = format!("{}: raw TCP transfer of {state_mib} MiB (plaintext)", link.label());
            report.push(Figure::new(what, raw.as_secs_f64() * 1e3, "ms"));
            let mut block = Block { report: &mut report, link, state_mib, raw };
            let done = run_block(&host, opts, &mut block, port, deadline);
            port += 2;
            if let Err(e) = done {
                if e.is::<NoMigrateOp>() {
                    // What ran before the first migration, then why it stopped.
                    eprintln!("{}", report.table());
                }
                return Err(e);
            }
        }
    }
    report.param("links", links.iter().map(|l| l.label()).collect::<Vec<_>>().join(", "));
    report.note(format!("run time {:.0} s", started.elapsed().as_secs_f64()));
    Ok(report)
}
