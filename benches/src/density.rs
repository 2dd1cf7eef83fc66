//! Resident memory per idle reactor with 10,000 and 100,000 reactors alive.
//!
//! Each phase spawns `counter` reactors in chunks; every reactor gets one
//! `Add(1)` and answers one `Get` (which must say 1), so its memory is touched
//! like a live reactor's. Process RSS (`/proc/self/statm`) and the mapping
//! count (`/proc/self/maps`) are read before and after; the difference per
//! reactor is the figure. Reactors are freed between phases by dropping the
//! runtime.
//!
//! Baselines: the physical lower bound (the pages counter's data segments
//! occupy, which every instance must hold privately), and the same number of
//! plain wasmtime instances on a default engine — which reserves several GiB
//! of address space and a few mappings per memory, so it is expected to stop
//! short of 100,000; the phase reports how far it got and why.
//!
//! A phase stops early, and says so, if a spawn fails (e.g. the kernel's
//! `vm.max_map_count`) or the system runs low on memory.
#![forbid(unsafe_code)]

use crate::harness::{
    Figure, KIB, Opts, Report, load_guest, mappings, max_map_count, mem_available, minor_faults, progress,
    resident_bytes, resident_split, trim_heap,
};
use anyhow::{Context as _, Result, ensure};
use protocols::CounterMsg;
use reactor_runtime::{Engine, LoadedModule, Shard, ShardConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Instance, Linker, Module, Store};

/// Reactors spawned between correctness checks and stop-condition checks.
const CHUNK: usize = 1000;
/// A phase stops when the system has less than this left.
const MEMORY_RESERVE: u64 = 2 << 30;

/// The `report` plot this scenario feeds.
pub(crate) const MEMORY_CHART: &str = "memory per idle actor (KB), by runtime";

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let counts: &[usize] = if opts.quick { &[500, 2_000] } else { &[10_000, 100_000] };
    let mut report = Report::new("density", "resident memory per idle reactor, reactors alive in one process");
    report.param("counts", format!("{counts:?}"));
    let limit = max_map_count();
    report.param("vm.max_map_count", limit);

    let engine = crate::harness::engine()?;
    let (module, bytes) = load_guest(&engine, "counter")?;
    let facts = ModuleFacts::of(&bytes)?;
    let bound_kb = facts.data_pages as f64 * 4.0;
    report.param("counter_initial_memory_kb", facts.initial_bytes / 1024);
    report.param("counter_data_segment_bytes", facts.data_bytes);
    let bound_name = format!("lower bound: data-segment pages ({} x 4 KiB)", facts.data_pages);

    // Erlang, same run, with the most processes of a phase.
    let (erl, why) = crate::erlang::try_measure(*counts.last().expect("a count"));
    if let Some(w) = why {
        report.note(w);
    }
    let mut host_phases = Vec::new();
    for &count in counts {
        progress(format!("density: {count} counter reactors through the runtime"));
        host_phases.push(host_phase(&engine, &module, count)?);
    }
    drop(module);
    drop(engine);
    trim_heap();
    let mut plain_phases = Vec::new();
    for &count in counts {
        progress(format!("density: {count} plain wasmtime instances, default engine"));
        plain_phases.push(plain_phase(&bytes, count)?);
    }

    for (h, p) in host_phases.iter().zip(&plain_phases) {
        let c = h.requested;
        report.push(
            Figure::new(format!("RSS per idle reactor, {} alive", h.reached), h.rss_per_kb(), "KB")
                .baseline(&bound_name, bound_kb)
                .below(150.0),
        );
        if h.requested == *counts.last().expect("a count") {
            report.point(MEMORY_CHART, &format!("reactor host, {} alive", h.reached), 1.0, h.rss_per_kb());
            report.point(MEMORY_CHART, "lower bound: data-segment pages", 2.0, bound_kb);
            if let Some(e) = &erl {
                report.point(MEMORY_CHART, "Erlang/OTP process", 3.0, e.bytes_per_process / 1024.0);
            }
        }
        if let Some(e) = &erl {
            report.push(
                Figure::new(format!("RSS per idle reactor against Erlang, {} alive", h.reached), h.rss_per_kb(), "KB")
                    .baseline(format!("Erlang/OTP {} memory per idle process", e.otp), e.bytes_per_process / 1024.0)
                    .at_most(16.0),
            );
        }
        report.push(Figure::new(format!("  of it malloc heap ([heap]), {} alive", h.reached), h.heap_per_kb(), "KB"));
        report.push(Figure::new(
            format!("  of it other anon. mappings (linear memories), {} alive", h.reached),
            h.anon_per_kb(),
            "KB",
        ));
        report.push(
            Figure::new(format!("RSS per plain wasmtime instance, {} alive", p.reached), p.rss_per_kb(), "KB")
                .baseline(&bound_name, bound_kb),
        );
        report.push(
            Figure::new(format!("live reactors reached of {c}"), h.reached as f64, "reactors")
                .baseline("plain wasmtime instances reached", p.reached as f64)
                .at_least(c as f64),
        );
        report.push(
            Figure::new(format!("mappings per reactor, {} alive", h.reached), h.maps_per(), "maps")
                .baseline("plain wasmtime, per instance", p.maps_per()),
        );
        report.push(
            Figure::new(format!("page faults per reactor, {} alive", h.reached), h.faults_per(), "faults")
                .baseline("plain wasmtime, per instance", p.faults_per())
                .no_ratio(),
        );
        report.push(
            Figure::new(format!("time per spawn + Add + Get, {} alive", h.reached), h.us_per(), "µs")
                .baseline("plain wasmtime instantiate", p.us_per()),
        );
    }

    for (what, phases) in [("runtime", &host_phases), ("plain wasmtime", &plain_phases)] {
        for ph in phases.iter() {
            report.note(format!(
                "{what}, {} requested: reached {}; mappings {} -> {} (vm.max_map_count {limit}); RSS {:.1} -> {:.1} MiB{}",
                ph.requested,
                ph.reached,
                ph.maps_before,
                ph.maps_after,
                ph.rss_before as f64 / KIB / KIB,
                ph.rss_after as f64 / KIB / KIB,
                ph.stop.as_ref().map(|s| format!("; stopped: {s}")).unwrap_or_default(),
            ));
        }
        let Some(ph) = phases.iter().max_by_key(|p| p.reached) else { continue };
        if ph.maps_per() >= 0.01 {
            let room = (limit.saturating_sub(ph.maps_before)) as f64 / ph.maps_per();
            report.note(format!(
                "{what}: at {:.2} mappings each, vm.max_map_count {limit} leaves room for ~{:.0} alive",
                ph.maps_per(),
                room
            ));
        } else {
            report.note(format!(
                "{what}: {} mappings for {} alive: the count does not grow with the population (neighbouring \
                 memories merge into shared mappings), so vm.max_map_count is not what limits it",
                ph.maps_after as i64 - ph.maps_before as i64,
                ph.reached
            ));
        }
    }
    report.note(format!(
        "counter's linear memory starts at {} KiB (virtual; only touched pages are resident); its data \
         segments hold {} bytes over {} pages",
        facts.initial_bytes / 1024,
        facts.data_bytes,
        facts.data_pages
    ));
    report.note(
        "time per spawn here is mostly first-touch page faults, which on this VM cost microseconds each and vary \
         run to run (see `spawn`); it is reported, not targeted",
    );
    report.note(
        "plain wasmtime instances run no code (their imports are trap stubs), so their memory is only \
         what instantiation writes; the default engine maps data segments copy-on-write from a shared image",
    );
    Ok(report)
}

/// What the module itself says about its memory.
#[derive(Debug)]
struct ModuleFacts {
    /// Initial linear memory size.
    initial_bytes: u64,
    /// Bytes in data segments.
    data_bytes: u64,
    /// 4 KiB pages the active data segments cover.
    data_pages: u64,
}

impl ModuleFacts {
    fn of(bytes: &[u8]) -> Result<Self> {
        use wasmparser::{DataKind, Operator, Parser, Payload};
        let mut facts = Self { initial_bytes: 0, data_bytes: 0, data_pages: 0 };
        let mut pages = BTreeSet::new();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::MemorySection(r) => {
                    for m in r {
                        let m = m?;
                        let page = 1u64 << m.page_size_log2.unwrap_or(16);
                        facts.initial_bytes += m.initial * page;
                    }
                }
                Payload::DataSection(r) => {
                    for d in r {
                        let d = d?;
                        let len = d.data.len() as u64;
                        facts.data_bytes += len;
                        let DataKind::Active { offset_expr, .. } = d.kind else { continue };
                        let start = match offset_expr.get_operators_reader().read()? {
                            Operator::I32Const { value } => value as u32 as u64,
                            Operator::I64Const { value } => value as u64,
                            _ => continue,
                        };
                        if len > 0 {
                            pages.extend(start / 4096..=(start + len - 1) / 4096);
                        }
                    }
                }
                _ => {}
            }
        }
        ensure!(facts.initial_bytes > 0, "counter defines no linear memory");
        facts.data_pages = pages.len() as u64;
        Ok(facts)
    }
}

/// One phase's readings.
#[derive(Debug)]
struct Phase {
    requested: usize,
    reached: usize,
    rss_before: u64,
    rss_after: u64,
    heap_delta: i64,
    anon_delta: i64,
    maps_before: usize,
    maps_after: usize,
    faults: u64,
    elapsed: Duration,
    stop: Option<String>,
}

impl Phase {
    fn per(&self, v: f64) -> f64 {
        if self.reached == 0 { f64::NAN } else { v / self.reached as f64 }
    }
    fn rss_per_kb(&self) -> f64 {
        self.per((self.rss_after as f64 - self.rss_before as f64) / KIB)
    }
    fn heap_per_kb(&self) -> f64 {
        self.per(self.heap_delta as f64 / KIB)
    }
    fn anon_per_kb(&self) -> f64 {
        self.per(self.anon_delta as f64 / KIB)
    }
    fn maps_per(&self) -> f64 {
        self.per(self.maps_after as f64 - self.maps_before as f64)
    }
    fn faults_per(&self) -> f64 {
        self.per(self.faults as f64)
    }
    fn us_per(&self) -> f64 {
        self.per(self.elapsed.as_secs_f64() * 1e6)
    }
}

/// Readings taken when a phase starts.
struct Meter {
    rss: u64,
    heap: u64,
    anon: u64,
    maps: usize,
    faults: u64,
    start: Instant,
}

impl Meter {
    fn start() -> Self {
        trim_heap();
        let (heap, anon) = resident_split();
        Self { rss: resident_bytes(), heap, anon, maps: mappings(), faults: minor_faults(), start: Instant::now() }
    }

    fn finish(self, requested: usize, reached: usize, stop: Option<String>) -> Phase {
        let elapsed = self.start.elapsed();
        let faults = minor_faults() - self.faults;
        let rss_after = resident_bytes();
        let maps_after = mappings();
        let (heap, anon) = resident_split();
        Phase {
            requested,
            reached,
            rss_before: self.rss,
            rss_after,
            heap_delta: heap as i64 - self.heap as i64,
            anon_delta: anon as i64 - self.anon as i64,
            maps_before: self.maps,
            maps_after,
            faults,
            elapsed,
            stop,
        }
    }
}

fn low_memory() -> Option<String> {
    let avail = mem_available();
    (avail < MEMORY_RESERVE).then(|| format!("system memory low ({} MiB available)", avail >> 20))
}

/// Spawns `count` counters through the runtime, each touched by Add(1) + Get.
fn host_phase(engine: &Arc<Engine>, module: &Arc<LoadedModule>, count: usize) -> Result<Phase> {
    let config = ShardConfig { max_reactors: count.max(ShardConfig::default().max_reactors), ..Default::default() };
    let mut rt = Shard::new(engine.clone(), config);
    let init = postcard::to_allocvec(&0u64)?;
    let add = postcard::to_allocvec(&CounterMsg::Add(1))?;
    let get = postcard::to_allocvec(&CounterMsg::Get)?;
    let meter = Meter::start();
    let mut reached = 0;
    let mut stop = None;
    while reached < count && stop.is_none() {
        let chunk = (count - reached).min(CHUNK);
        let chunk_start = Instant::now();
        let mut asked = Vec::with_capacity(chunk);
        for _ in 0..chunk {
            match rt.spawn(module, &init) {
                Ok(a) => {
                    rt.send(a, add.clone(), false)?;
                    asked.push((a, rt.request(a, get.clone(), false)?));
                }
                Err(e) => {
                    let msg = e.to_string();
                    let first = msg.lines().next().unwrap_or_default();
                    stop = Some(format!("spawn #{} failed: {first}", reached + asked.len() + 1));
                    break;
                }
            }
        }
        rt.run_until_idle();
        for (a, id) in asked {
            let reply = rt.take_reply(id).with_context(|| format!("{a} did not answer Get"))??;
            let n: u64 = postcard::from_bytes(&reply.payload)?;
            ensure!(n == 1, "{a} answered Get with {n} after one Add(1)");
            reached += 1;
        }
        if stop.is_none() && reached < count {
            stop = low_memory();
        }
        if reached % (count / 10).max(CHUNK) == 0 || stop.is_some() {
            let us = chunk_start.elapsed().as_secs_f64() * 1e6 / chunk as f64;
            progress(format!("  {reached} alive ({us:.1} µs per spawn + Add + Get in the last chunk)"));
        }
    }
    let phase = meter.finish(count, reached, stop);
    ensure!(rt.stats().live == reached, "{} reactors alive, expected {reached}", rt.stats().live);
    drop(rt);
    trim_heap();
    Ok(phase)
}

/// Instantiates `count` plain wasmtime instances of `bytes` on a default
/// engine, each in its own store, all kept alive.
fn plain_phase(bytes: &[u8], count: usize) -> Result<Phase> {
    let engine = wasmtime::Engine::default();
    let module = Module::new(&engine, bytes)?;
    let mut linker: Linker<()> = Linker::new(&engine);
    linker.define_unknown_imports_as_traps(&module)?;
    let mut kept: Vec<(Store<()>, Instance)> = Vec::with_capacity(count);
    let meter = Meter::start();
    let mut stop = None;
    while kept.len() < count && stop.is_none() {
        for _ in 0..(count - kept.len()).min(CHUNK) {
            let mut store = Store::new(&engine, ());
            match linker.instantiate(&mut store, &module) {
                Ok(i) => kept.push((store, i)),
                Err(e) => {
                    stop = Some(format!("instance #{} failed: {e:#}", kept.len() + 1));
                    break;
                }
            }
        }
        if stop.is_none() && kept.len() < count {
            stop = low_memory();
        }
    }
    let reached = kept.len();
    progress(format!("  {reached} alive{}", stop.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()));
    let phase = meter.finish(count, reached, stop);
    drop(kept);
    trim_heap();
    Ok(phase)
}
