//! `model.pretrain`, `eval.lm` and `model.generate`: GPT-2 and BERT trained from scratch (or
//! continued from a Hugging Face checkpoint) on DNA, evaluated in bits per base, and sampled.
//!
//! The kinds pick the backend (flex on CPU, CUDA with the `cuda` feature) and hand a generic
//! function the device; everything below that is backend-generic.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokenizers::Tokenizer;

use super::tokenizer::{open_tokenizer, read_sequences, sequence};
use super::training::{self, model_err};
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::arch::LmKind;
use crate::models::arch::{Architecture, FreshSize};
use crate::models::device::on_device;
use crate::models::{
    self, ArchConfig, DeviceSpec, FusedOps, KvCache, LoadReport, Model, ModelSpec, Precision, Task,
    Weights, save_model_dir,
};
use crate::train::optim::AdamWConfig;
use crate::train::{self, Masking, Objective, Order, Row, Schedule, TrainConfig, TrainData};

/// An architecture of the models table, by the name `arch:` takes (its HF `model_type`).
#[derive(Debug, Clone)]
pub(super) struct Arch(&'static Architecture);

impl PartialEq for Arch {
    fn eq(&self, other: &Arch) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Arch {
    pub(super) fn row(&self) -> &'static Architecture {
        self.0
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        models::arch::architecture(&name).map(Arch).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown architecture `{name}`, expected one of {}",
                models::arch::names().join(", ")
            ))
        })
    }
}

impl JsonSchema for Arch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Arch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": models::arch::names(),
            "description": "An architecture of the models table (its Hugging Face model_type).",
        })
    }
}

/// Training objectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ObjectiveKind {
    /// Causal language modelling: predict the next token.
    Clm,
    /// Masked language modelling: predict 15 % hidden tokens.
    Mlm,
}

/// Parameters of `model.pretrain`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PretrainParams {
    arch: Arch,
    /// Default: clm for gpt2, mlm for bert.
    objective: Option<ObjectiveKind>,
    /// `tokenizer.json` (or its directory); its vocabulary sizes the model.
    tokenizer: InputPath,
    /// Training sequences: a table or a `.txt` file.
    train: InputPath,
    /// Validation sequences, evaluated every `eval_every` steps; the best weights are kept.
    valid: Option<InputPath>,
    #[serde(default = "sequence")]
    column: String,
    /// Continue from this model directory (HF layout) instead of fresh weights.
    init: Option<InputPath>,
    /// HF config fields for a fresh model (n_embd, n_layer, n_head, … for gpt2;
    /// hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, … for bert).
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
    /// Tokens per training row (packed for clm, padded per batch for mlm).
    #[serde(default = "seq_len")]
    seq_len: usize,
    #[serde(default = "batch_size")]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    grad_accum: usize,
    /// Optimizer steps; default: `epochs` passes over the training rows.
    steps: Option<usize>,
    #[serde(default = "one")]
    epochs: usize,
    #[serde(default = "lr")]
    lr: f64,
    #[serde(default)]
    warmup_steps: usize,
    #[serde(default = "cosine")]
    schedule: Schedule,
    #[serde(default = "weight_decay")]
    weight_decay: f64,
    #[serde(default = "beta1")]
    beta1: f64,
    #[serde(default = "beta2")]
    beta2: f64,
    #[serde(default = "eps")]
    eps: f64,
    /// Global gradient-norm clip (null: none).
    #[serde(default = "clip")]
    clip_norm: Option<f64>,
    /// 0: evaluate only at the end.
    #[serde(default)]
    eval_every: usize,
    /// Checkpoint every N steps so a killed run resumes (0: never).
    #[serde(default = "save_every")]
    save_every: usize,
    #[serde(default = "log_every")]
    log_every: usize,
    /// Keep the weights of the best validation loss rather than the last step.
    #[serde(default = "yes")]
    keep_best: bool,
    #[serde(default = "mask_probability")]
    mask_probability: f64,
    #[serde(default = "seed")]
    seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[serde(default = "cpu")]
    device: String,
    /// f32; bf16 or f16 mixed precision on CUDA.
    #[serde(default = "f32")]
    precision: String,
    /// Read at most this many sequences per split (0: all).
    #[serde(default)]
    max_sequences: usize,
}

fn seq_len() -> usize {
    128
}
pub(super) fn batch_size() -> usize {
    16
}
pub(super) fn one() -> usize {
    1
}
pub(super) fn lr() -> f64 {
    5e-4
}
pub(super) fn cosine() -> Schedule {
    Schedule::Cosine
}
pub(super) fn weight_decay() -> f64 {
    0.01
}
pub(super) fn beta1() -> f64 {
    0.9
}
pub(super) fn beta2() -> f64 {
    0.999
}
pub(super) fn eps() -> f64 {
    1e-8
}
pub(super) fn clip() -> Option<f64> {
    Some(1.0)
}
pub(super) fn save_every() -> usize {
    100
}
pub(super) fn log_every() -> usize {
    10
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn mask_probability() -> f64 {
    0.15
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

pub static PRETRAIN: StepKind = StepKind {
    name: "model.pretrain",
    version: 2,
    summary: "train GPT-2 (clm) or BERT (mlm) on DNA; saves a Hugging Face model directory",
    outputs: &[
        ("model", "model"),
        ("history", "history.csv"),
        ("plot", "loss.svg"),
    ],
    schema: |g| g.subschema_for::<PretrainParams>(),
    check: |with| {
        let p = params::<PretrainParams>(with)?;
        check_device(&p.device, &p.precision)?;
        let name = p.arch.row().model_type;
        match (p.arch.row().lm, p.objective) {
            (LmKind::Causal, Some(ObjectiveKind::Mlm)) => {
                return Err(format!(
                    "{name} trains with `objective: clm` (a decoder cannot see masked tokens' right context)"
                ));
            }
            (LmKind::Masked, Some(ObjectiveKind::Clm)) => {
                return Err(format!("{name} trains with `objective: mlm`"));
            }
            _ => {}
        }
        if p.seq_len < 2 || p.batch_size == 0 || p.grad_accum == 0 {
            return Err(
                "`seq_len` must be at least 2, `batch_size` and `grad_accum` at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&p.mask_probability) || p.mask_probability == 0.0 {
            return Err("`mask_probability` must be between 0 and 1".into());
        }
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err("`lr` must be a positive number".into());
        }
        Ok(())
    },
    run: pretrain,
};

/// A tokenizer with the special tokens the models need.
pub(crate) struct Vocab {
    pub tokenizer: Tokenizer,
    /// The `tokenizer.json` file (any name), beside its HF config files.
    pub path: PathBuf,
    pub size: usize,
    pub pad: u32,
    pub eos: Option<u32>,
    pub bert: Option<(u32, u32, u32)>, // cls, sep, mask
    specials: Vec<u32>,
}

pub(crate) fn load_vocab(path: &Path) -> Result<Vocab, StepError> {
    let (path, tokenizer) = open_tokenizer(path)?;
    let id = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
    let eos = id(&["<|endoftext|>", "</s>", "[EOS]", "[SEP]"]);
    let pad = id(&["[PAD]", "<pad>"]).or(eos).unwrap_or(0);
    let bert = match (
        id(&["[CLS]", "<s>"]),
        id(&["[SEP]", "</s>"]),
        id(&["[MASK]", "<mask>"]),
    ) {
        (Some(c), Some(s), Some(m)) => Some((c, s, m)),
        _ => None,
    };
    let specials = tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();
    Ok(Vocab {
        size: tokenizer.get_vocab_size(true),
        path,
        tokenizer,
        pad,
        eos,
        bert,
        specials,
    })
}

/// Tokenize sequences without special tokens, remembering how many bases each token spells.
pub(crate) fn encode(vocab: &Vocab, seqs: &[String]) -> Result<Vec<Row>, StepError> {
    Ok(encode_spans(vocab, seqs)?
        .into_iter()
        .map(|(row, _)| row)
        .collect())
}

/// Each token's `[start, end)` in bases of its sequence (the tokenizer's offsets as character
/// positions; empty for a token that spells no base, such as `[CLS]`).
pub(crate) type Spans = Vec<(usize, usize)>;

/// [`encode`], with each token's span of the sequence (what per-base labels are aligned by).
pub(crate) fn encode_spans(vocab: &Vocab, seqs: &[String]) -> Result<Vec<(Row, Spans)>, StepError> {
    use rayon::prelude::*;
    seqs.par_iter()
        .map(|s| {
            let enc = vocab
                .tokenizer
                .encode(s.as_str(), false)
                .map_err(|e| StepError::new(format!("tokenizing: {e}")))?;
            // Offsets are in bytes; a sequence of ASCII letters has one byte per base.
            let char_at = |byte: usize| {
                if s.is_ascii() {
                    byte
                } else {
                    s[..byte.min(s.len())].chars().count()
                }
            };
            let spans: Spans = enc
                .get_offsets()
                .iter()
                .map(|&(a, b)| (char_at(a), char_at(b)))
                .collect();
            let bases = spans
                .iter()
                .map(|(a, b)| (b - a).min(u16::MAX as usize) as u16)
                .collect();
            let row = Row {
                ids: enc.get_ids().to_vec(),
                bases,
                target: train::Target::None,
                second: 0,
            };
            Ok((row, spans))
        })
        .collect()
}

/// Rows for an objective: packed for clm, framed with [CLS]/[SEP] for mlm.
pub(crate) fn rows_for(
    vocab: &Vocab,
    docs: &[Row],
    objective: &Objective,
    seq_len: usize,
) -> Vec<Row> {
    match objective {
        Objective::Mlm(_) => {
            let (cls, sep, _) = vocab.bert.expect("checked before");
            train::batch::frame(docs, seq_len, cls, sep)
        }
        _ => train::batch::pack(docs, seq_len, vocab.eos),
    }
}

/// The language-model objective of an architecture (its row of the table says which).
pub(crate) fn objective_for(
    config: &ArchConfig,
    vocab: &Vocab,
    probability: f64,
) -> Result<Objective, StepError> {
    if config.architecture().lm == LmKind::Causal {
        return Ok(Objective::Clm);
    }
    let Some((_, _, mask)) = vocab.bert else {
        return Err(StepError::new(format!(
            "{}: BERT needs [CLS], [SEP] and [MASK] tokens; train the tokenizer with the BERT \
             special tokens (the default for wordpiece, unigram, char and kmer)",
            vocab.path.display()
        )));
    };
    Ok(Objective::Mlm(Masking {
        probability,
        mask_id: mask,
        special: vocab.specials.clone(),
        vocab_size: vocab.size,
    }))
}

/// HF config for a fresh model: the row's defaults, then the user's fields, vocabulary from
/// the tokenizer.
pub(super) fn fresh_config(
    arch: &Arch,
    user: &serde_json::Map<String, serde_json::Value>,
    vocab: &Vocab,
    seq_len: usize,
) -> Result<ArchConfig, StepError> {
    let size = FreshSize {
        vocab_size: vocab.size,
        positions: seq_len.max(16),
        pad: Some(vocab.pad),
        eos: vocab.eos,
    };
    let cfg = ArchConfig::fresh(arch.row().model_type, &size, user)
        .map_err(|e| StepError::new(format!("`config`: {e}")))?;
    if cfg.max_positions() < seq_len {
        return Err(StepError::new(format!(
            "`seq_len` {seq_len} is longer than the model's {} positions",
            cfg.max_positions()
        )));
    }
    Ok(cfg)
}

fn pretrain(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: PretrainParams = params(ctx.with).map_err(StepError::new)?;
    let (device, precision) = resolve_device(ctx, &p.device, &p.precision)?;
    let vocab = load_vocab(p.tokenizer.path())?;
    let config = match &p.init {
        Some(dir) => models::read_config(dir.path()).map_err(model_err)?.0,
        None => fresh_config(&p.arch, &p.config, &vocab, p.seq_len)?,
    };
    if config.vocab_size() < vocab.size {
        return Err(StepError::new(format!(
            "the tokenizer has {} tokens but the model only {}",
            vocab.size,
            config.vocab_size()
        )));
    }
    let objective = objective_for(&config, &vocab, p.mask_probability)?;
    let load = |path: &InputPath| -> Result<Vec<Row>, StepError> {
        let seqs = read_sequences(path.path(), &p.column, p.max_sequences)?;
        let docs = encode(&vocab, &seqs)?;
        Ok(rows_for(&vocab, &docs, &objective, p.seq_len))
    };
    let rows = load(&p.train)?;
    let valid_rows = match &p.valid {
        Some(v) => load(v)?,
        None => Vec::new(),
    };
    writeln!(
        ctx.log,
        "{} rows of up to {} tokens for training, {} for validation; device {device}, precision {precision}",
        rows.len(),
        p.seq_len,
        valid_rows.len()
    )?;
    let order = Order::new(rows.len(), p.batch_size, p.seed, true);
    let steps = p
        .steps
        .unwrap_or_else(|| (p.epochs * order.batches_per_epoch()).div_ceil(p.grad_accum));
    let cfg = TrainConfig {
        steps,
        grad_accum: p.grad_accum,
        lr: p.lr,
        warmup_steps: p.warmup_steps,
        schedule: p.schedule,
        adamw: AdamWConfig {
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            weight_decay: p.weight_decay,
        },
        clip_norm: p.clip_norm,
        eval_every: p.eval_every,
        save_every: p.save_every,
        log_every: p.log_every,
        seed: p.seed,
        precision,
        keep_best: p.keep_best && !valid_rows.is_empty(),
        select: "loss".into(),
        patience: None,
        head: Vec::new(),
        head_lr: None,
    };
    let valid = train::eval_batches(
        &valid_rows,
        &objective,
        vocab.pad,
        p.batch_size,
        p.seed ^ 0xE7A1,
    );
    let mut data = TrainData {
        rows,
        order,
        objective,
        pad: vocab.pad,
        batch_size: p.batch_size,
    };
    let spec = ModelSpec {
        config,
        task: Task::Lm,
    };
    let init = match &p.init {
        Some(dir) => Weights::load_dir(dir.path()).map_err(model_err)?,
        None => spec.init_weights(p.seed).map_err(model_err)?,
    };
    let seed = p.seed;
    on_device!(device, precision, |dev: B| {
        let build = |w: Weights| {
            Model::<Autodiff<B>>::from_weights(&spec, w, seed, &dev)
                .map(|(m, _)| m.with_precision(precision))
        };
        let (model, report) =
            Model::<Autodiff<B>>::from_weights(&spec, init, seed, &dev).map_err(model_err)?;
        log_report(ctx, &report)?;
        let model = model.with_precision(precision);
        let parameters = model.num_params();
        let trained = training::run(ctx, model, &build, &mut data, &valid, &cfg, &dev)?;
        save_model_dir(
            &ctx.out.join("model"),
            &spec,
            training::selected(&trained),
            Some(&vocab.path),
        )
        .map_err(model_err)?;
        training::write_history(ctx.out, &trained.state, "loss (nats/token)")?;
        write_metrics(ctx.out, &training::run_metrics(&trained, parameters))
    })
}

/// Say in the log which tensors a load skipped (another head's) and started fresh (this one's).
pub(super) fn log_report(ctx: &mut StepContext, report: &LoadReport) -> Result<(), StepError> {
    for (what, names) in [
        ("skipped {} tensor(s) of another head", &report.skipped),
        (
            "initialised {} tensor(s) of the new head fresh",
            &report.fresh,
        ),
    ] {
        if !names.is_empty() {
            let what = what.replace("{}", &names.len().to_string());
            writeln!(ctx.log, "{what}: {}", names.join(", "))?;
        }
    }
    Ok(())
}

/// Load a model directory (ours or transformers') onto `device` under its own head.
pub(crate) fn load_model<B: FusedOps>(
    dir: &Path,
    device: &B::Device,
) -> Result<Model<B>, StepError> {
    Model::load(dir, None, 0, device)
        .map(|m| m.0)
        .map_err(model_err)
}

/// Parameters of `model.generate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GenerateParams {
    /// A GPT-2 model directory (HF layout).
    model: InputPath,
    /// Prompts (DNA); an empty prompt starts from the end-of-text token.
    #[serde(default = "empty_prompt")]
    prompts: Vec<String>,
    /// Samples per prompt.
    #[serde(default = "one")]
    samples: usize,
    #[serde(default = "max_new_tokens")]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[serde(default = "temperature")]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[serde(default)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[serde(default = "top_p")]
    top_p: f64,
    #[serde(default = "seed")]
    seed: u64,
    /// Stop a sample at the end-of-text token.
    #[serde(default = "yes")]
    stop_at_eos: bool,
    #[serde(default = "cpu")]
    device: String,
}

fn empty_prompt() -> Vec<String> {
    vec![String::new()]
}
fn max_new_tokens() -> usize {
    64
}
fn temperature() -> f64 {
    1.0
}
fn top_p() -> f64 {
    1.0
}

pub static GENERATE: StepKind = StepKind {
    name: "model.generate",
    version: 3,
    summary: "sample DNA from a GPT-2 model (temperature, top-k, top-p, seed, end-of-text)",
    outputs: &[("samples", "samples.jsonl")],
    schema: |g| g.subschema_for::<GenerateParams>(),
    check: |with| {
        let p = params::<GenerateParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.temperature < 0.0 || !p.temperature.is_finite() {
            return Err("`temperature` must be 0 (greedy) or positive".into());
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err("`top_p` must be in (0, 1]".into());
        }
        if p.samples == 0 || p.prompts.is_empty() {
            return Err("`samples` must be at least 1 and `prompts` not empty".into());
        }
        Ok(())
    },
    run: generate,
};

/// Choose the next token from logits: temperature, then top-k, then top-p (nucleus).
pub(crate) fn sample_token(
    logits: &[f32],
    temperature: f64,
    top_k: usize,
    top_p: f64,
    rng: &mut impl rand::Rng,
) -> u32 {
    if temperature == 0.0 {
        return logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k.max(1));
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut r = rng.random::<f64>() * kept;
    for (n, w) in weights[..keep].iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return order[n] as u32;
        }
    }
    order[keep - 1] as u32
}

/// How the next token is chosen: `temperature` 0 is greedy.
pub(crate) struct Sampler {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
}

/// One round of generation: how far rows may grow and when they stop.
pub(crate) struct Continuation<'a> {
    /// New tokens per row, at most.
    pub max_new: usize,
    /// The model's positions: past them the window slides and is fed afresh.
    pub window: usize,
    /// A row stops at this token (end-of-text), which is kept as its last token.
    pub stop: Option<u32>,
    /// Appended to rows that stopped while others go on.
    pub pad: u32,
    /// Set when the run is cancelled: generation stops early.
    pub cancelled: &'a std::sync::atomic::AtomicBool,
}

impl Continuation<'_> {
    /// Extend rows of equal length by sampled tokens, all rows in one batch. Keys and values of
    /// the positions fed so far are kept: the prompt goes in once, then one token per step.
    pub(crate) fn extend<B: FusedOps>(
        &self,
        model: &Model<B>,
        rows: &mut [Vec<u32>],
        sampler: &Sampler,
        rng: &mut impl rand::Rng,
        dev: &B::Device,
    ) {
        let n = rows.len();
        let mut done = vec![false; n];
        let mut cache = KvCache::default();
        for _ in 0..self.max_new {
            if n == 0
                || done.iter().all(|d| *d)
                || self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            if cache.len() + 1 > self.window {
                cache = KvCache::default();
            }
            let t = if cache.is_empty() {
                rows[0].len().min(self.window)
            } else {
                1
            };
            let flat: Vec<i64> = rows
                .iter()
                .flat_map(|r| r[r.len() - t..].iter().map(|&i| i as i64))
                .collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, t]), dev);
            let logits = model
                .forward_cached(ids, &mut cache)
                .expect("generation runs causal language models (checked by the caller)")
                .narrow(1, t - 1, 1); // [n, 1, V]
            let (_, host) = models::weights::host(logits);
            let v = host.len() / n;
            for (s, row) in rows.iter_mut().enumerate() {
                if done[s] {
                    row.push(self.pad);
                    continue;
                }
                let next = sample_token(
                    &host[s * v..(s + 1) * v],
                    sampler.temperature,
                    sampler.top_k,
                    sampler.top_p,
                    rng,
                );
                row.push(next);
                if Some(next) == self.stop {
                    done[s] = true;
                }
            }
        }
    }
}

/// Token ids as text. Tokenizers without a decoder (char, k-mer, unigram) join tokens with
/// spaces, which a DNA or protein sequence has none of; BPE and WordPiece decode as written,
/// so prose keeps its spaces.
pub(crate) fn decode(vocab: &Vocab, ids: &[u32]) -> Result<String, StepError> {
    let text = vocab
        .tokenizer
        .decode(ids, true)
        .map_err(|e| StepError::new(format!("decoding: {e}")))?;
    Ok(if vocab.tokenizer.get_decoder().is_some() {
        text
    } else {
        text.split_whitespace().collect()
    })
}

fn generate(ctx: &mut StepContext) -> Result<(), StepError> {
    use rand::SeedableRng;
    let p: GenerateParams = params(ctx.with).map_err(StepError::new)?;
    let (device, _) = resolve_device(ctx, &p.device, "f32")?;
    let vocab = load_vocab(p.model.path())?;
    let dir = p.model.path().to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut lines = String::new();
    let (mut total_bases, mut gc, mut eos_stops, mut n) = (0usize, 0usize, 0usize, 0usize);
    on_device!(device, Precision::F32, |dev: B| {
        let loaded = load_model::<B>(&dir, &dev)?;
        let config = loaded.spec().config.clone();
        if config.architecture().lm != LmKind::Causal || loaded.spec().task != Task::Lm {
            return Err(StepError::new(format!(
                "{}: model.generate needs a causal language model, this is {} {}",
                dir.display(),
                config.name(),
                loaded.spec().class()
            )));
        }
        let model = &loaded;
        let window = config.max_positions();
        for prompt in &p.prompts {
            let enc = vocab
                .tokenizer
                .encode(prompt.as_str(), false)
                .map_err(|e| StepError::new(format!("tokenizing the prompt: {e}")))?;
            let mut start: Vec<u32> = enc.get_ids().to_vec();
            if start.is_empty() {
                start.push(vocab.eos.ok_or_else(|| {
                    StepError::new("an empty prompt needs an end-of-text token in the tokenizer")
                })?);
            }
            let mut rows: Vec<Vec<u32>> = vec![start.clone(); p.samples];
            let sampler = Sampler {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
            };
            let stop = vocab.eos.filter(|_| p.stop_at_eos);
            let run = Continuation {
                max_new: p.max_new_tokens,
                window,
                stop,
                pad: vocab.pad,
                cancelled: ctx.cancelled,
            };
            run.extend(model, &mut rows, &sampler, &mut rng, &dev);
            for (s, row) in rows.iter().enumerate() {
                let mut new: Vec<u32> = row[start.len()..].to_vec();
                let stopped = match new
                    .iter()
                    .position(|&i| Some(i) == vocab.eos && p.stop_at_eos)
                {
                    Some(at) => {
                        new.truncate(at);
                        "eos"
                    }
                    None => "length",
                };
                let text = decode(&vocab, &new)?;
                total_bases += text.len();
                gc += text
                    .bytes()
                    .filter(|b| matches!(b, b'G' | b'C' | b'g' | b'c'))
                    .count();
                eos_stops += usize::from(stopped == "eos");
                n += 1;
                let line = json!({"prompt": prompt, "sample": s, "tokens": new.len(), "stopped": stopped, "sequence": text});
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
        }
        Ok::<(), StepError>(())
    })?;
    std::fs::write(ctx.out.join("samples.jsonl"), lines)?;
    write_metrics(
        ctx.out,
        &json!({
            "samples": n,
            "mean_bases": total_bases as f64 / n.max(1) as f64,
            "gc": gc as f64 / total_bases.max(1) as f64,
            "eos_rate": eos_stops as f64 / n.max(1) as f64,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_respects_greedy_top_k_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(sample_token(&logits, 0.0, 0, 1.0, &mut rng), 1);
        for _ in 0..200 {
            let k = sample_token(&logits, 1.0, 2, 1.0, &mut rng);
            assert!(k == 1 || k == 3);
            // Top-p 0.3 keeps only the most likely token.
            assert_eq!(sample_token(&logits, 1.0, 0, 0.3, &mut rng), 1);
        }
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[sample_token(&logits, 1.0, 0, 1.0, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
    }
}
