//! `run`, `check`, `plan`, `why`, `validate`.

use std::io::IsTerminal;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Failure, WorkflowArgs};
use crate::cache::Cache;
use crate::cache::runs::{RunRecord, StepStatus};
use crate::exec::{self, Decision, OutputMode, Plan, RunOptions};
use crate::graph::Dag;
use crate::workflow::{self, LoadOptions, Workflow};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    wf: WorkflowArgs,
    /// Steps to run (with their ancestors); a `foreach` step's name selects all its copies.
    steps: Vec<String>,
    /// Most steps at once (default: number of CPU cores).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// CPU threads to share among steps (default: number of cores).
    #[arg(long)]
    cpus: Option<usize>,
    /// GPUs to share among steps (default: detected).
    #[arg(long)]
    gpus: Option<usize>,
    /// Memory to share among steps, e.g. 16G (default: physical memory).
    #[arg(long)]
    mem: Option<String>,
    /// After a failure, still run the steps that do not depend on it.
    #[arg(short = 'k', long)]
    keep_going: bool,
    /// Write the run report (JSON: per step name, key, status, reason, seconds, out, metrics).
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Print only errors and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Fail (exit 1) when the run takes longer than the workflow's `budget:`.
    #[arg(long)]
    within_budget: bool,
    /// Run built-in steps as threads of this process instead of each in its own process (no
    /// crash isolation: a panic or an out-of-memory kill takes the whole run down).
    #[arg(long)]
    in_process: bool,
    /// Where steps without their own `executor:` run (over the workflow's `executor:`).
    #[arg(long, value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// Cluster settings for `executor: slurm`: a YAML file with `partition`, `account`, `qos`,
    /// `time`, `sbatch` (more flags) and `poll_seconds`.
    #[arg(long, value_name = "FILE", env = "DNAFLOW_CLUSTER")]
    cluster: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    wf: WorkflowArgs,
    /// Steps to plan (with their ancestors).
    steps: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct WhyArgs {
    #[command(flatten)]
    wf: WorkflowArgs,
    /// The step to explain.
    step: String,
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Workflow YAML files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Check with this profile's parameter values applied.
    #[arg(long)]
    profile: Option<String>,
    /// Check with a parameter overridden: `--set vocab=4096` (repeatable; after --profile).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = super::parse_set)]
    sets: Vec<(String, String)>,
    /// Check with every model step on this device (cpu, cuda, cuda:N, auto).
    #[arg(long, value_parser = super::parse_device)]
    device: Option<String>,
}

/// The cache as it is, for commands that only read it (nothing is created).
pub(super) fn read_cache(dir: &Path) -> Result<Cache, Failure> {
    Cache::at(dir)
        .with_context(|| format!("cannot read the cache at {}", dir.display()))
        .map_err(Failure::Other)
}

/// Load, check the graph, and resolve targets.
pub(super) fn load(
    args: &WorkflowArgs,
    targets: &[String],
) -> Result<(Workflow, Dag, Vec<usize>), Failure> {
    let opts = LoadOptions {
        profile: args.profile.clone(),
        sets: args.sets.clone(),
        device: args.device.clone(),
    };
    let wf = workflow::load(&args.file, &opts)?;
    let dag = Dag::new(&wf).map_err(Failure::Workflow)?;
    let mut selected = Vec::new();
    for t in targets {
        selected.extend(wf.select(t).map_err(anyhow::Error::msg)?);
    }
    Ok((wf, dag, selected))
}

fn open_cache(dir: &Path) -> Result<Cache, Failure> {
    Cache::open(dir)
        .with_context(|| format!("cannot open the cache at {}", dir.display()))
        .map_err(Failure::Other)
}

fn plan<'w>(
    wf: &'w Workflow,
    dag: Dag,
    targets: &[usize],
    cache: &Cache,
) -> Result<Plan<'w>, Failure> {
    Plan::new(wf, dag, targets, cache).map_err(|e| match e {
        exec::plan::PlanError::Input(d) => Failure::Workflow(vec![d]),
        other => Failure::Other(other.into()),
    })
}

pub fn run(cache_dir: &Path, args: &RunArgs, check: bool) -> Result<(), Failure> {
    let (wf, dag, targets) = load(&args.wf, &args.steps)?;
    let cache = open_cache(cache_dir)?;
    exec::install_interrupt_handler();
    // Hold the cache from planning on, so a `gc` cannot remove what the plan found cached.
    let _lock = cache.lock_shared()?;
    let plan = plan(&wf, dag, &targets, &cache)?;
    let (cpus, gpus, mem_mb) = exec::detect_capacity();
    let mem_mb = match &args.mem {
        Some(m) => workflow::parse_mem_mb(m)
            .ok_or_else(|| anyhow::anyhow!("--mem {m}: expected a size like 16G"))?,
        None => mem_mb,
    };
    let output = if args.quiet {
        OutputMode::Quiet
    } else if std::io::stderr().is_terminal() {
        OutputMode::Live
    } else {
        OutputMode::Plain
    };
    let opts = RunOptions {
        jobs: args.jobs.unwrap_or(cpus),
        cpus: args.cpus.unwrap_or(cpus),
        gpus: args.gpus.unwrap_or(gpus),
        mem_mb,
        keep_going: args.keep_going,
        output,
        executor: args.executor.as_deref().map(|e| match e {
            "slurm" => crate::workflow::syntax::ExecutorName::Slurm,
            _ => crate::workflow::syntax::ExecutorName::Local,
        }),
        slurm: match &args.cluster {
            Some(f) => exec::slurm::SlurmSettings::read(f).map_err(|e| anyhow::anyhow!(e))?,
            None => Default::default(),
        },
        step_exec: if args.in_process {
            None
        } else {
            Some(std::env::current_exe().context("finding the dnaflow binary to run steps with")?)
        },
    };
    let record = exec::run(&plan, &cache, &opts).map_err(|e| match e {
        exec::ExecError::Resources(d) => Failure::Workflow(vec![d]),
        other => Failure::Other(other.into()),
    })?;
    if let Some(path) = &args.report {
        crate::cache::runs::write_json_atomic(path, &record)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    print_failures(&record);
    let expectations_ok = print_expectations(&record, check);
    print_summary(&record, &wf);
    let budget_ok = !args.within_budget || within_budget(&record, &wf)?;
    match record.status.as_str() {
        "interrupted" => Err(Failure::Exit(130)),
        "failed" => Err(Failure::Exit(1)),
        _ if check && !expectations_ok => Err(Failure::Exit(1)),
        _ if !budget_ok => Err(Failure::Exit(1)),
        _ => Ok(()),
    }
}

/// Whether the run kept to the workflow's `budget:`; says which, and by how much.
fn within_budget(record: &RunRecord, wf: &Workflow) -> Result<bool, Failure> {
    let Some(budget) = wf.budget else {
        return Err(Failure::Other(anyhow::anyhow!(
            "{}: --within-budget, but the workflow sets no `budget:` (add e.g. `budget: 3m`)",
            wf.source.path.display()
        )));
    };
    let ok = record.seconds <= budget.as_secs_f64();
    eprintln!(
        "{}: {:.1}s of a {}s budget: {}",
        wf.name,
        record.seconds,
        budget.as_secs(),
        if ok { "within budget" } else { "OVER BUDGET" }
    );
    Ok(ok)
}

fn print_summary(record: &RunRecord, wf: &Workflow) {
    let count = |st: StepStatus| record.steps.iter().filter(|s| s.status == st).count();
    eprintln!(
        "{}: {} steps: {} ran, {} cached, {} failed, {} skipped in {:.2}s (run {})",
        wf.name,
        record.steps.len(),
        count(StepStatus::Ran),
        count(StepStatus::Cached),
        count(StepStatus::Failed),
        count(StepStatus::Skipped),
        record.seconds,
        record.run_id
    );
}

fn print_failures(record: &RunRecord) {
    for s in record
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
    {
        eprintln!(
            "\nerror: step `{}` failed: {}",
            s.name,
            s.error.as_deref().unwrap_or("unknown error")
        );
        if let Some(tail) = &s.log_tail {
            eprintln!("--- last lines of its log ---");
            for line in tail.lines() {
                eprintln!("  | {line}");
            }
        }
        if let Some(err) = &s.stderr {
            eprintln!("full log: {}", err.display());
        }
    }
}

/// Print expectation results (failures always, everything for `check`). True when all hold.
fn print_expectations(record: &RunRecord, all: bool) -> bool {
    let rows: Vec<(&str, &crate::metrics::ExpectResult)> = record
        .steps
        .iter()
        .flat_map(|s| s.expect.iter().map(move |e| (s.name.as_str(), e)))
        .collect();
    let failed = rows.iter().filter(|(_, e)| !e.ok).count();
    if rows.is_empty() || (!all && failed == 0) {
        return failed == 0;
    }
    let width = rows
        .iter()
        .map(|(s, e)| s.len() + e.metric.len() + 1)
        .max()
        .unwrap_or(10)
        .max(6);
    println!(
        "\n{:<width$}  {:>14}  {:<22}  result",
        "metric", "value", "expected"
    );
    for (step, e) in &rows {
        if !all && e.ok {
            continue;
        }
        let value = e
            .value
            .as_ref()
            .map_or("missing".to_string(), |v| match v.as_f64() {
                Some(f) => format!("{f:.6}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string(),
                None => v.to_string(),
            });
        println!(
            "{:<width$}  {:>14}  {:<22}  {}",
            format!("{step}/{}", e.metric),
            value,
            e.bound,
            if e.ok { "ok" } else { "FAILED" }
        );
    }
    if failed > 0 {
        println!("{failed} of {} expectations failed", rows.len());
    } else {
        println!("all {} expectations hold", rows.len());
    }
    failed == 0
}

pub fn plan_cmd(cache_dir: &Path, args: &PlanArgs) -> Result<(), Failure> {
    let (wf, dag, targets) = load(&args.wf, &args.steps)?;
    // A dry run writes nothing: no cache folders (a missing cache plans as an empty one).
    let cache = read_cache(cache_dir)?;
    let plan = plan(&wf, dag, &targets, &cache)?;
    if args.json {
        let steps: Vec<serde_json::Value> = plan
            .order
            .iter()
            .map(|&i| {
                serde_json::json!({
                    "name": wf.steps[i].name,
                    "key": plan.keys[i],
                    "action": if plan.decisions[i] == Decision::Cached { "cached" } else { "run" },
                    "reason": plan.reasons[i],
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"workflow": wf.name, "steps": steps}))
                .expect("json")
        );
        return Ok(());
    }
    let width = plan
        .order
        .iter()
        .map(|&i| wf.steps[i].name.len())
        .max()
        .unwrap_or(4);
    // One buffered writer: stdout is line-buffered, a write per line for 100,000 steps.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut print = || -> std::io::Result<()> {
        writeln!(
            out,
            "plan for {} ({}): {} steps, {} to run, {} cached",
            wf.name,
            wf.source.path.display(),
            plan.order.len(),
            plan.to_run(),
            plan.order.len() - plan.to_run()
        )?;
        for &i in &plan.order {
            match plan.decisions[i] {
                Decision::Cached => writeln!(out, "  cached  {}", wf.steps[i].name)?,
                Decision::Run => writeln!(
                    out,
                    "  run     {:<width$}  {}",
                    wf.steps[i].name, plan.reasons[i]
                )?,
            }
        }
        out.flush()
    };
    print().context("cannot write the plan")?;
    Ok(())
}

pub fn why(cache_dir: &Path, args: &WhyArgs) -> Result<(), Failure> {
    let (wf, dag, _) = load(&args.wf, &[])?;
    let targets = wf.select(&args.step).map_err(anyhow::Error::msg)?;
    let cache = read_cache(cache_dir)?;
    let plan = plan(&wf, dag, &targets, &cache)?;
    let mut seen = std::collections::HashSet::new();
    for &i in &targets {
        explain(&plan, &cache, i, 0, &mut seen);
    }
    Ok(())
}

fn explain(
    plan: &Plan,
    cache: &Cache,
    i: usize,
    depth: usize,
    seen: &mut std::collections::HashSet<usize>,
) {
    let wf = plan.wf;
    if !seen.insert(i) {
        return;
    }
    let pad = "  ".repeat(depth);
    let name = &wf.steps[i].name;
    let key = &plan.keys[i];
    if plan.decisions[i] == Decision::Cached {
        println!(
            "{pad}`{name}` is cached (key {}): it would not run",
            &key[..12]
        );
        return;
    }
    println!(
        "{pad}`{name}` would run (key {}): {}",
        &key[..12],
        plan.reasons[i]
    );
    let Some((old_key, changes)) = plan.changes(i, cache) else {
        return;
    };
    if changes.is_empty() {
        return;
    }
    println!(
        "{pad}  changed since the last run (key {}):",
        &old_key[..old_key.len().min(12)]
    );
    for c in &changes {
        println!("{pad}  - {c}");
    }
    // Follow changed upstream steps to the change that started it.
    for c in &changes {
        if let Some(up) = c
            .what
            .strip_prefix("upstream `")
            .and_then(|s| s.strip_suffix('`'))
            && c.new.is_some()
            && let Some(j) = wf.index_of(up)
        {
            explain(plan, cache, j, depth + 2, seen);
        }
    }
}

/// Model steps whose `device:` (or `--device`) this binary cannot use: built without CUDA or
/// wgpu. What the machine has (a GPU, a driver) is checked when the step runs.
fn devices_this_binary_lacks(wf: &Workflow) -> Vec<crate::diag::Diagnostic> {
    use crate::models::{CUDA_BUILT, DeviceSpec, WGPU_BUILT};
    use crate::workflow::{Action, Part};
    let mut out = Vec::new();
    for step in &wf.steps {
        let Action::Uses { with, .. } = &step.action else {
            continue;
        };
        let rendered = with.render(&mut |p| match p {
            Part::Text(t) | Part::Param { text: t, .. } => vec![t.clone()],
            Part::Out | Part::Output { .. } => vec!["/upstream".into()],
        });
        let Some(written) = rendered.get("device").and_then(|d| d.as_str()) else {
            continue;
        };
        let device = wf.device.as_deref().unwrap_or(written);
        let (needs, built, feature) = match DeviceSpec::parse(device) {
            Ok(DeviceSpec::Cuda(_)) => ("CUDA", CUDA_BUILT, "cuda"),
            Ok(DeviceSpec::Wgpu) => ("wgpu (Vulkan)", WGPU_BUILT, "wgpu"),
            _ => continue,
        };
        if !built {
            out.push(
                crate::diag::Diagnostic::file(
                    &wf.source.path,
                    format!(
                        "step `{}` runs on `device: {device}`, but this dnaflow was built without {needs}",
                        step.name
                    ),
                )
                .with_help(format!(
                    "build with `cargo install --path . --features {feature}` (docs/gpu.md), or \
                     check it for this machine with `--device cpu`"
                )),
            );
        }
    }
    out
}

pub fn validate(args: &ValidateArgs) -> Result<(), Failure> {
    let mut problems = Vec::new();
    for file in &args.files {
        let wf_args = WorkflowArgs {
            file: file.clone(),
            profile: args.profile.clone(),
            sets: args.sets.clone(),
            device: args.device.clone(),
        };
        match load(&wf_args, &[]) {
            Ok((wf, _, _)) => {
                let unusable = devices_this_binary_lacks(&wf);
                if unusable.is_empty() {
                    println!(
                        "ok: {} ({}): {} steps",
                        file.display(),
                        wf.name,
                        wf.steps.len()
                    );
                }
                problems.extend(unusable);
            }
            Err(Failure::Workflow(ds)) => problems.extend(ds),
            Err(other) => return Err(other),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Workflow(problems))
    }
}
