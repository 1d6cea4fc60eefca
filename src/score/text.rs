//! Generated text against the real text, as SQuAD scores answers (and the tutorial's readers
//! know it): both sides normalised (lowercase, punctuation and the articles a/an/the removed,
//! whitespace collapsed), then exact match and the F1 of their bags of words.

use std::collections::HashMap;

/// The words of a text after SQuAD's normalisation.
pub fn normalized_words(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c.to_lowercase().next().unwrap_or(c)
            } else if c == '-' || c == '/' {
                // "50S ribosomal protein L7/L12", "ATP-dependent": the parts are words.
                ' '
            } else {
                '\0'
            }
        })
        .filter(|&c| c != '\0')
        .collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(String::from)
        .collect()
}

/// Whether the two texts are the same after normalisation.
pub fn exact_match(prediction: &str, truth: &str) -> bool {
    normalized_words(prediction) == normalized_words(truth)
}

/// Harmonic mean of word precision and recall, words counted with multiplicity; 1 when both
/// are empty, 0 when only one is.
pub fn token_f1(prediction: &str, truth: &str) -> f64 {
    let (p, t) = (normalized_words(prediction), normalized_words(truth));
    if p.is_empty() || t.is_empty() {
        return f64::from(u8::from(p.is_empty() && t.is_empty()));
    }
    let mut counts: HashMap<&str, isize> = HashMap::new();
    for w in &t {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &p {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / t.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Mean exact match and token F1 over rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextScores {
    /// Share of rows whose prediction matches exactly (after normalisation).
    pub exact_match: f64,
    /// Mean token F1.
    pub token_f1: f64,
    /// Rows scored.
    pub n: usize,
}

/// Scores of predictions against the truths, row by row.
pub fn text_scores(predictions: &[String], truths: &[String]) -> TextScores {
    let n = predictions.len().min(truths.len());
    let (mut em, mut f1) = (0.0, 0.0);
    for (p, t) in predictions.iter().zip(truths) {
        em += f64::from(u8::from(exact_match(p, t)));
        f1 += token_f1(p, t);
    }
    let d = n.max(1) as f64;
    TextScores {
        exact_match: em / d,
        token_f1: f1 / d,
        n,
    }
}

/// Generated answers scored as classes: the classes are the distinct true answers, an answer
/// counts only when it is exactly one of them (whitespace around it aside: no substring or
/// normalised credit), and one that is none of them is wrong and counted as invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScores {
    /// Share of rows answered with their own class.
    pub accuracy: f64,
    /// Mean over the classes of each class's F1.
    pub f1_macro: f64,
    /// Share of rows whose answer is none of the classes.
    pub invalid_rate: f64,
    /// Each class's F1.
    pub per_class: std::collections::BTreeMap<String, f64>,
    /// Per row, whether the answer is its class (for a bootstrap interval).
    pub correct: Vec<bool>,
}

/// [`ChoiceScores`] of `predictions` against `truths`, row by row.
pub fn choice_scores(predictions: &[String], truths: &[String]) -> ChoiceScores {
    use std::collections::{BTreeMap, BTreeSet};
    let classes: BTreeSet<&str> = truths.iter().map(|t| t.trim()).collect();
    let mut tp: BTreeMap<&str, f64> = BTreeMap::new();
    let mut fp: BTreeMap<&str, f64> = BTreeMap::new();
    let mut fn_: BTreeMap<&str, f64> = BTreeMap::new();
    let (mut invalid, mut correct) = (0usize, Vec::with_capacity(truths.len()));
    for (p, t) in predictions.iter().zip(truths) {
        let (p, t) = (p.trim(), t.trim());
        let right = p == t;
        correct.push(right);
        if right {
            *tp.entry(t).or_default() += 1.0;
            continue;
        }
        *fn_.entry(t).or_default() += 1.0;
        if classes.contains(p) {
            *fp.entry(p).or_default() += 1.0;
        } else {
            invalid += 1;
        }
    }
    let per_class: BTreeMap<String, f64> = classes
        .iter()
        .map(|c| {
            let (tp, fp, fn_) = (
                tp.get(c).copied().unwrap_or(0.0),
                fp.get(c).copied().unwrap_or(0.0),
                fn_.get(c).copied().unwrap_or(0.0),
            );
            let d = 2.0 * tp + fp + fn_;
            (c.to_string(), if d == 0.0 { 0.0 } else { 2.0 * tp / d })
        })
        .collect();
    let n = correct.len().max(1) as f64;
    ChoiceScores {
        accuracy: correct.iter().filter(|&&c| c).count() as f64 / n,
        f1_macro: per_class.values().sum::<f64>() / per_class.len().max(1) as f64,
        invalid_rate: invalid as f64 / n,
        per_class,
        correct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "promoterpromoterpromo" is not "promoter": invalid and wrong, never substring credit.
    #[test]
    fn choices_count_exact_answers_only() {
        let truth: Vec<String> = ["promoter", "promoter", "none", "none"]
            .map(String::from)
            .to_vec();
        let pred: Vec<String> = ["promoter", "promoterpromoterpromo", "promoter", " none "]
            .map(String::from)
            .to_vec();
        let s = choice_scores(&pred, &truth);
        assert_eq!(s.accuracy, 0.5);
        assert_eq!(s.invalid_rate, 0.25);
        // promoter: tp 1, fp 1, fn 1 -> 0.5; none: tp 1, fn 1 -> 2/3.
        assert!((s.per_class["promoter"] - 0.5).abs() < 1e-12);
        assert!((s.per_class["none"] - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.f1_macro - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn normalisation_as_squad() {
        assert_eq!(
            normalized_words("The 50S ribosomal protein L7/L12."),
            ["50s", "ribosomal", "protein", "l7", "l12"]
        );
        assert!(exact_match(
            "DNA gyrase subunit A",
            "dna  gyrase, subunit a"
        ));
        assert!(!exact_match("DNA gyrase subunit A", "DNA gyrase subunit B"));
    }

    #[test]
    fn token_f1_counts_common_words_with_multiplicity() {
        // 2 common words (ribosomal, protein once) of 4 predicted and 5 true: P 2/4, R 2/5.
        let f1 = token_f1(
            "50S ribosomal protein L2",
            "30S ribosomal protein S2 protein",
        );
        let expected = 2.0 * (2.0 / 4.0) * (2.0 / 5.0) / (2.0 / 4.0 + 2.0 / 5.0);
        assert!((f1 - expected).abs() < 1e-12, "{f1} vs {expected}");
        assert_eq!(token_f1("protein protein", "protein"), 2.0 * 0.5 / 1.5);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("kinase", ""), 0.0);
        assert_eq!(token_f1("kinase", "synthase"), 0.0);
    }

    #[test]
    fn mean_scores() {
        let s = text_scores(
            &["DNA ligase".into(), "kinase".into()],
            &["DNA ligase".into(), "DNA ligase".into()],
        );
        assert_eq!(s.n, 2);
        assert_eq!(s.exact_match, 0.5);
        assert_eq!(s.token_f1, 0.5);
    }
}
