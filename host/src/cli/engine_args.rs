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
    /// [default: $XDG_CACHE_HOME/reactor-host or ~/.cache/reactor-host].
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
}

impl EngineArgs {
    pub(crate) fn engine(&self) -> anyhow::Result<Arc<Engine>> {
        let cache_dir = if self.no_cache { None } else { Some(self.cache_dir.clone().unwrap_or_else(default_cache_dir)) };
        let engine = Engine::new(EngineConfig { cache_dir, ..EngineConfig::default() })
            .context("cannot start the engine")?;
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

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("reactor-host")
}
