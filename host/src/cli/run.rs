//! `host run`: one reactor, messages from the command line or stdin.

use super::engine_args::EngineArgs;
use super::save::save;
use reactor_runtime::{Address, CallError, ReactorState, Reply, Shard, abi};
use anyhow::Context as _;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The reactor module (.wasm), e.g. target/guests/wasm32-wasip1/release/kv.wasm.
    module: Option<PathBuf>,
    /// Init argument for the reactor's start-up, as JSON.
    #[arg(long, value_name = "JSON")]
    init: Option<String>,
    /// Send messages one-way instead of as requests (no replies printed).
    #[arg(long)]
    oneway: bool,
    /// After the messages, snapshot the reactor into this file.
    #[arg(long, short = 'o', value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Store the snapshot's pages compressed (LZ4, format version 3):
    /// smaller, and restored by decompressing them, never mapped lazily.
    #[arg(long, requires = "snapshot")]
    compress: bool,
    /// Messages as JSON, e.g. '{"Put":{"key":"a","value":"1"}}'. With none,
    /// one message per line is read from standard input.
    messages: Vec<String>,
}

impl RunArgs {
    /// Where to write the snapshot (`-o`).
    pub(crate) fn snapshot_path(&self) -> Option<&std::path::Path> {
        self.snapshot.as_deref()
    }

    /// Whether to compress the snapshot (`--compress`).
    pub(crate) fn compress(&self) -> bool {
        self.compress
    }

    /// The positional arguments as given: the module, then the messages
    /// (`host snapshot --data-dir` reads them as addresses).
    pub(crate) fn positionals(&self) -> Vec<String> {
        self.module.iter().map(|m| m.display().to_string()).chain(self.messages.iter().cloned()).collect()
    }
}

/// What [`talk`] saw.
#[derive(Debug, Default)]
pub(crate) struct Talked {
    /// The reactor failed (the messages after stayed unsent).
    pub(crate) reactor_failed: bool,
    /// Messages that were not valid JSON, could not be sent, or whose
    /// request failed (an error reply, no reply).
    pub(crate) errors: usize,
}

impl Talked {
    /// The exit code: failure if the reactor failed or any message did.
    pub(crate) fn exit_code(&self) -> ExitCode {
        if self.reactor_failed || self.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    }
}

/// Sends each message (JSON; from `messages`, or one per line of standard
/// input when there are none) to `reactor`, printing replies (to standard
/// output) and errors (to standard error, counted) and messages reactors
/// sent to the host. Stops at a failure of the reactor.
pub(crate) fn talk(rt: &mut Shard, reactor: Address, messages: &[String], oneway: bool) -> anyhow::Result<Talked> {
    let mut talked = Talked::default();
    let mut handle = |rt: &mut Shard, n: usize, line: &str| -> bool {
        let line = line.trim();
        if line.is_empty() {
            return true;
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
            eprintln!("message {n}: not valid JSON ({e}); not sent");
            talked.errors += 1;
            return true;
        }
        let outcome = if oneway {
            rt.send(reactor, line.as_bytes().to_vec(), true).map_err(CallError::from).map(|()| {
                rt.run_until_idle();
                None
            })
        } else {
            rt.call(reactor, line.as_bytes().to_vec(), true).map(Some)
        };
        for env in rt.drain_host_messages() {
            println!("message from {}: {}", env.from, printable(&env));
        }
        match outcome {
            Ok(Some(reply)) => println!("{}", show(&reply)),
            Ok(None) => {}
            Err(e) => {
                eprintln!("message {n}: {e}");
                talked.errors += 1;
                if let Some(ReactorState::Failed(_)) = rt.state(reactor) {
                    talked.reactor_failed = true;
                    return false;
                }
            }
        }
        true
    };
    if messages.is_empty() {
        let stdin = std::io::stdin();
        for (i, line) in stdin.lock().lines().enumerate() {
            let line = line.context("cannot read standard input")?;
            if !handle(rt, i + 1, &line) {
                break;
            }
        }
    } else {
        for (i, m) in messages.iter().enumerate() {
            if !handle(rt, i + 1, m) {
                break;
            }
        }
    }
    if talked.errors > 0 && !talked.reactor_failed {
        eprintln!("{} message(s) failed", talked.errors);
    }
    Ok(talked)
}

fn show(reply: &Reply) -> String {
    if reply.text {
        String::from_utf8_lossy(&reply.payload).into_owned()
    } else {
        format!("(binary reply, {} bytes: {})", reply.payload.len(), hex::encode(&reply.payload))
    }
}

pub(crate) fn run(engine_args: &EngineArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = &args.module else {
        anyhow::bail!("give the reactor module (.wasm) to start");
    };
    let engine = engine_args.engine()?;
    let (module, _) =
        engine.load_file(path).with_context(|| format!("{} is not a usable reactor module", path.display()))?;
    let mut rt = Shard::new(engine, engine_args.shard_config()?);
    let init = args.init.as_deref().unwrap_or("null");
    serde_json::from_str::<serde_json::Value>(init).context("--init is not valid JSON")?;
    let reactor = rt.spawn_text(&module, init).context("the reactor did not start")?;
    eprintln!("reactor {reactor} running {} (module {})", path.display(), &module.hash.to_hex()[..16]);

    let talked = talk(&mut rt, reactor, &args.messages, args.oneway)?;
    if talked.reactor_failed {
        return Ok(ExitCode::FAILURE);
    }
    // The reactor is fine (a message failed, not it): its snapshot is
    // written all the same.
    if let Some(path) = &args.snapshot {
        save(&mut rt, reactor, path, args.compress)?;
    }
    if let Some(size) = rt.memory_size(reactor) {
        eprintln!("reactor {reactor}: {} KiB of linear memory", size / 1024);
    }
    Ok(talked.exit_code())
}

fn printable(env: &reactor_runtime::Envelope) -> String {
    if env.flags & abi::FLAG_TEXT != 0 {
        String::from_utf8_lossy(&env.payload).into_owned()
    } else {
        format!("{} bytes: {}", env.payload.len(), hex::encode(&env.payload))
    }
}

