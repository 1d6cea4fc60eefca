//! Every score against scikit-learn / SciPy / numpy on the fixed vectors of
//! `tests/fixtures/scores/reference.json` (made by `scripts/make_score_reference.py`).

use serde_json::Value;

use super::*;

const REFERENCE: &str = include_str!("../../tests/fixtures/scores/reference.json");
const TOL: f64 = 1e-9;

fn reference() -> Value {
    serde_json::from_str(REFERENCE).expect("reference.json is JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a label").to_string())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

/// Every field of `want` is in `got` with the same value (numbers within [`TOL`], `null` for
/// `null`); `got` may have more. Returns the mismatches, each with its path.
fn compare(path: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => compare(&format!("{path}.{k}"), gv, wv, out),
                    None => out.push(format!("{path}.{k}: missing, sklearn gives {wv}")),
                }
            }
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                compare(&format!("{path}[{i}]"), gv, wv, out);
            }
        }
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            if (g - w).abs() > TOL {
                out.push(format!("{path}: {g} but sklearn/scipy give {w}"));
            }
        }
        _ if got == want => {}
        _ => out.push(format!("{path}: {got} but sklearn/scipy give {want}")),
    }
}

fn assert_matches(name: &str, got: &Value, want: &Value) -> usize {
    let mut bad = Vec::new();
    compare(name, got, want, &mut bad);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    1
}

#[test]
fn classification_matches_sklearn() {
    let r = reference();
    let cases = r["classification"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let truth = strings(&case["y_true"]);
        let pred = strings(&case["y_pred"]);
        let probs: Vec<(String, Vec<f64>)> = match &case["probs"] {
            Value::Object(m) => m.iter().map(|(c, v)| (c.clone(), floats(v))).collect(),
            _ => Vec::new(),
        };
        let scores =
            classification(&truth, &pred, &probs, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = serde_json::to_value(&scores).unwrap();
        let mut want = case["expected"].clone();
        // sklearn's confusion_matrix is the bare table; ours names its rows and columns.
        let confusion = want.as_object_mut().unwrap().remove("confusion").unwrap();
        assert_matches(name, &got, &want);
        assert_matches(name, &got["confusion"]["counts"], &confusion);
        assert_eq!(got["confusion"]["labels"], want["classes"], "{name}");
        assert_eq!(
            got.get("auroc").is_some(),
            !probs.is_empty(),
            "{name}: AUROC present exactly when there are probabilities"
        );
    }
    assert!(cases.len() >= 10, "the reference has every case");
}

#[test]
fn regression_matches_sklearn_and_scipy() {
    let r = reference();
    for case in r["regression"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let scores = regression(&floats(&case["y_true"]), &floats(&case["y_pred"]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_matches(
            name,
            &serde_json::to_value(&scores).unwrap(),
            &case["expected"],
        );
    }
}

#[test]
fn percentiles_match_numpy() {
    let r = reference();
    for case in r["percentile"].as_array().unwrap() {
        let mut v = floats(&case["values"]);
        v.sort_by(f64::total_cmp);
        for (q, key) in [(2.5, "p2_5"), (97.5, "p97_5")] {
            let want = case[key].as_f64().unwrap();
            let got = percentile(&v, q);
            assert!(
                (got - want).abs() <= TOL,
                "{key} of {} values: {got} vs numpy {want}",
                v.len()
            );
        }
    }
}
