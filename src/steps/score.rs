//! `eval.classify`, `eval.regress` and `eval.text`: every score of a predictions table, by the same code
//! whatever made the predictions (a fine-tuned model, a baseline, a shell step), so results
//! compare. The scores themselves live in [`crate::score`].

use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::table::{LocatedTable, class_label};
use super::{InputPath, StepContext, StepError, StepKind, params, plot, write_metrics};
use crate::score::{self, Interval};

/// A class label written in YAML: text or a whole number (`positive: 1`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum ClassLabel {
    Number(i64),
    Text(String),
}

impl ClassLabel {
    fn text(&self) -> String {
        match self {
            ClassLabel::Number(n) => n.to_string(),
            ClassLabel::Text(s) => class_label(s),
        }
    }
}

/// Parameters of `eval.classify`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClassifyParams {
    /// The predictions table (parquet, CSV, TSV, JSON lines): one row per example.
    predictions: InputPath,
    /// Column of true labels.
    #[serde(default = "label")]
    label: String,
    /// Column of predicted labels.
    #[serde(default = "prediction")]
    prediction: String,
    /// Columns named this prefix + a class (`prob_promoter`) hold that class's probability or
    /// score, for AUROC and AUPRC; with two classes one column is enough.
    #[serde(default = "prob_prefix")]
    probabilities: String,
    /// With two classes, the class AUROC/AUPRC are about (default: the later one in sorted
    /// order, `1` for 0/1 labels).
    positive: Option<ClassLabel>,
    /// Resamples for the 95 % bootstrap interval of accuracy (0: no interval).
    #[serde(default = "resamples")]
    bootstrap: usize,
    /// Seed of the bootstrap: same seed, same interval.
    #[serde(default = "seed")]
    seed: u64,
    /// Accuracy per value of a column of the scored rows' own table (matched by `id`), e.g.
    /// `{table: <test split>, column: kind}` for data.pairs' match / other / substituted.
    by: Option<By>,
}

/// A column that breaks accuracy down, in the table the predictions were made from.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct By {
    /// The table holding the column, one row per prediction id.
    table: InputPath,
    /// The column to break the scores down by.
    column: String,
    /// Column holding the prediction ids in that table.
    #[serde(default = "super::table::id_column")]
    id: String,
}

/// Parameters of `eval.regress`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RegressParams {
    /// The predictions table (parquet, CSV, TSV, JSON lines): one row per example.
    predictions: InputPath,
    /// Column of true values (numbers).
    #[serde(default = "label")]
    label: String,
    /// Column of predicted values (numbers).
    #[serde(default = "prediction")]
    prediction: String,
    /// Resamples for the 95 % bootstrap interval of RMSE (0: no interval).
    #[serde(default = "resamples")]
    bootstrap: usize,
    /// Seed of the bootstrap: same seed, same interval.
    #[serde(default = "seed")]
    seed: u64,
}

/// Parameters of `eval.text`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TextParams {
    /// The predictions table: one row per example, the real text and the generated one.
    predictions: InputPath,
    /// Column of the real texts.
    #[serde(default = "label")]
    label: String,
    /// Column of the generated texts (greedy decoding, or a baseline's answer).
    #[serde(default = "prediction")]
    prediction: String,
    /// More generated columns scored the same way, each as `<column>_exact_match` and
    /// `<column>_token_f1` (model.finetune's `sampled`).
    #[serde(default)]
    also: Vec<String>,
    /// Resamples for the 95 % bootstrap interval of token F1 (0: no interval).
    #[serde(default = "resamples")]
    bootstrap: usize,
    /// Seed of the bootstrap: same seed, same interval.
    #[serde(default = "seed")]
    seed: u64,
    /// The answers are classes (instruction tuning's labels): also `accuracy` (exactly one's
    /// own class, with its bootstrap interval), `f1_macro`, `per_class_f1`, and
    /// `invalid_rate` (answers that are no class at all, counted wrong).
    #[serde(default)]
    choices: bool,
    /// A column naming each row's task (`data.instruct`'s `task`): with `choices`, the
    /// scores of each task too, as `<task>_accuracy`, `<task>_f1_macro`, …
    group: Option<String>,
}

fn label() -> String {
    "label".into()
}
fn prediction() -> String {
    "prediction".into()
}
fn prob_prefix() -> String {
    "prob_".into()
}
pub(super) fn resamples() -> usize {
    1000
}
fn seed() -> u64 {
    42
}

/// At most this many resamples: beyond it the interval no longer moves, only the time.
pub(super) const MAX_RESAMPLES: usize = 100_000;

fn check_common(label: &str, prediction: &str, bootstrap: usize) -> Result<(), String> {
    if label == prediction {
        return Err(format!(
            "`label` and `prediction` are both `{label}`; they must name different columns"
        ));
    }
    if bootstrap > MAX_RESAMPLES {
        return Err(format!(
            "`bootstrap` is {bootstrap}; at most {MAX_RESAMPLES} resamples (1000 is plenty for a 95 % interval)"
        ));
    }
    Ok(())
}

pub static CLASSIFY: StepKind = StepKind {
    name: "eval.classify",
    version: 2,
    summary: "accuracy (with a bootstrap 95 % interval), balanced accuracy, precision/recall/F1, MCC, AUROC, AUPRC and a confusion matrix of a predictions table",
    outputs: &[("confusion", "confusion.svg")],
    schema: |g| g.subschema_for::<ClassifyParams>(),
    check: |with| {
        let p = params::<ClassifyParams>(with)?;
        check_common(&p.label, &p.prediction, p.bootstrap)?;
        if p.probabilities.is_empty() {
            return Err("`probabilities` is the prefix of the probability columns (`prob_`); it cannot be empty".into());
        }
        Ok(())
    },
    run: classify,
};

pub static REGRESS: StepKind = StepKind {
    name: "eval.regress",
    version: 2,
    summary: "MSE, RMSE (with a bootstrap 95 % interval), MAE, Pearson, Spearman and R² of a predictions table",
    outputs: &[],
    schema: |g| g.subschema_for::<RegressParams>(),
    check: |with| {
        let p = params::<RegressParams>(with)?;
        check_common(&p.label, &p.prediction, p.bootstrap)
    },
    run: regress,
};

pub static TEXT: StepKind = StepKind {
    name: "eval.text",
    version: 2,
    summary: "exact match and token F1 (SQuAD's normalisation, with a bootstrap 95 % interval) of generated texts against the real ones",
    outputs: &[],
    schema: |g| g.subschema_for::<TextParams>(),
    check: |with| {
        let p = params::<TextParams>(with)?;
        check_common(&p.label, &p.prediction, p.bootstrap)
    },
    run: text,
};

fn text(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: TextParams = params(ctx.with).map_err(StepError::new)?;
    let table = read_predictions(&ctx.workdir.join(p.predictions.path()))?;
    let truth = table.texts(&p.label, "label", "the real text")?;
    let mut metrics = serde_json::Map::new();
    for (n, column) in std::iter::once(&p.prediction).chain(&p.also).enumerate() {
        let pred = table.texts(column, "prediction", "a generated text (empty is fine)")?;
        let s = score::text_scores(&pred, &truth);
        let f1: Vec<f64> = pred
            .iter()
            .zip(&truth)
            .map(|(a, b)| score::token_f1(a, b))
            .collect();
        let ci = interval(&f1, p.bootstrap, p.seed, |rows| {
            Some(rows.iter().sum::<f64>() / rows.len() as f64)
        })?;
        writeln!(
            ctx.log,
            "{}: {} rows: exact match {:.4}, token F1 {:.4}{}",
            column,
            s.n,
            s.exact_match,
            s.token_f1,
            describe(ci)
        )?;
        let prefix = if n == 0 {
            String::new()
        } else {
            format!("{column}_")
        };
        let mut m = json!({
            format!("{prefix}exact_match"): s.exact_match,
            format!("{prefix}token_f1"): s.token_f1,
        });
        if n == 0 {
            add_interval(&mut m, "token_f1", ci, p.bootstrap, p.seed);
        } else if p.bootstrap > 0 {
            // `bootstrap` (resamples, seed) is the first column's; the interval is alike.
            m[format!("{prefix}token_f1_ci95")] = json!(ci);
        }
        metrics.extend(m.as_object().expect("object").clone());
    }
    if p.choices {
        let pred = table.texts(
            &p.prediction,
            "prediction",
            "a generated text (empty is fine)",
        )?;
        let mut groups: Vec<(String, Vec<usize>)> =
            vec![(String::new(), (0..truth.len()).collect())];
        if let Some(g) = &p.group {
            let names = table.texts(g, "group", "a task name")?;
            let mut by: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
            for (i, n) in names.into_iter().enumerate() {
                by.entry(n).or_default().push(i);
            }
            groups.extend(by);
        }
        for (name, rows) in groups {
            let pick = |v: &[String]| rows.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
            let s = score::choice_scores(&pick(&pred), &pick(&truth));
            let prefix = if name.is_empty() {
                String::new()
            } else {
                format!("{name}_")
            };
            let hits: Vec<f64> = s.correct.iter().map(|&c| f64::from(u8::from(c))).collect();
            let ci = interval(&hits, p.bootstrap, p.seed, |rows| {
                Some(rows.iter().sum::<f64>() / rows.len() as f64)
            })?;
            writeln!(
                ctx.log,
                "{}{} rows as classes: accuracy {:.4}{}, macro F1 {:.4}, {:.1} % answers no class",
                if name.is_empty() {
                    String::new()
                } else {
                    format!("{name}: ")
                },
                rows.len(),
                s.accuracy,
                describe(ci),
                s.f1_macro,
                100.0 * s.invalid_rate
            )?;
            metrics.insert(format!("{prefix}accuracy"), json!(s.accuracy));
            if let Some(ci) = ci {
                metrics.insert(format!("{prefix}accuracy_ci95"), json!(ci));
            }
            metrics.insert(format!("{prefix}f1_macro"), json!(s.f1_macro));
            metrics.insert(format!("{prefix}invalid_rate"), json!(s.invalid_rate));
            metrics.insert(format!("{prefix}per_class_f1"), json!(s.per_class));
        }
    }
    metrics.insert("rows".into(), json!(truth.len()));
    metrics.insert("test_table".into(), json!(test_table(&table, &p.label)?));
    write_metrics(ctx.out, &Value::Object(metrics))
}

fn classify(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ClassifyParams = params(ctx.with).map_err(StepError::new)?;
    let table = read_predictions(&ctx.workdir.join(p.predictions.path()))?;
    let truth = table.labels(&p.label, "label")?;
    let pred = table.labels(&p.prediction, "prediction")?;
    let mut probs = Vec::new();
    for name in table.df.get_column_names() {
        if let Some(class) = name.strip_prefix(p.probabilities.as_str()) {
            probs.push((class_label(class), table.numbers(name, "probabilities")?));
        }
    }
    let positive = p.positive.as_ref().map(ClassLabel::text);
    let scores = score::classification(&truth, &pred, &probs, positive.as_deref())
        .map_err(|e| score_error(&table, e))?;
    let mut metrics = serde_json::to_value(&scores).map_err(|e| StepError::new(e.to_string()))?;
    let correct: Vec<bool> = truth.iter().zip(&pred).map(|(t, p)| t == p).collect();
    let ci = interval(&correct, p.bootstrap, p.seed, |rows| {
        Some(rows.iter().filter(|&&c| c).count() as f64 / rows.len() as f64)
    })?;
    add_interval(&mut metrics, "accuracy", ci, p.bootstrap, p.seed);
    metrics["test_table"] = json!(test_table(&table, &p.label)?);
    if let Some(by) = &p.by {
        let groups = accuracy_by(ctx, &table, by, &correct)?;
        metrics[format!("accuracy_by_{}", by.column)] = groups;
    }
    writeln!(
        ctx.log,
        "{}: {} rows, {} classes: accuracy {:.4}{}, macro F1 {:.4}, MCC {:.4}{}",
        table.path.display(),
        scores.rows,
        scores.classes.len(),
        scores.accuracy,
        describe(ci),
        scores.f1_macro,
        scores.mcc,
        match &scores.ranking {
            Some(r) => format!(", AUROC {}, AUPRC {:.4}", optional(r.auroc), r.auprc),
            None => String::new(),
        }
    )?;
    plot::confusion(
        &ctx.out.join("confusion.svg"),
        &format!(
            "Confusion matrix ({} rows, accuracy {:.3})",
            scores.rows, scores.accuracy
        ),
        &scores.confusion.labels,
        &scores.confusion.counts,
    )?;
    write_metrics(ctx.out, &metrics)
}

/// Accuracy of the rows of each value of `by.column` (rows matched by id), logged and as
/// `{value: {accuracy, rows}}`.
fn accuracy_by(
    ctx: &mut StepContext,
    predictions: &LocatedTable,
    by: &By,
    correct: &[bool],
) -> Result<Value, StepError> {
    let source = super::table::read_role(&ctx.workdir.join(by.table.path()), &by.id, "`by`")?;
    let values = source.labels(&by.column, "by")?;
    let ids = source.texts(&by.id, "id", "an id")?;
    let of: std::collections::HashMap<&str, &str> = ids
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    let mut groups: indexmap::IndexMap<&str, (usize, usize)> = Default::default();
    for (i, id) in predictions.texts("id", "id", "an id")?.iter().enumerate() {
        let Some(&v) = of.get(id.as_str()) else {
            return Err(StepError::new(format!(
                "{}: no row with id `{id}` in {}; `by.table` must be the table these predictions \
                 were made from",
                predictions.at(i, "id"),
                source.path.display()
            )));
        };
        let g = groups.entry(v).or_default();
        g.0 += correct[i] as usize;
        g.1 += 1;
    }
    let mut out = serde_json::Map::new();
    for (v, (right, rows)) in groups {
        let accuracy = right as f64 / rows as f64;
        writeln!(
            ctx.log,
            "  {} = {v}: accuracy {accuracy:.4} ({rows} rows)",
            by.column
        )?;
        out.insert(
            v.to_string(),
            serde_json::json!({ "accuracy": accuracy, "rows": rows }),
        );
    }
    Ok(Value::Object(out))
}

fn regress(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: RegressParams = params(ctx.with).map_err(StepError::new)?;
    let table = read_predictions(&ctx.workdir.join(p.predictions.path()))?;
    let truth = table.numbers(&p.label, "label")?;
    let pred = table.numbers(&p.prediction, "prediction")?;
    let scores = score::regression(&truth, &pred).map_err(|e| score_error(&table, e))?;
    let mut metrics = serde_json::to_value(&scores).map_err(|e| StepError::new(e.to_string()))?;
    let pairs: Vec<(f64, f64)> = truth.iter().copied().zip(pred.iter().copied()).collect();
    let ci = interval(&pairs, p.bootstrap, p.seed, |rows| {
        let (t, p): (Vec<f64>, Vec<f64>) = rows.iter().copied().unzip();
        Some(score::rmse(&t, &p))
    })?;
    add_interval(&mut metrics, "rmse", ci, p.bootstrap, p.seed);
    metrics["test_table"] = json!(test_table(&table, &p.label)?);
    writeln!(
        ctx.log,
        "{}: {} rows: RMSE {:.4}{}, MAE {:.4}, Pearson {}, Spearman {}, R² {}",
        table.path.display(),
        scores.rows,
        scores.rmse,
        describe(ci),
        scores.mae,
        optional(scores.pearson),
        optional(scores.spearman),
        optional(scores.r2)
    )?;
    write_metrics(ctx.out, &metrics)
}

/// The bootstrap interval of `metric`, or none when `resamples` is 0.
pub(super) fn interval<T: Clone>(
    rows: &[T],
    resamples: usize,
    seed: u64,
    metric: impl FnMut(&[T]) -> Option<f64>,
) -> Result<Option<Interval>, StepError> {
    if resamples == 0 {
        return Ok(None);
    }
    score::bootstrap_ci(rows, metric, resamples, seed).map_err(|e| StepError::new(e.to_string()))
}

/// `<name>_ci95: [lo, hi]` beside the headline metric, and how it was drawn.
pub(super) fn add_interval(
    metrics: &mut Value,
    name: &str,
    ci: Option<Interval>,
    resamples: usize,
    seed: u64,
) {
    if resamples == 0 {
        return;
    }
    metrics[format!("{name}_ci95")] = json!(ci);
    metrics["bootstrap"] = json!({ "metric": name, "resamples": resamples, "seed": seed });
}

/// ` (95 % CI lo–hi)` for a log line, or nothing.
pub(super) fn describe(ci: Option<Interval>) -> String {
    ci.map(|c| format!(" (95 % CI {:.4}–{:.4})", c.lo(), c.hi()))
        .unwrap_or_default()
}

fn optional(v: Option<f64>) -> String {
    v.map_or("undefined".into(), |v| format!("{v:.4}"))
}

/// A predictions table, rows required (there is nothing to score in an empty one).
fn read_predictions(path: &Path) -> Result<LocatedTable, StepError> {
    let table = LocatedTable::read(path, "id")?;
    if table.df.height() == 0 {
        return Err(StepError::new(format!(
            "{}: no rows to score (is it the predictions of an empty split?)",
            path.display()
        )));
    }
    Ok(table)
}

/// The identity of the test table the predictions are of: the one their maker recorded
/// (dnaflow's models, baselines and probes write it), else a hash of their ids and true
/// labels, in id order (a table another tool wrote). The report groups scores by it.
fn test_table(table: &LocatedTable, label: &str) -> Result<String, StepError> {
    if let Some(id) = &table.meta.rows_of {
        return Ok(id.clone());
    }
    let truth = table.texts(label, "label", "a label")?;
    let ids = match table.df.column("id") {
        Ok(_) => table.texts("id", "id", "an id")?,
        Err(_) => (1..=truth.len()).map(|i| i.to_string()).collect(),
    };
    let mut rows: Vec<(String, String)> = ids.into_iter().zip(truth).collect();
    rows.sort();
    let mut hasher = blake3::Hasher::new();
    for (id, truth) in &rows {
        for field in [id, truth] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

/// A scoring error, named by the file it came from.
fn score_error(table: &LocatedTable, e: score::ScoreError) -> StepError {
    StepError::new(format!("{}: {e}", table.path.display()))
}

/// Per-base scores into `metrics` as `<prefix>accuracy`, `…f1_macro`, `…mcc`,
/// `…balanced_accuracy`, `…exact` (whole sequences right), `…brackets_balanced` (dot-bracket
/// labels) and `…bases`, with the per-base confusion matrix in `confusion.svg` and a log line:
/// what `model.finetune` (token-cls) and `baseline.per-base` both report, so they compare.
pub(super) fn report_per_base(
    ctx: &mut StepContext,
    s: &score::PerBaseScores,
    metrics: &mut serde_json::Map<String, Value>,
    prefix: &str,
) -> Result<(), StepError> {
    let b = &s.bases;
    for (k, v) in [
        ("accuracy", Some(b.accuracy)),
        ("balanced_accuracy", Some(b.balanced_accuracy)),
        ("f1_macro", Some(b.f1_macro)),
        ("mcc", Some(b.mcc)),
        ("exact", Some(s.exact)),
        ("brackets_balanced", s.balanced),
    ] {
        if let Some(v) = v {
            metrics.insert(format!("{prefix}{k}"), v.into());
        }
    }
    metrics.insert(format!("{prefix}bases"), b.rows.into());
    plot::confusion(
        &ctx.out.join("confusion.svg"),
        &format!(
            "Confusion matrix per base ({} bases, accuracy {:.3})",
            b.rows, b.accuracy
        ),
        &b.confusion.labels,
        &b.confusion.counts,
    )?;
    writeln!(
        ctx.log,
        "per-base accuracy {:.4}, macro F1 {:.4}, MCC {:.4}{} ({} sequences, {} bases)",
        b.accuracy,
        b.f1_macro,
        b.mcc,
        s.balanced
            .map(|f| format!(", brackets balanced in {:.1} %", 100.0 * f))
            .unwrap_or_default(),
        s.sequences,
        b.rows
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_one_spelling() {
        assert_eq!(class_label("1.0"), "1");
        assert_eq!(class_label(" 1 "), "1");
        assert_eq!(class_label("0.5"), "0.5");
        assert_eq!(class_label("promoter"), "promoter");
        assert_eq!(ClassLabel::Number(1).text(), "1");
    }

    #[test]
    fn bad_values_name_file_row_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("p.csv");
        std::fs::write(&path, "id,label,prediction\na,1.5,1\nb,x,2\n").unwrap();
        let t = read_predictions(&path).unwrap();
        let e = t.numbers("label", "label").unwrap_err().message;
        assert!(
            e.contains("p.csv: row 2 (line 3, id `b`), column `label`: `x` is not a number; `label` must be numbers"),
            "{e}"
        );
        std::fs::write(&path, "label,prediction\n1,1\n,0\n").unwrap();
        let t = read_predictions(&path).unwrap();
        let e = t.labels("label", "label").unwrap_err().message;
        assert!(e.contains("row 2 (line 3), column `label`: empty"), "{e}");
        let e = t.labels("truth", "label").unwrap_err().message;
        assert!(
            e.contains("no column `truth`; the columns are: label, prediction"),
            "{e}"
        );
    }

    /// Predictions carry the identity of the table they are of; a table without it (another
    /// tool's) is known by its ids and true labels, whatever the order of its rows.
    #[test]
    fn predictions_know_their_test_table() {
        let d = tempfile::tempdir().unwrap();
        let csv = |name: &str, text: &str| {
            let path = d.path().join(name);
            std::fs::write(&path, text).unwrap();
            read_predictions(&path).unwrap()
        };
        let a = csv("a.csv", "id,label,prediction\nr1,x,x\nr2,y,x\n");
        let a_again = csv("b.csv", "id,label,prediction\nr2,y,y\nr1,x,y\n");
        let other = csv("c.csv", "id,label,prediction\nr3,x,x\nr4,y,x\n");
        let id = test_table(&a, "label").unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(test_table(&a_again, "label").unwrap(), id);
        assert_ne!(test_table(&other, "label").unwrap(), id);
        let mut recorded = csv("d.csv", "id,label,prediction\nr3,x,x\n");
        recorded.meta.rows_of = Some("0123456789abcdef".into());
        assert_eq!(test_table(&recorded, "label").unwrap(), "0123456789abcdef");
    }
}
