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

use crate::budget::{Account, NodeBudget, NodeCharge};
use crate::journal::Tap;
use journal_format::{Call, Entry};
use crate::refs::{Blob, Refs, RefsError};
use crate::sys::protect::lazy::Damage;
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

    /// A send, request or reply of `from` to `to` that did not go out
    /// (`status`, the `STATUS_*` the guest is given): counted, and logged.
    fn failed_output(&mut self, from: Address, to: Address, kind: u8, status: i32);

    /// A correlation id unique across shards, nodes and restarts.
    fn next_corr(&mut self) -> Result<u64, RefsError>;

    /// Reserves an address for a reactor of `module` that `parent` spawns
    /// with `init` (journaled at `journal`, if given); it is started right
    /// after the current call.
    fn spawn(
        &mut self,
        parent: Address,
        module: ModuleRef<'_>,
        init: Vec<u8>,
        journal: Option<crate::journal::Level>,
    ) -> Result<Address, SpawnRefusal>;

    /// In a replay, `from`'s recorded request `corr` to `to`: outstanding
    /// again (its reply is taken when it comes).
    fn replayed_request(&mut self, corr: u64, from: Address, to: Address);

    /// Sets the partition key of the rest of this call's messages to other
    /// nodes (0: by destination).
    fn set_affinity(&mut self, key: u64);

    /// `me` asks to be moved to the node where `peer` lives.
    fn move_near(&mut self, me: Address, peer: Address);

    /// Tells the supervision tree's keeper of `event`: `STATUS_OK`,
    /// `STATUS_UNSUPPORTED` if there is none (a bare runtime), or
    /// `STATUS_LIMIT` past the calls one call into the guest may make.
    fn tree(&mut self, event: crate::tree::TreeEvent) -> i32;

    /// The node's tags and shared blobs.
    fn refs(&self) -> &Refs;

    /// WASI preview 1 and the reactor calls for stores holding this
    /// context (`engine::linker`): the engine links every module with it.
    fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ReactorData<Self>>>
    where
        Self: Sized;
}

/// What refused a memory growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The memory cap.
    Cap,
    /// The reactor's byte budget (memory, held blobs, queued bytes).
    Budget,
    /// The node's byte budget.
    Node,
}

/// Enforces the memory cap and the byte budgets on memory growth, and
/// remembers what refused one.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// The reactor's budget, shared with its inbox and held blobs.
    account: Arc<Account>,
    /// Its memory, charged to the node (returned when the store drops).
    node: NodeCharge,
    /// Set when a growth was refused: what refused it, and the size asked.
    refused: Option<(Refusal, usize)>,
}

impl MemoryLimiter {
    /// What refused the last refused growth, and the size the guest asked.
    pub(crate) fn refused(&self) -> Option<(Refusal, usize)> {
        self.refused
    }

    /// The cap in bytes.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// The reactor's byte budget.
    pub(crate) fn account(&self) -> &Arc<Account> {
        &self.account
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let refusal = if desired > self.cap {
            Some(Refusal::Cap)
        } else {
            let more = desired.saturating_sub(current);
            // The node counts growth, not the initial size: that is the
            // module's, which the operator loaded (and `max_reactors`
            // bounds); growth is the guest's doing.
            let node_more = if current == 0 { 0 } else { more };
            if !self.account.try_charge(more) {
                Some(Refusal::Budget)
            } else if !self.node.grow(node_more) {
                self.account.release(more);
                Some(Refusal::Node)
            } else {
                None
            }
        };
        if let Some(r) = refusal {
            self.refused = Some((r, desired));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

fn refusal_code(r: Option<(Refusal, usize)>) -> u8 {
    match r {
        None => 0,
        Some((Refusal::Cap, _)) => 1,
        Some((Refusal::Budget, _)) => 2,
        Some((Refusal::Node, _)) => 3,
    }
}

/// The store's limiter: the memory limiter, with growths during a call
/// recorded on a journaled reactor's tape and, in a replay, decided as
/// they were when recorded.
impl<H: HostContext> ResourceLimiter for ReactorData<H> {
    fn memory_growing(&mut self, current: usize, desired: usize, max: Option<usize>) -> wasmtime::Result<bool> {
        // Growth outside a call (instantiation, restore) is the host's.
        let in_call = self.host.is_some();
        if let Some(tap) = self.tap.as_deref_mut().filter(|t| in_call && t.is_replay()) {
            let problem = match tap.next(Call::Grow)? {
                Some(Entry::Grow { desired: d, outcome }) if d == desired as u64 => {
                    let l = &mut self.limiter;
                    return Ok(match outcome {
                        0 => {
                            let more = desired.saturating_sub(current);
                            l.account.force_charge(more);
                            let _ = l.node.grow(if current == 0 { 0 } else { more });
                            true
                        }
                        o => {
                            let r = [Refusal::Cap, Refusal::Budget, Refusal::Node][usize::from(o.min(3)) - 1];
                            l.refused = Some((r, desired));
                            false
                        }
                    });
                }
                Some(e) => format!("the reactor grew its memory to {desired} bytes where the recording has {e:?}"),
                None => unreachable!("a replaying tap answers or diverges"),
            };
            return Err(tap.diverge(problem).into());
        }
        let granted = self.limiter.memory_growing(current, desired, max)?;
        if let Some(tap) = self.tap.as_deref_mut().filter(|_| in_call) {
            let outcome = if granted { 0 } else { refusal_code(self.limiter.refused) };
            tap.record(&Entry::Grow { desired: desired as u64, outcome });
        }
        Ok(granted)
    }

    fn table_growing(&mut self, current: usize, desired: usize, max: Option<usize>) -> wasmtime::Result<bool> {
        self.limiter.table_growing(current, desired, max)
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
    /// Damage found in pages restored lazily (set while such pages are
    /// being checked on first touch).
    damage: Option<Arc<Damage>>,
    /// The journal tap, while the reactor is journaled or replayed.
    tap: Option<Box<Tap>>,
}

impl<H: HostContext> ReactorData<H> {
    /// The state of a reactor at `address` whose memory may grow to
    /// `memory_cap` bytes within its byte budget `account` and the node's
    /// `node`.
    pub(crate) fn new(
        address: Address,
        wasi: WasiP1Ctx,
        memory_cap: usize,
        account: Arc<Account>,
        node: Arc<NodeBudget>,
    ) -> Self {
        Self {
            address,
            wasi,
            limiter: MemoryLimiter { cap: memory_cap, account, node: NodeCharge::empty(node), refused: None },
            fail_note: None,
            memory: None,
            host: None,
            held: FxHashMap::default(),
            damage: None,
            tap: None,
        }
    }

    /// Its journal tap, if it is journaled or replayed.
    #[inline]
    pub(crate) fn tap(&mut self) -> Option<&mut Tap> {
        self.tap.as_deref_mut()
    }

    pub(crate) fn set_tap(&mut self, tap: Option<Box<Tap>>) -> Option<Box<Tap>> {
        std::mem::replace(&mut self.tap, tap)
    }

    /// Watches `damage`, the record of pages restored lazily.
    pub(crate) fn watch_damage(&mut self, damage: Arc<Damage>) {
        self.damage = Some(damage);
    }

    /// `(memory page, data page)` of a damaged page found in its lazily
    /// restored memory, if any: the reactor must not act any more.
    #[inline]
    pub(crate) fn damaged(&self) -> Option<(u64, u64)> {
        self.damage.as_ref().and_then(|d| d.found())
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

    /// The reactor's linear memory, once instantiated (host calls run
    /// after that: modules with a start function are refused at load).
    #[inline]
    pub(crate) fn memory(&self) -> Option<Memory> {
        self.memory
    }

    pub(crate) fn set_memory(&mut self, memory: Memory) {
        self.memory = Some(memory);
    }

    /// The lent host context: there during every call into the guest,
    /// which the runtime makes with the context lent.
    #[inline]
    pub(crate) fn host(&mut self) -> Option<&mut H> {
        self.host.as_deref_mut()
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

    /// Starts holding `blob`, its bytes charged to the reactor's budget;
    /// false (nothing changes) when the budget has no room. Holding a blob
    /// held already is a no-op.
    pub(crate) fn hold(&mut self, blob: Arc<Blob>) -> bool {
        if self.held.contains_key(&blob.tag()) {
            return true;
        }
        if !self.limiter.account.try_charge(blob.len()) {
            return false;
        }
        self.held.insert(blob.tag(), blob);
        true
    }

    /// Holds `blob` whatever the budget (a restore brings back what the
    /// reactor held).
    pub(crate) fn hold_restored(&mut self, blob: Arc<Blob>) {
        self.limiter.account.force_charge(blob.len());
        self.held.insert(blob.tag(), blob);
    }

    /// Stops holding the blob `tag`; false if it was not held.
    pub(crate) fn release(&mut self, tag: u64) -> bool {
        match self.held.remove(&tag) {
            Some(b) => {
                self.limiter.account.release(b.len());
                true
            }
            None => false,
        }
    }
}
