//! Extend a LLaMA-family BPE `tokenizer.json` with pieces learned from DNA or protein text:
//! new merges are learned on top of the base's own segmentation and appended after its ids and
//! merges, so every base token keeps its id and the base's English is spelled as before.
//!
//! 1. Each text goes through the base's added-token split, normalizer and pre-tokenizer; the
//!    distinct words are counted and spelled by the base model alone (its own merges).
//! 2. BPE training over those tokens: the most frequent adjacent pair (weighted by word
//!    count; ties: smallest pair of strings) becomes a piece; counts are updated around each
//!    merged occurrence, never recounted. Byte-fallback, unk and added tokens never merge; a
//!    pair spelling an existing piece, or one the extended model would not spell as itself,
//!    is skipped (the latter reported as dropped).
//! 3. The pieces and merges are appended to the JSON, which is otherwise kept as it was, key
//!    order included; the real `tokenizers` model then re-checks every piece.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::BPE;
use tokenizers::{Model, ModelWrapper, OffsetReferential, OffsetType, PreTokenizer, Tokenizer};

/// How a base tokenizer segments and spells text, as found in its `tokenizer.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFormat {
    /// SentencePiece converted by transformers (LLaMA-1/2, Mistral): `▁` for spaces, from a
    /// Metaspace pre-tokenizer or a Prepend("▁") + Replace(" ", "▁") normalizer, usually with
    /// `<0xNN>` byte-fallback pieces.
    SentencePiece,
    /// Byte-level BPE (LLaMA-3): a ByteLevel pre-tokenizer, possibly after a Split regex.
    ByteLevel,
}

/// How many pieces to learn, and how common a pair must be to become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendOptions {
    /// Add at most this many new pieces (fewer when pairs run out or fall below `min_frequency`).
    pub new_pieces: usize,
    /// Least number of occurrences of a pair in the texts for it to become a piece.
    pub min_frequency: u64,
}

/// The extended tokenizer and what was added, for the caller to save and report.
#[derive(Debug, Clone, PartialEq)]
pub struct Extension {
    /// The extended `tokenizer.json`, pretty-printed when the base was.
    pub tokenizer_json: String,
    /// The base's format, as detected.
    pub format: BaseFormat,
    /// The new pieces in id order: `added[i]` has id `first_new_id + i`.
    pub added: Vec<String>,
    /// Id of the first new piece: one more than every id of the base (vocab and added tokens).
    pub first_new_id: u32,
    /// Candidates left out because the extended tokenizer would not spell them as one token.
    pub dropped: Vec<String>,
}

/// Why a base tokenizer could not be extended.
#[derive(thiserror::Error, Debug)]
pub enum ExtendError {
    /// Only BPE vocabularies grow by appending merges.
    #[error(
        "the base must be a BPE tokenizer.json (LLaMA, Mistral: SentencePiece-converted; \
         LLaMA-3: byte-level), but its model is {found}"
    )]
    NotBpe { found: String },
    /// New pieces are learned on the base's segmentation, which must be one of the known ones.
    #[error(
        "the base BPE segments text neither as SentencePiece (Metaspace pre-tokenizer, or \
         Prepend(\"▁\") + Replace(\" \", \"▁\") normalizer: LLaMA, Mistral) nor byte-level \
         (ByteLevel pre-tokenizer: LLaMA-3); found {found}"
    )]
    UnknownFormat { found: String },
    /// The base is not JSON.
    #[error("the base tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `tokenizers` crate refused the base or the extension.
    #[error("tokenizers: {0}")]
    Tokenizers(String),
    /// Pieces are learned from text, and there was none.
    #[error("no text to learn new pieces from")]
    NoText,
}

fn tk(e: impl fmt::Display) -> ExtendError {
    ExtendError::Tokenizers(e.to_string())
}

/// Learn up to `opts.new_pieces` BPE merges on `texts` as the base segments them, and append
/// them (ids and merges) after everything in `base_json`, which is left as it was otherwise.
pub fn extend(
    base_json: &str,
    texts: &[&str],
    opts: &ExtendOptions,
) -> Result<Extension, ExtendError> {
    let mut root: Json = serde_json::from_str(base_json)?;
    let tokenizer = Tokenizer::from_str(base_json).map_err(tk)?;
    let bpe = match tokenizer.get_model() {
        ModelWrapper::BPE(bpe) => bpe,
        ModelWrapper::WordPiece(_) => return Err(not_bpe("WordPiece")),
        ModelWrapper::WordLevel(_) => return Err(not_bpe("WordLevel")),
        ModelWrapper::Unigram(_) => return Err(not_bpe("Unigram")),
    };
    let format = detect_format(&root)?;
    let words = pre_segment(&tokenizer, texts)?;
    if words.is_empty() {
        return Err(ExtendError::NoText);
    }

    let shape = BaseShape::read(&root)?;
    // Learn with a copy of the model that does not drop merges at random.
    let mut base = bpe.clone();
    base.dropout = None;
    let mut frozen: HashSet<u32> = tokenizer
        .get_added_vocabulary()
        .get_vocab()
        .values()
        .copied()
        .collect();
    let mut known: HashSet<String> = tokenizer
        .get_added_vocabulary()
        .get_vocab()
        .keys()
        .cloned()
        .collect();
    let mut names = vec![Rc::<str>::from(""); shape.first_new_id as usize];
    for (piece, id) in base.get_vocab() {
        if is_byte_piece(&piece) || base.unk_token.as_deref() == Some(piece.as_str()) {
            frozen.insert(id);
        }
        if let Some(name) = names.get_mut(id as usize) {
            *name = Rc::from(piece.as_str());
        }
        known.insert(piece);
    }
    let prefix_len = base
        .continuing_subword_prefix
        .as_ref()
        .map_or(0, String::len);
    let mut learner = Learner::new(
        &base,
        names,
        known,
        frozen,
        prefix_len,
        shape.legacy_merges,
        &words,
    )?;
    learner.learn(opts);

    let mut learned = learner.learned;
    let mut dropped: Vec<String> = learner.rejected;
    let pretty = is_pretty(base_json);
    // Check with the real tokenizer (merges not skipped, even where the base's `ignore_merges`
    // would look whole words up) that every new piece is spelled as itself; drop until stable.
    let tokenizer_json = loop {
        let text = write_extension(&mut root, &shape, &learned, pretty)?;
        let failing = failing_pieces(&text, &learned, shape.first_new_id)?;
        if failing.is_empty() {
            break text;
        }
        let removed = prune(&mut learned, &failing);
        dropped.extend(removed);
    };
    let added: Vec<String> = learned.iter().map(|m| m.piece.to_string()).collect();
    let added_set: HashSet<&str> = added.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    dropped.retain(|d| !added_set.contains(d.as_str()) && seen.insert(d.clone()));
    Ok(Extension {
        tokenizer_json,
        format,
        added,
        first_new_id: shape.first_new_id,
        dropped,
    })
}

fn not_bpe(found: &str) -> ExtendError {
    ExtendError::NotBpe {
        found: found.to_string(),
    }
}

/// `<0xNN>`: a SentencePiece byte-fallback piece, which spells one byte and must stay alone.
fn is_byte_piece(piece: &str) -> bool {
    let b = piece.as_bytes();
    b.len() == 6
        && piece.starts_with("<0x")
        && b[5] == b'>'
        && b[3..5].iter().all(|c| c.is_ascii_hexdigit())
}

/// Pretty output for a pretty base (tokenizers' `save(path, true)`), compact otherwise.
fn is_pretty(json: &str) -> bool {
    let rest = json.trim_start().strip_prefix('{').unwrap_or("");
    rest.starts_with(char::is_whitespace)
}

/// The format from the base's pre-tokenizer and normalizer, or what was found instead.
fn detect_format(root: &Json) -> Result<BaseFormat, ExtendError> {
    let pre = root.get("pre_tokenizer").unwrap_or(&Json::Null);
    let norm = root.get("normalizer").unwrap_or(&Json::Null);
    let pre_parts = parts(pre, "pretokenizers");
    let norm_parts = parts(norm, "normalizers");
    let has = |list: &[&Json], kind: &str| list.iter().any(|p| p.type_name() == Some(kind));
    if has(&pre_parts, "ByteLevel") {
        return Ok(BaseFormat::ByteLevel);
    }
    let replaces_spaces = norm_parts.iter().any(|p| {
        p.type_name() == Some("Replace")
            && p.get("pattern")
                .and_then(|x| x.get("String"))
                .and_then(Json::as_str)
                == Some(" ")
            && p.get("content").and_then(Json::as_str) == Some("▁")
    });
    if has(&pre_parts, "Metaspace") || replaces_spaces {
        return Ok(BaseFormat::SentencePiece);
    }
    Err(ExtendError::UnknownFormat {
        found: format!(
            "pre_tokenizer {}, normalizer {}",
            describe(pre, "pretokenizers"),
            describe(norm, "normalizers")
        ),
    })
}

/// A component and, for a `Sequence`, the components inside it (`key` names their list).
fn parts<'a>(component: &'a Json, key: &str) -> Vec<&'a Json> {
    let mut out = vec![component];
    if let Some(Json::Array(inner)) = component.get(key) {
        out.extend(inner.iter());
    }
    out
}

/// `Sequence[Split, ByteLevel]`, `Whitespace` or `none`: a component's type for messages.
fn describe(component: &Json, key: &str) -> String {
    match (component.type_name(), component.get(key)) {
        (_, Some(Json::Array(inner))) => {
            let names: Vec<String> = inner.iter().map(|c| describe(c, key)).collect();
            format!("Sequence[{}]", names.join(", "))
        }
        (Some(kind), _) => kind.to_string(),
        (None, _) if *component == Json::Null => "none".to_string(),
        (None, _) => "an untyped object".to_string(),
    }
}

/// Words as the base tokenizer would hand them to its model: added tokens split out, then
/// normalizer and pre-tokenizer; with their counts, sorted so learning is reproducible.
fn pre_segment(
    tokenizer: &Tokenizer,
    texts: &[&str],
) -> Result<BTreeMap<String, u64>, ExtendError> {
    let mut words = BTreeMap::new();
    for text in texts {
        let mut pre = tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(tokenizer.get_normalizer(), text);
        if let Some(pre_tokenizer) = tokenizer.get_pre_tokenizer() {
            pre_tokenizer.pre_tokenize(&mut pre).map_err(tk)?;
        }
        for (word, _, tokens) in pre.get_splits(OffsetReferential::Normalized, OffsetType::None) {
            if tokens.is_none() && !word.is_empty() {
                *words.entry(word.to_string()).or_insert(0u64) += 1;
            }
        }
    }
    Ok(words)
}

/// What of the base the extension needs: where new ids start and how merges are written.
struct BaseShape {
    first_new_id: u32,
    vocab_len: usize,
    merges_len: usize,
    /// Merges as `"a b"` strings (files before tokenizers 0.20) rather than `["a", "b"]` pairs.
    legacy_merges: bool,
    /// Added tokens outside the model's vocab (LLaMA-3's specials), by id: see `write_extension`.
    outside: Vec<(String, u64)>,
}

impl BaseShape {
    fn read(root: &Json) -> Result<BaseShape, ExtendError> {
        let model = root.get("model");
        let Some(Json::Object(vocab)) = model.and_then(|m| m.get("vocab")) else {
            return Err(tk("tokenizer.json has no model.vocab object"));
        };
        let Some(Json::Array(merges)) = model.and_then(|m| m.get("merges")) else {
            return Err(tk("tokenizer.json has no model.merges list"));
        };
        let vocab_max = vocab.iter().filter_map(|(_, id)| id.as_u64()).max();
        let added_max = match root.get("added_tokens") {
            Some(Json::Array(added)) => added
                .iter()
                .filter_map(|t| t.get("id").and_then(Json::as_u64))
                .max(),
            _ => None,
        };
        let first_new_id = match vocab_max.max(added_max) {
            Some(max) => u32::try_from(max + 1).map_err(tk)?,
            None => 0,
        };
        let in_vocab: HashSet<&str> = vocab.iter().map(|(k, _)| k.as_str()).collect();
        let mut outside: Vec<(String, u64)> = match root.get("added_tokens") {
            Some(Json::Array(added)) => added
                .iter()
                .filter_map(|t| {
                    let content = t.get("content")?.as_str()?;
                    let id = t.get("id")?.as_u64()?;
                    (!in_vocab.contains(content)).then(|| (content.to_string(), id))
                })
                .collect(),
            _ => Vec::new(),
        };
        outside.sort_by_key(|(_, id)| *id);
        Ok(BaseShape {
            first_new_id,
            vocab_len: vocab.len(),
            merges_len: merges.len(),
            legacy_merges: matches!(merges.first(), Some(Json::String(_))),
            outside,
        })
    }
}

/// One learned merge: `a` + `b` spell the new piece.
#[derive(Debug, Clone, PartialEq)]
struct Learned {
    a: Rc<str>,
    b: Rc<str>,
    piece: Rc<str>,
}

/// The base JSON with `learned` appended to its vocab (ids from `first_new_id`) and merges;
/// `root` is cut back to the base first, so this can be called again after pruning.
///
/// `tokenizers` ignores the ids written in `added_tokens` when it loads a file: a token outside
/// the model's vocab gets the next id after `vocab.len()`. LLaMA-3's specials sit right after
/// its contiguous vocab, so that works for the base; with new pieces after them it would move
/// every special onto a new piece's id. So the specials go into the model's vocab too, at their
/// own ids (as SentencePiece-converted LLaMA already has `<unk> <s> </s>`), just before the new
/// pieces: the file's ids are then the ids every loader sees.
fn write_extension(
    root: &mut Json,
    shape: &BaseShape,
    learned: &[Learned],
    pretty: bool,
) -> Result<String, ExtendError> {
    let Some(model) = root.get_mut("model") else {
        return Err(tk("tokenizer.json has no model"));
    };
    if let Some(Json::Object(vocab)) = model.get_mut("vocab") {
        vocab.truncate(shape.vocab_len);
        if !learned.is_empty() {
            for (content, id) in &shape.outside {
                vocab.push((content.clone(), Json::Number((*id).into())));
            }
        }
        for (i, m) in learned.iter().enumerate() {
            let id = u64::from(shape.first_new_id) + i as u64;
            vocab.push((m.piece.to_string(), Json::Number(id.into())));
        }
    }
    if let Some(Json::Array(merges)) = model.get_mut("merges") {
        merges.truncate(shape.merges_len);
        for m in learned {
            merges.push(if shape.legacy_merges {
                Json::String(format!("{} {}", m.a, m.b))
            } else {
                Json::Array(vec![
                    Json::String(m.a.to_string()),
                    Json::String(m.b.to_string()),
                ])
            });
        }
    }
    Ok(if pretty {
        serde_json::to_string_pretty(root)?
    } else {
        serde_json::to_string(root)?
    })
}

/// New pieces that the extended tokenizer's model does not spell as exactly themselves.
fn failing_pieces(
    json: &str,
    learned: &[Learned],
    first_new_id: u32,
) -> Result<HashSet<Rc<str>>, ExtendError> {
    let tokenizer = Tokenizer::from_str(json).map_err(tk)?;
    let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return Err(tk("the extended tokenizer is not BPE"));
    };
    let mut bpe = bpe.clone();
    bpe.ignore_merges = false;
    bpe.dropout = None;
    let mut failing = HashSet::new();
    for (i, m) in learned.iter().enumerate() {
        let id = first_new_id + i as u32;
        let ids: Vec<u32> = bpe
            .tokenize(&m.piece)
            .map_err(tk)?
            .iter()
            .map(|t| t.id)
            .collect();
        if ids != [id] {
            failing.insert(m.piece.clone());
        }
    }
    Ok(failing)
}

/// Remove the `failing` merges and every later merge built on a removed piece; return the
/// pieces removed, in order.
fn prune(learned: &mut Vec<Learned>, failing: &HashSet<Rc<str>>) -> Vec<String> {
    let mut removed: HashSet<Rc<str>> = HashSet::new();
    let mut out = Vec::new();
    learned.retain(|m| {
        let gone = failing.contains(&m.piece) || removed.contains(&m.a) || removed.contains(&m.b);
        if gone {
            removed.insert(m.piece.clone());
            out.push(m.piece.to_string());
        }
        !gone
    });
    out
}

/// No symbol: the end of a word, or a symbol merged into its left neighbour.
const NONE: u32 = u32::MAX;

/// A symbol of the corpus: a token id, linked to its neighbours in the same word.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    word: u32,
}

/// A pair's weighted count and where it may occur (left symbols; checked when used).
#[derive(Debug, Default)]
struct PairStat {
    count: u64,
    at: Vec<u32>,
}

/// A heap entry: the most frequent pair first, then the lexicographically smallest.
type Entry = (u64, Reverse<(Rc<str>, Rc<str>)>, (u32, u32));

/// BPE training over the base's tokens, with pair counts updated at each merge.
struct Learner<'a> {
    base: &'a BPE,
    /// Piece by id: the base's, then the new ones (empty strings where the base has no id).
    names: Vec<Rc<str>>,
    /// Pieces that exist (base vocab, added tokens, new pieces): a pair spelling one is skipped.
    known: HashSet<String>,
    /// Ids never merged: byte-fallback pieces, the unk token, added and special tokens.
    frozen: HashSet<u32>,
    prefix_len: usize,
    legacy_merges: bool,
    symbols: Vec<Symbol>,
    weights: Vec<u64>,
    pairs: HashMap<(u32, u32), PairStat>,
    skipped: HashSet<(u32, u32)>,
    heap: BinaryHeap<Entry>,
    /// New merges: pair to (rank among new merges, new id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    learned: Vec<Learned>,
    rejected: Vec<String>,
}

impl<'a> Learner<'a> {
    fn new(
        base: &'a BPE,
        names: Vec<Rc<str>>,
        known: HashSet<String>,
        frozen: HashSet<u32>,
        prefix_len: usize,
        legacy_merges: bool,
        words: &BTreeMap<String, u64>,
    ) -> Result<Learner<'a>, ExtendError> {
        let mut learner = Learner {
            base,
            names,
            known,
            frozen,
            prefix_len,
            legacy_merges,
            symbols: Vec::new(),
            weights: Vec::with_capacity(words.len()),
            pairs: HashMap::new(),
            skipped: HashSet::new(),
            heap: BinaryHeap::new(),
            merges: HashMap::new(),
            learned: Vec::new(),
            rejected: Vec::new(),
        };
        for (w, (word, &count)) in words.iter().enumerate() {
            let tokens = base.tokenize(word).map_err(tk)?;
            learner.weights.push(count);
            let start = learner.symbols.len();
            for (i, token) in tokens.iter().enumerate() {
                let at = (start + i) as u32;
                learner.symbols.push(Symbol {
                    id: token.id,
                    prev: if i == 0 { NONE } else { at - 1 },
                    next: if i + 1 == tokens.len() { NONE } else { at + 1 },
                    word: w as u32,
                });
                if i > 0 {
                    learner.add((tokens[i - 1].id, token.id), count, at - 1);
                }
            }
        }
        let pairs: Vec<(u32, u32)> = learner.pairs.keys().copied().collect();
        for pair in pairs {
            learner.push(pair);
        }
        Ok(learner)
    }

    /// Count one more occurrence of `pair` at `at`, unless it is never to be merged.
    fn add(&mut self, pair: (u32, u32), weight: u64, at: u32) -> bool {
        if self.frozen.contains(&pair.0)
            || self.frozen.contains(&pair.1)
            || self.skipped.contains(&pair)
        {
            return false;
        }
        let stat = self.pairs.entry(pair).or_default();
        stat.count += weight;
        stat.at.push(at);
        true
    }

    /// Count one occurrence fewer of `pair` (if it is counted at all).
    fn remove(&mut self, pair: (u32, u32), weight: u64) {
        if let Some(stat) = self.pairs.get_mut(&pair) {
            stat.count = stat.count.saturating_sub(weight);
            if stat.count == 0 {
                self.pairs.remove(&pair);
            }
        }
    }

    /// Put `pair` on the heap with its current count.
    fn push(&mut self, pair: (u32, u32)) {
        if let Some(stat) = self.pairs.get(&pair) {
            let names = (
                self.names[pair.0 as usize].clone(),
                self.names[pair.1 as usize].clone(),
            );
            self.heap.push((stat.count, Reverse(names), pair));
        }
    }

    /// The piece a merge of `pair` spells, as the `tokenizers` BPE builder computes it.
    fn spell(&self, pair: (u32, u32)) -> String {
        let (a, b) = (&self.names[pair.0 as usize], &self.names[pair.1 as usize]);
        format!("{a}{}", &b[self.prefix_len.min(b.len())..])
    }

    fn learn(&mut self, opts: &ExtendOptions) {
        let least = opts.min_frequency.max(1);
        while self.learned.len() < opts.new_pieces {
            let Some((count, _, pair)) = self.heap.pop() else {
                break;
            };
            let current = self.pairs.get(&pair).map_or(0, |s| s.count);
            if current != count {
                // A stale entry: a lower count is pushed back; a higher one has its own entry.
                if current > 0 && current < count {
                    self.push(pair);
                }
                continue;
            }
            if count < least {
                break;
            }
            let piece = self.spell(pair);
            let a = self.names[pair.0 as usize].clone();
            let b = self.names[pair.1 as usize].clone();
            let unwritable = self.legacy_merges && (a.contains(' ') || b.contains(' '));
            if self.known.contains(&piece) || unwritable {
                self.skip(pair);
                continue;
            }
            let id = self.names.len() as u32;
            let rank = self.learned.len() as u32;
            self.merges.insert(pair, (rank, id));
            if !self.spells_itself(&piece, id) {
                self.merges.remove(&pair);
                self.skip(pair);
                self.rejected.push(piece);
                continue;
            }
            let learned = Learned {
                a,
                b,
                piece: Rc::from(piece.as_str()),
            };
            self.names.push(learned.piece.clone());
            self.known.insert(piece);
            self.learned.push(learned);
            self.merge(pair, id);
        }
    }

    /// Never merge `pair`: forget its occurrences.
    fn skip(&mut self, pair: (u32, u32)) {
        self.pairs.remove(&pair);
        self.skipped.insert(pair);
    }

    /// Whether the extended model, with the new merges so far, tokenizes `piece` as `[id]`:
    /// the base's merges all rank before the new ones, so its tokens come first, then the new
    /// merges apply lowest rank first, leftmost first, as `tokenizers` does.
    fn spells_itself(&self, piece: &str, id: u32) -> bool {
        let Ok(tokens) = self.base.tokenize(piece) else {
            return false;
        };
        let mut ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        loop {
            let best = ids
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, new)| (r, i, new)))
                .min();
            let Some((_, i, new)) = best else {
                break;
            };
            ids[i] = new;
            ids.remove(i + 1);
        }
        ids == [id]
    }

    /// Merge every occurrence of `pair` into `id`, left to right in each word, and update the
    /// counts of the neighbouring pairs.
    fn merge(&mut self, pair: (u32, u32), id: u32) {
        let Some(stat) = self.pairs.remove(&pair) else {
            return;
        };
        let mut at = stat.at;
        at.sort_unstable();
        let mut grown: Vec<(u32, u32)> = Vec::new();
        for left in at {
            let l = self.symbols[left as usize];
            if l.id != pair.0 || l.next == NONE {
                continue;
            }
            let right = l.next;
            let r = self.symbols[right as usize];
            if r.id != pair.1 {
                continue;
            }
            let weight = self.weights[l.word as usize];
            if l.prev != NONE {
                let p = self.symbols[l.prev as usize].id;
                self.remove((p, pair.0), weight);
                if self.add((p, id), weight, l.prev) {
                    grown.push((p, id));
                }
            }
            if r.next != NONE {
                let n = self.symbols[r.next as usize].id;
                self.remove((pair.1, n), weight);
                if self.add((id, n), weight, left) {
                    grown.push((id, n));
                }
                self.symbols[r.next as usize].prev = left;
            }
            self.symbols[left as usize].id = id;
            self.symbols[left as usize].next = r.next;
            self.symbols[right as usize].id = NONE;
        }
        grown.sort_unstable();
        grown.dedup();
        for pair in grown {
            self.push(pair);
        }
    }
}

/// A JSON value that keeps object keys in file order. `serde_json::Value` sorts them unless
/// serde_json's `preserve_order` feature is on (it is not, here or in dnaflow), which would
/// reorder the vocabulary and every section of the file.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The `type` of a tokenizer component.
    fn type_name(&self) -> Option<&str> {
        self.get("type").and_then(Json::as_str)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => items.serialize(serializer),
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Instant;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::BpeTrainerBuilder;
    use tokenizers::models::unigram::Unigram;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
        SplitDelimiterBehavior, TokenizerBuilder,
    };

    const ENGLISH: &[&str] = &[
        "In the beginning God created the heaven and the earth.",
        "And the earth was without form, and void; and darkness was upon the face of the deep.",
        "And God said, Let there be light: and there was light.",
        "And God saw the light, that it was good: and God divided the light from the darkness.",
        "And God called the light Day, and the darkness he called Night.",
        "And the evening and the morning were the first day.",
        "The quick brown fox jumps over the lazy dog, 42 times in 2024.",
        "A Cat, a Goat and a Tiger walked along the river at night.",
        "Genes are made of DNA; the bases are A, C, G and T.",
        "Proteins fold into shapes that decide what they do in the cell.",
    ];
    const HELD_OUT_ENGLISH: &str = "And God made the firmament, and divided the waters.";
    const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// A BPE model trained on `ENGLISH`, as JSON.
    fn train_english(pre: PreTokenizerWrapper, alphabet: HashSet<char>, size: usize) -> Value {
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(pre))
        .build()
        .unwrap();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(size)
            .min_frequency(1)
            .initial_alphabet(alphabet)
            .show_progress(false)
            .build();
        tokenizer.train(&mut trainer, ENGLISH.iter()).unwrap();
        serde_json::to_value(tokenizer.get_model()).unwrap()
    }

    /// A SentencePiece-style base as transformers converts LLaMA: `<unk> <s> </s>` at ids 0-2,
    /// `<0x00>`…`<0xFF>`, then the English pieces; Metaspace pre-tokenizer (Mistral's, no
    /// split) or, `legacy`, a Prepend + Replace normalizer.
    fn spm_base(legacy: bool) -> String {
        let metaspace = Metaspace::new('▁', PrependScheme::Always, true);
        let trained = train_english(metaspace.into(), "ACGT".chars().collect(), 300);
        let mut pieces: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let mut english: Vec<(&String, u64)> = trained["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k, v.as_u64().unwrap()))
            .collect();
        english.sort_by_key(|(_, id)| *id);
        pieces.extend(english.into_iter().map(|(k, _)| k.clone()));
        let vocab: serde_json::Map<String, Value> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), json!(i)))
            .collect();
        let model = json!({
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": trained["merges"],
        });
        let bpe: BPE = serde_json::from_str(&model.to_string()).unwrap();
        let mut tokenizer = Tokenizer::new(bpe);
        if legacy {
            let normalizer = NormalizerSequence::new(vec![
                Prepend::new("▁".into()).into(),
                Replace::new(" ", "▁").unwrap().into(),
            ]);
            tokenizer.with_normalizer(Some(normalizer));
        } else {
            let metaspace = Metaspace::new('▁', PrependScheme::First, false);
            tokenizer.with_pre_tokenizer(Some(metaspace));
        }
        tokenizer.with_decoder(Some(DecoderSequence::new(vec![
            Replace::new("▁", " ").unwrap().into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
            Strip::new(' ', 1, 0).into(),
        ])));
        let template = TemplateProcessing::builder()
            .try_single("<s> $A")
            .unwrap()
            .special_tokens(vec![("<s>", 1)])
            .build()
            .unwrap();
        tokenizer.with_post_processor(Some(template));
        let specials = ["<unk>", "<s>", "</s>"].map(|s| AddedToken::from(s, true));
        tokenizer.add_special_tokens(&specials);
        tokenizer.to_string(true).unwrap()
    }

    /// A LLaMA-3-style base: Split(LLaMA-3 regex) + ByteLevel, `ignore_merges`, and two
    /// special tokens as added tokens above the model's vocab.
    fn byte_level_base() -> String {
        let pre: PreTokenizerWrapper = PreSequence::new(vec![
            Split::new(
                SplitPattern::Regex(LLAMA3_REGEX.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap()
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into();
        let mut model = train_english(
            pre.clone(),
            ByteLevel::alphabet().into_iter().collect(),
            400,
        );
        model["ignore_merges"] = json!(true);
        let bpe: BPE = serde_json::from_str(&model.to_string()).unwrap();
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let specials = ["<|begin_of_text|>", "<|end_of_text|>"].map(|s| AddedToken::from(s, true));
        tokenizer.add_special_tokens(&specials);
        let bos = tokenizer.token_to_id("<|begin_of_text|>").unwrap();
        let template = TemplateProcessing::builder()
            .try_single("<|begin_of_text|> $A")
            .unwrap()
            .special_tokens(vec![("<|begin_of_text|>", bos)])
            .build()
            .unwrap();
        tokenizer.with_post_processor(Some(template));
        tokenizer.to_string(true).unwrap()
    }

    /// Deterministic DNA: random bases with frequent motifs, so merges have something to learn.
    fn dna(seed: u64, lines: usize, len: usize) -> Vec<String> {
        const MOTIFS: [&str; 4] = ["TATAAAAG", "GAATTCCG", "CCGCGGTA", "ATGGCGCATT"];
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..lines)
            .map(|_| {
                let mut line = String::new();
                while line.len() < len {
                    let r = next();
                    if r % 10 < 3 {
                        line.push_str(MOTIFS[(r >> 8) as usize % MOTIFS.len()]);
                    } else {
                        line.push(b"ACGT"[(r >> 8) as usize % 4] as char);
                    }
                }
                line.truncate(len);
                line
            })
            .collect()
    }

    fn opts(new_pieces: usize, min_frequency: u64) -> ExtendOptions {
        ExtendOptions {
            new_pieces,
            min_frequency,
        }
    }

    fn refs(lines: &[String]) -> Vec<&str> {
        lines.iter().map(String::as_str).collect()
    }

    /// Texts that exercise the edges: special tokens, a character the SPM base has no piece
    /// for (byte fallback), spaces, digits and newlines between DNA words.
    fn mixed_texts() -> Vec<String> {
        let mut texts = dna(7, 40, 120);
        texts.push(format!("{}<s>{}", texts[0], texts[1]));
        texts.push(format!("{}<|end_of_text|>{}", texts[2], texts[3]));
        texts.push(format!("{}Ж{} {}", texts[4], texts[5], texts[6]));
        texts.push(format!("{} 123 {}\n{}", texts[7], texts[8], texts[9]));
        texts
    }

    /// A BPE learned naively on the base tokenizer's own `encode` (full recount per merge,
    /// each candidate checked with a freshly built model): what `extend` must reproduce.
    fn reference(base: &str, texts: &[&str], o: &ExtendOptions) -> (Vec<String>, Vec<String>) {
        let tokenizer = Tokenizer::from_str(base).unwrap();
        let doc: Value = serde_json::from_str(base).unwrap();
        let mut model = doc["model"].clone();
        model["ignore_merges"] = json!(false);
        let added: Vec<String> = doc["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["content"].as_str().unwrap().to_string())
            .collect();
        let unk = model["unk_token"].as_str().map(String::from);
        let frozen = |s: &String| is_byte_piece(s) || added.contains(s) || unk.as_ref() == Some(s);
        let mut known: HashSet<String> = model["vocab"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        known.extend(added.iter().cloned());
        let ids = model["vocab"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap());
        let added_ids = doc["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap());
        let first = ids.chain(added_ids).max().unwrap() + 1;
        let mut words: Vec<Vec<String>> = Vec::new();
        for text in texts {
            let enc = tokenizer.encode(*text, false).unwrap();
            let mut last = None;
            for (token, word) in enc.get_tokens().iter().zip(enc.get_word_ids()) {
                if word.is_none() || *word != last {
                    words.push(Vec::new());
                }
                last = *word;
                words.last_mut().unwrap().push(token.clone());
            }
        }
        let (mut pieces, mut rejected) = (Vec::<String>::new(), Vec::<String>::new());
        let mut skipped: HashSet<(String, String)> = HashSet::new();
        while pieces.len() < o.new_pieces {
            let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
            for w in &words {
                for p in w.windows(2) {
                    let pair = (p[0].clone(), p[1].clone());
                    if !frozen(&p[0]) && !frozen(&p[1]) && !skipped.contains(&pair) {
                        *counts.entry(pair).or_default() += 1;
                    }
                }
            }
            let best = counts
                .into_iter()
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)));
            let Some(((a, b), count)) = best else { break };
            if count < o.min_frequency.max(1) {
                break;
            }
            let piece = format!("{a}{b}");
            if known.contains(&piece) {
                skipped.insert((a, b));
                continue;
            }
            let mut trial = model.clone();
            let id = first + pieces.len() as u64;
            trial["vocab"][piece.as_str()] = json!(id);
            trial["merges"].as_array_mut().unwrap().push(json!([a, b]));
            let bpe: BPE = serde_json::from_str(&trial.to_string()).unwrap();
            let got: Vec<String> = bpe
                .tokenize(&piece)
                .unwrap()
                .into_iter()
                .map(|t| t.value)
                .collect();
            if got != [piece.clone()] {
                rejected.push(piece);
                skipped.insert((a, b));
                continue;
            }
            model = trial;
            known.insert(piece.clone());
            for w in &mut words {
                let mut i = 0;
                while i + 1 < w.len() {
                    if w[i] == a && w[i + 1] == b {
                        w[i] = piece.clone();
                        w.remove(i + 1);
                    }
                    i += 1;
                }
            }
            pieces.push(piece);
        }
        let mut seen = HashSet::new();
        rejected.retain(|r| !pieces.contains(r) && seen.insert(r.clone()));
        (pieces, rejected)
    }

    /// Rule 2: the base is untouched, new ids and merges come after it, in its merges format.
    fn assert_appended(base: &str, ext: &Extension) {
        let b: Value = serde_json::from_str(base).unwrap();
        let e: Value = serde_json::from_str(&ext.tokenizer_json).unwrap();
        for key in [
            "version",
            "truncation",
            "padding",
            "added_tokens",
            "normalizer",
        ] {
            assert_eq!(b[key], e[key], "{key}");
        }
        for key in ["pre_tokenizer", "post_processor", "decoder"] {
            assert_eq!(b[key], e[key], "{key}");
        }
        for key in [
            "type",
            "dropout",
            "unk_token",
            "continuing_subword_prefix",
            "end_of_word_suffix",
            "fuse_unk",
            "byte_fallback",
            "ignore_merges",
        ] {
            assert_eq!(b["model"][key], e["model"][key], "model.{key}");
        }
        let (bv, ev) = (
            b["model"]["vocab"].as_object().unwrap(),
            e["model"]["vocab"].as_object().unwrap(),
        );
        for (piece, id) in bv {
            assert_eq!(ev[piece], *id, "{piece} moved");
        }
        let base_max = bv
            .values()
            .chain(
                b["added_tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| &t["id"]),
            )
            .map(|v| v.as_u64().unwrap())
            .max()
            .unwrap();
        assert_eq!(u64::from(ext.first_new_id), base_max + 1);
        // Added tokens outside the model's vocab join it at their ids, when pieces are added.
        let mut outside = 0;
        for token in b["added_tokens"].as_array().unwrap() {
            let content = token["content"].as_str().unwrap();
            if !bv.contains_key(content) && !ext.added.is_empty() {
                assert_eq!(ev[content], token["id"], "{content}");
                outside += 1;
            }
        }
        assert_eq!(ev.len(), bv.len() + outside + ext.added.len());
        for (i, piece) in ext.added.iter().enumerate() {
            assert_eq!(ev[piece], json!(ext.first_new_id as usize + i), "{piece}");
        }
        let (bm, em) = (
            b["model"]["merges"].as_array().unwrap(),
            e["model"]["merges"].as_array().unwrap(),
        );
        assert_eq!(em.len(), bm.len() + ext.added.len());
        assert_eq!(&em[..bm.len()], &bm[..]);
        for (merge, piece) in em[bm.len()..].iter().zip(&ext.added) {
            let (a, b) = match merge {
                Value::String(s) => {
                    assert!(bm[0].is_string(), "the base writes merges as pairs");
                    let (a, b) = s.split_once(' ').unwrap();
                    (a.to_string(), b.to_string())
                }
                Value::Array(p) => {
                    assert!(bm[0].is_array(), "the base writes merges as strings");
                    (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                    )
                }
                other => panic!("merge {other}"),
            };
            assert_eq!(format!("{a}{b}"), *piece);
        }
        // Loaded, every id is the file's: added tokens keep theirs, new pieces have theirs.
        let tokenizer = Tokenizer::from_str(&ext.tokenizer_json).unwrap();
        for token in b["added_tokens"].as_array().unwrap() {
            let content = token["content"].as_str().unwrap();
            let id = token["id"].as_u64().unwrap() as u32;
            assert_eq!(tokenizer.token_to_id(content), Some(id), "{content}");
            assert_eq!(tokenizer.id_to_token(id).as_deref(), Some(content));
        }
        for (i, piece) in ext.added.iter().enumerate() {
            let id = ext.first_new_id + i as u32;
            assert_eq!(tokenizer.token_to_id(piece), Some(id), "{piece}");
            assert_eq!(tokenizer.id_to_token(id).as_ref(), Some(piece));
        }
        assert_eq!(
            tokenizer.get_vocab_size(true),
            ext.first_new_id as usize + ext.added.len()
        );
        // `tokenizers` saves the extension as it is written, when it saves the base so.
        let pretty = is_pretty(base);
        let saved = |json: &str| {
            Tokenizer::from_str(json)
                .unwrap()
                .to_string(pretty)
                .unwrap()
        };
        if saved(base) == base {
            assert_eq!(saved(&ext.tokenizer_json), ext.tokenizer_json);
        }
        // Byte for byte: cut the new entries off again and the base's text comes back.
        let mut root: Json = serde_json::from_str(&ext.tokenizer_json).unwrap();
        let shape = BaseShape::read(&serde_json::from_str(base).unwrap()).unwrap();
        let text = write_extension(&mut root, &shape, &[], is_pretty(base)).unwrap();
        assert_eq!(text, base);
    }

    /// Rule 3: every new piece is spelled as itself, with and without `ignore_merges`.
    fn assert_spelled(ext: &Extension) {
        let tokenizer = Tokenizer::from_str(&ext.tokenizer_json).unwrap();
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            panic!("not BPE")
        };
        let mut merges_only = bpe.clone();
        merges_only.ignore_merges = false;
        for (i, piece) in ext.added.iter().enumerate() {
            let id = ext.first_new_id + i as u32;
            for model in [bpe, &merges_only] {
                let ids: Vec<u32> = model
                    .tokenize(piece)
                    .unwrap()
                    .iter()
                    .map(|t| t.id)
                    .collect();
                assert_eq!(ids, [id], "{piece}");
            }
        }
    }

    fn count(tokenizer: &Tokenizer, texts: &[&str]) -> usize {
        texts
            .iter()
            .map(|t| tokenizer.encode(*t, false).unwrap().len())
            .sum()
    }

    fn round_trip(tokenizer: &Tokenizer, text: &str) -> String {
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        tokenizer.decode(&ids, false).unwrap()
    }

    /// Rule 4: English no worse (sentence by sentence), DNA clearly better.
    fn assert_compresses(base: &str, ext: &Extension, english: &[&str], dna: &[&str], ratio: f64) {
        let before = Tokenizer::from_str(base).unwrap();
        let after = Tokenizer::from_str(&ext.tokenizer_json).unwrap();
        for text in english {
            assert!(count(&after, &[text]) <= count(&before, &[text]), "{text}");
            assert_eq!(round_trip(&after, text), round_trip(&before, text));
        }
        let (b, a) = (count(&before, dna), count(&after, dna));
        println!(
            "DNA tokens: base {b}, extended {a} ({:.2})",
            a as f64 / b as f64
        );
        assert!(
            (a as f64) < ratio * b as f64,
            "DNA: {a} tokens extended, {b} base"
        );
        assert_eq!(round_trip(&after, dna[0]), dna[0]);
    }

    fn check_all(base: &str, format: BaseFormat) {
        let texts = mixed_texts();
        let ext = extend(base, &refs(&texts), &opts(60, 2)).unwrap();
        assert_eq!(ext.format, format);
        assert_eq!(ext.added.len(), 60);
        assert_appended(base, &ext);
        assert_spelled(&ext);
        let held_out = dna(99, 20, 120);
        let english: Vec<&str> = ENGLISH.iter().copied().chain([HELD_OUT_ENGLISH]).collect();
        assert_compresses(base, &ext, &english, &refs(&held_out), 0.8);
        // Rule 1, against a naive BPE on the base's own encodings.
        let (pieces, rejected) = reference(base, &refs(&texts), &opts(60, 2));
        assert_eq!(ext.added, pieces);
        assert_eq!(ext.dropped, rejected);
        for piece in &ext.added {
            for frozen in ["<0x", "<s>", "<unk>", "<|", "Ж"] {
                assert!(!piece.contains(frozen), "{piece} holds {frozen}");
            }
        }
        // Reproducible.
        assert_eq!(extend(base, &refs(&texts), &opts(60, 2)).unwrap(), ext);
    }

    #[test]
    fn extends_a_sentencepiece_base_with_a_metaspace_pre_tokenizer() {
        check_all(&spm_base(false), BaseFormat::SentencePiece);
    }

    #[test]
    fn extends_a_sentencepiece_base_with_a_prepend_replace_normalizer() {
        check_all(&spm_base(true), BaseFormat::SentencePiece);
    }

    #[test]
    fn extends_a_byte_level_base() {
        let base = byte_level_base();
        check_all(&base, BaseFormat::ByteLevel);
        let ext = extend(&base, &refs(&mixed_texts()), &opts(60, 2)).unwrap();
        // New ids start above the special tokens, which stay added tokens.
        let tokenizer = Tokenizer::from_str(&base).unwrap();
        assert_eq!(
            ext.first_new_id,
            tokenizer.token_to_id("<|end_of_text|>").unwrap() + 1
        );
        // Pre-tokenizer words start at a space: a piece holds `Ġ` (space) only in front.
        assert!(
            ext.added
                .iter()
                .all(|p| !p.chars().skip(1).any(|c| c == 'Ġ'))
        );
    }

    #[test]
    fn words_are_the_base_pre_tokenizers() {
        // Byte-level splits " ACGT…" from "ACGT…": learned pieces include ones that start with
        // the space the pre-tokenizer keeps in front of a word, Metaspace's `▁` likewise.
        let words: Vec<String> = dna(3, 30, 60);
        let text = words.join(" ");
        let ext = extend(&byte_level_base(), &[&text], &opts(100, 2)).unwrap();
        assert!(
            ext.added.iter().any(|p| p.starts_with('Ġ')),
            "{:?}",
            ext.added
        );
        let ext = extend(&spm_base(false), &refs(&words), &opts(100, 2)).unwrap();
        assert!(
            ext.added.iter().any(|p| p.starts_with('▁')),
            "{:?}",
            ext.added
        );
    }

    #[test]
    fn keeps_legacy_string_merges() {
        let base = spm_base(false);
        let mut doc: Value = serde_json::from_str(&base).unwrap();
        let legacy: Vec<Value> = doc["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                json!(format!(
                    "{} {}",
                    m[0].as_str().unwrap(),
                    m[1].as_str().unwrap()
                ))
            })
            .collect();
        doc["model"]["merges"] = Value::Array(legacy);
        let base = serde_json::to_string(&doc).unwrap();
        let ext = extend(&base, &refs(&dna(5, 30, 100)), &opts(30, 2)).unwrap();
        assert!(
            !ext.tokenizer_json.contains("\n"),
            "compact in, compact out"
        );
        assert_appended(&base, &ext);
        assert_spelled(&ext);
    }

    #[test]
    fn stops_at_the_count_or_the_least_frequency() {
        let base = spm_base(false);
        let texts = dna(11, 30, 100);
        assert_eq!(
            extend(&base, &refs(&texts), &opts(7, 2))
                .unwrap()
                .added
                .len(),
            7
        );
        let ext = extend(&base, &refs(&texts), &opts(10_000, 1_000_000)).unwrap();
        assert!(ext.added.is_empty());
        assert_eq!(ext.tokenizer_json, base);
        // Each pair seen once: min_frequency 2 learns nothing; seen twice, it is learned.
        let ext = extend(&base, &["AC", "GT"], &opts(10, 2)).unwrap();
        assert!(ext.added.is_empty());
        let ext = extend(&base, &["AC", "AC"], &opts(10, 2)).unwrap();
        assert_eq!(ext.added, ["▁AC"]);
    }

    #[test]
    fn drops_pieces_that_do_not_spell_themselves() {
        // A model that marks word ends (`</w>`) cannot spell a mid-word piece alone.
        let base = spm_base(false);
        let mut doc: Value = serde_json::from_str(&base).unwrap();
        doc["model"]["end_of_word_suffix"] = json!("</w>");
        let base = serde_json::to_string_pretty(&doc).unwrap();
        let ext = extend(&base, &refs(&dna(5, 20, 80)), &opts(20, 2)).unwrap();
        assert!(!ext.dropped.is_empty());
        assert!(ext.added.iter().all(|p| !ext.dropped.contains(p)));
        assert_spelled(&ext);
    }

    #[test]
    fn prune_removes_what_a_failing_piece_makes() {
        let m = |a: &str, b: &str| Learned {
            a: Rc::from(a),
            b: Rc::from(b),
            piece: Rc::from(format!("{a}{b}").as_str()),
        };
        let mut learned = vec![
            m("A", "B"),
            m("C", "D"),
            m("AB", "C"),
            m("ABC", "D"),
            m("G", "CD"),
        ];
        let failing: HashSet<Rc<str>> = [Rc::from("AB")].into_iter().collect();
        assert_eq!(prune(&mut learned, &failing), ["AB", "ABC", "ABCD"]);
        assert_eq!(learned, [m("C", "D"), m("G", "CD")]);
    }

    #[test]
    fn refuses_bases_that_are_not_bpe() {
        let dna = ["ACGT"];
        for (json, name) in [
            (
                Tokenizer::new(WordPiece::default())
                    .to_string(false)
                    .unwrap(),
                "WordPiece",
            ),
            (
                Tokenizer::new(WordLevel::default())
                    .to_string(false)
                    .unwrap(),
                "WordLevel",
            ),
            (
                Tokenizer::new(Unigram::default()).to_string(false).unwrap(),
                "Unigram",
            ),
        ] {
            let err = extend(&json, &dna, &opts(10, 2)).unwrap_err();
            assert!(
                matches!(&err, ExtendError::NotBpe { found } if found == name),
                "{err}"
            );
            let message = err.to_string();
            assert!(
                message.contains("must be a BPE") && message.contains(name),
                "{message}"
            );
        }
    }

    #[test]
    fn refuses_unknown_formats_and_no_text() {
        let mut doc: Value = serde_json::from_str(&spm_base(false)).unwrap();
        doc["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "Digits", "individual_digits": true}]});
        let base = serde_json::to_string(&doc).unwrap();
        let err = extend(&base, &["ACGT"], &opts(10, 2)).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, ExtendError::UnknownFormat { .. }),
            "{message}"
        );
        assert!(
            message.contains("pre_tokenizer Sequence[Whitespace, Digits], normalizer none"),
            "{message}"
        );
        let base = spm_base(true);
        assert!(matches!(
            extend(&base, &[], &opts(10, 2)),
            Err(ExtendError::NoText)
        ));
        assert!(matches!(
            extend(&base, &["", ""], &opts(10, 2)),
            Err(ExtendError::NoText)
        ));
        assert!(matches!(
            extend("{", &["A"], &opts(10, 2)),
            Err(ExtendError::Json(_))
        ));
        assert!(matches!(
            extend("{}", &["A"], &opts(10, 2)),
            Err(ExtendError::Tokenizers(_))
        ));
    }

    /// Real LLaMA-family bases, when `EXTEND_BASES` names the folder holding `spm/` and
    /// `bytelevel/` (DNA from `../corpus.txt` and `../heldout.txt`, English from
    /// `heldout_english.txt`); also times 2 MB of DNA to 2,000 pieces.
    #[test]
    fn extends_real_bases() {
        let Ok(dir) = std::env::var("EXTEND_BASES") else {
            println!("skipped: set EXTEND_BASES to tests/fixtures/tokenizers/llama to run");
            return;
        };
        let dir = std::path::Path::new(&dir);
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let corpus = read(dir.join("../corpus.txt"));
        let heldout = read(dir.join("../heldout.txt"));
        let english = read(dir.join("heldout_english.txt"));
        let corpus: Vec<&str> = corpus.lines().collect();
        let heldout: Vec<&str> = heldout.lines().collect();
        let english: Vec<&str> = english.lines().collect();
        let big = dna(2024, 10_000, 200);
        let big_one = big.join("\n");
        for (name, format) in [
            ("spm", BaseFormat::SentencePiece),
            ("bytelevel", BaseFormat::ByteLevel),
        ] {
            let base = read(dir.join(name).join("tokenizer.json"));
            let clock = Instant::now();
            let ext = extend(&base, &corpus, &opts(500, 2)).unwrap();
            println!(
                "{name}: {} pieces in {:.2?} (first {:?}, dropped {})",
                ext.added.len(),
                clock.elapsed(),
                &ext.added[..5.min(ext.added.len())],
                ext.dropped.len()
            );
            assert_eq!(ext.format, format);
            assert_appended(&base, &ext);
            assert_spelled(&ext);
            assert_compresses(&base, &ext, &english, &heldout, 0.9);
            for (label, texts) in [
                ("10,000 lines", refs(&big)),
                ("one text", vec![big_one.as_str()]),
            ] {
                let clock = Instant::now();
                let ext = extend(&base, &texts, &opts(2000, 2)).unwrap();
                println!(
                    "{name}, 2 MB DNA as {label}: {} pieces in {:.2?}, dropped {}",
                    ext.added.len(),
                    clock.elapsed(),
                    ext.dropped.len()
                );
                assert_eq!(ext.added.len(), 2000);
            }
        }
    }
}
