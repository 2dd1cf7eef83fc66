//! Snapshot ids.
#![forbid(unsafe_code)]

use crate::SnapshotId;
use crate::id::fallback_random;

#[test]
fn snapshot_ids() {
    let a = SnapshotId::random();
    let b = SnapshotId::random();
    assert_ne!(a, b);
    assert!(!a.is_zero() && SnapshotId::ZERO.is_zero());
    let s = a.to_string();
    assert_eq!(s.len(), 32);
    assert!(s.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(SnapshotId([0xab; 16]).to_string(), "ab".repeat(16));
    assert_eq!(format!("{:?}", SnapshotId([1; 16])), format!("SnapshotId({})", "01".repeat(16)));
    let f = fallback_random();
    assert_ne!(f, [0; 16]);
    assert_ne!(f, fallback_random());
}
