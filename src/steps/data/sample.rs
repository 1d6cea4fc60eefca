//! `data.sample`: a seeded random subset of a table's rows (optionally stratified), in input
//! order.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Rng, apportion, column_as_strings, groups, params_of, resolve};
use crate::steps::table;
use crate::steps::table::{TABLE_FILE, TableMeta, write_table_with};
use crate::steps::write_metrics;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params};

/// Parameters of `data.sample`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SampleParams {
    /// The table to sample from.
    input: InputPath,
    /// How many rows to keep (at most the table's size).
    #[serde(default)]
    n: Option<usize>,
    /// Which fraction of rows to keep (0–1).
    #[serde(default)]
    fraction: Option<f64>,
    /// Seed: the same seed gives the same rows.
    #[serde(default)]
    seed: u64,
    /// Keep the proportions of this column's values.
    #[serde(default)]
    stratify: Option<String>,
}

/// The `data.sample` kind.
pub static KIND: StepKind = StepKind {
    name: "data.sample",
    version: 2,
    summary: "random subset of rows by `n` or `fraction`, seeded, optionally stratified (output `table`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<SampleParams>(),
    check: |with| params::<SampleParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &SampleParams) -> Result<(), String> {
    match (p.n, p.fraction) {
        (Some(_), Some(_)) => Err("give `n` or `fraction`, not both".into()),
        (None, None) => Err("give `n` (rows) or `fraction` (0–1)".into()),
        (_, Some(f)) if !(0.0..=1.0).contains(&f) => {
            Err(format!("`fraction` {f} must be between 0 and 1"))
        }
        _ => Ok(()),
    }
}

/// Indices of the sampled rows, in input order.
pub fn pick(n_rows: usize, classes: Option<&[String]>, target: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let groups = groups(classes, n_rows);
    let sizes: Vec<f64> = groups.iter().map(|g| g.1.len() as f64).collect();
    let quotas = apportion(target, &sizes);
    let mut out = Vec::with_capacity(target);
    for ((_, mut rows), q) in groups.into_iter().zip(quotas) {
        rng.shuffle(&mut rows);
        out.extend(rows.into_iter().take(q));
    }
    out.sort_unstable();
    out
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: SampleParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let df = table::read_table(&path)?;
    let rows = df.height();
    let target = match (p.n, p.fraction) {
        (Some(n), _) => {
            if n > rows {
                return Err(StepError::new(format!(
                    "{}: `n: {n}` but the table has only {rows} rows; lower `n` or use `fraction`",
                    path.display()
                )));
            }
            n
        }
        (_, Some(f)) => (f * rows as f64).round() as usize,
        _ => unreachable!("checked"),
    };
    let classes = match &p.stratify {
        Some(c) => Some(column_as_strings(&df, c, &path, "stratify")?),
        None => None,
    };
    let idx = pick(rows, classes.as_deref(), target, p.seed);
    let mut t = super::take_rows(&df, &idx)?;
    write_table_with(&mut t, &ctx.out.join(TABLE_FILE), &meta)?;
    writeln!(ctx.log, "sampled {} of {rows} rows", idx.len())?;
    let mut m = serde_json::json!({ "rows": idx.len(), "input_rows": rows });
    if let Some(c) = &classes {
        m["classes"] = super::class_counts(c, &idx).into();
    }
    write_metrics(ctx.out, &m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_seeded_and_stratified() {
        let a = pick(100, None, 10, 1);
        assert_eq!(a.len(), 10);
        assert_eq!(a, pick(100, None, 10, 1));
        assert_ne!(a, pick(100, None, 10, 2));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let classes: Vec<String> = (0..100).map(|i| (i % 4 == 0).to_string()).collect();
        let s = pick(100, Some(&classes), 20, 5);
        assert_eq!(s.iter().filter(|&&i| classes[i] == "true").count(), 5);
        assert_eq!(pick(5, None, 0, 1), Vec::<usize>::new());
    }
}
