//! Real clusters: `host node` processes on loopback, real sockets, talked
//! to through their admin sockets as a user would.
use crate::nodes::{CONVERGE, NodeProc, SECRET, scratch, start, wait_until};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Three node processes in a full mesh: reactors on every node reach
/// reactors on every other by address; reactor-to-reactor ping-pong crosses
/// nodes; a node killed with SIGKILL is reported down by the others, and
/// when it restarts it rejoins with a new incarnation.
#[test]
fn mesh_of_three_processes_routes_detects_a_crash_and_takes_back_a_restart() {
    let root = scratch("cluster", "mesh");
    let n1 = start(&root, 1, SECRET, &[]);
    let n2 = start(&root, 2, SECRET, &["--seed", &n1.addr]);
    let mut n3 = start(&root, 3, SECRET, &["--seed", &n1.addr]);
    for n in [&n1, &n2, &n3] {
        wait_until(&format!("node {} sees all three up", n.id), CONVERGE, || n.up() == [1, 2, 3]);
    }
    // A counter on each node, added to from every node.
    let counters: Vec<u64> = [&n1, &n2, &n3].iter().map(|n| n.spawn("counter")).collect();
    for (i, c) in counters.iter().enumerate() {
        assert_eq!(c >> 48, i as u64 + 1, "the address names the node it lives on");
    }
    for n in [&n1, &n2, &n3] {
        for &c in &counters {
            n.try_call(c, json!({"Add": n.id as u64})).unwrap();
        }
    }
    for &c in &counters {
        assert_eq!(n2.try_call(c, json!("Get")).unwrap(), json!(6), "1 + 2 + 3 from the three nodes");
    }
    // A request the reactor (on another node) cannot decode is an error:
    // `host call` says so on standard error and exits non-zero.
    let to = reactor_runtime::Address(counters[2]).to_string();
    let out = crate::nodes::host_command(&crate::nodes::test_cache())
        .args(["call", "--data-dir", n1.dir.to_str().unwrap(), &to, r#"{"Bogus":1}"#])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("answered with an error: undecodable request"), "{stderr}");
    // Reactor to reactor across nodes: a pinger on node 1 plays 2,000
    // one-way ping/pong rounds with a partner on node 3.
    let partner = n3.spawn("pingpong");
    let pinger = n1.spawn("pingpong");
    let report = n1
        .try_call(pinger, json!({"Play": {"peer": partner, "rounds": 2000, "window": 32, "requests": false}}))
        .unwrap();
    assert_eq!(report["pongs"], json!(2000), "{report}");
    assert_eq!(n3.try_call(partner, json!("Report")).unwrap()["pings"], json!(2000));
    // And request–response between reactors across nodes.
    let report = n1
        .try_call(pinger, json!({"Play": {"peer": partner, "rounds": 500, "window": 8, "requests": true}}))
        .unwrap();
    assert_eq!(report["echoes"], json!(500), "{report}");
    let s = n1.status();
    assert!(s["remote_sends"].as_u64().unwrap() >= 2500, "{s}");

    // Crash node 3.
    n3.child.kill().unwrap();
    n3.child.wait().unwrap();
    for n in [&n1, &n2] {
        wait_until(&format!("node {} reports node 3 down", n.id), CONVERGE, || n.up() == [1, 2]);
        let events = n.status()["events"].clone();
        assert!(events.as_array().unwrap().iter().any(|e| e["down"] == json!(3)), "{events}");
    }
    // A call to a reactor of the dead node fails instead of hanging.
    assert!(n1.try_call(partner, json!("Report")).is_err());
    // Node 3 restarts on the same data directory and rejoins.
    drop(n3);
    let n3 = start(&root, 3, SECRET, &["--seed", &n2.addr]);
    for n in [&n1, &n2, &n3] {
        wait_until(&format!("node {} sees node 3 again", n.id), CONVERGE, || n.up() == [1, 2, 3]);
    }
    let s = n1.status();
    let m3 = s["members"].as_array().unwrap().iter().find(|m| m["id"] == json!(3)).unwrap().clone();
    assert_eq!(m3["incarnation"], json!(2), "{m3}");
    // New reactors on the restarted node never reuse an address.
    let fresh = n3.spawn("counter");
    assert!(fresh != partner && fresh != counters[2]);
    assert_eq!(n1.try_call(fresh, json!({"Add": 5})).unwrap(), json!(5));
}

/// A node with the wrong secret never joins, and is logged; garbage, an
/// oversized frame and a hello from another cluster each close only their
/// own connection; the node goes on serving.
#[test]
fn nodes_without_credentials_and_hostile_bytes_are_refused() {
    let root = scratch("cluster", "refuse");
    let n1 = start(&root, 1, SECRET, &[]);
    let intruder = start(&root, 2, "not the cluster secret at all", &["--seed", &n1.addr]);
    wait_until("the intruder is refused", CONVERGE, || n1.status()["refused_connections"].as_u64().unwrap() >= 1);
    assert_eq!(n1.up(), [1]);
    assert_eq!(intruder.up(), [2]);
    assert!(n1.log().contains("authentication failed"), "{}", n1.log());

    let hostile: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        u32::MAX.to_le_bytes().to_vec(),
        {
            // A frame of another version.
            vec![4, 0, 0, 0, 9, 1, 0, 0]
        },
        (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
    ];
    for bytes in &hostile {
        let mut s = std::net::TcpStream::connect(&n1.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut sink = Vec::new();
        // The node closes the connection (end of stream or reset), it does
        // not hang or crash.
        let _ = s.read_to_end(&mut sink);
    }
    let refused = n1.status()["refused_connections"].as_u64().unwrap();
    assert!(refused > hostile.len() as u64, "each hostile connection is counted: {refused}");
    // Still serving.
    let c = n1.spawn("counter");
    assert_eq!(n1.try_call(c, json!({"Add": 2})).unwrap(), json!(2));
    assert_eq!(n1.up(), [1]);
}

/// Two node processes whose reliable channel passes a seeded fault
/// injector on every connection (drops, duplicates, reordering, delays, and
/// corrupted frames, which close the connection): reactor-to-reactor
/// ping-pong across them still counts every ping and every pong exactly
/// once.
#[test]
fn reliable_channel_delivers_exactly_once_through_injected_faults() {
    let root = scratch("cluster", "faults");
    let schedule = json!({
        "seed": 7,
        "events": [{"at_ms": 0, "event": {"set_rule": {"name": "chaos", "rule": {
            "channel": 1, "drop": 0.05, "duplicate": 0.05, "reorder": 0.05, "corrupt": 0.005, "delay_ms": [0, 2]
        }}}}]
    });
    let file = root.join("faults.json");
    std::fs::write(&file, schedule.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let n1 = start(&root, 1, SECRET, &["--reliable", "--lanes", "2", "--faults", f]);
    let n2 = start(&root, 2, SECRET, &["--reliable", "--lanes", "2", "--faults", f, "--seed", &n1.addr]);
    for n in [&n1, &n2] {
        wait_until(&format!("node {} sees both up", n.id), CONVERGE, || n.up() == [1, 2]);
    }
    let partner = n2.spawn("pingpong");
    let pinger = n1.spawn("pingpong");
    let report = n1
        .try_call(pinger, json!({"Play": {"peer": partner, "rounds": 3000, "window": 64, "requests": false}}))
        .unwrap();
    assert_eq!(report["pongs"], json!(3000), "{report}");
    assert_eq!(n2.try_call(partner, json!("Report")).unwrap()["pings"], json!(3000), "every ping exactly once");
    // The faults really happened: connections were closed by corrupted
    // frames and dialed again.
    let lanes = n1.status()["lanes"].clone();
    let reconnects: u64 = lanes.as_array().unwrap().iter().map(|l| l["connects"].as_u64().unwrap()).sum();
    let opened = lanes.as_array().unwrap().len() as u64;
    assert!(reconnects > opened, "some lane reconnected after a corrupted frame: {lanes}");
    assert!(n2.log().contains("malformed frame") || n1.log().contains("malformed frame"), "a damaged frame was refused");
}

/// Channels and lanes are real connections: small messages to different
/// reactors spread over the default channel's lanes, a large one takes the
/// channel whose size rule it meets, control traffic has its own
/// connection; with `--multiplex` one connection per peer carries all.
#[test]
fn channels_and_lanes_are_separate_connections_unless_multiplexed() {
    let root = scratch("cluster", "lanes");
    let bulk = ["--lanes", "3", "--channel", "bulk:lanes=2:min-bytes=10000"];
    let n1 = start(&root, 1, SECRET, &bulk);
    let n2 = start(&root, 2, SECRET, &[&bulk[..], &["--seed", &n1.addr]].concat());
    wait_until("both up", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let counters: Vec<u64> = (0..12).map(|_| n2.spawn("counter")).collect();
    for &c in &counters {
        assert_eq!(n1.try_call(c, json!({"Add": 1})).unwrap(), json!(1));
    }
    let kv = n2.spawn("kv");
    let big = "x".repeat(50_000);
    n1.try_call(kv, json!({"Put": {"key": "k", "value": big}})).unwrap();
    assert_eq!(n1.try_call(kv, json!({"Get": {"key": "k"}})).unwrap(), json!({"Value": big}));
    let lanes = n1.status()["lanes"].clone();
    let on = |ch: &str| -> Vec<Value> {
        lanes.as_array().unwrap().iter().filter(|l| l["channel"] == json!(ch) && l["peer"] == json!(2)).cloned().collect()
    };
    assert_eq!(on("control").len(), 1, "{lanes}");
    assert!(on("default").len() >= 2, "12 destinations spread over the default channel's 3 lanes: {lanes}");
    let bulk_bytes: u64 = on("bulk").iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert!(bulk_bytes >= 50_000, "the 50 kB put went on the bulk channel: {lanes}");
    let default_bytes: u64 = on("default").iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert!(default_bytes < 50_000, "and not on the default one: {lanes}");

    let m1 = start(&root, 3, SECRET, &["--multiplex", "--lanes", "3"]);
    let m2 = start(&root, 4, SECRET, &["--multiplex", "--lanes", "3", "--seed", &m1.addr]);
    wait_until("both up", CONVERGE, || m1.up() == [3, 4] && m2.up() == [3, 4]);
    let counters: Vec<u64> = (0..12).map(|_| m2.spawn("counter")).collect();
    for &c in &counters {
        assert_eq!(m1.try_call(c, json!({"Add": 2})).unwrap(), json!(2));
    }
    let lanes = m1.status()["lanes"].clone();
    let all: Vec<&Value> = lanes.as_array().unwrap().iter().filter(|l| l["peer"] == json!(4)).collect();
    assert_eq!(all.len(), 1, "one connection to the peer carries everything: {lanes}");
    assert_eq!(all[0]["channel"], json!("*"));
}

/// Plays `rounds` one-way ping-pong rounds between a reactor on `a` and one
/// on `b`, through whatever route the overlay gives.
fn ping_across(a: &NodeProc, b: &NodeProc, rounds: u64) {
    let partner = b.spawn("pingpong");
    let pinger = a.spawn("pingpong");
    let report = a
        .try_call(pinger, json!({"Play": {"peer": partner, "rounds": rounds, "window": 16, "requests": false}}))
        .unwrap();
    assert_eq!(report["pongs"], json!(rounds), "node {} to node {}: {report}", a.id, b.id);
    assert_eq!(b.try_call(partner, json!("Report")).unwrap()["pings"], json!(rounds));
}

/// Client–server: two servers, two clients. Everyone learns everyone;
/// clients hold connections to servers only, and their reactors reach each
/// other through the servers.
#[test]
fn client_server_overlay_routes_clients_through_servers() {
    let root = scratch("cluster", "cs");
    let cs = ["--overlay", "client-server"];
    let s1 = start(&root, 1, SECRET, &[&cs[..], &["--role", "server"]].concat());
    let s2 = start(&root, 2, SECRET, &[&cs[..], &["--role", "server", "--seed", &s1.addr]].concat());
    let c3 = start(&root, 3, SECRET, &[&cs[..], &["--role", "client", "--seed", &s1.addr]].concat());
    let c4 = start(&root, 4, SECRET, &[&cs[..], &["--role", "client", "--seed", &s2.addr]].concat());
    for n in [&s1, &s2, &c3, &c4] {
        wait_until(&format!("node {} sees all four", n.id), CONVERGE, || n.up() == [1, 2, 3, 4]);
    }
    ping_across(&c3, &c4, 1000);
    ping_across(&c4, &s1, 500);
    for c in [&c3, &c4] {
        let lanes = c.status()["lanes"].clone();
        for l in lanes.as_array().unwrap() {
            let peer = l["peer"].as_u64().unwrap();
            assert!(peer == 1 || peer == 2, "a client connects to servers only: {lanes}");
        }
    }
}

/// HyParView + Plumtree across six processes: membership converges, and
/// reactors on any two nodes reach each other (forwarded when they are not
/// neighbours); a killed node is reported down by every survivor.
#[test]
fn hyparview_overlay_converges_routes_and_detects_a_crash() {
    let root = scratch("cluster", "hpv");
    let hv = ["--overlay", "hyparview"];
    let mut nodes = vec![start(&root, 1, SECRET, &hv)];
    for id in 2..=6u16 {
        let seed = nodes[(id as usize - 2) / 2].addr.clone();
        nodes.push(start(&root, id, SECRET, &[&hv[..], &["--seed", &seed]].concat()));
    }
    for n in &nodes {
        wait_until(&format!("node {} sees all six", n.id), CONVERGE, || n.up() == [1, 2, 3, 4, 5, 6]);
    }
    ping_across(&nodes[0], &nodes[5], 500);
    ping_across(&nodes[4], &nodes[1], 500);
    let mut dead = nodes.remove(2);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    for n in &nodes {
        wait_until(&format!("node {} reports node 3 down", n.id), Duration::from_secs(60), || n.up() == [1, 2, 4, 5, 6]);
    }
    ping_across(&nodes[0], &nodes[4], 300);
}

/// A saved fault schedule run by real nodes: at 4 s node 3 is partitioned
/// from nodes 1 and 2 (both sides report the other down), at 10 s the
/// partition heals (all up again, messages flow), at 14 s node 2 crashes
/// itself (the others report it down).
#[test]
fn a_fault_schedule_partitions_heals_and_crashes_real_nodes() {
    let root = scratch("cluster", "schedule");
    let schedule = json!({"seed": 3, "events": [
        {"at_ms": 4000, "event": {"partition": {"sides": [[1, 2], [3]]}}},
        {"at_ms": 10000, "event": "heal"},
        {"at_ms": 14000, "event": {"crash": {"node": 2}}},
    ]});
    let file = root.join("schedule.json");
    std::fs::write(&file, schedule.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let n1 = start(&root, 1, SECRET, &["--faults", f]);
    let mut n2 = start(&root, 2, SECRET, &["--faults", f, "--seed", &n1.addr]);
    let n3 = start(&root, 3, SECRET, &["--faults", f, "--seed", &n1.addr]);
    let t0 = Instant::now();
    for n in [&n1, &n2, &n3] {
        wait_until(&format!("node {} sees all three", n.id), CONVERGE, || n.up() == [1, 2, 3]);
    }
    assert!(t0.elapsed() < Duration::from_millis(3500), "the cluster formed before the partition");
    wait_until("node 1 and node 3 see the partition", CONVERGE, || n1.up() == [1, 2] && n3.up() == [3]);
    wait_until("the partition heals", CONVERGE, || n1.up() == [1, 2, 3] && n3.up() == [1, 2, 3]);
    assert!(t0.elapsed() >= Duration::from_secs(10), "healed only after the schedule's heal");
    let routed = |n: &NodeProc, to: u64| {
        n.status()["members"].as_array().unwrap().iter().any(|m| m["id"] == json!(to) && !m["via"].is_null())
    };
    wait_until("node 1 has a route to node 3 again", CONVERGE, || routed(&n1, 3));
    let c = n3.spawn("counter");
    assert_eq!(n1.try_call(c, json!({"Add": 4})).unwrap(), json!(4));
    let status = n2.child.wait().unwrap();
    assert!(!status.success(), "node 2 crashed itself on schedule: {status}");
    assert!(n2.log().contains("crashing node 2"), "{}", n2.log());
    for n in [&n1, &n3] {
        wait_until(&format!("node {} reports node 2 down", n.id), CONVERGE, || n.up() == [1, 3]);
    }
}

/// Causal order between real processes. Node 1 sends m1 (put x=1) to a kv
/// reactor on node 3, delayed 1.5 s by its fault schedule, then m2 to node
/// 2's host; once node 2 has delivered m2 it sends m3 (put x=2) to the same
/// kv. m1 happened before m3, so with `--causal` node 3 applies m1 first
/// and x ends as 2; without, m3 arrives first and the late m1 leaves x = 1
/// (the control run shows the delay really reorders).
#[test]
fn causal_channel_orders_messages_across_three_processes() {
    for causal in [true, false] {
        let root = scratch("cluster", if causal { "causal" } else { "causal-off" });
        let schedule = json!({"seed": 1, "events": [{"at_ms": 0, "event": {"set_rule": {"name": "slow 1 to 3",
            "rule": {"node": 1, "peer": 3, "channel": 1, "direction": "send", "delay_ms": [1500, 1500]}}}}]});
        let file = root.join("slow.json");
        std::fs::write(&file, schedule.to_string()).unwrap();
        let mut args = vec!["--faults", file.to_str().unwrap()];
        if causal {
            args.push("--causal");
        }
        let n1 = start(&root, 1, SECRET, &args);
        let seeded: Vec<&str> = args.iter().copied().chain(["--seed", n1.addr.as_str()]).collect();
        let n2 = start(&root, 2, SECRET, &seeded);
        let n3 = start(&root, 3, SECRET, &seeded);
        for n in [&n1, &n2, &n3] {
            wait_until(&format!("node {} sees all three", n.id), CONVERGE, || n.up() == [1, 2, 3]);
        }
        let kv = n3.spawn("kv");
        let send = |n: &NodeProc, to: Value, msg: Value| n.admin().request(json!({"op": "send", "to": to, "msg": msg})).unwrap();
        send(&n1, json!(kv), json!({"Put": {"key": "x", "value": "1"}}));
        send(&n1, json!("#2.host"), json!("m2"));
        let mut got = Vec::new();
        wait_until("node 2 delivers m2", CONVERGE, || {
            got.extend(n2.admin().request(json!({"op": "mailbox"})).unwrap().as_array().unwrap().clone());
            !got.is_empty()
        });
        assert_eq!(got[0]["msg"], json!("m2"), "{got:?}");
        send(&n2, json!(kv), json!({"Put": {"key": "x", "value": "2"}}));
        std::thread::sleep(Duration::from_millis(2500));
        let x = n3.try_call(kv, json!({"Get": {"key": "x"}})).unwrap();
        let want = if causal { "2" } else { "1" };
        assert_eq!(x, json!({"Value": want}), "causal = {causal}");
    }
}

/// An explicit partition key: a reactor that sets one sends all its
/// messages to 12 reactors on another node over one lane; without a key
/// they spread over the lanes by destination.
#[test]
fn an_explicit_partition_key_keeps_messages_on_one_lane() {
    let root = scratch("cluster", "affinity");
    let n1 = start(&root, 1, SECRET, &["--lanes", "4"]);
    let n2 = start(&root, 2, SECRET, &["--lanes", "4", "--seed", &n1.addr]);
    wait_until("both up", CONVERGE, || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let peers: Vec<u64> = (0..12).map(|_| n2.spawn("pingpong")).collect();
    let lanes_used = |n: &NodeProc| -> usize {
        let lanes = n.status()["lanes"].clone();
        lanes.as_array().unwrap().iter().filter(|l| l["channel"] == json!("default") && l["frames"].as_u64().unwrap() > 0).count()
    };
    let keyed = n1.spawn("pingpong");
    assert_eq!(n1.try_call(keyed, json!({"Scatter": {"peers": peers, "key": 42}})).unwrap(), json!(12));
    wait_until("the partners got their pings", CONVERGE, || {
        peers.iter().all(|&p| n2.try_call(p, json!("Report")).unwrap()["pings"] == json!(1))
    });
    assert_eq!(lanes_used(&n1), 1, "one key, one lane: {}", n1.status()["lanes"]);
    // The same from a node that has not sent yet, without a key.
    let n3 = start(&root, 3, SECRET, &["--lanes", "4", "--seed", &n1.addr]);
    wait_until("all up", CONVERGE, || n3.up() == [1, 2, 3]);
    let plain = n3.spawn("pingpong");
    assert_eq!(n3.try_call(plain, json!({"Scatter": {"peers": peers, "key": 0}})).unwrap(), json!(12));
    wait_until("the partners got their second pings", CONVERGE, || {
        peers.iter().all(|&p| n2.try_call(p, json!("Report")).unwrap()["pings"] == json!(2))
    });
    assert!(lanes_used(&n3) >= 2, "by destination, 12 reactors spread: {}", n3.status()["lanes"]);
}

/// A cluster's nodes share one TOML settings file (`host node --config`),
/// a flag on the command line winning over it; a file with an unknown key,
/// a value of the wrong kind, text that is not TOML, or that others may
/// write, stops the node with the file, the key and why.
#[test]
fn nodes_share_a_settings_file_and_flags_win() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = scratch("cluster", "config");
    let secret = root.join("secret");
    crate::nodes::write_secret(&secret, SECRET);
    let conf = root.join("cluster.toml");
    let write = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    write(&format!(
        "# shared by every node\ncluster = \"from-the-file\"\nsecret-file = \"{}\"\nshards = 1\ncheckpoint-every = 0\ninsecure-plaintext = true\n",
        secret.display()
    ));
    let node = |id: u16, extra: &[&str]| {
        let dir = root.join(format!("n{id}"));
        let mut c = crate::nodes::host_command(&crate::nodes::test_cache());
        c.args(["node", "--config", conf.to_str().unwrap(), "--id", &id.to_string(), "--data-dir", dir.to_str().unwrap()]).args(extra);
        (c, dir, root.join(format!("n{id}.log")))
    };
    let (c, d, l) = node(1, &[]);
    let n1 = crate::nodes::launch(c, 1, &d, &l).unwrap();
    let (c, d, l) = node(2, &["--seed", &n1.addr]);
    let n2 = crate::nodes::launch(c, 2, &d, &l).unwrap();
    for n in [&n1, &n2] {
        wait_until("both nodes up", CONVERGE, || n.up() == [1, 2]);
        let s = n.status();
        assert_eq!((s["cluster"].clone(), s["encrypted"].clone()), (json!("from-the-file"), json!(false)), "{s}");
    }
    // A flag wins over the file.
    let (c, d, l) = node(3, &["--cluster", "from-the-flag"]);
    let n3 = crate::nodes::launch(c, 3, &d, &l).unwrap();
    assert_eq!(n3.status()["cluster"], json!("from-the-flag"));
    drop(n3);

    let refused = |text: &str, says: &str| {
        write(text);
        let (mut c, _, _) = node(4, &[]);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{text:?}: {err}");
    };
    refused("shards = 1\nnosuch = 3\n", "`nosuch`: no such setting");
    refused("shards = \"two\"\n", "invalid value 'two' for '--shards");
    refused("shards = [1, [2]]\n", "`shards`: in the list: a array");
    refused("insecure-plaintext = 1\n", "`insecure-plaintext`: a switch");
    refused("shards = \n", "is not TOML");
    refused("config = \"x\"\n", "cannot name another");
    write("shards = 1\n");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (mut c, _, _) = node(4, &[]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the settings file") && err.contains("writable"), "{err}");
    // The nodes that run are untouched.
    assert_eq!(n1.up(), [1, 2]);
    drop(n2);
}

/// GET `path` from `addr` over plain HTTP/1.1: (status line, body).
fn http_get(addr: &str, method: &str, path: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` (exactly as written) in a
/// Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// `host node --metrics ADDR` serves Prometheus metrics that follow what
/// the node does: reactors by state, messages, error replies, snapshots,
/// checkpoints, a migration out of one node and into the other with its
/// downtime, members and lanes per peer.
#[test]
fn nodes_serve_prometheus_metrics() {
    let root = scratch("cluster", "metrics");
    let (m1, m2) = (crate::nodes::free_addr(), crate::nodes::free_addr());
    let n1 = start(&root, 1, SECRET, &["--metrics", &m1]);
    let n2 = start(&root, 2, SECRET, &["--seed", &n1.addr, "--metrics", &m2]);
    for n in [&n1, &n2] {
        wait_until("both nodes up", CONVERGE, || n.up() == [1, 2]);
    }
    let c = n2.spawn("counter");
    for _ in 0..10 {
        n1.try_call(c, json!({"Add": 1})).unwrap();
    }
    assert!(n1.try_call(c, json!({"Bogus": 1})).is_err());
    let file = root.join("c.snap");
    n2.admin().request(json!({"op": "snapshot", "reactors": [c], "path": file.to_str().unwrap()})).unwrap();
    n2.admin().request(json!({"op": "checkpoint"})).unwrap();
    n2.admin().request(json!({"op": "migrate", "address": c, "to": 1})).unwrap();
    assert_eq!(n1.try_call(c, json!("Get")).unwrap(), json!(10));

    let (status, body2) = http_get(&m2, "GET", "/metrics");
    assert!(status.contains("200"), "{status}");
    // Every sample line is `name{labels} value`.
    for l in body2.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        assert!(series.starts_with("reactor_") && value.parse::<f64>().is_ok(), "{l}");
    }
    let (_, body1) = http_get(&m1, "GET", "/metrics");
    let at = |b: &str, s: &str| sample(b, s).unwrap_or_else(|| panic!("no {s} in:\n{b}"));
    assert_eq!(at(&body2, r#"reactor_reactors{state="live"}"#), 0.0, "moved away");
    assert_eq!(at(&body1, r#"reactor_reactors{state="live"}"#), 1.0, "moved in");
    assert_eq!(at(&body2, r#"reactor_migrations_total{direction="out",outcome="ok"}"#), 1.0);
    assert_eq!(at(&body1, r#"reactor_migrations_total{direction="in",outcome="ok"}"#), 1.0);
    assert!(at(&body2, "reactor_migration_last_downtime_seconds") > 0.0);
    assert!(at(&body2, "reactor_messages_delivered_total") >= 11.0);
    assert_eq!(at(&body2, "reactor_error_replies_total"), 1.0);
    assert_eq!(at(&body2, r#"reactor_snapshots_total{outcome="ok"}"#), 1.0);
    assert!(at(&body2, r#"reactor_checkpoints_total{outcome="ok"}"#) >= 1.0);
    assert!(at(&body2, "reactor_checkpoint_last_bytes") > 0.0);
    assert_eq!(at(&body2, r#"reactor_members{state="up"}"#), 2.0);
    assert_eq!(at(&body2, r#"reactor_member_up{peer="1"}"#), 1.0);
    assert!(body2.lines().any(|l| l.starts_with(r#"reactor_lane_up{peer="1""#) && l.ends_with(" 1")), "{body2}");
    assert!(at(&body1, r#"reactor_node_info{node="1",name="node1",cluster="reactors",incarnation="1"}"#) == 1.0);
    // Nothing else is served.
    assert!(http_get(&m2, "GET", "/").0.contains("404"));
    assert!(http_get(&m2, "POST", "/metrics").0.contains("405"));
}
