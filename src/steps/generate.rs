//! `model.generate`: sample new sequences from a causal language model, with the KV cache
//! every causal architecture has; [`Continuation`] is the loop `task: text` answers with too.

use burn::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::model::load_model;
use super::tokenizer::fold_case;
use super::train_options::{cpu, resolve_device, seed};
use super::vocab::{decode, load_vocab};
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::arch::LmKind;
use crate::models::device::on_device;
use crate::models::{self, DeviceSpec, FusedOps, KvCache, Model, Precision, Task};

/// Parameters of `model.generate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GenerateParams {
    /// A GPT-2 model directory (HF layout).
    model: InputPath,
    /// Prompts (DNA); an empty prompt starts from the end-of-text token.
    #[serde(default = "empty_prompt")]
    prompts: Vec<String>,
    /// Samples per prompt.
    #[serde(default = "one")]
    samples: usize,
    /// Tokens to write after each prompt (fewer when a sample stops at end-of-text).
    #[serde(default = "max_new_tokens")]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[serde(default = "temperature")]
    temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    #[serde(default)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[serde(default = "top_p")]
    top_p: f64,
    /// Seeds the sampling (same seed, same samples).
    #[serde(default = "seed")]
    seed: u64,
    /// Stop a sample at the end-of-text token.
    #[serde(default = "yes")]
    stop_at_eos: bool,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    device: String,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn empty_prompt() -> Vec<String> {
    vec![String::new()]
}
fn max_new_tokens() -> usize {
    64
}
fn temperature() -> f64 {
    1.0
}
fn top_p() -> f64 {
    1.0
}

pub static GENERATE: StepKind = StepKind {
    name: "model.generate",
    version: 4,
    summary: "sample sequences or text from a causal model (GPT-2, LLaMA) (temperature, top-k, top-p, seed, end-of-text)",
    outputs: &[("samples", "samples.jsonl")],
    schema: |g| g.subschema_for::<GenerateParams>(),
    check: |with| {
        let p = params::<GenerateParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.temperature < 0.0 || !p.temperature.is_finite() {
            return Err("`temperature` must be 0 (greedy) or positive".into());
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err("`top_p` must be in (0, 1]".into());
        }
        if p.samples == 0 {
            return Err("`samples` must be at least 1".into());
        }
        if p.prompts.is_empty() {
            return Err(
                "`prompts` must not be empty (an empty string starts from end-of-text)".into(),
            );
        }
        if p.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1 (0 would write empty samples)".into());
        }
        Ok(())
    },
    run: generate,
};

/// Choose the next token from logits: temperature, then top-k, then top-p (nucleus).
pub(crate) fn sample_token(
    logits: &[f32],
    temperature: f64,
    top_k: usize,
    top_p: f64,
    rng: &mut impl rand::Rng,
) -> u32 {
    if temperature == 0.0 {
        return logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k.max(1));
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut r = rng.random::<f64>() * kept;
    for (n, w) in weights[..keep].iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return order[n] as u32;
        }
    }
    order[keep - 1] as u32
}

/// How the next token is chosen: `temperature` 0 is greedy.
pub(crate) struct Sampler {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
}

/// One round of generation: how far rows may grow and when they stop.
pub(crate) struct Continuation<'a> {
    /// New tokens per row, at most.
    pub max_new: usize,
    /// The model's positions: past them the window slides and is fed afresh.
    pub window: usize,
    /// A row stops at this token (end-of-text), which is kept as its last token.
    pub stop: Option<u32>,
    /// Appended to rows that stopped while others go on.
    pub pad: u32,
    /// Set when the run is cancelled: generation stops early.
    pub cancelled: &'a std::sync::atomic::AtomicBool,
}

impl Continuation<'_> {
    /// Extend rows of equal length by sampled tokens, all rows in one batch. Keys and values of
    /// the positions fed so far are kept: the prompt goes in once, then one token per step.
    pub(crate) fn extend<B: FusedOps>(
        &self,
        model: &Model<B>,
        rows: &mut [Vec<u32>],
        sampler: &Sampler,
        rng: &mut impl rand::Rng,
        dev: &B::Device,
    ) {
        let n = rows.len();
        let mut done = vec![false; n];
        let mut cache = KvCache::default();
        for _ in 0..self.max_new {
            if n == 0
                || done.iter().all(|d| *d)
                || self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
            {
                break;
            }
            if cache.len() + 1 > self.window {
                cache = KvCache::default();
            }
            let t = if cache.is_empty() {
                rows[0].len().min(self.window)
            } else {
                1
            };
            let flat: Vec<i64> = rows
                .iter()
                .flat_map(|r| r[r.len() - t..].iter().map(|&i| i as i64))
                .collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, t]), dev);
            let logits = model
                .next_logits(ids, &mut cache)
                .expect("generation runs causal language models (checked by the caller)"); // [n, 1, V]
            let (_, host) = models::weights::host(logits);
            let v = host.len() / n;
            for (s, row) in rows.iter_mut().enumerate() {
                if done[s] {
                    row.push(self.pad);
                    continue;
                }
                let next = sample_token(
                    &host[s * v..(s + 1) * v],
                    sampler.temperature,
                    sampler.top_k,
                    sampler.top_p,
                    rng,
                );
                row.push(next);
                if Some(next) == self.stop {
                    done[s] = true;
                }
            }
        }
    }
}

fn generate(ctx: &mut StepContext) -> Result<(), StepError> {
    use rand::SeedableRng;
    let p: GenerateParams = params(ctx.with).map_err(StepError::new)?;
    let (device, _) = resolve_device(ctx, &p.device, "f32")?;
    let vocab = load_vocab(p.model.path())?;
    let dir = p.model.path().to_path_buf();
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut lines = String::new();
    let (mut total_bases, mut gc, mut eos_stops, mut n) = (0usize, 0usize, 0usize, 0usize);
    on_device!(device, Precision::F32, |dev: B| {
        let loaded = load_model::<B>(&dir, &dev)?;
        let config = loaded.spec().config.clone();
        if config.architecture().lm != LmKind::Causal || loaded.spec().task != Task::Lm {
            return Err(StepError::new(format!(
                "{}: model.generate needs a causal language model, this is {} {}",
                dir.display(),
                config.name(),
                loaded.spec().class()
            )));
        }
        vocab.check_fits(config.vocab_size(), &dir)?;
        let model = &loaded;
        let window = config.max_positions();
        for prompt in &p.prompts {
            // Case as the sequences the model trained on: soft-masked `atg` is `ATG`.
            let folded = fold_case(prompt);
            let unknown = vocab.unknown_chars(&folded)?;
            if !unknown.is_empty() {
                return Err(StepError::new(format!(
                    "`prompts`: `{prompt}` has letters the model's tokenizer {} does not know: \
                     `{}`; write prompts in the alphabet the model was trained on",
                    vocab.path.display(),
                    unknown.iter().collect::<String>()
                )));
            }
            let enc = vocab
                .tokenizer
                .encode(folded.as_str(), false)
                .map_err(|e| StepError::new(format!("tokenizing the prompt: {e}")))?;
            let mut start: Vec<u32> = enc.get_ids().to_vec();
            if start.is_empty() {
                start.push(vocab.eos.ok_or_else(|| {
                    StepError::new("an empty prompt needs an end-of-text token in the tokenizer")
                })?);
            }
            let mut rows: Vec<Vec<u32>> = vec![start.clone(); p.samples];
            let sampler = Sampler {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
            };
            let stop = vocab.eos.filter(|_| p.stop_at_eos);
            let run = Continuation {
                max_new: p.max_new_tokens,
                window,
                stop,
                pad: vocab.pad,
                cancelled: ctx.cancelled,
            };
            run.extend(model, &mut rows, &sampler, &mut rng, &dev);
            for (s, row) in rows.iter().enumerate() {
                let mut new: Vec<u32> = row[start.len()..].to_vec();
                let stopped = match new
                    .iter()
                    .position(|&i| Some(i) == vocab.eos && p.stop_at_eos)
                {
                    Some(at) => {
                        new.truncate(at);
                        "eos"
                    }
                    None => "length",
                };
                let text = decode(&vocab, &new)?;
                total_bases += text.len();
                gc += text
                    .bytes()
                    .filter(|b| matches!(b, b'G' | b'C' | b'g' | b'c'))
                    .count();
                eos_stops += usize::from(stopped == "eos");
                n += 1;
                let line = json!({"prompt": prompt, "sample": s, "tokens": new.len(), "stopped": stopped, "sequence": text});
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
        }
        Ok::<(), StepError>(())
    })?;
    std::fs::write(ctx.out.join("samples.jsonl"), lines)?;
    write_metrics(
        ctx.out,
        &json!({
            "samples": n,
            "mean_bases": total_bases as f64 / n.max(1) as f64,
            "gc": gc as f64 / total_bases.max(1) as f64,
            "eos_rate": eos_stops as f64 / n.max(1) as f64,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampling_respects_greedy_top_k_and_top_p() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(sample_token(&logits, 0.0, 0, 1.0, &mut rng), 1);
        for _ in 0..200 {
            let k = sample_token(&logits, 1.0, 2, 1.0, &mut rng);
            assert!(k == 1 || k == 3);
            // Top-p 0.3 keeps only the most likely token.
            assert_eq!(sample_token(&logits, 1.0, 0, 0.3, &mut rng), 1);
        }
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[sample_token(&logits, 1.0, 0, 1.0, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
    }
}
