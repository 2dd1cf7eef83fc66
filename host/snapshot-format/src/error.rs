//! Errors.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use crate::id::SnapshotId;

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
    /// The file does not start with [`MAGIC`](crate::MAGIC).
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
        /// The version this host reads ([`FORMAT_VERSION`](crate::FORMAT_VERSION)).
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
        /// The host's page size ([`PAGE_SIZE`](crate::PAGE_SIZE)).
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
    /// A page of the data section does not match its checksum (format
    /// version 2).
    #[error(
        "snapshot page data is corrupt: data page {page} (file offset {file_offset}) does not match its checksum; \
         the file is damaged: use another copy"
    )]
    PageCorrupt {
        /// The page's number in the data section.
        page: u64,
        /// Where it starts in the file.
        file_offset: u64,
    },
    /// A compressed frame of a format version 3 file does not decompress
    /// to its length.
    #[error(
        "snapshot data is corrupt: compressed frame {frame} (data bytes from {data_offset}) does not decompress to \
         its length; the file is damaged: use another copy"
    )]
    FrameCorrupt {
        /// The frame's number.
        frame: u64,
        /// Where its bytes start in the data section, decompressed.
        data_offset: u64,
    },
    /// Two stored things (blobs, runs) claim the same bytes of the data
    /// section.
    #[error(
        "snapshot is malformed: {first} and {second} overlap in the data section (a correct host never stores \
         two things in one place)"
    )]
    Overlap {
        /// The one that starts first.
        first: String,
        /// The one that overlaps it.
        second: String,
    },
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
            "snapshot was written by an older host (format version {found}; this host reads versions 1 to \
             {supported}): restore it with the host that wrote it"
        )
    }
}

pub(crate) fn malformed(msg: impl Into<String>) -> FormatError {
    FormatError::Malformed(msg.into())
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FormatError + '_ {
    move |source| FormatError::Io { path: path.to_path_buf(), source }
}
