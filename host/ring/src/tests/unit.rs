//! Each operation, single-threaded.

use super::{Tracked, live_count};
use crate::mpsc::mpsc_starting_at;
use crate::spsc::spsc_starting_at;
use crate::{Full, NotEnoughRoom, mpsc, spsc};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

#[test]
fn capacity_is_rounded_up_to_a_power_of_two() {
    for (asked, got) in [(0, 1), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (4000, 4096)] {
        assert_eq!(spsc::<u8>(asked).0.capacity(), got);
        assert_eq!(mpsc::<u8>(asked).1.capacity(), got);
    }
}

#[test]
fn spsc_push_pop_and_full_gives_the_value_back() {
    let (mut p, mut c) = spsc(2);
    assert_eq!(c.try_pop(), None);
    p.try_push(1).unwrap();
    p.try_push(2).unwrap();
    assert_eq!(p.try_push(3), Err(Full(3)));
    assert_eq!((p.len(), c.len(), p.free()), (2, 2, 0));
    assert_eq!(c.try_pop(), Some(1));
    p.try_push(3).unwrap();
    assert_eq!(c.try_pop(), Some(2));
    assert_eq!(c.try_pop(), Some(3));
    assert_eq!(c.try_pop(), None);
    assert!(c.is_empty() && p.is_empty());
}

#[test]
fn spsc_push_batch_takes_only_what_fits() {
    let (mut p, mut c) = spsc(4);
    let mut items = 0..10;
    assert_eq!(p.push_batch(&mut items), 4);
    assert_eq!(items.next(), Some(4), "values that did not fit stay in the iterator");
    assert_eq!(p.push_batch(5..7), 0);
    let mut got = Vec::new();
    assert_eq!(c.pop_batch(3, |v| got.push(v)), 3);
    assert_eq!(p.push_batch(5..7), 2);
    assert_eq!(c.pop_batch(100, |v| got.push(v)), 3);
    assert_eq!(got, [0, 1, 2, 3, 5, 6]);
    assert_eq!(c.pop_batch(100, |_| unreachable!()), 0);
}

#[test]
fn spsc_write_chunk_claims_all_or_nothing_and_publishes_on_drop() {
    let (mut p, mut c) = spsc(4);
    assert_eq!(p.write_chunk(5).unwrap_err(), NotEnoughRoom { requested: 5, available: 4 });
    {
        let mut chunk = p.write_chunk(3).unwrap();
        assert_eq!(chunk.capacity(), 3);
        chunk.push(10).unwrap();
        assert_eq!(chunk.fill([11, 12, 13]), 2);
        assert_eq!(chunk.push(14), Err(Full(14)));
        assert_eq!(c.len(), 0, "nothing is visible before the chunk is published");
    }
    assert_eq!(c.len(), 3);
    let mut chunk = p.write_chunk(1).unwrap();
    chunk.push(20).unwrap();
    chunk.publish();
    let mut got = Vec::new();
    c.pop_batch(10, |v| got.push(v));
    assert_eq!(got, [10, 11, 12, 20]);
    // A chunk dropped unwritten frees its claim.
    drop(p.write_chunk(4).unwrap());
    assert_eq!(p.free(), 4);
}

#[test]
fn spsc_positions_wrap_around_usize() {
    let (mut p, mut c) = spsc_starting_at(4, usize::MAX - 5);
    let mut next = 0u64;
    for round in 0..20u64 {
        let n = p.push_batch(round * 3..round * 3 + 3);
        assert_eq!(n, 3);
        c.pop_batch(usize::MAX, |v| {
            assert_eq!(v, next);
            next += 1;
        });
    }
    assert_eq!(next, 60);
}

#[test]
fn spsc_drops_unconsumed_values_exactly_once() {
    let live = live_count();
    let (mut p, mut c) = spsc(4);
    for i in 0..4 {
        p.try_push(Tracked::new(i, &live)).unwrap();
    }
    let back = p.try_push(Tracked::new(9, &live)).unwrap_err().into_inner();
    assert_eq!(back.value, 9);
    drop(back);
    assert_eq!(c.try_pop().unwrap().value, 0);
    assert_eq!(live.load(Ordering::Relaxed), 3);
    drop(p);
    assert!(c.is_abandoned());
    drop(c);
    assert_eq!(live.load(Ordering::Relaxed), 0);
}

#[test]
fn spsc_pop_batch_survives_a_panicking_callback() {
    let live = live_count();
    let (mut p, mut c) = spsc(4);
    p.push_batch((0..4).map(|i| Tracked::new(i, &live)));
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.pop_batch(4, |v| {
            if v.value == 1 {
                panic!("callback fails");
            }
        })
    }));
    assert!(r.is_err());
    // 0 and 1 were handed out (and dropped); 2 and 3 are still there.
    assert_eq!(live.load(Ordering::Relaxed), 2);
    assert_eq!(c.try_pop().unwrap().value, 2);
    drop((p, c));
    assert_eq!(live.load(Ordering::Relaxed), 0);
}

#[test]
fn spsc_abandonment_is_seen_by_both_sides() {
    let (p, c) = spsc::<u8>(1);
    assert!(!p.is_abandoned() && !c.is_abandoned());
    drop(c);
    assert!(p.is_abandoned());
}

#[test]
fn mpsc_push_pop_and_full_gives_the_value_back() {
    let (mut p, mut c) = mpsc(2);
    let mut q = p.clone();
    assert_eq!(c.try_pop(), None);
    p.try_push(1).unwrap();
    q.try_push(2).unwrap();
    assert_eq!(p.try_push(3), Err(Full(3)));
    assert_eq!(q.try_push(3), Err(Full(3)));
    assert_eq!(c.len(), 2);
    assert_eq!(c.try_pop(), Some(1));
    q.try_push(3).unwrap();
    let mut got = Vec::new();
    assert_eq!(c.pop_batch(10, |v| got.push(v)), 2);
    assert_eq!(got, [2, 3]);
    assert!(c.is_empty());
}

#[test]
fn mpsc_push_batch_keeps_what_did_not_fit() {
    let (mut p, mut c) = mpsc(4);
    let mut items: Vec<u32> = (0..6).collect();
    assert_eq!(p.try_push_batch(&mut items), 4);
    assert_eq!(items, [4, 5]);
    assert_eq!(p.try_push_batch(&mut items), 0);
    assert_eq!(c.try_pop(), Some(0));
    assert_eq!(p.try_push_batch(&mut items), 1);
    assert_eq!(items, [5]);
    let mut got = Vec::new();
    c.pop_batch(usize::MAX, |v| got.push(v));
    assert_eq!(got, [1, 2, 3, 4]);
    assert_eq!(p.try_push_batch(&mut Vec::new()), 0);
}

#[test]
fn mpsc_push_slice_copies_what_fits() {
    let (mut p, mut c) = mpsc(4);
    assert_eq!(p.try_push_slice(&[1, 2, 3]), 3);
    assert_eq!(p.try_push_slice(&[4, 5, 6]), 1);
    assert_eq!(p.try_push_slice(&[7]), 0);
    assert_eq!(p.try_push_slice(&[]), 0);
    let mut got = Vec::new();
    c.pop_batch(usize::MAX, |v| got.push(v));
    assert_eq!(got, [1, 2, 3, 4]);
}

#[test]
fn mpsc_positions_wrap_around_usize() {
    let (mut p, mut c) = mpsc_starting_at(4, usize::MAX - 5);
    let mut next = 0u64;
    for round in 0..20u64 {
        let mut batch: Vec<u64> = (round * 3..round * 3 + 3).collect();
        assert_eq!(p.try_push_batch(&mut batch), 3);
        c.pop_batch(usize::MAX, |v| {
            assert_eq!(v, next);
            next += 1;
        });
    }
    assert_eq!(next, 60);
}

#[test]
fn mpsc_drops_unconsumed_values_exactly_once() {
    let live = live_count();
    let (mut p, mut c) = mpsc(4);
    let mut q = p.clone();
    p.try_push(Tracked::new(0, &live)).unwrap();
    let mut batch: Vec<Tracked> = (1..6).map(|i| Tracked::new(i, &live)).collect();
    assert_eq!(q.try_push_batch(&mut batch), 3);
    drop(batch);
    assert_eq!(c.try_pop().unwrap().value, 0);
    assert_eq!(live.load(Ordering::Relaxed), 3);
    drop(p);
    assert!(!c.is_abandoned(), "one producer is left");
    drop(q);
    assert!(c.is_abandoned());
    drop(c);
    assert_eq!(live.load(Ordering::Relaxed), 0);
}

#[test]
fn mpsc_pop_batch_survives_a_panicking_callback() {
    let live = live_count();
    let (mut p, mut c) = mpsc(4);
    let mut batch: Vec<Tracked> = (0..4).map(|i| Tracked::new(i, &live)).collect();
    p.try_push_batch(&mut batch);
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.pop_batch(4, |v| {
            if v.value == 1 {
                panic!("callback fails");
            }
        })
    }));
    assert!(r.is_err());
    assert_eq!(live.load(Ordering::Relaxed), 2);
    assert_eq!(c.try_pop().unwrap().value, 2);
    drop((p, c));
    assert_eq!(live.load(Ordering::Relaxed), 0);
}

#[test]
fn mpsc_producer_sees_the_consumer_go() {
    let (p, c) = mpsc::<u8>(1);
    assert!(!p.is_abandoned());
    drop(c);
    assert!(p.is_abandoned());
}
