//! `host snapshot`, `host restore`, `host inspect`.

use super::engine_args::EngineArgs;
use super::run::{RunArgs, Talked, talk};
use super::save::{mib, progress, save};
use reactor_runtime::snapshot::{ChainBreak, Kind, Load, RestoreOptions, SnapshotFile, chain_break};
use reactor_runtime::{Address, Engine, ModuleHash, Shard, abi};
use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct SnapshotArgs {
    /// The data directory of a running node whose live reactors to
    /// snapshot (then give their addresses, or --all).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: every reactor of the node.
    #[arg(long, requires = "data_dir")]
    all: bool,
    /// With --data-dir: a delta on the snapshot the reactors' tracked pages
    /// are relative to (the node's last checkpoint or your last snapshot
    /// of them; its id is in the answer).
    #[arg(long, requires = "data_dir")]
    incremental: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// Snapshot files: a full snapshot, then the deltas on it in order.
    #[arg(required = true, value_name = "SNAPSHOT")]
    snapshots: Vec<PathBuf>,
    /// Restore into the running node with this data directory (its
    /// reactors' addresses must be that node's) instead of a new process.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Module files the snapshot's reactors run. Without it, modules are
    /// looked up by hash among the guests this host was built with.
    #[arg(long, value_name = "FILE")]
    module: Vec<PathBuf>,
    /// Map the file's pages copy-on-write instead of copying them now:
    /// pages are read on first touch. Implies --no-verify.
    #[arg(long)]
    lazy: bool,
    /// Skip the page-data checksum (a damaged page then only corrupts the
    /// restored reactor, never the host).
    #[arg(long)]
    no_verify: bool,
    /// Which restored reactor to send messages to (e.g. `#0:1`); needed when
    /// the snapshot holds several.
    #[arg(long, value_name = "ADDRESS")]
    to: Option<Address>,
    /// Send messages one-way instead of as requests.
    #[arg(long)]
    oneway: bool,
    /// After the messages, snapshot the reactor again into this file.
    #[arg(long, short = 'o', value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Store the snapshot's pages compressed (LZ4, format version 3):
    /// smaller, and restored by decompressing them, never mapped lazily.
    #[arg(long, requires = "snapshot")]
    compress: bool,
    /// Messages as JSON for the restored reactor. Without any, one message
    /// per line of standard input is read when it is not a terminal (as
    /// `host run` takes them).
    #[arg(long = "send", value_name = "JSON")]
    messages: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Do not read the page data to check its checksum.
    #[arg(long)]
    no_verify: bool,
}

/// `host snapshot`: live reactors of a node, or `host run` that must end
/// in a snapshot.
pub(crate) fn snapshot(engine_args: &EngineArgs, args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    let Some(out) = args.run.snapshot_path() else {
        bail!("`host snapshot` needs `-o FILE`: where to write the snapshot");
    };
    if let Some(dir) = &args.data_dir {
        // The positional arguments are addresses here.
        let reactors = args.run.positionals();
        return super::node::snapshot_live(dir, &reactors, args.all, out, args.incremental, args.run.compress());
    }
    super::run::run(engine_args, &args.run)
}

/// Loads the modules a snapshot chain needs: the given files, then built
/// guests whose hash matches.
fn load_modules(engine: &Engine, files: &[SnapshotFile], given: &[PathBuf]) -> anyhow::Result<()> {
    let mut given_hashes = Vec::new();
    for path in given {
        let (m, _) =
            engine.load_file(path).with_context(|| format!("{} is not a usable reactor module", path.display()))?;
        given_hashes.push(m.hash);
    }
    let needed: Vec<ModuleHash> =
        files.iter().flat_map(|f| f.meta().reactors.iter().map(|r| ModuleHash(r.module))).collect();
    let mut missing: Vec<ModuleHash> = needed.iter().copied().filter(|h| engine.module(h).is_none()).collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    // Modules were given and none is one the snapshot was taken of.
    if let Some(want) = missing.first()
        && !given_hashes.is_empty()
        && !given_hashes.iter().any(|g| needed.contains(g))
    {
        if let [got] = given_hashes.as_slice() {
            return Err(snapshot_format::FormatError::WrongModule { snapshot: want.to_hex(), module: got.to_hex() }.into());
        }
        let given: Vec<String> =
            given.iter().zip(&given_hashes).map(|(p, g)| format!("{} ({})", p.display(), g.to_hex())).collect();
        bail!("the snapshot was taken of module {want}; none of the --module files is it: {}", given.join(", "));
    }
    for h in &missing {
        if let Some((name, bytes)) = host::node::built_guest(h) {
            engine.load(&bytes).with_context(|| format!("cannot load the built guest {name}"))?;
        }
    }
    if let Some(h) = missing.iter().find(|h| engine.module(h).is_none()) {
        if given.is_empty() {
            bail!("the snapshot needs module {h}, which is not among the built guests: pass it with --module FILE");
        }
        bail!("the snapshot needs module {h} too, which neither the --module files nor the built guests are");
    }
    Ok(())
}

/// A snapshot's creation time as an RFC 3339 UTC date (milliseconds),
/// or the raw number if it is no date a system clock gives.
fn created(unix_ms: u64) -> String {
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(unix_ms)) {
        Some(t) if unix_ms < 253_402_300_800_000 => humantime::format_rfc3339_millis(t).to_string(),
        _ => format!("{unix_ms} ms after the Unix epoch (not a date)"),
    }
}

/// A chain is one full snapshot, then deltas each on the one before it:
/// what breaks that is said with the file's name.
fn check_chain(paths: &[PathBuf], files: &[SnapshotFile]) -> anyhow::Result<()> {
    let links: Vec<_> = files.iter().map(|f| (f.header().id, f.header().kind)).collect();
    let Some((i, why)) = chain_break(&links) else { return Ok(()) };
    let path = paths[i].display();
    match why {
        ChainBreak::DeltaFirst { base } => bail!("{path} is a delta on snapshot {base}: give its full base snapshot before it"),
        ChainBreak::FullAfter => bail!(
            "{path} is a full snapshot, but it follows {}: a chain is one full snapshot, then deltas each on the one \
             before it (restore a full snapshot alone, or give its deltas after it)",
            paths[i - 1].display()
        ),
        ChainBreak::OtherBase { expected, found } => bail!(
            "{path} is a delta on snapshot {expected}, but the file before it, {}, is snapshot {found}",
            paths[i - 1].display()
        ),
    }
}

/// `host restore`.
pub(crate) fn restore(engine_args: &EngineArgs, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.data_dir {
        if !args.messages.is_empty() || args.snapshot.is_some() || !args.module.is_empty() {
            bail!("with --data-dir, restore takes only snapshot files (and --lazy); talk to the restored reactors with `host call`");
        }
        return super::node::restore_live(dir, &args.snapshots, args.lazy);
    }
    let engine = engine_args.engine()?;
    let files = args
        .snapshots
        .iter()
        .map(|p| SnapshotFile::open(p, abi::ABI_VERSION).with_context(|| format!("cannot use {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_chain(&args.snapshots, &files)?;
    load_modules(&engine, &files, &args.module)?;
    let mut rt = Shard::new(engine, engine_args.shard_config()?);
    let options = RestoreOptions {
        load: if args.lazy { Load::Lazy } else { Load::Eager },
        verify: !args.lazy && !args.no_verify,
        foreign: false,
    };
    let started = Instant::now();
    let restored = rt.restore_files(&files, options).context("restore failed")?;
    let elapsed = started.elapsed();
    let memory: u64 = restored.iter().filter_map(|&a| rt.memory_size(a)).map(|s| s as u64).sum();
    eprintln!(
        "restored {} reactor(s) ({:.1} MiB of memory, {}{}) in {:.2?}: {}",
        restored.len(),
        mib(memory),
        match (args.lazy, files.iter().any(|f| !f.mappable())) {
            (true, true) => "decompressed: a compressed snapshot is never mapped lazily",
            (true, false) => "lazily mapped",
            (false, true) => "decompressed",
            (false, false) => "copied",
        },
        if options.verify { ", checksum verified" } else { "" },
        elapsed,
        restored.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "),
    );
    let target = match (args.to, restored.as_slice()) {
        (Some(a), _) if restored.contains(&a) => a,
        (Some(a), _) => bail!("--to {a}: no such reactor in the snapshot"),
        (None, [one]) => *one,
        (None, _) if args.messages.is_empty() && args.snapshot.is_none() => return Ok(ExitCode::SUCCESS),
        (None, _) => bail!("the snapshot holds {} reactors: say which with --to ADDRESS", restored.len()),
    };
    // Messages from --send, else one per line of standard input unless it
    // is a terminal (as `host run` takes them).
    let from_stdin = args.messages.is_empty() && !std::io::IsTerminal::is_terminal(&std::io::stdin());
    let talked = if !args.messages.is_empty() || from_stdin {
        talk(&mut rt, target, &args.messages, args.oneway)?
    } else {
        Talked::default()
    };
    if talked.reactor_failed {
        return Ok(ExitCode::FAILURE);
    }
    if let Some(path) = &args.snapshot {
        save(&mut rt, target, path, args.compress)?;
    }
    Ok(talked.exit_code())
}

/// `host inspect`.
pub(crate) fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let path = &args.file;
    let file = SnapshotFile::open(path, abi::ABI_VERSION)
        .with_context(|| format!("{} is not a usable snapshot", path.display()))?;
    let h = file.header();
    let meta = file.meta();
    println!("file       {} ({:.1} MiB)", path.display(), mib(h.file_len()));
    println!("format     version {}, reactor ABI {}, page size {}", h.format_version, h.abi_version, h.page_size);
    match h.kind {
        Kind::Full => println!("kind       full"),
        Kind::Delta { base } => println!("kind       delta on {base}"),
    }
    println!("id         {}", h.id);
    println!("created    {}", created(meta.created_unix_ms));
    match h.stored {
        Some(st) => println!(
            "sections   data {:.1} MiB, stored LZ4-compressed in {:.1} MiB ({} frames of {} KiB), metadata {} bytes",
            mib(h.data_len),
            mib(st.stored_len),
            h.data_len.div_ceil(u64::from(st.frame_len)),
            st.frame_len / 1024,
            h.meta_len
        ),
        None => println!("sections   data {:.1} MiB, metadata {} bytes", mib(h.data_len), h.meta_len),
    }
    println!("reactors   {}", meta.reactors.len());
    let ps = snapshot_format::PAGE_SIZE as u64;
    for r in &meta.reactors {
        let stored: u64 = r.runs.iter().filter(|run| run.data.is_some()).map(|run| run.pages * ps).sum();
        println!(
            "  {:<10} module {}  memory {:.1} MiB  stored {:.1} MiB in {} runs  globals {}  queued messages {}  blobs {}",
            Address(r.address).to_string(),
            &hex::encode(r.module)[..16],
            mib(r.memory_size),
            mib(stored),
            r.runs.len(),
            r.globals.len(),
            r.inbox.len(),
            r.blobs.len(),
        );
    }
    println!("blobs      {}", meta.blobs.len());
    for b in &meta.blobs {
        println!("  {:#x}  {:.1} MiB", b.tag, mib(b.len));
    }
    if args.no_verify {
        println!("check      header and metadata ok; page data not checked (--no-verify)");
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    match file.verify_data(&mut progress("checking")) {
        Ok(()) => {
            let t = started.elapsed();
            println!(
                "check      ok: header, metadata and page data checksums match ({:.2} GB/s)",
                h.data_len as f64 / t.as_secs_f64().max(1e-9) / 1e9
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("check      FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
