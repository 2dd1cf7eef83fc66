//! Runs the loom model checks (`src/loom_tests.rs`) as part of the normal
//! test command: a child `cargo test --release -p reactor-ring --lib` built
//! with `--cfg loom` in its own target directory (`target/loom`), so it
//! neither clobbers nor waits on the main build.
#![cfg(not(loom))]
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

#[test]
fn loom_models_pass() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().and_then(Path::parent).expect("host/ring sits two levels below the workspace");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace).args(["test", "--release", "-p", "reactor-ring", "--lib"]);
    // The outer build's settings (flags, target dir, wrappers) are not the
    // model check's: keep only what reaches the registry.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let keep = k == "CARGO_HOME"
            || k.starts_with("CARGO_NET_")
            || k.starts_with("CARGO_REGISTRIES_")
            || k.starts_with("CARGO_HTTP_");
        if (k.starts_with("CARGO_") && !keep)
            || matches!(&*k, "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS")
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", "2")
        .env("CARGO_TARGET_DIR", workspace.join("target").join("loom"));
    let status = cmd.status().expect("could not run cargo for the loom model checks");
    assert!(status.success(), "loom model checks failed: RUSTFLAGS=\"--cfg loom\" cargo test --release -p reactor-ring --lib");
}
