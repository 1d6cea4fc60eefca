//! Language models on burn with Hugging Face checkpoints: GPT-2 (causal LM) and BERT (masked LM).
//!
//! A model directory is what `save_pretrained` writes: `config.json`, `model.safetensors` and
//! the tokenizer files. [`load_dir`] reads one (ours or transformers'), [`save_dir`] writes one
//! that `transformers` loads.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Dropout, Linear};
use burn::prelude::*;

pub mod bert;
mod cpu_attention;
mod cpu_kernels;
pub mod device;
pub mod fused;
pub mod gpt2;
pub mod weights;

pub use bert::{Bert, BertConfig};
pub use device::{DeviceSpec, Precision};
pub use fused::{FusedOps, Keys, LayerNorm};
use fused::{masked_softmax, merge_heads};
pub use gpt2::{Gpt2, Gpt2Config};
pub use weights::Weights;

/// What went wrong reading, building or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("{file} does not fit the model config:\n  {problems}")]
    Weights { file: String, problems: String },
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The architectures dnaflow trains, by HF `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
}

impl ArchConfig {
    pub fn to_hf_json(&self) -> serde_json::Value {
        match self {
            ArchConfig::Gpt2(c) => c.to_hf_json(),
            ArchConfig::Bert(c) => c.to_hf_json(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.vocab_size,
            ArchConfig::Bert(c) => c.vocab_size,
        }
    }

    /// Longest sequence the position table allows.
    pub fn max_positions(&self) -> usize {
        match self {
            ArchConfig::Gpt2(c) => c.n_positions,
            ArchConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Gpt2(_) => "gpt2",
            ArchConfig::Bert(_) => "bert",
        }
    }
}

/// Read `config.json` of a model directory; `model_type` picks the architecture.
pub fn read_config(dir: &Path) -> Result<ArchConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    let bad = |e: serde_json::Error| ModelError::Format(format!("{}: {e}", path.display()));
    match value.get("model_type").and_then(|v| v.as_str()) {
        Some("gpt2") => Ok(ArchConfig::Gpt2(
            serde_json::from_value(value).map_err(bad)?,
        )),
        Some("bert") => Ok(ArchConfig::Bert(
            serde_json::from_value(value).map_err(bad)?,
        )),
        Some(other) => Err(ModelError::Format(format!(
            "{}: model_type `{other}` is not supported here (gpt2, bert)",
            path.display()
        ))),
        None => Err(ModelError::Format(format!(
            "{}: no `model_type`; is this a Hugging Face model directory?",
            path.display()
        ))),
    }
}

/// The weights file of a model directory (`model.safetensors`; PyTorch `.bin` is refused with
/// a way out).
pub fn weights_path(dir: &Path) -> Result<PathBuf, ModelError> {
    let st = dir.join("model.safetensors");
    if st.exists() {
        return Ok(st);
    }
    if dir.join("pytorch_model.bin").exists() {
        return Err(ModelError::Format(format!(
            "{}: only pytorch_model.bin is there; convert it once with transformers: \
             AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)",
            dir.display()
        )));
    }
    Err(ModelError::Format(format!(
        "{}: no model.safetensors (is this a model directory?)",
        dir.display()
    )))
}

/// Write a model directory: `config.json`, `model.safetensors`, and the tokenizer: the
/// `tokenizer` file as `tokenizer.json` plus the tokenizer_config.json and
/// special_tokens_map.json beside it, when there are.
pub fn save_dir(
    dir: &Path,
    config: &ArchConfig,
    weights: &Weights,
    tokenizer: Option<&Path>,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg = dir.join("config.json");
    let json = serde_json::to_string_pretty(&config.to_hf_json()).expect("json");
    std::fs::write(&cfg, json).map_err(|e| ModelError::io(&cfg, e))?;
    weights.save(&dir.join("model.safetensors"))?;
    if let Some(tok) = tokenizer {
        std::fs::copy(tok, dir.join("tokenizer.json")).map_err(|e| ModelError::io(tok, e))?;
        let beside = tok.parent().unwrap_or(Path::new("."));
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let src = beside.join(name);
            if src.exists() {
                std::fs::copy(&src, dir.join(name)).map_err(|e| ModelError::io(&src, e))?;
            }
        }
    }
    Ok(())
}

/// Layer norm from HF `{prefix}.weight` / `{prefix}.bias`.
pub(crate) fn layer_norm<B: Backend>(
    w: &mut Weights,
    prefix: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> LayerNorm<B> {
    LayerNorm {
        gamma: w.param(&format!("{prefix}.weight"), [d], device),
        beta: w.param(&format!("{prefix}.bias"), [d], device),
        eps,
    }
}

pub(crate) fn put_layer_norm<B: Backend>(w: &mut Weights, prefix: &str, ln: &LayerNorm<B>) {
    w.put(&format!("{prefix}.weight"), &ln.gamma);
    w.put(&format!("{prefix}.bias"), &ln.beta);
}

/// A `Linear` with the given weight ([in, out]) and bias.
pub(crate) fn linear<B: Backend>(
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
) -> Linear<B> {
    Linear {
        weight,
        bias: Some(bias),
    }
}

/// Attention score of a position that must not be attended to. Finite (not -inf), because
/// burn's flex softmax turns a row holding -inf into NaN; exp(-1e9 - max) is 0 all the same.
pub(crate) const MASKED: f32 = -1e9;

/// 1/sqrt(head dim), the scaled dot-product factor.
pub(crate) fn attention_scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

/// `a @ b` in the compute precision (f32 result).
pub(crate) fn matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    use burn::tensor::FloatDType;
    let dtype = match precision {
        Precision::F32 => return a.matmul(b),
        Precision::Bf16 => FloatDType::BF16,
        Precision::F16 => FloatDType::F16,
    };
    a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32)
}

/// Whether attention runs as the one fused node ([`fused::attention`]): it has no dropout on
/// its weights (none set, or not training) and its products are in f32.
pub(crate) fn attention_fuses<B: Backend>(
    dropout: &Dropout,
    precision: Precision,
    device: &B::Device,
) -> bool {
    precision == Precision::F32 && (dropout.prob == 0.0 || !B::ad_enabled(device))
}

/// Attention op by op on heads [B, H, T, dh] (keys and values may be longer than the
/// queries: a KV cache): softmax, dropout on the weights, products in `precision`; the
/// context merged to [B, Tq, d]. What the fused node does not do.
pub(crate) fn attention_stepwise<B: FusedOps>(
    [q, k, v]: [Tensor<B, 4>; 3],
    keys: Keys<Tensor<B, 2>>,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    let dh = q.dims()[3];
    let scores = matmul(q, k.swap_dims(2, 3), precision); // [B, H, Tq, Tk]
    let weights = dropout.forward(masked_softmax(scores, keys, attention_scale(dh)));
    merge_heads(matmul(weights, v, precision))
}

/// A linear layer on [B, T, d_in] with the product in the compute precision. The batch and
/// time axes are folded into one, so forward and both gradients are single 2-D GEMMs (a
/// broadcast batched product would run B small ones and sum B weight gradients).
pub(crate) fn dense<B: Backend>(
    l: &Linear<B>,
    x: Tensor<B, 3>,
    precision: Precision,
) -> Tensor<B, 3> {
    affine(
        x,
        l.weight.val(),
        l.bias.as_ref().map(|b| b.val()),
        precision,
    )
}

/// x·weight + bias on [B, T, d_in] with weight [d_in, d_out], as one 2-D product.
pub(crate) fn affine<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    precision: Precision,
) -> Tensor<B, 3> {
    let [b, t, d_in] = x.dims();
    let y = matmul(x.reshape([b * t, d_in]), weight, precision);
    let y = match bias {
        Some(bias) => y + bias.unsqueeze_dim::<2>(0),
        None => y,
    };
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// `x + row` for x [N, R, C] and row [R, C], added as [N, R·C] + [1, R·C]: flex runs that
/// shape with its SIMD shared-row kernel, a [1, R, C] broadcast with its scalar strided one.
pub(crate) fn add_per_row<B: Backend>(x: Tensor<B, 3>, row: Tensor<B, 2>) -> Tensor<B, 3> {
    let [n, r, c] = x.dims();
    (x.reshape([n, r * c]) + row.reshape([1, r * c])).reshape([n, r, c])
}

/// Largest |a − b| over two equal-length slices, for tests. A NaN counts as infinitely far:
/// folding with `f32::max` drops it, and a comparison would then pass on NaN output.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| {
                if d.is_nan() { f32::INFINITY } else { m.max(d) }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn fixture(arch: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(arch)
    }

    struct Reference {
        json: serde_json::Value,
    }

    impl Reference {
        fn load(arch: &str) -> Reference {
            let text = std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap();
            Reference {
                json: serde_json::from_str(&text).unwrap(),
            }
        }

        fn ints(&self, key: &str) -> Tensor<B, 2, Int> {
            let rows: Vec<Vec<i64>> = serde_json::from_value(self.json[key].clone()).unwrap();
            let (b, t) = (rows.len(), rows[0].len());
            let flat: Vec<i64> = rows.into_iter().flatten().collect();
            Tensor::from_data(TensorData::new(flat, [b, t]), &Default::default())
        }

        /// Largest absolute difference against the reference values under `key`.
        fn max_diff<const D: usize>(&self, key: &str, got: Tensor<B, D>) -> f32 {
            let shape: Vec<usize> =
                serde_json::from_value(self.json[key]["shape"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(self.json[key]["values"].clone()).unwrap();
            let (got_shape, got) = weights::host(got);
            assert_eq!(got_shape, shape, "{key} shape");
            max_abs_diff(&got, &want)
        }
    }

    fn load_gpt2(dir: &Path) -> Gpt2<B> {
        let ArchConfig::Gpt2(cfg) = read_config(dir).unwrap() else {
            panic!("gpt2")
        };
        let w = Weights::load(&weights_path(dir).unwrap()).unwrap();
        Gpt2::from_weights(&cfg, w, &Default::default()).unwrap()
    }

    fn load_bert(dir: &Path) -> Bert<B> {
        let ArchConfig::Bert(cfg) = read_config(dir).unwrap() else {
            panic!("bert")
        };
        let w = Weights::load(&weights_path(dir).unwrap()).unwrap();
        Bert::from_weights(&cfg, w, &Default::default()).unwrap()
    }

    #[test]
    fn gpt2_matches_transformers() {
        let r = Reference::load("gpt2");
        let model = load_gpt2(&fixture("gpt2"));
        let ids = r.ints("input_ids");
        let hidden = r.max_diff("hidden", model.hidden(ids.clone()));
        assert!(hidden < 1e-4, "hidden states differ by {hidden}");
        let logits = r.max_diff("logits", model.forward(ids));
        assert!(logits < 1e-4, "logits differ by {logits}");
    }

    /// Generation's KV cache: the prompt at once, then one token per step, gives the logits of
    /// the full forward at every position.
    #[test]
    fn cached_logits_match_the_full_forward() {
        let r = Reference::load("gpt2");
        let model = load_gpt2(&fixture("gpt2"));
        let ids = r.ints("input_ids");
        let [b, t] = ids.dims();
        let (_, full) = weights::host(model.forward(ids.clone()));
        let v = full.len() / (b * t);
        let mut cache = gpt2::KvCache::default();
        let prompt = 3;
        let mut steps = vec![(
            0..prompt,
            model.forward_cached(ids.clone().slice([0..b, 0..prompt]), &mut cache),
        )];
        for pos in prompt..t {
            let logits = model.forward_cached(ids.clone().slice([0..b, pos..pos + 1]), &mut cache);
            steps.push((pos..pos + 1, logits));
        }
        assert_eq!(cache.len(), t);
        for (positions, logits) in steps {
            let (_, got) = weights::host(logits);
            let n = positions.len();
            for s in 0..b {
                for (i, pos) in positions.clone().enumerate() {
                    let want = &full[(s * t + pos) * v..(s * t + pos + 1) * v];
                    let have = &got[(s * n + i) * v..(s * n + i + 1) * v];
                    let worst = max_abs_diff(want, have);
                    assert!(worst < 1e-4, "sequence {s} position {pos}: {worst}");
                }
            }
        }
    }

    /// The op-by-op attention (dropout, bf16/f16, KV cache) and the fused node agree on every
    /// kind of keys.
    #[test]
    fn stepwise_attention_matches_the_fused_node() {
        let device = Default::default();
        <B as Backend>::seed(&device, 11);
        let (b, t, n_head) = (2, 6, 3);
        let qkv =
            Tensor::<B, 3>::random([b, t, 3 * 12], burn::tensor::Distribution::Default, &device);
        let mut padding = vec![0.0f32; b * t];
        padding[t + 4] = MASKED;
        padding[t + 5] = MASKED;
        let padding = Tensor::<B, 2>::from_data(TensorData::new(padding, [b, t]), &device);
        let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
        for keys in [Keys::All, Keys::Causal, Keys::Padded(padding)] {
            let heads = fused::split_heads(qkv.clone(), n_head);
            let (_, stepwise) = weights::host(attention_stepwise(
                heads,
                keys.clone(),
                &no_dropout,
                Precision::F32,
            ));
            let (_, fused) = weights::host(fused::attention(
                qkv.clone(),
                keys,
                n_head,
                attention_scale(4),
            ));
            let worst = max_abs_diff(&stepwise, &fused);
            assert!(worst < 1e-5, "{worst}");
        }
    }

    #[test]
    fn bert_matches_transformers() {
        let r = Reference::load("bert");
        let model = load_bert(&fixture("bert"));
        let (ids, types, mask) = (
            r.ints("input_ids"),
            r.ints("token_type_ids"),
            r.ints("attention_mask"),
        );
        let hidden = model.hidden(ids.clone(), types.clone(), mask.clone());
        // Padded positions are not compared by HF either; the reference has all positions.
        assert!(r.max_diff("hidden", hidden) < 1e-4);
        assert!(r.max_diff("logits", model.forward(ids, types, mask)) < 1e-4);
    }

    /// Save what we loaded, reload it here, and (when torch is installed) in transformers.
    #[test]
    fn saved_models_reload_with_the_same_logits() {
        let tmp = tempfile::tempdir().unwrap();
        for arch in ["gpt2", "bert"] {
            let dir = tmp.path().join(arch);
            let config = read_config(&fixture(arch)).unwrap();
            let weights = match arch {
                "gpt2" => load_gpt2(&fixture(arch)).to_weights(),
                _ => load_bert(&fixture(arch)).to_weights(),
            };
            save_dir(&dir, &config, &weights, None).unwrap();
            assert_eq!(read_config(&dir).unwrap(), config);
            let r = Reference::load(arch);
            let diff = match arch {
                "gpt2" => r.max_diff("logits", load_gpt2(&dir).forward(r.ints("input_ids"))),
                _ => r.max_diff(
                    "logits",
                    load_bert(&dir).forward(
                        r.ints("input_ids"),
                        r.ints("token_type_ids"),
                        r.ints("attention_mask"),
                    ),
                ),
            };
            assert!(diff < 1e-4, "{arch}: {diff}");
            python_reload(&dir, arch);
        }
    }

    fn python_reload(dir: &Path, arch: &str) {
        let has_torch = std::process::Command::new("python3")
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_torch {
            eprintln!(
                "skipping the transformers reload of {arch}: python3 has no torch/transformers"
            );
            return;
        }
        let out = std::process::Command::new("python3")
            .arg(fixture("make_reference.py").with_file_name("make_reference.py"))
            .args(["check", &dir.display().to_string(), arch])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff: f32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(
            diff < 1e-4,
            "{arch} reloaded in transformers differs by {diff}"
        );
    }

    #[test]
    fn a_wrong_checkpoint_names_every_problem() {
        let ArchConfig::Gpt2(mut cfg) = read_config(&fixture("gpt2")).unwrap() else {
            panic!()
        };
        cfg.n_layer = 3;
        cfg.n_embd = 8;
        let w = Weights::load(&fixture("gpt2").join("model.safetensors")).unwrap();
        let err = Gpt2::<B>::from_weights(&cfg, w, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(
            err.contains("`transformer.h.2.ln_1.weight` is missing"),
            "{err}"
        );
    }

    #[test]
    fn fresh_models_build_from_their_own_init() {
        let ArchConfig::Bert(cfg) = read_config(&fixture("bert")).unwrap() else {
            panic!()
        };
        let w = Bert::<B>::init_weights(&cfg, 7);
        let names: Vec<String> = w.names().map(String::from).collect();
        let model = Bert::<B>::from_weights(&cfg, w, &Default::default()).unwrap();
        let again: Vec<String> = model.to_weights().names().map(String::from).collect();
        assert_eq!(names, again);
        let ArchConfig::Gpt2(cfg) = read_config(&fixture("gpt2")).unwrap() else {
            panic!()
        };
        Gpt2::<B>::from_weights(&cfg, Gpt2::<B>::init_weights(&cfg, 7), &Default::default())
            .unwrap();
    }
}
