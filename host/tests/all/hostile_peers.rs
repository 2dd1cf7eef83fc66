//! Hostile peers: real `host node` processes on loopback, attacked by a
//! test client that speaks the wire format and lies. Most liars hold the
//! cluster secret (an insider, or a stolen secret): they complete the
//! encrypted handshake with keys of their own, then claim what they are
//! not. Each test asserts that the attack is refused with a clear reason
//! in the node's log and that honest nodes go on exchanging messages.
use crate::nodes::{self, CONVERGE, NodeProc, SECRET};
use reactor_net::NodeInfo;
use reactor_net::auth::{Role, Secret};
use reactor_net::frame::{Data, Frame, Hello, MAX_PREAUTH_FRAME_LEN};
use reactor_net::secure::{Handshake, Opener, Sealer, SigningKey, StaticKey, Step};
use reactor_types::Address;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const CLUSTER: &str = "reactors";

fn scratch(name: &str) -> PathBuf {
    nodes::scratch("hostile", name)
}

/// Starts node `id` under `root` with the tests' secret.
fn start(root: &Path, id: u16, args: &[&str]) -> NodeProc {
    nodes::start(root, id, SECRET, args)
}

impl NodeProc {
    fn refused(&self) -> u64 {
        self.status()["refused_connections"].as_u64().unwrap()
    }

    fn public_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.pub")).unwrap().trim().to_owned()
    }
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    nodes::wait_until(what, CONVERGE, f)
}

/// Two nodes of a mesh, both up, and a counter on node 2 that node 1 has
/// added to (so their connections are open).
fn pair(root: &Path) -> (NodeProc, NodeProc, u64) {
    let n1 = start(root, 1, &[]);
    let n2 = start(root, 2, &["--seed", &n1.addr]);
    wait_until("both up", || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let counter = n2.spawn("counter");
    assert_eq!(n1.call(counter, json!({"Add": 1})), json!(1));
    (n1, n2, counter)
}

/// The honest nodes still talk: node 1 adds to the counter on node 2, and
/// node 2 to one on node 1.
fn still_talking(n1: &NodeProc, n2: &NodeProc, counter: u64, expect: u64) {
    assert_eq!(n1.call(counter, json!({"Add": 1})), json!(expect), "node 1 to node 2");
    let back = n1.spawn("counter");
    assert_eq!(n2.call(back, json!({"Add": 5})), json!(5), "node 2 to node 1");
}

/// A peer speaking the wire format: it did the handshake (with the secret
/// and a key of its own), and says whatever the test wants.
struct Liar {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
    wire: Vec<u8>,
}

fn hello(node: u16, channel: &str, lane: u16) -> Hello {
    Hello { cluster: CLUSTER.into(), node, incarnation: 1, name: format!("liar{node}"), channel: channel.into(), lane, nonce: [0; 32] }
}

fn write_frame(s: &mut TcpStream, f: &Frame) -> std::io::Result<()> {
    let mut b = Vec::new();
    f.encode(&mut b);
    s.write_all(&b)
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if let Ok(Some((f, n))) = Frame::decode(buf) {
            buf.drain(..n);
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Liar {
    /// Connects to `addr` and runs the encrypted handshake as `hello` says,
    /// with `key`. `Err` if the node refused (closed the connection).
    fn connect(addr: &str, hello: Hello, key: &StaticKey) -> Result<Self, String> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let secret = Secret::new(SECRET.as_bytes().to_vec()).unwrap();
        let (mut hs, first) = Handshake::start(Role::Connector, &secret, key, signer(key).public(), hello).unwrap();
        write_frame(&mut s, &first.unwrap()).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            let f = read_frame(&mut s, &mut buf).ok_or("the node closed the connection")?;
            match hs.on_frame(f).map_err(|e| e.to_string())? {
                Step::Send(f) => write_frame(&mut s, &f).map_err(|e| e.to_string())?,
                Step::Done(done) => {
                    return Ok(Liar { s, sealer: done.session.sealer, opener: done.session.opener, wire: buf });
                }
            }
        }
    }

    /// Seals and sends a frame.
    fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        let mut plain = Vec::new();
        f.encode(&mut plain);
        let mut out = Vec::new();
        self.sealer.seal(&plain, &mut out).unwrap();
        self.s.write_all(&out)
    }

    /// Whether the node closes the connection (reading and dropping what
    /// it sends until then, answering nothing).
    fn closed_by_node(&mut self) -> bool {
        let mut plain = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
                Ok(n) => {
                    self.wire.extend_from_slice(&chunk[..n]);
                    let used = self.opener.open(&self.wire, &mut plain).expect("the node's records open");
                    self.wire.drain(..used);
                }
            }
        }
    }
}

/// The signing key a liar with static key `key` uses.
fn signer(key: &StaticKey) -> SigningKey {
    SigningKey::from_bytes(*key.private())
}

fn data(to: u64, from: u64, channel: u16, kind: u8, payload: &[u8]) -> Data {
    Data {
        seq: 0,
        ack: 0,
        to,
        from,
        corr: 0,
        channel,
        hops: 1,
        msg_kind: kind,
        flags: guest_sdk::abi::FLAG_TEXT,
        meta: Vec::new(),
        payload: payload.to_vec(),
    }
}

/// A node id claimed with another key than the one first seen is refused,
/// so is a node not in the pinned keys, even with the cluster secret.
#[test]
fn a_node_id_claimed_with_another_key_is_refused() {
    let root = scratch("impostor");
    let (n1, n2, counter) = pair(&root);
    let before = n1.refused();
    let impostor = StaticKey::generate().unwrap();
    let r = Liar::connect(&n1.addr, hello(2, "control", 0), &impostor);
    assert!(r.is_err(), "the impostor was accepted");
    wait_until("the impostor is logged", || n1.log().contains("node 2 is known by static key"));
    assert!(n1.refused() > before);
    still_talking(&n1, &n2, counter, 2);
    assert_eq!(n1.up(), [1, 2]);

    // Pinned keys: node 3 knows only nodes 1, 2 and itself.
    let n3_dir = root.join("n3");
    std::fs::create_dir_all(&n3_dir).unwrap();
    // Its key is made on first start: start it once to learn it.
    let n3 = start(&root, 3, &[]);
    let k3 = n3.public_key();
    drop(n3);
    let pins = root.join("pins");
    std::fs::write(&pins, format!("# the cluster\n1 {}\n2 {}\n3 {k3}\n", n1.public_key(), n2.public_key())).unwrap();
    let n3 = start(&root, 3, &["--peer-keys", pins.to_str().unwrap(), "--seed", &n1.addr]);
    wait_until("node 3 joins with its pinned keys", || n3.up() == [1, 2, 3]);
    let stranger = StaticKey::generate().unwrap();
    assert!(Liar::connect(&n3.addr, hello(9, "control", 0), &stranger).is_err());
    wait_until("the stranger is logged", || n3.log().contains("node 9 is not in this node's pinned peer keys"));
    assert!(Liar::connect(&n3.addr, hello(1, "control", 0), &stranger).is_err());
    wait_until("the false node 1 is logged", || n3.log().contains("node 1 is known by static key"));
    let c3 = n3.spawn("counter");
    assert_eq!(n1.call(c3, json!({"Add": 7})), json!(7));
}

/// An authenticated peer sends as reactors of another node (a message, and
/// a forged reply to node 1's host), and as a reactor of node 1 itself:
/// each closes its connection; nothing is delivered.
#[test]
fn spoofed_senders_are_refused() {
    let root = scratch("spoof");
    let (n1, n2, counter) = pair(&root);
    let local = n1.spawn("counter");
    let of_node_2 = Address::new(2, 0, 1).0;
    let cases: Vec<(Data, &str)> = vec![
        (data(local, of_node_2, 1, guest_sdk::abi::KIND_MESSAGE, br#"{"Add":100}"#), "a node sends only as itself"),
        (data(Address::host_of(1).0, of_node_2, 1, guest_sdk::abi::KIND_REPLY, b"1"), "a node sends only as itself"),
        (data(local, Address::new(1, 0, 9).0, 1, guest_sdk::abi::KIND_MESSAGE, br#"{"Add":100}"#), "an address of this node"),
    ];
    for (i, (d, why)) in cases.into_iter().enumerate() {
        let key = StaticKey::generate().unwrap();
        let mut liar = Liar::connect(&n1.addr, hello(20 + i as u16, "default", 0), &key).expect("the liar authenticates");
        liar.send(&Frame::Data(d)).unwrap();
        assert!(liar.closed_by_node(), "case {i}: the node kept the connection");
        wait_until(why, || n1.log().contains(why));
    }
    // Nothing reached the counter on node 1.
    assert_eq!(n1.call(local, json!({"Add": 1})), json!(1));
    still_talking(&n1, &n2, counter, 2);
}

/// Bytes injected into an authenticated connection (what anyone on the path
/// could do after relaying the handshake) do not decrypt: the connection is
/// closed and nothing is delivered. The same frame sealed by the peer gets
/// through, so it is the record layer that refused it.
#[test]
fn frames_injected_after_the_handshake_are_refused() {
    let root = scratch("inject");
    let (n1, n2, counter) = pair(&root);
    let local = n1.spawn("counter");
    let key = StaticKey::generate().unwrap();
    let mut peer = Liar::connect(&n1.addr, hello(30, "default", 0), &key).unwrap();
    let add = |n: u64| Frame::Data(data(local, Address::new(30, 0, 1).0, 1, guest_sdk::abi::KIND_MESSAGE, format!("{{\"Add\":{n}}}").as_bytes()));
    peer.send(&add(10)).unwrap();
    wait_until("the sealed frame is delivered", || n1.call(local, json!({"Add": 0})) == json!(10));
    // A plaintext frame, then a record of the right shape with a forged
    // tag, written into the stream by someone who is not the peer.
    let mut injected = Vec::new();
    add(1000).encode(&mut injected);
    peer.s.write_all(&injected).unwrap();
    assert!(peer.closed_by_node());
    wait_until("the injection is logged", || n1.log().contains("does not decrypt"));
    let mut peer = Liar::connect(&n1.addr, hello(30, "default", 0), &key).unwrap();
    let mut forged = vec![40, 0];
    forged.extend_from_slice(&[0x5a; 40]);
    peer.s.write_all(&forged).unwrap();
    assert!(peer.closed_by_node());
    assert_eq!(n1.call(local, json!({"Add": 0})), json!(10), "an injected frame was delivered");
    still_talking(&n1, &n2, counter, 2);
}

/// Before a peer is authenticated: a frame over a few KiB is refused from
/// its length prefix (its body is never waited for), a connection that
/// says nothing is closed at the handshake deadline, and hundreds of
/// connections from one address are refused beyond a small number without
/// a task each. Honest nodes keep talking throughout.
#[test]
fn unauthenticated_connections_are_small_few_and_short() {
    let root = scratch("preauth");
    let (n1, n2, counter) = pair(&root);
    let before = n1.refused();
    // A 16 MiB frame announced, and one just over the pre-authentication
    // limit: the node closes without waiting for the bodies.
    for len in [16u32 << 20, MAX_PREAUTH_FRAME_LEN as u32 + 1] {
        let mut s = TcpStream::connect(&n1.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&len.to_le_bytes()).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(sink.is_empty(), "the node answered a refused frame");
    }
    wait_until("the oversized frames are logged", || n1.log().contains("exceeds the limit of 4096"));
    // 300 connections that never speak.
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&n1.addr).unwrap()).collect();
    wait_until("most are refused at once", || n1.refused() >= before + 2 + 300 - 32);
    // The honest nodes' open connections still carry messages.
    still_talking(&n1, &n2, counter, 2);
    // Every idle connection ends: refused at once, or at the deadline.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "an idle connection was kept");
    }
    wait_until("the deadline is logged", || n1.log().contains("timed out authenticating"));
    drop(idle);
    still_talking(&n1, &n2, counter, 3);
    // And a new honest node can still join.
    let n3 = start(&root, 3, &["--seed", &n1.addr]);
    wait_until("node 3 joins", || n3.up() == [1, 2, 3]);
}

/// An authenticated member announces node 2's incarnation as `u64::MAX`
/// (and an unknown node's): node 1 keeps node 2 as it proved itself, and
/// the two go on talking.
#[test]
fn an_incarnation_announced_by_another_member_is_ignored() {
    let root = scratch("incarnation");
    let (n1, n2, counter) = pair(&root);
    let inc2 = n1.status()["members"].as_array().unwrap().iter().find(|m| m["id"] == json!(2)).unwrap()["incarnation"].clone();
    let key = StaticKey::generate().unwrap();
    let mut liar = Liar::connect(&n1.addr, hello(40, "control", 0), &key).unwrap();
    for id in [2u16, 41] {
        let info = NodeInfo {
            id,
            name: format!("node{id}"),
            addr: n2.addr.clone(),
            role: reactor_net::NodeRole::Peer,
            incarnation: u64::MAX,
        };
        // The mesh's `Announce` (variant 2) of that identity.
        let mut payload = vec![2u8];
        payload.extend_from_slice(&postcard::to_allocvec(&info).unwrap());
        liar.send(&Frame::Control { payload }).unwrap();
    }
    // Let the overlay take them in, then look.
    std::thread::sleep(Duration::from_millis(300));
    let members = n1.status()["members"].clone();
    let two = members.as_array().unwrap().iter().find(|m| m["id"] == json!(2)).unwrap().clone();
    assert_eq!((two["up"].clone(), two["incarnation"].clone()), (json!(true), inc2), "{members}");
    still_talking(&n1, &n2, counter, 2);
    // Node 1 dialled the address given for "node 41" and found node 2
    // there: refused, and nothing believes in a node 41.
    assert!(!n1.up().contains(&41));
}

/// A peer claiming lanes and channels the node does not have is refused
/// before anything it sends is read.
#[test]
fn absurd_lanes_and_channels_are_refused() {
    let root = scratch("lanes");
    let (n1, n2, counter) = pair(&root);
    for (i, (channel, lane, why)) in [
        ("default", u16::MAX, "lane 65535 of channel `default`, which has 4 lanes here"),
        ("default", 4, "lane 4 of channel `default`"),
        ("control", 1, "lane 1 of channel `control`"),
        ("bulk", 0, "unknown channel `bulk`"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = StaticKey::generate().unwrap();
        let mut liar = Liar::connect(&n1.addr, hello(50 + i as u16, channel, lane), &key).expect("authenticated");
        assert!(liar.closed_by_node(), "{why}: the node kept the connection");
        wait_until(why, || n1.log().contains(why));
    }
    still_talking(&n1, &n2, counter, 2);
}

/// Settings the wire format cannot carry are refused when the node starts,
/// with the rule, not by a panic in a network task.
#[test]
fn settings_the_wire_cannot_carry_are_refused_at_start() {
    let root = scratch("config");
    let long = "x".repeat(65);
    for (args, why) in [
        (vec!["--name", long.as_str()], "node name"),
        (vec!["--cluster", long.as_str()], "cluster name"),
    ] {
        let (mut c, _, _) = nodes::node_command(&root, 1, SECRET, &args);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(why) && err.contains("at most 64"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A member of a HyParView cluster that the test controls: it holds the
/// secret and a key of its own, listens (nodes dial back to send it
/// overlay messages), joins node `n1` and becomes its neighbour, and can
/// then send it any overlay message, as node `id`.
struct Member {
    out: Liar,
    key: StaticKey,
    info: NodeInfo,
}

/// Serves a connection a node dialled to a [`Member`]: the acceptor's
/// handshake, then pongs for pings, and every control payload to `tx`.
fn serve_dial(mut s: TcpStream, key: StaticKey, id: u16, tx: mpsc::Sender<Vec<u8>>) -> Option<()> {
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let secret = Secret::new(SECRET.as_bytes().to_vec()).ok()?;
    let (mut hs, _) = Handshake::start(Role::Acceptor, &secret, &key, signer(&key).public(), hello(id, "", 0)).ok()?;
    let mut buf = Vec::new();
    let done = loop {
        match hs.on_frame(read_frame(&mut s, &mut buf)?).ok()? {
            Step::Send(f) => write_frame(&mut s, &f).ok()?,
            Step::Done(done) => break done,
        }
    };
    let mut done = *done;
    write_frame(&mut s, &done.send.take()?).ok()?;
    let (mut sealer, mut opener) = (done.session.sealer, done.session.opener);
    let (mut wire, mut plain) = (buf, Vec::new());
    loop {
        let used = opener.open(&wire, &mut plain).ok()?;
        wire.drain(..used);
        while let Ok(Some((f, n))) = Frame::decode(&plain) {
            plain.drain(..n);
            match f {
                Frame::Ping { nonce } => {
                    let (mut p, mut out) = (Vec::new(), Vec::new());
                    Frame::Pong { nonce }.encode(&mut p);
                    sealer.seal(&p, &mut out).ok()?;
                    s.write_all(&out).ok()?;
                }
                Frame::Control { payload } => {
                    let _ = tx.send(payload);
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => wire.extend_from_slice(&chunk[..n]),
        }
    }
}

/// HyParView's `Join` (variant 0) of `info`.
fn hv_join(info: &NodeInfo) -> Vec<u8> {
    postcard::to_allocvec(&(0u8, info)).unwrap()
}

/// HyParView's `Gossip` (variant 7) of an `Announce` (variant 0) of
/// `info` with `seq` and `sig`, one hop from its origin.
fn hv_announce(info: &NodeInfo, seq: u64, sig: &[u8]) -> Vec<u8> {
    postcard::to_allocvec(&(7u8, 1u16, 0u8, info, seq, sig.to_vec())).unwrap()
}

/// What a node signs to announce `info` with `seq` (the overlay's rule).
fn announce_bytes(info: &NodeInfo, seq: u64) -> Vec<u8> {
    let mut b = b"reactor-net hyparview announce v1\0".to_vec();
    b.extend_from_slice(&postcard::to_allocvec(info).unwrap());
    b.extend_from_slice(&seq.to_le_bytes());
    b
}

impl Member {
    /// Joins `node` as member `id` (its own keys), and waits until `node`
    /// accepted it as a neighbour (a `NeighborReply` that accepts).
    fn join(node: &NodeProc, id: u16) -> Member {
        let key = StaticKey::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let info = NodeInfo {
            id,
            name: format!("member{id}"),
            addr: listener.local_addr().unwrap().to_string(),
            role: reactor_net::NodeRole::Peer,
            incarnation: 1,
        };
        let (tx, rx) = mpsc::channel();
        let k = key.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let (k, tx) = (k.clone(), tx.clone());
                std::thread::spawn(move || serve_dial(s, k, id, tx));
            }
        });
        let mut out = Liar::connect(&node.addr, hello(id, "control", 0), &key).expect("the member authenticates");
        out.send(&Frame::Control { payload: hv_join(&info) }).unwrap();
        loop {
            let got = rx.recv_timeout(CONVERGE).expect("the node answers the join");
            if got == [3, 1] {
                break; // NeighborReply { accepted: true }
            }
        }
        Member { out, key, info }
    }

    /// Its signing key.
    fn out_signer(&self) -> SigningKey {
        signer(&self.key)
    }

    /// Sends an overlay message to the node it joined.
    fn send(&mut self, payload: Vec<u8>) {
        self.out.send(&Frame::Ping { nonce: 0 }).unwrap();
        self.out.send(&Frame::Control { payload }).unwrap();
    }
}

/// What `node` believes of node `id`: (up, incarnation, address).
fn belief(node: &NodeProc, id: u16) -> Option<(bool, u64, String)> {
    let members = node.status()["members"].clone();
    let m = members.as_array().unwrap().iter().find(|m| m["id"] == json!(id))?.clone();
    Some((m["up"] == json!(true), m["incarnation"].as_u64().unwrap(), m["addr"].as_str().unwrap().to_owned()))
}

/// HyParView announcements are relayed by members, so each carries its
/// origin's signature. A member holding the secret relays forged
/// announcements of node 2 (a newer run at its own address; the same run
/// at another address; signed by itself, or not at all) and of a node
/// nobody knows: node 1 drops the forgeries of node 2 (counted), does not
/// believe in the unknown node, and node 2 keeps its incarnation and
/// address everywhere and answers. A genuine restart announced and
/// relayed (member 40's, signed by its own key, relayed by member 41) is
/// learned, and so is a real node's restart.
#[test]
fn forged_hyparview_announcements_are_ignored() {
    let root = scratch("announce");
    let hv = ["--overlay", "hyparview"];
    let n1 = start(&root, 1, &hv);
    let n2 = start(&root, 2, &[&hv[..], &["--seed", n1.addr.as_str()]].concat());
    let n3 = start(&root, 3, &[&hv[..], &["--seed", n1.addr.as_str()]].concat());
    wait_until("all up", || [&n1, &n2, &n3].iter().all(|n| n.up() == [1, 2, 3]));
    let counter = n2.spawn("counter");
    assert_eq!(n1.call(counter, json!({"Add": 1})), json!(1));
    let two = belief(&n1, 2).unwrap();
    assert_eq!(belief(&n3, 2), Some(two.clone()));

    // Member 40 shows node 1 its keys (a handshake), nothing more.
    let key40 = StaticKey::generate().unwrap();
    drop(Liar::connect(&n1.addr, hello(40, "control", 0), &key40).expect("member 40 authenticates"));
    // Member 41 becomes node 1's neighbour and relays.
    let mut relay = Member::join(&n1, 41);
    let forged = [
        NodeInfo { id: 2, name: "n2".into(), addr: relay.info.addr.clone(), role: reactor_net::NodeRole::Peer, incarnation: two.1 + 10 },
        NodeInfo { id: 2, name: "n2".into(), addr: relay.info.addr.clone(), role: reactor_net::NodeRole::Peer, incarnation: two.1 },
    ];
    let sign41 = relay.out_signer();
    relay.send(hv_announce(&forged[0], 1_000_000, &sign41.sign(&announce_bytes(&forged[0], 1_000_000))));
    relay.send(hv_announce(&forged[1], 1_000_001, &[0; 64]));
    relay.send(hv_announce(&forged[0], 1_000_002, &[]));
    // A node nobody knows, "at" node 2's address: only worth a dial.
    let ghost = NodeInfo { id: 42, name: "ghost".into(), addr: n2.addr.clone(), role: reactor_net::NodeRole::Peer, incarnation: 7 };
    relay.send(hv_announce(&ghost, 1, &sign41.sign(&announce_bytes(&ghost, 1))));
    // Member 40's restart, signed by 40, relayed by 41: believed.
    let forty = NodeInfo { id: 40, name: "member40".into(), addr: "127.0.0.1:9".into(), role: reactor_net::NodeRole::Peer, incarnation: 2 };
    relay.send(hv_announce(&forty, 1, &signer(&key40).sign(&announce_bytes(&forty, 1))));
    wait_until("member 40's announced restart is learned", || belief(&n1, 40).is_some_and(|b| b.1 == 2));
    assert_eq!(belief(&n1, 40), Some((true, 2, forty.addr.clone())));
    assert_eq!(n1.status()["bad_signatures"], json!(3), "the forgeries of node 2 are dropped and counted");
    for n in [&n1, &n3] {
        assert_eq!(belief(n, 2), Some(two.clone()), "node {}: node 2 changed", n.id);
        assert!(!n.up().contains(&42), "node {} believes in node 42", n.id);
    }
    // Routes between non-neighbours follow announcements: give them time.
    wait_until("node 3 reaches node 2", || n3.try_call(counter, json!({"Add": 0})).is_ok());
    assert_eq!(n1.call(counter, json!({"Add": 1})), json!(2));
    assert_eq!(n3.call(counter, json!({"Add": 1})), json!(3));
    assert_eq!(n2.status()["bad_signatures"], json!(0), "node 1 relayed a forgery");

    // A real restart of node 2 (new incarnation, new address) is learned.
    drop(n2);
    let n2 = start(&root, 2, &[&hv[..], &["--seed", n3.addr.as_str()]].concat());
    let now = (true, two.1 + 1, n2.addr.clone());
    wait_until("node 2's restart is learned", || belief(&n1, 2) == Some(now.clone()) && belief(&n3, 2) == Some(now.clone()));
    let c2 = n2.spawn("counter");
    for n in [&n1, &n3] {
        wait_until("node 2's new run is reachable", || n.try_call(c2, json!({"Add": 0})).is_ok());
    }
    assert_eq!(n1.call(c2, json!({"Add": 4})), json!(4));
    assert_eq!(n3.call(c2, json!({"Add": 1})), json!(5));
}

/// Trust on first use outlives a restart: node 1 learns node 2's key,
/// restarts, and a process claiming node 2 with another key is refused
/// before the real node 2 is back; the real one then connects. The
/// bindings are in `<data-dir>/known_peers` (0600); a damaged file stops
/// the node with a clear message.
#[test]
fn keys_learned_on_first_use_survive_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = scratch("tofu-restart");
    let (n1, n2, _) = pair(&root);
    let known = n1.dir.join("known_peers");
    let key2 = n2.public_key();
    drop(n2);
    drop(n1);
    let n1 = start(&root, 1, &[]);
    let before = n1.refused();
    let impostor = StaticKey::generate().unwrap();
    assert!(Liar::connect(&n1.addr, hello(2, "control", 0), &impostor).is_err(), "the impostor was accepted after a restart");
    wait_until("the impostor is logged", || n1.log().contains("node 2 is known by static key"));
    assert!(n1.refused() > before);
    let n2 = start(&root, 2, &["--seed", &n1.addr]);
    wait_until("the real node 2 connects", || n1.up() == [1, 2] && n2.up() == [1, 2]);
    let counter = n2.spawn("counter");
    assert_eq!(n1.call(counter, json!({"Add": 3})), json!(3));
    let text = std::fs::read_to_string(&known).unwrap();
    assert!(text.contains(&format!("2 {key2} ")), "{text}");
    assert_eq!(std::fs::metadata(&known).unwrap().permissions().mode() & 0o777, 0o600);
    // A damaged file: the node refuses to start, and says why.
    drop(n1);
    std::fs::write(&known, format!("{text}2 not-a-key\n")).unwrap();
    let (c, dir, log) = nodes::node_command(&root, 1, SECRET, &[]);
    let e = match nodes::launch(c, 1, &dir, &log) {
        Ok(_) => panic!("node 1 started on a damaged known_peers"),
        Err(e) => e,
    };
    assert!(e.contains("known_peers is damaged") && e.contains("line 3"), "{e}");
}
