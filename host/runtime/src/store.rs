//! What a reactor's wasmtime store holds, and the trait through which its
//! host calls reach the rest of the runtime.
//!
//! Every reactor's `Store` carries one [`ReactorData`]: its address, its
//! WASI context, its memory limiter, the shared blobs it holds, and — only
//! for the duration of a call into the guest — the [`HostContext`] its
//! shard lends it. Host calls (`hostcalls`) see nothing of the shard but
//! that trait, as wasmtime-wasi reaches its context through an accessor:
//! they can be tested, and the shard changed, without the other.
//!
//! The store data is generic over the context (`ReactorData<H>`), so host
//! calls reach it by static dispatch: no virtual call, no downcast when the
//! shard takes it back. The context also builds the linker for its stores
//! ([`HostContext::linker`]), so that linker — WASI and every host call,
//! the bulk of the runtime's generic code — is compiled once, in the
//! implementing module, for the one context there is.
#![forbid(unsafe_code)]

use crate::refs::{Blob, Refs, RefsError};
use reactor_types::{Address, Envelope, ModuleHash, SendError, SpawnError};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use wasmtime::{Linker, Memory, ResourceLimiter};
use wasmtime_wasi::p1::WasiP1Ctx;

/// The module a guest asks to spawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModuleRef<'a> {
    /// The module the caller runs.
    Own,
    /// A loaded module, by SHA-256.
    Hash(ModuleHash),
    /// A loaded module, by the name it was registered under.
    Name(&'a str),
}

/// Why a guest's spawn was not accepted. Nothing was reserved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpawnRefusal {
    /// No loaded module matches the reference.
    NoSuchModule,
    /// The shard could not take another reactor.
    Refused(SpawnError),
}

/// What host calls need from the runtime during a call into a reactor. The
/// shard implements it and lends it to the store for each call.
pub(crate) trait HostContext: Send + 'static {
    /// Called before each call into the guest: stages `input` for
    /// `inbox_read` and resets per-call state (the partition key).
    fn begin(&mut self, input: &[u8]);

    /// Takes up to `max` bytes of the staged input not read yet (fewer
    /// when less is left; empty at its end): they count as read.
    fn take_input(&mut self, max: usize) -> &[u8];

    /// Queues `env` for `to` (a local inbox, another shard, another node or
    /// the outside world). Nothing is queued on an error.
    fn route(&mut self, to: Address, env: Envelope) -> Result<(), SendError>;

    /// A correlation id unique across shards, nodes and restarts.
    fn next_corr(&mut self) -> Result<u64, RefsError>;

    /// Reserves an address for a reactor of `module` that `parent` spawns
    /// with `init`; it is started right after the current call.
    fn spawn(&mut self, parent: Address, module: ModuleRef<'_>, init: Vec<u8>) -> Result<Address, SpawnRefusal>;

    /// Sets the partition key of the rest of this call's messages to other
    /// nodes (0: by destination).
    fn set_affinity(&mut self, key: u64);

    /// The node's tags and shared blobs.
    fn refs(&self) -> &Refs;

    /// WASI preview 1 and the reactor calls for stores holding this
    /// context (`engine::linker`): the engine links every module with it.
    fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ReactorData<Self>>>
    where
        Self: Sized;
}

/// Enforces the memory cap and remembers that it was hit.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// Set when a growth was refused: (current, requested) bytes.
    refused: Option<(usize, usize)>,
}

impl MemoryLimiter {
    /// The size the guest asked for when a growth was last refused.
    pub(crate) fn refused_request(&self) -> Option<usize> {
        self.refused.map(|(_, requested)| requested)
    }

    /// The cap in bytes.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
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

/// The host state inside a reactor's store; `H` is the context host calls
/// reach.
pub(crate) struct ReactorData<H> {
    address: Address,
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    /// The guest's own account of why it is failing (its panic message).
    fail_note: Option<String>,
    /// Set once instantiated.
    memory: Option<Memory>,
    /// The runtime, lent during a call into the guest.
    host: Option<Box<H>>,
    /// Shared blobs this reactor holds, by tag (at most
    /// `abi::MAX_HELD_BLOBS`); dropped with the reactor.
    held: FxHashMap<u64, Arc<Blob>>,
}

impl<H: HostContext> ReactorData<H> {
    /// The state of a reactor at `address` whose memories may grow to
    /// `memory_cap` bytes.
    pub(crate) fn new(address: Address, wasi: WasiP1Ctx, memory_cap: usize) -> Self {
        Self {
            address,
            wasi,
            limiter: MemoryLimiter { cap: memory_cap, refused: None },
            fail_note: None,
            memory: None,
            host: None,
            held: FxHashMap::default(),
        }
    }

    /// The reactor's address.
    pub(crate) fn address(&self) -> Address {
        self.address
    }

    pub(crate) fn wasi_mut(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    pub(crate) fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }

    pub(crate) fn limiter_mut(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }

    /// The reactor's linear memory. Host calls only run once it is set
    /// (right after instantiation, before any entry point).
    pub(crate) fn memory(&self) -> Memory {
        self.memory.expect("memory set at instantiation")
    }

    /// Its linear memory, if instantiated.
    pub(crate) fn try_memory(&self) -> Option<Memory> {
        self.memory
    }

    pub(crate) fn set_memory(&mut self, memory: Memory) {
        self.memory = Some(memory);
    }

    /// The lent host context. Host calls only run during a call into the
    /// guest, which the runtime makes with the context lent.
    #[inline]
    pub(crate) fn host(&mut self) -> &mut H {
        self.host.as_deref_mut().expect("host call outside a runtime call")
    }

    /// Lends `host` for a call into the guest; forgets a refused growth
    /// of the previous call.
    #[inline]
    pub(crate) fn lend(&mut self, host: Box<H>) {
        self.host = Some(host);
        self.limiter.refused = None;
    }

    /// Takes the lent host context back after the call.
    #[inline]
    pub(crate) fn reclaim(&mut self) -> Option<Box<H>> {
        self.host.take()
    }

    /// Records the guest's own account of its failure.
    pub(crate) fn set_fail_note(&mut self, note: String) {
        self.fail_note = Some(note);
    }

    pub(crate) fn take_fail_note(&mut self) -> Option<String> {
        self.fail_note.take()
    }

    /// The shared blobs this reactor holds, by tag.
    pub(crate) fn held(&self) -> &FxHashMap<u64, Arc<Blob>> {
        &self.held
    }

    pub(crate) fn held_mut(&mut self) -> &mut FxHashMap<u64, Arc<Blob>> {
        &mut self.held
    }
}
