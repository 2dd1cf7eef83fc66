//! Files written and read back.
#![forbid(unsafe_code)]

use std::fs;

use xxhash_rust::xxh3::xxh3_64;

use super::{ABI, dir_names, page, reactor, sample, write_sample};
use crate::write::WRITE_BUFFER;
use crate::{
    FORMAT_VERSION, FormatError, HEADER_LEN, Kind, Meta, PAGE_SIZE, Run, SnapshotFile, SnapshotId, WASM_PAGE_SIZE,
    Writer, parse,
};

#[test]
fn round_trip_two_reactors_sharing_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.snap");
    let id = SnapshotId::random();
    let len = write_sample(&path, id);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
    assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);

    let f = SnapshotFile::open(&path, ABI).unwrap();
    let (data, meta) = sample();
    assert_eq!(f.meta(), &meta);
    assert_eq!(f.path(), path);
    let h = f.header();
    assert_eq!((h.format_version, h.abi_version, h.page_size), (FORMAT_VERSION, ABI, PAGE_SIZE as u32));
    assert_eq!((h.kind, h.id), (Kind::Full, id));
    assert_eq!((h.data_offset, h.data_len, h.file_len()), (4096, data.len() as u64, len));
    assert_eq!(h.data_hash, xxh3_64(&data));
    assert_eq!(f.file_offset(PAGE_SIZE as u64), (HEADER_LEN + PAGE_SIZE) as u64);
    assert_eq!(f.file().metadata().unwrap().len(), len);

    let mut buf = vec![0u8; 2 * PAGE_SIZE];
    f.read_data(0, &mut buf).unwrap();
    assert_eq!(buf, data[..2 * PAGE_SIZE]);
    let mut one = vec![0u8; PAGE_SIZE];
    f.read_data(2 * PAGE_SIZE as u64, &mut one).unwrap();
    assert_eq!(one, data[2 * PAGE_SIZE..3 * PAGE_SIZE]);
    assert_eq!(f.read_blob(&meta.blobs[0]).unwrap(), (0..100u8).collect::<Vec<_>>());
    assert!(matches!(f.read_data(3 * PAGE_SIZE as u64, &mut buf), Err(FormatError::Malformed(_))));

    let mut calls = vec![];
    f.verify_data(&mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(calls.last(), Some(&(data.len() as u64, data.len() as u64)));

    // The reader on bytes agrees with the file reader.
    let bytes = fs::read(&path).unwrap();
    let (h2, m2) = parse(&bytes, ABI).unwrap();
    assert_eq!((&h2, &m2), (f.header(), f.meta()));
    assert_eq!(bytes[..HEADER_LEN], h2.to_bytes()[..]);
}

#[test]
fn delta_and_empty_snapshots_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.snap");
    let base = SnapshotId::random();
    let w = Writer::create(&path, ABI, Kind::Delta { base }, SnapshotId::random()).unwrap();
    let mut r = reactor(1);
    r.runs = vec![Run { first_page: 3, pages: 2, data: None }];
    let meta = Meta { created_unix_ms: 1, blobs: vec![], reactors: vec![r] };
    w.finish(&meta).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert_eq!(f.header().kind, Kind::Delta { base });
    assert_eq!(f.header().data_len, 0);
    assert_eq!(f.meta(), &meta);
    f.verify_data(&mut |_, _| {}).unwrap();

    assert!(matches!(
        Writer::create(&path, ABI, Kind::Delta { base: SnapshotId::ZERO }, SnapshotId::random()),
        Err(FormatError::Malformed(_))
    ));
    // A writer that fails at create leaves nothing behind.
    assert_eq!(dir_names(dir.path()), vec!["d.snap"]);
}

#[test]
fn large_appends_go_straight_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.snap");
    let big = page(3, 3 * WRITE_BUFFER / PAGE_SIZE);
    let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
    w.append_pages(&page(1, 1)).unwrap();
    let off = w.append_pages(&big).unwrap();
    let mut r = reactor(1);
    r.memory_size = 256 * WASM_PAGE_SIZE;
    r.runs = vec![
        Run { first_page: 0, pages: 1, data: Some(0) },
        Run { first_page: 1, pages: (big.len() / PAGE_SIZE) as u64, data: Some(off) },
    ];
    w.finish(&Meta { created_unix_ms: 0, blobs: vec![], reactors: vec![r] }).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    let mut buf = vec![0u8; big.len()];
    f.read_data(off, &mut buf).unwrap();
    assert!(buf == big);
    f.verify_data(&mut |_, _| {}).unwrap();
}
