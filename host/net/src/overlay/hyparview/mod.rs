//! Peer-to-peer overlay: HyParView membership with Plumtree broadcast,
//! written here without I/O (no clock reads, randomness only from the
//! seeded rng), plus what a cluster needs on top of the two papers.
//!
//! - **Membership** (`membership`): HyParView (Leitão et al., DSN 2007)
//!   — active and passive views, `Join` and `ForwardJoin` random walks
//!   (active and passive walk lengths), `Neighbor` requests of high or low
//!   priority, `Disconnect`, periodic `Shuffle`/`ShuffleReply`, and
//!   promotion from the passive view when a neighbour fails. A link enters
//!   an active view only once both ends agreed, and every request is
//!   answered or times out, so none stays pending for good. View repair
//!   goes on periodically while the active view is below half; a node left
//!   alone, or whose repair found no taker (an island of nodes that only
//!   have each other), re-joins through any node it knows.
//! - **Broadcast** (`plumtree`): Plumtree (Leitão et al., SRDS 2007) —
//!   eager and lazy push over the active view, `Gossip` with its round,
//!   batched `IHave`s, `Graft` on timeout, `Prune` on duplicates, ids
//!   `(origin, incarnation, seq)`, a bounded cache of received broadcasts.
//!   Only active neighbours take part: a late message from a former
//!   neighbour is dropped. The eager links settle into one spanning tree
//!   shared by every origin, shaped for the *root* (the member with the
//!   lowest id) by the paper's optimisation applied to the root's
//!   broadcasts only: a shortest-path tree of the root, `O(log n)` deep and
//!   stable, so that in steady state a broadcast takes one message per
//!   node and there are next to no grafts or prunes.
//! - **Hostile input** (`wire`): every message is decoded with a size
//!   limit and no trailing bytes, then checked before anything changes:
//!   walk lengths and rounds within the configuration, list lengths, every
//!   [`NodeInfo`](crate::node::NodeInfo) valid, a sender's description of
//!   itself its own. Announcements carry their origin's Ed25519 signature
//!   and count only when it verifies against the key the origin proved in
//!   its handshake ([`Origins`](crate::overlay::Origins)); what other nodes
//!   say of a node is hearsay, never its incarnation (`directory`).
//! - **Directory and failure detection** (`directory`): every node
//!   broadcasts an announcement of itself every
//!   `max(announce_interval, n / announce_budget)`, so the cluster as a
//!   whole makes at most `announce_budget` announcements a second and a
//!   node's cost stays flat as the cluster grows; `members()` is the nodes
//!   heard from recently. A node not heard from for `down_after` (at least
//!   3.2 announcement periods), or an active neighbour whose connection
//!   dropped and that is not heard from within `lost_neighbour_after` (at
//!   least a period and two ticks), is `Down`. A higher incarnation
//!   replaces a node (Down then Up). Connections to nodes outside the
//!   active view are closed once done with, or after `idle_close` without
//!   traffic.
//! - **Routing to non-neighbours** (`directory`): broadcasts are named by
//!   `(origin, incarnation, seq)` and every push or `IHave` carries the
//!   sender's distance from the origin; per origin the best route is kept
//!   by DSDV's rule (newest broadcast, then shortest distance), which never
//!   loops: a node's value for an origin never decreases, and a neighbour
//!   leaving the active view voids the routes through it without lowering
//!   their value. `next_hop(to)` is `to` when it is an active neighbour,
//!   else the route's neighbour while it is active, else `None` until the
//!   next announcement brings a fresh route. Routes follow the broadcast
//!   tree and its lazy links, so the tree's shallowness keeps them short.
//!
//! # Layout
//! Modules depend one way: `config` (settings, bounds) ← `wire` (messages,
//! checks) ← `membership`, `plumtree`, `directory` (independent of each
//! other) ← `node` ([`HyParView`], the [`Overlay`](super::Overlay) that ties
//! them together).
#![forbid(unsafe_code)]

mod config;
mod directory;
mod membership;
mod node;
mod plumtree;
#[cfg(test)]
mod tests;
mod wire;

pub use config::HyParViewConfig;
pub use node::HyParView;
