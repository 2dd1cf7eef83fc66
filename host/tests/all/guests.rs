//! The example reactors do what their protocols say.
use crate::util::*;
use protocols::{CounterMsg, KvReply, KvReq, PingInit, PingMsg, PingReport};
use reactor_runtime::{Address, ReactorState};

#[test]
fn counter_counts_from_its_init_argument() {
    let mut rt = shard();
    let a = rt.spawn_with(&module("counter"), &5u64).unwrap();
    rt.send_typed(a, &CounterMsg::Add(3)).unwrap();
    let n: u64 = rt.call_typed(a, &CounterMsg::Get).unwrap();
    assert_eq!(n, 8);
}

fn kv_put(rt: &mut reactor_runtime::Shard, a: Address, k: &str, v: &str) -> KvReply {
    rt.call_typed(a, &KvReq::Put { key: k.into(), value: v.into() }).unwrap()
}

#[test]
fn kv_put_get_delete_range() {
    let mut rt = shard();
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    assert_eq!(kv_put(&mut rt, a, "b", "2"), KvReply::Value(None));
    assert_eq!(kv_put(&mut rt, a, "a", "1"), KvReply::Value(None));
    assert_eq!(kv_put(&mut rt, a, "c", "3"), KvReply::Value(None));
    assert_eq!(kv_put(&mut rt, a, "b", "two"), KvReply::Value(Some("2".into())));
    let get = |rt: &mut reactor_runtime::Shard, k: &str| -> KvReply { rt.call_typed(a, &KvReq::Get { key: k.into() }).unwrap() };
    assert_eq!(get(&mut rt, "b"), KvReply::Value(Some("two".into())));
    assert_eq!(get(&mut rt, "zzz"), KvReply::Value(None));
    let r: KvReply = rt.call_typed(a, &KvReq::Range { start: "a".into(), end: Some("c".into()), limit: 10 }).unwrap();
    assert_eq!(r, KvReply::Entries(vec![("a".into(), "1".into()), ("b".into(), "two".into())]));
    let r: KvReply = rt.call_typed(a, &KvReq::Range { start: "b".into(), end: None, limit: 1 }).unwrap();
    assert_eq!(r, KvReply::Entries(vec![("b".into(), "two".into())]));
    let r: KvReply = rt.call_typed(a, &KvReq::Delete { key: "a".into() }).unwrap();
    assert_eq!(r, KvReply::Value(Some("1".into())));
    let r: KvReply = rt.call_typed(a, &KvReq::Stats).unwrap();
    assert_eq!(r, KvReply::Stats { keys: 2, bytes: 1 + 3 + 1 + 1 });
}

#[test]
fn kv_speaks_json_text_too() {
    let mut rt = shard();
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    let put = br#"{"Put":{"key":"k","value":"v"}}"#.to_vec();
    let r = rt.call(a, put, true).unwrap();
    assert!(r.text);
    assert_eq!(String::from_utf8(r.payload).unwrap(), r#"{"Value":null}"#);
    let r = rt.call(a, br#"{"Get":{"key":"k"}}"#.to_vec(), true).unwrap();
    assert_eq!(String::from_utf8(r.payload).unwrap(), r#"{"Value":"v"}"#);
    // An undecodable request gets an error reply, and the reactor lives on.
    let r = rt.call(a, br#"{"Frobnicate":1}"#.to_vec(), true);
    assert!(matches!(&r, Err(reactor_runtime::CallError::Refused(from, why)) if *from == a && why.contains("undecodable")), "{r:?}");
    assert_eq!(rt.state(a), Some(ReactorState::Running));
}

#[test]
fn kv_grows_to_tens_of_megabytes_and_keeps_every_entry() {
    let mut rt = shard();
    let a = rt.spawn(&module("kv"), &[]).unwrap();
    let before = rt.memory_size(a).unwrap();
    for i in 0..6u64 {
        let r: KvReply =
            rt.call_typed(a, &KvReq::Fill { prefix: format!("p{i}-"), count: 10_000, value_len: 500, seed: i + 1 }).unwrap();
        assert_eq!(r, KvReply::Done { keys: (i + 1) * 10_000 });
    }
    let after = rt.memory_size(a).unwrap();
    assert!(after > before + (30 << 20), "memory grew from {before} to {after}");
    let r: KvReply = rt.call_typed(a, &KvReq::Stats).unwrap();
    let KvReply::Stats { keys, bytes } = r else { panic!() };
    assert_eq!(keys, 60_000);
    assert_eq!(bytes, 60_000 * (500 + 13));
    // Entries written before the memory moved are intact.
    let r: KvReply = rt.call_typed(a, &KvReq::Range { start: "p0-".into(), end: None, limit: 2 }).unwrap();
    let KvReply::Entries(e) = r else { panic!() };
    assert_eq!(e[0].0, "p0-0000000000");
    assert_eq!(e[1].0, "p0-0000000001");
    assert_eq!(e[0].1.len(), 500);
}

#[test]
fn pingpong_spawns_a_partner_and_plays_one_way_and_by_request() {
    let mut rt = shard();
    let a = rt.spawn_with(&module("pingpong"), &PingInit::default()).unwrap();
    let r: PingReport = rt.call_typed(a, &PingMsg::Play { peer: None, rounds: 100, window: 8, requests: false }).unwrap();
    assert_eq!(r.pongs, 100);
    let b = Address(r.peer);
    assert_ne!(b, a);
    assert_eq!(rt.stats().live, 2, "the partner was spawned by the reactor");
    let rb: PingReport = rt.call_typed(b, &PingMsg::Report).unwrap();
    assert_eq!(rb.pings, 100);
    assert_eq!(rb.peer, a.0, "the partner learned who spawned it");
    let r: PingReport =
        rt.call_typed(a, &PingMsg::Play { peer: Some(b.0), rounds: 50, window: 1, requests: true }).unwrap();
    assert_eq!(r.echoes, 50);
    assert_eq!(rt.stats().live, 2, "no new partner when one is given");
    let n: u64 = rt.call_typed(b, &PingMsg::Echo(77)).unwrap();
    assert_eq!(n, 77);
}

#[test]
fn spawn_by_registered_name() {
    // A pingpong reactor spawns a partner by name through the same path; here
    // we check the name registry the guests' ModuleRef::Name resolves through.
    let e = engine();
    let m = module("counter");
    assert_eq!(e.module_by_name("counter").unwrap().hash, m.hash);
    assert!(e.module_by_name("no-such-module").is_none());
}
