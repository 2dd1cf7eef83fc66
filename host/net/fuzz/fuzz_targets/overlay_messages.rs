//! Fuzzes every overlay's wire decoder and the handling behind it: a node
//! of each overlay (full mesh; client–server as a server and as a client;
//! HyParView + Plumtree), connected to a few neighbours, is fed the input
//! as a sequence of control messages from those neighbours, with time
//! passing between them. No input may panic; every action the overlay asks
//! for must be one a driver can carry out (a control message within the
//! frame limit, no connection to itself). The first byte also picks
//! whether HyParView checks announcements' signatures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_net::frame::MAX_CONTROL_LEN;
use reactor_net::overlay::{self, Action, Origins};
use reactor_net::secure::{Keyring, PublicKey, SigningKey};
use reactor_net::{NodeInfo, NodeRole, OverlayKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn info(id: u16, role: NodeRole) -> NodeInfo {
    NodeInfo { id, name: format!("n{id}"), addr: format!("10.0.0.{id}:7000"), role, incarnation: 1 }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else { return };
    // Bit 2: announcements checked against signing keys (nodes 2 and 3
    // known, 4 and 5 not), as every encrypted node does; else unchecked.
    let origins = if pick & 4 != 0 {
        let keys = Keyring::trust_on_first_use();
        for id in [2u8, 3] {
            let _ = keys.admit(u16::from(id), PublicKey([id; 32]), SigningKey::from_bytes([id; 32]).public());
        }
        Origins::Signed { key: Arc::new(SigningKey::from_bytes([1; 32])), keys: Arc::new(keys) }
    } else {
        Origins::Unchecked
    };
    let (kind, role) = match pick % 4 {
        0 => (OverlayKind::FullMesh, NodeRole::Peer),
        1 => (OverlayKind::ClientServer, NodeRole::Server),
        2 => (OverlayKind::ClientServer, NodeRole::Client),
        _ => (OverlayKind::HyParView, NodeRole::Peer),
    };
    let me = info(1, role);
    let mut o = overlay::build(kind, me, 7, origins);
    let mut now = Instant::now();
    for id in 2..=4 {
        o.handle_connected(now, info(id, if id == 2 { NodeRole::Server } else { role }));
    }
    // Each message: a byte for the sender (2..=5, 5 not connected), a
    // byte for the time that passes, two bytes of length, the payload.
    while rest.len() >= 4 {
        let from = 2 + u16::from(rest[0] % 4);
        now += Duration::from_millis(u64::from(rest[1]) * 10);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let msg = &rest[..len.min(rest.len())];
        rest = &rest[msg.len()..];
        let _ = o.handle_message(now, from, msg);
        o.handle_timeout(now);
        while let Some(a) = o.poll_action() {
            match a {
                Action::Send { to, payload } => {
                    assert!(payload.len() <= MAX_CONTROL_LEN, "a control message over the frame limit");
                    assert_ne!(to, 1, "a message to itself");
                }
                Action::Connect(i) => assert_ne!(i.id, 1, "a connection to itself"),
                _ => {}
            }
        }
        let _ = o.members();
        for id in 0..6 {
            let _ = o.next_hop(id);
        }
    }
});
