//! Writing a reactor's snapshot to a file, with progress on long writes
//! (`host snapshot`, `host run -o`, `host restore -o`).

use anyhow::Context as _;
use reactor_runtime::snapshot::{Capture, Compression, SnapshotOptions};
use reactor_runtime::{Address, Shard};
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Instant;

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// A progress line on standard error for work over 64 MiB.
pub(crate) fn progress(label: &'static str) -> impl FnMut(u64, u64) {
    let mut last = 0;
    // Redrawn in place on a terminal only: a file or a pipe gets no meter.
    let tty = std::io::stderr().is_terminal();
    move |done, total| {
        if total < 64 << 20 || !tty {
            return;
        }
        let pct = done * 100 / total.max(1);
        if pct != last || done == total {
            last = pct;
            eprint!("\r  {label} {:.0}/{:.0} MiB ({pct}%)", mib(done), mib(total));
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    }
}

/// Snapshots `reactor` (copy-on-write) and writes it to `path`, reporting
/// sizes, times and bandwidth.
pub(crate) fn save(rt: &mut Shard, reactor: Address, path: &Path, compress: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let cp = rt
        .snapshot(reactor, SnapshotOptions::new(Capture::Concurrent))
        .with_context(|| format!("cannot snapshot {reactor}"))?;
    let paused = started.elapsed();
    cp.wait();
    let captured = started.elapsed();
    let compression = if compress { Compression::Lz4 } else { Compression::None };
    let report = cp
        .write_with(path, compression, &mut progress("writing"))
        .with_context(|| format!("cannot write the snapshot to {}", path.display()))?;
    let memory = cp.memory_bytes();
    eprintln!(
        "snapshot of {reactor}: {:.1} MiB of memory, {:.1} MiB stored (zero pages elided{}); reactor paused {:.2?}, \
         copied in {:.2?} ({:.2} GB/s), written and fsynced in {:.2?} ({:.2} GB/s of pages) to {}",
        mib(memory),
        mib(report.page_bytes),
        if compress { format!(", LZ4-compressed into a file of {:.1} MiB", mib(report.file_bytes)) } else { String::new() },
        paused,
        captured,
        memory as f64 / captured.as_secs_f64().max(1e-9) / 1e9,
        report.elapsed,
        report.page_bytes as f64 / report.elapsed.as_secs_f64().max(1e-9) / 1e9,
        path.display(),
    );
    Ok(())
}

