//! Fuzzes the snapshot reader: `parse` must never panic, and whatever it
//! accepts must pass the format's validation again.
//!
//! Each input is tried twice: as a whole file image, and as the meta section
//! of an image whose header and hashes are made right around it. Without the
//! second form the fuzzer would never get past the header checksum, and the
//! meta decoder and validation (the bulk of the reader) would go unexercised.
#![no_main]

use snapshot_format::{FORMAT_VERSION, HEADER_LEN, Header, Kind, PAGE_SIZE, SnapshotId, parse};
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

// Any ABI version: the reader checks it equals the one it is given.
const ABI: u32 = 1;

fn check(image: &[u8]) {
    if let Ok((header, meta)) = parse(image, ABI) {
        assert_eq!(header.file_len(), image.len() as u64);
        assert!(meta.validate(header.data_len).is_ok());
    }
}

/// `data[0]` picks the kind and 0..=7 data pages; the rest is the meta.
fn framed(data: &[u8]) -> Option<Vec<u8>> {
    let (&first, meta) = data.split_first()?;
    let pages = usize::from(first >> 1 & 7);
    let kind = if first & 1 == 0 { Kind::Full } else { Kind::Delta { base: SnapshotId([first | 1; 16]) } };
    let section: Vec<u8> = (0..pages * PAGE_SIZE).map(|i| i as u8).collect();
    let header = Header {
        format_version: FORMAT_VERSION,
        abi_version: ABI,
        page_size: PAGE_SIZE as u32,
        kind,
        id: SnapshotId([7; 16]),
        data_offset: HEADER_LEN as u64,
        data_len: section.len() as u64,
        data_hash: xxh3_64(&section),
        meta_offset: (HEADER_LEN + section.len()) as u64,
        meta_len: meta.len() as u64,
        meta_hash: xxh3_64(meta),
    };
    let mut image = header.to_bytes();
    image.extend_from_slice(&section);
    image.extend_from_slice(meta);
    Some(image)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(image) = framed(data) {
        check(&image);
    }
});
