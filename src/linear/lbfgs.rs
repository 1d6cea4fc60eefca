//! Limited-memory BFGS for smooth convex objectives (Nocedal & Wright, *Numerical
//! Optimization*, algorithms 7.4 and 7.5), with a backtracking line search on the Armijo
//! condition. Enough for the logistic regression here: the objective is strictly convex (an
//! L2 penalty), so a step along an L-BFGS direction that decreases it is always found, and the
//! curvature pairs are kept only when they are positive.

use super::{axpy, dot};

/// Settings of the minimiser.
#[derive(Debug, Clone, Copy)]
pub struct Lbfgs {
    /// Curvature pairs remembered (scipy's default: 10).
    pub memory: usize,
    /// Stop after this many iterations, converged or not.
    pub max_iter: usize,
    /// Converged when the largest gradient component is at most this.
    pub tol: f64,
}

impl Default for Lbfgs {
    fn default() -> Lbfgs {
        Lbfgs {
            memory: 10,
            max_iter: 10_000,
            tol: 1e-8,
        }
    }
}

/// Where the minimiser stopped.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    /// The objective at `x`.
    pub value: f64,
    /// The largest gradient component at `x`.
    pub gradient: f64,
    pub iterations: usize,
    /// Objective and gradient evaluations, line search included.
    pub evaluations: usize,
    /// Why it stopped: [`Stop::Gradient`] and [`Stop::Reduction`] are convergence.
    pub stop: Stop,
    pub converged: bool,
}

/// Why the minimiser stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The largest gradient component reached the tolerance.
    Gradient,
    /// A step reduced the objective by less than 64 ε relative to it (scipy's `factr` test,
    /// as scikit-learn sets it): the minimum to floating-point precision.
    Reduction,
    /// No step along the search direction decreased the objective.
    LineSearch,
    /// The iteration limit.
    MaxIter,
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

impl Lbfgs {
    /// Minimise `f`, which returns the objective at `x` and writes its gradient into the
    /// second argument, starting from `x0`.
    pub fn minimize(&self, mut f: impl FnMut(&[f64], &mut [f64]) -> f64, x0: Vec<f64>) -> Minimum {
        let n = x0.len();
        let mut x = x0;
        let mut g = vec![0.0; n];
        let mut value = f(&x, &mut g);
        let mut evaluations = 1;
        // Curvature pairs s = Δx, y = Δg and ρ = 1 / yᵀs, oldest first.
        let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
            std::collections::VecDeque::with_capacity(self.memory);
        let mut x_new = vec![0.0; n];
        let mut g_new = vec![0.0; n];
        let mut alpha = vec![0.0; self.memory];
        let mut iterations = 0;
        let mut stop = Stop::MaxIter;
        if max_abs(&g) <= self.tol {
            stop = Stop::Gradient;
        }
        while stop == Stop::MaxIter && iterations < self.max_iter {
            // Two-loop recursion: d = -H g.
            let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
            for (j, (s, y, rho)) in pairs.iter().enumerate().rev() {
                alpha[j] = rho * dot(s, &d);
                axpy(-alpha[j], y, &mut d);
            }
            let step0 = match pairs.back() {
                Some((s, y, _)) => {
                    let gamma = dot(s, y) / dot(y, y);
                    d.iter_mut().for_each(|v| *v *= gamma);
                    1.0
                }
                // First step: along -g, at most unit length.
                None => 1.0f64.min(1.0 / dot(&g, &g).sqrt()),
            };
            for (j, (s, y, rho)) in pairs.iter().enumerate() {
                let beta = rho * dot(y, &d);
                axpy(alpha[j] - beta, s, &mut d);
            }
            let mut slope = dot(&g, &d);
            if slope >= 0.0 || !slope.is_finite() {
                // Not a descent direction (rounding): start the memory afresh.
                pairs.clear();
                d = g.iter().map(|v| -v).collect();
                slope = -dot(&g, &g);
            }
            // Backtracking: the first step that decreases f by at least 1e-4 of the slope.
            let mut t = step0;
            let mut accepted = None;
            for _ in 0..60 {
                for ((xn, xi), di) in x_new.iter_mut().zip(&x).zip(&d) {
                    *xn = xi + t * di;
                }
                let v = f(&x_new, &mut g_new);
                evaluations += 1;
                if v.is_finite() && v <= value + 1e-4 * t * slope {
                    accepted = Some(v);
                    break;
                }
                t *= 0.5;
            }
            let Some(v) = accepted else {
                stop = Stop::LineSearch;
                break;
            };
            iterations += 1;
            let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if sy > 1e-12 * dot(&y, &y) && sy > 0.0 {
                if pairs.len() == self.memory {
                    pairs.pop_front();
                }
                pairs.push_back((s, y, 1.0 / sy));
            }
            std::mem::swap(&mut x, &mut x_new);
            std::mem::swap(&mut g, &mut g_new);
            let reduction = (value - v) / value.abs().max(v.abs()).max(1.0);
            value = v;
            if max_abs(&g) <= self.tol {
                stop = Stop::Gradient;
            } else if reduction <= 64.0 * f64::EPSILON {
                stop = Stop::Reduction;
            }
        }
        Minimum {
            gradient: max_abs(&g),
            x,
            value,
            iterations,
            evaluations,
            converged: matches!(stop, Stop::Gradient | Stop::Reduction),
            stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_a_quadratic_and_rosenbrock() {
        // f = Σ c_i (x_i - i)², an ill-conditioned bowl.
        let c = [1.0, 10.0, 100.0, 1000.0];
        let m = Lbfgs::default().minimize(
            |x, g| {
                let mut f = 0.0;
                for i in 0..4 {
                    let r = x[i] - i as f64;
                    f += c[i] * r * r;
                    g[i] = 2.0 * c[i] * r;
                }
                f
            },
            vec![0.0; 4],
        );
        assert!(m.converged, "{m:?}");
        for (i, xi) in m.x.iter().enumerate() {
            assert!((xi - i as f64).abs() < 1e-9, "{m:?}");
        }
        // Rosenbrock: not convex, but L-BFGS with backtracking still reaches (1, 1).
        let m = Lbfgs::default().minimize(
            |x, g| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
            vec![-1.2, 1.0],
        );
        assert!(m.converged, "{m:?}");
        assert!(
            (m.x[0] - 1.0).abs() < 1e-7 && (m.x[1] - 1.0).abs() < 1e-7,
            "{m:?}"
        );
    }
}
