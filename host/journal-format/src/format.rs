//! The header, the records, their encoding and the checked reader.

use crate::error::JournalError;
use crate::tape::{get_varint, put_varint};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The first eight bytes of every journal (the `\r\n\x1a` catch text-mode
/// mangling, as in PNG's).
pub const MAGIC: [u8; 8] = *b"RJRNL\r\n\x1a";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 128;
/// The largest record body: a message's payload (16 MiB), with room for
/// what a call read from blobs and randomness.
pub const MAX_BODY: u32 = 512 << 20;
/// The longest failure text kept.
pub const MAX_FAILURE_TEXT: usize = 64 << 10;

const HASHED_HEADER: usize = 120;

/// When a reactor's output waits for its journal (see the runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// Handed to the operating system: survives the host process, not the
    /// machine.
    #[default]
    Written = 0,
    /// On this node's disk (`fdatasync`) before what the reactor sent in
    /// that call leaves it.
    Synced = 1,
    /// Held by the reactor's standby too.
    Standby = 2,
}

impl Level {
    /// The level with this code.
    pub fn from_code(c: u32) -> Option<Self> {
        Some(match c {
            0 => Level::Written,
            1 => Level::Synced,
            2 => Level::Standby,
            _ => return None,
        })
    }

    /// Its name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Written => "written",
            Level::Synced => "synced",
            Level::Standby => "standby",
        }
    }
}

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub level: Level,
    pub address: u64,
    pub module: [u8; 32],
    /// The step number of the segment's first call record.
    pub first_step: u64,
    /// The snapshot it starts from; zero: the reactor's spawn.
    pub base: [u8; 16],
    /// State digest at its start (0 from spawn).
    pub base_digest: u64,
    pub created_ms: u64,
}

impl Header {
    /// Whether the segment starts at the reactor's spawn (with `INIT`).
    pub fn from_spawn(&self) -> bool {
        self.base == [0; 16]
    }
}

/// Encodes `h`.
pub fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(h.level as u32).to_le_bytes());
    b[16..24].copy_from_slice(&h.address.to_le_bytes());
    b[24..56].copy_from_slice(&h.module);
    b[56..64].copy_from_slice(&h.first_step.to_le_bytes());
    b[64..80].copy_from_slice(&h.base);
    b[80..88].copy_from_slice(&h.base_digest.to_le_bytes());
    b[88..96].copy_from_slice(&h.created_ms.to_le_bytes());
    let hash = xxh3_64(&b[..HASHED_HEADER]);
    b[120..128].copy_from_slice(&hash.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn decode_header(b: &[u8]) -> Result<Header, JournalError> {
    if b.len() < HEADER_LEN || b[0..8] != MAGIC {
        return Err(JournalError::NotAJournal);
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(JournalError::Version(version));
    }
    if u64_at(b, 120) != xxh3_64(&b[..HASHED_HEADER]) {
        return Err(JournalError::Header("its checksum does not match"));
    }
    if b[96..120].iter().any(|&x| x != 0) {
        return Err(JournalError::Header("a reserved byte is not zero"));
    }
    let level = Level::from_code(u32_at(b, 12)).ok_or(JournalError::Header("unknown durability level"))?;
    let h = Header {
        level,
        address: u64_at(b, 16),
        module: b[24..56].try_into().expect("32 bytes"),
        first_step: u64_at(b, 56),
        base: b[64..80].try_into().expect("16 bytes"),
        base_digest: u64_at(b, 80),
        created_ms: u64_at(b, 88),
    };
    if h.from_spawn() && h.base_digest != 0 {
        return Err(JournalError::Header("a segment from spawn with a state digest"));
    }
    Ok(h)
}

/// A record's type (`body[0]`, low 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init = 1,
    Step = 2,
    Failure = 3,
    End = 4,
}

const FAILED: u8 = 1 << 4;
const HAS_CORR: u8 = 1 << 5;
const SAME_FROM: u8 = 1 << 6;

/// One call into the reactor: its input, what its host calls returned,
/// and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Envelope kind (`abi::KIND_*`), below 16.
    pub kind: u8,
    /// Envelope flags (`abi::FLAG_*`), below 16.
    pub flags: u8,
    pub from: u64,
    pub corr: u64,
    /// The call failed the reactor.
    pub failed: bool,
    /// Low 32 bits of the output digest after the call.
    pub digest: u32,
    pub tape: &'a [u8],
    pub payload: &'a [u8],
}

/// A call record's fields, owned: what a reader keeps past the bytes
/// (its buffers reused by [`OwnedStep::set`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedStep {
    pub kind: u8,
    pub flags: u8,
    pub from: u64,
    pub corr: u64,
    pub failed: bool,
    pub digest: u32,
    pub tape: Vec<u8>,
    pub payload: Vec<u8>,
}

impl OwnedStep {
    /// A view of it as a [`Step`].
    pub fn step(&self) -> Step<'_> {
        Step {
            kind: self.kind,
            flags: self.flags,
            from: self.from,
            corr: self.corr,
            failed: self.failed,
            digest: self.digest,
            tape: &self.tape,
            payload: &self.payload,
        }
    }

    /// Becomes a copy of `s`, in its own buffers.
    pub fn set(&mut self, s: &Step<'_>) {
        (self.kind, self.flags, self.from, self.corr, self.failed, self.digest) = (s.kind, s.flags, s.from, s.corr, s.failed, s.digest);
        self.tape.clear();
        self.tape.extend_from_slice(s.tape);
        self.payload.clear();
        self.payload.extend_from_slice(s.payload);
    }
}

/// A decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// The reactor's start-up call.
    Init(Step<'a>),
    /// One message delivered.
    Step(Step<'a>),
    /// Why the call before failed.
    Failure(&'a str),
    /// The segment ended at snapshot `next`, whose state digest is `digest`.
    End { next: [u8; 16], digest: u64 },
}

/// The checksum seed of record `index` with a body of `len` bytes.
pub fn record_seed(index: u64, len: u32) -> u64 {
    index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(len)
}

/// What a call record's sender and correlation id are coded against:
/// the previous call record of the same segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Prev {
    from: Option<u64>,
    corr: u64,
}

/// Encodes a segment's records in order (each record's coding depends on
/// its position and on the call record before it).
#[derive(Debug, Clone, Default)]
pub struct Encoder {
    next: u64,
    prev: Prev,
}

#[inline]
fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl Encoder {
    /// For a segment's first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Numbering records from `index`, as if the first of a segment (for
    /// tests and tools that forge a record in a given place).
    pub fn at(index: u64) -> Self {
        Self { next: index, prev: Prev::default() }
    }

    /// The index the next record gets.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Appends the next record to `out`, without allocating.
    ///
    /// # Panics
    /// If a step's kind or flags do not fit 4 bits, or the body is over
    /// [`MAX_BODY`]: the runtime never builds such a record.
    pub fn encode(&mut self, record: &Record<'_>, out: &mut Vec<u8>) {
        let index = self.next;
        self.next += 1;
        let start = out.len();
        match record {
            Record::Init(s) | Record::Step(s) => {
                assert!(s.kind < 16 && s.flags < 16, "envelope kind and flags fit 4 bits");
                let ty = if matches!(record, Record::Init(_)) { Kind::Init } else { Kind::Step } as u8;
                let same_from = self.prev.from == Some(s.from);
                let delta = zigzag(s.corr.wrapping_sub(self.prev.corr) as i64);
                let len = 2
                    + if same_from { 0 } else { 8 }
                    + if s.corr != 0 { varint_len(delta) } else { 0 }
                    + 4
                    + varint_len(s.tape.len() as u64)
                    + s.tape.len()
                    + s.payload.len();
                let len = u32::try_from(len).ok().filter(|&l| l <= MAX_BODY).expect("record within MAX_BODY");
                put_varint(out, u64::from(len));
                out.extend_from_slice(&[0; 4]);
                let body = out.len();
                let flags = if s.failed { FAILED } else { 0 }
                    | if s.corr != 0 { HAS_CORR } else { 0 }
                    | if same_from { SAME_FROM } else { 0 };
                out.push(ty | flags);
                out.push(s.kind | (s.flags << 4));
                if !same_from {
                    out.extend_from_slice(&s.from.to_le_bytes());
                }
                if s.corr != 0 {
                    put_varint(out, delta);
                    self.prev.corr = s.corr;
                }
                out.extend_from_slice(&s.digest.to_le_bytes());
                put_varint(out, s.tape.len() as u64);
                out.extend_from_slice(s.tape);
                out.extend_from_slice(s.payload);
                self.prev.from = Some(s.from);
                debug_assert_eq!(out.len() - body, len as usize);
                let check = xxh3_64_with_seed(&out[body..], record_seed(index, len)) as u32;
                out[body - 4..body].copy_from_slice(&check.to_le_bytes());
            }
            Record::Failure(text) => {
                let mut end = text.len().min(MAX_FAILURE_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                finish(index, start, out, |out| {
                    out.push(Kind::Failure as u8);
                    out.extend_from_slice(&text.as_bytes()[..end]);
                });
            }
            Record::End { next, digest } => finish(index, start, out, |out| {
                out.push(Kind::End as u8);
                out.extend_from_slice(next);
                out.extend_from_slice(&digest.to_le_bytes());
            }),
        }
    }
}

/// Writes a small record: its body by `body` at the end of `out` (from
/// `start`), then moved behind its length and check.
fn finish(index: u64, start: usize, out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    body(out);
    let b: Vec<u8> = out.drain(start..).collect();
    let len = b.len() as u32;
    put_varint(out, u64::from(len));
    out.extend_from_slice(&(xxh3_64_with_seed(&b, record_seed(index, len)) as u32).to_le_bytes());
    out.extend_from_slice(&b);
}

/// A record and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located<'a> {
    /// Its position in the file, from 0.
    pub index: u64,
    /// Its first byte's offset in the file.
    pub offset: u64,
    /// The step number of a call record (`Init`/`Step`); for the others,
    /// that of the call record before them.
    pub step: u64,
    pub record: Record<'a>,
}

/// A journal file's bytes, its header checked.
#[derive(Debug, Clone, Copy)]
pub struct Journal<'a> {
    header: Header,
    bytes: &'a [u8],
}

impl<'a> Journal<'a> {
    /// Checks the header of `bytes` (the whole file); records are checked
    /// as [`Journal::records`] reads them.
    pub fn open(bytes: &'a [u8]) -> Result<Self, JournalError> {
        Ok(Self { header: decode_header(bytes)?, bytes })
    }

    /// `bytes` whose header [`Journal::open`] has checked already, as
    /// `header` (a reader going back to a file it holds; the records are
    /// checked as they are read, as always).
    pub fn reopen(header: Header, bytes: &'a [u8]) -> Self {
        Self { header, bytes }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Its records in order, each checked (checksum, then form, then place);
    /// the first error ends the iteration.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: self.bytes,
            pos: HEADER_LEN,
            index: 0,
            step: self.header.first_step,
            calls: 0,
            from_spawn: self.header.from_spawn(),
            last: None,
            prev: Prev::default(),
            done: false,
        }
    }

    /// Reads every record: the counts, or the first error.
    pub fn check(&self) -> Result<Summary, JournalError> {
        let mut s = Summary { records: 0, steps: 0, bytes: self.bytes.len() as u64, failed: None, end: None };
        for r in self.records() {
            let r = r?;
            s.records += 1;
            match r.record {
                Record::Init(_) | Record::Step(_) => s.steps += 1,
                Record::Failure(text) => s.failed = Some((r.step, text.to_owned())),
                Record::End { next, digest } => s.end = Some((next, digest)),
            }
        }
        Ok(s)
    }
}

/// What [`Journal::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    /// Call records.
    pub steps: u64,
    pub bytes: u64,
    /// The step that failed the reactor, and why.
    pub failed: Option<(u64, String)>,
    /// The snapshot the segment ended at, and its state digest.
    pub end: Option<([u8; 16], u64)>,
}

/// The records of a [`Journal`] (see [`Journal::records`]).
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    pos: usize,
    index: u64,
    step: u64,
    calls: u64,
    from_spawn: bool,
    /// The type of the record before, and whether it was a failed call.
    last: Option<(Kind, bool)>,
    prev: Prev,
    done: bool,
}

/// Where a [`Records`] iteration is, to go on later from there
/// ([`Journal::resume`]) without holding the bytes borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pos: usize,
    index: u64,
    calls: u64,
    last: Option<(Kind, bool)>,
    prev: Prev,
    done: bool,
}

impl<'a> Journal<'a> {
    /// Its records from `cursor` on (taken from a [`Records`] of the same
    /// bytes).
    pub fn resume(&self, cursor: Cursor) -> Records<'a> {
        Records {
            pos: cursor.pos,
            index: cursor.index,
            calls: cursor.calls,
            last: cursor.last,
            prev: cursor.prev,
            done: cursor.done,
            ..self.records()
        }
    }
}

impl<'a> Records<'a> {
    /// An encoder that appends records after those read (what a writer
    /// going on with the segment needs).
    pub fn encoder(&self) -> Encoder {
        Encoder { next: self.index, prev: self.prev }
    }

    /// The byte offset of the next record (after the last one read).
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    /// Where it is.
    pub fn cursor(&self) -> Cursor {
        Cursor { pos: self.pos, index: self.index, calls: self.calls, last: self.last, prev: self.prev, done: self.done }
    }

    fn read(&mut self) -> Result<Option<Located<'a>>, JournalError> {
        let (index, offset) = (self.index, self.pos as u64);
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let damaged = |what| JournalError::Damaged { record: index, offset, what };
        let malformed = |what: &str| JournalError::Malformed { record: index, offset, what: what.to_owned() };
        let mut pos = self.pos;
        let len = match get_varint(self.bytes, &mut pos, 32) {
            Ok(l) => l,
            Err(None) => return Err(JournalError::Torn { record: index, offset }),
            Err(Some(_)) => return Err(damaged("its length is malformed")),
        };
        if len == 0 || len > u64::from(MAX_BODY) {
            return Err(damaged("its length is impossible"));
        }
        let left = (self.bytes.len() - pos) as u64;
        if left < 4 + len {
            return Err(JournalError::Torn { record: index, offset });
        }
        let check = u32_at(self.bytes, pos);
        let body = &self.bytes[pos + 4..pos + 4 + len as usize];
        if xxh3_64_with_seed(body, record_seed(index, len as u32)) as u32 != check {
            return Err(damaged("its checksum does not match"));
        }
        let (record, prev) = decode_body(body, self.prev).map_err(malformed)?;
        // Its place.
        let kind = match record {
            Record::Init(_) => Kind::Init,
            Record::Step(_) => Kind::Step,
            Record::Failure(_) => Kind::Failure,
            Record::End { .. } => Kind::End,
        };
        match (self.last, kind) {
            (Some((Kind::Failure | Kind::End, _)), _) => return Err(malformed("a record after the segment's end")),
            (Some((_, true)), k) if k != Kind::Failure => {
                return Err(malformed("a failed call not followed by its failure"));
            }
            (Some((_, false)) | None, Kind::Failure) => return Err(malformed("a failure without a failed call before it")),
            (None, k) if self.from_spawn && k != Kind::Init => {
                return Err(malformed("a segment from spawn that does not start with its init call"));
            }
            (_, Kind::Init) if !(self.from_spawn && self.last.is_none()) => {
                return Err(malformed("an init call that is not the first record of a segment from spawn"));
            }
            _ => {}
        }
        let failed = matches!(record, Record::Init(s) | Record::Step(s) if s.failed);
        let step = if matches!(kind, Kind::Init | Kind::Step) {
            let s = self.step + self.calls;
            self.calls += 1;
            s
        } else {
            (self.step + self.calls).saturating_sub(1)
        };
        self.last = Some((kind, failed));
        self.prev = prev;
        self.pos = pos + 4 + len as usize;
        self.index += 1;
        Ok(Some(Located { index, offset, step, record }))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Located<'a>, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn decode_body(body: &[u8], prev: Prev) -> Result<(Record<'_>, Prev), &'static str> {
    let ty = body[0];
    match ty & 0x0f {
        t @ (1 | 2) => {
            if ty & 0x80 != 0 {
                return Err("unknown call-record flags");
            }
            let (has_corr, same_from) = (ty & HAS_CORR != 0, ty & SAME_FROM != 0);
            let mut pos = 2;
            if body.len() < 2 {
                return Err("a call record too short for its fields");
            }
            let kf = body[1];
            let from = if same_from {
                prev.from.ok_or("the same sender as a call record that is not there")?
            } else {
                let b = body.get(pos..pos + 8).ok_or("a call record too short for its sender")?;
                pos += 8;
                u64::from_le_bytes(b.try_into().expect("8 bytes"))
            };
            let corr = if has_corr {
                let d = get_varint(body, &mut pos, 64).map_err(|_| "its correlation id is malformed")?;
                let delta = ((d >> 1) as i64) ^ -((d & 1) as i64);
                let c = prev.corr.wrapping_add(delta as u64);
                if c == 0 {
                    return Err("a correlation id flagged but zero");
                }
                c
            } else {
                0
            };
            let digest = u32::from_le_bytes(body.get(pos..pos + 4).ok_or("a call record too short for its digest")?.try_into().expect("4 bytes"));
            pos += 4;
            let tape_len = get_varint(body, &mut pos, 32).map_err(|_| "its tape length is malformed")?;
            if tape_len > (body.len() - pos) as u64 {
                return Err("its tape runs past the record");
            }
            let tape = &body[pos..pos + tape_len as usize];
            let payload = &body[pos + tape_len as usize..];
            let step = Step {
                kind: kf & 0x0f,
                flags: kf >> 4,
                from,
                corr,
                failed: ty & FAILED != 0,
                digest,
                tape,
                payload,
            };
            let next = Prev { from: Some(from), corr: if has_corr { corr } else { prev.corr } };
            Ok((if t == 1 { Record::Init(step) } else { Record::Step(step) }, next))
        }
        3 => {
            if ty != 3 {
                return Err("flags on a failure record");
            }
            let text = std::str::from_utf8(&body[1..]).map_err(|_| "a failure text that is not UTF-8")?;
            if text.len() > MAX_FAILURE_TEXT {
                return Err("a failure text over its limit");
            }
            Ok((Record::Failure(text), prev))
        }
        4 => {
            if ty != 4 || body.len() != 1 + 16 + 8 {
                return Err("an end record of the wrong length or with flags");
            }
            let next: [u8; 16] = body[1..17].try_into().expect("16 bytes");
            if next == [0; 16] {
                return Err("an end record naming no snapshot");
            }
            Ok((Record::End { next, digest: u64_at(body, 17) }, prev))
        }
        _ => Err("an unknown record type"),
    }
}
