//! `model.finetune`: a task head trained on a labelled table (`task: seq-cls`, `regression`,
//! `token-cls`, `pair-cls` or `multi-label`), or a causal LM taught to answer (`task: text`,
//! see [`super::answers`]), from a pretrained model directory (ours or transformers') or from
//! scratch.
//! The validation split picks the weights (`select:`), the test split is scored once at the
//! end with them, and the predictions table has the format of the baselines', so
//! `eval.classify` / `eval.regress` score both by the same code.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::module::Module;
use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::answers;
use super::data::Decided;
use super::model::{
    Arch, Sampler, Spans, Vocab, encode_spans, fresh_config, load_vocab, log_report, table_alphabet,
};
use super::table::{
    LocatedTable, TableMeta, base_classes, class_indices, label_characters, label_flags,
    label_sets, label_strings, read_role, training_classes, training_labels, write_table_with,
};
use super::tokenizer::fold_case;
use super::train_options::TrainOptions;
use super::training::{self, model_err};
use super::vocab::{check_unknown, encode_table_spans, unk_rate};
use super::{InputPath, StepContext, StepError, StepKind, params, plot, write_metrics};
use crate::models::arch::{Framing, LmKind, MeanFold, check_config_fields};
use crate::models::device::on_device;
use crate::models::{
    ArchConfig, FusedOps, Model, ModelSpec, Precision, Task, Weights, read_weights,
};
use crate::train::objective::{argmax, classification_scores};
use crate::train::per_base::{TokenLabel, base_predictions, token_labels};
use crate::train::{
    self, Batch, Objective, Order, Row, Target, TrainConfig, TrainData, metric_names,
};

/// What the head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum TaskKind {
    /// One class per sequence (HF `…ForSequenceClassification`).
    SeqCls,
    /// One number per sequence (`num_labels: 1`, `problem_type: regression`).
    Regression,
    /// One class per base or residue: the label column holds one character per base (a
    /// dot-bracket structure, a DSSP state); HF `…ForTokenClassification`. Labels reach tokens
    /// by the tokenizer's offsets (`token_label`), predictions are painted back on every base.
    TokenCls,
    /// One class per pair of sequences (`sequence` and `pair` columns), joined as one input:
    /// BERT's `[CLS] a [SEP] b [SEP]` with token type 1 on `b [SEP]`, GPT-2's `a <eos> b`; the
    /// head and saved model are `…ForSequenceClassification`'s.
    PairCls,
    /// Any number of labels per sequence (the label column lists them, `;`-separated; empty:
    /// none): a sigmoid per label, HF `problem_type: multi_label_classification`; scored by
    /// micro / macro F1, subset accuracy and AUROC per label.
    MultiLabel,
    /// The label column's text generated from the sequence (GPT-2): `sequence <eos> label
    /// <eos>` as one causal row, loss on the answer only; test rows answered greedily
    /// (`prediction`) and by sampling (`sampled`), scored by exact match and token F1. Saved
    /// as a plain `…LMHeadModel`.
    Text,
}

/// What stays fixed while the head trains.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Freeze {
    /// `none` (train everything) or `backbone` (train only the head).
    Named(FreezeName),
    /// The embeddings and the first N layers.
    Layers(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum FreezeName {
    None,
    Backbone,
}

/// How classes weigh in the loss.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum ClassWeights {
    /// `balanced`: n / (classes × rows of the class), scikit-learn's rule.
    Named(BalancedName),
    /// A weight per class label; classes left out weigh 1.
    Given(std::collections::BTreeMap<String, f64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum BalancedName {
    Balanced,
}

/// Parameters of `model.finetune`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FinetuneParams {
    /// `seq-cls`, `regression`, `token-cls`, `pair-cls`, `multi-label` or `text`.
    task: TaskKind,
    /// A model directory (HF layout) to start from: its backbone is kept, its head replaced
    /// when it has another one. Without it, `arch` and `config` build a fresh model.
    init: Option<InputPath>,
    /// Architecture of a fresh model (no `init`).
    arch: Option<Arch>,
    /// HF config fields of a fresh model (see model.pretrain); its position table holds 512
    /// tokens unless `n_positions` / `max_position_embeddings` says otherwise.
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
    /// `tokenizer.json` (or its directory); default: the one in `init`.
    tokenizer: Option<InputPath>,
    /// Training table.
    train: InputPath,
    /// Validation table: evaluated every `eval_every` steps; its best `select` score picks the
    /// weights that are saved and tested.
    valid: InputPath,
    /// Test table: scored once, at the end, with the selected weights.
    test: InputPath,
    /// Column holding the sequences.
    #[serde(default = "super::table::sequence_column")]
    sequence: String,
    /// `pair-cls`: the column of each pair's second sequence (default `pair`, as data.pairs
    /// writes it).
    pair: Option<String>,
    /// Column holding the labels (classes, numbers, per-base strings, or `;`-joined label sets).
    #[serde(default = "super::table::label_column")]
    label: String,
    /// `multi-label`: what separates a row's labels in the label column (default `;`).
    label_separator: Option<String>,
    /// Column holding the row ids (kept in the predictions).
    #[serde(default = "super::table::id_column")]
    id: String,
    /// Longest input in tokens (default: the model's positions); a longer row is an error
    /// unless `truncate: true` (which cuts a pair's longer side first).
    max_length: Option<usize>,
    /// Cut rows longer than `max_length` instead of stopping with an error.
    #[serde(default)]
    truncate: bool,
    /// `token-cls`: the label a token spelling several bases learns, `majority` (default: the
    /// commonest of its bases') or `first` (its first base's).
    token_label: Option<TokenLabel>,
    /// The validation score that picks the weights: `valid.loss` (default), `valid.mcc`,
    /// `valid.accuracy`, `valid.f1_macro`, `valid.auroc`, `valid.rmse`, `valid.pearson`, …
    #[serde(default = "select")]
    select: String,
    /// Stop after this many evaluations without a better `select` score.
    patience: Option<usize>,
    /// `balanced` or `{class: weight}` (seq-cls, pair-cls, token-cls); for multi-label, the
    /// weight of each label's positives (`balanced`: its negatives over its positives,
    /// PyTorch's `pos_weight`).
    class_weights: Option<ClassWeights>,
    /// `none` (default), `backbone`, or N: the embeddings and the first N layers.
    freeze: Option<Freeze>,
    /// Learning rate of the head (default: `lr`).
    head_lr: Option<f64>,
    /// `text`: the longest answer in tokens, its end included; prompts get what the model's
    /// positions leave (default 32).
    max_new_tokens: Option<usize>,
    /// `text`: temperature of the sampled answers (default 0.7; greedy ones are made too).
    temperature: Option<f64>,
    /// `text`: sample from the k most likely tokens (default 0: all).
    top_k: Option<usize>,
    /// `text`: sample from the smallest set of tokens whose probability reaches p (default 1).
    top_p: Option<f64>,
    /// Batch, steps, optimizer, cadence, seed, device: shared by every training kind.
    #[serde(flatten)]
    options: TrainOptions,
}

/// `max_new_tokens` of `task: text` when unset.
const MAX_NEW_TOKENS: usize = 32;

fn select() -> String {
    "valid.loss".into()
}

pub static FINETUNE: StepKind = StepKind {
    name: "model.finetune",
    version: 6,
    summary: "fine-tune a task head (seq-cls, regression, token-cls, pair-cls, multi-label) on a labelled table, from a pretrained model or from scratch; writes the model, predictions (id, label, prediction, prob_<class>; token-cls: id, label, prediction as one character per base) and metrics",
    outputs: &[
        ("model", "model"),
        ("predictions", "predictions.parquet"),
        ("history", "history.csv"),
        ("plot", "loss.svg"),
    ],
    schema: |g| g.subschema_for::<FinetuneParams>(),
    check: |with| {
        let p = params::<FinetuneParams>(with)?;
        p.options.check()?;
        if p.init.is_none() && p.arch.is_none() {
            return Err(
                "set `init` (a pretrained model directory) or `arch` (a fresh model)".into(),
            );
        }
        if p.init.is_none() && p.tokenizer.is_none() {
            return Err("a fresh model (no `init`) needs `tokenizer`".into());
        }
        if let (None, Some(arch)) = (&p.init, &p.arch) {
            check_config_fields(arch.row().model_type, &p.config)
                .map_err(|e| format!("`config`: {e}"))?;
        }
        if p.options.lora.is_some() && p.init.is_none() {
            return Err("`lora` adapts an existing model: set `init:` to its directory".into());
        }
        if p.options.lora.is_some() && p.freeze.is_some() {
            return Err("`lora` already freezes the base; leave out `freeze`".into());
        }
        if let Some(v) = p.head_lr
            && !(v > 0.0 && v.is_finite())
        {
            return Err("`head_lr` must be a positive number".into());
        }
        let metric = select_metric(&p.select)?;
        let names = metric_names(&objective_shape(p.task));
        if !names.contains(&metric) {
            return Err(format!(
                "`select: {}`: `{metric}` is not a validation score of `task: {}` (one of: {})",
                p.select,
                task_name(p.task),
                names
                    .iter()
                    .map(|n| format!("valid.{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if p.task == TaskKind::Regression && p.class_weights.is_some() {
            return Err("`class_weights` is for classification tasks".into());
        }
        if p.task != TaskKind::MultiLabel && p.label_separator.is_some() {
            return Err("`label_separator` is for `task: multi-label`".into());
        }
        if p.label_separator.as_deref() == Some("") {
            return Err("`label_separator` cannot be empty".into());
        }
        if p.task != TaskKind::PairCls && p.pair.is_some() {
            return Err("`pair` is for `task: pair-cls`".into());
        }
        if p.task != TaskKind::TokenCls && p.token_label.is_some() {
            return Err("`token_label` is for `task: token-cls`".into());
        }
        let generation = p.max_new_tokens.is_some()
            || p.temperature.is_some()
            || p.top_k.is_some()
            || p.top_p.is_some();
        if p.task != TaskKind::Text && generation {
            return Err(
                "`max_new_tokens`, `temperature`, `top_k` and `top_p` are for `task: text`".into(),
            );
        }
        if p.task == TaskKind::Text {
            if let Some(arch) = &p.arch
                && arch.row().lm != LmKind::Causal
            {
                return Err(format!(
                    "`task: text` generates text: it needs a causal model, not `arch: {}`",
                    arch.row().model_type
                ));
            }
            if p.class_weights.is_some() || p.freeze.is_some() && p.init.is_none() {
                return Err(
                    "`class_weights` and `freeze` (without `init`) do not apply to `task: text`"
                        .into(),
                );
            }
            if p.max_new_tokens == Some(0) {
                return Err("`max_new_tokens` must be at least 1 (the answer's end)".into());
            }
            if p.temperature.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                return Err(
                    "`temperature` must be positive (the greedy answers are made anyway)".into(),
                );
            }
            if p.top_p.is_some_and(|t| !(t > 0.0 && t <= 1.0)) {
                return Err("`top_p` must be in (0, 1]".into());
            }
        }
        if p.task == TaskKind::TokenCls && p.truncate {
            return Err(
                "`truncate` cannot be used with `task: token-cls`: every base needs a \
                 prediction; raise `max_length` (up to the model's positions) instead"
                    .into(),
            );
        }
        Ok(())
    },
    run: finetune,
};

fn task_name(task: TaskKind) -> &'static str {
    match task {
        TaskKind::SeqCls => "seq-cls",
        TaskKind::Regression => "regression",
        TaskKind::TokenCls => "token-cls",
        TaskKind::PairCls => "pair-cls",
        TaskKind::MultiLabel => "multi-label",
        TaskKind::Text => "text",
    }
}

/// The head a task trains (and a starting model may already have): a pair is classified by a
/// sequence head.
fn head_name(task: TaskKind) -> &'static str {
    match task {
        TaskKind::PairCls => "seq-cls",
        TaskKind::Text => "lm",
        other => task_name(other),
    }
}

/// An objective of the task's kind, for the names of its scores.
fn objective_shape(task: TaskKind) -> Objective {
    match task {
        TaskKind::SeqCls | TaskKind::PairCls => Objective::SeqCls {
            classes: Vec::new(),
            weights: None,
        },
        TaskKind::Regression => Objective::Regression { mean: 0.0, sd: 1.0 },
        TaskKind::MultiLabel => Objective::MultiLabel {
            labels: Vec::new(),
            pos_weight: None,
        },
        TaskKind::TokenCls => Objective::TokenCls {
            classes: Vec::new(),
            weights: None,
        },
        TaskKind::Text => Objective::Clm,
    }
}

/// `valid.mcc` → `mcc`.
fn select_metric(select: &str) -> Result<&str, String> {
    select.strip_prefix("valid.").ok_or_else(|| {
        format!(
            "`select: {select}` must name a validation score, such as `valid.loss` or `valid.mcc`"
        )
    })
}

/// A labelled split: its table, sequences as rows of tokens, and their targets.
struct Split {
    table: LocatedTable,
    rows: Vec<Row>,
    /// Each token's `[start, end)` in bases (empty for `[CLS]` and `[SEP]`).
    spans: Vec<Spans>,
    /// Class labels (seq-cls), label strings, one character per base (token-cls), or label
    /// sets joined by `;` (multi-label).
    labels: Vec<String>,
    /// Multi-label: each row's flag per label.
    flags: Vec<Vec<bool>>,
    /// Regression targets (empty for classes).
    values: Vec<f64>,
    /// The alphabet of its sequences (none for text: prompts and answers).
    alphabet: Option<Decided>,
}

/// The tables' sequences as model inputs: BERT's `[CLS] … [SEP]`, GPT-2's tokens as they are;
/// one too long for the model is an error naming the row (or cut, with `truncate`).
pub(super) fn inputs(
    vocab: &Vocab,
    table: &LocatedTable,
    sequence: &str,
    truncate: bool,
    bert: bool,
    max_len: usize,
) -> Result<Vec<Row>, StepError> {
    Ok(
        inputs_spans(vocab, table, sequence, truncate, bert, max_len)?
            .into_iter()
            .map(|(row, _)| row)
            .collect(),
    )
}

/// [`inputs`], with each token's span of its sequence in bases (`(0, 0)` for `[CLS]`/`[SEP]`).
fn inputs_spans(
    vocab: &Vocab,
    table: &LocatedTable,
    sequence: &str,
    truncate: bool,
    bert: bool,
    max_len: usize,
) -> Result<Vec<(Row, Spans)>, StepError> {
    let framing = match (bert, vocab.bert) {
        (false, _) => None,
        (true, Some((cls, sep, _))) => Some((cls, sep)),
        (true, None) => {
            return Err(StepError::new(format!(
                "{}: the model frames each sequence with a start and an end token ([CLS] … \
                 [SEP], or <cls> … <eos>), which this tokenizer does not name; give the \
                 model's own tokenizer (`tokenizer:`)",
                vocab.path.display()
            )));
        }
    };
    let seqs: Vec<String> = table
        .texts(sequence, "sequence", "a sequence")?
        .iter()
        .map(|s| fold_case(s))
        .collect();
    let mut rows = encode_table_spans(vocab, &table.path, &seqs)?;
    let ids: Vec<&[u32]> = rows.iter().map(|(r, _)| r.ids.as_slice()).collect();
    check_unknown(vocab, &seqs, &ids, &|i| table.at(i, sequence))?;
    let extra = if bert { 2 } else { 0 };
    for (i, (row, spans)) in rows.iter_mut().enumerate() {
        if row.ids.len() + extra > max_len {
            if !truncate {
                return Err(StepError::new(format!(
                    "{}: {} tokens{}, longer than the {max_len} the model takes; set \
                     `truncate: true` to cut longer rows, or fine-tune a model with more \
                     positions (`n_positions` / `max_position_embeddings`)",
                    table.at(i, sequence),
                    row.ids.len(),
                    if bert { " plus [CLS] and [SEP]" } else { "" }
                )));
            }
            row.ids.truncate(max_len - extra);
            row.bases.truncate(max_len - extra);
            spans.truncate(max_len - extra);
        }
        if let Some((cls, sep)) = framing {
            row.ids.insert(0, cls);
            row.bases.insert(0, 0);
            spans.insert(0, (0, 0));
            row.ids.push(sep);
            row.bases.push(0);
            spans.push((0, 0));
        }
    }
    Ok(rows)
}

/// Pair-cls inputs: each row's `sequence` and `pair` joined as one model input (BERT:
/// `[CLS] a [SEP] b [SEP]`, the second segment of token type 1; GPT-2: `a <eos> b`). A pair
/// too long for the model is an error naming the row, or with `truncate` loses tokens from
/// its longer side first (transformers' `longest_first`).
fn pair_inputs(
    vocab: &Vocab,
    table: &LocatedTable,
    columns: (&str, &str),
    truncate: bool,
    bert: bool,
    max_len: usize,
) -> Result<Vec<Row>, StepError> {
    let (first, second) = columns;
    // Both sides are required in every row (an empty one is an error naming it).
    let a = table.texts(first, "sequence", "a sequence")?;
    let b = table.texts(second, "pair", "the pair's second sequence")?;
    let sep = match (bert, vocab.bert, vocab.eos) {
        (true, Some((_, sep, _)), _) => sep,
        (false, _, Some(eos)) => eos,
        _ => {
            return Err(StepError::new(format!(
                "{}: the tokenizer has no {} token to join a pair with",
                vocab.path.display(),
                if bert { "[SEP]" } else { "end-of-text" }
            )));
        }
    };
    let extra = if bert { 3 } else { 1 };
    let left = encode_spans(vocab, &a)?;
    let right = encode_spans(vocab, &b)?;
    let mut rows = Vec::with_capacity(left.len());
    for (i, ((mut x, _), (mut y, _))) in left.into_iter().zip(right).enumerate() {
        let total = x.ids.len() + y.ids.len() + extra;
        if total > max_len {
            if !truncate {
                return Err(StepError::new(format!(
                    "{}: the pair is {} + {} tokens{}, longer than the {max_len} the model \
                     takes; set `truncate: true` to cut the longer side, or cut both sides \
                     shorter (data.pairs' `left_length` / `right_length`)",
                    table.at(i, first),
                    x.ids.len(),
                    y.ids.len(),
                    if bert {
                        " plus [CLS] and two [SEP]"
                    } else {
                        " plus the separator"
                    }
                )));
            }
            let keep = max_len.saturating_sub(extra);
            let (mut n, mut m) = (x.ids.len(), y.ids.len());
            while n + m > keep {
                if n >= m { n -= 1 } else { m -= 1 }
            }
            if n == 0 || m == 0 {
                return Err(StepError::new(format!(
                    "{}: `max_length` {max_len} leaves no room for both sequences of the pair",
                    table.at(i, first)
                )));
            }
            x.ids.truncate(n);
            x.bases.truncate(n);
            y.ids.truncate(m);
            y.bases.truncate(m);
        }
        let mut row = Row::default();
        if bert {
            let (cls, sep, _) = vocab.bert.expect("checked above");
            row.ids.push(cls);
            row.bases.push(0);
            row.ids.extend_from_slice(&x.ids);
            row.bases.extend_from_slice(&x.bases);
            row.ids.push(sep);
            row.bases.push(0);
            row.second = row.ids.len();
            row.ids.extend_from_slice(&y.ids);
            row.bases.extend_from_slice(&y.bases);
            row.ids.push(sep);
            row.bases.push(0);
        } else {
            row.ids = x.ids;
            row.bases = x.bases;
            row.ids.push(sep);
            row.bases.push(0);
            row.ids.extend_from_slice(&y.ids);
            row.bases.extend_from_slice(&y.bases);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Token-cls targets: each row's label string (one character per base) as class indices per
/// base, then per token by `rule`. The classes are the characters of the training labels.
fn token_targets(
    splits: [&mut Split; 3],
    p: &FinetuneParams,
    rule: TokenLabel,
) -> Result<Vec<String>, StepError> {
    let [train, valid, test] = splits;
    let (train_labels, _) = label_strings(&train.table, &p.label, &p.sequence)?;
    let classes = label_characters(&train.table, &train_labels, &p.label)?;
    let train_path = train.table.path.clone();
    for split in [train, valid, test] {
        let (labels, _) = label_strings(&split.table, &p.label, &p.sequence)?;
        let per_base = base_classes(&split.table, &labels, &classes, &p.label, &train_path)?;
        for ((row, spans), bases) in split.rows.iter_mut().zip(&split.spans).zip(&per_base) {
            row.target = Target::Tokens(token_labels(spans, bases, rule));
        }
        split.labels = labels;
    }
    Ok(classes)
}

fn finetune(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: FinetuneParams = params(ctx.with).map_err(StepError::new)?;
    let (device, precision) = p.options.resolve_device(ctx)?;
    let tokenizer = p.tokenizer.as_ref().or(p.init.as_ref()).expect("checked");
    let vocab = load_vocab(&ctx.workdir.join(tokenizer.path()))?;
    let (config, init) = architecture(ctx, &p, &vocab)?;
    let vocab = vocab.for_model(&config)?;
    let inputs = input_framing(&p, &config, &vocab)?;
    let mut splits = read_splits(ctx, &p, &vocab, &inputs)?;
    let (task, objective) = targets(&p, &config, &mut splits)?;
    if let Some(init) = &init {
        check_init_head(&init.spec.task, head_name(p.task), task.labels(), &init.dir)?;
    }
    let adapter = p.options.lora.as_ref().map(|l| l.spec(task != Task::Lm));
    let spec = ModelSpec {
        config,
        task,
        adapter,
    };
    let plan = training_plan(ctx, &p, &spec, &objective, &splits, &vocab, precision)?;
    let weights = match &init {
        Some(init) => read_weights(&init.dir, &spec).map_err(model_err)?,
        None => spec.init_weights(p.options.seed).map_err(model_err)?,
    };
    let frozen: Vec<String> = frozen_names(p.freeze.as_ref(), &spec, &weights)?;
    if !frozen.is_empty() {
        writeln!(ctx.log, "frozen: {} tensors", frozen.len())?;
    }
    let [train_split, _, test_split] = splits;
    let alphabet = train_split.alphabet;
    let run = Run {
        p: &p,
        spec: &spec,
        objective: &objective,
        vocab: &vocab,
        frozen: &frozen,
        precision,
        lengths: inputs.lengths,
    };
    let (tested, mut metrics) = on_device!(device, precision, |dev: B| {
        train_and_test::<B>(
            ctx,
            &run,
            plan,
            train_split.rows,
            weights,
            &test_split,
            &dev,
        )
    })?;
    match tested {
        Tested::Scores(predictions) => {
            write_predictions(ctx, &p, &objective, &test_split, &predictions, &mut metrics)?
        }
        Tested::Texts(found) => write_answers(ctx, &p, &test_split, &found, &mut metrics)?,
    }
    if let Some(a) = alphabet {
        super::merge(&mut metrics, a.metrics());
    }
    write_metrics(ctx.out, &metrics)
}

/// The model directory a fine-tuning starts from, with its spec.
struct Init {
    dir: PathBuf,
    spec: ModelSpec,
}

/// Stage 1, the model: the `init` directory's config (its head checked against the task), or
/// a fresh one of `arch` (up to 512 positions unless `config` says otherwise); either way
/// padded with the tokenizer's pad and large enough for its vocabulary.
fn architecture(
    ctx: &StepContext,
    p: &FinetuneParams,
    vocab: &Vocab,
) -> Result<(ArchConfig, Option<Init>), StepError> {
    let (mut config, init) = match &p.init {
        Some(dir) => {
            let dir = ctx.workdir.join(dir.path());
            let spec = ModelSpec::read(&dir).map_err(model_err)?;
            check_init_head(&spec.task, head_name(p.task), None, &dir)?;
            (spec.config.clone(), Some(Init { dir, spec }))
        }
        None => {
            let arch = p.arch.as_ref().expect("checked");
            let mut user = p.config.clone();
            user.entry(arch.row().positions_field).or_insert(512.into());
            (fresh_config(arch, &user, vocab, 2)?, None)
        }
    };
    config.set_pad_token_id(vocab.pad);
    let model_dir = init
        .as_ref()
        .map(|i| i.dir.clone())
        .unwrap_or_else(|| PathBuf::from("the fresh model"));
    vocab.check_fits(config.vocab_size(), &model_dir)?;
    if p.task == TaskKind::Text && config.architecture().lm != LmKind::Causal {
        return Err(StepError::new(format!(
            "`task: text` generates text: it needs a causal model (gpt2, llama), not {}",
            config.name()
        )));
    }
    Ok((config, init))
}

/// How rows reach the model: framed as the architecture's row says, at most `max_len` tokens.
struct Inputs {
    /// `[CLS] … [SEP]` around every row.
    cls_sep: bool,
    max_len: usize,
    lengths: answers::Lengths,
}

/// Stage 2, the framing: the architecture's, with the special tokens it needs in the
/// tokenizer, and a `max_length` within the model's positions.
fn input_framing(
    p: &FinetuneParams,
    config: &ArchConfig,
    vocab: &Vocab,
) -> Result<Inputs, StepError> {
    let cls_sep = config.architecture().framing == Framing::ClsSep;
    if cls_sep && vocab.bert.is_none() {
        return Err(StepError::new(format!(
            "{}: {} frames sequences as [CLS] … [SEP] and masks with [MASK]: the tokenizer needs all three",
            vocab.path.display(),
            config.name()
        )));
    }
    let max_len = p.max_length.unwrap_or(config.max_positions());
    if max_len > config.max_positions() {
        return Err(StepError::new(format!(
            "`max_length` {max_len} is more than the model's {} positions",
            config.max_positions()
        )));
    }
    Ok(Inputs {
        cls_sep,
        max_len,
        lengths: answers::Lengths {
            max_len,
            max_new: p.max_new_tokens.unwrap_or(MAX_NEW_TOKENS),
        },
    })
}

/// Stage 3, the rows: train, valid and test tables tokenized as the task reads them (a pair
/// joined, a prompt with its answer, or one sequence with its tokens' spans).
fn read_splits(
    ctx: &StepContext,
    p: &FinetuneParams,
    vocab: &Vocab,
    inputs: &Inputs,
) -> Result<[Split; 3], StepError> {
    let model = p
        .init
        .as_ref()
        .map(|i| ctx.workdir.join(i.path()))
        .unwrap_or_else(|| PathBuf::from("the fresh model"));
    let read = |i: &InputPath, role: &str| -> Result<Split, StepError> {
        let table = read_role(&ctx.workdir.join(i.path()), &p.id, role)?;
        // Sequences in an alphabet the tokenizer spells, before any training.
        let alphabet = match p.task {
            TaskKind::Text => None,
            _ => Some(table_alphabet(vocab, &table, &p.sequence, &model)?),
        };
        let (rows, spans) = match p.task {
            TaskKind::PairCls => {
                let pair = p.pair.as_deref().unwrap_or("pair");
                let rows = pair_inputs(
                    vocab,
                    &table,
                    (&p.sequence, pair),
                    p.truncate,
                    inputs.cls_sep,
                    inputs.max_len,
                )?;
                (rows, Vec::new())
            }
            TaskKind::Text => {
                let columns = (p.sequence.as_str(), p.label.as_str());
                let rows =
                    answers::answer_rows(vocab, &table, columns, p.truncate, inputs.lengths)?;
                (rows, Vec::new())
            }
            _ => inputs_spans(
                vocab,
                &table,
                &p.sequence,
                p.truncate,
                inputs.cls_sep,
                inputs.max_len,
            )?
            .into_iter()
            .unzip(),
        };
        Ok(Split {
            labels: Vec::new(),
            flags: Vec::new(),
            values: Vec::new(),
            table,
            rows,
            spans,
            alphabet,
        })
    };
    Ok([
        read(&p.train, "training")?,
        read(&p.valid, "validation")?,
        read(&p.test, "test")?,
    ])
}

/// Stage 4, the targets: each split's labels read as the task wants them (classes from the
/// training split, numbers, label sets, answer texts, per-base labels), and the head's task
/// with the objective that trains it.
fn targets(
    p: &FinetuneParams,
    config: &ArchConfig,
    splits: &mut [Split; 3],
) -> Result<(Task, Objective), StepError> {
    let [train_split, valid_split, test_split] = splits;
    Ok(match p.task {
        TaskKind::SeqCls | TaskKind::PairCls => {
            let train_labels = train_split.table.labels(&p.label, "label")?;
            let classes = training_classes(&train_split.table, &train_labels, &p.label)?;
            let train_path = train_split.table.path.clone();
            for split in [&mut *train_split, &mut *valid_split, &mut *test_split] {
                let labels = split.table.labels(&p.label, "label")?;
                let idx = class_indices(&split.table, &labels, &classes, &p.label, &train_path)?;
                for (row, k) in split.rows.iter_mut().zip(idx) {
                    row.target = Target::Class(k as u32);
                }
                split.labels = labels;
            }
            let weights = class_weights(p.class_weights.as_ref(), &classes, &train_split.rows)?;
            (
                Task::SeqCls {
                    labels: classes.clone(),
                },
                Objective::SeqCls { classes, weights },
            )
        }
        TaskKind::Regression => {
            for split in [&mut *train_split, &mut *valid_split, &mut *test_split] {
                let values = split.table.numbers(&p.label, "label")?;
                for (row, v) in split.rows.iter_mut().zip(&values) {
                    row.target = Target::Value(*v as f32);
                }
                split.values = values;
            }
            let values: Vec<f64> = train_split
                .rows
                .iter()
                .map(|r| match r.target {
                    Target::Value(v) => v as f64,
                    _ => 0.0,
                })
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
            // A head whose mean has nowhere to go when saved (LLaMA's bias-free `score` on
            // RMSNorm) learns y / sd uncentred, so the saved model predicts y exactly.
            let mean = match config.architecture().regression_mean {
                MeanFold::Nowhere => 0.0,
                _ => mean,
            };
            (
                Task::Regression { mean, sd },
                Objective::Regression { mean, sd },
            )
        }
        TaskKind::MultiLabel => {
            let sep = p.label_separator.as_deref().unwrap_or(";");
            let train_sets = label_sets(&train_split.table, &p.label, sep)?;
            let labels = training_labels(&train_split.table, &train_sets, &p.label)?;
            let train_path = train_split.table.path.clone();
            for split in [&mut *train_split, &mut *valid_split, &mut *test_split] {
                let sets = label_sets(&split.table, &p.label, sep)?;
                let flags = label_flags(&split.table, &sets, &labels, &p.label, &train_path)?;
                for (row, f) in split.rows.iter_mut().zip(&flags) {
                    row.target = Target::Labels(f.clone());
                }
                split.labels = sets.iter().map(|s| s.join(";")).collect();
                split.flags = flags;
            }
            let pos_weight = match &p.class_weights {
                // PyTorch's advice for pos_weight: negatives over positives of each label.
                Some(ClassWeights::Named(BalancedName::Balanced)) => Some(
                    (0..labels.len())
                        .map(|k| {
                            let pos = train_split.flags.iter().filter(|f| f[k]).count();
                            (train_split.flags.len() - pos) as f32 / pos.max(1) as f32
                        })
                        .collect(),
                ),
                given => class_weights(given.as_ref(), &labels, &[])?,
            };
            (
                Task::MultiLabel {
                    labels: labels.clone(),
                },
                Objective::MultiLabel { labels, pos_weight },
            )
        }
        TaskKind::Text => {
            for split in [&mut *train_split, &mut *valid_split, &mut *test_split] {
                split.labels = split.table.texts(&p.label, "label", "an answer text")?;
            }
            (Task::Lm, Objective::Clm)
        }
        TaskKind::TokenCls => {
            let rule = p.token_label.unwrap_or_default();
            let classes = token_targets(
                [&mut *train_split, &mut *valid_split, &mut *test_split],
                p,
                rule,
            )?;
            let weights = class_weights(p.class_weights.as_ref(), &classes, &train_split.rows)?;
            (
                Task::TokenCls {
                    labels: classes.clone(),
                },
                Objective::TokenCls { classes, weights },
            )
        }
    })
}

/// The loop's configuration and the evaluation batches of a fine-tuning.
struct Plan {
    cfg: TrainConfig,
    order: Order,
    valid: Vec<Batch>,
    test: Vec<Batch>,
}

/// Stage 5, the plan: steps (`epochs` of 3 by default), evaluation once per epoch unless
/// `eval_every`, the weights selected by `select`, the head's own learning rate.
fn training_plan(
    ctx: &mut StepContext,
    p: &FinetuneParams,
    spec: &ModelSpec,
    objective: &Objective,
    [train_split, valid_split, test_split]: &[Split; 3],
    vocab: &Vocab,
    precision: Precision,
) -> Result<Plan, StepError> {
    let o = &p.options;
    let order = Order::new(train_split.rows.len(), o.batch_size, o.seed, true);
    let per_epoch = order.batches_per_epoch().div_ceil(o.grad_accum);
    let steps = o.steps.unwrap_or(o.epochs.unwrap_or(3) * per_epoch);
    let eval_every = if o.eval_every == 0 {
        per_epoch
    } else {
        o.eval_every
    };
    let cfg = TrainConfig {
        keep_best: true,
        select: select_metric(&p.select)
            .map_err(StepError::new)?
            .to_string(),
        patience: p.patience,
        head: spec.head_names(),
        head_lr: p.head_lr,
        ..o.train_config(steps, eval_every, precision)
    };
    let batches =
        |split: &Split| train::eval_batches(&split.rows, objective, vocab.pad, o.batch_size, 0);
    writeln!(
        ctx.log,
        "{} {} on {} training, {} validation, {} test rows; {steps} steps; precision {precision}",
        spec.class(),
        task_name(p.task),
        train_split.rows.len(),
        valid_split.rows.len(),
        test_split.rows.len()
    )?;
    Ok(Plan {
        cfg,
        order,
        valid: batches(valid_split),
        test: batches(test_split),
    })
}

/// What a fine-tuning holds fixed while it trains and tests.
struct Run<'a> {
    p: &'a FinetuneParams,
    spec: &'a ModelSpec,
    objective: &'a Objective,
    vocab: &'a Vocab,
    frozen: &'a [String],
    precision: Precision,
    lengths: answers::Lengths,
}

/// Stage 6, on the device: train from `weights`, save the selected model directory and the
/// history, then test the selected weights (scores of the head, or generated answers).
fn train_and_test<B: FusedOps>(
    ctx: &mut StepContext,
    run: &Run,
    plan: Plan,
    rows: Vec<Row>,
    weights: Weights,
    test_split: &Split,
    dev: &B::Device,
) -> Result<(Tested, serde_json::Value), StepError> {
    let Run {
        p, spec, objective, ..
    } = *run;
    let seed = p.options.seed;
    let prepare = |m: Model<Autodiff<B>>| {
        m.freeze(run.frozen.iter().map(String::as_str))
            .with_precision(run.precision)
    };
    let (model, report) =
        Model::<Autodiff<B>>::from_weights(spec, weights, seed, dev).map_err(model_err)?;
    log_report(ctx, &report)?;
    let model = prepare(model);
    let parameters = model.num_params();
    let ids: Vec<&[u32]> = rows.iter().map(|r| r.ids.as_slice()).collect();
    let unk = unk_rate(run.vocab, &ids);
    let mut data = TrainData {
        rows,
        order: plan.order,
        objective: objective.clone(),
        pad: run.vocab.pad,
        batch_size: p.options.batch_size,
    };
    let trained = training::run(ctx, model, &mut data, &plan.valid, &plan.cfg, dev)?;
    let tester = training::selected(&trained)?;
    let init = p.init.as_ref().map(|i| ctx.workdir.join(i.path()));
    let base = training::adapter_base(init.as_deref());
    let merge = p.options.lora.as_ref().is_some_and(|l| l.merge);
    training::save_trained(
        &tester,
        &ctx.out.join("model"),
        base,
        merge,
        &run.vocab.path,
    )?;
    training::write_history(ctx.out, &trained.state, "loss")?;
    let mut metrics = training::run_metrics(&trained, parameters);
    metrics["skipped"] = json!(report.skipped);
    metrics["fresh"] = json!(report.fresh);
    metrics["frozen"] = json!(run.frozen.len());
    // Share of the training tokens the tokenizer did not know (`[UNK]`).
    metrics["unk_rate"] = json!(unk);
    let tested = if p.task == TaskKind::Text {
        let e = objective.evaluate(&tester, &plan.test, dev);
        metrics["test_loss"] = json!(e.loss);
        metrics["test_bits_per_base"] = json!(e.metric("bits_per_base"));
        let decoding = answers::Decoding {
            lengths: run.lengths,
            sampler: Sampler {
                temperature: p.temperature.unwrap_or(0.7),
                top_k: p.top_k.unwrap_or(0),
                top_p: p.top_p.unwrap_or(1.0),
            },
            seed,
        };
        let found = answers::answer(ctx, &tester, run.vocab, &test_split.rows, &decoding, dev)?;
        Tested::Texts(found)
    } else {
        Tested::Scores(objective.predict(&tester, &plan.test, dev))
    };
    Ok((tested, metrics))
}

/// What the test split gave: per-row scores of a head, or generated answers.
enum Tested {
    Scores(Vec<Vec<f64>>),
    Texts(Vec<answers::Answer>),
}

/// `task: text`: `predictions.parquet` (id, label, prediction, sampled, ended) and the test
/// split's exact match and token F1, greedy and sampled.
fn write_answers(
    ctx: &mut StepContext,
    p: &FinetuneParams,
    test: &Split,
    found: &[answers::Answer],
    metrics: &mut serde_json::Value,
) -> Result<(), StepError> {
    let greedy: Vec<String> = found.iter().map(|a| a.greedy.clone()).collect();
    let sampled: Vec<String> = found.iter().map(|a| a.sampled.clone()).collect();
    let ended: Vec<bool> = found.iter().map(|a| a.ended).collect();
    let g = crate::score::text_scores(&greedy, &test.labels);
    let s = crate::score::text_scores(&sampled, &test.labels);
    let m = metrics.as_object_mut().expect("object");
    m.insert("test_exact_match".into(), g.exact_match.into());
    m.insert("test_token_f1".into(), g.token_f1.into());
    m.insert("test_sampled_exact_match".into(), s.exact_match.into());
    m.insert("test_sampled_token_f1".into(), s.token_f1.into());
    let ended_share = ended.iter().filter(|&&e| e).count() as f64 / ended.len().max(1) as f64;
    m.insert("test_eos_rate".into(), ended_share.into());
    m.insert("test_rows".into(), g.n.into());
    writeln!(
        ctx.log,
        "test: greedy exact match {:.4}, token F1 {:.4}; sampled {:.4}, {:.4}; {:.0} % ended \
         at <eos> ({} rows)",
        g.exact_match,
        g.token_f1,
        s.exact_match,
        s.token_f1,
        100.0 * ended_share,
        g.n
    )?;
    let ids = test.table.texts(&p.id, "id", "an id")?;
    let columns = vec![
        Column::new("id".into(), ids),
        Column::new("label".into(), &test.labels),
        Column::new("prediction".into(), greedy),
        Column::new("sampled".into(), sampled),
        Column::new("ended".into(), ended),
    ];
    let mut columns = columns;
    // An instruction table's `task` goes with each answer, so it can be scored per task.
    if let Ok(task) = test.table.df.column("task") {
        columns.push(task.clone());
    }
    let mut df = DataFrame::new(found.len(), columns)?;
    // The predictions are the test table's rows: they carry its identity (and source).
    let meta = TableMeta::rows_of(&test.table.path)?;
    write_table_with(&mut df, &ctx.out.join("predictions.parquet"), &meta)
}

/// A model directory whose head does another task, or the same with other classes, is
/// refused: its head cannot be carried over, and a language model's backbone is what to start
/// from.
fn check_init_head(
    have: &Task,
    want: &str,
    classes: Option<&[String]>,
    dir: &Path,
) -> Result<(), StepError> {
    let same = match (have, classes) {
        (Task::Lm, _) => true,
        (Task::SeqCls { labels }, Some(c)) if want == "seq-cls" => labels.as_slice() == c,
        (Task::TokenCls { labels }, Some(c)) if want == "token-cls" => labels.as_slice() == c,
        (Task::MultiLabel { labels }, Some(c)) if want == "multi-label" => labels.as_slice() == c,
        (other, _) => other.name() == want,
    };
    if same {
        return Ok(());
    }
    let have = match have {
        Task::SeqCls { labels } | Task::TokenCls { labels } | Task::MultiLabel { labels } => {
            format!("a {} head with classes {}", have.name(), labels.join(", "))
        }
        _ => format!("a {} head", have.name()),
    };
    let want = match classes {
        Some(c) => format!("a {want} head with classes {}", c.join(", ")),
        None => format!("a {want} head"),
    };
    Err(StepError::new(format!(
        "{}: this model directory has {have}, but the task needs {want}; start from the \
         language model it was fine-tuned from (the `model` of its model.pretrain step)",
        dir.display()
    )))
}

/// Per-class loss weights: `balanced` as scikit-learn computes them, or as given.
fn class_weights(
    given: Option<&ClassWeights>,
    classes: &[String],
    rows: &[Row],
) -> Result<Option<Vec<f32>>, StepError> {
    let Some(given) = given else {
        return Ok(None);
    };
    Ok(Some(match given {
        ClassWeights::Named(BalancedName::Balanced) => {
            let mut counts = vec![0usize; classes.len()];
            for r in rows {
                match &r.target {
                    Target::Class(k) => counts[*k as usize] += 1,
                    Target::Tokens(labels) => labels
                        .iter()
                        .filter(|&&l| l >= 0)
                        .for_each(|&l| counts[l as usize] += 1),
                    _ => {}
                }
            }
            let n: usize = counts.iter().sum();
            counts
                .iter()
                .map(|&c| n as f32 / (classes.len() * c.max(1)) as f32)
                .collect()
        }
        ClassWeights::Given(map) => {
            for name in map.keys() {
                if !classes.contains(&super::table::class_label(name)) {
                    return Err(StepError::new(format!(
                        "`class_weights`: `{name}` is not a class of the training table ({})",
                        classes.join(", ")
                    )));
                }
            }
            classes
                .iter()
                .map(|c| {
                    map.iter()
                        .find(|(k, _)| super::table::class_label(k) == *c)
                        .map_or(1.0, |(_, w)| *w as f32)
                })
                .collect()
        }
    }))
}

/// The HF names of the tensors `freeze` keeps fixed: of the starting weights, those outside
/// every head of the architecture (a BERT pooler trains with its head).
fn frozen_names(
    freeze: Option<&Freeze>,
    spec: &ModelSpec,
    weights: &Weights,
) -> Result<Vec<String>, StepError> {
    let heads = spec.config.architecture().head_prefixes;
    let backbone = weights
        .names()
        .filter(|n| !heads.iter().any(|h| n.starts_with(h)))
        .map(String::from)
        .collect::<Vec<_>>();
    Ok(match freeze {
        None | Some(Freeze::Named(FreezeName::None)) => Vec::new(),
        Some(Freeze::Named(FreezeName::Backbone)) => backbone,
        Some(Freeze::Layers(n)) => {
            let layers = spec.config.num_layers();
            if *n > layers {
                return Err(StepError::new(format!(
                    "`freeze: {n}`: the model has {layers} layers"
                )));
            }
            backbone
                .into_iter()
                .filter(|name| spec.config.depth_of(name).is_some_and(|d| d <= *n))
                .collect()
        }
    })
}

/// Token-cls: each test row's label string as its tokens paint it, one character per base:
/// every base takes the class `token` gives the token that spells it (`None` for a token
/// carrying no label), `?` for a base no token spells. `token` is called on every labelled
/// token's target class, rows in order.
fn paint(classes: &[String], test: &Split, mut token: impl FnMut(usize) -> usize) -> Vec<String> {
    test.rows
        .iter()
        .zip(&test.spans)
        .zip(&test.labels)
        .map(|((row, spans), label)| {
            let Target::Tokens(targets) = &row.target else {
                return String::new();
            };
            let per_token: Vec<Option<usize>> = targets
                .iter()
                .map(|&l| (l >= 0).then(|| token(l as usize)))
                .collect();
            base_predictions(spans, &per_token, label.chars().count())
                .into_iter()
                .map(|k| k.map_or("?", |k| classes[k].as_str()))
                .collect()
        })
        .collect()
}

/// `predictions.parquet` of the test split and its scores in the metrics (`test_<score>`).
fn write_predictions(
    ctx: &mut StepContext,
    p: &FinetuneParams,
    objective: &Objective,
    test: &Split,
    predictions: &[Vec<f64>],
    metrics: &mut serde_json::Value,
) -> Result<(), StepError> {
    let ids = test.table.texts(&p.id, "id", "an id")?;
    let mut columns = vec![Column::new("id".into(), ids)];
    let m = metrics.as_object_mut().expect("object");
    match objective {
        Objective::SeqCls { classes, .. } => {
            let pred: Vec<&str> = predictions
                .iter()
                .map(|r| classes[argmax(r)].as_str())
                .collect();
            columns.push(Column::new("label".into(), &test.labels));
            columns.push(Column::new("prediction".into(), &pred));
            for (k, class) in classes.iter().enumerate() {
                let col: Vec<f64> = predictions.iter().map(|r| r[k]).collect();
                columns.push(Column::new(format!("prob_{class}").into(), col));
            }
            let truth: Vec<&str> = test.labels.iter().map(String::as_str).collect();
            if let Some(scores) = classification_scores(classes, &truth, predictions) {
                for (k, v) in scores {
                    m.insert(format!("test_{k}"), v.into());
                }
            }
            let full = crate::score::classification(&truth, &pred, &[], None)
                .map_err(|e| StepError::new(e.to_string()))?;
            plot::confusion(
                &ctx.out.join("confusion.svg"),
                &format!(
                    "Test confusion matrix ({} rows, accuracy {:.3})",
                    full.rows, full.accuracy
                ),
                &full.confusion.labels,
                &full.confusion.counts,
            )?;
            m.insert("classes".into(), json!(classes));
            writeln!(
                ctx.log,
                "test: accuracy {:.4}, MCC {:.4} ({} rows)",
                full.accuracy,
                full.mcc,
                truth.len()
            )?;
        }
        Objective::TokenCls { classes, .. } => {
            // Each base takes the most probable class of its token (`predictions` holds one
            // probability row per labelled token, rows in order).
            let mut next = predictions.iter();
            let strings = paint(classes, test, |_| {
                argmax(next.next().expect("a prediction per token"))
            });
            let score = |pred: &[String]| {
                crate::score::per_base(&test.labels, pred)
                    .map_err(|e| StepError::new(e.to_string()))
            };
            let per_base = score(&strings)?;
            // Each base as a perfect token classifier would label it (its token's target): the
            // per-base accuracy the tokenizer leaves within reach.
            let ceiling = score(&paint(classes, test, |target| target))?
                .bases
                .accuracy;
            let truth: Vec<&str> = test
                .rows
                .iter()
                .flat_map(|r| match &r.target {
                    Target::Tokens(l) => l.as_slice(),
                    _ => &[],
                })
                .filter(|&&l| l >= 0)
                .map(|&l| classes[l as usize].as_str())
                .collect();
            let token_accuracy = classification_scores(classes, &truth, predictions)
                .and_then(|m| m.get("accuracy").copied());
            columns.push(Column::new("label".into(), &test.labels));
            columns.push(Column::new("prediction".into(), &strings));
            if let Some(a) = token_accuracy {
                m.insert("test_token_accuracy".into(), a.into());
            }
            // Labelled tokens against bases: how many bases a token spells on average.
            m.insert("test_tokens".into(), predictions.len().into());
            m.insert("test_token_ceiling".into(), ceiling.into());
            m.insert("classes".into(), json!(classes));
            super::score::report_per_base(ctx, &per_base, m, "test_")?;
        }
        Objective::MultiLabel { labels, .. } => {
            let pred = crate::score::predicted_sets(labels, predictions, 0.5);
            columns.push(Column::new("label".into(), &test.labels));
            columns.push(Column::new("prediction".into(), &pred));
            for (k, label) in labels.iter().enumerate() {
                let col: Vec<f64> = predictions.iter().map(|r| r[k]).collect();
                columns.push(Column::new(format!("prob_{label}").into(), col));
            }
            let s = crate::score::multi_label(labels, &test.flags, predictions, 0.5)
                .map_err(|e| StepError::new(e.to_string()))?;
            m.insert("test_f1_micro".into(), s.f1_micro.into());
            m.insert("test_f1_macro".into(), s.f1_macro.into());
            m.insert("test_exact".into(), s.exact.into());
            m.insert("test_hamming_loss".into(), s.hamming_loss.into());
            if let Some(a) = s.auroc_macro {
                m.insert("test_auroc_macro".into(), a.into());
            }
            m.insert("test_rows".into(), s.rows.into());
            m.insert("test_per_label".into(), json!(s.per_label));
            m.insert("classes".into(), json!(labels));
            writeln!(
                ctx.log,
                "test: micro F1 {:.4}, macro F1 {:.4}, exact {:.4} ({} rows)",
                s.f1_micro, s.f1_macro, s.exact, s.rows
            )?;
        }
        _ => {
            let truth = test.values.as_slice();
            let pred: Vec<f64> = predictions.iter().map(|r| r[0]).collect();
            columns.push(Column::new("label".into(), truth));
            columns.push(Column::new("prediction".into(), &pred));
            let s = crate::score::regression(truth, &pred)
                .map_err(|e| StepError::new(e.to_string()))?;
            let mut add = |k: &str, v: Option<f64>| {
                if let Some(v) = v {
                    m.insert(format!("test_{k}"), v.into());
                }
            };
            add("mse", Some(s.mse));
            add("rmse", Some(s.rmse));
            add("mae", Some(s.mae));
            add("pearson", s.pearson);
            add("spearman", s.spearman);
            add("r2", s.r2);
            writeln!(
                ctx.log,
                "test: RMSE {:.4}, Pearson {:?} ({} rows)",
                s.rmse,
                s.pearson,
                truth.len()
            )?;
        }
    }
    let mut df = DataFrame::new(test.rows.len(), columns)?;
    // The predictions are the test table's rows: they carry its identity (and source).
    let meta = TableMeta::rows_of(&test.table.path)?;
    write_table_with(&mut df, &ctx.out.join("predictions.parquet"), &meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{TruncationParams, TruncationStrategy};

    /// A pair reaches the model exactly as transformers' tokenizer encodes it: `[CLS] a [SEP]
    /// b [SEP]` with token type 1 on `b [SEP]`, and `truncate` cuts the longer side first
    /// (its `longest_first`); an empty side names its row.
    #[test]
    fn pairs_are_encoded_as_transformers_encodes_them() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        let vocab = load_vocab(&fixture.join("char.json")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("pairs.csv");
        std::fs::write(
            &csv,
            "id,sequence,pair\na,ACGTACGTAC,GGA\nb,TT,ACGTACGTACGTAAC\n",
        )
        .unwrap();
        let table = read_role(&csv, "id", "test").unwrap();
        let rows = pair_inputs(&vocab, &table, ("sequence", "pair"), false, true, 64).unwrap();
        let batch = crate::train::batch::task_batch(&[&rows[0], &rows[1]], vocab.pad);
        for (i, (a, b)) in [("ACGTACGTAC", "GGA"), ("TT", "ACGTACGTACGTAAC")]
            .iter()
            .enumerate()
        {
            let want = vocab.tokenizer.encode((*a, *b), true).unwrap();
            assert_eq!(rows[i].ids, want.get_ids(), "row {i}");
            let types = &batch.types[i * batch.t..i * batch.t + want.len()];
            let want_types: Vec<i64> = want.get_type_ids().iter().map(|&t| t as i64).collect();
            assert_eq!(types, want_types, "row {i}");
        }

        // Too long: an error naming the row, or cut longest-first as transformers cuts.
        let e = pair_inputs(&vocab, &table, ("sequence", "pair"), false, true, 12).unwrap_err();
        assert!(
            e.message.contains("row 1 (line 2, id `a`)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("10 + 3 tokens"), "{}", e.message);
        let cut = pair_inputs(&vocab, &table, ("sequence", "pair"), true, true, 12).unwrap();
        let mut hf = vocab.tokenizer.clone();
        hf.with_truncation(Some(TruncationParams {
            max_length: 12,
            strategy: TruncationStrategy::LongestFirst,
            ..TruncationParams::default()
        }))
        .unwrap();
        for (i, (a, b)) in [("ACGTACGTAC", "GGA"), ("TT", "ACGTACGTACGTAAC")]
            .iter()
            .enumerate()
        {
            let want = hf.encode((*a, *b), true).unwrap();
            assert_eq!(cut[i].ids, want.get_ids(), "row {i}");
        }

        std::fs::write(&csv, "id,sequence,pair\na,ACGT,GGA\nb,TT,\n").unwrap();
        let table = read_role(&csv, "id", "test").unwrap();
        let e = pair_inputs(&vocab, &table, ("sequence", "pair"), false, true, 64).unwrap_err();
        assert!(
            e.message
                .contains("row 2 (line 3, id `b`), column `pair`: empty"),
            "{}",
            e.message
        );
    }
}
