//! Reactors of running nodes: snapshots of live reactors through the admin
//! socket and the CLI, restores into a running node, and durable nodes —
//! a graceful stop checkpoints every reactor and the next start restores
//! them at the same addresses; after `kill -9`, state is as of the last
//! checkpoint (periodic or asked for). Real node processes, real files.
use crate::nodes::*;
use protocols::{KvReply, KvReq};
use reactor_runtime::snapshot::{RestoreOptions, SnapshotFile};
use reactor_runtime::{Address, abi};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn put(n: &NodeProc, a: u64, k: &str, v: &str) {
    n.call(a, json!({"Put": {"key": k, "value": v}}));
}

fn get(n: &NodeProc, a: u64, k: &str) -> Value {
    n.call(a, json!({"Get": {"key": k}}))
}

/// Stops `n` through its admin socket and waits for the process to exit.
fn stop(mut n: NodeProc) -> std::process::ExitStatus {
    n.admin().request(json!({"op": "stop"})).unwrap();
    let status = n.child.wait().unwrap();
    // Dropping it kills nothing now.
    status
}

fn checkpoint_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_stopped_node_comes_back_with_its_reactors_at_their_addresses() {
    let root = scratch("durable", "stop");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--seed", &n1.addr.clone()]);
    wait_until("both nodes see each other", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let kvs: Vec<u64> = (0..3).map(|_| n1.spawn("kv")).collect();
    let counter = n1.spawn("counter");
    for (i, &a) in kvs.iter().enumerate() {
        for j in 0..50 {
            put(&n1, a, &format!("k{j}"), &format!("v{i}-{j}"));
        }
    }
    for _ in 0..7 {
        n1.call(counter, json!({"Add": 1}));
    }
    let status = stop(n1);
    assert!(status.success(), "{status}");
    let files = checkpoint_files(&root.join("n1"));
    assert_eq!(files.len(), 1, "one full checkpoint at the stop: {files:?}");
    // Back, on the same data directory: same addresses, same state, reached
    // from the other node by the addresses it held all along.
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--seed", &n2.addr.clone()]);
    assert!(n1.log().is_empty() || !n1.log().contains("ERROR"), "{}", n1.log());
    wait_until("node 2 sees node 1's new incarnation", CONVERGE, || n2.incarnation_of(1) == Some(2));
    for (i, &a) in kvs.iter().enumerate() {
        for j in [0, 17, 49] {
            assert_eq!(get(&n2, a, &format!("k{j}")), json!({"Value": format!("v{i}-{j}")}), "reactor {a:#x} key k{j}");
        }
    }
    assert_eq!(n2.call(counter, json!("Get")), json!(7));
    // A new reactor never takes a restored one's address.
    let fresh = n1.spawn("kv");
    assert!(!kvs.contains(&fresh) && fresh != counter);
    // They keep working, and a second stop and start keeps the new state.
    put(&n1, kvs[0], "after", "restart");
    let status = stop(n1);
    assert!(status.success());
    let mut n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    assert_eq!(get(&n1, kvs[0], "after"), json!({"Value": "restart"}));
    // SIGTERM is a graceful stop too.
    put(&n1, kvs[1], "term", "ok");
    let killed = std::process::Command::new("kill").args(["-TERM", &n1.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(n1.child.wait().unwrap().success());
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    assert_eq!(get(&n1, kvs[1], "term"), json!({"Value": "ok"}));
    assert_eq!(get(&n1, kvs[2], "k3"), json!({"Value": "v2-3"}));
    assert_eq!(get(&n1, fresh, "k3"), json!({"Value": null}));
}

#[test]
fn after_kill_9_a_node_restarts_from_its_last_checkpoint() {
    let root = scratch("durable", "kill");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let a = n1.spawn("kv");
    put(&n1, a, "before", "1");
    let taken = n1.admin().request(json!({"op": "checkpoint"})).unwrap();
    assert_eq!(taken["kind"], json!("full"), "{taken}");
    put(&n1, a, "second", "2");
    let taken = n1.admin().request(json!({"op": "checkpoint"})).unwrap();
    assert!(taken["kind"]["delta_on"].is_string(), "the next one is a delta: {taken}");
    put(&n1, a, "lost", "3");
    drop(n1); // SIGKILL: no checkpoint at the end
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    assert_eq!(get(&n1, a, "before"), json!({"Value": "1"}));
    assert_eq!(get(&n1, a, "second"), json!({"Value": "2"}));
    assert_eq!(get(&n1, a, "lost"), json!({"Value": null}), "written after the last checkpoint");
    drop(n1);

    // Periodic checkpoints: a write is kept once a checkpoint after it is
    // on disk.
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "1"]);
    put(&n1, a, "periodic", "4");
    let seen = checkpoint_files(&n1.dir);
    wait_until("two more periodic checkpoints", Duration::from_secs(60), || {
        let now = checkpoint_files(&n1.dir);
        now.last() > seen.last() && now.iter().filter(|f| Some(*f) > seen.last()).count() >= 2
    });
    drop(n1);
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    assert_eq!(get(&n1, a, "periodic"), json!({"Value": "4"}));
    assert_eq!(get(&n1, a, "before"), json!({"Value": "1"}));
}

#[test]
fn a_live_snapshot_under_traffic_is_consistent_and_restorable() {
    let root = scratch("durable", "live");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let a = n1.spawn("kv");
    let dir = n1.dir.clone();
    // One client writes k0, k1, … in order while snapshots are taken.
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop_flag) = (dir.clone(), stop_flag.clone());
        std::thread::spawn(move || {
            let mut c = host::node::admin::Client::connect(&dir).unwrap();
            let mut i = 0u64;
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) || i < 200 {
                let msg = json!({"Put": {"key": format!("k{i:06}"), "value": format!("v{i}")}});
                c.request(json!({"op": "call", "to": a, "msg": msg, "timeout_ms": 20_000})).unwrap();
                i += 1;
            }
            i
        })
    };
    let full = root.join("full.snap");
    let delta = root.join("delta.snap");
    std::thread::sleep(Duration::from_millis(200));
    // Through the CLI, as a user would.
    let out = host_command(&test_cache())
        .args(["snapshot", "--data-dir", dir.to_str().unwrap(), &Address(a).to_string(), "-o", full.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["kind"], json!("full"));
    std::thread::sleep(Duration::from_millis(200));
    // The delta through the CLI too.
    let out = host_command(&test_cache())
        .args(["snapshot", "--data-dir", dir.to_str().unwrap(), "--all", "--incremental", "-o", delta.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["kind"]["delta_on"], answer["id"], "{d}");
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    // Restored in another process-local shard: each snapshot holds a
    // prefix k0..kN of the writes, nothing after a gap.
    for chain in [vec![full.clone()], vec![full.clone(), delta.clone()]] {
        let files: Vec<SnapshotFile> = chain.iter().map(|p| SnapshotFile::open(p, abi::ABI_VERSION).unwrap()).collect();
        crate::util::module("kv");
        // A runtime of node 1, as the reactor's address says.
        let config = reactor_runtime::RuntimeConfig { node: 1, shards: 1, ..Default::default() };
        let rt = reactor_runtime::Runtime::new(crate::util::engine(), config).unwrap();
        rt.restore_files(files, RestoreOptions::default()).unwrap();
        let KvReply::Stats { keys, .. } = rt.call_typed(Address(a), &KvReq::Stats).unwrap() else { panic!() };
        assert!(keys > 0 && keys <= written, "{keys} of {written}");
        let last: KvReply = rt.call_typed(Address(a), &KvReq::Get { key: format!("k{:06}", keys - 1) }).unwrap();
        assert_eq!(last, KvReply::Value(Some(format!("v{}", keys - 1))), "a prefix of the writes");
        let next: KvReply = rt.call_typed(Address(a), &KvReq::Get { key: format!("k{keys:06}") }).unwrap();
        assert_eq!(next, KvReply::Value(None));
    }
    // The live reactor kept serving all along and has everything.
    assert_eq!(get(&n1, a, &format!("k{:06}", written - 1)), json!({"Value": format!("v{}", written - 1)}));
}

#[test]
fn restores_into_a_running_node_refuse_what_would_collide_or_belong_elsewhere() {
    let root = scratch("durable", "restore");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0"]);
    let a = n1.spawn("kv");
    put(&n1, a, "x", "1");
    let file = root.join("a.snap");
    n1.admin().request(json!({"op": "snapshot", "reactors": [a], "path": file.to_str().unwrap()})).unwrap();
    // Its address is alive on node 1: refused, nothing changes.
    let e = n1.admin().request(json!({"op": "restore", "files": [file.to_str().unwrap()]})).unwrap_err();
    assert!(e.to_string().contains("alive here already"), "{e}");
    // Node 2 does not run node 1's addresses.
    let e = n2.admin().request(json!({"op": "restore", "files": [file.to_str().unwrap()]})).unwrap_err();
    assert!(e.to_string().contains("node 1's"), "{e}");
    // A file that is not a snapshot gets a clear error.
    let junk = root.join("junk.snap");
    std::fs::write(&junk, b"not a snapshot at all").unwrap();
    let e = n1.admin().request(json!({"op": "restore", "files": [junk.to_str().unwrap()]})).unwrap_err();
    assert!(e.to_string().contains("junk.snap"), "{e}");
    // Relative paths are refused by the protocol (the node does not share
    // the client's directory).
    let e = n1.admin().request(json!({"op": "snapshot", "reactors": "all", "path": "rel.snap"})).unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
    // Unknown reactors are refused before anything is written.
    let e = n1
        .admin()
        .request(json!({"op": "snapshot", "reactors": ["#1.0:999"], "path": root.join("no.snap").to_str().unwrap()}))
        .unwrap_err();
    assert!(e.to_string().contains("#1.0:999"), "{e}");
    assert!(!root.join("no.snap").exists());
    // Nothing of it changed the live reactor.
    assert_eq!(get(&n1, a, "x"), json!({"Value": "1"}));
}

#[test]
fn a_damaged_checkpoint_stops_the_start_and_deletes_nothing() {
    let root = scratch("durable", "damaged");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let a = n1.spawn("kv");
    put(&n1, a, "x", "1");
    assert!(stop(n1).success());
    let files = checkpoint_files(&root.join("n1"));
    let path = root.join("n1/checkpoints").join(&files[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xFF; // the header
    std::fs::write(&path, &bytes).unwrap();
    let (cmd, dir, log) = node_command(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let e = launch(cmd, 1, &dir, &log).err().expect("refuses to start");
    assert!(e.contains(&files[0]), "names the file: {e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is kept as it was");
}
