//! Where a message goes: the channel by its size ([`Inner::pick_channel`]),
//! the lane by its partition key ([`Inner::lane_key`]), and the next hop
//! from the directory ([`Inner::try_route`]: delivered here or queued on a
//! lane, causal channels stamping as they queue). Messages taken off a
//! connection come back through here ([`Inner::accept_data`],
//! [`Inner::deliver_data`]) to be delivered or forwarded. Uses `state`,
//! `lane` and `config`.

use crate::config::MAX_HOPS;
use crate::state::{Inner, LaneKey, Outgoing, partition_hash};
use reactor_net::NodeId;
use reactor_net::frame::Data;
use reactor_types::{Address, Envelope, SendError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel for a message: the first application channel whose size
/// rule matches, else the first application channel.
pub(crate) fn pick_channel(inner: &Inner, len: usize) -> u16 {
    inner.channels
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, c)| c.min_bytes.is_some_and(|m| len >= m))
        .or_else(|| inner.channels.iter().enumerate().skip(1).find(|(_, c)| c.min_bytes.is_none()))
        .map_or(1, |(i, _)| i as u16)
}

/// The lane of `peer` a message on `channel` goes on.
pub(crate) fn lane_key(inner: &Inner, peer: NodeId, channel: u16, key: u64) -> LaneKey {
    if inner.config.multiplex {
        return LaneKey { peer, channel: 0, lane: 0 };
    }
    let lanes = inner.channels[channel as usize].lanes.max(1) as u64;
    LaneKey { peer, channel, lane: (partition_hash(key) % lanes) as u16 }
}

/// Routes a message towards the node where `to` lives: delivered here (an
/// address of this node, or one the node claims), held (its path is being
/// switched, see `locate`), or queued on the lane of the next hop, picked
/// by `affinity` (the partition key; 0: the destination). Gives the
/// message back with the status when it cannot go now.
pub(crate) fn try_route(inner: &Arc<Inner>, to: Address, env: Envelope, hops: u8, affinity: u64) -> Result<(), (SendError, Envelope)> {
    let me = inner.config.me.id;
    if to.node() == me || inner.inbound.claims(to) {
        // Sent here (hops 0) to a reactor that just arrived: held while
        // this node's earlier messages to it are on the old path.
        if hops == 0 && inner.locations.count.load(Ordering::Acquire) != 0 {
            return match locate_or_hold(inner, to, env, hops, affinity, me, false) {
                Located::Node(_, env) => deliver_here(inner, to, env),
                Located::Held => Ok(()),
                Located::Refused(e, env) => Err((e, env)),
            };
        }
        return deliver_here(inner, to, env);
    }
    match locate_or_hold(inner, to, env, hops, affinity, to.node(), false) {
        Located::Node(dest, env) if dest == me => deliver_here(inner, to, env),
        Located::Node(dest, env) => send_to_node(inner, dest, to, env, hops, affinity),
        Located::Held => Ok(()),
        Located::Refused(e, env) => Err((e, env)),
    }
}

pub(crate) fn deliver_here(inner: &Arc<Inner>, to: Address, env: Envelope) -> Result<(), (SendError, Envelope)> {
    match inner.inbound.deliver(to, env) {
        Ok(()) => Ok(()),
        Err((SendError::InboxFull(_), env)) => Err((SendError::InboxFull(to), env)),
        Err((_, env)) => Err((SendError::NoSuchReactor(to), env)),
    }
}

/// Where a message goes, after the location table.
pub(crate) enum Located {
    /// To this node.
    Node(NodeId, Envelope),
    /// Held until its reactor's path is switched.
    Held,
    /// Not now.
    Refused(SendError, Envelope),
}

/// The node `to` lives on by the location table, else `fallback`; or the
/// message is held while its path switches (`forced`: even past the lane's
/// capacity, for a message accepted once already).
pub(crate) fn locate_or_hold(
    inner: &Inner,
    to: Address,
    env: Envelope,
    hops: u8,
    affinity: u64,
    fallback: NodeId,
    forced: bool,
) -> Located {
    if inner.locations.count.load(Ordering::Acquire) == 0 {
        return Located::Node(fallback, env);
    }
    let mut map = inner.locations.map.lock().unwrap();
    let Some(loc) = map.get_mut(&to) else { return Located::Node(fallback, env) };
    match &mut loc.switch {
        None => Located::Node(loc.node, env),
        Some(sw) if !forced && sw.held.len() >= inner.config.lane_capacity => Located::Refused(SendError::InboxFull(to), env),
        Some(sw) => {
            sw.held.push_back((env, hops, affinity));
            Located::Held
        }
    }
}

/// Queues a message for `to` on the lane of the next hop towards node
/// `dest`. A message not from this node's own addresses (forwarded, or
/// from a reactor that moved here) leaves as relayed, so its receiver
/// accepts a sender of another node.
pub(crate) fn send_to_node(
    inner: &Arc<Inner>,
    dest: NodeId,
    to: Address,
    env: Envelope,
    hops: u8,
    affinity: u64,
) -> Result<(), (SendError, Envelope)> {
    if hops >= MAX_HOPS {
        tracing::warn!("dropped a message for {to} after {hops} hops (a routing loop?)");
        return Err((SendError::NoSuchReactor(to), env));
    }
    let Some(next) = inner.directory.read().unwrap().get(&dest).filter(|m| m.up).and_then(|m| m.via) else {
        return Err((SendError::NoSuchReactor(to), env));
    };
    let channel = pick_channel(inner, env.payload.len());
    let key = lane_key(inner, next, channel, if affinity == 0 { to.0 } else { affinity });
    let hops = if hops == 0 && env.from.node() != inner.config.me.id { 1 } else { hops };
    queue_data(inner, key, channel, to, env, hops)
}

/// Queues a message of `channel` on the lane `key` (the multiplexed
/// connection's when multiplexed; stamped first if its channel is causal
/// and it starts here).
pub(crate) fn queue_data(
    inner: &Arc<Inner>,
    key: LaneKey,
    channel: u16,
    to: Address,
    env: Envelope,
    hops: u8,
) -> Result<(), (SendError, Envelope)> {
    let dest = to.node();
    let mut data = data_frame(to, env, channel, hops + 1);
    let back = |d: Data| Envelope { kind: d.msg_kind, flags: d.flags, from: Address(d.from), corr: d.corr, payload: d.payload };
    let tx = crate::lane::lane_sender(inner, key);
    // A causal channel stamps a message when it is queued: stamping and
    // queuing happen under its lock, so stamps follow queue order.
    let causal = if hops == 0 { inner.causal.get(channel as usize).and_then(Option::as_ref) } else { None };
    if let Some(c) = causal {
        {
            let mut g = c.lock().unwrap();
            let permit = match tx.try_reserve() {
                Ok(p) => p,
                Err(mpsc::error::TrySendError::Full(())) => return Err((SendError::InboxFull(to), back(data))),
                Err(mpsc::error::TrySendError::Closed(())) => return Err((SendError::NoSuchReactor(to), back(data))),
            };
            if let Err(e) = g.prepare(dest, &mut data) {
                tracing::warn!("cannot stamp a causal message for node {dest}: {e}");
                return Err((SendError::NoSuchReactor(to), back(data)));
            }
            permit.send(Outgoing::Data(data));
            return Ok(());
        }
    }
    match tx.try_send(Outgoing::Data(data)) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(Outgoing::Data(d))) => Err((SendError::InboxFull(to), back(d))),
        Err(mpsc::error::TrySendError::Closed(Outgoing::Data(d))) => Err((SendError::NoSuchReactor(to), back(d))),
        Err(_) => unreachable!("only data was sent"),
    }
}

/// The data frame carrying `env` to `to` on `channel`, `hops` hops in
/// (sequence numbers are the lane's to set).
pub(crate) fn data_frame(to: Address, env: Envelope, channel: u16, hops: u8) -> Data {
    Data {
        seq: 0,
        ack: 0,
        to: to.0,
        from: env.from.0,
        corr: env.corr,
        channel,
        hops,
        msg_kind: env.kind,
        flags: env.flags,
        meta: Vec::new(),
        payload: env.payload,
    }
}

/// Forwards a message accepted once already for `to`, a reactor that
/// moved on from here: towards the table's location, else `hint`. Waits
/// (up to [`FORWARD_PATIENCE`]) for room on a full lane rather than refuse.
pub(crate) fn forward(inner: &Arc<Inner>, to: Address, env: Envelope, hint: NodeId) -> Result<(), SendError> {
    let me = inner.config.me.id;
    let (dest, mut env) = match locate_or_hold(inner, to, env, 0, 0, hint, true) {
        Located::Node(dest, env) => (if dest == me { hint } else { dest }, env),
        Located::Held => return Ok(()),
        Located::Refused(e, _) => return Err(e),
    };
    if dest == me {
        return Err(SendError::NoSuchReactor(to));
    }
    let deadline = std::time::Instant::now() + FORWARD_PATIENCE;
    let mut wait = Duration::from_micros(20);
    loop {
        match send_to_node(inner, dest, to, env, 0, 0) {
            Ok(()) => return Ok(()),
            Err((SendError::InboxFull(_), back)) if std::time::Instant::now() < deadline && !inner.stopping.load(Ordering::Relaxed) => {
                env = back;
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// How long [`forward`] waits for room on a full lane.
pub(crate) const FORWARD_PATIENCE: Duration = Duration::from_secs(5);

/// A message taken off a stream (in order, once): through causal order
/// if its channel has it, then delivered or forwarded.
pub(crate) async fn accept_data(inner: &Arc<Inner>, d: Data) {
    let Some(causal) = inner.causal.get(d.channel as usize).and_then(Option::as_ref) else {
        return deliver_data(inner, d).await;
    };
    let origin = Address(d.from).node();
    let mut pending = Some(d);
    loop {
        let mut ready = Vec::new();
        {
            let mut c = causal.lock().unwrap();
            if let Some(d) = pending.take() {
                match c.handle_data(origin, d) {
                    Ok(()) => {}
                    Err(reactor_net::causal::CausalError::Full(d)) => pending = Some(d),
                    Err(e) => {
                        inner.dead_letters.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("a causal message from node {origin} was dropped: {e}");
                    }
                }
            }
            while let Some((_, d)) = c.poll_deliver() {
                ready.push(d);
            }
        }
        for d in ready {
            deliver_data(inner, d).await;
        }
        if pending.is_none() {
            return;
        }
        // The causal buffer is full: other streams' deliveries free it.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Delivers or forwards one message, waiting while the destination is
/// backed up (which stops reading this connection: backpressure).
async fn deliver_data(inner: &Arc<Inner>, d: Data) {
    let to = Address(d.to);
    let mut env = Envelope { kind: d.msg_kind, flags: d.flags, from: Address(d.from), corr: d.corr, payload: d.payload };
    let mut wait = Duration::from_micros(50);
    loop {
        match try_route(inner, to, env, d.hops, 0) {
            Ok(()) => return,
            Err((SendError::InboxFull(_), back)) if !inner.stopping.load(Ordering::Relaxed) => {
                env = back;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(5));
            }
            Err(_) => {
                inner.dead_letters.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CONTROL, ChannelSpec};
    use crate::state::testing::{Recorder, config, envelope, inner, node};
    use crate::state::{LaneHandle, Member};
    use std::collections::BTreeSet;
    use tokio::sync::Notify;

    fn with_channels(channels: &[&str]) -> (Arc<Inner>, Arc<Recorder>, crate::state::testing::OverlayRx) {
        let mut c = config(1);
        c.channels = channels.iter().map(|s| s.parse().unwrap()).collect();
        inner(c)
    }

    /// Node `id` known, up, reached through `via`.
    fn known(inner: &Inner, id: NodeId, via: NodeId) {
        inner.directory.write().unwrap().insert(id, Member { info: node(id, "127.0.0.1:1"), up: true, via: Some(via) });
    }

    /// Stands in for the lane task of `key`: what the router queues on it.
    fn tap(inner: &Inner, key: LaneKey, capacity: usize) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(capacity);
        inner.lanes.lock().unwrap().insert(key, LaneHandle { tx, close: Arc::new(Notify::new()), stats: Arc::default() });
        rx
    }

    #[tokio::test]
    async fn the_first_channel_whose_size_rule_matches_wins() {
        let (inner, _, _rx) = with_channels(&["small", "bulk:min-bytes=4096", "huge:min-bytes=1000000"]);
        assert_eq!(pick_channel(&inner, 0), 1);
        assert_eq!(pick_channel(&inner, 4095), 1);
        assert_eq!(pick_channel(&inner, 4096), 2);
        // `bulk` comes first and matches too.
        assert_eq!(pick_channel(&inner, 2_000_000), 2);
        let (inner, _, _rx) = with_channels(&["huge:min-bytes=1000000", "bulk:min-bytes=4096", "small"]);
        assert_eq!(pick_channel(&inner, 2_000_000), 1);
        assert_eq!(pick_channel(&inner, 5000), 2);
        assert_eq!(pick_channel(&inner, 10), 3, "no rule matches: the first channel without a rule");
        let (inner, _, _rx) = with_channels(&["bulk:min-bytes=4096"]);
        assert_eq!(pick_channel(&inner, 10), 1, "no channel without a rule: the first channel");
        // Never the control channel.
        let (inner, _, _rx) = with_channels(&[]);
        assert_ne!(pick_channel(&inner, 10), CONTROL);
    }

    #[tokio::test]
    async fn a_key_always_picks_the_same_lane_and_keys_spread_over_all_lanes() {
        let (inner, _, _rx) = with_channels(&["wide:lanes=8", "one"]);
        // Destinations on one node (serials differ) and small integers
        // (partition keys a guest might choose). Not keys that differ only
        // in their top bits (the same serial on many nodes): the hash keeps
        // bits 38..40 of `key * K` as the lane of 8, so those share a lane.
        let patterns: [Vec<u64>; 3] = [
            (1..=64).map(|s| Address::new(2, 0, s).0).collect(),
            (1..=64).map(|s| Address::new(2, 3, s << 20).0).collect(),
            (1..=64).collect(),
        ];
        for keys in patterns {
            let mut lanes = BTreeSet::new();
            for &k in &keys {
                let lk = lane_key(&inner, 3, 1, k);
                assert_eq!((lk.peer, lk.channel), (3, 1));
                assert!(lk.lane < 8);
                assert_eq!(lane_key(&inner, 3, 1, k), lk, "same key, same lane");
                lanes.insert(lk.lane);
            }
            assert_eq!(lanes.len(), 8, "keys {:x?}… used lanes {lanes:?}", &keys[..3]);
        }
        // A channel of one lane.
        assert!((0..100).all(|k| lane_key(&inner, 3, 2, k).lane == 0));
    }

    #[tokio::test]
    async fn multiplexed_everything_shares_one_lane() {
        let mut c = config(1);
        c.multiplex = true;
        c.channels = vec![ChannelSpec::new("wide", 8)];
        let (inner, _, _rx) = inner(c);
        for k in 0..100 {
            assert_eq!(lane_key(&inner, 3, 1, k), LaneKey { peer: 3, channel: 0, lane: 0 });
        }
    }

    #[tokio::test]
    async fn a_message_for_this_node_goes_to_the_inbound() {
        let (inner, recorder, _rx) = inner(config(1));
        let to = Address::new(1, 0, 7);
        try_route(&inner, to, envelope(2, 10), 0, 0).unwrap();
        assert_eq!(*recorder.delivered.lock().unwrap(), [(to, envelope(2, 10))]);
        // A full inbox gives the message back, blaming the destination.
        recorder.full.store(true, Ordering::Relaxed);
        let (e, back) = try_route(&inner, to, envelope(2, 11), 0, 0).unwrap_err();
        assert_eq!((e, back), (SendError::InboxFull(to), envelope(2, 11)));
    }

    #[tokio::test]
    async fn a_message_without_a_route_is_given_back() {
        let (inner, _, _rx) = inner(config(1));
        let to = Address::new(5, 0, 7);
        let (e, back) = try_route(&inner, to, envelope(1, 10), 0, 0).unwrap_err();
        assert_eq!((e, back), (SendError::NoSuchReactor(to), envelope(1, 10)));
        // Known but down: no route either.
        known(&inner, 5, 5);
        inner.directory.write().unwrap().get_mut(&5).unwrap().up = false;
        assert!(matches!(try_route(&inner, to, envelope(1, 10), 0, 0), Err((SendError::NoSuchReactor(_), _))));
        // Up, but the message has gone round too often.
        inner.directory.write().unwrap().get_mut(&5).unwrap().up = true;
        let r = try_route(&inner, to, envelope(1, 10), MAX_HOPS, 0);
        assert!(matches!(r, Err((SendError::NoSuchReactor(_), _))));
        assert!(inner.lanes.lock().unwrap().is_empty(), "nothing was queued");
    }

    #[tokio::test]
    async fn a_message_is_queued_on_the_lane_of_the_next_hop() {
        let (inner, _, _rx) = with_channels(&["small:lanes=4", "bulk:min-bytes=100:lanes=2"]);
        known(&inner, 5, 3);
        let to = Address::new(5, 0, 7);
        // By the destination, or by the affinity given.
        for (affinity, len, channel) in [(0, 10, 1), (0, 200, 2), (99, 10, 1)] {
            let key = lane_key(&inner, 3, channel, if affinity == 0 { to.0 } else { affinity });
            let mut rx = tap(&inner, key, 4);
            try_route(&inner, to, envelope(1, len), 2, affinity).unwrap();
            let Ok(Outgoing::Data(d)) = rx.try_recv() else { panic!("nothing on lane {key:?}") };
            assert_eq!((d.to, d.from, d.channel, d.hops, d.seq), (to.0, Address::new(1, 0, 1).0, channel, 3, 0));
            assert_eq!(d.payload.len(), len);
            inner.lanes.lock().unwrap().clear();
        }
        // A full lane gives the message back.
        let key = lane_key(&inner, 3, 1, to.0);
        let _rx = tap(&inner, key, 1);
        try_route(&inner, to, envelope(1, 10), 0, 0).unwrap();
        let (e, back) = try_route(&inner, to, envelope(1, 11), 0, 0).unwrap_err();
        assert_eq!((e, back), (SendError::InboxFull(to), envelope(1, 11)));
    }

    fn data_for(to: Address, hops: u8) -> Data {
        data_frame(to, envelope(2, 10), 1, hops)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_inbox_holds_the_message_until_it_fits() {
        let (inner, recorder, _rx) = inner(config(1));
        recorder.full.store(true, Ordering::Relaxed);
        let to = Address::new(1, 0, 7);
        let task = tokio::spawn({
            let inner = inner.clone();
            async move { accept_data(&inner, data_for(to, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished());
        assert!(recorder.delivered.lock().unwrap().is_empty());
        recorder.full.store(false, Ordering::Relaxed);
        task.await.unwrap();
        assert_eq!(*recorder.delivered.lock().unwrap(), [(to, envelope(2, 10))]);
        assert_eq!(inner.dead_letters.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_undeliverable_message_off_the_wire_is_a_dead_letter() {
        let (inner, _, _rx) = inner(config(1));
        accept_data(&inner, data_for(Address::new(5, 0, 7), 1)).await;
        known(&inner, 5, 5);
        accept_data(&inner, data_for(Address::new(5, 0, 7), MAX_HOPS)).await;
        assert_eq!(inner.dead_letters.load(Ordering::Relaxed), 2);
    }
}
