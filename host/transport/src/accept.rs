//! Accepted connections: the accept loop, authenticating what it accepts,
//! and reading frames until the connection ends, answering pings and
//! acknowledging reliable streams (whose receive state outlives the
//! connection in `Inner::receivers`). Every frame is checked against the
//! connection's channel before anything is delivered. Uses `state`, `io`,
//! `faults`, `handshake`, `route`, `error` and `config`.

use crate::config::CONTROL;
use crate::error::ConnError;
use crate::faults::{frame_channel, release_due};
use crate::handshake::accept_handshake;
use crate::io::{read_frame, write_frame};
use crate::state::{Inner, OverlayInput};
use guest_sdk::abi;
use reactor_net::auth::Peer;
use reactor_net::frame::Frame;
use reactor_net::reliable;
use reactor_types::Address;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections until the transport stops, serving each on a task
/// of its own; counts those that end for a protocol or authentication
/// error as refused.
pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&inner, stream).await {
                match e {
                    ConnError::Closed(_) | ConnError::Partitioned(_) => tracing::debug!("connection from {from} ended: {e}"),
                    ConnError::Io(_) => tracing::info!("connection from {from} ended: {e}"),
                    _ => {
                        inner.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("closed the connection from {from}: {e}");
                    }
                }
            }
        });
    }
}

/// An accepted connection: authenticate, then read frames until it ends.
async fn serve(inner: &Arc<Inner>, mut stream: TcpStream) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let peer = accept_handshake(inner, &mut stream, &mut buf, &mut out).await?;
    if peer.node == inner.config.me.id || peer.node == 0 {
        return Err(ConnError::Protocol(format!("the peer claims node id {}", peer.node)));
    }
    if crate::faults::is_cut_off(inner, peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    let is_control = peer.channel == "control" || peer.channel == "*";
    if !is_control && !inner.channels.iter().skip(1).any(|c| c.name == peer.channel) {
        return Err(ConnError::Protocol(format!("unknown channel `{}`", peer.channel)));
    }
    tracing::debug!("node {} ({}) connected: channel {} lane {}", peer.node, peer.name, peer.channel, peer.lane);
    for c in inner.causal.iter().flatten() {
        c.lock().unwrap().handle_member(peer.node, peer.incarnation);
    }
    // The overlay hears of links this node dialed (the ones its messages
    // go on); the peer reports its own.
    serve_frames(inner, &peer, &mut stream, &mut buf, &mut out).await
}

async fn serve_frames(
    inner: &Arc<Inner>,
    peer: &Peer,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), ConnError> {
    // Reliable streams this connection carries: their receive state lives
    // in `inner.receivers` between connections.
    let mut streams = Streams::default();
    let result = serve_loop(inner, peer, stream, buf, out, &mut streams).await;
    let now = Instant::now();
    let mut receivers = inner.receivers.lock().unwrap();
    for (channel, mut r) in streams.receivers.drain() {
        r.handle_disconnected(now);
        receivers.insert((peer.node, channel, peer.lane), r);
    }
    result
}

/// Receive state of the reliable streams of one accepted connection.
#[derive(Default)]
struct Streams {
    receivers: HashMap<u16, reliable::Receiver>,
}

async fn serve_loop(
    inner: &Arc<Inner>,
    peer: &Peer,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    streams: &mut Streams,
) -> Result<(), ConnError> {
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut pipeline = crate::faults::pipeline_for(inner, conn);
    let (mut rd, mut wr) = stream.split();
    let mut last_read = Instant::now();
    // Bytes buffered at the last check (progress inside a frame).
    let mut seen = buf.len();
    loop {
        let now = Instant::now();
        // Frames the pipeline lets through now, and acks that are due.
        let mut to_write: Vec<Frame> = Vec::new();
        let incoming = match pipeline.as_mut() {
            Some(p) => release_due(inner, p, now, &mut wr, out, None).await?,
            None => Vec::new(),
        };
        for f in incoming {
            if let Some(answer) = handle_incoming(inner, peer, f, streams).await? {
                to_write.push(answer);
            }
        }
        for (&channel, r) in streams.receivers.iter_mut() {
            if let Some(seq) = r.poll_ack(now) {
                to_write.push(Frame::Ack { channel, seq });
            }
        }
        for f in to_write {
            match pipeline.as_mut() {
                Some(p) => p.handle_send(now, peer.node, 0, conn, f),
                None => write_frame(&mut wr, &f, out).await?,
            }
        }
        if pipeline.as_ref().is_some_and(|p| p.poll_timeout().is_some_and(|t| t <= Instant::now())) {
            continue;
        }
        let timer = streams
            .receivers
            .values()
            .filter_map(|r| r.poll_timeout())
            .chain(pipeline.as_ref().and_then(|p| p.poll_timeout()))
            .min()
            .unwrap_or(last_read + inner.config.idle_timeout)
            .min(last_read + inner.config.idle_timeout);
        tokio::select! {
            r = read_frame(&mut rd, buf) => {
                let f = r?;
                last_read = Instant::now();
                seen = buf.len();
                match pipeline.as_mut() {
                    Some(p) => p.handle_receive(last_read, peer.node, frame_channel(&f), conn, f),
                    None => {
                        if let Some(answer) = handle_incoming(inner, peer, f, streams).await? {
                            write_frame(&mut wr, &answer, out).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {
                // Bytes of a frame still arriving count as life: a large
                // frame on a slow link takes longer than the timeout.
                if buf.len() != seen {
                    seen = buf.len();
                    last_read = Instant::now();
                } else if last_read.elapsed() >= inner.config.idle_timeout {
                    return Err(ConnError::Timeout("waiting for frames"));
                }
            }
        }
    }
}

/// A frame that arrived on an authenticated connection; maybe a frame
/// to answer with.
async fn handle_incoming(
    inner: &Arc<Inner>,
    peer: &Peer,
    frame: Frame,
    streams: &mut Streams,
) -> Result<Option<Frame>, ConnError> {
    match frame {
        Frame::Data(d) => {
            let channel = d.channel;
            let Some(spec) = inner.channels.get(channel as usize).filter(|_| channel != CONTROL) else {
                return Err(ConnError::Protocol(format!("data on channel {channel}")));
            };
            if !inner.config.multiplex && spec.name != peer.channel {
                return Err(ConnError::Protocol(format!("data of channel {} on a `{}` connection", spec.name, peer.channel)));
            }
            let to = Address(d.to);
            if !to.is_reactor() && !to.is_host() {
                return Err(ConnError::Protocol(format!("data for {to}, not an address")));
            }
            if !matches!(d.msg_kind, abi::KIND_MESSAGE | abi::KIND_REQUEST | abi::KIND_REPLY) || d.flags & !abi::FLAG_TEXT != 0 {
                return Err(ConnError::Protocol(format!("data of kind {} flags {}", d.msg_kind, d.flags)));
            }
            if !spec.reliable {
                if d.seq != 0 {
                    return Err(ConnError::Protocol("a sequenced frame on an unreliable channel".into()));
                }
                crate::route::accept_data(inner, d).await;
                return Ok(None);
            }
            let now = Instant::now();
            let r = match streams.receivers.entry(channel) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let kept = inner.receivers.lock().unwrap().remove(&(peer.node, channel, peer.lane));
                    let mut r = kept.unwrap_or_else(|| reliable::Receiver::new(reliable::ReceiverConfig::default()));
                    r.handle_connected(now, peer.incarnation).map_err(|e| ConnError::Protocol(e.to_string()))?;
                    e.insert(r)
                }
            };
            r.handle_data(now, d).map_err(|e| ConnError::Protocol(e.to_string()))?;
            while let Some(d) = r.poll_deliver() {
                crate::route::accept_data(inner, d).await;
            }
            Ok(None)
        }
        Frame::Control { payload } => {
            if inner.config.multiplex || peer.channel == "control" {
                let _ = inner.overlay_tx.send(OverlayInput::Message(peer.node, payload));
                Ok(None)
            } else {
                Err(ConnError::Protocol("control frame on a data channel".into()))
            }
        }
        Frame::Ping { nonce } => Ok(Some(Frame::Pong { nonce })),
        Frame::Close { reason } => Err(ConnError::Closed(reason)),
        f => Err(ConnError::Protocol(format!("{} frame on an accepted connection", f.name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::{Recorder, config, inner};
    use reactor_net::frame::Data;
    use tokio::sync::mpsc;

    fn peer(channel: &str) -> Peer {
        Peer { node: 2, incarnation: 1, name: "n2".into(), channel: channel.into(), lane: 0 }
    }

    fn data(channel: u16, seq: u64, tag: u8) -> Data {
        Data {
            seq,
            ack: 0,
            to: Address::new(1, 0, 7).0,
            from: Address::new(2, 0, 3).0,
            corr: 0,
            channel,
            hops: 1,
            msg_kind: abi::KIND_MESSAGE,
            flags: 0,
            meta: Vec::new(),
            payload: vec![tag],
        }
    }

    /// A node with channels `default` (1) and `sure` (2, reliable).
    fn node() -> (Arc<Inner>, Arc<Recorder>, mpsc::UnboundedReceiver<OverlayInput>) {
        let mut c = config(1);
        c.channels = vec!["default".parse().unwrap(), "sure:reliable".parse().unwrap()];
        inner(c)
    }

    fn payloads(r: &Recorder) -> Vec<u8> {
        r.delivered.lock().unwrap().iter().map(|(_, e)| e.payload[0]).collect()
    }

    #[tokio::test]
    async fn data_on_its_own_channel_is_delivered_and_pings_are_answered() {
        let (inner, recorder, _rx) = node();
        let mut streams = Streams::default();
        let p = peer("default");
        assert!(handle_incoming(&inner, &p, Frame::Data(data(1, 0, 1)), &mut streams).await.unwrap().is_none());
        assert_eq!(payloads(&recorder), [1]);
        let answer = handle_incoming(&inner, &p, Frame::Ping { nonce: 8 }, &mut streams).await.unwrap();
        assert_eq!(answer, Some(Frame::Pong { nonce: 8 }));
    }

    #[tokio::test]
    async fn frames_out_of_place_are_protocol_violations_and_deliver_nothing() {
        let (inner, recorder, _rx) = node();
        let mut bad_kind = data(1, 0, 1);
        bad_kind.msg_kind = 99;
        let mut bad_flags = data(1, 0, 1);
        bad_flags.flags = 0x80;
        let mut not_an_address = data(1, 0, 1);
        not_an_address.to = u64::MAX;
        let cases: Vec<(&str, Frame, &str)> = vec![
            ("default", Frame::Data(data(0, 0, 1)), "data on channel 0"),
            ("default", Frame::Data(data(9, 0, 1)), "data on channel 9"),
            ("default", Frame::Data(data(2, 1, 1)), "data of channel sure on a `default` connection"),
            ("default", Frame::Data(not_an_address), "not an address"),
            ("default", Frame::Data(bad_kind), "kind 99"),
            ("default", Frame::Data(bad_flags), "flags 128"),
            ("default", Frame::Data(data(1, 5, 1)), "sequenced frame on an unreliable channel"),
            ("default", Frame::Control { payload: vec![1] }, "control frame on a data channel"),
            ("default", Frame::Ack { channel: 1, seq: 1 }, "ack frame on an accepted connection"),
            ("control", Frame::Pong { nonce: 1 }, "pong frame on an accepted connection"),
        ];
        for (channel, frame, why) in cases {
            let r = handle_incoming(&inner, &peer(channel), frame, &mut Streams::default()).await;
            assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains(why)), "{why}: {r:?}");
        }
        let r = handle_incoming(&inner, &peer("default"), Frame::Close { reason: "bye".into() }, &mut Streams::default()).await;
        assert!(matches!(&r, Err(ConnError::Closed(m)) if m == "bye"), "{r:?}");
        assert!(recorder.delivered.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn control_frames_go_to_the_overlay() {
        let (inner, _, mut rx) = node();
        handle_incoming(&inner, &peer("control"), Frame::Control { payload: vec![4, 2] }, &mut Streams::default()).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(OverlayInput::Message(2, p)) if p == [4, 2]));
    }

    #[tokio::test]
    async fn a_reliable_stream_delivers_in_order_exactly_once_and_acks() {
        let (inner, recorder, _rx) = node();
        let mut streams = Streams::default();
        let p = peer("sure");
        for (seq, tag) in [(1, 1), (1, 1), (3, 3), (2, 2), (3, 3)] {
            handle_incoming(&inner, &p, Frame::Data(data(2, seq, tag)), &mut streams).await.unwrap();
        }
        assert_eq!(payloads(&recorder), [1, 2, 3]);
        assert_eq!(streams.receivers.get_mut(&2).unwrap().poll_ack(Instant::now()), Some(3));
        // An unsequenced frame on a reliable channel.
        let r = handle_incoming(&inner, &p, Frame::Data(data(2, 0, 9)), &mut streams).await;
        assert!(matches!(r, Err(ConnError::Protocol(_))), "{r:?}");
    }
}
