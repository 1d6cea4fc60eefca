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

#[cfg(test)]
mod tests {
    use super::*;

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
