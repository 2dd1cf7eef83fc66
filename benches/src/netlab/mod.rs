//! A two-host network lab on one machine: two network namespaces joined by
//! a point-to-point link with an emulated round-trip time.
//!
//! `tc netem` is not available on this kernel, so the delay is ours: each
//! namespace holds one TUN device (`rsbt-a` = 10.77.0.1 in `rsb-a`,
//! `rsbt-b` = 10.77.0.2 in `rsb-b`), and a [`delay::DelayLine`] in this
//! process holds both devices' file descriptors and copies every packet
//! from one to the other RTT/2 after reading it, in order. The kernels'
//! real TCP (congestion window, slow start, retransmission, head-of-line
//! blocking) runs end to end over it. [`Lab::calibrate`] measures the round
//! trip of a 64-byte message over TCP and sets the delay so the measured
//! median is within 5% of the target.
//!
//! Processes run inside a namespace with `ip netns exec`; this process makes
//! sockets inside one with [`sys::in_netns`]. Unix sockets cross
//! namespaces, so nodes' admin sockets are reachable from here.
//!
//! # Layout
//! - `delay` — the delay line (threads, queue, counters), device-agnostic
//!   and unit-tested with fake ports.
//! - `tun` — TUN devices as delay-line ports.
//! - `sys` — entering a namespace from one thread; timer slack (the only
//!   unsafe code).
//! - `node` — a `host node` process in a namespace and its admin client.

pub(crate) mod delay;
pub(crate) mod node;
pub(crate) mod sys;
mod tun;

use anyhow::{Context as _, Result, bail, ensure};
use delay::DelayLine;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const NS_A: &str = "rsb-a";
pub(crate) const NS_B: &str = "rsb-b";
pub(crate) const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub(crate) const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const TUN_A: &str = "rsbt-a";
const TUN_B: &str = "rsbt-b";

/// How the link is built.
#[derive(Clone, Debug)]
pub(crate) struct LabConfig {
    /// Link MTU (bytes).
    pub(crate) mtu: u16,
    /// TUN offloads: TCP segments of up to 64 KiB cross the delay line as
    /// one packet (the MTU still sets the MSS TCP counts its window in).
    pub(crate) offload: bool,
    /// A bandwidth cap per direction (a `tc tbf` rate such as `1gbit`).
    pub(crate) rate: Option<String>,
}

/// No bandwidth cap by default. Uncapped, the link carries what the delay
/// line moves on this machine (about 1.1–1.3 GB/s each way when the
/// machine is quiet, far more than one TCP connection gets at 20 ms), its
/// queue is unbounded (tens of ms of extra delay under load, reported),
/// and the bottleneck moves with the CPU the machine has to spare. With
/// `NETLAB_RATE=1gbit` the bottleneck is a `tbf` queue of bounded delay
/// (20 ms, drop-tail) like a real link's buffer, and the delay line keeps
/// its timing.
impl Default for LabConfig {
    fn default() -> Self {
        Self { mtu: 1500, offload: true, rate: None }
    }
}

impl LabConfig {
    /// The default link, with the bandwidth cap `NETLAB_RATE` if set (a
    /// `tc tbf` rate such as `1gbit` or `500mbit`; `none` for no cap).
    pub(crate) fn from_env() -> Self {
        let rate = match std::env::var("NETLAB_RATE") {
            Ok(r) if !r.is_empty() && r != "none" && r != "0" => Some(r),
            _ => None,
        };
        Self { rate, ..Self::default() }
    }
}

/// The namespaces, devices and delay line. Dropping it tears all down.
#[derive(Debug)]
pub(crate) struct Lab {
    line: Option<DelayLine>,
}

/// What [`Lab::calibrate`] found.
#[derive(Clone, Debug)]
pub(crate) struct Calibration {
    pub(crate) target: Duration,
    /// Median 64-byte TCP round trip with no added delay.
    pub(crate) base: Duration,
    /// The one-way delay configured in the end.
    pub(crate) one_way: Duration,
    /// Median, 10th and 90th percentile round trip with that delay.
    pub(crate) p50: Duration,
    pub(crate) p10: Duration,
    pub(crate) p90: Duration,
    pub(crate) samples: usize,
    /// Probe rounds it took.
    pub(crate) rounds: usize,
}

impl Calibration {
    /// Measured median over target, minus one.
    pub(crate) fn error(&self) -> f64 {
        self.p50.as_secs_f64() / self.target.as_secs_f64() - 1.0
    }
}

impl std::fmt::Display for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target RTT {:.3} ms: one-way delay {:.1} µs, measured 64 B TCP RTT p50 {:.3} ms (p10 {:.3}, p90 {:.3}; \
             {:+.1}% off target; {} samples, {} rounds; stack+forwarder alone {:.1} µs)",
            ms(self.target),
            self.one_way.as_secs_f64() * 1e6,
            ms(self.p50),
            ms(self.p10),
            ms(self.p90),
            self.error() * 100.0,
            self.samples,
            self.rounds,
            self.base.as_secs_f64() * 1e6,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `ip` with `args`; fails with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    ensure!(out.status.success(), "`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Runs a command inside namespace `ns`; fails with its stderr.
fn in_ns(ns: &str, cmd: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args)
}

/// Caps the egress of `dev` in namespace `ns` at `rate` with a `tbf`
/// queue, or removes the cap (`None`). Burst 256 KiB (room for full 64 KiB
/// TSO segments); packets that would wait more than 20 ms in the queue are
/// dropped.
fn set_tbf(ns: &str, dev: &str, rate: Option<&str>) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "tc", "qdisc"]);
    match rate {
        Some(rate) => {
            c.args(["replace", "dev", dev, "root", "tbf", "rate", rate]).args(["burst", "256kb", "latency", "20ms"])
        }
        None => c.args(["del", "dev", dev, "root"]),
    };
    let out = c.output().context("running tc")?;
    ensure!(out.status.success(), "tc tbf on {dev}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Removes what a previous run may have left: processes still running in
/// the lab's namespaces (nodes of a run that was killed), then the
/// namespaces (TUN devices vanish with the process that held them).
fn clean_leftovers() {
    for ns in [NS_A, NS_B] {
        if std::path::Path::new(&sys::netns_path(ns)).exists() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for dev in [TUN_A, TUN_B] {
        let _ = Command::new("ip").args(["link", "del", dev]).stderr(std::process::Stdio::null()).status();
    }
}

impl Lab {
    /// Builds the lab (after removing any leftovers) with no added delay.
    pub(crate) fn up(config: LabConfig) -> Result<Self> {
        ensure!(sys::is_root(), "the network lab needs root (network namespaces and TUN devices)");
        clean_leftovers();
        let mut lab = Self { line: None };
        let mut ports: Vec<Arc<dyn delay::Port>> = Vec::new();
        for (ns, dev, me, peer) in [(NS_A, TUN_A, ADDR_A, ADDR_B), (NS_B, TUN_B, ADDR_B, ADDR_A)] {
            ip(&["netns", "add", ns])?;
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
            // Created here, moved into the namespace: the fd keeps working.
            let port = tun::TunPort::create(dev, config.mtu, config.offload)?;
            ip(&["link", "set", dev, "netns", ns])?;
            let (me, peer) = (me.to_string(), format!("{peer}/32"));
            in_ns(ns, &["ip", "addr", "add", &me, "peer", &peer, "dev", dev])?;
            let mtu = config.mtu.to_string();
            in_ns(ns, &["ip", "link", "set", dev, "mtu", &mtu, "txqueuelen", "10000", "up"])?;
            if let Some(rate) = &config.rate {
                set_tbf(ns, dev, Some(rate))?;
            }
            ports.push(Arc::new(port));
        }
        let b = ports.pop().expect("two ports");
        let a = ports.pop().expect("two ports");
        lab.line = Some(DelayLine::start(a, b, Duration::ZERO).context("starting the delay line")?);
        // The link answers before anything is measured over it.
        lab.probe_rtt(3).context("a first TCP round trip across the lab")?;
        Ok(lab)
    }

    /// Puts a bandwidth cap of `rate` (a `tc tbf` rate such as `1gbit`) on
    /// both directions of the running link, as [`LabConfig::rate`] does at
    /// start; `None` removes it.
    pub(crate) fn set_rate(&self, rate: Option<&str>) -> Result<()> {
        for (ns, dev) in [(NS_A, TUN_A), (NS_B, TUN_B)] {
            set_tbf(ns, dev, rate)?;
        }
        Ok(())
    }

    pub(crate) fn line(&self) -> &DelayLine {
        self.line.as_ref().expect("the line runs while the lab is up")
    }

    pub(crate) fn set_one_way(&self, d: Duration) {
        self.line().set_one_way(d);
    }

    /// Sorted round trips of `samples` 64-byte messages echoed over one TCP
    /// connection (no Nagle) from namespace a to namespace b.
    pub(crate) fn probe_rtt(&self, samples: usize) -> Result<Vec<Duration>> {
        let listener = sys::in_netns(NS_B, || TcpListener::bind((ADDR_B, 0)))??;
        let port = listener.local_addr()?.port();
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => s.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        });
        let to = SocketAddr::from((ADDR_B, port));
        let mut c = sys::in_netns(NS_A, move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::with_capacity(samples);
        let mut buf = [7u8; 64];
        // One unmeasured exchange: the connection's first data.
        for i in 0..samples + 1 {
            buf[0] = i as u8;
            let t = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            ensure!(buf[0] == i as u8, "the echo server answered out of order");
            if i > 0 {
                out.push(t.elapsed());
            }
        }
        drop(c);
        server.join().map_err(|_| anyhow::anyhow!("echo server panicked"))??;
        out.sort();
        Ok(out)
    }

    /// Sets the one-way delay so the median 64-byte TCP round trip is within
    /// 5% of `target` (aiming at 1%, then settling for 3% after 4 rounds
    /// and 5% after 8): measures the round trip with no delay, starts from
    /// half the difference as the one-way delay, then corrects the one-way
    /// delay by half the remaining round-trip error, up to 12 rounds of
    /// `samples` round trips each.
    pub(crate) fn calibrate(&self, target: Duration, samples: usize) -> Result<Calibration> {
        self.set_one_way(Duration::ZERO);
        let base = pct(&self.probe_rtt(samples)?, 50);
        let mut one_way = target.saturating_sub(base) / 2;
        let mut rounds = 0;
        loop {
            rounds += 1;
            self.set_one_way(one_way);
            let rtts = self.probe_rtt(samples)?;
            let cal = Calibration {
                target,
                base,
                one_way,
                p50: pct(&rtts, 50),
                p10: pct(&rtts, 10),
                p90: pct(&rtts, 90),
                samples,
                rounds,
            };
            let err = cal.error();
            if err.abs() <= 0.01 || (rounds >= 4 && err.abs() <= 0.03) || (rounds >= 8 && err.abs() <= 0.05) {
                return Ok(cal);
            }
            if rounds >= 12 {
                bail!("could not calibrate the delay line (is the machine very busy?): {cal}");
            }
            let diff = target.as_secs_f64() - cal.p50.as_secs_f64();
            one_way = Duration::from_secs_f64((one_way.as_secs_f64() + diff / 2.0).max(0.0));
        }
    }

    /// Bytes per second `conns` TCP connections carry together from
    /// namespace a to b, each sending `bytes_each` bytes (the lab's own
    /// ceiling, with whatever delay is set).
    pub(crate) fn tcp_throughput(&self, conns: usize, bytes_each: usize) -> Result<f64> {
        let listener = sys::in_netns(NS_B, || TcpListener::bind((ADDR_B, 0)))??;
        let to = SocketAddr::from((ADDR_B, listener.local_addr()?.port()));
        let sinks = std::thread::spawn(move || -> std::io::Result<u64> {
            let mut readers = Vec::new();
            for _ in 0..conns {
                let (mut s, _) = listener.accept()?;
                readers.push(std::thread::spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0u64;
                    loop {
                        match s.read(&mut buf)? {
                            0 => return Ok(total),
                            n => total += n as u64,
                        }
                    }
                }));
            }
            let mut total = 0;
            for r in readers {
                total += r.join().map_err(|_| std::io::Error::other("reader panicked"))??;
            }
            Ok(total)
        });
        let mut socks = Vec::new();
        for _ in 0..conns {
            socks.push(sys::in_netns(NS_A, move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))??);
        }
        let start = Instant::now();
        let senders: Vec<_> = socks
            .into_iter()
            .map(|mut s| {
                std::thread::spawn(move || -> std::io::Result<()> {
                    let chunk = vec![0x5au8; 1 << 20];
                    let mut left = bytes_each;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        s.write_all(&chunk[..n])?;
                        left -= n;
                    }
                    s.shutdown(std::net::Shutdown::Write)
                })
            })
            .collect();
        for s in senders {
            s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        }
        let got = sinks.join().map_err(|_| anyhow::anyhow!("sink panicked"))??;
        let dt = start.elapsed();
        ensure!(got == (conns * bytes_each) as u64, "sent {} bytes, {got} arrived", conns * bytes_each);
        Ok(got as f64 / dt.as_secs_f64())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Closing the devices' fds removes them; then the namespaces go.
        self.line.take();
        for ns in [NS_A, NS_B] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The `p`th percentile of sorted `v` (nearest rank).
pub(crate) fn pct<T: Copy + Default>(v: &[T], p: usize) -> T {
    if v.is_empty() {
        return T::default();
    }
    let i = ((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1;
    v[i]
}

/// The `netlab` scenario: the lab alone. Calibrates the delay line at
/// 1 ms and 20 ms and measures what plain TCP gets across it (one
/// connection and eight, one direction), the ceiling under every
/// distributed scenario.
pub(crate) fn run(opts: crate::harness::Opts) -> Result<crate::harness::Report> {
    use crate::harness::{Figure, Report, progress};
    let mut report = Report::new("netlab", "the network lab: calibrated delay line between two namespaces");
    let config = LabConfig::from_env();
    report.param("mtu", config.mtu);
    report.param("offload", config.offload);
    report.param("rate", config.rate.clone().unwrap_or_else(|| "uncapped".into()));
    let lab = Lab::up(config)?;
    let samples = if opts.quick { 100 } else { 400 };
    let bytes = if opts.quick { 64 << 20 } else { 256 << 20 };
    for target in [Duration::from_millis(1), Duration::from_millis(20)] {
        progress(format!("netlab: calibrating {} ms", ms(target)));
        let cal = lab.calibrate(target, if target.as_millis() >= 10 { samples / 4 } else { samples })?;
        report.note(cal.to_string());
        let t = format!("{} ms", ms(target));
        report.push(
            Figure::new(format!("64 B TCP RTT p50 at target {t}"), ms(cal.p50), "ms").baseline("target", ms(target)),
        );
        report.push(
            Figure::new(format!("64 B TCP RTT p90 at target {t}"), ms(cal.p90), "ms").baseline("target", ms(target)),
        );
        lab.line().reset_figures();
        for conns in [1, 8] {
            progress(format!("netlab: TCP throughput, {conns} connection(s), RTT {t}"));
            let bps = lab.tcp_throughput(conns, bytes / conns)?;
            report.push(Figure::new(format!("TCP a->b, {conns} conn, RTT {t}"), bps / 1e6, "MB/s"));
        }
        let [ab, ba] = lab.line().figures();
        report.note(format!(
            "RTT {t}: forwarded a->b {} packets ({:.0} B mean), b->a {}; writes late by {:.1} µs mean, {:.1} µs max; \
             {} writes refused",
            ab.packets,
            ab.bytes as f64 / ab.packets.max(1) as f64,
            ba.packets,
            ab.mean_late.as_secs_f64() * 1e6,
            ab.max_late.max(ba.max_late).as_secs_f64() * 1e6,
            ab.send_errors + ba.send_errors,
        ));
    }
    Ok(report)
}
