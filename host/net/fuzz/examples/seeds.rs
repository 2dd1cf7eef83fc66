//! Writes seed inputs for the fuzz targets into `corpus/<target>`.
//!
//! `frame_decoder`: a connector's hello, then one frame of each kind (the
//! `Auth` with a wrong MAC: a right one would end the handshake, which the
//! target asserts random input never does).
//!
//! `overlay_messages`: for each first byte 0..8 (overlay
//! kind, signature checks), nodes 2 to 4 are run as real overlays of the
//! same kind (signing with the keys the target knows them by) beside a
//! node 1 built as the target builds it; what they send node 1 while they
//! connect, gossip, broadcast and time passes is written in the target's
//! input format.
//!
//! Run: `cargo run --example seeds` (no fuzzing flags needed).

use reactor_net::frame::{Data, Frame, Hello};
use reactor_net::overlay::{self, Action, Origins, Overlay};
use reactor_net::secure::{Keyring, PublicKey, SigningKey};
use reactor_net::{NodeInfo, NodeRole, OverlayKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn info(id: u16, role: NodeRole) -> NodeInfo {
    NodeInfo { id, name: format!("n{id}"), addr: format!("10.0.0.{id}:7000"), role, incarnation: 1 }
}

fn main() {
    frames("corpus/frame_decoder");
    overlays("corpus/overlay_messages");
}

fn frames(dir: &str) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    let hello = Frame::Hello(Hello {
        cluster: "fuzz".into(),
        node: 2,
        incarnation: 3,
        name: "n2".into(),
        channel: "control".into(),
        lane: 0,
        nonce: [9; 32],
    });
    let data = Data {
        seq: 1,
        ack: 0,
        to: 5,
        from: 6,
        corr: 7,
        channel: 1,
        hops: 2,
        msg_kind: 1,
        flags: 0,
        meta: vec![1, 2, 3],
        payload: b"hello".to_vec(),
    };
    let rest = [
        Frame::Auth { mac: [0; 32] },
        Frame::Data(data),
        Frame::Ack { channel: 1, seq: 9 },
        Frame::Control { payload: vec![3, 1, 2] },
        Frame::Ping { nonce: 11 },
        Frame::Pong { nonce: 11 },
        Frame::Close { reason: "bye".into() },
        Frame::Noise { msg: vec![0; 48] },
    ];
    let mut all = Vec::new();
    hello.encode(&mut all);
    for (i, f) in rest.iter().enumerate() {
        let mut one = Vec::new();
        f.encode(&mut one);
        std::fs::write(format!("{dir}/seed-frame-{i}"), &one).expect("write");
        all.extend_from_slice(&one);
    }
    std::fs::write(format!("{dir}/seed-frames"), all).expect("write");
}

fn overlays(dir: &str) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    for pick in 0u8..8 {
        let (kind, role) = match pick % 4 {
            0 => (OverlayKind::FullMesh, NodeRole::Peer),
            1 => (OverlayKind::ClientServer, NodeRole::Server),
            2 => (OverlayKind::ClientServer, NodeRole::Client),
            _ => (OverlayKind::HyParView, NodeRole::Peer),
        };
        let role_of = |id: u16| if id == 2 { NodeRole::Server } else { role };
        let origins = |id: u16| {
            if pick & 4 == 0 {
                return Origins::Unchecked;
            }
            let keys = Keyring::trust_on_first_use();
            for other in 1..=4u8 {
                let _ =
                    keys.admit(u16::from(other), PublicKey([other; 32]), SigningKey::from_bytes([other; 32]).public());
            }
            Origins::Signed { key: Arc::new(SigningKey::from_bytes([id as u8; 32])), keys: Arc::new(keys) }
        };
        let mut now = Instant::now();
        let mut nodes: Vec<Box<dyn Overlay>> =
            (1..=4u16).map(|id| overlay::build(kind, info(id, role_of(id)), 7 + u64::from(id), origins(id))).collect();
        // Node 1 as the target starts it; the others connected to it and
        // to each other.
        for a in 1..=4u16 {
            for b in 1..=4u16 {
                if a != b {
                    nodes[usize::from(a - 1)].handle_connected(now, info(b, role_of(b)));
                }
            }
        }
        let mut input = vec![pick];
        let mut last = now;
        for step in 0..80u32 {
            now += Duration::from_millis(250);
            if step == 10 || step == 40 {
                nodes[1].broadcast(now, format!("data {step}").into_bytes());
            }
            let mut sends = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                n.handle_timeout(now);
                while let Some(a) = n.poll_action() {
                    if let Action::Send { to, payload } = a {
                        sends.push((i as u16 + 1, to, payload));
                    }
                }
            }
            for (from, to, payload) in sends {
                if !(1..=4).contains(&to) {
                    continue;
                }
                if to == 1 && input.len() < 60_000 && payload.len() <= usize::from(u16::MAX) {
                    let ticks = (now.duration_since(last).as_millis() / 10).min(255) as u8;
                    last = now;
                    input.push((from - 2) as u8);
                    input.push(ticks);
                    input.extend_from_slice(&(payload.len() as u16).to_le_bytes());
                    input.extend_from_slice(&payload);
                    // Each message alone too, as a short seed.
                    let mut one = vec![pick, (from - 2) as u8, 0];
                    one.extend_from_slice(&(payload.len() as u16).to_le_bytes());
                    one.extend_from_slice(&payload);
                    std::fs::write(format!("{dir}/seed-{pick}-msg-{:02x}", payload[0]), one).expect("write");
                }
                let _ = nodes[usize::from(to - 1)].handle_message(now, from, &payload);
            }
        }
        println!("pick {pick}: {} bytes", input.len());
        std::fs::write(format!("{dir}/seed-{pick}-run"), input).expect("write");
    }
}
