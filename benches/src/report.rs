//! `report`: runs the headline scenarios (`spawn`, `density`, `rtt`, `e2e`,
//! `snapshot`, and `migrate` when the bench runs as root) and writes a
//! results folder: `results.md` (every figure of every scenario with its
//! baseline, ratio and target, met or not), `results.json` (the same as
//! `--json`), and SVG plots through `plotters`: snapshot and restore time
//! against memory size beside memcpy and serde, the copy-on-write pause
//! against size, spawn time and memory per idle actor against Erlang, and
//! migration downtime (median and p99, live pre-copy against
//! stop-and-copy, per link and downtime measure) against the migrant's
//! size.
//!
//! `migrate` needs root (its lab links; checked by the effective uid) and
//! the `host` binary beside the bench executable; its full run keeps to
//! its own time budget (`MIGRATE_BUDGET_S`, default 1,800 s), `--quick`
//! takes minutes. Not root: it is skipped, and `results.md` and
//! `results.json` say why. Run and failed: the other scenarios' results
//! and the failure are still written, and the command fails.
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
    // Scenarios not run or not finished, and why (for results.md/.json).
    let mut not_run: Vec<(&str, String)> = Vec::new();
    let mut failed = None;
    if crate::netlab::sys::is_root() {
        progress("report: scenario migrate");
        match crate::migrate::run(opts) {
            Ok(r) => reports.push(r),
            Err(e) => {
                not_run.push(("migrate", format!("FAILED: {e:#}")));
                failed = Some(e);
            }
        }
    } else {
        let why = "skipped: not running as root (effective uid is not 0); `report` runs `migrate` only as root, \
                   which its lab links (network namespaces, TUN devices) need";
        progress(format!("report: migrate {why}"));
        not_run.push(("migrate", why.to_owned()));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let not_run_json: Vec<_> =
        not_run.iter().map(|(scenario, why)| serde_json::json!({ "scenario": scenario, "why": why })).collect();
    let json = serde_json::json!({ "quick": opts.quick, "scenarios": reports, "not_run": not_run_json });
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
    std::fs::write(out.join("results.md"), markdown(&reports, &not_run, &plots, opts.quick))?;
    progress(format!("report: written to {}", out.display()));
    if let Some(e) = failed {
        return Err(e.context(format!("report: migrate failed (the other results are written to {})", out.display())));
    }
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

fn markdown(reports: &[Report], not_run: &[(&str, String)], plots: &[String], quick: bool) -> String {
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
    for (scenario, why) in not_run {
        let _ = writeln!(md, "## {scenario}: not in these results\n\n{why}\n");
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
    // Long titles (the migration downtime charts name a link and a measure) in a
    // smaller font, so they fit the 900 px width.
    let caption = ("sans-serif", (1600.0 / title.chars().count() as f64).clamp(12.0, 20.0));
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    if by_size {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, caption)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (xmin * 0.8..xmax * 1.25).log_scale().with_key_points(log_ticks(xmin * 0.8, xmax * 1.25)),
                (ymin * 0.5..ymax * 2.0).log_scale().with_key_points(log_ticks(ymin * 0.5, ymax * 2.0)),
            )
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("memory (MiB)")
            .y_desc("ms")
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(|x| e(&x))?;
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
            .caption(title, caption)
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

/// Ticks of a log axis from `lo` to `hi`: 1, 2 and 5 times each power of
/// ten in the range, or the powers of ten alone when those would crowd it.
/// (Plotters' own log ticks leave the part below the first power of ten
/// in the range unlabelled, and label that power twice when the range is
/// under a decade, as downtimes often are.)
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if (lo..=hi).contains(&t) {
                ticks.push((t, m == 1.0));
            }
        }
        decade *= 10.0;
    }
    if ticks.len() > 12 {
        ticks.retain(|&(_, power_of_ten)| power_of_ten);
    }
    ticks.into_iter().map(|(t, _)| t).collect()
}

/// A tick label with the decimals its power of ten needs ("0.05", "20").
fn tick(v: f64) -> String {
    let decimals = (-(v.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_every_decade_part_once() {
        // Migrant sizes 10 and 100 MiB, drawn from 8 to 125.
        assert_eq!(log_ticks(8.0, 125.0), [10.0, 20.0, 50.0, 100.0]);
        // Under a decade: 1-2-5 ticks below the first power of ten too.
        assert_eq!(log_ticks(27.0, 2200.0), [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]);
        // Many decades: powers of ten alone.
        assert_eq!(log_ticks(0.05, 20_000.0), [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0]);
        assert_eq!(["0.05", "0.2", "1", "20", "1000"], [0.05, 0.2, 1.0, 20.0, 1000.0].map(tick));
    }

    #[test]
    fn a_downtime_chart_draws_on_size_axes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downtime.svg");
        let mut series = BTreeMap::new();
        series.insert("live pre-copy p50".to_owned(), vec![(10.0, 1.5), (100.0, 3.0)]);
        series.insert("stop-and-copy p50".to_owned(), vec![(10.0, 60.0), (100.0, 600.0)]);
        let title = "migration downtime (ms) against memory (MiB), 1 %/s writes, 20 ms link: node's downtime_ms";
        draw(&path, title, &series, title.contains("against memory")).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Plotters writes a text element's text on a line of its own.
        let text = |t: &str| format!(">\n{t}\n</text>");
        for label in ["10", "20", "50", "100", "1000", "memory (MiB)", "stop-and-copy p50"] {
            assert!(svg.contains(&text(label)), "no {label} in the SVG");
        }
        assert_eq!(svg.matches(&text("100")).count(), 2, "100 labelled once on each axis");
    }
}
