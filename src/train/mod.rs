//! The one training loop every training step shares: AdamW, warmup + cosine/linear decay,
//! global-norm clipping, gradient accumulation, periodic evaluation with best-checkpoint
//! selection, checkpoints that survive kill -9, and a clear stop on a non-finite loss.
//!
//! Determinism: batches, masks and dropout are functions of (seed, step), so a resumed run
//! repeats exactly what an uninterrupted one would have done.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::models::{FusedOps, Model, ModelError, Precision, Weights};

pub mod batch;
pub mod collective;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod per_base;
pub mod tcp;

pub use batch::{Batch, Masking, Order, Row, Target};
use collective::{Collective, CollectiveError, Solo};
pub use objective::{Evaluation, Objective, lm_evaluation, lower_is_better, metric_names};
use optim::{AdamW, AdamWConfig};
use parallel::Layout;
pub use parallel::{Parallel, RankState, Zero};

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// Everything the loop needs to know.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit; None = no clipping.
    pub clip_norm: Option<f64>,
    /// Evaluate every N steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Checkpoint every N steps; 0 = never.
    pub save_every: usize,
    pub log_every: usize,
    pub seed: u64,
    pub precision: Precision,
    /// Keep the weights of the best evaluation, not the last step.
    pub keep_best: bool,
    /// The validation score that picks the best evaluation (`loss`, `mcc`, `rmse`, …).
    pub select: String,
    /// Stop after this many evaluations without a better `select` score.
    pub patience: Option<usize>,
    /// Tensors (HF names) trained at `head_lr` instead of `lr`: a new head learns faster
    /// than the pretrained backbone under it.
    pub head: Vec<String>,
    pub head_lr: Option<f64>,
    /// Ranks and ZeRO stage (one rank: the single-device loop).
    pub parallel: Parallel,
}

impl TrainConfig {
    /// Learning rate for optimizer step `step` (0-based), as HF's schedulers compute it.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Where training batches come from.
pub struct TrainData {
    pub rows: Vec<Row>,
    pub order: Order,
    pub objective: Objective,
    pub pad: u32,
    pub batch_size: usize,
}

impl TrainData {
    /// What one rank draws its batches from (its own copy of the order, the rows shared).
    fn source(&self) -> Source<'_> {
        Source {
            rows: &self.rows,
            order: self.order.clone(),
            objective: self.objective.clone(),
            pad: self.pad,
        }
    }
}

/// One rank's view of the training data.
struct Source<'a> {
    rows: &'a [Row],
    order: Order,
    objective: Objective,
    pad: u32,
}

impl Source<'_> {
    /// Global batch number `index`.
    fn batch(&mut self, index: usize, seed: u64) -> Batch {
        let idx = self.order.batch(index);
        let rows: Vec<&Row> = idx.iter().map(|&i| &self.rows[i]).collect();
        self.objective.batch(
            &rows,
            self.pad,
            seed ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
        )
    }
}

/// Fixed evaluation batches (no shuffling; MLM masks fixed by `seed`).
pub fn eval_batches(
    rows: &[Row],
    objective: &Objective,
    pad: u32,
    batch_size: usize,
    seed: u64,
) -> Vec<Batch> {
    rows.chunks(batch_size.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            let refs: Vec<&Row> = chunk.iter().collect();
            objective.batch(&refs, pad, seed.wrapping_add(i as u64))
        })
        .collect()
}

/// One logged optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// One evaluation during training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    #[serde(flatten)]
    pub eval: Evaluation,
}

/// What a checkpoint remembers besides the tensors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    pub tokens: u64,
    pub seconds: f64,
    pub history: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub best: Option<EvalRecord>,
    /// Step at which early stopping ended the run (`patience` evaluations without a better
    /// score).
    #[serde(default)]
    pub stopped_early: Option<usize>,
    pub loss_scale: f64,
    /// Steps skipped because fp16 gradients overflowed.
    pub skipped: usize,
}

/// The result of training.
pub struct Trained<M> {
    pub model: M,
    pub state: TrainState,
    /// Weights of the best evaluation, when `keep_best` chose them.
    pub best_weights: Option<Weights>,
    /// Step the run resumed from (0 = fresh start).
    pub resumed_from: usize,
    /// Tokens per second after this run's first optimizer step (None under two steps): the
    /// first step pays for allocating and first touching every buffer, which a long run does
    /// not notice and a short benchmark would.
    pub steady_tokens_per_s: Option<f64>,
    /// Share of the steady time (as `steady_tokens_per_s`) rank 0 spent exchanging gradients
    /// and parameters with the other ranks (None on one rank): what data parallelism costs.
    pub steady_exchange_share: Option<f64>,
    /// What each rank held at the end (parameters, gradients, moments), by rank.
    pub rank_state: Vec<RankState>,
}

/// Live numbers for a progress display.
pub struct Progress<'a> {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub tokens_per_s: f64,
    pub state: &'a TrainState,
}

/// Where the loop keeps checkpoints, what it logs to, and how to stop it.
pub struct Env<'a> {
    pub checkpoints: &'a Path,
    pub log: &'a mut dyn Write,
    pub cancelled: &'a AtomicBool,
    pub progress: &'a mut dyn FnMut(&Progress),
}

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the loss became {value} at step {step} (learning rate {lr:.3e}); {kept}. \
         Lower `lr`, raise `warmup_steps` or set `clip_norm`, then run again"
    )]
    NonFinite {
        step: usize,
        value: f64,
        lr: f64,
        kept: String,
    },
    #[error("interrupted at step {step}; the checkpoint in {dir} resumes the run next time")]
    Interrupted { step: usize, dir: PathBuf },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("data-parallel training stopped: {0}")]
    Ranks(CollectiveError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Train `model` on `data` for its objective; a checkpoint in `env.checkpoints` resumes the
/// run (its tensors put in place with [`Model::restore`]). With `cfg.parallel.ranks` above 1
/// the ranks run as threads of this process, each on its share of every micro-batch
/// (`parallel` module); rank 0 logs, evaluates and writes the checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn train<B>(
    model: Model<B>,
    data: &mut TrainData,
    valid: &[Batch],
    cfg: &TrainConfig,
    device: &B::Device,
    env: &mut Env,
) -> Result<Trained<Model<B>>, TrainError>
where
    B: AutodiffBackend + FusedOps,
    B::InnerBackend: FusedOps,
{
    let ranks = cfg.parallel.ranks.max(1);
    if ranks == 1 {
        return run_rank(model, data.source(), valid, cfg, device, env, &mut Solo);
    }
    let checkpoints = env.checkpoints;
    let mut group = collective::local_group(ranks).into_iter();
    let mut root = group.next().expect("ranks >= 2");
    let data = &*data;
    std::thread::scope(|s| {
        let workers: Vec<_> = group
            .map(|mut comm| {
                let (model, device) = (parallel::replica(&model), device.clone());
                s.spawn(move || {
                    let cancelled = AtomicBool::new(false);
                    let mut sink = std::io::sink();
                    let mut progress = |_: &Progress| {};
                    let mut env = Env {
                        checkpoints,
                        log: &mut sink,
                        cancelled: &cancelled,
                        progress: &mut progress,
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_rank(
                            model,
                            data.source(),
                            valid,
                            cfg,
                            &device,
                            &mut env,
                            &mut comm,
                        )
                    }));
                    match run {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => comm.abort(&e.to_string()),
                        Err(_) => comm.abort("panicked"),
                    }
                })
            })
            .collect();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_rank(model, data.source(), valid, cfg, device, env, &mut root)
        }));
        match &run {
            Ok(Err(e)) => root.abort(&e.to_string()),
            Err(_) => root.abort("panicked"),
            Ok(Ok(_)) => {}
        }
        for w in workers {
            let _ = w.join();
        }
        run.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Train as rank `comm.rank()` of `comm.ranks()` ranks that meet through `comm` (each in its
/// own process, say, over [`tcp::TcpRank`]); every rank calls this with the same model, data
/// and configuration, and rank 0's result is the run's.
#[allow(clippy::too_many_arguments)]
pub fn train_rank<B>(
    model: Model<B>,
    data: &TrainData,
    valid: &[Batch],
    cfg: &TrainConfig,
    device: &B::Device,
    env: &mut Env,
    comm: &mut dyn Collective,
) -> Result<Trained<Model<B>>, TrainError>
where
    B: AutodiffBackend + FusedOps,
    B::InnerBackend: FusedOps,
{
    let run = run_rank(model, data.source(), valid, cfg, device, env, comm);
    if let Err(e) = &run {
        comm.abort(&e.to_string());
    }
    run
}

/// One rank's training loop: every rank runs it, in lockstep through the same collective
/// calls; alone (`Solo`) it is the single-device loop.
#[allow(clippy::too_many_arguments)]
fn run_rank<B>(
    mut model: Model<B>,
    mut data: Source,
    valid: &[Batch],
    cfg: &TrainConfig,
    device: &B::Device,
    env: &mut Env,
    comm: &mut dyn Collective,
) -> Result<Trained<Model<B>>, TrainError>
where
    B: AutodiffBackend + FusedOps,
    B::InnerBackend: FusedOps,
{
    crate::pages::for_training();
    let (rank, ranks) = (comm.rank(), comm.ranks());
    let root = rank == 0;
    let names: Vec<String> = model.to_weights().names().map(String::from).collect();
    let layout = (ranks > 1).then(|| Layout::new(&model, &names, ranks));
    let zero = if ranks > 1 {
        cfg.parallel.zero
    } else {
        Zero::Off
    };
    // The tensors this rank updates and keeps moments for: its own under ZeRO, else all.
    let updated: Vec<&str> = match (&layout, zero) {
        (Some(l), Zero::Optimizer | Zero::Gradients) => l.owned_names(rank),
        _ => names.iter().map(String::as_str).collect(),
    };
    let mut optim = AdamW::<B>::new(cfg.adamw, names.iter().map(String::as_str));
    if let Some(head_lr) = cfg.head_lr {
        optim.scale_lr(cfg.head.iter().map(String::as_str), head_lr / cfg.lr);
    }
    let mut state = TrainState {
        loss_scale: if cfg.precision == Precision::F16 {
            65536.0
        } else {
            1.0
        },
        ..TrainState::default()
    };
    let ckpt = Checkpoints::new(env.checkpoints);
    let mut best_weights = None;
    if let Some((weights, moments, saved)) = ckpt.load()? {
        model = model.restore(weights)?;
        optim.load_weights(updated.iter().copied(), &moments, device);
        optim.steps = saved.step as u64;
        best_weights = ckpt.best()?;
        state = saved;
        if root {
            writeln!(
                env.log,
                "resumed from the checkpoint at step {}",
                state.step
            )?;
        }
    }
    if let Some(l) = &layout
        && root
    {
        writeln!(
            env.log,
            "{ranks} ranks, ZeRO stage {}: {} trainable tensors, rank shares {}",
            zero.stage(),
            l.slots.len(),
            l.parts
                .iter()
                .map(|p| p.len().to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        )?;
    }
    let resumed_from = state.step;
    let clock = Instant::now();
    let seconds_before = state.seconds;
    let mut window = (Instant::now(), 0u64);
    // (clock, tokens) when this run's first step ended.
    let mut after_first: Option<(Instant, u64)> = None;
    // Reduced gradient elements this rank kept at its last step.
    let mut kept_gradients = 0usize;
    // Time spent in exchanges with the other ranks since the first step ended.
    let mut exchanging = std::time::Duration::ZERO;

    let objective = data.objective.clone();
    while state.step < cfg.steps && state.stopped_early.is_none() {
        let step = state.step;
        // Rank 0 alone watches the cancel flag; the others learn it from its broadcast.
        let mut cancel = [if env.cancelled.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        }];
        comm.broadcast(&mut cancel, 0).map_err(TrainError::Ranks)?;
        if cancel[0] != 0.0 {
            save_checkpoint(
                &ckpt,
                &model,
                &optim,
                &names,
                &state,
                layout.as_ref(),
                zero,
                comm,
            )?;
            return Err(TrainError::Interrupted {
                step,
                dir: env.checkpoints.to_path_buf(),
            });
        }
        B::seed(device, cfg.seed.wrapping_add(step as u64));
        // This rank's dropout masks for the step: a function of seed, step and rank alone.
        crate::models::kernels::seed_dropout(
            cfg.seed
                .wrapping_add(step as u64)
                .wrapping_mul(0x100_0000_01B3)
                .wrapping_add(rank as u64),
        );
        // Every rank draws the whole global batch (a pure function of seed and step) and keeps
        // its share of the rows, so the normalizer is the whole batch's.
        let batches: Vec<Batch> = (0..cfg.grad_accum)
            .map(|k| data.batch(step * cfg.grad_accum + k, cfg.seed))
            .collect();
        let norm_by: f64 = batches
            .iter()
            .map(|b| objective.normalizer(b))
            .sum::<f64>()
            .max(1e-12);
        let tokens: u64 = batches.iter().map(|b| b.tokens as u64).sum();
        state.tokens += tokens;
        window.1 += tokens;
        let local: Vec<Batch> = if ranks > 1 {
            batches.iter().map(|b| b.shard(rank, ranks)).collect()
        } else {
            batches
        };
        let mut grads: Option<GradientsParams> = None;
        let mut loss = 0.0;
        for batch in local.iter().filter(|b| b.b > 0) {
            let sum = objective.batch_loss(&model, batch, device);
            let scaled = sum * (state.loss_scale / norm_by);
            loss += scaled.clone().into_scalar().elem::<f64>() / state.loss_scale;
            let g = GradientsParams::from_grads(scaled.backward(), &model);
            grads = Some(match grads {
                Some(acc) => optim::add_grads(&model, acc, g),
                None => g,
            });
        }
        let grads = grads.map(|g| optim::scale_grads(&model, g, 1.0 / state.loss_scale));
        let lr = cfg.lr_at(step);
        let (reduced, norm) = match &layout {
            None => {
                let grads = grads.expect("grad_accum >= 1");
                let norm = optim::global_norm(&model, &grads);
                (Reduced::Local(grads), norm)
            }
            Some(layout) => {
                let began = Instant::now();
                let r = reduce(&model, grads, layout, zero, loss, comm)?;
                if after_first.is_some() {
                    exchanging += began.elapsed();
                }
                loss = r.loss;
                let norm = r.norm;
                kept_gradients = r.values.len();
                (Reduced::Flat(r), norm)
            }
        };
        if !loss.is_finite() || !norm.is_finite() {
            if cfg.precision == Precision::F16 && loss.is_finite() && state.loss_scale > 1.0 {
                // fp16 overflow in the gradients: skip the step with a smaller scale.
                state.loss_scale /= 2.0;
                state.skipped += 1;
                state.step += 1;
                continue;
            }
            let kept = match ckpt.saved_step() {
                Some(s) => format!(
                    "the last good checkpoint (step {s}) is kept in {}",
                    env.checkpoints.display()
                ),
                None => "no checkpoint was saved before it".to_string(),
            };
            let value = if loss.is_finite() { norm } else { loss };
            return Err(TrainError::NonFinite {
                step: step + 1,
                value,
                lr,
                kept,
            });
        }
        let clip = match cfg.clip_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        model = match (reduced, &layout) {
            (Reduced::Local(grads), _) => {
                let grads = if clip != 1.0 {
                    optim::scale_grads(&model, grads, clip)
                } else {
                    grads
                };
                optim.step(lr, model, grads)
            }
            (Reduced::Flat(r), Some(layout)) => {
                let sharded = zero != Zero::Off;
                let grads = layout.grads(&model, &r.values, r.base, clip as f32, |i, slot| {
                    r.present[i] && (!sharded || slot.owner == rank)
                });
                let model = optim.step(lr, model, grads);
                if sharded {
                    // Each rank updated its own tensors; everyone takes everyone's.
                    let began = Instant::now();
                    let mut params = vec![0.0f32; layout.total];
                    layout.flatten_params(&model, rank, &mut params);
                    comm.all_gather(&mut params, &layout.parts)
                        .map_err(TrainError::Ranks)?;
                    let model = layout.set_others(model, rank, &params);
                    if after_first.is_some() {
                        exchanging += began.elapsed();
                    }
                    model
                } else {
                    model
                }
            }
            (Reduced::Flat(_), None) => unreachable!("flat gradients come from a layout"),
        };
        state.step += 1;
        state.history.push(StepRecord {
            step: state.step,
            loss,
            lr,
            grad_norm: norm,
        });

        let due = |every: usize| every > 0 && state.step.is_multiple_of(every);
        if root && (due(cfg.eval_every) || state.step == cfg.steps) && !valid.is_empty() {
            let eval = objective.evaluate(&model.valid(), valid, device);
            let score = eval.metric(&cfg.select);
            writeln!(
                env.log,
                "eval step {}: loss {:.4} {}",
                state.step,
                eval.loss,
                eval.metrics
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "tokens" | "bases" | "rows"))
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
            let better = match &state.best {
                None => true,
                Some(b) => {
                    let old = b.eval.metric(&cfg.select);
                    if lower_is_better(&cfg.select) {
                        score < old || old.is_nan()
                    } else {
                        score > old || old.is_nan()
                    }
                }
            };
            let record = EvalRecord {
                step: state.step,
                eval,
            };
            if better {
                state.best = Some(record.clone());
                if cfg.keep_best {
                    let w = model.trained_weights();
                    ckpt.save_best(&w)?;
                    best_weights = Some(w);
                }
            }
            state.evals.push(record);
            if let (Some(patience), Some(best)) = (cfg.patience, &state.best) {
                let since = state.evals.iter().filter(|e| e.step > best.step).count();
                if since >= patience && state.step < cfg.steps {
                    writeln!(
                        env.log,
                        "stopping early at step {}: {patience} evaluations without a better {} \
                         (best {:.4} at step {})",
                        state.step,
                        cfg.select,
                        best.eval.metric(&cfg.select),
                        best.step
                    )?;
                    state.stopped_early = Some(state.step);
                }
            }
        }
        if ranks > 1 && !valid.is_empty() {
            // Early stopping is rank 0's decision (it evaluates); steps count from 1.
            let mut stop = [state.stopped_early.unwrap_or(0) as f64];
            comm.broadcast(&mut stop, 0).map_err(TrainError::Ranks)?;
            state.stopped_early = (stop[0] > 0.0).then_some(stop[0] as usize);
        }
        state.seconds = seconds_before + clock.elapsed().as_secs_f64();
        if after_first.is_none() {
            after_first = Some((Instant::now(), state.tokens));
        }
        let elapsed = window.0.elapsed().as_secs_f64();
        let tokens_per_s = window.1 as f64 / elapsed.max(1e-9);
        if due(cfg.log_every) || state.step == cfg.steps {
            writeln!(
                env.log,
                "step {}/{}: loss {loss:.4} lr {lr:.3e} grad_norm {norm:.3} tokens/s {tokens_per_s:.0}",
                state.step, cfg.steps
            )?;
        }
        (env.progress)(&Progress {
            step: state.step,
            steps: cfg.steps,
            loss,
            tokens_per_s,
            state: &state,
        });
        if elapsed > 10.0 {
            window = (Instant::now(), 0);
        }
        if due(cfg.save_every) && state.step < cfg.steps && state.stopped_early.is_none() {
            save_checkpoint(
                &ckpt,
                &model,
                &optim,
                &names,
                &state,
                layout.as_ref(),
                zero,
                comm,
            )?;
        }
    }
    let steady = after_first
        .filter(|_| state.step > resumed_from + 1)
        .map(|(at, tokens)| (state.tokens - tokens, at.elapsed().as_secs_f64().max(1e-9)));
    let steady_tokens_per_s = steady.map(|(tokens, seconds)| tokens as f64 / seconds);
    let steady_exchange_share = steady
        .filter(|_| layout.is_some())
        .map(|(_, seconds)| exchanging.as_secs_f64() / seconds);
    // What each rank holds, measured from its own buffers and summed into one table.
    let gradients = match zero {
        Zero::Gradients => kept_gradients,
        _ => model.trainable_params(),
    };
    let mut held = vec![0.0; 3 * ranks];
    held[3 * rank..3 * rank + 3].copy_from_slice(&[
        model.num_params() as f64,
        gradients as f64,
        optim.state_len() as f64,
    ]);
    comm.sum(&mut held).map_err(TrainError::Ranks)?;
    let rank_state = held
        .chunks(3)
        .map(|c| RankState {
            parameters: c[0] as usize,
            gradients: c[1] as usize,
            moments: c[2] as usize,
        })
        .collect();
    Ok(Trained {
        model,
        state,
        best_weights,
        resumed_from,
        steady_tokens_per_s,
        steady_exchange_share,
        rank_state,
    })
}

/// A step's gradients: the model's own (one rank), or reduced over the ranks in flat form.
enum Reduced {
    Local(GradientsParams),
    Flat(FlatGrads),
}

/// Gradients summed over the ranks: all of them, or (ZeRO-2) this rank's part.
struct FlatGrads {
    /// Starting at buffer offset `base`.
    values: Vec<f32>,
    base: usize,
    /// Per slot: whether any rank had a gradient for it (an unused tensor gets no update, as
    /// on one device).
    present: Vec<bool>,
    /// The step's loss over the whole global batch.
    loss: f64,
    /// The global gradient norm.
    norm: f64,
}

/// Sum this rank's gradients (and loss) with the others'.
fn reduce<B>(
    model: &Model<B>,
    grads: Option<GradientsParams>,
    layout: &Layout,
    zero: Zero,
    loss: f64,
    comm: &mut dyn Collective,
) -> Result<FlatGrads, TrainError>
where
    B: AutodiffBackend + FusedOps,
{
    let mut flat = vec![0.0f32; layout.total];
    let mut sums = vec![0.0f64; 1 + layout.slots.len()];
    sums[0] = loss;
    if let Some(g) = &grads {
        layout.flatten_grads(model, g, &mut flat, &mut sums[1..]);
    }
    drop(grads);
    comm.sum(&mut sums).map_err(TrainError::Ranks)?;
    let rank = comm.rank();
    let (values, base) = match zero {
        Zero::Gradients => {
            let part = layout.parts[rank].clone();
            let mut mine = vec![0.0f32; part.len()];
            comm.reduce_scatter(&flat, &layout.parts, &mut mine)
                .map_err(TrainError::Ranks)?;
            (mine, part.start)
        }
        _ => {
            comm.all_reduce(&mut flat).map_err(TrainError::Ranks)?;
            (flat, 0)
        }
    };
    let mut square = [values.iter().map(|&x| x as f64 * x as f64).sum::<f64>()];
    if zero == Zero::Gradients {
        comm.sum(&mut square).map_err(TrainError::Ranks)?;
    }
    Ok(FlatGrads {
        values,
        base,
        present: sums[1..].iter().map(|&c| c > 0.0).collect(),
        loss: sums[0],
        norm: square[0].sqrt(),
    })
}

/// Write a checkpoint: rank 0 writes the model and every moment (gathered from their owners
/// under ZeRO), so the files are those of a one-device run; the other ranks send their moments.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint<B>(
    ckpt: &Checkpoints,
    model: &Model<B>,
    optim: &AdamW<B>,
    names: &[String],
    state: &TrainState,
    layout: Option<&Layout>,
    zero: Zero,
    comm: &mut dyn Collective,
) -> Result<(), TrainError>
where
    B: AutodiffBackend + FusedOps,
{
    let gathered = match layout {
        Some(layout) if zero != Zero::Off => {
            let rank = comm.rank();
            let mut m = vec![0.0f32; layout.total];
            let mut v = vec![0.0f32; layout.total];
            let mut has = vec![0.0f64; layout.slots.len()];
            for (i, slot) in layout.slots.iter().enumerate() {
                if slot.owner == rank
                    && let Some((sm, sv)) = optim.moments_of(&slot.name)
                {
                    m[slot.range.clone()].copy_from_slice(&sm);
                    v[slot.range.clone()].copy_from_slice(&sv);
                    has[i] = 1.0;
                }
            }
            comm.all_gather(&mut m, &layout.parts)
                .map_err(TrainError::Ranks)?;
            comm.all_gather(&mut v, &layout.parts)
                .map_err(TrainError::Ranks)?;
            comm.sum(&mut has).map_err(TrainError::Ranks)?;
            Some((m, v, has))
        }
        _ => None,
    };
    if comm.rank() != 0 {
        return Ok(());
    }
    let weights = model.trained_weights();
    let moments = match (gathered, layout) {
        (Some((m, v, has)), Some(layout)) => {
            let mut w = Weights::new();
            for (slot, has) in layout.slots.iter().zip(has) {
                if has > 0.0 {
                    let shape = weights
                        .get(&slot.name)
                        .map(|t| t.shape.clone())
                        .unwrap_or_default();
                    w.insert(
                        &format!("{}.exp_avg", slot.name),
                        shape.clone(),
                        m[slot.range.clone()].to_vec(),
                    );
                    w.insert(
                        &format!("{}.exp_avg_sq", slot.name),
                        shape,
                        v[slot.range.clone()].to_vec(),
                    );
                }
            }
            w
        }
        _ => optim.to_weights(names.iter().map(String::as_str), &weights),
    };
    ckpt.save(&weights, &moments, state)
}

/// Checkpoint files: `checkpoint/{model,optimizer}.safetensors` + `state.json`, replaced as a
/// whole by rename; `best.safetensors` beside them.
struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    fn new(dir: &Path) -> Checkpoints {
        Checkpoints {
            dir: dir.to_path_buf(),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    fn error(&self, path: &Path, message: impl ToString) -> TrainError {
        TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }

    fn saved_step(&self) -> Option<usize> {
        let text = std::fs::read_to_string(self.current().join("state.json")).ok()?;
        serde_json::from_str::<TrainState>(&text)
            .ok()
            .map(|s| s.step)
    }

    fn save(
        &self,
        weights: &Weights,
        moments: &Weights,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let tmp = self.dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        weights.save(&tmp.join("model.safetensors"))?;
        moments.save(&tmp.join("optimizer.safetensors"))?;
        let json = serde_json::to_vec(state).expect("state serializes");
        std::fs::write(tmp.join("state.json"), json)?;
        sync_dir(&tmp);
        // Swap in the new checkpoint; a crash in between leaves `checkpoint.old`, which load uses.
        let cur = self.current();
        let old = self.dir.join("checkpoint.old");
        let _ = std::fs::remove_dir_all(&old);
        if cur.exists() {
            std::fs::rename(&cur, &old)?;
        }
        std::fs::rename(&tmp, &cur)?;
        let _ = std::fs::remove_dir_all(&old);
        sync_dir(&self.dir);
        Ok(())
    }

    /// The last complete checkpoint, if any.
    fn load(&self) -> Result<Option<(Weights, Weights, TrainState)>, TrainError> {
        let mut dir = self.current();
        if !dir.join("state.json").exists() {
            dir = self.dir.join("checkpoint.old");
            if !dir.join("state.json").exists() {
                return Ok(None);
            }
        }
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path)?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| self.error(&state_path, e))?;
        let weights = Weights::load(&dir.join("model.safetensors"))?;
        let moments = Weights::load(&dir.join("optimizer.safetensors"))?;
        Ok(Some((weights, moments, state)))
    }

    fn save_best(&self, weights: &Weights) -> Result<(), TrainError> {
        std::fs::create_dir_all(&self.dir)?;
        weights.save(&self.dir.join("best.safetensors"))?;
        Ok(())
    }

    fn best(&self) -> Result<Option<Weights>, TrainError> {
        let path = self.dir.join("best.safetensors");
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Weights::load(&path)?))
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(f) = std::fs::File::open(e.path())
                && e.path().is_file()
            {
                let _ = f.sync_all();
            }
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule) -> TrainConfig {
        TrainConfig {
            steps: 110,
            grad_accum: 1,
            lr: 1.0,
            warmup_steps: 10,
            schedule,
            adamw: AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            clip_norm: None,
            eval_every: 0,
            save_every: 0,
            log_every: 10,
            seed: 0,
            precision: Precision::F32,
            keep_best: true,
            select: "loss".into(),
            patience: None,
            head: Vec::new(),
            head_lr: None,
            parallel: Parallel::default(),
        }
    }

    #[test]
    fn schedules_match_hugging_face() {
        let c = cfg(Schedule::Cosine);
        assert_eq!(c.lr_at(0), 0.0);
        assert!((c.lr_at(5) - 0.5).abs() < 1e-12);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(110).abs() < 1e-12);
        let l = cfg(Schedule::Linear);
        assert!((l.lr_at(35) - 0.75).abs() < 1e-12);
    }
}

#[cfg(test)]
mod training_tests {
    use super::*;
    use crate::models::{ModelSpec, Task};
    use burn::backend::{Autodiff, Flex};

    type AB = Autodiff<Flex>;

    fn spec(task: Task) -> ModelSpec {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2");
        let mut spec = ModelSpec::read(&dir).unwrap();
        spec.task = task;
        spec.config.set_pad_token_id(0);
        spec
    }

    fn config(steps: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            steps,
            grad_accum: 1,
            lr,
            warmup_steps: 5,
            schedule: Schedule::Cosine,
            adamw: AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            clip_norm: Some(1.0),
            eval_every: 20,
            save_every: 0,
            log_every: 10,
            seed: 3,
            precision: Precision::F32,
            keep_best: true,
            select: "loss".into(),
            patience: None,
            head: Vec::new(),
            head_lr: None,
            parallel: Parallel::default(),
        }
    }

    /// Train `spec` from fresh weights on `rows`, validating on the first 8.
    fn run(
        spec: &ModelSpec,
        rows: Vec<Row>,
        objective: Objective,
        tc: &TrainConfig,
    ) -> (Trained<Model<AB>>, String) {
        let dev = Default::default();
        let build = |w: Weights| Model::<AB>::from_weights(spec, w, 1, &dev).map(|m| m.0);
        let model = build(spec.init_weights(1).unwrap()).unwrap();
        let valid = eval_batches(&rows[..8], &objective, 0, 4, 0);
        let mut data = TrainData {
            order: Order::new(rows.len(), 4, 0, true),
            rows,
            objective,
            pad: 0,
            batch_size: 4,
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Vec::new();
        let mut progress = |_: &Progress| {};
        let mut env = Env {
            checkpoints: tmp.path(),
            log: &mut log,
            cancelled: &AtomicBool::new(false),
            progress: &mut progress,
        };
        let trained = train(model, &mut data, &valid, tc, &dev, &mut env).unwrap();
        (trained, String::from_utf8_lossy(&log).into_owned())
    }

    /// The loop learns: a periodic sequence becomes nearly certain within a few dozen steps.
    #[test]
    fn training_learns_a_periodic_sequence() {
        let doc = Row {
            ids: (0..400).map(|i| [3u32, 7, 9, 12, 5][i % 5]).collect(),
            bases: vec![1; 400],
            target: Target::None,
            second: 0,
            token_type: 0,
        };
        let rows = batch::pack(&[doc], 16, None);
        let mut tc = config(60, 0.02);
        tc.grad_accum = 2;
        let (trained, log) = run(&spec(Task::Lm), rows, Objective::Clm, &tc);
        let first = trained.state.history[0].loss;
        let best = trained.state.best.as_ref().unwrap().eval.loss;
        assert!(first > 2.0, "starts near uniform over 16 tokens: {first}");
        // Best losses over seeds 1-8 (dropout 0.1 on): 0.075-0.10, this seed's the highest.
        assert!(best < 0.12, "{log}");
    }

    /// Rows of random tokens; class 1 when token 7 occurs, else class 0.
    fn motif_rows(n: usize) -> Vec<Row> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        (0..n)
            .map(|i| {
                let len = rng.random_range(6..12);
                let mut ids: Vec<u32> = (0..len).map(|_| rng.random_range(1..7)).collect();
                if i % 2 == 1 {
                    let at = rng.random_range(0..len);
                    ids[at] = 7;
                }
                Row {
                    bases: vec![1; ids.len()],
                    ids,
                    target: Target::Class((i % 2) as u32),
                    second: 0,
                    token_type: 0,
                }
            })
            .collect()
    }

    fn classes() -> Objective {
        Objective::SeqCls {
            classes: vec!["absent".into(), "present".into()],
            weights: None,
        }
    }

    /// A sequence head learns a motif, chosen by MCC; early stopping ends a run that stopped
    /// improving.
    #[test]
    fn a_sequence_classifier_learns_a_motif_and_stops_early() {
        let labels = vec!["absent".to_string(), "present".to_string()];
        let spec = spec(Task::SeqCls { labels });
        let mut tc = config(150, 0.01);
        tc.select = "mcc".into();
        tc.eval_every = 10;
        let (trained, log) = run(&spec, motif_rows(64), classes(), &tc);
        let best = trained.state.best.as_ref().unwrap();
        assert!(best.eval.metric("accuracy") >= 0.875, "{log}");
        assert!(best.eval.metric("mcc") > 0.7, "{log}");

        tc.patience = Some(2);
        tc.lr = 1e-6; // nothing improves after the first evaluation
        let (stopped, log) = run(&spec, motif_rows(64), classes(), &tc);
        assert_eq!(stopped.state.stopped_early, Some(30), "{log}");
        assert!(log.contains("stopping early at step 30"), "{log}");
    }

    /// Class weights scale each row's loss: with every weight 2 the mean loss is unchanged, and
    /// a zero weight removes a class from it.
    #[test]
    fn class_weights_weigh_rows() {
        let dev = Default::default();
        let spec = spec(Task::SeqCls {
            labels: vec!["a".into(), "b".into()],
        });
        let model = Model::<Flex>::from_weights(&spec, spec.init_weights(1).unwrap(), 1, &dev)
            .unwrap()
            .0;
        let rows = motif_rows(8);
        let refs: Vec<&Row> = rows.iter().collect();
        let loss = |weights: Option<Vec<f32>>| {
            let objective = Objective::SeqCls {
                classes: vec!["a".into(), "b".into()],
                weights,
            };
            let batch = objective.batch(&refs, 0, 0);
            let sum = objective.loss(model.forward(&batch, &dev), &batch, &dev);
            sum.into_scalar().elem::<f64>() / objective.normalizer(&batch)
        };
        let plain = loss(None);
        assert!((loss(Some(vec![2.0, 2.0])) - plain).abs() < 1e-6);
        assert!((loss(Some(vec![1.0, 0.0])) - plain).abs() > 1e-6);
    }
}
