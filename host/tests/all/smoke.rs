use crate::util::*;
use host::protocols::CounterMsg;

#[test]
fn counter_counts() {
    let m = module("counter");
    let mut rt = runtime();
    let a = rt.spawn_with(&m, &5u64).unwrap();
    rt.send_typed(a, &CounterMsg::Add(3)).unwrap();
    let n: u64 = rt.call_typed(a, &CounterMsg::Get).unwrap();
    assert_eq!(n, 8);
}
