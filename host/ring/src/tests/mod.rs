//! Tests with real threads (the loom models are in `loom_tests`): unit
//! tests of each operation, property tests against a `VecDeque` model, and
//! multi-threaded stress tests.
#![forbid(unsafe_code)]

mod model;
mod stress;
mod unit;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A value that counts live instances, to check that a ring drops every
/// value it holds exactly once.
#[derive(Debug)]
pub(super) struct Tracked {
    pub(super) value: u64,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    pub(super) fn new(value: u64, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        Self { value, live: live.clone() }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let before = self.live.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "a value was dropped twice");
    }
}

pub(super) fn live_count() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}
