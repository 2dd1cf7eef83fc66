//! The supervision tree's messages between nodes (monitors and links
//! across nodes): envelopes of kind `KIND_NODE` to a node's host address,
//! whose payload is the tag [`MSG_TAG`] then a postcard-encoded [`Msg`].
//! Every payload is hostile bytes: [`decode`] bounds and checks it and
//! never panics (property tests below; fuzz target `tree_message`).

use reactor_net::locate::{FIRST_NODE_TAG, Untagged, decode_tagged, encode_tagged};
use serde::{Deserialize, Serialize};

/// The first byte of a tree message's payload (a migration step's is
/// [`FIRST_NODE_TAG`], a standby message's the one after it).
pub const MSG_TAG: u8 = FIRST_NODE_TAG + 2;

/// The longest reason a `Down` carries.
pub const MAX_REASON: usize = 4096;

/// What a `Watch` asks.
pub const OP_MONITOR: u8 = 1;
pub const OP_DEMONITOR: u8 = 2;
pub const OP_LINK: u8 = 3;
pub const OP_UNLINK: u8 = 4;

/// One message between the supervisors of two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// The watcher's node → the target's node: `watcher` monitors,
    /// demonitors, links or unlinks `target` (`op`).
    Watch { watcher: u64, target: u64, op: u8 },
    /// The node where `from` was → the node of `to`: `from` is gone for
    /// good (or was never there), for `to`'s monitor (`link` false) or
    /// link (`link` true).
    Down { to: u64, from: u64, link: bool, reason: String },
}

/// Encodes `msg` as a payload.
pub fn encode(msg: &Msg) -> Vec<u8> {
    encode_tagged(MSG_TAG, msg, 64)
}

/// Whether a node message's payload is a tree message (by its tag).
pub fn is_tree(payload: &[u8]) -> bool {
    payload.first() == Some(&MSG_TAG)
}

/// Why a payload is not a tree message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("not a supervision message (tag {0:?})")]
    Tag(Option<u8>),
    #[error("malformed supervision message: {0}")]
    Malformed(String),
    #[error("supervision message out of bounds: {0}")]
    Bounds(&'static str),
}

/// Decodes a payload: its tag, one message and nothing after it, every
/// address a reactor's, an op it knows, a reason of at most
/// [`MAX_REASON`] bytes.
pub fn decode(b: &[u8]) -> Result<Msg, MsgError> {
    let msg: Msg = decode_tagged(b, MSG_TAG).map_err(|e| match e {
        Untagged::Tag(t) => MsgError::Tag(t),
        Untagged::Malformed(m) => MsgError::Malformed(m),
    })?;
    let (a, b) = match &msg {
        Msg::Watch { watcher, target, op } => {
            if !(OP_MONITOR..=OP_UNLINK).contains(op) {
                return Err(MsgError::Bounds("an unknown op"));
            }
            (*watcher, *target)
        }
        Msg::Down { to, from, reason, .. } => {
            if reason.len() > MAX_REASON {
                return Err(MsgError::Bounds("a reason longer than 4096 bytes"));
            }
            (*to, *from)
        }
    };
    if !reactor_types::Address(a).is_reactor() || !reactor_types::Address(b).is_reactor() {
        return Err(MsgError::Bounds("an address that is not a reactor's"));
    }
    if a == b {
        return Err(MsgError::Bounds("a reactor watching itself"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reactor(n: u64) -> u64 {
        reactor_types::Address::new(2, 0, n).0
    }

    #[test]
    fn every_message_round_trips() {
        for m in [
            Msg::Watch { watcher: reactor(1), target: reactor(2), op: OP_MONITOR },
            Msg::Watch { watcher: reactor(1), target: reactor(2), op: OP_UNLINK },
            Msg::Down { to: reactor(1), from: reactor(2), link: true, reason: "crashed".into() },
        ] {
            assert_eq!(decode(&encode(&m)), Ok(m));
        }
    }

    #[test]
    fn out_of_bounds_messages_are_refused() {
        let op = Msg::Watch { watcher: reactor(1), target: reactor(2), op: 9 };
        assert_eq!(decode(&encode(&op)), Err(MsgError::Bounds("an unknown op")));
        let host = Msg::Watch { watcher: reactor_types::Address::host_of(3).0, target: reactor(2), op: OP_LINK };
        assert_eq!(decode(&encode(&host)), Err(MsgError::Bounds("an address that is not a reactor's")));
        let long = Msg::Down { to: reactor(1), from: reactor(2), link: false, reason: "x".repeat(MAX_REASON + 1) };
        assert_eq!(decode(&encode(&long)), Err(MsgError::Bounds("a reason longer than 4096 bytes")));
        let me = Msg::Down { to: reactor(1), from: reactor(1), link: false, reason: String::new() };
        assert_eq!(decode(&encode(&me)), Err(MsgError::Bounds("a reactor watching itself")));
        let mut trailing = encode(&Msg::Watch { watcher: reactor(1), target: reactor(2), op: OP_LINK });
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(MsgError::Malformed(_))));
        assert_eq!(decode(&[]), Err(MsgError::Tag(None)));
        assert_eq!(decode(&[FIRST_NODE_TAG]), Err(MsgError::Tag(Some(FIRST_NODE_TAG))));
    }

    proptest! {
        /// Any bytes after the tag: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = vec![MSG_TAG];
            b.extend_from_slice(&bytes);
            let _ = decode(&b);
        }

        /// Every cut of a valid message is refused.
        #[test]
        fn cut_messages_are_refused(reason in ".{0,64}", link in any::<bool>()) {
            let b = encode(&Msg::Down { to: reactor(1), from: reactor(2), link, reason });
            for cut in 0..b.len() {
                prop_assert!(decode(&b[..cut]).is_err());
            }
        }
    }
}
