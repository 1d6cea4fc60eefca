//! Reruns redo exactly what changed.

mod common;
use common::*;

const PIPELINE: &str = r#"
name: pipe
params: { n: 3, word: ACGT }
profiles:
  big: { n: 5 }
steps:
  raw:
    run: cp data.txt ${{ out }}/data.txt
    inputs: [data.txt]
  repeat:
    run: for i in $(seq ${{ params.n }}); do cat ${{ steps.raw.out }}/data.txt; done > ${{ out }}/rep.txt
    outputs: { rep: rep.txt }
  word:
    uses: file.write
    with: { content: "${{ params.word }}" }
  joined:
    run: cat ${{ steps.repeat.rep }} ${{ steps.word.file }} > ${{ out }}/all.txt
  count:
    run: |
      echo "{\"lines\": $(wc -l < ${{ steps.joined.out }}/all.txt)}" > ${{ out }}/metrics.json
    expect: { lines: { min: 1 } }
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("wf.yaml", PIPELINE).write("data.txt", "GATTACA\n");
    p
}

#[test]
fn first_run_runs_all_second_runs_nothing() {
    let p = project();
    let r1 = p.run_ok(&["wf.yaml"]);
    assert_eq!(
        r1.with_status("ran"),
        names(&["raw", "repeat", "word", "joined", "count"])
    );
    assert_eq!(
        read(&r1.out("joined").join("all.txt")),
        "GATTACA\nGATTACA\nGATTACA\nACGT"
    );
    assert_eq!(r1.step("count")["metrics"]["lines"], 3);

    let r2 = p.run_ok(&["wf.yaml"]);
    assert!(r2.with_status("ran").is_empty(), "{:?}", r2.0);
    assert_eq!(r2.with_status("cached").len(), 5);
    // Cached steps report the same outputs and metrics.
    assert_eq!(r2.out("joined"), r1.out("joined"));
    assert_eq!(r2.step("count")["metrics"]["lines"], 3);
}

#[test]
fn changing_one_param_reruns_exactly_its_dependents() {
    let p = project();
    p.run_ok(&["wf.yaml"]);
    let r = p.run_ok(&["wf.yaml", "--set", "word=TTTT"]);
    assert_eq!(r.with_status("ran"), names(&["word", "joined", "count"]));
    assert_eq!(
        r.step("word")["reason"],
        "param `content` changed: ACGT → TTTT"
    );
    // A profile is just another parameter change.
    let r = p.run_ok(&["wf.yaml", "--profile", "big"]);
    assert_eq!(r.with_status("ran"), names(&["repeat", "joined", "count"]));
    assert_eq!(r.step("count")["metrics"]["lines"], 5);
    // Back to the defaults: everything is still in the cache.
    let r = p.run_ok(&["wf.yaml"]);
    assert!(r.with_status("ran").is_empty());
}

#[test]
fn changing_one_input_byte_reruns_exactly_its_dependents() {
    let p = project();
    p.run_ok(&["wf.yaml"]);
    p.write("data.txt", "GATTACC\n");
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(
        r.with_status("ran"),
        names(&["raw", "repeat", "joined", "count"])
    );
    assert!(
        r.step("raw")["reason"]
            .as_str()
            .unwrap()
            .starts_with("input `data.txt` changed")
    );
    // Same bytes as the first run again: all cached.
    p.write("data.txt", "GATTACA\n");
    assert!(p.run_ok(&["wf.yaml"]).with_status("ran").is_empty());
}

#[test]
fn key_ignores_yaml_layout_and_cache_location() {
    let p = project();
    p.run_ok(&["wf.yaml"]);
    // Same workflow with keys reordered and comments added: nothing reruns.
    let reordered = PIPELINE.replace(
        "  word:\n    uses: file.write\n    with: { content: \"${{ params.word }}\" }\n",
        "  # a comment\n  word:\n    with:\n      content: \"${{ params.word }}\"\n    uses: file.write\n",
    );
    assert_ne!(reordered, PIPELINE);
    p.write("wf.yaml", &reordered);
    assert!(p.run_ok(&["wf.yaml"]).with_status("ran").is_empty());
    // Keys are the same in another cache directory.
    let other = p.path("other-cache");
    let mut cmd = p.cmd(&["run", "wf.yaml", "--report", "r2.json"]);
    cmd.env("DNAFLOW_CACHE", &other);
    assert!(cmd.output().unwrap().status.success());
    let r1: serde_json::Value = serde_json::from_str(&read(&p.path("report.json"))).unwrap();
    let r2: serde_json::Value = serde_json::from_str(&read(&p.path("r2.json"))).unwrap();
    for (a, b) in r1["steps"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r2["steps"].as_array().unwrap())
    {
        assert_eq!(a["key"], b["key"]);
    }
}

#[test]
fn targets_run_only_their_ancestors() {
    let p = project();
    let r = p.run_ok(&["wf.yaml", "repeat"]);
    assert_eq!(r.with_status("ran"), names(&["raw", "repeat"]));
    let (out, _) = p.run(&["wf.yaml", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no step `nope`"), "{}", text(&out));
}

#[test]
fn foreach_expands_a_grid_with_readable_names() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        r#"
params: { folds: [0, 1] }
steps:
  train:
    foreach: { fold: "${{ params.folds }}", lr: [0.1, 0.01] }
    run: echo "${{ matrix.fold }} ${{ matrix.lr }}" > ${{ out }}/m.txt
  score:
    foreach: { fold: "${{ params.folds }}" }
    run: ls -d ${{ steps.train.out }} | wc -l > ${{ out }}/n.txt
  summary:
    run: for d in ${{ steps.score.out }}; do cat $d/n.txt; done > ${{ out }}/all.txt
"#,
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(
        r.with_status("ran"),
        names(&[
            "train[fold=0,lr=0.1]",
            "train[fold=0,lr=0.01]",
            "train[fold=1,lr=0.1]",
            "train[fold=1,lr=0.01]",
            "score[fold=0]",
            "score[fold=1]",
            "summary"
        ])
    );
    assert_eq!(
        read(&r.out("train[fold=1,lr=0.01]").join("m.txt")),
        "1 0.01\n"
    );
    // Each score sees only the two trainings of its own fold.
    assert_eq!(read(&r.out("score[fold=0]").join("n.txt")).trim(), "2");
    assert_eq!(read(&r.out("summary").join("all.txt")), "2\n2\n");
    // Selecting a foreach step by its name runs all of its copies.
    let r = p.run_ok(&["wf.yaml", "score"]);
    assert_eq!(r.steps().len(), 6);
}

#[test]
fn steps_see_their_directory_threads_and_env() {
    let p = Project::new();
    p.write(
        "sub/wf.yaml",
        r#"
workdir: ..
steps:
  env:
    resources: { cpus: 2 }
    env: { GREETING: "hi ${{ out }}" }
    run: |
      ls marker.txt > ${{ out }}/ls.txt
      echo "$DNAFLOW_THREADS $OMP_NUM_THREADS $GREETING" > ${{ out }}/env.txt
      test "$DNAFLOW_OUT" = "${{ out }}"
"#,
    );
    p.write("marker.txt", "");
    let r = p.run_ok(&["sub/wf.yaml", "--cpus", "4"]);
    let env = read(&r.out("env").join("env.txt"));
    assert!(env.starts_with("2 2 hi /"), "{env}");
    assert_eq!(read(&r.out("env").join("ls.txt")), "marker.txt\n");
}

#[test]
fn reasons_look_past_a_targeted_run() {
    let p = project();
    p.run_ok(&["wf.yaml"]);
    // Only `word` runs with the new text; `joined` was not part of that run.
    p.run_ok(&["wf.yaml", "word", "--set", "word=TTTT"]);
    let t = text(&p.dnaflow(&["plan", "wf.yaml", "--set", "word=TTTT"]));
    assert!(t.contains("joined  upstream `word` changed"), "{t}");
    assert!(!t.contains("new step"), "{t}");
}

/// A parameter may hold a step's output, so a profile or `--set` swaps it for a file of the
/// user's (as the chapter 5 workflows swap a pretrained model for a downloaded checkpoint).
#[test]
fn a_parameter_holding_a_step_output_is_an_edge_and_can_be_swapped() {
    let p = Project::new();
    p.write("a.csv", "id,sequence\nx,ACGTACGTAC\ny,GGGGCCCC\n")
        .write("b.csv", "id,sequence\nz,TTTTTTTTTTTTTTTTTTTTTTTT\n")
        .write(
            "wf.yaml",
            r#"
name: indirect
params:
  table: "${{ steps.load.table }}"
steps:
  load:
    uses: data.load
    with: { path: a.csv }
  stats:
    uses: data.stats
    with: { input: "${{ params.table }}", k: 2 }
"#,
        );
    let r = p.run_ok(&["wf.yaml", "stats"]);
    assert_eq!(r.with_status("ran"), names(&["load", "stats"]));
    assert_eq!(r.step("stats")["metrics"]["sequences"], 2, "{:?}", r.0);
    let r = p.run_ok(&["wf.yaml", "stats", "--set", "table=b.csv"]);
    assert_eq!(
        r.with_status("ran"),
        names(&["stats"]),
        "load is no longer upstream"
    );
    assert_eq!(r.step("stats")["metrics"]["sequences"], 1);
}
