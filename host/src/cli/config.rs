//! `host node --config FILE`: a node's settings from a TOML file as well as
//! from flags, so a cluster's nodes can share one file. Its keys are the
//! long flags of `host node` and the global ones (`shards = 2`,
//! `seed = ["10.0.0.1:7000"]`, `durable = "synced"`, `insecure-plaintext =
//! true`, `memory-cap = 512`); a flag given on the command line wins over
//! the file. An unknown key, a value of the wrong kind or a file that is
//! not TOML stops the node with the file, the key and why.
//!
//! How: the command line is parsed once leniently to find `--config` and
//! which flags it gave; each key of the file whose flag it did not give is
//! appended to it as that flag; clap then parses the result as usual (and
//! checks every value as it checks a flag's).
use anyhow::Context as _;
use clap::CommandFactory as _;
use clap::parser::ValueSource;
use reactor_runtime::local_fs;
use std::ffi::OsString;
use std::path::PathBuf;

/// Most bytes of a settings file.
const MAX_FILE: u64 = 1 << 20;

/// `argv` with the settings of `host node --config FILE` that its flags
/// did not give appended as flags; `argv` itself for anything else.
pub(crate) fn apply(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let cmd = super::Cli::command();
    // Lenient: a flag the file gives (`--id`) may be missing here.
    let Ok(matches) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else { return Ok(argv) };
    let Some(("node", node)) = matches.subcommand() else { return Ok(argv) };
    let Some(path) = node.get_one::<PathBuf>("config").cloned() else { return Ok(argv) };
    // It says how the node runs: a file others could change is refused.
    let (bytes, _) =
        local_fs::read_file(&path, "the settings file", MAX_FILE, local_fs::Access::NotWritableByOthers).map_err(anyhow::Error::new)?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the settings file {} is not UTF-8 text", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("the settings file {} is not TOML", path.display()))?;
    let node_cmd = cmd.find_subcommand("node").expect("`host node` exists");
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let bad = |why: String| anyhow::anyhow!("the settings file {}: `{key}`: {why}", path.display());
        if key == "config" {
            return Err(bad("a settings file cannot name another".into()));
        }
        let found = node_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .map(|a| (a, node))
            .or_else(|| cmd.get_arguments().find(|a| a.is_global_set() && a.get_long() == Some(key.as_str())).map(|a| (a, &matches)));
        let Some((arg, given)) = found else {
            let known: Vec<&str> = node_cmd.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "config" && *l != "help").collect();
            return Err(bad(format!("no such setting (the settings are the long flags of `host node`: {})", known.join(", "))));
        };
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            // The flag wins.
            continue;
        }
        let flag = format!("--{key}");
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    extra.push(flag.into());
                }
            }
            _ if !takes_value => return Err(bad("a switch: give `true` or `false`".into())),
            toml::Value::Array(items) => {
                for item in items {
                    extra.push(flag.clone().into());
                    extra.push(scalar(item).map_err(|w| bad(format!("in the list: {w}")))?.into());
                }
            }
            v => {
                extra.push(flag.into());
                extra.push(scalar(v).map_err(bad)?.into());
            }
        }
    }
    let mut argv = argv;
    argv.extend(extra);
    Ok(argv)
}

/// A TOML scalar as a flag's value.
fn scalar(v: &toml::Value) -> Result<String, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => return Err(format!("a {}, where a string, a number or a boolean was expected", other.type_str())),
    })
}
