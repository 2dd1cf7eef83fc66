//! Integration tests of the host against the real guests in `guests/`.

mod util;
mod nodes;

mod faulty;
mod bad_modules;
mod guests;
mod shard;
mod runtime;
mod cli;
mod refs;
mod snapshot;
mod hostile_files;
mod cluster;
mod hostile_local;
mod hostile_guests;
mod hostile_peers;
mod durable;
mod migrate;
mod live_migration;
mod journal;
mod load_guests;
mod failover;
mod supervision;
mod new_crate;
mod web_view;
