//! Snapshot ids.
#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};

/// A snapshot's unique id (16 random bytes). Displayed as 32 lowercase hex
/// digits. All zeros is "no snapshot" (the base id of a full snapshot).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// The all-zero id, which names no snapshot.
    pub const ZERO: SnapshotId = SnapshotId([0; 16]);

    /// A fresh random id from the operating system's generator (falling back
    /// to hashing the time, process id and a counter with std's randomly
    /// keyed hasher should that fail). Never zero.
    pub fn random() -> SnapshotId {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() || b == [0; 16] {
            b = fallback_random();
        }
        SnapshotId(b)
    }

    /// Whether this is the all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

pub(crate) fn fallback_random() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u64(n);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&half(1).to_le_bytes());
    b[8..].copy_from_slice(&(half(2) | 1).to_le_bytes());
    b
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({self})")
    }
}
