//! The on-disk form of a *checkpoint*: one or more reactor snapshots taken
//! at one consistent moment, plus the shared immutable blobs they refer to
//! (stored once however many reactors refer to them).
//!
//! This comment is the authoritative specification of format version 2;
//! of version 3, which is version 2 with its data section stored
//! compressed (see "Version 3" below: written on request); and of version 1,
//! which this crate still reads (files already stored must not be lost):
//! version 1 is version 2 without the page checksums and without
//! [`ReactorEntry::outstanding`] (see "Version 1" below).
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
//! |      8 | `format_version` | `u32`      | [`FORMAT_VERSION`] (2), or [`FORMAT_VERSION_1`] (1)          |
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
//! [`parse`] / [`SnapshotFile::open`]) and, in version 2, page by page by the
//! page checksums (checked by [`SnapshotFile::check_pages`] /
//! [`SnapshotFile::verify_pages`] on the pages a restore uses, as it uses
//! them, and by [`parse_verified`]), the meta by `meta_hash`.
//!
//! ## Page checksums (version 2)
//!
//! Data page `i` (bytes `[i * 4096, (i + 1) * 4096)` of the data section,
//! blob padding included) has the checksum [`page_hash`]`(i, page)`:
//! xxh3-64 of its 4096 bytes with seed `i`, so a page copied to another
//! place does not pass there. A damaged page is
//! [`FormatError::PageCorrupt`], which names it.
//!
//! ## Meta section
//!
//! The [postcard](https://docs.rs/postcard) encoding of [`Meta`]
//! (postcard 1.x wire format: varint integers, length-prefixed sequences;
//! `EnvelopeRecord::payload` is encoded as postcard bytes, which is the same
//! wire form as a sequence of `u8`; [`ReactorEntry::outstanding`] is a
//! sequence of `(u64, u64)` pairs between `next_corr` and `runs`), followed
//! by the page checksums as postcard bytes: a varint length (8 × the number
//! of data pages, exactly) and the checksums, 8 bytes each, little-endian,
//! in page order ([`encode_meta`]). No byte may follow.
//!
//! Every sequence is bounded while it decodes, before anything is
//! allocated for it (a length prefix over the bound fails at once):
//!
//! | what | bound |
//! |---|---|
//! | reactors in a checkpoint | [`MAX_REACTORS`] (2^22) |
//! | blobs in a checkpoint | [`MAX_BLOBS`] (2^22) |
//! | globals of a reactor | [`MAX_GLOBALS_PER_REACTOR`] (10^6) |
//! | inbox messages of a reactor | [`MAX_INBOX_PER_REACTOR`] (2^20) |
//! | blobs held by a reactor | [`MAX_HELD_BLOBS`] (4096, the ABI's) |
//! | outstanding requests of a reactor | [`MAX_OUTSTANDING`] (65,536) |
//! | runs of a reactor | [`MAX_RUNS_PER_REACTOR`] (2^20) |
//! | bytes of an inbox payload | [`MAX_PAYLOAD_LEN`] (16 MiB) |
//! | bytes of page checksums | [`MAX_META_LEN`] |
//!
//! A decoded `Meta` must satisfy ([`Meta::validate`]):
//! - the bounds of the table above;
//! - blob tags are unique; each blob is at most [`MAX_BLOB_LEN`] (256 MiB)
//!   long, its `offset` is page aligned and `[offset, offset + len rounded
//!   up to a page)` lies within the data section;
//! - no two blobs' ranges overlap, and no run's data overlaps a blob's range
//!   ([`FormatError::Overlap`], naming both); runs may share data with other
//!   runs (it is only ever read);
//! - in a reactor's `outstanding`, each correlation id appears once;
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
//! one: magic ([`FormatError::NotASnapshot`]); format version (1, 2 or 3), when the file
//! is long enough to hold it ([`FormatError::FormatVersion`], before
//! anything else, since another version may lay out everything else
//! differently); at least the 112 bytes of header fields (136 in version 3)
//! ([`FormatError::TooShort`]); header hash and, in version 3, `ext_hash`
//! ([`FormatError::HeaderCorrupt`]);
//! ABI version; page size; codec and frame length (version 3); header field
//! consistency (kind and base id, offsets, alignment:
//! [`FormatError::Malformed`]); file length
//! ([`FormatError::Truncated`] / [`FormatError::TrailingBytes`]); header
//! padding; meta hash ([`FormatError::MetaCorrupt`]); meta decoding, the
//! number of page checksums, the frame table (version 3) and the rules above
//! ([`FormatError::Malformed`], [`FormatError::Overlap`]).
//!
//! # Version 1
//!
//! Header as above with `format_version` 1. Its meta section is the
//! postcard encoding of [`Meta`] whose reactor entries have no
//! `outstanding` field, with nothing after it: no page checksums, so its
//! data can only be checked whole (`data_hash`). Read as version 2 with
//! `outstanding` empty; [`Writer::create_version`] still writes it.
//!
//! # Version 3: a compressed data section
//!
//! Version 2 with the data section stored in compressed frames, for
//! snapshots kept or shipped rather than restored lazily (nothing of such
//! a file can be mapped: a restore reads and decompresses every page it
//! uses). The differences:
//! - `format_version` is 3, and the header has four more fields, so its
//!   zero padding starts at offset 136:
//!
//!   | offset | field        | type  | value |
//!   |-------:|--------------|-------|-------|
//!   |    112 | `stored_len` | `u64` | bytes the data section takes in the file |
//!   |    120 | `codec`      | `u32` | [`CODEC_LZ4`] (1): the LZ4 block format |
//!   |    124 | `frame_len`  | `u32` | uncompressed bytes per frame: a multiple of `page_size`, at most [`MAX_FRAME_LEN`] (16 MiB) |
//!   |    128 | `ext_hash`   | `u64` | xxh3-64 of header bytes `[112, 128)` |
//!
//! - `data_len` is the length of the data section *uncompressed*: every
//!   offset in the meta (runs, blobs) and every page checksum is of the
//!   data section uncompressed, exactly as in version 2.
//! - The data section in the file is `stored_len` bytes at offset 4096:
//!   the frames back to back. Frame `i` holds the uncompressed bytes
//!   `[i × frame_len, min((i + 1) × frame_len, data_len))`, either as an
//!   LZ4 block (it must decompress to exactly that many bytes, else
//!   [`FormatError::FrameCorrupt`]) or as they are.
//! - `meta_offset` is `4096 + stored_len`; `data_hash` is xxh3-64 of the
//!   `stored_len` bytes as stored.
//! - The meta section is version 2's followed by the frame table as
//!   postcard bytes: a varint length (4 × the number of frames,
//!   `ceil(data_len / frame_len)`, exactly) and one `u32` per frame,
//!   little-endian: its stored length, with bit 31 set when it is stored as
//!   it is (its stored length then equals its uncompressed length; a
//!   compressed frame takes at least 1 byte and at most LZ4's bound for
//!   its length). The stored lengths add up to `stored_len`. No byte may
//!   follow.
//!
//! A reader decompresses at most one frame to reach any byte, so the memory
//! a hostile file can make it use is bounded by `frame_len`.
//!
//! # Writing
//!
//! [`Writer`] streams page data into a temporary file beside the target
//! (created with mode [`FILE_MODE`], `0600`: a snapshot holds whole memory
//! images), computing the page checksums as it goes, then writes the meta
//! and the header, fsyncs, renames the file over the target and fsyncs the
//! directory: readers see the old file or the new one, never a mix.
#![forbid(unsafe_code)]

// Modules, each using only those listed before it.

/// The format's fixed numbers: magic, version, sizes, limits, type codes.
mod constants;

/// [`SnapshotId`].
mod id;

/// [`FormatError`] and the helpers that build it.
mod error;

/// The decoded forms of the header and the meta ([`Header`], [`Meta`] and
/// its entries), their encoding, and the rules a meta must satisfy.
mod model;

/// The reader: header and meta checks, [`parse`], [`SnapshotFile`].
mod read;

/// The writer: [`Writer`].
mod write;

#[cfg(test)]
mod tests;

pub use constants::{
    CODEC_LZ4, DEFAULT_FRAME_LEN, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_COMPRESSED, MAX_FRAME_LEN, GLOBAL_F32, GLOBAL_F64, GLOBAL_I32, GLOBAL_I64, GLOBAL_V128, HEADER_LEN, MAGIC,
    MAX_BLOB_LEN, MAX_BLOBS, MAX_GLOBALS_PER_REACTOR, MAX_HELD_BLOBS, MAX_INBOX_PER_REACTOR, MAX_MEMORY,
    MAX_META_LEN, MAX_OUTSTANDING, MAX_PAYLOAD_LEN, MAX_REACTORS, MAX_RUNS_PER_REACTOR, PAGE_SIZE, WASM_PAGE_SIZE,
};
pub use error::FormatError;
pub use id::SnapshotId;
pub use model::{
    BlobEntry, EnvelopeRecord, GlobalValue, Header, Kind, Meta, ReactorEntry, Run, Stored, blob_hash, encode_meta,
    page_hash,
};
pub use read::{SnapshotFile, parse, parse_verified};
pub use write::{FILE_MODE, Writer};
