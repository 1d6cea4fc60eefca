//! ESM-2 (`EsmModel` under `esm.`, as `facebook/esm2_*` ships it): a pre-LN encoder with rotary
//! positions (rotate-half; ESM scales the query by 1/√dh before rotating it, the same product
//! up to rounding), exact GELU, a final `emb_layer_norm_after`, and `token_dropout`: `<mask>`
//! rows of the embeddings zeroed and every row scaled by (1 − 0.15·0.8) / (1 − its observed mask
//! ratio), in training and at inference alike, as ESM was trained. The masked-LM head
//! `lm_head` (dense + GELU + LayerNorm, the decoder tied to the word embeddings, a bias) belongs
//! to `EsmForMaskedLM`. Its tokenizer is a `vocab.txt` of one token per line; [`tokenizer_json`]
//! builds the `tokenizer.json` that gives `EsmTokenizer`'s ids. Tensor names are Hugging Face's.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bert::{LM_HEAD, MlmHead, Packing, attend_unpacked, packed};
use super::llama::Rope;
use crate::models::device::Precision;
use crate::models::error::ModelError;
use crate::models::io::vars::{Init, Vars};
use crate::models::kernels::{
    self, AttentionSpec, Dense, FusedOps, LayerNorm, MASKED, gelu, rotary,
};
use crate::models::nn::{affine, dense, packed_low_rank, self_attention};

/// The mask ratio every ESM training run used (15 % of tokens selected, 80 % of those masked):
/// `token_dropout` scales embeddings by (1 − this) / (1 − the observed ratio).
const MASK_RATIO_TRAIN: f64 = 0.15 * 0.8;

/// The fields of HF's `EsmConfig` that change the computation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EsmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// `rotary` (ESM-2); `absolute` (ESM-1b, HF's default) is refused by [`EsmConfig::check`].
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// A LayerNorm on the embeddings (`esm.embeddings.layer_norm`; ESM-1b's, off in ESM-2).
    #[serde(default)]
    pub emb_layer_norm_before: Option<bool>,
    #[serde(default)]
    pub token_dropout: bool,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default = "default_pdrop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_pdrop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default)]
    pub is_folding_model: bool,
    /// Dropout before a task head's classifier (null: the architecture's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
}

fn default_positions() -> usize {
    1026
}
fn default_position_type() -> String {
    "absolute".into()
}
fn default_theta() -> f64 {
    10000.0
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

impl EsmConfig {
    /// The `config.json` transformers reads.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("config serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("model_type".into(), "esm".into());
        m.insert("tie_word_embeddings".into(), true.into());
        v
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn check(&self) -> Result<(), ModelError> {
        let h = self.num_attention_heads;
        if h == 0 || !self.hidden_size.is_multiple_of(h) {
            return Err(ModelError::Config(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({h})",
                self.hidden_size
            )));
        }
        if self.position_embedding_type != "rotary" {
            return Err(ModelError::Config(format!(
                "position_embedding_type `{}` is not supported: dnaflow builds ESM with rotary \
                 positions (ESM-2); ESM-1b's absolute positions are not implemented",
                self.position_embedding_type
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::Config(format!(
                "the head width hidden_size / num_attention_heads ({}) must be even: rotary \
                 embeddings rotate pairs",
                self.head_dim()
            )));
        }
        if self.is_decoder || self.is_folding_model {
            return Err(ModelError::Config(
                "is_decoder / is_folding_model: dnaflow builds ESM as the encoder only \
                 (no decoder, no ESMFold)"
                    .into(),
            ));
        }
        if self.token_dropout && self.mask_token_id.is_none() {
            return Err(ModelError::Config(
                "token_dropout needs mask_token_id (the <mask> whose rows it zeroes)".into(),
            ));
        }
        Ok(())
    }
}

/// The ESM encoder (embeddings, layers, `emb_layer_norm_after`) with its MLM head when it is an
/// `EsmForMaskedLM`.
#[derive(Module, Debug)]
pub struct Esm<B: Backend> {
    /// `esm.embeddings.word_embeddings.weight` [vocab, d]; also the MLM decoder (tied).
    word_embeddings: Param<Tensor<B, 2>>,
    /// `esm.embeddings.layer_norm` when `emb_layer_norm_before`.
    embeddings_ln: Option<LayerNorm<B>>,
    layers: Vec<Layer<B>>,
    /// `esm.encoder.emb_layer_norm_after`, on the last layer's output.
    emb_layer_norm_after: LayerNorm<B>,
    /// `esm.contact_head.regression` [1, layers·heads]: kept so a checkpoint round-trips; the
    /// contact map it predicts from attention weights is not computed.
    contact_regression: Dense<B>,
    /// `lm_head.*`, when this is `EsmForMaskedLM`.
    lm: Option<MlmHead<B>>,
    #[module(skip)]
    config: EsmConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    precision: Precision,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    /// `attention.LayerNorm`, before attention (pre-LN).
    attn_ln: LayerNorm<B>,
    query: Dense<B>,
    key: Dense<B>,
    value: Dense<B>,
    attn_out: Dense<B>,
    /// `LayerNorm`, before the MLP.
    mlp_ln: LayerNorm<B>,
    intermediate: Dense<B>,
    output: Dense<B>,
    attn_dropout: Dropout,
    dropout: Dropout,
    #[module(skip)]
    spec: AttentionSpec,
}

impl<B: FusedOps> Esm<B> {
    /// Declare the encoder's HF tensors (`esm.*`) and, with `lm_head`, the MLM head
    /// (`lm_head.*`): one walk builds, initialises (normal(0, 0.02), zero biases, the padding
    /// row zeroed) and saves them. A layer norm saved as `gamma` / `beta` (transformers 5.25's
    /// `save_pretrained`) loads as `weight` / `bias`; rotary `inv_freq` buffers and unused
    /// absolute position embeddings are skipped.
    pub fn declare(
        config: &EsmConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<Esm<B>, ModelError> {
        config.check()?;
        let (d, inner, eps, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
            config.initializer_range,
        );
        let spec = AttentionSpec::multi_head(config.num_attention_heads, d, false);
        let mut esm = vars.pp("esm");
        esm.skip("rotary_embeddings.inv_freq");
        esm.skip("encoder.layer.*.attention.self.rotary_embeddings.inv_freq");
        let mut e = esm.pp("embeddings");
        e.skip("position_ids");
        e.skip("position_embeddings.weight"); // in some rotary checkpoints, never read
        let word_embeddings = e.param(
            "word_embeddings.weight",
            [config.vocab_size, d],
            Init::NormalPaddingRow(std, config.pad_token_id.map(|p| p as usize)),
        );
        let embeddings_ln = config
            .emb_layer_norm_before
            .unwrap_or(false)
            .then(|| e.layer_norm("layer_norm", d, eps));
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let mut l = esm.pp(format_args!("encoder.layer.{i}"));
                l.skip("attention.self.rotary_embeddings.inv_freq");
                for norm in ["attention.LayerNorm", "LayerNorm"] {
                    l.alias(&format!("{norm}.gamma"), &format!("{norm}.weight"));
                    l.alias(&format!("{norm}.beta"), &format!("{norm}.bias"));
                }
                Layer {
                    attn_ln: l.layer_norm("attention.LayerNorm", d, eps),
                    query: l.linear("attention.self.query", d, d, true, std),
                    key: l.linear("attention.self.key", d, d, true, std),
                    value: l.linear("attention.self.value", d, d, true, std),
                    attn_out: l.linear("attention.output.dense", d, d, true, std),
                    mlp_ln: l.layer_norm("LayerNorm", d, eps),
                    intermediate: l.linear("intermediate.dense", d, inner, true, std),
                    output: l.linear("output.dense", inner, d, true, std),
                    attn_dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
                    dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
                    spec: spec.clone(),
                }
            })
            .collect();
        let emb_layer_norm_after = esm.layer_norm("encoder.emb_layer_norm_after", d, eps);
        let contacts = config.num_hidden_layers * config.num_attention_heads;
        let contact_regression = esm.linear("contact_head.regression", contacts, 1, true, std);
        // `lm_head`: its decoder tied to the word embeddings.
        let lm = lm_head.then(|| {
            MlmHead::declare(
                &mut vars.pp("lm_head"),
                d,
                config.vocab_size,
                eps,
                std,
                LM_HEAD,
            )
        });
        Ok(Esm {
            word_embeddings,
            embeddings_ln,
            layers,
            emb_layer_norm_after,
            contact_regression,
            lm,
            config: config.clone(),
            rope: Rope::plain(config.rope_theta, config.head_dim()),
            precision: Precision::F32,
        })
    }

    /// Run matrix products in `precision` (weights stay f32: mixed precision).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    pub fn config(&self) -> &EsmConfig {
        &self.config
    }

    /// Number of encoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// The word embeddings of `ids` [B, T, d], with `token_dropout`'s zeroed `<mask>` rows and
    /// per-row scaling when the config has it (the observed ratio over the row's real tokens,
    /// `mask` [B, T] 1 for those).
    fn embed(&self, ids: Tensor<B, 2, Int>, mask: &Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, t] = ids.dims();
        let d = self.config.hidden_size;
        let x = self
            .word_embeddings
            .val()
            .select(0, ids.clone().reshape([b * t]))
            .reshape([b, t, d]);
        let x = match (self.config.token_dropout, self.config.mask_token_id) {
            (true, Some(mask_id)) => {
                let masked = ids.equal_elem(mask_id as i64).float(); // [B, T]
                let real = mask.clone().float().sum_dim(1).clamp_min(1.0); // [B, 1]
                let observed = masked.clone().sum_dim(1) / real; // [B, 1]
                let scale =
                    (observed.neg() + 1.0).clamp_min(1e-6).recip() * (1.0 - MASK_RATIO_TRAIN);
                let keep = (masked.neg() + 1.0) * scale; // [B, T]: 0 on <mask>
                x * keep.unsqueeze_dim::<3>(2)
            }
            _ => x,
        };
        match &self.embeddings_ln {
            Some(ln) => ln.forward(x),
            None => x,
        }
    }

    /// HF's `hidden_states[layer]` [B, T, d]: 0 is the embeddings, N the output of layer N; the
    /// last (`num_hidden_layers`) after `emb_layer_norm_after`, as transformers returns it.
    /// `mask` [B, T] is 1 for real tokens; the layers run on those alone, packed, and padding
    /// positions come back as zeros.
    pub fn hidden_at(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let n = layer.min(self.layers.len());
        let t = ids.dims()[1];
        let x = self.embed(ids, &mask);
        let (cos, sin) = self.rope.tables::<B>(0, t, &x.device());
        let padding = mask.clone().equal_elem(0).float().mul_scalar(MASKED); // [B, T]
        packed(&mask, x, |mut x, packing| {
            for l in &self.layers[..n] {
                x = l.forward(x, padding.clone(), packing, (&cos, &sin), self.precision);
            }
            match n == self.layers.len() {
                true => self.emb_layer_norm_after.forward(x),
                false => x,
            }
        })
    }

    /// The MLM head on hidden states [B, T, d] → logits [B, T, vocab] (`None` without one).
    pub(crate) fn mlm_on(&self, h: Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let head = self.lm.as_ref()?;
        Some(head.forward(h, self.word_embeddings.val(), self.precision))
    }

    /// MLM logits [B, T, vocab] (what `EsmForMaskedLM` computes); `None` without the head.
    pub fn mlm_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        mask: Tensor<B, 2, Int>,
    ) -> Option<Tensor<B, 3>> {
        self.lm.as_ref()?;
        self.mlm_on(self.hidden_at(ids, mask, self.layers.len()))
    }
}

impl<B: FusedOps> Layer<B> {
    /// One pre-LN layer on x [B, T, d], or on the packed real tokens [1, N, d] when `packing`
    /// (attention and the rotation see the padded [B, T] layout).
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2>,
        packing: Option<&Packing<B>>,
        (cos, sin): (&Tensor<B, 2>, &Tensor<B, 2>),
        p: Precision,
    ) -> Tensor<B, 3> {
        let h = self.attn_ln.forward(x.clone());
        let mut qkv = affine(h.clone(), self.qkv_weight(), self.qkv_bias(), p); // q | k | v
        if let Some(delta) = packed_low_rank(&[&self.query, &self.key, &self.value], h, p) {
            qkv = qkv + delta;
        }
        let ctx = attend_unpacked(packing, qkv, |qkv| {
            let qkv = rotary(qkv, cos.clone(), sin.clone(), 2 * self.spec.heads); // [B, T, 3d]
            self_attention(qkv, Some(padding), &self.spec, None, &self.attn_dropout, p) // [B, T, d]
        });
        let x = x + kernels::dropout(&self.dropout, dense(&self.attn_out, ctx, p));
        let h = gelu(dense(&self.intermediate, self.mlp_ln.forward(x.clone()), p));
        x + kernels::dropout(&self.dropout, dense(&self.output, h, p))
    }

    /// query | key | value weights side by side, [d, 3d].
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

/// The `tokenizer.json` that tokenizes as transformers' `EsmTokenizer` over `vocab` (the lines
/// of `vocab.txt`, id = line): every vocabulary entry of more than one character (`<cls>`,
/// `<mask>`, …) is an added token, found anywhere in the text; the rest is split on whitespace,
/// then into single vocabulary characters and runs of anything else (a run is one `<unk>`, as
/// `EsmTokenizer` makes it); framing `<cls> A <eos>` (a pair `<cls> A <eos> B <eos>`).
pub fn tokenizer_json(vocab: &[String]) -> Result<Value, ModelError> {
    let id = |token: &str| vocab.iter().position(|v| v == token);
    let need = |token: &str| {
        id(token).ok_or_else(|| ModelError::Format(format!("the ESM vocabulary has no `{token}`")))
    };
    let (cls, eos, unk) = (need("<cls>")?, need("<eos>")?, need("<unk>")?);
    let specials = ["<cls>", "<pad>", "<eos>", "<unk>", "<mask>"];
    let added: Vec<Value> = vocab
        .iter()
        .enumerate()
        .filter(|(_, t)| t.chars().count() > 1)
        .map(|(i, t)| {
            json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": specials.contains(&t.as_str()),
            })
        })
        .collect();
    let class: String = vocab
        .iter()
        .filter(|t| t.chars().count() == 1)
        .map(|t| {
            let c = t.chars().next().expect("one character");
            if c.is_ascii_alphanumeric() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect();
    let words: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let (cls_t, eos_t) = (&vocab[cls], &vocab[eos]);
    let special = |t: &str, i: usize| json!({ "id": t, "ids": [i], "tokens": [t] });
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                { "type": "WhitespaceSplit" },
                {
                    "type": "Split",
                    "pattern": { "Regex": format!("[{class}]|[^{class}\\s]+") },
                    "behavior": "Isolated",
                    "invert": false
                }
            ]
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                { "SpecialToken": { "id": cls_t, "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
                { "SpecialToken": { "id": eos_t, "type_id": 0 } }
            ],
            "pair": [
                { "SpecialToken": { "id": cls_t, "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
                { "SpecialToken": { "id": eos_t, "type_id": 0 } },
                { "Sequence": { "id": "B", "type_id": 1 } },
                { "SpecialToken": { "id": eos_t, "type_id": 1 } }
            ],
            "special_tokens": {
                cls_t.as_str(): special(cls_t, cls),
                eos_t.as_str(): special(eos_t, eos),
            }
        },
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": vocab[unk] }
    }))
}

/// [`tokenizer_json`] of the `vocab.txt` in `dir`; `None` when there is none.
pub fn tokenizer_from_vocab_txt(dir: &Path) -> Result<Option<Value>, ModelError> {
    let path = dir.join("vocab.txt");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let vocab: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    tokenizer_json(&vocab)
        .map(Some)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/esm")
    }

    /// The tokenizer.json built from the fixture's vocab.txt gives EsmTokenizer's ids on every
    /// case the fixture script recorded (unknown letters, whitespace, `<mask>` inside).
    #[test]
    fn the_built_tokenizer_gives_esm_tokenizers_ids() {
        let json = tokenizer_from_vocab_txt(&fixture()).unwrap().unwrap();
        let tok = tokenizers::Tokenizer::from_str(&json.to_string()).unwrap();
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("reference.json")).unwrap(),
        )
        .unwrap();
        let cases = reference["tokenizer"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let text = case[0].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case[1].clone()).unwrap();
            let got = tok.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn absolute_positions_are_refused_by_name() {
        let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["position_embedding_type"] = "absolute".into();
        let config: EsmConfig = serde_json::from_value(v).unwrap();
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("position_embedding_type `absolute`"), "{err}");
    }
}
