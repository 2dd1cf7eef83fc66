//! `host replay`: re-executes a journaled reactor from a post-mortem
//! bundle, or from snapshot files and journal segments, checking every
//! call against the recording.

use super::engine_args::EngineArgs;
use super::save::{mib, progress};
use anyhow::{Context as _, bail};
use host::node::postmortem::{MANIFEST, MAX_MANIFEST, MODULE_FILE, Manifest};
use journal_format::{Journal, MAGIC as JOURNAL_MAGIC};
use reactor_runtime::local_fs::{self, Access};
use reactor_runtime::replay::{Event, Replay, SegmentBytes, StepReport};
use reactor_runtime::snapshot::{Capture, Kind, SnapshotFile, SnapshotId, SnapshotOptions, chain_ending_at};
use reactor_runtime::{Address, LoadedModule, ModuleHash, Shard, abi};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `host replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// A post-mortem bundle (the directory a node leaves in
    /// `<data-dir>/postmortem/` when a journaled reactor fails), or snapshot
    /// files and journal segments, in any order.
    #[arg(required = true, value_name = "BUNDLE|FILE")]
    paths: Vec<PathBuf>,
    /// The module the reactor ran (a bundle holds it; the built guests are
    /// found by their hash).
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// Stop after step N (starting from the nearest snapshot before it).
    #[arg(long, value_name = "N")]
    until: Option<u64>,
    /// Print every step as it is replayed.
    #[arg(long)]
    step: bool,
    /// Stop just before the call that failed the reactor (`--save` then
    /// writes its state as it was before that call).
    #[arg(long)]
    break_on_trap: bool,
    /// Write the replayed state where the replay stops as a snapshot file
    /// (`host inspect` and `host restore` read it).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Show the memory pages that differ between the state after step A
    /// and after step B.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    diff: Option<Vec<u64>>,
}

/// The largest journal segment read (a segment ends at every checkpoint).
const MAX_JOURNAL_FILE: u64 = 4 << 30;

/// What the paths given add up to.
struct Inputs {
    journals: Vec<SegmentBytes>,
    snapshots: Vec<SnapshotFile>,
    module: Option<PathBuf>,
    manifest: Option<Manifest>,
}

fn read_journal(path: &Path) -> anyhow::Result<SegmentBytes> {
    let (bytes, _) = local_fs::read_file(path, "journal", MAX_JOURNAL_FILE, Access::Any)?;
    Ok(SegmentBytes { name: path.display().to_string(), bytes })
}

fn inputs(args: &ReplayArgs) -> anyhow::Result<Inputs> {
    let mut i = Inputs { journals: Vec::new(), snapshots: Vec::new(), module: None, manifest: None };
    if let [dir] = args.paths.as_slice()
        && dir.is_dir()
    {
        let mpath = dir.join(MANIFEST);
        let (text, _) = local_fs::read_file(&mpath, "bundle manifest", MAX_MANIFEST, Access::Any)
            .with_context(|| format!("{} is not a post-mortem bundle", dir.display()))?;
        let m: Manifest = serde_json::from_slice(&text).with_context(|| format!("{} is damaged", mpath.display()))?;
        m.check().map_err(|e| anyhow::anyhow!("{}: {e}", mpath.display()))?;
        for n in &m.snapshots {
            let p = dir.join(n);
            i.snapshots.push(SnapshotFile::open(&p, abi::ABI_VERSION).with_context(|| format!("cannot use {}", p.display()))?);
        }
        for n in &m.journals {
            i.journals.push(read_journal(&dir.join(n))?);
        }
        i.module = Some(dir.join(MODULE_FILE));
        i.manifest = Some(m);
        return Ok(i);
    }
    for p in &args.paths {
        if p.is_dir() {
            bail!("{} is a directory: give one post-mortem bundle alone, or snapshot and journal files", p.display());
        }
        let mut head = [0u8; 8];
        let (file, _) = local_fs::open_file(p, "snapshot or journal", u64::MAX, Access::Any)?;
        std::io::Read::read_exact(&mut &file, &mut head).with_context(|| format!("cannot read {}", p.display()))?;
        if head == JOURNAL_MAGIC {
            i.journals.push(read_journal(p)?);
        } else if head == snapshot_format::MAGIC {
            i.snapshots.push(SnapshotFile::open(p, abi::ABI_VERSION).with_context(|| format!("cannot use {}", p.display()))?);
        } else {
            bail!("{} is neither a snapshot nor a journal", p.display());
        }
    }
    if i.journals.is_empty() {
        bail!("no journal given: replay needs the journal segments of the reactor (and the snapshot the first starts from)");
    }
    Ok(i)
}

/// Positions in `snapshots` of the chain that ends at `id` (full first),
/// if all of it was given.
fn chain_to(snapshots: &[SnapshotFile], id: SnapshotId) -> Option<Vec<usize>> {
    let links: Vec<(SnapshotId, Kind)> = snapshots.iter().map(|s| (s.header().id, s.header().kind)).collect();
    chain_ending_at(&links, id)
}

fn load_module(engine: &reactor_runtime::Engine, given: Option<&Path>, want: ModuleHash) -> anyhow::Result<Arc<LoadedModule>> {
    if let Some(p) = given {
        let (m, _) = engine.load_file(p).with_context(|| format!("{} is not a usable reactor module", p.display()))?;
        if m.hash != want {
            bail!("the journal was recorded with module {want}, and {} is module {}", p.display(), m.hash);
        }
        return Ok(m);
    }
    if let Some((name, bytes)) = host::node::built_guest(&want) {
        let (m, _) = engine.load(&bytes).with_context(|| format!("cannot load the built guest {name}"))?;
        return Ok(m);
    }
    bail!("the journal was recorded with module {want}, which is not among the built guests: pass it with --module FILE")
}

fn print_step(s: &StepReport) {
    let what = if s.init {
        "start-up".to_owned()
    } else {
        format!("{} from {} corr {}", reactor_runtime::Envelope::kind_name(s.kind), s.from, s.corr)
    };
    let verdict = if !s.matches() {
        "DIFFERS from the recording"
    } else if s.failure.is_some() {
        "failed, as recorded"
    } else {
        "ok"
    };
    println!("step {:>8}  {what:<44} {:>9} bytes  {:>3} host calls  {verdict}", s.step, s.payload_len, s.host_calls);
}

/// Pages (4 KiB) that differ between two memories, as ranges.
fn page_diff(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let pages = a.len().max(b.len()).div_ceil(4096);
    let page = |m: &[u8], i: usize| {
        let s = (i * 4096).min(m.len());
        let e = ((i + 1) * 4096).min(m.len());
        m[s..e].to_vec()
    };
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for i in 0..pages {
        let (pa, pb) = (page(a, i), page(b, i));
        let same = pa.len() == pb.len() && pa == pb || (pa.iter().all(|&x| x == 0) && pb.iter().all(|&x| x == 0));
        if !same {
            match ranges.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => ranges.push((i, i + 1)),
            }
        }
    }
    ranges
}

pub(crate) fn replay(engine_args: &EngineArgs, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(d) = &args.diff
        && d[0] >= d[1]
    {
        bail!("--diff A B needs A before B");
    }
    let inputs = inputs(args)?;
    // Segments in step order, each checked whole.
    let mut segs: Vec<(u64, SegmentBytes)> = Vec::new();
    for s in inputs.journals {
        let j = Journal::open(&s.bytes).with_context(|| format!("{} is not a usable journal", s.name))?;
        j.check().with_context(|| format!("{} is not a usable journal", s.name))?;
        segs.push((j.header().first_step, s));
    }
    segs.sort_by_key(|(f, _)| *f);
    let headers: Vec<journal_format::Header> = segs.iter().map(|(_, s)| *Journal::open(&s.bytes).expect("checked").header()).collect();
    let module_hash = ModuleHash(headers[0].module);
    let address = Address(headers[0].address);
    // The failed step, if the journal ends with a failure.
    let failed_step = Journal::open(&segs.last().expect("one at least").1.bytes)
        .expect("checked")
        .check()
        .expect("checked")
        .failed
        .map(|f| f.0);

    // Start from the nearest available point at or before the state
    // wanted: the state before step `target`.
    let target = args
        .diff
        .as_ref()
        .map(|d| d[0] + 1)
        .or(args.until.map(|u| u + 1))
        .or(failed_step.filter(|_| args.break_on_trap));
    let mut start = None;
    for (i, h) in headers.iter().enumerate() {
        let available = h.from_spawn() || chain_to(&inputs.snapshots, SnapshotId(h.base)).is_some();
        if available && (start.is_none() || target.is_some_and(|t| h.first_step <= t)) {
            start = Some(i);
        }
        if start.is_some() && target.is_none() {
            break;
        }
    }
    let Some(start) = start else {
        let needs: Vec<String> = headers.iter().map(|h| SnapshotId(h.base).to_string()).collect();
        bail!("no journal segment can be replayed from what was given: give the snapshot one of them starts from ({})", needs.join(", "));
    };
    if let Some(t) = target
        && t < headers[start].first_step
    {
        bail!(
            "the state after step {} is before the earliest state given (before step {})",
            t.saturating_sub(1),
            headers[start].first_step
        );
    }
    let base: Option<Vec<SnapshotFile>> = (!headers[start].from_spawn()).then(|| {
        let ids = chain_to(&inputs.snapshots, SnapshotId(headers[start].base)).expect("available");
        let mut pool: Vec<Option<SnapshotFile>> = inputs.snapshots.into_iter().map(Some).collect();
        ids.into_iter().map(|i| pool[i].take().expect("a chain names each file once")).collect()
    });

    let engine = engine_args.engine()?;
    let module = load_module(&engine, inputs.module.as_deref().or(args.module.as_deref()), module_hash)?;
    let mut config = engine_args.shard_config()?;
    if let Some(m) = &inputs.manifest {
        // The limits it ran under: a failure that depends on them replays.
        config.limits.memory_cap = m.memory_cap as usize;
        config.limits.cpu_budget = Duration::from_millis(m.cpu_budget_ms.max(1));
    }
    let shard = Shard::new(engine, config);
    let from = match &base {
        None => "its spawn".to_owned(),
        Some(chain) => format!("snapshot {}", chain.last().expect("not empty").header().id),
    };
    let segments: Vec<SegmentBytes> = segs.into_iter().skip(start).map(|(_, s)| s).collect();
    let n_segments = segments.len();
    let mut r = Replay::start(shard, module, segments, base.as_deref())?;
    eprintln!(
        "replaying reactor {address} (module {module_hash}) from {from}, step {}: {n_segments} journal segment(s)",
        r.first_step()
    );

    let started = Instant::now();
    let (mut steps, mut points, mut before_diff) = (0u64, 0u64, None::<Vec<u8>>);
    if args.diff.as_ref().is_some_and(|d| d[0] + 1 == r.first_step()) {
        // "After step A" is where the replay starts.
        before_diff = r.shard().read_memory(address);
    }
    let mut last: Option<StepReport> = None;
    let mut differs: Option<StepReport> = None;
    let mut stopped_before = None;
    loop {
        let next = r.next_step();
        if args.until.is_some_and(|u| next > u) {
            break;
        }
        if args.break_on_trap && failed_step == Some(next) && r.peek_call().is_some() {
            stopped_before = Some(next);
            break;
        }
        let Some(event) = r.next_event() else { break };
        match event? {
            Event::Step(s) => {
                steps += 1;
                if args.step || !s.matches() {
                    print_step(&s);
                }
                if let Some(d) = &args.diff {
                    if s.step == d[0] {
                        before_diff = r.shard().read_memory(address);
                    }
                    if s.step == d[1] {
                        let after = r.shard().read_memory(address).unwrap_or_default();
                        let ranges = page_diff(before_diff.as_deref().unwrap_or(&[]), &after);
                        let pages: usize = ranges.iter().map(|(a, b)| b - a).sum();
                        println!("memory after step {} against after step {}: {pages} page(s) of 4 KiB differ", d[1], d[0]);
                        for (a, b) in &ranges {
                            println!("  pages {a}..{b} (bytes {:#x}..{:#x})", a * 4096, b * 4096);
                        }
                    }
                }
                if !s.matches() {
                    differs = Some(s);
                    break;
                }
                last = Some(s);
            }
            Event::SnapshotPoint { step, snapshot, matches } => {
                points += 1;
                if args.step {
                    println!("snapshot {snapshot} at step {step}: the state {}", if matches { "matches" } else { "DIFFERS" });
                }
                if !matches {
                    bail!("the replayed state at snapshot {snapshot} (step {step}) differs from the recorded one");
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(s) = differs {
        let mut why = Vec::new();
        if let Some(d) = &s.diverged {
            why.push(d.clone());
        }
        if !s.outputs_match {
            why.push("what it sent differs from what it sent in production".into());
        }
        match (&s.recorded_failure, &s.failure) {
            (Some(r), None) => why.push(format!("in production it failed: {r}")),
            (None, Some(f)) => why.push(format!("it fails here and did not in production: {f}")),
            (Some(r), Some(f)) if *r != f.to_string() => why.push(format!("it fails otherwise: in production {r}; here {f}")),
            _ => {}
        }
        bail!("the replay diverges from the recording at step {}: {}", s.step, why.join("; "));
    }
    let range = match &last {
        Some(l) => format!("{}–{}", r.first_step(), l.step),
        None => "none".into(),
    };
    eprintln!(
        "replayed {steps} step(s) ({range}) in {elapsed:.2?}: every output{} matched the recording",
        if points > 0 { format!(" and the state at {points} snapshot point(s)") } else { String::new() }
    );
    if let Some(step) = stopped_before {
        let (_, kind, from, len) = r.peek_call().expect("stopped before a call");
        eprintln!("stopped before step {step}, the {} from {from} ({len} bytes) that failed the reactor in production", reactor_runtime::Envelope::kind_name(kind));
    }
    if let Some(l) = &last
        && let (Some(_), Some(f)) = (&l.recorded_failure, &l.failure)
    {
        println!("step {} failed the reactor as it did in production, with the same message and backtrace:", l.step);
        for line in f.to_string().lines() {
            println!("  {line}");
        }
    }
    if let Some(path) = &args.save {
        if r.is_dead() {
            bail!("the reactor failed at the last step replayed: its state is gone (--break-on-trap stops before that step)");
        }
        let cp = r
            .shard()
            .snapshot(address, SnapshotOptions::new(Capture::Blocking))
            .with_context(|| format!("cannot snapshot the replayed {address}"))?;
        let report = cp.write(path, &mut progress("writing")).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote the state before step {} ({:.1} MiB of memory) to {}",
            r.next_step(),
            mib(report.page_bytes),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
