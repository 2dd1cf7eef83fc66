//! Durable restart: a `host node` holding N `counter` reactors (10,000; 1,000
//! with `--quick`), each with its own count, is stopped gracefully (it
//! checkpoints every reactor) and started again on the same data
//! directory. Measured from the moment the process is started:
//! - **serving**: its admin socket answers;
//! - **first restored reactor answers**: a call to one restored reactor,
//!   by its old address, returns its count;
//! - **all answer**: every restored reactor answered its count (checked),
//!   calls pipelined on one admin connection.
//!
//! Baseline, same run: the same node started on an empty data directory,
//! until its admin socket answers. Also reported: the graceful stop (its
//! checkpoint of every reactor) and the checkpoint's size.
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, median, progress};
use crate::netlab::node::{Node, NodeSpec, host_binary, write_secret};
use anyhow::{Result, ensure};
use protocols::CounterMsg;
use serde_json::json;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn spec(dir: &Path, secret: &Path, listen: SocketAddr) -> NodeSpec {
    NodeSpec {
        id: 1,
        name: "durable".into(),
        netns: String::new(),
        extra: vec!["--checkpoint-every".into(), "0".into()],
        listen,
        seeds: vec![],
        lanes: Some(1),
        channels: vec![],
        shards: None,
        cluster: "durable-bench".into(),
        secret_file: secret.to_owned(),
        data_dir: dir.to_owned(),
    }
}

/// Calls `Get` on every reactor, pipelined; checks each count.
fn check_all(node: &Node, reactors: &[(u64, u64)]) -> Result<()> {
    let mut pending = Vec::with_capacity(reactors.len());
    for chunk in reactors.chunks(256) {
        for &(a, want) in chunk {
            pending.push((node.admin.call_reactor(a, &CounterMsg::Get, Duration::from_secs(60))?, want));
        }
        for (p, want) in pending.drain(..) {
            let v = p.wait(Duration::from_secs(60))?;
            ensure!(v == json!(want), "a restored counter answered {v}, not {want}");
        }
    }
    Ok(())
}

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let host = host_binary()?;
    let n: u64 = if opts.quick { 1_000 } else { 10_000 };
    let reps = if opts.quick { 2 } else { 3 };
    let mut report = Report::new("durable", "durable restart: a node's reactors back at their addresses after a stop");
    report.param("reactors", n);
    report.param("reps", reps);
    let (mut serving, mut first, mut all, mut empty, mut stop, mut bytes) = (vec![], vec![], vec![], vec![], vec![], 0u64);
    for rep in 0..reps {
        let dir = tempfile::Builder::new().prefix("durable-bench-").tempdir()?;
        let secret = dir.path().join("secret");
        write_secret(&secret, "the durable bench's secret")?;
        // Baseline: an empty node's start.
        let t = Instant::now();
        let base = Node::start(&host, spec(&dir.path().join("empty"), &secret, free_port()?))?;
        empty.push(t.elapsed().as_secs_f64() * 1e3);
        base.stop()?;

        progress(format!("durable: rep {} of {reps}, spawning {n} counters", rep + 1));
        let data = dir.path().join("node");
        let listen = free_port()?;
        let node = Node::start(&host, spec(&data, &secret, listen))?;
        let mut reactors = Vec::with_capacity(n as usize);
        for i in 0..n {
            let a = node.spawn("counter", json!(i))?;
            reactors.push((a, i));
        }
        check_all(&node, &reactors)?;
        let t = Instant::now();
        let stopped = node.stop_within(Duration::from_secs(600))?;
        stop.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(stopped, "the node did not stop by itself");
        bytes = std::fs::read_dir(data.join("checkpoints"))?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();

        progress(format!("durable: rep {} of {reps}, restarting", rep + 1));
        let t = Instant::now();
        let node = Node::start(&host, spec(&data, &secret, listen))?;
        serving.push(t.elapsed().as_secs_f64() * 1e3);
        let (a, want) = reactors[reactors.len() / 2];
        let v = node.admin.call_reactor(a, &CounterMsg::Get, Duration::from_secs(60))?.wait(Duration::from_secs(60))?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(v == want, "restored counter {a:#x} answered {v}, not {want}");
        check_all(&node, &reactors)?;
        all.push(t.elapsed().as_secs_f64() * 1e3);
        node.stop_within(Duration::from_secs(600))?;
    }
    let empty = median(empty);
    report.push(
        Figure::new(format!("restart with {n} reactors: admin socket answers"), median(serving), "ms")
            .baseline("empty node start", empty),
    );
    report.push(
        Figure::new(format!("restart with {n} reactors: first restored reactor answers"), median(first), "ms")
            .baseline("empty node start", empty)
            .below(1000.0),
    );
    report.push(
        Figure::new(format!("restart with {n} reactors: all answered (checked)"), median(all), "ms")
            .baseline("empty node start", empty),
    );
    report.push(Figure::new(format!("graceful stop, checkpointing {n} reactors"), median(stop), "ms").no_ratio());
    report.push(Figure::new("checkpoint size", bytes as f64 / (1 << 20) as f64, "MiB").no_ratio());
    report.note("times from starting the process; the node's compile cache is warm after the first start");
    Ok(report)
}
