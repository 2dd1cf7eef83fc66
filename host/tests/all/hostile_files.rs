//! Hostile files and hostile memory patterns against snapshots: damaged
//! pages on the lazy path, forged metadata (overlaps, huge counts, counters
//! near the limit), lazy restores past the node's mapping budget, a guest
//! that splits its tracked memory's mapping page by page, file modes. Each
//! test performs the attack for real and checks that everything else is
//! untouched.
use crate::util::*;
use protocols::{CounterMsg, KvReply, KvReq};
use reactor_runtime::snapshot::{
    Capture, FormatError, Load, RestoreOptions, SnapshotError, SnapshotFile, SnapshotOptions, lazy_map_budget,
    lazy_mapped_runs, set_lazy_map_budget,
};
use reactor_runtime::{Address, Limits, ReactorState, Shard, ShardConfig, abi};
use snapshot_format::{FORMAT_VERSION, FORMAT_VERSION_1, HEADER_LEN, Header, Kind, Meta, PAGE_SIZE, Writer};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn fill(rt: &mut Shard, a: Address, prefix: &str, count: u64, seed: u64) {
    let r: KvReply = rt.call_typed(a, &KvReq::Fill { prefix: prefix.into(), count, value_len: 900, seed }).unwrap();
    assert!(matches!(r, KvReply::Done { .. }), "{r:?}");
}

fn get(rt: &mut Shard, a: Address, k: &str) -> KvReply {
    rt.call_typed(a, &KvReq::Get { key: k.into() }).unwrap()
}

/// A shard of three kv reactors with distinct data (about 1 MiB each), and
/// a checkpoint of it written to `path`. Returns the addresses and, for
/// each, a key and its value.
fn three_kvs(path: &Path) -> (Vec<Address>, Vec<(String, KvReply)>) {
    let mut rt = shard();
    let mut addrs = Vec::new();
    let mut probes = Vec::new();
    for i in 0..3u64 {
        let a = rt.spawn(&module("kv"), &[]).unwrap();
        fill(&mut rt, a, &format!("r{i}-"), 1000, 11 + i);
        let key = format!("r{i}-{:010}", 500);
        let v = get(&mut rt, a, &key);
        assert!(matches!(&v, KvReply::Value(Some(_))), "{v:?}");
        addrs.push(a);
        probes.push((key, v));
    }
    let cp = rt.checkpoint(SnapshotOptions::new(Capture::Blocking)).unwrap();
    cp.write(path, &mut |_, _| {}).unwrap();
    (addrs, probes)
}

/// The data offset of the first run with page data of reactor `a` that is
/// long enough to be mapped lazily (at least 64 pages: shorter runs are
/// read), and its first page.
fn mapped_run_of(path: &Path, a: Address) -> (u64, u64) {
    let f = SnapshotFile::open(path, abi::ABI_VERSION).unwrap();
    let e = f.meta().reactors.iter().find(|e| e.address == a.0).unwrap();
    let r = e.runs.iter().find(|r| r.data.is_some() && r.pages >= 64).expect("a long run");
    (r.data.unwrap(), r.first_page)
}

fn flip(path: &Path, file_offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[file_offset as usize] ^= 0x04;
    std::fs::write(path, &b).unwrap();
}

fn failure_of(rt: &Shard, a: Address) -> String {
    match rt.state(a) {
        Some(ReactorState::Failed(f)) => f.to_string(),
        other => panic!("{a} should have failed, is {other:?}"),
    }
}

#[test]
fn a_checkpoint_checks_untouched_lazy_pages_and_leaves_a_damaged_reactor_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.snap");
    let (addrs, probes) = three_kvs(&path);
    let victim = addrs[2];
    let (data, first_page) = mapped_run_of(&path, victim);
    let damaged_page = data / PAGE_SIZE as u64 + 1;
    flip(&path, HEADER_LEN as u64 + damaged_page * PAGE_SIZE as u64 + 7);
    let mut rt = shard();
    let f = SnapshotFile::open(&path, abi::ABI_VERSION).unwrap();
    rt.restore_files(&[f], RestoreOptions::lazy()).unwrap();
    // Nobody touched the victim's pages: a checkpoint reads them all, so
    // it checks them first, fails the victim and saves the rest.
    let cp = rt.checkpoint(SnapshotOptions::new(Capture::Blocking)).unwrap();
    let cause = failure_of(&rt, victim);
    assert!(cause.contains(&format!("memory page {}", first_page + 1)), "{cause}");
    assert!(cause.contains(&format!("data page {damaged_page}")), "{cause}");
    let saved = cp.reactors();
    assert_eq!(saved, vec![addrs[0], addrs[1]], "the damaged reactor is left out of the checkpoint");
    let again = dir.path().join("again.snap");
    cp.write(&again, &mut |_, _| {}).unwrap();
    let mut rt2 = shard();
    let f = SnapshotFile::open(&again, abi::ABI_VERSION).unwrap();
    rt2.restore_files(&[f], RestoreOptions::lazy()).unwrap();
    for i in 0..2 {
        assert_eq!(get(&mut rt2, addrs[i], &probes[i].0), probes[i].1);
    }
}

#[test]
fn a_flipped_bit_fails_only_the_reactor_restored_lazily_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.snap");
    let (addrs, probes) = three_kvs(&path);
    let victim = addrs[1];
    let (data, first_page) = mapped_run_of(&path, victim);
    // A bit in the 3rd page of that run.
    let damaged_page = data / PAGE_SIZE as u64 + 2;
    flip(&path, HEADER_LEN as u64 + damaged_page * PAGE_SIZE as u64 + 100);
    let before = std::fs::read(&path).unwrap();

    for options in [RestoreOptions::lazy(), RestoreOptions { verify: false, ..RestoreOptions::default() }] {
        let mut rt = shard();
        let f = SnapshotFile::open(&path, abi::ABI_VERSION).unwrap();
        let mut restored = rt.restore_files(&[f], options).unwrap();
        // A bystander living in the same shard.
        let bystander = rt.spawn_with(&module("counter"), &5u64).unwrap();
        restored.sort();
        assert_eq!(restored, addrs, "{options:?}: every reactor is accounted for");
        if options.load == Load::Lazy {
            // Lazily mapped pages are checked on first touch: the victim
            // lives until it reads the damaged page, and its reply to the
            // request that reads it never leaves.
            assert!(matches!(rt.state(victim), Some(ReactorState::Running)), "{:?}", rt.state(victim));
            let all = KvReq::Range { start: String::new(), end: None, limit: u32::MAX };
            let r = rt.call_typed::<_, KvReply>(victim, &all);
            assert!(r.is_err(), "a reply built from a damaged page must not leave: {r:?}");
        }
        let cause = failure_of(&rt, victim);
        assert!(cause.contains(&format!("{victim}")) && cause.contains("damaged"), "{cause}");
        assert!(cause.contains(&format!("memory page {}", first_page + 2)), "{cause}");
        assert!(cause.contains(&format!("data page {damaged_page}")), "{cause}");
        for (i, &a) in addrs.iter().enumerate() {
            if a != victim {
                assert_eq!(get(&mut rt, a, &probes[i].0), probes[i].1, "{options:?}: reactor {a} answers as before");
            }
        }
        let n: u64 = rt.call_typed(bystander, &CounterMsg::Get).unwrap();
        assert_eq!(n, 5);
        // A request to the failed reactor is refused, not hung.
        assert!(rt.call_typed::<_, KvReply>(victim, &KvReq::Stats).is_err());
    }
    // Eager restore with the default check refuses the same file whole.
    let mut rt = shard();
    let f = SnapshotFile::open(&path, abi::ABI_VERSION).unwrap();
    let e = rt.restore_files(&[f], RestoreOptions::default()).unwrap_err();
    assert!(matches!(e, SnapshotError::File(FormatError::DataCorrupt)), "{e}");
    assert!(addrs.iter().all(|&a| rt.state(a).is_none()), "nothing restored");
    // The stored file is untouched by all of it.
    assert!(std::fs::read(&path).unwrap() == before);
}

/// Rewrites a checkpoint file in format version 1 (no page checksums), as
/// an older host wrote it. Blob-free checkpoints only.
fn as_version_1(from: &Path, to: &Path) {
    let f = SnapshotFile::open(from, abi::ABI_VERSION).unwrap();
    assert!(f.meta().blobs.is_empty());
    let mut data = vec![0u8; f.header().data_len as usize];
    f.read_data(0, &mut data).unwrap();
    let mut w = Writer::create_version(to, FORMAT_VERSION_1, abi::ABI_VERSION, Kind::Full, f.header().id).unwrap();
    assert_eq!(w.append_pages(&data).unwrap(), 0);
    w.finish(f.meta()).unwrap();
}

#[test]
fn a_version_1_snapshot_is_still_restored_and_checked_whole_on_the_lazy_path() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2.snap");
    let v1 = dir.path().join("v1.snap");
    let (addrs, probes) = three_kvs(&v2);
    as_version_1(&v2, &v1);
    let f = SnapshotFile::open(&v1, abi::ABI_VERSION).unwrap();
    assert_eq!(f.header().format_version, FORMAT_VERSION_1);
    assert!(!f.has_page_hashes());
    for options in [RestoreOptions::lazy(), RestoreOptions::default()] {
        let mut rt = shard();
        rt.restore_files(&[SnapshotFile::open(&v1, abi::ABI_VERSION).unwrap()], options).unwrap();
        for (i, &a) in addrs.iter().enumerate() {
            assert_eq!(get(&mut rt, a, &probes[i].0), probes[i].1, "{options:?}");
        }
    }
    // Damaged: without page checksums the lazy path checks the whole data
    // section first and refuses the file; nothing is restored.
    let (data, _) = mapped_run_of(&v1, addrs[2]);
    flip(&v1, HEADER_LEN as u64 + data + 5);
    let mut rt = shard();
    let f = SnapshotFile::open(&v1, abi::ABI_VERSION).unwrap();
    let e = rt.restore_files(&[f], RestoreOptions::lazy()).unwrap_err();
    assert!(matches!(e, SnapshotError::File(FormatError::DataCorrupt)), "{e}");
    assert!(addrs.iter().all(|&a| rt.state(a).is_none()));
}

/// Writes `meta` over the data section of the file at `from` into a new
/// file at `to`, with every length and checksum made right: a forged file
/// that only the meta's rules can refuse.
fn forge(from: &Path, to: &Path, edit: impl FnOnce(&mut Meta)) {
    let f = SnapshotFile::open(from, abi::ABI_VERSION).unwrap();
    let mut meta = f.meta().clone();
    edit(&mut meta);
    let mut data = vec![0u8; f.header().data_len as usize];
    f.read_data(0, &mut data).unwrap();
    let hashes: Vec<u64> =
        data.chunks(PAGE_SIZE).enumerate().map(|(i, p)| snapshot_format::page_hash(i as u64, p)).collect();
    let meta_bytes = snapshot_format::encode_meta(&meta, FORMAT_VERSION, &hashes).unwrap();
    let h = Header {
        meta_len: meta_bytes.len() as u64,
        meta_hash: snapshot_format::blob_hash(&meta_bytes),
        ..f.header().clone()
    };
    let mut out = h.to_bytes();
    out.extend_from_slice(&data);
    out.extend_from_slice(&meta_bytes);
    std::fs::write(to, out).unwrap();
}

#[test]
fn forged_metadata_is_refused_before_anything_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.snap");
    let bad = dir.path().join("bad.snap");
    // Two reactors each holding a blob of their own.
    let mut rt = shard();
    let mut addrs = Vec::new();
    for i in 0..2u8 {
        let a = rt.spawn(&module("kv"), &[]).unwrap();
        let r: KvReply = rt.call_typed(a, &KvReq::PutBlob { bytes: vec![i + 1; 5000] }).unwrap();
        assert!(matches!(r, KvReply::Blob { .. }), "{r:?}");
        addrs.push(a);
    }
    rt.checkpoint(SnapshotOptions::new(Capture::Blocking)).unwrap().write(&good, &mut |_, _| {}).unwrap();

    type Edit = Box<dyn Fn(&mut Meta)>;
    let attacks: Vec<(&str, Edit, &str)> = vec![
        ("overlapping blob ranges", Box::new(|m| m.blobs[1].offset = m.blobs[0].offset), "overlap"),
        (
            "a run over a blob",
            Box::new(|m| {
                let off = m.blobs[0].offset;
                let r = m.reactors[0].runs.iter_mut().find(|r| r.data.is_some()).unwrap();
                r.data = Some(off);
                r.pages = 1;
            }),
            "overlap",
        ),
        ("a huge held list", Box::new(|m| m.reactors[0].blobs = (1..=5000).collect()), "more than 4096"),
        (
            "a huge outstanding list",
            Box::new(|m| m.reactors[0].outstanding = (0..70_000).map(|c| (c, 1)).collect()),
            "more than 65536",
        ),
        ("a huge blob", Box::new(|m| m.blobs[0].len = 1 << 40), "limit"),
    ];
    for (what, edit, says) in attacks {
        forge(&good, &bad, edit);
        let e = SnapshotFile::open(&bad, abi::ABI_VERSION).unwrap_err();
        assert!(e.to_string().contains(says), "{what}: {e}");
        if says == "overlap" {
            assert!(matches!(e, FormatError::Overlap { .. }), "{what}: {e:?}");
        }
    }
    // The live reactors that wrote the file are untouched, and the good
    // file still restores.
    for &a in &addrs {
        assert!(matches!(rt.call_typed::<_, KvReply>(a, &KvReq::Stats).unwrap(), KvReply::Stats { .. }));
    }
    let mut fresh = shard();
    fresh.restore_files(&[SnapshotFile::open(&good, abi::ABI_VERSION).unwrap()], RestoreOptions::default()).unwrap();
}

#[test]
fn restored_counters_beyond_what_the_node_issued_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.snap");
    let bad = dir.path().join("bad.snap");
    let mut rt = shard();
    // Some reactors first, so the victim's address is not the first one a
    // fresh shard hands out.
    for _ in 0..4 {
        rt.spawn_with(&module("counter"), &0u64).unwrap();
    }
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    let r: KvReply = rt.call_typed(a, &KvReq::PutBlob { bytes: vec![3; 100] }).unwrap();
    assert!(matches!(r, KvReply::Blob { .. }), "{r:?}");
    rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap().write(&good, &mut |_, _| {}).unwrap();
    let near_limit = reactor_types::address::MAX_SERIAL - 3;
    type Attack = (&'static str, Box<dyn Fn(&mut Meta)>);
    let attacks: Vec<Attack> = vec![
        ("correlation counter", Box::new(move |m| m.reactors[0].next_corr = near_limit)),
        (
            "held blob tag",
            Box::new(move |m| {
                m.blobs[0].tag = near_limit;
                m.reactors[0].blobs = vec![near_limit];
            }),
        ),
        ("outstanding request", Box::new(move |m| m.reactors[0].outstanding = vec![(near_limit << 8, 1)])),
    ];
    for (what, edit) in attacks {
        forge(&good, &bad, edit);
        let mut fresh = shard();
        let keeper = fresh.spawn(&module("kv"), &[]).unwrap();
        let before = fresh.refs().tags().peek();
        let e = fresh.restore_files(&[SnapshotFile::open(&bad, abi::ABI_VERSION).unwrap()], RestoreOptions::default());
        let e = e.unwrap_err();
        assert!(matches!(e, SnapshotError::Counter { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains("beyond"), "{what}: {e}");
        assert_eq!(fresh.refs().tags().peek(), before, "{what}: the node's counters moved");
        assert_eq!(fresh.refs().tags().observed(), 0, "{what}");
        assert!(fresh.state(a).is_none(), "{what}: nothing restored");
        // The node goes on issuing tags and serving its reactors.
        assert!(matches!(fresh.call_typed::<_, KvReply>(keeper, &KvReq::Stats).unwrap(), KvReply::Stats { .. }));
        fresh.spawn(&module("kv"), &[]).unwrap();
    }
    // A node with a data directory accepts only what its persisted mark
    // covers: a fresh directory has issued nothing yet.
    let data_dir = tempfile::tempdir().unwrap();
    let source = reactor_runtime::refs::TagSource::open(data_dir.path()).unwrap();
    assert!(source.check_restorable(1).is_ok() || source.peek() == 1);
    source.take(10).unwrap();
    source.check_restorable(5).unwrap();
    assert!(source.check_restorable(near_limit).is_err());
}

#[test]
fn many_lazy_restores_stay_within_the_node_mapping_budget() {
    run_alone("hostile_files::many_lazy_restores_alone");
}

#[test]
#[ignore = "run in its own process by many_lazy_restores_stay_within_the_node_mapping_budget"]
fn many_lazy_restores_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three.snap");
    let (addrs, probes) = three_kvs(&path);
    let budget = 5;
    let previous = set_lazy_map_budget(budget);
    assert!(previous > budget);
    assert_eq!(lazy_map_budget(), budget);
    let mut shards = Vec::new();
    for _ in 0..6 {
        let mut rt = shard();
        rt.restore_files(&[SnapshotFile::open(&path, abi::ABI_VERSION).unwrap()], RestoreOptions::lazy()).unwrap();
        assert!(lazy_mapped_runs() <= budget, "{} runs mapped, budget {budget}", lazy_mapped_runs());
        shards.push(rt);
    }
    assert_eq!(lazy_mapped_runs(), budget, "the budget was used, then restores read instead");
    // Every reactor, mapped or read, answers correctly.
    for rt in &mut shards {
        for (i, &a) in addrs.iter().enumerate() {
            assert_eq!(get(rt, a, &probes[i].0), probes[i].1);
        }
    }
    drop(shards);
    assert_eq!(lazy_mapped_runs(), 0, "freed memories give their runs back");
    set_lazy_map_budget(previous);
}

#[test]
fn a_guest_writing_every_other_page_during_a_concurrent_snapshot() {
    run_alone("hostile_files::every_other_page_alone");
}

#[test]
#[ignore = "run in its own process by a_guest_writing_every_other_page_during_a_concurrent_snapshot"]
fn every_other_page_alone() {
    let mut rt = shard_with(ShardConfig {
        limits: Limits { memory_cap: 1 << 30, cpu_budget: Duration::from_secs(60), budget: None },
        ..ShardConfig::default()
    });
    let counter = rt.spawn_with(&module("counter"), &1u64).unwrap();
    let pager = rt.spawn_with(&module("pager"), &512u32).unwrap();
    // Pages 0, 1000, 2000… hold 7.
    let n: u64 = rt.call_typed(pager, &(0u8, 1000u64, 7u64)).unwrap();
    let want_sum = n * 7;
    let pages = rt.memory_size(pager).unwrap() / PAGE_SIZE;
    let cp = rt.snapshot(pager, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    // The attack: write every other page while the copy runs, splitting the
    // tracked mapping past vm.max_map_count.
    let written: u64 = rt.call_typed(pager, &(0u8, 2u64, 9u64)).unwrap();
    assert!(written >= (512 << 20) / PAGE_SIZE as u64 / 2);
    cp.wait();
    let limit = reactor_runtime::mappings().map_or(usize::MAX, |(_, l)| l);
    if limit < pages / 2 {
        assert_eq!(cp.protection_failures(), vec![pager], "the failure is reported");
        // Its dirty-page record is gone: an incremental snapshot is refused
        // clearly, a full one works.
        let e = rt.snapshot(pager, SnapshotOptions::new(Capture::Incremental)).unwrap_err();
        assert!(matches!(e, SnapshotError::NoBase(a) if a == pager), "{e}");
    }
    // The shard runs on, the pager holds what it wrote, the process's
    // mappings merged back.
    let c: u64 = rt.call_typed(counter, &CounterMsg::Add(1)).unwrap();
    assert_eq!(c, 2);
    let sum: u64 = rt.call_typed(pager, &(2u8, 0u64, 0u64)).unwrap();
    assert!(sum >= written * 9);
    let (now, limit) = reactor_runtime::mappings().unwrap();
    assert!(now < limit / 2, "{now} mappings of {limit}");
    rt.snapshot(pager, SnapshotOptions::new(Capture::Concurrent)).unwrap().wait();
    // The capture is the memory at the boundary, exactly.
    let mut fresh = shard_with(ShardConfig {
        limits: Limits { memory_cap: 1 << 30, cpu_budget: Duration::from_secs(60), budget: None },
        ..ShardConfig::default()
    });
    fresh.restore(&[&cp]).unwrap();
    let sum: u64 = fresh.call_typed(pager, &(2u8, 0u64, 0u64)).unwrap();
    assert_eq!(sum, want_sum);
}

#[test]
fn snapshot_files_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    // Runtime checkpoints.
    let mut rt = shard();
    rt.spawn_with(&module("counter"), &1u64).unwrap();
    let path = dir.path().join("c.snap");
    rt.checkpoint(SnapshotOptions::default()).unwrap().write(&path, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Replacing a world-readable file leaves an owner-only one.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    rt.checkpoint(SnapshotOptions::default()).unwrap().write(&path, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // The command line's snapshots.
    let snap = dir.path().join("cli.snap");
    let cache = dir.path().join("cache");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(["snapshot", example_guests::path("kv").to_str().unwrap(), "-o", snap.to_str().unwrap()])
        .arg(r#"{"Put":{"key":"a","value":"b"}}"#)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777, 0o600);
}
