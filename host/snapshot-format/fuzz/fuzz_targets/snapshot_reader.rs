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
//! is damaged after its checksum was taken. A fourth way frames it as a
//! version 3 (compressed) image: one page per frame, each stored as it is,
//! except that with bit 5 of `data[0]` the first frame's stored bytes are
//! the input's first bytes (up to 64), given to the LZ4 decoder as a
//! compressed frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshot_format::{
    CODEC_LZ4, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_COMPRESSED, FormatError, HEADER_LEN, Header, Kind,
    MAX_HELD_BLOBS, MAX_OUTSTANDING, PAGE_SIZE, SnapshotId, Stored, page_hash, parse, parse_verified,
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
    if version != FORMAT_VERSION_1 {
        let hashes: Vec<u8> =
            section.chunks(PAGE_SIZE).enumerate().flat_map(|(i, p)| page_hash(i as u64, p).to_le_bytes()).collect();
        varint(hashes.len() as u64, &mut meta_bytes);
        meta_bytes.extend_from_slice(&hashes);
    }
    if first & 0x10 != 0 && !section.is_empty() {
        let at = usize::from(first) * 37 % section.len();
        section[at] ^= 1;
    }
    // Version 3: the frames as stored, and their table.
    let mut stored = section.clone();
    let mut frame_len = None;
    if version == FORMAT_VERSION_COMPRESSED {
        let mut table = Vec::new();
        stored.clear();
        for (i, page) in section.chunks(PAGE_SIZE).enumerate() {
            if i == 0 && first & 0x20 != 0 && !meta.is_empty() {
                let hostile = &meta[..meta.len().min(64)];
                stored.extend_from_slice(hostile);
                table.extend_from_slice(&(hostile.len() as u32).to_le_bytes());
            } else {
                stored.extend_from_slice(page);
                table.extend_from_slice(&(PAGE_SIZE as u32 | 1 << 31).to_le_bytes());
            }
        }
        varint(table.len() as u64, &mut meta_bytes);
        meta_bytes.extend_from_slice(&table);
        frame_len = Some(PAGE_SIZE as u32);
    }
    let header = Header {
        format_version: version,
        abi_version: ABI,
        page_size: PAGE_SIZE as u32,
        kind,
        id: SnapshotId([7; 16]),
        data_offset: HEADER_LEN as u64,
        data_len: section.len() as u64,
        data_hash: xxh3_64(&stored),
        meta_offset: (HEADER_LEN + stored.len()) as u64,
        meta_len: meta_bytes.len() as u64,
        meta_hash: xxh3_64(&meta_bytes),
        stored: frame_len.map(|frame_len| Stored { codec: CODEC_LZ4, frame_len, stored_len: stored.len() as u64 }),
    };
    let mut image = header.to_bytes();
    image.extend_from_slice(&stored);
    image.extend_from_slice(&meta_bytes);
    Some(image)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    for version in [FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_COMPRESSED] {
        if let Some(image) = framed(data, version) {
            check(&image);
        }
    }
});
