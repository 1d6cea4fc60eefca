//! The executor: runs a [`Plan`] with a ready queue, within `--jobs` and declared resources,
//! committing each step's outputs to the cache and writing the run record.

pub mod isolated;
pub mod plan;
pub mod progress;
pub mod publish;
pub mod shell;
pub mod slurm;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use crate::cache::runs::{self, RunRecord, StepRecord, StepStatus};
use crate::cache::{Cache, CacheError, Manifest};
use crate::diag::Diagnostic;
use crate::metrics;
use crate::steps::{StepContext, StepError};
use crate::workflow::syntax::ExecutorName;
use crate::workflow::{Action, Step, Workflow};
use isolated::AttemptError;
pub use plan::{Decision, Plan};
pub use progress::OutputMode;
pub use shell::{CANCELLED, install_interrupt_handler};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Most steps at once.
    pub jobs: usize,
    /// CPU threads to share among steps.
    pub cpus: usize,
    /// GPUs to share among steps (indices 0..gpus).
    pub gpus: usize,
    /// Memory to share among steps, MiB.
    pub mem_mb: u64,
    /// After a failure, go on with steps that do not depend on it.
    pub keep_going: bool,
    pub output: OutputMode,
    /// The `dnaflow` binary that runs each built-in step in its own process
    /// (`dnaflow step-exec`); `None` runs them as threads of this process (no crash isolation:
    /// for test harnesses that are not the dnaflow binary).
    pub step_exec: Option<PathBuf>,
    /// `--executor`: where steps without their own `executor:` run (over the workflow's).
    pub executor: Option<ExecutorName>,
    /// Cluster settings for `executor: slurm` (`--cluster FILE`).
    pub slurm: slurm::SlurmSettings,
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Resources(Diagnostic),
    #[error("{0}")]
    Executor(String),
}

/// Machine capacity: cores, GPUs (from the driver's /proc entries or CUDA_VISIBLE_DEVICES), memory.
pub fn detect_capacity() -> (usize, usize, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gpus = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').filter(|s| !s.trim().is_empty()).count(),
        Ok(_) => 0,
        Err(_) => std::fs::read_dir("/proc/driver/nvidia/gpus").map_or(0, |d| d.count()),
    };
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    (cpus, gpus, mem_mb)
}

/// What a worker reports back.
struct Outcome {
    index: usize,
    record: StepRecord,
    gpus: Vec<usize>,
}

/// Shared state for workers.
struct Exec<'a> {
    wf: &'a Workflow,
    step_exec: Option<&'a Path>,
    /// `--executor`, and the Slurm executor when any step to run uses it.
    executor: Option<ExecutorName>,
    slurm: Option<slurm::Slurm>,
    cache: &'a Cache,
    keys: &'a [String],
    recipes: &'a [Option<crate::cache::Recipe>],
    log_dir: PathBuf,
    /// Live spinners of running steps (terminal output only), for steps' status lines.
    bars: std::sync::Mutex<std::collections::HashMap<usize, indicatif::ProgressBar>>,
}

/// Copy a finished step's `publish:` outputs out of the cache; a failure to publish fails the
/// step, with the reason.
fn publish_outputs(
    wf: &Workflow,
    cache: &Cache,
    key: &str,
    i: usize,
    mut rec: StepRecord,
    progress: &progress::Progress,
) -> StepRecord {
    let step = &wf.steps[i];
    if step.publish.is_empty() || !matches!(rec.status, StepStatus::Ran | StepStatus::Cached) {
        return rec;
    }
    match publish::publish(wf, cache, key, step) {
        Ok(done) => {
            for (output, dest) in done {
                progress.note(&format!(
                    "  published {}.{output} → {}",
                    step.name,
                    dest.display()
                ));
            }
        }
        Err(e) => {
            rec.status = StepStatus::Failed;
            rec.error = Some(e);
        }
    }
    rec
}

/// Copy the workflow's `publish:` outputs once every step of the run has succeeded; says what
/// went where (and what was not in the run), and whether it worked.
fn publish_run(plan: &Plan, cache: &Cache, progress: &progress::Progress) -> bool {
    let mut in_run = vec![false; plan.wf.steps.len()];
    for &i in &plan.order {
        in_run[i] = true;
    }
    match publish::publish_workflow(plan.wf, cache, &plan.keys, &in_run) {
        Ok(publish::Published { done, left_out }) => {
            for (name, dest) in done {
                progress.note(&format!("published {name} → {}", dest.display()));
            }
            if !left_out.is_empty() {
                progress.note(&format!(
                    "not published (not part of this run): {}",
                    left_out.join(", ")
                ));
            }
            true
        }
        Err(e) => {
            // Said even with --quiet: it is why the run failed.
            eprintln!("error: the workflow's outputs were not published: {e}");
            false
        }
    }
}

/// Run the plan; always writes a run record, also after failures and interrupts.
pub fn run(plan: &Plan, cache: &Cache, opts: &RunOptions) -> Result<RunRecord, ExecError> {
    let wf = plan.wf;
    let remote = |i: usize| on_slurm(wf, opts.executor, i);
    check_resources(plan, opts, remote)?;
    let _lock = cache.lock_shared()?;
    let started = std::time::SystemTime::now();
    let clock = Instant::now();
    let run_id = runs::new_run_id();
    let slurm = if plan
        .order
        .iter()
        .any(|&i| plan.decisions[i] == Decision::Run && remote(i))
    {
        if opts.step_exec.is_none() {
            return Err(ExecError::Executor(
                "`executor: slurm` runs steps as `dnaflow step-exec` jobs; it cannot be combined \
                 with --in-process"
                    .into(),
            ));
        }
        Some(slurm::Slurm::new(opts.slurm.clone()).map_err(ExecError::Executor)?)
    } else {
        None
    };
    let exec = Exec {
        wf,
        step_exec: opts.step_exec.as_deref(),
        executor: opts.executor,
        slurm,
        cache,
        keys: &plan.keys,
        recipes: &plan.recipes,
        log_dir: runs::workflow_dir(&cache.runs(), &wf.name).join(&run_id),
        bars: Default::default(),
    };

    let n = wf.steps.len();
    let mut records: Vec<Option<StepRecord>> = vec![None; n];
    let mut progress = progress::Progress::new(opts.output, plan.order.len());
    for &i in &plan.order {
        if plan.decisions[i] == Decision::Cached {
            let rec = cached_record(plan, cache, i, "cached");
            let rec = publish_outputs(wf, cache, &plan.keys[i], i, rec, &progress);
            progress.finished(
                i,
                &wf.steps[i].name,
                rec.status,
                0.0,
                rec.error.as_deref().unwrap_or(&rec.reason),
            );
            records[i] = Some(with_expectations(&wf.steps[i], rec));
        }
    }

    let mut launched = vec![false; n];
    let mut free_cpus = opts.cpus.max(1);
    let mut free_gpus: Vec<usize> = (0..opts.gpus).collect();
    let mut free_mem = opts.mem_mb;
    let mut running = 0usize;
    let mut stop_reason: Option<String> = None;
    let (tx, rx) = mpsc::channel::<Outcome>();
    let machine = machine();
    let record_of = |steps: Vec<StepRecord>, status: &str, running: Vec<String>| RunRecord {
        run_id: run_id.clone(),
        workflow: wf.name.clone(),
        file: std::path::absolute(&wf.source.path).unwrap_or_else(|_| wf.source.path.clone()),
        profile: wf.profile.clone(),
        params: wf.params.clone(),
        started: humantime::format_rfc3339_millis(started).to_string(),
        seconds: clock.elapsed().as_secs_f64(),
        status: status.into(),
        dnaflow_version: env!("CARGO_PKG_VERSION").into(),
        steps,
        machine: machine.clone(),
        running,
    };
    // While steps run, the record is rewritten (at most once a second) for reports and
    // `dnaflow serve` to follow; a run with nothing to compute writes only its final record.
    let mut last_snapshot: Option<Instant> = None;
    let mut snapshot = |records: &[Option<StepRecord>], launched: &[bool]| {
        if last_snapshot.is_some_and(|t| t.elapsed().as_secs_f64() < 1.0) {
            return;
        }
        last_snapshot = Some(Instant::now());
        let done: Vec<StepRecord> = plan
            .order
            .iter()
            .filter_map(|&i| {
                records[i].clone().map(|mut r| {
                    r.after = upstream(wf, i);
                    r
                })
            })
            .collect();
        let running = plan
            .order
            .iter()
            .filter(|&&i| launched[i] && records[i].is_none())
            .map(|&i| wf.steps[i].name.clone())
            .collect();
        if let Err(e) = runs::write(&cache.runs(), &record_of(done, "running", running)) {
            tracing::warn!("could not write the live run record: {e}");
        }
    };

    std::thread::scope(|scope| {
        loop {
            if CANCELLED.load(Ordering::SeqCst) && stop_reason.is_none() {
                stop_reason = Some("interrupted before it started".into());
            }
            // Skip steps whose upstream failed; launch ready ones that fit.
            for &i in &plan.order {
                if records[i].is_some() || launched[i] {
                    continue;
                }
                let step = &wf.steps[i];
                if let Some(&bad) = step.deps.iter().find(|&&d| {
                    records[d].as_ref().is_some_and(|r| {
                        matches!(r.status, StepStatus::Failed | StepStatus::Skipped)
                    })
                }) {
                    let reason = format!("upstream `{}` did not finish", wf.steps[bad].name);
                    let rec = skipped(plan, i, reason);
                    progress.finished(i, &step.name, StepStatus::Skipped, 0.0, &rec.reason);
                    records[i] = Some(rec);
                    continue;
                }
                if stop_reason.is_some() {
                    continue;
                }
                let ready = step.deps.iter().all(|&d| records[d].is_some());
                let need = &step.resources;
                // A Slurm job takes the cluster's resources, not this machine's.
                let here = !exec.remote(i);
                let cpus = if here {
                    (need.cpus as usize).min(opts.cpus.max(1))
                } else {
                    need.cpus as usize
                };
                let fits = running < opts.jobs.max(1)
                    && (!here
                        || cpus <= free_cpus
                            && need.gpus as usize <= free_gpus.len()
                            // Unknown machine memory (0) does not limit.
                            && (need.mem_mb == 0 || opts.mem_mb == 0 || need.mem_mb <= free_mem));
                if !ready || !fits {
                    continue;
                }
                launched[i] = true;
                running += 1;
                let gpus: Vec<usize> = if here {
                    free_cpus -= cpus;
                    free_mem = free_mem.saturating_sub(need.mem_mb);
                    free_gpus.drain(..need.gpus as usize).collect()
                } else {
                    Vec::new()
                };
                if let Some(bar) = progress.started(i, &step.name) {
                    exec.bars.lock().expect("bars lock").insert(i, bar);
                }
                let tx = tx.clone();
                let exec = &exec;
                let reason = plan.reasons[i].clone();
                scope.spawn(move || {
                    // A panic must still report back, or the loop below would wait forever.
                    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        exec.step(i, cpus, &gpus, reason.clone())
                    }))
                    .unwrap_or_else(|_| {
                        let mut r = StepRecord::new(
                            &exec.wf.steps[i].name,
                            &exec.keys[i],
                            StepStatus::Failed,
                            reason,
                        );
                        r.error = Some(
                            "internal error while running the step (please report this)".into(),
                        );
                        r
                    });
                    let _ = tx.send(Outcome {
                        index: i,
                        record,
                        gpus,
                    });
                });
            }
            if running == 0 {
                break;
            }
            snapshot(&records, &launched);
            // In a log, the running steps' status lines at a steady interval.
            let done = loop {
                match rx.recv_timeout(progress::tick_interval()) {
                    Ok(done) => break Some(done),
                    Err(mpsc::RecvTimeoutError::Timeout) => progress.tick(),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                }
            };
            let Some(done) = done else { break };
            running -= 1;
            let step = &wf.steps[done.index];
            if !exec.remote(done.index) {
                free_cpus += (step.resources.cpus as usize).min(opts.cpus.max(1));
                free_mem += step.resources.mem_mb;
            }
            free_gpus.extend(done.gpus);
            free_gpus.sort_unstable();
            let rec = publish_outputs(
                wf,
                cache,
                &plan.keys[done.index],
                done.index,
                done.record,
                &progress,
            );
            let rec = with_expectations(step, rec);
            progress.finished(
                done.index,
                &step.name,
                rec.status,
                rec.seconds,
                rec.error.as_deref().unwrap_or(&rec.reason),
            );
            if rec.status == StepStatus::Failed && !opts.keep_going && stop_reason.is_none() {
                stop_reason = Some(format!(
                    "not started: the run stopped after `{}` failed (--keep-going runs independent steps)",
                    step.name
                ));
            }
            records[done.index] = Some(rec);
        }
    });
    progress.done();

    // Whatever never started was stopped by a failure or an interrupt.
    for &i in &plan.order {
        if records[i].is_none() {
            let reason = stop_reason.clone().unwrap_or_else(|| "not started".into());
            records[i] = Some(skipped(plan, i, reason));
        }
    }
    // Sized up front: a filtered collect grows by doubling, copying (and the kernel zeroing)
    // the records of a 100,000-step run several times over.
    let mut steps: Vec<StepRecord> = Vec::with_capacity(plan.order.len());
    steps.extend(plan.order.iter().filter_map(|&i| {
        records[i].take().map(|mut r| {
            r.after = upstream(wf, i);
            r
        })
    }));
    let mut status = if CANCELLED.load(Ordering::SeqCst) {
        "interrupted"
    } else if steps
        .iter()
        .any(|s| matches!(s.status, StepStatus::Failed | StepStatus::Skipped))
    {
        "failed"
    } else {
        "ok"
    };
    if status == "ok" && !publish_run(plan, cache, &progress) {
        status = "failed";
    }
    let record = record_of(steps, status, Vec::new());
    let path = runs::write(&cache.runs(), &record).map_err(|e| CacheError::Io {
        path: cache.runs(),
        source: e,
    })?;
    tracing::info!(record = %path.display(), status = %record.status, "run recorded");
    Ok(record)
}

/// The machine a run is on, for its record: what `dnaflow env` would say about compute.
fn machine() -> serde_json::Value {
    let (cpus, gpus, mem) = detect_capacity();
    let backends = crate::models::device::compiled_backends();
    serde_json::json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpu_threads": cpus,
        "memory_mib": mem,
        "gpus": gpus,
        "backends": backends,
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    })
}

/// Whether step `i` runs as a Slurm job: its own `executor:`, else `--executor` (`cli`),
/// else the workflow's.
fn on_slurm(wf: &Workflow, cli: Option<ExecutorName>, i: usize) -> bool {
    wf.steps[i].executor.or(cli).or(wf.executor) == Some(ExecutorName::Slurm)
}

/// The names of the steps a step reads from.
fn upstream(wf: &Workflow, i: usize) -> Vec<String> {
    wf.steps[i]
        .deps
        .iter()
        .map(|&d| wf.steps[d].name.clone())
        .collect()
}

/// Refuse a plan whose steps can never fit the machine.
fn check_resources(
    plan: &Plan,
    opts: &RunOptions,
    remote: impl Fn(usize) -> bool,
) -> Result<(), ExecError> {
    for &i in &plan.order {
        let step = &plan.wf.steps[i];
        // Slurm judges a job's request against the cluster (see slurm::IMPOSSIBLE).
        if plan.decisions[i] != Decision::Run || remote(i) {
            continue;
        }
        let need = &step.resources;
        let problem = if need.nodes > 1 {
            Some((
                format!(
                    "step `{}` spreads its ranks over {} nodes, but this run executes it on \
                     this machine",
                    step.name, need.nodes
                ),
                "run it with `executor: slurm` (or `--executor slurm`), or remove `nodes`",
            ))
        } else if need.gpus as usize > opts.gpus {
            Some((
                format!(
                    "step `{}` needs {} GPU(s), but {} are available",
                    step.name, need.gpus, opts.gpus
                ),
                "run it on a machine with GPUs, pass `--gpus N`, or lower `resources.gpus` (e.g. with a profile)",
            ))
        } else if opts.mem_mb > 0 && need.mem_mb > opts.mem_mb {
            Some((
                format!(
                    "step `{}` needs {} MiB of memory, but {} MiB are available",
                    step.name, need.mem_mb, opts.mem_mb
                ),
                "lower `resources.mem`, or pass `--mem SIZE` if the machine really has more",
            ))
        } else {
            None
        };
        if let Some((msg, help)) = problem {
            return Err(ExecError::Resources(
                Diagnostic::at(&plan.wf.source, need.span, msg).with_help(help),
            ));
        }
    }
    Ok(())
}

fn with_expectations(step: &Step, mut rec: StepRecord) -> StepRecord {
    if matches!(rec.status, StepStatus::Ran | StepStatus::Cached) {
        rec.expect = step
            .expect
            .iter()
            .map(|(m, e)| metrics::check(&rec.metrics, &m.value, e))
            .collect();
    }
    rec
}

fn base_record(plan: &Plan, i: usize, status: StepStatus, reason: String) -> StepRecord {
    StepRecord::new(&plan.wf.steps[i].name, &plan.keys[i], status, reason)
}

fn skipped(plan: &Plan, i: usize, reason: String) -> StepRecord {
    base_record(plan, i, StepStatus::Skipped, reason)
}

/// A record for a step whose object is in the cache; metrics from the last run when it had the
/// same key (no I/O), else from the object's manifest.
fn cached_record(plan: &Plan, cache: &Cache, i: usize, reason: &str) -> StepRecord {
    let key = &plan.keys[i];
    let mut rec = base_record(plan, i, StepStatus::Cached, reason.into());
    rec.out = Some(cache.out_dir(key));
    let prev = plan.previous[i]
        .as_ref()
        .filter(|s| &s.key == key && s.status != StepStatus::Failed);
    rec.metrics = match prev {
        Some(p) => p.metrics.clone(),
        None => cache
            .manifest(key)
            .map(|m| m.metrics)
            .unwrap_or(Value::Object(Default::default())),
    };
    rec
}

impl Exec<'_> {
    /// Whether step `i` runs as a Slurm job: its own `executor:`, else `--executor`, else the
    /// workflow's.
    fn remote(&self, i: usize) -> bool {
        on_slurm(self.wf, self.executor, i)
    }

    /// Compute one step (with retries) and commit it; never panics outward.
    fn step(&self, i: usize, cpus: usize, gpus: &[usize], reason: String) -> StepRecord {
        let step = &self.wf.steps[i];
        let key = &self.keys[i];
        let clock = Instant::now();
        let mut rec = StepRecord::new(&step.name, key, StepStatus::Ran, reason);
        let fail = |mut rec: StepRecord, msg: String| {
            rec.status = StepStatus::Failed;
            rec.error = Some(msg);
            rec.seconds = clock.elapsed().as_secs_f64();
            rec
        };
        // Another run may be computing the same key: wait for it, then reuse its result.
        tracing::debug!(step = %step.name, key = %key, "locking key");
        let _key_lock = match self.cache.lock_key(key) {
            Ok(l) => l,
            Err(e) => return fail(rec, e.to_string()),
        };
        if self.cache.has(key) {
            rec.status = StepStatus::Cached;
            rec.reason = "cached (computed by a concurrent run)".into();
            rec.out = Some(self.cache.out_dir(key));
            rec.metrics = self
                .cache
                .manifest(key)
                .map(|m| m.metrics)
                .unwrap_or_default();
            return rec;
        }
        if let Some(r) = self.recipe(i)
            && let Err(e) = self.cache.save_recipe(key, r)
        {
            return fail(rec, e.to_string());
        }
        // A training run killed on another number of ranks left a checkpoint under its own
        // key: this run resumes from it.
        if let (Action::Uses { kind, .. }, Some(r)) = (&step.action, self.recipe(i))
            && crate::steps::RANKED_KINDS.contains(&kind.name)
        {
            match self
                .cache
                .adopt_checkpoint(key, &r.key_without(crate::steps::RANK_LAUNCH_PARAMS))
            {
                Ok(Some(from)) => tracing::info!(
                    step = %step.name,
                    from = %from,
                    "resuming from the checkpoint of the same run on another number of ranks"
                ),
                Ok(None) => {}
                Err(e) => return fail(rec, e.to_string()),
            }
        }
        let safe = step.name.replace(['/', '\0'], "_");
        let (out_path, err_path) = (
            self.log_dir.join(format!("{safe}.out")),
            self.log_dir.join(format!("{safe}.err")),
        );
        rec.stdout = Some(out_path.clone());
        rec.stderr = Some(err_path.clone());
        let attempts = step.retries + 1;
        let mut last_error = String::new();
        let mut retry = true;
        for attempt in 1..=attempts {
            if !retry {
                break;
            }
            rec.attempts = attempt;
            if CANCELLED.load(Ordering::SeqCst) {
                last_error = "interrupted".into();
                break;
            }
            tracing::info!(step = %step.name, key = %key, attempt, cpus, gpus = ?gpus, "running");
            match self.attempt(i, cpus, gpus, &out_path, &err_path, attempt) {
                Ok(metrics) => {
                    tracing::info!(step = %step.name, seconds = clock.elapsed().as_secs_f64(), "committed");
                    rec.metrics = metrics;
                    rec.out = Some(self.cache.out_dir(key));
                    rec.seconds = clock.elapsed().as_secs_f64();
                    return rec;
                }
                Err(e) => {
                    let msg = self.name_outputs(e.message());
                    tracing::warn!(step = %step.name, attempt, of = attempts, "attempt failed: {msg}");
                    // A step that failed on its input fails the same way again.
                    retry = matches!(e, AttemptError::Transient(_));
                    if !retry && attempt < attempts {
                        tracing::info!(step = %step.name, "not retried: it failed on its input");
                    }
                    last_error = msg;
                }
            }
        }
        rec.log_tail = log_tail(&err_path).or_else(|| log_tail(&out_path));
        fail(rec, last_error)
    }

    /// `msg` with every path of a step's output in the cache written as the user knows it,
    /// `steps.NAME.OUTPUT`, so an error about rows of an upstream table names the step that
    /// made it rather than only `cache/objects/<key>/out/…`.
    fn name_outputs(&self, msg: &str) -> String {
        let mut known: Vec<(String, String)> = Vec::new();
        for (j, step) in self.wf.steps.iter().enumerate() {
            let Some(key) = self.keys.get(j) else {
                continue;
            };
            let dir = self.cache.out_dir(key);
            for (name, rel) in step.outputs.iter() {
                if !matches!(name.as_str(), "out" | "metrics") {
                    let path = dir.join(rel).display().to_string();
                    known.push((path, format!("`steps.{}.{name}`", step.name)));
                }
            }
            known.push((
                dir.display().to_string(),
                format!("the output of `steps.{}`", step.name),
            ));
        }
        // Longest first: a file's path before its directory's.
        known.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let mut msg = msg.to_string();
        for (path, name) in &known {
            if msg.contains(path.as_str()) {
                msg = msg.replace(path.as_str(), name);
            }
        }
        msg
    }

    /// How many processes an attempt of step `i` runs as: its data-parallel ranks when they
    /// run as processes (on GPUs, across nodes, as Slurm tasks, or asked for), else 1. A
    /// training step that names no `ranks` gets one per GPU it is granted (gpus × nodes).
    fn rank_processes(&self, i: usize, kind: &str, with: &mut Value) -> usize {
        let step = &self.wf.steps[i];
        let Some((ranks, how)) = crate::steps::rank_request(kind, with) else {
            return 1;
        };
        let (gpus, nodes) = (step.resources.gpus as usize, step.resources.nodes as usize);
        let ranks = match ranks {
            Some(r) => r,
            None if gpus > 0 => {
                let r = gpus * nodes;
                if let Some(map) = with.as_object_mut() {
                    map.insert("ranks".into(), r.into());
                }
                r
            }
            None => 1,
        };
        let processes = match how {
            crate::steps::RanksAs::Threads => false,
            crate::steps::RanksAs::Processes => true,
            crate::steps::RanksAs::Auto => self.remote(i) || gpus > 0 || nodes > 1,
        };
        if ranks > 1 && processes { ranks } else { 1 }
    }

    /// The Slurm job of one attempt of step `i`.
    fn job_spec<'a>(
        &'a self,
        i: usize,
        script: String,
        out: &'a Path,
        out_log: &'a Path,
        err_log: &'a Path,
    ) -> slurm::JobSpec<'a> {
        let step = &self.wf.steps[i];
        slurm::JobSpec {
            name: &step.name,
            script,
            dir: out.parent().unwrap_or(out),
            workdir: &self.wf.workdir,
            stdout: out_log,
            stderr: err_log,
            cpus: step.resources.cpus,
            mem_mb: step.resources.mem_mb,
            gpus: step.resources.gpus,
            nodes: step.resources.nodes,
            tasks: 1,
        }
    }

    fn recipe(&self, i: usize) -> Option<&crate::cache::Recipe> {
        self.recipes[i].as_ref()
    }

    /// One try: stage, run, check outputs, commit. Returns the metrics.
    fn attempt(
        &self,
        i: usize,
        cpus: usize,
        gpus: &[usize],
        out_log: &Path,
        err_log: &Path,
        attempt: u32,
    ) -> Result<Value, AttemptError> {
        let step = &self.wf.steps[i];
        let key = &self.keys[i];
        let clock = Instant::now();
        let staging = self
            .cache
            .stage(key)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        let result = self
            .execute(i, &staging.out, cpus, gpus, out_log, err_log, attempt)
            .and_then(|()| {
                for (name, rel) in step.outputs.iter() {
                    if !matches!(name.as_str(), "out" | "metrics")
                        && !staging.out.join(rel).exists()
                    {
                        return Err(AttemptError::Input(format!(
                            "declared output `{name}` ({rel}) was not written"
                        )));
                    }
                }
                // Name files as the step author knows them, not by their staging path.
                metrics::read(&staging.out.join("metrics.json")).map_err(|e| {
                    AttemptError::Input(e.replace(&staging.out.display().to_string(), "${{ out }}"))
                })
            });
        let metrics = match result {
            Ok(m) => m,
            Err(e) => {
                self.cache.discard(&staging);
                return Err(e);
            }
        };
        let manifest = Manifest {
            key: key.clone(),
            step: step.name.clone(),
            workflow: self.wf.name.clone(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            seconds: clock.elapsed().as_secs_f64(),
            recipe: self.recipe_of(i),
            metrics: metrics.clone(),
            files: Default::default(),
        };
        self.cache
            .commit(staging, manifest)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        Ok(metrics)
    }

    fn recipe_of(&self, i: usize) -> crate::cache::Recipe {
        self.recipes[i]
            .clone()
            .unwrap_or_else(|| panic!("step {i} was planned without a recipe"))
    }

    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        index: usize,
        out: &Path,
        cpus: usize,
        gpus: &[usize],
        out_log: &Path,
        err_log: &Path,
        attempt: u32,
    ) -> Result<(), AttemptError> {
        let step = &self.wf.steps[index];
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| AttemptError::Transient(format!("{}: {e}", self.log_dir.display())))?;
        let open = |p: &Path| {
            let mut f = File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if attempt > 1 {
                use std::io::Write;
                let _ = writeln!(f, "--- attempt {attempt} ---");
            }
            Ok::<File, String>(f)
        };
        let (stdout, stderr) = (
            open(out_log).map_err(AttemptError::Transient)?,
            open(err_log).map_err(AttemptError::Transient)?,
        );
        let mut resolve = |part: &crate::workflow::Part| {
            plan::real_part(self.wf, self.cache, self.keys, part, out)
        };
        let mut env: Vec<(String, String)> = vec![
            ("DNAFLOW_OUT".into(), out.display().to_string()),
            ("DNAFLOW_STEP".into(), step.name.clone()),
            ("DNAFLOW_THREADS".into(), cpus.to_string()),
            ("OMP_NUM_THREADS".into(), cpus.to_string()),
            ("RAYON_NUM_THREADS".into(), cpus.to_string()),
        ];
        if !gpus.is_empty() {
            let ids: Vec<String> = gpus.iter().map(usize::to_string).collect();
            env.push(("CUDA_VISIBLE_DEVICES".into(), ids.join(",")));
        }
        for (k, v) in &step.env {
            env.push((k.clone(), v.render(&mut resolve)));
        }
        match &step.action {
            Action::Run { command } => {
                let mut quote = |p: &crate::workflow::Part| match p {
                    // Parameters go in as written, like text (a value may hold several words).
                    crate::workflow::Part::Text(t)
                    | crate::workflow::Part::Param { text: t, .. } => {
                        vec![t.clone()]
                    }
                    other => resolve(other)
                        .iter()
                        .map(|s| crate::workflow::template::shell_quote(s))
                        .collect(),
                };
                let cmd = command.render(&mut quote);
                if let Some(slurm) = self.slurm.as_ref().filter(|_| self.remote(index)) {
                    drop((stdout, stderr));
                    let end = slurm
                        .run(&self.job_spec(
                            index,
                            slurm::shell_script(&cmd, &env),
                            out,
                            out_log,
                            err_log,
                        ))
                        .map_err(AttemptError::Input)?;
                    return match end.state.as_str() {
                        "COMPLETED" if end.code == 0 => Ok(()),
                        "FAILED" if end.signal == 0 => Err(AttemptError::Transient(format!(
                            "command exited with status {} (Slurm job {})",
                            end.code, end.id
                        ))),
                        _ => Err(job_lost(&end)),
                    };
                }
                // A command's failure may be flaky (`retries:` retries it).
                shell::run(&cmd, &self.wf.workdir, &env, stdout, stderr)
                    .map_err(AttemptError::Transient)
            }
            Action::Uses { kind, with } => {
                let mut value = with.render(&mut resolve);
                // File parameters reach the kind as absolute paths.
                for pointer in crate::steps::input_pointers(kind) {
                    crate::steps::strings_at_mut(&mut value, pointer, &mut |p| {
                        *p = self.wf.workdir.join(&*p).display().to_string();
                    });
                }
                let checkpoints = self.cache.checkpoint_dir(&self.keys[index]);
                let status = |msg: &str| {
                    if let Some(bar) = self.bars.lock().expect("bars lock").get(&index) {
                        bar.set_message(format!("{}  {msg}", step.name));
                    }
                };
                let ranks = self.rank_processes(index, kind.name, &mut value);
                let threads = (cpus / ranks).max(1);
                if ranks > 1 {
                    // Each rank process gets its share of the step's threads.
                    for (k, v) in env.iter_mut() {
                        if matches!(
                            k.as_str(),
                            "DNAFLOW_THREADS" | "OMP_NUM_THREADS" | "RAYON_NUM_THREADS"
                        ) {
                            *v = threads.to_string();
                        }
                    }
                }
                let job = isolated::Job {
                    kind: kind.name.to_string(),
                    with: value,
                    out: out.to_path_buf(),
                    workdir: self.wf.workdir.clone(),
                    threads,
                    checkpoints,
                    device: self.wf.device.clone(),
                    error: out.with_file_name("step-error.txt"),
                    status: out.with_file_name("step-status.txt"),
                    ranks,
                };
                if let (Some(slurm), Some(bin)) = (
                    self.slurm.as_ref().filter(|_| self.remote(index)),
                    self.step_exec,
                ) {
                    drop((stdout, stderr));
                    let job_path = isolated::write_job(&job)?;
                    let script = slurm::step_exec_script(bin, &job_path, &env, ranks > 1);
                    let mut spec = self.job_spec(index, script, out, out_log, err_log);
                    spec.tasks = ranks as u32;
                    let end = slurm.run(&spec).map_err(AttemptError::Input)?;
                    if ranks > 1 {
                        // Each rank wrote its own error file; srun's status says only that
                        // one failed.
                        let unknown = vec![(None, None); ranks];
                        let told = isolated::outcome(&job, &job_path, &unknown);
                        return match (end.state.as_str(), told) {
                            ("COMPLETED", Ok(())) if end.code == 0 => Ok(()),
                            ("COMPLETED" | "FAILED", Err(e)) => {
                                Err(AttemptError::Transient(format!(
                                    "{}{} (Slurm job {})",
                                    e.message(),
                                    srun_errors(err_log),
                                    end.id
                                )))
                            }
                            _ => Err(job_lost(&end)),
                        };
                    }
                    return match end.state.as_str() {
                        "COMPLETED" | "FAILED" if end.signal == 0 => {
                            isolated::outcome(&job, &job_path, &[(Some(end.code), None)])
                        }
                        _ => {
                            let _ = isolated::outcome(&job, &job_path, &[(Some(0), None)]);
                            Err(job_lost(&end))
                        }
                    };
                }
                match self.step_exec {
                    Some(bin) if ranks > 1 => {
                        isolated::launch_ranks(bin, &job, &env, stdout, stderr, &status)
                    }
                    Some(bin) => isolated::launch(bin, &job, &env, stdout, stderr, &status),
                    None if ranks > 1 => Err(AttemptError::Input(format!(
                        "step `{}` trains {ranks} ranks as processes, which needs the `dnaflow` \
                         binary to start them; this run has none (an in-process test run)",
                        step.name
                    ))),
                    None => {
                        drop(stderr);
                        run_in_process(&job, None, &mut { stdout }, &status).map_err(|e| {
                            // In process, a panic is caught like any other failure.
                            AttemptError::Input(e)
                        })
                    }
                }
            }
        }
    }
}

/// What `srun` said of its tasks in the job's error log (`task 1: Killed`), as `; srun: …`:
/// how a rank process died, which the ranks' own messages cannot say.
fn srun_errors(err_log: &Path) -> String {
    let tail = log_tail(err_log).unwrap_or_default();
    // Only this attempt's lines: after the last attempt marker.
    let this = tail.rsplit("--- attempt").next().unwrap_or_default();
    this.lines()
        .filter_map(|l| l.split_once("srun: error: ").map(|(_, e)| e.trim()))
        .map(|e| format!("; srun: {e}"))
        .collect()
}

/// A Slurm job that did not run to its end (cancelled, timed out, out of memory, its node
/// lost): worth a retry.
fn job_lost(end: &slurm::JobEnd) -> AttemptError {
    let why = match end.state.as_str() {
        "CANCELLED" => "was cancelled (scancel)",
        "TIMEOUT" => "reached its time limit",
        "OUT_OF_MEMORY" => "ran out of memory",
        "NODE_FAIL" | "BOOT_FAIL" => "lost its node",
        "PREEMPTED" => "was preempted",
        _ => "did not finish",
    };
    AttemptError::Transient(format!(
        "Slurm job {} {why} (state {}, exit code {}:{})",
        end.id, end.state, end.code, end.signal
    ))
}

/// Run one attempt of a built-in step in this process, in a pool of the granted threads;
/// `step-exec` calls this in the step's own process. A panic becomes an internal error.
pub fn run_in_process(
    job: &isolated::Job,
    rendezvous: Option<&crate::train::tcp::Rendezvous>,
    log: &mut (dyn std::io::Write + Send),
    status: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let Some(kind) = crate::steps::KINDS.iter().find(|k| k.name == job.kind) else {
        return Err(format!("unknown step kind `{}`", job.kind));
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut run = || {
            let mut ctx = StepContext {
                with: &job.with,
                out: &job.out,
                workdir: &job.workdir,
                threads: job.threads,
                log: &mut *log,
                cancelled: &CANCELLED,
                checkpoints: &job.checkpoints,
                device: job.device.as_deref(),
                status,
                rendezvous,
            };
            (kind.run)(&mut ctx)
        };
        // The step's CPU threads: rayon work (tensor kernels, tokenization) stays within what
        // the scheduler granted.
        match rayon::ThreadPoolBuilder::new()
            .num_threads(job.threads.max(1))
            .build()
        {
            Ok(pool) => pool.install(run),
            Err(_) => run(),
        }
    }));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(StepError {
            left_to_root: true, ..
        })) => Ok(()),
        Ok(Err(StepError { message, .. })) => Err(message),
        Err(panic) => Err(format!(
            "internal error in `{}`: {} (please report this)",
            kind.name,
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        )),
    }
}

/// The last lines of a log, for failure messages.
fn log_tail(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    let lines: Vec<&str> = s.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}
