//! What journaling costs and what it buys, on a `counter` reactor:
//! - **messages at 50,000/s** from the host (open loop, one request every
//!   20 µs, 2 s; one thread sends and polls the answers), for a reactor not
//!   journaled (the baseline), journaled `written` and journaled `synced`
//!   (group commit: a reply leaves once its record is fsynced): p50 and
//!   p99 round trip, and the rate reached;
//! - **most messages/s** (closed loop, 64 in flight) at each level against
//!   the reactor not journaled;
//! - **record overhead**: bytes written per message beyond its payload;
//! - **replay speed**: a journal of 1,000,000 messages replayed on a shard
//!   of its own, against the same reactor live (journaled, one message per
//!   call, as replayed);
//! - **opening the state at any message** of a 1,000,000-message journal
//!   whose segments start at a snapshot every 10,000 messages: restore the
//!   nearest snapshot (lazily) and replay to the message, for 20 random
//!   messages.
//!
//! Journals are written to a directory on the real disk (the `TMPDIR`
//! file system, checked not to be tmpfs-backed by reporting its type).
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, load_guest, median, progress};
use anyhow::{Context as _, Result, ensure};
use journal_format::Level;
use protocols::CounterMsg;
use reactor_runtime::journal::{JournalConfig, Journals, reactor_dir, segments};
use reactor_runtime::replay::{Event, Replay, SegmentBytes};
use reactor_runtime::snapshot::{Capture, SnapshotFile, SnapshotOptions};
use reactor_runtime::{Address, PendingCall, Runtime, RuntimeConfig, Shard, ShardConfig, abi};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

fn add1() -> Vec<u8> {
    postcard::to_allocvec(&CounterMsg::Add(1)).expect("encodes")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Open loop: one request every `1/rate` s for `secs`; latencies in µs and
/// the rate of answers reached.
fn paced(rt: &Runtime, to: Address, rate: f64, secs: f64) -> Result<(Vec<f64>, f64)> {
    let n = (rate * secs) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let payload = add1();
    let mut pending: VecDeque<(PendingCall, Instant)> = VecDeque::new();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut sent = 0usize;
    while lat.len() < n {
        let now = Instant::now();
        if sent < n && now >= start + gap * sent as u32 {
            pending.push_back((rt.request(to, payload.clone(), false)?, now));
            sent += 1;
            continue;
        }
        while let Some((p, t)) = pending.front() {
            match p.try_take() {
                Some(r) => {
                    r?;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    pending.pop_front();
                }
                None => break,
            }
        }
        std::hint::spin_loop();
    }
    Ok((lat, n as f64 / start.elapsed().as_secs_f64()))
}

/// Closed loop with `window` in flight for `secs`: answers per second.
fn closed(rt: &Runtime, to: Address, window: usize, secs: f64) -> Result<f64> {
    let payload = add1();
    let mut pending: VecDeque<PendingCall> = VecDeque::new();
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        while pending.len() < window {
            pending.push_back(rt.request(to, payload.clone(), false)?);
        }
        if let Some(r) = pending.front().and_then(PendingCall::try_take) {
            r?;
            pending.pop_front();
            done += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    for p in pending {
        p.wait(Some(Duration::from_secs(10)))?;
    }
    Ok(rate)
}

fn fs_type(path: &Path) -> String {
    let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|_| "?".into())
}

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let mut report = Report::new("journal", "Journal: cost at 50,000 messages/s, record overhead, replay speed, opening any message");
    let engine = crate::harness::engine()?;
    let (counter, _) = load_guest(&engine, "counter")?;
    let dir = tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
    report.param("journal_fs", fs_type(dir.path()));
    let secs = if opts.quick { 0.5 } else { 2.0 };
    report.param("paced_rate", "50000/s");
    report.param("paced_secs", secs);

    // --- Cost on the multi-core runtime. ---
    let journals = Journals::start(JournalConfig::new(dir.path().join("live")))?;
    let rt = Runtime::new(engine.clone(), RuntimeConfig { shards: 1, ..RuntimeConfig::default() })?;
    rt.set_journals(&journals).map_err(|e| anyhow::anyhow!("{e}"))?;
    let levels: [(&str, Option<Level>); 3] = [("not journaled", None), ("written", Some(Level::Written)), ("synced", Some(Level::Synced))];
    let mut results = Vec::new();
    for (name, level) in levels {
        let a = rt.spawn_journaled(0, &counter, postcard::to_allocvec(&0u64)?, 0, level)?;
        // Correct before timed: the count goes up by one per message.
        let r = rt.call(a, add1(), false)?;
        ensure!(postcard::from_bytes::<u64>(&r.payload)? == 1, "{name}: the counter does not count");
        let before = journals.stats().figures();
        progress(format!("journal: {name}: paced 50,000/s"));
        let mut lat = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..3 {
            let (l, rate) = paced(&rt, a, 50_000.0, secs)?;
            lat.extend(l);
            rates.push(rate);
        }
        progress(format!("journal: {name}: closed loop"));
        let max = median((0..3).map(|_| closed(&rt, a, 64, secs / 2.0)).collect::<Result<Vec<_>>>()?);
        let after = journals.stats().figures();
        let count: u64 = postcard::from_bytes(&rt.call(a, postcard::to_allocvec(&CounterMsg::Get)?, false)?.payload)?;
        let records = after.records - before.records;
        let bytes = after.bytes_written - before.bytes_written;
        results.push((name, pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99), median(rates), max, records, bytes, count, after.syncs - before.syncs));
    }
    let (_, b50, b99, brate, bmax, ..) = results[0];
    report.push(Figure::new("not journaled: p50 round trip at 50,000/s", b50, "µs"));
    report.push(Figure::new("not journaled: p99 round trip at 50,000/s", b99, "µs"));
    report.push(Figure::new("not journaled: rate reached", brate, "msg/s"));
    report.push(Figure::new("not journaled: most messages/s (64 in flight)", bmax, "msg/s"));
    for &(name, p50, p99, rate, max, records, bytes, count, syncs) in &results[1..] {
        report.push(Figure::new(format!("{name}: p50 round trip at 50,000/s"), p50, "µs").baseline("not journaled", b50));
        report.push(
            Figure::new(format!("{name}: p99 added at 50,000/s"), p99 - b99, "µs")
                .baseline(format!("not journaled p99 {b99:.1} µs"), b99)
                .no_ratio()
                .at_most(10.0),
        );
        report.push(Figure::new(format!("{name}: rate reached at 50,000/s offered"), rate, "msg/s").baseline("not journaled", brate).at_least(0.97 * brate));
        report.push(
            Figure::new(format!("{name}: throughput loss (64 in flight)"), 100.0 * (1.0 - max / bmax), "%")
                .baseline(format!("not journaled {bmax:.0} msg/s"), bmax)
                .no_ratio()
                .at_most(3.0),
        );
        // Each record carries the 2-byte `Add(1)` payload; the rest is the
        // record's framing, the sender and correlation id (coded against the
        // record before), the output digest and the tape.
        let per = bytes as f64 / records.max(1) as f64;
        report.push(Figure::new(format!("{name}: bytes written per message beyond its payload"), per - 2.0, "B").at_most(16.0));
        report.push(Figure::new(format!("{name}: fsyncs per 1,000 messages"), 1000.0 * syncs as f64 / records.max(1) as f64, "").no_ratio());
        report.note(format!("{name}: {records} records, {count} messages counted"));
    }
    let f = journals.stats().figures();
    report.push(Figure::new("mean fsync (fdatasync) time", f.sync_nanos as f64 / f.syncs.max(1) as f64 / 1e3, "µs"));
    drop(rt);
    journals.shutdown();
    // Where the closed-loop loss comes from: a journaled reactor takes one
    // message per call (each call one record); the same reactor not
    // journaled but also given one message per call.
    {
        let shard = ShardConfig { max_batch: 1, ..ShardConfig::default() };
        let rt = Runtime::new(engine.clone(), RuntimeConfig { shards: 1, shard, ..RuntimeConfig::default() })?;
        let a = rt.spawn_journaled(0, &counter, postcard::to_allocvec(&0u64)?, 0, None)?;
        progress("journal: not journaled, one message per call: closed loop");
        let one = median((0..3).map(|_| closed(&rt, a, 64, secs / 2.0)).collect::<Result<Vec<_>>>()?);
        report.push(Figure::new("not journaled, one message per call: most messages/s (64 in flight)", one, "msg/s").baseline("not journaled", bmax));
        if let Some(&(_, _, _, _, max, ..)) = results.get(1) {
            report.push(
                Figure::new("written: throughput loss against one message per call", 100.0 * (1.0 - max / one), "%")
                    .baseline(format!("not journaled, one message per call {one:.0} msg/s"), one)
                    .no_ratio(),
            );
        }
    }

    // --- Replay speed. ---
    let n_replay = if opts.quick { 100_000 } else { 1_000_000 };
    let journals = Journals::start(JournalConfig::new(dir.path().join("replay")))?;
    let mut shard = Shard::new(engine.clone(), ShardConfig::default());
    shard.set_journals(journals.clone());
    let a = shard.spawn_journaled(&counter, &postcard::to_allocvec(&0u64)?, 0, Level::Written)?;
    let payload = add1();
    progress(format!("journal: {n_replay} live calls"));
    // Live: the host handing the messages in and the reactor taking them.
    let t = Instant::now();
    for _ in 0..n_replay / 1000 {
        for _ in 0..1000 {
            shard.send(a, payload.clone(), false)?;
        }
        shard.run_until_idle();
    }
    let live = t.elapsed();
    journals.sync();
    let live_digest = shard.state_digest(a);
    let segs = read_segments(&journals, a)?;
    progress("journal: replay");
    let t = Instant::now();
    let mut r = Replay::start(Shard::new(engine.clone(), ShardConfig::default()), counter.clone(), segs, None)?;
    let mut steps = 0u64;
    while let Some(e) = r.next_event() {
        if let Event::Step(s) = e? {
            ensure!(s.matches(), "step {} does not match its recording", s.step);
            steps += 1;
        }
    }
    let replay = t.elapsed();
    ensure!(r.shard().state_digest(a) == live_digest, "the replayed state differs from the live one");
    let live_rate = n_replay as f64 / live.as_secs_f64();
    let replay_rate = steps as f64 / replay.as_secs_f64();
    report.push(Figure::new("replay speed", replay_rate, "msg/s").baseline("live: sent in and processed, journaled", live_rate).at_least(live_rate));
    drop(shard);
    journals.shutdown();

    // --- Opening the state at any message of a long journal. ---
    let total: u64 = if opts.quick { 100_000 } else { 1_000_000 };
    let every: u64 = 10_000;
    let journals = Journals::start(JournalConfig { dir: dir.path().join("long"), keep: usize::MAX })?;
    let mut shard = Shard::new(engine.clone(), ShardConfig::default());
    shard.set_journals(journals.clone());
    let a = shard.spawn_journaled(&counter, &postcard::to_allocvec(&0u64)?, 0, Level::Written)?;
    let snaps = dir.path().join("snaps");
    std::fs::create_dir_all(&snaps)?;
    progress(format!("journal: {total} messages, a snapshot every {every}"));
    let mut sent = 0u64;
    while sent < total {
        for _ in 0..every / 1000 {
            for _ in 0..1000 {
                shard.send(a, payload.clone(), false)?;
            }
            shard.run_until_idle();
        }
        sent += every;
        let cp = shard.snapshot(a, SnapshotOptions::new(Capture::Blocking).journaled())?;
        cp.write(&snaps.join(format!("{}.snap", cp.id())), &mut |_, _| {})?;
    }
    journals.sync();
    let paths = segments(&reactor_dir(journals.dir(), a))?;
    ensure!(paths.len() as u64 >= total / every, "{} segments for {total} messages", paths.len());
    let mut opens = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = 1 + rng % (total - 1);
        let t = Instant::now();
        // The segment holding the target, and the snapshot it starts at.
        let mut chosen = None;
        for p in &paths {
            let bytes = std::fs::read(p)?;
            let h = *journal_format::Journal::open(&bytes)?.header();
            if h.first_step <= target {
                chosen = Some((p.clone(), h));
            } else {
                break;
            }
        }
        let (p, h) = chosen.context("a segment for the target")?;
        let seg = SegmentBytes { name: p.display().to_string(), bytes: std::fs::read(&p)? };
        let base = if h.from_spawn() {
            None
        } else {
            let id = reactor_runtime::snapshot::SnapshotId(h.base);
            Some(vec![SnapshotFile::open(&snaps.join(format!("{id}.snap")), abi::ABI_VERSION)?])
        };
        let mut r = Replay::start(Shard::new(engine.clone(), ShardConfig::default()), counter.clone(), vec![seg], base.as_deref())?;
        while r.next_step() <= target {
            match r.next_event() {
                Some(Ok(Event::Step(s))) => ensure!(s.matches(), "step {} differs", s.step),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        ensure!(r.next_step() == target + 1, "reached step {} for {target}", r.next_step());
        opens.push(t.elapsed().as_secs_f64() * 1e3);
    }
    journals.shutdown();

    // --- Restart of a failed 100 MiB reactor. ---
    let (ledger, _) = load_guest(&engine, "ledger")?;
    let mib: u32 = if opts.quick { 20 } else { 100 };
    let journals = Journals::start(JournalConfig { dir: dir.path().join("restart"), keep: usize::MAX })?;
    let mut shard = Shard::new(engine.clone(), ShardConfig::default());
    shard.set_journals(journals.clone());
    shard.set_supervised(true);
    let a = shard.spawn_journaled(&ledger, &[], 0, Level::Written)?;
    let call = |s: &mut Shard, q: &protocols::LedgerReq| s.call(a, postcard::to_allocvec(q).expect("encodes"), false);
    let id: u64 = postcard::from_bytes(&call(&mut shard, &protocols::LedgerReq::Open { owner: "bench".into() })?.payload)?;
    call(&mut shard, &protocols::LedgerReq::Grow { mib })?;
    let snap = dir.path().join("restart.snap");
    let mut restarts = Vec::new();
    let mut phases: Vec<[f64; 4]> = Vec::new();
    progress(format!("journal: restarts of a failed {mib} MiB reactor"));
    for round in 0..20u64 {
        // A snapshot (its journal starts a segment there), a few calls
        // after it, then the one that fails it.
        let cp = shard.snapshot(a, SnapshotOptions::new(Capture::Blocking).journaled())?;
        cp.write(&snap, &mut |_, _| {})?;
        drop(cp);
        for _ in 0..3 {
            call(&mut shard, &protocols::LedgerReq::Deposit { account: id, amount: 1 })?;
        }
        let failed_step = shard.journal_step(a).context("journaled")?;
        let _ = call(&mut shard, &protocols::LedgerReq::Withdraw { account: id, amount: u64::MAX });
        ensure!(shard.journal_step(a).is_none(), "round {round}: the withdrawal should have failed it");
        journals.sync();
        let t = Instant::now();
        // The newest segment: it starts at the snapshot just taken.
        let newest = segments(&reactor_dir(journals.dir(), a))?.pop().context("a segment")?;
        let segs = vec![(newest.clone(), std::fs::read(&newest)?)];
        let t1 = t.elapsed();
        let chain = [SnapshotFile::open(&snap, abi::ABI_VERSION)?];
        let t2 = t.elapsed();
        shard.restart_journaled(&ledger, Some(&chain), &segs, failed_step, false)?;
        let t3 = t.elapsed();
        // Its first processed message after the restart.
        let r = call(&mut shard, &protocols::LedgerReq::Deposit { account: id, amount: 0 })?;
        phases.push([t1, t2 - t1, t3 - t2, t.elapsed() - t3].map(|d| d.as_secs_f64() * 1e6));
        restarts.push(t.elapsed().as_secs_f64() * 1e6);
        let balance: Option<u64> = postcard::from_bytes(&r.payload)?;
        ensure!(balance == Some(3 * (round + 1)), "round {round}: balance {balance:?} after the restart");
    }
    report.param("restarted_reactor_mib", mib);
    let phase = |i: usize| median(phases.iter().map(|p| p[i]).collect());
    report.note(format!(
        "restart, median µs: read the journal {:.0}, open the snapshot {:.0}, restore lazily and replay {:.0}, first message {:.0}",
        phase(0),
        phase(1),
        phase(2),
        phase(3)
    ));
    report.push(Figure::new(format!("restart of a failed {mib} MiB reactor to its first message: median"), median(restarts.clone()), "µs"));
    report.push(Figure::new(format!("restart of a failed {mib} MiB reactor to its first message: p99 (worst of 20)"), restarts.iter().copied().fold(0.0, f64::max), "µs").at_most(100.0));
    report.param("long_journal_messages", total);
    report.param("snapshot_every", every);
    report.push(Figure::new("open the state at a random message: median", median(opens.clone()), "ms").at_most(50.0));
    report.push(Figure::new("open the state at a random message: worst of 20", opens.iter().copied().fold(0.0, f64::max), "ms").at_most(50.0));
    journals.shutdown();
    Ok(report)
}

fn read_segments(journals: &Journals, a: Address) -> Result<Vec<SegmentBytes>> {
    segments(&reactor_dir(journals.dir(), a))?
        .into_iter()
        .map(|p| Ok(SegmentBytes { name: p.display().to_string(), bytes: std::fs::read(&p)? }))
        .collect()
}
