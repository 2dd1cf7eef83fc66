//! The rings alone: messages per second between threads.
//!
//! `ring-spsc`: one producer thread and one consumer thread, `u64`
//! messages, capacity 4096 everywhere, one message per operation and
//! batches of 64. Ours (`reactor_ring::spsc`) vs `rtrb`,
//! `crossbeam_queue::ArrayQueue`, `crossbeam_channel::bounded`,
//! `tokio::sync::mpsc::channel` (blocking calls from plain threads) and the
//! `disruptor` crate (single producer, event poller).
//!
//! `ring-mpsc`: 2, 4 and 8 producer threads into one consumer (8 + 1 on a
//! 2-core machine is the oversubscribed case). Ours (`reactor_ring::mpsc`)
//! vs the baselines that take many producers: `ArrayQueue`,
//! `crossbeam-channel`, tokio's mpsc, `disruptor` (multi producer).
//!
//! Waiting: implementations that only have non-blocking operations (ours,
//! rtrb, ArrayQueue, disruptor) all wait the same way — `reactor_ring`'s
//! `Backoff` (127 spin hints, 4 yields) then parking on an `EventCount`; a
//! sender notifies the receiver after every 64 messages and before it
//! waits, and the receiver does the same for senders. crossbeam-channel and
//! tokio use their own blocking calls. Nothing spins without bound.
//!
//! Correctness: every consumer checks that it received every value exactly
//! once, in order (per producer for MPSC); a short checked run of each
//! implementation precedes the timed ones.
//!
//! Method: the implementations of one configuration run in rounds (each
//! once per round, medians over the rounds), since this 2-vCPU VM drifts
//! between cross-core regimes that change every queue's rate several-fold;
//! the notes give each configuration's spread. Per-thread state of the
//! harness (handles, checker counters) sits on cache lines of its own, so
//! no implementation is helped or hurt by where the allocator put it.
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, median, num, progress};
use anyhow::{Result, bail, ensure};
use reactor_ring::{Backoff, EventCount};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

/// Slots in every ring and channel.
const CAP: usize = 4096;
/// Messages per batch in the batched runs.
const BATCH: usize = 64;
/// A side notifies the other at least once per this many messages.
const FLUSH: usize = 64;
/// A message is `producer << SHIFT | sequence`.
const SHIFT: u32 = 40;

/// How a run moves messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    One,
    Batch,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::One => "one at a time",
            Mode::Batch => "batches of 64",
        }
    }
}

/// A sending end with non-blocking operations only.
trait TryTx: Send {
    /// Sends `v`; false if full.
    fn try_one(&mut self, v: u64) -> bool;
    /// Sends a prefix of `vals` (at most 64), as one batch where the
    /// implementation has batches; returns how many went.
    fn try_many(&mut self, vals: &[u64]) -> usize;
}

/// A receiving end with non-blocking operations only.
trait TryRx: Send {
    fn try_one(&mut self) -> Option<u64>;
    /// What "one at a time" receives: one value, except where that is
    /// pathological for the implementation.
    #[inline]
    fn recv_one_mode(&mut self, f: impl FnMut(u64)) -> usize {
        self.try_one().map(f).map_or(0, |()| 1)
    }
    /// Hands up to `max` values to `f`, as one batch where the
    /// implementation has batches; returns how many.
    fn try_many(&mut self, max: usize, f: impl FnMut(u64)) -> usize;
}

// --- ours -----------------------------------------------------------------

impl TryTx for reactor_ring::Producer<u64> {
    #[inline]
    fn try_one(&mut self, v: u64) -> bool {
        self.try_push(v).is_ok()
    }
    #[inline]
    fn try_many(&mut self, vals: &[u64]) -> usize {
        self.push_batch(vals.iter().copied())
    }
}

impl TryRx for reactor_ring::Consumer<u64> {
    #[inline]
    fn try_one(&mut self) -> Option<u64> {
        self.try_pop()
    }
    #[inline]
    fn try_many(&mut self, max: usize, f: impl FnMut(u64)) -> usize {
        self.pop_batch(max, f)
    }
}

impl TryTx for reactor_ring::MpscProducer<u64> {
    #[inline]
    fn try_one(&mut self, v: u64) -> bool {
        self.try_push(v).is_ok()
    }
    #[inline]
    fn try_many(&mut self, vals: &[u64]) -> usize {
        self.try_push_slice(vals)
    }
}

impl TryRx for reactor_ring::MpscConsumer<u64> {
    #[inline]
    fn try_one(&mut self) -> Option<u64> {
        self.try_pop()
    }
    #[inline]
    fn try_many(&mut self, max: usize, f: impl FnMut(u64)) -> usize {
        self.pop_batch(max, f)
    }
}

// --- rtrb -------------------------------------------------------------------

impl TryTx for rtrb::Producer<u64> {
    #[inline]
    fn try_one(&mut self, v: u64) -> bool {
        self.push(v).is_ok()
    }
    #[inline]
    fn try_many(&mut self, vals: &[u64]) -> usize {
        self.push_partial_slice(vals).0.len()
    }
}

impl TryRx for rtrb::Consumer<u64> {
    #[inline]
    fn try_one(&mut self) -> Option<u64> {
        self.pop().ok()
    }
    #[inline]
    fn try_many(&mut self, max: usize, mut f: impl FnMut(u64)) -> usize {
        let n = self.slots().min(max);
        if n == 0 {
            return 0;
        }
        let Ok(chunk) = self.read_chunk(n) else { return 0 };
        let (a, b) = chunk.as_slices();
        a.iter().chain(b).for_each(|&v| f(v));
        chunk.commit_all();
        n
    }
}

// --- crossbeam ArrayQueue (no batches: a loop of single operations) --------

#[derive(Clone)]
struct Array(Arc<crossbeam_queue::ArrayQueue<u64>>);

impl TryTx for Array {
    #[inline]
    fn try_one(&mut self, v: u64) -> bool {
        self.0.push(v).is_ok()
    }
    #[inline]
    fn try_many(&mut self, vals: &[u64]) -> usize {
        vals.iter().take_while(|&&v| self.0.push(v).is_ok()).count()
    }
}

impl TryRx for Array {
    #[inline]
    fn try_one(&mut self) -> Option<u64> {
        self.0.pop()
    }
    #[inline]
    fn try_many(&mut self, max: usize, mut f: impl FnMut(u64)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(v) = self.0.pop() else { break };
            f(v);
            n += 1;
        }
        n
    }
}

// --- disruptor (event poller; try_publish / try_batch_publish) -------------

struct DisTx<P>(P);

impl<P: disruptor::Producer<u64> + Send> TryTx for DisTx<P> {
    #[inline]
    fn try_one(&mut self, v: u64) -> bool {
        self.0.try_publish(|e| *e = v).is_ok()
    }
    #[inline]
    fn try_many(&mut self, vals: &[u64]) -> usize {
        let mut n = vals.len();
        loop {
            let published = self.0.try_batch_publish(n, |iter| {
                for (e, &v) in iter.zip(vals) {
                    *e = v;
                }
            });
            match published {
                Ok(_) => return n,
                Err(disruptor::MissingFreeSlots(missing)) => {
                    let missing = usize::try_from(missing).unwrap_or(usize::MAX);
                    if missing >= n {
                        return 0;
                    }
                    n -= missing;
                }
            }
        }
    }
}

macro_rules! dis_rx {
    ($barrier:ty, $one_mode_max:expr) => {
        impl TryRx for disruptor::EventPoller<u64, $barrier> {
            #[inline]
            fn try_one(&mut self) -> Option<u64> {
                let mut guard = self.take(1).ok()?;
                (&mut guard).next().copied()
            }
            #[inline]
            fn try_many(&mut self, max: usize, mut f: impl FnMut(u64)) -> usize {
                let Ok(mut guard) = self.take(max as u64) else { return 0 };
                let mut n = 0;
                for &v in &mut guard {
                    f(v);
                    n += 1;
                }
                n
            }
            #[inline]
            fn recv_one_mode(&mut self, f: impl FnMut(u64)) -> usize {
                self.try_many($one_mode_max, f)
            }
        }
    };
}
dis_rx!(disruptor::SingleProducerBarrier, 1);
// The multi-producer barrier's `take(n)` first scans the availability bits
// of everything published (up to the whole ring) whatever `n` is, so taking
// one at a time costs O(backlog) per message; its consumer takes up to 64.
dis_rx!(disruptor::MultiProducerBarrier, BATCH);

// --- the runs ---------------------------------------------------------------

/// Checks that each producer's values arrive once and in order.
/// Keeps a value on its own cache lines, so that per-message state of one
/// thread (a handle's positions, the checker's counters) never shares a
/// line with another thread's: false sharing in the harness would be
/// measured as the ring's cost, differently for each implementation.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Padded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

struct InOrder {
    /// Next sequence expected from each producer (each on its own lines).
    next: Vec<Padded<u64>>,
    got: u64,
    error: Option<String>,
}

impl InOrder {
    fn new(producers: usize) -> Self {
        Self { next: (0..producers).map(|_| Padded(0)).collect(), got: 0, error: None }
    }

    #[inline]
    fn check(&mut self, v: u64) {
        let (id, seq) = ((v >> SHIFT) as usize, v & ((1 << SHIFT) - 1));
        match self.next.get_mut(id) {
            Some(next) if **next == seq => **next += 1,
            _ => {
                if self.error.is_none() {
                    let want = self.next.get(id).map(|n| **n);
                    self.error = Some(format!("producer {id}: got sequence {seq}, expected {want:?}"));
                }
            }
        }
        self.got += 1;
    }

    fn finish(self, per_producer: u64) -> Result<()> {
        if let Some(e) = self.error {
            bail!("{e}");
        }
        let next: Vec<u64> = self.next.iter().map(|n| **n).collect();
        ensure!(next.iter().all(|&n| n == per_producer), "values lost: {next:?} of {per_producer}");
        Ok(())
    }
}

/// Sends `n` values tagged with `id`, waiting with bounded backoff then
/// parking when full.
fn produce<T: TryTx>(tx: &mut T, id: u64, n: u64, mode: Mode, items: &EventCount, space: &EventCount) {
    let mut backoff = Backoff::new();
    let mut buf = [0u64; BATCH];
    let mut seq = 0u64;
    let mut unflushed = 0usize;
    while seq < n {
        let sent = match mode {
            Mode::One => {
                let v = id << SHIFT | seq;
                if !tx.try_one(v) {
                    items.notify();
                    unflushed = 0;
                    space.wait_until(&mut backoff, || tx.try_one(v));
                }
                1
            }
            Mode::Batch => {
                let m = (n - seq).min(BATCH as u64) as usize;
                for (i, b) in buf[..m].iter_mut().enumerate() {
                    *b = id << SHIFT | (seq + i as u64);
                }
                let mut k = tx.try_many(&buf[..m]);
                if k == 0 {
                    items.notify();
                    unflushed = 0;
                    space.wait_until(&mut backoff, || {
                        k = tx.try_many(&buf[..m]);
                        k > 0
                    });
                }
                k
            }
        };
        seq += sent as u64;
        unflushed += sent;
        if unflushed >= FLUSH {
            items.notify();
            unflushed = 0;
        }
    }
    items.notify();
}

/// Receives `total` values, waiting like `produce`.
fn consume<R: TryRx>(rx: &mut R, check: &mut InOrder, total: u64, mode: Mode, items: &EventCount, space: &EventCount) {
    let mut backoff = Backoff::new();
    let mut unflushed = 0usize;
    while check.got < total {
        let recv = |rx: &mut R, check: &mut InOrder| match mode {
            Mode::One => rx.recv_one_mode(|v| check.check(v)),
            Mode::Batch => rx.try_many(BATCH, |v| check.check(v)),
        };
        let mut k = recv(rx, check);
        if k == 0 {
            space.notify();
            unflushed = 0;
            items.wait_until(&mut backoff, || {
                k = recv(rx, check);
                k > 0
            });
        }
        unflushed += k;
        if unflushed >= FLUSH {
            space.notify();
            unflushed = 0;
        }
    }
    space.notify();
}

/// One run over non-blocking ends: `txs.len()` producer threads, the
/// consumer on this thread. Returns messages per second.
fn run_try<T: TryTx, R: TryRx>(txs: Vec<T>, rx: R, per_producer: u64, mode: Mode) -> Result<f64> {
    let producers = txs.len();
    let items = Padded(EventCount::new());
    let space = Padded(EventCount::new());
    let start = Barrier::new(producers + 1);
    let total = per_producer * producers as u64;
    let mut check = Padded(InOrder::new(producers));
    let mut rx = Padded(rx);
    let secs = thread::scope(|s| {
        for (id, tx) in txs.into_iter().enumerate() {
            let (items, space, start) = (&items, &space, &start);
            s.spawn(move || {
                // On this thread's stack, on lines of its own.
                let mut tx = Padded(tx);
                start.wait();
                produce(&mut *tx, id as u64, per_producer, mode, items, space);
            });
        }
        start.wait();
        let t0 = Instant::now();
        consume(&mut *rx, &mut check, total, mode, &items, &space);
        t0.elapsed().as_secs_f64()
    });
    check.0.finish(per_producer)?;
    Ok(total as f64 / secs)
}

/// crossbeam-channel's own blocking `send`/`recv` (no batches).
fn run_crossbeam_channel(producers: usize, per_producer: u64) -> Result<f64> {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(CAP);
    let start = Barrier::new(producers + 1);
    let mut check = InOrder::new(producers);
    let total = per_producer * producers as u64;
    let secs = thread::scope(|s| -> Result<f64> {
        for id in 0..producers as u64 {
            let (tx, start) = (tx.clone(), &start);
            s.spawn(move || {
                start.wait();
                for seq in 0..per_producer {
                    if tx.send(id << SHIFT | seq).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        start.wait();
        let t0 = Instant::now();
        while check.got < total {
            check.check(rx.recv()?);
        }
        Ok(t0.elapsed().as_secs_f64())
    })?;
    check.finish(per_producer)?;
    Ok(total as f64 / secs)
}

/// tokio's bounded mpsc from plain threads: `blocking_send`, and
/// `blocking_recv` (one at a time) or `blocking_recv_many` (batches).
fn run_tokio(producers: usize, per_producer: u64, mode: Mode) -> Result<f64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAP);
    let start = Barrier::new(producers + 1);
    let mut check = InOrder::new(producers);
    let total = per_producer * producers as u64;
    let secs = thread::scope(|s| -> Result<f64> {
        for id in 0..producers as u64 {
            let (tx, start) = (tx.clone(), &start);
            s.spawn(move || {
                start.wait();
                for seq in 0..per_producer {
                    if tx.blocking_send(id << SHIFT | seq).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        start.wait();
        let t0 = Instant::now();
        let mut buf = Vec::with_capacity(BATCH);
        while check.got < total {
            match mode {
                Mode::One => match rx.blocking_recv() {
                    Some(v) => check.check(v),
                    None => bail!("tokio channel closed early"),
                },
                Mode::Batch => {
                    buf.clear();
                    if rx.blocking_recv_many(&mut buf, BATCH) == 0 {
                        bail!("tokio channel closed early");
                    }
                    buf.iter().for_each(|&v| check.check(v));
                }
            }
        }
        Ok(t0.elapsed().as_secs_f64())
    })?;
    check.finish(per_producer)?;
    Ok(total as f64 / secs)
}

/// The implementations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Imp {
    Ours,
    Rtrb,
    ArrayQueue,
    CrossbeamChannel,
    Tokio,
    Disruptor,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Ours => "reactor-ring",
            Imp::Rtrb => "rtrb",
            Imp::ArrayQueue => "crossbeam ArrayQueue",
            Imp::CrossbeamChannel => "crossbeam-channel",
            Imp::Tokio => "tokio mpsc",
            Imp::Disruptor => "disruptor",
        }
    }

    /// What "batches of 64" means for it.
    fn batch_note(self) -> &'static str {
        match self {
            Imp::Ours => "push_batch/try_push_slice + pop_batch",
            Imp::Rtrb => "push_partial_slice + read_chunk",
            Imp::ArrayQueue => "no batch API: loops of push/pop",
            Imp::CrossbeamChannel => "no batch API",
            Imp::Tokio => "blocking_send + blocking_recv_many",
            Imp::Disruptor => "try_batch_publish + poller take(64) (MPSC one at a time: try_publish + take(64))",
        }
    }
}

/// One run of `imp` with `producers` producers (1: the SPSC variant where
/// there is one). Returns messages per second.
fn run(imp: Imp, producers: usize, per_producer: u64, mode: Mode) -> Result<f64> {
    let spsc = producers == 1;
    match imp {
        Imp::Ours if spsc => {
            let (tx, rx) = reactor_ring::spsc::<u64>(CAP);
            run_try(vec![tx], rx, per_producer, mode)
        }
        Imp::Ours => {
            let (tx, rx) = reactor_ring::mpsc::<u64>(CAP);
            run_try(vec![tx; producers], rx, per_producer, mode)
        }
        Imp::Rtrb if spsc => {
            let (tx, rx) = rtrb::RingBuffer::<u64>::new(CAP);
            run_try(vec![tx], rx, per_producer, mode)
        }
        Imp::Rtrb => bail!("rtrb is single-producer"),
        Imp::ArrayQueue => {
            let q = Array(Arc::new(crossbeam_queue::ArrayQueue::new(CAP)));
            run_try(vec![q.clone(); producers], q, per_producer, mode)
        }
        Imp::CrossbeamChannel => run_crossbeam_channel(producers, per_producer),
        Imp::Tokio => run_tokio(producers, per_producer, mode),
        Imp::Disruptor if spsc => {
            let builder = disruptor::build_single_producer(CAP, || 0u64, disruptor::BusySpin);
            let (poller, builder) = builder.new_event_poller();
            let tx = builder.build();
            run_try(vec![DisTx(tx)], poller, per_producer, mode)
        }
        Imp::Disruptor => {
            let builder = disruptor::build_multi_producer(CAP, || 0u64, disruptor::BusySpin);
            let (poller, builder) = builder.new_event_poller();
            let tx = builder.build();
            let txs = (0..producers).map(|_| DisTx(tx.clone())).collect();
            drop(tx);
            run_try(txs, poller, per_producer, mode)
        }
    }
}

/// Sizes of a run: each timed run moves about `secs` worth of messages
/// (judged from the checked warm-up run), within `[min, max]`.
struct Sizes {
    secs: f64,
    min: u64,
    max: u64,
    reps: usize,
}

fn sizes(opts: Opts) -> Sizes {
    if opts.quick {
        Sizes { secs: 0.03, min: 100_000, max: 2_000_000, reps: 3 }
    } else {
        Sizes { secs: 0.3, min: 2_000_000, max: 100_000_000, reps: 9 }
    }
}

/// What `measure` found for one implementation.
struct Measured {
    imp: Imp,
    /// Median of the timed runs, messages per second.
    median: f64,
    min: f64,
    max: f64,
}

/// Measures `imps` side by side: a checked warm-up run of each (which also
/// sizes its timed runs), then `reps` rounds in which each runs once, so
/// that a change in the machine's state mid-way (this is a shared 2-vCPU VM
/// whose cross-core costs drift) hits all alike. Each timed run is checked
/// too. Returns the median per implementation.
fn measure(imps: &[Imp], producers: usize, mode: Mode, sizes: &Sizes) -> Result<Vec<Measured>> {
    let p = producers as u64;
    let mut per_run = Vec::new();
    for &imp in imps {
        progress(format!("{}: warm-up, {producers} producer(s), {}", imp.name(), mode.label()));
        let rate = run(imp, producers, 200_000 / p, mode)?;
        per_run.push(((rate * sizes.secs) as u64).clamp(sizes.min, sizes.max) / p);
    }
    let mut rates = vec![Vec::new(); imps.len()];
    for rep in 0..sizes.reps {
        let mut line = format!("round {} of {}:", rep + 1, sizes.reps);
        for (i, &imp) in imps.iter().enumerate() {
            let rate = run(imp, producers, per_run[i], mode)?;
            line.push_str(&format!(" {} {}", imp.name(), num(rate / M)));
            rates[i].push(rate);
        }
        progress(line);
    }
    Ok(imps
        .iter()
        .zip(rates)
        .map(|(&imp, r)| Measured {
            imp,
            min: r.iter().copied().fold(f64::INFINITY, f64::min),
            max: r.iter().copied().fold(0.0, f64::max),
            median: median(r),
        })
        .collect())
}

const M: f64 = 1e6;

/// Adds our row (against the best baseline), one row per baseline, and a
/// note with the spread of our runs.
fn push_rows(report: &mut Report, what: &str, measured: &[Measured], target: Option<f64>) {
    let (ours, baselines) = measured.split_first().expect("ours is measured first");
    let best = baselines.iter().max_by(|a, b| a.median.total_cmp(&b.median));
    let mut fig = Figure::new(format!("{what}: reactor-ring"), ours.median / M, "M msgs/s");
    if let Some(b) = best {
        fig = fig.baseline(format!("best: {}", b.imp.name()), b.median / M);
    }
    if let Some(bound) = target.or(best.map(|b| b.median / M)) {
        fig = fig.at_least(bound);
    }
    report.push(fig);
    for b in baselines {
        report.push(Figure::new(format!("{what}: {}", b.imp.name()), b.median / M, "M msgs/s").baseline("reactor-ring", ours.median / M));
    }
    let range = |m: &Measured| format!("{} {}-{}", m.imp.name(), num(m.min / M), num(m.max / M));
    let mut spread = vec![range(ours)];
    spread.extend(best.map(range));
    report.note(format!("{what}: runs ranged {} M msgs/s", spread.join(", ")));
}

/// Ours first, then the baselines that have something to measure in `mode`
/// (crossbeam-channel has no batches).
fn with_ours(baselines: &[Imp], mode: Mode) -> Vec<Imp> {
    let skip = |imp: &&Imp| mode == Mode::Batch && **imp == Imp::CrossbeamChannel;
    std::iter::once(Imp::Ours).chain(baselines.iter().filter(|i| !skip(i)).copied()).collect()
}

pub(crate) fn run_spsc(opts: Opts) -> Result<Report> {
    let sizes = sizes(opts);
    let mut report = Report::new("ring-spsc", "SPSC ring alone: u64 messages between two threads");
    report.param("capacity", CAP);
    report.param("seconds_per_run", sizes.secs);
    report.param("reps", sizes.reps);
    report.param("batch", BATCH);
    report.param("cores", thread::available_parallelism().map_or(0, |n| n.get()));
    let all = [Imp::Rtrb, Imp::ArrayQueue, Imp::CrossbeamChannel, Imp::Tokio, Imp::Disruptor];
    for mode in [Mode::One, Mode::Batch] {
        let imps = with_ours(&all, mode);
        let measured = measure(&imps, 1, mode, &sizes)?;
        push_rows(&mut report, mode.label(), &measured, None);
    }
    report.note("target: never slower than the best baseline (rtrb seen at ~280 M msgs/s one at a time, ~580 M in chunks of 64 on this machine class)");
    report.note("waiting: ours, rtrb, ArrayQueue and disruptor use the same bounded Backoff then EventCount parking, notifying every 64 messages; crossbeam-channel and tokio block with their own calls");
    for imp in all {
        report.note(format!("{} batches: {}", imp.name(), imp.batch_note()));
    }
    Ok(report)
}

pub(crate) fn run_mpsc(opts: Opts) -> Result<Report> {
    let sizes = sizes(opts);
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = Report::new("ring-mpsc", "MPSC ring alone: u64 messages from N producer threads to one consumer");
    report.param("capacity", CAP);
    report.param("seconds_per_run", sizes.secs);
    report.param("reps", sizes.reps);
    report.param("batch", BATCH);
    report.param("cores", cores);
    let all = [Imp::ArrayQueue, Imp::CrossbeamChannel, Imp::Tokio, Imp::Disruptor];
    for producers in [2usize, 4, 8] {
        let target = match producers {
            2 => Some(40.0),
            4 => Some(30.0),
            _ => None,
        };
        for mode in [Mode::One, Mode::Batch] {
            let what = format!("{producers} producers, {}", mode.label());
            let measured = measure(&with_ours(&all, mode), producers, mode, &sizes)?;
            push_rows(&mut report, &what, &measured, target);
        }
    }
    report.note("targets: >= 40 M msgs/s with 2 producers, >= 30 M with 4, no collapse with 8 (more threads than the cores)");
    report.note("waiting: ours, ArrayQueue and disruptor use the same bounded Backoff then EventCount parking, notifying every 64 messages; crossbeam-channel and tokio block with their own calls");
    for imp in all {
        report.note(format!("{} batches: {}", imp.name(), imp.batch_note()));
    }
    Ok(report)
}
