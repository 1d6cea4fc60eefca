//! Pair classification end to end on the shipped C. trachomatis genes: data.pairs builds
//! positives and both kinds of negatives, data.split keeps every gene in one split, a tiny
//! BERT classifies joined pairs, the k-mer baseline reads both sides, a probe reads the two
//! sides embedded apart, and accuracy is broken down by kind of negative. Bad pair tables are
//! named by file and row.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Project, read, text};
use polars::prelude::*;
use serde_json::Value;

fn workflow(extra: &str) -> String {
    format!(
        r#"
name: tiny-pairs
params:
  left: 30
  right: 10
steps:
  genes:
    uses: data.sample
    with: {{ input: "{cds}", n: 120, seed: 3 }}
  pairs:
    uses: data.pairs
    with: {{ input: "${{{{ steps.genes.table }}}}", left: cds_sequence, right: protein, left_length: "${{{{ params.left }}}}", right_length: "${{{{ params.right }}}}", windows: 2, frame: 3, seed: 5 }}
  split:
    uses: data.split
    with: {{ input: "${{{{ steps.pairs.table }}}}", ratios: [0.7, 0.15, 0.15], seed: 1, group: group }}
  tok:
    uses: tokenizer.train
    with: {{ input: "${{{{ steps.split.train }}}}", model: char, extra_columns: [pair] }}
  joined:
    uses: model.finetune
    with:
      task: pair-cls
      arch: bert
      tokenizer: "${{{{ steps.tok.tokenizer }}}}"
      config: {{ hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 64 }}
      train: "${{{{ steps.split.train }}}}"
      valid: "${{{{ steps.split.valid }}}}"
      test: "${{{{ steps.split.test }}}}"
      batch_size: 16
      steps: 6
      eval_every: 3
      select: valid.mcc
  joined_score:
    uses: eval.classify
    with: {{ predictions: "${{{{ steps.joined.predictions }}}}", by: {{ table: "${{{{ steps.split.test }}}}", column: kind }} }}
  kmer:
    uses: baseline.classify
    with: {{ train: "${{{{ steps.split.train }}}}", test: "${{{{ steps.split.test }}}}", features: kmer, k: 2, pair: pair, pair_k: 1, standardize: true }}
  emb_train:
    foreach: {{ side: [sequence, pair] }}
    uses: model.embed
    with: {{ model: "${{{{ steps.joined.model }}}}", data: "${{{{ steps.split.train }}}}", sequence: "${{{{ matrix.side }}}}" }}
  emb_test:
    foreach: {{ side: [sequence, pair] }}
    uses: model.embed
    with: {{ model: "${{{{ steps.joined.model }}}}", data: "${{{{ steps.split.test }}}}", sequence: "${{{{ matrix.side }}}}" }}
{extra}"#,
        cds = common::data("chlamydia/cds.csv.gz")
    )
}

fn metrics(report: &common::Report, step: &str) -> Value {
    serde_json::from_str(&read(&report.out(step).join("metrics.json"))).unwrap()
}

fn column(path: &std::path::Path, name: &str) -> Vec<String> {
    let df = ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap();
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect()
}

#[test]
fn gene_protein_pairs_train_score_and_split_by_gene() {
    let p = Project::new();
    p.write("wf.yaml", &workflow(""));
    let r = p.run_ok(&["wf.yaml"]);

    // Every window gives a positive, another gene's protein, and its own protein substituted.
    let table = r.out("pairs").join("table.parquet");
    let (kind, seq, pair, group) = (
        column(&table, "kind"),
        column(&table, "sequence"),
        column(&table, "pair"),
        column(&table, "group"),
    );
    let pm = metrics(&r, "pairs");
    let windows = pm["windows"].as_u64().unwrap() as usize;
    assert!((120..=240).contains(&windows), "{pm}");
    assert_eq!(kind.len(), 3 * windows);
    for k in (0..kind.len()).step_by(3) {
        assert_eq!(&kind[k..k + 3], ["match", "other", "substituted"]);
        assert_eq!(seq[k].len(), 30);
        assert!(
            pair[k..k + 3].iter().all(|s| s.len() == 10),
            "{:?}",
            &pair[k..k + 3]
        );
        assert_ne!(pair[k], pair[k + 1]);
        let changed = pair[k]
            .chars()
            .zip(pair[k + 2].chars())
            .filter(|(a, b)| a != b);
        assert_eq!(changed.count(), 3);
    }
    // No gene in two splits.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for part in ["train", "valid", "test"] {
        for g in column(&r.out("split").join(format!("{part}.parquet")), "group") {
            let was = seen.insert(g.clone(), part);
            assert!(
                was.is_none_or(|w| w == part),
                "gene {g} in {was:?} and {part}"
            );
        }
    }
    assert_eq!(seen.len(), group.iter().collect::<BTreeSet<_>>().len());

    // The pair model: a BertForSequenceClassification over both sides; predictions per pair.
    let cfg: Value =
        serde_json::from_str(&read(&r.out("joined").join("model/config.json"))).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["0"], "match");
    let test_ids = column(&r.out("split").join("test.parquet"), "id");
    let pred_ids = column(&r.out("joined").join("predictions.parquet"), "id");
    assert_eq!(pred_ids, test_ids);

    // Accuracy by kind of pair, weighted back to the overall accuracy.
    let s = metrics(&r, "joined_score");
    let by = s["accuracy_by_kind"].as_object().unwrap();
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ["match", "other", "substituted"],
        "{s}"
    );
    let rows: f64 = by.values().map(|v| v["rows"].as_f64().unwrap()).sum();
    let right: f64 = by
        .values()
        .map(|v| v["rows"].as_f64().unwrap() * v["accuracy"].as_f64().unwrap())
        .sum();
    assert_eq!(rows as usize, test_ids.len());
    assert!(
        (right / rows - s["accuracy"].as_f64().unwrap()).abs() < 1e-9,
        "{s}"
    );

    // The k-mer baseline reads both sides: 16 DNA 2-mers and 20 amino acids.
    let k = metrics(&r, "kmer");
    assert_eq!(k["features"]["dimension"], 36, "{k}");
    assert_eq!(k["features"]["pair"]["kind"], "protein-kmer", "{k}");
    let model: Value = serde_json::from_str(&read(&r.out("kmer").join("model.json"))).unwrap();
    assert!(model["features"]["mean"]["pair:W"].is_number(), "{model}");

    // The sides embedded apart, then probed on [u, v, |u-v|, u*v].
    p.write(
        "wf.yaml",
        &workflow(
            r#"  apart:
    uses: eval.probe
    with:
      embeddings: "${{ steps.emb_train[side=sequence].embeddings }}"
      pair_embeddings: "${{ steps.emb_train[side=pair].embeddings }}"
      test: "${{ steps.emb_test[side=sequence].embeddings }}"
      pair_test: "${{ steps.emb_test[side=pair].embeddings }}"
"#,
        ),
    );
    let r = p.run_ok(&["wf.yaml", "apart"]);
    let a = metrics(&r, "apart");
    assert_eq!(a["dimension"], 4 * 16, "{a}");
    assert_eq!(a["pairs"], true);
    assert_eq!(
        column(&r.out("apart").join("predictions.parquet"), "id"),
        test_ids
    );
}

#[test]
fn bad_pair_tables_are_named_by_file_and_row() {
    let p = Project::new();
    p.write(
        "genes.csv",
        "id,cds_sequence,protein\ng1,ATGAAACCC,MKP\ng2,ATGGGG,\ng3,ATGTTT,MF\n",
    );
    p.write(
        "wf.yaml",
        r#"
name: bad-pairs
steps:
  pairs:
    uses: data.pairs
    with: { input: genes.csv, left: cds_sequence, right: protein }
  short:
    uses: data.pairs
    with: { input: genes.csv, left: cds_sequence, right: protein, negatives: [substituted], substitutions: 3 }
"#,
    );
    let (out, _) = p.run(&["wf.yaml", "pairs"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("genes.csv: row 2 (`g2`): column `protein` is empty"),
        "{t}"
    );

    p.write(
        "genes.csv",
        "id,cds_sequence,protein\ng1,ATGAAACCC,MKP\ng2,ATGGGG,MG\n",
    );
    let (out, _) = p.run(&["wf.yaml", "short"]);
    let t = text(&out);
    assert!(
        t.contains("row 2 (`g2`)") && t.contains("fewer than `substitutions: 3`"),
        "{t}"
    );

    // A pair-cls table with an empty side, and a pair longer than the model takes.
    p.write(
        "train.csv",
        "id,sequence,pair,label\na,ACGT,MK,match\nb,ACGA,MR,mismatch\n",
    );
    p.write("test.csv", "id,sequence,pair,label\nc,ACGT,,match\n");
    p.write(
        "long.csv",
        "id,sequence,pair,label\nd,ACGTACGTACGTACGT,MKMKMK,match\n",
    );
    let model = |test: &str| {
        format!(
            r#"
name: bad-pair-model
steps:
  tok:
    uses: tokenizer.train
    with: {{ input: train.csv, model: char, extra_columns: [pair] }}
  m:
    uses: model.finetune
    with:
      task: pair-cls
      arch: bert
      tokenizer: "${{{{ steps.tok.tokenizer }}}}"
      config: {{ hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 16, max_position_embeddings: 16 }}
      train: train.csv
      valid: train.csv
      test: {test}
      steps: 1
"#
        )
    };
    p.write("m.yaml", &model("test.csv"));
    let (out, _) = p.run(&["m.yaml"]);
    let t = text(&out);
    assert!(
        t.contains("test.csv: row 1 (line 2, id `c`), column `pair`: empty"),
        "{t}"
    );
    p.write("m.yaml", &model("long.csv"));
    let (out, _) = p.run(&["m.yaml"]);
    let t = text(&out);
    assert!(
        t.contains("long.csv: row 1 (line 2, id `d`)")
            && t.contains("16 + 6 tokens plus [CLS] and two [SEP], longer than the 16")
            && t.contains("truncate: true"),
        "{t}"
    );
}
