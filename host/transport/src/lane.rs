//! Outgoing lanes: [`Inner::lane`] finds or starts the task of a (peer,
//! channel, lane); the task dials, authenticates, keeps the send state of
//! reliable channels across connections, writes what is queued (through
//! the fault pipeline if there is one), pings, and dials again with
//! backoff after a failure. Uses `state`, `io`, `faults`, `handshake`,
//! `error` and `config`.

use crate::config::CONTROL;
use crate::error::ConnError;
use crate::faults::{frame_channel, release_due};
use crate::handshake::{Conn, dial};
use crate::io::{FrameReader, FrameWriter};
use crate::state::{Inner, LaneHandle, LaneKey, LaneStats, OverlayInput, Outgoing};
use reactor_net::NodeInfo;
use reactor_net::frame::Frame;
use reactor_net::reliable;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};

/// The lane for `key`, started if need be.
pub(crate) fn lane_sender(inner: &Arc<Inner>, key: LaneKey) -> mpsc::Sender<Outgoing> {
    let mut lanes = inner.lanes.lock().unwrap();
    if let Some(h) = lanes.get(&key).filter(|h| !h.tx.is_closed()) {
        return h.tx.clone();
    }
    let (tx, rx) = mpsc::channel(inner.config.lane_capacity);
    let close = Arc::new(Notify::new());
    let stats = Arc::new(LaneStats::default());
    lanes.insert(key, LaneHandle { tx: tx.clone(), close: close.clone(), stats: stats.clone() });
    inner.handle.spawn(lane_task(inner.clone(), key, rx, close, stats));
    tx
}

/// One outgoing lane: dials, authenticates, writes what is queued, pings,
/// and dials again after a failure. Reliable channels keep their send state
/// here, across connections.
async fn lane_task(
    inner: Arc<Inner>,
    key: LaneKey,
    mut rx: mpsc::Receiver<Outgoing>,
    close: Arc<Notify>,
    stats: Arc<LaneStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut head: VecDeque<Outgoing> = VecDeque::new();
    let mut senders: HashMap<u16, reliable::Sender> = HashMap::default();
    let is_control = key.channel == CONTROL;
    loop {
        if inner.stopping.load(Ordering::Relaxed) {
            break;
        }
        // A data lane dials only when there is something to send.
        if head.is_empty() && !is_control && senders.values().all(|s| s.unacked() == 0) {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => head.push_back(m),
                    None => break,
                },
                _ = close.notified() => break,
            }
        }
        let Some(addr) = inner.addr_of(key.peer).filter(|a| !a.is_empty()) else {
            tracing::warn!("no address for node {}; dropping {} queued messages", key.peer, head.len());
            inner.dead_letters.fetch_add(head.len() as u64, Ordering::Relaxed);
            head.clear();
            if is_control {
                let _ = inner.overlay_tx.send(OverlayInput::Disconnected(key.peer));
                break;
            }
            continue;
        };
        let Conn { mut stream, mut reader, mut writer, peer } = match dial(&inner, &addr, key).await {
            Ok(x) => x,
            Err(e) => {
                tracing::info!("lane {:?} to node {} at {addr}: {e}", key, key.peer);
                if is_control {
                    let _ = inner.overlay_tx.send(OverlayInput::Disconnected(key.peer));
                    break;
                }
                let up = inner.directory.read().unwrap().get(&key.peer).is_some_and(|m| m.up);
                if !up {
                    // The node is gone: what waits for it is undeliverable.
                    let mut lost = head.len() as u64 + senders.values().map(|s| s.unacked() as u64).sum::<u64>();
                    head.clear();
                    senders.clear();
                    while rx.try_recv().is_ok() {
                        lost += 1;
                    }
                    inner.dead_letters.fetch_add(lost, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = close.notified() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        stats.connects.fetch_add(1, Ordering::Relaxed);
        stats.up.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let mut refused = false;
        for s in senders.values_mut() {
            match s.handle_connected(now, peer.incarnation) {
                Ok(abandoned) => {
                    if !abandoned.is_empty() {
                        tracing::warn!("node {} restarted: {} unacknowledged messages may be lost", key.peer, abandoned.len());
                        inner.dead_letters.fetch_add(abandoned.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::warn!("lane {:?}: {e}", key);
                    refused = true;
                }
            }
        }
        if refused {
            stats.up.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            continue;
        }
        // What the directory holds, but the name and incarnation the peer
        // itself proved in this handshake: the one source of those facts.
        let info = inner.directory.read().unwrap().get(&key.peer).map(|m| m.info.clone());
        let mut info = info.unwrap_or(NodeInfo {
            id: peer.node,
            name: peer.name.clone(),
            addr: addr.clone(),
            role: reactor_net::NodeRole::Peer,
            incarnation: peer.incarnation,
        });
        info.name = peer.name.clone();
        info.incarnation = peer.incarnation;
        if is_control {
            inner.note_control_link(&info, true);
        }
        let mut lane = Lane { inner: &inner, key, peer_incarnation: peer.incarnation, senders: &mut senders, stats: &stats };
        let end = lane.run(&mut stream, &mut reader, &mut writer, &mut rx, &mut head, &close).await;
        stats.up.store(false, Ordering::Relaxed);
        let now = Instant::now();
        for s in senders.values_mut() {
            s.handle_disconnected(now);
        }
        if is_control {
            inner.note_control_link(&info, false);
        }
        match end {
            Ok(()) => break,
            Err(e) => {
                tracing::info!("lane {:?} to node {}: {e}", key, key.peer);
                if is_control {
                    break;
                }
            }
        }
    }
    let mut lanes = inner.lanes.lock().unwrap();
    if lanes.get(&key).is_some_and(|h| Arc::ptr_eq(&h.stats, &stats)) {
        lanes.remove(&key);
    }
}

/// One connection of a lane.
struct Lane<'a> {
    inner: &'a Arc<Inner>,
    key: LaneKey,
    peer_incarnation: u64,
    senders: &'a mut HashMap<u16, reliable::Sender>,
    stats: &'a LaneStats,
}

impl Lane<'_> {
    /// Writes queued messages on one authenticated connection until it
    /// fails (`Err`) or the lane is closed (`Ok`).
    async fn run(
        &mut self,
        stream: &mut tokio::net::TcpStream,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
        rx: &mut mpsc::Receiver<Outgoing>,
        head: &mut VecDeque<Outgoing>,
        close: &Notify,
    ) -> Result<(), ConnError> {
        let inner = self.inner;
        let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut pipeline = crate::faults::pipeline_for(inner, conn);
        let (mut rd, mut wr) = stream.split();
        let mut ping = tokio::time::interval(inner.config.ping_interval);
        let mut last_read = Instant::now();
        let mut nonce = 0u64;
        // A reliable channel whose send buffer is full stops taking from the
        // queue until an ack frees room.
        let mut blocked = false;
        loop {
            let now = Instant::now();
            let mut frames: Vec<Frame> = Vec::new();
            // 1. Take what is queued (unless a reliable send buffer is full).
            while !blocked {
                let Some(m) = head.pop_front().or_else(|| rx.try_recv().ok()) else { break };
                match m {
                    Outgoing::Data(d) if self.reliable(d.channel) => {
                        let cfg = reliable::SenderConfig::default();
                        let inc = self.peer_incarnation;
                        let s = self.senders.entry(d.channel).or_insert_with(|| {
                            let mut s = reliable::Sender::new(cfg);
                            let _ = s.handle_connected(now, inc);
                            s
                        });
                        if let Err(reliable::Full(d)) = s.try_send(d) {
                            head.push_front(Outgoing::Data(d));
                            blocked = true;
                        }
                    }
                    m => frames.push(m.into_frame()),
                }
            }
            // 2. What reliable streams have to (re)transmit.
            for s in self.senders.values_mut() {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                while let Some(d) = s.poll_transmit(now) {
                    frames.push(Frame::Data(d));
                }
            }
            // 3. Through the interposition pipeline, onto the wire.
            for f in frames {
                match pipeline.as_mut() {
                    Some(p) => p.handle_send(now, self.key.peer, frame_channel(&f), conn, f),
                    None => {
                        self.write(&mut wr, writer, &f).await?;
                        // The peer took a frame: it is alive even if its
                        // pongs queue behind our data.
                        last_read = Instant::now();
                    }
                }
            }
            let acks = match pipeline.as_mut() {
                Some(p) => release_due(inner, p, now, &mut wr, writer, Some(self.stats)).await?,
                None => Vec::new(),
            };
            for f in acks {
                if self.on_frame(f)? {
                    blocked = false;
                }
            }
            let unacked: usize = self.senders.values().map(|s| s.unacked()).sum();
            self.stats.pending.store(head.len() as u64, Ordering::Relaxed);
            self.stats.unacked.store(unacked as u64, Ordering::Relaxed);
            if pipeline.as_ref().is_some_and(|p| p.poll_timeout().is_some_and(|t| t <= Instant::now())) {
                continue;
            }
            let timer = self
                .senders
                .values()
                .filter_map(|s| s.poll_timeout())
                .chain(pipeline.as_ref().and_then(|p| p.poll_timeout()))
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                m = rx.recv(), if !blocked => match m {
                    Some(m) => head.push_back(m),
                    None => return Ok(()),
                },
                _ = close.notified() => {
                    let _ = writer.write(&mut wr, &Frame::Close { reason: "closing".into() }).await;
                    return Ok(());
                }
                _ = ping.tick() => {
                    if last_read.elapsed() > inner.config.idle_timeout {
                        return Err(ConnError::Timeout("waiting for a pong"));
                    }
                    nonce += 1;
                    writer.write(&mut wr, &Frame::Ping { nonce }).await?;
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {}
                r = reader.read(&mut rd) => {
                    let f = r?;
                    last_read = Instant::now();
                    match pipeline.as_mut() {
                        Some(p) => p.handle_receive(last_read, self.key.peer, frame_channel(&f), conn, f),
                        None => {
                            if self.on_frame(f)? {
                                blocked = false;
                            }
                        }
                    }
                }
            }
        }
    }

    fn reliable(&self, channel: u16) -> bool {
        self.inner.channels.get(channel as usize).is_some_and(|c| c.reliable)
    }

    async fn write(&self, wr: &mut (impl AsyncWriteExt + Unpin), writer: &mut FrameWriter, f: &Frame) -> Result<(), ConnError> {
        let n = writer.write_live(wr, f, self.inner.config.idle_timeout).await?;
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A frame read on this dialed connection; true if an ack freed room.
    fn on_frame(&mut self, f: Frame) -> Result<bool, ConnError> {
        match f {
            Frame::Pong { .. } => Ok(false),
            Frame::Ack { channel, seq } => {
                let Some(s) = self.senders.get_mut(&channel) else {
                    return Err(ConnError::Protocol(format!("ack on channel {channel}, which has no reliable stream here")));
                };
                s.handle_ack(Instant::now(), seq).map_err(|e| ConnError::Protocol(e.to_string()))?;
                Ok(true)
            }
            Frame::Close { reason } => Err(ConnError::Closed(reason)),
            f => Err(ConnError::Protocol(format!("{} frame on a dialed connection", f.name()))),
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::accept_handshake;
    use crate::state::Member;
    use crate::state::testing::{config, inner, node};
    use reactor_net::frame::Data;
    use tokio::net::TcpListener;

    fn data(channel: u16, payload: &[u8]) -> Data {
        Data {
            seq: 0,
            ack: 0,
            to: reactor_types::Address::new(2, 0, 1).0,
            from: reactor_types::Address::new(1, 0, 1).0,
            corr: 0,
            channel,
            hops: 1,
            msg_kind: guest_sdk::abi::KIND_MESSAGE,
            flags: 0,
            meta: Vec::new(),
            payload: payload.to_vec(),
        }
    }

    /// Waits (yielding to the lane tasks) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        let guard = tokio::time::timeout(Duration::from_secs(20), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        guard.await.expect("the condition never held");
    }

    #[tokio::test]
    async fn a_lane_is_started_once_per_key() {
        let (inner, _, _rx) = inner(config(1));
        let key = LaneKey { peer: 2, channel: 1, lane: 0 };
        let a = lane_sender(&inner, key);
        assert!(a.same_channel(&lane_sender(&inner, key)));
        assert!(!a.same_channel(&lane_sender(&inner, LaneKey { lane: 1, ..key })));
        assert!(!a.same_channel(&lane_sender(&inner, LaneKey { peer: 3, ..key })));
        assert_eq!(inner.lanes.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn messages_for_a_node_without_an_address_are_dead_letters() {
        let (inner, _, _rx) = inner(config(1));
        let tx = lane_sender(&inner, LaneKey { peer: 9, channel: 1, lane: 0 });
        tx.try_send(Outgoing::Data(data(1, b"lost"))).unwrap();
        tx.try_send(Outgoing::Data(data(1, b"lost too"))).unwrap();
        until(|| inner.dead_letters.load(Ordering::Relaxed) == 2).await;
    }

    #[tokio::test]
    async fn a_lane_dials_writes_pings_and_drops_a_peer_that_sends_it_data() {
        let mut c = config(1);
        c.ping_interval = Duration::from_millis(10);
        let (client, _, _rx) = inner(c);
        let (server, _, _rx2) = inner(config(2));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        client.directory.write().unwrap().insert(2, Member { info: node(2, &addr), up: true, via: Some(2) });
        let key = LaneKey { peer: 2, channel: 1, lane: 1 };
        lane_sender(&client, key).try_send(Outgoing::Data(data(1, b"first"))).unwrap();

        let (mut s, _) = l.accept().await.unwrap();
        let (mut reader, mut writer) = (FrameReader::new(), FrameWriter::new());
        let peer = accept_handshake(&server, &mut s, &mut reader, &mut writer).await.unwrap();
        assert_eq!((peer.node, peer.channel.as_str(), peer.lane), (1, "default", 1));
        // The data, and pings while the lane is quiet.
        let mut seen_data = false;
        let mut pings = 0;
        while !seen_data || pings < 2 {
            match reader.read(&mut s).await.unwrap() {
                Frame::Data(d) => {
                    assert_eq!(d.payload, b"first");
                    seen_data = true;
                }
                Frame::Ping { nonce } => {
                    pings += 1;
                    writer.write(&mut s, &Frame::Pong { nonce }).await.unwrap();
                }
                f => panic!("unexpected {f:?}"),
            }
        }
        let stats = client.lanes.lock().unwrap()[&key].stats.clone();
        assert!(stats.up.load(Ordering::Relaxed));
        assert_eq!(stats.connects.load(Ordering::Relaxed), 1);
        assert!(stats.frames_out.load(Ordering::Relaxed) >= 1);
        // Data is never sent to the dialer: the lane closes the connection.
        writer.write(&mut s, &Frame::Data(data(1, b"wrong way"))).await.unwrap();
        loop {
            match reader.read(&mut s).await {
                Ok(Frame::Ping { .. }) => {}
                Ok(f) => panic!("unexpected {f:?}"),
                Err(_) => break,
            }
        }
        until(|| !stats.up.load(Ordering::Relaxed)).await;
    }
}
