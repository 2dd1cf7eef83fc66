//! The runtime's part of moving a reactor: pre-copy rounds (tracked
//! snapshots while it runs), `detach` at a boundary (the last, incremental
//! snapshot with its queued messages; messages arriving afterwards held in
//! order), `restore_moved` where it goes, the held messages forwarded there
//! — or `reattach` when the move does not happen. Nothing is lost or
//! applied twice either way.
use crate::util::*;
use protocols::{KvReply, KvReq};
use reactor_runtime::snapshot::{Capture, SnapshotOptions};
use reactor_runtime::{Address, Runtime, RuntimeConfig};

fn node1() -> Runtime {
    Runtime::new(engine(), RuntimeConfig { node: 1, shards: 2, ..Default::default() }).unwrap()
}

fn put(rt: &Runtime, a: Address, i: u32) {
    rt.send_typed(a, &KvReq::Put { key: format!("k{i:04}"), value: format!("v{i}") }).unwrap();
}

fn check_keys(rt: &Runtime, a: Address, upto: u32, filled: u64) {
    for i in 0..upto {
        let got: KvReply = rt.call_typed(a, &KvReq::Get { key: format!("k{i:04}") }).unwrap();
        assert_eq!(got, KvReply::Value(Some(format!("v{i}"))), "key {i}");
    }
    let KvReply::Stats { keys, .. } = rt.call_typed(a, &KvReq::Stats).unwrap() else { panic!("stats") };
    assert_eq!(keys, filled + u64::from(upto), "no key lost, none extra");
}

#[test]
fn a_reactor_moves_with_pre_copy_rounds_and_loses_no_message() {
    let (src, dst) = (node1(), node1());
    let a = src.spawn(&module("kv"), &[]).unwrap();
    let fill: KvReply =
        src.call_typed(a, &KvReq::Fill { prefix: "f".into(), count: 2000, value_len: 200, seed: 3 }).unwrap();
    assert!(matches!(fill, KvReply::Done { .. }));
    // Round 0: every page, while it runs; then the pages written meanwhile.
    let r0 = src.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    (0..100).for_each(|i| put(&src, a, i));
    let r1 = src.snapshot(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    (100..200).for_each(|i| put(&src, a, i));
    // Stop-and-copy: the last dirty pages and whatever is still queued.
    let last = src.detach(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    assert!(last.page_bytes() < r0.page_bytes(), "the last round carries only what changed");
    // Sent while it moves: held at the source, in order.
    (200..300).for_each(|i| put(&src, a, i));
    let held = src.drain_parked(a).unwrap();
    assert_eq!(held.len(), 100);
    assert_eq!(dst.restore_moved(vec![r0, r1, last]).unwrap(), a);
    for env in held {
        dst.deliver_from_network(a, env).map_err(|(e, _)| e).unwrap();
    }
    assert!(src.unpark(a).unwrap().is_empty());
    check_keys(&dst, a, 300, 2000);
    // The source no longer has it.
    assert!(src.call_typed::<_, KvReply>(a, &KvReq::Stats).is_err());
}

#[test]
fn a_move_that_does_not_happen_gives_the_reactor_back_with_every_message() {
    let src = node1();
    let a = src.spawn(&module("kv"), &[]).unwrap();
    let r0 = src.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    (0..50).for_each(|i| put(&src, a, i));
    let last = src.detach(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    // Held while the move is under way, then the target is lost: back here.
    (50..120).for_each(|i| put(&src, a, i));
    src.reattach(a, vec![r0, last]).unwrap();
    (120..150).for_each(|i| put(&src, a, i));
    check_keys(&src, a, 150, 0);
}

/// A move whose page tracking was lost takes its last layer whole while the
/// reactor is stopped; if that move fails too, the reactor comes back from
/// its chain's last whole layer (the rounds before it are not deltas of
/// it), with every message.
#[test]
fn a_move_that_fails_after_a_whole_last_layer_gives_the_reactor_back() {
    let src = node1();
    let a = src.spawn(&module("kv"), &[]).unwrap();
    let r0 = src.snapshot(a, SnapshotOptions::new(Capture::Concurrent).tracked()).unwrap();
    (0..50).for_each(|i| put(&src, a, i));
    let r1 = src.snapshot(a, SnapshotOptions::new(Capture::Incremental)).unwrap();
    (50..80).for_each(|i| put(&src, a, i));
    let last = src.detach(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    (80..120).for_each(|i| put(&src, a, i));
    src.reattach(a, vec![r0, r1, last]).unwrap();
    (120..150).for_each(|i| put(&src, a, i));
    check_keys(&src, a, 150, 0);
}

/// A reactor's snapshot carries the correlation counter of the node that
/// took it. One that lived a while on a busier node and moves back to the
/// node its address names carries a counter beyond anything that node
/// issued: a file of its own would be refused for it (a damaged or forged
/// counter could exhaust its tags), a move's layers are taken as foreign.
#[test]
fn a_reactor_taken_on_a_busier_node_restores_at_its_own() {
    use reactor_runtime::snapshot::{RestoreOptions, SnapshotError, SnapshotFile};
    let dir = tempfile::tempdir().unwrap();
    let node = |id: u16| {
        let data_dir = dir.path().join(format!("n{id}"));
        std::fs::create_dir_all(&data_dir).unwrap();
        Runtime::new(engine(), RuntimeConfig { node: id, shards: 1, data_dir: Some(data_dir), ..Default::default() }).unwrap()
    };
    let (n1, n2) = (node(1), node(2));
    let a = n1.spawn(&module("kv"), &[]).unwrap();
    (0..10).for_each(|i| put(&n1, a, i));
    let cp = n1.detach(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    assert!(n1.unpark(a).unwrap().is_empty());
    assert_eq!(n2.restore_moved(vec![cp]).unwrap(), a);
    // Node 2 hands out far more tags than node 1 ever reserved.
    n2.refs().tags().take(4 * reactor_runtime::refs::PERSIST_AHEAD).unwrap();
    (10..20).for_each(|i| put(&n2, a, i));
    let last = n2.detach(a, SnapshotOptions::new(Capture::Blocking)).unwrap();
    let path = dir.path().join("last.snap");
    last.write(&path, &mut |_, _| {}).unwrap();
    let open = || SnapshotFile::open(&path, reactor_runtime::abi::ABI_VERSION).unwrap();
    let own = n1.restore_moved_files(vec![open()], RestoreOptions::lazy());
    assert!(matches!(own, Err(SnapshotError::Counter { .. })), "{own:?}");
    let moved = n1.restore_moved_files(vec![open()], RestoreOptions { foreign: true, ..RestoreOptions::lazy() });
    assert_eq!(moved.unwrap(), a);
    check_keys(&n1, a, 20, 0);
}
