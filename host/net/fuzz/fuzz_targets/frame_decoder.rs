//! Fuzzes the node-to-node frame decoder and the handshake behind it: no
//! input may panic either, whatever decodes must re-encode to the same
//! bytes, and random frames must never complete an authentication.
#![no_main]

use reactor_net::auth::{Handshake, Role, Secret, Step};
use reactor_net::frame::{Frame, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hello = Hello {
        cluster: "fuzz".into(),
        node: 1,
        incarnation: 1,
        name: "n1".into(),
        channel: "control".into(),
        lane: 0,
        nonce: [7; 32],
    };
    let secret = Secret::new(b"a cluster secret for fuzzing".to_vec()).unwrap();
    let (mut hs, _) = Handshake::start(Role::Acceptor, secret, hello);
    let mut rest = data;
    let mut authenticating = true;
    while let Ok(Some((frame, n))) = Frame::decode(rest) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(&again[..], &rest[..n], "a decoded frame re-encodes to its bytes");
        rest = &rest[n..];
        if authenticating {
            match hs.on_frame(frame) {
                Ok(Step::Done(_)) => panic!("random frames authenticated"),
                Ok(Step::Send(_)) => {}
                Err(_) => authenticating = false,
            }
        }
    }
});
