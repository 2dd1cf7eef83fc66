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
