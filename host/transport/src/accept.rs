//! Accepted connections: the accept loop and its admission limits,
//! authenticating what it accepts, and reading frames until the connection
//! ends, answering pings and acknowledging reliable streams (whose receive
//! state outlives the connection in `Inner::receivers`). Every frame is
//! checked against the connection's channel and against the peer it came
//! from before anything is delivered. Uses `state`, `io`, `faults`,
//! `handshake`, `route`, `error` and `config`.

use crate::config::CONTROL;
use crate::error::ConnError;
use crate::faults::{frame_channel, release_due};
use crate::handshake::accept_handshake;
use crate::io::{FrameReader, FrameWriter};
use crate::state::{Inner, OverlayInput};
use guest_sdk::abi;
use reactor_net::auth::Peer;
use reactor_net::frame::Frame;
use reactor_net::reliable;
use reactor_types::{Address, KIND_FENCE, KIND_NODE};
use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Accepted connections one peer may hold open per (channel, lane).
const MAX_CONNS_PER_LANE: usize = 8;

/// An accepted connection's place in the admission limits, given back when
/// it is dropped.
struct Admission {
    inner: Arc<Inner>,
    ip: IpAddr,
    authenticating: bool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("ip", &self.ip).field("authenticating", &self.authenticating).finish()
    }
}

impl Admission {
    /// Counts a new connection from `ip`, or says which limit it is over.
    fn admit(inner: &Arc<Inner>, ip: IpAddr) -> Result<Self, String> {
        let c = &inner.config;
        let mut hs = inner.handshaking.lock().unwrap();
        let mut per = inner.admission.lock().unwrap();
        let (open, authenticating) = per.get(&ip).copied().unwrap_or((0, 0));
        if *hs >= c.max_handshakes {
            return Err(format!("{} connections are authenticating already", *hs));
        }
        if authenticating >= c.max_handshakes_per_addr {
            return Err(format!("{authenticating} connections from {ip} are authenticating already"));
        }
        if open >= c.max_conns_per_addr {
            return Err(format!("{open} connections from {ip} are open already"));
        }
        *hs += 1;
        per.insert(ip, (open + 1, authenticating + 1));
        Ok(Self { inner: inner.clone(), ip, authenticating: true })
    }

    /// The handshake is over: the connection no longer counts as
    /// authenticating.
    fn authenticated(&mut self) {
        if std::mem::replace(&mut self.authenticating, false) {
            *self.inner.handshaking.lock().unwrap() -= 1;
            if let Some(e) = self.inner.admission.lock().unwrap().get_mut(&self.ip) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.authenticated();
        let mut per = self.inner.admission.lock().unwrap();
        if let Some(e) = per.get_mut(&self.ip) {
            e.0 -= 1;
            if e.0 == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until the transport stops. A connection over an
/// admission limit is closed at once, without a task; the others are
/// served on a task each. Counts those that end for a protocol or
/// authentication error (or an admission limit) as refused.
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
        let admission = match Admission::admit(&inner, from.ip()) {
            Ok(a) => a,
            Err(why) => {
                inner.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("refused a connection from {from}: {why}");
                drop(stream);
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(&inner, stream, admission).await {
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

/// Checks who an authenticated peer says it is against this node's
/// configuration: a node id other than this node's, a known channel, a lane
/// that channel has.
pub(crate) fn check_peer(inner: &Inner, peer: &Peer) -> Result<(), ConnError> {
    if peer.node == inner.config.me.id || peer.node == 0 {
        return Err(ConnError::Protocol(format!("the peer claims node id {}", peer.node)));
    }
    let lanes = match peer.channel.as_str() {
        "*" if inner.config.multiplex => 1,
        "control" if !inner.config.multiplex => 1,
        name if !inner.config.multiplex => match inner.channels.iter().skip(1).find(|c| c.name == name) {
            Some(c) => c.lanes,
            None => return Err(ConnError::Protocol(format!("unknown channel `{name}`"))),
        },
        name => return Err(ConnError::Protocol(format!("channel `{name}` on a multiplexed node (every connection is `*`)"))),
    };
    if peer.lane >= lanes {
        return Err(ConnError::Protocol(format!(
            "lane {} of channel `{}`, which has {lanes} lane{} here",
            peer.lane,
            peer.channel,
            if lanes == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// An accepted connection: authenticate, then read frames until it ends.
async fn serve(inner: &Arc<Inner>, mut stream: TcpStream, mut admission: Admission) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut reader = FrameReader::new();
    let mut writer = FrameWriter::new();
    let peer = accept_handshake(inner, &mut stream, &mut reader, &mut writer).await?;
    admission.authenticated();
    check_peer(inner, &peer)?;
    if crate::faults::is_cut_off(inner, peer.node) {
        return Err(ConnError::Partitioned(peer.node));
    }
    tracing::debug!("node {} ({}) connected: channel {} lane {}", peer.node, peer.name, peer.channel, peer.lane);
    // The peer's own authenticated hello: the one source of its incarnation.
    for c in inner.causal.iter().flatten() {
        c.lock().unwrap().handle_member(peer.node, peer.incarnation);
    }
    // A peer has one connection per lane (a few while one replaces a dead
    // one, which the idle timeout ends): more are refused.
    let slot = (peer.node, peer.channel.clone(), peer.lane);
    {
        let mut accepted = inner.accepted.lock().unwrap();
        let n = accepted.entry(slot.clone()).or_insert(0);
        if *n >= MAX_CONNS_PER_LANE {
            return Err(ConnError::Protocol(format!(
                "node {} has {n} connections of channel `{}` lane {} open already",
                peer.node, peer.channel, peer.lane
            )));
        }
        *n += 1;
    }
    // The overlay hears of links this node dialed (the ones its messages
    // go on); the peer reports its own.
    let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let result = serve_frames(inner, &peer, &mut stream, &mut reader, &mut writer, conn).await;
    let mut accepted = inner.accepted.lock().unwrap();
    if let Some(n) = accepted.get_mut(&slot) {
        *n -= 1;
        if *n == 0 {
            accepted.remove(&slot);
        }
    }
    result
}

async fn serve_frames(
    inner: &Arc<Inner>,
    peer: &Peer,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    conn: u64,
) -> Result<(), ConnError> {
    // Reliable streams this connection carries: their receive state lives
    // in `inner.receivers` between connections.
    let mut streams = Streams::default();
    let result = serve_loop(inner, peer, stream, reader, writer, &mut streams, conn).await;
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
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    streams: &mut Streams,
    conn: u64,
) -> Result<(), ConnError> {
    let mut pipeline = crate::faults::pipeline_for(inner, conn);
    let (mut rd, mut wr) = stream.split();
    let mut last_read = Instant::now();
    // Bytes buffered at the last check (progress inside a frame).
    let mut seen = reader.buffered();
    loop {
        let now = Instant::now();
        // Frames the pipeline lets through now, and acks that are due.
        let mut to_write: Vec<Frame> = Vec::new();
        let incoming = match pipeline.as_mut() {
            Some(p) => release_due(inner, p, now, &mut wr, writer, None).await?,
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
                None => {
                    writer.write(&mut wr, &f).await?;
                }
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
            r = reader.read(&mut rd) => {
                let f = r?;
                last_read = Instant::now();
                seen = reader.buffered();
                match pipeline.as_mut() {
                    Some(p) => p.handle_receive(last_read, peer.node, frame_channel(&f), conn, f),
                    None => {
                        if let Some(answer) = handle_incoming(inner, peer, f, streams).await? {
                            writer.write(&mut wr, &answer).await?;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {
                // Bytes of a frame still arriving count as life: a large
                // frame on a slow link takes longer than the timeout.
                if reader.buffered() != seen {
                    seen = reader.buffered();
                    last_read = Instant::now();
                } else if last_read.elapsed() >= inner.config.idle_timeout {
                    return Err(ConnError::Timeout("waiting for frames"));
                }
            }
        }
    }
}

/// Checks that a message's sender is one `peer` may speak for: a reactor or
/// host address; of the peer's own node unless relayed (`hops > 1`: through
/// an overlay that relays, forwarded after a reactor that moved, or from a
/// reactor that moved to the peer); an address of this node (a reactor or
/// its host) only when relayed.
fn check_sender(inner: &Inner, peer: &Peer, from: Address, hops: u8) -> Result<(), ConnError> {
    if !from.is_reactor() && !from.is_host() {
        return Err(ConnError::Protocol(format!("data from {from}, not an address")));
    }
    let origin = from.node();
    // A message relayed, forwarded after a reactor that moved, or sent by a
    // reactor that moved to the peer arrives with `hops > 1`; it may name
    // any node but must not name a reactor this node answers for.
    let relayed = hops > 1;
    // A relayed message may even come from this node (a reactor or its
    // host): what it sent to a reactor that moved, forwarded back here from
    // the old location, its own fences included. (A message a reactor sent
    // before it moved here may arrive after it: where an address lives
    // cannot say who may send as it.)
    if origin == inner.config.me.id && !relayed {
        return Err(ConnError::Protocol(format!("data from {from}, an address of this node (it lives here), sent by node {}", peer.node)));
    }
    if origin != peer.node && !relayed {
        return Err(ConnError::Protocol(format!(
            "data from {from} (node {origin}) on a connection from node {}: a node sends only as itself",
            peer.node
        )));
    }
    Ok(())
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
            check_sender(inner, peer, Address(d.from), d.hops)?;
            let kind_ok = match d.msg_kind {
                abi::KIND_MESSAGE | abi::KIND_REQUEST | abi::KIND_REPLY => true,
                // A node's own messages go to a host; fences to a reactor.
                KIND_NODE => to.is_host(),
                KIND_FENCE => to.is_reactor(),
                _ => false,
            };
            // An error flag only on a reply.
            let flags_ok = d.flags & !(abi::FLAG_TEXT | abi::FLAG_ERROR) == 0 && (d.flags & abi::FLAG_ERROR == 0 || d.msg_kind == abi::KIND_REPLY);
            if !kind_ok || !flags_ok {
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
                // Bounded: a peer whose messages the overlay has no room
                // for waits, and its connection is not read meanwhile.
                let _ = inner.overlay_msgs.send(OverlayInput::Message(peer.node, payload)).await;
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
    fn node() -> (Arc<Inner>, Arc<Recorder>, crate::state::testing::OverlayRx) {
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
    async fn a_peer_speaks_for_another_node_only_as_a_relay_and_never_for_this_one() {
        let (inner, recorder, _rx) = node();
        let mut streams = Streams::default();
        let p = peer("default");
        let mut spoofed = data(1, 0, 1);
        spoofed.from = Address::new(3, 0, 3).0;
        // Relayed, or forwarded after a reactor that moved: may name any
        // other node (whatever the overlay).
        let mut relayed = spoofed.clone();
        relayed.hops = 2;
        let mut mine = data(1, 0, 1);
        mine.from = Address::new(1, 0, 9).0;
        let mut mine_relayed = mine.clone();
        mine_relayed.hops = 2;
        let mut my_host = data(1, 0, 1);
        my_host.from = Address::host_of(1).0;
        let mut nowhere = data(1, 0, 1);
        nowhere.from = u64::MAX;
        inner.relays.store(false, Ordering::Relaxed);
        for (d, why) in [
            (spoofed.clone(), "a node sends only as itself"),
            (mine, "an address of this node"),
            (my_host, "an address of this node"),
            (nowhere, "not an address"),
        ] {
            let r = handle_incoming(&inner, &p, Frame::Data(d), &mut streams).await;
            assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains(why)), "{why}: {r:?}");
        }
        assert!(recorder.delivered.lock().unwrap().is_empty());
        handle_incoming(&inner, &p, Frame::Data(relayed), &mut streams).await.unwrap();
        assert_eq!(payloads(&recorder), [1]);
        // A message of this node's own reactor, forwarded back from where
        // the reactor it was sent to lived.
        handle_incoming(&inner, &p, Frame::Data(mine_relayed), &mut streams).await.unwrap();
        assert_eq!(payloads(&recorder), [1, 1]);
    }

    #[tokio::test]
    async fn lanes_channels_and_node_ids_a_peer_claims_are_checked_against_the_configuration() {
        let mut c = config(1);
        c.channels = vec!["default:lanes=4".parse().unwrap(), "sure:reliable".parse().unwrap()];
        let (inner, _, _rx) = inner(c);
        let with = |node: u16, channel: &str, lane: u16| Peer { node, incarnation: 1, name: "x".into(), channel: channel.into(), lane };
        assert!(check_peer(&inner, &with(2, "default", 3)).is_ok());
        assert!(check_peer(&inner, &with(2, "control", 0)).is_ok());
        for (p, why) in [
            (with(2, "default", 4), "lane 4 of channel `default`, which has 4 lanes here"),
            (with(2, "default", u16::MAX), "lane 65535"),
            (with(2, "control", 1), "which has 1 lane here"),
            (with(2, "sure", 1), "which has 1 lane here"),
            (with(2, "nope", 0), "unknown channel `nope`"),
            (with(2, "*", 0), "unknown channel `*`"),
            (with(1, "default", 0), "claims node id 1"),
            (with(0, "default", 0), "claims node id 0"),
        ] {
            let r = check_peer(&inner, &p);
            assert!(matches!(&r, Err(ConnError::Protocol(m)) if m.contains(why)), "{why}: {r:?}");
        }
    }

    #[tokio::test]
    async fn admission_counts_connections_per_address_and_handshakes_overall() {
        let mut c = config(1);
        c.max_handshakes_per_addr = 2;
        c.max_conns_per_addr = 3;
        c.max_handshakes = 4;
        let (inner, _, _rx) = inner(c);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut first = Admission::admit(&inner, a).unwrap();
        let mut second = Admission::admit(&inner, a).unwrap();
        assert!(Admission::admit(&inner, a).unwrap_err().contains("2 connections from 10.0.0.1 are authenticating"));
        first.authenticated();
        second.authenticated();
        let third = Admission::admit(&inner, a).unwrap();
        assert!(Admission::admit(&inner, a).unwrap_err().contains("3 connections from 10.0.0.1 are open"));
        // Overall: a has one authenticating; three more from elsewhere
        // reach the limit of four.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let _b = [Admission::admit(&inner, b).unwrap(), Admission::admit(&inner, b).unwrap()];
        let _c = Admission::admit(&inner, "10.0.0.3".parse().unwrap()).unwrap();
        let r = Admission::admit(&inner, "10.0.0.4".parse().unwrap());
        assert!(r.unwrap_err().contains("4 connections are authenticating"));
        drop(first);
        drop(third);
        assert_eq!(inner.admission.lock().unwrap().get(&a), Some(&(1, 0)));
        drop(second);
        assert_eq!(inner.admission.lock().unwrap().get(&a), None);
        assert_eq!(*inner.handshaking.lock().unwrap(), 3);
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
