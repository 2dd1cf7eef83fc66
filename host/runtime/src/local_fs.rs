//! Files and directories another local user may have prepared or may
//! control: bounded reads of regular files, and the check that nobody but
//! this user (or root) can move a directory away by way of one of its
//! ancestors.
//!
//! # Reading a named file
//! [`read_file`] opens the file `O_NONBLOCK | O_NOCTTY` (opening a FIFO
//! does not wait for a writer; a terminal does not become ours), checks
//! with `fstat` *on the opened descriptor* (no stat-then-open race) that it
//! is a regular file of at most the caller's limit, checks its owner and
//! mode as the caller asks ([`Access`]), and reads at most limit + 1 bytes
//! (a file growing meanwhile is refused too). A FIFO cannot hang the
//! reader, `/dev/zero` or a huge file cannot exhaust memory, and every
//! refusal names the file and the reason.
//!
//! # Ancestors
//! [`check_ancestors`] walks every ancestor of a path, as written (with
//! `lstat`: a symbolic link on the way counts, by its owner) and as resolved
//! (`realpath` of the deepest part that exists), and refuses one that
//! another user could use to replace what the path names: a directory
//! owned by a uid other than this user's or root's, or writable by group or
//! others without the sticky bit; a symbolic link owned by another uid.
//! This is OpenSSH's `StrictModes` walk, with sticky directories (`/tmp`)
//! allowed: in them, others can add entries but not rename or remove ours.
#![forbid(unsafe_code)]

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Who besides the owner may have access to a file [`read_file`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: only the file's type and size are checked.
    Any,
    /// A file this process trusts (such as pinned keys): it must be owned by
    /// this user or root, and not writable by group or others.
    NotWritableByOthers,
    /// A secret: owned by this user or root, and neither readable nor
    /// writable by group or others (as `ssh` requires of a private key).
    Private,
}

/// Why a named file was not read. Nothing was read from it.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be opened, inspected or read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// It is not a regular file (a FIFO, a device, a directory, a socket).
    #[error("cannot read {what} {}: it is {kind}, not a regular file", path.display())]
    NotAFile {
        /// What the file is for.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// It is larger than the caller reads.
    #[error("cannot read {what} {}: {size} bytes, over the limit of {limit} bytes", path.display())]
    TooLarge {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size (at least: it may have been growing).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// It belongs to another user, who could change it.
    #[error("refusing {what} {}: it is owned by uid {owner}, neither this user (uid {me}) nor root", path.display())]
    NotOwned {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// Group or others have access it must not give them.
    #[error(
        "refusing {what} {}: it has mode {mode:03o}, and must not be {} by group or others (chmod {fix:03o} it)",
        path.display(),
        if *private { "readable or writable" } else { "writable" }
    )]
    Exposed {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Whether it had to be private (no access at all by others).
        private: bool,
        /// The mode that would do.
        fix: u32,
    },
}

/// What a file type is, in words, for a refusal.
pub fn kind_of(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` without blocking and checks, on the opened descriptor, that
/// it is a regular file of at most `limit` bytes whose owner and mode
/// `access` allows; `what` names the file in errors ("the cluster secret").
pub fn open_file(path: &Path, what: &'static str, limit: u64, access: Access) -> Result<(File, Metadata), FileError> {
    let io_err = |source| FileError::Io { what, path: path.to_path_buf(), source };
    // Non-blocking: opening a FIFO must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotAFile { what, path: path.to_path_buf(), kind: kind_of(meta.file_type()) });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { what, path: path.to_path_buf(), size: meta.len(), limit });
    }
    if access != Access::Any {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(FileError::NotOwned { what, path: path.to_path_buf(), owner: meta.uid(), me });
        }
        let private = access == Access::Private;
        let forbidden = if private { 0o077 } else { 0o022 };
        let mode = meta.mode() & 0o777;
        if mode & forbidden != 0 {
            return Err(FileError::Exposed { what, path: path.to_path_buf(), mode, private, fix: mode & !forbidden });
        }
    }
    Ok((file, meta))
}

/// Reads the file `path` as [`open_file`] checks it: at most `limit`
/// bytes, never more than `limit + 1` read. Returns its bytes and its
/// metadata (from the descriptor read).
pub fn read_file(path: &Path, what: &'static str, limit: u64, access: Access) -> Result<(Vec<u8>, Metadata), FileError> {
    let (file, meta) = open_file(path, what, limit, access)?;
    // Within `limit`, checked above.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| FileError::Io { what, path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > limit {
        // It grew while being read.
        return Err(FileError::TooLarge { what, path: path.to_path_buf(), size: bytes.len() as u64, limit });
    }
    Ok((bytes, meta))
}

/// An ancestor through which another user could replace a directory.
#[derive(Debug, thiserror::Error)]
pub enum AncestorError {
    /// An ancestor directory or link belongs to another user.
    #[error(
        "{what} {} is inside {}, which is owned by uid {owner} (neither this user, uid {me}, nor root): that user \
         could move it away and put their own in its place; refusing to use it (choose a place only you and root \
         control)",
        path.display(),
        ancestor.display()
    )]
    NotOwned {
        /// What the path is ("the data directory").
        what: &'static str,
        /// The path checked.
        path: PathBuf,
        /// The ancestor.
        ancestor: PathBuf,
        /// The ancestor's owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// An ancestor directory is writable by group or others and not sticky.
    #[error(
        "{what} {} is inside {}, which is writable by group or others without the sticky bit (mode {mode:04o}): \
         they could move it away and put their own in its place; refusing to use it (chmod go-w or chmod +t that \
         directory, or choose another place)",
        path.display(),
        ancestor.display()
    )]
    Writable {
        /// What the path is ("the data directory").
        what: &'static str,
        /// The path checked.
        path: PathBuf,
        /// The ancestor.
        ancestor: PathBuf,
        /// The ancestor's mode bits (with the sticky bit).
        mode: u32,
    },
    /// An ancestor could not be inspected.
    #[error("cannot inspect {}, an ancestor of {what} {}", ancestor.display(), path.display())]
    Io {
        /// What the path is ("the data directory").
        what: &'static str,
        /// The path checked.
        path: PathBuf,
        /// The ancestor.
        ancestor: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Refuses `path` if another user could replace it through one of its
/// ancestors (see the module docs); `what` names it in errors ("the data
/// directory"). `path` itself need not exist; if it
/// is a symbolic link, its owner is checked, but a directory at `path` is
/// the caller's to check (its own owner and mode). Changes nothing.
pub fn check_ancestors(path: &Path, what: &'static str) -> Result<(), AncestorError> {
    let me = rustix::process::geteuid().as_raw();
    let io_err = |ancestor: &Path| {
        let (path, ancestor) = (path.to_path_buf(), ancestor.to_path_buf());
        move |source| AncestorError::Io { what, path, ancestor, source }
    };
    let abs = std::path::absolute(path).map_err(io_err(path))?;
    // As written: every component that exists, links not followed.
    for (i, a) in abs.ancestors().enumerate() {
        let meta = match std::fs::symlink_metadata(a) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(a)(e)),
        };
        if i == 0 && !meta.file_type().is_symlink() {
            continue;
        }
        check_one(what, path, a, &meta, me)?;
    }
    // As resolved: the real ancestors of the deepest part that exists.
    for (i, a) in abs.ancestors().enumerate() {
        let real = match std::fs::canonicalize(a) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(a)(e)),
        };
        for r in real.ancestors().skip(usize::from(i == 0)) {
            let meta = std::fs::metadata(r).map_err(io_err(r))?;
            check_one(what, path, r, &meta, me)?;
        }
        break;
    }
    Ok(())
}

/// One ancestor's verdict (see [`check_ancestors`]).
fn check_one(what: &'static str, path: &Path, ancestor: &Path, meta: &Metadata, me: u32) -> Result<(), AncestorError> {
    let kind = meta.file_type();
    if !(kind.is_dir() || kind.is_symlink()) {
        // Not a directory: creating or opening the path fails on its own.
        return Ok(());
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(AncestorError::NotOwned {
            what,
            path: path.to_path_buf(),
            ancestor: ancestor.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if kind.is_dir() && mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(AncestorError::Writable { what, path: path.to_path_buf(), ancestor: ancestor.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn ancestors_others_can_write_are_refused_sticky_ones_are_not() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        mode(&open, 0o777);
        let e = check_ancestors(&open.join("a/b/data"), "the test directory").unwrap_err().to_string();
        assert!(e.contains(&format!("inside {}, which is writable", open.display())), "{e}");
        // The directory itself is the caller's business.
        check_ancestors(&open, "the test directory").unwrap();
        mode(&open, 0o1777);
        check_ancestors(&open.join("a/b/data"), "the test directory").unwrap();
        mode(&open, 0o775);
        assert!(matches!(check_ancestors(&open.join("data"), "the test directory"), Err(AncestorError::Writable { mode: 0o775, .. })));
        mode(&open, 0o755);
        check_ancestors(&open.join("data"), "the test directory").unwrap();
    }

    #[test]
    fn a_link_is_judged_by_where_it_leads_too() {
        let t = tempfile::tempdir().unwrap();
        let open = t.path().join("open");
        std::fs::create_dir_all(open.join("real")).unwrap();
        mode(&open, 0o777);
        let safe = t.path().join("safe");
        std::fs::create_dir(&safe).unwrap();
        std::os::unix::fs::symlink(open.join("real"), safe.join("link")).unwrap();
        let e = check_ancestors(&safe.join("link/data"), "the test directory").unwrap_err().to_string();
        assert!(e.contains(&format!("inside {}, which is writable", open.display())), "{e}");
        // The link itself as the path: where it leads is checked too.
        assert!(check_ancestors(&safe.join("link"), "the test directory").is_err());
    }

    #[test]
    fn files_are_checked_on_the_descriptor_and_bounded() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"0123456789").unwrap();
        mode(&f, 0o644);
        assert_eq!(read_file(&f, "a test file", 10, Access::Any).unwrap().0, b"0123456789");
        let e = read_file(&f, "a test file", 9, Access::Any).unwrap_err().to_string();
        assert!(e.contains("10 bytes, over the limit of 9 bytes"), "{e}");
        let e = read_file(&f, "the secret", 10, Access::Private).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        read_file(&f, "the keys", 10, Access::NotWritableByOthers).unwrap();
        mode(&f, 0o666);
        let e = read_file(&f, "the keys", 10, Access::NotWritableByOthers).unwrap_err().to_string();
        assert!(e.contains("must not be writable by group or others (chmod 644"), "{e}");
        let e = read_file(Path::new("/dev/zero"), "a test file", 10, Access::Any).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: it is a character device, not a regular file"), "{e}");
        let e = read_file(t.path(), "a test file", 10, Access::Any).unwrap_err().to_string();
        assert!(e.contains("it is a directory"), "{e}");
    }
}
