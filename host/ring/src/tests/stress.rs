//! Real threads hammering small rings: nothing lost, nothing duplicated,
//! order kept per producer; waiting through `Backoff` and `EventCount`, so a
//! lost wake-up shows up as a hang (caught by a deadline).

use crate::{Backoff, EventCount, Full, mpsc, spsc};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it takes longer than
/// `secs` (a hang means a lost wake-up or a lost message).
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std_mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => r,
        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: surface its panic.
            std::panic::resume_unwind(worker.join().unwrap_err())
        }
        Err(std_mpsc::RecvTimeoutError::Timeout) => panic!("no progress for {secs} s: lost wake-up or lost message"),
    }
}

#[test]
fn spsc_two_threads_mixed_ops() {
    within(60, || spsc_run(2_000_000, 64, Backoff::new()));
}

#[test]
fn spsc_two_threads_parking_at_once() {
    // No spinning or yielding: every wait parks, exercising the EventCount.
    within(60, || spsc_run(200_000, 4, Backoff::with_limits(0, 0)));
}

fn spsc_run(n: u64, capacity: usize, backoff: Backoff) {
    let (mut p, mut c) = spsc::<u64>(capacity);
    let items = Arc::new(EventCount::new());
    let space = Arc::new(EventCount::new());
    let producer = {
        let (items, space, mut backoff) = (items.clone(), space.clone(), backoff.clone());
        thread::spawn(move || {
            let mut next = 0u64;
            let mut turn = 0u32;
            while next < n {
                turn = turn.wrapping_add(1);
                let pushed = match turn % 3 {
                    0 => u64::from(p.try_push(next).is_ok()),
                    1 => p.push_batch(next..(next + 17).min(n)) as u64,
                    _ => match p.write_chunk(5.min((n - next) as usize)) {
                        Ok(mut chunk) => chunk.fill(next..) as u64,
                        Err(_) => 0,
                    },
                };
                if pushed > 0 {
                    next += pushed;
                    items.notify();
                } else {
                    space.wait_until(&mut backoff, || p.free() > 0);
                }
            }
            drop(p);
            items.notify();
        })
    };
    let mut backoff = backoff;
    let mut expect = 0u64;
    let mut turn = 0u32;
    loop {
        turn = turn.wrapping_add(1);
        let got = if turn.is_multiple_of(2) {
            c.try_pop().map_or(0, |v| {
                assert_eq!(v, expect);
                expect += 1;
                1
            })
        } else {
            c.pop_batch(33, |v| {
                assert_eq!(v, expect);
                expect += 1;
            })
        };
        if got > 0 {
            space.notify();
        } else if c.is_abandoned() && c.is_empty() {
            break;
        } else {
            items.wait_until(&mut backoff, || !c.is_empty() || c.is_abandoned());
        }
    }
    producer.join().unwrap();
    assert_eq!(expect, n, "every value arrives once, in order");
}

#[test]
fn mpsc_four_producers_small_ring() {
    within(60, || mpsc_run(4, 250_000, 16, Backoff::new()));
}

#[test]
fn mpsc_eight_producers_oversubscribed() {
    within(60, || mpsc_run(8, 60_000, 4, Backoff::new()));
}

#[test]
fn mpsc_parking_at_once() {
    within(60, || mpsc_run(3, 30_000, 2, Backoff::with_limits(0, 0)));
}

fn mpsc_run(producers: u64, per_producer: u64, capacity: usize, backoff: Backoff) {
    let (p, mut c) = mpsc::<u64>(capacity);
    let items = Arc::new(EventCount::new());
    let space = Arc::new(EventCount::new());
    let threads: Vec<_> = (0..producers)
        .map(|id| {
            let (mut p, items, space, mut backoff) = (p.clone(), items.clone(), space.clone(), backoff.clone());
            thread::spawn(move || {
                let mut seq = 0u64;
                let mut batch = Vec::new();
                while seq < per_producer {
                    if seq.is_multiple_of(3) {
                        let mut pending = Some(id << 32 | seq);
                        space.wait_until(&mut backoff, || match p.try_push(pending.take().unwrap()) {
                            Ok(()) => true,
                            Err(Full(v)) => {
                                pending = Some(v);
                                false
                            }
                        });
                        seq += 1;
                    } else {
                        let end = (seq + 1 + seq % 7).min(per_producer);
                        batch.extend((seq..end).map(|s| id << 32 | s));
                        seq = end;
                        while !batch.is_empty() {
                            space.wait_until(&mut backoff, || p.try_push_batch(&mut batch) > 0);
                            items.notify();
                        }
                    }
                    items.notify();
                }
                drop(p);
                items.notify();
            })
        })
        .collect();
    drop(p);
    let mut backoff = backoff;
    let mut next = vec![0u64; producers as usize];
    let mut total = 0u64;
    let mut check = |v: u64| {
        let (id, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
        assert_eq!(seq, next[id], "producer {id}: lost, duplicated or reordered");
        next[id] += 1;
        total += 1;
    };
    let mut turn = 0u32;
    loop {
        turn = turn.wrapping_add(1);
        let got = if turn.is_multiple_of(4) {
            c.try_pop().map_or(0, |v| {
                check(v);
                1
            })
        } else {
            c.pop_batch(8, &mut check)
        };
        if got > 0 {
            space.notify();
        } else if c.is_abandoned() && c.is_empty() {
            break;
        } else {
            items.wait_until(&mut backoff, || !c.is_empty() || c.is_abandoned());
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(total, producers * per_producer);
    assert!(next.iter().all(|&n| n == per_producer));
}
