//! LucaOne (`LucaGPLMModel` under `lucaone.`, `model_type: lucaone`, the `lucaone` package's
//! layout): an ESM-like pre-LN encoder with rotary positions (rotate-half, θ 10000), token-type
//! embeddings (0 nucleotide, 1 protein) scaled with the tokens by `embed_scale`, exact GELU,
//! a 4 × hidden MLP (`fc1`, `fc2`; the package ignores `ffn_dim`), a `last_layer_norm`, and
//! the masked-LM head `lm_head` (dense + GELU + LayerNorm, decoder tied to the token
//! embeddings, a bias) of `LucaGPLMForMaskedLM`. Every LayerNorm is torch's default (eps 1e-5):
//! the package never reads `layer_norm_eps`. Its vocabulary is one character per token over
//! nucleotides written as digits (A→1, T/U→2, C→3, G→4, anything else→5) and protein letters;
//! [`tokenizer_json`] builds a `tokenizer.json` per sequence type that does the remapping.
//! Tensor names are the package's.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SequenceKind;
use super::bert::{LM_HEAD, MlmHead, Packing, attend_unpacked, packed};
use super::llama::Rope;
use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::{AttentionSpec, Dense, FusedOps, LayerNorm, MASKED, gelu, rotary};
use crate::models::nn::{affine, dense, packed_low_rank, self_attention};

/// torch's `nn.LayerNorm` default, what every LucaOne LayerNorm uses.
const EPS: f64 = 1e-5;

/// LucaOne's `gene_prot` vocabulary, id = position.
pub const VOCAB: [&str; 39] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "1", "2", "3", "4", "5", "L", "A", "G", "V", "S",
    "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z",
    "O", "J", ".", "-", "*",
];

/// The fields of the package's `LucaGPLMConfig` that change the computation (the classifier
/// settings of its task classes are kept as written).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LucaOneConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "yes")]
    pub no_position_embeddings: bool,
    #[serde(default)]
    pub no_token_type_embeddings: bool,
    #[serde(default)]
    pub use_embed_layer_norm: bool,
    #[serde(default = "yes")]
    pub use_last_layer_norm: bool,
    #[serde(default = "one")]
    pub embed_scale: f64,
    #[serde(default)]
    pub token_dropout: bool,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Dropout before a task head's classifier (the package's name).
    #[serde(default = "default_classifier_dropout")]
    pub classifier_dropout_prob: f64,
    #[serde(default = "default_alphabet")]
    pub alphabet: String,
}

fn default_positions() -> usize {
    4096
}
fn default_types() -> usize {
    2
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_init() -> f64 {
    0.02
}
fn default_act() -> String {
    "gelu".into()
}
fn default_classifier_dropout() -> f64 {
    0.1
}
fn default_alphabet() -> String {
    "gene_prot".into()
}

impl LucaOneConfig {
    /// The `config.json` the package reads; a sequence head pools `[CLS]` (the one pooling
    /// dnaflow builds), and `ffn_dim` says what the package computes (4 × hidden).
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "lucaone".into());
        m.insert("ffn_dim".into(), (4 * self.hidden_size).into());
        m.insert("classifier_pooling_type".into(), "cls".into());
        m.insert("tie_word_embeddings".into(), true.into());
        v
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let h = self.num_attention_heads;
        if h == 0 || !self.hidden_size.is_multiple_of(h) || !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({h}) with an even \
                 quotient (rotary embeddings rotate pairs)",
                self.hidden_size
            )));
        }
        if !self.no_position_embeddings {
            return Err(ModelError::Config(
                "no_position_embeddings: false (learned absolute positions beside rotary) is \
                 not supported; LucaOne's checkpoints use rotary positions only"
                    .into(),
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(ModelError::Config(format!(
                "hidden_act `{}` is not supported (LucaOne uses gelu)",
                self.hidden_act
            )));
        }
        Ok(())
    }
}

/// The LucaOne encoder with its MLM head when it is a `LucaGPLMForMaskedLM`.
#[derive(Module, Debug)]
pub struct LucaOne<B: Backend> {
    /// `lucaone.embeddings.embed_tokens.weight` [vocab, d]; also the MLM decoder (tied).
    embed_tokens: Param<Tensor<B, 2>>,
    /// `lucaone.embeddings.embed_type.weight` [types, d] unless `no_token_type_embeddings`.
    embed_type: Option<Param<Tensor<B, 2>>>,
    embed_layer_norm: Option<LayerNorm<B>>,
    layers: Vec<Layer<B>>,
    last_layer_norm: Option<LayerNorm<B>>,
    lm: Option<MlmHead<B>>,
    #[module(skip)]
    config: LucaOneConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    precision: Precision,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    pre_layer_norm: LayerNorm<B>,
    q_proj: Dense<B>,
    k_proj: Dense<B>,
    v_proj: Dense<B>,
    out_proj: Dense<B>,
    post_layer_norm: LayerNorm<B>,
    fc1: Dense<B>,
    fc2: Dense<B>,
    /// `self_attn.rot_emb.inv_freq`, saved because the package needs it in the checkpoint.
    inv_freq: Param<Tensor<B, 1>>,
    attn_dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> LucaOne<B> {
    /// Declare the encoder's tensors (`lucaone.*`) and, with `lm_head`, the MLM head
    /// (`lm_head.*`): one walk builds, initialises (normal(0, 0.02), zero biases, the padding
    /// row zeroed, as the package's `_init_weights`) and saves them.
    pub fn declare(
        config: &LucaOneConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<LucaOne<B>, ModelError> {
        config.check()?;
        let (d, std) = (config.hidden_size, config.initializer_range);
        let inner = 4 * d;
        let spec = AttentionSpec::multi_head(config.num_attention_heads, d, false);
        let rope = Rope::plain(10000.0, config.head_dim());
        let mut luca = vars.pp("lucaone");
        let mut e = luca.pp("embeddings");
        let embed_tokens = e.param(
            "embed_tokens.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let embed_type = (!config.no_token_type_embeddings).then(|| {
            e.param(
                "embed_type.weight",
                [config.type_vocab_size, d],
                Init::Normal(std),
            )
        });
        let embed_layer_norm = config
            .use_embed_layer_norm
            .then(|| e.layer_norm("embed_layer_norm", d, EPS));
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut l = luca.pp(format_args!("encoder.layers.{i}"));
                Layer {
                    pre_layer_norm: l.layer_norm("pre_layer_norm", d, EPS),
                    q_proj: l.linear("self_attn.q_proj", d, d, true, std),
                    k_proj: l.linear("self_attn.k_proj", d, d, true, std),
                    v_proj: l.linear("self_attn.v_proj", d, d, true, std),
                    out_proj: l.linear("self_attn.out_proj", d, d, true, std),
                    post_layer_norm: l.layer_norm("post_layer_norm", d, EPS),
                    fc1: l.linear("fc1", d, inner, true, std),
                    fc2: l.linear("fc2", inner, d, true, std),
                    inv_freq: l.constant("self_attn.rot_emb.inv_freq", rope.inv_freq()),
                    attn_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        let last_layer_norm = config
            .use_last_layer_norm
            .then(|| luca.layer_norm("encoder.last_layer_norm", d, EPS));
        // `lm_head`: its decoder tied to the token embeddings.
        let lm = lm_head.then(|| {
            MlmHead::declare(
                &mut vars.pp("lm_head"),
                d,
                config.vocab_size,
                EPS,
                std,
                LM_HEAD,
            )
        });
        Ok(LucaOne {
            embed_tokens,
            embed_type,
            embed_layer_norm,
            layers,
            last_layer_norm,
            lm,
            config: config.clone(),
            rope,
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &LucaOneConfig {
        &self.config
    }

    /// Number of encoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// `embed_scale`·(token + token-type embeddings) [B, T, d], then the embedding LayerNorm
    /// when there is one. (The package's `token_dropout` acts in its training only, and
    /// dnaflow does not apply it.)
    fn embed(&self, ids: Tensor<B, 2, Int>, types: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
        let pick = |table: Tensor<B, 2>, at: Tensor<B, 2, Int>| {
            table.select(0, at.reshape([b * t])).reshape([b, t, d])
        };
        let mut x = pick(self.embed_tokens.val(), ids);
        if let Some(kinds) = &self.embed_type {
            x = x + pick(kinds.val(), types);
        }
        if self.config.embed_scale != 1.0 {
            x = x.mul_scalar(self.config.embed_scale);
        }
        match &self.embed_layer_norm {
            Some(ln) => ln.forward(x),
            None => x,
        }
    }

    /// The package's `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of
    /// layer N, the last after `last_layer_norm`. `types` [B, T] is 0 for nucleotides, 1 for
    /// protein; `mask` [B, T] 1 for real tokens (padding positions come back as zeros).
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let n = layer.min(self.layers.len());
        let t = ids.dims()[1];
        let x = self.embed(ids, types);
        let (cos, sin) = self.rope.tables::<B>(0, t, &x.device());
        let padding = mask.clone().equal_elem(0).float().mul_scalar(MASKED); // [B, T]
        packed(&mask, x, |mut x, packing| {
            for l in &self.layers[..n] {
                x = l.forward(x, padding.clone(), packing, (&cos, &sin), self.precision);
            }
            match (n == self.layers.len(), &self.last_layer_norm) {
                (true, Some(ln)) => ln.forward(x),
                _ => x,
            }
        })
    }

    /// The MLM head on hidden states [B, T, d] → logits [B, T, vocab] (`None` without one).
    pub(crate) fn mlm_on(&self, h: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let head = self.lm.as_ref()?;
        Some(head.forward(h, self.embed_tokens.val(), self.precision))
    }

    /// MLM logits [B, T, vocab] (what `LucaGPLMForMaskedLM` computes); `None` without the head.
    pub fn mlm_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        types: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    ) -> Option<Tensor<B, 3>> {
        self.lm.as_ref()?;
        self.mlm_on(self.hidden_at(ids, types, mask, self.layers.len()))
    }
}

impl<B: FusedOps> Layer<B> {
    /// One pre-LN layer on x [B, T, d], or on the packed real tokens [1, N, d] when `packing`.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2>,
        packing: Option<&Packing<B>>,
        (cos, sin): (&Tensor<B, 2>, &Tensor<B, 2>),
        p: Precision,
    ) -> Tensor<B, 3> {
        let h = self.pre_layer_norm.forward(x.clone());
        let w = |l: &Dense<B>| l.weight.val();
        let b = |l: &Dense<B>| l.bias.as_ref().map(|b| b.val());
        let (q, k, v) = (&self.q_proj, &self.k_proj, &self.v_proj);
        let bias = match (b(q), b(k), b(v)) {
            (Some(bq), Some(bk), Some(bv)) => Some(Tensor::cat(vec![bq, bk, bv], 0)),
            _ => None,
        };
        let mut qkv = affine(h.clone(), Tensor::cat(vec![w(q), w(k), w(v)], 1), bias, p);
        if let Some(delta) = packed_low_rank(&[q, k, v], h, p) {
            qkv = qkv + delta;
        }
        let ctx = attend_unpacked(packing, qkv, |qkv| {
            let qkv = rotary(qkv, cos.clone(), sin.clone(), 2 * self.spec.heads); // [B, T, 3d]
            self_attention(qkv, Some(padding), &self.spec, None, &self.attn_dropout, p) // [B, T, d]
        });
        let x = x + dense(&self.out_proj, ctx, p);
        let h = gelu(dense(&self.fc1, self.post_layer_norm.forward(x.clone()), p));
        x + dense(&self.fc2, h, p)
    }
}

/// The token type LucaOne gives every position of such a sequence: 0 nucleotides, 1 protein.
pub fn token_type(kind: SequenceKind) -> u32 {
    match kind {
        SequenceKind::Nucleotide => 0,
        SequenceKind::Protein => 1,
    }
}

/// A `tokenizer.json` that gives `LucaGPLMTokenizer`'s ids and token types for one sequence
/// type: one token per character; for nucleotides a normalizer first writes A→1, T/U→2, C→3,
/// G→4 (either case) and anything else→5, as the package's `gene_seq_replace`; framing
/// `[CLS] … [SEP]` with every position of the sequence type's token type.
pub fn tokenizer_json(seq: SequenceKind) -> Value {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true,
            })
        })
        .collect();
    let words: serde_json::Map<String, Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let replace = |pattern: &str, content: &str| json!({ "type": "Replace", "pattern": { "Regex": pattern }, "content": content });
    let normalizer = match seq {
        SequenceKind::Nucleotide => json!({
            "type": "Sequence",
            "normalizers": [
                replace("[^ACGTUacgtu]", "5"),
                replace("[Aa]", "1"),
                replace("[TtUu]", "2"),
                replace("[Cc]", "3"),
                replace("[Gg]", "4"),
            ]
        }),
        SequenceKind::Protein => Value::Null,
    };
    let kind = token_type(seq);
    let special = |t: &str, i: usize| json!({ "id": t, "ids": [i], "tokens": [t] });
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {
            "type": "Split", "pattern": { "Regex": "." }, "behavior": "Isolated", "invert": false
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                { "SpecialToken": { "id": "[CLS]", "type_id": kind } },
                { "Sequence": { "id": "A", "type_id": kind } },
                { "SpecialToken": { "id": "[SEP]", "type_id": kind } }
            ],
            "pair": [
                { "SpecialToken": { "id": "[CLS]", "type_id": kind } },
                { "Sequence": { "id": "A", "type_id": kind } },
                { "SpecialToken": { "id": "[SEP]", "type_id": kind } },
                { "Sequence": { "id": "B", "type_id": kind } },
                { "SpecialToken": { "id": "[SEP]", "type_id": kind } }
            ],
            "special_tokens": {
                "[CLS]": special("[CLS]", 2),
                "[SEP]": special("[SEP]", 3),
            }
        },
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "[UNK]" }
    })
}

/// The nucleotide [`tokenizer_json`], for a LucaOne model directory (the package's tokenizer
/// files are its own Python class, so any directory gets it).
pub fn tokenizer_for_model_dir(_dir: &std::path::Path) -> Result<Option<Value>, ModelError> {
    Ok(Some(tokenizer_json(SequenceKind::Nucleotide)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// Each sequence type's tokenizer.json gives LucaGPLMTokenizer's ids and token types on
    /// the fixture's cases (lower case, U, unknown bases, protein letters and symbols).
    #[test]
    fn the_built_tokenizers_give_lucaones_ids_and_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/lucaone/reference.json");
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = reference["tokenizer"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let text = case[0].as_str().unwrap();
            let seq = match case[1].as_str().unwrap() {
                "gene" => SequenceKind::Nucleotide,
                _ => SequenceKind::Protein,
            };
            let tok = tokenizers::Tokenizer::from_str(&tokenizer_json(seq).to_string()).unwrap();
            let enc = tok.encode(text, true).unwrap();
            let ids: Vec<u32> = serde_json::from_value(case[2].clone()).unwrap();
            let types: Vec<u32> = serde_json::from_value(case[3].clone()).unwrap();
            assert_eq!(enc.get_ids(), ids.as_slice(), "{text:?} {seq:?}");
            assert_eq!(enc.get_type_ids(), types.as_slice(), "{text:?} {seq:?}");
        }
    }
}
