//! The example reactors built from `guests/` by the build script.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Directory holding the built `*.wasm` guests.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("REACTOR_GUESTS_DIR"))
}

/// Path of a built guest (`"counter"`, `"kv"`, `"pingpong"`, `"faulty"`).
pub fn path(name: &str) -> PathBuf {
    dir().join(format!("{name}.wasm"))
}

/// Names of the built guests.
pub const ALL: &[&str] = &["counter", "kv", "pingpong", "faulty"];
