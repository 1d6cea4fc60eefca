//! Step metrics (`metrics.json`), `expect:` checks, and differences between runs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::key::flatten;
use crate::workflow::syntax::Expectation;

/// The outcome of one `expect:` bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpectResult {
    pub metric: String,
    /// Bound as written, e.g. `<= 3.9` or `== 100 ± 0.5`.
    pub bound: String,
    pub value: Option<Value>,
    pub ok: bool,
}

/// Read a step's `metrics.json` (an object; anything else is an error the step must fix).
pub fn read(path: &Path) -> Result<Value, String> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Default::default())),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(format!("{}: metrics must be a JSON object", path.display())),
            Err(e) => Err(format!("{}: not valid JSON: {e}", path.display())),
        },
    }
}

/// The value at a dotted path (`eval.loss`), or a top-level key containing dots.
pub fn lookup<'a>(metrics: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = metrics.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(metrics, |v, part| match v {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Check one expectation against a step's metrics.
pub fn check(metrics: &Value, metric: &str, e: &Expectation) -> ExpectResult {
    let value = lookup(metrics, metric).cloned();
    let mut bounds = Vec::new();
    let mut ok = value.is_some();
    let num = value.as_ref().and_then(Value::as_f64);
    if let Some(min) = e.min {
        bounds.push(format!(">= {min}"));
        ok &= num.is_some_and(|v| v >= min);
    }
    if let Some(max) = e.max {
        bounds.push(format!("<= {max}"));
        ok &= num.is_some_and(|v| v <= max);
    }
    if let Some(want) = &e.equals {
        let tol = e.tol.unwrap_or(0.0);
        bounds.push(if tol > 0.0 {
            format!("== {want} ± {tol}")
        } else {
            format!("== {want}")
        });
        ok &= match (want.as_f64(), num) {
            (Some(w), Some(v)) => (v - w).abs() <= tol,
            _ => value.as_ref() == Some(want),
        };
    }
    ExpectResult {
        metric: metric.to_string(),
        bound: bounds.join(", "),
        value,
        ok,
    }
}

/// Flattened metrics of every step: `step/metric` → value text.
pub fn flat(steps: &[(String, Value)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, m) in steps {
        let mut f = BTreeMap::new();
        flatten("", m, &mut f);
        for (k, v) in f {
            if !k.is_empty() {
                out.insert(format!("{name}/{k}"), v);
            }
        }
    }
    out
}

/// One row of `metrics diff`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffRow {
    pub metric: String,
    pub a: Option<String>,
    pub b: Option<String>,
    /// `b - a` when both are numbers.
    pub delta: Option<f64>,
}

/// Compare two runs' flattened metrics.
pub fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<DiffRow> {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .map(|n| {
            let (x, y) = (a.get(n).cloned(), b.get(n).cloned());
            let delta = match (&x, &y) {
                (Some(x), Some(y)) => match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => Some(y - x),
                    _ => None,
                },
                _ => None,
            };
            DiffRow {
                metric: n.clone(),
                a: x,
                b: y,
                delta,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ex(
        min: Option<f64>,
        max: Option<f64>,
        equals: Option<Value>,
        tol: Option<f64>,
    ) -> Expectation {
        Expectation {
            min,
            max,
            equals,
            tol,
        }
    }

    #[test]
    fn bounds() {
        let m = json!({"ppl": 3.5, "eval": {"acc": 0.91}, "name": "x"});
        assert!(check(&m, "ppl", &ex(None, Some(3.9), None, None)).ok);
        assert!(!check(&m, "ppl", &ex(Some(3.6), None, None, None)).ok);
        assert!(check(&m, "eval.acc", &ex(Some(0.9), Some(1.0), None, None)).ok);
        assert!(check(&m, "ppl", &ex(None, None, Some(json!(3.4)), Some(0.11))).ok);
        assert!(!check(&m, "ppl", &ex(None, None, Some(json!(3.4)), None)).ok);
        assert!(check(&m, "name", &ex(None, None, Some(json!("x")), None)).ok);
        let missing = check(&m, "nope", &ex(Some(0.0), None, None, None));
        assert!(!missing.ok && missing.value.is_none());
    }

    #[test]
    fn diff_rows() {
        let a = flat(&[("s".into(), json!({"x": 1.0, "y": "a"}))]);
        let b = flat(&[("s".into(), json!({"x": 1.5, "z": 2}))]);
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].metric, "s/x");
        assert_eq!(d[0].delta, Some(0.5));
        assert_eq!(d[1].b, None);
    }
}
