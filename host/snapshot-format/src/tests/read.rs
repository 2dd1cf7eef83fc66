//! Refusals, in the order the reader checks.
#![forbid(unsafe_code)]

use std::fs;
use std::time::{Duration, Instant};

use super::{ABI, breakers, err_of, image, image_with, rehash_header, sample, sample_image, write_sample};
use crate::constants::HEADER_FIELDS_LEN;
use crate::{
    FORMAT_VERSION_COMPRESSED, FormatError, HEADER_LEN, Kind, MAX_META_LEN, MAX_RUNS_PER_REACTOR, PAGE_SIZE, SnapshotFile,
    SnapshotId, WASM_PAGE_SIZE, parse,
};

#[test]
fn refuses_not_a_snapshot() {
    let mut b = sample_image();
    b[0] = b'X';
    assert!(matches!(parse(&b, ABI), Err(FormatError::NotASnapshot)));
    assert!(matches!(parse(b"\x89PNG\r\n\x1a\n and more", ABI), Err(FormatError::NotASnapshot)));
    assert!(matches!(parse(b"RS", ABI).unwrap_err(), FormatError::TooShort { len: 2 }));
    assert!(matches!(parse(b"RX", ABI), Err(FormatError::NotASnapshot)));
    // Text-mode mangling of \r\n.
    let mut m = b"RSNAP\n\x1a".to_vec();
    m.extend_from_slice(&b[7..]);
    assert!(matches!(parse(&m, ABI), Err(FormatError::NotASnapshot)));
    let e = FormatError::NotASnapshot.to_string();
    assert!(e.contains("not a reactor snapshot file"), "{e}");
}

#[test]
fn refuses_too_short() {
    let b = sample_image();
    for n in [0usize, 1, 8, 11, 12, 50, 111] {
        match parse(&b[..n], ABI) {
            Err(FormatError::TooShort { len }) => assert_eq!(len, n as u64),
            other => panic!("cut at {n}: {other:?}"),
        }
    }
}

#[test]
fn refuses_other_format_versions() {
    let good = sample_image();
    for v in [0u32, 4, 0xffff_ffff] {
        // Patched and re-hashed: only the version is wrong.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        rehash_header(&mut b);
        match parse(&b, ABI) {
            Err(FormatError::FormatVersion { found, supported }) => {
                assert_eq!((found, supported), (v, FORMAT_VERSION_COMPRESSED))
            }
            other => panic!("{other:?}"),
        }
        // Not re-hashed: the version is checked before the hash.
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(parse(&b, ABI), Err(FormatError::FormatVersion { .. })));
        // Even a file cut short right after the version field.
        assert!(matches!(parse(&b[..12], ABI), Err(FormatError::FormatVersion { .. })));
    }
    let newer = FormatError::FormatVersion { found: 3, supported: 2 }.to_string();
    let older = FormatError::FormatVersion { found: 0, supported: 2 }.to_string();
    assert!(newer.contains("newer host"), "{newer}");
    assert!(older.contains("older host"), "{older}");
}

#[test]
fn refuses_header_corruption() {
    let good = sample_image();
    for at in [12usize, 20, 30, 45, 60, 70, 75, 85, 90, 100, 104, 111] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        assert!(matches!(parse(&b, ABI), Err(FormatError::HeaderCorrupt)), "byte {at}");
    }
    // The padding must stay zero.
    for at in [112usize, 2000, HEADER_LEN - 1] {
        let mut b = good.clone();
        b[at] = 1;
        assert!(matches!(parse(&b, ABI), Err(FormatError::HeaderCorrupt)), "byte {at}");
    }
}

#[test]
fn refuses_other_abi_and_page_size() {
    let good = sample_image();
    match parse(&good, ABI + 1) {
        Err(FormatError::AbiVersion { found, expected }) => assert_eq!((found, expected), (ABI, ABI + 1)),
        other => panic!("{other:?}"),
    }
    let mut b = good.clone();
    b[16..20].copy_from_slice(&16384u32.to_le_bytes());
    rehash_header(&mut b);
    match parse(&b, ABI) {
        Err(FormatError::PageSize { found, host }) => assert_eq!((found, host), (16384, 4096)),
        other => panic!("{other:?}"),
    }
    // ABI is checked before the page size.
    assert!(matches!(parse(&b, ABI + 1), Err(FormatError::AbiVersion { .. })));
}

#[test]
fn refuses_truncation_and_trailing_bytes() {
    let good = sample_image();
    let full = good.len() as u64;
    let meta_offset = (HEADER_LEN + 4 * PAGE_SIZE) as u64;
    // In the header (past its fields), in the data, in the meta, one byte short.
    for cut in [112usize, 2000, HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + 5000, meta_offset as usize, good.len() - 1] {
        match parse(&good[..cut], ABI) {
            Err(FormatError::Truncated { expected, found }) => assert_eq!((expected, found), (full, cut as u64)),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let mut b = good.clone();
    b.push(0);
    match parse(&b, ABI) {
        Err(FormatError::TrailingBytes { expected, found }) => assert_eq!((expected, found), (full, full + 1)),
        other => panic!("{other:?}"),
    }
    b.extend_from_slice(&[0; 5000]);
    assert!(matches!(parse(&b, ABI), Err(FormatError::TrailingBytes { .. })));

    // The same through files.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    for cut in [50usize, 3000, HEADER_LEN + 10, good.len() - 3] {
        fs::write(&path, &good[..cut]).unwrap();
        let e = err_of(SnapshotFile::open(&path, ABI));
        if cut < HEADER_FIELDS_LEN {
            assert!(matches!(e, FormatError::TooShort { len: 50 }), "{e:?}");
        } else {
            assert!(matches!(e, FormatError::Truncated { found, .. } if found == cut as u64), "{e:?}");
        }
    }
    fs::write(&path, &b).unwrap();
    assert!(matches!(SnapshotFile::open(&path, ABI), Err(FormatError::TrailingBytes { .. })));
    let e = err_of(SnapshotFile::open(&dir.path().join("missing"), ABI));
    assert!(matches!(&e, FormatError::Io { path, .. } if path.ends_with("missing")), "{e:?}");
}

#[test]
fn refuses_meta_corruption() {
    let good = sample_image();
    let mo = HEADER_LEN + 4 * PAGE_SIZE;
    for at in [mo, mo + 7, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 1;
        assert!(matches!(parse(&b, ABI), Err(FormatError::MetaCorrupt)), "byte {at}");
    }
}

#[test]
fn data_corruption_is_found_by_verify_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.snap");
    write_sample(&path, SnapshotId::random());
    let mut b = fs::read(&path).unwrap();
    b[HEADER_LEN + 5000] ^= 0x80;
    fs::write(&path, &b).unwrap();
    parse(&b, ABI).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
    // Format version 2 also names the damaged page.
    assert!(matches!(crate::parse_verified(&b, ABI), Err(FormatError::PageCorrupt { page: 1, .. })));
    assert!(matches!(f.verify_pages(0, 4 * PAGE_SIZE as u64), Err(FormatError::PageCorrupt { page: 1, .. })));

    // A damaged blob: found by the data hash, and by read_blob alone.
    let mut b = fs::read(&path).unwrap();
    b[HEADER_LEN + 5000] ^= 0x80;
    b[HEADER_LEN + 3 * PAGE_SIZE + 10] ^= 1;
    fs::write(&path, &b).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
    assert!(matches!(f.verify_pages(0, 4 * PAGE_SIZE as u64), Err(FormatError::PageCorrupt { page: 3, .. })));
    assert!(matches!(f.read_blob(&f.meta().blobs[0]), Err(FormatError::DataCorrupt)));
}

#[test]
fn refuses_inconsistent_header_fields() {
    let good = sample_image();
    type Patch = (&'static str, Box<dyn Fn(&mut Vec<u8>)>);
    let patches: Vec<Patch> = vec![
        ("unknown kind", Box::new(|b| b[20..24].copy_from_slice(&2u32.to_le_bytes()))),
        ("full with a base", Box::new(|b| b[40] = 1)),
        ("delta without a base", Box::new(|b| b[20..24].copy_from_slice(&1u32.to_le_bytes()))),
        ("data offset", Box::new(|b| b[56..64].copy_from_slice(&8192u64.to_le_bytes()))),
        ("data length", Box::new(|b| b[64..72].copy_from_slice(&(4 * 4096u64 - 1).to_le_bytes()))),
        ("meta offset", Box::new(|b| b[80..88].copy_from_slice(&(4096 * 5 + 1u64).to_le_bytes()))),
        ("meta too long", Box::new(|b| b[88..96].copy_from_slice(&(MAX_META_LEN + 1).to_le_bytes()))),
        (
            "overflow",
            Box::new(|b| {
                let dl = u64::MAX - 4095 - 4095;
                b[64..72].copy_from_slice(&dl.to_le_bytes());
                b[80..88].copy_from_slice(&(dl + 4096).to_le_bytes());
                b[88..96].copy_from_slice(&(1u64 << 20).to_le_bytes());
            }),
        ),
    ];
    for (what, patch) in patches {
        let mut b = good.clone();
        patch(&mut b);
        rehash_header(&mut b);
        assert!(matches!(parse(&b, ABI), Err(FormatError::Malformed(_))), "{what}: {:?}", parse(&b, ABI));
    }
    // A proper delta header parses.
    let mut b = good.clone();
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[40] = 9;
    rehash_header(&mut b);
    let mut base = [0u8; 16];
    base[0] = 9;
    assert_eq!(parse(&b, ABI).unwrap().0.kind, Kind::Delta { base: SnapshotId(base) });
}

#[test]
fn refuses_malformed_metas() {
    let (data, good) = sample();
    good.validate(data.len() as u64).unwrap();
    parse(&image(&data, &good), ABI).unwrap();
    for (what, brk) in breakers() {
        let mut m = good.clone();
        brk(&mut m);
        match m.validate(data.len() as u64) {
            Err(FormatError::Malformed(msg)) => assert!(!msg.is_empty()),
            other => panic!("{what}: validate gave {other:?}"),
        }
        match parse(&image(&data, &m), ABI) {
            Err(FormatError::Malformed(_)) => {}
            other => panic!("{what}: parse gave {other:?}"),
        }
    }
    // Bytes that do not decode, and bytes after the meta.
    assert!(matches!(parse(&image_with(Kind::Full, &data, &[0xff; 40]), ABI), Err(FormatError::Malformed(_))));
    assert!(matches!(parse(&image_with(Kind::Full, &data, &[]), ABI), Err(FormatError::Malformed(_))));
    let mut mb = super::meta_bytes(&data, &good);
    mb.push(0);
    let e = err_of(parse(&image_with(Kind::Full, &data, &mb), ABI));
    assert!(matches!(&e, FormatError::Malformed(m) if m.contains("follow")), "{e:?}");
}

#[test]
fn allocation_bombs_fail_fast() {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let huge = 1u64 << 60;
    // created_unix_ms, then a blob table claiming 2^60 entries.
    let mut blobs = vec![1];
    varint(huge, &mut blobs);
    blobs.extend_from_slice(&[1, 2, 3]);
    // No blobs, then 2^60 reactors.
    let mut reactors = vec![1, 0];
    varint(huge, &mut reactors);
    reactors.extend_from_slice(&[1; 40]);
    // One reactor whose globals, inbox, blobs, runs or payload claim 2^60.
    let reactor_head = |out: &mut Vec<u8>| {
        out.extend_from_slice(&[1, 0, 1, 7]);
        out.extend_from_slice(&[0; 32]);
        varint(WASM_PAGE_SIZE, out);
    };
    let mut globals = vec![];
    reactor_head(&mut globals);
    varint(huge, &mut globals);
    let mut inbox = vec![];
    reactor_head(&mut inbox);
    inbox.push(0);
    varint(huge, &mut inbox);
    let mut held = vec![];
    reactor_head(&mut held);
    held.extend_from_slice(&[0, 0]);
    varint(huge, &mut held);
    let mut runs = vec![];
    reactor_head(&mut runs);
    runs.extend_from_slice(&[0, 0, 0, 0, 0]);
    varint(huge, &mut runs);
    let mut payload = vec![];
    reactor_head(&mut payload);
    payload.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
    varint(huge, &mut payload);
    payload.extend_from_slice(&[1; 64]);
    // One reactor whose outstanding requests claim 2^60.
    let mut outstanding = vec![];
    reactor_head(&mut outstanding);
    outstanding.extend_from_slice(&[0, 0, 0, 0]);
    varint(huge, &mut outstanding);
    // A run count just over the limit, with nothing behind it.
    let mut runs_over = vec![];
    reactor_head(&mut runs_over);
    runs_over.extend_from_slice(&[0, 0, 0, 0, 0]);
    varint(MAX_RUNS_PER_REACTOR as u64 + 1, &mut runs_over);

    for (what, meta) in [
        ("blobs", blobs),
        ("reactors", reactors),
        ("globals", globals),
        ("inbox", inbox),
        ("held blobs", held),
        ("runs", runs),
        ("payload", payload),
        ("runs over the limit", runs_over),
        ("outstanding", outstanding),
    ] {
        let img = image_with(Kind::Full, &[], &meta);
        let t = Instant::now();
        let r = parse(&img, ABI);
        assert!(matches!(r, Err(FormatError::Malformed(_))), "{what}: {r:?}");
        assert!(t.elapsed() < Duration::from_secs(1), "{what} took {:?}", t.elapsed());
    }
}
