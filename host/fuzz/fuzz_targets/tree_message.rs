//! Fuzzes the decoder of supervision tree messages between nodes
//! (`host/src/node/supervise/wire.rs`) with what a peer can send: no input
//! may panic it; a message it accepts names two distinct reactors, an op
//! it knows and a reason of at most `MAX_REASON` bytes, and encodes back
//! to the same message.
#![no_main]

#[path = "../../src/node/supervise/wire.rs"]
#[allow(dead_code, unreachable_pub)]
mod wire;

use libfuzzer_sys::fuzz_target;
use wire::{MAX_REASON, Msg, OP_MONITOR, OP_UNLINK};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode(data) else { return };
    let (a, b) = match &msg {
        Msg::Watch { watcher, target, op } => {
            assert!((OP_MONITOR..=OP_UNLINK).contains(op));
            (*watcher, *target)
        }
        Msg::Down { to, from, reason, .. } => {
            assert!(reason.len() <= MAX_REASON);
            (*to, *from)
        }
    };
    assert!(reactor_types::Address(a).is_reactor() && reactor_types::Address(b).is_reactor() && a != b);
    assert_eq!(wire::decode(&wire::encode(&msg)).as_ref(), Ok(&msg));
});
