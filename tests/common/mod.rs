//! Helpers for end-to-end tests: a temp project with a workflow, and the `dnaflow` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A file of the shipped real data (`data/…`), as an absolute path for a workflow.
pub fn data(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(rel)
        .display()
        .to_string()
}

/// Rows `range` (counted after the header) of a CSV text, with its header: a table cut from
/// the shipped real data.
pub fn csv_rows(csv: &str, range: std::ops::Range<usize>) -> String {
    let mut lines = csv.lines();
    let mut t = lines.next().unwrap_or_default().to_string() + "\n";
    for r in lines.skip(range.start).take(range.len()) {
        t.push_str(r);
        t.push('\n');
    }
    t
}

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> &Project {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// `dnaflow ARGS` in the project dir with the project's cache.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(dnaflow_bin());
        c.current_dir(self.dir.path())
            .env("DNAFLOW_CACHE", self.cache())
            .env("NO_COLOR", "1")
            .args(args);
        c
    }

    pub fn dnaflow(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("dnaflow runs")
    }

    /// Run the workflow, asserting success, and return the report.
    pub fn run_ok(&self, args: &[&str]) -> Report {
        let (out, report) = self.run(args);
        assert!(
            out.status.success(),
            "dnaflow {args:?} failed:\n{}",
            text(&out)
        );
        report
    }

    /// Run with `--report`, returning the output and the report.
    pub fn run(&self, args: &[&str]) -> (Output, Report) {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--report", report.to_str().unwrap()]);
        let out = self.dnaflow(&all);
        let json = std::fs::read(&report)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("report is JSON"))
            .unwrap_or(Value::Null);
        (out, Report(json))
    }
}

/// The `dnaflow` binary under test: `DNAFLOW_BIN` when set and not empty (test binaries
/// carried to another machine, where cargo's compile-time path does not exist: docs/development.md),
/// else the one cargo built beside these tests.
pub fn dnaflow_bin() -> PathBuf {
    match std::env::var_os("DNAFLOW_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_dnaflow")),
    }
}

/// stdout + stderr of a finished command.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub struct Report(pub Value);

impl Report {
    pub fn steps(&self) -> &Vec<Value> {
        self.0["steps"].as_array().expect("report has steps")
    }

    /// Names of steps with this status, sorted.
    pub fn with_status(&self, status: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .steps()
            .iter()
            .filter(|s| s["status"] == status)
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    pub fn step(&self, name: &str) -> &Value {
        self.steps()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name}"))
    }

    pub fn out(&self, name: &str) -> PathBuf {
        PathBuf::from(self.step(name)["out"].as_str().expect("step has out"))
    }
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Wait (at most two minutes) until a training step of `p` has a checkpoint at step
/// `min_step` or later; its `state.json`.
pub fn wait_for_checkpoint(p: &Project, min_step: u64) -> PathBuf {
    let clock = std::time::Instant::now();
    loop {
        let found = std::fs::read_dir(p.cache().join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("checkpoint/state.json"))
            .find(|s| {
                std::fs::read_to_string(s).is_ok_and(|t| {
                    serde_json::from_str::<Value>(&t)
                        .is_ok_and(|v| v["step"].as_u64() >= Some(min_step))
                })
            });
        if let Some(s) = found {
            return s;
        }
        assert!(
            clock.elapsed() < std::time::Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The pid of `p`'s `dnaflow step-exec` process (its job in `p`'s cache) running `kind`, with
/// `marker` in its environment when given (`RANK=1`, `SLURM_PROCID=1`: one rank of several),
/// once it runs (waiting at most a minute).
pub fn step_process(p: &Project, kind: &str, marker: Option<&str>) -> i32 {
    let clock = std::time::Instant::now();
    let cache = p.cache().display().to_string();
    let has = |hay: &[u8], w: &str| hay.split(|&b| b == 0).any(|x| x == w.as_bytes());
    while clock.elapsed() < std::time::Duration::from_secs(60) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !cmd.contains("step-exec") || !cmd.contains(&cache) {
                continue;
            }
            let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if marker.is_some_and(|m| !has(&env, m)) {
                continue;
            }
            let job = cmd.split_whitespace().last().unwrap_or_default();
            if std::fs::read_to_string(job)
                .is_ok_and(|j| j.contains(&format!("\"kind\": \"{kind}\"")))
            {
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no step-exec process for {kind} with {marker:?}");
}

/// Kill a process with SIGKILL, as the OOM killer or a lost node would.
pub fn kill9(pid: i32) {
    // SAFETY: a plain syscall on a process this test started (through dnaflow).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}
