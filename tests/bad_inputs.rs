//! Bad inputs a biologist's own data brings (issue 28's sweep): each one stops with an error
//! that names the field or row and what to do — at `dnaflow validate` where it can be known
//! without running — never a panic, an empty result or a silently meaningless score.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A model directory: the tiny transformers GPT-2 (16 token rows) with `tokenizer` beside it.
fn gpt2_dir(p: &Project, name: &str, tokenizer: &str) -> String {
    let dir = p.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("models/gpt2").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("tokenizers").join(tokenizer),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir.display().to_string()
}

/// `dnaflow validate` on one step; its output, asserting it refused with a located error.
fn refused(p: &Project, step: &str, location: &str, words: &[&str]) -> String {
    p.write("wf.yaml", &format!("name: bad\nsteps:\n{step}"));
    let out = p.dnaflow(&["validate", "wf.yaml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!("wf.yaml:{location}: ")),
        "want {location}:\n{t}"
    );
    for w in words {
        assert!(t.contains(w), "want `{w}`:\n{t}");
    }
    assert!(
        !t.contains("panicked") && !t.contains("internal error"),
        "{t}"
    );
    t
}

/// Run a workflow expected to fail; its output, asserting no panic and the words.
fn fails(p: &Project, yaml: &str, words: &[&str]) -> String {
    p.write("wf.yaml", yaml);
    let (out, _) = p.run(&["wf.yaml"]);
    let t = text(&out);
    assert!(!out.status.success(), "should fail:\n{t}");
    for w in words {
        assert!(t.contains(w), "want `{w}`:\n{t}");
    }
    assert!(
        !t.contains("panicked") && !t.contains("internal error") && !t.contains("please report"),
        "{t}"
    );
    t
}

#[test]
fn validate_catches_ranges_and_unknown_config_fields() {
    let p = Project::new();
    p.write("c.txt", "ACGT\n");
    refused(
        &p,
        "  e:\n    uses: eval.lm\n    with:\n      model: m\n      data: c.txt\n      mask_probability: 1.5\n",
        "8:7",
        &["`mask_probability` must be between 0 and 1", "not 1.5"],
    );
    let pretrain = |config: &str, extra: &str| {
        format!(
            "  m:\n    uses: model.pretrain\n    with:\n      arch: gpt2\n      tokenizer: t.json\n      train: c.txt\n      config: {config}\n{extra}"
        )
    };
    refused(
        &p,
        &pretrain("{ n_layers: 1 }", ""),
        "9:7",
        &[
            "`n_layers` is not a field of a gpt2 config",
            "did you mean `n_layer`?",
        ],
    );
    refused(
        &p,
        &pretrain("{ n_layer: 1 }", "      batch_size: 2\n      epochs: 0\n"),
        "11:7",
        &["`epochs` must be at least 1"],
    );
    refused(
        &p,
        "  f:\n    uses: model.finetune\n    with:\n      task: seq-cls\n      arch: bert\n      tokenizer: t.json\n      train: a.csv\n      valid: a.csv\n      test: a.csv\n      config: { num_layers: 1 }\n",
        "12:7",
        &[
            "`num_layers` is not a field of a bert config",
            "num_hidden_layers",
        ],
    );
    refused(
        &p,
        "  g:\n    uses: model.generate\n    with:\n      model: m\n      max_new_tokens: 0\n",
        "7:7",
        &["`max_new_tokens` must be at least 1"],
    );
    refused(
        &p,
        "  t:\n    uses: tokenizer.train\n    with:\n      input: c.txt\n      model: bpe\n      vocab_size: 64\n",
        "8:7",
        &["`vocab_size` 64 leaves no room", "256 byte tokens"],
    );
    refused(
        &p,
        "  t:\n    uses: tokenizer.train\n    with:\n      input: c.txt\n      model: wordpiece\n      vocab_size: 0\n",
        "8:7",
        &["`vocab_size` 0 leaves no room"],
    );
}

#[test]
fn a_tokenizer_larger_than_the_model_is_named_not_a_panic() {
    let p = Project::new();
    let model = gpt2_dir(&p, "m", "bpe.json");
    p.write("c.txt", "ACGTACGT\nGGCCAATT\n");
    p.write("t.csv", "id,sequence\na,ACGTACGT\nb,GGCCAATT\n");
    for step in [
        format!("uses: eval.lm\n    with: {{ model: {model}, data: c.txt }}"),
        format!("uses: model.generate\n    with: {{ model: {model}, max_new_tokens: 2 }}"),
        format!("uses: model.embed\n    with: {{ model: {model}, data: t.csv }}"),
    ] {
        fails(
            &p,
            &format!("name: big-tok\nsteps:\n  s:\n    {step}\n"),
            &["has 300 tokens but the model only 16", "model.resize"],
        );
    }
}

#[test]
fn prompts_fold_case_and_unknown_letters_are_named() {
    let p = Project::new();
    let model = gpt2_dir(&p, "m", "char.json");
    let generate = |prompt: &str| {
        format!(
            "name: gen\nsteps:\n  g:\n    uses: model.generate\n    with: {{ model: {model}, prompts: [\"{prompt}\"], max_new_tokens: 3, stop_at_eos: false, temperature: 0 }}\n"
        )
    };
    for prompt in ["XYZ#", "hello"] {
        fails(
            &p,
            &generate(prompt),
            &[
                &format!("`prompts`: `{prompt}` has letters"),
                "does not know",
            ],
        );
    }
    // Lower case is soft-masked DNA, as data.load and the tokenizers read it.
    p.write("wf.yaml", &generate("atg"));
    let r = p.run_ok(&["wf.yaml"]);
    let samples = read(&r.out("g").join("samples.jsonl"));
    let upper = {
        p.write("wf.yaml", &generate("ATG"));
        read(&p.run_ok(&["wf.yaml"]).out("g").join("samples.jsonl"))
    };
    let sample = |t: &str| {
        let v: serde_json::Value = serde_json::from_str(t.lines().next().unwrap()).unwrap();
        (
            v["tokens"].as_u64().unwrap(),
            v["sequence"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(sample(&samples).0, 3, "{samples}");
    assert_eq!(
        sample(&samples),
        sample(&upper),
        "atg and ATG continue alike"
    );
}

#[test]
fn protein_rows_for_a_dna_model_are_stopped_and_unk_rate_is_reported() {
    let p = Project::new();
    let model = gpt2_dir(&p, "m", "char.json");
    p.write("dna.txt", "ACGTACGTAC\nGGCCAATTGG\n");
    p.write("protein.txt", "MKLVWRQEDS\nACGTACGTAC\n");
    let eval = |data: &str| {
        format!(
            "name: unk\nsteps:\n  e:\n    uses: eval.lm\n    with: {{ model: {model}, data: {data} }}\n"
        )
    };
    // Protein for a DNA model: its alphabet is one the tokenizer cannot spell.
    fails(
        &p,
        &eval("protein.txt"),
        &[
            "protein.txt: the table's alphabet is protein (detected)",
            "its tokenizer",
            "spells only `ACGT`, without `DEFHIKLMNPQRSVWY`",
        ],
    );
    // DNA the tokenizer spells, but mostly of a letter it lacks: the unknown tokens are named.
    p.write("n.txt", "NNNNNNNNAC\nNNNNNNNNGT\n");
    fails(
        &p,
        &eval("n.txt"),
        &[
            "% of the tokens are unknown",
            "n.txt: sequence 1: `N`",
            "data.filter",
        ],
    );
    p.write("wf.yaml", &eval("dna.txt"));
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("e")["metrics"]["unk_rate"], 0.0);
}

#[test]
fn labelled_tables_with_missing_or_single_labels_name_the_row() {
    let p = Project::new();
    let baseline = |table: &str| {
        format!(
            "name: b\nsteps:\n  b:\n    uses: baseline.classify\n    with: {{ train: {table}, test: {table}, features: onehot }}\n"
        )
    };
    p.write(
        "nan.csv",
        "id,sequence,label\nr1,ACGT,+\nr2,ACGA,-\nr3,ACGG,NaN\n",
    );
    fails(
        &p,
        &baseline("nan.csv"),
        &[
            "nan.csv: row 3 (line 4, id `r3`), column `label`",
            "`NaN` marks a missing value",
        ],
    );
    p.write("one.csv", "id,sequence,label\nr1,ACGT,+\nr2,ACGA,+\n");
    fails(
        &p,
        &baseline("one.csv"),
        &[
            "one.csv",
            "every row of column `label` is `+`",
            "two classes",
        ],
    );
}

#[test]
fn data_load_names_empty_files_and_missing_columns() {
    let p = Project::new();
    p.write("empty.fa", "");
    fails(
        &p,
        "name: e\nsteps:\n  l:\n    uses: data.load\n    with: { path: empty.fa }\n",
        &[
            "empty.fa: no sequences in it (read as fasta",
            "check `path:`",
        ],
    );
    p.write("t.tsv", "name\tseq_dna\tlabel\nr1\tACGT\t+\n");
    fails(
        &p,
        "name: e\nsteps:\n  l:\n    uses: data.load\n    with: { path: t.tsv }\n",
        &[
            "t.tsv: no column `sequence`",
            "name, seq_dna, label",
            "`column:`",
        ],
    );
    p.write(
        "s.csv",
        "id,sequence,split\nr1,ACGT,train\nr2,ACGA,holdout\n",
    );
    fails(
        &p,
        "name: e\nsteps:\n  s:\n    uses: data.split\n    with: { input: s.csv, by_column: split }\n",
        &["s.csv: record `r2` (#2)", "\"holdout\""],
    );
}

#[test]
fn a_fresh_models_vocab_size_is_kept_or_refused_not_replaced() {
    let p = Project::new();
    std::fs::copy(fixtures().join("tokenizers/char.json"), p.path("char.json")).unwrap();
    p.write("c.txt", "ACGTACGTAC\nGGCCAATTGG\n");
    let pretrain = |vocab: usize| {
        format!(
            "name: v\nsteps:\n  m:\n    uses: model.pretrain\n    with:\n      arch: gpt2\n      tokenizer: char.json\n      train: c.txt\n      config: {{ n_embd: 8, n_layer: 1, n_head: 2, vocab_size: {vocab} }}\n      seq_len: 8\n      batch_size: 2\n      steps: 1\n"
        )
    };
    fails(
        &p,
        &pretrain(4),
        &["`config.vocab_size` 4 is smaller than the tokenizer's 9 tokens"],
    );
    p.write("wf.yaml", &pretrain(32));
    let r = p.run_ok(&["wf.yaml"]);
    let config = read(&r.out("m").join("model/config.json"));
    assert!(config.contains("\"vocab_size\": 32"), "{config}");
}

/// A TSV of RNA families as public databases write them: a few ambiguity codes and an `X`.
fn rna_table() -> String {
    let mut t = String::from("id\tsequence\tlabel\tsplit\n");
    let motifs = ["ACGUACGUAGGC", "UUUGCAUGCAAA"];
    for i in 0..24 {
        let class = i % 2;
        let mut s = motifs[class].repeat(3);
        if i == 5 {
            s.push_str("RYX");
        }
        let split = ["train", "train", "valid", "test"][i % 4];
        t.push_str(&format!(
            "r{i}\t{s}\t{}\t{split}\n",
            ["tRNA", "rRNA"][class]
        ));
    }
    t
}

#[test]
fn tables_carry_their_alphabet_to_the_baselines() {
    let p = Project::new();
    p.write("rna.tsv", &rna_table());
    let wf = |load: &str, alphabet: &str| {
        format!(
            "name: a\nsteps:\n  load:\n    uses: data.load\n    with: {{ path: rna.tsv{load} }}\n  split:\n    uses: data.split\n    with: {{ input: \"${{{{ steps.load.table }}}}\", by_column: split }}\n  kmer:\n    uses: baseline.classify\n    with: {{ train: \"${{{{ steps.split.train }}}}\", test: \"${{{{ steps.split.test }}}}\", features: kmer, k: 4{alphabet} }}\n"
        )
    };
    p.write("wf.yaml", &wf(", on_invalid: mask", ""));
    let r = p.run_ok(&["wf.yaml"]);
    let load = &r.step("load")["metrics"];
    assert_eq!(load["alphabet"], "rna", "{load}");
    assert_eq!(load["alphabet_from"], "detected");
    assert_eq!(load["ambiguous_letters"], 3, "{load}");
    let f = &r.step("kmer")["metrics"]["features"];
    assert_eq!(f["kind"], "dna-kmer", "{f}");
    assert_eq!(f["k"], 4);
    assert_eq!(f["alphabet"], "rna");
    assert_eq!(
        f["alphabet_from"], "table",
        "split kept load's alphabet: {f}"
    );

    // Straight from the TSV: decided by composition, the X counted, not decisive.
    p.write(
        "wf.yaml",
        "name: b\nsteps:\n  kmer:\n    uses: baseline.classify\n    with: { train: rna.tsv, test: rna.tsv, features: kmer, k: 4 }\n",
    );
    let f = p.run_ok(&["wf.yaml"]).step("kmer")["metrics"]["features"].clone();
    assert_eq!(
        (f["kind"].as_str(), f["alphabet_from"].as_str()),
        (Some("dna-kmer"), Some("detected")),
        "{f}"
    );
    assert_eq!(f["ambiguous_letters"], 3, "{f}");

    // An explicit alphabet wins over the table's.
    p.write("wf.yaml", &wf(", on_invalid: mask", ", alphabet: dna"));
    let f = p.run_ok(&["wf.yaml"]).step("kmer")["metrics"]["features"].clone();
    assert_eq!(
        (f["alphabet"].as_str(), f["alphabet_from"].as_str()),
        (Some("dna"), Some("declared")),
        "{f}"
    );
    // Declared protein: amino-acid k-mers, whose k stops at 3, and the message says so.
    p.write("wf.yaml", &wf(", on_invalid: mask", ", alphabet: protein"));
    let (out, _) = p.run(&["wf.yaml"]);
    let t = text(&out);
    assert!(
        t.contains("these sequences are protein, whose k-mers go up to 3"),
        "{t}"
    );
    assert!(t.contains("`steps.split.train`"), "{t}");
}

#[test]
fn a_protein_row_among_dna_is_named() {
    let p = Project::new();
    let mut t = rna_table();
    t.push_str("odd\tMKLVWEEQRSTLLK\ttRNA\ttrain\n");
    p.write("mixed.tsv", &t);
    fails(
        &p,
        "name: m\nsteps:\n  kmer:\n    uses: baseline.classify\n    with: { train: mixed.tsv, test: mixed.tsv, features: kmer }\n",
        &[
            "1 of 25 rows are not rna (the table's alphabet, detected)",
            "mixed.tsv: row 25 (line 26, id `odd`), column `sequence` (`EKLMQRSTVW`)",
            "set `alphabet:`",
        ],
    );
}

#[test]
fn a_row_error_three_steps_downstream_names_the_step_the_file_and_the_id() {
    let p = Project::new();
    // Row r4 (a training row) lost its label: pandas wrote `NaN`.
    let t: String = rna_table()
        .lines()
        .map(|l| {
            if l.starts_with("r4\t") {
                l.replace("\ttRNA\t", "\tNaN\t") + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(t.matches("NaN").count(), 1, "{t}");
    p.write("rna_families.tsv", &t);
    let out = fails(
        &p,
        "name: d\nsteps:\n  load:\n    uses: data.load\n    with: { path: rna_families.tsv, on_invalid: mask }\n  split:\n    uses: data.split\n    with: { input: \"${{ steps.load.table }}\", by_column: split }\n  long:\n    uses: data.filter\n    with: { input: \"${{ steps.split.train }}\", min_length: 10 }\n  kmer:\n    uses: baseline.classify\n    with: { train: \"${{ steps.long.table }}\", test: \"${{ steps.split.test }}\", features: kmer }\n",
        &[
            "`steps.long.table` (rows from ",
            "rna_families.tsv): row 3 (id `r4`), column `label`: `NaN` marks a missing value",
        ],
    );
    let error = out
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        !error.is_empty() && !error.contains("cache/objects"),
        "{out}"
    );
}

/// The consumers of a table read the alphabet it records: a tokenizer is trained for it (an RNA
/// table's k-mers and characters are of U) and records it, and a model whose tokenizer was
/// trained on DNA refuses a protein table before training — even a byte-level BPE, which
/// would otherwise read proteins as bytes, with no unknown token to warn.
#[test]
fn consumers_use_the_tables_recorded_alphabet() {
    let p = Project::new();
    p.write("rna.tsv", &rna_table());
    let mut proteins = String::from("id,sequence,label\n");
    for i in 0..8 {
        let s = ["MKLVWEEQRSTLLK", "DDFFGHHIIKPPQY"][i % 2];
        proteins.push_str(&format!("p{i},{s},{}\n", i % 2));
    }
    p.write("proteins.csv", &proteins);
    p.write(
        "dna.txt",
        &["ACGTACGGATTACAGG", "GGCCAATTGGCATGCA", "TTAGGCATCGATCGAA"].join("\n"),
    );
    let model = "{ arch: gpt2, tokenizer: \"${{ steps.dna_bpe.tokenizer }}\", config: { n_embd: 8, n_layer: 1, n_head: 1 }";
    let wf = format!(
        r#"name: alphabets
steps:
  rna:
    uses: data.load
    with: {{ path: rna.tsv, on_invalid: mask }}
  rna_kmers:
    uses: tokenizer.train
    with: {{ input: "${{{{ steps.rna.table }}}}", model: kmer, k: 2 }}
  rna_chars:
    uses: tokenizer.train
    with: {{ input: "${{{{ steps.rna.table }}}}", model: char }}
  dna_bpe:
    uses: tokenizer.train
    with: {{ input: dna.txt, model: bpe, vocab_size: 270, min_frequency: 1 }}
  proteins:
    uses: data.load
    with: {{ path: proteins.csv }}
  dna_bpe_on_proteins:
    uses: tokenizer.eval
    with: {{ tokenizer: "${{{{ steps.dna_bpe.tokenizer }}}}", input: "${{{{ steps.proteins.table }}}}" }}
  dna_lm:
    uses: model.pretrain
    with: {model}, train: dna.txt, seq_len: 16, batch_size: 2, steps: 2 }}
  protein_lm:
    uses: model.pretrain
    with: {model}, train: "${{{{ steps.proteins.table }}}}", seq_len: 16, steps: 2 }}
  protein_cls:
    uses: model.finetune
    with: {model}, task: seq-cls, train: "${{{{ steps.proteins.table }}}}", valid: "${{{{ steps.proteins.table }}}}", test: "${{{{ steps.proteins.table }}}}", epochs: 1 }}
"#
    );
    p.write("wf.yaml", &wf);
    let (out, r) = p.run(&["wf.yaml", "-k"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        !t.contains("panicked") && !t.contains("internal error"),
        "{t}"
    );
    // The tokenizers: trained for the table's alphabet, which they record.
    for (step, alphabet, from) in [
        ("rna_kmers", "rna", "table"),
        ("rna_chars", "rna", "table"),
        ("dna_bpe", "dna", "detected"),
    ] {
        let m = &r.step(step)["metrics"];
        assert_eq!(m["alphabet"], alphabet, "{step}: {m}");
        assert_eq!(m["alphabet_from"], from, "{step}: {m}");
        let config = read(&r.out(step).join("tokenizer_config.json"));
        assert!(
            config.contains(&format!("\"dnaflow_alphabet\": \"{alphabet}\"")),
            "{step}: {config}"
        );
    }
    let kmers = read(&r.out("rna_kmers").join("tokenizer.json"));
    assert!(
        kmers.contains("\"UU\"") && !kmers.contains("\"TT\""),
        "{kmers}"
    );
    let chars = read(&r.out("rna_chars").join("tokenizer.json"));
    assert!(
        chars.contains("\"U\"") && !chars.contains("\"T\""),
        "{chars}"
    );
    // Measuring a DNA tokenizer on proteins is a fair question: answered, with both alphabets.
    let m = &r.step("dna_bpe_on_proteins")["metrics"];
    assert_eq!(r.step("dna_bpe_on_proteins")["status"], "ran", "{t}");
    assert_eq!(m["alphabet"], "protein", "{m}");
    assert_eq!(m["tokenizer_alphabet"], "dna", "{m}");
    // DNA for the DNA model: trained, the alphabet in its metrics.
    assert_eq!(r.step("dna_lm")["status"], "ran", "{t}");
    assert_eq!(r.step("dna_lm")["metrics"]["alphabet"], "dna");
    // Proteins for it: refused before training, naming the user's file, the table's alphabet
    // and the model's.
    for step in ["protein_lm", "protein_cls"] {
        assert_eq!(r.step(step)["status"], "failed", "{step}: {t}");
        let error = r.step(step)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for words in [
            "proteins.csv",
            "the table's alphabet is protein (table)",
            "a dna tokenizer",
            "without `DEFHIKLMPQRSVWY`",
        ] {
            assert!(error.contains(words), "{step}: want `{words}`: {error}");
        }
    }
}
