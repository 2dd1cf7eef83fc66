//! Fuzzes the decoder of standby messages (`host/src/node/standby/wire.rs`)
//! with what a peer can send: no input may panic it; a message it accepts
//! keeps the bounds the standby relies on (pieces of at most `CHUNK` bytes
//! lying inside a file of at most `MAX_FILE`, reactor addresses only) and
//! encodes back to the same bytes.
#![no_main]

#[path = "../../src/node/standby/wire.rs"]
#[allow(dead_code, unreachable_pub)]
mod wire;

use libfuzzer_sys::fuzz_target;
use wire::{CHUNK, MAX_FILE, Msg};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode(data) else { return };
    let piece = |offset: u64, total: u64, len: usize| {
        assert!(len <= CHUNK);
        assert!(total <= MAX_FILE);
        assert!(offset.checked_add(len as u64).is_some_and(|e| e <= total));
    };
    match &msg {
        Msg::Module { offset, total, bytes, .. } | Msg::Snapshot { offset, total, bytes, .. } => piece(*offset, *total, bytes.len()),
        Msg::Journal { offset, bytes, .. } => piece(*offset, MAX_FILE, bytes.len()),
        _ => {}
    }
    if let Msg::Attach { address, .. } | Msg::Journal { address, .. } | Msg::Detach { address } | Msg::TookOver { address, .. } = &msg {
        assert!(reactor_types::Address(*address).is_reactor());
    }
    assert_eq!(wire::decode(&wire::encode(&msg)).as_ref(), Ok(&msg));
});
