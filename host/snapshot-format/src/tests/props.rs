//! Properties: the reader survives any damage, and whatever is written reads
//! back exactly.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::{ABI, dir_names, page, rehash_header, rehash_meta, sample_image};
use crate::constants::HEADER_FIELDS_LEN;
use crate::{
    BlobEntry, EnvelopeRecord, FORMAT_VERSION, GLOBAL_F32, GLOBAL_F64, GLOBAL_I32, GLOBAL_I64, GlobalValue, HEADER_LEN,
    Header, Kind, MAGIC, MAX_MEMORY, MAX_PAYLOAD_LEN, MAX_RUNS_PER_REACTOR, Meta, PAGE_SIZE, ReactorEntry, Run,
    SnapshotFile, SnapshotId, WASM_PAGE_SIZE, Writer, blob_hash, parse,
};

/// An independent statement of what a parsed meta guarantees its users:
/// every reference lands inside the data section or the blob table, and
/// runs can be applied in order without overlap.
fn check_invariants(h: &Header, m: &Meta) {
    let p = PAGE_SIZE as u128;
    assert_eq!(h.data_offset, HEADER_LEN as u64);
    assert_eq!(h.data_len % PAGE_SIZE as u64, 0);
    assert_eq!(h.meta_offset, h.data_offset + h.data_len);
    let dl = u128::from(h.data_len);
    let tags: Vec<u64> = m.blobs.iter().map(|b| b.tag).collect();
    for (i, b) in m.blobs.iter().enumerate() {
        assert!(!tags[..i].contains(&b.tag));
        assert_eq!(u128::from(b.offset) % p, 0);
        assert!(u128::from(b.offset) + u128::from(b.len).div_ceil(p) * p <= dl);
    }
    for (i, r) in m.reactors.iter().enumerate() {
        assert!(m.reactors[..i].iter().all(|o| o.address != r.address));
        assert!(r.memory_size <= MAX_MEMORY && r.memory_size % WASM_PAGE_SIZE == 0);
        assert!(r.runs.len() <= MAX_RUNS_PER_REACTOR);
        assert!(r.globals.iter().all(|g| g.ty <= 4));
        assert!(r.inbox.iter().all(|e| e.payload.len() <= MAX_PAYLOAD_LEN));
        assert!(r.blobs.iter().all(|t| tags.contains(t)));
        let mut end = 0u128;
        for run in &r.runs {
            assert!(run.pages > 0 && u128::from(run.first_page) >= end);
            end = u128::from(run.first_page) + u128::from(run.pages);
            assert!(end * p <= u128::from(r.memory_size));
            if let Some(o) = run.data {
                assert_eq!(u128::from(o) % p, 0);
                assert!(u128::from(o) + u128::from(run.pages) * p <= dl);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, n: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => at.prop_map(|at| Mutation::Truncate { at }),
        1 => (at, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at, 1..16usize).prop_map(|(at, n)| Mutation::Remove { at, n }),
    ]
}

/// Applies a mutation; positions land in the meta (which is what decoding
/// exercises) half of the time.
fn apply(b: &mut Vec<u8>, m: &Mutation, meta_offset: usize) {
    let pos = |at: usize, len: usize| {
        if len == 0 {
            0
        } else if at.is_multiple_of(2) && len > meta_offset {
            meta_offset + (at / 2) % (len - meta_offset)
        } else {
            (at / 2) % len
        }
    };
    match m {
        Mutation::Flip { at, mask } if !b.is_empty() => {
            let i = pos(*at, b.len());
            b[i] ^= mask
        }
        Mutation::Set { at, byte } if !b.is_empty() => {
            let i = pos(*at, b.len());
            b[i] = *byte
        }
        Mutation::Truncate { at } => {
            let i = pos(*at, b.len() + 1);
            b.truncate(i)
        }
        Mutation::Insert { at, bytes } => {
            let i = pos(*at, b.len() + 1);
            b.splice(i..i, bytes.iter().copied());
        }
        Mutation::Remove { at, n } if !b.is_empty() => {
            let i = pos(*at, b.len());
            let e = (i + n).min(b.len());
            b.drain(i..e);
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
struct ReactorPlan {
    module: [u8; 32],
    wasm_pages: u64,
    runs: Vec<(u64, u64, bool, u8)>,
    globals: Vec<(u8, u128)>,
    inbox: Vec<EnvelopeRecord>,
    held: u8,
    next_corr: u64,
}

fn reactor_plan() -> impl Strategy<Value = ReactorPlan> {
    let envelope = (any::<u8>(), any::<u8>(), any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(kind, flags, from, corr, payload)| EnvelopeRecord { kind, flags, from, corr, payload });
    (
        any::<[u8; 32]>(),
        0..4u64,
        prop::collection::vec((0..6u64, 1..6u64, any::<bool>(), any::<u8>()), 0..8),
        prop::collection::vec((0..5u8, any::<u128>()), 0..5),
        prop::collection::vec(envelope, 0..4),
        any::<u8>(),
        any::<u64>(),
    )
        .prop_map(|(module, wasm_pages, runs, globals, inbox, held, next_corr)| ReactorPlan {
            module,
            wasm_pages,
            runs,
            globals,
            inbox,
            held,
            next_corr,
        })
}

#[derive(Debug, Clone)]
struct Plan {
    delta: Option<[u8; 16]>,
    abi: u32,
    created: u64,
    tag_base: u64,
    blobs: Vec<Vec<u8>>,
    address_base: u64,
    reactors: Vec<ReactorPlan>,
    blobs_first: bool,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::option::of(any::<[u8; 16]>().prop_filter("nonzero", |b| *b != [0; 16])),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..9000), 0..4),
        any::<u64>(),
        prop::collection::vec(reactor_plan(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(delta, abi, created, tag_base, blobs, address_base, reactors, blobs_first)| Plan {
            delta,
            abi,
            created,
            tag_base,
            blobs,
            address_base,
            reactors,
            blobs_first,
        })
}

const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15; // odd: i * SPREAD is injective

/// Writes a plan's checkpoint; returns the meta and the content of each
/// data run (reactor, run index, bytes).
fn write_plan(path: &Path, p: &Plan) -> (Meta, Vec<(usize, usize, Vec<u8>)>) {
    let kind = p.delta.map_or(Kind::Full, |b| Kind::Delta { base: SnapshotId(b) });
    let mut w = Writer::create(path, p.abi, kind, SnapshotId::random()).unwrap();
    let mut blobs = vec![];
    let write_blobs = |w: &mut Writer, blobs: &mut Vec<BlobEntry>| {
        for (i, c) in p.blobs.iter().enumerate() {
            let offset = w.append_blob(c).unwrap();
            blobs.push(BlobEntry {
                tag: p.tag_base.wrapping_add(i as u64 * SPREAD),
                len: c.len() as u64,
                offset,
                hash: blob_hash(c),
            });
        }
    };
    if p.blobs_first {
        write_blobs(&mut w, &mut blobs);
    }
    let mut contents = vec![];
    let mut reactors = vec![];
    for (ri, rp) in p.reactors.iter().enumerate() {
        let memory_pages = rp.wasm_pages * (WASM_PAGE_SIZE / PAGE_SIZE as u64);
        let mut runs = vec![];
        let mut next = 0;
        for &(gap, pages, has_data, fill) in &rp.runs {
            let first_page = next + gap;
            if first_page + pages > memory_pages {
                break;
            }
            next = first_page + pages;
            let data = has_data.then(|| {
                let bytes = page(fill, pages as usize);
                let off = w.append_pages(&bytes).unwrap();
                contents.push((ri, runs.len(), bytes));
                off
            });
            runs.push(Run { first_page, pages, data });
        }
        let globals = rp
            .globals
            .iter()
            .enumerate()
            .map(|(i, &(ty, bits))| {
                let bits = match ty {
                    GLOBAL_I32 | GLOBAL_F32 => bits & u128::from(u32::MAX),
                    GLOBAL_I64 | GLOBAL_F64 => bits & u128::from(u64::MAX),
                    _ => bits,
                };
                GlobalValue { index: (i * 3) as u32, ty, bits }
            })
            .collect();
        let held = (0..p.blobs.len())
            .filter(|i| rp.held & (1 << i) != 0)
            .map(|i| p.tag_base.wrapping_add(i as u64 * SPREAD))
            .collect();
        reactors.push(ReactorEntry {
            address: p.address_base.wrapping_add(ri as u64 * SPREAD),
            module: rp.module,
            memory_size: rp.wasm_pages * WASM_PAGE_SIZE,
            globals,
            inbox: rp.inbox.clone(),
            blobs: held,
            next_corr: rp.next_corr,
            outstanding: (0..rp.next_corr % 4).map(|i| (rp.next_corr.wrapping_add(i), i)).collect(),
            runs,
        });
    }
    if !p.blobs_first {
        write_blobs(&mut w, &mut blobs);
    }
    let meta = Meta { created_unix_ms: p.created, blobs, reactors };
    let len = w.finish(&meta).unwrap();
    assert_eq!(fs::metadata(path).unwrap().len(), len);
    (meta, contents)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..10_000)) {
        let _ = parse(&bytes, ABI);
    }

    #[test]
    fn parse_never_panics_past_the_magic(
        tail in prop::collection::vec(any::<u8>(), 0..6000),
        fields in prop::collection::vec(any::<u8>(), 104),
        rehash in any::<bool>(),
    ) {
        // Valid magic and version, random fields, optionally a valid header hash.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&fields[12..]);
        b.extend_from_slice(&tail);
        if rehash && b.len() >= HEADER_FIELDS_LEN {
            rehash_header(&mut b);
        }
        let _ = parse(&b, ABI);
    }

    #[test]
    fn parse_survives_damage(
        muts in prop::collection::vec(mutation(), 1..6),
        fix_hashes in any::<bool>(),
    ) {
        let mut b = sample_image();
        let meta_offset = HEADER_LEN + 4 * PAGE_SIZE;
        for m in &muts {
            apply(&mut b, m, meta_offset);
        }
        if fix_hashes && b.len() >= meta_offset {
            // Make the damage reach the meta decoder and validation.
            rehash_meta(&mut b);
        }
        if let Ok((h, m)) = parse(&b, ABI) {
            check_invariants(&h, &m);
            prop_assert!(m.validate(h.data_len).is_ok());
            prop_assert_eq!(b.len() as u64, h.file_len());
        }
    }

    #[test]
    fn written_checkpoints_read_back_exactly(p in plan()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.snap");
        let (meta, contents) = write_plan(&path, &p);
        let f = SnapshotFile::open(&path, p.abi).unwrap();
        prop_assert_eq!(f.meta(), &meta);
        prop_assert_eq!(f.header().abi_version, p.abi);
        prop_assert_eq!(f.header().kind, p.delta.map_or(Kind::Full, |b| Kind::Delta { base: SnapshotId(b) }));
        check_invariants(f.header(), f.meta());
        f.verify_data(&mut |_, _| {}).unwrap();
        for (ri, run, bytes) in contents {
            let off = meta.reactors[ri].runs[run].data.unwrap();
            let mut buf = vec![0u8; bytes.len()];
            f.read_data(off, &mut buf).unwrap();
            prop_assert!(buf == bytes);
        }
        for (b, c) in meta.blobs.iter().zip(&p.blobs) {
            prop_assert_eq!(&f.read_blob(b).unwrap(), c);
        }
        let (h, m) = parse(&fs::read(&path).unwrap(), p.abi).unwrap();
        prop_assert_eq!(&h, f.header());
        prop_assert_eq!(&m, f.meta());
        prop_assert_eq!(dir_names(dir.path()), vec!["p.snap".to_string()]);
    }
}
