//! `model.score`, zero-shot, end to end through the binary: tiny GPT-2 and BERT language
//! models and a GPT-2 splice classifier trained on real splice rows, then sequence
//! log-likelihoods, variant effects and in-silico mutagenesis. The scores are checked against
//! each other (a causal variant's score is the difference of two sequence log-likelihoods; a
//! masked model's mutagenesis cell is its masked-marginal variant score), and a causal model's
//! log-likelihood against transformers' where python3 has it.

mod common;

use std::process::Command;

use common::{Project, read};
use polars::prelude::*;
use serde_json::Value;

/// Splice rows `range` of the shipped table (id, sequence, label).
fn splice(range: std::ops::Range<usize>) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(common::data("splice/splice.csv")).unwrap();
    text.lines()
        .skip(1 + range.start)
        .take(range.len())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// `seq` with base `pos` (0-based) changed to `alt`.
fn mutant(seq: &str, pos: usize, alt: char) -> String {
    let mut b = seq.as_bytes().to_vec();
    b[pos] = alt as u8;
    String::from_utf8(b).unwrap()
}

/// A base other than `c` (the next of ACGT).
fn other(c: char) -> char {
    let bases = ['A', 'C', 'G', 'T'];
    let i = bases.iter().position(|&b| b == c).unwrap_or(0);
    bases[(i + 1) % 4]
}

const MODELS: &str = r#"
  tok:
    uses: tokenizer.train
    with: { input: train.csv, extra_columns: [label], model: char }
  gpt2:
    uses: model.pretrain
    with:
      arch: gpt2
      tokenizer: "${{ steps.tok.tokenizer }}"
      train: train.csv
      config: { n_embd: 16, n_layer: 1, n_head: 2, n_positions: 64 }
      seq_len: 64
      batch_size: 8
      steps: 10
      lr: 0.01
  bert:
    uses: model.pretrain
    with:
      arch: bert
      tokenizer: "${{ steps.tok.tokenizer }}"
      train: train.csv
      config: { hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 64 }
      seq_len: 64
      batch_size: 8
      steps: 10
      lr: 0.01
"#;

fn project() -> (Project, Vec<(String, String, String)>) {
    let p = Project::new();
    let train = splice(0..120);
    let mut csv = String::from("id,sequence,label\n");
    for (id, s, l) in &train {
        csv.push_str(&format!("{id},{s},{l}\n"));
    }
    p.write("train.csv", &csv);
    for (name, range) in [("valid.csv", 120..160), ("test.csv", 2010..2040)] {
        let mut t = String::from("id,sequence,label\n");
        for (id, s, l) in splice(range) {
            t.push_str(&format!("{id},{s},{l}\n"));
        }
        p.write(name, &t);
    }
    let rows = splice(2000..2003);
    // Three variants, one per row; the likelihood table holds each reference and its mutant.
    let (mut variants, mut seqs) = (
        String::from("id,sequence,position,ref,alt\n"),
        String::from("id,sequence\n"),
    );
    for (k, (id, s, _)) in rows.iter().enumerate() {
        let pos = 10 + 7 * k;
        let r = s.as_bytes()[pos] as char;
        let a = other(r);
        variants.push_str(&format!("{id},{s},{},{r},{a}\n", pos + 1));
        seqs.push_str(&format!("{id}_ref,{s}\n{id}_alt,{}\n", mutant(s, pos, a)));
    }
    p.write("variants.csv", &variants);
    p.write("seqs.csv", &seqs);
    let wf = format!(
        r#"
name: zero-shot
steps:{MODELS}
  cls:
    uses: model.finetune
    with:
      task: seq-cls
      init: "${{{{ steps.gpt2.model }}}}"
      train: train.csv
      valid: valid.csv
      test: test.csv
      batch_size: 8
      steps: 6
      lr: 0.003
  gpt2_ll:
    uses: model.score
    with: {{ model: "${{{{ steps.gpt2.model }}}}", mode: likelihood, data: seqs.csv }}
  gpt2_variants:
    uses: model.score
    with: {{ model: "${{{{ steps.gpt2.model }}}}", mode: variants, data: variants.csv }}
  bert_variants:
    uses: model.score
    with: {{ model: "${{{{ steps.bert.model }}}}", mode: variants, data: variants.csv }}
  bert_ll:
    uses: model.score
    with: {{ model: "${{{{ steps.bert.model }}}}", mode: likelihood, data: seqs.csv, batch_size: 16 }}
  bert_ism:
    uses: model.score
    with: {{ model: "${{{{ steps.bert.model }}}}", mode: mutagenesis, data: variants.csv, window: [8, 26] }}
  cls_ism:
    uses: model.score
    with:
      model: "${{{{ steps.cls.model }}}}"
      mode: mutagenesis
      data: variants.csv
      class: ei
      window: [20, 40]
      origin: -30
      regions: {{ junction: [-2, 1] }}
"#
    );
    p.write("wf.yaml", &wf);
    (p, rows)
}

fn table(path: &std::path::Path) -> DataFrame {
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

fn strings(df: &DataFrame, column: &str) -> Vec<String> {
    df.column(column)
        .unwrap()
        .cast(&DataType::String)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

fn metrics(dir: &std::path::Path) -> Value {
    serde_json::from_str(&read(&dir.join("metrics.json"))).unwrap()
}

#[test]
fn zero_shot_scores_agree_with_each_other_and_with_transformers() {
    let (p, rows) = project();
    let report = p.run_ok(&["wf.yaml"]);

    // A causal variant's score is log p(alt sequence) − log p(ref sequence).
    let ll = table(&report.out("gpt2_ll").join("scores.parquet"));
    let lls = floats(&ll, "log_likelihood");
    let var = table(&report.out("gpt2_variants").join("scores.parquet"));
    let scores = floats(&var, "score");
    assert_eq!(strings(&var, "method"), vec!["log-likelihood-ratio"; 3]);
    for k in 0..3 {
        let want = lls[2 * k + 1] - lls[2 * k];
        assert!(
            (scores[k] - want).abs() < 1e-4,
            "variant {k}: {} against {want}",
            scores[k]
        );
        assert!(lls[2 * k] < 0.0 && scores[k] != 0.0);
    }
    let bits = metrics(&report.out("gpt2_ll"))["bits_per_base"]
        .as_f64()
        .unwrap();
    assert!(bits > 1.0 && bits < 3.0, "bits per base {bits}");

    // A masked model with one token per base scores variants by masked marginals, and its
    // mutagenesis gives the same number for the same change.
    let bert_var = table(&report.out("bert_variants").join("scores.parquet"));
    assert_eq!(strings(&bert_var, "method"), vec!["masked-marginal"; 3]);
    let ism = table(&report.out("bert_ism").join("scores.parquet"));
    assert_eq!(
        ism.height(),
        3 * 18 * 3,
        "3 sequences × 18 positions × 3 letters"
    );
    let (ids, pos, alt, delta) = (
        strings(&ism, "id"),
        floats(&ism, "position"),
        strings(&ism, "alt"),
        floats(&ism, "score"),
    );
    let bert_scores = floats(&bert_var, "score");
    let bert_alts = strings(&bert_var, "alt");
    for (k, (id, s, _)) in rows.iter().enumerate() {
        let at = 10 + 7 * k;
        let i = (0..ism.height())
            .find(|&i| ids[i] == *id && pos[i] as usize == at && alt[i] == bert_alts[k])
            .unwrap_or_else(|| panic!("{id} position {at} in the mutagenesis table"));
        assert!(
            (delta[i] - bert_scores[k]).abs() < 1e-5,
            "{id}: mutagenesis {} against variant {}",
            delta[i],
            bert_scores[k]
        );
        assert_eq!(
            s.as_bytes()[at] as char,
            strings(&ism, "ref")[i].chars().next().unwrap()
        );
    }
    let pll = metrics(&report.out("bert_ll"));
    assert_eq!(pll["method"], "pseudo-log-likelihood");
    assert!(pll["bits_per_base"].as_f64().unwrap() > 1.0);

    // A classifier's mutagenesis: the window in reported coordinates, the region against the
    // rest, and a heat map with the region marked.
    let cls = table(&report.out("cls_ism").join("scores.parquet"));
    assert_eq!(cls.height(), 3 * 20 * 3);
    let positions = floats(&cls, "position");
    assert_eq!(positions.iter().cloned().fold(f64::MAX, f64::min), -10.0);
    assert_eq!(positions.iter().cloned().fold(f64::MIN, f64::max), 9.0);
    let m = metrics(&report.out("cls_ism"));
    assert_eq!(m["method"], "class-log-prob");
    assert!(
        m["regions"]["junction"]["ratio_to_outside"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let svg = read(&report.out("cls_ism").join("scores.svg"));
    assert!(svg.contains("junction") && svg.contains("<rect"));

    // transformers gives the same log-likelihood for the causal model (its start token, then
    // the sequence).
    if !Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped the transformers check: python3 lacks torch or transformers");
        return;
    }
    let seq_table = read(&p.path("seqs.csv"));
    let sequences: Vec<&str> = seq_table
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, seqs, start = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d).eval()
out = []
for s in seqs:
    ids = [tok.convert_tokens_to_ids(start)] + tok(s, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    out.append(sum(lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)))
print(json.dumps(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(report.out("gpt2").join("model"))
        .arg(serde_json::to_string(&sequences).unwrap())
        .arg(
            metrics(&report.out("gpt2_ll"))["start_token"]
                .as_str()
                .unwrap(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    for (ours, theirs) in lls.iter().zip(&theirs) {
        assert!(
            (ours - theirs).abs() < 1e-3,
            "log-likelihood {ours} against transformers' {theirs}"
        );
    }
}

#[test]
fn a_variant_whose_reference_disagrees_with_its_sequence_is_named() {
    let p = Project::new();
    let rows = splice(0..40);
    let mut csv = String::from("id,sequence,label\n");
    for (id, s, l) in &rows {
        csv.push_str(&format!("{id},{s},{l}\n"));
    }
    p.write("train.csv", &csv);
    let (id, s, _) = &rows[3];
    let wrong = other(s.as_bytes()[4] as char);
    p.write(
        "variants.csv",
        &format!(
            "id,sequence,position,ref,alt\nok,{s},1,{},A\n{id},{s},5,{wrong},A\n",
            &s[..1]
        ),
    );
    p.write(
        "wf.yaml",
        &format!(
            "name: bad-variant\nsteps:{MODELS}  score:\n    uses: model.score\n    with: {{ model: \"${{{{ steps.gpt2.model }}}}\", mode: variants, data: variants.csv }}\n"
        ),
    );
    let out = p.dnaflow(&["run", "wf.yaml", "score"]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("variants.csv")
            && text.contains(&format!("id `{id}`"))
            && text.contains("line 3")
            && text.contains(&format!("the reference is `{wrong}`")),
        "{text}"
    );
}

/// A sequence longer than the model's positions: `truncate` scans a window within what the
/// model reads, and a window past it is an error naming the row.
#[test]
fn mutagenesis_of_a_long_sequence_scans_within_what_the_model_reads() {
    let p = Project::new();
    let rows = splice(0..40);
    let mut csv = String::from("id,sequence,label\n");
    for (id, s, l) in &rows {
        csv.push_str(&format!("{id},{s},{l}\n"));
    }
    p.write("train.csv", &csv);
    // 120 bases: more than the 64 positions of the models.
    p.write(
        "long.csv",
        &format!("id,sequence\nlong1,{}{}\n", rows[0].1, rows[1].1),
    );
    let scan = |name: &str, window: &str| {
        format!(
            "  {name}:\n    uses: model.score\n    with: {{ model: \"${{{{ steps.bert.model }}}}\", mode: mutagenesis, data: long.csv, truncate: true, window: {window} }}\n"
        )
    };
    p.write(
        "wf.yaml",
        &format!(
            "name: long-scan\nsteps:{MODELS}{}{}",
            scan("head", "[0, 10]"),
            scan("past", "[60, 70]")
        ),
    );
    let r = p.run_ok(&["wf.yaml", "head"]);
    let t = table(&r.out("head").join("scores.parquet"));
    assert_eq!(t.height(), 10 * 3);
    assert_eq!(strings(&t, "id")[0], "long1");
    let out = p.dnaflow(&["run", "wf.yaml", "past"]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("long.csv")
            && text.contains("id `long1`")
            && text.contains("runs past the 62 bases"),
        "{text}"
    );
}
