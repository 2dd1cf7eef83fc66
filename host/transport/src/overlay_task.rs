//! The overlay task: feeds the [`Overlay`] what the transport hears
//! (seeds, control links, control messages, broadcasts), carries out its
//! actions (dial, send, close, up, down, deliver), and keeps the
//! directory's routes current from its membership and next hops. Uses
//! `state`, `lane` (control messages go on the control lane) and `config`.

use crate::config::CONTROL;
use crate::state::{Inner, LaneKey, Member, NodeEvent, OverlayInput, Outgoing};
use reactor_net::NodeInfo;
use reactor_net::overlay::{Action, Overlay};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// Runs the overlay: feeds it what the transport hears, carries out its
/// actions, and keeps the directory's routes current.
pub(crate) async fn overlay_task(
    inner: Arc<Inner>,
    mut overlay: Box<dyn Overlay>,
    mut rx: mpsc::UnboundedReceiver<OverlayInput>,
    mut peers: mpsc::Receiver<OverlayInput>,
) {
    loop {
        let now = Instant::now();
        while let Some(action) = overlay.poll_action() {
            carry_out(&inner, action);
        }
        refresh_routes(&inner, overlay.as_ref());
        let deadline = overlay.poll_timeout();
        // This node's own events first; a peer's messages wait in their
        // bounded queue.
        let d = deadline.map(|d| tokio::time::Instant::from_std(d.max(now)));
        let input = tokio::select! {
            biased;
            i = rx.recv() => i,
            Some(i) = peers.recv() => Some(i),
            _ = async { tokio::time::sleep_until(d.expect("guarded")).await }, if d.is_some() => {
                overlay.handle_timeout(Instant::now());
                continue;
            }
        };
        let Some(input) = input else { return };
        let now = Instant::now();
        match input {
            OverlayInput::Seed(info) => {
                learn(&inner, &info);
                overlay.handle_seed(now, info);
            }
            OverlayInput::Connected(info) => overlay.handle_connected(now, info),
            OverlayInput::Disconnected(id) => overlay.handle_disconnected(now, id),
            OverlayInput::Message(from, payload) => {
                if let Err(e) = overlay.handle_message(now, from, &payload) {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("overlay message from node {from} refused: {e}; closing its connections");
                    inner.close_peer(from);
                }
            }
            OverlayInput::Broadcast(payload) => overlay.broadcast(now, payload),
        }
    }
}

/// Records a node's identity and address as heard (from the overlay, maybe
/// from a third party): a new node is added; a known one that is not up
/// gets the address, but its incarnation changes only when it comes up
/// ([`Action::Up`], after a connection it authenticated).
fn learn(inner: &Inner, info: &NodeInfo) {
    if info.id == inner.config.me.id || info.addr.is_empty() {
        return;
    }
    let mut dir = inner.directory.write().unwrap();
    let e = dir.entry(info.id).or_insert_with(|| Member { info: info.clone(), up: false, via: None });
    if !e.up && info.incarnation >= e.info.incarnation {
        e.info.addr = info.addr.clone();
    }
}

fn carry_out(inner: &Arc<Inner>, action: Action) {
    match action {
        Action::Connect(info) => {
            learn(inner, &info);
            let _ = crate::lane::lane_sender(inner, LaneKey { peer: info.id, channel: CONTROL, lane: 0 });
        }
        Action::Disconnect(id) => inner.close_peer(id),
        Action::Send { to, payload } => {
            if payload.len() > reactor_net::frame::MAX_CONTROL_LEN {
                tracing::warn!("an overlay message of {} bytes for node {to} exceeds a control frame; dropped", payload.len());
                return;
            }
            let key = LaneKey { peer: to, channel: CONTROL, lane: 0 };
            if crate::lane::lane_sender(inner, key).try_send(Outgoing::Control(payload)).is_err() {
                tracing::warn!("control lane to node {to} is backed up; an overlay message was dropped");
            }
        }
        Action::Up(info) => {
            if info.id != inner.config.me.id && !info.addr.is_empty() {
                let mut dir = inner.directory.write().unwrap();
                let e = dir.entry(info.id).or_insert_with(|| Member { info: info.clone(), up: false, via: None });
                e.info = info.clone();
            }
            for c in inner.causal.iter().flatten() {
                c.lock().unwrap().handle_member(info.id, info.incarnation);
            }
            if let Some(m) = inner.directory.write().unwrap().get_mut(&info.id) {
                m.up = true;
            }
            tracing::info!("node {} ({}) at {} is up (incarnation {})", info.id, info.name, info.addr, info.incarnation);
            inner.inbound.event(NodeEvent::Up(info));
        }
        Action::Down(id) => {
            if let Some(m) = inner.directory.write().unwrap().get_mut(&id) {
                m.up = false;
                m.via = None;
            }
            tracing::warn!("node {id} is down");
            inner.inbound.event(NodeEvent::Down(id));
        }
        Action::Deliver { origin, payload } => inner.inbound.event(NodeEvent::Broadcast { origin, payload }),
    }
}

fn refresh_routes(inner: &Inner, overlay: &dyn Overlay) {
    inner.bad_signatures.store(overlay.bad_signatures(), Ordering::Relaxed);
    let mut dir = inner.directory.write().unwrap();
    for m in overlay.members() {
        if m.id != inner.config.me.id && !m.addr.is_empty() {
            dir.entry(m.id).or_insert_with(|| Member { info: m.clone(), up: true, via: None });
        }
    }
    let me = inner.config.me.id;
    for (id, m) in dir.iter_mut() {
        if *id != me {
            // A live node the overlay has no route to this instant (a
            // connection being replaced) keeps its last route: a lane to a
            // gone relay fails over on its own, and `Down` clears it.
            m.via = if m.up { overlay.next_hop(*id).or(m.via) } else { None };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LaneHandle;
    use crate::state::testing::{config, inner, node};
    use reactor_net::overlay::mesh::{FullMesh, MeshConfig};
    use tokio::sync::Notify;

    /// A full-mesh overlay with default settings.
    fn mesh(me: reactor_net::NodeInfo, seed: u64) -> Box<dyn Overlay> {
        Box::new(FullMesh::new(me, MeshConfig::default(), seed))
    }

    /// Stands in for the control lane to `peer`.
    fn tap(inner: &Inner, peer: u16) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(16);
        let key = LaneKey { peer, channel: CONTROL, lane: 0 };
        inner.lanes.lock().unwrap().insert(key, LaneHandle { tx, close: Arc::new(Notify::new()), stats: Arc::default() });
        rx
    }

    fn member(inner: &Inner, id: u16) -> Option<Member> {
        inner.directory.read().unwrap().get(&id).cloned()
    }

    #[tokio::test]
    async fn up_down_and_broadcasts_reach_the_directory_and_the_node() {
        let (inner, recorder, _rx) = inner(config(1));
        let two = node(2, "127.0.0.1:2");
        carry_out(&inner, Action::Up(two.clone()));
        assert_eq!(member(&inner, 2), Some(Member { info: two.clone(), up: true, via: None }));
        inner.directory.write().unwrap().get_mut(&2).unwrap().via = Some(2);
        carry_out(&inner, Action::Deliver { origin: 2, payload: vec![7] });
        carry_out(&inner, Action::Down(2));
        assert_eq!(member(&inner, 2), Some(Member { info: two.clone(), up: false, via: None }));
        assert_eq!(
            *recorder.events.lock().unwrap(),
            [NodeEvent::Up(two), NodeEvent::Broadcast { origin: 2, payload: vec![7] }, NodeEvent::Down(2)]
        );
    }

    #[tokio::test]
    async fn overlay_messages_go_on_the_control_lane() {
        let (inner, _, _rx) = inner(config(1));
        let mut lane = tap(&inner, 2);
        carry_out(&inner, Action::Send { to: 2, payload: vec![1, 2, 3] });
        assert!(matches!(lane.try_recv(), Ok(Outgoing::Control(p)) if p == [1, 2, 3]));
    }

    #[tokio::test]
    async fn learning_keeps_the_newest_incarnation_and_ignores_this_node() {
        let (inner, _, _rx) = inner(config(1));
        let mut two = node(2, "127.0.0.1:2");
        two.incarnation = 5;
        learn(&inner, &two);
        let mut old = node(2, "127.0.0.1:9");
        old.incarnation = 4;
        learn(&inner, &old);
        assert_eq!(member(&inner, 2).unwrap().info, two);
        // Hearsay of a newer run gives the address to dial, not the
        // incarnation: that comes with the node's own `Up`.
        let mut new = node(2, "127.0.0.1:3");
        new.incarnation = 6;
        learn(&inner, &new);
        assert_eq!(member(&inner, 2).unwrap().info.addr, new.addr);
        assert_eq!(member(&inner, 2).unwrap().info.incarnation, 5);
        assert!(!member(&inner, 2).unwrap().up, "learning is not believing alive");
        carry_out(&inner, Action::Up(new.clone()));
        assert_eq!(member(&inner, 2).unwrap().info, new);
        let mut poison = node(2, "127.0.0.1:66");
        poison.incarnation = u64::MAX;
        learn(&inner, &poison);
        assert_eq!(member(&inner, 2).unwrap().info, new, "a node that is up keeps what it proved");
        learn(&inner, &node(1, "10.0.0.1:1"));
        learn(&inner, &node(3, ""));
        assert_eq!(member(&inner, 1).unwrap().info.addr, "127.0.0.1:1");
        assert_eq!(member(&inner, 3), None);
    }

    #[tokio::test]
    async fn routes_follow_the_overlay_and_outlive_a_reconnect_but_not_a_down() {
        let (inner, _, _rx) = inner(config(1));
        let _lane = tap(&inner, 2);
        let mut overlay = mesh(node(1, "127.0.0.1:1"), 1);
        let drain = |overlay: &mut Box<dyn Overlay>| {
            while let Some(a) = overlay.poll_action() {
                carry_out(&inner, a);
            }
            refresh_routes(&inner, overlay.as_ref());
        };
        let now = Instant::now();
        overlay.handle_connected(now, node(2, "127.0.0.1:2"));
        drain(&mut overlay);
        assert_eq!(member(&inner, 2).map(|m| (m.up, m.via)), Some((true, Some(2))));
        // The connection is being replaced: the last route is kept.
        overlay.handle_disconnected(now, 2);
        drain(&mut overlay);
        assert_eq!(overlay.next_hop(2), None);
        assert_eq!(member(&inner, 2).map(|m| (m.up, m.via)), Some((true, Some(2))));
        // Down: no route.
        carry_out(&inner, Action::Down(2));
        refresh_routes(&inner, overlay.as_ref());
        assert_eq!(member(&inner, 2).map(|m| (m.up, m.via)), Some((false, None)));
    }

    #[tokio::test]
    async fn the_task_asks_for_a_control_connection_to_a_seed() {
        let (inner, _, _rx) = inner(config(1));
        let (tx, rx) = mpsc::unbounded_channel();
        let (_peers_tx, peers) = mpsc::channel(8);
        let overlay = mesh(node(1, "127.0.0.1:1"), 1);
        let mut lane = tap(&inner, 2);
        let task = tokio::spawn(overlay_task(inner.clone(), overlay, rx, peers));
        tx.send(OverlayInput::Seed(node(2, "127.0.0.1:2"))).unwrap();
        // The mesh joins through the seed: a `Join` on the control lane.
        let first = lane.recv().await;
        assert!(matches!(first, Some(Outgoing::Control(_))));
        assert_eq!(member(&inner, 2).unwrap().info.addr, "127.0.0.1:2");
        drop(tx);
        task.await.unwrap();
    }
}
