//! `host new`: a reactor crate of one's own, outside this repository, set up
//! right (its own workspace, `cdylib`, built for `wasm32-wasip1`, the
//! release profile the example guests use, the SDK this host speaks to
//! vendored next to it), with a transcript test; and `host test`: build
//! such a crate and run its transcripts in the host.
//!
//! A transcript (`tests/*.txt`) is what a user would type at `host run`,
//! with the answers expected:
//!
//! ```text
//! # comment
//! init 5             (optional, first: the spawn argument, JSON)
//! > {"Add": 2}       a request (JSON)
//! < 7                the reply expected (JSON, compared as values)
//! > {"Nonsense": 1}
//! ! undecodable      an error reply expected, containing this text
//! - {"Add": 1}       a one-way message
//! ```

use super::engine_args::EngineArgs;
use anyhow::{Context as _, bail, ensure};
use reactor_runtime::{CallError, Shard};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The directory to create (it must not exist, or be empty).
    path: PathBuf,
    /// The crate's name [default: the directory's name].
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// The reactor crate (made by `host new`) [default: the current directory].
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Use the module built already; do not run `cargo build`.
    #[arg(long)]
    no_build: bool,
}

/// The SDK sources, vendored into every new crate: the crate speaks the ABI
/// of the host that made it.
const SDK_FILES: [(&str, &str); 4] = [
    ("src/lib.rs", include_str!("../../../guest-sdk/src/lib.rs")),
    ("src/abi.rs", include_str!("../../../guest-sdk/src/abi.rs")),
    ("src/guest.rs", include_str!("../../../guest-sdk/src/guest.rs")),
    ("src/encoding.rs", include_str!("../../../guest-sdk/src/encoding.rs")),
];

const SDK_MANIFEST: &str = r#"[package]
name = "guest-sdk"
version = "0.1.0"
description = "Write reactors in ordinary Rust (vendored by `host new`: the SDK of the host that made this crate)."
edition = "2024"
publish = false

[features]
default = ["text"]
text = ["dep:serde_json"]

[target.'cfg(target_arch = "wasm32")'.dependencies]
serde = { version = "1", default-features = false, features = ["derive", "alloc"] }
postcard = { version = "1", default-features = false, features = ["alloc"] }
serde_json = { version = "1", optional = true }
"#;

/// The new crate's manifest (`{name}` replaced).
const MANIFEST: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A reactor is a Wasm module: a cdylib, built for wasm32-wasip1 (see
# .cargo/config.toml).
[lib]
crate-type = ["cdylib"]

[dependencies]
guest-sdk = { path = "guest-sdk" }
# The derives the SDK's prelude re-exports expand to `serde::...`: the
# crate names serde itself.
serde = { version = "1", default-features = false, features = ["derive", "alloc"] }

# Its own workspace, even inside another project's directory.
[workspace]

[profile.release]
opt-level = 3
# A panic fails the reactor (the host reports its message); no unwinding.
panic = "abort"
codegen-units = 1
lto = true
debug = false
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip1"
"#;

const LIB: &str = r#"//! A reactor: a counter that messages add to.
use guest_sdk::prelude::*;

/// The messages it takes.
#[derive(Serialize, Deserialize)]
pub enum Msg {
    /// Adds to the count; as a request, replies the new count.
    Add(u64),
    /// Replies the count.
    Get,
    /// Subtracts, and refuses to go below zero (an error reply).
    Take(u64),
}

/// Its state: a plain Rust value in its own linear memory.
#[derive(Default)]
struct Counter {
    n: u64,
}

impl Reactor for Counter {
    type Msg = Msg;

    fn start(&mut self, _cx: &mut Context, init: Payload<'_>) {
        self.n = init.decode::<u64>().unwrap_or(0);
    }

    fn react(&mut self, cx: &mut Context, msg: Msg) {
        match msg {
            Msg::Add(k) => {
                self.n = self.n.saturating_add(k);
                let _ = cx.reply(&self.n);
            }
            Msg::Get => {
                let _ = cx.reply(&self.n);
            }
            Msg::Take(k) => match self.n.checked_sub(k) {
                Some(left) => {
                    self.n = left;
                    let _ = cx.reply(&self.n);
                }
                None => {
                    let _ = cx.reply_error(&format!("cannot take {k}: the count is {}", self.n));
                }
            },
        }
    }
}

guest_sdk::export!(Counter);
"#;

const TRANSCRIPT: &str = r#"# `host test` runs this against the reactor: `>` a request, `<` the reply
# expected, `!` an error reply expected (containing the text), `-` a
# one-way message, `init` the spawn argument.
init 5
> {"Add": 2}
< 7
- {"Add": 1}
> "Get"
< 8
> {"Take": 10}
! cannot take 10
> {"Nonsense": 1}
! undecodable request
"#;

const GITIGNORE: &str = "/target\n";

/// `host new`.
pub(crate) fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.path;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable name for a crate: give one with --name", dir.display()))?
            .to_owned(),
    };
    check_name(&name)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_none();
        ensure!(empty, "{} exists and is not empty: give a new directory", dir.display());
    }
    let files: Vec<(PathBuf, String)> = [
        ("Cargo.toml".to_owned(), MANIFEST.replace("{name}", &name)),
        (".cargo/config.toml".to_owned(), CARGO_CONFIG.to_owned()),
        (".gitignore".to_owned(), GITIGNORE.to_owned()),
        ("src/lib.rs".to_owned(), LIB.to_owned()),
        ("tests/counter.txt".to_owned(), TRANSCRIPT.to_owned()),
        ("guest-sdk/Cargo.toml".to_owned(), SDK_MANIFEST.to_owned()),
    ]
    .into_iter()
    .chain(SDK_FILES.iter().map(|(p, text)| (format!("guest-sdk/{p}"), (*text).to_owned())))
    .map(|(p, t)| (dir.join(p), t))
    .collect();
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created the reactor crate `{name}` in {}", dir.display());
    println!("next:");
    println!("  cd {}", dir.display());
    println!("  rustup target add wasm32-wasip1     # once per toolchain");
    println!("  cargo build --release               # target/wasm32-wasip1/release/{}.wasm", name.replace('-', "_"));
    println!("  host run target/wasm32-wasip1/release/{}.wasm '{{\"Add\": 2}}' '\"Get\"'", name.replace('-', "_"));
    println!("  host test                           # builds it and runs tests/*.txt");
    Ok(ExitCode::SUCCESS)
}

/// A crate name cargo takes: ASCII letters, digits, `-` and `_`, starting
/// with a letter, at most 64 characters.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ensure!(ok, "`{name}` is not a crate name: ASCII letters, digits, `-` and `_`, starting with a letter (give one with --name)");
    Ok(())
}

/// `host test`.
pub(crate) fn test(engine_args: &EngineArgs, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let name = package_name(&text).with_context(|| format!("{} names no [package]", manifest.display()))?;
    if !args.no_build {
        build(dir)?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let wasm = target_dir.join("wasm32-wasip1/release").join(format!("{}.wasm", name.replace('-', "_")));
    let engine = engine_args.engine()?;
    let (module, _) = engine.load_file(&wasm).with_context(|| format!("{} is not a usable reactor module", wasm.display()))?;
    let mut scripts: Vec<PathBuf> = match std::fs::read_dir(dir.join("tests")) {
        Ok(d) => d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "txt")).collect(),
        Err(_) => Vec::new(),
    };
    scripts.sort();
    ensure!(!scripts.is_empty(), "no transcripts in {} (tests/*.txt)", dir.join("tests").display());
    let mut failed = 0;
    for path in &scripts {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let steps = parse(&text).with_context(|| format!("{} is not a transcript", path.display()))?;
        let mut rt = Shard::new(engine.clone(), engine_args.shard_config()?);
        match play(&mut rt, &module, &steps) {
            Ok(n) => println!("ok     {} ({n} step(s))", path.display()),
            Err(e) => {
                failed += 1;
                println!("FAILED {}: {e}", path.display());
            }
        }
    }
    println!("{} of {} transcript(s) passed", scripts.len() - failed, scripts.len());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo build --release` in `dir`, the wasm32 target added first.
fn build(dir: &Path) -> anyhow::Result<()> {
    // rustup does not add a toolchain's targets by itself; idempotent. No
    // rustup (another toolchain manager): cargo says what is missing.
    let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).current_dir(dir).output();
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release"])
        .current_dir(dir)
        .status()
        .context("cannot run cargo")?;
    ensure!(status.success(), "cargo build --release failed in {}", dir.display());
    Ok(())
}

/// The `name` of the manifest's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let table: toml::Table = manifest.parse().ok()?;
    Some(table.get("package")?.get("name")?.as_str()?.to_owned())
}

/// One line of a transcript.
#[derive(Debug, PartialEq)]
enum Step {
    Init(String),
    Request { line: usize, msg: String },
    Reply { line: usize, want: Value },
    Error { line: usize, contains: String },
    Send { line: usize, msg: String },
}

/// Parses a transcript; the first error names its line.
fn parse(text: &str) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let json = |rest: &str| -> anyhow::Result<Value> {
            serde_json::from_str(rest.trim()).with_context(|| format!("line {line}: not valid JSON: {}", rest.trim()))
        };
        let step = if let Some(rest) = t.strip_prefix("init ") {
            ensure!(steps.is_empty(), "line {line}: `init` comes first");
            json(rest)?;
            Step::Init(rest.trim().to_owned())
        } else if let Some(rest) = t.strip_prefix('>') {
            json(rest)?;
            Step::Request { line, msg: rest.trim().to_owned() }
        } else if let Some(rest) = t.strip_prefix('<') {
            Step::Reply { line, want: json(rest)? }
        } else if let Some(rest) = t.strip_prefix('!') {
            Step::Error { line, contains: rest.trim().to_owned() }
        } else if let Some(rest) = t.strip_prefix('-') {
            json(rest)?;
            Step::Send { line, msg: rest.trim().to_owned() }
        } else {
            bail!("line {line}: starts with none of `init`, `>`, `<`, `!`, `-`, `#`: {t}");
        };
        let answer = matches!(step, Step::Reply { .. } | Step::Error { .. });
        let after_request = matches!(steps.last(), Some(Step::Request { .. }));
        ensure!(answer == after_request, "line {line}: {}", if answer { "an answer with no request before it" } else { "the request before has no answer (`<` or `!`)" });
        steps.push(step);
    }
    ensure!(!matches!(steps.last(), Some(Step::Request { .. })), "the last request has no answer (`<` or `!`)");
    Ok(steps)
}

/// Runs `steps` against a fresh reactor of `module`; how many steps.
fn play(rt: &mut Shard, module: &std::sync::Arc<reactor_runtime::LoadedModule>, steps: &[Step]) -> anyhow::Result<usize> {
    let init = match steps.first() {
        Some(Step::Init(j)) => j.as_str(),
        _ => "null",
    };
    let reactor = rt.spawn_text(module, init).context("the reactor did not start")?;
    let mut it = steps.iter().peekable();
    while let Some(step) = it.next() {
        match step {
            Step::Init(_) => {}
            Step::Send { line, msg } => {
                rt.send(reactor, msg.as_bytes().to_vec(), true).with_context(|| format!("line {line}: not sent"))?;
                rt.run_until_idle();
            }
            Step::Request { line, msg } => {
                let got = rt.call(reactor, msg.as_bytes().to_vec(), true);
                match (it.next(), got) {
                    (Some(Step::Reply { want, .. }), Ok(reply)) => {
                        let v: Value = serde_json::from_slice(&reply.payload)
                            .with_context(|| format!("line {line}: the reply is not JSON"))?;
                        ensure!(&v == want, "line {line}: sent {msg}, expected {want}, got {v}");
                    }
                    (Some(Step::Error { contains, .. }), Err(CallError::Refused(_, why))) => {
                        ensure!(why.contains(contains.as_str()), "line {line}: sent {msg}, expected an error containing `{contains}`, got the error `{why}`");
                    }
                    (Some(Step::Reply { want, .. }), Err(e)) => bail!("line {line}: sent {msg}, expected {want}, got the error `{e}`"),
                    (Some(Step::Error { contains, .. }), Ok(reply)) => {
                        bail!("line {line}: sent {msg}, expected an error containing `{contains}`, got {}", String::from_utf8_lossy(&reply.payload))
                    }
                    (Some(Step::Error { contains, .. }), Err(e)) => {
                        // A failure of the reactor is an error too.
                        let why = e.to_string();
                        ensure!(why.contains(contains.as_str()), "line {line}: sent {msg}, expected an error containing `{contains}`, got `{why}`");
                    }
                    _ => unreachable!("parse pairs every request with an answer"),
                }
            }
            Step::Reply { .. } | Step::Error { .. } => unreachable!("taken with their request"),
        }
    }
    Ok(steps.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_transcript_parses() {
        let steps = parse(TRANSCRIPT).unwrap();
        assert_eq!(steps[0], Step::Init("5".into()));
        assert_eq!(steps.len(), 10);
    }

    #[test]
    fn bad_transcripts_name_their_line() {
        for (text, says) in [
            ("> {\"Add\": 1}\n", "the last request has no answer"),
            ("< 1\n", "line 1: an answer with no request"),
            ("> 1\n> 2\n< 3\n", "line 2: the request before has no answer"),
            ("> {nope\n< 1\n", "line 1: not valid JSON"),
            ("> 1\n< 2\ninit 3\n", "line 3: `init` comes first"),
            ("? what\n", "line 1: starts with none of"),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn names_are_checked_and_the_package_name_is_found() {
        assert!(check_name("my-reactor_2").is_ok());
        for bad in ["", "2x", "a b", "a/b", "../x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(package_name("[workspace]\n[package]\nname = \"x-y\"\n").as_deref(), Some("x-y"));
        assert_eq!(package_name("[dependencies]\nname = \"no\"\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in "[<>!#\\- a-z0-9{}\":\n]{0,200}") {
            let _ = parse(&text);
        }
    }
}
