//! The live cluster view (`host node --http`) in a real headless browser:
//! Debian's Chromium driven by `playwright-core` from npm (`web_view.js`).
//! The test installs what is missing: Chromium with apt (as root), the
//! npm package into `target/web-test` (kept across runs).
use crate::nodes::{CONVERGE, SECRET, free_addr, scratch, start, wait_until};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const CHROMIUM: &str = "/usr/bin/chromium";

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Chromium from Debian's packages, installed if missing.
fn chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    eprintln!("web_view: installing Debian's chromium (apt-get)");
    run(Command::new("apt-get").arg("update"), "apt-get update");
    run(Command::new("apt-get").args(["install", "-y", "chromium"]).env("DEBIAN_FRONTEND", "noninteractive"), "apt-get install chromium");
}

/// `playwright-core` from npm, in `target/web-test/node_modules`.
fn playwright() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-test");
    let modules = dir.join("node_modules");
    if !modules.join("playwright-core/package.json").exists() {
        eprintln!("web_view: installing playwright-core (npm) into {}", dir.display());
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("npm").args(["install", "--no-audit", "--no-fund", "--prefix"]).arg(&dir).arg("playwright-core@1"), "npm install playwright-core");
    }
    modules
}

/// An operator opens node 2's view in Chromium: refused without the token;
/// with it, both nodes and the edge between them, node 2's reactors and a
/// live message rate show; from the page's buttons they snapshot one
/// reactor (the file is in the data directory), move another to node 1
/// (it runs there after) and stop a third (it shows among the failures,
/// and stays failed though it is journaled and supervised).
#[test]
fn the_cluster_view_works_in_a_real_browser() {
    chromium();
    let modules = playwright();
    let root = scratch("web", "view");
    let view = free_addr();
    let n1 = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let n2 = start(&root, 2, SECRET, &["--seed", &n1.addr, "--http", &view, "--checkpoint-every", "0"]);
    for n in [&n1, &n2] {
        wait_until("both nodes up", CONVERGE, || n.up() == [1, 2]);
    }
    let token = std::fs::read_to_string(n2.dir.join("http.token")).unwrap();
    let a = n2.spawn("counter");
    let b = n2.spawn("kv");
    let spawned = n2.admin().request(json!({"op": "spawn", "module": "counter", "init": 0, "durable": "synced"})).unwrap();
    let c = spawned["tag"].as_u64().unwrap();
    let addr = |t: u64| reactor_runtime::Address(t).to_string();

    // Traffic while the page watches: a rate to show.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, dir) = (stop.clone(), n1.dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = host::node::admin::Client::connect(&dir).and_then(|mut cl| cl.request(json!({"op": "call", "to": a, "msg": {"Add": 1}})));
            }
        })
    };
    let shot = root.join("view.png");
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/all/web_view.js"))
        .args([format!("http://{view}"), token.trim().to_owned(), addr(a), addr(b), addr(c)])
        .arg(&shot)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node runs");
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
    assert!(
        out.status.success() && report["ok"] == json!(true),
        "the browser run failed: {stdout}\n{}\nnode 2:\n{}",
        String::from_utf8_lossy(&out.stderr),
        n2.log()
    );
    assert_eq!((report["without_token"].clone(), report["wrong_token"].clone(), report["with_token"].clone()), (json!(401), json!(401), json!(200)));
    assert_eq!(report["members"], json!(2));
    assert!(report["edges"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["rate"].as_f64().unwrap() > 0.0, "{report}");
    // What the buttons did, seen from outside the page.
    let snaps: Vec<_> = std::fs::read_dir(n2.dir.join("snapshots")).unwrap().collect();
    assert_eq!(snaps.len(), 1, "{report}");
    assert_eq!(n1.status()["reactors"], json!(1), "the kv moved to node 1: {report}");
    assert!(n1.try_call(b, json!({"Get": {"key": "x"}})).is_ok());
    let err = n2.try_call(c, json!("Get")).unwrap_err().to_string();
    assert!(err.contains("stopped by the operator") || err.contains("no live reactor"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(n2.try_call(c, json!("Get")).is_err(), "a stopped reactor is not restarted");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a screenshot was taken");
}
