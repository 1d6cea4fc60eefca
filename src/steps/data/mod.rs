//! Data kinds (`data.*`): load sequences from FASTA/FASTQ/text/tables/Hugging Face dataset
//! directories into sequence tables, then split, filter, sample, concatenate and describe them.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{InputPath, StepContext, StepError, StepKind};

mod concat;
mod filter;
mod instruct;
mod keywords;
mod load;
mod pairs;
mod sample;
mod split;
mod stats;

pub(crate) use split::fold_of;

/// `data.load`: sequences from a file or dataset directory into a table.
pub static LOAD: &StepKind = &load::KIND;
/// `data.split`: train / valid / test tables.
pub static SPLIT: &StepKind = &split::KIND;
/// `data.filter`: keep rows by length, N fraction, alphabet or a column value.
pub static FILTER: &StepKind = &filter::KIND;
/// `data.sample`: a random subset of rows.
pub static SAMPLE: &StepKind = &sample::KIND;
/// `data.keywords`: multi-label targets from a text column by a keyword rule.
pub static KEYWORDS: &StepKind = &keywords::KIND;
/// `data.instruct`: instruction rows (prompt and answer) from a labelled table.
pub static INSTRUCT: &StepKind = &instruct::KIND;
/// `data.pairs`: true pairs plus seeded negatives, for pair classification.
pub static PAIRS: &StepKind = &pairs::KIND;
/// `data.concat`: several tables stacked, columns unioned.
pub static CONCAT: &StepKind = &concat::KIND;
/// `data.stats`: lengths, composition and k-mer spectrum of a table.
pub static STATS: &StepKind = &stats::KIND;

/// Which characters a sequence may contain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `ACGTN`.
    #[default]
    Dna,
    /// `ACGUN`.
    Rna,
    /// The 20 amino acids plus `X B Z J U O *`.
    Protein,
    /// Any character except whitespace.
    Any,
    /// Prose: any character but control characters (tabs, line breaks), spaces included, and
    /// kept as written (the other alphabets uppercase their input).
    Text,
}

impl Alphabet {
    /// Whether sequences in it are uppercased on reading (soft-masked genomes mark repeats in
    /// lowercase; prose keeps its case).
    pub fn folds_case(self) -> bool {
        self != Alphabet::Text
    }

    /// Whether the (uppercase) byte belongs to the alphabet.
    pub fn allows(self, b: u8) -> bool {
        match self {
            Alphabet::Dna => matches!(b, b'A' | b'C' | b'G' | b'T' | b'N'),
            Alphabet::Rna => matches!(b, b'A' | b'C' | b'G' | b'U' | b'N'),
            Alphabet::Protein => b"ACDEFGHIKLMNPQRSTVWYXBZJUO*".contains(&b),
            Alphabet::Any => !b.is_ascii_whitespace(),
            Alphabet::Text => !b.is_ascii_control(),
        }
    }

    /// The characters allowed, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Alphabet::Dna => "ACGTN",
            Alphabet::Rna => "ACGUN",
            Alphabet::Protein => "ACDEFGHIKLMNPQRSTVWY and XBZJUO*",
            Alphabet::Any => "anything but whitespace",
            Alphabet::Text => "anything but control characters (tabs, line breaks)",
        }
    }

    /// The character that replaces an invalid one under `on_invalid: mask`.
    pub fn mask(self) -> u8 {
        match self {
            Alphabet::Protein | Alphabet::Any => b'X',
            Alphabet::Text => b' ',
            Alphabet::Dna | Alphabet::Rna => b'N',
        }
    }

    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Alphabet::Dna => "dna",
            Alphabet::Rna => "rna",
            Alphabet::Protein => "protein",
            Alphabet::Any => "any",
            Alphabet::Text => "text",
        }
    }
}

/// A table's alphabet as a consumer decided it: from its own `alphabet:`, the table's
/// metadata (what data.load recorded), or the letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub alphabet: Alphabet,
    /// `declared` (the step's `alphabet:`), `table` (the table's metadata), `detected`, or
    /// `mixed` (detected rows of several alphabets, read as `any`: [`reading_alphabet`]).
    pub from: &'static str,
    /// Letters outside the alphabet's plain letters (nucleotides: not A/C/G/T/U, so `N` and
    /// the IUPAC ambiguity codes; protein: not one of the 20 amino acids).
    pub ambiguous: u64,
}

impl Alphabet {
    /// By its YAML spelling.
    pub fn from_name(name: &str) -> Option<Alphabet> {
        [
            Alphabet::Dna,
            Alphabet::Rna,
            Alphabet::Protein,
            Alphabet::Any,
            Alphabet::Text,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// The letters a model of this alphabet must spell (no ambiguity codes): `ACGT`, `ACGU`,
    /// the 20 amino acids; none for `any` and `text`, which any tokenizer may meet.
    pub fn letters(self) -> &'static str {
        match self {
            Alphabet::Dna => "ACGT",
            Alphabet::Rna => "ACGU",
            Alphabet::Protein => "ACDEFGHIKLMNPQRSTVWY",
            Alphabet::Any | Alphabet::Text => "",
        }
    }

    /// Whether it is DNA or RNA.
    pub fn is_nucleotide(self) -> bool {
        matches!(self, Alphabet::Dna | Alphabet::Rna)
    }

    /// Whether an (uppercase) letter is one of the alphabet's plain letters (no ambiguity code).
    pub(crate) fn plain(self, b: u8) -> bool {
        match self {
            Alphabet::Dna | Alphabet::Rna => matches!(b, b'A' | b'C' | b'G' | b'T' | b'U'),
            Alphabet::Protein => b"ACDEFGHIKLMNPQRSTVWY".contains(&b),
            Alphabet::Any | Alphabet::Text => true,
        }
    }
}

/// Nucleotide letters (`N` included) in a text: (nucleotide letters, letters).
fn nucleotide_share(s: &str) -> (u64, u64) {
    let (mut nuc, mut letters) = (0, 0);
    for b in s.bytes() {
        let b = b.to_ascii_uppercase();
        if b.is_ascii_alphabetic() {
            letters += 1;
            nuc += u64::from(matches!(b, b'A' | b'C' | b'G' | b'T' | b'U' | b'N'));
        }
    }
    (nuc, letters)
}

/// The alphabet of sequences from their composition: most letters (90 %) A/C/G/T/U/N is
/// nucleotide (RNA when U outnumbers T), and the ambiguity codes and stray letters among them
/// are counted, not decisive; spaces or punctuation make text; anything else is protein.
pub fn detect_alphabet<'a>(seqs: impl IntoIterator<Item = &'a str>) -> (Alphabet, u64) {
    let (mut nuc, mut letters, mut t, mut u, mut other, mut chars) = (0u64, 0u64, 0, 0, 0, 0u64);
    let mut counts = [0u64; 256];
    for s in seqs {
        let (n, l) = nucleotide_share(s);
        nuc += n;
        letters += l;
        for b in s.bytes() {
            let b = b.to_ascii_uppercase();
            counts[b as usize] += 1;
            chars += 1;
            t += u64::from(b == b'T');
            u += u64::from(b == b'U');
            other += u64::from(!b.is_ascii_alphabetic() && b != b'*' && b != b'-');
        }
    }
    let alphabet = if other * 20 > chars {
        Alphabet::Text
    } else if letters > 0 && nuc * 10 >= letters * 9 {
        if u > t { Alphabet::Rna } else { Alphabet::Dna }
    } else {
        Alphabet::Protein
    };
    let ambiguous = (0..=255u8)
        .filter(|b| b.is_ascii_alphabetic() && !alphabet.plain(*b))
        .map(|b| counts[b as usize])
        .sum();
    (alphabet, ambiguous)
}

/// Decide the alphabet of `seqs`: the step's `explicit` one wins, then the table's metadata,
/// then the letters ([`detect_alphabet`]). Ambiguous letters are counted whichever decides.
pub fn decide_alphabet(
    explicit: Option<Alphabet>,
    meta: &crate::steps::table::TableMeta,
    seqs: &[String],
) -> Decided {
    let (detected, _) = detect_alphabet(seqs.iter().map(String::as_str));
    let (alphabet, from) = match (
        explicit,
        meta.alphabet.as_deref().and_then(Alphabet::from_name),
    ) {
        (Some(a), _) => (a, "declared"),
        (None, Some(a)) => (a, "table"),
        (None, None) => (detected, "detected"),
    };
    let ambiguous = seqs
        .iter()
        .flat_map(|s| s.bytes())
        .map(|b| b.to_ascii_uppercase())
        .filter(|b| b.is_ascii_alphabetic() && !alphabet.plain(*b))
        .count() as u64;
    Decided {
        alphabet,
        from,
        ambiguous,
    }
}

/// The alphabet a tokenizer or model reads a table in: the table's metadata, else its letters
/// ([`decide_alphabet`]); where the letters decide and rows disagree with them (one corpus of
/// DNA, protein and prose, as chapter 2.5 trains one tokenizer and one model on), `any`, from
/// `mixed`: every letter is then the table's own.
pub fn reading_alphabet(meta: &crate::steps::table::TableMeta, seqs: &[String]) -> Decided {
    let decided = decide_alphabet(None, meta, seqs);
    if decided.from == "detected" && check_rows(decided, seqs, &|_| String::new()).is_err() {
        return Decided {
            alphabet: Alphabet::Any,
            from: "mixed",
            ..decided
        };
    }
    decided
}

/// [`reading_alphabet`] of the sequences `seqs` read from the table at `path`, its rows checked
/// against it ([`check_rows`]); with the table's name as errors give it (the user's file it
/// came from included).
pub fn read_table_alphabet(path: &Path, seqs: &[String]) -> Result<(Decided, String), StepError> {
    let meta = crate::steps::table::TableMeta::read(path);
    let name = format!("{}{}", path.display(), meta.origin());
    let decided = reading_alphabet(&meta, seqs);
    check_rows(decided, seqs, &|i| format!("{name}: sequence {}", i + 1))?;
    Ok((decided, name))
}

impl Decided {
    /// The alphabet and how it was decided, as metrics show it (beside the step's others).
    pub fn metrics(self) -> serde_json::Value {
        serde_json::json!({
            "alphabet": self.alphabet.name(),
            "alphabet_from": self.from,
            "ambiguous_letters": self.ambiguous,
        })
    }
}

/// Rows that disagree with a nucleotide table's alphabet (a protein among DNA: fewer than half
/// its letters nucleotides) are an error listing the first of them with their other letters
/// (`at` names row `i`), and how to settle it. Other alphabets pass.
pub fn check_rows(
    decided: Decided,
    seqs: &[String],
    at: &dyn Fn(usize) -> String,
) -> Result<(), StepError> {
    if !decided.alphabet.is_nucleotide() {
        return Ok(());
    }
    let foreign: Vec<usize> = seqs
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let (nuc, letters) = nucleotide_share(s);
            letters > 0 && nuc * 2 < letters
        })
        .map(|(i, _)| i)
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = foreign
        .iter()
        .take(3)
        .map(|&i| {
            let mut letters: Vec<char> = seqs[i]
                .bytes()
                .map(|b| b.to_ascii_uppercase())
                .filter(|b| b.is_ascii_alphabetic() && !decided.alphabet.allows(*b))
                .map(char::from)
                .collect();
            letters.sort_unstable();
            letters.dedup();
            format!("{} (`{}`)", at(i), letters.into_iter().collect::<String>())
        })
        .collect();
    Err(StepError::new(format!(
        "{} of {} rows are not {} (the table's alphabet, {}): {}{}; drop them (data.filter \
         `alphabet: {}`), or set `alphabet:` on this step if the table is something else",
        foreign.len(),
        seqs.len(),
        decided.alphabet.name(),
        decided.from,
        shown.join("; "),
        if foreign.len() > 3 { "; …" } else { "" },
        decided.alphabet.name()
    )))
}

/// A path parameter made absolute against the workdir (upstream references already are).
pub fn resolve(ctx: &StepContext, path: &InputPath) -> PathBuf {
    ctx.workdir.join(path.path())
}

/// Parse `with:` into typed parameters, as a step error.
pub fn params_of<P: serde::de::DeserializeOwned>(ctx: &StepContext) -> Result<P, StepError> {
    super::params(ctx.with).map_err(|e| StepError::new(format!("bad `with:`: {e}")))
}

/// The column `name` of `df`, or an error listing the columns there are.
fn column<'a>(
    df: &'a DataFrame,
    name: &str,
    file: &Path,
    param: &str,
) -> Result<&'a Column, StepError> {
    df.column(name).map_err(|_| {
        StepError::new(format!(
            "{}: no column `{name}`; the columns are: {}; set `{param}:` to one of them",
            file.display(),
            column_names(df)
        ))
    })
}

/// The column `name` of `df` as text, or an error listing the columns there are.
pub fn text_column<'a>(
    df: &'a DataFrame,
    name: &str,
    file: &Path,
    param: &str,
) -> Result<&'a StringChunked, StepError> {
    let col = column(df, name, file, param)?;
    col.str().map_err(|_| {
        StepError::new(format!(
            "{}: column `{name}` is {}, not text; set `{param}:` to a text column",
            file.display(),
            col.dtype()
        ))
    })
}

/// Column names joined with commas.
pub fn column_names(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every value of a column as text (nulls as `null`), for stratification and equality filters.
pub fn column_as_strings(
    df: &DataFrame,
    name: &str,
    file: &Path,
    param: &str,
) -> Result<Vec<String>, StepError> {
    let col = column(df, name, file, param)?.cast(&DataType::String)?;
    Ok(col
        .str()?
        .iter()
        .map(|v| v.unwrap_or("null").to_string())
        .collect())
}

/// The `id` of row `i` of a table, or `#i+1` when there is none.
pub fn row_id(df: &DataFrame, i: usize) -> String {
    df.column("id")
        .ok()
        .and_then(|c| c.get(i).ok())
        .map(|v| match v {
            AnyValue::String(s) => s.to_string(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| format!("#{}", i + 1))
}

/// Rows `idx` of `df`, in that order.
pub fn take_rows(df: &DataFrame, idx: &[usize]) -> Result<DataFrame, StepError> {
    let idx = IdxCa::from_vec(
        PlSmallStr::from_static("idx"),
        idx.iter().map(|&i| i as IdxSize).collect(),
    );
    Ok(df.take(&idx)?)
}

/// A small, stable PRNG (SplitMix64): the same seed gives the same splits on every platform
/// and every version of the `rand` crate.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Row indices grouped by class value (classes in first-seen order); one group when `classes`
/// is `None`.
pub fn groups(classes: Option<&[String]>, n: usize) -> Vec<(String, Vec<usize>)> {
    match classes {
        None => vec![(String::new(), (0..n).collect())],
        Some(c) => {
            let mut out: indexmap::IndexMap<&str, Vec<usize>> = Default::default();
            for (i, v) in c.iter().enumerate() {
                out.entry(v.as_str()).or_default().push(i);
            }
            out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        }
    }
}

/// Split `total` into integer parts proportional to `weights` (largest remainder), summing to
/// `total` exactly.
pub fn apportion(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut parts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = total - parts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if weights[i] > 0.0 {
            parts[i] += 1;
            left -= 1;
        }
    }
    parts
}

/// Count of each class, in first-seen order, for metrics.
pub fn class_counts(
    classes: &[String],
    rows: &[usize],
) -> serde_json::Map<String, serde_json::Value> {
    let mut m: indexmap::IndexMap<&str, usize> = Default::default();
    for &i in rows {
        *m.entry(classes[i].as_str()).or_default() += 1;
    }
    m.into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabets_from_composition() {
        // 0.3 % ambiguity codes and an X: still RNA, the odd letters counted.
        let mut rna = "ACGUACGUAC".repeat(100);
        rna.push_str("RYX");
        assert_eq!(detect_alphabet([rna.as_str()]), (Alphabet::Rna, 3));
        assert_eq!(detect_alphabet(["ACGTNNACGT"]), (Alphabet::Dna, 2));
        assert_eq!(detect_alphabet(["MKLVWRQEDS"]).0, Alphabet::Protein);
        assert_eq!(detect_alphabet(["And God said, Let"]).0, Alphabet::Text);
        let meta = crate::steps::table::TableMeta {
            alphabet: Some("protein".into()),
            ..Default::default()
        };
        let seqs = vec!["ACGT".to_string()];
        assert_eq!(
            decide_alphabet(None, &meta, &seqs).alphabet,
            Alphabet::Protein
        );
        let d = decide_alphabet(Some(Alphabet::Dna), &meta, &seqs);
        assert_eq!((d.alphabet, d.from), (Alphabet::Dna, "declared"));
        let mut rows: Vec<String> = vec!["ACGTACGTACGTACGTACGT".to_string(); 20];
        rows[1] = "MKLVWEEQ".into();
        let d = decide_alphabet(None, &Default::default(), &rows);
        let e = check_rows(d, &rows, &|i| format!("row {}", i + 1)).unwrap_err();
        assert!(
            e.message.contains("1 of 20 rows are not dna"),
            "{}",
            e.message
        );
        assert!(e.message.contains("row 2 (`EKLMQVW`)"), "{}", e.message);
    }

    #[test]
    fn apportion_sums_exactly() {
        assert_eq!(apportion(10, &[0.8, 0.1, 0.1]), vec![8, 1, 1]);
        assert_eq!(apportion(7, &[0.5, 0.0, 0.5]), vec![4, 0, 3]);
        assert_eq!(apportion(3, &[1.0, 1.0, 1.0]), vec![1, 1, 1]);
        assert_eq!(apportion(0, &[0.8, 0.2]), vec![0, 0]);
        assert_eq!(apportion(5, &[0.0, 0.0]), vec![0, 0]);
    }

    #[test]
    fn rng_is_stable_and_shuffles() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        Rng::new(7).shuffle(&mut a);
        Rng::new(7).shuffle(&mut b);
        assert_eq!(a, b);
        let mut c: Vec<usize> = (0..50).collect();
        Rng::new(8).shuffle(&mut c);
        assert_ne!(a, c);
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }

    /// A consumer reads a table in its recorded alphabet; a corpus whose letters say DNA but
    /// whose rows are of several alphabets (chapter 2.5's) reads as `any`, not as an error.
    #[test]
    fn a_corpus_of_several_alphabets_reads_as_any() {
        // 200 bases, 10 amino acids, 10 letters of prose: 93 % of the letters nucleotides.
        let corpus = vec![
            "ACGTACGTAC".repeat(20),
            "MKLVWEEQRS".to_string(),
            "And God said".to_string(),
        ];
        let none = crate::steps::table::TableMeta::default();
        let d = reading_alphabet(&none, &corpus);
        assert_eq!((d.alphabet, d.from), (Alphabet::Any, "mixed"));
        assert_eq!(
            decide_alphabet(None, &none, &corpus).alphabet,
            Alphabet::Dna
        );
        let dna = reading_alphabet(&none, &corpus[..1]);
        assert_eq!((dna.alphabet, dna.from), (Alphabet::Dna, "detected"));
        let meta = crate::steps::table::TableMeta {
            alphabet: Some("dna".into()),
            ..Default::default()
        };
        let recorded = reading_alphabet(&meta, &corpus);
        assert_eq!((recorded.alphabet, recorded.from), (Alphabet::Dna, "table"));
    }
}
