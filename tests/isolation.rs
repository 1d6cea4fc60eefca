//! Every built-in step runs in its own process (`dnaflow step-exec`): a step killed from
//! outside (`kill -9`, as the out-of-memory killer or a preempting scheduler would) fails alone
//! and the run goes on with `--keep-going`; a killed step is retried, a step that failed on
//! its input is not.

mod common;

use std::time::Duration;

use common::{Project, text};

const SEQS: &str = "ACGTACGTTAGCAGGCATTACAGTATTAGGCATCAGACAGTTAGCATGA\n";

fn project(steps: usize, retries: usize) -> Project {
    let p = Project::new();
    p.write("train.txt", &SEQS.repeat(40));
    p.write(
        "wf.yaml",
        &format!(
            r#"
name: isolation
steps:
  tok:
    uses: tokenizer.train
    with: {{ input: train.txt, model: char }}
  train:
    uses: model.pretrain
    retries: {retries}
    with:
      arch: gpt2
      tokenizer: "${{{{ steps.tok.tokenizer }}}}"
      train: train.txt
      config: {{ n_embd: 16, n_layer: 1, n_head: 2 }}
      seq_len: 32
      batch_size: 4
      steps: {steps}
      save_every: 20
  after_train:
    run: ls ${{{{ steps.train.out }}}} > ${{{{ out }}}}/ls.txt
  other:
    run: sleep 1; echo ok > ${{{{ out }}}}/ok.txt
"#
        ),
    );
    p
}

fn record(p: &Project) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p.path("report.json")).unwrap()).unwrap()
}

fn step<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

#[test]
fn a_killed_step_fails_alone_and_the_run_goes_on() {
    let p = project(100_000, 0);
    let report = p.path("report.json");
    let mut run = p
        .cmd(&["run", "wf.yaml", "-k", "--report", report.to_str().unwrap()])
        .spawn()
        .unwrap();
    let pid = common::step_process(&p, "model.pretrain", None);
    std::thread::sleep(Duration::from_millis(300));
    common::kill9(pid);
    let status = run.wait().unwrap();
    assert!(!status.success(), "a failed step fails the run");
    let r = record(&p);
    let train = step(&r, "train");
    assert_eq!(train["status"], "failed", "{train}");
    let error = train["error"].as_str().unwrap();
    assert!(
        error.contains("killed by signal 9 (SIGKILL: out of memory, or killed from outside)"),
        "{error}"
    );
    assert_eq!(step(&r, "other")["status"], "ran", "{r}");
    assert_eq!(step(&r, "tok")["status"], "ran");
    assert_eq!(step(&r, "after_train")["status"], "skipped");
    // Nothing half-written was committed: the step has no object.
    assert!(train["out"].is_null(), "{train}");
}

#[test]
fn a_killed_step_is_retried_and_a_bad_input_is_not() {
    let p = project(400, 1);
    let report = p.path("report.json");
    let mut run = p
        .cmd(&["run", "wf.yaml", "--report", report.to_str().unwrap()])
        .spawn()
        .unwrap();
    let pid = common::step_process(&p, "model.pretrain", None);
    std::thread::sleep(Duration::from_millis(200));
    common::kill9(pid);
    assert!(run.wait().unwrap().success(), "the retry finishes the run");
    let r = record(&p);
    let train = step(&r, "train");
    assert_eq!(train["status"], "ran", "{train}");
    assert_eq!(train["attempts"], 2, "{train}");

    // A step that fails on its input fails the same way on every try: it runs once.
    p.write("bad.fa", ">a\nACGTXACGT\n");
    p.write(
        "bad.yaml",
        "name: bad\nsteps:\n  load:\n    uses: data.load\n    retries: 3\n    with: { path: bad.fa, format: fasta }\n",
    );
    let (out, rep) = p.run(&["bad.yaml"]);
    assert!(!out.status.success());
    let load = rep.step("load");
    assert_eq!(load["attempts"], 1, "{load}");
    assert!(
        text(&out).contains("invalid character 'X'"),
        "{}",
        text(&out)
    );
}

/// The huge-page setting this test runs with (`THP_enabled:` of /proc/self/status), where
/// the kernel reports it.
fn huge_pages_of(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.trim().to_string())
}

/// dnaflow switches transparent huge pages off for its own processes (2 MiB first-touch
/// zeroing slowed model loading) except while training (fewer TLB misses). The switch is
/// inherited across exec, so a shell step must get what the user had, not dnaflow's setting.
#[test]
fn huge_pages_are_on_while_training_and_as_the_user_had_them_in_shell_steps() {
    let Some(mine) = huge_pages_of("self") else {
        eprintln!("skipped: this kernel's /proc/self/status has no THP_enabled line");
        return;
    };
    let p = project(100_000, 0);
    p.write(
        "thp.yaml",
        "name: thp\nsteps:\n  look:\n    run: grep THP_enabled /proc/self/status > ${{ out }}/thp.txt\n",
    );
    let report = p.run_ok(&["thp.yaml"]);
    let seen = common::read(&report.out("look").join("thp.txt"));
    assert_eq!(
        seen.trim(),
        mine,
        "the shell step's setting is the caller's"
    );

    if mine != "THP_enabled:\t1" {
        return; // the caller has them off: training cannot be told apart
    }
    let mut run = p.cmd(&["run", "wf.yaml", "-q"]).spawn().unwrap();
    let pid = common::step_process(&p, "model.pretrain", None).to_string();
    // A step process starts with the caller's setting and switches it off first thing: read
    // it once training has written a checkpoint.
    common::wait_for_checkpoint(&p, 20);
    let training = huge_pages_of(&pid);
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(
        training.as_deref(),
        Some(mine.as_str()),
        "training runs with huge pages"
    );
}
