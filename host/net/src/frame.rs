//! The node-to-node wire format: length-delimited frames on a byte stream.
//!
//! Every byte a peer sends is untrusted. The decoder checks the length
//! prefix against the limit *before* buffering a body, checks every field's
//! length against its own limit, and refuses unknown versions and kinds,
//! truncated bodies and trailing bytes, each with its own [`FrameError`]; a
//! connection that sends one is closed with that reason, and nothing else is
//! affected.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! u32 len       bytes that follow this field (2 + body), at most MAX_FRAME_LEN
//! u8  version   FRAME_VERSION (1)
//! u8  kind      one of the KIND_* constants
//! body          per kind, below
//! ```
//!
//! | kind | body |
//! |---|---|
//! | `Hello` (1) | `cluster: str`, `node: u16`, `incarnation: u64`, `name: str`, `channel: str`, `lane: u16`, `nonce: [u8; 32]` |
//! | `Auth` (2) | `mac: [u8; 32]` |
//! | `Data` (3) | `seq: u64`, `ack: u64`, `to: u64`, `from: u64`, `corr: u64`, `channel: u16`, `hops: u8`, `msg_kind: u8`, `flags: u8`, `meta: bytes` (at most [`MAX_META_LEN`]), `payload: bytes` |
//! | `Ack` (4) | `channel: u16`, `seq: u64` |
//! | `Control` (5) | `payload: bytes` (overlay and membership messages; at most [`MAX_CONTROL_LEN`]) |
//! | `Ping` (6) / `Pong` (7) | `nonce: u64` |
//! | `Close` (8) | `reason: str` |
//! | `Noise` (9) | `msg: bytes` (a Noise handshake message, at most [`MAX_NOISE_LEN`]; see `secure`) |
//!
//! `str` is a `u8` length then that many bytes of UTF-8 (at most
//! [`MAX_NAME_LEN`]; [`MAX_REASON_LEN`] for `Close`); `bytes` is a `u32`
//! length then that many bytes (at most [`MAX_PAYLOAD_LEN`]).
//!
//! Until a connection is authenticated its frames are read with
//! [`Frame::decode_with_limit`] and [`MAX_PREAUTH_FRAME_LEN`]: a peer that has
//! not said who it is cannot make a node buffer more than a few KiB. After an
//! encrypted handshake the same frames travel inside `secure` records.
#![forbid(unsafe_code)]

use std::fmt;

/// The frame format version this host speaks.
pub const FRAME_VERSION: u8 = 1;
/// Most bytes of a message payload (the reactor ABI's limit).
pub const MAX_PAYLOAD_LEN: usize = guest_sdk::abi::MAX_PAYLOAD_LEN as usize;
/// Most bytes of a control payload.
pub const MAX_CONTROL_LEN: usize = 1 << 20;
/// Most bytes of a data frame's channel metadata (causal order).
pub const MAX_META_LEN: usize = 64 << 10;
/// Most bytes of a name (cluster, node, channel).
pub const MAX_NAME_LEN: usize = 64;
/// Most bytes of a close reason.
pub const MAX_REASON_LEN: usize = 255;
/// Most bytes of a Noise handshake message in a `Noise` frame.
pub const MAX_NOISE_LEN: usize = 1024;
/// Most bytes after the length prefix of a frame read before the peer is
/// authenticated (hellos, auths and Noise messages are far smaller).
pub const MAX_PREAUTH_FRAME_LEN: usize = 4096;
/// Most bytes after the length prefix: the largest `Data` frame.
pub const MAX_FRAME_LEN: usize = 2 + DATA_FIXED + 4 + MAX_META_LEN + 4 + MAX_PAYLOAD_LEN;

const DATA_FIXED: usize = 5 * 8 + 2 + 1 + 2;

const KIND_HELLO: u8 = 1;
const KIND_AUTH: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_ACK: u8 = 4;
const KIND_CONTROL: u8 = 5;
const KIND_PING: u8 = 6;
const KIND_PONG: u8 = 7;
const KIND_CLOSE: u8 = 8;
const KIND_NOISE: u8 = 9;

/// The first frame each side of a connection sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the sender belongs to.
    pub cluster: String,
    /// The sender's node id.
    pub node: u16,
    /// Which run of the sender's node this is (greater after a restart), so
    /// a peer resets what it kept of the previous run's streams.
    pub incarnation: u64,
    /// The sender's node name.
    pub name: String,
    /// The channel this connection carries.
    pub channel: String,
    /// Which of the channel's parallel connections this is.
    pub lane: u16,
    /// Fresh randomness for this connection's authentication.
    pub nonce: [u8; 32],
}

/// A message between reactors on different nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// Sequence number on its channel (0 when the channel is unreliable).
    pub seq: u64,
    /// Highest sequence number received from the peer (piggybacked ack).
    pub ack: u64,
    /// Destination reactor.
    pub to: u64,
    /// Sending reactor.
    pub from: u64,
    /// Correlation id of a request or reply.
    pub corr: u64,
    /// Index of the channel in the cluster's channel table (connections
    /// that carry one channel repeat it; a multiplexed one needs it).
    pub channel: u16,
    /// Nodes this message passed through so far (overlays that forward).
    pub hops: u8,
    /// Message kind (`abi::KIND_*`).
    pub msg_kind: u8,
    /// Message flags (`abi::FLAG_*`).
    pub flags: u8,
    /// Channel metadata (a causal channel's clock); empty otherwise.
    pub meta: Vec<u8>,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Identification and challenge.
    Hello(Hello),
    /// Proof of the cluster secret over both hellos.
    Auth {
        /// HMAC-SHA256.
        mac: [u8; 32],
    },
    /// A reactor message.
    Data(Data),
    /// Everything up to `seq` on `channel` arrived.
    Ack {
        /// The channel's index.
        channel: u16,
        /// Highest sequence number received.
        seq: u64,
    },
    /// Overlay and membership traffic.
    Control {
        /// Encoded by the overlay.
        payload: Vec<u8>,
    },
    /// Liveness probe.
    Ping {
        /// Echoed by the pong.
        nonce: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender is closing the connection.
    Close {
        /// Why.
        reason: String,
    },
    /// A message of the encrypted handshake (`secure`).
    Noise {
        /// The Noise message.
        msg: Vec<u8>,
    },
}

/// Why bytes from a peer are not a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the limit (checked before any body is read).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix is too small to hold a version and a kind.
    #[error("frame of {0} bytes is too short for a version and a kind")]
    TooShort(usize),
    /// Another frame format version.
    #[error("frame format version {found}, this host speaks {FRAME_VERSION}")]
    Version {
        /// The peer's version.
        found: u8,
    },
    /// A kind this version does not define.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body ended before a field did.
    #[error("{kind} frame ends inside its `{field}` field")]
    Truncated {
        /// The frame kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{kind} frame has {extra} bytes after its last field")]
    Trailing {
        /// The frame kind.
        kind: &'static str,
        /// How many.
        extra: usize,
    },
    /// A field longer than its limit.
    #[error("{kind} frame's `{field}` is {len} bytes, over the limit of {max}")]
    FieldTooLong {
        /// The frame kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field that is not UTF-8.
    #[error("{kind} frame's `{field}` is not UTF-8")]
    NotUtf8 {
        /// The frame kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
}

impl Frame {
    fn kind_name(kind: u8) -> &'static str {
        match kind {
            KIND_HELLO => "hello",
            KIND_AUTH => "auth",
            KIND_DATA => "data",
            KIND_ACK => "ack",
            KIND_CONTROL => "control",
            KIND_PING => "ping",
            KIND_PONG => "pong",
            KIND_CLOSE => "close",
            _ => "noise",
        }
    }

    /// The frame's kind, for logs.
    pub fn name(&self) -> &'static str {
        Self::kind_name(match self {
            Frame::Hello(_) => KIND_HELLO,
            Frame::Auth { .. } => KIND_AUTH,
            Frame::Data(_) => KIND_DATA,
            Frame::Ack { .. } => KIND_ACK,
            Frame::Control { .. } => KIND_CONTROL,
            Frame::Ping { .. } => KIND_PING,
            Frame::Pong { .. } => KIND_PONG,
            Frame::Close { .. } => KIND_CLOSE,
            Frame::Noise { .. } => KIND_NOISE,
        })
    }

    /// Appends the frame's encoding to `out`. Fields over their limits are
    /// a caller bug and panic (the decoder would refuse them).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(FRAME_VERSION);
        let mut w = Writer(out);
        match self {
            Frame::Hello(h) => {
                w.u8(KIND_HELLO);
                w.str(&h.cluster, MAX_NAME_LEN);
                w.u16(h.node);
                w.u64(h.incarnation);
                w.str(&h.name, MAX_NAME_LEN);
                w.str(&h.channel, MAX_NAME_LEN);
                w.u16(h.lane);
                w.0.extend_from_slice(&h.nonce);
            }
            Frame::Auth { mac } => {
                w.u8(KIND_AUTH);
                w.0.extend_from_slice(mac);
            }
            Frame::Data(d) => {
                w.u8(KIND_DATA);
                for v in [d.seq, d.ack, d.to, d.from, d.corr] {
                    w.u64(v);
                }
                w.u16(d.channel);
                w.u8(d.hops);
                w.u8(d.msg_kind);
                w.u8(d.flags);
                w.bytes(&d.meta, MAX_META_LEN);
                w.bytes(&d.payload, MAX_PAYLOAD_LEN);
            }
            Frame::Ack { channel, seq } => {
                w.u8(KIND_ACK);
                w.u16(*channel);
                w.u64(*seq);
            }
            Frame::Control { payload } => {
                w.u8(KIND_CONTROL);
                w.bytes(payload, MAX_CONTROL_LEN);
            }
            Frame::Ping { nonce } => {
                w.u8(KIND_PING);
                w.u64(*nonce);
            }
            Frame::Pong { nonce } => {
                w.u8(KIND_PONG);
                w.u64(*nonce);
            }
            Frame::Close { reason } => {
                w.u8(KIND_CLOSE);
                w.str(reason, MAX_REASON_LEN);
            }
            Frame::Noise { msg } => {
                w.u8(KIND_NOISE);
                w.bytes(msg, MAX_NOISE_LEN);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes
    /// are needed, else the frame and how many bytes it used. A length
    /// prefix over the limit is refused as soon as its 4 bytes are there.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        Self::decode_with_limit(buf, MAX_FRAME_LEN)
    }

    /// [`Frame::decode`] with a lower limit on the length prefix (at most
    /// [`MAX_FRAME_LEN`]): [`MAX_PREAUTH_FRAME_LEN`] before a peer is
    /// authenticated.
    pub fn decode_with_limit(buf: &[u8], max: usize) -> Result<Option<(Frame, usize)>, FrameError> {
        let max = max.min(MAX_FRAME_LEN);
        let Some(prefix) = buf.get(..4) else { return Ok(None) };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if len < 2 {
            return Err(FrameError::TooShort(len));
        }
        if buf.len() >= 5 && buf[4] != FRAME_VERSION {
            return Err(FrameError::Version { found: buf[4] });
        }
        if buf.len() >= 6 && !(KIND_HELLO..=KIND_NOISE).contains(&buf[5]) {
            return Err(FrameError::UnknownKind(buf[5]));
        }
        let Some(frame) = buf.get(4..4 + len) else { return Ok(None) };
        let kind = frame[1];
        let mut r = Reader { b: &frame[2..], kind: Frame::kind_name(kind) };
        let f = match kind {
            KIND_HELLO => Frame::Hello(Hello {
                cluster: r.str("cluster", MAX_NAME_LEN)?,
                node: r.u16("node")?,
                incarnation: r.u64("incarnation")?,
                name: r.str("name", MAX_NAME_LEN)?,
                channel: r.str("channel", MAX_NAME_LEN)?,
                lane: r.u16("lane")?,
                nonce: r.array("nonce")?,
            }),
            KIND_AUTH => Frame::Auth { mac: r.array("mac")? },
            KIND_DATA => Frame::Data(Data {
                seq: r.u64("seq")?,
                ack: r.u64("ack")?,
                to: r.u64("to")?,
                from: r.u64("from")?,
                corr: r.u64("corr")?,
                channel: r.u16("channel")?,
                hops: r.u8("hops")?,
                msg_kind: r.u8("msg_kind")?,
                flags: r.u8("flags")?,
                meta: r.bytes("meta", MAX_META_LEN)?,
                payload: r.bytes("payload", MAX_PAYLOAD_LEN)?,
            }),
            KIND_ACK => Frame::Ack { channel: r.u16("channel")?, seq: r.u64("seq")? },
            KIND_CONTROL => Frame::Control { payload: r.bytes("payload", MAX_CONTROL_LEN)? },
            KIND_PING => Frame::Ping { nonce: r.u64("nonce")? },
            KIND_PONG => Frame::Pong { nonce: r.u64("nonce")? },
            KIND_CLOSE => Frame::Close { reason: r.str("reason", MAX_REASON_LEN)? },
            _ => Frame::Noise { msg: r.bytes("msg", MAX_NOISE_LEN)? },
        };
        if !r.b.is_empty() {
            return Err(FrameError::Trailing { kind: r.kind, extra: r.b.len() });
        }
        Ok(Some((f, 4 + len)))
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str, max: usize) {
        assert!(s.len() <= max, "a field of {} bytes over its limit of {max}", s.len());
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8], max: usize) {
        assert!(b.len() <= max, "a payload of {} bytes over its limit of {max}", b.len());
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Truncated { kind: self.kind, field });
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn str(&mut self, field: &'static str, max: usize) -> Result<String, FrameError> {
        let len = self.u8(field)? as usize;
        if len > max {
            return Err(FrameError::FieldTooLong { kind: self.kind, field, len, max });
        }
        let b = self.take(len, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::NotUtf8 { kind: self.kind, field })
    }
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, FrameError> {
        let len = u32::from_le_bytes(self.array(field)?) as usize;
        if len > max {
            return Err(FrameError::FieldTooLong { kind: self.kind, field, len, max });
        }
        Ok(self.take(len, field)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{0,64}"
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (name(), any::<u16>(), any::<u64>(), name(), name(), any::<u16>(), any::<[u8; 32]>()).prop_map(
                |(cluster, node, incarnation, name, channel, lane, nonce)| Frame::Hello(Hello {
                    cluster,
                    node,
                    incarnation,
                    name,
                    channel,
                    lane,
                    nonce
                })
            ),
            any::<[u8; 32]>().prop_map(|mac| Frame::Auth { mac }),
            (
                any::<[u64; 5]>(),
                any::<(u16, u8, u8, u8)>(),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(v, (channel, hops, msg_kind, flags), meta, payload)| Frame::Data(Data {
                    seq: v[0],
                    ack: v[1],
                    to: v[2],
                    from: v[3],
                    corr: v[4],
                    channel,
                    hops,
                    msg_kind,
                    flags,
                    meta,
                    payload
                })),
            any::<(u16, u64)>().prop_map(|(channel, seq)| Frame::Ack { channel, seq }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|payload| Frame::Control { payload }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            "[ -~]{0,255}".prop_map(|reason| Frame::Close { reason }),
            proptest::collection::vec(any::<u8>(), 0..MAX_NOISE_LEN).prop_map(|msg| Frame::Noise { msg }),
        ]
    }

    proptest! {
        /// Every frame round-trips; every strict prefix of its encoding
        /// asks for more bytes; bytes after it are left alone.
        #[test]
        fn frames_round_trip_and_prefixes_wait(f in frame(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = Vec::new();
            f.encode(&mut b);
            let n = b.len();
            for cut in 0..n {
                prop_assert_eq!(Frame::decode(&b[..cut]), Ok(None), "prefix of {} bytes", cut);
            }
            b.extend_from_slice(&tail);
            prop_assert_eq!(Frame::decode(&b), Ok(Some((f, n))));
        }

        /// Arbitrary bytes never panic, and whatever decodes re-encodes to
        /// exactly the bytes it came from.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((f, n))) = Frame::decode(&b) {
                let mut again = Vec::new();
                f.encode(&mut again);
                prop_assert_eq!(&again[..], &b[..n]);
            }
        }

        /// Single-byte damage to a valid frame is refused or decodes to some
        /// frame: never a panic.
        #[test]
        fn damaged_frames_never_panic(f in frame(), at in any::<prop::sample::Index>(), x in 1..=255u8) {
            let mut b = Vec::new();
            f.encode(&mut b);
            let i = at.index(b.len());
            b[i] ^= x;
            let _ = Frame::decode(&b);
        }
    }

    #[test]
    fn each_kind_of_bad_frame_gets_its_error() {
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(Frame::decode(&huge), Err(FrameError::TooLarge { .. })), "from the prefix alone");
        assert_eq!(Frame::decode(&[1, 0, 0, 0, 1]), Err(FrameError::TooShort(1)));
        assert_eq!(Frame::decode(&[9, 0, 0, 0, 2]), Err(FrameError::Version { found: 2 }));
        assert_eq!(Frame::decode(&[9, 0, 0, 0, 1, 77]), Err(FrameError::UnknownKind(77)));
        // An ack with 3 bytes of its 8-byte sequence number.
        assert!(matches!(
            Frame::decode(&[7, 0, 0, 0, 1, KIND_ACK, 0, 0, 1, 2, 3]),
            Err(FrameError::Truncated { kind: "ack", field: "seq" })
        ));
        // A ping with one byte too many.
        let mut b = Vec::new();
        Frame::Ping { nonce: 7 }.encode(&mut b);
        b.push(0);
        b[0] += 1;
        assert_eq!(Frame::decode(&b), Err(FrameError::Trailing { kind: "ping", extra: 1 }));
        // A control payload claiming more than its limit.
        let mut b = vec![0, 0, 0, 0, 1, KIND_CONTROL];
        b.extend_from_slice(&((MAX_CONTROL_LEN + 1) as u32).to_le_bytes());
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(Frame::decode(&b), Err(FrameError::FieldTooLong { field: "payload", .. })));
        // A close reason that is not UTF-8.
        let b = [4, 0, 0, 0, 1, KIND_CLOSE, 1, 0xff];
        assert_eq!(Frame::decode(&b), Err(FrameError::NotUtf8 { kind: "close", field: "reason" }));
        // Before authentication, a frame over the small limit is refused
        // from its prefix, whatever its kind.
        let mut b = Vec::new();
        Frame::Control { payload: vec![0; MAX_PREAUTH_FRAME_LEN] }.encode(&mut b);
        assert!(matches!(
            Frame::decode_with_limit(&b[..4], MAX_PREAUTH_FRAME_LEN),
            Err(FrameError::TooLarge { max: MAX_PREAUTH_FRAME_LEN, .. })
        ));
        assert!(matches!(Frame::decode(&b), Ok(Some((Frame::Control { .. }, _)))));
        // A Noise message over its limit.
        let mut b = vec![0, 0, 0, 0, 1, KIND_NOISE];
        b.extend_from_slice(&((MAX_NOISE_LEN + 1) as u32).to_le_bytes());
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(Frame::decode(&b), Err(FrameError::FieldTooLong { field: "msg", .. })));
    }
}
