//! Function prediction end to end on the shipped C. trachomatis proteins: keywords from the
//! product text by a rule, a multi-label BERT head (a sigmoid per keyword, transformers'
//! `multi_label_classification`) and the per-keyword logistic baseline, both scored by the
//! same multi-label scores; bad label tables named by file and row.

mod common;

use common::{Project, read, text};
use polars::prelude::*;
use serde_json::Value;

const WORKFLOW: &str = r#"
name: tiny-function
steps:
  keywords:
    uses: data.keywords
    with:
      input: "CDS"
      column: product
      exclude: [hypothetical]
      labels:
        ribosomal: [ribosomal]
        trna: [trna]
        synthase: [synthase, synthetase]
        transport: [transport, permease]
  split:
    uses: data.split
    with: { input: "${{ steps.keywords.table }}", ratios: [0.6, 0.2, 0.2], seed: 4 }
  tok:
    uses: tokenizer.train
    with: { input: "${{ steps.split.train }}", column: protein, model: char }
  function:
    uses: model.finetune
    with:
      task: multi-label
      arch: bert
      tokenizer: "${{ steps.tok.tokenizer }}"
      config: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 48 }
      sequence: protein
      truncate: true
      train: "${{ steps.split.train }}"
      valid: "${{ steps.split.valid }}"
      test: "${{ steps.split.test }}"
      batch_size: 16
      steps: 4
      eval_every: 2
      select: valid.f1_micro
  composition:
    uses: baseline.classify
    with: { train: "${{ steps.split.train }}", test: "${{ steps.split.test }}", sequence: protein, features: kmer, k: 1, standardize: true, label_separator: ";" }
"#;

fn metrics(report: &common::Report, step: &str) -> Value {
    serde_json::from_str(&read(&report.out(step).join("metrics.json"))).unwrap()
}

fn strings(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect()
}

/// Micro F1 of `;`-joined label sets, counted from the predictions table.
fn micro_f1(truth: &[String], pred: &[String]) -> f64 {
    let set = |s: &str| -> Vec<String> {
        s.split(';')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    let (mut tp, mut fp, mut fneg) = (0, 0, 0);
    for (t, p) in truth.iter().zip(pred) {
        let (t, p) = (set(t), set(p));
        tp += p.iter().filter(|l| t.contains(l)).count();
        fp += p.iter().filter(|l| !t.contains(l)).count();
        fneg += t.iter().filter(|l| !p.contains(l)).count();
    }
    if tp + fp + fneg == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fneg) as f64
}

#[test]
fn keywords_become_labels_and_both_models_score_them_alike() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &WORKFLOW.replace("CDS", &common::data("chlamydia/cds.csv.gz")),
    );
    let r = p.run_ok(&["wf.yaml"]);

    // The rule: hypothetical proteins dropped; a tRNA synthetase has both labels.
    let k = metrics(&r, "keywords");
    assert_eq!(k["excluded"], 288, "{k}");
    assert_eq!(k["rows"], 895 - 288, "{k}");
    let table =
        ParquetReader::new(std::fs::File::open(r.out("keywords").join("table.parquet")).unwrap())
            .finish()
            .unwrap();
    let (products, labels) = (strings(&table, "product"), strings(&table, "label"));
    assert!(
        products
            .iter()
            .all(|p| !p.to_lowercase().contains("hypothetical"))
    );
    let at = products
        .iter()
        .position(|p| p.contains("tRNA Synthetase"))
        .unwrap();
    assert_eq!(labels[at], "synthase;trna", "{}", products[at]);
    assert!(labels.iter().any(String::is_empty));

    // The model: transformers' multi-label sequence classifier.
    let cfg: Value =
        serde_json::from_str(&read(&r.out("function").join("model/config.json"))).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["problem_type"], "multi_label_classification");
    assert_eq!(cfg["id2label"]["0"], "ribosomal");

    // Both write the same predictions table, and their metrics agree with it.
    for step in ["function", "composition"] {
        let m = metrics(&r, step);
        let df = ParquetReader::new(
            std::fs::File::open(r.out(step).join("predictions.parquet")).unwrap(),
        )
        .finish()
        .unwrap();
        let (truth, pred) = (strings(&df, "label"), strings(&df, "prediction"));
        assert_eq!(m["test_rows"], truth.len(), "{step}: {m}");
        let f1 = m["test_f1_micro"].as_f64().unwrap();
        assert!((f1 - micro_f1(&truth, &pred)).abs() < 1e-12, "{step}: {m}");
        for label in ["ribosomal", "trna", "synthase", "transport"] {
            let probs = df.column(&format!("prob_{label}")).unwrap().f64().unwrap();
            assert!(probs.iter().all(|p| (0.0..=1.0).contains(&p.unwrap())));
            assert!(m["test_per_label"][label]["support"].is_number(), "{m}");
        }
        let ribosomal = m["test_per_label"]["ribosomal"]["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ribosomal));
    }
    // Ribosomal proteins are told by their composition (rich in K and R).
    let c = metrics(&r, "composition");
    let ribosomal = c["test_per_label"]["ribosomal"]["auroc"].as_f64().unwrap();
    assert!(ribosomal > 0.8, "{c}");
}

#[test]
fn a_label_unknown_to_training_is_named_by_row() {
    let p = Project::new();
    p.write(
        "train.csv",
        "id,protein,label\na,MKKR,ribosomal\nb,MLLA,transport;membrane\nc,MAGG,\n",
    );
    p.write(
        "test.csv",
        "id,protein,label\nd,MKRR,ribosomal\ne,MLAA,kinase\n",
    );
    p.write(
        "wf.yaml",
        r#"
name: bad-labels
steps:
  tok:
    uses: tokenizer.train
    with: { input: train.csv, column: protein, model: char }
  m:
    uses: model.finetune
    with:
      task: multi-label
      arch: bert
      tokenizer: "${{ steps.tok.tokenizer }}"
      config: { hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 16, max_position_embeddings: 16 }
      sequence: protein
      train: train.csv
      valid: train.csv
      test: test.csv
      steps: 1
  b:
    uses: baseline.classify
    with: { train: train.csv, test: test.csv, sequence: protein, features: kmer, k: 1, label_separator: ";" }
"#,
    );
    for step in ["m", "b"] {
        let (out, _) = p.run(&["wf.yaml", step]);
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains("test.csv: row 2 (line 3, id `e`), column `label`: label `kinase` does not occur in the training table"),
            "{step}: {t}"
        );
    }
}

/// `task: text` learns to answer: four prompts, each with its own name, are answered exactly
/// (greedy and sampled at a low temperature) once the names are learned, which needs the prompt
/// masked from the loss, the answer's end learned and generation stopping there.
#[test]
fn a_causal_model_learns_to_name_its_prompts() {
    let p = Project::new();
    let mut rows = String::from("id,sequence,label\n");
    let pairs = [
        ("MKKRAAKK", "50S ribosomal protein L2"),
        ("MLLAVLLG", "oligopeptide permease"),
        ("MDEWYTPH", "DNA gyrase subunit A"),
        ("MGGSTQNC", "adenylate kinase"),
    ];
    for copy in 0..4 {
        for (i, (protein, name)) in pairs.iter().enumerate() {
            rows.push_str(&format!("p{i}_{copy},{protein},{name}\n"));
        }
    }
    p.write("train.csv", &rows);
    let test: String = std::iter::once("id,sequence,label\n".to_string())
        .chain(
            pairs
                .iter()
                .enumerate()
                .map(|(i, (protein, name))| format!("t{i},{protein},{name}\n")),
        )
        .collect();
    p.write("test.csv", &test);
    p.write(
        "wf.yaml",
        r#"
name: tiny-namer
steps:
  tok:
    uses: tokenizer.train
    with: { input: train.csv, extra_columns: [label], model: bpe, vocab_size: 300, min_frequency: 1 }
  namer:
    uses: model.finetune
    with:
      task: text
      arch: gpt2
      tokenizer: "${{ steps.tok.tokenizer }}"
      config: { n_embd: 32, n_layer: 1, n_head: 2, n_positions: 48, resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0 }
      train: train.csv
      valid: train.csv
      test: test.csv
      max_new_tokens: 24
      temperature: 0.05
      batch_size: 16
      steps: 150
      lr: 0.01
      eval_every: 50
  score:
    uses: eval.text
    with: { predictions: "${{ steps.namer.predictions }}", also: [sampled] }
  nearest:
    uses: baseline.nearest
    with: { train: train.csv, test: test.csv, k: 1 }
  nearest_score:
    uses: eval.text
    with: { predictions: "${{ steps.nearest.predictions }}" }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    let m = metrics(&r, "namer");
    let df = ParquetReader::new(
        std::fs::File::open(r.out("namer").join("predictions.parquet")).unwrap(),
    )
    .finish()
    .unwrap();
    let (truth, pred) = (strings(&df, "label"), strings(&df, "prediction"));
    assert_eq!(pred, truth, "{m}");
    assert_eq!(strings(&df, "sampled"), truth, "{m}");
    assert_eq!(m["test_exact_match"], 1.0, "{m}");
    assert_eq!(m["test_eos_rate"], 1.0, "{m}");
    // eval.text scores the table as the step did.
    let s = metrics(&r, "score");
    assert_eq!(s["exact_match"], 1.0, "{s}");
    assert_eq!(s["token_f1"], m["test_token_f1"], "{s}");
    assert_eq!(s["sampled_token_f1"], m["test_sampled_token_f1"], "{s}");
    // A plain causal LM, as transformers loads it.
    let cfg: Value =
        serde_json::from_str(&read(&r.out("namer").join("model/config.json"))).unwrap();
    assert_eq!(cfg["architectures"][0], "GPT2LMHeadModel");
    // The nearest neighbour of a training protein is itself: its name is copied.
    let n = metrics(&r, "nearest_score");
    assert_eq!(n["exact_match"], 1.0, "{n}");
}

#[test]
fn a_prompt_longer_than_the_model_takes_is_named_by_row() {
    let p = Project::new();
    p.write(
        "t.csv",
        "id,sequence,label\na,MKKR,kinase\nb,MKKRLLAAGGTTWWYYPPHHNNQQ,permease\n",
    );
    p.write(
        "wf.yaml",
        r#"
name: long-prompt
steps:
  tok:
    uses: tokenizer.train
    with: { input: t.csv, model: char }
  namer:
    uses: model.finetune
    with:
      task: text
      arch: gpt2
      tokenizer: "${{ steps.tok.tokenizer }}"
      config: { n_embd: 8, n_layer: 1, n_head: 2, n_positions: 24 }
      train: t.csv
      valid: t.csv
      test: t.csv
      max_new_tokens: 12
      steps: 1
"#,
    );
    let (out, _) = p.run(&["wf.yaml"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("t.csv: row 2 (line 3, id `b`), column `sequence`: the prompt is 24 tokens, longer than the 11"),
        "{t}"
    );
    assert!(t.contains("set `truncate: true`"), "{t}");
}
