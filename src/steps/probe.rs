//! `eval.probe` and `eval.project`: what embeddings know. A probe is an L2 logistic
//! regression on the embedding vectors (the tutorial's chapter 2.4), scored on a test table or
//! by seeded stratified k-fold cross-validation; a projection is the 2-D PCA of the vectors,
//! drawn coloured by label.

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::data::fold_of;
use super::embed::EMB;
use super::table::{
    LocatedTable, TableMeta, class_indices, read_role, table_identity, training_classes,
    write_table, write_table_with,
};
use super::{InputPath, StepContext, StepError, StepKind, params, plot, write_metrics};
use crate::linear::{Lbfgs, Logistic, Matrix, Standardizer, argmax_rows};
use crate::train::objective::classification_scores;

/// Parameters of `eval.probe`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbeParams {
    /// Embeddings to fit on (`model.embed`'s table: id, label, emb_0 …).
    embeddings: InputPath,
    /// Embeddings to score; without it, `folds`-fold cross-validation on `embeddings`.
    test: Option<InputPath>,
    /// Pairs embedded apart: the embeddings of each row's second sequence (same ids, same
    /// order as `embeddings`). The probe then reads `[u, v, |u − v|, u ⊙ v]` of the two
    /// vectors (Sentence-BERT's pair features, plus the product).
    pair_embeddings: Option<InputPath>,
    /// The second sequences' embeddings of the `test` rows (with `pair_embeddings`).
    pair_test: Option<InputPath>,
    /// Folds of the cross-validation (stratified by label, seeded).
    #[serde(default = "five")]
    folds: usize,
    /// Seeds the folds of the cross-validation.
    #[serde(default = "seed")]
    seed: u64,
    /// L2 penalty (scikit-learn's `1 / C`).
    #[serde(default = "one")]
    l2: f64,
    /// Scale every dimension to zero mean and unit variance on the fitting rows.
    #[serde(default = "yes")]
    standardize: bool,
    /// Most L-BFGS iterations of the logistic regression.
    #[serde(default = "max_iter")]
    max_iter: usize,
    /// Column holding the labels.
    #[serde(default = "super::table::label_column")]
    label: String,
    /// Column holding the row ids.
    #[serde(default = "super::table::id_column")]
    id: String,
}

fn five() -> usize {
    5
}
fn seed() -> u64 {
    42
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn max_iter() -> usize {
    1000
}

pub static PROBE: StepKind = StepKind {
    name: "eval.probe",
    version: 3,
    summary: "logistic-regression probe on embeddings: scored on a test table or by seeded stratified k-fold (outputs `predictions`: id, label, prediction, prob_<class>)",
    outputs: &[("predictions", "predictions.parquet")],
    schema: |g| g.subschema_for::<ProbeParams>(),
    check: |with| {
        let p = params::<ProbeParams>(with)?;
        if p.test.is_none() && p.folds < 2 {
            return Err("`folds` must be at least 2".into());
        }
        if !(p.l2 > 0.0 && p.l2.is_finite()) {
            return Err("`l2` must be a positive number".into());
        }
        match (&p.pair_embeddings, &p.test, &p.pair_test) {
            (None, _, Some(_)) => Err("`pair_test` goes with `pair_embeddings`".into()),
            (Some(_), Some(_), None) => {
                Err("with `pair_embeddings` and `test`, give `pair_test` too".into())
            }
            (Some(_), None, Some(_)) => Err("`pair_test` goes with `test`".into()),
            _ => Ok(()),
        }
    },
    run: probe,
};

/// The embedding columns of a table as a matrix.
fn vectors(t: &LocatedTable) -> Result<Matrix, StepError> {
    let names: Vec<String> =
        t.df.get_column_names()
            .iter()
            .filter(|n| n.starts_with(EMB))
            .map(|n| n.to_string())
            .collect();
    if names.is_empty() {
        return Err(StepError::new(format!(
            "{}: no `{EMB}0`, `{EMB}1`, … columns; is it the embeddings of a model.embed step?",
            t.path.display()
        )));
    }
    let mut m = Matrix::zeros(t.df.height(), names.len());
    for (k, name) in names.iter().enumerate() {
        for (i, v) in t.numbers(name, "embeddings")?.into_iter().enumerate() {
            m.row_mut(i)[k] = v;
        }
    }
    Ok(m)
}

/// The pair features of two tables of embeddings of the same rows: `[u, v, |u − v|, u ⊙ v]`.
fn pair_features(
    first: &LocatedTable,
    second: &LocatedTable,
    id: &str,
) -> Result<Matrix, StepError> {
    let (u, v) = (vectors(first)?, vectors(second)?);
    let (a, b) = (
        first.texts(id, "id", "an id")?,
        second.texts(id, "id", "an id")?,
    );
    if u.cols != v.cols || a != b {
        return Err(StepError::new(format!(
            "{} and {}: the two sides of a pair must be the same rows (ids in the same order) \
             embedded by the same model; they have {} and {} rows of {} and {} dimensions",
            first.path.display(),
            second.path.display(),
            u.rows,
            v.rows,
            u.cols,
            v.cols
        )));
    }
    let d = u.cols;
    let mut x = Matrix::zeros(u.rows, 4 * d);
    for i in 0..u.rows {
        let (ui, vi) = (u.row(i), v.row(i));
        let row = x.row_mut(i);
        for k in 0..d {
            row[k] = ui[k];
            row[d + k] = vi[k];
            row[2 * d + k] = (ui[k] - vi[k]).abs();
            row[3 * d + k] = ui[k] * vi[k];
        }
    }
    Ok(x)
}

fn subset(x: &Matrix, rows: &[usize]) -> Matrix {
    let mut m = Matrix::zeros(rows.len(), x.cols);
    for (k, &i) in rows.iter().enumerate() {
        m.row_mut(k).copy_from_slice(x.row(i));
    }
    m
}

/// Fit on `fit` rows, return class probabilities of `score` rows.
fn fit_predict(
    p: &ProbeParams,
    x_fit: &Matrix,
    y_fit: &[usize],
    x_score: &Matrix,
    classes: usize,
) -> Result<Matrix, StepError> {
    let (mut a, mut b) = (x_fit.clone(), x_score.clone());
    if p.standardize {
        let s = Standardizer::fit(&a);
        s.apply(&mut a);
        s.apply(&mut b);
    }
    let solver = Lbfgs {
        max_iter: p.max_iter,
        tol: 1e-8,
        ..Lbfgs::default()
    };
    let model = Logistic::fit(&a, y_fit, classes, p.l2, &solver)
        .map_err(|e| StepError::new(e.to_string()))?;
    Ok(model.probabilities(&b))
}

fn probe(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ProbeParams = params(ctx.with).map_err(StepError::new)?;
    let path = |i: &InputPath| ctx.workdir.join(i.path());
    let fit = read_role(&path(&p.embeddings), &p.id, "embeddings")?;
    let embedded = fit.meta.clone();
    let labels = fit.labels(&p.label, "label")?;
    let classes = training_classes(&fit, &labels, &p.label)?;
    let y = class_indices(&fit, &labels, &classes, &p.label, &fit.path)?;
    // The probe's input for a table: its vectors, or with its pair's, their pair features.
    let features = |t: &LocatedTable, pair: Option<&InputPath>| -> Result<Matrix, StepError> {
        match pair {
            Some(second) => {
                let second = read_role(&path(second), &p.id, "pair embeddings")?;
                pair_features(t, &second, &p.id)
            }
            None => vectors(t),
        }
    };
    let x = features(&fit, p.pair_embeddings.as_ref())?;
    let (scored, truth, probs, folds) = match &p.test {
        Some(test) => {
            let test = read_role(&path(test), &p.id, "test")?;
            let test_labels = test.labels(&p.label, "label")?;
            class_indices(&test, &test_labels, &classes, &p.label, &fit.path)?;
            let xt = features(&test, p.pair_test.as_ref())?;
            if xt.cols != x.cols {
                return Err(StepError::new(format!(
                    "{}: {} embedding columns, the fitting table has {}",
                    test.path.display(),
                    xt.cols,
                    x.cols
                )));
            }
            let probs = fit_predict(&p, &x, &y, &xt, classes.len())?;
            (test, test_labels, probs, None)
        }
        None => {
            // Stratified and seeded exactly as data.split's `folds`.
            let fold = fold_of(y.len(), Some(&labels), p.folds, p.seed);
            let mut probs = Matrix::zeros(x.rows, classes.len());
            let mut accuracies = Vec::new();
            for f in 0..p.folds {
                (ctx.status)(&format!("fold {}/{}", f + 1, p.folds));
                let train: Vec<usize> = (0..x.rows).filter(|&i| fold[i] != f).collect();
                let held: Vec<usize> = (0..x.rows).filter(|&i| fold[i] == f).collect();
                let y_train: Vec<usize> = train.iter().map(|&i| y[i]).collect();
                let pr = fit_predict(
                    &p,
                    &subset(&x, &train),
                    &y_train,
                    &subset(&x, &held),
                    classes.len(),
                )?;
                let pred = argmax_rows(&pr);
                let right = held.iter().zip(&pred).filter(|&(&i, &k)| y[i] == k).count();
                accuracies.push(right as f64 / held.len().max(1) as f64);
                for (k, &i) in held.iter().enumerate() {
                    probs.row_mut(i).copy_from_slice(pr.row(k));
                }
            }
            (fit, labels, probs, Some(accuracies))
        }
    };
    let rows: Vec<Vec<f64>> = (0..probs.rows).map(|i| probs.row(i).to_vec()).collect();
    let truth_ref: Vec<&str> = truth.iter().map(String::as_str).collect();
    let scores = classification_scores(&classes, &truth_ref, &rows)
        .ok_or_else(|| StepError::new("no rows to score"))?;
    let pred: Vec<&str> = argmax_rows(&probs)
        .into_iter()
        .map(|k| classes[k].as_str())
        .collect();
    let mut columns = vec![
        Column::new("id".into(), scored.texts(&p.id, "id", "an id")?),
        Column::new("label".into(), &truth),
        Column::new("prediction".into(), &pred),
    ];
    for (k, class) in classes.iter().enumerate() {
        let col: Vec<f64> = rows.iter().map(|r| r[k]).collect();
        columns.push(Column::new(format!("prob_{class}").into(), col));
    }
    let mut df = DataFrame::new(rows.len(), columns)?;
    let meta = TableMeta::rows_of(&scored.path)?;
    write_table_with(&mut df, &ctx.out.join("predictions.parquet"), &meta)?;
    let mut metrics = json!({
        "dimension": x.cols,
        "classes": classes,
        "l2": p.l2,
        "standardize": p.standardize,
        "pairs": p.pair_embeddings.is_some(),
        // The table scored (model.embed's vectors carry their table's identity), so the
        // report shows this probe beside the other scores of that table.
        "test_table": table_identity(&scored.path)?,
    });
    // The alphabet of the sequences embedded, as model.embed recorded it.
    if let Some(a) = &embedded.alphabet {
        metrics["alphabet"] = json!(a);
        metrics["alphabet_from"] = json!(embedded.alphabet_from);
    }
    for (k, v) in &scores {
        metrics[k] = json!(v);
    }
    if let Some(acc) = folds {
        let mean = acc.iter().sum::<f64>() / acc.len() as f64;
        let sd = (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / acc.len() as f64).sqrt();
        metrics["folds"] = json!(p.folds);
        metrics["fold_accuracy"] = json!(acc);
        metrics["fold_accuracy_sd"] = json!(sd);
        metrics["seed"] = json!(p.seed);
    }
    writeln!(
        ctx.log,
        "probe on {} dimensions: accuracy {:.4}, MCC {:.4} ({} rows{})",
        x.cols,
        scores["accuracy"],
        scores["mcc"],
        rows.len(),
        if p.test.is_some() {
            ", test table"
        } else {
            ", cross-validated"
        }
    )?;
    write_metrics(ctx.out, &metrics)
}

/// Parameters of `eval.project`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProjectParams {
    /// Embeddings (`model.embed`'s table).
    embeddings: InputPath,
    /// Colour points by this column (absent: one colour).
    #[serde(default = "super::table::label_column")]
    label: String,
    /// Column holding the row ids.
    #[serde(default = "super::table::id_column")]
    id: String,
    /// Plot title.
    title: Option<String>,
}

pub static PROJECT: StepKind = StepKind {
    name: "eval.project",
    version: 1,
    summary: "2-D PCA of embeddings, an SVG scatter coloured by label (outputs `plot`, `points`)",
    outputs: &[("plot", "projection.svg"), ("points", "projection.parquet")],
    schema: |g| g.subschema_for::<ProjectParams>(),
    check: |with| params::<ProjectParams>(with).map(|_| ()),
    run: project,
};

/// The top `k` principal axes of the centred rows of `x` (power iteration with deflation on
/// the covariance; each axis signed so its largest component is positive) and the share of
/// variance each explains.
pub(super) fn principal_axes(x: &Matrix, k: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (n, d) = (x.rows, x.cols);
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| x.row(i)[j]).sum::<f64>() / n.max(1) as f64)
        .collect();
    let mut cov = vec![0.0; d * d];
    for i in 0..n {
        let r: Vec<f64> = x.row(i).iter().zip(&mean).map(|(a, m)| a - m).collect();
        for a in 0..d {
            for b in a..d {
                cov[a * d + b] += r[a] * r[b];
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            cov[a * d + b] /= (n.max(2) - 1) as f64;
            cov[b * d + a] = cov[a * d + b];
        }
    }
    let total: f64 = (0..d).map(|a| cov[a * d + a]).sum();
    let (mut axes, mut shares) = (Vec::new(), Vec::new());
    for axis in 0..k.min(d) {
        let mut v: Vec<f64> = (0..d)
            .map(|j| 1.0 + ((j + axis) % 7) as f64 * 0.1)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..500 {
            let mut w: Vec<f64> = (0..d)
                .map(|a| (0..d).map(|b| cov[a * d + b] * v[b]).sum())
                .collect();
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            w.iter_mut().for_each(|x| *x /= norm);
            let delta: f64 = w.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = w;
            lambda = norm;
            if delta < 1e-12 {
                break;
            }
        }
        let big = v
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] -= lambda * v[a] * v[b];
            }
        }
        shares.push(if total > 0.0 { lambda / total } else { 0.0 });
        axes.push(v);
    }
    (axes, shares)
}

fn project(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ProjectParams = params(ctx.with).map_err(StepError::new)?;
    let table = read_role(&ctx.workdir.join(p.embeddings.path()), &p.id, "embeddings")?;
    let x = vectors(&table)?;
    let (axes, shares) = principal_axes(&x, 2);
    let mean: Vec<f64> = (0..x.cols)
        .map(|j| (0..x.rows).map(|i| x.row(i)[j]).sum::<f64>() / x.rows as f64)
        .collect();
    let coord = |i: usize, a: usize| -> f64 {
        axes.get(a).map_or(0.0, |v| {
            x.row(i)
                .iter()
                .zip(&mean)
                .zip(v)
                .map(|((x, m), w)| (x - m) * w)
                .sum()
        })
    };
    let pc1: Vec<f64> = (0..x.rows).map(|i| coord(i, 0)).collect();
    let pc2: Vec<f64> = (0..x.rows).map(|i| coord(i, 1)).collect();
    let labels = match table.df.column(&p.label) {
        Ok(_) => table.labels(&p.label, "label")?,
        Err(_) => vec!["all".to_string(); x.rows],
    };
    let classes = crate::score::sorted_classes(labels.iter().map(String::as_str));
    let groups: Vec<(String, Vec<(f64, f64)>)> = classes
        .iter()
        .map(|c| {
            let pts = (0..x.rows)
                .filter(|&i| &labels[i] == c)
                .map(|i| (pc1[i], pc2[i]))
                .collect();
            (c.clone(), pts)
        })
        .collect();
    let share = |k: usize| shares.get(k).copied().unwrap_or(0.0) * 100.0;
    plot::scatter(
        &ctx.out.join("projection.svg"),
        p.title.as_deref().unwrap_or("PCA of the embeddings"),
        (
            &format!("PC1 ({:.1} % of variance)", share(0)),
            &format!("PC2 ({:.1} % of variance)", share(1)),
        ),
        &groups,
    )?;
    let mut df = DataFrame::new(
        x.rows,
        vec![
            Column::new("id".into(), table.texts(&p.id, "id", "an id")?),
            Column::new("label".into(), &labels),
            Column::new("pc1".into(), &pc1),
            Column::new("pc2".into(), &pc2),
        ],
    )?;
    write_table(&mut df, &ctx.out.join("projection.parquet"))?;
    write_metrics(
        ctx.out,
        &json!({
            "rows": x.rows,
            "dimension": x.cols,
            "explained_variance_ratio": [share(0) / 100.0, share(1) / 100.0],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_axis_of_largest_variance() {
        // Points along (1, 1) with a little spread along (1, -1), uncorrelated with it.
        let rows: Vec<Vec<f64>> = (-5..=5)
            .flat_map(|t| [0.1, -0.1].map(|s| vec![t as f64 + s, t as f64 - s]))
            .collect();
        let (axes, shares) = principal_axes(&Matrix::from_rows(&rows), 2);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(
            (axes[0][0] - h).abs() < 1e-6 && (axes[0][1] - h).abs() < 1e-6,
            "{axes:?}"
        );
        assert!((axes[1][0].abs() - h).abs() < 1e-6, "{axes:?}");
        assert!(shares[0] > 0.99 && (shares[0] + shares[1] - 1.0).abs() < 1e-9);
    }

    /// The probe's folds (data.split's `fold_of`) are stratified by label and seeded.
    #[test]
    fn folds_are_stratified_and_seeded() {
        let y: Vec<String> = (0..30).map(|i| (i % 3 == 0).to_string()).collect();
        let f = fold_of(30, Some(&y), 5, 1);
        assert_eq!(f, fold_of(30, Some(&y), 5, 1));
        for fold in 0..5 {
            let ones = (0..30).filter(|&i| f[i] == fold && y[i] == "true").count();
            assert_eq!(ones, 2, "{f:?}");
        }
    }
}
