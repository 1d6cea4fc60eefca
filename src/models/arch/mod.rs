//! The architecture table: one row per architecture, holding everything that differs between
//! them: how its `config.json` is recognised (model type, classes, `auto_map`) and read, the HF
//! classes with each head, its heads' layouts and pooling, where a regression head's mean is
//! folded, how inputs are framed, which tensors are embeddings / layers / heads, and a fresh
//! config's defaults. [`ArchConfig`] and [`Backbone`] dispatch to the architecture's own file.
//! A new architecture is its own file plus one row here, one variant in each enum, and its
//! line in `ARCHITECTURES`; no code outside the models layer names it.

use burn::prelude::*;
use serde_json::{Value, json};

pub mod bert;
pub mod dnabert2;
pub mod esm;
pub mod esmc;
pub mod gpt2;
pub mod llama;
pub mod lucaone;

use super::device::Precision;
use super::error::ModelError;
use super::io::vars::Vars;
use super::kernels::FusedOps;
use super::nn::heads::{HeadLayout, Pool};
use super::nn::kv_cache::KvCache;
use bert::{Bert, BertConfig};
use dnabert2::{DnaBert2, DnaBert2Config};
use esm::{Esm, EsmConfig};
use esmc::{Esmc, EsmcConfig};
use gpt2::{Gpt2, Gpt2Config};
use llama::{Llama, LlamaConfig};
use lucaone::{LucaOne, LucaOneConfig};

/// What the architecture's own language-model head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmKind {
    /// The next token (a decoder).
    Causal,
    /// Masked tokens (an encoder).
    Masked,
}

/// How a sequence is framed by special tokens, in training and in the saved tokenizer's
/// post-processor (so `AutoTokenizer` frames it the same way by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The tokens alone.
    Bare,
    /// `[CLS] a [SEP]`, a pair as `[CLS] a [SEP] b [SEP]` with token types 0 then 1.
    ClsSep,
}

/// What a sequence is, for a model that reads nucleotides and protein apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceKind {
    /// DNA or RNA.
    Nucleotide,
    /// Amino acids.
    Protein,
}

/// How a model that reads several kinds of sequence reads each (LucaOne: nucleotides remapped
/// to digits with token type 0, protein letters as they are with token type 1).
#[derive(Debug)]
pub struct SequenceKinds {
    /// The token type of every position of such a sequence, its framing included.
    pub token_type: fn(SequenceKind) -> u32,
    /// The model's own `tokenizer.json` for such a sequence (all of them share its ids).
    pub tokenizer: fn(SequenceKind) -> Value,
}

/// Where a regression head's target mean goes when the model is saved in the target's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeanFold {
    /// Into the head's own bias.
    HeadBias,
    /// Into the bias of the norm its bias-free head reads, along the head's weight (GPT-2's
    /// `ln_f`).
    NormBias(&'static str),
    /// Nowhere (a bias-free head on RMSNorm, LLaMA): the head learns y / sd uncentred.
    Nowhere,
}

/// The size of a fresh model `model.pretrain` builds when the workflow names no `config:`.
#[derive(Debug, Clone, Copy)]
pub struct FreshSize {
    pub vocab_size: usize,
    pub positions: usize,
    pub pad: Option<u32>,
    pub eos: Option<u32>,
    /// The tokenizer's mask token, when it has one (ESM's `token_dropout` zeroes its rows).
    pub mask: Option<u32>,
}

/// One row of the table.
#[derive(Debug)]
pub struct Architecture {
    /// The name `arch:` takes in a workflow: HF's `model_type`, unless the row's config says
    /// another architecture's (DNABERT-2's says `bert`; its row is `dnabert2`).
    pub model_type: &'static str,
    /// Whether a `config.json` is this architecture's, or an error saying what it is instead
    /// (DNABERT-2 says `bert` but is not BERT).
    pub recognise: fn(&Value) -> Result<bool, String>,
    /// HF class with the language-model head, with a sequence head, with a token head.
    pub lm_class: &'static str,
    pub seq_cls_class: &'static str,
    pub token_cls_class: &'static str,
    pub lm: LmKind,
    /// The sequence-classification head as HF builds it.
    pub seq_head: HeadLayout,
    /// The token-classification head as HF builds it.
    pub token_head: HeadLayout,
    /// Dropout before a classifier when the config names none.
    pub default_classifier_dropout: fn(&ArchConfig) -> f64,
    /// Tensor names of the embeddings (frozen with any layer), and the prefix of layer `N`.
    pub embeddings: &'static [&'static str],
    /// The tensors with one row per token, which grow with the vocabulary.
    pub vocab_rows: VocabRows,
    pub layer_prefix: &'static str,
    /// Prefixes of every head's tensors, so a load under another head knows what to skip.
    pub head_prefixes: &'static [&'static str],
    pub regression_mean: MeanFold,
    pub framing: Framing,
    /// Read `config.json`.
    pub parse: fn(Value) -> Result<ArchConfig, serde_json::Error>,
    /// `config.json` fields of a small fresh model (a workflow's `config:` overrides them).
    pub fresh: fn(&FreshSize) -> Value,
    /// The `config.json` field that holds the longest sequence.
    pub positions_field: &'static str,
    /// Builds a `tokenizer.json` from the tokenizer files a model directory ships instead of
    /// one (ESM's `vocab.txt`); `None` when the architecture's checkpoints carry one.
    pub tokenizer_from_files: Option<TokenizerFromFiles>,
    /// How it reads nucleotides and protein, when it reads them apart; `None`: alike, token
    /// type 0.
    pub sequence_kinds: Option<SequenceKinds>,
}

/// A `tokenizer.json` built from a model directory's own tokenizer files (`None`: not there).
pub type TokenizerFromFiles = fn(&std::path::Path) -> Result<Option<Value>, ModelError>;

/// The tensors that have a row per vocabulary token: the input embedding, output weights
/// [vocab, d] (an untied LM head, tied copies a checkpoint may carry) and output biases [vocab].
#[derive(Debug)]
pub struct VocabRows {
    pub embedding: &'static str,
    pub outputs: &'static [&'static str],
    pub biases: &'static [&'static str],
}

/// Every architecture dnaflow builds.
pub static ARCHITECTURES: &[&Architecture] =
    &[&GPT2, &BERT, &LLAMA, &DNABERT2, &ESMC, &ESM, &LUCAONE];

fn model_type(v: &Value) -> Option<&str> {
    v.get("model_type").and_then(Value::as_str)
}

/// A decoder's sequence head: `score`, no bias, on the last non-pad token (the only one that
/// saw the whole sequence), no dropout before it.
const SCORE_ON_LAST_TOKEN: HeadLayout = HeadLayout {
    pool: Some(Pool::LastToken),
    pooler: None,
    classifier: "score",
    bias: false,
    dropout: false,
};

/// `classifier` with bias on every token, after dropout (`…ForTokenClassification`).
const CLASSIFIER_ON_TOKENS: HeadLayout = HeadLayout {
    pool: None,
    pooler: None,
    classifier: "classifier",
    bias: true,
    dropout: true,
};

static GPT2: Architecture = Architecture {
    model_type: "gpt2",
    recognise: |v| Ok(model_type(v) == Some("gpt2")),
    lm_class: "GPT2LMHeadModel",
    seq_cls_class: "GPT2ForSequenceClassification",
    token_cls_class: "GPT2ForTokenClassification",
    lm: LmKind::Causal,
    seq_head: SCORE_ON_LAST_TOKEN,
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |_| 0.1,
    embeddings: &["transformer.wte.", "transformer.wpe."],
    vocab_rows: VocabRows {
        embedding: "transformer.wte.weight",
        outputs: &["lm_head.weight"],
        biases: &[],
    },
    layer_prefix: "transformer.h.",
    head_prefixes: &["lm_head.", "score.", "classifier."],
    regression_mean: MeanFold::NormBias("transformer.ln_f"),
    framing: Framing::Bare,
    parse: |v| serde_json::from_value(v).map(ArchConfig::Gpt2),
    fresh: |s| {
        json!({
            "n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": s.positions,
            "bos_token_id": s.eos, "eos_token_id": s.eos,
        })
    },
    positions_field: "n_positions",
    tokenizer_from_files: None,
    sequence_kinds: None,
};

static BERT: Architecture = Architecture {
    model_type: "bert",
    recognise: |v| {
        if model_type(v) != Some("bert") {
            return Ok(false);
        }
        // DNABERT-2 ships `model_type: bert` with its own code named in `auto_map`: its row.
        if dnabert2::is_dnabert2(v) {
            return Ok(false);
        }
        if let Some(map) = v.get("auto_map") {
            return Err(format!(
                "this is not Hugging Face's BERT: its `auto_map` ({map}) names custom model \
                 code that dnaflow does not build (DNABERT-2's `bert_layers` is the `dnabert2` \
                 architecture)"
            ));
        }
        Ok(true)
    },
    lm_class: "BertForMaskedLM",
    seq_cls_class: "BertForSequenceClassification",
    token_cls_class: "BertForTokenClassification",
    lm: LmKind::Masked,
    // tanh pooler on [CLS], dropout, `classifier`.
    seq_head: HeadLayout {
        pool: Some(Pool::FirstToken),
        pooler: Some("bert.pooler.dense"),
        classifier: "classifier",
        bias: true,
        dropout: true,
    },
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |c| match c {
        ArchConfig::Bert(c) => c.hidden_dropout_prob,
        _ => 0.1,
    },
    embeddings: &["bert.embeddings."],
    vocab_rows: VocabRows {
        embedding: "bert.embeddings.word_embeddings.weight",
        outputs: &["cls.predictions.decoder.weight"],
        biases: &["cls.predictions.bias", "cls.predictions.decoder.bias"],
    },
    layer_prefix: "bert.encoder.layer.",
    head_prefixes: &["cls.", "bert.pooler.", "classifier."],
    regression_mean: MeanFold::HeadBias,
    framing: Framing::ClsSep,
    parse: |v| serde_json::from_value(v).map(ArchConfig::Bert),
    fresh: |s| {
        json!({
            "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 512, "max_position_embeddings": s.positions,
            "pad_token_id": s.pad,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: None,
    sequence_kinds: None,
};

static LLAMA: Architecture = Architecture {
    model_type: "llama",
    recognise: |v| {
        let class = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        Ok(model_type(v) == Some("llama")
            || (model_type(v).is_none() && class.is_some_and(|c| c.starts_with("Llama"))))
    },
    lm_class: "LlamaForCausalLM",
    seq_cls_class: "LlamaForSequenceClassification",
    token_cls_class: "LlamaForTokenClassification",
    lm: LmKind::Causal,
    seq_head: SCORE_ON_LAST_TOKEN,
    // `score` with bias after dropout (transformers' generic token head).
    token_head: HeadLayout {
        pool: None,
        pooler: None,
        classifier: "score",
        bias: true,
        dropout: true,
    },
    default_classifier_dropout: |_| 0.1,
    embeddings: &["model.embed_tokens."],
    vocab_rows: VocabRows {
        embedding: "model.embed_tokens.weight",
        outputs: &["lm_head.weight"],
        biases: &[],
    },
    layer_prefix: "model.layers.",
    head_prefixes: &["lm_head.", "score."],
    regression_mean: MeanFold::Nowhere,
    framing: Framing::Bare,
    parse: |v| LlamaConfig::from_hf_json(v).map(ArchConfig::Llama),
    fresh: |s| {
        json!({
            "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": s.positions, "rope_theta": 10000.0,
            "bos_token_id": s.eos, "eos_token_id": s.eos, "pad_token_id": s.pad,
            "tie_word_embeddings": false,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: None,
    sequence_kinds: None,
};

static ESM: Architecture = Architecture {
    model_type: "esm",
    recognise: |v| Ok(model_type(v) == Some("esm")),
    lm_class: "EsmForMaskedLM",
    seq_cls_class: "EsmForSequenceClassification",
    token_cls_class: "EsmForTokenClassification",
    lm: LmKind::Masked,
    // `EsmClassificationHead` on <cls>: dense + tanh, dropout, `out_proj` (it also drops out
    // before the dense layer, which only training sees).
    seq_head: HeadLayout {
        pool: Some(Pool::FirstToken),
        pooler: Some("classifier.dense"),
        classifier: "classifier.out_proj",
        bias: true,
        dropout: true,
    },
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |c| match c {
        ArchConfig::Esm(c) => c.hidden_dropout_prob,
        _ => 0.1,
    },
    embeddings: &["esm.embeddings."],
    vocab_rows: VocabRows {
        embedding: "esm.embeddings.word_embeddings.weight",
        outputs: &["lm_head.decoder.weight"],
        biases: &["lm_head.bias"],
    },
    layer_prefix: "esm.encoder.layer.",
    head_prefixes: &["lm_head.", "classifier."],
    regression_mean: MeanFold::HeadBias,
    framing: Framing::ClsSep,
    parse: |v| serde_json::from_value(v).map(ArchConfig::Esm),
    fresh: |s| {
        json!({
            "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 512, "max_position_embeddings": s.positions,
            "position_embedding_type": "rotary", "layer_norm_eps": 1e-5,
            "emb_layer_norm_before": false, "token_dropout": s.mask.is_some(),
            "mask_token_id": s.mask, "pad_token_id": s.pad, "eos_token_id": s.eos,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: Some(esm::tokenizer_from_vocab_txt),
    sequence_kinds: None,
};

static LUCAONE: Architecture = Architecture {
    model_type: "lucaone",
    recognise: |v| Ok(model_type(v) == Some("lucaone")),
    lm_class: "LucaGPLMForMaskedLM",
    seq_cls_class: "LucaGPLMForSequenceClassification",
    token_cls_class: "LucaGPLMForTokenClassification",
    lm: LmKind::Masked,
    // `classifier_pooling_type: cls` (the one pooling built here): [CLS], dropout, `classifier`.
    seq_head: HeadLayout {
        pool: Some(Pool::FirstToken),
        pooler: None,
        classifier: "classifier",
        bias: true,
        dropout: true,
    },
    // The package drops the [CLS] and [SEP] rows of its output; the others are these.
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |c| match c {
        ArchConfig::LucaOne(c) => c.classifier_dropout_prob,
        _ => 0.1,
    },
    embeddings: &["lucaone.embeddings."],
    vocab_rows: VocabRows {
        embedding: "lucaone.embeddings.embed_tokens.weight",
        outputs: &["lm_head.decoder.weight"],
        biases: &["lm_head.bias"],
    },
    layer_prefix: "lucaone.encoder.layers.",
    head_prefixes: &["lm_head.", "classifier.", "pooler."],
    regression_mean: MeanFold::HeadBias,
    framing: Framing::ClsSep,
    parse: |v| serde_json::from_value(v).map(ArchConfig::LucaOne),
    fresh: |s| {
        json!({
            "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "max_position_embeddings": s.positions, "pad_token_id": s.pad,
            "mask_token_id": s.mask,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: Some(lucaone::tokenizer_for_model_dir),
    sequence_kinds: Some(SequenceKinds {
        token_type: lucaone::token_type,
        tokenizer: lucaone::tokenizer_json,
    }),
};

/// DNABERT-2: MosaicBERT's encoder (ALiBi, fused `Wqkv`, GEGLU) under BERT's names and
/// classes; its `config.json` says `bert` and names `bert_layers` in `auto_map`.
static DNABERT2: Architecture = Architecture {
    model_type: "dnabert2",
    recognise: |v| Ok(dnabert2::is_dnabert2(v)),
    lm_class: "BertForMaskedLM",
    seq_cls_class: "BertForSequenceClassification",
    token_cls_class: "BertForTokenClassification",
    lm: LmKind::Masked,
    // `bert_layers.BertForSequenceClassification`: tanh pooler on [CLS], dropout, `classifier`.
    seq_head: HeadLayout {
        pool: Some(Pool::FirstToken),
        pooler: Some("bert.pooler.dense"),
        classifier: "classifier",
        bias: true,
        dropout: true,
    },
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |c| match c {
        ArchConfig::DnaBert2(c) => c.hidden_dropout_prob,
        _ => 0.1,
    },
    embeddings: &["bert.embeddings."],
    vocab_rows: VocabRows {
        embedding: "bert.embeddings.word_embeddings.weight",
        outputs: &["cls.predictions.decoder.weight"],
        biases: &["cls.predictions.decoder.bias"],
    },
    layer_prefix: "bert.encoder.layer.",
    head_prefixes: &["cls.", "bert.pooler.", "classifier."],
    regression_mean: MeanFold::HeadBias,
    framing: Framing::ClsSep,
    parse: |v| serde_json::from_value(v).map(ArchConfig::DnaBert2),
    fresh: |s| {
        json!({
            "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 256, "max_position_embeddings": s.positions,
            "pad_token_id": s.pad,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: None,
    sequence_kinds: None,
};

/// ESM C (the `esm` package's `ESMC`): its own names, dnaflow's `config.json`. No HF classes
/// exist; the head classes are dnaflow's names in the HF pattern.
static ESMC: Architecture = Architecture {
    model_type: "esmc",
    recognise: |v| Ok(model_type(v) == Some("esmc")),
    lm_class: "ESMC",
    seq_cls_class: "ESMCForSequenceClassification",
    token_cls_class: "ESMCForTokenClassification",
    lm: LmKind::Masked,
    // `classifier` on the <cls> token's final state, after dropout (no pooler).
    seq_head: HeadLayout {
        pool: Some(Pool::FirstToken),
        pooler: None,
        classifier: "classifier",
        bias: true,
        dropout: true,
    },
    token_head: CLASSIFIER_ON_TOKENS,
    default_classifier_dropout: |_| 0.1,
    embeddings: &["embed."],
    vocab_rows: VocabRows {
        embedding: "embed.weight",
        outputs: &["sequence_head.3.weight"],
        biases: &["sequence_head.3.bias"],
    },
    layer_prefix: "transformer.blocks.",
    head_prefixes: &["sequence_head.", "classifier."],
    regression_mean: MeanFold::HeadBias,
    framing: Framing::ClsSep,
    parse: |v| serde_json::from_value(v).map(ArchConfig::Esmc),
    fresh: |s| {
        json!({
            "d_model": 128, "n_heads": 4, "n_layers": 4,
            "max_position_embeddings": s.positions, "pad_token_id": s.pad,
            "eos_token_id": s.eos,
        })
    },
    positions_field: "max_position_embeddings",
    tokenizer_from_files: None,
    sequence_kinds: None,
};

/// The row named `model_type`.
pub fn architecture(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.model_type == model_type)
}

/// The names `arch:` takes.
pub fn names() -> Vec<&'static str> {
    ARCHITECTURES.iter().map(|a| a.model_type).collect()
}

/// A parsed `config.json` of one architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
    Llama(LlamaConfig),
    DnaBert2(DnaBert2Config),
    Esmc(EsmcConfig),
    Esm(EsmConfig),
    LucaOne(LucaOneConfig),
}

impl ArchConfig {
    /// This architecture's row of the table.
    pub fn architecture(&self) -> &'static Architecture {
        architecture(self.name()).expect("every ArchConfig has a row")
    }

    /// HF `model_type`.
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Gpt2(_) => "gpt2",
            ArchConfig::Bert(_) => "bert",
            ArchConfig::Llama(_) => "llama",
            ArchConfig::DnaBert2(_) => "dnabert2",
            ArchConfig::Esmc(_) => "esmc",
            ArchConfig::Esm(_) => "esm",
            ArchConfig::LucaOne(_) => "lucaone",
        }
    }

    /// The architecture's fields of `config.json` (no head class or labels).
    pub fn to_hf_json(&self) -> Value {
        match self {
            ArchConfig::Gpt2(c) => c.to_hf_json(),
            ArchConfig::Bert(c) => c.to_hf_json(),
            ArchConfig::Llama(c) => c.to_hf_json(),
            ArchConfig::DnaBert2(c) => c.to_hf_json(),
            ArchConfig::Esmc(c) => c.to_hf_json(),
            ArchConfig::Esm(c) => c.to_hf_json(),
            ArchConfig::LucaOne(c) => c.to_hf_json(),
        }
    }

    /// A config field the training loop reads, by its `config.json` name.
    fn field(&self, name: &str) -> Option<Value> {
        self.to_hf_json().get(name).cloned()
    }

    fn usize_field(&self, name: &str) -> usize {
        self.field(name)
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{} configs have a number `{name}`", self.name()))
            as usize
    }

    pub fn vocab_size(&self) -> usize {
        self.usize_field("vocab_size")
    }

    /// Longest sequence the positions allow.
    pub fn max_positions(&self) -> usize {
        self.usize_field(self.architecture().positions_field)
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_embd,
            ArchConfig::Bert(c) => c.hidden_size,
            ArchConfig::Llama(c) => c.hidden_size,
            ArchConfig::DnaBert2(c) => c.hidden_size,
            ArchConfig::Esmc(c) => c.d_model,
            ArchConfig::Esm(c) => c.hidden_size,
            ArchConfig::LucaOne(c) => c.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_layer,
            ArchConfig::Bert(c) => c.num_hidden_layers,
            ArchConfig::Llama(c) => c.num_hidden_layers,
            ArchConfig::DnaBert2(c) => c.num_hidden_layers,
            ArchConfig::Esmc(c) => c.n_layers,
            ArchConfig::Esm(c) => c.num_hidden_layers,
            ArchConfig::LucaOne(c) => c.num_hidden_layers,
        }
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.field("pad_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
    }

    /// Set `vocab_size` (the vocabulary grew: [`crate::models::resize`]).
    pub fn set_vocab_size(&mut self, n: usize) {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size = n,
            ArchConfig::Bert(c) => c.vocab_size = n,
            ArchConfig::Llama(c) => c.vocab_size = n,
            ArchConfig::DnaBert2(c) => c.vocab_size = n,
            ArchConfig::Esmc(c) => c.vocab_size = n,
            ArchConfig::Esm(c) => c.vocab_size = n,
            ArchConfig::LucaOne(c) => c.vocab_size = n,
        }
    }

    /// Set `pad_token_id` (a causal sequence classifier finds the last token by it).
    pub fn set_pad_token_id(&mut self, pad: u32) {
        match self {
            ArchConfig::Gpt2(c) => c.pad_token_id = Some(pad),
            ArchConfig::Bert(c) => c.pad_token_id = Some(pad),
            ArchConfig::Llama(c) => c.pad_token_id = Some(pad),
            ArchConfig::DnaBert2(c) => c.pad_token_id = Some(pad),
            ArchConfig::Esmc(c) => c.pad_token_id = Some(pad),
            ArchConfig::Esm(c) => c.pad_token_id = Some(pad),
            ArchConfig::LucaOne(c) => c.pad_token_id = Some(pad),
        }
    }

    pub fn initializer_range(&self) -> f64 {
        self.field("initializer_range")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.02)
    }

    /// Dropout before a task head's classifier: `classifier_dropout`, else the row's default.
    pub fn classifier_dropout(&self) -> f64 {
        self.field("classifier_dropout")
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| (self.architecture().default_classifier_dropout)(self))
    }

    /// The layer a backbone tensor belongs to: `Some(0)` for the embeddings, `Some(n + 1)` for
    /// layer `n`, `None` for what follows the layers (GPT-2's `ln_f`). Freezing the first N
    /// layers freezes every tensor below `N + 1`.
    pub fn depth_of(&self, name: &str) -> Option<usize> {
        let arch = self.architecture();
        if arch.embeddings.iter().any(|p| name.starts_with(p)) {
            return Some(0);
        }
        let rest = name.strip_prefix(arch.layer_prefix)?;
        let n: usize = rest.split('.').next()?.parse().ok()?;
        Some(n + 1)
    }

    /// A fresh config of `arch` (a row's name): its defaults, then `user`'s fields, the
    /// vocabulary from the tokenizer. An unknown or ill-typed field is an error naming it.
    pub fn fresh(
        arch: &str,
        size: &FreshSize,
        user: &serde_json::Map<String, Value>,
    ) -> Result<ArchConfig, String> {
        let row = architecture(arch)
            .ok_or_else(|| format!("no architecture `{arch}` ({})", names().join(", ")))?;
        check_config_fields(arch, user)?;
        let mut base = (row.fresh)(size);
        let m = base.as_object_mut().expect("object");
        for (k, v) in user {
            m.insert(k.clone(), v.clone());
        }
        m.insert("vocab_size".into(), size.vocab_size.into());
        m.insert("model_type".into(), arch.into());
        (row.parse)(base).map_err(|e| e.to_string())
    }
}

/// The `config.json` fields a fresh model of `arch` reads: what a workflow's `config:` may set.
pub fn config_fields(arch: &str) -> Vec<String> {
    let Some(row) = architecture(arch) else {
        return Vec::new();
    };
    let size = FreshSize {
        vocab_size: 8,
        positions: 16,
        pad: Some(0),
        eos: Some(1),
        mask: Some(2),
    };
    let mut base = (row.fresh)(&size);
    if let Some(m) = base.as_object_mut() {
        m.insert("vocab_size".into(), size.vocab_size.into());
        m.insert("model_type".into(), arch.into());
    }
    let mut fields: Vec<String> = (row.parse)(base)
        .map(|c| c.to_hf_json())
        .ok()
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default();
    fields.push("classifier_dropout".into());
    fields.retain(|f| f != "model_type");
    fields.sort();
    fields.dedup();
    fields
}

/// An error naming the first field of `user` that `arch`'s config does not have (a typo such
/// as `n_layers` would otherwise be dropped and the default trained).
pub fn check_config_fields(
    arch: &str,
    user: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let fields = config_fields(arch);
    if fields.is_empty() {
        return Ok(());
    }
    for key in user.keys() {
        if !fields.contains(key) {
            let hint = crate::diag::did_you_mean(key, fields.iter().map(String::as_str))
                .map(|f| format!("did you mean `{f}`? "))
                .unwrap_or_default();
            return Err(format!(
                "`{key}` is not a field of a {arch} config; {hint}its fields are: {}",
                fields.join(", ")
            ));
        }
    }
    Ok(())
}

/// Read `config.json` of a model directory; the row is the one that recognises it.
pub fn read_config(dir: &std::path::Path) -> Result<(ArchConfig, Value), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    let mut found = None;
    for arch in ARCHITECTURES {
        match (arch.recognise)(&value) {
            Ok(true) => {
                found = Some(arch);
                break;
            }
            Ok(false) => {}
            Err(why) => return Err(ModelError::Format(format!("{}: {why}", path.display()))),
        }
    }
    let Some(arch) = found else {
        let what = model_type(&value).unwrap_or("(no model_type)");
        return Err(ModelError::Format(format!(
            "{}: model_type `{what}` is not one dnaflow builds ({})",
            path.display(),
            names().join(", ")
        )));
    };
    let config = (arch.parse)(value.clone())
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    Ok((config, value))
}

/// The text of the `tokenizer.json` at `path`; when there is none and its directory is a model
/// directory whose tokenizer ships as other files (ESM's `vocab.txt`), the one its row builds.
pub fn read_tokenizer_json(path: &std::path::Path) -> Result<String, ModelError> {
    let missing = match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) => e,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    if path.file_name().is_some_and(|n| n == "tokenizer.json")
        && dir.join("config.json").is_file()
        && let Ok((config, _)) = read_config(dir)
        && let Some(build) = config.architecture().tokenizer_from_files
        && let Some(json) = build(dir)?
    {
        return Ok(json.to_string());
    }
    Err(ModelError::io(path, missing))
}

/// Token ids, token types and the padding mask of a batch, on the device.
pub struct Tokens<B: Backend> {
    pub ids: Tensor<B, 2, Int>,
    pub types: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Tensor<B, 2, Int>,
    /// Whether any position is padding.
    pub padded: bool,
}

/// The backbone of any architecture in the table, with its own LM head when the model has
/// it: token ids in, hidden states or LM logits out.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model, never in a collection
pub enum Backbone<B: Backend> {
    Gpt2(Gpt2<B>),
    Bert(Bert<B>),
    Llama(Llama<B>),
    DnaBert2(DnaBert2<B>),
    Esmc(Esmc<B>),
    Esm(Esm<B>),
    LucaOne(LucaOne<B>),
}

impl<B: FusedOps> Backbone<B> {
    /// Declare the backbone's tensors, and its LM head's when `lm_head`.
    pub fn declare(
        config: &ArchConfig,
        vars: &mut Vars<B>,
        lm_head: bool,
    ) -> Result<Backbone<B>, ModelError> {
        Ok(match config {
            ArchConfig::Gpt2(c) => Backbone::Gpt2(Gpt2::declare(c, vars)?),
            ArchConfig::Bert(c) => Backbone::Bert(Bert::declare(c, vars, lm_head)?),
            ArchConfig::Llama(c) => Backbone::Llama(Llama::declare(c, vars, lm_head)?),
            ArchConfig::DnaBert2(c) => Backbone::DnaBert2(DnaBert2::declare(c, vars, lm_head)?),
            ArchConfig::Esmc(c) => Backbone::Esmc(Esmc::declare(c, vars, lm_head)?),
            ArchConfig::Esm(c) => Backbone::Esm(Esm::declare(c, vars, lm_head)?),
            ArchConfig::LucaOne(c) => Backbone::LucaOne(LucaOne::declare(c, vars, lm_head)?),
        })
    }

    pub fn with_precision(self, precision: Precision) -> Self {
        match self {
            Backbone::Gpt2(m) => Backbone::Gpt2(m.with_precision(precision)),
            Backbone::Bert(m) => Backbone::Bert(m.with_precision(precision)),
            Backbone::Llama(m) => Backbone::Llama(m.with_precision(precision)),
            Backbone::DnaBert2(m) => Backbone::DnaBert2(m.with_precision(precision)),
            Backbone::Esmc(m) => Backbone::Esmc(m.with_precision(precision)),
            Backbone::Esm(m) => Backbone::Esm(m.with_precision(precision)),
            Backbone::LucaOne(m) => Backbone::LucaOne(m.with_precision(precision)),
        }
    }

    /// Number of layers (blocks).
    pub fn layers(&self) -> usize {
        match self {
            Backbone::Gpt2(m) => m.layers(),
            Backbone::Bert(m) => m.layers(),
            Backbone::Llama(m) => m.layers(),
            Backbone::DnaBert2(m) => m.layers(),
            Backbone::Esmc(m) => m.layers(),
            Backbone::Esm(m) => m.layers(),
            Backbone::LucaOne(m) => m.layers(),
        }
    }

    /// HF's `hidden_states[layer]` [B, T, d] (`layer` = number of layers: the last, as the
    /// heads see it).
    pub fn hidden(&self, tokens: &Tokens<B>, layer: usize) -> Tensor<B, 3> {
        match self {
            Backbone::Gpt2(m) => m.hidden_at(tokens.ids.clone(), layer),
            Backbone::Bert(m) => m.hidden_at(
                tokens.ids.clone(),
                tokens.types.clone(),
                tokens.mask.clone(),
                layer,
            ),
            Backbone::Llama(m) => m.hidden_at(
                tokens.ids.clone(),
                tokens.padded.then(|| tokens.mask.clone()),
                layer,
            ),
            Backbone::DnaBert2(m) => m.hidden_at(
                tokens.ids.clone(),
                tokens.types.clone(),
                tokens.mask.clone(),
                layer,
            ),
            Backbone::Esm(m) => m.hidden_at(tokens.ids.clone(), tokens.mask.clone(), layer),
            Backbone::LucaOne(m) => m.hidden_at(
                tokens.ids.clone(),
                tokens.types.clone(),
                tokens.mask.clone(),
                layer,
            ),
            Backbone::Esmc(m) => m.hidden_at(
                tokens.ids.clone(),
                tokens.padded.then(|| tokens.mask.clone()),
                layer,
            ),
        }
    }

    /// The LM head's logits [B, T, vocab].
    pub fn lm_logits(&self, tokens: &Tokens<B>) -> Tensor<B, 3> {
        match self {
            Backbone::Gpt2(m) => m.forward(tokens.ids.clone()),
            Backbone::Bert(m) => m
                .mlm_logits(
                    tokens.ids.clone(),
                    tokens.types.clone(),
                    tokens.mask.clone(),
                )
                .expect("a masked LM has its MLM head"),
            Backbone::Llama(m) => m.logits(self.hidden(tokens, m.layers())),
            Backbone::DnaBert2(m) => m
                .mlm_on(self.hidden(tokens, m.layers()))
                .expect("a masked LM has its MLM head"),
            Backbone::Esmc(m) => m
                .logits(self.hidden(tokens, m.layers()))
                .expect("a masked LM has its sequence head"),
            Backbone::Esm(m) => m
                .mlm_logits(tokens.ids.clone(), tokens.mask.clone())
                .expect("a masked LM has its MLM head"),
            Backbone::LucaOne(m) => m
                .mlm_logits(
                    tokens.ids.clone(),
                    tokens.types.clone(),
                    tokens.mask.clone(),
                )
                .expect("a masked LM has its MLM head"),
        }
    }

    /// The LM head's logits [N, vocab] at the flat positions `rows` (`row * T + position`)
    /// only: a batch that learns from a few positions (an answer after its prompt, masked
    /// tokens) pays the vocabulary-wide head for those alone.
    pub fn lm_logits_at(&self, tokens: &Tokens<B>, rows: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let h = self.hidden(tokens, self.layers());
        let [b, t, d] = h.dims();
        let n = rows.dims()[0];
        let h = h.reshape([b * t, d]).select(0, rows).reshape([1, n, d]);
        let logits = match self {
            Backbone::Gpt2(m) => m.logits(h),
            Backbone::Bert(m) => m.mlm_on(h).expect("a masked LM has its MLM head"),
            Backbone::Llama(m) => m.logits(h),
            Backbone::DnaBert2(m) => m.mlm_on(h).expect("a masked LM has its MLM head"),
            Backbone::Esmc(m) => m.logits(h).expect("a masked LM has its sequence head"),
            Backbone::Esm(m) => m.mlm_on(h).expect("a masked LM has its MLM head"),
            Backbone::LucaOne(m) => m.mlm_on(h).expect("a masked LM has its MLM head"),
        };
        let v = logits.dims()[2];
        logits.reshape([n, v])
    }

    /// Next-token logits of `ids` following the positions in `cache` (causal architectures;
    /// `None` for an encoder).
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Option<Tensor<B, 3>> {
        match self {
            Backbone::Gpt2(m) => Some(m.forward_cached(ids, cache)),
            Backbone::Bert(_)
            | Backbone::DnaBert2(_)
            | Backbone::Esmc(_)
            | Backbone::Esm(_)
            | Backbone::LucaOne(_) => None,
            Backbone::Llama(m) => Some(m.forward_cached(ids, cache)),
        }
    }

    /// [`Backbone::forward_cached`] of the last position only [B, 1, vocab].
    pub fn next_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Option<Tensor<B, 3>> {
        match self {
            Backbone::Gpt2(m) => Some(m.next_logits(ids, cache)),
            Backbone::Bert(_)
            | Backbone::DnaBert2(_)
            | Backbone::Esmc(_)
            | Backbone::Esm(_)
            | Backbone::LucaOne(_) => None,
            Backbone::Llama(m) => Some(m.next_logits(ids, cache)),
        }
    }
}
