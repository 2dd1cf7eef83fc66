//! Supervision of journaled reactors, in the spirit of OTP's one-for-one
//! supervisor: a journaled reactor that fails is restarted from its last
//! snapshot and its journal, replayed up to (not including) the call that
//! failed it; its mailbox is kept (the shard parks what comes for it
//! meanwhile). The message that failed it is tried again, up to
//! [`Policy::attempts`] times in all, then given up as a dead letter (a
//! request answered with the failure). At most [`Policy::max_restarts`]
//! restarts within [`Policy::within`]; one more escalates: the node gives
//! the reactor up (it stays failed, the requests waiting on it are
//! answered with its failure), as a supervisor whose intensity is exceeded
//! terminates and leaves the decision to its parent — here the operator.
//! Restarts after the first in a window wait [`Policy::backoff`], doubled
//! each time.
//!
//! It runs on a thread of its own, fed by the journal writer's failure hook
//! once the failed journal is sealed and its post-mortem bundle made.
#![forbid(unsafe_code)]

use super::postmortem::newest_start;
use reactor_runtime::journal::{FailedReactor, reactor_dir, segments};
use reactor_runtime::snapshot::SnapshotFile;
use reactor_runtime::{Address, Runtime, abi};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How a node restarts its journaled reactors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Restarts allowed within [`Policy::within`] (0: never restart).
    pub max_restarts: u32,
    pub within: Duration,
    /// The wait before a restart that is not the first in the window
    /// (doubled for each further one).
    pub backoff: Duration,
    /// How many times in all a message that fails the reactor is given to
    /// it before it is a dead letter.
    pub attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { max_restarts: 1, within: Duration::from_secs(5), backoff: Duration::from_millis(10), attempts: 1 }
    }
}

/// A message given up on: it failed its reactor [`Policy::attempts`] times,
/// or its reactor was given up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub reactor: String,
    pub step: u64,
    pub from: String,
    pub kind: &'static str,
    pub bytes: usize,
    pub failure: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

/// What the supervisor did, for the node's status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    pub restarts: u64,
    pub escalations: u64,
    pub restart_failures: u64,
    pub dead_letters: u64,
    /// The latest dead letters (at most [`KEPT`]).
    pub recent_dead_letters: VecDeque<DeadLetter>,
}

/// Dead letters kept for the status report.
pub const KEPT: usize = 32;

/// The node's supervisor.
pub struct Supervisor {
    tx: Mutex<Option<Sender<FailedReactor>>>,
    counters: Arc<Mutex<Counters>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts the supervisor thread for `runtime`, whose data directory is
    /// `data_dir`.
    pub fn start(runtime: Arc<Runtime>, data_dir: PathBuf, journal_dir: PathBuf, policy: Policy) -> std::io::Result<Self> {
        let (tx, rx) = channel::<FailedReactor>();
        let counters: Arc<Mutex<Counters>> = Arc::default();
        let c = counters.clone();
        std::thread::Builder::new().name("supervisor".into()).spawn(move || {
            let mut history: HashMap<Address, VecDeque<Instant>> = HashMap::new();
            let mut attempts: HashMap<(Address, u64), u32> = HashMap::new();
            while let Ok(f) = rx.recv() {
                let shard = f.address.shard() % runtime.shards();
                let h = history.entry(f.address).or_default();
                let now = Instant::now();
                while h.front().is_some_and(|t| now.duration_since(*t) > policy.within) {
                    h.pop_front();
                }
                if h.len() >= policy.max_restarts as usize {
                    let a = f.address;
                    let given_up = runtime.inspect(shard, move |s| s.give_up(a)).ok().flatten();
                    let mut c = c.lock().expect("counters");
                    c.escalations += 1;
                    tracing::error!(
                        reactor = %f.address,
                        "{} failed again at step {}: more than {} restart(s) within {:?}; escalated, it stays failed",
                        f.address,
                        f.step,
                        policy.max_restarts,
                        policy.within
                    );
                    if given_up.is_some() {
                        note_dead(&mut c, &f, None);
                    }
                    continue;
                }
                if !h.is_empty() {
                    std::thread::sleep(policy.backoff * 2u32.saturating_pow(h.len() as u32 - 1));
                }
                let n = attempts.entry((f.address, f.step)).or_insert(0);
                *n += 1;
                let retry = *n < policy.attempts;
                match restart(&runtime, &data_dir, &journal_dir, &f, retry) {
                    Ok((steps, dead)) => {
                        h.push_back(Instant::now());
                        let mut c = c.lock().expect("counters");
                        c.restarts += 1;
                        tracing::warn!(
                            reactor = %f.address,
                            "restarted {} ({steps} call(s) replayed); the message that failed it is {}",
                            f.address,
                            if retry { "tried again" } else { "a dead letter" }
                        );
                        if let Some(d) = dead {
                            note_dead(&mut c, &f, Some(d));
                        }
                    }
                    Err(why) => {
                        let a = f.address;
                        let _ = runtime.inspect(shard, move |s| s.give_up(a));
                        let mut c = c.lock().expect("counters");
                        c.restart_failures += 1;
                        tracing::error!(reactor = %f.address, "could not restart {}: {why}; it stays failed", f.address);
                    }
                }
            }
        })?;
        Ok(Self { tx: Mutex::new(Some(tx)), counters })
    }

    /// Hands a failed journaled reactor to the supervisor.
    pub fn failed(&self, f: &FailedReactor) {
        if let Some(tx) = self.tx.lock().expect("supervisor").as_ref() {
            let _ = tx.send(f.clone());
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().expect("counters").clone()
    }
}

fn note_dead(c: &mut Counters, f: &FailedReactor, killer: Option<(reactor_runtime::Envelope, reactor_runtime::Failure)>) {
    c.dead_letters += 1;
    let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let (from, kind, bytes) = match &killer {
        Some((e, _)) => (e.from.to_string(), reactor_runtime::Envelope::kind_name(e.kind), e.payload.len()),
        None => ("?".into(), "message", 0),
    };
    c.recent_dead_letters.push_back(DeadLetter {
        reactor: f.address.to_string(),
        step: f.step,
        from,
        kind,
        bytes,
        failure: f.failure.clone(),
        at,
    });
    while c.recent_dead_letters.len() > KEPT {
        c.recent_dead_letters.pop_front();
    }
}

type Dead = Option<(reactor_runtime::Envelope, reactor_runtime::Failure)>;

/// Restarts `f.address` on its shard: the newest segment whose start the
/// node still has, the segments after it, and that checkpoint's chain.
fn restart(runtime: &Arc<Runtime>, data_dir: &std::path::Path, journal_dir: &std::path::Path, f: &FailedReactor, retry: bool) -> Result<(u64, Dead), String> {
    let paths = segments(&reactor_dir(journal_dir, f.address)).map_err(|e| format!("cannot read its journal: {e}"))?;
    let mut segs = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        segs.push((p, bytes));
    }
    let (first, chain) = newest_start(data_dir, &segs).ok_or("no segment of its journal starts where the node can start it from")?;
    let chain = (!chain.is_empty()).then_some(chain);
    let chain: Option<Vec<SnapshotFile>> = match chain {
        None => None,
        Some(paths) => Some(
            paths
                .iter()
                .map(|p| SnapshotFile::open(p, abi::ABI_VERSION).map_err(|e| format!("{}: {e}", p.display())))
                .collect::<Result<_, _>>()?,
        ),
    };
    let segs: Vec<(PathBuf, Vec<u8>)> = segs.into_iter().skip(first).collect();
    let module = runtime.engine().module(&f.module).ok_or_else(|| format!("its module {} is not loaded", f.module))?;
    let step = f.step;
    let shard = f.address.shard() % runtime.shards();
    runtime
        .inspect(shard, move |s| s.restart_journaled(&module, chain.as_deref(), &segs, step, retry))
        .map_err(|e| e.to_string())?
        .map(|(r, dead)| (r.steps, dead))
        .map_err(|e| e.to_string())
}
