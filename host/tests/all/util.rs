use reactor_runtime::{Engine, EngineConfig, LoadedModule, Shard, ShardConfig};
use std::sync::{Arc, OnceLock};

/// One engine for the whole test binary (compiles each guest once).
pub(crate) fn engine() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| Arc::new(Engine::new(EngineConfig::default()).expect("engine"))).clone()
}

pub(crate) fn module(name: &str) -> Arc<LoadedModule> {
    let e = engine();
    let (m, _) = e.load_file(&example_guests::path(name)).expect("guest loads");
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

/// Runs the ignored test `name` alone in a child process of this test
/// binary (for measurements of process-wide figures such as resident memory,
/// which tests running in parallel threads would disturb).
#[allow(dead_code)]
pub(crate) fn run_alone(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child did not run the measurement:\n{text}");
}
