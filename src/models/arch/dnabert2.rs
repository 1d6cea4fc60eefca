//! DNABERT-2 (`zhihan1996/DNABERT-2-117M`, MosaicBERT's `bert_layers.py`): a post-LN BERT
//! encoder with no position embeddings (symmetric ALiBi instead, MosaicBERT's slopes for any
//! head count), a fused `Wqkv`, and a GEGLU MLP (`mlp.gated_layers` d → 2·inner without bias,
//! exact GELU on the first half times the second, `mlp.wo`, post-LN `mlp.layernorm`); the
//! masked-LM head is BERT's `cls.predictions` with its own `decoder.bias`. Its `config.json`
//! says `model_type: bert` and names its code in `auto_map`: that is how it is recognised, and
//! what it is saved with. Real tokens run packed, as in [`super::bert`]; padding positions come
//! back as zeros, as DNABERT-2's own encoder returns them.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bert::{BERT_MLM, MlmHead, MlmNames, Packing, attend_unpacked, packed};
use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::{self, AttentionSpec, Dense, FusedOps, Gate, LayerNorm, MASKED, glu};
use crate::models::nn::{dense, self_attention};

/// The fields of DNABERT-2's `BertConfig` (transformers' plus `alibi_starting_size`) that
/// change the computation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DnaBert2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Width of each GEGLU half (`gated_layers` has twice as many outputs).
    pub intermediate_size: usize,
    /// The longest input dnaflow accepts (ALiBi itself has no table to outgrow).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pdrop")]
    pub hidden_dropout_prob: f64,
    /// MosaicBERT's default is 0 (its fused kernel has no attention dropout).
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Dropout before a task head's classifier (null: `hidden_dropout_prob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// The size of the ALiBi table DNABERT-2's code builds first (kept for its loader).
    #[serde(default = "default_positions")]
    pub alibi_starting_size: usize,
}

fn default_positions() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pdrop() -> f64 {
    0.1
}
fn default_init() -> f64 {
    0.02
}

/// Whether a `config.json` is DNABERT-2's: `model_type: bert` with an `auto_map` naming
/// MosaicBERT's `bert_layers` module (also as `repo--bert_layers.…`, as fine-tuned copies
/// write it).
pub(crate) fn is_dnabert2(v: &Value) -> bool {
    v.get("model_type").and_then(Value::as_str) == Some("bert")
        && v.get("auto_map")
            .and_then(Value::as_object)
            .is_some_and(|m| {
                m.values()
                    .filter_map(Value::as_str)
                    .any(|c| c.contains("bert_layers."))
            })
}

impl DnaBert2Config {
    /// The `config.json` DNABERT-2's code reads (`model_type: bert` and its `auto_map`).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "bert".into());
        m.insert(
            "auto_map".into(),
            json!({
                "AutoConfig": "configuration_bert.BertConfig",
                "AutoModel": "bert_layers.BertModel",
                "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
            }),
        );
        v
    }

    pub fn check(&self) -> Result<(), ModelError> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::Config(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.hidden_act != "gelu" {
            return Err(ModelError::Config(format!(
                "hidden_act `{}` is not supported (DNABERT-2 uses gelu)",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

/// MosaicBERT's ALiBi slopes (`_get_alibi_head_slopes`): for n a power of two, s·sⁱ with
/// s = 2^(−8/n); otherwise the slopes of the closest power of two 2^k below n, then every
/// other slope of 2^(k+1) heads until there are n. Computed in f64 as Python does, then f32.
pub fn alibi_slopes(n: usize) -> Vec<f32> {
    fn slopes(n: usize) -> Vec<f64> {
        let power_of_2 = |n: usize| {
            let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
            (0..n)
                .map(|i| start * start.powi(i as i32))
                .collect::<Vec<f64>>()
        };
        if n.is_power_of_two() {
            return power_of_2(n);
        }
        let closest = 1usize << n.ilog2();
        let mut out = power_of_2(closest);
        out.extend(slopes(2 * closest).into_iter().step_by(2).take(n - closest));
        out
    }
    if n == 0 {
        return Vec::new();
    }
    slopes(n).into_iter().map(|s| s as f32).collect()
}

/// The DNABERT-2 encoder (`bert.*`, no pooler: that belongs to the sequence head), with the
/// MLM head `cls.predictions` when it is a `BertForMaskedLM`.
#[derive(Module, Debug)]
pub struct DnaBert2<B: Backend> {
    /// `bert.embeddings.word_embeddings.weight` [vocab, d]; also the MLM decoder (tied).
    word_embeddings: Param<Tensor<B, 2>>,
    token_type_embeddings: Param<Tensor<B, 2>>,
    embeddings_ln: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    dropout: Dropout,
    mlm: Option<MlmHead<B>>,
    #[module(skip)]
    config: DnaBert2Config,
    #[module(skip)]
    precision: Precision,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    /// `attention.self.Wqkv` [d, 3d]: q | k | v, heads inside each.
    wqkv: Dense<B>,
    attn_out: Dense<B>,
    attn_ln: LayerNorm<B>,
    /// `mlp.gated_layers` [d, 2·inner], no bias: the GELU half, then the linear half.
    gated_layers: Dense<B>,
    wo: Dense<B>,
    mlp_ln: LayerNorm<B>,
    attn_dropout: Dropout,
    dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> DnaBert2<B> {
    /// Declare the encoder's tensors (`bert.*`) and, with `lm_head`, the MLM head
    /// (`cls.predictions.*`): one walk builds, initialises (normal(0, 0.02), zero biases, the
    /// padding row zeroed) and saves them.
    pub fn declare(
        config: &DnaBert2Config,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<DnaBert2<B>, ModelError> {
        config.check()?;
        let (d, inner, eps, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
            config.initializer_range,
        );
        let spec = AttentionSpec {
            alibi: Some(alibi_slopes(config.num_attention_heads).into()),
            ..AttentionSpec::multi_head(config.num_attention_heads, d, false)
        };
        let mut bert = vars.pp("bert");
        let mut e = bert.pp("embeddings");
        let word_embeddings = e.param(
            "word_embeddings.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let token_type_embeddings = e.param(
            "token_type_embeddings.weight",
            [config.type_vocab_size, d],
            Init::Normal(std),
        );
        let embeddings_ln = e.layer_norm("LayerNorm", d, eps);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut l = bert.pp(format_args!("encoder.layer.{i}"));
                Layer {
                    wqkv: l.linear("attention.self.Wqkv", d, 3 * d, true, std),
                    attn_out: l.linear("attention.output.dense", d, d, true, std),
                    attn_ln: l.layer_norm("attention.output.LayerNorm", d, eps),
                    gated_layers: l.linear("mlp.gated_layers", d, 2 * inner, false, std),
                    wo: l.linear("mlp.wo", inner, d, true, std),
                    mlp_ln: l.layer_norm("mlp.layernorm", d, eps),
                    attn_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        // The head's LayerNorm eps is 1e-12 whatever the config says (`bert_layers.py`).
        let mlm = lm_head.then(|| {
            MlmHead::declare(
                &mut vars.pp("cls.predictions"),
                d,
                config.vocab_size,
                1e-12,
                std,
                MlmNames {
                    bias: "decoder.bias",
                    ..BERT_MLM
                },
            )
        });
        Ok(DnaBert2 {
            word_embeddings,
            token_type_embeddings,
            embeddings_ln,
            layers,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            mlm,
            config: config.clone(),
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &DnaBert2Config {
        &self.config
    }

    /// Number of encoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of layer N; `mask`
    /// [B, T] is 1 for real tokens. Padding positions are zero after the embeddings.
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
        let words = self
            .word_embeddings
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d]);
        let kinds = self
            .token_type_embeddings
            .val()
            .select(0, types.reshape([b * t]))
            .reshape([b, t, d]);
        // No position embeddings: ALiBi in every attention.
        let x = kernels::dropout(&self.dropout, self.embeddings_ln.forward(words + kinds));
        packed(&mask, x, |mut x, packing| {
            let padding = packing.map(|_| mask.clone().equal_elem(0).float().mul_scalar(MASKED)); // [B, T]
            for l in &self.layers[..layer.min(self.layers.len())] {
                x = l.forward(x, padding.clone(), packing, self.precision);
            }
            x
        })
    }

    /// The MLM head on hidden states [B, T, d] (`None` without one).
    pub(crate) fn mlm_on(&self, h: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let head = self.mlm.as_ref()?;
        Some(head.forward(h, self.word_embeddings.val(), self.precision))
    }
}

impl<B: FusedOps> Layer<B> {
    /// One encoder layer on x [B, T, d], or on the packed real tokens [1, N, d] when
    /// `packing` (then `padding` [B, T] hides the padding keys).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Option<Tensor<B, 2>>,
        packing: Option<&Packing<B>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let qkv = dense(&self.wqkv, x.clone(), p);
        let ctx = attend_unpacked(packing, qkv, |qkv| {
            self_attention(qkv, padding, &self.spec, None, &self.attn_dropout, p) // [B, T, d]
        });
        let x = self
            .attn_ln
            .forward(x + kernels::dropout(&self.dropout, dense(&self.attn_out, ctx, p)));
        let h = dense(&self.gated_layers, x.clone(), p); // [.., 2·inner]
        let glu = glu(h, Gate::Gelu); // gelu(h[.., :inner]) · h[.., inner:]
        self.mlp_ln
            .forward(x + dense(&self.wo, kernels::dropout(&self.dropout, glu), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Powers of two are ALiBi's geometric sequence; 12 heads are the 8-head slopes then every
    /// other 16-head slope (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5); 6 heads the 4-head set then 2.
    #[test]
    fn alibi_slopes_follow_mosaic_berts_rule() {
        let eight: Vec<f32> = (1..=8).map(|i| 2f32.powi(-i)).collect();
        assert_eq!(alibi_slopes(8), eight);
        let mut twelve = eight.clone();
        twelve.extend([-0.5f32, -1.5, -2.5, -3.5].map(|e| 2f32.powf(e)));
        let got = alibi_slopes(12);
        assert_eq!(got.len(), 12);
        for (a, b) in got.iter().zip(&twelve) {
            assert!((a - b).abs() < 1e-7, "{got:?} vs {twelve:?}");
        }
        let six = alibi_slopes(6);
        let want = [0.25f32, 0.0625, 0.015625, 0.00390625, 0.5, 0.125];
        for (a, b) in six.iter().zip(&want) {
            assert!((a - b).abs() < 1e-7, "{six:?}");
        }
        assert_eq!(alibi_slopes(1), vec![2f32.powi(-8)]);
    }

    /// DNABERT-2's config (`bert` with `auto_map` into `bert_layers`) is DNABERT-2's; a plain
    /// BERT config, or one whose `auto_map` names other code, is not.
    #[test]
    fn dnabert2_configs_are_told_by_their_auto_map() {
        let plain = json!({"model_type": "bert"});
        assert!(!is_dnabert2(&plain));
        let dnabert2 = json!({
            "model_type": "bert",
            "auto_map": {"AutoModel": "bert_layers.BertModel", "AutoTokenizer": [null, null]},
        });
        assert!(is_dnabert2(&dnabert2));
        let finetuned = json!({
            "model_type": "bert",
            "auto_map": {"AutoModel": "zhihan1996/DNABERT-2-117M--bert_layers.BertModel"},
        });
        assert!(is_dnabert2(&finetuned));
        let other = json!({"model_type": "bert", "auto_map": {"AutoModel": "modeling_x.XModel"}});
        assert!(!is_dnabert2(&other));
    }
}
