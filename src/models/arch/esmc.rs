//! ESM C (`esm.models.esmc.ESMC`, EvolutionaryScale's open protein model, ESM3's transformer
//! blocks without the geometric attention): pre-LN blocks with no biases but the norms', the
//! attention's q and k each layer-normed over the full width (bias-free QK-LayerNorm) before
//! rotary embeddings (rotate-half, θ = 10⁴), a SwiGLU MLP whose width is 8/3·d rounded up to a
//! multiple of 256, every residual branch divided by √(n_layers / 36), a bias-free final norm,
//! and the `sequence_head` (dense, GELU, LayerNorm, 64 logits). Tensor names are the `esm`
//! package's state-dict names; `config.json` is dnaflow's (`model_type: esmc`, ESMC's own
//! `d_model`, `n_heads`, `n_layers`), as ESM C publishes no HF config.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::llama::Rope;
use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::{AttentionSpec, Dense, FusedOps, LayerNorm, MASKED, gelu};
use crate::models::kernels::{rotary, swiglu};
use crate::models::nn::{dense, self_attention};

/// dnaflow's `config.json` of an ESM C model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EsmcConfig {
    /// Rows of the embedding and of the head's output (64 in the published models).
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// Width of each SwiGLU half; `null`: the package's rule, 8/3·d rounded up to 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// The longest input dnaflow accepts (rotary has no table; ESM C trained at 2048).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Divide every residual branch by √(n_layers / 36) (ESM C: yes).
    #[serde(default = "yes")]
    pub scale_residue: bool,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    /// Dropout before a task head's classifier (null: 0.1). ESM C itself has no dropout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
}

fn default_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10000.0
}
fn yes() -> bool {
    true
}
fn default_init() -> f64 {
    0.02
}

impl EsmcConfig {
    /// The `config.json` dnaflow reads back.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "esmc".into());
        v
    }

    /// Width of each SwiGLU half: `swiglu_correction_fn(8/3, d)` unless the config sets it.
    pub fn ffn_width(&self) -> usize {
        self.intermediate_size
            .unwrap_or(((8.0 / 3.0 * self.d_model as f64 + 255.0) / 256.0).floor() as usize * 256)
    }

    /// What each residual branch is divided by.
    fn residue_scale(&self) -> f64 {
        if self.scale_residue {
            (self.n_layers as f64 / 36.0).sqrt()
        } else {
            1.0
        }
    }

    pub fn check(&self) -> Result<(), ModelError> {
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelError::Config(format!(
                "d_model ({}) must be a multiple of n_heads ({})",
                self.d_model, self.n_heads
            )));
        }
        if !(self.d_model / self.n_heads).is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "d_model / n_heads ({}) must be even: rotary embeddings rotate pairs",
                self.d_model / self.n_heads
            )));
        }
        Ok(())
    }
}

/// The ESM C backbone (`embed`, `transformer`), with `sequence_head` when it is the LM.
#[derive(Module, Debug)]
pub struct Esmc<B: Backend> {
    /// `embed.weight` [vocab, d]
    embed: Param<Tensor<B, 2>>,
    blocks: Vec<Block<B>>,
    /// `transformer.norm`, bias-free.
    norm: LayerNorm<B>,
    head: Option<SequenceHead<B>>,
    #[module(skip)]
    config: EsmcConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    precision: Precision,
}

/// `sequence_head`: `0` dense, GELU, `2` LayerNorm, `3` the vocabulary logits.
#[derive(Module, Debug)]
struct SequenceHead<B: Backend> {
    dense: Dense<B>,
    ln: LayerNorm<B>,
    out: Dense<B>,
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    /// `attn.layernorm_qkv.0` (with bias) and `.1` [d, 3d] (q | k | v).
    qkv_ln: LayerNorm<B>,
    qkv: Dense<B>,
    /// `attn.q_ln`, `attn.k_ln`: over the full width, bias-free.
    q_ln: LayerNorm<B>,
    k_ln: LayerNorm<B>,
    out_proj: Dense<B>,
    /// `ffn.0` (with bias), `ffn.1` [d, 2·ffn] (the SiLU half, then the linear half), `ffn.3`.
    ffn_ln: LayerNorm<B>,
    ffn_in: Dense<B>,
    ffn_out: Dense<B>,
    attn_dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
    #[module(skip)]
    residue_scale: f64,
}

impl<B: FusedOps> Esmc<B> {
    /// Declare the backbone's tensors and, with `lm_head`, `sequence_head.*`: one walk builds,
    /// initialises (normal(0, 0.02), zero biases, norms ones) and saves them.
    pub fn declare(
        config: &EsmcConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<Esmc<B>, ModelError> {
        config.check()?;
        let (d, ffn, eps, std) = (
            config.d_model,
            config.ffn_width(),
            config.layer_norm_eps,
            config.initializer_range,
        );
        let spec = AttentionSpec::multi_head(config.n_heads, d, false);
        let embed = vars.param(
            "embed.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let mut t = vars.pp("transformer");
        let blocks = (0..config.n_layers)
            .map(|i| {
                let mut b = t.pp(format_args!("blocks.{i}"));
                Block {
                    qkv_ln: b.layer_norm("attn.layernorm_qkv.0", d, eps),
                    qkv: b.linear("attn.layernorm_qkv.1", d, 3 * d, false, std),
                    q_ln: b.layer_norm_without_bias("attn.q_ln", d, eps),
                    k_ln: b.layer_norm_without_bias("attn.k_ln", d, eps),
                    out_proj: b.linear("attn.out_proj", d, d, false, std),
                    ffn_ln: b.layer_norm("ffn.0", d, eps),
                    ffn_in: b.linear("ffn.1", d, 2 * ffn, false, std),
                    ffn_out: b.linear("ffn.3", ffn, d, false, std),
                    attn_dropout: DropoutConfig::new(0.0).init(),
                    spec: spec.clone(),
                    residue_scale: config.residue_scale(),
                }
            })
            .collect();
        let norm = t.layer_norm_without_bias("norm", d, eps);
        let head = if lm_head {
            let mut h = vars.pp("sequence_head");
            Some(SequenceHead {
                dense: h.linear("0", d, d, true, std),
                ln: h.layer_norm("2", d, eps),
                out: h.linear("3", d, config.vocab_size, true, std),
            })
        } else {
            None
        };
        Ok(Esmc {
            embed,
            blocks,
            norm,
            head,
            config: config.clone(),
            rope: Rope::plain(config.rope_theta, d / config.n_heads),
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &EsmcConfig {
        &self.config
    }

    /// Number of blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// `hidden_states[layer]` [B, T, d] as transformers lists them: 0 the embeddings, N the
    /// output of block N, the last one after `transformer.norm` (ESMC's `embeddings`). `mask`
    /// [B, T] is 1 for real tokens (padding keys are hidden from every query).
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Int>>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.d_model;
        let padding = mask.map(|m| m.equal_elem(0).float().mul_scalar(MASKED)); // [B, T]
        let mut x = self
            .embed
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d]);
        let (cos, sin) = self.rope.tables::<B>(0, t, &x.device());
        let n = layer.min(self.blocks.len());
        for block in &self.blocks[..n] {
            x = block.forward(x, (&cos, &sin), padding.clone(), self.precision);
        }
        if n == self.blocks.len() {
            self.norm.forward(x)
        } else {
            x
        }
    }

    /// The sequence head's logits [B, T, vocab] from final hidden states (`None` without it).
    pub(crate) fn logits(&self, h: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let head = self.head.as_ref()?;
        let p = self.precision;
        let h = head.ln.forward(gelu(dense(&head.dense, h, p)));
        Some(dense(&head.out, h, p))
    }
}

impl<B: FusedOps> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        (cos, sin): (&Tensor<B, 2>, &Tensor<B, 2>),
        padding: Option<Tensor<B, 2>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let spec = &self.spec;
        let d = spec.context_width();
        let qkv = dense(&self.qkv, self.qkv_ln.forward(x.clone()), p); // [B, T, 3d]
        let q = self.q_ln.forward(qkv.clone().narrow(2, 0, d));
        let k = self.k_ln.forward(qkv.clone().narrow(2, d, d));
        let qkv = Tensor::cat(vec![q, k, qkv.narrow(2, 2 * d, d)], 2);
        let qkv = rotary(qkv, cos.clone(), sin.clone(), 2 * spec.heads);
        let ctx = self_attention(qkv, padding, spec, None, &self.attn_dropout, p); // [B, T, d]
        let x = x + dense(&self.out_proj, ctx, p).div_scalar(self.residue_scale);
        let h = dense(&self.ffn_in, self.ffn_ln.forward(x.clone()), p); // [B, T, 2·ffn]
        let half = h.dims()[2] / 2;
        let gated = swiglu(h.clone().narrow(2, 0, half), h.narrow(2, half, half));
        x + dense(&self.ffn_out, gated, p).div_scalar(self.residue_scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SwiGLU width follows `swiglu_correction_fn(8/3, d)`: ESM C 300M (d 960) has 2560,
    /// 600M (d 1152) 3072, a tiny one 256.
    #[test]
    fn ffn_width_follows_the_packages_rule() {
        let config = |d| EsmcConfig {
            vocab_size: 64,
            d_model: d,
            n_heads: 4,
            n_layers: 2,
            intermediate_size: None,
            max_position_embeddings: 2048,
            layer_norm_eps: 1e-5,
            rope_theta: 1e4,
            scale_residue: true,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            mask_token_id: None,
            classifier_dropout: None,
        };
        assert_eq!(config(960).ffn_width(), 2560);
        assert_eq!(config(1152).ffn_width(), 3072);
        assert_eq!(config(32).ffn_width(), 256);
        assert!((config(32).residue_scale() - (2.0f64 / 36.0).sqrt()).abs() < 1e-12);
    }
}
