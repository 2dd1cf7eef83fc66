//! Message types of the example reactors in `guests/`.
//!
//! Shared by the guests (wasm32) and by the host's tests, demo and benchmarks
//! (native), so both sides of an exchange use one definition. Encoded with
//! postcard on the wire; the command line may send them as JSON instead.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Messages to `counter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterMsg {
    /// Add to the count (one-way; as a request, replies the new count).
    Add(u64),
    /// Request: replies the current count as `u64`.
    Get,
    /// Asks the host to move this counter next to the reactor with this
    /// address; replies whether the host took the request.
    MoveNear(u64),
}

/// Requests to `kv`. Every variant works as a one-way message too; as a
/// request it is answered with a [`KvReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReq {
    /// Store `value` under `key`; replies the previous value.
    Put { key: String, value: String },
    /// Replies the value under `key`.
    Get { key: String },
    /// Removes `key`; replies the removed value.
    Delete { key: String },
    /// Replies up to `limit` entries with `start <= key < end` (no end: to the
    /// last key), in key order.
    Range { start: String, end: Option<String>, limit: u32 },
    /// Generates `count` entries `"{prefix}{i:010}"` with pseudo-random
    /// printable values of `value_len` bytes from `seed` (grows state without
    /// shipping it); replies [`KvReply::Done`].
    Fill { prefix: String, count: u64, value_len: u32, seed: u64 },
    /// Replies [`KvReply::Stats`].
    Stats,
    /// Opens the shared blob `tag` and keeps holding it; replies
    /// [`KvReply::Blob`] (or [`KvReply::Refused`]).
    AttachBlob { tag: u64 },
    /// Replies [`KvReply::Bytes`] with up to `len` bytes from `offset` of a
    /// blob this reactor holds (or [`KvReply::Refused`]).
    ReadBlob { tag: u64, offset: u64, len: u32 },
    /// Creates a shared blob of `bytes` and keeps holding it; replies
    /// [`KvReply::Blob`] (or [`KvReply::Refused`]).
    PutBlob { bytes: Vec<u8> },
    /// Stops holding the blob `tag`; replies [`KvReply::Blob`] with what it
    /// was (or [`KvReply::Refused`]).
    DetachBlob { tag: u64 },
    /// Gives the blob `tag` it holds to the reactor `to`, which may then
    /// attach it; replies [`KvReply::Blob`] (or [`KvReply::Refused`]).
    GiveBlob { tag: u64, to: u64 },
}

/// Answers from `kv`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// A value, or none.
    Value(Option<String>),
    /// Entries from a range scan.
    Entries(Vec<(String, String)>),
    /// Entry count and total bytes of keys plus values.
    Stats { keys: u64, bytes: u64 },
    /// A fill finished; `keys` entries are now stored.
    Done { keys: u64 },
    /// A shared blob this reactor holds (or held, after `DetachBlob`).
    Blob { tag: u64, len: u64 },
    /// Bytes read from a blob.
    Bytes(Vec<u8>),
    /// A blob call was refused with this `abi::STATUS_*`.
    Refused { status: i64 },
}

/// Spawn argument of `pingpong`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInit {
    /// Partner to play with, if known at spawn time.
    pub peer: Option<u64>,
}

/// Messages to `pingpong`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PingMsg {
    /// One-way: answered by a `Pong` with the same `n` sent to the sender.
    Ping { n: u64 },
    /// One-way: the answer to a `Ping`.
    Pong { n: u64 },
    /// Request: replies the same number (request–response through the host).
    Echo(u64),
    /// Request: play `rounds` ping–pong exchanges with `peer` (a fresh
    /// partner spawned from this module if `None`), keeping `window` pings in
    /// flight; replies [`PingReport`] when the last pong arrives.
    /// With `requests`, each exchange is a request–response (`Echo`)
    /// instead of one-way `Ping`/`Pong`.
    Play { peer: Option<u64>, rounds: u64, window: u32, requests: bool },
    /// Request: replies [`PingReport`] with the counters so far.
    Report,
    /// Request: answered with the same bytes (a [`Bytes`] reply).
    BulkEcho { n: u64, data: Bytes },
    /// Request: play `rounds` request–response rounds with the reactor
    /// `peer`, each a [`PingMsg::BulkEcho`] of `bytes` bytes whose answer
    /// must be the same bytes, keeping `window` rounds in flight; replies
    /// [`BulkReport`] when the last answer arrives.
    PlayBulk { peer: u64, rounds: u64, window: u32, bytes: u32 },
    /// Request: put `rounds` values of `bytes` bytes into the `kv` reactor
    /// `kv` under the keys `"{prefix}{round}"`, keeping `window` puts in
    /// flight; replies [`BulkReport`] when the last put is answered.
    PlayKv { kv: u64, rounds: u64, window: u32, bytes: u32, prefix: String },
    /// Request: sends one `Ping` to each of `peers`, all under the partition
    /// key `key` (0: by destination, the default); replies the number sent.
    Scatter { peers: Vec<u64>, key: u64 },
}

/// A byte string that encodes as one run: with postcard a length and a copy
/// (a `Vec<u8>` would go element by element), with JSON an array of numbers
/// (a string is accepted too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bytes;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

/// What a `pingpong` reactor's [`PingMsg::PlayBulk`] or
/// [`PingMsg::PlayKv`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkReport {
    /// Rounds answered.
    pub rounds: u64,
    /// Answers that were not what they should be (echoed bytes differing
    /// from those sent, or a reply that did not decode).
    pub mismatches: u64,
    /// Payload bytes sent (request bodies).
    pub bytes_sent: u64,
    /// Payload bytes received (whole reply payloads).
    pub bytes_received: u64,
    /// From the play request to the last answer, in microseconds.
    pub elapsed_us: u64,
    /// Each round's time from its request to its answer, in microseconds,
    /// in the order the answers arrived (at most the first 100,000).
    pub round_us: Vec<u32>,
}

/// What a `pingpong` reactor has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReport {
    /// The partner of the last `Play`.
    pub peer: u64,
    /// Pings received.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// Requests made to the partner and answered.
    pub echoes: u64,
}

/// Commands to `faulty`, which misbehaves on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultyCmd {
    /// Request: behaves; replies the number plus one.
    Ok(u64),
    /// Executes `unreachable`.
    Trap,
    /// Panics with this message.
    Panic(String),
    /// Never returns.
    LoopForever,
    /// Allocates 1 MiB blocks until memory runs out.
    AllocForever,
    /// Divides by a zero it read from memory (integer trap).
    DivideByZero,
    /// Recurses until the Wasm stack overflows.
    StackOverflow,
    /// Calls the host's `send` with a pointer past the end of memory.
    BadSendPointer,
    /// Calls the host's `inbox_read` with a pointer past the end of memory.
    BadInboxPointer,
    /// Calls the host's `log` with a length that wraps around memory.
    BadLogLength,
    /// Calls the host's `spawn` with a garbage module reference; replies the
    /// status it got.
    BadSpawnRef,
    /// Sends a message over the payload limit; replies the status it got.
    HugeSend,
    /// Calls WASI `proc_exit` with this code.
    Exit(u32),
    /// Calls a `blob_*` host function directly; replies its raw `i64` result.
    Blob(BlobOp),
    /// Calls `blob_create` with a pointer past the end of memory.
    BadBlobCreatePointer,
    /// Opens the blob `tag`, then calls `blob_read` on it with a pointer past
    /// the end of memory.
    BadBlobReadPointer(u64),
    /// Creates up to `n` one-byte blobs (holding them all); replies
    /// `(created, status)`: the status of the first refusal, or 0.
    HoardBlobs(u32),
    /// Calls `std::thread::sleep` for this many milliseconds (WASI
    /// `poll_oneoff`), then replies 0.
    Sleep(u64),
    /// Prints `lines` lines of `len` bytes to stdout, then replies 0.
    Print { lines: u32, len: u32 },
    /// Calls the host's `reply` `times` times with `len` bytes to `to` with
    /// correlation id `corr`; replies `(accepted, last status)`.
    ForgeReply { to: u64, corr: u64, len: u32, times: u32 },
    /// Spawns up to `n` copies of itself; replies `(spawned, status)`: the
    /// status of the first refusal, or 0.
    SpawnMany(u32),
    /// Creates blobs of `len` bytes until refused (at most `max`); replies
    /// `(created, status)`.
    BigBlobs { len: u32, max: u32 },
    /// Sends `times` messages of `len` bytes to `to`; replies
    /// `(accepted, last status)`.
    Flood { to: u64, len: u32, times: u32 },
    /// Gives the held blob `tag` to `to`; replies the raw status.
    GiveBlob { tag: u64, to: u64 },
    /// Replies `len` bytes (as `Vec<u8>`), ignoring whether the reply went
    /// out, as careless reactors do (`let _ = cx.reply(…)`).
    BigReply(u32),
}

/// A raw `blob_*` call for `faulty` (see `guest_sdk::abi`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobOp {
    /// `blob_create` of these bytes.
    Create(Vec<u8>),
    /// `blob_create` of `len` bytes whatever the memory holds (to probe the
    /// size limit without the memory to back it).
    CreateLen(u32),
    /// `blob_open`.
    Open(u64),
    /// `blob_len`.
    Len(u64),
    /// `blob_read` into a fresh buffer of `len` bytes (at most 1 MiB); a
    /// result > 0 is the bytes copied.
    Read { tag: u64, offset: u64, len: u32 },
    /// `blob_close`.
    Close(u64),
}

/// Spawn argument of `migrant`, the reactor the migration benchmark moves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrantInit {
    /// Size of its state in MiB: allocated at start and every page filled
    /// with non-zero pseudo-random bytes (real pages, not zero pages).
    pub state_mib: u32,
    /// Pages of that state it dirties per second of wall time (one byte
    /// written in each of that many pseudo-randomly chosen pages), spread
    /// over the messages it handles; 0: none.
    pub write_pages_per_sec: u32,
    /// Seed of its pseudo-random fill and page choice.
    pub seed: u64,
}

/// Messages to `migrant`. Every one it handles dirties the pages owed at
/// its write rate since the last and measures the wall-clock gap since the
/// message before (its own view of downtime).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrantReq {
    /// Sequence number `seq` of the stream from `sender`, which should be
    /// the last one seen from that sender plus one; counted as ok, a gap
    /// (higher: a loss or a reordering) or a duplicate (not higher). As a
    /// request, replied with [`MigrantReply::Seq`] echoing `seq`.
    Seq { sender: u64, seq: u64 },
    /// Replies [`MigrantReply::Stats`].
    Stats,
    /// Forgets the recorded gaps (largest and recent); replies
    /// [`MigrantReply::Done`]. The sequence counters are kept.
    ResetGaps,
    /// Changes the write rate; replies [`MigrantReply::Done`].
    SetRate { write_pages_per_sec: u32 },
}

/// Answers from `migrant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrantReply {
    /// The `seq` of the [`MigrantReq::Seq`] answered.
    Seq { seq: u64 },
    /// What it has seen.
    Stats {
        /// Messages handled since it started (every kind).
        handled: u64,
        /// Sequence counters per sender, in the order senders were first seen.
        senders: Vec<SenderSeq>,
        /// Largest wall-clock gap between two messages it handled in a row
        /// since the last [`MigrantReq::ResetGaps`] (or its start), in ns.
        max_gap_ns: u64,
        /// The last [`MIGRANT_GAPS_KEPT`] gaps over [`MIGRANT_GAP_THRESHOLD_NS`]
        /// since the last reset, oldest first.
        big_gaps: Vec<Gap>,
        /// Bytes of its state (`state_mib` MiB).
        state_bytes: u64,
        /// Page writes done since it started.
        pages_written: u64,
        /// Its write rate now, pages per second.
        write_pages_per_sec: u32,
    },
    /// A command was done.
    Done,
}

/// One sender's stream as `migrant` saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderSeq {
    /// The sender (the `sender` of its [`MigrantReq::Seq`]s).
    pub sender: u64,
    /// The highest sequence number seen.
    pub last: u64,
    /// Sequence numbers that were the last plus one.
    pub ok: u64,
    /// Sequence numbers past the last plus one (numbers skipped: lost or
    /// reordered).
    pub gaps: u64,
    /// Sequence numbers at or below the last (duplicated or reordered).
    pub dups: u64,
}

/// A wall-clock gap between two messages `migrant` handled in a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// When the message ending the gap was handled: wall-clock ns since the
    /// Unix epoch (the host's realtime clock, comparable across nodes on
    /// one machine).
    pub at_ns: u64,
    /// Its length in ns.
    pub gap_ns: u64,
}

/// Gaps longer than this (200 µs) are recorded one by one by `migrant`.
pub const MIGRANT_GAP_THRESHOLD_NS: u64 = 200_000;
/// How many of the most recent big gaps `migrant` keeps.
pub const MIGRANT_GAPS_KEPT: usize = 64;
/// Most pages `migrant` writes while handling one message: after a long
/// pause it does not stall paying back its whole debt (the rest is
/// forgiven).
pub const MIGRANT_MAX_PAGES_PER_MESSAGE: u32 = 4096;

/// Spawn argument of `loadgen`, a closed-loop sender of
/// [`MigrantReq::Seq`] requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadgenInit {
    /// The reactor to load (an address, e.g. a `migrant`).
    pub target: u64,
    /// Its `sender` in every [`MigrantReq::Seq`].
    pub sender: u64,
    /// Requests kept outstanding.
    pub window: u32,
    /// Stop sending after this many sequence numbers (`None`: never).
    pub stop_after: Option<u64>,
}

/// Messages to `loadgen` (requests; each is replied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadgenReq {
    /// Replies [`LoadgenReply::Stats`].
    Stats,
    /// Clears the latency histogram (not the sequence or the counters);
    /// replies [`LoadgenReply::Done`].
    Reset,
    /// Stops sending new requests (those outstanding are still taken);
    /// replies [`LoadgenReply::Done`].
    Pause,
    /// Sends again, up to the window; replies [`LoadgenReply::Done`].
    Resume,
    /// Changes the window (takes effect as replies arrive: a smaller window
    /// sends nothing until fewer are outstanding); replies
    /// [`LoadgenReply::Done`].
    SetWindow { window: u32 },
}

/// Answers from `loadgen`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadgenReply {
    /// Its counters, and latencies since the last [`LoadgenReq::Reset`].
    Stats {
        /// Requests sent (sequence numbers used: the last one sent).
        sent: u64,
        /// Replies taken.
        replied: u64,
        /// Requests the host refused at once (the sequence number is kept
        /// and sent again with the next attempt).
        errors: u64,
        /// Replies not for the oldest outstanding request, or not echoing
        /// its sequence number, or undecodable.
        bad_replies: u64,
        /// Requests outstanding now.
        in_flight: u32,
        /// Latencies recorded since the last reset.
        samples: u64,
        /// Request-to-reply latency percentiles since the last reset, in ns
        /// (the upper bound of the histogram bucket: within ~3 % above).
        p50_ns: u64,
        p99_ns: u64,
        p999_ns: u64,
        /// Largest latency since the last reset, in ns (exact).
        max_ns: u64,
        /// Whether it is paused.
        paused: bool,
    },
    /// A command was done.
    Done,
}

/// Requests to `ledger`, a bank of accounts whose state depends on
/// everything a journal records: random account numbers, wall-clock and
/// monotonic time, a std `HashMap` (seeded from host randomness), requests
/// to another reactor, and a child it spawns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerReq {
    /// Opens an account; replies its number (random).
    Open { owner: String },
    /// Adds to an account; replies the new balance.
    Deposit { account: u64, amount: u64 },
    /// Takes from an account; replies the new balance. Panics (a
    /// production bug to replay) when the balance is short.
    Withdraw { account: u64, amount: u64 },
    /// Replies every account as `(number, owner, balance)`, in the
    /// `HashMap`'s iteration order (which its random seed decides).
    Accounts,
    /// Replies `(wall clock ns since the epoch, monotonic ns since start)`.
    Stamp,
    /// Asks the counter `at` to add `n`; the answer is kept and counted.
    Audit { at: u64, n: u64 },
    /// Spawns a `counter` child starting at `n`; replies its address.
    Child { n: u64 },
    /// The same, the child durable (`Context::spawn_durable`, synced);
    /// replies its address (0 if refused).
    DurableChild { n: u64 },
    /// Replies a digest of the whole state (accounts, audits, children).
    Digest,
    /// Allocates `mib` MiB and keeps it (memory growth, recorded).
    Grow { mib: u32 },
    /// Spawns a `counter` child starting at `n`, durable at level standby
    /// (`Context::spawn_durable`): its node gives it a standby on another
    /// node. Replies its address (0 if refused).
    StandbyChild { n: u64 },
}

/// Messages of the `overseer` test reactor: a supervisor of a group of
/// durable children of its own module, and each of those children (a
/// counter that fails on command), with monitors and links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverseerMsg {
    /// Declares how it supervises its durable children (`Context::supervise`):
    /// strategy `one_for_one`, `one_for_all` or `rest_for_one`; restart
    /// `resume` or `fresh`. Replies `"ok"` or the error.
    Supervise {
        strategy: String,
        restart: String,
        max_restarts: u32,
        within_ms: u64,
        attempts: u32,
        /// The SDK's default (10 ms) when not given.
        #[serde(default)]
        backoff_ms: Option<u64>,
    },
    /// Spawns a durable (synced) child of its own module starting at `n`;
    /// replies its address (0 if refused).
    Spawn { n: u64 },
    /// The same, not durable.
    SpawnPlain { n: u64 },
    /// Adds to its value; replies the new value.
    Add(u64),
    /// Replies its value.
    Get,
    /// Panics.
    Crash,
    /// Monitors, demonitors, links or unlinks the reactor; replies `"ok"`
    /// or the error.
    Monitor(u64),
    Demonitor(u64),
    Link(u64),
    Unlink(u64),
    /// Traps exits or stops; replies `"ok"`.
    TrapExits(bool),
    /// Replies the `Down`s it got, as `(address, reason, linked)`.
    Downs,
    /// Monitors the reactor `n` times in this one call; replies how many
    /// were accepted and the first refusal, if any.
    MonitorMany { target: u64, n: u32 },
}
