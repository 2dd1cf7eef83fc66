//! The multi-producer single-consumer ring, after the LMAX Disruptor's
//! multi-producer sequencer.
//!
//! Producers claim runs of positions with a compare-and-swap on a shared
//! claim sequence, checking first that the run fits below the consumer's
//! position plus the capacity, so a claim never overshoots and every claimed
//! slot is filled. Each slot carries the position of the value it holds,
//! stored with `Release` once the value is written: the consumer reads
//! positions in order and stops at the first slot not yet published, so a
//! producer that claimed early but writes late holds the consumer up but is
//! never overtaken. The consumer publishes its position once per batch.
//!
//! Layers: [`Shared`] (the slots, the claim sequence and the consumer's
//! position), then the handles: [`MpscProducer`] (cloneable, caches the
//! consumer's position) and [`MpscConsumer`].

use crate::error::Full;
use crate::padded::CachePadded;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use crate::sync::{Arc, UnsafeCell};
use std::fmt;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// One slot: a value and the position it was published for.
struct Slot<T> {
    /// The position of the value in `value` once published (`Release`, by
    /// the producer that claimed it, after writing); otherwise a position a
    /// multiple of the capacity earlier (an older lap, already consumed).
    /// Invariant: `value` is initialised iff `seq` is a position in
    /// `[head, claim)`.
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// Creates a ring of `capacity` slots (rounded up to a power of two, at
/// least 1), all allocated now.
///
/// # Panics
/// If the rounded capacity exceeds `usize::MAX / 4`.
pub fn mpsc<T>(capacity: usize) -> (MpscProducer<T>, MpscConsumer<T>) {
    mpsc_starting_at(capacity, 0)
}

/// [`mpsc`] whose positions start at `start`: tests use it to cross the
/// `usize` wrap-around.
pub(crate) fn mpsc_starting_at<T>(capacity: usize, start: usize) -> (MpscProducer<T>, MpscConsumer<T>) {
    let cap = crate::ring_capacity(capacity);
    let mask = cap - 1;
    // Slot `i` first holds position `p0 = the first position >= start with
    // p0 & mask == i`; mark it as holding the lap before.
    let slots: Box<[Slot<T>]> = (0..cap)
        .map(|i| {
            let p0 = start.wrapping_add(i.wrapping_sub(start) & mask);
            Slot { seq: AtomicUsize::new(p0.wrapping_sub(cap)), value: UnsafeCell::new(MaybeUninit::uninit()) }
        })
        .collect();
    let shared = Arc::new(Shared {
        claim: CachePadded(AtomicUsize::new(start)),
        head: CachePadded(AtomicUsize::new(start)),
        producers: AtomicUsize::new(1),
        consumer_gone: AtomicBool::new(false),
        slots,
    });
    // From the whole slice, so the pointer may reach every slot.
    let ptr = NonNull::from(&*shared.slots).cast::<Slot<T>>();
    let producer = MpscProducer { slots: ptr, mask, cached_head: start, shared: shared.clone() };
    let consumer = MpscConsumer { slots: ptr, mask, head: start, shared };
    (producer, consumer)
}

/// What all handles share.
struct Shared<T> {
    /// Next position a producer claims. Advanced only by compare-and-swap,
    /// by a producer that saw room for the whole run.
    /// Invariant: `claim - head <= slots.len()` (wrapping).
    claim: CachePadded<AtomicUsize>,
    /// Next position the consumer reads. Written only by the consumer, with
    /// `Release`, after moving the values before it out; producers read it
    /// with `Acquire` before claiming slots below `head + capacity`.
    head: CachePadded<AtomicUsize>,
    /// Live producer handles.
    producers: AtomicUsize,
    /// Set when the consumer is dropped.
    consumer_gone: AtomicBool,
    /// Invariant: a slot of a position in `[head, claim)` is touched only by
    /// the producer that claimed it until its `seq` says published, then only
    /// by the consumer; slots of other positions hold no value. The length is
    /// a power of two.
    slots: Box<[Slot<T>]>,
}

// SAFETY: values move from producers' threads to the consumer's (`T: Send`);
// no `&T` is shared between threads, since each slot has one owner at a time
// (invariant on `slots`), handed over through `seq` (producer to consumer)
// and `head` (consumer to producers) with Release/Acquire.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if !std::mem::needs_drop::<T>() {
            return;
        }
        // Every handle is gone, and every claim was published before its
        // `try_push*` returned (nothing between claim and publish can
        // unwind), so `[head, claim)` is exactly the unconsumed values.
        let head = self.head.load(Acquire);
        let claim = self.claim.load(Acquire);
        let mask = self.slots.len() - 1;
        let mut pos = head;
        while pos != claim {
            let slot = &self.slots[pos & mask];
            if slot.seq.load(Acquire) == pos {
                // SAFETY: `pos` is in `[head, claim)` and published, so the
                // slot holds a value (invariant on `Slot::seq`) that nobody
                // else can reach any more; dropped once, here.
                slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            }
            pos = pos.wrapping_add(1);
        }
    }
}

/// A sending half of an MPSC ring: `Clone` (each clone is another producer)
/// and `Send`.
pub struct MpscProducer<T> {
    /// Invariant: points at `shared.slots[0]`, valid for `mask + 1` slots for
    /// as long as `shared` is held.
    slots: NonNull<Slot<T>>,
    /// `shared.slots.len() - 1`.
    mask: usize,
    /// A value `shared.head` had (never ahead of it): positions below
    /// `cached_head + capacity` are certainly consumed-or-free.
    cached_head: usize,
    shared: Arc<Shared<T>>,
}

// SAFETY: see `Shared`; `slots` points into the `Arc`-owned `Shared`.
unsafe impl<T: Send> Send for MpscProducer<T> {}

/// The receiving half of an MPSC ring. `Send`, not `Clone`.
pub struct MpscConsumer<T> {
    /// Invariant: as on [`MpscProducer::slots`].
    slots: NonNull<Slot<T>>,
    mask: usize,
    /// Our position: equal to `shared.head`, which only we write.
    head: usize,
    shared: Arc<Shared<T>>,
}

// SAFETY: as for `MpscProducer`.
unsafe impl<T: Send> Send for MpscConsumer<T> {}

impl<T> Clone for MpscProducer<T> {
    fn clone(&self) -> Self {
        self.shared.producers.fetch_add(1, Relaxed);
        Self { slots: self.slots, mask: self.mask, cached_head: self.cached_head, shared: self.shared.clone() }
    }
}

impl<T> MpscProducer<T> {
    #[inline(always)]
    fn slot(&self, pos: usize) -> &Slot<T> {
        // SAFETY: `slots` is valid for `mask + 1` slots while `shared` is
        // held (field invariant), and `pos & mask <= mask`.
        unsafe { self.slots.add(pos & self.mask).as_ref() }
    }

    /// Claims between 1 and `max` consecutive positions (as many as are
    /// free), returning the first and the count, or `None` if the ring is
    /// full. `max` must be at least 1.
    #[inline]
    fn claim(&mut self, max: usize) -> Option<(usize, usize)> {
        let cap = self.mask + 1;
        let mut pos = self.shared.claim.load(Relaxed);
        loop {
            // Room by our cached view of the consumer. `pos >= cached_head`
            // (the consumer passed `cached_head` only after reading values
            // whose claims happen-before our read of it, so by coherence we
            // see the claim at least that far); should the difference ever
            // look larger than the capacity, `saturating_sub` makes it "no
            // room", so a claim is only ever made below
            // `cached_head + capacity`.
            let mut free = cap.saturating_sub(pos.wrapping_sub(self.cached_head));
            if free < max {
                // Acquire: the consumer's reads of the slots below `head`
                // happen-before our writes to them.
                self.cached_head = self.shared.head.load(Acquire);
                // Re-read after the head, so that `pos >= cached_head`.
                pos = self.shared.claim.load(Relaxed);
                free = cap.saturating_sub(pos.wrapping_sub(self.cached_head));
                if free == 0 {
                    return None;
                }
            }
            let n = free.min(max);
            // Relaxed: the claim only hands out positions; values travel
            // through `Slot::seq` and `head`. Success means `[pos, pos + n)`
            // is ours alone.
            match self.shared.claim.compare_exchange_weak(pos, pos.wrapping_add(n), Relaxed, Relaxed) {
                Ok(_) => return Some((pos, n)),
                Err(now) => pos = now,
            }
        }
    }

    /// Writes `value` into the slot of `pos` and publishes it.
    ///
    /// # Safety
    /// `pos` must have been claimed by this producer and not yet written.
    #[inline(always)]
    unsafe fn write_and_publish(&self, pos: usize, value: T) {
        let slot = self.slot(pos);
        // SAFETY: the caller claimed `pos`, so the slot is ours alone until
        // `seq` is published, and holds no value (the consumer moved the
        // previous lap's out before `head` passed it).
        slot.value.with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        slot.seq.store(pos, Release);
    }

    /// Pushes `value`, or gives it back if the ring is full.
    #[inline]
    pub fn try_push(&mut self, value: T) -> Result<(), Full<T>> {
        let Some((pos, _)) = self.claim(1) else { return Err(Full(value)) };
        // SAFETY: `pos` was just claimed by us.
        unsafe { self.write_and_publish(pos, value) };
        Ok(())
    }

    /// Pushes as many values from the front of `items` as there is room
    /// for, in order, with one claim, and removes them from `items`; what
    /// did not fit stays there. Returns how many were pushed (0: full, or
    /// `items` empty).
    #[inline]
    pub fn try_push_batch(&mut self, items: &mut Vec<T>) -> usize {
        if items.is_empty() {
            return 0;
        }
        let Some((first, n)) = self.claim(items.len()) else { return 0 };
        // Draining cannot panic, so every claimed slot gets its value.
        for (i, value) in items.drain(..n).enumerate() {
            // SAFETY: `first + i` for `i < n` was just claimed by us, and
            // each is written once.
            unsafe { self.write_and_publish(first.wrapping_add(i), value) };
        }
        n
    }

    /// Pushes as many values from the front of `items` as there is room
    /// for, in order, with one claim. Returns how many were pushed (0:
    /// full, or `items` empty); the rest are `items[n..]`.
    #[inline]
    pub fn try_push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy,
    {
        if items.is_empty() {
            return 0;
        }
        let Some((first, n)) = self.claim(items.len()) else { return 0 };
        // Copying cannot panic, so every claimed slot gets its value.
        for (i, &value) in items[..n].iter().enumerate() {
            // SAFETY: `first + i` for `i < n` was just claimed by us, and
            // each is written once.
            unsafe { self.write_and_publish(first.wrapping_add(i), value) };
        }
        n
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Positions claimed and not yet consumed (some may still be being
    /// written).
    pub fn len(&self) -> usize {
        let head = self.shared.head.load(Acquire);
        self.shared.claim.load(Acquire).wrapping_sub(head)
    }

    /// Whether no position is claimed and unconsumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the consumer has been dropped: nothing pushed from now on
    /// will be read.
    pub fn is_abandoned(&self) -> bool {
        self.shared.consumer_gone.load(Acquire)
    }
}

impl<T> Drop for MpscProducer<T> {
    fn drop(&mut self) {
        // Release: the consumer that sees the count reach 0 also sees every
        // producer's last publish.
        self.shared.producers.fetch_sub(1, Release);
    }
}

impl<T> MpscConsumer<T> {
    #[inline(always)]
    fn slot(&self, pos: usize) -> &Slot<T> {
        // SAFETY: as in `MpscProducer::slot`.
        unsafe { self.slots.add(pos & self.mask).as_ref() }
    }

    /// Moves the value at `pos` out if it has been published.
    ///
    /// # Safety
    /// `pos` must be in `[head, head + capacity)` and not read before in
    /// this batch; afterwards its slot must be released by publishing `head`
    /// past it.
    #[inline(always)]
    unsafe fn take(&self, pos: usize) -> Option<T> {
        let slot = self.slot(pos);
        if slot.seq.load(Acquire) != pos {
            return None;
        }
        // SAFETY: published for `pos` (Acquire pairs with the producer's
        // Release), so the slot holds that value and is ours until `head`
        // moves past it.
        Some(slot.value.with(|p| unsafe { (*p).assume_init_read() }))
    }

    #[inline(always)]
    fn release(&mut self, head: usize) {
        self.head = head;
        self.shared.head.store(head, Release);
    }

    /// Takes the oldest value, if it has been published.
    #[inline]
    pub fn try_pop(&mut self) -> Option<T> {
        let head = self.head;
        // SAFETY: `head` is our position, not read yet.
        let value = unsafe { self.take(head) }?;
        self.release(head.wrapping_add(1));
        Some(value)
    }

    /// Hands up to `max` published values, in position order, to `f`, then
    /// frees their slots with one `Release` store. Stops at the first slot
    /// not yet published. Returns how many.
    #[inline]
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        // Releases the slots read so far even if `f` panics.
        let mut batch = ReadBatch { taken: 0, consumer: self };
        while batch.taken < max {
            let pos = batch.consumer.head.wrapping_add(batch.taken);
            // SAFETY: positions `head + taken` are read once each, and stay
            // below `head + capacity`: a position that far is not published
            // before `head` is released past the slot it shares.
            let Some(value) = (unsafe { batch.consumer.take(pos) }) else { break };
            batch.taken += 1;
            f(value);
        }
        batch.taken
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Positions claimed by producers and not yet consumed (some may still
    /// be being written).
    pub fn len(&self) -> usize {
        self.shared.claim.load(Acquire).wrapping_sub(self.head)
    }

    /// Whether the next value has not been published yet. Reads its slot's
    /// sequence with `Acquire`, so it can serve as the re-check of an
    /// [`EventCount`](crate::EventCount) wait.
    pub fn is_empty(&self) -> bool {
        self.slot(self.head).seq.load(Acquire) != self.head
    }

    /// Whether every producer has been dropped. Once this is true, an empty
    /// ring stays empty.
    pub fn is_abandoned(&self) -> bool {
        self.shared.producers.load(Acquire) == 0
    }
}

impl<T> Drop for MpscConsumer<T> {
    fn drop(&mut self) {
        self.shared.consumer_gone.store(true, Release);
    }
}

/// Values read by a `pop_batch` so far; releases their slots when dropped.
struct ReadBatch<'a, T> {
    taken: usize,
    consumer: &'a mut MpscConsumer<T>,
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

impl<T> fmt::Debug for MpscProducer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpscProducer").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for MpscConsumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpscConsumer").field("capacity", &self.capacity()).field("head", &self.head).finish_non_exhaustive()
    }
}
