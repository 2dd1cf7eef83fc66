//! A node's hold on its data directory: the directory is created `0700`
//! (an existing one must belong to the node's user and not be writable by
//! group or others; none of its ancestors may be another user's, or
//! writable by others without the sticky bit, or they could swap the whole
//! directory for theirs), and an exclusive `flock` on `<data-dir>/node.lock`,
//! held for the node's life, keeps a second node off it. The lock file
//! holds the pid of the node holding it, for the refusal's message.
//!
//! The kernel drops the lock when the holding process exits, however it
//! exits, so a crashed node never leaves a stale lock behind.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "node.lock";

/// Why the data directory could not be taken. Nothing in it was changed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory's lock.
    #[error(
        "data directory {} is in use by another node{}; stop it first or give this one another --data-dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory belongs to another user.
    #[error("data directory {} is owned by uid {owner}, not by this node's user (uid {me}); refusing to use it", dir.display())]
    NotOwned {
        /// The data directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The node's (effective) uid.
        me: u32,
    },
    /// Group or others may write into the directory (and so replace the
    /// admin socket or the node's state).
    #[error("data directory {} is writable by group or others (mode {mode:03o}); refusing to use it (chmod 700 it)", dir.display())]
    Writable {
        /// The data directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An ancestor of the directory would let another user move it away
    /// and put theirs in its place (checked before anything is created).
    #[error(transparent)]
    Ancestor(#[from] reactor_runtime::local_fs::AncestorError),
    /// The path exists and is not a directory.
    #[error("data directory {} is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// The directory or its lock file could not be created, opened or
    /// locked.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The exclusive hold on a data directory; released when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    dir: PathBuf,
}

impl DataDirLock {
    /// Checks the ancestors of `dir`, creates it (`0700`) if it does not
    /// exist, checks its owner and mode, and takes its lock. Refuses, changing nothing, if another
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { op, path, source }
        };
        reactor_runtime::local_fs::check_ancestors(dir, "the data directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create the data directory", dir))?;
        let meta = std::fs::metadata(dir).map_err(io_err("inspect the data directory", dir))?;
        if !meta.is_dir() {
            return Err(LockError::NotADirectory { dir: dir.to_owned() });
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(LockError::NotOwned { dir: dir.to_owned(), owner: meta.uid(), me });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(LockError::Writable { dir: dir.to_owned(), mode });
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&path)
            .map_err(io_err("open the lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).take(32).read_to_string(&mut text);
                return Err(LockError::InUse { dir: dir.to_owned(), pid: text.trim().parse().ok() });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        let written = (|| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        })();
        written.map_err(io_err("write the lock file", &path))?;
        Ok(Self { file, dir: dir.to_owned() })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// `O_NOFOLLOW`: the lock file is never a symbolic link planted to make the
/// node truncate another file.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}
