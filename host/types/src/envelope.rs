//! Messages in flight, and the answers the outside world gets.

use crate::address::Address;
use guest_sdk::abi;

/// Kind of the node's own messages between nodes (never a reactor's):
/// addressed to a node's host, carrying a location notice or a step of a
/// migration. A guest cannot send one (host calls set the kind), and the
/// runtime never queues one for a reactor.
pub const KIND_NODE: u8 = 0x80;

/// Kind of a fence: addressed to a reactor that moved, sent by a node on
/// each of its lanes towards the reactor's old location when it learns
/// the new one. It travels the old path behind every message sent before
/// it; the node where the reactor lives then answers the fence's sender
/// instead of queueing it, and the sender sends on the new path.
pub const KIND_FENCE: u8 = 0x81;

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `abi::KIND_*`.
    pub kind: u8,
    /// `abi::FLAG_*`.
    pub flags: u8,
    /// Sender.
    pub from: Address,
    /// Correlation id of a request or reply.
    pub corr: u64,
    /// Encoded message.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// The name of envelope kind `kind`, for people: `message`, `request`,
    /// `reply`, `down`, or `envelope` for any other.
    pub fn kind_name(kind: u8) -> &'static str {
        match kind {
            abi::KIND_MESSAGE => "message",
            abi::KIND_REQUEST => "request",
            abi::KIND_REPLY => "reply",
            abi::KIND_DOWN => "down",
            _ => "envelope",
        }
    }

    /// One of the ABI's kinds, deliverable to a reactor.
    #[inline]
    pub fn is_for_reactors(&self) -> bool {
        matches!(self.kind, abi::KIND_MESSAGE | abi::KIND_REQUEST | abi::KIND_REPLY)
    }

    /// Appends the envelope in the ABI's batch layout (header, then
    /// payload) to `out`: what a guest reads with `inbox_read`.
    #[inline]
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + abi::ENVELOPE_HEADER_LEN, 0);
        abi::EnvelopeHeader {
            kind: self.kind,
            flags: self.flags,
            len: self.payload.len() as u32,
            from: self.from.0,
            corr: self.corr,
        }
        .encode(&mut out[start..]);
        out.extend_from_slice(&self.payload);
    }

    /// Whether this is a reply to a request.
    #[inline]
    pub fn is_reply(&self) -> bool {
        self.kind == abi::KIND_REPLY
    }

    /// Whether the payload is JSON text rather than postcard.
    #[inline]
    pub fn is_text(&self) -> bool {
        self.flags & abi::FLAG_TEXT != 0
    }
}

/// An answer to a request made from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Who answered.
    pub from: Address,
    /// Encoded answer (JSON if `text`).
    pub payload: Vec<u8>,
    /// Whether the payload is JSON text.
    pub text: bool,
    /// Whether the request failed: the payload is then the reason (UTF-8
    /// text), not a value (`FLAG_ERROR`).
    pub error: bool,
}

impl Reply {
    /// The reply an envelope of kind `KIND_REPLY` carries.
    #[inline]
    pub fn from_envelope(env: Envelope) -> Self {
        let error = env.flags & guest_sdk::abi::FLAG_ERROR != 0;
        Reply { from: env.from, text: env.is_text(), payload: env.payload, error }
    }

    /// Why the request failed, for an error reply.
    pub fn error_text(&self) -> Option<String> {
        self.error.then(|| String::from_utf8_lossy(&self.payload).into_owned())
    }
}

/// Identifies a request made from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_in_the_abi_batch_layout() {
        let env = Envelope { kind: abi::KIND_REQUEST, flags: abi::FLAG_TEXT, from: Address(9), corr: 77, payload: b"hi".to_vec() };
        let mut out = vec![0xaa];
        env.encode_into(&mut out);
        assert_eq!(out.len(), 1 + abi::ENVELOPE_HEADER_LEN + 2);
        let h = abi::EnvelopeHeader::decode(&out[1..]).unwrap();
        assert_eq!((h.kind, h.flags, h.len, h.from, h.corr), (abi::KIND_REQUEST, abi::FLAG_TEXT, 2, 9, 77));
        assert_eq!(&out[1 + abi::ENVELOPE_HEADER_LEN..], b"hi");
        let reply = Reply::from_envelope(Envelope { kind: abi::KIND_REPLY, ..env });
        assert!(reply.text);
        assert_eq!(reply.from, Address(9));
    }
}
