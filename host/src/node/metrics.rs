//! The node's figures in the Prometheus text format (`host node --metrics
//! ADDR` serves them at `/metrics`; see `http`), encoded by
//! `prometheus-client`. Read at each scrape from what the node keeps
//! anyway: the shards' counters and a walk of their inboxes, the
//! transport's lanes and members, checkpoints, snapshots, restores,
//! migrations, journals, standbys and the supervision tree. Counters only
//! grow (per process: a restart starts them again); rates are the scraper's
//! (`rate(reactor_messages_delivered_total[1m])`).
use super::Node;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a sample.
type Labels = Vec<(String, String)>;

/// A registry filled with values read once.
struct Figures {
    registry: Registry,
}

impl Figures {
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    fn counter_f(&mut self, name: &str, help: &str, value: f64) {
        let c: Counter<f64, AtomicU64> = Counter::default();
        c.inc_by(value.max(0.0));
        self.registry.register(name, help, c);
    }

    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let g: Gauge = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    fn gauge_f(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    fn counters(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) {
        let f = Family::<Labels, Counter>::default();
        for (l, v) in samples {
            f.get_or_create(l).inc_by(*v);
        }
        self.registry.register(name, help, f);
    }

    fn gauges(&mut self, name: &str, help: &str, samples: &[(Labels, i64)]) {
        let f = Family::<Labels, Gauge>::default();
        for (l, v) in samples {
            f.get_or_create(l).set(*v);
        }
        self.registry.register(name, help, f);
    }

    /// Every number of a serializable counters struct as a gauge
    /// `<prefix>_<field>` (the standby's and the supervisor's: their
    /// fields mix totals and sizes).
    fn fields(&mut self, prefix: &str, what: &str, value: &serde_json::Value) {
        let Some(map) = value.as_object() else { return };
        for (k, v) in map {
            if let Some(x) = v.as_f64() {
                self.gauge_f(&format!("{prefix}_{k}"), &format!("{what}: `{k}` (see `host status`)"), x);
            }
        }
    }
}

fn label(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

/// The node's metrics, in the Prometheus text format.
pub fn render(node: &Node) -> String {
    let mut f = Figures { registry: Registry::with_prefix("reactor") };
    let info = node.info();
    f.gauges(
        "node_info",
        "This node: its id, name, cluster and incarnation (always 1)",
        &[(
            vec![
                label("node", info.id),
                label("name", &info.name),
                label("cluster", &node.config.cluster),
                label("incarnation", info.incarnation),
            ],
            1,
        )],
    );
    let stats = node.runtime.stats();
    f.gauges(
        "reactors",
        "Reactors on this node, by state",
        &[(vec![label("state", "live")], stats.live as i64), (vec![label("state", "failed")], stats.failed as i64)],
    );
    f.counter("reactors_spawned", "Reactors spawned on this node (from outside or by reactors)", stats.spawned);
    let load = node.runtime.load_summary();
    f.gauge("inbox_messages", "Messages queued in the inboxes of this node's reactors", load.queued as i64);
    f.gauge("inbox_messages_max", "Messages queued in the fullest inbox", load.max_queued as i64);
    f.gauge("memory_bytes", "Linear memory of this node's live reactors", load.memory as i64);
    f.counter("messages_delivered", "Messages delivered into reactors (messages in)", stats.delivered);
    f.counter("calls_into_reactors", "Calls into reactors that delivered them (batches)", stats.batches);
    f.counters(
        "messages_sent",
        "Messages reactors sent, by where they went (messages out)",
        &[
            (vec![label("to", "other_shard")], stats.cross_shard),
            (vec![label("to", "other_node")], stats.remote),
            (vec![label("to", "forwarded_after_move")], stats.forwarded),
        ],
    );
    f.counters(
        "dead_letters",
        "Messages that reached no reactor, by why",
        &[
            (vec![label("why", "no_such_reactor")], stats.dead_letters),
            (vec![label("why", "its_reactor_failed")], stats.dropped),
            (vec![label("why", "reply_to_no_request")], stats.unmatched_replies),
            (vec![label("why", "undeliverable_from_network")], node.transport.dead_letters()),
        ],
    );
    f.counter("error_replies", "Replies that said the request failed (reply_error, undecodable, over the limit)", stats.error_replies);
    f.counters(
        "failed_outputs",
        "Sends and replies of reactors that did not go out (the reactor was told)",
        &[(vec![label("what", "send")], stats.failed_sends), (vec![label("what", "reply")], stats.failed_replies)],
    );
    f.counters(
        "requests_taken_again",
        "Requests from outside a reactor had taken already (sent again): answered with the first reply, or dropped while it was to come",
        &[(vec![label("outcome", "answered")], stats.answered_again), (vec![label("outcome", "dropped")], stats.dropped_again)],
    );

    // Snapshots, restores, checkpoints, migrations.
    let cp = node.checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats();
    f.counters("checkpoints", "Node checkpoints, by outcome", &[(vec![label("outcome", "ok")], cp.taken), (vec![label("outcome", "failed")], cp.failed)]);
    f.counter_f("checkpoint_seconds", "Seconds the node's checkpoints took, in all", cp.seconds);
    f.gauge_f("checkpoint_last_seconds", "The last checkpoint's duration", cp.last_seconds);
    f.gauge("checkpoint_last_bytes", "The last checkpoint's file size", cp.last_bytes as i64);
    let a = *node.activity.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f.counters(
        "snapshots",
        "Snapshots asked of this node, by outcome",
        &[(vec![label("outcome", "ok")], a.snapshots), (vec![label("outcome", "failed")], a.snapshots_failed)],
    );
    f.counter_f("snapshot_seconds", "Seconds those snapshots took, in all", a.snapshot_seconds);
    f.counters(
        "restores",
        "Restores asked of this node, by outcome",
        &[(vec![label("outcome", "ok")], a.restores), (vec![label("outcome", "failed")], a.restores_failed)],
    );
    f.counter("restored_reactors", "Reactors those restores brought back", a.restored_reactors);
    f.counter_f("restore_seconds", "Seconds those restores took, in all", a.restore_seconds);
    let m = node.hub.counters();
    f.counters(
        "migrations",
        "Live migrations, by direction and outcome",
        &[
            (vec![label("direction", "out"), label("outcome", "ok")], m.moved_out),
            (vec![label("direction", "out"), label("outcome", "failed")], m.failed_out),
            (vec![label("direction", "in"), label("outcome", "ok")], m.moved_in),
            (vec![label("direction", "in"), label("outcome", "refused")], m.refused_in),
        ],
    );
    f.counter_f("migration_seconds", "Seconds the moves from this node took, in all", m.seconds_out);
    f.counter_f("migration_downtime_seconds", "Seconds the reactors moved from here were stopped, in all", m.downtime_seconds);
    f.gauge_f("migration_last_downtime_seconds", "The last move's downtime", m.last_downtime_seconds);

    // The network: members, lanes.
    let members = node.transport.members();
    let up = members.iter().filter(|m| m.up).count() as i64;
    f.gauges(
        "members",
        "Members of the overlay this node knows, by state",
        &[(vec![label("state", "up")], up), (vec![label("state", "down")], members.len() as i64 - up)],
    );
    let peers: Vec<(Labels, i64)> = members.iter().map(|m| (vec![label("peer", m.info.id)], i64::from(m.up))).collect();
    f.gauges("member_up", "1 if the member is up, by node id", &peers);
    let lanes = node.transport.lanes();
    let key = |l: &reactor_transport::LaneStatus| vec![label("peer", l.peer), label("channel", &l.channel), label("lane", l.lane)];
    f.gauges("lane_up", "1 if the lane's connection is up", &lanes.iter().map(|l| (key(l), i64::from(l.up))).collect::<Vec<_>>());
    f.counters("lane_bytes", "Bytes written on the lane", &lanes.iter().map(|l| (key(l), l.bytes)).collect::<Vec<_>>());
    f.counters("lane_frames", "Frames written on the lane", &lanes.iter().map(|l| (key(l), l.frames)).collect::<Vec<_>>());
    f.counters("lane_connects", "Connections the lane made", &lanes.iter().map(|l| (key(l), l.connects)).collect::<Vec<_>>());
    f.counter("refused_connections", "Connections refused (no credentials, bad handshake, over the limit)", node.transport.refused());
    f.counter("bad_signatures", "Frames refused for a bad signature", node.transport.bad_signatures());
    f.counter("fence_timeouts", "Migration fences not answered in time", node.transport.fence_timeouts());

    // Journals, failover, supervision.
    let j = node.journals.stats().figures();
    f.counter("journal_records", "Journal records written", j.records);
    f.counter("journal_bytes", "Journal bytes written", j.bytes_written);
    f.counter("journal_syncs", "Journal fsyncs (group commits)", j.syncs);
    f.counter_f("journal_sync_seconds", "Seconds spent in journal fsyncs, in all", j.sync_nanos as f64 / 1e9);
    f.gauge_f("journal_sync_max_seconds", "The longest journal fsync", j.max_sync_nanos as f64 / 1e9);
    f.counter("journal_errors", "Journal writes that failed", j.errors);
    f.fields("standby", "Standby failover", &serde_json::to_value(node.standby.counters()).unwrap_or_default());
    f.fields("supervision", "Supervision", &serde_json::to_value(node.supervisor.counters()).unwrap_or_default());

    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = encode(&mut out, &f.registry);
    out
}
