//! A value alone on its cache line(s).
#![forbid(unsafe_code)]

use std::ops::Deref;

/// Keeps `T` on its own 128-byte block, so that a counter written by one
/// thread does not share a line with anything another thread writes.
/// 128 rather than 64: x86 prefetches lines in adjacent pairs, and Apple and
/// some ARM cores have 128-byte lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
