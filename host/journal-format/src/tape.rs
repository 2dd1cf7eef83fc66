//! Varints, the tape of host-call results, and the state digest.

use crate::error::TapeError;
use xxhash_rust::xxh3::Xxh3;

/// Appends `v` as a LEB128 varint.
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint of at most `max_bits` bits at `*pos`. `Err(None)`:
/// the bytes end inside it; `Err(Some(at))`: malformed (too long, overlong
/// zero byte, bits past `max_bits`).
#[inline]
pub(crate) fn get_varint(bytes: &[u8], pos: &mut usize, max_bits: u32) -> Result<u64, Option<usize>> {
    let start = *pos;
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = bytes.get(*pos) else { return Err(None) };
        *pos += 1;
        let bits = u64::from(b & 0x7f);
        let too_long = shift >= max_bits;
        let past_width = !too_long && shift + 7 > max_bits && bits >> (max_bits - shift) != 0;
        let overlong_zero = shift > 0 && b == 0;
        if too_long || past_width || overlong_zero {
            return Err(Some(start));
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[inline]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The host calls a tape records, by their call byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Call {
    Send = 1,
    Request = 2,
    Reply = 3,
    Spawn = 4,
    BlobCreate = 5,
    BlobOpen = 6,
    BlobLen = 7,
    BlobRead = 8,
    BlobGive = 9,
    BlobClose = 10,
    Clock = 11,
    Random = 12,
    Grow = 13,
    Supervise = 14,
    Watch = 15,
    TrapExits = 16,
}

impl Call {
    /// The call with this byte, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        use Call::*;
        Some(match b {
            1 => Send,
            2 => Request,
            3 => Reply,
            4 => Spawn,
            5 => BlobCreate,
            6 => BlobOpen,
            7 => BlobLen,
            8 => BlobRead,
            9 => BlobGive,
            10 => BlobClose,
            11 => Clock,
            12 => Random,
            13 => Grow,
            14 => Supervise,
            15 => Watch,
            16 => TrapExits,
            _ => return None,
        })
    }

    /// Its name as the reactor ABI spells it (WASI's for clocks and
    /// randomness).
    pub fn name(self) -> &'static str {
        use Call::*;
        match self {
            Send => "send",
            Request => "request",
            Reply => "reply",
            Spawn => "spawn",
            BlobCreate => "blob_create",
            BlobOpen => "blob_open",
            BlobLen => "blob_len",
            BlobRead => "blob_read",
            BlobGive => "blob_give",
            BlobClose => "blob_close",
            Clock => "clock_time_get",
            Random => "random_get",
            Grow => "memory.grow",
            Supervise => "supervise",
            Watch => "watch",
            TrapExits => "trap_exits",
        }
    }
}

/// One recorded host-call result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A call whose only result is a number (see the format's table).
    Value { call: Call, value: i64 },
    /// `blob_read`: its result and, when it is ≥ 0, the bytes it copied.
    BlobRead { result: i64, bytes: &'a [u8] },
    /// `clock_time_get`.
    Clock { id: u32, errno: u16, time: u64 },
    /// `random_get`: its errno and, when 0, the bytes it gave.
    Random { errno: u16, bytes: &'a [u8] },
    /// A memory growth: granted (0) or refused by the memory cap (1), the
    /// reactor's byte budget (2) or the node's (3).
    Grow { desired: u64, outcome: u8 },
}

impl Entry<'_> {
    /// The call it records.
    pub fn call(&self) -> Call {
        match self {
            Entry::Value { call, .. } => *call,
            Entry::BlobRead { .. } => Call::BlobRead,
            Entry::Clock { .. } => Call::Clock,
            Entry::Random { .. } => Call::Random,
            Entry::Grow { .. } => Call::Grow,
        }
    }
}

/// Appends entries to a tape.
#[derive(Debug, Default)]
pub struct TapeWriter {
    bytes: Vec<u8>,
}

impl TapeWriter {
    /// Appends `entry`. `Value` entries must name a call that has only a
    /// value (a `BlobRead`, `Clock`, `Random` or `Grow` call is written
    /// with its own variant).
    pub fn push(&mut self, entry: &Entry<'_>) {
        let out = &mut self.bytes;
        out.push(entry.call() as u8);
        match *entry {
            Entry::Value { call, value } => {
                debug_assert!(!matches!(call, Call::BlobRead | Call::Clock | Call::Random | Call::Grow));
                put_varint(out, zigzag(value));
            }
            Entry::BlobRead { result, bytes } => {
                put_varint(out, zigzag(result));
                if result >= 0 {
                    debug_assert_eq!(bytes.len() as i64, result);
                    out.extend_from_slice(bytes);
                }
            }
            Entry::Clock { id, errno, time } => {
                put_varint(out, u64::from(id));
                put_varint(out, u64::from(errno));
                if errno == 0 {
                    put_varint(out, time);
                }
            }
            Entry::Random { errno, bytes } => {
                put_varint(out, u64::from(errno));
                if errno == 0 {
                    put_varint(out, bytes.len() as u64);
                    out.extend_from_slice(bytes);
                }
            }
            Entry::Grow { desired, outcome } => {
                debug_assert!(outcome <= 3);
                put_varint(out, desired);
                out.push(outcome);
            }
        }
    }

    /// The tape so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Empties it, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Reads a tape's entries in order, checking every byte.
#[derive(Debug, Clone)]
pub struct TapeReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> TapeReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Byte offset of the next entry.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether every entry has been read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn varint(&mut self, bits: u32) -> Result<u64, TapeError> {
        get_varint(self.bytes, &mut self.pos, bits).map_err(|e| match e {
            None => TapeError::Truncated(self.pos),
            Some(at) => TapeError::Varint(at),
        })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], TapeError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(TapeError::Range(self.pos));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// The next entry; `None` at the tape's end.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'a>>, TapeError> {
        let Some(&b) = self.bytes.get(self.pos) else { return Ok(None) };
        let at = self.pos;
        let call = Call::from_byte(b).ok_or(TapeError::UnknownCall(b, at))?;
        self.pos += 1;
        let entry = match call {
            Call::BlobRead => {
                let result = unzigzag(self.varint(64)?);
                let bytes = if result >= 0 { self.take(result as u64)? } else { &[] };
                Entry::BlobRead { result, bytes }
            }
            Call::Clock => {
                let id = self.varint(32)? as u32;
                let errno = self.varint(16)? as u16;
                let time = if errno == 0 { self.varint(64)? } else { 0 };
                Entry::Clock { id, errno, time }
            }
            Call::Random => {
                let errno = self.varint(16)? as u16;
                let bytes = if errno == 0 {
                    let n = self.varint(64)?;
                    self.take(n)?
                } else {
                    &[]
                };
                Entry::Random { errno, bytes }
            }
            Call::Grow => {
                let desired = self.varint(64)?;
                let outcome = match self.bytes.get(self.pos) {
                    None => return Err(TapeError::Truncated(self.pos)),
                    Some(&o @ 0..=3) => o,
                    Some(_) => return Err(TapeError::Range(self.pos)),
                };
                self.pos += 1;
                Entry::Grow { desired, outcome }
            }
            call => Entry::Value { call, value: unzigzag(self.varint(64)?) },
        };
        Ok(Some(entry))
    }
}

/// The state digest of a reactor's memory and globals (see the format's
/// "State digest").
#[derive(Clone, Default)]
pub struct StateDigest {
    h: Xxh3,
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDigest").field("so_far", &self.h.digest()).finish()
    }
}

impl StateDigest {
    /// Digest of `memory` (its length and non-zero pages), to be followed
    /// by its globals.
    pub fn memory(memory: &[u8]) -> Self {
        let mut h = Xxh3::new();
        h.update(&(memory.len() as u64).to_le_bytes());
        for (i, page) in memory.chunks(4096).enumerate() {
            if page.iter().any(|&b| b != 0) {
                h.update(&(i as u64).to_le_bytes());
                h.update(page);
            }
        }
        Self { h }
    }

    /// Adds one mutable global.
    pub fn global(&mut self, index: u32, ty: u8, bits: u128) {
        self.h.update(&index.to_le_bytes());
        self.h.update(&[ty]);
        self.h.update(&bits.to_le_bytes());
    }

    /// The digest.
    pub fn finish(&self) -> u64 {
        self.h.digest()
    }
}
