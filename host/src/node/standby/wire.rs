//! A standby's messages as they cross the wire: envelopes of kind
//! `KIND_NODE` to a node's host address, whose payload is the tag
//! [`MSG_TAG`] then a postcard-encoded [`Msg`]. Every payload is hostile
//! bytes: [`decode`] bounds and checks it and never panics (property tests
//! below).

use reactor_net::locate::{FIRST_NODE_TAG, Untagged, decode_tagged, encode_tagged};
use serde::{Deserialize, Serialize};

/// The first byte of a standby message's payload (a migration step's is
/// [`FIRST_NODE_TAG`]).
pub const MSG_TAG: u8 = FIRST_NODE_TAG + 1;

/// Bytes of module, snapshot or journal data in one message.
pub const CHUNK: usize = 1 << 20;

/// Largest file a standby takes in pieces (a snapshot of a reactor at the
/// largest memory wasm32 allows, with room for its metadata).
pub const MAX_FILE: u64 = (4 << 30) + (64 << 20);

/// One message between a reactor's primary and its standby.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Primary → standby: a piece of a module's bytes (sent before the
    /// first `Attach` that needs it).
    Module {
        /// Its SHA-256.
        hash: [u8; 32],
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    },
    /// Primary → standby: stand by for `address`, which runs `module` at
    /// move count `epoch`, as its standby of generation `generation`; keep its
    /// journal segments from step `from_step` on (and the snapshots that
    /// follow).
    Attach { address: u64, epoch: u64, generation: u64, module: [u8; 32], from_step: u64 },
    /// Primary → standby: a piece of snapshot `seq` of `address` (a
    /// snapshot file holding it alone).
    Snapshot { address: u64, seq: u64, offset: u64, total: u64, bytes: Vec<u8> },
    /// Primary → standby: bytes of the journal segment of `address` that
    /// starts at `first_step`, from `offset` in its file.
    Journal { address: u64, first_step: u64, offset: u64, bytes: Vec<u8> },
    /// Standby → primary: it holds `records` records of that segment.
    Held { address: u64, first_step: u64, records: u64 },
    /// Standby → primary: it holds snapshot `seq` whole.
    HeldSnapshot { address: u64, seq: u64 },
    /// Standby → primary: bytes of that segment before `have` never came
    /// (they went before the standby was told, or were lost): send the
    /// file from `have` on.
    Gap { address: u64, first_step: u64, have: u64 },
    /// Primary → standby: stop standing by for `address` (it stopped, or
    /// another node stands by now).
    Detach { address: u64 },
    /// Standby → anyone: `address` runs on the sender now, at move count
    /// `epoch`: it took it over when the node that ran it was down.
    TookOver { address: u64, epoch: u64 },
    /// Any node → every node: may the sender hold generation `generation` of
    /// `address` (take it over, or give it a new standby)?
    Claim { address: u64, generation: u64 },
    /// The answer to a `Claim`: each node grants one claimant per
    /// generation, and none for a generation below one it granted.
    Vote { address: u64, generation: u64, granted: bool },
}

impl Msg {
    /// Its name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Module { .. } => "module",
            Msg::Attach { .. } => "attach",
            Msg::Snapshot { .. } => "snapshot",
            Msg::Journal { .. } => "journal",
            Msg::Held { .. } => "held",
            Msg::HeldSnapshot { .. } => "held-snapshot",
            Msg::Gap { .. } => "gap",
            Msg::Detach { .. } => "detach",
            Msg::TookOver { .. } => "took-over",
            Msg::Claim { .. } => "claim",
            Msg::Vote { .. } => "vote",
        }
    }
}

/// Encodes `msg` as a payload.
pub fn encode(msg: &Msg) -> Vec<u8> {
    let capacity = match msg {
        Msg::Module { bytes, .. } | Msg::Snapshot { bytes, .. } | Msg::Journal { bytes, .. } => bytes.len() + 64,
        _ => 64,
    };
    encode_tagged(MSG_TAG, msg, capacity)
}

/// Whether a node message's payload is a standby message (by its tag).
pub fn is_standby(payload: &[u8]) -> bool {
    payload.first() == Some(&MSG_TAG)
}

/// Why a payload is not a standby message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("not a standby message (tag {0:?})")]
    Tag(Option<u8>),
    #[error("malformed standby message: {0}")]
    Malformed(String),
    #[error("standby message out of bounds: {0}")]
    Bounds(&'static str),
}

/// Decodes a payload: its tag, one message and nothing after it, every
/// piece within [`CHUNK`] and inside a file of at most [`MAX_FILE`] bytes,
/// every address a reactor's.
pub fn decode(b: &[u8]) -> Result<Msg, MsgError> {
    let msg: Msg = decode_tagged(b, MSG_TAG).map_err(|e| match e {
        Untagged::Tag(t) => MsgError::Tag(t),
        Untagged::Malformed(m) => MsgError::Malformed(m),
    })?;
    let piece = |offset: u64, total: u64, len: usize| {
        if len > CHUNK {
            return Err(MsgError::Bounds("a piece larger than 1 MiB"));
        }
        if total > MAX_FILE {
            return Err(MsgError::Bounds("a file larger than a reactor's snapshot can be"));
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= total => Ok(()),
            _ => Err(MsgError::Bounds("a piece past the end of its file")),
        }
    };
    match &msg {
        Msg::Module { offset, total, bytes, .. } | Msg::Snapshot { offset, total, bytes, .. } => piece(*offset, *total, bytes.len())?,
        Msg::Journal { offset, bytes, .. } => piece(*offset, MAX_FILE, bytes.len())?,
        _ => {}
    }
    let address = match &msg {
        Msg::Module { .. } => None,
        Msg::Attach { address, .. }
        | Msg::Snapshot { address, .. }
        | Msg::Journal { address, .. }
        | Msg::Held { address, .. }
        | Msg::HeldSnapshot { address, .. }
        | Msg::Gap { address, .. }
        | Msg::Detach { address }
        | Msg::TookOver { address, .. }
        | Msg::Claim { address, .. }
        | Msg::Vote { address, .. } => Some(*address),
    };
    if address.is_some_and(|a| !reactor_types::Address(a).is_reactor()) {
        return Err(MsgError::Bounds("an address that is not a reactor's"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reactor() -> u64 {
        reactor_types::Address::new(2, 0, 77).0
    }

    #[test]
    fn every_message_round_trips() {
        let a = reactor();
        for m in [
            Msg::Module { hash: [7; 32], offset: 0, total: 3, bytes: vec![1, 2, 3] },
            Msg::Attach { address: a, epoch: 2, generation: 3, module: [1; 32], from_step: 9 },
            Msg::Snapshot { address: a, seq: 1, offset: 5, total: 10, bytes: vec![0; 5] },
            Msg::Journal { address: a, first_step: 4, offset: 100, bytes: vec![9; 40] },
            Msg::Held { address: a, first_step: 4, records: 12 },
            Msg::HeldSnapshot { address: a, seq: 1 },
            Msg::Gap { address: a, first_step: 4, have: 64 },
            Msg::Detach { address: a },
            Msg::TookOver { address: a, epoch: 3 },
            Msg::Claim { address: a, generation: 4 },
            Msg::Vote { address: a, generation: 4, granted: true },
        ] {
            assert_eq!(decode(&encode(&m)), Ok(m));
        }
    }

    #[test]
    fn out_of_bounds_messages_are_refused() {
        let a = reactor();
        let past = Msg::Snapshot { address: a, seq: 1, offset: 8, total: 10, bytes: vec![0; 5] };
        assert_eq!(decode(&encode(&past)), Err(MsgError::Bounds("a piece past the end of its file")));
        let big = Msg::Journal { address: a, first_step: 0, offset: 0, bytes: vec![0; CHUNK + 1] };
        assert_eq!(decode(&encode(&big)), Err(MsgError::Bounds("a piece larger than 1 MiB")));
        let host = Msg::Detach { address: reactor_types::Address::host_of(3).0 };
        assert_eq!(decode(&encode(&host)), Err(MsgError::Bounds("an address that is not a reactor's")));
        let wrap = Msg::Journal { address: a, first_step: 0, offset: u64::MAX, bytes: vec![1] };
        assert!(decode(&encode(&wrap)).is_err());
        let mut trailing = encode(&Msg::Detach { address: a });
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(MsgError::Malformed(_))));
        assert_eq!(decode(&[FIRST_NODE_TAG]), Err(MsgError::Tag(Some(FIRST_NODE_TAG))));
        assert_eq!(decode(&[]), Err(MsgError::Tag(None)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = vec![MSG_TAG];
            b.extend_from_slice(&body);
            let _ = decode(&b);
        }

        #[test]
        fn any_cut_or_flipped_message_is_refused_or_decodes_within_bounds(
            cut in 0usize..80, flip in 0usize..80, bit in 0u8..8,
        ) {
            let m = encode(&Msg::Journal { address: reactor(), first_step: 3, offset: 77, bytes: vec![5; 40] });
            let _ = decode(&m[..cut.min(m.len())]);
            let mut d = m.clone();
            let i = flip % d.len();
            d[i] ^= 1 << bit;
            if let Ok(Msg::Journal { offset, bytes, .. }) = decode(&d) {
                prop_assert!(bytes.len() <= CHUNK && offset.checked_add(bytes.len() as u64).is_some_and(|e| e <= MAX_FILE));
            }
        }
    }
}
