//! Snapshots of a real `kv` reactor at 1 MB to 1 GB of state.
//!
//! For each size, with baselines measured in the same run on the same bytes:
//! - **full**: `Shard::snapshot(Capture::Blocking)` (copy of memory +
//!   globals + host state into a fresh buffer, zero pages skipped) against
//!   raw `memcpy` of the same number of bytes into a fresh buffer (the
//!   physical limit under the same page-fault conditions) and into a
//!   pre-faulted one (pure bandwidth), and against serializing the
//!   equivalent native `BTreeMap<String, String>` with postcard (the
//!   conventional way to save actor state). Writing the file (fsync +
//!   rename) is shown separately: it measures the disk.
//! - **copy-on-write**: the pause the reactor sees (from the snapshot
//!   request until its next message has been processed) and the slowdown of
//!   its message processing while the background copy runs, with about 1%
//!   and 10% of its pages written during the copy (measured by counting the
//!   pages the write-fault handler copied).
//! - **restore**: time to first processed message after restoring eagerly
//!   (from the in-memory checkpoint, and from the file in the page cache)
//!   and lazily (file pages mapped copy-on-write).
//! - **incremental**: size and time of a delta after ~1% of pages were
//!   written, against the full snapshot.
//! - **compression** (`compression`): a JSON document store — a `kv`
//!   holding JSON documents (100 MiB of them; 10 MiB with `--quick`) —
//!   snapshotted once and written both ways: LZ4 frames (format version 3)
//!   against the raw pages (version 2), each to a file with fsync. Sizes
//!   against each other and against the same documents as JSON text; write
//!   time (snapshot file durable) against the raw file's, whose target is
//!   that the compressed file is written faster than the disk takes the
//!   raw pages; eager restore from each file to the first processed
//!   message.

use crate::harness::{Figure, Opts, Report, load_guest, median, progress, timed};
use anyhow::{Context as _, Result, ensure};
use protocols::{KvReply, KvReq};
use reactor_runtime::snapshot::{Capture, Compression, RestoreOptions, SnapshotFile, SnapshotOptions};
use reactor_runtime::{Address, Limits, Shard, ShardConfig, abi};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_LEN: u32 = 900;

fn config() -> ShardConfig {
    ShardConfig {
        limits: Limits { memory_cap: 3 << 30, cpu_budget: Duration::from_secs(120), ..Limits::default() },
        ..ShardConfig::default()
    }
}

fn call(rt: &mut Shard, a: Address, req: &KvReq) -> Result<KvReply> {
    rt.call_typed(a, req).with_context(|| format!("kv request {req:?}"))
}

/// A kv reactor whose linear memory is about `mb` MiB.
fn kv_of(rt: &mut Shard, module: &Arc<reactor_runtime::LoadedModule>, mb: u64) -> Result<(Address, u64)> {
    let a = rt.spawn(module, &[])?;
    let entries = mb * 1000;
    let mut done = 0;
    while done < entries {
        let n = (entries - done).min(100_000);
        call(rt, a, &KvReq::Fill { prefix: format!("k{done:010}-"), count: n, value_len: VALUE_LEN, seed: done })?;
        done += n;
    }
    Ok((a, entries))
}

/// The native equivalent of the kv state: same number of entries and sizes.
fn native_map(entries: u64) -> BTreeMap<String, String> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..entries)
        .map(|i| {
            let v: String = (0..VALUE_LEN)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (b' ' + (seed % 94) as u8) as char
                })
                .collect();
            (format!("k{:010}-{i:010}", i / 100_000 * 100_000), v)
        })
        .collect()
}

/// Median time of serializing `map` with postcard, and the output length.
fn serde_time(map: &BTreeMap<String, String>, reps: usize) -> Result<(Duration, usize)> {
    let mut times = Vec::new();
    let mut len = 0;
    for _ in 0..reps.min(3) {
        let (bytes, d) = timed(|| postcard::to_allocvec(map));
        len = bytes?.len();
        times.push(d.as_secs_f64());
    }
    Ok((Duration::from_secs_f64(median(times)), len))
}

/// Median time to deserialize the postcard bytes of `map` back into a
/// native map (the restore's serde counterpart), checked equal.
fn serde_de_time(map: &BTreeMap<String, String>, reps: usize) -> Result<Duration> {
    let bytes = postcard::to_allocvec(map)?;
    let mut times = Vec::new();
    for _ in 0..reps.min(3) {
        let (back, d) = timed(|| postcard::from_bytes::<BTreeMap<String, String>>(&bytes));
        times.push(d.as_secs_f64());
        ensure!(back?.len() == map.len(), "postcard gave back another map");
    }
    Ok(Duration::from_secs_f64(median(times)))
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-12) / 1e9
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A fresh anonymous mapping: its pages are faulted in by the first write,
/// exactly like a snapshot's capture buffer (a `Vec` may reuse memory the
/// allocator already faulted in).
struct Fresh {
    ptr: *mut u8,
    len: usize,
}

impl Fresh {
    fn new(len: usize) -> Self {
        // SAFETY: a new private anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap failed");
        Self { ptr: p.cast(), len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes owned by this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// memcpy of `src` into a fresh mapping (pages faulted in by the copy, as
/// for a snapshot buffer) and again into the now-faulted one.
fn memcpy_baselines(src: &[u8], reps: usize) -> (Duration, Duration) {
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..reps {
        let mut dst = Fresh::new(src.len());
        let (_, d) = timed(|| dst.as_mut().copy_from_slice(std::hint::black_box(src)));
        fresh.push(d.as_secs_f64());
        let (_, d) = timed(|| dst.as_mut().copy_from_slice(std::hint::black_box(src)));
        warm.push(d.as_secs_f64());
        std::hint::black_box(dst.as_mut());
    }
    (Duration::from_secs_f64(median(fresh)), Duration::from_secs_f64(median(warm)))
}

/// Full snapshot vs postcard for a kv of ~`mb` MiB made of small entries
/// (16-byte values), where serialization pays per entry.
fn small_entries(report: &mut Report, engine: &Arc<reactor_runtime::Engine>, module: &Arc<reactor_runtime::LoadedModule>, mb: u64, reps: usize) -> Result<()> {
    progress(format!("snapshot: kv of ~{mb} MiB in small entries"));
    let mut rt = Shard::new(engine.clone(), config());
    let a = rt.spawn(module, &[])?;
    let entries = mb * 9_000;
    let mut done = 0;
    while done < entries {
        let n = (entries - done).min(100_000);
        call(&mut rt, a, &KvReq::Fill { prefix: format!("k{done:010}-"), count: n, value_len: 16, seed: done })?;
        done += n;
    }
    let memory = rt.memory_size(a).unwrap() as u64;
    let mut full = Vec::new();
    for _ in 0..reps {
        let (c, d) = timed(|| rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)));
        c?;
        full.push(d.as_secs_f64());
    }
    let full = Duration::from_secs_f64(median(full));
    let map: BTreeMap<String, String> = (0..entries)
        .map(|i| (format!("k{:010}-{i:010}", i / 100_000 * 100_000), format!("{:016}", i * 7919)))
        .collect();
    let (ser, len) = serde_time(&map, reps)?;
    // The target: faster than serde on every workload.
    report.push(
        Figure::new(
            format!("full snapshot of {entries} small entries ({:.0} MiB memory): time vs serde", memory as f64 / (1 << 20) as f64),
            ms(full),
            "ms",
        )
        .baseline(format!("postcard of the native BTreeMap ({} MiB out)", len >> 20), ms(ser))
        .below(ms(ser)),
    );
    Ok(())
}

/// A JSON document of the store: a user record, about 400 bytes.
fn document(i: u64) -> serde_json::Value {
    let city = ["Lyon", "Oslo", "Lima", "Pune"][(i % 4) as usize];
    serde_json::json!({
        "id": i,
        "name": format!("user {}", i % 9973),
        "email": format!("user{}@example.com", i % 9973),
        "active": i % 3 != 0,
        "score": (i * 7919) % 1000,
        "tags": ["customer", if i % 2 == 0 { "eu" } else { "us" }, format!("cohort-{}", i % 12)],
        "address": {"street": format!("{} Main Street", i % 500), "city": city, "zip": format!("{:05}", i % 99999)},
        "history": [{"at": 1_700_000_000 + i, "event": "signup"}, {"at": 1_700_100_000 + i * 3, "event": "order", "total": (i % 250) as f64 + 0.99}],
    })
}

/// Compressed (LZ4) against raw snapshot files of a JSON document store.
fn compression(
    report: &mut Report,
    engine: &Arc<reactor_runtime::Engine>,
    module: &Arc<reactor_runtime::LoadedModule>,
    mb: u64,
    reps: usize,
    dir: &std::path::Path,
) -> Result<()> {
    progress(format!("snapshot: compression, a JSON document store of ~{mb} MiB"));
    let mut rt = Shard::new(engine.clone(), config());
    let a = rt.spawn(module, &[])?;
    let mut json_bytes = 0u64;
    let mut i = 0u64;
    let mut msgs = Vec::new();
    while json_bytes < mb << 20 {
        let doc = serde_json::to_string(&document(i))?;
        json_bytes += doc.len() as u64;
        msgs.push(postcard::to_allocvec(&KvReq::Put { key: format!("doc{i:09}"), value: doc })?);
        i += 1;
    }
    run_msgs(&mut rt, a, &msgs)?;
    drop(msgs);
    let docs = i;
    let probe = KvReq::Get { key: format!("doc{:09}", docs / 2) };
    let want = call(&mut rt, a, &probe)?;
    ensure!(matches!(&want, KvReply::Value(Some(_))), "the store lost a document: {want:?}");
    let memory = rt.memory_size(a).unwrap() as u64;
    let label = format!("JSON store of {docs} documents ({:.0} MiB JSON, {:.0} MiB memory)", json_bytes as f64 / (1 << 20) as f64, memory as f64 / (1 << 20) as f64);
    let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Blocking))?;
    let (raw_path, z_path) = (dir.join("docs.raw.snap"), dir.join("docs.lz4.snap"));
    let (mut raw_t, mut z_t) = (Vec::new(), Vec::new());
    let (mut raw_len, mut z_len, mut pages) = (0, 0, 0);
    for _ in 0..reps {
        // Alternated, each after the other's file is gone, so both meet the
        // same page cache and disk.
        let _ = std::fs::remove_file(&raw_path);
        let w = cp.write_with(&raw_path, Compression::None, &mut |_, _| {})?;
        raw_t.push(w.elapsed.as_secs_f64());
        (raw_len, pages) = (w.file_bytes, w.page_bytes);
        let _ = std::fs::remove_file(&z_path);
        let w = cp.write_with(&z_path, Compression::Lz4, &mut |_, _| {})?;
        z_t.push(w.elapsed.as_secs_f64());
        z_len = w.file_bytes;
    }
    let (raw_t, z_t) = (Duration::from_secs_f64(median(raw_t)), Duration::from_secs_f64(median(z_t)));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    report.push(
        Figure::new(format!("compressed snapshot of a {label}: file size"), mib(z_len), "MiB")
            .baseline("the same snapshot uncompressed", mib(raw_len)),
    );
    report.push(
        Figure::new(format!("compressed snapshot of a {label}: file size against the documents as JSON"), mib(z_len), "MiB")
            .baseline("the documents as JSON text", mib(json_bytes)),
    );
    report.push(
        Figure::new(format!("uncompressed snapshot of a {label}: file size against the documents as JSON"), mib(raw_len), "MiB")
            .baseline("the documents as JSON text", mib(json_bytes)),
    );
    report.push(
        Figure::new(format!("compressed snapshot of a {label}: written and fsynced"), ms(z_t), "ms")
            .baseline("the raw pages written and fsynced", ms(raw_t))
            .below(ms(raw_t)),
    );
    report.push(
        Figure::new(format!("compressed snapshot of a {label}: page bandwidth written"), gbps(pages, z_t), "GB/s")
            .baseline("raw pages written and fsynced", gbps(pages, raw_t)),
    );
    let restore = |path: &std::path::Path| -> Result<Duration> {
        let mut v = Vec::new();
        for _ in 0..reps {
            let mut fresh = Shard::new(engine.clone(), config());
            let t = Instant::now();
            let f = SnapshotFile::open(path, abi::ABI_VERSION)?;
            fresh.restore_files(&[f], RestoreOptions { verify: false, ..RestoreOptions::default() })?;
            let got = call(&mut fresh, a, &probe)?;
            v.push(t.elapsed().as_secs_f64());
            ensure!(got == want, "restored store answered {got:?}, not {want:?}");
        }
        Ok(Duration::from_secs_f64(median(v)))
    };
    let (raw_r, z_r) = (restore(&raw_path)?, restore(&z_path)?);
    report.push(
        Figure::new(format!("eager restore of a {label} from the compressed file: to first message"), ms(z_r), "ms")
            .baseline("from the uncompressed file (page cache)", ms(raw_r)),
    );
    report.note(format!(
        "compression: LZ4 block format (lz4_flex), frames of 1 MiB, one thread; the raw and compressed writes \
         alternate {reps} times on the same checkpoint (median shown); the write figure's target is that the \
         compressed file is durable sooner than the raw pages are"
    ));
    Ok(())
}

/// Puts to existing keys spread over the whole map: each writes a few pages.
fn scattered_puts(entries: u64, n: u64, round: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let e = (i * 7919 + round * 104_729) % entries;
            let key = format!("k{:010}-{:010}", e / 100_000 * 100_000, e % 100_000);
            postcard::to_allocvec(&KvReq::Put { key, value: format!("updated-{round}-{i}") }).unwrap()
        })
        .collect()
}

/// Sends `msgs` one-way and runs them; returns the time taken.
fn run_msgs(rt: &mut Shard, a: Address, msgs: &[Vec<u8>]) -> Result<Duration> {
    let t = Instant::now();
    for chunk in msgs.chunks(1000) {
        for m in chunk {
            rt.send(a, m.clone(), false)?;
        }
        rt.run_until_idle();
    }
    Ok(t.elapsed())
}

/// The plots of `report` this scenario feeds (x: memory MiB, y: ms).
pub(crate) const SNAP_CHART: &str = "snapshot time (ms) against memory (MiB)";
pub(crate) const RESTORE_CHART: &str = "restore time (ms) against memory (MiB)";
pub(crate) const COW_CHART: &str = "copy-on-write pause (ms) against memory (MiB)";

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let sizes: &[u64] = if opts.quick { &[1, 10] } else { &[1, 10, 100, 1000] };
    let reps = if opts.quick { 3 } else { 5 };
    let mut report = Report::new("snapshot", "snapshot and restore of a kv reactor, 1 MB to 1 GB");
    report.param("sizes_mib", format!("{sizes:?}"));
    report.param("reps", reps);
    let dir = tempfile::tempdir()?;
    let engine = crate::harness::engine()?;
    let (module, _) = load_guest(&engine, "kv")?;

    small_entries(&mut report, &engine, &module, if opts.quick { 10 } else { 100 }, reps)?;
    compression(&mut report, &engine, &module, if opts.quick { 10 } else { 100 }, reps, dir.path())?;
    for &mb in sizes {
        progress(format!("snapshot: kv of ~{mb} MiB"));
        let mut rt = Shard::new(engine.clone(), config());
        let (a, entries) = kv_of(&mut rt, &module, mb)?;
        let memory = rt.memory_size(a).unwrap() as u64;
        let src = rt.read_memory(a).unwrap();
        let label = format!("{mb} MiB kv ({:.0} MiB memory)", memory as f64 / (1 << 20) as f64);

        // 1. Full snapshot, blocking, vs memcpy and vs serde.
        let (memcpy_fresh, memcpy_warm) = memcpy_baselines(&src, reps);
        drop(src);
        let mut full = Vec::new();
        let mut cp = None;
        for _ in 0..reps {
            drop(cp.take());
            let (c, d) = timed(|| rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)));
            full.push(d.as_secs_f64());
            cp = Some(c?);
        }
        let cp = cp.unwrap();
        let full = Duration::from_secs_f64(median(full));
        let mib = memory as f64 / (1 << 20) as f64;
        report.point(SNAP_CHART, "full snapshot (blocking)", mib, ms(full));
        report.point(SNAP_CHART, "memcpy into a pre-faulted buffer", mib, ms(memcpy_warm));
        report.point(SNAP_CHART, "memcpy into a fresh buffer", mib, ms(memcpy_fresh));
        report.push(
            Figure::new(format!("full snapshot {label}: bandwidth"), gbps(memory, full), "GB/s")
                .baseline("memcpy into a fresh buffer", gbps(memory, memcpy_fresh))
                .at_least(0.8 * gbps(memory, memcpy_fresh)),
        );
        report.push(
            Figure::new(format!("full snapshot {label}: time"), ms(full), "ms")
                .baseline("memcpy into a pre-faulted buffer", ms(memcpy_warm)),
        );
        report.push(
            Figure::new(format!("full snapshot {label}: bandwidth against a pre-faulted memcpy"), gbps(memory, full), "GB/s")
                .baseline("memcpy into a pre-faulted buffer", gbps(memory, memcpy_warm))
                .at_least(0.8 * gbps(memory, memcpy_warm)),
        );
        let mut de = None;
        if mb <= 100 || !opts.quick {
            let map = native_map(entries);
            let (ser, len) = serde_time(&map, reps)?;
            de = Some(serde_de_time(&map, reps)?);
            drop(map);
            report.point(SNAP_CHART, "postcard serialize of the native map", mib, ms(ser));
            report.push(
                Figure::new(format!("full snapshot {label}: time vs serde"), ms(full), "ms")
                    .baseline(format!("postcard of the native BTreeMap ({} MiB out)", len >> 20), ms(ser))
                    .below(ms(ser)),
            );
        }
        let path = dir.path().join(format!("kv{mb}.snap"));
        let w = cp.write(&path, &mut |_, _| {})?;
        report.push(
            Figure::new(format!("write {label} to a file (fsync + rename)"), gbps(w.file_bytes, w.elapsed), "GB/s")
                .no_ratio(),
        );

        // 3. Restore, time to first processed message.
        let get = KvReq::Get { key: format!("k{:010}-{:010}", 0, 5) };
        let want = call(&mut rt, a, &get)?;
        let first_msg = |how: &str| -> Result<Duration> {
            let mut v = Vec::new();
            for _ in 0..reps {
                let mut fresh = Shard::new(engine.clone(), config());
                let t = Instant::now();
                match how {
                    "memory" => {
                        fresh.restore(&[&cp])?;
                    }
                    "eager" => {
                        let f = SnapshotFile::open(&path, abi::ABI_VERSION)?;
                        fresh.restore_files(&[f], RestoreOptions { verify: false, ..RestoreOptions::default() })?;
                    }
                    "eager-verified" => {
                        let f = SnapshotFile::open(&path, abi::ABI_VERSION)?;
                        fresh.restore_files(&[f], RestoreOptions::default())?;
                    }
                    _ => {
                        let f = SnapshotFile::open(&path, abi::ABI_VERSION)?;
                        fresh.restore_files(&[f], RestoreOptions::lazy())?;
                    }
                }
                let got = call(&mut fresh, a, &get)?;
                v.push(t.elapsed().as_secs_f64());
                ensure!(got == want, "restored kv answered {got:?}, not {want:?}");
                drop(fresh);
            }
            Ok(Duration::from_secs_f64(median(v)))
        };
        let eager_mem = first_msg("memory")?;
        report.point(RESTORE_CHART, "eager restore from memory, to first message", mib, ms(eager_mem));
        report.point(RESTORE_CHART, "memcpy into a fresh buffer", mib, ms(memcpy_fresh));
        report.push(
            Figure::new(format!("eager restore {label} from memory: to first message"), ms(eager_mem), "ms")
                .baseline("memcpy into a fresh buffer", ms(memcpy_fresh))
                .below(1.2 * ms(memcpy_fresh)),
        );
        let eager_file = first_msg("eager")?;
        report.push(
            Figure::new(format!("eager restore {label} from file (page cache): to first message"), ms(eager_file), "ms")
                .baseline("memcpy into a fresh buffer", ms(memcpy_fresh)),
        );
        let eager_checked = first_msg("eager-verified")?;
        report.push(
            Figure::new(format!("eager restore {label} from file, checksum verified"), ms(eager_checked), "ms")
                .baseline("memcpy into a fresh buffer", ms(memcpy_fresh)),
        );
        if let Some(de) = de {
            report.point(RESTORE_CHART, "postcard deserialize of the native map", mib, ms(de));
            report.push(
                Figure::new(format!("eager restore {label} from memory against serde"), ms(eager_mem), "ms")
                    .baseline("postcard deserialize of the native BTreeMap", ms(de))
                    .at_most(ms(de) / 5.0),
            );
        }
        let lazy = first_msg("lazy")?;
        report.point(RESTORE_CHART, "lazy restore from file, to first message", mib, ms(lazy));
        let mut f = Figure::new(format!("lazy restore {label}: to first message"), ms(lazy), "ms")
            .baseline("memcpy into a fresh buffer", ms(memcpy_fresh));
        if mb == 100 {
            f = f.below(1.0);
        }
        report.push(f);
        if let Some(de) = de {
            report.push(
                Figure::new(format!("lazy restore {label} against serde"), ms(lazy), "ms")
                    .baseline("postcard deserialize of the native BTreeMap", ms(de))
                    .at_most(ms(de) / 100.0),
            );
        }

        // 2. Copy-on-write: pause and slowdown while the copy runs.
        drop(cp);
        let pages = memory / 4096;
        for pct in [1u64, 10] {
            // ~3 pages written per put (value, tree node, allocator).
            let n = (pages * pct / 100 / 3).max(10);
            let mut pause = Vec::new();
            let mut slow = Vec::new();
            let mut written = Vec::new();
            let mut cleanup = Vec::new();
            let mut overlapped = 0;
            for round in 0..reps as u64 {
                // The baseline runs on a settled memory: the request first
                // is a boundary, where a finished earlier copy's protection
                // is lifted.
                call(&mut rt, a, &get)?;
                let msgs = scattered_puts(entries, n, 2 * round);
                let plain = run_msgs(&mut rt, a, &msgs)?;
                let msgs = scattered_puts(entries, n, 2 * round + 1);
                let t = Instant::now();
                let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent))?;
                let got = call(&mut rt, a, &get)?;
                pause.push(t.elapsed().as_secs_f64());
                ensure!(got == want, "kv answered {got:?} during a snapshot");
                let during = run_msgs(&mut rt, a, &msgs)?;
                if !cp.is_complete() {
                    overlapped += 1;
                }
                cp.wait();
                // The first boundary after the copy lifts the protection.
                let t = Instant::now();
                call(&mut rt, a, &get)?;
                cleanup.push(t.elapsed().as_secs_f64());
                written.push(cp.pages_copied_on_write() as f64 / pages as f64 * 100.0);
                slow.push(during.as_secs_f64() / plain.as_secs_f64());
            }
            if pct == 1 {
                let p = Duration::from_secs_f64(median(pause));
                report.point(COW_CHART, "copy-on-write snapshot: pause", mib, ms(p));
                report.point(COW_CHART, "full blocking snapshot", mib, ms(full));
                let mut f = Figure::new(format!("copy-on-write snapshot {label}: pause"), ms(p), "ms")
                    .baseline("full blocking snapshot", ms(full));
                if mb == 100 {
                    f = f.at_most(1.0);
                } else if mb == 1000 {
                    f = f.at_most(5.0);
                }
                report.push(f);
            }
            report.push(
                Figure::new(
                    format!(
                        "copy-on-write {label}: time of {n} puts spread over ~{pct}% of pages during the copy \
                         ({:.1}% of pages copied on write)",
                        median(written.clone())
                    ),
                    median(slow),
                    "x",
                )
                .baseline("same messages without a snapshot", 1.0)
                .at_most(2.0),
            );
            if pct == 10 {
                report.push(Figure::new(
                    format!("copy-on-write {label}: first request after the copy (lifts the protection)"),
                    median(cleanup) * 1e3,
                    "ms",
                ));
            }
            if overlapped < reps {
                report.note(format!(
                    "{label}, {pct}%: in {} of {reps} rounds the messages outlasted the background copy",
                    reps - overlapped
                ));
            }
        }

        // 4. Incremental after ~1% of pages written.
        let base = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked())?;
        base.wait();
        let base_bytes = base.page_bytes();
        let msgs = scattered_puts(entries, (pages / 100 / 3).max(10), 99);
        run_msgs(&mut rt, a, &msgs)?;
        let t = Instant::now();
        let delta = rt.snapshot(a, SnapshotOptions::new(Capture::Incremental))?;
        delta.wait();
        let dt = t.elapsed();
        let delta_bytes = delta.page_bytes();
        report.push(
            Figure::new(format!("incremental snapshot {label}, ~1% written: stored"), delta_bytes as f64 / 1024.0, "KiB")
                .baseline("full snapshot", base_bytes as f64 / 1024.0),
        );
        report.push(
            Figure::new(format!("incremental snapshot {label}: time"), ms(dt), "ms")
                .baseline("full blocking snapshot", ms(full)),
        );
        // A tracked reactor's next copy-on-write snapshot only re-protects
        // the pages written since the last one.
        let mut pause = Vec::new();
        for round in 0..reps as u64 {
            let msgs = scattered_puts(entries, (pages / 100 / 3).max(10), 200 + round);
            run_msgs(&mut rt, a, &msgs)?;
            let t = Instant::now();
            let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked())?;
            let got = call(&mut rt, a, &get)?;
            pause.push(t.elapsed().as_secs_f64());
            ensure!(got == want, "kv answered {got:?} during a snapshot");
            cp.wait();
        }
        let mut f = Figure::new(
            format!("copy-on-write snapshot {label}, tracked, ~1% written since the last: pause"),
            ms(Duration::from_secs_f64(median(pause))),
            "ms",
        )
        .baseline("full blocking snapshot", ms(full));
        if mb == 100 {
            f = f.below(1.0);
        }
        report.push(f);
        let _ = std::fs::remove_file(&path);
    }
    Ok(report)
}
