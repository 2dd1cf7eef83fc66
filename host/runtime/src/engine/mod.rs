//! The wasmtime engine, the linker, and the content-addressed module cache.
//!
//! One [`Engine`] per process: Cranelift, epoch-based preemption driven by a
//! ticker thread, host-owned linear memories (`crate::sys`), and linkers with
//! WASI preview 1 plus the `reactor` host calls. Modules are keyed by the
//! SHA-256 of their bytes; each is validated against the ABI, compiled once,
//! its imports checked against the host's calls, and (with a cache
//! directory) its compiled artifact is kept on disk so a restarted host does
//! not compile it again. The engine and its modules are typed by the host
//! context their host calls reach (`Engine<H>`; the runtime's is its shard
//! router): each module is pre-linked once, at load, with the one linker
//! the engine holds for `H`, so instantiating a reactor is cheap and the
//! import check and the instantiation use the same linker.
//!
//! # Memory configuration: density over guard regions
//!
//! wasmtime's default gives each memory a 4 GiB reservation plus guard
//! regions, which removes bounds checks but costs ~8 GiB of address space and
//! several kernel mappings per reactor: density stops near 22,000 instances
//! (`vm.max_map_count`) and 32,000 (the 128 TiB address space). This engine
//! uses a zero reservation and no guard, with memories allocated by
//! `sys::MmapMemoryCreator` (one mapping each, grown by `mremap`). Generated
//! code therefore bounds-checks every memory access explicitly — a modest
//! slowdown on memory-heavy guests — in exchange for 100,000+ reactors per
//! process and growth to gigabytes without copying.

mod cache;
mod instrument;
mod validate;

use crate::hostcalls;
use crate::store::{HostContext, ReactorData};
use crate::sys::MmapMemoryCreator;
use reactor_types::ModuleHash;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, InstancePre, Linker, Module, OptLevel, Strategy};

pub use validate::LoadError;
pub(crate) use instrument::{GlobalSlot, GlobalType};

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where compiled modules are kept between runs (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// How often the preemption clock ticks.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { cache_dir: None, epoch_tick: Duration::from_millis(1) }
    }
}

/// A module that passed validation, compiled and pre-linked for stores
/// whose host calls reach an `H`.
pub struct LoadedModule<H> {
    /// SHA-256 of the module bytes.
    pub hash: ModuleHash,
    /// Size of the module bytes.
    pub size: usize,
    /// Whether it exports `_initialize` (WASI reactor model).
    has_initialize: bool,
    /// Its mutable globals, each exported by the load-time rewrite so
    /// snapshots can read and write them.
    globals: Vec<GlobalSlot>,
    /// Why its state is more than memory + globals (snapshots refused).
    snapshot_blocker: Option<String>,
    /// Its compiled code, linked with WASI and the reactor calls.
    pre: InstancePre<ReactorData<H>>,
}

impl<H> LoadedModule<H> {
    /// Whether it exports `_initialize` (WASI reactor model), which runs
    /// before its init entry point.
    pub(crate) fn has_initialize(&self) -> bool {
        self.has_initialize
    }

    /// Its mutable globals, in index order, each with the export name the
    /// load-time rewrite gave it.
    pub(crate) fn globals(&self) -> &[GlobalSlot] {
        &self.globals
    }

    /// Why snapshots of its reactors are refused (its state is more than
    /// memory and globals), or `None`.
    pub fn snapshot_blocker(&self) -> Option<&str> {
        self.snapshot_blocker.as_deref()
    }

    /// Its compiled code, pre-linked: what a reactor is instantiated from.
    pub(crate) fn pre(&self) -> &InstancePre<ReactorData<H>> {
        &self.pre
    }
}

impl<H> fmt::Debug for LoadedModule<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule").field("hash", &self.hash).field("size", &self.size).finish()
    }
}

/// Where a loaded module's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSource {
    /// Already loaded in this process.
    Memory,
    /// Read from the on-disk cache.
    Disk,
    /// Compiled now.
    Compiled,
}

/// The process's engine: shared by every reactor, on every thread; `H` is
/// the context its reactors' host calls reach.
pub struct Engine<H> {
    wasmtime: wasmtime::Engine,
    /// WASI preview 1 and the reactor calls: what every module is linked
    /// with (and its imports checked against) at load.
    linker: Linker<ReactorData<H>>,
    modules: Mutex<HashMap<ModuleHash, Arc<LoadedModule<H>>>>,
    names: Mutex<HashMap<String, ModuleHash>>,
    cache: Option<cache::DiskCache>,
    epoch_tick: Duration,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl<H> fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("modules", &self.modules.lock().unwrap().len()).finish()
    }
}

// `HostContext` is the crate's own: outside it, `H` is only ever the
// shards' router (through the public `Engine` alias).
#[allow(private_bounds)]
impl<H: HostContext> Engine<H> {
    /// Builds the engine and starts its preemption clock.
    pub fn new(config: EngineConfig) -> Result<Self, LoadError> {
        let mut c = Config::new();
        c.strategy(Strategy::Cranelift)
            .cranelift_opt_level(OptLevel::Speed)
            .epoch_interruption(true)
            .memory_reservation(0)
            .memory_guard_size(0)
            .memory_reservation_for_growth(0)
            .guard_before_linear_memory(false)
            .memory_may_move(true)
            .memory_init_cow(false)
            .with_host_memory(Arc::new(MmapMemoryCreator))
            .max_wasm_stack(1 << 20)
            // Determinism for journal replay: a NaN's bits and relaxed SIMD
            // results are the same on every machine.
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true);
        let wasmtime = wasmtime::Engine::new(&c).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        // After wasmtime's own handler, so ours sees snapshot write faults
        // from JIT code first and chains everything else to it.
        crate::sys::protect::install_handler();
        let linker = H::linker(&wasmtime).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(cache::DiskCache::open(dir, &wasmtime)?),
            None => None,
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = wasmtime.clone();
            let stop = ticker_stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?
        };
        Ok(Self {
            wasmtime,
            linker,
            modules: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            cache,
            epoch_tick: config.epoch_tick,
            ticker_stop,
            ticker: Some(ticker),
        })
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// Duration of one preemption tick.
    pub fn epoch_tick(&self) -> Duration {
        self.epoch_tick
    }

    /// The largest module file [`Engine::load_file`] reads: 64 MiB (the
    /// example guests are well under 1 MiB).
    pub const MAX_MODULE_FILE: u64 = 64 << 20;

    /// Reads a module file as [`Engine::load_file`] does (a regular file of
    /// at most 64 MiB), without loading it.
    pub fn read_module_file(path: &Path) -> Result<Vec<u8>, LoadError> {
        read_module_file(path, Self::MAX_MODULE_FILE)
    }

    /// Loads a module file; see [`Engine::load`]. Only a regular file of at
    /// most [`Engine::MAX_MODULE_FILE`] bytes is read (checked on the opened
    /// descriptor, and never more than the limit + 1 bytes read): a FIFO, a
    /// device such as `/dev/zero`, a directory or a larger file is refused
    /// without reading it, and no error quotes the file's bytes.
    pub fn load_file(&self, path: &Path) -> Result<(Arc<LoadedModule<H>>, CodeSource), LoadError> {
        let bytes = read_module_file(path, Self::MAX_MODULE_FILE)?;
        self.load(&bytes)
    }

    /// Validates, compiles (or fetches from the cache) and checks a module's
    /// imports. Refuses anything that is not a reactor module for this ABI,
    /// saying why.
    pub fn load(&self, bytes: &[u8]) -> Result<(Arc<LoadedModule<H>>, CodeSource), LoadError> {
        let hash = ModuleHash::of(bytes);
        if let Some(m) = self.modules.lock().unwrap().get(&hash) {
            return Ok((m.clone(), CodeSource::Memory));
        }
        validate::check_bytes(bytes)?;
        // Snapshots need every mutable global reachable: compile the module
        // rewritten to export them (identity stays the hash of the original).
        let inst = instrument::instrument(bytes).map_err(LoadError::Malformed)?;
        let (module, source) = match self.cache.as_ref().and_then(|c| c.get(&self.wasmtime, &hash)) {
            Some(m) => (m, CodeSource::Disk),
            None => {
                let m =
                    Module::new(&self.wasmtime, &inst.bytes).map_err(|e| LoadError::Malformed(format!("{e:#}")))?;
                if let Some(c) = &self.cache
                    && let Err(e) = c.put(&hash, &m)
                {
                    tracing::warn!("cannot write the module cache: {e}");
                }
                (m, CodeSource::Compiled)
            }
        };
        let has_initialize = validate::check_exports(&module)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| validate::link_error(&module, e))?;
        let loaded = Arc::new(LoadedModule {
            hash,
            size: bytes.len(),
            has_initialize,
            globals: inst.globals,
            snapshot_blocker: inst.snapshot_blocker,
            pre,
        });
        let mut modules = self.modules.lock().unwrap();
        let entry = modules.entry(hash).or_insert(loaded);
        Ok((entry.clone(), source))
    }

    /// Gives a loaded module a name reactors can spawn it by.
    pub fn register_name(&self, name: &str, module: &LoadedModule<H>) {
        self.names.lock().unwrap().insert(name.to_string(), module.hash);
    }

    /// A loaded module by hash.
    pub fn module(&self, hash: &ModuleHash) -> Option<Arc<LoadedModule<H>>> {
        self.modules.lock().unwrap().get(hash).cloned()
    }

    /// A name `hash` was registered under, if any.
    pub fn name_of(&self, hash: &ModuleHash) -> Option<String> {
        self.names.lock().unwrap().iter().find(|(_, h)| *h == hash).map(|(n, _)| n.clone())
    }

    /// A loaded module by registered name.
    pub fn module_by_name(&self, name: &str) -> Option<Arc<LoadedModule<H>>> {
        let hash = *self.names.lock().unwrap().get(name)?;
        self.module(&hash)
    }
}

/// Reads a module file of at most `limit` bytes (see [`Engine::load_file`]).
fn read_module_file(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    use crate::local_fs::{Access, FileError, read_file};
    match read_file(path, "module file", limit, Access::Any) {
        Ok((bytes, _)) => Ok(bytes),
        Err(FileError::NotAFile { path, kind, .. }) => Err(LoadError::NotAFile { path, kind }),
        Err(FileError::TooLarge { path, size, limit, .. }) => Err(LoadError::TooLarge { path, size, limit }),
        Err(FileError::Io { path, source, .. }) => Err(LoadError::Io { path, source }),
        // `Access::Any` checks neither owner nor mode.
        Err(e @ (FileError::NotOwned { .. } | FileError::Exposed { .. })) => {
            Err(LoadError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) })
        }
    }
}

/// WASI preview 1 and the reactor calls, for stores holding an `H`: what
/// [`HostContext::linker`] builds (instantiated once, for the one context
/// the runtime has, in the crate that implements it).
pub(crate) fn linker<H: HostContext>(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ReactorData<H>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |d: &mut ReactorData<H>| d.wasi_mut())?;
    hostcalls::restrict_wasi(&mut linker)?;
    hostcalls::register(&mut linker)?;
    Ok(linker)
}

impl<H> Drop for Engine<H> {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
