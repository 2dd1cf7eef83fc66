//! The cost of encrypting node-to-node traffic: two `host node` processes
//! on loopback (no network lab, no root), full mesh, one shard each, the
//! default channel of 4 lanes; the same cases run against a pair started
//! with `--insecure-plaintext` (frames in the clear, only the handshake
//! authenticated: the transport as it was before encryption) and a pair
//! with the default Noise encryption, in the same run, alternating which
//! goes first per repetition.
//!
//! Cases, with `pingpong` reactors (pingers on a, echo partners on b):
//! - **round trip**: one pair, 64-byte payloads echoed back, one round in
//!   flight: p50 and p99 of the round time (timed inside the pinger);
//! - **throughput**: 8 pairs each echoing 1 MiB payloads, 4 rounds in
//!   flight per pair: payload bytes moved both ways per second of wall
//!   time.
//!
//! Each configuration is checked first: echoed bytes come back equal.
//!
//! Baseline of the round trip, same run: a plain TCP ping-pong of 64 bytes
//! between this process and a child process (this executable again, see
//! [`TCP_ECHO_ENV`]) on loopback, `TCP_NODELAY`, one message in flight —
//! what two processes pay for a round trip with no runtime at all.
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, median, progress};
use crate::netlab::node::{Node, NodeSpec, host_binary};
use crate::partisan::{Outcome, collect, game_timeout};
use anyhow::{Result, ensure};
use protocols::PingMsg;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

const KB: u32 = 1024;
const MB: u32 = 1024 * 1024;

/// Two nodes and their pairs.
struct Pair {
    a: Node,
    b: Node,
    pairs: Vec<(u64, u64)>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Pair {
    fn start(host: &Path, encrypted: bool, pairs: usize, pingpong: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("crypto-bench-").tempdir()?;
        let secret = dir.path().join("secret");
        crate::netlab::node::write_secret(&secret, &format!("crypto-bench-secret-{}", std::process::id()))?;
        let extra: Vec<String> = if encrypted { vec![] } else { vec!["--insecure-plaintext".into()] };
        let spec = |id: u16, addr: SocketAddr, seeds: Vec<SocketAddr>| NodeSpec {
            id,
            name: format!("node-{}", if id == 1 { "a" } else { "b" }),
            netns: String::new(),
            extra: extra.clone(),
            listen: addr,
            seeds,
            lanes: Some(4),
            channels: vec![],
            shards: Some(1),
            cluster: "crypto".into(),
            secret_file: secret.clone(),
            data_dir: dir.path().join(format!("node{id}")),
        };
        let addr_a = free_port()?;
        let addr_b = free_port()?;
        let a = Node::start(host, spec(1, addr_a, vec![]))?;
        let b = Node::start(host, spec(2, addr_b, vec![addr_a]))?;
        a.wait_member(2, Duration::from_secs(20))?;
        b.wait_member(1, Duration::from_secs(20))?;
        ensure!(a.status()?["encrypted"] == Value::Bool(encrypted), "node a is not in the mode asked for");
        let mut p = Self { a, b, pairs: Vec::new(), _dir: dir };
        for _ in 0..pairs {
            let pinger = p.a.spawn(pingpong, Value::Null)?;
            let partner = p.b.spawn(pingpong, Value::Null)?;
            p.pairs.push((pinger, partner));
        }
        for bytes in [1, 100_003, 2 * MB + 7] {
            let o = p.play(1, 2, 1, bytes)?;
            ensure!(o.rounds() == 2, "check: {} of 2 rounds", o.rounds());
        }
        Ok(p)
    }

    /// `PlayBulk` on the first `n` pairs at once.
    fn play(&self, n: usize, rounds: u64, window: u32, bytes: u32) -> Result<Outcome> {
        let timeout = game_timeout(n, rounds, bytes);
        let start = Instant::now();
        let calls = self.pairs[..n]
            .iter()
            .map(|&(pinger, peer)| {
                self.a.admin.call_reactor(pinger, &PingMsg::PlayBulk { peer, rounds, window, bytes }, timeout)
            })
            .collect::<Result<Vec<_>>>()?;
        collect(calls, start, rounds, true, timeout)
    }

    fn stop(self) {
        let _ = self.a.stop();
        let _ = self.b.stop();
    }
}

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let (reps, rtt_rounds, bulk_rounds) = if opts.quick { (2, 2_000, 16) } else { (4, 20_000, 64) };
    let (bulk_pairs, bulk_window, bulk_bytes) = (8usize, 4u32, MB);
    let mut report = Report::new("crypto", "encrypted (Noise XXpsk3, ChaCha20-Poly1305) vs plaintext node-to-node traffic");
    report.param("transport", "loopback, 2 node processes, 1 shard each, 4 lanes");
    report.param("reps", reps);
    report.param("rtt_rounds", rtt_rounds);
    report.param("bulk", format!("{bulk_pairs} pairs x {bulk_rounds} rounds x {} KB, window {bulk_window}", bulk_bytes / KB));
    let host = host_binary()?;
    let pingpong = example_guests::path("pingpong").display().to_string();
    // First, while no node process runs (one still stopping would take a
    // core from a ping-pong of two processes on two cores).
    progress("crypto: baseline, plain TCP ping-pong between two processes");
    let (tcp50, tcp99) = tcp_pingpong(rtt_rounds as usize)?;
    // (plaintext, encrypted) samples of each figure.
    let mut p50 = (Vec::new(), Vec::new());
    let mut p99 = (Vec::new(), Vec::new());
    let mut mbps = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for encrypted in order {
            let label = if encrypted { "encrypted" } else { "plaintext" };
            progress(format!("crypto: repetition {} of {reps}, {label}", rep + 1));
            let pair = Pair::start(&host, encrypted, bulk_pairs, &pingpong)?;
            let rtt = pair.play(1, rtt_rounds, 1, 64)?;
            let bulk = pair.play(bulk_pairs, bulk_rounds, bulk_window, bulk_bytes)?;
            pair.stop();
            let pick = |t: &mut (Vec<f64>, Vec<f64>), v: f64| if encrypted { t.1.push(v) } else { t.0.push(v) };
            pick(&mut p50, rtt.p_ms(50) * 1e3);
            pick(&mut p99, rtt.p_ms(99) * 1e3);
            pick(&mut mbps, bulk.mb_per_s());
        }
    }
    let fig = |name: &str, t: (Vec<f64>, Vec<f64>), unit: &str| {
        Figure::new(format!("{name}, encrypted"), median(t.1), unit).baseline("plaintext (--insecure-plaintext)", median(t.0))
    };
    report.push(
        Figure::new("64 B reactor round trip p50 across two node processes, encrypted, against plain TCP", median(p50.1.clone()), "µs")
            .baseline("plain TCP ping-pong between two processes, p50", tcp50)
            .ratio_at_most(1.5),
    );
    report.push(
        Figure::new("64 B reactor round trip p99 across two node processes, encrypted, against plain TCP", median(p99.1.clone()), "µs")
            .baseline("plain TCP ping-pong between two processes, p99", tcp99),
    );
    report.push(fig("64 B round trip p50", p50, "µs"));
    report.push(fig("64 B round trip p99", p99, "µs"));
    report.push(fig("1 MiB echo throughput", mbps, "MB/s"));
    report.note("medians over the repetitions; each repetition starts a fresh pair of nodes per mode");
    Ok(report)
}

/// Where the TCP ping-pong baseline's child process connects (set, the
/// bench executable runs as that child: see `main`).
pub(crate) const TCP_ECHO_ENV: &str = "CRYPTO_BENCH_TCP_ECHO";

/// The child of the TCP baseline: echoes 64-byte messages until EOF.
pub(crate) fn tcp_echo(addr: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    while s.read_exact(&mut buf).is_ok() {
        s.write_all(&buf)?;
    }
    Ok(())
}

/// A plain TCP ping-pong of 64 bytes with a child process: (p50, p99) µs.
fn tcp_pingpong(rounds: usize) -> Result<(f64, f64)> {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(TCP_ECHO_ENV, addr.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut out = [7u8; 64];
    let mut back = [0u8; 64];
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 1000 {
        out[0] = i as u8;
        let t = Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        if i >= 1000 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ensure!(back == out, "the echo changed the bytes");
    }
    drop(s);
    let _ = child.wait();
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() * 99 / 100]))
}
