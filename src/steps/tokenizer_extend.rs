//! `tokenizer.extend`: a LLaMA-family BPE tokenizer (SentencePiece-converted as LLaMA-1/2 and
//! Mistral, or byte-level as LLaMA-3) grown with pieces learned on the workflow's DNA and
//! protein, as the tutorial's chapter 4.1 merges a DNA SentencePiece model into LLaMA's. The
//! base's ids, added tokens, normalizer, pre-tokenizer and post-processor stay as they were
//! ([`super::bpe_extend`]); the metrics say what each held-out set gained or lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokenizers::Tokenizer;

use super::bpe_extend::{ExtendOptions, extend};
use super::table::for_each_sequence;
use super::tokenizer::{sequence, tokenizer_file};
use super::{InputPath, StepContext, StepError, StepKind, params};

/// Parameters of `tokenizer.extend`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExtendParams {
    /// The base `tokenizer.json`, or the directory holding it (its `tokenizer_config.json` and
    /// `special_tokens_map.json` are copied beside the result).
    base: InputPath,
    /// Texts the new pieces are learned on: tables (parquet/csv) or `.txt` files.
    train: Vec<InputPath>,
    /// Column of the tables holding the texts.
    #[serde(default = "sequence")]
    column: String,
    /// Pieces to add (fewer when pairs run out or fall below `min_frequency`).
    #[serde(default = "new_pieces")]
    new_pieces: usize,
    /// Least count of a pair for it to become a piece.
    #[serde(default = "min_frequency")]
    min_frequency: u64,
    /// Read at most this many texts per training input (0: all).
    #[serde(default)]
    max_sequences: usize,
    /// Held-out sets by name (`dna: …`, `english: …`): tokens per text and characters per
    /// token before and after, one metric each.
    #[serde(default)]
    heldout: BTreeMap<String, InputPath>,
}

fn new_pieces() -> usize {
    1000
}
fn min_frequency() -> u64 {
    2
}

pub static EXTEND: StepKind = StepKind {
    name: "tokenizer.extend",
    version: 1,
    summary: "grow a LLaMA-family BPE tokenizer.json with DNA/protein pieces, base ids kept",
    outputs: &[("tokenizer", "tokenizer.json")],
    schema: |g| g.subschema_for::<ExtendParams>(),
    check: |with| {
        let p = params::<ExtendParams>(with)?;
        if p.train.is_empty() {
            return Err("`train` names no input to learn the new pieces on".into());
        }
        if p.new_pieces == 0 {
            return Err("`new_pieces` must be at least 1".into());
        }
        Ok(())
    },
    run,
};

/// Every text of `path` (a table's `column`, or a `.txt` file's lines), at most `max`.
fn texts(path: &Path, column: &str, max: usize) -> Result<Vec<String>, StepError> {
    let mut out = Vec::new();
    for_each_sequence(path, column, |s| {
        if max == 0 || out.len() < max {
            out.push(s.to_string());
        }
    })?;
    if out.is_empty() {
        return Err(StepError::new(format!(
            "{}: no texts in column `{column}`",
            path.display()
        )));
    }
    Ok(out)
}

/// Tokens and characters of `texts` under `tokenizer` (no special tokens added).
fn count(tokenizer: &Tokenizer, texts: &[String]) -> Result<(usize, usize), StepError> {
    let mut tokens = 0;
    let mut chars = 0;
    for t in texts {
        let enc = tokenizer
            .encode(t.as_str(), false)
            .map_err(|e| StepError::new(format!("encoding a held-out text: {e}")))?;
        tokens += enc.get_ids().len();
        chars += t.chars().count();
    }
    Ok((tokens, chars))
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ExtendParams = params(ctx.with).map_err(StepError::new)?;
    let base_path = tokenizer_file(p.base.path());
    let base_json = std::fs::read_to_string(&base_path)
        .map_err(|e| StepError::new(format!("{}: {e}", base_path.display())))?;
    let mut corpus = Vec::new();
    for input in &p.train {
        corpus.extend(texts(input.path(), &p.column, p.max_sequences)?);
    }
    let clock = Instant::now();
    let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let options = ExtendOptions {
        new_pieces: p.new_pieces,
        min_frequency: p.min_frequency,
    };
    let ext = extend(&base_json, &refs, &options)
        .map_err(|e| StepError::new(format!("{}: {e}", base_path.display())))?;
    let seconds = clock.elapsed().as_secs_f64();
    let out = ctx.out.join("tokenizer.json");
    std::fs::write(&out, &ext.tokenizer_json)?;
    crate::models::copy_tokenizer_configs(&base_path, ctx.out)
        .map_err(|e| StepError::new(e.to_string()))?;
    writeln!(
        ctx.log,
        "{:?} base {}: {} pieces added from id {} ({} dropped) in {seconds:.1} s",
        ext.format,
        base_path.display(),
        ext.added.len(),
        ext.first_new_id,
        ext.dropped.len()
    )?;

    let load = |json: &str, what: &Path| {
        json.parse::<Tokenizer>()
            .map_err(|e| StepError::new(format!("{}: {e}", what.display())))
    };
    let before = load(&base_json, &base_path)?;
    let after = load(&ext.tokenizer_json, &out)?;
    let mut metrics = json!({
        "format": format!("{:?}", ext.format),
        "pieces_added": ext.added.len(),
        "pieces_dropped": ext.dropped.len(),
        "first_new_id": ext.first_new_id,
        "vocab_before": before.get_vocab_size(true),
        "vocab_after": after.get_vocab_size(true),
        "train_texts": corpus.len(),
        "seconds": seconds,
        "longest_piece": ext.added.iter().map(|s| s.chars().count()).max().unwrap_or(0),
    });
    let round = |x: f64| (x * 1e4).round() / 1e4;
    for (name, input) in &p.heldout {
        let held = texts(input.path(), &p.column, 0)?;
        let (t0, chars) = count(&before, &held)?;
        let (t1, _) = count(&after, &held)?;
        let n = held.len() as f64;
        let m = metrics.as_object_mut().expect("object");
        m.insert(
            format!("{name}_tokens_per_text_before"),
            round(t0 as f64 / n).into(),
        );
        m.insert(
            format!("{name}_tokens_per_text_after"),
            round(t1 as f64 / n).into(),
        );
        m.insert(
            format!("{name}_chars_per_token_before"),
            round(chars as f64 / t0.max(1) as f64).into(),
        );
        m.insert(
            format!("{name}_chars_per_token_after"),
            round(chars as f64 / t1.max(1) as f64).into(),
        );
        m.insert(
            format!("{name}_token_ratio"),
            round(t1 as f64 / t0.max(1) as f64).into(),
        );
        writeln!(
            ctx.log,
            "held-out {name}: {:.1} -> {:.1} tokens per text",
            t0 as f64 / n,
            t1 as f64 / n
        )?;
    }
    super::write_metrics(ctx.out, &metrics)
}
