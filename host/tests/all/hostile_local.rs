//! Hostile local users and files: attacks on a running node's admin socket
//! and data directory, on module loading and on the compile cache,
//! performed for real (node processes, another uid, real sockets, FIFOs,
//! devices, files). Each asserts that the attack fails with a clear error
//! and that the node under attack keeps serving: a reactor on it still
//! answers and what it stored is untouched.
use host::node::admin::protocol::{self, ModuleRef, Op};
use crate::nodes::{self, NodeProc, SECRET, host_command};
use host::node::admin::{Client, MAX_CONNECTIONS};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The uid and gid of the other local user (`nobody`).
const OTHER: u32 = 65534;

/// A fresh scratch directory (mode 0755, like any directory the user makes).
fn scratch(name: &str) -> PathBuf {
    let d = nodes::scratch("local", name);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Starts `host node` on data directory `dir`; `Err` with its output if it
/// exits instead of announcing itself.
fn try_start(root: &Path, dir: &Path, cache: &Path) -> Result<NodeProc, String> {
    let secret = root.join("secret");
    nodes::write_secret(&secret, SECRET);
    let log = root.join(format!("{}.log", dir.file_name().unwrap().to_str().unwrap()));
    let mut c = host_command(cache);
    c.args(["node", "--id", "1", "--shards", "1", "--secret-file", secret.to_str().unwrap()])
        .args(["--data-dir", dir.to_str().unwrap()]);
    nodes::launch(c, 1, dir, &log)
}

/// [`try_start`] with more `host node` arguments.
fn try_start_with(root: &Path, dir: &Path, cache: &Path, args: &[&str]) -> Result<NodeProc, String> {
    let secret = root.join("secret");
    nodes::write_secret(&secret, SECRET);
    let log = root.join(format!("{}.log", dir.file_name().unwrap().to_str().unwrap()));
    let mut c = host_command(cache);
    c.args(["node", "--id", "1", "--shards", "1", "--secret-file", secret.to_str().unwrap()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(args);
    nodes::launch(c, 1, dir, &log)
}

fn start(root: &Path, dir: &Path, cache: &Path) -> NodeProc {
    try_start(root, dir, cache).unwrap_or_else(|e| panic!("node did not start: {e}"))
}

impl NodeProc {
    fn spawn_err(&self, module: &str) -> String {
        match self.admin().request(json!({"op": "spawn", "module": module})) {
            Ok(v) => panic!("spawning {module} worked: {v}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts the node still serves: the counter `c` still counts.
    fn still_serves(&self, c: u64) {
        let before = self.call(c, json!("Get")).as_u64().unwrap();
        self.call(c, json!({"Add": 1}));
        assert_eq!(self.call(c, json!("Get")), json!(before + 1), "the node's reactor answers");
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The host binary, copied where the other user may run it.
fn host_for_others(root: &Path) -> PathBuf {
    let bin = root.join("host-bin");
    std::fs::copy(env!("CARGO_BIN_EXE_host"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `host status` run as the other user.
fn status_as_other(bin: &Path, dir: &Path) -> Output {
    // The copy just written may still be open for writing in a child
    // another test thread forked meanwhile (until it execs): "text file
    // busy" for a moment.
    for _ in 0..100 {
        match Command::new(bin).args(["status", "--data-dir", dir.to_str().unwrap()]).uid(OTHER).gid(OTHER).env_clear().output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => std::thread::sleep(std::time::Duration::from_millis(20)),
            r => return r.unwrap(),
        }
    }
    panic!("{} stayed busy", bin.display())
}

/// The node's data directory is created 0700 and its socket 0600: another
/// local user cannot reach the socket; and should the modes be loosened
/// (or a client slip through), the node checks the peer's uid itself
/// (`SO_PEERCRED`): the other user gets a clear refusal, the attempt is
/// logged, and the node's owner is served as before.
#[test]
fn another_uid_cannot_use_the_admin_socket() {
    let root = scratch("uid");
    let dir = root.join("data");
    let node = start(&root, &dir, &root.join("cache"));
    let c = node.spawn("counter");
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "data directory mode");
    assert_eq!(std::fs::metadata(dir.join("admin.sock")).unwrap().mode() & 0o777, 0o600, "socket mode");
    let bin = host_for_others(&root);

    let out = status_as_other(&bin, &dir);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("permission denied") || t.contains("Permission denied"), "{t}");
    node.still_serves(c);

    // Loosen the modes, as a careless user could: the uid check still holds.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir.join("admin.sock"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as_other(&bin, &dir);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains(&format!("refused: uid {OTHER} may not use this node's admin socket")), "{t}");
    assert!(!t.contains("\"members\""), "no status leaked: {t}");
    let log = node.log();
    assert!(log.contains(&format!("refused a connection from uid {OTHER}")), "the attempt is logged: {log}");
    node.still_serves(c);
}

/// A second node on a data directory in use is refused, naming the
/// directory and the pid holding it, and leaves the running node's socket,
/// incarnation and tag high-water mark as they were.
#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let root = scratch("second");
    let dir = root.join("data");
    let cache = root.join("cache");
    let node = start(&root, &dir, &cache);
    let c = node.spawn("counter");
    let files = ["incarnation", "tags.hwm"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    let sock_inode = std::fs::metadata(dir.join("admin.sock")).unwrap().ino();

    let e = match try_start(&root, &dir, &cache) {
        Ok(_) => panic!("a second node started on the same data directory"),
        Err(e) => e,
    };
    assert!(e.contains(&format!("data directory {} is in use by another node", dir.display())), "{e}");
    assert!(e.contains(&format!("(pid {})", node.child.id())), "names the holder: {e}");

    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after, "incarnation and tags untouched");
    assert_eq!(std::fs::metadata(dir.join("admin.sock")).unwrap().ino(), sock_inode, "socket untouched");
    node.still_serves(c);
    // A new reactor gets a fresh tag (the running node's tag source is its own).
    let d = node.spawn("counter");
    assert_ne!(c, d);
    node.still_serves(d);
}

/// A data directory another user could write into, or owned by another
/// user, is refused before anything is written into it.
#[test]
fn a_data_directory_others_control_is_refused() {
    let root = scratch("dirmode");
    let cache = root.join("cache");
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = try_start(&root, &open, &cache).err().expect("refused");
    assert!(e.contains("is writable by group or others (mode 777)"), "{e}");
    assert!(!open.join("incarnation").exists() && !open.join("admin.sock").exists());

    let theirs = root.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    let e = try_start(&root, &theirs, &cache).err().expect("refused");
    assert!(e.contains(&format!("is owned by uid {OTHER}")), "{e}");
    assert!(!theirs.join("incarnation").exists());
}

/// Module paths that are not sane regular files are refused without being
/// read: `/dev/zero` (would exhaust memory), a FIFO (would hang the
/// loader), a directory, a file over the size limit; and a readable file
/// that is not a module is refused without its bytes in the error. The
/// node keeps serving throughout.
#[test]
fn hostile_module_paths_are_refused_and_never_echoed() {
    let root = scratch("paths");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");

    let e = node.spawn_err("/dev/zero");
    assert!(e.contains("/dev/zero: it is a character device, not a regular file"), "{e}");
    node.still_serves(c);

    let fifo = root.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let e = node.spawn_err(fifo.to_str().unwrap());
    assert!(e.contains("it is a FIFO, not a regular file"), "{e}");
    node.still_serves(c);

    let e = node.spawn_err(root.to_str().unwrap());
    assert!(e.contains("it is a directory, not a regular file"), "{e}");

    let big = root.join("big.wasm");
    std::fs::File::create(&big).unwrap().set_len(reactor_runtime::Engine::MAX_MODULE_FILE + 1).unwrap();
    let e = node.spawn_err(big.to_str().unwrap());
    assert!(e.contains(&format!("over the limit of {} bytes", reactor_runtime::Engine::MAX_MODULE_FILE)), "{e}");

    let secret = root.join("private.txt");
    std::fs::write(&secret, "TOPSECRET password=hunter2\n").unwrap();
    let e = node.spawn_err(secret.to_str().unwrap());
    assert!(e.contains("not a WebAssembly module") && e.contains("magic"), "{e}");
    for leak in ["TOPSECRET", "hunter2", "54 4f 50 53", "544f5053"] {
        assert!(!e.contains(leak), "the error echoes the file: {e}");
    }
    node.still_serves(c);

    // By hash: a module the node has, and one it has not.
    let hash = node.admin().request(json!({"op": "spawn", "module": "counter"})).unwrap()["module"].clone();
    let by_hash = node.admin().request(json!({"op": "spawn", "module": hash})).unwrap();
    node.still_serves(by_hash["tag"].as_u64().unwrap());
    let e = node.spawn_err(&format!("sha256:{}", "ab".repeat(32)));
    assert!(e.contains("is loaded on this node"), "{e}");

    // The command line refuses the same.
    let out = host_command(&root.join("cache")).args(["check", "/dev/zero"]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("character device"), "{}", text(&out));
    node.still_serves(c);
}

/// An over-long request line gets an error answer and its connection is
/// closed (the node never buffers more than the limit); the node serves on.
#[test]
fn an_overlong_admin_line_is_refused_and_its_connection_closed() {
    let root = scratch("line");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");
    let mut s = UnixStream::connect(node.dir.join("admin.sock")).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        // Up to 16 MiB, or until the node closes the connection.
        while sent < 16 << 20 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    BufReader::new(&mut s).read_line(&mut answer).unwrap();
    assert!(answer.contains(&format!("request line over {} bytes", protocol::MAX_LINE)), "{answer}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let sent = writer.join().unwrap();
    assert!(sent < 16 << 20, "the node stopped reading and closed the connection ({sent} bytes sent)");
    node.still_serves(c);
}

/// Connections beyond the limit are refused with a clear error while the
/// ones open are served; once some close, new ones are served again.
/// Malformed lines get specific errors and leave the connection usable.
#[test]
fn admin_connections_are_bounded_and_garbage_gets_errors() {
    let root = scratch("conns");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");
    let mut open: Vec<Client> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut cl = node.admin();
            cl.request(json!({"op": "status"})).unwrap();
            cl
        })
        .collect();
    let e = Client::connect(&node.dir).unwrap().request(json!({"op": "status"})).unwrap_err().to_string();
    assert!(e.contains(&format!("refused: the node already serves {MAX_CONNECTIONS} admin connections")), "{e}");
    assert!(node.log().contains("connections are open"), "logged");
    // The open ones still work.
    assert_eq!(open[0].request(json!({"op": "call", "to": c, "msg": "Get"})).unwrap(), json!(0));
    open.truncate(MAX_CONNECTIONS / 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(&node.dir).unwrap().request(json!({"op": "status"})) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "slots never freed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(open);

    let mut s = UnixStream::connect(node.dir.join("admin.sock")).unwrap();
    let garbage: &[&[u8]] = &[
        b"\xff\xfe{",
        b"[1,2]",
        b"{\"op\":7}",
        b"{\"op\":\"launch\"}",
        b"{\"op\":\"call\",\"to\":[]}",
        b"{\"id\":1.1444444444444444e49,\"op\":\"status\"}",
    ];
    for g in garbage {
        s.write_all(g).unwrap();
        s.write_all(b"\n").unwrap();
    }
    s.write_all(b"{\"id\":9,\"op\":\"call\",\"to\":").unwrap();
    s.write_all(format!("{c},\"msg\":\"Get\"}}\n").as_bytes()).unwrap();
    let mut rd = BufReader::new(s);
    let mut answers = Vec::new();
    for _ in 0..=garbage.len() {
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let errs: Vec<&str> = answers[..garbage.len()].iter().map(|a| a["err"].as_str().unwrap()).collect();
    assert!(errs[0].starts_with("not a JSON request"), "{errs:?}");
    assert_eq!(errs[1], "a request is a JSON object with an \"op\"");
    assert_eq!(errs[2], "the request has no \"op\"");
    assert!(errs[3].starts_with("unknown op `launch`"), "{errs:?}");
    assert!(errs[4].contains("an address is a string"), "{errs:?}");
    assert_eq!(errs[5], "\"id\" must be an integer, a string or null");
    assert_eq!(answers[garbage.len()], json!({"id": 9, "ok": 0}), "the connection still serves");
    node.still_serves(c);
}

/// A client that pipelines far more requests than the node runs at once on
/// one connection, without reading, is throttled (the node stops reading
/// it while `MAX_PENDING` are in flight and its answers wait in a bounded
/// queue), and loses nothing: every request is answered once.
#[test]
fn pipelined_requests_are_throttled_not_lost() {
    use host::node::admin::MAX_PENDING;
    let root = scratch("pipeline");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");
    let n = 20 * MAX_PENDING;
    let s = UnixStream::connect(node.dir.join("admin.sock")).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut all = String::new();
        for i in 0..n {
            all.push_str(&json!({"id": i, "op": "call", "to": c, "msg": {"Add": 1}}).to_string());
            all.push('\n');
        }
        w.write_all(all.as_bytes()).unwrap();
    });
    let mut rd = BufReader::new(s);
    let mut seen = vec![false; n];
    for _ in 0..n {
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        let a: Value = serde_json::from_str(&line).unwrap();
        assert!(a.get("ok").is_some(), "{a}");
        let i = a["id"].as_u64().unwrap() as usize;
        assert!(!seen[i], "answered twice: {i}");
        seen[i] = true;
    }
    writer.join().unwrap();
    assert_eq!(node.call(c, json!("Get")), json!(n), "every request ran once");
    node.still_serves(c);
}

/// The path of the one compiled artifact in `cache`.
fn artifact(cache: &Path) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// A compiled artifact altered on disk — one byte of its code flipped and
/// a valid SHA-256 checksum trailer written for the altered code, as
/// anyone able to write the file could — is never loaded as native code:
/// the next node recompiles (saying so) and replaces it; a node running
/// meanwhile is untouched; the key is the owner's alone.
#[test]
fn a_tampered_cache_artifact_is_never_loaded() {
    use sha2::Digest as _;
    let root = scratch("tamper");
    let cache = root.join("cache");
    let first = start(&root, &root.join("a"), &cache);
    let c = first.spawn("counter");
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700, "cache directory mode");
    assert_eq!(std::fs::metadata(cache.join("artifacts.key")).unwrap().mode() & 0o777, 0o600, "key file mode");
    let path = artifact(&cache);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600, "artifact mode");

    let mut bytes = std::fs::read(&path).unwrap();
    let code_len = bytes.len() - 32;
    bytes[code_len / 2] ^= 0x40;
    let sum = sha2::Sha256::digest(&bytes[..code_len]);
    bytes[code_len..].copy_from_slice(&sum);
    std::fs::write(&path, &bytes).unwrap();

    let out = host_command(&cache).args(["check", example_guests::path("counter").to_str().unwrap()]).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("code     Compiled"), "the tampered artifact was loaded: {t}");
    assert!(t.contains("failed authentication"), "a warning says why: {t}");
    assert_ne!(std::fs::read(&path).unwrap(), bytes, "the artifact was replaced");
    // The replacement is authentic: the next load uses it.
    let out = host_command(&cache).args(["check", example_guests::path("counter").to_str().unwrap()]).output().unwrap();
    assert!(text(&out).contains("code     Disk"), "{}", text(&out));

    // A second node on the (repaired) cache serves, and so does the first.
    let second = start(&root, &root.join("b"), &cache);
    second.still_serves(second.spawn("counter"));
    first.still_serves(c);
}

/// A cache directory others can write into, or another user owns, is
/// refused with a clear error (it could hold their native code); without
/// HOME or XDG_CACHE_HOME there is no disk cache at all (no shared
/// fallback), and the log says so. A running node is untouched.
#[test]
fn a_cache_directory_others_control_is_refused() {
    let root = scratch("cachedir");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");
    let counter = example_guests::path("counter");
    let counter = counter.to_str().unwrap();

    let open = root.join("open-cache");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = host_command(&open).args(["check", counter]).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("is writable by group or others (mode 777)"), "{t}");
    assert!(std::fs::read_dir(&open).unwrap().next().is_none(), "nothing written into it");
    // A node is refused the same way.
    let e = try_start(&root, &root.join("other"), &open).err().expect("refused");
    assert!(e.contains("writable by group or others"), "{e}");

    let theirs = root.join("their-cache");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    let out = host_command(&theirs).args(["check", counter]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains(&format!("owned by uid {OTHER}")), "{}", text(&out));

    // Neither HOME nor XDG_CACHE_HOME: memory only, said in the log.
    let out = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["--log", "warn", "check", counter])
        .env_clear()
        .current_dir(&root)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("compiled modules are kept in memory only"), "{t}");
    node.still_serves(c);
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z#.:0-9]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("(id|op|to|msg|module|init|timeout_ms|[a-z]{1,3})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The request parser takes any bytes: it never panics, and what it
    /// refuses it refuses with an error that does not quote the line.
    #[test]
    fn the_admin_parser_takes_any_bytes(line in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err((_, e)) = protocol::parse_request(&line) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Any JSON value (with the protocol's field names likely): parsed or
    /// refused with a specific error, the id kept when there is one.
    #[test]
    fn the_admin_parser_takes_any_json(v in arb_json(), op in "(status|spawn|send|call|mailbox|stop|x)") {
        let mut req = v.clone();
        if let Value::Object(m) = &mut req {
            m.insert("op".into(), json!(op));
        }
        let line = req.to_string();
        match protocol::parse_request(line.as_bytes()) {
            Ok(r) => {
                prop_assert_eq!(&r.id, req.get("id").unwrap_or(&Value::Null));
                if let Op::Spawn { module: ModuleRef::Name(n), .. } = r.op {
                    prop_assert_eq!(Some(&json!(n)), req.get("module"));
                }
            }
            Err((id, protocol::RequestError::BadId)) => {
                prop_assert_eq!(id, Value::Null);
                prop_assert!(!matches!(req.get("id"), None | Some(Value::Null | Value::String(_))));
            }
            Err((id, _)) => prop_assert_eq!(&id, req.get("id").unwrap_or(&Value::Null)),
        }
    }
}

/// Runs `cmd` to its end and returns its output; kills it and fails the
/// test if it is still running after a minute (a guard against the hangs
/// these tests provoke, not a measurement).
fn run_guarded(mut cmd: Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{:?} was still running after a minute: {}", cmd.get_args().collect::<Vec<_>>(), text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `host node` on `dir` with `secret` as its secret file and `args`, run to
/// its end (it must refuse to start): its output.
fn refused_node(dir: &Path, cache: &Path, secret: &Path, args: &[&str]) -> String {
    let mut c = host_command(cache);
    c.args(["node", "--id", "1", "--shards", "1", "--secret-file", secret.to_str().unwrap()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(args);
    let out = run_guarded(c);
    let t = text(&out);
    assert!(!out.status.success(), "the node started: {t}");
    t
}

/// A sparse file of `len` bytes (zeros, taking no disk).
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// Every file `host node` reads at start because the command line names it
/// — the cluster secret, the fault schedule, the pinned peer keys — and the
/// snapshot files `host inspect` and `host restore` read are opened without
/// blocking and checked on the opened descriptor: a FIFO (which used to
/// hang the start for ever), `/dev/zero` and a file over the kind's limit
/// (which used to be read whole) are refused with an error naming the file
/// and the reason; a secret group or others can read, or another user
/// owns, is refused as ssh refuses such a private key; peer keys others
/// can write are refused. Nothing in the data directory changes meanwhile,
/// and the node then starts as before.
#[test]
fn files_named_on_the_command_line_are_checked_before_they_are_read() {
    let root = scratch("argfiles");
    let dir = root.join("data");
    let cache = root.join("cache");
    {
        let node = start(&root, &dir, &cache);
        node.still_serves(node.spawn("counter"));
    }
    let stored = || -> Vec<Vec<u8>> { ["incarnation", "tags.hwm"].iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect() };
    let before = stored();
    let good = root.join("secret");
    assert_eq!(std::fs::metadata(&good).unwrap().mode() & 0o777, 0o600);

    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let big = root.join("big");
    sparse(&big, 8 << 20);

    // The cluster secret.
    let t = refused_node(&dir, &cache, &fifo, &[]);
    assert!(t.contains(&format!("the cluster secret {}: it is a FIFO, not a regular file", fifo.display())), "{t}");
    let t = refused_node(&dir, &cache, Path::new("/dev/zero"), &[]);
    assert!(t.contains("the cluster secret /dev/zero: it is a character device, not a regular file"), "{t}");
    let huge_secret = root.join("huge-secret");
    sparse(&huge_secret, 4097);
    std::fs::set_permissions(&huge_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let t = refused_node(&dir, &cache, &huge_secret, &[]);
    assert!(t.contains("4097 bytes, over the limit of 4096 bytes"), "{t}");
    let readable = root.join("readable-secret");
    std::fs::write(&readable, SECRET).unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t = refused_node(&dir, &cache, &readable, &[]);
    assert!(
        t.contains(&format!("refusing the cluster secret {}: it has mode 644", readable.display()))
            && t.contains("must not be readable or writable by group or others (chmod 600 it)"),
        "{t}"
    );
    let theirs = root.join("their-secret");
    nodes::write_secret(&theirs, SECRET);
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    let t = refused_node(&dir, &cache, &theirs, &[]);
    assert!(t.contains(&format!("it is owned by uid {OTHER}, neither this user")), "{t}");

    // The fault schedule.
    let f = fifo.to_str().unwrap();
    let t = refused_node(&dir, &cache, &good, &["--faults", f]);
    assert!(t.contains(&format!("the fault schedule {f}: it is a FIFO")), "{t}");
    let t = refused_node(&dir, &cache, &good, &["--faults", "/dev/zero"]);
    assert!(t.contains("the fault schedule /dev/zero: it is a character device"), "{t}");
    let t = refused_node(&dir, &cache, &good, &["--faults", big.to_str().unwrap()]);
    assert!(t.contains(&format!("the fault schedule {}: {} bytes, over the limit of {} bytes", big.display(), 8 << 20, 1 << 20)), "{t}");

    // The pinned peer keys.
    let t = refused_node(&dir, &cache, &good, &["--peer-keys", f]);
    assert!(t.contains(&format!("the peer keys file {f}: it is a FIFO")), "{t}");
    let t = refused_node(&dir, &cache, &good, &["--peer-keys", "/dev/zero"]);
    assert!(t.contains("the peer keys file /dev/zero: it is a character device"), "{t}");
    let t = refused_node(&dir, &cache, &good, &["--peer-keys", big.to_str().unwrap()]);
    assert!(t.contains(&format!("{} bytes, over the limit of {} bytes", 8 << 20, 4 << 20)), "{t}");
    let open_keys = root.join("keys");
    std::fs::write(&open_keys, "# nobody yet\n").unwrap();
    std::fs::set_permissions(&open_keys, std::fs::Permissions::from_mode(0o666)).unwrap();
    let t = refused_node(&dir, &cache, &good, &["--peer-keys", open_keys.to_str().unwrap()]);
    assert!(t.contains("it has mode 666, and must not be writable by group or others"), "{t}");

    // Snapshot files given to `inspect` and `restore`.
    for sub in [&["inspect", f][..], &["restore", f][..]] {
        let out = run_guarded({
            let mut c = host_command(&cache);
            c.args(sub);
            c
        });
        let t = text(&out);
        assert!(!out.status.success() && t.contains("it is a FIFO, not a regular file"), "{sub:?}: {t}");
    }

    assert_eq!(stored(), before, "nothing stored changed");
    // The same data directory and files, sane: the node starts and serves.
    let node = start(&root, &dir, &cache);
    node.still_serves(node.spawn("counter"));
    let inc: u64 = String::from_utf8(before[0].clone()).unwrap().trim().parse().unwrap();
    assert_eq!(node.status()["node"]["incarnation"], json!(inc + 1));
}

/// Reads one answer line from `s` (a hang guard of a minute).
fn read_answer(s: &UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Waits until the node closes `s` (end of file, or a reset when it left
/// bytes of ours unread), reading what it still sends; fails after a minute (a hang guard, not a measurement).
fn closed_by_node(s: &UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    match (&mut &*s).read_to_end(&mut rest) {
        Ok(_) => rest,
        // Closed with requests of ours still unread in its socket.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => rest,
        Err(e) => panic!("the node never closed the connection ({e}); read {} bytes", rest.len()),
    }
}

/// Admin clients that connect and send nothing, or half a request line, or
/// stop taking their answers, are disconnected once the idle deadline
/// passes (with a line saying why where it can still be sent, and a
/// logged reason), while other clients are served meanwhile; a client that
/// holds every connection slot idle gives them back the same way. A
/// request waiting for its answer longer than the deadline is not cut.
#[test]
fn idle_and_stalled_admin_connections_are_closed() {
    let root = scratch("idle");
    let node = try_start_with(&root, &root.join("data"), &root.join("cache"), &["--admin-idle-timeout", "1500", "--cpu-budget", "3000"])
        .unwrap_or_else(|e| panic!("{e}"));
    let c = node.spawn("counter");
    let sock = node.dir.join("admin.sock");

    let silent = UnixStream::connect(&sock).unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"{\"id\":1,\"op\":\"sta").unwrap();
    // Others are served while these hang.
    node.still_serves(c);
    let a = read_answer(&silent);
    assert_eq!(a["id"], Value::Null);
    assert!(a["err"].as_str().unwrap().contains("closing the connection: the client sent nothing for"), "{a}");
    assert!(closed_by_node(&silent).is_empty());
    let a = read_answer(&half);
    assert!(a["err"].as_str().unwrap().contains("the client sent 17 bytes of a request line, then nothing for"), "{a}");
    closed_by_node(&half);
    let log = node.log();
    assert!(log.contains("closing a connection: the client sent nothing for"), "logged: {log}");
    assert!(log.contains("bytes of a request line, then nothing for"), "logged: {log}");
    node.still_serves(c);

    // A call that waits longer than the deadline for its answer keeps its
    // connection: the client is waiting for the node, not idle.
    // (A reactor looping until its CPU budget, 3 s here, stops it.)
    let spinner = node.spawn("faulty");
    let mut waiting = UnixStream::connect(&sock).unwrap();
    waiting.write_all(json!({"id": 5, "op": "call", "to": spinner, "msg": "LoopForever"}).to_string().as_bytes()).unwrap();
    waiting.write_all(b"\n").unwrap();
    let a = read_answer(&waiting);
    assert_eq!(a["id"], json!(5), "{a}");
    assert!(a["err"].as_str().unwrap_or_default().contains("budget"), "the call's own answer: {a}");
    waiting.write_all(json!({"id": 6, "op": "call", "to": c, "msg": "Get"}).to_string().as_bytes()).unwrap();
    waiting.write_all(b"\n").unwrap();
    assert_eq!(read_answer(&waiting)["id"], json!(6), "the connection still serves");

    drop(waiting);

    // Every slot held by idle clients (new clients are refused meanwhile):
    // the slots come back when the idle ones are closed.
    let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    for s in &idle {
        closed_by_node(s);
    }
    node.still_serves(c);

    // A client that sends requests but never reads the answers: once its
    // socket is full, the node gives up on it after the deadline.
    let mut greedy = UnixStream::connect(&sock).unwrap();
    let mut reqs = String::new();
    for i in 0..3000 {
        reqs.push_str(&json!({"id": i, "op": "status"}).to_string());
        reqs.push('\n');
    }
    greedy.write_all(reqs.as_bytes()).unwrap();
    nodes::wait_until("the node gives up on a client that takes no answers", Duration::from_secs(60), || {
        node.log().contains("the client took no answer for")
    });
    let answers = closed_by_node(&greedy);
    let n = answers.iter().filter(|&&b| b == b'\n').count();
    assert!(n < 3000, "the connection was closed before every answer was taken ({n} taken)");
    node.still_serves(c);
}

/// A call may wait at most an hour for its answer: each waiting call holds
/// one of the node's blocking threads, so calls that asked to wait for
/// ever (`u64::MAX` ms) on answers that never come could starve every other
/// admin request until the node restarts. A longer `timeout_ms` is refused
/// with a clear error, the connection and the node serve on, and the
/// longest wait allowed works.
#[test]
fn absurd_call_timeouts_are_refused() {
    use host::node::admin::protocol::MAX_CALL_TIMEOUT_MS;
    let root = scratch("timeout");
    let node = start(&root, &root.join("data"), &root.join("cache"));
    let c = node.spawn("counter");
    let mut s = UnixStream::connect(node.dir.join("admin.sock")).unwrap();
    for (id, ms) in [(1, u64::MAX), (2, MAX_CALL_TIMEOUT_MS + 1)] {
        s.write_all(json!({"id": id, "op": "call", "to": c, "msg": "Get", "timeout_ms": ms}).to_string().as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let a = read_answer(&s);
        assert_eq!(a["id"], json!(id));
        let e = a["err"].as_str().unwrap_or_else(|| panic!("{a}"));
        assert!(e.contains(&format!("at most {MAX_CALL_TIMEOUT_MS}")), "{e}");
    }
    let a = node.admin().request(json!({"op": "call", "to": c, "msg": "Get", "timeout_ms": MAX_CALL_TIMEOUT_MS})).unwrap();
    assert_eq!(a, json!(0));
    node.still_serves(c);
}

/// A data directory (or compile cache) inside a directory others can write
/// into without the sticky bit, or inside another user's directory or
/// behind their symbolic link, could be moved away and replaced by theirs
/// while the node runs — shown here by doing it as the other user. Such a
/// place is refused at start, naming the ancestor, before anything is
/// created; inside a sticky directory (as under /tmp) the same attack
/// fails, and the node starts there.
#[test]
fn data_and_cache_directories_others_can_swap_are_refused() {
    let root = scratch("ancestors");
    let cache = root.join("cache");
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = open.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mv_as_other = |from: &Path, to: &Path| Command::new("mv").arg(from).arg(to).uid(OTHER).gid(OTHER).status().unwrap();

    // The attack: the other user renames our directory away.
    assert!(mv_as_other(&data, &open.join("stolen")).success(), "the attack works in a non-sticky directory");
    std::fs::rename(open.join("stolen"), &data).unwrap();

    let e = try_start(&root, &data, &cache).err().expect("refused");
    assert!(
        e.contains(&format!(
            "the data directory {} is inside {}, which is writable by group or others without the sticky bit (mode 0777)",
            data.display(),
            open.display()
        )),
        "{e}"
    );
    assert!(std::fs::read_dir(&data).unwrap().next().is_none(), "nothing written in it");
    // A directory yet to be made there is refused before it is made.
    let e = try_start(&root, &open.join("new/data"), &cache).err().expect("refused");
    assert!(e.contains(&format!("inside {}, which is writable", open.display())), "{e}");
    assert!(!open.join("new").exists());

    // The compile cache: `host check` and `host node` refuse it alike.
    let counter = example_guests::path("counter");
    let out = run_guarded({
        let mut c = host_command(&open.join("cache"));
        c.args(["check", counter.to_str().unwrap()]);
        c
    });
    let t = text(&out);
    assert!(!out.status.success() && t.contains(&format!("inside {}, which is writable", open.display())), "{t}");
    assert!(!open.join("cache").exists());
    let e = try_start(&root, &root.join("elsewhere"), &open.join("cache")).err().expect("refused");
    assert!(e.contains("the module cache directory") && e.contains("without the sticky bit"), "{e}");

    // Another user's directory, and another user's symbolic link.
    let theirs = root.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER), Some(OTHER)).unwrap();
    let e = try_start(&root, &theirs.join("data"), &cache).err().expect("refused");
    assert!(e.contains(&format!("inside {}, which is owned by uid {OTHER}", theirs.display())), "{e}");
    let ours = root.join("ours");
    std::fs::create_dir(&ours).unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink(&ours, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(OTHER), Some(OTHER)).unwrap();
    let e = try_start(&root, &link.join("data"), &cache).err().expect("refused");
    assert!(e.contains(&format!("inside {}, which is owned by uid {OTHER}", link.display())), "{e}");

    // Sticky: the attack fails, and the node starts and serves.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(!mv_as_other(&data, &open.join("stolen")).success(), "the sticky bit stops the attack");
    let node = start(&root, &data, &cache);
    node.still_serves(node.spawn("counter"));
}
