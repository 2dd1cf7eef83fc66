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
    /// come back.
    arriving: RwLock<HashSet<Address>>,
    arriving_count: AtomicUsize,
    /// Who is told of a fence that reached the reactor it was sent to.
    fences: OnceLock<Fences>,
    /// Who is told of a reactor asking to be moved.
    moves: OnceLock<Moves>,
}

/// Told of a reactor (the first address) asking to be moved to the node
/// where another (the second) lives.
pub type MoveHandler = Box<dyn Fn(Address, Address) + Send + Sync>;

/// The move handler, in a wrapper that can be debug-printed.
struct Moves(MoveHandler);

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
            arriving: RwLock::new(HashSet::default()),
            arriving_count: AtomicUsize::new(0),
            fences: OnceLock::new(),
            moves: OnceLock::new(),
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

    /// Whether messages from here to `to` go through the transport for
    /// now (it just moved here; see `arriving`).
    #[inline]
    pub(crate) fn is_arriving(&self, to: Address) -> bool {
        self.arriving_count.load(Ordering::Acquire) != 0
            && self.arriving.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&to)
    }

    /// Marks `address` arriving (true) or arrived (false).
    pub(crate) fn set_arriving(&self, address: Address, arriving: bool) {
        let mut a = self.arriving.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if arriving && a.insert(address) {
            self.arriving_count.fetch_add(1, Ordering::Release);
        } else if !arriving && a.remove(&address) {
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
        slot.is_some_and(|s| s.complete(Ok(reply)))
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
        let reply = |from, p: &[u8]| Reply { from, payload: p.to_vec(), text: false };
        assert!(!port.answer_reply(9, reply(Address::new(0, 0, 6), b"forged")));
        assert!(!slot.is_done());
        assert!(port.answer_reply(9, reply(target, b"real")));
        assert_eq!(slot.take().unwrap().unwrap().payload, b"real");
        assert!(!port.answer_reply(9, reply(target, b"again")));
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

    #[test]
    fn wait_times_out() {
        let c: Arc<Completion<u32>> = Completion::new();
        assert_eq!(c.wait(Some(Instant::now() + std::time::Duration::from_millis(5))), None);
    }
}
