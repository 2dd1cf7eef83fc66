//! Where reactors that moved live, and switching paths in order.
//!
//! The location table (`Inner::locations`) maps an address to the node it
//! lives on when that is not the node its address names. A node learns an
//! entry from a `Moved` notice (sent by the node a reactor left), or is told
//! by its own node (`set`: the source at the switch, the target when it
//! takes a reactor in, entries kept across a restart).
//!
//! Learning a new location does not switch at once: messages already sent
//! down the old path could be overtaken by later ones sent on the new one.
//! So the node sends a fence down every lane of every application channel
//! towards the old location (each fence on the lane it fences, sized for
//! its channel), holds what it sends the reactor meanwhile, and switches
//! when the node where the reactor lives has answered every fence: each
//! travelled behind the messages sent on its lane before it. If the node
//! the fences went to goes down (looked at every [`FENCE_PATIENCE`]), or
//! after [`FENCE_LIMIT`], the held messages are released anyway; that is
//! counted. Uses `route`.

use crate::config::CONTROL;
use crate::route::{data_frame, deliver_here, pick_channel, queue_data, send_to_node};
use crate::state::{Inner, LaneKey, Location, Outgoing, Switch};
use reactor_net::NodeId;
use reactor_net::locate::{FLUSH_LEN, Fence, LocationMsg};
use reactor_types::{Address, Envelope, KIND_FENCE, KIND_NODE, SendError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a switch looks whether the node its fences went to is down.
pub(crate) const FENCE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a switch waits for its fences while that node is up.
pub(crate) const FENCE_LIMIT: Duration = Duration::from_secs(60);

/// A location message from `from` that arrived for this node.
pub(crate) fn heard(inner: &Arc<Inner>, msg: LocationMsg, from: Address) {
    match msg {
        LocationMsg::Moved { address, node, epoch } => learn(inner, Address(address), node, epoch),
        LocationMsg::FenceDone { address, token } => answered(inner, Address(address), token),
        LocationMsg::Flush { token, .. } => {
            // Everything its lane carried before it is taken in (each
            // message delivered or queued in order as it came off the
            // stream): say so.
            let me = inner.config.me.id;
            if !from.is_host() || from.node() == me || from.node() == 0 {
                return;
            }
            let payload = LocationMsg::Flushed { token }.encode();
            let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(me), corr: 0, payload };
            send_patiently(inner, from.node(), env);
        }
        LocationMsg::Flushed { token } => flush_answered(inner, token, from.node()),
    }
}

/// Sends a node message to node `node`'s host, waiting for room on a full
/// lane (off this thread) rather than dropping it.
fn send_patiently(inner: &Arc<Inner>, node: NodeId, env: Envelope) {
    let to = Address::host_of(node);
    match send_to_node(inner, node, to, env, 0, 0) {
        Ok(()) => {}
        Err((SendError::InboxFull(_), env)) => {
            let inner2 = inner.clone();
            inner.handle.spawn(async move {
                let mut env = Some(env);
                for _ in 0..2000 {
                    match send_to_node(&inner2, node, to, env.take().expect("kept"), 0, 0) {
                        Ok(()) => return,
                        Err((SendError::InboxFull(_), back)) => env = Some(back),
                        Err(_) => return,
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        Err((e, _)) => tracing::debug!("a node message to node {node} could not go: {e}"),
    }
}

/// Sends a flush down every lane of every application channel to every
/// node believed up: behind everything queued for them so far. Returns
/// its token for [`flush_wait`].
pub(crate) fn flush(inner: &Arc<Inner>) -> u64 {
    let me = inner.config.me.id;
    let token = rand_token();
    let members: Vec<NodeId> = inner.directory.read().unwrap().values().filter(|m| m.up && m.info.id != me).map(|m| m.info.id).collect();
    // Counted before any can be answered.
    let mut plan = Vec::new();
    let mut waiting = std::collections::HashMap::new();
    for m in members {
        let lanes = fence_lanes(inner, m, FLUSH_LEN);
        if !lanes.is_empty() {
            waiting.insert(m, lanes.len());
            plan.push((m, lanes));
        }
    }
    inner.locations.flushes.lock().unwrap().insert(token, waiting);
    for (m, lanes) in plan {
        for (key, channel, len) in lanes {
            let payload = LocationMsg::Flush { token, len: len as u32 }.encode();
            let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(me), corr: 0, payload };
            if !queue_behind(inner, key, channel, Address::host_of(m), env) {
                // Never answered: not waited for.
                flush_answered(inner, token, m);
            }
        }
    }
    token
}

/// A flush of this node's was answered by `node`.
fn flush_answered(inner: &Inner, token: u64, node: NodeId) {
    let mut flushes = inner.locations.flushes.lock().unwrap();
    if let Some(w) = flushes.get_mut(&token)
        && let Some(n) = w.get_mut(&node)
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            w.remove(&node);
        }
        inner.locations.flushed.notify_all();
    }
}

/// Waits (blocking, up to `limit`) until every node the flush `token` went
/// to has answered it or is down; false if the limit passed first.
pub(crate) fn flush_wait(inner: &Inner, token: u64, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut flushes = inner.locations.flushes.lock().unwrap();
    let answered = loop {
        let Some(w) = flushes.get(&token) else { return false };
        if w.is_empty() {
            break true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            break false;
        }
        // A node that went down answers nothing: not waited for.
        let down: Vec<NodeId> = {
            let dir = inner.directory.read().unwrap();
            w.keys().copied().filter(|n| !dir.get(n).is_some_and(|m| m.up)).collect()
        };
        if !down.is_empty() {
            let w = flushes.get_mut(&token).expect("checked");
            for n in down {
                w.remove(&n);
            }
            continue;
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        flushes = inner.locations.flushed.wait_timeout(flushes, wait).unwrap().0;
    };
    flushes.remove(&token);
    answered
}

/// Records that `address` lives on `node` (the `epoch`-th move), as its own
/// node knows first hand: no fences. A switch in progress goes on, towards
/// `node`.
pub(crate) fn set(inner: &Arc<Inner>, address: Address, node: NodeId, epoch: u64) {
    let mut map = inner.locations.map.lock().unwrap();
    match map.get_mut(&address) {
        Some(loc) => {
            loc.node = node;
            loc.epoch = loc.epoch.max(epoch);
        }
        None => {
            map.insert(address, Location { node, epoch, switch: None });
            inner.locations.count.fetch_add(1, Ordering::Release);
        }
    }
}

/// Where `address` lives as far as this node knows: the table's entry,
/// else the node its address names.
pub(crate) fn location(inner: &Inner, address: Address) -> (NodeId, u64) {
    let entry = if inner.locations.count.load(Ordering::Acquire) == 0 {
        None
    } else {
        inner.locations.map.lock().unwrap().get(&address).map(|l| (l.node, l.epoch))
    };
    // Every move sets the entry at both ends: it is what this node knows
    // best. Without one, the address's own node.
    entry.unwrap_or((address.node(), 0))
}

/// Tells every node believed up (but this one and `node`) that `address`
/// lives on `node` now.
pub(crate) fn announce(inner: &Arc<Inner>, address: Address, node: NodeId, epoch: u64) -> usize {
    let me = inner.config.me.id;
    let members: Vec<NodeId> =
        inner.directory.read().unwrap().values().filter(|m| m.up && m.info.id != me && m.info.id != node).map(|m| m.info.id).collect();
    let payload = LocationMsg::Moved { address: address.0, node, epoch }.encode();
    let mut told = 0;
    for m in members {
        let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(me), corr: 0, payload: payload.clone() };
        match send_to_node(inner, m, Address::host_of(m), env, 0, 0) {
            Ok(()) => told += 1,
            Err((e, _)) => tracing::warn!(%address, node = m, "could not tell node {m} where {address} went: {e}"),
        }
    }
    told
}

/// `address` just arrived here from `prev`: fences go down this node's
/// lanes to `prev`, and what this node sends it is held (see `route`)
/// until they come back through `prev` behind this node's earlier
/// messages. Returns how many fences went (0: nothing to wait for).
pub(crate) fn arrive(inner: &Arc<Inner>, address: Address, prev: NodeId, epoch: u64) -> usize {
    let me = inner.config.me.id;
    let token = rand_token();
    let mut map = inner.locations.map.lock().unwrap();
    let fences = if prev == me { 0 } else { send_fences(inner, prev, address, epoch, token) };
    let switch = (fences > 0).then(|| Switch { token, waiting: fences, via: prev, held: Default::default() });
    let pending = switch.is_some();
    if map.insert(address, Location { node: me, epoch, switch }).is_none() {
        inner.locations.count.fetch_add(1, Ordering::Release);
    }
    drop(map);
    if pending {
        time_out(inner, address, token);
    } else {
        inner.inbound.switched(address);
    }
    fences
}

/// Releases a switch whose fences were not all answered in time: once the
/// node they went to is down, or after [`FENCE_LIMIT`] (a slow link behind
/// a bulk transfer can hold them for seconds; releasing early would break
/// the order they keep).
fn time_out(inner: &Arc<Inner>, address: Address, token: u64) {
    let inner = inner.clone();
    inner.handle.clone().spawn(async move {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(FENCE_PATIENCE).await;
            let via = inner.locations.map.lock().unwrap().get(&address).and_then(|l| l.switch.as_ref()).filter(|s| s.token == token).map(|s| s.via);
            let Some(via) = via else { return };
            let up = inner.directory.read().unwrap().get(&via).is_some_and(|m| m.up);
            if !up || started.elapsed() >= FENCE_LIMIT {
                break;
            }
        }
        let mut map = inner.locations.map.lock().unwrap();
        if let Some(loc) = map.get_mut(&address)
            && loc.switch.as_ref().is_some_and(|s| s.token == token && s.waiting > 0)
        {
            inner.fence_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%address, "fences towards the old location of {address} were not all answered (that node is down, or {FENCE_LIMIT:?} passed); switching anyway");
            if let Some(s) = loc.switch.as_mut() {
                s.waiting = 0;
            }
            release(&inner, address, loc);
        }
    });
}

/// A fence reached `address` where it lives (here): answers its sender.
pub(crate) fn fence_reached(inner: &Arc<Inner>, address: Address, fence: Envelope) {
    let sender = fence.from;
    if !sender.is_host() || sender.node() == 0 {
        return;
    }
    let me = inner.config.me.id;
    let done = LocationMsg::FenceDone { address: address.0, token: fence.corr }.encode();
    let env = Envelope { kind: KIND_NODE, flags: 0, from: Address::host_of(me), corr: 0, payload: done };
    if sender.node() == me {
        answered(inner, address, fence.corr);
        return;
    }
    if let Err((e, _)) = send_to_node(inner, sender.node(), Address::host_of(sender.node()), env, 0, 0) {
        tracing::warn!(%address, "could not answer a fence from node {}: {e}", sender.node());
    }
}

/// Learns that `address` lives on `node`: a newer epoch than known starts a
/// switch of paths (fences down the old one).
fn learn(inner: &Arc<Inner>, address: Address, node: NodeId, epoch: u64) {
    let me = inner.config.me.id;
    let mut map = inner.locations.map.lock().unwrap();
    let prev = match map.get_mut(&address) {
        Some(loc) if loc.epoch >= epoch => return,
        Some(loc) if loc.switch.is_some() => {
            // Still fencing the path before: switch to the newest at the end.
            loc.node = node;
            loc.epoch = epoch;
            return;
        }
        Some(loc) => loc.node,
        None => address.node(),
    };
    let token = rand_token();
    let fences = if prev == me || prev == node || node == me { 0 } else { send_fences(inner, prev, address, epoch, token) };
    let switch = (fences > 0).then(|| Switch { token, waiting: fences, via: prev, held: Default::default() });
    let pending = switch.is_some();
    if map.insert(address, Location { node, epoch, switch }).is_none() {
        inner.locations.count.fetch_add(1, Ordering::Release);
    }
    drop(map);
    tracing::debug!(%address, prev, node, epoch, fences, "learnt a new location");
    if pending {
        time_out(inner, address, token);
    }
}

/// A fence of this node's was answered.
fn answered(inner: &Arc<Inner>, address: Address, token: u64) {
    let mut map = inner.locations.map.lock().unwrap();
    let Some(loc) = map.get_mut(&address) else { return };
    let Some(sw) = loc.switch.as_mut().filter(|s| s.token == token && s.waiting > 0) else { return };
    sw.waiting -= 1;
    if sw.waiting == 0 {
        release(inner, address, loc);
    }
}

/// Sends what was held for `address` towards its new location, in order,
/// under the table's lock (so nothing sent later overtakes it). A full
/// lane keeps the rest held and tries again shortly.
fn release(inner: &Arc<Inner>, address: Address, loc: &mut Location) {
    let me = inner.config.me.id;
    let Some(mut sw) = loc.switch.take() else { return };
    while let Some((env, hops, affinity)) = sw.held.pop_front() {
        let r = if loc.node == me { deliver_here(inner, address, env) } else { send_to_node(inner, loc.node, address, env, hops, affinity) };
        match r {
            Ok(()) => {}
            Err((SendError::InboxFull(_), env)) => {
                sw.held.push_front((env, hops, affinity));
                let token = sw.token;
                loc.switch = Some(sw);
                let inner = inner.clone();
                inner.handle.clone().spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let mut map = inner.locations.map.lock().unwrap();
                    if let Some(loc) = map.get_mut(&address)
                        && loc.switch.as_ref().is_some_and(|s| s.token == token && s.waiting == 0)
                    {
                        release(&inner, address, loc);
                    }
                });
                return;
            }
            Err((e, _)) => {
                inner.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%address, "a message held while switching paths could not go: {e}");
            }
        }
    }
    inner.inbound.switched(address);
}

/// Sends a fence for `address` down every lane of every application
/// channel towards `prev` (one, multiplexed); how many went.
fn send_fences(inner: &Arc<Inner>, prev: NodeId, address: Address, epoch: u64, token: u64) -> usize {
    let me = inner.config.me.id;
    let mut sent = 0;
    for (key, channel, len) in fence_lanes(inner, prev, 8) {
        let env = Envelope { kind: KIND_FENCE, flags: 0, from: Address::host_of(me), corr: token, payload: Fence { epoch }.encode(len) };
        if queue_behind(inner, key, channel, address, env) {
            sent += 1;
        }
    }
    sent
}

/// Every lane of every application channel towards node `node` (one,
/// multiplexed), with the length (at least `least`) of a fence the size
/// rules put on its channel; none if `node` is not up.
fn fence_lanes(inner: &Inner, node: NodeId, least: usize) -> Vec<(LaneKey, u16, usize)> {
    let Some(next) = inner.directory.read().unwrap().get(&node).filter(|m| m.up).and_then(|m| m.via) else {
        return Vec::new();
    };
    let mut lanes = Vec::new();
    if inner.config.multiplex {
        // One connection carries every channel, in order.
        let c = pick_channel(inner, least);
        lanes.push((LaneKey { peer: next, channel: CONTROL, lane: 0 }, c, least));
    } else {
        for (c, spec) in inner.channels.iter().enumerate().skip(1) {
            let Some(len) = fence_len(inner, c as u16, least) else { continue };
            for lane in 0..spec.lanes.max(1) {
                lanes.push((LaneKey { peer: next, channel: c as u16, lane }, c as u16, len));
            }
        }
    }
    lanes
}

/// Queues `env` for `to` on lane `key` behind what is queued there, now or
/// (a full lane) as soon as there is room; false if it cannot go.
fn queue_behind(inner: &Arc<Inner>, key: LaneKey, channel: u16, to: Address, env: Envelope) -> bool {
    match queue_data(inner, key, channel, to, env, 0) {
        Ok(()) => true,
        Err((SendError::InboxFull(_), env)) => {
            let tx = crate::lane::lane_sender(inner, key);
            let data = data_frame(to, env, channel, 1);
            inner.handle.spawn(async move {
                let _ = tx.send(Outgoing::Data(data)).await;
            });
            true
        }
        Err((e, _)) => {
            tracing::debug!(%to, "a fence or flush towards node {} could not go: {e}", key.peer);
            false
        }
    }
}

/// The length of a fence that the size rules put on `channel`, if any
/// length does.
fn fence_len(inner: &Inner, channel: u16, least: usize) -> Option<usize> {
    let spec = inner.channels.get(channel as usize)?;
    let len = spec.min_bytes.unwrap_or(least).max(least);
    (len <= reactor_net::frame::MAX_PAYLOAD_LEN && pick_channel(inner, len) == channel).then_some(len)
}

fn rand_token() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the system's random source");
    u64::from_le_bytes(b)
}

/// Decodes a location message's payload (hostile bytes).
pub(crate) fn decode(env: &Envelope) -> Option<LocationMsg> {
    match LocationMsg::decode(&env.payload) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(from = %env.from, "dropped a location message: {e}");
            None
        }
    }
}
