//! Scores of predictions against the truth, defined exactly as scikit-learn and SciPy define
//! them, so a number in `metrics.json` means what a reader of the tutorial expects.
//!
//! - [`classification`]: accuracy, balanced accuracy, precision / recall / F1 (macro and per
//!   class), MCC, AUROC and AUPRC (one-vs-rest), confusion matrix.
//! - [`regression`]: MSE, RMSE (the real root: the tutorial printed MSE as "rmse"), MAE,
//!   Pearson, Spearman, R².
//! - [`multi_label`]: any number of labels per row: micro / macro F1, subset accuracy, Hamming
//!   loss, AUROC per label.
//! - [`per_base`]: one label character per base, scored base by base, and whether predicted
//!   dot-bracket structures pair up.
//! - [`text_scores`]: generated text against the real text, SQuAD's exact match and token F1.
//! - [`bootstrap_ci`]: a seeded 95 % percentile interval for any metric, so a CI gate can tell
//!   a regression from noise.
//!
//! A score that sklearn or SciPy cannot define (NaN there) is `None` here, `null` in JSON.
//! `scripts/make_score_reference.py` computes every score with sklearn/SciPy on fixed vectors
//! (ties, a class absent, constant predictions) into `tests/fixtures/scores/reference.json`,
//! and the tests here match it within 1e-9.

mod bootstrap;
mod classify;
mod multi_label;
mod per_base;
mod regress;
#[cfg(test)]
mod tests;
mod text;

pub use bootstrap::{Interval, bootstrap_ci, percentile};
pub use classify::{
    ClassScore, ClassScores, Confusion, Ranking, auroc, average_precision, classification,
    sorted_classes,
};
pub use multi_label::{LabelScore, MultiLabelScores, multi_label, predicted_sets};
pub use per_base::{PerBaseScores, brackets_balance, per_base};
pub use regress::{
    RegressionScores, average_ranks, mae, mse, pearson, r2, regression, rmse, spearman,
};
pub use text::{
    ChoiceScores, TextScores, choice_scores, exact_match, normalized_words, text_scores, token_f1,
};

/// Why scores could not be computed: input a caller can fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// Nothing to score: every metric would be undefined.
    #[error("no rows to score")]
    Empty,
    /// The vectors describe different numbers of rows.
    #[error("{what} has {got} values but there are {expected} true values")]
    LengthMismatch {
        what: String,
        expected: usize,
        got: usize,
    },
    /// A NaN or infinite value where a number is needed (`row` counts from 1).
    #[error("{what}, row {row}: {value} is not a finite number")]
    NotFinite {
        what: String,
        row: usize,
        value: f64,
    },
    /// One-vs-rest AUROC/AUPRC with more than two classes needs every class's probability.
    #[error(
        "no probability for class `{class}`: with more than two classes every class needs one (classes: {classes})"
    )]
    MissingProbabilities { class: String, classes: String },
    /// The same class was given two probability columns.
    #[error("class `{0}` has two probability columns")]
    DuplicateProbabilities(String),
    /// `positive` names a class the rows do not have.
    #[error("the positive class `{class}` is not one of the classes ({classes})")]
    UnknownPositive { class: String, classes: String },
    /// `positive` only means something with two classes.
    #[error(
        "a positive class only applies to two classes, but there are {0}; AUROC/AUPRC are one-vs-rest macro averages then"
    )]
    PositiveWithManyClasses(usize),
    /// A bootstrap needs at least one resample.
    #[error("the bootstrap needs at least one resample")]
    NoResamples,
}

/// Length check shared by the scores: `got` values of `what` against `expected` rows.
fn same_length(what: &str, expected: usize, got: usize) -> Result<(), ScoreError> {
    if expected != got {
        return Err(ScoreError::LengthMismatch {
            what: what.to_string(),
            expected,
            got,
        });
    }
    Ok(())
}

/// Every value finite, or the first that is not.
fn finite(what: &str, values: &[f64]) -> Result<(), ScoreError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(ScoreError::NotFinite {
            what: what.to_string(),
            row: i + 1,
            value: values[i],
        }),
        None => Ok(()),
    }
}
