//! GPT-2 (`GPT2Model` under `transformer.`): pre-LN decoder, tanh-GELU, learned positions; the
//! LM head of `GPT2LMHeadModel` is tied to the token embedding, so it lives here too. Tensor
//! names are Hugging Face's, visible in `build`/`to_weights`. Task heads are in `heads.rs`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::fused::{Keys, attention, gelu_new, split_heads};
use super::weights::{Init, Weights};
use super::{
    FusedOps, LayerNorm, ModelError, Precision, add_per_row, attention_fuses, attention_scale,
    attention_stepwise, dense, layer_norm, linear, matmul, put_layer_norm,
};

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
    c_attn: Linear<B>,
    attn_proj: Linear<B>,
    ln_2: LayerNorm<B>,
    c_fc: Linear<B>,
    mlp_proj: Linear<B>,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_head: usize,
}

impl<B: FusedOps> Gpt2<B> {
    /// Take the backbone's HF tensors from `w` (names and shapes are checked when the model
    /// that owns this backbone finishes the load).
    pub fn build(
        config: &Gpt2Config,
        w: &mut Weights,
        device: &B::Device,
    ) -> Result<Gpt2<B>, ModelError> {
        config.check()?;
        let (d, inner, eps) = (config.n_embd, config.inner(), config.layer_norm_epsilon);
        let conv1d = |w: &mut Weights, name: &str, d_in: usize, d_out: usize| {
            let weight = w.param(&format!("{name}.weight"), [d_in, d_out], device);
            let bias = w.param(&format!("{name}.bias"), [d_out], device);
            linear(weight, bias)
        };
        let h = (0..config.n_layer)
            .map(|i| {
                let p = format!("transformer.h.{i}");
                Block {
                    ln_1: layer_norm(w, &format!("{p}.ln_1"), d, eps, device),
                    c_attn: conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d),
                    attn_proj: conv1d(w, &format!("{p}.attn.c_proj"), d, d),
                    ln_2: layer_norm(w, &format!("{p}.ln_2"), d, eps, device),
                    c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), d, inner),
                    mlp_proj: conv1d(w, &format!("{p}.mlp.c_proj"), inner, d),
                    attn_dropout: DropoutConfig::new(config.attn_pdrop).init(),
                    resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
                    n_head: config.n_head,
                }
            })
            .collect();
        // Buffers of old checkpoints and the tied head, when a file carries them.
        for i in 0..config.n_layer {
            w.skip(&format!("transformer.h.{i}.attn.bias"));
            w.skip(&format!("transformer.h.{i}.attn.masked_bias"));
        }
        w.skip("lm_head.weight");
        let model = Gpt2 {
            wte: w.param("transformer.wte.weight", [config.vocab_size, d], device),
            wpe: w.param("transformer.wpe.weight", [config.n_positions, d], device),
            h,
            ln_f: layer_norm(w, "transformer.ln_f", d, eps, device),
            dropout: DropoutConfig::new(config.embd_pdrop).init(),
            config: config.clone(),
            precision: Precision::F32,
        };
        Ok(model)
    }

    /// Fresh weights as HF initializes them (normal(0, 0.02); residual projections scaled by
    /// 1/sqrt(2 × n_layer)).
    pub fn init_weights(config: &Gpt2Config, seed: u64) -> Weights {
        let (d, inner) = (config.n_embd, config.inner());
        let std = config.initializer_range;
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        let mut w = Weights::new();
        let mut init = Init::new(seed);
        init.normal(
            &mut w,
            "transformer.wte.weight",
            vec![config.vocab_size, d],
            std,
        );
        init.normal(
            &mut w,
            "transformer.wpe.weight",
            vec![config.n_positions, d],
            std,
        );
        for i in 0..config.n_layer {
            let p = format!("transformer.h.{i}");
            Init::layer_norm(&mut w, &format!("{p}.ln_1"), d);
            Init::layer_norm(&mut w, &format!("{p}.ln_2"), d);
            for (name, d_in, d_out, s) in [
                ("attn.c_attn", d, 3 * d, std),
                ("attn.c_proj", d, d, proj_std),
                ("mlp.c_fc", d, inner, std),
                ("mlp.c_proj", inner, d, proj_std),
            ] {
                init.normal(&mut w, &format!("{p}.{name}.weight"), vec![d_in, d_out], s);
                Init::constant(&mut w, &format!("{p}.{name}.bias"), d_out, 0.0);
            }
        }
        Init::layer_norm(&mut w, "transformer.ln_f", d);
        w
    }

    /// Every tensor under its HF name (the tied `lm_head.weight` is left out, as HF saves it).
    pub fn to_weights(&self) -> Weights {
        let mut w = Weights::new();
        w.put("transformer.wte.weight", &self.wte);
        w.put("transformer.wpe.weight", &self.wpe);
        for (i, b) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            put_layer_norm(&mut w, &format!("{p}.ln_1"), &b.ln_1);
            put_layer_norm(&mut w, &format!("{p}.ln_2"), &b.ln_2);
            for (name, l) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_proj),
            ] {
                w.put(&format!("{p}.{name}.weight"), &l.weight);
                w.put(
                    &format!("{p}.{name}.bias"),
                    l.bias.as_ref().expect("GPT-2 has biases"),
                );
            }
        }
        put_layer_norm(&mut w, "transformer.ln_f", &self.ln_f);
        w
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
    fn hidden_from(
        &self,
        ids: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let start = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embeddings(ids, start);
        for (i, block) in self.h.iter().enumerate() {
            let layer = cache.as_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, self.precision, layer);
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
        self.dropout.forward(add_per_row(tok, pos))
    }

    /// Next-token logits [B, T, vocab].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.logits(self.hidden(ids))
    }

    /// Logits for `ids` following the positions in `cache`, which keeps their keys and values:
    /// generation feeds the prompt once, then one token per step, instead of the whole window
    /// again. Past the position table (`cache.len() + T > n_positions`) start a new cache.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        if cache.layers.is_empty() {
            cache.layers = vec![None; self.h.len()];
        }
        self.logits(self.hidden_from(ids, Some(cache)))
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

/// Keys and values [B, H, T, dh] of every layer for the positions a model has seen, so a
/// generated token attends to them without recomputing them.
#[derive(Debug, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    /// Positions seen so far: the length of the cached keys.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((keys, _))) => keys.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let ctx = if cache.is_none() && attention_fuses::<B>(&self.attn_dropout, p, &x.device()) {
            let scale = attention_scale(x.dims()[2] / self.n_head);
            attention(qkv, Keys::Causal, self.n_head, scale) // one node from q | k | v
        } else {
            self.attention_cached(qkv, p, cache)
        }; // [B, T, d]
        let x = x + self.resid_dropout.forward(dense(&self.attn_proj, ctx, p));
        let m = gelu_new(dense(&self.c_fc, self.ln_2.forward(x.clone()), p));
        x.clone() + self.resid_dropout.forward(dense(&self.mlp_proj, m, p))
    }

    /// Attention op by op, with generation's KV cache when there is one: the keys and values
    /// of the positions before `qkv`'s join its own.
    fn attention_cached(
        &self,
        qkv: Tensor<B, 3>,
        p: Precision,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let [q, mut k, mut v] = split_heads(qkv, self.n_head); // [B, H, T, dh] each
        let mut keys = Keys::Causal;
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.take() {
                assert_eq!(
                    q.dims()[2],
                    1,
                    "after the prompt, a KV cache takes one token per step"
                );
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
                keys = Keys::All; // the one new query may see every key
            }
            *slot = Some((k.clone(), v.clone()));
        }
        attention_stepwise([q, k, v], keys, &self.attn_dropout, p)
    }
}
