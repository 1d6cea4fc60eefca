//! BERT (`BertModel` under `bert.`): post-LN encoder, exact (erf) GELU, token types; and the
//! masked-LM head of `BertForMaskedLM` (`cls.predictions.*`), whose decoder is tied to the word
//! embeddings. Tensor names are Hugging Face's. Task heads are in `heads.rs`.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use serde::{Deserialize, Serialize};

use super::fused::{Keys, attention, gelu, split_heads};
use super::weights::{Init, Weights};
use super::{
    FusedOps, LayerNorm, MASKED, ModelError, Precision, add_per_row, affine, attention_fuses,
    attention_scale, attention_stepwise, dense, layer_norm, matmul, put_layer_norm, torch_linear,
};

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
    #[module(skip)]
    config: BertConfig,
    #[module(skip)]
    precision: Precision,
}

/// The masked-LM head `cls.predictions`: dense + GELU + LayerNorm, then the tied decoder.
#[derive(Module, Debug)]
pub struct MlmHead<B: Backend> {
    /// `cls.predictions.transform.dense`
    transform: Linear<B>,
    transform_ln: LayerNorm<B>,
    /// `cls.predictions.bias` [vocab]
    decoder_bias: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    attn_out: Linear<B>,
    attn_ln: LayerNorm<B>,
    intermediate: Linear<B>,
    output: Linear<B>,
    output_ln: LayerNorm<B>,
    attn_dropout: Dropout,
    dropout: Dropout,
    n_head: usize,
}

/// The (name, module field) pairs of a layer's `nn.Linear`s, in HF naming.
const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl<B: FusedOps> Bert<B> {
    /// Take the encoder's HF tensors from `w` (names and shapes are checked when the model
    /// that owns this backbone finishes the load).
    pub fn build(
        config: &BertConfig,
        w: &mut Weights,
        device: &B::Device,
    ) -> Result<Bert<B>, ModelError> {
        config.check()?;
        let (d, inner, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let dense = |w: &mut Weights, name: &str, d_in: usize, d_out: usize| {
            torch_linear(w, name, d_in, d_out, true, device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("bert.encoder.layer.{i}");
                Layer {
                    query: dense(w, &format!("{p}.attention.self.query"), d, d),
                    key: dense(w, &format!("{p}.attention.self.key"), d, d),
                    value: dense(w, &format!("{p}.attention.self.value"), d, d),
                    attn_out: dense(w, &format!("{p}.attention.output.dense"), d, d),
                    attn_ln: layer_norm(
                        w,
                        &format!("{p}.attention.output.LayerNorm"),
                        d,
                        eps,
                        device,
                    ),
                    intermediate: dense(w, &format!("{p}.intermediate.dense"), d, inner),
                    output: dense(w, &format!("{p}.output.dense"), inner, d),
                    output_ln: layer_norm(w, &format!("{p}.output.LayerNorm"), d, eps, device),
                    attn_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                    n_head: config.num_attention_heads,
                }
            })
            .collect();
        w.skip("bert.embeddings.position_ids"); // a buffer some checkpoints carry
        let model = Bert {
            word_embeddings: w.param(
                "bert.embeddings.word_embeddings.weight",
                [config.vocab_size, d],
                device,
            ),
            position_embeddings: w.param(
                "bert.embeddings.position_embeddings.weight",
                [config.max_position_embeddings, d],
                device,
            ),
            token_type_embeddings: w.param(
                "bert.embeddings.token_type_embeddings.weight",
                [config.type_vocab_size, d],
                device,
            ),
            embeddings_ln: layer_norm(w, "bert.embeddings.LayerNorm", d, eps, device),
            layers,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            config: config.clone(),
            precision: Precision::F32,
        };
        Ok(model)
    }

    /// Fresh weights as HF initializes them (normal(0, 0.02), zero biases, the padding row of
    /// the word embeddings zeroed).
    pub fn init_weights(config: &BertConfig, seed: u64) -> Weights {
        let (d, inner, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.initializer_range,
        );
        let mut w = Weights::new();
        let mut init = Init::new(seed);
        let words = "bert.embeddings.word_embeddings.weight";
        init.normal(&mut w, words, vec![config.vocab_size, d], std);
        if let Some(pad) = config.pad_token_id.map(|p| p as usize)
            && pad < config.vocab_size
        {
            let t = w.get(words).expect("just inserted").clone();
            let mut values = t.values;
            values[pad * d..(pad + 1) * d].fill(0.0);
            w.insert(words, t.shape, values);
        }
        init.normal(
            &mut w,
            "bert.embeddings.position_embeddings.weight",
            vec![config.max_position_embeddings, d],
            std,
        );
        init.normal(
            &mut w,
            "bert.embeddings.token_type_embeddings.weight",
            vec![config.type_vocab_size, d],
            std,
        );
        Init::layer_norm(&mut w, "bert.embeddings.LayerNorm", d);
        for i in 0..config.num_hidden_layers {
            let p = format!("bert.encoder.layer.{i}");
            for name in LAYER_LINEARS {
                let (d_in, d_out) = match name {
                    "intermediate.dense" => (d, inner),
                    "output.dense" => (inner, d),
                    _ => (d, d),
                };
                init.normal(
                    &mut w,
                    &format!("{p}.{name}.weight"),
                    vec![d_out, d_in],
                    std,
                );
                Init::constant(&mut w, &format!("{p}.{name}.bias"), d_out, 0.0);
            }
            Init::layer_norm(&mut w, &format!("{p}.attention.output.LayerNorm"), d);
            Init::layer_norm(&mut w, &format!("{p}.output.LayerNorm"), d);
        }
        w
    }

    /// Every tensor of the encoder under its HF name.
    pub fn to_weights(&self) -> Weights {
        let mut w = Weights::new();
        w.put(
            "bert.embeddings.word_embeddings.weight",
            &self.word_embeddings,
        );
        w.put(
            "bert.embeddings.position_embeddings.weight",
            &self.position_embeddings,
        );
        w.put(
            "bert.embeddings.token_type_embeddings.weight",
            &self.token_type_embeddings,
        );
        put_layer_norm(&mut w, "bert.embeddings.LayerNorm", &self.embeddings_ln);
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("bert.encoder.layer.{i}");
            let linears = [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.intermediate,
                &l.output,
            ];
            for (name, lin) in LAYER_LINEARS.iter().zip(linears) {
                w.put_transposed(&format!("{p}.{name}.weight"), &lin.weight);
                w.put(
                    &format!("{p}.{name}.bias"),
                    lin.bias.as_ref().expect("BERT has biases"),
                );
            }
            put_layer_norm(
                &mut w,
                &format!("{p}.attention.output.LayerNorm"),
                &l.attn_ln,
            );
            put_layer_norm(&mut w, &format!("{p}.output.LayerNorm"), &l.output_ln);
        }
        w
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
        let mut x = self
            .dropout
            .forward(self.embeddings_ln.forward(add_per_row(words + kinds, pos)));
        let packing = Packing::of(&mask);
        let padding = mask.equal_elem(0).float().mul_scalar(MASKED); // [B, T]: MASKED on padding keys
        if let Some(packing) = &packing {
            x = packing.pack(x);
        }
        for layer in &self.layers[..layers] {
            x = layer.forward(x, padding.clone(), packing.as_ref(), self.precision);
        }
        match &packing {
            Some(packing) => packing.unpack(x),
            None => x,
        }
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

    /// The word embeddings [vocab, d], which the MLM decoder shares.
    pub fn word_embeddings(&self) -> Tensor<B, 2> {
        self.word_embeddings.val()
    }

    /// MLM logits [B, T, vocab] with `head` on top (what `BertForMaskedLM` computes).
    pub fn forward(
        &self,
        head: &MlmHead<B>,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        head.forward(self.hidden(ids, types, mask), self)
    }
}

impl<B: FusedOps> MlmHead<B> {
    /// Take `cls.predictions.*` from `w`.
    pub fn build(config: &BertConfig, w: &mut Weights, device: &B::Device) -> MlmHead<B> {
        let d = config.hidden_size;
        // Tied copies some checkpoints carry.
        w.skip("cls.predictions.decoder.weight");
        w.skip("cls.predictions.decoder.bias");
        MlmHead {
            transform: torch_linear(w, "cls.predictions.transform.dense", d, d, true, device),
            transform_ln: layer_norm(
                w,
                "cls.predictions.transform.LayerNorm",
                d,
                config.layer_norm_eps,
                device,
            ),
            decoder_bias: w.param("cls.predictions.bias", [config.vocab_size], device),
        }
    }

    /// Fresh `cls.predictions.*` as HF initializes them.
    pub fn init_weights(config: &BertConfig, seed: u64) -> Weights {
        let d = config.hidden_size;
        let mut w = Weights::new();
        let mut init = Init::new(seed);
        let name = "cls.predictions.transform.dense";
        init.normal(
            &mut w,
            &format!("{name}.weight"),
            vec![d, d],
            config.initializer_range,
        );
        Init::constant(&mut w, &format!("{name}.bias"), d, 0.0);
        Init::layer_norm(&mut w, "cls.predictions.transform.LayerNorm", d);
        Init::constant(&mut w, "cls.predictions.bias", config.vocab_size, 0.0);
        w
    }

    /// `cls.predictions.*` under HF names (the tied decoder weight left out, as HF saves it).
    pub fn put_weights(&self, w: &mut Weights) {
        let name = "cls.predictions.transform.dense";
        w.put_transposed(&format!("{name}.weight"), &self.transform.weight);
        w.put(
            &format!("{name}.bias"),
            self.transform.bias.as_ref().expect("bias"),
        );
        put_layer_norm(w, "cls.predictions.transform.LayerNorm", &self.transform_ln);
        w.put("cls.predictions.bias", &self.decoder_bias);
    }

    /// Vocabulary logits [B, T, vocab] from encoder states [B, T, d].
    pub fn forward(&self, h: Tensor<B, 3>, bert: &Bert<B>) -> Tensor<B, 3> {
        let [b, t, d] = h.dims();
        let h = self
            .transform_ln
            .forward(gelu(dense(&self.transform, h, bert.precision)));
        let vocab = bert.config.vocab_size;
        let logits = matmul(
            h.reshape([b * t, d]),
            bert.word_embeddings.val().transpose(),
            bert.precision,
        ) + self.decoder_bias.val().unsqueeze_dim::<2>(0); // [B*T, vocab]
        logits.reshape([b, t, vocab])
    }
}

/// The real (non-padding) tokens of a padded batch, so the encoder's token-wise work (every
/// dense layer, GELU, layer norm) runs on them alone, as [1, N, d], and only attention sees the
/// batch's [B, T] layout. With rows of mixed lengths padded to the longest, as masked LM and
/// fine-tuning batches are, a third or more of [B, T] is padding. Padding positions come back
/// as zeros; nothing reads them (losses, pooling and probes skip them by the mask).
struct Packing<B: Backend> {
    /// Row-major positions b·T + t of the real tokens, in order.
    real: Tensor<B, 1, Int>,
    b: usize,
    t: usize,
}

impl<B: Backend> Packing<B> {
    /// None when no position is padding: then packing would only copy.
    fn of(mask: &Tensor<B, 2, Int>) -> Option<Packing<B>> {
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
    fn pack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let c = x.dims()[2];
        let n = self.real.dims()[0];
        x.reshape([self.b * self.t, c])
            .select(0, self.real.clone())
            .reshape([1, n, c])
    }

    /// [1, N, c] → [B, T, c], padding positions zero.
    fn unpack(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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

impl<B: FusedOps> Layer<B> {
    /// One encoder layer on x [B, T, d], or on the packed real tokens [1, N, d] when `packing`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2>,
        packing: Option<&Packing<B>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let [_, _, d] = x.dims();
        let qkv = affine(x.clone(), self.qkv_weight(), self.qkv_bias(), p); // q | k | v
        let qkv = match packing {
            Some(packing) => packing.unpack(qkv), // attention needs [B, T, 3d]
            None => qkv,
        };
        let keys = Keys::Padded(padding);
        let ctx = if attention_fuses::<B>(&self.attn_dropout, p, &x.device()) {
            attention(qkv, keys, self.n_head, attention_scale(d / self.n_head))
        } else {
            let heads = split_heads(qkv, self.n_head);
            attention_stepwise(heads, keys, &self.attn_dropout, p)
        }; // [B, T, d]
        let ctx = match packing {
            Some(packing) => packing.pack(ctx),
            None => ctx,
        };
        let x = self
            .attn_ln
            .forward(x + self.dropout.forward(dense(&self.attn_out, ctx, p)));
        let m = gelu(dense(&self.intermediate, x.clone(), p));
        self.output_ln
            .forward(x + self.dropout.forward(dense(&self.output, m, p)))
    }

    /// query | key | value weights side by side, [d, 3d]: one product gives q | k | v.
    fn qkv_weight(&self) -> Tensor<B, 2> {
        let w = |l: &Linear<B>| l.weight.val();
        Tensor::cat(vec![w(&self.query), w(&self.key), w(&self.value)], 1)
    }

    /// Their biases, [3d].
    fn qkv_bias(&self) -> Option<Tensor<B, 1>> {
        let b = |l: &Linear<B>| l.bias.as_ref().map(|b| b.val());
        Some(Tensor::cat(
            vec![b(&self.query)?, b(&self.key)?, b(&self.value)?],
            0,
        ))
    }
}
