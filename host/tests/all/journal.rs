//! Journals and replay on a shard: a journaled reactor's snapshot (or
//! spawn) plus its journal reproduce every output, the memory, and a
//! failure with its panic message and backtrace; a replay that is fed
//! something else notices.
use crate::util::*;
use journal_format::{Encoder, Journal, JournalError, Level, Record};
use protocols::{CounterMsg, KvReq, LedgerReq};
use reactor_runtime::journal::{FailedReactor, JournalConfig, Journals, reactor_dir, segments};
use reactor_runtime::replay::{Event, Replay, ReplayError, SegmentBytes};
use reactor_runtime::snapshot::{Capture, SnapshotOptions};
use reactor_runtime::{Address, ReactorState, Shard, ShardConfig, SpawnError, abi};
use snapshot_format::SnapshotFile;
use std::path::Path;
use std::time::Duration;
use std::sync::{Arc, Mutex};

fn journaled_shard(dir: &Path) -> (Shard, Arc<Journals>) {
    let journals = Journals::start(JournalConfig::new(dir.join("journal"))).unwrap();
    let mut s = Shard::new(engine(), ShardConfig::default());
    s.set_journals(journals.clone());
    (s, journals)
}

fn read_segments(journals: &Journals, a: Address) -> Vec<SegmentBytes> {
    journals.sync();
    segments(&reactor_dir(journals.dir(), a))
        .unwrap()
        .into_iter()
        .map(|p| SegmentBytes { name: p.display().to_string(), bytes: std::fs::read(&p).unwrap() })
        .collect()
}

/// Replays to the end: every event must match; returns the steps replayed
/// and the replay (for its final state).
fn replay_all(r: &mut Replay) -> u64 {
    let mut steps = 0;
    while let Some(e) = r.next_event() {
        match e.unwrap() {
            Event::Step(s) => {
                assert!(s.matches(), "step {} does not match its recording: {s:?}", s.step);
                steps += 1;
            }
            Event::SnapshotPoint { step, matches, .. } => assert!(matches, "state at the snapshot point of step {step} differs"),
        }
    }
    steps
}

fn call<Q: serde::Serialize, R: serde::de::DeserializeOwned>(s: &mut Shard, a: Address, q: &Q) -> R {
    s.call_typed(a, q).unwrap()
}

/// Drives a ledger through everything a journal records; returns the
/// ledger and the counter it audits with.
fn ledger_workload(s: &mut Shard, ledger: Address, accounts: usize) -> Address {
    let counter = s.spawn_with(&module("counter"), &5u64).unwrap();
    let mut ids = Vec::new();
    for i in 0..accounts {
        let id: u64 = call(s, ledger, &LedgerReq::Open { owner: format!("owner{i}") });
        ids.push(id);
        let _: Option<u64> = call(s, ledger, &LedgerReq::Deposit { account: id, amount: 100 + i as u64 });
        let _: (u64, u64) = call(s, ledger, &LedgerReq::Stamp);
        let _: usize = call(s, ledger, &LedgerReq::Audit { at: counter.0, n: i as u64 });
        s.run_until_idle();
    }
    let _: Option<u64> = call(s, ledger, &LedgerReq::Withdraw { account: ids[0], amount: 50 });
    let _: u64 = call(s, ledger, &LedgerReq::Child { n: 7 });
    let _: usize = call(s, ledger, &LedgerReq::Grow { mib: 3 });
    // A one-way message and a message from another reactor's reply path.
    s.send_typed(ledger, &LedgerReq::Stamp).unwrap();
    s.run_until_idle();
    counter
}

#[test]
fn a_replay_from_spawn_reproduces_every_output_and_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let ledger = s.spawn_journaled(&module("ledger"), &[], 0, Level::Written).unwrap();
    ledger_workload(&mut s, ledger, 20);
    let accounts: Vec<(u64, String, u64)> = call(&mut s, ledger, &LedgerReq::Accounts);
    assert_eq!(accounts.len(), 20);
    let live = s.state_digest(ledger).unwrap();
    let live_memory = s.read_memory(ledger).unwrap();

    let segs = read_segments(&journals, ledger);
    assert_eq!(segs.len(), 1);
    let mut r = Replay::start(Shard::new(engine(), ShardConfig::default()), module("ledger"), segs, None).unwrap();
    let steps = replay_all(&mut r);
    // Start-up, 4 calls per account, withdraw, child, grow, the one-way
    // stamp, the audit replies, and the final listing.
    assert!(steps >= 1 + 4 * 20 + 5, "{steps} steps");
    assert_eq!(r.shard().state_digest(ledger), Some(live));
    assert_eq!(r.shard().read_memory(ledger).unwrap(), live_memory, "the replayed memory differs");
}

#[test]
fn example_guests_replay_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let counter = s.spawn_journaled(&module("counter"), &postcard::to_allocvec(&3u64).unwrap(), 0, Level::Synced).unwrap();
    let kv = s.spawn_journaled(&module("kv"), &[], 0, Level::Written).unwrap();
    for i in 0..50u64 {
        let _: u64 = call(&mut s, counter, &CounterMsg::Add(i));
        let _: protocols::KvReply = call(&mut s, kv, &KvReq::Put { key: format!("k{i}"), value: format!("v{}", i * i) });
    }
    let _: protocols::KvReply = call(&mut s, kv, &KvReq::Range { start: "k1".into(), end: None, limit: 10 });
    for (a, name) in [(counter, "counter"), (kv, "kv")] {
        let live = s.state_digest(a).unwrap();
        let mut r = Replay::start(shard(), module(name), read_segments(&journals, a), None).unwrap();
        assert!(replay_all(&mut r) >= 51);
        assert_eq!(r.shard().state_digest(a), Some(live), "{name}");
    }
}

#[test]
fn a_replay_from_a_snapshot_checks_the_state_at_every_snapshot_point() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let ledger = s.spawn_journaled(&module("ledger"), &[], 0, Level::Synced).unwrap();
    ledger_workload(&mut s, ledger, 5);
    // A snapshot that starts a new segment, then more work.
    let cp = s.snapshot(ledger, SnapshotOptions::new(Capture::Blocking).journaled()).unwrap();
    let snap = dir.path().join("ledger.snap");
    cp.write(&snap, &mut |_, _| {}).unwrap();
    let step_at_snapshot = s.journal_step(ledger).unwrap();
    ledger_workload(&mut s, ledger, 5);
    let live = s.state_digest(ledger).unwrap();

    let segs = read_segments(&journals, ledger);
    assert_eq!(segs.len(), 2, "the snapshot starts a second segment");
    let second = Journal::open(&segs[1].bytes).unwrap();
    assert_eq!(second.header().first_step, step_at_snapshot);
    assert_eq!(second.header().base, cp.id().0);

    // From the spawn through the snapshot point (checked) to the end.
    let mut r = Replay::start(shard(), module("ledger"), segs.clone(), None).unwrap();
    replay_all(&mut r);
    assert_eq!(r.shard().state_digest(ledger), Some(live));

    // From the snapshot, with the second segment only.
    let file = SnapshotFile::open(&snap, abi::ABI_VERSION).unwrap();
    let mut r = Replay::start(shard(), module("ledger"), segs[1..].to_vec(), Some(std::slice::from_ref(&file))).unwrap();
    assert_eq!(r.first_step(), step_at_snapshot);
    replay_all(&mut r);
    assert_eq!(r.shard().state_digest(ledger), Some(live));

    // The first segment with the snapshot: refused (it starts at spawn);
    // the second without it: refused, naming the snapshot it needs.
    let e = Replay::start(shard(), module("ledger"), segs[..1].to_vec(), Some(std::slice::from_ref(&file))).unwrap_err();
    assert!(e.to_string().contains("starts at the reactor's spawn"), "{e}");
    let e = Replay::start(shard(), module("ledger"), segs[1..].to_vec(), None).unwrap_err();
    assert!(e.to_string().contains(&cp.id().to_string()), "{e}");
    // Another module: refused before anything runs.
    let e = Replay::start(shard(), module("counter"), segs, None).unwrap_err();
    assert!(matches!(e, ReplayError::Mismatch(_)) && e.to_string().contains("was recorded with module"), "{e}");
}

#[test]
fn a_production_trap_replays_with_the_same_panic_message_and_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let failed: Arc<Mutex<Vec<FailedReactor>>> = Arc::default();
    let f = failed.clone();
    journals.set_failure_hook(Box::new(move |r| f.lock().unwrap().push(r.clone())));
    let ledger = s.spawn_journaled(&module("ledger"), &[], 0, Level::Synced).unwrap();
    ledger_workload(&mut s, ledger, 3);
    let id: u64 = call(&mut s, ledger, &LedgerReq::Open { owner: "mallory".into() });
    let err = s.call_typed::<_, Option<u64>>(ledger, &LedgerReq::Withdraw { account: id, amount: 1 }).unwrap_err();
    let Some(ReactorState::Failed(failure)) = s.state(ledger) else { panic!("the ledger should have failed: {err}") };
    let text = failure.to_string();
    assert!(text.contains("would be overdrawn") && text.contains("mallory"), "{text}");
    journals.sync();
    let got = failed.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "the failure hook runs once");
    assert_eq!(got[0].address, ledger);
    assert_eq!(got[0].failure, text);

    let segs = read_segments(&journals, ledger);
    let summary = Journal::open(&segs[0].bytes).unwrap().check().unwrap();
    assert_eq!(summary.failed.as_ref().map(|f| f.1.as_str()), Some(text.as_str()));
    let mut r = Replay::start(shard(), module("ledger"), segs, None).unwrap();
    let mut last = None;
    while let Some(e) = r.next_event() {
        if let Event::Step(s) = e.unwrap() {
            assert!(s.matches(), "{s:?}");
            last = Some(s);
        }
    }
    let last = last.unwrap();
    assert_eq!(last.recorded_failure.as_deref(), Some(text.as_str()));
    assert_eq!(last.failure.map(|f| f.to_string()).as_deref(), Some(text.as_str()), "same message and backtrace");
    assert!(r.is_dead());
    assert!(text.contains("ledger") || failure.backtrace.is_some(), "a guest backtrace: {text}");
}

/// A replay fed a result other than the recorded one notices at that step.
#[test]
fn a_replay_notices_a_changed_recording() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let ledger = s.spawn_journaled(&module("ledger"), &[], 0, Level::Written).unwrap();
    ledger_workload(&mut s, ledger, 3);
    let segs = read_segments(&journals, ledger);
    // Rewrite the journal with one random draw changed (checksums redone:
    // a forged, well-formed journal).
    let j = Journal::open(&segs[0].bytes).unwrap();
    let mut forged = segs[0].bytes[..journal_format::HEADER_LEN].to_vec();
    let mut encoder = Encoder::new();
    let mut changed_at = None;
    for l in j.records() {
        let l = l.unwrap();
        let mut rec = l.record;
        let mut tape;
        if let Record::Step(st) = &mut rec
            && changed_at.is_none()
            && st.tape.first() == Some(&(journal_format::Call::Random as u8))
        {
            // The entry: call byte, errno 0, length 8, then the bytes.
            tape = st.tape.to_vec();
            assert_eq!(&tape[1..3], &[0, 8]);
            tape[3] ^= 1;
            st.tape = &tape;
            changed_at = Some(l.step);
        }
        encoder.encode(&rec, &mut forged);
    }
    let changed_at = changed_at.expect("an account opening drew random bytes");
    let segs = vec![SegmentBytes { name: "forged".into(), bytes: forged }];
    let mut r = Replay::start(shard(), module("ledger"), segs, None).unwrap();
    let first_bad = std::iter::from_fn(|| r.next_event())
        .filter_map(|e| match e.unwrap() {
            Event::Step(s) if !s.matches() => Some(s.step),
            _ => None,
        })
        .next();
    assert_eq!(first_bad, Some(changed_at), "the step given other random bytes replies another account number");
}

#[test]
fn a_damaged_journal_file_is_refused_at_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let counter = s.spawn_journaled(&module("counter"), &[], 0, Level::Written).unwrap();
    for i in 0..10u64 {
        let _: u64 = call(&mut s, counter, &CounterMsg::Add(i));
    }
    let segs = read_segments(&journals, counter);
    let j = Journal::open(&segs[0].bytes).unwrap();
    let fifth = j.records().nth(5).unwrap().unwrap();
    let mut bad = segs[0].clone();
    bad.bytes[fifth.offset as usize + 9] ^= 0x40;
    let e = Replay::start(shard(), module("counter"), vec![bad], None).unwrap_err();
    match &e {
        ReplayError::Journal { source: JournalError::Damaged { record: 5, offset, .. }, .. } => assert_eq!(*offset, fifth.offset),
        other => panic!("expected record 5 to be refused: {other}"),
    }
    // Cut short: the torn record is named.
    let mut cut = segs[0].clone();
    cut.bytes.truncate(fifth.offset as usize + 3);
    let e = Replay::start(shard(), module("counter"), vec![cut], None).unwrap_err();
    assert!(e.to_string().contains("ends inside record 5"), "{e}");
}

#[test]
fn journaling_needs_journals_and_recorded_imports() {
    let mut s = shard();
    let e = s.spawn_journaled(&module("counter"), &[], 0, Level::Written).unwrap_err();
    assert!(matches!(e, SpawnError::Journal(_)), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _j) = journaled_shard(dir.path());
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (@custom "reactor.abi" "\01\00\00\00")
        (memory (export "memory") 1)
        (func (export "reactor_init") (param i32) (result i32) i32.const 0)
        (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0))"#;
    let (m, _) = engine().load(&wat::parse_str(wat).unwrap()).unwrap();
    let e = s.spawn_journaled(&m, &[], 0, Level::Written).unwrap_err();
    assert!(e.to_string().contains("wasi_snapshot_preview1::path_open"), "{e}");
    // Not journaled, it runs.
    s.spawn(&m, &[]).unwrap();
}

/// In a node: a journaled reactor that traps leaves a post-mortem bundle
/// (checkpoint chain, journal segments, module), and `host replay` of the
/// bundle — moved elsewhere, as to another machine — gives the same
/// failure with the same message and backtrace; it can also stop before
/// the trap and save that state, show what a step changed, and go step by
/// step.
#[test]
fn a_trap_in_a_node_leaves_a_bundle_that_replays_the_same_failure() {
    use crate::nodes::{SECRET, host_command, scratch, start, test_cache, wait_until};
    use serde_json::{Value, json};
    let root = scratch("journal", "postmortem");
    let node = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    let spawned = node.admin().request(json!({"op": "spawn", "module": "ledger", "durable": "synced"})).unwrap();
    assert_eq!(spawned["durable"], json!("synced"));
    let a = spawned["tag"].as_u64().unwrap();
    let alice = node.call(a, json!({"Open": {"owner": "alice"}})).as_u64().unwrap();
    node.call(a, json!({"Deposit": {"account": alice, "amount": 30}}));
    node.call(a, json!("Stamp"));
    // A checkpoint: the journal goes on in a new segment from it.
    node.admin().request(json!({"op": "checkpoint"})).unwrap();
    node.call(a, json!({"Grow": {"mib": 2}}));
    node.call(a, json!({"Withdraw": {"account": alice, "amount": 10}}));
    let err = node.try_call(a, json!({"Withdraw": {"account": alice, "amount": 1000}})).unwrap_err().to_string();
    assert!(err.contains("would be overdrawn"), "{err}");

    let pm = node.dir.join("postmortem");
    let bundle = || {
        std::fs::read_dir(&pm).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
    };
    wait_until("a post-mortem bundle", Duration::from_secs(20), || bundle().is_some());
    let bundle = bundle().unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    assert!(!manifest["snapshots"].as_array().unwrap().is_empty(), "the bundle starts at the checkpoint: {manifest}");
    assert!(manifest["failure"].as_str().unwrap().contains("would be overdrawn"));
    assert!(node.log().contains("post-mortem bundle"), "the node says where the bundle is");

    // Elsewhere, as on another machine.
    let moved = root.join("elsewhere");
    std::fs::create_dir_all(&moved).unwrap();
    for e in std::fs::read_dir(&bundle).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, moved.join(p.file_name().unwrap())).unwrap();
    }
    let host = |args: &[&str]| host_command(&test_cache()).args(args).output().unwrap();
    let out = host(&["replay", moved.to_str().unwrap(), "--step"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("failed the reactor as it did in production, with the same message and backtrace"), "{stdout}");
    assert!(stdout.contains("would be overdrawn"), "{stdout}");
    assert!(stderr.contains("from snapshot"), "it starts from the checkpoint: {stderr}");
    assert!(stdout.matches("step ").count() >= 3, "one line per step: {stdout}");

    // Stop before the trap, save that state, and inspect it.
    let before = root.join("before.snap");
    let out = host(&["replay", moved.to_str().unwrap(), "--break-on-trap", "--save", before.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped before step"), "{stderr}");
    let out = host(&["inspect", before.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // What the 2 MiB growth changed.
    let journal = std::fs::read(moved.join(manifest["journals"].as_array().unwrap().last().unwrap().as_str().unwrap())).unwrap();
    let h = Journal::open(&journal).unwrap().header().first_step;
    // (Step h is the growth, the first step after the checkpoint.)
    let out = host(&["replay", moved.to_str().unwrap(), "--diff", &(h - 1).to_string(), &h.to_string(), "--until", &h.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let pages: usize = stdout.split(" page(s)").next().and_then(|s| s.rsplit(' ').next()).unwrap().parse().unwrap();
    assert!(pages >= 2 << 8, "a 2 MiB allocation touched at least 512 pages: {stdout}");

    // A damaged bundle is refused with the record named.
    let last = moved.join(manifest["journals"].as_array().unwrap().last().unwrap().as_str().unwrap());
    let mut bytes = std::fs::read(&last).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&last, bytes).unwrap();
    let out = host(&["replay", moved.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is damaged"), "{stderr}");
}

/// At `Synced`, a journaled reactor's reply leaves only once the record of
/// the call that made it is on disk; at `Written` it leaves at once.
#[test]
fn at_synced_a_reply_waits_for_its_record_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, journals) = journaled_shard(dir.path());
    let synced = s.spawn_journaled(&module("counter"), &[], 0, Level::Synced).unwrap();
    let written = s.spawn_journaled(&module("counter"), &[], 0, Level::Written).unwrap();
    for (a, held) in [(written, false), (synced, true)] {
        let id = s.request(a, postcard::to_allocvec(&CounterMsg::Add(2)).unwrap(), false).unwrap();
        assert!(!s.run_for(1), "one call");
        let early = s.take_reply(id);
        assert_eq!(early.is_none(), held, "held: {held}");
        let before = journals.stats().figures().syncs;
        s.run_until_idle();
        let reply = early.or_else(|| s.take_reply(id)).expect("the reply once the record is on disk").unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&reply.payload).unwrap(), 2);
        if held {
            assert!(journals.stats().figures().syncs > before, "a sync came before it");
        }
    }
}

/// After `kill -9`, a node brings its journaled reactors back as they were
/// at the kill, not as of its last checkpoint: every call answered is in
/// the state (the reactor restored from the checkpoint and its journal's
/// tail replayed; a reactor spawned after the checkpoint replayed from its
/// spawn), and they are journaled on, so a second kill loses nothing either.
#[test]
fn after_kill_9_journaled_reactors_lose_no_answered_call() {
    use crate::nodes::{SECRET, scratch, start};
    use serde_json::json;
    let root = scratch("journal", "kill9");
    let n = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--durable", "synced"]);
    let ledger = n.spawn("ledger");
    let plain = n.admin().request(json!({"op": "spawn", "module": "kv", "durable": "none"})).unwrap()["tag"].as_u64().unwrap();
    let alice = n.call(ledger, json!({"Open": {"owner": "alice"}})).as_u64().unwrap();
    n.call(ledger, json!({"Deposit": {"account": alice, "amount": 5}}));
    n.admin().request(json!({"op": "checkpoint"})).unwrap();
    // After the checkpoint: more calls, and a reactor spawned after it.
    for i in 0..20 {
        n.call(ledger, json!({"Deposit": {"account": alice, "amount": i}}));
    }
    let bob = n.call(ledger, json!({"Open": {"owner": "bob"}})).as_u64().unwrap();
    let late = n.spawn("counter");
    for _ in 0..9 {
        n.call(late, json!({"Add": 1}));
    }
    // A durable child the ledger spawned (Context::spawn_durable).
    let child = n.call(ledger, json!({"DurableChild": {"n": 100}})).as_u64().unwrap();
    assert_ne!(child, 0, "the durable spawn was refused");
    for _ in 0..4 {
        n.call(child, json!({"Add": 1}));
    }
    n.call(plain, json!({"Put": {"key": "k", "value": "v"}}));
    let digest = n.call(ledger, json!("Digest"));
    let accounts = n.call(ledger, json!("Accounts"));
    drop(n); // SIGKILL

    let n = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--durable", "synced"]);
    assert_eq!(n.call(ledger, json!("Digest")), digest, "every answered call is in its state:\n{}", n.log());
    assert_eq!(n.call(ledger, json!("Accounts")), accounts);
    assert_eq!(n.call(late, json!("Get")), json!(9), "the reactor spawned after the checkpoint came back from its spawn");
    assert_eq!(n.call(child, json!("Get")), json!(104), "the ledger's durable child came back from its journal");
    assert!(n.log().contains("brought up to date from its journal"), "{}", n.log());
    // Not journaled: as of the checkpoint (before its put).
    assert_eq!(n.call(plain, json!({"Get": {"key": "k"}})), json!({"Value": null}));
    // Journaled on: a second kill loses nothing either.
    n.call(ledger, json!({"Deposit": {"account": bob, "amount": 7}}));
    n.call(late, json!({"Add": 1}));
    let digest = n.call(ledger, json!("Digest"));
    drop(n);
    let n = start(&root, 1, SECRET, &["--checkpoint-every", "0"]);
    assert_eq!(n.call(ledger, json!("Digest")), digest, "{}", n.log());
    assert_eq!(n.call(late, json!("Get")), json!(10));
    assert!(!n.log().contains("could not be replayed"), "{}", n.log());
}

/// Supervision: a journaled reactor that fails is restarted from its last
/// checkpoint and journal, up to the message that failed it (a dead letter
/// now: its request answered with the failure); its mailbox is kept, so
/// what was sent to it meanwhile is served after the restart; a second
/// failure within the window exceeds the restart intensity and gives it up.
#[test]
fn a_failed_journaled_reactor_is_restarted_once_then_given_up() {
    use crate::nodes::{SECRET, scratch, start, wait_until};
    use serde_json::json;
    let root = scratch("journal", "supervise");
    let n = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--durable", "synced", "--restart-window", "30"]);
    let ledger = n.spawn("ledger");
    let alice = n.call(ledger, json!({"Open": {"owner": "alice"}})).as_u64().unwrap();
    n.call(ledger, json!({"Deposit": {"account": alice, "amount": 10}}));
    n.admin().request(json!({"op": "checkpoint"})).unwrap();
    n.call(ledger, json!({"Deposit": {"account": alice, "amount": 5}}));
    // The poison, then messages while it fails and restarts.
    let err = n.try_call(ledger, json!({"Withdraw": {"account": alice, "amount": 1000}})).unwrap_err().to_string();
    assert!(err.contains("would be overdrawn"), "{err}");
    for _ in 0..3 {
        n.admin().request(json!({"op": "send", "to": ledger, "msg": {"Deposit": {"account": alice, "amount": 1}}})).unwrap();
    }
    let accounts = n.call(ledger, json!("Accounts"));
    assert_eq!(accounts, json!([[alice, "alice", 18]]), "restarted before the poison, the kept messages served:\n{}", n.log());
    // The supervisor counts the restart once it returns (the reactor may
    // serve a message before that).
    wait_until("the restart counted", Duration::from_secs(20), || n.status()["supervision"]["restarts"] == json!(1));
    let s = n.status();
    assert_eq!(s["supervision"]["dead_letters"], json!(1));
    assert!(s["supervision"]["recent_dead_letters"][0]["failure"].as_str().unwrap().contains("would be overdrawn"));
    // A second failure within the window: given up.
    let err = n.try_call(ledger, json!({"Withdraw": {"account": alice, "amount": 1000}})).unwrap_err().to_string();
    assert!(err.contains("would be overdrawn"), "{err}");
    wait_until("the escalation", Duration::from_secs(20), || n.status()["supervision"]["escalations"] == json!(1));
    let err = n.try_call(ledger, json!("Accounts")).unwrap_err().to_string();
    assert!(err.contains("no live reactor"), "{err}");
    assert!(n.log().contains("escalated"), "{}", n.log());
}

/// A journaled reactor that fails in its start-up leaves a bundle but has
/// no state to restart from: the supervisor says so and the node goes on.
#[test]
fn a_journaled_reactor_failing_its_start_up_is_not_restarted() {
    use crate::nodes::{SECRET, scratch, start, wait_until};
    use serde_json::json;
    let root = scratch("journal", "initfail");
    let n = start(&root, 1, SECRET, &["--checkpoint-every", "0", "--durable", "synced"]);
    let wat = r#"(module
        (@custom "reactor.abi" "\01\00\00\00")
        (memory (export "memory") 1)
        (func (export "reactor_init") (param i32) (result i32) i32.const 7)
        (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0))"#;
    let file = root.join("bad-start.wasm");
    std::fs::write(&file, wat::parse_str(wat).unwrap()).unwrap();
    let err = n.admin().request(json!({"op": "spawn", "module": file.to_str().unwrap()})).unwrap_err().to_string();
    assert!(err.contains("returned status 7"), "{err}");
    wait_until("the supervisor's verdict", Duration::from_secs(20), || n.log().contains("there is no state to go on from"));
    // The node goes on.
    let c = n.spawn("counter");
    assert_eq!(n.call(c, json!({"Add": 2})), json!(2));
    assert!(n.dir.join("postmortem").read_dir().unwrap().count() >= 1, "a bundle of the failed start-up");
}

/// A journaled reactor that moves stays journaled at its level: the node it
/// arrives at checkpoints right away and journals it from that checkpoint
/// on, so a `kill -9` there loses no answered call made after the move.
#[test]
fn a_journaled_reactor_stays_journaled_after_it_moves() {
    use crate::nodes::{SECRET, pair, scratch, start, wait_until};
    use serde_json::json;
    let root = scratch("journal", "moved");
    let args = ["--checkpoint-every", "0", "--durable", "synced"];
    let (n1, n2) = pair(&root, &args);
    let ledger = n1.spawn("ledger");
    let alice = n1.call(ledger, json!({"Open": {"owner": "alice"}})).as_u64().unwrap();
    n1.call(ledger, json!({"Deposit": {"account": alice, "amount": 5}}));
    n1.admin().request(json!({"op": "migrate", "address": ledger, "to": 2})).unwrap();
    wait_until("journaled again on node 2", Duration::from_secs(30), || n2.log().contains("is journaled again, at level synced"));
    for i in 0..10 {
        n2.call(ledger, json!({"Deposit": {"account": alice, "amount": i}}));
    }
    let digest = n2.call(ledger, json!("Digest"));
    assert_eq!(n2.call(ledger, json!("Accounts")), json!([[alice, "alice", 50]]));
    drop(n2); // SIGKILL
    let n2 = start(&root, 2, SECRET, &[&args[..], &["--seed", &n1.addr]].concat());
    assert_eq!(n2.call(ledger, json!("Digest")), digest, "every answered call after the move is in its state:\n{}", n2.log());
    assert!(n2.log().contains("brought up to date from its journal"), "{}", n2.log());
}
