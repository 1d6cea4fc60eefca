//! Per-base labels: one character per base or residue (a dot-bracket structure, a DSSP state),
//! scored base by base over every sequence, and for dot-bracket labels whether the predicted
//! brackets of a sequence pair up at all (a structure that cannot be drawn is wrong however many
//! of its bases are right).

use serde::Serialize;

use super::{ClassScores, ScoreError, classification};

/// Per-base scores of predicted label strings against true ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerBaseScores {
    /// Sequences scored.
    pub sequences: usize,
    /// Every classification score over the bases of all sequences (`rows` = bases).
    pub bases: ClassScores,
    /// Fraction of sequences predicted right at every base.
    pub exact: f64,
    /// Fraction of sequences whose predicted `(` and `)` pair up (never more `)` than `(` so
    /// far, as many of each at the end); `None` when no label is a bracket.
    pub balanced: Option<f64>,
}

/// Whether the `(` and `)` of a dot-bracket string pair up.
pub fn brackets_balance(s: &str) -> bool {
    let mut open = 0usize;
    for c in s.chars() {
        match c {
            '(' => open += 1,
            ')' if open == 0 => return false,
            ')' => open -= 1,
            _ => {}
        }
    }
    open == 0
}

/// Scores of `pred` against `truth`, string by string; a predicted string must have one
/// character per true one.
pub fn per_base<T: AsRef<str>, P: AsRef<str>>(
    truth: &[T],
    pred: &[P],
) -> Result<PerBaseScores, ScoreError> {
    if truth.len() != pred.len() {
        return Err(ScoreError::LengthMismatch {
            what: "the predicted sequences".into(),
            expected: truth.len(),
            got: pred.len(),
        });
    }
    let (mut t, mut p) = (Vec::new(), Vec::new());
    let mut exact = 0usize;
    for (i, (a, b)) in truth.iter().zip(pred).enumerate() {
        let (a, b) = (a.as_ref(), b.as_ref());
        if a.chars().count() != b.chars().count() {
            return Err(ScoreError::LengthMismatch {
                what: format!("the prediction of sequence {}", i + 1),
                expected: a.chars().count(),
                got: b.chars().count(),
            });
        }
        exact += (a == b) as usize;
        t.extend(a.chars().map(String::from));
        p.extend(b.chars().map(String::from));
    }
    let bases = classification(&t, &p, &[], None)?;
    let brackets = t.iter().chain(&p).any(|c| c == "(" || c == ")");
    let n = truth.len() as f64;
    Ok(PerBaseScores {
        sequences: truth.len(),
        bases,
        exact: exact as f64 / n,
        balanced: brackets
            .then(|| pred.iter().filter(|s| brackets_balance(s.as_ref())).count() as f64 / n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_pair_up_only_in_order() {
        assert!(brackets_balance("((..))."));
        assert!(brackets_balance("...."));
        assert!(!brackets_balance("(()"));
        assert!(!brackets_balance(")("));
        assert!(!brackets_balance("())(()"));
    }

    #[test]
    fn scores_every_base_of_every_sequence() {
        let truth = ["((..))", "(.)"];
        let pred = ["((..).", "(.)"];
        let s = per_base(&truth, &pred).unwrap();
        assert_eq!(s.sequences, 2);
        assert_eq!(s.bases.rows, 9);
        assert!((s.bases.accuracy - 8.0 / 9.0).abs() < 1e-12);
        assert_eq!(s.exact, 0.5);
        assert_eq!(s.balanced, Some(0.5));
        // `)` was predicted `.` once: its recall is 2/3.
        assert!((s.bases.per_class[")"].recall - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn labels_without_brackets_have_no_balance() {
        let s = per_base(&["HHEC"], &["HHCC"]).unwrap();
        assert_eq!(s.balanced, None);
        assert_eq!(s.bases.accuracy, 0.75);
    }

    #[test]
    fn a_prediction_of_another_length_is_refused() {
        let e = per_base(&["((..))"], &["((.)"]).unwrap_err();
        assert!(e.to_string().contains("sequence 1"), "{e}");
        assert!(per_base(&["a"], &["a", "b"]).is_err());
    }
}
