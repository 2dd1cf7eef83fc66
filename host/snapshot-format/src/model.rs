//! The decoded header and meta, their encoding, and the rules of the format
//! a meta must satisfy ([`Meta::validate`]).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::constants::{
    GLOBAL_F32, GLOBAL_F64, GLOBAL_I32, GLOBAL_I64, GLOBAL_V128, HEADER_HASHED_LEN, HEADER_LEN, KIND_DELTA, KIND_FULL,
    MAGIC, MAX_BLOB_LEN, MAX_BLOBS, MAX_GLOBALS_PER_REACTOR, MAX_HELD_BLOBS, MAX_INBOX_PER_REACTOR, MAX_MEMORY,
    MAX_META_LEN, MAX_OUTSTANDING, MAX_PAYLOAD_LEN, MAX_REACTORS, MAX_RUNS_PER_REACTOR, PAGE_SIZE, WASM_PAGE_SIZE,
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
    /// Format version 3: how the data section is stored (compressed, in
    /// frames). `None` in versions 1 and 2, whose data section is stored as
    /// it is.
    pub stored: Option<Stored>,
}

/// How a format version 3 file stores its data section: `data_len` bytes
/// cut in frames of `frame_len` (the last may be shorter), each compressed
/// with `codec` or stored as it is, back to back in `stored_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The frames' codec ([`CODEC_LZ4`](crate::CODEC_LZ4)).
    pub codec: u32,
    /// Uncompressed bytes per frame, a multiple of [`PAGE_SIZE`], at most
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN).
    pub frame_len: u32,
    /// Bytes of the data section as stored in the file.
    pub stored_len: u64,
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
        if let Some(st) = self.stored {
            b[112..120].copy_from_slice(&st.stored_len.to_le_bytes());
            b[120..124].copy_from_slice(&st.codec.to_le_bytes());
            b[124..128].copy_from_slice(&st.frame_len.to_le_bytes());
            let h = xxh3_64(&b[112..128]);
            b[128..136].copy_from_slice(&h.to_le_bytes());
        }
        b
    }

    /// Bytes the data section takes in the file: `data_len`, or, compressed,
    /// `stored_len`.
    pub fn stored_data_len(&self) -> u64 {
        self.stored.map_or(self.data_len, |s| s.stored_len)
    }
}

/// Everything about a checkpoint but the page and blob contents (and the
/// page checksums, which the writer computes and the reader keeps: see
/// [`SnapshotFile::check_pages`](crate::SnapshotFile::check_pages)).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// When the checkpoint was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The blobs held by the reactors, each stored once.
    #[serde(deserialize_with = "de_blob_table")]
    pub blobs: Vec<BlobEntry>,
    /// The reactors.
    #[serde(deserialize_with = "de_reactors")]
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
    /// Messages queued for it at the snapshot, oldest first (at most
    /// [`MAX_INBOX_PER_REACTOR`]).
    #[serde(deserialize_with = "de_inbox")]
    pub inbox: Vec<EnvelopeRecord>,
    /// Tags of the blobs it holds (each in [`Meta::blobs`], each once; at
    /// most [`MAX_HELD_BLOBS`]).
    #[serde(deserialize_with = "de_held")]
    pub blobs: Vec<u64>,
    /// Host-side correlation counter state (opaque here).
    pub next_corr: u64,
    /// Its outstanding requests: `(correlation id, target address)` pairs,
    /// at most [`MAX_OUTSTANDING`], each correlation id once. Format
    /// version 2; empty when read from version 1.
    #[serde(deserialize_with = "de_outstanding")]
    pub outstanding: Vec<(u64, u64)>,
    /// Its memory's pages: sorted by `first_page`, non-overlapping, within
    /// `memory_size / PAGE_SIZE` pages.
    #[serde(deserialize_with = "de_runs")]
    pub runs: Vec<Run>,
}

/// A reactor entry as format version 1 encodes it (no outstanding
/// requests).
#[derive(Deserialize)]
pub(crate) struct ReactorEntryV1 {
    address: u64,
    module: [u8; 32],
    memory_size: u64,
    #[serde(deserialize_with = "de_globals")]
    globals: Vec<GlobalValue>,
    #[serde(deserialize_with = "de_inbox")]
    inbox: Vec<EnvelopeRecord>,
    #[serde(deserialize_with = "de_held")]
    blobs: Vec<u64>,
    next_corr: u64,
    #[serde(deserialize_with = "de_runs")]
    runs: Vec<Run>,
}

impl From<ReactorEntryV1> for ReactorEntry {
    fn from(v: ReactorEntryV1) -> Self {
        ReactorEntry {
            address: v.address,
            module: v.module,
            memory_size: v.memory_size,
            globals: v.globals,
            inbox: v.inbox,
            blobs: v.blobs,
            next_corr: v.next_corr,
            outstanding: Vec::new(),
            runs: v.runs,
        }
    }
}

/// The meta section of format version 1.
#[derive(Deserialize)]
pub(crate) struct MetaV1 {
    created_unix_ms: u64,
    #[serde(deserialize_with = "de_blob_table")]
    blobs: Vec<BlobEntry>,
    #[serde(deserialize_with = "de_reactors_v1")]
    reactors: Vec<ReactorEntryV1>,
}

impl From<MetaV1> for Meta {
    fn from(v: MetaV1) -> Self {
        let reactors = v.reactors.into_iter().map(Into::into).collect();
        Meta { created_unix_ms: v.created_unix_ms, blobs: v.blobs, reactors }
    }
}

/// A reactor entry as format version 1 encodes it, for writing.
#[derive(Serialize)]
pub(crate) struct ReactorEntryV1Out<'a> {
    address: u64,
    module: [u8; 32],
    memory_size: u64,
    globals: &'a [GlobalValue],
    inbox: &'a [EnvelopeRecord],
    blobs: &'a [u64],
    next_corr: u64,
    runs: &'a [Run],
}

/// The meta section of format version 1, for writing.
#[derive(Serialize)]
pub(crate) struct MetaV1Out<'a> {
    created_unix_ms: u64,
    blobs: &'a [BlobEntry],
    reactors: Vec<ReactorEntryV1Out<'a>>,
}

impl<'a> From<&'a Meta> for MetaV1Out<'a> {
    fn from(m: &'a Meta) -> Self {
        let reactors = m
            .reactors
            .iter()
            .map(|r| ReactorEntryV1Out {
                address: r.address,
                module: r.module,
                memory_size: r.memory_size,
                globals: &r.globals,
                inbox: &r.inbox,
                blobs: &r.blobs,
                next_corr: r.next_corr,
                runs: &r.runs,
            })
            .collect();
        MetaV1Out { created_unix_ms: m.created_unix_ms, blobs: &m.blobs, reactors }
    }
}

/// The meta section of format version 2 as written: the [`Meta`], then the
/// page checksums (8 bytes each, little-endian, one per data page).
#[derive(Serialize)]
pub(crate) struct MetaV2Out<'a> {
    pub(crate) meta: &'a Meta,
    #[serde(serialize_with = "ser_bytes")]
    pub(crate) page_hashes: &'a [u8],
}

/// The meta section of format version 2 as read.
#[derive(Deserialize)]
pub(crate) struct MetaV2In {
    pub(crate) meta: Meta,
    #[serde(deserialize_with = "de_records::<_, 8>")]
    pub(crate) page_hashes: Vec<u8>,
}

/// The meta section of format version 3 as written: version 2's, then the
/// frame table (4 bytes per frame, little-endian: its stored length, with
/// [`FRAME_RAW`](crate::constants::FRAME_RAW) set when it is stored as it is).
#[derive(Serialize)]
pub(crate) struct MetaV3Out<'a> {
    pub(crate) meta: &'a Meta,
    #[serde(serialize_with = "ser_bytes")]
    pub(crate) page_hashes: &'a [u8],
    #[serde(serialize_with = "ser_bytes")]
    pub(crate) frames: &'a [u8],
}

/// The meta section of format version 3 as read.
#[derive(Deserialize)]
pub(crate) struct MetaV3In {
    pub(crate) meta: Meta,
    #[serde(deserialize_with = "de_records::<_, 8>")]
    pub(crate) page_hashes: Vec<u8>,
    #[serde(deserialize_with = "de_records::<_, 4>")]
    pub(crate) frames: Vec<u8>,
}

fn ser_bytes<S: Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// The checksum recorded for data page `index` (its number in the data
/// section): xxh3-64 of its 4096 bytes seeded with the index, so a page
/// moved to another place does not pass as that place's.
pub fn page_hash(index: u64, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, index)
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

thread_local! {
    /// Why the last decode on this thread failed, when a bound of ours
    /// refused it (postcard keeps no message of a custom error).
    static DECODE_NOTE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A decoding error saying `msg`, noted for [`take_decode_note`].
fn refuse<E: de::Error>(msg: String) -> E {
    let e = E::custom(&msg);
    DECODE_NOTE.with(|n| *n.borrow_mut() = Some(msg));
    e
}

/// The message of the last bound that refused a decode on this thread.
pub(crate) fn take_decode_note() -> Option<String> {
    DECODE_NOTE.with(|n| n.borrow_mut().take())
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
        let too_many = || refuse(format!("more than {} {}", self.max, self.what));
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

fn de_blob_table<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BlobEntry>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_BLOBS, what: "blobs in a checkpoint", _t: PhantomData })
}

fn de_reactors<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ReactorEntry>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_REACTORS, what: "reactors in a checkpoint", _t: PhantomData })
}

fn de_reactors_v1<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ReactorEntryV1>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_REACTORS, what: "reactors in a checkpoint", _t: PhantomData })
}

fn de_inbox<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EnvelopeRecord>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_INBOX_PER_REACTOR, what: "inbox messages in a reactor", _t: PhantomData })
}

fn de_held<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_HELD_BLOBS, what: "blobs held by a reactor", _t: PhantomData })
}

fn de_outstanding<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, u64)>, D::Error> {
    d.deserialize_seq(BoundedSeq { max: MAX_OUTSTANDING, what: "outstanding requests of a reactor", _t: PhantomData })
}

/// Fixed-width records as bytes (page checksums, 8 bytes each; frame table
/// entries, 4 bytes each), the length checked before anything is copied.
fn de_records<'de, D: Deserializer<'de>, const WIDTH: usize>(d: D) -> Result<Vec<u8>, D::Error> {
    struct RecordVisitor<const WIDTH: usize>;

    fn check<E: de::Error, const WIDTH: usize>(n: usize) -> Result<(), E> {
        if n as u64 > MAX_META_LEN || !n.is_multiple_of(WIDTH) {
            return Err(refuse(format!("{n} bytes of {WIDTH}-byte records (not a multiple of {WIDTH}, or over the limit)")));
        }
        Ok(())
    }

    impl<'de, const WIDTH: usize> Visitor<'de> for RecordVisitor<WIDTH> {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "records of {WIDTH} bytes each")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            check::<E, WIDTH>(v.len())?;
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            check::<E, WIDTH>(v.len())?;
            Ok(v)
        }
    }

    d.deserialize_byte_buf(RecordVisitor::<WIDTH>)
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
        refuse(format!("an inbox payload of {n} bytes is longer than the limit of {MAX_PAYLOAD_LEN}"))
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
        if self.blobs.len() > MAX_BLOBS {
            return Err(malformed(format!("more than {MAX_BLOBS} blobs")));
        }
        if self.reactors.len() > MAX_REACTORS {
            return Err(malformed(format!("more than {MAX_REACTORS} reactors")));
        }
        // Every stored range of the data section, to refuse overlaps.
        let mut ranges: Vec<DataRange> = Vec::with_capacity(self.blobs.len());
        let mut tags = HashSet::with_capacity(self.blobs.len());
        for b in &self.blobs {
            if b.len > MAX_BLOB_LEN {
                return Err(malformed(format!(
                    "blob {:#x} is {} bytes long, more than the limit of {MAX_BLOB_LEN}",
                    b.tag, b.len
                )));
            }
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
            let Some(end) = end.filter(|&e| e <= data_len) else {
                return Err(malformed(format!(
                    "blob {:#x} ({} bytes at data offset {}) lies outside the data section ({data_len} bytes)",
                    b.tag, b.len, b.offset
                )));
            };
            if end > b.offset {
                ranges.push(DataRange { start: b.offset, end, owner: Owner::Blob(b.tag) });
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
            if r.inbox.len() > MAX_INBOX_PER_REACTOR {
                return Err(malformed(format!("reactor {a:#x}: more than {MAX_INBOX_PER_REACTOR} inbox messages")));
            }
            for (i, m) in r.inbox.iter().enumerate() {
                if m.payload.len() > MAX_PAYLOAD_LEN {
                    return Err(malformed(format!(
                        "reactor {a:#x}: inbox message {i} has a payload of {} bytes, more than {MAX_PAYLOAD_LEN}",
                        m.payload.len()
                    )));
                }
            }
            if r.blobs.len() > MAX_HELD_BLOBS {
                return Err(malformed(format!("reactor {a:#x} holds more than {MAX_HELD_BLOBS} blobs")));
            }
            if r.outstanding.len() > MAX_OUTSTANDING {
                return Err(malformed(format!("reactor {a:#x}: more than {MAX_OUTSTANDING} outstanding requests")));
            }
            let mut corrs = HashSet::with_capacity(r.outstanding.len());
            for &(corr, _) in &r.outstanding {
                if !corrs.insert(corr) {
                    return Err(malformed(format!("reactor {a:#x}: outstanding request {corr:#x} appears twice")));
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
                    let Some(end) = off.checked_add(run.pages * page).filter(|&e| e <= data_len) else {
                        return Err(malformed(format!(
                            "reactor {a:#x}: run {i} has its data ({} pages at offset {off}) outside the data \
                             section ({data_len} bytes)",
                            run.pages
                        )));
                    };
                    ranges.push(DataRange { start: off, end, owner: Owner::Run(a, i) });
                }
            }
        }
        // A blob's bytes are its own; runs may share page data with other
        // runs (they are only ever read), never with a blob.
        ranges.sort_unstable_by_key(|r| (r.start, r.end));
        let mut furthest: Option<&DataRange> = None;
        let mut furthest_blob: Option<&DataRange> = None;
        for r in &ranges {
            let against = match r.owner {
                Owner::Blob(_) => furthest,
                Owner::Run(..) => furthest_blob,
            };
            if let Some(o) = against.filter(|o| r.start < o.end) {
                return Err(FormatError::Overlap { first: o.describe(), second: r.describe() });
            }
            if furthest.is_none_or(|f| r.end > f.end) {
                furthest = Some(r);
            }
            if matches!(r.owner, Owner::Blob(_)) && furthest_blob.is_none_or(|f| r.end > f.end) {
                furthest_blob = Some(r);
            }
        }
        Ok(())
    }
}

/// What a range of the data section stores.
#[derive(Clone, Copy)]
enum Owner {
    /// A blob's content (its tag).
    Blob(u64),
    /// A run's pages (reactor address, run index).
    Run(u64, usize),
}

/// One stored range of the data section, `[start, end)`.
struct DataRange {
    start: u64,
    end: u64,
    owner: Owner,
}

impl DataRange {
    fn describe(&self) -> String {
        let what = match self.owner {
            Owner::Blob(tag) => format!("blob {tag:#x}"),
            Owner::Run(a, i) => format!("run {i} of reactor {a:#x}"),
        };
        format!("{what} (data bytes {}..{})", self.start, self.end)
    }
}

/// The meta section of format `version` ([`FORMAT_VERSION`](crate::FORMAT_VERSION)
/// or [`FORMAT_VERSION_1`](crate::FORMAT_VERSION_1)) for `meta` and, in
/// version 2, the checksums of the data pages ([`page_hash`] of each, in
/// order). Not validated: this is how test and fuzz fixtures build images
/// around any meta; [`Writer`](crate::Writer) is the checked way to write a file.
pub fn encode_meta(meta: &Meta, version: u32, page_hashes: &[u64]) -> Result<Vec<u8>, FormatError> {
    let r = if version == crate::constants::FORMAT_VERSION_1 {
        postcard::to_stdvec(&MetaV1Out::from(meta))
    } else {
        let bytes: Vec<u8> = page_hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        postcard::to_stdvec(&MetaV2Out { meta, page_hashes: &bytes })
    };
    r.map_err(|e| malformed(format!("meta does not encode: {e}")))
}
