//! A run as one self-contained HTML page: the results first (every scored model and baseline
//! side by side per test set, with intervals, bars and `expect:` outcomes), the DAG coloured by status, every step's time,
//! reason and key (and log tail when it failed), every metric with its `expect:` bound and a
//! diff against a baseline run, the plots the steps wrote (embedded), the parameters, the
//! machine and the version. No script, stylesheet or image is fetched from anywhere: the page
//! opens from disk or as an e-mail attachment. [`serve`] shows the same page live.

pub mod serve;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use crate::cache::runs::{RunRecord, StepStatus};
use crate::metrics::{ExpectResult, diff, flat};

/// What else goes into the page besides the run itself.
#[derive(Debug, Default)]
pub struct Options<'a> {
    /// The run to compare metrics with (default in the CLI: the previous run of the workflow).
    pub vs: Option<&'a RunRecord>,
    /// Where the run's step logs are (`cache/runs/<workflow>/<run id>/`), for the steps still
    /// running: their log tail and the loss logged so far.
    pub logs: Option<PathBuf>,
    /// `serve`: poll this URL and redraw the page when what it returns changes.
    pub live: Option<String>,
    /// `serve`: links to other runs, shown above the report.
    pub nav: Vec<(String, String)>,
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#1d2330}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #dde;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f5fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;color:#fff}
.ran{background:#2e8b57}.cached{background:#5b7db1}.failed{background:#c0392b}.skipped{background:#9aa0a6}.running{background:#d48806}
.ok{color:#2e8b57;font-weight:600}.bad{color:#c0392b;font-weight:600}
pre{background:#f6f6f9;padding:8px;overflow:auto;max-height:320px;font-size:12px}
.plot img{max-width:100%;border:1px solid #dde;background:#fff}.plot{margin:10px 0}
.missing{color:#c0392b}.muted{color:#666}nav a{margin-right:10px}
.dagbox{max-width:100%}svg.dag{max-width:100%;height:auto}
table.results td.bar{width:40%}.bar div{background:#5b7db1;height:12px;border-radius:2px}svg.dag text{font:12px system-ui,sans-serif;fill:#fff}svg.dag path{fill:none;stroke:#9aa;stroke-width:1.2}
"#;

/// The whole page.
pub fn render(run: &RunRecord, opts: &Options) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let title = format!("{} — run {}", run.workflow, run.run_id);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    if !opts.nav.is_empty() {
        h.push_str("<nav>Latest runs: ");
        for (href, label) in &opts.nav {
            let _ = write!(h, "<a href=\"{}\">{}</a>", escape(href), escape(label));
        }
        h.push_str("</nav>");
    }
    let counts = status_counts(run);
    let _ = write!(
        h,
        "<h1>{}</h1><p><span class=\"badge {}\" id=\"run-status\">{}</span> run <code>{}</code>, \
         started {}, {} · {}</p>",
        escape(&run.workflow),
        run_class(&run.status),
        escape(&run.status),
        escape(&run.run_id),
        escape(&run.started),
        seconds(run.seconds),
        escape(&counts),
    );
    if !run.running.is_empty() {
        let _ = write!(h, "<p>Running now: {}</p>", escape(&run.running.join(", ")));
    }
    results(&mut h, run);
    dag(&mut h, run);
    steps_table(&mut h, run, opts);
    metrics_table(&mut h, run, opts.vs);
    plots(&mut h, run);
    about(&mut h, run);
    if let Some(url) = &opts.live {
        live_script(&mut h, url);
    }
    h.push_str("</body></html>\n");
    h
}

/// Headline metrics, in the order they are shown, and whether higher is better: classification
/// (eval.classify), regression (eval.regress), language models (eval.lm), text (eval.text).
const HEADLINES: &[(&str, bool)] = &[
    ("accuracy", true),
    ("mcc", true),
    ("f1_macro", true),
    ("rmse", false),
    ("pearson", true),
    ("bits_per_base", false),
    ("token_f1", true),
];

/// A step's row of the results: its name, headline values, and the bootstrap interval of the
/// first.
type Scored<'a> = (&'a str, Vec<(&'static str, f64)>, Option<(f64, f64)>);

/// One test set of the results: the steps that scored it with the same headline metrics.
struct TestSet<'a> {
    /// The headline metrics its steps report, in [`HEADLINES`] order.
    names: Vec<&'static str>,
    /// The identity of the test table (`test_table` in the scoring steps' metrics).
    table: Option<&'a str>,
    /// Its size as the first step gives it (`146 rows`), for the heading.
    size: String,
    /// Each step's name, headline values and the bootstrap interval of the first.
    rows: Vec<Scored<'a>>,
}

/// The steps with headline metrics, grouped by the test table they scored: its identity, which
/// every scoring kind records (`test_table`: the table's content hash, which predictions and
/// embeddings carry from the table they were made of), and the headline metrics reported.
/// Records from before that identity group by row count, as they did.
fn test_sets(run: &RunRecord) -> Vec<TestSet<'_>> {
    let mut groups: indexmap::IndexMap<(Vec<&'static str>, String), TestSet> = Default::default();
    for s in &run.steps {
        let m = &s.metrics;
        let found: Vec<(&'static str, f64)> = HEADLINES
            .iter()
            .filter_map(|(name, _)| m.get(*name).and_then(Value::as_f64).map(|v| (*name, v)))
            .collect();
        let Some((first, _)) = found.first() else {
            continue;
        };
        let ci = m
            .get(format!("{first}_ci95"))
            .and_then(Value::as_array)
            .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
        let size = ["rows", "sequences"]
            .iter()
            .find_map(|k| {
                m.get(*k)
                    .and_then(Value::as_u64)
                    .map(|n| format!("{n} {k}"))
            })
            .unwrap_or_default();
        let table = m.get("test_table").and_then(Value::as_str);
        let names: Vec<&'static str> = found.iter().map(|(n, _)| *n).collect();
        let key = match table {
            Some(t) => format!("table {t}"),
            None => format!("size {size}"),
        };
        groups
            .entry((names.clone(), key))
            .or_insert_with(|| TestSet {
                names,
                table,
                size,
                rows: Vec::new(),
            })
            .rows
            .push((s.name.as_str(), found, ci));
    }
    groups.into_values().collect()
}

/// The answer first: for each test set ([`test_sets`]), every model and baseline side by side
/// with its headline metrics, the bootstrap interval of the first, a bar, and its `expect:`
/// outcomes.
fn results(h: &mut String, run: &RunRecord) {
    let groups = test_sets(run);
    if groups.is_empty() {
        return;
    }
    h.push_str("<h2>Results</h2><div id=\"results\">");
    for set in &groups {
        let (names, size, rows) = (&set.names, &set.size, &set.rows);
        let head = names[0];
        let higher = HEADLINES.iter().any(|(n, up)| *n == head && *up);
        let top = rows
            .iter()
            .map(|r| r.1[0].1.abs())
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let _ = write!(
            h,
            "<p><b>Test set{}</b>{}: {} ({} is better)</p><table class=\"results\"{}>\
             <tr><th>scored by</th>",
            if size.is_empty() {
                String::new()
            } else {
                format!(" of {size}")
            },
            set.table
                .map(|t| format!(
                    " <span class=\"muted\">(table <code>{}</code>)</span>",
                    escape(t)
                ))
                .unwrap_or_default(),
            names.join(", "),
            if higher { "higher" } else { "lower" },
            set.table
                .map(|t| format!(" data-test-table=\"{}\"", escape(t)))
                .unwrap_or_default()
        );
        for n in names.iter() {
            let _ = write!(h, "<th>{}</th>", escape(n));
        }
        h.push_str("<th>95 % interval</th><th></th><th>expect</th></tr>");
        for (step, values, ci) in rows {
            let after = run
                .step(step)
                .and_then(|s| s.after.first())
                .map(|a| format!(" <span class=\"muted\">({})</span>", escape(a)))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr data-step=\"{}\"><td>{}{after}</td>",
                escape(step),
                escape(step)
            );
            for (n, v) in values {
                let _ = write!(
                    h,
                    "<td class=\"num\" data-metric=\"{}/{n}\" data-value=\"{v}\">{:.4}</td>",
                    escape(step),
                    v
                );
            }
            let interval = ci.map_or(String::new(), |(lo, hi)| format!("{lo:.4} – {hi:.4}"));
            let width = (values[0].1.abs() / top * 100.0).clamp(0.0, 100.0);
            let expects: Vec<String> = run
                .step(step)
                .map(|s| {
                    s.expect
                        .iter()
                        .map(|e| {
                            format!(
                                "<span class=\"{}\">{} {} {}</span>",
                                if e.ok { "ok" } else { "bad" },
                                if e.ok { "✓" } else { "✗" },
                                escape(&e.metric),
                                escape(&e.bound)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = write!(
                h,
                "<td class=\"num\">{interval}</td><td class=\"bar\"><div style=\"width:{width:.1}%\"></div></td><td>{}</td></tr>",
                expects.join(" ")
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</div>");
}

fn run_class(status: &str) -> &'static str {
    match status {
        "ok" => "ran",
        "running" => "running",
        "interrupted" => "skipped",
        _ => "failed",
    }
}

fn status_name(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Ran => "ran",
        StepStatus::Cached => "cached",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

fn status_counts(run: &RunRecord) -> String {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &run.steps {
        *n.entry(status_name(s.status)).or_default() += 1;
    }
    if !run.running.is_empty() {
        n.insert("running", run.running.len());
    }
    let parts: Vec<String> = n.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        "{} steps: {}",
        run.steps.len() + run.running.len(),
        parts.join(", ")
    )
}

fn seconds(s: f64) -> String {
    if s >= 60.0 {
        format!("{}m {:.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.2}s")
    }
}

/// An id for a step's anchor (`#step-…`): its index, names may hold any character.
fn anchor(i: usize) -> String {
    format!("step-{i}")
}

/// Steps drawn in columns by depth (longest path from a step with no upstream), edges from
/// each step to the steps that read it. Large runs get the table only.
fn dag(h: &mut String, run: &RunRecord) {
    const MAX_DRAWN: usize = 400;
    h.push_str("<h2>Steps</h2>");
    let mut nodes: Vec<(&str, &'static str, &[String])> = run
        .steps
        .iter()
        .map(|s| (s.name.as_str(), status_name(s.status), s.after.as_slice()))
        .collect();
    nodes.extend(run.running.iter().map(|n| (n.as_str(), "running", &[][..])));
    if nodes.is_empty() || nodes.len() > MAX_DRAWN {
        if !nodes.is_empty() {
            let _ = write!(
                h,
                "<p class=\"muted\">{} steps: too many to draw; the table lists them.</p>",
                nodes.len()
            );
        }
        return;
    }
    // `foreach` copies (`name[fold=3]`) share one box: the graph stays as wide as the
    // workflow, however many copies a matrix makes.
    let nodes = group_copies(&nodes);
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.members.iter().map(move |m| (m.as_str(), i)))
        .collect();
    let mut depth = vec![0usize; nodes.len()];
    // Longest path from a source; copies merged into one box may come in any order, so relax
    // until nothing moves (at most one pass per node).
    for _ in 0..nodes.len() {
        let mut moved = false;
        for i in 0..nodes.len() {
            for up in &nodes[i].after {
                if let Some(&u) = index.get(up.as_str())
                    && u != i
                    && depth[i] < depth[u] + 1
                {
                    depth[i] = depth[u] + 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let (w, hgt, gx, gy) = (180.0, 26.0, 30.0, 10.0);
    let mut row_of = vec![0usize; nodes.len()];
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    for i in 0..nodes.len() {
        let r = rows.entry(depth[i]).or_default();
        row_of[i] = *r;
        *r += 1;
    }
    let cols = depth.iter().max().map_or(1, |d| d + 1);
    let max_rows = rows.values().max().copied().unwrap_or(1);
    let (width, height) = (
        cols as f64 * (w + gx) + 10.0,
        max_rows as f64 * (hgt + gy) + 10.0,
    );
    let pos = |i: usize| {
        (
            5.0 + depth[i] as f64 * (w + gx),
            5.0 + row_of[i] as f64 * (hgt + gy),
        )
    };
    h.push_str(
        "<p class=\"legend\"><span class=\"badge ran\">ran</span> <span class=\"badge \
         cached\">cached</span> <span class=\"badge failed\">failed</span> <span class=\"badge \
         skipped\">skipped</span> <span class=\"badge running\">running</span></p>\
         <div class=\"dagbox\">",
    );
    let _ = write!(
        h,
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"step graph\">"
    );
    for (i, n) in nodes.iter().enumerate() {
        let ups: std::collections::BTreeSet<usize> = n
            .after
            .iter()
            .filter_map(|up| index.get(up.as_str()).copied())
            .filter(|&u| u != i)
            .collect();
        for u in ups {
            {
                let ((x1, y1), (x2, y2)) = (pos(u), pos(i));
                let (x1, y1, y2) = (x1 + w, y1 + hgt / 2.0, y2 + hgt / 2.0);
                let mid = (x1 + x2) / 2.0;
                let _ = write!(
                    h,
                    "<path d=\"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}\"/>"
                );
            }
        }
    }
    let colour = |s: &str| match s {
        "ran" => "#2e8b57",
        "cached" => "#5b7db1",
        "failed" => "#c0392b",
        "running" => "#d48806",
        _ => "#9aa0a6",
    };
    for (i, n) in nodes.iter().enumerate() {
        let (name, status) = (n.name.as_str(), n.status);
        let (x, y) = pos(i);
        let label = if n.members.len() > 1 {
            format!("{} ×{}", box_label(name, 17), n.members.len())
        } else {
            box_label(name, 22)
        };
        let title = if n.members.len() > 1 {
            format!(
                "{name}: {} copies ({status}): {}",
                n.members.len(),
                n.members.join(", ")
            )
        } else {
            format!("{name} ({status})")
        };
        let _ = write!(
            h,
            "<a href=\"#{}\"><g class=\"node {status}\" data-step=\"{}\" data-steps=\"{}\" \
             data-status=\"{status}\"><title>{}</title><rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{hgt}\" \
             rx=\"5\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text></g></a>",
            anchor(n.first),
            escape(name),
            escape(&n.members.join(" ")),
            escape(&title),
            colour(status),
            x + 8.0,
            y + 17.0,
            escape(&label)
        );
    }
    h.push_str("</svg></div>");
}

/// One box of the DAG: a step, or every `foreach` copy of one (`members`).
struct DagNode {
    name: String,
    /// Index of its first step among the run's steps (the steps table's anchor).
    first: usize,
    status: &'static str,
    members: Vec<String>,
    after: Vec<String>,
}

/// Steps as DAG boxes, the copies of a `foreach` step (`name[k=v]`) merged into one box named
/// after the step, whose status is the worst of theirs (failed, running, ran, cached, skipped).
fn group_copies(nodes: &[(&str, &'static str, &[String])]) -> Vec<DagNode> {
    let rank = |s: &str| match s {
        "failed" => 4,
        "running" => 3,
        "ran" => 2,
        "cached" => 1,
        _ => 0,
    };
    let mut out: Vec<DagNode> = Vec::new();
    let mut by_base: HashMap<String, usize> = HashMap::new();
    for (k, (name, status, after)) in nodes.iter().enumerate() {
        let base = match name.split_once('[') {
            Some((b, rest)) if rest.ends_with(']') => b.to_string(),
            _ => name.to_string(),
        };
        let copy = base.len() < name.len();
        match by_base.get(&base).copied().filter(|_| copy) {
            Some(i) => {
                let n = &mut out[i];
                n.members.push(name.to_string());
                n.after.extend(after.iter().cloned());
                if rank(status) > rank(n.status) {
                    n.status = status;
                }
            }
            None => {
                if copy {
                    by_base.insert(base.clone(), out.len());
                }
                out.push(DagNode {
                    name: if copy { base } else { name.to_string() },
                    first: k,
                    status,
                    members: vec![name.to_string()],
                    after: after.to_vec(),
                });
            }
        }
    }
    // A lone copy keeps its own name (and its box its `data-step`).
    for n in &mut out {
        if n.members.len() == 1 {
            n.name = n.members[0].clone();
        }
    }
    out
}

/// A step's name cut to `max` characters for its box, keeping a `foreach` copy's values
/// (`promoter_onehot[fold=3]` → `promoter_o…[fold=3]`) so copies stay apart.
fn box_label(name: &str, max: usize) -> String {
    let n = name.chars().count();
    if n <= max {
        return name.to_string();
    }
    let (stem, matrix) = name.split_at(name.find('[').unwrap_or(name.len()));
    let keep = max.saturating_sub(matrix.chars().count() + 1);
    if keep >= 4 {
        stem.chars().take(keep).collect::<String>() + "…" + matrix
    } else {
        name.chars().take(max - 1).collect::<String>() + "…"
    }
}

fn steps_table(h: &mut String, run: &RunRecord, opts: &Options) {
    h.push_str(
        "<table id=\"steps\"><tr><th>step</th><th>status</th><th>time</th><th>why</th>\
         <th>key</th></tr>",
    );
    for (i, s) in run.steps.iter().enumerate() {
        let status = status_name(s.status);
        let _ = write!(
            h,
            "<tr id=\"{}\" class=\"step\" data-step=\"{}\" data-status=\"{status}\"><td>{}</td>\
             <td><span class=\"badge {status}\">{status}</span>{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td><code title=\"{}\">{}</code></td></tr>",
            anchor(i),
            escape(&s.name),
            escape(&s.name),
            if s.attempts > 1 {
                format!(" ({} attempts)", s.attempts)
            } else {
                String::new()
            },
            seconds(s.seconds),
            escape(s.error.as_deref().unwrap_or(&s.reason)),
            escape(&s.key),
            escape(&s.key.chars().take(12).collect::<String>()),
        );
        if s.status == StepStatus::Failed {
            let tail = s
                .log_tail
                .clone()
                .or_else(|| s.stderr.as_deref().and_then(|p| tail_of(p, 30)))
                .unwrap_or_else(|| "(no log saved)".into());
            let _ = write!(
                h,
                "<tr class=\"log\"><td colspan=\"5\"><pre>{}</pre></td></tr>",
                escape(&tail)
            );
        }
    }
    for (k, name) in run.running.iter().enumerate() {
        let i = run.steps.len() + k;
        let _ = write!(
            h,
            "<tr id=\"{}\" class=\"step\" data-step=\"{}\" data-status=\"running\"><td>{}</td>\
             <td><span class=\"badge running\">running</span></td><td></td><td></td><td></td></tr>",
            anchor(i),
            escape(name),
            escape(name)
        );
        if let Some(dir) = &opts.logs {
            let safe = name.replace(['/', '\0'], "_");
            let out = dir.join(format!("{safe}.out"));
            let log = std::fs::read_to_string(&out).unwrap_or_default();
            let losses = logged_losses(&log);
            let mut cell = String::new();
            if losses.len() >= 2 {
                cell.push_str(&sparkline(&losses));
            }
            let tail = tail_text(&log, 12);
            if !tail.is_empty() {
                let _ = write!(cell, "<pre>{}</pre>", escape(&tail));
            }
            if !cell.is_empty() {
                let _ = write!(h, "<tr class=\"log\"><td colspan=\"5\">{cell}</td></tr>");
            }
        }
    }
    h.push_str("</table>");
}

/// The last `n` lines of a file, if it can be read.
fn tail_of(path: &Path, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = tail_text(&text, n);
    (!t.is_empty()).then_some(t)
}

fn tail_text(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `(step, loss)` of the training lines a model step logs (`step 10/700: loss 6.25 …`).
pub fn logged_losses(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step ")?;
            let (step, rest) = rest.split_once(':')?;
            let step = step.split('/').next()?.trim().parse::<f64>().ok()?;
            let loss = rest
                .trim()
                .strip_prefix("loss ")?
                .split_whitespace()
                .next()?;
            Some((step, loss.parse::<f64>().ok()?))
        })
        .collect()
}

/// A small inline SVG line of the training loss so far.
fn sparkline(points: &[(f64, f64)]) -> String {
    let (w, h) = (320.0, 80.0);
    let (x0, x1) = (
        points[0].0,
        points[points.len() - 1].0.max(points[0].0 + 1.0),
    );
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-9);
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                4.0 + (x - x0) / (x1 - x0) * (w - 8.0),
                4.0 + (hi - y) / span * (h - 8.0)
            )
        })
        .collect();
    let last = points[points.len() - 1];
    format!(
        "<svg class=\"loss\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"training loss so far\"><rect width=\"{w}\" height=\"{h}\" \
         fill=\"#fff\" stroke=\"#dde\"/><polyline fill=\"none\" stroke=\"#2e6bd1\" \
         stroke-width=\"1.5\" points=\"{}\"/></svg> <span class=\"muted\">loss {:.4} at step {}</span>",
        coords.join(" "),
        last.1,
        last.0
    )
}

fn metrics_table(h: &mut String, run: &RunRecord, vs: Option<&RunRecord>) {
    let ours = flat(&run.step_metrics());
    h.push_str("<h2>Metrics</h2>");
    if ours.is_empty() {
        h.push_str("<p class=\"muted\">No step wrote metrics.</p>");
        return;
    }
    let theirs = vs.map(|v| flat(&v.step_metrics())).unwrap_or_default();
    let rows = diff(&theirs, &ours);
    let expects: HashMap<String, &ExpectResult> = run
        .steps
        .iter()
        .flat_map(|s| {
            s.expect
                .iter()
                .map(move |e| (format!("{}/{}", s.name, e.metric), e))
        })
        .collect();
    match vs {
        Some(v) => {
            let _ = write!(
                h,
                "<p>Compared with run <code>{}</code> of {} ({}).</p>",
                escape(&v.run_id),
                escape(&v.started),
                escape(&v.status)
            );
        }
        None => h.push_str("<p class=\"muted\">No earlier run to compare with.</p>"),
    }
    // One table per step, folded when long and free of expectations (a multi-label step
    // writes hundreds of numbers); folded rows stay in the page and in searches.
    let mut by_step: indexmap::IndexMap<&str, Vec<String>> = run
        .steps
        .iter()
        .map(|s| (s.name.as_str(), Vec::new()))
        .collect();
    let row = |metric: &str, value: &str, expect: &str, base: &str, change: &str| {
        format!(
            "<tr data-metric=\"{}\"><td>{}</td><td class=\"num\">{value}</td><td>{expect}</td>\
             <td class=\"num\">{base}</td><td class=\"num\">{change}</td></tr>",
            escape(metric),
            escape(metric.split_once('/').map_or(metric, |(_, m)| m)),
        )
    };
    let badge = |e: &ExpectResult| {
        format!(
            "<span class=\"{}\" data-expect=\"{}\">{} {}</span>",
            if e.ok { "ok" } else { "bad" },
            if e.ok { "pass" } else { "fail" },
            if e.ok { "✓" } else { "✗" },
            escape(&e.bound)
        )
    };
    for r in rows.iter().filter(|r| r.b.is_some()) {
        let step = r.metric.split_once('/').map_or("", |(s, _)| s);
        let expect = expects.get(&r.metric).map_or(String::new(), |e| badge(e));
        let html = row(
            &r.metric,
            &escape(&short(r.b.as_deref().unwrap_or(""))),
            &expect,
            &escape(&short(r.a.as_deref().unwrap_or(""))),
            &r.delta
                .filter(|d| *d != 0.0)
                .map_or(String::new(), |d| format!("{d:+.4}")),
        );
        by_step.entry(step).or_default().push(html);
    }
    // Expectations on metrics the step never wrote still show, as failures.
    for (name, e) in &expects {
        if !ours.contains_key(name) {
            let step = name.split_once('/').map_or("", |(s, _)| s);
            let html = row(
                name,
                "<span class=\"missing\">missing</span>",
                &badge(e),
                "",
                "",
            );
            by_step.entry(step).or_default().push(html);
        }
    }
    h.push_str("<div id=\"metrics\">");
    for (step, rows) in by_step.iter().filter(|(_, r)| !r.is_empty()) {
        let checked = run.step(step).is_some_and(|s| !s.expect.is_empty());
        let open = if checked || rows.len() <= 12 {
            " open"
        } else {
            ""
        };
        let _ = write!(
            h,
            "<details{open}><summary><b>{}</b> — {} metrics{}</summary><table><tr><th>metric</th>\
             <th>value</th><th>expect</th><th>baseline run</th><th>change</th></tr>{}</table>\
             </details>",
            escape(step),
            rows.len(),
            if checked { ", checked by expect" } else { "" },
            rows.concat()
        );
    }
    h.push_str("</div>");
}

fn short(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(x) if v.contains('.') || v.contains('e') => {
            if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) {
                format!("{x:.4e}")
            } else {
                format!("{x:.4}")
            }
        }
        _ if v.chars().count() > 80 => v.chars().take(79).collect::<String>() + "…",
        _ => v.to_string(),
    }
}

/// What a plot file turned out to be.
enum Plot {
    Image { mime: &'static str, bytes: Vec<u8> },
    Unreadable(String),
}

/// A plot file as an image, or why it is not one.
fn read_plot(path: &Path) -> Plot {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Plot::Unreadable(format!("cannot be read: {e}")),
    };
    let is_png = bytes.starts_with(b"\x89PNG\r\n\x1a\n");
    let is_svg = path.extension().is_some_and(|e| e == "svg")
        && std::str::from_utf8(&bytes).is_ok_and(|t| t.contains("<svg") && t.contains("</svg>"));
    match (is_png, is_svg) {
        (true, _) => Plot::Image {
            mime: "image/png",
            bytes,
        },
        (_, true) => Plot::Image {
            mime: "image/svg+xml",
            bytes,
        },
        _ if bytes.is_empty() => Plot::Unreadable("is empty".into()),
        _ => Plot::Unreadable("is not a readable SVG or PNG image".into()),
    }
}

/// The SVG and PNG files a step wrote in its output directory (not in subdirectories).
fn plot_files(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "svg" || e == "png"))
        .collect();
    files.sort();
    files
}

fn plots(h: &mut String, run: &RunRecord) {
    h.push_str("<h2>Plots</h2>");
    let mut any = false;
    for (i, s) in run.steps.iter().enumerate() {
        let Some(out) = &s.out else { continue };
        if !out.is_dir() {
            let _ = write!(
                h,
                "<div class=\"plot\" data-step=\"{}\"><h3>{}</h3><p class=\"missing\">Its \
                 outputs are no longer in the cache ({}); rerun the workflow to see its plots.\
                 </p></div>",
                escape(&s.name),
                escape(&s.name),
                escape(&out.display().to_string())
            );
            any = true;
            continue;
        }
        let files = plot_files(out);
        if files.is_empty() {
            continue;
        }
        any = true;
        let _ = write!(
            h,
            "<div class=\"plot\" data-step=\"{}\"><h3><a href=\"#{}\">{}</a></h3>",
            escape(&s.name),
            anchor(i),
            escape(&s.name)
        );
        for f in files {
            let name = f
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            match read_plot(&f) {
                Plot::Image { mime, bytes } => {
                    let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
                    let _ = write!(
                        h,
                        "<figure><img alt=\"{} of {}\" src=\"data:{mime};base64,{data}\">\
                         <figcaption>{}</figcaption></figure>",
                        escape(&name),
                        escape(&s.name),
                        escape(&name)
                    );
                }
                Plot::Unreadable(why) => {
                    let _ = write!(
                        h,
                        "<p class=\"missing\" data-plot=\"{}\">Plot <code>{}</code> {}.</p>",
                        escape(&name),
                        escape(&name),
                        escape(&why)
                    );
                }
            }
        }
        h.push_str("</div>");
    }
    if !any {
        h.push_str("<p class=\"muted\">No step wrote a plot.</p>");
    }
}

fn about(h: &mut String, run: &RunRecord) {
    h.push_str("<h2>Parameters</h2>");
    let _ = write!(
        h,
        "<p>Workflow file <code>{}</code>, profile {}.</p>",
        escape(&run.file.display().to_string()),
        run.profile
            .as_deref()
            .map_or("<em>none</em>".to_string(), |p| format!(
                "<code>{}</code>",
                escape(p)
            ))
    );
    if run.params.is_empty() {
        h.push_str("<p class=\"muted\">No parameters.</p>");
    } else {
        h.push_str("<table id=\"params\"><tr><th>parameter</th><th>value</th></tr>");
        for (k, v) in &run.params {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(&v));
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Machine and version</h2><table id=\"machine\">");
    let _ = write!(
        h,
        "<tr><td>dnaflow</td><td>{}</td></tr><tr><td>total time</td><td>{}</td></tr>",
        escape(&run.dnaflow_version),
        seconds(run.seconds)
    );
    match &run.machine {
        Value::Object(m) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(k),
                    escape(&v)
                );
            }
        }
        _ => h.push_str(
            "<tr><td colspan=\"2\" class=\"muted\">not recorded (a run from an older dnaflow)</td></tr>",
        ),
    }
    h.push_str("</table>");
}

/// `serve`: poll the version URL and swap in the new page when the run changed, keeping the
/// scroll position. Same origin only.
fn live_script(h: &mut String, url: &str) {
    let _ = write!(
        h,
        "<script>(function(){{var v=null;function poll(){{fetch({url:?}).then(function(r){{\
         return r.text()}}).then(function(t){{if(v!==null&&t!==v){{return fetch(location.href)\
         .then(function(r){{return r.text()}}).then(function(html){{var d=new DOMParser()\
         .parseFromString(html,'text/html');var y=window.scrollY;document.body.innerHTML=\
         d.body.innerHTML;window.scrollTo(0,y);v=t;}})}}v=t;}}).catch(function(){{}})\
         .then(function(){{setTimeout(poll,1000)}})}}poll();}})();</script>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreach_copies_share_one_dag_box() {
        let none: Vec<String> = Vec::new();
        let a = vec!["a".to_string()];
        let bs = vec![
            "b[k=1]".to_string(),
            "b[k=2]".to_string(),
            "b[k=3]".to_string(),
        ];
        let nodes: Vec<(&str, &'static str, &[String])> = vec![
            ("a", "ran", &none),
            ("b[k=1]", "cached", &a),
            ("b[k=2]", "failed", &a),
            ("b[k=3]", "ran", &a),
            ("c", "ran", &bs),
            ("d[x=1]", "ran", &a),
        ];
        let g = group_copies(&nodes);
        let names: Vec<&str> = g.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d[x=1]"]);
        assert_eq!(
            (g[1].members.len(), g[1].status, g[1].first),
            (3, "failed", 1)
        );
        assert_eq!(g[2].first, 4);
    }

    #[test]
    fn box_labels_keep_the_copy_they_name() {
        assert_eq!(box_label("gpt2", 22), "gpt2");
        assert_eq!(
            box_label("promoter_onehot[fold=3]", 22),
            "promoter_oneh…[fold=3]"
        );
        assert_eq!(
            box_label("genome[genome=chlamydia_trachomatis]", 22),
            "genome[genome=chlamyd…"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn losses_are_read_from_training_logs() {
        let log = "GPT2 on 10 rows\nstep 10/230: loss 6.2579 lr 9.000e-4\neval step 23: loss 4.6\n\
                   step 20/230: loss 4.9369 lr 1e-3\n";
        assert_eq!(logged_losses(log), vec![(10.0, 6.2579), (20.0, 4.9369)]);
    }

    #[test]
    fn plots_that_are_not_images_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("a.svg");
        std::fs::write(&good, "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>").unwrap();
        let bad = dir.path().join("b.svg");
        std::fs::write(&bad, "not a picture").unwrap();
        let empty = dir.path().join("c.png");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(read_plot(&good), Plot::Image { .. }));
        assert!(matches!(read_plot(&bad), Plot::Unreadable(w) if w.contains("not a readable")));
        assert!(matches!(read_plot(&empty), Plot::Unreadable(w) if w == "is empty"));
        assert_eq!(plot_files(dir.path()).len(), 3);
    }

    /// A record whose steps report `metrics`, by name.
    fn record(steps: &[(&str, Value)]) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "run_id": "r", "workflow": "w", "file": "w.yaml", "profile": null, "params": {},
            "started": "now", "seconds": 1.0, "status": "ok", "dnaflow_version": "0",
            "steps": steps.iter().map(|(name, m)| serde_json::json!({
                "name": name, "key": "k", "status": "ran", "reason": "", "seconds": 1.0,
                "out": null, "metrics": m, "attempts": 1,
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Scores group by the test table they were computed on, not by their size and metrics:
    /// two tables of 20 rows are two test sets; two models of one table share one.
    #[test]
    fn scores_group_by_their_test_table() {
        let scored = |table: &str, accuracy: f64| serde_json::json!({"accuracy": accuracy, "mcc": 0.1, "rows": 20, "test_table": table});
        let run = record(&[
            ("model_a", scored("aaaa", 0.8)),
            ("onehot_b", scored("bbbb", 0.7)),
            ("kmer_a", scored("aaaa", 0.6)),
            (
                "lm",
                serde_json::json!({"bits_per_base": 1.9, "sequences": 20, "test_table": "aaaa"}),
            ),
        ]);
        let sets = test_sets(&run);
        let steps: Vec<(Option<&str>, Vec<&str>)> = sets
            .iter()
            .map(|s| (s.table, s.rows.iter().map(|r| r.0).collect()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (Some("aaaa"), vec!["model_a", "kmer_a"]),
                (Some("bbbb"), vec!["onehot_b"]),
                (Some("aaaa"), vec!["lm"]),
            ]
        );
        let html = render(&run, &Options::default());
        assert!(html.contains("data-test-table=\"bbbb\""), "{html}");
        // A record from before the identity groups by size, as it did.
        let old = record(&[
            ("a", serde_json::json!({"accuracy": 0.8, "rows": 20})),
            ("b", serde_json::json!({"accuracy": 0.7, "rows": 20})),
            ("c", serde_json::json!({"accuracy": 0.7, "rows": 30})),
        ]);
        assert_eq!(
            test_sets(&old)
                .iter()
                .map(|s| s.rows.len())
                .collect::<Vec<_>>(),
            vec![2, 1]
        );
    }
}
