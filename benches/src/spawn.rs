//! Reactor spawn rate and time per spawn.
//!
//! Measured: `Shard::spawn` of N `counter` reactors, kept alive (this
//! instantiates and runs the guest's init entry point). Baseline: plain
//! wasmtime instantiation of the same module bytes on a default
//! `wasmtime::Engine` — a `Linker` whose imports are trap stubs, one fresh
//! `Store` per instance, instances kept alive. Also shown: the same plain
//! instantiation on the host's engine configuration, which separates what the
//! configuration costs from what the runtime adds (WASI context, init call,
//! bookkeeping).
#![forbid(unsafe_code)]

use crate::harness::{
    Figure, Opts, Report, load_guest, median, median_of, minor_faults, page_touch_ns, progress, timed,
};
use anyhow::{Context as _, Result, ensure};
use protocols::CounterMsg;
use reactor_runtime::{Shard, ShardConfig};
use wasmtime::{Instance, Linker, Module, Store};

/// The `report` plot this scenario feeds.
pub(crate) const SPAWN_CHART: &str = "time per spawn (µs), by runtime";

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let (n, reps) = if opts.quick { (300, 3) } else { (10_000, 5) };
    let mut report = Report::new("spawn", "reactor spawn rate and time per instantiate");
    report.param("reactors_per_rep", n);
    report.param("reps", reps);

    let engine = crate::harness::engine()?;
    let (module, bytes) = load_guest(&engine, "counter")?;

    // Correctness: a spawned counter starts from its init argument and counts.
    {
        let mut rt = Shard::new(engine.clone(), ShardConfig::default());
        let a = rt.spawn_with(&module, &41u64)?;
        rt.send_typed(a, &CounterMsg::Add(1))?;
        let got: u64 = rt.call_typed(a, &CounterMsg::Get)?;
        ensure!(got == 42, "counter spawned with 41 and sent Add(1) answered Get with {got}, not 42");
    }

    progress(format!("spawn: {reps} x {n} counter reactors through Shard::spawn"));
    let init = postcard::to_allocvec(&0u64)?;
    let mut faults = Vec::new();
    let host_us = median_of(reps, || -> Result<f64> {
        let mut rt = Shard::new(engine.clone(), ShardConfig::default());
        let f0 = minor_faults();
        let (spawned, dt) = timed(|| -> Result<()> {
            for _ in 0..n {
                rt.spawn(&module, &init)?;
            }
            Ok(())
        });
        spawned?;
        faults.push((minor_faults() - f0) as f64 / n as f64);
        ensure!(rt.stats().live == n, "{} reactors alive after {n} spawns", rt.stats().live);
        drop(rt);
        Ok(dt.as_secs_f64() * 1e6 / n as f64)
    })?;
    let host_faults = median(faults);

    progress("spawn: baseline, plain wasmtime on a default engine");
    let default = plain_instantiate(&wasmtime::Engine::default(), &bytes, n, reps)?;
    progress("spawn: plain wasmtime on the host's engine configuration");
    let host_config = plain_instantiate(engine.wasmtime(), &bytes, n, reps)?;
    progress("spawn: first-touch cost of a fresh page");
    let touch_ns = page_touch_ns(reps);

    const BASELINE: &str = "wasmtime Instance::new, default Engine";
    report.push(
        Figure::new("time per spawn (Shard::spawn, incl. init)", host_us, "µs")
            .baseline(BASELINE, default.us)
            .below(10.0),
    );
    report.push(Figure::new("spawn rate", 1e6 / host_us, "reactors/s").baseline(BASELINE, 1e6 / default.us));
    report.push(
        Figure::new("time per plain instantiate, host engine config", host_config.us, "µs")
            .baseline(BASELINE, default.us)
            .below(10.0),
    );
    report.push(
        Figure::new("page faults per spawn", host_faults, "faults").baseline(BASELINE, default.faults).no_ratio(),
    );
    report.push(
        Figure::new("page faults per plain instantiate, host engine config", host_config.faults, "faults")
            .baseline(BASELINE, default.faults)
            .no_ratio(),
    );
    report.push(Figure::new("first touch of a fresh 4 KiB page (this machine)", touch_ns, "ns"));
    // Erlang, same run: the target is at most its spawn and at most 10 µs.
    let (erl, why) = crate::erlang::try_measure(if opts.quick { 10_000 } else { 100_000 });
    report.point(SPAWN_CHART, "reactor host (Shard::spawn, incl. init)", 1.0, host_us);
    report.point(SPAWN_CHART, "plain wasmtime, default engine", 2.0, default.us);
    if let Some(e) = &erl {
        report.point(SPAWN_CHART, "Erlang/OTP spawn", 3.0, e.spawn_us);
        report.push(
            Figure::new("time per spawn (Shard::spawn, incl. init) against Erlang", host_us, "µs")
                .baseline(format!("Erlang/OTP {} spawn, same run", e.otp), e.spawn_us)
                .at_most(e.spawn_us.min(10.0)),
        );
    }
    if let Some(w) = why {
        report.note(w);
    }
    report.push(
        Figure::new("page-fault floor per spawn (faults x first touch)", host_faults * touch_ns / 1e3, "µs")
            .baseline("time per spawn", host_us),
    );
    report.note(format!(
        "of the {host_us:.2} µs per spawn, {:.2} µs is plain instantiation on the host's engine config; the rest is \
         the runtime's share (store + WASI context, init entry point, bookkeeping)",
        host_config.us
    ));
    report.note(
        "the host engine copies data segments into fresh pages (memory_init_cow off, one mapping per memory), \
         so every spawn faults in and zeroes its pages; the default engine maps them copy-on-write from an image \
         and faults nothing at instantiation",
    );
    Ok(report)
}

/// A plain instantiation's cost.
#[derive(Debug)]
struct Plain {
    /// Median µs per instance.
    us: f64,
    /// Median minor page faults per instance.
    faults: f64,
}

/// Far enough away that the host engine's preemption clock (epoch
/// interruption, which traps even during instantiation at the default
/// deadline of 0) never fires; a no-op on the default engine.
const EPOCH_DEADLINE: u64 = 1 << 40;

/// Median µs and page faults per `Linker::instantiate` of `bytes` on `engine`, with a fresh
/// store per instance and every instance kept alive until the rep ends.
fn plain_instantiate(engine: &wasmtime::Engine, bytes: &[u8], n: usize, reps: usize) -> Result<Plain> {
    let module =
        Module::new(engine, bytes).map_err(anyhow::Error::from).context("compiling counter on the baseline engine")?;
    let mut linker: Linker<()> = Linker::new(engine);
    linker.define_unknown_imports_as_traps(&module)?;
    // Correctness: the instance exists and has counter's memory.
    {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(EPOCH_DEADLINE);
        let i = linker.instantiate(&mut store, &module)?;
        let mem = i.get_memory(&mut store, "memory").context("counter exports no memory")?;
        ensure!(mem.data_size(&store) > 0, "the plain instance has an empty memory");
    }
    let mut faults = Vec::new();
    let us = median_of(reps, || -> Result<f64> {
        let mut kept: Vec<(Store<()>, Instance)> = Vec::with_capacity(n);
        let f0 = minor_faults();
        let (made, dt) = timed(|| -> Result<()> {
            for _ in 0..n {
                let mut store = Store::new(engine, ());
                store.set_epoch_deadline(EPOCH_DEADLINE);
                let i = linker.instantiate(&mut store, &module)?;
                kept.push((store, i));
            }
            Ok(())
        });
        made?;
        faults.push((minor_faults() - f0) as f64 / n as f64);
        drop(kept);
        Ok(dt.as_secs_f64() * 1e6 / n as f64)
    })?;
    Ok(Plain { us, faults: median(faults) })
}
