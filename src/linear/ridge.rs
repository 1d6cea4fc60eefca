//! Ridge regression as scikit-learn's `Ridge(alpha)`: minimise `‖y − X w − b‖² + α ‖w‖²`, the
//! intercept `b` not penalised. Solved exactly: centre `X` and `y` on their training means,
//! then the normal equations `(Xcᵀ Xc + α I) w = Xcᵀ yc` by Cholesky when there are no more
//! features than rows, else their dual `(Xc Xcᵀ + α I) a = yc`, `w = Xcᵀ a` (the same `w`,
//! from the smaller system); `b = ȳ − x̄·w`.

use super::{LinearError, Matrix, axpy, cholesky_solve, dot};

/// A fitted ridge regression.
#[derive(Debug, Clone)]
pub struct Ridge {
    pub coef: Vec<f64>,
    pub intercept: f64,
}

impl Ridge {
    /// Fit on rows `x` and targets `y` with penalty `alpha` (> 0).
    pub fn fit(x: &Matrix, y: &[f64], alpha: f64) -> Result<Ridge, LinearError> {
        let (n, d) = (x.rows, x.cols);
        if n == 0 {
            return Err(LinearError::Empty);
        }
        if y.len() != n {
            return Err(LinearError::Length(y.len(), n));
        }
        if !(alpha > 0.0 && alpha.is_finite()) {
            return Err(LinearError::Penalty(alpha));
        }
        if x.data.iter().chain(y).any(|v| !v.is_finite()) {
            return Err(LinearError::NotFinite);
        }
        let mut x_mean = vec![0.0; d];
        for i in 0..n {
            axpy(1.0, x.row(i), &mut x_mean);
        }
        x_mean.iter_mut().for_each(|v| *v /= n as f64);
        let y_mean = y.iter().sum::<f64>() / n as f64;
        let mut xc = x.clone();
        for i in 0..n {
            axpy(-1.0, &x_mean, xc.row_mut(i));
        }
        let yc: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
        let coef = if d <= n {
            // Primal: a d × d system. Lower triangle row by row, then mirrored.
            let mut a = vec![0.0; d * d];
            for i in 0..n {
                let r = xc.row(i);
                for j in 0..d {
                    if r[j] != 0.0 {
                        axpy(r[j], &r[..=j], &mut a[j * d..j * d + j + 1]);
                    }
                }
            }
            mirror_and_add(&mut a, d, alpha);
            let mut rhs = vec![0.0; d];
            for (i, &t) in yc.iter().enumerate() {
                axpy(t, xc.row(i), &mut rhs);
            }
            cholesky_solve(a, d, &rhs)?
        } else {
            // Dual: an n × n system of the rows' inner products.
            let mut k = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    k[i * n + j] = dot(xc.row(i), xc.row(j));
                }
            }
            mirror_and_add(&mut k, n, alpha);
            let a = cholesky_solve(k, n, &yc)?;
            let mut w = vec![0.0; d];
            for (i, &ai) in a.iter().enumerate() {
                axpy(ai, xc.row(i), &mut w);
            }
            w
        };
        let intercept = y_mean - dot(&x_mean, &coef);
        Ok(Ridge { coef, intercept })
    }

    /// Predictions for rows `x`.
    pub fn predict(&self, x: &Matrix) -> Vec<f64> {
        assert_eq!(x.cols, self.coef.len(), "feature count");
        (0..x.rows)
            .map(|i| self.intercept + dot(&self.coef, x.row(i)))
            .collect()
    }
}

/// Copy the lower triangle of the `m × m` matrix `a` to the upper one and add `alpha` to the
/// diagonal.
fn mirror_and_add(a: &mut [f64], m: usize, alpha: f64) {
    for j in 0..m {
        for k in 0..j {
            a[k * m + j] = a[j * m + k];
        }
        a[j * m + j] += alpha;
    }
}
