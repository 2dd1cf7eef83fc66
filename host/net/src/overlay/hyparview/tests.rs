//! Whole clusters in the simulator, hostile bytes, and the wire format.

use super::config::HyParViewConfig;
use super::node::HyParView;
use super::wire::{Bcast, IHave, Message, MsgId, Priority, announce_bytes};
use crate::node::{NodeId, NodeInfo, NodeRole};
use crate::overlay::codec::{decode_message, encode_message};
use crate::overlay::{Action, Origins, Overlay, OverlayError};
use crate::secure::{Keyring, PublicKey, SigningKey};
use crate::sim::{MembershipEvent, Sim, SimConfig, sim_info};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn converge(sim: &mut Sim, limit: Duration) {
    let ok = sim.run_until(Sim::members_converged, limit);
    let errors = sim.membership_errors();
    assert!(ok, "no convergence after {:?}: {} errors, e.g. {:?}", sim.elapsed(), errors.len(), &errors[..errors.len().min(10)]);
}

fn all_routes(sim: &Sim) {
    let ids = sim.alive_ids();
    for &a in &ids {
        for &b in &ids {
            if let Err(e) = sim.route(a, b) {
                panic!("{a} -> {b}: {e}");
            }
        }
    }
}

fn broadcast_reaches_all(sim: &mut Sim, from: NodeId, payload: &[u8]) {
    for id in sim.alive_ids() {
        sim.take_deliveries(id);
    }
    sim.broadcast(from, payload.to_vec());
    sim.run_for(Duration::from_secs(2));
    for id in sim.alive_ids() {
        let got = sim.take_deliveries(id);
        if id != from {
            assert_eq!(got, vec![(from, payload.to_vec())], "node {id}");
        }
    }
}

/// 100 nodes: complete memberships, a connected active graph, views within
/// capacity, few connections, a broadcast that reaches everyone, routes
/// between all 9,900 ordered pairs.
fn converges_routes_and_broadcasts(seed: u64) {
    let mut sim = Sim::hyparview(100, seed);
    converge(&mut sim, Duration::from_secs(60));
    // Settle: routes are learned from announcements.
    sim.run_for(Duration::from_secs(6));
    assert!(sim.members_converged());
    assert!(sim.neighbour_graph_connected());
    let cap = HyParViewConfig::default().active_view_capacity;
    for id in sim.alive_ids() {
        let n = sim.overlay(id).unwrap().neighbours().len();
        assert!((1..=cap).contains(&n), "node {id} has {n} neighbours");
        assert!(sim.connections(id) <= cap + 2, "node {id}: {} connections", sim.connections(id));
    }
    broadcast_reaches_all(&mut sim, 42, b"to everyone");
    all_routes(&sim);
    assert!(sim.alive_ids().iter().all(|&id| sim.stats(id).refused == 0));
}

/// 100 nodes, then a third crash: survivors agree again, keep a connected
/// graph of refilled views, report exactly the crashed nodes Down, route
/// and broadcast; a crashed node comes back with a new incarnation.
fn repairs_after_a_third_crashes(seed: u64) {
    let mut sim = Sim::hyparview(100, seed);
    converge(&mut sim, Duration::from_secs(60));
    sim.run_for(Duration::from_secs(6));
    sim.record_events(true);
    let crashed: Vec<NodeId> = (1..=100).filter(|id| id % 3 == 0).collect();
    for &id in &crashed {
        sim.crash(id);
    }
    // Within detection + down_after (+ a tick), survivors agree.
    converge(&mut sim, Duration::from_secs(40));
    assert!(sim.neighbour_graph_connected());
    let cap = HyParViewConfig::default().active_view_capacity;
    let views: Vec<usize> = sim.alive_ids().iter().map(|&id| sim.overlay(id).unwrap().neighbours().len()).collect();
    let mean = views.iter().sum::<usize>() as f64 / views.len() as f64;
    assert!(views.iter().all(|&n| n >= 2), "views {views:?}");
    assert!(mean >= cap as f64 - 1.5, "views not refilled: mean {mean}, {views:?}");
    for id in sim.alive_ids() {
        let downs: BTreeSet<NodeId> =
            sim.take_events(id).into_iter().filter_map(|e| if let MembershipEvent::Down(d) = e { Some(d) } else { None }).collect();
        assert_eq!(downs, crashed.iter().copied().collect(), "node {id}");
    }
    sim.run_for(Duration::from_secs(6));
    broadcast_reaches_all(&mut sim, 1, b"after the crash");
    all_routes(&sim);
    // A crashed node comes back with a new incarnation.
    let info = sim.restart(3, 1).unwrap();
    converge(&mut sim, Duration::from_secs(30));
    assert!(sim.overlay(50).unwrap().members().contains(&info));
}

#[test]
fn hyparview_100_converges_routes_and_broadcasts() {
    converges_routes_and_broadcasts(11);
}

#[test]
fn hyparview_repairs_after_a_third_crashes() {
    repairs_after_a_third_crashes(12);
}

/// The two scenarios above over many seeds:
/// `cargo test --release -p reactor-net -- --ignored hyparview_seed_sweep`.
#[test]
#[ignore]
fn hyparview_seed_sweep() {
    let mut failed = Vec::new();
    for seed in 1..=48 {
        for (name, scenario) in [("converge", converges_routes_and_broadcasts as fn(u64)), ("crash", repairs_after_a_third_crashes)] {
            if std::panic::catch_unwind(|| scenario(seed)).is_err() {
                failed.push((name, seed));
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// Plumtree's eager links settle into one spanning tree, shaped by the
/// root (the lowest id): a broadcast then takes exactly one message per
/// other node, and routes are short. When the root crashes, the next
/// lowest id takes over and the tree settles again.
#[test]
fn the_broadcast_tree_settles_and_survives_its_root() {
    let mut sim = Sim::hyparview(100, 21);
    converge(&mut sim, Duration::from_secs(60));
    let check = |sim: &mut Sim, from: NodeId, tag: &str| {
        let mut payload = format!("tree check {tag}: ").into_bytes();
        payload.resize(48, b'.');
        sim.set_marker(Some(payload.clone()));
        broadcast_reaches_all(sim, from, &payload);
        let (msgs, _) = sim.marked();
        sim.set_marker(None);
        assert_eq!(msgs as usize, sim.alive_ids().len() - 1, "{tag}: messages that carried one broadcast");
        let ids = sim.alive_ids();
        let mut longest = 0;
        for &a in &ids {
            for &b in &ids {
                let path = sim.route(a, b).unwrap_or_else(|e| panic!("{tag}: {a} -> {b}: {e}"));
                longest = longest.max(path.len() - 1);
            }
        }
        assert!(longest <= 12, "{tag}: a route of {longest} hops");
    };
    sim.run_for(Duration::from_secs(30));
    check(&mut sim, 77, "settled");
    for id in [1, 2] {
        sim.crash(id);
    }
    converge(&mut sim, Duration::from_secs(40));
    sim.run_for(Duration::from_secs(30));
    check(&mut sim, 40, "after the root crashed");
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::hyparview(30, seed);
        sim.run_for(Duration::from_secs(10));
        sim.crash(4);
        sim.broadcast(2, b"x".to_vec());
        sim.run_for(Duration::from_secs(10));
        sim.trace_hash()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

fn node(id: NodeId) -> NodeInfo {
    NodeInfo { id, name: format!("n{id}"), addr: format!("x:{id}"), role: NodeRole::Peer, incarnation: 1 }
}

fn wire(msg: &Message) -> Vec<u8> {
    encode_message(msg)
}

#[test]
fn hyparview_refuses_hostile_messages() {
    let mut h = HyParView::new(node(1), HyParViewConfig::default(), 0);
    let now = Instant::now();
    let refused = |r: Result<(), OverlayError>| matches!(r, Err(OverlayError::Refused(_)));
    let malformed = |r: Result<(), OverlayError>| matches!(r, Err(OverlayError::Malformed(_)));
    // A join claiming to be another node.
    let m = wire(&Message::Join { info: node(3) });
    assert!(refused(h.handle_message(now, 2, &m)));
    // A join without valid info (node 0, a name too long), a message from
    // ourselves.
    let zero = NodeInfo { id: 0, ..node(2) };
    assert!(refused(h.handle_message(now, 2, &wire(&Message::Join { info: zero }))));
    let long = NodeInfo { name: "n".repeat(1000), ..node(2) };
    assert!(refused(h.handle_message(now, 2, &wire(&Message::Join { info: long }))));
    let ok = wire(&Message::Join { info: node(2) });
    assert!(refused(h.handle_message(now, 1, &ok)));
    // Walks longer than configured, shuffles too long.
    let m = wire(&Message::ForwardJoin { peer: node(9), ttl: 60000 });
    assert!(refused(h.handle_message(now, 2, &m)));
    let nodes = (10..100).map(node).collect();
    let m = wire(&Message::Shuffle { origin: node(5), nodes, ttl: 1 });
    assert!(refused(h.handle_message(now, 2, &m)));
    let m = wire(&Message::Shuffle { origin: node(5), nodes: vec![node(6)], ttl: 60000 });
    assert!(refused(h.handle_message(now, 2, &m)));
    // Rounds that would overflow.
    let m = wire(&Message::Graft { id: None, round: u16::MAX });
    assert!(refused(h.handle_message(now, 2, &m)));
    let bcast = Bcast::Data { origin: 2, incarnation: 1, seq: 1, payload: vec![1] };
    let m = wire(&Message::Gossip { round: u16::MAX, bcast: bcast.clone() });
    assert!(refused(h.handle_message(now, 2, &m)));
    let id = MsgId { origin: 2, incarnation: 1, seq: 1 };
    let m = wire(&Message::IHave(vec![IHave { id, round: u16::MAX }]));
    assert!(refused(h.handle_message(now, 2, &m)));
    // An announcement with a signature of the wrong length.
    let bad = Bcast::Announce { info: node(3), seq: 1, sig: vec![0; 63] };
    assert!(refused(h.handle_message(now, 2, &wire(&Message::Gossip { round: 1, bcast: bad }))));
    // A broadcast from node 0.
    let m = wire(&Message::Gossip { round: 1, bcast: Bcast::Data { origin: 0, incarnation: 1, seq: 1, payload: vec![1] } });
    assert!(refused(h.handle_message(now, 2, &m)));
    // Content that is not ours: a gossip whose broadcast is garbage.
    let mut m = wire(&Message::Gossip { round: 1, bcast });
    m.truncate(2);
    m.extend_from_slice(&[9, 9, 9]);
    assert!(malformed(h.handle_message(now, 2, &m)));
    // Truncated, trailing, unknown variant, huge lengths, too big.
    assert!(malformed(h.handle_message(now, 2, &ok[..ok.len() - 1])));
    let mut long = ok.clone();
    long.push(0);
    assert!(malformed(h.handle_message(now, 2, &long)));
    assert!(malformed(h.handle_message(now, 2, &[99, 0])));
    let ihave_tag = wire(&Message::IHave(Vec::new()))[0];
    assert!(malformed(h.handle_message(now, 2, &[ihave_tag, 0xff, 0xff, 0xff, 0xff, 0x0f])));
    assert!(malformed(h.handle_message(now, 2, &vec![0; 100_000])));
    assert!(h.poll_action().is_none());
    // The good join is taken.
    h.handle_message(now, 2, &ok).unwrap();
    assert_eq!(h.neighbours(), vec![2]);
}

/// Wraps an overlay and keeps a copy of every message it sends.
#[derive(Debug)]
struct Recorder {
    inner: HyParView,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Overlay for Recorder {
    fn me(&self) -> &NodeInfo {
        self.inner.me()
    }
    fn handle_seed(&mut self, now: Instant, seed: NodeInfo) {
        self.inner.handle_seed(now, seed);
    }
    fn handle_connected(&mut self, now: Instant, peer: NodeInfo) {
        self.inner.handle_connected(now, peer);
    }
    fn handle_disconnected(&mut self, now: Instant, peer: NodeId) {
        self.inner.handle_disconnected(now, peer);
    }
    fn handle_message(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), OverlayError> {
        self.inner.handle_message(now, from, payload)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
    }
    fn broadcast(&mut self, now: Instant, payload: Vec<u8>) {
        self.inner.broadcast(now, payload);
    }
    fn poll_action(&mut self) -> Option<Action> {
        let a = self.inner.poll_action();
        if let Some(Action::Send { payload, .. }) = &a
            && let Ok(mut sent) = self.sent.lock()
        {
            sent.push(payload.clone());
        }
        a
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn next_hop(&self, to: NodeId) -> Option<NodeId> {
        self.inner.next_hop(to)
    }
    fn members(&self) -> Vec<NodeInfo> {
        self.inner.members()
    }
    fn neighbours(&self) -> Vec<NodeId> {
        self.inner.neighbours()
    }
}

/// Every message a simulated cluster sends (joins, walks, shuffles,
/// crashes, broadcasts) decodes as our wire type and encodes back to the
/// same bytes; every kind of message shows up.
#[test]
fn wire_round_trips_every_message_a_cluster_sends() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let record = sent.clone();
    let factory = Box::new(move |info: NodeInfo, seed: u64| -> Box<dyn Overlay> {
        Box::new(Recorder { inner: HyParView::new(info, HyParViewConfig::default(), seed), sent: record.clone() })
    });
    let mut sim = Sim::new(SimConfig::default(), 4, factory);
    for id in 1..=40 {
        sim.add_node(sim_info(id, NodeRole::Peer, 1), (id > 1).then_some(1));
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(25));
    sim.broadcast(7, vec![7; 100]);
    for id in [5, 10, 15, 20] {
        sim.crash(id);
    }
    sim.run_for(Duration::from_secs(15));
    let _ = sim.restart(10, 2);
    sim.run_for(Duration::from_secs(10));
    let sent = sent.lock().unwrap();
    let mut kinds = BTreeSet::new();
    for payload in sent.iter() {
        let msg: Message = decode_message(payload, HyParViewConfig::default().max_message_size).unwrap();
        assert_eq!(&encode_message(&msg), payload, "{msg:?}");
        let kind = match msg {
            Message::Join { .. } => "join",
            Message::ForwardJoin { .. } => "forward-join",
            Message::Neighbor { priority: Priority::High } => "neighbor-high",
            Message::Neighbor { priority: Priority::Low } => "neighbor-low",
            Message::NeighborReply { .. } => "neighbor-reply",
            Message::Disconnect { .. } => "disconnect",
            Message::Shuffle { .. } => "shuffle",
            Message::ShuffleReply { .. } => "shuffle-reply",
            Message::Gossip { .. } => "gossip",
            Message::IHave(_) => "ihave",
            Message::Graft { .. } => "graft",
            Message::Prune => "prune",
        };
        kinds.insert(kind);
    }
    let expected: BTreeSet<&str> =
        ["join", "forward-join", "neighbor-high", "neighbor-low", "neighbor-reply", "disconnect", "shuffle", "shuffle-reply", "gossip", "ihave", "prune"]
            .into_iter()
            .collect();
    let missing: Vec<&&str> = expected.difference(&kinds).collect();
    assert!(missing.is_empty(), "never sent: {missing:?} (sent {kinds:?}, {} messages)", sent.len());
}


/// A keyring that knows nodes `ids`, each with the signing key
/// `signer(id)` (as if each had connected once).
fn keyring_of(ids: &[NodeId]) -> Arc<Keyring> {
    let k = Keyring::trust_on_first_use();
    for &id in ids {
        k.admit(id, PublicKey([id as u8; 32]), signer(id).public()).unwrap();
    }
    Arc::new(k)
}

fn signer(id: NodeId) -> SigningKey {
    SigningKey::from_bytes([id as u8; 32])
}

fn announce(info: &NodeInfo, seq: u64, by: &SigningKey) -> Vec<u8> {
    let sig = by.sign(&announce_bytes(info, seq)).to_vec();
    wire(&Message::Gossip { round: 1, bcast: Bcast::Announce { info: info.clone(), seq, sig } })
}

fn member(h: &HyParView, id: NodeId) -> Option<NodeInfo> {
    h.members().into_iter().find(|m| m.id == id)
}

/// Node 1 knows the signing keys of nodes 2 and 3; node 2 is its
/// neighbour and relays. What node 2 forges for node 3 (signed by itself,
/// garbage, unsigned) is dropped and counted, and does not keep the
/// genuine announcement of that id out; node 3's genuine restart, relayed,
/// is learned without a connection to it; an announcement of a node whose
/// key is unknown only makes node 1 dial it, and the node's own handshake
/// says which run it is.
#[test]
fn announcements_count_only_with_their_origins_signature() {
    let mut h = HyParView::new(node(1), HyParViewConfig::default(), 0)
        .with_origins(Origins::Signed { key: Arc::new(signer(1)), keys: keyring_of(&[2, 3]) });
    let now = Instant::now();
    h.handle_connected(now, node(2));
    h.handle_message(now, 2, &wire(&Message::Join { info: node(2) })).unwrap();
    h.handle_connected(now, node(3));
    assert_eq!(h.neighbours(), vec![2]);
    assert_eq!(member(&h, 3), Some(node(3)));
    while h.poll_action().is_some() {}

    // Forgeries for node 3, relayed by node 2: a newer run elsewhere.
    let forged = NodeInfo { incarnation: 9, addr: "evil:1".into(), ..node(3) };
    h.handle_message(now, 2, &announce(&forged, 5, &signer(2))).unwrap();
    let garbage = Bcast::Announce { info: forged.clone(), seq: 6, sig: vec![7; 64] };
    h.handle_message(now, 2, &wire(&Message::Gossip { round: 1, bcast: garbage })).unwrap();
    let unsigned = Bcast::Announce { info: forged.clone(), seq: 7, sig: Vec::new() };
    h.handle_message(now, 2, &wire(&Message::Gossip { round: 1, bcast: unsigned })).unwrap();
    assert_eq!(h.bad_signatures(), 3);
    assert_eq!(member(&h, 3), Some(node(3)), "a forged announcement changed node 3");
    assert_eq!(h.neighbours(), vec![2], "a relay of forgeries is not punished: it may not know the key");
    let actions: Vec<Action> = std::iter::from_fn(|| h.poll_action()).collect();
    assert!(!actions.iter().any(|a| matches!(a, Action::Up(_) | Action::Down(_) | Action::Connect(_))), "{actions:?}");
    // Hearsay about node 3 in a shuffle does not change it either.
    let shuffle = Message::Shuffle { origin: node(2), nodes: vec![NodeInfo { incarnation: u64::MAX, ..forged.clone() }], ttl: 0 };
    h.handle_message(now, 2, &wire(&shuffle)).unwrap();
    assert_eq!(member(&h, 3), Some(node(3)));
    while h.poll_action().is_some() {}

    // Node 3 restarts at another address; its announcement, relayed by
    // node 2 with the id a forgery used before, is learned.
    let restarted = NodeInfo { incarnation: 2, addr: "x:33".into(), ..node(3) };
    h.handle_message(now, 2, &announce(&restarted, 5, &signer(3))).unwrap();
    assert_eq!(member(&h, 3), Some(restarted.clone()));
    let actions: Vec<Action> = std::iter::from_fn(|| h.poll_action()).collect();
    assert!(actions.contains(&Action::Down(3)) && actions.contains(&Action::Up(restarted.clone())), "{actions:?}");
    assert_eq!(h.bad_signatures(), 3);

    // Node 7's key is not known here: its announcement is hearsay. Node 1
    // dials the address, believes nothing yet, and takes the run the
    // handshake proves (incarnation 2, not the 40 announced).
    let seven = NodeInfo { incarnation: 40, ..node(7) };
    h.handle_message(now, 2, &announce(&seven, 1, &signer(2))).unwrap();
    assert_eq!(h.bad_signatures(), 3, "an unknown key is not a bad signature");
    assert_eq!(member(&h, 7), None);
    let actions: Vec<Action> = std::iter::from_fn(|| h.poll_action()).collect();
    assert!(actions.contains(&Action::Connect(seven.clone())), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Up(_))), "{actions:?}");
    // Announced again at once: no second dial.
    h.handle_message(now, 2, &announce(&seven, 2, &signer(2))).unwrap();
    assert!(!std::iter::from_fn(|| h.poll_action()).any(|a| matches!(a, Action::Connect(_))));
    let proved = NodeInfo { incarnation: 2, ..node(7) };
    h.handle_connected(now, proved.clone());
    assert_eq!(member(&h, 7), Some(proved));
}

/// The node signs its own announcements so that a node that knows its key
/// verifies them; without a signing key it sends none.
#[test]
fn a_node_signs_its_announcements() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let inner = HyParView::new(node(1), HyParViewConfig::default(), 0)
        .with_origins(Origins::Signed { key: Arc::new(signer(1)), keys: keyring_of(&[2]) });
    let mut h = Recorder { inner, sent: sent.clone() };
    let now = Instant::now();
    h.handle_connected(now, node(2));
    h.handle_message(now, 2, &wire(&Message::Join { info: node(2) })).unwrap();
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_millis(100);
        h.handle_timeout(t);
        while h.poll_action().is_some() {}
    }
    let announcements: Vec<(NodeInfo, u64, Vec<u8>)> = sent
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| match decode_message::<Message>(p, usize::MAX) {
            Ok(Message::Gossip { bcast: Bcast::Announce { info, seq, sig }, .. }) => Some((info, seq, sig)),
            _ => None,
        })
        .collect();
    assert!(!announcements.is_empty(), "no announcement in 10 s");
    for (info, seq, sig) in announcements {
        assert_eq!(info, node(1));
        assert!(signer(1).public().verify(&announce_bytes(&info, seq), &sig));
    }
}
