//! The CLI as a newcomer meets it: `kinds KIND` as a table, `--set` errors that name the
//! parameter and the type, `plan` that writes nothing, `out` that finds a step's files, help
//! with an example, the docs and the exit codes, and progress lines in a log.

mod common;
use common::*;

const WF: &str = "\
name: teach
params: { lr: 0.001, n: 2, tag: x }
steps:
  note:
    uses: file.write
    with: { content: \"lr=${{ params.lr }} n=${{ params.n }} ${{ params.tag }}\" }
  shell:
    run: |
      echo '{\"n\": ${{ params.n }}}' > ${{ out }}/metrics.json && echo hi > ${{ out }}/hi.txt
    outputs: { greeting: hi.txt }
";

#[test]
fn kinds_prints_a_table_with_every_parameter_described_and_json_on_request() {
    let p = Project::new();
    let out = p.dnaflow(&["kinds", "model.finetune"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("parameter") && t.contains("default") && t.contains("meaning"));
    for name in ["lr", "epochs", "batch_size", "device", "seed"] {
        let line = t
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{t}"));
        assert!(
            line.split_whitespace().count() > 3,
            "{name} has no meaning: {line}"
        );
    }
    let json = p.dnaflow(&["kinds", "model.finetune", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON Schema");
    assert!(v["definitions"]["FinetuneParams"]["properties"]["lr"].is_object());
}

#[test]
fn a_set_of_the_wrong_type_names_the_parameter_the_flag_and_the_type() {
    let p = Project::new();
    p.write("wf.yaml", WF);
    let out = p.dnaflow(&["validate", "wf.yaml", "--set", "lr=abc"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("--set lr=abc") && t.contains("`lr` takes a number"),
        "{t}"
    );
    // Text parameters take anything; numbers take numbers.
    assert!(
        p.dnaflow(&["validate", "wf.yaml", "--set", "tag=3", "--set", "lr=3e-4"])
            .status
            .success()
    );
}

#[test]
fn plan_writes_nothing_and_out_finds_a_steps_files_once_it_ran() {
    let p = Project::new();
    p.write("wf.yaml", WF);
    let out = p.dnaflow(&["plan", "wf.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!p.cache().exists(), "plan created {}", p.cache().display());

    let before = p.dnaflow(&["out", "wf.yaml", "shell.greeting"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(
        text(&before).contains("dnaflow run wf.yaml shell"),
        "{}",
        text(&before)
    );

    p.run_ok(&["wf.yaml"]);
    let path = |target: &str| {
        let out = p.dnaflow(&["out", "wf.yaml", target]);
        assert!(out.status.success(), "{target}: {}", text(&out));
        std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    assert_eq!(read(&path("shell.greeting")), "hi\n");
    assert!(path("shell.metrics").ends_with("metrics.json"));
    assert!(path("note").join("file.txt").is_file());
    assert!(read(&path("note.file")).starts_with("lr=0.001"));
    // Another parameter value is another object: not run yet.
    let other = p.dnaflow(&["out", "wf.yaml", "note", "--set", "n=3"]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other));
    let bad = p.dnaflow(&["out", "wf.yaml", "note.nope"]);
    assert!(text(&bad).contains("its outputs: "), "{}", text(&bad));
}

#[test]
fn help_shows_an_example_the_docs_and_the_exit_codes() {
    let p = Project::new();
    let out = p.dnaflow(&["--help"]);
    let t = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Examples:",
        "dnaflow run workflows/",
        "README.md",
        "Exit codes:",
        "130",
    ] {
        assert!(t.contains(want), "no `{want}` in --help:\n{t}");
    }
    // Every option and argument of every command says what it is, once.
    let cmds = [
        "run",
        "check",
        "plan",
        "why",
        "validate",
        "dag",
        "report",
        "serve",
        "kinds",
        "out",
        "schema",
        "model",
        "env",
        "completions",
    ];
    for cmd in cmds {
        let out = p.dnaflow(&[cmd, "--help"]);
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        for line in t.lines() {
            let l = line.trim_start();
            let is_item = line.starts_with("  ")
                && (l.starts_with('-') || l.starts_with('<') || l.starts_with('['));
            if is_item && !line.starts_with("                ") {
                assert!(
                    l.split("  ").filter(|s| !s.trim().is_empty()).count() >= 2,
                    "`dnaflow {cmd} --help` has an option without a description: {line}"
                );
            }
        }
    }
}

#[test]
fn a_log_shows_a_running_steps_status_at_a_steady_interval() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  slow:\n    run: sleep 2 && echo '{}' > ${{ out }}/metrics.json\n",
    );
    let out = p
        .cmd(&["run", "wf.yaml"])
        .env("DNAFLOW_PROGRESS_SECONDS", "0.5")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.lines()
            .filter(|l| l.trim_start().starts_with("running  slow"))
            .count()
            >= 2,
        "no steady status lines in a log:\n{t}"
    );
}

#[test]
fn publish_copies_named_outputs_out_of_the_cache_after_success() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &WF.replace(
            "    outputs: { greeting: hi.txt }\n",
            "    outputs: { greeting: hi.txt }\n    publish: { greeting: \"results/n${{ params.n }}/hi.txt\", out: results/all }\n",
        ),
    );
    let (out, _) = p.run(&["wf.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("published shell.greeting"),
        "{}",
        text(&out)
    );
    assert_eq!(read(&p.path("results/n2/hi.txt")), "hi\n");
    assert!(p.path("results/all/metrics.json").is_file());
    // Edited, the copy is the user's: the cache's object stays as it was, and a cached rerun
    // publishes again.
    std::fs::write(p.path("results/n2/hi.txt"), "edited").unwrap();
    std::fs::remove_dir_all(p.path("results/all")).unwrap();
    let (again, report) = p.run(&["wf.yaml"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(report.with_status("ran"), Vec::<String>::new());
    assert!(p.path("results/all/hi.txt").is_file());
    let cached = p.dnaflow(&["out", "wf.yaml", "shell.greeting"]);
    let cached = std::path::PathBuf::from(String::from_utf8_lossy(&cached.stdout).trim());
    assert_eq!(read(&cached), "hi\n");

    // Never into the cache; only outputs the step has.
    p.write(
        "bad.yaml",
        "steps:\n  a:\n    run: echo hi > ${{ out }}/x.txt\n    outputs: { x: x.txt }\n    publish: { y: results/y }\n",
    );
    let bad = p.dnaflow(&["validate", "bad.yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("not an output of this step"),
        "{}",
        text(&bad)
    );
    p.write(
        "into.yaml",
        "steps:\n  a:\n    run: echo hi > ${{ out }}/x.txt\n    outputs: { x: x.txt }\n    publish: { x: cache/x.txt }\n",
    );
    let (into, _) = p.run(&["into.yaml"]);
    assert!(!into.status.success());
    assert!(
        text(&into).contains("points into the cache"),
        "{}",
        text(&into)
    );
}

#[test]
fn a_workflow_publish_copies_the_listed_outputs_once_the_whole_run_has_succeeded() {
    let p = Project::new();
    let top =
        "publish:\n  to: \"results-${{ params.tag }}\"\n  outputs: [steps.shell.greeting, note]\n";
    p.write(
        "wf.yaml",
        &WF.replace("steps:\n", &format!("{top}steps:\n")),
    );
    let (out, _) = p.run(&["wf.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("published shell.greeting"),
        "{}",
        text(&out)
    );
    // `<to>/<step>/<name in the step's folder>`; a step named alone: its whole folder.
    assert_eq!(read(&p.path("results-x/shell/hi.txt")), "hi\n");
    assert!(!p.path("results-x/shell/metrics.json").exists());
    let note = p.dnaflow(&["out", "wf.yaml", "note"]);
    let note = std::path::PathBuf::from(String::from_utf8_lossy(&note.stdout).trim());
    for f in std::fs::read_dir(&note).unwrap() {
        let name = f.unwrap().file_name();
        assert!(p.path("results-x/note").join(&name).is_file(), "{name:?}");
    }
    // A run of some targets publishes what it ran and names the rest.
    std::fs::remove_dir_all(p.path("results-x")).unwrap();
    let (some, _) = p.run(&["wf.yaml", "note"]);
    assert!(some.status.success(), "{}", text(&some));
    assert!(p.path("results-x/note").is_dir());
    assert!(!p.path("results-x/shell").exists());
    assert!(
        text(&some).contains("not published (not part of this run): shell.greeting"),
        "{}",
        text(&some)
    );

    // A failed run publishes nothing, and says why the run failed.
    let failing = WF
        .replace("steps:\n", &format!("{top}steps:\n"))
        .replace("run: |\n", "run: |\n      false\n");
    p.write("fails.yaml", &failing);
    std::fs::remove_dir_all(p.path("results-x")).unwrap();
    let (failed, _) = p.run(&["fails.yaml", "--keep-going"]);
    assert!(!failed.status.success());
    assert!(!p.path("results-x").exists(), "{}", text(&failed));

    // Names checked before anything runs, at their line; never into the cache.
    p.write(
        "bad.yaml",
        "publish:\n  to: results\n  outputs:\n    - steps.shel.greeting\n    - steps.a.nope\nsteps:\n  a:\n    run: echo hi > ${{ out }}/x.txt\n",
    );
    let bad = p.dnaflow(&["validate", "bad.yaml"]);
    assert_eq!(bad.status.code(), Some(2));
    let t = text(&bad);
    assert!(
        t.contains("bad.yaml:4") && t.contains("no step `shel`"),
        "{t}"
    );
    assert!(
        t.contains("bad.yaml:5") && t.contains("`a` has no output `nope`"),
        "{t}"
    );
    assert!(t.contains("its outputs: out, metrics"), "{t}");
    p.write(
        "into.yaml",
        "publish: { to: cache/here, outputs: [a] }\nsteps:\n  a:\n    run: echo hi > ${{ out }}/x.txt\n",
    );
    let (into, _) = p.run(&["into.yaml"]);
    assert!(!into.status.success());
    assert!(
        text(&into).contains("points into the cache"),
        "{}",
        text(&into)
    );
}

#[test]
fn validate_refuses_a_device_this_binary_was_built_without() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "params: { device: cpu }\nsteps:\n  lm:\n    uses: eval.lm\n    with: { model: m, data: d.txt, device: \"${{ params.device }}\" }\n",
    );
    p.write("m/config.json", "{}").write("d.txt", "ACGT\n");
    assert!(p.dnaflow(&["validate", "wf.yaml"]).status.success());
    let env: serde_json::Value =
        serde_json::from_slice(&p.dnaflow(&["env", "--json"]).stdout).expect("env JSON");
    let has_cuda = env["backends"]
        .as_array()
        .is_some_and(|b| b.iter().any(|x| x == "cuda"));
    for args in [
        vec!["validate", "wf.yaml", "--set", "device=cuda"],
        vec!["validate", "wf.yaml", "--device", "cuda:1"],
    ] {
        let out = p.dnaflow(&args);
        if has_cuda {
            assert!(out.status.success(), "{args:?}: {}", text(&out));
        } else {
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
            assert!(
                text(&out).contains("built without CUDA") && text(&out).contains("--features cuda"),
                "{}",
                text(&out)
            );
        }
    }
}

#[test]
fn one_parameter_sets_the_number_of_foreach_copies() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "params: { folds: 3 }\nsteps:\n  fold:\n    foreach: { k: \"${{ params.folds }}\" }\n    run: echo ${{ matrix.k }}\n",
    );
    let out = p.dnaflow(&["plan", "wf.yaml", "--set", "folds=5"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("fold[k=4]") && !t.contains("fold[k=5]"), "{t}");
}
