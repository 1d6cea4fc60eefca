//! Multi-label scores: every row has any number of labels (a protein's function keywords),
//! predicted by one probability per label and a 0.5 threshold. Defined as scikit-learn's
//! `f1_score(average="micro" | "macro")`, `accuracy_score` on label sets (subset accuracy),
//! `hamming_loss` and `roc_auc_score` per label.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ScoreError, auroc, average_precision, finite, same_length};

/// The scores of one label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows that truly have the label.
    pub support: usize,
    /// `None` when every row has the label or none has (the curve is undefined).
    pub auroc: Option<f64>,
    pub auprc: f64,
}

/// Multi-label scores over a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiLabelScores {
    pub rows: usize,
    /// F1 of all (row, label) decisions pooled.
    pub f1_micro: f64,
    /// Mean of the labels' F1.
    pub f1_macro: f64,
    /// Fraction of rows whose predicted label set is exactly the true one.
    pub exact: f64,
    /// Fraction of (row, label) decisions that are wrong.
    pub hamming_loss: f64,
    /// Mean AUROC over the labels where it is defined; `None` when it is defined for none.
    pub auroc_macro: Option<f64>,
    pub per_label: BTreeMap<String, LabelScore>,
}

/// Each row's predicted labels (probability at least `threshold`), `;`-joined in label order:
/// how predictions tables spell a label set.
pub fn predicted_sets(labels: &[String], probs: &[Vec<f64>], threshold: f64) -> Vec<String> {
    probs
        .iter()
        .map(|r| {
            labels
                .iter()
                .zip(r)
                .filter(|(_, p)| **p >= threshold)
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join(";")
        })
        .collect()
}

/// Precision, recall and F1 from counts, 0 where undefined (sklearn's `zero_division=0`).
fn prf(tp: usize, fp: usize, fneg: usize) -> (f64, f64, f64) {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fneg));
    (p, r, ratio(2 * tp, 2 * tp + fp + fneg))
}

/// Scores of `probs` (one probability per label, rows in order) against `truth` (the labels
/// each row has), predicting a label when its probability is at least `threshold`.
pub fn multi_label(
    labels: &[String],
    truth: &[Vec<bool>],
    probs: &[Vec<f64>],
    threshold: f64,
) -> Result<MultiLabelScores, ScoreError> {
    if truth.is_empty() {
        return Err(ScoreError::Empty);
    }
    same_length("probabilities", truth.len(), probs.len())?;
    for (i, (t, p)) in truth.iter().zip(probs).enumerate() {
        same_length(
            &format!("row {} of the truth", i + 1),
            labels.len(),
            t.len(),
        )?;
        same_length(
            &format!("row {} of the probabilities", i + 1),
            labels.len(),
            p.len(),
        )?;
        finite(&format!("probabilities of row {}", i + 1), p)?;
    }
    let n = truth.len();
    let predicted: Vec<Vec<bool>> = probs
        .iter()
        .map(|p| p.iter().map(|&x| x >= threshold).collect())
        .collect();
    let (mut tp_all, mut fp_all, mut fn_all, mut wrong) = (0, 0, 0, 0);
    let mut per_label = BTreeMap::new();
    let (mut f1_sum, mut aurocs) = (0.0, Vec::new());
    for (k, name) in labels.iter().enumerate() {
        let (mut tp, mut fp, mut fneg) = (0, 0, 0);
        for (t, p) in truth.iter().zip(&predicted) {
            match (t[k], p[k]) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                (false, false) => {}
            }
        }
        let (precision, recall, f1) = prf(tp, fp, fneg);
        let column: Vec<bool> = truth.iter().map(|t| t[k]).collect();
        let scores: Vec<f64> = probs.iter().map(|p| p[k]).collect();
        let area = auroc(&column, &scores);
        aurocs.extend(area);
        f1_sum += f1;
        (tp_all, fp_all, fn_all, wrong) =
            (tp_all + tp, fp_all + fp, fn_all + fneg, wrong + fp + fneg);
        per_label.insert(
            name.clone(),
            LabelScore {
                precision,
                recall,
                f1,
                support: tp + fneg,
                auroc: area,
                auprc: average_precision(&column, &scores),
            },
        );
    }
    let exact = truth.iter().zip(&predicted).filter(|(t, p)| t == p).count();
    Ok(MultiLabelScores {
        rows: n,
        f1_micro: prf(tp_all, fp_all, fn_all).2,
        f1_macro: f1_sum / labels.len().max(1) as f64,
        exact: exact as f64 / n as f64,
        hamming_loss: wrong as f64 / (n * labels.len()).max(1) as f64,
        auroc_macro: (!aurocs.is_empty()).then(|| aurocs.iter().sum::<f64>() / aurocs.len() as f64),
        per_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counted by hand as scikit-learn defines them (`f1_score` micro / macro with
    /// `zero_division=0`, `accuracy_score` and `hamming_loss` on label sets, `roc_auc_score`
    /// per label, undefined for a label no row has).
    #[test]
    fn scores_match_scikit_learn() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let t = |v: [u8; 3]| v.map(|x| x == 1).to_vec();
        let truth = vec![t([1, 0, 0]), t([1, 1, 0]), t([0, 1, 0]), t([0, 0, 0])];
        let probs = vec![
            vec![0.9, 0.2, 0.1],
            vec![0.4, 0.8, 0.0],
            vec![0.6, 0.7, 0.2],
            vec![0.3, 0.1, 0.6],
        ];
        let s = multi_label(&labels, &truth, &probs, 0.5).unwrap();
        // Predicted: {a}, {b}, {a, b}, {c}: tp 3, fp 2, fn 1.
        assert!((s.f1_micro - 6.0 / 9.0).abs() < 1e-12, "{s:?}");
        // F1 per label: a 0.5 (tp 1, fp 1, fn 1), b 1, c 0 (a false positive only).
        assert!((s.f1_macro - 0.5).abs() < 1e-12, "{s:?}");
        assert_eq!(s.exact, 0.25);
        assert!((s.hamming_loss - 3.0 / 12.0).abs() < 1e-12);
        assert_eq!(s.per_label["a"].auroc, Some(0.75));
        assert_eq!(s.per_label["c"].auroc, None);
        assert_eq!(s.per_label["b"].support, 2);
        assert!((s.auroc_macro.unwrap() - (0.75 + 1.0) / 2.0).abs() < 1e-12);
        assert!(multi_label(&labels, &[], &[], 0.5).is_err());
        let e = multi_label(&labels, &truth, &probs[..3], 0.5).unwrap_err();
        assert!(e.to_string().contains("3 values"), "{e}");
    }
}
