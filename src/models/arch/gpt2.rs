//! GPT-2 (`GPT2Model` under `transformer.`): pre-LN decoder, tanh-GELU, learned positions; the
//! LM head of `GPT2LMHeadModel` is tied to the token embedding, so it lives here too. Tensor
//! names are Hugging Face's, declared once in `declare`. Task heads are in `heads.rs`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::gelu_new;
use crate::models::kernels::{self, AttentionSpec, Dense, FusedOps, LayerNorm};
use crate::models::nn::kv_cache::KvCache;
use crate::models::nn::{add_per_row, dense, matmul, self_attention};

/// The fields of HF's `GPT2Config` that change the computation (others are kept as written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// `null` = 4 × n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Dropout before a task head's classifier (null: the architecture's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
}

fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f64 {
    0.1
}
fn default_init() -> f64 {
    0.02
}

impl Gpt2Config {
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The `config.json` transformers reads (the head's class and labels are added by the
    /// model that has them).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "gpt2".into());
        m.insert("tie_word_embeddings".into(), true.into());
        m.insert("scale_attn_weights".into(), true.into());
        v
    }

    pub fn check(&self) -> Result<(), ModelError> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::Config(format!(
                "n_embd ({}) must be a multiple of n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(ModelError::Config(format!(
                "activation_function `{}` is not supported (GPT-2 uses gelu_new)",
                self.activation_function
            )));
        }
        Ok(())
    }
}

/// The GPT-2 backbone (its tied language-model head needs no tensors of its own).
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    /// `transformer.wte.weight` [vocab, d]; also the LM head (tied).
    wte: Param<Tensor<B, 2>>,
    /// `transformer.wpe.weight` [n_positions, d]
    wpe: Param<Tensor<B, 2>>,
    h: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
    dropout: Dropout,
    #[module(skip)]
    config: Gpt2Config,
    #[module(skip)]
    precision: Precision,
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    /// q|k|v fused, [d, 3d] (HF `Conv1D` is already `[in, out]`).
    c_attn: Dense<B>,
    attn_proj: Dense<B>,
    ln_2: LayerNorm<B>,
    c_fc: Dense<B>,
    mlp_proj: Dense<B>,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> Gpt2<B> {
    /// Declare the backbone's HF tensors (`transformer.*`): one walk builds, initialises (HF:
    /// normal(0, 0.02), residual projections scaled by 1/sqrt(2 × n_layer)) and saves it.
    pub fn declare(config: &Gpt2Config, vars: &mut Vars<B>) -> Result<Gpt2<B>, ModelError> {
        config.check()?;
        let (d, inner, eps) = (config.n_embd, config.inner(), config.layer_norm_epsilon);
        let std = config.initializer_range;
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        let spec = AttentionSpec::multi_head(config.n_head, d, true);
        vars.skip("lm_head.weight"); // tied to the token embedding
        let mut t = vars.pp("transformer");
        let wte = t.param("wte.weight", [config.vocab_size, d], Init::Normal(std));
        let wpe = t.param("wpe.weight", [config.n_positions, d], Init::Normal(std));
        let h = (0..config.n_layer)
            .map(|i| {
                let mut b = t.pp(format_args!("h.{i}"));
                // Buffers of old checkpoints.
                b.skip("attn.bias");
                b.skip("attn.masked_bias");
                Block {
                    ln_1: b.layer_norm("ln_1", d, eps),
                    c_attn: b.conv1d("attn.c_attn", d, 3 * d, std),
                    attn_proj: b.conv1d("attn.c_proj", d, d, proj_std),
                    ln_2: b.layer_norm("ln_2", d, eps),
                    c_fc: b.conv1d("mlp.c_fc", d, inner, std),
                    mlp_proj: b.conv1d("mlp.c_proj", inner, d, proj_std),
                    attn_dropout: DropoutConfig::new(config.attn_pdrop).init(),
                    resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        Ok(Gpt2 {
            wte,
            wpe,
            h,
            ln_f: t.layer_norm("ln_f", d, eps),
            dropout: DropoutConfig::new(config.embd_pdrop).init(),
            config: config.clone(),
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Final hidden states (after `ln_f`) for token ids [B, T] → [B, T, d].
    pub fn hidden(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.hidden_from(ids, None)
    }

    /// HF's `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of block N;
    /// the last one (`n_layer`) goes through `ln_f`, as transformers returns it.
    pub fn hidden_at(&self, ids: Tensor<B, 2, Int>, layer: usize) -> Tensor<B, 3> {
        let n = self.h.len();
        if layer >= n {
            return self.hidden(ids);
        }
        let mut x = self.embeddings(ids, 0);
        for block in &self.h[..layer] {
            x = block.forward(x, self.precision, None);
        }
        x
    }

    /// Number of transformer blocks.
    pub fn layers(&self) -> usize {
        self.h.len()
    }

    /// Hidden states of `ids`, which follow the positions already in `cache` (if any): the
    /// cache gains their keys and values.
    fn hidden_from(&self, ids: Tensor<B, 2, Int>, cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embeddings(ids, start);
        match cache {
            Some(cache) => {
                for (block, slot) in self.h.iter().zip(cache.slots(self.h.len())) {
                    x = block.forward(x, self.precision, Some(slot));
                }
            }
            None => {
                for block in &self.h {
                    x = block.forward(x, self.precision, None);
                }
            }
        }
        self.ln_f.forward(x)
    }

    /// Token plus position embeddings of `ids` [B, T] at positions `start..start + T`.
    fn embeddings(&self, ids: Tensor<B, 2, Int>, start: usize) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.n_embd;
        let tok = self
            .wte
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d]);
        let pos = self.wpe.val().slice([start..start + t, 0..d]);
        kernels::dropout(&self.dropout, add_per_row(tok, pos))
    }

    /// Next-token logits [B, T, vocab].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.logits(self.hidden(ids))
    }

    /// Logits for `ids` following the positions in `cache`, which keeps their keys and values:
    /// generation feeds the prompt once, then one token per step, instead of the whole window
    /// again. Past the position table (`cache.len() + T > n_positions`) start a new cache.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.logits(self.hidden_from(ids, Some(cache)))
    }

    /// [`Gpt2::forward_cached`]'s logits of the last position only [B, 1, vocab]: what
    /// generation reads, without the vocabulary-wide head on every prompt position.
    pub fn next_logits(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let h = self.hidden_from(ids, Some(cache));
        let t = h.dims()[1];
        self.logits(h.narrow(1, t - 1, 1))
    }

    /// The tied LM head on hidden states [B, T, d] → [B, T, vocab].
    pub(crate) fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = h.dims();
        let logits = matmul(
            h.reshape([b * t, d]),
            self.wte.val().transpose(),
            self.precision,
        ); // tied head: [B*T, vocab]
        logits.reshape([b, t, self.config.vocab_size])
    }
}

impl<B: FusedOps> Block<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        p: Precision,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let qkv = dense(&self.c_attn, self.ln_1.forward(x.clone()), p); // [B, T, 3d]: q | k | v
        let ctx = self_attention(qkv, None, &self.spec, cache, &self.attn_dropout, p); // [B, T, d]
        let x = x + kernels::dropout(&self.resid_dropout, dense(&self.attn_proj, ctx, p));
        let m = gelu_new(dense(&self.c_fc, self.ln_2.forward(x.clone()), p));
        x.clone() + kernels::dropout(&self.resid_dropout, dense(&self.mlp_proj, m, p))
    }
}
