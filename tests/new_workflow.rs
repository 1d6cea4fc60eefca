//! `dnaflow new`: a workflow for a user's own labelled table that validates and runs end to
//! end (its small default profile), with every model and baseline scored.

mod common;

use common::*;

#[test]
fn new_classify_writes_a_workflow_that_validates_and_runs() {
    let p = Project::new();
    // The shipped E. coli promoters: no split column, so a seeded stratified split.
    let table = data("promoters/promoters.csv");
    let out = p.dnaflow(&["new", "classify", &table, "-o", "wf.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    let wf = read(&p.path("wf.yaml"));
    assert!(
        wf.contains("stratify: \"label\"") && wf.contains("# expect:"),
        "{wf}"
    );
    let v = p.dnaflow(&["validate", "wf.yaml"]);
    assert!(v.status.success(), "{}\n{wf}", text(&v));
    let r = p.run_ok(&["wf.yaml"]);
    for step in [
        "onehot_score",
        "kmer_score",
        "finetuned_score",
        "scratch_score",
    ] {
        let acc = r.step(step)["metrics"]["accuracy"].as_f64();
        assert!(
            acc.is_some_and(|a| (0.0..=1.0).contains(&a)),
            "{step}: {acc:?}"
        );
    }
    assert_eq!(r.step("kmer")["metrics"]["features"]["kind"], "dna-kmer");
}

#[test]
fn new_regress_and_token_cls_validate_and_name_missing_columns() {
    let p = Project::new();
    p.write(
        "mfe.tsv",
        "id\tseq\tmfe\tsplit\na\tACGUAGG\t-1.5\ttrain\nb\tGGGCCCA\t-3.0\ttest\n",
    );
    let out = p.dnaflow(&[
        "new",
        "regress",
        "mfe.tsv",
        "--label",
        "mfe",
        "--sequence",
        "seq",
        "-o",
        "r.yaml",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let wf = read(&p.path("r.yaml"));
    assert!(
        wf.contains("by_column: split") && wf.contains("train_valid"),
        "{wf}"
    );
    let v = p.dnaflow(&["validate", "r.yaml"]);
    assert!(v.status.success(), "{}\n{wf}", text(&v));
    p.write("s.csv", "id,sequence,label\na,ACGU,((.)\n");
    let out = p.dnaflow(&[
        "new",
        "token-cls",
        "s.csv",
        "--arch",
        "bert",
        "-o",
        "t.yaml",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v = p.dnaflow(&["validate", "t.yaml"]);
    assert!(
        v.status.success(),
        "{}\n{}",
        text(&v),
        read(&p.path("t.yaml"))
    );
    // No label column: the columns the table has, and the flag to name one.
    let out = p.dnaflow(&["new", "classify", "mfe.tsv", "--sequence", "seq"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("no column `label`; its columns are: id, seq, mfe, split"),
        "{t}"
    );
    assert!(t.contains("--label"), "{t}");
}

#[test]
fn new_help_shows_the_path_from_a_table_to_a_report() {
    let t = text(&Project::new().dnaflow(&["new", "--help"]));
    for cmd in [
        "dnaflow new classify",
        "dnaflow run my.yaml",
        "dnaflow report my.yaml",
    ] {
        assert!(t.contains(cmd), "{t}");
    }
}
