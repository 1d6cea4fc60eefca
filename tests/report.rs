//! `dnaflow report` and `dnaflow serve` as a user meets them: a real run (a tokenizer, a tiny
//! GPT-2, a step that fails with markup in its log) written as one HTML page, checked in the
//! HTML and, where Chromium and Playwright are installed, in headless Chromium
//! (`tests/browser/check_report.py`: every step and status, metrics and expect results,
//! images decoded, no console error, no request leaving the file, a screenshot). CI installs
//! both and sets `DNAFLOW_REQUIRE_BROWSER=1`, so there the browser half cannot be skipped.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Project, data, read, text};
use serde_json::json;

const WORKFLOW: &str = r#"
name: tiny-report
params:
  steps: 12
steps:
  promoters:
    uses: data.load
    with: { path: "PROMOTERS", format: csv }
  tok:
    uses: tokenizer.train
    with: { input: "${{ steps.promoters.table }}", model: char }
  tok_eval:
    uses: tokenizer.eval
    with: { tokenizer: "${{ steps.tok.tokenizer }}", input: "${{ steps.promoters.table }}" }
  gpt2:
    uses: model.pretrain
    with:
      arch: gpt2
      tokenizer: "${{ steps.tok.tokenizer }}"
      train: "${{ steps.promoters.table }}"
      config: { n_embd: 16, n_layer: 1, n_head: 2 }
      seq_len: 32
      batch_size: 4
      steps: "${{ params.steps }}"
      log_every: 2
  test:
    uses: eval.lm
    with: { model: "${{ steps.gpt2.model }}", data: "${{ steps.promoters.table }}", seq_len: 32 }
    expect:
      bits_per_base: { max: 100 }
      perplexity: { min: 1000000 }
  broken:
    run: echo 'tried <script>alert("x")</script> & failed' >&2; exit 3
"#;

fn project() -> Project {
    let p = Project::new();
    p.write(
        "wf.yaml",
        &WORKFLOW.replace("PROMOTERS", &data("promoters/promoters.csv")),
    );
    p
}

/// The browser check, or `None` (with the reason printed) where it cannot run here.
fn browser_check(page: &str, expect: serde_json::Value, live: bool, shot: &Path) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_report.py");
    let dir = tempfile::tempdir().unwrap();
    let want = dir.path().join("expect.json");
    std::fs::write(&want, expect.to_string()).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(page)
        .arg("--expect")
        .arg(&want)
        .arg("--screenshot")
        .arg(shot);
    if live {
        cmd.arg("--live");
    }
    let out = cmd.output().expect("python3 runs");
    let t = text(&out);
    match out.status.code() {
        Some(0) => Some(t),
        Some(2) => {
            assert!(
                std::env::var_os("DNAFLOW_REQUIRE_BROWSER").is_none(),
                "DNAFLOW_REQUIRE_BROWSER is set but the browser check cannot run: {t}"
            );
            println!("skipped the browser half: {t}");
            None
        }
        _ => panic!("the report fails in Chromium:\n{t}"),
    }
}

/// Where screenshots go for people to look at: `target/report-screenshots/`.
fn screenshot(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn a_run_becomes_one_self_contained_page() {
    let p = project();
    let (first, _) = p.run(&["wf.yaml", "-k"]);
    assert!(!first.status.success(), "`broken` fails the run");
    let (second, record) = p.run(&["wf.yaml", "-k", "--set", "steps=14"]);
    assert!(!second.status.success());
    let page = p.path("report.html");
    let out = p.dnaflow(&["report", "wf.yaml", "-o", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("compared with"), "{}", text(&out));
    let html = read(&page);

    // Every step with its status, the failure's log tail escaped, never executed.
    for (step, status) in [
        ("promoters", "cached"),
        ("tok", "cached"),
        ("gpt2", "ran"),
        ("test", "ran"),
        ("broken", "failed"),
    ] {
        assert!(
            html.contains(&format!(
                "class=\"step\" data-step=\"{step}\" data-status=\"{status}\""
            )),
            "{step} {status}"
        );
    }
    assert!(html.contains("tried &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; failed"));
    assert!(!html.contains("<script>alert"));
    // Metrics with their bounds, and the diff against the previous run.
    assert!(html.contains("data-metric=\"gpt2/steps\""));
    assert!(html.contains("data-expect=\"pass\">✓ &lt;= 100"));
    assert!(html.contains("data-expect=\"fail\">✗ &gt;= 1000000"));
    assert!(
        html.contains("<td class=\"num\">+2.0000</td>"),
        "steps 12 → 14"
    );
    // Plots embedded; nothing fetched from anywhere.
    assert!(html.contains("src=\"data:image/svg+xml;base64,"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(html.contains("<td>steps</td><td>14</td>"), "parameters");
    assert!(html.contains("cpu_threads"), "machine");
    // The result leads the page: the language model's bits per base, as the record has it.
    let bpb = record.step("test")["metrics"]["bits_per_base"].clone();
    let results = html.find("id=\"results\"").expect("a results section");
    assert!(
        results < html.find("<h2>Steps</h2>").unwrap(),
        "results come first"
    );
    assert!(
        html.contains(&format!(
            "data-metric=\"test/bits_per_base\" data-value=\"{bpb}\""
        )),
        "{bpb}"
    );

    let expect = json!({
        "steps": {"promoters": "cached", "tok": "cached", "tok_eval": "cached", "gpt2": "ran",
                  "test": "ran", "broken": "failed"},
        "metrics": ["gpt2/train_loss", "test/bits_per_base", "tok_eval/bases_per_token"],
        "expect": {"pass": 1, "fail": 1},
        "min_images": 2,
        "text": ["tried <script>alert(\"x\")</script> & failed"],
        "results": {"test/bits_per_base": bpb},
    });
    if let Some(summary) = browser_check(
        page.to_str().unwrap(),
        expect,
        false,
        &screenshot("tiny-report.png"),
    ) {
        println!("{summary}");
    }
}

#[test]
fn what_is_missing_is_said_not_left_blank() {
    let p = project();
    p.run(&["wf.yaml", "-k"]);
    // A plot file corrupted and a step's outputs gone from the cache.
    let record = p.run(&["wf.yaml", "-k"]).1;
    std::fs::write(record.out("gpt2").join("loss.svg"), "not a picture").unwrap();
    std::fs::remove_dir_all(record.out("tok_eval")).unwrap();
    let page = p.path("r.html");
    let out = p.dnaflow(&["report", "tiny-report", "-o", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let html = read(&page);
    assert!(html.contains("Plot <code>loss.svg</code> is not a readable SVG or PNG image."));
    assert!(html.contains("outputs are no longer in the cache"));

    // A run that does not exist.
    let out = p.dnaflow(&["report", "20991231T000000", "-o", page.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no run `20991231T000000`"),
        "{}",
        text(&out)
    );

    // A record from an older dnaflow (no machine, no edges, no attempts) still renders.
    let old = p.path("old.json");
    std::fs::write(
        &old,
        json!({"run_id": "20250101T000000.000000Z-abcd", "workflow": "tiny-report",
               "file": "wf.yaml", "profile": null, "params": {}, "started": "2025-01-01",
               "seconds": 1.0, "status": "ok", "dnaflow_version": "0.0.1",
               "steps": [{"name": "a", "key": "k", "status": "ran", "reason": "new",
                          "seconds": 0.5, "out": null, "metrics": {"x": 1}}]})
        .to_string(),
    )
    .unwrap();
    let out = p.dnaflow(&[
        "report",
        old.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(read(&page).contains("not recorded (a run from an older dnaflow)"));

    // A record that is not one says which file.
    std::fs::write(&old, "{\"run_id\": 3}").unwrap();
    let out = p.dnaflow(&[
        "report",
        old.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("old.json"), "{}", text(&out));
}

/// `serve` shows a run as it goes: a step running (with the loss it logged so far), then the
/// run finished, on the same page, redrawn without a reload.
#[test]
fn serve_follows_a_run_in_progress() {
    let p = project();
    p.run(&["wf.yaml", "tok"]);
    p.write(
        "slow.yaml",
        r#"
name: slow
steps:
  train:
    run: |
      for i in 1 2 3 4 5 6; do echo "step $i/6: loss $((10 - i)).5 lr 1e-3"; sleep 1; done
      echo done > ${{ out }}/done.txt
"#,
    );
    let mut serve = p
        .cmd(&["serve", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let run = p.cmd(&["run", "slow.yaml"]).spawn().unwrap();
    let expect = json!({"steps": {"train": "ran"}, "live_loss": true});
    let checked = browser_check(&url, expect, true, &screenshot("serve.png"));
    let mut run = run;
    assert!(run.wait().unwrap().success());
    // Without a browser, the page itself: the finished run, with the polling script.
    let body = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())", &url])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    serve.kill().unwrap();
    let _ = serve.wait();
    assert!(
        body.contains("data-step=\"train\" data-status=\"ran\""),
        "{body}"
    );
    assert!(body.contains("fetch(\"/version\")"), "{body}");
    if let Some(summary) = checked {
        println!("{summary}");
    }
}

/// The results group scores by the test table they were computed on: two baselines of one
/// test table side by side, a third on another table of the same size and metrics apart.
#[test]
fn results_group_by_the_test_table_not_by_its_size() {
    let p = Project::new();
    let table = |prefix: &str, rows: usize, shift: usize| {
        let mut t = String::from("id,sequence,label\n");
        for i in 0..rows {
            let class = (i + shift) % 2;
            let s = ["ACGTACGTAAGG", "TTGCATGCAACC"][class];
            let s = format!("{}{}", &s[(i + shift) % 3..], &s[..(i + shift) % 3]);
            t.push_str(&format!("{prefix}{i},{s},{}\n", ["a", "b"][class]));
        }
        t
    };
    p.write("train.csv", &table("t", 16, 0));
    p.write("test_a.csv", &table("a", 6, 0));
    p.write("test_b.csv", &table("b", 6, 1));
    let baseline = |name: &str, test: &str, features: &str| {
        format!(
            "  {name}:\n    uses: baseline.classify\n    with: {{ train: train.csv, test: {test}, features: {features} }}\n  score_{name}:\n    uses: eval.classify\n    with: {{ predictions: \"${{{{ steps.{name}.predictions }}}}\", bootstrap: 0 }}\n"
        )
    };
    p.write(
        "wf.yaml",
        &format!(
            "name: two-tables\nsteps:\n{}{}{}",
            baseline("onehot_a", "test_a.csv", "onehot"),
            baseline("onehot_b", "test_b.csv", "onehot"),
            baseline("kmer_a", "test_a.csv", "kmer, k: 2"),
        ),
    );
    let r = p.run_ok(&["wf.yaml"]);
    let id = |step: &str| r.step(step)["metrics"]["test_table"].clone();
    assert_eq!(r.step("score_onehot_a")["metrics"]["rows"], 6);
    assert_eq!(r.step("score_onehot_b")["metrics"]["rows"], 6);
    assert_eq!(id("score_onehot_a"), id("score_kmer_a"));
    assert_ne!(id("score_onehot_a"), id("score_onehot_b"));
    let page = p.path("r.html");
    let out = p.dnaflow(&["report", "wf.yaml", "-o", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let html = read(&page);
    let tables: Vec<&str> = html.split("<table class=\"results\"").skip(1).collect();
    let set_of = |step: &str| {
        tables
            .iter()
            .position(|t| t.contains(&format!("data-step=\"{step}\"")))
            .unwrap_or_else(|| panic!("{step} not in the results: {html}"))
    };
    assert_eq!(tables.len(), 2, "{html}");
    assert_eq!(set_of("score_onehot_a"), set_of("score_kmer_a"));
    assert_ne!(set_of("score_onehot_a"), set_of("score_onehot_b"));
}
