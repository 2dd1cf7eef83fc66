//! Erlang distribution as the `partisan` scenario's outside baseline: two
//! distributed Erlang nodes in the lab's namespaces (node `a@ADDR_A` in
//! `rsb-a`, node `b@ADDR_B` in `rsb-b`), over the same calibrated link as
//! our nodes, playing the same games.
//!
//! Distributed Erlang puts all traffic between two nodes on one TCP
//! connection (since OTP 22 it cuts large messages into fragments, so a
//! small message can pass between the fragments of a large one in the
//! node's output queue, but not past what the connection's socket buffer
//! and the link already hold). That is the design Partisan (USENIX ATC '19)
//! measured its parallel, affinitized connections against.
//!
//! What runs:
//! - `epmd` in each namespace (in the foreground, as a child of this
//!   process, so it is killed by its id at the end; a node would otherwise
//!   start a detached `epmd -daemon` of its own);
//! - node b: `erl -name b@ADDR_B -noinput` with the driver module on its
//!   code path (echo partners are spawned on it from node a);
//! - node a: `erl -name a@ADDR_A -noshell -eval 'pbench:main()'`, the
//!   driver, which pings b and then reads one command a line on its stdin
//!   and answers on its stdout (a block of lines ending in `done`).
//!
//! Both nodes keep Erlang's defaults (one scheduler per core, the default
//! distribution buffer busy limit of 1 MB, `nodelay`); the distribution
//! port is pinned to 9100 (`-kernel inet_dist_listen_min/max`). The cookie
//! is fresh per run.
//!
//! The games (`pbench.erl`, compiled with `erlc` into a temp dir):
//! - **echo** `BYTES PAIRS ROUNDS`: PAIRS echo partners spawned on b and
//!   PAIRS pingers on a; each pinger builds its payload (a per-pair
//!   pattern of BYTES), waits until all are ready, then plays ROUNDS
//!   rounds with one in flight: it sends `{self(), N, Payload}`, the
//!   partner sends the binary it received back, and the pinger times the
//!   round (`erlang:monotonic_time(microsecond)` around send and receive)
//!   and then checks the echo equal to its payload. The driver's wall time
//!   runs from the start signal to the last pinger's report. It prints
//!   every round's latency, the rounds, mismatches and bytes sent and
//!   received.
//! - **hol** `PAIRS ROUNDS BULK WINDOW SETTLE_MS`: 64-byte echo rounds of
//!   PAIRS pairs alone; then one more pair echoes BULK-byte payloads
//!   continuously with WINDOW in flight, and after SETTLE_MS the same
//!   64-byte rounds run again beside it; the bulk pinger reports how many
//!   bulk rounds it completed (and whether they came back equal).
//!
//! Every process this module starts is a child it holds (`ip netns exec`
//! execs the program, and `erl` execs the emulator, so the child's id is
//! the emulator's): all are killed, by id, when [`ErlNodes`] is stopped or
//! dropped, on error too; then whatever the emulators left in the two
//! namespaces (`erl_child_setup`, `inet_gethost`, a stray `epmd`) is
//! killed by id as well.
#![forbid(unsafe_code)]

use crate::harness::progress;
use crate::netlab::{ADDR_A, ADDR_B, NS_A, NS_B};
use crate::partisan::{Outcome, game_timeout};
use anyhow::{Context as _, Result, bail, ensure};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The driver module, loaded on both nodes.
const DRIVER: &str = r#"-module(pbench).
-export([main/0, echo/0]).

%% Node a: connects to node b (named by the first plain argument), then
%% answers one command a line on stdin with a block of lines ending in
%% `done`.
main() ->
    [BStr | _] = init:get_plain_arguments(),
    B = list_to_atom(BStr),
    connect(B, 300),
    io:format("ready ~s ~s~n", [erlang:system_info(otp_release), erlang:system_info(version)]),
    loop(B).

connect(B, 0) ->
    io:format("error cannot reach ~s~n", [B]),
    halt(2);
connect(B, N) ->
    case net_adm:ping(B) of
        pong -> ok;
        pang -> timer:sleep(100), connect(B, N - 1)
    end.

loop(B) ->
    case io:get_line("") of
        eof -> halt(0);
        {error, _} -> halt(0);
        Line ->
            case string:lexemes(string:trim(Line), " ") of
                ["echo", Bytes, Pairs, Rounds] ->
                    print("echo", Bytes, play(B, i(Bytes), i(Pairs), i(Rounds)));
                ["hol", Pairs, Rounds, Bulk, Window, Settle] ->
                    hol(B, i(Pairs), i(Rounds), i(Bulk), i(Window), i(Settle));
                ["quit"] ->
                    halt(0);
                Other ->
                    io:format("error unknown command ~p~n", [Other])
            end,
            io:format("done~n"),
            loop(B)
    end.

i(S) -> list_to_integer(S).

%% Pairs pingers here, their echo partners on B, Rounds rounds each of a
%% Bytes payload, one in flight; all start at once.
play(B, Bytes, Pairs, Rounds) ->
    Partners = [spawn(B, ?MODULE, echo, []) || _ <- lists:seq(1, Pairs)],
    Self = self(),
    Pingers = [spawn(fun() -> pinger(Self, P, K, Bytes, Rounds) end)
               || {K, P} <- lists:zip(lists:seq(1, Pairs), Partners)],
    [receive {ready, Pg} -> ok end || Pg <- Pingers],
    T0 = erlang:monotonic_time(microsecond),
    [Pg ! go || Pg <- Pingers],
    Results = [receive {done, Pg, Res} -> Res end || Pg <- Pingers],
    Wall = erlang:monotonic_time(microsecond) - T0,
    [P ! stop || P <- Partners],
    {Wall, Results}.

pinger(Parent, Partner, K, Bytes, Rounds) ->
    Payload = payload(K, Bytes),
    Parent ! {ready, self()},
    receive go -> ok end,
    Parent ! {done, self(), rounds(Partner, Payload, Rounds, [], 0, 0, 0)}.

rounds(_, _, 0, Lats, Bad, Sent, Recv) -> {Lats, Bad, Sent, Recv};
rounds(P, Payload, N, Lats, Bad, Sent, Recv) ->
    T0 = erlang:monotonic_time(microsecond),
    P ! {self(), N, Payload},
    receive
        {N, Echo} ->
            T1 = erlang:monotonic_time(microsecond),
            Bad1 = case Echo =:= Payload of true -> Bad; false -> Bad + 1 end,
            rounds(P, Payload, N - 1, [T1 - T0 | Lats], Bad1,
                   Sent + byte_size(Payload), Recv + byte_size(Echo))
    end.

echo() ->
    receive
        {From, N, Bin} -> From ! {N, Bin}, echo();
        stop -> ok
    end.

%% Bytes bytes of a pattern that depends on K.
payload(K, Bytes) ->
    Block = << <<((K * 131 + I * 7) band 255)>> || I <- lists:seq(0, 4095) >>,
    Whole = binary:copy(Block, Bytes div 4096),
    <<Whole/binary, (binary:part(Block, 0, Bytes rem 4096))/binary>>.

print(Name, Bytes, {Wall, Results}) ->
    Rounds = lists:sum([length(L) || {L, _, _, _} <- Results]),
    Bad = lists:sum([X || {_, X, _, _} <- Results]),
    Sent = lists:sum([X || {_, _, X, _} <- Results]),
    Recv = lists:sum([X || {_, _, _, X} <- Results]),
    io:format("result ~s bytes=~s wall_us=~w rounds=~w mismatches=~w sent=~w received=~w~n",
              [Name, Bytes, Wall, Rounds, Bad, Sent, Recv]),
    io:format("lat ~s~s~n", [Name, [[$\s | integer_to_list(L)] || {Ls, _, _, _} <- Results, L <- Ls]]).

%% 64-byte rounds alone, then beside a bulk stream of Bulk-byte echoes
%% with Window in flight.
hol(B, Pairs, Rounds, Bulk, Window, Settle) ->
    print("alone", "64", play(B, 64, Pairs, Rounds)),
    BP = spawn(B, ?MODULE, echo, []),
    Self = self(),
    BulkPinger = spawn(fun() -> bulk_start(Self, BP, Bulk, Window) end),
    receive {bulk_ready, BulkPinger} -> ok end,
    timer:sleep(Settle),
    print("loaded", "64", play(B, 64, Pairs, Rounds)),
    BulkPinger ! {stop, self()},
    receive
        {bulk_done, BulkPinger, N, Bad} -> io:format("bulk rounds=~w mismatches=~w~n", [N, Bad])
    after 60000 ->
        io:format("bulk rounds=unknown~n")
    end,
    BP ! stop.

bulk_start(Parent, P, Bytes, Window) ->
    Payload = payload(0, Bytes),
    [P ! {self(), K, Payload} || K <- lists:seq(1, Window)],
    Parent ! {bulk_ready, self()},
    bulk(P, Payload, Window + 1, 0, 0).

bulk(P, Payload, Next, Done, Bad) ->
    receive
        {stop, From} ->
            From ! {bulk_done, self(), Done, Bad};
        {_N, Echo} ->
            P ! {self(), Next, Payload},
            Bad1 = case Echo =:= Payload of true -> Bad; false -> Bad + 1 end,
            bulk(P, Payload, Next + 1, Done + 1, Bad1)
    end.
"#;

/// The distribution port both nodes listen on.
const DIST_PORT: u16 = 9100;

/// The compiled driver, ready to start nodes with.
#[derive(Debug)]
pub(crate) struct ErlDriver {
    dir: tempfile::TempDir,
}

impl ErlDriver {
    /// Installs Erlang if it is missing and compiles the driver module.
    pub(crate) fn prepare() -> Result<Self> {
        crate::erlang::ensure_installed()?;
        for tool in ["erl", "erlc", "epmd"] {
            ensure!(which(tool), "`{tool}` is not on the PATH (erlang-base)");
        }
        let dir = tempfile::Builder::new().prefix("partisan-erl-").tempdir()?;
        let src = dir.path().join("pbench.erl");
        std::fs::write(&src, DRIVER)?;
        let out = Command::new("erlc").arg("-o").arg(dir.path()).arg(&src).output().context("running erlc")?;
        ensure!(
            out.status.success(),
            "erlc pbench.erl failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { dir })
    }

    /// Starts epmd and a node in each namespace; node a's driver connects
    /// to node b.
    pub(crate) fn start(&self) -> Result<ErlNodes> {
        let run = tempfile::Builder::new().prefix("run-").tempdir_in(self.dir.path())?;
        let (_never, lines) = mpsc::channel();
        let mut nodes = ErlNodes { children: Vec::new(), stdin: None, lines, run, otp: String::new() };
        let cookie = format!(
            "partisan{}x{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        );
        for ns in [NS_A, NS_B] {
            let log = nodes.log(&format!("epmd-{ns}"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", ns, "epmd", "-port", "4369"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting epmd in {ns}"))?;
            nodes.children.push((format!("epmd in {ns}"), child));
        }
        for ns in [NS_A, NS_B] {
            wait_epmd(ns)?;
        }
        let code = self.dir.path().display().to_string();
        let dist = DIST_PORT.to_string();
        let node_args = |name: &str| -> Vec<String> {
            [
                "-name",
                name,
                "-setcookie",
                &cookie,
                "-pa",
                &code,
                "-kernel",
                "inet_dist_listen_min",
                &dist,
                "inet_dist_listen_max",
                &dist,
            ]
            .map(String::from)
            .to_vec()
        };
        let name_b = format!("b@{ADDR_B}");
        let log = nodes.log("node-b")?;
        let b = Command::new("ip")
            .args(["netns", "exec", NS_B, "erl"])
            .args(node_args(&name_b))
            .arg("-noinput")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting Erlang node b")?;
        nodes.children.push(("Erlang node b".into(), b));
        let log = nodes.log("node-a")?;
        let mut a = Command::new("ip")
            .args(["netns", "exec", NS_A, "erl"])
            .args(node_args(&format!("a@{ADDR_A}")))
            .args(["-noshell", "-eval", "pbench:main()", "-extra", &name_b])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting Erlang node a")?;
        nodes.stdin = a.stdin.take();
        let stdout = a.stdout.take().context("node a has no stdout")?;
        nodes.children.push(("Erlang node a".into(), a));
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("erl-a-stdout".into()).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })?;
        nodes.lines = rx;
        // Node a pings b for up to 30 s (b registers with its epmd first).
        let first = nodes.next_line(Instant::now() + Duration::from_secs(45))?;
        match first.strip_prefix("ready ") {
            Some(v) => nodes.otp = v.trim().to_owned(),
            None => bail!("Erlang node a did not come up: {first}\n{}", nodes.logs()),
        }
        Ok(nodes)
    }
}

/// Whether `tool` is an executable on the PATH.
fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Waits (up to 10 s) until `epmd -names` in `ns` finds epmd running.
fn wait_epmd(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip").args(["netns", "exec", ns, "epmd", "-names"]).output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("up and running") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "epmd in {ns} did not answer: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two running Erlang nodes and their epmds. Dropping it kills them all.
#[derive(Debug)]
pub(crate) struct ErlNodes {
    /// What runs, in start order (epmds, node b, node a).
    children: Vec<(String, Child)>,
    stdin: Option<ChildStdin>,
    /// Node a's stdout, line by line.
    lines: mpsc::Receiver<String>,
    /// Logs of this pair of nodes.
    run: tempfile::TempDir,
    /// OTP release and emulator version, as node a printed them.
    pub(crate) otp: String,
}

/// What the head-of-line game found on Erlang.
#[derive(Debug)]
pub(crate) struct ErlHol {
    pub(crate) alone: Outcome,
    pub(crate) loaded: Outcome,
    /// Bulk rounds completed while the small pairs ran (the `bulk` line).
    pub(crate) bulk: String,
}

impl ErlNodes {
    fn log(&self, name: &str) -> Result<std::fs::File> {
        let p = self.run.path().join(format!("{name}.log"));
        std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
    }

    /// The tails of the nodes' logs, for an error message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["node-a", "node-b", "epmd-rsb-a", "epmd-rsb-b"] {
            out.push_str(&format!("{name}.log:\n{}\n", tail(&self.run.path().join(format!("{name}.log")))));
        }
        out
    }

    fn next_line(&self, deadline: Instant) -> Result<String> {
        match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => Ok(l),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("Erlang node a did not answer in time\n{}", self.logs()),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("Erlang node a exited\n{}", self.logs()),
        }
    }

    /// Sends one command to the driver and returns its answer's lines (up
    /// to `done`).
    fn command(&mut self, cmd: &str, timeout: Duration) -> Result<Vec<String>> {
        let stdin = self.stdin.as_mut().context("node a's stdin is closed")?;
        writeln!(stdin, "{cmd}").and_then(|()| stdin.flush()).context("writing to Erlang node a")?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let line = self.next_line(deadline).with_context(|| format!("Erlang `{cmd}`"))?;
            if line == "done" {
                return Ok(out);
            }
            if line.starts_with("error") {
                bail!("Erlang `{cmd}`: {line}\n{}", self.logs());
            }
            out.push(line);
        }
    }

    /// `pairs` pingers on a and echo partners on b play `rounds` rounds of
    /// a `bytes`-byte payload each, one in flight per pair.
    pub(crate) fn echo(&mut self, bytes: u32, pairs: usize, rounds: u64) -> Result<Outcome> {
        // The game's own limit, plus time to spawn the processes.
        let timeout = game_timeout(pairs, rounds, bytes) + Duration::from_secs(30);
        let lines = self.command(&format!("echo {bytes} {pairs} {rounds}"), timeout)?;
        let o = outcome(&lines, "echo")?;
        ensure!(
            o.rounds() == pairs as u64 * rounds,
            "Erlang played {} of {} rounds",
            o.rounds(),
            pairs as u64 * rounds
        );
        Ok(o)
    }

    /// 64-byte rounds of `pairs` pairs alone and beside a stream of
    /// `bulk`-byte echoes with `window` in flight, started `settle` before.
    pub(crate) fn head_of_line(
        &mut self,
        pairs: usize,
        rounds: u64,
        bulk: u32,
        window: u32,
        settle: Duration,
    ) -> Result<ErlHol> {
        let timeout = game_timeout(pairs, 2 * rounds, 64) + game_timeout(1, 100, bulk) + settle;
        let lines = self.command(&format!("hol {pairs} {rounds} {bulk} {window} {}", settle.as_millis()), timeout)?;
        let alone = outcome(&lines, "alone")?;
        let loaded = outcome(&lines, "loaded")?;
        for o in [&alone, &loaded] {
            ensure!(
                o.rounds() == pairs as u64 * rounds,
                "Erlang played {} of {} rounds",
                o.rounds(),
                pairs as u64 * rounds
            );
        }
        let bulk = lines
            .iter()
            .find_map(|l| l.strip_prefix("bulk "))
            .map(str::to_owned)
            .context("the Erlang head-of-line game printed no bulk line")?;
        ensure!(
            !bulk.contains("mismatches=") || bulk.ends_with("mismatches=0"),
            "Erlang bulk echoes came back wrong: {bulk}"
        );
        Ok(ErlHol { alone, loaded, bulk })
    }

    /// Asks node a to quit, then kills every process (by id).
    pub(crate) fn stop(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        // Closing stdin makes the driver halt too; give it a moment.
        if let Some((_, a)) = self.children.last_mut() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(a.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Drop kills the rest.
    }
}

impl Drop for ErlNodes {
    fn drop(&mut self) {
        self.stdin.take();
        // Nodes first, then the epmds.
        while let Some((what, mut c)) = self.children.pop() {
            if matches!(c.try_wait(), Ok(None))
                && let Err(e) = c.kill()
            {
                progress(format!("partisan: killing {what} ({}): {e}", c.id()));
            }
            let _ = c.wait();
        }
        let swept = sweep();
        if !swept.is_empty() {
            progress(format!("partisan: killed what the Erlang nodes left in the lab: {}", swept.join(", ")));
        }
    }
}

/// Kills (by id) the processes an Erlang node may leave in the lab's
/// namespaces once its emulator is gone; returns `name(pid)` of each.
fn sweep() -> Vec<String> {
    const LEFT: [&str; 5] = ["beam.smp", "epmd", "erl_child_setup", "inet_gethost", "erlexec"];
    let mut killed = Vec::new();
    for ns in [NS_A, NS_B] {
        let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else { continue };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = comm.trim();
            if LEFT.contains(&comm) && Command::new("kill").args(["-9", pid]).status().is_ok_and(|s| s.success()) {
                killed.push(format!("{comm}({pid})"));
            }
        }
    }
    killed
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The `result NAME …` and `lat NAME …` lines of one game.
fn outcome(lines: &[String], name: &str) -> Result<Outcome> {
    let result = lines
        .iter()
        .find_map(|l| l.strip_prefix("result ")?.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("the Erlang driver printed no `result {name}`: {lines:?}"))?;
    let field = |k: &str| -> Result<u64> {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .with_context(|| format!("no `{k}` in `{result}`"))?
            .parse()
            .with_context(|| format!("`{k}` is not a number in `{result}`"))
    };
    let lat = lines
        .iter()
        .find_map(|l| l.strip_prefix("lat ")?.strip_prefix(name))
        .with_context(|| format!("the Erlang driver printed no `lat {name}`"))?;
    let round_us: Vec<u32> = lat
        .split_whitespace()
        .map(|v| v.parse::<u64>().map(|u| u.min(u64::from(u32::MAX)) as u32))
        .collect::<Result<_, _>>()
        .with_context(|| format!("a round time of `{name}` is not a number"))?;
    let (rounds, mismatches, sent, received) =
        (field("rounds")?, field("mismatches")?, field("sent")?, field("received")?);
    ensure!(mismatches == 0, "{mismatches} of {rounds} Erlang echoes came back wrong");
    ensure!(round_us.len() as u64 == rounds, "{} round times for {rounds} rounds", round_us.len());
    ensure!(received >= sent, "Erlang echoes carried {received} of {sent} bytes");
    Ok(Outcome::new(Duration::from_micros(field("wall_us")?), round_us, sent + received, rounds))
}
