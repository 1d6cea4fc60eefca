//! `dag`, `metrics`, `kinds`, `schema`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::{Failure, WorkflowArgs};
use crate::cache::Cache;
use crate::cache::runs::{self, RunRecord};
use crate::exec::{Decision, Plan};
use crate::graph::Dag;
use crate::metrics;
use crate::workflow::{self, LoadOptions};

#[derive(clap::Args, Debug)]
pub struct DagArgs {
    #[command(flatten)]
    wf: WorkflowArgs,
    /// Output format: `dot` for Graphviz, `mermaid` for Markdown pages.
    #[arg(long, default_value = "text", value_parser = ["text", "dot", "mermaid"])]
    format: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum MetricsCommand {
    /// Metrics of a run: a run id (or prefix), a workflow name (its latest run), or a report file.
    Show {
        /// Default: the newest run in the cache.
        run: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the metrics of two runs, metric by metric.
    Diff {
        /// The earlier run: a run id (or prefix), a workflow name, or a report file.
        a: String,
        /// The later run, named the same ways.
        b: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct SchemaArgs {
    /// Write to this file instead of printing.
    #[arg(long, value_name = "PATH")]
    write: Option<PathBuf>,
}

pub fn dag(cache_dir: &Path, args: &DagArgs) -> Result<(), Failure> {
    let opts = LoadOptions {
        profile: args.wf.profile.clone(),
        sets: args.wf.sets.clone(),
        device: args.wf.device.clone(),
    };
    let wf = workflow::load(&args.wf.file, &opts)?;
    let dag = Dag::new(&wf).map_err(Failure::Workflow)?;
    let cache = Cache::at(cache_dir)
        .with_context(|| format!("cannot open the cache at {}", cache_dir.display()))?;
    let plan = Plan::new(&wf, dag, &[], &cache).map_err(|e| anyhow!("{e}"))?;
    let cached = |i: usize| plan.decisions[i] == Decision::Cached;
    let steps = &wf.steps;
    match args.format.as_str() {
        "dot" => {
            println!(
                "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=rounded];",
                wf.name
            );
            for &i in &plan.order {
                let style = if cached(i) {
                    ", style=\"rounded,filled\", fillcolor=\"#d9ead3\""
                } else {
                    ""
                };
                println!(
                    "  \"{}\" [label=\"{}{}\"{style}];",
                    steps[i].name,
                    steps[i].name,
                    if cached(i) { "\\n(cached)" } else { "" }
                );
            }
            for &i in &plan.order {
                for &d in &steps[i].deps {
                    println!("  \"{}\" -> \"{}\";", steps[d].name, steps[i].name);
                }
            }
            println!("}}");
        }
        "mermaid" => {
            println!("flowchart LR");
            for &i in &plan.order {
                let label = steps[i].name.replace('"', "'");
                println!(
                    "  s{i}[\"{label}\"]{}",
                    if cached(i) { ":::cached" } else { "" }
                );
            }
            for &i in &plan.order {
                for &d in &steps[i].deps {
                    println!("  s{d} --> s{i}");
                }
            }
            println!("  classDef cached fill:#d9ead3,stroke:#6aa84f");
        }
        _ => {
            println!(
                "{}: {} steps ({} cached)",
                wf.name,
                steps.len(),
                plan.order.len() - plan.to_run()
            );
            let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(4);
            for &i in &plan.order {
                let deps: Vec<&str> = steps[i]
                    .deps
                    .iter()
                    .map(|&d| steps[d].name.as_str())
                    .collect();
                let arrow = if deps.is_empty() {
                    String::new()
                } else {
                    format!("← {}", deps.join(", "))
                };
                let mark = if cached(i) { "[cached]" } else { "[run]   " };
                println!("  {mark} {:<width$}  {arrow}", steps[i].name);
            }
        }
    }
    Ok(())
}

/// Find a run: a report/record file, a run id or unique prefix, or a workflow's latest run.
pub(super) fn find_run(cache_dir: &Path, what: Option<&str>) -> anyhow::Result<RunRecord> {
    let runs_dir = cache_dir.join("runs");
    let all = runs::list_all(&runs_dir);
    let read = |wf: &str, id: &str| {
        runs::read(&runs::workflow_dir(&runs_dir, wf).join(format!("{id}.json")))
    };
    let Some(what) = what.filter(|w| *w != "latest") else {
        let (wf, id) = all
            .last()
            .ok_or_else(|| anyhow!("no runs recorded in {}", cache_dir.display()))?;
        return Ok(read(wf, id)?);
    };
    if Path::new(what).is_file() {
        return runs::read(Path::new(what)).with_context(|| format!("reading {what}"));
    }
    let matches: Vec<&(String, String)> =
        all.iter().filter(|(_, id)| id.starts_with(what)).collect();
    match matches.as_slice() {
        [(wf, id)] => return Ok(read(wf, id)?),
        [] => {}
        _ => bail!(
            "`{what}` matches {} runs; give more of the run id",
            matches.len()
        ),
    }
    if let Some(rec) = runs::latest(&runs_dir, what) {
        return Ok(rec);
    }
    bail!(
        "no run `{what}` in {} (give a run id, a workflow name, or a report file)",
        cache_dir.display()
    )
}

pub fn metrics(cache_dir: &Path, cmd: &MetricsCommand) -> Result<(), Failure> {
    match cmd {
        MetricsCommand::Show { run, json } => {
            let rec = find_run(cache_dir, run.as_deref())?;
            let flat = metrics::flat(&rec.step_metrics());
            if *json {
                println!("{}", serde_json::to_string_pretty(&flat).expect("json"));
                return Ok(());
            }
            println!(
                "run {} of {} ({}, {})",
                rec.run_id, rec.workflow, rec.started, rec.status
            );
            if flat.is_empty() {
                println!("  (no metrics: steps write them to metrics.json in their output)");
            }
            let width = flat.keys().map(String::len).max().unwrap_or(6);
            for (k, v) in &flat {
                println!("  {k:<width$}  {v}");
            }
        }
        MetricsCommand::Diff { a, b, json } => {
            let (ra, rb) = (find_run(cache_dir, Some(a))?, find_run(cache_dir, Some(b))?);
            let rows = metrics::diff(
                &metrics::flat(&ra.step_metrics()),
                &metrics::flat(&rb.step_metrics()),
            );
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
                return Ok(());
            }
            let width = rows
                .iter()
                .map(|r| r.metric.len())
                .max()
                .unwrap_or(6)
                .max(6);
            println!(
                "{:<width$}  {:>14}  {:>14}  {:>12}",
                "metric",
                &ra.run_id[..ra.run_id.len().min(14)],
                &rb.run_id[..rb.run_id.len().min(14)],
                "delta"
            );
            for r in rows {
                let delta = r.delta.map_or(
                    if r.a == r.b {
                        String::new()
                    } else {
                        "changed".into()
                    },
                    |d| format!("{d:+.6}"),
                );
                println!(
                    "{:<width$}  {:>14}  {:>14}  {:>12}",
                    r.metric,
                    r.a.as_deref().unwrap_or("-"),
                    r.b.as_deref().unwrap_or("-"),
                    delta
                );
            }
        }
    }
    Ok(())
}

pub fn schema(args: &SchemaArgs) -> Result<(), Failure> {
    let text = workflow::schema::workflow_schema_text();
    match &args.write {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}
