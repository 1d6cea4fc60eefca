//! The workflow file as users write it; doc comments here become the JSON Schema's descriptions.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::located::{Located, Node};

/// A dnaflow workflow: named parameters, optional profiles that override them, and steps.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dnaflow workflow")]
pub struct WorkflowFile {
    /// Name of the workflow; run records are grouped by it (default: the file name).
    pub name: Option<Located<String>>,
    /// What the workflow does, for people reading it.
    pub description: Option<String>,
    /// Directory that relative paths and shell steps start from, relative to this file
    /// (default: the directory holding this file).
    pub workdir: Option<Located<String>>,
    /// How long the default profile may take on 2 CPU cores (dev build), e.g. `3m`: the time
    /// budget `dnaflow check --within-budget` holds the run to (CI does, for every chapter).
    pub budget: Option<Located<String>>,
    /// Where steps run unless a step or `--executor` says otherwise: `local` (default, each
    /// step in its own process here) or `slurm` (each step a Slurm job; settings from
    /// `--cluster FILE`). Results and cache keys are the same either way.
    pub executor: Option<ExecutorName>,
    /// Parameters, used as `${{ params.NAME }}`; overridden by `--profile` and `--set`.
    #[serde(default)]
    pub params: ParamMap,
    /// Named sets of parameter overrides, chosen with `--profile NAME`.
    #[serde(default)]
    pub profiles: IndexMap<Located<String>, Located<ParamMap>>,
    /// Outputs copied out of the cache into one folder once the whole run has succeeded (as
    /// Nextflow's `publishDir`): `{ to: results, outputs: [steps.gpt2.model, test] }` makes
    /// `results/gpt2/model/` and `results/test/` (a step named alone: its whole output folder).
    /// Copies, never into the cache, not part of any step's key. A step's own `publish:` copies
    /// as soon as that step has succeeded.
    pub publish: Option<WorkflowPublish>,
    /// The steps, by name. Dependencies come from `${{ steps.NAME.… }}` references and `needs`.
    /// Boxed: a workflow may have 100,000 steps, and the map's entries move as it grows.
    pub steps: IndexMap<Located<String>, Located<Box<StepDef>>>,
}

/// The workflow's `publish:`: which outputs, into which folder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPublish {
    /// Folder the outputs go to, relative to the workdir (may use `${{ params.… }}`); each
    /// output lands in `<to>/<step>/`, under the name it has in the step's output folder.
    pub to: Located<String>,
    /// What to copy: `steps.NAME.OUTPUT` for one output (`steps.gpt2.model`), or a step's name
    /// for its whole output folder; a `foreach` step's name means every copy of it.
    pub outputs: Vec<Located<String>>,
}

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorName {
    /// A process on this machine.
    Local,
    /// A Slurm job (`sbatch`), on the cache's shared filesystem.
    Slurm,
}

/// Parameter names and values, as written.
pub type ParamMap = IndexMap<Located<String>, Located<Node>>;

/// One step: a built-in kind (`uses` + `with`) or a shell command (`run`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// What the step does, for people reading it.
    pub description: Option<String>,
    /// Built-in step kind, e.g. `file.write` (see `dnaflow kinds`).
    pub uses: Option<Located<String>>,
    /// Parameters of the built-in kind.
    pub with: Option<Located<Node>>,
    /// Shell command (bash, `-e -o pipefail`), run in the workflow's workdir; write results into `${{ out }}`.
    pub run: Option<Located<String>>,
    /// Files or directories whose bytes the step depends on (paths relative to the workdir).
    #[serde(default)]
    pub inputs: Vec<Located<String>>,
    /// Named files a shell step writes inside `${{ out }}`, referable as `${{ steps.NAME.OUTPUT }}`.
    #[serde(default)]
    pub outputs: IndexMap<Located<String>, Located<String>>,
    /// Steps that must finish first, when no `${{ steps.… }}` reference says so already.
    #[serde(default)]
    pub needs: Vec<Located<String>>,
    /// Named outputs copied to folders of your choosing once the step has succeeded (or was
    /// found in the cache), as Nextflow's `publishDir`: `{ model: results/gpt2 }`. Paths are
    /// relative to the workdir and may use `${{ params.… }}` and `${{ matrix.… }}`; never inside
    /// the cache. Copies, not links (editing them cannot change the cache); not part of the
    /// step's key.
    #[serde(default)]
    pub publish: IndexMap<Located<String>, Located<String>>,
    /// What the step occupies while it runs; the scheduler never over-commits them.
    pub resources: Option<Resources>,
    /// How many times to retry the step when it fails.
    #[serde(default)]
    pub retries: u32,
    /// Where this step runs, overriding the workflow's `executor:` and `--executor` (e.g.
    /// `local` for a step too small to queue for).
    pub executor: Option<ExecutorName>,
    /// Environment variables for the step (values may use `${{ … }}`).
    #[serde(default)]
    pub env: IndexMap<Located<String>, Located<String>>,
    /// Bounds on the step's metrics (from `metrics.json` in its output), checked by `dnaflow check`.
    #[serde(default)]
    pub expect: IndexMap<Located<String>, Located<Expectation>>,
    /// Run one copy of the step per combination of these lists (a grid), named `step[key=value,…]`.
    pub foreach: Option<Located<IndexMap<Located<String>, Located<Node>>>>,
}

/// Resources a step needs. Values may be `${{ params.… }}` expressions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU threads (default 1); exported to the step as DNAFLOW_THREADS, OMP_NUM_THREADS, RAYON_NUM_THREADS.
    #[schemars(with = "Option<IntOrExpr>")]
    pub cpus: Option<Located<Node>>,
    /// GPUs (default 0); the step sees its own in CUDA_VISIBLE_DEVICES.
    #[schemars(with = "Option<IntOrExpr>")]
    pub gpus: Option<Located<Node>>,
    /// Memory, e.g. `512M`, `4G` (a plain number means MiB).
    #[schemars(with = "Option<IntOrExpr>")]
    pub mem: Option<Located<Node>>,
    /// Nodes a data-parallel training step spreads its ranks over (default 1; more needs
    /// `executor: slurm`). `cpus`, `gpus` and `mem` are then each node's.
    #[schemars(with = "Option<IntOrExpr>")]
    pub nodes: Option<Located<Node>>,
}

/// A count, a size like `4G`, or a `${{ params.NAME }}` expression.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum IntOrExpr {
    Int(u64),
    Expr(String),
}

/// Bounds on one metric. A metric name may be a dotted path into nested `metrics.json`.
#[derive(Debug, Clone, Deserialize, JsonSchema, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Fails when the metric is below this.
    pub min: Option<f64>,
    /// Fails when the metric is above this.
    pub max: Option<f64>,
    /// Fails unless the metric equals this (within `tol` for numbers).
    pub equals: Option<serde_json::Value>,
    /// Absolute tolerance for `equals`.
    pub tol: Option<f64>,
}
