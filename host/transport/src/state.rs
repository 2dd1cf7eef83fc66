//! The shared state of a running transport ([`Inner`]) and the small types
//! every task passes around: what the node hears ([`NodeEvent`], through
//! its [`Inbound`]), the directory ([`Member`]), lane keys, handles and
//! figures, and what the overlay task is told. Here too are the bookkeeping
//! methods of `Inner` more than one module needs (channel names, addresses,
//! control links, closing a peer's lanes). Uses only `config`.

use crate::config::{ChannelSpec, TransportConfig};
use reactor_net::causal::{Causal, CausalConfig};
use reactor_net::fault::Schedule;
use reactor_net::frame::{Data, Frame};
use reactor_net::reliable;
use reactor_net::{NodeId, NodeInfo};
use reactor_types::{Address, Envelope, SendError};
use rustc_hash::FxHashMap as HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

/// What the node hears from its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node joined or came back.
    Up(NodeInfo),
    /// A node is believed to have failed.
    Down(NodeId),
    /// A broadcast arrived.
    Broadcast {
        /// Who broadcast it.
        origin: NodeId,
        /// What.
        payload: Vec<u8>,
    },
}

/// Where messages from the network go: the node's runtime.
pub trait Inbound: Send + Sync + 'static {
    /// Hands over a message for `to` on this node. `InboxFull` makes the
    /// transport hold it and stop reading that connection until it fits.
    fn deliver(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)>;
    /// A node event.
    fn event(&self, event: NodeEvent);
    /// Whether this node answers for `to`, an address naming another node
    /// (a reactor that moved here, or through here and is forwarded on by
    /// the runtime): messages for it are delivered here, not routed.
    fn claims(&self, _to: Address) -> bool {
        false
    }
    /// This node's path to `address` switched: what it held was sent.
    fn switched(&self, _address: Address) {}
}

/// Where a reactor that moved lives, as far as this node knows.
#[derive(Debug)]
pub(crate) struct Location {
    /// The node.
    pub(crate) node: NodeId,
    /// Its move count when this was learnt.
    pub(crate) epoch: u64,
    /// Switching to `node`: fences sent down the old path, and what is
    /// held for the reactor until they are answered.
    pub(crate) switch: Option<Switch>,
}

/// A switch of paths in progress (see `locate`).
#[derive(Debug)]
pub(crate) struct Switch {
    /// Names this switch's fences.
    pub(crate) token: u64,
    /// Fences not answered yet.
    pub(crate) waiting: usize,
    /// The node the fences went to (the old location).
    pub(crate) via: NodeId,
    /// Messages for the reactor meanwhile, in order: (envelope, hops,
    /// affinity).
    pub(crate) held: std::collections::VecDeque<(Envelope, u8, u64)>,
}

/// The location table: reactors that moved, by address. Counted so that
/// routing takes no lock while no reactor this node heard of has moved.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    pub(crate) count: std::sync::atomic::AtomicUsize,
    pub(crate) map: Mutex<HashMap<Address, Location>>,
    /// Flushes not answered yet: token → node → lanes to hear from.
    pub(crate) flushes: Mutex<std::collections::HashMap<u64, std::collections::HashMap<NodeId, usize>>>,
    /// Told when a flush is answered.
    pub(crate) flushed: std::sync::Condvar,
}

/// A directory entry: what this node knows of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity and address.
    pub info: NodeInfo,
    /// Believed alive.
    pub up: bool,
    /// The next hop towards it, if reachable.
    pub via: Option<NodeId>,
}

/// Counters of one lane.
#[derive(Debug, Default)]
pub(crate) struct LaneStats {
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) up: AtomicBool,
    /// Frames taken from the queue but not yet written (as of the lane
    /// task's last turn).
    pub(crate) pending: AtomicU64,
    /// Frames written on a reliable channel and not yet acknowledged (as of
    /// the lane task's last turn).
    pub(crate) unacked: AtomicU64,
}

/// A lane's figures for status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LaneStatus {
    /// The peer.
    pub peer: NodeId,
    /// The channel's name.
    pub channel: String,
    /// Lane index.
    pub lane: u16,
    /// Connected now.
    pub up: bool,
    /// Frames written.
    pub frames: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Connections made (more than 1: it reconnected).
    pub connects: u64,
}

/// One outgoing connection: to a peer, for a channel, one of its lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LaneKey {
    pub(crate) peer: NodeId,
    pub(crate) channel: u16,
    pub(crate) lane: u16,
}

/// What a lane is given to send.
pub(crate) enum Outgoing {
    Data(Data),
    Control(Vec<u8>),
}

impl Outgoing {
    pub(crate) fn into_frame(self) -> Frame {
        match self {
            Outgoing::Data(d) => Frame::Data(d),
            Outgoing::Control(payload) => Frame::Control { payload },
        }
    }
}

/// The transport's end of a running lane task.
pub(crate) struct LaneHandle {
    pub(crate) tx: mpsc::Sender<Outgoing>,
    pub(crate) close: Arc<Notify>,
    pub(crate) stats: Arc<LaneStats>,
}

/// What the overlay task is told: by this node's own tasks on an unbounded
/// queue (seeds, links, broadcasts: as many as this node makes), and
/// `Message`s from peers on a bounded one.
#[derive(Debug)]
pub(crate) enum OverlayInput {
    Seed(NodeInfo),
    Connected(NodeInfo),
    Disconnected(NodeId),
    Message(NodeId, Vec<u8>),
    Broadcast(Vec<u8>),
}

/// The shared state of a running transport.
pub(crate) struct Inner {
    pub(crate) config: TransportConfig,
    /// Control channel first, then the application channels.
    pub(crate) channels: Vec<ChannelSpec>,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) inbound: Arc<dyn Inbound>,
    pub(crate) lanes: Mutex<HashMap<LaneKey, LaneHandle>>,
    pub(crate) directory: RwLock<HashMap<NodeId, Member>>,
    /// Live control connections this node dialed, per peer.
    pub(crate) control_links: Mutex<HashMap<NodeId, u32>>,
    pub(crate) overlay_tx: mpsc::UnboundedSender<OverlayInput>,
    /// Overlay messages from peers (bounded: a peer waits for room).
    pub(crate) overlay_msgs: mpsc::Sender<OverlayInput>,
    /// Accepted connections per remote IP: (open, authenticating).
    pub(crate) admission: Mutex<HashMap<IpAddr, (usize, usize)>>,
    /// Accepted connections authenticating now, from everyone.
    pub(crate) handshaking: Mutex<usize>,
    /// Live accepted connections per (peer, channel, lane): at most
    /// `MAX_CONNS_PER_LANE` (one, and a few being replaced).
    pub(crate) accepted: Mutex<HashMap<(NodeId, String, u16), usize>>,
    /// Whether the overlay relays reactor messages (else a message is
    /// accepted only from its sender's own node).
    pub(crate) relays: AtomicBool,
    /// Receive state of reliable streams between connections:
    /// (peer, channel, lane).
    pub(crate) receivers: Mutex<HashMap<(NodeId, u16, u16), reliable::Receiver>>,
    /// Causal state of each causal channel (by index).
    pub(crate) causal: Vec<Option<Mutex<Causal>>>,
    /// Fault schedule and the time it counts from.
    pub(crate) faults: Option<(Schedule, Instant)>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) refused: AtomicU64,
    /// Broadcasts the overlay dropped for a bad signature (its count).
    pub(crate) bad_signatures: AtomicU64,
    /// Where reactors that moved live.
    pub(crate) locations: Locations,
    /// Switches of path released because their fences were not all
    /// answered in time (order across the switch not proven for them).
    pub(crate) fence_timeouts: AtomicU64,
    pub(crate) stopping: AtomicBool,
}

/// The hash a partition key (or a connection number) is spread by.
pub(crate) fn partition_hash(key: u64) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

impl Inner {
    /// The state of a transport listening at `local`, on the current tokio
    /// runtime: the control channel in front of the configured ones, the
    /// directory holding only this node.
    pub(crate) fn new(
        config: TransportConfig,
        local: SocketAddr,
        inbound: Arc<dyn Inbound>,
        overlay_tx: mpsc::UnboundedSender<OverlayInput>,
        overlay_msgs: mpsc::Sender<OverlayInput>,
    ) -> Arc<Self> {
        let mut channels = vec![ChannelSpec::new("control", 1)];
        channels[0].reliable = false;
        channels.extend(config.channels.iter().cloned());
        let mut me = config.me.clone();
        me.addr = local.to_string();
        let mut directory = HashMap::default();
        directory.insert(me.id, Member { info: me, up: true, via: None });
        let causal = channels
            .iter()
            .map(|c| c.causal.then(|| Mutex::new(Causal::new(config.me.id, config.me.incarnation, CausalConfig::default()))))
            .collect();
        let faults = config.faults.clone().map(|s| (s, Instant::now()));
        Arc::new(Inner {
            receivers: Mutex::new(HashMap::default()),
            causal,
            faults,
            next_conn: AtomicU64::new(1),
            config,
            channels,
            handle: tokio::runtime::Handle::current(),
            inbound,
            lanes: Mutex::new(HashMap::default()),
            directory: RwLock::new(directory),
            control_links: Mutex::new(HashMap::default()),
            overlay_tx,
            overlay_msgs,
            admission: Mutex::new(HashMap::default()),
            handshaking: Mutex::new(0),
            accepted: Mutex::new(HashMap::default()),
            relays: AtomicBool::new(true),
            dead_letters: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            locations: Locations::default(),
            fence_timeouts: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }

    /// A channel's name as hellos and status carry it (`*` when
    /// multiplexed).
    pub(crate) fn channel_name(&self, channel: u16) -> String {
        if self.config.multiplex {
            return "*".into();
        }
        self.channels.get(channel as usize).map_or_else(|| format!("#{channel}"), |c| c.name.clone())
    }

    pub(crate) fn addr_of(&self, node: NodeId) -> Option<String> {
        self.directory.read().unwrap().get(&node).map(|m| m.info.addr.clone())
    }

    /// A control connection this node dialed to `peer` came up or went
    /// down; the overlay hears of the first up and the last down.
    pub(crate) fn note_control_link(&self, peer: &NodeInfo, up: bool) {
        let mut links = self.control_links.lock().unwrap();
        let n = links.entry(peer.id).or_insert(0);
        if up {
            *n += 1;
            if *n == 1 {
                let _ = self.overlay_tx.send(OverlayInput::Connected(peer.clone()));
            }
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                links.remove(&peer.id);
                let _ = self.overlay_tx.send(OverlayInput::Disconnected(peer.id));
            }
        }
    }

    /// Closes every lane to `peer`.
    pub(crate) fn close_peer(&self, peer: NodeId) {
        for (k, h) in self.lanes.lock().unwrap().iter() {
            if k.peer == peer {
                h.close.notify_one();
            }
        }
    }
}

/// What the tests of several modules build on.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Inbound, Inner, NodeEvent, OverlayInput};
    use crate::config::TransportConfig;
    use reactor_net::auth::Secret;
    use reactor_net::{NodeId, NodeInfo};
    use reactor_types::{Address, Envelope, SendError};
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    /// Node `id` at `addr`, first incarnation.
    pub(crate) fn node(id: NodeId, addr: &str) -> NodeInfo {
        NodeInfo { id, name: format!("n{id}"), addr: addr.into(), role: reactor_net::NodeRole::Peer, incarnation: 1 }
    }

    pub(crate) fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec()).unwrap()
    }

    /// Node `id` of cluster `test`, listening on a free loopback port.
    pub(crate) fn config(id: NodeId) -> TransportConfig {
        TransportConfig::new(node(id, "127.0.0.1:0"), "test", secret("the cluster secret of the tests"))
    }

    /// An [`Inbound`] that records what it is handed, and refuses with
    /// `InboxFull` while `full` is set.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) delivered: Mutex<Vec<(Address, Envelope)>>,
        pub(crate) events: Mutex<Vec<NodeEvent>>,
        pub(crate) full: AtomicBool,
    }

    impl Inbound for Recorder {
        fn deliver(&self, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
            if self.full.load(std::sync::atomic::Ordering::Relaxed) {
                return Err((SendError::InboxFull(to), env));
            }
            self.delivered.lock().unwrap().push((to, env));
            Ok(())
        }

        fn event(&self, event: NodeEvent) {
            self.events.lock().unwrap().push(event);
        }
    }

    /// Both queues of the overlay task.
    #[derive(Debug)]
    pub(crate) struct OverlayRx {
        pub(crate) internal: mpsc::UnboundedReceiver<OverlayInput>,
        pub(crate) peers: mpsc::Receiver<OverlayInput>,
    }

    impl OverlayRx {
        /// The next input from either queue, this node's own first.
        pub(crate) fn try_recv(&mut self) -> Result<OverlayInput, ()> {
            self.internal.try_recv().or_else(|_| self.peers.try_recv()).map_err(|_| ())
        }
    }

    /// A transport's state with no tasks running, its inbound recorded.
    pub(crate) fn inner(config: TransportConfig) -> (Arc<Inner>, Arc<Recorder>, OverlayRx) {
        let recorder = Arc::new(Recorder::default());
        let (tx, internal) = mpsc::unbounded_channel();
        let (msgs, peers) = mpsc::channel(config.overlay_queue);
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        (Inner::new(config, local, recorder.clone(), tx, msgs), recorder, OverlayRx { internal, peers })
    }

    /// A message of `len` bytes from node `from`.
    pub(crate) fn envelope(from: NodeId, len: usize) -> Envelope {
        Envelope {
            kind: guest_sdk::abi::KIND_MESSAGE,
            flags: 0,
            from: Address::new(from, 0, 1),
            corr: 0,
            payload: vec![0x5a; len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::config::ChannelSpec;

    #[tokio::test]
    async fn the_control_channel_comes_first_and_the_directory_holds_this_node() {
        let mut c = config(1);
        c.channels = vec![ChannelSpec::new("a", 2), "b:causal".parse().unwrap()];
        let (inner, _, _rx) = inner(c);
        let names: Vec<String> = (0..4).map(|i| inner.channel_name(i)).collect();
        assert_eq!(names, ["control", "a", "b", "#3"]);
        assert!(!inner.channels[0].reliable);
        // Causal state exists for the causal channel only.
        let causal: Vec<bool> = inner.causal.iter().map(Option::is_some).collect();
        assert_eq!(causal, [false, false, true]);
        // This node is in its own directory at the address it listens on.
        assert_eq!(inner.addr_of(1).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(inner.addr_of(2), None);
    }

    #[tokio::test]
    async fn a_multiplexed_transport_names_every_channel_star() {
        let mut c = config(1);
        c.multiplex = true;
        let (inner, _, _rx) = inner(c);
        assert_eq!(inner.channel_name(0), "*");
        assert_eq!(inner.channel_name(1), "*");
    }

    #[tokio::test]
    async fn the_overlay_hears_of_the_first_control_link_up_and_the_last_down() {
        let (inner, _, mut rx) = inner(config(1));
        let peer = node(2, "127.0.0.1:2");
        inner.note_control_link(&peer, true);
        inner.note_control_link(&peer, true);
        inner.note_control_link(&peer, false);
        assert!(matches!(rx.try_recv(), Ok(OverlayInput::Connected(p)) if p.id == 2));
        assert!(rx.try_recv().is_err(), "a second link is not news, nor is losing one of two");
        inner.note_control_link(&peer, false);
        assert!(matches!(rx.try_recv(), Ok(OverlayInput::Disconnected(2))));
        assert!(inner.control_links.lock().unwrap().is_empty());
    }
}
