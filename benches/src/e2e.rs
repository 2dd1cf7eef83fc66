//! End to end through Wasm on the multi-core runtime: reactor-to-reactor
//! messages/s on one shard and across shards, and request–response latency
//! (median and p99), against the same traffic between native tokio tasks over
//! `tokio::sync::mpsc`; plus the round trip of the bare ring between two
//! threads.
//!
//! Traffic: P `pingpong` pairs each play R one-way ping/pong exchanges with
//! 64 in flight (`PingMsg::Play`), all pairs at once; every exchange is two
//! messages, each delivered into a reactor (in batches: one call into Wasm
//! per batch). On one shard both partners live on shard 0; across shards each
//! pair is split over shards 0 and 1. The baseline runs the same pattern
//! between tokio tasks: P pairs, R pings with 64 in flight, one bounded
//! channel each way, on a current-thread runtime (one core) or a two-worker
//! runtime (two cores).
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, load_guest, median, median_of, progress};
use anyhow::{Result, ensure};
use protocols::{PingMsg, PingReport};
use reactor_runtime::{Address, LoadedModule, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const WINDOW: u32 = 64;

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let (pairs, rounds, calls, ring_rounds, reps) =
        if opts.quick { (8, 2_000, 2_000, 20_000, 3) } else { (64, 50_000, 50_000, 1_000_000, 5) };
    let mut report = Report::new("e2e", "end to end through Wasm on the multi-core runtime");
    report.param("pairs", pairs);
    report.param("rounds_per_pair", rounds);
    report.param("window", WINDOW);
    report.param("reps", reps);
    report.param("cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    let engine = crate::harness::engine()?;
    let (module, _) = load_guest(&engine, "pingpong")?;

    for (shards, label) in [(1usize, "one shard"), (2, "across two shards")] {
        progress(format!("e2e: ping/pong, {label}"));
        let rt = Runtime::new(engine.clone(), RuntimeConfig { shards, ..RuntimeConfig::default() })?;
        let game = Game::new(&rt, &module, pairs, shards)?;
        game.play(&rt, 100)?; // correctness check and warm-up
        let ours = median_of(reps, || game.play(&rt, rounds))?;
        let cross_before = rt.stats().cross_shard;
        game.play(&rt, 100)?;
        if shards > 1 {
            ensure!(rt.stats().cross_shard > cross_before, "traffic did not cross shards");
        }
        let base = median_of(reps, || tokio_pairs(shards, pairs, rounds))?;
        report.push(
            Figure::new(format!("reactor->reactor messages/s, {label}"), ours, "msgs/s")
                .baseline(format!("tokio tasks over mpsc, {shards} worker(s)"), base),
        );
        report.push(
            Figure::new(format!("messages/s per core, {label}"), ours / shards as f64, "msgs/s")
                .baseline(format!("tokio tasks, per worker, {shards} worker(s)"), base / shards as f64)
                .at_least(5e6),
        );
        drop(rt);
    }

    progress("e2e: request-response latency");
    let rt = Runtime::new(engine.clone(), RuntimeConfig { shards: 2, ..RuntimeConfig::default() })?;
    let echo = rt.spawn_on(1, &module, vec![], 0)?;
    let samples = call_latencies(&rt, echo, calls)?;
    let base = tokio_call_latencies(calls)?;
    report.push(
        Figure::new("host->reactor call round trip, median", pct(&samples, 0.5), "ns")
            .baseline("thread->tokio task, mpsc + oneshot, median", pct(&base, 0.5)),
    );
    report.push(
        Figure::new("host->reactor call round trip, p99", pct(&samples, 0.99), "ns")
            .baseline("thread->tokio task, mpsc + oneshot, p99", pct(&base, 0.99)),
    );
    let a = rt.spawn_on(0, &module, vec![], 0)?;
    let r: PingReport = rt.call_typed(a, &PingMsg::Play { peer: Some(echo.0), rounds: 1000, window: 1, requests: true })?;
    ensure!(r.echoes >= 1000, "cross-shard request/response game incomplete: {r:?}");
    let per_exchange = median_of(reps, || -> Result<f64> {
        let t = Instant::now();
        let msg = PingMsg::Play { peer: Some(echo.0), rounds: calls, window: 1, requests: true };
        let _: PingReport = rt.call_typed(a, &msg)?;
        Ok(t.elapsed().as_nanos() as f64 / calls as f64)
    })?;
    let base_rr = median_of(reps, || tokio_request_reply_2w(calls))?;
    report.push(
        Figure::new("reactor->reactor request-response across shards, mean", per_exchange, "ns")
            .baseline("tokio tasks on 2 workers, mpsc + oneshot", base_rr),
    );
    drop(rt);

    progress("e2e: bare ring round trip");
    let ring = median_of(reps, || ring_round_trip(ring_rounds))?;
    let std_rt = median_of(reps, || std_round_trip(ring_rounds / 10))?;
    report.push(
        Figure::new("ring round trip between two threads (reactor-ring SPSC pair)", ring, "ns")
            .baseline("std::sync::mpsc::sync_channel pair", std_rt)
            .below(500.0),
    );
    report.note("messages/s counts both pings and pongs; every message is delivered into a Wasm reactor");
    Ok(report)
}

/// P pingpong pairs on a runtime.
struct Game {
    pairs: Vec<(Address, Address)>,
}

impl Game {
    fn new(rt: &Runtime, module: &Arc<LoadedModule>, pairs: usize, shards: usize) -> Result<Self> {
        let mut v = Vec::new();
        for _ in 0..pairs {
            let a = rt.spawn_on(0, module, vec![], 0)?;
            let b = rt.spawn_on(shards - 1, module, vec![], 0)?;
            v.push((a, b));
        }
        Ok(Self { pairs: v })
    }

    /// Plays `rounds` exchanges on every pair at once; returns messages/s.
    fn play(&self, rt: &Runtime, rounds: u64) -> Result<f64> {
        let t = Instant::now();
        let calls: Vec<_> = self
            .pairs
            .iter()
            .map(|(a, b)| {
                let msg = PingMsg::Play { peer: Some(b.0), rounds, window: WINDOW, requests: false };
                rt.request(*a, postcard::to_allocvec(&msg).expect("encode"), false)
            })
            .collect::<Result<_, _>>()?;
        for c in calls {
            let r: PingReport = postcard::from_bytes(&c.wait(Some(Duration::from_secs(300)))?.payload)?;
            ensure!(r.pongs >= rounds, "a pair finished with {} pongs of {rounds}", r.pongs);
        }
        let msgs = 2 * rounds * self.pairs.len() as u64;
        Ok(msgs as f64 / t.elapsed().as_secs_f64())
    }
}

fn pct(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn call_latencies(rt: &Runtime, to: Address, n: u64) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n + 1000 {
        let t = Instant::now();
        let back: u64 = rt.call_typed(to, &PingMsg::Echo(i))?;
        let dt = t.elapsed().as_nanos() as f64;
        ensure!(back == i, "Echo({i}) answered {back}");
        if i >= 1000 {
            out.push(dt);
        }
    }
    Ok(out)
}

fn tokio_call_latencies(n: u64) -> Result<Vec<f64>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    rt.spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v);
        }
    });
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n + 1000 {
        let t = Instant::now();
        let (otx, orx) = oneshot::channel();
        tx.blocking_send((i, otx))?;
        let back = orx.blocking_recv()?;
        let dt = t.elapsed().as_nanos() as f64;
        ensure!(back == i, "tokio echo answered {back} for {i}");
        if i >= 1000 {
            out.push(dt);
        }
    }
    Ok(out)
}

fn tokio_request_reply_2w(n: u64) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
        let server = tokio::spawn(async move {
            while let Some((v, reply)) = rx.recv().await {
                let _ = reply.send(v);
            }
        });
        let client = tokio::spawn(async move {
            let t = Instant::now();
            for i in 0..n {
                let (otx, orx) = oneshot::channel();
                tx.send((i, otx)).await?;
                let back = orx.await?;
                ensure!(back == i, "tokio echo mismatch");
            }
            Ok::<f64, anyhow::Error>(t.elapsed().as_nanos() as f64 / n as f64)
        });
        let r = client.await??;
        server.abort();
        Ok(r)
    })
}

/// P pairs of tokio tasks, R pings each with `WINDOW` in flight; messages/s.
fn tokio_pairs(workers: usize, pairs: usize, rounds: u64) -> Result<f64> {
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?
    };
    rt.block_on(async move {
        let t = Instant::now();
        let mut games = Vec::new();
        for _ in 0..pairs {
            let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(WINDOW as usize * 2);
            let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(WINDOW as usize * 2);
            let b = tokio::spawn(async move {
                while let Some(n) = ping_rx.recv().await {
                    if pong_tx.send(n).await.is_err() {
                        break;
                    }
                }
            });
            let a = tokio::spawn(async move {
                let mut sent = 0u64;
                let mut got = 0u64;
                while sent < rounds.min(WINDOW as u64) {
                    sent += 1;
                    ping_tx.send(sent).await?;
                }
                while got < rounds {
                    let Some(_) = pong_rx.recv().await else { anyhow::bail!("pong channel closed") };
                    got += 1;
                    if sent < rounds {
                        sent += 1;
                        ping_tx.send(sent).await?;
                    }
                }
                Ok::<u64, anyhow::Error>(got)
            });
            games.push((a, b));
        }
        for (a, b) in games {
            let got = a.await??;
            ensure!(got == rounds, "tokio pair got {got} of {rounds}");
            b.abort();
        }
        Ok((2 * rounds * pairs as u64) as f64 / t.elapsed().as_secs_f64())
    })
}

/// Two threads bouncing a counter over a pair of reactor-ring SPSC rings;
/// ns per round trip (median over chunks).
fn ring_round_trip(rounds: u64) -> Result<f64> {
    let (mut ping_tx, mut ping_rx) = reactor_ring::spsc::<u64>(64);
    let (mut pong_tx, mut pong_rx) = reactor_ring::spsc::<u64>(64);
    let echo = std::thread::spawn(move || {
        let mut backoff = 0u32;
        loop {
            match ping_rx.try_pop() {
                Some(u64::MAX) => return,
                Some(v) => {
                    backoff = 0;
                    while pong_tx.try_push(v).is_err() {
                        std::hint::spin_loop();
                    }
                }
                None => {
                    backoff += 1;
                    if backoff > 1 << 14 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    });
    let mut chunks = Vec::new();
    let chunk = 10_000u64.min(rounds);
    let mut v = 0u64;
    for _ in 0..rounds / chunk {
        let t = Instant::now();
        for _ in 0..chunk {
            v += 1;
            while ping_tx.try_push(v).is_err() {
                std::hint::spin_loop();
            }
            let mut spins = 0u32;
            let back = loop {
                if let Some(b) = pong_rx.try_pop() {
                    break b;
                }
                spins += 1;
                if spins > 1 << 14 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            };
            ensure!(back == v, "ring echoed {back} for {v}");
        }
        chunks.push(t.elapsed().as_nanos() as f64 / chunk as f64);
    }
    while ping_tx.try_push(u64::MAX).is_err() {
        std::hint::spin_loop();
    }
    echo.join().expect("echo thread");
    Ok(median(chunks))
}

fn std_round_trip(rounds: u64) -> Result<f64> {
    let (ping_tx, ping_rx) = std::sync::mpsc::sync_channel::<u64>(64);
    let (pong_tx, pong_rx) = std::sync::mpsc::sync_channel::<u64>(64);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = ping_rx.recv() {
            if pong_tx.send(v).is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    for v in 0..rounds {
        ping_tx.send(v)?;
        ensure!(pong_rx.recv()? == v, "std echo mismatch");
    }
    let dt = t.elapsed().as_nanos() as f64 / rounds as f64;
    drop(ping_tx);
    echo.join().expect("echo thread");
    Ok(dt)
}
