//! `model.score`: what a model says about sequences without being trained for it (zero-shot).
//!
//! - `likelihood`: each sequence's log-likelihood: the sum of log p(token | tokens before) for
//!   a causal model, the pseudo-log-likelihood (each token masked in turn, its log p summed)
//!   for a masked one; with bits per base.
//! - `variants`: the effect of each variant of a table (sequence, position, ref, alt) as the
//!   log-likelihood ratio of the alternative over the reference: masked marginals for an
//!   encoder whose tokenizer spells the base alone (mask the position in the reference, read
//!   log p(alt) − log p(ref): how ESM-1v scores), else whole-sequence (pseudo-)likelihoods.
//! - `mutagenesis`: in-silico saturation mutagenesis of a window: every single-letter change,
//!   scored by a classifier (Δ log p of a class) or a language model (the variant score), as a
//!   table and a heat map, with the mean effect inside named regions (a promoter's −35 and −10
//!   boxes) against the rest.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use indexmap::IndexMap;
use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{Vocab, load_model, load_model_vocab};
use super::table::{
    LocatedTable, class_label, id_column, read_role, sequence_column, table_identity, write_table,
};
use super::tokenizer::fold_case;
use super::train_options::{batch_size, cpu, resolve_device};
use super::vocab::encode_table_spans;
use super::{InputPath, StepContext, StepError, StepKind, params, plot, write_metrics};
use crate::models::arch::{Framing, LmKind};
use crate::models::device::on_device;
use crate::models::{DeviceSpec, FusedOps, Model, Precision, Task};
use crate::train::batch::{self, Batch, IGNORE, Row, Target};

/// What `model.score` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Each sequence's (pseudo-)log-likelihood and bits per base.
    Likelihood,
    /// Each variant's log-likelihood ratio, alternative over reference.
    Variants,
    /// Every single-letter change of a window, scored.
    Mutagenesis,
}

/// Parameters of `model.score`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    /// A model directory: a language model (any mode), or a sequence classifier
    /// (`mutagenesis` only).
    model: InputPath,
    mode: Mode,
    /// Sequences (`likelihood`, `mutagenesis`) or variants (`variants`: the sequence and the
    /// `position`, `ref` and `alt` columns).
    data: InputPath,
    /// Column of the sequences.
    #[serde(default = "sequence_column")]
    sequence: String,
    /// Column that names a row in outputs and errors.
    #[serde(default = "id_column")]
    id: String,
    /// `variants`: column of each variant's position, 1-based in its sequence.
    #[serde(default = "position_column")]
    position: String,
    /// `variants`: column of the reference letter (must match the sequence there).
    #[serde(default = "ref_column", rename = "ref")]
    reference: String,
    /// `variants`: column of the alternative letter.
    #[serde(default = "alt_column")]
    alt: String,
    /// Tokenizer, when the model directory has none.
    tokenizer: Option<InputPath>,
    /// `mutagenesis`: the bases `[start, end)` of each sequence to mutate, 0-based (default:
    /// all of it).
    window: Option<[usize; 2]>,
    /// `mutagenesis`: the letters each position is changed to (`ACDEFGHIKLMNPQRSTVWY` for a
    /// protein).
    #[serde(default = "dna_letters")]
    letters: String,
    /// `mutagenesis` with a classifier: the class whose log-probability is scored (default:
    /// `+`, `1`, `positive` or `true`, whichever the model has).
    class: Option<String>,
    /// The coordinate of each sequence's first base in the outputs (a promoter window that
    /// starts 50 bases upstream of the transcription start: -50).
    #[serde(default)]
    origin: i64,
    /// Named regions in those coordinates, `[first, last]` inclusive, reported against the
    /// rest: `{ "-35 box": [-35, -30], "-10 box": [-12, -7] }`.
    #[serde(default)]
    regions: IndexMap<String, [i64; 2]>,
    /// Cut a sequence longer than the model's positions to the tokens that fit (else it is an
    /// error naming the row): `likelihood` scores the tokens kept; `mutagenesis` scans a
    /// window within them (a protein's first residues). Variants never cut.
    #[serde(default)]
    truncate: bool,
    /// Score at most this many sequences or variants (0: all).
    #[serde(default)]
    max_sequences: usize,
    /// Rows per forward pass.
    #[serde(default = "batch_size")]
    batch_size: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    device: String,
}

fn position_column() -> String {
    "position".into()
}
fn ref_column() -> String {
    "ref".into()
}
fn alt_column() -> String {
    "alt".into()
}
fn dna_letters() -> String {
    "ACGT".into()
}

pub static SCORE: StepKind = StepKind {
    name: "model.score",
    version: 7,
    summary: "zero-shot scores: sequence log-likelihoods, variant effects (log-likelihood \
              ratios) and in-silico saturation mutagenesis with any language model or classifier",
    outputs: &[("scores", "scores.parquet"), ("plot", "scores.svg")],
    schema: |g| g.subschema_for::<ScoreParams>(),
    check: |with| {
        let p = params::<ScoreParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        if let Some([a, b]) = p.window
            && a >= b
        {
            return Err(format!(
                "`window: [{a}, {b}]` is empty: give [start, end) with start < end"
            ));
        }
        if p.letters.is_empty() || !p.letters.is_ascii() {
            return Err("`letters` must be one or more ASCII letters, such as ACGT".into());
        }
        for (name, [a, b]) in &p.regions {
            if a > b {
                return Err(format!(
                    "`regions.{name}: [{a}, {b}]`: the first position comes after the last"
                ));
            }
        }
        if p.truncate && p.mode == Mode::Variants {
            return Err(
                "`truncate` does not apply to `mode: variants`: a variant is scored \
                        in its whole sequence"
                    .into(),
            );
        }
        if p.mode != Mode::Mutagenesis && (p.window.is_some() || p.class.is_some()) {
            return Err("`window` and `class` belong to `mode: mutagenesis`".into());
        }
        Ok(())
    },
    run: score,
};

/// What a model offers to score with: its LM head (causal or masked) or a sequence head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scorer {
    Causal,
    Masked { mask: u32 },
    Classifier { class: usize },
}

/// A sequence tokenized as the model reads it: framed ids, and the span of bases each token
/// spells (`(0, 0)` for special tokens).
struct Framed {
    ids: Vec<u32>,
    /// The token type of every position (the sequence's kind's, for a model that reads
    /// nucleotides and protein apart; else 0).
    token_type: u32,
    bases: Vec<u16>,
    spans: Vec<(usize, usize)>,
}

/// How a tokenizer and a model frame inputs: `[CLS] … [SEP]`, a causal model's start token
/// (its end-of-sequence token, as documents are joined in training), or nothing.
struct Framer<'a> {
    vocab: &'a Vocab,
    /// The table the sequences come from (its alphabet says what they are).
    table: &'a Path,
    before: Option<u32>,
    after: Option<u32>,
    max_len: usize,
    /// Cut what does not fit instead of refusing it.
    truncate: bool,
}

impl Framer<'_> {
    fn frame(&self, seqs: &[String]) -> Result<Vec<Framed>, StepError> {
        let encoded = encode_table_spans(self.vocab, self.table, seqs)?;
        Ok(encoded
            .into_iter()
            .map(|(row, spans)| {
                let mut f = Framed {
                    ids: Vec::with_capacity(row.ids.len() + 2),
                    token_type: row.token_type,
                    bases: Vec::with_capacity(row.ids.len() + 2),
                    spans: Vec::with_capacity(row.ids.len() + 2),
                };
                let special = |f: &mut Framed, id: u32| {
                    f.ids.push(id);
                    f.bases.push(0);
                    f.spans.push((0, 0));
                };
                if let Some(id) = self.before {
                    special(&mut f, id);
                }
                let keep = if self.truncate {
                    self.max_len.saturating_sub(self.extra()).min(row.ids.len())
                } else {
                    row.ids.len()
                };
                f.ids.extend(&row.ids[..keep]);
                f.bases.extend(&row.bases[..keep]);
                f.spans.extend(&spans[..keep]);
                if let Some(id) = self.after {
                    special(&mut f, id);
                }
                f
            })
            .collect())
    }

    /// Tokens framing adds around a sequence.
    fn extra(&self) -> usize {
        self.before.is_some() as usize + self.after.is_some() as usize
    }
}

/// A sequence or variant table row that became too long: the error names it.
fn too_long(table: &LocatedTable, i: usize, column: &str, n: usize, max: usize) -> StepError {
    StepError::new(format!(
        "{}: {n} tokens with framing, more than the {max} positions the model takes; cut the \
         sequences (data.load `window:`) or score with a model of more positions",
        table.at(i, column)
    ))
}

fn score(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ScoreParams = params(ctx.with).map_err(StepError::new)?;
    let (device, _) = resolve_device(ctx, &p.device, "f32")?;
    let path = |i: &InputPath| ctx.workdir.join(i.path());
    let dir = path(&p.model);
    let vocab = load_model_vocab(&path(p.tokenizer.as_ref().unwrap_or(&p.model)), &dir)?;
    let table = read_role(&path(&p.data), &p.id, "data")?;
    let n = match p.max_sequences {
        0 => table.df.height(),
        m => m.min(table.df.height()),
    };
    let seqs: Vec<String> = table.texts(&p.sequence, "sequence", "a sequence")?[..n]
        .iter()
        .map(|s| fold_case(s.trim()))
        .collect();
    let ids: Vec<String> = match table.df.column(&p.id) {
        Ok(_) => table.texts(&p.id, "id", "an id")?[..n].to_vec(),
        Err(_) => (1..=n).map(|i| format!("row{i}")).collect(),
    };
    let scored = on_device!(device, Precision::F32, |dev: B| {
        let model = load_model::<B>(&dir, &dev)?;
        let spec = model.spec().clone();
        let config = &spec.config;
        if config.vocab_size() < vocab.size {
            return Err(StepError::new(format!(
                "{}: the tokenizer has {} tokens but the model only {}; give the model's own \
                 tokenizer (`tokenizer:`)",
                vocab.path.display(),
                vocab.size,
                config.vocab_size()
            )));
        }
        let scorer = scorer_of(&spec.task, config.architecture().lm, &vocab, &p)?;
        if p.mode != Mode::Mutagenesis && matches!(scorer, Scorer::Classifier { .. }) {
            return Err(StepError::new(format!(
                "{}: a classifier scores mutants (`mode: mutagenesis`); likelihoods and variant \
                 effects need a language model",
                dir.display()
            )));
        }
        let cls_sep = config.architecture().framing == Framing::ClsSep;
        let framer = Framer {
            vocab: &vocab,
            table: &table.path,
            before: if cls_sep {
                vocab.bert.map(|b| b.0)
            } else if scorer == Scorer::Causal {
                vocab.eos
            } else {
                None
            },
            after: if cls_sep {
                vocab.bert.map(|b| b.1)
            } else {
                None
            },
            max_len: config.max_positions(),
            truncate: p.truncate,
        };
        let run = Run {
            model: &model,
            scorer,
            framer: &framer,
            batch_size: p.batch_size,
            pad: vocab.pad,
            dev: &dev,
        };
        match p.mode {
            Mode::Likelihood => likelihoods(&run, &table, &p, &ids, &seqs),
            Mode::Variants => variants(&run, &table, &p, &ids, &seqs),
            Mode::Mutagenesis => mutagenesis(&run, &table, &p, &ids, &seqs),
        }
    })?;
    let Scored {
        table: scores,
        mut metrics,
        plot,
    } = scored;
    // The table scored, so the report shows this score beside the others of that table.
    metrics["test_table"] = json!(table_identity(&table.path)?);
    let mut table = scores;
    write_table(&mut table, &ctx.out.join("scores.parquet"))?;
    let svg = ctx.out.join("scores.svg");
    match plot {
        Plot::Heatmap(h) => plot::heatmap(&svg, &h)?,
        Plot::Histogram { title, x, values } => plot::bars(&svg, title, x, &histogram(&values))?,
    }
    writeln!(
        ctx.log,
        "{} rows scored: {}",
        table.height(),
        serde_json::to_string(&metrics).unwrap_or_default()
    )?;
    write_metrics(ctx.out, &metrics)
}

/// What a mode gives: its table, its metrics and its picture.
struct Scored {
    table: DataFrame,
    metrics: Value,
    plot: Plot,
}

/// A mode's picture: the heat map of a mutagenesis, else the spread of its scores.
enum Plot {
    Heatmap(plot::Heatmap),
    Histogram {
        title: &'static str,
        x: &'static str,
        values: Vec<f64>,
    },
}

/// Twenty equal bins from the smallest value to the largest, labelled by their centres.
fn histogram(values: &[f64]) -> Vec<(String, f64)> {
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() {
        return Vec::new();
    }
    let bins = 20;
    let width = ((hi - lo) / bins as f64).max(1e-9);
    let mut counts = vec![0.0; bins];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(bins - 1)] += 1.0;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (format!("{:.2}", lo + (i as f64 + 0.5) * width), c))
        .collect()
}

/// How `model` scores, from its head: the LM head as the architecture's row says, or the
/// class of a sequence classifier.
fn scorer_of(task: &Task, lm: LmKind, vocab: &Vocab, p: &ScoreParams) -> Result<Scorer, StepError> {
    match task {
        Task::Lm => match lm {
            LmKind::Causal => Ok(Scorer::Causal),
            LmKind::Masked => {
                let mask = vocab.bert.map(|b| b.2).ok_or_else(|| {
                    StepError::new(format!(
                        "{}: a masked language model is scored by masking tokens, and this \
                         tokenizer has no mask token",
                        vocab.path.display()
                    ))
                })?;
                Ok(Scorer::Masked { mask })
            }
        },
        Task::SeqCls { labels } => {
            let class = match &p.class {
                Some(c) => labels
                    .iter()
                    .position(|l| *l == class_label(c))
                    .ok_or_else(|| {
                        StepError::new(format!(
                            "`class: {c}`: the model's classes are {}",
                            labels.join(", ")
                        ))
                    })?,
                None => labels
                    .iter()
                    .position(|l| ["+", "1", "positive", "true"].contains(&l.as_str()))
                    .ok_or_else(|| {
                        StepError::new(format!(
                            "set `class:` to the class whose log-probability is scored (the \
                             model's classes are {})",
                            labels.join(", ")
                        ))
                    })?,
            };
            Ok(Scorer::Classifier { class })
        }
        other => Err(StepError::new(format!(
            "model.score reads a language model or a sequence classifier; this model has a {} \
             head",
            other.name()
        ))),
    }
}

/// The model and how it is fed.
struct Run<'a, B: FusedOps> {
    model: &'a Model<B>,
    scorer: Scorer,
    framer: &'a Framer<'a>,
    batch_size: usize,
    pad: u32,
    dev: &'a B::Device,
}

/// Where a sequence sits in the user's table, for errors.
#[derive(Clone, Copy)]
struct Place<'a> {
    table: &'a LocatedTable,
    row: usize,
    column: &'a str,
}

impl<'a> Place<'a> {
    fn of(table: &'a LocatedTable, row: usize, column: &'a str) -> Place<'a> {
        Place { table, row, column }
    }
}

/// One query to a masked model: `ids` with position `at` masked; the log-probabilities of
/// `read` there are wanted.
struct Masked {
    ids: Vec<u32>,
    token_type: u32,
    at: usize,
    read: Vec<u32>,
}

impl<B: FusedOps> Run<'_, B> {
    /// Log-probabilities at a batch's labelled positions (in order) of the ids `reads` names
    /// for each, `k` per position: gathered on the device, so only [labelled, k] numbers come
    /// back, not a vocabulary-wide row per position.
    fn labelled_log_probs(&self, batch: &Batch, reads: Vec<i64>, k: usize) -> Vec<f32> {
        let logits = match self.model.lm_logits_labelled(batch, self.dev) {
            Some(l) => l,
            None => {
                let all = self.model.forward(batch, self.dev); // [B·T, vocab]
                let rows: Vec<i64> = (0..batch.labels.len())
                    .filter(|&i| batch.labels[i] != IGNORE)
                    .map(|i| i as i64)
                    .collect();
                let n = rows.len();
                all.select(0, Tensor::from_data(TensorData::new(rows, [n]), self.dev))
            }
        };
        let n = logits.dims()[0];
        let reads = Tensor::from_data(TensorData::new(reads, [n, k]), self.dev);
        let (_, host) = crate::models::weights::host(log_softmax(logits, 1).gather(1, reads));
        host
    }

    /// Each masked query's log-probabilities of its `read` ids, in batches.
    fn masked(&self, queries: &[Masked], mask: u32) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(self.batch_size) {
            let rows: Vec<Row> = chunk
                .iter()
                .map(|q| {
                    let mut ids = q.ids.clone();
                    let mut labels = vec![IGNORE; ids.len()];
                    labels[q.at] = ids[q.at] as i64;
                    ids[q.at] = mask;
                    Row {
                        bases: vec![1; ids.len()],
                        ids,
                        target: Target::Tokens(labels),
                        second: 0,
                        token_type: q.token_type,
                    }
                })
                .collect();
            let refs: Vec<&Row> = rows.iter().collect();
            let batch = batch::task_batch(&refs, self.pad);
            // Every query reads as many ids as the longest (repeating its last), so the
            // gather is one rectangle.
            let k = chunk.iter().map(|q| q.read.len()).max().unwrap_or(1);
            let reads: Vec<i64> = chunk
                .iter()
                .flat_map(|q| (0..k).map(|j| q.read[j.min(q.read.len() - 1)] as i64))
                .collect();
            let lp = self.labelled_log_probs(&batch, reads, k);
            for (i, q) in chunk.iter().enumerate() {
                out.push((0..q.read.len()).map(|j| lp[i * k + j] as f64).collect());
            }
        }
        out
    }

    /// Each framed sequence's log-likelihood (nats) and the bases its scored tokens spell:
    /// causal, every token after the start token given those before it; masked, each base
    /// token masked in turn (pseudo-log-likelihood).
    fn log_likelihoods(&self, framed: &[Framed]) -> Vec<(f64, u64)> {
        match self.scorer {
            Scorer::Causal => {
                let mut out = Vec::with_capacity(framed.len());
                for chunk in framed.chunks(self.batch_size) {
                    let rows: Vec<Row> = chunk
                        .iter()
                        .map(|f| Row {
                            ids: f.ids.clone(),
                            bases: f.bases.clone(),
                            target: Target::None,
                            second: 0,
                            token_type: f.token_type,
                        })
                        .collect();
                    let refs: Vec<&Row> = rows.iter().collect();
                    let batch = batch::clm_batch(&refs, self.pad);
                    let labels: Vec<i64> = batch
                        .labels
                        .iter()
                        .copied()
                        .filter(|&l| l != IGNORE)
                        .collect();
                    let lp = self.labelled_log_probs(&batch, labels, 1);
                    let mut k = 0;
                    for (i, f) in chunk.iter().enumerate() {
                        let (mut ll, mut bases) = (0.0, 0u64);
                        for j in 0..batch.t {
                            let label = batch.labels[i * batch.t + j];
                            if label == IGNORE {
                                continue;
                            }
                            ll += lp[k] as f64;
                            bases += f.bases[j + 1] as u64;
                            k += 1;
                        }
                        out.push((ll, bases));
                    }
                }
                out
            }
            Scorer::Masked { mask } => {
                let mut queries = Vec::new();
                let mut owner = Vec::new();
                for (i, f) in framed.iter().enumerate() {
                    for (j, &(a, b)) in f.spans.iter().enumerate() {
                        if b > a {
                            queries.push(Masked {
                                ids: f.ids.clone(),
                                token_type: f.token_type,
                                at: j,
                                read: vec![f.ids[j]],
                            });
                            owner.push((i, (b - a) as u64));
                        }
                    }
                }
                let mut out = vec![(0.0, 0u64); framed.len()];
                for ((i, bases), lp) in owner.into_iter().zip(self.masked(&queries, mask)) {
                    out[i].0 += lp[0];
                    out[i].1 += bases;
                }
                out
            }
            Scorer::Classifier { .. } => unreachable!("checked: classifiers score mutants"),
        }
    }

    /// Each sequence's log-probability of the scored class.
    fn class_log_probs(&self, framed: &[Framed], class: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(framed.len());
        for chunk in framed.chunks(self.batch_size) {
            let rows: Vec<Row> = chunk
                .iter()
                .map(|f| Row {
                    ids: f.ids.clone(),
                    bases: f.bases.clone(),
                    target: Target::Class(0),
                    second: 0,
                    token_type: f.token_type,
                })
                .collect();
            let refs: Vec<&Row> = rows.iter().collect();
            let batch = batch::task_batch(&refs, self.pad);
            let logits = self.model.forward(&batch, self.dev); // [B, classes]
            let k = logits.dims()[1];
            let (_, lp) = crate::models::weights::host(log_softmax(logits, 1));
            out.extend((0..chunk.len()).map(|i| lp[i * k + class] as f64));
        }
        out
    }

    /// Frame sequences, each within the model's positions (else the error names `rows[i]`).
    fn frame_checked(
        &self,
        seqs: &[String],
        table: &LocatedTable,
        column: &str,
        rows: &[usize],
    ) -> Result<Vec<Framed>, StepError> {
        let framed = self.framer.frame(seqs)?;
        for (k, f) in framed.iter().enumerate() {
            if f.ids.len() > self.framer.max_len {
                return Err(too_long(
                    table,
                    rows[k],
                    column,
                    f.ids.len(),
                    self.framer.max_len,
                ));
            }
            if f.ids.len() == self.framer.extra() {
                return Err(StepError::new(format!(
                    "{}: no tokens to score (an empty sequence, or letters the tokenizer does \
                     not know)",
                    table.at(rows[k], column)
                )));
            }
        }
        Ok(framed)
    }

    /// The single-letter token of `letter`, when the tokenizer has one.
    fn letter_id(&self, letter: char) -> Option<u32> {
        self.framer.vocab.tokenizer.token_to_id(&letter.to_string())
    }

    /// Scores of single-letter `changes` (position, letter) of one sequence against the
    /// sequence itself, each with its method: masked marginals where a masked model's
    /// tokenizer spells the base alone (one query per position reads every letter), else the
    /// difference of whole-sequence scores (log-likelihood, pseudo-log-likelihood, or the
    /// classifier's log p of its class). Every forward pass is batched.
    fn change_scores(
        &self,
        seq: &str,
        framed: &Framed,
        changes: &[(usize, char)],
        place: Place,
    ) -> Result<Vec<(f64, &'static str)>, StepError> {
        let mut out = vec![(f64::NAN, ""); changes.len()];
        let mut whole = Vec::new(); // indices of changes scored by whole sequences
        if let Scorer::Masked { mask } = self.scorer {
            // Per position: the token spelling it alone, and the changes there.
            let mut at: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
            for (k, &(pos, letter)) in changes.iter().enumerate() {
                let own = self.letter_id(seq.as_bytes()[pos] as char);
                let token = framed.spans.iter().position(|&s| s == (pos, pos + 1));
                let alt = in_case_of(letter, seq.as_bytes()[pos] as char);
                match (token, own, self.letter_id(alt)) {
                    (Some(t), Some(own), Some(_)) if framed.ids[t] == own => {
                        at.entry(pos).or_insert((t, Vec::new())).1.push(k);
                    }
                    _ => whole.push(k),
                }
            }
            let queries: Vec<Masked> = at
                .iter()
                .map(|(&pos, (t, ks))| Masked {
                    ids: framed.ids.clone(),
                    token_type: framed.token_type,
                    at: *t,
                    read: std::iter::once(seq.as_bytes()[pos] as char)
                        .chain(
                            ks.iter()
                                .map(|&k| in_case_of(changes[k].1, seq.as_bytes()[pos] as char)),
                        )
                        .map(|c| self.letter_id(c).expect("checked above"))
                        .collect(),
                })
                .collect();
            for ((_, (_, ks)), lp) in at.iter().zip(self.masked(&queries, mask)) {
                for (j, &k) in ks.iter().enumerate() {
                    out[k] = (lp[j + 1] - lp[0], "masked-marginal");
                }
            }
        } else {
            whole = (0..changes.len()).collect();
        }
        if whole.is_empty() {
            return Ok(out);
        }
        let mut seqs = vec![seq.to_string()];
        for &k in &whole {
            let (pos, letter) = changes[k];
            let mut m = seq.as_bytes().to_vec();
            m[pos] = in_case_of(letter, m[pos] as char) as u8;
            seqs.push(String::from_utf8(m).expect("ASCII"));
        }
        let framed = self.frame_checked(
            &seqs,
            place.table,
            place.column,
            &vec![place.row; seqs.len()],
        )?;
        let (method, scores) = match self.scorer {
            Scorer::Classifier { class } => {
                ("class-log-prob", self.class_log_probs(&framed, class))
            }
            Scorer::Causal => (
                "log-likelihood-ratio",
                self.log_likelihoods(&framed)
                    .into_iter()
                    .map(|x| x.0)
                    .collect(),
            ),
            Scorer::Masked { .. } => (
                "pseudo-log-likelihood-ratio",
                self.log_likelihoods(&framed)
                    .into_iter()
                    .map(|x| x.0)
                    .collect(),
            ),
        };
        for (j, &k) in whole.iter().enumerate() {
            out[k] = (scores[j + 1] - scores[0], method);
        }
        Ok(out)
    }
}

const LN2: f64 = std::f64::consts::LN_2;

/// `letter` in the case of `like` (a change to a soft-masked, lower-case base stays lower
/// case, as the tokenizer saw the sequence).
fn in_case_of(letter: char, like: char) -> char {
    if like.is_ascii_lowercase() {
        letter.to_ascii_lowercase()
    } else {
        letter.to_ascii_uppercase()
    }
}

/// `likelihood`: per sequence its log-likelihood, tokens, bases and bits per base.
fn likelihoods<B: FusedOps>(
    run: &Run<B>,
    table: &LocatedTable,
    p: &ScoreParams,
    ids: &[String],
    seqs: &[String],
) -> Result<Scored, StepError> {
    let rows: Vec<usize> = (0..seqs.len()).collect();
    let framed = run.frame_checked(seqs, table, &p.sequence, &rows)?;
    let ll = run.log_likelihoods(&framed);
    let bits: Vec<f64> = ll
        .iter()
        .map(|&(l, b)| -l / LN2 / b.max(1) as f64)
        .collect();
    let (total_ll, total_bases) = ll
        .iter()
        .fold((0.0, 0u64), |(a, n), &(l, b)| (a + l, n + b));
    let df = df!(
        "id" => ids,
        "log_likelihood" => ll.iter().map(|x| x.0).collect::<Vec<_>>(),
        "bases" => ll.iter().map(|x| x.1).collect::<Vec<_>>(),
        "bits_per_base" => &bits,
    )?;
    let start = run
        .framer
        .before
        .and_then(|id| run.framer.vocab.tokenizer.id_to_token(id));
    let cut = framed
        .iter()
        .zip(seqs)
        .filter(|(f, s)| f.spans.iter().map(|x| x.1).max().unwrap_or(0) < s.len())
        .count();
    let metrics = json!({
        "mode": "likelihood",
        "truncated": cut,
        "method": method_name(run.scorer),
        // The token a causal model reads before the sequence (none scores the first token
        // unconditioned); `[CLS]` for a masked one.
        "start_token": start,
        "sequences": seqs.len(),
        "bases": total_bases,
        "bits_per_base": -total_ll / LN2 / total_bases.max(1) as f64,
        "mean_log_likelihood": total_ll / seqs.len().max(1) as f64,
    });
    Ok(Scored {
        table: df,
        metrics,
        plot: Plot::Histogram {
            title: "bits per base of each sequence",
            x: "bits per base",
            values: bits,
        },
    })
}

fn method_name(scorer: Scorer) -> &'static str {
    match scorer {
        Scorer::Causal => "log-likelihood",
        Scorer::Masked { .. } => "pseudo-log-likelihood",
        Scorer::Classifier { .. } => "class-log-prob",
    }
}

/// One letter of a variant column, upper case; anything else is an error naming the row.
fn letter(table: &LocatedTable, i: usize, column: &str, text: &str) -> Result<char, StepError> {
    let t = text.trim();
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => Ok(c.to_ascii_uppercase()),
        _ => Err(StepError::new(format!(
            "{}: `{t}` is not one letter; a variant changes one base (or residue) into another",
            table.at(i, column)
        ))),
    }
}

/// `variants`: per variant its score (log-likelihood ratio, alt over ref) and the method.
fn variants<B: FusedOps>(
    run: &Run<B>,
    table: &LocatedTable,
    p: &ScoreParams,
    ids: &[String],
    seqs: &[String],
) -> Result<Scored, StepError> {
    let n = seqs.len();
    let positions = table.numbers(&p.position, "position")?;
    let refs = table.texts(&p.reference, "ref", "a reference letter")?;
    let alts = table.texts(&p.alt, "alt", "an alternative letter")?;
    let (mut pos_out, mut ref_out, mut alt_out, mut scores, mut methods) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let seq = &seqs[i];
        let pos = positions[i];
        if pos.fract() != 0.0 || pos < 1.0 || pos as usize > seq.len() {
            return Err(StepError::new(format!(
                "{}: position {pos} is outside the sequence (1 to {}); positions are 1-based",
                table.at(i, &p.position),
                seq.len()
            )));
        }
        let at = pos as usize - 1;
        let r = letter(table, i, &p.reference, &refs[i])?;
        let a = letter(table, i, &p.alt, &alts[i])?;
        let found = seq.as_bytes()[at] as char;
        if found.to_ascii_uppercase() != r {
            return Err(StepError::new(format!(
                "{}: the reference is `{r}` but the sequence has `{found}` at position {pos}; \
                 check that positions are 1-based and the sequence is the reference",
                table.at(i, &p.reference)
            )));
        }
        let framed = run.frame_checked(std::slice::from_ref(seq), table, &p.sequence, &[i])?;
        let (s, method) = run.change_scores(
            seq,
            &framed[0],
            &[(at, a)],
            Place::of(table, i, &p.sequence),
        )?[0];
        pos_out.push(pos as i64);
        ref_out.push(r.to_string());
        alt_out.push(a.to_string());
        scores.push(s);
        methods.push(method);
    }
    let df = df!(
        "id" => ids,
        "position" => &pos_out,
        "ref" => &ref_out,
        "alt" => &alt_out,
        "score" => &scores,
        "method" => &methods,
    )?;
    let mean = scores.iter().sum::<f64>() / n.max(1) as f64;
    let mut by_method: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &methods {
        *by_method.entry(m).or_default() += 1;
    }
    let metrics = json!({
        "mode": "variants",
        "variants": n,
        "mean_score": mean,
        "deleterious": scores.iter().filter(|&&s| s < 0.0).count(),
        "methods": by_method,
    });
    Ok(Scored {
        table: df,
        metrics,
        plot: Plot::Histogram {
            title: "variant effects (log-likelihood ratio, alternative over reference)",
            x: "score",
            values: scores,
        },
    })
}

/// `mutagenesis`: every letter of `letters` at every position of the window, its score
/// against the sequence's own letter; per position the mean absolute effect, and per named
/// region its mean against the rest.
fn mutagenesis<B: FusedOps>(
    run: &Run<B>,
    table: &LocatedTable,
    p: &ScoreParams,
    ids: &[String],
    seqs: &[String],
) -> Result<Scored, StepError> {
    let letters: Vec<char> = p.letters.to_ascii_uppercase().chars().collect();
    let (mut id_out, mut pos_out, mut ref_out, mut alt_out, mut delta) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut methods: BTreeMap<&str, usize> = BTreeMap::new();
    // Sum and count of effects per (window offset, letter), for the heat map.
    let mut cells: BTreeMap<(usize, usize), (f64, usize)> = BTreeMap::new();
    let mut width = 0;
    for (i, seq) in seqs.iter().enumerate() {
        let [w0, w1] = p.window.unwrap_or([0, seq.len()]);
        if w1 > seq.len() {
            return Err(StepError::new(format!(
                "{}: `window: [{w0}, {w1}]` runs past the sequence's {} bases",
                table.at(i, &p.sequence),
                seq.len()
            )));
        }
        width = width.max(w1 - w0);
        let framed = run.frame_checked(std::slice::from_ref(seq), table, &p.sequence, &[i])?;
        let read = framed[0].spans.iter().map(|s| s.1).max().unwrap_or(0);
        if w1 > read {
            return Err(StepError::new(format!(
                "{}: `window: [{w0}, {w1}]` runs past the {read} bases the model reads of this \
                 sequence (`truncate` cut the rest); scan a window within them",
                table.at(i, &p.sequence)
            )));
        }
        let changes: Vec<(usize, char)> = (w0..w1)
            .flat_map(|pos| {
                let own = (seq.as_bytes()[pos] as char).to_ascii_uppercase();
                letters
                    .iter()
                    .filter(move |&&c| c != own)
                    .map(move |&c| (pos, c))
            })
            .collect();
        let scores =
            run.change_scores(seq, &framed[0], &changes, Place::of(table, i, &p.sequence))?;
        for (&(pos, a), (s, method)) in changes.iter().zip(scores) {
            *methods.entry(method).or_default() += 1;
            id_out.push(ids[i].clone());
            pos_out.push(p.origin + pos as i64);
            ref_out.push(
                (seq.as_bytes()[pos] as char)
                    .to_ascii_uppercase()
                    .to_string(),
            );
            alt_out.push(a.to_string());
            delta.push(s);
            let l = letters.iter().position(|&c| c == a).expect("from letters");
            let cell = cells.entry((pos - w0, l)).or_default();
            cell.0 += s;
            cell.1 += 1;
        }
    }
    // Mean absolute effect per position (reported coordinate).
    let mut per_position: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for (&pos, &d) in pos_out.iter().zip(&delta) {
        let e = per_position.entry(pos).or_default();
        e.0 += d.abs();
        e.1 += 1;
    }
    let profile: Vec<(i64, f64)> = per_position
        .iter()
        .map(|(&pos, &(s, c))| (pos, s / c as f64))
        .collect();
    let inside = |pos: i64| p.regions.values().any(|&[a, b]| (a..=b).contains(&pos));
    let mean_of = |keep: &dyn Fn(i64) -> bool| {
        let v: Vec<f64> = profile
            .iter()
            .filter(|(pos, _)| keep(*pos))
            .map(|x| x.1)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let outside = mean_of(&|pos| !inside(pos));
    let mut regions = serde_json::Map::new();
    for (name, &[a, b]) in &p.regions {
        let mean = mean_of(&|pos| (a..=b).contains(&pos));
        regions.insert(
            name.clone(),
            json!({
                "first": a,
                "last": b,
                "mean_abs_effect": mean,
                "ratio_to_outside": mean.zip(outside).map(|(m, o)| m / o.max(1e-12)),
            }),
        );
    }
    let mut ranked = profile.clone();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<i64> = ranked.iter().take(10).map(|x| x.0).collect();
    let metrics = json!({
        "mode": "mutagenesis",
        "method": methods
            .iter()
            .max_by_key(|&(_, &n)| n)
            .map_or(method_name(run.scorer), |(m, _)| *m),
        "methods": methods,
        "sequences": seqs.len(),
        "mutants": delta.len(),
        "mean_abs_effect": delta.iter().map(|d| d.abs()).sum::<f64>() / delta.len().max(1) as f64,
        "mean_abs_effect_outside_regions": outside,
        "regions": regions,
        "top_positions": top,
        "top_positions_in_regions": top.iter().filter(|&&pos| inside(pos)).count(),
    });
    let mut grid = vec![vec![f64::NAN; width]; letters.len()];
    for (&(x, l), &(s, c)) in &cells {
        grid[l][x] = s / c as f64;
    }
    let start = p.origin + p.window.map_or(0, |w| w[0] as i64);
    let marks: Vec<(String, i64, i64)> = p
        .regions
        .iter()
        .map(|(name, &[a, b])| (name.clone(), a, b))
        .collect();
    let df = df!(
        "id" => &id_out,
        "position" => &pos_out,
        "ref" => &ref_out,
        "alt" => &alt_out,
        "score" => &delta,
    )?;
    let heat = plot::Heatmap {
        title: "in-silico mutagenesis: mean effect of each change".into(),
        rows: letters.iter().map(|c| c.to_string()).collect(),
        first_column: start,
        values: grid,
        marks,
    };
    Ok(Scored {
        table: df,
        metrics,
        plot: Plot::Heatmap(heat),
    })
}
