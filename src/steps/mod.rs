//! Built-in step kinds: typed parameters plus a function that writes outputs into a directory.
//!
//! A step never sees the cache or the scheduler. Adding a kind is one module plus one line in
//! [`KINDS`].

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use schemars::{Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

mod answers;
mod baseline;
mod bpe_extend;
mod data;
mod embed;
mod eval;
pub mod fetch;
mod file;
mod finetune;
mod generate;
mod input;
mod model;
pub mod plot;
mod probe;
mod resize;
mod score;
pub mod table;
mod tokenizer;
mod tokenizer_extend;
mod train_options;
pub use train_options::{RANK_LAUNCH_PARAMS, RANKED_KINDS, RanksAs, rank_request};
mod training;
mod vocab;
mod zero_shot;

pub use input::{
    INPUT_MARK, InputPath, Pointer, Seg, input_pointers, pointer_name, strings_at, strings_at_mut,
};

/// Everything a running step may touch.
pub struct StepContext<'a> {
    /// The step's parameters, interpolated: upstream references are absolute paths.
    pub with: &'a serde_json::Value,
    /// Directory the step writes its outputs (and optional `metrics.json`) into.
    pub out: &'a Path,
    /// The workflow's working directory; relative input paths start here.
    pub workdir: &'a Path,
    /// CPU threads the scheduler granted the step.
    pub threads: usize,
    /// The step's log (saved with the run record).
    pub log: &'a mut dyn Write,
    /// Set when the user interrupts the run; long steps should poll it and stop.
    pub cancelled: &'a AtomicBool,
    /// A directory that outlives failed and killed attempts of this very step (same cache
    /// key), for checkpoints to resume from; removed once the step's outputs are committed.
    pub checkpoints: &'a Path,
    /// The device chosen on the command line (`--device`), overriding the step's `device:`.
    pub device: Option<&'a str>,
    /// Show a short live status (progress bar message); cheap to call often.
    pub status: &'a (dyn Fn(&str) + Sync),
    /// Where this process meets the other ranks of a data-parallel step run as one process
    /// per rank; None when the step is one process (its ranks, if any, are threads).
    pub rendezvous: Option<&'a crate::train::tcp::Rendezvous>,
}

/// Why a step failed, in words the user can act on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    /// Not a failure: this process is a rank other than 0 of a data-parallel step; its share
    /// of the training is done, and rank 0 writes the step's outputs.
    pub left_to_root: bool,
}

impl StepError {
    pub fn new(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
            left_to_root: false,
        }
    }

    /// Rank `rank` has trained its share; the rest of the step is rank 0's.
    pub fn left_to_root(rank: usize) -> StepError {
        StepError {
            message: format!("rank {rank} trained its share; rank 0 writes the outputs"),
            left_to_root: true,
        }
    }
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> StepError {
        StepError::new(e.to_string())
    }
}

/// A built-in step kind.
pub struct StepKind {
    /// Name used in `uses:`.
    pub name: &'static str,
    /// Bump when the same parameters would now give different results: it is part of the cache key.
    pub version: u32,
    /// One line for `dnaflow kinds` and the schema.
    pub summary: &'static str,
    /// Named outputs: name and path inside the step's output directory.
    pub outputs: &'static [(&'static str, &'static str)],
    /// JSON Schema of `with:`. Parameters of type [`InputPath`] in it are the kind's file
    /// inputs: the engine finds them there ([`input_pointers`]) and hashes what they name.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Checks `with:` before anything runs; the message names the bad field.
    pub check: fn(&serde_json::Value) -> Result<(), String>,
    /// Does the work.
    pub run: fn(&mut StepContext) -> Result<(), StepError>,
}

impl std::fmt::Debug for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepKind({} v{})", self.name, self.version)
    }
}

/// Every built-in kind.
pub static KINDS: &[&StepKind] = &[
    &file::WRITE,
    &fetch::FETCH,
    data::LOAD,
    data::SPLIT,
    data::FILTER,
    data::SAMPLE,
    data::CONCAT,
    data::PAIRS,
    data::KEYWORDS,
    data::INSTRUCT,
    data::STATS,
    &tokenizer::TRAIN,
    &tokenizer::EVAL,
    &tokenizer_extend::EXTEND,
    &model::PRETRAIN,
    &resize::RESIZE,
    &eval::LM,
    &generate::GENERATE,
    &finetune::FINETUNE,
    &embed::EMBED,
    &probe::PROBE,
    &probe::PROJECT,
    &zero_shot::SCORE,
    &eval::MARKOV,
    &score::CLASSIFY,
    &score::REGRESS,
    &score::TEXT,
    &baseline::CLASSIFY,
    &baseline::NEAREST,
    &baseline::REGRESS,
    &baseline::PER_BASE,
];

/// Kinds whose results depend on the device (`--device` reaches them and enters their keys).
pub fn uses_device(kind: &str) -> bool {
    matches!(
        kind,
        "model.pretrain"
            | "eval.lm"
            | "model.generate"
            | "model.finetune"
            | "model.embed"
            | "model.score"
    )
}

/// The kind called `name`.
pub fn find(name: &str) -> Option<&'static StepKind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// Write `metrics.json` into the step's output directory.
pub fn write_metrics(out: &Path, metrics: &serde_json::Value) -> Result<(), StepError> {
    write_json(&out.join("metrics.json"), metrics)
}

/// Add the fields of the object `more` to the object `metrics` (a kind's metrics and a shared
/// part, such as the alphabet a table was read in).
pub fn merge(metrics: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(m), serde_json::Value::Object(more)) = (metrics.as_object_mut(), more) {
        m.extend(more);
    }
}

/// Write `value` as pretty JSON to `path` (metrics, a fitted model's `model.json`).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), StepError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StepError::new(e.to_string()))?;
    std::fs::write(path, json).map_err(|e| StepError::new(format!("{}: {e}", path.display())))
}

/// Typed parameters from `with:`; used by kinds in `check` and `run`.
pub fn params<P: DeserializeOwned>(with: &serde_json::Value) -> Result<P, String> {
    let value = if with.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        with.clone()
    };
    serde_json::from_value(value).map_err(|e| e.to_string())
}
