//! LLaMA (`LlamaModel` under `model.`, as LLaMA-1/2/3, LLaMA-gene and BioMedGPT ship it):
//! pre-norm decoder with RMSNorm, rotary positions (rotate-half, `rope_theta`, `rope_scaling`
//! none / linear / dynamic / llama3), grouped-query attention, a SwiGLU MLP, no biases unless
//! `attention_bias` / `mlp_bias`; the LM head `lm_head` is its own tensor unless
//! `tie_word_embeddings`. Tensor names are Hugging Face's, declared once in `declare`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::{AttentionSpec, Dense, FusedOps, MASKED, RmsNorm};
use crate::models::kernels::{rotary, swiglu};
use crate::models::nn::kv_cache::KvCache;
use crate::models::nn::{affine, dense, matmul, packed_low_rank, self_attention};

/// The fields of HF's `LlamaConfig` that change the computation (others are kept as written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `null` = `num_attention_heads` (multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `null` = hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// `null`, or `{rope_type|type: linear|dynamic|llama3, factor, …}`.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Dropout before a task head's classifier (null: the architecture's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
}

fn default_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_init() -> f64 {
    0.02
}

impl LlamaConfig {
    /// Read `config.json`'s fields; transformers 5 writes `rope_theta` and the scaling as one
    /// `rope_parameters` object, which is read the same way.
    pub fn from_hf_json(mut v: Value) -> Result<LlamaConfig, serde_json::Error> {
        if let Some(params) = v.get("rope_parameters").cloned()
            && let Some(m) = v.as_object_mut()
        {
            if let Some(theta) = params.get("rope_theta") {
                m.insert("rope_theta".into(), theta.clone());
            }
            let kind = params
                .get("rope_type")
                .or_else(|| params.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                m.insert("rope_scaling".into(), params);
            }
        }
        serde_json::from_value(v)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The `config.json` transformers reads.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "llama".into());
        m.insert("num_key_value_heads".into(), self.kv_heads().into());
        m.insert("head_dim".into(), self.head_dim().into());
        v
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) {
            return Err(ModelError::Config(format!(
                "num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})"
            )));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(h) {
            return Err(ModelError::Config(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({h}), or set head_dim",
                self.hidden_size
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "head_dim ({}) must be even: rotary embeddings rotate pairs",
                self.head_dim()
            )));
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::Config(format!(
                "hidden_act `{}` is not supported (LLaMA uses silu)",
                self.hidden_act
            )));
        }
        Rope::new(self).map(|_| ())
    }
}

/// Rotary frequencies as transformers computes them for each `rope_scaling` type.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// 1/θ^(2i/dh) for i < dh/2, scaled as the type says.
    inv_freq: Vec<f64>,
    /// `dynamic` NTK scaling: (factor, the trained context); the base grows past it.
    dynamic: Option<(f64, usize)>,
    theta: f64,
    dim: usize,
}

impl Rope {
    /// The frequencies of `config`; an unknown scaling type is an error naming it.
    pub fn new(config: &LlamaConfig) -> Result<Rope, ModelError> {
        let dim = config.head_dim();
        let theta = config.rope_theta;
        let mut inv_freq = base_frequencies(theta, dim);
        let mut dynamic = None;
        if let Some(scaling) = &config.rope_scaling
            && !scaling.is_null()
        {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let number = |key: &str| -> Result<f64, ModelError> {
                scaling.get(key).and_then(Value::as_f64).ok_or_else(|| {
                    ModelError::Config(format!(
                        "rope_scaling of type `{kind}` needs a number `{key}`"
                    ))
                })
            };
            match kind {
                "default" => {}
                "linear" => {
                    let factor = number("factor")?;
                    inv_freq.iter_mut().for_each(|f| *f /= factor);
                }
                "dynamic" => {
                    let original = scaling
                        .get("original_max_position_embeddings")
                        .and_then(Value::as_u64)
                        .map_or(config.max_position_embeddings, |n| n as usize);
                    dynamic = Some((number("factor")?, original));
                }
                "llama3" => {
                    let factor = number("factor")?;
                    let low = number("low_freq_factor")?;
                    let high = number("high_freq_factor")?;
                    let old = number("original_max_position_embeddings")?;
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in inv_freq.iter_mut() {
                        let wavelen = 2.0 * std::f64::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                other => {
                    return Err(ModelError::Config(format!(
                        "rope_scaling type `{other}` is not supported (none, linear, dynamic, \
                         llama3)"
                    )));
                }
            }
        }
        Ok(Rope {
            inv_freq,
            dynamic,
            theta,
            dim,
        })
    }

    /// Unscaled frequencies 1/θ^(2i/dim) of heads of `dim` values (rotate-half): what ESM's
    /// `RotaryEmbedding` and LLaMA without `rope_scaling` use.
    pub(crate) fn plain(theta: f64, dim: usize) -> Rope {
        Rope {
            inv_freq: base_frequencies(theta, dim),
            dynamic: None,
            theta,
            dim,
        }
    }

    /// The frequencies as f32, what a checkpoint's `inv_freq` buffer holds.
    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        self.inv_freq.iter().map(|&f| f as f32).collect()
    }

    /// cos and sin [T, dh] of positions `start..start + t` (rotate-half layout: the
    /// frequencies twice), as f32 the way transformers computes them.
    pub(crate) fn tables<B: Backend>(
        &self,
        start: usize,
        t: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let inv_freq: Vec<f32> = match self.dynamic {
            Some((factor, original)) if start + t > original => {
                let seq = (start + t) as f64;
                let base = self.theta
                    * ((factor * seq / original as f64) - (factor - 1.0))
                        .powf(self.dim as f64 / (self.dim as f64 - 2.0));
                base_frequencies(base, self.dim)
                    .into_iter()
                    .map(|f| f as f32)
                    .collect()
            }
            _ => self.inv_freq.iter().map(|&f| f as f32).collect(),
        };
        let half = self.dim / 2;
        let mut cos = Vec::with_capacity(t * self.dim);
        let mut sin = Vec::with_capacity(t * self.dim);
        for pos in start..start + t {
            for twice in 0..2 * half {
                let angle = pos as f32 * inv_freq[twice % half];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let table = |v| Tensor::from_data(TensorData::new(v, [t, self.dim]), device);
        (table(cos), table(sin))
    }
}

/// 1/θ^(2i/dim) for i < dim/2, computed in f32 as transformers does (then widened).
fn base_frequencies(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / dim as f32;
            (1.0f32 / (theta as f32).powf(exponent)) as f64
        })
        .collect()
}

/// The LLaMA backbone, with its own LM head when it is untied and the model is a
/// `LlamaForCausalLM`.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `model.embed_tokens.weight` [vocab, d]
    embed_tokens: Param<Tensor<B, 2>>,
    layers: Vec<Layer<B>>,
    norm: RmsNorm<B>,
    /// `lm_head.weight` as [d, vocab]; `None` when tied to the embeddings or under a task head.
    lm_head: Option<Dense<B>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    precision: Precision,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Dense<B>,
    k_proj: Dense<B>,
    v_proj: Dense<B>,
    o_proj: Dense<B>,
    post_attention_layernorm: RmsNorm<B>,
    gate_proj: Dense<B>,
    up_proj: Dense<B>,
    down_proj: Dense<B>,
    attn_dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> Llama<B> {
    /// Declare the backbone's HF tensors (`model.*`) and, with `lm_head` and untied
    /// embeddings, `lm_head.weight`: one walk builds, initialises (normal(0, 0.02), zero
    /// biases, the padding row zeroed, RMSNorm ones) and saves them.
    pub fn declare(
        config: &LlamaConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<Llama<B>, ModelError> {
        config.check()?;
        let (d, inner, eps, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
            config.initializer_range,
        );
        let (h, kv, dh) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.head_dim(),
        );
        let spec = AttentionSpec {
            heads: h,
            kv_heads: kv,
            head_dim: dh,
            scale: 1.0 / (dh as f64).sqrt(),
            causal: true,
            alibi: None,
        };
        let (attn_bias, mlp_bias) = (config.attention_bias, config.mlp_bias);
        let mut m = vars.pp("model");
        let embed_tokens = m.param(
            "embed_tokens.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut l = m.pp(format_args!("layers.{i}"));
                l.skip("self_attn.rotary_emb.inv_freq"); // a buffer older checkpoints carry
                Layer {
                    input_layernorm: l.rms_norm("input_layernorm", d, eps),
                    q_proj: l.linear("self_attn.q_proj", d, h * dh, attn_bias, std),
                    k_proj: l.linear("self_attn.k_proj", d, kv * dh, attn_bias, std),
                    v_proj: l.linear("self_attn.v_proj", d, kv * dh, attn_bias, std),
                    o_proj: l.linear("self_attn.o_proj", h * dh, d, attn_bias, std),
                    post_attention_layernorm: l.rms_norm("post_attention_layernorm", d, eps),
                    gate_proj: l.linear("mlp.gate_proj", d, inner, mlp_bias, std),
                    up_proj: l.linear("mlp.up_proj", d, inner, mlp_bias, std),
                    down_proj: l.linear("mlp.down_proj", inner, d, mlp_bias, std),
                    attn_dropout: DropoutConfig::new(config.attention_dropout).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        let norm = m.rms_norm("norm", d, eps);
        let lm_head = if lm_head && !config.tie_word_embeddings {
            Some(vars.linear("lm_head", d, config.vocab_size, false, std))
        } else {
            vars.skip("lm_head.weight"); // tied (or another head's model)
            None
        };
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: config.clone(),
            rope: Rope::new(config)?,
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Number of decoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// HF's `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of layer N;
    /// the last one (`num_hidden_layers`) goes through `model.norm`, as transformers returns
    /// it. `mask` [B, T] is 1 for real tokens (padding keys are hidden from every query).
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Int>>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let padding = mask.map(padding_bias);
        let n = layer.min(self.layers.len());
        let mut x = self.embed(ids);
        let t = x.dims()[1];
        let (cos, sin) = self.rope.tables::<B>(0, t, &x.device());
        for l in &self.layers[..n] {
            x = l.forward(x, (&cos, &sin), padding.clone(), None, self.precision);
        }
        if n == self.layers.len() {
            self.norm.forward(x)
        } else {
            x
        }
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
        self.embed_tokens
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d])
    }

    /// Next-token logits [B, T, vocab] from final hidden states [B, T, d]: `lm_head`, or the
    /// embeddings when tied.
    pub fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => dense(head, h, self.precision),
            None => {
                let [b, t, d] = h.dims();
                matmul(
                    h.reshape([b * t, d]),
                    self.embed_tokens.val().transpose(),
                    self.precision,
                )
                .reshape([b, t, self.config.vocab_size])
            }
        }
    }

    /// Logits for `ids` following the positions in `cache`, which keeps their keys and values.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.logits(self.norm.forward(self.cached_states(ids, cache)))
    }

    /// [`Llama::forward_cached`]'s logits of the last position only [B, 1, vocab]: what
    /// generation reads, without the vocabulary-wide head on every prompt position.
    pub fn next_logits(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let x = self.cached_states(ids, cache);
        let t = x.dims()[1];
        self.logits(self.norm.forward(x.narrow(1, t - 1, 1)))
    }

    /// The last layer's output (before the final norm) for `ids` after the cache's positions,
    /// which it extends.
    fn cached_states(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let start = cache.len();
        let mut x = self.embed(ids);
        let t = x.dims()[1];
        let (cos, sin) = self.rope.tables::<B>(start, t, &x.device());
        for (l, slot) in self.layers.iter().zip(cache.slots(self.layers.len())) {
            x = l.forward(x, (&cos, &sin), None, Some(slot), self.precision);
        }
        x
    }
}

/// [`MASKED`] on padding keys, 0 on real ones (callers pass a mask only when a batch has
/// padding: the caller knows it on the host, so no device round trip asks).
fn padding_bias<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    mask.equal_elem(0).float().mul_scalar(MASKED)
}

impl<B: FusedOps> Layer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        (cos, sin): (&Tensor<B, 2>, &Tensor<B, 2>),
        padding: Option<Tensor<B, 2>>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let spec = &self.spec;
        // q | k | v in one product, then the rotation of the query and key heads.
        let h = self.input_layernorm.forward(x.clone());
        let mut qkv = affine(h.clone(), self.qkv_weight(), self.qkv_bias(), p); // [B, T, (H + 2·Hkv)·dh]
        if let Some(delta) = packed_low_rank(&[&self.q_proj, &self.k_proj, &self.v_proj], h, p) {
            qkv = qkv + delta;
        }
        let qkv = rotary(qkv, cos.clone(), sin.clone(), spec.heads + spec.kv_heads);
        let ctx = self_attention(qkv, padding, spec, cache, &self.attn_dropout, p); // [B, T, H·dh]
        let x = x + dense(&self.o_proj, ctx, p);
        let h = self.post_attention_layernorm.forward(x.clone());
        let gated = swiglu(
            dense(&self.gate_proj, h.clone(), p),
            dense(&self.up_proj, h, p),
        );
        x + dense(&self.down_proj, gated, p)
    }

    /// q_proj | k_proj | v_proj side by side, [d, (H + 2·Hkv)·dh].
    fn qkv_weight(&self) -> Tensor<B, 2> {
        let w = |l: &Dense<B>| l.weight.val();
        Tensor::cat(vec![w(&self.q_proj), w(&self.k_proj), w(&self.v_proj)], 1)
    }

    /// Their biases when `attention_bias`.
    fn qkv_bias(&self) -> Option<Tensor<B, 1>> {
        let b = |l: &Dense<B>| l.bias.as_ref().map(|b| b.val());
        Some(Tensor::cat(
            vec![b(&self.q_proj)?, b(&self.k_proj)?, b(&self.v_proj)?],
            0,
        ))
    }
}
