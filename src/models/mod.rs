//! Models on burn with Hugging Face checkpoints, in layers that only look down:
//!
//! - [`kernels`]: the backend extension trait `FusedOps` (attention as one spec, norms,
//!   rotary, activations) with flex's CPU kernels;
//! - [`io`]: the one walk over HF tensor names (`vars`), named host tensors (`weights`) and
//!   checkpoints as published (`checkpoint`: safetensors, shards, `pytorch_model.bin`);
//! - [`nn`]: dense layers, self-attention, task heads, the KV cache;
//! - [`arch`]: the architecture table and one file per architecture (GPT-2, BERT, LLaMA,
//!   DNABERT-2, ESM C, ESM-2, LucaOne);
//! - [`model`]: a backbone with one head, loaded from and saved to a model directory.
//!
//! A model directory is what `save_pretrained` writes: `config.json`, the weights and the
//! tokenizer files. [`Model::load`] reads one (ours or transformers'), [`Model::save_dir`]
//! writes one that `transformers` loads.

pub mod arch;
pub mod device;
mod error;
pub mod io;
pub mod kernels;
pub mod model;
pub mod nn;
pub mod resize;

pub use arch::bert::{Bert, BertConfig};
pub use arch::gpt2::{Gpt2, Gpt2Config};
pub use arch::{ARCHITECTURES, ArchConfig, Architecture, read_config, read_tokenizer_json};
pub use device::{CUDA_BUILT, DeviceSpec, Precision, WGPU_BUILT};
pub use error::ModelError;
pub use io::weights::{LoadReport, Weights};
pub use io::{checkpoint, vars, weights};
pub use kernels::{AttentionSpec, FusedOps, LayerNorm, MASKED, RmsNorm};
pub use model::{
    MAX_SHARD_BYTES, Model, ModelSpec, copy_tokenizer_configs, read_weights, save_dir,
    save_model_dir,
};
pub use nn::heads::{self, Task};
pub use nn::kv_cache::KvCache;

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
    use super::device::test_device;
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::prelude::*;
    use burn::tensor::backend::AutodiffBackend;
    use std::path::{Path, PathBuf};

    /// Run `$body` with `$B` the backend and `$dev` the device `DNAFLOW_TEST_DEVICE` names:
    /// flex on the CPU (the default), burn's CUDA backend for `cuda[:N]` and its Vulkan one for
    /// `wgpu` (test binaries with that feature only; [`test_device`] refuses them otherwise).
    macro_rules! on_test_device {
        (|$dev:ident : $B:ident| $body:block) => {
            crate::models::device::on_device!(test_device(), Precision::F32, |$dev: $B| $body)
        };
    }

    /// The difference allowed for a comparison that holds to `cpu` on flex. On CUDA at least
    /// 5e-3: burn's tensor-core matmul (cubek-matmul) stages f32 operands as TF32 (10-bit
    /// mantissa, about 5e-4 relative per operand) on GPUs that have it. A wrong layout, mask
    /// or weight is off by 1e-2 to 1 on these fixtures; the measured figure is printed anyway.
    fn tolerance(cpu: f32) -> f32 {
        match test_device() {
            DeviceSpec::Cpu => cpu,
            DeviceSpec::Cuda(_) | DeviceSpec::Wgpu => cpu.max(5e-3),
        }
    }

    /// A measured figure on a line of its own (`figure: … on DEVICE: …`), so a run with
    /// `--nocapture` (scripts/gpu-check.sh) carries it into its results.
    fn figure(what: &str, value: String) {
        eprintln!("figure: {what} on {}: {value}", test_device());
    }

    /// A fixture directory, under `CARGO_MANIFEST_DIR` as cargo sets it when it runs tests (a
    /// test binary carried to another machine is pointed at its copy with that variable),
    /// else where the sources were at compile time.
    fn fixture(arch: &str) -> PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
            .join("tests/fixtures/models")
            .join(arch)
    }

    /// Whether python3 imports `modules` (the transformers checks skip, saying so, without).
    fn python_has(modules: &str) -> bool {
        std::process::Command::new("python3")
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success())
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

        fn ints<B: Backend>(&self, key: &str, device: &B::Device) -> Tensor<B, 2, Int> {
            let rows: Vec<Vec<i64>> = serde_json::from_value(self.json[key].clone()).unwrap();
            let (b, t) = (rows.len(), rows[0].len());
            let flat: Vec<i64> = rows.into_iter().flatten().collect();
            Tensor::from_data(TensorData::new(flat, [b, t]), device)
        }

        /// Largest absolute difference against the reference values under `key`.
        fn max_diff<B: Backend, const D: usize>(&self, key: &str, got: Tensor<B, D>) -> f32 {
            let shape: Vec<usize> =
                serde_json::from_value(self.json[key]["shape"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(self.json[key]["values"].clone()).unwrap();
            let (got_shape, got) = weights::host(got);
            assert_eq!(got_shape, shape, "{key} shape");
            max_abs_diff(&got, &want)
        }

        /// Largest absolute difference against a `{shape, values}` value.
        fn max_diff_of<B: Backend, const D: usize>(
            &self,
            want: &serde_json::Value,
            got: Tensor<B, D>,
        ) -> f32 {
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(want["values"].clone()).unwrap();
            let (got_shape, got) = weights::host(got);
            assert_eq!(got_shape, shape, "shape");
            max_abs_diff(&got, &want)
        }

        /// [`Reference::max_diff`] over the positions where the mask under `mask` is 1.
        fn max_diff_masked<B: Backend>(&self, key: &str, mask: &str, got: Tensor<B, 3>) -> f32 {
            self.max_diff_of_masked(&self.json[key], mask, got)
        }

        /// [`Reference::max_diff_of`] over the positions where the mask under `mask` is 1.
        fn max_diff_of_masked<B: Backend>(
            &self,
            want: &serde_json::Value,
            mask: &str,
            got: Tensor<B, 3>,
        ) -> f32 {
            let rows: Vec<Vec<i64>> = serde_json::from_value(self.json[mask].clone()).unwrap();
            let mask: Vec<i64> = rows.concat();
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(want["values"].clone()).unwrap();
            let (got_shape, got) = weights::host(got);
            assert_eq!(got_shape, shape, "shape");
            let width = got.len() / mask.len();
            mask.iter()
                .enumerate()
                .filter(|&(_, &m)| m != 0)
                .map(|(i, _)| {
                    let at = i * width..(i + 1) * width;
                    max_abs_diff(&got[at.clone()], &want[at])
                })
                .fold(0.0, f32::max)
        }

        /// [`Reference::max_diff`] over the positions (first axis after the batch's, of
        /// `got` [B, T, ..]) where the reference's `attention_mask` is 1: the encoder leaves
        /// padding positions at zero, where HF computes values nothing reads.
        fn max_diff_real<B: Backend>(&self, key: &str, got: Tensor<B, 3>) -> f32 {
            self.max_diff_masked(key, "attention_mask", got)
        }
    }

    fn load<B: FusedOps>(dir: &Path, device: &B::Device) -> Model<B> {
        Model::load(dir, None, 0, device).unwrap().0
    }

    fn load_gpt2<B: FusedOps>(dir: &Path, device: &B::Device) -> Gpt2<B> {
        match load::<B>(dir, device).backbone() {
            arch::Backbone::Gpt2(m) => m.clone(),
            _ => panic!("gpt2"),
        }
    }

    /// The BERT fixture: encoder with its MLM head.
    fn load_bert<B: FusedOps>(dir: &Path, device: &B::Device) -> Bert<B> {
        match load::<B>(dir, device).backbone() {
            arch::Backbone::Bert(m) => m.clone(),
            _ => panic!("bert"),
        }
    }

    #[test]
    fn gpt2_matches_transformers() {
        on_test_device!(|device: B| {
            let r = Reference::load("gpt2");
            let model = load_gpt2::<B>(&fixture("gpt2"), &device);
            let ids = r.ints::<B>("input_ids", &device);
            let hidden = r.max_diff("hidden", model.hidden(ids.clone()));
            let logits = r.max_diff("logits", model.forward(ids));
            figure(
                "gpt2 forward vs transformers, max |diff|",
                format!("hidden {hidden:.2e}, logits {logits:.2e}"),
            );
            let tol = tolerance(1e-4);
            assert!(hidden < tol, "hidden states differ by {hidden}");
            assert!(logits < tol, "logits differ by {logits}");
        })
    }

    /// Generation's KV cache: the prompt at once, then one token per step, gives the logits of
    /// the full forward at every position.
    #[test]
    fn cached_logits_match_the_full_forward() {
        on_test_device!(|device: B| {
            let r = Reference::load("gpt2");
            let model = load_gpt2::<B>(&fixture("gpt2"), &device);
            let ids = r.ints::<B>("input_ids", &device);
            let [b, t] = ids.dims();
            let (_, full) = weights::host(model.forward(ids.clone()));
            let v = full.len() / (b * t);
            let mut cache = KvCache::default();
            let prompt = 3;
            let mut steps = vec![(
                0..prompt,
                model.forward_cached(ids.clone().slice([0..b, 0..prompt]), &mut cache),
            )];
            for pos in prompt..t {
                let logits =
                    model.forward_cached(ids.clone().slice([0..b, pos..pos + 1]), &mut cache);
                steps.push((pos..pos + 1, logits));
            }
            assert_eq!(cache.len(), t);
            // The largest difference, and the sequence and position where it is.
            let mut worst = (0.0f32, 0, 0);
            for (positions, logits) in steps {
                let (_, got) = weights::host(logits);
                let n = positions.len();
                for s in 0..b {
                    for (i, pos) in positions.clone().enumerate() {
                        let want = &full[(s * t + pos) * v..(s * t + pos + 1) * v];
                        let have = &got[(s * n + i) * v..(s * n + i + 1) * v];
                        // max_abs_diff counts a NaN as infinitely far.
                        let diff = max_abs_diff(want, have);
                        if diff > worst.0 {
                            worst = (diff, s, pos);
                        }
                    }
                }
            }
            let (diff, s, pos) = worst;
            figure(
                "gpt2 KV-cached vs full logits, max |diff|",
                format!("{diff:.2e}"),
            );
            assert!(
                diff < tolerance(1e-4),
                "sequence {s} position {pos}: {diff}"
            );
        })
    }

    /// The three LLaMA fixtures (grouped-query and untied; multi-head, tied, biased, theta
    /// 5e5; multi-query with head_dim ≠ hidden / heads and llama3 rope scaling): every hidden
    /// state and the logits within 1e-4 of transformers; the grouped-query one also padded on
    /// the right, where the real positions match.
    #[test]
    fn llama_matches_transformers() {
        on_test_device!(|device: B| {
            for name in ["llama-gqa", "llama-tied", "llama3-rope"] {
                let r = Reference::load(name);
                let model = load::<B>(&fixture(name), &device);
                let arch::Backbone::Llama(llama) = model.backbone() else {
                    panic!("{name} is a llama")
                };
                let ids = r.ints::<B>("input_ids", &device);
                let states = r.json["hidden_states"].as_array().unwrap().clone();
                assert_eq!(states.len(), llama.layers() + 1);
                let mut worst = 0.0f32;
                for (layer, want) in states.iter().enumerate() {
                    let got = llama.hidden_at(ids.clone(), None, layer);
                    worst = worst.max(r.max_diff_of(want, got));
                }
                let logits = r.max_diff(
                    "logits",
                    llama.logits(llama.hidden_at(ids.clone(), None, 99)),
                );
                figure(
                    &format!("{name} forward vs transformers, max |diff|"),
                    format!("hidden states {worst:.2e}, logits {logits:.2e}"),
                );
                let tol = tolerance(1e-4);
                assert!(worst < tol, "{name}: a hidden state differs by {worst}");
                assert!(logits < tol, "{name}: logits differ by {logits}");
                if r.json.get("padded_input_ids").is_some() {
                    let ids = r.ints::<B>("padded_input_ids", &device);
                    let mask = r.ints::<B>("padded_attention_mask", &device);
                    let got = llama.logits(llama.hidden_at(ids, Some(mask), 99));
                    let diff = r.max_diff_masked("padded_logits", "padded_attention_mask", got);
                    figure(
                        &format!("{name} right-padded logits vs transformers, max |diff|"),
                        format!("{diff:.2e}"),
                    );
                    assert!(diff < tol, "{name} padded: logits differ by {diff}");
                }
            }
        })
    }

    /// The reference's ids, token types (zeros when it has none) and mask, padded.
    fn padded_tokens<B: Backend>(r: &Reference, device: &B::Device) -> arch::Tokens<B> {
        let ids = r.ints::<B>("input_ids", device);
        arch::Tokens {
            types: match r.json.get("token_type_ids") {
                Some(_) => r.ints::<B>("token_type_ids", device),
                None => ids.zeros_like(),
            },
            mask: r.ints::<B>("attention_mask", device),
            ids,
            padded: true,
        }
    }

    /// Every `hidden_states` entry and the logits of a fixture against its reference, on the
    /// real positions of its padded batch: (worst hidden state, logits).
    fn padded_forward_diffs<B: FusedOps>(
        r: &Reference,
        model: &Model<B>,
        device: &B::Device,
    ) -> (f32, f32) {
        let tokens = padded_tokens::<B>(r, device);
        let states = r.json["hidden_states"].as_array().unwrap().clone();
        assert_eq!(states.len(), model.layers() + 1);
        let mut worst = 0.0f32;
        for (layer, want) in states.iter().enumerate() {
            let got = model.backbone().hidden(&tokens, layer);
            worst = worst.max(r.max_diff_of_masked(want, "attention_mask", got));
        }
        let logits = r.max_diff_real("logits", model.backbone().lm_logits(&tokens));
        (worst, logits)
    }

    /// The ids the fixture's `tokenizer.json` gives its reference sequences are the reference's
    /// (before padding).
    fn tokenizer_gives_the_reference_ids(arch: &str, r: &Reference) {
        let tok = tokenizers::Tokenizer::from_file(fixture(arch).join("tokenizer.json")).unwrap();
        let ids: Vec<Vec<i64>> = serde_json::from_value(r.json["input_ids"].clone()).unwrap();
        for (seq, row) in r.json["sequences"].as_array().unwrap().iter().zip(&ids) {
            let got = tok.encode(seq.as_str().unwrap(), true).unwrap();
            let got: Vec<i64> = got.get_ids().iter().map(|&i| i as i64).collect();
            assert_eq!(got, row[..got.len()], "{arch}: {seq}");
        }
    }

    /// ESM C against the `esm` package's own `ESMC` (its PyTorch attention path) on a
    /// right-padded batch: the package's tokenizer ids, every hidden state (the last after the
    /// final norm) and the sequence logits on the real positions (the package computes
    /// padding positions as attending to padding only; nothing reads them).
    #[test]
    fn esmc_matches_the_esm_package() {
        on_test_device!(|device: B| {
            let r = Reference::load("esmc");
            let model = load::<B>(&fixture("esmc"), &device);
            assert_eq!(model.spec().config.name(), "esmc");
            assert_eq!(model.spec().task, Task::Lm);
            tokenizer_gives_the_reference_ids("esmc", &r);
            let (worst, logits) = padded_forward_diffs(&r, &model, &device);
            figure(
                "esmc forward vs the esm package, max |diff|",
                format!("hidden states {worst:.2e}, logits {logits:.2e}"),
            );
            let tol = tolerance(1e-4);
            assert!(worst < tol, "a hidden state differs by {worst}");
            assert!(logits < tol, "logits differ by {logits}");
        })
    }

    /// An ESM C saved here reads back as ESM C with the same spec and logits.
    #[test]
    fn a_saved_esmc_reloads_with_the_same_logits() {
        let dev = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let r = Reference::load("esmc");
        let model = load::<Flex>(&fixture("esmc"), &dev);
        model.save_dir(&tmp.path().join("esmc"), None).unwrap();
        let (config, json) = read_config(&tmp.path().join("esmc")).unwrap();
        assert_eq!(
            (config.name(), &json["model_type"]),
            ("esmc", &"esmc".into())
        );
        let reloaded = load::<Flex>(&tmp.path().join("esmc"), &dev);
        assert_eq!(reloaded.spec(), model.spec());
        let (_, logits) = padded_forward_diffs(&r, &reloaded, &dev);
        assert!(logits < 1e-4, "reloaded logits differ by {logits}");
    }

    /// DNABERT-2 against `make_dnabert2.py`'s torch implementation of its published PyTorch
    /// path (ALiBi with 12 heads, GEGLU, unpadding), on a right-padded batch with token types:
    /// the fixture's tokenizer gives its ids, the slopes are MosaicBERT's, every hidden state
    /// and the logits match on the real positions (the reference encoder zeroes padding).
    #[test]
    fn dnabert2_matches_its_published_pytorch_path() {
        on_test_device!(|device: B| {
            let r = Reference::load("dnabert2");
            let model = load::<B>(&fixture("dnabert2"), &device);
            assert_eq!(model.spec().config.name(), "dnabert2");
            assert_eq!(model.spec().task, Task::Lm);
            let arch::Backbone::DnaBert2(m) = model.backbone() else {
                panic!("dnabert2")
            };
            let slopes: Vec<f32> = serde_json::from_value(r.json["alibi_slopes"].clone()).unwrap();
            assert_eq!(arch::dnabert2::alibi_slopes(12), slopes);
            tokenizer_gives_the_reference_ids("dnabert2", &r);
            assert_eq!(m.layers(), 2);
            let (worst, logits) = padded_forward_diffs(&r, &model, &device);
            figure(
                "dnabert2 forward vs its published PyTorch path, max |diff|",
                format!("hidden states {worst:.2e}, logits {logits:.2e}"),
            );
            let tol = tolerance(1e-4);
            assert!(worst < tol, "a hidden state differs by {worst}");
            assert!(logits < tol, "logits differ by {logits}");
        })
    }

    /// A DNABERT-2 saved here is DNABERT-2's layout again (`bert` with its `auto_map`), reloads
    /// here with the same logits, and (where python3 has torch) loads strictly into the fixture
    /// script's implementation of its code with the same logits.
    #[test]
    fn a_saved_dnabert2_reloads_here_and_in_its_reference() {
        let dev = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let r = Reference::load("dnabert2");
        let model = load::<Flex>(&fixture("dnabert2"), &dev);
        let dir = tmp.path().join("dnabert2");
        model.save_dir(&dir, None).unwrap();
        let (config, json) = read_config(&dir).unwrap();
        assert_eq!(config.name(), "dnabert2");
        assert_eq!(json["model_type"], "bert");
        assert_eq!(json["auto_map"]["AutoModel"], "bert_layers.BertModel");
        assert_eq!(ModelSpec::read(&dir).unwrap(), *model.spec());
        let reloaded = load::<Flex>(&dir, &dev);
        let tokens = padded_tokens::<Flex>(&r, &dev);
        let diff = r.max_diff_real("logits", reloaded.backbone().lm_logits(&tokens));
        assert!(diff < 1e-4, "reloaded logits differ by {diff}");
        if !python_has("torch, safetensors") {
            eprintln!("skipping the reference reload of dnabert2: python3 has no torch");
            return;
        }
        let out = std::process::Command::new("python3")
            .arg(fixture("make_dnabert2.py"))
            .arg("check")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff: f32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        figure(
            "dnabert2 saved here, reloaded in its reference, max |logit diff|",
            format!("{diff:.2e}"),
        );
        assert!(diff < 1e-4, "the reference's logits differ by {diff}");
    }

    /// A config with DNABERT-2's `auto_map` is DNABERT-2; the plain BERT fixture is still BERT;
    /// a `bert` whose `auto_map` names other code is an error saying so.
    #[test]
    fn configs_with_dnabert2s_auto_map_are_dnabert2_and_plain_bert_stays_bert() {
        let tmp = tempfile::tempdir().unwrap();
        let read = |json: &serde_json::Value| {
            std::fs::write(tmp.path().join("config.json"), json.to_string()).unwrap();
            read_config(tmp.path()).map(|(c, _)| c.name())
        };
        let text = std::fs::read_to_string(fixture("dnabert2").join("config.json")).unwrap();
        let mut dnabert2: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read(&dnabert2).unwrap(), "dnabert2");
        let text = std::fs::read_to_string(fixture("bert").join("config.json")).unwrap();
        let bert: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(read(&bert).unwrap(), "bert");
        dnabert2["auto_map"] = serde_json::json!({"AutoModel": "modeling_other.OtherModel"});
        let err = read(&dnabert2).unwrap_err().to_string();
        assert!(err.contains("not Hugging Face's BERT"), "{err}");
    }

    /// An unsupported `rope_scaling`, and heads that do not group, are errors naming the field.
    #[test]
    fn llama_configs_that_cannot_run_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("llama-gqa").join("config.json")).unwrap(),
        )
        .unwrap();
        cfg["rope_parameters"] =
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4});
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        std::fs::copy(
            fixture("llama-gqa").join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let err = Model::<Flex>::load(dir.path(), None, 0, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rope_scaling type `yarn`"), "{err}");
        cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e4});
        cfg["num_key_value_heads"] = 3.into();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let err = Model::<Flex>::load(dir.path(), None, 0, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiple of num_key_value_heads (3)"), "{err}");
    }

    /// A LLaMA published as PyTorch pickles, the way many hub repositories ship it: the
    /// fixture's weights written by `torch.save` as one `pytorch_model.bin` and as two shards
    /// with `pytorch_model.bin.index.json` (by Python, at test time, when torch is there), read
    /// here without running the pickle: the same logits as the safetensors original.
    #[test]
    fn llama_loads_from_pytorch_bin_files_and_their_shards() {
        if !python_has("torch, safetensors") {
            eprintln!("skipping the pytorch_model.bin load: python3 has no torch/safetensors");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let script = r#"
import json, shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file
src, out = Path(sys.argv[1]), Path(sys.argv[2])
state = load_file(src / "model.safetensors")
for name, shards in (("one", 1), ("sharded", 2)):
    d = out / name
    d.mkdir(parents=True)
    shutil.copy(src / "config.json", d / "config.json")
    if shards == 1:
        torch.save(state, d / "pytorch_model.bin")
        continue
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({n: state[n] for n in part}, d / file)
        weight_map.update({n: file for n in part})
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(fixture("llama-gqa"))
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = Reference::load("llama-gqa");
        let dev = Default::default();
        for layout in ["one", "sharded"] {
            let model = load::<Flex>(&tmp.path().join(layout), &dev);
            let logits = model
                .backbone()
                .lm_logits(&all_real(r.ints::<Flex>("input_ids", &dev)));
            let diff = r.max_diff("logits", logits);
            assert!(diff < 1e-4, "{layout}: logits differ by {diff}");
        }
    }

    /// Generation's KV cache on every causal architecture: the prompt at once, then one token
    /// per step, gives the logits of the full forward at every position.
    #[test]
    fn llama_cached_logits_match_the_full_forward() {
        on_test_device!(|device: B| {
            for name in ["llama-gqa", "llama3-rope"] {
                let r = Reference::load(name);
                let model = load::<B>(&fixture(name), &device);
                let ids = r.ints::<B>("input_ids", &device);
                let diff = cached_vs_full(&model, ids);
                figure(
                    &format!("{name} KV-cached vs full logits, max |diff|"),
                    format!("{diff:.2e}"),
                );
                assert!(diff < tolerance(1e-4), "{name}: {diff}");
            }
        })
    }

    /// Token ids with every position real.
    fn all_real<B: Backend>(ids: Tensor<B, 2, Int>) -> arch::Tokens<B> {
        arch::Tokens {
            types: ids.zeros_like(),
            mask: ids.ones_like(),
            ids,
            padded: false,
        }
    }

    /// Largest difference between cached logits (3 prompt tokens, then one per step) and the
    /// full forward's.
    fn cached_vs_full<B: FusedOps>(model: &Model<B>, ids: Tensor<B, 2, Int>) -> f32 {
        let [b, t] = ids.dims();
        let (_, full) = weights::host(model.backbone().lm_logits(&all_real(ids.clone())));
        let v = full.len() / (b * t);
        let mut cache = KvCache::default();
        let prompt = 3;
        let mut worst = 0.0f32;
        let mut pos = 0;
        while pos < t {
            let n = if pos == 0 { prompt } else { 1 };
            let logits = model
                .forward_cached(ids.clone().slice([0..b, pos..pos + n]), &mut cache)
                .unwrap();
            let (_, got) = weights::host(logits);
            for s in 0..b {
                for i in 0..n {
                    let want = &full[(s * t + pos + i) * v..][..v];
                    let have = &got[(s * n + i) * v..][..v];
                    worst = worst.max(max_abs_diff(want, have));
                }
            }
            pos += n;
        }
        assert_eq!(cache.len(), t);
        worst
    }

    /// The op-by-op attention (dropout, bf16/f16, KV cache) and the fused node agree on every
    /// kind of keys. (On CUDA the fused node is burn's composed ops, so this checks the two
    /// composed forms against each other there.)
    #[test]
    fn stepwise_attention_matches_the_fused_node() {
        on_test_device!(|device: B| {
            <B as Backend>::seed(&device, 11);
            let (b, t) = (2, 6);
            let mut padding = vec![0.0f32; b * t];
            padding[t + 4] = MASKED;
            padding[t + 5] = MASKED;
            let padding = Tensor::<B, 2>::from_data(TensorData::new(padding, [b, t]), &device);
            let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
            let mut worst = 0.0f32;
            let slopes: std::sync::Arc<[f32]> = [0.5f32, 0.25, 0.125, 0.0625].into();
            for (heads, kv_heads) in [(3, 3), (4, 2)] {
                let base = AttentionSpec {
                    kv_heads,
                    ..AttentionSpec::multi_head(heads, heads * 4, false)
                };
                let qkv = Tensor::<B, 3>::random(
                    [b, t, base.packed_width()],
                    burn::tensor::Distribution::Default,
                    &device,
                );
                for (causal, padded, alibi) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (true, true, heads == 4),
                ] {
                    let spec = AttentionSpec {
                        causal,
                        alibi: alibi.then(|| slopes.clone()),
                        ..base.clone()
                    };
                    let padding = padded.then(|| padding.clone());
                    let (_, stepwise) = weights::host(crate::models::nn::attention_stepwise(
                        kernels::split_qkv(qkv.clone(), &spec),
                        padding.clone(),
                        &spec,
                        &no_dropout,
                        Precision::F32,
                    ));
                    let (_, fused) = weights::host(kernels::attention(qkv.clone(), padding, &spec));
                    worst = worst.max(max_abs_diff(&stepwise, &fused));
                }
            }
            figure(
                "stepwise vs fused attention, max |diff|",
                format!("{worst:.2e}"),
            );
            assert!(worst < tolerance(1e-5), "{worst}");
        })
    }

    #[test]
    fn bert_matches_transformers() {
        on_test_device!(|device: B| {
            let r = Reference::load("bert");
            let model = load_bert::<B>(&fixture("bert"), &device);
            let (ids, types, mask) = (
                r.ints::<B>("input_ids", &device),
                r.ints::<B>("token_type_ids", &device),
                r.ints::<B>("attention_mask", &device),
            );
            let hidden = model.hidden(ids.clone(), types.clone(), mask.clone());
            let padded = hidden.dims()[0] * hidden.dims()[1];
            let real = weights::host(mask.clone().float()).1.iter().sum::<f32>() as usize;
            assert!(real < padded, "the reference batch has padding to skip");
            // Real tokens only: dnaflow's encoder runs the real tokens packed and leaves
            // padding at zero (HF computes values there that no loss or pooling reads).
            let hidden = r.max_diff_real("hidden", hidden);
            let logits = r.max_diff_real("logits", model.mlm_logits(ids, types, mask).unwrap());
            figure(
                "bert forward vs transformers, max |diff|",
                format!("hidden {hidden:.2e}, logits {logits:.2e}"),
            );
            let tol = tolerance(1e-4);
            assert!(hidden < tol, "hidden states differ by {hidden}");
            assert!(logits < tol, "logits differ by {logits}");
        })
    }

    /// ESM-2 against transformers' `EsmForMaskedLM`: every hidden state and the logits, on a
    /// batch with a `<mask>` in one row (token_dropout scales the rows differently) and on a
    /// right-padded batch (padding positions are zeros here, so they are not compared).
    #[test]
    fn esm_matches_transformers() {
        on_test_device!(|device: B| {
            let r = Reference::load("esm");
            let model = load::<B>(&fixture("esm"), &device);
            let arch::Backbone::Esm(esm) = model.backbone() else {
                panic!("esm")
            };
            let tol = tolerance(1e-4);
            for (prefix, ids, mask) in [
                ("", "input_ids", None),
                ("padded_", "padded_input_ids", Some("padded_attention_mask")),
            ] {
                let ids = r.ints::<B>(ids, &device);
                let mask_ids = match mask {
                    Some(key) => r.ints::<B>(key, &device),
                    None => ids.ones_like(),
                };
                let states = r.json[format!("{prefix}hidden_states")]
                    .as_array()
                    .unwrap()
                    .clone();
                assert_eq!(states.len(), esm.layers() + 1);
                let mut worst = 0.0f32;
                for (layer, want) in states.iter().enumerate() {
                    let got = esm.hidden_at(ids.clone(), mask_ids.clone(), layer);
                    let diff = match mask {
                        Some(key) => {
                            let rows: Vec<Vec<i64>> =
                                serde_json::from_value(r.json[key].clone()).unwrap();
                            let mut json = r.json.clone();
                            json["_want"] = want.clone();
                            json["_mask"] = serde_json::json!(rows);
                            Reference { json }.max_diff_masked("_want", "_mask", got)
                        }
                        None => r.max_diff_of(want, got),
                    };
                    worst = worst.max(diff);
                }
                let logits = esm.mlm_logits(ids, mask_ids).unwrap();
                let logits = match mask {
                    Some(key) => r.max_diff_masked(&format!("{prefix}logits"), key, logits),
                    None => r.max_diff("logits", logits),
                };
                figure(
                    &format!("esm {prefix}forward vs transformers, max |diff|"),
                    format!("hidden states {worst:.2e}, logits {logits:.2e}"),
                );
                assert!(
                    worst < tol,
                    "esm {prefix}: a hidden state differs by {worst}"
                );
                assert!(logits < tol, "esm {prefix}: logits differ by {logits}");
            }
        })
    }

    /// LucaOne against the `lucaone` package's `LucaGPLMForMaskedLM`: every hidden state and
    /// the logits on a nucleotide row (token type 0) beside a protein row (type 1), all real
    /// and right-padded (padding positions are zeros here, so they are not compared).
    #[test]
    fn lucaone_matches_its_package() {
        on_test_device!(|device: B| {
            let r = Reference::load("lucaone");
            let model = load::<B>(&fixture("lucaone"), &device);
            let arch::Backbone::LucaOne(luca) = model.backbone() else {
                panic!("lucaone")
            };
            let tol = tolerance(1e-4);
            for prefix in ["", "padded_"] {
                let key = |k: &str| format!("{prefix}{k}");
                let ids = r.ints::<B>(&key("input_ids"), &device);
                let types = r.ints::<B>(&key("token_type_ids"), &device);
                let mask_key = key("attention_mask");
                let mask = if prefix.is_empty() {
                    ids.ones_like()
                } else {
                    r.ints::<B>(&mask_key, &device)
                };
                let mut json = r.json.clone();
                let rows: Vec<Vec<i64>> = serde_json::from_value(
                    weights::host(mask.clone().float())
                        .1
                        .chunks(ids.dims()[1])
                        .map(|c| c.iter().map(|&v| v as i64).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                        .into(),
                )
                .unwrap();
                json["_mask"] = serde_json::json!(rows);
                let states = r.json[key("hidden_states")].as_array().unwrap().clone();
                assert_eq!(states.len(), luca.layers() + 1);
                let mut worst = 0.0f32;
                for (layer, want) in states.iter().enumerate() {
                    json["_want"] = want.clone();
                    let got = luca.hidden_at(ids.clone(), types.clone(), mask.clone(), layer);
                    let r = Reference { json: json.clone() };
                    worst = worst.max(r.max_diff_masked("_want", "_mask", got));
                }
                let logits = luca.mlm_logits(ids, types, mask).unwrap();
                json["_want"] = r.json[key("logits")].clone();
                let logits = Reference { json }.max_diff_masked("_want", "_mask", logits);
                figure(
                    &format!("lucaone {prefix}forward vs the lucaone package, max |diff|"),
                    format!("hidden states {worst:.2e}, logits {logits:.2e}"),
                );
                assert!(
                    worst < tol,
                    "lucaone {prefix}: a hidden state differs by {worst}"
                );
                assert!(logits < tol, "lucaone {prefix}: logits differ by {logits}");
            }
        })
    }

    /// LucaOne saved here loads in the `lucaone` package with the same logits (nucleotide and
    /// protein rows, padded and not), when python3 has it.
    #[test]
    fn lucaone_saved_here_reloads_in_its_package() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = Default::default();
        let model = load::<Flex>(&fixture("lucaone"), &dev);
        let dir = tmp.path().join("lucaone");
        model.save_dir(&dir, None).unwrap();
        assert_eq!(ModelSpec::read(&dir).unwrap(), *model.spec());
        let r = Reference::load("lucaone");
        let reloaded = load::<Flex>(&dir, &dev);
        let tokens = arch::Tokens {
            ids: r.ints::<Flex>("input_ids", &dev),
            types: r.ints::<Flex>("token_type_ids", &dev),
            mask: r.ints::<Flex>("input_ids", &dev).ones_like(),
            padded: false,
        };
        let diff = r.max_diff("logits", reloaded.backbone().lm_logits(&tokens));
        assert!(diff < 1e-4, "{diff}");
        if !python_has("torch, transformers, lucaone") {
            eprintln!("skipping the lucaone reload: python3 has no torch/transformers/lucaone");
            return;
        }
        let out = std::process::Command::new("python3")
            .arg(fixture("make_lucaone.py"))
            .args(["check", &dir.display().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff: f32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        figure(
            "lucaone saved here, reloaded in the lucaone package (CPU), max |logit diff|",
            format!("{diff:.2e}"),
        );
        assert!(diff < 1e-4, "the lucaone package's logits differ by {diff}");
    }

    /// A config.json whose architecture no row builds is an error naming every row.
    #[test]
    fn an_unknown_architecture_lists_the_rows() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("config.json"),
            r#"{"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}"#,
        )
        .unwrap();
        let err = read_config(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        for row in ARCHITECTURES {
            assert!(
                err.contains(row.model_type),
                "{err} lacks {}",
                row.model_type
            );
        }
    }

    /// Save what we loaded, reload it here, and (when torch is installed) in transformers.
    #[test]
    fn saved_models_reload_with_the_same_logits() {
        on_test_device!(|device: B| {
            let tmp = tempfile::tempdir().unwrap();
            for arch in [
                "gpt2",
                "bert",
                "llama-gqa",
                "llama-tied",
                "llama3-rope",
                "esm",
            ] {
                let dir = tmp.path().join(arch);
                let model = load::<B>(&fixture(arch), &device);
                // ESM's fixture ships vocab.txt, no tokenizer.json: its row builds one, saved
                // beside a copy of vocab.txt and tokenizer_config.json.
                let tokenizer = (arch == "esm").then(|| fixture(arch).join("tokenizer.json"));
                model.save_dir(&dir, tokenizer.as_deref()).unwrap();
                if arch == "esm" {
                    for file in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
                        assert!(dir.join(file).is_file(), "{file}");
                    }
                }
                assert_eq!(ModelSpec::read(&dir).unwrap(), *model.spec());
                let r = Reference::load(arch);
                let diff = match arch {
                    "gpt2" => r.max_diff(
                        "logits",
                        load_gpt2::<B>(&dir, &device).forward(r.ints::<B>("input_ids", &device)),
                    ),
                    "bert" => {
                        let m = load_bert::<B>(&dir, &device);
                        r.max_diff_real(
                            "logits",
                            m.mlm_logits(
                                r.ints::<B>("input_ids", &device),
                                r.ints::<B>("token_type_ids", &device),
                                r.ints::<B>("attention_mask", &device),
                            )
                            .unwrap(),
                        )
                    }
                    _ => {
                        let m = load::<B>(&dir, &device);
                        r.max_diff(
                            "logits",
                            m.backbone()
                                .lm_logits(&all_real(r.ints::<B>("input_ids", &device))),
                        )
                    }
                };
                figure(
                    &format!("{arch} saved and reloaded, max |logit diff| vs transformers"),
                    format!("{diff:.2e}"),
                );
                assert!(diff < tolerance(1e-4), "{arch}: {diff}");
                python_reload(&dir, arch);
            }
        })
    }

    fn python_reload(dir: &Path, arch: &str) {
        if !python_has("torch, transformers") {
            eprintln!(
                "skipping the transformers reload of {arch}: python3 has no torch/transformers"
            );
            return;
        }
        let mut cmd = std::process::Command::new("python3");
        if arch == "esm" {
            cmd.arg(fixture("make_esm.py"))
                .args(["check", &dir.display().to_string()]);
        } else {
            cmd.arg(fixture("make_reference.py"))
                .args(["check", &dir.display().to_string(), arch]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff: f32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        figure(
            &format!("{arch} saved here, reloaded in transformers (CPU), max |logit diff|"),
            format!("{diff:.2e}"),
        );
        assert!(
            diff < 1e-4,
            "{arch} reloaded in transformers differs by {diff}"
        );
    }

    /// The loop settings of the models' training tests: `steps` at a constant `lr` after
    /// `warmup_steps`, AdamW as PyTorch's with weight decay 0.01, clipping at 1, seed 3, a
    /// checkpoint every `save_every` steps (0: none).
    fn test_train_config(
        steps: usize,
        lr: f64,
        warmup_steps: usize,
        save_every: usize,
        precision: Precision,
    ) -> crate::train::TrainConfig {
        use crate::train::optim::AdamWConfig;
        crate::train::TrainConfig {
            steps,
            grad_accum: 1,
            lr,
            warmup_steps,
            schedule: crate::train::Schedule::Constant,
            adamw: AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            clip_norm: Some(1.0),
            eval_every: 0,
            save_every,
            log_every: 1,
            seed: 3,
            precision,
            keep_best: false,
            select: "loss".into(),
            patience: None,
            head: Vec::new(),
            head_lr: None,
            parallel: Default::default(),
        }
    }

    /// A few optimizer steps of the fixture-sized GPT-2 on a periodic sequence, on the test
    /// device with matrix products in `precision`: every loss finite and the last ones below
    /// the first; then the trained weights saved, reloaded and giving the same logits.
    fn train_save_reload<AB>(device: &AB::Device, precision: Precision, arch: &str)
    where
        AB: AutodiffBackend + FusedOps,
        AB::InnerBackend: FusedOps,
    {
        use crate::train::{Env, Objective, Order, Progress, Row, TrainData, batch, train};
        use std::sync::atomic::AtomicBool;

        let spec = ModelSpec::read(&fixture(arch)).unwrap();
        let build = |w: Weights| {
            Model::<AB>::from_weights(&spec, w, 1, device).map(|m| m.0.with_precision(precision))
        };
        let model = build(spec.init_weights(1).unwrap()).unwrap();
        let doc = Row {
            ids: (0..400).map(|i| [3u32, 7, 9, 12, 5][i % 5]).collect(),
            bases: vec![1; 400],
            target: crate::train::Target::None,
            second: 0,
            token_type: 0,
        };
        let rows = batch::pack(&[doc], 16, None);
        let mut data = TrainData {
            order: Order::new(rows.len(), 4, 0, true),
            rows,
            objective: Objective::Clm,
            pad: 0,
            batch_size: 4,
        };
        let steps = 20;
        let tc = test_train_config(steps, 0.02, 2, 0, precision);
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Vec::new();
        let mut progress = |_: &Progress| {};
        let cancelled = AtomicBool::new(false);
        let mut env = Env {
            checkpoints: tmp.path(),
            log: &mut log,
            cancelled: &cancelled,
            progress: &mut progress,
        };
        let trained = train::<AB>(model, &mut data, &[], &tc, device, &mut env)
            .unwrap_or_else(|e| panic!("{precision} training failed: {e}"));
        let losses: Vec<f64> = trained.state.history.iter().map(|h| h.loss).collect();
        assert_eq!(losses.len(), steps, "{}", String::from_utf8_lossy(&log));
        let first = losses[0];
        let tail = losses[steps - 3..].iter().sum::<f64>() / 3.0;
        figure(
            &format!("{arch} {precision} training, loss over {steps} steps"),
            format!("{first:.4} -> {tail:.4} (mean of the last 3)"),
        );
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{precision}: a loss is not finite: {losses:?}"
        );
        assert!(
            tail < first - 0.1,
            "{precision}: the loss did not fall: {losses:?}"
        );

        // Saved as a model directory, reloaded on the same device: the same logits.
        let dir = tmp.path().join("model");
        trained.model.save_dir(&dir, None).unwrap();
        let reloaded = load::<AB::InnerBackend>(&dir, device).with_precision(precision);
        let batch = reference_batch(&Reference::load(arch));
        let (_, want) = weights::host(trained.model.valid().forward(&batch, device));
        let (_, got) = weights::host(reloaded.forward(&batch, device));
        let diff = max_abs_diff(&want, &got);
        figure(
            &format!("{precision} trained model saved and reloaded, max |logit diff|"),
            format!("{diff:.2e}"),
        );
        // The same weights and products; bf16 keeps 8 bits of mantissa should a different
        // kernel be picked for the second forward.
        let tol = match precision {
            Precision::F32 => tolerance(1e-5),
            _ => 2e-2,
        };
        assert!(diff < tol, "{precision}: reloaded logits differ by {diff}");
    }

    #[test]
    fn f32_training_steps_lower_the_loss_and_survive_a_reload() {
        on_test_device!(|device: B| {
            train_save_reload::<Autodiff<B>>(&device, Precision::F32, "gpt2");
            train_save_reload::<Autodiff<B>>(&device, Precision::F32, "llama-gqa");
        })
    }

    /// bf16 matrix products are a CUDA feature (a step asking for them on the CPU is refused),
    /// so this runs only with `DNAFLOW_TEST_DEVICE=cuda[:N]`.
    #[test]
    fn bf16_training_steps_lower_the_loss_and_survive_a_reload() {
        if !matches!(test_device(), DeviceSpec::Cuda(_)) {
            eprintln!(
                "skipping bf16 training: bf16 products are for CUDA (precision bf16 is refused \
                 on the CPU); run with DNAFLOW_TEST_DEVICE=cuda on a GPU machine"
            );
            return;
        }
        on_test_device!(|device: B| {
            train_save_reload::<Autodiff<B>>(&device, Precision::Bf16, "gpt2");
            train_save_reload::<Autodiff<B>>(&device, Precision::Bf16, "llama-gqa");
        })
    }

    /// CPU only: the names and shapes are checked on the host before any tensor is made.
    #[test]
    fn a_wrong_checkpoint_names_every_problem() {
        let mut spec = ModelSpec::read(&fixture("gpt2")).unwrap();
        let ArchConfig::Gpt2(cfg) = &mut spec.config else {
            panic!()
        };
        cfg.n_layer = 3;
        cfg.n_embd = 8;
        let w = Weights::load(&fixture("gpt2").join("model.safetensors")).unwrap();
        let err = Model::<Flex>::from_weights(&spec, w, 0, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(
            err.contains("`transformer.h.2.ln_1.weight` is missing"),
            "{err}"
        );
    }

    /// CPU only: fresh weights are made on the host; this checks their names round-trip.
    #[test]
    fn fresh_models_build_from_their_own_init() {
        for arch in [
            "gpt2",
            "bert",
            "llama-gqa",
            "llama-tied",
            "dnabert2",
            "esmc",
            "esm",
            "lucaone",
        ] {
            let spec = ModelSpec::read(&fixture(arch)).unwrap();
            let w = spec.init_weights(7).unwrap();
            let names: Vec<String> = w.names().map(String::from).collect();
            let (model, report) =
                Model::<Flex>::from_weights(&spec, w, 7, &Default::default()).unwrap();
            assert_eq!(report, LoadReport::default());
            let again: Vec<String> = model.to_weights().names().map(String::from).collect();
            assert_eq!(names, again, "{arch}");
        }
    }

    /// A language-model checkpoint loaded under a task head: the LM head's tensors are
    /// skipped and the new head's initialised fresh, each named; a tensor missing from the
    /// backbone is still an error.
    #[test]
    fn a_checkpoint_under_a_new_head_reports_what_it_skipped_and_started() {
        let dev = Default::default();
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let (_, report) = Model::<Flex>::load(
            &fixture("bert"),
            Some(Task::SeqCls {
                labels: labels.clone(),
            }),
            1,
            &dev,
        )
        .unwrap();
        assert!(
            report
                .skipped
                .iter()
                .any(|n| n == "cls.predictions.transform.dense.weight"),
            "{report:?}"
        );
        assert_eq!(
            report.fresh,
            vec![
                "bert.pooler.dense.bias",
                "bert.pooler.dense.weight",
                "classifier.bias",
                "classifier.weight"
            ],
        );
        let (_, report) = Model::<Flex>::load(
            &fixture("gpt2"),
            Some(Task::Regression { mean: 0.0, sd: 1.0 }),
            1,
            &dev,
        )
        .unwrap();
        assert_eq!(report.fresh, vec!["score.weight"]);

        let spec = ModelSpec {
            task: Task::TokenCls { labels },
            ..ModelSpec::read(&fixture("gpt2")).unwrap()
        };
        let mut w = Weights::load(&fixture("gpt2").join("model.safetensors")).unwrap();
        w.remove("transformer.h.0.ln_1.weight");
        let err = Model::<Flex>::from_weights(&spec, w, 1, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`transformer.h.0.ln_1.weight` is missing"),
            "{err}"
        );
    }

    /// Fine-tuned heads saved here load in transformers (AutoModelFor{Sequence,Token}
    /// Classification; a multi-label head with its `problem_type`) with the same logits; a regression head saved in the target's unit
    /// reloads here standardised again, with the same predictions.
    #[test]
    fn task_heads_reload_here_and_in_transformers() {
        let dev = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let labels = vec!["x".to_string(), "y".to_string(), "z".to_string()];
        let mut saved = Vec::new();
        for (arch, task) in [
            (
                "gpt2",
                Task::SeqCls {
                    labels: labels.clone(),
                },
            ),
            (
                "bert",
                Task::SeqCls {
                    labels: labels.clone(),
                },
            ),
            (
                "gpt2",
                Task::TokenCls {
                    labels: labels.clone(),
                },
            ),
            (
                "bert",
                Task::TokenCls {
                    labels: labels.clone(),
                },
            ),
            (
                "gpt2",
                Task::Regression {
                    mean: -20.0,
                    sd: 8.0,
                },
            ),
            (
                "bert",
                Task::Regression {
                    mean: -20.0,
                    sd: 8.0,
                },
            ),
            (
                "gpt2",
                Task::MultiLabel {
                    labels: labels.clone(),
                },
            ),
            (
                "llama-gqa",
                Task::SeqCls {
                    labels: labels.clone(),
                },
            ),
            (
                "llama-gqa",
                Task::TokenCls {
                    labels: labels.clone(),
                },
            ),
            // LLaMA's head learns y / sd uncentred (its mean has nowhere to fold).
            ("llama-gqa", Task::Regression { mean: 0.0, sd: 8.0 }),
            (
                "esm",
                Task::SeqCls {
                    labels: labels.clone(),
                },
            ),
            (
                "esm",
                Task::TokenCls {
                    labels: labels.clone(),
                },
            ),
            (
                "esm",
                Task::Regression {
                    mean: -20.0,
                    sd: 8.0,
                },
            ),
        ] {
            let r = Reference::load(arch);
            let mut spec = ModelSpec::read(&fixture(arch)).unwrap();
            spec.task = task.clone();
            spec.config.set_pad_token_id(0);
            let w = Weights::load(&fixture(arch).join("model.safetensors")).unwrap();
            let (model, _) = Model::<Flex>::from_weights(&spec, w, 3, &dev).unwrap();
            let batch = reference_batch(&r);
            let out = |m: &Model<Flex>| {
                let (_, v) = weights::host(m.forward(&batch, &dev));
                match &task {
                    Task::Regression { mean, sd } => {
                        v.iter().map(|z| z * *sd as f32 + *mean as f32).collect()
                    }
                    _ => v,
                }
            };
            let want: Vec<f32> = out(&model);
            let dir = tmp.path().join(format!("{arch}-{}", task.name()));
            model.save_dir(&dir, None).unwrap();
            assert_eq!(ModelSpec::read(&dir).unwrap().class(), spec.class());
            let (reloaded, report) =
                Model::<Flex>::load(&dir, Some(task.clone()), 0, &dev).unwrap();
            assert_eq!(report, LoadReport::default(), "{arch} {}", task.name());
            let diff = max_abs_diff(&want, &out(&reloaded));
            assert!(
                diff < 1e-4,
                "{arch} {}: reloaded differs by {diff}",
                task.name()
            );
            let ids = serde_json::to_string(&r.json["input_ids"]).unwrap();
            saved.push((dir, ids, want, format!("{arch} {}", task.name())));
        }
        python_check_heads(&saved);
    }

    mod lora;
    mod shapes;

    /// The LM head at labelled positions only gives the loss of the head at every position:
    /// a prompt-masked batch (answers only) and a masked-LM batch, on each architecture.
    #[test]
    fn the_loss_from_labelled_positions_alone_is_the_full_loss() {
        use crate::train::Objective;
        let dev = Default::default();
        for arch in ["gpt2", "bert", "llama-gqa", "dnabert2", "esmc", "esm"] {
            let model = load::<Flex>(&fixture(arch), &dev);
            let mut batch = reference_batch(&Reference::load(arch));
            let vocab = model.spec().config.vocab_size() as i64;
            for (i, l) in batch.labels.iter_mut().enumerate() {
                if i % 5 == 3 {
                    *l = (i as i64 * 7) % vocab;
                }
            }
            batch.labelled = batch.labels.iter().filter(|&&l| l >= 0).count();
            let full = Objective::Clm
                .loss(model.forward(&batch, &dev), &batch, &dev)
                .into_scalar();
            let rows = model
                .lm_logits_labelled(&batch, &dev)
                .expect("a fifth of the positions labelled");
            assert_eq!(rows.dims()[0], batch.labelled);
            let labelled = Objective::Clm
                .loss_labelled(rows, &batch, &dev)
                .into_scalar();
            assert!(
                (full - labelled).abs() < 1e-4 * full.abs().max(1.0),
                "{arch}: {full} vs {labelled}"
            );
        }
    }

    /// The fixture's input ids as a batch (all positions real).
    fn reference_batch(r: &Reference) -> crate::train::Batch {
        let rows: Vec<Vec<i64>> = serde_json::from_value(r.json["input_ids"].clone()).unwrap();
        let (b, t) = (rows.len(), rows[0].len());
        let ids: Vec<i64> = rows.into_iter().flatten().collect();
        crate::train::Batch {
            b,
            t,
            types: vec![0; ids.len()],
            mask: vec![1; ids.len()],
            labels: vec![crate::train::batch::IGNORE; ids.len()],
            values: Vec::new(),
            labelled: 0,
            label_bases: 0,
            tokens: ids.len(),
            row_labels: vec![(0, 0); b],
            ids,
        }
    }

    /// transformers' logits of each saved head (directory, input ids, our logits, name) on the
    /// fixture's ids, against ours; one Python process for all.
    fn python_check_heads(saved: &[(PathBuf, String, Vec<f32>, String)]) {
        if !python_has("torch, transformers") {
            eprintln!("skipping the transformers check of the task heads: no torch/transformers");
            return;
        }
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(fixture("make_reference.py").with_file_name("make_reference.py"))
            .arg("head");
        for (dir, ids, _, _) in saved {
            cmd.arg(dir).arg(ids);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Vec<f32>> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), saved.len());
        for ((_, _, want, name), got) in saved.iter().zip(&lines) {
            let diff = max_abs_diff(want, got);
            figure(
                &format!("{name} head saved here, logits in transformers, max |diff|"),
                format!("{diff:.2e}"),
            );
            assert!(diff < 1e-4, "{name}: transformers' logits differ by {diff}");
        }
    }
}
