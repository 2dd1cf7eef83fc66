//! Post-mortem bundles: when a journaled reactor fails, the node leaves
//! everything that reproduces the failure on any machine, in
//! `<data-dir>/postmortem/<address>-step<N>/`:
//!
//! - `bundle.json` — the [`Manifest`]: which reactor, which module, the
//!   step that failed and how, the limits it ran under, the files;
//! - its journal segments (`*.journal`), from the newest one whose start
//!   is in the bundle (its spawn, or a checkpoint the node still has) on;
//! - that checkpoint's chain (`*.snap`: the full one and the deltas up to
//!   it), when the first segment starts from one;
//! - `module.wasm`, the module it ran.
//!
//! Checkpoint files are hard links where the file system allows (they are
//! never written again; a new checkpoint replaces an old one by renaming),
//! journal segments copies (a restart cuts the failed call off the last). The bundle is assembled in a
//! hidden directory, synced, and renamed into place: a bundle that exists
//! is whole. `host replay <bundle>` replays it.
#![forbid(unsafe_code)]

use super::durable::{CHECKPOINTS, MODULES};
use reactor_runtime::journal::FailedReactor;
use reactor_runtime::snapshot::{Kind, SnapshotFile, SnapshotId, chain_ending_at};
use reactor_runtime::{Limits, abi};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The bundles' directory in a data directory.
pub const POSTMORTEM: &str = "postmortem";
/// A bundle's manifest file.
pub const MANIFEST: &str = "bundle.json";
/// The module's file in a bundle.
pub const MODULE_FILE: &str = "module.wasm";
/// The largest manifest read back.
pub const MAX_MANIFEST: u64 = 1 << 20;

/// What a bundle holds (`bundle.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// 1.
    pub version: u32,
    /// The reactor's address, as the CLI prints it.
    pub address: String,
    /// `sha256:<hex>` of its module.
    pub module: String,
    /// The step whose call failed it.
    pub step: u64,
    /// Its failure: reason, then guest backtrace.
    pub failure: String,
    /// When the bundle was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its memory cap in bytes and CPU budget per call in ms (the replay
    /// runs under the same).
    pub memory_cap: u64,
    pub cpu_budget_ms: u64,
    /// The snapshot chain the first journal segment starts from, full
    /// first (empty: it starts at the spawn).
    pub snapshots: Vec<String>,
    /// The journal segments, oldest first.
    pub journals: Vec<String>,
}

impl Manifest {
    /// Checks what a manifest read from a file says: version 1, and plain
    /// file names only (no path leaves the bundle's directory).
    pub fn check(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("bundle version {} is not supported (this host reads version 1)", self.version));
        }
        if self.journals.is_empty() {
            return Err("it names no journal".into());
        }
        for n in self.snapshots.iter().chain(&self.journals) {
            if n.is_empty() || n.len() > 255 || n.contains('/') || n.contains('\0') || n == "." || n == ".." {
                return Err(format!("it names a file that is not a plain file name: {n:?}"));
            }
        }
        Ok(())
    }
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("none of its journal segments can be replayed from what the node still has: {0}")]
    NoStart(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError + use<> {
    let path = path.to_path_buf();
    move |source| BundleError::Io { op, path, source }
}

/// The chain of the node's checkpoint files that ends at snapshot `id`
/// (the newest full checkpoint at or before it, then each delta up to it),
/// if the node still has it.
pub fn checkpoint_chain_to(data_dir: &Path, id: SnapshotId) -> Option<Vec<PathBuf>> {
    let dir = data_dir.join(CHECKPOINTS);
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.ends_with(".snap"))
        .collect();
    files.sort();
    let mut links: Vec<(SnapshotId, Kind)> = Vec::new();
    let mut paths = Vec::new();
    for (_, p) in files {
        if let Ok(f) = SnapshotFile::open(&p, abi::ABI_VERSION) {
            links.push((f.header().id, f.header().kind));
            paths.push(p);
        }
    }
    let chain = chain_ending_at(&links, id)?;
    Some(chain.into_iter().map(|i| paths[i].clone()).collect())
}

/// The newest of a reactor's journal `segments` (path and bytes, oldest
/// first) that starts where the node can start it from — its spawn, or a
/// checkpoint the node still has — and that checkpoint's chain (empty from
/// the spawn).
pub fn newest_start(data_dir: &Path, segments: &[(PathBuf, Vec<u8>)]) -> Option<(usize, Vec<PathBuf>)> {
    segments.iter().enumerate().rev().find_map(|(i, (_, bytes))| {
        let h = *journal_format::Journal::open(bytes).ok()?.header();
        if h.from_spawn() { Some((i, Vec::new())) } else { checkpoint_chain_to(data_dir, SnapshotId(h.base)).map(|c| (i, c)) }
    })
}

/// Hard-links `from` as `to`, or copies it where links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BundleError> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map(|_| ()).map_err(io_err("copy", from))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Makes the bundle of `failed` in `<data_dir>/postmortem/`; returns its
/// directory.
pub fn make(data_dir: &Path, failed: &FailedReactor, limits: Limits) -> Result<PathBuf, BundleError> {
    // The newest segment whose start is available, and those after it.
    let mut segs = Vec::new();
    for p in &failed.segments {
        segs.push((p.clone(), fs::read(p).map_err(io_err("read", p))?));
    }
    let names: Vec<String> = failed.segments.iter().map(|p| file_name(p)).collect();
    let (first, chain) = newest_start(data_dir, &segs).ok_or_else(|| BundleError::NoStart(names.join(", ")))?;
    let root = data_dir.join(POSTMORTEM);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(io_err("create", &root))?;
    let name = format!("{:016x}-step{}", failed.address.0, failed.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err("create", &tmp))?;
    let module_src = data_dir.join(MODULES).join(format!("{}.wasm", failed.module));
    link_or_copy(&module_src, &tmp.join(MODULE_FILE))?;
    let mut snapshots = Vec::new();
    for p in &chain {
        let n = file_name(p);
        link_or_copy(p, &tmp.join(&n))?;
        snapshots.push(n);
    }
    // Copies, not links: a restart of the reactor cuts its last segment
    // back to before the failed call.
    let mut journals = Vec::new();
    for p in &failed.segments[first..] {
        let n = file_name(p);
        fs::copy(p, tmp.join(&n)).map_err(io_err("copy", p))?;
        journals.push(n);
    }
    let manifest = Manifest {
        version: 1,
        address: failed.address.to_string(),
        module: format!("sha256:{}", failed.module),
        step: failed.step,
        failure: failed.failure.clone(),
        created_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        memory_cap: limits.memory_cap as u64,
        cpu_budget_ms: limits.cpu_budget.as_millis() as u64,
        snapshots,
        journals,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let mpath = tmp.join(MANIFEST);
    fs::write(&mpath, text).map_err(io_err("write", &mpath))?;
    for e in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
        let p = e.map_err(io_err("read", &tmp))?.path();
        fs::File::open(&p).and_then(|f| f.sync_all()).map_err(io_err("sync", &p))?;
    }
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err("sync", &tmp))?;
    let dest = root.join(&name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
    fs::File::open(&root).and_then(|f| f.sync_all()).map_err(io_err("sync", &root))?;
    Ok(dest)
}
