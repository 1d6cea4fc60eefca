//! `baseline.classify` and `baseline.regress`: the models a DNA language model has to beat on a
//! labelled task, fitted on a training table and scored on a test table, with predictions in
//! the same table format as a fine-tuned model's, so `eval.classify` / `eval.regress` score
//! both by the same code.
//!
//! Features of a sequence (uppercased; `U` read as `T`):
//! - `onehot`: position-aware, 5 columns per position (A, C, G, T, N; any other letter counts
//!   as N) over the longest training sequence; shorter sequences are padded with zeros, longer
//!   test sequences cut (the model has no weights past the training length).
//! - `kmer`: the count of each of the 4^k ACGT k-mers (k-mers with another letter skipped),
//!   divided by the sequence length: position-free composition.
//!
//! With `standardize: true` every feature is centred and scaled on the training rows first, so
//! the penalty weighs features alike (k-mer frequencies, about 1/length each, are otherwise
//! flattened by the default penalty: on StatLog splice 3-mers reach 0.53 test accuracy
//! unscaled and 0.64 standardised).
//!
//! Models ([`crate::linear`], checked against scikit-learn): multinomial logistic regression
//! with an L2 penalty `l2` (sklearn's `1/C`, default 1 as sklearn's C=1; the intercept is not
//! penalised) fitted by L-BFGS to a tight tolerance, and ridge regression (`alpha`, the
//! normal equations solved exactly, intercept not penalised, as sklearn's `Ridge`). No
//! randomness anywhere: a rerun writes identical bytes.

use std::path::Path;

mod nearest;
mod per_base;
pub use nearest::NEAREST;
pub use per_base::PER_BASE;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::data::{Alphabet, Decided, check_rows, decide_alphabet, detect_alphabet};
use super::table::{
    LocatedTable, TableMeta, class_indices, read_role, training_classes, write_table_with,
};

/// A table a baseline reads, rows located for errors.
type Table = LocatedTable;
use super::{InputPath, StepContext, StepError, StepKind, params, write_json, write_metrics};
use crate::linear::{Lbfgs, LinearError, Logistic, Matrix, Ridge, Standardizer, argmax_rows};
use crate::score::rmse;

/// How a sequence becomes a vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum FeatureKind {
    /// Position-aware one-hot: A/C/G/T/N at every position.
    #[default]
    Onehot,
    /// k-mer counts divided by the sequence length (`k`, default 3).
    Kmer,
}

/// Parameters of `baseline.classify`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogisticParams {
    /// The table to fit on (parquet, CSV, TSV, JSON lines, JSON).
    train: InputPath,
    /// The table to predict; its rows make `predictions.parquet`.
    test: InputPath,
    /// A validation table, scored into the metrics (`valid_accuracy`).
    valid: Option<InputPath>,
    /// `onehot` (position-aware) or `kmer` (composition).
    #[serde(default)]
    features: FeatureKind,
    /// The sequences' alphabet (`dna`, `rna`, `protein`); default: the table's own (what
    /// data.load recorded), else decided from the letters. Nucleotides get one-hot or DNA
    /// k-mers, protein amino-acid k-mers.
    alphabet: Option<Alphabet>,
    /// k-mer length for `features: kmer` (1–6).
    k: Option<usize>,
    /// Scale every feature to zero mean and unit variance on the training rows (sklearn's
    /// `StandardScaler`), so the penalty weighs features alike. k-mer frequencies are small
    /// numbers (about 1/length each) that the default penalty otherwise flattens.
    #[serde(default)]
    standardize: bool,
    /// Column of sequences.
    #[serde(default = "super::table::sequence_column")]
    sequence: String,
    /// Column of a pair's second sequence (`data.pairs`' `pair`): its k-mer features are
    /// appended to the first sequence's (`features: kmer` only). A protein side counts k-mers
    /// of the 20 amino acids.
    pair: Option<String>,
    /// k-mer length on the pair side (default: `k` for DNA, 1 for protein; protein at most 3).
    pair_k: Option<usize>,
    /// Column of class labels.
    #[serde(default = "super::table::label_column")]
    label: String,
    /// Multi-label: the label column lists each row's labels separated by this (`;`), and one
    /// logistic regression is fitted per label (scikit-learn's one-vs-rest), scored as
    /// `model.finetune`'s `task: multi-label`.
    label_separator: Option<String>,
    /// Column of row ids, copied into the predictions.
    #[serde(default = "super::table::id_column")]
    id: String,
    /// L2 penalty on the weights (scikit-learn's `1 / C`).
    #[serde(default = "one")]
    l2: f64,
    /// L-BFGS iterations at most (the fit stops earlier once converged).
    #[serde(default = "max_iter")]
    max_iter: usize,
}

/// Parameters of `baseline.regress`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RidgeParams {
    /// The table to fit on (parquet, CSV, TSV, JSON lines, JSON).
    train: InputPath,
    /// The table to predict; its rows make `predictions.parquet`.
    test: InputPath,
    /// A validation table, scored into the metrics (`valid_rmse`).
    valid: Option<InputPath>,
    /// `onehot` (position-aware) or `kmer` (composition).
    #[serde(default)]
    features: FeatureKind,
    /// The sequences' alphabet (`dna`, `rna`, `protein`); default: the table's own (what
    /// data.load recorded), else decided from the letters. Nucleotides get one-hot or DNA
    /// k-mers, protein amino-acid k-mers.
    alphabet: Option<Alphabet>,
    /// k-mer length for `features: kmer` (1–6).
    k: Option<usize>,
    /// Scale every feature to zero mean and unit variance on the training rows (sklearn's
    /// `StandardScaler`), so the penalty weighs features alike. k-mer frequencies are small
    /// numbers (about 1/length each) that the default penalty otherwise flattens.
    #[serde(default)]
    standardize: bool,
    /// Column of sequences.
    #[serde(default = "super::table::sequence_column")]
    sequence: String,
    /// Column of numeric targets.
    #[serde(default = "super::table::label_column")]
    label: String,
    /// Column of row ids, copied into the predictions.
    #[serde(default = "super::table::id_column")]
    id: String,
    /// L2 penalty on the weights (scikit-learn's `Ridge(alpha)`).
    #[serde(default = "one")]
    alpha: f64,
}

fn one() -> f64 {
    1.0
}
fn max_iter() -> usize {
    10_000
}

/// Convergence of the logistic fit: largest gradient component of the mean objective.
const TOL: f64 = 1e-8;
/// Longest k-mer: 4^6 = 4,096 features.
const MAX_K: usize = 6;
/// Largest feature matrix built (values): 64 Mi f64 = 512 MiB.
const MAX_VALUES: usize = 1 << 26;

const OUTPUTS: &[(&str, &str)] = &[
    ("predictions", "predictions.parquet"),
    ("model", "model.json"),
];

pub static CLASSIFY: StepKind = StepKind {
    name: "baseline.classify",
    version: 3,
    summary: "L2 logistic regression on one-hot or k-mer features, fitted on `train`, predicting `test` (outputs `predictions`: id, label, prediction, prob_<class>; `model`)",
    outputs: OUTPUTS,
    schema: |g| g.subschema_for::<LogisticParams>(),
    check: |with| {
        let p = params::<LogisticParams>(with)?;
        check_common(p.features, p.k, &p.sequence, &p.label, &p.id)?;
        check_penalty("l2", p.l2)?;
        match (&p.pair, p.pair_k) {
            (Some(_), _) if p.features != FeatureKind::Kmer => {
                return Err("`pair` needs `features: kmer`".into());
            }
            (None, Some(_)) => return Err("`pair_k` applies with `pair`".into()),
            (_, Some(k)) if !(1..=MAX_K).contains(&k) => {
                return Err(format!("`pair_k` is {k}; it must be between 1 and {MAX_K}"));
            }
            _ => {}
        }
        if p.max_iter == 0 {
            return Err("`max_iter` must be at least 1".into());
        }
        Ok(())
    },
    run: classify,
};

pub static REGRESS: StepKind = StepKind {
    name: "baseline.regress",
    version: 3,
    summary: "ridge regression on one-hot or k-mer features, fitted on `train`, predicting `test` (outputs `predictions`: id, label, prediction; `model`)",
    outputs: OUTPUTS,
    schema: |g| g.subschema_for::<RidgeParams>(),
    check: |with| {
        let p = params::<RidgeParams>(with)?;
        check_common(p.features, p.k, &p.sequence, &p.label, &p.id)?;
        check_penalty("alpha", p.alpha)
    },
    run: regress,
};

fn check_common(
    features: FeatureKind,
    k: Option<usize>,
    sequence: &str,
    label: &str,
    id: &str,
) -> Result<(), String> {
    match (features, k) {
        (FeatureKind::Onehot, Some(_)) => {
            return Err("`k` applies to `features: kmer`; drop it or set `features: kmer`".into());
        }
        (FeatureKind::Kmer, Some(k)) if !(1..=MAX_K).contains(&k) => {
            return Err(format!("`k` is {k}; it must be between 1 and {MAX_K}"));
        }
        _ => {}
    }
    for (a, an, b, bn) in [
        (sequence, "sequence", label, "label"),
        (sequence, "sequence", id, "id"),
        (label, "label", id, "id"),
    ] {
        if a == b {
            return Err(format!(
                "`{an}` and `{bn}` are both `{a}`; they must name different columns"
            ));
        }
    }
    Ok(())
}

fn check_penalty(name: &str, v: f64) -> Result<(), String> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is {v}; it must be a positive number (1.0 is scikit-learn's default)"
        ))
    }
}

/// How sequences become vectors, with what the training table fixed (the one-hot width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Features {
    Onehot {
        width: usize,
    },
    Kmer {
        k: usize,
    },
    /// k-mers of the 20 amino acids (other letters break a run, as N does in DNA).
    Residues {
        k: usize,
    },
}

/// The 20 amino acids, in the order of the `Residues` features.
const AMINO_ACIDS: &[u8; 20] = b"ACDEFGHIKLMNPQRSTVWY";
/// Longest amino-acid k-mer: 20^3 = 8,000 features.
const MAX_RESIDUE_K: usize = 3;

impl Features {
    /// The featuriser for `kind`, sized on the training sequences: k-mers of their alphabet;
    /// one-hot only for nucleotides.
    fn fit(
        kind: FeatureKind,
        k: Option<usize>,
        alphabet: Decided,
        train: &[String],
    ) -> Result<Features, String> {
        let a = alphabet.alphabet;
        if !matches!(a, Alphabet::Dna | Alphabet::Rna | Alphabet::Protein) {
            return Err(format!(
                "the sequences' alphabet is `{}` ({}): a baseline featurises nucleotides or \
                 protein; set `alphabet:` if they are one of those",
                a.name(),
                alphabet.from
            ));
        }
        match kind {
            FeatureKind::Kmer => Features::fit_kmer(k, "k", a.is_nucleotide()),
            FeatureKind::Onehot if !a.is_nucleotide() => Err(format!(
                "`features: onehot` reads A/C/G/T/N; these sequences are protein ({}): use \
                 `features: kmer` (amino-acid k-mers), or set `alphabet: dna` if they are not",
                alphabet.from
            )),
            FeatureKind::Onehot => Ok(Features::Onehot {
                width: train.iter().map(String::len).max().unwrap_or(0),
            }),
        }
    }

    /// The featuriser of a pair's second side: k-mers of its alphabet (`pair_k`; default `k`
    /// for DNA, 1 for protein).
    fn fit_pair(
        k: Option<usize>,
        pair_k: Option<usize>,
        seqs: &[String],
    ) -> Result<Features, String> {
        let dna = is_dna(seqs);
        let k = if dna { pair_k.or(k) } else { pair_k };
        Features::fit_kmer(k, "pair_k", dna)
    }

    /// k-mer features: DNA k-mers (default k 3) for nucleotides, else amino-acid k-mers
    /// (default k 1, at most 3). `param` names k in messages.
    fn fit_kmer(k: Option<usize>, param: &str, nucleotide: bool) -> Result<Features, String> {
        if nucleotide {
            return Ok(Features::Kmer { k: k.unwrap_or(3) });
        }
        let k = k.unwrap_or(1);
        if k > MAX_RESIDUE_K {
            return Err(format!(
                "`{param}: {k}`: these sequences are protein, whose k-mers go up to \
                 {MAX_RESIDUE_K} (20^{MAX_RESIDUE_K} features); set `alphabet: dna` if they \
                 are nucleotides"
            ));
        }
        Ok(Features::Residues { k })
    }

    fn dimension(self) -> usize {
        match self {
            Features::Onehot { width } => width * 5,
            Features::Kmer { k } => 1 << (2 * k),
            Features::Residues { k } => 20usize.pow(k as u32),
        }
    }

    /// Column names: `12A` (position 12, 1-based, base A) or the k-mer.
    fn names(self) -> Vec<String> {
        match self {
            Features::Onehot { width } => (1..=width)
                .flat_map(|i| "ACGTN".chars().map(move |b| format!("{i}{b}")))
                .collect(),
            Features::Kmer { k } => (0..1usize << (2 * k))
                .map(|w| {
                    (0..k)
                        .map(|j| b"ACGT"[(w >> (2 * (k - 1 - j))) & 3] as char)
                        .collect()
                })
                .collect(),
            Features::Residues { k } => (0..self.dimension())
                .map(|w| {
                    (0..k)
                        .map(|j| AMINO_ACIDS[(w / 20usize.pow((k - 1 - j) as u32)) % 20] as char)
                        .collect()
                })
                .collect(),
        }
    }

    fn describe(self) -> Value {
        match self {
            Features::Onehot { width } => {
                json!({ "kind": "onehot", "positions": width, "dimension": self.dimension() })
            }
            Features::Kmer { k } => {
                json!({ "kind": "dna-kmer", "k": k, "dimension": self.dimension() })
            }
            Features::Residues { k } => {
                json!({ "kind": "protein-kmer", "k": k, "dimension": self.dimension() })
            }
        }
    }

    /// The feature matrix of `seqs`, or an error naming `file` when it would be too big.
    fn matrix(self, seqs: &[String], file: &Path) -> Result<Matrix, StepError> {
        let d = self.dimension();
        if seqs.len().saturating_mul(d) > MAX_VALUES {
            return Err(StepError::new(format!(
                "{}: {} rows × {d} features is too large a matrix for this baseline; use \
                 `features: kmer` (4^k features) or shorter sequences",
                file.display(),
                seqs.len()
            )));
        }
        let mut x = Matrix::zeros(seqs.len(), d);
        for (i, s) in seqs.iter().enumerate() {
            self.row(s, x.row_mut(i));
        }
        Ok(x)
    }

    /// Write the features of one sequence into `row` (zeros on entry).
    fn row(self, seq: &str, row: &mut [f64]) {
        let bases = seq.bytes().map(base_code);
        match self {
            Features::Onehot { width } => {
                for (i, b) in bases.take(width).enumerate() {
                    row[i * 5 + b.unwrap_or(4)] = 1.0;
                }
            }
            Features::Kmer { k } => count_words(bases, 4, k, row, seq.len()),
            Features::Residues { k } => {
                let residues = seq.bytes().map(|b| {
                    AMINO_ACIDS
                        .iter()
                        .position(|&a| a == b.to_ascii_uppercase())
                });
                count_words(residues, 20, k, row, seq.len());
            }
        }
    }
}

/// The frequencies of the k-letter words of a sequence written as letter codes (`None`: a
/// letter outside the alphabet, which breaks every word across it), into `row` (its index is
/// the word in base `letters`), divided by the sequence's `len`.
fn count_words(
    codes: impl Iterator<Item = Option<usize>>,
    letters: usize,
    k: usize,
    row: &mut [f64],
    len: usize,
) {
    let size = letters.pow(k as u32);
    let (mut word, mut run) = (0usize, 0usize);
    for code in codes {
        match code {
            Some(c) => {
                word = (word * letters + c) % size;
                run += 1;
                if run >= k {
                    row[word] += 1.0;
                }
            }
            None => run = 0,
        }
    }
    if len > 0 {
        row.iter_mut().for_each(|v| *v /= len as f64);
    }
}

/// The features plus the standardisation fitted on the training rows, if asked for.
struct Design {
    features: Features,
    /// The training sequences' alphabet, which chose the features.
    alphabet: Decided,
    /// The features of a pair's second side, appended.
    pair: Option<Features>,
    scaler: Option<Standardizer>,
}

/// A table's inputs to a baseline: its sequences and, for pairs, their partners.
#[derive(Debug)]
struct Sides {
    first: Vec<String>,
    pair: Option<Vec<String>>,
}

impl Design {
    /// Fit on the training sequences; returns their (standardised) matrix too.
    fn fit(
        (kind, k, pair_k): (FeatureKind, Option<usize>, Option<usize>),
        alphabet: Decided,
        standardize: bool,
        seqs: &Sides,
        file: &Path,
    ) -> Result<(Design, Matrix), StepError> {
        let features = Features::fit(kind, k, alphabet, &seqs.first)
            .map_err(|e| StepError::new(format!("{}: {e}", file.display())))?;
        let pair = match &seqs.pair {
            Some(p) => Some(
                Features::fit_pair(k, pair_k, p)
                    .map_err(|e| StepError::new(format!("{}: {e}", file.display())))?,
            ),
            None => None,
        };
        let mut design = Design {
            features,
            alphabet,
            pair,
            scaler: None,
        };
        let mut x = design.raw(seqs, file)?;
        design.scaler = standardize.then(|| Standardizer::fit(&x));
        if let Some(s) = &design.scaler {
            s.apply(&mut x);
        }
        Ok((design, x))
    }

    /// The features of both sides side by side, before scaling.
    fn raw(&self, seqs: &Sides, file: &Path) -> Result<Matrix, StepError> {
        let first = self.features.matrix(&seqs.first, file)?;
        let (Some(features), Some(pairs)) = (self.pair, &seqs.pair) else {
            return Ok(first);
        };
        let second = features.matrix(pairs, file)?;
        let mut x = Matrix::zeros(first.rows, first.cols + second.cols);
        for i in 0..first.rows {
            let row = x.row_mut(i);
            row[..first.cols].copy_from_slice(first.row(i));
            row[first.cols..].copy_from_slice(second.row(i));
        }
        Ok(x)
    }

    /// The model's input for `seqs`.
    fn matrix(&self, seqs: &Sides, file: &Path) -> Result<Matrix, StepError> {
        let mut x = self.raw(seqs, file)?;
        if let Some(s) = &self.scaler {
            s.apply(&mut x);
        }
        Ok(x)
    }

    fn dimension(&self) -> usize {
        self.features.dimension() + self.pair.map_or(0, Features::dimension)
    }

    /// Feature names; a pair's second side's are prefixed `pair:`.
    fn names(&self) -> Vec<String> {
        let mut names = self.features.names();
        if let Some(p) = self.pair {
            names.extend(p.names().into_iter().map(|n| format!("pair:{n}")));
        }
        names
    }

    fn describe(&self) -> Value {
        let mut v = self.features.describe();
        v["alphabet"] = json!(self.alphabet.alphabet.name());
        v["alphabet_from"] = json!(self.alphabet.from);
        v["ambiguous_letters"] = json!(self.alphabet.ambiguous);
        if let Some(p) = self.pair {
            v["pair"] = p.describe();
            v["dimension"] = json!(self.dimension());
        }
        v["standardized"] = json!(self.scaler.is_some());
        v
    }

    /// `describe` plus, when standardised, each feature's training mean and scale.
    fn model_json(&self) -> Value {
        let mut v = self.describe();
        if let Some(s) = &self.scaler {
            let names = self.names();
            let by_name = |values: &[f64]| -> serde_json::Map<String, Value> {
                names
                    .iter()
                    .cloned()
                    .zip(values.iter().map(|&x| json!(x)))
                    .collect()
            };
            v["mean"] = Value::Object(by_name(&s.mean));
            v["scale"] = Value::Object(by_name(&s.scale));
        }
        v
    }
}

/// Write a baseline's predictions of the `test` table, carrying its identity and source (so
/// the report puts them beside the other scores of that table).
fn write_predictions(df: &mut DataFrame, test: &Path, out: &Path) -> Result<(), StepError> {
    write_table_with(
        df,
        &out.join("predictions.parquet"),
        &TableMeta::rows_of(test)?,
    )
}

/// Whether the sequences are nucleotides by their composition ([`detect_alphabet`]): a stray
/// letter or ambiguity code does not make DNA protein.
fn is_dna(seqs: &[String]) -> bool {
    detect_alphabet(seqs.iter().map(String::as_str))
        .0
        .is_nucleotide()
}

/// The training table's alphabet ([`decide_alphabet`]: the step's `alphabet:`, the table's
/// metadata, its letters); rows that disagree with it are an error naming them.
fn training_alphabet(
    explicit: Option<Alphabet>,
    table: &Table,
    column: &str,
    seqs: &[String],
) -> Result<Decided, StepError> {
    let meta = TableMeta::read(&table.path);
    let decided = decide_alphabet(explicit, &meta, seqs);
    check_rows(decided, seqs, &|i| table.at(i, column))?;
    Ok(decided)
}

/// A, C, G, T (or U) as 0–3, either case; anything else is `None` (N).
fn base_code(b: u8) -> Option<usize> {
    match b.to_ascii_uppercase() {
        b'A' => Some(0),
        b'C' => Some(1),
        b'G' => Some(2),
        b'T' | b'U' => Some(3),
        _ => None,
    }
}

/// One spelling per class: a whole number written `1.0` (a float column) or `1` is `1`, as
/// `eval.classify` reads them.
/// The columns a baseline reads from a table.
struct Columns<'a> {
    sequence: &'a str,
    pair: Option<&'a str>,
    label: &'a str,
    id: &'a str,
}

fn sequences(t: &Table, c: &Columns) -> Result<Sides, StepError> {
    let first = t.texts(c.sequence, "sequence", "a sequence")?;
    let pair = match c.pair {
        Some(col) => Some(t.texts(col, "pair", "the pair's second sequence")?),
        None => None,
    };
    Ok(Sides { first, pair })
}

fn ids(t: &Table, c: &Columns) -> Result<Vec<String>, StepError> {
    t.texts(c.id, "id", "an id")
}

/// Class labels, every row required.
fn class_labels(t: &Table, c: &Columns) -> Result<Vec<String>, StepError> {
    t.labels(c.label, "label")
}

/// Numeric targets, every row a finite number.
fn targets(t: &Table, c: &Columns) -> Result<Vec<f64>, StepError> {
    t.numbers(c.label, "label")
}

fn linear_error(path: &Path, e: LinearError) -> StepError {
    StepError::new(format!("{}: {e}", path.display()))
}

fn accuracy(truth: &[usize], pred: &[usize]) -> f64 {
    truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Everything a baseline reads: the training and test tables, and the validation table.
struct Inputs {
    train: Table,
    test: Table,
    valid: Option<Table>,
}

fn read_inputs(
    ctx: &StepContext,
    train: &InputPath,
    test: &InputPath,
    valid: Option<&InputPath>,
    id: &str,
) -> Result<Inputs, StepError> {
    let path = |p: &InputPath| ctx.workdir.join(p.path());
    Ok(Inputs {
        train: read_role(&path(train), id, "training")?,
        test: read_role(&path(test), id, "test")?,
        valid: valid
            .map(|v| read_role(&path(v), id, "validation"))
            .transpose()?,
    })
}

/// Cut test sequences longer than the one-hot width: say how many in the log.
fn note_cut(
    ctx: &mut StepContext,
    features: Features,
    table: &Table,
    seqs: &[String],
) -> Result<(), StepError> {
    if let Features::Onehot { width } = features {
        let cut = seqs.iter().filter(|s| s.len() > width).count();
        if cut > 0 {
            writeln!(
                ctx.log,
                "{}: {cut} sequences longer than the longest training sequence ({width}); their \
                 bases past {width} have no weights and are ignored",
                table.path.display()
            )?;
        }
    }
    Ok(())
}

/// A table's labels, predicted classes, class probabilities and accuracy.
struct Scored {
    labels: Vec<String>,
    pred: Vec<usize>,
    probs: Matrix,
    accuracy: f64,
}

/// Fit the L2 logistic regression every classifying baseline uses, logging `what` (the training
/// data in words) and how the fit went; a fit that did not converge says what to raise.
fn fit_logistic(
    ctx: &mut StepContext,
    x: &Matrix,
    y: &[usize],
    classes: usize,
    (l2, max_iter): (f64, usize),
    train: &Path,
    what: &str,
) -> Result<Logistic, StepError> {
    (ctx.status)("fitting logistic regression");
    let solver = Lbfgs {
        max_iter,
        tol: TOL,
        ..Lbfgs::default()
    };
    let model = Logistic::fit(x, y, classes, l2, &solver).map_err(|e| linear_error(train, e))?;
    let fit = &model.fit;
    writeln!(
        ctx.log,
        "{}: {what}; L-BFGS {} after {} iterations (objective {:.6}, largest gradient {:.1e})",
        train.display(),
        if fit.converged {
            "converged"
        } else {
            "did NOT converge (raise `max_iter`)"
        },
        fit.iterations,
        fit.value,
        fit.gradient
    )?;
    Ok(model)
}

/// How a logistic baseline was fitted, for `model.json` and the metrics.
fn logistic_settings(model: &Logistic, l2: f64, max_iter: usize) -> Value {
    let fit = &model.fit;
    json!({
        "type": "logistic_regression",
        "l2": l2,
        "max_iter": max_iter,
        "tol": TOL,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "stop": fit.stop,
        "objective": fit.value,
        "gradient": fit.gradient,
    })
}

fn classify(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: LogisticParams = params(ctx.with).map_err(StepError::new)?;
    let cols = Columns {
        sequence: &p.sequence,
        pair: p.pair.as_deref(),
        label: &p.label,
        id: &p.id,
    };
    let inputs = read_inputs(ctx, &p.train, &p.test, p.valid.as_ref(), &p.id)?;
    if let Some(sep) = &p.label_separator {
        return classify_multi(ctx, &p, &cols, &inputs, sep);
    }
    let train_seqs = sequences(&inputs.train, &cols)?;
    let train_labels = class_labels(&inputs.train, &cols)?;
    let classes = training_classes(&inputs.train, &train_labels, &p.label)?;
    let y_train = class_indices(
        &inputs.train,
        &train_labels,
        &classes,
        &p.label,
        &inputs.train.path,
    )?;
    let alphabet = training_alphabet(p.alphabet, &inputs.train, &p.sequence, &train_seqs.first)?;
    let (design, x_train) = Design::fit(
        (p.features, p.k, p.pair_k),
        alphabet,
        p.standardize,
        &train_seqs,
        &inputs.train.path,
    )?;
    let features = design.features;
    let model = fit_logistic(
        ctx,
        &x_train,
        &y_train,
        classes.len(),
        (p.l2, p.max_iter),
        &inputs.train.path,
        &format!(
            "{} rows, {} classes ({}), {} features",
            x_train.rows,
            classes.len(),
            classes.join(", "),
            design.dimension()
        ),
    )?;
    let train_accuracy = accuracy(&y_train, &argmax_rows(&model.probabilities(&x_train)));

    // Test (and valid): every class must be one the model knows.
    let score = |ctx: &mut StepContext, table: &Table| -> Result<Scored, StepError> {
        let seqs = sequences(table, &cols)?;
        let labels = class_labels(table, &cols)?;
        let y = class_indices(table, &labels, &classes, &p.label, &inputs.train.path)?;
        note_cut(ctx, features, table, &seqs.first)?;
        let probs = model.probabilities(&design.matrix(&seqs, &table.path)?);
        let pred = argmax_rows(&probs);
        Ok(Scored {
            accuracy: accuracy(&y, &pred),
            labels,
            pred,
            probs,
        })
    };
    let test = score(ctx, &inputs.test)?;
    let test_accuracy = test.accuracy;
    let valid_accuracy = match &inputs.valid {
        Some(t) => Some(score(ctx, t)?.accuracy),
        None => None,
    };
    writeln!(
        ctx.log,
        "accuracy: train {train_accuracy:.4}, test {test_accuracy:.4} ({} rows){}",
        test.labels.len(),
        valid_accuracy
            .map(|a| format!(", valid {a:.4}"))
            .unwrap_or_default()
    )?;

    let ids = ids(&inputs.test, &cols)?;
    let probs = &test.probs;
    let mut columns = vec![
        Column::new("id".into(), ids),
        Column::new("label".into(), &test.labels),
        Column::new(
            "prediction".into(),
            test.pred
                .iter()
                .map(|&k| classes[k].as_str())
                .collect::<Vec<_>>(),
        ),
    ];
    for (k, class) in classes.iter().enumerate() {
        let col: Vec<f64> = (0..probs.rows).map(|i| probs.row(i)[k]).collect();
        columns.push(Column::new(format!("prob_{class}").into(), col));
    }
    let mut df = DataFrame::new(probs.rows, columns)?;
    write_predictions(&mut df, &inputs.test.path, ctx.out)?;

    let names = design.names();
    let coef: serde_json::Map<String, Value> = (0..model.coef.rows)
        .map(|r| {
            let row = model.coef.row(r);
            let class = if model.coef.rows == 1 {
                &classes[1]
            } else {
                &classes[r]
            };
            (
                class.clone(),
                json!({
                    "intercept": model.intercept[r],
                    "weights": names.iter().cloned().zip(row.iter().map(|&w| json!(w))).collect::<serde_json::Map<_, _>>(),
                }),
            )
        })
        .collect();
    let settings = logistic_settings(&model, p.l2, p.max_iter);
    write_json(
        &ctx.out.join("model.json"),
        &json!({
            "features": design.model_json(),
            "model": settings,
            "classes": classes,
            "coefficients": coef,
        }),
    )?;
    let mut metrics = json!({
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "train_rows": x_train.rows,
        "test_rows": test.labels.len(),
        "classes": classes,
        "features": design.describe(),
        "model": settings,
    });
    if let Some(a) = valid_accuracy {
        metrics["valid_accuracy"] = json!(a);
    }
    write_metrics(ctx.out, &metrics)
}

/// Multi-label `baseline.classify`: one binary L2 logistic regression per label on the same
/// features, each label predicted when its probability is at least 0.5.
fn classify_multi(
    ctx: &mut StepContext,
    p: &LogisticParams,
    cols: &Columns,
    inputs: &Inputs,
    sep: &str,
) -> Result<(), StepError> {
    use super::table::{label_flags, label_sets, training_labels};
    let train_seqs = sequences(&inputs.train, cols)?;
    let train_sets = label_sets(&inputs.train, &p.label, sep)?;
    let labels = training_labels(&inputs.train, &train_sets, &p.label)?;
    let path = &inputs.train.path;
    let flags = |t: &Table| -> Result<Vec<Vec<bool>>, StepError> {
        label_flags(t, &label_sets(t, &p.label, sep)?, &labels, &p.label, path)
    };
    let y_train = flags(&inputs.train)?;
    let alphabet = training_alphabet(p.alphabet, &inputs.train, &p.sequence, &train_seqs.first)?;
    let (design, x_train) = Design::fit(
        (p.features, p.k, p.pair_k),
        alphabet,
        p.standardize,
        &train_seqs,
        path,
    )?;
    // One model per label; a label every training row has (or none) is a constant.
    let mut models = Vec::with_capacity(labels.len());
    for (k, label) in labels.iter().enumerate() {
        let y: Vec<usize> = y_train.iter().map(|f| f[k] as usize).collect();
        let positives = y.iter().sum::<usize>();
        models.push(if positives == 0 || positives == y.len() {
            Err(positives as f64 / y.len() as f64)
        } else {
            Ok(fit_logistic(
                ctx,
                &x_train,
                &y,
                2,
                (p.l2, p.max_iter),
                path,
                &format!(
                    "label `{label}`: {positives} of {} rows, {} features",
                    y.len(),
                    design.dimension()
                ),
            )?)
        });
    }
    let predict = |t: &Table| -> Result<Vec<Vec<f64>>, StepError> {
        let x = design.matrix(&sequences(t, cols)?, &t.path)?;
        let per_label: Vec<Vec<f64>> = models
            .iter()
            .map(|m| match m {
                Ok(model) => {
                    let probs = model.probabilities(&x);
                    (0..x.rows).map(|i| probs.row(i)[1]).collect()
                }
                Err(constant) => vec![*constant; x.rows],
            })
            .collect();
        Ok((0..x.rows)
            .map(|i| per_label.iter().map(|col| col[i]).collect())
            .collect())
    };
    let score =
        |t: &Table, probs: &[Vec<f64>]| -> Result<crate::score::MultiLabelScores, StepError> {
            crate::score::multi_label(&labels, &flags(t)?, probs, 0.5)
                .map_err(|e| StepError::new(format!("{}: {e}", t.path.display())))
        };
    let test_probs = predict(&inputs.test)?;
    let test = score(&inputs.test, &test_probs)?;
    let mut metrics = json!({
        "train_rows": x_train.rows,
        "test_rows": test.rows,
        "classes": labels,
        "features": design.describe(),
        "test_f1_micro": test.f1_micro,
        "test_f1_macro": test.f1_macro,
        "test_exact": test.exact,
        "test_hamming_loss": test.hamming_loss,
        "test_auroc_macro": test.auroc_macro,
        "test_per_label": test.per_label,
    });
    if let Some(v) = &inputs.valid {
        let s = score(v, &predict(v)?)?;
        metrics["valid_f1_micro"] = json!(s.f1_micro);
        metrics["valid_f1_macro"] = json!(s.f1_macro);
    }
    writeln!(
        ctx.log,
        "test: micro F1 {:.4}, macro F1 {:.4}, exact {:.4} ({} rows, {} labels)",
        test.f1_micro,
        test.f1_macro,
        test.exact,
        test.rows,
        labels.len()
    )?;
    let truth: Vec<String> = label_sets(&inputs.test, &p.label, sep)?
        .iter()
        .map(|s| s.join(";"))
        .collect();
    let mut columns = vec![
        Column::new("id".into(), ids(&inputs.test, cols)?),
        Column::new("label".into(), truth),
        Column::new(
            "prediction".into(),
            crate::score::predicted_sets(&labels, &test_probs, 0.5),
        ),
    ];
    for (k, label) in labels.iter().enumerate() {
        let col: Vec<f64> = test_probs.iter().map(|r| r[k]).collect();
        columns.push(Column::new(format!("prob_{label}").into(), col));
    }
    let mut df = DataFrame::new(test_probs.len(), columns)?;
    write_predictions(&mut df, &inputs.test.path, ctx.out)?;
    let names = design.names();
    let per_label: serde_json::Map<String, Value> = labels
        .iter()
        .zip(&models)
        .map(|(label, m)| {
            let v = match m {
                Ok(model) => json!({
                    "intercept": model.intercept[0],
                    "weights": names.iter().cloned().zip(model.coef.row(0).iter().map(|&w| json!(w))).collect::<serde_json::Map<_, _>>(),
                }),
                Err(constant) => json!({ "constant": constant }),
            };
            (label.clone(), v)
        })
        .collect();
    write_json(
        &ctx.out.join("model.json"),
        &json!({ "features": design.model_json(), "labels": labels, "coefficients": per_label }),
    )?;
    write_metrics(ctx.out, &metrics)
}

fn regress(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: RidgeParams = params(ctx.with).map_err(StepError::new)?;
    let cols = Columns {
        sequence: &p.sequence,
        pair: None,
        label: &p.label,
        id: &p.id,
    };
    let inputs = read_inputs(ctx, &p.train, &p.test, p.valid.as_ref(), &p.id)?;
    let train_seqs = sequences(&inputs.train, &cols)?;
    let y_train = targets(&inputs.train, &cols)?;
    let alphabet = training_alphabet(p.alphabet, &inputs.train, &p.sequence, &train_seqs.first)?;
    let (design, x_train) = Design::fit(
        (p.features, p.k, None),
        alphabet,
        p.standardize,
        &train_seqs,
        &inputs.train.path,
    )?;
    let features = design.features;
    (ctx.status)("fitting ridge regression");
    let model =
        Ridge::fit(&x_train, &y_train, p.alpha).map_err(|e| linear_error(&inputs.train.path, e))?;
    let train_rmse = rmse(&y_train, &model.predict(&x_train));
    let predict =
        |ctx: &mut StepContext, table: &Table| -> Result<(Vec<f64>, Vec<f64>), StepError> {
            let seqs = sequences(table, &cols)?;
            let y = targets(table, &cols)?;
            note_cut(ctx, features, table, &seqs.first)?;
            Ok((y, model.predict(&design.matrix(&seqs, &table.path)?)))
        };
    let (y_test, pred) = predict(ctx, &inputs.test)?;
    let test_rmse = rmse(&y_test, &pred);
    let valid_rmse = match &inputs.valid {
        Some(t) => {
            let (y, pv) = predict(ctx, t)?;
            Some(rmse(&y, &pv))
        }
        None => None,
    };
    writeln!(
        ctx.log,
        "{}: {} rows, {} features; RMSE: train {train_rmse:.4}, test {test_rmse:.4} ({} rows){}",
        inputs.train.path.display(),
        x_train.rows,
        features.dimension(),
        y_test.len(),
        valid_rmse
            .map(|a| format!(", valid {a:.4}"))
            .unwrap_or_default()
    )?;
    let ids = ids(&inputs.test, &cols)?;
    let mut df = DataFrame::new(
        ids.len(),
        vec![
            Column::new("id".into(), ids),
            Column::new("label".into(), y_test.clone()),
            Column::new("prediction".into(), pred),
        ],
    )?;
    write_predictions(&mut df, &inputs.test.path, ctx.out)?;
    let settings = json!({ "type": "ridge", "alpha": p.alpha });
    let weights: serde_json::Map<String, Value> = features
        .names()
        .into_iter()
        .zip(model.coef.iter().map(|&w| json!(w)))
        .collect();
    write_json(
        &ctx.out.join("model.json"),
        &json!({
            "features": design.model_json(),
            "model": settings,
            "intercept": model.intercept,
            "weights": weights,
        }),
    )?;
    let mut metrics = json!({
        "train_rmse": train_rmse,
        "test_rmse": test_rmse,
        "train_rows": x_train.rows,
        "test_rows": y_test.len(),
        "features": design.describe(),
        "model": settings,
    });
    if let Some(r) = valid_rmse {
        metrics["valid_rmse"] = json!(r);
    }
    write_metrics(ctx.out, &metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn on sequences featurised in Python (scripts/make_baseline_reference.py).
    fn reference() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/baselines/reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn strings(v: &Value) -> Vec<String> {
        serde_json::from_value(v.clone()).unwrap()
    }

    /// Features, k, standardised.
    fn spec(name: &str) -> (FeatureKind, Option<usize>, bool) {
        match name {
            "onehot" => (FeatureKind::Onehot, None, false),
            "kmer2" => (FeatureKind::Kmer, Some(2), false),
            "kmer2_standardized" => (FeatureKind::Kmer, Some(2), true),
            other => panic!("unknown features {other}"),
        }
    }

    fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs sklearn {w}");
        }
    }

    #[test]
    fn features_match_the_python_reference() {
        let r = reference();
        for c in r["features"].as_array().unwrap() {
            let (kind, k, _) = spec(c["features"].as_str().unwrap());
            let width = c["width"].as_u64().unwrap() as usize;
            let f = match kind {
                FeatureKind::Onehot => Features::Onehot { width },
                FeatureKind::Kmer => Features::Kmer { k: k.unwrap() },
            };
            let x = f.matrix(&strings(&c["sequences"]), Path::new("t")).unwrap();
            let want: Vec<Vec<f64>> = serde_json::from_value(c["x"].clone()).unwrap();
            assert_eq!(x, Matrix::from_rows(&want), "{}", c["features"]);
            assert_eq!(f.names().len(), f.dimension());
        }
        assert_eq!(Features::Kmer { k: 2 }.names()[..3], ["AA", "AC", "AG"]);
        assert_eq!(Features::Onehot { width: 2 }.names()[5..7], ["2A", "2C"]);
    }

    #[test]
    fn baselines_on_sequences_match_sklearn() {
        let r = reference();
        let solver = Lbfgs {
            tol: TOL,
            ..Lbfgs::default()
        };
        assert_eq!(r["sequences"].as_array().unwrap().len(), 3);
        for c in r["sequences"].as_array().unwrap() {
            let name = c["features"].as_str().unwrap();
            let (kind, k, standardize) = spec(name);
            let train = strings(&c["train"]);
            let test = strings(&c["test"]);
            let one = |first: Vec<String>| Sides { first, pair: None };
            let alphabet = decide_alphabet(None, &TableMeta::default(), &train);
            let (design, x) = Design::fit(
                (kind, k, None),
                alphabet,
                standardize,
                &one(train),
                Path::new("t"),
            )
            .unwrap();
            let xt = design.matrix(&one(test), Path::new("test")).unwrap();
            let labels = strings(&c["labels"]);
            let classes = crate::score::sorted_classes(labels.iter().map(String::as_str));
            assert_eq!(classes, strings(&c["classes"]));
            let y: Vec<usize> = labels
                .iter()
                .map(|l| classes.iter().position(|c| c == l).unwrap())
                .collect();
            let m = Logistic::fit(&x, &y, classes.len(), 1.0, &solver).unwrap();
            assert!(m.fit.converged, "{name}: {:?}", m.fit);
            let want: Vec<Vec<f64>> = serde_json::from_value(c["probabilities"].clone()).unwrap();
            close(
                &format!("{name} probabilities"),
                &m.probabilities(&xt).data,
                &Matrix::from_rows(&want).data,
                1e-6,
            );
            let targets: Vec<f64> = serde_json::from_value(c["targets"].clone()).unwrap();
            let ridge = Ridge::fit(&x, &targets, 1.0).unwrap();
            let want: Vec<f64> = serde_json::from_value(c["ridge_predictions"].clone()).unwrap();
            close(&format!("{name} ridge"), &ridge.predict(&xt), &want, 1e-9);
        }
    }

    #[test]
    fn pair_sides_are_featurised_apart_and_side_by_side() {
        let proteins = ["MKKA".to_string(), "MAXW".to_string()];
        let f = Features::fit_pair(Some(3), None, &proteins).unwrap();
        assert_eq!(f, Features::Residues { k: 1 });
        let dna = ["ACGT".to_string()];
        assert_eq!(
            Features::fit_pair(Some(3), None, &dna).unwrap(),
            Features::Kmer { k: 3 }
        );
        assert!(
            Features::fit_pair(None, Some(4), &proteins)
                .unwrap_err()
                .contains("up to 3")
        );
        let two = Features::Residues { k: 2 };
        assert_eq!(two.dimension(), 400);
        let names = two.names();
        let mut row = vec![0.0; 400];
        two.row("MKKA", &mut row);
        // MK, KK, KA over 4 residues; X breaks a run.
        for (kmer, want) in [("MK", 0.25), ("KK", 0.25), ("KA", 0.25), ("AM", 0.0)] {
            let at = names.iter().position(|n| n == kmer).unwrap();
            assert_eq!(row[at], want, "{kmer}");
        }
        let mut row = vec![0.0; 400];
        two.row("MAXW", &mut row);
        assert_eq!(row.iter().filter(|&&v| v > 0.0).count(), 1);
        let sides = Sides {
            first: vec!["ACGTAC".into(), "GGGGGG".into()],
            pair: Some(proteins.to_vec()),
        };
        let alphabet = decide_alphabet(None, &TableMeta::default(), &sides.first);
        let (design, x) = Design::fit(
            (FeatureKind::Kmer, Some(1), None),
            alphabet,
            false,
            &sides,
            Path::new("t"),
        )
        .unwrap();
        assert_eq!((x.rows, x.cols), (2, 4 + 20));
        assert_eq!(design.names()[4], "pair:A");
        assert_eq!(x.row(1)[2], 1.0); // G in GGGGGG
        assert_eq!(x.row(0)[4], 0.25); // A in MKKA
    }

    #[test]
    fn labels_and_bases_have_one_spelling() {
        assert_eq!(super::super::table::class_label("1.0"), "1");
        assert_eq!(super::super::table::class_label(" ei "), "ei");
        assert_eq!(super::super::table::class_label("0.5"), "0.5");
        assert_eq!(base_code(b'u'), Some(3));
        assert_eq!(base_code(b'R'), None);
    }

    #[test]
    fn bad_tables_name_file_row_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let cols = Columns {
            sequence: "sequence",
            pair: None,
            label: "label",
            id: "id",
        };
        let train = d.path().join("train.csv");
        std::fs::write(&train, "id,sequence,label\na,ACGT,x\nb,GGCC,y\n").unwrap();
        let test = d.path().join("test.csv");
        std::fs::write(&test, "id,sequence,label\nc,ACGT,x\nd,GGCC,z\n").unwrap();
        let t = read_role(&test, "id", "test").unwrap();
        let labels = class_labels(&t, &cols).unwrap();
        let e = class_indices(&t, &labels, &["x".into(), "y".into()], "label", &train)
            .unwrap_err()
            .message;
        assert!(
            e.contains("test.csv: row 2 (line 3, id `d`), column `label`: class `z` does not occur in the training table")
                && e.contains("train.csv (its classes: x, y)")
                && e.contains("stratify: label"),
            "{e}"
        );
        std::fs::write(
            &test,
            "id,sequence,label\nc,ACGT,1.5\nd,GGCC,-2\ne,AAA,n/a\n",
        )
        .unwrap();
        let t = read_role(&test, "id", "test").unwrap();
        let e = targets(&t, &cols).unwrap_err().message;
        assert!(
            e.contains("test.csv: row 3 (line 4, id `e`), column `label`: `n/a` is not a number"),
            "{e}"
        );
        std::fs::write(&test, "id,sequence,label\nc,,1\n").unwrap();
        let t = read_role(&test, "id", "test").unwrap();
        let e = sequences(&t, &cols).unwrap_err().message;
        assert!(
            e.contains("row 1 (line 2, id `c`), column `sequence`: empty"),
            "{e}"
        );
        let e = t
            .texts("seq", "sequence", "a sequence")
            .unwrap_err()
            .message;
        assert!(
            e.contains("no column `seq`; the columns are: id, sequence, label; set `sequence:`"),
            "{e}"
        );
        std::fs::write(&test, "id,sequence,label\n").unwrap();
        let e = read_role(&test, "id", "test").err().unwrap().message;
        assert!(e.contains("test.csv: the test table has no rows"), "{e}");
    }

    #[test]
    fn checks_parameters() {
        let check = |v: Value| (CLASSIFY.check)(&v);
        assert!(check(json!({"train": "a", "test": "b"})).is_ok());
        assert!(check(json!({"train": "a", "test": "b", "features": "kmer", "k": 4})).is_ok());
        let e = check(json!({"train": "a", "test": "b", "k": 4})).unwrap_err();
        assert!(e.contains("`k` applies to `features: kmer`"), "{e}");
        let e = check(json!({"train": "a", "test": "b", "features": "kmer", "k": 9})).unwrap_err();
        assert!(e.contains("between 1 and 6"), "{e}");
        let e = check(json!({"train": "a", "test": "b", "l2": 0})).unwrap_err();
        assert!(e.contains("`l2` is 0"), "{e}");
        let e = check(json!({"train": "a", "test": "b", "label": "id"})).unwrap_err();
        assert!(e.contains("`label` and `id` are both `id`"), "{e}");
        let e = (REGRESS.check)(&json!({"train": "a", "test": "b", "alpha": -1})).unwrap_err();
        assert!(e.contains("`alpha` is -1"), "{e}");
        assert!((REGRESS.check)(&json!({"train": "a", "test": "b", "l2": 1})).is_err());
    }
}
