//! What every scenario shares: the figures it reports (printed as a table or
//! as JSON), repeated timing with a median, and the process figures read from
//! `/proc` (resident memory, mappings, free memory).

use std::collections::BTreeMap;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How big a run is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opts {
    /// Small sizes: the whole run takes seconds (smoke test).
    pub(crate) quick: bool,
}

/// A stated goal a figure is checked against.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    /// The goal, e.g. `< 10 µs`.
    pub(crate) goal: String,
    /// Whether the figure meets it.
    pub(crate) met: bool,
}

/// One measured figure and what it is compared with.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figure {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) unit: String,
    /// What the baseline is.
    pub(crate) baseline: Option<String>,
    pub(crate) baseline_value: Option<f64>,
    /// `value / baseline_value`.
    pub(crate) ratio: Option<f64>,
    pub(crate) target: Option<Target>,
}

impl Figure {
    pub(crate) fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: None,
            baseline_value: None,
            ratio: None,
            target: None,
        }
    }

    /// Compares with `value` of the baseline `name` (same unit).
    pub(crate) fn baseline(mut self, name: impl Into<String>, value: f64) -> Self {
        self.baseline = Some(name.into());
        self.baseline_value = Some(value);
        self.ratio = (value != 0.0 && value.is_finite()).then(|| self.value / value);
        self
    }

    /// Shows the baseline but no ratio (for counts where the baseline is
    /// near zero and a ratio would say nothing).
    pub(crate) fn no_ratio(mut self) -> Self {
        self.ratio = None;
        self
    }

    /// Checks the figure against an upper bound.
    pub(crate) fn below(mut self, bound: f64) -> Self {
        self.target = Some(Target { goal: format!("< {} {}", num(bound), self.unit), met: self.value < bound });
        self
    }

    /// Checks the figure against an inclusive upper bound.
    pub(crate) fn at_most(mut self, bound: f64) -> Self {
        self.target = Some(Target { goal: format!("<= {} {}", num(bound), self.unit), met: self.value <= bound });
        self
    }

    /// Checks the ratio to the baseline against an inclusive upper bound
    /// (missed when there is no ratio).
    pub(crate) fn ratio_at_most(mut self, bound: f64) -> Self {
        let what = self.baseline.as_deref().unwrap_or("baseline");
        self.target = Some(Target {
            goal: format!("<= {} x {what}", num(bound)),
            met: self.ratio.is_some_and(|r| r <= bound),
        });
        self
    }

    /// Checks the figure against a lower bound.
    pub(crate) fn at_least(mut self, bound: f64) -> Self {
        self.target = Some(Target { goal: format!(">= {} {}", num(bound), self.unit), met: self.value >= bound });
        self
    }
}

/// What one scenario found.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) title: &'static str,
    /// Sizes and settings of the run, as `name=value`.
    pub(crate) params: Vec<String>,
    pub(crate) figures: Vec<Figure>,
    /// Observations that do not fit a figure (limits hit, caveats).
    pub(crate) notes: Vec<String>,
    /// Points for the `report` scenario's plots: chart → series → (x, y).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) plots: BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, title: &'static str) -> Self {
        Self { scenario, title, params: Vec::new(), figures: Vec::new(), notes: Vec::new(), plots: BTreeMap::new() }
    }

    /// A point `(x, y)` of `series` in the plot `chart` (see `report`).
    pub(crate) fn point(&mut self, chart: &str, series: &str, x: f64, y: f64) {
        self.plots.entry(chart.to_owned()).or_default().entry(series.to_owned()).or_default().push((x, y));
    }

    pub(crate) fn param(&mut self, name: &str, value: impl std::fmt::Display) {
        self.params.push(format!("{name}={value}"));
    }

    pub(crate) fn push(&mut self, f: Figure) {
        self.figures.push(f);
    }

    pub(crate) fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// The report as a text table.
    pub(crate) fn table(&self) -> String {
        let header = ["name", "value", "unit", "baseline", "baseline value", "ratio", "target"];
        let rows: Vec<[String; 7]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.name.clone(),
                    num(f.value),
                    f.unit.clone(),
                    f.baseline.clone().unwrap_or_else(|| "-".into()),
                    f.baseline_value.map(num).unwrap_or_else(|| "-".into()),
                    f.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
                    f.target
                        .as_ref()
                        .map(|t| format!("{} {}", t.goal, if t.met { "(met)" } else { "(MISSED)" }))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut width = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "== {}: {} ==", self.scenario, self.title);
        if !self.params.is_empty() {
            let _ = writeln!(out, "   {}", self.params.join("  "));
        }
        let line = |out: &mut String, cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                // Numbers right-aligned, text left-aligned.
                let pad = w - c.chars().count();
                if matches!(i, 1 | 4 | 5) {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(pad));
                }
                s.push_str("  ");
            }
            let _ = writeln!(out, "{}", s.trim_end());
        };
        line(&mut out, &header.map(String::from));
        line(&mut out, &width.map(|w| "-".repeat(w)));
        for r in &rows {
            line(&mut out, r);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// A number with as many decimals as its size deserves.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        format!("{v}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs `f` `reps` times and returns the median of what it measured.
/// `f` returns its own measurement, so set-up and tear-down stay untimed.
pub(crate) fn median_of<E>(reps: usize, mut f: impl FnMut() -> Result<f64, E>) -> Result<f64, E> {
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        v.push(f()?);
    }
    Ok(median(v))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times `f`, returning its result and the elapsed time.
pub(crate) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Progress on stderr, so `--json` output stays clean.
pub(crate) fn progress(msg: impl std::fmt::Display) {
    eprintln!("  .. {msg}");
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

/// Resident memory of this process in bytes (`/proc/self/statm`).
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page_size())
        .unwrap_or(0)
}

/// Number of memory mappings of this process (`/proc/self/maps` lines).
pub(crate) fn mappings() -> usize {
    std::fs::read("/proc/self/maps").map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// The kernel's limit on mappings per process (`vm.max_map_count`).
pub(crate) fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Memory the system can still give out, in bytes (`MemAvailable`).
pub(crate) fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(u64::MAX)
}

/// Resident bytes of the malloc heap (`[heap]`) and of all other anonymous
/// mappings (linear memories, large allocations), from `/proc/self/smaps`.
pub(crate) fn resident_split() -> (u64, u64) {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return (0, 0) };
    let (mut heap, mut anon) = (0, 0);
    // Which bucket the mapping whose fields we are reading goes to.
    let mut bucket: Option<bool> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let path = line.split_whitespace().nth(5);
            bucket = match path {
                Some("[heap]") => Some(true),
                None => Some(false),
                Some(_) => None,
            };
        } else if first == "Rss:" {
            let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match bucket {
                Some(true) => heap += kb * 1024,
                Some(false) => anon += kb * 1024,
                None => {}
            }
        }
    }
    (heap, anon)
}

/// Gives freed malloc memory back to the kernel, so the next phase's resident
/// figure starts from what is really in use.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory held by the allocator; no
    // live allocation is affected.
    unsafe { libc::malloc_trim(0) };
}

pub(crate) const KIB: f64 = 1024.0;

/// A built example guest: its bytes, loaded into `engine`.
pub(crate) fn load_guest(
    engine: &reactor_runtime::Engine,
    name: &str,
) -> anyhow::Result<(std::sync::Arc<reactor_runtime::LoadedModule>, Vec<u8>)> {
    use anyhow::Context as _;
    let path = example_guests::path(name);
    let bytes = std::fs::read(&path).with_context(|| format!("reading the `{name}` guest at {}", path.display()))?;
    let (module, _) = engine.load_file(&path).with_context(|| format!("loading {}", path.display()))?;
    Ok((module, bytes))
}

/// A fresh engine with the host's default configuration.
pub(crate) fn engine() -> anyhow::Result<std::sync::Arc<reactor_runtime::Engine>> {
    Ok(std::sync::Arc::new(reactor_runtime::Engine::new(reactor_runtime::EngineConfig::default())?))
}

/// Minor page faults this process has taken (`/proc/self/stat`, field 10).
pub(crate) fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may
            // contain spaces: state is field 3, minflt field 10.
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The machine's cost of a first touch of a fresh anonymous page (fault,
/// zeroing, mapping), in ns: the floor under anything that must write pages
/// it has not used before. Median over `reps` touches of 64 MiB.
pub(crate) fn page_touch_ns(reps: usize) -> f64 {
    const BYTES: usize = 64 << 20;
    const PAGE: usize = 4096;
    let Ok(ns) = median_of(reps, || -> Result<f64, std::convert::Infallible> {
        // A large zeroed allocation is a fresh mapping: no page is resident.
        let mut v = vec![0u8; BYTES];
        let t = Instant::now();
        for i in (0..BYTES).step_by(PAGE) {
            v[i] = 1;
        }
        let dt = t.elapsed();
        std::hint::black_box(&v);
        Ok(dt.as_secs_f64() * 1e9 / (BYTES / PAGE) as f64)
    });
    ns
}
