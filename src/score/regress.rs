//! Regression scores, as scikit-learn (`mean_squared_error`, `root_mean_squared_error`,
//! `mean_absolute_error`, `r2_score`) and SciPy (`pearsonr`, `spearmanr`) compute them.

use serde::Serialize;

use super::{ScoreError, finite, same_length};

/// Every regression score of a set of predictions: what `eval.regress` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegressionScores {
    /// Rows scored.
    pub rows: usize,
    pub mse: f64,
    /// √MSE, in the target's unit (the tutorial printed the MSE under this name).
    pub rmse: f64,
    pub mae: f64,
    /// `null` when either side is constant or there are fewer than two rows.
    pub pearson: Option<f64>,
    /// Pearson of average ranks; `null` as for Pearson.
    pub spearman: Option<f64>,
    /// `null` with fewer than two rows.
    pub r2: Option<f64>,
}

/// Every regression score of `pred` against `truth`; errors on empty, unequal or non-finite input.
pub fn regression(truth: &[f64], pred: &[f64]) -> Result<RegressionScores, ScoreError> {
    if truth.is_empty() {
        return Err(ScoreError::Empty);
    }
    same_length("the predictions", truth.len(), pred.len())?;
    finite("the true values", truth)?;
    finite("the predictions", pred)?;
    Ok(RegressionScores {
        rows: truth.len(),
        mse: mse(truth, pred),
        rmse: rmse(truth, pred),
        mae: mae(truth, pred),
        pearson: pearson(truth, pred),
        spearman: spearman(truth, pred),
        r2: r2(truth, pred),
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Mean squared error: penalises large misses most.
pub fn mse(truth: &[f64], pred: &[f64]) -> f64 {
    let sq: Vec<f64> = truth
        .iter()
        .zip(pred)
        .map(|(t, p)| (t - p).powi(2))
        .collect();
    mean(&sq)
}

/// Root mean squared error: the MSE back in the target's unit.
pub fn rmse(truth: &[f64], pred: &[f64]) -> f64 {
    mse(truth, pred).sqrt()
}

/// Mean absolute error: the typical miss, robust to a few large ones.
pub fn mae(truth: &[f64], pred: &[f64]) -> f64 {
    let abs: Vec<f64> = truth.iter().zip(pred).map(|(t, p)| (t - p).abs()).collect();
    mean(&abs)
}

fn constant(v: &[f64]) -> bool {
    v.iter().all(|&x| x == v[0])
}

/// Pearson correlation: how linearly the predictions follow the truth. `None` for fewer than
/// two rows or a constant side (SciPy returns NaN), clipped to [-1, 1] as SciPy does.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() < 2 || x.len() != y.len() || constant(x) || constant(y) {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks from 1, ties sharing their average rank (SciPy's `rankdata(method="average")`).
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman correlation: whether the predictions order the rows as the truth does, whatever
/// the scale. `None` as for [`pearson`].
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Coefficient of determination (sklearn's `r2_score`): the share of the truth's variance the
/// predictions explain. A constant truth gives 1 when predicted exactly, else 0 (sklearn's
/// `force_finite`); `None` with fewer than two rows (sklearn: NaN).
pub fn r2(truth: &[f64], pred: &[f64]) -> Option<f64> {
    if truth.len() < 2 {
        return None;
    }
    let residual: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    if constant(truth) {
        return Some(if residual == 0.0 { 1.0 } else { 0.0 });
    }
    let m = mean(truth);
    let total: f64 = truth.iter().map(|t| (t - m).powi(2)).sum();
    Some(1.0 - residual / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 5.0]),
            [2.5, 4.0, 2.5, 1.0]
        );
        assert_eq!(average_ranks(&[1.0, 1.0, 1.0]), [2.0, 2.0, 2.0]);
    }

    #[test]
    fn rmse_is_the_root_of_mse() {
        // The tutorial's defect: it printed the MSE (4.0 here) as "rmse".
        let s = regression(&[0.0, 0.0], &[2.0, -2.0]).unwrap();
        assert_eq!((s.mse, s.rmse, s.mae), (4.0, 2.0, 2.0));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(regression(&[], &[]).unwrap_err(), ScoreError::Empty);
        assert!(matches!(
            regression(&[1.0, 2.0], &[1.0]).unwrap_err(),
            ScoreError::LengthMismatch {
                expected: 2,
                got: 1,
                ..
            }
        ));
        assert!(matches!(
            regression(&[1.0, f64::INFINITY], &[1.0, 2.0]).unwrap_err(),
            ScoreError::NotFinite { row: 2, .. }
        ));
    }
}
