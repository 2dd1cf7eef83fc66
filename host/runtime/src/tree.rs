//! The supervision tree's events: what reactors declare through their host
//! calls (`supervise`, `watch`, `trap_exits`) and what the shards see
//! happen (a journaled child spawned, a reactor gone for good), handed to
//! whoever keeps the tree (the node's supervisor) through the port. The
//! runtime keeps none of it: a bare runtime has no supervisor, and the
//! calls answer `STATUS_UNSUPPORTED` there.
#![forbid(unsafe_code)]

use crate::journal::Level;
use reactor_types::{Address, ModuleHash};
use std::time::Duration;

/// Which members of a group restart when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

/// Where a restarted member starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartFrom {
    /// Its last snapshot and journal.
    Resume,
    /// Its spawn, with its init argument again.
    Fresh,
}

/// How a reactor supervises the children it spawns durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupSpec {
    pub strategy: Strategy,
    pub restart: RestartFrom,
    pub max_restarts: u32,
    pub within: Duration,
    pub backoff: Duration,
    pub attempts: u32,
}

/// What a `watch` call asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOp {
    Monitor,
    Demonitor,
    Link,
    Unlink,
}

/// One event for the tree's keeper.
#[derive(Debug, Clone)]
pub enum TreeEvent {
    /// `parent` supervises its durable children by `spec` from now on.
    Supervise { parent: Address, spec: GroupSpec },
    /// `parent` spawned `child`, journaled at `level`, from `module` with
    /// `init` (its flags `flags`): a member of `parent`'s group.
    Spawned { parent: Address, child: Address, module: ModuleHash, init: Vec<u8>, flags: u8, level: Level },
    Watch { me: Address, target: Address, op: WatchOp },
    TrapExits { me: Address, on: bool },
    /// `address` is gone for good (failed and not to be restarted, or
    /// stopped).
    Gone { address: Address, reason: String },
}

/// Who keeps the tree; returns nothing, must not block for long (it is
/// called on shard threads).
pub type TreeHandler = Box<dyn Fn(TreeEvent) + Send + Sync>;
