//! Compiled modules on disk, keyed by module SHA-256 and engine settings,
//! authenticated so that only artifacts this user's hosts wrote are ever
//! loaded as native code.
//!
//! # Location
//! The directory is chosen by the caller (the `host` command: `--cache-dir`,
//! else `$XDG_CACHE_HOME/reactor-host`, else `$HOME/.cache/reactor-host`,
//! else no disk cache at all: there is no shared fallback). It is created
//! `0700`; an existing one must be a directory owned by the user the host
//! runs as and not writable by group or others, or the engine refuses it
//! ([`LoadError::Cache`]).
//!
//! # Artifacts
//! File `<dir>/<module sha256>-<engine fingerprint>-i1.cwasm` holds
//! wasmtime's serialized code followed by an HMAC-SHA256 over the file's
//! name and the code, under a random 32-byte key kept beside the artifacts
//! in `<dir>/artifacts.key` (created `0600` by the first host that needs it;
//! it must be owned by the user and unreadable by others). A checksum would
//! only catch accidents: anyone able to write an artifact could also write
//! a matching checksum, and the artifact is native code. The name is part
//! of what is authenticated, so a valid artifact cannot be moved under
//! another module's name either. Files are written to a temporary name
//! (`0600`), fsynced and renamed into place, so a crash never leaves a torn
//! artifact under the real name; on read the MAC is verified (in constant
//! time) before wasmtime sees a byte, and anything that fails (torn,
//! tampered, from another key, wasmtime or settings) is never loaded: it is
//! replaced by a fresh compile, with a warning.

use super::validate::LoadError;
use hmac::{Hmac, Mac};
use reactor_types::ModuleHash;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Module;

/// Length of the MAC trailer of an artifact.
const MAC_LEN: usize = 32;
/// Length of the cache key.
const KEY_LEN: usize = 32;
/// The key file's name inside the cache directory.
const KEY_FILE: &str = "artifacts.key";

type HmacSha256 = Hmac<Sha256>;

/// Feeds what is hashed into SHA-256, so the fingerprint depends only on
/// the bytes wasmtime's compatibility description writes, not on a hasher
/// that may change between Rust releases (as `DefaultHasher` may).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }
}

/// The engine's settings as far as compiled code depends on them: the first
/// 16 bytes of a SHA-256 over wasmtime's compatibility description, in hex.
fn fingerprint(engine: &wasmtime::Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..16])
}

/// Refuses `meta` (of `what`) unless the user the host runs as owns it and
/// group and others have none of the `forbidden` mode bits.
fn check_private(what: &str, path: &Path, meta: &std::fs::Metadata, forbidden: u32) -> Result<(), LoadError> {
    let me = rustix::process::geteuid().as_raw();
    let refuse = |reason: String| LoadError::Cache { path: path.to_path_buf(), reason };
    if meta.uid() != me {
        return Err(refuse(format!(
            "the {what} is owned by uid {}, not by the user the host runs as (uid {me}); refusing to use it",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & forbidden != 0 {
        let who = if forbidden == 0o022 { "writable by group or others" } else { "accessible to group or others" };
        return Err(refuse(format!("the {what} is {who} (mode {mode:03o}); refusing to use it (chmod it {:03o})", mode & !forbidden)));
    }
    Ok(())
}

/// Creates the cache directory (`0700`) or checks an existing one. Its
/// ancestors are checked first, before anything is created: one another
/// user could write into (not sticky) or owns would let them swap the
/// directory for their own (see [`crate::local_fs::check_ancestors`]).
fn open_dir(dir: &Path) -> Result<(), LoadError> {
    let refuse = |reason: String| LoadError::Cache { path: dir.to_path_buf(), reason };
    crate::local_fs::check_ancestors(dir, "the module cache directory").map_err(|e| refuse(reactor_types::error_chain(&e)))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| refuse(format!("cannot create the directory: {e}")))?;
    let meta = std::fs::metadata(dir).map_err(|e| refuse(format!("cannot inspect the directory: {e}")))?;
    if !meta.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    check_private("cache directory", dir, &meta, 0o022)
}


/// Reads the cache key, creating it (`0600`, random) if there is none yet.
/// Two hosts creating it at once agree on one: the key is written under a
/// temporary name and hard-linked into place, which never replaces a key
/// another host already uses.
fn open_key(dir: &Path) -> Result<[u8; KEY_LEN], LoadError> {
    let path = dir.join(KEY_FILE);
    let refuse = |reason: String| LoadError::Cache { path: path.clone(), reason };
    for _ in 0..2 {
        match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path) {
            Ok(f) => return read_key(&path, f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(refuse(format!("cannot open the key file: {e}"))),
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| refuse(format!("no randomness for a new key: {e}")))?;
        let tmp = dir.join(format!("{KEY_FILE}.tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, &path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                tracing::info!("created the module cache key {}", path.display());
                return Ok(key);
            }
            // Another host made one first: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(refuse(format!("cannot create the key file: {e}"))),
        }
    }
    Err(refuse("the key file keeps disappearing".into()))
}

fn read_key(path: &Path, f: File) -> Result<[u8; KEY_LEN], LoadError> {
    let refuse = |reason: String| LoadError::Cache { path: path.to_path_buf(), reason };
    let meta = f.metadata().map_err(|e| refuse(format!("cannot inspect the key file: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("the key file is not a regular file".into()));
    }
    check_private("cache key file", path, &meta, 0o077)?;
    let mut key = Vec::with_capacity(KEY_LEN);
    f.take(KEY_LEN as u64 + 1).read_to_end(&mut key).map_err(|e| refuse(format!("cannot read the key file: {e}")))?;
    key.try_into()
        .map_err(|k: Vec<u8>| refuse(format!("the key file holds {} bytes, not {KEY_LEN}; remove it", k.len())))
}

/// The on-disk cache of compiled modules (see the module docs).
pub(crate) struct DiskCache {
    dir: PathBuf,
    fingerprint: String,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("dir", &self.dir).field("fingerprint", &self.fingerprint).finish()
    }
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `dir` and its key; refuses a
    /// directory or key another user could have written.
    pub(crate) fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<Self, LoadError> {
        open_dir(dir)?;
        let key = open_key(dir)?;
        Ok(Self { dir: dir.to_path_buf(), fingerprint: fingerprint(engine), key })
    }

    fn name(&self, hash: &ModuleHash) -> String {
        // `i1`: the artifact is of the module as rewritten by
        // `instrument` version 1; a different rewrite must not reuse it.
        format!("{}-{}-i1.cwasm", hash.to_hex(), self.fingerprint)
    }

    /// The MAC of an artifact: its file name, then its code.
    fn mac(&self, name: &str, code: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(code);
        mac
    }

    /// The cached module, if an authentic artifact exists.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, hash: &ModuleHash) -> Option<Module> {
        let name = self.name(hash);
        let path = self.dir.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("cannot read module cache file {}: {e}; recompiling", path.display());
                return None;
            }
        };
        if bytes.len() < MAC_LEN {
            tracing::warn!("ignoring truncated module cache file {}; recompiling", path.display());
            return None;
        }
        let (code, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        if self.mac(&name, code).verify_slice(tag).is_err() {
            tracing::warn!(
                "module cache file {} failed authentication (damaged, tampered with, or written under another key); \
                 not loading it, recompiling",
                path.display()
            );
            return None;
        }
        // SAFETY: `code` is exactly what `Module::serialize` wrote for this
        // engine configuration (the fingerprint is in the file name): its
        // HMAC under this user's private cache key verifies, so it was
        // written by a host holding the key (this user's) and is neither
        // torn nor altered. wasmtime still checks version and settings
        // compatibility.
        match unsafe { Module::deserialize(engine, code) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("ignoring unusable module cache file {}: {e}", path.display());
                None
            }
        }
    }

    /// Stores a compiled module (atomically: temp file `0600`, fsync,
    /// rename), replacing whatever was under its name.
    pub(crate) fn put(&self, hash: &ModuleHash, module: &Module) -> io::Result<()> {
        let code = module.serialize().map_err(io::Error::other)?;
        let name = self.name(hash);
        let path = self.dir.join(&name);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&code)?;
            f.write_all(&self.mac(&name, &code).finalize().into_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
