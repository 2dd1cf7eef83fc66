//! Where reactors live: the messages nodes exchange when a reactor moves.
//!
//! An address names a reactor, not the node that runs it. When a reactor
//! moves, the node it left sends [`LocationMsg::Moved`] to every node it
//! knows; a node that hears it sends a *fence* (an envelope of kind
//! `KIND_FENCE` carrying [`Fence`]) down each of its lanes towards the old
//! location, holds what it sends the reactor meanwhile, and switches to
//! the new location when every fence was answered with
//! [`LocationMsg::FenceDone`] by the node where the reactor lives: each
//! fence travelled behind every message sent before it, so nothing sent
//! after the switch can overtake them.
//!
//! The other way round, a reactor's own messages: before a moving reactor
//! runs at its target, the node it leaves sends a [`LocationMsg::Flush`]
//! down every lane to every node and waits for each [`LocationMsg::Flushed`]:
//! what the reactor sent from there has been taken in everywhere.
//!
//! These travel as envelopes of kind `KIND_NODE` to a node's host address;
//! their payload's first byte says what they are (below
//! [`FIRST_NODE_TAG`]: a location message, handled by the transport; from
//! it on: the node's own, e.g. migration steps). Every payload is hostile
//! bytes: [`LocationMsg::decode`] and [`Fence::decode`] check lengths and
//! values and never panic (property tests below).

use crate::node::NodeId;

/// First tag of the node's own messages; tags below are location messages.
pub const FIRST_NODE_TAG: u8 = 16;

/// Why a node message's payload is not one of a tag's (see
/// [`decode_tagged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untagged {
    /// Another tag (or none: an empty payload).
    Tag(Option<u8>),
    /// The tag is right but the rest does not decode as one value with
    /// nothing after it.
    Malformed(String),
}

/// A node message's payload: `tag`, then `msg` in postcard.
pub fn encode_tagged<T: serde::Serialize>(tag: u8, msg: &T, capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity);
    v.push(tag);
    postcard::to_extend(msg, v).expect("encoding into memory cannot fail")
}

/// Reads a node message's payload of `tag`: the tag, one postcard-encoded
/// value, nothing after it. Hostile bytes: never panics (the caller checks
/// the value's bounds).
pub fn decode_tagged<T: serde::de::DeserializeOwned>(b: &[u8], tag: u8) -> Result<T, Untagged> {
    match b.first() {
        Some(&t) if t == tag => {}
        t => return Err(Untagged::Tag(t.copied())),
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(&b[1..]).map_err(|e| Untagged::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Untagged::Malformed(format!("{} bytes after it", rest.len())));
    }
    Ok(msg)
}

const TAG_MOVED: u8 = 1;
const TAG_FENCE_DONE: u8 = 2;
const TAG_FLUSH: u8 = 3;
const TAG_FLUSHED: u8 = 4;
/// The shortest flush: its tag and token.
pub const FLUSH_LEN: usize = 9;

/// A location message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationMsg {
    /// The reactor `address` runs on `node` now; `epoch` counts its moves
    /// (a node keeps the newest it heard of).
    Moved {
        /// The reactor.
        address: u64,
        /// Where it runs.
        node: NodeId,
        /// Its move count.
        epoch: u64,
    },
    /// The fence `token` reached the reactor `address` where it lives.
    FenceDone {
        /// The reactor.
        address: u64,
        /// The fence's token.
        token: u64,
    },
    /// A flush: sent down every lane to a node behind what a reactor that
    /// is about to move sent there; the node answers [`Self::Flushed`]
    /// when it has taken in everything before it. `len` bytes long (zero
    /// padding), so that the size rules put it on the channel it flushes.
    Flush {
        /// Names the flush.
        token: u64,
        /// Its length on the wire, at least [`FLUSH_LEN`].
        len: u32,
    },
    /// The flush `token` arrived.
    Flushed {
        /// The flush's token.
        token: u64,
    },
}

/// Why bytes are not a location message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// Empty payload.
    #[error("an empty location message")]
    Empty,
    /// A tag no location message has.
    #[error("unknown location message tag {0}")]
    UnknownTag(u8),
    /// The length does not match the tag's.
    #[error("a location message with tag {tag} of {len} bytes, not {want}")]
    Length {
        /// Its tag.
        tag: u8,
        /// Its length.
        len: usize,
        /// The length of that kind.
        want: usize,
    },
    /// Node 0 or above the largest node id.
    #[error("a location naming node {0}, not a node id")]
    BadNode(NodeId),
    /// A fence shorter than its epoch.
    #[error("a fence of {0} bytes (at least 8)")]
    ShortFence(usize),
    /// A flush padded with other bytes than zeros (or too long).
    #[error("a flush whose padding is not zeros")]
    Padding,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl LocationMsg {
    /// The wire form (the payload of a `KIND_NODE` envelope).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(19);
        match *self {
            Self::Moved { address, node, epoch } => {
                v.push(TAG_MOVED);
                v.extend_from_slice(&address.to_le_bytes());
                v.extend_from_slice(&node.to_le_bytes());
                v.extend_from_slice(&epoch.to_le_bytes());
            }
            Self::FenceDone { address, token } => {
                v.push(TAG_FENCE_DONE);
                v.extend_from_slice(&address.to_le_bytes());
                v.extend_from_slice(&token.to_le_bytes());
            }
            Self::Flush { token, len } => {
                v.push(TAG_FLUSH);
                v.extend_from_slice(&token.to_le_bytes());
                v.resize((len as usize).max(FLUSH_LEN), 0);
            }
            Self::Flushed { token } => {
                v.push(TAG_FLUSHED);
                v.extend_from_slice(&token.to_le_bytes());
            }
        }
        v
    }

    /// Whether a `KIND_NODE` payload is a location message (by its tag).
    pub fn is_location(payload: &[u8]) -> bool {
        payload.first().is_some_and(|&t| t < FIRST_NODE_TAG)
    }

    /// Reads a payload.
    pub fn decode(b: &[u8]) -> Result<Self, LocateError> {
        let &tag = b.first().ok_or(LocateError::Empty)?;
        let want = match tag {
            TAG_MOVED => 19,
            TAG_FENCE_DONE => 17,
            TAG_FLUSH => {
                if b.len() < FLUSH_LEN {
                    return Err(LocateError::Length { tag, len: b.len(), want: FLUSH_LEN });
                }
                if b[FLUSH_LEN..].iter().any(|&x| x != 0) {
                    return Err(LocateError::Padding);
                }
                let len = u32::try_from(b.len()).map_err(|_| LocateError::Padding)?;
                return Ok(Self::Flush { token: u64_at(b, 1), len });
            }
            TAG_FLUSHED => FLUSH_LEN,
            t => return Err(LocateError::UnknownTag(t)),
        };
        if b.len() != want {
            return Err(LocateError::Length { tag, len: b.len(), want });
        }
        Ok(match tag {
            TAG_MOVED => {
                let node = u16::from_le_bytes([b[9], b[10]]);
                if node == 0 || node > reactor_types::address::MAX_NODE {
                    return Err(LocateError::BadNode(node));
                }
                Self::Moved { address: u64_at(b, 1), node, epoch: u64_at(b, 11) }
            }
            TAG_FLUSHED => Self::Flushed { token: u64_at(b, 1) },
            _ => Self::FenceDone { address: u64_at(b, 1), token: u64_at(b, 9) },
        })
    }
}

/// What a fence carries: the epoch of the location its sender switches
/// to. Padded to a length that puts it on the channel it fences (a channel
/// is picked by size); the padding is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The move count its sender learnt.
    pub epoch: u64,
}

impl Fence {
    /// The payload, `len` bytes long (at least 8).
    pub fn encode(&self, len: usize) -> Vec<u8> {
        let mut v = self.epoch.to_le_bytes().to_vec();
        v.resize(len.max(8), 0);
        v
    }

    /// Reads a payload.
    pub fn decode(b: &[u8]) -> Result<Self, LocateError> {
        if b.len() < 8 {
            return Err(LocateError::ShortFence(b.len()));
        }
        Ok(Self { epoch: u64_at(b, 0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            LocationMsg::Moved { address: 0x0001_0200_0000_0005, node: 7, epoch: 3 },
            LocationMsg::FenceDone { address: 42, token: u64::MAX },
            LocationMsg::Flush { token: 7, len: FLUSH_LEN as u32 },
            LocationMsg::Flush { token: 7, len: 4096 },
            LocationMsg::Flushed { token: 1 << 60 },
        ] {
            assert_eq!(LocationMsg::decode(&m.encode()), Ok(m));
            assert!(LocationMsg::is_location(&m.encode()));
        }
        assert_eq!(Fence::decode(&Fence { epoch: 9 }.encode(100)), Ok(Fence { epoch: 9 }));
        assert_eq!(Fence { epoch: 9 }.encode(0).len(), 8);
    }

    #[test]
    fn malformed_messages_get_their_own_errors() {
        assert_eq!(LocationMsg::decode(&[]), Err(LocateError::Empty));
        assert_eq!(LocationMsg::decode(&[9]), Err(LocateError::UnknownTag(9)));
        assert_eq!(LocationMsg::decode(&[1, 0]), Err(LocateError::Length { tag: 1, len: 2, want: 19 }));
        let mut m = LocationMsg::Moved { address: 1, node: 2, epoch: 3 }.encode();
        m[9] = 0;
        m[10] = 0;
        assert_eq!(LocationMsg::decode(&m), Err(LocateError::BadNode(0)));
        m[10] = 0x80;
        assert_eq!(LocationMsg::decode(&m), Err(LocateError::BadNode(0x8000)));
        assert_eq!(Fence::decode(&[0; 7]), Err(LocateError::ShortFence(7)));
        assert_eq!(LocationMsg::decode(&[3, 1, 2]), Err(LocateError::Length { tag: 3, len: 3, want: FLUSH_LEN }));
        let mut f = LocationMsg::Flush { token: 5, len: 20 }.encode();
        assert_eq!(f.len(), 20);
        f[19] = 1;
        assert_eq!(LocationMsg::decode(&f), Err(LocateError::Padding));
        assert_eq!(LocationMsg::decode(&[4; 10]), Err(LocateError::Length { tag: 4, len: 10, want: FLUSH_LEN }));
        assert!(!LocationMsg::is_location(&[FIRST_NODE_TAG]));
        assert!(!LocationMsg::is_location(&[]));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = LocationMsg::decode(&b) {
                prop_assert_eq!(m.encode(), b.clone());
            }
            let _ = Fence::decode(&b);
        }

        #[test]
        fn moved_round_trips(address in any::<u64>(), node in 1u16..=0x7fff, epoch in any::<u64>()) {
            let m = LocationMsg::Moved { address, node, epoch };
            prop_assert_eq!(LocationMsg::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn flushes_round_trip_at_any_length(token in any::<u64>(), len in FLUSH_LEN as u32..70_000) {
            let m = LocationMsg::Flush { token, len };
            let b = m.encode();
            prop_assert_eq!(b.len(), len as usize);
            prop_assert_eq!(LocationMsg::decode(&b), Ok(m));
        }
    }
}
