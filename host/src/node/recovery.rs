//! A restart's journal recovery: which journaled reactors to bring up to
//! date from their journals, and with which segments.
//!
//! A node restarts from its last checkpoint; a journaled reactor did more
//! after it, recorded in the journal segment that starts at that
//! checkpoint (and a reactor spawned after it, in the segment that starts
//! at its spawn). The runtime replays those segments right after the
//! restore, before the shard takes any message (`Runtime::
//! restore_files_then`, `Shard::recover_journal`), and journals the
//! reactor on from where it stopped. What it sent during the replayed
//! calls is not sent again. A journal that cannot be used is named in the
//! log and left on disk as it is; that reactor comes back as of the
//! checkpoint (or not at all, if it was spawned after it).
#![forbid(unsafe_code)]

use journal_format::Journal;
use reactor_runtime::journal::segments;
use reactor_runtime::snapshot::SnapshotId;
use reactor_runtime::{Address, ModuleHash};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One reactor to recover: its journal segments (path and bytes), oldest
/// first.
#[derive(Debug)]
pub struct Plan {
    pub address: Address,
    pub module: ModuleHash,
    pub segments: Vec<(PathBuf, Vec<u8>)>,
}

/// The reactors of `journal_dir` to recover: those in the checkpoint
/// restored (`restored`: its id and the addresses in it) from the segment
/// that starts at it, the others from their spawn; none of `away` (moved
/// to another node).
pub fn plans(journal_dir: &Path, restored: Option<(SnapshotId, &HashSet<Address>)>, away: &HashSet<Address>) -> Vec<Plan> {
    let Ok(dirs) = std::fs::read_dir(journal_dir) else { return Vec::new() };
    let mut plans = Vec::new();
    for d in dirs.filter_map(Result::ok) {
        let Some(address) = d.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok()).map(Address) else { continue };
        if away.contains(&address) {
            continue;
        }
        match plan(&d.path(), address, restored) {
            Ok(Some(p)) => plans.push(p),
            Ok(None) => {}
            Err(why) => tracing::error!(reactor = %address, "the journal of {address} is not replayed: {why}"),
        }
    }
    plans.sort_by_key(|p| p.address);
    plans
}

fn plan(dir: &Path, address: Address, restored: Option<(SnapshotId, &HashSet<Address>)>) -> Result<Option<Plan>, String> {
    let paths = segments(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut segs = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        segs.push((p, bytes));
    }
    let header = |b: &[u8]| Journal::open(b).map(|j| *j.header());
    let in_checkpoint = restored.filter(|(_, set)| set.contains(&address));
    let start = match in_checkpoint {
        Some((id, _)) => segs.iter().rposition(|(_, b)| header(b).is_ok_and(|h| SnapshotId(h.base) == id)).ok_or_else(|| {
            format!("no segment starts at the checkpoint it was restored from ({id}): what it did after it is lost")
        })?,
        None => {
            let Some(k) = segs.iter().rposition(|(_, b)| header(b).is_ok_and(|h| h.from_spawn())) else {
                // Neither in the checkpoint nor journaled from its spawn:
                // gone before the checkpoint (stopped, moved, failed).
                return Ok(None);
            };
            // A reactor that failed before the checkpoint is not brought
            // back to fail again.
            if segs[k..].iter().any(|(_, b)| Journal::open(b).and_then(|j| j.check()).is_ok_and(|s| s.failed.is_some())) {
                return Ok(None);
            }
            k
        }
    };
    let segs: Vec<(PathBuf, Vec<u8>)> = segs.into_iter().skip(start).collect();
    let h = header(&segs[0].1).map_err(|e| format!("{}: {e}", segs[0].0.display()))?;
    Ok(Some(Plan { address, module: ModuleHash(h.module), segments: segs }))
}
