//! Page protection for snapshots: write tracking and concurrent
//! copy-on-write capture of linear memories.
//!
//! # Layout
//! - `region`: the shared state (a tracked `Region`, the `PageCopy` in
//!   progress on it, a finished copy's `PageImage`);
//! - `handler`: the `SIGSEGV` handler and everything it runs (the region
//!   table, the page-claiming protocol of a write fault), async-signal-safe;
//! - `copier`: the background copier thread, and `before_move`;
//! - `tracker`: the `Tracker` a reactor owns (arm, settle, release).
//!
//! # The mechanism
//!
//! A *region* is a linear memory the host tracks: one atomic state byte per
//! page, registered in a process-wide table that a `SIGSEGV` handler consults.
//! The handler is installed once, right after the first wasmtime engine
//! exists, and chains to whatever handler was there before (wasmtime's, which
//! chains to Rust's), so faults that are not ours behave exactly as before.
//!
//! Page states:
//! - `CLEAN`: write-protected, unchanged since the last capture;
//! - `DIRTY`: writable, written since the last capture;
//! - `PENDING`: write-protected, must be copied into the capture in progress
//!   before anyone writes it;
//! - `COPYING`: being copied right now (by the copier thread or the handler).
//!
//! A capture is armed at a message boundary, on the reactor's own thread:
//! the pages it covers become `PENDING` and are write-protected, and the
//! reactor goes on at once. A background thread copies `PENDING` pages
//! (`PENDING → COPYING → CLEAN`, leaving them protected). A write to a page
//! still `PENDING` faults; the handler claims the page with the same
//! compare-and-swap, copies it first, unprotects it and marks it `DIRTY`, and
//! the write proceeds. Whoever wins the swap copies the page; the other
//! waits for `COPYING` to end. So the capture holds every page exactly as it
//! was at the boundary, whatever the reactor writes meanwhile.
//!
//! A write to a `CLEAN` page (outside any capture) just unprotects it and
//! marks it `DIRTY`: that is the dirty tracking incremental captures use.
//! A region that is not kept for tracking is unprotected as a whole by the
//! copier once its copy is complete (one `mprotect`, off the reactor's
//! thread, so the kernel merges its mappings again); the reactor only drops
//! the registration at its next boundary. Re-arming a tracked region of the
//! same size turns its states over in place.
//!
//! Zero pages are detected while copying and not stored.
//!
//! # Costs and limits
//! - Arming costs one state byte per page plus one `mprotect` over the
//!   range (the kernel walks the present page-table entries): proportional to
//!   the resident pages, not to a copy.
//! - Each first write to a protected page costs a fault, a page copy (if
//!   pending) and an `mprotect` of that page. Unprotecting single pages
//!   splits the kernel mapping; a whole-range `mprotect` merges it again.
//! - At most [`MAX_REGIONS`] regions are tracked at once; arming more fails
//!   with an error the caller turns into a blocking copy.
//! - A memory that must move (growth past its reserved capacity) while
//!   tracked first finishes any capture in progress on its own thread, then
//!   stops being tracked: the next incremental capture is refused and a full
//!   one is needed.

mod copier;
mod handler;
pub(crate) mod lazy;
mod region;
mod table;
#[cfg(test)]
mod tests;
mod tracker;

pub(crate) use copier::before_move;
pub(crate) use handler::install_handler;
pub(crate) use region::PageCopy;
pub(crate) use tracker::{ArmError, Cover, Tracker};
