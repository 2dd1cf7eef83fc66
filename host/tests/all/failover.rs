//! Standby failover between real node processes: a reactor journaled at
//! level `standby` on node 1, its standby on node 2, callers on node 3.
//! Node 1 is killed (`kill -9`) or cut off (stopped with `SIGSTOP`, then
//! let go) under load; node 2 takes the reactor over. Every call the
//! caller saw answered is in the reactor's state once, none twice, and the
//! node that comes back does not bring back a second copy.
use crate::nodes::{CONVERGE, NodeProc, SECRET, scratch, start, wait_until};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Three nodes up, each seeing the others.
fn cluster(root: &std::path::Path, args: &[&str]) -> (NodeProc, NodeProc, NodeProc) {
    let n1 = start(root, 1, SECRET, args);
    let n2 = start(root, 2, SECRET, &[args, &["--seed", &n1.addr]].concat());
    let n3 = start(root, 3, SECRET, &[args, &["--seed", &n1.addr]].concat());
    for n in [&n1, &n2, &n3] {
        wait_until("every node sees three up", CONVERGE, || n.up() == vec![1, 2, 3]);
    }
    (n1, n2, n3)
}

/// What a closed-loop caller on node 3 saw: sequence numbers answered
/// (acknowledged) and those whose call failed (not acknowledged: applied
/// or not).
#[derive(Default)]
struct Seen {
    acked: Vec<u64>,
    failed: Vec<(u64, String)>,
}

/// Calls `migrant` at `to` through node 3's admin socket with `Seq`
/// numbers 1, 2, … until `stop`, each waiting for its answer.
fn caller(dir: std::path::PathBuf, to: u64, stop: Arc<AtomicBool>, next: Arc<AtomicU64>, seen: Arc<Mutex<Seen>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            let req = json!({"op": "call", "to": to, "msg": {"Seq": {"sender": 7, "seq": seq}}, "timeout_ms": 25_000});
            let r = host::node::admin::Client::connect(&dir).and_then(|mut c| c.request(req));
            match r {
                Ok(v) if v == json!({"Seq": {"seq": seq}}) => seen.lock().unwrap().acked.push(seq),
                Ok(v) => seen.lock().unwrap().failed.push((seq, format!("answered {v}"))),
                Err(e) => seen.lock().unwrap().failed.push((seq, e.to_string())),
            }
        }
    })
}

/// The migrant's counters for sender 7.
fn seq_stats(n: &NodeProc, a: u64) -> Value {
    let s = n.call(a, json!("Stats"));
    s["Stats"]["senders"].as_array().unwrap().iter().find(|s| s["sender"] == json!(7)).cloned().unwrap_or(Value::Null)
}

fn spawn_with_standby(n1: &NodeProc) -> u64 {
    let init = json!({"state_mib": 4, "write_pages_per_sec": 2000, "seed": 5});
    let v = n1
        .admin()
        .request(json!({"op": "spawn", "module": "migrant", "init": init, "durable": "standby", "standby": 2}))
        .unwrap_or_else(|e| panic!("spawn refused: {e}\n{}", n1.log()));
    assert_eq!(v["standby"], json!(2), "{v}");
    assert_eq!(v["durable"], json!("standby"), "{v}");
    v["tag"].as_u64().unwrap()
}

/// Runs the caller until `n` more calls are answered.
fn until_answered(seen: &Mutex<Seen>, n: usize, what: &str) {
    let before = seen.lock().unwrap().acked.len();
    let start = std::time::Instant::now();
    while seen.lock().unwrap().acked.len() < before + n {
        let s = seen.lock().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}: {} answered, {} failed, the first: {:?}",
            s.acked.len(),
            s.failed.len(),
            s.failed.iter().take(3).collect::<Vec<_>>()
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the reactor's view against the caller's: no sequence number
/// applied twice, every acknowledged one applied.
fn check_exactly_once(stats: &Value, seen: &Seen, logs: &str) {
    let acked = seen.acked.len() as u64;
    let attempted = acked + seen.failed.len() as u64;
    assert_eq!(stats["dups"], json!(0), "a call applied twice: {stats}\n{logs}");
    let applied = stats["ok"].as_u64().unwrap() + stats["gaps"].as_u64().unwrap();
    assert!(applied >= acked, "acknowledged calls lost: {applied} applied, {acked} acknowledged: {stats}\n{logs}");
    assert!(applied <= attempted, "{applied} applied of {attempted} sent: {stats}");
    // The last number it saw was acknowledged or at least sent.
    assert!(stats["last"].as_u64().unwrap() <= attempted);
    // Every acknowledged number is at or below the last it saw.
    assert!(seen.acked.iter().all(|&s| s <= stats["last"].as_u64().unwrap()), "{stats}");
}

#[test]
fn after_kill_9_of_the_primary_the_standby_takes_over_with_no_answered_call_lost_or_doubled() {
    let root = scratch("failover", "kill9");
    let args = ["--checkpoint-every", "0"];
    let (n1, n2, n3) = cluster(&root, &args);
    let a = spawn_with_standby(&n1);
    wait_until("node 2 stands by", Duration::from_secs(20), || n2.status()["standby"]["standing_by"] == json!(1));

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t = caller(n3.dir.clone(), a, stop.clone(), next.clone(), seen.clone());
    until_answered(&seen, 150, "calls answered before the kill");
    drop(n1); // SIGKILL, calls in flight
    until_answered(&seen, 150, "calls answered after the takeover");
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();

    let s2 = n2.status();
    assert_eq!(s2["standby"]["takeovers"], json!(1), "{s2}");
    // Node 2 checkpointed after the takeover (its journal of the reactor
    // starts at the standby's snapshot, which only a checkpoint of its own
    // brings back after a restart).
    wait_until("a checkpoint on node 2", Duration::from_secs(20), || {
        std::fs::read_dir(n2.dir.join("checkpoints")).is_ok_and(|d| d.count() > 0)
    });
    let stats = seq_stats(&n3, a);
    let seen = seen.lock().unwrap();
    let logs = format!("n2:\n{}\nn3:\n{}", n2.log(), n3.log());
    check_exactly_once(&stats, &seen, &logs);
    // The caller's node sent its calls in flight again: none failed.
    assert!(seen.failed.is_empty(), "{} calls failed across the takeover, the first: {:?}\n{logs}", seen.failed.len(), seen.failed.iter().take(3).collect::<Vec<_>>());
    assert_eq!(stats["ok"].as_u64().unwrap(), seen.acked.len() as u64, "{stats}");
    // The new primary found a standby of its own: node 3.
    wait_until("the new primary has a standby", Duration::from_secs(20), || n3.status()["standby"]["standing_by"] == json!(1));

    // Node 1 comes back from its data directory: it does not run a second
    // copy; calls through it reach the one on node 2.
    let n1 = start(&root, 1, SECRET, &[&args[..], &["--seed", &n2.addr]].concat());
    wait_until("node 1 back in the cluster", CONVERGE, || n2.up() == vec![1, 2, 3]);
    wait_until("node 1 runs no copy", Duration::from_secs(20), || n1.status()["reactors"] == json!(0));
    let before = seq_stats(&n2, a);
    let seq = before["last"].as_u64().unwrap() + 1;
    assert_eq!(n1.call(a, json!({"Seq": {"sender": 7, "seq": seq}})), json!({"Seq": {"seq": seq}}), "{}", n1.log());
    assert_eq!(seq_stats(&n2, a)["ok"].as_u64().unwrap(), before["ok"].as_u64().unwrap() + 1);
    assert_eq!(n2.status()["reactors"], json!(1));

    // Node 2, the reactor's node now, killed and started again: it comes
    // back from its own checkpoint and journal (or, if node 3 saw it down
    // first, node 3 takes it over): either way every answered call is in.
    drop(n2);
    let n2 = start(&root, 2, SECRET, &[&args[..], &["--seed", &n3.addr]].concat());
    let seq = seq + 1;
    let answer = n3.try_call(a, json!({"Seq": {"sender": 7, "seq": seq}}));
    let answer = answer.unwrap_or_else(|e| panic!("{e}\nnode 2:\n{}\nnode 3:\n{}", n2.log(), n3.log()));
    assert_eq!(answer, json!({"Seq": {"seq": seq}}), "{}\n{}", n2.log(), n3.log());
    let after = seq_stats(&n3, a);
    let logs = || format!("node 2:\n{}\nnode 3:\n{}", n2.log(), n3.log());
    assert_eq!(after["ok"].as_u64().unwrap(), before["ok"].as_u64().unwrap() + 2, "{after}\n{}", logs());
    assert_eq!(after["dups"], json!(0), "{after}\n{}", logs());
}

#[test]
fn a_primary_cut_off_and_back_leaves_one_live_copy() {
    let root = scratch("failover", "partition");
    let args = ["--checkpoint-every", "0"];
    let (n1, n2, n3) = cluster(&root, &args);
    let a = spawn_with_standby(&n1);
    for seq in 1..=20 {
        assert_eq!(n3.call(a, json!({"Seq": {"sender": 7, "seq": seq}})), json!({"Seq": {"seq": seq}}));
    }
    // Cut node 1 off: stopped, its connections open but silent.
    let pid = n1.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    wait_until("node 2 takes the reactor over", Duration::from_secs(60), || n2.status()["standby"]["takeovers"] == json!(1));
    for seq in 21..=40 {
        assert_eq!(n3.call(a, json!({"Seq": {"sender": 7, "seq": seq}})), json!({"Seq": {"seq": seq}}), "{}", n3.log());
    }
    // The partition heals: node 1 runs on, and hears the reactor lives on
    // node 2: its copy goes.
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    wait_until("node 1 drops its copy", Duration::from_secs(60), || n1.status()["standby"]["copies_dropped"] == json!(1));
    assert_eq!(n1.status()["reactors"], json!(0), "{}", n1.log());
    assert_eq!(n2.status()["reactors"], json!(1));
    // Calls from node 1 reach the copy that lives.
    assert_eq!(n1.call(a, json!({"Seq": {"sender": 7, "seq": 41}})), json!({"Seq": {"seq": 41}}), "{}", n1.log());
    let stats = seq_stats(&n2, a);
    assert_eq!((stats["ok"].clone(), stats["dups"].clone(), stats["gaps"].clone()), (json!(41), json!(0), json!(0)), "{stats}");
}

/// The standby's node goes down: the primary (seeing a majority, and
/// granted the next generation) gives the reactor a new standby with a
/// snapshot. The old standby comes back with its stale copy; when the
/// primary goes down in turn, only the new standby takes over (the old one
/// is refused the generation), from the snapshot and the journal after it.
#[test]
fn a_lost_standby_is_replaced_and_only_the_new_one_takes_over() {
    let root = scratch("failover", "replace");
    let args = ["--checkpoint-every", "0", "--suspect-after", "1000"];
    let (n1, n2, n3) = cluster(&root, &args);
    let v = n1.admin().request(json!({"op": "spawn", "module": "counter", "init": 0, "durable": "standby", "standby": 2})).unwrap();
    let c = v["tag"].as_u64().unwrap();
    let mut total = 0;
    let mut add = |n: &NodeProc, k: u64| {
        for _ in 0..k {
            n.call(c, json!({"Add": 1}));
            total += 1;
        }
    };
    add(&n3, 30);
    drop(n2); // SIGKILL of the standby's node
    wait_until("node 3 stands by instead", Duration::from_secs(30), || n3.status()["standby"]["standing_by"] == json!(1));
    add(&n3, 30);
    // Node 2 back, with its copy of generation 1 on disk.
    let n2 = start(&root, 2, SECRET, &[&args[..], &["--seed", &n1.addr]].concat());
    wait_until("node 2 back", CONVERGE, || n1.up() == vec![1, 2, 3]);
    assert_eq!(n2.status()["standby"]["standing_by"], json!(1), "the stale copy is loaded");
    // Past the new standby's first snapshot: the takeover replays the tail.
    wait_until("a snapshot held", Duration::from_secs(30), || n1.status()["standby"]["snapshots_out"].as_u64().unwrap() >= 2);
    add(&n3, 7);
    drop(n1);
    wait_until("node 3 takes over", Duration::from_secs(30), || n3.status()["standby"]["takeovers"] == json!(1));
    let s = n3.status();
    assert!(s["standby"]["last_takeover_steps"].as_u64().unwrap() < 30, "replayed from the snapshot: {}", s["standby"]);
    assert_eq!(n3.call(c, json!("Get")), json!(total), "{}", n3.log());
    // Node 2 was refused the generation and dropped its stale copy (and
    // may stand by for node 3 now, in a later one).
    wait_until("node 2 drops its stale copy", Duration::from_secs(30), || n2.log().contains("is not the one to take over: dropped"));
    assert_eq!(n2.status()["standby"]["takeovers"], json!(0), "{}", n2.log());
    assert_eq!(n2.status()["reactors"], json!(0));
    assert_eq!(n2.call(c, json!("Get")), json!(total), "node 2 reaches the one copy");
}

/// `Context::spawn_durable(.., Durability::Standby)`: a reactor spawns a
/// child at level standby; its node gives the child a standby, which takes
/// it over when that node is killed.
#[test]
fn a_child_spawned_at_level_standby_is_taken_over_too() {
    let root = scratch("failover", "child");
    let args = ["--checkpoint-every", "0", "--suspect-after", "1000"];
    let (n1, n2, n3) = cluster(&root, &args);
    let ledger = n1.admin().request(json!({"op": "spawn", "module": "ledger", "durable": "standby", "standby": 2})).unwrap()["tag"]
        .as_u64()
        .unwrap();
    // The child's module is found by name among those loaded on node 1.
    n1.spawn("counter");
    let child = n3.call(ledger, json!({"StandbyChild": {"n": 100}})).as_u64().unwrap();
    assert_ne!(child, 0, "the standby spawn was refused");
    for _ in 0..5 {
        n3.call(child, json!({"Add": 1}));
    }
    wait_until("the child has a standby", Duration::from_secs(20), || {
        n2.status()["standby"]["standing_by"].as_u64().unwrap() + n3.status()["standby"]["standing_by"].as_u64().unwrap() == 2
    });
    drop(n1);
    wait_until("both taken over", Duration::from_secs(30), || {
        n2.status()["standby"]["takeovers"].as_u64().unwrap() + n3.status()["standby"]["takeovers"].as_u64().unwrap() == 2
    });
    assert_eq!(n3.call(child, json!("Get")), json!(105), "{}\n{}", n2.log(), n3.log());
    assert_eq!(n3.call(ledger, json!("Digest")), n2.call(ledger, json!("Digest")));
}
