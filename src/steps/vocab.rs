//! A model's tokenizer as the model steps use it: the special tokens (from the tokenizer's
//! own files, names only as a fallback), encoding without framing, each token's span of bases,
//! and decoding back to a sequence.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::StepError;
use super::data::{Alphabet, Decided, detect_alphabet};
use super::table::TableMeta;
use super::tokenizer::{open_tokenizer, recorded_alphabet};
use crate::models::ArchConfig;
use crate::models::arch::SequenceKind;
use crate::train::{self, Row};

/// A tokenizer with the special tokens the models need.
pub(crate) struct Vocab {
    pub tokenizer: Tokenizer,
    /// The `tokenizer.json` file (any name), beside its HF config files.
    pub path: PathBuf,
    pub size: usize,
    pub pad: u32,
    pub eos: Option<u32>,
    pub bert: Option<(u32, u32, u32)>, // cls, sep, mask
    /// Ids of every special (added) token.
    pub specials: Vec<u32>,
    /// The token that stands for what the vocabulary lacks (`[UNK]`, `<unk>`), if any.
    pub unk: Option<u32>,
    /// The alphabet it was trained for, as tokenizer.train records it in the
    /// tokenizer_config.json beside it (`dnaflow_alphabet`); `None` for tokenizers made elsewhere.
    pub alphabet: Option<Alphabet>,
    /// How the model reads nucleotides and protein apart, when it does ([`Vocab::for_model`]).
    pub kinds: Option<Kinds>,
}

/// How a model that reads nucleotides and protein apart reads each (its architecture row's
/// [`SequenceKinds`](crate::models::arch::SequenceKinds)).
pub(crate) struct Kinds {
    token_type: fn(SequenceKind) -> u32,
    /// The model's own tokenizers for nucleotides and for protein, when the tokenizer given is
    /// the model's own (the same tokens and ids); `None`: the given one reads both.
    own: Option<[Tokenizer; 2]>,
}

/// Read a tokenizer and its special tokens. The roles (`eos_token`, `pad_token`,
/// `cls_token`, `sep_token`, `mask_token`, `bos_token`) come from the tokenizer's own
/// `tokenizer_config.json` or `special_tokens_map.json` beside it, as transformers reads them;
/// only a role those files do not name is looked up by the usual spellings.
pub(crate) fn load_vocab(path: &Path) -> Result<Vocab, StepError> {
    let (path, tokenizer) = open_tokenizer(path)?;
    let declared = declared_special_tokens(&path)?;
    let id = |role: &str, names: &[&str]| match declared.get(role) {
        Some(token) => tokenizer.token_to_id(token),
        None => names.iter().find_map(|n| tokenizer.token_to_id(n)),
    };
    let eos = id("eos_token", &["<|endoftext|>", "</s>", "[EOS]", "[SEP]"]);
    let pad = id("pad_token", &["[PAD]", "<pad>"]).or(eos).unwrap_or(0);
    // A tokenizer that names no separator ends a sequence with its eos (ESM's `<cls> … <eos>`).
    let bert = match (
        id("cls_token", &["[CLS]", "<s>"]),
        id("sep_token", &["[SEP]", "</s>", "<eos>"]).or(eos),
        id("mask_token", &["[MASK]", "<mask>"]),
    ) {
        (Some(c), Some(s), Some(m)) => Some((c, s, m)),
        _ => None,
    };
    let unk = id("unk_token", &["[UNK]", "<unk>"]);
    let specials = tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| *id)
        .collect();
    Ok(Vocab {
        size: tokenizer.get_vocab_size(true),
        alphabet: recorded_alphabet(&path),
        path,
        tokenizer,
        pad,
        eos,
        bert,
        specials,
        unk,
        kinds: None,
    })
}

impl Vocab {
    /// This tokenizer as `config`'s model reads it: where the architecture reads nucleotides
    /// and protein apart (LucaOne), each sequence gets its kind's token type, and, when this is
    /// the model's own tokenizer, its kind's own tokenizer (LucaOne's remaps nucleotides to
    /// digits, so protein must not go through it).
    pub(crate) fn for_model(mut self, config: &ArchConfig) -> Result<Vocab, StepError> {
        let Some(kinds) = &config.architecture().sequence_kinds else {
            return Ok(self);
        };
        let build = |kind| {
            use std::str::FromStr;
            Tokenizer::from_str(&(kinds.tokenizer)(kind).to_string())
                .map_err(|e| StepError::new(format!("{}'s own tokenizer: {e}", config.name())))
        };
        let nucleotide = build(SequenceKind::Nucleotide)?;
        let own = (nucleotide.get_vocab(true) == self.tokenizer.get_vocab(true))
            .then(|| Ok::<_, StepError>([nucleotide, build(SequenceKind::Protein)?]))
            .transpose()?;
        self.kinds = Some(Kinds {
            token_type: kinds.token_type,
            own,
        });
        Ok(self)
    }

    /// The tokenizer a sequence of `kind` goes through.
    fn tokenizer_for(&self, kind: SequenceKind) -> &Tokenizer {
        match self.kinds.as_ref().and_then(|k| k.own.as_ref()) {
            Some([nucleotide, protein]) => match kind {
                SequenceKind::Nucleotide => nucleotide,
                SequenceKind::Protein => protein,
            },
            None => &self.tokenizer,
        }
    }

    /// That the model's embedding has a row for every token of this tokenizer: a larger
    /// tokenizer would index past it. `model` names the model directory in the error.
    pub(crate) fn check_fits(&self, model_vocab: usize, model: &Path) -> Result<(), StepError> {
        if self.size > model_vocab {
            return Err(StepError::new(format!(
                "{}: the tokenizer {} has {} tokens but the model only {model_vocab}; use the \
                 tokenizer the model was trained with (`tokenizer:`), or grow the model with \
                 model.resize",
                model.display(),
                self.path.display(),
                self.size
            )));
        }
        Ok(())
    }

    /// That this tokenizer spells every letter of a table's alphabet (`decided`): a letter its
    /// recorded alphabet lacks, or that it encodes as the unknown token (or drops), is an error
    /// before anything runs, naming the table (`table`), its alphabet, the model (`model`) and
    /// the model's alphabet. A byte-level tokenizer encodes any letter, so what it was trained
    /// for is what tells a DNA model given proteins.
    pub(crate) fn check_alphabet(
        &self,
        decided: Decided,
        table: &str,
        model: &Path,
    ) -> Result<(), StepError> {
        let mut missing = String::new();
        for c in decided.alphabet.letters().chars() {
            let untrained = self.alphabet.is_some_and(|a| !a.allows(c as u8));
            if untrained || !self.spells(c)? {
                missing.push(c);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let theirs = match self.alphabet {
            Some(a) => format!("a {} tokenizer ({})", a.name(), self.path.display()),
            None => format!(
                "its tokenizer {} spells only `{}`",
                self.path.display(),
                self.spelled_letters()?
            ),
        };
        Err(StepError::new(format!(
            "{table}: the table's alphabet is {} ({}), which the model {} cannot read: {theirs}, \
             without `{missing}`; give this table to a model trained on {} sequences (or train \
             a tokenizer and model on it), or, if the table is not {}, declare its alphabet \
             (data.load `alphabet:`)",
            decided.alphabet.name(),
            decided.from,
            model.display(),
            decided.alphabet.name(),
            decided.alphabet.name(),
        )))
    }

    /// Whether a run of the letter `c` encodes to known tokens: 840 of them, a multiple of every
    /// k-mer length, so a k-mer vocabulary is asked for whole k-mers.
    fn spells(&self, c: char) -> Result<bool, StepError> {
        let run: String = std::iter::repeat_n(c, 840).collect();
        Ok(self.unknown_chars(&run)?.is_empty())
    }

    /// The capital letters (and `*`) the tokenizer spells, for messages.
    fn spelled_letters(&self) -> Result<String, StepError> {
        let mut spelled = String::new();
        for c in ('A'..='Z').chain(['*']) {
            if self.spells(c)? {
                spelled.push(c);
            }
        }
        Ok(spelled)
    }

    /// The characters of `text` no known token covers: mapped to the unknown token, or
    /// dropped by the tokenizer. Empty when the vocabulary spells all of it.
    pub(crate) fn unknown_chars(&self, text: &str) -> Result<Vec<char>, StepError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| StepError::new(format!("tokenizing: {e}")))?;
        let mut covered = vec![false; text.len()];
        for (id, &(a, b)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if Some(*id) != self.unk {
                for c in covered.iter_mut().take(b.min(text.len())).skip(a) {
                    *c = true;
                }
            }
        }
        let mut unknown = Vec::new();
        for (i, ch) in text.char_indices() {
            if !ch.is_whitespace() && !covered[i] && !unknown.contains(&ch) {
                unknown.push(ch);
            }
        }
        Ok(unknown)
    }
}

/// Share of the tokens of `rows` (each row's ids) that are the unknown token (0 when the
/// tokenizer has none).
pub(crate) fn unk_rate(vocab: &Vocab, rows: &[&[u32]]) -> f64 {
    let Some(unk) = vocab.unk else {
        return 0.0;
    };
    let (mut n, mut u) = (0usize, 0usize);
    for ids in rows {
        n += ids.len();
        u += ids.iter().filter(|&&i| i == unk).count();
    }
    u as f64 / n.max(1) as f64
}

/// Above this share of unknown tokens a model's scores mean little: the steps that score or
/// train on sequences stop, naming the rows, unless the user allows it.
pub(crate) const MAX_UNK_RATE: f64 = 0.05;

/// The share of unknown tokens of `rows` (encoded from `seqs`); more than [`MAX_UNK_RATE`] is
/// an error naming the first rows with unknown letters (`at` names row `i`), the letters, and
/// what to do.
pub(crate) fn check_unknown(
    vocab: &Vocab,
    seqs: &[String],
    rows: &[&[u32]],
    at: &dyn Fn(usize) -> String,
) -> Result<f64, StepError> {
    let rate = unk_rate(vocab, rows);
    if rate <= MAX_UNK_RATE {
        return Ok(rate);
    }
    let mut examples = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        let letters = vocab.unknown_chars(s)?;
        if !letters.is_empty() {
            examples.push(format!(
                "{}: `{}`",
                at(i),
                letters.iter().take(8).collect::<String>()
            ));
        }
        if examples.len() == 3 {
            break;
        }
    }
    Err(StepError::new(format!(
        "{:.1} % of the tokens are unknown to the tokenizer {} (more than {} % means the scores \
         would measure `[UNK]`s); the first rows and their unknown letters: {}. Is this the \
         model's alphabet (a protein table given to a DNA model)? Drop such rows with \
         data.filter `alphabet:`, or train a tokenizer on this data",
        rate * 100.0,
        vocab.path.display(),
        MAX_UNK_RATE * 100.0,
        examples.join("; ")
    )))
}

/// The special tokens a tokenizer's HF files name, by role: `special_tokens_map.json`, then
/// `tokenizer_config.json` over it (a token is a string or `{"content": …}`).
fn declared_special_tokens(
    tokenizer_json: &Path,
) -> Result<std::collections::BTreeMap<String, String>, StepError> {
    let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
    let mut roles = std::collections::BTreeMap::new();
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let file = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            StepError::new(format!(
                "{}: not valid JSON ({e}); fix or delete it",
                file.display()
            ))
        })?;
        for role in [
            "eos_token",
            "pad_token",
            "cls_token",
            "sep_token",
            "mask_token",
            "bos_token",
        ] {
            let token = match json.get(role) {
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                Some(v) => v.get("content").and_then(|c| c.as_str()).map(String::from),
                None => None,
            };
            if let Some(t) = token {
                roles.insert(role.to_string(), t);
            }
        }
    }
    Ok(roles)
}

/// Tokenize the sequences of the table at `table` without special tokens, remembering how many
/// bases each token spells; each read as its kind when the model reads nucleotides and
/// protein apart ([`sequence_kinds`]).
pub(crate) fn encode_table(
    vocab: &Vocab,
    table: &Path,
    seqs: &[String],
) -> Result<Vec<Row>, StepError> {
    Ok(encode_table_spans(vocab, table, seqs)?
        .into_iter()
        .map(|(row, _)| row)
        .collect())
}

/// Each token's `[start, end)` in bases of its sequence (the tokenizer's offsets as character
/// positions; empty for a token that spells no base, such as `[CLS]`).
pub(crate) type Spans = Vec<(usize, usize)>;

/// Tokenize sequences without special tokens, with each token's span of the sequence (what
/// per-base labels are aligned by).
/// Every sequence is read as a nucleotide one (see [`encode_table_spans`]).
pub(crate) fn encode_spans(vocab: &Vocab, seqs: &[String]) -> Result<Vec<(Row, Spans)>, StepError> {
    let kinds = vec![SequenceKind::Nucleotide; seqs.len()];
    encode_kinds(vocab, seqs, &kinds)
}

/// [`encode_table`], with each token's span of the sequence.
pub(crate) fn encode_table_spans(
    vocab: &Vocab,
    table: &Path,
    seqs: &[String],
) -> Result<Vec<(Row, Spans)>, StepError> {
    let kinds = match vocab.kinds {
        Some(_) => sequence_kinds(table, seqs),
        None => vec![SequenceKind::Nucleotide; seqs.len()],
    };
    encode_kinds(vocab, seqs, &kinds)
}

/// What each sequence of the table at `table` is: the alphabet its metadata records (what
/// data.load decided for it), else each sequence's own letters (a table that stacks genome
/// windows and proteins records none).
pub(crate) fn sequence_kinds(table: &Path, seqs: &[String]) -> Vec<SequenceKind> {
    let of = |a: Alphabet| match a.is_nucleotide() {
        true => SequenceKind::Nucleotide,
        false => SequenceKind::Protein,
    };
    match TableMeta::read(table)
        .alphabet
        .as_deref()
        .and_then(Alphabet::from_name)
    {
        Some(a @ (Alphabet::Dna | Alphabet::Rna | Alphabet::Protein)) => vec![of(a); seqs.len()],
        _ => seqs
            .iter()
            .map(|s| of(detect_alphabet([s.as_str()]).0))
            .collect(),
    }
}

/// [`encode_spans`] with each sequence read as its kind: its kind's tokenizer and token type.
fn encode_kinds(
    vocab: &Vocab,
    seqs: &[String],
    kinds: &[SequenceKind],
) -> Result<Vec<(Row, Spans)>, StepError> {
    use rayon::prelude::*;
    seqs.par_iter()
        .zip(kinds)
        .map(|(s, &kind)| {
            let enc = vocab
                .tokenizer_for(kind)
                .encode(s.as_str(), false)
                .map_err(|e| StepError::new(format!("tokenizing: {e}")))?;
            // Offsets are in bytes; a sequence of ASCII letters has one byte per base.
            let char_at = |byte: usize| {
                if s.is_ascii() {
                    byte
                } else {
                    s[..byte.min(s.len())].chars().count()
                }
            };
            let spans: Spans = enc
                .get_offsets()
                .iter()
                .map(|&(a, b)| (char_at(a), char_at(b)))
                .collect();
            let bases = spans
                .iter()
                .map(|(a, b)| (b - a).min(u16::MAX as usize) as u16)
                .collect();
            let row = Row {
                ids: enc.get_ids().to_vec(),
                bases,
                target: train::Target::None,
                second: 0,
                token_type: vocab.kinds.as_ref().map_or(0, |k| (k.token_type)(kind)),
            };
            Ok((row, spans))
        })
        .collect()
}

/// Token ids as text. Tokenizers without a decoder (char, k-mer, unigram) join tokens with
/// spaces, which a DNA or protein sequence has none of; BPE and WordPiece decode as written,
/// so prose keeps its spaces.
pub(crate) fn decode(vocab: &Vocab, ids: &[u32]) -> Result<String, StepError> {
    let text = vocab
        .tokenizer
        .decode(ids, true)
        .map_err(|e| StepError::new(format!("decoding: {e}")))?;
    Ok(if vocab.tokenizer.get_decoder().is_some() {
        text
    } else {
        text.split_whitespace().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table's rows are what their letters say when it records no alphabet.
    #[test]
    fn each_row_of_a_table_without_an_alphabet_is_what_its_letters_say() {
        let seqs = ["ACGTNACGT", "acguu", "MKTAYIAKQR", "MKTAYJQRSV"].map(String::from);
        let kinds = sequence_kinds(Path::new("rows.csv"), &seqs);
        use SequenceKind::{Nucleotide, Protein};
        assert_eq!(kinds, vec![Nucleotide, Nucleotide, Protein, Protein]);
    }

    /// LucaOne's own tokenizer (a model directory with none) reads each kind as the package
    /// does: nucleotides as digits with token type 0, protein letters with token type 1; a
    /// tokenizer of its own letters gives the types alone.
    #[test]
    fn lucaone_reads_each_kind_through_its_own_tokenizer_and_type() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/lucaone");
        let config = crate::models::ModelSpec::read(&dir).unwrap().config;
        let vocab = load_vocab(&dir).unwrap().for_model(&config).unwrap();
        let seqs = ["ACGT", "MKTA"].map(String::from);
        let rows = encode_table_spans(&vocab, Path::new("rows.csv"), &seqs).unwrap();
        assert_eq!(rows[0].0.ids, vec![5, 7, 8, 6]); // 1 3 4 2
        assert_eq!(rows[0].0.token_type, 0);
        assert_eq!(rows[1].0.ids, vec![26, 21, 17, 11]); // M K T A
        assert_eq!(rows[1].0.token_type, 1);
        // Not a model with kinds: every row type 0, one tokenizer.
        let plain = load_vocab(&dir).unwrap();
        let rows = encode_table_spans(&plain, Path::new("rows.csv"), &seqs).unwrap();
        assert_eq!(rows[1].0.ids, vec![9, 9, 6, 5]); // every protein letter but T, A is "other"
        assert_eq!(rows[1].0.token_type, 0);
    }

    /// A model directory that ships its tokenizer as a vocab.txt (ESM-2's, as the hub has it)
    /// reads as the tokenizer.json its architecture builds, with the special tokens its
    /// tokenizer_config.json names (`<eos>` standing in for the separator it has none of).
    #[test]
    fn a_model_directory_with_a_vocab_txt_reads_as_its_built_tokenizer() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/esm");
        assert!(!dir.join("tokenizer.json").exists());
        let vocab = load_vocab(&dir).unwrap();
        assert_eq!(vocab.size, 33);
        assert_eq!(vocab.pad, 1);
        assert_eq!(vocab.eos, Some(2));
        assert_eq!(vocab.bert, Some((0, 2, 32)));
        let rows = encode_spans(&vocab, &["MKT<mask>A".to_string()]).unwrap();
        assert_eq!(rows[0].0.ids, vec![20, 15, 11, 32, 5]);
    }

    fn decided(alphabet: Alphabet) -> Decided {
        Decided {
            alphabet,
            from: "table",
            ambiguous: 0,
        }
    }

    /// A DNA tokenizer reads a DNA table; given proteins it names the table, its alphabet, the
    /// model and the letters the tokenizer spells, before any training.
    #[test]
    fn a_tokenizer_must_spell_the_tables_alphabet() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        let model = Path::new("models/dna");
        for name in ["char.json", "kmer.json", "wordpiece.json", "unigram.json"] {
            let vocab = load_vocab(&fixtures.join(name)).unwrap();
            assert_eq!(vocab.alphabet, None, "{name}");
            vocab
                .check_alphabet(decided(Alphabet::Dna), "t.parquet", model)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let err = vocab
                .check_alphabet(
                    decided(Alphabet::Protein),
                    "t.parquet (rows from p.tsv)",
                    model,
                )
                .unwrap_err()
                .to_string();
            for part in [
                "t.parquet (rows from p.tsv)",
                "alphabet is protein (table)",
                "models/dna",
                "without `DEFHIKLM",
            ] {
                assert!(err.contains(part), "{name}: {part} not in: {err}");
            }
        }
        let err = load_vocab(&fixtures.join("char.json"))
            .unwrap()
            .check_alphabet(decided(Alphabet::Rna), "t", model)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spells only `ACGT`") && err.contains("without `U`"),
            "{err}"
        );
    }

    /// A byte-level BPE encodes any letter: the alphabet it was trained for (recorded by
    /// tokenizer.train) is what refuses a protein table.
    #[test]
    fn a_byte_level_tokenizer_is_held_to_its_recorded_alphabet() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        let mut vocab = load_vocab(&fixtures.join("bpe.json")).unwrap();
        let model = Path::new("m");
        vocab
            .check_alphabet(decided(Alphabet::Protein), "t", model)
            .unwrap();
        vocab.alphabet = Some(Alphabet::Dna);
        vocab
            .check_alphabet(decided(Alphabet::Dna), "t", model)
            .unwrap();
        let err = vocab
            .check_alphabet(decided(Alphabet::Protein), "t", model)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a dna tokenizer"), "{err}");
        vocab
            .check_alphabet(decided(Alphabet::Text), "t", model)
            .unwrap();
    }
}
