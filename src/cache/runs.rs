//! Run records: what each `dnaflow run` did, per step, kept under `cache/runs/<workflow>/`.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::ExpectResult;

/// What happened to a step in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Ran,
    Cached,
    Failed,
    Skipped,
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepStatus::Ran => "ran",
            StepStatus::Cached => "cached",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        })
    }
}

/// One step's line in a run record (and in `--report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub key: String,
    pub status: StepStatus,
    /// Why it ran, was cached, failed or was skipped.
    pub reason: String,
    pub seconds: f64,
    /// The step's output directory in the cache (absent unless it succeeded).
    pub out: Option<PathBuf>,
    /// Contents of the step's `metrics.json`.
    #[serde(default)]
    pub metrics: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<ExpectResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Saved stdout / stderr of the step, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// The steps it reads from (its edges in the DAG), for reports drawn from the record alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

impl StepRecord {
    /// A record with nothing measured yet.
    pub fn new(name: &str, key: &str, status: StepStatus, reason: String) -> StepRecord {
        StepRecord {
            name: name.to_string(),
            key: key.to_string(),
            status,
            reason,
            seconds: 0.0,
            out: None,
            metrics: Value::Object(Default::default()),
            expect: Vec::new(),
            error: None,
            stdout: None,
            stderr: None,
            log_tail: None,
            attempts: 0,
            after: Vec::new(),
        }
    }
}

/// Everything one run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub workflow: String,
    pub file: PathBuf,
    pub profile: Option<String>,
    pub params: IndexMap<String, Value>,
    pub started: String,
    pub seconds: f64,
    /// `ok`, `failed` or `interrupted`; `running` while the run goes on.
    pub status: String,
    pub dnaflow_version: String,
    pub steps: Vec<StepRecord>,
    /// The machine it ran on: CPU threads, memory, GPUs, OS, the binary's backends.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub machine: Value,
    /// While the run goes on (`status: running`): the steps running now. The record is
    /// rewritten as steps finish, so a report or `dnaflow serve` can follow the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

impl RunRecord {
    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Each step's name and metrics, as `metrics::flat` takes them.
    pub fn step_metrics(&self) -> Vec<(String, Value)> {
        self.steps
            .iter()
            .map(|s| (s.name.clone(), s.metrics.clone()))
            .collect()
    }
}

/// A new run id: UTC time to the microsecond plus a random suffix, so ids sort by start time.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now();
    let stamp = humantime::format_rfc3339_micros(now)
        .to_string()
        .replace(['-', ':'], "");
    let salt = blake3::hash(format!("{stamp}-{}", std::process::id()).as_bytes());
    format!("{stamp}-{}", &salt.to_hex()[..4])
}

/// Directory of a workflow's run records.
pub fn workflow_dir(runs: &Path, workflow: &str) -> PathBuf {
    runs.join(workflow)
}

/// Run ids of a workflow, oldest first.
pub fn list(runs: &Path, workflow: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(workflow_dir(runs, workflow))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

/// Every (workflow, run id), oldest first by id.
pub fn list_all(runs: &Path) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for wf in std::fs::read_dir(runs).into_iter().flatten().flatten() {
        if let Some(name) = wf.file_name().to_str() {
            for id in list(runs, name) {
                all.push((name.to_string(), id));
            }
        }
    }
    all.sort_by(|a, b| a.1.cmp(&b.1));
    all
}

/// Read a record file.
pub fn read(path: &Path) -> std::io::Result<RunRecord> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// The record of the run before `run_id` of the same workflow, if any.
pub fn previous(runs: &Path, workflow: &str, run_id: &str) -> Option<RunRecord> {
    let ids = list(runs, workflow);
    let at = ids.iter().position(|id| id == run_id)?;
    let prev = ids.get(at.checked_sub(1)?)?;
    read(&workflow_dir(runs, workflow).join(format!("{prev}.json"))).ok()
}

/// The newest record of a workflow.
pub fn latest(runs: &Path, workflow: &str) -> Option<RunRecord> {
    let id = list(runs, workflow).pop()?;
    read(&workflow_dir(runs, workflow).join(format!("{id}.json"))).ok()
}

/// Write a record atomically.
pub fn write(runs: &Path, record: &RunRecord) -> std::io::Result<PathBuf> {
    let dir = workflow_dir(runs, &record.workflow);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", record.run_id));
    write_json_atomic(&path, record)?;
    Ok(path)
}

/// Serialize to a temp file beside `path`, then rename over it. Streamed through a small
/// buffer: the record of a 100,000-step run is tens of megabytes, which a whole-file buffer
/// would make the process allocate (and the kernel zero) on every run.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::other)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path)
}
