//! `model.resize`: a model directory whose vocabulary grows with an extended tokenizer
//! (`tokenizer.extend`), as transformers' `resize_token_embeddings` does with mean resizing
//! ([`crate::models::resize`]). The result is a whole model directory with the tokenizer's files
//! copied as they are, so `AutoModelForCausalLM` and `AutoTokenizer` load the pair, and a LoRA
//! adapter trained over it names it as its base.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::tokenizer::open_tokenizer;
use super::training::model_err;
use super::{InputPath, StepContext, StepError, StepKind, params};
use crate::models::resize::resize_vocab;
use crate::models::{ModelSpec, Weights};

/// Parameters of `model.resize`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ResizeParams {
    /// The model directory to grow (Hugging Face layout).
    model: InputPath,
    /// The extended `tokenizer.json` (or its directory): the model gets one row per token.
    tokenizer: InputPath,
    /// Seeds the new rows.
    #[serde(default = "super::train_options::seed")]
    seed: u64,
}

pub static RESIZE: StepKind = StepKind {
    name: "model.resize",
    version: 1,
    summary: "grow a model's embeddings (and untied LM head) to an extended tokenizer, mean-initialised",
    outputs: &[("model", "model")],
    schema: |g| g.subschema_for::<ResizeParams>(),
    check: |with| params::<ResizeParams>(with).map(|_| ()),
    run,
};

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ResizeParams = params(ctx.with).map_err(StepError::new)?;
    let (tok_path, tokenizer) = open_tokenizer(p.tokenizer.path())?;
    let dir = p.model.path();
    let mut spec = ModelSpec::read(dir).map_err(model_err)?;
    let mut w = Weights::load_dir(dir).map_err(model_err)?;
    let n = tokenizer.get_vocab_size(true);
    let resized = resize_vocab(&mut spec.config, &mut w, n, p.seed)
        .map_err(|e| StepError::new(format!("{}: {e}", dir.display())))?;
    let out = ctx.out.join("model");
    let framing = spec.config.architecture().framing;
    crate::models::save_dir(&out, &spec.to_hf_json(), &w, None, framing).map_err(model_err)?;
    // The tokenizer as it is: this model was not trained here, so nothing reframes its inputs.
    std::fs::copy(&tok_path, out.join("tokenizer.json"))?;
    crate::models::copy_tokenizer_configs(&tok_path, &out).map_err(model_err)?;
    writeln!(
        ctx.log,
        "vocabulary {} -> {} rows in {}{}",
        resized.old_vocab,
        resized.new_vocab,
        resized.tensors.join(", "),
        if resized.sampled {
            ""
        } else {
            " (new rows at the mean: covariance not positive definite)"
        }
    )?;
    super::write_metrics(
        ctx.out,
        &json!({
            "vocab_before": resized.old_vocab,
            "vocab_after": resized.new_vocab,
            "rows_added": resized.new_vocab - resized.old_vocab,
            "tensors": resized.tensors,
            "init": if resized.sampled { "mean+covariance" } else { "mean" },
        }),
    )
}
