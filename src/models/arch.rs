//! The architecture table: one row per Hugging Face `model_type`, saying how its `config.json`
//! is read, which HF classes name it with each head, how its sequence head pools, and which
//! tensor names belong to heads. A new architecture is its own file (config, backbone, its LM
//! head) plus one row here and one variant in [`ArchConfig`] and [`Backbone`].

use burn::prelude::*;

use super::bert::{Bert, BertConfig};
use super::gpt2::{Gpt2, Gpt2Config};
use super::heads::{HeadLayout, Pool};
use super::weights::Weights;
use super::{FusedOps, ModelError, Precision};

/// What the architecture's own language-model head predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmKind {
    /// The next token (a decoder).
    Causal,
    /// Masked tokens (an encoder).
    Masked,
}

/// One row of the table.
#[derive(Debug)]
pub struct Architecture {
    /// HF `model_type`.
    pub model_type: &'static str,
    /// HF class with the language-model head, with a sequence head, with a token head.
    pub lm_class: &'static str,
    pub seq_cls_class: &'static str,
    pub token_cls_class: &'static str,
    pub lm: LmKind,
    /// The sequence-classification head as HF builds it.
    pub seq_head: HeadLayout,
    /// Dropout before a classifier when the config names none.
    pub default_classifier_dropout: fn(&ArchConfig) -> f64,
    /// Tensor names of the embeddings (frozen with any layer), and the prefix of layer `N`.
    pub embeddings: &'static [&'static str],
    pub layer_prefix: &'static str,
    /// Prefixes of every head's tensors, so a load under another head knows what to skip.
    pub head_prefixes: &'static [&'static str],
    /// The layer norm whose output a bias-free head reads (GPT-2's `ln_f`): a regression
    /// head without bias carries the target's mean in its bias.
    pub final_norm: Option<&'static str>,
    /// Read `config.json`.
    pub parse: fn(serde_json::Value) -> Result<ArchConfig, serde_json::Error>,
}

/// The token-classification head: the same for every architecture so far.
pub const TOKEN_HEAD: HeadLayout = HeadLayout {
    pool: None,
    pooler: None,
    classifier: "classifier",
    bias: true,
    dropout: true,
};

/// Every architecture dnaflow builds, by HF `model_type`.
pub static ARCHITECTURES: &[&Architecture] = &[&GPT2, &BERT];

static GPT2: Architecture = Architecture {
    model_type: "gpt2",
    lm_class: "GPT2LMHeadModel",
    seq_cls_class: "GPT2ForSequenceClassification",
    token_cls_class: "GPT2ForTokenClassification",
    lm: LmKind::Causal,
    // `score`, no bias, on the last non-pad token; no dropout before it.
    seq_head: HeadLayout {
        pool: Some(Pool::LastToken),
        pooler: None,
        classifier: "score",
        bias: false,
        dropout: false,
    },
    default_classifier_dropout: |_| 0.1,
    embeddings: &["transformer.wte.", "transformer.wpe."],
    layer_prefix: "transformer.h.",
    head_prefixes: &["lm_head.", "score.", "classifier."],
    final_norm: Some("transformer.ln_f"),
    parse: |v| serde_json::from_value(v).map(ArchConfig::Gpt2),
};

static BERT: Architecture = Architecture {
    model_type: "bert",
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
    default_classifier_dropout: |c| match c {
        ArchConfig::Bert(c) => c.hidden_dropout_prob,
        _ => 0.1,
    },
    embeddings: &["bert.embeddings."],
    layer_prefix: "bert.encoder.layer.",
    head_prefixes: &["cls.", "bert.pooler.", "classifier."],
    final_norm: None,
    parse: |v| serde_json::from_value(v).map(ArchConfig::Bert),
};

/// The row for `model_type`.
pub fn architecture(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.model_type == model_type)
}

/// A parsed `config.json` of one architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
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
        }
    }

    /// The architecture's fields of `config.json` (no head class or labels).
    pub fn to_hf_json(&self) -> serde_json::Value {
        match self {
            ArchConfig::Gpt2(c) => c.to_hf_json(),
            ArchConfig::Bert(c) => c.to_hf_json(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }

    /// Longest sequence the position table allows.
    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_positions,
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_embd,
            ArchConfig::Bert(c) => c.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_layer,
            ArchConfig::Bert(c) => c.num_hidden_layers,
        }
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            ArchConfig::Gpt2(c) => c.pad_token_id,
            ArchConfig::Bert(c) => c.pad_token_id,
        }
    }

    /// Set `pad_token_id` (a GPT-2 sequence classifier finds the last token by it).
    pub fn set_pad_token_id(&mut self, pad: u32) {
        match self {
            ArchConfig::Gpt2(c) => c.pad_token_id = Some(pad),
            ArchConfig::Bert(c) => c.pad_token_id = Some(pad),
        }
    }

    pub fn initializer_range(&self) -> f64 {
        match self {
            ArchConfig::Gpt2(c) => c.initializer_range,
            ArchConfig::Bert(c) => c.initializer_range,
        }
    }

    /// Dropout before a task head's classifier: `classifier_dropout`, else the row's default.
    pub fn classifier_dropout(&self) -> f64 {
        let set = match self {
            ArchConfig::Gpt2(c) => c.classifier_dropout,
            ArchConfig::Bert(c) => c.classifier_dropout,
        };
        set.unwrap_or_else(|| (self.architecture().default_classifier_dropout)(self))
    }

    /// Fresh backbone weights, as HF initializes them.
    pub fn init_backbone(&self, seed: u64) -> Weights {
        match self {
            ArchConfig::Gpt2(c) => Gpt2::<burn::backend::Flex>::init_weights(c, seed),
            ArchConfig::Bert(c) => Bert::<burn::backend::Flex>::init_weights(c, seed),
        }
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
}

/// Read `config.json` of a model directory; `model_type` picks the row of the table.
pub fn read_config(dir: &std::path::Path) -> Result<(ArchConfig, serde_json::Value), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    let Some(model_type) = value.get("model_type").and_then(|v| v.as_str()) else {
        return Err(ModelError::Format(format!(
            "{}: no `model_type`; is this a Hugging Face model directory?",
            path.display()
        )));
    };
    let Some(arch) = architecture(model_type) else {
        let known: Vec<&str> = ARCHITECTURES.iter().map(|a| a.model_type).collect();
        return Err(ModelError::Format(format!(
            "{}: model_type `{model_type}` is not supported here ({})",
            path.display(),
            known.join(", ")
        )));
    };
    let config = (arch.parse)(value.clone())
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    Ok((config, value))
}

/// Token ids, token types and the padding mask of a batch, on the device.
pub struct Tokens<B: Backend> {
    pub ids: Tensor<B, 2, Int>,
    pub types: Tensor<B, 2, Int>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Tensor<B, 2, Int>,
}

/// The backbone of any architecture in the table: token ids in, hidden states out.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model, never in a collection
pub enum Backbone<B: Backend> {
    Gpt2(Gpt2<B>),
    Bert(Bert<B>),
}

impl<B: FusedOps> Backbone<B> {
    /// Take the backbone's tensors from `w`.
    pub fn build(
        config: &ArchConfig,
        w: &mut Weights,
        device: &B::Device,
    ) -> Result<Backbone<B>, ModelError> {
        Ok(match config {
            ArchConfig::Gpt2(c) => Backbone::Gpt2(Gpt2::build(c, w, device)?),
            ArchConfig::Bert(c) => Backbone::Bert(Bert::build(c, w, device)?),
        })
    }

    pub fn to_weights(&self) -> Weights {
        match self {
            Backbone::Gpt2(m) => m.to_weights(),
            Backbone::Bert(m) => m.to_weights(),
        }
    }

    pub fn with_precision(self, precision: Precision) -> Self {
        match self {
            Backbone::Gpt2(m) => Backbone::Gpt2(m.with_precision(precision)),
            Backbone::Bert(m) => Backbone::Bert(m.with_precision(precision)),
        }
    }

    /// Number of layers (blocks).
    pub fn layers(&self) -> usize {
        match self {
            Backbone::Gpt2(m) => m.layers(),
            Backbone::Bert(m) => m.layers(),
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
        }
    }
}
