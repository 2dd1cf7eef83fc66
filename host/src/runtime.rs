//! The runtime: owns a population of reactors and moves messages between them
//! and the outside world.
//!
//! Single-threaded for now: one [`Runtime`] owns its reactors outright and
//! runs them from a ready queue, one batch per turn, round-robin, so no
//! reactor starves the others however deep its inbox. The [`Router`] is the
//! part host calls need (inboxes, address and correlation counters, pending
//! spawns, the outside world's mailbox); it is lent to a reactor's store for
//! the duration of each call into it.
#![forbid(unsafe_code)]

use crate::engine::{Engine, LoadedModule, ModuleHash};
use crate::inbox::{Full, Inbox};
use crate::reactor::{Address, Failure, Limits, Reactor};
use guest_sdk::abi;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `abi::KIND_*`.
    pub kind: u8,
    /// `abi::FLAG_*`.
    pub flags: u8,
    /// Sender.
    pub from: Address,
    /// Correlation id of a request or reply.
    pub corr: u64,
    /// Encoded message.
    pub payload: Vec<u8>,
}

impl Envelope {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + abi::ENVELOPE_HEADER_LEN, 0);
        abi::EnvelopeHeader {
            kind: self.kind,
            flags: self.flags,
            len: self.payload.len() as u32,
            from: self.from.0,
            corr: self.corr,
        }
        .encode(&mut out[start..]);
        out.extend_from_slice(&self.payload);
    }
}

/// Runtime settings.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    /// Limits applied to every reactor.
    pub limits: Limits,
    /// Messages an inbox holds before senders get "inbox full".
    pub inbox_capacity: usize,
    /// Most messages handed to a reactor in one call.
    pub max_batch: usize,
    /// Most reactors alive at once; spawns past it are refused.
    pub max_reactors: usize,
    /// Messages to the outside world held before senders get "inbox full".
    pub host_mailbox_capacity: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            inbox_capacity: 4096,
            max_batch: 64,
            max_reactors: 1_000_000,
            host_mailbox_capacity: 1 << 16,
        }
    }
}

/// Why the runtime did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No live reactor has that address (it never existed, or it failed).
    #[error("no live reactor at {0}")]
    NoSuchReactor(Address),
    /// The destination's inbox is full; nothing was queued. Retry later.
    #[error("the inbox of {0} is full")]
    InboxFull(Address),
    /// The payload exceeds the ABI's limit; nothing was queued.
    #[error("payload of {0} bytes exceeds the limit of {max} bytes", max = abi::MAX_PAYLOAD_LEN)]
    TooLarge(usize),
}

/// Why a spawn did not produce a running reactor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The runtime is at `max_reactors`.
    #[error("the runtime is at its limit of {0} reactors")]
    Limit(usize),
    /// The reactor failed while instantiating or in its init entry point; it
    /// does not exist afterwards.
    #[error("the reactor {0} failed during start-up: {1}")]
    Failed(Address, Failure),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The reactor failed before answering.
    #[error("reactor {0} failed before replying: {1}")]
    Failed(Address, Failure),
    /// The reactor went idle without answering.
    #[error("reactor {0} handled the request without replying")]
    NoReply(Address),
    /// The answer did not decode as the expected type.
    #[error("cannot decode the reply: {0}")]
    Decode(String),
}

/// An answer to a request made from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Who answered.
    pub from: Address,
    /// Encoded answer (JSON if `text`).
    pub payload: Vec<u8>,
    /// Whether the payload is JSON text.
    pub text: bool,
}

/// Identifies a request made from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// A reactor's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactorState {
    /// Alive and taking messages.
    Running,
    /// Failed; gone, with this record left behind.
    Failed(Failure),
}

/// Counters since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Reactors alive now.
    pub live: usize,
    /// Reactors that failed.
    pub failed: usize,
    /// Reactors ever spawned (from outside or by reactors).
    pub spawned: u64,
    /// Messages delivered into reactors.
    pub delivered: u64,
    /// Calls into reactors that delivered those messages.
    pub batches: u64,
    /// Messages dropped because their destination failed with them queued.
    pub dropped: u64,
}

struct PendingSpawn {
    address: Address,
    module: Arc<LoadedModule>,
    init: Envelope,
}

/// The outside world's side of the runtime.
#[derive(Default)]
struct HostPort {
    /// Requests from outside still waiting, by correlation id: their target.
    pending: HashMap<u64, Address>,
    /// Their answers.
    replies: HashMap<u64, Result<Reply, CallError>>,
    /// One-way messages reactors sent to [`Address::HOST`].
    messages: VecDeque<Envelope>,
}

/// What host calls reach during a call into a reactor.
pub(crate) struct Router {
    engine: Arc<Engine>,
    inboxes: HashMap<Address, Inbox<Envelope>>,
    ready: VecDeque<Address>,
    spawns: Vec<PendingSpawn>,
    host: HostPort,
    next_address: u64,
    next_corr: u64,
    input: Vec<u8>,
    input_pos: usize,
    config: RuntimeConfig,
    /// Live reactors plus pending spawns.
    population: usize,
    /// Module hash of each live reactor (for `ModuleRef::Own` spawns).
    modules: HashMap<Address, ModuleHash>,
}

impl Router {
    /// Stages bytes for the guest to read with `inbox_read`.
    pub(crate) fn stage_input(&mut self, bytes: &[u8]) {
        self.input.clear();
        self.input.extend_from_slice(bytes);
        self.input_pos = 0;
    }

    pub(crate) fn input_remaining(&self) -> &[u8] {
        &self.input[self.input_pos..]
    }

    pub(crate) fn consume_input(&mut self, n: usize) {
        self.input_pos += n;
    }

    pub(crate) fn next_corr(&mut self) -> u64 {
        self.next_corr += 1;
        self.next_corr
    }

    /// Queues `env` for `to`; returns an `abi::STATUS_*`.
    pub(crate) fn route(&mut self, to: Address, env: Envelope) -> i32 {
        if to == Address::HOST {
            return self.route_to_host(env);
        }
        let Some(inbox) = self.inboxes.get_mut(&to) else { return abi::STATUS_NO_SUCH_REACTOR };
        if env.kind == abi::KIND_REPLY {
            inbox.push_reply(env);
        } else if let Err(Full(_)) = inbox.try_push(env) {
            return abi::STATUS_INBOX_FULL;
        }
        if !inbox.scheduled {
            inbox.scheduled = true;
            self.ready.push_back(to);
        }
        abi::STATUS_OK
    }

    fn route_to_host(&mut self, env: Envelope) -> i32 {
        if env.kind == abi::KIND_REPLY {
            if self.host.pending.remove(&env.corr).is_none() {
                return abi::STATUS_BAD_ARGUMENT;
            }
            let reply = Reply { from: env.from, text: env.flags & abi::FLAG_TEXT != 0, payload: env.payload };
            self.host.replies.insert(env.corr, Ok(reply));
            return abi::STATUS_OK;
        }
        if self.host.messages.len() >= self.config.host_mailbox_capacity {
            return abi::STATUS_INBOX_FULL;
        }
        self.host.messages.push_back(env);
        abi::STATUS_OK
    }

    /// Reserves an address and an inbox for a new reactor; the runtime
    /// instantiates it right after the current call.
    pub(crate) fn spawn(&mut self, parent: Address, mref: &[u8], init: Vec<u8>) -> Result<Address, i32> {
        let module = match mref.split_first() {
            Some((&abi::MODULE_REF_SELF, [])) => {
                let hash = self.modules.get(&parent).ok_or(abi::STATUS_NO_SUCH_MODULE)?;
                self.engine.module(hash)
            }
            Some((&abi::MODULE_REF_HASH, h)) => {
                let h: [u8; 32] = h.try_into().map_err(|_| abi::STATUS_BAD_ARGUMENT)?;
                self.engine.module(&ModuleHash(h))
            }
            Some((&abi::MODULE_REF_NAME, n)) => {
                let n = std::str::from_utf8(n).map_err(|_| abi::STATUS_BAD_ARGUMENT)?;
                self.engine.module_by_name(n)
            }
            _ => return Err(abi::STATUS_BAD_ARGUMENT),
        }
        .ok_or(abi::STATUS_NO_SUCH_MODULE)?;
        let address = self.reserve().ok_or(abi::STATUS_SPAWN_REFUSED)?;
        let init = Envelope { kind: abi::KIND_MESSAGE, flags: 0, from: parent, corr: 0, payload: init };
        self.spawns.push(PendingSpawn { address, module, init });
        Ok(address)
    }

    fn reserve(&mut self) -> Option<Address> {
        if self.population >= self.config.max_reactors {
            return None;
        }
        self.population += 1;
        self.next_address += 1;
        let a = Address(self.next_address);
        self.inboxes.insert(a, Inbox::new(self.config.inbox_capacity));
        Some(a)
    }
}

/// A population of reactors and the traffic between them.
pub struct Runtime {
    engine: Arc<Engine>,
    config: RuntimeConfig,
    reactors: HashMap<Address, Reactor>,
    failed: HashMap<Address, Failure>,
    router: Option<Box<Router>>,
    batch: Vec<u8>,
    stats: RuntimeStats,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("stats", &self.stats()).finish()
    }
}

impl Runtime {
    /// An empty runtime on `engine`.
    pub fn new(engine: Arc<Engine>, config: RuntimeConfig) -> Self {
        let router = Router {
            engine: engine.clone(),
            inboxes: HashMap::new(),
            ready: VecDeque::new(),
            spawns: Vec::new(),
            host: HostPort::default(),
            next_address: 0,
            next_corr: 0,
            input: Vec::new(),
            input_pos: 0,
            config,
            population: 0,
            modules: HashMap::new(),
        };
        Self {
            engine,
            config,
            reactors: HashMap::new(),
            failed: HashMap::new(),
            router: Some(Box::new(router)),
            batch: Vec::new(),
            stats: RuntimeStats::default(),
        }
    }

    fn router(&mut self) -> &mut Router {
        self.router.as_deref_mut().expect("router is home between calls")
    }

    /// The engine this runtime instantiates on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts a reactor running `module`, passing `init` to its start-up.
    /// Reactors it spawns during start-up are started too.
    pub fn spawn(&mut self, module: &Arc<LoadedModule>, init: &[u8]) -> Result<Address, SpawnError> {
        self.spawn_envelope(module, init.to_vec(), 0)
    }

    /// Starts a reactor whose init argument is JSON text (as the command
    /// line gives it).
    pub fn spawn_text(&mut self, module: &Arc<LoadedModule>, json: &str) -> Result<Address, SpawnError> {
        self.spawn_envelope(module, json.as_bytes().to_vec(), abi::FLAG_TEXT)
    }

    fn spawn_envelope(&mut self, module: &Arc<LoadedModule>, init: Vec<u8>, flags: u8) -> Result<Address, SpawnError> {
        let address = self.router().reserve().ok_or(SpawnError::Limit(self.config.max_reactors))?;
        let init = Envelope { kind: abi::KIND_MESSAGE, flags, from: Address::HOST, corr: 0, payload: init };
        let result = self.instantiate(address, module, &init);
        self.process_spawns();
        result.map(|()| address).map_err(|f| SpawnError::Failed(address, f))
    }

    /// Starts a reactor with a typed (postcard) init argument.
    pub fn spawn_with<T: Serialize>(&mut self, module: &Arc<LoadedModule>, init: &T) -> Result<Address, SpawnError> {
        let bytes = postcard::to_allocvec(init).expect("serializing to memory cannot fail");
        self.spawn(module, &bytes)
    }

    fn instantiate(&mut self, address: Address, module: &Arc<LoadedModule>, init: &Envelope) -> Result<(), Failure> {
        self.stats.spawned += 1;
        self.router().modules.insert(address, module.hash);
        self.batch.clear();
        init.encode_into(&mut self.batch);
        let input = std::mem::take(&mut self.batch);
        let result = Reactor::instantiate(&self.engine, module, address, self.config.limits, &mut self.router, &input);
        self.batch = input;
        match result {
            Ok(r) => {
                self.reactors.insert(address, r);
                Ok(())
            }
            Err(f) => {
                self.fail(address, f.clone());
                Err(f)
            }
        }
    }

    fn process_spawns(&mut self) {
        loop {
            let spawns = std::mem::take(&mut self.router().spawns);
            if spawns.is_empty() {
                return;
            }
            for s in spawns {
                let _ = self.instantiate(s.address, &s.module, &s.init);
            }
        }
    }

    fn fail(&mut self, address: Address, failure: Failure) {
        tracing::warn!(reactor = %address, "reactor failed: {failure}");
        self.reactors.remove(&address);
        let router = self.router.as_deref_mut().expect("router is home between calls");
        router.modules.remove(&address);
        if let Some(mut inbox) = router.inboxes.remove(&address) {
            router.population -= 1;
            self.stats.dropped += inbox.drain().count() as u64;
        }
        let orphaned: Vec<u64> =
            router.host.pending.iter().filter(|(_, t)| **t == address).map(|(c, _)| *c).collect();
        for corr in orphaned {
            router.host.pending.remove(&corr);
            router.host.replies.insert(corr, Err(CallError::Failed(address, failure.clone())));
        }
        self.failed.insert(address, failure);
    }

    /// Sends a one-way message from the outside world.
    pub fn send(&mut self, to: Address, payload: Vec<u8>, text: bool) -> Result<(), SendError> {
        self.send_kind(to, abi::KIND_MESSAGE, 0, payload, text)
    }

    fn send_kind(&mut self, to: Address, kind: u8, corr: u64, payload: Vec<u8>, text: bool) -> Result<(), SendError> {
        if payload.len() > abi::MAX_PAYLOAD_LEN as usize {
            return Err(SendError::TooLarge(payload.len()));
        }
        let flags = if text { abi::FLAG_TEXT } else { 0 };
        let env = Envelope { kind, flags, from: Address::HOST, corr, payload };
        match self.router().route(to, env) {
            abi::STATUS_OK => Ok(()),
            abi::STATUS_INBOX_FULL => Err(SendError::InboxFull(to)),
            _ => Err(SendError::NoSuchReactor(to)),
        }
    }

    /// Sends a typed (postcard) one-way message.
    pub fn send_typed<T: Serialize>(&mut self, to: Address, msg: &T) -> Result<(), SendError> {
        self.send(to, postcard::to_allocvec(msg).expect("serializing to memory cannot fail"), false)
    }

    /// Sends a request from the outside world; collect the answer with
    /// [`Runtime::take_reply`] after running.
    pub fn request(&mut self, to: Address, payload: Vec<u8>, text: bool) -> Result<RequestId, SendError> {
        if to == Address::HOST {
            return Err(SendError::NoSuchReactor(to));
        }
        let corr = self.router().next_corr();
        self.send_kind(to, abi::KIND_REQUEST, corr, payload, text)?;
        self.router().host.pending.insert(corr, to);
        Ok(RequestId(corr))
    }

    /// The answer to a request, once there is one (or the reactor failed).
    pub fn take_reply(&mut self, id: RequestId) -> Option<Result<Reply, CallError>> {
        self.router().host.replies.remove(&id.0)
    }

    /// Sends a request, runs until the runtime is idle, and returns the answer.
    pub fn call(&mut self, to: Address, payload: Vec<u8>, text: bool) -> Result<Reply, CallError> {
        let id = self.request(to, payload, text)?;
        self.run_until_idle();
        match self.take_reply(id) {
            Some(r) => r,
            None => {
                self.router().host.pending.remove(&id.0);
                Err(CallError::NoReply(to))
            }
        }
    }

    /// [`Runtime::call`] with postcard-typed request and answer.
    pub fn call_typed<Q: Serialize, R: DeserializeOwned>(&mut self, to: Address, req: &Q) -> Result<R, CallError> {
        let reply = self.call(to, postcard::to_allocvec(req).expect("serializing to memory cannot fail"), false)?;
        postcard::from_bytes(&reply.payload).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// One-way messages reactors sent to the outside world, oldest first.
    pub fn drain_host_messages(&mut self) -> Vec<Envelope> {
        self.router().host.messages.drain(..).collect()
    }

    /// Runs reactors until no inbox holds a message. Returns the number of
    /// batches delivered.
    pub fn run_until_idle(&mut self) -> u64 {
        let mut n = 0;
        while self.run_one() {
            n += 1;
        }
        n
    }

    /// Runs at most `batches` turns. Returns whether work remains.
    pub fn run_for(&mut self, batches: u64) -> bool {
        for _ in 0..batches {
            if !self.run_one() {
                return false;
            }
        }
        !self.router().ready.is_empty()
    }

    /// Delivers one batch to the next ready reactor. False when idle.
    fn run_one(&mut self) -> bool {
        let max_batch = self.config.max_batch;
        let router = self.router.as_deref_mut().expect("router is home between calls");
        let Some(address) = router.ready.pop_front() else { return false };
        let Some(inbox) = router.inboxes.get_mut(&address) else { return true };
        self.batch.clear();
        let mut count = 0u32;
        while (count as usize) < max_batch {
            let Some(env) = inbox.pop() else { break };
            env.encode_into(&mut self.batch);
            count += 1;
        }
        if inbox.is_empty() {
            inbox.scheduled = false;
        } else {
            router.ready.push_back(address);
        }
        if count == 0 {
            return true;
        }
        let Some(reactor) = self.reactors.get_mut(&address) else { return true };
        self.stats.delivered += count as u64;
        self.stats.batches += 1;
        let batch = std::mem::take(&mut self.batch);
        let result = reactor.receive(&mut self.router, &batch, count);
        self.batch = batch;
        if let Err(f) = result {
            self.fail(address, f);
        }
        self.process_spawns();
        true
    }

    /// A reactor's state: running, failed, or `None` if it never existed.
    pub fn state(&self, address: Address) -> Option<ReactorState> {
        if self.reactors.contains_key(&address) {
            Some(ReactorState::Running)
        } else {
            self.failed.get(&address).map(|f| ReactorState::Failed(f.clone()))
        }
    }

    /// Addresses of the live reactors.
    pub fn live(&self) -> impl Iterator<Item = Address> + '_ {
        self.reactors.keys().copied()
    }

    /// Linear memory size of a live reactor.
    pub fn memory_size(&self, address: Address) -> Option<usize> {
        self.reactors.get(&address).map(|r| r.memory_size())
    }

    /// Module a live reactor runs.
    pub fn module_of(&self, address: Address) -> Option<ModuleHash> {
        self.reactors.get(&address).map(|r| r.module_hash())
    }

    /// Messages waiting in a reactor's inbox.
    pub fn queued(&self, address: Address) -> Option<usize> {
        self.router.as_ref()?.inboxes.get(&address).map(|i| i.len())
    }

    /// Counters.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats { live: self.reactors.len(), failed: self.failed.len(), ..self.stats }
    }
}
