//! The single-producer single-consumer ring.
//!
//! Two layers: [`Shared`] (the slots and the two published positions) and
//! the two handles, each of which alone advances one position and keeps a
//! cached copy of the other's, so that in the common case an operation
//! touches only its own counter's line and the slot (as rtrb does).
//!
//! Positions are `usize` sequence numbers that only grow (wrapping); a
//! position's slot is `pos & mask`. The producer's `tail` and the consumer's
//! `head` satisfy `tail - head <= capacity` (wrapping), and the slots of
//! `[head, tail)` hold the values in the ring.

use crate::error::{Full, NotEnoughRoom};
use crate::padded::CachePadded;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use crate::sync::{Arc, UnsafeCell};
use std::fmt;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

type Slot<T> = UnsafeCell<MaybeUninit<T>>;

/// Creates a ring of `capacity` slots (rounded up to a power of two, at
/// least 1), all allocated now.
///
/// # Panics
/// If the rounded capacity exceeds `usize::MAX / 4`.
pub fn spsc<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    spsc_starting_at(capacity, 0)
}

/// [`spsc`] whose positions start at `start` instead of 0: tests use it to
/// cross the `usize` wrap-around in a few operations.
pub(crate) fn spsc_starting_at<T>(capacity: usize, start: usize) -> (Producer<T>, Consumer<T>) {
    let cap = crate::ring_capacity(capacity);
    let slots: Box<[Slot<T>]> = (0..cap).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(start)),
        tail: CachePadded(AtomicUsize::new(start)),
        abandoned: AtomicBool::new(false),
        slots,
    });
    // From the whole slice, so the pointer may reach every slot.
    let ptr = NonNull::from(&*shared.slots).cast::<Slot<T>>();
    let producer = Producer { slots: ptr, mask: cap - 1, tail: start, cached_head: start, shared: shared.clone() };
    let consumer = Consumer { slots: ptr, mask: cap - 1, head: start, cached_tail: start, shared };
    (producer, consumer)
}

/// What both handles share.
struct Shared<T> {
    /// Next position the consumer reads. Written only by the consumer,
    /// with `Release`, after it has moved the values before it out of their
    /// slots; the producer reads it with `Acquire` before reusing a slot.
    /// Invariant: `tail - head <= slots.len()` (wrapping).
    head: CachePadded<AtomicUsize>,
    /// Next position the producer writes. Written only by the producer, with
    /// `Release`, after it has written the values before it; the consumer
    /// reads it with `Acquire` before reading a slot.
    tail: CachePadded<AtomicUsize>,
    /// Set when either handle is dropped.
    abandoned: AtomicBool,
    /// Invariant: the slots of positions `[head, tail)` hold initialised
    /// values owned by the ring, all others are uninitialised. Only the
    /// producer touches the slots of `[tail, head + len)`, only the consumer
    /// those of `[head, tail)`. The length is a power of two.
    slots: Box<[Slot<T>]>,
}

// SAFETY: the ring moves `T`s from the producer's thread to the consumer's,
// hence `T: Send`. No `&T` is ever shared between threads (each slot is
// accessed by one side at a time, per the invariant on `slots`, handed over
// by the Release/Acquire pairs on `head` and `tail`), so `T: Sync` is not
// needed.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as for `Send`: shared access goes through atomics, and slot access
// follows the ownership protocol on `slots`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if !std::mem::needs_drop::<T>() {
            return;
        }
        // Both handles are gone (this is the last `Arc`), so these are the
        // final positions, and their writes happen-before this drop.
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        let mask = self.slots.len() - 1;
        let mut pos = head;
        while pos != tail {
            // SAFETY: `pos` is in `[head, tail)`, whose slots hold
            // initialised values (invariant on `slots`); each is dropped
            // once, here, since the ring itself is going away.
            self.slots[pos & mask].with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

/// The sending half of an SPSC ring. `Send`, not `Clone`.
pub struct Producer<T> {
    /// Invariant: points at `shared.slots[0]`, valid for `mask + 1` slots for
    /// as long as `shared` is held.
    slots: NonNull<Slot<T>>,
    /// `shared.slots.len() - 1`.
    mask: usize,
    /// Our position: equal to `shared.tail`, which only we write.
    tail: usize,
    /// A value `shared.head` had: never ahead of it, so
    /// `capacity - (tail - cached_head)` slots are certainly free.
    cached_head: usize,
    shared: Arc<Shared<T>>,
}

// SAFETY: the producer may move to another thread with its `T`s; `slots`
// points into the `Arc`-owned `Shared`, which is `Send + Sync` for `T: Send`.
unsafe impl<T: Send> Send for Producer<T> {}

/// The receiving half of an SPSC ring. `Send`, not `Clone`.
pub struct Consumer<T> {
    /// Invariant: as on [`Producer::slots`].
    slots: NonNull<Slot<T>>,
    mask: usize,
    /// Our position: equal to `shared.head`, which only we write.
    head: usize,
    /// A value `shared.tail` had: never ahead of it, so
    /// `cached_tail - head` values are certainly there.
    cached_tail: usize,
    shared: Arc<Shared<T>>,
}

// SAFETY: as for `Producer`.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Producer<T> {
    #[inline(always)]
    fn slot(&self, pos: usize) -> &Slot<T> {
        // SAFETY: `slots` is valid for `mask + 1` slots while `shared` is
        // held (field invariant), and `pos & mask <= mask`.
        unsafe { self.slots.add(pos & self.mask).as_ref() }
    }

    /// The slots of positions `pos..pos + len`, cut at the end of the
    /// buffer.
    #[inline(always)]
    fn run(&self, pos: usize, len: usize) -> &[Slot<T>] {
        let i = pos & self.mask;
        // SAFETY: `slots` is valid for `mask + 1` slots (field invariant),
        // and `i + min(len, mask + 1 - i)` stays within them.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().add(i), len.min(self.mask + 1 - i)) }
    }

    /// Slots certainly free, without looking at the consumer's counter.
    #[inline(always)]
    fn free_cached(&self) -> usize {
        self.mask + 1 - self.tail.wrapping_sub(self.cached_head)
    }

    /// Slots free now: reads the consumer's counter.
    #[inline]
    fn free_now(&mut self) -> usize {
        self.cached_head = self.shared.head.load(Acquire);
        self.free_cached()
    }

    /// Writes `value` at position `pos`.
    ///
    /// # Safety
    /// `pos` must be in `[tail, cached_head + capacity)`: a free slot, which
    /// only the producer touches until `tail` is published past it.
    #[inline(always)]
    unsafe fn write(&self, pos: usize, value: T) {
        // SAFETY: the caller guarantees the slot is free and ours: it holds
        // no value (nothing to drop) and no one else accesses it.
        self.slot(pos).with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
    }

    /// Makes the values before `tail` visible to the consumer.
    #[inline(always)]
    fn publish(&mut self, tail: usize) {
        self.tail = tail;
        self.shared.tail.store(tail, Release);
    }

    /// Pushes `value`, or gives it back if the ring is full.
    #[inline]
    pub fn try_push(&mut self, value: T) -> Result<(), Full<T>> {
        if self.free_cached() == 0 && self.free_now() == 0 {
            return Err(Full(value));
        }
        let tail = self.tail;
        // SAFETY: at least one slot is free, so `tail` is in
        // `[tail, cached_head + capacity)`.
        unsafe { self.write(tail, value) };
        self.publish(tail.wrapping_add(1));
        Ok(())
    }

    /// Pushes values taken from `items` until it ends or the ring is full,
    /// publishing them all with one store. Returns how many were pushed.
    /// A value is taken from `items` only when there is a slot for it, so
    /// pass `&mut iter` to keep what did not fit.
    #[inline]
    pub fn push_batch<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize {
        let mut items = items.into_iter();
        let want = items.size_hint().1.unwrap_or(usize::MAX);
        let free = if self.free_cached() < want { self.free_now() } else { self.free_cached() };
        let mut chunk = WriteChunk { claimed: free.min(want), written: 0, producer: self };
        chunk.fill(&mut items)
    }

    /// Claims `n` free slots to fill with [`WriteChunk::push`]; what was
    /// written is published with one store when the chunk is dropped (or
    /// [`WriteChunk::publish`]ed). Claims nothing if fewer than `n` are free.
    #[inline]
    pub fn write_chunk(&mut self, n: usize) -> Result<WriteChunk<'_, T>, NotEnoughRoom> {
        let free = if self.free_cached() < n { self.free_now() } else { self.free_cached() };
        if free < n {
            return Err(NotEnoughRoom { requested: n, available: free });
        }
        Ok(WriteChunk { claimed: n, written: 0, producer: self })
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Values in the ring now (the consumer may be taking some).
    pub fn len(&self) -> usize {
        self.tail.wrapping_sub(self.shared.head.load(Acquire))
    }

    /// Whether the ring is empty now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.capacity() - self.len()
    }

    /// Whether the consumer has been dropped: nothing pushed from now on
    /// will be read.
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Acquire)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Release: a consumer that sees the flag also sees the final `tail`.
        self.shared.abandoned.store(true, Release);
    }
}

/// Slots claimed by [`Producer::write_chunk`] or [`Producer::push_batch`].
/// Dropping it publishes the values written so far with one `Release` store
/// (also when unwinding); unwritten claimed slots stay free.
pub struct WriteChunk<'a, T> {
    /// Invariant: `claimed` slots from `producer.tail` on are free.
    claimed: usize,
    /// Invariant: `written <= claimed`; the first `written` claimed slots
    /// hold values.
    written: usize,
    producer: &'a mut Producer<T>,
}

impl<T> WriteChunk<'_, T> {
    /// Writes the next value, or gives it back if the chunk is full.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        if self.written == self.claimed {
            return Err(Full(value));
        }
        let pos = self.producer.tail.wrapping_add(self.written);
        // SAFETY: `written < claimed`, and the claimed slots from `tail` on
        // are free (field invariant).
        unsafe { self.producer.write(pos, value) };
        self.written += 1;
        Ok(())
    }

    /// Writes values from `items` until it ends or the chunk is full; a
    /// value is taken only when there is a slot for it. Returns the number
    /// written by this call.
    #[inline]
    pub fn fill<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize {
        let before = self.written;
        let mut items = items.into_iter();
        let producer: &Producer<T> = self.producer;
        // At most two runs of adjacent slots (before and after the wrap).
        while self.written < self.claimed {
            let run = producer.run(producer.tail.wrapping_add(self.written), self.claimed - self.written);
            let run_start = self.written;
            // `zip` asks `run` first: a value is taken only for a slot.
            for (slot, value) in run.iter().zip(&mut items) {
                // SAFETY: the slot is among the claimed ones not yet written
                // (`written < claimed`), which are free (field invariants).
                slot.with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
                self.written += 1;
            }
            if self.written - run_start < run.len() {
                break; // `items` ended
            }
        }
        self.written - before
    }

    /// Slots claimed.
    pub fn capacity(&self) -> usize {
        self.claimed
    }

    /// Values written so far.
    pub fn len(&self) -> usize {
        self.written
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Publishes what was written (what dropping the chunk does).
    pub fn publish(self) {}
}

impl<T> Drop for WriteChunk<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.written > 0 {
            let tail = self.producer.tail.wrapping_add(self.written);
            self.producer.publish(tail);
        }
    }
}

impl<T> Consumer<T> {
    #[inline(always)]
    fn slot(&self, pos: usize) -> &Slot<T> {
        // SAFETY: as in `Producer::slot`.
        unsafe { self.slots.add(pos & self.mask).as_ref() }
    }

    /// The slots of positions `pos..pos + len`, cut at the end of the
    /// buffer.
    #[inline(always)]
    fn run(&self, pos: usize, len: usize) -> &[Slot<T>] {
        let i = pos & self.mask;
        // SAFETY: as in `Producer::run`.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().add(i), len.min(self.mask + 1 - i)) }
    }

    /// Values certainly there, without looking at the producer's counter.
    #[inline(always)]
    fn ready_cached(&self) -> usize {
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Values there now: reads the producer's counter.
    #[inline]
    fn ready_now(&mut self) -> usize {
        self.cached_tail = self.shared.tail.load(Acquire);
        self.ready_cached()
    }

    /// Moves the value at `pos` out of its slot.
    ///
    /// # Safety
    /// `pos` must be in `[head, cached_tail)` and not read before: its slot
    /// holds a value that only the consumer touches. Afterwards the slot is
    /// logically empty and must be released by publishing `head` past it.
    #[inline(always)]
    unsafe fn read(&self, pos: usize) -> T {
        // SAFETY: the caller guarantees the slot holds an initialised value
        // that is ours to take.
        self.slot(pos).with(|p| unsafe { (*p).assume_init_read() })
    }

    #[inline(always)]
    fn release(&mut self, head: usize) {
        self.head = head;
        self.shared.head.store(head, Release);
    }

    /// Takes the oldest value, if any.
    #[inline]
    pub fn try_pop(&mut self) -> Option<T> {
        if self.ready_cached() == 0 && self.ready_now() == 0 {
            return None;
        }
        let head = self.head;
        // SAFETY: a value is ready, so `head` is in `[head, cached_tail)`.
        let value = unsafe { self.read(head) };
        self.release(head.wrapping_add(1));
        Some(value)
    }

    /// Hands up to `max` values, oldest first, to `f`, then frees their
    /// slots with one `Release` store. Returns how many.
    #[inline]
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let ready = if self.ready_cached() < max { self.ready_now() } else { self.ready_cached() };
        let n = ready.min(max);
        // Frees the slots read so far even if `f` panics: a value moved out
        // is never read (or dropped) again.
        let mut batch = ReadBatch { taken: 0, consumer: self };
        let consumer: &Consumer<T> = batch.consumer;
        // At most two runs of adjacent slots (before and after the wrap).
        while batch.taken < n {
            for slot in consumer.run(consumer.head.wrapping_add(batch.taken), n - batch.taken) {
                // SAFETY: the slot's position is below `head + n <=
                // cached_tail`, so it holds a value that is ours; each is
                // read once (`taken` advances before `f` runs).
                let value = slot.with(|p| unsafe { (*p).assume_init_read() });
                batch.taken += 1;
                f(value);
            }
        }
        n
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Values in the ring now (the producer may be adding some).
    pub fn len(&self) -> usize {
        self.shared.tail.load(Acquire).wrapping_sub(self.head)
    }

    /// Whether the ring is empty now. Reads the producer's counter with
    /// `Acquire`, so it can serve as the re-check of an
    /// [`EventCount`](crate::EventCount) wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the producer has been dropped. Once this is true, an empty
    /// ring stays empty.
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Acquire)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Release);
    }
}

/// Values read by a `pop_batch` so far; releases their slots when dropped.
struct ReadBatch<'a, T> {
    taken: usize,
    consumer: &'a mut Consumer<T>,
}

impl<T> Drop for ReadBatch<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.taken > 0 {
            let head = self.consumer.head.wrapping_add(self.taken);
            self.consumer.release(head);
        }
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("capacity", &self.capacity()).field("tail", &self.tail).finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("capacity", &self.capacity()).field("head", &self.head).finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for WriteChunk<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteChunk").field("claimed", &self.claimed).field("written", &self.written).finish()
    }
}
