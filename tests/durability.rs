//! The cache stays consistent through kill -9, Ctrl-C and concurrent runs.

mod common;
use common::*;

use std::path::Path;
use std::time::{Duration, Instant};

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step that blocks until `release` exists; `started` tells the test it is running.
fn blocking_workflow(p: &Project) {
    let started = p.path("started");
    let release = p.path("release");
    p.write(
        "wf.yaml",
        &format!(
            r#"
steps:
  before:
    run: echo one > ${{{{ out }}}}/one.txt
  slow:
    run: |
      echo partial > ${{{{ out }}}}/half.txt
      touch {started}
      while [ ! -f {release} ]; do sleep 0.05; done
      cat ${{{{ steps.before.out }}}}/one.txt > ${{{{ out }}}}/done.txt
"#,
            started = started.display(),
            release = release.display()
        ),
    );
}

fn verify_clean(p: &Project) {
    let out = p.dnaflow(&["cache", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 damaged"), "{}", text(&out));
}

#[test]
fn kill_9_mid_step_then_rerun_completes() {
    let p = Project::new();
    blocking_workflow(&p);
    let mut child = p.cmd(&["run", "wf.yaml", "-q"]).spawn().unwrap();
    wait_for(&p.path("started"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The half-written step left no object; what finished before is intact.
    verify_clean(&p);
    let t = text(&p.dnaflow(&["cache", "verify"]));
    assert!(t.contains("verified 1 objects"), "{t}");
    // The killed step's shell died with dnaflow and left only a staging dir.
    assert!(t.contains("staging dirs from interrupted runs"), "{t}");

    std::fs::write(p.path("release"), "").unwrap();
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("before")["status"], "cached");
    assert_eq!(r.step("slow")["status"], "ran");
    assert_eq!(read(&r.out("slow").join("done.txt")), "one\n");
    verify_clean(&p);
    // gc clears the leftovers of the killed run.
    let gc = p.dnaflow(&["cache", "gc"]);
    assert!(text(&gc).contains("1 staging dirs"), "{}", text(&gc));
    assert!(!text(&p.dnaflow(&["cache", "verify"])).contains("staging"));
}

#[test]
fn ctrl_c_stops_cleanly_and_rerun_completes() {
    let p = Project::new();
    blocking_workflow(&p);
    let report = p.path("int.json");
    let mut child = p
        .cmd(&["run", "wf.yaml", "-q", "--report", report.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_for(&p.path("started"));
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let r: serde_json::Value = serde_json::from_str(&read(&report)).unwrap();
    assert_eq!(r["status"], "interrupted");
    verify_clean(&p);
    std::fs::write(p.path("release"), "").unwrap();
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.with_status("ran"), names(&["slow"]));
}

#[test]
fn two_concurrent_runs_share_one_cache_safely() {
    let p = Project::new();
    let log = p.path("executions.log");
    let mut wf = String::from("steps:\n");
    for i in 0..6 {
        wf.push_str(&format!(
            "  s{i}:\n    run: echo s{i} >> {log}; sleep 0.2; echo {i} > ${{{{ out }}}}/v.txt\n",
            log = log.display()
        ));
    }
    wf.push_str("  total:\n    run: cat ${{ steps.s0.out }}/v.txt ${{ steps.s5.out }}/v.txt > ${{ out }}/t.txt\n");
    p.write("wf.yaml", &wf);
    let a = p
        .cmd(&["run", "wf.yaml", "-q", "--jobs", "2"])
        .spawn()
        .unwrap();
    let b = p
        .cmd(&["run", "wf.yaml", "-q", "--jobs", "2"])
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    // Every step executed exactly once between the two runs.
    let mut lines: Vec<String> = read(&log).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(lines, names(&["s0", "s1", "s2", "s3", "s4", "s5"]));
    verify_clean(&p);
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.with_status("cached").len(), 7);
}

#[test]
fn verify_detects_tampering_and_fix_recovers() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  a:\n    run: echo hi > ${{ out }}/x.txt\n",
    );
    let r = p.run_ok(&["wf.yaml"]);
    std::fs::write(r.out("a").join("x.txt"), "tampered").unwrap();
    let out = p.dnaflow(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("file x.txt changed since it was written"),
        "{}",
        text(&out)
    );
    assert!(p.dnaflow(&["cache", "verify", "--fix"]).status.success());
    let r = p.run_ok(&["wf.yaml"]);
    assert_eq!(r.step("a")["status"], "ran");
    verify_clean(&p);
}

#[test]
fn gc_keeps_latest_and_pinned_objects() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "params: {v: 1}\nsteps:\n  a:\n    run: echo ${{ params.v }} > ${{ out }}/x.txt\n",
    );
    let r1 = p.run_ok(&["wf.yaml"]);
    let old_key = r1.step("a")["key"].as_str().unwrap().to_string();
    p.run_ok(&["wf.yaml", "--set", "v=2"]);
    p.run_ok(&["wf.yaml", "--set", "v=3"]);
    assert!(
        p.dnaflow(&["cache", "pin", &old_key[..10]])
            .status
            .success()
    );
    // Keep one run record per workflow: v=2 is unreferenced now, v=1 pinned, v=3 latest.
    let gc = p.dnaflow(&["cache", "gc", "--keep-runs", "1"]);
    assert!(gc.status.success(), "{}", text(&gc));
    assert!(
        text(&gc).contains("removed 1 objects, 2 run records"),
        "{}",
        text(&gc)
    );
    let ls = text(&p.dnaflow(&["cache", "ls"]));
    assert!(ls.contains("2 objects") && ls.contains("[pinned]"), "{ls}");
    // Size limit: everything unpinned and not in the latest run may go.
    assert!(p.dnaflow(&["cache", "unpin", &old_key]).status.success());
    let gc = p.dnaflow(&["cache", "gc", "--max-size", "0"]);
    assert!(text(&gc).contains("removed 1 objects"), "{}", text(&gc));
    assert!(
        p.run_ok(&["wf.yaml", "--set", "v=3"])
            .with_status("ran")
            .is_empty()
    );
}
