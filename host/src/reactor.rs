//! One live reactor: its wasmtime store (which owns its linear memory), its
//! entry points, its identity, and how a call into it can fail.
//!
//! A reactor is only ever touched by the thread that owns it. Calls into it
//! happen at message boundaries: [`Reactor::instantiate`] runs the init entry
//! point, [`Reactor::receive`] hands over one batch. Host calls made during
//! those calls reach the rest of the runtime through the [`Router`] lent to
//! the store for the duration of the call.

use crate::engine::{Engine, GlobalType, LoadedModule, ModuleHash};
use crate::hostcalls::GuestFault;
use crate::refs::Blob;
use crate::shard::Router;
use guest_sdk::abi;
use rustc_hash::FxHashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use crate::snapshot::SnapshotId;
use crate::snapshot::format::GlobalValue;
use crate::sys::protect::Tracker;
use wasmtime::{Global, Instance, Memory, ResourceLimiter, Store, Trap, TypedFunc, Val, WasmBacktrace};
use wasmtime_wasi::p1::WasiP1Ctx;

/// A reactor's address: a tag `[node: 16][shard: 8][serial: 40]` (see
/// [`refs`](crate::refs)), unique across nodes and restarts when the runtime
/// has a data directory; [`Address::HOST`] is the outside world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Address(pub u64);

impl Address {
    /// The outside world of a process that is not in a cluster (node 0).
    pub const HOST: Address = Address(abi::HOST_ADDRESS);

    /// The outside world of node `node`: its host (serial 0 is never a
    /// reactor). A reply to it from any node reaches that node's host.
    pub const fn host_of(node: u16) -> Address {
        Address::new(node, 0, 0)
    }

    /// Whether this is some node's host rather than a reactor.
    pub const fn is_host(self) -> bool {
        self.serial() == 0
    }
}

impl fmt::Display for Address {
    /// `#<shard>:<serial>` on node 0, `#<node>.<shard>:<serial>` otherwise,
    /// or `#host`. [`Address::from_str`](std::str::FromStr) reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::HOST {
            return f.write_str("#host");
        }
        if self.is_host() && self.0 & ((1u64 << 48) - 1) == 0 {
            return write!(f, "#{}.host", self.node());
        }
        match self.node() {
            0 => write!(f, "#{}:{}", self.shard(), self.serial()),
            node => write!(f, "#{node}.{}:{}", self.shard(), self.serial()),
        }
    }
}

/// Per-reactor limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of linear memory the reactor may have.
    pub memory_cap: usize,
    /// Most CPU time one call into the reactor (init or one batch) may take
    /// before the reactor is failed.
    pub cpu_budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_cap: 1 << 30, cpu_budget: Duration::from_secs(5) }
    }
}

/// Enforces the memory cap and remembers that it was hit.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// Set when a growth was refused: (current, requested) bytes.
    refused: Option<(usize, usize)>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some((current, desired));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The host state inside a reactor's store.
pub(crate) struct ReactorData {
    pub(crate) address: Address,
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    /// The guest's own account of why it is failing (its panic message).
    pub(crate) fail_note: Option<String>,
    /// Set once instantiated.
    pub(crate) memory: Option<Memory>,
    /// The runtime, lent to the store during a call into the guest.
    pub(crate) router: Option<Box<Router>>,
    /// Shared blobs this reactor holds, by tag (at most
    /// `abi::MAX_HELD_BLOBS`); dropped with the reactor.
    pub(crate) held: FxHashMap<u64, Arc<Blob>>,
}

impl ReactorData {
    /// The shared blobs this reactor holds (what a snapshot records by tag).
    pub(crate) fn held_blobs(&self) -> impl Iterator<Item = &Arc<Blob>> {
        self.held.values()
    }

    pub(crate) fn wasi_mut(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    /// The lent router. Host calls only run during a call into the guest,
    /// which the runtime makes with the router lent.
    pub(crate) fn router(&mut self) -> &mut Router {
        self.router.as_deref_mut().expect("host call outside a runtime call")
    }
}

/// Why a reactor failed. The reactor is gone: its memory is freed and its
/// queued messages are dropped; every other reactor is unaffected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The guest panicked with this message.
    Panic(String),
    /// The guest trapped.
    Trap(String),
    /// The guest trapped after the host refused to grow its memory.
    MemoryCap {
        /// The cap in bytes.
        cap: usize,
        /// The size the guest asked for.
        requested: usize,
    },
    /// One call ran longer than the CPU budget.
    CpuBudget(Duration),
    /// The guest called WASI `proc_exit`.
    Exit(i32),
    /// The guest passed the host something invalid (a pointer outside its
    /// memory, an impossible length).
    GuestFault(String),
    /// An entry point returned a non-zero status.
    Status {
        /// The entry point.
        entry: &'static str,
        /// What it returned.
        status: i32,
    },
    /// Anything else wasmtime reported.
    Other(String),
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Panic(m) => write!(f, "{m}"),
            Self::Trap(m) => write!(f, "trapped: {m}"),
            Self::MemoryCap { cap, requested } => write!(
                f,
                "ran out of memory: asked for {} MiB, over its cap of {} MiB",
                requested >> 20,
                cap >> 20
            ),
            Self::CpuBudget(d) => write!(f, "ran longer than its CPU budget of {d:?} in one call (infinite loop?)"),
            Self::Exit(c) => write!(f, "exited with code {c}"),
            Self::GuestFault(m) => write!(f, "made an invalid host call: {m}"),
            Self::Status { entry, status } => write!(f, "`{entry}` returned status {status}"),
            Self::Other(m) => write!(f, "failed: {m}"),
        }
    }
}

/// A failed reactor's record: what happened and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub reason: FailureReason,
    /// The guest's call stack when it happened (function names when the
    /// module keeps its name section).
    pub backtrace: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(bt) = &self.backtrace {
            write!(f, "\n{bt}")?;
        }
        Ok(())
    }
}

/// A live reactor.
pub(crate) struct Reactor {
    store: Store<ReactorData>,
    receive: TypedFunc<(u32, u32), i32>,
    module: Arc<LoadedModule>,
    limits: Limits,
    ticks: u64,
    /// The module's mutable globals, in `module.globals` order.
    globals: Vec<Global>,
    /// Page protection state for snapshots of its memory.
    pub(crate) tracker: Tracker,
    /// The snapshot its tracked dirty pages are relative to.
    pub(crate) snap_base: Option<SnapshotId>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor").field("address", &self.store.data().address).finish()
    }
}

impl Reactor {
    /// Creates the store and instance of a reactor without running any of
    /// its code but what instantiation runs (data segments, a start
    /// function): the common part of spawning and restoring.
    pub(crate) fn instantiate_bare(
        engine: &Engine,
        module: &Arc<LoadedModule>,
        address: Address,
        limits: Limits,
    ) -> Result<(Self, Instance), Failure> {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().inherit_stdout().inherit_stderr().build_p1();
        let data = ReactorData {
            address,
            wasi,
            limiter: MemoryLimiter { cap: limits.memory_cap, refused: None },
            fail_note: None,
            memory: None,
            router: None,
            held: FxHashMap::default(),
        };
        let mut store = Store::new(engine.wasmtime(), data);
        store.limiter(|d| &mut d.limiter);
        store.epoch_deadline_trap();
        let tick = engine.epoch_tick().as_nanos().max(1);
        let ticks = (limits.cpu_budget.as_nanos() / tick).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let fail = |store: &mut Store<ReactorData>, e: wasmtime::Error| failure_from(store, e, limits);
        let instance = match module.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(&mut store, e)),
        };
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .expect("validated at load: memory export");
        store.data_mut().memory = Some(memory);
        let receive = instance
            .get_typed_func::<(u32, u32), i32>(&mut store, abi::EXPORT_RECEIVE)
            .expect("validated at load: receive export");
        let globals = module
            .globals
            .iter()
            .map(|g| instance.get_global(&mut store, &g.export).expect("exported by the load-time rewrite"))
            .collect();
        let r = Self {
            store,
            receive,
            module: module.clone(),
            limits,
            ticks,
            globals,
            tracker: Tracker::default(),
            snap_base: None,
        };
        Ok((r, instance))
    }

    /// Instantiates `module` and runs its init entry point with `init`
    /// (readable by the guest through `inbox_read`).
    pub(crate) fn instantiate(
        engine: &Engine,
        module: &Arc<LoadedModule>,
        address: Address,
        limits: Limits,
        router: &mut Option<Box<Router>>,
        init: &[u8],
    ) -> Result<Self, Failure> {
        let (mut r, instance) = Self::instantiate_bare(engine, module, address, limits)?;
        let init_fn = instance
            .get_typed_func::<u32, i32>(&mut r.store, abi::EXPORT_INIT)
            .expect("validated at load: init export");
        r.lend(router, init);
        let result = (|| {
            if module.has_initialize {
                let f = instance.get_typed_func::<(), ()>(&mut r.store, abi::EXPORT_WASI_INITIALIZE)?;
                f.call(&mut r.store, ())?;
            }
            init_fn.call(&mut r.store, init.len() as u32)
        })();
        r.reclaim(router);
        r.check(result, abi::EXPORT_INIT)?;
        Ok(r)
    }

    /// Lends the router and stages `input` for `inbox_read`.
    fn lend(&mut self, router: &mut Option<Box<Router>>, input: &[u8]) {
        let mut rt = router.take().expect("router already lent");
        rt.stage_input(input);
        rt.affinity = 0;
        let data = self.store.data_mut();
        data.router = Some(rt);
        data.limiter.refused = None;
        self.store.set_epoch_deadline(self.ticks);
    }

    fn reclaim(&mut self, router: &mut Option<Box<Router>>) {
        *router = self.store.data_mut().router.take();
        assert!(router.is_some(), "router lost during a call");
    }

    fn check(&mut self, result: wasmtime::Result<i32>, entry: &'static str) -> Result<(), Failure> {
        match result {
            Ok(0) => Ok(()),
            Ok(status) => Err(Failure { reason: FailureReason::Status { entry, status }, backtrace: None }),
            Err(e) => Err(failure_from(&mut self.store, e, self.limits)),
        }
    }

    /// Delivers one encoded batch of `count` envelopes.
    pub(crate) fn receive(
        &mut self,
        router: &mut Option<Box<Router>>,
        batch: &[u8],
        count: u32,
    ) -> Result<(), Failure> {
        self.lend(router, batch);
        let result = self.receive.call(&mut self.store, (batch.len() as u32, count));
        self.reclaim(router);
        self.check(result, abi::EXPORT_RECEIVE)
    }

    /// The shared blobs this reactor holds.
    pub(crate) fn held_blobs(&self) -> impl Iterator<Item = &Arc<Blob>> {
        self.store.data().held_blobs()
    }

    /// Called at message boundaries: lets a finished snapshot copy go.
    pub(crate) fn settle(&mut self) {
        self.tracker.settle();
    }

    /// The module it runs.
    pub(crate) fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    /// A copy of its linear memory.
    pub(crate) fn memory_copy(&self) -> Vec<u8> {
        let m = self.store.data().memory.expect("memory set at instantiation");
        m.data(&self.store).to_vec()
    }

    /// Its memory cap.
    pub(crate) fn memory_cap(&self) -> usize {
        self.limits.memory_cap
    }

    /// Base address and byte length of its linear memory.
    pub(crate) fn memory_extent(&self) -> (usize, usize) {
        let m = self.store.data().memory.expect("memory set at instantiation");
        (m.data_ptr(&self.store) as usize, m.data_size(&self.store))
    }

    /// Grows its memory to exactly `bytes` (a multiple of 64 KiB), within
    /// its cap.
    pub(crate) fn grow_memory_to(&mut self, bytes: usize) -> Result<(), String> {
        let m = self.store.data().memory.expect("memory set at instantiation");
        let now = m.data_size(&self.store);
        if bytes < now || !bytes.is_multiple_of(65536) {
            return Err(format!("cannot resize a memory of {now} bytes to {bytes}"));
        }
        if bytes > now {
            m.grow(&mut self.store, ((bytes - now) / 65536) as u64).map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }

    /// Values of its mutable globals.
    pub(crate) fn read_globals(&mut self) -> Vec<GlobalValue> {
        self.module
            .globals
            .iter()
            .zip(&self.globals)
            .map(|(slot, g)| {
                let (ty, bits) = match g.get(&mut self.store) {
                    Val::I32(v) => (0, v as u32 as u128),
                    Val::I64(v) => (1, v as u64 as u128),
                    Val::F32(v) => (2, v as u128),
                    Val::F64(v) => (3, v as u128),
                    Val::V128(v) => (4, v.as_u128()),
                    other => unreachable!("reference-typed mutable globals are refused at load: {other:?}"),
                };
                GlobalValue { index: slot.index, ty, bits }
            })
            .collect()
    }

    /// Sets its mutable globals from a snapshot; they must be exactly the
    /// module's.
    pub(crate) fn write_globals(&mut self, values: &[GlobalValue]) -> Result<(), String> {
        if values.len() != self.globals.len() {
            return Err(format!(
                "it has {} mutable globals, the module {}",
                values.len(),
                self.globals.len()
            ));
        }
        for ((slot, g), v) in self.module.globals.iter().zip(&self.globals).zip(values) {
            let want = global_code(slot.ty);
            if v.index != slot.index || v.ty != want {
                return Err(format!(
                    "global {} of type {} where the module has global {} of type {want}",
                    v.index, v.ty, slot.index
                ));
            }
            let val = match v.ty {
                0 => Val::I32(v.bits as u32 as i32),
                1 => Val::I64(v.bits as u64 as i64),
                2 => Val::F32(v.bits as u32),
                3 => Val::F64(v.bits as u64),
                _ => Val::V128(v.bits.into()),
            };
            g.set(&mut self.store, val).map_err(|e| format!("global {}: {e:#}", v.index))?;
        }
        Ok(())
    }

    /// Makes it hold `blob` (restore).
    pub(crate) fn hold_blob(&mut self, blob: Arc<Blob>) {
        self.store.data_mut().held.insert(blob.tag(), blob);
    }

    /// Hash of the module it runs.
    pub(crate) fn module_hash(&self) -> ModuleHash {
        self.module.hash
    }

    /// Current linear memory size in bytes.
    pub(crate) fn memory_size(&self) -> usize {
        self.store.data().memory.map(|m| m.data_size(&self.store)).unwrap_or(0)
    }
}

/// A global type's code in the snapshot format.
fn global_code(t: GlobalType) -> u8 {
    match t {
        GlobalType::I32 => 0,
        GlobalType::I64 => 1,
        GlobalType::F32 => 2,
        GlobalType::F64 => 3,
        GlobalType::V128 => 4,
    }
}

/// Turns an error out of a call into the guest into a readable failure.
fn failure_from(store: &mut Store<ReactorData>, err: wasmtime::Error, limits: Limits) -> Failure {
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| format!("{bt}")).filter(|s| !s.trim().is_empty());
    let data = store.data_mut();
    let reason = if let Some(fault) = err.downcast_ref::<GuestFault>() {
        FailureReason::GuestFault(fault.to_string())
    } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        FailureReason::Exit(exit.0)
    } else if let Some(note) = data.fail_note.take() {
        FailureReason::Panic(note)
    } else if let Some(trap) = err.downcast_ref::<Trap>() {
        match (trap, data.limiter.refused) {
            (Trap::Interrupt, _) => FailureReason::CpuBudget(limits.cpu_budget),
            (_, Some((_, requested))) => FailureReason::MemoryCap { cap: data.limiter.cap, requested },
            (t, None) => FailureReason::Trap(t.to_string()),
        }
    } else {
        FailureReason::Other(format!("{err:#}"))
    };
    Failure { reason, backtrace }
}
