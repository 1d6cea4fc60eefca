//! `model.embed`: pooled hidden states of any model directory (ours or transformers') for the
//! sequences of a table, as the tutorial's chapter 2.4 extracts features: the mean over real
//! tokens, the first (`[CLS]`), the last, or the maximum, of any layer. Ids and labels are
//! kept, so `eval.probe` and `eval.project` read the table as it is.

use std::time::Instant;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::finetune::inputs;
use super::model::{load_model, load_model_vocab, table_alphabet};
use super::table::{TableMeta, read_role, write_table_with};
use super::train_options::{batch_size, cpu, resolve_device};
use super::{InputPath, StepContext, StepError, StepKind, params, write_metrics};
use crate::models::device::on_device;
use crate::models::{DeviceSpec, Precision};
use crate::train::{Objective, eval_batches};

/// How the hidden states of a sequence become one vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Pooling {
    /// Mean over the real (non-padding) tokens.
    #[default]
    Mean,
    /// The first token (`[CLS]` for BERT).
    First,
    /// The last real token (what GPT-2's sequence head reads).
    Last,
    /// Element-wise maximum over the real tokens.
    Max,
}

/// Parameters of `model.embed`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EmbedParams {
    /// A model directory (HF layout), any head.
    model: InputPath,
    /// The table of sequences to embed.
    data: InputPath,
    /// Tokenizer, when the model directory has none.
    tokenizer: Option<InputPath>,
    #[serde(default)]
    pool: Pooling,
    /// HF's `hidden_states[layer]`: 0 the embeddings, N the output of layer N; negative
    /// counts from the last (-1, the default, is the last layer).
    #[serde(default = "last_layer")]
    layer: i64,
    /// Column holding the sequences.
    #[serde(default = "super::table::sequence_column")]
    sequence: String,
    /// Kept in the output when the table has it.
    #[serde(default = "super::table::label_column")]
    label: String,
    /// Column holding the row ids.
    #[serde(default = "super::table::id_column")]
    id: String,
    /// Cut sequences longer than the model's positions (else an error naming the row).
    #[serde(default)]
    truncate: bool,
    /// Sequences per forward pass.
    #[serde(default = "batch_size")]
    batch_size: usize,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[serde(default = "cpu")]
    device: String,
}

fn last_layer() -> i64 {
    -1
}

/// Prefix of the embedding columns (`emb_0`, `emb_1`, …).
pub(super) const EMB: &str = "emb_";

pub static EMBED: StepKind = StepKind {
    name: "model.embed",
    version: 3,
    summary: "pooled hidden states (mean, first, last, max; any layer) of a model for a table's sequences → parquet with id, label and emb_0 … emb_{d-1}",
    outputs: &[("embeddings", "embeddings.parquet")],
    schema: |g| g.subschema_for::<EmbedParams>(),
    check: |with| {
        let p = params::<EmbedParams>(with)?;
        DeviceSpec::parse(&p.device)?;
        if p.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        Ok(())
    },
    run: embed,
};

fn embed(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: EmbedParams = params(ctx.with).map_err(StepError::new)?;
    let (device, _) = resolve_device(ctx, &p.device, "f32")?;
    let path = |i: &InputPath| ctx.workdir.join(i.path());
    let dir = path(&p.model);
    let vocab = load_model_vocab(&path(p.tokenizer.as_ref().unwrap_or(&p.model)), &dir)?;
    let table = read_role(&path(&p.data), &p.id, "data")?;
    let alphabet = table_alphabet(&vocab, &table, &p.sequence, &dir)?;
    let ids = table.texts(&p.id, "id", "an id")?;
    let labels = match table.df.column(&p.label) {
        Ok(_) => Some(table.labels(&p.label, "label")?),
        Err(_) => None,
    };
    let (dim, layer, vectors, seconds) = on_device!(device, Precision::F32, |dev: B| {
        let model = load_model::<B>(&dir, &dev)?;
        let config = &model.spec().config;
        vocab.check_fits(config.vocab_size(), &dir)?;
        let bert = config.architecture().framing == crate::models::arch::Framing::ClsSep;
        let layers = model.layers() as i64;
        let layer = if p.layer < 0 {
            layers + 1 + p.layer
        } else {
            p.layer
        };
        if !(0..=layers).contains(&layer) {
            return Err(StepError::new(format!(
                "`layer: {}`: the model has hidden states 0 (embeddings) to {layers} (or -1 to -{})",
                p.layer,
                layers + 1
            )));
        }
        let rows = inputs(
            &vocab,
            &table,
            &p.sequence,
            p.truncate,
            bert,
            config.max_positions(),
        )?;
        let batches = eval_batches(&rows, &Objective::Clm, vocab.pad, p.batch_size, 0);
        let dim = config.hidden_size();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(rows.len());
        let clock = Instant::now(); // the forward passes and pooling, as sequences/s reports

        for (k, batch) in batches.iter().enumerate() {
            (ctx.status)(&format!("batch {}/{}", k + 1, batches.len()));
            let hidden = model.hidden(batch, layer as usize, &dev); // [B, T, d]
            let (_, host) = crate::models::weights::host(hidden);
            for i in 0..batch.b {
                let mask = &batch.mask[i * batch.t..(i + 1) * batch.t];
                let at = |j: usize| &host[(i * batch.t + j) * dim..(i * batch.t + j + 1) * dim];
                vectors.push(pool(p.pool, mask, dim, at));
            }
        }
        Ok::<_, StepError>((dim, layer, vectors, clock.elapsed().as_secs_f64()))
    })?;
    let mut columns = vec![Column::new("id".into(), &ids)];
    if let Some(labels) = &labels {
        columns.push(Column::new("label".into(), labels));
    }
    for k in 0..dim {
        let col: Vec<f32> = vectors.iter().map(|v| v[k]).collect();
        columns.push(Column::new(format!("{EMB}{k}").into(), col));
    }
    let mut df = DataFrame::new(vectors.len(), columns)?;
    // One vector per row of the table: the table's alphabet, source and identity go with them.
    let meta = TableMeta {
        alphabet: Some(alphabet.alphabet.name().into()),
        alphabet_from: Some(alphabet.from.into()),
        ambiguous: alphabet.ambiguous,
        ..TableMeta::rows_of(&table.path)?
    };
    write_table_with(&mut df, &ctx.out.join("embeddings.parquet"), &meta)?;
    writeln!(
        ctx.log,
        "{} sequences → {dim}-wide vectors ({:?} of layer {layer}) in {seconds:.2} s",
        vectors.len(),
        p.pool
    )?;
    let mut metrics = json!({
        "sequences": vectors.len(),
        "dimension": dim,
        "layer": layer,
        "pool": format!("{:?}", p.pool).to_lowercase(),
        "seconds": seconds,
        "sequences_per_s": vectors.len() as f64 / seconds.max(1e-9),
    });
    super::merge(&mut metrics, alphabet.metrics());
    write_metrics(ctx.out, &metrics)
}

/// One vector from a row's hidden states (`at(j)`: position j's) and its padding mask.
fn pool<'a>(how: Pooling, mask: &[i64], dim: usize, at: impl Fn(usize) -> &'a [f32]) -> Vec<f32> {
    let real: Vec<usize> = (0..mask.len()).filter(|&j| mask[j] == 1).collect();
    match how {
        Pooling::First => at(0).to_vec(),
        Pooling::Last => at(real.last().copied().unwrap_or(0)).to_vec(),
        Pooling::Mean => {
            let mut v = vec![0.0f32; dim];
            for &j in &real {
                v.iter_mut().zip(at(j)).for_each(|(a, b)| *a += b);
            }
            let n = real.len().max(1) as f32;
            v.iter_mut().for_each(|a| *a /= n);
            v
        }
        Pooling::Max => {
            let mut v = vec![f32::NEG_INFINITY; dim];
            for &j in &real {
                v.iter_mut().zip(at(j)).for_each(|(a, b)| *a = a.max(*b));
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_reads_only_real_tokens() {
        // Two positions of width 2, the second is padding.
        let states = [1.0f32, 4.0, 9.0, -9.0, 3.0, 2.0];
        let at = |j: usize| &states[j * 2..j * 2 + 2];
        let mask = [1, 0, 1];
        assert_eq!(pool(Pooling::Mean, &mask, 2, at), vec![2.0, 3.0]);
        assert_eq!(pool(Pooling::Max, &mask, 2, at), vec![3.0, 4.0]);
        assert_eq!(pool(Pooling::First, &mask, 2, at), vec![1.0, 4.0]);
        assert_eq!(pool(Pooling::Last, &mask, 2, at), vec![3.0, 2.0]);
    }
}
