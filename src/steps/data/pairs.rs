//! `data.pairs`: a pair-classification table from a table of true pairs (a gene and its
//! protein, a promoter and its gene …). Every row gives one positive pair and, seeded, the
//! negatives asked for: the left side with another row's right side (`other`), and the left
//! side with its own right side carrying a few substitutions (`substituted`), so that neither
//! length nor composition alone tells a positive from a negative.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Rng, params_of, resolve, text_column};
use crate::steps::table::{TABLE_FILE, TableMeta, write_table_with};
use crate::steps::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use polars::prelude::*;

/// A kind of negative pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Negative {
    /// The left side with the right side of another row (seeded choice; never an identical
    /// right side).
    Other,
    /// The left side with its own right side, `substitutions` characters changed at seeded
    /// positions to other characters of the right column's alphabet.
    Substituted,
}

impl Negative {
    fn name(self) -> &'static str {
        match self {
            Negative::Other => "other",
            Negative::Substituted => "substituted",
        }
    }
}

/// Parameters of `data.pairs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PairsParams {
    /// The table of true pairs.
    input: InputPath,
    /// Column of each pair's first sequence (e.g. `cds_sequence`).
    left: String,
    /// Column of its partner (e.g. `protein`).
    right: String,
    /// Keep only the first N characters of the left side.
    left_length: Option<usize>,
    /// Keep only the first N characters of the right side (substitutions fall inside them).
    right_length: Option<usize>,
    /// Windows per row: its first `windows` non-overlapping tiles of `left_length` /
    /// `right_length` characters (fewer when a side is shorter), each a pair of its own named
    /// `<id>@<offset>`. Default 1: the prefixes.
    #[serde(default = "one")]
    windows: usize,
    /// Left characters per right character as windows move along both sides (3: a codon per
    /// residue, so a CDS window and a protein window stay in register).
    #[serde(default = "one")]
    frame: usize,
    /// The negatives made from every row (default: both kinds).
    #[serde(default = "both")]
    negatives: Vec<Negative>,
    /// Characters changed in a `substituted` negative.
    #[serde(default = "three")]
    substitutions: usize,
    /// Seeds which negatives are drawn (same seed, same pairs).
    #[serde(default)]
    seed: u64,
    /// Column of row ids: pairs are named `<id>`, `<id>~other`, `<id>~substituted`, and the
    /// id is kept in `group` so that `data.split` can keep all pairs of a row together.
    #[serde(default = "crate::steps::table::id_column")]
    id: String,
}

fn both() -> Vec<Negative> {
    vec![Negative::Other, Negative::Substituted]
}
fn three() -> usize {
    3
}
fn one() -> usize {
    1
}

/// The `data.pairs` kind.
pub static KIND: StepKind = StepKind {
    name: "data.pairs",
    version: 2,
    summary: "pair-classification table from true pairs: each row's pair (`match`) plus seeded negatives (`other`: another row's partner; `substituted`: its own partner with a few characters changed); columns id, group, sequence, pair, label, kind (output `table`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<PairsParams>(),
    check: |with| params::<PairsParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &PairsParams) -> Result<(), String> {
    if p.left == p.right {
        return Err("`left` and `right` must be two different columns".into());
    }
    if p.left_length == Some(0) || p.right_length == Some(0) {
        return Err("`left_length` and `right_length` must be at least 1".into());
    }
    if p.windows == 0 || p.frame == 0 {
        return Err("`windows` and `frame` must be at least 1".into());
    }
    if p.windows > 1 && (p.left_length.is_none() || p.right_length.is_none()) {
        return Err(
            "`windows` above 1 needs `left_length` and `right_length` (the tile sizes)".into(),
        );
    }
    if p.negatives.contains(&Negative::Substituted) && p.substitutions == 0 {
        return Err("`substitutions` must be at least 1 for `substituted` negatives".into());
    }
    let mut seen = p.negatives.clone();
    seen.dedup();
    if seen.len() != p.negatives.len() {
        return Err("`negatives` lists a kind twice".into());
    }
    Ok(())
}

/// One output row.
struct Pair {
    id: String,
    group: String,
    left: String,
    right: String,
    kind: &'static str,
}

/// One window of a table row.
#[derive(Debug, Clone)]
struct Window {
    /// The row's id, or `<id>@<offset>` when a row gives several windows.
    id: String,
    /// The row's id: every pair of a row keeps it, for a grouped split.
    group: String,
    /// The row's 1-based number in the table, for messages.
    row: usize,
    left: String,
    right: String,
}

/// The windows of one row: tile `k` starts at `k × right_length` on the right side and `frame`
/// times that on the left; only whole tiles that fit both sides, at most `n` (always at least
/// the prefixes).
fn windows(id: &str, row: usize, left: &str, right: &str, p: &PairsParams) -> Vec<Window> {
    let (Some(ll), Some(rl)) = (p.left_length, p.right_length) else {
        return vec![Window {
            id: id.to_string(),
            group: id.to_string(),
            row,
            left: prefix(left, p.left_length),
            right: prefix(right, p.right_length),
        }];
    };
    let (l, r): (Vec<char>, Vec<char>) = (left.chars().collect(), right.chars().collect());
    let mut out = Vec::new();
    for k in 0..p.windows {
        let (ro, lo) = (k * rl, k * rl * p.frame);
        let fits = ro + rl <= r.len() && lo + ll <= l.len();
        if k > 0 && !fits {
            break;
        }
        let cut = |v: &[char], at: usize, n: usize| -> String {
            v[at.min(v.len())..(at + n).min(v.len())].iter().collect()
        };
        let name = if p.windows == 1 {
            id.to_string()
        } else {
            format!("{id}@{ro}")
        };
        out.push(Window {
            id: name,
            group: id.to_string(),
            row,
            left: cut(&l, lo, ll),
            right: cut(&r, ro, rl),
        });
    }
    out
}

/// The pairs of `rows`, in row order: each window's positive then its negatives.
/// Substitutions draw from `pool` (every character of the right sides, so each is drawn as
/// often as it occurs and a substituted side keeps a natural composition); an `other` partner
/// comes from another group.
fn make_pairs(
    rows: &[Window],
    negatives: &[Negative],
    substitutions: usize,
    pool: &[char],
    seed: u64,
) -> Result<Vec<Pair>, String> {
    let mut rng = Rng::new(seed);
    if negatives.contains(&Negative::Substituted) && pool.iter().all(|c| Some(c) == pool.first()) {
        return Err(
            "the right column has a single character; nothing to substitute it with".into(),
        );
    }
    let mut out = Vec::with_capacity(rows.len() * (1 + negatives.len()));
    for w in rows {
        let Window {
            id,
            group,
            row,
            left,
            right,
        } = w;
        let pair = |right: String, kind: &'static str| Pair {
            id: if kind == "match" {
                id.clone()
            } else {
                format!("{id}~{kind}")
            },
            group: group.clone(),
            left: left.clone(),
            right,
            kind,
        };
        out.push(pair(right.clone(), "match"));
        for &neg in negatives {
            let partner = match neg {
                Negative::Other => {
                    let others: Vec<usize> = (0..rows.len())
                        .filter(|&j| rows[j].group != *group && rows[j].right != *right)
                        .collect();
                    if others.is_empty() {
                        return Err(format!(
                            "row {row} (`{id}`): no other row has a different right side to \
                             pair it with"
                        ));
                    }
                    rows[others[rng.below(others.len())]].right.clone()
                }
                Negative::Substituted => {
                    let mut chars: Vec<char> = right.chars().collect();
                    if chars.len() < substitutions {
                        return Err(format!(
                            "row {row} (`{id}`): its right side has {} characters, fewer than \
                             `substitutions: {substitutions}`",
                            chars.len()
                        ));
                    }
                    let mut at: Vec<usize> = (0..chars.len()).collect();
                    rng.shuffle(&mut at);
                    for &k in &at[..substitutions] {
                        let was = chars[k];
                        while chars[k] == was {
                            chars[k] = pool[rng.below(pool.len())];
                        }
                    }
                    chars.into_iter().collect()
                }
            };
            out.push(pair(partner, neg.name()));
        }
    }
    Ok(out)
}

/// The first `n` characters of `s` (all of it without `n`).
fn prefix(s: &str, n: Option<usize>) -> String {
    match n {
        Some(n) => s.chars().take(n).collect(),
        None => s.to_string(),
    }
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: PairsParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let df = crate::steps::table::read_table(&path)?;
    let ids = super::column_as_strings(&df, &p.id, &path, "id")?;
    let left = text_column(&df, &p.left, &path, "left")?;
    let right = text_column(&df, &p.right, &path, "right")?;
    let mut rows = Vec::with_capacity(df.height());
    for (i, ((id, l), r)) in ids
        .into_iter()
        .zip(left.iter())
        .zip(right.iter())
        .enumerate()
    {
        let (l, r) = (l.unwrap_or("").trim(), r.unwrap_or("").trim());
        for (side, v) in [(&p.left, l), (&p.right, r)] {
            if v.is_empty() {
                return Err(StepError::new(format!(
                    "{}: row {} (`{id}`): column `{side}` is empty; every pair needs both \
                     sides (drop such rows first with data.filter)",
                    path.display(),
                    i + 1
                )));
            }
        }
        rows.extend(windows(&id, i + 1, l, &r.to_ascii_uppercase(), &p));
    }
    let pool: Vec<char> = rows
        .iter()
        .flat_map(|w| w.right.chars())
        .filter(|c| c.is_ascii_alphabetic())
        .collect();
    let mut alphabet = pool.clone();
    alphabet.sort_unstable();
    alphabet.dedup();
    let pairs = make_pairs(&rows, &p.negatives, p.substitutions, &pool, p.seed)
        .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    let col = |name: &str, f: &dyn Fn(&Pair) -> &str| {
        Column::new(name.into(), pairs.iter().map(f).collect::<Vec<&str>>())
    };
    let mut out = DataFrame::new(
        pairs.len(),
        vec![
            col("id", &|x| &x.id),
            col("group", &|x| &x.group),
            col("sequence", &|x| &x.left),
            col("pair", &|x| &x.right),
            col("label", &|x| {
                if x.kind == "match" {
                    "match"
                } else {
                    "mismatch"
                }
            }),
            col("kind", &|x| x.kind),
        ],
    )?;
    write_table_with(&mut out, &ctx.out.join(TABLE_FILE), &meta)?;
    let count = |k: &str| pairs.iter().filter(|x| x.kind == k).count();
    writeln!(
        ctx.log,
        "{} rows → {} windows → {} pairs: {} match, {} other, {} substituted",
        df.height(),
        rows.len(),
        pairs.len(),
        count("match"),
        count("other"),
        count("substituted")
    )?;
    let mean = |f: &dyn Fn(&Pair) -> usize| {
        pairs.iter().map(f).sum::<usize>() as f64 / pairs.len().max(1) as f64
    };
    write_metrics(
        ctx.out,
        &serde_json::json!({
            "rows": df.height(),
            "windows": rows.len(),
            "pairs": pairs.len(),
            "match": count("match"),
            "other": count("other"),
            "substituted": count("substituted"),
            "mean_left_length": mean(&|x| x.left.chars().count()),
            "mean_right_length": mean(&|x| x.right.chars().count()),
            "right_alphabet": alphabet.iter().collect::<String>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Window> {
        (0..6)
            .map(|i| Window {
                id: format!("g{i}"),
                group: format!("g{i}"),
                row: i + 1,
                left: format!("ATG{}", "GCA".repeat(i + 1)),
                right: format!(
                    "M{}",
                    "ACDEFG".chars().cycle().skip(i).take(8).collect::<String>()
                ),
            })
            .collect()
    }

    #[test]
    fn negatives_differ_from_the_positive_and_are_seeded() {
        let r = rows();
        let abc: Vec<char> = "ACDEFGM".chars().collect();
        let both = [Negative::Other, Negative::Substituted];
        let pairs = make_pairs(&r, &both, 3, &abc, 7).unwrap();
        assert_eq!(pairs.len(), 18);
        for (k, chunk) in pairs.chunks(3).enumerate() {
            let (pos, other, sub) = (&chunk[0], &chunk[1], &chunk[2]);
            assert_eq!(
                (pos.kind, other.kind, sub.kind),
                ("match", "other", "substituted")
            );
            assert_eq!(pos.right, r[k].right);
            assert!(
                chunk
                    .iter()
                    .all(|x| x.group == r[k].id && x.left == r[k].left)
            );
            assert_ne!(other.right, pos.right);
            assert!(r.iter().any(|x| x.right == other.right));
            let changed = pos
                .right
                .chars()
                .zip(sub.right.chars())
                .filter(|(a, b)| a != b);
            assert_eq!(changed.count(), 3);
            assert_eq!(sub.right.len(), pos.right.len());
            assert_eq!(other.id, format!("{}~other", r[k].id));
        }
        let again = make_pairs(&r, &both, 3, &abc, 7).unwrap();
        assert!(pairs.iter().zip(&again).all(|(a, b)| a.right == b.right));
        let other_seed = make_pairs(&r, &both, 3, &abc, 8).unwrap();
        assert!(
            pairs
                .iter()
                .zip(&other_seed)
                .any(|(a, b)| a.right != b.right)
        );
    }

    #[test]
    fn windows_tile_both_sides_in_register() {
        let p: PairsParams = serde_json::from_value(serde_json::json!({
            "input": "t.csv", "left": "cds", "right": "protein",
            "left_length": 6, "right_length": 2, "windows": 5, "frame": 3
        }))
        .unwrap();
        let w = windows("g", 4, "ATGAAACCCGGGTTTTAA", "MKPGF", &p);
        let got: Vec<(&str, &str, &str)> = w
            .iter()
            .map(|x| (x.id.as_str(), x.left.as_str(), x.right.as_str()))
            .collect();
        assert_eq!(got, [("g@0", "ATGAAA", "MK"), ("g@2", "CCCGGG", "PG")]);
        assert!(w.iter().all(|x| x.group == "g" && x.row == 4));
    }

    #[test]
    fn impossible_negatives_name_the_row() {
        let mut r = rows();
        r[2].right = "MA".into();
        let abc: Vec<char> = "ACDEFGM".chars().collect();
        let e = make_pairs(&r, &[Negative::Substituted], 3, &abc, 1)
            .err()
            .unwrap();
        assert!(
            e.contains("row 3 (`g2`)") && e.contains("2 characters"),
            "{e}"
        );
        let same: Vec<Window> = r
            .iter()
            .map(|x| Window {
                right: "MA".into(),
                ..x.clone()
            })
            .collect();
        let e = make_pairs(&same, &[Negative::Other], 1, &abc, 1)
            .err()
            .unwrap();
        assert!(e.contains("row 1 (`g0`)"), "{e}");
    }

    #[test]
    fn substitutions_keep_the_composition_of_the_right_side() {
        // A pool of 90 % A: substitutions of non-A residues draw mostly A.
        let pool: Vec<char> = "A".repeat(90).chars().chain("CDEFGHIKLM".chars()).collect();
        let r: Vec<Window> = (0..200)
            .map(|i| Window {
                id: format!("g{i}"),
                group: format!("g{i}"),
                row: i + 1,
                left: "ATG".into(),
                right: "CDEFGHIKLM".into(),
            })
            .collect();
        let pairs = make_pairs(&r, &[Negative::Substituted], 1, &pool, 3).unwrap();
        let drawn: Vec<char> = pairs
            .chunks(2)
            .flat_map(|c| {
                c[0].right
                    .chars()
                    .zip(c[1].right.chars())
                    .filter(|(a, b)| a != b)
                    .map(|(_, b)| b)
            })
            .collect();
        assert_eq!(drawn.len(), 200);
        let a = drawn.iter().filter(|&&c| c == 'A').count();
        assert!(a > 150, "{a} of 200 draws were A");
    }
}
