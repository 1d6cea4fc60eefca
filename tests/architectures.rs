//! Every model step kind with every architecture of the table, end to end through the binary:
//! a tiny model pretrained on real splice rows (GPT-2 and LLaMA causal, BERT, DNABERT-2 and
//! ESM C masked), then eval.lm, model.generate (causal), model.embed, eval.probe on the embeddings,
//! and model.finetune for seq-cls, regression,
//! a tiny model pretrained on real splice rows (GPT-2 and LLaMA causal, BERT, ESM-2 and LucaOne masked),
//! then eval.lm, model.generate (causal), model.embed and eval.probe, and model.finetune for seq-cls, regression,
//! multi-label, token-cls and (causal) text. Each fine-tuned classifier and regressor directory,
//! called the default way in transformers (`AutoTokenizer` + `AutoModelFor…`), gives dnaflow's
//! own test predictions (probabilities, values, per-base labels): the saved tokenizer frames inputs as the model was trained (where python3 has
//! torch and transformers; the rest runs everywhere).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Project, read};
use polars::prelude::*;
use serde_json::Value;

/// A table of splice rows with the columns every task reads: `label` (the splice class),
/// `gc` (GC fraction: regression), `tags` (`gc_rich`, `starts_a`: multi-label) and `strand`
/// (per base, S for G/C and W for A/T: token classification).
fn table(rows: std::ops::Range<usize>) -> String {
    let splice = std::fs::read_to_string(common::data("splice/splice.csv")).unwrap();
    let mut out = String::from("id,sequence,label,gc,tags,strand\n");
    for line in splice.lines().skip(1 + rows.start).take(rows.len()) {
        let f: Vec<&str> = line.split(',').collect();
        let (id, seq, label) = (f[0], &f[1][..24], f[2]);
        let gc = seq.chars().filter(|c| matches!(c, 'G' | 'C')).count() as f64 / seq.len() as f64;
        let mut tags = Vec::new();
        if gc > 0.5 {
            tags.push("gc_rich");
        }
        if seq.starts_with('A') {
            tags.push("starts_a");
        }
        let strand: String = seq
            .chars()
            .map(|c| if matches!(c, 'G' | 'C') { 'S' } else { 'W' })
            .collect();
        out.push_str(&format!(
            "{id},{seq},{label},{gc:.4},{},{strand}\n",
            tags.join(";")
        ));
    }
    out
}

/// The fresh config of each architecture's tiny model.
fn config(arch: &str) -> &'static str {
    match arch {
        "gpt2" => "{ n_embd: 16, n_layer: 1, n_head: 2, n_positions: 64 }",
        "bert" => {
            "{ hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 64 }"
        }
        // 6 heads: ALiBi slopes by MosaicBERT's rule for a head count that is no power of 2.
        "dnabert2" => {
            "{ hidden_size: 24, num_hidden_layers: 1, num_attention_heads: 6, intermediate_size: 16, max_position_embeddings: 64 }"
        }
        "esmc" => "{ d_model: 16, n_heads: 2, n_layers: 1, max_position_embeddings: 64 }",
        "esm" => {
            "{ hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 64 }"
        }
        "lucaone" => {
            "{ hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, max_position_embeddings: 64 }"
        }
        _ => {
            "{ hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64 }"
        }
    }
}

/// Whether the architecture is an encoder trained by masked LM.
fn masked(arch: &str) -> bool {
    matches!(arch, "bert" | "dnabert2" | "esmc" | "esm" | "lucaone")
}

fn project(arch: &str) -> Project {
    let p = Project::new();
    p.write("train.csv", &table(0..120));
    p.write("valid.csv", &table(120..160));
    p.write("test.csv", &table(2000..2030));
    let causal = !masked(arch);
    let mut wf = format!(
        r#"
name: every-kind-{arch}
steps:
  tok:
    uses: tokenizer.train
    with: {{ input: train.csv, extra_columns: [label], model: char }}
  lm:
    uses: model.pretrain
    with:
      arch: {arch}
      tokenizer: "${{{{ steps.tok.tokenizer }}}}"
      train: train.csv
      config: {config}
      seq_len: 32
      batch_size: 8
      steps: 8
      lr: 0.01
  ppl:
    uses: eval.lm
    with: {{ model: "${{{{ steps.lm.model }}}}", data: test.csv, seq_len: 32 }}
  emb:
    uses: model.embed
    with: {{ model: "${{{{ steps.lm.model }}}}", data: test.csv }}
  probe:
    uses: eval.probe
    with: {{ embeddings: "${{{{ steps.emb.embeddings }}}}", folds: 2 }}
"#,
        config = config(arch)
    );
    for (name, task, extra) in [
        ("cls", "seq-cls", ""),
        ("reg", "regression", "\n      label: gc"),
        ("ml", "multi-label", "\n      label: tags"),
        (
            "tokcls",
            "token-cls",
            "\n      label: strand\n      token_label: majority",
        ),
    ] {
        wf.push_str(&format!(
            r#"  {name}:
    uses: model.finetune
    with:
      task: {task}
      init: "${{{{ steps.lm.model }}}}"
      train: train.csv
      valid: valid.csv
      test: test.csv
      batch_size: 8
      steps: 6
      lr: 0.003{extra}
"#
        ));
    }
    if causal {
        wf.push_str(
            r#"  gen:
    uses: model.generate
    with: { model: "${{ steps.lm.model }}", prompts: ["ACG"], samples: 2, max_new_tokens: 8 }
  text:
    uses: model.finetune
    with:
      task: text
      init: "${{ steps.lm.model }}"
      train: train.csv
      valid: valid.csv
      test: test.csv
      batch_size: 8
      steps: 6
      lr: 0.003
      max_new_tokens: 4
"#,
        );
    }
    p.write("wf.yaml", &wf);
    p
}

fn has_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// transformers' predictions of a saved model directory on `sequences`, one JSON value each.
fn transformers_predictions(dir: &std::path::Path, kind: &str, sequences: &[String]) -> Vec<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/predict.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(dir)
        .arg(kind)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(sequences).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn predictions(path: &std::path::Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn floats(df: &DataFrame, column: &str) -> Vec<f64> {
    df.column(column)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

/// Largest difference between dnaflow's per-row values (columns `prob_*` in `labels` order, or
/// `prediction`) and transformers'.
fn worst(df: &DataFrame, columns: &[String], theirs: &[Value]) -> f64 {
    let ours: Vec<Vec<f64>> = columns.iter().map(|c| floats(df, c)).collect();
    let mut worst = 0.0f64;
    for (row, value) in theirs.iter().enumerate() {
        let values: Vec<f64> = match value {
            Value::Array(v) => v.iter().map(|x| x.as_f64().unwrap()).collect(),
            v => vec![v.as_f64().unwrap()],
        };
        assert_eq!(values.len(), ours.len(), "row {row}: {value}");
        for (col, v) in ours.iter().zip(&values) {
            worst = worst.max((col[row] - v).abs());
        }
    }
    worst
}

fn every_kind(arch: &str) {
    let p = project(arch);
    let report = p.run_ok(&["wf.yaml"]);
    let class = |step: &str| {
        let cfg: Value =
            serde_json::from_str(&read(&report.out(step).join("model/config.json"))).unwrap();
        cfg["architectures"][0].as_str().unwrap().to_string()
    };
    let prefix = match arch {
        "gpt2" => "GPT2",
        "bert" | "dnabert2" => "Bert",
        "esmc" => "ESMC",
        "esm" => "Esm",
        "lucaone" => "LucaGPLM",
        _ => "Llama",
    };
    assert!(class("lm").starts_with(prefix), "{}", class("lm"));
    assert_eq!(class("cls"), format!("{prefix}ForSequenceClassification"));
    assert_eq!(class("tokcls"), format!("{prefix}ForTokenClassification"));
    let ppl: Value = serde_json::from_str(&read(&report.out("ppl").join("metrics.json"))).unwrap();
    assert!(ppl["bits_per_base"].as_f64().unwrap().is_finite(), "{ppl}");
    let probe: Value =
        serde_json::from_str(&read(&report.out("probe").join("metrics.json"))).unwrap();
    assert!(probe["accuracy"].is_number(), "{probe}");
    assert!(probe.to_string().contains("accuracy"), "{probe}");
    if !masked(arch) {
        let samples = read(&report.out("gen").join("samples.jsonl"));
        assert_eq!(samples.lines().count(), 2, "{samples}");
    }
    if arch == "dnabert2" {
        // Saved as DNABERT-2 publishes itself: `bert` with its code named in `auto_map`,
        // which transformers runs only with that code (`trust_remote_code`), not here.
        for step in ["lm", "cls", "tokcls"] {
            let cfg: Value =
                serde_json::from_str(&read(&report.out(step).join("model/config.json"))).unwrap();
            assert_eq!(cfg["model_type"], "bert", "{step}");
            assert!(cfg["auto_map"]["AutoModel"].is_string(), "{step}: {cfg}");
        }
        return;
    }
    if arch == "esmc" {
        // ESM C has no transformers classes (the `esm` package's own `ESMC` only).
        return;
    }
    if arch == "lucaone" {
        // The lucaone package's task classes need `task_level` / `task_type` per head, which
        // dnaflow does not write yet, and its masked LM needs a patch under transformers 5.25
        // (see tests/fixtures/models/make_lucaone.py): the models layer checks it instead.
        eprintln!("skipping the transformers half for lucaone: its task classes are not loaded");
        return;
    }
    if !has_torch() {
        eprintln!("skipping the transformers half for {arch}: python3 has no torch/transformers");
        return;
    }
    let test = predictions(&report.out("cls").join("predictions.parquet"));
    let sequences: Vec<String> = table(2000..2030)
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(test.height(), sequences.len());
    for (step, kind) in [
        ("cls", "seq-cls"),
        ("ml", "multi-label"),
        ("reg", "regression"),
    ] {
        let dir = report.out(step).join("model");
        let df = predictions(&report.out(step).join("predictions.parquet"));
        let cfg: Value = serde_json::from_str(&read(&dir.join("config.json"))).unwrap();
        let columns: Vec<String> = match kind {
            "regression" => vec!["prediction".into()],
            _ => {
                let labels = cfg["id2label"].as_object().unwrap();
                (0..labels.len())
                    .map(|i| format!("prob_{}", labels[&i.to_string()].as_str().unwrap()))
                    .collect()
            }
        };
        let theirs = transformers_predictions(&dir, kind, &sequences);
        let diff = worst(&df, &columns, &theirs);
        eprintln!("{arch} {kind}: dnaflow vs AutoTokenizer + AutoModel, max |diff| {diff:.2e}");
        assert!(diff < 1e-4, "{arch} {kind}: transformers differs by {diff}");
    }
    // The token head: one character token per base (the char tokenizer), so transformers'
    // most likely class of each token, framing tokens dropped, spells dnaflow's per-base
    // prediction.
    let dir = report.out("tokcls").join("model");
    let cfg: Value = serde_json::from_str(&read(&dir.join("config.json"))).unwrap();
    let id2label = cfg["id2label"].as_object().unwrap();
    let df = predictions(&report.out("tokcls").join("predictions.parquet"));
    let ours: Vec<String> = df
        .column("prediction")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    let theirs = transformers_predictions(&dir, "token-cls", &sequences);
    let framed = usize::from(masked(arch));
    for (row, (tokens, want)) in theirs.iter().zip(&ours).enumerate() {
        let tokens = tokens.as_array().unwrap();
        let spelled: String = tokens[framed..tokens.len() - framed]
            .iter()
            .map(|t| id2label[&t.as_u64().unwrap().to_string()].as_str().unwrap())
            .collect();
        assert_eq!(
            &spelled, want,
            "{arch} token-cls row {row}: transformers vs dnaflow"
        );
    }
}

#[test]
fn every_kind_runs_with_gpt2() {
    every_kind("gpt2");
}

#[test]
fn every_kind_runs_with_bert() {
    every_kind("bert");
}

#[test]
fn every_kind_runs_with_llama() {
    every_kind("llama");
}

#[test]
fn every_kind_runs_with_dnabert2() {
    every_kind("dnabert2");
}

#[test]
fn every_kind_runs_with_esmc() {
    every_kind("esmc");
}

/// ESM C with its own published tokenizer (`<cls> … <eos>`, no separator token; its special
/// tokens named in special_tokens_map.json): model.embed and eval.lm on protein sequences.
#[test]
fn esmc_runs_with_the_esm_tokenizer() {
    let p = Project::new();
    p.write(
        "prot.csv",
        "id,sequence,label\np1,MKTAYIAKQRQISFVKSHFSRQ,a\np2,MLSDEDFKAVG,b\n\
         p3,MKKLLPTAAAGLLLLAAQPAMA,a\np4,MSDNGPQNQRNAPRITFGGP,b\n",
    );
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/esmc");
    p.write(
        "wf.yaml",
        &format!(
            r#"
name: esmc-tokenizer
steps:
  emb:
    uses: model.embed
    with: {{ model: {model}, data: prot.csv }}
  ppl:
    uses: eval.lm
    with: {{ model: {model}, data: prot.csv }}
"#
        ),
    );
    let report = p.run_ok(&["wf.yaml"]);
    let emb: Value = serde_json::from_str(&read(&report.out("emb").join("metrics.json"))).unwrap();
    assert_eq!(emb["dimension"], 32, "{emb}");
    let ppl: Value = serde_json::from_str(&read(&report.out("ppl").join("metrics.json"))).unwrap();
    assert!(ppl["loss"].as_f64().unwrap().is_finite(), "{ppl}");
}

#[test]
fn every_kind_runs_with_esm() {
    every_kind("esm");
}

#[test]
fn every_kind_runs_with_lucaone() {
    every_kind("lucaone");
}

/// LucaOne reads a table's nucleotide and protein rows each as its package does (the kind
/// decided by the row's letters in a table with no recorded alphabet): through `model.embed`
/// on the package's own tiny model, a directory without a tokenizer.json (so dnaflow builds
/// LucaOne's tokenizers: nucleotides remapped to digits with token type 0, protein letters
/// with token type 1), each row's mean and `[CLS]` vectors are the package's last hidden
/// state (`tests/fixtures/models/make_lucaone.py`) within 1e-5.
#[test]
fn lucaone_embeds_protein_and_nucleotide_rows_as_its_package() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/lucaone");
    let reference: Value = serde_json::from_str(&read(&fixture.join("reference.json"))).unwrap();
    let p = Project::new();
    p.write(
        "rows.csv",
        "id,sequence\ngene,ACGTNACGUT\nprotein,MKTAYJQRSV\n",
    );
    p.write(
        "embed.yaml",
        &format!(
            r#"
name: lucaone-kinds
steps:
  mean:
    uses: model.embed
    with: {{ model: "{dir}", data: rows.csv, pool: mean }}
  first:
    uses: model.embed
    with: {{ model: "{dir}", data: rows.csv, pool: first }}
"#,
            dir = fixture.display()
        ),
    );
    let report = p.run_ok(&["embed.yaml"]);
    let last = reference["hidden_states"]
        .as_array()
        .unwrap()
        .last()
        .unwrap();
    let shape: Vec<usize> = serde_json::from_value(last["shape"].clone()).unwrap();
    let (t, d) = (shape[1], shape[2]);
    let values: Vec<f64> = serde_json::from_value(last["values"].clone()).unwrap();
    let at = |row: usize, pos: usize, k: usize| values[(row * t + pos) * d + k];
    for (step, pool) in [("mean", "mean"), ("first", "first")] {
        let df = predictions(&report.out(step).join("embeddings.parquet"));
        let mut worst = 0.0f64;
        for row in 0..2 {
            for k in 0..d {
                let want = match pool {
                    "mean" => (0..t).map(|pos| at(row, pos, k)).sum::<f64>() / t as f64,
                    _ => at(row, 0, k),
                };
                let got = floats(&df, &format!("emb_{k}"))[row];
                worst = worst.max((got - want).abs());
            }
        }
        eprintln!("lucaone {pool} embeddings vs the lucaone package, max |diff| {worst:.2e}");
        assert!(worst < 1e-5, "{pool}: {worst}");
    }
}
