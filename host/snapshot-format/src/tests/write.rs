//! The writer's atomicity and its own rules.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use super::{ABI, breakers, dir_names, page, sample, write_sample};
use crate::{FormatError, Kind, Meta, PAGE_SIZE, SnapshotFile, SnapshotId, Writer};

#[test]
fn finish_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.snap");
    write_sample(&path, SnapshotId([1; 16]));
    let id2 = SnapshotId([2; 16]);
    write_sample(&path, id2);
    assert_eq!(SnapshotFile::open(&path, ABI).unwrap().header().id, id2);
    assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
}

#[test]
fn dropped_writer_leaves_existing_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.snap");
    write_sample(&path, SnapshotId::random());
    let before = fs::read(&path).unwrap();
    {
        let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
        w.append_pages(&page(9, 3)).unwrap();
        assert_eq!(dir_names(dir.path()).len(), 2);
    }
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
}

#[test]
fn invalid_finish_leaves_existing_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.snap");
    write_sample(&path, SnapshotId::random());
    let before = fs::read(&path).unwrap();
    let (data, good) = sample();
    let attempt = |meta: &Meta| {
        let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
        w.append_pages(&data[..3 * PAGE_SIZE]).unwrap();
        w.append_blob(&data[3 * PAGE_SIZE..3 * PAGE_SIZE + 100]).unwrap();
        w.finish(meta)
    };
    for (what, brk) in breakers() {
        let mut m = good.clone();
        brk(&mut m);
        assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))), "{what}");
    }
    // Blob entries must describe what append_blob wrote.
    let mut m = good.clone();
    m.blobs[0].hash ^= 1;
    assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))));
    let mut m = good.clone();
    m.blobs[0].len = 99;
    assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))));
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
    attempt(&good).unwrap();
}

#[test]
fn append_pages_wants_whole_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::create(&dir.path().join("x"), ABI, Kind::Full, SnapshotId::random()).unwrap();
    assert!(matches!(w.append_pages(&[0; 100]), Err(FormatError::Malformed(_))));
    assert_eq!(w.append_pages(&[]).unwrap(), 0);
    assert_eq!(w.append_blob(&[]).unwrap(), 0);
    assert_eq!(w.append_blob(&[1]).unwrap(), 0);
    assert_eq!(w.append_blob(&[2; PAGE_SIZE]).unwrap(), PAGE_SIZE as u64);
    assert_eq!(w.data_len(), 2 * PAGE_SIZE as u64);
    let e = Writer::create(Path::new("/"), ABI, Kind::Full, SnapshotId::random()).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }), "{e:?}");
}
