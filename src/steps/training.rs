//! What every training step shares around the one loop: the live status, the loss history
//! table and plot, the weights the run selected, and the metrics every run reports.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value, json};

use super::{StepContext, StepError, plot};
use crate::models::{FusedOps, Model, ModelError, ModelSpec, save_model_dir};
use crate::train::{self, Batch, Env, TrainConfig, TrainData, Trained};

/// Run the loop with the step's log, checkpoints, cancel flag and a live status line.
pub(super) fn run<B>(
    ctx: &mut StepContext,
    model: Model<B>,
    data: &mut TrainData,
    valid: &[Batch],
    cfg: &TrainConfig,
    device: &B::Device,
) -> Result<Trained<Model<B>>, StepError>
where
    B: AutodiffBackend + FusedOps,
    B::InnerBackend: FusedOps,
{
    let status = ctx.status;
    let mut progress = |p: &train::Progress| {
        status(&format!(
            "step {}/{} loss {:.4} {:.0} tok/s",
            p.step, p.steps, p.loss, p.tokens_per_s
        ))
    };
    let mut env = Env {
        checkpoints: ctx.checkpoints,
        log: &mut *ctx.log,
        cancelled: ctx.cancelled,
        progress: &mut progress,
    };
    let trained = match ctx.rendezvous {
        None => train::train(model, data, valid, cfg, device, &mut env),
        Some(rdv) => {
            if rdv.ranks != cfg.parallel.ranks {
                return Err(StepError::new(format!(
                    "the step trains {} ranks, but {} processes were started for it",
                    cfg.parallel.ranks, rdv.ranks
                )));
            }
            let mut comm = train::tcp::TcpRank::connect(rdv, cfg.parallel.timeout)
                .map_err(|e| StepError::new(e.to_string()))?;
            let trained = train::train_rank(model, data, valid, cfg, device, &mut env, &mut comm);
            if trained.is_ok() && rdv.rank != 0 {
                return Err(StepError::left_to_root(rdv.rank));
            }
            trained
        }
    }
    .map_err(|e| StepError::new(e.to_string()))?;
    for (rank, held) in trained.rank_state.iter().enumerate() {
        let [p, g, m] = held.mib();
        writeln!(
            ctx.log,
            "rank {rank} holds: parameters {p:.2} MiB, gradients {g:.2} MiB, moments {m:.2} MiB"
        )?;
    }
    Ok(trained)
}

/// The model the run selected, for saving and scoring (no autodiff): the last step's, with the
/// best evaluation's tensors put in place when the run kept them.
pub(super) fn selected<B>(trained: &Trained<Model<B>>) -> Result<Model<B::InnerBackend>, StepError>
where
    B: AutodiffBackend + FusedOps,
    B::InnerBackend: FusedOps,
{
    let model = trained.model.valid();
    match &trained.best_weights {
        Some(w) => model.restore(w.clone()).map_err(model_err),
        None => Ok(model),
    }
}

/// The directory an adapter trained from `init` names as its base: `init` itself, unless it is
/// an adapter directory (loaded merged), which no adapter can name; then none, and the result
/// is saved merged.
pub(super) fn adapter_base(init: Option<&Path>) -> Option<&Path> {
    init.filter(|dir| !crate::models::io::adapter::is_adapter_dir(dir))
}

/// Save the trained model as `out`: under an adapter the adapter directory PEFT loads over
/// `base` (or, with `merge`, the plain model with the pairs folded in), else the model
/// directory; the tokenizer files beside.
pub(super) fn save_trained<B: FusedOps>(
    model: &Model<B>,
    out: &Path,
    base: Option<&Path>,
    merge: bool,
    tokenizer: &Path,
) -> Result<(), StepError> {
    let spec = model.spec();
    // The adapter names its base by absolute path, so it loads from any directory.
    let base = base.map(|b| std::fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf()));
    match (&spec.adapter, base.as_deref()) {
        (Some(_), Some(base)) if !merge => model.save_adapter_dir(out, base, Some(tokenizer)),
        (Some(_), _) => {
            let plain = ModelSpec {
                adapter: None,
                ..spec.clone()
            };
            save_model_dir(out, &plain, model.merged_weights(), Some(tokenizer))
        }
        (None, _) => model.save_dir(out, Some(tokenizer)),
    }
    .map_err(model_err)
}

pub(super) fn model_err(e: ModelError) -> StepError {
    StepError::new(e.to_string())
}

/// `history.csv` (step, loss, lr, grad_norm, then every validation score where one was
/// taken) and `loss.svg` (train loss smoothed, validation loss).
pub(super) fn write_history(
    out: &Path,
    state: &train::TrainState,
    unit: &str,
) -> Result<(), StepError> {
    let scores: Vec<String> = state
        .evals
        .first()
        .map(|e| {
            std::iter::once("loss".to_string())
                .chain(e.eval.metrics.keys().cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut text = String::from("step,loss,lr,grad_norm");
    for s in &scores {
        text.push_str(&format!(",valid_{s}"));
    }
    text.push('\n');
    let mut evals = state.evals.iter().peekable();
    for h in &state.history {
        text.push_str(&format!("{},{},{},{}", h.step, h.loss, h.lr, h.grad_norm));
        let eval = match evals.peek() {
            Some(e) if e.step == h.step => evals.next(),
            _ => None,
        };
        for s in &scores {
            text.push(',');
            if let Some(e) = eval {
                let v = e.eval.metric(s);
                if v.is_finite() {
                    text.push_str(&v.to_string());
                }
            }
        }
        text.push('\n');
    }
    std::fs::write(out.join("history.csv"), text)?;
    let train_curve: Vec<(f64, f64)> = state
        .history
        .iter()
        .map(|h| (h.step as f64, h.loss))
        .collect();
    let valid_curve: Vec<(f64, f64)> = state
        .evals
        .iter()
        .map(|e| (e.step as f64, e.eval.loss))
        .collect();
    let mut series = vec![("train", smooth(&train_curve))];
    if !valid_curve.is_empty() {
        series.push(("validation", valid_curve));
    }
    plot::lines(&out.join("loss.svg"), "loss", "step", unit, &series)
}

/// Running mean over 10 steps, so the plotted train curve is readable.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let w = 10usize;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(w - 1);
            let slice = &points[lo..=i];
            (
                x,
                slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64,
            )
        })
        .collect()
}

/// What every training run reports: size, steps, speed, the last train loss, and the best
/// validation scores (`valid_<score>`) with the step they came from.
pub(super) fn run_metrics<B: AutodiffBackend + FusedOps>(
    trained: &Trained<Model<B>>,
    parameters: usize,
) -> Value {
    let state = &trained.state;
    let tail: Vec<f64> = state
        .history
        .iter()
        .rev()
        .take(10)
        .map(|h| h.loss)
        .collect();
    let mut metrics = json!({
        "arch": trained.model.spec().config.name(),
        "parameters": parameters,
        "trainable_parameters": trained.model.trainable_params(),
        "steps": state.step,
        "tokens": state.tokens,
        "train_loss": tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        "seconds": state.seconds,
        "tokens_per_s": state.tokens as f64 / state.seconds.max(1e-9),
        "resumed_from": trained.resumed_from,
        "final_lr": state.history.last().map(|h| h.lr).unwrap_or(0.0),
    });
    let m = metrics.as_object_mut().expect("object");
    if let Some(best) = &state.best {
        m.insert("valid_loss".into(), best.eval.loss.into());
        for (k, v) in &best.eval.metrics {
            m.insert(format!("valid_{k}"), (*v).into());
        }
        m.insert("best_step".into(), best.step.into());
    }
    m.insert("ranks".into(), trained.rank_state.len().into());
    let held: Vec<Value> = trained
        .rank_state
        .iter()
        .map(|r| {
            let [p, g, m] = r.mib();
            json!({"parameters_mib": p, "gradients_mib": g, "moments_mib": m})
        })
        .collect();
    m.insert("rank_state".into(), held.into());
    if let Some(steady) = trained.steady_tokens_per_s {
        m.insert("steady_tokens_per_s".into(), steady.into());
    }
    if let Some(share) = trained.steady_exchange_share {
        m.insert("steady_exchange_share".into(), share.into());
    }
    if let Some(step) = state.stopped_early {
        m.insert("stopped_early".into(), step.into());
    }
    if state.skipped > 0 {
        m.insert("skipped_steps".into(), state.skipped.into());
    }
    metrics
}
