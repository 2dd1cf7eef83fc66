//! Hostile guests: each test is one attack by a real Wasm module (the
//! `faulty` reactor on command, or a hand-written module), and asserts that
//! the attack fails with a clear error *and* that the other reactors of the
//! shard or node are untouched.
use crate::util::*;
use protocols::{BlobOp, CounterMsg, FaultyCmd, KvReply, KvReq};
use reactor_runtime::snapshot::SnapshotError;
use reactor_runtime::{
    Address, CallError, FailureReason, Limits, LoadError, ReactorState, Runtime, RuntimeConfig, SendError, Shard,
    ShardConfig, ShardDown, SpawnError, abi,
};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const ABI_OK: &str = r#"(@custom "reactor.abi" "\01\00\00\00")"#;

fn wasm(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {body})")).expect("test module is valid WAT")
}

/// A reactor that takes every message and never replies.
fn silent_module() -> Arc<reactor_runtime::LoadedModule> {
    let bytes = wasm(&format!(
        r#"{ABI_OK} (memory (export "memory") 1)
           (func (export "reactor_init") (param i32) (result i32) i32.const 0)
           (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)"#
    ));
    engine().load(&bytes).unwrap().0
}

fn counter_works(rt: &mut Shard, c: Address) {
    let before: u64 = rt.call_typed(c, &CounterMsg::Get).unwrap();
    let after: u64 = rt.call_typed(c, &CounterMsg::Add(1)).unwrap();
    assert_eq!(after, before + 1, "the bystander still counts");
}

fn one_shard_runtime() -> Runtime {
    Runtime::new(engine(), RuntimeConfig { shards: 1, ..RuntimeConfig::default() }).unwrap()
}

#[test]
fn sleeping_fails_the_sleeper_and_never_blocks_its_shard() {
    // One shard thread: had the sleep blocked it, the call below would time
    // out instead of failing, and the bystander would never answer.
    let rt = one_shard_runtime();
    let bystander = rt.spawn(&module("counter"), &[]).unwrap();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    match rt.call_typed::<_, u32>(f, &FaultyCmd::Sleep(u64::MAX)) {
        Err(CallError::Failed(a, failure)) => {
            assert_eq!(a, f);
            assert!(
                matches!(&failure.reason, FailureReason::GuestFault(m)
                    if m.contains("poll_oneoff") && m.contains("may not sleep")),
                "{failure}"
            );
        }
        other => panic!("expected the sleeper to fail, got {other:?}"),
    }
    // Any sleep at all.
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    assert!(matches!(rt.call_typed::<_, u32>(f, &FaultyCmd::Sleep(1)), Err(CallError::Failed(..))));
    let n: u64 = rt.call_typed(bystander, &CounterMsg::Add(5)).unwrap();
    assert_eq!(n, 5);
}

/// Guest output goes to the log, never to the process's stdout: a child
/// process whose stdout is a pipe nobody reads (a full pipe blocks any
/// writer after 64 KiB) prints 100 MB from a reactor and still finishes.
#[test]
fn printing_to_a_full_pipe_never_blocks_the_shard() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["hostile_guests::print_flood_child", "--exact", "--ignored", "--test-threads=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Keep the pipe open and unread until the child ends (or the guard
    // below gives up on a hang).
    let _unread = child.stdout.take();
    let guard = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("the child hung: guest output blocked on the full pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the child failed: {status}");
}

#[test]
#[ignore = "run by printing_to_a_full_pipe_never_blocks_the_shard with its stdout a full pipe"]
fn print_flood_child() {
    let mut rt = shard();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    let r: u32 = rt.call_typed(f, &FaultyCmd::Print { lines: 100_000, len: 1000 }).unwrap();
    assert_eq!(r, 0);
    counter_works(&mut rt, c);
}

#[test]
fn a_start_function_is_refused_at_load() {
    // Its start function calls the host before the reactor exists: it
    // would run inside instantiation, before memory and router are set.
    let bytes = wasm(&format!(
        r#"{ABI_OK}
           (import "reactor" "send" (func $send (param i64 i32 i32 i32) (result i32)))
           (memory (export "memory") 1)
           (func $start (drop (call $send (i64.const 1) (i32.const 0) (i32.const 8) (i32.const 0))))
           (start $start)
           (func (export "reactor_init") (param i32) (result i32) i32.const 0)
           (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)"#
    ));
    match engine().load(&bytes) {
        Err(e @ LoadError::StartFunction(_)) => {
            assert!(e.to_string().contains("start function"), "{e}");
        }
        other => panic!("expected a start-function refusal, got {other:?}"),
    }
    let mut rt = shard();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    counter_works(&mut rt, c);
}

#[test]
fn more_than_one_memory_is_refused_at_load() {
    let bytes = wasm(&format!(
        r#"{ABI_OK}
           (memory (export "memory") 1)
           (memory $more 1)
           (memory $and_more 1)
           (func (export "reactor_init") (param i32) (result i32) i32.const 0)
           (func (export "reactor_receive") (param i32 i32) (result i32) i32.const 0)"#
    ));
    match engine().load(&bytes) {
        Err(e @ LoadError::Memories(3)) => assert!(e.to_string().contains("exactly one"), "{e}"),
        other => panic!("expected a refusal of 3 memories, got {other:?}"),
    }
}

#[test]
fn a_shard_thread_that_dies_fails_every_caller_instead_of_hanging() {
    let rt = Runtime::new(engine(), RuntimeConfig { shards: 2, ..RuntimeConfig::default() }).unwrap();
    let counter = module("counter");
    let doomed = rt.spawn_on(0, &counter, vec![], 0).unwrap();
    let survivor = rt.spawn_on(1, &counter, vec![], 0).unwrap();
    let silent = rt.spawn_on(0, &silent_module(), vec![], 0).unwrap();
    // A request waiting on shard 0 when it dies: answered with the error.
    let waiting = rt.request(silent, vec![1], false).unwrap();
    // Hold shard 0 in an inspection while a request is queued for it, then
    // let it panic, as a host bug would.
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let (died, queued) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            rt.inspect(0, move |_| {
                g.wait();
                panic!("simulated host bug on shard 0");
            })
        });
        gate.wait();
        let queued = rt.request(doomed, postcard::to_allocvec(&CounterMsg::Get).unwrap(), false);
        (h.join().unwrap(), queued)
    });
    assert_eq!(died.err(), Some(ShardDown(0)));
    assert!(matches!(waiting.wait(None), Err(CallError::Send(SendError::ShardDown(0)))));
    if let Ok(queued) = queued {
        assert!(matches!(queued.wait(None), Err(CallError::Send(SendError::ShardDown(0)))));
    }
    // Everything aimed at shard 0 afterwards fails at once.
    assert!(matches!(rt.call_typed::<_, u64>(doomed, &CounterMsg::Get), Err(CallError::Send(SendError::ShardDown(0)))));
    assert_eq!(rt.spawn_on(0, &counter, vec![], 0), Err(SpawnError::ShardDown(0)));
    assert!(matches!(rt.snapshot(doomed, Default::default()), Err(SnapshotError::ShardDown(0))));
    assert!(matches!(rt.checkpoint(Default::default()), Err(SnapshotError::ShardDown(0))));
    assert!(matches!(rt.state(doomed), Some(ReactorState::Failed(_))));
    assert_eq!(rt.inspect(0, |_| ()), Err(ShardDown(0)));
    // Shard 1 goes on.
    let n: u64 = rt.call_typed(survivor, &CounterMsg::Add(3)).unwrap();
    assert_eq!(n, 3);
    drop(rt); // returns: the stopped shard still takes its stop command
}

#[test]
fn replies_to_requests_never_made_are_refused() {
    let mut rt = shard();
    let victim = rt.spawn(&module("counter"), &[]).unwrap();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    // 100 × 1 MiB "replies" to correlation ids the victim never issued.
    let cmd = FaultyCmd::ForgeReply { to: victim.0, corr: 0x1234_5678, len: 1 << 20, times: 100 };
    let (accepted, last): (u32, i32) = rt.call_typed(f, &cmd).unwrap();
    assert_eq!((accepted, last), (0, abi::STATUS_BAD_ARGUMENT));
    assert_eq!(rt.queued(victim), Some(0), "nothing was queued for the victim");
    assert_eq!(rt.stats().unmatched_replies, 100);
    counter_works(&mut rt, victim);
}

#[test]
fn only_the_reactor_asked_can_answer_a_request() {
    let mut rt = shard();
    let silent = rt.spawn(&silent_module(), &[]).unwrap();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    // A request from outside to `silent`, which never answers; the attacker
    // learnt its correlation id and answers in its place.
    let id = rt.request(silent, vec![1, 2, 3], false).unwrap();
    let cmd = FaultyCmd::ForgeReply { to: Address::HOST.0, corr: id.0, len: 5, times: 3 };
    let (accepted, last): (u32, i32) = rt.call_typed(f, &cmd).unwrap();
    assert_eq!((accepted, last), (0, abi::STATUS_BAD_ARGUMENT));
    assert!(rt.take_reply(id).is_none(), "the forged answers never reached the caller");
    // Between reactors too: the attacker cannot answer a request one
    // reactor made to another (pingpong's requests are answered by their
    // peer only; a forged reply to any correlation id is refused).
    let victim = rt.spawn(&module("counter"), &[]).unwrap();
    for corr in [0, 1, id.0, id.0 + 1, u64::MAX] {
        let (accepted, _): (u32, i32) =
            rt.call_typed(f, &FaultyCmd::ForgeReply { to: victim.0, corr, len: 8, times: 1 }).unwrap();
        assert_eq!(accepted, 0);
    }
    counter_works(&mut rt, victim);
}

#[test]
fn blob_tags_are_capabilities_not_names() {
    let mut rt = shard();
    let owner = rt.spawn(&module("kv"), &[]).unwrap();
    let thief = rt.spawn(&module("faulty"), &[]).unwrap();
    let secret = b"the launch codes".to_vec();
    let KvReply::Blob { tag, len } = rt.call_typed(owner, &KvReq::PutBlob { bytes: secret.clone() }).unwrap() else {
        panic!("kv made no blob")
    };
    // Tags are sequential: the thief tries the tag and its neighbours.
    for guess in tag.saturating_sub(8)..tag + 8 {
        let r: i64 = rt.call_typed(thief, &FaultyCmd::Blob(BlobOp::Open(guess))).unwrap();
        assert_eq!(r, abi::STATUS_NO_SUCH_BLOB as i64, "tag {guess}");
        let r: i64 = rt.call_typed(thief, &FaultyCmd::Blob(BlobOp::Read { tag: guess, offset: 0, len: 64 })).unwrap();
        assert_eq!(r, abi::STATUS_NO_SUCH_BLOB as i64);
    }
    // Nor can it give itself what it does not hold.
    let r: i32 = rt.call_typed(thief, &FaultyCmd::GiveBlob { tag, to: thief.0 }).unwrap();
    assert_eq!(r, abi::STATUS_NO_SUCH_BLOB);
    // Given, it opens and reads it.
    assert_eq!(rt.call_typed::<_, KvReply>(owner, &KvReq::GiveBlob { tag, to: thief.0 }).unwrap(), KvReply::Blob { tag, len });
    let r: i64 = rt.call_typed(thief, &FaultyCmd::Blob(BlobOp::Open(tag))).unwrap();
    assert_eq!(r, abi::STATUS_OK as i64);
    let r: i64 = rt.call_typed(thief, &FaultyCmd::Blob(BlobOp::Len(tag))).unwrap();
    assert_eq!(r, secret.len() as i64);
    // The owner still has it, unchanged.
    let got: KvReply = rt.call_typed(owner, &KvReq::ReadBlob { tag, offset: 0, len: 64 }).unwrap();
    assert_eq!(got, KvReply::Bytes(secret));
}

fn budget_config(budget: usize) -> ShardConfig {
    ShardConfig { limits: Limits { memory_cap: 16 << 20, budget: Some(budget), ..Limits::default() }, ..ShardConfig::default() }
}

#[test]
fn blobs_a_reactor_holds_count_against_its_budget() {
    let mut rt = shard_with(budget_config(32 << 20));
    let hoarder = rt.spawn(&module("faulty"), &[]).unwrap();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    let (created, status): (u32, i64) =
        rt.call_typed(hoarder, &FaultyCmd::BigBlobs { len: 4 << 20, max: 1000 }).unwrap();
    assert_eq!(status, abi::STATUS_LIMIT as i64);
    // 32 MiB less its memory (a few MiB, and the 4 MiB buffer the guest
    // copies from): at most 7 blobs of 4 MiB.
    assert!((1..8).contains(&created), "created {created} blobs of 4 MiB within a 32 MiB budget");
    assert!(rt.refs().budget().used() < 64 << 20, "the node holds {} bytes", rt.refs().budget().used());
    counter_works(&mut rt, c);
    // Another reactor still has its own budget.
    let other = rt.spawn(&module("faulty"), &[]).unwrap();
    let (created, _): (u32, i64) = rt.call_typed(other, &FaultyCmd::BigBlobs { len: 1 << 20, max: 3 }).unwrap();
    assert_eq!(created, 3);
}

#[test]
fn bytes_queued_for_a_reactor_count_against_its_budget() {
    let mut rt = shard_with(budget_config(24 << 20));
    let victim = rt.spawn(&module("counter"), &[]).unwrap();
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    // 1,000 messages of 1 MiB into an inbox that holds 4,096 messages.
    let (accepted, last): (u32, i32) =
        rt.call_typed(f, &FaultyCmd::Flood { to: victim.0, len: 1 << 20, times: 1000 }).unwrap();
    assert_eq!(last, abi::STATUS_INBOX_FULL, "refused as backpressure");
    assert!((1..24).contains(&accepted), "accepted {accepted} MiB for a 24 MiB budget");
    // The victim drains them (they do not decode: it fails them one by one
    // or ignores them, as counter does) and still works.
    rt.run_until_idle();
    if rt.state(victim) == Some(ReactorState::Running) {
        counter_works(&mut rt, victim);
    }
    assert!(rt.refs().budget().used() < 64 << 20);
}

#[test]
fn memory_growth_stops_at_the_budget() {
    let mut rt = shard_with(budget_config(8 << 20));
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    match rt.call_typed::<_, u64>(f, &FaultyCmd::AllocForever) {
        Err(CallError::Failed(_, failure)) => assert!(
            matches!(&failure.reason, FailureReason::Budget(m) if m.contains("budget of 8388608 bytes")),
            "{failure}"
        ),
        other => panic!("expected a budget failure, got {other:?}"),
    }
    counter_works(&mut rt, c);
}

#[test]
fn the_node_budget_bounds_what_all_reactors_hold_together() {
    let mut rt = shard();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    let node = rt.refs().budget().clone();
    node.set_limit(node.used() + (40 << 20));
    let hoarders: Vec<Address> = (0..4).map(|_| rt.spawn(&module("faulty"), &[]).unwrap()).collect();
    for &h in &hoarders {
        // Each hoarder grows its memory for the 4 MiB it copies from, then
        // makes blobs: the node refuses one or the other once it is full.
        match rt.call_typed::<_, (u32, i64)>(h, &FaultyCmd::BigBlobs { len: 4 << 20, max: 100 }) {
            Ok((_, status)) => assert_eq!(status, abi::STATUS_LIMIT as i64),
            Err(CallError::Failed(_, f)) => {
                assert!(matches!(&f.reason, FailureReason::Budget(m) if m.contains("node")), "{f}")
            }
            Err(e) => panic!("{e}"),
        }
        assert!(node.used() <= node.limit(), "the node holds {} of {}", node.used(), node.limit());
    }
    counter_works(&mut rt, c);
    node.set_limit(usize::MAX);
}

#[test]
fn spawns_are_limited_per_parent() {
    let mut rt = shard_with(ShardConfig { max_children: 10, ..ShardConfig::default() });
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let (spawned, status): (u32, i64) = rt.call_typed(f, &FaultyCmd::SpawnMany(50)).unwrap();
    assert_eq!((spawned, status), (10, abi::STATUS_SPAWN_REFUSED as i64));
    assert_eq!(rt.stats().live, 11);
    // A child that goes frees its place.
    let child = rt.live().find(|&a| a != f).unwrap();
    let _ = rt.call_typed::<_, u64>(child, &FaultyCmd::Panic("leaving".into()));
    let (spawned, _): (u32, i64) = rt.call_typed(f, &FaultyCmd::SpawnMany(5)).unwrap();
    assert_eq!(spawned, 1);
}

#[test]
fn the_host_mailbox_is_bounded_in_bytes() {
    let mut rt = shard_with(ShardConfig { host_mailbox_bytes: 16 << 20, ..ShardConfig::default() });
    let f = rt.spawn(&module("faulty"), &[]).unwrap();
    let (accepted, last): (u32, i32) =
        rt.call_typed(f, &FaultyCmd::Flood { to: Address::HOST.0, len: 1 << 20, times: 1000 }).unwrap();
    assert_eq!(last, abi::STATUS_INBOX_FULL);
    assert!((1..16).contains(&accepted), "the host mailbox took {accepted} MiB of a 16 MiB bound");
    assert_eq!(rt.drain_host_messages().len(), accepted as usize);
    // Drained, it takes messages again.
    let (accepted, _): (u32, i32) =
        rt.call_typed(f, &FaultyCmd::Flood { to: Address::HOST.0, len: 100, times: 10 }).unwrap();
    assert_eq!(accepted, 10);
}

/// The outstanding-request check must not cost restores their replies: a
/// snapshot records each reactor's requests waiting for replies, and the
/// restored reactor takes the replies to them.
#[test]
fn requests_waiting_at_a_checkpoint_are_answered_after_the_restore() {
    use protocols::{PingMsg, PingReport};
    let pingpong = module("pingpong");
    let mut first = shard();
    let (a, b) = (first.spawn(&pingpong, &[]).unwrap(), first.spawn(&pingpong, &[]).unwrap());
    let play = PingMsg::Play { peer: Some(b.0), rounds: 20, window: 4, requests: true };
    first.request(a, postcard::to_allocvec(&play).unwrap(), false).unwrap();
    // Mid-game: requests from `a` wait in `b`'s inbox or as replies.
    first.run_for(3);
    let cp = first.checkpoint(Default::default()).unwrap();
    let mut second = shard();
    let mut restored = second.restore(&[&cp]).unwrap();
    restored.sort_unstable();
    assert_eq!(restored, vec![a, b]);
    second.run_until_idle();
    let report: PingReport = second.call_typed(a, &PingMsg::Report).unwrap();
    assert_eq!(report.echoes, 20, "every request of the game was answered after the restore");
    assert_eq!(second.stats().unmatched_replies, 0);
}
