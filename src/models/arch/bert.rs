//! BERT (`BertModel` under `bert.`): post-LN encoder, exact (erf) GELU, token types; and the
//! masked-LM head of `BertForMaskedLM` (`cls.predictions.*`), whose decoder is tied to the word
//! embeddings. Tensor names are Hugging Face's. Task heads are in `heads.rs`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use serde::{Deserialize, Serialize};

use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::gelu;
use crate::models::kernels::{self, AttentionSpec, Dense, FusedOps, LayerNorm, MASKED};
use crate::models::nn::{add_per_row, affine, dense, matmul, packed_low_rank, self_attention};

/// The fields of HF's `BertConfig` that change the computation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pdrop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_pdrop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Dropout before a task head's classifier (null: the architecture's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
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

impl BertConfig {
    /// The `config.json` transformers reads.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "bert".into());
        m.insert("position_embedding_type".into(), "absolute".into());
        m.insert("tie_word_embeddings".into(), true.into());
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
                "hidden_act `{}` is not supported (BERT uses gelu)",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

/// The BERT encoder (embeddings and layers; the pooler belongs to the sequence head).
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// `bert.embeddings.word_embeddings.weight` [vocab, d]; also the MLM decoder (tied).
    word_embeddings: Param<Tensor<B, 2>>,
    position_embeddings: Param<Tensor<B, 2>>,
    token_type_embeddings: Param<Tensor<B, 2>>,
    embeddings_ln: LayerNorm<B>,
    layers: Vec<Layer<B>>,
    dropout: Dropout,
    /// `cls.predictions.*`, when this is `BertForMaskedLM`.
    mlm: Option<MlmHead<B>>,
    #[module(skip)]
    config: BertConfig,
    #[module(skip)]
    precision: Precision,
}

/// The masked-LM head of BERT (`cls.predictions`), DNABERT-2, ESM and LucaOne (`lm_head`):
/// dense + GELU + LayerNorm, then the decoder tied to the word embeddings, plus a bias.
#[derive(Module, Debug)]
pub struct MlmHead<B: Backend> {
    /// `cls.predictions.transform.dense`, `lm_head.dense`
    transform: Dense<B>,
    transform_ln: LayerNorm<B>,
    /// `cls.predictions.bias`, `lm_head.bias` [vocab]
    decoder_bias: Param<Tensor<B, 1>>,
}

/// The tensor names of an [`MlmHead`] under its prefix.
pub(crate) struct MlmNames {
    pub dense: &'static str,
    pub layer_norm: &'static str,
    /// The decoder's output bias [vocab].
    pub bias: &'static str,
}

/// BERT's `cls.predictions` names (DNABERT-2's bias is `decoder.bias`).
pub(crate) const BERT_MLM: MlmNames = MlmNames {
    dense: "transform.dense",
    layer_norm: "transform.LayerNorm",
    bias: "bias",
};

/// ESM's and LucaOne's `lm_head` names.
pub(crate) const LM_HEAD: MlmNames = MlmNames {
    dense: "dense",
    layer_norm: "layer_norm",
    bias: "bias",
};

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    query: Dense<B>,
    key: Dense<B>,
    value: Dense<B>,
    attn_out: Dense<B>,
    attn_ln: LayerNorm<B>,
    intermediate: Dense<B>,
    output: Dense<B>,
    output_ln: LayerNorm<B>,
    attn_dropout: Dropout,
    dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> Bert<B> {
    /// Declare the encoder's HF tensors (`bert.*`) and, with `lm_head`, the MLM head
    /// (`cls.predictions.*`): one walk builds, initialises (normal(0, 0.02), zero biases, the
    /// padding row of the word embeddings zeroed) and saves them.
    pub fn declare(
        config: &BertConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<Bert<B>, ModelError> {
        config.check()?;
        let (d, inner, eps, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
            config.initializer_range,
        );
        let spec = AttentionSpec::multi_head(config.num_attention_heads, d, false);
        let mut bert = vars.pp("bert");
        let mut e = bert.pp("embeddings");
        e.skip("position_ids"); // a buffer some checkpoints carry
        let word_embeddings = e.param(
            "word_embeddings.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let position_embeddings = e.param(
            "position_embeddings.weight",
            [config.max_position_embeddings, d],
            Init::Normal(std),
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
                    query: l.linear("attention.self.query", d, d, true, std),
                    key: l.linear("attention.self.key", d, d, true, std),
                    value: l.linear("attention.self.value", d, d, true, std),
                    attn_out: l.linear("attention.output.dense", d, d, true, std),
                    attn_ln: l.layer_norm("attention.output.LayerNorm", d, eps),
                    intermediate: l.linear("intermediate.dense", d, inner, true, std),
                    output: l.linear("output.dense", inner, d, true, std),
                    output_ln: l.layer_norm("output.LayerNorm", d, eps),
                    attn_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        let mlm = lm_head.then(|| {
            let mut head = vars.pp("cls.predictions");
            head.skip("decoder.bias"); // a tied copy of `cls.predictions.bias`
            MlmHead::declare(&mut head, d, config.vocab_size, eps, std, BERT_MLM)
        });
        Ok(Bert {
            word_embeddings,
            position_embeddings,
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

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Last encoder hidden states [B, T, d]. `mask` [B, T] is 1 for real tokens, 0 for padding.
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.encode(ids, types, mask, self.layers.len())
    }

    /// Embeddings, then the first `layers` encoder layers.
    fn encode(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        layers: usize,
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
        let pos = self.position_embeddings.val().slice([0..t, 0..d]);
        let x = kernels::dropout(
            &self.dropout,
            self.embeddings_ln.forward(add_per_row(words + kinds, pos)),
        );
        let padding = mask.clone().equal_elem(0).float().mul_scalar(MASKED); // [B, T]: MASKED on padding keys
        packed(&mask, x, |mut x, packing| {
            for layer in &self.layers[..layers] {
                x = layer.forward(x, padding.clone(), packing, self.precision);
            }
            x
        })
    }

    /// HF's `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of layer N.
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        layer: usize,
    ) -> Tensor<B, 3> {
        self.encode(ids, types, mask, layer.min(self.layers.len()))
    }

    /// Number of encoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// The MLM head on hidden states [B, T, d] (`None` without one).
    pub(crate) fn mlm_on(&self, h: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let head = self.mlm.as_ref()?;
        Some(head.forward(h, self.word_embeddings.val(), self.precision))
    }

    /// MLM logits [B, T, vocab] (what `BertForMaskedLM` computes); `None` without the head.
    pub fn mlm_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    ) -> Option<Tensor<B, 3>> {
        self.mlm_on(self.hidden(ids, types, mask))
    }
}

impl<B: FusedOps> MlmHead<B> {
    /// Declare an MLM head under `vars` (`cls.predictions`, `lm_head`) by `names`: the dense
    /// layer, the LayerNorm (eps `eps`) and the decoder's output bias [vocab]. The decoder
    /// weight is the word embeddings: a tied copy a checkpoint carries is skipped.
    pub(crate) fn declare(
        vars: &mut Vars<B>,
        d: usize,
        vocab: usize,
        eps: f64,
        std: f64,
        names: MlmNames,
    ) -> MlmHead<B> {
        vars.skip("decoder.weight");
        MlmHead {
            transform: vars.linear(names.dense, d, d, true, std),
            transform_ln: vars.layer_norm(names.layer_norm, d, eps),
            decoder_bias: vars.param(names.bias, [vocab], Init::Zeros),
        }
    }

    /// Vocabulary logits [B, T, vocab] from encoder states [B, T, d], the decoder being the
    /// word `embeddings` [vocab, d].
    pub(crate) fn forward(
        &self,
        h: Tensor<B, 3>,
        embeddings: Tensor<B, 2>,
        precision: Precision,
    ) -> Tensor<B, 3> {
        let [b, t, d] = h.dims();
        let h = self
            .transform_ln
            .forward(gelu(dense(&self.transform, h, precision)));
        let vocab = embeddings.dims()[0];
        let logits = matmul(h.reshape([b * t, d]), embeddings.transpose(), precision)
            + self.decoder_bias.val().unsqueeze_dim::<2>(0); // [B*T, vocab]
        logits.reshape([b, t, vocab])
    }
}

/// The real (non-padding) tokens of a padded batch, so the encoder's token-wise work (every
/// dense layer, GELU, layer norm) runs on them alone, as [1, N, d], and only attention sees the
/// batch's [B, T] layout. With rows of mixed lengths padded to the longest, as masked LM and
/// fine-tuning batches are, a third or more of [B, T] is padding. Padding positions come back
/// as zeros; nothing reads them (losses, pooling and probes skip them by the mask).
pub(crate) struct Packing<B: Backend> {
    /// Row-major positions b·T + t of the real tokens, in order.
    real: Tensor<B, 1, Int>,
    b: usize,
    t: usize,
}

impl<B: Backend> Packing<B> {
    /// None when no position is padding: then packing would only copy.
    pub(crate) fn of(mask: &Tensor<B, 2, Int>) -> Option<Packing<B>> {
        let [b, t] = mask.dims();
        let host = mask.to_data().convert::<i64>();
        let values = host.as_slice::<i64>().expect("i64 after convert");
        let real: Vec<i64> = (0..b * t)
            .filter(|&i| values[i] != 0)
            .map(|i| i as i64)
            .collect();
        if real.len() == b * t || real.is_empty() {
            return None;
        }
        let n = real.len();
        let real = Tensor::from_data(
            TensorData::new(real, [n]).convert::<B::IntElem>(),
            &mask.device(),
        );
        Some(Packing { real, b, t })
    }

    /// [B, T, c] → [1, N, c]: the real tokens' rows.
    pub(crate) fn pack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let c = x.dims()[2];
        let n = self.real.dims()[0];
        x.reshape([self.b * self.t, c])
            .select(0, self.real.clone())
            .reshape([1, n, c])
    }

    /// [1, N, c] → [B, T, c], padding positions zero.
    pub(crate) fn unpack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, n, c] = x.dims();
        Tensor::zeros([self.b * self.t, c], &x.device())
            .select_assign(
                0,
                self.real.clone(),
                x.reshape([n, c]),
                IndexingUpdateOp::Add,
            )
            .reshape([self.b, self.t, c])
    }
}

/// `encode` on x [B, T, d]: on its real tokens packed as [1, N, d] when `mask` [B, T] has
/// padding (padding positions come back as zeros), else on x as it is. `encode` gets the
/// packing, which attention needs to see the batch's layout ([`attend_unpacked`]).
pub(crate) fn packed<B: Backend>(
    mask: &Tensor<B, 2, Int>,
    x: Tensor<B, 3>,
    encode: impl FnOnce(Tensor<B, 3>, Option<&Packing<B>>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    match Packing::of(mask) {
        Some(packing) => packing.unpack(encode(packing.pack(x), Some(&packing))),
        None => encode(x, None),
    }
}

/// `attend` on the batch's [B, T, ·] layout: `qkv` unpacked before it and its context packed
/// after, when the layer runs on packed tokens.
pub(crate) fn attend_unpacked<B: Backend>(
    packing: Option<&Packing<B>>,
    qkv: Tensor<B, 3>,
    attend: impl FnOnce(Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 3> {
    match packing {
        Some(packing) => packing.pack(attend(packing.unpack(qkv))),
        None => attend(qkv),
    }
}

impl<B: FusedOps> Layer<B> {
    /// One encoder layer on x [B, T, d], or on the packed real tokens [1, N, d] when `packing`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2>,
        packing: Option<&Packing<B>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let mut qkv = affine(x.clone(), self.qkv_weight(), self.qkv_bias(), p); // q | k | v
        if let Some(delta) = packed_low_rank(&[&self.query, &self.key, &self.value], x.clone(), p) {
            qkv = qkv + delta;
        }
        let ctx = attend_unpacked(packing, qkv, |qkv| {
            self_attention(qkv, Some(padding), &self.spec, None, &self.attn_dropout, p) // [B, T, d]
        });
        let x = self
            .attn_ln
            .forward(x + kernels::dropout(&self.dropout, dense(&self.attn_out, ctx, p)));
        let m = gelu(dense(&self.intermediate, x.clone(), p));
        self.output_ln
            .forward(x + kernels::dropout(&self.dropout, dense(&self.output, m, p)))
    }

    /// query | key | value weights side by side, [d, 3d]: one product gives q | k | v.
    fn qkv_weight(&self) -> Tensor<B, 2> {
        let w = |l: &Dense<B>| l.weight.val();
        Tensor::cat(vec![w(&self.query), w(&self.key), w(&self.value)], 1)
    }

    /// Their biases, [3d].
    fn qkv_bias(&self) -> Option<Tensor<B, 1>> {
        let b = |l: &Dense<B>| l.bias.as_ref().map(|b| b.val());
        Some(Tensor::cat(
            vec![b(&self.query)?, b(&self.key)?, b(&self.value)?],
            0,
        ))
    }
}
