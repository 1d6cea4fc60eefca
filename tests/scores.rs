//! `eval.classify` and `eval.regress` end to end: predictions tables written here from the
//! sklearn/SciPy reference vectors (tests/fixtures/scores/reference.json), scored by the
//! `dnaflow` binary, and every metric in metrics.json checked against the reference.

mod common;
use common::*;

use dnaflow::steps::table::write_table;
use polars::prelude::*;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scores/reference.json"
    );
    serde_json::from_str(&read(std::path::Path::new(path))).unwrap()
}

fn case<'a>(r: &'a Value, family: &str, name: &str) -> &'a Value {
    r[family]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no reference case {family}/{name}"))
}

fn list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(), // shortest text that reads back as the same f64
        })
        .collect()
}

/// Every number of `want` within [`TOL`] of `got`'s, nulls and texts equal; `got` may have more.
fn assert_close(path: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let gv = g
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k}: missing from metrics.json"));
                assert_close(&format!("{path}.{k}"), gv, wv);
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{path}");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                assert_close(&format!("{path}[{i}]"), gv, wv);
            }
        }
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= TOL, "{path}: {g}, sklearn/scipy: {w}");
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

fn metrics(r: &Report, step: &str) -> Value {
    serde_json::from_str(&read(&r.out(step).join("metrics.json"))).unwrap()
}

/// The headline's interval: two numbers around the estimate.
fn assert_brackets(m: &Value, name: &str) -> (f64, f64) {
    let ci = &m[format!("{name}_ci95")];
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    let v = m[name].as_f64().unwrap();
    assert!(
        lo <= v && v <= hi && lo < hi,
        "{name} {v} outside [{lo}, {hi}]"
    );
    (lo, hi)
}

#[test]
fn classify_a_csv_matches_sklearn_and_gates_in_check() {
    let r = reference();
    let c = case(&r, "classification", "three_classes");
    let (truth, pred) = (list(&c["y_true"]), list(&c["y_pred"]));
    let classes = ["acceptor", "donor", "neither"];
    let probs: Vec<Vec<String>> = classes.iter().map(|k| list(&c["probs"][k])).collect();
    let mut csv = String::from("id,truth,predicted,p_acceptor,p_donor,p_neither\n");
    for i in 0..truth.len() {
        csv += &format!(
            "s{i},{},{},{},{},{}\n",
            truth[i], pred[i], probs[0][i], probs[1][i], probs[2][i]
        );
    }
    let p = Project::new();
    p.write("preds.csv", &csv);
    p.write(
        "wf.yaml",
        r#"
steps:
  scores:
    uses: eval.classify
    with: { predictions: preds.csv, label: truth, prediction: predicted, probabilities: p_, seed: 7 }
    expect:
      accuracy: { min: 0.6 }
      per_class.neither.recall: { min: 0.5 }
"#,
    );
    let out = p.dnaflow(&["check", "wf.yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, report) = p.run(&["wf.yaml"]);
    let m = metrics(&report, "scores");
    let mut want = c["expected"].clone();
    let confusion = want.as_object_mut().unwrap().remove("confusion").unwrap();
    assert_close("metrics", &m, &want);
    assert_close(
        "metrics.confusion.counts",
        &m["confusion"]["counts"],
        &confusion,
    );
    assert_eq!(m["rows"], 36);
    assert_brackets(&m, "accuracy");
    assert_eq!(m["bootstrap"]["resamples"], 1000);
    assert_eq!(m["bootstrap"]["seed"], 7);
    let svg = read(&report.out("scores").join("confusion.svg"));
    assert!(svg.starts_with("<svg") && svg.contains("donor"));

    // A bound the scores miss fails the gate and names the metric.
    p.write(
        "wf.yaml",
        &read(&p.path("wf.yaml")).replace("min: 0.6", "min: 0.99"),
    );
    let out = p.dnaflow(&["check", "wf.yaml"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("accuracy"), "{}", text(&out));
}

#[test]
fn classify_parquet_with_numeric_labels_and_one_probability_column() {
    let r = reference();
    let c = case(&r, "classification", "binary_ties_positive_column_only");
    let truth: Vec<i64> = list(&c["y_true"])
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    // Predictions as floats (1.0), the way pandas often writes them: still class `1`.
    let pred: Vec<f64> = list(&c["y_pred"])
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let p1: Vec<f64> = c["probs"]["1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let p = Project::new();
    let mut df = df!("label" => truth, "prediction" => pred, "prob_1" => p1).unwrap();
    write_table(&mut df, &p.path("preds.parquet")).unwrap();
    p.write(
        "wf.yaml",
        "steps:\n  scores:\n    uses: eval.classify\n    with: { predictions: preds.parquet, positive: 1, bootstrap: 0 }\n",
    );
    let report = p.run_ok(&["wf.yaml"]);
    let m = metrics(&report, "scores");
    let mut want = c["expected"].clone();
    want.as_object_mut().unwrap().remove("confusion");
    assert_close("metrics", &m, &want);
    assert_eq!(m["positive"], "1");
    assert!(
        m.get("accuracy_ci95").is_none(),
        "bootstrap: 0 means no interval"
    );
}

#[test]
fn regress_matches_sklearn_and_scipy_and_reports_the_real_rmse() {
    let r = reference();
    for name in ["basic", "ties"] {
        let c = case(&r, "regression", name);
        let (truth, pred) = (list(&c["y_true"]), list(&c["y_pred"]));
        let mut csv = String::from("label,prediction\n");
        for (t, y) in truth.iter().zip(&pred) {
            csv += &format!("{t},{y}\n");
        }
        let p = Project::new();
        p.write("preds.csv", &csv);
        p.write(
            "wf.yaml",
            "steps:\n  scores:\n    uses: eval.regress\n    with: { predictions: preds.csv }\n",
        );
        let report = p.run_ok(&["wf.yaml"]);
        let m = metrics(&report, "scores");
        assert_close(name, &m, &c["expected"]);
        let (mse, rmse) = (m["mse"].as_f64().unwrap(), m["rmse"].as_f64().unwrap());
        assert!((rmse * rmse - mse).abs() < 1e-9 && rmse != mse, "{name}");
        assert_brackets(&m, "rmse");
        assert_eq!(m["bootstrap"]["metric"], "rmse");
        assert_eq!(report.step("scores")["metrics"]["rmse"], m["rmse"]);
    }
}

#[test]
fn constant_predictions_give_null_correlations() {
    let p = Project::new();
    p.write("preds.csv", "label,prediction\n1,2\n2,2\n4,2\n");
    p.write(
        "wf.yaml",
        "steps:\n  scores:\n    uses: eval.regress\n    with: { predictions: preds.csv, bootstrap: 50 }\n",
    );
    let m = metrics(&p.run_ok(&["wf.yaml"]), "scores");
    assert_eq!(m["pearson"], Value::Null);
    assert_eq!(m["spearman"], Value::Null);
    assert_eq!(m["mae"], 1.0);
}

/// Run `wf.yaml`, expect step `scores` to fail, return what dnaflow printed.
fn fails(p: &Project) -> String {
    let (out, r) = p.run(&["wf.yaml"]);
    let t = text(&out);
    assert!(!out.status.success(), "expected a failure:\n{t}");
    assert_eq!(r.step("scores")["status"], "failed", "{t}");
    t
}

#[test]
fn bad_predictions_name_the_file_row_and_column() {
    let p = Project::new();
    let wf = |kind: &str, with: &str| {
        format!(
            "steps:\n  scores:\n    uses: {kind}\n    with: {{ predictions: preds.csv{with} }}\n"
        )
    };
    // A regression target that is not a number.
    p.write("preds.csv", "id,label,prediction\na,1.5,1.4\nb,high,2.0\n");
    p.write("wf.yaml", &wf("eval.regress", ""));
    let t = fails(&p);
    assert!(
        t.contains("preds.csv: row 2 (line 3, id `b`), column `label`: `high` is not a number"),
        "{t}"
    );
    // A missing label.
    p.write("preds.csv", "label,prediction\nyes,yes\n,no\n");
    p.write("wf.yaml", &wf("eval.classify", ""));
    let t = fails(&p);
    assert!(
        t.contains("preds.csv: row 2 (line 3), column `label`: empty"),
        "{t}"
    );
    // A column that is not there: say which there are and what to set.
    p.write("preds.csv", "truth,prediction\nyes,yes\n");
    let t = fails(&p);
    assert!(
        t.contains("no column `label`; the columns are: truth, prediction; set `label:`"),
        "{t}"
    );
    // A probability that is not a number.
    p.write(
        "preds.csv",
        "label,prediction,prob_yes\nyes,yes,0.9\nno,no,n/a\n",
    );
    let t = fails(&p);
    assert!(
        t.contains("row 2 (line 3), column `prob_yes`: `n/a` is not a number"),
        "{t}"
    );
    // Three classes but a probability for only one of them.
    p.write(
        "preds.csv",
        "label,prediction,prob_a\na,a,0.9\nb,b,0.1\nc,c,0.2\n",
    );
    let t = fails(&p);
    assert!(t.contains("no probability for class `b`"), "{t}");
    // Caught before anything runs: the same column twice.
    p.write("wf.yaml", &wf("eval.classify", ", prediction: label"));
    let out = p.dnaflow(&["validate", "wf.yaml"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("must name different columns"),
        "{}",
        text(&out)
    );
}
