//! Benchmarks of the reactor host against baselines and the physical limit.
//!
//! `cargo run --profile perf -p benches -- <scenario> [--json] [--quick]`
//!
//! Every scenario checks that the thing it times gives the right answer
//! before timing it, measures its baseline in the same run, repeats each
//! measurement and reports the median. The output is a table per scenario
//! (name, value, unit, baseline, baseline value, ratio = value / baseline,
//! and the project's target where there is one), or with `--json` one JSON
//! object holding the same.
//!
//! # Layout
//! - `harness` — figures, reports, table and JSON output, timing, `/proc`
//!   readings.
//! - `spawn` — reactor spawn rate and time per spawn vs. plain wasmtime
//!   instantiation.
//! - `density` — resident memory and mappings per idle reactor at 10,000 and
//!   100,000 alive.
//! - `rtt` — request–response round trip between two reactors vs. two tokio
//!   tasks over mpsc.
//! - `ring` — the reactor-ring SPSC and MPSC rings alone vs. rtrb,
//!   crossbeam, tokio mpsc and the disruptor crate.
//! - `e2e` — end to end through Wasm on the multi-core runtime (one shard,
//!   across shards, request–response latency, bare ring round trip).
//! - `overlay` — what each overlay costs per node as the cluster grows
//!   (simulated: 32, 128, 1,024 nodes); our HyParView beside the
//!   iroh-gossip adapter it replaced (`overlay_iroh`).
//! - `netlab` — the network lab: two namespaces joined by TUN devices and a
//!   user-space delay line (emulated RTT), calibrated; nodes run inside it.
//! - `partisan` — parallel, affinitized connections (lanes) against one
//!   connection per node pair, between two `host node` processes over the
//!   lab (Partisan, USENIX ATC '19), beside Erlang distribution between
//!   two `erl` nodes in the same lab (`partisan_erlang`). Needs root and
//!   the `host` binary.
//! - `migrate` — live migration of a `migrant` reactor under the load of 8
//!   `loadgen`s between two `host node` processes (loopback, and over the
//!   lab at 1 ms and 20 ms as root): downtime, total time, bytes, rounds,
//!   load latency and lost/duplicated/reordered requests, against
//!   stop-and-copy and a raw TCP transfer of the state.
//! - `failover` — standby failover between three `host node` processes:
//!   the cost of each durability level on a call from another node, and a
//!   takeover after `kill -9` of the primary under load (client-visible
//!   gap, takeover time, calls lost or doubled) against a durable restart.
//! - `supervision` — supervision groups in a `host node` process: the time
//!   from a member's failure to its whole group answering again, per
//!   strategy and restart, against the same requests with no failure; a
//!   monitor's `Down` against a call's round trip.
//! - `journal` — journaling's cost at 50,000 messages/s for each durability
//!   level against no journal, bytes per record, replay speed against live,
//!   and opening the state at any message of a long journal.
mod crypto;
mod durable;
mod density;
mod e2e;
mod erlang;
mod failover;
mod harness;
mod journal;
mod migrate;
mod netlab;
mod overlay;
mod overlay_iroh;
mod partisan;
mod partisan_erlang;
mod report;
mod ring;
mod rtt;
mod snapshot;
mod spawn;
mod supervision;

use clap::{Parser, ValueEnum};
use harness::{Opts, Report};

/// Runs the reactor host's benchmarks.
#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the reactor host against baselines and the physical limit")]
struct Cli {
    /// Which scenario to run.
    scenario: Scenario,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Small sizes, so the run takes seconds (smoke test).
    #[arg(long)]
    quick: bool,
    /// Where `report` writes its results folder.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: std::path::PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Reactor spawn rate and time per spawn.
    Spawn,
    /// Resident memory per idle reactor, 10,000 and 100,000 alive.
    Density,
    /// Round trip between two reactors, and from the host into one.
    Rtt,
    /// SPSC ring alone vs rtrb, crossbeam, tokio mpsc, disruptor.
    RingSpsc,
    /// MPSC ring alone, 2/4/8 producers, vs the multi-producer baselines.
    RingMpsc,
    /// End to end through Wasm on the multi-core runtime: messages/s on one
    /// shard and across shards, request-response latency, ring round trip.
    E2e,
    /// Snapshot and restore of a kv reactor at 1 MB to 1 GB: full,
    /// copy-on-write, incremental, eager and lazy restore.
    Snapshot,
    /// Overlay cost per node (connections, control traffic, broadcast) at
    /// 32, 128 and 1,024 simulated nodes: full mesh, client-server,
    /// HyParView.
    Overlay,
    /// The network lab alone: the delay line between two namespaces,
    /// calibrated at 1 ms and 20 ms, and plain TCP's throughput over it.
    Netlab,
    /// Parallel, affinitized connections vs one connection per node pair
    /// (Partisan, ATC '19) between two nodes over the lab (needs root).
    Partisan,
    /// Encrypted vs plaintext node-to-node traffic: round trip and
    /// throughput between two node processes on loopback.
    Crypto,
    /// Durable restart: a node of 10,000 reactors stopped and started again
    /// on its data directory, until its reactors answer at their addresses.
    Durable,
    /// Live migration of a reactor (10 MiB to 1 GiB, dirtying 0-10 % of its
    /// pages/s) under load between two node processes, loopback and (root)
    /// 1 ms / 20 ms lab links, vs stop-and-copy and a raw TCP transfer.
    Migrate,
    /// Journal cost at 50,000 messages/s per durability level, record
    /// overhead, replay speed, opening the state at any message of a
    /// 1,000,000-message journal.
    Journal,
    /// Standby failover: the cost of each durability level, and a takeover
    /// after kill -9 of the primary under load vs a durable restart.
    Failover,
    /// Supervision groups: a member's failure to its group answering again
    /// per strategy, and a monitor's Down, in a node process.
    Supervision,
    /// The headline scenarios (spawn, density, rtt, e2e, snapshot, and
    /// migrate as root) into a results folder (`--out`): a markdown table of
    /// every figure and SVG plots.
    Report,
    /// All of the above but `journal`, `netlab`, `partisan` (they need root),
    /// `crypto`, `durable` and `migrate` (they build on the `host` binary).
    All,
}

fn main() -> anyhow::Result<()> {
    // The `migrate` scenario runs a copy of this executable as the sender
    // of its raw TCP transfer baseline.
    if let Ok(spec) = std::env::var(migrate::RAW_SENDER_ENV) {
        return migrate::raw_sender(&spec);
    }
    // The `crypto` scenario's plain TCP ping-pong baseline: its echo side.
    if let Ok(addr) = std::env::var(crypto::TCP_ECHO_ENV) {
        return crypto::tcp_echo(&addr);
    }
    let cli = Cli::parse();
    let opts = Opts { quick: cli.quick };
    if cli.scenario == Scenario::Report {
        let reports = report::run(opts, &cli.out)?;
        if cli.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "quick": cli.quick, "scenarios": reports }))?);
        } else {
            for r in &reports {
                println!("{}", r.table());
            }
        }
        return Ok(());
    }
    let chosen = match cli.scenario {
        Scenario::All => vec![
            Scenario::Spawn,
            Scenario::Density,
            Scenario::Rtt,
            Scenario::RingSpsc,
            Scenario::RingMpsc,
            Scenario::E2e,
            Scenario::Snapshot,
            Scenario::Overlay,
        ],
        s => vec![s],
    };
    let mut reports: Vec<Report> = Vec::new();
    for s in chosen {
        let report = match s {
            Scenario::Spawn => spawn::run(opts)?,
            Scenario::Density => density::run(opts)?,
            Scenario::Rtt => rtt::run(opts)?,
            Scenario::RingSpsc => ring::run_spsc(opts)?,
            Scenario::RingMpsc => ring::run_mpsc(opts)?,
            Scenario::E2e => e2e::run(opts)?,
            Scenario::Snapshot => snapshot::run(opts)?,
            Scenario::Overlay => overlay::run(opts)?,
            Scenario::Netlab => netlab::run(opts)?,
            Scenario::Partisan => partisan::run(opts)?,
            Scenario::Crypto => crypto::run(opts)?,
            Scenario::Durable => durable::run(opts)?,
            Scenario::Migrate => migrate::run(opts)?,
            Scenario::Journal => journal::run(opts)?,
            Scenario::Failover => failover::run(opts)?,
            Scenario::Supervision => supervision::run(opts)?,
            Scenario::All | Scenario::Report => unreachable!("expanded above"),
        };
        if !cli.json {
            println!("{}", report.table());
        }
        reports.push(report);
    }
    if cli.json {
        let out = serde_json::json!({ "quick": cli.quick, "scenarios": reports });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
