//! Task heads on a backbone's hidden states, named as Hugging Face names them:
//! `GPT2ForSequenceClassification.score` (no bias, on the last non-pad token),
//! `BertForSequenceClassification.bert.pooler` + `classifier` (on `[CLS]`), and
//! `…ForTokenClassification.classifier` on every position. Regression is a sequence head
//! with one output (`num_labels: 1`, `problem_type: regression`).

use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::tanh;

use super::super::device::Precision;
use super::super::io::vars::Vars;
use super::super::kernels::{self, Dense, FusedOps};
use super::dense;

/// What a model predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// The architecture's own language-model head (next token for GPT-2, masked for BERT).
    Lm,
    /// One class per sequence; `labels` in class-index order (HF `id2label`).
    SeqCls { labels: Vec<String> },
    /// One number per sequence. The head learns the standardised target
    /// `(y - mean) / sd`; saved weights are folded back to the target's own unit.
    Regression { mean: f64, sd: f64 },
    /// One class per token.
    TokenCls { labels: Vec<String> },
    /// Any number of labels per sequence, one independent probability each (HF
    /// `problem_type: multi_label_classification`, a sigmoid per output).
    MultiLabel { labels: Vec<String> },
}

impl Task {
    /// Outputs of the head (classes, or 1 for regression); none for the LM head.
    pub fn outputs(&self) -> Option<usize> {
        match self {
            Task::Lm => None,
            Task::SeqCls { labels } | Task::TokenCls { labels } | Task::MultiLabel { labels } => {
                Some(labels.len())
            }
            Task::Regression { .. } => Some(1),
        }
    }

    /// The class or label names of a head that has them (seq-cls, token-cls, multi-label).
    pub fn labels(&self) -> Option<&[String]> {
        match self {
            Task::SeqCls { labels } | Task::TokenCls { labels } | Task::MultiLabel { labels } => {
                Some(labels)
            }
            Task::Lm | Task::Regression { .. } => None,
        }
    }

    /// The name users write (`task:` of model.finetune).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Lm => "lm",
            Task::SeqCls { .. } => "seq-cls",
            Task::Regression { .. } => "regression",
            Task::TokenCls { .. } => "token-cls",
            Task::MultiLabel { .. } => "multi-label",
        }
    }
}

/// Which position a sequence head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The last token that is not padding (GPT-2: the only one that saw the whole sequence).
    LastToken,
    /// The first token (`[CLS]`).
    FirstToken,
}

/// How an architecture builds and names one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    /// The position a sequence head reads; `None` for a head on every token.
    pub pool: Option<Pool>,
    /// A dense + tanh layer on the pooled vector (BERT's `bert.pooler.dense`).
    pub pooler: Option<&'static str>,
    /// Name of the output layer (`score`, `classifier`).
    pub classifier: &'static str,
    pub bias: bool,
    /// Dropout before the output layer.
    pub dropout: bool,
}

/// A task head: optional pooler, dropout, and the output layer.
#[derive(Module, Debug)]
pub struct TaskHead<B: Backend> {
    pooler: Option<Dense<B>>,
    classifier: Dense<B>,
    dropout: Dropout,
    #[module(skip)]
    layout: HeadLayout,
    #[module(skip)]
    precision: Precision,
}

impl<B: FusedOps> TaskHead<B> {
    /// Declare the head's tensors: normal(0, `std`) weights, zero biases, as HF initializes
    /// them.
    pub fn declare(
        layout: HeadLayout,
        d: usize,
        outputs: usize,
        dropout: f64,
        std: f64,
        vars: &mut Vars<B>,
    ) -> TaskHead<B> {
        TaskHead {
            pooler: layout.pooler.map(|p| vars.linear(p, d, d, true, std)),
            classifier: vars.linear(layout.classifier, d, outputs, layout.bias, std),
            dropout: DropoutConfig::new(if layout.dropout { dropout } else { 0.0 }).init(),
            layout,
            precision: Precision::F32,
        }
    }

    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Outputs of a sequence head [B, n] from hidden states [B, T, d] and, per row, the flat
    /// index (`row * T + position`) of the position it reads; of a token head [B·T, n].
    pub fn forward(&self, hidden: Tensor<B, 3>, read: Option<Tensor<B, 1, Int>>) -> Tensor<B, 2> {
        let [b, t, d] = hidden.dims();
        let flat = hidden.reshape([b * t, d]);
        let x = match read {
            Some(index) => {
                let pooled = flat.select(0, index); // [B, d]
                match &self.pooler {
                    Some(p) => {
                        let [n, _] = pooled.dims();
                        tanh(dense(p, pooled.reshape([1, n, d]), self.precision)).reshape([n, d])
                    }
                    None => pooled,
                }
            }
            None => flat, // [B*T, d]
        };
        let [n, _] = x.dims();
        let x = kernels::dropout(&self.dropout, x).reshape([1, n, d]);
        let out = dense(&self.classifier, x, self.precision);
        let k = out.dims()[2];
        out.reshape([n, k])
    }
}
