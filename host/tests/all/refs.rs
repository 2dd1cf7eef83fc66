//! Restart-stable tags and shared immutable blobs, end to end.
use crate::util::*;
use protocols::{BlobOp, CounterMsg, FaultyCmd, KvReply, KvReq};
use reactor_runtime::refs::{Refs, TagSource};
use reactor_runtime::{
    Address, CallError, FailureReason, ReactorState, Runtime, RuntimeConfig, Shard, ShardConfig, abi,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn persisted_shard(dir: &std::path::Path) -> Shard {
    Shard::with_refs(engine(), ShardConfig::default(), Arc::new(Refs::open(dir, 0).unwrap()))
}

#[test]
fn addresses_and_request_ids_are_never_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut old_addrs = Vec::new();
    let mut old_ids = Vec::new();
    for round in 0..3 {
        let mut rt = persisted_shard(dir.path());
        let counter = module("counter");
        let addrs: Vec<Address> = (0..5).map(|_| rt.spawn(&counter, &[]).unwrap()).collect();
        let ids: Vec<u64> = addrs
            .iter()
            .map(|&a| rt.request(a, postcard::to_allocvec(&CounterMsg::Get).unwrap(), false).unwrap().0)
            .collect();
        rt.run_until_idle();
        let old_max_serial = old_addrs.iter().map(|a: &Address| a.serial()).max().unwrap_or(0);
        assert!(addrs.iter().all(|a| a.serial() > old_max_serial), "round {round}: {addrs:?} after {old_addrs:?}");
        let old_max_id = old_ids.iter().copied().max().unwrap_or(0);
        assert!(ids.iter().all(|&i| i > old_max_id), "round {round}: request ids reused");
        old_addrs.extend(addrs);
        old_ids.extend(ids);
        if round == 1 {
            // A crash: nothing runs at shutdown.
            std::mem::forget(rt);
        }
    }
}

#[test]
fn runtime_with_a_data_dir_resumes_above_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { shards: 2, data_dir: Some(dir.path().to_owned()), node: 5, ..RuntimeConfig::default() };
    let counter = module("counter");
    let first: Vec<Address> = {
        let rt = Runtime::new(engine(), config.clone()).unwrap();
        (0..4).map(|_| rt.spawn(&counter, &[]).unwrap()).collect()
    };
    let rt = Runtime::new(engine(), config.clone()).unwrap();
    let second: Vec<Address> = (0..4).map(|_| rt.spawn(&counter, &[]).unwrap()).collect();
    let max_first = first.iter().map(|a| a.serial()).max().unwrap();
    for a in &second {
        assert_eq!(a.node(), 5);
        assert!(a.serial() > max_first, "{a} reuses a serial of {first:?}");
        assert!(a.to_string().starts_with("#5."), "{a}");
        assert_eq!(a.to_string().parse::<Address>(), Ok(*a));
        assert_eq!(rt.call_typed::<_, u64>(*a, &CounterMsg::Add(3)).unwrap(), 3);
    }
    drop(rt);

    std::fs::write(dir.path().join(reactor_runtime::refs::HWM_FILE), b"garbage").unwrap();
    let err = Runtime::new(engine(), config.clone()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("corrupt") && err.to_string().contains("refusing to start"), "{err}");

    let bad_node = RuntimeConfig { node: 0x8000, data_dir: None, ..config };
    let err = Runtime::new(engine(), bad_node).unwrap_err();
    assert!(err.to_string().contains("node id 32768 is out of range"), "{err}");
}

#[test]
fn all_shards_of_a_runtime_share_one_tag_source() {
    let rt = Runtime::new(engine(), RuntimeConfig { shards: 4, ..RuntimeConfig::default() }).unwrap();
    let counter = module("counter");
    let addrs: Vec<Address> = (0..16).map(|_| rt.spawn(&counter, &[]).unwrap()).collect();
    let mut serials: Vec<u64> = addrs.iter().map(|a| a.serial()).collect();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), 16, "a serial repeats across shards: {addrs:?}");
    assert_eq!(addrs.iter().map(|a| a.shard()).collect::<std::collections::HashSet<_>>().len(), 4);
}

#[test]
fn addresses_with_more_shards_than_the_runtime_route_by_modulo() {
    let rt = Runtime::new(engine(), RuntimeConfig { shards: 2, ..RuntimeConfig::default() }).unwrap();
    let pp = rt.spawn_on(0, &module("pingpong"), postcard::to_allocvec(&protocols::PingInit::default()).unwrap(), 0).unwrap();
    // An address as a 6-shard runtime would have made it: shard bits 5,
    // kept by shard 5 % 2 = 1 here. No reactor has it, so the message ends
    // as a dead letter on shard 1 — routed, not refused.
    let far = Address::new(0, 5, 123_456);
    rt.send_typed(far, &CounterMsg::Add(1)).unwrap();
    // And from a reactor on shard 0, over the shard-to-shard ring.
    rt.send_typed(pp, &protocols::PingMsg::Play { peer: Some(far.0), rounds: 1, window: 1, requests: false })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = rt.shard_stats();
        if stats[1].dead_letters >= 2 {
            assert_eq!(stats[0].dead_letters, 0);
            assert!(stats[0].cross_shard >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "dead letters never reached shard 1: {stats:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rt.state(far), None);
    assert_eq!(rt.memory_size(far), None);
}

fn kv(rt: &mut Shard, to: Address, req: KvReq) -> KvReply {
    rt.call_typed(to, &req).unwrap()
}

#[test]
fn a_blob_created_by_one_reactor_is_read_by_another() {
    let mut rt = shard();
    let kvm = module("kv");
    let (a, b) = (rt.spawn(&kvm, &[]).unwrap(), rt.spawn(&kvm, &[]).unwrap());
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let KvReply::Blob { tag, len } = kv(&mut rt, a, KvReq::PutBlob { bytes: bytes.clone() }) else { panic!() };
    assert_eq!(len, bytes.len() as u64);
    assert!(tag > 0 && (tag as i64) > 0);
    assert_eq!(kv(&mut rt, a, KvReq::GiveBlob { tag, to: b.0 }), KvReply::Blob { tag, len });
    assert_eq!(kv(&mut rt, b, KvReq::AttachBlob { tag }), KvReply::Blob { tag, len });
    assert_eq!(kv(&mut rt, b, KvReq::ReadBlob { tag, offset: 99_990, len: 100 }), KvReply::Bytes(bytes[99_990..].to_vec()));
    assert_eq!(kv(&mut rt, b, KvReq::ReadBlob { tag, offset: 0, len: 100_000 }), KvReply::Bytes(bytes.clone()));
    assert_eq!(kv(&mut rt, a, KvReq::ReadBlob { tag, offset: 100_000, len: 10 }), KvReply::Bytes(vec![]));
    assert_eq!(
        kv(&mut rt, a, KvReq::ReadBlob { tag, offset: 100_001, len: 10 }),
        KvReply::Refused { status: abi::STATUS_BAD_ARGUMENT as i64 }
    );
    // One copy, held by both.
    assert_eq!(rt.refs().blob(tag).unwrap().bytes(), &bytes[..]);
    assert_eq!(rt.refs().live_blobs(), 1);
    // Unknown tags.
    assert_eq!(kv(&mut rt, b, KvReq::AttachBlob { tag: tag + 999 }), KvReply::Refused { status: abi::STATUS_NO_SUCH_BLOB as i64 });
    // The creator lets go; the other holder keeps it alive; then it goes.
    assert_eq!(kv(&mut rt, a, KvReq::DetachBlob { tag }), KvReply::Blob { tag, len });
    assert!(rt.refs().blob(tag).is_some());
    // Two holds inside one reactor are one host hold: the SDK closes on the last.
    assert_eq!(kv(&mut rt, b, KvReq::AttachBlob { tag }), KvReply::Blob { tag, len });
    assert_eq!(kv(&mut rt, b, KvReq::DetachBlob { tag }), KvReply::Blob { tag, len });
    assert!(rt.refs().blob(tag).is_none(), "freed with its last holder");
    assert_eq!(rt.refs().live_blobs(), 0);
}

#[test]
fn host_blobs_reach_reactors_on_every_shard() {
    let rt = Runtime::new(engine(), RuntimeConfig { shards: 3, ..RuntimeConfig::default() }).unwrap();
    let kvm = module("kv");
    let tag = rt.create_blob(b"reference data".to_vec()).unwrap();
    let readers: Vec<Address> = (0..6).map(|_| rt.spawn(&kvm, &[]).unwrap()).collect();
    for &r in &readers {
        let got: KvReply = rt.call_typed(r, &KvReq::AttachBlob { tag }).unwrap();
        assert_eq!(got, KvReply::Blob { tag, len: 14 });
        let got: KvReply = rt.call_typed(r, &KvReq::ReadBlob { tag, offset: 10, len: 4 }).unwrap();
        assert_eq!(got, KvReply::Bytes(b"data".to_vec()));
    }
    // A blob a reactor on one shard creates is given to and opened on another.
    let KvReply::Blob { tag: t2, .. } = rt.call_typed(readers[0], &KvReq::PutBlob { bytes: vec![1, 2, 3] }).unwrap() else {
        panic!()
    };
    let given: KvReply = rt.call_typed(readers[0], &KvReq::GiveBlob { tag: t2, to: readers[1].0 }).unwrap();
    assert_eq!(given, KvReply::Blob { tag: t2, len: 3 });
    let got: KvReply = rt.call_typed(readers[1], &KvReq::AttachBlob { tag: t2 }).unwrap();
    assert_eq!(got, KvReply::Blob { tag: t2, len: 3 });
    assert!(rt.release_blob(tag));
    assert!(rt.refs().blob(tag).is_some(), "the reactors still hold it");
    for &r in &readers {
        let _: KvReply = rt.call_typed(r, &KvReq::DetachBlob { tag }).unwrap();
    }
    assert!(rt.refs().blob(tag).is_none());
    assert!(!rt.release_blob(tag));
}

/// The measurement runs alone in a child process: RSS is process-wide and
/// the other tests run in parallel threads.
#[test]
fn two_hundred_reactors_share_one_copy_of_a_blob() {
    run_alone("refs::blob_rss_child");
}

#[test]
#[ignore = "run in its own process by two_hundred_reactors_share_one_copy_of_a_blob"]
fn blob_rss_child() {
    const MIB: u64 = 1 << 20;
    const N: usize = 200;
    let mut rt = shard();
    let kvm = module("kv");
    let readers: Vec<Address> = (0..N).map(|_| rt.spawn(&kvm, &[]).unwrap()).collect();
    // Warm every reactor up with a blob round trip, so the allocations the
    // first blob request makes are not counted below.
    let warm = rt.create_blob(vec![1u8; 16]).unwrap();
    for &r in &readers {
        kv(&mut rt, r, KvReq::AttachBlob { tag: warm });
        kv(&mut rt, r, KvReq::ReadBlob { tag: warm, offset: 0, len: 16 });
    }
    let before = reactor_runtime::resident_bytes().unwrap();
    let bytes: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    let tag = rt.create_blob(bytes).unwrap();
    for (i, &r) in readers.iter().enumerate() {
        assert_eq!(kv(&mut rt, r, KvReq::AttachBlob { tag }), KvReply::Blob { tag, len: 8 * MIB });
        let offset = (i as u64 * 40_000) % (8 * MIB - 16);
        let want: Vec<u8> = (offset..offset + 16).map(|i| (i % 251) as u8).collect();
        assert_eq!(kv(&mut rt, r, KvReq::ReadBlob { tag, offset, len: 16 }), KvReply::Bytes(want));
    }
    let after = reactor_runtime::resident_bytes().unwrap();
    let grown = after.saturating_sub(before);
    let allowance = 3 * 8 * MIB + N as u64 * 64 * 1024;
    println!("RSS grew by {} MiB for {N} holders of an 8 MiB blob (limit {} MiB)", grown / MIB, allowance / MIB);
    assert!(grown < allowance, "RSS grew by {grown} bytes: more than one copy?");
    assert_eq!(rt.refs().live_blobs(), 2);
}

fn raw(rt: &mut Shard, faulty: Address, op: BlobOp) -> i64 {
    rt.call_typed(faulty, &FaultyCmd::Blob(op)).unwrap()
}

#[test]
fn blob_calls_return_the_documented_statuses() {
    let mut rt = shard();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let unknown = Address::new(0, 0, 999_999).0;
    assert_eq!(raw(&mut rt, f, BlobOp::Open(unknown)), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Len(unknown)), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Close(unknown)), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag: unknown, offset: 0, len: 8 }), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::CreateLen(abi::MAX_BLOB_LEN + 1)), abi::STATUS_LIMIT as i64);

    let tag = raw(&mut rt, f, BlobOp::Create(vec![4, 5, 6]));
    assert!(tag > 0);
    let tag = tag as u64;
    assert_eq!(raw(&mut rt, f, BlobOp::Len(tag)), 3);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag, offset: 1, len: 8 }), 2);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag, offset: 3, len: 8 }), 0);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag, offset: 4, len: 8 }), abi::STATUS_BAD_ARGUMENT as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag, offset: u64::MAX, len: 8 }), abi::STATUS_BAD_ARGUMENT as i64);
    // Holding twice is holding once.
    assert_eq!(raw(&mut rt, f, BlobOp::Open(tag)), abi::STATUS_OK as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Close(tag)), abi::STATUS_OK as i64);
    assert!(rt.refs().blob(tag).is_none(), "its only holder closed it");
    assert_eq!(raw(&mut rt, f, BlobOp::Close(tag)), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Open(tag)), abi::STATUS_NO_SUCH_BLOB as i64);

    // Only held blobs can be read, even if they exist.
    let host_tag = rt.create_blob(vec![7u8; 10]).unwrap();
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag: host_tag, offset: 0, len: 8 }), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Len(host_tag)), abi::STATUS_NO_SUCH_BLOB as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Open(host_tag)), abi::STATUS_OK as i64);
    assert_eq!(raw(&mut rt, f, BlobOp::Read { tag: host_tag, offset: 0, len: 8 }), 8);
    assert_eq!(rt.state(f), Some(ReactorState::Running));
}

#[test]
fn holding_is_limited_per_reactor() {
    let mut rt = shard();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let other = rt.create_blob(vec![1]).unwrap();
    let held: (u32, i64) = rt.call_typed(f, &FaultyCmd::HoardBlobs(abi::MAX_HELD_BLOBS + 10)).unwrap();
    assert_eq!(held, (abi::MAX_HELD_BLOBS, abi::STATUS_LIMIT as i64));
    assert_eq!(raw(&mut rt, f, BlobOp::Open(other)), abi::STATUS_LIMIT as i64);
    assert_eq!(rt.refs().live_blobs(), abi::MAX_HELD_BLOBS as usize + 1);
    // Opening a blob already held needs no room.
    let first_held = Address::new(0, 0, other + 1).0;
    assert_eq!(raw(&mut rt, f, BlobOp::Open(first_held)), abi::STATUS_OK as i64);
    let _ = rt.call_typed::<_, u64>(f, &FaultyCmd::Panic("drop them all".into()));
    assert_eq!(rt.refs().live_blobs(), 1, "a failed reactor's blobs are freed");
}

fn fails_with_fault(cmd: FaultyCmd, call: &str) {
    let mut rt = shard();
    let bystander = rt.spawn(&module("kv"), &[]).unwrap();
    let tag = rt.create_blob(vec![3u8; 100]).unwrap();
    assert_eq!(kv(&mut rt, bystander, KvReq::AttachBlob { tag }), KvReply::Blob { tag, len: 100 });
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let cmd = match cmd {
        FaultyCmd::BadBlobReadPointer(_) => FaultyCmd::BadBlobReadPointer(tag),
        c => c,
    };
    let r = rt.call_typed::<_, i64>(f, &cmd);
    let Err(CallError::Failed(_, failure)) = r else { panic!("expected a failure, got {r:?}") };
    assert!(
        matches!(&failure.reason, FailureReason::GuestFault(m) if m.contains(call) && m.contains("outside linear memory")),
        "{failure}"
    );
    assert_eq!(kv(&mut rt, bystander, KvReq::ReadBlob { tag, offset: 98, len: 5 }), KvReply::Bytes(vec![3, 3]));
}

#[test]
fn bad_blob_pointers_fail_only_the_caller() {
    fails_with_fault(FaultyCmd::BadBlobCreatePointer, "blob_create");
    fails_with_fault(FaultyCmd::BadBlobReadPointer(0), "blob_read");
}

#[test]
fn a_blob_is_freed_when_its_last_holder_fails_or_releases_it() {
    let mut rt = shard();
    let refs = rt.refs().clone();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let k = rt.spawn(&module("kv"), &[]).unwrap();
    let tag = rt.create_blob(vec![9u8; 1 << 16]).unwrap();
    assert_eq!(raw(&mut rt, f, BlobOp::Open(tag)), 0);
    assert_eq!(kv(&mut rt, k, KvReq::AttachBlob { tag }), KvReply::Blob { tag, len: 1 << 16 });
    assert!(rt.release_blob(tag));
    assert!(refs.blob(tag).is_some());
    assert_eq!(kv(&mut rt, k, KvReq::DetachBlob { tag }), KvReply::Blob { tag, len: 1 << 16 });
    assert!(refs.blob(tag).is_some(), "faulty still holds it");
    // A blob the failing reactor created goes too.
    let own = raw(&mut rt, f, BlobOp::Create(vec![1; 32])) as u64;
    assert!(refs.blob(own).is_some());
    let r = rt.call_typed::<_, u64>(f, &FaultyCmd::Panic("let go".into()));
    assert!(matches!(r, Err(CallError::Failed(..))), "{r:?}");
    assert!(refs.blob(tag).is_none());
    assert!(refs.blob(own).is_none());
    assert_eq!(refs.live_blobs(), 0);
}

#[test]
fn restored_blobs_relink_to_the_live_copy() {
    let refs = Arc::new(Refs::new(2, TagSource::ephemeral()).unwrap());
    let mut rt = Shard::with_refs(engine(), ShardConfig::default(), refs.clone());
    let k = rt.spawn(&module("kv"), &[]).unwrap();
    assert_eq!(k.node(), 2);
    let KvReply::Blob { tag, .. } = kv(&mut rt, k, KvReq::PutBlob { bytes: vec![8; 8] }) else { panic!() };
    assert_eq!(reactor_types::address::tag_node(tag), 2);
    let live = refs.relink_blob(tag, || panic!("a live blob is never rebuilt"));
    assert_eq!(live.bytes(), &[8; 8]);
    // A tag from a snapshot of another incarnation of this node: rebuilt
    // once, and later tags are above it.
    let old = Address::new(2, 0, 5_000_000).0;
    let b = refs.relink_blob(old, || vec![1, 2]);
    refs.hold_host_blob(b);
    assert!(refs.grant_blob(old, k));
    assert_eq!(kv(&mut rt, k, KvReq::AttachBlob { tag: old }), KvReply::Blob { tag: old, len: 2 });
    let KvReply::Blob { tag: newer, .. } = kv(&mut rt, k, KvReq::PutBlob { bytes: vec![] }) else { panic!() };
    assert!(newer > old);
    assert!(rt.spawn(&module("counter"), &[]).unwrap().serial() > 5_000_000);
}

#[test]
fn the_command_line_reads_addresses_as_they_are_displayed() {
    let run = |to: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["--no-cache", "restore", "--to", to, "/nonexistent/reactor.snap"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for good in [Address::new(0, 3, 42), Address::new(7, 1, 99)] {
        let err = run(&good.to_string());
        assert!(!err.contains("is not an address") && err.contains("reactor.snap"), "{good}: {err}");
    }
    let err = run("#3/42");
    assert!(err.contains("is not an address"), "{err}");
}
