//! The rings between shards: one single-producer ring per ordered pair of
//! shards, so a reactor on shard A sending to one on shard B pushes onto
//! ring A→B and B drains it into the destination's inbox. A shard wakes the
//! shards it pushed to once per reactor batch, not per message.
//!
//! Backpressure: a full pair ring refuses the send
//! ([`SendError::InboxFull`]); a message whose destination inbox is full
//! stays at the head of its ring until there is room, so backpressure
//! reaches the senders instead of anything being dropped.
#![forbid(unsafe_code)]

use reactor_ring::{Consumer, EventCount, Producer};
use reactor_types::{Address, Envelope, SendError};
use std::sync::Arc;

/// A message crossing from one shard to another.
#[derive(Debug)]
struct Routed {
    to: Address,
    env: Envelope,
}

/// The consumer end of one pair ring, and the message at its head that
/// could not be delivered yet.
struct InboundRing {
    rx: Consumer<Routed>,
    /// A message whose destination inbox was full: retried before the ring.
    held: Option<Routed>,
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Messages taken off the rings (delivered or dead).
    pub(crate) moved: usize,
    /// Of those, messages for an address with no reactor.
    pub(crate) dead: usize,
}

/// A shard's ends of the shard-to-shard rings.
pub(crate) struct Links {
    /// Producer ends, indexed by destination shard (`None` for this shard).
    out: Vec<Option<Producer<Routed>>>,
    inbound: Vec<InboundRing>,
    wakes: Arc<Vec<Arc<EventCount>>>,
    /// Shards pushed to but not yet woken.
    unnotified: Vec<bool>,
}

impl Links {
    /// The links of `n` shards, all pairs connected by rings of
    /// `capacity`, and the event counts the shards park on (shard `i`
    /// waits on `wakes[i]`).
    pub(crate) fn mesh(n: usize, capacity: usize) -> (Vec<Links>, Arc<Vec<Arc<EventCount>>>) {
        let wakes: Arc<Vec<Arc<EventCount>>> = Arc::new((0..n).map(|_| Arc::new(EventCount::new())).collect());
        // rings[from][to]
        let mut producers: Vec<Vec<Option<Producer<Routed>>>> = (0..n).map(|_| Vec::new()).collect();
        let mut consumers: Vec<Vec<InboundRing>> = (0..n).map(|_| Vec::new()).collect();
        for (from, row) in producers.iter_mut().enumerate() {
            for (to, inbound) in consumers.iter_mut().enumerate() {
                if from == to {
                    row.push(None);
                } else {
                    let (tx, rx) = reactor_ring::spsc(capacity);
                    row.push(Some(tx));
                    inbound.push(InboundRing { rx, held: None });
                }
            }
        }
        let links = producers
            .into_iter()
            .zip(consumers)
            .map(|(out, inbound)| Links { out, inbound, wakes: wakes.clone(), unnotified: vec![false; n] })
            .collect();
        (links, wakes)
    }

    /// Pushes a message for a reactor on another shard.
    pub(crate) fn send(&mut self, to: Address, env: Envelope) -> Result<(), SendError> {
        // Modulo: an address from a runtime with more shards still routes.
        let shard = to.shard() % self.out.len();
        let Some(Some(tx)) = self.out.get_mut(shard) else { return Err(SendError::NoSuchReactor(to)) };
        match tx.try_push(Routed { to, env }) {
            Ok(()) => {
                // Woken in `flush`, once per batch rather than per message.
                self.unnotified[shard] = true;
                Ok(())
            }
            Err(_) => {
                // A full ring: make sure its consumer is awake to drain it.
                self.wakes[shard].notify();
                Err(SendError::InboxFull(to))
            }
        }
    }

    /// Number of shards in the runtime.
    pub(crate) fn shards(&self) -> usize {
        self.out.len()
    }

    /// Wakes every shard this one pushed to since the last flush.
    pub(crate) fn flush(&mut self) {
        for (shard, pending) in self.unnotified.iter_mut().enumerate() {
            if std::mem::take(pending) {
                self.wakes[shard].notify();
            }
        }
    }

    /// Whether a message waits on an inbound ring.
    pub(crate) fn has_inbound(&self) -> bool {
        self.inbound.iter().any(|i| i.held.is_some() || !i.rx.is_empty())
    }

    /// Moves up to `budget` messages off the inbound rings through
    /// `deliver`. A message `deliver` gives back as `InboxFull` stays at
    /// the head of its ring; one refused otherwise is dead (actor
    /// semantics: a send to an address with no reactor is not the sender's
    /// error) and counted.
    pub(crate) fn drain(
        &mut self,
        budget: usize,
        mut deliver: impl FnMut(Address, Envelope) -> Result<(), (SendError, Envelope)>,
    ) -> Drained {
        let mut d = Drained::default();
        for ring in &mut self.inbound {
            while d.moved < budget {
                let Some(msg) = ring.held.take().or_else(|| ring.rx.try_pop()) else { break };
                match deliver(msg.to, msg.env) {
                    Ok(()) => d.moved += 1,
                    Err((SendError::InboxFull(_), env)) => {
                        ring.held = Some(Routed { to: msg.to, env });
                        break;
                    }
                    Err(_) => {
                        d.moved += 1;
                        d.dead += 1;
                    }
                }
            }
        }
        d
    }

    /// Moves every message off the inbound rings through `deliver`, which
    /// must take it whatever the inbox's capacity (for a checkpoint: each
    /// message in flight must be recorded with its destination). Returns
    /// how many found no reactor.
    pub(crate) fn drain_all(&mut self, mut deliver: impl FnMut(Address, Envelope) -> Result<(), Envelope>) -> usize {
        let mut dead = 0;
        for ring in &mut self.inbound {
            while let Some(msg) = ring.held.take().or_else(|| ring.rx.try_pop()) {
                if deliver(msg.to, msg.env).is_err() {
                    dead += 1;
                }
            }
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_sdk::abi;

    fn env(n: u8) -> Envelope {
        Envelope { kind: abi::KIND_MESSAGE, flags: 0, from: Address(1), corr: 0, payload: vec![n] }
    }

    #[test]
    fn a_full_inbox_holds_the_head_and_dead_letters_are_counted() {
        let (mut links, _) = Links::mesh(2, 8);
        let to = Address::new(0, 1, 7);
        for n in 0..4 {
            links[0].send(to, env(n)).unwrap();
        }
        let b = &mut links[1];
        assert!(b.has_inbound());
        // The second message finds the inbox full: it stays at the head.
        let mut got = Vec::new();
        let d = b.drain(16, |_, e| {
            if got.len() == 1 {
                return Err((SendError::InboxFull(to), e));
            }
            got.push(e.payload[0]);
            Ok(())
        });
        assert_eq!(d, Drained { moved: 1, dead: 0 });
        assert!(b.has_inbound());
        // Then everything comes in order; an unknown reactor is dead.
        let d = b.drain(16, |_, e| {
            if e.payload[0] == 2 {
                return Err((SendError::NoSuchReactor(to), e));
            }
            got.push(e.payload[0]);
            Ok(())
        });
        assert_eq!(d, Drained { moved: 3, dead: 1 });
        assert_eq!(got, [0, 1, 3]);
        assert!(!b.has_inbound());
    }

    #[test]
    fn a_full_ring_refuses_and_the_budget_bounds_a_drain() {
        let (mut links, _) = Links::mesh(2, 2);
        let to = Address::new(0, 1, 1);
        let mut sent = 0;
        while links[0].send(to, env(sent)).is_ok() {
            sent += 1;
        }
        assert!(sent >= 2);
        assert_eq!(links[0].send(to, env(0)), Err(SendError::InboxFull(to)));
        // Addresses of a bigger runtime route modulo the shard count.
        assert_eq!(links[0].send(Address::new(0, 3, 1), env(0)), Err(SendError::InboxFull(Address::new(0, 3, 1))));
        let d = links[1].drain(1, |_, _| Ok(()));
        assert_eq!(d.moved, 1);
        assert_eq!(links[1].drain_all(|_, _| Ok(())), 0);
        assert!(!links[1].has_inbound());
        assert_eq!(links[0].shards(), 2);
    }
}
