//! What a model learns to predict, as one value the loop takes: it makes the batches, gives
//! the loss, and scores an evaluation. Language models (causal, masked) are scored in nats
//! and bits per base; task heads by the metrics in [`crate::score`].

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu, sigmoid, softmax};
use serde::{Deserialize, Serialize};

use super::batch::{self, Batch, IGNORE, Masking, Row};
use crate::models::{FusedOps, Model};

/// The objective of a training run.
#[derive(Debug, Clone)]
pub enum Objective {
    /// Next token (GPT-2).
    Clm,
    /// Masked tokens (BERT).
    Mlm(Masking),
    /// One class per sequence; `weights` per class scale each row's loss.
    SeqCls {
        classes: Vec<String>,
        weights: Option<Vec<f32>>,
    },
    /// One class per token.
    TokenCls {
        classes: Vec<String>,
        weights: Option<Vec<f32>>,
    },
    /// One number per sequence; the head learns `(y - mean) / sd`, squared error.
    Regression { mean: f64, sd: f64 },
    /// Any number of labels per sequence: a sigmoid and binary cross-entropy per label
    /// (PyTorch's `BCEWithLogitsLoss`, as transformers uses for `multi_label_classification`);
    /// `pos_weight` per label scales the loss of its positives (PyTorch's `pos_weight`).
    MultiLabel {
        labels: Vec<String>,
        pos_weight: Option<Vec<f32>>,
    },
}

/// Loss and scores over a set of batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    /// Mean loss per labelled token or row (nats; standardised squared error for regression).
    pub loss: f64,
    /// Every other score by name (`bits_per_base`, `accuracy`, `mcc`, `rmse`, …).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

impl Evaluation {
    /// A score by name (`loss` included); NaN when this evaluation has none of that name.
    pub fn metric(&self, name: &str) -> f64 {
        if name == "loss" {
            return self.loss;
        }
        self.metrics.get(name).copied().unwrap_or(f64::NAN)
    }
}

/// Whether a smaller value of the score `name` is better.
pub fn lower_is_better(name: &str) -> bool {
    matches!(
        name,
        "loss" | "perplexity" | "bits_per_base" | "mse" | "rmse" | "mae" | "hamming_loss"
    )
}

/// The scores a task head's evaluation gives, for checking `select:` before training.
pub fn metric_names(objective: &Objective) -> &'static [&'static str] {
    match objective {
        Objective::Clm | Objective::Mlm(_) => &["loss", "perplexity", "bits_per_base"],
        Objective::SeqCls { .. } | Objective::TokenCls { .. } => &[
            "loss",
            "accuracy",
            "balanced_accuracy",
            "f1_macro",
            "precision_macro",
            "recall_macro",
            "mcc",
            "auroc",
            "auprc",
        ],
        Objective::Regression { .. } => {
            &["loss", "mse", "rmse", "mae", "pearson", "spearman", "r2"]
        }
        Objective::MultiLabel { .. } => &[
            "loss",
            "f1_micro",
            "f1_macro",
            "exact",
            "hamming_loss",
            "auroc_macro",
        ],
    }
}

impl Objective {
    /// A batch of `rows` (MLM masks drawn from `seed`).
    pub fn batch(&self, rows: &[&Row], pad: u32, seed: u64) -> Batch {
        match self {
            Objective::Clm => batch::clm_batch(rows, pad),
            Objective::Mlm(m) => batch::mlm_batch(rows, pad, m, seed),
            _ => batch::task_batch(rows, pad),
        }
    }

    fn class_weights(&self) -> Option<&[f32]> {
        match self {
            Objective::SeqCls { weights, .. } | Objective::TokenCls { weights, .. } => {
                weights.as_deref()
            }
            _ => None,
        }
    }

    /// Per labelled row of the model's output, its weight in the loss (0 for unlabelled).
    fn row_weights(&self, batch: &Batch) -> Vec<f32> {
        let classes = self.class_weights();
        batch
            .labels
            .iter()
            .map(|&l| match (l, classes) {
                (IGNORE, _) => 0.0,
                (l, Some(w)) => w[l as usize],
                (_, None) => 1.0,
            })
            .collect()
    }

    /// What the summed loss of a batch is divided by: its labelled rows (or tokens), each
    /// counted with its class weight (PyTorch's weighted mean).
    pub fn normalizer(&self, batch: &Batch) -> f64 {
        match self {
            Objective::Regression { .. } => batch.values.len() as f64,
            // The mean over every (row, label), as BCEWithLogitsLoss takes it.
            Objective::MultiLabel { labels, .. } => (batch.b * labels.len()) as f64,
            _ => self.row_weights(batch).iter().map(|&w| w as f64).sum(),
        }
    }

    /// The summed loss of a batch from the model's output rows ([`Model::forward`]).
    pub fn loss<B: Backend>(
        &self,
        out: Tensor<B, 2>,
        batch: &Batch,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let [n, _] = out.dims();
        if let Objective::Regression { mean, sd } = self {
            let z: Vec<f32> = batch
                .values
                .iter()
                .map(|&y| ((y as f64 - mean) / sd) as f32)
                .collect();
            let target = Tensor::<B, 1>::from_data(TensorData::new(z, [n]), device);
            return (out.reshape([n]) - target).powi_scalar(2).sum();
        }
        if let Objective::MultiLabel { labels, pos_weight } = self {
            // (1 - y) x + w softplus(-x), softplus(-x) = max(-x, 0) + log(1 + exp(-|x|)):
            // binary cross-entropy on logits, stable; w = 1 + (pos_weight - 1) y.
            let k = labels.len();
            let y =
                Tensor::<B, 2>::from_data(TensorData::new(batch.values.clone(), [n, k]), device);
            let soft = relu(out.clone().neg()) + out.clone().abs().neg().exp().log1p();
            let w = match pos_weight {
                Some(pw) => {
                    let pw = Tensor::<B, 1>::from_data(TensorData::new(pw.clone(), [k]), device);
                    y.clone() * (pw.reshape([1, k]) - 1.0) + 1.0
                }
                None => y.ones_like(),
            };
            return ((y.neg() + 1.0) * out + w * soft).sum();
        }
        let labels: Vec<i64> = batch.labels.iter().map(|&l| l.max(0)).collect();
        cross_entropy(out, labels, self.row_weights(batch), device)
    }

    /// The summed loss of `batch` under `model`: from the LM head at the labelled positions
    /// alone when few are labelled ([`Model::lm_logits_labelled`]), else from every row.
    pub fn batch_loss<B: FusedOps>(
        &self,
        model: &Model<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        match model.lm_logits_labelled(batch, device) {
            Some(rows) => self.loss_labelled(rows, batch, device),
            None => self.loss(model.forward(batch, device), batch, device),
        }
    }

    /// [`Objective::loss`] of logits given at the batch's labelled rows only, in order
    /// ([`Model::lm_logits_labelled`]): the same sum over the same rows.
    pub fn loss_labelled<B: Backend>(
        &self,
        out: Tensor<B, 2>,
        batch: &Batch,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let [n, _] = out.dims();
        let weights = self.row_weights(batch);
        let (labels, weights): (Vec<i64>, Vec<f32>) = batch
            .labels
            .iter()
            .zip(weights)
            .filter(|&(&l, _)| l != IGNORE)
            .map(|(&l, w)| (l, w))
            .unzip();
        assert_eq!(labels.len(), n, "one row of logits per labelled position");
        cross_entropy(out, labels, weights, device)
    }

    /// A language model's loss (nats) at each labelled position of `batch`, in row-major order:
    /// the terms [`Objective::batch_loss`] sums, one by one.
    pub fn token_nats<B: FusedOps>(
        &self,
        model: &Model<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Vec<f64> {
        let labelled: Vec<i64> = batch
            .labels
            .iter()
            .copied()
            .filter(|&l| l != IGNORE)
            .collect();
        let (out, labels, every_position) = match model.lm_logits_labelled(batch, device) {
            Some(rows) => (rows, labelled, false),
            None => (
                model.forward(batch, device),
                batch.labels.iter().map(|&l| l.max(0)).collect(),
                true,
            ),
        };
        let n = labels.len();
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
        let picked = log_softmax(out, 1).gather(1, labels).reshape([n]).neg();
        let (_, host) = crate::models::weights::host(picked);
        if !every_position {
            return host.into_iter().map(f64::from).collect();
        }
        host.iter()
            .zip(&batch.labels)
            .filter(|&(_, &l)| l != IGNORE)
            .map(|(&v, _)| v as f64)
            .collect()
    }

    /// The token of a row whose prediction a label at position `j` scores: the next one for a
    /// causal LM, the masked one itself for a masked LM.
    pub fn scored_token(&self, j: usize) -> usize {
        match self {
            Objective::Clm => j + 1,
            _ => j,
        }
    }

    /// Per labelled row, in batch order: class probabilities, or the predicted value in the
    /// target's unit. Token heads give one row per labelled token.
    pub fn predict<B: FusedOps>(
        &self,
        model: &Model<B>,
        batches: &[Batch],
        device: &B::Device,
    ) -> Vec<Vec<f64>> {
        let mut rows = Vec::new();
        for batch in batches {
            let out = model.forward(batch, device);
            let [n, k] = out.dims();
            let values = match self {
                Objective::Regression { .. } => out,
                Objective::MultiLabel { .. } => sigmoid(out),
                _ => softmax(out, 1),
            };
            let (_, host) = crate::models::weights::host(values);
            for i in 0..n {
                let keep = match self {
                    Objective::Regression { .. } => true,
                    _ => batch.labels[i] != IGNORE,
                };
                if !keep {
                    continue;
                }
                let row = &host[i * k..(i + 1) * k];
                rows.push(match self {
                    Objective::Regression { mean, sd } => vec![row[0] as f64 * sd + mean],
                    _ => row.iter().map(|&p| p as f64).collect(),
                });
            }
        }
        rows
    }

    /// Loss and scores of `model` on `batches`, without gradients.
    pub fn evaluate<B: FusedOps>(
        &self,
        model: &Model<B>,
        batches: &[Batch],
        device: &B::Device,
    ) -> Evaluation {
        let (mut loss, mut norm) = (0.0f64, 0.0f64);
        for batch in batches.iter().filter(|b| b.labelled > 0) {
            loss += self
                .batch_loss(model, batch, device)
                .into_scalar()
                .elem::<f64>();
            norm += self.normalizer(batch);
        }
        let mean_loss = loss / norm.max(1e-12);
        let mut metrics = BTreeMap::new();
        match self {
            Objective::Clm | Objective::Mlm(_) => {
                let tokens: u64 = batches.iter().map(|b| b.labelled as u64).sum();
                let bases: u64 = batches.iter().map(|b| b.label_bases).sum();
                return lm_evaluation(mean_loss * tokens as f64, tokens, bases);
            }
            Objective::SeqCls { classes, .. } | Objective::TokenCls { classes, .. } => {
                let probs = self.predict(model, batches, device);
                let truth: Vec<&str> = labelled(batches)
                    .map(|l| classes[l as usize].as_str())
                    .collect();
                if let Some(scores) = classification_scores(classes, &truth, &probs) {
                    metrics.extend(scores);
                }
            }
            Objective::MultiLabel { labels, .. } => {
                let probs = self.predict(model, batches, device);
                let truth = label_sets(batches, labels.len());
                if let Ok(s) = crate::score::multi_label(labels, &truth, &probs, 0.5) {
                    for (name, v) in [
                        ("f1_micro", Some(s.f1_micro)),
                        ("f1_macro", Some(s.f1_macro)),
                        ("exact", Some(s.exact)),
                        ("hamming_loss", Some(s.hamming_loss)),
                        ("auroc_macro", s.auroc_macro),
                    ] {
                        if let Some(v) = v {
                            metrics.insert(name.to_string(), v);
                        }
                    }
                }
                metrics.insert("rows".into(), truth.len() as f64);
            }
            Objective::Regression { .. } => {
                let pred: Vec<f64> = self
                    .predict(model, batches, device)
                    .into_iter()
                    .map(|r| r[0])
                    .collect();
                let truth: Vec<f64> = batches
                    .iter()
                    .flat_map(|b| b.values.iter().map(|&v| v as f64))
                    .collect();
                if let Ok(s) = crate::score::regression(&truth, &pred) {
                    for (name, v) in [
                        ("mse", Some(s.mse)),
                        ("rmse", Some(s.rmse)),
                        ("mae", Some(s.mae)),
                        ("pearson", s.pearson),
                        ("spearman", s.spearman),
                        ("r2", s.r2),
                    ] {
                        if let Some(v) = v {
                            metrics.insert(name.to_string(), v);
                        }
                    }
                }
                metrics.insert("rows".into(), truth.len() as f64);
            }
        }
        Evaluation {
            loss: mean_loss,
            metrics,
        }
    }
}

/// A language model's evaluation from the nats it spent on `tokens` labelled tokens spelling
/// `bases` bases: mean loss, perplexity, bits per base (nats / ln 2 / bases).
pub fn lm_evaluation(nats: f64, tokens: u64, bases: u64) -> Evaluation {
    let loss = nats / (tokens.max(1) as f64);
    let metrics = BTreeMap::from([
        ("perplexity".to_string(), loss.exp()),
        (
            "bits_per_base".to_string(),
            nats / std::f64::consts::LN_2 / bases.max(1) as f64,
        ),
        ("tokens".to_string(), tokens as f64),
        ("bases".to_string(), bases as f64),
    ]);
    Evaluation { loss, metrics }
}

/// Every row's label set (multi-label batches), in batch order.
pub fn label_sets(batches: &[Batch], labels: usize) -> Vec<Vec<bool>> {
    batches
        .iter()
        .flat_map(|b| {
            b.values
                .chunks(labels.max(1))
                .map(|r| r.iter().map(|&v| v > 0.5).collect())
        })
        .collect()
}

/// The class index of every labelled row (or token), in batch order.
fn labelled(batches: &[Batch]) -> impl Iterator<Item = i64> + '_ {
    batches
        .iter()
        .flat_map(|b| b.labels.iter().copied().filter(|&l| l != IGNORE))
}

/// The headline classification scores of class probabilities against true classes.
pub fn classification_scores(
    classes: &[String],
    truth: &[&str],
    probs: &[Vec<f64>],
) -> Option<BTreeMap<String, f64>> {
    let pred: Vec<&str> = probs.iter().map(|p| classes[argmax(p)].as_str()).collect();
    let columns: Vec<(String, Vec<f64>)> = classes
        .iter()
        .enumerate()
        .map(|(k, c)| (c.clone(), probs.iter().map(|p| p[k]).collect()))
        .collect();
    let s = crate::score::classification(truth, &pred, &columns, None).ok()?;
    let mut m = BTreeMap::new();
    for (name, v) in [
        ("accuracy", Some(s.accuracy)),
        ("balanced_accuracy", Some(s.balanced_accuracy)),
        ("f1_macro", Some(s.f1_macro)),
        ("precision_macro", Some(s.precision_macro)),
        ("recall_macro", Some(s.recall_macro)),
        ("mcc", Some(s.mcc)),
        ("auroc", s.ranking.as_ref().and_then(|r| r.auroc)),
        ("auprc", s.ranking.as_ref().map(|r| r.auprc)),
    ] {
        if let Some(v) = v {
            m.insert(name.to_string(), v);
        }
    }
    m.insert("rows".into(), truth.len() as f64);
    Some(m)
}

/// Index of the largest value (the first of ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Σ −weight · log softmax(out)[label] over the rows of `out` [N, classes].
fn cross_entropy<B: Backend>(
    out: Tensor<B, 2>,
    labels: Vec<i64>,
    weights: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = labels.len();
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [n]), device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), device);
    let picked = log_softmax(out, 1).gather(1, labels).reshape([n]);
    -(picked * weights).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Binary cross-entropy on logits as PyTorch's `BCEWithLogitsLoss(reduction="sum",
    /// pos_weight=w)` defines it: `-(w y log σ(x) + (1 - y) log(1 - σ(x)))`, here summed by hand.
    #[test]
    fn multi_label_loss_is_weighted_binary_cross_entropy() {
        let dev = Default::default();
        let logits = [2.0f32, -1.0, 0.5, -30.0, 30.0, 0.0];
        let y = [1.0f32, 0.0, 1.0, 1.0, 0.0, 0.0];
        let pw = [3.0f32, 0.5, 1.0];
        let batch = Batch {
            b: 2,
            t: 1,
            ids: vec![0; 2],
            types: vec![0; 2],
            mask: vec![1; 2],
            labels: vec![0, 0],
            values: y.to_vec(),
            labelled: 2,
            label_bases: 0,
            tokens: 2,
            row_labels: Vec::new(),
        };
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
        for weights in [None, Some(pw.to_vec())] {
            let objective = Objective::MultiLabel {
                labels: labels.clone(),
                pos_weight: weights.clone(),
            };
            let out = Tensor::<Flex, 2>::from_data(TensorData::new(logits.to_vec(), [2, 3]), &dev);
            let got = objective
                .loss(out, &batch, &dev)
                .into_scalar()
                .elem::<f64>();
            let want: f64 = (0..6)
                .map(|i| {
                    let (x, t) = (logits[i] as f64, y[i] as f64);
                    let w = weights.as_ref().map_or(1.0, |w| w[i % 3] as f64);
                    // log σ(x) and log(1 - σ(x)) without overflow at |x| = 30.
                    let log_p = if x > 0.0 {
                        -(-x).exp().ln_1p()
                    } else {
                        sigma(x).ln()
                    };
                    let log_q = if x < 0.0 {
                        -x.exp().ln_1p()
                    } else {
                        (1.0 - sigma(x)).ln()
                    };
                    -(w * t * log_p + (1.0 - t) * log_q)
                })
                .sum();
            assert!(
                (got - want).abs() < 1e-4 * want.max(1.0),
                "{weights:?}: {got} vs {want}"
            );
            assert_eq!(objective.normalizer(&batch), 6.0);
        }
    }
}
