//! Supervision groups, escalation, monitors and links, in real node
//! processes with the `overseer` guest: a reactor that declares a group
//! policy (`Context::supervise`), spawns durable children of its own
//! module (counters that panic on command), monitors, links and keeps the
//! `Down`s it gets.
use crate::nodes::{NodeProc, SECRET, scratch, start, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

const ARGS: &[&str] = &["--checkpoint-every", "0", "--durable", "synced", "--restart-window", "30"];
const WAIT: Duration = Duration::from_secs(30);

fn supervision(n: &NodeProc) -> Value {
    n.status()["supervision"].clone()
}

/// Waits until the supervision counter `key` is `want`.
fn counted(n: &NodeProc, key: &str, want: u64) {
    wait_until(&format!("supervision.{key} = {want}"), WAIT, || supervision(n)[key] == json!(want));
}

fn spawn_plain(n: &NodeProc) -> u64 {
    n.admin().request(json!({"op": "spawn", "module": "overseer", "durable": "none"})).unwrap()["tag"].as_u64().unwrap()
}

/// A supervisor declaring `strategy`/`restart` and three workers at 10,
/// 20, 30, each then added 5.
fn group(n: &NodeProc, strategy: &str, restart: &str, max_restarts: u32) -> (u64, [u64; 3]) {
    let sup = n.spawn("overseer");
    let spec = json!({"Supervise": {"strategy": strategy, "restart": restart, "max_restarts": max_restarts, "within_ms": 30_000, "attempts": 1}});
    assert_eq!(n.call(sup, spec), json!("ok"));
    let w = [10, 20, 30].map(|v| {
        let a = n.call(sup, json!({"Spawn": {"n": v}})).as_u64().unwrap();
        assert_ne!(a, 0, "the durable spawn was refused:\n{}", n.log());
        assert_eq!(n.call(a, json!({"Add": 5})), json!(v + 5));
        a
    });
    (sup, w)
}

fn crash(n: &NodeProc, a: u64) {
    let err = n.try_call(a, json!("Crash")).unwrap_err().to_string();
    assert!(err.contains("crashed on command"), "{err}");
}

fn get(n: &NodeProc, a: u64) -> Value {
    n.call(a, json!("Get"))
}

/// One-for-all, resumed: when one member fails, every member is stopped
/// and restarted from its own journal; the one that failed is back as it
/// was before the message that failed it, the others as they were, and
/// all go on journaling. A bad declaration is refused.
#[test]
fn one_for_all_restarts_every_member_of_the_group() {
    let root = scratch("supervision", "one_for_all");
    let n = start(&root, 1, SECRET, ARGS);
    let (sup, [w1, w2, w3]) = group(&n, "one_for_all", "resume", 5);
    let bad = json!({"Supervise": {"strategy": "one_for_all", "restart": "resume", "max_restarts": 1, "within_ms": 1000, "attempts": 0}});
    assert_eq!(n.call(sup, bad), json!("BadArgument"), "zero attempts is refused");
    crash(&n, w2);
    counted(&n, "restarts", 1);
    counted(&n, "group_restarts", 2);
    assert_eq!((get(&n, w1), get(&n, w2), get(&n, w3)), (json!(15), json!(25), json!(35)), "{}", n.log());
    let log = n.log();
    assert_eq!(log.matches("with its group reactor=").count(), 2, "the other two restarted with their group:\n{log}");
    // Journaled on after the group restart: a kill loses nothing.
    assert_eq!(n.call(w1, json!({"Add": 1})), json!(16));
    assert_eq!(n.call(w3, json!({"Add": 1})), json!(36));
    drop(n);
    let n = start(&root, 1, SECRET, ARGS);
    assert_eq!((get(&n, w1), get(&n, w2), get(&n, w3)), (json!(16), json!(25), json!(36)), "{}", n.log());
}

/// Rest-for-one, fresh: the member that failed and those spawned after it
/// start over from their spawn (their init argument again); the one
/// before keeps its state. The tree survives a `kill -9` of the node: the
/// policy declared before it holds after.
#[test]
fn rest_for_one_fresh_restarts_the_failed_member_and_those_after_it() {
    let root = scratch("supervision", "rest_for_one");
    let n = start(&root, 1, SECRET, ARGS);
    let (_sup, [w1, w2, w3]) = group(&n, "rest_for_one", "fresh", 5);
    let tree = root.join("n1/supervision/tree.json");
    wait_until("the tree written", WAIT, || std::fs::read_to_string(&tree).is_ok_and(|t| t.contains(&w3.to_string())));
    drop(n); // SIGKILL: the tree is on disk.
    let n = start(&root, 1, SECRET, ARGS);
    assert_eq!(get(&n, w2), json!(25), "{}", n.log());
    crash(&n, w2);
    counted(&n, "restarts", 1);
    counted(&n, "group_restarts", 1);
    assert_eq!((get(&n, w1), get(&n, w2), get(&n, w3)), (json!(15), json!(20), json!(30)), "{}", n.log());
    assert!(root.join("n1/dropped").read_dir().unwrap().count() >= 2, "the old journals are set aside");
    // The fresh ones journal from their new spawn: a kill keeps what they did since.
    assert_eq!(n.call(w2, json!({"Add": 2})), json!(22));
    drop(n);
    let n = start(&root, 1, SECRET, ARGS);
    assert_eq!((get(&n, w1), get(&n, w2), get(&n, w3)), (json!(15), json!(22), json!(30)), "{}", n.log());
}

/// Past its group's restart intensity a member escalates: the group stops,
/// its supervisor fails (with no message to blame), the node restarts the
/// supervisor from its journal, and the group with it. A supervisor that
/// itself fails past the node's intensity is given up; its monitors are
/// told, and its group stops with it.
#[test]
fn escalation_goes_to_the_supervisor_and_then_to_the_operator() {
    let root = scratch("supervision", "escalation");
    let n = start(&root, 1, SECRET, ARGS);
    let (sup, [w1, w2, _]) = group(&n, "one_for_one", "resume", 1);
    let watcher = spawn_plain(&n);
    assert_eq!(n.call(watcher, json!({"Monitor": sup})), json!("ok"));
    assert_eq!(n.call(sup, json!({"Add": 7})), json!(7));
    crash(&n, w1);
    counted(&n, "restarts", 1);
    assert_eq!(get(&n, w1), json!(15));
    // The second within the window: escalated to the supervisor.
    crash(&n, w1);
    counted(&n, "escalations", 1);
    counted(&n, "restarts", 2); // the supervisor
    counted(&n, "group_restarts", 3); // its three members with it
    assert!(n.log().contains("escalated: its child"), "{}", n.log());
    assert_eq!((get(&n, sup), get(&n, w1), get(&n, w2)), (json!(7), json!(15), json!(25)), "{}", n.log());
    assert_eq!(n.call(watcher, json!("Downs")), json!([]), "a restart is not a Down");
    // The supervisor fails itself: its restart by the escalation counts in
    // the node's intensity (1 in 30 s), so this one is past it: given up.
    crash(&n, sup);
    counted(&n, "escalations", 2);
    wait_until("the watcher told", WAIT, || n.call(watcher, json!("Downs")).as_array().is_some_and(|d| !d.is_empty()));
    let downs = n.call(watcher, json!("Downs"));
    assert_eq!(downs[0][0], json!(sup));
    assert!(downs[0][1].as_str().unwrap().contains("crashed on command"), "{downs}");
    assert_eq!(downs[0][2], json!(false), "a monitor, not a link");
    for a in [sup, w1, w2] {
        wait_until("the group stopped with its supervisor", WAIT, || {
            n.try_call(a, json!("Get")).is_err_and(|e| e.to_string().contains("no live reactor"))
        });
    }
}

/// Links fail the linked reactor, unless it traps exits (then it is told);
/// a journaled one failed by a link is restarted by its supervision; a
/// monitor of a reactor that is not there fires at once; a demonitor
/// stops it.
#[test]
fn links_and_monitors() {
    let root = scratch("supervision", "links");
    let n = start(&root, 1, SECRET, ARGS);
    let [a, b, c, d, e] = [0; 5].map(|_| spawn_plain(&n));
    assert_eq!(n.call(a, json!({"Link": b})), json!("ok"));
    assert_eq!(n.call(c, json!({"TrapExits": true})), json!("ok"));
    assert_eq!(n.call(c, json!({"Link": b})), json!("ok"));
    assert_eq!(n.call(d, json!({"Monitor": a})), json!("ok"));
    assert_eq!(n.call(e, json!({"Monitor": a})), json!("ok"));
    assert_eq!(n.call(e, json!({"Demonitor": a})), json!("ok"));
    // A journaled one, linked to b too.
    let j = n.spawn("overseer");
    assert_eq!(n.call(j, json!({"Add": 3})), json!(3));
    assert_eq!(n.call(j, json!({"Link": b})), json!("ok"));
    assert_eq!(n.call(a, json!({"Link": a})), json!("BadArgument"), "not with itself");
    // A bounded number of tree calls per call into a reactor.
    assert_eq!(n.call(e, json!({"MonitorMany": {"target": d, "n": 100}})), json!([64, "Limit"]));
    counted(&n, "links", 3);

    crash(&n, b);
    wait_until("a failed through its link", WAIT, || n.try_call(a, json!("Get")).is_err());
    let err = n.try_call(a, json!("Get")).unwrap_err().to_string();
    assert!(err.contains("no live reactor"), "{err}");
    wait_until("c told", WAIT, || n.call(c, json!("Downs")).as_array().is_some_and(|d| !d.is_empty()));
    let downs = n.call(c, json!("Downs"));
    assert_eq!((&downs[0][0], &downs[0][2]), (&json!(b), &json!(true)), "a trapped link: {downs}");
    assert!(downs[0][1].as_str().unwrap().contains("crashed on command"), "{downs}");
    wait_until("d told of a", WAIT, || n.call(d, json!("Downs")).as_array().is_some_and(|d| !d.is_empty()));
    let downs = n.call(d, json!("Downs"));
    assert_eq!(downs[0][0], json!(a));
    assert!(downs[0][1].as_str().unwrap().contains("linked reactor #1.0:"), "{downs}");
    // j was failed by the link and restarted from its journal.
    counted(&n, "link_failures", 2);
    counted(&n, "restarts", 1);
    assert_eq!(n.call(j, json!("Get")), json!(3));
    assert_eq!(n.call(e, json!("Downs")), json!([]), "demonitored");
    // A monitor of what is not there fires at once.
    assert_eq!(n.call(e, json!({"Monitor": b})), json!("ok"));
    wait_until("e told at once", WAIT, || n.call(e, json!("Downs")).as_array().is_some_and(|d| !d.is_empty()));
    assert!(n.call(e, json!("Downs"))[0][1].as_str().unwrap().contains("no live reactor"));
    counted(&n, "links", 0);
}

/// Monitors and links across two node processes: a `Down` comes back from
/// the target's node, a link fails (or tells) the reactor on the other
/// node, both ways; when a node is declared down, every watch of a
/// reactor there fires with "node 2 is down" (Erlang's `noconnection`).
#[test]
fn monitors_and_links_across_nodes_and_a_node_going_down() {
    let root = scratch("supervision", "remote");
    let (n1, n2) = crate::nodes::pair(&root, &["--checkpoint-every", "0", "--suspect-after", "1000"]);
    let [a, t, l, m, w] = [0; 5].map(|_| spawn_plain(&n1));
    let [b, c, x, y, z] = [0; 5].map(|_| spawn_plain(&n2));
    assert_eq!(n1.call(a, json!({"Monitor": b})), json!("ok"));
    assert_eq!(n1.call(t, json!({"TrapExits": true})), json!("ok"));
    assert_eq!(n1.call(t, json!({"Link": c})), json!("ok"));
    assert_eq!(n1.call(l, json!({"Link": x})), json!("ok"));
    assert_eq!(n1.call(m, json!({"Monitor": y})), json!("ok"));
    assert_eq!(n2.call(z, json!({"Monitor": w})), json!("ok"));
    // Recorded on both nodes.
    counted(&n2, "monitors", 3);
    counted(&n2, "links", 2);

    let downs_of = |n: &NodeProc, r: u64| n.call(r, json!("Downs"));
    let told = |n: &NodeProc, r: u64| wait_until("a Down", WAIT, || downs_of(n, r).as_array().is_some_and(|d| !d.is_empty()));
    crash(&n2, b);
    told(&n1, a);
    let d = downs_of(&n1, a);
    assert_eq!((&d[0][0], &d[0][2]), (&json!(b), &json!(false)), "{d}");
    assert!(d[0][1].as_str().unwrap().contains("crashed on command"), "{d}");
    crash(&n2, c);
    told(&n1, t);
    assert_eq!(downs_of(&n1, t)[0][2], json!(true), "a trapped link across nodes");
    crash(&n1, w);
    told(&n2, z);
    assert_eq!(downs_of(&n2, z)[0][0], json!(w));

    // Node 2 goes: the watches of its reactors fire.
    drop(n2);
    told(&n1, m);
    let d = downs_of(&n1, m);
    assert_eq!(d[0][0], json!(y));
    assert!(d[0][1].as_str().unwrap().contains("node 2 is down"), "{d}");
    wait_until("l failed through its link", WAIT, || {
        n1.try_call(l, json!("Get")).is_err_and(|e| e.to_string().contains("no live reactor"))
    });
    counted(&n1, "links", 0);
    counted(&n1, "monitors", 0);
}
