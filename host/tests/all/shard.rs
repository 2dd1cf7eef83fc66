//! Shard behaviour: backpressure, fairness, limits, addressing, density.
use crate::util::*;
use protocols::{CounterMsg, PingMsg};
use reactor_runtime::{Address, CallError, ShardConfig, SendError, SpawnError};

#[test]
fn full_inbox_pushes_back_and_loses_nothing() {
    let mut rt = shard_with(ShardConfig { inbox_capacity: 4, ..ShardConfig::default() });
    let a = rt.spawn(&module("counter"), &[]).unwrap();
    for _ in 0..4 {
        rt.send_typed(a, &CounterMsg::Add(1)).unwrap();
    }
    assert_eq!(rt.send_typed(a, &CounterMsg::Add(1)), Err(SendError::InboxFull(a)));
    assert_eq!(rt.queued(a), Some(4));
    rt.run_until_idle();
    rt.send_typed(a, &CounterMsg::Add(1)).unwrap();
    let n: u64 = rt.call_typed(a, &CounterMsg::Get).unwrap();
    assert_eq!(n, 5, "the four queued and the retried one, none lost");
}

#[test]
fn a_deep_inbox_does_not_starve_others() {
    let mut rt = shard_with(ShardConfig { max_batch: 16, ..ShardConfig::default() });
    let busy = rt.spawn(&module("counter"), &[]).unwrap();
    let quiet = rt.spawn(&module("counter"), &[]).unwrap();
    for _ in 0..1000 {
        rt.send_typed(busy, &CounterMsg::Add(1)).unwrap();
    }
    rt.send_typed(quiet, &CounterMsg::Add(1)).unwrap();
    // Two turns: one batch for busy, then quiet's turn.
    assert!(rt.run_for(2));
    assert_eq!(rt.queued(quiet), Some(0), "quiet was served after one batch of busy");
    assert_eq!(rt.queued(busy), Some(1000 - 16));
    rt.run_until_idle();
    let n: u64 = rt.call_typed(busy, &CounterMsg::Get).unwrap();
    assert_eq!(n, 1000);
}

#[test]
fn sends_to_unknown_addresses_are_refused() {
    let mut rt = shard();
    assert_eq!(rt.send_typed(Address(12345), &CounterMsg::Get), Err(SendError::NoSuchReactor(Address(12345))));
    assert!(matches!(rt.request(Address::HOST, vec![], false), Err(SendError::NoSuchReactor(_))));
    let big = vec![0u8; reactor_runtime::abi::MAX_PAYLOAD_LEN as usize + 1];
    let a = rt.spawn(&module("counter"), &[]).unwrap();
    assert!(matches!(rt.send(a, big, false), Err(SendError::TooLarge(_))));
}

#[test]
fn one_way_messages_get_no_reply() {
    let mut rt = shard();
    let a = rt.spawn(&module("pingpong"), &[]).unwrap();
    // A Ping from the outside world gets a Pong sent to the outside world.
    rt.send_typed(a, &PingMsg::Ping { n: 9 }).unwrap();
    rt.run_until_idle();
    let msgs = rt.drain_host_messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].from, a);
    let pong: PingMsg = postcard::from_bytes(&msgs[0].payload).unwrap();
    assert_eq!(pong, PingMsg::Pong { n: 9 });
    // A request the reactor never answers is reported, not waited on forever.
    let r = rt.call(a, postcard::to_allocvec(&PingMsg::Pong { n: 1 }).unwrap(), false);
    assert_eq!(r, Err(CallError::NoReply(a)));
}

#[test]
fn reactor_limit_refuses_spawns_from_outside_and_inside() {
    let mut rt = shard_with(ShardConfig { max_reactors: 2, ..ShardConfig::default() });
    let a = rt.spawn(&module("pingpong"), &[]).unwrap();
    let _b = rt.spawn(&module("counter"), &[]).unwrap();
    assert_eq!(rt.spawn(&module("counter"), &[]), Err(SpawnError::Limit(2)));
    // A reactor asking for a partner is refused too and says so.
    let r = rt.call(a, postcard::to_allocvec(&PingMsg::Play { peer: None, rounds: 1, window: 1, requests: false }).unwrap(), false).unwrap();
    let text: String = postcard::from_bytes(&r.payload).unwrap();
    assert!(text.contains("SpawnRefused"), "{text}");
}

#[test]
fn thirty_thousand_reactors_coexist_in_few_mappings() {
    // wasmtime's default memory layout spends three kernel mappings per
    // instance and stops near 22,000 at the default vm.max_map_count; the
    // host's memories merge into a handful.
    let m = module("counter");
    let mut rt = shard();
    let (maps_before, _) = reactor_runtime::mappings().unwrap();
    let addrs: Vec<Address> = (0..30_000).map(|i| rt.spawn_with(&m, &(i as u64)).unwrap()).collect();
    for &a in &addrs {
        rt.send_typed(a, &CounterMsg::Add(1)).unwrap();
    }
    rt.run_until_idle();
    for (i, &a) in addrs.iter().enumerate().step_by(997) {
        let n: u64 = rt.call_typed(a, &CounterMsg::Get).unwrap();
        assert_eq!(n, i as u64 + 1);
    }
    let (maps_after, _) = reactor_runtime::mappings().unwrap();
    assert_eq!(rt.stats().live, 30_000);
    assert!(maps_after < maps_before + 3_000, "mappings grew from {maps_before} to {maps_after} for 30,000 reactors");
}
