//! Erlang/OTP as a baseline measured in the same run: the runtime users of
//! an actor system would otherwise pick (Debian's `erlang-nox`). If `erl`
//! is missing, it is installed (`apt-get install erlang-nox`, as root) and
//! the bench says so; without it, the Erlang figures are left out with a
//! note instead of failing the scenario.
//!
//! One `escript` run (compiled, `-mode(compile)`: not interpreted)
//! measures, on this machine:
//! - **spawn**: `N` processes spawned one after another, each left waiting
//!   in `receive` (alive), time per spawn;
//! - **memory per idle process**: `erlang:memory(processes)` after the
//!   spawns minus before, per process;
//! - **local request/response**: a process sends `{self(), K}` to an echo
//!   process and waits for `K` back, 100,000 times, time per round trip.
#![forbid(unsafe_code)]

use crate::harness::progress;
use anyhow::{Context, Result, bail, ensure};
use std::process::Command;

/// What Erlang did in this run.
#[derive(Clone, Debug)]
pub(crate) struct Erlang {
    pub(crate) spawn_us: f64,
    pub(crate) bytes_per_process: f64,
    pub(crate) round_trip_us: f64,
    pub(crate) otp: String,
}

const SCRIPT: &str = r#"#!/usr/bin/env escript
%%! +P 4000000
-mode(compile).
main([NStr]) ->
    N = list_to_integer(NStr),
    erlang:garbage_collect(),
    M0 = erlang:memory(processes),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = spawn_many(N, []),
    T1 = erlang:monotonic_time(nanosecond),
    M1 = erlang:memory(processes),
    Echo = spawn(fun echo/0),
    R = 100000,
    pingpong(Echo, 1000),
    T2 = erlang:monotonic_time(nanosecond),
    pingpong(Echo, R),
    T3 = erlang:monotonic_time(nanosecond),
    io:format("spawn_ns ~w~nbytes_per_process ~w~nrtt_ns ~w~notp ~s~nalive ~w~n",
              [(T1 - T0) / N, (M1 - M0) / N, (T3 - T2) / R, erlang:system_info(otp_release), length(Pids)]),
    [exit(P, kill) || P <- Pids],
    ok.

spawn_many(0, Acc) -> Acc;
spawn_many(K, Acc) -> spawn_many(K - 1, [spawn(fun idle/0) | Acc]).

idle() -> receive stop -> ok end.

echo() -> receive {From, X} -> From ! X, echo() end.

pingpong(_, 0) -> ok;
pingpong(E, K) -> E ! {self(), K}, receive K -> pingpong(E, K - 1) end.
"#;

/// Makes sure `escript` runs here, installing `erlang-nox` if it is missing.
pub(crate) fn ensure_installed() -> Result<()> {
    let present = || Command::new("escript").arg("-h").output().is_ok();
    if present() {
        return Ok(());
    }
    progress("erlang: `escript` not found; installing erlang-nox (apt-get, as root)");
    let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "erlang-nox"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
    ensure!(ok && present(), "erlang-nox could not be installed (apt-get needs root and a package mirror)");
    Ok(())
}

/// Runs the Erlang measurements with `n` processes.
pub(crate) fn measure(n: usize) -> Result<Erlang> {
    ensure_installed()?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("baseline.escript");
    std::fs::write(&script, SCRIPT)?;
    progress(format!("erlang: {n} processes spawned, memory per process, local round trips"));
    let out = Command::new("escript").arg(&script).arg(n.to_string()).output().context("running escript")?;
    if !out.status.success() {
        bail!("the Erlang baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .with_context(|| format!("the Erlang baseline printed no `{name}`: {text}"))
    };
    let num = |name: &str| -> Result<f64> { field(name)?.parse::<f64>().with_context(|| format!("`{name}` is not a number: {text}")) };
    let alive = num("alive")?;
    ensure!(alive as usize == n, "only {alive} of {n} Erlang processes were alive");
    Ok(Erlang {
        spawn_us: num("spawn_ns")? / 1e3,
        bytes_per_process: num("bytes_per_process")?,
        round_trip_us: num("rtt_ns")? / 1e3,
        otp: field("otp")?,
    })
}

/// [`measure`], or `None` with the reason (for a note) when Erlang cannot
/// run here.
pub(crate) fn try_measure(n: usize) -> (Option<Erlang>, Option<String>) {
    match measure(n) {
        Ok(e) => (Some(e), None),
        Err(e) => (None, Some(format!("no Erlang baseline: {e:#}"))),
    }
}
