//! Logistic regression with an L2 penalty on the weights (not the intercepts), as
//! scikit-learn's `LogisticRegression(C=1/l2, solver="lbfgs")`:
//!
//! - two classes: one weight vector, p(second class) = σ(w·x + b);
//! - more: one weight vector per class, p = softmax(W x + b) (the multinomial model, which
//!   the penalty makes identifiable).
//!
//! It minimises the mean cross-entropy plus `l2 / (2 n) · ‖W‖²` (sklearn's objective divided
//! by `n C`: the same minimum), with L-BFGS from zero.

use rayon::prelude::*;

use super::{LinearError, Matrix, dot};

/// Rows per block of the parallel objective.
const BLOCK: usize = 2048;
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

/// The rows of a feature matrix as the fit reads them: as they are, or only their non-zero
/// entries when most are zero (one-hot features: one in five), which skips the zeros' work.
enum Rows<'a> {
    Dense(&'a Matrix),
    /// Row `i`'s entries are `entries[starts[i]..starts[i + 1]]`, as (column, value).
    Sparse {
        starts: Vec<usize>,
        entries: Vec<(u32, f64)>,
    },
}

impl<'a> Rows<'a> {
    fn new(x: &'a Matrix) -> Rows<'a> {
        let nonzero = x.data.iter().filter(|v| **v != 0.0).count();
        if nonzero * 2 > x.data.len() || x.cols > u32::MAX as usize {
            return Rows::Dense(x);
        }
        let mut starts = Vec::with_capacity(x.rows + 1);
        let mut entries = Vec::with_capacity(nonzero);
        for i in 0..x.rows {
            starts.push(entries.len());
            entries.extend(
                x.row(i)
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(j, &v)| (j as u32, v)),
            );
        }
        starts.push(entries.len());
        Rows::Sparse { starts, entries }
    }

    /// `w · row i`.
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        match self {
            Rows::Dense(x) => dot(w, x.row(i)),
            Rows::Sparse { starts, entries } => entries[starts[i]..starts[i + 1]]
                .iter()
                .map(|&(j, v)| w[j as usize] * v)
                .sum(),
        }
    }

    /// `g += a · row i`.
    fn axpy(&self, i: usize, a: f64, g: &mut [f64]) {
        match self {
            Rows::Dense(x) => super::axpy(a, x.row(i), g),
            Rows::Sparse { starts, entries } => {
                for &(j, v) in &entries[starts[i]..starts[i + 1]] {
                    g[j as usize] += a * v;
                }
            }
        }
    }
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
        // Parameters: `rows × d` weights, then `rows` intercepts. The data term is summed over
        // fixed blocks of rows in parallel, then the blocks in order: the same sums whatever
        // the number of threads.
        let rows_x = Rows::new(x);
        let objective = |theta: &[f64], grad: &mut [f64]| -> f64 {
            let (w, b) = theta.split_at(rows * d);
            let blocks: Vec<(f64, Vec<f64>)> = (0..n.div_ceil(BLOCK))
                .into_par_iter()
                .map(|blk| {
                    let mut g = vec![0.0; rows * (d + 1)];
                    let (gw, gb) = g.split_at_mut(rows * d);
                    let mut z = vec![0.0; rows];
                    let mut loss = 0.0;
                    let end = ((blk + 1) * BLOCK).min(n);
                    for (i, &yi) in y.iter().enumerate().take(end).skip(blk * BLOCK) {
                        for (k, zk) in z.iter_mut().enumerate() {
                            *zk = b[k] + rows_x.dot(i, &w[k * d..(k + 1) * d]);
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
                            rows_x.axpy(i, r, &mut gw[k * d..(k + 1) * d]);
                        }
                    }
                    (loss, g)
                })
                .collect();
            grad.fill(0.0);
            let mut loss = 0.0;
            for (l, g) in &blocks {
                loss += l;
                super::axpy(1.0, g, grad);
            }
            let (gw, gb) = grad.split_at_mut(rows * d);
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
