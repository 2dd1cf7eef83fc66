//! The public handle of a running transport: [`Transport`] binds, starts
//! the accept loop and the overlay task, joins through seeds, sends (as the
//! runtime's [`Outbound`]), broadcasts, reports status and stops. The top
//! module: it uses `accept`, `overlay_task`, `route`, `handshake`, `state`,
//! `error` and `config`.

use crate::accept::accept_loop;
use crate::config::{CONTROL, MAX_BROADCAST_LEN, TransportConfig};
use crate::error::StartError;
use crate::handshake::{Conn, dial};
use crate::overlay_task::overlay_task;
use crate::state::{Inbound, Inner, LaneKey, LaneStatus, Member, OverlayInput};
use reactor_net::{NodeId, NodeInfo};
use reactor_net::overlay::Overlay;
use reactor_types::{Address, Envelope, Outbound, SendError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Why a broadcast was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// Larger than a control frame carries.
    #[error("a broadcast of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A running transport. Dropping it does not stop it; call
/// [`Transport::stop`].
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    local: SocketAddr,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("me", &self.inner.config.me.id).field("local", &self.local).finish()
    }
}

impl Transport {
    /// Binds `config.me.addr`.
    pub fn bind(config: &TransportConfig) -> Result<std::net::TcpListener, StartError> {
        let err = |source| StartError::Listen { addr: config.me.addr.clone(), source };
        let l = std::net::TcpListener::bind(&config.me.addr).map_err(err)?;
        l.set_nonblocking(true).map_err(err)?;
        Ok(l)
    }

    /// Starts the accept loop on `listener` and the overlay task, on the
    /// current tokio runtime. Messages for this node go to `inbound`.
    pub async fn start(
        config: TransportConfig,
        listener: std::net::TcpListener,
        overlay: Box<dyn Overlay>,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::from_std(listener).map_err(|source| StartError::Listen { addr: config.me.addr.clone(), source })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen { addr: config.me.addr.clone(), source })?;
        let (overlay_tx, overlay_rx) = mpsc::unbounded_channel();
        let (overlay_msgs, peers_rx) = mpsc::channel(config.overlay_queue);
        let inner = Inner::new(config, local, inbound, overlay_tx, overlay_msgs);
        inner.relays.store(overlay.relays(), Ordering::Relaxed);
        tokio::spawn(accept_loop(inner.clone(), listener));
        tokio::spawn(overlay_task(inner.clone(), overlay, overlay_rx, peers_rx));
        Ok(Self { inner, local })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Joins the cluster through nodes at these addresses.
    pub fn join(&self, seeds: Vec<String>) {
        for addr in seeds {
            let inner = self.inner.clone();
            self.inner.handle.spawn(async move {
                let mut backoff = Duration::from_millis(100);
                loop {
                    if inner.stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match dial(&inner, &addr, LaneKey { peer: 0, channel: CONTROL, lane: 0 }).await {
                        Ok(Conn { peer, .. }) => {
                            // The seed's identity: what the handshake proved.
                            let info = NodeInfo {
                                id: peer.node,
                                name: peer.name,
                                addr: addr.clone(),
                                role: reactor_net::NodeRole::Peer,
                                incarnation: peer.incarnation,
                            };
                            let _ = inner.overlay_tx.send(OverlayInput::Seed(info));
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("seed {addr}: {e}; retrying in {backoff:?}");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
    }

    /// Broadcasts `payload` to every node through the overlay. A payload
    /// over [`MAX_BROADCAST_LEN`] bytes (what a control frame carries) is
    /// refused here.
    pub fn broadcast(&self, payload: Vec<u8>) -> Result<(), BroadcastError> {
        if payload.len() > MAX_BROADCAST_LEN {
            return Err(BroadcastError::TooLarge { len: payload.len(), max: MAX_BROADCAST_LEN });
        }
        let _ = self.inner.overlay_tx.send(OverlayInput::Broadcast(payload));
        Ok(())
    }

    /// What this node knows of the cluster, itself included.
    pub fn members(&self) -> Vec<Member> {
        let mut m: Vec<Member> = self.inner.directory.read().unwrap().values().cloned().collect();
        m.sort_by_key(|m| m.info.id);
        m
    }

    /// Every lane this node has opened, with its figures.
    pub fn lanes(&self) -> Vec<LaneStatus> {
        let lanes = self.inner.lanes.lock().unwrap();
        let mut v: Vec<LaneStatus> = lanes
            .iter()
            .map(|(k, h)| LaneStatus {
                peer: k.peer,
                channel: self.inner.channel_name(k.channel),
                lane: k.lane,
                up: h.stats.up.load(Ordering::Relaxed),
                frames: h.stats.frames_out.load(Ordering::Relaxed),
                bytes: h.stats.bytes_out.load(Ordering::Relaxed),
                connects: h.stats.connects.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| (a.peer, &a.channel, a.lane).cmp(&(b.peer, &b.channel, b.lane)));
        v
    }

    /// Messages dropped because no node could take them.
    pub fn dead_letters(&self) -> u64 {
        self.inner.dead_letters.load(Ordering::Relaxed)
    }

    /// Announcements the overlay dropped because their origin's signature
    /// did not verify (a member forging another node's, or relaying one).
    pub fn bad_signatures(&self) -> u64 {
        self.inner.bad_signatures.load(Ordering::Relaxed)
    }

    /// Connections refused or closed for a protocol or authentication error.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Where `address` lives as far as this node knows (the node its
    /// address names unless it heard of a move), and how many moves of it
    /// it knows of.
    pub fn location(&self, address: Address) -> (NodeId, u64) {
        crate::locate::location(&self.inner, address)
    }

    /// Records first hand that `address` lives on `node` after its
    /// `epoch`-th move (the source of a move at its switch, the target when
    /// it takes the reactor in, a node's records after a restart).
    pub fn set_location(&self, address: Address, node: NodeId, epoch: u64) {
        crate::locate::set(&self.inner, address, node, epoch);
    }

    /// `address` moved here from `prev` (the `epoch`-th move): this node's
    /// messages to it are held until fences sent down its lanes to `prev`
    /// come back behind its earlier ones, then go straight to it
    /// ([`Inbound::switched`] says when). How many fences went.
    pub fn arrive(&self, address: Address, prev: NodeId, epoch: u64) -> usize {
        crate::locate::arrive(&self.inner, address, prev, epoch)
    }

    /// Tells every node believed up that `address` lives on `node` now;
    /// how many were told.
    pub fn announce_moved(&self, address: Address, node: NodeId, epoch: u64) -> usize {
        crate::locate::announce(&self.inner, address, node, epoch)
    }

    /// A location message (a `KIND_NODE` envelope whose payload is one)
    /// that arrived for this node. Malformed ones are dropped.
    pub fn location_message(&self, env: &Envelope) {
        if let Some(m) = crate::locate::decode(env) {
            crate::locate::heard(&self.inner, m, env.from);
        }
    }

    /// A fence reached `address`, which lives here: answers its sender.
    pub fn fence_reached(&self, address: Address, fence: Envelope) {
        crate::locate::fence_reached(&self.inner, address, fence);
    }

    /// Sends a flush down every lane of every application channel to every
    /// node believed up, behind what is queued for them now; each answers
    /// once it has taken in (delivered, or queued in order) everything its
    /// lanes carried before. A moving reactor's earlier messages are
    /// through before it runs elsewhere. Wait with [`Transport::flush_wait`].
    pub fn flush(&self) -> u64 {
        crate::locate::flush(&self.inner)
    }

    /// Waits (blocking, up to `limit`) until every node the flush `token`
    /// went to has answered or gone down; false if the limit passed first.
    pub fn flush_wait(&self, token: u64, limit: Duration) -> bool {
        crate::locate::flush_wait(&self.inner, token, limit)
    }

    /// Switches of path that went ahead without every fence answered.
    pub fn fence_timeouts(&self) -> u64 {
        self.inner.fence_timeouts.load(Ordering::Relaxed)
    }

    /// Queues `env` for `to` on node `node` on the named channel, on the
    /// lane `key` picks, waiting for room (a blocking call: not for async
    /// code). For the node's own bulk exchanges (migration), which must not
    /// stall reactor traffic.
    pub fn send_on(&self, channel: &str, node: NodeId, to: Address, env: Envelope, key: u64) -> Result<(), SendError> {
        let (tx, data) = self.lane_for(channel, node, to, env, key)?;
        tx.blocking_send(crate::state::Outgoing::Data(data)).map_err(|_| SendError::NoSuchReactor(to))
    }

    /// [`Transport::send_on`] without waiting: `InboxFull` when the lane
    /// has no room now (the message is not queued).
    pub fn try_send_on(&self, channel: &str, node: NodeId, to: Address, env: Envelope, key: u64) -> Result<(), SendError> {
        let (tx, data) = self.lane_for(channel, node, to, env, key)?;
        tx.try_send(crate::state::Outgoing::Data(data)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => SendError::InboxFull(to),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => SendError::NoSuchReactor(to),
        })
    }

    /// The lane of `channel` towards node `node` that `key` picks, and
    /// `env` as its data frame.
    fn lane_for(
        &self,
        channel: &str,
        node: NodeId,
        to: Address,
        env: Envelope,
        key: u64,
    ) -> Result<(tokio::sync::mpsc::Sender<crate::state::Outgoing>, reactor_net::frame::Data), SendError> {
        let inner = &self.inner;
        let Some(c) = inner.channels.iter().position(|c| c.name == channel) else {
            return Err(SendError::NoSuchReactor(to));
        };
        let Some(next) = inner.directory.read().unwrap().get(&node).filter(|m| m.up).and_then(|m| m.via) else {
            return Err(SendError::NoSuchReactor(to));
        };
        let key = crate::route::lane_key(inner, next, c as u16, key);
        Ok((crate::lane::lane_sender(inner, key), crate::route::data_frame(to, env, c as u16, 1)))
    }

    /// Closes every connection and stops dialing.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for h in self.inner.lanes.lock().unwrap().values() {
            h.close.notify_one();
        }
    }
}

impl Outbound for Transport {
    fn send(&self, to: Address, env: Envelope, affinity: u64) -> Result<(), SendError> {
        crate::route::try_route(&self.inner, to, env, 0, affinity).map_err(|(e, _)| e)
    }

    fn forward(&self, to: Address, env: Envelope, hint: NodeId) -> Result<(), SendError> {
        crate::route::forward(&self.inner, to, env, hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeEvent;
    use crate::state::testing::{Recorder, config, envelope, secret};
    use reactor_net::NodeId;
    use reactor_net::overlay::mesh::{FullMesh, MeshConfig};

    /// A full-mesh overlay with default settings.
    fn mesh(me: reactor_net::NodeInfo, seed: u64) -> Box<dyn Overlay> {
        Box::new(FullMesh::new(me, MeshConfig::default(), seed))
    }

    /// A node on a free loopback port with a full-mesh overlay, announcing
    /// the address it is bound to.
    async fn start(mut config: TransportConfig) -> (Transport, Arc<Recorder>) {
        let listener = Transport::bind(&config).unwrap();
        config.me.addr = listener.local_addr().unwrap().to_string();
        let overlay = mesh(config.me.clone(), u64::from(config.me.id));
        let recorder = Arc::new(Recorder::default());
        let t = Transport::start(config, listener, overlay, recorder.clone()).await.unwrap();
        (t, recorder)
    }

    /// Waits until `done` holds (a guard against hanging, not a timing
    /// assertion: every condition here holds within milliseconds).
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let wait = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or_else(|_| panic!("never: {what}"));
    }

    fn routed(t: &Transport, to: NodeId) -> bool {
        t.members().iter().any(|m| m.info.id == to && m.up && m.via == Some(to))
    }

    #[tokio::test]
    async fn a_message_routed_from_node_1_reaches_node_2() {
        let (n1, r1) = start(config(1)).await;
        let (n2, r2) = start(config(2)).await;
        n2.join(vec![n1.local_addr().to_string()]);
        until("the nodes see each other", || routed(&n1, 2) && routed(&n2, 1)).await;
        assert!(r1.events.lock().unwrap().iter().any(|e| matches!(e, NodeEvent::Up(i) if i.id == 2)));
        assert!(r2.events.lock().unwrap().iter().any(|e| matches!(e, NodeEvent::Up(i) if i.id == 1)));

        let to = Address::new(2, 0, 5);
        n1.send(to, envelope(1, 100), 0).unwrap();
        until("the message arrives", || !r2.delivered.lock().unwrap().is_empty()).await;
        assert_eq!(*r2.delivered.lock().unwrap(), [(to, envelope(1, 100))]);
        // It went on a lane of the `default` channel to node 2.
        let lanes = n1.lanes();
        assert!(lanes.iter().any(|l| l.peer == 2 && l.channel == "default" && l.frames >= 1 && l.connects == 1), "{lanes:?}");
        // And back, and a broadcast.
        let back = Address::new(1, 0, 9);
        n2.send(back, envelope(2, 3), 0).unwrap();
        n1.broadcast(b"news".to_vec()).unwrap();
        assert_eq!(
            n1.broadcast(vec![0; MAX_BROADCAST_LEN + 1]),
            Err(BroadcastError::TooLarge { len: MAX_BROADCAST_LEN + 1, max: MAX_BROADCAST_LEN })
        );
        until("the answer and the broadcast arrive", || {
            !r1.delivered.lock().unwrap().is_empty()
                && r2.events.lock().unwrap().iter().any(|e| matches!(e, NodeEvent::Broadcast { origin: 1, .. }))
        })
        .await;
        assert_eq!(*r1.delivered.lock().unwrap(), [(back, envelope(2, 3))]);
        assert_eq!((n1.refused(), n2.refused(), n1.dead_letters(), n2.dead_letters()), (0, 0, 0, 0));
        n1.stop();
        n2.stop();
    }

    #[tokio::test]
    async fn a_node_with_the_wrong_secret_is_refused() {
        let (n1, r1) = start(config(1)).await;
        let mut c = config(3);
        c.secret = secret("not the secret of this cluster");
        let (n3, r3) = start(c).await;
        // Through the overlay: the seed's handshake fails.
        n3.join(vec![n1.local_addr().to_string()]);
        // And straight onto a data lane, as if it had a route.
        let info = NodeInfo { addr: n1.local_addr().to_string(), ..config(1).me };
        n3.inner.directory.write().unwrap().insert(1, Member { info, up: true, via: Some(1) });
        let to = Address::new(1, 0, 5);
        n3.send(to, envelope(3, 10), 0).unwrap();
        // Each handshake refused counts; wait for several (both paths retry).
        until("node 1 refuses node 3 repeatedly", || n1.refused() >= 4).await;
        assert!(r1.delivered.lock().unwrap().is_empty(), "a message got through");
        assert!(r1.events.lock().unwrap().is_empty(), "node 1 heard of node 3: {:?}", r1.events.lock().unwrap());
        assert!(n1.members().iter().all(|m| m.info.id != 3), "{:?}", n1.members());
        assert!(r3.events.lock().unwrap().is_empty());
        // Node 3's lane never came up.
        assert!(n3.lanes().iter().all(|l| !l.up && l.connects == 0), "{:?}", n3.lanes());
        n1.stop();
        n3.stop();
    }
}
