//! `baseline.nearest`: the answer of the most similar training sequence. For function text
//! (chapter 3.4) it is what a biologist does first — transfer the annotation of the closest
//! known protein — here with k-mer profiles (cosine similarity) in place of an alignment.

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{FeatureKind, Features, Table, read_role};
use crate::linear::Matrix;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params, write_metrics};

/// Parameters of `baseline.nearest`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NearestParams {
    /// The table whose answers are copied (parquet, CSV, TSV, JSON lines).
    train: InputPath,
    /// The table to answer.
    test: InputPath,
    /// Column holding the sequences.
    #[serde(default = "super::super::table::sequence_column")]
    sequence: String,
    /// The column copied from the nearest training row (a product text, a label).
    #[serde(default = "super::super::table::label_column")]
    label: String,
    /// Column holding the row ids.
    #[serde(default = "super::super::table::id_column")]
    id: String,
    /// k-mer length of the profiles (default as baseline.classify: 3 for DNA, 1 for protein).
    k: Option<usize>,
}

/// The `baseline.nearest` kind.
pub static NEAREST: StepKind = StepKind {
    name: "baseline.nearest",
    version: 3,
    summary: "copy the label or text of the training row whose k-mer profile is nearest (cosine) to each test row (output `predictions`: id, label, prediction, neighbour, similarity)",
    outputs: &[("predictions", "predictions.parquet")],
    schema: |g| g.subschema_for::<NearestParams>(),
    check: |with| {
        let p = params::<NearestParams>(with)?;
        if p.k == Some(0) {
            return Err("`k` must be at least 1".into());
        }
        if p.sequence == p.label {
            return Err("`sequence` and `label` must name different columns".into());
        }
        Ok(())
    },
    run: nearest,
};

/// Each row scaled to unit length (a zero row stays zero).
fn unit_rows(x: &mut Matrix) {
    for i in 0..x.rows {
        let row = x.row_mut(i);
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// For each query row, the index of the most similar reference row (the first on ties) and
/// the cosine similarity; rows are unit length.
fn nearest_rows(queries: &Matrix, references: &Matrix) -> Vec<(usize, f64)> {
    use rayon::prelude::*;
    (0..queries.rows)
        .into_par_iter()
        .map(|i| {
            let q = queries.row(i);
            let mut best = (0, f64::NEG_INFINITY);
            for j in 0..references.rows {
                let s: f64 = q.iter().zip(references.row(j)).map(|(a, b)| a * b).sum();
                if s > best.1 {
                    best = (j, s);
                }
            }
            best
        })
        .collect()
}

fn nearest(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: NearestParams = params(ctx.with).map_err(StepError::new)?;
    let read = |i: &InputPath, role: &str| -> Result<(Table, Vec<String>), StepError> {
        let t = read_role(&ctx.workdir.join(i.path()), &p.id, role)?;
        let seqs = t.texts(&p.sequence, "sequence", "a sequence")?;
        Ok((t, seqs))
    };
    let (train, train_seqs) = read(&p.train, "training")?;
    let (test, test_seqs) = read(&p.test, "test")?;
    if train_seqs.is_empty() {
        return Err(StepError::new(format!(
            "{}: no training rows to copy from",
            train.path.display()
        )));
    }
    let answers = train.texts(&p.label, "label", "the text to copy")?;
    let train_ids = train.texts(&p.id, "id", "an id")?;
    let alphabet = super::training_alphabet(None, &train, &p.sequence, &train_seqs)?;
    let features = Features::fit(FeatureKind::Kmer, p.k, alphabet, &train_seqs)
        .map_err(|e| StepError::new(format!("{}: {e}", train.path.display())))?;
    let mut reference = features.matrix(&train_seqs, &train.path)?;
    let mut queries = features.matrix(&test_seqs, &test.path)?;
    unit_rows(&mut reference);
    unit_rows(&mut queries);
    let found = nearest_rows(&queries, &reference);
    let truth = test.texts(&p.label, "label", "the real text")?;
    let prediction: Vec<&str> = found.iter().map(|&(j, _)| answers[j].as_str()).collect();
    let neighbour: Vec<&str> = found.iter().map(|&(j, _)| train_ids[j].as_str()).collect();
    let similarity: Vec<f64> = found.iter().map(|&(_, s)| s).collect();
    let mut df = DataFrame::new(
        similarity.len(),
        vec![
            Column::new("id".into(), test.texts(&p.id, "id", "an id")?),
            Column::new("label".into(), truth),
            Column::new("prediction".into(), prediction),
            Column::new("neighbour".into(), neighbour),
            Column::new("similarity".into(), &similarity),
        ],
    )?;
    super::write_predictions(&mut df, &test.path, ctx.out)?;
    let mean = similarity.iter().sum::<f64>() / similarity.len().max(1) as f64;
    writeln!(
        ctx.log,
        "{} test rows matched against {} training rows by {}: mean cosine similarity {mean:.4}",
        test_seqs.len(),
        train_seqs.len(),
        features.describe()
    )?;
    write_metrics(
        ctx.out,
        &json!({
            "rows": test_seqs.len(),
            "train_rows": train_seqs.len(),
            "features": features.describe(),
            "mean_similarity": mean,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_similar_profile_wins_and_ties_take_the_first() {
        let mut refs = Matrix::zeros(3, 2);
        refs.row_mut(0).copy_from_slice(&[1.0, 0.0]);
        refs.row_mut(1).copy_from_slice(&[0.0, 2.0]);
        refs.row_mut(2).copy_from_slice(&[3.0, 0.0]);
        let mut q = Matrix::zeros(2, 2);
        q.row_mut(0).copy_from_slice(&[0.1, 1.0]);
        q.row_mut(1).copy_from_slice(&[5.0, 0.0]);
        unit_rows(&mut refs);
        unit_rows(&mut q);
        let found = nearest_rows(&q, &refs);
        assert_eq!(found[0].0, 1);
        assert_eq!(found[1].0, 0);
        assert!((found[1].1 - 1.0).abs() < 1e-12);
    }
}
