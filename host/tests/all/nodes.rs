//! `host node` processes for the tests that run real clusters (`cluster`,
//! `hostile_peers`, `hostile_local`): starting one, talking to it through
//! its admin socket as a user would, and killing it when the test ends.
use host::node::admin::Client;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster secret the tests' nodes share.
pub(crate) const SECRET: &str = "the cluster secret of the tests";

/// How long the tests wait for a cluster to settle.
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// A running `host node`, killed when dropped.
pub(crate) struct NodeProc {
    pub(crate) id: u16,
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) addr: String,
    pub(crate) log: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test process's own directory, `<tmp>/reactor-tests-<pid>`: every
/// scratch directory and the compile cache live in it. Nothing runs when a
/// test binary ends, so the first call removes what earlier test processes
/// left (a directory whose pid no longer runs): a run leaves at most its
/// own behind (its logs and data, kept to look into a failure), never an
/// ever-growing pile in `/tmp`.
pub(crate) fn test_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("reactor-tests-")) else { continue };
                if pid.parse::<u32>().is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let root = tmp.join(format!("reactor-tests-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        root
    })
}

/// A fresh scratch directory `<test root>/<kind>-<name>`.
pub(crate) fn scratch(kind: &str, name: &str) -> PathBuf {
    let d = test_root().join(format!("{kind}-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A free address on loopback (bound and let go: a node binds it next).
pub(crate) fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// Writes a cluster secret file as its owner alone may read it (`0600`:
/// a node refuses a secret others can read).
pub(crate) fn write_secret(path: &Path, secret: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(secret.as_bytes()).unwrap();
}

/// The compile cache the test binary's nodes share.
pub(crate) fn test_cache() -> PathBuf {
    test_root().join("cache")
}

/// `host --cache-dir <cache> --log info`.
pub(crate) fn host_command(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host"));
    c.args(["--cache-dir", cache.to_str().unwrap(), "--log", "info"]);
    c
}

/// The `host node` command for node `id` with its data directory, secret
/// file and log under `root`: (command, data directory, log).
pub(crate) fn node_command(root: &Path, id: u16, secret: &str, args: &[&str]) -> (Command, PathBuf, PathBuf) {
    let dir = root.join(format!("n{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = root.join(format!("secret-{id}"));
    write_secret(&secret_file, secret);
    let log = root.join(format!("n{id}.log"));
    let mut c = host_command(&test_cache());
    c.args(["node", "--id", &id.to_string(), "--shards", "1"])
        .args(["--secret-file", secret_file.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()])
        .args(args);
    (c, dir, log)
}

/// Runs `cmd` (a `host node` of node `id` on `dir`, logging to `log`) and
/// waits for its listening line; `Err` with its output if it exits
/// instead of announcing itself.
pub(crate) fn launch(mut cmd: Command, id: u16, dir: &Path, log: &Path) -> Result<NodeProc, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("host binary runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    match line.split(" listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
        Some(addr) => Ok(NodeProc { id, child, dir: dir.to_owned(), addr: addr.to_owned(), log: log.to_owned() }),
        None => {
            let status = child.wait().unwrap();
            Err(format!("{status}: {line}{}", std::fs::read_to_string(log).unwrap_or_default()))
        }
    }
}

/// Starts node `id` under `root` (see [`node_command`]) and waits for it.
pub(crate) fn start(root: &Path, id: u16, secret: &str, args: &[&str]) -> NodeProc {
    let (c, dir, log) = node_command(root, id, secret, args);
    launch(c, id, &dir, &log).unwrap_or_else(|e| panic!("node {id} did not start: {e}"))
}

/// Nodes 1 and 2 with `args`, node 2 seeded with node 1, each seeing both
/// up.
pub(crate) fn pair(root: &Path, args: &[&str]) -> (NodeProc, NodeProc) {
    let n1 = start(root, 1, SECRET, args);
    let n2 = start(root, 2, SECRET, &[args, &["--seed", &n1.addr]].concat());
    for n in [&n1, &n2] {
        wait_until("both nodes up", CONVERGE, || n.up() == vec![1, 2]);
    }
    (n1, n2)
}

impl NodeProc {
    pub(crate) fn admin(&self) -> Client {
        Client::connect(&self.dir).unwrap()
    }

    pub(crate) fn status(&self) -> Value {
        self.admin().request(json!({"op": "status"})).unwrap()
    }

    /// Members this node believes up.
    pub(crate) fn up(&self) -> Vec<u16> {
        let s = self.status();
        let mut v: Vec<u16> = s["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["up"] == json!(true))
            .map(|m| m["id"].as_u64().unwrap() as u16)
            .collect();
        v.sort();
        v
    }

    /// The incarnation of node `id` this node believes up, if it does.
    pub(crate) fn incarnation_of(&self, id: u16) -> Option<u64> {
        self.status()["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == json!(id) && m["up"] == json!(true))
            .and_then(|m| m["incarnation"].as_u64())
    }

    /// Spawns `module` (no init argument); its address.
    pub(crate) fn spawn(&self, module: &str) -> u64 {
        self.admin().request(json!({"op": "spawn", "module": module})).unwrap()["tag"].as_u64().unwrap()
    }

    /// Calls `to` with `msg`; its answer, or the error.
    pub(crate) fn try_call(&self, to: u64, msg: Value) -> anyhow::Result<Value> {
        Ok(self.admin().request(json!({"op": "call", "to": to, "msg": msg, "timeout_ms": 20_000}))?)
    }

    /// Calls `to` with `msg`; its answer.
    pub(crate) fn call(&self, to: u64, msg: Value) -> Value {
        self.try_call(to, msg).unwrap()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `f` until it holds; fails the test after `limit`.
pub(crate) fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
