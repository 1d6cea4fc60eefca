//! Classification scores, as scikit-learn computes them: precision/recall/F1 with
//! `zero_division=0`, multiclass MCC (`matthews_corrcoef`), balanced accuracy that skips classes
//! absent from the truth, and one-vs-rest AUROC (`roc_auc_score`) and AUPRC
//! (`average_precision_score`) with tied scores handled as sklearn does.

use std::cmp::Ordering;

use indexmap::IndexMap;
use serde::Serialize;

use super::{ScoreError, finite, same_length};

/// Counts of (true class, predicted class) pairs: the table every label-based score derives from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// Class names, in the order of rows and columns.
    pub labels: Vec<String>,
    /// `counts[t][p]`: rows of true class `t` predicted as `p` (sklearn's `confusion_matrix`).
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    /// Count pairs of class indices into `labels`.
    pub fn new(labels: Vec<String>, truth: &[usize], pred: &[usize]) -> Confusion {
        let k = labels.len();
        let mut counts = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(pred) {
            counts[t][p] += 1;
        }
        Confusion { labels, counts }
    }

    fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    fn correct(&self) -> u64 {
        (0..self.labels.len()).map(|i| self.counts[i][i]).sum()
    }

    /// Rows of each true class (sklearn's `support`).
    pub fn support(&self) -> Vec<u64> {
        self.counts.iter().map(|r| r.iter().sum()).collect()
    }

    /// Rows predicted as each class.
    pub fn predicted(&self) -> Vec<u64> {
        (0..self.labels.len())
            .map(|j| self.counts.iter().map(|r| r[j]).sum())
            .collect()
    }

    /// Share of rows predicted right.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total())
    }

    /// Mean recall over the classes present in the truth (sklearn skips the others, with a
    /// warning), so a rare class weighs as much as a common one.
    pub fn balanced_accuracy(&self) -> f64 {
        let recalls: Vec<f64> = self
            .support()
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .map(|(i, &s)| self.counts[i][i] as f64 / s as f64)
            .collect();
        mean(&recalls)
    }

    /// Matthews correlation, multiclass (Gorodkin's R_K, as sklearn's `matthews_corrcoef`);
    /// 0 when the truth or the predictions are constant.
    pub fn mcc(&self) -> f64 {
        let t = self.support();
        let p = self.predicted();
        let n = self.total() as f64;
        let c = self.correct() as f64;
        let dot = |a: &[u64], b: &[u64]| -> f64 {
            a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
        };
        let cov_tp = c * n - dot(&t, &p);
        let cov_pp = n * n - dot(&p, &p);
        let cov_tt = n * n - dot(&t, &t);
        if cov_pp * cov_tt == 0.0 {
            return 0.0;
        }
        cov_tp / (cov_tt * cov_pp).sqrt()
    }

    /// Precision, recall and F1 of class `i`, each 0 where its denominator is 0
    /// (sklearn's `zero_division=0`); F1 is 2·tp / (2·tp + fp + fn), as sklearn computes it.
    pub fn precision_recall_f1(&self, i: usize) -> (f64, f64, f64) {
        let tp = self.counts[i][i];
        let fp = self.predicted()[i] - tp;
        let fn_ = self.support()[i] - tp;
        (
            ratio(tp, tp + fp),
            ratio(tp, tp + fn_),
            ratio(2 * tp, 2 * tp + fp + fn_),
        )
    }
}

/// a / b, 0 when b is 0.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Ranking scores: how well the probabilities order the rows, whatever threshold is chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// Area under the ROC curve; `null` when undefined (a class without positives or without
    /// negatives, or with several classes any such class).
    pub auroc: Option<f64>,
    /// Average precision (sklearn's area under the precision-recall curve, no interpolation).
    pub auprc: f64,
    /// With two classes, the class the headline AUROC/AUPRC are about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positive: Option<String>,
}

/// Scores of one class against the rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose true class this is.
    pub support: u64,
    /// One-vs-rest AUROC/AUPRC, when there are probabilities.
    #[serde(flatten)]
    pub ranking: Option<Ranking>,
}

/// Every classification score of a set of predictions: what `eval.classify` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// Rows scored.
    pub rows: usize,
    /// Classes in sklearn's order (see [`sorted_classes`]).
    pub classes: Vec<String>,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    /// Unweighted means over the classes: every class counts the same, however rare.
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    pub mcc: f64,
    /// AUROC/AUPRC of the positive class (two classes) or their one-vs-rest macro mean; absent
    /// without probabilities.
    #[serde(flatten)]
    pub ranking: Option<Ranking>,
    pub per_class: IndexMap<String, ClassScore>,
    pub confusion: Confusion,
}

/// Labels in scikit-learn's order: by value when every label is a number (so `2` before
/// `10`), else as text.
pub fn sorted_classes<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = labels.into_iter().map(str::to_string).collect();
    v.sort();
    v.dedup();
    let numbers: Option<Vec<f64>> = v
        .iter()
        .map(|s| s.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    if let Some(nums) = numbers {
        let mut pairs: Vec<(f64, String)> = nums.into_iter().zip(v).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        v = pairs.into_iter().map(|p| p.1).collect();
    }
    v
}

/// Scores of predicted labels against true labels, with one-vs-rest AUROC/AUPRC when `probs`
/// (class name, one probability or score per row) is not empty.
///
/// The classes are the sorted union of the true labels, the predicted labels and the classes
/// of `probs` (sklearn's `labels=`): a class no row has counts in the macro averages with
/// zeros. With two classes the headline AUROC/AUPRC are those of `positive` (default: the
/// later class, sklearn's `pos_label=1` for 0/1 labels), and one probability column is enough
/// (the other class gets 1 − p). With more, every class needs a column and the headline is the
/// unweighted mean; its AUROC is `None` when any class's is (no positives or no negatives), as
/// sklearn's NaN would spread.
pub fn classification<T: AsRef<str>, P: AsRef<str>>(
    truth: &[T],
    pred: &[P],
    probs: &[(String, Vec<f64>)],
    positive: Option<&str>,
) -> Result<ClassScores, ScoreError> {
    let n = truth.len();
    if n == 0 {
        return Err(ScoreError::Empty);
    }
    same_length("the predictions", n, pred.len())?;
    for (c, p) in probs {
        same_length(&format!("the probabilities of class `{c}`"), n, p.len())?;
        finite(&format!("the probability of class `{c}`"), p)?;
        if probs.iter().filter(|(d, _)| d == c).count() > 1 {
            return Err(ScoreError::DuplicateProbabilities(c.clone()));
        }
    }
    let classes = sorted_classes(
        truth
            .iter()
            .map(AsRef::as_ref)
            .chain(pred.iter().map(AsRef::as_ref))
            .chain(probs.iter().map(|(c, _)| c.as_str())),
    );
    let index: IndexMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let t: Vec<usize> = truth.iter().map(|s| index[s.as_ref()]).collect();
    let p: Vec<usize> = pred.iter().map(|s| index[s.as_ref()]).collect();
    let confusion = Confusion::new(classes.clone(), &t, &p);
    let support = confusion.support();

    let (headline, per_class_ranking) = ranking(&classes, &t, probs, positive)?;
    let mut per_class = IndexMap::new();
    let (mut ps, mut rs, mut fs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, c) in classes.iter().enumerate() {
        let (precision, recall, f1) = confusion.precision_recall_f1(i);
        ps.push(precision);
        rs.push(recall);
        fs.push(f1);
        let ranking = per_class_ranking.as_ref().map(|r| r[i].clone());
        per_class.insert(
            c.clone(),
            ClassScore {
                precision,
                recall,
                f1,
                support: support[i],
                ranking,
            },
        );
    }
    Ok(ClassScores {
        rows: n,
        classes,
        accuracy: confusion.accuracy(),
        balanced_accuracy: confusion.balanced_accuracy(),
        precision_macro: mean(&ps),
        recall_macro: mean(&rs),
        f1_macro: mean(&fs),
        mcc: confusion.mcc(),
        ranking: headline,
        per_class,
        confusion,
    })
}

type Rankings = (Option<Ranking>, Option<Vec<Ranking>>);

/// Headline and per-class ranking scores (none without probabilities).
fn ranking(
    classes: &[String],
    truth: &[usize],
    probs: &[(String, Vec<f64>)],
    positive: Option<&str>,
) -> Result<Rankings, ScoreError> {
    let list = || classes.join(", ");
    if let Some(pos) = positive {
        if classes.len() > 2 {
            return Err(ScoreError::PositiveWithManyClasses(classes.len()));
        }
        if !classes.iter().any(|c| c == pos) {
            return Err(ScoreError::UnknownPositive {
                class: pos.to_string(),
                classes: list(),
            });
        }
    }
    if probs.is_empty() {
        return Ok((None, None));
    }
    let column = |c: &str| probs.iter().find(|(d, _)| d == c).map(|(_, v)| v.clone());
    // The score of each class: its own column, or with two classes 1 − the other's.
    let mut scores = Vec::with_capacity(classes.len());
    for (i, c) in classes.iter().enumerate() {
        let s = match column(c) {
            Some(s) => s,
            None if classes.len() == 2 => {
                let other = column(&classes[1 - i]).expect("one of two classes has a column");
                other.iter().map(|p| 1.0 - p).collect()
            }
            None => {
                return Err(ScoreError::MissingProbabilities {
                    class: c.clone(),
                    classes: list(),
                });
            }
        };
        scores.push(s);
    }
    let per_class: Vec<Ranking> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let is = positives(truth, i);
            Ranking {
                auroc: auroc(&is, s),
                auprc: average_precision(&is, s),
                positive: None,
            }
        })
        .collect();
    let headline = if classes.len() == 2 {
        let pos = positive
            .and_then(|p| classes.iter().position(|c| c == p))
            .unwrap_or(1);
        Ranking {
            positive: Some(classes[pos].clone()),
            ..per_class[pos].clone()
        }
    } else {
        let aurocs: Option<Vec<f64>> = per_class.iter().map(|r| r.auroc).collect();
        let auprcs: Vec<f64> = per_class.iter().map(|r| r.auprc).collect();
        Ranking {
            auroc: aurocs.map(|a| mean(&a)),
            auprc: mean(&auprcs),
            positive: None,
        }
    };
    Ok((Some(headline), Some(per_class)))
}

fn positives(truth: &[usize], class: usize) -> Vec<bool> {
    truth.iter().map(|&t| t == class).collect()
}

/// (true positives, false positives) above each distinct score, highest score first: the
/// points of sklearn's `_binary_clf_curve`. Tied scores form one point, so the curve crosses
/// a tied group in one straight step.
fn curve(positive: &[bool], scores: &[f64]) -> Vec<(u64, u64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    for (k, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_group = order
            .get(k + 1)
            .is_none_or(|&j| scores[j].total_cmp(&scores[i]) != Ordering::Equal);
        if last_of_group {
            points.push((tp, fp));
        }
    }
    points
}

/// Area under the ROC curve (sklearn's `roc_auc_score` for two classes): the chance that a
/// random positive scores above a random negative, ties counting half. `None` when there are
/// no positives or no negatives: the curve is undefined (sklearn warns and returns NaN).
pub fn auroc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let points = curve(positive, scores);
    let &(tps, fps) = points.last()?;
    if tps == 0 || fps == 0 {
        return None;
    }
    // Trapezoids in integer counts (exact), scaled once at the end.
    let (mut area2, mut prev) = (0u128, (0u64, 0u64));
    for &(tp, fp) in &points {
        area2 += (fp - prev.1) as u128 * (tp + prev.0) as u128;
        prev = (tp, fp);
    }
    Some(area2 as f64 / (2.0 * tps as f64 * fps as f64))
}

/// Average precision (sklearn's `average_precision_score`): precision at each distinct score
/// weighted by the recall it adds, no interpolation. 0 without positives, as sklearn (which
/// warns and sets recall to 1).
pub fn average_precision(positive: &[bool], scores: &[f64]) -> f64 {
    let points = curve(positive, scores);
    let Some(&(tps, _)) = points.last() else {
        return 0.0;
    };
    if tps == 0 {
        return 0.0;
    }
    let mut ap = 0.0;
    let mut prev_tp = 0u64;
    for &(tp, fp) in &points {
        ap += (tp - prev_tp) as f64 / tps as f64 * (tp as f64 / (tp + fp) as f64);
        prev_tp = tp;
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_labels_sort_by_value() {
        assert_eq!(sorted_classes(["10", "2", "1", "2"]), ["1", "2", "10"]);
        assert_eq!(sorted_classes(["b", "a", "10"]), ["10", "a", "b"]);
        assert_eq!(sorted_classes(["-1", "0.5", "0"]), ["-1", "0", "0.5"]);
    }

    #[test]
    fn ties_count_half() {
        // One positive and one negative with the same score: a coin flip.
        assert_eq!(auroc(&[true, false], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auroc(&[true, false], &[0.9, 0.1]), Some(1.0));
        assert_eq!(auroc(&[true, true], &[0.9, 0.1]), None);
        assert_eq!(average_precision(&[false, false], &[0.9, 0.1]), 0.0);
        assert_eq!(average_precision(&[true, false], &[0.5, 0.5]), 0.5);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let e = classification(&["a"], &["a", "b"], &[], None).unwrap_err();
        assert!(
            matches!(e, ScoreError::LengthMismatch { got: 2, .. }),
            "{e}"
        );
        let none: [&str; 0] = [];
        assert_eq!(
            classification(&none, &none, &[], None).unwrap_err(),
            ScoreError::Empty
        );
        let probs = [("a".to_string(), vec![f64::NAN])];
        assert!(matches!(
            classification(&["a"], &["a"], &probs, None).unwrap_err(),
            ScoreError::NotFinite { row: 1, .. }
        ));
        let probs = [("a".to_string(), vec![0.5, 0.2, 0.1])];
        let e = classification(&["a", "b", "c"], &["a", "b", "c"], &probs, None).unwrap_err();
        assert!(matches!(e, ScoreError::MissingProbabilities { .. }), "{e}");
        let e = classification(&["a", "b"], &["a", "b"], &[], Some("c")).unwrap_err();
        assert!(matches!(e, ScoreError::UnknownPositive { .. }), "{e}");
    }

    #[test]
    fn positive_class_can_be_chosen() {
        let probs = [("yes".to_string(), vec![0.9, 0.4, 0.6, 0.2])];
        let t = ["yes", "no", "no", "no"];
        let s = classification(&t, &t, &probs, Some("no")).unwrap();
        let r = s.ranking.unwrap();
        assert_eq!(r.positive.as_deref(), Some("no"));
        assert_eq!(r.auroc, Some(1.0));
        assert_eq!(r.auprc, 1.0);
        let json = serde_json::to_value(classification(&t, &t, &[], None).unwrap()).unwrap();
        assert!(
            json.get("auroc").is_none(),
            "no probabilities, no AUROC key"
        );
        assert_eq!(json["per_class"]["yes"]["f1"], 1.0);
        assert_eq!(json["confusion"]["counts"][0][0], 3);
    }
}
