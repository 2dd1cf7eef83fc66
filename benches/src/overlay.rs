//! Cost of each overlay as the cluster grows, from the deterministic
//! simulator (`reactor_runtime::net::sim`): the real protocol state machines, a fake
//! clock and simulated links, so 1,024 nodes fit in one process.
//!
//! For full mesh, client–server and HyParView at 32, 128 and 1,024 nodes:
//! open connections per node (mean, max), control messages and bytes per
//! node per second in steady state, and the messages that carry one
//! broadcast to every node. The baseline of each figure is the full mesh
//! at the same size (the design whose cost grows with the cluster).
#![forbid(unsafe_code)]

use crate::harness::{Figure, Opts, Report, progress};
use anyhow::{Result, ensure};
use reactor_net::OverlayKind;
use reactor_net::sim::{OverheadReport, overhead_report};

pub(crate) fn run(opts: Opts) -> Result<Report> {
    let sizes: &[usize] = if opts.quick { &[32, 128] } else { &[32, 128, 1024] };
    let mut report = Report::new("overlay", "overlay cost per node (simulated cluster)");
    report.param("sizes", format!("{sizes:?}"));
    report.param("seed", 1);
    for &n in sizes {
        let mut got: Vec<OverheadReport> = Vec::new();
        for kind in [OverlayKind::FullMesh, OverlayKind::ClientServer, OverlayKind::HyParView] {
            progress(&format!("simulating {kind} with {n} nodes"));
            let t = std::time::Instant::now();
            let r = overhead_report(kind, n, 1);
            ensure!(
                r.broadcast_reached == n - 1,
                "{kind} at {n}: a broadcast reached {} of {} nodes",
                r.broadcast_reached,
                n - 1
            );
            report.note(format!("{r} (simulated in {:.1?})", t.elapsed()));
            got.push(r);
        }
        let mesh = got[0].clone();
        for r in &got {
            let name = |what: &str| format!("{what}, {}, {n} nodes", r.kind);
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
    }
    Ok(report)
}
