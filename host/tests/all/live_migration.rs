//! Live migration between real node processes: a reactor moves while it
//! serves, keeps its address, and every node reaches it where it lives;
//! refusals before anything stops; failures that give it back.
use crate::nodes::*;
use serde_json::{Value, json};
use std::time::Duration;

fn put(n: &NodeProc, a: u64, k: &str, v: &str) {
    n.call(a, json!({"Put": {"key": k, "value": v}}));
}

fn get(n: &NodeProc, a: u64, k: &str) -> Value {
    n.call(a, json!({"Get": {"key": k}}))
}

/// Moves `address` to node `to`, asking node `via`; the report.
fn migrate(via: &NodeProc, address: u64, to: u16) -> anyhow::Result<Value> {
    let a = reactor_runtime::Address(address).to_string();
    Ok(via.admin().request(json!({"op": "migrate", "address": a, "to": to}))?)
}

fn three_nodes(name: &str) -> (std::path::PathBuf, NodeProc, NodeProc, NodeProc) {
    let root = scratch("migrate", name);
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--seed", &n1.addr.clone()]);
    let n3 = start(&root, 3, SECRET, &["--checkpoint-every", "0", "--seed", &n1.addr.clone()]);
    wait_until("three nodes see each other", CONVERGE, || {
        n1.up() == [1, 2, 3] && n2.up() == [1, 2, 3] && n3.up() == [1, 2, 3]
    });
    (root, n1, n2, n3)
}

#[test]
fn a_reactor_moves_with_its_state_and_address_and_back() {
    let (_root, n1, n2, n3) = three_nodes("basic");
    let kv = n1.spawn("kv");
    n1.call(kv, json!({"Fill": {"prefix": "f", "count": 20_000, "value_len": 100, "seed": 7}}));
    for j in 0..20 {
        put(&n1, kv, &format!("k{j}"), &format!("v{j}"));
    }
    let report = migrate(&n1, kv, 2).unwrap();
    assert_eq!(report["from"], json!(1));
    assert_eq!(report["to"], json!(2));
    assert!(report["bytes"].as_u64().unwrap() > 2_000_000, "{report}");
    assert!(report["downtime_ms"].as_f64().unwrap() > 0.0);
    // Every node reaches it at the same address, with its state.
    for n in [&n1, &n2, &n3] {
        assert_eq!(get(n, kv, "k7"), json!({"Value": "v7"}), "through node {}", n.id);
    }
    assert_eq!(n2.call(kv, json!("Stats"))["Stats"]["keys"], json!(20_020));
    assert_eq!(n2.status()["reactors"], json!(1));
    assert_eq!(n1.status()["reactors"], json!(0));
    // It keeps working there; asked through node 3, node 2 moves it back.
    put(&n3, kv, "moved", "once");
    let back = migrate(&n3, kv, 1).unwrap();
    assert_eq!((back["from"].clone(), back["to"].clone()), (json!(2), json!(1)), "{back}");
    for n in [&n1, &n2, &n3] {
        assert_eq!(get(n, kv, "moved"), json!({"Value": "once"}), "through node {}", n.id);
    }
    assert_eq!(n1.status()["reactors"], json!(1));
    assert_eq!(n2.status()["reactors"], json!(0));
    // Moving it where it is, or to a node that does not exist, is refused.
    let e = migrate(&n1, kv, 1).unwrap_err().to_string();
    assert!(e.contains("runs on node 1 already"), "{e}");
    let e = migrate(&n1, kv, 9).unwrap_err().to_string();
    assert!(e.contains("node 9 is not a live member"), "{e}");
    assert_eq!(get(&n2, kv, "k3"), json!({"Value": "v3"}));
    let _ = Duration::ZERO;
}

/// Spawns a `migrant` of `mib` MiB dirtying `rate` pages a second on `n`.
fn migrant(n: &NodeProc, mib: u32, rate: u32) -> u64 {
    let init = json!({"state_mib": mib, "write_pages_per_sec": rate, "seed": 11});
    n.admin().request(json!({"op": "spawn", "module": "migrant", "init": init})).unwrap()["tag"].as_u64().unwrap()
}

/// Spawns a `loadgen` on `n` keeping `window` requests outstanding to `target`.
fn loadgen(n: &NodeProc, target: u64, sender: u64, window: u32) -> u64 {
    let init = json!({"target": target, "sender": sender, "window": window, "stop_after": null});
    n.admin().request(json!({"op": "spawn", "module": "loadgen", "init": init})).unwrap()["tag"].as_u64().unwrap()
}

/// Pauses every load generator, waits until nothing is in flight, and
/// checks the books on both sides: every request the generators sent was
/// seen by the migrant once, in order, and answered.
fn settle_and_check(gens: &[(&NodeProc, u64, u64)], via: &NodeProc, target: u64) -> u64 {
    for (n, g, _) in gens {
        n.call(*g, json!("Pause"));
    }
    let mut sent_total = 0;
    for (n, g, sender) in gens {
        let started = std::time::Instant::now();
        let stats = loop {
            let stats = n.call(*g, json!("Stats"))["Stats"].clone();
            if stats["in_flight"] == json!(0) {
                break stats;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let seen = via.call(target, json!("Stats"))["Stats"]["senders"].clone();
                let nodes: Vec<Value> = gens
                    .iter()
                    .map(|(n, _, _)| {
                        let s = n.status();
                        json!({"node": n.id, "reactors": s["reactors"], "dead_letters": s["dead_letters"], "forwarded": s["forwarded"],
                               "fence_timeouts": s["fence_timeouts"], "migrations": s["migrations"]})
                    })
                    .collect();
                panic!("sender {sender}'s load does not drain: {stats}; the migrant saw {seen}; nodes: {nodes:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let seen = via.call(target, json!("Stats"))["Stats"]["senders"].clone();
        let mine = seen.as_array().unwrap().iter().find(|s| s["sender"] == json!(sender)).cloned().unwrap_or(Value::Null);
        assert_eq!(stats["sent"], stats["replied"], "sender {sender}: {stats}; the migrant saw {mine}");
        assert_eq!(stats["bad_replies"], json!(0), "sender {sender}: replies out of order: {stats}; the migrant saw {mine}");
        assert!(stats["sent"].as_u64().unwrap() > 0, "sender {sender} sent nothing: {stats}");
        sent_total += stats["sent"].as_u64().unwrap();
        assert_eq!(mine["gaps"], json!(0), "sender {sender}: lost or out of order: {mine}");
        assert_eq!(mine["dups"], json!(0), "sender {sender}: duplicated: {mine}");
        assert_eq!(mine["last"], stats["sent"], "sender {sender}: the migrant saw {mine}, the sender {stats}");
        assert_eq!(mine["ok"], stats["sent"], "sender {sender}: {mine}");
    }
    sent_total
}

fn resume(gens: &[(&NodeProc, u64, u64)]) {
    for (n, g, _) in gens {
        n.call(*g, json!("Resume"));
    }
}

/// A reactor under load from senders on every node (one on its own node)
/// moves around three nodes, pre-copy and stop-and-copy, asked through
/// different nodes: every request is seen once, in each sender's order,
/// and answered; nodes switch paths behind fences (none times out).
#[test]
fn under_load_nothing_is_lost_duplicated_or_reordered() {
    let (_root, n1, n2, n3) = three_nodes("load");
    let m = migrant(&n1, 16, 200);
    let gens = [(&n1, loadgen(&n1, m, 1, 4), 1), (&n2, loadgen(&n2, m, 2, 8), 2), (&n2, loadgen(&n2, m, 3, 8), 3), (&n3, loadgen(&n3, m, 4, 8), 4)];
    std::thread::sleep(Duration::from_millis(300));
    let moves: [(&NodeProc, u16, bool); 5] = [(&n1, 2, true), (&n3, 3, true), (&n2, 1, false), (&n1, 3, true), (&n3, 1, true)];
    for (via, to, precopy) in moves {
        let a = reactor_runtime::Address(m).to_string();
        let r = via.admin().request(json!({"op": "migrate", "address": a, "to": to, "precopy": precopy})).unwrap();
        assert_eq!(r["to"], json!(to), "{r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = settle_and_check(&gens, &n2, m);
    assert!(sent > 1000, "the load ran: {sent} requests");
    for n in [&n1, &n2, &n3] {
        let s = n.status();
        assert_eq!(s["fence_timeouts"], json!(0), "node {}: {s}", n.id);
    }
    // It lives on node 1 again, and answers from everywhere.
    assert_eq!(n1.status()["reactors"], json!(2), "the migrant and node 1's sender");
    resume(&gens);
    std::thread::sleep(Duration::from_millis(200));
    settle_and_check(&gens, &n3, m);
}

/// Injected faults on every connection (drops, duplicates, reordering,
/// delays on the reliable channels, the migration's included) while a
/// reactor under load moves back and forth: still nothing lost,
/// duplicated or out of order.
#[test]
fn through_injected_faults_a_move_loses_nothing() {
    let root = scratch("migrate", "faults");
    // Channel 1 is the default one, channel 2 the migration's. Drops on the
    // default channel are rarer: a dropped frame waits for the reliable
    // channel's retransmission timer (backing off to seconds), which only
    // slows the load down.
    let events: Vec<Value> = [(1, 0.002), (2, 0.02)]
        .iter()
        .map(|(c, drop)| {
            json!({"at_ms": 0, "event": {"set_rule": {"name": format!("chaos{c}"), "rule": {
                "channel": c, "drop": drop, "duplicate": 0.02, "reorder": 0.02, "delay_ms": [0, 2]
            }}}})
        })
        .collect();
    let schedule = json!({"seed": 5, "events": events});
    let file = root.join("faults.json");
    std::fs::write(&file, schedule.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--reliable", "--faults", f]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--reliable", "--faults", f, "--seed", &n1.addr.clone()]);
    wait_until("both up", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let m = migrant(&n1, 8, 100);
    let gens = [(&n2, loadgen(&n2, m, 1, 8), 1), (&n1, loadgen(&n1, m, 2, 4), 2)];
    std::thread::sleep(Duration::from_millis(200));
    for (via, to) in [(&n1, 2), (&n2, 1), (&n2, 2), (&n1, 1)] {
        let r = migrate(via, m, to).unwrap();
        assert_eq!(r["to"], json!(to), "{r}");
    }
    let sent = settle_and_check(&gens, &n1, m);
    assert!(sent > 100, "{sent}");
}

/// A slow link: every frame on the default channel sits 20 ms at its
/// receiver after it was read (so "written to the socket" proves nothing
/// about arrival), with about 1,000 requests in flight from the other
/// node. Across moves both ways, senders on the reactor's new node must
/// not overtake their own earlier requests (forwarded the long way round
/// and handed in through the command ring), and the reactor's replies
/// from its new node must not overtake those it sent before it stopped.
#[test]
fn on_a_slow_link_every_senders_order_holds_across_moves() {
    let root = scratch("migrate", "slow");
    let rule = json!({"channel": 1, "direction": "receive", "delay_ms": [20, 20]});
    let events = json!([{"at_ms": 0, "event": {"set_rule": {"name": "slow", "rule": rule}}}]);
    let file = root.join("faults.json");
    std::fs::write(&file, json!({"seed": 1, "events": events}).to_string()).unwrap();
    let f = file.to_str().unwrap();
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--faults", f]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--faults", f, "--seed", &n1.addr.clone()]);
    wait_until("both up", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let m = migrant(&n1, 8, 100);
    let gens: Vec<(&NodeProc, u64, u64)> = (1..=16).map(|s| (&n2, loadgen(&n2, m, s, 125), s)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..24 {
        let (via, to) = if i % 2 == 0 { (&n1, 2) } else { (&n2, 1) };
        let r = migrate(via, m, to).unwrap();
        assert_eq!(r["to"], json!(to), "{r}");
        assert_eq!(r["flushed"], json!(true), "every node answered the flush: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = settle_and_check(&gens, &n1, m);
    assert!(sent > 1000, "the load ran: {sent} requests");
    for n in [&n1, &n2] {
        let s = n.status();
        assert_eq!(s["fence_timeouts"], json!(0), "node {}: {s}", n.id);
    }
}

/// Starts a migration on its own thread; its outcome.
fn migrate_async(dir: std::path::PathBuf, address: u64, to: u16) -> std::thread::JoinHandle<anyhow::Result<Value>> {
    std::thread::spawn(move || {
        let a = reactor_runtime::Address(address).to_string();
        let mut c = host::node::admin::Client::connect(&dir)?;
        Ok(c.request(json!({"op": "migrate", "address": a, "to": to}))?)
    })
}

/// The target is killed (`kill -9`) in the middle of the pre-copy: the move
/// fails, the reactor never stopped serving at the source, and the load
/// on it lost nothing.
#[test]
fn when_the_target_dies_before_the_switch_the_reactor_stays() {
    let (_root, n1, mut n2, n3) = three_nodes("target-dies");
    let m = migrant(&n1, 256, 1000);
    let gens = [(&n1, loadgen(&n1, m, 1, 4), 1), (&n3, loadgen(&n3, m, 2, 8), 2)];
    let moving = migrate_async(n1.dir.clone(), m, 2);
    // Kill it once the pre-copy is under way (the first layer is 256 MiB).
    std::thread::sleep(Duration::from_millis(150));
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let e = moving.join().unwrap().unwrap_err().to_string();
    assert!(e.contains("runs here still") || e.contains("not a live member"), "{e}");
    assert_eq!(n1.status()["reactors"], json!(2));
    std::thread::sleep(Duration::from_millis(200));
    settle_and_check(&gens, &n1, m);
    assert_eq!(n1.status()["migrations"]["failed_out"], json!(1));
}

/// Once the switch is done the source may die: the reactor serves on at
/// its new node, reached at the same address by the senders that are left.
#[test]
fn after_the_switch_the_source_may_die() {
    let (_root, mut n1, n2, n3) = three_nodes("source-dies");
    let m = migrant(&n1, 16, 200);
    let gens = [(&n3, loadgen(&n3, m, 1, 8), 1), (&n2, loadgen(&n2, m, 2, 8), 2)];
    std::thread::sleep(Duration::from_millis(200));
    migrate(&n1, m, 2).unwrap();
    // Node 3 switches paths once its fences come back.
    std::thread::sleep(Duration::from_millis(500));
    n1.child.kill().unwrap();
    n1.child.wait().unwrap();
    let before = n3.call(gens[0].1, json!("Stats"))["Stats"]["replied"].as_u64().unwrap();
    wait_until("node 3's sender goes on", Duration::from_secs(10), || {
        n3.call(gens[0].1, json!("Stats"))["Stats"]["replied"].as_u64().unwrap() > before + 1000
    });
    settle_and_check(&gens, &n2, m);
    assert_eq!(n3.status()["fence_timeouts"], json!(0));
}

/// Two moves of one reactor asked at once, through different nodes: one
/// wins, the other is refused, and the reactor runs in exactly one place.
#[test]
fn two_moves_of_one_reactor_cannot_both_win() {
    let (_root, n1, n2, n3) = three_nodes("race");
    let m = migrant(&n1, 128, 0);
    let a = migrate_async(n1.dir.clone(), m, 2);
    let b = migrate_async(n3.dir.clone(), m, 3);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let won: Vec<u16> = [(&a, 2), (&b, 3)].iter().filter(|(r, _)| r.is_ok()).map(|(_, to)| *to).collect();
    let lost: Vec<String> = [&a, &b].iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
    assert_eq!(won.len(), 1, "exactly one wins: {a:?} {b:?}");
    assert!(lost[0].contains("being moved already"), "{lost:?}");
    let live: Vec<u64> = [&n1, &n2, &n3].iter().map(|n| n.status()["reactors"].as_u64().unwrap()).collect();
    assert_eq!(live.iter().sum::<u64>(), 1, "{live:?}");
    assert_eq!(live[won[0] as usize - 1], 1, "it runs where the winner took it: {live:?}");
    assert_eq!(n2.call(m, json!("Stats"))["Stats"]["state_bytes"], json!(128u64 << 20));
}

/// A target that cannot hold the reactor's memory refuses it before
/// anything stops: the reactor serves on at the source.
#[test]
fn a_target_without_the_memory_refuses_before_anything_stops() {
    let root = scratch("migrate", "memory");
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--memory-cap", "8", "--seed", &n1.addr.clone()]);
    wait_until("both up", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let m = migrant(&n1, 16, 0);
    let gens = [(&n2, loadgen(&n2, m, 1, 8), 1)];
    let e = migrate(&n1, m, 2).unwrap_err().to_string();
    assert!(e.contains("node 2 refused") && e.contains("MiB"), "{e}");
    std::thread::sleep(Duration::from_millis(100));
    settle_and_check(&gens, &n1, m);
    assert_eq!(n2.status()["migrations"]["refused_in"], json!(1));
    // Nothing stopped: no message was held.
    assert_eq!(n1.status()["forwarded"], json!(0));
}

/// Clients outside the cluster (admin calls through nodes 2 and 3) keep
/// writing to a kv while it moves 1 → 2 → 1: each `Put` answers the value
/// of the one before it, so a lost, repeated or reordered request breaks
/// the client's chain.
#[test]
fn outside_callers_see_every_write_in_order_across_moves() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_root, n1, n2, n3) = three_nodes("callers");
    let kv = n1.spawn("kv");
    n1.call(kv, json!({"Fill": {"prefix": "f", "count": 50_000, "value_len": 100, "seed": 3}}));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [(n2.dir.clone(), 0), (n2.dir.clone(), 1), (n3.dir.clone(), 2), (n1.dir.clone(), 3)]
        .into_iter()
        .map(|(dir, i)| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let mut c = host::node::admin::Client::connect(&dir).map_err(|e| e.to_string())?;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let put = json!({"op": "call", "to": kv, "msg": {"Put": {"key": format!("c{i}"), "value": n.to_string()}}, "timeout_ms": 20_000});
                    let prev = c.request(put).map_err(|e| format!("client {i}, put #{n}: {e}"))?;
                    let want = if n == 1 { json!({"Value": null}) } else { json!({"Value": (n - 1).to_string()}) };
                    if prev != want {
                        return Err(format!("client {i}: put #{n} answered {prev}, not {want}"));
                    }
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for (via, to) in [(&n1, 2), (&n3, 1), (&n2, 3), (&n3, 1)] {
        let r = migrate(via, kv, to).unwrap();
        assert_eq!(r["to"], json!(to), "{r}");
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    let done: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    assert!(done.iter().all(|&n| n > 10), "{done:?}");
    assert_eq!(n2.call(kv, json!("Stats"))["Stats"]["keys"], json!(50_004));
    for n in [&n1, &n2, &n3] {
        assert_eq!(n.status()["fence_timeouts"], json!(0), "node {}", n.id);
    }
}

/// A node running all the reactors sheds load: `host rebalance` moves them
/// live until every node runs its share, and each answers at its address
/// with its state.
#[test]
fn a_loaded_node_rebalances_onto_its_peers() {
    let (_root, n1, n2, n3) = three_nodes("rebalance");
    let counters: Vec<u64> = (0..7).map(|_| n1.spawn("counter")).collect();
    for (i, &c) in counters.iter().enumerate() {
        n1.call(c, json!({"Add": i + 1}));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["rebalance", "--data-dir"])
        .arg(&n1.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("reactors before: node 1: 7, node 2: 0, node 3: 0"), "{text}");
    assert!(text.contains("reactors after:  node 1: 3"), "{text}");
    let live: Vec<u64> = [&n1, &n2, &n3].iter().map(|n| n.status()["reactors"].as_u64().unwrap()).collect();
    assert_eq!(live, [3, 2, 2], "{text}");
    for (i, &c) in counters.iter().enumerate() {
        assert_eq!(n3.call(c, json!("Get")), json!(i + 1), "counter {i}");
    }
}

/// A reactor asks to be moved next to a peer (`move_near`): its node moves
/// it live to the peer's node after the call, and it answers there, at its
/// address, with its state.
#[test]
fn a_reactor_asks_to_move_next_to_its_peer() {
    let (_root, n1, n2, _n3) = three_nodes("asked");
    let c = n1.spawn("counter");
    n1.call(c, json!({"Add": 41}));
    let peer = n2.spawn("kv");
    assert_eq!(n1.call(c, json!({"MoveNear": peer})), json!(true));
    wait_until("the counter moved next to its peer", Duration::from_secs(20), || n2.status()["reactors"] == json!(2));
    assert_eq!(n1.status()["reactors"], json!(0));
    assert_eq!(n1.call(c, json!({"Add": 1})), json!(42));
    // Next to it already: nothing moves.
    assert_eq!(n2.call(c, json!({"MoveNear": peer})), json!(true));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(n2.status()["migrations"]["moved_out"], json!(0));
    // Not a reactor's address: refused.
    assert_eq!(n2.call(c, json!({"MoveNear": 0})), json!(false));
}

/// Moves survive restarts: the node a reactor moved to checkpoints it and
/// brings it back at its address after a graceful stop; the node it left,
/// restarted, forwards to it instead of bringing back its own old copy.
#[test]
fn moves_survive_restarts_of_both_ends() {
    let (root, n1, n2, n3) = three_nodes("restarts");
    let kv = n1.spawn("kv");
    put(&n1, kv, "before", "move");
    // Node 1's checkpoint still holds the kv when it leaves.
    n1.admin().request(json!({"op": "checkpoint"})).unwrap();
    migrate(&n1, kv, 2).unwrap();
    put(&n3, kv, "after", "move");
    let stop = |mut n: NodeProc| {
        n.admin().request(json!({"op": "stop"})).unwrap();
        assert!(n.child.wait().unwrap().success());
    };
    let seed = n3.addr.clone();
    stop(n2);
    let n2 = start(&root, 2, SECRET, &["--checkpoint-every", "0", "--seed", &seed]);
    wait_until("nodes 1 and 3 see node 2's new incarnation", CONVERGE, || {
        n3.incarnation_of(2) == Some(2) && n1.incarnation_of(2) == Some(2)
    });
    assert_eq!(n2.status()["reactors"], json!(1));
    assert_eq!(get(&n3, kv, "after"), json!({"Value": "move"}));
    stop(n1);
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--seed", &seed]);
    wait_until("nodes 2 and 3 see node 1's new incarnation", CONVERGE, || {
        n3.incarnation_of(1) == Some(2) && n2.incarnation_of(1) == Some(2)
    });
    assert_eq!(n1.status()["reactors"], json!(0), "node 1 forwards; it does not bring back its old copy");
    assert_eq!(get(&n1, kv, "after"), json!({"Value": "move"}));
    assert_eq!(get(&n1, kv, "before"), json!({"Value": "move"}));
    assert_eq!(n2.status()["reactors"], json!(1));
}

/// A node that stopped while a move was unsettled (its record of moves says
/// it meant to move a reactor, the target never took it) asks the target
/// at its next start and gives the reactor back from its own checkpoint.
#[test]
fn an_unsettled_move_is_settled_at_the_next_start() {
    let (root, mut n1, n2, n3) = three_nodes("unsettled");
    let kv = n1.spawn("kv");
    put(&n1, kv, "k", "v");
    n1.admin().request(json!({"op": "stop"})).unwrap();
    assert!(n1.child.wait().unwrap().success());
    let moves = format!("# reactor host moves v1\nabcdef {kv} 2 1 intent\n");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(n1.dir.join("moves")).unwrap();
        std::io::Write::write_all(&mut f, moves.as_bytes()).unwrap();
    }
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--seed", &n3.addr.clone()]);
    wait_until("node 1 gives the kv back", Duration::from_secs(20), || n1.status()["reactors"] == json!(1));
    assert_eq!(get(&n3, kv, "k"), json!({"Value": "v"}));
    assert_eq!(n2.status()["reactors"], json!(0));
    let moves = std::fs::read_to_string(n1.dir.join("moves")).unwrap();
    assert!(!moves.contains("intent"), "{moves}");
}

/// A module the target does not have travels with the reactor, by hash.
#[test]
fn a_module_the_target_lacks_travels_with_the_reactor() {
    let (root, n1, n2, _n3) = three_nodes("module");
    // The counter with a custom section appended: the same code under a
    // hash no built guest has.
    let mut bytes = std::fs::read(example_guests::path("counter")).unwrap();
    let name = b"migration-test";
    let payload = b"a module only node 1 has";
    let body_len = 1 + name.len() + payload.len();
    bytes.push(0);
    bytes.push(body_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = root.join("only-here.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let c = n1.admin().request(json!({"op": "spawn", "module": path.to_str().unwrap()})).unwrap()["tag"].as_u64().unwrap();
    n1.call(c, json!({"Add": 5}));
    let r = migrate(&n1, c, 2).unwrap();
    assert_eq!(r["module_sent"], json!(true), "{r}");
    assert_eq!(n2.call(c, json!({"Add": 1})), json!(6));
    let back = migrate(&n2, c, 1).unwrap();
    assert_eq!(back["module_sent"], json!(false), "node 1 has it: {back}");
}

/// A reactor whose writes split its tracked memory past the kernel's limit
/// of mappings during the pre-copy (page protection gives up, tracking
/// stops): the move still happens, its last layer taken whole while it is
/// stopped, and every page it wrote arrives.
#[test]
fn a_move_whose_tracking_is_lost_sends_the_rest_whole() {
    let (_root, n1, n2, _n3) = three_nodes("untracked");
    let limit: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap().trim().parse().unwrap();
    // Every other page written splits one mapping per page written.
    let mib = (((limit * 2 + limit / 2) * 4096) >> 20) as u32;
    let p = n1.admin().request(json!({"op": "spawn", "module": "pager", "init": mib})).unwrap()["tag"].as_u64().unwrap();
    // Every page non-zero first, so that the pre-copy has hundreds of MiB
    // to send: the write below lands while it does.
    let pages = (u64::from(mib) << 20) / 4096;
    assert_eq!(n1.call(p, json!([0, 1, 1])), json!(pages));
    let moving = migrate_async(n1.dir.clone(), p, 2);
    std::thread::sleep(Duration::from_millis(300));
    let written = n1.try_call(p, json!([0, 2, 7]));
    let r = moving.join().unwrap().unwrap();
    assert_eq!(r["to"], json!(2), "{r}");
    assert_eq!(r["whole_at_stop"], json!(true), "the write split the tracked memory past the limit: {r}");
    // Whether the write landed before the move or was held and forwarded,
    // it happened once, and every page it wrote is there.
    assert_eq!(written.unwrap(), json!(pages.div_ceil(2)));
    assert_eq!(n2.call(p, json!([2, 0, 0])), json!(7 * pages.div_ceil(2) + pages / 2));
}

