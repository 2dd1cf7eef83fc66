//! The example reactors of `guests/` (`counter`, `kv`, `pingpong`,
//! `faulty`, `pager`, and the migration benchmark's `migrant` — a state of
//! real pages dirtied at a set rate, its own view of downtime, sequence
//! checks — and `loadgen` — a closed-loop sender with a latency
//! histogram), the journal tests' `ledger` and the supervision tests'
//! `overseer`), built for `wasm32-wasip1` by this crate's build script so that
//! neither README command needs a step first, and where to find them. Used
//! by the `host` command (module names), the demo, tests and benchmarks;
//! their bytes are compiled in ([`bytes`]), so an installed `host` needs no
//! build tree.
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
pub const ALL: &[&str] = &["counter", "kv", "pingpong", "faulty", "pager", "migrant", "loadgen", "ledger", "overseer"];

/// The built guests' bytes, compiled into whatever links this crate (about
/// 1.5 MB): a `host` installed anywhere (`cargo install --path host`) runs
/// the demo and spawns them by name with no build tree beside it.
const EMBEDDED: [(&str, &[u8]); 9] = [
    ("counter", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/counter.wasm"))),
    ("kv", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/kv.wasm"))),
    ("pingpong", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/pingpong.wasm"))),
    ("faulty", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/faulty.wasm"))),
    ("pager", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/pager.wasm"))),
    ("migrant", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/migrant.wasm"))),
    ("loadgen", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/loadgen.wasm"))),
    ("ledger", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/ledger.wasm"))),
    ("overseer", include_bytes!(concat!(env!("REACTOR_GUESTS_DIR"), "/overseer.wasm"))),
];

/// The bytes of the built guest `name`, from inside this binary.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_guest_is_embedded_as_built() {
        assert_eq!(super::EMBEDDED.map(|(n, _)| n), super::ALL);
        for name in super::ALL {
            let on_disk = std::fs::read(super::path(name)).unwrap();
            assert_eq!(super::bytes(name).unwrap(), &on_disk[..], "{name}");
        }
        assert!(super::bytes("nope").is_none());
    }
}
