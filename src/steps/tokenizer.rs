//! `tokenizer.train` and `tokenizer.eval`: DNA tokenizers with the `tokenizers` crate, saved as
//! `tokenizer.json` (plus `tokenizer_config.json` and `special_tokens_map.json`) so Python
//! `tokenizers` and `transformers` load them and encode identically.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::unigram::{Unigram, UnigramTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer, TokenizerBuilder, TokenizerImpl, Trainer,
};

use super::data::{Alphabet, Decided, check_rows, read_table_alphabet, reading_alphabet};
use super::table::{TableMeta, for_each_sequence};
use super::{InputPath, StepContext, StepError, StepKind, params, plot};

/// The tokenizer_config.json key where tokenizer.train records the alphabet it was trained for
/// (transformers ignores it).
pub(crate) const ALPHABET_KEY: &str = "dnaflow_alphabet";

/// The alphabet tokenizer.train recorded (`dnaflow_alphabet`) in the tokenizer_config.json
/// beside `tokenizer_json`, which model directories carry with their tokenizer.
pub(crate) fn recorded_alphabet(tokenizer_json: &Path) -> Option<Alphabet> {
    let dir = tokenizer_json.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Alphabet::from_name(json.get(ALPHABET_KEY)?.as_str()?)
}

/// Tokenizer models for DNA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ModelKind {
    /// Byte-level BPE, as GPT-2 and the tutorial's first tokenizer.
    Bpe,
    /// WordPiece, as BERT and the tutorial's second tokenizer.
    Wordpiece,
    /// Unigram language model (SentencePiece style).
    Unigram,
    /// One token per base.
    Char,
    /// Fixed k-mers (DNABERT-1 style): every k-mer over ACGT is a token.
    Kmer,
}

/// Parameters of `tokenizer.train`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TrainParams {
    /// Training sequences: a table (parquet/csv) or a one-sequence-per-line `.txt` file.
    input: InputPath,
    /// Column holding the sequences in a table.
    #[serde(default = "sequence")]
    column: String,
    /// More columns of the table whose sequences are learned too (a pair table's `pair`, so
    /// one tokenizer spells both sides).
    #[serde(default)]
    extra_columns: Vec<String>,
    model: ModelKind,
    /// Target vocabulary size, special tokens included (ignored by `char` and `kmer`).
    #[serde(default = "vocab_size")]
    vocab_size: usize,
    /// Least count for a merge or piece to be learned.
    #[serde(default = "min_frequency")]
    min_frequency: u64,
    /// Special tokens; default `<|endoftext|>` for bpe, `[PAD] [UNK] [CLS] [SEP] [MASK]` otherwise.
    special_tokens: Option<Vec<String>>,
    /// k for `kmer`.
    #[serde(default = "k")]
    k: usize,
    /// For `kmer`: overlapping k-mers (stride 1, DNABERT-1) rather than consecutive ones.
    #[serde(default)]
    overlap: bool,
    /// Train on at most this many sequences (0: all).
    #[serde(default)]
    max_sequences: usize,
}

pub(super) fn sequence() -> String {
    "sequence".into()
}
fn vocab_size() -> usize {
    4096
}
fn min_frequency() -> u64 {
    2
}
fn k() -> usize {
    6
}

pub static TRAIN: StepKind = StepKind {
    name: "tokenizer.train",
    version: 3,
    summary: "train a DNA tokenizer (bpe, wordpiece, unigram, char, kmer) into tokenizer.json",
    outputs: &[("tokenizer", "tokenizer.json")],
    schema: |g| g.subschema_for::<TrainParams>(),
    check: |with| {
        let p = params::<TrainParams>(with)?;
        if p.model == ModelKind::Kmer && !(1..=8).contains(&p.k) {
            return Err(format!(
                "`k` must be between 1 and 8 for kmer tokenizers, not {}",
                p.k
            ));
        }
        let specials = p
            .special_tokens
            .as_ref()
            .map_or(if p.model == ModelKind::Bpe { 1 } else { 5 }, Vec::len);
        // Byte-level BPE starts from the 256 bytes: a smaller target learns no merge.
        let least = match p.model {
            ModelKind::Bpe => 256 + specials + 1,
            ModelKind::Wordpiece | ModelKind::Unigram => specials + 1,
            ModelKind::Char | ModelKind::Kmer => 0,
        };
        if p.vocab_size < least {
            return Err(format!(
                "`vocab_size` {} leaves no room to learn tokens: a {} tokenizer needs more than \
                 {} ({}); raise it (the tutorial uses 4096 or more)",
                p.vocab_size,
                format!("{:?}", p.model).to_lowercase(),
                least - 1,
                if p.model == ModelKind::Bpe {
                    "its 256 byte tokens and the special tokens"
                } else {
                    "its special tokens"
                }
            ));
        }
        Ok(())
    },
    run: train,
};

/// Parameters of `tokenizer.eval`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EvalParams {
    /// `tokenizer.json`, or the directory holding it.
    tokenizer: InputPath,
    /// Held-out sequences: a table or a `.txt` file.
    input: InputPath,
    /// Column holding the sequences, for table inputs.
    #[serde(default = "sequence")]
    column: String,
    /// Evaluate at most this many sequences (0: all).
    #[serde(default)]
    max_sequences: usize,
}

pub static EVAL: StepKind = StepKind {
    name: "tokenizer.eval",
    version: 2,
    summary: "bases per token, fertility (tokens per sequence), vocab usage, unknown rate, token lengths",
    outputs: &[("plot", "token_lengths.svg")],
    schema: |g| g.subschema_for::<EvalParams>(),
    check: |with| params::<EvalParams>(with).map(|_| ()),
    run: eval,
};

type Builder<M> = TokenizerBuilder<
    M,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

fn tk(e: impl std::fmt::Display) -> StepError {
    StepError::new(format!("tokenizer: {e}"))
}

/// A sequence as the models see it: a biological sequence (only letters, `*` and `-`) is
/// uppercased, since soft-masked genomes mark repeats in lowercase and the models are
/// case-sensitive; prose (anything holding a space, digit or punctuation) keeps its case.
pub(crate) fn fold_case(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphabetic() || b == b'*' || b == b'-')
    {
        s.to_ascii_uppercase()
    } else {
        s.to_string()
    }
}

/// Read training sequences, case folded by [`fold_case`].
pub(crate) fn read_sequences(
    path: &Path,
    column: &str,
    max: usize,
) -> Result<Vec<String>, StepError> {
    let mut seqs = Vec::new();
    for_each_sequence(path, column, |s| {
        if max == 0 || seqs.len() < max {
            seqs.push(fold_case(s));
        }
    })?;
    if seqs.is_empty() {
        return Err(StepError::new(format!(
            "{}: no sequences to train on",
            path.display()
        )));
    }
    Ok(seqs)
}

fn bert_specials() -> Vec<String> {
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec()
}

/// `[CLS] $A [SEP]` around every sequence, as BERT expects.
fn bert_template(
    specials: &[String],
    ids: impl Fn(&str) -> Option<u32>,
) -> Option<PostProcessorWrapper> {
    let (cls, sep) = (
        specials.iter().find(|s| s.as_str() == "[CLS]")?,
        specials.iter().find(|s| s.as_str() == "[SEP]")?,
    );
    TemplateProcessing::builder()
        .try_single(format!("{cls} $A {sep}"))
        .ok()?
        .try_pair(format!("{cls} $A {sep} $B:1 {sep}:1"))
        .ok()?
        .special_tokens(vec![(cls.clone(), ids(cls)?), (sep.clone(), ids(sep)?)])
        .build()
        .ok()
        .map(PostProcessorWrapper::Template)
}

/// Byte-level BPE as GPT-2's: DNA lines are single words; prose splits at spaces, each word
/// token keeping its leading space, so the tokens' offsets cover every character.
fn bpe_tokenizer(
    seqs: &[String],
    vocab_size: usize,
    min_frequency: u64,
    specials: &[String],
) -> Result<Tokenizer, StepError> {
    let byte_level = ByteLevel::new(false, true, true);
    let builder = Builder::<BPE>::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()));
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(added(specials))
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    Ok(train_with(builder, &mut trainer, seqs)?.into())
}

/// Fresh Unigram trainers tried after the first panics in esaxx-rs (see `train`).
const UNIGRAM_RETRIES: usize = 4;

fn train_with<M, T>(
    builder: Builder<M>,
    trainer: &mut T,
    seqs: &[String],
) -> Result<
    TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>,
    StepError,
>
where
    M: Model + Send + Sync,
    T: Trainer<Model = M> + Sync,
{
    let mut tokenizer = builder.build().map_err(tk)?;
    tokenizer.train(trainer, seqs.iter()).map_err(tk)?;
    Ok(tokenizer)
}

fn added(specials: &[String]) -> Vec<AddedToken> {
    specials
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect()
}

fn train(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: TrainParams = params(ctx.with).map_err(StepError::new)?;
    let clock = Instant::now();
    let mut seqs = read_sequences(p.input.path(), &p.column, p.max_sequences)?;
    for column in &p.extra_columns {
        seqs.extend(read_sequences(p.input.path(), column, p.max_sequences)?);
    }
    let bases: usize = seqs.iter().map(String::len).sum();
    let decided = training_alphabet(&p, &seqs)?;
    let specials = p.special_tokens.clone().unwrap_or_else(|| match p.model {
        ModelKind::Bpe => vec!["<|endoftext|>".to_string()],
        _ => bert_specials(),
    });
    writeln!(
        ctx.log,
        "training {:?} on {} sequences, {bases} bases; alphabet {} ({}, {} ambiguous letters)",
        p.model,
        seqs.len(),
        decided.alphabet.name(),
        decided.from,
        decided.ambiguous
    )?;
    // Train with the threads the scheduler granted, not the whole machine. Unigram's EM sums
    // floats per thread chunk, so it trains on one thread: its result must not depend on `cpus`.
    let threads = if p.model == ModelKind::Unigram {
        1
    } else {
        ctx.threads.max(1)
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(tk)?;
    let mut unigram_retries = 0;
    let tokenizer: Tokenizer = pool.install(|| -> Result<Tokenizer, StepError> {
        Ok(match p.model {
            ModelKind::Bpe => bpe_tokenizer(&seqs, p.vocab_size, p.min_frequency, &specials)?,
            ModelKind::Char => {
                // A BPE with room for nothing but the alphabet learns no merges: one token per base.
                // Every letter of the table's alphabet has a token, seen in training or not.
                let alphabet: HashSet<char> = seqs
                    .iter()
                    .flat_map(|s| s.chars())
                    .chain(decided.alphabet.letters().chars())
                    .collect();
                let builder = Builder::<BPE>::new()
                    .with_model(
                        BPE::builder()
                            .unk_token("[UNK]".into())
                            .build()
                            .map_err(tk)?,
                    )
                    .with_pre_tokenizer(Some(WhitespaceSplit.into()));
                let mut trainer = BpeTrainerBuilder::new()
                    .vocab_size(specials.len() + alphabet.len())
                    .min_frequency(0)
                    .special_tokens(added(&specials))
                    .initial_alphabet(alphabet)
                    .show_progress(false)
                    .build();
                let mut t = train_with(builder, &mut trainer, &seqs)?;
                let template = bert_template(&specials, |s| t.token_to_id(s));
                t.with_post_processor(template);
                t.into()
            }
            ModelKind::Wordpiece => {
                let builder = Builder::<WordPiece>::new()
                    .with_model(WordPiece::default())
                    .with_pre_tokenizer(Some(BertPreTokenizer.into()))
                    .with_decoder(Some(
                        tokenizers::decoders::wordpiece::WordPiece::default().into(),
                    ));
                let mut trainer = WordPieceTrainerBuilder::new()
                    .vocab_size(p.vocab_size)
                    .min_frequency(p.min_frequency)
                    .special_tokens(added(&specials))
                    .show_progress(false)
                    .build();
                let mut t = train_with(builder, &mut trainer, &seqs)?;
                // WordPiece turns any word longer than this into [UNK], and a DNA line is one
                // word: allow far more than any sequence, not the default 100.
                let mut model = t.get_model().clone();
                model.max_input_chars_per_word = MAX_WORD;
                t.with_model(model);
                let template = bert_template(&specials, |s| t.token_to_id(s));
                t.with_post_processor(template);
                t.into()
            }
            ModelKind::Unigram => {
                // tokenizers' pure-Rust suffix array (esaxx-rs) panics on some orders of the
                // words (github.com/Narsil/esaxx-rs/issues/2), and the order is that of a
                // freshly seeded hash map per trainer: a new trainer draws another order.
                let mut t = loop {
                    let builder = Builder::<Unigram>::new()
                        .with_model(Unigram::default())
                        .with_pre_tokenizer(Some(WhitespaceSplit.into()));
                    let mut trainer = UnigramTrainer::builder()
                        .vocab_size(p.vocab_size as u32)
                        .special_tokens(added(&specials))
                        .unk_token(specials.iter().find(|s| s.contains("UNK")).cloned())
                        .show_progress(false)
                        .build()
                        .map_err(tk)?;
                    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        train_with(builder, &mut trainer, &seqs)
                    }));
                    match attempt {
                        Ok(trained) => break trained?,
                        Err(_) if unigram_retries < UNIGRAM_RETRIES => unigram_retries += 1,
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                };
                let template = bert_template(&specials, |s| t.token_to_id(s));
                t.with_post_processor(template);
                t.into()
            }
            ModelKind::Kmer => kmer_tokenizer(p.k, kmer_bases(decided)?, &specials)?,
        })
    })?;
    if unigram_retries > 0 {
        writeln!(
            ctx.log,
            "the Unigram trainer's suffix array panicked (a known esaxx-rs bug that depends on \
             word order); trained on retry {unigram_retries}"
        )?;
    }
    let tokenizer = canonical(tokenizer, p.model)?;
    let got = tokenizer.get_vocab_size(true);
    if matches!(p.model, ModelKind::Wordpiece | ModelKind::Unigram) && got > p.vocab_size {
        return Err(StepError::new(format!(
            "`vocab_size` {} is smaller than the {got} tokens the special tokens and the \
             sequences' letters alone need; set `vocab_size` above {got}",
            p.vocab_size
        )));
    }
    let path = ctx.out.join("tokenizer.json");
    tokenizer.save(&path, true).map_err(tk)?;
    let recorded = match p.model {
        ModelKind::Kmer => kmer_alphabet(decided),
        _ => decided.alphabet,
    };
    write_hf_configs(ctx.out, &specials, p.model, &p, recorded)?;
    let mut metrics = json!({
        "model": format!("{:?}", p.model).to_lowercase(),
        "vocab_size": tokenizer.get_vocab_size(true),
        "sequences": seqs.len(),
        "bases": bases,
        "seconds": (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    });
    super::merge(&mut metrics, decided.metrics());
    super::write_metrics(ctx.out, &metrics)?;
    Ok(())
}

/// The training table's alphabet ([`reading_alphabet`]: what its metadata records, else its
/// letters, `any` for a corpus of several); rows that disagree with a recorded one are an
/// error naming them.
fn training_alphabet(p: &TrainParams, seqs: &[String]) -> Result<Decided, StepError> {
    let path = p.input.path();
    let meta = TableMeta::read(path);
    let decided = reading_alphabet(&meta, seqs);
    check_rows(decided, seqs, &|i| {
        format!("{}{}: sequence {}", path.display(), meta.origin(), i + 1)
    })?;
    Ok(decided)
}

/// The alphabet of a k-mer vocabulary: RNA's k-mers for an RNA table, DNA's otherwise (text
/// already cut into k-mers is DNA's).
fn kmer_alphabet(decided: Decided) -> Alphabet {
    match decided.alphabet {
        Alphabet::Rna => Alphabet::Rna,
        _ => Alphabet::Dna,
    }
}

/// The four bases a k-mer vocabulary is made of; a protein table is an error (20^k k-mers).
fn kmer_bases(decided: Decided) -> Result<&'static [u8; 4], StepError> {
    if decided.alphabet == Alphabet::Protein {
        return Err(StepError::new(format!(
            "the sequences are protein ({}): kmer tokenizers are nucleotide k-mers; use `model: \
             char` or `bpe` for proteins, or declare the table's alphabet (data.load `alphabet:`) \
             if it is DNA or RNA",
            decided.from
        )));
    }
    Ok(match kmer_alphabet(decided) {
        Alphabet::Rna => b"ACGU",
        _ => b"ACGT",
    })
}

/// The same tokenizer whatever order the trainer's (randomly seeded) hash maps were walked in.
///
/// WordPiece ids carry no meaning (matching is by text), but the trainer numbers the `##`
/// continuations in hash order: renumber them specials first, then by length, prefix and text.
/// Unigram scores are log-probabilities summed in hash order, so their last digits vary:
/// round them to 10 decimals.
fn canonical(tokenizer: Tokenizer, model: ModelKind) -> Result<Tokenizer, StepError> {
    if !matches!(model, ModelKind::Wordpiece | ModelKind::Unigram) {
        return Ok(tokenizer);
    }
    let mut doc: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(tk)?).map_err(tk)?;
    let specials: Vec<String> = doc["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["content"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match model {
        ModelKind::Wordpiece => {
            let vocab = doc["model"]["vocab"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut rest: Vec<&String> = vocab.keys().filter(|t| !specials.contains(t)).collect();
            rest.sort_by_key(|t| {
                (
                    t.trim_start_matches("##").len(),
                    t.starts_with("##"),
                    t.to_string(),
                )
            });
            let mut ordered = serde_json::Map::new();
            for t in specials
                .iter()
                .filter(|t| vocab.contains_key(*t))
                .chain(rest)
            {
                ordered.insert(t.clone(), json!(ordered.len()));
            }
            doc["model"]["vocab"] = serde_json::Value::Object(ordered);
        }
        _ => {
            if let Some(pieces) = doc["model"]["vocab"].as_array_mut() {
                for piece in pieces {
                    if let Some(score) = piece[1].as_f64() {
                        piece[1] = json!((score * 1e10).round() / 1e10);
                    }
                }
            }
        }
    }
    doc.to_string().parse::<Tokenizer>().map_err(tk)
}

/// Longest "word" WordPiece will split; longer ones become [UNK]. Far beyond any chromosome
/// window, and fixed, so the limit does not depend on the training data.
const MAX_WORD: usize = 1_000_000_000;

/// Every k-mer over the four `bases` (ACGT, or ACGU for RNA) in lexical order after the
/// specials; raw sequences are cut into consecutive k-mers, and text already split into
/// (overlapping) k-mers by spaces is kept.
fn kmer_tokenizer(k: usize, bases: &[u8; 4], specials: &[String]) -> Result<Tokenizer, StepError> {
    let mut vocab = serde_json::Map::new();
    for s in specials {
        vocab.insert(s.clone(), json!(vocab.len()));
    }
    for i in 0..4usize.pow(k as u32) {
        let kmer: String = (0..k)
            .rev()
            .map(|j| bases[(i >> (2 * j)) & 3] as char)
            .collect();
        vocab.insert(kmer, json!(vocab.len()));
    }
    let id = |s: &str| vocab.get(s).and_then(|v| v.as_u64());
    let unk = specials
        .iter()
        .find(|s| s.contains("UNK"))
        .cloned()
        .unwrap_or_else(|| "[UNK]".into());
    let added: Vec<serde_json::Value> = specials
        .iter()
        .map(|s| json!({"id": id(s), "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let post = match (id("[CLS]"), id("[SEP]")) {
        (Some(cls), Some(sep)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}
            }
        }),
        _ => serde_json::Value::Null,
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "FixedLength", "length": k}
        ]},
        "post_processor": post,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}
    });
    doc.to_string().parse::<Tokenizer>().map_err(tk)
}

/// `tokenizer_config.json` and `special_tokens_map.json`, so `AutoTokenizer.from_pretrained(dir)` works.
fn write_hf_configs(
    out: &Path,
    specials: &[String],
    model: ModelKind,
    p: &TrainParams,
    alphabet: Alphabet,
) -> Result<(), StepError> {
    let find = |needle: &str| specials.iter().find(|s| s.contains(needle)).cloned();
    let mut map = BTreeMap::new();
    if model == ModelKind::Bpe {
        if let Some(t) = specials.first() {
            for role in ["bos_token", "eos_token", "unk_token"] {
                map.insert(role, t.clone());
            }
        }
    } else {
        for (role, needle) in [
            ("unk_token", "UNK"),
            ("pad_token", "PAD"),
            ("cls_token", "CLS"),
            ("sep_token", "SEP"),
            ("mask_token", "MASK"),
        ] {
            if let Some(t) = find(needle) {
                map.insert(role, t);
            }
        }
    }
    let mut config = json!({ "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000_000u64 });
    for (role, token) in &map {
        config[*role] = json!(token);
    }
    // Not read by transformers; tells the model kinds what the tokenizer was trained for.
    config[ALPHABET_KEY] = json!(alphabet.name());
    if model == ModelKind::Kmer {
        // Not read by transformers; tells dnaflow (and readers) how sequences were split.
        config["dnaflow_kmer"] = json!({ "k": p.k, "overlap": p.overlap });
    }
    let write = |name: &str, v: &serde_json::Value| {
        std::fs::write(out.join(name), serde_json::to_vec_pretty(v).map_err(tk)?)
            .map_err(StepError::from)
    };
    write("tokenizer_config.json", &config)?;
    write("special_tokens_map.json", &json!(map))
}

/// Overlapping k-mers of a sequence, space-separated (DNABERT-1 input).
fn overlapping_kmers(seq: &str, k: usize) -> String {
    let b = seq.as_bytes();
    if b.len() < k {
        return seq.to_string();
    }
    (0..=b.len() - k)
        .map(|i| &seq[i..i + k])
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a kmer tokenizer wants its input, from the `tokenizer_config.json` beside it.
fn kmer_overlap(dir: &Path) -> Option<usize> {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).ok()?).ok()?;
    let kmer = cfg.get("dnaflow_kmer")?;
    kmer.get("overlap")?
        .as_bool()?
        .then(|| kmer.get("k")?.as_u64().map(|k| k as usize))?
}

/// The `tokenizer.json` a parameter names: the file itself, or the one in the directory named.
pub(crate) fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

/// A `tokenizer.json` named by its path or by the directory holding it; returns the file's path too.
pub(crate) fn open_tokenizer(path: &Path) -> Result<(PathBuf, Tokenizer), StepError> {
    use std::str::FromStr;
    let path = tokenizer_file(path);
    // A model directory may ship its tokenizer as other files (ESM's vocab.txt): its row
    // builds the tokenizer.json.
    let text =
        crate::models::read_tokenizer_json(&path).map_err(|e| StepError::new(e.to_string()))?;
    let tokenizer = Tokenizer::from_str(&text)
        .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    Ok((path, tokenizer))
}

fn eval(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: EvalParams = params(ctx.with).map_err(StepError::new)?;
    let (path, tokenizer) = open_tokenizer(p.tokenizer.path())?;
    let overlap_k = path.parent().and_then(kmer_overlap);
    let seqs = read_sequences(p.input.path(), &p.column, p.max_sequences)?;
    // The table's alphabet (its metadata's, else its letters'), beside the one the tokenizer
    // was trained for: a DNA tokenizer measured on protein is a legitimate question (its
    // unknown rate answers it), so a difference is reported, not refused.
    let (decided, _) = read_table_alphabet(p.input.path(), &seqs)?;
    // The unknown token of BERT-style and SentencePiece-style vocabularies; byte-level BPE has none.
    let unk_ids: HashSet<u32> = ["[UNK]", "<unk>"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    let (mut tokens, mut unk, mut bases, mut token_bases) = (0usize, 0usize, 0usize, 0usize);
    let mut seen = HashSet::new();
    let mut lengths: BTreeMap<usize, usize> = BTreeMap::new();
    for seq in &seqs {
        let text = match overlap_k {
            Some(k) => overlapping_kmers(seq, k),
            None => seq.clone(),
        };
        let enc = tokenizer.encode(text.as_str(), false).map_err(tk)?;
        bases += seq.len();
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            tokens += 1;
            seen.insert(id);
            if unk_ids.contains(&id) {
                unk += 1;
            }
            // With overlapping k-mers each token covers k bases of text but advances one base.
            let len = end.saturating_sub(start);
            token_bases += len;
            *lengths.entry(len).or_default() += 1;
        }
    }
    let vocab = tokenizer.get_vocab_size(true);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let round = |x: f64| (x * 1e6).round() / 1e6;
    let mut metrics = json!({
        "sequences": seqs.len(),
        "bases": bases,
        "tokens": tokens,
        "bases_per_token": round(ratio(bases, tokens)),
        "fertility": round(ratio(tokens, seqs.len())),
        "vocab_size": vocab,
        "vocab_usage": round(ratio(seen.len(), vocab)),
        "unk_rate": round(ratio(unk, tokens)),
        "mean_token_length": round(ratio(token_bases, tokens)),
    });
    super::merge(&mut metrics, decided.metrics());
    if let Some(trained_for) = recorded_alphabet(&path) {
        metrics["tokenizer_alphabet"] = json!(trained_for.name());
    }
    super::write_metrics(ctx.out, &metrics)?;
    let bars: Vec<(String, f64)> = lengths
        .iter()
        .map(|(l, n)| (l.to_string(), *n as f64))
        .collect();
    plot::bars(
        &ctx.out.join("token_lengths.svg"),
        "Token lengths",
        "bases per token",
        &bars,
    )?;
    writeln!(ctx.log, "{}", metrics)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpe_offsets_cover_every_character_of_dna_protein_and_prose() {
        let seqs: Vec<String> = [
            "ACGTACGTTTGACCAGT",
            "MKKLLPTAAAGLLLLAAQPAMA",
            "In the beginning God created the heaven and the earth.",
            "And the earth was without form, and void.",
        ]
        .map(String::from)
        .to_vec();
        let t = bpe_tokenizer(&seqs, 300, 1, &["<|endoftext|>".to_string()]).unwrap();
        for s in &seqs {
            let enc = t.encode(s.as_str(), false).unwrap();
            let spelled: usize = enc.get_offsets().iter().map(|(a, b)| b - a).sum();
            assert_eq!(spelled, s.len(), "{s}: {:?}", enc.get_offsets());
            assert_eq!(t.decode(enc.get_ids(), false).unwrap(), *s);
        }
    }

    #[test]
    fn prose_keeps_its_case_and_sequences_are_uppercased() {
        assert_eq!(fold_case("acgtNNacg"), "ACGTNNACG");
        assert_eq!(fold_case("mkl*"), "MKL*");
        assert_eq!(fold_case("And God said, Let"), "And God said, Let");
    }

    #[test]
    fn overlapping_kmers_stride_one() {
        assert_eq!(overlapping_kmers("ACGTA", 3), "ACG CGT GTA");
        assert_eq!(overlapping_kmers("AC", 3), "AC");
    }

    #[test]
    fn kmer_vocab_has_every_kmer_and_splits_raw_and_presplit_text() {
        let t = kmer_tokenizer(2, b"ACGT", &bert_specials()).unwrap();
        assert_eq!(t.get_vocab_size(true), 5 + 16);
        assert_eq!(t.token_to_id("AA"), Some(5));
        assert_eq!(t.token_to_id("TT"), Some(20));
        let raw = t.encode("ACGTAC", false).unwrap();
        assert_eq!(raw.get_tokens(), &["AC", "GT", "AC"]);
        let pre = t.encode("AC CG GT", false).unwrap();
        assert_eq!(pre.get_tokens(), &["AC", "CG", "GT"]);
        let with_special = t.encode("ACGT", true).unwrap();
        assert_eq!(with_special.get_tokens(), &["[CLS]", "AC", "GT", "[SEP]"]);
        assert_eq!(
            t.encode("ANGT", false).unwrap().get_tokens(),
            &["[UNK]", "GT"]
        );
    }

    /// An RNA table's k-mers are of A, C, G and U; a protein table has no k-mer vocabulary;
    /// text already cut into k-mers keeps DNA's.
    #[test]
    fn a_kmer_vocabulary_is_made_of_the_tables_bases() {
        let decided = |alphabet| Decided {
            alphabet,
            from: "table",
            ambiguous: 0,
        };
        let rna = kmer_bases(decided(Alphabet::Rna)).unwrap();
        let t = kmer_tokenizer(2, rna, &bert_specials()).unwrap();
        assert_eq!(t.token_to_id("UU"), Some(20));
        assert_eq!(t.token_to_id("TT"), None);
        let err = kmer_bases(decided(Alphabet::Protein)).unwrap_err();
        assert!(err.to_string().contains("nucleotide k-mers"), "{err}");
        assert_eq!(kmer_bases(decided(Alphabet::Text)).unwrap(), b"ACGT");
        assert_eq!(kmer_alphabet(decided(Alphabet::Text)), Alphabet::Dna);
    }
}
