//! Tests of the reader and the writer, and the fixtures they share.
#![forbid(unsafe_code)]

mod compressed;
mod id;
mod props;
mod hostile;
mod read;
mod round_trip;
mod write;

use std::fmt;
use std::fs;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::constants::HEADER_HASHED_LEN;
use crate::read::u64_at;
use crate::{
    BlobEntry, EnvelopeRecord, FORMAT_VERSION, FormatError, GLOBAL_F64, GLOBAL_I32, GLOBAL_I64, GLOBAL_V128,
    GlobalValue, HEADER_LEN, Header, Kind, MAX_GLOBALS_PER_REACTOR, MAX_MEMORY, MAX_PAYLOAD_LEN, MAX_RUNS_PER_REACTOR,
    Meta, PAGE_SIZE, ReactorEntry, Run, SnapshotId, WASM_PAGE_SIZE, Writer, blob_hash, encode_meta, page_hash,
};

const ABI: u32 = 7;

fn page(fill: u8, n: usize) -> Vec<u8> {
    (0..n * PAGE_SIZE).map(|i| fill ^ (i / PAGE_SIZE) as u8 ^ (i % 251) as u8).collect()
}

fn reactor(address: u64) -> ReactorEntry {
    ReactorEntry {
        address,
        module: [address as u8; 32],
        memory_size: 2 * WASM_PAGE_SIZE,
        globals: vec![],
        inbox: vec![],
        blobs: vec![],
        next_corr: 0,
        outstanding: vec![],
        runs: vec![],
    }
}

/// A data section of 4 pages (pages 0..3 of page data, a blob of 100
/// bytes at page 3) and a meta of two reactors using all of it.
fn sample() -> (Vec<u8>, Meta) {
    let blob: Vec<u8> = (0..100u8).collect();
    let mut data = page(0x11, 3);
    data.extend_from_slice(&blob);
    data.resize(4 * PAGE_SIZE, 0);
    let mut a = reactor(0xa);
    a.globals = vec![
        GlobalValue { index: 0, ty: GLOBAL_I32, bits: 0xffff_fff0 },
        GlobalValue { index: 1, ty: GLOBAL_I64, bits: u128::from(u64::MAX) },
        GlobalValue { index: 3, ty: GLOBAL_F64, bits: u128::from(1.5f64.to_bits()) },
        GlobalValue { index: 4, ty: GLOBAL_V128, bits: u128::MAX },
    ];
    a.inbox = vec![
        EnvelopeRecord { kind: 1, flags: 2, from: 0xb, corr: 9, payload: b"hello".to_vec() },
        EnvelopeRecord { kind: 0, flags: 0, from: 0, corr: 0, payload: vec![] },
    ];
    a.blobs = vec![0xb10b];
    a.next_corr = 42;
    a.runs = vec![
        Run { first_page: 0, pages: 2, data: Some(0) },
        Run { first_page: 2, pages: 3, data: None },
        Run { first_page: 30, pages: 1, data: Some(2 * PAGE_SIZE as u64) },
    ];
    let mut b = reactor(0xb);
    b.memory_size = WASM_PAGE_SIZE;
    b.blobs = vec![0xb10b];
    b.runs = vec![Run { first_page: 5, pages: 1, data: Some(PAGE_SIZE as u64) }];
    let meta = Meta {
        created_unix_ms: 1_700_000_000_000,
        blobs: vec![BlobEntry { tag: 0xb10b, len: 100, offset: 3 * PAGE_SIZE as u64, hash: blob_hash(&blob) }],
        reactors: vec![a, b],
    };
    (data, meta)
}

/// A file image with correct lengths and hashes around any data and meta
/// bytes (no validation).
fn image_with(kind: Kind, data: &[u8], meta_bytes: &[u8]) -> Vec<u8> {
    let h = Header {
        format_version: FORMAT_VERSION,
        abi_version: ABI,
        page_size: PAGE_SIZE as u32,
        kind,
        id: SnapshotId([5; 16]),
        data_offset: HEADER_LEN as u64,
        data_len: data.len() as u64,
        data_hash: xxh3_64(data),
        meta_offset: (HEADER_LEN + data.len()) as u64,
        meta_len: meta_bytes.len() as u64,
        meta_hash: xxh3_64(meta_bytes),
        stored: None,
    };
    let mut b = h.to_bytes();
    b.extend_from_slice(data);
    b.extend_from_slice(meta_bytes);
    b
}

/// The checksum of every page of a data section.
fn page_hashes(data: &[u8]) -> Vec<u64> {
    data.chunks(PAGE_SIZE).enumerate().map(|(i, p)| page_hash(i as u64, p)).collect()
}

/// The meta section (current version) of `meta` over `data`.
fn meta_bytes(data: &[u8], meta: &Meta) -> Vec<u8> {
    encode_meta(meta, FORMAT_VERSION, &page_hashes(data)).unwrap()
}

fn image(data: &[u8], meta: &Meta) -> Vec<u8> {
    image_with(Kind::Full, data, &meta_bytes(data, meta))
}

fn sample_image() -> Vec<u8> {
    let (data, meta) = sample();
    image(&data, &meta)
}

/// Recomputes the header hash after a patch.
fn rehash_header(b: &mut [u8]) {
    let h = xxh3_64(&b[..HEADER_HASHED_LEN]);
    b[104..112].copy_from_slice(&h.to_le_bytes());
}

/// Sets meta_len / meta_hash from the bytes after meta_offset, then the
/// header hash.
fn rehash_meta(b: &mut [u8]) {
    let mo = u64_at(b, 80);
    let Some(meta) = usize::try_from(mo).ok().and_then(|mo| b.get(mo..)) else {
        return; // the damage reached meta_offset itself
    };
    let (h, len) = (xxh3_64(meta), meta.len() as u64);
    b[88..96].copy_from_slice(&len.to_le_bytes());
    b[96..104].copy_from_slice(&h.to_le_bytes());
    rehash_header(b);
}

fn write_sample(path: &Path, id: SnapshotId) -> u64 {
    let (data, meta) = sample();
    let mut w = Writer::create(path, ABI, Kind::Full, id).unwrap();
    assert_eq!(w.append_pages(&data[..PAGE_SIZE]).unwrap(), 0);
    assert_eq!(w.append_pages(&data[PAGE_SIZE..3 * PAGE_SIZE]).unwrap(), PAGE_SIZE as u64);
    assert_eq!(w.append_blob(&data[3 * PAGE_SIZE..3 * PAGE_SIZE + 100]).unwrap(), 3 * PAGE_SIZE as u64);
    assert_eq!(w.data_len(), 4 * PAGE_SIZE as u64);
    w.finish(&meta).unwrap()
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn err_of<T: fmt::Debug>(r: Result<T, FormatError>) -> FormatError {
    r.expect_err("expected an error")
}

type Breaker = fn(&mut Meta);

/// One way to break each rule.
fn breakers() -> Vec<(&'static str, Breaker)> {
    vec![
        ("runs out of order", |m| m.reactors[0].runs.swap(0, 1)),
        ("runs overlap", |m| m.reactors[0].runs[1].first_page = 1),
        ("run past memory", |m| m.reactors[0].runs[2].first_page = 32),
        ("run of far pages", |m| m.reactors[0].runs[2].first_page = u64::MAX),
        ("run of many pages", |m| m.reactors[0].runs[2].pages = u64::MAX),
        ("empty run", |m| m.reactors[0].runs[1].pages = 0),
        ("run data unaligned", |m| m.reactors[1].runs[0].data = Some(100)),
        ("run data outside", |m| m.reactors[1].runs[0].data = Some(4 * PAGE_SIZE as u64)),
        ("run data straddles the end", |m| m.reactors[0].runs[0].data = Some(3 * PAGE_SIZE as u64)),
        ("run data far away", |m| m.reactors[0].runs[0].data = Some(u64::MAX - 4095)),
        ("memory not wasm pages", |m| m.reactors[1].memory_size = WASM_PAGE_SIZE + PAGE_SIZE as u64),
        ("memory over 4 GiB", |m| m.reactors[1].memory_size = MAX_MEMORY + WASM_PAGE_SIZE),
        ("unknown blob held", |m| m.reactors[1].blobs.push(0xdead)),
        ("blob held twice", |m| m.reactors[1].blobs.push(0xb10b)),
        ("blob outside data", |m| m.blobs[0].offset = 4 * PAGE_SIZE as u64),
        ("blob padding outside data", |m| m.blobs[0].len = PAGE_SIZE as u64 + 1),
        ("blob unaligned", |m| m.blobs[0].offset = 3 * PAGE_SIZE as u64 + 8),
        ("blob huge", |m| m.blobs[0].len = u64::MAX),
        ("duplicate blob tag", |m| {
            let b = m.blobs[0].clone();
            m.blobs.push(b)
        }),
        ("duplicate reactor", |m| m.reactors[1].address = m.reactors[0].address),
        ("outstanding request twice", |m| m.reactors[0].outstanding = vec![(5, 1), (5, 2)]),
        ("global type 5", |m| m.reactors[0].globals[0].ty = 5),
        ("global type 255", |m| m.reactors[0].globals[0].ty = 255),
        ("i32 global too wide", |m| m.reactors[0].globals[0].bits = 1 << 32),
        ("f64 global too wide", |m| m.reactors[0].globals[2].bits = 1 << 64),
        ("duplicate global", |m| m.reactors[0].globals[1].index = 0),
        ("payload over 16 MiB", |m| m.reactors[0].inbox[0].payload = vec![0; MAX_PAYLOAD_LEN + 1]),
        ("too many runs", |m| {
            m.reactors[0].memory_size = MAX_MEMORY;
            m.reactors[0].runs =
                (0..=MAX_RUNS_PER_REACTOR as u64).map(|i| Run { first_page: i, pages: 1, data: None }).collect();
        }),
        ("too many globals", |m| {
            m.reactors[0].globals =
                (0..=MAX_GLOBALS_PER_REACTOR as u32).map(|index| GlobalValue { index, ty: 0, bits: 0 }).collect();
        }),
    ]
}
