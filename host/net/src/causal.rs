//! Causal order of point-to-point messages among the nodes of a channel,
//! as an I/O-free state machine.
//!
//! A message `m` addressed to node `j` is delivered at `j` only after every
//! message addressed to `j` whose send happened before `m`'s send
//! (Lamport's happened-before over all nodes' sends and deliveries).
//!
//! # Algorithm: Raynal–Schiper–Toueg matrix clocks
//!
//! Each node keeps `SENT[k][l]`: how many messages node `k` sent to node
//! `l`, as far as this node knows, and `DELIV[k]`: how many messages from
//! `k` it delivered. A message from `i` to `j` carries the sender's `SENT`
//! (after counting itself). At `j` it is deliverable when
//! `DELIV[i] == SENT_m[i][j] - 1` (it is the next one from `i`) and
//! `DELIV[k] >= SENT_m[k][j]` for every other `k` (everything sent to `j`
//! before it was delivered). On delivery `j` counts it and takes the
//! element-wise maximum of the two matrices.
//!
//! Why this one: it does not assume FIFO links, and ours are not (a channel
//! spreads messages between two nodes over several lanes, and relays may
//! forward them); its delivery test is a plain comparison of one column,
//! easy to check and to bound. Schiper–Eggli–Sandoz carries less in the
//! best case but has the same O(n²) worst case and a subtler pruning rule;
//! Kshemkalyani–Singhal's optimal variant needs FIFO links.
//!
//! # Metadata (in `Data::meta`) and its size
//!
//! Sparse: only pairs that ever exchanged a message appear, with a table
//! of the nodes involved and their incarnations. Layout (varints are
//! unsigned LEB128, minimal, at most 10 bytes):
//!
//! ```text
//! u8      version (1)
//! varint  n, then n × (u16 node LE, varint incarnation)   node ids strictly ascending
//! varint  m, then m × (varint from, varint to, varint count)  indices into the table,
//!                                                            pairs strictly ascending, count ≥ 1
//! ```
//!
//! Each entry takes 3–14 bytes (typically ~4), each node 3–12. A channel of
//! 5 nodes all talking to each other carries at most ~150 bytes; 50 nodes
//! ~12 KiB. [`MAX_META_LEN`] (64 KiB) is reached near 110 nodes all talking
//! to all; a send that would exceed it fails ([`SendError::MetaTooLarge`]).
//! Causal channels are meant for groups of tens of nodes, not the cluster.
//!
//! Metadata comes from the network and is hostile: [`decode_meta`] checks
//! every length against the bytes actually present before allocating,
//! refuses overlong or overflowing varints, out-of-range indices,
//! unsorted or repeated nodes and pairs, zero counts and trailing bytes,
//! each with its own [`MetaError`], and never panics (property-tested).
//! The *values* of a well-formed table from an authenticated member are
//! believed: a member that lies about counts can hold back or misorder
//! delivery (what waits is bounded by the buffer), never crash it. Counts
//! of this node's own sends are never taken from others.
//!
//! # Reliability is assumed
//!
//! A message waits for every message that causally precedes it; one lost
//! message would hold back everything after it forever. A causal channel
//! is therefore also a reliable channel: the driver stacks the `reliable`
//! module under this one, and a message passed to [`Causal::prepare`] must
//! be sent (a `reliable::Full` one is kept and retried, never dropped).
//!
//! # Restarts
//!
//! Counts belong to incarnations. Every node in the table comes with the
//! incarnation the counts refer to. When this node learns that a node `k`
//! restarted (from [`Causal::handle_member`], or from a table that names a
//! newer incarnation), it forgets every count involving `k`, drops `k`'s
//! buffered messages of the old run, and from then on ignores counts about
//! `k`'s old run in incoming tables (those messages will never come: the
//! reliable layer abandoned them). A message addressed to an older run of
//! this node, or sent by an older run of its sender, is refused. So a
//! restart loses messages (at most once) and never blocks the others.
//!
//! # Bounds
//!
//! At most [`CausalConfig::max_buffered`] messages (and
//! [`CausalConfig::max_buffered_bytes`]) wait in the buffer. A message that
//! is deliverable at once is always taken. One that would have to wait
//! while the buffer is full is given back ([`CausalError::Full`]): the
//! driver keeps it, stops taking messages from that stream's reliable
//! receiver (whose acks then stop, pushing back on the sender), and offers
//! it again after the next delivery. This cannot deadlock: the causally
//! first undelivered message is always deliverable, and it is at the head
//! of its stream (a stream's earlier messages precede it causally).
//!
//! # Driver call order, per channel
//!
//! - On every membership change (overlay `Up`) and every hello:
//!   [`Causal::handle_member`].
//! - Sending: [`Causal::prepare`] sets `meta`, then `reliable::Sender::try_send`
//!   on the lane chosen by affinity (retrying the same message if full).
//! - Receiving a message for this node from a reliable receiver:
//!   [`Causal::handle_data`] with the *origin* node (the node bits of
//!   `Data::from`, not the relay); on `Full`, hold it as described above.
//!   Then take messages with [`Causal::poll_deliver`].
#![forbid(unsafe_code)]

use crate::node::NodeId;
use crate::frame::{Data, MAX_META_LEN};
use std::collections::{BTreeMap, VecDeque};

/// The metadata format version.
pub const META_VERSION: u8 = 1;

/// Bounds of a [`Causal`] state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalConfig {
    /// Most messages waiting for their causal predecessors. Default 1024.
    pub max_buffered: usize,
    /// Most bytes of waiting messages (by `reliable::cost`). Default 16 MiB.
    pub max_buffered_bytes: usize,
    /// Most nodes tracked (members, and nodes named by incoming tables).
    /// Default 1024.
    pub max_members: usize,
}

impl Default for CausalConfig {
    fn default() -> Self {
        CausalConfig { max_buffered: 1024, max_buffered_bytes: 16 << 20, max_members: 1024 }
    }
}

/// Why metadata bytes are not a causal table. Decoding changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Longer than [`MAX_META_LEN`].
    #[error("causal metadata of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Empty, or another format version.
    #[error("causal metadata version {0:?} unknown")]
    Version(Option<u8>),
    /// The bytes end inside a field.
    #[error("causal metadata ends inside its {0}")]
    Truncated(&'static str),
    /// A varint longer than 10 bytes, over `u64`, or not minimal.
    #[error("bad varint in causal metadata's {0}")]
    Varint(&'static str),
    /// More nodes or entries than the bytes could hold, or than allowed.
    #[error("causal metadata claims {count} {what}, more than possible")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The claimed count.
        count: u64,
    },
    /// Node ids or pairs not strictly ascending (repeats included).
    #[error("causal metadata's {0} are not strictly ascending")]
    Unsorted(&'static str),
    /// An entry names a node index past the table.
    #[error("causal metadata entry names node index {0}, past the table")]
    Index(u64),
    /// An entry with a count of zero (never written).
    #[error("causal metadata entry with a zero count")]
    ZeroCount,
    /// An entry from a node to itself.
    #[error("causal metadata entry from a node to itself")]
    SelfPair,
    /// Bytes after the last entry.
    #[error("{0} bytes after causal metadata")]
    Trailing(usize),
}

/// Why [`Causal::handle_data`] did not take a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CausalError {
    /// The metadata is malformed. The message is dropped, nothing changed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The metadata is well-formed but does not fit the message: it does
    /// not name this node or the sender, or lacks the sender's count for
    /// this node, or names a future run of this node. The message is
    /// dropped, nothing changed.
    #[error("causal metadata inconsistent with the message: {0}")]
    Inconsistent(&'static str),
    /// The message was addressed to an earlier run of this node, or sent
    /// by an earlier run of its sender. It is dropped; restarts the table
    /// revealed are kept.
    #[error("message from or to a previous incarnation")]
    Stale,
    /// Learning the table's nodes would track more than
    /// [`CausalConfig::max_members`]. The message is dropped, nothing changed.
    #[error("too many nodes on a causal channel")]
    TooManyMembers,
    /// The message must wait and the buffer is full: it is given back
    /// (offer it again after the next delivery). Restarts its table
    /// revealed are kept; nothing else changed.
    #[error("causal buffer full")]
    Full(Data),
}

/// Why [`Causal::prepare`] refused to stamp a message. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Messages to this node itself do not cross the network.
    #[error("a causal message to this node itself")]
    ToSelf,
    /// The destination's incarnation is unknown: call
    /// [`Causal::handle_member`] first.
    #[error("node {0} is not a known member of the channel")]
    UnknownMember(NodeId),
    /// The table would exceed [`MAX_META_LEN`].
    #[error("causal metadata of {0} bytes would exceed the limit")]
    MetaTooLarge(usize),
}

/// A decoded causal table: the node table and the `SENT` entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `(node, incarnation)`, node ids strictly ascending.
    pub nodes: Vec<(NodeId, u64)>,
    /// `((from, to), count)`, pairs strictly ascending, as node ids.
    pub sent: Vec<((NodeId, NodeId), u64)>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self, field: &'static str) -> Result<u64, MetaError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.0.split_first() else { return Err(MetaError::Truncated(field)) };
            self.0 = rest;
            if i == 9 && b > 1 {
                return Err(MetaError::Varint(field));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(MetaError::Varint(field));
                }
                return Ok(v);
            }
        }
        Err(MetaError::Varint(field))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, MetaError> {
        if self.0.len() < 2 {
            return Err(MetaError::Truncated(field));
        }
        let (h, rest) = self.0.split_at(2);
        self.0 = rest;
        Ok(u16::from_le_bytes([h[0], h[1]]))
    }
}

/// Encodes a table (see the module docs). The caller keeps nodes and pairs
/// sorted and counts non-zero, as [`Causal`] does.
pub fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + meta.nodes.len() * 4 + meta.sent.len() * 4);
    out.push(META_VERSION);
    put_varint(&mut out, meta.nodes.len() as u64);
    for &(node, inc) in &meta.nodes {
        out.extend_from_slice(&node.to_le_bytes());
        put_varint(&mut out, inc);
    }
    put_varint(&mut out, meta.sent.len() as u64);
    let index = |n: NodeId| meta.nodes.binary_search_by_key(&n, |&(id, _)| id).expect("pair names a node of the table");
    for &((from, to), count) in &meta.sent {
        put_varint(&mut out, index(from) as u64);
        put_varint(&mut out, index(to) as u64);
        put_varint(&mut out, count);
    }
    out
}

/// Decodes hostile metadata bytes into a table, or says exactly what is
/// wrong. Allocates at most in proportion to `bytes.len()`; never panics.
pub fn decode_meta(bytes: &[u8], max_nodes: usize) -> Result<Meta, MetaError> {
    if bytes.len() > MAX_META_LEN {
        return Err(MetaError::TooLarge(bytes.len()));
    }
    let (&version, rest) = bytes.split_first().ok_or(MetaError::Version(None))?;
    if version != META_VERSION {
        return Err(MetaError::Version(Some(version)));
    }
    let mut r = Reader(rest);
    let n = r.varint("node count")?;
    // Each node takes at least 3 bytes.
    if n > (r.0.len() / 3) as u64 || n > max_nodes as u64 {
        return Err(MetaError::TooMany { what: "nodes", count: n });
    }
    let mut nodes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let node = r.u16("node id")?;
        let inc = r.varint("incarnation")?;
        if nodes.last().is_some_and(|&(prev, _)| prev >= node) {
            return Err(MetaError::Unsorted("nodes"));
        }
        nodes.push((node, inc));
    }
    let m = r.varint("entry count")?;
    if m > (r.0.len() / 3) as u64 {
        return Err(MetaError::TooMany { what: "entries", count: m });
    }
    let mut sent: Vec<((NodeId, NodeId), u64)> = Vec::with_capacity(m as usize);
    let mut prev: Option<(u64, u64)> = None;
    for _ in 0..m {
        let f = r.varint("entry sender")?;
        let t = r.varint("entry receiver")?;
        let count = r.varint("entry count")?;
        for i in [f, t] {
            if i >= n {
                return Err(MetaError::Index(i));
            }
        }
        if f == t {
            return Err(MetaError::SelfPair);
        }
        if prev.is_some_and(|p| p >= (f, t)) {
            return Err(MetaError::Unsorted("entries"));
        }
        prev = Some((f, t));
        if count == 0 {
            return Err(MetaError::ZeroCount);
        }
        sent.push(((nodes[f as usize].0, nodes[t as usize].0), count));
    }
    if !r.0.is_empty() {
        return Err(MetaError::Trailing(r.0.len()));
    }
    Ok(Meta { nodes, sent })
}

#[derive(Debug)]
struct Waiting {
    from: NodeId,
    /// Entries about current incarnations only.
    sent: Vec<((NodeId, NodeId), u64)>,
    data: Data,
    cost: usize,
}

/// One node's causal state for one channel. See the module docs.
#[derive(Debug)]
pub struct Causal {
    me: NodeId,
    config: CausalConfig,
    /// The newest incarnation known of each node, this one included.
    incarnations: BTreeMap<NodeId, u64>,
    /// `SENT`. Invariant: both nodes of every pair are in `incarnations`,
    /// counts are about those incarnations and non-zero.
    sent: BTreeMap<(NodeId, NodeId), u64>,
    /// `DELIV`: messages delivered here from each node's current run.
    delivered: BTreeMap<NodeId, u64>,
    /// Messages waiting for predecessors. Invariant: none is deliverable
    /// (checked after every change), at most `max_buffered`.
    waiting: Vec<Waiting>,
    /// Invariant: the sum of `waiting[..].cost`.
    waiting_bytes: usize,
    ready: VecDeque<(NodeId, Data)>,
}

impl Causal {
    /// The state of node `me` (in its run `incarnation`) on a channel,
    /// before any message.
    pub fn new(me: NodeId, incarnation: u64, config: CausalConfig) -> Self {
        Causal {
            me,
            config,
            incarnations: BTreeMap::from([(me, incarnation)]),
            sent: BTreeMap::new(),
            delivered: BTreeMap::new(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            ready: VecDeque::new(),
        }
    }

    /// A member of the channel and its current incarnation (from the
    /// overlay's `Up`, or a hello). A newer incarnation than known means
    /// the node restarted: see "Restarts" in the module docs. An older one
    /// is ignored. Returns whether anything changed. A new node beyond
    /// [`CausalConfig::max_members`] is ignored (returns `false`).
    pub fn handle_member(&mut self, node: NodeId, incarnation: u64) -> bool {
        if node == self.me {
            return false;
        }
        match self.incarnations.get(&node) {
            Some(&known) if known >= incarnation => false,
            Some(_) => {
                self.restarted(node, incarnation);
                true
            }
            None if self.incarnations.len() >= self.config.max_members => false,
            None => {
                self.incarnations.insert(node, incarnation);
                true
            }
        }
    }

    fn restarted(&mut self, node: NodeId, incarnation: u64) {
        self.incarnations.insert(node, incarnation);
        self.sent.retain(|&(f, t), _| f != node && t != node);
        self.delivered.remove(&node);
        let mut bytes = 0;
        self.waiting.retain_mut(|w| {
            w.sent.retain(|&((f, t), _)| f != node && t != node);
            let keep = w.from != node;
            if !keep {
                bytes += w.cost;
            }
            keep
        });
        self.waiting_bytes -= bytes;
        // Dependencies on the old run are gone: some may be deliverable.
        self.deliver_waiting();
    }

    /// Stamps a message to node `to` with this node's table (sets
    /// `data.meta`), counting it as sent. The message must then be sent
    /// (see "Reliability is assumed").
    pub fn prepare(&mut self, to: NodeId, data: &mut Data) -> Result<(), SendError> {
        if to == self.me {
            return Err(SendError::ToSelf);
        }
        if !self.incarnations.contains_key(&to) {
            return Err(SendError::UnknownMember(to));
        }
        *self.sent.entry((self.me, to)).or_insert(0) += 1;
        let meta = self.table();
        let bytes = encode_meta(&meta);
        if bytes.len() > MAX_META_LEN {
            let c = self.sent.get_mut(&(self.me, to)).expect("counted above");
            *c -= 1;
            if *c == 0 {
                self.sent.remove(&(self.me, to));
            }
            return Err(SendError::MetaTooLarge(bytes.len()));
        }
        data.meta = bytes;
        Ok(())
    }

    /// This node's table as it would be sent now.
    pub fn table(&self) -> Meta {
        let mut ids: Vec<NodeId> = self.sent.keys().flat_map(|&(f, t)| [f, t]).collect();
        ids.push(self.me);
        ids.sort_unstable();
        ids.dedup();
        Meta {
            nodes: ids.iter().map(|id| (*id, self.incarnations[id])).collect(),
            sent: self.sent.iter().map(|(&k, &v)| (k, v)).collect(),
        }
    }

    /// A message for this node whose causal metadata is in `data.meta`,
    /// sent by node `from` (the origin, not a relay). It becomes
    /// deliverable ([`Causal::poll_deliver`]) once its predecessors are;
    /// until then it waits in the buffer. See [`CausalError`].
    pub fn handle_data(&mut self, from: NodeId, data: Data) -> Result<(), CausalError> {
        let meta = decode_meta(&data.meta, self.config.max_members)?;
        let inc_of = |n: NodeId| meta.nodes.binary_search_by_key(&n, |&(id, _)| id).ok().map(|i| meta.nodes[i].1);
        let my_inc = self.incarnations[&self.me];
        match inc_of(self.me) {
            None => return Err(CausalError::Inconsistent("the table does not name the receiver")),
            Some(i) if i > my_inc => {
                return Err(CausalError::Inconsistent("the table names a future run of the receiver"));
            }
            _ => {}
        }
        if from == self.me {
            return Err(CausalError::Inconsistent("a message from this node to itself"));
        }
        let Some(from_inc) = inc_of(from) else {
            return Err(CausalError::Inconsistent("the table does not name the sender"));
        };
        let Ok(own) = meta.sent.binary_search_by_key(&(from, self.me), |&(k, _)| k).map(|i| meta.sent[i].1) else {
            return Err(CausalError::Inconsistent("the table lacks the sender's count for the receiver"));
        };
        let new_nodes = meta.nodes.iter().filter(|(id, _)| !self.incarnations.contains_key(id)).count();
        if self.incarnations.len() + new_nodes > self.config.max_members {
            return Err(CausalError::TooManyMembers);
        }
        // Learn the sender's own restart only: what its table says of other
        // nodes is its word, not theirs (a member could otherwise announce
        // another's incarnation as `u64::MAX` and have its messages refused
        // as stale for good). Entries about runs not known here are dropped
        // below; the nodes' own hellos and `Up`s bring their incarnations.
        self.handle_member(from, from_inc);
        if inc_of(self.me) != Some(my_inc) || self.incarnations[&from] != from_inc {
            return Err(CausalError::Stale);
        }
        if own <= self.delivered.get(&from).copied().unwrap_or(0) {
            return Err(CausalError::Inconsistent("the sender's count for the receiver was delivered already"));
        }
        // Keep entries about current runs only.
        let sent: Vec<_> = meta
            .sent
            .into_iter()
            .filter(|&((f, t), _)| inc_of(f) == Some(self.incarnations[&f]) && inc_of(t) == Some(self.incarnations[&t]))
            .collect();
        // The metadata is dropped once the message is taken; a message
        // given back keeps it, to be offered again.
        let cost = crate::reliable::cost(&data) - data.meta.len();
        let mut w = Waiting { from, sent, cost, data };
        if self.deliverable(&w) {
            w.data.meta = Vec::new();
            self.deliver(w);
            self.deliver_waiting();
            return Ok(());
        }
        if self.waiting.len() >= self.config.max_buffered
            || (!self.waiting.is_empty() && self.waiting_bytes + w.cost > self.config.max_buffered_bytes)
        {
            return Err(CausalError::Full(w.data));
        }
        w.data.meta = Vec::new();
        self.waiting_bytes += w.cost;
        self.waiting.push(w);
        Ok(())
    }

    fn deliverable(&self, w: &Waiting) -> bool {
        let got = |k: NodeId| self.delivered.get(&k).copied().unwrap_or(0);
        w.sent
            .iter()
            .filter(|&&((_, t), _)| t == self.me)
            .all(|&((f, _), count)| if f == w.from { got(f) + 1 == count } else { got(f) >= count })
            && w.sent.iter().any(|&((f, t), _)| f == w.from && t == self.me)
    }

    fn deliver(&mut self, w: Waiting) {
        *self.delivered.entry(w.from).or_insert(0) += 1;
        for (pair, count) in w.sent {
            if pair.0 == self.me {
                // This node is the authority on its own sends.
                continue;
            }
            let c = self.sent.entry(pair).or_insert(0);
            *c = (*c).max(count);
        }
        self.ready.push_back((w.from, w.data));
    }

    fn deliver_waiting(&mut self) {
        loop {
            let Some(i) = self.waiting.iter().position(|w| self.deliverable(w)) else { return };
            let w = self.waiting.swap_remove(i);
            self.waiting_bytes -= w.cost;
            self.deliver(w);
        }
    }

    /// The next message in causal order, with its origin node.
    pub fn poll_deliver(&mut self) -> Option<(NodeId, Data)> {
        self.ready.pop_front()
    }

    /// Messages waiting for their predecessors.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether a message that must wait would be taken now.
    pub fn has_room(&self) -> bool {
        self.waiting.len() < self.config.max_buffered
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: u64) -> Data {
        Data {
            seq: 0,
            ack: 0,
            to: 0,
            from: 0,
            corr: n,
            channel: 0,
            hops: 0,
            msg_kind: 0,
            flags: 0,
            meta: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn nodes(ids: &[NodeId]) -> Vec<Causal> {
        ids.iter()
            .map(|&me| {
                let mut c = Causal::new(me, 1, CausalConfig::default());
                for &o in ids {
                    c.handle_member(o, 1);
                }
                c
            })
            .collect()
    }

    #[test]
    fn a_reply_waits_for_what_caused_it() {
        // 1 sends a to 3, then b to 2; 2 delivers b and sends c to 3.
        // c arrives at 3 before a: it must wait for a.
        let mut n = nodes(&[1, 2, 3]);
        let mut a = data(1);
        n[0].prepare(3, &mut a).unwrap();
        let mut b = data(2);
        n[0].prepare(2, &mut b).unwrap();
        n[1].handle_data(1, b).unwrap();
        assert_eq!(n[1].poll_deliver().map(|(f, d)| (f, d.corr)), Some((1, 2)));
        let mut c = data(3);
        n[1].prepare(3, &mut c).unwrap();
        n[2].handle_data(2, c).unwrap();
        assert_eq!(n[2].poll_deliver(), None, "c waits for a");
        assert_eq!(n[2].waiting(), 1);
        n[2].handle_data(1, a).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| n[2].poll_deliver()).map(|(_, d)| d.corr).collect();
        assert_eq!(order, [1, 3]);
    }

    #[test]
    fn a_member_cannot_poison_another_members_incarnation() {
        // Node 3 learned (its own business) that node 2 is incarnation
        // u64::MAX, and sends node 1 a message whose table says so.
        let mut n = nodes(&[1, 2, 3]);
        n[2].handle_member(2, u64::MAX);
        let mut lie = data(1);
        n[2].prepare(2, &mut lie).unwrap();
        let mut to_one = data(2);
        n[2].prepare(1, &mut to_one).unwrap();
        n[0].handle_data(3, to_one).unwrap();
        assert_eq!(n[0].poll_deliver().map(|(f, d)| (f, d.corr)), Some((3, 2)));
        // Node 2's own messages are still delivered at node 1.
        let mut real = data(3);
        n[1].prepare(1, &mut real).unwrap();
        n[0].handle_data(2, real).unwrap();
        assert_eq!(n[0].poll_deliver().map(|(f, d)| (f, d.corr)), Some((2, 3)));
    }

    #[test]
    fn fifo_per_pair_without_fifo_links() {
        let mut n = nodes(&[1, 2]);
        let mut ms: Vec<Data> = (1..=4)
            .map(|i| {
                let mut d = data(i);
                n[0].prepare(2, &mut d).unwrap();
                d
            })
            .collect();
        ms.reverse();
        for m in ms {
            n[1].handle_data(1, m).unwrap();
        }
        let order: Vec<u64> = std::iter::from_fn(|| n[1].poll_deliver()).map(|(_, d)| d.corr).collect();
        assert_eq!(order, [1, 2, 3, 4]);
    }

    #[test]
    fn full_buffer_gives_back_only_messages_that_must_wait() {
        let mut tx = Causal::new(1, 1, CausalConfig::default());
        tx.handle_member(2, 1);
        let mut rx = Causal::new(2, 1, CausalConfig { max_buffered: 1, ..Default::default() });
        rx.handle_member(1, 1);
        let ms: Vec<Data> = (1..=3)
            .map(|i| {
                let mut d = data(i);
                tx.prepare(2, &mut d).unwrap();
                d
            })
            .collect();
        rx.handle_data(1, ms[1].clone()).unwrap();
        let Err(CausalError::Full(back)) = rx.handle_data(1, ms[2].clone()) else { panic!("not full") };
        assert_eq!(back.corr, 3);
        rx.handle_data(1, ms[0].clone()).unwrap();
        rx.handle_data(1, back).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| rx.poll_deliver()).map(|(_, d)| d.corr).collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn a_restart_forgets_the_old_run_and_never_blocks() {
        let mut n = nodes(&[1, 2, 3]);
        // 1 sends x to 3 (lost with 1's restart), then y to 2; 2 delivers y, sends z to 3.
        let mut x = data(1);
        n[0].prepare(3, &mut x).unwrap();
        let mut y = data(2);
        n[0].prepare(2, &mut y).unwrap();
        n[1].handle_data(1, y).unwrap();
        n[1].poll_deliver().unwrap();
        let mut z = data(3);
        n[1].prepare(3, &mut z).unwrap();
        n[2].handle_data(2, z).unwrap();
        assert_eq!(n[2].poll_deliver(), None, "z waits for x");
        // Node 1 restarts (x never arrives); 3 learns of it.
        assert!(n[2].handle_member(1, 2));
        assert_eq!(n[2].poll_deliver().map(|(_, d)| d.corr), Some(3), "z no longer waits");
        // The new run of 1 counts from 1 again.
        let mut one = Causal::new(1, 2, CausalConfig::default());
        one.handle_member(3, 1);
        let mut w = data(4);
        one.prepare(3, &mut w).unwrap();
        n[2].handle_data(1, w).unwrap();
        assert_eq!(n[2].poll_deliver().map(|(_, d)| d.corr), Some(4));
        // x from the old run is refused.
        assert_eq!(n[2].handle_data(1, x), Err(CausalError::Stale));
    }

    #[test]
    fn each_kind_of_bad_meta_gets_its_error() {
        let ok = encode_meta(&Meta { nodes: vec![(1, 1), (2, 1)], sent: vec![((1, 2), 3)] });
        assert!(decode_meta(&ok, 1024).is_ok());
        assert_eq!(decode_meta(&[], 8), Err(MetaError::Version(None)));
        assert_eq!(decode_meta(&[2], 8), Err(MetaError::Version(Some(2))));
        assert_eq!(decode_meta(&[1], 8), Err(MetaError::Truncated("node count")));
        assert!(matches!(decode_meta(&[1, 0xff, 0xff, 0xff, 0x0f], 8), Err(MetaError::TooMany { .. })));
        assert_eq!(decode_meta(&[1, 0x80, 0], 8), Err(MetaError::Varint("node count")));
        assert_eq!(decode_meta(&[1, 2, 2, 0, 1, 1, 0, 1, 0], 8), Err(MetaError::Unsorted("nodes")));
        assert_eq!(decode_meta(&[1, 1, 1, 0, 1, 1, 0, 5, 1], 8), Err(MetaError::Index(5)));
        assert_eq!(decode_meta(&[1, 1, 1, 0, 1, 1, 0, 0, 1], 8), Err(MetaError::SelfPair));
        assert_eq!(decode_meta(&[1, 2, 1, 0, 1, 2, 0, 1, 1, 0, 1, 0], 8), Err(MetaError::ZeroCount));
        let mut t = ok.clone();
        t.push(0);
        assert_eq!(decode_meta(&t, 8), Err(MetaError::Trailing(1)));
        assert_eq!(decode_meta(&vec![1; MAX_META_LEN + 1], 8), Err(MetaError::TooLarge(MAX_META_LEN + 1)));
        assert!(matches!(decode_meta(&ok, 1), Err(MetaError::TooMany { what: "nodes", .. })));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder nor a receiving node,
        /// and whatever decodes re-encodes to the same bytes.
        #[test]
        fn hostile_meta_never_panics(b in proptest::collection::vec(any::<u8>(), 0..120), from in 0..5u16) {
            if let Ok(m) = decode_meta(&b, 1024) {
                prop_assert_eq!(encode_meta(&m), b.clone());
            }
            let mut n = nodes(&[1, 2, 3]);
            let mut d = data(0);
            d.meta = b;
            let _ = n[1].handle_data(from, d);
            while n[1].poll_deliver().is_some() {}
        }

        /// Mutations of valid tables (flipped bytes, cuts, splices) never
        /// panic either.
        #[test]
        fn damaged_meta_never_panics(
            entries in proptest::collection::btree_map((0..6u16, 0..6u16), 1..1_000_000u64, 0..12),
            at in any::<prop::sample::Index>(), x in 1..=255u8, cut in any::<prop::sample::Index>(),
        ) {
            let sent: Vec<_> = entries.into_iter().filter(|((f, t), _)| f != t).collect();
            let mut ids: Vec<u16> = sent.iter().flat_map(|&((f, t), _)| [f, t]).chain([0, 1]).collect();
            ids.sort_unstable();
            ids.dedup();
            let meta = Meta { nodes: ids.iter().map(|&i| (i, 1 + i as u64)).collect(), sent };
            let b = encode_meta(&meta);
            prop_assert_eq!(decode_meta(&b, 1024), Ok(meta));
            let mut bad = b.clone();
            let i = at.index(bad.len());
            bad[i] ^= x;
            let _ = decode_meta(&bad, 1024);
            let _ = decode_meta(&b[..cut.index(b.len())], 1024);
            let mut n = nodes(&[0, 1, 2]);
            let mut d = data(0);
            d.meta = bad;
            let _ = n[1].handle_data(0, d);
        }
    }
}
