//! Tokenizers: deterministic training, identical encodings in Rust and Python, honest metrics.

mod common;
use common::*;

use std::path::{Path, PathBuf};

const MODELS: [&str; 5] = ["bpe", "wordpiece", "unigram", "char", "kmer"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers")
}

fn heldout() -> Vec<String> {
    read(&fixtures().join("heldout.txt"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn training_reproduces_the_committed_tokenizers_byte_for_byte() {
    let p = Project::new();
    p.write("train.yaml", &read(&fixtures().join("train.yaml")));
    p.write("corpus.txt", &read(&fixtures().join("corpus.txt")));
    let r = p.run_ok(&["train.yaml"]);
    for m in MODELS {
        let ours = read(&r.out(&format!("tok[model={m}]")).join("tokenizer.json"));
        assert!(
            ours == read(&fixtures().join(format!("{m}.json"))),
            "{m}: tokenizer.json differs from the fixture"
        );
        // transformers finds its configuration beside the tokenizer.
        let cfg = read(
            &r.out(&format!("tok[model={m}]"))
                .join("tokenizer_config.json"),
        );
        assert!(cfg.contains("PreTrainedTokenizerFast"), "{cfg}");
    }
}

#[test]
fn rust_encodes_exactly_like_python() {
    let reference: serde_json::Value =
        serde_json::from_str(&read(&fixtures().join("reference_ids.json"))).unwrap();
    let seqs = heldout();
    for m in MODELS {
        let tok = tokenizers::Tokenizer::from_file(fixtures().join(format!("{m}.json"))).unwrap();
        let ids: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| tok.encode(s.as_str(), false).unwrap().get_ids().to_vec())
            .collect();
        assert_eq!(serde_json::to_value(&ids).unwrap(), reference[m], "{m}");
        let special: Vec<Vec<u32>> = seqs[..2]
            .iter()
            .map(|s| tok.encode(s.as_str(), true).unwrap().get_ids().to_vec())
            .collect();
        assert_eq!(
            serde_json::to_value(&special).unwrap(),
            reference[format!("{m}+special")],
            "{m} with special tokens"
        );
    }
}

#[test]
fn python_reference_is_reproducible_when_python_tokenizers_is_installed() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import tokenizers"])
        .output();
    if !has.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: Python `tokenizers` is not installed (pip install tokenizers transformers)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ids.json");
    let run = std::process::Command::new("python3")
        .arg(fixtures().join("make_reference.py"))
        .args(["reference", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(read(&out), read(&fixtures().join("reference_ids.json")));
}

fn eval_project(model: &str, extra: &str, text_lines: &str) -> (Project, Report) {
    let p = Project::new();
    p.write("corpus.txt", &read(&fixtures().join("corpus.txt")));
    p.write("eval.txt", text_lines);
    p.write(
        "wf.yaml",
        &format!(
            "steps:\n  tok:\n    uses: tokenizer.train\n    with: {{ input: corpus.txt, model: {model}, vocab_size: 300{extra} }}\n  eval:\n    uses: tokenizer.eval\n    with: {{ tokenizer: \"${{{{ steps.tok.out }}}}\", input: eval.txt }}\n"
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    (p, r)
}

#[test]
fn wordpiece_never_turns_long_dna_into_unk() {
    // A 1,000-bp line is one "word": the default WordPiece limit of 100 characters would make it [UNK].
    let line: String = heldout().concat()[..1000].to_string();
    let (_p, r) = eval_project("wordpiece", "", &format!("{line}\n"));
    let m = &r.step("eval")["metrics"];
    assert_eq!(m["unk_rate"], 0.0, "{m}");
    assert_eq!(m["bases"], 1000);
    assert!(m["bases_per_token"].as_f64().unwrap() > 2.0, "{m}");
    assert!(r.out("eval").join("token_lengths.svg").is_file());
}

#[test]
fn eval_metrics_are_exact_on_a_known_input() {
    let (_p, r) = eval_project("kmer", ", k: 2", "ACGTACGT\nACNN\n");
    let m = &r.step("eval")["metrics"];
    // ACGTACGT → AC GT AC GT; ACNN → AC [UNK]
    assert_eq!(m["sequences"], 2);
    assert_eq!(m["bases"], 12);
    assert_eq!(m["tokens"], 6);
    assert_eq!(m["bases_per_token"], 2.0);
    assert_eq!(m["fertility"], 3.0);
    assert_eq!(m["vocab_size"], 21);
    assert_eq!(m["vocab_usage"], 0.142857); // AC, GT, [UNK] of 21
    assert_eq!(m["unk_rate"], 0.166667);
    assert_eq!(m["mean_token_length"], 2.0);
}

#[test]
fn overlapping_kmers_are_fed_as_dnabert_expects() {
    let (_p, r) = eval_project("kmer", ", k: 3, overlap: true", "ACGTAC\n");
    let m = &r.step("eval")["metrics"];
    // ACG CGT GTA TAC: four 3-mers for six bases.
    assert_eq!(m["tokens"], 4);
    assert_eq!(m["bases_per_token"], 1.5);
    assert_eq!(m["mean_token_length"], 3.0);
    assert_eq!(m["unk_rate"], 0.0);
}

#[test]
fn bad_tokenizer_parameters_are_located() {
    let p = Project::new();
    p.write("c.txt", "ACGT\n");
    p.write(
        "wf.yaml",
        "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: c.txt, model: bpee }\n",
    );
    let t = text(&p.dnaflow(&["validate", "wf.yaml"]));
    assert!(
        t.contains("wf.yaml:4:11: bad parameters for `tokenizer.train`")
            && t.contains("unknown variant `bpee`"),
        "{t}"
    );
    p.write(
        "wf.yaml",
        "steps:\n  t:\n    uses: tokenizer.train\n    with: { input: c.txt, model: kmer, k: 12 }\n",
    );
    assert!(text(&p.dnaflow(&["validate", "wf.yaml"])).contains("`k` must be between 1 and 8"));
}

#[test]
fn unigram_does_not_depend_on_the_cpus_granted() {
    let p = Project::new();
    p.write("corpus.txt", &read(&fixtures().join("corpus.txt")));
    p.write(
        "wf.yaml",
        "steps:\n  tok:\n    resources: { cpus: 2 }\n    uses: tokenizer.train\n    with: { input: corpus.txt, model: unigram, vocab_size: 300, min_frequency: 2, k: 3 }\n",
    );
    let r = p.run_ok(&["wf.yaml", "--cpus", "2"]);
    assert!(read(&r.out("tok").join("tokenizer.json")) == read(&fixtures().join("unigram.json")));
}
