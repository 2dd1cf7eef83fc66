//! Property tests: random sequences of operations on one thread, checked
//! step by step against a `VecDeque` with the same capacity.

use super::{Tracked, live_count};
use crate::mpsc::mpsc_starting_at;
use crate::spsc::spsc_starting_at;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

#[derive(Clone, Debug)]
enum Op {
    Push,
    /// Push this many values in one batch.
    PushBatch(usize),
    /// SPSC: claim a chunk of `.0` slots and push `.1` values into it.
    Chunk(usize, usize),
    Pop,
    /// Pop at most this many in one batch.
    PopBatch(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Push),
        2 => (0usize..10).prop_map(Op::PushBatch),
        1 => (0usize..6, 0usize..7).prop_map(|(n, k)| Op::Chunk(n, k)),
        3 => Just(Op::Pop),
        2 => (0usize..10).prop_map(Op::PopBatch),
    ]
}

/// Start positions: zero, just before the `usize` wrap, anywhere.
fn start() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), (0usize..16).prop_map(|d| usize::MAX - d), any::<usize>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn spsc_behaves_like_a_bounded_vecdeque(
        cap in 1usize..9,
        start in start(),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let live = live_count();
        let (mut p, mut c) = spsc_starting_at(cap, start);
        let cap = p.capacity();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = 0u64;
        for op in ops {
            let free = cap - model.len();
            match op {
                Op::Push => {
                    let r = p.try_push(Tracked::new(next, &live));
                    if free > 0 {
                        prop_assert!(r.is_ok());
                        model.push_back(next);
                    } else {
                        prop_assert_eq!(r.unwrap_err().into_inner().value, next);
                    }
                    next += 1;
                }
                Op::PushBatch(n) => {
                    let vals: Vec<u64> = (next..next + n as u64).collect();
                    next += n as u64;
                    let mut items = vals.iter().map(|&v| Tracked::new(v, &live));
                    let pushed = p.push_batch(&mut items);
                    prop_assert_eq!(pushed, n.min(free));
                    prop_assert_eq!(items.count(), n - pushed);
                    model.extend(&vals[..pushed]);
                }
                Op::Chunk(n, k) => match p.write_chunk(n) {
                    Ok(mut chunk) => {
                        prop_assert!(n <= free);
                        for j in 0..k {
                            let r = chunk.push(Tracked::new(next, &live));
                            prop_assert_eq!(r.is_ok(), j < n);
                            if j < n {
                                model.push_back(next);
                            }
                            next += 1;
                        }
                    }
                    Err(e) => {
                        prop_assert!(n > free);
                        prop_assert_eq!(e.available, free);
                    }
                },
                Op::Pop => prop_assert_eq!(c.try_pop().map(|t| t.value), model.pop_front()),
                Op::PopBatch(max) => {
                    let mut got = Vec::new();
                    let n = c.pop_batch(max, |t| got.push(t.value));
                    let want: Vec<u64> = model.drain(..max.min(model.len())).collect();
                    prop_assert_eq!(n, want.len());
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(p.len(), model.len());
            prop_assert_eq!(c.len(), model.len());
            prop_assert_eq!(c.is_empty(), model.is_empty());
            prop_assert_eq!(live.load(Ordering::Relaxed), model.len());
        }
        drop((p, c));
        prop_assert_eq!(live.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn mpsc_behaves_like_a_bounded_vecdeque(
        cap in 1usize..9,
        start in start(),
        ops in prop::collection::vec((op(), any::<bool>()), 0..200),
    ) {
        let live = live_count();
        let (p, mut c) = mpsc_starting_at(cap, start);
        // Two producers, used in random turns.
        let mut producers = [p.clone(), p];
        let cap = c.capacity();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = 0u64;
        for (op, second) in ops {
            let p = &mut producers[usize::from(second)];
            let free = cap - model.len();
            match op {
                Op::Push => {
                    let r = p.try_push(Tracked::new(next, &live));
                    if free > 0 {
                        prop_assert!(r.is_ok());
                        model.push_back(next);
                    } else {
                        prop_assert_eq!(r.unwrap_err().into_inner().value, next);
                    }
                    next += 1;
                }
                Op::PushBatch(n) | Op::Chunk(n, _) => {
                    let mut items: Vec<Tracked> = (next..next + n as u64).map(|v| Tracked::new(v, &live)).collect();
                    let pushed = p.try_push_batch(&mut items);
                    prop_assert_eq!(pushed, n.min(free));
                    prop_assert_eq!(items.len(), n - pushed);
                    prop_assert!(items.iter().map(|t| t.value).eq(next + pushed as u64..next + n as u64));
                    model.extend(next..next + pushed as u64);
                    next += n as u64;
                }
                Op::Pop => prop_assert_eq!(c.try_pop().map(|t| t.value), model.pop_front()),
                Op::PopBatch(max) => {
                    let mut got = Vec::new();
                    let n = c.pop_batch(max, |t| got.push(t.value));
                    let want: Vec<u64> = model.drain(..max.min(model.len())).collect();
                    prop_assert_eq!(n, want.len());
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(producers[0].len(), model.len());
            prop_assert_eq!(c.len(), model.len());
            prop_assert_eq!(c.is_empty(), model.is_empty());
            prop_assert_eq!(live.load(Ordering::Relaxed), model.len());
        }
        drop((producers, c));
        prop_assert_eq!(live.load(Ordering::Relaxed), 0);
    }
}
