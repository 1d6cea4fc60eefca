//! LoRA against PEFT: adapters PEFT made load here with PEFT's logits; adapters trained here
//! train only their pairs and saved modules, resume exactly, save as PEFT does and load in
//! PEFT with our logits; merges equal the adapter.

use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, Flex};
use serde_json::Value;

use super::*;
use crate::models::io::adapter::{LoraSpec, Targets};
use crate::train::{Env, Objective, Order, Progress, Row, TrainData, Trained, batch, train};

type AB = Autodiff<Flex>;

fn expected(adapter: &str) -> Value {
    let text = std::fs::read_to_string(fixture(adapter).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        v => vec![v.as_f64().unwrap() as f32],
    }
}

fn ids_of(e: &Value) -> Tensor<Flex, 2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(e["ids"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, t]), &Default::default())
}

fn lm_logits<B: FusedOps>(model: &Model<B>, ids: Tensor<B, 2, Int>) -> Vec<f32> {
    weights::host(model.backbone().lm_logits(&all_real(ids))).1
}

/// A plain model of `model`'s base shapes with its pairs folded in.
fn merged<B: FusedOps>(model: &Model<B>, device: &B::Device) -> Model<B> {
    let plain = ModelSpec {
        adapter: None,
        ..model.spec().clone()
    };
    Model::from_weights(&plain, model.merged_weights(), 0, device)
        .unwrap()
        .0
}

/// PEFT's own adapters (llama: q/k/v/o/gate/up/down + a saved `lm_head`; GPT-2: Conv1D
/// layers, `fan_in_fan_out`, rsLoRA) load here and give PEFT's logits; merged, the plain model
/// gives `merge_and_unload`'s.
#[test]
fn peft_made_adapters_give_peft_logits_and_merge_as_peft_merges() {
    let dev = Default::default();
    for name in ["llama-gqa-lora", "gpt2-lora"] {
        let e = expected(name);
        let model = load::<Flex>(&fixture(name), &dev);
        assert!(model.spec().adapter.is_some(), "{name}");
        let got = lm_logits(&model, ids_of(&e));
        let diff = max_abs_diff(&got, &flat(&e["logits"]));
        let moved = max_abs_diff(&got, &flat(&e["base_logits"]));
        figure(
            &format!("{name} (made by PEFT) here, max |logit diff|"),
            format!("{diff:.2e}"),
        );
        assert!(diff < 1e-4, "{name}: logits differ from PEFT's by {diff}");
        assert!(
            moved > 1e-2,
            "{name}: the adapter changed nothing ({moved})"
        );
        let plain = merged(&model, &dev);
        let diff = max_abs_diff(&lm_logits(&plain, ids_of(&e)), &flat(&e["merged_logits"]));
        assert!(diff < 1e-4, "{name}: merged logits differ by {diff}");
    }
}

fn lora(targets: &[&str], save: &[&str]) -> LoraSpec {
    LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: Targets::Names(targets.iter().map(|t| t.to_string()).collect()),
        modules_to_save: save.iter().map(|t| t.to_string()).collect(),
    }
}

fn llama_with(adapter: LoraSpec) -> Model<AB> {
    let dir = fixture("llama-gqa");
    let mut spec = ModelSpec::read(&dir).unwrap();
    spec.adapter = Some(adapter);
    let w = read_weights(&dir, &spec).unwrap();
    Model::<AB>::from_weights(&spec, w, 5, &Default::default())
        .unwrap()
        .0
}

/// `steps` steps of LoRA on a periodic sequence (constant rate), checkpointing every 3, in
/// `dir`.
fn train_lora(model: Model<AB>, steps: usize, dir: &Path) -> Trained<Model<AB>> {
    let doc = Row {
        ids: (0..400).map(|i| [3u32, 7, 9, 12, 5][i % 5]).collect(),
        bases: vec![1; 400],
        target: crate::train::Target::None,
        second: 0,
        token_type: 0,
    };
    let rows = batch::pack(&[doc], 12, None);
    let mut data = TrainData {
        order: Order::new(rows.len(), 4, 0, true),
        rows,
        objective: Objective::Clm,
        pad: 0,
        batch_size: 4,
    };
    let tc = test_train_config(steps, 0.01, 0, 3, Precision::F32);
    let mut log = Vec::new();
    let mut progress = |_: &Progress| {};
    let cancelled = AtomicBool::new(false);
    let mut env = Env {
        checkpoints: dir,
        log: &mut log,
        cancelled: &cancelled,
        progress: &mut progress,
    };
    train::<AB>(model, &mut data, &[], &tc, &Default::default(), &mut env).unwrap()
}

/// A new adapter starts as the base (B is zero) and trains only its pairs and the saved
/// `lm_head`: every B moves off zero, the frozen base does not move, the checkpoint holds the
/// trained tensors and their moments only, and a run resumed from it ends where an unbroken
/// one does.
#[test]
fn lora_trains_only_its_pairs_and_saved_modules_and_resumes_exactly() {
    let adapter = lora(&["q_proj", "v_proj", "down_proj"], &["lm_head"]);
    let base = load::<Flex>(&fixture("llama-gqa"), &Default::default());
    let e = expected("llama-gqa-lora");
    let start = llama_with(adapter.clone());
    let diff = max_abs_diff(
        &lm_logits(&start.valid(), ids_of(&e)),
        &lm_logits(&base, ids_of(&e)),
    );
    assert!(
        diff < 1e-6,
        "a fresh adapter changes the base's logits by {diff}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let whole = train_lora(llama_with(adapter.clone()), 6, &tmp.path().join("whole"));
    let trained = whole.model.trained_weights();
    let names: Vec<&str> = trained.names().collect();
    // 2 layers × 3 targets × (A, B), and lm_head.
    assert_eq!(names.len(), 13, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.contains(".lora_") || *n == "lm_head.weight")
    );
    for n in names.iter().filter(|n| n.ends_with("lora_B.weight")) {
        let b = trained.get(n).unwrap().values;
        assert!(b.iter().any(|v| *v != 0.0), "{n} stayed zero");
    }
    let after = whole.model.to_weights();
    let before = base.to_weights();
    for n in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.norm.weight",
        "model.embed_tokens.weight",
    ] {
        assert_eq!(
            after.get(n).unwrap().values,
            before.get(n).unwrap().values,
            "{n} moved"
        );
    }
    assert_ne!(
        after.get("lm_head.weight").unwrap().values,
        before.get("lm_head.weight").unwrap().values
    );

    // The checkpoint at step 3: the trained tensors and, for each, two moments.
    let ckpt = tmp.path().join("resumed");
    // (A run of 5 steps killed after 4: the last checkpoint is step 3's.)
    let first = train_lora(llama_with(adapter.clone()), 4, &ckpt);
    assert_eq!(first.state.step, 4);
    let saved = Weights::load(&ckpt.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(saved.names().count(), 13);
    let moments = Weights::load(&ckpt.join("checkpoint/optimizer.safetensors")).unwrap();
    assert_eq!(
        moments.names().count(),
        26,
        "moments of frozen tensors were kept"
    );
    let resumed = train_lora(llama_with(adapter), 6, &ckpt);
    assert_eq!(resumed.resumed_from, 3);
    let losses =
        |t: &Trained<Model<AB>>| -> Vec<f64> { t.state.history.iter().map(|h| h.loss).collect() };
    assert_eq!(losses(&resumed), losses(&whole), "resumed losses differ");
}

/// Saved as PEFT saves an adapter, it loads back here with the same logits and, in PEFT
/// (`PeftModel.from_pretrained` over the base, called the default way), too; merged, the plain
/// model gives them as well.
#[test]
fn a_trained_adapter_saves_as_peft_and_loads_in_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = lora(
        &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        &["lm_head"],
    );
    let trained = train_lora(llama_with(adapter), 4, &tmp.path().join("run"));
    let model = trained.model.valid();
    let base = fixture("llama-gqa");
    let dir = tmp.path().join("adapter");
    model.save_adapter_dir(&dir, &base, None).unwrap();
    assert!(dir.join("adapter_model.safetensors").is_file());
    assert!(
        !dir.join("model.safetensors").exists(),
        "the frozen base was written"
    );
    let stored = Weights::load(&dir.join("adapter_model.safetensors")).unwrap();
    assert!(stored.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(stored.contains("base_model.model.lm_head.weight"));

    let e = expected("llama-gqa-lora");
    let want = lm_logits(&model, ids_of(&e));
    let again = load::<Flex>(&dir, &Default::default());
    assert!(max_abs_diff(&lm_logits(&again, ids_of(&e)), &want) < 1e-6);
    let plain = merged(&model, &Default::default());
    let diff = max_abs_diff(&lm_logits(&plain, ids_of(&e)), &want);
    assert!(diff < 1e-4, "merged logits differ by {diff}");

    if !python_has("torch, transformers, peft") {
        eprintln!("skipping the PEFT check: no torch/transformers/peft");
        return;
    }
    let out = std::process::Command::new("python3")
        .arg(fixture("peft_predict.py"))
        .arg(&base)
        .arg(&dir)
        .arg(e["ids"].to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let diff = max_abs_diff(&flat(&got), &want);
    figure(
        "adapter trained here, logits in PEFT, max |diff|",
        format!("{diff:.2e}"),
    );
    assert!(diff < 1e-4, "PEFT's logits differ by {diff}");
}

/// A target that names no linear layer is an error listing the layers there are.
#[test]
fn a_target_matching_no_layer_lists_the_layers() {
    let dir = fixture("llama-gqa");
    let mut spec = ModelSpec::read(&dir).unwrap();
    spec.adapter = Some(lora(&["q_proj", "qkv", "embed_tokens"], &[]));
    let w = read_weights(&dir, &spec).unwrap();
    let err = Model::<Flex>::from_weights(&spec, w, 0, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`qkv`") && err.contains("`embed_tokens`"),
        "{err}"
    );
    assert!(!err.contains("`q_proj`"), "{err}");
    assert!(
        err.contains("gate_proj") && err.contains("lm_head"),
        "{err}"
    );
}

/// An adapter directory as a starting point (`init:` of a training step) reads as its base
/// with the pairs merged in: PEFT's `merge_and_unload` logits, for Linear and Conv1D layers.
#[test]
fn an_adapter_directory_reads_as_its_merged_base() {
    let dev = Default::default();
    for name in ["llama-gqa-lora", "gpt2-lora"] {
        let dir = fixture(name);
        let spec = ModelSpec::read(&dir).unwrap();
        assert!(spec.adapter.is_none());
        let w = read_weights(&dir, &spec).unwrap();
        let plain = Model::<Flex>::from_weights(&spec, w, 0, &dev).unwrap().0;
        let e = expected(name);
        let diff = max_abs_diff(&lm_logits(&plain, ids_of(&e)), &flat(&e["merged_logits"]));
        assert!(
            diff < 1e-4,
            "{name}: merged on reading, logits differ by {diff}"
        );
    }
}

/// An adapter over a base of other shapes is refused naming the tensors that do not fit.
#[test]
fn an_adapter_over_a_base_of_other_shapes_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("llama-gqa-lora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let mut cfg: Value = serde_json::from_str(&text).unwrap();
    cfg["base_model_name_or_path"] = fixture("llama3-rope").display().to_string().into();
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let Err(err) = Model::<Flex>::load(&dir, None, 0, &Default::default()) else {
        panic!("an adapter over a base of other shapes loaded");
    };
    let err = err.to_string();
    assert!(err.contains("shape") && err.contains("lora_"), "{err}");
}
