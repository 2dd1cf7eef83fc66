//! The `host` command, run as a user would.
use std::process::{Command, Output};

fn host(args: &[&str]) -> Output {
    let cache = crate::nodes::test_cache();
    Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .output()
        .expect("host binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_sends_json_requests_and_prints_replies() {
    let kv = example_guests::path("kv");
    let out = host(&[
        "run",
        kv.to_str().unwrap(),
        r#"{"Put":{"key":"a","value":"hello"}}"#,
        r#"{"Get":{"key":"a"}}"#,
        r#"{"Stats":null}"#,
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [r#"{"Value":null}"#, r#"{"Value":"hello"}"#, r#"{"Stats":{"keys":1,"bytes":6}}"#], "{stdout}");
}

/// A message that is not JSON, and a request the reactor cannot decode
/// (answered with an error reply), are errors: said on standard error, not
/// printed as replies, and the exit code is non-zero; the messages after
/// them are still sent.
#[test]
fn run_exits_non_zero_when_a_request_fails() {
    let kv = example_guests::path("kv");
    let out = host(&[
        "run",
        kv.to_str().unwrap(),
        r#"{"Put":{"key":"a","value":"hello"}}"#,
        "this is not json",
        r#"{"NoSuchRequest":1}"#,
        r#"{"Get":{"key":"a"}}"#,
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [r#"{"Value":null}"#, r#"{"Value":"hello"}"#], "{stdout}");
    assert!(stderr.contains("message 2: not valid JSON"), "{stderr}");
    assert!(stderr.contains("message 3: reactor #0:1 answered with an error: undecodable request: json: unknown variant `NoSuchRequest`"), "{stderr}");
    assert!(stderr.contains("2 message(s) failed"), "{stderr}");
}

/// `--log-json`: every log line on standard error is a JSON object with
/// its level, message and fields (the reactor's address among them).
#[test]
fn logs_can_be_json() {
    let kv = example_guests::path("kv");
    let out = host(&["--log-json", "--log", "info", "run", kv.to_str().unwrap(), r#"{"Bogus":1}"#]);
    let stderr = text(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let warn = lines
        .iter()
        .find(|v| v["level"] == "WARN" && v["fields"]["message"].as_str().is_some_and(|m| m.contains("undecodable")))
        .unwrap_or_else(|| panic!("no JSON warning about the undecodable message: {stderr}"));
    assert_eq!(warn["fields"]["reactor"], serde_json::json!("#0:1"), "{warn}");
    // At debug, what is logged during a call into a reactor is inside its
    // `reactor` span.
    let out = host(&["--log-json", "--log", "debug", "run", kv.to_str().unwrap(), r#"{"Bogus":1}"#]);
    let stderr = text(&out.stderr);
    let in_span = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"].as_str().is_some_and(|m| m.contains("undecodable")))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(in_span["span"]["name"], serde_json::json!("reactor"), "{in_span}");
    assert_eq!(in_span["span"]["address"], serde_json::json!("#0:1"), "{in_span}");
}

#[test]
fn run_reads_stdin_and_reports_a_failing_reactor() {
    use std::io::Write;
    let faulty = example_guests::path("faulty");
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["--no-cache", "run", faulty.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"Ok\":1}\n\n{\"Panic\":\"boom\"}\n{\"Ok\":2}\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).trim(), "2");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("failed before replying") && stderr.contains("boom"), "{stderr}");
}

#[test]
fn bad_module_and_bad_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not a module").unwrap();
    let out = host(&["check", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("not a usable reactor module") && e.contains("magic"), "{e}");

    let out = host(&["check", "/no/such/file.wasm"]);
    assert!(text(&out.stderr).contains("cannot read module file"), "{}", text(&out.stderr));

    let out = host(&["run", example_guests::path("kv").to_str().unwrap(), "--init", "{oops"]);
    assert!(text(&out.stderr).contains("--init is not valid JSON"), "{}", text(&out.stderr));

    let out = host(&["--memory-cap", "0", "run", example_guests::path("kv").to_str().unwrap()]);
    assert!(text(&out.stderr).contains("--memory-cap must be at least"), "{}", text(&out.stderr));

    let out = host(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));

    let out = host(&["check", example_guests::path("counter").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("sha256"));
}

#[test]
fn demo_runs_small() {
    // As installed (`cargo install --path host`): a copy of the binary,
    // away from the build tree, in a private mount namespace where the
    // build's guest directory is an empty tmpfs: it runs on the guests
    // compiled into it.
    let root = crate::nodes::scratch("install", "demo");
    let bin = root.join("host");
    std::fs::copy(env!("CARGO_BIN_EXE_host"), &bin).unwrap();
    let cache = crate::nodes::test_cache();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none "$1" && cd / && shift && exec "$@""#)
        .arg("sh")
        .arg(example_guests::dir())
        .arg(&bin)
        .args(["--cache-dir", cache.to_str().unwrap(), "demo", "--kv", "50", "--pairs", "20", "--seconds", "0.3", "--fill-mib", "4"])
        .output()
        .expect("unshare (util-linux) runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", text(&out.stderr));
    // 50 kv + 20 players + 10 partners the even-numbered players spawned.
    assert!(stdout.contains("reactors alive        80"), "{stdout}");
    assert!(stdout.contains("reactors failed       1"), "{stdout}");
    assert!(stdout.contains("failed as asked"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
    // The cluster part: a node stopped gracefully comes back with its kv.
    assert!(stdout.contains("at its old address with all 20000 entries"), "{stdout}");
    // Journaled: nothing answered is lost at a kill -9; a failure is
    // restarted; its post-mortem bundle replays the same failure.
    assert!(stdout.contains("not one answered call lost"), "{stdout}");
    assert!(stdout.contains("its supervisor restarted it"), "{stdout}");
    assert!(stdout.contains("failed the reactor as it did in production, with the same message and backtrace"), "{stdout}");
    // A kv moved live there and back under clients' traffic, none of whose
    // writes was lost, repeated or reordered (the demo fails otherwise).
    assert!(stdout.contains("moved live node 1 → node 2") && stdout.contains("moved live node 2 → node 1"), "{stdout}");
    assert!(stdout.contains("none lost, repeated or out of order"), "{stdout}");
    // Its meters redraw in place on a terminal only: redirected, no
    // carriage returns or terminal codes.
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn snapshot_inspect_and_restore_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("kv.snap");
    let again = dir.path().join("kv2.snap");
    let kv = example_guests::path("kv");
    let out = host(&[
        "snapshot",
        kv.to_str().unwrap(),
        "-o",
        snap.to_str().unwrap(),
        r#"{"Put":{"key":"a","value":"hello"}}"#,
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("snapshot of #0:1"), "{}", text(&out.stderr));

    let out = host(&["inspect", snap.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("kind       full") && stdout.contains("check      ok"), "{stdout}");
    // The creation time is a date (RFC 3339, UTC), not milliseconds.
    let created = stdout.lines().find_map(|l| l.strip_prefix("created    ")).unwrap_or_default();
    assert!(created.len() == 24 && created.starts_with("20") && created.ends_with('Z'), "created: {created:?}");

    for lazy in [false, true] {
        let mut args = vec!["restore", snap.to_str().unwrap(), "--send", r#"{"Get":{"key":"a"}}"#];
        if lazy {
            args.push("--lazy");
        } else {
            args.extend(["-o", again.to_str().unwrap()]);
        }
        let out = host(&args);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), r#"{"Value":"hello"}"#);
    }
    let out = host(&["inspect", again.to_str().unwrap(), "--no-verify"]);
    assert!(out.status.success() && text(&out.stdout).contains("queued messages 0"), "{}", text(&out.stdout));

    // A damaged page: inspect says so and fails; restore refuses it.
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[4096 + 7] ^= 0x55;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let out = host(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("page data is corrupt"), "{}", text(&out.stdout));
    let out = host(&["restore", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("page data is corrupt"), "{}", text(&out.stderr));

    // Two full snapshots are no chain: the file that breaks it is named.
    let out = host(&["restore", snap.to_str().unwrap(), again.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{} is a full snapshot, but it follows {}", again.display(), snap.display())), "{err}");
    // A file that is not there: the OS's reason, said once.
    for args in [vec!["inspect", "/nonexistent.snap"], vec!["restore", "/nonexistent.snap"], vec!["run", "/nonexistent.wasm"]] {
        let out = host(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: {err}");
    }
    // Not a snapshot at all, and a module that is not the snapshot's.
    let out = host(&["inspect", kv.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("not a reactor snapshot file"));
    let counter = example_guests::path("counter");
    let out = host(&["restore", snap.to_str().unwrap(), "--module", counter.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("snapshot was taken of module"), "{}", text(&out.stderr));
    // Two modules given, neither the snapshot's: both named, not "pass it
    // with --module".
    let pingpong = example_guests::path("pingpong");
    let out = host(&["restore", snap.to_str().unwrap(), "--module", counter.to_str().unwrap(), "--module", pingpong.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("none of the --module files is it") && err.contains("counter") && err.contains("pingpong"), "{err}");
    assert!(!err.contains("pass it with --module"), "{err}");
}

#[test]
fn compressed_snapshots_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, z, again) = (dir.path().join("p.snap"), dir.path().join("z.snap"), dir.path().join("z2.snap"));
    let kv = example_guests::path("kv");
    // About 2 MiB of JSON-like documents, one Put per line of stdin.
    let mut lines = String::new();
    for i in 0..2000 {
        let doc = format!(r#"{{\"id\":{i},\"name\":\"user {}\",\"active\":true}}"#, i % 97).repeat(16);
        lines.push_str(&format!("{{\"Put\":{{\"key\":\"doc{i:05}\",\"value\":\"{doc}\"}}}}\n"));
    }
    lines.push_str("{\"Put\":{\"key\":\"a\",\"value\":\"hello\"}}\n");
    for (path, compress) in [(&plain, false), (&z, true)] {
        let mut args = vec!["snapshot", kv.to_str().unwrap(), "-o", path.to_str().unwrap(), "--oneway"];
        if compress {
            args.push("--compress");
        }
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .arg("--cache-dir")
            .arg(crate::nodes::test_cache())
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr).contains("LZ4-compressed"), compress, "{}", text(&out.stderr));
    }
    let (zl, pl) = (std::fs::metadata(&z).unwrap().len(), std::fs::metadata(&plain).unwrap().len());
    assert!(zl * 2 < pl, "{zl} bytes compressed against {pl}");
    let out = host(&["inspect", z.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("format     version 3") && stdout.contains("stored LZ4-compressed") && stdout.contains("check      ok"), "{stdout}");
    for lazy in [false, true] {
        let mut args = vec!["restore", z.to_str().unwrap(), "--send", r#"{"Get":{"key":"a"}}"#, "-o", again.to_str().unwrap(), "--compress"];
        if lazy {
            args.push("--lazy");
        }
        let out = host(&args);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), r#"{"Value":"hello"}"#);
        if lazy {
            assert!(text(&out.stderr).contains("never mapped lazily"), "{}", text(&out.stderr));
        }
        // The snapshot of the restored reactor, compressed again, holds it.
        let out = host(&["restore", again.to_str().unwrap(), "--send", r#"{"Get":{"key":"a"}}"#]);
        assert_eq!(text(&out.stdout).trim(), r#"{"Value":"hello"}"#, "{}", text(&out.stderr));
    }
    // `--compress` without a snapshot to write is refused by the parser.
    let out = host(&["run", kv.to_str().unwrap(), "--compress", r#"{"Get":{"key":"a"}}"#]);
    assert!(!out.status.success() && text(&out.stderr).contains("--snapshot"), "{}", text(&out.stderr));
    // A damaged compressed file: inspect fails saying so; restore too.
    let mut bytes = std::fs::read(&z).unwrap();
    bytes[4096 + 300] ^= 0x55;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let out = host(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stdout).contains("corrupt"), "{}", text(&out.stdout));
    let out = host(&["restore", bad.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out.stderr).contains("corrupt"), "{}", text(&out.stderr));
}

#[test]
fn restore_reads_messages_from_standard_input() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("kv.snap");
    let kv = example_guests::path("kv");
    let out = host(&["snapshot", kv.to_str().unwrap(), r#"{"Put":{"key":"a","value":"1"}}"#, "-o", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cache = crate::nodes::test_cache();
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(["restore", snap.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // More than fits on a command line would work the same way.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"Put":{{"key":"b","value":"{}"}}}}"#, "x".repeat(300_000)).unwrap();
    writeln!(stdin, r#"{{"Get":{{"key":"a"}}}}"#).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l == r#"{"Value":"1"}"#), "{stdout}");
}
