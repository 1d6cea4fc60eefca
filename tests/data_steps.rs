//! The `data.*` kinds end to end: tiny fixtures in temp dirs, the shipped real data, bad input.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use dnaflow::steps::table::read_table;
use polars::prelude::*;

fn table(dir: &Path, file: &str) -> DataFrame {
    read_table(&dir.join(file)).unwrap()
}

fn strings(df: &DataFrame, col: &str) -> Vec<String> {
    df.column(col)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap_or("<null>").to_string())
        .collect()
}

fn gz(p: &Project, rel: &str, text: &str) -> PathBuf {
    use std::io::Write;
    let path = p.path(rel);
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap();
    path
}

/// Run and expect failure of `step`; return stdout+stderr.
/// A workflow of one `data.load` step named `load` with these parameters.
fn load_workflow(p: &Project, with: &str) {
    p.write(
        "wf.yaml",
        &format!("steps:\n  load:\n    uses: data.load\n    with: {{ {with} }}\n"),
    );
}

fn run_fails(p: &Project, step: &str) -> String {
    let (out, r) = p.run(&["wf.yaml"]);
    let t = text(&out);
    assert!(!out.status.success(), "expected failure:\n{t}");
    assert_eq!(r.step(step)["status"], "failed", "{t}");
    t
}

#[test]
fn fasta_windows_reverse_complement_then_stats() {
    let p = Project::new();
    gz(
        &p,
        "g.fa.gz",
        ">chr1 test\nACGTACGTAC\nGTAC\n>chr2\nAAAACCCCGG\n",
    );
    p.write(
        "wf.yaml",
        r#"
steps:
  load:
    uses: data.load
    with: { path: g.fa.gz, window: 4, stride: 4, reverse_complement: true }
  stats:
    uses: data.stats
    with: { input: "${{ steps.load.table }}", k: 2 }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    let t = table(&r.out("load"), "table.parquet");
    assert_eq!(
        strings(&t, "id"),
        [
            "chr1:1-4",
            "chr1:1-4/rc",
            "chr1:5-8",
            "chr1:5-8/rc",
            "chr1:9-12",
            "chr1:9-12/rc",
            "chr2:1-4",
            "chr2:1-4/rc",
            "chr2:5-8",
            "chr2:5-8/rc"
        ]
    );
    assert_eq!(
        strings(&t, "sequence")[..4],
        ["ACGT", "ACGT", "ACGT", "ACGT"]
    );
    assert_eq!(strings(&t, "sequence")[6..8], ["AAAA", "TTTT"]);
    let m = &r.step("load")["metrics"];
    assert_eq!(
        (m["records"].as_u64(), m["rows"].as_u64()),
        (Some(2), Some(10))
    );
    assert_eq!(m["bases"], 40);
    let s = &r.step("stats")["metrics"];
    assert_eq!(s["sequences"], 10);
    assert_eq!(s["bases"], 40);
    // AC CG GT (ACGT windows), AA, TT, CC GG (CCGG windows).
    assert_eq!(s["distinct_kmers"], 7);
    assert_eq!(s["top_kmers"].as_array().unwrap().len(), 7);
    assert_eq!(s["top_kmers"][0]["kmer"], "AC");
    let out = r.out("stats");
    assert!(read(&out.join("lengths.svg")).starts_with("<svg"));
    assert!(read(&out.join("kmers.svg")).contains("2-mers"));
}

#[test]
fn fastq_and_lines_with_min_length_and_tail() {
    let p = Project::new();
    p.write("r.fq", "@r1\nACGTAC\n+\nIIIIII\n@r2\nAC\n+\nII\n");
    p.write("s.txt", "ACGTACGTA\n\nGGG\n");
    p.write(
        "wf.yaml",
        r#"
steps:
  fq:
    uses: data.load
    with: { path: r.fq, min_length: 3 }
  lines:
    uses: data.load
    with: { path: s.txt, window: 4, keep_tail: true }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    let fq = table(&r.out("fq"), "table.parquet");
    assert_eq!(strings(&fq, "id"), ["r1"]);
    assert_eq!(r.step("fq")["metrics"]["too_short"], 1);
    let l = table(&r.out("lines"), "table.parquet");
    assert_eq!(
        strings(&l, "id"),
        ["line1:1-4", "line1:5-8", "line1:9-9", "line3:1-3"]
    );
}

#[test]
fn csv_table_keeps_columns_and_uses_id_column() {
    let p = Project::new();
    p.write("t.csv", "name,seq,label\nx,acgt,1\ny,GGCC,0\n");
    load_workflow(&p, "path: t.csv, column: seq, id_column: name");
    let r = p.run_ok(&["wf.yaml"]);
    let t = table(&r.out("load"), "table.parquet");
    let cols: Vec<&str> = t.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(cols, ["id", "sequence", "label"]);
    assert_eq!(strings(&t, "id"), ["x", "y"]);
    assert_eq!(strings(&t, "sequence"), ["ACGT", "GGCC"]);
}

#[test]
fn hf_dataset_directory_with_split() {
    let p = Project::new();
    p.write("ds/README.md", "# a dataset\n");
    p.write(
        "ds/data/train-00000-of-00001.jsonl",
        "{\"sequence\": \"ACGT\", \"label\": 1}\n{\"sequence\": \"GG\", \"label\": 0}\n",
    );
    p.write(
        "ds/data/test-00000-of-00001.jsonl",
        "{\"sequence\": \"TTTT\", \"label\": 1}\n",
    );
    p.write("empty/README.md", "nothing here\n");
    p.write(
        "wf.yaml",
        r#"
steps:
  train:
    uses: data.load
    with: { path: ds, split: train }
  all:
    uses: data.load
    with: { path: ds, format: hf }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(
        strings(&table(&r.out("train"), "table.parquet"), "sequence"),
        ["ACGT", "GG"]
    );
    assert_eq!(r.step("all")["metrics"]["records"], 3);
    load_workflow(&p, "path: empty");
    let t = run_fails(&p, "load");
    assert!(
        t.contains("no data files") && t.contains("README.md"),
        "{t}"
    );
}

#[test]
fn invalid_character_is_located_and_skip_mask_count() {
    let p = Project::new();
    p.write("bad.fa", ">ok\nACGT\n>chr2 second\nACGT\nACXT\n");
    load_workflow(&p, "path: bad.fa");
    let t = run_fails(&p, "load");
    assert!(
        t.contains(
            "bad.fa: record `chr2` (#2) (starting at line 3) position 7: invalid character 'X'"
        ),
        "{t}"
    );
    assert!(t.contains("on_invalid: skip"), "{t}");
    p.write(
        "wf.yaml",
        r#"
steps:
  skip:
    uses: data.load
    with: { path: bad.fa, on_invalid: skip }
  mask:
    uses: data.load
    with: { path: bad.fa, on_invalid: mask }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("skip")["metrics"]["skipped"], 1);
    assert_eq!(r.step("skip")["metrics"]["rows"], 1);
    assert_eq!(r.step("mask")["metrics"]["masked_chars"], 1);
    assert_eq!(r.step("mask")["metrics"]["masked_records"], 1);
    let t = table(&r.out("mask"), "table.parquet");
    assert_eq!(strings(&t, "sequence"), ["ACGT", "ACGTACNT"]);
}

#[test]
fn empty_record_ragged_csv_and_missing_column_fail_clearly() {
    let p = Project::new();
    p.write("e.fa", ">a\nACGT\n>empty\n>c\nGG\n");
    load_workflow(&p, "path: e.fa");
    let t = run_fails(&p, "load");
    assert!(
        t.contains("record `empty` (#2)") && t.contains("is empty"),
        "{t}"
    );

    p.write("r.csv", "id,sequence\na,ACGT\nb,GG,extra\n");
    load_workflow(&p, "path: r.csv");
    let t = run_fails(&p, "load");
    assert!(
        t.contains("r.csv: line 3 has 3 fields but the header has 2"),
        "{t}"
    );

    p.write("m.csv", "id,seq\na,ACGT\n");
    load_workflow(&p, "path: m.csv");
    let t = run_fails(&p, "load");
    assert!(
        t.contains("m.csv: no column `sequence`; the columns are: id, seq"),
        "{t}"
    );
}

#[test]
fn bad_parameters_are_rejected_before_running() {
    let p = Project::new();
    p.write("a.fa", ">a\nACGT\n");
    load_workflow(
        &p,
        "path: a.fa, alphabet: protein, reverse_complement: true",
    );
    let out = p.dnaflow(&["validate", "wf.yaml"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("reverse_complement"), "{}", text(&out));
}

const TABLE_CSV: &str = "id,sequence,label\n\
a,ACGTACGTAC,x\nb,ACGNNNNNAC,x\nc,AC,y\nd,ACGTRCGTAC,y\ne,GGGGCCCCAA,y\nf,TTTTAAAACC,x\n";

#[test]
fn split_filter_sample_concat_on_a_small_table() {
    let p = Project::new();
    p.write("t.csv", TABLE_CSV);
    p.write(
        "wf.yaml",
        r#"
steps:
  load:
    uses: data.load
    with: { path: t.csv, on_invalid: mask }
  filter:
    uses: data.filter
    with: { input: "${{ steps.load.table }}", min_length: 5, max_n_fraction: 0.3 }
  only_y:
    uses: data.filter
    with: { input: "${{ steps.load.table }}", where: { label: "y" } }
  split:
    uses: data.split
    with: { input: "${{ steps.load.table }}", ratios: [0.5, 0, 0.5], seed: 1, stratify: label }
  sample:
    uses: data.sample
    with: { input: "${{ steps.load.table }}", n: 4, seed: 3, stratify: label }
  concat:
    uses: data.concat
    with:
      inputs: ["${{ steps.filter.table }}", "${{ steps.only_y.table }}"]
      sources: [filtered, only_y]
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    let f = &r.step("filter")["metrics"];
    assert_eq!(
        (f["kept"].as_u64(), f["dropped"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(f["dropped_by"]["too_short"], 1);
    assert_eq!(f["dropped_by"]["too_many_n"], 1);
    assert_eq!(r.step("only_y")["metrics"]["kept"], 3);
    let s = &r.step("split")["metrics"];
    assert_eq!(
        (s["train"].as_u64(), s["valid"].as_u64(), s["test"].as_u64()),
        (Some(3), Some(0), Some(3))
    );
    let x = s["classes"]["train"]["x"].as_u64().unwrap();
    assert!(x == 1 || x == 2, "{s}");
    let valid = table(&r.out("split"), "valid.parquet");
    assert_eq!(valid.height(), 0);
    assert_eq!(valid.width(), 3);
    let sample = table(&r.out("sample"), "table.parquet");
    assert_eq!(sample.height(), 4);
    assert_eq!(r.step("sample")["metrics"]["classes"]["x"], 2);
    let c = table(&r.out("concat"), "table.parquet");
    assert_eq!(c.height(), 7);
    let src = strings(&c, "source");
    assert_eq!(src.iter().filter(|s| *s == "only_y").count(), 3);
    // Same seed, same split: a second run is fully cached and a fresh cache agrees.
    let again = Project::new();
    again.write("t.csv", TABLE_CSV);
    again.write("wf.yaml", &read(&p.path("wf.yaml")));
    let r2 = again.run_ok(&["wf.yaml", "split"]);
    assert_eq!(
        strings(&table(&r.out("split"), "train.parquet"), "id"),
        strings(&table(&r2.out("split"), "train.parquet"), "id")
    );
}

#[test]
fn k_fold_partitions_the_rows() {
    let p = Project::new();
    p.write("t.csv", TABLE_CSV);
    p.write(
        "wf.yaml",
        r#"
steps:
  fold:
    foreach: { i: [0, 1, 2] }
    uses: data.split
    with: { input: t.csv, folds: 3, fold: "${{ matrix.i }}", seed: 7 }
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    let mut test_ids = Vec::new();
    for i in 0..3 {
        let out = r.out(&format!("fold[i={i}]"));
        let test = strings(&table(&out, "test.parquet"), "id");
        let train = strings(&table(&out, "train.parquet"), "id");
        assert_eq!(test.len(), 2);
        assert_eq!(train.len(), 4);
        assert!(test.iter().all(|t| !train.contains(t)));
        test_ids.extend(test);
    }
    test_ids.sort();
    assert_eq!(test_ids, ["a", "b", "c", "d", "e", "f"]);
}

/// The real tRNA energies repeat sequences under other ids: `group: sequence` keeps every
/// copy in one split, in ratio mode and in k-fold mode alike.
#[test]
fn grouped_splits_never_put_one_sequence_in_two_splits() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &format!(
            r#"
steps:
  ratio:
    uses: data.split
    with: {{ input: "{0}", ratios: [0.8, 0.1, 0.1], seed: 42, group: sequence }}
  fold:
    uses: data.split
    with: {{ input: "{0}", folds: 5, fold: 2, valid_fraction: 0.1, seed: 3, group: sequence }}
"#,
            data("trna/trna_mfe.csv.gz")
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    for step in ["ratio", "fold"] {
        let parts: Vec<Vec<String>> = ["train", "valid", "test"]
            .iter()
            .map(|k| strings(&table(&r.out(step), &format!("{k}.parquet")), "sequence"))
            .collect();
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 1415, "{step}");
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let shared = parts[a].iter().filter(|s| parts[b].contains(s)).count();
            assert_eq!(shared, 0, "{step}: a sequence in two splits");
        }
    }
}

#[test]
fn real_yeast_chromosome_windows_and_gc() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &format!(
            r#"
steps:
  load:
    uses: data.load
    with: {{ path: "{0}", window: 1000 }}
  whole:
    uses: data.load
    with: {{ path: "{0}", window: 1000, keep_tail: true }}
  stats:
    uses: data.stats
    with: {{ input: "${{{{ steps.whole.table }}}}" }}
"#,
            data("genomes/yeast_chrI.fa.gz")
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    let m = &r.step("load")["metrics"];
    assert_eq!(
        (m["records"].as_u64(), m["rows"].as_u64()),
        (Some(1), Some(230))
    );
    assert_eq!(m["bases"], 230_000);
    let s = &r.step("stats")["metrics"];
    assert_eq!(s["sequences"], 231);
    assert_eq!(s["bases"], 230_208);
    assert_eq!(s["length"]["min"], 208);
    let gc = s["gc_content"].as_f64().unwrap();
    // 0.3927 to four places (as an integer: clippy mistakes 0.3927 for π/8).
    assert_eq!((gc * 1e4).round(), 3927.0, "gc {gc}");
    assert_eq!(s["composition"]["N"], 0.0);
    assert_eq!(s["top_kmers"][0]["kmer"].as_str().unwrap().len(), 3);
}

#[test]
fn real_splice_split_by_column() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &format!(
            r#"
steps:
  load:
    uses: data.load
    with: {{ path: "{}" }}
  split:
    uses: data.split
    with: {{ input: "${{{{ steps.load.table }}}}", by_column: split }}
"#,
            data("splice/splice.csv")
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("load")["metrics"]["rows"], 3186);
    let s = &r.step("split")["metrics"];
    assert_eq!(
        (s["train"].as_u64(), s["valid"].as_u64(), s["test"].as_u64()),
        (Some(2000), Some(0), Some(1186))
    );
    let train = table(&r.out("split"), "train.parquet");
    let labels = strings(&train, "label");
    assert_eq!(labels.iter().filter(|l| *l == "ei").count(), 464);
}

#[test]
fn real_gzipped_csv_and_protein_alphabet() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &format!(
            r#"
steps:
  trna:
    uses: data.load
    with: {{ path: "{}" }}
  proteins:
    uses: data.load
    with: {{ path: "{}", column: protein, alphabet: protein }}
"#,
            data("trna/trna.csv.gz"),
            data("chlamydia/cds.csv.gz")
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("trna")["metrics"]["rows"], 1415);
    assert_eq!(r.step("proteins")["metrics"]["rows"], 895);
    let t = table(&r.out("proteins"), "table.parquet");
    assert!(t.column("cds_sequence").is_ok());
}
