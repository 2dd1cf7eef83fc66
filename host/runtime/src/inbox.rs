//! A reactor's inbox: bounded, first in first out, with explicit
//! backpressure (a full inbox refuses and gives the message back; it never
//! drops one silently and never grows without bound).
//!
//! Shard-local: only its shard's thread touches it, so it needs no atomics,
//! and it grows on demand up to its bound, so 100,000 idle reactors
//! preallocate nothing. What crosses threads goes through `reactor-ring`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// The inbox was full; here is the message back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full<T>(pub(crate) T);

#[derive(Debug)]
pub(crate) struct Inbox<T> {
    queue: VecDeque<T>,
    capacity: usize,
    /// True while the reactor is on its shard's ready queue.
    scheduled: bool,
}

impl<T> Inbox<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { queue: VecDeque::new(), capacity: capacity.max(1), scheduled: false }
    }

    /// Adds a message unless the inbox holds `capacity` already.
    pub(crate) fn try_push(&mut self, item: T) -> Result<(), Full<T>> {
        if self.queue.len() >= self.capacity {
            return Err(Full(item));
        }
        self.queue.push_back(item);
        Ok(())
    }

    /// Adds a message even past the capacity. Only for replies: the
    /// requester bounded them itself by how many requests it made.
    pub(crate) fn push_reply(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// Marks the inbox as on the ready queue; true if it was not already
    /// (the caller then queues it).
    pub(crate) fn schedule(&mut self) -> bool {
        !std::mem::replace(&mut self.scheduled, true)
    }

    /// Marks the inbox as off the ready queue.
    pub(crate) fn unschedule(&mut self) {
        self.scheduled = false;
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.queue.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The queued items, oldest first, without removing them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_with_backpressure() {
        let mut i = Inbox::new(2);
        assert!(i.try_push(1).is_ok());
        assert!(i.try_push(2).is_ok());
        assert_eq!(i.try_push(3), Err(Full(3)));
        i.push_reply(4);
        assert_eq!(i.len(), 3);
        assert_eq!(i.pop(), Some(1));
        assert_eq!(i.pop(), Some(2));
        assert_eq!(i.pop(), Some(4));
        assert!(i.is_empty());
    }

    #[test]
    fn scheduling_is_reported_once() {
        let mut i: Inbox<u8> = Inbox::new(1);
        assert!(i.schedule());
        assert!(!i.schedule());
        i.unschedule();
        assert!(i.schedule());
    }
}
