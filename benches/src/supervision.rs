//! Supervision in a `host node` process, with the `overseer` guest: a
//! supervisor of 8 durable (`synced`) members of its own module.
//!
//! - **Group restart**: a member fails (a request that panics it, answered
//!   with the failure once the member is restarted); measured from that
//!   request sent to every member of the group having answered a request
//!   sent after its answer (they wait in their kept mailboxes while they
//!   restart), for one-for-one resumed (one member restarted), one-for-all
//!   resumed and fresh, rest-for-one fresh (the first member fails: all
//!   restart); no backoff. Each failure also leaves a post-mortem bundle
//!   (files copied and synced). Baseline in the same run: the same
//!   requests with no failure.
//! - **Monitor**: a monitored plain reactor fails; measured from the
//!   failure's answer to the watcher having its `Down` (polled with a call,
//!   so it includes up to one call's round trip), against that round trip.
#![forbid(unsafe_code)]

use crate::failover::{free_port, spawn, spec};
use crate::harness::{Figure, Opts, Report, median, progress};
use crate::netlab::node::{Node, host_binary, write_secret};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const MEMBERS: usize = 8;
const T: Duration = Duration::from_secs(30);

fn call(node: &Node, to: u64, msg: Value) -> Result<Value> {
    node.admin.call_reactor(to, &msg, T)?.wait(T)
}

/// A supervisor declaring `strategy`/`restart` and its members.
fn group(node: &Node, strategy: &str, restart: &str) -> Result<(u64, Vec<u64>)> {
    let sup = spawn(node, "overseer", json!(0), "synced")?;
    let spec = json!({"Supervise": {"strategy": strategy, "restart": restart, "max_restarts": 100_000, "within_ms": 1000, "attempts": 1, "backoff_ms": 0}});
    ensure!(call(node, sup, spec)? == json!("ok"), "the supervisor refused its spec");
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let a = call(node, sup, json!({"Spawn": {"n": i}}))?.as_u64().context("no address")?;
        ensure!(a != 0, "a durable spawn was refused");
        call(node, a, json!({"Add": 1}))?;
        members.push(a);
    }
    Ok((sup, members))
}

/// Sends one request to every member at once and waits for all answers:
/// ms.
fn all_answer(node: &Node, members: &[u64]) -> Result<f64> {
    let t = Instant::now();
    let pending: Vec<_> = members.iter().map(|&a| node.admin.call_reactor(a, &json!("Get"), T)).collect::<Result<_>>()?;
    for p in pending {
        p.wait(T)?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Sends `first` to the first member, waits for its answer, then one
/// request to every member: ms in all, each of `rounds` rounds. With
/// `"Crash"` the first member fails each time (its group restarts; the
/// answer to the crash comes when it was restarted).
fn rounds_of(node: &Node, members: &[u64], first: &str, rounds: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let r = node.admin.call_reactor(members[0], &json!(first), T)?.wait(T);
        if first == "Crash" {
            ensure!(r.as_ref().is_err_and(|e| e.to_string().contains("crashed on command")), "the crash answered {r:?}");
        } else {
            r?;
        }
        all_answer(node, members)?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let host = host_binary()?;
    let rounds = if opts.quick { 5 } else { 30 };
    let mut report = Report::new("supervision", "supervision groups and monitors in a node process");
    report.param("members", MEMBERS);
    report.param("rounds", rounds);
    let dir = tempfile::Builder::new().prefix("supervision-bench-").tempdir()?;
    let secret = dir.path().join("secret");
    write_secret(&secret, "the supervision bench's secret")?;
    let mut s = spec(1, &dir.path().join("n1"), &secret, free_port()?, vec![], None);
    s.extra.extend(["--max-restarts", "100000", "--restart-window", "1"].map(String::from));
    let node = Node::start(&host, s)?;

    let mut figures = Vec::new();
    let mut baseline = Vec::new();
    for (strategy, restart) in [("one_for_one", "resume"), ("one_for_all", "resume"), ("one_for_all", "fresh"), ("rest_for_one", "fresh")] {
        progress(format!("supervision: {strategy}, {restart}, {rounds} failures"));
        let (_, members) = group(&node, strategy, restart)?;
        baseline.extend(rounds_of(&node, &members, "Get", rounds)?);
        let t = rounds_of(&node, &members, "Crash", rounds)?;
        // Fresh members start over (the first one at 0, from its init);
        // resumed ones keep their state.
        let first = call(&node, members[0], json!("Get"))?;
        let want = if restart == "fresh" { json!(0) } else { json!(1) };
        ensure!(first == want, "{strategy}/{restart}: the failed member is at {first}, not {want}");
        figures.push((strategy, restart, median(t.clone()), t.iter().copied().fold(0.0, f64::max)));
    }
    let base = median(baseline);
    for (strategy, restart, p50, max) in figures {
        let what = if strategy == "one_for_one" { "1 member restarted" } else { "all 8 restarted" };
        report.push(
            Figure::new(format!("{strategy}, {restart} ({what}): a member's failure to all 8 answering again, median"), p50, "ms")
                .baseline("the same requests, no failure", base),
        );
        report.push(Figure::new(format!("{strategy}, {restart}: worst of {rounds}"), max, "ms"));
    }

    progress("supervision: monitors");
    let watcher = spawn(&node, "overseer", json!(0), "none")?;
    let (mut downs, mut rtts) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let target = spawn(&node, "overseer", json!(0), "none")?;
        ensure!(call(&node, watcher, json!({"Monitor": target}))? == json!("ok"));
        let before = call(&node, watcher, json!("Downs"))?.as_array().map_or(0, Vec::len);
        let t = Instant::now();
        call(&node, watcher, json!("Get"))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(call(&node, target, json!("Crash")).is_err());
        let t = Instant::now();
        loop {
            if call(&node, watcher, json!("Downs"))?.as_array().map_or(0, Vec::len) > before {
                break;
            }
            ensure!(t.elapsed() < T, "no Down within {T:?}");
        }
        downs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report.push(
        Figure::new("monitor: failure answered to the watcher holding its Down, median", median(downs), "ms")
            .baseline("one call's round trip", median(rtts)),
    );
    let status = node.admin.call(json!({"op": "status"}))?;
    let sup = &status["supervision"];
    report.note(format!(
        "counted by the node: {} restarts, {} group restarts, {} downs, {} restart failures",
        sup["restarts"], sup["group_restarts"], sup["downs"], sup["restart_failures"]
    ));
    node.stop()?;
    Ok(report)
}
