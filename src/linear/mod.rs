//! Linear models on plain `f64` vectors: L2-penalised logistic regression (binary and
//! multinomial, fitted by L-BFGS) and ridge regression (closed form), as scikit-learn's
//! `LogisticRegression(C=1/l2)` and `Ridge(alpha)` define them. The baselines of
//! `baseline.classify` / `baseline.regress` fit them; a probe on embeddings can too.
//!
//! Written by hand rather than taken from a crate. `linfa-logistic` / `linfa-linear` 0.7 are
//! the well-kept candidates, but they pull `ndarray` 0.15 (a third copy beside the 0.16 and
//! 0.17 already in the tree), `argmin` + `argmin-math`, `linfa` and `ndarray-stats`, and
//! `linfa-linear` a LAPACK binding or `linfa-linalg`: several minutes of compile time on the
//! 2-core machine for ~400 lines of arithmetic. linfa's logistic regression also penalises
//! the intercept, and its multinomial model is not sklearn's, so its numbers would not match
//! the reference we test against. burn would run these on tensors, but full-batch problems
//! of a few thousand rows by a few hundred features need no autodiff or device: f64 loops are
//! exact enough to match sklearn to 1e-6 and run in milliseconds.
//!
//! Everything here is sequential and free of randomness, so the same data gives the same
//! bits on every run (a rerun of a baseline step writes identical bytes).

mod lbfgs;
mod logistic;
mod ridge;

pub use lbfgs::{Lbfgs, Minimum, Stop};
pub use logistic::{Logistic, argmax_rows};
pub use ridge::Ridge;

/// A dense row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows × cols` values, row after row.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// A matrix from its rows (all of the same length).
    pub fn from_rows(rows: &[Vec<f64>]) -> Matrix {
        let cols = rows.first().map_or(0, Vec::len);
        assert!(rows.iter().all(|r| r.len() == cols), "ragged rows");
        Matrix {
            rows: rows.len(),
            cols,
            data: rows.concat(),
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Centring and scaling of features to zero mean and unit variance on the training rows, as
/// scikit-learn's `StandardScaler` (population variance; a constant feature keeps scale 1). An
/// L2 penalty then weighs every feature alike whatever its units.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Means and standard deviations of the columns of `x`.
    pub fn fit(x: &Matrix) -> Standardizer {
        let n = x.rows.max(1) as f64;
        let mut mean = vec![0.0; x.cols];
        for i in 0..x.rows {
            axpy(1.0, x.row(i), &mut mean);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; x.cols];
        for i in 0..x.rows {
            for ((v, xi), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
                *v += (xi - m) * (xi - m);
            }
        }
        // A column whose values are all equal is constant: rounding in the mean must not
        // give it a tiny spread to divide by.
        let constant: Vec<bool> = (0..x.cols)
            .map(|j| (1..x.rows).all(|i| x.data[i * x.cols + j] == x.data[j]))
            .collect();
        let scale = var
            .iter()
            .zip(constant)
            .map(|(v, c)| if c { 1.0 } else { (v / n).sqrt() })
            .collect();
        Standardizer { mean, scale }
    }

    /// Standardise the rows of `x` in place.
    pub fn apply(&self, x: &mut Matrix) {
        for i in 0..x.rows {
            for ((v, m), s) in x.row_mut(i).iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LinearError {
    #[error("no rows to fit")]
    Empty,
    #[error("{0} labels for {1} rows")]
    Length(usize, usize),
    #[error("a classifier needs at least two classes; the training rows have {0}")]
    OneClass(usize),
    #[error("the penalty must be a positive number, not {0}")]
    Penalty(f64),
    #[error("a value is not finite (NaN or infinite)")]
    NotFinite,
    #[error("the system is singular: no unique solution (raise the penalty)")]
    Singular,
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four running sums, so the compiler can keep them in vector lanes (one sum is a chain of
    // dependent additions); the order is fixed, so results do not depend on the machine.
    let n = a.len().min(b.len());
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    let mut acc = [0.0f64; 4];
    for (x, y) in a4.zip(b4) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y += a * x`.
pub(crate) fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Solve `A x = b` for a symmetric positive definite `A` (`n × n`, row-major) by Cholesky.
pub(crate) fn cholesky_solve(
    mut a: Vec<f64>,
    n: usize,
    b: &[f64],
) -> Result<Vec<f64>, LinearError> {
    // A = L Lᵀ, L stored in the lower triangle of `a` (row-major, so rows are contiguous).
    for j in 0..n {
        let d = a[j * n + j] - dot(&a[j * n..j * n + j], &a[j * n..j * n + j]);
        if d <= 0.0 || !d.is_finite() {
            return Err(LinearError::Singular);
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let s = dot(&a[i * n..i * n + j], &a[j * n..j * n + j]);
            a[i * n + j] = (a[i * n + j] - s) / d;
        }
    }
    // L y = b, then Lᵀ x = y.
    let mut x = b.to_vec();
    for i in 0..n {
        let s = dot(&a[i * n..i * n + i], &x[..i]);
        x[i] = (x[i] - s) / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = x[i];
        for k in i + 1..n {
            s -= a[k * n + i] * x[k];
        }
        x[i] = s / a[i * n + i];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_systems() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]], x = [1, -2, 3].
        let a = vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let b = [4.0 * 1.0 + 2.0 * -2.0, 2.0 - 10.0 + 3.0, -2.0 + 9.0];
        let x = cholesky_solve(a, 3, &b).unwrap();
        for (got, want) in x.iter().zip([1.0, -2.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
        let singular = vec![1.0, 1.0, 1.0, 1.0];
        assert_eq!(
            cholesky_solve(singular, 2, &[1.0, 1.0]),
            Err(LinearError::Singular)
        );
    }

    /// scikit-learn's fits of small fixed problems (scripts/make_baseline_reference.py).
    fn reference() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/baselines/reference.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn matrix(v: &serde_json::Value) -> Matrix {
        let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
        Matrix::from_rows(&rows)
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn assert_close(name: &str, what: &str, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {what} length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "{name}: {what}[{i}] = {g}, sklearn {w} (|Δ| {:.2e})",
                (g - w).abs()
            );
        }
    }

    #[test]
    fn logistic_regression_matches_sklearn() {
        let r = reference();
        let cases = r["logistic"].as_array().unwrap();
        assert!(cases.len() >= 5);
        let solver = Lbfgs {
            tol: 1e-10,
            ..Lbfgs::default()
        };
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let x = matrix(&c["x"]);
            let y: Vec<usize> = serde_json::from_value(c["y"].clone()).unwrap();
            let classes = c["classes"].as_u64().unwrap() as usize;
            let m = Logistic::fit(&x, &y, classes, c["l2"].as_f64().unwrap(), &solver).unwrap();
            assert!(m.fit.converged, "{name}: {:?}", m.fit);
            assert_close(name, "coef", &m.coef.data, &matrix(&c["coef"]).data, 1e-6);
            assert_close(
                name,
                "intercept",
                &m.intercept,
                &floats(&c["intercept"]),
                1e-6,
            );
            let p = m.probabilities(&matrix(&c["x_test"]));
            assert_close(
                name,
                "probabilities",
                &p.data,
                &matrix(&c["probabilities"]).data,
                1e-7,
            );
        }
    }

    #[test]
    fn ridge_matches_sklearn() {
        let r = reference();
        let cases = r["ridge"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let x = matrix(&c["x"]);
            let m = Ridge::fit(&x, &floats(&c["y"]), c["alpha"].as_f64().unwrap()).unwrap();
            assert_close(name, "coef", &m.coef, &floats(&c["coef"]), 1e-9);
            assert_close(
                name,
                "intercept",
                &[m.intercept],
                &[c["intercept"].as_f64().unwrap()],
                1e-9,
            );
            let p = m.predict(&matrix(&c["x_test"]));
            assert_close(name, "predictions", &p, &floats(&c["predictions"]), 1e-9);
        }
    }

    #[test]
    fn bad_problems_are_errors_and_fits_repeat_exactly() {
        let x = Matrix::from_rows(&[vec![0.0, 1.0], vec![1.0, 0.0], vec![1.0, 1.0]]);
        let solver = Lbfgs::default();
        assert_eq!(
            Logistic::fit(&x, &[0, 0, 0], 1, 1.0, &solver).unwrap_err(),
            LinearError::OneClass(1)
        );
        assert_eq!(
            Logistic::fit(&x, &[0, 1, 1], 2, 0.0, &solver).unwrap_err(),
            LinearError::Penalty(0.0)
        );
        assert_eq!(
            Ridge::fit(&Matrix::zeros(0, 2), &[], 1.0).unwrap_err(),
            LinearError::Empty
        );
        assert_eq!(
            Ridge::fit(&x, &[1.0, f64::NAN, 2.0], 1.0).unwrap_err(),
            LinearError::NotFinite
        );
        let a = Logistic::fit(&x, &[0, 1, 2], 3, 1.0, &solver).unwrap();
        let b = Logistic::fit(&x, &[0, 1, 2], 3, 1.0, &solver).unwrap();
        assert_eq!(a.coef, b.coef);
        assert_eq!(a.intercept, b.intercept);
    }
}
