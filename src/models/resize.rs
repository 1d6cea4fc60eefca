//! Growing a model's vocabulary with its tokenizer, as transformers'
//! `resize_token_embeddings(n)` does by default (`mean_resizing=True`): each new row of the
//! input embedding and of an untied output layer is drawn from a normal with the old rows'
//! mean and 1e-9 times their covariance (the mean itself when the covariance is not positive
//! definite), a new output bias is the old biases' mean, and `vocab_size` is written. Old rows
//! keep their values, so every old token id means what it meant.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use super::arch::ArchConfig;
use super::error::ModelError;
use super::io::weights::{HostTensor, Weights};

/// What a resize did.
#[derive(Debug, Clone, PartialEq)]
pub struct Resized {
    pub old_vocab: usize,
    pub new_vocab: usize,
    /// The tensors that grew.
    pub tensors: Vec<String>,
    /// Whether new rows were drawn around the mean (false: the covariance was not positive
    /// definite and every new row is the mean).
    pub sampled: bool,
}

/// Grow `config`'s vocabulary and the tensors with a row per token in `w` to `new_vocab`
/// rows, new rows seeded by `seed`. A smaller `new_vocab` than the model's is an error (ids
/// past it would be cut off); an equal one changes nothing.
pub fn resize_vocab(
    config: &mut ArchConfig,
    w: &mut Weights,
    new_vocab: usize,
    seed: u64,
) -> Result<Resized, ModelError> {
    let old = config.vocab_size();
    if new_vocab < old {
        return Err(ModelError::Config(format!(
            "the tokenizer has {new_vocab} tokens, fewer than the model's {old} rows; resizing \
             only grows a vocabulary (a smaller one would cut off token ids the model knows)"
        )));
    }
    let rows = &config.architecture().vocab_rows;
    let mut resized = Resized {
        old_vocab: old,
        new_vocab,
        tensors: Vec::new(),
        sampled: true,
    };
    if new_vocab == old {
        return Ok(resized);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let matrices = std::iter::once(rows.embedding).chain(rows.outputs.iter().copied());
    for name in matrices {
        let Some(t) = w.remove(name) else { continue };
        check_rows(name, &t, old)?;
        let (t, sampled) = grow_matrix(t, new_vocab, &mut rng);
        resized.sampled &= sampled;
        w.insert(name, t.shape, t.values);
        resized.tensors.push(name.to_string());
    }
    for name in rows.biases {
        let Some(mut t) = w.remove(name) else {
            continue;
        };
        check_rows(name, &t, old)?;
        let mean = t.values.iter().map(|&v| v as f64).sum::<f64>() / old as f64;
        t.values.resize(new_vocab, mean as f32);
        w.insert(name, vec![new_vocab], t.values);
        resized.tensors.push(name.to_string());
    }
    config.set_vocab_size(new_vocab);
    Ok(resized)
}

fn check_rows(name: &str, t: &HostTensor, old: usize) -> Result<(), ModelError> {
    if t.shape.first() != Some(&old) {
        return Err(ModelError::Config(format!(
            "`{name}` has shape {:?}, but the config's vocab_size is {old}",
            t.shape
        )));
    }
    Ok(())
}

/// `t` [old, d] with rows appended up to `n`: mean + √(1e-9)·L·z, L the Cholesky factor of
/// the rows' covariance; the mean alone when that is not positive definite.
fn grow_matrix(mut t: HostTensor, n: usize, rng: &mut StdRng) -> (HostTensor, bool) {
    let (old, d) = (t.shape[0], t.shape[1]);
    let x = &t.values;
    let mut mean = vec![0.0f64; d];
    for row in x.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= old as f64);
    let cov = covariance(x, &mean, old, d);
    let chol = cholesky(cov.iter().map(|c| c * 1e-9).collect(), d);
    let sampled = chol.is_some();
    for _ in old..n {
        let row: Vec<f32> = match &chol {
            Some(l) => {
                let z: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
                (0..d)
                    .map(|i| {
                        let lz: f64 = (0..=i).map(|k| l[i * d + k] * z[k]).sum();
                        (mean[i] + lz) as f32
                    })
                    .collect()
            }
            None => mean.iter().map(|&m| m as f32).collect(),
        };
        t.values.extend(row);
    }
    t.shape = vec![n, d];
    (t, sampled)
}

/// (x − mean)ᵀ(x − mean) / rows, [d, d] row-major, accumulated in f64.
fn covariance(x: &[f32], mean: &[f64], rows: usize, d: usize) -> Vec<f64> {
    let mut cov = vec![0.0f64; d * d];
    let mut centred = vec![0.0f64; d];
    for row in x.chunks(d).take(rows) {
        for ((c, &v), m) in centred.iter_mut().zip(row).zip(mean) {
            *c = v as f64 - m;
        }
        for i in 0..d {
            let ci = centred[i];
            let out = &mut cov[i * d..i * d + i + 1];
            for (o, &cj) in out.iter_mut().zip(&centred[..=i]) {
                *o += ci * cj;
            }
        }
    }
    for i in 0..d {
        for j in 0..=i {
            let v = cov[i * d + j] / rows as f64;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    cov
}

/// The lower Cholesky factor of a symmetric `a` [d, d], or `None` when `a` is not positive
/// definite (PyTorch's `positive_definite` check fails on the same matrices).
fn cholesky(a: Vec<f64>, d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + j] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The factor reproduces its matrix; a singular matrix has none.
    #[test]
    fn cholesky_factors_positive_definite_matrices_only() {
        let a = vec![4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let l = cholesky(a.clone(), 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| l[i * 3 + k] * l[j * 3 + k]).sum();
                assert!((v - a[i * 3 + j]).abs() < 1e-12);
            }
        }
        assert!(cholesky(vec![1.0, 1.0, 1.0, 1.0], 2).is_none());
    }

    /// Old rows stay; new rows sit at the old rows' mean, spread by √1e-9 of their spread.
    #[test]
    fn new_rows_are_drawn_around_the_mean() {
        let (old, d) = (50, 4);
        let mut rng = StdRng::seed_from_u64(1);
        let values: Vec<f32> = (0..old * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect::<Vec<f64>>()
            .iter()
            .map(|&v| v as f32 + 1.0)
            .collect();
        let t = HostTensor {
            shape: vec![old, d],
            values: values.clone(),
        };
        let (grown, sampled) = grow_matrix(t, old + 3, &mut rng);
        assert!(sampled);
        assert_eq!(grown.shape, vec![old + 3, d]);
        assert_eq!(&grown.values[..old * d], &values[..]);
        for j in 0..d {
            let mean: f32 = (0..old).map(|i| values[i * d + j]).sum::<f32>() / old as f32;
            for i in old..old + 3 {
                let v = grown.values[i * d + j];
                assert!((v - mean).abs() < 1e-3, "row {i}: {v} vs mean {mean}");
                assert_ne!(v, mean);
            }
        }
    }
}
