//! The decoded header and meta, their encoding, and the rules of the format
//! a meta must satisfy ([`Meta::validate`]).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use xxhash_rust::xxh3::xxh3_64;

use crate::constants::{
    GLOBAL_F32, GLOBAL_F64, GLOBAL_I32, GLOBAL_I64, GLOBAL_V128, HEADER_HASHED_LEN, HEADER_LEN, KIND_DELTA, KIND_FULL,
    MAGIC, MAX_GLOBALS_PER_REACTOR, MAX_MEMORY, MAX_PAYLOAD_LEN, MAX_RUNS_PER_REACTOR, PAGE_SIZE, WASM_PAGE_SIZE,
};
use crate::error::{FormatError, malformed};
use crate::id::SnapshotId;

/// The most bytes a decoder preallocates for a sequence on the word of its
/// length prefix; beyond that the vector grows as elements actually decode.
const PREALLOC_BYTES: usize = 1 << 20;

/// Whether a snapshot stands alone or applies on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Complete memory images: pages not covered by a run are zero.
    Full,
    /// Changes against the snapshot `base`: pages not covered by a run are
    /// unchanged from it.
    Delta {
        /// The id of the snapshot this one applies on (never zero).
        base: SnapshotId,
    },
}

/// The decoded header (see the crate documentation for the byte layout;
/// `header_hash` is computed by [`Header::to_bytes`] and checked on reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT_VERSION`](crate::FORMAT_VERSION).
    pub format_version: u32,
    /// The reactor ABI version of the modules inside.
    pub abi_version: u32,
    /// [`PAGE_SIZE`].
    pub page_size: u32,
    /// Full or delta (with its base id).
    pub kind: Kind,
    /// This snapshot's id.
    pub id: SnapshotId,
    /// Where the data section starts in the file ([`HEADER_LEN`]).
    pub data_offset: u64,
    /// Length of the data section (a multiple of [`PAGE_SIZE`]).
    pub data_len: u64,
    /// xxh3-64 of the data section.
    pub data_hash: u64,
    /// Where the meta section starts (`data_offset + data_len`).
    pub meta_offset: u64,
    /// Length of the meta section.
    pub meta_len: u64,
    /// xxh3-64 of the meta section.
    pub meta_hash: u64,
}

impl Header {
    /// The file length this header describes (`meta_offset + meta_len`,
    /// saturating).
    pub fn file_len(&self) -> u64 {
        self.meta_offset.saturating_add(self.meta_len)
    }

    /// The header page as written: the fields, the header hash, zero padding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        let (kind, base) = match self.kind {
            Kind::Full => (KIND_FULL, SnapshotId::ZERO),
            Kind::Delta { base } => (KIND_DELTA, base),
        };
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        b[12..16].copy_from_slice(&self.abi_version.to_le_bytes());
        b[16..20].copy_from_slice(&self.page_size.to_le_bytes());
        b[20..24].copy_from_slice(&kind.to_le_bytes());
        b[24..40].copy_from_slice(&self.id.0);
        b[40..56].copy_from_slice(&base.0);
        b[56..64].copy_from_slice(&self.data_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.data_len.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_hash.to_le_bytes());
        b[80..88].copy_from_slice(&self.meta_offset.to_le_bytes());
        b[88..96].copy_from_slice(&self.meta_len.to_le_bytes());
        b[96..104].copy_from_slice(&self.meta_hash.to_le_bytes());
        let h = xxh3_64(&b[..HEADER_HASHED_LEN]);
        b[104..112].copy_from_slice(&h.to_le_bytes());
        b
    }
}

/// Everything about a checkpoint but the page and blob contents.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// When the checkpoint was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The blobs held by the reactors, each stored once.
    pub blobs: Vec<BlobEntry>,
    /// The reactors.
    pub reactors: Vec<ReactorEntry>,
}

/// A shared immutable blob stored in the data section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// The blob's tag (unique within the checkpoint).
    pub tag: u64,
    /// Content length in bytes (the stored form is padded to a page multiple).
    pub len: u64,
    /// Offset of the content in the data section (page aligned).
    pub offset: u64,
    /// xxh3-64 of the content (`len` bytes, without padding); see [`blob_hash`].
    pub hash: u64,
}

/// One reactor's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactorEntry {
    /// The reactor's tag (its restart-stable identity).
    pub address: u64,
    /// SHA-256 of the module bytes.
    pub module: [u8; 32],
    /// Linear memory size in bytes: a multiple of 65536, at most [`MAX_MEMORY`].
    pub memory_size: u64,
    /// The module's mutable globals.
    #[serde(deserialize_with = "de_globals")]
    pub globals: Vec<GlobalValue>,
    /// Messages queued for it at the snapshot, oldest first.
    pub inbox: Vec<EnvelopeRecord>,
    /// Tags of the blobs it holds (each in [`Meta::blobs`], each once).
    pub blobs: Vec<u64>,
    /// Host-side correlation counter state (opaque here).
    pub next_corr: u64,
    /// Its memory's pages: sorted by `first_page`, non-overlapping, within
    /// `memory_size / PAGE_SIZE` pages.
    #[serde(deserialize_with = "de_runs")]
    pub runs: Vec<Run>,
}

/// The value of one global.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalValue {
    /// The global's index in the module's global index space.
    pub index: u32,
    /// Its type: [`GLOBAL_I32`], [`GLOBAL_I64`], [`GLOBAL_F32`],
    /// [`GLOBAL_F64`] or [`GLOBAL_V128`].
    pub ty: u8,
    /// Its bits, zero-extended (must fit the type's width).
    pub bits: u128,
}

/// A message queued in a reactor's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    /// Message kind (opaque here).
    pub kind: u8,
    /// Message flags (opaque here).
    pub flags: u8,
    /// Sender address.
    pub from: u64,
    /// Correlation id.
    pub corr: u64,
    /// Payload, at most [`MAX_PAYLOAD_LEN`] bytes.
    #[serde(with = "payload_bytes")]
    pub payload: Vec<u8>,
}

/// A range of memory pages ([`PAGE_SIZE`] bytes each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The first page (memory offset / [`PAGE_SIZE`]).
    pub first_page: u64,
    /// How many pages (at least one).
    pub pages: u64,
    /// `Some(offset)`: the pages are stored back to back at this page-aligned
    /// offset of the data section. `None`: the pages are all zero.
    pub data: Option<u64>,
}

/// The hash recorded in [`BlobEntry::hash`]: xxh3-64 of the content.
pub fn blob_hash(content: &[u8]) -> u64 {
    xxh3_64(content)
}

/// Decodes a sequence of at most `max` elements, failing as soon as the
/// length prefix or the elements say more, and preallocating at most
/// [`PREALLOC_BYTES`] however large the prefix.
struct BoundedSeq<T> {
    max: usize,
    what: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = || de::Error::custom(format_args!("more than {} {}", self.max, self.what));
        let hint = seq.size_hint();
        if hint.is_some_and(|n| n > self.max) {
            return Err(too_many());
        }
        let cap = hint.unwrap_or(0).min(PREALLOC_BYTES / size_of::<T>().max(1));
        let mut v = Vec::with_capacity(cap);
        while let Some(x) = seq.next_element()? {
            if v.len() == self.max {
                return Err(too_many());
            }
            v.push(x);
        }
        Ok(v)
    }
}

fn de_globals<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<GlobalValue>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_GLOBALS_PER_REACTOR, what: "globals in a reactor", _t: PhantomData })
}

fn de_runs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Run>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_RUNS_PER_REACTOR, what: "runs in a reactor", _t: PhantomData })
}

/// Payloads as bytes: in postcard the same wire form as a `Vec<u8>`, but
/// decoded in one copy, with the length checked before it.
mod payload_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(PayloadVisitor)
    }

    struct PayloadVisitor;

    fn too_long<E: de::Error>(n: usize) -> E {
        E::custom(format_args!("an inbox payload of {n} bytes is longer than the limit of {MAX_PAYLOAD_LEN}"))
    }

    impl<'de> Visitor<'de> for PayloadVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a payload of at most {MAX_PAYLOAD_LEN} bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            if v.len() > MAX_PAYLOAD_LEN {
                return Err(too_long(v.len()));
            }
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            if v.len() > MAX_PAYLOAD_LEN {
                return Err(too_long(v.len()));
            }
            Ok(v)
        }

        // Self-describing formats (JSON) write bytes as a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<u8>, A::Error> {
            BoundedSeq { max: MAX_PAYLOAD_LEN, what: "bytes in an inbox payload", _t: PhantomData }.visit_seq(seq)
        }
    }
}

fn global_fits(ty: u8, bits: u128) -> bool {
    match ty {
        GLOBAL_I32 | GLOBAL_F32 => bits <= u128::from(u32::MAX),
        GLOBAL_I64 | GLOBAL_F64 => bits <= u128::from(u64::MAX),
        _ => true,
    }
}

impl Meta {
    /// Checks the rules of the format (crate documentation, "Meta section")
    /// against a data section of `data_len` bytes.
    pub fn validate(&self, data_len: u64) -> Result<(), FormatError> {
        let page = PAGE_SIZE as u64;
        let mut tags = HashSet::with_capacity(self.blobs.len());
        for b in &self.blobs {
            if !tags.insert(b.tag) {
                return Err(malformed(format!("blob tag {:#x} appears twice in the blob table", b.tag)));
            }
            if !b.offset.is_multiple_of(page) {
                return Err(malformed(format!(
                    "blob {:#x} starts at data offset {}, not page aligned",
                    b.tag, b.offset
                )));
            }
            let end = b.len.checked_next_multiple_of(page).and_then(|l| b.offset.checked_add(l));
            if end.is_none_or(|e| e > data_len) {
                return Err(malformed(format!(
                    "blob {:#x} ({} bytes at data offset {}) lies outside the data section ({data_len} bytes)",
                    b.tag, b.len, b.offset
                )));
            }
        }
        let mut addresses = HashSet::with_capacity(self.reactors.len());
        for r in &self.reactors {
            let a = r.address;
            if !addresses.insert(a) {
                return Err(malformed(format!("reactor {a:#x} appears twice")));
            }
            if !r.memory_size.is_multiple_of(WASM_PAGE_SIZE) || r.memory_size > MAX_MEMORY {
                return Err(malformed(format!(
                    "reactor {a:#x}: memory size {} is not a multiple of {WASM_PAGE_SIZE} up to {MAX_MEMORY}",
                    r.memory_size
                )));
            }
            if r.globals.len() > MAX_GLOBALS_PER_REACTOR {
                return Err(malformed(format!("reactor {a:#x}: more than {MAX_GLOBALS_PER_REACTOR} globals")));
            }
            let mut indices = HashSet::with_capacity(r.globals.len());
            for g in &r.globals {
                if !indices.insert(g.index) {
                    return Err(malformed(format!("reactor {a:#x}: global {} appears twice", g.index)));
                }
                if g.ty > GLOBAL_V128 {
                    return Err(malformed(format!("reactor {a:#x}: global {} has unknown type {}", g.index, g.ty)));
                }
                if !global_fits(g.ty, g.bits) {
                    return Err(malformed(format!(
                        "reactor {a:#x}: global {} has bits {:#x} too wide for its type {}",
                        g.index, g.bits, g.ty
                    )));
                }
            }
            for (i, m) in r.inbox.iter().enumerate() {
                if m.payload.len() > MAX_PAYLOAD_LEN {
                    return Err(malformed(format!(
                        "reactor {a:#x}: inbox message {i} has a payload of {} bytes, more than {MAX_PAYLOAD_LEN}",
                        m.payload.len()
                    )));
                }
            }
            let mut held = HashSet::with_capacity(r.blobs.len());
            for &t in &r.blobs {
                if !tags.contains(&t) {
                    return Err(malformed(format!("reactor {a:#x} holds blob {t:#x}, which is not in the blob table")));
                }
                if !held.insert(t) {
                    return Err(malformed(format!("reactor {a:#x} holds blob {t:#x} twice")));
                }
            }
            if r.runs.len() > MAX_RUNS_PER_REACTOR {
                return Err(malformed(format!("reactor {a:#x}: more than {MAX_RUNS_PER_REACTOR} runs")));
            }
            let memory_pages = r.memory_size / page;
            let mut next_free = 0u64;
            for (i, run) in r.runs.iter().enumerate() {
                if run.pages == 0 {
                    return Err(malformed(format!("reactor {a:#x}: run {i} is empty")));
                }
                if run.first_page < next_free {
                    return Err(malformed(format!(
                        "reactor {a:#x}: run {i} (from page {}) is out of order or overlaps the run before it",
                        run.first_page
                    )));
                }
                let end = run.first_page.checked_add(run.pages);
                let Some(end) = end.filter(|&e| e <= memory_pages) else {
                    return Err(malformed(format!(
                        "reactor {a:#x}: run {i} (pages {} + {}) extends past its memory of {memory_pages} pages",
                        run.first_page, run.pages
                    )));
                };
                next_free = end;
                if let Some(off) = run.data {
                    if !off.is_multiple_of(page) {
                        return Err(malformed(format!(
                            "reactor {a:#x}: run {i} has its data at offset {off}, not page aligned"
                        )));
                    }
                    // pages <= memory_pages <= 2^20, so the product fits.
                    if off.checked_add(run.pages * page).is_none_or(|e| e > data_len) {
                        return Err(malformed(format!(
                            "reactor {a:#x}: run {i} has its data ({} pages at offset {off}) outside the data \
                             section ({data_len} bytes)",
                            run.pages
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
