//! `baseline.per-base`: what a token-classification model has to beat on per-base labels (one
//! label character per base: a dot-bracket structure, a DSSP state). Every base is one row of
//! a multinomial L2 logistic regression whose features are the one-hot bases of a window
//! around it (`window` bases on each side; A, C, G, T, N columns per offset, all zero past the
//! ends of the sequence). It knows nothing of pairing or of its position in the molecule, so a
//! model that learns structure shows as the distance from it. Predictions are label strings,
//! scored base by base as `model.finetune` scores token-cls.

use std::path::Path;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{
    base_code, check_penalty, fit_logistic, logistic_settings, max_iter, one, read_inputs,
};
use crate::linear::{Matrix, argmax_rows};
use crate::steps::table::{LocatedTable, base_classes, label_characters, label_strings};
use crate::steps::{
    InputPath, StepContext, StepError, StepKind, params, score::report_per_base, write_json,
    write_metrics,
};

/// Parameters of `baseline.per-base`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PerBaseParams {
    /// The table to fit on (parquet, CSV, TSV, JSON lines, JSON).
    train: InputPath,
    /// The table to predict; its rows make `predictions.parquet`.
    test: InputPath,
    /// A validation table, scored into the metrics (`valid_accuracy`, per base).
    valid: Option<InputPath>,
    /// Bases on each side of the predicted base (the window is `2 × window + 1` bases).
    #[serde(default = "window")]
    window: usize,
    /// Column of sequences.
    #[serde(default = "crate::steps::table::sequence_column")]
    sequence: String,
    /// Column of label strings, one character per base.
    #[serde(default = "crate::steps::table::label_column")]
    label: String,
    /// Column of row ids, copied into the predictions.
    #[serde(default = "crate::steps::table::id_column")]
    id: String,
    /// L2 penalty on the weights (scikit-learn's `1 / C`).
    #[serde(default = "one")]
    l2: f64,
    /// L-BFGS iterations at most (the fit stops earlier once converged).
    #[serde(default = "max_iter")]
    max_iter: usize,
}

fn window() -> usize {
    7
}

/// Widest window: 50 bases each side (505 features).
const MAX_WINDOW: usize = 50;
/// Largest feature matrix built (values): 64 Mi f64 = 512 MiB.
const MAX_VALUES: usize = 1 << 26;

pub static PER_BASE: StepKind = StepKind {
    name: "baseline.per-base",
    version: 2,
    summary: "L2 logistic regression per base on a one-hot window of the bases around it, for per-base labels (one character per base); writes `predictions` (id, label, prediction as label strings) and `model`",
    outputs: &[
        ("predictions", "predictions.parquet"),
        ("model", "model.json"),
    ],
    schema: |g| g.subschema_for::<PerBaseParams>(),
    check: |with| {
        let p = params::<PerBaseParams>(with)?;
        if p.window > MAX_WINDOW {
            return Err(format!(
                "`window` is {}; at most {MAX_WINDOW} bases on each side",
                p.window
            ));
        }
        if p.sequence == p.label || p.sequence == p.id || p.label == p.id {
            return Err("`sequence`, `label` and `id` must name three different columns".into());
        }
        check_penalty("l2", p.l2)?;
        if p.max_iter == 0 {
            return Err("`max_iter` must be at least 1".into());
        }
        Ok(())
    },
    run: per_base,
};

/// The window features of every base of `seqs`, one row per base, sequences one after another.
fn window_matrix(seqs: &[String], window: usize, file: &Path) -> Result<Matrix, StepError> {
    let width = 2 * window + 1;
    let d = width * 5;
    let n: usize = seqs.iter().map(String::len).sum();
    if n.saturating_mul(d) > MAX_VALUES {
        return Err(StepError::new(format!(
            "{}: {n} bases × {d} features is too large a matrix for this baseline; use a \
             smaller `window` or fewer rows",
            file.display()
        )));
    }
    let mut x = Matrix::zeros(n, d);
    let mut i = 0;
    for s in seqs {
        let codes: Vec<Option<usize>> = s.bytes().map(base_code).collect();
        for centre in 0..codes.len() {
            let row = x.row_mut(i);
            for (o, slot) in row.chunks_mut(5).enumerate() {
                let Some(j) = (centre + o).checked_sub(window) else {
                    continue;
                };
                if let Some(code) = codes.get(j) {
                    slot[code.unwrap_or(4)] = 1.0;
                }
            }
            i += 1;
        }
    }
    Ok(x)
}

/// Split per-base predicted classes back into one label string per sequence.
fn label_strings_of(pred: &[usize], seqs: &[String], classes: &[String]) -> Vec<String> {
    let mut it = pred.iter();
    seqs.iter()
        .map(|s| {
            (0..s.len())
                .map(|_| classes[*it.next().expect("a prediction per base")].as_str())
                .collect()
        })
        .collect()
}

fn per_base(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: PerBaseParams = params(ctx.with).map_err(StepError::new)?;
    let inputs = read_inputs(ctx, &p.train, &p.test, p.valid.as_ref(), &p.id)?;
    let train = &inputs.train;
    let (train_labels, train_seqs) = label_strings(train, &p.label, &p.sequence)?;
    for (i, s) in train_seqs.iter().enumerate() {
        if !s.is_ascii() {
            return Err(StepError::new(format!(
                "{}: the sequence is not plain letters (A, C, G, T, N …)",
                train.at(i, &p.sequence)
            )));
        }
    }
    let classes = label_characters(train, &train_labels, &p.label)?;
    let y: Vec<usize> = base_classes(train, &train_labels, &classes, &p.label, &train.path)?
        .into_iter()
        .flatten()
        .map(|k| k as usize)
        .collect();
    let x = window_matrix(&train_seqs, p.window, &train.path)?;
    let model = fit_logistic(
        ctx,
        &x,
        &y,
        classes.len(),
        (p.l2, p.max_iter),
        &train.path,
        &format!(
            "{} sequences, {} bases, {} classes ({}), window ±{} ({} features)",
            train_seqs.len(),
            x.rows,
            classes.len(),
            classes.join(" "),
            p.window,
            x.cols
        ),
    )?;

    // Every table predicted by the same featuriser; a label the training table lacks is an
    // error naming the row.
    let predict = |table: &LocatedTable| -> Result<(Vec<String>, Vec<String>), StepError> {
        let (labels, seqs) = label_strings(table, &p.label, &p.sequence)?;
        base_classes(table, &labels, &classes, &p.label, &train.path)?;
        let pred = argmax_rows(&model.probabilities(&window_matrix(&seqs, p.window, &table.path)?));
        Ok((labels, label_strings_of(&pred, &seqs, &classes)))
    };
    let mut metrics = serde_json::Map::new();
    let score = |truth: &[String], pred: &[String], table: &LocatedTable| {
        crate::score::per_base(truth, pred)
            .map_err(|e| StepError::new(format!("{}: {e}", table.path.display())))
    };
    let train_pred = label_strings_of(
        &argmax_rows(&model.probabilities(&x)),
        &train_seqs,
        &classes,
    );
    metrics.insert(
        "train_accuracy".into(),
        score(&train_labels, &train_pred, train)?
            .bases
            .accuracy
            .into(),
    );
    if let Some(valid) = &inputs.valid {
        let (truth, pred) = predict(valid)?;
        metrics.insert(
            "valid_accuracy".into(),
            score(&truth, &pred, valid)?.bases.accuracy.into(),
        );
    }
    let (truth, pred) = predict(&inputs.test)?;
    write!(ctx.log, "test: ")?;
    report_per_base(
        ctx,
        &score(&truth, &pred, &inputs.test)?,
        &mut metrics,
        "test_",
    )?;

    let ids = inputs.test.texts(&p.id, "id", "an id")?;
    let mut df = DataFrame::new(
        ids.len(),
        vec![
            Column::new("id".into(), ids),
            Column::new("label".into(), &truth),
            Column::new("prediction".into(), &pred),
        ],
    )?;
    super::write_predictions(&mut df, &inputs.test.path, ctx.out)?;

    let settings = logistic_settings(&model, p.l2, p.max_iter);
    let offsets: Vec<String> = (0..2 * p.window + 1)
        .flat_map(|o| {
            let o = o as i64 - p.window as i64;
            "ACGTN".chars().map(move |b| format!("{o:+}{b}"))
        })
        .collect();
    let coef: serde_json::Map<String, serde_json::Value> = (0..model.coef.rows)
        .map(|r| {
            let class = if model.coef.rows == 1 {
                &classes[1]
            } else {
                &classes[r]
            };
            let weights: serde_json::Map<String, serde_json::Value> = offsets
                .iter()
                .cloned()
                .zip(model.coef.row(r).iter().map(|&w| json!(w)))
                .collect();
            (
                class.clone(),
                json!({ "intercept": model.intercept[r], "weights": weights }),
            )
        })
        .collect();
    write_json(
        &ctx.out.join("model.json"),
        &json!({
            "features": { "kind": "window", "window": p.window, "dimension": x.cols },
            "model": settings,
            "classes": classes,
            "coefficients": coef,
        }),
    )?;
    metrics.insert("train_bases".into(), x.rows.into());
    metrics.insert("classes".into(), json!(classes));
    metrics.insert("window".into(), p.window.into());
    metrics.insert("model".into(), settings);
    write_metrics(ctx.out, &serde_json::Value::Object(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_one_hot_per_offset_and_empty_past_the_ends() {
        let x = window_matrix(&["ACN".into(), "G".into()], 1, Path::new("t.csv")).unwrap();
        assert_eq!((x.rows, x.cols), (4, 15));
        // Base A: nothing before it, A itself, C after.
        assert_eq!(x.row(0)[..5], [0.0; 5]);
        assert_eq!(x.row(0)[5..10], [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(x.row(0)[10..], [0.0, 1.0, 0.0, 0.0, 0.0]);
        // Base N: C before it, N itself, nothing after (the next sequence is not read).
        assert_eq!(x.row(2)[5..10], [0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(x.row(2)[10..], [0.0; 5]);
        // A sequence of one base sees only itself.
        assert_eq!(x.row(3).iter().sum::<f64>(), 1.0);
        assert_eq!(x.row(3)[7], 1.0);
    }

    #[test]
    fn predictions_split_back_into_one_string_per_sequence() {
        let classes = ["(".to_string(), ")".into(), ".".into()];
        let s = label_strings_of(&[0, 2, 1, 2], &["ACG".into(), "T".into()], &classes);
        assert_eq!(s, vec!["(.)".to_string(), ".".into()]);
    }
}
