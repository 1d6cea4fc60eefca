//! `data.stats`: length distribution, base composition, GC content and k-mer spectrum of a
//! table's sequences, streamed, with two SVG charts.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{params_of, resolve};
use crate::steps::table::for_each_sequence;
use crate::steps::write_metrics;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params, plot};

/// Parameters of `data.stats`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatsParams {
    /// The table (or one-sequence-per-line `.txt`) to describe.
    input: InputPath,
    /// k-mer size for the spectrum (1–31).
    #[serde(default = "default_k")]
    k: usize,
    /// The sequence column.
    #[serde(default = "default_column")]
    column: String,
}

fn default_k() -> usize {
    3
}

fn default_column() -> String {
    "sequence".into()
}

/// The `data.stats` kind.
pub static KIND: StepKind = StepKind {
    name: "data.stats",
    version: 1,
    summary: "sequence lengths, composition, GC and k-mer spectrum as metrics; charts `lengths` and `kmers` (SVG)",
    outputs: &[("lengths", "lengths.svg"), ("kmers", "kmers.svg")],
    schema: |g| g.subschema_for::<StatsParams>(),
    check: |with| params::<StatsParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &StatsParams) -> Result<(), String> {
    if !(1..=31).contains(&p.k) {
        return Err(format!("`k` is {}; it must be between 1 and 31", p.k));
    }
    Ok(())
}

/// Running counts over sequences.
pub struct Stats {
    k: usize,
    /// Length of every sequence (for the median and histogram).
    pub lengths: Vec<u32>,
    /// Count of every (uppercased) byte.
    pub bytes: [u64; 256],
    /// ACGT k-mers, 2 bits per base.
    packed: HashMap<u64, u64>,
    /// k-mers with other characters (protein, text, N).
    other: HashMap<Vec<u8>, u64>,
    /// All k-mers counted.
    pub kmers_total: u64,
}

fn code(b: u8) -> Option<u64> {
    match b {
        b'A' => Some(0),
        b'C' => Some(1),
        b'G' => Some(2),
        b'T' => Some(3),
        _ => None,
    }
}

impl Stats {
    /// Empty counts for k-mers of size `k`.
    pub fn new(k: usize) -> Stats {
        Stats {
            k,
            lengths: Vec::new(),
            bytes: [0; 256],
            packed: HashMap::new(),
            other: HashMap::new(),
            kmers_total: 0,
        }
    }

    /// Count one sequence.
    pub fn add(&mut self, seq: &str) {
        let s = seq.as_bytes();
        self.lengths.push(s.len().min(u32::MAX as usize) as u32);
        let k = self.k;
        let mask = if k == 32 {
            u64::MAX
        } else {
            (1u64 << (2 * k)) - 1
        };
        let mut word = 0u64;
        let mut valid = 0usize; // ACGT run length ending here
        for (i, &b) in s.iter().enumerate() {
            let b = b.to_ascii_uppercase();
            self.bytes[b as usize] += 1;
            match code(b) {
                Some(c) => {
                    word = ((word << 2) | c) & mask;
                    valid += 1;
                }
                None => valid = 0,
            }
            if i + 1 >= k {
                self.kmers_total += 1;
                if valid >= k {
                    *self.packed.entry(word).or_default() += 1;
                } else {
                    let kmer = s[i + 1 - k..=i].to_ascii_uppercase();
                    *self.other.entry(kmer).or_default() += 1;
                }
            }
        }
    }

    /// Distinct k-mers seen.
    pub fn distinct(&self) -> usize {
        self.packed.len() + self.other.len()
    }

    /// The `n` most frequent k-mers (ties by k-mer text), with counts.
    pub fn top(&self, n: usize) -> Vec<(String, u64)> {
        let unpack = |mut w: u64| {
            let mut v = vec![0u8; self.k];
            for j in (0..self.k).rev() {
                v[j] = b"ACGT"[(w & 3) as usize];
                w >>= 2;
            }
            String::from_utf8(v).unwrap_or_default()
        };
        let mut all: Vec<(String, u64)> = self
            .packed
            .iter()
            .map(|(&w, &c)| (unpack(w), c))
            .chain(
                self.other
                    .iter()
                    .map(|(k, &c)| (String::from_utf8_lossy(k).into_owned(), c)),
            )
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

/// Histogram bins (label = first length of the bin, count) with about `bins` bins.
pub fn histogram(lengths: &[u32], bins: usize) -> Vec<(String, f64)> {
    let (Some(&lo), Some(&hi)) = (lengths.iter().min(), lengths.iter().max()) else {
        return Vec::new();
    };
    let span = (hi - lo) as usize + 1;
    let width = span.div_ceil(bins).max(1);
    let n = span.div_ceil(width);
    let mut counts = vec![0u64; n];
    for &l in lengths {
        counts[(l - lo) as usize / width] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| ((lo as usize + i * width).to_string(), c as f64))
        .collect()
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: StatsParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let mut st = Stats::new(p.k);
    for_each_sequence(&path, &p.column, |s| st.add(s))?;
    let n = st.lengths.len();
    let bases: u64 = st.lengths.iter().map(|&l| l as u64).sum();
    let mut sorted = st.lengths.clone();
    sorted.sort_unstable();
    let median = match n {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0,
    };
    let count = |b: u8| st.bytes[b as usize];
    let (a, c, g, t, nn) = (
        count(b'A'),
        count(b'C'),
        count(b'G'),
        count(b'T'),
        count(b'N'),
    );
    let frac = |x: u64| {
        if bases > 0 {
            x as f64 / bases as f64
        } else {
            0.0
        }
    };
    let acgt = a + c + g + t;
    let gc = if acgt > 0 {
        (g + c) as f64 / acgt as f64
    } else {
        0.0
    };
    let top = st.top(32);
    let top10: Vec<serde_json::Value> = top
        .iter()
        .take(10)
        .map(|(k, c)| {
            serde_json::json!({
                "kmer": k,
                "count": c,
                "frequency": if st.kmers_total > 0 { *c as f64 / st.kmers_total as f64 } else { 0.0 },
            })
        })
        .collect();
    let metrics = serde_json::json!({
        "sequences": n,
        "bases": bases,
        "length": {
            "min": sorted.first().copied().unwrap_or(0),
            "max": sorted.last().copied().unwrap_or(0),
            "mean": if n > 0 { bases as f64 / n as f64 } else { 0.0 },
            "median": median,
        },
        "gc_content": gc,
        "composition": {
            "A": frac(a), "C": frac(c), "G": frac(g), "T": frac(t), "N": frac(nn),
            "other": frac(bases.saturating_sub(acgt + nn)),
        },
        "k": p.k,
        "kmers_total": st.kmers_total,
        "distinct_kmers": st.distinct(),
        "top_kmers": top10,
    });
    plot::bars(
        &ctx.out.join("lengths.svg"),
        &format!("Sequence lengths ({n} sequences)"),
        "length",
        &histogram(&st.lengths, 20),
    )?;
    let bars: Vec<(String, f64)> = top.iter().map(|(k, c)| (k.clone(), *c as f64)).collect();
    plot::bars(
        &ctx.out.join("kmers.svg"),
        &format!("Top {} {}-mers", bars.len(), p.k),
        "k-mer",
        &bars,
    )?;
    writeln!(
        ctx.log,
        "{n} sequences, {bases} bases, GC {gc:.4}, {} distinct {}-mers",
        st.distinct(),
        p.k
    )?;
    write_metrics(ctx.out, &metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_kmers_and_composition() {
        let mut s = Stats::new(2);
        s.add("ACGT");
        s.add("aaNA");
        assert_eq!(s.kmers_total, 6);
        assert_eq!(s.distinct(), 6); // AC CG GT AA AN NA
        assert_eq!(s.bytes[b'A' as usize], 4);
        let top = s.top(10);
        assert_eq!(top.len(), 6);
        assert!(top.iter().any(|(k, c)| k == "AN" && *c == 1));
        let mut s = Stats::new(3);
        s.add("AAAAA");
        assert_eq!(s.top(1), vec![("AAA".to_string(), 3)]);
        let mut s = Stats::new(5);
        s.add("ACG");
        assert_eq!((s.kmers_total, s.distinct()), (0, 0));
    }

    #[test]
    fn histogram_bins() {
        assert!(histogram(&[], 20).is_empty());
        let h = histogram(&[60, 60, 61], 20);
        assert_eq!(h, vec![("60".into(), 2.0), ("61".into(), 1.0)]);
        let l: Vec<u32> = (0..1000).collect();
        let h = histogram(&l, 20);
        assert_eq!(h.len(), 20);
        assert_eq!(h.iter().map(|b| b.1).sum::<f64>(), 1000.0);
    }
}
