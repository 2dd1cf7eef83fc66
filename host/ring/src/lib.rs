//! Disruptor-style bounded ring buffers: the native messaging core of the
//! reactor host (inboxes, cross-shard rings, the network's hand-off into
//! shards).
//!
//! Every ring is preallocated with a power-of-two number of slots, indexed by
//! ever-growing (wrapping) positions masked to a slot — no modulo, no locks.
//! Each side's position lives on its own cache line, and each side caches the
//! other's so that it reads the shared line only when its cached view says
//! "full" or "empty". Capacity is a hard bound: a full ring hands the value
//! back ([`Full`]); it never blocks, drops or grows. Both sides work in
//! batches: a producer can claim many slots and publish them with one store,
//! a consumer drains many values and frees their slots with one store.
//!
//! Waiting is separate from the rings: [`Backoff`] spins a bounded number of
//! times, then yields, then says "park", and [`EventCount`] parks a thread
//! until another notifies it, without lost wake-ups; a notify costs a fence
//! and a load when nobody sleeps, so senders call it once per batch.
//!
//! # Layout
//! - `spsc` — [`spsc`]: one producer, one consumer ([`Producer`],
//!   [`Consumer`], [`WriteChunk`]).
//! - `mpsc` — [`mpsc`]: cloneable producers claiming slots with a
//!   compare-and-swap, per-slot publish sequences ([`MpscProducer`],
//!   [`MpscConsumer`]).
//! - `wait` — [`Backoff`], [`EventCount`] and its [`Waiter`].
//! - `error` — [`Full`], [`NotEnoughRoom`].
//! - `padded` — the 128-byte-aligned wrapper that keeps counters apart.
//! - `sync` — the loom shim: `std` normally, `loom` under `--cfg loom`
//!   (`RUSTFLAGS="--cfg loom" cargo test -p reactor-ring --lib` runs the
//!   model checks; `tests/loom.rs` does that as part of the normal suite).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
mod mpsc;
mod padded;
mod spsc;
mod sync;
mod wait;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

pub use error::{Full, NotEnoughRoom};
pub use mpsc::{MpscConsumer, MpscProducer, mpsc};
pub use spsc::{Consumer, Producer, WriteChunk, spsc};
pub use wait::{Backoff, EventCount, Waiter};

/// The capacity a ring gets for a requested one: the next power of two, at
/// least 1, so that a position maps to its slot with a mask.
///
/// # Panics
/// If that power of two exceeds `usize::MAX / 4` (positions are compared
/// with wrapping arithmetic, which needs headroom).
pub(crate) fn ring_capacity(requested: usize) -> usize {
    let cap = requested.max(1).checked_next_power_of_two().expect("ring capacity overflows usize");
    assert!(cap <= usize::MAX / 4, "ring capacity {requested} is too large");
    cap
}
