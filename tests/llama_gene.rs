//! Chapter 4's pieces end to end through the binary: `tokenizer.extend` on a real
//! LLaMA-family tokenizer (its base ids kept, every new piece spelling itself, the result read
//! by `AutoTokenizer` with the same ids), `model.resize` to the extended vocabulary (the pair
//! loads in transformers), and LoRA continued pretraining over the resized model with the
//! embeddings and LM head trained in full: the adapter loads in PEFT over its base with our
//! logits, new token ids included, and `merge: true` writes the same model plain.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use burn::prelude::*;
use common::{Project, read};
use dnaflow::models::Model;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn path(p: PathBuf) -> String {
    p.display().to_string()
}

/// The workflow: extend the Mistral tokenizer with DNA pieces, pretrain a tiny LLaMA on it,
/// resize that model to the extended tokenizer, then continue with LoRA (adapter, and merged).
fn project() -> Project {
    let p = Project::new();
    let spm = path(fixture("tokenizers/llama/spm"));
    let corpus = path(fixture("tokenizers/corpus.txt"));
    let heldout = path(fixture("tokenizers/heldout.txt"));
    let english = path(fixture("tokenizers/llama/heldout_english.txt"));
    p.write(
        "wf.yaml",
        &format!(
            r#"name: gene
steps:
  extend:
    uses: tokenizer.extend
    with:
      base: {spm}
      train: [{corpus}]
      new_pieces: 200
      heldout: {{ dna: {heldout}, english: {english} }}
  base:
    uses: model.pretrain
    with:
      arch: llama
      tokenizer: {spm}
      train: {english}
      config: {{ hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, max_position_embeddings: 64 }}
      seq_len: 32
      steps: 2
      batch_size: 2
  resize:
    uses: model.resize
    with: {{ model: "${{{{ steps.base.model }}}}", tokenizer: "${{{{ steps.extend.tokenizer }}}}" }}
  lora:
    foreach: {{ merge: [false, true] }}
    uses: model.pretrain
    with:
      arch: llama
      init: "${{{{ steps.resize.model }}}}"
      tokenizer: "${{{{ steps.extend.tokenizer }}}}"
      train: {corpus}
      seq_len: 32
      steps: 3
      batch_size: 2
      lr: 0.01
      lora: {{ r: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj], modules_to_save: [embed_tokens, lm_head], merge: "${{{{ matrix.merge }}}}" }}
"#
        ),
    );
    p
}

/// Logits of a model directory (or adapter directory) loaded here, for `ids`.
fn our_logits(dir: &Path, ids: &[Vec<i64>]) -> Vec<f32> {
    let dev = Default::default();
    let model = Model::<Flex>::load(dir, None, 0, &dev).unwrap().0;
    let (b, t) = (ids.len(), ids[0].len());
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids.concat(), [b, t]), &dev);
    let tokens = dnaflow::models::arch::Tokens {
        types: ids.zeros_like(),
        mask: ids.ones_like(),
        ids,
        padded: false,
    };
    let logits = model.backbone().lm_logits(&tokens);
    logits.into_data().to_vec::<f32>().unwrap()
}

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        v => vec![v.as_f64().unwrap() as f32],
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn extend_resize_and_lora_load_in_transformers_and_peft() {
    let p = project();
    let r = p.run_ok(&["wf.yaml"]);

    // The extended tokenizer: base ids kept, DNA shorter, English no longer.
    let m: Value = serde_json::from_str(&read(&r.out("extend").join("metrics.json"))).unwrap();
    assert_eq!(m["pieces_added"], 200, "{m}");
    assert_eq!(m["first_new_id"], 32000, "{m}");
    assert!(m["dna_token_ratio"].as_f64().unwrap() < 0.8, "{m}");
    assert!(m["english_token_ratio"].as_f64().unwrap() <= 1.0, "{m}");
    let tok_dir = r.out("extend");
    let base =
        tokenizers::Tokenizer::from_file(fixture("tokenizers/llama/spm/tokenizer.json")).unwrap();
    let ext = tokenizers::Tokenizer::from_file(tok_dir.join("tokenizer.json")).unwrap();
    for (piece, id) in base.get_vocab(true) {
        assert_eq!(ext.token_to_id(&piece), Some(id), "{piece}");
    }
    let texts = [
        "ACGTACGTTTGAGGCATTACGATCGATCGGGCTA",
        "In the beginning God created the heaven and the earth.",
    ];
    let ours: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| ext.encode(*t, true).unwrap().get_ids().to_vec())
        .collect();
    assert!(ours[0].iter().any(|&id| id >= 32000), "{ours:?}");

    // The resized model: 32,200 rows, the extended tokenizer beside it.
    let resized = r.out("resize").join("model");
    let cfg: Value = serde_json::from_str(&read(&resized.join("config.json"))).unwrap();
    assert_eq!(cfg["vocab_size"], 32200);

    // LoRA: an adapter (pairs, embeddings, LM head; no base), and the merged plain model.
    let adapter = r.out("lora[merge=false]").join("model");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(!adapter.join("model.safetensors").exists());
    let merged = r.out("lora[merge=true]").join("model");
    assert!(merged.join("model.safetensors").is_file());
    let ids: Vec<Vec<i64>> = vec![ours[0].iter().map(|&i| i as i64).collect()];
    let from_adapter = our_logits(&adapter, &ids);
    let diff = max_diff(&from_adapter, &our_logits(&merged, &ids));
    assert!(diff < 1e-4, "merged differs from the adapter by {diff}");

    if !python_has("torch, transformers, peft") {
        eprintln!("skipping the transformers/PEFT half: no torch, transformers or peft");
        return;
    }
    // AutoTokenizer on the extended tokenizer: the same ids.
    let mut input = String::new();
    for t in texts {
        input.push_str(&serde_json::to_string(t).unwrap());
        input.push('\n');
    }
    let out = Command::new("python3")
        .arg(fixture("tokenizers/llama/encode.py"))
        .arg(&tok_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(input.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<u32>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs, ours, "AutoTokenizer's ids differ");

    // PEFT over the resized base, called the default way: our logits.
    let out = Command::new("python3")
        .arg(fixture("models/peft_predict.py"))
        .arg(&resized)
        .arg(&adapter)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peft: Value = serde_json::from_slice(&out.stdout).unwrap();
    let diff = max_diff(&flat(&peft), &from_adapter);
    assert!(diff < 1e-4, "PEFT's logits differ by {diff}");

    // The merged model and the resized base in transformers: ids past the old vocabulary
    // work, and the tokenizer has a row for each of its tokens.
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
for d in sys.argv[1:3]:
    m = AutoModelForCausalLM.from_pretrained(d).eval()
    assert len(AutoTokenizer.from_pretrained(d)) == m.config.vocab_size, d
with torch.no_grad():
    print(json.dumps(m(torch.tensor(json.loads(sys.argv[3]))).logits.tolist()))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&resized)
        .arg(&merged)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain: Value = serde_json::from_slice(&out.stdout).unwrap();
    let diff = max_diff(&flat(&plain), &from_adapter);
    assert!(diff < 1e-4, "transformers' merged logits differ by {diff}");
}
