//! `eval.lm` (loss, perplexity and bits per base of a trained model on held-out sequences) and
//! `eval.markov` (the order-k Markov chain every DNA language model has to beat). Both write
//! each held-out sequence's bits and bases (`per_sequence.tsv`), so bits per base gets a
//! bootstrap interval over resampled sequences, and the gain of a model over its baseline one
//! over the same resampled sequences for both (paired).

use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::model::{
    encode_table, load_model, load_model_vocab, mask_probability, objective_for, read_alphabet,
    rows_with_owners,
};
use super::score::{MAX_RESAMPLES, add_interval, describe, interval, resamples};
use super::table::{for_each_sequence, table_identity};
use super::tokenizer::{read_sequences, sequence};
use super::train_options::{batch_size, cpu, resolve_device, seed};
use super::vocab::check_unknown;
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::device::on_device;
use crate::models::{DeviceSpec, Precision};
use crate::train;
use crate::train::batch::IGNORE;

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
    /// Seeds which tokens a masked LM hides, and the bootstrap's resamples.
    #[serde(default = "seed")]
    seed: u64,
    /// Resamples of the held-out sequences for the 95 % bootstrap interval of bits per base
    /// (`bits_per_base_ci95`) and of the gain over `baseline` (`gain_bits_per_base_ci95`, the
    /// same resampled sequences for both); 0: no interval.
    #[serde(default = "resamples")]
    bootstrap: usize,
    /// `metrics.json` of an `eval.markov` step, or of another model's `eval.lm` on the same
    /// data: reported beside ours, with the gain in bits/base (positive: ours is better) and,
    /// from the `per_sequence.tsv` beside it, the gain's paired bootstrap interval.
    baseline: Option<InputPath>,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    device: String,
}

pub static LM: StepKind = StepKind {
    name: "eval.lm",
    version: 5,
    summary: "loss, perplexity and bits per base (with a bootstrap 95 % interval, and of the gain over a baseline) of any language model (pseudo-perplexity for masked ones) on held-out sequences",
    outputs: &[("per_sequence", PER_SEQUENCE)],
    schema: |g| g.subschema_for::<LmParams>(),
    check: |with| {
        let p = params::<LmParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        if p.bootstrap > MAX_RESAMPLES {
            return Err(format!(
                "`bootstrap` is {}; at most {MAX_RESAMPLES} resamples (1000 is plenty for a 95 % \
                 interval)",
                p.bootstrap
            ));
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
    let alphabet = read_alphabet(&vocab, p.data.path(), &seqs, &dir)?;
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
        let (rows, owners) = rows_with_owners(&vocab, &docs, &objective, seq_len);
        let batches = train::eval_batches(&rows, &objective, vocab.pad, p.batch_size, p.seed);
        // Each labelled token's loss, summed into the held-out sequence it comes from.
        let mut per_seq = vec![SeqScore::default(); docs.len()];
        let (mut nats, mut tokens, mut bases) = (0.0f64, 0u64, 0u64);
        for (i, batch) in batches.iter().enumerate().filter(|(_, b)| b.labelled > 0) {
            let first = i * p.batch_size;
            let mut token_nats = objective.token_nats(&model, batch, &dev).into_iter();
            for (at, _) in batch
                .labels
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l != IGNORE)
            {
                let (r, j) = (first + at / batch.t, at % batch.t);
                let token = objective.scored_token(j);
                let n = token_nats.next().expect("one loss per labelled position");
                let b = rows[r].bases[token];
                let seq = &mut per_seq[owners[r][token] as usize];
                seq.bits += n / std::f64::consts::LN_2;
                seq.bases += b as f64;
                nats += n;
            }
            tokens += batch.labelled as u64;
            bases += batch.label_bases;
        }
        Ok::<_, StepError>((train::lm_evaluation(nats, tokens, bases), per_seq))
    })?;
    let (eval, per_seq) = eval;
    let (tokens, bases) = (eval.metric("tokens") as u64, eval.metric("bases") as u64);
    let bits_per_base = eval.metric("bits_per_base");
    let ci = interval(&per_seq, p.bootstrap, p.seed, pooled)?;
    writeln!(
        ctx.log,
        "{tokens} tokens, {bases} bases: loss {:.4}, bits/base {bits_per_base:.4}{}",
        eval.loss,
        describe(ci)
    )?;
    write_per_sequence(ctx.out, &per_seq)?;
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
        // The table scored, so the report shows this score beside the others of that table.
        "test_table": table_identity(p.data.path())?,
    });
    super::merge(&mut metrics, alphabet.metrics());
    add_interval(&mut metrics, "bits_per_base", ci, p.bootstrap, p.seed);
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
        if p.bootstrap > 0 {
            match paired_with_baseline(path.path(), &per_seq)? {
                Ok(pairs) => {
                    let gain_ci = interval(&pairs, p.bootstrap, p.seed, gain)?;
                    writeln!(
                        ctx.log,
                        "gain over the baseline: {:+.4} bits/base{}",
                        b - bits_per_base,
                        describe(gain_ci)
                    )?;
                    metrics["gain_bits_per_base_ci95"] = json!(gain_ci);
                }
                Err(why) => writeln!(ctx.log, "no interval on the gain: {why}")?,
            }
        }
    }
    write_metrics(ctx.out, &metrics)
}

/// Where `eval.lm` and `eval.markov` write each held-out sequence's bits and bases.
const PER_SEQUENCE: &str = "per_sequence.tsv";

/// One held-out sequence's score: the bits a model spent on it and the bases they spelled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SeqScore {
    bits: f64,
    bases: f64,
}

/// Bits per base of a sample of sequences: their bits over their bases (pooled, so a long
/// sequence weighs more), or none without a base.
fn pooled(rows: &[SeqScore]) -> Option<f64> {
    let (bits, bases) = rows
        .iter()
        .fold((0.0, 0.0), |(b, n), r| (b + r.bits, n + r.bases));
    (bases > 0.0).then(|| bits / bases)
}

/// The gain of a model over its baseline on one sample of sequences, (model, baseline) each:
/// the baseline's bits per base minus the model's (positive: the model is better).
fn gain(pairs: &[(SeqScore, SeqScore)]) -> Option<f64> {
    let (ours, base): (Vec<SeqScore>, Vec<SeqScore>) = pairs.iter().copied().unzip();
    Some(pooled(&base)? - pooled(&ours)?)
}

/// `per_sequence.tsv`: a header, then per held-out sequence (in the data's order) its number,
/// bases and bits.
fn write_per_sequence(out: &Path, rows: &[SeqScore]) -> Result<(), StepError> {
    let mut text = String::from("sequence\tbases\tbits\n");
    for (i, r) in rows.iter().enumerate() {
        text.push_str(&format!("{}\t{}\t{}\n", i + 1, r.bases, r.bits));
    }
    let path = out.join(PER_SEQUENCE);
    std::fs::write(&path, text).map_err(|e| StepError::new(format!("{}: {e}", path.display())))
}

/// The per-sequence scores beside a baseline's `metrics.json`, or why there are none.
fn read_per_sequence(metrics: &Path) -> Result<Result<Vec<SeqScore>, String>, StepError> {
    let path = metrics.with_file_name(PER_SEQUENCE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!(
                "{} has no {PER_SEQUENCE} beside it (rerun the baseline with this dnaflow)",
                metrics.display()
            )));
        }
        Err(e) => return Err(StepError::new(format!("{}: {e}", path.display()))),
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let number = |c: usize| cols.get(c).and_then(|v| v.parse::<f64>().ok());
        let (Some(bases), Some(bits)) = (number(1), number(2)) else {
            return Err(StepError::new(format!(
                "{}:{}: expected `sequence<TAB>bases<TAB>bits`, found {line:?}",
                path.display(),
                i + 1
            )));
        };
        rows.push(SeqScore { bits, bases });
    }
    Ok(Ok(rows))
}

/// Our per-sequence scores beside the baseline's, sequence by sequence, or why they cannot be
/// paired (no per-sequence file, or another number of sequences: other data).
fn paired_with_baseline(
    baseline: &Path,
    ours: &[SeqScore],
) -> Result<Result<Vec<(SeqScore, SeqScore)>, String>, StepError> {
    let base = match read_per_sequence(baseline)? {
        Ok(base) => base,
        Err(why) => return Ok(Err(why)),
    };
    if base.len() != ours.len() {
        return Ok(Err(format!(
            "the baseline scored {} sequences and this step {} (pairing needs the same held-out \
             data, all of it: leave `max_sequences` at 0)",
            base.len(),
            ours.len()
        )));
    }
    Ok(Ok(ours.iter().copied().zip(base).collect()))
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
    version: 3,
    summary: "bits per base of an order-k Markov chain on held-out DNA: the baseline to beat",
    outputs: &[("per_sequence", PER_SEQUENCE)],
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
    let mut per_seq = Vec::new();
    for_each_sequence(p.test.path(), &p.column, |s| {
        let (bits_before, scored_before) = (bits[p.order], scored);
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
        per_seq.push(SeqScore {
            bits: bits[p.order] - bits_before,
            bases: (scored - scored_before) as f64,
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
    write_per_sequence(ctx.out, &per_seq)?;
    write_metrics(
        ctx.out,
        &json!({
            "order": p.order,
            "bits_per_base": bpb,
            "test_table": table_identity(p.test.path())?,
            "bases": scored,
            "train_bases": train_bases,
            "by_order": by_order,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Interval;

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

    /// `n` sequences of 100 bases whose bits per base wander around `mean` (a fixed pattern,
    /// so the test needs no random numbers).
    fn scores(n: usize, mean: f64) -> Vec<SeqScore> {
        (0..n)
            .map(|i| SeqScore {
                bits: 100.0 * (mean + 0.2 * ((i * 7 % 13) as f64 / 12.0 - 0.5)),
                bases: 100.0,
            })
            .collect()
    }

    #[test]
    fn bits_per_base_interval_holds_the_point_and_narrows_with_more_sequences() {
        let few = scores(26, 1.9);
        let many = scores(26 * 16, 1.9);
        let point = pooled(&few).unwrap();
        let a = interval(&few, 1000, 42, pooled).unwrap().unwrap();
        let b = interval(&many, 1000, 42, pooled).unwrap().unwrap();
        assert!(a.lo() < point && point < a.hi(), "{a:?} around {point}");
        let point = pooled(&many).unwrap();
        assert!(b.lo() < point && point < b.hi(), "{b:?} around {point}");
        // 16 times the sequences: about a quarter of the width.
        let ratio = (b.hi() - b.lo()) / (a.hi() - a.lo());
        assert!((0.15..0.4).contains(&ratio), "{ratio}");
        assert_eq!(interval(&few, 0, 42, pooled).unwrap(), None);
        // Pooled: a long sequence weighs more than a short one.
        let mixed = [
            SeqScore {
                bits: 10.0,
                bases: 10.0,
            },
            SeqScore {
                bits: 300.0,
                bases: 100.0,
            },
        ];
        assert_eq!(pooled(&mixed), Some(310.0 / 110.0));
    }

    #[test]
    fn paired_gain_interval_tells_a_better_model_from_the_same_one() {
        // The baseline's sequences vary far more than the model's edge over them.
        let base = scores(40, 1.95);
        // Better on every sequence by 0.005–0.015 bits/base: 0.01 on average.
        let better: Vec<SeqScore> = base
            .iter()
            .enumerate()
            .map(|(i, s)| SeqScore {
                bits: s.bits - (1.0 + ((i * 5 % 7) as f64 / 6.0 - 0.5)),
                ..*s
            })
            .collect();
        let pairs: Vec<_> = better.iter().copied().zip(base.iter().copied()).collect();
        let point = gain(&pairs).unwrap();
        let g = interval(&pairs, 1000, 42, gain).unwrap().unwrap();
        assert!(
            0.0 < g.lo() && g.lo() < point && point < g.hi(),
            "a clear gain: {g:?}"
        );
        // Unpaired, the same 0.01 drowns in how much sequences differ.
        let (ours, theirs) = (
            interval(&better, 1000, 42, pooled).unwrap().unwrap(),
            interval(&base, 1000, 43, pooled).unwrap().unwrap(),
        );
        assert!(ours.hi() > theirs.lo(), "{ours:?} overlaps {theirs:?}");
        // The same model against itself: no gain, and 0 inside.
        let same: Vec<_> = base.iter().copied().zip(base.iter().copied()).collect();
        assert_eq!(
            interval(&same, 1000, 42, gain).unwrap(),
            Some(Interval(0.0, 0.0))
        );
        // A model as good on average, better on some sequences and worse on others.
        let noisy: Vec<_> = base
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let d = if i % 2 == 0 { 3.0 } else { -3.0 };
                (
                    SeqScore {
                        bits: s.bits + d,
                        ..*s
                    },
                    *s,
                )
            })
            .collect();
        let g = interval(&noisy, 1000, 42, gain).unwrap().unwrap();
        assert!(g.lo() < 0.0 && 0.0 < g.hi(), "{g:?}");
    }

    #[test]
    fn per_sequence_scores_round_trip_and_pair_only_on_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let rows = scores(5, 1.5);
        write_per_sequence(dir.path(), &rows).unwrap();
        let metrics = dir.path().join("metrics.json");
        assert_eq!(read_per_sequence(&metrics).unwrap(), Ok(rows.clone()));
        assert_eq!(
            paired_with_baseline(&metrics, &rows)
                .unwrap()
                .unwrap()
                .len(),
            5
        );
        let why = paired_with_baseline(&metrics, &rows[..3])
            .unwrap()
            .unwrap_err();
        assert!(why.contains("5 sequences and this step 3"), "{why}");
        let elsewhere = dir.path().join("other/metrics.json");
        let why = read_per_sequence(&elsewhere).unwrap().unwrap_err();
        assert!(why.contains("no per_sequence.tsv"), "{why}");
        std::fs::write(
            dir.path().join(PER_SEQUENCE),
            "sequence\tbases\tbits\n1\tx\t2\n",
        )
        .unwrap();
        let err = read_per_sequence(&metrics).unwrap_err().to_string();
        assert!(err.contains("per_sequence.tsv:2"), "{err}");
    }

    #[test]
    fn ambiguous_bases_restart_the_context() {
        let m = Markov::new(3);
        let mut haves = Vec::new();
        m.walk("ACNGT", |_, have, _| haves.push(have));
        assert_eq!(haves, vec![0, 1, 0, 1]);
    }
}
