//! Compiled modules on disk, keyed by module SHA-256 and engine settings.
//!
//! File `<dir>/<module sha256>-<engine fingerprint>-i1.cwasm` holds wasmtime's
//! serialized code followed by the SHA-256 of that code. The file is written
//! to a temporary name, fsynced and renamed into place, so a crash never
//! leaves a torn artifact under the real name; on read the trailing hash is
//! checked before wasmtime sees a byte, and anything that fails (torn,
//! corrupted, from another wasmtime or other settings) is ignored and
//! replaced by a fresh compile.

use super::validate::LoadError;
use reactor_types::ModuleHash;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::Module;

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

#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    fingerprint: String,
}

impl DiskCache {
    pub(crate) fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<Self, LoadError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LoadError::Cache { path: dir.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { dir: dir.to_path_buf(), fingerprint: fingerprint(engine) })
    }

    fn path(&self, hash: &ModuleHash) -> PathBuf {
        // `i1`: the artifact is of the module as rewritten by
        // `instrument` version 1; a different rewrite must not reuse it.
        self.dir.join(format!("{}-{}-i1.cwasm", hash.to_hex(), self.fingerprint))
    }

    /// The cached module, if a valid artifact exists.
    pub(crate) fn get(&self, engine: &wasmtime::Engine, hash: &ModuleHash) -> Option<Module> {
        let path = self.path(hash);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() < 32 {
            tracing::warn!("ignoring truncated module cache file {}", path.display());
            return None;
        }
        let (code, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(code).as_slice() != sum {
            tracing::warn!("ignoring corrupted module cache file {}", path.display());
            return None;
        }
        // SAFETY: `code` is exactly what `Module::serialize` wrote for this
        // engine configuration (the fingerprint is in the file name) into our
        // own cache directory, and its checksum matches, so it is not torn or
        // corrupted. wasmtime still checks version and settings compatibility.
        match unsafe { Module::deserialize(engine, code) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("ignoring unusable module cache file {}: {e}", path.display());
                None
            }
        }
    }

    /// Stores a compiled module (atomically: temp file, fsync, rename).
    pub(crate) fn put(&self, hash: &ModuleHash, module: &Module) -> std::io::Result<()> {
        let code = module.serialize().map_err(std::io::Error::other)?;
        let path = self.path(hash);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&code)?;
            f.write_all(&Sha256::digest(&code))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}
