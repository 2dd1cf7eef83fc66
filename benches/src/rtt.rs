//! Local request–response round trip through two reactors.
//!
//! A host call `PingMsg::Play` makes `pingpong` reactor A run R sequential
//! exchanges with its partner B, reactor to reactor, and answer with a
//! `PingReport` when the last one completes; time per exchange is the call's
//! elapsed time over R. Variants: request→reply exchanges (`requests: true`)
//! and one-way ping/pong, each with one exchange in flight (latency) and with
//! 64 (throughput); plus the round trip of a call from the host into a
//! reactor (`call_typed(Echo)`).
//!
//! Baseline: two native tokio tasks on a current-thread runtime doing the
//! same exchanges over `tokio::sync::mpsc` (a request carries a oneshot for
//! its reply; ping/pong uses one channel each way).
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, load_guest, median_of, progress, timed};
use anyhow::{Result, ensure};
use protocols::{PingInit, PingMsg, PingReport};
use reactor_runtime::{LoadedModule, Shard, ShardConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const WINDOW: u32 = 64;

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let (rounds, calls, reps) = if opts.quick { (2_000, 2_000, 3) } else { (100_000, 100_000, 5) };
    let mut report = Report::new("rtt", "local request-response round trip through two reactors");
    report.param("rounds", rounds);
    report.param("host_calls", calls);
    report.param("window", WINDOW);
    report.param("reps", reps);

    let engine = crate::harness::engine()?;
    let (module, _) = load_guest(&engine, "pingpong")?;
    let mut rt = Shard::new(engine.clone(), ShardConfig::default());

    // Correctness (and warm-up): a short game of each kind, checked.
    for requests in [true, false] {
        for window in [1, WINDOW] {
            play(&mut rt, &module, 100, window, requests)?;
        }
    }

    progress("rtt: reactor <-> reactor");
    let req1 = median_of(reps, || play(&mut rt, &module, rounds, 1, true))?;
    let ping1 = median_of(reps, || play(&mut rt, &module, rounds, 1, false))?;
    let req64 = median_of(reps, || play(&mut rt, &module, rounds, WINDOW, true))?;
    let ping64 = median_of(reps, || play(&mut rt, &module, rounds, WINDOW, false))?;

    progress("rtt: host -> reactor calls");
    let echo = rt.spawn_with(&module, &PingInit::default())?;
    let host_call = median_of(reps, || -> Result<f64> {
        let (r, dt) = timed(|| -> Result<()> {
            for n in 0..calls {
                let back: u64 = rt.call_typed(echo, &PingMsg::Echo(n))?;
                ensure!(back == n, "Echo({n}) answered {back}");
            }
            Ok(())
        });
        r?;
        Ok(per_ns(dt, calls))
    })?;

    progress("rtt: baseline, tokio tasks over mpsc");
    let tokio = tokio::runtime::Builder::new_current_thread().build()?;
    let base_req1 = median_of(reps, || tokio_request_reply(&tokio, rounds))?;
    let base_ping1 = median_of(reps, || tokio_ping_pong(&tokio, rounds, 1))?;
    let base_ping64 = median_of(reps, || tokio_ping_pong(&tokio, rounds, WINDOW))?;

    const REQ: &str = "tokio tasks, mpsc request + oneshot reply";
    const PING: &str = "tokio tasks, mpsc ping/pong";
    let w = WINDOW;
    report.push(
        Figure::new("reactor<->reactor request-response, window 1", req1, "ns/exchange").baseline(REQ, base_req1),
    );
    report.push(
        Figure::new("reactor<->reactor one-way ping/pong, window 1", ping1, "ns/exchange").baseline(PING, base_ping1),
    );
    report.push(Figure::new("host->reactor call (call_typed Echo)", host_call, "ns/call").baseline(REQ, base_req1));
    // Targets: at most 1.5 x tokio, and at most Erlang's local round trip.
    report.push(
        Figure::new("reactor<->reactor request-response against tokio", req1, "ns/exchange").baseline(REQ, base_req1).ratio_at_most(1.5),
    );
    let (erl, why) = crate::erlang::try_measure(10_000);
    if let Some(e) = &erl {
        let ns = e.round_trip_us * 1e3;
        report.push(
            Figure::new("reactor<->reactor request-response against Erlang", req1, "ns/exchange")
                .baseline(format!("Erlang/OTP {} local request/response, same run", e.otp), ns)
                .at_most(ns),
        );
    }
    if let Some(w) = why {
        report.note(w);
    }
    report.push(
        Figure::new(format!("reactor<->reactor request-response, window {w}"), 1e9 / req64, "exchanges/s")
            .baseline(format!("{PING}, window {w}"), 1e9 / base_ping64),
    );
    report.push(
        Figure::new(format!("reactor<->reactor one-way ping/pong, window {w}"), 1e9 / ping64, "exchanges/s")
            .baseline(format!("{PING}, window {w}"), 1e9 / base_ping64),
    );
    report.note(format!(
        "an exchange is a message each way; with window {w}, time per exchange is {} ns (requests) and {} ns \
         (ping/pong) against {} ns for tokio",
        crate::harness::num(req64),
        crate::harness::num(ping64),
        crate::harness::num(base_ping64),
    ));
    Ok(report)
}

fn per_ns(dt: Duration, n: u64) -> f64 {
    dt.as_secs_f64() * 1e9 / n as f64
}

/// Spawns a fresh player A and its partner B, then times one `Play` of
/// `rounds` exchanges; checks the report and returns ns per exchange.
fn play(rt: &mut Shard, module: &Arc<LoadedModule>, rounds: u64, window: u32, requests: bool) -> Result<f64> {
    let a = rt.spawn_with(module, &PingInit::default())?;
    // Zero rounds: A spawns B and answers at once, so the timed call
    // includes no spawn.
    let setup: PingReport = rt.call_typed(a, &PingMsg::Play { peer: None, rounds: 0, window, requests })?;
    let peer = Some(setup.peer);
    let start = Instant::now();
    let got: PingReport = rt.call_typed(a, &PingMsg::Play { peer, rounds, window, requests })?;
    let dt = start.elapsed();
    let done = if requests { got.echoes } else { got.pongs };
    ensure!(
        done == rounds && got.peer == setup.peer,
        "Play of {rounds} rounds (window {window}, requests {requests}) reported {got:?}"
    );
    Ok(per_ns(dt, rounds))
}

/// `rounds` sequential requests from one task to another, each answered on a
/// oneshot; ns per round trip.
fn tokio_request_reply(rt: &tokio::runtime::Runtime, rounds: u64) -> Result<f64> {
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(64);
        let server = tokio::spawn(async move {
            while let Some((n, reply)) = rx.recv().await {
                let _ = reply.send(n);
            }
        });
        let client = tokio::spawn(async move {
            let start = Instant::now();
            for n in 0..rounds {
                let (otx, orx) = oneshot::channel();
                tx.send((n, otx)).await.map_err(|_| anyhow::anyhow!("server gone"))?;
                let back = orx.await?;
                ensure!(back == n, "echo of {n} came back as {back}");
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        });
        let dt = client.await??;
        server.await?;
        Ok(per_ns(dt, rounds))
    })
}

/// `rounds` one-way pings answered by one-way pongs between two tasks, with
/// `window` pings in flight; ns per exchange.
fn tokio_ping_pong(rt: &tokio::runtime::Runtime, rounds: u64, window: u32) -> Result<f64> {
    rt.block_on(async move {
        let cap = window as usize * 2;
        let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(cap);
        let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(cap);
        let ponger = tokio::spawn(async move {
            let mut pings = 0u64;
            while let Some(n) = ping_rx.recv().await {
                pings += 1;
                if pong_tx.send(n).await.is_err() {
                    break;
                }
            }
            pings
        });
        let pinger = tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < rounds.min(window as u64) {
                sent += 1;
                ping_tx.send(sent).await.map_err(|_| anyhow::anyhow!("ponger gone"))?;
            }
            let mut pongs = 0u64;
            while pongs < rounds {
                pong_rx.recv().await.ok_or_else(|| anyhow::anyhow!("ponger gone"))?;
                pongs += 1;
                if sent < rounds {
                    sent += 1;
                    ping_tx.send(sent).await.map_err(|_| anyhow::anyhow!("ponger gone"))?;
                }
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        });
        let dt = pinger.await??;
        let pings = ponger.await?;
        ensure!(pings == rounds, "ponger saw {pings} pings of {rounds}");
        Ok(per_ns(dt, rounds))
    })
}
