//! The `host` command: thin subcommands over the library.
//!
//! Errors at this edge are `anyhow` with context that says what to do.
//!
//! Modules, each using only those before it: `engine_args` (the engine and
//! limit flags every subcommand shares), `save` (writing a reactor's
//! snapshot with progress), `run`, `snapshot`, `node`, `demo`, `new`
//! (`host new` and `host test`); this module
//! parses the command line and dispatches.
#![forbid(unsafe_code)]

mod config;
mod demo;
mod engine_args;
mod new;
mod node;
mod run;
mod save;
mod snapshot;
mod replay;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine_args::EngineArgs;
use std::path::PathBuf;
use std::process::ExitCode;

/// Run WebAssembly reactors: isolated actors whose whole state is one linear memory.
#[derive(Debug, Parser)]
#[command(name = "host", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start one reactor and talk to it: each message (JSON, one per argument
    /// or per line of standard input) is sent as a request, and its reply is
    /// printed as JSON.
    Run(run::RunArgs),
    /// The main demo: spawn thousands of kv and pingpong reactors, drive
    /// traffic through them, show a misbehaving reactor failing alone, and
    /// report what happened.
    Demo(demo::DemoArgs),
    /// Snapshot reactors into `-o FILE` (memory, globals, queued messages,
    /// held blobs). With `--data-dir`: live reactors of a running node, by
    /// address or `--all`, copy-on-write while they serve. Without: start
    /// a reactor of MODULE, send it messages (as `host run`), then snapshot
    /// it.
    Snapshot(snapshot::SnapshotArgs),
    /// Restore reactors from a snapshot (a full one, then deltas on it),
    /// optionally send them messages and snapshot them again.
    Restore(snapshot::RestoreArgs),
    /// Show what a snapshot file holds and check every checksum.
    Inspect(snapshot::InspectArgs),
    /// Check that a module is a loadable reactor and print what the host sees.
    Check {
        /// The module file.
        module: PathBuf,
    },
    /// Run a node of a cluster: it hosts reactors, joins the cluster through
    /// its seeds, and routes messages to reactors on any node.
    Node(Box<node::NodeArgs>),
    /// Show a running node's view of the cluster (members, lanes, counters).
    Status(node::AdminArgs),
    /// Start a reactor on a running node; prints its address.
    Spawn(node::SpawnArgs),
    /// Send a one-way message (JSON) through a running node to a reactor on
    /// any node.
    Send(node::SendArgs),
    /// Send a request (JSON) through a running node and print the answer.
    Call(node::SendArgs),
    /// Stop a running node (it checkpoints its reactors first).
    Stop(node::AdminArgs),
    /// Make a running node checkpoint its reactors into its data directory
    /// now.
    Checkpoint(node::AdminArgs),
    /// Move a live reactor to another node while it serves (pre-copy of its
    /// pages, then a short stop); its address stays the same. Ask any node.
    Migrate(node::MigrateArgs),
    /// Make a running node shed load: it moves its reactors, live, to the
    /// least loaded live members while it runs more than its share.
    Rebalance(node::AdminArgs),
    /// Re-execute a journaled reactor from a post-mortem bundle (or from a
    /// snapshot and its journal), checking every call against what it did
    /// in production: same outputs, same state at every snapshot point,
    /// same failure with the same message and backtrace.
    Replay(replay::ReplayArgs),
    /// Make a reactor crate of your own: its own workspace, a cdylib for
    /// wasm32-wasip1, the SDK of this host vendored beside it, a counter
    /// to start from and a transcript test.
    New(new::NewArgs),
    /// Build a reactor crate (made by `host new`) and play its transcripts
    /// (`tests/*.txt`: requests and the answers expected) against it.
    Test(new::TestArgs),
}

/// Entry point of the `host` binary.
pub(crate) fn main() -> ExitCode {
    let argv = match config::apply(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.engine.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours on a terminal only: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.engine.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(ansi).init();
    }
    let result = match &cli.command {
        Command::Run(args) => run::run(&cli.engine, args),
        Command::Demo(args) => demo::demo(&cli.engine, args),
        Command::Snapshot(args) => snapshot::snapshot(&cli.engine, args),
        Command::Restore(args) => snapshot::restore(&cli.engine, args),
        Command::Inspect(args) => snapshot::inspect(args),
        Command::Replay(args) => replay::replay(&cli.engine, args),
        Command::Check { module } => check(&cli.engine, module),
        Command::Node(args) => node::node(&cli.engine, args),
        Command::Status(args) => node::status(args),
        Command::Spawn(args) => node::spawn(args),
        Command::Send(args) => node::send(args, false),
        Command::Call(args) => node::send(args, true),
        Command::Stop(args) => node::stop(args),
        Command::Checkpoint(args) => node::checkpoint(args),
        Command::Migrate(args) => node::migrate(args),
        Command::Rebalance(args) => node::rebalance(args),
        Command::New(args) => new::new(args),
        Command::Test(args) => new::test(&cli.engine, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each joined by ": ", leaving out a
/// cause its error already ends with (an OS error said once, not twice).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if out.ends_with(&said) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&said);
    }
    out
}

fn check(args: &EngineArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let engine = args.engine()?;
    let started = std::time::Instant::now();
    let (m, source) = engine.load_file(path).with_context(|| format!("{} is not a usable reactor module", path.display()))?;
    println!("module   {}", path.display());
    println!("sha256   {}", m.hash);
    println!("size     {} bytes", m.size);
    println!("abi      version {}", reactor_runtime::abi::ABI_VERSION);
    println!("code     {source:?} in {:.1?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}
