//! Builds the reactors in `guests/` for wasm32-wasip1, so that neither README
//! command needs a manual step first. Makes sure the wasm32 target is
//! installed (rustup does not add `rust-toolchain.toml` targets to a
//! toolchain that is already installed), then runs a nested cargo with its own
//! target directory (no lock contention with the outer build).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip1";
const GUESTS: &[&str] = &["counter", "kv", "pingpong", "faulty", "pager", "migrant", "loadgen", "ledger", "overseer"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // host/example-guests → the repository root.
    let root = manifest_dir.parent().and_then(Path::parent).unwrap().to_path_buf();
    let guests = root.join("guests");
    let sdk = root.join("guest-sdk");
    for dir in [&guests, &sdk] {
        rerun_if_changed_tree(dir);
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    ensure_target(&rustc);

    // A target dir beside the outer one: <workspace>/target/guests.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests");

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // The outer build's settings are for the native target: keep them away
    // from the guests.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        let keep = k == "CARGO_HOME" || k.starts_with("CARGO_NET_") || k.starts_with("CARGO_REGISTRIES_")
            || k.starts_with("CARGO_HTTP_");
        if (k.starts_with("CARGO_") && !keep)
            || matches!(&*k, "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS")
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("RUSTC", &rustc);
    let status = cmd.status().expect("could not run cargo to build the guests");
    if !status.success() {
        panic!("building the guest reactors failed (cargo build --release --target {TARGET} in guests/)");
    }

    let out = target_dir.join(TARGET).join("release");
    for g in GUESTS {
        let p = out.join(format!("{g}.wasm"));
        assert!(p.exists(), "guest {g} was not built at {}", p.display());
    }
    println!("cargo:rustc-env=REACTOR_GUESTS_DIR={}", out.display());
}

fn ensure_target(rustc: &str) {
    let has_target = |rustc: &str| {
        Command::new(rustc)
            .args(["--print", "target-libdir", "--target", TARGET])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .is_some_and(|dir| dir.join("libstd").exists() || has_std(&dir))
    };
    if has_target(rustc) {
        return;
    }
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    match status {
        Ok(s) if s.success() && has_target(rustc) => {}
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` did not install it; \
             install it by hand and build again"
        ),
    }
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        .unwrap_or(false)
}

fn rerun_if_changed_tree(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" {
            continue;
        }
        if p.is_dir() {
            rerun_if_changed_tree(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
