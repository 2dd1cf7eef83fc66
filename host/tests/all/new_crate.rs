//! The path of a new user: a reactor crate of their own made by `host new`
//! outside this repository, built, run, tested, snapshotted and restored
//! with the commands the README gives; and every Rust block of the README
//! and of the SDK's docs built as such a crate's code, as written.
use crate::nodes::{host_command, scratch, test_cache};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Where the new crates build: one target directory for all of them (and
/// for every run), so their dependencies build once.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/new-crates")
}

fn host(args: &[&str]) -> Output {
    host_command(&test_cache()).env("CARGO_TARGET_DIR", target_dir()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn new_crate(dir: &Path) {
    let out = host(&["new", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

fn build(dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap()
}

fn wasm(name: &str) -> PathBuf {
    target_dir().join("wasm32-wasip1/release").join(format!("{name}.wasm"))
}

#[test]
fn a_crate_made_by_host_new_builds_runs_passes_its_transcript_and_snapshots() {
    let root = scratch("new", "hello");
    let dir = root.join("hello-reactor");
    new_crate(&dir);
    // Its own workspace, a cdylib for wasm32-wasip1, the SDK vendored.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]") && manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
    assert!(dir.join("guest-sdk/src/abi.rs").exists());
    // A second `host new` into it is refused.
    let again = host(&["new", dir.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again).contains("is not empty"), "{}", text(&again));

    // `host test` builds it and plays its transcript.
    let out = host(&["test", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 1 transcript(s) passed"), "{}", text(&out));
    // A transcript that expects what the reactor does not do fails, saying where.
    std::fs::write(dir.join("tests/wrong.txt"), "> {\"Add\": 1}\n< 5\n").unwrap();
    let out = host(&["test", "--no-build", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 1: sent {\"Add\": 1}, expected 5, got 1"), "{}", text(&out));
    std::fs::remove_file(dir.join("tests/wrong.txt")).unwrap();

    // The README's commands: run, snapshot, restore.
    let module = wasm("hello_reactor");
    let m = module.to_str().unwrap();
    let out = host(&["run", m, r#"{"Add": 2}"#, r#""Get""#]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), ["2", "2"]);
    let snap = root.join("hello.snap");
    let out = host(&["snapshot", m, r#"{"Add": 40}"#, "-o", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = host(&["restore", snap.to_str().unwrap(), "--module", m, "--send", r#"{"Add": 2}"#]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{}", text(&out));
    // Its error reply is an error.
    let out = host(&["run", m, r#"{"Take": 1}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot take 1: the count is 0"), "{}", text(&out));
}

/// The Rust code blocks of a markdown file, or of the doc comments of a
/// Rust file (`rs`: where a block with no language, `ignore` or `no_run`
/// is Rust too): (info string, code).
fn rust_blocks(doc: &str, rs: bool) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in doc.lines() {
        let t = line.trim_start();
        let comment = ["//!", "///"].iter().find_map(|p| t.strip_prefix(p));
        if rs && comment.is_none() {
            continue;
        }
        let t = comment.map_or(t, |r| r.strip_prefix(' ').unwrap_or(r));
        let is_rust = |info: &str| info.starts_with("rust") || rs && matches!(info.trim(), "" | "ignore" | "no_run");
        match (&mut open, t.strip_prefix("```")) {
            (None, Some(info)) if is_rust(info) => open = Some(("rust".to_owned(), String::new())),
            (None, Some(_)) => open = Some((String::new(), String::new())),
            (Some(_), Some(_)) => {
                let (info, code) = open.take().unwrap();
                if !info.is_empty() {
                    blocks.push((info, code));
                }
            }
            (Some((_, code)), None) => {
                code.push_str(t);
                code.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Every Rust block of the README and of the SDK's docs compiles as
/// written, in a crate made by `host new`: a block that exports a reactor
/// is the crate's whole `lib.rs`; the others (definitions, or statements
/// of a handler such as `cx.supervise(…)?;`) go together into one more.
#[test]
fn every_rust_block_of_the_readme_and_the_sdk_docs_builds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut whole = Vec::new();
    // Statements of a handler see `cx`, and a `tag` and a `peer` it got
    // from a message; `?` takes any error the SDK returns.
    let mut parts = String::from(
        "#![allow(dead_code, unused_imports, unused_variables)]\nuse guest_sdk::prelude::*;\n\
         struct AnyError;\nimpl<E: core::fmt::Display> From<E> for AnyError {\n    fn from(_: E) -> Self { AnyError }\n}\n",
    );
    let mut found = 0;
    for file in ["README.md", "guest-sdk/src/lib.rs", "guest-sdk/src/encoding.rs", "guest-sdk/src/guest.rs"] {
        let doc = std::fs::read_to_string(repo.join(file)).unwrap();
        for (i, (_, code)) in rust_blocks(&doc, file.ends_with(".rs")).into_iter().enumerate() {
            found += 1;
            if code.contains("export!") {
                whole.push((format!("{file} block {i}"), code));
            } else if code.lines().any(|l| l.starts_with("use ") || l.starts_with("#[derive") || l.starts_with("enum ") || l.starts_with("struct ")) {
                parts.push_str(&format!("mod block_{found} {{\n{code}}}\n"));
            } else {
                // Statements in a handler.
                parts.push_str(&format!(
                    "fn block_{found}(cx: &mut Context, tag: u64, peer: Address) -> Result<(), AnyError> {{\n    use core::time::Duration;\n{code}    Ok(())\n}}\n"
                ));
            }
        }
    }
    assert!(whole.len() >= 2 && found >= 4, "{found} blocks, {} whole reactors", whole.len());
    let root = scratch("new", "readme");
    let mut crates: Vec<(String, String)> = whole;
    crates.push(("the other blocks".into(), parts));
    for (i, (what, code)) in crates.iter().enumerate() {
        let dir = root.join(format!("block-{i}"));
        new_crate(&dir);
        std::fs::write(dir.join("src/lib.rs"), code).unwrap();
        // What the encoding docs say a `Json<serde_json::Value>` needs.
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest = manifest.replace("[dependencies]\n", "[dependencies]\nserde_json = \"1\"\n");
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
        let out = build(&dir);
        assert!(out.status.success(), "{what} does not build:\n{code}\n{}", text(&out));
    }
}
