//! `model.pretrain`: any architecture of the models table trained from scratch (or continued
//! from a Hugging Face checkpoint) on DNA with its own objective (clm for a decoder, mlm for an
//! encoder); what the other model kinds share to build and load a model.
//!
//! The kinds pick the backend (flex on CPU, CUDA with the `cuda` feature) and hand a generic
//! function the device; everything below that is backend-generic.

use std::path::Path;

use burn::backend::Autodiff;
use burn::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::data::{Decided, check_rows, read_table_alphabet, reading_alphabet};
pub(crate) use super::generate::Sampler;
use super::table::LocatedTable;
use super::tokenizer::{read_sequences, sequence};
use super::train_options::TrainOptions;
use super::training::{self, model_err};
pub(crate) use super::vocab::{Spans, Vocab, encode_spans, encode_table, load_vocab};
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::arch::LmKind;
use crate::models::arch::{Architecture, FreshSize};
use crate::models::device::on_device;
use crate::models::{self, ArchConfig, FusedOps, LoadReport, Model, ModelSpec, Task};
use crate::train::{self, Masking, Objective, Order, Row, TrainConfig, TrainData};

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
    /// Default: clm for a decoder (gpt2, llama), mlm for an encoder (bert).
    objective: Option<ObjectiveKind>,
    /// `tokenizer.json` (or its directory); its vocabulary sizes the model.
    tokenizer: InputPath,
    /// Training sequences: a table or a `.txt` file.
    train: InputPath,
    /// Validation sequences, evaluated every `eval_every` steps; the best weights are kept.
    valid: Option<InputPath>,
    /// Column holding the sequences, for table inputs.
    #[serde(default = "sequence")]
    column: String,
    /// Continue from this model directory (HF layout) instead of fresh weights.
    init: Option<InputPath>,
    /// HF config fields for a fresh model (n_embd, n_layer, n_head, … for gpt2;
    /// hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, … for bert;
    /// the same and num_key_value_heads, rope_theta, tie_word_embeddings, … for llama).
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
    /// Tokens per training row (packed for clm, padded per batch for mlm).
    #[serde(default = "seq_len")]
    seq_len: usize,
    /// Keep the weights of the best validation loss rather than the last step.
    #[serde(default = "yes")]
    keep_best: bool,
    /// Masked LM: share of tokens chosen for masking (BERT: 0.15).
    #[serde(default = "mask_probability")]
    mask_probability: f64,
    /// Read at most this many sequences per split (0: all).
    #[serde(default)]
    max_sequences: usize,
    /// Batch, steps, optimizer, cadence, seed, device: shared by every training kind.
    #[serde(flatten)]
    options: TrainOptions,
}

fn seq_len() -> usize {
    128
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn mask_probability() -> f64 {
    0.15
}
pub static PRETRAIN: StepKind = StepKind {
    name: "model.pretrain",
    version: 5,
    summary: "train any architecture of the table (causal or masked LM), from scratch or on from `init`; saves a Hugging Face model directory",
    outputs: &[
        ("model", "model"),
        ("history", "history.csv"),
        ("plot", "loss.svg"),
    ],
    schema: |g| g.subschema_for::<PretrainParams>(),
    check: |with| {
        let p = params::<PretrainParams>(with)?;
        p.options.check()?;
        if p.options.lora.is_some() && p.init.is_none() {
            return Err("`lora` adapts an existing model: set `init:` to its directory".into());
        }
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
        if p.init.is_none() {
            models::arch::check_config_fields(name, &p.config)
                .map_err(|e| format!("`config`: {e}"))?;
        }
        if p.seq_len < 2 {
            return Err("`seq_len` must be at least 2".into());
        }
        if !(0.0..1.0).contains(&p.mask_probability) || p.mask_probability == 0.0 {
            return Err("`mask_probability` must be between 0 and 1".into());
        }
        Ok(())
    },
    run: pretrain,
};

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

/// [`rows_for`], and per row the held-out sequence (index into `docs`) each token comes from.
pub(crate) fn rows_with_owners(
    vocab: &Vocab,
    docs: &[Row],
    objective: &Objective,
    seq_len: usize,
) -> (Vec<Row>, train::batch::Owners) {
    match objective {
        Objective::Mlm(_) => {
            let (cls, sep, _) = vocab.bert.expect("checked before");
            train::batch::frame_with_owners(docs, seq_len, cls, sep)
        }
        _ => train::batch::pack_with_owners(docs, seq_len, vocab.eos),
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
/// the tokenizer (a `vocab_size` of the user's may only make room for more tokens).
pub(super) fn fresh_config(
    arch: &Arch,
    user: &serde_json::Map<String, serde_json::Value>,
    vocab: &Vocab,
    seq_len: usize,
) -> Result<ArchConfig, StepError> {
    let vocab_size = match user.get("vocab_size") {
        None => vocab.size,
        Some(v) => match v.as_u64() {
            Some(n) if n as usize >= vocab.size => n as usize,
            _ => {
                return Err(StepError::new(format!(
                    "`config.vocab_size` {v} is smaller than the tokenizer's {} tokens; leave it \
                     out (a fresh model takes the tokenizer's size) or make it at least that",
                    vocab.size
                )));
            }
        },
    };
    let size = FreshSize {
        vocab_size,
        positions: seq_len.max(16),
        pad: Some(vocab.pad),
        eos: vocab.eos,
        mask: vocab.bert.map(|(_, _, mask)| mask),
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
    let (device, precision) = p.options.resolve_device(ctx)?;
    let vocab = load_vocab(p.tokenizer.path())?;
    let config = match &p.init {
        Some(dir) => ModelSpec::read(dir.path()).map_err(model_err)?.config,
        None => fresh_config(&p.arch, &p.config, &vocab, p.seq_len)?,
    };
    let model_dir = p
        .init
        .as_ref()
        .map(|i| i.path())
        .unwrap_or(Path::new("the fresh model"));
    vocab.check_fits(config.vocab_size(), model_dir)?;
    let vocab = vocab.for_model(&config)?;
    let objective = objective_for(&config, &vocab, p.mask_probability)?;
    // Each table's alphabet is one the tokenizer spells, before anything trains.
    let load = |path: &InputPath| -> Result<(Vec<Row>, Decided), StepError> {
        let seqs = read_sequences(path.path(), &p.column, p.max_sequences)?;
        let decided = read_alphabet(&vocab, path.path(), &seqs, model_dir)?;
        let docs = encode_table(&vocab, path.path(), &seqs)?;
        Ok((rows_for(&vocab, &docs, &objective, p.seq_len), decided))
    };
    let (rows, alphabet) = load(&p.train)?;
    let valid_rows = match &p.valid {
        Some(v) => load(v)?.0,
        None => Vec::new(),
    };
    writeln!(
        ctx.log,
        "{} rows of up to {} tokens for training, {} for validation; device {device}, precision {precision}",
        rows.len(),
        p.seq_len,
        valid_rows.len()
    )?;
    let o = &p.options;
    let order = Order::new(rows.len(), o.batch_size, o.seed, true);
    let steps = o.steps(order.batches_per_epoch(), 1);
    let cfg = TrainConfig {
        keep_best: p.keep_best && !valid_rows.is_empty(),
        ..o.train_config(steps, o.eval_every, precision)
    };
    let valid = train::eval_batches(
        &valid_rows,
        &objective,
        vocab.pad,
        o.batch_size,
        o.seed ^ 0xE7A1,
    );
    let mut data = TrainData {
        rows,
        order,
        objective,
        pad: vocab.pad,
        batch_size: o.batch_size,
    };
    let spec = ModelSpec {
        config,
        task: Task::Lm,
        adapter: o.lora.as_ref().map(|l| l.spec(false)),
    };
    let init = match &p.init {
        Some(dir) => models::read_weights(dir.path(), &spec).map_err(model_err)?,
        None => spec.init_weights(o.seed).map_err(model_err)?,
    };
    let seed = o.seed;
    on_device!(device, precision, |dev: B| {
        let (model, report) =
            Model::<Autodiff<B>>::from_weights(&spec, init, seed, &dev).map_err(model_err)?;
        log_report(ctx, &report)?;
        let model = model.with_precision(precision);
        let parameters = model.num_params();
        let trained = training::run(ctx, model, &mut data, &valid, &cfg, &dev)?;
        let best = training::selected(&trained)?;
        let base = training::adapter_base(p.init.as_ref().map(|i| i.path()));
        let merge = o.lora.as_ref().is_some_and(|l| l.merge);
        training::save_trained(&best, &ctx.out.join("model"), base, merge, &vocab.path)?;
        training::write_history(ctx.out, &trained.state, "loss (nats/token)")?;
        let mut metrics = training::run_metrics(&trained, parameters);
        super::merge(&mut metrics, alphabet.metrics());
        write_metrics(ctx.out, &metrics)
    })
}

/// [`read_alphabet`] of a table's `column`, its rows named by line and id.
pub(super) fn table_alphabet(
    vocab: &Vocab,
    table: &LocatedTable,
    column: &str,
    model: &Path,
) -> Result<Decided, StepError> {
    let seqs = table.texts(column, "sequence", "a sequence")?;
    let decided = reading_alphabet(&table.meta, &seqs);
    check_rows(decided, &seqs, &|i| table.at(i, column))?;
    let name = format!("{}{}", table.path.display(), table.meta.origin());
    vocab.check_alphabet(decided, &name, model)?;
    Ok(decided)
}

/// The alphabet of the sequences `seqs` read from `path` (its metadata's, else their letters'),
/// checked: rows that disagree with it, or letters the model's tokenizer cannot spell, are an
/// error naming the table (and the user's file it came from) and the model.
pub(super) fn read_alphabet(
    vocab: &Vocab,
    path: &Path,
    seqs: &[String],
    model: &Path,
) -> Result<Decided, StepError> {
    let (decided, name) = read_table_alphabet(path, seqs)?;
    vocab.check_alphabet(decided, &name, model)?;
    Ok(decided)
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

/// The tokenizer at `tokenizer` as the model directory `model` reads it ([`Vocab::for_model`]);
/// as it is when `model` has no readable config (loading the model then says what is wrong).
pub(crate) fn load_model_vocab(tokenizer: &Path, model: &Path) -> Result<Vocab, StepError> {
    let vocab = load_vocab(tokenizer)?;
    match ModelSpec::read(model) {
        Ok(spec) => vocab.for_model(&spec.config),
        Err(_) => Ok(vocab),
    }
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
