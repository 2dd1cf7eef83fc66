use host::{Engine, EngineConfig, LoadedModule, Shard, ShardConfig};
use std::sync::{Arc, OnceLock};

/// One engine for the whole test binary (compiles each guest once).
pub(crate) fn engine() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| Arc::new(Engine::new(EngineConfig::default()).expect("engine"))).clone()
}

pub(crate) fn module(name: &str) -> Arc<LoadedModule> {
    let e = engine();
    let (m, _) = e.load_file(&host::guests::path(name)).expect("guest loads");
    e.register_name(name, &m);
    m
}

pub(crate) fn shard() -> Shard {
    Shard::new(engine(), ShardConfig::default())
}

#[allow(dead_code)]
pub(crate) fn shard_with(config: ShardConfig) -> Shard {
    Shard::new(engine(), config)
}
