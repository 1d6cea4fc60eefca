//! The settings every training kind takes, written once: batch and steps, the AdamW optimizer
//! and its schedule, evaluation and checkpoint cadence, seed, device and precision.
//! `model.pretrain` and `model.finetune` (and the kinds still to come) flatten [`TrainOptions`]
//! into their parameters, so a new training option (LoRA, data parallel) is added here once,
//! and an unknown key is still refused where the user wrote it.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{StepContext, StepError};
use crate::models::io::adapter::{LoraSpec, Targets};
use crate::models::{DeviceSpec, Precision};
use crate::train::optim::AdamWConfig;
use crate::train::{Parallel, Schedule, TrainConfig, Zero};

/// Optimizer and loop settings shared by every training kind.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TrainOptions {
    /// Rows per micro-batch.
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the global batch is batch_size × grad_accum).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Optimizer steps; default: `epochs` passes over the training rows.
    pub steps: Option<usize>,
    /// Passes over the training rows when `steps` is not set (default: 1 for model.pretrain,
    /// 3 for model.finetune).
    pub epochs: Option<usize>,
    /// Peak learning rate.
    #[serde(default = "lr")]
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// `cosine` (default), `linear` or `constant` after the warm-up.
    #[serde(default = "cosine")]
    pub schedule: Schedule,
    /// AdamW's decoupled weight decay.
    #[serde(default = "weight_decay")]
    pub weight_decay: f64,
    /// AdamW's first-moment decay.
    #[serde(default = "beta1")]
    pub beta1: f64,
    /// AdamW's second-moment decay.
    #[serde(default = "beta2")]
    pub beta2: f64,
    /// AdamW's denominator term.
    #[serde(default = "eps")]
    pub eps: f64,
    /// Global gradient-norm clip (null: none).
    #[serde(default = "clip")]
    pub clip_norm: Option<f64>,
    /// Evaluate on the validation rows every N steps (0: model.pretrain at the end,
    /// model.finetune once per epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every N steps so a killed run resumes (0: never).
    #[serde(default = "save_every")]
    pub save_every: usize,
    /// Write a log line every N steps.
    #[serde(default = "log_every")]
    pub log_every: usize,
    /// Seeds the initialisation, the batch order, masking and dropout.
    #[serde(default = "seed")]
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32`; `bf16` or `f16` mixed precision on CUDA.
    #[serde(default = "f32")]
    pub precision: String,
    /// Data-parallel ranks: each takes batch_size / ranks rows of every micro-batch; the result
    /// equals one rank's within float rounding. Default: 1, or one per GPU the step's
    /// `resources` grant (gpus × nodes).
    pub ranks: Option<usize>,
    /// How the ranks run: `auto` (threads of the step's process on a CPU run of the local
    /// executor; one process per rank on GPUs, across `nodes` and as Slurm tasks), `threads`
    /// or `processes` (one `dnaflow step-exec` per rank, meeting over TCP, as torchrun's).
    #[serde(default)]
    pub ranks_as: RanksAs,
    /// Seconds a rank waits for the others (to start, or in one exchange, while rank 0
    /// evaluates) before the step fails naming the rank it waited for.
    #[serde(default = "rank_timeout")]
    pub rank_timeout: f64,
    /// With `ranks` > 1, ZeRO stage: 0 every rank keeps all optimizer state, 1 each keeps the
    /// AdamW moments of 1/ranks of the tensors, 2 also only their reduced gradients.
    #[serde(default)]
    pub zero: u8,
    /// Train a LoRA adapter on the `init` model instead of all its weights (PEFT's LoRA):
    /// the base stays frozen, with neither gradients nor optimizer state.
    pub lora: Option<LoraOptions>,
}

/// The kinds that flatten [`TrainOptions`], so take `ranks`, `ranks_as` and `rank_timeout`.
pub const RANKED_KINDS: &[&str] = &["model.pretrain", "model.finetune"];

/// The parameters that say how a training run's ranks run, not what it trains (they change
/// its result no more than float rounding does): runs that differ only in them are one
/// family, whose checkpoints (one device's files) serve each other.
pub const RANK_LAUNCH_PARAMS: &[&str] = &["ranks", "ranks_as", "rank_timeout", "zero"];

/// What a step's `with:` asks of the launcher: its ranks (None: as many as GPUs granted) and
/// how they run. None for a kind that trains no ranks.
pub fn rank_request(kind: &str, with: &serde_json::Value) -> Option<(Option<usize>, RanksAs)> {
    if !RANKED_KINDS.contains(&kind) {
        return None;
    }
    let ranks = with
        .get("ranks")
        .and_then(serde_json::Value::as_u64)
        .map(|r| r as usize);
    let how = with
        .get("ranks_as")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Some((ranks, how))
}

/// Whether the ranks of a data-parallel step are threads of one process or processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RanksAs {
    /// Threads on a local CPU run; processes on GPUs, across nodes and on Slurm.
    #[default]
    Auto,
    /// Threads of the step's own process (CPU only; the rows are shared, not copied).
    Threads,
    /// One process per rank (`dnaflow step-exec`), meeting over TCP.
    Processes,
}

/// LoRA as PEFT's `LoraConfig` takes it; the adapter is saved as PEFT saves one.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoraOptions {
    /// Rank of each low-rank pair.
    #[serde(default = "lora_r")]
    pub r: usize,
    /// Scale numerator: the update is (alpha / r)·B·A (alpha / √r with `rslora`).
    #[serde(default = "lora_alpha")]
    pub alpha: f64,
    /// Dropout on each adapted layer's input to its pair.
    #[serde(default)]
    pub dropout: f64,
    /// rsLoRA's scale alpha / √r.
    #[serde(default)]
    pub rslora: bool,
    /// Linear layers to adapt: names matched against the end of each layer's dotted name
    /// (`[q_proj, v_proj]`), or one regular expression over the whole name.
    pub target_modules: TargetModules,
    /// Modules trained in full and saved with the adapter (`embed_tokens`, `lm_head`; a task
    /// head's `score` / `classifier` always are).
    #[serde(default)]
    pub modules_to_save: Vec<String>,
    /// Save a plain model with the pairs folded in, instead of the adapter.
    #[serde(default)]
    pub merge: bool,
}

/// `target_modules`: a list of names, or one regular expression.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(super) enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

impl LoraOptions {
    /// The adapter these options train; a task head (`head: true`) is trained in full and
    /// saved, as PEFT does for its sequence and token classification task types.
    pub fn spec(&self, head: bool) -> LoraSpec {
        let mut modules_to_save = self.modules_to_save.clone();
        if head {
            for m in ["classifier", "score"] {
                if !modules_to_save.iter().any(|s| s == m) {
                    modules_to_save.push(m.into());
                }
            }
        }
        LoraSpec {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            rslora: self.rslora,
            targets: match &self.target_modules {
                TargetModules::Names(n) => Targets::Names(n.clone()),
                TargetModules::Regex(re) => Targets::Regex(re.clone()),
            },
            modules_to_save,
        }
    }
}

fn lora_r() -> usize {
    8
}
fn lora_alpha() -> f64 {
    16.0
}

impl TrainOptions {
    /// What `dnaflow validate` can refuse before anything runs.
    pub fn check(&self) -> Result<(), String> {
        check_device(&self.device, &self.precision)?;
        for (field, value) in [
            ("batch_size", Some(self.batch_size)),
            ("grad_accum", Some(self.grad_accum)),
            ("epochs", self.epochs),
        ] {
            if value == Some(0) {
                return Err(format!("`{field}` must be at least 1"));
            }
        }
        let ranks = self.ranks.unwrap_or(1);
        if ranks == 0 {
            return Err("`ranks` must be at least 1".into());
        }
        if !self.batch_size.is_multiple_of(ranks) {
            return Err(format!(
                "`batch_size` {} is not divisible by `ranks` {ranks}: each rank takes \
                 batch_size / ranks rows of every micro-batch; make `batch_size` a multiple of \
                 {ranks}",
                self.batch_size
            ));
        }
        if !(self.rank_timeout > 0.0 && self.rank_timeout.is_finite()) {
            return Err("`rank_timeout` must be a positive number of seconds".into());
        }
        if Zero::from_stage(self.zero).is_none() {
            return Err(format!(
                "`zero` {} is not a ZeRO stage dnaflow has: 0, 1 or 2",
                self.zero
            ));
        }
        if ranks > 1 && self.ranks_as == RanksAs::Threads && self.device != "cpu" {
            return Err(format!(
                "`ranks` {ranks} as threads share one CPU process; set `device: cpu`, or \
                 `ranks_as: processes` (one process per GPU)"
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err("`lr` must be a positive number".into());
        }
        if let Some(lora) = &self.lora {
            lora.spec(false)
                .check()
                .map_err(|e| format!("`lora`: {e}"))?;
        }
        Ok(())
    }

    /// The device and precision the step runs with (`--device` overrides `device:`). A rank
    /// process on a GPU takes the GPU of its local rank (`cuda` → `cuda:LOCAL_RANK`).
    pub fn resolve_device(&self, ctx: &StepContext) -> Result<(DeviceSpec, Precision), StepError> {
        let (d, p) = resolve_device(ctx, &self.device, &self.precision)?;
        let ranks = self.ranks.unwrap_or(1);
        match (ctx.rendezvous, d) {
            (Some(rdv), DeviceSpec::Cuda(_)) => {
                let d = DeviceSpec::Cuda(rdv.local);
                d.check_available().map_err(StepError::new)?;
                Ok((d, p))
            }
            (None, d) if ranks > 1 && d != DeviceSpec::Cpu => Err(StepError::new(format!(
                "`ranks` {ranks} ran as threads of one process, and this run asks for {d}: \
                 ranks on GPUs are one process each; give the step `resources: {{ gpus: \
                 {ranks} }}` (or `ranks_as: processes`)"
            ))),
            _ => Ok((d, p)),
        }
    }

    /// Optimizer steps: `steps`, else `epochs` (or `default_epochs`) passes of
    /// `batches_per_epoch` micro-batches.
    pub fn steps(&self, batches_per_epoch: usize, default_epochs: usize) -> usize {
        self.steps.unwrap_or_else(|| {
            (self.epochs.unwrap_or(default_epochs) * batches_per_epoch).div_ceil(self.grad_accum)
        })
    }

    /// The loop's configuration; what differs between kinds (how the weights are selected,
    /// the head's own learning rate) is the caller's.
    pub fn train_config(
        &self,
        steps: usize,
        eval_every: usize,
        precision: Precision,
    ) -> TrainConfig {
        TrainConfig {
            steps,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            schedule: self.schedule,
            adamw: AdamWConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            clip_norm: self.clip_norm,
            eval_every,
            save_every: self.save_every,
            log_every: self.log_every,
            seed: self.seed,
            precision,
            keep_best: false,
            select: "loss".into(),
            patience: None,
            head: Vec::new(),
            head_lr: None,
            parallel: Parallel {
                ranks: self.ranks.unwrap_or(1),
                zero: Zero::from_stage(self.zero).unwrap_or_default(),
                timeout: std::time::Duration::from_secs_f64(self.rank_timeout),
            },
        }
    }
}

pub(super) fn batch_size() -> usize {
    16
}
fn one() -> usize {
    1
}
fn rank_timeout() -> f64 {
    600.0
}
fn lr() -> f64 {
    5e-4
}
fn cosine() -> Schedule {
    Schedule::Cosine
}
fn weight_decay() -> f64 {
    0.01
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}
fn clip() -> Option<f64> {
    Some(1.0)
}
fn save_every() -> usize {
    100
}
fn log_every() -> usize {
    10
}
pub(super) fn seed() -> u64 {
    42
}
pub(super) fn cpu() -> String {
    "cpu".into()
}
pub(super) fn f32() -> String {
    "f32".into()
}

/// A device and precision that parse and go together (bf16 is for CUDA).
pub(super) fn check_device(
    device: &str,
    precision: &str,
) -> Result<(DeviceSpec, Precision), String> {
    let d = DeviceSpec::parse(device)?;
    let p = Precision::parse(precision)?;
    d.check_precision(p)?;
    Ok((d, p))
}

/// The device a model step runs on: `--device` if given, else its `device:`; refused when this
/// binary or machine lacks it.
pub(super) fn resolve_device(
    ctx: &StepContext,
    device: &str,
    precision: &str,
) -> Result<(DeviceSpec, Precision), StepError> {
    let (d, p) = check_device(ctx.device.unwrap_or(device), precision).map_err(StepError::new)?;
    d.check_available().map_err(StepError::new)?;
    Ok((d, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launcher reads ranks from exactly the kinds whose parameters hold them.
    #[test]
    fn ranked_kinds_are_the_kinds_that_take_ranks() {
        for kind in super::super::KINDS {
            let mut generator = schemars::SchemaGenerator::default();
            let schema = serde_json::to_string(&(kind.schema)(&mut generator)).unwrap();
            let defs = serde_json::to_string(generator.definitions()).unwrap();
            assert_eq!(
                schema.contains("\"ranks_as\"") || defs.contains("\"ranks_as\""),
                RANKED_KINDS.contains(&kind.name),
                "{}",
                kind.name
            );
        }
        let with = serde_json::json!({ "ranks": 4, "ranks_as": "processes" });
        assert_eq!(
            rank_request("model.pretrain", &with),
            Some((Some(4), RanksAs::Processes))
        );
        assert_eq!(rank_request("data.load", &with), None);
    }
}
