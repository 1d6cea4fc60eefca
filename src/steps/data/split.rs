//! `data.split`: train / valid / test tables by seeded ratios (optionally stratified), by an
//! existing split column, or as fold `i` of a k-fold partition.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Rng, apportion, class_counts, column_as_strings, groups, params_of, resolve};
use crate::steps::table;
use crate::steps::table::{TableMeta, write_table_with};
use crate::steps::{InputPath, StepContext, StepError, StepKind, params};

/// Parameters of `data.split`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SplitParams {
    /// The table to split.
    input: InputPath,
    /// Fractions `[train, valid, test]`, summing to 1 (valid or test may be 0).
    #[serde(default)]
    ratios: Option<[f64; 3]>,
    /// Seed of the shuffle: the same seed gives the same split.
    #[serde(default)]
    seed: u64,
    /// Keep each value of this column in the same proportions in every split.
    #[serde(default)]
    stratify: Option<String>,
    /// Use this existing column, whose values are train / valid (or validation, val, dev) / test.
    #[serde(default)]
    by_column: Option<String>,
    /// Number of folds for k-fold cross-validation (with `fold`).
    #[serde(default)]
    folds: Option<usize>,
    /// Which fold (0-based) is the test set; the other folds are train.
    #[serde(default)]
    fold: Option<usize>,
    /// With `folds`: fraction of the training folds moved to valid.
    #[serde(default)]
    valid_fraction: Option<f64>,
    /// Rows with the same value in this column (a sequence, a gene) stay in one split, so no
    /// copy of a test item is trained on. Ratios and folds then count groups, not rows;
    /// `stratify` uses each group's first row.
    #[serde(default)]
    group: Option<String>,
}

/// The `data.split` kind.
pub static KIND: StepKind = StepKind {
    name: "data.split",
    version: 2,
    summary: "split a table into train/valid/test by ratios, an existing column or k-fold (outputs `train`, `valid`, `test`)",
    outputs: &[
        ("train", "train.parquet"),
        ("valid", "valid.parquet"),
        ("test", "test.parquet"),
    ],
    schema: |g| g.subschema_for::<SplitParams>(),
    check: |with| params::<SplitParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &SplitParams) -> Result<(), String> {
    if let Some(r) = p.ratios {
        if r.iter().any(|x| !(0.0..=1.0).contains(x)) {
            return Err(format!("`ratios` {r:?}: each must be between 0 and 1"));
        }
        if (r.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(format!(
                "`ratios` {r:?} sum to {}, not 1",
                r.iter().sum::<f64>()
            ));
        }
    }
    let modes = [p.by_column.is_some(), p.folds.is_some()];
    if modes.iter().filter(|m| **m).count() > 1 {
        return Err("use either `by_column` or `folds`, not both".into());
    }
    if p.by_column.is_some() && (p.ratios.is_some() || p.stratify.is_some() || p.group.is_some()) {
        return Err(
            "`by_column` takes the split from the column: drop `ratios`/`stratify`/`group`".into(),
        );
    }
    if p.folds.is_some() != p.fold.is_some() {
        return Err("`folds` and `fold` go together: `folds: 5, fold: 0`".into());
    }
    if let (Some(k), Some(i)) = (p.folds, p.fold) {
        if k < 2 {
            return Err("`folds` must be at least 2".into());
        }
        if i >= k {
            return Err(format!("`fold` is 0-based: 0..{} for `folds: {k}`", k - 1));
        }
        if p.ratios.is_some() {
            return Err("with `folds`, use `valid_fraction` instead of `ratios`".into());
        }
    }
    if p.valid_fraction.is_some() && p.folds.is_none() {
        return Err("`valid_fraction` applies to `folds`; use `ratios` otherwise".into());
    }
    if p.valid_fraction.is_some_and(|v| !(0.0..1.0).contains(&v)) {
        return Err("`valid_fraction` must be in [0, 1)".into());
    }
    Ok(())
}

/// Row indices per split (train, valid, test), each in input order. Split sizes are exact
/// (largest remainder over all rows); when stratified, each split's rows are then shared among
/// classes in proportion to the rows each class has left.
pub fn assign(
    n: usize,
    classes: Option<&[String]>,
    ratios: [f64; 3],
    seed: u64,
) -> [Vec<usize>; 3] {
    let mut rng = Rng::new(seed);
    let groups = groups(classes, n);
    let totals = apportion(n, &ratios);
    let mut left: Vec<usize> = groups.iter().map(|g| g.1.len()).collect();
    let mut alloc = vec![[0usize; 3]; groups.len()];
    for (k, &total) in totals.iter().enumerate() {
        let take = if k == 2 {
            left.clone()
        } else {
            let w: Vec<f64> = left.iter().map(|&x| x as f64).collect();
            apportion(total, &w)
        };
        for (j, t) in take.into_iter().enumerate() {
            alloc[j][k] = t;
            left[j] -= t;
        }
    }
    let mut out: [Vec<usize>; 3] = Default::default();
    for ((_, mut rows), parts) in groups.into_iter().zip(alloc) {
        rng.shuffle(&mut rows);
        let mut it = rows.into_iter();
        for (k, &m) in parts.iter().enumerate() {
            out[k].extend(it.by_ref().take(m));
        }
    }
    for v in &mut out {
        v.sort_unstable();
    }
    out
}

/// Fold number of every row: shuffled, then dealt round-robin (per class when stratified).
pub fn fold_of(n: usize, classes: Option<&[String]>, folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut fold = vec![0; n];
    let mut next = 0;
    for (_, mut rows) in groups(classes, n) {
        rng.shuffle(&mut rows);
        for r in rows {
            fold[r] = next % folds;
            next += 1;
        }
    }
    fold
}

/// Rows of the groups in each split (input order), or the rows themselves without groups.
fn expand(parts: [Vec<usize>; 3], members: Option<&[Vec<usize>]>) -> [Vec<usize>; 3] {
    let Some(members) = members else {
        return parts;
    };
    parts.map(|units| {
        let mut rows: Vec<usize> = units
            .iter()
            .flat_map(|&g| members[g].iter().copied())
            .collect();
        rows.sort_unstable();
        rows
    })
}

fn by_column(
    values: &[String],
    ids: impl Fn(usize) -> String,
    file: &str,
    col: &str,
) -> Result<[Vec<usize>; 3], StepError> {
    let mut out: [Vec<usize>; 3] = Default::default();
    for (i, v) in values.iter().enumerate() {
        let k = match v.trim().to_lowercase().as_str() {
            "train" | "training" => 0,
            "valid" | "validation" | "val" | "dev" => 1,
            "test" | "testing" => 2,
            _ => {
                return Err(StepError::new(format!(
                    "{file}: record `{}` (#{}) has `{col}` = {v:?}; expected train, valid or test",
                    ids(i),
                    i + 1
                )));
            }
        };
        out[k].push(i);
    }
    Ok(out)
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: SplitParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let df = table::read_table(&path)?;
    let n = df.height();
    let file = path.display().to_string();
    let classes = match &p.stratify {
        Some(c) => Some(column_as_strings(&df, c, &path, "stratify")?),
        None => None,
    };
    // With `group`, the units split are the groups (first-appearance order), then expanded.
    let (units, members): (usize, Option<Vec<Vec<usize>>>) = match &p.group {
        Some(col) => {
            let values = column_as_strings(&df, col, &path, "group")?;
            let mut index = std::collections::HashMap::new();
            let mut members: Vec<Vec<usize>> = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let g = *index.entry(v.as_str()).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                members[g].push(i);
            }
            (members.len(), Some(members))
        }
        None => (n, None),
    };
    let unit_classes: Option<Vec<String>> = match (&classes, &members) {
        (Some(c), Some(m)) => Some(m.iter().map(|rows| c[rows[0]].clone()).collect()),
        (c, _) => c.clone(),
    };
    let parts: [Vec<usize>; 3] = if let Some(col) = &p.by_column {
        let values = column_as_strings(&df, col, &path, "by_column")?;
        by_column(&values, |i| super::row_id(&df, i), &file, col)?
    } else if let (Some(k), Some(i)) = (p.folds, p.fold) {
        let fold = fold_of(units, unit_classes.as_deref(), k, p.seed);
        let test: Vec<usize> = (0..units).filter(|&r| fold[r] == i).collect();
        let rest: Vec<usize> = (0..units).filter(|&r| fold[r] != i).collect();
        let v = p.valid_fraction.unwrap_or(0.0);
        let rest_classes: Option<Vec<String>> = unit_classes
            .as_ref()
            .map(|c| rest.iter().map(|&r| c[r].clone()).collect());
        let [tr, va, _] = assign(
            rest.len(),
            rest_classes.as_deref(),
            [1.0 - v, v, 0.0],
            p.seed.wrapping_add(1),
        );
        expand(
            [
                tr.into_iter().map(|j| rest[j]).collect(),
                va.into_iter().map(|j| rest[j]).collect(),
                test,
            ],
            members.as_deref(),
        )
    } else {
        expand(
            assign(
                units,
                unit_classes.as_deref(),
                p.ratios.unwrap_or([0.8, 0.1, 0.1]),
                p.seed,
            ),
            members.as_deref(),
        )
    };
    if let Some(m) = &members {
        writeln!(ctx.log, "{} rows in {} groups", n, m.len())?;
    }
    let names = ["train", "valid", "test"];
    let mut metrics = serde_json::Map::new();
    let mut per_class = serde_json::Map::new();
    for (k, rows) in parts.iter().enumerate() {
        let mut t = super::take_rows(&df, rows)?;
        write_table_with(
            &mut t,
            &ctx.out.join(format!("{}.parquet", names[k])),
            &meta,
        )?;
        writeln!(ctx.log, "{}: {} rows", names[k], rows.len())?;
        metrics.insert(names[k].into(), rows.len().into());
        if let Some(c) = &classes {
            per_class.insert(names[k].into(), class_counts(c, rows).into());
        }
    }
    metrics.insert("rows".into(), n.into());
    if classes.is_some() {
        metrics.insert("classes".into(), per_class.into());
    }
    crate::steps::write_metrics(ctx.out, &metrics.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_split_is_deterministic_and_complete() {
        let a = assign(100, None, [0.8, 0.1, 0.1], 42);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [80, 10, 10]);
        assert_eq!(a, assign(100, None, [0.8, 0.1, 0.1], 42));
        assert_ne!(a, assign(100, None, [0.8, 0.1, 0.1], 43));
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        let b = assign(10, None, [0.7, 0.0, 0.3], 1);
        assert_eq!((b[0].len(), b[1].len(), b[2].len()), (7, 0, 3));
    }

    #[test]
    fn stratified_split_keeps_proportions() {
        let classes: Vec<String> = (0..100)
            .map(|i| if i < 80 { "n" } else { "y" }.to_string())
            .collect();
        let [tr, va, te] = assign(100, Some(&classes), [0.5, 0.25, 0.25], 3);
        let count = |v: &[usize], c: &str| v.iter().filter(|&&i| classes[i] == c).count();
        assert_eq!((count(&tr, "n"), count(&tr, "y")), (40, 10));
        assert_eq!((count(&va, "n"), count(&va, "y")), (20, 5));
        assert_eq!((count(&te, "n"), count(&te, "y")), (20, 5));
        // Uneven classes: split sizes stay exact, classes within one row of proportional.
        let classes: Vec<String> = (0..7).map(|i| (i % 2).to_string()).collect();
        let [tr, va, te] = assign(7, Some(&classes), [0.5, 0.0, 0.5], 1);
        assert_eq!((tr.len(), va.len(), te.len()), (4, 0, 3));
    }

    #[test]
    fn k_folds_partition_the_rows() {
        let classes: Vec<String> = (0..23).map(|i| (i % 3).to_string()).collect();
        for strat in [None, Some(classes.as_slice())] {
            let f = fold_of(23, strat, 5, 9);
            let sizes: Vec<usize> = (0..5)
                .map(|k| f.iter().filter(|&&x| x == k).count())
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), 23);
            assert!(sizes.iter().all(|&s| s == 4 || s == 5), "{sizes:?}");
            assert_eq!(f, fold_of(23, strat, 5, 9));
        }
    }

    #[test]
    fn by_column_maps_names_and_rejects_others() {
        let v: Vec<String> = ["train", "test", "validation", "TRAIN"]
            .map(String::from)
            .to_vec();
        let p = by_column(&v, |i| format!("r{i}"), "f.csv", "split").unwrap();
        assert_eq!(p, [vec![0, 3], vec![2], vec![1]]);
        let v: Vec<String> = ["train", "holdout"].map(String::from).to_vec();
        let e = by_column(&v, |i| format!("r{i}"), "f.csv", "split")
            .unwrap_err()
            .message;
        assert!(
            e.contains("f.csv: record `r1` (#2) has `split` = \"holdout\""),
            "{e}"
        );
    }

    #[test]
    fn checks_parameters() {
        let p = |v: serde_json::Value| serde_json::from_value::<SplitParams>(v).unwrap();
        assert!(
            check(&p(
                serde_json::json!({"input": "x", "ratios": [0.5, 0.2, 0.2]})
            ))
            .is_err()
        );
        assert!(check(&p(serde_json::json!({"input": "x", "folds": 5}))).is_err());
        assert!(check(&p(serde_json::json!({"input": "x", "folds": 5, "fold": 5}))).is_err());
        assert!(check(&p(serde_json::json!({"input": "x", "folds": 5, "fold": 4}))).is_ok());
        assert!(check(&p(serde_json::json!({"input": "x", "by_column": "split"}))).is_ok());
    }
}
