//! What a journal's bytes can be wrong with. Every error about a record
//! names the record (its index in the file, from 0) and its byte offset.

/// A journal file that cannot be used as it is. Reading changes nothing:
/// the file is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Shorter than its header, or not a journal at all.
    #[error("not a reactor journal (it does not start with the journal magic bytes)")]
    NotAJournal,
    /// A version this build does not read.
    #[error("journal format version {0} is not supported (this host reads version 1)")]
    Version(u32),
    /// The header fails its checksum, or a field is out of range.
    #[error("the journal header is damaged: {0}")]
    Header(&'static str),
    /// The file ends inside a record: a write was cut short (a crash while
    /// appending leaves this; everything before the record is intact).
    #[error("the journal ends inside record {record} (at byte {offset}): its last write was cut short")]
    Torn { record: u64, offset: u64 },
    /// A record fails its checksum or its length is impossible.
    #[error("journal record {record} (at byte {offset}) is damaged: {what}")]
    Damaged { record: u64, offset: u64, what: &'static str },
    /// A record checks out but is not well-formed, or is where it may not be.
    #[error("journal record {record} (at byte {offset}) is malformed: {what}")]
    Malformed { record: u64, offset: u64, what: String },
}

/// A tape (a call record's host-call results) that is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapeError {
    /// A call byte this version does not know.
    #[error("unknown host call {0} at tape byte {1}")]
    UnknownCall(u8, usize),
    /// The tape ends inside an entry.
    #[error("the tape ends inside an entry (at byte {0})")]
    Truncated(usize),
    /// A varint longer than its type allows, or with an overlong zero byte.
    #[error("a malformed number at tape byte {0}")]
    Varint(usize),
    /// A value out of its range (a length past the tape, a flag not 0 or 1).
    #[error("a value out of range at tape byte {0}")]
    Range(usize),
}
