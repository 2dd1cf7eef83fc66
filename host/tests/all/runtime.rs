//! The multi-core runtime: shards on threads, rings between them.
use crate::util::*;
use protocols::{CounterMsg, FaultyCmd, PingMsg, PingReport};
use reactor_runtime::{Address, CallError, ReactorState, Runtime, RuntimeConfig, SendError};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn runtime(shards: usize) -> Runtime {
    Runtime::new(engine(), RuntimeConfig { shards, ..RuntimeConfig::default() }).unwrap()
}

#[test]
fn reactors_on_different_shards_play_both_ways() {
    let rt = runtime(2);
    let pp = module("pingpong");
    let a = rt.spawn_on(0, &pp, vec![], 0).unwrap();
    let b = rt.spawn_on(1, &pp, vec![], 0).unwrap();
    assert_eq!((a.shard(), b.shard()), (0, 1));
    for requests in [false, true] {
        let r: PingReport =
            rt.call_typed(a, &PingMsg::Play { peer: Some(b.0), rounds: 2000, window: 16, requests }).unwrap();
        assert_eq!(if requests { r.echoes } else { r.pongs }, 2000);
    }
    let rb: PingReport = rt.call_typed(b, &PingMsg::Report).unwrap();
    assert_eq!(rb.pings, 2000, "every ping crossed the ring exactly once");
    assert!(rt.stats().cross_shard >= 8000);
}

#[test]
fn more_shards_than_cores_still_complete_all_traffic() {
    let rt = runtime(6);
    let pp = module("pingpong");
    let players: Vec<Address> = (0..24).map(|_| rt.spawn(&pp, &[]).unwrap()).collect();
    let partners: Vec<Address> = (0..24).map(|_| rt.spawn(&pp, &[]).unwrap()).collect();
    let calls: Vec<_> = players
        .iter()
        .zip(&partners)
        .map(|(a, b)| {
            let msg = PingMsg::Play { peer: Some(b.0), rounds: 500, window: 4, requests: false };
            rt.request(*a, postcard::to_allocvec(&msg).unwrap(), false).unwrap()
        })
        .collect();
    for c in calls {
        let r: PingReport = postcard::from_bytes(&c.wait(Some(Duration::from_secs(60))).unwrap().payload).unwrap();
        assert_eq!(r.pongs, 500);
    }
}

#[test]
fn a_failure_on_one_shard_leaves_the_others_running() {
    let rt = runtime(2);
    let faulty = rt.spawn_on(1, &module("faulty"), vec![], 0).unwrap();
    let counter = rt.spawn_on(0, &module("counter"), postcard::to_allocvec(&1u64).unwrap(), 0).unwrap();
    let neighbour = rt.spawn_on(1, &module("counter"), postcard::to_allocvec(&2u64).unwrap(), 0).unwrap();
    let r = rt.call_typed::<_, u64>(faulty, &FaultyCmd::Panic("shard test".into()));
    assert!(matches!(r, Err(CallError::Failed(a, _)) if a == faulty), "{r:?}");
    assert!(matches!(rt.state(faulty), Some(ReactorState::Failed(_))));
    assert_eq!(rt.call_typed::<_, u64>(counter, &CounterMsg::Get).unwrap(), 1);
    assert_eq!(rt.call_typed::<_, u64>(neighbour, &CounterMsg::Get).unwrap(), 2);
}

/// A request from outside that reaches its reactor a second time (the same
/// sender and correlation id: sent again after a takeover or a restart) is
/// not applied twice: the copy gets the reply the first got. A request
/// between reactors, and a new request from outside, are applied as ever.
#[test]
fn a_request_from_outside_taken_twice_is_applied_once() {
    let rt = runtime(2);
    let c = rt.spawn_on(1, &module("counter"), vec![], 0).unwrap();
    let add = postcard::to_allocvec(&CounterMsg::Add(5)).unwrap();
    let first = rt.request(c, add.clone(), false).unwrap();
    let corr = first.corr();
    let r1 = first.wait(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(postcard::from_bytes::<u64>(&r1.payload).unwrap(), 5);
    for _ in 0..3 {
        let again = rt.request_again(c, corr, add.clone(), false).unwrap().wait(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(again.payload, r1.payload, "the copy gets the first one's reply");
    }
    assert_eq!(rt.call_typed::<_, u64>(c, &CounterMsg::Get).unwrap(), 5, "applied once");
    assert_eq!(rt.stats().answered_again, 3);
    // A new request (a new correlation id) is applied.
    assert_eq!(rt.call_typed::<_, u64>(c, &CounterMsg::Add(1)).unwrap(), 6);
}

#[test]
fn unknown_addresses_are_answered_or_counted() {
    let rt = runtime(2);
    let c = rt.spawn_on(1, &module("counter"), vec![], 0).unwrap();
    let ghost = Address(c.0 + 1000);
    let r = rt.call_typed::<_, u64>(ghost, &CounterMsg::Get);
    assert_eq!(r, Err(CallError::Send(SendError::NoSuchReactor(ghost))));
    rt.send_typed(ghost, &CounterMsg::Add(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.stats().dead_letters == 0 {
        assert!(Instant::now() < deadline, "the dead letter was never counted");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rt.send_typed(Address(u64::MAX), &CounterMsg::Get), Err(SendError::NoSuchReactor(Address(u64::MAX))));
}

#[test]
fn full_command_ring_pushes_back_and_loses_nothing() {
    let rt = Runtime::new(engine(), RuntimeConfig { shards: 1, command_capacity: 8, ..RuntimeConfig::default() }).unwrap();
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    // Hold the shard still so the ring cannot drain.
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let inspector = std::thread::scope(|s| {
        let h = s.spawn(|| rt.inspect(0, move |_| { g.wait(); }));
        std::thread::sleep(Duration::from_millis(20));
        let mut accepted = 0u64;
        let mut refused = 0u64;
        for _ in 0..100 {
            match rt.send_typed(c, &CounterMsg::Add(1)) {
                Ok(()) => accepted += 1,
                Err(SendError::InboxFull(a)) => {
                    assert_eq!(a, c);
                    refused += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        gate.wait();
        h.join().unwrap().expect("the shard is up");
        (accepted, refused)
    });
    let (accepted, refused) = inspector;
    assert!(refused > 0, "a ring of 8 cannot take 100 messages while its shard is held");
    assert_eq!(rt.call_typed::<_, u64>(c, &CounterMsg::Get).unwrap(), accepted, "every accepted message counted");
}

fn cpu_time_of_threads(prefix: &str) -> Duration {
    let mut ticks = 0u64;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    Duration::from_millis(ticks * 10)
}

#[test]
fn idle_shards_sleep_instead_of_spinning() {
    // Alone in a child process: the shard threads of tests running in
    // parallel in this binary carry the same names and would be counted.
    run_alone("runtime::idle_shards_alone");
}

#[test]
#[ignore = "run by idle_shards_sleep_instead_of_spinning in a child process"]
fn idle_shards_alone() {
    let rt = runtime(4);
    let c = rt.spawn(&module("counter"), &[]).unwrap();
    assert_eq!(rt.call_typed::<_, u64>(c, &CounterMsg::Get).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(50));
    let before = cpu_time_of_threads("shard-");
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_time_of_threads("shard-") - before;
    // Four spinning threads would burn ~2 s of CPU (capped by 2 cores: ~1 s).
    assert!(used <= Duration::from_millis(60), "idle shards used {used:?} of CPU in 500 ms");
    assert_eq!(rt.call_typed::<_, u64>(c, &CounterMsg::Add(1)).unwrap(), 1, "and wake up for work");
}

#[test]
fn checkpoints_asked_from_many_threads_at_once_all_complete() {
    use reactor_runtime::snapshot::{Capture, SnapshotOptions};
    // Two whole-runtime barriers interleaved across shards would each wait
    // for a shard stuck in the other: they are taken one at a time.
    let rt = Arc::new(Runtime::new(engine(), RuntimeConfig { shards: 2, ..Default::default() }).unwrap());
    let m = module("counter");
    for i in 0..8u64 {
        rt.spawn_with(&m, &i).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for t in 0..4 {
        let (rt, tx) = (rt.clone(), tx.clone());
        std::thread::spawn(move || {
            for _ in 0..400 {
                let cp = rt.checkpoint(SnapshotOptions::new(Capture::Concurrent)).unwrap();
                assert_eq!(cp.reactors().len(), 8);
            }
            tx.send(t).unwrap();
        });
    }
    for _ in 0..4 {
        // A hang guard, not a timing assertion.
        rx.recv_timeout(Duration::from_secs(120)).expect("every checkpoint completes");
    }
}
