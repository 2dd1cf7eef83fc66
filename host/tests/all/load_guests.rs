//! The migration benchmark's guests in one process: `loadgen` driving a
//! `migrant` finds its streams intact; `migrant` counts skipped and repeated
//! sequence numbers, writes pages at about its rate, and sees a pause of its
//! load as a gap at least as long.
use crate::util::*;
use protocols::{
    Gap, LoadgenInit, LoadgenReply, LoadgenReq, MIGRANT_GAP_THRESHOLD_NS, MigrantInit, MigrantReply, MigrantReq,
    SenderSeq,
};
use reactor_runtime::{Address, Runtime, RuntimeConfig};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn runtime() -> Runtime {
    Runtime::new(engine(), RuntimeConfig { shards: 2, ..RuntimeConfig::default() }).unwrap()
}

fn migrant_init(state_mib: u32, write_pages_per_sec: u32) -> MigrantInit {
    MigrantInit { state_mib, write_pages_per_sec, seed: 42 }
}

struct MigrantStats {
    handled: u64,
    senders: Vec<SenderSeq>,
    max_gap_ns: u64,
    big_gaps: Vec<Gap>,
    state_bytes: u64,
    pages_written: u64,
}

fn migrant_stats(reply: MigrantReply) -> MigrantStats {
    match reply {
        MigrantReply::Stats { handled, senders, max_gap_ns, big_gaps, state_bytes, pages_written, .. } => {
            MigrantStats { handled, senders, max_gap_ns, big_gaps, state_bytes, pages_written }
        }
        other => panic!("migrant answered {other:?} to Stats"),
    }
}

/// A loadgen's `Stats`: counters, and latencies `[p50, p99, p999, max]`.
#[derive(Debug)]
struct LoadStats {
    sent: u64,
    replied: u64,
    errors: u64,
    bad_replies: u64,
    in_flight: u32,
    samples: u64,
    latency: [u64; 4],
}

impl LoadStats {
    /// The counters, in the order of the struct.
    fn counts(&self) -> (u64, u64, u64, u64, u32, u64) {
        (self.sent, self.replied, self.errors, self.bad_replies, self.in_flight, self.samples)
    }
}

fn load_stats(reply: LoadgenReply) -> LoadStats {
    match reply {
        LoadgenReply::Stats {
            sent, replied, errors, bad_replies, in_flight, samples, p50_ns, p99_ns, p999_ns, max_ns, ..
        } => LoadStats {
            sent,
            replied,
            errors,
            bad_replies,
            in_flight,
            samples,
            latency: [p50_ns, p99_ns, p999_ns, max_ns],
        },
        other => panic!("loadgen answered {other:?} to Stats"),
    }
}

fn rt_migrant(rt: &Runtime, a: Address) -> MigrantStats {
    migrant_stats(rt.call_typed(a, &MigrantReq::Stats).unwrap())
}

fn rt_load(rt: &Runtime, a: Address) -> LoadStats {
    load_stats(rt.call_typed(a, &LoadgenReq::Stats).unwrap())
}

fn shard_load(rt: &mut reactor_runtime::Shard, a: Address) -> LoadStats {
    load_stats(rt.call_typed(a, &LoadgenReq::Stats).unwrap())
}

fn migrant_do(rt: &Runtime, a: Address, msg: &MigrantReq) -> MigrantReply {
    rt.call_typed(a, msg).unwrap()
}

fn load_do(rt: &Runtime, a: Address, msg: &LoadgenReq) -> LoadgenReply {
    rt.call_typed(a, msg).unwrap()
}

/// Polls `f` until it is true, for at most 60 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn loadgens_driving_a_migrant_find_every_stream_intact() {
    let rt = runtime();
    let m = rt.spawn_on(0, &module("migrant"), postcard::to_allocvec(&migrant_init(4, 500)).unwrap(), 0).unwrap();
    const N: u64 = 3000;
    // Two on the migrant's shard, two across the ring.
    let loads: Vec<Address> = (0..4u64)
        .map(|i| {
            let init = LoadgenInit { target: m.0, sender: 100 + i, window: 8, stop_after: Some(N) };
            rt.spawn_on(i as usize % 2, &module("loadgen"), postcard::to_allocvec(&init).unwrap(), 0).unwrap()
        })
        .collect();
    for &l in &loads {
        wait_until("every request is answered", || rt_load(&rt, l).replied == N);
    }
    for &l in &loads {
        let s = rt_load(&rt, l);
        assert_eq!(s.counts(), (N, N, 0, 0, 0, N), "loadgen {l}");
        let [p50, p99, p999, max] = s.latency;
        assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "percentiles in order: {:?}", s.latency);
    }
    let s = rt_migrant(&rt, m);
    assert_eq!(s.senders.len(), 4);
    for sender in &s.senders {
        assert_eq!((sender.ok, sender.gaps, sender.dups, sender.last), (N, 0, 0, N), "sender {}", sender.sender);
    }
    assert_eq!(s.handled, 4 * N + 1, "every Seq and this Stats");
    assert_eq!(s.state_bytes, 4 << 20);
}

#[test]
fn a_skipped_sequence_number_is_a_gap_and_a_repeated_one_a_duplicate() {
    let mut rt = shard();
    let m = rt.spawn_with(&module("migrant"), &migrant_init(1, 0)).unwrap();
    let seq = |rt: &mut reactor_runtime::Shard, sender: u64, seq: u64| {
        let r: MigrantReply = rt.call_typed(m, &MigrantReq::Seq { sender, seq }).unwrap();
        assert_eq!(r, MigrantReply::Seq { seq }, "the reply echoes the number");
    };
    for s in [1, 2, 4, 4, 3, 5] {
        seq(&mut rt, 7, s);
    }
    for s in [1, 2, 3] {
        seq(&mut rt, 8, s);
    }
    // A one-way Seq counts too, unanswered.
    rt.send_typed(m, &MigrantReq::Seq { sender: 8, seq: 6 }).unwrap();
    rt.run_until_idle();
    let s = migrant_stats(rt.call_typed(m, &MigrantReq::Stats).unwrap());
    assert_eq!(
        s.senders,
        vec![
            // 1, 2, 5 ok; 4 skipped 3; the second 4 and the late 3 not past the last.
            SenderSeq { sender: 7, last: 5, ok: 3, gaps: 1, dups: 2 },
            SenderSeq { sender: 8, last: 6, ok: 3, gaps: 1, dups: 0 },
        ]
    );
}

#[test]
fn migrant_writes_pages_at_about_its_rate() {
    let rt = runtime();
    const RATE: u32 = 4000;
    // 16 MiB: 4096 pages.
    let m = rt.spawn_on(0, &module("migrant"), postcard::to_allocvec(&migrant_init(16, RATE)).unwrap(), 0).unwrap();
    let t0 = Instant::now();
    let before = rt_migrant(&rt, m).pages_written;
    // Messages keep it writing (it writes only when it handles one).
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_millis(300) {
        n += 1;
        let _: MigrantReply = rt.call_typed(m, &MigrantReq::Seq { sender: 1, seq: n }).unwrap();
    }
    let after = rt_migrant(&rt, m).pages_written;
    let elapsed = t0.elapsed();
    let written = after - before;
    // Between the two Stats it handled, at most RATE pages per second of
    // the time around them (plus the fraction carried in).
    let bound = (f64::from(RATE) * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(written > 0 && written <= bound, "{written} pages written in {elapsed:?} at {RATE}/s (bound {bound})");

    // Rate 0: no more writes.
    assert_eq!(migrant_do(&rt, m, &MigrantReq::SetRate { write_pages_per_sec: 0 }), MigrantReply::Done);
    let before = rt_migrant(&rt, m).pages_written;
    for i in 0..100 {
        let _: MigrantReply = rt.call_typed(m, &MigrantReq::Seq { sender: 1, seq: n + 1 + i }).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rt_migrant(&rt, m).pages_written, before, "rate 0 writes nothing");
}

#[test]
fn a_pause_of_the_load_is_seen_as_a_gap_at_least_as_long() {
    let rt = runtime();
    let m = rt.spawn_on(0, &module("migrant"), postcard::to_allocvec(&migrant_init(2, 100)).unwrap(), 0).unwrap();
    let init = LoadgenInit { target: m.0, sender: 1, window: 4, stop_after: None };
    let l = rt.spawn_on(1, &module("loadgen"), postcard::to_allocvec(&init).unwrap(), 0).unwrap();
    wait_until("the load runs", || rt_load(&rt, l).replied > 500);
    // Reset before pausing: this call is a message too and must not split
    // the gap.
    assert_eq!(migrant_do(&rt, m, &MigrantReq::ResetGaps), MigrantReply::Done);
    assert_eq!(load_do(&rt, l, &LoadgenReq::Pause), LoadgenReply::Done);
    // Once the last replies are in, the migrant has handled its last message.
    wait_until("nothing is outstanding", || rt_load(&rt, l).in_flight == 0);
    let paused_at = Instant::now();
    let wall_paused = wall_ns();
    std::thread::sleep(Duration::from_millis(300));
    let pause = paused_at.elapsed();
    let wall_resumed = wall_ns();
    // Nothing is sent while paused.
    let paused = rt_load(&rt, l);
    assert_eq!((paused.in_flight, paused.sent), (0, paused.replied));
    assert_eq!(load_do(&rt, l, &LoadgenReq::Resume), LoadgenReply::Done);
    // Read soon after: the migrant keeps only its last 64 gaps over
    // 200 µs, and a loaded machine makes many after the pause.
    wait_until("the load runs again", || rt_load(&rt, l).replied > paused.replied + 20);

    let s = rt_migrant(&rt, m);
    let gap = s.big_gaps.iter().max_by_key(|g| g.gap_ns).expect("the pause was recorded");
    assert_eq!(gap.gap_ns, s.max_gap_ns);
    // On the wall clock the migrant reads: from before the pause to after it.
    assert!(gap.at_ns >= wall_resumed && gap.at_ns - gap.gap_ns <= wall_paused, "{gap:?} spans the pause");
    // On the monotonic clock, give or take a slew of the wall clock.
    let slack = 1_000_000;
    assert!(s.max_gap_ns + slack >= pause.as_nanos() as u64, "largest gap {} ns, pause {pause:?}", s.max_gap_ns);
    assert!(s.big_gaps.iter().all(|g| g.gap_ns > MIGRANT_GAP_THRESHOLD_NS));
    assert!(s.big_gaps.windows(2).all(|w| w[0].at_ns <= w[1].at_ns), "oldest first");
    let stream = &s.senders[0];
    assert_eq!((stream.gaps, stream.dups), (0, 0), "a pause loses nothing");

    // Reset clears the latencies, not the sequence.
    assert_eq!(load_do(&rt, l, &LoadgenReq::Pause), LoadgenReply::Done);
    wait_until("nothing is outstanding", || rt_load(&rt, l).in_flight == 0);
    assert_eq!(load_do(&rt, l, &LoadgenReq::Reset), LoadgenReply::Done);
    let s = rt_load(&rt, l);
    assert_eq!((s.samples, s.latency), (0, [0; 4]));
    assert_eq!((s.sent, s.errors, s.bad_replies), (s.replied, 0, 0));
    assert_eq!(rt_migrant(&rt, m).senders[0].ok, s.sent, "every request handled once");

    // ResetGaps forgets the gaps: all there is after it is the one up to
    // the next message (this Stats: the load is paused).
    assert_eq!(migrant_do(&rt, m, &MigrantReq::ResetGaps), MigrantReply::Done);
    let s = rt_migrant(&rt, m);
    assert!(s.big_gaps.len() <= 1 && s.max_gap_ns < pause.as_nanos() as u64, "gaps after a reset: {:?}", s.big_gaps);
}

#[test]
fn a_refused_request_is_counted_and_its_number_sent_again() {
    let mut rt = shard();
    let m = rt.spawn_with(&module("migrant"), &migrant_init(1, 0)).unwrap();
    // A target that does not exist: every request is refused at once.
    let ghost = Address(m.0 + 1000);
    let init = LoadgenInit { target: ghost.0, sender: 1, window: 4, stop_after: None };
    let l = rt.spawn_with(&module("loadgen"), &init).unwrap();
    let first = shard_load(&mut rt, l);
    assert_eq!((first.sent, first.replied, first.in_flight), (0, 0, 0));
    assert!(first.errors >= 1, "the refusal at start is counted");
    // Each message to it retries once.
    let then = shard_load(&mut rt, l);
    assert_eq!((then.sent, then.errors), (0, first.errors + 1));

    // A loadgen that stops after 10: exactly 1 to 10 arrive.
    let init = LoadgenInit { target: m.0, sender: 2, window: 3, stop_after: Some(10) };
    let l = rt.spawn_with(&module("loadgen"), &init).unwrap();
    rt.run_until_idle();
    assert_eq!(shard_load(&mut rt, l).counts(), (10, 10, 0, 0, 0, 10));
    let s = migrant_stats(rt.call_typed(m, &MigrantReq::Stats).unwrap());
    assert_eq!(s.senders, vec![SenderSeq { sender: 2, last: 10, ok: 10, gaps: 0, dups: 0 }]);
}

#[test]
fn both_speak_json_as_the_benchmark_uses_them() {
    let mut rt = shard();
    let m = rt.spawn_text(&module("migrant"), r#"{"state_mib":1,"write_pages_per_sec":10,"seed":3}"#).unwrap();
    let init = format!(r#"{{"target":{},"sender":5,"window":2,"stop_after":20}}"#, m.0);
    let l = rt.spawn_text(&module("loadgen"), &init).unwrap();
    rt.run_until_idle();
    let r = rt.call(l, br#""Stats""#.to_vec(), true).unwrap();
    assert!(r.text);
    let stats: LoadgenReply = serde_json::from_slice(&r.payload).unwrap();
    assert!(matches!(stats, LoadgenReply::Stats { sent: 20, replied: 20, bad_replies: 0, .. }), "{stats:?}");
    let r = rt.call(m, br#""Stats""#.to_vec(), true).unwrap();
    let stats: MigrantReply = serde_json::from_slice(&r.payload).unwrap();
    let s = migrant_stats(stats);
    assert_eq!((s.state_bytes, s.senders.len(), s.senders[0].ok), (1 << 20, 1, 20));
    let r = rt.call(m, br#"{"Seq":{"sender":9,"seq":1}}"#.to_vec(), true).unwrap();
    assert_eq!(String::from_utf8(r.payload).unwrap(), r#"{"Seq":{"seq":1}}"#);
    let r = rt.call(l, br#"{"SetWindow":{"window":4}}"#.to_vec(), true).unwrap();
    assert_eq!(String::from_utf8(r.payload).unwrap(), r#""Done""#);
}
