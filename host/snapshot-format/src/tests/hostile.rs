//! Hostile files: damaged pages, overlapping ranges, counts past the
//! bounds, the old version still read, the file mode.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::{ABI, err_of, image, image_with, meta_bytes, reactor, sample, write_sample};
use crate::{
    BlobEntry, FILE_MODE, FORMAT_VERSION, FORMAT_VERSION_1, FormatError, HEADER_LEN, Kind, MAX_BLOB_LEN,
    MAX_HELD_BLOBS, MAX_OUTSTANDING, Meta, PAGE_SIZE, Run, SnapshotFile, SnapshotId, Writer, blob_hash, encode_meta,
    parse,
};

#[test]
fn a_flipped_bit_names_its_page_everywhere_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    write_sample(&path, SnapshotId([1; 16]));
    let mut b = fs::read(&path).unwrap();
    // A bit of data page 2 (run 2 of reactor 0xa).
    b[HEADER_LEN + 2 * PAGE_SIZE + 77] ^= 0x10;
    fs::write(&path, &b).unwrap();
    let want = |e: &FormatError| {
        let at = (HEADER_LEN + 2 * PAGE_SIZE) as u64;
        matches!(e, FormatError::PageCorrupt { page: 2, file_offset } if *file_offset == at)
    };
    // An image in memory, verified.
    parse(&b, ABI).unwrap();
    let e = err_of(crate::parse_verified(&b, ABI));
    assert!(want(&e), "{e:?}");
    assert!(e.to_string().contains("data page 2"), "{e}");
    // A file opens (its meta is intact); its pages are checked as read.
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert!(f.has_page_hashes());
    f.verify_pages(0, 2 * PAGE_SIZE as u64).unwrap();
    let e = err_of(f.verify_pages(0, 4 * PAGE_SIZE as u64));
    assert!(want(&e), "{e:?}");
    let mut page = vec![0u8; PAGE_SIZE];
    f.read_data(2 * PAGE_SIZE as u64, &mut page).unwrap();
    assert!(want(&err_of(f.check_pages(2 * PAGE_SIZE as u64, &page))));
    // The same bytes pass as page 1? No: the checksum is seeded with the
    // page's place.
    let mut p1 = vec![0u8; PAGE_SIZE];
    f.read_data(PAGE_SIZE as u64, &mut p1).unwrap();
    assert!(f.check_pages(2 * PAGE_SIZE as u64, &p1).is_err());
    assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
}

#[test]
fn overlapping_ranges_are_refused_by_name() {
    let (data, good) = sample();
    // Two blobs on the same bytes.
    let mut m = good.clone();
    let b = m.blobs[0].clone();
    m.blobs.push(BlobEntry { tag: 0xb10c, ..b });
    let e = err_of(m.validate(data.len() as u64));
    let named = |first: &str, second: &str| first.contains("0xb10b") && second.contains("0xb10c");
    assert!(matches!(&e, FormatError::Overlap { first, second } if named(first, second)), "{e:?}");
    assert!(matches!(parse(&image(&data, &m), ABI), Err(FormatError::Overlap { .. })));
    // A run whose pages are a blob's.
    let mut m = good.clone();
    m.reactors[1].runs[0].data = Some(3 * PAGE_SIZE as u64);
    let e = err_of(parse(&image(&data, &m), ABI));
    let named = |first: &str, second: &str| first.contains("blob") || second.contains("blob");
    assert!(matches!(&e, FormatError::Overlap { first, second } if named(first, second)), "{e:?}");
    // Two reactors' runs may share pages (they are only read).
    let mut m = good.clone();
    m.reactors[1].runs[0].data = Some(0);
    parse(&image(&data, &m), ABI).unwrap();
    // A blob starting inside another's padding.
    let mut m = good;
    m.blobs[0].len = 1;
    let mut data2 = data.clone();
    data2.extend_from_slice(&[0; PAGE_SIZE]);
    m.blobs.push(BlobEntry { tag: 0xb10d, len: PAGE_SIZE as u64 + 1, offset: 3 * PAGE_SIZE as u64, hash: 0 });
    assert!(matches!(m.validate(data2.len() as u64), Err(FormatError::Overlap { .. })));
}

#[test]
fn counts_past_their_bounds_are_refused() {
    let (data, good) = sample();
    type Case = (&'static str, Box<dyn Fn(&mut Meta)>);
    let cases: Vec<Case> = vec![
        ("held", Box::new(|m: &mut Meta| m.reactors[0].blobs = (0..=MAX_HELD_BLOBS as u64).collect())),
        (
            "outstanding",
            Box::new(|m: &mut Meta| m.reactors[0].outstanding = (0..=MAX_OUTSTANDING as u64).map(|c| (c, 1)).collect()),
        ),
        ("blob length", Box::new(|m: &mut Meta| m.blobs[0].len = MAX_BLOB_LEN + 1)),
    ];
    for (what, f) in cases {
        let mut m = good.clone();
        f(&mut m);
        let e = err_of(m.validate(u64::MAX - PAGE_SIZE as u64 + 1));
        assert!(matches!(e, FormatError::Malformed(_)), "{what}: {e:?}");
        // Through the decoder too (its bounded sequences refuse first).
        let e = err_of(parse(&image(&data, &m), ABI));
        assert!(matches!(e, FormatError::Malformed(_)), "{what}: {e:?}");
    }
    // At the bound is fine.
    let mut m = good;
    m.reactors[0].outstanding = (0..MAX_OUTSTANDING as u64).map(|c| (c, c ^ 1)).collect();
    let (h, back) = parse(&image(&data, &m), ABI).unwrap();
    assert_eq!(h.format_version, FORMAT_VERSION);
    assert_eq!(back.reactors[0].outstanding.len(), MAX_OUTSTANDING);
}

#[test]
fn version_1_files_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.snap");
    let (data, meta) = sample();
    let mut w = Writer::create_version(&path, FORMAT_VERSION_1, ABI, Kind::Full, SnapshotId([3; 16])).unwrap();
    w.append_pages(&data[..3 * PAGE_SIZE]).unwrap();
    w.append_blob(&data[3 * PAGE_SIZE..3 * PAGE_SIZE + 100]).unwrap();
    w.finish(&meta).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert_eq!(f.header().format_version, FORMAT_VERSION_1);
    assert_eq!(f.meta(), &meta);
    assert!(!f.has_page_hashes());
    assert!(matches!(f.check_pages(0, &data[..PAGE_SIZE]), Err(FormatError::Malformed(_))));
    f.verify_data(&mut |_, _| {}).unwrap();
    // The same bytes built by hand: a version 1 image parses.
    let mb = encode_meta(&meta, FORMAT_VERSION_1, &[]).unwrap();
    let mut img = image_with(Kind::Full, &data, &mb);
    img[8..12].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
    super::rehash_header(&mut img);
    assert_eq!(parse(&img, ABI).unwrap().1, meta);
    // Version 1 cannot carry outstanding requests.
    let mut m = meta.clone();
    m.reactors[0].outstanding = vec![(1, 2)];
    let mut w = Writer::create_version(&dir.path().join("x"), FORMAT_VERSION_1, ABI, Kind::Full, SnapshotId([4; 16]))
        .unwrap();
    w.append_pages(&data[..3 * PAGE_SIZE]).unwrap();
    w.append_blob(&data[3 * PAGE_SIZE..3 * PAGE_SIZE + 100]).unwrap();
    assert!(matches!(w.finish(&m), Err(FormatError::Malformed(_))));
    // A version 2 meta in a version 1 header does not decode as one.
    let mut img = image_with(Kind::Full, &data, &meta_bytes(&data, &meta));
    img[8..12].copy_from_slice(&FORMAT_VERSION_1.to_le_bytes());
    super::rehash_header(&mut img);
    assert!(parse(&img, ABI).is_err());
    assert!(matches!(
        Writer::create_version(&dir.path().join("y"), 3, ABI, Kind::Full, SnapshotId([4; 16])),
        Err(FormatError::FormatVersion { found: 3, .. })
    ));
}

#[test]
fn outstanding_requests_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.snap");
    let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId([9; 16])).unwrap();
    let off = w.append_pages(&[7u8; PAGE_SIZE]).unwrap();
    let mut r = reactor(0x77);
    r.outstanding = vec![(0x1_0000_0100, 0x55), (0x1_0000_0101, 0x56)];
    r.runs = vec![Run { first_page: 0, pages: 1, data: Some(off) }];
    let meta = Meta { created_unix_ms: 1, blobs: vec![], reactors: vec![r] };
    w.finish(&meta).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert_eq!(f.meta(), &meta);
    f.verify_pages(0, PAGE_SIZE as u64).unwrap();
}

#[test]
fn snapshot_files_are_private_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.snap");
    // Whatever the umask, the file is 0600.
    write_sample(&path, SnapshotId([2; 16]));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, FILE_MODE);
    // Also when it replaces a world-readable file.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    write_sample(&path, SnapshotId([3; 16]));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let _ = blob_hash(&[]);
}
