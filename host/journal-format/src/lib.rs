//! The on-disk form of a reactor's *journal*: every input one reactor
//! consumed since a snapshot (or since it was spawned), in the order it
//! consumed them, so that the snapshot plus the journal reproduce it.
//!
//! This comment is the authoritative specification of format version 1.
//!
//! # Layout
//!
//! All integers are little-endian unless they are varints. A journal file
//! (a *segment*) is a header of [`HEADER_LEN`] bytes followed by records
//! back to back, up to the end of the file.
//!
//! ## Header (offset 0, [`HEADER_LEN`] = 128 bytes)
//!
//! | offset | field         | type       | value |
//! |-------:|---------------|------------|-------|
//! |      0 | `magic`       | `[u8; 8]`  | [`MAGIC`] = `b"RJRNL\r\n\x1a"` |
//! |      8 | `version`     | `u32`      | [`VERSION`] (1) |
//! |     12 | `level`       | `u32`      | durability level: 0 written, 1 synced, 2 standby ([`Level`]) |
//! |     16 | `address`     | `u64`      | the reactor's address |
//! |     24 | `module`      | `[u8; 32]` | SHA-256 of the module it runs |
//! |     56 | `first_step`  | `u64`      | the reactor's step number of the segment's first step record |
//! |     64 | `base`        | `[u8; 16]` | id of the snapshot the segment starts from; all zero: it starts at the reactor's spawn, and its first record is `INIT` |
//! |     80 | `base_digest` | `u64`      | [state digest](#state-digest) at the segment's start (0 when it starts at spawn) |
//! |     88 | `created_ms`  | `u64`      | creation time, milliseconds since the Unix epoch |
//! |     96 | reserved      | `[u8; 24]` | zero; a nonzero byte is [`JournalError::Header`] |
//! |    120 | `header_hash` | `u64`      | xxh3-64 of bytes `[0, 120)` |
//!
//! ## Records
//!
//! ```text
//! len    varint (u32), 1 ..= MAX_BODY: the body's length
//! check  u32: the low 32 bits of xxh3-64(body, seed = record_seed(index, len))
//! body   len bytes; its first byte is the record's type
//! ```
//!
//! `index` is the record's position in the file (0 for the first record),
//! so a record moved, repeated or dropped fails its check; the seed mixes
//! in `len`, so a damaged length does too. A file that ends inside a record
//! is [`JournalError::Torn`] (what a crash in the middle of a write
//! leaves); any other damage is [`JournalError::Damaged`]; both name the
//! record and its offset.
//!
//! Body types (`body[0]`, low 4 bits; the high 4 bits are flags):
//!
//! - `INIT` (1) and `STEP` (2): one call into the reactor — `INIT` its
//!   start-up (`reactor_init`, the spawn's init payload as input), `STEP` one
//!   message delivered (`reactor_receive` with a batch of one). Flags:
//!   bit 4 *failed* (the call failed the reactor; a `FAILURE` record
//!   follows), bit 5 *has correlation id*, bit 6 *same sender*; bit 7 is
//!   zero. Then:
//!   ```text
//!   kind_flags  u8: the envelope's kind (low 4 bits) and flags (high 4 bits)
//!   from        u64: the sender; absent when bit 6 is set (the sender of the
//!               previous call record of the segment)
//!   corr        varint, only when bit 5 is set: the zigzag-coded difference
//!               (wrapping, as i64) between the correlation id and that of the
//!               previous call record of the segment that had one (0 for the
//!               first); the id is never 0
//!   digest      u32: the output digest after this call (see below)
//!   tape_len    varint (u32)
//!   tape        tape_len bytes: the host-call results of the call, in call order (see below)
//!   payload     the rest of the body
//!   ```
//! - `FAILURE` (3): the failure of the call just before (UTF-8 text, at
//!   most [`MAX_FAILURE_TEXT`] bytes: its reason, then its guest backtrace).
//!   It follows a failed `INIT`/`STEP` and nothing follows it.
//! - `END` (4): the segment ends at a snapshot: `next` (`[u8; 16]`, the id
//!   of that snapshot, not zero) and `digest` (`u64`, the state digest there).
//!   Nothing follows it.
//!
//! A segment whose `base` is zero starts with `INIT`; `INIT` appears nowhere
//! else. The *step number* of a call record is `first_step` plus the number
//! of call records before it.
//!
//! ## Output digest
//!
//! Everything a reactor's calls do to the world (messages sent, requests,
//! replies, spawns, blobs created and given) is hashed, in order, into a
//! running xxh3-64 digest that carries over from call to call (see the
//! runtime's `journal` module for what is hashed). A call record keeps its
//! low 32 bits. A replay computes the same digest: a divergence at one call
//! changes every digest after it, so missing it at one record (a 2^-32
//! chance) is caught at the next.
//!
//! ## State digest
//!
//! xxh3-64 over a reactor's memory and globals ([`StateDigest`]): the
//! memory's length (`u64`), then for every 4096-byte page that is not all
//! zero its index (`u64`) and bytes, then each mutable global's index (`u32`),
//! type (`u8`) and bits (`u128`).
//!
//! ## Tape
//!
//! Each entry is a call byte ([`Call`]) and its fields; integers are
//! varints, signed ones zigzag-encoded:
//!
//! | call | fields |
//! |---|---|
//! | `SEND` 1, `REPLY` 3, `BLOB_OPEN` 6, `BLOB_GIVE` 9, `BLOB_CLOSE` 10 | status (signed) |
//! | `REQUEST` 2, `SPAWN` 4, `BLOB_CREATE` 5, `BLOB_LEN` 7 | result (signed) |
//! | `BLOB_READ` 8 | result (signed); when ≥ 0, that many bytes follow |
//! | `CLOCK` 11 | clock id, errno, then the time in nanoseconds when errno is 0 |
//! | `RANDOM` 12 | errno; when 0, a length and that many bytes |
//! | `GROW` 13 | the memory size asked for (bytes), then one byte: 0 granted, refused by 1 the memory cap, 2 the reactor's byte budget, 3 the node's |
//!
//! Varints are LEB128, at most 10 bytes for 64 bits (5 for 32), with no
//! overlong final zero byte; anything else is malformed.
#![forbid(unsafe_code)]

mod error;
mod format;
mod tape;
#[cfg(test)]
mod tests;

pub use error::{JournalError, TapeError};
pub use format::{
    Cursor, Encoder, Header, Journal, Kind, Level, Located, OwnedStep, Record, Records, Step, Summary, encode_header, record_seed,
    HEADER_LEN, MAGIC, MAX_BODY, MAX_FAILURE_TEXT, VERSION,
};
pub use tape::{Call, Entry, StateDigest, TapeReader, TapeWriter};
