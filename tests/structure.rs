//! Per-base labels end to end on real tRNA secondary structures: token classification with a
//! BPE tokenizer whose tokens spell several bases (labels reach tokens by the tokenizer's
//! offsets, each prediction is painted back over the bases its token spells), the one-hot
//! window baseline scored the same way, and bad label strings named by file and row.

mod common;

use std::io::Read;

use common::{Project, read, text};
use polars::prelude::*;
use serde_json::Value;

/// Train, valid and test tables cut from the shipped tRNA structures, and a workflow: a BPE
/// tokenizer trained on them, a tiny BERT token classifier from scratch, the window baseline.
fn project(token_label: &str) -> Project {
    let mut gz = flate2::read::GzDecoder::new(
        std::fs::File::open(common::data("trna/trna.csv.gz")).unwrap(),
    );
    let mut csv = String::new();
    gz.read_to_string(&mut csv).unwrap();
    let table = |range: std::ops::Range<usize>| common::csv_rows(&csv, range);
    let p = Project::new();
    p.write("train.csv", &table(0..120));
    p.write("valid.csv", &table(400..430));
    p.write("test.csv", &table(800..830));
    p.write(
        "wf.yaml",
        &format!(
            r#"
name: tiny-structure
steps:
  bpe:
    uses: tokenizer.train
    with: {{ input: train.csv, model: bpe, vocab_size: 300, special_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] }}
  tok:
    uses: model.finetune
    with:
      task: token-cls
      arch: bert
      tokenizer: "${{{{ steps.bpe.tokenizer }}}}"
      config: {{ hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 128 }}
      train: train.csv
      valid: valid.csv
      test: test.csv
      label: structure
      batch_size: 8
      steps: 6
      lr: 0.003
      eval_every: 3
      select: valid.f1_macro
      token_label: {token_label}
  win:
    uses: baseline.per-base
    with: {{ train: train.csv, valid: valid.csv, test: test.csv, label: structure, window: 3 }}
"#
        ),
    );
    p
}

fn metrics(report: &common::Report, step: &str) -> Value {
    serde_json::from_str(&read(&report.out(step).join("metrics.json"))).unwrap()
}

/// id, label and prediction strings of a predictions table.
fn predictions(path: &std::path::Path) -> Vec<(String, String, String)> {
    let df = ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap();
    let col = |n: &str| -> Vec<String> {
        df.column(n)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_string())
            .collect()
    };
    let (a, b, c) = (col("id"), col("label"), col("prediction"));
    a.into_iter()
        .zip(b)
        .zip(c)
        .map(|((a, b), c)| (a, b, c))
        .collect()
}

#[test]
fn multi_base_tokens_are_labelled_by_offsets_and_scored_per_base() {
    let p = project("majority");
    let r = p.run_ok(&["wf.yaml"]);
    let m = metrics(&r, "tok");
    assert_eq!(m["classes"], serde_json::json!(["(", ")", "."]), "{m}");
    let test = predictions(&r.out("tok").join("predictions.parquet"));
    assert_eq!(test.len(), 30);
    let bases: usize = test.iter().map(|(_, l, _)| l.len()).sum();
    assert_eq!(m["test_bases"], bases, "{m}");
    // BPE tokens spell several bases: fewer tokens than bases were predicted.
    let tokens = m["test_tokens"].as_u64().unwrap() as usize;
    assert!(tokens < bases * 3 / 4, "{tokens} tokens for {bases} bases");

    // Every base has a prediction, and all bases of one token share it.
    let tokenizer = tokenizers::Tokenizer::from_file(r.out("bpe").join("tokenizer.json")).unwrap();
    let seqs = read(&p.path("test.csv"));
    let seqs: Vec<&str> = seqs
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let mut multi = 0;
    for ((_, label, pred), seq) in test.iter().zip(&seqs) {
        assert_eq!(pred.len(), label.len());
        assert!(pred.chars().all(|c| "().".contains(c)), "{pred}");
        let enc = tokenizer.encode(*seq, false).unwrap();
        for &(a, b) in enc.get_offsets() {
            if b - a > 1 {
                multi += 1;
                let first = pred.as_bytes()[a];
                assert!(
                    pred.as_bytes()[a..b].iter().all(|&c| c == first),
                    "{pred} {a}..{b}"
                );
            }
        }
    }
    assert!(multi > 100, "only {multi} multi-base tokens");

    // Per-base scores agree with the predictions table.
    let right = test
        .iter()
        .flat_map(|(_, l, p)| l.bytes().zip(p.bytes()))
        .filter(|(a, b)| a == b)
        .count();
    let acc = m["test_accuracy"].as_f64().unwrap();
    assert!((acc - right as f64 / bases as f64).abs() < 1e-12, "{m}");
    // With the majority rule no constant-per-token painting beats every token right: the
    // ceiling bounds the accuracy, and is below 1 as tokens span changes of label.
    let ceiling = m["test_token_ceiling"].as_f64().unwrap();
    assert!(acc <= ceiling && ceiling < 1.0 && ceiling > 0.7, "{m}");
    let balanced = test
        .iter()
        .filter(|(_, _, p)| {
            let mut open = 0i64;
            p.chars().all(|c| {
                open += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                open >= 0
            }) && open == 0
        })
        .count();
    assert_eq!(m["test_brackets_balanced"], balanced as f64 / 30.0, "{m}");

    // transformers' token classifier layout.
    let cfg: Value = serde_json::from_str(&read(&r.out("tok").join("model/config.json"))).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForTokenClassification");
    assert_eq!(cfg["id2label"]["1"], ")");

    // The window baseline: same table format, same scores, and it learns something.
    let w = metrics(&r, "win");
    let wp = predictions(&r.out("win").join("predictions.parquet"));
    assert_eq!(wp.len(), 30);
    assert!(wp.iter().all(|(_, l, p)| l.len() == p.len()));
    assert_eq!(w["test_bases"], bases);
    let wacc = w["test_accuracy"].as_f64().unwrap();
    assert!(wacc > 0.45 && wacc <= 1.0, "{w}");
    for k in [
        "test_f1_macro",
        "test_mcc",
        "test_brackets_balanced",
        "valid_accuracy",
    ] {
        assert!(w[k].is_number(), "{k}: {w}");
    }
    assert!(read(&r.out("win").join("confusion.svg")).contains("<svg"));

    // The other rule trains other token labels (a token's first base is not its majority).
    let q = project("first");
    let rq = q.run_ok(&["wf.yaml", "tok"]);
    assert_ne!(metrics(&rq, "tok")["train_loss"], m["train_loss"]);
}

#[test]
fn a_label_string_of_another_length_is_named_by_row() {
    let p = project("majority");
    let test = read(&p.path("test.csv")) + "bad1,ACGTACGT,((..))\n";
    p.write("test.csv", &test);
    for step in ["tok", "win"] {
        let (out, _) = p.run(&["wf.yaml", step]);
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains("test.csv: row 31")
                && t.contains("6 label characters for a sequence of 8 bases"),
            "{step}: {t}"
        );
    }
    // A label the training table never had.
    let p = project("majority");
    let test = read(&p.path("test.csv")) + "bad2,ACGT,(<>)\n";
    p.write("test.csv", &test);
    let (out, _) = p.run(&["wf.yaml", "tok"]);
    let t = text(&out);
    assert!(
        t.contains("test.csv: row 31") && t.contains("label `<`"),
        "{t}"
    );
    // Truncation would leave bases without a prediction.
    let p = project("majority");
    let wf = read(&p.path("wf.yaml")).replace("token_label: majority", "truncate: true");
    p.write("wf.yaml", &wf);
    let (out, _) = p.run(&["wf.yaml", "tok"]);
    assert!(text(&out).contains("`truncate` cannot be used with `task: token-cls`"));
}
