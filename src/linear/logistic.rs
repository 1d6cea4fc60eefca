//! Logistic regression with an L2 penalty on the weights (not the intercepts), as
//! scikit-learn's `LogisticRegression(C=1/l2, solver="lbfgs")`:
//!
//! - two classes: one weight vector, p(second class) = σ(w·x + b);
//! - more: one weight vector per class, p = softmax(W x + b) (the multinomial model, which
//!   the penalty makes identifiable).
//!
//! It minimises the mean cross-entropy plus `l2 / (2 n) · ‖W‖²` (sklearn's objective divided
//! by `n C`: the same minimum), with L-BFGS from zero.

use super::{LinearError, Matrix, dot};
use crate::linear::lbfgs::{Lbfgs, Minimum};

/// A fitted logistic regression.
#[derive(Debug, Clone)]
pub struct Logistic {
    /// Number of classes (at least 2).
    pub classes: usize,
    /// One row of weights for two classes (the second class against the first), else one per
    /// class.
    pub coef: Matrix,
    /// One intercept per row of `coef`.
    pub intercept: Vec<f64>,
    /// How the fit went: iterations, objective, gradient, converged.
    pub fit: Minimum,
}

/// `ln(1 + eˣ)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Logistic {
    /// Fit on rows `x` with class indices `y` (each below `classes`), penalty `l2` (> 0;
    /// sklearn's `1 / C`).
    pub fn fit(
        x: &Matrix,
        y: &[usize],
        classes: usize,
        l2: f64,
        solver: &Lbfgs,
    ) -> Result<Logistic, LinearError> {
        let (n, d) = (x.rows, x.cols);
        if n == 0 {
            return Err(LinearError::Empty);
        }
        if y.len() != n {
            return Err(LinearError::Length(y.len(), n));
        }
        if classes < 2 {
            return Err(LinearError::OneClass(classes));
        }
        assert!(y.iter().all(|&c| c < classes), "class index out of range");
        if !(l2 > 0.0 && l2.is_finite()) {
            return Err(LinearError::Penalty(l2));
        }
        if x.data.iter().any(|v| !v.is_finite()) {
            return Err(LinearError::NotFinite);
        }
        let rows = if classes == 2 { 1 } else { classes };
        let scale = 1.0 / n as f64;
        let penalty = l2 * scale;
        // Parameters: `rows × d` weights, then `rows` intercepts.
        let objective = |theta: &[f64], grad: &mut [f64]| -> f64 {
            let (w, b) = theta.split_at(rows * d);
            grad.fill(0.0);
            let (gw, gb) = grad.split_at_mut(rows * d);
            let mut z = vec![0.0; rows];
            let mut loss = 0.0;
            for (i, &yi) in y.iter().enumerate() {
                let xi = x.row(i);
                for (k, zk) in z.iter_mut().enumerate() {
                    *zk = b[k] + dot(&w[k * d..(k + 1) * d], xi);
                }
                if rows == 1 {
                    let t = (yi == 1) as u8 as f64;
                    loss += softplus(z[0]) - t * z[0];
                    z[0] = sigmoid(z[0]) - t;
                } else {
                    let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                    let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
                    loss += lse - z[yi];
                    for (k, zk) in z.iter_mut().enumerate() {
                        *zk = (*zk - lse).exp() - (k == yi) as u8 as f64;
                    }
                }
                // z now holds ∂loss/∂z for this row.
                for (k, &r) in z.iter().enumerate() {
                    gb[k] += r;
                    super::axpy(r, xi, &mut gw[k * d..(k + 1) * d]);
                }
            }
            for (g, &wj) in gw.iter_mut().zip(w) {
                *g = *g * scale + penalty * wj;
            }
            gb.iter_mut().for_each(|g| *g *= scale);
            loss * scale + 0.5 * penalty * dot(w, w)
        };
        let fit = solver.minimize(objective, vec![0.0; rows * (d + 1)]);
        let coef = Matrix {
            rows,
            cols: d,
            data: fit.x[..rows * d].to_vec(),
        };
        let intercept = fit.x[rows * d..].to_vec();
        Ok(Logistic {
            classes,
            coef,
            intercept,
            fit,
        })
    }

    /// Class probabilities of every row: `x.rows × classes`.
    pub fn probabilities(&self, x: &Matrix) -> Matrix {
        assert_eq!(x.cols, self.coef.cols, "feature count");
        let mut out = Matrix::zeros(x.rows, self.classes);
        for i in 0..x.rows {
            let xi = x.row(i);
            let z: Vec<f64> = (0..self.coef.rows)
                .map(|k| self.intercept[k] + dot(self.coef.row(k), xi))
                .collect();
            let p = out.row_mut(i);
            if self.coef.rows == 1 {
                p[1] = sigmoid(z[0]);
                p[0] = sigmoid(-z[0]);
            } else {
                let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                for (pk, zk) in p.iter_mut().zip(&z) {
                    *pk = (zk - m).exp();
                }
                let sum: f64 = p.iter().sum();
                p.iter_mut().for_each(|v| *v /= sum);
            }
        }
        out
    }
}

/// The most probable class of each row (the first on ties, as numpy's argmax).
pub fn argmax_rows(p: &Matrix) -> Vec<usize> {
    (0..p.rows)
        .map(|i| {
            p.row(i)
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (k, &v)| {
                    if v > best.1 { (k, v) } else { best }
                })
                .0
        })
        .collect()
}
