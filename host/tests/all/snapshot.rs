//! Snapshots of real guests: byte-identical restore, copy-on-write under
//! concurrent writes, delta chains, files, refusals, blob de-duplication.
use crate::util::*;
use protocols::{CounterMsg, KvReply, KvReq};
use reactor_runtime::snapshot::{
    Capture, Compression, FormatError, Kind, RestoreOptions, SnapshotError, SnapshotFile, SnapshotOptions,
};
use reactor_runtime::{Address, Shard, abi};

fn fill(rt: &mut Shard, a: Address, prefix: &str, count: u64, value_len: u32, seed: u64) {
    let r: KvReply = rt.call_typed(a, &KvReq::Fill { prefix: prefix.into(), count, value_len, seed }).unwrap();
    assert!(matches!(r, KvReply::Done { .. }), "{r:?}");
}

fn stats(rt: &mut Shard, a: Address) -> KvReply {
    rt.call_typed(a, &KvReq::Stats).unwrap()
}

fn get(rt: &mut Shard, a: Address, k: &str) -> KvReply {
    rt.call_typed(a, &KvReq::Get { key: k.into() }).unwrap()
}

fn put(rt: &mut Shard, a: Address, k: &str, v: &str) {
    rt.send_typed(a, &KvReq::Put { key: k.into(), value: v.into() }).unwrap();
}

fn range(rt: &mut Shard, a: Address) -> KvReply {
    rt.call_typed(a, &KvReq::Range { start: "".into(), end: None, limit: 50 }).unwrap()
}

/// A kv reactor holding about `mb` MiB of entries.
fn big_kv(rt: &mut Shard, mb: u64) -> Address {
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    fill(rt, a, "k", mb * 1024, 900, 7);
    a
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn every_capture_mode_restores_byte_identical_memory_and_same_replies() {
    for capture in [Capture::Blocking, Capture::Concurrent] {
        let mut rt = shard();
        let a = big_kv(&mut rt, 8);
        put(&mut rt, a, "hello", "world");
        rt.run_until_idle();
        let boundary = rt.read_memory(a).unwrap();
        let cp = rt.snapshot(a, SnapshotOptions::new(capture)).unwrap();
        cp.wait();
        assert_eq!(cp.kind(), Kind::Full);
        assert!(cp.page_bytes() < cp.memory_bytes(), "zero pages are elided");

        let mut fresh = shard();
        let restored = fresh.restore(&[&cp]).unwrap();
        assert_eq!(restored, vec![a], "a restored reactor keeps its address");
        assert!(fresh.read_memory(a).unwrap() == boundary, "{capture:?}: memory differs after restore");
        assert_eq!(stats(&mut fresh, a), stats(&mut rt, a));
        assert_eq!(get(&mut fresh, a, "hello"), KvReply::Value(Some("world".into())));
        assert_eq!(range(&mut fresh, a), range(&mut rt, a));
        // Both go on identically from the same input.
        put(&mut rt, a, "after", "1");
        put(&mut fresh, a, "after", "1");
        rt.run_until_idle();
        fresh.run_until_idle();
        assert!(fresh.read_memory(a).unwrap() == rt.read_memory(a).unwrap(), "{capture:?}: diverged");
    }
}

#[test]
fn counter_resumes_where_it_stopped_with_its_queued_messages() {
    let mut rt = shard();
    let a = rt.spawn_with(&module("counter"), &40u64).unwrap();
    rt.send_typed(a, &CounterMsg::Add(1)).unwrap();
    rt.run_until_idle();
    // Two messages queued, not yet delivered: they are part of the state.
    rt.send_typed(a, &CounterMsg::Add(10)).unwrap();
    rt.send_typed(a, &CounterMsg::Add(100)).unwrap();
    let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    let mut fresh = shard();
    fresh.restore(&[&cp]).unwrap();
    assert_eq!(fresh.queued(a), Some(2));
    let n: u64 = fresh.call_typed(a, &CounterMsg::Get).unwrap();
    assert_eq!(n, 151);
    let n: u64 = rt.call_typed(a, &CounterMsg::Get).unwrap();
    assert_eq!(n, 151);
}

/// The copy-on-write snapshot equals the boundary state byte for byte while
/// the reactor rewrites its memory during the background copy, including
/// growth that moves the memory.
#[test]
fn concurrent_snapshot_is_exact_under_concurrent_writes_and_growth() {
    let mut rt = shard();
    let a = big_kv(&mut rt, 24);
    let mut faulted = 0;
    for round in 0..4u64 {
        rt.run_until_idle();
        let boundary = rt.read_memory(a).unwrap();
        let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent)).unwrap();
        // Overwrite existing entries (writes all over the heap) and, in
        // later rounds, grow far past the capacity so the memory moves.
        fill(&mut rt, a, "k", 24 * 1024, 900, 100 + round);
        if round >= 2 {
            fill(&mut rt, a, &format!("grow{round}"), 40 * 1024, 900, round);
        }
        cp.wait();
        faulted += cp.pages_copied_on_write();
        let mut fresh = shard();
        fresh.restore(&[&cp]).unwrap();
        let restored = fresh.read_memory(a).unwrap();
        assert_eq!(restored.len(), boundary.len());
        let first_diff = restored.iter().zip(&boundary).position(|(x, y)| x != y);
        assert_eq!(first_diff, None, "round {round}: restored memory differs from the boundary");
    }
    // The race this test is about happened: writes reached pages before the
    // copier did, and the fault handler copied them first.
    assert!(faulted > 0, "no write raced the background copy");
}

fn modify(rt: &mut Shard, a: Address, i: u64) {
    for k in 0..50 {
        put(rt, a, &format!("k{:010}", k * 37 + i), &format!("v{i}-{k}"));
    }
    put(rt, a, &format!("new{i}"), "x");
    rt.run_until_idle();
}

#[test]
fn a_delta_chain_restores_to_the_same_bytes_in_memory_and_from_files() {
    let dir = tmp();
    let mut rt = shard();
    let a = big_kv(&mut rt, 4);
    let cp0 = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    modify(&mut rt, a, 1);
    let cp1 = rt.snapshot(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    modify(&mut rt, a, 2);
    fill(&mut rt, a, "grown", 2048, 900, 3);
    let cp2 = rt.snapshot(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    let want = rt.read_memory(a).unwrap();
    assert_eq!(cp1.kind(), Kind::Delta { base: cp0.id() });
    assert_eq!(cp2.kind(), Kind::Delta { base: cp1.id() });
    assert!(cp1.page_bytes() * 10 < cp0.page_bytes(), "a delta holds only written pages");

    let mut fresh = shard();
    fresh.restore(&[&cp0, &cp1, &cp2]).unwrap();
    assert!(fresh.read_memory(a).unwrap() == want, "in-memory chain");

    let paths: Vec<_> = (0..3).map(|i| dir.path().join(format!("kv.{i}.snap"))).collect();
    for (cp, p) in [&cp0, &cp1, &cp2].iter().zip(&paths) {
        cp.write(p, &mut |_, _| {}).unwrap();
    }
    let want_stats = stats(&mut rt, a);
    let KvReply::Stats { keys, .. } = want_stats else { panic!("{want_stats:?}") };
    for options in [RestoreOptions::default(), RestoreOptions::lazy()] {
        let files: Vec<_> = paths.iter().map(|p| SnapshotFile::open(p, abi::ABI_VERSION).unwrap()).collect();
        let mut fresh = shard();
        fresh.restore_files(&files, options).unwrap();
        assert!(fresh.read_memory(a).unwrap() == want, "{options:?}");
        assert_eq!(stats(&mut fresh, a), want_stats);
        // A lazily restored memory keeps working when it grows (it is
        // several kernel mappings now, so growth copies) and can be
        // snapshotted again.
        fill(&mut fresh, a, "more", 8192, 900, 9);
        let grown = stats(&mut fresh, a);
        assert!(matches!(grown, KvReply::Stats { keys: k, .. } if k == keys + 8192), "{grown:?}");
        let again = fresh.snapshot(a, SnapshotOptions::new(Capture::Concurrent)).unwrap();
        let mut third = shard();
        third.restore(&[&again]).unwrap();
        assert_eq!(stats(&mut third, a), grown);
        assert_eq!(range(&mut third, a), range(&mut fresh, a));
    }

    // Out of order or broken chains are refused.
    let mut fresh = shard();
    assert!(matches!(fresh.restore(&[&cp1]), Err(SnapshotError::Chain(_))));
    assert!(matches!(fresh.restore(&[&cp0, &cp2]), Err(SnapshotError::File(FormatError::DeltaBase { .. }))));
    assert!(matches!(fresh.restore(&[&cp0, &cp0]), Err(SnapshotError::File(FormatError::NotADelta))));
    assert_eq!(fresh.live().count(), 0);
}

/// A chain written compressed (format version 3) restores to the same
/// bytes, eagerly and when asked lazily (decompressed all the same); its
/// files are smaller; a damaged frame fails that reactor's restore with
/// the page named, and the good files still restore.
#[test]
fn a_compressed_chain_restores_the_same_bytes_and_damage_is_named() {
    let dir = tmp();
    let mut rt = shard();
    // About 4 MiB of documents that look like a JSON store's (kv's Fill
    // writes random letters, which LZ4 cannot shrink).
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    for i in 0..4000 {
        let doc = format!(r#"{{"id":{i},"name":"user {}","tags":["a","b"],"active":{}}}"#, i % 97, i % 2 == 0);
        put(&mut rt, a, &format!("doc{i:06}"), &doc.repeat(10));
    }
    rt.run_until_idle();
    let cp0 = rt.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    modify(&mut rt, a, 1);
    let cp1 = rt.snapshot(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    let want = rt.read_memory(a).unwrap();
    let want_stats = stats(&mut rt, a);
    let plain = dir.path().join("plain.snap");
    cp0.write(&plain, &mut |_, _| {}).unwrap();
    let paths: Vec<_> = (0..2).map(|i| dir.path().join(format!("z.{i}.snap"))).collect();
    for (cp, p) in [&cp0, &cp1].iter().zip(&paths) {
        let r = cp.write_with(p, Compression::Lz4, &mut |_, _| {}).unwrap();
        assert_eq!(r.file_bytes, std::fs::metadata(p).unwrap().len());
    }
    let (z, raw) = (std::fs::metadata(&paths[0]).unwrap().len(), std::fs::metadata(&plain).unwrap().len());
    assert!(z * 2 < raw, "documents compress: {z} bytes against {raw}");
    for options in [RestoreOptions::default(), RestoreOptions::lazy()] {
        let files: Vec<_> = paths.iter().map(|p| SnapshotFile::open(p, abi::ABI_VERSION).unwrap()).collect();
        assert!(files.iter().all(|f| !f.mappable() && f.header().stored.is_some()));
        let mut fresh = shard();
        fresh.restore_files(&files, options).unwrap();
        assert!(fresh.read_memory(a).unwrap() == want, "{options:?}");
        assert_eq!(stats(&mut fresh, a), want_stats);
        assert_eq!(range(&mut fresh, a), range(&mut rt, a));
    }
    // A compressed delta on an uncompressed base, and the other way round.
    let files = [SnapshotFile::open(&plain, abi::ABI_VERSION).unwrap(), SnapshotFile::open(&paths[1], abi::ABI_VERSION).unwrap()];
    let mut fresh = shard();
    fresh.restore_files(&files, RestoreOptions::lazy()).unwrap();
    assert!(fresh.read_memory(a).unwrap() == want, "mixed chain");

    // Damage inside the first frame's compressed bytes.
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    bytes[4096 + 2000] ^= 0x5a;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let f = SnapshotFile::open(&bad, abi::ABI_VERSION).unwrap();
    assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
    let mut fresh = shard();
    let r = fresh.restore_files(&[f], RestoreOptions::default());
    assert!(matches!(r, Err(SnapshotError::File(FormatError::DataCorrupt))), "{r:?}");
    let f = SnapshotFile::open(&bad, abi::ABI_VERSION).unwrap();
    let restored = fresh.restore_files(&[f], RestoreOptions::lazy()).unwrap();
    assert_eq!(restored, vec![a]);
    match fresh.state(a) {
        Some(reactor_runtime::ReactorState::Failed(f)) => {
            let why = f.to_string();
            // A frame that no longer decompresses, or one that does into
            // pages failing their checksums: either is named.
            assert!(why.contains("memory page") && (why.contains("frame 0") || why.contains("data page")), "{why}");
        }
        other => panic!("the damaged reactor should be recorded as failed: {other:?}"),
    }
    // The good file restores after all that.
    let f = SnapshotFile::open(&paths[0], abi::ABI_VERSION).unwrap();
    let mut fresh = shard();
    fresh.restore_files(&[f], RestoreOptions::default()).unwrap();
}

#[test]
fn incremental_needs_a_tracked_base() {
    let mut rt = shard();
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    let r = rt.snapshot(a, SnapshotOptions::new(Capture::Incremental));
    assert!(matches!(r, Err(SnapshotError::NoBase(x)) if x == a), "{r:?}");
    rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    assert!(matches!(rt.snapshot(a, SnapshotOptions::new(Capture::Incremental)), Err(SnapshotError::NoBase(_))));
    let missing = Address(a.0 + 1000);
    assert!(matches!(rt.snapshot(missing, SnapshotOptions::default()), Err(SnapshotError::NoSuchReactor(_))));
}

fn write_snapshot(rt: &mut Shard, a: Address, path: &std::path::Path) -> Vec<u8> {
    let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    cp.write(path, &mut |_, _| {}).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn bad_snapshot_files_are_refused_with_the_reason_and_nothing_breaks() {
    let dir = tmp();
    let mut rt = shard();
    let a = big_kv(&mut rt, 1);
    let good = dir.path().join("good.snap");
    let bytes = write_snapshot(&mut rt, a, &good);
    let open = |b: &[u8]| {
        let p = dir.path().join("bad.snap");
        std::fs::write(&p, b).unwrap();
        SnapshotFile::open(&p, abi::ABI_VERSION)
    };

    assert!(matches!(open(b"hello, I am a text file"), Err(FormatError::NotASnapshot)));
    assert!(matches!(open(&bytes[..bytes.len() - 10]), Err(FormatError::Truncated { .. })));
    assert!(matches!(open(&bytes[..6000]), Err(FormatError::Truncated { .. })));
    let mut v = bytes.clone();
    v[8] = 9; // format version
    assert!(matches!(open(&v), Err(FormatError::FormatVersion { found: 9, .. })));
    let mut v = bytes.clone();
    v[30] ^= 1; // inside the id: header checksum
    assert!(matches!(open(&v), Err(FormatError::HeaderCorrupt)));
    let mut v = bytes.clone();
    let last = v.len() - 3;
    v[last] ^= 0x40; // meta
    assert!(matches!(open(&v), Err(FormatError::MetaCorrupt)));
    assert!(matches!(SnapshotFile::open(&good, abi::ABI_VERSION + 1), Err(FormatError::AbiVersion { .. })));

    // Page data damage: refused by a verifying restore, found by verify.
    let mut v = bytes.clone();
    v[4096 + 100] ^= 0xff;
    let f = open(&v).unwrap();
    assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
    let mut fresh = shard();
    let r = fresh.restore_files(&[f], RestoreOptions::default());
    assert!(matches!(r, Err(SnapshotError::File(FormatError::DataCorrupt))), "{r:?}");
    assert_eq!(fresh.live().count(), 0);

    // Restoring over a live reactor is refused; the live one is untouched.
    let f = SnapshotFile::open(&good, abi::ABI_VERSION).unwrap();
    let before = stats(&mut rt, a);
    assert!(matches!(rt.restore_files(&[f], RestoreOptions::default()), Err(SnapshotError::AddressInUse(x)) if x == a));
    assert_eq!(stats(&mut rt, a), before);

    // A module this host has not loaded: a fresh engine without kv.
    let other = reactor_runtime::Engine::new(reactor_runtime::EngineConfig::default()).unwrap();
    let mut elsewhere = Shard::new(std::sync::Arc::new(other), Default::default());
    let f = SnapshotFile::open(&good, abi::ABI_VERSION).unwrap();
    let r = elsewhere.restore_files(&[f], RestoreOptions::default());
    assert!(matches!(r, Err(SnapshotError::ModuleNotLoaded { .. })), "{r:?}");

    // The good file still restores after all that.
    let f = SnapshotFile::open(&good, abi::ABI_VERSION).unwrap();
    let mut fresh = shard();
    fresh.restore_files(&[f], RestoreOptions::default()).unwrap();
    assert_eq!(stats(&mut fresh, a), before);
}

#[test]
fn a_failed_write_never_replaces_a_good_snapshot() {
    let dir = tmp();
    let mut rt = shard();
    let a = big_kv(&mut rt, 1);
    let path = dir.path().join("kv.snap");
    let good = write_snapshot(&mut rt, a, &path);
    // Writing into a directory that vanished fails before the rename.
    let gone = dir.path().join("gone").join("kv.snap");
    let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    assert!(cp.write(&gone, &mut |_, _| {}).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
}

#[test]
fn a_checkpoint_of_a_shard_restores_every_reactor_consistently() {
    let dir = tmp();
    let mut rt = shard();
    let kvs: Vec<Address> = (0..5).map(|_| rt.spawn(&module("kv"), &[])).collect::<Result<_, _>>().unwrap();
    let counters: Vec<Address> =
        (0..5).map(|i| rt.spawn_with(&module("counter"), &(i as u64))).collect::<Result<_, _>>().unwrap();
    for (i, &k) in kvs.iter().enumerate() {
        fill(&mut rt, k, "x", 100 * (i as u64 + 1), 100, i as u64);
    }
    for &c in &counters {
        rt.send_typed(c, &CounterMsg::Add(5)).unwrap();
    }
    let cp = rt.checkpoint(SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    assert_eq!(cp.reactors().len(), 10);
    let path = dir.path().join("all.snap");
    cp.write(&path, &mut |_, _| {}).unwrap();
    for &k in &kvs {
        put(&mut rt, k, "later", "1");
    }
    rt.run_until_idle();
    let delta = rt.checkpoint(SnapshotOptions::new(Capture::Incremental)).unwrap();
    assert_eq!(delta.kind(), Kind::Delta { base: cp.id() });
    let dpath = dir.path().join("all.1.snap");
    delta.write(&dpath, &mut |_, _| {}).unwrap();

    let files = |paths: &[&std::path::Path]| -> Vec<SnapshotFile> {
        paths.iter().map(|p| SnapshotFile::open(p, abi::ABI_VERSION).unwrap()).collect()
    };
    let mut fresh = shard();
    let mut got = fresh.restore_files(&files(&[&path]), RestoreOptions::lazy()).unwrap();
    got.sort();
    let mut want: Vec<Address> = kvs.iter().chain(&counters).copied().collect();
    want.sort();
    assert_eq!(got, want);
    for (i, &c) in counters.iter().enumerate() {
        // The queued Add(5) was in the checkpoint.
        let n: u64 = fresh.call_typed(c, &CounterMsg::Get).unwrap();
        assert_eq!(n, i as u64 + 5);
    }
    let mut fresh = shard();
    fresh.restore_files(&files(&[&path, &dpath]), RestoreOptions::default()).unwrap();
    for &k in &kvs {
        assert_eq!(get(&mut fresh, k, "later"), KvReply::Value(Some("1".into())));
        assert_eq!(stats(&mut fresh, k), stats(&mut rt, k));
    }
    // New spawns in the restored shard never reuse a restored address.
    let n = fresh.spawn(&module("counter"), &postcard_u64(0)).unwrap();
    assert!(!want.contains(&n));
}

fn postcard_u64(v: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let mut v = v;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(byte);
            return b;
        }
        b.push(byte | 0x80);
    }
}

/// Many reactors holding one shared blob: the checkpoint stores it once and
/// restore links every holder to one copy, so restored memory use matches
/// the original instead of multiplying by the number of holders.
///
/// The measurement runs alone in a child process: resident memory is
/// process-wide and other tests allocate concurrently.
#[test]
fn a_blob_shared_by_many_reactors_is_stored_and_restored_once() {
    run_alone("snapshot::shared_blob_child");
}

#[test]
#[ignore = "run by a_blob_shared_by_many_reactors_is_stored_and_restored_once in its own process"]
fn shared_blob_child() {
    const HOLDERS: usize = 64;
    const BLOB: usize = 16 << 20;
    let dir = tmp();
    let resident = || reactor_runtime::resident_bytes().unwrap() as i64;
    let mut rt = shard();
    let kv = module("kv");
    let content: Vec<u8> = (0..BLOB).map(|i| (i * 31 % 251) as u8).collect();
    let before = resident();
    let tag = rt.create_blob(content.clone()).unwrap();
    let holders: Vec<Address> = (0..HOLDERS).map(|_| rt.spawn(&kv, &[]).unwrap()).collect();
    for &h in &holders {
        let r: KvReply = rt.call_typed(h, &KvReq::AttachBlob { tag }).unwrap();
        assert_eq!(r, KvReply::Blob { tag, len: BLOB as u64 });
    }
    rt.release_blob(tag);
    let original = resident() - before;
    let cp = rt.checkpoint(SnapshotOptions::new(Capture::Blocking)).unwrap();
    assert_eq!(cp.blob_count(), 1);
    let path = dir.path().join("shared.snap");
    let report = cp.write(&path, &mut |_, _| {}).unwrap();
    assert!(report.file_bytes < 2 * BLOB as u64, "blob stored more than once: {} bytes", report.file_bytes);
    drop(cp);
    drop(rt);

    let before = resident();
    let mut fresh = shard();
    let f = SnapshotFile::open(&path, abi::ABI_VERSION).unwrap();
    fresh.restore_files(&[f], RestoreOptions::default()).unwrap();
    let restored = resident() - before;
    assert_eq!(fresh.refs().live_blobs(), 1, "one blob, linked by every holder");
    let r: KvReply = fresh.call_typed(holders[17], &KvReq::ReadBlob { tag, offset: 1000, len: 8 }).unwrap();
    assert_eq!(r, KvReply::Bytes(content[1000..1008].to_vec()));
    assert!(
        restored < original + original / 2,
        "restore used {restored} bytes of memory for state that took {original} originally"
    );
    assert!(restored < 2 * BLOB as i64, "blob restored more than once: {restored} bytes");
}

/// A checkpoint of a whole multi-shard runtime taken while two reactors on
/// different shards play: the messages in flight between the shards are in
/// it, so in a new runtime restored from it the game finishes with every
/// ping and pong counted exactly once.
#[test]
fn a_runtime_checkpoint_mid_game_loses_and_duplicates_nothing() {
    use protocols::{PingMsg, PingReport};
    use reactor_runtime::{Runtime, RuntimeConfig};
    const ROUNDS: u64 = 200_000;
    let dir = tmp();
    let runtime = || Runtime::new(engine(), RuntimeConfig { shards: 2, ..RuntimeConfig::default() }).unwrap();
    let rt = runtime();
    let pp = module("pingpong");
    let a = rt.spawn_on(0, &pp, vec![], 0).unwrap();
    let b = rt.spawn_on(1, &pp, vec![], 0).unwrap();
    let play = PingMsg::Play { peer: Some(b.0), rounds: ROUNDS, window: 64, requests: false };
    let pending = rt.request(a, postcard::to_allocvec(&play).unwrap(), false).unwrap();
    // Let the game get going, then checkpoint while it runs.
    let mut cp = None;
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(1));
        let r: PingReport = rt.call_typed(b, &PingMsg::Report).unwrap();
        if r.pings > 1000 {
            cp = Some(rt.checkpoint(SnapshotOptions::new(Capture::Concurrent)).unwrap());
            break;
        }
    }
    let cp = cp.expect("the game started");
    drop(pending);
    let path = dir.path().join("runtime.snap");
    cp.write(&path, &mut |_, _| {}).unwrap();
    assert_eq!(cp.reactors().len(), 2);
    drop(rt);

    let restored = runtime();
    let files = vec![SnapshotFile::open(&path, abi::ABI_VERSION).unwrap()];
    let got = restored.restore_files(files, RestoreOptions::lazy()).unwrap();
    assert_eq!(got, { let mut v = vec![a, b]; v.sort(); v });
    // The game resumes by itself from the queued messages; wait for it.
    let mut last = PingReport::default();
    for _ in 0..2000 {
        last = restored.call_typed(a, &PingMsg::Report).unwrap();
        if last.pongs >= ROUNDS {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let rb: PingReport = restored.call_typed(b, &PingMsg::Report).unwrap();
    assert_eq!(restored.stats().dead_letters, 0, "no message reached a reactor not restored yet");
    assert_eq!(last.pongs, ROUNDS, "every pong arrived once: {last:?}");
    assert_eq!(rb.pings, ROUNDS, "every ping arrived once: {rb:?}");
}

/// A hand-written reactor whose code can change its table loads and runs,
/// but a snapshot of it is refused with the reason (its state is more than
/// memory and globals); a hand-written one with several mutable globals, none
/// exported, restores them all.
#[test]
fn modules_are_rewritten_so_every_global_is_captured_or_the_snapshot_refused() {
    const ABI: &str = r#"(@custom "reactor.abi" "\01\00\00\00")"#;
    let table = format!(
        r#"(module {ABI}
            (memory (export "memory") 1)
            (table 2 funcref)
            (func $f)
            (func (export "reactor_init") (param i32) (result i32) i32.const 0)
            (func (export "reactor_receive") (param i32 i32) (result i32)
                (table.set (i32.const 0) (ref.func $f)) i32.const 0)
            (elem declare func $f))"#
    );
    let (m, _) = engine().load(&wat::parse_str(table).unwrap()).unwrap();
    let mut rt = shard();
    let a = rt.spawn(&m, &[]).unwrap();
    rt.send(a, vec![1], false).unwrap();
    rt.run_until_idle();
    match rt.snapshot(a, SnapshotOptions::default()) {
        Err(SnapshotError::Unsupported { address, reason }) => {
            assert_eq!(address, a);
            assert!(reason.contains("table.set"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Hidden globals: each message adds to three of them; memory untouched.
    let globals = format!(
        r#"(module {ABI}
            (memory (export "memory") 1)
            (global $a (mut i32) (i32.const 1))
            (global $b (mut i64) (i64.const 2))
            (global $c (mut f64) (f64.const 0.5))
            (func (export "reactor_init") (param i32) (result i32) i32.const 0)
            (func (export "reactor_receive") (param i32 i32) (result i32)
                (global.set $a (i32.add (global.get $a) (i32.const 10)))
                (global.set $b (i64.mul (global.get $b) (i64.const 3)))
                (global.set $c (f64.add (global.get $c) (f64.const 0.25)))
                ;; store them where the test can see them
                (i32.store (i32.const 0) (global.get $a))
                (i64.store (i32.const 8) (global.get $b))
                (f64.store (i32.const 16) (global.get $c))
                i32.const 0))"#
    );
    let (m, _) = engine().load(&wat::parse_str(globals).unwrap()).unwrap();
    let a = rt.spawn(&m, &[]).unwrap();
    for _ in 0..3 {
        rt.send(a, vec![0], false).unwrap();
        rt.run_until_idle();
    }
    let cp = rt.snapshot(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    let mut fresh = shard();
    fresh.restore(&[&cp]).unwrap();
    // One more message on both: the globals must have continued, not reset.
    for s in [&mut rt, &mut fresh] {
        s.send(a, vec![0], false).unwrap();
        s.run_until_idle();
    }
    let (x, y) = (rt.read_memory(a).unwrap(), fresh.read_memory(a).unwrap());
    assert_eq!(&x[..24], &y[..24]);
    assert_eq!(i32::from_le_bytes(y[0..4].try_into().unwrap()), 41);
    assert_eq!(i64::from_le_bytes(y[8..16].try_into().unwrap()), 162);
    assert_eq!(f64::from_le_bytes(y[16..24].try_into().unwrap()), 1.5);
}
