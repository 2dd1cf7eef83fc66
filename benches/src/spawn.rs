//! Reactor spawn rate and time per spawn.
//!
//! Measured: `Runtime::spawn` of N `counter` reactors, kept alive (this
//! instantiates and runs the guest's init entry point). Baseline: plain
//! wasmtime instantiation of the same module bytes on a default
//! `wasmtime::Engine` — a `Linker` whose imports are trap stubs, one fresh
//! `Store` per instance, instances kept alive. Also shown: the same plain
//! instantiation on the host's engine configuration, which separates what the
//! configuration costs from what the runtime adds (WASI context, init call,
//! bookkeeping).

use crate::harness::{Figure, Opts, Report, load_guest, median_of, progress, timed};
use anyhow::{Context as _, Result, ensure};
use host::protocols::CounterMsg;
use host::{Runtime, RuntimeConfig};
use wasmtime::{Instance, Linker, Module, Store};

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let (n, reps) = if opts.quick { (300, 3) } else { (10_000, 5) };
    let mut report = Report::new("spawn", "reactor spawn rate and time per instantiate");
    report.param("reactors_per_rep", n);
    report.param("reps", reps);

    let engine = crate::harness::engine()?;
    let (module, bytes) = load_guest(&engine, "counter")?;

    // Correctness: a spawned counter starts from its init argument and counts.
    {
        let mut rt = Runtime::new(engine.clone(), RuntimeConfig::default());
        let a = rt.spawn_with(&module, &41u64)?;
        rt.send_typed(a, &CounterMsg::Add(1))?;
        let got: u64 = rt.call_typed(a, &CounterMsg::Get)?;
        ensure!(got == 42, "counter spawned with 41 and sent Add(1) answered Get with {got}, not 42");
    }

    progress(format!("spawn: {reps} x {n} counter reactors through Runtime::spawn"));
    let init = postcard::to_allocvec(&0u64)?;
    let host_us = median_of(reps, || -> Result<f64> {
        let mut rt = Runtime::new(engine.clone(), RuntimeConfig::default());
        let (spawned, dt) = timed(|| -> Result<()> {
            for _ in 0..n {
                rt.spawn(&module, &init)?;
            }
            Ok(())
        });
        spawned?;
        ensure!(rt.stats().live == n, "{} reactors alive after {n} spawns", rt.stats().live);
        drop(rt);
        Ok(dt.as_secs_f64() * 1e6 / n as f64)
    })?;

    progress("spawn: baseline, plain wasmtime on a default engine");
    let default_us = plain_instantiate(&wasmtime::Engine::default(), &bytes, n, reps)?;
    progress("spawn: plain wasmtime on the host's engine configuration");
    let host_config_us = plain_instantiate(engine.wasmtime(), &bytes, n, reps)?;

    const BASELINE: &str = "wasmtime Instance::new, default Engine";
    report.push(Figure::new("time per spawn (Runtime::spawn, incl. init)", host_us, "µs").baseline(BASELINE, default_us).below(10.0));
    report.push(
        Figure::new("spawn rate", 1e6 / host_us, "reactors/s").baseline(BASELINE, 1e6 / default_us),
    );
    report.push(
        Figure::new("time per plain instantiate, host engine config", host_config_us, "µs")
            .baseline(BASELINE, default_us)
            .below(10.0),
    );
    report.note(format!(
        "of the {:.2} µs per spawn, {:.2} µs is plain instantiation on the host's engine config; the rest is the \
         runtime's share (store + WASI context, init entry point, bookkeeping)",
        host_us, host_config_us
    ));
    Ok(report)
}

/// Median µs per `Linker::instantiate` of `bytes` on `engine`, with a fresh
/// store per instance and every instance kept alive until the rep ends.
fn plain_instantiate(engine: &wasmtime::Engine, bytes: &[u8], n: usize, reps: usize) -> Result<f64> {
    let module = Module::new(engine, bytes).context("compiling counter on the baseline engine")?;
    let mut linker: Linker<()> = Linker::new(engine);
    linker.define_unknown_imports_as_traps(&module)?;
    // Correctness: the instance exists and has counter's memory.
    {
        let mut store = Store::new(engine, ());
        let i = linker.instantiate(&mut store, &module)?;
        let mem = i.get_memory(&mut store, "memory").context("counter exports no memory")?;
        ensure!(mem.data_size(&store) > 0, "the plain instance has an empty memory");
    }
    median_of(reps, || -> Result<f64> {
        let mut kept: Vec<(Store<()>, Instance)> = Vec::with_capacity(n);
        let (made, dt) = timed(|| -> Result<()> {
            for _ in 0..n {
                let mut store = Store::new(engine, ());
                let i = linker.instantiate(&mut store, &module)?;
                kept.push((store, i));
            }
            Ok(())
        });
        made?;
        drop(kept);
        Ok(dt.as_secs_f64() * 1e6 / n as f64)
    })
}
