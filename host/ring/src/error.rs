//! What a ring operation that cannot proceed gives back.
#![forbid(unsafe_code)]

use std::fmt;

/// The ring had no free slot: nothing was written, and the value is handed
/// back to the sender (backpressure: a ring never drops and never grows).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that could not be pushed.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the ring is full")
    }
}

impl<T> std::error::Error for Full<T> {}

/// A chunk of `requested` slots could not be claimed: only `available` were
/// free. Nothing was claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotEnoughRoom {
    /// Slots asked for.
    pub requested: usize,
    /// Slots free when the ring was looked at.
    pub available: usize,
}

impl fmt::Display for NotEnoughRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "asked for {} slots, only {} free", self.requested, self.available)
    }
}

impl std::error::Error for NotEnoughRoom {}
