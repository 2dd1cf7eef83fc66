//! The per-connection interposition pipeline: building it from the fault
//! schedule and the trace setting, asking the schedule whether a peer is
//! cut off, releasing held frames onto the wire (or into the connection),
//! and carrying out what the injector asks of the node. Uses `state`, `io`,
//! `error` and `config`.

use crate::config::CONTROL;
use crate::error::ConnError;
use crate::io::{FrameWriter, write_live};
use crate::state::{Inner, LaneStats, partition_hash};
use reactor_net::NodeId;
use reactor_net::fault::{FaultEvent, FaultInjector, Pipeline, Trace};
use reactor_net::frame::Frame;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// A fresh interposition pipeline for connection `conn`, if faults are
/// set. Each connection draws from its own stream of the schedule's
/// seed (mixed with the connection's number): with one shared stream,
/// a stream's n-th frame would meet the same fate on every reconnect,
/// and a resend of the same frames would fail the same way forever.
pub(crate) fn pipeline_for(inner: &Inner, conn: u64) -> Option<Pipeline> {
    if inner.faults.is_none() && !inner.config.trace {
        return None;
    }
    let mut p = Pipeline::new();
    if inner.config.trace {
        p = p.with(Trace::new(Instant::now(), 1024));
    }
    if let Some((schedule, start)) = inner.faults.as_ref() {
        let mut schedule = schedule.clone();
        schedule.seed ^= partition_hash(conn);
        p = p.with(FaultInjector::new(inner.config.me.id, &schedule, *start).resumed(Instant::now()));
    }
    Some(p)
}

/// Whether the fault schedule has `peer` on the other side of a
/// partition now (connections to it are refused after the handshake).
pub(crate) fn is_cut_off(inner: &Inner, peer: NodeId) -> bool {
    let Some((schedule, start)) = inner.faults.as_ref() else { return false };
    let mut p = Pipeline::new().with(FaultInjector::new(inner.config.me.id, schedule, *start).resumed(Instant::now()));
    p.handle_timeout(Instant::now());
    p.hook::<FaultInjector>().is_some_and(|f| f.is_cut(peer))
}

/// Carries out what the fault injector asks of the node itself.
fn carry_out_faults(inner: &Inner, p: &mut Pipeline) {
    while let Some(event) = p.poll_event() {
        match event {
            FaultEvent::Crash => {
                tracing::error!("fault injection: crashing node {} now", inner.config.me.id);
                std::process::abort();
            }
            FaultEvent::Cut { peers } => {
                for peer in peers {
                    inner.close_peer(peer);
                }
            }
            FaultEvent::Healed => {}
        }
    }
}

/// The channel a frame belongs to, for the fault rules.
pub(crate) fn frame_channel(f: &Frame) -> u16 {
    match f {
        Frame::Data(d) => d.channel,
        Frame::Ack { channel, .. } => *channel,
        _ => CONTROL,
    }
}

/// Lets a connection's pipeline release what is due: writes the frames
/// going out (damaged if marked so), returns the frames coming in (a
/// damaged one ends the connection, as a real decode error would), and
/// carries out fault events.
pub(crate) async fn release_due(
    inner: &Inner,
    p: &mut Pipeline,
    now: Instant,
    wr: &mut (impl AsyncWriteExt + Unpin),
    writer: &mut FrameWriter,
    stats: Option<&LaneStats>,
) -> Result<Vec<Frame>, ConnError> {
    p.handle_timeout(now);
    let mut incoming = Vec::new();
    while let Some(packet) = p.poll_release(now) {
        match packet.dir {
            reactor_net::fault::Direction::Send => {
                let bytes = writer.encode(&packet.frame, |b| {
                    if let Some(damage) = packet.corrupt {
                        damage.apply(b);
                    }
                })?;
                let n = bytes.len();
                write_live(wr, bytes, inner.config.idle_timeout).await?;
                if let Some(s) = stats {
                    s.frames_out.fetch_add(1, Ordering::Relaxed);
                    s.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            reactor_net::fault::Direction::Receive if packet.corrupt.is_some() => {
                return Err(ConnError::Protocol("a damaged frame (injected)".into()));
            }
            reactor_net::fault::Direction::Receive => incoming.push(packet.frame),
        }
    }
    carry_out_faults(inner, p);
    Ok(incoming)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::read_frame;
    use crate::state::testing::{config, inner};
    use crate::state::{LaneHandle, LaneKey};
    use reactor_net::fault::{Direction, Rule, Schedule, ScheduleEvent, Timed};
    use reactor_net::frame::Data;
    use std::sync::Arc;
    use tokio::sync::{Notify, mpsc};

    fn at_start(events: Vec<ScheduleEvent>) -> Schedule {
        Schedule { seed: 7, events: events.into_iter().map(|event| Timed { at_ms: 0, event }).collect() }
    }

    fn partition(sides: Vec<Vec<NodeId>>) -> ScheduleEvent {
        ScheduleEvent::Partition { sides }
    }

    /// Whether `n` holds a notification (without waiting for one).
    fn notified(n: &Notify) -> bool {
        let f = n.notified();
        tokio::pin!(f);
        f.as_mut().enable()
    }

    #[test]
    fn frames_are_filed_under_their_channel_else_control() {
        let d = Data {
            seq: 0,
            ack: 0,
            to: 0,
            from: 0,
            corr: 0,
            channel: 3,
            hops: 0,
            msg_kind: 0,
            flags: 0,
            meta: Vec::new(),
            payload: Vec::new(),
        };
        assert_eq!(frame_channel(&Frame::Data(d)), 3);
        assert_eq!(frame_channel(&Frame::Ack { channel: 2, seq: 9 }), 2);
        assert_eq!(frame_channel(&Frame::Ping { nonce: 1 }), CONTROL);
        assert_eq!(frame_channel(&Frame::Control { payload: vec![1] }), CONTROL);
    }

    #[tokio::test]
    async fn without_faults_or_trace_there_is_no_pipeline_and_nobody_is_cut_off() {
        let (plain, _, _rx) = inner(config(1));
        assert!(pipeline_for(&plain, 1).is_none());
        assert!(!is_cut_off(&plain, 2));
        let mut c = config(1);
        c.trace = true;
        let (traced, _, _rx) = inner(c);
        assert!(pipeline_for(&traced, 1).is_some_and(|p| p.hook::<Trace>().is_some() && p.hook::<FaultInjector>().is_none()));
    }

    #[tokio::test]
    async fn a_partition_in_the_schedule_cuts_off_the_other_side_only() {
        let mut c = config(1);
        c.faults = Some(at_start(vec![partition(vec![vec![1, 3], vec![2]])]));
        let (inner, _, _rx) = inner(c);
        assert!(is_cut_off(&inner, 2));
        assert!(!is_cut_off(&inner, 3), "same side");
        assert!(!is_cut_off(&inner, 4), "in no side");
    }

    #[tokio::test]
    async fn released_frames_reach_the_wire_and_the_connection() {
        let mut c = config(1);
        c.trace = true;
        let (inner, _, _rx) = inner(c);
        let mut p = pipeline_for(&inner, 1).unwrap();
        let now = Instant::now();
        p.handle_send(now, 2, CONTROL, 1, Frame::Ping { nonce: 5 });
        p.handle_receive(now, 2, CONTROL, 1, Frame::Pong { nonce: 4 });
        let (mut wr, mut rd) = tokio::io::duplex(4096);
        let stats = LaneStats::default();
        let incoming = release_due(&inner, &mut p, now, &mut wr, &mut FrameWriter::new(), Some(&stats)).await.unwrap();
        assert_eq!(incoming, [Frame::Pong { nonce: 4 }]);
        assert_eq!(read_frame(&mut rd, &mut Vec::new()).await.unwrap(), Frame::Ping { nonce: 5 });
        assert_eq!(stats.frames_out.load(Ordering::Relaxed), 1);
        assert!(stats.bytes_out.load(Ordering::Relaxed) > 0);
        assert_eq!(p.queued(), 0);
    }

    #[tokio::test]
    async fn a_damaged_incoming_frame_ends_the_connection() {
        let rule = Rule { corrupt: 1.0, direction: Some(Direction::Receive), ..Rule::default() };
        let mut c = config(1);
        c.faults = Some(at_start(vec![ScheduleEvent::SetRule { name: "damage".into(), rule }]));
        let (inner, _, _rx) = inner(c);
        let mut p = pipeline_for(&inner, 1).unwrap();
        let now = Instant::now();
        p.handle_timeout(now);
        p.handle_receive(now, 2, CONTROL, 1, Frame::Ping { nonce: 1 });
        let (mut wr, _rd) = tokio::io::duplex(4096);
        let r = release_due(&inner, &mut p, Instant::now(), &mut wr, &mut FrameWriter::new(), None).await;
        assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains("damaged")), "{r:?}");
    }

    #[tokio::test]
    async fn a_partition_closes_the_lanes_to_the_peers_it_cuts_off() {
        let mut c = config(1);
        c.faults = Some(at_start(vec![partition(vec![vec![1], vec![2]])]));
        let (inner, _, _rx) = inner(c);
        let mut closes = Vec::new();
        for peer in [2, 3] {
            let (tx, _) = mpsc::channel(1);
            let close = Arc::new(Notify::new());
            let h = LaneHandle { tx, close: close.clone(), stats: Arc::default() };
            inner.lanes.lock().unwrap().insert(LaneKey { peer, channel: 1, lane: 0 }, h);
            closes.push(close);
        }
        let mut p = pipeline_for(&inner, 1).unwrap();
        let (mut wr, _rd) = tokio::io::duplex(4096);
        release_due(&inner, &mut p, Instant::now(), &mut wr, &mut FrameWriter::new(), None).await.unwrap();
        assert!(notified(&closes[0]), "the lane to node 2 was not closed");
        assert!(!notified(&closes[1]), "the lane to node 3 was closed");
    }
}
