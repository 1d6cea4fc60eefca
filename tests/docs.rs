//! Docs that cannot go stale: every ```yaml block of README.md and docs/*.md validates with the
//! `dnaflow` binary, and every shell block (```sh, ```bash, ```console) runs here, or says on the
//! line above its fence why it does not.
//!
//! Markers (an HTML comment on the line right above a fence; invisible on a rendered page):
//!
//! - `<!-- file: NAME -->` (yaml): the block is written to NAME in the page's scratch directory
//!   and validated there, so the page's later shell blocks can run it.
//! - `<!-- fragment: REASON -->` (yaml): a part of a workflow, or another YAML file (a cluster
//!   configuration); it is only parsed as YAML.
//! - `<!-- not run: REASON -->` (shell): not run, for the reason given (a GPU, a cluster, minutes
//!   of training, a command that is not dnaflow's).
//! - `<!-- plan only: REASON -->` (shell): each `dnaflow run` / `check` line runs as `dnaflow
//!   plan` with the same workflow, profile, `--set`s and targets (so the file, the profile and the
//!   parameter names are checked); the block's other lines are not run.
//!
//! An unmarked shell block runs line by line, each line a `dnaflow` command (`cargo run [FLAGS]
//! --` is read as `dnaflow`) or a look at what it wrote (`cat`, `ls`, `head`), in a scratch directory per page that links the repository's `data/`,
//! `workflows/`, `schemas/` and `scripts/`, with its own cache. A line that is not a dnaflow
//! command fails the test: mark the block. A console block's commands are its `$ ` lines.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// One fenced block of a page.
struct Block {
    page: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    /// The HTML comment right above the fence, without `<!--` and `-->`.
    marker: Option<String>,
    body: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, in a stable order.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The fenced blocks of a Markdown text (fences may be indented, as inside a list item).
fn blocks(page: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            let indent = lines[i].len() - t.len();
            let lang = lang.trim().to_string();
            let marker = (i > 0)
                .then(|| lines[i - 1].trim())
                .and_then(|l| l.strip_prefix("<!--"))
                .and_then(|l| l.strip_suffix("-->"))
                .map(|l| l.trim().to_string());
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                let l = lines[i];
                body.push_str(
                    l.get(indent.min(l.len() - l.trim_start().len())..)
                        .unwrap_or(l),
                );
                body.push('\n');
                i += 1;
            }
            out.push(Block {
                page: page.to_string(),
                line: start + 1,
                lang,
                marker,
                body,
            });
        }
        i += 1;
    }
    out
}

/// The command lines of a shell block: `\` continuations joined, comments and blank lines
/// dropped, a console block's `$ ` prompts stripped (its other lines are output).
fn commands(block: &Block) -> Vec<String> {
    let console = block.lang == "console";
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in block.body.lines() {
        let line = if pending.is_empty() && console {
            match raw.strip_prefix("$ ") {
                Some(c) => c,
                None => continue,
            }
        } else {
            raw
        };
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let cmd = strip_comment(&pending).trim().to_string();
        pending.clear();
        if !cmd.is_empty() {
            out.push(dnaflow_form(&cmd));
        }
    }
    out
}

/// A line without its trailing `# comment` (a `#` outside quotes, after a space).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1] == b' ') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `cargo run [FLAGS] -- ARGS` read as `dnaflow ARGS`.
fn dnaflow_form(cmd: &str) -> String {
    if let Some(rest) = cmd.strip_prefix("cargo run")
        && let Some((_, args)) = rest.split_once(" -- ")
    {
        return format!("dnaflow {}", args.trim());
    }
    cmd.to_string()
}

/// A scratch directory for one page: links to the repository's inputs, a `dnaflow` on PATH.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["data", "workflows", "schemas", "scripts"] {
            std::os::unix::fs::symlink(repo().join(name), dir.path().join(name)).expect("link");
        }
        std::fs::create_dir(dir.path().join("bin")).expect("bin/");
        std::os::unix::fs::symlink(common::dnaflow_bin(), dir.path().join("bin/dnaflow"))
            .expect("link dnaflow");
        Scratch { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `bash -o pipefail -c CMD` here, with dnaflow on PATH and this scratch's cache, stopped
    /// after a minute (exit 124).
    fn sh(&self, cmd: &str) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // A documented command that trains for minutes belongs in a `plan only:` block.
        Command::new("timeout")
            .args(["60", "bash", "-o", "pipefail", "-c", cmd])
            .current_dir(self.path())
            .env("PATH", path)
            .env("DNAFLOW_CACHE", self.path().join("cache"))
            .env("NO_COLOR", "1")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .expect("bash runs")
    }
}

/// The options of `run`/`check` that `plan` does not take, with whether each takes a value.
const RUN_ONLY: &[(&str, bool)] = &[
    ("-j", true),
    ("--jobs", true),
    ("--cpus", true),
    ("--gpus", true),
    ("--mem", true),
    ("-k", false),
    ("--keep-going", false),
    ("--report", true),
    ("-q", false),
    ("--quiet", false),
    ("--within-budget", false),
    ("--in-process", false),
    ("--executor", true),
    ("--cluster", true),
];

/// `dnaflow run|check ARGS` as `dnaflow plan ARGS` without the options plan does not take.
fn as_plan(cmd: &str) -> Option<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    if words.len() < 2 || words[0] != "dnaflow" || !matches!(words[1], "run" | "check") {
        return None;
    }
    let mut out = vec!["dnaflow", "plan"];
    let mut i = 2;
    while i < words.len() {
        let w = words[i];
        let flag = w.split('=').next().unwrap_or(w);
        match RUN_ONLY.iter().find(|(name, _)| *name == flag) {
            Some((_, takes)) => i += if *takes && !w.contains('=') { 2 } else { 1 },
            None => {
                out.push(w);
                i += 1;
            }
        }
    }
    Some(out.join(" "))
}

fn marker_kind(marker: &Option<String>) -> Option<(&str, &str)> {
    let m = marker.as_deref()?;
    let (kind, rest) = m.split_once(':')?;
    Some((kind.trim(), rest.trim()))
}

#[test]
fn every_yaml_block_validates_and_every_shell_block_runs_or_says_why_not() {
    let mut problems = Vec::new();
    let (mut ran, mut planned, mut skipped, mut validated, mut parsed) = (0, 0, 0, 0, 0);
    for page in pages() {
        let rel = page
            .strip_prefix(repo())
            .expect("in repo")
            .display()
            .to_string();
        let text = std::fs::read_to_string(&page).expect("page");
        let scratch = Scratch::new();
        for (n, b) in blocks(&rel, &text).into_iter().enumerate() {
            let at = format!("{}:{}", b.page, b.line);
            let marker = marker_kind(&b.marker);
            match b.lang.as_str() {
                "yaml" | "yml" => match marker {
                    Some(("fragment", why)) => {
                        if why.is_empty() {
                            problems.push(format!("{at}: `fragment:` needs a reason"));
                        }
                        if let Err(e) = serde_saphyr::from_str::<serde_json::Value>(&b.body) {
                            problems.push(format!("{at}: not YAML: {e}"));
                        }
                        parsed += 1;
                    }
                    other => {
                        let name = match other {
                            Some(("file", name)) => name.to_string(),
                            _ => format!("block-{n}.yaml"),
                        };
                        std::fs::write(scratch.path().join(&name), &b.body).expect("write");
                        let out = scratch.sh(&format!("dnaflow validate {name}"));
                        if !out.status.success() {
                            problems.push(format!(
                                "{at}: the YAML block does not validate (mark a part of a \
                                 workflow `<!-- fragment: why -->`):\n{}",
                                common::text(&out)
                            ));
                        }
                        validated += 1;
                    }
                },
                "sh" | "bash" | "console" | "shell" => match marker {
                    Some(("not run", why)) => {
                        if why.is_empty() {
                            problems.push(format!("{at}: `not run:` needs a reason"));
                        }
                        skipped += 1;
                    }
                    Some(("plan only", why)) => {
                        if why.is_empty() {
                            problems.push(format!("{at}: `plan only:` needs a reason"));
                        }
                        let plans: Vec<String> =
                            commands(&b).iter().filter_map(|c| as_plan(c)).collect();
                        if plans.is_empty() {
                            problems.push(format!("{at}: `plan only:` but no run/check line"));
                        }
                        for cmd in plans {
                            let out = scratch.sh(&cmd);
                            if !out.status.success() {
                                problems
                                    .push(format!("{at}: `{cmd}` failed:\n{}", common::text(&out)));
                            }
                        }
                        planned += 1;
                    }
                    Some((other, _)) => {
                        problems.push(format!("{at}: unknown marker `{other}:` on a shell block"))
                    }
                    None => {
                        for cmd in commands(&b) {
                            let first = cmd.split_whitespace().next().unwrap_or("");
                            if !matches!(first, "dnaflow" | "cat" | "ls" | "head") {
                                problems.push(format!(
                                    "{at}: `{cmd}` is not a dnaflow command: run it here or \
                                     mark the block `<!-- not run: why -->`"
                                ));
                                continue;
                            }
                            let out = scratch.sh(&cmd);
                            if !out.status.success() {
                                problems
                                    .push(format!("{at}: `{cmd}` failed:\n{}", common::text(&out)));
                            }
                        }
                        ran += 1;
                    }
                },
                _ => {}
            }
        }
    }
    eprintln!(
        "docs: {ran} shell blocks run, {planned} planned, {skipped} marked not run; \
         {validated} YAML blocks validated, {parsed} fragments parsed"
    );
    assert!(
        problems.is_empty(),
        "{} problems in the docs:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn commands_are_read_as_a_user_types_them() {
    let b = Block {
        page: "x.md".into(),
        line: 1,
        lang: "console".into(),
        marker: None,
        body: "$ cargo run --release --features cuda -- run wf.yaml \\\n    --set a=1  # why\n\
               output line\n$ dnaflow plan wf.yaml\n"
            .into(),
    };
    let words: Vec<Vec<String>> = commands(&b)
        .iter()
        .map(|c| c.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(
        words,
        [
            vec!["dnaflow", "run", "wf.yaml", "--set", "a=1"],
            vec!["dnaflow", "plan", "wf.yaml"]
        ]
    );
    assert_eq!(
        as_plan("dnaflow check wf.yaml --report r.json -q --set x=1 --within-budget train")
            .as_deref(),
        Some("dnaflow plan wf.yaml --set x=1 train")
    );
    assert_eq!(
        strip_comment("echo '# not a comment' # one"),
        "echo '# not a comment' "
    );
}
