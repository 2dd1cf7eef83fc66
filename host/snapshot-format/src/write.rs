//! The writer: [`Writer`].
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use crate::constants::{
    CODEC_LZ4, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_COMPRESSED, FRAME_RAW, HEADER_LEN, MAX_FRAME_LEN,
    MAX_META_LEN, PAGE_SIZE,
};
use crate::error::{FormatError, io_err, malformed};
use crate::id::SnapshotId;
use crate::model::{Header, Kind, Meta, MetaV2Out, MetaV3Out, Stored, blob_hash, page_hash};

/// The mode snapshot files are created with: they hold whole memory
/// images, so only their owner may read them.
pub const FILE_MODE: u32 = 0o600;

/// Buffer of the writer: small writes are gathered, large ones go straight
/// to the file.
pub(crate) const WRITE_BUFFER: usize = 4 << 20;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
// The header is written from ZERO_PAGE and keeps the data section page aligned.
const _: () = assert!(HEADER_LEN == PAGE_SIZE);

/// Writes one snapshot file: page data and blobs first (streamed, hashed as
/// they go), then [`Writer::finish`] with the meta. The file appears at its
/// path only when complete; a writer dropped before `finish` removes its
/// temporary file.
pub struct Writer {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    abi_version: u32,
    version: u32,
    kind: Kind,
    id: SnapshotId,
    data_len: u64,
    hasher: Box<Xxh3Default>,
    /// The page checksums so far, 8 bytes each (format version 2).
    page_hashes: Vec<u8>,
    /// (offset, len, hash) of each blob appended.
    blobs: HashSet<(u64, u64, u64)>,
    /// Format version 3: the frames being compressed.
    frames: Option<FrameWriter>,
    /// Bytes of the data section written to the file (= `data_len` unless
    /// compressed).
    stored_len: u64,
    failed: bool,
    finished: bool,
}

/// The compressing side of a version 3 writer.
struct FrameWriter {
    frame_len: usize,
    /// Data not yet making a whole frame.
    pending: Vec<u8>,
    /// Room for one compressed frame.
    out: Vec<u8>,
    /// The frame table so far, 4 bytes per frame.
    table: Vec<u8>,
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
    /// The file is created with mode [`FILE_MODE`] (`0600`).
    pub fn create(path: &Path, abi_version: u32, kind: Kind, id: SnapshotId) -> Result<Writer, FormatError> {
        Self::create_version(path, FORMAT_VERSION, abi_version, kind, id)
    }

    /// [`Writer::create`] of a compressed file (format version 3): the data
    /// section is cut in frames of `frame_len` bytes (a multiple of
    /// [`PAGE_SIZE`] up to [`MAX_FRAME_LEN`]; [`DEFAULT_FRAME_LEN`](crate::DEFAULT_FRAME_LEN)
    /// is a good choice), each compressed with LZ4 as it fills, or stored as
    /// it is when that is not smaller. Offsets given and taken stay those
    /// of the data section uncompressed.
    pub fn create_compressed(
        path: &Path,
        abi_version: u32,
        kind: Kind,
        id: SnapshotId,
        frame_len: u32,
    ) -> Result<Writer, FormatError> {
        if frame_len == 0 || frame_len > MAX_FRAME_LEN || !(frame_len as usize).is_multiple_of(PAGE_SIZE) {
            return Err(malformed(format!(
                "frame length {frame_len} is not a multiple of the page size between {PAGE_SIZE} and {MAX_FRAME_LEN}"
            )));
        }
        let mut w = Self::create_version(path, FORMAT_VERSION, abi_version, kind, id)?;
        w.version = FORMAT_VERSION_COMPRESSED;
        let frame_len = frame_len as usize;
        w.frames = Some(FrameWriter {
            frame_len,
            pending: Vec::with_capacity(frame_len),
            out: vec![0; lz4_flex::block::get_maximum_output_size(frame_len)],
            table: Vec::new(),
        });
        Ok(w)
    }

    /// [`Writer::create`] in a given format version: [`FORMAT_VERSION`], or
    /// [`FORMAT_VERSION_1`] (no page checksums, no outstanding requests:
    /// for tests of the reader and for hosts that must read the file with
    /// an older version). Any other version is [`FormatError::FormatVersion`].
    pub fn create_version(
        path: &Path,
        version: u32,
        abi_version: u32,
        kind: Kind,
        id: SnapshotId,
    ) -> Result<Writer, FormatError> {
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(FormatError::FormatVersion { found: version, supported: FORMAT_VERSION });
        }
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
        let file =
            OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp).map_err(io_err(&tmp))?;
        let mut w = Writer {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            abi_version,
            version,
            kind,
            id,
            data_len: 0,
            hasher: Box::new(Xxh3Default::new()),
            page_hashes: Vec::new(),
            blobs: HashSet::new(),
            frames: None,
            stored_len: 0,
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

    /// Appends `bytes` to the data section as stored (hashed: the header's
    /// `data_hash` is of the section as stored).
    fn write_stored(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.write_raw(bytes)?;
        self.hasher.update(bytes);
        self.stored_len += bytes.len() as u64;
        Ok(())
    }

    fn write_data(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.data_len += bytes.len() as u64;
        let Some(f) = self.frames.as_mut() else { return self.write_stored(bytes) };
        let frame_len = f.frame_len;
        let mut rest = bytes;
        if !f.pending.is_empty() {
            let take = (frame_len - f.pending.len()).min(rest.len());
            f.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if f.pending.len() == frame_len {
                let pending = std::mem::take(&mut f.pending);
                self.write_frame(&pending)?;
                self.frames.as_mut().expect("compressing").pending = pending;
                self.frames.as_mut().expect("compressing").pending.clear();
            }
        }
        while rest.len() >= frame_len {
            self.write_frame(&rest[..frame_len])?;
            rest = &rest[frame_len..];
        }
        self.frames.as_mut().expect("compressing").pending.extend_from_slice(rest);
        Ok(())
    }

    /// Compresses one frame and writes it, or the frame as it is when that
    /// is not smaller.
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), FormatError> {
        let f = self.frames.as_mut().expect("compressing");
        let mut out = std::mem::take(&mut f.out);
        let n = lz4_flex::block::compress_into(frame, &mut out)
            .map_err(|e| malformed(format!("a frame does not compress: {e}")))?;
        let (stored, entry) = if n < frame.len() { (&out[..n], n as u32) } else { (frame, frame.len() as u32 | FRAME_RAW) };
        let r = self.write_stored(stored);
        let f = self.frames.as_mut().expect("compressing");
        f.table.extend_from_slice(&entry.to_le_bytes());
        f.out = out;
        r
    }

    /// Records the checksums of `bytes`, whole pages about to be written at
    /// the end of the data section (`bytes` may end short of a page: the
    /// rest is the zero padding written after it).
    fn hash_pages(&mut self, bytes: &[u8]) {
        let first = self.data_len / PAGE_SIZE as u64;
        for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
            let h = if page.len() == PAGE_SIZE {
                page_hash(first + i as u64, page)
            } else {
                let mut padded = [0u8; PAGE_SIZE];
                padded[..page.len()].copy_from_slice(page);
                page_hash(first + i as u64, &padded)
            };
            self.page_hashes.extend_from_slice(&h.to_le_bytes());
        }
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
        self.hash_pages(bytes);
        self.write_data(bytes)?;
        Ok(offset)
    }

    /// Appends a blob's content, zero-padded to a page multiple, and returns
    /// its offset in the data section. Its [`BlobEntry`](crate::BlobEntry) must give this
    /// offset, `bytes.len()` and [`blob_hash`]`(bytes)`.
    pub fn append_blob(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        self.usable()?;
        let offset = self.data_len;
        self.hash_pages(bytes);
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
        if self.version == FORMAT_VERSION_1 && meta.reactors.iter().any(|r| !r.outstanding.is_empty()) {
            return Err(malformed("format version 1 cannot record outstanding requests"));
        }
        if let Some(f) = self.frames.as_mut()
            && !f.pending.is_empty()
        {
            // The last frame, shorter.
            let pending = std::mem::take(&mut f.pending);
            self.write_frame(&pending)?;
        }
        let encoded = if self.version == FORMAT_VERSION_1 {
            // Version 1's reactor entry has no `outstanding`: encode the
            // same fields without it.
            postcard::to_stdvec(&crate::model::MetaV1Out::from(meta))
        } else if let Some(f) = &self.frames {
            postcard::to_stdvec(&MetaV3Out { meta, page_hashes: &self.page_hashes, frames: &f.table })
        } else {
            postcard::to_stdvec(&MetaV2Out { meta, page_hashes: &self.page_hashes })
        };
        let meta_bytes = encoded.map_err(|e| malformed(format!("meta does not encode: {e}")))?;
        if meta_bytes.len() as u64 > MAX_META_LEN {
            return Err(malformed(format!(
                "the meta encodes to {} bytes, more than the limit of {MAX_META_LEN}",
                meta_bytes.len()
            )));
        }
        let header = Header {
            format_version: self.version,
            abi_version: self.abi_version,
            page_size: PAGE_SIZE as u32,
            kind: self.kind,
            id: self.id,
            data_offset: HEADER_LEN as u64,
            data_len: self.data_len,
            data_hash: self.hasher.digest(),
            meta_offset: HEADER_LEN as u64 + self.stored_len,
            meta_len: meta_bytes.len() as u64,
            meta_hash: xxh3_64(&meta_bytes),
            stored: self.frames.as_ref().map(|f| Stored {
                codec: CODEC_LZ4,
                frame_len: f.frame_len as u32,
                stored_len: self.stored_len,
            }),
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
