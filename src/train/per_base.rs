//! Per-base labels onto tokens, and token predictions back onto bases, by each token's span of
//! the sequence (the tokenizer's offsets). With one token per base this is the identity; a BPE
//! or k-mer token spelling several bases takes one label for all of them ([`TokenLabel`]), and
//! its prediction is painted back over every base it spells, so scores are per base whatever
//! the tokenizer.

use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::IGNORE;

/// Which label a token spelling several bases learns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenLabel {
    /// The most common label of its bases (ties: the one that comes first in the token), so
    /// the fewest bases are mislabelled when the prediction is painted back.
    #[default]
    Majority,
    /// The label of its first base (transformers' first-sub-token convention).
    First,
}

/// One class index (or [`IGNORE`]) per token: `labels` holds a class index per base, `spans`
/// each token's `[start, end)` in bases. A token that spells no base (`[CLS]`, `[SEP]`) is
/// ignored by the loss.
pub fn token_labels(spans: &[(usize, usize)], labels: &[u32], rule: TokenLabel) -> Vec<i64> {
    spans
        .iter()
        .map(|&(a, b)| {
            let bases = &labels[a.min(labels.len())..b.min(labels.len())];
            let Some(&first) = bases.first() else {
                return IGNORE;
            };
            match rule {
                TokenLabel::First => first as i64,
                TokenLabel::Majority => {
                    let count = |c: u32| bases.iter().filter(|&&x| x == c).count();
                    let mut best = first;
                    for &c in bases {
                        if count(c) > count(best) {
                            best = c;
                        }
                    }
                    best as i64
                }
            }
        })
        .collect()
}

/// The predicted class of every base: each base takes the prediction of the token that spells
/// it (`predictions` holds one class per token of `spans`, `None` for tokens not predicted);
/// `None` for a base no token spells.
pub fn base_predictions(
    spans: &[(usize, usize)],
    predictions: &[Option<usize>],
    n_bases: usize,
) -> Vec<Option<usize>> {
    let mut out = vec![None; n_bases];
    for (&(a, b), p) in spans.iter().zip(predictions) {
        for slot in &mut out[a.min(n_bases)..b.min(n_bases)] {
            *slot = *p;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // "ACGTAC" as [CLS] ACG TA C [SEP], labels per base 0 0 1 1 1 2.
    const SPANS: [(usize, usize); 5] = [(0, 0), (0, 3), (3, 5), (5, 6), (0, 0)];
    const LABELS: [u32; 6] = [0, 0, 1, 1, 1, 2];

    #[test]
    fn multi_base_tokens_take_the_first_or_the_commonest_label() {
        assert_eq!(
            token_labels(&SPANS, &LABELS, TokenLabel::First),
            vec![IGNORE, 0, 1, 2, IGNORE]
        );
        assert_eq!(
            token_labels(&SPANS, &LABELS, TokenLabel::Majority),
            vec![IGNORE, 0, 1, 2, IGNORE]
        );
        // ACG labelled 0 1 1: the first base says 0, the majority 1.
        let labels = [0, 1, 1, 1, 1, 2];
        assert_eq!(token_labels(&SPANS, &labels, TokenLabel::First)[1], 0);
        assert_eq!(token_labels(&SPANS, &labels, TokenLabel::Majority)[1], 1);
        // A tie goes to the label that comes first in the token.
        assert_eq!(
            token_labels(&[(0, 2)], &[2, 1], TokenLabel::Majority),
            vec![2]
        );
    }

    #[test]
    fn token_predictions_cover_every_base_they_spell() {
        let pred = [None, Some(0), Some(1), Some(2), None];
        assert_eq!(
            base_predictions(&SPANS, &pred, 6),
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), Some(2)]
        );
        // A base no token spells (the tokenizer dropped it) has no prediction.
        assert_eq!(
            base_predictions(&[(0, 1), (2, 3)], &[Some(1), Some(1)], 3),
            vec![Some(1), None, Some(1)]
        );
    }
}
