//! The outside world's port into the runtime: answers to requests made from
//! outside (one [`Completion`] per request, found by correlation id from any
//! shard), the mailbox of one-way messages reactors send to
//! [`Address::HOST`], and the way out to other nodes.
#![forbid(unsafe_code)]

use crate::refs::{LocalTags, Refs, RefsError};
use reactor_types::{Address, CallError, Envelope, Outbound, Reply};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::Thread;
use std::time::Instant;

/// A value that one thread delivers once and another waits for. It may
/// also be abandoned (its [`Promise`] dropped unfulfilled, e.g. by a shard
/// thread that panicked): the waiter then gets `None` at once.
#[derive(Debug)]
pub(crate) struct Completion<T> {
    value: Mutex<Option<T>>,
    done: AtomicBool,
    waiter: Mutex<Option<Thread>>,
}

/// The obligation to complete a [`Completion`]: fulfilled once, or, when
/// dropped unfulfilled (the code that held it unwound or was discarded),
/// the completion is abandoned so its waiter does not wait forever.
#[derive(Debug)]
pub(crate) struct Promise<T>(Option<Arc<Completion<T>>>);

impl<T> Promise<T> {
    /// A promise and the completion it fulfils.
    pub(crate) fn new() -> (Self, Arc<Completion<T>>) {
        let c = Completion::new();
        (Self(Some(c.clone())), c)
    }

    /// Delivers the value.
    pub(crate) fn fulfil(mut self, v: T) {
        if let Some(c) = self.0.take() {
            c.complete(v);
        }
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.abandon();
        }
    }
}

impl<T> Completion<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { value: Mutex::new(None), done: AtomicBool::new(false), waiter: Mutex::new(None) })
    }

    /// Delivers `v` unless a value was delivered already; wakes the waiter.
    pub(crate) fn complete(&self, v: T) -> bool {
        {
            let mut slot = self.value.lock().unwrap();
            if self.done.load(Ordering::Acquire) {
                return false;
            }
            *slot = Some(v);
            self.done.store(true, Ordering::Release);
        }
        if let Some(t) = self.waiter.lock().unwrap().as_ref() {
            t.unpark();
        }
        true
    }

    /// Marks it done with no value (nothing will ever complete it); wakes
    /// the waiter.
    pub(crate) fn abandon(&self) {
        {
            let _slot = self.value.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.done.load(Ordering::Acquire) {
                return;
            }
            self.done.store(true, Ordering::Release);
        }
        if let Some(t) = self.waiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            t.unpark();
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The value, if delivered (and not taken before).
    pub(crate) fn take(&self) -> Option<T> {
        if !self.is_done() {
            return None;
        }
        self.value.lock().unwrap().take()
    }

    /// Waits for the value until `deadline`; `None` when the deadline
    /// passed or the completion was abandoned.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<T> {
        *self.waiter.lock().unwrap() = Some(std::thread::current());
        // Answers often come within microseconds: spin briefly, then yield a
        // little, then park (the completer unparks us).
        let start = Instant::now();
        loop {
            if self.is_done() {
                return self.take();
            }
            let waited = start.elapsed();
            if waited < std::time::Duration::from_micros(10) {
                std::hint::spin_loop();
                continue;
            }
            if waited < std::time::Duration::from_micros(50) {
                std::thread::yield_now();
                continue;
            }
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    std::thread::park_timeout(d - now);
                }
                None => std::thread::park(),
            }
        }
    }
}

pub(crate) type ReplySlot = Arc<Completion<Result<Reply, CallError>>>;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct HostPort {
    /// Requests from outside not yet answered: correlation id → (target, slot).
    pending: Mutex<HashMap<u64, (Address, ReplySlot)>>,
    refs: Arc<Refs>,
    /// The port's own block of serials for correlation ids.
    corr: Mutex<LocalTags>,
    /// The mailbox, and the bytes it holds (charged to the node budget).
    messages: Mutex<(VecDeque<Envelope>, usize)>,
    capacity: usize,
    byte_capacity: usize,
    /// Where messages for reactors on other nodes go (set once by the node).
    remote: OnceLock<Arc<dyn Outbound>>,
    /// Addresses naming another node that this runtime answers for: reactors
    /// that moved here, or moved here and on (messages for them are
    /// forwarded from here in order). Counted so the common case (none)
    /// takes no lock.
    residents: RwLock<HashSet<Address>>,
    resident_count: AtomicUsize,
    /// Reactors that just moved here, while this node's own earlier
    /// messages to them may still be on the old path: messages from here
    /// go out through the transport, which holds them until its fences
    /// come back, and then hands them in through the shard's command ring
    /// (see [`Arrival`]). Counted so the common case (none) takes no lock.
    arriving: RwLock<HashMap<Address, Arc<Arrival>>>,
    arriving_count: AtomicUsize,
    /// Who is told of a fence that reached the reactor it was sent to.
    fences: OnceLock<Fences>,
    /// Who is told of a reactor asking to be moved.
    moves: OnceLock<Moves>,
    standbys: OnceLock<Standbys>,
    /// Who keeps the supervision tree.
    tree: OnceLock<Tree>,
}

/// A reactor that moved here, while messages from this node to it may
/// take two ways: through the transport (held there until this node's
/// earlier messages on the old path have reached it, then handed in
/// through the shard's command ring) or straight in (links between shards,
/// the shard's own reactors). A sender takes the first while `routed`,
/// the second after; so that its later messages do not overtake its
/// earlier ones still in the ring, the ring's messages for the reactor are
/// counted (`in_ring`) and the shard keeps the others back while any are
/// there. `sending` counts senders between their look at `routed` and the
/// ring: the entry lives on until all three are done.
#[derive(Debug, Default)]
pub(crate) struct Arrival {
    routed: AtomicBool,
    sending: AtomicUsize,
    in_ring: AtomicUsize,
}

impl Arrival {
    fn settled(&self) -> bool {
        !self.routed.load(Ordering::SeqCst) && self.sending.load(Ordering::SeqCst) == 0 && self.in_ring.load(Ordering::SeqCst) == 0
    }
}

/// A sender on its way through the transport to an arriving reactor (see
/// [`Arrival`]).
pub(crate) struct RoutedSend<'a> {
    port: &'a HostPort,
    to: Address,
    arrival: Arc<Arrival>,
}

impl Drop for RoutedSend<'_> {
    fn drop(&mut self) {
        self.arrival.sending.fetch_sub(1, Ordering::SeqCst);
        if self.arrival.settled() {
            self.port.retire(self.to);
        }
    }
}

/// Told of a reactor (the first address) asking to be moved to the node
/// where another (the second) lives.
pub type MoveHandler = Box<dyn Fn(Address, Address) + Send + Sync>;

/// The move handler, in a wrapper that can be debug-printed.
struct Moves(MoveHandler);

/// Told of a reactor a reactor spawned journaled at level `Standby` (its
/// node gives it a standby).
pub type StandbyHandler = Box<dyn Fn(Address) + Send + Sync>;

/// The tree's keeper, in a wrapper that can be debug-printed.
struct Tree(crate::tree::TreeHandler);

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tree")
    }
}

/// The standby handler, in a wrapper that can be debug-printed.
struct Standbys(StandbyHandler);

impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Standbys")
    }
}

impl std::fmt::Debug for Moves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Moves")
    }
}

/// The fence handler, in a wrapper that can be debug-printed.
struct Fences(FenceHandler);

impl std::fmt::Debug for Fences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fences")
    }
}

/// Told of each fence that reached the reactor it names (its address,
/// the fence).
pub type FenceHandler = Box<dyn Fn(Address, Envelope) + Send + Sync>;

impl HostPort {
    /// A port whose mailbox holds at most `mailbox_capacity` messages and
    /// `byte_capacity` bytes of them.
    pub(crate) fn new(mailbox_capacity: usize, byte_capacity: usize, refs: Arc<Refs>) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(HashMap::default()),
            refs,
            corr: Mutex::default(),
            messages: Mutex::new((VecDeque::new(), 0)),
            capacity: mailbox_capacity,
            byte_capacity,
            remote: OnceLock::new(),
            residents: RwLock::new(HashSet::default()),
            resident_count: AtomicUsize::new(0),
            arriving: RwLock::new(HashMap::default()),
            arriving_count: AtomicUsize::new(0),
            fences: OnceLock::new(),
            moves: OnceLock::new(),
            standbys: OnceLock::new(),
            tree: OnceLock::new(),
        })
    }

    /// Whether this runtime answers for `to`: an address of this node, or
    /// one of another node's reactors that moved here.
    #[inline]
    pub(crate) fn hosts(&self, to: Address) -> bool {
        to.node() == self.refs.node() || self.hosts_foreign(to)
    }

    /// Whether `to`, an address naming another node, moved here.
    #[inline]
    pub(crate) fn hosts_foreign(&self, to: Address) -> bool {
        self.resident_count.load(Ordering::Acquire) != 0
            && self.residents.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&to)
    }

    fn arrival(&self, to: Address) -> Option<Arc<Arrival>> {
        if self.arriving_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.arriving.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&to).cloned()
    }

    /// If messages from here to `to` go through the transport for now (it
    /// just moved here; see [`Arrival`]): a guard to hold while the
    /// message is handed to the transport.
    #[inline]
    pub(crate) fn routed_send(&self, to: Address) -> Option<RoutedSend<'_>> {
        if self.arriving_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = self.arriving.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let a = map.get(&to)?;
        // Counted under the map's lock: the entry cannot go meanwhile.
        a.sending.fetch_add(1, Ordering::SeqCst);
        let a = a.clone();
        drop(map);
        let guard = RoutedSend { port: self, to, arrival: a };
        guard.arrival.routed.load(Ordering::SeqCst).then_some(guard)
    }

    /// A message for `to` is about to enter its shard's command ring from
    /// the transport: counted while `to` is arriving (true: call
    /// [`HostPort::ring_done`] once it is queued or given up).
    pub(crate) fn ring_enter(&self, to: Address) -> bool {
        let Some(a) = self.arrival(to) else { return false };
        a.in_ring.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// A message counted by [`HostPort::ring_enter`] left the ring.
    pub(crate) fn ring_done(&self, to: Address) {
        if let Some(a) = self.arrival(to) {
            a.in_ring.fetch_sub(1, Ordering::SeqCst);
            self.retire(to);
        }
    }

    /// Whether a message for `to` that did not come through the command
    /// ring must wait: messages that did (sent before it) are still in the
    /// ring.
    #[inline]
    pub(crate) fn ring_pending(&self, to: Address) -> bool {
        self.arrival(to).is_some_and(|a| a.in_ring.load(Ordering::SeqCst) > 0)
    }

    /// Marks `address` arriving (true) or arrived (false).
    pub(crate) fn set_arriving(&self, address: Address, arriving: bool) {
        if arriving {
            let mut map = self.arriving.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&address) {
                Some(a) => a.routed.store(true, Ordering::SeqCst),
                None => {
                    map.insert(address, Arc::new(Arrival { routed: AtomicBool::new(true), ..Arrival::default() }));
                    self.arriving_count.fetch_add(1, Ordering::Release);
                }
            }
            return;
        }
        if let Some(a) = self.arrival(address) {
            a.routed.store(false, Ordering::SeqCst);
            self.retire(address);
        }
    }

    /// Forgets `address`'s arrival once nothing of it is in flight.
    fn retire(&self, address: Address) {
        let mut map = self.arriving.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&address).is_some_and(|a| a.settled()) {
            map.remove(&address);
            self.arriving_count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Answers for `address` (of another node) from now on.
    pub(crate) fn adopt(&self, address: Address) {
        if address.node() == self.refs.node() {
            return;
        }
        let mut r = self.residents.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.insert(address) {
            self.resident_count.fetch_add(1, Ordering::Release);
        }
    }

    /// No longer answers for `address` (of another node).
    pub(crate) fn disown(&self, address: Address) {
        let mut r = self.residents.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.remove(&address) {
            self.resident_count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Sets who is told of fences; false if set already.
    pub(crate) fn set_fence_handler(&self, f: FenceHandler) -> bool {
        self.fences.set(Fences(f)).is_ok()
    }

    /// Sets who is told of reactors asking to be moved; false if set already.
    pub(crate) fn set_move_handler(&self, f: MoveHandler) -> bool {
        self.moves.set(Moves(f)).is_ok()
    }

    /// Sets who is told of reactors spawned at level `Standby` by reactors;
    /// false if set already.
    pub(crate) fn set_standby_handler(&self, f: StandbyHandler) -> bool {
        self.standbys.set(Standbys(f)).is_ok()
    }

    /// Sets who keeps the supervision tree; false if set already.
    pub(crate) fn set_tree_handler(&self, f: crate::tree::TreeHandler) -> bool {
        self.tree.set(Tree(f)).is_ok()
    }

    /// Tells the tree's keeper of `event`; false if there is none.
    pub(crate) fn tree(&self, event: crate::tree::TreeEvent) -> bool {
        match self.tree.get() {
            Some(Tree(f)) => {
                f(event);
                true
            }
            None => false,
        }
    }

    /// A reactor spawned `address` at level `Standby`: tell the handler
    /// (none: a runtime without a node, whose output waits for a standby
    /// that never comes).
    pub(crate) fn standby_spawned(&self, address: Address) {
        match self.standbys.get() {
            Some(Standbys(f)) => f(address),
            None => tracing::warn!(reactor = %address, "{address} was spawned at level standby, but this host has no other nodes: what it sends waits"),
        }
    }

    /// `me` asks to be moved near `peer`: tell the handler (ignored if none:
    /// a runtime without a node cannot move anything).
    pub(crate) fn move_near(&self, me: Address, peer: Address) {
        if let Some(Moves(f)) = self.moves.get() {
            f(me, peer);
        }
    }

    /// A fence reached the reactor `to`: tell the handler (dropped if none).
    pub(crate) fn fence(&self, to: Address, env: Envelope) {
        if let Some(Fences(f)) = self.fences.get() {
            f(to, env);
        }
    }

    /// Sets the way to other nodes; false if one was set already.
    pub(crate) fn set_remote(&self, out: Arc<dyn Outbound>) -> bool {
        self.remote.set(out).is_ok()
    }

    /// The way to other nodes, if this runtime is part of a cluster.
    pub(crate) fn remote(&self) -> Option<&Arc<dyn Outbound>> {
        self.remote.get()
    }


    /// A fresh correlation id for a request from outside, from the node's
    /// tag space like the shards' (unique across restarts).
    pub(crate) fn next_corr(&self) -> Result<u64, RefsError> {
        let mut local = self.corr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refs.corr(&mut local)
    }

    /// Registers a request from outside to `target`.
    pub(crate) fn register(&self, corr: u64, target: Address) -> ReplySlot {
        let slot = Completion::new();
        self.pending.lock().unwrap().insert(corr, (target, slot.clone()));
        slot
    }

    /// Forgets a request nobody waits for any more.
    pub(crate) fn forget(&self, corr: u64) {
        self.pending.lock().unwrap().remove(&corr);
    }

    /// Delivers an answer the host itself found (an error); false if no
    /// such request is waiting.
    pub(crate) fn answer(&self, corr: u64, result: Result<Reply, CallError>) -> bool {
        let entry = self.pending.lock().unwrap().remove(&corr);
        match entry {
            Some((_, slot)) => slot.complete(result),
            None => false,
        }
    }

    /// Delivers a reply; false (and nothing changes) unless a request with
    /// that correlation id is waiting on the reply's sender: a reactor
    /// cannot answer a request that went to another.
    pub(crate) fn answer_reply(&self, corr: u64, reply: Reply) -> bool {
        let slot = {
            let mut pending = self.pending.lock().unwrap();
            match pending.get(&corr) {
                Some((target, _)) if *target == reply.from => pending.remove(&corr).map(|(_, slot)| slot),
                _ => None,
            }
        };
        // An error reply is the caller's error: the request failed.
        let answer = match reply.error_text() {
            Some(why) => Err(CallError::Refused(reply.from, why)),
            None => Ok(reply),
        };
        slot.is_some_and(|s| s.complete(answer))
    }

    /// Answers every request waiting on `target` with `err`.
    pub(crate) fn fail_target(&self, target: Address, err: impl Fn() -> CallError) {
        self.fail_where(|t| t == target, |_| err());
    }

    /// Answers every request waiting on a target that `which` picks.
    pub(crate) fn fail_where(&self, which: impl Fn(Address) -> bool, err: impl Fn(Address) -> CallError) {
        let slots: Vec<(Address, ReplySlot)> = {
            let mut pending = self.pending.lock().unwrap();
            let corrs: Vec<u64> = pending.iter().filter(|(_, (t, _))| which(*t)).map(|(c, _)| *c).collect();
            corrs.into_iter().filter_map(|c| pending.remove(&c)).collect()
        };
        for (t, s) in slots {
            s.complete(Err(err(t)));
        }
    }

    /// Queues a one-way message to the outside world; false when the
    /// mailbox holds its capacity in messages or bytes, or the node's byte
    /// budget has no room.
    pub(crate) fn post(&self, env: Envelope) -> bool {
        let cost = env.payload.len() + 64;
        let mut m = self.messages.lock().unwrap();
        if m.0.len() >= self.capacity
            || m.1.saturating_add(cost) > self.byte_capacity
            || !self.refs.budget().try_charge(cost)
        {
            return false;
        }
        m.0.push_back(env);
        m.1 += cost;
        true
    }

    pub(crate) fn drain_messages(&self) -> Vec<Envelope> {
        let mut m = self.messages.lock().unwrap();
        self.refs.budget().release(std::mem::take(&mut m.1));
        m.0.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_delivers_once_across_threads() {
        let c: Arc<Completion<u32>> = Completion::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait(None));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(c.complete(7));
        assert!(!c.complete(8));
        assert_eq!(t.join().unwrap(), Some(7));
    }

    #[test]
    fn a_dropped_promise_releases_its_waiter() {
        let (p, c) = Promise::<u32>::new();
        let t = std::thread::spawn(move || c.wait(None));
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(p);
        assert_eq!(t.join().unwrap(), None);
        let (p, c) = Promise::<u32>::new();
        p.fulfil(3);
        assert_eq!(c.wait(None), Some(3));
    }

    #[test]
    fn only_the_reactor_asked_can_answer() {
        let port = HostPort::new(4, 1 << 20, Arc::new(Refs::ephemeral()));
        let target = Address::new(0, 0, 5);
        let slot = port.register(9, target);
        let reply = |from, p: &[u8]| Reply { from, payload: p.to_vec(), text: false, error: false };
        assert!(!port.answer_reply(9, reply(Address::new(0, 0, 6), b"forged")));
        assert!(!slot.is_done());
        assert!(port.answer_reply(9, reply(target, b"real")));
        assert_eq!(slot.take().unwrap().unwrap().payload, b"real");
        assert!(!port.answer_reply(9, reply(target, b"again")));
        // An error reply answers with the error.
        let slot = port.register(10, target);
        assert!(port.answer_reply(10, Reply { error: true, ..reply(target, b"undecodable request: x") }));
        assert_eq!(slot.take().unwrap(), Err(CallError::Refused(target, "undecodable request: x".into())));
    }

    #[test]
    fn the_mailbox_is_bounded_in_messages_and_bytes() {
        let refs = Arc::new(Refs::ephemeral());
        let port = HostPort::new(3, 1000, refs.clone());
        let env = |n: usize| Envelope { kind: 1, flags: 0, from: Address(1), corr: 0, payload: vec![0; n] };
        assert!(port.post(env(400)));
        assert!(!port.post(env(500)), "over 1000 bytes");
        assert!(port.post(env(10)));
        assert!(port.post(env(10)));
        assert!(!port.post(env(0)), "over 3 messages");
        assert_eq!(refs.budget().used(), 400 + 10 + 10 + 3 * 64);
        assert_eq!(port.drain_messages().len(), 3);
        assert_eq!(refs.budget().used(), 0);
    }

    /// The arrival protocol under real threads: senders pick the transport
    /// path (counted into the "command ring") while the reactor is
    /// arriving and the straight path after; a "shard" hands in the ring,
    /// keeps straight messages back while counted ones are in the ring,
    /// and settles them after. Every sender's messages come out in order,
    /// whenever the switch happens, and the entry goes once all is through.
    #[test]
    fn senders_switching_paths_keep_their_order() {
        use std::sync::atomic::AtomicBool;
        for round in 0..20u64 {
            let port = HostPort::new(4, 1 << 20, Arc::new(Refs::ephemeral()));
            let to = Address::new(0, 0, 5);
            port.set_arriving(to, true);
            let ring: Arc<Mutex<VecDeque<(u64, u64, bool)>>> = Arc::default();
            let links: Arc<Mutex<VecDeque<(u64, u64)>>> = Arc::default();
            let done = Arc::new(AtomicBool::new(false));
            const SENDERS: u64 = 3;
            const EACH: u64 = 3000;
            let shard = {
                let (port, ring, links, done) = (port.clone(), ring.clone(), links.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut out: Vec<(u64, u64)> = Vec::new();
                    let mut waiting: VecDeque<(u64, u64)> = VecDeque::new();
                    let mut batch = 1 + round as usize % 7;
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        // 1. The command ring, a batch at a time.
                        for _ in 0..batch {
                            let Some((s, i, counted)) = ring.lock().unwrap().pop_front() else { break };
                            out.push((s, i));
                            if counted {
                                port.ring_done(to);
                            }
                        }
                        // Then what was kept back, if the ring is clear of
                        // counted messages.
                        if !port.ring_pending(to) {
                            out.extend(waiting.drain(..));
                        }
                        // 2. Straight messages: kept back behind the ring.
                        for _ in 0..batch {
                            let Some(m) = links.lock().unwrap().pop_front() else { break };
                            if !waiting.is_empty() || port.ring_pending(to) {
                                waiting.push_back(m);
                            } else {
                                out.push(m);
                            }
                        }
                        batch = batch % 13 + 1;
                        if finished && ring.lock().unwrap().is_empty() && links.lock().unwrap().is_empty() {
                            assert!(!port.ring_pending(to));
                            out.extend(waiting.drain(..));
                            return out;
                        }
                    }
                })
            };
            let senders: Vec<_> = (0..SENDERS)
                .map(|s| {
                    let (port, ring, links) = (port.clone(), ring.clone(), links.clone());
                    std::thread::spawn(move || {
                        for i in 0..EACH {
                            match port.routed_send(to) {
                                Some(g) => {
                                    let counted = port.ring_enter(to);
                                    ring.lock().unwrap().push_back((s, i, counted));
                                    drop(g);
                                }
                                None => links.lock().unwrap().push_back((s, i)),
                            }
                            if i % 64 == 0 {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            // The switch, somewhere in the middle.
            std::thread::sleep(std::time::Duration::from_micros(50 + round * 37));
            port.set_arriving(to, false);
            for t in senders {
                t.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
            let out = shard.join().unwrap();
            assert_eq!(out.len() as u64, SENDERS * EACH);
            for s in 0..SENDERS {
                let seqs: Vec<u64> = out.iter().filter(|m| m.0 == s).map(|m| m.1).collect();
                assert!(seqs.iter().copied().eq(0..EACH), "round {round}: sender {s} out of order");
            }
            assert_eq!(port.arriving_count.load(Ordering::SeqCst), 0, "round {round}: the arrival is forgotten");
            assert!(port.routed_send(to).is_none());
        }
    }

    #[test]
    fn wait_times_out() {
        let c: Arc<Completion<u32>> = Completion::new();
        assert_eq!(c.wait(Some(Instant::now() + std::time::Duration::from_millis(5))), None);
    }
}
