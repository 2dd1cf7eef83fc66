//! A shard: one thread's population of reactors, owned outright.
//!
//! A [`Shard`] runs its reactors from a ready queue, one batch per turn,
//! round-robin, so no reactor starves the others however deep its inbox. It
//! is usable on its own (single-threaded, deterministic: tests and embedders
//! drive it with `run_*`), and it is what each thread of the multi-core
//! [`Runtime`](crate::Runtime) runs, linked to the other shards by one
//! single-producer ring per ordered pair of shards (`Links`).
//!
//! The `Router` is the part host calls need (inboxes, address and
//! correlation counters, pending spawns, links, the outside world's port);
//! it implements `HostContext` and is lent to a reactor's store for the
//! duration of each call into it.
//!
//! What a guest may make the shard hold is bounded: each reactor's inbox
//! by messages and, with its memory and blobs, by bytes (its `Account`,
//! and the node's budget); the replies it is sent by the requests it has
//! waiting (a reply is taken only for a request of its own, outstanding,
//! from the reactor asked: `outstanding`); its children by a quota; the
//! init payloads of the spawns it asks for by its budget.
#![forbid(unsafe_code)]

use crate::budget::{Account, LocalBudget};
use crate::engine;
use crate::inbox::{Full, Inbox};
use crate::journal::{Journals, Level, ReactorJournal, RecoverError, Recovered, Tap, Ticket};
use journal_format::{Journal, JournalError, Record, Step};
use crate::links::Links;
use crate::once::{Once, Taken};
use crate::port::{HostPort, ReplySlot};
use crate::reactor::{Limits, Reactor};
use crate::refs::{LocalTags, Refs, RefsError};
use crate::snapshot::{
    self, Capture, Checkpoint, HostState, Kind, Plan, RestoreOptions, Restored, SnapshotError, SnapshotFile,
    SnapshotId, SnapshotOptions, Tracking,
};
use crate::store::{HostContext, ModuleRef, ReactorData, SpawnRefusal};
use crate::tree::TreeEvent;
use guest_sdk::abi;
use reactor_types::{
    Address, CallError, Envelope, Failure, FailureReason, KIND_FENCE, ModuleHash, NodeId, ReactorState, Reply,
    RequestId, SendError, SpawnError,
};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::sync::Arc;
use wasmtime::Linker;

/// Shard settings.
#[derive(Clone, Copy, Debug)]
pub struct ShardConfig {
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
    /// Bytes of messages to the outside world held before senders get
    /// "inbox full".
    pub host_mailbox_bytes: usize,
    /// Most requests one reactor may have waiting for replies; more get
    /// `SendError::TooManyRequests`.
    pub max_waiting_requests: u32,
    /// Most children (alive or starting) one reactor may have; more spawns
    /// get `SpawnError::Quota`.
    pub max_children: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            inbox_capacity: 4096,
            max_batch: 64,
            max_reactors: 1_000_000,
            host_mailbox_capacity: 1 << 16,
            host_mailbox_bytes: 256 << 20,
            max_waiting_requests: 65536,
            max_children: 10_000,
        }
    }
}

/// Counters of a shard since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
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
    /// Messages that arrived from another shard for a reactor that does not
    /// exist (actor semantics: a send to a dead address is not an error for
    /// the sender, but it is counted).
    pub dead_letters: u64,
    /// Messages sent to reactors on other shards.
    pub cross_shard: u64,
    /// Messages handed to the transport for reactors on other nodes.
    pub remote: u64,
    /// Replies refused because no request of the addressee was waiting on
    /// their sender (forged, duplicated, or for a reactor that failed).
    pub unmatched_replies: u64,
    /// Requests from outside a reactor had taken already (sent again after
    /// a takeover or a restart, or arriving by a second path), answered
    /// with the reply it gave the first (not applied twice; see `once`).
    pub answered_again: u64,
    /// Such requests whose first had no reply yet: dropped (its reply
    /// goes to the same caller).
    pub dropped_again: u64,
    /// Replies that said the request failed (`FLAG_ERROR`): from reactors
    /// (`reply_error`, an undecodable request) or from the host for them.
    pub error_replies: u64,
    /// Replies a reactor gave that did not go out (over the limit of a
    /// message: the host answered with an error instead; or the request
    /// was not waiting any more).
    pub failed_replies: u64,
    /// Messages and requests a reactor sent that did not go out (a full
    /// inbox, no such reactor, over the limit); the reactor was told.
    pub failed_sends: u64,
    /// Messages forwarded after reactors that moved to another node.
    pub forwarded: u64,
}

/// A live reactor at a glance (see [`Shard::rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReactorRow {
    pub address: Address,
    pub module: ModuleHash,
    /// Linear memory, bytes.
    pub memory: u64,
    /// Messages queued in its inbox.
    pub queued: u64,
    /// Its journal's level, if it is journaled.
    pub journal: Option<Level>,
}

/// A shard's (or a runtime's) reactors at a glance (see
/// [`Shard::load_summary`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Live reactors.
    pub reactors: u64,
    /// Messages queued in their inboxes, in all.
    pub queued: u64,
    /// Messages queued in the fullest inbox.
    pub max_queued: u64,
    /// Their linear memory, in bytes.
    pub memory: u64,
}

impl std::ops::AddAssign for LoadSummary {
    fn add_assign(&mut self, o: Self) {
        self.reactors += o.reactors;
        self.queued += o.queued;
        self.max_queued = self.max_queued.max(o.max_queued);
        self.memory += o.memory;
    }
}

impl std::ops::AddAssign for ShardStats {
    fn add_assign(&mut self, o: Self) {
        self.live += o.live;
        self.failed += o.failed;
        self.spawned += o.spawned;
        self.delivered += o.delivered;
        self.batches += o.batches;
        self.dropped += o.dropped;
        self.dead_letters += o.dead_letters;
        self.cross_shard += o.cross_shard;
        self.remote += o.remote;
        self.unmatched_replies += o.unmatched_replies;
        self.answered_again += o.answered_again;
        self.dropped_again += o.dropped_again;
        self.error_replies += o.error_replies;
        self.failed_replies += o.failed_replies;
        self.failed_sends += o.failed_sends;
        self.forwarded += o.forwarded;
    }
}

struct PendingSpawn {
    address: Address,
    module: Arc<LoadedModule>,
    init: Envelope,
    /// Journaled at this level.
    journal: Option<Level>,
    /// The parent's budget, charged the init payload until the spawn runs.
    charged: Option<Arc<Account>>,
}

/// A reactor's inbox and what it is charged to.
struct Mailbox {
    inbox: Inbox<Envelope>,
    /// The reactor's byte budget (shared with its store).
    account: Arc<Account>,
    /// Who spawned it (the host: `Address::HOST`).
    parent: Address,
    /// Its children alive or starting.
    children: u32,
    /// Its requests waiting for replies.
    waiting: u32,
}

/// What a queued envelope costs: its payload and its bookkeeping.
#[inline]
fn queued_cost(env: &Envelope) -> usize {
    env.payload.len() + 64
}

/// What host calls reach during a call into a reactor (see the module
/// docs); home between calls.
// Public only because the public `Engine` and `LoadedModule` name it; its
// module is private and it has no public field or method.
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Router {
    engine: Arc<Engine>,
    index: usize,
    inboxes: HashMap<Address, Mailbox>,
    ready: VecDeque<Address>,
    /// Requests from this shard's reactors waiting for replies: correlation
    /// id → (requester, the reactor asked).
    outstanding: HashMap<u64, (Address, Address)>,
    /// This shard's block of the node's byte budget, for queued bytes.
    budget: LocalBudget,
    spawns: Vec<PendingSpawn>,
    port: Arc<HostPort>,
    links: Option<Links>,
    /// Tags (addresses, blobs, correlation ids) shared by the node.
    refs: Arc<Refs>,
    /// This shard's block of serials from `refs`.
    tags: LocalTags,
    input: Vec<u8>,
    input_pos: usize,
    /// The partition key the current reactor set for messages to other
    /// nodes (0: by destination); reset before every call.
    affinity: u64,
    /// `supervise`, `watch` and `trap_exits` calls in the current call
    /// (at most [`MAX_TREE_CALLS`]); reset before every call.
    tree_calls: u32,
    config: ShardConfig,
    /// Live reactors plus pending spawns.
    population: usize,
    /// Module hash of each live reactor (for `ModuleRef::Own` spawns).
    modules: HashMap<Address, ModuleHash>,
    /// Reactors detached from this shard (being moved): messages for them
    /// are held here, in arrival order, to be forwarded or given back.
    parked: HashMap<Address, VecDeque<Envelope>>,
    /// Reactors that moved from this shard to another node: messages for
    /// them are forwarded there, in order.
    moved: HashMap<Address, NodeId>,
    /// Messages for a reactor that just moved here, kept back (in arrival
    /// order) while earlier ones are still in the command ring (see
    /// `port::Arrival`).
    waiting: HashMap<Address, VecDeque<Envelope>>,
    /// Whether the shard keeps journals (spawns asked durable are refused
    /// otherwise).
    journaling: bool,
    /// Set during a call into a reactor journaled at `Synced` or above:
    /// what it sends is kept in `held_now` (accepted, routed once its
    /// call's record is on disk).
    holding: bool,
    held_now: Vec<(Address, Envelope)>,
    /// The requests from outside its reactors took, with their replies:
    /// none is handed to a reactor twice (see `once`).
    once: Once,
    stats: ShardStats,
}

impl Router {
    /// Queues `env` for `to`: another node (the port's way out), the
    /// outside world, another shard (its pair ring) or a local inbox.
    #[inline]
    fn route(&mut self, to: Address, env: Envelope) -> Result<(), SendError> {
        let node = self.refs.node();
        if env.kind == abi::KIND_REPLY {
            if env.flags & abi::FLAG_ERROR != 0 {
                self.stats.error_replies += 1;
            }
            if to.is_host() && !self.once.is_empty() {
                self.once.replied(to, &env);
            }
        }
        // Held while it is handed over (see `port::Arrival`).
        let routed = self.port.routed_send(to);
        if routed.is_some() || to.node() != node && to != Address::HOST && !self.port.hosts_foreign(to) {
            // Another node's reactor or host (or one that just arrived
            // here, while earlier messages may be on the old path): the
            // node's transport.
            let Some(out) = self.port.remote() else { return Err(SendError::NoSuchReactor(to)) };
            out.send(to, env, self.affinity)?;
            drop(routed);
            self.stats.remote += 1;
            return Ok(());
        }
        drop(routed);
        if to.is_host() {
            return self.route_to_host(to, env);
        }
        // Modulo: an address from a runtime with more shards still routes.
        if to.shard() % self.links.as_ref().map_or(1, Links::shards) != self.index {
            let Some(links) = self.links.as_mut() else { return Err(SendError::NoSuchReactor(to)) };
            links.send(to, env)?;
            self.stats.cross_shard += 1;
            return Ok(());
        }
        self.deliver_local(to, env).map_err(|(e, _)| e)
    }

    /// Queues `env` into a local inbox, or gives it back with the reason. A
    /// reply is taken only for an outstanding request of the addressee to
    /// its sender; any message only within the addressee's byte budget and
    /// the node's; a message that is not a reply only within its inbox's
    /// capacity.
    #[inline]
    fn deliver_local(&mut self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
        if !self.waiting.is_empty() && self.waiting.contains_key(&to) || self.port.ring_pending(to) {
            return self.wait_for_ring(to, env);
        }
        self.queue(to, env, false)
    }

    /// Keeps `env` back until what came for `to` through the command ring
    /// before it is queued (within its inbox capacity).
    #[cold]
    fn wait_for_ring(&mut self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
        let capacity = self.config.inbox_capacity;
        let q = self.waiting.entry(to).or_default();
        if !env.is_reply() && q.len() >= capacity {
            return Err((SendError::InboxFull(to), env));
        }
        q.push_back(env);
        Ok(())
    }

    /// Queues what was kept back for reactors whose ring is clear (every
    /// one, if `all`), in order, even past capacity (each was accepted);
    /// how many.
    fn settle_waiting(&mut self, all: bool) -> usize {
        if self.waiting.is_empty() {
            return 0;
        }
        let ready: Vec<Address> = self.waiting.keys().copied().filter(|&a| all || !self.port.ring_pending(a)).collect();
        let mut n = 0;
        for to in ready {
            for env in self.waiting.remove(&to).unwrap_or_default() {
                n += 1;
                if let Err((e, env)) = self.queue(to, env, true) {
                    self.stats.dead_letters += 1;
                    tracing::debug!(%to, from = %env.from, "a message kept back for a reactor that just arrived had no place: {e}");
                }
            }
        }
        n
    }

    /// Queues `env` into a local inbox even past its capacity and budget (a
    /// message already accepted elsewhere, moved at a checkpoint); gives it
    /// back if there is no such reactor or it is a reply to nothing
    /// outstanding.
    fn deliver_local_forced(&mut self, to: Address, env: Envelope) -> Result<(), Envelope> {
        self.queue(to, env, true).map_err(|(_, env)| env)
    }

    #[inline]
    fn queue(&mut self, to: Address, env: Envelope, forced: bool) -> Result<(), (SendError, Envelope)> {
        let Some(mb) = self.inboxes.get_mut(&to) else { return self.park(to, env, forced) };
        if env.kind == KIND_FENCE {
            // It came the old way behind its sender's earlier messages,
            // all of which are queued now: its sender may switch paths.
            self.port.fence(to, env);
            return Ok(());
        }
        let reply = env.is_reply();
        if reply {
            // Only for an outstanding request of `to`'s, to the sender.
            match self.outstanding.remove(&env.corr) {
                Some((requester, target)) if requester == to && target == env.from => {
                    mb.waiting = mb.waiting.saturating_sub(1);
                }
                other => {
                    if let Some(o) = other {
                        self.outstanding.insert(env.corr, o);
                    }
                    self.stats.unmatched_replies += 1;
                    tracing::debug!(%to, from = %env.from, corr = env.corr, "refused a reply to no request of its addressee");
                    return Err((SendError::NoSuchRequest(env.corr), env));
                }
            }
        }
        let cost = queued_cost(&env);
        let refused = if forced {
            mb.account.force_charge(cost);
            self.budget.take_forced(cost);
            None
        } else if !mb.account.try_charge(cost) {
            Some(SendError::OverBudget(to))
        } else if !self.budget.try_take(cost) {
            mb.account.release(cost);
            Some(SendError::OverBudget(to))
        } else {
            None
        };
        let result = match refused {
            Some(e) => Err((e, env)),
            None if reply || forced => {
                mb.inbox.push_reply(env);
                Ok(())
            }
            None => mb.inbox.try_push(env).map_err(|Full(env)| {
                mb.account.release(cost);
                self.budget.give(cost);
                (SendError::InboxFull(to), env)
            }),
        };
        match result {
            Ok(()) => {
                if mb.inbox.schedule() {
                    self.ready.push_back(to);
                }
                Ok(())
            }
            Err((e, env)) => {
                if reply {
                    // Not queued after all: the request is still waiting.
                    self.outstanding.insert(env.corr, (to, env.from));
                    mb.waiting += 1;
                }
                Err((e, env))
            }
        }
    }

    /// Holds `env` for a detached reactor (in arrival order, within its
    /// inbox capacity unless `forced`); refuses it if `to` is not detached.
    #[cold]
    fn park(&mut self, to: Address, env: Envelope, forced: bool) -> Result<(), (SendError, Envelope)> {
        let capacity = self.config.inbox_capacity;
        let Some(held) = self.parked.get_mut(&to) else {
            return match self.moved.get(&to) {
                Some(&node) => self.forward(to, env, node),
                None => Err((SendError::NoSuchReactor(to), env)),
            };
        };
        if !forced && !env.is_reply() && held.len() >= capacity {
            return Err((SendError::InboxFull(to), env));
        }
        held.push_back(env);
        Ok(())
    }

    /// Sends `env` on after `to`, which moved to `node` (or further: the
    /// way out knows). Accepted once already, so it is not refused for a
    /// full lane (the way out waits for room); lost only if no node can
    /// take it.
    fn forward(&mut self, to: Address, env: Envelope, node: NodeId) -> Result<(), (SendError, Envelope)> {
        let Some(out) = self.port.remote() else { return Err((SendError::NoSuchReactor(to), env)) };
        match out.forward(to, env, node) {
            Ok(()) => {
                self.stats.forwarded += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.dead_letters += 1;
                tracing::warn!(%to, node, "could not forward a message for a reactor that moved: {e}");
                Ok(())
            }
        }
    }

    /// A reply to a request from outside, or a message for the mailbox of
    /// `host` (this node's host).
    fn route_to_host(&mut self, host: Address, env: Envelope) -> Result<(), SendError> {
        if env.is_reply() {
            let corr = env.corr;
            return if self.port.answer_reply(corr, Reply::from_envelope(env)) {
                Ok(())
            } else {
                Err(SendError::NoSuchRequest(corr))
            };
        }
        if self.port.post(env) { Ok(()) } else { Err(SendError::InboxFull(host)) }
    }

    /// Removes a reactor's mailbox and what it is counted in: its queued
    /// bytes from the node's budget, its requests from the outstanding
    /// ones, itself from its parent's children.
    fn remove_mailbox(&mut self, address: Address) -> Option<Mailbox> {
        let mb = self.unhouse(address)?;
        // Its own requests, and those waiting on it (no reply will come).
        let inboxes = &mut self.inboxes;
        self.outstanding.retain(|_, &mut (requester, target)| {
            if requester == address {
                return false;
            }
            if target == address {
                if let Some(r) = inboxes.get_mut(&requester) {
                    r.waiting = r.waiting.saturating_sub(1);
                }
                return false;
            }
            true
        });
        Some(mb)
    }

    /// Takes `address`'s mailbox out of the shard's accounts: the
    /// population, the bytes queued in it (given back to the shard's
    /// budget; its messages are the caller's), its parent's children. Its
    /// requests are left as they are.
    fn unhouse(&mut self, address: Address) -> Option<Mailbox> {
        let mb = self.inboxes.remove(&address)?;
        self.population -= 1;
        let queued: usize = mb.inbox.iter().map(queued_cost).sum();
        self.budget.give(queued);
        if let Some(p) = self.inboxes.get_mut(&mb.parent) {
            p.children = p.children.saturating_sub(1);
        }
        Some(mb)
    }

    /// Keeps an envelope a reactor journaled at `Synced` sent back until
    /// its call's record is on disk; a request is outstanding (within the
    /// quota) from now.
    fn hold(&mut self, to: Address, env: Envelope) -> Result<(), SendError> {
        if env.payload.len() > abi::MAX_PAYLOAD_LEN as usize {
            return Err(SendError::TooLarge(env.payload.len()));
        }
        if env.kind == abi::KIND_REQUEST {
            if let Some(mb) = self.inboxes.get_mut(&env.from) {
                if mb.waiting >= self.config.max_waiting_requests {
                    return Err(SendError::TooManyRequests(env.from));
                }
                mb.waiting += 1;
            }
            self.outstanding.insert(env.corr, (env.from, to));
        }
        self.held_now.push((to, env));
        Ok(())
    }

    /// Routes an envelope held back (its call is on disk); one that cannot
    /// be delivered now is a dead letter, and a request is no longer
    /// outstanding.
    fn release(&mut self, to: Address, env: Envelope) {
        let (kind, from, corr) = (env.kind, env.from, env.corr);
        if Router::route(self, to, env).is_err() {
            self.stats.dead_letters += 1;
            if kind == abi::KIND_REQUEST && self.outstanding.remove(&corr).is_some()
                && let Some(mb) = self.inboxes.get_mut(&from)
            {
                mb.waiting = mb.waiting.saturating_sub(1);
            }
        }
    }

    /// Reserves a given address and an inbox for a reactor the host starts
    /// there (a replay of one spawned elsewhere).
    fn reserve_at(&mut self, a: Address) -> Result<(), SpawnError> {
        if self.population >= self.config.max_reactors {
            return Err(SpawnError::Limit(self.config.max_reactors));
        }
        if self.inboxes.contains_key(&a) {
            return Err(SpawnError::Journal(format!("address {a} is in use")));
        }
        self.population += 1;
        let account = Account::new(self.config.limits.budget_bytes());
        let mailbox =
            Mailbox { inbox: Inbox::new(self.config.inbox_capacity), account, parent: Address::HOST, children: 0, waiting: 0 };
        self.inboxes.insert(a, mailbox);
        Ok(())
    }

    /// Reserves an address and an inbox for a new child of `parent` (the
    /// host, or a reactor of this shard within its quota).
    fn reserve(&mut self, parent: Address) -> Result<Address, SpawnError> {
        if self.population >= self.config.max_reactors {
            return Err(SpawnError::Limit(self.config.max_reactors));
        }
        if let Some(p) = self.inboxes.get(&parent)
            && p.children >= self.config.max_children
        {
            return Err(SpawnError::Quota(parent, self.config.max_children));
        }
        let serial = self.refs.serial(&mut self.tags).map_err(|e| SpawnError::Tags(e.to_string()))?;
        self.population += 1;
        let a = Address::new(self.refs.node(), self.index as u8, serial);
        let account = Account::new(self.config.limits.budget_bytes());
        let mailbox = Mailbox { inbox: Inbox::new(self.config.inbox_capacity), account, parent, children: 0, waiting: 0 };
        self.inboxes.insert(a, mailbox);
        if let Some(p) = self.inboxes.get_mut(&parent) {
            p.children += 1;
        }
        Ok(a)
    }
}

impl HostContext for Router {
    fn begin(&mut self, input: &[u8]) {
        self.input.clear();
        self.input.extend_from_slice(input);
        self.input_pos = 0;
        self.affinity = 0;
        self.tree_calls = 0;
    }

    fn take_input(&mut self, max: usize) -> &[u8] {
        let start = self.input_pos;
        let n = (self.input.len() - start).min(max);
        self.input_pos += n;
        &self.input[start..start + n]
    }

    /// Records a request as outstanding (see the module docs), within the
    /// requester's quota of waiting requests. While `holding`, the envelope
    /// is accepted and kept back (see [`Shard::release_held`]).
    fn route(&mut self, to: Address, env: Envelope) -> Result<(), SendError> {
        if self.holding {
            return self.hold(to, env);
        }
        if env.kind != abi::KIND_REQUEST {
            return Router::route(self, to, env);
        }
        let (from, corr) = (env.from, env.corr);
        if let Some(mb) = self.inboxes.get_mut(&from) {
            if mb.waiting >= self.config.max_waiting_requests {
                return Err(SendError::TooManyRequests(from));
            }
            mb.waiting += 1;
        }
        match Router::route(self, to, env) {
            Ok(()) => {
                self.outstanding.insert(corr, (from, to));
                Ok(())
            }
            Err(e) => {
                if let Some(mb) = self.inboxes.get_mut(&from) {
                    mb.waiting -= 1;
                }
                Err(e)
            }
        }
    }

    fn failed_output(&mut self, from: Address, to: Address, kind: u8, status: i32) {
        let what = Envelope::kind_name(kind);
        if kind == abi::KIND_REPLY {
            self.stats.failed_replies += 1;
        } else {
            self.stats.failed_sends += 1;
        }
        if status == abi::STATUS_TOO_LARGE {
            // A bug in the reactor (the others are the world's weather:
            // full inboxes, reactors gone); the reply's case is logged
            // where the host answers for it.
            if kind != abi::KIND_REPLY {
                tracing::warn!(reactor = %from, %to, "a {what} over the limit of a message was refused");
            }
        } else {
            tracing::debug!(reactor = %from, %to, status, "a {what} did not go out");
        }
    }

    /// A correlation id unique across shards, the outside world, nodes and
    /// restarts (see [`Refs::corr`]).
    fn next_corr(&mut self) -> Result<u64, RefsError> {
        self.refs.corr(&mut self.tags)
    }

    /// Reserves an address and an inbox for a new reactor; the shard
    /// instantiates it right after the current call.
    fn spawn(&mut self, parent: Address, module: ModuleRef<'_>, init: Vec<u8>, journal: Option<Level>) -> Result<Address, SpawnRefusal> {
        let module = match module {
            ModuleRef::Own => self.modules.get(&parent).and_then(|hash| self.engine.module(hash)),
            ModuleRef::Hash(hash) => self.engine.module(&hash),
            ModuleRef::Name(name) => self.engine.module_by_name(name),
        }
        .ok_or(SpawnRefusal::NoSuchModule)?;
        if journal.is_some() {
            if !self.journaling {
                return Err(SpawnRefusal::Refused(SpawnError::Journal("this host keeps no journals".into())));
            }
            if let Some(import) = unrecorded_import(&module) {
                return Err(SpawnRefusal::Refused(SpawnError::Journal(format!("its module imports `{import}`"))));
            }
        }
        // The init payload waits on the parent's budget until the spawn runs.
        let charged = self.inboxes.get(&parent).map(|p| p.account.clone());
        if let Some(a) = &charged
            && !a.try_charge(init.len())
        {
            return Err(SpawnRefusal::Refused(SpawnError::OverBudget));
        }
        let address = match self.reserve(parent) {
            Ok(a) => a,
            Err(e) => {
                if let Some(a) = &charged {
                    a.release(init.len());
                }
                return Err(SpawnRefusal::Refused(e));
            }
        };
        let init = Envelope { kind: abi::KIND_MESSAGE, flags: 0, from: parent, corr: 0, payload: init };
        self.spawns.push(PendingSpawn { address, module, init, journal, charged });
        Ok(address)
    }

    fn replayed_request(&mut self, corr: u64, from: Address, to: Address) {
        if self.outstanding.insert(corr, (from, to)).is_none()
            && let Some(mb) = self.inboxes.get_mut(&from)
        {
            mb.waiting += 1;
        }
    }

    fn set_affinity(&mut self, key: u64) {
        self.affinity = key;
    }

    fn move_near(&mut self, me: Address, peer: Address) {
        self.port.move_near(me, peer);
    }

    fn tree(&mut self, event: TreeEvent) -> i32 {
        // Each call asks the node's supervisor for work and memory: a
        // bounded number per call into the guest.
        if self.tree_calls >= MAX_TREE_CALLS {
            return abi::STATUS_LIMIT;
        }
        self.tree_calls += 1;
        if self.port.tree(event) { abi::STATUS_OK } else { abi::STATUS_UNSUPPORTED }
    }

    fn refs(&self) -> &Refs {
        &self.refs
    }

    fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ReactorData<Self>>> {
        engine::linker(engine)
    }
}

/// The process's engine, its modules linked for the shards' router: see
/// [`engine::Engine`].
pub type Engine = engine::Engine<Router>;

/// A module loaded by an [`Engine`]: see [`engine::LoadedModule`].
pub type LoadedModule = engine::LoadedModule<Router>;

/// A live reactor, its snapshot tracking and, when it is journaled, its
/// journal.
struct Live {
    reactor: Reactor<Router>,
    tracking: Tracking,
    journal: Option<ReactorJournal>,
    /// What it sent, held until its call's record is on disk, oldest first.
    held: VecDeque<(Ticket, Vec<(Address, Envelope)>)>,
}

impl Live {
    fn new(reactor: Reactor<Router>) -> Self {
        Self { reactor, tracking: Tracking::default(), journal: None, held: VecDeque::new() }
    }

    /// Stops journaling it here (it stops, moves or is discarded).
    fn close_journal(self) -> Reactor<Router> {
        if let Some(j) = self.journal {
            j.close();
        }
        self.reactor
    }
}

/// A journal record's view of the envelope a call consumed.
fn step_of<'a>(env: &'a Envelope, tap: &'a Tap, failed: bool) -> Step<'a> {
    Step {
        kind: env.kind,
        flags: env.flags,
        from: env.from.0,
        corr: env.corr,
        failed,
        digest: tap.digest() as u32,
        tape: tap.tape(),
        payload: &env.payload,
    }
}

/// What one replayed call did ([`Shard::replay_spawn`], [`Shard::replay_step`]).
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The running output digest after the call.
    pub digest: u64,
    /// The call failed the reactor (it is gone).
    pub failure: Option<Failure>,
    /// The reactor did not make the calls the recording has.
    pub diverged: Option<String>,
    /// Recorded host-call results it was given.
    pub host_calls: usize,
}

/// The WASI imports a journaled reactor may have: recorded
/// (`clock_time_get`, `random_get`) or answering the same every time on a
/// reactor (no arguments, environment, preopened files or input; output
/// that never fails). Everything in the reactor namespace is recorded.
const DETERMINISTIC_WASI: &[&str] = &[
    "clock_time_get",
    "random_get",
    "clock_res_get",
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "proc_exit",
    "sched_yield",
    "poll_oneoff",
];

/// Why `module` cannot be journaled: an import whose results would not be
/// recorded.
fn unrecorded_import(module: &LoadedModule) -> Option<String> {
    module.pre().module().imports().find_map(|i| {
        let ok = i.module() == abi::IMPORT_MODULE || (i.module() == "wasi_snapshot_preview1" && DETERMINISTIC_WASI.contains(&i.name()));
        (!ok).then(|| format!("{}::{}", i.module(), i.name()))
    })
}

/// The most `supervise`, `watch` and `trap_exits` calls one call into a
/// reactor may make; more answer `STATUS_LIMIT`.
pub(crate) const MAX_TREE_CALLS: u32 = 64;

/// One thread's population of reactors and the traffic between them.
pub struct Shard {
    engine: Arc<Engine>,
    config: ShardConfig,
    reactors: HashMap<Address, Live>,
    failed: HashMap<Address, Failure>,
    /// Home between calls; lent to the reactor being called.
    router: Option<Box<Router>>,
    batch: Vec<u8>,
    /// Requests made through this shard's own API (`request`/`take_reply`).
    own_requests: HashMap<u64, ReplySlot>,
    /// Where journaled reactors' journals go (none: no reactor can be
    /// journaled).
    journals: Option<Arc<Journals>>,
    /// Reactors with output held for their journal.
    holders: Vec<Address>,
    /// Journaled reactors are supervised: one that fails keeps its mailbox
    /// (parked) for a restart (`restart_journaled`) or a give-up.
    supervised: bool,
    /// The message that failed each supervised reactor waiting for its
    /// restart, and the failure.
    killers: HashMap<Address, (Envelope, Failure)>,
    /// Reactors to journal at a level from the next snapshot that starts
    /// journal segments on (they arrived here by a move).
    journal_next: HashMap<Address, Level>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("stats", &self.stats()).finish()
    }
}

impl Shard {
    /// A standalone shard on `engine` (index 0, no links, its own port) with
    /// ephemeral tags on node 0: unique within this process only.
    pub fn new(engine: Arc<Engine>, config: ShardConfig) -> Self {
        Self::with_refs(engine, config, Arc::new(Refs::ephemeral()))
    }

    /// A standalone shard drawing its tags from `refs` (e.g. persisted with
    /// [`Refs::open`], or shared with other shards).
    pub fn with_refs(engine: Arc<Engine>, config: ShardConfig, refs: Arc<Refs>) -> Self {
        let port = HostPort::new(config.host_mailbox_capacity, config.host_mailbox_bytes, refs.clone());
        Self::linked(engine, config, 0, port, None, refs)
    }

    /// Shard `index` of a runtime, sharing `port` and `refs`,
    /// linked to its peers.
    pub(crate) fn linked(
        engine: Arc<Engine>,
        config: ShardConfig,
        index: usize,
        port: Arc<HostPort>,
        links: Option<Links>,
        refs: Arc<Refs>,
    ) -> Self {
        let router = Router {
            engine: engine.clone(),
            index,
            budget: LocalBudget::new(refs.budget().clone()),
            inboxes: HashMap::default(),
            outstanding: HashMap::default(),
            parked: HashMap::default(),
            moved: HashMap::default(),
            waiting: HashMap::default(),
            ready: VecDeque::new(),
            spawns: Vec::new(),
            port,
            links,
            refs,
            tags: LocalTags::default(),
            input: Vec::new(),
            input_pos: 0,
            affinity: 0,
            tree_calls: 0,
            config,
            population: 0,
            modules: HashMap::default(),
            journaling: false,
            holding: false,
            held_now: Vec::new(),
            once: Once::default(),
            stats: ShardStats::default(),
        };
        Self {
            engine,
            config,
            reactors: HashMap::default(),
            failed: HashMap::default(),
            router: Some(Box::new(router)),
            batch: Vec::new(),
            own_requests: HashMap::default(),
            journals: None,
            holders: Vec::new(),
            supervised: false,
            killers: HashMap::default(),
            journal_next: HashMap::default(),
        }
    }

    /// Whether journaled reactors that fail wait (mailbox kept) for their
    /// supervisor to restart them or give them up.
    pub fn set_supervised(&mut self, on: bool) {
        self.supervised = on;
    }

    /// Journals journaled reactors into `journals`.
    pub fn set_journals(&mut self, journals: Arc<Journals>) {
        self.journals = Some(journals);
        self.router().journaling = true;
    }

    fn router(&mut self) -> &mut Router {
        self.router.as_deref_mut().expect("router is home between calls")
    }

    fn router_ref(&self) -> &Router {
        self.router.as_deref().expect("router is home between calls")
    }

    /// An envelope from outside found no reactor: a request is answered with
    /// the error, a one-way message counted as a dead letter.
    pub(crate) fn host_delivery_failed(&mut self, to: Address, env: Envelope) {
        let router = self.router();
        if env.kind == abi::KIND_REQUEST {
            router.port.answer(env.corr, Err(CallError::Send(SendError::NoSuchReactor(to))));
        } else {
            router.stats.dead_letters += 1;
        }
    }

    /// The engine this shard instantiates on.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The tags and shared blobs this shard uses.
    pub fn refs(&self) -> &Arc<Refs> {
        &self.router_ref().refs
    }

    /// Creates a shared blob held by the host until [`Shard::release_blob`];
    /// returns its tag, which reactors open with `blob_open`.
    pub fn create_blob(&self, bytes: impl Into<Box<[u8]>>) -> Result<u64, RefsError> {
        self.refs().create_host_blob(bytes)
    }

    /// Stops the host holding a blob made by [`Shard::create_blob`]; it is
    /// freed once no reactor holds it either. False if the host did not hold it.
    pub fn release_blob(&self, tag: u64) -> bool {
        self.refs().release_host_blob(tag)
    }

    /// Starts a reactor running `module`, passing `init` (postcard bytes) to
    /// its start-up. Reactors it spawns during start-up are started too.
    pub fn spawn(&mut self, module: &Arc<LoadedModule>, init: &[u8]) -> Result<Address, SpawnError> {
        self.spawn_envelope(module, init.to_vec(), 0, None)
    }

    /// Starts a reactor whose init argument is JSON text (as the command
    /// line gives it).
    pub fn spawn_text(&mut self, module: &Arc<LoadedModule>, json: &str) -> Result<Address, SpawnError> {
        self.spawn_envelope(module, json.as_bytes().to_vec(), abi::FLAG_TEXT, None)
    }

    /// Starts a reactor with a typed (postcard) init argument.
    pub fn spawn_with<T: Serialize>(&mut self, module: &Arc<LoadedModule>, init: &T) -> Result<Address, SpawnError> {
        let bytes = postcard::to_allocvec(init).expect("serializing to memory cannot fail");
        self.spawn(module, &bytes)
    }

    /// Starts a journaled reactor: every input it consumes from its
    /// start-up on is recorded at `level` (see [`crate::journal`]). It gets
    /// its messages one per call. Refused for a module importing something
    /// whose results would not be recorded, or without journals
    /// ([`Shard::set_journals`]).
    pub fn spawn_journaled(
        &mut self,
        module: &Arc<LoadedModule>,
        init: &[u8],
        flags: u8,
        level: Level,
    ) -> Result<Address, SpawnError> {
        self.spawn_envelope(module, init.to_vec(), flags, Some(level))
    }

    pub(crate) fn spawn_envelope(
        &mut self,
        module: &Arc<LoadedModule>,
        init: Vec<u8>,
        flags: u8,
        journal: Option<Level>,
    ) -> Result<Address, SpawnError> {
        if journal.is_some() {
            if self.journals.is_none() {
                return Err(SpawnError::Journal("this host keeps no journals (a node keeps them in its data directory)".into()));
            }
            if let Some(import) = unrecorded_import(module) {
                return Err(SpawnError::Journal(format!("its module imports `{import}`, whose results a journal does not record")));
            }
        }
        let address = self.router().reserve(Address::HOST)?;
        let init = Envelope { kind: abi::KIND_MESSAGE, flags, from: Address::HOST, corr: 0, payload: init };
        let result = self.instantiate_journaled(address, module, &init, journal);
        self.process_spawns();
        result.map(|()| address).map_err(|f| SpawnError::Failed(address, f))
    }

    /// Instantiates a reactor reserved at `address`; with `journal`, its
    /// start-up is the first record of a new journal.
    fn instantiate_journaled(
        &mut self,
        address: Address,
        module: &Arc<LoadedModule>,
        init: &Envelope,
        journal: Option<Level>,
    ) -> Result<(), Failure> {
        let mut tap = journal.map(|_| {
            let mut t = Box::new(Tap::recording());
            t.begin_record();
            t
        });
        let journal = journal.zip(self.journals.clone()).map(|(level, journals)| {
            ReactorJournal::start(&journals, address, module.hash, level, 0, None)
        });
        self.instantiate_with(address, module, init, &mut tap, journal)
    }

    /// Instantiates a reactor reserved at `address` with `tap` (recording
    /// or replaying) in its store from its start-up; a recording tap's call
    /// goes into `journal`.
    fn instantiate_with(
        &mut self,
        address: Address,
        module: &Arc<LoadedModule>,
        init: &Envelope,
        tap: &mut Option<Box<Tap>>,
        mut journal: Option<ReactorJournal>,
    ) -> Result<(), Failure> {
        let budget = self.config.limits.budget_bytes();
        let router = self.router();
        router.stats.spawned += 1;
        router.modules.insert(address, module.hash);
        let account = match router.inboxes.get(&address) {
            Some(mb) => mb.account.clone(),
            None => Account::new(budget),
        };
        let budgets = (account, router.refs.budget().clone());
        self.batch.clear();
        init.encode_into(&mut self.batch);
        let input = std::mem::take(&mut self.batch);
        let result = Reactor::instantiate(
            &self.engine,
            module,
            address,
            self.config.limits,
            budgets,
            &mut self.router,
            &input,
            tap,
        );
        self.batch = input;
        match result {
            Ok(mut r) => {
                if let (Some(j), Some(t)) = (journal.as_mut(), r.tap()) {
                    j.append(&Record::Init(step_of(init, t, false)));
                }
                let mut live = Live::new(r);
                live.journal = journal;
                self.reactors.insert(address, live);
                Ok(())
            }
            Err(f) => {
                if let (Some(mut j), Some(t)) = (journal, tap.as_deref()) {
                    j.append(&Record::Init(step_of(init, t, true)));
                    j.fail(&f.to_string());
                }
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
                if let Some(a) = &s.charged {
                    a.release(s.init.payload.len());
                }
                let started = self.instantiate_journaled(s.address, &s.module, &s.init, s.journal);
                if started.is_ok() && s.journal == Some(Level::Standby) {
                    self.router().port.standby_spawned(s.address);
                }
                if let (Ok(()), Some(level)) = (&started, s.journal) {
                    let (parent, init, flags) = (s.init.from, s.init.payload, s.init.flags);
                    let event = TreeEvent::Spawned { parent, child: s.address, module: s.module.hash, init, flags, level };
                    self.router().port.tree(event);
                }
            }
        }
    }

    fn fail(&mut self, address: Address, failure: Failure) {
        tracing::warn!(reactor = %address, "reactor failed: {failure}");
        // A failed call has sealed its journal already; a failure found
        // outside a call (damaged pages) ends the journal here. Output it
        // had held was accepted: it goes out (its journal is synced when
        // sealed).
        self.take_live(address);
        let router = self.router.as_deref_mut().expect("router is home between calls");
        router.modules.remove(&address);
        if let Some(mb) = router.remove_mailbox(address) {
            router.stats.dropped += mb.inbox.len() as u64;
        }
        router.port.fail_target(address, || CallError::Failed(address, failure.clone()));
        router.port.tree(TreeEvent::Gone { address, reason: failure.to_string() });
        self.failed.insert(address, failure);
    }

    /// Takes a reactor out of the shard (it failed, moves or is undone):
    /// output it held for its journal was accepted from it, so it goes out
    /// now, and its journal is sealed.
    fn take_live(&mut self, address: Address) -> Option<Reactor<Router>> {
        self.journal_next.remove(&address);
        let mut live = self.reactors.remove(&address)?;
        let held = std::mem::take(&mut live.held);
        let reactor = live.close_journal();
        for (_, out) in held {
            for (to, env) in out {
                self.router().release(to, env);
            }
        }
        Some(reactor)
    }

    /// A supervised journaled reactor failed on `killer`: it is gone, but
    /// its mailbox is kept (parked, and what comes for it from now on too)
    /// and the requests waiting on it stay waiting, for its restart; the
    /// request that failed it is answered when it is given up
    /// ([`Shard::restart_journaled`], [`Shard::give_up`]).
    fn fail_supervised(&mut self, address: Address, failure: Failure, killer: Option<Envelope>) {
        tracing::warn!(reactor = %address, "reactor failed: {failure}; its mailbox is kept for its supervisor");
        self.take_live(address);
        let router = self.router();
        router.modules.remove(&address);
        router.ready.retain(|a| *a != address);
        let mut held = VecDeque::new();
        if let Some(mut mb) = router.unhouse(address) {
            while let Some(env) = mb.inbox.pop() {
                held.push_back(env);
            }
        }
        router.parked.insert(address, held);
        self.failed.insert(address, failure.clone());
        if let Some(killer) = killer {
            self.killers.insert(address, (killer, failure));
        } else {
            self.killers.remove(&address);
        }
    }

    /// Stops a live journaled reactor for its supervisor, which will
    /// restart it (its group restarts, or it failed because of another):
    /// as if it failed, with no message to blame, its mailbox kept. Its
    /// journal is sealed (after the records queued so far, which
    /// [`crate::journal::Journals::sync`] waits for). Returns the step its
    /// next call would have had (replay up to it to bring it back as it
    /// was), or `None` if it is not a live journaled reactor here.
    pub fn suspend(&mut self, address: Address, why: &str) -> Option<u64> {
        let step = self.reactors.get(&address)?.journal.as_ref()?.step();
        let failure = Failure { reason: FailureReason::Other(why.to_owned()), backtrace: None };
        self.fail_supervised(address, failure, None);
        Some(step)
    }

    /// Ends a reactor for good from outside (its supervision group gave
    /// up, a linked reactor is gone): a live one fails with `why`; one
    /// waiting for its supervisor is given up. False if neither.
    pub fn stop_for_good(&mut self, address: Address, why: &str) -> bool {
        if self.reactors.contains_key(&address) {
            self.fail(address, Failure { reason: FailureReason::Other(why.to_owned()), backtrace: None });
            return true;
        }
        if self.router_ref().parked.contains_key(&address) && self.failed.contains_key(&address) {
            self.give_up(address);
            return true;
        }
        false
    }

    /// Queues a signal from the host (a `KIND_DOWN` envelope) for `to`
    /// within its inbox's bounds (kept for it if it waits for its
    /// supervisor): `Ok(true)` queued, `Ok(false)` no such reactor here,
    /// `Err(env)` no room now (try again later).
    pub fn signal(&mut self, to: Address, env: Envelope) -> Result<bool, Envelope> {
        match self.router().queue(to, env, false) {
            Ok(()) => Ok(true),
            Err((SendError::InboxFull(_) | SendError::OverBudget(_), env)) => Err(env),
            Err(_) => Ok(false),
        }
    }

    /// Restarts a supervised journaled reactor that failed or was
    /// suspended, from its spawn: a new instance of `module` started with
    /// `init` again, journaled at `level` from a new journal (the caller
    /// set the old one aside). Its kept mailbox is queued again, behind
    /// the message that failed it when `retry` (else that message is a
    /// dead letter). Returns the dead letter, if there is one.
    pub fn restart_fresh(
        &mut self,
        address: Address,
        module: &Arc<LoadedModule>,
        init: Envelope,
        level: Level,
        retry: bool,
    ) -> Result<Option<(Envelope, Failure)>, SpawnError> {
        if self.reactors.contains_key(&address) {
            return Err(SpawnError::Journal(format!("{address} is live")));
        }
        let held = self.router().parked.remove(&address).unwrap_or_default();
        if let Err(e) = self.router().reserve_at(address) {
            self.router().parked.insert(address, held);
            return Err(e);
        }
        self.router().modules.insert(address, module.hash);
        if let Err(f) = self.instantiate_journaled(address, module, &init, Some(level)) {
            return Err(SpawnError::Journal(format!("its start-up failed again: {f}")));
        }
        self.failed.remove(&address);
        Ok(self.requeue_kept(address, held, retry))
    }

    /// Restarts a supervised journaled reactor that failed: from `chain`
    /// (the snapshot its journal's first segment starts from; none: from its
    /// spawn) and its journal `segments`, replayed up to the call that
    /// failed it (step `failed_step`), which leaves the journal (the
    /// post-mortem bundle kept it). Then its kept mailbox is queued again,
    /// behind the message that failed it when `retry` (else that message is
    /// a dead letter, and a request answered with the failure). Returns
    /// the dead letter, if there is one.
    pub fn restart_journaled(
        &mut self,
        module: &Arc<LoadedModule>,
        chain: Option<&[SnapshotFile]>,
        segments: &[(std::path::PathBuf, Vec<u8>)],
        failed_step: u64,
        retry: bool,
    ) -> Result<(Recovered, Option<(Envelope, Failure)>), RecoverError> {
        let (p0, b0) = segments.first().ok_or_else(|| RecoverError::Mismatch("no journal segment".into()))?;
        let address = Address(
            Journal::open(b0).map_err(|source| RecoverError::Journal { file: p0.display().to_string(), source })?.header().address,
        );
        if let Some(chain) = chain {
            self.restore_only(chain, RestoreOptions::lazy(), address)
                .map_err(|e| RecoverError::Mismatch(format!("cannot restore {address}: {e}")))?;
        }
        let recovered = match self.recover_journal_until(module, segments, Some(failed_step), false) {
            Ok(r) => r,
            Err(e) => {
                self.discard(address);
                return Err(e);
            }
        };
        self.failed.remove(&address);
        let held = self.router().parked.remove(&address).unwrap_or_default();
        Ok((recovered, self.requeue_kept(address, held, retry)))
    }

    /// Queues a restarted reactor's kept mailbox `held` again, behind the
    /// message that failed it when `retry` (else that message is a dead
    /// letter, returned).
    fn requeue_kept(&mut self, address: Address, mut held: VecDeque<Envelope>, retry: bool) -> Option<(Envelope, Failure)> {
        let mut dead = None;
        if let Some((killer, failure)) = self.killers.remove(&address) {
            if retry {
                held.push_front(killer);
            } else {
                self.dead_letter(address, &killer, &failure);
                dead = Some((killer, failure));
            }
        }
        self.requeue(address, held);
        dead
    }

    /// Gives up on a supervised reactor that failed (its supervisor's
    /// restarts are used up): it stays failed, what was kept for it is
    /// dropped and the requests waiting on it are answered with its failure.
    pub fn give_up(&mut self, address: Address) -> Option<Failure> {
        let failure = match self.killers.remove(&address) {
            Some((killer, failure)) => {
                self.dead_letter(address, &killer, &failure);
                failure
            }
            // Suspended: nothing to blame.
            None if self.router_ref().parked.contains_key(&address) => self.failed.get(&address)?.clone(),
            None => return None,
        };
        let router = self.router();
        let held = router.parked.remove(&address).unwrap_or_default();
        router.stats.dropped += held.len() as u64;
        router.remove_mailbox(address);
        router.port.fail_target(address, || CallError::Failed(address, failure.clone()));
        router.port.tree(TreeEvent::Gone { address, reason: failure.to_string() });
        Some(failure)
    }

    /// A message that failed its reactor is given up on: counted, and a
    /// request from outside answered with the failure.
    fn dead_letter(&mut self, address: Address, killer: &Envelope, failure: &Failure) {
        let router = self.router();
        router.stats.dead_letters += 1;
        if killer.kind == abi::KIND_REQUEST {
            router.port.answer(killer.corr, Err(CallError::Failed(address, failure.clone())));
        }
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
        let from = Address::host_of(self.router().refs.node());
        let env = Envelope { kind, flags, from, corr, payload };
        self.router().route(to, env)
    }

    /// Queues an envelope from the outside world into a local inbox (used by
    /// the runtime's shard threads); gives it back when the inbox is full
    /// or there is no such reactor.
    pub(crate) fn accept_from_host(&mut self, to: Address, env: Envelope, counted: bool) -> Result<(), (SendError, Envelope)> {
        let router = self.router();
        // The ring is in order already: nothing from it waits behind it.
        let r = router.queue(to, env, false);
        if counted && !matches!(r, Err((SendError::InboxFull(_), _))) {
            router.port.ring_done(to);
        }
        r
    }

    /// Queues what was kept back behind the command ring (see
    /// `port::Arrival`) for reactors whose earlier messages are through it
    /// (every one, if `all`); how many.
    pub(crate) fn settle_waiting(&mut self, all: bool) -> usize {
        self.router().settle_waiting(all)
    }

    /// Sends a typed (postcard) one-way message.
    pub fn send_typed<T: Serialize>(&mut self, to: Address, msg: &T) -> Result<(), SendError> {
        self.send(to, postcard::to_allocvec(msg).expect("serializing to memory cannot fail"), false)
    }

    /// Sends a request from the outside world; collect the answer with
    /// [`Shard::take_reply`] after running.
    pub fn request(&mut self, to: Address, payload: Vec<u8>, text: bool) -> Result<RequestId, SendError> {
        if to == Address::HOST {
            return Err(SendError::NoSuchReactor(to));
        }
        let port = self.router().port.clone();
        let corr = port.next_corr().map_err(|e| SendError::Tags(e.to_string()))?;
        let slot = port.register(corr, to);
        if let Err(e) = self.send_kind(to, abi::KIND_REQUEST, corr, payload, text) {
            port.forget(corr);
            return Err(e);
        }
        self.own_requests.insert(corr, slot);
        Ok(RequestId(corr))
    }

    /// The answer to a request, once there is one (or the reactor failed).
    pub fn take_reply(&mut self, id: RequestId) -> Option<Result<Reply, CallError>> {
        let r = self.own_requests.get(&id.0)?.take()?;
        self.own_requests.remove(&id.0);
        Some(r)
    }

    /// Sends a request, runs until the shard is idle, and returns the answer.
    pub fn call(&mut self, to: Address, payload: Vec<u8>, text: bool) -> Result<Reply, CallError> {
        let id = self.request(to, payload, text)?;
        self.run_until_idle();
        match self.take_reply(id) {
            Some(r) => r,
            None => {
                self.own_requests.remove(&id.0);
                self.router().port.forget(id.0);
                Err(CallError::NoReply(to))
            }
        }
    }

    /// [`Shard::call`] with postcard-typed request and answer.
    pub fn call_typed<Q: Serialize, R: DeserializeOwned>(&mut self, to: Address, req: &Q) -> Result<R, CallError> {
        let reply = self.call(to, postcard::to_allocvec(req).expect("serializing to memory cannot fail"), false)?;
        postcard::from_bytes(&reply.payload).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// One-way messages reactors sent to the outside world, oldest first.
    pub fn drain_host_messages(&mut self) -> Vec<Envelope> {
        self.router().port.drain_messages()
    }

    /// Runs reactors until no inbox holds a message. Returns the number of
    /// batches delivered.
    pub fn run_until_idle(&mut self) -> u64 {
        let mut n = 0;
        loop {
            while self.run_one() {
                n += 1;
            }
            if self.holders.is_empty() {
                return n;
            }
            // Output held for a journal: wait for its records to be on disk.
            if let Some(j) = &self.journals {
                j.sync();
            }
            if self.release_held() == 0 && !self.has_ready() {
                return n;
            }
        }
    }

    /// Routes the output held for journaled reactors whose calls' records
    /// are now on disk, in the order it was sent; how many envelopes went.
    pub(crate) fn release_held(&mut self) -> usize {
        if self.holders.is_empty() {
            return 0;
        }
        let mut released = Vec::new();
        let holders = std::mem::take(&mut self.holders);
        for a in holders {
            let Some(live) = self.reactors.get_mut(&a) else { continue };
            while live.held.front().is_some_and(|(t, _)| t.is_synced()) {
                let (_, out) = live.held.pop_front().expect("a front");
                released.extend(out);
            }
            if !live.held.is_empty() {
                self.holders.push(a);
            }
        }
        let n = released.len();
        for (to, env) in released {
            self.router().release(to, env);
        }
        n
    }

    /// Whether output held for a journal can go now.
    pub(crate) fn has_releasable(&self) -> bool {
        self.holders
            .iter()
            .any(|a| self.reactors.get(a).and_then(|l| l.held.front()).is_some_and(|(t, _)| t.is_synced()))
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

    /// Whether a reactor has messages waiting.
    pub(crate) fn has_ready(&self) -> bool {
        self.router.as_ref().is_some_and(|r| !r.ready.is_empty())
    }

    /// Delivers one batch to the next ready reactor. False when idle.
    pub(crate) fn run_one(&mut self) -> bool {
        let router = self.router.as_deref_mut().expect("router is home between calls");
        let Some(address) = router.ready.pop_front() else { return false };
        let Some(mb) = router.inboxes.get_mut(&address) else { return true };
        // A journaled reactor takes one message per call: each call is one
        // journal step.
        let live = self.reactors.get_mut(&address);
        let journaled = live.as_ref().is_some_and(|l| l.journal.is_some());
        let max_batch = if journaled { 1 } else { self.config.max_batch };
        self.batch.clear();
        let mut count = 0u32;
        let mut freed = 0;
        let mut consumed = None;
        let mut again = Vec::new();
        while (count as usize) < max_batch {
            let Some(env) = mb.inbox.pop() else { break };
            freed += queued_cost(&env);
            if env.kind == abi::KIND_REQUEST && env.from.is_host() {
                match router.once.take(address, env.from, env.corr, std::time::Instant::now()) {
                    Taken::New => {}
                    Taken::Answered(reply) => {
                        router.stats.answered_again += 1;
                        again.push((env.from, reply));
                        continue;
                    }
                    Taken::Unanswered => {
                        router.stats.dropped_again += 1;
                        tracing::debug!(reactor = %address, from = %env.from, corr = env.corr, "a request taken already, not answered yet, came again: dropped");
                        continue;
                    }
                }
            }
            env.encode_into(&mut self.batch);
            count += 1;
            if journaled {
                consumed = Some(env);
            }
        }
        mb.account.release(freed);
        router.budget.give(freed);
        if mb.inbox.is_empty() {
            mb.inbox.unschedule();
        } else {
            router.ready.push_back(address);
        }
        for (from, reply) in again {
            tracing::debug!(reactor = %address, %from, corr = reply.corr, "a request taken already came again: answered with its reply");
            if let Err(e) = Router::route(router, from, reply) {
                tracing::debug!(reactor = %address, %from, "the reply again could not be sent: {e}");
            }
        }
        if count == 0 {
            return true;
        }
        let Some(live) = live else { return true };
        router.stats.delivered += count as u64;
        router.stats.batches += 1;
        let batch = std::mem::take(&mut self.batch);
        if let Some(t) = live.reactor.tap() {
            t.begin_record();
        }
        router.holding = live.journal.as_ref().is_some_and(ReactorJournal::holds_output);
        // With `--log debug`, what is logged during the call carries the
        // reactor's address as a span (events carry it as a field anyway);
        // below debug the span is a disabled callsite: nothing is made.
        let span = tracing::debug_span!("reactor", address = %address).entered();
        let mut result = live.reactor.receive(&mut self.router, &batch, count);
        drop(span);
        self.batch = batch;
        let router = self.router.as_deref_mut().expect("router is home between calls");
        router.holding = false;
        if let (Some(j), Some(env)) = (live.journal.as_mut(), consumed.as_ref()) {
            let tap = live.reactor.tap().expect("a journaled reactor has its tap");
            j.append(&Record::Step(step_of(env, tap, result.is_err())));
            if !router.held_now.is_empty() {
                // Released once the record is on disk; a failed call's
                // output goes too (it was accepted from the guest).
                let out = std::mem::take(&mut router.held_now);
                if live.held.is_empty() {
                    self.holders.push(address);
                }
                live.held.push_back((j.ticket(), out));
            }
            if let Err(f) = &result {
                if let Some(env) = consumed.as_ref().filter(|e| e.kind == abi::KIND_REQUEST) {
                    // Not taken: a retry of it is handed to it again.
                    router.once.forget(address, env.from, env.corr);
                }
                live.journal.take().expect("journaled").fail(&f.to_string());
                if self.supervised {
                    let killer = consumed.take().expect("a journaled call consumed one message");
                    self.fail_supervised(address, f.clone(), Some(killer));
                    self.process_spawns();
                    return true;
                }
            } else if let Some(why) = j.broken() {
                let reason = FailureReason::Other(format!("its journal could not be written ({why}); a journaled reactor does not run unrecorded"));
                result = Err(Failure { reason, backtrace: None });
                live.journal.take().expect("journaled").close();
            }
        }
        match result {
            Ok(()) => live.tracking.settle(),
            Err(f) => self.fail(address, f),
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
        self.reactors.get(&address).map(|l| l.reactor.memory_size())
    }

    /// A copy of a live reactor's linear memory (inspection and tests).
    pub fn read_memory(&self, address: Address) -> Option<Vec<u8>> {
        self.reactors.get(&address).map(|l| l.reactor.memory_copy())
    }

    /// Module a live reactor runs.
    pub fn module_of(&self, address: Address) -> Option<ModuleHash> {
        self.reactors.get(&address).map(|l| l.reactor.module_hash())
    }

    /// Messages waiting in a reactor's inbox.
    pub fn queued(&self, address: Address) -> Option<usize> {
        self.router.as_ref()?.inboxes.get(&address).map(|mb| mb.inbox.len())
    }

    /// One row per live reactor (see [`ReactorRow`]), and the reactors
    /// that failed with why (at most `max_failed` of them).
    pub fn rows(&self, max_failed: usize) -> (Vec<ReactorRow>, Vec<(Address, Failure)>) {
        let queued = |a: &Address| self.router.as_ref().and_then(|r| r.inboxes.get(a)).map_or(0, |mb| mb.inbox.len() as u64);
        let rows = self
            .reactors
            .iter()
            .map(|(a, l)| ReactorRow {
                address: *a,
                module: l.reactor.module_hash(),
                memory: l.reactor.memory_size() as u64,
                queued: queued(a),
                journal: l.journal.as_ref().map(ReactorJournal::level),
            })
            .collect();
        let failed = self.failed.iter().take(max_failed).map(|(a, f)| (*a, f.clone())).collect();
        (rows, failed)
    }

    /// Its live reactors, the messages queued for them in all and for the
    /// fullest inbox, and their linear memory in all.
    pub fn load_summary(&self) -> LoadSummary {
        let mut s = LoadSummary { reactors: self.reactors.len() as u64, ..LoadSummary::default() };
        if let Some(r) = self.router.as_ref() {
            for mb in r.inboxes.values() {
                let n = mb.inbox.len() as u64;
                s.queued += n;
                s.max_queued = s.max_queued.max(n);
            }
        }
        s.memory = self.reactors.values().map(|l| l.reactor.memory_size() as u64).sum();
        s
    }

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        let base = self.router.as_ref().map(|r| r.stats).unwrap_or_default();
        ShardStats { live: self.reactors.len(), failed: self.failed.len(), ..base }
    }
}

/// The shard-to-shard rings (see [`Links`]), as the runtime's shard thread
/// drives them.
impl Shard {
    /// Moves up to `budget` messages from the inbound rings into local
    /// inboxes. A message for a full inbox stays at the head of its ring.
    /// Returns how many moved.
    pub(crate) fn drain_inbound(&mut self, budget: usize) -> usize {
        let router = self.router();
        let Some(mut links) = router.links.take() else { return 0 };
        let d = links.drain(budget, |to, env| router.deliver_local(to, env));
        router.links = Some(links);
        router.stats.dead_letters += d.dead as u64;
        d.moved
    }

    /// Moves every message in the inbound rings into local inboxes, past
    /// their capacity if need be (for a checkpoint: each message in flight
    /// must be recorded with its destination).
    pub(crate) fn drain_inbound_forced(&mut self) {
        let router = self.router();
        let Some(mut links) = router.links.take() else { return };
        let dead = links.drain_all(|to, env| router.deliver_local_forced(to, env));
        router.links = Some(links);
        router.stats.dead_letters += dead as u64;
        router.settle_waiting(true);
    }

    /// Whether a message waits on an inbound ring.
    pub(crate) fn has_inbound(&self) -> bool {
        self.router.as_deref().and_then(|r| r.links.as_ref()).is_some_and(Links::has_inbound)
    }

    /// Wakes the shards this one sent to during the last reactor call.
    pub(crate) fn flush_links(&mut self) {
        if let Some(links) = self.router().links.as_mut() {
            links.flush();
        }
    }
}

/// Snapshots and restore (see [`crate::snapshot`]).
impl Shard {
    /// Takes a snapshot of one reactor at this message boundary: its memory,
    /// globals, queued messages and held blobs. With `Capture::Concurrent`
    /// or `Incremental` the copy finishes in the background while the shard
    /// runs on; the returned checkpoint waits for it when read or written.
    pub fn snapshot(&mut self, address: Address, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        let live = self.reactors.get(&address).ok_or(SnapshotError::NoSuchReactor(address))?;
        let kind = match options.capture {
            Capture::Incremental => Kind::Delta { base: live.tracking.base().ok_or(SnapshotError::NoBase(address))? },
            _ => Kind::Full,
        };
        let mut cp = Checkpoint::new(kind);
        self.capture_into(address, options, &mut cp)?;
        if cp.reactors().is_empty() {
            // Its lazily restored pages were damaged: it failed instead.
            let cause = match self.state(address) {
                Some(ReactorState::Failed(f)) => f.to_string(),
                _ => "it is gone".to_owned(),
            };
            return Err(SnapshotError::Failed(address, cause));
        }
        Ok(cp)
    }

    /// Snapshots every live reactor of this shard at this boundary, as one
    /// consistent checkpoint (no message is in flight between them: every
    /// queued message is in some reactor's recorded inbox). `Incremental`
    /// gives a delta on the previous tracked checkpoint; reactors that were
    /// not in it go in whole.
    pub fn checkpoint(&mut self, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        let kind = snapshot::checkpoint_kind(options.capture, self.tracked_bases().into_iter())?;
        let mut cp = Checkpoint::new(kind);
        self.capture_all(options, &mut cp)?;
        Ok(cp)
    }

    /// The snapshot each live reactor's tracked dirty pages are relative to.
    pub(crate) fn tracked_bases(&self) -> Vec<Option<SnapshotId>> {
        self.reactors.values().map(|l| l.tracking.base()).collect()
    }

    /// Adds every live reactor to `cp`, in address order.
    pub(crate) fn capture_all(&mut self, options: SnapshotOptions, cp: &mut Checkpoint) -> Result<(), SnapshotError> {
        self.capture_where(options, cp, &|_| true)
    }

    /// Adds every live reactor `wanted` accepts to `cp`, in address order.
    pub(crate) fn capture_where(
        &mut self,
        options: SnapshotOptions,
        cp: &mut Checkpoint,
        wanted: &dyn Fn(Address) -> bool,
    ) -> Result<(), SnapshotError> {
        let mut live: Vec<Address> = self.reactors.keys().copied().filter(|&a| wanted(a)).collect();
        live.sort_unstable();
        for a in live {
            self.capture_into(a, options, cp)?;
        }
        Ok(())
    }

    fn capture_into(&mut self, address: Address, options: SnapshotOptions, cp: &mut Checkpoint) -> Result<(), SnapshotError> {
        // Pages restored lazily and not touched yet are checked before the
        // capture reads them; a damaged reactor is failed and left out.
        let live = self.reactors.get_mut(&address).ok_or(SnapshotError::NoSuchReactor(address))?;
        if let Err(failure) = live.reactor.check_lazy_pages() {
            self.fail(address, failure);
            return Ok(());
        }
        let router = self.router.as_deref().expect("router is home between calls");
        let inbox =
            router.inboxes.get(&address).map(|mb| mb.inbox.iter().map(snapshot::record).collect()).unwrap_or_default();
        let mut outstanding: Vec<(u64, u64)> = router
            .outstanding
            .iter()
            .filter(|(_, (requester, _))| *requester == address)
            .map(|(&corr, &(_, target))| (corr, target.0))
            .collect();
        outstanding.sort_unstable();
        let host = HostState { inbox, next_corr: router.refs.tags().peek(), outstanding };
        let live = self.reactors.get_mut(&address).ok_or(SnapshotError::NoSuchReactor(address))?;
        snapshot::capture(&mut live.reactor, &mut live.tracking, address, host, options, cp)?;
        // A snapshot that starts journal segments: the journal goes on from it.
        if options.journal
            && let Some(j) = live.journal.as_mut()
        {
            let digest = live.reactor.state_digest();
            j.roll(cp.id(), digest);
            if let Some(t) = live.reactor.tap() {
                t.restart_outputs();
            }
        } else if options.journal
            && live.journal.is_none()
            && let Some(journals) = self.journals.clone()
            && let Some(&level) = self.journal_next.get(&address)
            && let Some(&module) = self.router.as_deref().expect("router is home between calls").modules.get(&address)
        {
            // Journaled from this snapshot on (it arrived by a move).
            self.journal_next.remove(&address);
            let digest = live.reactor.state_digest();
            live.journal = Some(ReactorJournal::start(&journals, address, module, level, 0, Some((cp.id(), digest))));
            live.reactor.set_tap(Some(Box::new(Tap::recording())));
            tracing::info!(reactor = %address, "{address} is journaled again, at level {}, from snapshot {}", level.name(), cp.id());
            if level == Level::Standby {
                self.router().port.standby_spawned(address);
            }
        }
        Ok(())
    }

    /// Restores every reactor of a chain of in-memory checkpoints (a full
    /// one, then deltas, each on the one before) into this shard, under
    /// their own addresses. All or nothing: on an error no reactor of the
    /// chain is left behind.
    pub fn restore(&mut self, chain: &[&Checkpoint]) -> Result<Vec<Address>, SnapshotError> {
        self.restore_plan(Plan::from_checkpoints(chain)?)
    }

    /// Restores every reactor of a chain of snapshot files (a full one, then
    /// deltas, each on the one before) into this shard. The modules must be
    /// loaded in the engine. All or nothing, as [`Shard::restore`].
    pub fn restore_files(
        &mut self,
        chain: &[SnapshotFile],
        options: RestoreOptions,
    ) -> Result<Vec<Address>, SnapshotError> {
        self.restore_files_where(chain, options, &|_| true)
    }

    /// [`Shard::restore_files`] for one reactor of the chain only.
    pub fn restore_only(&mut self, chain: &[SnapshotFile], options: RestoreOptions, address: Address) -> Result<(), SnapshotError> {
        let done = self.restore_files_where(chain, options, &|a| a == address)?;
        if done.is_empty() {
            return Err(SnapshotError::NoSuchReactor(address));
        }
        Ok(())
    }

    /// [`Shard::restore_files`] for the reactors `wanted` accepts.
    pub(crate) fn restore_files_where(
        &mut self,
        chain: &[SnapshotFile],
        options: RestoreOptions,
        wanted: &dyn Fn(Address) -> bool,
    ) -> Result<Vec<Address>, SnapshotError> {
        self.restore_plan(Plan::from_files(chain, options, wanted)?)
    }

    fn restore_plan(&mut self, plan: Plan<'_>) -> Result<Vec<Address>, SnapshotError> {
        // Check everything that can be checked before touching anything.
        let router = self.router_ref();
        plan.check(&self.engine, &router.refs, |a| self.reactors.contains_key(&a) || router.inboxes.contains_key(&a))?;
        let mut done = Vec::new();
        for (i, address) in plan.addresses().enumerate() {
            match self.restore_one(&plan, i, address) {
                Ok(()) => done.push(address),
                Err(e) => {
                    for a in done {
                        self.discard(a);
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    fn restore_one(&mut self, plan: &Plan<'_>, i: usize, address: Address) -> Result<(), SnapshotError> {
        if self.router_ref().population >= self.config.max_reactors {
            return Err(SnapshotError::Os {
                address,
                reason: format!("the shard is at its limit of {} reactors", self.config.max_reactors),
            });
        }
        let refs = self.router_ref().refs.clone();
        let Restored { address, reactor, inbox: queued, damaged, outstanding } =
            plan.rebuild(i, &self.engine, self.config.limits, &refs)?;
        if let Some(cause) = damaged {
            // Damaged pages fail this reactor only; the restore goes on.
            drop(reactor);
            self.fail(address, Failure { reason: FailureReason::Damaged(cause.to_string()), backtrace: None });
            return Ok(());
        }
        let capacity = self.config.inbox_capacity;
        let router = self.router();
        let account = reactor.account().clone();
        let mut inbox = Inbox::new(capacity);
        for env in queued {
            // Restored messages were accepted once: never refuse them now.
            let cost = queued_cost(&env);
            account.force_charge(cost);
            router.budget.take_forced(cost);
            inbox.push_reply(env);
        }
        if !inbox.is_empty() && inbox.schedule() {
            router.ready.push_back(address);
        }
        let waiting = outstanding.len() as u32;
        for (corr, target) in outstanding {
            router.outstanding.insert(corr, (address, target));
        }
        router.inboxes.insert(address, Mailbox { inbox, account, parent: Address::HOST, children: 0, waiting });
        // Back here after a move: no longer forwarded.
        router.moved.remove(&address);
        router.population += 1;
        router.modules.insert(address, reactor.module_hash());
        self.reactors.insert(address, Live::new(reactor));
        Ok(())
    }

    /// Takes `address` out of this shard at this boundary, for a move: a
    /// last snapshot of it (`options`; incremental on its tracked base
    /// when pre-copy rounds ran) with its queued messages and its own
    /// outstanding requests, then the reactor is dropped. Requests others
    /// here made of it stay outstanding (its reply will come from where it
    /// goes), and messages for it from now on are held
    /// ([`Shard::drain_parked`]) until it is given back
    /// ([`Shard::reattach`]) or [`Shard::unpark`]ed.
    pub fn detach(&mut self, address: Address, options: SnapshotOptions) -> Result<Checkpoint, SnapshotError> {
        let cp = self.snapshot(address, options)?;
        if let Some(gone) = self.take_live(address) {
            // Unmapping a large memory takes milliseconds: not on this
            // thread, and not while the move waits for it.
            let dropped = std::thread::Builder::new().name("detached".into()).spawn(move || drop(gone));
            if let Err(e) = dropped {
                tracing::debug!("dropping a detached reactor on this thread: {e}");
            }
        }
        let router = self.router();
        router.modules.remove(&address);
        router.ready.retain(|a| *a != address);
        router.unhouse(address);
        // Its own requests go with it (recorded in the snapshot).
        router.outstanding.retain(|_, &mut (requester, _)| requester != address);
        router.parked.insert(address, VecDeque::new());
        Ok(cp)
    }

    /// The messages held for a detached reactor so far, oldest first (they
    /// are the caller's now: forward them in this order). Holding goes on.
    pub fn drain_parked(&mut self, address: Address) -> Vec<Envelope> {
        self.router().parked.get_mut(&address).map(|q| q.drain(..).collect()).unwrap_or_default()
    }

    /// Stops holding messages for a detached reactor (it runs elsewhere
    /// now): later ones are refused as for no such reactor. Returns what
    /// was still held, oldest first.
    pub fn unpark(&mut self, address: Address) -> Vec<Envelope> {
        self.router().parked.remove(&address).map(Vec::from).unwrap_or_default()
    }

    /// A detached reactor now runs on `node`: what was held for it is
    /// forwarded there in arrival order, then everything that comes for it
    /// later. Returns how many held messages went.
    pub fn forward_to(&mut self, address: Address, node: NodeId) -> usize {
        let held = self.router().parked.remove(&address).unwrap_or_default();
        let router = self.router();
        router.moved.insert(address, node);
        let n = held.len();
        for env in held {
            let _ = router.forward(address, env, node);
        }
        n
    }

    /// Where reactors that left this shard went.
    pub fn moved(&self) -> Vec<(Address, NodeId)> {
        self.router_ref().moved.iter().map(|(a, n)| (*a, *n)).collect()
    }

    /// Records that `address` (of this shard) runs on `node` now, as
    /// [`Shard::forward_to`] does, for a move recorded before a restart.
    pub fn set_moved(&mut self, address: Address, node: NodeId) {
        self.router().moved.insert(address, node);
    }

    /// Holds messages for `address` from now on (see [`Shard::detach`]).
    pub fn hold(&mut self, address: Address) {
        self.router().parked.entry(address).or_default();
    }

    /// Stops holding messages for `address` (see [`Shard::hold`]): what was
    /// held is queued for it, in order, if it lives here now, else counted
    /// as dead letters (requests answered that there is no such reactor).
    pub fn end_hold(&mut self, address: Address) {
        let held = self.router().parked.remove(&address).unwrap_or_default();
        if self.reactors.contains_key(&address) {
            self.requeue(address, held);
        } else {
            for env in held {
                self.host_delivery_failed(address, env);
            }
        }
    }

    /// [`Shard::reattach`] from snapshot files: restores only `address`
    /// from `chain`, then queues what was held for it.
    pub fn reattach_files(&mut self, address: Address, chain: &[SnapshotFile], options: RestoreOptions) -> Result<(), SnapshotError> {
        let held = self.router().parked.remove(&address).unwrap_or_default();
        if let Err(e) = self.restore_files_where(chain, options, &|a| a == address) {
            self.router().parked.insert(address, held);
            return Err(e);
        }
        self.requeue(address, held);
        Ok(())
    }

    /// Queues messages held for `address`, accepted once already.
    fn requeue(&mut self, address: Address, held: VecDeque<Envelope>) {
        let router = self.router();
        for env in held {
            if let Err(env) = router.deliver_local_forced(address, env) {
                router.stats.dead_letters += 1;
                tracing::debug!(%address, from = %env.from, "a held message had no place after the reattach");
            }
        }
    }

    /// Gives a detached reactor back to this shard (a move that did not
    /// happen): restores it from `chain` (the checkpoints of its move, the
    /// last one from [`Shard::detach`]) and queues what was held for it
    /// meanwhile, in order, after its own queued messages.
    pub fn reattach(&mut self, address: Address, chain: &[&Checkpoint]) -> Result<(), SnapshotError> {
        let held = self.router().parked.remove(&address).unwrap_or_default();
        if let Err(e) = self.restore(chain) {
            self.router().parked.insert(address, held);
            return Err(e);
        }
        self.requeue(address, held);
        Ok(())
    }

    /// Removes a reactor without recording a failure (undoing a restore).
    /// Drops a copy of `address` that lost to another (see
    /// `Runtime::drop_copy`): what it sent that was held back never leaves.
    /// Whether it was here.
    pub fn drop_copy(&mut self, address: Address) -> bool {
        let had = match self.reactors.get_mut(&address) {
            Some(live) => {
                let held = std::mem::take(&mut live.held);
                self.router().stats.dropped += held.iter().map(|(_, out)| out.len() as u64).sum::<u64>();
                true
            }
            None => self.router_ref().inboxes.contains_key(&address),
        };
        self.discard(address);
        self.router().once.forget_reactor(address);
        had
    }

    pub(crate) fn discard(&mut self, address: Address) {
        self.take_live(address);
        let router = self.router();
        router.modules.remove(&address);
        router.remove_mailbox(address);
        router.ready.retain(|a| *a != address);
    }
}

/// The envelope a recorded call consumed.
fn envelope_of(step: &Step<'_>) -> Envelope {
    Envelope { kind: step.kind, flags: step.flags, from: Address(step.from), corr: step.corr, payload: step.payload.to_vec() }
}

/// Whether a replayed call did what its record says.
fn check_replayed(r: &Replayed, st: &Step<'_>) -> Result<(), String> {
    if let Some(d) = &r.diverged {
        return Err(d.clone());
    }
    if r.digest as u32 != st.digest {
        return Err("sends something else than it did".into());
    }
    if r.failure.is_some() != st.failed {
        return Err(match &r.failure {
            Some(f) => format!("fails where it did not: {f}"),
            None => "does not fail where it did".into(),
        });
    }
    Ok(())
}

/// Replays: a reactor re-executed from a snapshot or its spawn, each call
/// given its recorded input and answered from its recorded tape, nothing
/// it does reaching the world. The shard must not otherwise run (the
/// caller drives it one recorded call at a time).
impl Shard {
    /// Starts a replay of a reactor journaled from its spawn: instantiates
    /// `module` at `address` and runs its start-up with the recorded call
    /// `init`.
    pub fn replay_spawn(&mut self, address: Address, module: &Arc<LoadedModule>, init: &Step<'_>) -> Result<Replayed, SpawnError> {
        self.router().reserve_at(address)?;
        self.router().modules.insert(address, module.hash);
        let env = envelope_of(init);
        let mut tap = Box::new(Tap::replaying());
        tap.begin_replay(init.tape);
        let mut tap = Some(tap);
        let result = self.instantiate_with(address, module, &env, &mut tap, None);
        let live_tap = self.reactors.get_mut(&address).and_then(|l| l.reactor.tap());
        let t = live_tap.or(tap.as_deref_mut()).expect("a replay has its tap");
        let diverged = t.finish_replay().err();
        Ok(Replayed { digest: t.digest(), failure: result.err(), diverged, host_calls: t.answered() })
    }

    /// Starts a replay of a reactor restored here (from the snapshot its
    /// journal segment starts at). False if there is no such reactor.
    pub fn replay_restored(&mut self, address: Address) -> bool {
        let Some(live) = self.reactors.get_mut(&address) else { return false };
        live.reactor.set_tap(Some(Box::new(Tap::replaying())));
        true
    }

    /// Replays one recorded call into `address` (started with
    /// [`Shard::replay_spawn`] or [`Shard::replay_restored`]). A message
    /// queued for it when its snapshot was taken leaves its inbox when
    /// replayed, so a snapshot taken after a step is that step's state.
    pub fn replay_step(&mut self, address: Address, step: &Step<'_>) -> Result<Replayed, SnapshotError> {
        let router = self.router.as_deref_mut().expect("router is home between calls");
        if let Some(mb) = router.inboxes.get_mut(&address)
            && mb.inbox.iter().next().is_some_and(|q| {
                q.from.0 == step.from && q.corr == step.corr && q.kind == step.kind && q.payload == step.payload
            })
        {
            let q = mb.inbox.pop().expect("it has a first message");
            let cost = queued_cost(&q);
            mb.account.release(cost);
            router.budget.give(cost);
            if mb.inbox.is_empty() {
                mb.inbox.unschedule();
                router.ready.retain(|a| *a != address);
            }
        }
        if step.kind == abi::KIND_REPLY
            && router.outstanding.remove(&step.corr).is_some()
            && let Some(mb) = router.inboxes.get_mut(&address)
        {
            mb.waiting = mb.waiting.saturating_sub(1);
        }
        let live = self.reactors.get_mut(&address).ok_or(SnapshotError::NoSuchReactor(address))?;
        self.batch.clear();
        self.batch.resize(abi::ENVELOPE_HEADER_LEN, 0);
        abi::EnvelopeHeader { kind: step.kind, flags: step.flags, len: step.payload.len() as u32, from: step.from, corr: step.corr }
            .encode(&mut self.batch[..]);
        self.batch.extend_from_slice(step.payload);
        let batch = std::mem::take(&mut self.batch);
        live.reactor.tap().ok_or(SnapshotError::NoSuchReactor(address))?.begin_replay(step.tape);
        let result = live.reactor.receive(&mut self.router, &batch, 1);
        self.batch = batch;
        let t = live.reactor.tap().expect("a replayed reactor has its tap");
        let diverged = t.finish_replay().err();
        let (digest, host_calls) = (t.digest(), t.answered());
        let failure = result.err();
        match &failure {
            Some(f) => self.fail(address, f.clone()),
            None => live.tracking.settle(),
        }
        Ok(Replayed { digest, failure, diverged, host_calls })
    }

    /// The replies a replayed reactor's calls make from now on are kept.
    fn keep_replies(&mut self, address: Address) {
        if let Some(t) = self.reactors.get_mut(&address).and_then(|l| l.reactor.tap()) {
            t.keep_replies();
        }
    }

    /// A replay crosses into the next journal segment: its output digest
    /// restarts, as the recording's did.
    pub fn replay_next_segment(&mut self, address: Address) {
        if let Some(t) = self.reactors.get_mut(&address).and_then(|l| l.reactor.tap()) {
            t.restart_outputs();
        }
    }

    /// The state digest of a live reactor's memory and globals (the
    /// journal format's).
    pub fn state_digest(&mut self, address: Address) -> Option<u64> {
        self.reactors.get_mut(&address).map(|l| l.reactor.state_digest())
    }

    /// Brings a journaled reactor up to date after a restart: replays its
    /// journal `segments` (path and bytes, oldest first; the first starts
    /// at its spawn, or at the snapshot it was just restored from — the
    /// caller checks that by the snapshot's id) with
    /// nothing it does reaching the world — what it sent then was sent
    /// then — checking every call against the recording, then journals it
    /// again, appending to the last segment (cut at a torn last record).
    /// A journal that ends with its failure replays the failure: the
    /// reactor fails again, and stays failed.
    ///
    /// The requests from outside it replays count as taken, with the
    /// replies they got (see `once`): one sent again (its reply lost with
    /// the node that ran it, or with this node's restart) gets the same
    /// reply instead of being applied twice.
    pub fn recover_journal(
        &mut self,
        module: &Arc<LoadedModule>,
        segments: &[(std::path::PathBuf, Vec<u8>)],
    ) -> Result<Recovered, RecoverError> {
        self.recover_journal_until(module, segments, None, true)
    }

    /// [`Shard::recover_journal`] for a reactor taken over from its standby
    /// copy (restored here, or starting at its spawn). Returns how many
    /// replies to requests from outside were kept besides.
    pub fn take_over_journal(
        &mut self,
        module: &Arc<LoadedModule>,
        segments: &[(std::path::PathBuf, Vec<u8>)],
    ) -> Result<(Recovered, usize), RecoverError> {
        let mut r = self.recover_journal_until(module, segments, None, true)?;
        let n = std::mem::take(&mut r.replies).len();
        Ok((r, n))
    }

    /// [`Shard::recover_journal`], stopping before step `until` (whose
    /// record and everything after it are cut from the last segment).
    fn recover_journal_until(
        &mut self,
        module: &Arc<LoadedModule>,
        segments: &[(std::path::PathBuf, Vec<u8>)],
        until: Option<u64>,
        keep_replies: bool,
    ) -> Result<Recovered, RecoverError> {
        let journals = self.journals.clone().ok_or_else(|| RecoverError::Mismatch("this host keeps no journals".into()))?;
        let name = |p: &std::path::Path| p.display().to_string();
        let jerr = |p: &std::path::Path, source| RecoverError::Journal { file: name(p), source };
        let (p0, b0) = segments.first().ok_or_else(|| RecoverError::Mismatch("no journal segment".into()))?;
        let h0 = *Journal::open(b0).map_err(|e| jerr(p0, e))?.header();
        let address = Address(h0.address);
        if h0.module != module.hash.0 {
            return Err(RecoverError::Mismatch(format!("{} was recorded with another module than {address} runs", name(p0))));
        }
        if h0.from_spawn() {
            if self.reactors.contains_key(&address) {
                return Err(RecoverError::Mismatch(format!("{address} is live already; its journal starts at its spawn")));
            }
        } else {
            // The caller restored the snapshot the segment names (by its
            // id); its state digest is not computed again here: that would
            // read every page of a lazily restored memory.
            if !self.replay_restored(address) {
                return Err(RecoverError::Mismatch(format!("{address} was not restored; its journal starts from a snapshot")));
            }
            if keep_replies {
                self.keep_replies(address);
            }
        }
        let mismatch = |step: u64, what: &str| RecoverError::Mismatch(format!("{address}: step {step} {what}"));
        let (mut steps, mut failed) = (0u64, false);
        let mut resume = None;
        for (i, (path, bytes)) in segments.iter().enumerate() {
            let j = Journal::open(bytes).map_err(|e| jerr(path, e))?;
            let level = j.header().level;
            let mut records = j.records();
            let (mut calls, mut step) = (0u64, j.header().first_step);
            let mut valid = journal_format::HEADER_LEN as u64;
            let mut encoder = records.encoder();
            let mut stopped = false;
            loop {
                let before = records.encoder();
                let Some(r) = records.next() else { break };
                let l = match r {
                    Ok(l) => l,
                    // What a crash in the middle of an append leaves: the
                    // record never counted (its output never left).
                    Err(JournalError::Torn { offset, .. }) if i + 1 == segments.len() => {
                        valid = offset;
                        encoder = before;
                        break;
                    }
                    Err(e) => return Err(jerr(path, e)),
                };
                if until == Some(l.step) && matches!(l.record, Record::Init(_) | Record::Step(_)) {
                    // The call to leave out, and all after it.
                    valid = l.offset;
                    encoder = before;
                    stopped = true;
                    break;
                }
                valid = records.position();
                encoder = records.encoder();
                match l.record {
                    Record::Init(st) => {
                        let r = self
                            .replay_spawn(address, module, &st)
                            .map_err(|e| RecoverError::Mismatch(format!("{address}: cannot start it again: {e}")))?;
                        check_replayed(&r, &st).map_err(|w| mismatch(l.step, &w))?;
                        failed = r.failure.is_some();
                        (steps, calls, step) = (steps + 1, calls + 1, l.step + 1);
                        if keep_replies {
                            self.keep_replies(address);
                        }
                    }
                    Record::Step(st) => {
                        if keep_replies && st.kind == abi::KIND_REQUEST && Address(st.from).is_host() {
                            self.router().once.take(address, Address(st.from), st.corr, std::time::Instant::now());
                        }
                        let r = self.replay_step(address, &st).map_err(|e| mismatch(l.step, &e.to_string()))?;
                        check_replayed(&r, &st).map_err(|w| mismatch(l.step, &w))?;
                        failed = r.failure.is_some();
                        (steps, calls, step) = (steps + 1, calls + 1, l.step + 1);
                    }
                    Record::Failure(_) => {}
                    Record::End { digest, .. } => {
                        if self.state_digest(address) != Some(digest) {
                            return Err(mismatch(step, "ends at a snapshot whose state the replay does not reach"));
                        }
                        self.replay_next_segment(address);
                    }
                }
                if failed {
                    break;
                }
            }
            resume = Some((path.clone(), level, valid, encoder, calls, step));
            if failed || stopped {
                break;
            }
        }
        let (path, level, valid, encoder, calls, step) = resume.expect("one segment at least");
        let replies = match self.reactors.get_mut(&address).and_then(|l| l.reactor.tap()) {
            Some(t) if keep_replies => t.take_replies(),
            _ => Vec::new(),
        };
        for (to, reply) in &replies {
            self.router().once.replied(Address(*to), reply);
        }
        if failed {
            return Ok(Recovered { steps, next_step: step, failed: true, address, replies });
        }
        if !self.reactors.contains_key(&address) {
            // Cut before its start-up call: there is nothing to go on from
            // (and its journal is left as it is).
            return Err(RecoverError::Mismatch(format!("{address} failed in its start-up: there is no state to go on from")));
        }
        let journal = ReactorJournal::resume(&journals, address, module.hash, level, path.clone(), valid, (encoder, calls), step)
            .map_err(|source| RecoverError::Io { file: name(&path), source })?;
        let live = self.reactors.get_mut(&address).expect("checked above");
        live.reactor.tap().expect("a replayed reactor has its tap").switch_to_recording();
        live.journal = Some(journal);
        Ok(Recovered { steps, next_step: step, failed: false, address, replies })
    }

    /// The step number of a journaled reactor's next call.
    pub fn journal_step(&self, address: Address) -> Option<u64> {
        self.reactors.get(&address).and_then(|l| l.journal.as_ref()).map(ReactorJournal::step)
    }

    /// The journal level of a live journaled reactor.
    pub fn journal_level(&self, address: Address) -> Option<Level> {
        self.reactors.get(&address).and_then(|l| l.journal.as_ref()).map(ReactorJournal::level)
    }

    /// Journals `address` (live here, not journaled: it arrived by a move)
    /// at `level` from the next snapshot that starts journal segments (a
    /// node checkpoint): its journal's first segment starts at that
    /// snapshot. False without journals, or if it is not live here.
    pub fn journal_from_next_checkpoint(&mut self, address: Address, level: Level) -> bool {
        if self.journals.is_none() || !self.reactors.contains_key(&address) {
            return false;
        }
        self.journal_next.insert(address, level);
        true
    }
}
