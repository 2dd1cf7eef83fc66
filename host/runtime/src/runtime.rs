//! The multi-core runtime: one [`Shard`] per thread, thread-per-core in the
//! spirit of Seastar.
//!
//! Each shard thread owns its reactors outright: their stores, memories and
//! inboxes are touched by that thread only. Shards talk over one
//! single-producer ring per ordered pair (`Links`), so a reactor on shard A
//! sending to one on shard B pushes onto ring A→B and B drains it into the
//! destination inbox. The outside world (the API below, and the network
//! through [`Runtime::deliver_from_network`]) hands work to a shard through
//! that shard's multi-producer command ring.
//!
//! A shard thread loops: drain commands, drain its inbound rings, run a
//! bounded number of ready reactors (one batch each, round-robin); when a
//! whole pass finds nothing to do it spins briefly, yields, then parks until a
//! producer wakes it — it never busy-waits for long, so more shards than
//! cores degrade gracefully.
//!
//! A shard thread that panics (a host bug: nothing a guest does may cause
//! one) is caught: its reactors are gone, every request waiting on them and
//! every command queued for it is answered with a `ShardDown` error, later
//! ones at once, and the other shards go on.
//!
//! Backpressure: a full pair ring or command ring refuses the send
//! ([`SendError::InboxFull`]); a message whose
//! destination inbox is full stays at the head of its ring until there is
//! room, so backpressure reaches the senders instead of anything being
//! dropped.
#![forbid(unsafe_code)]

use crate::shard::{Engine, LoadedModule};
use crate::links::Links;
use crate::port::{Completion, HostPort, Promise, ReplySlot};
use crate::refs::{Refs, RefsError, TagSource};
use crate::shard::{Shard, ShardConfig, ShardStats};
use crate::snapshot::{self, Capture, Checkpoint, Kind, RestoreOptions, SnapshotError, SnapshotFile, SnapshotId, SnapshotOptions};
use guest_sdk::abi;
use reactor_ring::{EventCount, MpscConsumer, MpscProducer};
use reactor_types::{
    Address, CallError, Envelope, Failure, FailureReason, KIND_FENCE, NodeId, Outbound, ReactorState, Reply, SendError,
    SpawnError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Number of shard threads; 0 means one per available core.
    pub shards: usize,
    /// Settings of every shard.
    pub shard: ShardConfig,
    /// Capacity of each shard-to-shard ring.
    pub ring_capacity: usize,
    /// Capacity of each shard's command ring (work from outside).
    pub command_capacity: usize,
    /// How long [`Runtime::call`] waits for an answer.
    pub call_timeout: Duration,
    /// Where the node keeps its state (the tag high-water mark, see
    /// [`refs`](crate::refs)). `None`: tags are unique within this process
    /// only.
    pub data_dir: Option<PathBuf>,
    /// This node's id, part of every tag (at most
    /// [`MAX_NODE`](reactor_types::address::MAX_NODE)).
    pub node: u16,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            shard: ShardConfig::default(),
            ring_capacity: 8192,
            command_capacity: 8192,
            call_timeout: Duration::from_secs(30),
            data_dir: None,
            node: 0,
        }
    }
}

/// Work handed to a shard from outside.
enum Command {
    Spawn {
        module: Arc<LoadedModule>,
        init: Vec<u8>,
        flags: u8,
        journal: Option<crate::journal::Level>,
        done: Promise<Result<Address, SpawnError>>,
    },
    /// `counted`: by [`HostPort::ring_enter`](crate::port::HostPort::ring_enter),
    /// to be told when it leaves the ring.
    Deliver { to: Address, env: Envelope, counted: bool },
    /// Runs on the shard; a shard that stopped drops it unrun, which
    /// abandons the promise it holds.
    Inspect(Box<dyn FnOnce(&mut Shard) + Send>),
    Stop,
}

/// A shard thread has stopped: it panicked. The operation did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} has stopped: its thread panicked, its reactors are gone")]
pub struct ShardDown(pub usize);

/// What runs on each shard right after a restart's restore
/// ([`Runtime::restore_files_then`]): the shard and its index.
pub type AfterRestore = Arc<dyn Fn(&mut Shard, usize) + Send + Sync>;

/// Which reactors a checkpoint takes, and what a delta is relative to
/// ([`Runtime::checkpoint_with`]).
#[derive(Clone, Debug, Default)]
pub struct CheckpointScope {
    /// Only these reactors (`None`: all). Messages queued for them are
    /// recorded with them, as in a whole checkpoint; the others are left
    /// out.
    pub reactors: Option<std::collections::BTreeSet<Address>>,
    /// For an incremental checkpoint: the snapshot it is a delta on
    /// (`None`: the one most of its reactors' tracked pages are relative
    /// to).
    pub base: Option<SnapshotId>,
}

fn snapshot_error(e: ShardDown) -> SnapshotError {
    SnapshotError::ShardDown(e.0)
}

struct ShardHandle {
    commands: Mutex<MpscProducer<Command>>,
    wake: Arc<EventCount>,
    stats: Arc<Mutex<ShardStats>>,
    /// Set when the shard thread panicked.
    down: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A barrier for the shards of one operation that does not wait forever
/// for a shard that stopped: `wait` fails once any of them is down.
struct ShardBarrier {
    state: Mutex<(usize, usize)>,
    turned: Condvar,
    n: usize,
    downs: Vec<Arc<AtomicBool>>,
}

impl ShardBarrier {
    fn new(downs: Vec<Arc<AtomicBool>>) -> Arc<Self> {
        let n = downs.len();
        Arc::new(Self { state: Mutex::new((0, 0)), turned: Condvar::new(), n, downs })
    }

    /// Waits for every shard; `Err` with a shard that stopped instead.
    fn wait(&self) -> Result<(), ShardDown> {
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.n {
            *s = (0, generation + 1);
            self.turned.notify_all();
            return Ok(());
        }
        while s.1 == generation {
            if let Some(i) = self.downs.iter().position(|d| d.load(Ordering::Acquire)) {
                return Err(ShardDown(i));
            }
            s = self
                .turned
                .wait_timeout(s, Duration::from_millis(20))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// Reactors on every core. See the module docs.
pub struct Runtime {
    engine: Arc<Engine>,
    config: RuntimeConfig,
    shards: Vec<ShardHandle>,
    port: Arc<HostPort>,
    refs: Arc<Refs>,
    next_spawn: AtomicUsize,
    /// Held through each whole-runtime barrier (checkpoint, restore): two
    /// interleaved would deadlock, each shard waiting inside a different
    /// one.
    barrier: Mutex<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("shards", &self.shards.len()).finish()
    }
}

impl Runtime {
    /// Starts the shard threads, with tags persisted in `config.data_dir`
    /// if set. A corrupt tag high-water mark or a node id out of range is an
    /// error of kind `InvalidData`/`InvalidInput` wrapping the [`RefsError`].
    pub fn new(engine: Arc<Engine>, config: RuntimeConfig) -> std::io::Result<Self> {
        let tags = match &config.data_dir {
            Some(dir) => TagSource::open(dir),
            None => Ok(TagSource::ephemeral()),
        };
        let refs = tags.and_then(|t| Refs::new(config.node, t)).map_err(|e| {
            let kind = match &e {
                RefsError::Io { source, .. } => source.kind(),
                RefsError::NodeOutOfRange(_) => std::io::ErrorKind::InvalidInput,
                _ => std::io::ErrorKind::InvalidData,
            };
            std::io::Error::new(kind, e)
        })?;
        Self::with_refs(engine, config, Arc::new(refs))
    }

    /// Starts the shard threads, all drawing tags from `refs` (its node id
    /// wins over `config.node`; `config.data_dir` is not used).
    pub fn with_refs(engine: Arc<Engine>, config: RuntimeConfig, refs: Arc<Refs>) -> std::io::Result<Self> {
        let n = match config.shards {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
        .min(256);
        let port = HostPort::new(config.shard.host_mailbox_capacity, config.shard.host_mailbox_bytes, refs.clone());
        let (links, wakes) = Links::mesh(n, config.ring_capacity);
        let mut shards = Vec::with_capacity(n);
        for (index, links) in links.into_iter().enumerate() {
            let (tx, mut rx) = reactor_ring::mpsc(config.command_capacity);
            let stats = Arc::new(Mutex::new(ShardStats::default()));
            let wake = wakes[index].clone();
            let down = Arc::new(AtomicBool::new(false));
            let (engine, port, stats2, wake2) = (engine.clone(), port.clone(), stats.clone(), wake.clone());
            let (shard_config, refs, down2) = (config.shard, refs.clone(), down.clone());
            let thread = std::thread::Builder::new().name(format!("shard-{index}")).spawn(move || {
                let shard = Shard::linked(engine, shard_config, index, port.clone(), Some(links), refs);
                let run = std::panic::AssertUnwindSafe(|| shard_main(shard, &mut rx, &wake2, &stats2));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    tracing::error!(shard = index, "shard thread panicked: {what}; its reactors are gone");
                    down2.store(true, Ordering::Release);
                    let err = move |_| CallError::Send(SendError::ShardDown(index));
                    port.fail_where(move |t| t.is_reactor() && t.shard() % n == index, err);
                    stopped_shard_main(index, &mut rx, &wake2, &port);
                }
            })?;
            shards.push(ShardHandle { commands: Mutex::new(tx), wake, stats, down, thread: Some(thread) });
        }
        Ok(Self { engine, config, shards, port, refs, next_spawn: AtomicUsize::new(0), barrier: Mutex::new(()) })
    }

    /// The tags and shared blobs of this runtime's node.
    pub fn refs(&self) -> &Arc<Refs> {
        &self.refs
    }

    /// Creates a shared blob held by the host until
    /// [`Runtime::release_blob`]; returns its tag, which any number of
    /// reactors can open (one copy in memory).
    pub fn create_blob(&self, bytes: impl Into<Box<[u8]>>) -> Result<u64, RefsError> {
        self.refs.create_host_blob(bytes)
    }

    /// Stops the host holding a blob made by [`Runtime::create_blob`]; it is
    /// freed once no reactor holds it either. False if the host did not hold it.
    pub fn release_blob(&self, tag: u64) -> bool {
        self.refs.release_host_blob(tag)
    }

    /// The shard that keeps `address` (its shard bits modulo the shard
    /// count, so addresses from a runtime with more shards still route).
    fn shard_of(&self, address: Address) -> usize {
        address.shard() % self.shards.len()
    }

    /// The engine reactors are instantiated on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Number of shard threads.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// `Err` if `shard` has stopped.
    fn check_up(&self, shard: usize) -> Result<(), ShardDown> {
        if self.shards[shard].down.load(Ordering::Acquire) { Err(ShardDown(shard)) } else { Ok(()) }
    }

    fn command(&self, shard: usize, mut cmd: Command) -> Result<(), Command> {
        let h = &self.shards[shard];
        // A full command ring is backpressure; give the shard a moment.
        let mut tx = h.commands.lock().unwrap();
        for i in 0..64 {
            match tx.try_push(cmd) {
                Ok(()) => {
                    h.wake.notify();
                    return Ok(());
                }
                Err(back) => cmd = back.into_inner(),
            }
            h.wake.notify();
            if i < 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Err(cmd)
    }

    /// Starts a reactor on the next shard (round-robin).
    pub fn spawn(&self, module: &Arc<LoadedModule>, init: &[u8]) -> Result<Address, SpawnError> {
        let shard = self.next_spawn.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.spawn_on(shard, module, init.to_vec(), 0)
    }

    /// Starts a reactor with a typed (postcard) init argument.
    pub fn spawn_with<T: Serialize>(&self, module: &Arc<LoadedModule>, init: &T) -> Result<Address, SpawnError> {
        self.spawn(module, &postcard::to_allocvec(init).expect("serializing to memory cannot fail"))
    }

    /// Starts a reactor on a chosen shard; `flags` may be `abi::FLAG_TEXT`.
    pub fn spawn_on(
        &self,
        shard: usize,
        module: &Arc<LoadedModule>,
        init: Vec<u8>,
        flags: u8,
    ) -> Result<Address, SpawnError> {
        self.spawn_journaled(shard, module, init, flags, None)
    }

    /// Starts a reactor on a chosen shard, journaled at `journal` if given
    /// (see [`Shard::spawn_journaled`]).
    pub fn spawn_journaled(
        &self,
        shard: usize,
        module: &Arc<LoadedModule>,
        init: Vec<u8>,
        flags: u8,
        journal: Option<crate::journal::Level>,
    ) -> Result<Address, SpawnError> {
        let shard = shard % self.shards.len();
        self.check_up(shard).map_err(|e| SpawnError::ShardDown(e.0))?;
        let (promise, done) = Promise::new();
        let cmd = Command::Spawn { module: module.clone(), init, flags, journal, done: promise };
        if self.command(shard, cmd).is_err() {
            return Err(SpawnError::Busy);
        }
        done.wait(None).unwrap_or(Err(SpawnError::ShardDown(shard)))
    }

    /// Sends a one-way message from the outside world. Like any actor send,
    /// it succeeds even if no reactor has that address (the shard counts it as
    /// a dead letter); it fails only on backpressure or bad arguments.
    pub fn send(&self, to: Address, payload: Vec<u8>, text: bool) -> Result<(), SendError> {
        self.deliver(to, abi::KIND_MESSAGE, 0, payload, text)
    }

    /// Sends a typed (postcard) one-way message.
    pub fn send_typed<T: Serialize>(&self, to: Address, msg: &T) -> Result<(), SendError> {
        self.send(to, postcard::to_allocvec(msg).expect("serializing to memory cannot fail"), false)
    }

    fn deliver(&self, to: Address, kind: u8, corr: u64, payload: Vec<u8>, text: bool) -> Result<(), SendError> {
        if payload.len() > abi::MAX_PAYLOAD_LEN as usize {
            return Err(SendError::TooLarge(payload.len()));
        }
        // A reactor anywhere, or another node's host (its mailbox).
        if !(to.is_reactor() || to.is_host() && to.node() != self.refs.node()) {
            return Err(SendError::NoSuchReactor(to));
        }
        let flags = if text { abi::FLAG_TEXT } else { 0 };
        let env = Envelope { kind, flags, from: Address::host_of(self.refs.node()), corr, payload };
        let routed = self.port.routed_send(to);
        if routed.is_some() || !self.port.hosts(to) {
            // A reactor on another node (or that just arrived here, while
            // earlier messages may be on the old path): to the transport.
            let Some(out) = self.port.remote() else { return Err(SendError::NoSuchReactor(to)) };
            return out.send(to, env, 0).map_err(|e| match e {
                SendError::InboxFull(_) => SendError::InboxFull(to),
                _ => SendError::NoSuchReactor(to),
            });
        }
        let shard = self.shard_of(to);
        self.check_up(shard).map_err(|e| SendError::ShardDown(e.0))?;
        self.command(shard, Command::Deliver { to, env, counted: false }).map_err(|_| SendError::InboxFull(to))
    }

    /// Connects this runtime to other nodes: messages for addresses whose
    /// node bits are not this node's go to `out`. Set once; false if a way
    /// out was set already.
    pub fn set_remote(&self, out: Arc<dyn Outbound>) -> bool {
        self.port.set_remote(out)
    }

    /// Hands over a message that arrived from another node for `to` on this
    /// node: a reactor (through its shard's command ring; a full inbox holds
    /// it there, so backpressure reaches the transport as `InboxFull`) or
    /// this node's host (the answer to one of its requests, or a message
    /// for its mailbox).
    pub fn deliver_from_network(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
        if !self.port.hosts(to) {
            return Err((SendError::NoSuchReactor(to), env));
        }
        if !(env.is_for_reactors() || env.kind == KIND_FENCE && to.is_reactor()) {
            // Not a kind a reactor reads (a peer's forgery or a node
            // message that reached the runtime): never queued.
            tracing::debug!(%to, kind = env.kind, from = %env.from, "dropped a message of a kind no reactor reads");
            return Ok(());
        }
        if to.is_host() {
            if env.is_reply() {
                // No one waiting (timed out), or not from the reactor asked
                // (dropped: a peer cannot answer for another reactor).
                let corr = env.corr;
                if !self.port.answer_reply(corr, Reply::from_envelope(env)) {
                    tracing::debug!(corr, "a reply from the network matches no request waiting on its sender");
                }
                return Ok(());
            }
            return if self.port.post(env.clone()) { Ok(()) } else { Err((SendError::InboxFull(to), env)) };
        }
        let shard = self.shard_of(to);
        if let Err(e) = self.check_up(shard) {
            return Err((SendError::ShardDown(e.0), env));
        }
        // Counted while `to` is arriving: what senders here send it
        // straight waits for this (see `port::Arrival`).
        let counted = self.port.ring_enter(to);
        match self.command(shard, Command::Deliver { to, env, counted }) {
            Ok(()) => Ok(()),
            Err(Command::Deliver { env, .. }) => {
                if counted {
                    self.port.ring_done(to);
                }
                Err((SendError::InboxFull(to), env))
            }
            Err(_) => unreachable!("the command given back is the one sent"),
        }
    }

    /// Answers every request from this node's host still waiting on a
    /// reactor of `node` with `err` (that node is gone).
    pub fn fail_calls_to_node(&self, node: u16, err: impl Fn(Address) -> CallError) {
        self.port.fail_where(|target| target.node() == node, err);
    }

    /// Answers every request from outside waiting on a target `which`
    /// picks (e.g. by where it lives) with `err`.
    pub fn fail_calls_where(&self, which: impl Fn(Address) -> bool, err: impl Fn(Address) -> CallError) {
        self.port.fail_where(which, err);
    }

    /// Sends a request; wait for the answer with [`PendingCall::wait`].
    pub fn request(&self, to: Address, payload: Vec<u8>, text: bool) -> Result<PendingCall, SendError> {
        let corr = self.port.next_corr().map_err(|e| SendError::Tags(e.to_string()))?;
        self.request_again(to, corr, payload, text)
    }

    /// Sends a request again with the correlation id of one sent before
    /// (`corr`, from [`PendingCall::corr`]), whose target's node went down
    /// before it answered: the target, taken over elsewhere, answers a
    /// request it had answered already with the same reply.
    pub fn request_again(&self, to: Address, corr: u64, payload: Vec<u8>, text: bool) -> Result<PendingCall, SendError> {
        let slot = self.port.register(corr, to);
        if let Err(e) = self.deliver(to, abi::KIND_REQUEST, corr, payload, text) {
            self.port.forget(corr);
            return Err(e);
        }
        Ok(PendingCall { to, corr, slot, port: self.port.clone() })
    }

    /// Sends a request and waits (up to the configured call timeout) for the
    /// answer.
    pub fn call(&self, to: Address, payload: Vec<u8>, text: bool) -> Result<Reply, CallError> {
        self.request(to, payload, text)?.wait(Some(self.config.call_timeout))
    }

    /// [`Runtime::call`] with postcard-typed request and answer.
    pub fn call_typed<Q: Serialize, R: DeserializeOwned>(&self, to: Address, req: &Q) -> Result<R, CallError> {
        let reply = self.call(to, postcard::to_allocvec(req).expect("serializing to memory cannot fail"), false)?;
        postcard::from_bytes(&reply.payload).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// One-way messages reactors sent to the outside world, oldest first.
    pub fn drain_host_messages(&self) -> Vec<Envelope> {
        self.port.drain_messages()
    }

    /// Runs `f` on the thread of `shard`, with that shard, and returns its
    /// result; `Err` if the shard has stopped (or stops before `f` returns).
    pub fn inspect<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut Shard) -> R + Send + 'static,
    ) -> Result<R, ShardDown> {
        self.inspect_later(shard, f)?.wait(None).ok_or(ShardDown(shard))
    }

    /// Journals journaled reactors into `journals`, on every shard; a
    /// shard waiting to release output is woken when records are synced.
    pub fn set_journals(&self, journals: &Arc<crate::journal::Journals>) -> Result<(), ShardDown> {
        for (i, h) in self.shards.iter().enumerate() {
            let wake = h.wake.clone();
            journals.add_waker(Box::new(move || wake.notify()));
            let j = journals.clone();
            self.inspect(i, move |s| s.set_journals(j))?;
        }
        Ok(())
    }

    /// Runs `f` on the thread of `shard` without waiting for it.
    fn inspect_later<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&mut Shard) -> R + Send + 'static,
    ) -> Result<Arc<Completion<R>>, ShardDown> {
        let (promise, done) = Promise::new();
        let mut cmd = Command::Inspect(Box::new(move |s| promise.fulfil(f(s))));
        loop {
            self.check_up(shard)?;
            match self.command(shard, cmd) {
                Ok(()) => return Ok(done),
                Err(back) => cmd = back,
            }
        }
    }

    /// Takes a snapshot of one reactor at its next message boundary, on its
    /// shard's thread (see [`Shard::snapshot`]).
    pub fn snapshot(&self, address: Address, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        if !address.is_reactor() {
            return Err(SnapshotError::NoSuchReactor(address));
        }
        self.inspect(self.shard_of(address), move |s| s.snapshot(address, options)).map_err(snapshot_error)?
    }

    /// A full snapshot of a journaled reactor that starts its next journal
    /// segment (copy-on-write: it runs on), and the step that segment
    /// starts at.
    pub fn snapshot_rolling(&self, address: Address) -> Result<(Checkpoint, u64), SnapshotError> {
        if !address.is_reactor() {
            return Err(SnapshotError::NoSuchReactor(address));
        }
        self.inspect(self.shard_of(address), move |s| {
            let cp = s.snapshot(address, SnapshotOptions::new(crate::snapshot::Capture::Concurrent).journaled())?;
            let step = s.journal_step(address).ok_or(SnapshotError::NoSuchReactor(address))?;
            Ok((cp, step))
        })
        .map_err(snapshot_error)?
    }

    /// The step number of a journaled reactor's next call.
    pub fn journal_step(&self, address: Address) -> Option<u64> {
        self.inspect(self.shard_of(address), move |s| s.journal_step(address)).ok().flatten()
    }

    /// The journal level of a live journaled reactor.
    pub fn journal_level(&self, address: Address) -> Option<crate::journal::Level> {
        self.inspect(self.shard_of(address), move |s| s.journal_level(address)).ok().flatten()
    }

    /// See [`Shard::journal_from_next_checkpoint`].
    pub fn journal_from_next_checkpoint(&self, address: Address, level: crate::journal::Level) -> bool {
        self.inspect(self.shard_of(address), move |s| s.journal_from_next_checkpoint(address, level)).unwrap_or(false)
    }

    /// Snapshots every reactor of every shard as one consistent checkpoint:
    /// all shards stop at a message boundary (a barrier), then move every
    /// message in flight between shards into its destination's inbox (so it
    /// is recorded with that reactor), then capture, then go on. No message
    /// sent between reactors is lost or counted twice by a restore.
    /// Messages from outside still queued in a shard's command ring are not
    /// yet accepted and are not in the checkpoint.
    pub fn checkpoint(&self, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        self.checkpoint_with(options, CheckpointScope::default())
    }

    /// [`Runtime::checkpoint`] of the reactors `scope` selects, as a delta
    /// on the base it names (if any). With an explicit base, reactors whose
    /// tracked pages are relative to another snapshot (or to none) go into
    /// the delta whole: a chain of checkpoints stays restorable whoever
    /// else snapshotted its reactors meanwhile.
    pub fn checkpoint_with(&self, options: SnapshotOptions, scope: CheckpointScope) -> Result<Checkpoint, SnapshotError> {
        let n = self.shards.len();
        let kind = match (options.capture, scope.base) {
            (Capture::Incremental, Some(base)) => Kind::Delta { base },
            (Capture::Incremental, None) => {
                let mut bases = Vec::new();
                for i in 0..n {
                    bases.extend(self.inspect(i, |s| s.tracked_bases()).map_err(snapshot_error)?);
                }
                snapshot::checkpoint_kind(options.capture, bases.into_iter())?
            }
            _ => Kind::Full,
        };
        let wanted = scope.reactors.map(Arc::new);
        let _one_at_a_time = self.barrier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = SnapshotId::random();
        let downs: Vec<_> = self.shards.iter().map(|h| h.down.clone()).collect();
        let paused = ShardBarrier::new(downs.clone());
        let drained = ShardBarrier::new(downs);
        let parts: Vec<_> = (0..n)
            .map(|i| {
                let (paused, drained, wanted) = (paused.clone(), drained.clone(), wanted.clone());
                self.inspect_later(i, move |s| {
                    paused.wait().map_err(snapshot_error)?;
                    // Every shard is inside this call: nobody produces.
                    s.drain_inbound_forced();
                    drained.wait().map_err(snapshot_error)?;
                    let mut cp = Checkpoint::with_id(id, kind);
                    s.capture_where(options, &mut cp, &|a| wanted.as_ref().is_none_or(|w| w.contains(&a))).map(|()| cp)
                })
            })
            .collect();
        let mut all = Checkpoint::with_id(id, kind);
        let mut first_err = None;
        for (i, p) in parts.into_iter().enumerate() {
            match p.and_then(|p| p.wait(None).ok_or(ShardDown(i))) {
                Ok(Ok(cp)) => all.merge(cp),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(snapshot_error(e));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }

    /// Takes one reactor out of this runtime at its next boundary, for a
    /// move (see [`Shard::detach`]): its last snapshot (`options`: an
    /// incremental one on the pre-copy rounds taken with
    /// [`Runtime::snapshot`] and tracking on), after which messages for it
    /// are held for forwarding ([`Runtime::drain_parked`]).
    pub fn detach(&self, address: Address, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        if !address.is_reactor() {
            return Err(SnapshotError::NoSuchReactor(address));
        }
        self.inspect(self.shard_of(address), move |s| s.detach(address, options)).map_err(snapshot_error)?
    }

    /// The messages held for a detached reactor so far, oldest first.
    pub fn drain_parked(&self, address: Address) -> Result<Vec<Envelope>, ShardDown> {
        self.inspect(self.shard_of(address), move |s| s.drain_parked(address))
    }

    /// Stops holding messages for a detached reactor; what was still held.
    pub fn unpark(&self, address: Address) -> Result<Vec<Envelope>, ShardDown> {
        self.inspect(self.shard_of(address), move |s| s.unpark(address))
    }

    /// Gives a detached reactor back (its move did not happen): restored
    /// from `chain` (its pre-copy rounds and the detach's snapshot), then
    /// what was held for it meanwhile, in order.
    pub fn reattach(&self, address: Address, chain: Vec<Checkpoint>) -> Result<(), SnapshotError> {
        self.inspect(self.shard_of(address), move |s| {
            let refs: Vec<&Checkpoint> = from_last_full(&chain).iter().collect();
            s.reattach(address, &refs)
        })
        .map_err(snapshot_error)?
    }

    /// Restores one moved reactor from its chain of in-memory checkpoints
    /// (a full one, then deltas; the last holds exactly that reactor) on
    /// the shard its address names; this runtime answers for its address
    /// from then on.
    pub fn restore_moved(&self, chain: Vec<Checkpoint>) -> Result<Address, SnapshotError> {
        let address = match chain.last().map(Checkpoint::reactors).as_deref() {
            Some([a]) => *a,
            _ => return Err(SnapshotError::Chain("a move restores one reactor: its last checkpoint holds one".into())),
        };
        let claimed = self.port.hosts(address);
        self.port.adopt(address);
        let r = self
            .inspect(self.shard_of(address), move |s| {
                let refs: Vec<&Checkpoint> = from_last_full(&chain).iter().collect();
                s.restore(&refs)
            })
            .map_err(snapshot_error)
            .and_then(|r| r);
        if r.is_err() && !claimed {
            self.port.disown(address);
        }
        r.map(|_| address)
    }

    /// Restores one moved reactor from snapshot files (a full one, then
    /// deltas; the last holds exactly that reactor), as
    /// [`Runtime::restore_moved`] does from memory.
    pub fn restore_moved_files(&self, chain: Vec<SnapshotFile>, options: RestoreOptions) -> Result<Address, SnapshotError> {
        let address = match chain.last().map(|f| f.meta().reactors.as_slice()) {
            Some([r]) => Address(r.address),
            _ => return Err(SnapshotError::Chain("a move restores one reactor: its last file holds one".into())),
        };
        let claimed = self.port.hosts(address);
        self.port.adopt(address);
        // What came from the network before (the reactor's own messages
        // from where it was, among them) is queued before it runs: its
        // shard's ring is in order, the others' are waited for.
        let home = self.shard_of(address);
        let others: Vec<_> = (0..self.shards.len()).filter(|&i| i != home).filter_map(|i| self.inspect_later(i, |_| ()).ok()).collect();
        for done in others {
            let _ = done.wait(None);
        }
        let r = self
            .inspect(home, move |s| s.restore_files(&chain, options))
            .map_err(snapshot_error)
            .and_then(|r| r);
        if r.is_err() && !claimed {
            self.port.disown(address);
        }
        r.map(|_| address)
    }

    /// Takes over `address` from its standby copy here: restores it from
    /// `chain` (snapshot files taken on the node that ran it; none when its
    /// journal starts at its spawn), replays its journal `segments` (see
    /// [`Shard::take_over_journal`]) with messages for it held meanwhile,
    /// and journals it on from there. This runtime answers for it from
    /// then on. Returns how it went and how many replies were kept for
    /// requests sent again.
    pub fn take_over(
        &self,
        address: Address,
        module: Arc<crate::LoadedModule>,
        chain: Vec<SnapshotFile>,
        segments: Vec<(std::path::PathBuf, Vec<u8>)>,
    ) -> Result<(crate::journal::Recovered, usize), String> {
        let claimed = self.port.hosts(address);
        self.port.adopt(address);
        let home = self.shard_of(address);
        let r = self
            .inspect(home, move |s| {
                s.hold(address);
                let r = (|| {
                    if !chain.is_empty() {
                        let options = RestoreOptions { foreign: true, ..RestoreOptions::lazy() };
                        s.restore_files(&chain, options).map_err(|e| format!("cannot restore its standby snapshot: {e}"))?;
                    }
                    s.take_over_journal(&module, &segments).map_err(|e| format!("cannot replay its journal: {e}"))
                })();
                if r.is_err() {
                    s.discard(address);
                }
                s.end_hold(address);
                r
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        if r.is_err() && !claimed {
            self.port.disown(address);
        }
        r
    }

    /// Drops `address` here (its state, its queued messages, what it sent
    /// that was held back, its journal left on disk): another copy of it,
    /// taken over from its standby while this node was cut off, is the
    /// one that lives. This runtime no longer answers for it.
    pub fn drop_copy(&self, address: Address) -> Result<bool, ShardDown> {
        let had = self.inspect(self.shard_of(address), move |s| s.drop_copy(address))?;
        self.port.disown(address);
        Ok(had)
    }

    /// Whether this runtime answers for `address`: one of this node's, or a
    /// reactor that moved here (or through here, and is forwarded on).
    pub fn hosts(&self, address: Address) -> bool {
        self.port.hosts(address)
    }

    /// Marks `address`, which is moving here, arriving: messages from this
    /// node to it go through the way out (which holds them until this
    /// node's earlier messages on the old path have reached it) until
    /// [`Runtime::arrived`].
    pub fn arriving(&self, address: Address) {
        self.port.set_arriving(address, true);
    }

    /// Ends [`Runtime::arriving`]: messages from here go straight to it.
    pub fn arrived(&self, address: Address) {
        self.port.set_arriving(address, false);
    }

    /// Answers for `address` (a reactor of another node that moved here),
    /// before it is restored.
    pub fn adopt(&self, address: Address) {
        self.port.adopt(address);
    }

    /// A detached reactor runs on `node` now: what was held for it goes
    /// there in order, then everything that comes for it later. How many
    /// held messages went.
    pub fn forward_to(&self, address: Address, node: NodeId) -> Result<usize, ShardDown> {
        self.inspect(self.shard_of(address), move |s| s.forward_to(address, node))
    }

    /// Records, after a restart, that `address` moved from here to `node`:
    /// messages for it are forwarded there.
    pub fn set_moved(&self, address: Address, node: NodeId) -> Result<(), ShardDown> {
        self.port.adopt(address);
        self.inspect(self.shard_of(address), move |s| s.set_moved(address, node))
    }

    /// Reactors that moved from here to other nodes, and where.
    pub fn moved(&self) -> Result<Vec<(Address, NodeId)>, ShardDown> {
        let mut all = Vec::new();
        for i in 0..self.shards.len() {
            all.extend(self.inspect(i, |s| s.moved())?);
        }
        Ok(all)
    }

    /// Sets who is told of reactors that reactors spawned at level
    /// `Standby` (the node: it gives them a standby); false if set already.
    pub fn set_standby_handler(&self, f: crate::port::StandbyHandler) -> bool {
        self.port.set_standby_handler(f)
    }

    /// Sets who keeps the supervision tree (the node's supervisor): told
    /// of groups declared, journaled children spawned, monitors, links and
    /// reactors gone for good; false if set already. Until it is set, the
    /// calls that need it answer `STATUS_UNSUPPORTED`.
    pub fn set_tree_handler(&self, f: crate::tree::TreeHandler) -> bool {
        self.port.set_tree_handler(f)
    }

    /// Sets who is told of reactors asking to be moved near another (the
    /// node: it moves them after the call that asked); false if set already.
    pub fn set_move_handler(&self, f: crate::port::MoveHandler) -> bool {
        self.port.set_move_handler(f)
    }

    /// Sets who is told of fences that reached their reactor (the node);
    /// false if set already.
    pub fn set_fence_handler(&self, f: crate::port::FenceHandler) -> bool {
        self.port.set_fence_handler(f)
    }

    /// Restores every reactor of a chain of snapshot files (a full one, then
    /// deltas on it) into this runtime, each on the shard its address names
    /// (modulo the number of shards). The shards restore their parts at one
    /// barrier and resume together, so no restored reactor sends to one not
    /// restored yet; if any shard fails, every shard removes what it
    /// restored and the first error is returned.
    pub fn restore_files(
        &self,
        chain: Vec<SnapshotFile>,
        options: RestoreOptions,
    ) -> Result<Vec<Address>, SnapshotError> {
        self.restore_files_except(chain, options, std::collections::HashSet::new())
    }

    /// [`Runtime::restore_files`] of every reactor of the chain but those
    /// in `except` (reactors that moved away since the chain was taken).
    /// Addresses of other nodes (reactors that moved here) are answered for
    /// by this runtime once restored.
    pub fn restore_files_except(
        &self,
        chain: Vec<SnapshotFile>,
        options: RestoreOptions,
        except: std::collections::HashSet<Address>,
    ) -> Result<Vec<Address>, SnapshotError> {
        self.restore_files_then(chain, options, except, Arc::new(|_, _| {}))
    }

    /// [`Runtime::restore_files_except`], then `then(shard, index)` on every
    /// shard right after the restore, before the shard takes any other
    /// command (a restart's journal recovery: no message reaches a restored
    /// reactor before it is up to date). Runs `then` with an empty chain
    /// too.
    pub fn restore_files_then(
        &self,
        chain: Vec<SnapshotFile>,
        options: RestoreOptions,
        except: std::collections::HashSet<Address>,
        then: AfterRestore,
    ) -> Result<Vec<Address>, SnapshotError> {
        let n = self.shards.len();
        let except = Arc::new(except);
        if let Some(last) = chain.last() {
            for r in &last.meta().reactors {
                let a = Address(r.address);
                if !except.contains(&a) {
                    self.port.adopt(a);
                }
            }
        }
        let chain = Arc::new(chain);
        let _one_at_a_time = self.barrier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = ShardBarrier::new(self.shards.iter().map(|h| h.down.clone()).collect());
        let failed = Arc::new(AtomicBool::new(false));
        let results: Vec<Result<Vec<Address>, SnapshotError>> = (0..n)
            .map(|i| {
                let (chain, done, failed, except, then) = (chain.clone(), done.clone(), failed.clone(), except.clone(), then.clone());
                self.inspect_later(i, move |s| {
                    let r = if chain.is_empty() {
                        Ok(Vec::new())
                    } else {
                        s.restore_files_where(&chain, options, &|a: Address| a.shard() % n == i && !except.contains(&a))
                    };
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    let all_there = done.wait();
                    if (all_there.is_err() || failed.load(Ordering::SeqCst))
                        && let Ok(restored) = &r
                    {
                        for &a in restored {
                            s.discard(a);
                        }
                    }
                    all_there.map_err(snapshot_error)?;
                    if r.is_ok() {
                        then(s, i);
                    }
                    r
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.and_then(|c| c.wait(None).ok_or(ShardDown(i))).map_err(snapshot_error).and_then(|r| r))
            .collect();
        let mut restored = Vec::new();
        for r in results {
            match r {
                Ok(a) => restored.extend(a),
                Err(e) => return Err(e),
            }
        }
        restored.sort_unstable();
        Ok(restored)
    }

    /// A reactor's state: running, failed, or `None` if it never existed.
    /// A reactor of a shard that stopped is failed.
    pub fn state(&self, address: Address) -> Option<ReactorState> {
        if !address.is_reactor() {
            return None;
        }
        let shard = self.shard_of(address);
        self.inspect(shard, move |s| s.state(address)).unwrap_or_else(|e| {
            Some(ReactorState::Failed(Failure { reason: FailureReason::Other(e.to_string()), backtrace: None }))
        })
    }

    /// Linear memory size of a live reactor (`None` on a shard that stopped).
    pub fn memory_size(&self, address: Address) -> Option<usize> {
        if !address.is_reactor() {
            return None;
        }
        self.inspect(self.shard_of(address), move |s| s.memory_size(address)).ok().flatten()
    }

    /// The module a live reactor runs.
    pub fn module_of(&self, address: Address) -> Option<crate::ModuleHash> {
        if !address.is_reactor() {
            return None;
        }
        self.inspect(self.shard_of(address), move |s| s.module_of(address)).ok().flatten()
    }

    /// The limits every reactor here runs under.
    pub fn limits(&self) -> crate::Limits {
        self.config.shard.limits
    }

    /// The node's byte budget.
    pub fn budget(&self) -> &Arc<crate::budget::NodeBudget> {
        self.refs.budget()
    }

    /// Holds messages for `address`, which does not run here now (its move
    /// is not settled): they wait, in order, for [`Runtime::forward_to`] or
    /// [`Runtime::reattach_files`].
    pub fn hold(&self, address: Address) -> Result<(), ShardDown> {
        self.port.adopt(address);
        self.inspect(self.shard_of(address), move |s| s.hold(address))
    }

    /// Restores `address` from a chain of snapshot files (only it) and
    /// queues what was held for it meanwhile after its own messages: a
    /// reactor whose move did not happen, given back after a restart.
    pub fn reattach_files(&self, address: Address, chain: Vec<SnapshotFile>, options: RestoreOptions) -> Result<(), SnapshotError> {
        self.inspect(self.shard_of(address), move |s| s.reattach_files(address, &chain, options)).map_err(snapshot_error)?
    }

    /// Every live reactor with its linear memory size (of shards still
    /// running).
    pub fn live(&self) -> Vec<(Address, u64)> {
        (0..self.shards.len())
            .filter_map(|i| {
                self.inspect(i, |s| s.live().map(|a| (a, s.memory_size(a).unwrap_or(0) as u64)).collect::<Vec<_>>()).ok()
            })
            .flatten()
            .collect()
    }

    /// Every live reactor's row, and up to `max_failed` failed reactors
    /// with why (of shards still running).
    pub fn rows(&self, max_failed: usize) -> (Vec<crate::ReactorRow>, Vec<(Address, Failure)>) {
        let (mut rows, mut failed) = (Vec::new(), Vec::new());
        for i in 0..self.shards.len() {
            if let Ok((r, f)) = self.inspect(i, move |s| s.rows(max_failed)) {
                rows.extend(r);
                failed.extend(f);
            }
        }
        rows.sort_by_key(|r| r.address.0);
        failed.truncate(max_failed);
        (rows, failed)
    }

    /// Every shard's [`LoadSummary`](crate::LoadSummary) added up (of
    /// shards still running).
    pub fn load_summary(&self) -> crate::LoadSummary {
        let mut total = crate::LoadSummary::default();
        for i in 0..self.shards.len() {
            if let Ok(s) = self.inspect(i, |s| s.load_summary()) {
                total += s;
            }
        }
        total
    }

    /// Total linear memory of all live reactors (of shards still running).
    pub fn total_memory(&self) -> u64 {
        self.load_summary().memory
    }

    /// Counters of every shard, as last published by their threads.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(|h| *h.stats.lock().unwrap()).collect()
    }

    /// Counters summed over all shards.
    pub fn stats(&self) -> ShardStats {
        let mut total = ShardStats::default();
        for s in self.shard_stats() {
            total += s;
        }
        total
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for i in 0..self.shards.len() {
            let mut cmd = Command::Stop;
            while let Err(back) = self.command(i, cmd) {
                // A thread that is gone altogether drains nothing.
                if self.shards[i].thread.as_ref().is_none_or(JoinHandle::is_finished) {
                    break;
                }
                cmd = back;
            }
        }
        for h in &mut self.shards {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A request in flight from the outside world.
#[derive(Debug)]
pub struct PendingCall {
    to: Address,
    corr: u64,
    slot: ReplySlot,
    port: Arc<HostPort>,
}

impl PendingCall {
    /// Its correlation id.
    pub fn corr(&self) -> u64 {
        self.corr
    }

    /// Waits for the answer (or the reactor's failure) up to `timeout`. A
    /// timeout too long to add to the clock (`Duration::MAX`) waits without
    /// a deadline (it used to panic).
    pub fn wait(self, timeout: Option<Duration>) -> Result<Reply, CallError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match self.slot.wait(deadline) {
            Some(r) => r,
            None => {
                self.port.forget(self.corr);
                Err(CallError::Timeout(self.to))
            }
        }
    }

    /// The answer, if it has arrived.
    pub fn try_take(&self) -> Option<Result<Reply, CallError>> {
        self.slot.take()
    }
}

/// A move's chain from its last whole layer on: a move whose page tracking
/// was lost took its last layer whole, and the rounds before it are no
/// base of it.
fn from_last_full(chain: &[Checkpoint]) -> &[Checkpoint] {
    let start = chain.iter().rposition(|c| c.kind() == crate::snapshot::Kind::Full).unwrap_or(0);
    &chain[start..]
}

/// What a shard thread does after it panicked, until the runtime stops:
/// answers every command with `ShardDown` (an inspection is dropped unrun,
/// which abandons its promise), so nobody waits on it.
fn stopped_shard_main(index: usize, commands: &mut MpscConsumer<Command>, wake: &EventCount, port: &HostPort) {
    loop {
        while let Some(cmd) = commands.try_pop() {
            match cmd {
                Command::Spawn { done, .. } => done.fulfil(Err(SpawnError::ShardDown(index))),
                Command::Deliver { to, env, counted } => {
                    if counted {
                        port.ring_done(to);
                    }
                    if env.kind == abi::KIND_REQUEST {
                        port.answer(env.corr, Err(CallError::Send(SendError::ShardDown(index))));
                    }
                }
                Command::Inspect(f) => drop(f),
                Command::Stop => return,
            }
        }
        let waiter = wake.prepare_wait();
        if commands.is_empty() {
            waiter.wait();
        } else {
            waiter.cancel();
        }
    }
}

/// The loop of one shard thread.
fn shard_main(mut shard: Shard, commands: &mut MpscConsumer<Command>, wake: &EventCount, stats: &Mutex<ShardStats>) {
    let mut held: Option<(Address, Envelope, bool)> = None;
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut work = 0usize;
        // 1. Work from outside. A delivery to a full inbox waits at the head.
        if let Some((to, env, counted)) = held.take() {
            match shard.accept_from_host(to, env, counted) {
                Ok(()) => work += 1,
                Err((SendError::InboxFull(_), env)) => held = Some((to, env, counted)),
                Err((_, env)) => {
                    shard.host_delivery_failed(to, env);
                    work += 1;
                }
            }
        }
        while held.is_none() && work < 1024 {
            let Some(cmd) = commands.try_pop() else { break };
            work += 1;
            match cmd {
                Command::Spawn { module, init, flags, journal, done } => {
                    done.fulfil(shard.spawn_envelope(&module, init, flags, journal));
                }
                Command::Deliver { to, env, counted } => match shard.accept_from_host(to, env, counted) {
                    Ok(()) => {}
                    Err((SendError::InboxFull(_), env)) => held = Some((to, env, counted)),
                    Err((_, env)) => shard.host_delivery_failed(to, env),
                },
                Command::Inspect(f) => f(&mut shard),
                Command::Stop => {
                    *stats.lock().unwrap() = shard.stats();
                    return;
                }
            }
        }
        // Messages kept back behind the command ring (see `port::Arrival`).
        work += shard.settle_waiting(false);
        shard.flush_links();
        // Output journaled reactors held until their records are on disk.
        work += shard.release_held();
        shard.flush_links();
        // 2. Messages from other shards.
        work += shard.drain_inbound(4096);
        // 3. Reactors, one batch each, round-robin.
        let mut ran = 0;
        while ran < 256 && shard.run_one() {
            shard.flush_links();
            ran += 1;
        }
        work += ran;
        if work > 0 {
            idle_since = None;
            *stats.lock().unwrap() = shard.stats();
            continue;
        }
        // Idle: spin for a short while (a message from another shard is
        // often microseconds away), then yield the core, then park until a
        // producer wakes us. Every stage is bounded.
        let idle_for = idle_since.get_or_insert_with(Instant::now).elapsed();
        if idle_for < IDLE_SPIN {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
        } else if idle_for < IDLE_YIELD {
            std::thread::yield_now();
        } else {
            *stats.lock().unwrap() = shard.stats();
            // Announce the sleep, re-check, then park until a producer's
            // `notify` (reactor-ring's EventCount: no lost wake-ups).
            let waiter = wake.prepare_wait();
            if held.is_some() || !commands.is_empty() || shard.has_inbound() || shard.has_ready() || shard.has_releasable() {
                waiter.cancel();
            } else {
                waiter.wait();
            }
            idle_since = None;
        }
    }
}

/// How long an idle shard spins before yielding its core.
const IDLE_SPIN: Duration = Duration::from_micros(20);
/// How long an idle shard keeps yielding before it parks.
const IDLE_YIELD: Duration = Duration::from_micros(200);
