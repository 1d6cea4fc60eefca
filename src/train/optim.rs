//! AdamW as PyTorch and the HF Trainer run it, and global-norm gradient clipping.
//!
//! Written here rather than taken from burn-optim because parity needs three things burn's
//! doesn't give: PyTorch's defaults, no weight decay on biases and LayerNorm weights (the
//! Trainer's rule), and one global norm over all gradients (`clip_grad_norm_`). State is keyed
//! by parameter id, and the ids follow HF tensor names, so a checkpoint stores it by name.

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::models::Weights;
use crate::models::weights::{host, param_id};

/// AdamW hyper-parameters (PyTorch's defaults except weight decay, which the Trainer sets).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Moments of one parameter, flattened.
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW with per-parameter state.
pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    state: HashMap<ParamId, Moments<B::InnerBackend>>,
    no_decay: HashSet<ParamId>,
    /// Learning-rate factors of parameters trained at their own rate (a task head's).
    lr_factor: HashMap<ParamId, f64>,
    /// Optimizer steps taken (for bias correction).
    pub steps: u64,
}

/// Whether the HF Trainer exempts a tensor from weight decay (biases and LayerNorm weights).
pub fn decays(name: &str) -> bool {
    let lname = name.to_ascii_lowercase();
    !(name.ends_with(".bias")
        || lname.contains("layernorm")
        || lname.contains(".ln_")
        || lname.contains("ln_f")
        || lname.contains("norm."))
}

impl<B: AutodiffBackend> AdamW<B> {
    /// `names`: every parameter's HF name (to choose which decay).
    pub fn new<'a>(config: AdamWConfig, names: impl Iterator<Item = &'a str>) -> AdamW<B> {
        let no_decay = names.filter(|n| !decays(n)).map(param_id).collect();
        AdamW {
            config,
            state: HashMap::new(),
            no_decay,
            lr_factor: HashMap::new(),
            steps: 0,
        }
    }

    /// Train the tensors `names` at `factor` times the scheduled learning rate.
    pub fn scale_lr<'a>(&mut self, names: impl Iterator<Item = &'a str>, factor: f64) {
        for name in names {
            self.lr_factor.insert(param_id(name), factor);
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step<M: AutodiffModule<B>>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.steps += 1;
        let mut mapper = Update {
            optim: self,
            grads,
            lr,
        };
        model.map(&mut mapper)
    }

    /// The moments as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`) for a checkpoint.
    pub fn to_weights<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        shapes: &Weights,
    ) -> Weights {
        let mut w = Weights::new();
        for name in names {
            if let Some(s) = self.state.get(&param_id(name)) {
                let shape = shapes
                    .get(name)
                    .map(|t| t.shape.clone())
                    .unwrap_or_default();
                let (_, m) = host(s.m.clone());
                let (_, v) = host(s.v.clone());
                w.insert(&format!("{name}.exp_avg"), shape.clone(), m);
                w.insert(&format!("{name}.exp_avg_sq"), shape, v);
            }
        }
        w
    }

    /// Elements of moment state held (both moments of every tensor that has them).
    pub fn state_len(&self) -> usize {
        self.state
            .values()
            .map(|s| 2 * s.m.shape().num_elements())
            .sum()
    }

    /// The moments of tensor `name` (m, v), flattened, if it has been updated.
    pub fn moments_of(&self, name: &str) -> Option<(Vec<f32>, Vec<f32>)> {
        let s = self.state.get(&param_id(name))?;
        Some((host(s.m.clone()).1, host(s.v.clone()).1))
    }

    /// Restore moments saved by [`AdamW::to_weights`].
    pub fn load_weights<'a>(
        &mut self,
        names: impl Iterator<Item = &'a str>,
        saved: &Weights,
        device: &B::Device,
    ) {
        let inner = |values: &[f32]| {
            Tensor::<B::InnerBackend, 1>::from_data(
                TensorData::new(values.to_vec(), [values.len()]),
                device,
            )
        };
        for name in names {
            if let (Some(m), Some(v)) = (
                saved.get(&format!("{name}.exp_avg")),
                saved.get(&format!("{name}.exp_avg_sq")),
            ) {
                self.state.insert(
                    param_id(name),
                    Moments {
                        m: inner(&m.values),
                        v: inner(&v.values),
                    },
                );
            }
        }
    }
}

struct Update<'a, B: AutodiffBackend> {
    optim: &'a mut AdamW<B>,
    grads: GradientsParams,
    lr: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.optim.config;
        let lr = self.lr * self.optim.lr_factor.get(&id).copied().unwrap_or(1.0);
        let shape = tensor.dims();
        let n: usize = shape.iter().product();
        let mut p = tensor.inner().reshape([n]);
        let g = grad.reshape([n]);
        if !self.optim.no_decay.contains(&id) && c.weight_decay > 0.0 {
            p = p.clone() - p * (lr * c.weight_decay);
        }
        let (m, v) = match self.optim.state.remove(&id) {
            Some(s) => (
                s.m * c.beta1 + g.clone() * (1.0 - c.beta1),
                s.v * c.beta2 + g.clone() * g * (1.0 - c.beta2),
            ),
            None => (g.clone() * (1.0 - c.beta1), g.clone() * g * (1.0 - c.beta2)),
        };
        let t = self.optim.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        // p -= lr / bc1 * m / (sqrt(v / bc2) + eps), as torch.optim.AdamW computes it.
        let denom = (v.clone() / bc2).sqrt() + c.eps;
        let p = p - m.clone() / denom * (lr / bc1);
        self.optim.state.insert(id, Moments { m, v });
        let p = Tensor::<B, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, p, mapper)
    }
}

/// The L2 norm over all gradients together (what `torch.nn.utils.clip_grad_norm_` returns).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sq = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(s) => s + sq,
                    None => sq,
                });
            }
        }
    }
    let mut v = Norm::<B> { grads, sum: None };
    model.visit(&mut v);
    v.sum
        .map(|s| (s.into_scalar().elem::<f64>()).sqrt())
        .unwrap_or(0.0)
}

/// Multiply every gradient by `factor` (clipping, loss-scale removal, accumulation averaging).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct Scale<B: AutodiffBackend> {
        grads: GradientsParams,
        factor: f64,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g * self.factor);
            }
        }
    }
    if factor == 1.0 {
        return grads;
    }
    let mut v = Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    v.grads
}

/// Add `more` into `acc` (gradient accumulation over micro-batches).
pub fn add_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    acc: GradientsParams,
    more: GradientsParams,
) -> GradientsParams {
    struct Add<B: AutodiffBackend> {
        acc: GradientsParams,
        more: GradientsParams,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Add<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.more.remove::<B::InnerBackend, D>(param.id) {
                let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register(param.id, sum);
            }
        }
    }
    let mut v = Add::<B> {
        acc,
        more,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    v.acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_the_trainer_rule() {
        assert!(decays("transformer.h.0.attn.c_attn.weight"));
        assert!(!decays("transformer.h.0.attn.c_attn.bias"));
        assert!(!decays("transformer.h.0.ln_1.weight"));
        assert!(!decays("transformer.ln_f.weight"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
    }
}
