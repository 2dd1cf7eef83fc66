//! The on-disk form of a *checkpoint*: one or more reactor snapshots taken
//! at one consistent moment, plus the shared immutable blobs they refer to
//! (stored once however many reactors refer to them).
//!
//! This comment is the authoritative specification of format version 1.
//!
//! # Layout
//!
//! All integers are little-endian. A file is three sections back to back:
//!
//! ```text
//! [0, 4096)                         header (HEADER_LEN bytes, one page)
//! [4096, 4096 + data_len)           data section (page aligned, so runs can be mmapped)
//! [meta_offset, meta_offset+meta_len) meta section (postcard encoding of `Meta`)
//! ```
//!
//! The file length is `meta_offset + meta_len` exactly: a shorter file is
//! [`FormatError::Truncated`], a longer one [`FormatError::TrailingBytes`].
//!
//! ## Header (offset 0, [`HEADER_LEN`] = 4096 bytes)
//!
//! | offset | field            | type       | value                                                        |
//! |-------:|------------------|------------|--------------------------------------------------------------|
//! |      0 | `magic`          | `[u8; 8]`  | [`MAGIC`] = `b"RSNAP\r\n\x1a"` (the `\r\n\x1a` catch text-mode mangling, as PNG's does) |
//! |      8 | `format_version` | `u32`      | [`FORMAT_VERSION`] (1)                                       |
//! |     12 | `abi_version`    | `u32`      | the reactor ABI version of the modules inside                |
//! |     16 | `page_size`      | `u32`      | [`PAGE_SIZE`] (4096); a file whose page size differs from the host's is refused |
//! |     20 | `kind`           | `u32`      | 0 = full, 1 = delta; anything else is malformed              |
//! |     24 | `id`             | `[u8; 16]` | this snapshot's unique id                                    |
//! |     40 | `base_id`        | `[u8; 16]` | delta: the id of the snapshot it applies on (nonzero); full: all zero |
//! |     56 | `data_offset`    | `u64`      | = [`HEADER_LEN`]                                             |
//! |     64 | `data_len`       | `u64`      | length of the data section, a multiple of `page_size`        |
//! |     72 | `data_hash`      | `u64`      | xxh3-64 of the data section bytes                            |
//! |     80 | `meta_offset`    | `u64`      | = `data_offset + data_len`                                   |
//! |     88 | `meta_len`       | `u64`      | length of the meta section, at most [`MAX_META_LEN`] (256 MiB) |
//! |     96 | `meta_hash`      | `u64`      | xxh3-64 of the meta section bytes                            |
//! |    104 | `header_hash`    | `u64`      | xxh3-64 of header bytes `[0, 104)`                           |
//! |    112 | padding          |            | zero up to offset 4096; a nonzero byte there is [`FormatError::HeaderCorrupt`] |
//!
//! xxh3-64 is XXH3 with 64-bit output, default secret, seed 0.
//!
//! ## Data section
//!
//! Page contents and blob contents, each starting on a page boundary
//! (offsets below are relative to the start of the data section):
//! - a [`Run`] with `data: Some(offset)` has its `pages` pages stored back to
//!   back at `offset`;
//! - a [`BlobEntry`] has its `len` content bytes at `offset`, followed by zero
//!   padding up to the next page multiple.
//!
//! Every byte of the file is covered by a check: the header by `header_hash`
//! and the zero padding, the data by `data_hash` (checked by
//! [`SnapshotFile::verify_data`], which streams the whole section, and not by
//! [`parse`] / [`SnapshotFile::open`]), the meta by `meta_hash`.
//!
//! ## Meta section
//!
//! The [postcard](https://docs.rs/postcard) encoding of [`Meta`]
//! (postcard 1.x wire format: varint integers, length-prefixed sequences;
//! `EnvelopeRecord::payload` is encoded as postcard bytes, which is the same
//! wire form as a sequence of `u8`). No byte may follow the encoded `Meta`.
//!
//! A decoded `Meta` must satisfy ([`Meta::validate`]):
//! - blob tags are unique; each blob's `offset` is page aligned and
//!   `[offset, offset + len rounded up to a page)` lies within the data section;
//! - reactor addresses are unique;
//! - `memory_size` is a multiple of 65536 (the wasm page) and at most
//!   [`MAX_MEMORY`] (4 GiB);
//! - at most [`MAX_GLOBALS_PER_REACTOR`] globals, with unique indices, `ty`
//!   one of [`GLOBAL_I32`], [`GLOBAL_I64`], [`GLOBAL_F32`], [`GLOBAL_F64`],
//!   [`GLOBAL_V128`], and `bits` fitting the type's width;
//! - every inbox payload is at most [`MAX_PAYLOAD_LEN`] (16 MiB);
//! - every tag in a reactor's `blobs` is in `Meta::blobs`, and appears once;
//! - at most [`MAX_RUNS_PER_REACTOR`] runs, each of at least one page, sorted by
//!   `first_page`, non-overlapping, all within `memory_size / page_size`
//!   pages; a run's data offset is page aligned and its pages lie within the
//!   data section.
//!
//! ## Meaning of runs
//!
//! - Full snapshot: the pages of a run with data are stored; a run without
//!   data is all zero; pages not covered by any run are zero (writers need not
//!   emit runs of zero pages).
//! - Delta snapshot: pages not covered by any run are unchanged from the base;
//!   a run without data means "became zero"; pages at or beyond the base's
//!   memory size that no run covers are zero.
//!
//! # Reading order
//!
//! Checks run in this order, so that the error reported is the most useful
//! one: magic ([`FormatError::NotASnapshot`]); format version, when the file
//! is long enough to hold it ([`FormatError::FormatVersion`], before
//! anything else, since another version may lay out everything else
//! differently); at least the 112 bytes of header fields
//! ([`FormatError::TooShort`]); header hash ([`FormatError::HeaderCorrupt`]);
//! ABI version; page size; header field consistency (kind and base id,
//! offsets, alignment: [`FormatError::Malformed`]); file length
//! ([`FormatError::Truncated`] / [`FormatError::TrailingBytes`]); header
//! padding; meta hash ([`FormatError::MetaCorrupt`]); meta decoding and
//! the rules above ([`FormatError::Malformed`]).
//!
//! # Writing
//!
//! [`Writer`] streams page data into a temporary file beside the target,
//! then writes the meta and the header, fsyncs, renames the file over the
//! target and fsyncs the directory: readers see the old file or the new one,
//! never a mix.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"RSNAP\r\n\x1a";
/// The format version this host writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header: one page, so the data section is page aligned.
pub const HEADER_LEN: usize = 4096;
/// The page size of the data section (and of runs).
pub const PAGE_SIZE: usize = 4096;
/// The WebAssembly page size: `memory_size` is a multiple of it.
pub const WASM_PAGE_SIZE: u64 = 65536;
/// The largest memory a snapshot may describe (4 GiB, wasm32's limit).
pub const MAX_MEMORY: u64 = 1 << 32;
/// The largest meta section accepted (256 MiB).
pub const MAX_META_LEN: u64 = 256 << 20;
/// The most runs one reactor may have.
pub const MAX_RUNS_PER_REACTOR: usize = 1 << 20;
/// The largest inbox message payload accepted (16 MiB).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// The most globals one reactor may have (wasmparser's limit on a module).
pub const MAX_GLOBALS_PER_REACTOR: usize = 1_000_000;
/// [`GlobalValue::ty`] of an `i32` global (`bits` holds the low 32 bits).
pub const GLOBAL_I32: u8 = 0;
/// [`GlobalValue::ty`] of an `i64` global (`bits` holds the low 64 bits).
pub const GLOBAL_I64: u8 = 1;
/// [`GlobalValue::ty`] of an `f32` global (`bits` holds `f32::to_bits`).
pub const GLOBAL_F32: u8 = 2;
/// [`GlobalValue::ty`] of an `f64` global (`bits` holds `f64::to_bits`).
pub const GLOBAL_F64: u8 = 3;
/// [`GlobalValue::ty`] of a `v128` global.
pub const GLOBAL_V128: u8 = 4;

/// Bytes of the header covered by `header_hash`.
const HEADER_HASHED_LEN: usize = 104;
/// Bytes of the header holding fields (the rest of the page is zero).
const HEADER_FIELDS_LEN: usize = 112;
const KIND_FULL: u32 = 0;
const KIND_DELTA: u32 = 1;
/// Buffer of the writer: small writes are gathered, large ones go straight
/// to the file.
const WRITE_BUFFER: usize = 4 << 20;
/// Read size when streaming the data section through the hash.
const VERIFY_CHUNK: usize = 8 << 20;
/// How often `verify_data` reports progress.
const PROGRESS_EVERY: u64 = 64 << 20;
/// The most bytes a decoder preallocates for a sequence on the word of its
/// length prefix; beyond that the vector grows as elements actually decode.
const PREALLOC_BYTES: usize = 1 << 20;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
// The header is written from ZERO_PAGE and keeps the data section page aligned.
const _: () = assert!(HEADER_LEN == PAGE_SIZE);

// ---------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------

/// A snapshot's unique id (16 random bytes). Displayed as 32 lowercase hex
/// digits. All zeros is "no snapshot" (the base id of a full snapshot).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// The all-zero id, which names no snapshot.
    pub const ZERO: SnapshotId = SnapshotId([0; 16]);

    /// A fresh random id from the operating system's generator (falling back
    /// to hashing the time, process id and a counter with std's randomly
    /// keyed hasher should that fail). Never zero.
    pub fn random() -> SnapshotId {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() || b == [0; 16] {
            b = fallback_random();
        }
        SnapshotId(b)
    }

    /// Whether this is the all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

fn fallback_random() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let half = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u64(n);
        h.write_u32(std::process::id());
        h.write_u64(salt);
        h.finish()
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&half(1).to_le_bytes());
    b[8..].copy_from_slice(&(half(2) | 1).to_le_bytes());
    b
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({self})")
    }
}

// ---------------------------------------------------------------------------
// Header and meta
// ---------------------------------------------------------------------------

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

/// The decoded header (see the module documentation for the byte layout;
/// `header_hash` is computed by [`Header::to_bytes`] and checked on reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// [`FORMAT_VERSION`].
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

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a snapshot could not be written, read or used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The operating system refused an operation on a file.
    #[error("snapshot file {}: {source}", path.display())]
    Io {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error(
        "not a reactor snapshot file (it does not start with the snapshot magic bytes): check the path; a snapshot \
         copied in text mode is damaged too"
    )]
    NotASnapshot,
    /// The file is shorter than the header's fields.
    #[error(
        "snapshot file too short: {len} bytes, less than a snapshot header; it was cut off while written or copied: \
         use an intact copy"
    )]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// The file was written in another format version.
    #[error("{}", format_version_message(*found, *supported))]
    FormatVersion {
        /// The file's format version.
        found: u32,
        /// The version this host reads ([`FORMAT_VERSION`]).
        supported: u32,
    },
    /// The reactors inside were built for another reactor ABI.
    #[error(
        "snapshot holds reactors of ABI version {found}, but this host runs ABI version {expected}: restore it with \
         a host of ABI version {found}"
    )]
    AbiVersion {
        /// The file's ABI version.
        found: u32,
        /// The host's ABI version.
        expected: u32,
    },
    /// The file's page size is not the host's.
    #[error("snapshot page size is {found} bytes, but this host uses {host}-byte pages: it cannot be restored here")]
    PageSize {
        /// The file's page size.
        found: u32,
        /// The host's page size ([`PAGE_SIZE`]).
        host: u32,
    },
    /// The header's checksum does not match, or its padding is not zero.
    #[error("snapshot header is corrupt (checksum mismatch or nonzero padding): the file is damaged; use another copy")]
    HeaderCorrupt,
    /// The file is shorter than its header says.
    #[error(
        "snapshot file is truncated: its header says {expected} bytes, but it has {found}; it was cut off while \
         written or copied: use an intact copy"
    )]
    Truncated {
        /// The length the header gives.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// The file is longer than its header says.
    #[error(
        "snapshot file has trailing bytes: its header says {expected} bytes, but it has {found}; something was \
         appended to it, or it was copied over a longer file: use an intact copy"
    )]
    TrailingBytes {
        /// The length the header gives.
        expected: u64,
        /// The file's length.
        found: u64,
    },
    /// The meta section's checksum does not match.
    #[error("snapshot metadata is corrupt (checksum mismatch): the file is damaged; use another copy")]
    MetaCorrupt,
    /// The data section's (or a blob's) checksum does not match.
    #[error("snapshot page data is corrupt (checksum mismatch): the file is damaged; use another copy")]
    DataCorrupt,
    /// The checksums match but the content breaks a rule of the format.
    #[error("snapshot is malformed: {0} (the file was not written by a correct host, or a caller broke a rule)")]
    Malformed(String),
    /// The module given for a reactor is not the one it was snapshotted with.
    #[error(
        "snapshot was taken of module {snapshot}, but the module given has hash {module}: restore with the same \
         module bytes"
    )]
    WrongModule {
        /// The module hash in the snapshot (hex).
        snapshot: String,
        /// The hash of the module given (hex).
        module: String,
    },
    /// A delta was applied on the wrong base.
    #[error(
        "delta snapshot applies on snapshot {expected}, but the base given is {found}: apply deltas on their own base"
    )]
    DeltaBase {
        /// The base the delta names.
        expected: SnapshotId,
        /// The snapshot it was applied on.
        found: SnapshotId,
    },
    /// A full snapshot was given where a delta was expected.
    #[error("expected a delta snapshot, but this is a full snapshot")]
    NotADelta,
}

fn format_version_message(found: u32, supported: u32) -> String {
    if found > supported {
        format!(
            "snapshot was written by a newer host (format version {found}; this host reads version {supported}): \
             restore it with a newer host"
        )
    } else {
        format!(
            "snapshot was written by an older host (format version {found}; this host reads only version \
             {supported}): restore it with the host that wrote it"
        )
    }
}

fn malformed(msg: impl Into<String>) -> FormatError {
    FormatError::Malformed(msg.into())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FormatError + '_ {
    move |source| FormatError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn id_at(b: &[u8], at: usize) -> SnapshotId {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    SnapshotId(a)
}

/// Checks the header given the file's first `min(file_len, HEADER_LEN)`
/// bytes and its length, in the order the module documentation gives.
fn check_header(prefix: &[u8], file_len: u64, expected_abi: u32) -> Result<Header, FormatError> {
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(FormatError::NotASnapshot);
    }
    if prefix.len() >= 12 {
        let found = u32_at(prefix, 8);
        if found != FORMAT_VERSION {
            return Err(FormatError::FormatVersion { found, supported: FORMAT_VERSION });
        }
    }
    if prefix.len() < HEADER_FIELDS_LEN {
        return Err(FormatError::TooShort { len: file_len });
    }
    if xxh3_64(&prefix[..HEADER_HASHED_LEN]) != u64_at(prefix, HEADER_HASHED_LEN) {
        return Err(FormatError::HeaderCorrupt);
    }
    let abi_version = u32_at(prefix, 12);
    if abi_version != expected_abi {
        return Err(FormatError::AbiVersion { found: abi_version, expected: expected_abi });
    }
    let page_size = u32_at(prefix, 16);
    if page_size as usize != PAGE_SIZE {
        return Err(FormatError::PageSize { found: page_size, host: PAGE_SIZE as u32 });
    }
    let base = id_at(prefix, 40);
    let kind = match u32_at(prefix, 20) {
        KIND_FULL if base.is_zero() => Kind::Full,
        KIND_FULL => return Err(malformed(format!("a full snapshot has a base id ({base}); only deltas have one"))),
        KIND_DELTA if base.is_zero() => return Err(malformed("a delta snapshot has no base id (it is all zero)")),
        KIND_DELTA => Kind::Delta { base },
        k => return Err(malformed(format!("unknown snapshot kind {k} (0 = full, 1 = delta)"))),
    };
    let h = Header {
        format_version: FORMAT_VERSION,
        abi_version,
        page_size,
        kind,
        id: id_at(prefix, 24),
        data_offset: u64_at(prefix, 56),
        data_len: u64_at(prefix, 64),
        data_hash: u64_at(prefix, 72),
        meta_offset: u64_at(prefix, 80),
        meta_len: u64_at(prefix, 88),
        meta_hash: u64_at(prefix, 96),
    };
    if h.data_offset != HEADER_LEN as u64 {
        return Err(malformed(format!("data section starts at {}, not at {HEADER_LEN}", h.data_offset)));
    }
    if !h.data_len.is_multiple_of(PAGE_SIZE as u64) {
        return Err(malformed(format!("data section length {} is not a multiple of the page size", h.data_len)));
    }
    if h.data_offset.checked_add(h.data_len) != Some(h.meta_offset) {
        return Err(malformed(format!(
            "meta section starts at {}, not right after the data section ({} + {})",
            h.meta_offset, h.data_offset, h.data_len
        )));
    }
    if h.meta_len > MAX_META_LEN {
        return Err(malformed(format!(
            "meta section of {} bytes is larger than the limit of {MAX_META_LEN}",
            h.meta_len
        )));
    }
    let Some(expected) = h.meta_offset.checked_add(h.meta_len) else {
        return Err(malformed("section lengths overflow"));
    };
    if file_len < expected {
        return Err(FormatError::Truncated { expected, found: file_len });
    }
    if file_len > expected {
        return Err(FormatError::TrailingBytes { expected, found: file_len });
    }
    // file_len == expected >= HEADER_LEN, so the prefix is the whole header.
    if prefix.len() < HEADER_LEN || prefix[HEADER_FIELDS_LEN..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(FormatError::HeaderCorrupt);
    }
    Ok(h)
}

/// Checks the meta section's hash, decodes it and validates it.
fn check_meta(header: &Header, bytes: &[u8]) -> Result<Meta, FormatError> {
    if xxh3_64(bytes) != header.meta_hash {
        return Err(FormatError::MetaCorrupt);
    }
    let (meta, rest) = postcard::take_from_bytes::<Meta>(bytes)
        .map_err(|e| malformed(format!("the meta section does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes follow the meta in the meta section", rest.len())));
    }
    meta.validate(header.data_len)?;
    Ok(meta)
}

fn global_fits(ty: u8, bits: u128) -> bool {
    match ty {
        GLOBAL_I32 | GLOBAL_F32 => bits <= u128::from(u32::MAX),
        GLOBAL_I64 | GLOBAL_F64 => bits <= u128::from(u64::MAX),
        _ => true,
    }
}

impl Meta {
    /// Checks the rules of the format (module documentation, "Meta section")
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

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Parses and checks the header and meta of a whole file image, as
/// [`SnapshotFile::open`] does: everything but the data hash (that is
/// [`SnapshotFile::verify_data`]'s job), though the data section's length is
/// checked against the image.
pub fn parse(bytes: &[u8], expected_abi: u32) -> Result<(Header, Meta), FormatError> {
    let prefix = &bytes[..bytes.len().min(HEADER_LEN)];
    let header = check_header(prefix, bytes.len() as u64, expected_abi)?;
    // check_header made sure that meta_offset + meta_len == bytes.len().
    let meta = check_meta(&header, &bytes[header.meta_offset as usize..])?;
    Ok((header, meta))
}

/// An open snapshot file whose header and meta have been checked.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
    header: Header,
    meta: Meta,
}

impl SnapshotFile {
    /// Opens `path` and reads and checks its header and meta (with
    /// positioned reads), as [`parse`] does; the data hash is not checked
    /// (see [`SnapshotFile::verify_data`]).
    pub fn open(path: &Path, expected_abi: u32) -> Result<SnapshotFile, FormatError> {
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut prefix = vec![0u8; len.min(HEADER_LEN as u64) as usize];
        file.read_exact_at(&mut prefix, 0).map_err(io_err(path))?;
        let header = check_header(&prefix, len, expected_abi)?;
        // meta_len <= MAX_META_LEN was checked.
        let mut meta_bytes = vec![0u8; header.meta_len as usize];
        file.read_exact_at(&mut meta_bytes, header.meta_offset).map_err(io_err(path))?;
        let meta = check_meta(&header, &meta_bytes)?;
        Ok(SnapshotFile { path: path.to_path_buf(), file, header, meta })
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The checked meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (to mmap runs: they are page aligned in the file).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file offset of a data-section offset.
    pub fn file_offset(&self, data_offset: u64) -> u64 {
        self.header.data_offset + data_offset
    }

    /// Reads `buf.len()` bytes at a data-section offset. A range outside the
    /// data section is [`FormatError::Malformed`].
    pub fn read_data(&self, data_offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        if data_offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.header.data_len) {
            return Err(malformed(format!(
                "read of {} bytes at data offset {data_offset} is outside the data section ({} bytes)",
                buf.len(),
                self.header.data_len
            )));
        }
        self.file.read_exact_at(buf, self.file_offset(data_offset)).map_err(io_err(&self.path))
    }

    /// Reads a blob's content and checks its hash
    /// ([`FormatError::DataCorrupt`] on a mismatch).
    pub fn read_blob(&self, blob: &BlobEntry) -> Result<Vec<u8>, FormatError> {
        let len = usize::try_from(blob.len).map_err(|_| malformed("blob too large for this machine"))?;
        let mut buf = vec![0u8; len];
        self.read_data(blob.offset, &mut buf)?;
        if blob_hash(&buf) != blob.hash {
            return Err(FormatError::DataCorrupt);
        }
        Ok(buf)
    }

    /// Streams the whole data section through xxh3 and compares with the
    /// header, then checks each blob's hash; `progress(done, total)` is called
    /// about every 64 MiB and once at the end.
    pub fn verify_data(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), FormatError> {
        let total = self.header.data_len;
        let mut buf = vec![0u8; (VERIFY_CHUNK as u64).min(total) as usize];
        let mut hasher = Xxh3Default::new();
        let mut done = 0u64;
        let mut next_report = PROGRESS_EVERY;
        while done < total {
            let n = (buf.len() as u64).min(total - done) as usize;
            self.file.read_exact_at(&mut buf[..n], self.file_offset(done)).map_err(io_err(&self.path))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            if done >= next_report && done < total {
                progress(done, total);
                next_report = done + PROGRESS_EVERY;
            }
        }
        progress(done, total);
        if hasher.digest() != self.header.data_hash {
            return Err(FormatError::DataCorrupt);
        }
        for b in &self.meta.blobs {
            let mut hasher = Xxh3Default::new();
            let mut done = 0u64;
            while done < b.len {
                let n = (buf.len() as u64).min(b.len - done) as usize;
                self.read_data(b.offset + done, &mut buf[..n])?;
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            if hasher.digest() != b.hash {
                return Err(FormatError::DataCorrupt);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Writes one snapshot file: page data and blobs first (streamed, hashed as
/// they go), then [`Writer::finish`] with the meta. The file appears at its
/// path only when complete; a writer dropped before `finish` removes its
/// temporary file.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    abi_version: u32,
    kind: Kind,
    id: SnapshotId,
    data_len: u64,
    hasher: Box<Xxh3Default>,
    /// (offset, len, hash) of each blob appended.
    blobs: HashSet<(u64, u64, u64)>,
    failed: bool,
    finished: bool,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("tmp", &self.tmp)
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("data_len", &self.data_len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts a snapshot to be renamed over `path` by [`Writer::finish`]: creates
    /// `<dir>/.<file name>.tmp-<random>` beside it. A delta whose base is
    /// zero is [`FormatError::Malformed`].
    pub fn create(path: &Path, abi_version: u32, kind: Kind, id: SnapshotId) -> Result<Writer, FormatError> {
        if matches!(kind, Kind::Delta { base } if base.is_zero()) {
            return Err(malformed("a delta snapshot needs a nonzero base id"));
        }
        let Some(name) = path.file_name() else {
            return Err(FormatError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "a snapshot path must end in a file name"),
            });
        };
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", &SnapshotId::random().to_string()[..16]));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
        let mut w = Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            abi_version,
            kind,
            id,
            data_len: 0,
            hasher: Box::new(Xxh3Default::new()),
            blobs: HashSet::new(),
            failed: false,
            finished: false,
        };
        // The header's place; written for real by finish.
        w.write_raw(&ZERO_PAGE[..HEADER_LEN])?;
        Ok(w)
    }

    fn usable(&mut self) -> Result<&mut BufWriter<File>, FormatError> {
        match self.out.as_mut() {
            Some(out) if !self.failed => Ok(out),
            _ => Err(FormatError::Io {
                path: self.tmp.clone(),
                source: io::Error::other("an earlier write to this snapshot failed"),
            }),
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let r = self.usable()?.write_all(bytes);
        r.map_err(|e| {
            self.failed = true;
            FormatError::Io { path: self.tmp.clone(), source: e }
        })
    }

    fn write_data(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.write_raw(bytes)?;
        self.hasher.update(bytes);
        self.data_len += bytes.len() as u64;
        Ok(())
    }

    /// Appends page data (a multiple of [`PAGE_SIZE`] bytes, else
    /// [`FormatError::Malformed`]) and returns its offset in the data
    /// section.
    pub fn append_pages(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        if !bytes.len().is_multiple_of(PAGE_SIZE) {
            return Err(malformed(format!(
                "append_pages was given {} bytes, not a multiple of the page size {PAGE_SIZE}",
                bytes.len()
            )));
        }
        self.usable()?;
        let offset = self.data_len;
        self.write_data(bytes)?;
        Ok(offset)
    }

    /// Appends a blob's content, zero-padded to a page multiple, and returns
    /// its offset in the data section. Its [`BlobEntry`] must give this
    /// offset, `bytes.len()` and [`blob_hash`]`(bytes)`.
    pub fn append_blob(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        self.usable()?;
        let offset = self.data_len;
        self.write_data(bytes)?;
        let pad = bytes.len().next_multiple_of(PAGE_SIZE) - bytes.len();
        self.write_data(&ZERO_PAGE[..pad])?;
        self.blobs.insert((offset, bytes.len() as u64, blob_hash(bytes)));
        Ok(offset)
    }

    /// Bytes of data section written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Validates `meta` (the reader's rules, against the data written; each
    /// blob entry must describe a blob appended with [`Writer::append_blob`]),
    /// writes it and the header, fsyncs the file, renames it over the path
    /// atomically and fsyncs the directory. Returns the file's length.
    ///
    /// On an error the temporary file is removed and a file already at the
    /// path is untouched, except if only the final directory fsync fails: the
    /// new file is then in place but may not survive a crash.
    pub fn finish(mut self, meta: &Meta) -> Result<u64, FormatError> {
        self.usable()?;
        meta.validate(self.data_len)?;
        for b in &meta.blobs {
            if !self.blobs.contains(&(b.offset, b.len, b.hash)) {
                return Err(malformed(format!(
                    "blob {:#x} ({} bytes at data offset {}, hash {:#x}) does not match a blob appended with \
                     append_blob",
                    b.tag, b.len, b.offset, b.hash
                )));
            }
        }
        let meta_bytes = postcard::to_stdvec(meta).map_err(|e| malformed(format!("meta does not encode: {e}")))?;
        if meta_bytes.len() as u64 > MAX_META_LEN {
            return Err(malformed(format!(
                "the meta encodes to {} bytes, more than the limit of {MAX_META_LEN}",
                meta_bytes.len()
            )));
        }
        let header = Header {
            format_version: FORMAT_VERSION,
            abi_version: self.abi_version,
            page_size: PAGE_SIZE as u32,
            kind: self.kind,
            id: self.id,
            data_offset: HEADER_LEN as u64,
            data_len: self.data_len,
            data_hash: self.hasher.digest(),
            meta_offset: HEADER_LEN as u64 + self.data_len,
            meta_len: meta_bytes.len() as u64,
            meta_hash: xxh3_64(&meta_bytes),
        };
        self.write_raw(&meta_bytes)?;
        let tmp = self.tmp.clone();
        let out = self.out.take().expect("usable checked it");
        let file = out.into_inner().map_err(|e| FormatError::Io { path: tmp.clone(), source: e.into_error() })?;
        file.write_all_at(&header.to_bytes(), 0).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        self.finished = true;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        Ok(header.file_len())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            // Close without flushing what is buffered: the file goes anyway.
            if let Some(out) = self.out.take() {
                drop(out.into_parts());
            }
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

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
        };
        let mut b = h.to_bytes();
        b.extend_from_slice(data);
        b.extend_from_slice(meta_bytes);
        b
    }

    fn image(data: &[u8], meta: &Meta) -> Vec<u8> {
        image_with(Kind::Full, data, &postcard::to_stdvec(meta).unwrap())
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

    // --- round trips -------------------------------------------------------

    #[test]
    fn round_trip_two_reactors_sharing_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.snap");
        let id = SnapshotId::random();
        let len = write_sample(&path, id);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);

        let f = SnapshotFile::open(&path, ABI).unwrap();
        let (data, meta) = sample();
        assert_eq!(f.meta(), &meta);
        assert_eq!(f.path(), path);
        let h = f.header();
        assert_eq!((h.format_version, h.abi_version, h.page_size), (FORMAT_VERSION, ABI, PAGE_SIZE as u32));
        assert_eq!((h.kind, h.id), (Kind::Full, id));
        assert_eq!((h.data_offset, h.data_len, h.file_len()), (4096, data.len() as u64, len));
        assert_eq!(h.data_hash, xxh3_64(&data));
        assert_eq!(f.file_offset(PAGE_SIZE as u64), (HEADER_LEN + PAGE_SIZE) as u64);
        assert_eq!(f.file().metadata().unwrap().len(), len);

        let mut buf = vec![0u8; 2 * PAGE_SIZE];
        f.read_data(0, &mut buf).unwrap();
        assert_eq!(buf, data[..2 * PAGE_SIZE]);
        let mut one = vec![0u8; PAGE_SIZE];
        f.read_data(2 * PAGE_SIZE as u64, &mut one).unwrap();
        assert_eq!(one, data[2 * PAGE_SIZE..3 * PAGE_SIZE]);
        assert_eq!(f.read_blob(&meta.blobs[0]).unwrap(), (0..100u8).collect::<Vec<_>>());
        assert!(matches!(f.read_data(3 * PAGE_SIZE as u64, &mut buf), Err(FormatError::Malformed(_))));

        let mut calls = vec![];
        f.verify_data(&mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(calls.last(), Some(&(data.len() as u64, data.len() as u64)));

        // The reader on bytes agrees with the file reader.
        let bytes = fs::read(&path).unwrap();
        let (h2, m2) = parse(&bytes, ABI).unwrap();
        assert_eq!((&h2, &m2), (f.header(), f.meta()));
        assert_eq!(bytes[..HEADER_LEN], h2.to_bytes()[..]);
    }

    #[test]
    fn delta_and_empty_snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.snap");
        let base = SnapshotId::random();
        let w = Writer::create(&path, ABI, Kind::Delta { base }, SnapshotId::random()).unwrap();
        let mut r = reactor(1);
        r.runs = vec![Run { first_page: 3, pages: 2, data: None }];
        let meta = Meta { created_unix_ms: 1, blobs: vec![], reactors: vec![r] };
        w.finish(&meta).unwrap();
        let f = SnapshotFile::open(&path, ABI).unwrap();
        assert_eq!(f.header().kind, Kind::Delta { base });
        assert_eq!(f.header().data_len, 0);
        assert_eq!(f.meta(), &meta);
        f.verify_data(&mut |_, _| {}).unwrap();

        assert!(matches!(
            Writer::create(&path, ABI, Kind::Delta { base: SnapshotId::ZERO }, SnapshotId::random()),
            Err(FormatError::Malformed(_))
        ));
        // A writer that fails at create leaves nothing behind.
        assert_eq!(dir_names(dir.path()), vec!["d.snap"]);
    }

    #[test]
    fn large_appends_go_straight_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.snap");
        let big = page(3, 3 * WRITE_BUFFER / PAGE_SIZE);
        let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
        w.append_pages(&page(1, 1)).unwrap();
        let off = w.append_pages(&big).unwrap();
        let mut r = reactor(1);
        r.memory_size = 256 * WASM_PAGE_SIZE;
        r.runs = vec![
            Run { first_page: 0, pages: 1, data: Some(0) },
            Run { first_page: 1, pages: (big.len() / PAGE_SIZE) as u64, data: Some(off) },
        ];
        w.finish(&Meta { created_unix_ms: 0, blobs: vec![], reactors: vec![r] }).unwrap();
        let f = SnapshotFile::open(&path, ABI).unwrap();
        let mut buf = vec![0u8; big.len()];
        f.read_data(off, &mut buf).unwrap();
        assert!(buf == big);
        f.verify_data(&mut |_, _| {}).unwrap();
    }

    #[test]
    fn snapshot_ids() {
        let a = SnapshotId::random();
        let b = SnapshotId::random();
        assert_ne!(a, b);
        assert!(!a.is_zero() && SnapshotId::ZERO.is_zero());
        let s = a.to_string();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(SnapshotId([0xab; 16]).to_string(), "ab".repeat(16));
        assert_eq!(format!("{:?}", SnapshotId([1; 16])), format!("SnapshotId({})", "01".repeat(16)));
        let f = fallback_random();
        assert_ne!(f, [0; 16]);
        assert_ne!(f, fallback_random());
    }

    // --- refusals, in check order -------------------------------------------

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
        for v in [0u32, 2, 0xffff_ffff] {
            // Patched and re-hashed: only the version is wrong.
            let mut b = good.clone();
            b[8..12].copy_from_slice(&v.to_le_bytes());
            rehash_header(&mut b);
            match parse(&b, ABI) {
                Err(FormatError::FormatVersion { found, supported }) => {
                    assert_eq!((found, supported), (v, FORMAT_VERSION))
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
        let newer = FormatError::FormatVersion { found: 2, supported: 1 }.to_string();
        let older = FormatError::FormatVersion { found: 0, supported: 1 }.to_string();
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
        for cut in [112usize, 2000, HEADER_LEN, HEADER_LEN + 1, HEADER_LEN + 5000, meta_offset as usize, good.len() - 1]
        {
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

        // A damaged blob: found by the data hash, and by read_blob alone.
        let mut b = fs::read(&path).unwrap();
        b[HEADER_LEN + 5000] ^= 0x80;
        b[HEADER_LEN + 3 * PAGE_SIZE + 10] ^= 1;
        fs::write(&path, &b).unwrap();
        let f = SnapshotFile::open(&path, ABI).unwrap();
        assert!(matches!(f.verify_data(&mut |_, _| {}), Err(FormatError::DataCorrupt)));
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
        let mut mb = postcard::to_stdvec(&good).unwrap();
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
        runs.extend_from_slice(&[0, 0, 0, 0]);
        varint(huge, &mut runs);
        let mut payload = vec![];
        reactor_head(&mut payload);
        payload.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        varint(huge, &mut payload);
        payload.extend_from_slice(&[1; 64]);
        // A run count just over the limit, with nothing behind it.
        let mut runs_over = vec![];
        reactor_head(&mut runs_over);
        runs_over.extend_from_slice(&[0, 0, 0, 0]);
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
        ] {
            let img = image_with(Kind::Full, &[], &meta);
            let t = Instant::now();
            let r = parse(&img, ABI);
            assert!(matches!(r, Err(FormatError::Malformed(_))), "{what}: {r:?}");
            assert!(t.elapsed() < Duration::from_secs(1), "{what} took {:?}", t.elapsed());
        }
    }

    // --- atomicity ----------------------------------------------------------

    #[test]
    fn finish_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.snap");
        write_sample(&path, SnapshotId([1; 16]));
        let id2 = SnapshotId([2; 16]);
        write_sample(&path, id2);
        assert_eq!(SnapshotFile::open(&path, ABI).unwrap().header().id, id2);
        assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
    }

    #[test]
    fn dropped_writer_leaves_existing_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.snap");
        write_sample(&path, SnapshotId::random());
        let before = fs::read(&path).unwrap();
        {
            let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
            w.append_pages(&page(9, 3)).unwrap();
            assert_eq!(dir_names(dir.path()).len(), 2);
        }
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
    }

    #[test]
    fn invalid_finish_leaves_existing_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.snap");
        write_sample(&path, SnapshotId::random());
        let before = fs::read(&path).unwrap();
        let (data, good) = sample();
        let attempt = |meta: &Meta| {
            let mut w = Writer::create(&path, ABI, Kind::Full, SnapshotId::random()).unwrap();
            w.append_pages(&data[..3 * PAGE_SIZE]).unwrap();
            w.append_blob(&data[3 * PAGE_SIZE..3 * PAGE_SIZE + 100]).unwrap();
            w.finish(meta)
        };
        for (what, brk) in breakers() {
            let mut m = good.clone();
            brk(&mut m);
            assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))), "{what}");
        }
        // Blob entries must describe what append_blob wrote.
        let mut m = good.clone();
        m.blobs[0].hash ^= 1;
        assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))));
        let mut m = good.clone();
        m.blobs[0].len = 99;
        assert!(matches!(attempt(&m), Err(FormatError::Malformed(_))));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(dir_names(dir.path()), vec!["cp.snap"]);
        attempt(&good).unwrap();
    }

    #[test]
    fn append_pages_wants_whole_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(&dir.path().join("x"), ABI, Kind::Full, SnapshotId::random()).unwrap();
        assert!(matches!(w.append_pages(&[0; 100]), Err(FormatError::Malformed(_))));
        assert_eq!(w.append_pages(&[]).unwrap(), 0);
        assert_eq!(w.append_blob(&[]).unwrap(), 0);
        assert_eq!(w.append_blob(&[1]).unwrap(), 0);
        assert_eq!(w.append_blob(&[2; PAGE_SIZE]).unwrap(), PAGE_SIZE as u64);
        assert_eq!(w.data_len(), 2 * PAGE_SIZE as u64);
        let e = Writer::create(Path::new("/"), ABI, Kind::Full, SnapshotId::random()).unwrap_err();
        assert!(matches!(e, FormatError::Io { .. }), "{e:?}");
    }

    // --- properties ---------------------------------------------------------

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
        let envelope =
            (any::<u8>(), any::<u8>(), any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..64))
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
}
