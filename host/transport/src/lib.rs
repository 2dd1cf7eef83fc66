//! The tokio transport: real TCP connections between nodes, carrying the
//! frames of `frame`, encrypted and authenticated by `secure` (Noise, the
//! peer's static key checked by the keyring; with `insecure_plaintext`,
//! only the handshake, by `auth`), organised in channels and lanes, driving
//! an [`Overlay`](reactor_net::overlay::Overlay).
//!
//! # Connections
//! - A connection carries one *channel* (by name) and one *lane* of it,
//!   named in the connector's hello. In multiplexed mode (the baseline: the
//!   distributed-Erlang design) one connection per pair of nodes carries
//!   every channel, named `*`.
//! - Each node sends data only on connections it dialed, so every stream
//!   is one-directional and its acks and pongs come back on the same socket.
//!   No dial races, no choosing between two connections.
//! - A message picks its lane by affinity: a hash of its partition key (the
//!   destination reactor unless the channel says otherwise) modulo the
//!   channel's lanes, so per-destination order holds while unrelated traffic
//!   flows on other connections.
//! - Channel 0 is `control` (overlay and membership), never carrying
//!   reactor data, so it never queues behind bulk payloads.
//!
//! # Failure
//! Every byte read is untrusted: a frame that does not decode, an oversized
//! one, a frame out of place or a failed handshake closes that connection
//! with a logged reason; nothing else is affected. So does a record that
//! does not decrypt, a message whose sender is not of the peer's node, and
//! a hello naming a channel or lane this node does not have. Before a peer
//! is authenticated it may send 4 KiB frames, for 2 s, on one of a bounded
//! number of connections (per IP and overall); the accept loop refuses the
//! rest without a task. Pings detect dead peers
//! on quiet connections. A lane whose connection drops dials again with
//! backoff; what an unreliable channel had written but the peer not read is
//! lost (at-most-once), what a reliable channel had not had acknowledged is
//! sent again on the new connection.
//!
//! # Layout
//! Modules from the bottom up; each uses only modules before it. The shared
//! state `Inner` keeps its bookkeeping methods in `state`; what a concern
//! does with it is a function of that concern's module taking `&Inner`
//! (not an `impl Inner` block elsewhere, which would file the behaviour
//! under `state` and point it back up the stack).
//! - `config`: [`ChannelSpec`] (and its command-line syntax),
//!   [`TransportConfig`], [`MAX_HOPS`], [`CONTROL`].
//! - `error`: [`StartError`], and why a connection ended.
//! - `state`: the shared state of a running transport (`Inner`: channels,
//!   directory, lanes, reliable receive state, causal state, counters) and
//!   the types every task passes around: [`Inbound`], [`NodeEvent`],
//!   [`Member`], [`LaneStatus`], lane keys and handles, overlay inputs.
//! - `io`: frames over async byte streams: the reader and writer of a
//!   connection (refusing oversized frames before buffering them; sealed
//!   into and opened from records once encrypted), write that fails on a
//!   stalled peer.
//! - `faults`: the per-connection interposition pipeline (fault injection,
//!   tracing), partitions, releasing held frames, fault events.
//! - `handshake`: hellos, dialing and authenticating as connector, and
//!   authenticating an accepted stream as acceptor (Noise and the keyring,
//!   or the plaintext HMAC exchange).
//! - `lane`: the task of one outgoing (peer, channel, lane): dialing with
//!   backoff, reliable send state, writing, pings.
//! - `route`: channel by size, lane by partition key, next hop; delivering
//!   or forwarding what arrives (through causal order where configured).
//! - `locate`: where reactors that moved live (the location table),
//!   location notices, and switching a reactor's path in order with
//!   fences.
//! - `accept`: the accept loop and its admission limits, the checks of a
//!   peer's hello and of every frame's sender, one accepted connection's
//!   frames.
//! - `overlay_task`: driving the overlay and keeping routes current.
//! - `transport`: [`Transport`], the public handle.
//!
//! This file only declares the modules and picks the public surface.
#![forbid(unsafe_code)]

mod accept;
mod config;
mod error;
mod faults;
mod handshake;
mod io;
mod lane;
mod locate;
mod overlay_task;
mod route;
mod state;
mod transport;

pub use config::{CONTROL, ChannelSpec, MAX_BROADCAST_LEN, MAX_HOPS, TransportConfig};
pub use error::StartError;
pub use state::{Inbound, LaneStatus, Member, NodeEvent};
pub use transport::{BroadcastError, Transport};
