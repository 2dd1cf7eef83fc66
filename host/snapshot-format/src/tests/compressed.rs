//! Format version 3: the data section stored in compressed frames.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::{ABI, reactor};
use crate::constants::FRAME_RAW;
use crate::{
    BlobEntry, FORMAT_VERSION_COMPRESSED, FormatError, HEADER_LEN, Kind, MAX_FRAME_LEN, Meta, PAGE_SIZE, Run,
    SnapshotFile, SnapshotId, Writer, blob_hash, parse, parse_verified,
};

/// Pages that compress well (text-like) and pages that do not (noise).
fn data(pages: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(pages * PAGE_SIZE);
    for p in 0..pages {
        for i in 0..PAGE_SIZE {
            if p % 3 == 2 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            } else {
                const TEXT: &[u8] = b"{\"key\": \"value\", \"n\": 12345}, ";
                out.push(TEXT[(i + p) % TEXT.len()]);
            }
        }
    }
    out
}

/// Writes `data` (its last 100 bytes of the last page as a blob, the rest
/// as one reactor's run) and returns the meta written.
fn write(path: &Path, data: &[u8], frame_len: Option<u32>) -> Meta {
    let pages = data.len() / PAGE_SIZE;
    let id = SnapshotId([9; 16]);
    let mut w = match frame_len {
        Some(f) => Writer::create_compressed(path, ABI, Kind::Full, id, f).unwrap(),
        None => Writer::create(path, ABI, Kind::Full, id).unwrap(),
    };
    // In three appends, so frames fill across appends.
    let cut = (pages / 3).max(1) * PAGE_SIZE;
    let run_end = (pages - 1) * PAGE_SIZE;
    assert_eq!(w.append_pages(&data[..cut.min(run_end)]).unwrap(), 0);
    if cut < run_end {
        w.append_pages(&data[cut..run_end]).unwrap();
    }
    let blob = &data[run_end..run_end + 100];
    assert_eq!(w.append_blob(blob).unwrap(), run_end as u64);
    let mut r = reactor(0xa);
    r.memory_size = (pages as u64 * PAGE_SIZE as u64).next_multiple_of(65536);
    r.blobs = vec![0xb];
    r.runs = vec![Run { first_page: 0, pages: pages as u64 - 1, data: Some(0) }];
    let meta = Meta {
        created_unix_ms: 7,
        blobs: vec![BlobEntry { tag: 0xb, len: 100, offset: run_end as u64, hash: blob_hash(blob) }],
        reactors: vec![r],
    };
    w.finish(&meta).unwrap();
    meta
}

/// The data section a file holds, uncompressed, as `write` laid it out.
fn logical(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    let last = d.len() - PAGE_SIZE;
    d[last + 100..].fill(0);
    d
}

#[test]
fn reads_back_what_was_written_at_every_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(40, 3);
    let want = logical(&data);
    for frame_pages in [1u32, 3, 16, 64] {
        let path = dir.path().join(format!("f{frame_pages}.snap"));
        let meta = write(&path, &data, Some(frame_pages * PAGE_SIZE as u32));
        let f = SnapshotFile::open(&path, ABI).unwrap();
        assert_eq!(f.meta(), &meta);
        assert!(!f.mappable());
        let h = f.header();
        assert_eq!(h.format_version, FORMAT_VERSION_COMPRESSED);
        assert_eq!(h.data_len, want.len() as u64);
        let st = h.stored.unwrap();
        assert_eq!(st.frame_len, frame_pages * PAGE_SIZE as u32);
        assert!(st.stored_len < h.data_len, "two thirds of the pages compress: {st:?}");
        assert_eq!(fs::metadata(&path).unwrap().len(), h.file_len());
        // Any range: whole frames, parts of frames, across frames.
        for (at, len) in [(0, want.len()), (0, 1), (4095, 2), (PAGE_SIZE * 5 + 7, PAGE_SIZE * 9), (want.len() - 1, 1)] {
            let mut buf = vec![0u8; len];
            f.read_data(at as u64, &mut buf).unwrap();
            assert_eq!(buf, want[at..at + len], "frame of {frame_pages} pages, {len} bytes at {at}");
        }
        f.verify_pages(0, want.len() as u64).unwrap();
        f.verify_data(&mut |_, _| {}).unwrap();
        assert_eq!(f.read_blob(&meta.blobs[0]).unwrap(), data[want.len() - PAGE_SIZE..][..100]);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(parse_verified(&bytes, ABI).unwrap().1, meta);
        // Past the end is refused, as uncompressed.
        let mut one = [0u8; 1];
        assert!(matches!(f.read_data(want.len() as u64, &mut one), Err(FormatError::Malformed(_))));
    }
}

#[test]
fn same_meta_and_pages_as_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(20, 5);
    let (a, b) = (dir.path().join("a.snap"), dir.path().join("b.snap"));
    let ma = write(&a, &data, None);
    let mb = write(&b, &data, Some(crate::DEFAULT_FRAME_LEN));
    assert_eq!(ma, mb);
    let (fa, fb) = (SnapshotFile::open(&a, ABI).unwrap(), SnapshotFile::open(&b, ABI).unwrap());
    assert_eq!(fa.header().data_len, fb.header().data_len);
    assert_eq!(fa.page_hashes(0, 20), fb.page_hashes(0, 20));
    assert!(fa.mappable());
}

#[test]
fn incompressible_frames_are_stored_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = data(9, 11);
    // Every page noise.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let path = dir.path().join("n.snap");
    write(&path, &data, Some(PAGE_SIZE as u32));
    let f = SnapshotFile::open(&path, ABI).unwrap();
    // The noise frames are stored as they are (never longer); only the
    // last, the blob's mostly zero page, shrinks.
    let (stored, len) = (f.header().stored.unwrap().stored_len, f.header().data_len);
    assert!(stored > len - PAGE_SIZE as u64 && stored < len, "{stored} of {len}");
    let mut buf = vec![0u8; data.len()];
    f.read_data(0, &mut buf).unwrap();
    assert_eq!(buf, logical(&data));
}

#[test]
fn refuses_a_bad_frame_length_when_writing() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [0, 100, PAGE_SIZE as u32 + 1, MAX_FRAME_LEN + PAGE_SIZE as u32] {
        let r = Writer::create_compressed(&dir.path().join("x.snap"), ABI, Kind::Full, SnapshotId([1; 16]), bad);
        assert!(matches!(r, Err(FormatError::Malformed(_))), "{bad}");
    }
}

/// Every byte of a small compressed file damaged in turn: each is refused,
/// at open, by the page checksums, or by the data hash — never accepted
/// with other data, never a panic.
#[test]
fn damage_at_any_byte_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(6, 7);
    let want = logical(&data);
    let path = dir.path().join("d.snap");
    write(&path, &data, Some(2 * PAGE_SIZE as u32));
    let good = fs::read(&path).unwrap();
    let damaged_path = dir.path().join("damaged.snap");
    for at in 0..good.len() {
        let mut b = good.clone();
        b[at] ^= 0x41;
        // In memory.
        assert!(parse_verified(&b, ABI).is_err(), "byte {at} damaged, yet parse_verified accepted it");
        // From a file: open, then the data checks a restore makes.
        fs::write(&damaged_path, &b).unwrap();
        let Ok(f) = SnapshotFile::open(&damaged_path, ABI) else { continue };
        assert!(at >= HEADER_LEN, "header byte {at} damaged, yet the file opened");
        assert!(f.verify_data(&mut |_, _| {}).is_err(), "byte {at}: data hash passed");
        let mut buf = vec![0u8; want.len()];
        match f.read_data(0, &mut buf) {
            Ok(()) => {
                assert!(f.check_pages(0, &buf).is_err(), "byte {at}: the pages read passed their checksums");
            }
            Err(FormatError::FrameCorrupt { .. }) => {}
            Err(e) => panic!("byte {at}: unexpected {e:?}"),
        }
    }
}

/// A frame table entry marked raw with a length that is not its frame's,
/// a compressed frame of 0 bytes, and lengths that do not add up: each
/// refused at open, naming the frame.
#[test]
fn refuses_a_frame_table_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let data = data(6, 7);
    let path = dir.path().join("t.snap");
    write(&path, &data, Some(2 * PAGE_SIZE as u32));
    let good = fs::read(&path).unwrap();
    let f = SnapshotFile::open(&path, ABI).unwrap();
    let meta_offset = f.header().meta_offset as usize;
    // The table is the meta section's last 3 × 4 bytes (3 frames).
    let table_at = good.len() - 12;
    let entry = |b: &[u8], i: usize| u32::from_le_bytes(b[table_at + 4 * i..][..4].try_into().unwrap());
    for (name, patch) in [
        ("raw of the wrong length", (|e: u32| (e & !FRAME_RAW) | FRAME_RAW) as fn(u32) -> u32),
        ("compressed of 0 bytes", |_| 0),
        ("one byte longer", |e| e + 1),
    ] {
        let mut b = good.clone();
        let e = patch(entry(&b, 0));
        b[table_at..table_at + 4].copy_from_slice(&e.to_le_bytes());
        super::rehash_meta(&mut b);
        match parse(&b, ABI) {
            Err(FormatError::Malformed(m)) => assert!(m.contains("frame"), "{name}: {m}"),
            other => panic!("{name}: {other:?}"),
        }
        let _ = meta_offset;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever bytes stand in the stored frames (table and hashes made to
    /// match), reading never panics and never returns pages that pass
    /// their checksums unless they are the right ones.
    #[test]
    fn hostile_frames_never_pass(noise in proptest::collection::vec(any::<u8>(), 1..3000), at in 0usize..20000) {
        let dir = tempfile::tempdir().unwrap();
        let data = data(6, 9);
        let want = logical(&data);
        let path = dir.path().join("h.snap");
        write(&path, &data, Some(2 * PAGE_SIZE as u32));
        let mut b = fs::read(&path).unwrap();
        let f = SnapshotFile::open(&path, ABI).unwrap();
        let stored = f.header().stored.unwrap().stored_len as usize;
        let at = HEADER_LEN + at % stored;
        let end = (at + noise.len()).min(HEADER_LEN + stored);
        b[at..end].copy_from_slice(&noise[..end - at]);
        fs::write(&path, &b).unwrap();
        let f = SnapshotFile::open(&path, ABI).unwrap();
        let mut buf = vec![0u8; want.len()];
        if f.read_data(0, &mut buf).is_ok() && f.check_pages(0, &buf).is_ok() {
            prop_assert_eq!(buf, want);
        }
    }
}
