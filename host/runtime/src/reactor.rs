//! One live reactor: its wasmtime store (which owns its linear memory), its
//! entry points, its identity, and how a call into it can fail.
//!
//! A reactor is only ever touched by the thread that owns it. Calls into it
//! happen at message boundaries: [`Reactor::instantiate`] runs the init entry
//! point, [`Reactor::receive`] hands over one batch. Host calls made during
//! those calls reach the rest of the runtime through the
//! [`HostContext`](crate::store::HostContext) lent to the store for the
//! duration of the call. A reactor's type names its context (`Reactor<H>`),
//! so those calls are static; it is instantiated from its module's code as
//! the engine pre-linked it for `H`.
#![forbid(unsafe_code)]

use crate::journal::Tap;
use journal_format::StateDigest;
use crate::engine::{Engine, GlobalType, LoadedModule};
use crate::guest_output::{GuestOutput, Stream};
use crate::hostcalls::GuestFault;
use crate::refs::Blob;
use crate::budget::{Account, NodeBudget};
use crate::store::{HostContext, ReactorData, Refusal};
use guest_sdk::abi;
use reactor_types::{Address, Failure, FailureReason, ModuleHash};
use crate::sys::protect::lazy::LazyPages;
use snapshot_format::{FormatError, GlobalValue, HEADER_LEN, PAGE_SIZE};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Global, Instance, Memory, Store, Trap, TypedFunc, Val, WasmBacktrace};

/// Per-reactor limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of linear memory the reactor may have.
    pub memory_cap: usize,
    /// Most CPU time one call into the reactor (init or one batch) may take
    /// before the reactor is failed.
    pub cpu_budget: Duration,
    /// The reactor's byte budget: its linear memory, the blobs it holds and
    /// the bytes queued for it together (see [`crate::budget`]). `None`:
    /// `memory_cap` plus [`Limits::DEFAULT_ALLOWANCE`].
    pub budget: Option<usize>,
}

impl Limits {
    /// What the default budget allows beyond a full memory, for held blobs
    /// and queued messages.
    pub const DEFAULT_ALLOWANCE: usize = 256 << 20;

    /// The byte budget in bytes.
    pub fn budget_bytes(&self) -> usize {
        self.budget.unwrap_or(self.memory_cap.saturating_add(Self::DEFAULT_ALLOWANCE))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_cap: 1 << 30, cpu_budget: Duration::from_secs(5), budget: None }
    }
}

/// Why saved state does not fit a reactor's instance (restore). Nothing
/// was changed but what the variant says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StateMismatch {
    /// A memory cannot shrink, and grows by whole 64 KiB pages.
    #[error("cannot resize a memory of {now} bytes to {wanted}")]
    MemorySize {
        /// Its size now.
        now: usize,
        /// The size asked for.
        wanted: usize,
    },
    /// wasmtime refused the growth; the memory keeps its size.
    #[error("cannot grow the memory to {wanted} bytes: {reason}")]
    Grow {
        /// The size asked for.
        wanted: usize,
        /// wasmtime's account.
        reason: String,
    },
    /// Another number of mutable globals than the module has; none was set.
    #[error("it has {given} mutable globals, the module {module}")]
    GlobalCount {
        /// Globals given.
        given: usize,
        /// Globals the module has.
        module: usize,
    },
    /// A global that is not the module's at that position; the globals
    /// before it were set.
    #[error("global {index} of type {ty} where the module has global {module_index} of type {module_ty}")]
    Global {
        /// Its index in the saved state.
        index: u32,
        /// Its type code in the saved state.
        ty: u8,
        /// The module's global at that position.
        module_index: u32,
        /// Its type code.
        module_ty: u8,
    },
    /// wasmtime refused the value.
    #[error("global {index}: {reason}")]
    SetGlobal {
        /// The global.
        index: u32,
        /// wasmtime's account.
        reason: String,
    },
}

/// A live reactor whose host calls reach an `H`.
pub(crate) struct Reactor<H: HostContext> {
    store: Store<ReactorData<H>>,
    receive: TypedFunc<(u32, u32), i32>,
    /// Its linear memory (also in the store data, for host calls).
    memory: Memory,
    module: Arc<LoadedModule<H>>,
    limits: Limits,
    ticks: u64,
    /// The module's mutable globals, in `module.globals()` order.
    globals: Vec<Global>,
    /// Pages restored lazily, checked on first touch (after the store:
    /// the memory unregisters them when it goes).
    lazy: LazyPages,
}

impl<H: HostContext> fmt::Debug for Reactor<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor").field("address", &self.store.data().address()).finish()
    }
}

impl<H: HostContext> Reactor<H> {
    /// Creates the store and instance of a reactor without running any of
    /// its code but what instantiation runs (data segments, a start
    /// function): the common part of spawning and restoring.
    /// Its memory, the blobs it holds and the bytes queued for it are
    /// charged to `account`, its memory and queued bytes to `node` too.
    pub(crate) fn instantiate_bare(
        engine: &Engine<H>,
        module: &Arc<LoadedModule<H>>,
        address: Address,
        limits: Limits,
        account: Arc<Account>,
        node: Arc<NodeBudget>,
    ) -> Result<(Self, Instance), Failure> {
        // Output is captured into the log, never inherited (a full pipe
        // would block the shard); no stdin, no files, no sockets.
        let output = GuestOutput::new(address);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .build_p1();
        let data = ReactorData::new(address, wasi, limits.memory_cap, account, node);
        let mut store = Store::new(engine.wasmtime(), data);
        store.limiter(|d| d);
        store.epoch_deadline_trap();
        let tick = engine.epoch_tick().as_nanos().max(1);
        let ticks = (limits.cpu_budget.as_nanos() / tick).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let fail = |store: &mut Store<ReactorData<H>>, e: wasmtime::Error| failure_from(store, e, limits);
        let instance = match module.pre().instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(&mut store, e)),
        };
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .expect("validated at load: memory export");
        store.data_mut().set_memory(memory);
        let receive = instance
            .get_typed_func::<(u32, u32), i32>(&mut store, abi::EXPORT_RECEIVE)
            .expect("validated at load: receive export");
        let globals = module
            .globals()
            .iter()
            .map(|g| instance.get_global(&mut store, &g.export).expect("exported by the load-time rewrite"))
            .collect();
        let r = Self { store, receive, memory, module: module.clone(), limits, ticks, globals, lazy: LazyPages::default() };
        Ok((r, instance))
    }

    /// Instantiates `module` and runs its init entry point with `init`
    /// (readable by the guest through `inbox_read`), with `host` lent for
    /// the call.
    #[expect(clippy::too_many_arguments, reason = "the store's parts, the lent context, the input and the tap")]
    pub(crate) fn instantiate(
        engine: &Engine<H>,
        module: &Arc<LoadedModule<H>>,
        address: Address,
        limits: Limits,
        (account, node): (Arc<Account>, Arc<NodeBudget>),
        host: &mut Option<Box<H>>,
        init: &[u8],
        tap: &mut Option<Box<Tap>>,
    ) -> Result<Self, Failure> {
        let (mut r, instance) = Self::instantiate_bare(engine, module, address, limits, account, node)?;
        let init_fn = instance
            .get_typed_func::<u32, i32>(&mut r.store, abi::EXPORT_INIT)
            .expect("validated at load: init export");
        r.store.data_mut().set_tap(tap.take());
        r.lend(host, init);
        let result = (|| {
            if module.has_initialize() {
                let f = instance.get_typed_func::<(), ()>(&mut r.store, abi::EXPORT_WASI_INITIALIZE)?;
                f.call(&mut r.store, ())?;
            }
            init_fn.call(&mut r.store, init.len() as u32)
        })();
        r.reclaim(host);
        if let Err(f) = r.check(result, abi::EXPORT_INIT) {
            // The caller records the failed call with what its tap saw.
            *tap = r.store.data_mut().set_tap(None);
            return Err(f);
        }
        Ok(r)
    }

    /// Its journal tap, if it is journaled or replayed.
    pub(crate) fn tap(&mut self) -> Option<&mut Tap> {
        self.store.data_mut().tap()
    }

    /// Sets (or, with `None`, removes) its journal tap; returns the old one.
    pub(crate) fn set_tap(&mut self, tap: Option<Box<Tap>>) -> Option<Box<Tap>> {
        self.store.data_mut().set_tap(tap)
    }

    /// The state digest of its memory and globals (the journal format's).
    pub(crate) fn state_digest(&mut self) -> u64 {
        let mut d = StateDigest::memory(self.memory.data(&self.store));
        for g in self.read_globals() {
            d.global(g.index, g.ty, g.bits);
        }
        d.finish()
    }

    /// Lends the host context and stages `input` for `inbox_read`.
    fn lend(&mut self, host: &mut Option<Box<H>>, input: &[u8]) {
        let mut h = host.take().expect("host context already lent");
        h.begin(input);
        self.store.data_mut().lend(h);
        self.store.set_epoch_deadline(self.ticks);
    }

    /// Takes the host context back after the call.
    fn reclaim(&mut self, host: &mut Option<Box<H>>) {
        *host = Some(self.store.data_mut().reclaim().expect("host context lost during a call"));
    }

    fn check(&mut self, result: wasmtime::Result<i32>, entry: &'static str) -> Result<(), Failure> {
        if !self.lazy.is_empty() {
            if let Some(f) = self.damage_failure() {
                return Err(f);
            }
            self.lazy.settle();
        }
        match result {
            Ok(0) => Ok(()),
            Ok(status) => Err(Failure { reason: FailureReason::Status { entry, status }, backtrace: None }),
            Err(e) => Err(failure_from(&mut self.store, e, self.limits)),
        }
    }

    /// Delivers one encoded batch of `count` envelopes, with `host` lent
    /// for the call.
    pub(crate) fn receive(
        &mut self,
        host: &mut Option<Box<H>>,
        batch: &[u8],
        count: u32,
    ) -> Result<(), Failure> {
        self.lend(host, batch);
        let result = self.receive.call(&mut self.store, (batch.len() as u32, count));
        self.reclaim(host);
        self.check(result, abi::EXPORT_RECEIVE)
    }

    /// Its failure if a page of its lazily restored memory was found
    /// damaged (whatever its call returned: it may have read the page).
    fn damage_failure(&self) -> Option<Failure> {
        let (memory_page, data_page) = self.lazy.damage().found()?;
        let address = self.store.data().address();
        let what = if data_page == u64::MAX {
            "could not be checked (its page protection could not be changed)".to_owned()
        } else {
            let source = FormatError::PageCorrupt { page: data_page, file_offset: HEADER_LEN as u64 + data_page * PAGE_SIZE as u64 };
            format!("comes from {source}")
        };
        Some(Failure {
            reason: FailureReason::Damaged(format!("snapshot of reactor {address} is damaged: its memory page {memory_page} {what}")),
            backtrace: None,
        })
    }

    /// The pages of its memory restored lazily (`snapshot::restore` guards
    /// them); their damage record is watched by its host calls.
    pub(crate) fn lazy_pages(&mut self) -> &mut LazyPages {
        let d = self.lazy.damage().clone();
        self.store.data_mut().watch_damage(d);
        &mut self.lazy
    }

    /// Checks every page of its memory restored lazily and not touched yet
    /// (before a capture reads the memory): its failure if one is damaged.
    pub(crate) fn check_lazy_pages(&mut self) -> Result<(), Failure> {
        if !self.lazy.is_empty() {
            self.lazy.check_all();
        }
        self.damage_failure().map_or(Ok(()), Err)
    }

    /// The shared blobs this reactor holds (what a snapshot records by
    /// tag).
    pub(crate) fn held_blobs(&self) -> impl Iterator<Item = &Arc<Blob>> {
        self.store.data().held().values()
    }

    /// Its byte budget.
    pub(crate) fn account(&self) -> &Arc<Account> {
        self.store.data().limiter().account()
    }

    /// The module it runs.
    pub(crate) fn module(&self) -> &Arc<LoadedModule<H>> {
        &self.module
    }

    /// A copy of its linear memory.
    pub(crate) fn memory_copy(&self) -> Vec<u8> {
        self.memory.data(&self.store).to_vec()
    }

    /// Its memory cap.
    pub(crate) fn memory_cap(&self) -> usize {
        self.limits.memory_cap
    }

    /// Base address and byte length of its linear memory.
    pub(crate) fn memory_extent(&self) -> (usize, usize) {
        let m = self.memory;
        (m.data_ptr(&self.store) as usize, m.data_size(&self.store))
    }

    /// Grows its memory to exactly `bytes` (a multiple of 64 KiB), within
    /// its cap.
    pub(crate) fn grow_memory_to(&mut self, bytes: usize) -> Result<(), StateMismatch> {
        let m = self.memory;
        let now = m.data_size(&self.store);
        if bytes < now || !bytes.is_multiple_of(65536) {
            return Err(StateMismatch::MemorySize { now, wanted: bytes });
        }
        if bytes > now {
            m.grow(&mut self.store, ((bytes - now) / 65536) as u64)
                .map_err(|e| StateMismatch::Grow { wanted: bytes, reason: format!("{e:#}") })?;
        }
        Ok(())
    }

    /// Values of its mutable globals.
    pub(crate) fn read_globals(&mut self) -> Vec<GlobalValue> {
        self.module
            .globals()
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
    pub(crate) fn write_globals(&mut self, values: &[GlobalValue]) -> Result<(), StateMismatch> {
        if values.len() != self.globals.len() {
            return Err(StateMismatch::GlobalCount { given: values.len(), module: self.globals.len() });
        }
        for ((slot, g), v) in self.module.globals().iter().zip(&self.globals).zip(values) {
            let want = global_code(slot.ty);
            if v.index != slot.index || v.ty != want {
                return Err(StateMismatch::Global {
                    index: v.index,
                    ty: v.ty,
                    module_index: slot.index,
                    module_ty: want,
                });
            }
            let val = match v.ty {
                0 => Val::I32(v.bits as u32 as i32),
                1 => Val::I64(v.bits as u64 as i64),
                2 => Val::F32(v.bits as u32),
                3 => Val::F64(v.bits as u64),
                _ => Val::V128(v.bits.into()),
            };
            g.set(&mut self.store, val)
                .map_err(|e| StateMismatch::SetGlobal { index: v.index, reason: format!("{e:#}") })?;
        }
        Ok(())
    }

    /// Makes it hold `blob` (restore).
    pub(crate) fn hold_blob(&mut self, blob: Arc<Blob>) {
        self.store.data_mut().hold_restored(blob);
    }

    /// Hash of the module it runs.
    pub(crate) fn module_hash(&self) -> ModuleHash {
        self.module.hash
    }

    /// Current linear memory size in bytes.
    pub(crate) fn memory_size(&self) -> usize {
        self.memory.data_size(&self.store)
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
fn failure_from<H: HostContext>(store: &mut Store<ReactorData<H>>, err: wasmtime::Error, limits: Limits) -> Failure {
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| format!("{bt}")).filter(|s| !s.trim().is_empty());
    let data = store.data_mut();
    let reason = if let Some(fault) = err.downcast_ref::<GuestFault>() {
        FailureReason::GuestFault(fault.to_string())
    } else if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        FailureReason::Exit(exit.0)
    } else if let Some(note) = data.take_fail_note() {
        FailureReason::Panic(note)
    } else if let Some(trap) = err.downcast_ref::<Trap>() {
        match (trap, data.limiter().refused()) {
            (Trap::Interrupt, _) => FailureReason::CpuBudget(limits.cpu_budget),
            (_, Some((Refusal::Cap, requested))) => FailureReason::MemoryCap { cap: data.limiter().cap(), requested },
            (_, Some((Refusal::Budget, requested))) => FailureReason::Budget(format!(
                "its memory may not grow to {requested} bytes: with the blobs it holds and the messages queued \
                 for it, that passes its budget of {} bytes",
                data.limiter().account().limit()
            )),
            (_, Some((Refusal::Node, requested))) => FailureReason::Budget(format!(
                "its memory may not grow to {requested} bytes: the node's byte budget is used up"
            )),
            (t, None) => FailureReason::Trap(t.to_string()),
        }
    } else {
        FailureReason::Other(format!("{err:#}"))
    };
    Failure { reason, backtrace }
}
