//! The example reactors of `guests/` (`counter`, `kv`, `pingpong`,
//! `faulty`, `pager`, and the migration benchmark's `migrant` — a state of
//! real pages dirtied at a set rate, its own view of downtime, sequence
//! checks — and `loadgen` — a closed-loop sender with a latency
//! histogram), built for `wasm32-wasip1` by this crate's build script so that
//! neither README command needs a step first, and where to find them. Used
//! by the `host` command (module names), the demo, tests and benchmarks.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Directory holding the built `*.wasm` guests.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("REACTOR_GUESTS_DIR"))
}

/// Path of a built guest (`"counter"`, `"kv"`, `"pingpong"`, `"faulty"`, `"pager"`,
/// `"migrant"`, `"loadgen"`).
pub fn path(name: &str) -> PathBuf {
    dir().join(format!("{name}.wasm"))
}

/// Names of the built guests.
pub const ALL: &[&str] = &["counter", "kv", "pingpong", "faulty", "pager", "migrant", "loadgen", "ledger"];
