//! The steps of a migration as they cross the wire: envelopes of kind
//! `KIND_NODE` to a node's host address, whose payload is the tag
//! [`STEP_TAG`] then a postcard-encoded [`Step`]. Every payload is hostile
//! bytes: [`decode`] bounds and checks it and never panics (property
//! tests below).

use reactor_net::locate::{FIRST_NODE_TAG, Untagged, decode_tagged, encode_tagged};
use serde::{Deserialize, Serialize};

/// The first byte of a migration step's payload.
pub const STEP_TAG: u8 = FIRST_NODE_TAG;

/// Bytes of snapshot or module data in one step.
pub const CHUNK: usize = 1 << 20;

/// Where a migration stands, as its target knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standing {
    /// Never heard of (or given up).
    Unknown,
    /// State arriving, or all there and checked, waiting for the commit.
    Receiving,
    /// The reactor runs here.
    Active,
    /// The restore failed; the reactor does not run here.
    Failed,
}

/// One step of a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Source → target: may `address` move here? (Checked before anything
    /// stops.)
    Offer {
        /// The migration.
        id: u64,
        /// The reactor.
        address: u64,
        /// Its move count once here.
        epoch: u64,
        /// The source's ABI version.
        abi: u32,
        /// Its module's hash.
        module: [u8; 32],
        /// Its linear memory size.
        memory: u64,
        /// Its journal level (`journal_format::Level` code), if it is
        /// journaled: the target journals it at that level from its first
        /// checkpoint there.
        journal: Option<u32>,
    },
    /// Target → source: yes; send the module's bytes first if `need_module`.
    Accepted {
        /// The migration.
        id: u64,
        /// The target lacks the module.
        need_module: bool,
    },
    /// Target → source: no, and why. Nothing stopped.
    Refused {
        /// The migration.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Source → target: a piece of the module's bytes.
    Module {
        /// The migration.
        id: u64,
        /// Where in the module.
        offset: u64,
        /// The module's length.
        total: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Source → target: a piece of layer `layer` (a snapshot file: the
    /// first full, the rest deltas on the one before).
    Layer {
        /// The migration.
        id: u64,
        /// Which layer.
        layer: u32,
        /// Where in the file.
        offset: u64,
        /// The file's length.
        total: u64,
        /// The last layer: taken after the reactor stopped here.
        last: bool,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Target → source: received this much of a layer (flow control).
    Got {
        /// The migration.
        id: u64,
        /// Which layer.
        layer: u32,
        /// Bytes of it written so far.
        upto: u64,
    },
    /// Target → source: the last layer arrived and the chain checks out;
    /// waiting for the commit.
    Ready {
        /// The migration.
        id: u64,
    },
    /// Source → target: run it.
    Commit {
        /// The migration.
        id: u64,
    },
    /// Target → source: it runs here (restored in `restore_us`).
    Active {
        /// The migration.
        id: u64,
        /// How long the restore took, µs.
        restore_us: u64,
    },
    /// Target → source: it could not be taken in; nothing runs here.
    Failed {
        /// The migration.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Source → target: forget it (it stays at the source).
    Abort {
        /// The migration.
        id: u64,
    },
    /// Either way: where does this migration stand with you?
    Query {
        /// The migration.
        id: u64,
    },
    /// The answer to a query.
    Stands {
        /// The migration.
        id: u64,
        /// Where it stands.
        standing: Standing,
    },
    /// Any node → the node where `address` lives: move it to `to` (a
    /// migration asked on another node).
    Please {
        /// Names the request.
        id: u64,
        /// The reactor.
        address: u64,
        /// Where to.
        to: u16,
        /// With pre-copy rounds (else stop-and-copy).
        precopy: bool,
        /// Times it was passed on already.
        hops: u8,
    },
    /// Any node → any node: how loaded are you?
    Load {
        /// Names the question.
        id: u64,
    },
    /// The answer to `Load`.
    LoadIs {
        /// The question.
        id: u64,
        /// Live reactors.
        reactors: u64,
        /// Their linear memory, bytes.
        memory: u64,
    },
    /// The outcome of a `Please`: the report as JSON, or the error.
    Outcome {
        /// The request.
        id: u64,
        /// What happened.
        result: Result<String, String>,
    },
}

impl Step {
    /// The migration (or request) it belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Step::Offer { id, .. }
            | Step::Accepted { id, .. }
            | Step::Refused { id, .. }
            | Step::Module { id, .. }
            | Step::Layer { id, .. }
            | Step::Got { id, .. }
            | Step::Ready { id }
            | Step::Commit { id }
            | Step::Active { id, .. }
            | Step::Failed { id, .. }
            | Step::Abort { id }
            | Step::Query { id }
            | Step::Stands { id, .. }
            | Step::Please { id, .. }
            | Step::Load { id }
            | Step::LoadIs { id, .. }
            | Step::Outcome { id, .. } => *id,
        }
    }
}

/// The payload of a step.
pub fn encode(step: &Step) -> Vec<u8> {
    let capacity = match step {
        Step::Layer { bytes, .. } | Step::Module { bytes, .. } => bytes.len() + 64,
        _ => 64,
    };
    encode_tagged(STEP_TAG, step, capacity)
}

/// Why a payload is not a step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Not tagged as a migration step.
    #[error("not a migration step (tag {0:?})")]
    Tag(Option<u8>),
    /// The tag is right but the rest does not decode.
    #[error("a malformed migration step: {0}")]
    Malformed(String),
    /// A chunk larger than [`CHUNK`], a reason longer than 4 KiB, or a
    /// piece that ends past its total.
    #[error("a migration step out of bounds: {0}")]
    Bounds(&'static str),
}

/// Reads a payload: the tag, a step, nothing after it, every length
/// within bounds.
pub fn decode(b: &[u8]) -> Result<Step, StepError> {
    let step: Step = decode_tagged(b, STEP_TAG).map_err(|e| match e {
        Untagged::Tag(t) => StepError::Tag(t),
        Untagged::Malformed(m) => StepError::Malformed(m),
    })?;
    match &step {
        Step::Module { offset, total, bytes, .. } | Step::Layer { offset, total, bytes, .. } => {
            if bytes.len() > CHUNK {
                return Err(StepError::Bounds("a chunk larger than 1 MiB"));
            }
            if offset.checked_add(bytes.len() as u64).is_none_or(|end| end > *total) {
                return Err(StepError::Bounds("a piece that ends past its total"));
            }
        }
        Step::Refused { reason, .. } | Step::Failed { reason, .. } if reason.len() > 4096 => {
            return Err(StepError::Bounds("a reason longer than 4 KiB"));
        }
        Step::Outcome { result, .. } if result.as_ref().map_or_else(String::len, String::len) > 64 << 10 => {
            return Err(StepError::Bounds("an outcome longer than 64 KiB"));
        }
        _ => {}
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steps_round_trip() {
        for s in [
            Step::Offer { id: 1, address: 2, epoch: 3, abi: 4, module: [7; 32], memory: 5, journal: None },
            Step::Offer { id: 1, address: 2, epoch: 3, abi: 4, module: [7; 32], memory: 5, journal: Some(1) },
            Step::Layer { id: 9, layer: 2, offset: 10, total: 13, last: true, bytes: vec![1, 2, 3] },
            Step::Outcome { id: 3, result: Err("no".into()) },
            Step::Stands { id: 3, standing: Standing::Active },
        ] {
            assert_eq!(decode(&encode(&s)), Ok(s));
        }
    }

    #[test]
    fn bad_payloads_get_specific_errors() {
        assert_eq!(decode(&[]), Err(StepError::Tag(None)));
        assert_eq!(decode(&[1, 2]), Err(StepError::Tag(Some(1))));
        assert!(matches!(decode(&[STEP_TAG, 200]), Err(StepError::Malformed(_))));
        let mut b = encode(&Step::Commit { id: 1 });
        b.push(0);
        assert!(matches!(decode(&b), Err(StepError::Malformed(_))));
        let past = Step::Layer { id: 9, layer: 0, offset: 12, total: 13, last: false, bytes: vec![1, 2] };
        assert_eq!(decode(&encode(&past)), Err(StepError::Bounds("a piece that ends past its total")));
        let big = Step::Module { id: 9, offset: 0, total: u64::MAX, bytes: vec![0; CHUNK + 1] };
        assert_eq!(decode(&encode(&big)), Err(StepError::Bounds("a chunk larger than 1 MiB")));
        let wrap = Step::Layer { id: 9, layer: 0, offset: u64::MAX, total: u64::MAX, last: false, bytes: vec![1] };
        assert!(decode(&encode(&wrap)).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut tagged = vec![STEP_TAG];
            tagged.extend_from_slice(&b);
            for payload in [b, tagged] {
                if let Ok(s) = decode(&payload) {
                    prop_assert_eq!(decode(&encode(&s)), Ok(s));
                }
            }
        }
    }
}
