//! Parallelism, failures, retries, resources.

mod common;
use common::*;

/// Two steps that can only finish if they run at the same time.
const RENDEZVOUS: &str = r#"
steps:
  a:
    run: |
      touch ${{ params.dir }}/a.started
      for i in $(seq 40); do [ -f ${{ params.dir }}/b.started ] && break; sleep 0.05; done
      test -f ${{ params.dir }}/b.started
  b:
    run: |
      touch ${{ params.dir }}/b.started
      for i in $(seq 40); do [ -f ${{ params.dir }}/a.started ] && break; sleep 0.05; done
      test -f ${{ params.dir }}/a.started
params: { dir: "" }
"#;

#[test]
fn independent_steps_run_in_parallel_up_to_jobs() {
    let p = Project::new();
    p.write("wf.yaml", RENDEZVOUS);
    let dir = p.path("sync");
    std::fs::create_dir(&dir).unwrap();
    let set = format!("dir={}", dir.display());
    p.run_ok(&["wf.yaml", "--jobs", "2", "--set", &set]);
    // With one job at a time the rendezvous cannot happen: `a` gives up and fails.
    let dir1 = p.path("sync1");
    std::fs::create_dir(&dir1).unwrap();
    let set1 = format!("dir={}", dir1.display());
    let (out, r) = p.run(&["wf.yaml", "--jobs", "1", "--set", &set1]);
    assert!(!out.status.success());
    assert_eq!(r.with_status("failed"), names(&["a"]));
}

#[test]
fn cpus_resource_limits_concurrency() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &RENDEZVOUS.replace("  b:\n", "  b:\n    resources: { cpus: 2 }\n"),
    );
    let dir = p.path("sync");
    std::fs::create_dir(&dir).unwrap();
    let set = format!("dir={}", dir.display());
    // Two cores: `b` takes both, so `a` cannot run beside it.
    let (out, _) = p.run(&["wf.yaml", "--jobs", "2", "--cpus", "2", "--set", &set]);
    assert!(!out.status.success(), "{}", text(&out));
}

const FAILING: &str = r#"
steps:
  bad:
    run: echo "something broke" >&2; exit 3
  after_bad:
    run: cat ${{ steps.bad.out }}
  good:
    run: echo ok > ${{ out }}/ok.txt
"#;

#[test]
fn failure_skips_dependents_and_shows_the_log_tail() {
    let p = Project::new();
    p.write("wf.yaml", FAILING);
    let (out, r) = p.run(&["wf.yaml", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("step `bad` failed: command exited with status 3"),
        "{t}"
    );
    assert!(t.contains("something broke"), "{t}");
    assert_eq!(r.with_status("failed"), names(&["bad"]));
    assert_eq!(r.step("after_bad")["status"], "skipped");
    assert_eq!(r.step("bad")["log_tail"], "something broke");
    let log = r.step("bad")["stderr"].as_str().unwrap().to_string();
    assert_eq!(read(std::path::Path::new(&log)), "something broke\n");
    // Without --keep-going the run stopped after the failure.
    assert_eq!(r.step("good")["status"], "skipped");
}

#[test]
fn keep_going_finishes_independent_steps() {
    let p = Project::new();
    p.write("wf.yaml", FAILING);
    let (out, r) = p.run(&["wf.yaml", "--jobs", "1", "--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r.with_status("ran"), names(&["good"]));
    assert_eq!(r.step("after_bad")["status"], "skipped");
    assert!(
        r.step("after_bad")["reason"]
            .as_str()
            .unwrap()
            .contains("`bad`")
    );
    // The failed step runs again next time, with the reason.
    let (_, r2) = p.run(&["wf.yaml", "--keep-going"]);
    assert_eq!(r2.step("bad")["reason"], "failed in the previous run");
    assert_eq!(r2.step("good")["status"], "cached");
}

#[test]
fn retries_are_honoured() {
    let p = Project::new();
    let counter = p.path("attempts");
    p.write(
        "wf.yaml",
        &format!(
            "steps:\n  flaky:\n    retries: 2\n    run: echo x >> {c}; test $(wc -l < {c}) -ge 3; echo done > ${{{{ out }}}}/ok\n",
            c = counter.display()
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("flaky")["attempts"], 3);
    assert_eq!(read(&counter).lines().count(), 3);
    // One retry too few fails.
    let p2 = Project::new();
    let c2 = p2.path("attempts");
    p2.write(
        "wf.yaml",
        &format!(
            "steps:\n  flaky:\n    retries: 1\n    run: echo x >> {c}; test $(wc -l < {c}) -ge 3\n",
            c = c2.display()
        ),
    );
    let (out, r) = p2.run(&["wf.yaml"]);
    assert!(!out.status.success());
    assert_eq!(r.step("flaky")["attempts"], 2);
}

#[test]
fn declared_outputs_must_be_written_and_bad_metrics_fail() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  a:\n    run: echo hi\n    outputs: { model: model.bin }\n  b:\n    run: echo '[1,2]' > ${{ out }}/metrics.json\n",
    );
    let (out, r) = p.run(&["wf.yaml", "--keep-going"]);
    assert!(!out.status.success());
    assert_eq!(
        r.step("a")["error"],
        "declared output `model` (model.bin) was not written"
    );
    assert!(
        r.step("b")["error"]
            .as_str()
            .unwrap()
            .contains("metrics must be a JSON object")
    );
    // Nothing of the failed steps reached the cache.
    let v = p.dnaflow(&["cache", "verify"]);
    assert!(text(&v).contains("verified 0 objects"), "{}", text(&v));
}

#[test]
fn gpu_request_beyond_the_machine_is_refused_before_running() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "params: { gpus: 1 }\nsteps:\n  first:\n    run: echo hi\n  train:\n    resources: { gpus: \"${{ params.gpus }}\" }\n    run: echo train\n",
    );
    let (out, r) = p.run(&["wf.yaml", "--gpus", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(
        t.contains("wf.yaml:6:24: step `train` needs 1 GPU(s), but 0 are available"),
        "{t}"
    );
    assert!(r.0.is_null(), "nothing ran");
    p.run_ok(&["wf.yaml", "--gpus", "0", "--set", "gpus=0"]);
    // With a GPU, the step sees only its own.
    p.write(
        "wf2.yaml",
        "steps:\n  train:\n    resources: { gpus: 1 }\n    run: echo $CUDA_VISIBLE_DEVICES > ${{ out }}/gpu\n",
    );
    let r = p.run_ok(&["wf2.yaml", "--gpus", "2"]);
    assert_eq!(read(&r.out("train").join("gpu")), "0\n");
}

#[test]
fn builtin_kind_runs_and_feeds_shell_steps() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  w:\n    uses: file.write\n    with: { content: ACGT, metrics: { gc: 0.5 } }\n    expect: { gc: { equals: 0.5 } }\n  r:\n    run: rev ${{ steps.w.file }} > ${{ out }}/r.txt\n",
    );
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(read(&r.out("w").join("file.txt")), "ACGT");
    assert_eq!(r.step("w")["metrics"]["gc"], 0.5);
    assert_eq!(r.step("w")["expect"][0]["ok"], true);
    assert_eq!(read(&r.out("r").join("r.txt")), "TGCA");
}
