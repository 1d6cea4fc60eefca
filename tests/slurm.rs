//! `executor: slurm` against a real Slurm (`tests/slurm/start.sh` starts a single-node
//! cluster; CI runs it and sets `DNAFLOW_REQUIRE_SLURM=1`). Without a running cluster the tests
//! skip with the reason printed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Project, data, text};
use serde_json::Value;

/// Whether a Slurm cluster answers here; panics when CI requires one and there is none.
fn slurm_up() -> bool {
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !up {
        assert!(
            std::env::var_os("DNAFLOW_REQUIRE_SLURM").is_none(),
            "DNAFLOW_REQUIRE_SLURM is set but no Slurm cluster answers (tests/slurm/start.sh)"
        );
        println!("skipped: no Slurm cluster here (start one with tests/slurm/start.sh as root)");
    }
    up
}

/// Our jobs in the queue named `dnaflow:<step>`, as `(id, state)`.
fn jobs(step: &str) -> Vec<(String, String)> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i|%j|%T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 3 && f[1] == format!("dnaflow:{step}"))
                .then(|| (f[0].to_string(), f[2].to_string()))
        })
        .collect()
}

fn wait_for_jobs(step: &str, state: &str) -> Vec<String> {
    let clock = Instant::now();
    while clock.elapsed() < Duration::from_secs(60) {
        let j: Vec<String> = jobs(step)
            .into_iter()
            .filter(|(_, s)| s == state)
            .map(|(id, _)| id)
            .collect();
        if !j.is_empty() {
            return j;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no {state} Slurm job for step {step}");
}

fn keys_and_metrics(r: &Value) -> Vec<(String, String, Value)> {
    let mut v: Vec<(String, String, Value)> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["key"].as_str().unwrap().to_string(),
                s["metrics"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn chapter_1_as_slurm_jobs_matches_a_local_run_and_a_rerun_submits_nothing() {
    if !slurm_up() {
        return;
    }
    let chapter = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/ch1-data.yaml"),
    )
    .unwrap()
    .replace("workdir: ..", &format!("workdir: {}", data("..")));
    let local = Project::new();
    local.write("ch1.yaml", &chapter);
    let on_slurm = Project::new();
    on_slurm.write("ch1.yaml", &chapter);
    let a = local.run_ok(&["ch1.yaml"]);
    let b = on_slurm.run_ok(&["ch1.yaml", "--executor", "slurm"]);
    assert!(!b.with_status("ran").is_empty());
    assert_eq!(keys_and_metrics(&a.0), keys_and_metrics(&b.0));
    // Every step ran as a job: its log holds what the job printed, and no job is left.
    assert!(jobs("genome[genome=yeast_chrI]").is_empty());
    let again = on_slurm.run_ok(&["ch1.yaml", "--executor", "slurm"]);
    assert!(again.with_status("ran").is_empty(), "{:?}", again.0);
}

#[test]
fn a_job_cancelled_from_outside_is_retried() {
    if !slurm_up() {
        return;
    }
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: cancelled\nsteps:\n  slow_retried:\n    retries: 1\n    run: sleep 3; echo ok > ${{ out }}/ok.txt\n",
    );
    let report = p.path("report.json");
    let mut run = p
        .cmd(&[
            "run",
            "wf.yaml",
            "--executor",
            "slurm",
            "--report",
            report.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let first = wait_for_jobs("slow_retried", "RUNNING");
    Command::new("scancel").args(&first).status().unwrap();
    assert!(run.wait().unwrap().success());
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let step = &r["steps"][0];
    assert_eq!(step["status"], "ran", "{step}");
    assert_eq!(step["attempts"], 2, "{step}");
}

#[test]
fn ctrl_c_cancels_every_submitted_job() {
    if !slurm_up() {
        return;
    }
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: interrupted\nsteps:\n  long_a:\n    run: sleep 60\n  long_b:\n    run: sleep 61\n",
    );
    let run = p
        .cmd(&["run", "wf.yaml", "--executor", "slurm", "-j", "2"])
        .spawn()
        .unwrap();
    let clock = Instant::now();
    while jobs("long_a").is_empty() || jobs("long_b").is_empty() {
        assert!(
            clock.elapsed() < Duration::from_secs(60),
            "jobs never submitted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: a plain syscall on the dnaflow process this test started.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let out = run.wait_with_output().unwrap();
    assert!(!out.status.success());
    let clock = Instant::now();
    while !(jobs("long_a").is_empty() && jobs("long_b").is_empty()) {
        assert!(
            clock.elapsed() < Duration::from_secs(10),
            "jobs left after Ctrl-C: {:?} {:?}",
            jobs("long_a"),
            jobs("long_b")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_impossible_request_fails_with_slurms_reason() {
    if !slurm_up() {
        return;
    }
    let p = Project::new();
    p.write(
        "wf.yaml",
        "name: impossible\nsteps:\n  huge:\n    resources: { cpus: 4096 }\n    run: echo never\n",
    );
    let (out, _) = p.run(&["wf.yaml", "--executor", "slurm"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("pending with reason `PartitionConfig`"), "{t}");
    assert!(jobs("huge").is_empty(), "the pending job was cancelled");
}

/// One cache, two runs at once: one local, one on Slurm. Each step is computed once; the
/// other run waits on its lock and reuses the result.
#[test]
fn a_local_run_and_a_slurm_run_compute_each_step_once() {
    if !slurm_up() {
        return;
    }
    let p = Project::new();
    let count = p.path("count.txt");
    p.write(
        "wf.yaml",
        &format!(
            "name: shared\nsteps:\n  one:\n    run: echo one >> {c}; sleep 2; echo 1 > ${{{{ out }}}}/v\n  two:\n    run: echo two >> {c}; cat ${{{{ steps.one.out }}}}/v > ${{{{ out }}}}/v\n",
            c = count.display()
        ),
    );
    let local = p.cmd(&["run", "wf.yaml"]).spawn().unwrap();
    let remote = p
        .cmd(&["run", "wf.yaml", "--executor", "slurm"])
        .spawn()
        .unwrap();
    assert!(local.wait_with_output().unwrap().status.success());
    assert!(remote.wait_with_output().unwrap().status.success());
    let mut lines: Vec<String> = std::fs::read_to_string(&count)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["one", "two"], "each step computed once");
}

/// A LLaMA with `ranks: 2` on Slurm: one job of two `srun` tasks, one per rank, meeting over
/// TCP on the job's node. Rank 1 killed with kill -9 fails the attempt (rank 0 stops instead
/// of waiting), the retry resumes from the checkpoint, and the loss curve is the one a single
/// rank follows locally.
#[test]
fn two_ranks_as_tasks_of_one_slurm_job_train_what_one_rank_trains_through_a_killed_rank() {
    if !slurm_up() {
        return;
    }
    let tokenizers =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let project = |extra: &str| {
        let p = Project::new();
        for f in ["corpus.txt", "heldout.txt", "char.json"] {
            std::fs::copy(tokenizers.join(f), p.path(f)).unwrap();
        }
        p.write(
            "wf.yaml",
            &format!(
                "name: ranks\nsteps:\n  llama:\n    retries: 1\n    uses: model.pretrain\n    \
                 with:\n      arch: llama\n      tokenizer: char.json\n      train: corpus.txt\n      \
                 valid: heldout.txt\n      config: {{ hidden_size: 16, intermediate_size: 32, \
                 num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1 }}\n      \
                 seq_len: 32\n      batch_size: 4\n      grad_accum: 2\n      steps: 1500\n      \
                 lr: 0.01\n      save_every: 20\n      rank_timeout: 30\n{extra}"
            ),
        );
        p
    };
    let local = project("");
    let want = local.run_ok(&["wf.yaml"]);

    let p = project("      ranks: 2\n      zero: 2\n");
    let child = p
        .cmd(&[
            "run",
            "wf.yaml",
            "--executor",
            "slurm",
            "--report",
            "report.json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_checkpoint(&p, 40);
    common::kill9(common::step_process(
        &p,
        "model.pretrain",
        Some("SLURM_PROCID=1"),
    ));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(p.path("report.json")).unwrap()).unwrap();
    let step = &r["steps"][0];
    assert_eq!(step["attempts"], 2, "{step}");
    // The failed attempt names the lost rank and how srun saw it die.
    let t = text(&out);
    assert!(t.contains("rank 1 stopped"), "{t}");
    assert!(t.contains("srun: ") && t.contains("task 1: Killed"), "{t}");
    assert_eq!(step["metrics"]["ranks"], 2, "{step}");
    let log = std::fs::read_to_string(step["stdout"].as_str().unwrap()).unwrap();
    assert!(log.contains("resumed from the checkpoint at step"), "{log}");
    let losses = |csv: String| -> Vec<f64> {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let a = losses(std::fs::read_to_string(want.out("llama").join("history.csv")).unwrap());
    let b = losses(
        std::fs::read_to_string(
            std::path::Path::new(step["out"].as_str().unwrap()).join("history.csv"),
        )
        .unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
    assert!(jobs("llama").is_empty());
}
