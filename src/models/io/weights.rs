//! Named host tensors keyed by Hugging Face names: what a `model.safetensors` holds.
//!
//! Models build themselves from a [`Weights`] (loaded from a checkpoint or freshly initialized)
//! and write themselves back into one, so the HF names live in one place per architecture and
//! every load checks each name and shape, reporting everything missing, misshapen or unused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::prelude::*;

use super::super::error::ModelError;
use super::checkpoint::{self, RawTensor};

/// One tensor on the host, row-major f32.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A tensor as a [`Weights`] holds it: on the host as f32 (fresh, or about to be saved), or
/// as stored in a checkpoint (memory-mapped, in its own dtype) until a model takes it.
#[derive(Debug, Clone)]
enum Entry {
    Host(HostTensor),
    Stored(RawTensor),
}

impl Entry {
    fn shape(&self) -> &[usize] {
        match self {
            Entry::Host(t) => &t.shape,
            Entry::Stored(t) => &t.shape,
        }
    }

    /// The values as f32; a stored tensor's file pages are released once read.
    fn into_host(self) -> HostTensor {
        match self {
            Entry::Host(t) => t,
            Entry::Stored(t) => {
                let values = t.to_f32().expect("only float tensors are kept");
                t.release();
                HostTensor {
                    shape: t.shape,
                    values,
                }
            }
        }
    }
}

/// Tensors by name, with bookkeeping of which ones a model took.
#[derive(Debug, Default, Clone)]
pub struct Weights {
    tensors: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    problems: Vec<String>,
    source: Option<PathBuf>,
    report: LoadReport,
}

/// What a load did besides taking tensors one for one: a checkpoint loaded under another head
/// (an LM checkpoint fine-tuned as a classifier) skips the old head and starts the new one
/// fresh. Both are listed by name, so a user sees what was not carried over.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// Tensors in the file that belong to a head this model does not have.
    pub skipped: Vec<String>,
    /// Tensors of this model's head that the file lacked, initialised fresh.
    pub fresh: Vec<String>,
}

/// A parameter id that depends only on the tensor's name, so optimizer state saved in a
/// checkpoint finds its parameter again after a resume.
pub fn param_id(name: &str) -> ParamId {
    let hash = blake3::hash(name.as_bytes());
    let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("8 bytes");
    ParamId::from(u64::from_le_bytes(bytes))
}

impl Weights {
    pub fn new() -> Weights {
        Weights::default()
    }

    /// Read one checkpoint file (`.safetensors`, or a `pytorch_model.bin` without running its
    /// pickle), memory-mapped: each float tensor stays in its file and dtype until a model
    /// takes it. Integer buffers (old GPT-2 `attn.bias` masks) are not weights and are left out.
    pub fn load(path: &Path) -> Result<Weights, ModelError> {
        let tensors = checkpoint::read_file(path).map_err(|e| ModelError::Format(e.to_string()))?;
        Ok(Weights::of_stored(tensors, path.display().to_string()))
    }

    /// Read a model directory's checkpoint as transformers finds it: `model.safetensors`, its
    /// shards (`model.safetensors.index.json`), or `pytorch_model.bin` (and its shards).
    pub fn load_dir(dir: &Path) -> Result<Weights, ModelError> {
        let files =
            checkpoint::checkpoint_files(dir).map_err(|e| ModelError::Format(e.to_string()))?;
        let tensors = checkpoint::read_dir(dir).map_err(|e| ModelError::Format(e.to_string()))?;
        let source = match files.as_slice() {
            [one] => one.display().to_string(),
            _ => format!("{} ({} checkpoint files)", dir.display(), files.len()),
        };
        Ok(Weights::of_stored(tensors, source))
    }

    fn of_stored(tensors: Vec<RawTensor>, source: String) -> Weights {
        let mut weights = Weights {
            source: Some(PathBuf::from(source)),
            ..Weights::default()
        };
        for t in tensors.into_iter().filter(RawTensor::is_float) {
            weights.tensors.insert(t.name.clone(), Entry::Stored(t));
        }
        weights
    }

    /// Every tensor as f32 on the host, in the order of their names (what a save writes).
    fn host_tensors(&self) -> Vec<(String, HostTensor)> {
        self.tensors
            .iter()
            .map(|(name, e)| (name.clone(), e.clone().into_host()))
            .collect()
    }

    /// Write a model directory's weights as transformers does: one `model.safetensors`, or
    /// shards with `model.safetensors.index.json` above `max_shard_bytes`; f32, atomically.
    pub fn save_dir(&self, dir: &Path, max_shard_bytes: u64) -> Result<(), ModelError> {
        let host = self.host_tensors();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = host
            .into_iter()
            .map(|(name, t)| {
                let raw = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, t.shape, raw)
            })
            .collect();
        let tensors: Vec<(String, checkpoint::Dtype, Vec<usize>, &[u8])> = bytes
            .iter()
            .map(|(n, shape, raw)| {
                (
                    n.clone(),
                    checkpoint::Dtype::F32,
                    shape.clone(),
                    raw.as_slice(),
                )
            })
            .collect();
        checkpoint::write_dir(dir, &tensors, max_shard_bytes)
            .map(|_| ())
            .map_err(|e| ModelError::Format(e.to_string()))
    }

    /// Write every tensor as f32 into a safetensors file (`format: pt`, as transformers expects).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .host_tensors()
            .into_iter()
            .map(|(name, t)| {
                let raw = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name, t.shape, raw)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, raw)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Format(e.to_string()))?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp)
            .map_err(|e| ModelError::Format(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }

    pub fn insert(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        self.tensors
            .insert(name.to_string(), Entry::Host(HostTensor { shape, values }));
    }

    /// Whether a tensor of this name is here.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor's values as f32 (a stored one read from its file).
    pub fn get(&self, name: &str) -> Option<HostTensor> {
        self.tensors.get(name).map(|e| e.clone().into_host())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Remove and return a tensor (a head's weights folded or unfolded on the host).
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name).map(Entry::into_host)
    }

    /// Every tensor of `other` added here, replacing any of the same name.
    pub fn extend(&mut self, other: Weights) {
        self.tensors.extend(other.tensors);
    }

    /// The values of `name`, checked against `shape` (a problem is recorded, zeros returned).
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        self.taken.insert(name.to_string());
        // Taken once: removed here, so a stored tensor is read from its file and its pages
        // released one tensor at a time (loading peaks near the model's own size).
        match self.tensors.remove(name) {
            Some(e) if e.shape() == shape => e.into_host().values,
            Some(e) => {
                self.problems.push(format!(
                    "`{name}` has shape {:?}, the config needs {shape:?}",
                    e.shape()
                ));
                vec![0.0; shape.iter().product()]
            }
            None => {
                self.problems.push(format!("`{name}` is missing"));
                vec![0.0; shape.iter().product()]
            }
        }
    }

    /// Mark a tensor as known but unused (tied copies, buffers).
    pub fn skip(&mut self, name: &str) {
        self.taken.insert(name.to_string());
    }

    /// Mark `name`, a tensor of another head, as known and unused; listed as skipped when the
    /// file has it.
    pub fn skip_other_head(&mut self, name: &str) {
        if self.tensors.contains_key(name) && self.taken.insert(name.to_string()) {
            self.report.skipped.push(name.to_string());
        }
    }

    /// Add each tensor of `head` (a fresh initialisation) that is not here yet, listed as fresh.
    /// One that is here is kept: its shape is checked when the model takes it.
    pub fn adopt_fresh(&mut self, head: Weights) {
        for (name, t) in head.tensors {
            if !self.tensors.contains_key(&name) {
                self.report.fresh.push(name.clone());
                self.tensors.insert(name, t);
            }
        }
    }

    /// Every missing, misshapen or unused tensor as one error, or what the load skipped and
    /// initialised fresh.
    pub fn finish(self) -> Result<LoadReport, ModelError> {
        let mut problems = self.problems;
        let unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .collect();
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(8).map(|s| s.as_str()).collect();
            problems.push(format!(
                "{} tensor(s) the architecture does not use: {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 8 { ", …" } else { "" }
            ));
        }
        if problems.is_empty() {
            return Ok(self.report);
        }
        let file = self
            .source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "weights".into());
        Err(ModelError::Weights {
            file,
            problems: problems.join("\n  "),
        })
    }
}

/// Copy a tensor to the host as f32.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32");
    (shape, values)
}

/// Row-major `[rows, cols]` → `[cols, rows]`, tile by tile (each tile's reads and writes stay
/// in cache; an element-by-element transpose of a model's weights missed it on every read and
/// was most of loading one), bands of output rows in parallel.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    if values.is_empty() {
        return out;
    }
    // Output rows c0..c0 + TILE are input columns c0..c0 + TILE.
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(band, dst)| {
            let c0 = band * TILE;
            let width = dst.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for r in r0..(r0 + TILE).min(rows) {
                    let src = &values[r * cols + c0..r * cols + c0 + width];
                    for (c, &v) in src.iter().enumerate() {
                        dst[c * rows + r] = v;
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips() {
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = transpose(&v, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), v);
        // Shapes that are not multiples of the tile, larger than one, and degenerate.
        for (rows, cols) in [(70, 45), (33, 100), (1, 77), (64, 1), (0, 5)] {
            let v: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&v, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        v[r * cols + c],
                        "[{rows}, {cols}] at ({r}, {c})"
                    );
                }
            }
            assert_eq!(transpose(&t, cols, rows), v);
        }
    }

    #[test]
    fn finish_reports_missing_misshapen_and_unused() {
        let mut w = Weights::new();
        w.insert("a", vec![2], vec![1.0, 2.0]);
        w.insert("b", vec![3], vec![0.0; 3]);
        w.insert("extra", vec![1], vec![0.0]);
        w.take("a", &[2]);
        w.take("b", &[4]);
        w.take("c", &[1]);
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("`b` has shape [3]"), "{err}");
        assert!(err.contains("`c` is missing"), "{err}");
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn param_ids_follow_names() {
        assert_eq!(param_id("x.weight"), param_id("x.weight"));
        assert_ne!(param_id("x.weight"), param_id("x.bias"));
    }
}
