//! The reactor ABI: the one definition both sides of the Wasm boundary compile.
//!
//! The host (`host/runtime/src/hostcalls.rs`, `host/runtime/src/engine/`)
//! and the guest side of this SDK both use the names, numbers and layouts
//! below, so they cannot disagree silently. Everything here is `no_std` and dependency-free.
//!
//! # Shape of the contract (ABI version 1)
//!
//! A reactor is a core Wasm module built for `wasm32-wasip1`.
//!
//! **The module carries** a custom section named [`ABI_SECTION`] holding
//! [`ABI_VERSION`] as 4 little-endian bytes. The host reads it before
//! instantiating anything and refuses a module without it or with another
//! version.
//!
//! **The module exports** (all `i32` are unsigned 32-bit in meaning):
//! - `memory` — its linear memory (the reactor's whole private heap);
//! - [`EXPORT_INIT`]`(len: i32) -> i32` — called once, right after
//!   instantiation, with the byte length of the init argument: one envelope
//!   (see below) of kind [`KIND_MESSAGE`] from the spawner. The guest reads it
//!   with [`IMPORT_INBOX_READ`]. Returns [`STATUS_OK`] or a guest-chosen
//!   non-zero code (the reactor then fails);
//! - [`EXPORT_RECEIVE`]`(len: i32, count: i32) -> i32` — delivers a *batch* of
//!   `count` envelopes, `len` bytes in all, which the guest reads with
//!   [`IMPORT_INBOX_READ`]. Returns [`STATUS_OK`] or non-zero (the reactor
//!   then fails);
//! - `_initialize` — optional (WASI reactor model); called before
//!   [`EXPORT_INIT`] if present.
//!
//! **The module may import** from module [`IMPORT_MODULE`] (all pointers are
//! offsets into the guest's own memory; a pointer/length pair that does not
//! lie inside that memory is a guest fault: the reactor fails, the host does
//! not):
//! - [`IMPORT_INBOX_READ`]`(ptr: i32, len: i32) -> i32` — copy the pending
//!   init argument or batch into `[ptr, ptr+len)`; returns the bytes copied
//!   (`min(len, remaining)`); successive calls continue where the last ended.
//! - [`IMPORT_SEND`]`(to: i64, ptr: i32, len: i32, flags: i32) -> i32` — send a
//!   one-way message; returns a `STATUS_*`.
//! - [`IMPORT_REQUEST`]`(to: i64, ptr: i32, len: i32, flags: i32) -> i64` — send
//!   a request; returns its correlation id (> 0) or a negative `STATUS_*`. The
//!   reply comes back later as an envelope of kind [`KIND_REPLY`] carrying that
//!   id.
//! - [`IMPORT_REPLY`]`(to: i64, corr: i64, ptr: i32, len: i32, flags: i32) -> i32`
//!   — answer the request `corr` that came from `to`; with [`FLAG_ERROR`] in
//!   `flags`, the payload is why the request failed (UTF-8 text).
//! - [`IMPORT_SPAWN`]`(mod_ptr: i32, mod_len: i32, init_ptr: i32, init_len: i32) -> i64`
//!   — start a new reactor; `[mod_ptr, mod_len)` is a module reference (see
//!   [`MODULE_REF_SELF`]); returns the new reactor's address (> 0) or a
//!   negative `STATUS_*`.
//! - [`IMPORT_SPAWN_DURABLE`]`(mod_ptr: i32, mod_len: i32, init_ptr: i32, init_len: i32, level: i32) -> i64`
//!   (optional) — [`IMPORT_SPAWN`], the new reactor journaled at `level`
//!   ([`DURABLE_WRITTEN`], [`DURABLE_SYNCED`] or [`DURABLE_STANDBY`]; anything else is
//!   [`STATUS_BAD_ARGUMENT`]); [`STATUS_SPAWN_REFUSED`] where the host keeps
//!   no journals or the module imports what a journal does not record.
//! - [`IMPORT_SELF_ADDRESS`]`() -> i64` — this reactor's address.
//! - [`IMPORT_SET_AFFINITY`]`(key: i64) -> i32` (optional) — for the rest of
//!   the current call, messages this reactor sends to other nodes pick their
//!   connection by `key` (an explicit partition key) instead of by their
//!   destination; 0 goes back to the destination. Messages with one key keep
//!   their order; returns [`STATUS_OK`].
//! - [`IMPORT_MOVE_NEAR`]`(peer: i64) -> i32` (optional) — asks the host to
//!   move this reactor, live and with its address, to the node where the
//!   reactor `peer` lives (e.g. one it talks to a lot), once the current
//!   call is over. Returns [`STATUS_OK`] when asked (the node moves it if
//!   `peer` lives elsewhere and no move of it is under way), or
//!   [`STATUS_BAD_ARGUMENT`] when `peer` is not a reactor's address.
//! - [`IMPORT_SUPERVISE`]`(strategy: i32, restart: i32, max_restarts: i32, within_ms: i64, backoff_ms: i64, attempts: i32) -> i32`
//!   (optional) — this reactor supervises the children it spawns with
//!   [`IMPORT_SPAWN_DURABLE`] as one group: when one fails, the
//!   [`STRATEGY_ONE_FOR_ONE`], [`STRATEGY_ONE_FOR_ALL`] or
//!   [`STRATEGY_REST_FOR_ONE`] members are restarted, each
//!   [`RESTART_RESUME`] (from its last snapshot and journal, up to the
//!   message that failed it) or [`RESTART_FRESH`] (from its spawn, with
//!   its init argument again); at most `max_restarts` restarts in the group
//!   within `within_ms`, restarts after the first in a window waiting
//!   `backoff_ms` (doubled each time); a message that fails a member is
//!   given to it `attempts` times in all, then it is a dead letter. One
//!   restart more *escalates*: the group's members stop, and this reactor
//!   fails (its own supervisor decides what follows; when it is restarted,
//!   so is its group). Applies to children spawned before and after the
//!   call; a later call replaces it. [`STATUS_OK`], or
//!   [`STATUS_BAD_ARGUMENT`] for an unknown strategy or restart, zero
//!   `attempts` or a negative number, [`STATUS_UNSUPPORTED`] where the host
//!   has no supervisor (a bare runtime, `host run`), [`STATUS_LIMIT`] past
//!   64 calls of `supervise`, `watch` and `trap_exits` in one call into the
//!   reactor.
//! - [`IMPORT_WATCH`]`(target: i64, op: i32) -> i32` (optional) —
//!   [`WATCH_MONITOR`]: when the reactor `target` (on any node) is gone for
//!   good — failed and not restarted, or stopped — this reactor gets an
//!   envelope of kind [`KIND_DOWN`] from it; at once if `target` is not a
//!   live reactor where it lives, and when its node is declared down. [`WATCH_LINK`]: both ways, and a linked
//!   reactor that is gone fails this one too (with its supervision, if it
//!   has one), unless this one traps exits ([`IMPORT_TRAP_EXITS`]), which
//!   turns that into a [`KIND_DOWN`] envelope. [`WATCH_DEMONITOR`] and
//!   [`WATCH_UNLINK`] undo them. A restart keeps the address and the
//!   mailbox, so it is not "gone". [`STATUS_OK`], or
//!   [`STATUS_BAD_ARGUMENT`] for an unknown `op` or a `target` that is not
//!   a reactor's address (or is the caller), [`STATUS_UNSUPPORTED`] where
//!   the host has no supervisor, [`STATUS_LIMIT`] past the calls one call
//!   may make (as for `supervise`). A reactor monitors and links at most
//!   4096 reactors at once; the host ignores more (and logs it).
//! - [`IMPORT_TRAP_EXITS`]`(on: i32) -> i32` (optional) — whether a linked
//!   reactor's end comes to this one as a [`KIND_DOWN`] envelope (`on` ≠
//!   0) instead of failing it (0, the start). [`STATUS_OK`].
//! - [`IMPORT_LOG`]`(level: i32, ptr: i32, len: i32)` — a UTF-8 log line.
//! - [`IMPORT_FAIL`]`(ptr: i32, len: i32)` — record a UTF-8 failure cause (the
//!   SDK's panic hook calls it before trapping); the host shows it as the
//!   reason the reactor failed.
//!
//! Shared immutable blobs (optional imports; a module that does not use them
//! need not import them). A blob is a byte string in host memory, one copy
//! however many reactors hold it, named by a *tag* (a positive `i64`, unique
//! across nodes and restarts, safe to put in messages and state). A reactor
//! *holds* a set of blobs (at most [`MAX_HELD_BLOBS`]; holding one twice is
//! holding it once) and reads only those; a blob lives while any reactor or
//! the host holds it. What a reactor holds survives its snapshots, by tag.
//! A blob is a capability: a reactor can open only a blob it created, one
//! it was given ([`IMPORT_BLOB_GIVE`]) or one the host published; for any
//! other tag, guessed or overheard, every call answers
//! [`STATUS_NO_SUCH_BLOB`], exactly as for a tag that does not exist.
//! - [`IMPORT_BLOB_CREATE`]`(ptr: i32, len: i32) -> i64` — copy `[ptr, ptr+len)`
//!   into a new blob the caller holds; returns its tag (> 0), or
//!   [`STATUS_LIMIT`] (over [`MAX_BLOB_LEN`] bytes, already holding
//!   [`MAX_HELD_BLOBS`], or the host cannot issue a tag right now).
//! - [`IMPORT_BLOB_OPEN`]`(tag: i64) -> i32` — start holding an existing blob
//!   the caller may open (given to it, e.g. with its tag in a message);
//!   [`STATUS_OK`], [`STATUS_NO_SUCH_BLOB`] or [`STATUS_LIMIT`].
//! - [`IMPORT_BLOB_GIVE`]`(tag: i64, to: i64) -> i32` — let the reactor `to`
//!   (on this node) open a blob the caller holds; [`STATUS_OK`],
//!   [`STATUS_NO_SUCH_BLOB`] (not held), or [`STATUS_LIMIT`] (the blob has
//!   [`MAX_BLOB_GRANTS`] grants already). A grant does not keep the blob
//!   alive, and lasts while the blob does.
//! - [`IMPORT_BLOB_LEN`]`(tag: i64) -> i64` — length of a held blob, or
//!   [`STATUS_NO_SUCH_BLOB`].
//! - [`IMPORT_BLOB_READ`]`(tag: i64, offset: i64, ptr: i32, len: i32) -> i64`
//!   — copy up to `len` bytes of a held blob from `offset` into
//!   `[ptr, ptr+len)` (which must lie in memory whatever is copied); returns
//!   the bytes copied (0 at the end), [`STATUS_NO_SUCH_BLOB`], or
//!   [`STATUS_BAD_ARGUMENT`] for an offset past the end.
//! - [`IMPORT_BLOB_CLOSE`]`(tag: i64) -> i32` — stop holding a blob;
//!   [`STATUS_OK`] or [`STATUS_NO_SUCH_BLOB`] if not held.
//!
//! Time and randomness reach the guest through WASI preview 1
//! (`clock_time_get`, `random_get`), which the host supplies.
//!
//! # Batch layout
//!
//! A batch is `count` envelopes back to back. Each envelope is an
//! [`ENVELOPE_HEADER_LEN`]-byte header followed by `len` payload bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 1 | kind: [`KIND_MESSAGE`], [`KIND_REQUEST`], [`KIND_REPLY`] or [`KIND_DOWN`] |
//! | 1  | 1 | flags: [`FLAG_TEXT`], [`FLAG_ERROR`] (a reply only) |
//! | 2  | 2 | reserved, zero |
//! | 4  | 4 | payload length `len`, u32 LE |
//! | 8  | 8 | sender address, u64 LE ([`HOST_ADDRESS`] for the outside world) |
//! | 16 | 8 | correlation id, u64 LE (0 for [`KIND_MESSAGE`]) |
//!
//! Payloads are serde values in `postcard`'s compact encoding, or JSON text
//! when [`FLAG_TEXT`] is set (used by the command line, which does not know a
//! reactor's types). Replies to a text request are text.

/// Version of this contract. Bump on any change to names, signatures or layouts.
pub const ABI_VERSION: u32 = 1;

/// Custom section that carries [`ABI_VERSION`] (4 bytes, little-endian).
pub const ABI_SECTION: &str = "reactor.abi";

/// Import module name for every host function below.
pub const IMPORT_MODULE: &str = "reactor";

/// Export: `(len: i32) -> i32`, once after instantiation.
pub const EXPORT_INIT: &str = "reactor_init";
/// Export: `(len: i32, count: i32) -> i32`, per batch.
pub const EXPORT_RECEIVE: &str = "reactor_receive";
/// Export: the linear memory.
pub const EXPORT_MEMORY: &str = "memory";
/// Export (optional): WASI reactor initializer.
pub const EXPORT_WASI_INITIALIZE: &str = "_initialize";

/// Import: `(ptr: i32, len: i32) -> i32`.
pub const IMPORT_INBOX_READ: &str = "inbox_read";
/// Import: `(to: i64, ptr: i32, len: i32, flags: i32) -> i32`.
pub const IMPORT_SEND: &str = "send";
/// Import: `(to: i64, ptr: i32, len: i32, flags: i32) -> i64`.
pub const IMPORT_REQUEST: &str = "request";
/// Import: `(to: i64, corr: i64, ptr: i32, len: i32, flags: i32) -> i32`.
pub const IMPORT_REPLY: &str = "reply";
/// Import: `(mod_ptr: i32, mod_len: i32, init_ptr: i32, init_len: i32) -> i64`.
pub const IMPORT_SPAWN: &str = "spawn";
/// Import (optional): `(mod_ptr: i32, mod_len: i32, init_ptr: i32, init_len: i32, level: i32) -> i64`.
pub const IMPORT_SPAWN_DURABLE: &str = "spawn_durable";
/// [`IMPORT_SPAWN_DURABLE`] level: journal records handed to the OS.
pub const DURABLE_WRITTEN: i32 = 1;
/// [`IMPORT_SPAWN_DURABLE`] level: on disk before what a call sends leaves.
pub const DURABLE_SYNCED: i32 = 2;
/// [`IMPORT_SPAWN_DURABLE`] level: also held by a standby on another node
/// (which takes the reactor over if its node goes down) before what a call
/// sends leaves.
pub const DURABLE_STANDBY: i32 = 3;
/// Import: `() -> i64`.
pub const IMPORT_SELF_ADDRESS: &str = "self_address";
/// Import (optional): `(key: i64) -> i32`.
pub const IMPORT_SET_AFFINITY: &str = "set_affinity";
/// Import (optional): `(peer: i64) -> i32`.
pub const IMPORT_MOVE_NEAR: &str = "move_near";
/// Import (optional): `(strategy: i32, restart: i32, max_restarts: i32, within_ms: i64, backoff_ms: i64, attempts: i32) -> i32`.
pub const IMPORT_SUPERVISE: &str = "supervise";
/// [`IMPORT_SUPERVISE`] strategy: only the member that failed restarts.
pub const STRATEGY_ONE_FOR_ONE: i32 = 1;
/// [`IMPORT_SUPERVISE`] strategy: every member of the group restarts.
pub const STRATEGY_ONE_FOR_ALL: i32 = 2;
/// [`IMPORT_SUPERVISE`] strategy: the member that failed and those
/// spawned after it restart.
pub const STRATEGY_REST_FOR_ONE: i32 = 3;
/// [`IMPORT_SUPERVISE`] restart: from the last snapshot and the journal,
/// up to the message that failed it (a member that did not fail: all of
/// its journal).
pub const RESTART_RESUME: i32 = 1;
/// [`IMPORT_SUPERVISE`] restart: from the spawn, with the init argument
/// again (the state starts over; its old journal is set aside).
pub const RESTART_FRESH: i32 = 2;
/// Import (optional): `(target: i64, op: i32) -> i32`.
pub const IMPORT_WATCH: &str = "watch";
/// [`IMPORT_WATCH`] op: be told when `target` is gone.
pub const WATCH_MONITOR: i32 = 1;
/// [`IMPORT_WATCH`] op: stop being told.
pub const WATCH_DEMONITOR: i32 = 2;
/// [`IMPORT_WATCH`] op: link both ways.
pub const WATCH_LINK: i32 = 3;
/// [`IMPORT_WATCH`] op: remove the link.
pub const WATCH_UNLINK: i32 = 4;
/// Import (optional): `(on: i32) -> i32`.
pub const IMPORT_TRAP_EXITS: &str = "trap_exits";
/// Import: `(level: i32, ptr: i32, len: i32)`.
pub const IMPORT_LOG: &str = "log";
/// Import: `(ptr: i32, len: i32)`.
pub const IMPORT_FAIL: &str = "fail";
/// Import (optional): `(ptr: i32, len: i32) -> i64`.
pub const IMPORT_BLOB_CREATE: &str = "blob_create";
/// Import (optional): `(tag: i64) -> i32`.
pub const IMPORT_BLOB_OPEN: &str = "blob_open";
/// Import (optional): `(tag: i64) -> i64`.
pub const IMPORT_BLOB_LEN: &str = "blob_len";
/// Import (optional): `(tag: i64, offset: i64, ptr: i32, len: i32) -> i64`.
pub const IMPORT_BLOB_READ: &str = "blob_read";
/// Import (optional): `(tag: i64) -> i32`.
pub const IMPORT_BLOB_CLOSE: &str = "blob_close";
/// Import (optional): `(tag: i64, to: i64) -> i32`.
pub const IMPORT_BLOB_GIVE: &str = "blob_give";

/// Largest blob (256 MiB); larger creates get [`STATUS_LIMIT`].
pub const MAX_BLOB_LEN: u32 = 256 << 20;
/// Most blobs one reactor holds at once; more get [`STATUS_LIMIT`].
pub const MAX_HELD_BLOBS: u32 = 4096;
/// Most reactors one blob may be given to; more get [`STATUS_LIMIT`].
pub const MAX_BLOB_GRANTS: u32 = 65536;

/// Envelope kind: a one-way message.
pub const KIND_MESSAGE: u8 = 1;
/// Envelope kind: a request; answer it with [`IMPORT_REPLY`].
pub const KIND_REQUEST: u8 = 2;
/// Envelope kind: the answer to a request this reactor made.
pub const KIND_REPLY: u8 = 3;
/// Envelope kind: a reactor this one monitors or is linked to is gone for
/// good. Only the host sends it; its sender is the reactor that is gone,
/// its correlation id is 0, and its payload is [`DOWN_MONITOR`] or
/// [`DOWN_LINK`] followed by the UTF-8 reason.
pub const KIND_DOWN: u8 = 4;
/// First byte of a [`KIND_DOWN`] payload: a monitor fired.
pub const DOWN_MONITOR: u8 = 0;
/// First byte of a [`KIND_DOWN`] payload: a linked reactor ended (this
/// reactor traps exits).
pub const DOWN_LINK: u8 = 1;

/// Envelope flag: the payload is JSON text, not postcard.
pub const FLAG_TEXT: u8 = 1;
/// Envelope flag, on a [`KIND_REPLY`] only: the request failed, and the
/// payload is the reason, UTF-8 text, not a value. A reactor sends one
/// with [`IMPORT_REPLY`]; the host sends one for a reactor whose reply it
/// could not take (over [`MAX_PAYLOAD_LEN`]). Added to ABI 1 after its
/// first release: a guest built before it refuses such a reply.
pub const FLAG_ERROR: u8 = 2;

/// Bytes in an envelope header.
pub const ENVELOPE_HEADER_LEN: usize = 24;

/// The address of "the outside world": messages from the host's API and the
/// command line come from here, and replies sent here go back to the caller.
pub const HOST_ADDRESS: u64 = 0;

/// Largest payload a single envelope may carry (16 MiB). Larger sends get
/// [`STATUS_TOO_LARGE`].
pub const MAX_PAYLOAD_LEN: u32 = 16 << 20;

/// Module reference: first byte of a spawn module reference. The reference is
/// just this byte: spawn another instance of the caller's own module.
pub const MODULE_REF_SELF: u8 = 0;
/// Module reference: this byte followed by the 32-byte SHA-256 of the module.
pub const MODULE_REF_HASH: u8 = 1;
/// Module reference: this byte followed by a UTF-8 name the host knows.
pub const MODULE_REF_NAME: u8 = 2;

/// Log levels for [`IMPORT_LOG`].
pub const LOG_ERROR: i32 = 1;
/// Log level.
pub const LOG_WARN: i32 = 2;
/// Log level.
pub const LOG_INFO: i32 = 3;
/// Log level.
pub const LOG_DEBUG: i32 = 4;
/// Log level.
pub const LOG_TRACE: i32 = 5;

/// Status: success.
pub const STATUS_OK: i32 = 0;
/// Status: no reactor has that address (or it has failed).
pub const STATUS_NO_SUCH_REACTOR: i32 = -1;
/// Status: the destination's inbox is full; try again later (backpressure).
pub const STATUS_INBOX_FULL: i32 = -2;
/// Status: payload larger than [`MAX_PAYLOAD_LEN`].
pub const STATUS_TOO_LARGE: i32 = -3;
/// Status: the module reference names no module the host has loaded.
pub const STATUS_NO_SUCH_MODULE: i32 = -4;
/// Status: an argument is malformed (bad flags, bad module reference, ...).
pub const STATUS_BAD_ARGUMENT: i32 = -5;
/// Status: the host refused to spawn (e.g. the reactor limit is reached).
pub const STATUS_SPAWN_REFUSED: i32 = -6;
/// Status: no live blob has that tag, or the caller does not hold it.
pub const STATUS_NO_SUCH_BLOB: i32 = -7;
/// Status: a limit was reached ([`MAX_BLOB_LEN`], [`MAX_HELD_BLOBS`]), or the
/// host cannot issue a tag or correlation id right now.
pub const STATUS_LIMIT: i32 = -8;
/// Status: this host does not offer the call (e.g. [`IMPORT_SUPERVISE`] or
/// [`IMPORT_WATCH`] in a bare runtime with no supervisor, as `host run`).
pub const STATUS_UNSUPPORTED: i32 = -9;

/// A decoded envelope header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// [`KIND_MESSAGE`], [`KIND_REQUEST`], [`KIND_REPLY`] or [`KIND_DOWN`].
    pub kind: u8,
    /// Bit set of `FLAG_*`.
    pub flags: u8,
    /// Payload length in bytes.
    pub len: u32,
    /// Sender's address.
    pub from: u64,
    /// Correlation id (requests and replies), else 0.
    pub corr: u64,
}

/// Why bytes could not be decoded as an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a header, or than the header's payload length.
    Truncated,
    /// Unknown kind byte.
    BadKind(u8),
    /// Flag bits this version does not define.
    BadFlags(u8),
    /// Reserved bytes not zero.
    Reserved,
}

impl EnvelopeHeader {
    /// Writes the header into the first [`ENVELOPE_HEADER_LEN`] bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than a header.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..ENVELOPE_HEADER_LEN];
        out[0] = self.kind;
        out[1] = self.flags;
        out[2] = 0;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.from.to_le_bytes());
        out[16..24].copy_from_slice(&self.corr.to_le_bytes());
    }

    /// Reads a header from the front of `bytes`, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        let kind = bytes[0];
        if !matches!(kind, KIND_MESSAGE | KIND_REQUEST | KIND_REPLY | KIND_DOWN) {
            return Err(DecodeError::BadKind(kind));
        }
        let flags = bytes[1];
        if flags & !(FLAG_TEXT | FLAG_ERROR) != 0 || flags & FLAG_ERROR != 0 && kind != KIND_REPLY {
            return Err(DecodeError::BadFlags(flags));
        }
        if bytes[2] != 0 || bytes[3] != 0 {
            return Err(DecodeError::Reserved);
        }
        let le32 = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[r]);
            u32::from_le_bytes(b)
        };
        let le64 = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[r]);
            u64::from_le_bytes(b)
        };
        Ok(Self { kind, flags, len: le32(4..8), from: le64(8..16), corr: le64(16..24) })
    }
}

/// Iterates the envelopes of a batch: yields `(header, payload)` pairs, or one
/// error and then stops.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> BatchReader<'a> {
    /// Reads envelopes from `batch`.
    pub fn new(batch: &'a [u8]) -> Self {
        Self { rest: batch, failed: false }
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<(EnvelopeHeader, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let item = EnvelopeHeader::decode(self.rest).and_then(|h| {
            let end = ENVELOPE_HEADER_LEN
                .checked_add(h.len as usize)
                .filter(|&e| e <= self.rest.len())
                .ok_or(DecodeError::Truncated)?;
            let payload = &self.rest[ENVELOPE_HEADER_LEN..end];
            self.rest = &self.rest[end..];
            Ok((h, payload))
        });
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = EnvelopeHeader { kind: KIND_REQUEST, flags: FLAG_TEXT, len: 7, from: 42, corr: 9 };
        let mut buf = [0u8; ENVELOPE_HEADER_LEN];
        h.encode(&mut buf);
        assert_eq!(EnvelopeHeader::decode(&buf), Ok(h));
    }

    #[test]
    fn decode_rejects_bad_fields() {
        let mut buf = [0u8; ENVELOPE_HEADER_LEN];
        EnvelopeHeader { kind: KIND_MESSAGE, flags: 0, len: 0, from: 1, corr: 0 }.encode(&mut buf);
        let mut b = buf;
        b[0] = 9;
        assert_eq!(EnvelopeHeader::decode(&b), Err(DecodeError::BadKind(9)));
        let mut b = buf;
        b[1] = 0x80;
        assert_eq!(EnvelopeHeader::decode(&b), Err(DecodeError::BadFlags(0x80)));
        // An error only on a reply.
        let mut b = buf;
        b[1] = FLAG_ERROR;
        assert_eq!(EnvelopeHeader::decode(&b), Err(DecodeError::BadFlags(FLAG_ERROR)));
        b[0] = KIND_REPLY;
        assert!(EnvelopeHeader::decode(&b).is_ok());
        let mut b = buf;
        b[3] = 1;
        assert_eq!(EnvelopeHeader::decode(&b), Err(DecodeError::Reserved));
        assert_eq!(EnvelopeHeader::decode(&buf[..10]), Err(DecodeError::Truncated));
    }

    #[test]
    fn batch_reader_stops_on_truncated_payload() {
        let mut batch = [0u8; 2 * ENVELOPE_HEADER_LEN + 3];
        EnvelopeHeader { kind: KIND_MESSAGE, flags: 0, len: 3, from: 1, corr: 0 }.encode(&mut batch);
        EnvelopeHeader { kind: KIND_MESSAGE, flags: 0, len: 100, from: 1, corr: 0 }
            .encode(&mut batch[ENVELOPE_HEADER_LEN + 3..]);
        let mut r = BatchReader::new(&batch);
        assert!(matches!(r.next(), Some(Ok((_, p))) if p.len() == 3));
        assert_eq!(r.next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(r.next(), None);
    }

    mod prop {
        use super::super::*;
        extern crate std;
        use proptest::prelude::*;
        use std::vec::Vec;

        proptest! {
            /// Arbitrary bytes never panic the decoder; whatever it accepts
            /// lies inside the input and re-encodes to the same bytes.
            #[test]
            fn batch_reader_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let mut consumed = 0usize;
                for item in BatchReader::new(&bytes) {
                    match item {
                        Ok((h, payload)) => {
                            prop_assert_eq!(payload.len(), h.len as usize);
                            let mut re = [0u8; ENVELOPE_HEADER_LEN];
                            h.encode(&mut re);
                            prop_assert_eq!(&re[..], &bytes[consumed..consumed + ENVELOPE_HEADER_LEN]);
                            consumed += ENVELOPE_HEADER_LEN + payload.len();
                        }
                        Err(_) => break,
                    }
                }
                prop_assert!(consumed <= bytes.len());
            }

            /// Encoded batches decode back to what was encoded.
            #[test]
            fn batches_roundtrip(envs in proptest::collection::vec(
                (1u8..=3, 0u8..=1, any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
            ) {
                let mut batch = Vec::new();
                for (kind, flags, from, corr, payload) in &envs {
                    let mut h = [0u8; ENVELOPE_HEADER_LEN];
                    EnvelopeHeader { kind: *kind, flags: *flags, len: payload.len() as u32, from: *from, corr: *corr }
                        .encode(&mut h);
                    batch.extend_from_slice(&h);
                    batch.extend_from_slice(payload);
                }
                let decoded: Vec<_> = BatchReader::new(&batch).map(|r| r.unwrap()).collect();
                prop_assert_eq!(decoded.len(), envs.len());
                for ((h, p), (kind, flags, from, corr, payload)) in decoded.iter().zip(&envs) {
                    prop_assert_eq!((h.kind, h.flags, h.from, h.corr), (*kind, *flags, *from, *corr));
                    prop_assert_eq!(*p, &payload[..]);
                }
            }
        }
    }
}
