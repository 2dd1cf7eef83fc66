//! `report`: runs the headline scenarios (`spawn`, `density`, `rtt`, `e2e`,
//! `snapshot`) and writes a results folder: `results.md` (every figure of
//! every scenario with its baseline, ratio and target, met or not),
//! `results.json` (the same as `--json`), and SVG plots through
//! `plotters`: snapshot and restore time against memory size beside memcpy
//! and serde, the copy-on-write pause against size, and spawn time and
//! memory per idle actor against Erlang. (Migration downtime is the
//! `migrate` scenario's; it needs root for its lab links and is not run
//! here.)
#![forbid(unsafe_code)]

use crate::harness::{Opts, Report, num, progress};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Runs the scenarios and writes the folder `out`.
pub(crate) fn run(opts: Opts, out: &Path) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    for (name, f) in [
        ("spawn", crate::spawn::run as fn(Opts) -> Result<Report>),
        ("density", crate::density::run),
        ("rtt", crate::rtt::run),
        ("e2e", crate::e2e::run),
        ("snapshot", crate::snapshot::run),
    ] {
        progress(format!("report: scenario {name}"));
        reports.push(f(opts)?);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::json!({ "quick": opts.quick, "scenarios": reports });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    let mut plots: Vec<String> = Vec::new();
    for r in &reports {
        for (chart, series) in &r.plots {
            let file = format!("{}.svg", slug(chart));
            let by_size = chart.contains("against memory");
            draw(&out.join(&file), chart, series, by_size).with_context(|| format!("drawing {file}"))?;
            plots.push(format!("![{chart}]({file})"));
        }
    }
    std::fs::write(out.join("results.md"), markdown(&reports, &plots, opts.quick))?;
    progress(format!("report: written to {}", out.display()));
    Ok(reports)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn markdown(reports: &[Report], plots: &[String], quick: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results{}\n", if quick { " (--quick: small sizes)" } else { "" });
    let _ = writeln!(md, "`cargo run --profile perf -p benches -- report{}`; baselines measured in the same run.\n", if quick { " --quick" } else { "" });
    for r in reports {
        let _ = writeln!(md, "## {}: {}\n", r.scenario, r.title);
        if !r.params.is_empty() {
            let _ = writeln!(md, "{}\n", r.params.join(", "));
        }
        let _ = writeln!(md, "| figure | value | baseline | ratio | target |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for f in &r.figures {
            let baseline = match (&f.baseline, f.baseline_value) {
                (Some(b), Some(v)) => format!("{b}: {} {}", num(v), f.unit),
                _ => String::new(),
            };
            let ratio = f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
            let target = f.target.as_ref().map(|t| format!("{} ({})", t.goal, if t.met { "met" } else { "**missed**" })).unwrap_or_default();
            let _ = writeln!(md, "| {} | {} {} | {baseline} | {ratio} | {target} |", f.name.trim(), num(f.value), f.unit);
        }
        for n in &r.notes {
            let _ = writeln!(md, "\n- {n}");
        }
        let _ = writeln!(md);
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "## Plots\n");
        for p in plots {
            let _ = writeln!(md, "{p}\n");
        }
    }
    md
}

/// One chart: series of (x, y) points; by memory size (log-log lines), or
/// by runtime (one point per series at its x).
fn draw(path: &Path, title: &str, series: &BTreeMap<String, Vec<(f64, f64)>>, by_size: bool) -> Result<()> {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let all: Vec<(f64, f64)> = series.values().flatten().copied().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
    let (xmin, xmax) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (ymin, ymax) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    if all.is_empty() {
        return Ok(());
    }
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    if by_size {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), (ymin * 0.5..ymax * 2.0).log_scale())
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc("memory (MiB)").y_desc("ms").draw().map_err(|x| e(&x))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            let mut pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled()))).map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    } else {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax + 1.0, 0.0..ymax * 1.2)
            .map_err(|x| e(&x))?;
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc(title).draw().map_err(|x| e(&x))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(pts.iter().map(|&(x, y)| Rectangle::new([(x - 0.3, 0.0), (x + 0.3, y)], c.filled())))
                .map_err(|x| e(&x))?
                .label(format!("{name}: {}", pts.first().map_or(String::new(), |p| num(p.1))))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
