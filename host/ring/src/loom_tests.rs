//! Loom model checks (`RUSTFLAGS="--cfg loom"`): every interleaving of
//! tiny rings (capacity 1 or 2, positions starting just before the `usize`
//! wrap) up to `LOOM_MAX_PREEMPTIONS` preemptions. Loom flags data races on
//! the slots (`UnsafeCell` accesses not ordered by the Release/Acquire
//! protocol), wrong values, leaks, and deadlocks — a lost wake-up in the
//! `EventCount` protocol is a deadlock.
#![forbid(unsafe_code)]

use crate::mpsc::{MpscProducer, mpsc_starting_at};
use crate::spsc::{Producer, spsc_starting_at};
use crate::{Backoff, EventCount, Full};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Positions start here, so that the models also cross the wrap-around.
const START: usize = usize::MAX - 1;

fn push_spsc<T>(p: &mut Producer<T>, mut v: T) {
    loop {
        match p.try_push(v) {
            Ok(()) => return,
            Err(Full(back)) => {
                v = back;
                thread::yield_now();
            }
        }
    }
}

/// Pushes `v`, parking on `space` while the ring is full. (Models with
/// more than two threads wait by parking, not by yielding in a loop: loom
/// would explore schedules that starve the thread everyone waits for.)
fn push_mpsc<T>(p: &mut MpscProducer<T>, space: &EventCount, v: T) {
    let mut v = Some(v);
    space.wait_until(&mut Backoff::with_limits(0, 0), || match p.try_push(v.take().unwrap()) {
        Ok(()) => true,
        Err(Full(back)) => {
            v = Some(back);
            false
        }
    });
}

#[test]
fn spsc_push_pop_wraps() {
    loom::model(|| {
        let (mut p, mut c) = spsc_starting_at::<usize>(2, START);
        let t = thread::spawn(move || {
            for i in 0..3 {
                push_spsc(&mut p, i);
            }
        });
        let mut next = 0;
        while next < 3 {
            match c.try_pop() {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        t.join().unwrap();
    });
}

#[test]
fn spsc_batches_wrap() {
    loom::model(|| {
        let (mut p, mut c) = spsc_starting_at::<usize>(2, START);
        let t = thread::spawn(move || {
            let mut items = 0..3;
            while !items.is_empty() {
                if p.push_batch(&mut items) == 0 {
                    thread::yield_now();
                }
            }
            // A chunk, published on drop.
            loop {
                if let Ok(mut chunk) = p.write_chunk(1) {
                    chunk.push(3).unwrap();
                    break;
                }
                thread::yield_now();
            }
        });
        let mut next = 0;
        while next < 4 {
            let n = c.pop_batch(2, |v| {
                assert_eq!(v, next);
                next += 1;
            });
            if n == 0 {
                thread::yield_now();
            }
        }
        t.join().unwrap();
    });
}

/// Counts drops through a loom atomic, so unsynchronised drops would show.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn spsc_drop_drops_each_value_once() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut p, mut c) = spsc_starting_at::<Counted>(2, START);
        let d = drops.clone();
        let t = thread::spawn(move || {
            push_spsc(&mut p, Counted(d.clone()));
            push_spsc(&mut p, Counted(d));
        });
        // Take at most one, then hang up while the producer may still run.
        drop(c.try_pop());
        drop(c);
        t.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn mpsc_two_producers() {
    loom::model(|| {
        let (mut p1, mut c) = mpsc_starting_at::<usize>(2, START);
        let mut p2 = p1.clone();
        let items = Arc::new(EventCount::new());
        let space = Arc::new(EventCount::new());
        let (items1, space1) = (items.clone(), space.clone());
        let t1 = thread::spawn(move || {
            push_mpsc(&mut p1, &space1, 10);
            items1.notify();
            let mut batch = vec![11];
            space1.wait_until(&mut Backoff::with_limits(0, 0), || p1.try_push_batch(&mut batch) == 1);
            items1.notify();
        });
        let (items2, space2) = (items.clone(), space.clone());
        let t2 = thread::spawn(move || {
            push_mpsc(&mut p2, &space2, 20);
            items2.notify();
            push_mpsc(&mut p2, &space2, 21);
            items2.notify();
        });
        let mut got = Vec::new();
        let mut backoff = Backoff::with_limits(0, 0);
        while got.len() < 4 {
            items.wait_until(&mut backoff, || c.pop_batch(2, |v| got.push(v)) > 0);
            space.notify();
        }
        t1.join().unwrap();
        t2.join().unwrap();
        let ones: Vec<_> = got.iter().filter(|&&v| v < 20).collect();
        let twos: Vec<_> = got.iter().filter(|&&v| v >= 20).collect();
        assert_eq!((ones, twos), (vec![&10, &11], vec![&20, &21]), "per-producer order");
        assert!(c.is_abandoned() && c.is_empty());
    });
}

#[test]
fn mpsc_batch_claims_and_drop() {
    loom::model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut p1, mut c) = mpsc_starting_at::<Counted>(2, START);
        let mut p2 = p1.clone();
        let d = drops.clone();
        // One attempt each (what does not fit is handed back and dropped
        // by the producer); the consumer takes at most one and hangs up.
        let t1 = thread::spawn(move || {
            let mut batch = vec![Counted(d.clone()), Counted(d)];
            p1.try_push_batch(&mut batch);
        });
        let d = drops.clone();
        let t2 = thread::spawn(move || drop(p2.try_push(Counted(d))));
        drop(c.try_pop());
        drop(c);
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    });
}

#[test]
fn eventcount_loses_no_wakeup() {
    loom::model(|| {
        let (mut p, mut c) = spsc_starting_at::<usize>(1, START);
        let items = Arc::new(EventCount::new());
        let ec = items.clone();
        let t = thread::spawn(move || {
            p.try_push(7).unwrap();
            ec.notify();
        });
        // The raw protocol: announce, re-check, sleep.
        let v = loop {
            if let Some(v) = c.try_pop() {
                break v;
            }
            let waiter = items.prepare_wait();
            if !c.is_empty() {
                waiter.cancel();
                continue;
            }
            waiter.wait();
        };
        assert_eq!(v, 7);
        t.join().unwrap();
    });
}

#[test]
fn eventcount_both_directions_with_backpressure() {
    loom::model(|| {
        let (mut p, mut c) = spsc_starting_at::<usize>(1, START);
        let items = Arc::new(EventCount::new());
        let space = Arc::new(EventCount::new());
        let (items2, space2) = (items.clone(), space.clone());
        let t = thread::spawn(move || {
            // Straight to parking: no spin or yield rounds to explore.
            let mut backoff = Backoff::with_limits(0, 0);
            for i in 0..2 {
                let mut v = Some(i);
                space2.wait_until(&mut backoff, || match p.try_push(v.take().unwrap()) {
                    Ok(()) => true,
                    Err(Full(back)) => {
                        v = Some(back);
                        false
                    }
                });
                items2.notify();
            }
        });
        let mut backoff = Backoff::with_limits(0, 0);
        for i in 0..2 {
            let mut got = None;
            items.wait_until(&mut backoff, || {
                got = c.try_pop();
                got.is_some()
            });
            space.notify();
            assert_eq!(got, Some(i));
        }
        t.join().unwrap();
    });
}

#[test]
fn eventcount_with_two_mpsc_producers() {
    loom::model(|| {
        let (p1, mut c) = mpsc_starting_at::<usize>(2, START);
        let items = Arc::new(EventCount::new());
        let threads: Vec<_> = [(p1.clone(), 1), (p1, 2)]
            .into_iter()
            .map(|(mut p, v)| {
                let ec = items.clone();
                thread::spawn(move || {
                    p.try_push(v).unwrap();
                    ec.notify();
                })
            })
            .collect();
        let mut backoff = Backoff::with_limits(0, 0);
        let mut sum = 0;
        for _ in 0..2 {
            items.wait_until(&mut backoff, || match c.try_pop() {
                Some(v) => {
                    sum += v;
                    true
                }
                None => false,
            });
        }
        assert_eq!(sum, 3);
        for t in threads {
            t.join().unwrap();
        }
    });
}

