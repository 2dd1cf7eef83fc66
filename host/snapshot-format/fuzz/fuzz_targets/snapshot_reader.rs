//! Fuzzes the snapshot reader: `parse` and `parse_verified` must never
//! panic, agree, and whatever they accept must pass the format's validation
//! again (bounds included); a damaged page is named by its place.
//!
//! Each input is tried three ways: as a whole file image; as the meta
//! section of a version 2 image whose header, page checksums and hashes are
//! made right around it (the input is the encoded `Meta`, the checksums of
//! the data pages are appended); and as the meta section of a version 1
//! image. Without the framed forms the fuzzer would never get past the
//! header checksum, and the meta decoders and validation (the bulk of the
//! reader) would go unexercised. `data[0]` also picks whether one data page
//! is damaged after its checksum was taken.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshot_format::{
    FORMAT_VERSION, FORMAT_VERSION_1, FormatError, HEADER_LEN, Header, Kind, MAX_HELD_BLOBS, MAX_OUTSTANDING,
    PAGE_SIZE, SnapshotId, page_hash, parse, parse_verified,
};
use xxhash_rust::xxh3::xxh3_64;

// Any ABI version: the reader checks it equals the one it is given.
const ABI: u32 = 1;

fn check(image: &[u8]) {
    let parsed = parse(image, ABI);
    let verified = parse_verified(image, ABI);
    // Verifying only adds the data checks.
    assert!(verified.is_err() || parsed.is_ok());
    if let (Ok(a), Ok(b)) = (&parsed, &verified) {
        assert_eq!(a, b);
    }
    match verified {
        Ok((header, meta)) => {
            assert_eq!(header.file_len(), image.len() as u64);
            assert!(meta.validate(header.data_len).is_ok());
            for r in &meta.reactors {
                assert!(r.blobs.len() <= MAX_HELD_BLOBS && r.outstanding.len() <= MAX_OUTSTANDING);
                if header.format_version == FORMAT_VERSION_1 {
                    assert!(r.outstanding.is_empty());
                }
            }
        }
        Err(FormatError::PageCorrupt { page, file_offset }) => {
            assert_eq!(file_offset, HEADER_LEN as u64 + page * PAGE_SIZE as u64);
        }
        Err(_) => {}
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `data[0]` picks the kind (bit 0), 0..=7 data pages (bits 1-3), a damaged
/// page (bit 4); the rest is the meta.
fn framed(data: &[u8], version: u32) -> Option<Vec<u8>> {
    let (&first, meta) = data.split_first()?;
    let pages = usize::from(first >> 1 & 7);
    let kind = if first & 1 == 0 { Kind::Full } else { Kind::Delta { base: SnapshotId([first | 1; 16]) } };
    let mut section: Vec<u8> = (0..pages * PAGE_SIZE).map(|i| i as u8).collect();
    let mut meta_bytes = meta.to_vec();
    if version == FORMAT_VERSION {
        let hashes: Vec<u8> =
            section.chunks(PAGE_SIZE).enumerate().flat_map(|(i, p)| page_hash(i as u64, p).to_le_bytes()).collect();
        varint(hashes.len() as u64, &mut meta_bytes);
        meta_bytes.extend_from_slice(&hashes);
    }
    if first & 0x10 != 0 && !section.is_empty() {
        let at = usize::from(first) * 37 % section.len();
        section[at] ^= 1;
    }
    let header = Header {
        format_version: version,
        abi_version: ABI,
        page_size: PAGE_SIZE as u32,
        kind,
        id: SnapshotId([7; 16]),
        data_offset: HEADER_LEN as u64,
        data_len: section.len() as u64,
        data_hash: xxh3_64(&section),
        meta_offset: (HEADER_LEN + section.len()) as u64,
        meta_len: meta_bytes.len() as u64,
        meta_hash: xxh3_64(&meta_bytes),
    };
    let mut image = header.to_bytes();
    image.extend_from_slice(&section);
    image.extend_from_slice(&meta_bytes);
    Some(image)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    for version in [FORMAT_VERSION, FORMAT_VERSION_1] {
        if let Some(image) = framed(data, version) {
            check(&image);
        }
    }
});
