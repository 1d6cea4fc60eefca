//! `model.finetune` end to end on real labelled data (StatLog splice rows): a classifier
//! keeps the guarantees of pretraining (same seed same result, kill -9 resumes to the same
//! losses, a diverging loss stops with a clear error), its predictions score
//! with eval.classify, embeddings of its model probe, and bad input names the file and row.

mod common;

use std::process::Stdio;

use common::{Project, read, text};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Train, valid and test tables cut from the shipped splice data (balanced enough for three
/// classes), a char tokenizer, and a workflow: a tiny GPT-2 pretrained for a few steps, then
/// fine-tuned as a classifier from it.
fn project(finetune_extra: &str, steps: usize) -> Project {
    let p = Project::new();
    std::fs::copy(
        format!("{FIXTURES}/tokenizers/char.json"),
        p.path("char.json"),
    )
    .unwrap();
    let splice = std::fs::read_to_string(common::data("splice/splice.csv")).unwrap();
    let table = |range: std::ops::Range<usize>| common::csv_rows(&splice, range);
    p.write("train.csv", &table(0..160));
    p.write("valid.csv", &table(160..200));
    p.write("test.csv", &table(2000..2040));
    p.write(
        "wf.yaml",
        &format!(
            r#"
name: tiny-classifier
steps:
  lm:
    uses: model.pretrain
    with:
      arch: gpt2
      tokenizer: char.json
      train: train.csv
      config: {{ n_embd: 16, n_layer: 1, n_head: 2, n_positions: 64 }}
      seq_len: 64
      batch_size: 4
      steps: 3
  clf:
    uses: model.finetune
    with:
      task: seq-cls
      init: "${{{{ steps.lm.model }}}}"
      train: train.csv
      valid: valid.csv
      test: test.csv
      batch_size: 8
      steps: {steps}
      lr: 0.003
      eval_every: 10
      save_every: 2
      select: valid.mcc
{finetune_extra}
  score:
    uses: eval.classify
    with: {{ predictions: "${{{{ steps.clf.predictions }}}}" }}
"#
        ),
    );
    p
}

fn metrics(report: &common::Report, step: &str) -> Value {
    serde_json::from_str(&read(&report.out(step).join("metrics.json"))).unwrap()
}

#[test]
fn a_classifier_is_deterministic_scores_and_saves_a_transformers_model() {
    let a = project("", 30);
    let ra = a.run_ok(&["wf.yaml"]);
    let b = project("", 30);
    let rb = b.run_ok(&["wf.yaml"]);
    let (ma, mb) = (metrics(&ra, "clf"), metrics(&rb, "clf"));
    for k in ["train_loss", "valid_loss", "valid_mcc", "test_accuracy"] {
        assert_eq!(ma[k], mb[k], "{k}: same seed, same result");
    }
    assert_eq!(ma["fresh"], serde_json::json!(["score.weight"]), "{ma}");
    assert_eq!(ma["classes"], serde_json::json!(["ei", "ie", "n"]));
    // The test split is scored once, with the selected weights, by the same code as baselines.
    let score = metrics(&ra, "score");
    assert_eq!(score["accuracy"], ma["test_accuracy"], "{score}");
    assert_eq!(score["rows"], 40);
    // A model directory transformers loads as GPT2ForSequenceClassification.
    let cfg: Value = serde_json::from_str(&read(&ra.out("clf").join("model/config.json"))).unwrap();
    assert_eq!(cfg["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(cfg["id2label"]["2"], "n");
    assert_eq!(cfg["problem_type"], "single_label_classification");
    assert!(cfg["pad_token_id"].is_number());
    let history = read(&ra.out("clf").join("history.csv"));
    assert!(
        history.lines().next().unwrap().contains("valid_mcc"),
        "{history}"
    );
    // A different seed gives a different run.
    let c = project("      seed: 9", 30);
    let rc = c.run_ok(&["wf.yaml"]);
    assert_ne!(metrics(&rc, "clf")["train_loss"], ma["train_loss"]);
}

#[test]
fn a_killed_fine_tuning_resumes_and_ends_where_an_unbroken_one_does() {
    let steps = 300;
    let whole = project("", steps);
    let want = metrics(&whole.run_ok(&["wf.yaml", "clf"]), "clf");

    let p = project("", steps);
    p.run_ok(&["wf.yaml", "lm"]);
    let mut child = p
        .cmd(&["run", "wf.yaml", "clf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = common::wait_for_checkpoint(&p, 20);
    child.kill().unwrap();
    child.wait().unwrap();
    let saved: Value = serde_json::from_str(&read(&state)).unwrap();
    let at = saved["step"].as_u64().unwrap();
    assert!(at >= 20 && at < steps as u64, "killed at step {at}");

    let got = metrics(&p.run_ok(&["wf.yaml", "clf"]), "clf");
    assert!(got["resumed_from"].as_u64().unwrap() >= at, "{got}");
    for k in [
        "train_loss",
        "valid_loss",
        "valid_mcc",
        "best_step",
        "test_accuracy",
    ] {
        assert_eq!(got[k], want[k], "{k} after resume");
    }
}

/// The learning rate warms up from 0, so the first steps are finite and checkpointed
/// (`save_every: 2`); the loss then blows up, and the message names the checkpoint kept.
#[test]
fn a_diverging_classifier_stops_and_keeps_its_last_good_checkpoint() {
    let p = project(
        "      head_lr: 1.0e+12\n      warmup_steps: 20\n      clip_norm: null",
        40,
    );
    let wf = read(&p.path("wf.yaml")).replace("lr: 0.003", "lr: 1.0e+9");
    p.write("wf.yaml", &wf);
    let (out, _) = p.run(&["wf.yaml", "clf"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("the loss became"), "{t}");
    assert!(t.contains("the last good checkpoint (step"), "{t}");
    assert!(t.contains("Lower `lr`"), "{t}");
}

#[test]
fn regression_class_weights_freezing_and_embeddings_run() {
    let p = project(
        "      class_weights: balanced\n      freeze: backbone\n      head_lr: 0.01",
        6,
    );
    let mfe = "id,sequence,mfe\n".to_string()
        + &(0..24)
            .map(|i| {
                let s: String = (0..40)
                    .map(|j| b"ACGT"[(i * 7 + j * (i % 3 + 1)) % 4] as char)
                    .collect();
                format!("t{i},{s},{}\n", -10.0 - i as f64 * 0.5)
            })
            .collect::<String>();
    p.write("mfe.csv", &mfe);
    let wf = read(&p.path("wf.yaml"))
        + r#"
  reg:
    uses: model.finetune
    with: { task: regression, init: "${{ steps.lm.model }}", train: mfe.csv, valid: mfe.csv, test: mfe.csv, label: mfe, steps: 4, batch_size: 8, select: valid.rmse }
  emb:
    uses: model.embed
    with: { model: "${{ steps.clf.model }}", data: test.csv, pool: max, layer: 0 }
  probe:
    uses: eval.probe
    with: { embeddings: "${{ steps.emb.embeddings }}", folds: 2 }
  pca:
    uses: eval.project
    with: { embeddings: "${{ steps.emb.embeddings }}" }
"#;
    p.write("wf.yaml", &wf);
    let r = p.run_ok(&["wf.yaml"]);
    let clf = metrics(&r, "clf");
    assert!(clf["frozen"].as_u64().unwrap() > 0, "{clf}");
    let reg = metrics(&r, "reg");
    assert!(reg["test_rmse"].as_f64().unwrap().is_finite(), "{reg}");
    let cfg: Value = serde_json::from_str(&read(&r.out("reg").join("model/config.json"))).unwrap();
    assert_eq!(cfg["problem_type"], "regression");
    assert_eq!(metrics(&r, "emb")["dimension"], 16);
    assert_eq!(metrics(&r, "emb")["layer"], 0);
    assert!(metrics(&r, "probe")["accuracy"].is_number());
    assert!(read(&r.out("pca").join("projection.svg")).contains("<svg"));
}

#[test]
fn bad_input_names_the_file_row_and_what_to_do() {
    // A class in the test table that training never saw.
    let p = project("", 2);
    let test = read(&p.path("test.csv")) + "odd1,ACGTACGTAC,weird,test\n";
    p.write("test.csv", &test);
    let (out, _) = p.run(&["wf.yaml", "clf"]);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains("test.csv: row 41") && t.contains("class `weird`"),
        "{t}"
    );

    // A sequence longer than the model's positions.
    let p = project("", 2);
    let train = read(&p.path("train.csv")) + &format!("long1,{},n,train\n", "ACGT".repeat(20));
    p.write("train.csv", &train);
    let (out, _) = p.run(&["wf.yaml", "clf"]);
    let t = text(&out);
    assert!(
        t.contains("train.csv: row 161") && t.contains("truncate: true"),
        "{t}"
    );

    // A regression target that is not a number.
    let p = project("", 2);
    let wf = read(&p.path("wf.yaml"))
        .replace("task: seq-cls", "task: regression")
        .replace("select: valid.mcc", "select: valid.rmse");
    p.write("wf.yaml", &wf);
    let (out, _) = p.run(&["wf.yaml", "clf"]);
    let t = text(&out);
    assert!(
        t.contains("train.csv: row 1") && t.contains("is not a number"),
        "{t}"
    );

    // A model directory whose head does another task.
    let p = project("", 2);
    let r = p.run_ok(&["wf.yaml", "clf"]);
    let wf = read(&p.path("wf.yaml"))
        + &format!(
            "  again:\n    uses: model.finetune\n    with: {{ task: regression, init: {}, train: train.csv, valid: valid.csv, test: test.csv, label: label }}\n",
            r.out("clf").join("model").display()
        );
    p.write("wf.yaml", &wf);
    let (out, _) = p.run(&["wf.yaml", "again"]);
    let t = text(&out);
    assert!(
        t.contains("has a seq-cls head") && t.contains("start from the language model"),
        "{t}"
    );

    // A metric the task does not have.
    let p = project("      patience: 2", 2);
    let wf = read(&p.path("wf.yaml")).replace("select: valid.mcc", "select: valid.rmse");
    p.write("wf.yaml", &wf);
    let out = p.dnaflow(&["check", "wf.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("valid.mcc"), "{}", text(&out));
}
