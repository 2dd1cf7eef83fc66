//! What makes a node durable: its own chain of checkpoints and the modules
//! its reactors run, both in its data directory.
//!
//! # Layout
//! - `<data-dir>/checkpoints/<seq>.full.snap`, `<seq>.delta.snap`: the chain,
//!   `seq` a 10-digit counter. The chain in use is the newest full
//!   checkpoint and the deltas after it, each on the one before. A new full
//!   checkpoint is taken after [`MAX_DELTAS`] deltas, at the first
//!   checkpoint after a start, and whenever the chain is broken; the files
//!   of the previous chain are deleted only once the new full one is
//!   durable (`fsync` of the file and the directory, done by the writer).
//! - `<data-dir>/modules/<sha256>.wasm`: every module the node loaded, kept
//!   so that a restart can instantiate its reactors again; the name is
//!   checked against the content when loaded back.
//!
//! Every checkpoint records all the node's reactors at one consistent
//! boundary (`Runtime::checkpoint_with`), copy-on-write: they keep serving
//! while it is copied. Deltas are relative to the chain's last checkpoint
//! by id, so a reactor whose tracked pages are relative to something else
//! (a user's own snapshot) goes into the delta whole.
//!
//! A node killed with `SIGKILL` restarts from its last checkpoint: what
//! reactors did after it is lost (the journal closes that gap).
#![forbid(unsafe_code)]

use reactor_runtime::snapshot::{Capture, Compression, Kind, SnapshotError, SnapshotFile, SnapshotId, SnapshotOptions};
use reactor_runtime::{CheckpointScope, Engine, LoadedModule, ModuleHash, Runtime, abi};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deltas after a full checkpoint before the next one is full again.
pub const MAX_DELTAS: usize = 16;

/// The checkpoint directory's name in a data directory.
pub const CHECKPOINTS: &str = "checkpoints";
/// The module directory's name in a data directory.
pub const MODULES: &str = "modules";

/// Why a checkpoint could not be taken, or the node's state not read back.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// A file or directory could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The runtime could not take the checkpoint (nothing was written).
    #[error("cannot take a checkpoint: {0}")]
    Checkpoint(#[source] SnapshotError),
    /// A checkpoint file of the chain is unusable. Nothing was deleted:
    /// move the directory away to start empty, or repair the file.
    #[error("checkpoint {} is unusable: {source}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SnapshotError,
    },
    /// The chain does not link up: a delta is not on the file before it.
    #[error("checkpoint {} is a delta on {base}, not on {} (the chain is broken; nothing was deleted)", path.display(), previous.display())]
    Broken {
        /// The delta.
        path: PathBuf,
        /// What it is a delta on.
        base: SnapshotId,
        /// The file before it.
        previous: PathBuf,
    },
    /// A kept module's content does not match its name, or does not load.
    #[error("kept module {}: {why}", path.display())]
    Module {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DurableError + use<> {
    let path = path.to_owned();
    move |source| DurableError::Io { op, path, source }
}

/// Creates `dir` (owner only) if missing.
fn make_dir(dir: &Path) -> Result<(), DurableError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync", dir))
}

/// One file of the chain.
#[derive(Debug, Clone)]
struct Link {
    path: PathBuf,
    id: SnapshotId,
}

/// What [`Checkpoints::take`] did.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The file written.
    pub path: PathBuf,
    /// Full or a delta.
    pub kind: Kind,
    /// Reactors recorded.
    pub reactors: usize,
    /// Its length.
    pub file_bytes: u64,
    /// From the call to the file being durable.
    pub elapsed: Duration,
    /// Files of the previous chain deleted (after a full checkpoint).
    pub deleted: usize,
}

/// The node's chain of checkpoints.
#[derive(Debug)]
pub struct Checkpoints {
    dir: PathBuf,
    chain: Vec<Link>,
    /// Files older than the chain (a previous chain, kept until a new full
    /// checkpoint is durable).
    stale: Vec<PathBuf>,
    next_seq: u64,
    /// The next checkpoint is full (first one after a start, or after a
    /// failed one).
    full_next: bool,
    stats: CheckpointStats,
    /// How page data is stored (`host node --compress-checkpoints`).
    compression: Compression,
}

/// What the node's checkpoints did since it started (for its metrics).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CheckpointStats {
    /// Checkpoints written.
    pub taken: u64,
    /// Checkpoints that failed.
    pub failed: u64,
    /// Seconds they took, in all (call to durable file).
    pub seconds: f64,
    /// The last one's seconds.
    pub last_seconds: f64,
    /// The last one's file bytes.
    pub last_bytes: u64,
}

/// `<seq>.full.snap` or `<seq>.delta.snap`.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (seq, rest) = name.split_once('.')?;
    if seq.len() != 10 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match rest {
        "full.snap" => true,
        "delta.snap" => false,
        _ => return None,
    };
    Some((seq.parse().ok()?, full))
}

impl Checkpoints {
    /// Opens (creating it if needed) `<data_dir>/checkpoints` and reads the
    /// chain in use: the newest full checkpoint and the deltas after it,
    /// each checked to be on the one before.
    pub fn open(data_dir: &Path) -> Result<Self, DurableError> {
        let dir = data_dir.join(CHECKPOINTS);
        make_dir(&dir)?;
        let mut found: Vec<(u64, bool, PathBuf)> = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let e = e.map_err(io_err("list", &dir))?;
            let name = e.file_name();
            if let Some((seq, full)) = name.to_str().and_then(parse_name) {
                found.push((seq, full, e.path()));
            }
        }
        found.sort_by_key(|f| f.0);
        let next_seq = found.last().map_or(1, |f| f.0 + 1);
        let start = found.iter().rposition(|f| f.1);
        let (stale, chain_files) = match start {
            Some(i) => (found[..i].iter().map(|f| f.2.clone()).collect(), &found[i..]),
            // Deltas without a full checkpoint cannot be restored: keep
            // them, start a new chain.
            None => (found.iter().map(|f| f.2.clone()).collect(), &found[found.len()..]),
        };
        let mut chain: Vec<Link> = Vec::new();
        for (_, _, path) in chain_files {
            let f = SnapshotFile::open(path, abi::ABI_VERSION)
                .map_err(|e| DurableError::Damaged { path: path.clone(), source: e.into() })?;
            let h = f.header();
            if let (Kind::Delta { base }, Some(prev)) = (h.kind, chain.last())
                && base != prev.id
            {
                return Err(DurableError::Broken { path: path.clone(), base, previous: prev.path.clone() });
            }
            chain.push(Link { path: path.clone(), id: h.id });
        }
        Ok(Self {
            dir,
            chain,
            stale,
            next_seq,
            full_next: true,
            stats: CheckpointStats::default(),
            compression: Compression::None,
        })
    }

    /// Store the page data of the checkpoints taken from now on compressed
    /// (LZ4, format version 3) or not. A restart then decompresses every
    /// page instead of mapping them lazily: smaller files, slower restarts.
    pub fn set_compression(&mut self, compression: Compression) {
        self.compression = compression;
    }

    /// The chain in use, oldest first: what a restart restores.
    pub fn chain(&self) -> Vec<PathBuf> {
        self.chain.iter().map(|l| l.path.clone()).collect()
    }

    /// Opens the chain's files for a restore.
    pub fn open_chain(&self) -> Result<Vec<SnapshotFile>, DurableError> {
        self.chain
            .iter()
            .map(|l| {
                SnapshotFile::open(&l.path, abi::ABI_VERSION)
                    .map_err(|e| DurableError::Damaged { path: l.path.clone(), source: e.into() })
            })
            .collect()
    }

    /// Takes a checkpoint of every reactor of `runtime` (copy-on-write:
    /// they keep serving) and writes it durably as the chain's next file: a
    /// delta on the chain's last checkpoint, or a full one (the first after
    /// a start, after [`MAX_DELTAS`] deltas, or after a failure), after
    /// which the previous chain's files are deleted.
    pub fn take(&mut self, runtime: &Runtime) -> Result<Taken, DurableError> {
        let r = self.take_one(runtime);
        match &r {
            Ok(t) => {
                self.stats.taken += 1;
                self.stats.seconds += t.elapsed.as_secs_f64();
                self.stats.last_seconds = t.elapsed.as_secs_f64();
                self.stats.last_bytes = t.file_bytes;
            }
            Err(_) => self.stats.failed += 1,
        }
        r
    }

    /// What the checkpoints did since the node started.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    fn take_one(&mut self, runtime: &Runtime) -> Result<Taken, DurableError> {
        let started = Instant::now();
        let delta_on = match self.chain.last() {
            Some(last) if !self.full_next && self.chain.len() <= MAX_DELTAS => Some(last.id),
            _ => None,
        };
        let options = SnapshotOptions {
            capture: if delta_on.is_some() { Capture::Incremental } else { Capture::Concurrent },
            track: true,
            // Journaled reactors start a segment at every checkpoint.
            journal: true,
        };
        // A failure leaves reactors' tracking in an unknown state: the next
        // checkpoint is full.
        self.full_next = true;
        let cp = runtime
            .checkpoint_with(options, CheckpointScope { reactors: None, base: delta_on })
            .map_err(DurableError::Checkpoint)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let full = delta_on.is_none();
        let path = self.dir.join(format!("{seq:010}.{}.snap", if full { "full" } else { "delta" }));
        let report = cp.write_with(&path, self.compression, &mut |_, _| {}).map_err(DurableError::Checkpoint)?;
        let mut deleted = 0;
        if full {
            let old: Vec<PathBuf> = self.stale.drain(..).chain(self.chain.drain(..).map(|l| l.path)).collect();
            for p in old {
                match fs::remove_file(&p) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("cannot delete the old checkpoint {}: {e}", p.display()),
                }
            }
            sync_dir(&self.dir)?;
        }
        self.chain.push(Link { path: path.clone(), id: cp.id() });
        self.full_next = false;
        Ok(Taken {
            path,
            kind: cp.kind(),
            reactors: cp.reactors().len(),
            file_bytes: report.file_bytes,
            elapsed: started.elapsed(),
            deleted,
        })
    }
}

/// A durable write that failed: what was being done, to which file.
#[derive(Debug)]
pub struct WriteFailure {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

/// Moves `address`'s journal directory (under `journal_dir`) to
/// `<data-dir>/dropped/<address>-<why>`, so a restart neither replays nor
/// mixes it with a new one. `Ok(false)` if it had none.
pub fn set_journal_aside(data_dir: &Path, journal_dir: &Path, address: reactor_runtime::Address, why: &str) -> io::Result<bool> {
    let jdir = reactor_runtime::journal::reactor_dir(journal_dir, address);
    if !jdir.exists() {
        return Ok(false);
    }
    let aside = data_dir.join("dropped").join(format!("{:016x}-{why}", address.0));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(aside.parent().expect("has a parent"))?;
    fs::rename(&jdir, &aside)?;
    Ok(true)
}

/// Writes `bytes` as `<dir>/<name>`, atomically and durably: a temporary
/// file created `0600` (`O_EXCL`, a stale one removed first), written,
/// fsynced, renamed over the name, the directory fsynced. What every file
/// of a node's state is written with.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WriteFailure> {
    let fail = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| WriteFailure { op, path, source }
    };
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove the stale", &tmp)(e)),
    }
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(fail("create", &tmp))?;
    f.write_all(bytes).map_err(fail("write", &tmp))?;
    f.sync_all().map_err(fail("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(fail("rename over", &path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail("fsync", dir))
}

impl From<WriteFailure> for DurableError {
    fn from(w: WriteFailure) -> Self {
        DurableError::Io { op: w.op, path: w.path, source: w.source }
    }
}

/// Keeps `bytes`, a module the node loaded, as `<data_dir>/modules/<hash>.wasm`
/// (written once, durably; a file already there is left as it is).
pub fn keep_module(data_dir: &Path, hash: &ModuleHash, bytes: &[u8]) -> Result<(), DurableError> {
    let dir = data_dir.join(MODULES);
    make_dir(&dir)?;
    let name = format!("{}.wasm", hash.to_hex());
    if dir.join(&name).is_file() {
        return Ok(());
    }
    Ok(write_durably(&dir, &name, bytes)?)
}

/// The bytes of module `hash`: kept in `<data_dir>/modules`, else one of
/// the built guests'.
pub fn module_bytes(data_dir: &Path, hash: &ModuleHash) -> Option<Vec<u8>> {
    fs::read(data_dir.join(MODULES).join(format!("{}.wasm", hash.to_hex())))
        .ok()
        .or_else(|| crate::node::built_guest(hash).map(|(_, b)| b))
}

/// Loads `bytes`, which must be module `hash` (from another node, or read
/// back), and keeps them (a failure to keep them is logged): the reason
/// when they do not load or are another module.
pub fn load_and_keep(data_dir: &Path, engine: &Engine, hash: &ModuleHash, bytes: &[u8]) -> Result<Arc<LoadedModule>, String> {
    match engine.load(bytes) {
        Ok((m, _)) if m.hash == *hash => {
            if let Err(e) = keep_module(data_dir, hash, bytes) {
                tracing::warn!("could not keep module {}: {e}", hash.to_hex());
            }
            Ok(m)
        }
        Ok(_) => Err("the module's bytes do not match its hash".into()),
        Err(e) => Err(format!("the module does not load here: {e}")),
    }
}

/// Loads every module kept in `<data_dir>/modules`, checking each against
/// its name. Returns how many.
pub fn load_kept_modules(data_dir: &Path, engine: &Engine) -> Result<Vec<Arc<LoadedModule>>, DurableError> {
    let dir = data_dir.join(MODULES);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut loaded = Vec::new();
    for e in entries {
        let path = e.map_err(io_err("list", &dir))?.path();
        let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wasm")) else {
            continue;
        };
        let bytes = Engine::read_module_file(&path).map_err(|e| DurableError::Module { path: path.clone(), why: e.to_string() })?;
        let hash = ModuleHash::of(&bytes);
        if hash.to_hex() != stem {
            return Err(DurableError::Module { path, why: format!("its content has hash {}", hash.to_hex()) });
        }
        let (m, _) = engine.load(&bytes).map_err(|e| DurableError::Module { path: path.clone(), why: e.to_string() })?;
        loaded.push(m);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_name("0000000007.full.snap"), Some((7, true)));
        assert_eq!(parse_name("0000000012.delta.snap"), Some((12, false)));
        for bad in ["7.full.snap", "000000007a.full.snap", "0000000007.full.snap.tmp", "0000000007.part.snap", ""] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
