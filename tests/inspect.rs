//! plan, why, dag, metrics, check, report, schema, completions, help.

mod common;
use common::*;

const WF: &str = r#"
name: demo
params: { lr: 0.1, text: ACGT }
steps:
  data:
    uses: file.write
    with: { content: "${{ params.text }}" }
  train:
    run: |
      echo "{\"loss\": $(echo "1 - ${{ params.lr }}" | bc -l), \"n\": $(wc -c < ${{ steps.data.file }})}" > ${{ out }}/metrics.json
    expect:
      loss: { max: 0.95 }
      n: { equals: 4 }
  report:
    run: cat ${{ steps.train.metrics }} > ${{ out }}/r.json
"#;

fn project() -> Project {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &WF.replace(
            "$(echo \"1 - ${{ params.lr }}\" | bc -l)",
            "$(python3 -c 'print(1 - ${{ params.lr }})')",
        ),
    );
    p
}

#[test]
fn plan_says_what_would_run_and_why() {
    let p = project();
    let t = text(&p.dnaflow(&["plan", "wf.yaml"]));
    assert!(t.contains("3 steps, 3 to run, 0 cached"), "{t}");
    assert!(t.contains("first run of this workflow"), "{t}");
    p.run_ok(&["wf.yaml"]);
    let t = text(&p.dnaflow(&["plan", "wf.yaml", "--set", "lr=0.2"]));
    assert!(t.contains("3 steps, 2 to run, 1 cached"), "{t}");
    assert!(t.contains("cached  data"), "{t}");
    // A parameter used in `run:` is named as a parameter, not as a changed command.
    assert!(t.contains("param `lr` changed: 0.1 → 0.2"), "{t}");
    assert!(!t.contains("command changed"), "{t}");
    assert!(t.contains("upstream `train` changed"), "{t}");
    let why = text(&p.dnaflow(&["why", "wf.yaml", "train", "--set", "lr=0.2"]));
    assert!(why.contains("param `lr` changed: 0.1 → 0.2"), "{why}");
    // An edit of the command text itself is still a changed command.
    let original = std::fs::read_to_string(p.path("wf.yaml")).unwrap();
    p.write("wf.yaml", &original.replace("print(1 - ", "print(2 - "));
    let t = text(&p.dnaflow(&["plan", "wf.yaml"]));
    assert!(t.contains("command changed"), "{t}");
    assert!(!t.contains("param `lr`"), "{t}");
    p.write("wf.yaml", &original);
    // A plan runs nothing.
    let r = p.run_ok(&["wf.yaml"]);
    assert!(r.with_status("ran").is_empty());
    let j: serde_json::Value =
        serde_json::from_slice(&p.dnaflow(&["plan", "wf.yaml", "--json"]).stdout).unwrap();
    assert_eq!(j["steps"][0]["action"], "cached");
}

#[test]
fn why_diffs_fields_old_to_new_through_upstreams() {
    let p = project();
    p.run_ok(&["wf.yaml"]);
    let t = text(&p.dnaflow(&["why", "wf.yaml", "report", "--set", "text=ACGTT"]));
    assert!(t.contains("`report` would run"), "{t}");
    assert!(t.contains("upstream `train` changed: key "), "{t}");
    assert!(t.contains("`data` would run"), "{t}");
    assert!(t.contains("param `content` changed: ACGT → ACGTT"), "{t}");
    let t = text(&p.dnaflow(&["why", "wf.yaml", "data"]));
    assert!(t.contains("`data` is cached"), "{t}");
}

#[test]
fn report_and_run_record_have_every_field() {
    let p = project();
    let r = p.run_ok(&["wf.yaml"]);
    for s in r.steps() {
        for field in [
            "name", "key", "status", "reason", "seconds", "out", "metrics",
        ] {
            assert!(s.get(field).is_some(), "report step lacks {field}: {s}");
        }
    }
    assert_eq!(r.step("train")["metrics"]["n"], 4);
    // The run record in the cache holds the same.
    let id = r.0["run_id"].as_str().unwrap();
    let rec = read(&p.cache().join("runs/demo").join(format!("{id}.json")));
    let rec: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(rec["steps"], r.0["steps"]);
}

#[test]
fn check_is_a_ci_gate_on_expectations() {
    let p = project();
    let ok = p.dnaflow(&["check", "wf.yaml"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("all 2 expectations hold"),
        "{}",
        text(&ok)
    );
    let bad = p.dnaflow(&["check", "wf.yaml", "--set", "lr=0.01"]);
    assert_eq!(bad.status.code(), Some(1));
    let t = text(&bad);
    assert!(
        t.contains("train/loss") && t.contains("<= 0.95") && t.contains("FAILED"),
        "{t}"
    );
    assert!(t.contains("1 of 2 expectations failed"), "{t}");
    // Plain `run` reports the failed bound but does not fail on it.
    assert!(
        p.dnaflow(&["run", "wf.yaml", "--set", "lr=0.01"])
            .status
            .success()
    );
}

#[test]
fn metrics_show_and_diff() {
    let p = project();
    let a = p.run_ok(&["wf.yaml"]).0["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = p.run_ok(&["wf.yaml", "--set", "lr=0.3"]).0["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = text(&p.dnaflow(&["metrics", "show"]));
    assert!(
        t.contains(&b) && t.contains("train/loss") && t.contains("0.7"),
        "{t}"
    );
    let t = text(&p.dnaflow(&["metrics", "show", "demo"]));
    assert!(t.contains(&b), "{t}");
    let t = text(&p.dnaflow(&["metrics", "diff", &a, &b]));
    assert!(t.contains("train/loss") && t.contains("-0.2"), "{t}");
    let j: serde_json::Value =
        serde_json::from_slice(&p.dnaflow(&["metrics", "diff", &a, &b, "--json"]).stdout).unwrap();
    assert!(
        j.as_array()
            .unwrap()
            .iter()
            .any(|r| r["metric"] == "train/n" && r["delta"] == 0.0)
    );
}

#[test]
fn dag_as_text_dot_and_mermaid() {
    let p = project();
    p.run_ok(&["wf.yaml", "data"]);
    let t = text(&p.dnaflow(&["dag", "wf.yaml"]));
    assert!(
        t.contains("[cached] data") && t.contains("train  ← data") || t.contains("train   ← data"),
        "{t}"
    );
    let dot = text(&p.dnaflow(&["dag", "wf.yaml", "--format", "dot"]));
    assert!(
        dot.starts_with("digraph \"demo\"")
            && dot.contains("\"data\" -> \"train\";")
            && dot.contains("(cached)"),
        "{dot}"
    );
    let mm = text(&p.dnaflow(&["dag", "wf.yaml", "--format", "mermaid"]));
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("s0 --> s1") && mm.contains(":::cached"),
        "{mm}"
    );
}

#[test]
fn help_has_examples_and_completions_work() {
    let p = Project::new();
    for cmd in [
        "run",
        "check",
        "plan",
        "why",
        "validate",
        "dag",
        "metrics",
        "cache",
        "kinds",
        "schema",
        "completions",
    ] {
        let t = text(&p.dnaflow(&[cmd, "--help"]));
        assert!(
            t.contains("Example"),
            "`dnaflow {cmd} --help` has no example:\n{t}"
        );
    }
    let out = p.dnaflow(&["completions", "bash"]);
    assert!(out.status.success() && text(&out).contains("_dnaflow"));
    let t = text(&p.dnaflow(&["kinds"]));
    assert!(t.contains("file.write"), "{t}");
}

#[test]
fn env_reports_the_machine() {
    let p = Project::new();
    let out = p.dnaflow(&["env", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["cpu_threads"].as_u64().unwrap() >= 1);
    assert!(j["memory_mib"].as_u64().unwrap() > 0);
    assert!(
        j["step_kinds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "data.fetch")
    );
    let mut c = p.cmd(&["env"]);
    c.env("HF_HOME", "/somewhere").env_remove("HF_HUB_CACHE");
    assert!(text(&c.output().unwrap()).contains("/somewhere/hub"));
}

#[test]
fn verbose_traces_what_the_engine_does() {
    let p = project();
    let out = p.dnaflow(&["run", "wf.yaml", "-v"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for line in [
        "loaded workflow workflow=demo steps=3",
        "plan ready selected=3 to_run=3",
        "running step=data",
        "committed step=train",
        "run recorded",
    ] {
        assert!(t.contains(line), "missing `{line}` in:\n{t}");
    }
    assert!(
        !t.contains('\u{1b}'),
        "no colour codes when not on a terminal:\n{t}"
    );
}

#[test]
fn within_budget_fails_a_run_that_takes_longer_than_its_budget() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: slow\nbudget: 1s\nsteps:\n  nap:\n    run: sleep 1.5; echo > ${{ out }}/x\n",
    );
    let out = p.dnaflow(&["check", "wf.yaml", "--within-budget"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("of a 1s budget: OVER BUDGET"), "{t}");
    // Cached, the same workflow is well within it.
    let out = p.dnaflow(&["check", "wf.yaml", "--within-budget"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("within budget"));
    // Without the flag the budget is only a note; a workflow without one cannot be held to it.
    p.write(
        "wf.yaml",
        "name: plain\nsteps:\n  a:\n    run: echo > ${{ out }}/x\n",
    );
    let t = text(&p.dnaflow(&["check", "wf.yaml", "--within-budget"]));
    assert!(t.contains("sets no `budget:`"), "{t}");
    p.write(
        "wf.yaml",
        "name: bad\nbudget: soon\nsteps:\n  a:\n    run: echo\n",
    );
    let t = text(&p.dnaflow(&["validate", "wf.yaml"]));
    assert!(
        t.contains("wf.yaml:2:9: `budget: soon` is not a duration"),
        "{t}"
    );
}
