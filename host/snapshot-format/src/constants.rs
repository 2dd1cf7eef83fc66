//! The format's fixed numbers (see the crate documentation for where each
//! appears), and the header's internal offsets and kind codes.
#![forbid(unsafe_code)]

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"RSNAP\r\n\x1a";
/// The format version this host writes (it reads this one and
/// [`FORMAT_VERSION_1`]).
pub const FORMAT_VERSION: u32 = 2;
/// The first format version: no page checksums, no outstanding requests.
/// Still read (files already stored must not be lost), written only on
/// request ([`Writer::create_version`](crate::Writer::create_version)).
pub const FORMAT_VERSION_1: u32 = 1;
/// Format version 2 with its data section stored compressed, in frames
/// (see "Version 3" in the crate documentation). Written on request
/// ([`Writer::create_compressed`](crate::Writer::create_compressed)); the
/// highest version this host reads.
pub const FORMAT_VERSION_COMPRESSED: u32 = 3;
/// The codec of a version 3 file's frames: LZ4 block format.
pub const CODEC_LZ4: u32 = 1;
/// Uncompressed bytes per frame that [`Writer::create_compressed`](crate::Writer::create_compressed) uses.
pub const DEFAULT_FRAME_LEN: u32 = 1 << 20;
/// The largest frame a reader accepts (16 MiB uncompressed): what one
/// read may have to decompress to reach one page.
pub const MAX_FRAME_LEN: u32 = 16 << 20;
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
/// The most reactors one checkpoint may hold.
pub const MAX_REACTORS: usize = 1 << 22;
/// The most blobs one checkpoint may store.
pub const MAX_BLOBS: usize = 1 << 22;
/// The largest blob (256 MiB, the reactor ABI's `MAX_BLOB_LEN`).
pub const MAX_BLOB_LEN: u64 = 256 << 20;
/// The most blobs one reactor may hold (the reactor ABI's limit).
pub const MAX_HELD_BLOBS: usize = 4096;
/// The most messages one reactor's recorded inbox may hold.
pub const MAX_INBOX_PER_REACTOR: usize = 1 << 20;
/// The most outstanding requests one reactor may record.
pub const MAX_OUTSTANDING: usize = 1 << 16;
/// [`GlobalValue::ty`](crate::GlobalValue::ty) of an `i32` global (`bits` holds the low 32 bits).
pub const GLOBAL_I32: u8 = 0;
/// [`GlobalValue::ty`](crate::GlobalValue::ty) of an `i64` global (`bits` holds the low 64 bits).
pub const GLOBAL_I64: u8 = 1;
/// [`GlobalValue::ty`](crate::GlobalValue::ty) of an `f32` global (`bits` holds `f32::to_bits`).
pub const GLOBAL_F32: u8 = 2;
/// [`GlobalValue::ty`](crate::GlobalValue::ty) of an `f64` global (`bits` holds `f64::to_bits`).
pub const GLOBAL_F64: u8 = 3;
/// [`GlobalValue::ty`](crate::GlobalValue::ty) of a `v128` global.
pub const GLOBAL_V128: u8 = 4;

/// Bytes of the header covered by `header_hash`.
pub(crate) const HEADER_HASHED_LEN: usize = 104;
/// Bytes of the header holding fields (the rest of the page is zero).
pub(crate) const HEADER_FIELDS_LEN: usize = 112;
/// Bytes of a version 3 header holding fields: the version 2 fields, then
/// `stored_len`, `codec`, `frame_len` and `ext_hash`.
pub(crate) const HEADER_FIELDS_LEN_V3: usize = 136;
/// Flag of a frame table entry: the frame is stored as it is (compressing
/// it did not make it smaller).
pub(crate) const FRAME_RAW: u32 = 1 << 31;
pub(crate) const KIND_FULL: u32 = 0;
pub(crate) const KIND_DELTA: u32 = 1;
