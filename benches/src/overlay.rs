//! Cost of each overlay as the cluster grows, from the deterministic
//! simulator (`reactor_net::sim`): the real protocol state machines, a fake
//! clock and simulated links, so 1,024 nodes fit in one process.
//!
//! For full mesh, client–server and HyParView at 32, 128 and 1,024 nodes:
//! open connections per node (mean, max), control messages and bytes per
//! node per second in steady state, and the messages that carry one
//! broadcast to every node. The baseline of each figure is the full mesh
//! at the same size (the design whose cost grows with the cluster).
//!
//! HyParView is ours (`reactor_net::overlay::hyparview`, hand-rolled); the
//! same run measures the crate we did not use, iroh-gossip's HyParView +
//! Plumtree behind the adapter we replaced ([`crate::overlay_iroh`]), with
//! the same settings, the same announcements on top and the same simulated
//! cluster (seed, latency, joins), and reports ours against it:
//! connections, steady messages and bytes per node per second, messages to
//! broadcast once (also against the minimum, one per receiving node) and
//! the time until every membership is complete.
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, progress};
use crate::overlay_iroh::{HyParView as IrohHyParView, HyParViewConfig as IrohConfig};
use anyhow::{Result, ensure};
use reactor_net::OverlayKind;
use reactor_net::overlay::Overlay;
use reactor_net::sim::{OverheadReport, overhead_report, overhead_report_with};

/// The label of the iroh-gossip baseline in figure names.
const IROH: &str = "hyparview on iroh-gossip";

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let sizes: &[usize] = if opts.quick { &[32, 128] } else { &[32, 128, 1024] };
    let mut report = Report::new("overlay", "overlay cost per node (simulated cluster)");
    report.param("sizes", format!("{sizes:?}"));
    report.param("seed", 1);
    report.param("hyparview baseline", "iroh-gossip 0.101 (proto), same settings");
    for &n in sizes {
        let mut got: Vec<(String, OverheadReport)> = Vec::new();
        for kind in [OverlayKind::FullMesh, OverlayKind::ClientServer, OverlayKind::HyParView] {
            progress(format!("simulating {kind} with {n} nodes"));
            let t = std::time::Instant::now();
            let r = overhead_report(kind, n, 1);
            check(&r, &kind.to_string(), n)?;
            report.note(format!("{r} (simulated in {:.1?})", t.elapsed()));
            got.push((kind.to_string(), r));
        }
        progress(format!("simulating {IROH} with {n} nodes"));
        let t = std::time::Instant::now();
        let factory = Box::new(|info, seed| -> Box<dyn Overlay> { Box::new(IrohHyParView::new(info, IrohConfig::default(), seed)) });
        let iroh = overhead_report_with(OverlayKind::HyParView, n, 1, factory);
        check(&iroh, IROH, n)?;
        report.note(format!("{iroh} (iroh-gossip baseline, simulated in {:.1?})", t.elapsed()));
        got.push((IROH.to_string(), iroh.clone()));

        let mesh = got[0].1.clone();
        for (label, r) in &got {
            let name = |what: &str| format!("{what}, {label}, {n} nodes");
            let vs = |what: &str| format!("{what}, mesh");
            report.push(Figure::new(name("connections per node"), r.conns_mean, "conns").baseline(vs("connections"), mesh.conns_mean));
            report.push(Figure::new(name("max connections of a node"), r.conns_max as f64, "conns").baseline(vs("max"), mesh.conns_max as f64));
            report.push(
                Figure::new(name("steady control messages per node"), r.msgs_per_node_sec, "msg/s")
                    .baseline(vs("messages"), mesh.msgs_per_node_sec),
            );
            report.push(
                Figure::new(name("steady control bytes per node"), r.bytes_per_node_sec, "B/s")
                    .baseline(vs("bytes"), mesh.bytes_per_node_sec),
            );
            report.push(
                Figure::new(name("messages to broadcast once"), r.broadcast_msgs as f64, "msgs")
                    .baseline(vs("broadcast"), mesh.broadcast_msgs as f64),
            );
            report.push(Figure::new(name("membership converged after"), r.converged_after.as_secs_f64(), "s (simulated)"));
        }

        // Ours against the crate we did not use.
        let ours = &got[2].1;
        let name = |what: &str| format!("{what}, hyparview (ours) vs iroh-gossip, {n} nodes");
        let vs = |what: &str| format!("{what}, {IROH}");
        report.push(
            Figure::new(name("connections per node"), ours.conns_mean, "conns")
                .baseline(vs("connections"), iroh.conns_mean)
                .below(iroh.conns_mean + 0.5),
        );
        report.push(
            Figure::new(name("steady control messages per node"), ours.msgs_per_node_sec, "msg/s")
                .baseline(vs("messages"), iroh.msgs_per_node_sec)
                .below(iroh.msgs_per_node_sec),
        );
        report.push(
            Figure::new(name("steady control bytes per node"), ours.bytes_per_node_sec, "B/s")
                .baseline(vs("bytes"), iroh.bytes_per_node_sec)
                .below(iroh.bytes_per_node_sec),
        );
        report.push(
            Figure::new(name("messages to broadcast once"), ours.broadcast_msgs as f64, "msgs")
                .baseline(vs("broadcast"), iroh.broadcast_msgs as f64)
                .below(iroh.broadcast_msgs as f64 + 1.0),
        );
        report.push(
            Figure::new(name("bytes to broadcast once"), ours.broadcast_bytes as f64, "B")
                .baseline(vs("broadcast bytes"), iroh.broadcast_bytes as f64),
        );
        report.push(
            Figure::new(name("membership converged after"), ours.converged_after.as_secs_f64(), "s (simulated)")
                .baseline(vs("converged"), iroh.converged_after.as_secs_f64()),
        );
        // The physical limit of a broadcast: each other node receives it once.
        for (label, r) in [("hyparview (ours)", ours), (IROH, &iroh)] {
            report.push(
                Figure::new(format!("messages to broadcast once, {label}, {n} nodes, vs the minimum"), r.broadcast_msgs as f64, "msgs")
                    .baseline("one message per receiving node", (n - 1) as f64),
            );
        }
    }
    Ok(report)
}

/// The correctness check before the figures count: one broadcast reached
/// every other node.
fn check(r: &OverheadReport, label: &str, n: usize) -> Result<()> {
    ensure!(r.broadcast_reached == n - 1, "{label} at {n}: a broadcast reached {} of {} nodes", r.broadcast_reached, n - 1);
    Ok(())
}
