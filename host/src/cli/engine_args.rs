//! The engine and limit flags every subcommand shares, and what they make.

use anyhow::Context as _;
use reactor_runtime::{Engine, EngineConfig, Limits, RuntimeConfig, ShardConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Engine and limit settings shared by every subcommand.
#[derive(Debug, clap::Args)]
pub(crate) struct EngineArgs {
    /// Directory for compiled modules, so a restart does not recompile
    /// [default: $XDG_CACHE_HOME/reactor-host, else $HOME/.cache/reactor-host,
    /// else none]. Created 0700; refused if another user owns it or others
    /// can write to it. Artifacts are authenticated with a key kept in it.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Keep compiled modules in memory only.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Most linear memory one reactor may use, in MiB.
    #[arg(long, global = true, default_value_t = 1024, value_name = "MIB")]
    memory_cap: usize,
    /// Most CPU time one call into a reactor may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    cpu_budget: u64,
    /// Log level for host and reactor logs (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn")]
    pub(crate) log: String,
    /// Logs as JSON, one object per line (time, level, target, message and
    /// fields such as `reactor`), for a log collector.
    #[arg(long, global = true)]
    pub(crate) log_json: bool,
}

impl EngineArgs {
    pub(crate) fn engine(&self) -> anyhow::Result<Arc<Engine>> {
        let cache_dir = if self.no_cache {
            None
        } else {
            let dir = self.cache_dir.clone().or_else(default_cache_dir);
            if dir.is_none() {
                tracing::warn!(
                    "neither XDG_CACHE_HOME nor HOME is set (to an absolute path): compiled modules are kept in memory \
                     only (give --cache-dir to keep them on disk)"
                );
            }
            dir
        };
        let engine = Engine::new(EngineConfig { cache_dir, ..EngineConfig::default() })
            .context("cannot start the engine (--no-cache runs without the disk cache)")?;
        Ok(Arc::new(engine))
    }

    pub(crate) fn runtime_config(&self, shards: usize) -> anyhow::Result<RuntimeConfig> {
        Ok(RuntimeConfig { shards, shard: self.shard_config()?, ..RuntimeConfig::default() })
    }

    pub(crate) fn shard_config(&self) -> anyhow::Result<ShardConfig> {
        anyhow::ensure!(self.memory_cap >= 2, "--memory-cap must be at least 2 MiB (a Rust reactor starts at ~1.1 MiB)");
        anyhow::ensure!(self.cpu_budget >= 1, "--cpu-budget must be at least 1 ms");
        let limits = Limits {
            memory_cap: self.memory_cap.checked_mul(1 << 20).context("--memory-cap is too large")?,
            cpu_budget: Duration::from_millis(self.cpu_budget),
            ..Limits::default()
        };
        Ok(ShardConfig { limits, ..ShardConfig::default() })
    }
}

/// The platform's cache directory for this program: `$XDG_CACHE_HOME/reactor-host`, else
/// `$HOME/.cache/reactor-host` (relative values are ignored, as the XDG specification says). `None` without
/// either: there is no shared fallback such as `/tmp`, which other users could write into.
fn default_cache_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".cache")))?;
    Some(base.join("reactor-host"))
}
