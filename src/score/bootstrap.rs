//! Seeded bootstrap percentile intervals: how much a score would move on another sample of the
//! same size, so a CI gate can tell a real regression from noise.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::ScoreError;

/// A confidence interval, written to JSON as `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval(pub f64, pub f64);

impl Interval {
    /// Lower bound.
    pub fn lo(&self) -> f64 {
        self.0
    }

    /// Upper bound.
    pub fn hi(&self) -> f64 {
        self.1
    }
}

/// 95 % percentile bootstrap interval of `metric` over `rows`: `resamples` samples of
/// `rows.len()` rows drawn with replacement by a `StdRng` seeded with `seed` (same seed, same
/// rows, same `rand` version: same interval), then numpy's linear 2.5th and 97.5th
/// percentiles of the metric's values. Resamples where the metric is undefined (`None`, say an
/// AUROC drawn with one class) are left out; `None` when all are.
pub fn bootstrap_ci<T: Clone>(
    rows: &[T],
    mut metric: impl FnMut(&[T]) -> Option<f64>,
    resamples: usize,
    seed: u64,
) -> Result<Option<Interval>, ScoreError> {
    if rows.is_empty() {
        return Err(ScoreError::Empty);
    }
    if resamples == 0 {
        return Err(ScoreError::NoResamples);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sample: Vec<T> = Vec::with_capacity(rows.len());
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        sample.clear();
        sample.extend((0..rows.len()).map(|_| rows[rng.random_range(0..rows.len())].clone()));
        if let Some(v) = metric(&sample).filter(|v| !v.is_nan()) {
            values.push(v);
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    values.sort_by(f64::total_cmp);
    Ok(Some(Interval(
        percentile(&values, 2.5),
        percentile(&values, 97.5),
    )))
}

/// The `q`-th percentile (0–100) of sorted, non-empty `values`, interpolated linearly between
/// neighbours as numpy's default `percentile` (including its two-sided lerp).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * (q / 100.0);
    let lo = (h.floor() as usize).min(sorted.len() - 1);
    let hi = (lo + 1).min(sorted.len() - 1);
    let (a, b, t) = (sorted[lo], sorted[hi], h - lo as f64);
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accuracy(rows: &[bool]) -> Option<f64> {
        Some(rows.iter().filter(|&&r| r).count() as f64 / rows.len() as f64)
    }

    #[test]
    fn same_seed_same_interval_and_it_brackets_the_estimate() {
        let rows: Vec<bool> = (0..200).map(|i| i % 4 != 0).collect(); // accuracy 0.75
        let a = bootstrap_ci(&rows, accuracy, 1000, 7).unwrap().unwrap();
        assert_eq!(Some(a), bootstrap_ci(&rows, accuracy, 1000, 7).unwrap());
        // Accuracy takes few values (multiples of 1/200); a mean of reals shows the seed.
        let reals: Vec<f64> = (0..50).map(|i| (i as f64).sqrt()).collect();
        let mean = |v: &[f64]| Some(v.iter().sum::<f64>() / v.len() as f64);
        assert_ne!(
            bootstrap_ci(&reals, mean, 200, 7).unwrap(),
            bootstrap_ci(&reals, mean, 200, 8).unwrap()
        );
        assert!(a.lo() < 0.75 && 0.75 < a.hi(), "{a:?}");
        // Binomial standard error √(.75·.25/200) ≈ 0.031: the interval is about ±1.96 of it.
        let half = (a.hi() - a.lo()) / 2.0;
        assert!((0.045..0.075).contains(&half), "{a:?}");
    }

    #[test]
    fn undefined_resamples_are_left_out() {
        let rows = [1.0, 2.0];
        assert_eq!(bootstrap_ci(&rows, |_| None, 10, 1).unwrap(), None);
        assert_eq!(
            bootstrap_ci(&rows, |_| Some(3.0), 10, 1).unwrap(),
            Some(Interval(3.0, 3.0))
        );
        assert_eq!(
            bootstrap_ci::<f64>(&[], |_| Some(1.0), 10, 1).unwrap_err(),
            ScoreError::Empty
        );
        assert_eq!(
            bootstrap_ci(&rows, |_| Some(1.0), 0, 1).unwrap_err(),
            ScoreError::NoResamples
        );
        let json = serde_json::to_string(&Interval(0.25, 0.5)).unwrap();
        assert_eq!(json, "[0.25,0.5]");
    }
}
