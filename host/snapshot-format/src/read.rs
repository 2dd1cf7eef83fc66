//! The reader: header and meta checks in the order the crate documentation
//! gives, [`parse`] for images in memory and [`SnapshotFile`] for files.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use crate::constants::{
    CODEC_LZ4, FORMAT_VERSION_1, FORMAT_VERSION_COMPRESSED, FRAME_RAW, HEADER_FIELDS_LEN, HEADER_FIELDS_LEN_V3,
    HEADER_HASHED_LEN, HEADER_LEN, KIND_DELTA, KIND_FULL, MAGIC, MAX_FRAME_LEN, MAX_META_LEN, PAGE_SIZE,
};
use crate::error::{FormatError, io_err, malformed};
use crate::id::SnapshotId;
use crate::model::{BlobEntry, Header, Kind, Meta, MetaV1, MetaV2In, MetaV3In, Stored, blob_hash, page_hash};

/// One checksum per data page.
type PageHashes = Box<[u64]>;

/// Read size when streaming the data section through the hash.
const VERIFY_CHUNK: usize = 8 << 20;
/// How often `verify_data` reports progress.
const PROGRESS_EVERY: u64 = 64 << 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn id_at(b: &[u8], at: usize) -> SnapshotId {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    SnapshotId(a)
}

/// Checks the header given the file's first `min(file_len, HEADER_LEN)`
/// bytes and its length, in the order the crate documentation gives.
fn check_header(prefix: &[u8], file_len: u64, expected_abi: u32) -> Result<Header, FormatError> {
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(FormatError::NotASnapshot);
    }
    if prefix.len() >= 12 {
        let found = u32_at(prefix, 8);
        if !(FORMAT_VERSION_1..=FORMAT_VERSION_COMPRESSED).contains(&found) {
            return Err(FormatError::FormatVersion { found, supported: FORMAT_VERSION_COMPRESSED });
        }
    }
    let compressed = prefix.len() >= 12 && u32_at(prefix, 8) == FORMAT_VERSION_COMPRESSED;
    let fields_len = if compressed { HEADER_FIELDS_LEN_V3 } else { HEADER_FIELDS_LEN };
    if prefix.len() < fields_len {
        return Err(FormatError::TooShort { len: file_len });
    }
    if xxh3_64(&prefix[..HEADER_HASHED_LEN]) != u64_at(prefix, HEADER_HASHED_LEN) {
        return Err(FormatError::HeaderCorrupt);
    }
    if compressed && xxh3_64(&prefix[112..128]) != u64_at(prefix, 128) {
        return Err(FormatError::HeaderCorrupt);
    }
    let abi_version = u32_at(prefix, 12);
    if abi_version != expected_abi {
        return Err(FormatError::AbiVersion { found: abi_version, expected: expected_abi });
    }
    let page_size = u32_at(prefix, 16);
    if page_size as usize != PAGE_SIZE {
        return Err(FormatError::PageSize { found: page_size, host: PAGE_SIZE as u32 });
    }
    let base = id_at(prefix, 40);
    let kind = match u32_at(prefix, 20) {
        KIND_FULL if base.is_zero() => Kind::Full,
        KIND_FULL => return Err(malformed(format!("a full snapshot has a base id ({base}); only deltas have one"))),
        KIND_DELTA if base.is_zero() => return Err(malformed("a delta snapshot has no base id (it is all zero)")),
        KIND_DELTA => Kind::Delta { base },
        k => return Err(malformed(format!("unknown snapshot kind {k} (0 = full, 1 = delta)"))),
    };
    let h = Header {
        format_version: u32_at(prefix, 8),
        abi_version,
        page_size,
        kind,
        id: id_at(prefix, 24),
        data_offset: u64_at(prefix, 56),
        data_len: u64_at(prefix, 64),
        data_hash: u64_at(prefix, 72),
        meta_offset: u64_at(prefix, 80),
        meta_len: u64_at(prefix, 88),
        meta_hash: u64_at(prefix, 96),
        stored: compressed.then(|| Stored {
            stored_len: u64_at(prefix, 112),
            codec: u32_at(prefix, 120),
            frame_len: u32_at(prefix, 124),
        }),
    };
    if let Some(st) = h.stored {
        if st.codec != CODEC_LZ4 {
            return Err(malformed(format!("unknown codec {} of the data section ({CODEC_LZ4} = lz4)", st.codec)));
        }
        if st.frame_len == 0 || st.frame_len > MAX_FRAME_LEN || !(st.frame_len as usize).is_multiple_of(PAGE_SIZE) {
            return Err(malformed(format!(
                "frame length {} is not a multiple of the page size between {PAGE_SIZE} and {MAX_FRAME_LEN}",
                st.frame_len
            )));
        }
    }
    if h.data_offset != HEADER_LEN as u64 {
        return Err(malformed(format!("data section starts at {}, not at {HEADER_LEN}", h.data_offset)));
    }
    if !h.data_len.is_multiple_of(PAGE_SIZE as u64) {
        return Err(malformed(format!("data section length {} is not a multiple of the page size", h.data_len)));
    }
    if h.data_offset.checked_add(h.stored_data_len()) != Some(h.meta_offset) {
        return Err(malformed(format!(
            "meta section starts at {}, not right after the data section ({} + {})",
            h.meta_offset,
            h.data_offset,
            h.stored_data_len()
        )));
    }
    if h.meta_len > MAX_META_LEN {
        return Err(malformed(format!(
            "meta section of {} bytes is larger than the limit of {MAX_META_LEN}",
            h.meta_len
        )));
    }
    let Some(expected) = h.meta_offset.checked_add(h.meta_len) else {
        return Err(malformed("section lengths overflow"));
    };
    if file_len < expected {
        return Err(FormatError::Truncated { expected, found: file_len });
    }
    if file_len > expected {
        return Err(FormatError::TrailingBytes { expected, found: file_len });
    }
    // file_len == expected >= HEADER_LEN, so the prefix is the whole header.
    if prefix.len() < HEADER_LEN || prefix[fields_len..HEADER_LEN].iter().any(|&b| b != 0) {
        return Err(FormatError::HeaderCorrupt);
    }
    Ok(h)
}

/// Where each frame of a compressed (version 3) data section is stored.
#[derive(Debug)]
struct Frames {
    /// Uncompressed bytes per frame (the last may be shorter).
    frame_len: u64,
    /// Uncompressed length of the data section.
    data_len: u64,
    /// Each frame's offset in the stored data section, then its end.
    starts: Box<[u64]>,
    /// Whether each frame is stored as it is.
    raw: Box<[bool]>,
}

impl Frames {
    /// The frame table of the meta, checked against the header.
    fn check(st: Stored, data_len: u64, table: &[u8]) -> Result<Frames, FormatError> {
        let frame_len = u64::from(st.frame_len);
        let count = data_len.div_ceil(frame_len);
        if table.len() as u64 / 4 != count {
            return Err(malformed(format!(
                "the meta has {} frames for a data section of {data_len} bytes in frames of {frame_len}",
                table.len() / 4
            )));
        }
        let mut starts = Vec::with_capacity(count as usize + 1);
        let mut raw = Vec::with_capacity(count as usize);
        let mut at = 0u64;
        for (i, e) in table.chunks_exact(4).enumerate() {
            let e = u32_at(e, 0);
            let logical = frame_len.min(data_len - i as u64 * frame_len);
            let (is_raw, len) = (e & FRAME_RAW != 0, u64::from(e & !FRAME_RAW));
            let fits = if is_raw {
                len == logical
            } else {
                len > 0 && len as usize <= lz4_flex::block::get_maximum_output_size(logical as usize)
            };
            if !fits {
                return Err(malformed(format!(
                    "frame {i} is stored in {len} bytes{}, which cannot hold its {logical} bytes",
                    if is_raw { " as it is" } else { " compressed" }
                )));
            }
            starts.push(at);
            raw.push(is_raw);
            at += len;
        }
        starts.push(at);
        if at != st.stored_len {
            return Err(malformed(format!(
                "the frames take {at} bytes, but the header says the data section is stored in {}",
                st.stored_len
            )));
        }
        Ok(Frames { frame_len, data_len, starts: starts.into(), raw: raw.into() })
    }

    /// Uncompressed bytes of frame `i`.
    fn len_of(&self, i: u64) -> usize {
        self.frame_len.min(self.data_len - i * self.frame_len) as usize
    }

    /// Where frame `i` is stored, relative to the stored data section.
    fn stored_range(&self, i: u64) -> (u64, usize) {
        let (a, b) = (self.starts[i as usize], self.starts[i as usize + 1]);
        (a, (b - a) as usize)
    }

    /// Frame `i` from its stored bytes into `out` (exactly its length).
    fn decode(&self, i: u64, stored: &[u8], out: &mut [u8]) -> Result<(), FormatError> {
        let corrupt = || FormatError::FrameCorrupt { frame: i, data_offset: i * self.frame_len };
        if self.raw[i as usize] {
            if stored.len() != out.len() {
                return Err(corrupt());
            }
            out.copy_from_slice(stored);
            return Ok(());
        }
        match lz4_flex::block::decompress_into(stored, out) {
            Ok(n) if n == out.len() => Ok(()),
            _ => Err(corrupt()),
        }
    }
}

/// What [`check_meta`] finds in a meta section.
struct CheckedMeta {
    meta: Meta,
    /// One checksum per data page (format versions 2 and 3).
    hashes: Option<PageHashes>,
    /// The frames of a compressed data section (format version 3).
    frames: Option<Frames>,
}

/// Checks the meta section's hash, decodes it (in the header's format
/// version) and validates it, with the page checksums (versions 2 and 3)
/// and the frame table (version 3).
fn check_meta(header: &Header, bytes: &[u8]) -> Result<CheckedMeta, FormatError> {
    if xxh3_64(bytes) != header.meta_hash {
        return Err(FormatError::MetaCorrupt);
    }
    crate::model::take_decode_note();
    let undecodable = |e: postcard::Error| match crate::model::take_decode_note() {
        Some(note) => malformed(format!("the meta section does not decode: {note}")),
        None => malformed(format!("the meta section does not decode: {e}")),
    };
    let (meta, hashes, table, rest) = if header.format_version == FORMAT_VERSION_1 {
        let (meta, rest) = postcard::take_from_bytes::<MetaV1>(bytes).map_err(undecodable)?;
        (Meta::from(meta), None, None, rest)
    } else if header.stored.is_some() {
        let (m, rest) = postcard::take_from_bytes::<MetaV3In>(bytes).map_err(undecodable)?;
        (m.meta, Some(m.page_hashes), Some(m.frames), rest)
    } else {
        let (m, rest) = postcard::take_from_bytes::<MetaV2In>(bytes).map_err(undecodable)?;
        (m.meta, Some(m.page_hashes), None, rest)
    };
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes follow the meta in the meta section", rest.len())));
    }
    let hashes = match hashes {
        None => None,
        Some(b) => {
            let pages = header.data_len / PAGE_SIZE as u64;
            if b.len() as u64 / 8 != pages {
                return Err(malformed(format!(
                    "the meta has {} page checksums for a data section of {pages} pages",
                    b.len() / 8
                )));
            }
            Some(b.chunks_exact(8).map(|c| u64_at(c, 0)).collect())
        }
    };
    let frames = match (header.stored, table) {
        (Some(st), Some(table)) => Some(Frames::check(st, header.data_len, &table)?),
        _ => None,
    };
    meta.validate(header.data_len)?;
    Ok(CheckedMeta { meta, hashes, frames })
}

/// Checks `bytes`, the data section's bytes from page `first` on, against
/// the page checksums.
fn check_pages_against(hashes: &[u64], first: u64, bytes: &[u8]) -> Result<(), FormatError> {
    for (i, page) in bytes.chunks(PAGE_SIZE).enumerate() {
        let n = first + i as u64;
        let want = usize::try_from(n).ok().and_then(|n| hashes.get(n));
        if page.len() != PAGE_SIZE || want.is_none_or(|&h| h != page_hash(n, page)) {
            return Err(FormatError::PageCorrupt { page: n, file_offset: HEADER_LEN as u64 + n * PAGE_SIZE as u64 });
        }
    }
    Ok(())
}

/// Parses and checks the header and meta of a whole file image, as
/// [`SnapshotFile::open`] does: everything but the page data (that is
/// [`parse_verified`]'s, [`SnapshotFile::verify_data`]'s and
/// [`SnapshotFile::check_pages`]' job), though the data section's length
/// and, in format version 2, the number of page checksums are checked.
pub fn parse(bytes: &[u8], expected_abi: u32) -> Result<(Header, Meta), FormatError> {
    let prefix = &bytes[..bytes.len().min(HEADER_LEN)];
    let header = check_header(prefix, bytes.len() as u64, expected_abi)?;
    // check_header made sure that meta_offset + meta_len == bytes.len().
    let checked = check_meta(&header, &bytes[header.meta_offset as usize..])?;
    Ok((header, checked.meta))
}

/// [`parse`], then every data page checked against its checksum (format
/// version 2; [`FormatError::PageCorrupt`] names the first damaged one),
/// or, for version 1, the whole data section against the header's hash
/// ([`FormatError::DataCorrupt`]). Blob hashes are not checked.
pub fn parse_verified(bytes: &[u8], expected_abi: u32) -> Result<(Header, Meta), FormatError> {
    let prefix = &bytes[..bytes.len().min(HEADER_LEN)];
    let header = check_header(prefix, bytes.len() as u64, expected_abi)?;
    let CheckedMeta { meta, hashes, frames } = check_meta(&header, &bytes[header.meta_offset as usize..])?;
    let data = &bytes[HEADER_LEN..header.meta_offset as usize];
    match (hashes, frames) {
        (Some(h), Some(frames)) => {
            // One frame at a time: memory bounded by the frame length,
            // whatever the header claims.
            let mut buf = Vec::new();
            for i in 0..frames.raw.len() as u64 {
                let (at, len) = frames.stored_range(i);
                buf.resize(frames.len_of(i), 0);
                frames.decode(i, &data[at as usize..at as usize + len], &mut buf)?;
                check_pages_against(&h, i * frames.frame_len / PAGE_SIZE as u64, &buf)?;
            }
        }
        (Some(h), None) => check_pages_against(&h, 0, data)?,
        (None, _) if xxh3_64(data) != header.data_hash => return Err(FormatError::DataCorrupt),
        (None, _) => {}
    }
    Ok((header, meta))
}

/// An open snapshot file whose header and meta have been checked.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
    header: Header,
    meta: Meta,
    /// One checksum per data page (format versions 2 and 3).
    page_hashes: Option<PageHashes>,
    /// The frames of a compressed data section (format version 3).
    frames: Option<Frames>,
    /// The frame last decompressed for a read that wanted part of it.
    last_frame: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl SnapshotFile {
    /// Opens `path` and reads and checks its header and meta (with
    /// positioned reads), as [`parse`] does; the data hash is not checked
    /// (see [`SnapshotFile::verify_data`]).
    ///
    /// Only a regular file is read: the file is opened without blocking (a
    /// FIFO cannot hang the reader) and its type checked on the opened
    /// descriptor; a FIFO, device, directory or socket is refused
    /// ([`FormatError::Io`], saying what it is).
    pub fn open(path: &Path, expected_abi: u32) -> Result<SnapshotFile, FormatError> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        let kind = meta.file_type();
        if !kind.is_file() {
            let kind = if kind.is_dir() {
                "a directory"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_char_device() {
                "a character device"
            } else if kind.is_block_device() {
                "a block device"
            } else {
                "a socket or other special file"
            };
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("it is {kind}, not a regular file"));
            return Err(io_err(path)(e));
        }
        let len = meta.len();
        let mut prefix = vec![0u8; len.min(HEADER_LEN as u64) as usize];
        file.read_exact_at(&mut prefix, 0).map_err(io_err(path))?;
        let header = check_header(&prefix, len, expected_abi)?;
        // meta_len <= MAX_META_LEN was checked.
        let mut meta_bytes = vec![0u8; header.meta_len as usize];
        file.read_exact_at(&mut meta_bytes, header.meta_offset).map_err(io_err(path))?;
        let CheckedMeta { meta, hashes: page_hashes, frames } = check_meta(&header, &meta_bytes)?;
        Ok(SnapshotFile { path: path.to_path_buf(), file, header, meta, page_hashes, frames, last_frame: Mutex::new(None) })
    }

    /// Whether the data section is stored as it is, so runs can be mapped
    /// from [`SnapshotFile::file`] at [`SnapshotFile::file_offset`]. A
    /// compressed file (format version 3) is read with
    /// [`SnapshotFile::read_data`], which decompresses.
    pub fn mappable(&self) -> bool {
        self.frames.is_none()
    }

    /// Whether the file has page checksums (format version 2): each page
    /// can be checked as it is restored ([`SnapshotFile::check_pages`]).
    /// A version 1 file can only be checked whole
    /// ([`SnapshotFile::verify_data`]).
    pub fn has_page_hashes(&self) -> bool {
        self.page_hashes.is_some()
    }

    /// Checks `bytes`, the data section's bytes at the page-aligned
    /// `data_offset` (a whole number of pages), against their checksums:
    /// [`FormatError::PageCorrupt`] names the first damaged page. A file
    /// without page checksums (version 1) is [`FormatError::Malformed`].
    pub fn check_pages(&self, data_offset: u64, bytes: &[u8]) -> Result<(), FormatError> {
        let Some(hashes) = &self.page_hashes else {
            return Err(malformed("a format version 1 snapshot has no page checksums: verify its data section whole"));
        };
        if !data_offset.is_multiple_of(PAGE_SIZE as u64) {
            return Err(malformed(format!("page check at data offset {data_offset}, not page aligned")));
        }
        check_pages_against(hashes, data_offset / PAGE_SIZE as u64, bytes)
    }

    /// The checksums of the `pages` pages at the page-aligned data-section
    /// offset `data_offset` (to check them later, page by page); None for a
    /// format version 1 file or a range outside the data section.
    pub fn page_hashes(&self, data_offset: u64, pages: u64) -> Option<&[u64]> {
        let hashes = self.page_hashes.as_deref()?;
        if !data_offset.is_multiple_of(PAGE_SIZE as u64) {
            return None;
        }
        let first = usize::try_from(data_offset / PAGE_SIZE as u64).ok()?;
        let end = first.checked_add(usize::try_from(pages).ok()?)?;
        hashes.get(first..end)
    }

    /// Reads `len` bytes of the data section at the page-aligned
    /// `data_offset` and checks them as [`SnapshotFile::check_pages`] does.
    pub fn verify_pages(&self, data_offset: u64, len: u64) -> Result<(), FormatError> {
        let mut buf = vec![0u8; (VERIFY_CHUNK as u64).min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (buf.len() as u64).min(len - done) as usize;
            self.read_data(data_offset + done, &mut buf[..n])?;
            self.check_pages(data_offset + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// The checked header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The checked meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The path it was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (to mmap runs: they are page aligned in the file, when
    /// it is [`SnapshotFile::mappable`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file offset of a data-section offset (of a
    /// [`SnapshotFile::mappable`] file).
    pub fn file_offset(&self, data_offset: u64) -> u64 {
        self.header.data_offset + data_offset
    }

    /// Frame `i` of a compressed data section, read and decompressed into
    /// `out` (its whole length).
    fn read_frame(&self, frames: &Frames, i: u64, out: &mut [u8]) -> Result<(), FormatError> {
        let (at, len) = frames.stored_range(i);
        let mut stored = vec![0u8; len];
        self.file.read_exact_at(&mut stored, self.header.data_offset + at).map_err(io_err(&self.path))?;
        frames.decode(i, &stored, out)
    }

    /// [`SnapshotFile::read_data`] of a compressed data section: whole
    /// frames are decompressed straight into `buf`, parts of frames through
    /// the frame last decompressed.
    fn read_frames(&self, frames: &Frames, data_offset: u64, mut buf: &mut [u8]) -> Result<(), FormatError> {
        let mut pos = data_offset;
        while !buf.is_empty() {
            let i = pos / frames.frame_len;
            let within = (pos - i * frames.frame_len) as usize;
            let flen = frames.len_of(i);
            let n = (flen - within).min(buf.len());
            let (here, rest) = std::mem::take(&mut buf).split_at_mut(n);
            if within == 0 && n == flen {
                self.read_frame(frames, i, here)?;
            } else {
                let cached = self.last_frame.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let frame = match cached {
                    Some((j, f)) if j == i => f,
                    _ => {
                        let mut f = vec![0u8; flen];
                        self.read_frame(frames, i, &mut f)?;
                        let f = Arc::new(f);
                        *self.last_frame.lock().unwrap_or_else(|e| e.into_inner()) = Some((i, f.clone()));
                        f
                    }
                };
                here.copy_from_slice(&frame[within..within + n]);
            }
            buf = rest;
            pos += n as u64;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at a data-section offset. A range outside the
    /// data section is [`FormatError::Malformed`].
    pub fn read_data(&self, data_offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        if data_offset.checked_add(buf.len() as u64).is_none_or(|e| e > self.header.data_len) {
            return Err(malformed(format!(
                "read of {} bytes at data offset {data_offset} is outside the data section ({} bytes)",
                buf.len(),
                self.header.data_len
            )));
        }
        match &self.frames {
            Some(frames) => self.read_frames(frames, data_offset, buf),
            None => self.file.read_exact_at(buf, self.file_offset(data_offset)).map_err(io_err(&self.path)),
        }
    }

    /// Reads a blob's content and checks its hash
    /// ([`FormatError::DataCorrupt`] on a mismatch).
    pub fn read_blob(&self, blob: &BlobEntry) -> Result<Vec<u8>, FormatError> {
        let len = usize::try_from(blob.len).map_err(|_| malformed("blob too large for this machine"))?;
        let mut buf = vec![0u8; len];
        self.read_data(blob.offset, &mut buf)?;
        if blob_hash(&buf) != blob.hash {
            return Err(FormatError::DataCorrupt);
        }
        Ok(buf)
    }

    /// Streams the whole data section through xxh3 and compares with the
    /// header, then checks each blob's hash (to find which page is damaged
    /// in a format version 2 file, [`SnapshotFile::verify_pages`]); `progress(done, total)` is called
    /// about every 64 MiB and once at the end.
    pub fn verify_data(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), FormatError> {
        // As stored: a compressed data section's hash is of its frames.
        let total = self.header.stored_data_len();
        let mut buf = vec![0u8; (VERIFY_CHUNK as u64).min(total) as usize];
        let mut hasher = Xxh3Default::new();
        let mut done = 0u64;
        let mut next_report = PROGRESS_EVERY;
        while done < total {
            let n = (buf.len() as u64).min(total - done) as usize;
            self.file.read_exact_at(&mut buf[..n], self.file_offset(done)).map_err(io_err(&self.path))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            if done >= next_report && done < total {
                progress(done, total);
                next_report = done + PROGRESS_EVERY;
            }
        }
        progress(done, total);
        if hasher.digest() != self.header.data_hash {
            return Err(FormatError::DataCorrupt);
        }
        for b in &self.meta.blobs {
            let mut hasher = Xxh3Default::new();
            let mut done = 0u64;
            while done < b.len {
                let n = (buf.len() as u64).min(b.len - done) as usize;
                self.read_data(b.offset + done, &mut buf[..n])?;
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            if hasher.digest() != b.hash {
                return Err(FormatError::DataCorrupt);
            }
        }
        Ok(())
    }
}
