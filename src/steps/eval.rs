//! `eval.lm` (loss, perplexity and bits per base of a trained model on held-out sequences) and
//! `eval.markov` (the order-k Markov chain every DNA language model has to beat).

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::model::{
    encode_table, load_model, load_model_vocab, mask_probability, objective_for, rows_for,
};
use super::table::for_each_sequence;
use super::tokenizer::{read_sequences, sequence};
use super::train_options::{batch_size, cpu, resolve_device, seed};
use super::vocab::check_unknown;
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::device::on_device;
use crate::models::{DeviceSpec, Precision};
use crate::train;

/// Parameters of `eval.lm`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LmParams {
    /// A model directory (HF layout: config.json, model.safetensors, tokenizer.json).
    model: InputPath,
    /// Held-out sequences: a table or a `.txt` file.
    data: InputPath,
    /// Column holding the sequences, for table inputs.
    #[serde(default = "sequence")]
    column: String,
    /// Tokenizer, when the model directory has none.
    tokenizer: Option<InputPath>,
    /// Tokens per row (default: the model's position table, at most 512).
    seq_len: Option<usize>,
    /// Rows per forward pass.
    #[serde(default = "batch_size")]
    batch_size: usize,
    /// Evaluate at most this many sequences (0: all).
    #[serde(default)]
    max_sequences: usize,
    /// Masked LM: share of tokens masked (fixed by `seed`, so scores repeat).
    #[serde(default = "mask_probability")]
    mask_probability: f64,
    /// Seeds which tokens a masked LM hides.
    #[serde(default = "seed")]
    seed: u64,
    /// `metrics.json` of an `eval.markov` step, or of another model's `eval.lm` on the same
    /// data: reported beside ours, with the gain in bits/base (positive: ours is better).
    baseline: Option<InputPath>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    device: String,
}

pub static LM: StepKind = StepKind {
    name: "eval.lm",
    version: 3,
    summary: "loss, perplexity and bits per base of a GPT-2/BERT model on held-out sequences",
    outputs: &[],
    schema: |g| g.subschema_for::<LmParams>(),
    check: |with| {
        let p = params::<LmParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        if !(p.mask_probability > 0.0 && p.mask_probability < 1.0) {
            return Err(format!(
                "`mask_probability` must be between 0 and 1 (the share of tokens a masked LM \
                 hides), not {}",
                p.mask_probability
            ));
        }
        Ok(())
    },
    run: eval_lm,
};

fn eval_lm(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: LmParams = params(ctx.with).map_err(StepError::new)?;
    let (device, _) = resolve_device(ctx, &p.device, "f32")?;
    let dir = p.model.path().to_path_buf();
    let vocab = load_model_vocab(p.tokenizer.as_ref().unwrap_or(&p.model).path(), &dir)?;
    let seqs = read_sequences(p.data.path(), &p.column, p.max_sequences)?;
    let docs = encode_table(&vocab, p.data.path(), &seqs)?;
    let ids: Vec<&[u32]> = docs.iter().map(|r| r.ids.as_slice()).collect();
    let data = p.data.path().display().to_string();
    let unk = check_unknown(&vocab, &seqs, &ids, &|i| {
        format!("{data}: sequence {}", i + 1)
    })?;
    let eval = on_device!(device, Precision::F32, |dev: B| {
        let model = load_model::<B>(&dir, &dev)?;
        let config = &model.spec().config;
        vocab.check_fits(config.vocab_size(), &dir)?;
        if model.spec().task != crate::models::Task::Lm {
            return Err(StepError::new(format!(
                "{}: eval.lm scores a language model; this one has a {} head (score its \
                 predictions with eval.classify or eval.regress)",
                dir.display(),
                model.spec().task.name()
            )));
        }
        let objective = objective_for(config, &vocab, p.mask_probability)?;
        let seq_len = p.seq_len.unwrap_or(config.max_positions().min(512));
        if seq_len > config.max_positions() {
            return Err(StepError::new(format!(
                "`seq_len` {seq_len} is longer than the model's {} positions",
                config.max_positions()
            )));
        }
        let rows = rows_for(&vocab, &docs, &objective, seq_len);
        let batches = train::eval_batches(&rows, &objective, vocab.pad, p.batch_size, p.seed);
        Ok::<_, StepError>(objective.evaluate(&model, &batches, &dev))
    })?;
    let (tokens, bases) = (eval.metric("tokens") as u64, eval.metric("bases") as u64);
    let bits_per_base = eval.metric("bits_per_base");
    writeln!(
        ctx.log,
        "{tokens} tokens, {bases} bases: loss {:.4}, bits/base {bits_per_base:.4}",
        eval.loss
    )?;
    let mut metrics = json!({
        "loss": eval.loss,
        "perplexity": eval.metric("perplexity"),
        "bits_per_base": bits_per_base,
        // The same figure, named for prose and proteins: every character a scored token spells.
        "bits_per_char": bits_per_base,
        "tokens": tokens,
        "bases": bases,
        "sequences": seqs.len(),
        // Share of the tokens the tokenizer did not know (`[UNK]`).
        "unk_rate": unk,
    });
    if let Some(path) = &p.baseline {
        let base = crate::metrics::read(path.path()).map_err(StepError::new)?;
        let Some(b) = base.get("bits_per_base").and_then(|v| v.as_f64()) else {
            return Err(StepError::new(format!(
                "{path}: no `bits_per_base` (`baseline` takes the metrics of an eval.markov or \
                 eval.lm step)"
            )));
        };
        metrics["baseline_bits_per_base"] = b.into();
        metrics["gain_bits_per_base"] = (b - bits_per_base).into();
    }
    write_metrics(ctx.out, &metrics)
}

/// Parameters of `eval.markov`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MarkovParams {
    /// Sequences to count k-mers in.
    train: InputPath,
    /// Held-out sequences to score.
    test: InputPath,
    /// Column holding the sequences, for table inputs.
    #[serde(default = "sequence")]
    column: String,
    /// Context length k (bases before the predicted one), 0–12.
    #[serde(default = "order")]
    order: usize,
    /// Pseudocount added to every count (Laplace smoothing at 1).
    #[serde(default = "alpha")]
    alpha: f64,
}

fn order() -> usize {
    5
}
fn alpha() -> f64 {
    1.0
}

pub static MARKOV: StepKind = StepKind {
    name: "eval.markov",
    version: 1,
    summary: "bits per base of an order-k Markov chain on held-out DNA: the baseline to beat",
    outputs: &[],
    schema: |g| g.subschema_for::<MarkovParams>(),
    check: |with| {
        let p = params::<MarkovParams>(with)?;
        if p.order > 12 {
            return Err(format!("`order` must be at most 12, not {}", p.order));
        }
        if p.alpha.is_nan() || p.alpha <= 0.0 {
            return Err("`alpha` must be positive".into());
        }
        Ok(())
    },
    run: markov,
};

fn base_index(b: u8) -> Option<usize> {
    match b {
        b'A' | b'a' => Some(0),
        b'C' | b'c' => Some(1),
        b'G' | b'g' => Some(2),
        b'T' | b't' => Some(3),
        _ => None,
    }
}

/// Counts of each base after each context of every order 0..=k.
struct Markov {
    k: usize,
    /// counts[o][context * 4 + base]
    counts: Vec<Vec<u32>>,
}

impl Markov {
    fn new(k: usize) -> Markov {
        Markov {
            k,
            counts: (0..=k).map(|o| vec![0; 4usize.pow(o as u32) * 4]).collect(),
        }
    }

    /// Visit every scorable base with the contexts (of each order) before it; a non-ACGT
    /// character restarts the context.
    fn walk(&self, seq: &str, mut f: impl FnMut(&[usize], usize, usize)) {
        let mut ctx = 0usize;
        let mut len = 0usize;
        let mut contexts = vec![0usize; self.k + 1];
        for &b in seq.as_bytes() {
            let Some(x) = base_index(b) else {
                len = 0;
                ctx = 0;
                continue;
            };
            let have = len.min(self.k);
            for (o, c) in contexts.iter_mut().enumerate().take(have + 1) {
                *c = ctx & ((1 << (2 * o)) - 1);
            }
            f(&contexts, have, x);
            ctx = ((ctx << 2) | x) & ((1 << (2 * self.k.max(1))) - 1);
            len += 1;
        }
    }

    fn count(&mut self, seq: &str) {
        let mut counts = std::mem::take(&mut self.counts);
        self.walk(seq, |contexts, have, x| {
            for o in 0..=have {
                counts[o][contexts[o] * 4 + x] += 1;
            }
        });
        self.counts = counts;
    }
}

fn markov(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: MarkovParams = params(ctx.with).map_err(StepError::new)?;
    let mut m = Markov::new(p.order);
    let mut train_bases = 0u64;
    for_each_sequence(p.train.path(), &p.column, |s| {
        train_bases += s.len() as u64;
        m.count(s);
    })?;
    // Bits per base at every order, contexts shorter than k (sequence starts) using their own order.
    let mut bits = vec![0.0f64; p.order + 1];
    let mut scored = 0u64;
    for_each_sequence(p.test.path(), &p.column, |s| {
        m.walk(s, |contexts, have, x| {
            for (o, total) in bits.iter_mut().enumerate() {
                let o_eff = o.min(have);
                let row = &m.counts[o_eff][contexts[o_eff] * 4..contexts[o_eff] * 4 + 4];
                let n: f64 = row.iter().map(|&c| c as f64).sum::<f64>() + 4.0 * p.alpha;
                let prob = (row[x] as f64 + p.alpha) / n;
                *total -= prob.log2();
            }
            scored += 1;
        });
    })?;
    if scored == 0 {
        return Err(StepError::new(format!(
            "{}: no A/C/G/T bases to score",
            p.test
        )));
    }
    let by_order: serde_json::Map<String, serde_json::Value> = bits
        .iter()
        .enumerate()
        .map(|(o, b)| (o.to_string(), json!(b / scored as f64)))
        .collect();
    let bpb = bits[p.order] / scored as f64;
    writeln!(
        ctx.log,
        "order {}: {bpb:.4} bits/base over {scored} held-out bases ({train_bases} training bases)",
        p.order
    )?;
    write_metrics(
        ctx.out,
        &json!({
            "order": p.order,
            "bits_per_base": bpb,
            "bases": scored,
            "train_bases": train_bases,
            "by_order": by_order,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_zero_of_uniform_dna_is_two_bits() {
        let mut m = Markov::new(2);
        m.count("ACGTACGTACGTACGT");
        // Order 2 on a periodic sequence: every context predicts one base.
        let mut bits = 0.0;
        let mut n = 0;
        m.walk("ACGTACGT", |c, have, x| {
            if have == 2 {
                let row = &m.counts[2][c[2] * 4..c[2] * 4 + 4];
                let total: u32 = row.iter().sum();
                bits -= (row[x] as f64 / total as f64).log2();
                n += 1;
            }
        });
        assert_eq!(n, 6);
        assert_eq!(bits, 0.0);
        let row0 = &m.counts[0][..4];
        assert_eq!(row0, [4, 4, 4, 4]);
    }

    #[test]
    fn ambiguous_bases_restart_the_context() {
        let m = Markov::new(3);
        let mut haves = Vec::new();
        m.walk("ACNGT", |_, have, _| haves.push(have));
        assert_eq!(haves, vec![0, 1, 0, 1]);
    }
}
