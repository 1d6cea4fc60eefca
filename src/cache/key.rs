//! Cache keys: blake3 of a canonical recipe of everything that decides a step's results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything that decides a step's results, and nothing else (no paths, no times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// `run` for shell steps, else the built-in kind's name.
    pub kind: String,
    /// Implementation version of the kind.
    pub version: u32,
    /// Shell command with references written symbolically (`<out>`, `<steps.NAME.OUTPUT>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Parameters of a built-in kind, references written symbolically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Workflow parameters a shell command or `env:` uses (written `<params.NAME>` there): value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Project files by path: content hash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// Upstream steps by name: their keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, String>,
    /// Declared output files (a step that must write more files is a different step).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Whatever else changes results (compute backend, precision, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
}

/// Identifies a step's results in the cache: 128 bits of blake3, as hex.
pub type CacheKey = String;

/// Version of the key scheme; bump to invalidate every cached object at once.
const SCHEME: &str = "dnaflow-key-v1";

impl Recipe {
    /// The key: blake3 over the canonical JSON encoding (object keys sorted at every level).
    ///
    /// Written straight into the hasher, fields in sorted order, with no intermediate JSON
    /// value: planning 100,000 steps computes 100,000 keys. `serde_json` keeps object keys
    /// sorted (no `preserve_order`), so nested values are canonical as they serialize; a test
    /// holds the bytes equal to sorting a `serde_json::Value` at every level.
    pub fn key(&self) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(SCHEME.as_bytes());
        self.write_canonical(&mut hasher)
            .expect("hashing into memory cannot fail");
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// The key of the same recipe with the `with:` parameters `params` left out: of a family
    /// of runs that differ only in those (a training run on any number of ranks:
    /// `steps::RANK_LAUNCH_PARAMS`), for what the family may share (its checkpoints).
    pub fn key_without(&self, params: &[&str]) -> CacheKey {
        let mut plain = self.clone();
        if let Some(Value::Object(with)) = plain.with.as_mut() {
            for k in params {
                with.remove(*k);
            }
        }
        plain.key()
    }

    /// The canonical JSON encoding: top-level fields sorted, empty ones left out.
    fn write_canonical(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let maps = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| to_json(m));
        // Alphabetical, as a sorted JSON object has them.
        let fields: [(&str, Option<Vec<u8>>); 10] = [
            ("command", self.command.as_ref().map(to_json)),
            ("context", maps(&self.context)),
            ("env", maps(&self.env)),
            ("inputs", maps(&self.inputs)),
            ("kind", Some(to_json(&self.kind))),
            ("outputs", maps(&self.outputs)),
            ("params", maps(&self.params)),
            ("upstream", maps(&self.upstream)),
            ("version", Some(to_json(&self.version))),
            ("with", self.with.as_ref().map(to_json)),
        ];
        w.write_all(b"{")?;
        let mut first = true;
        for (name, json) in fields {
            let Some(json) = json else { continue };
            if !first {
                w.write_all(b",")?;
            }
            first = false;
            write!(w, "\"{name}\":")?;
            w.write_all(&json)?;
        }
        w.write_all(b"}")
    }
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("recipe serializes")
}

/// One difference between two recipes, old → new.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// What changed: `param lr`, `input data/x.fa`, `upstream tok`, `command`, …
    pub what: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => write!(f, "{} changed: {} → {}", self.what, short(o), short(n)),
            (None, Some(n)) => write!(f, "{} added: {}", self.what, short(n)),
            (Some(o), None) => write!(f, "{} removed (was {})", self.what, short(o)),
            (None, None) => write!(f, "{} changed", self.what),
        }
    }
}

fn short(s: &str) -> String {
    let one_line = s.replace('\n', "⏎");
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(59).collect::<String>())
    } else {
        one_line
    }
}

/// Field-level differences from `old` to `new`.
pub fn diff(old: &Recipe, new: &Recipe) -> Vec<Change> {
    let mut out = Vec::new();
    let mut field = |what: String, o: Option<String>, n: Option<String>| {
        if o != n {
            out.push(Change {
                what,
                old: o,
                new: n,
            });
        }
    };
    field(
        "kind".into(),
        Some(old.kind.clone()),
        Some(new.kind.clone()),
    );
    field(
        format!("implementation version of `{}`", new.kind),
        Some(old.version.to_string()),
        Some(new.version.to_string()),
    );
    field("command".into(), old.command.clone(), new.command.clone());
    let mut old_with = BTreeMap::new();
    let mut new_with = BTreeMap::new();
    if let Some(w) = &old.with {
        flatten("", w, &mut old_with);
    }
    if let Some(w) = &new.with {
        flatten("", w, &mut new_with);
    }
    diff_maps("param", &old_with, &new_with, &mut field);
    diff_maps("param", &old.params, &new.params, &mut field);
    diff_maps("input", &old.inputs, &new.inputs, &mut field);
    let short_keys = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), format!("key {}", &v[..v.len().min(12)])))
            .collect()
    };
    diff_maps(
        "upstream",
        &short_keys(&old.upstream),
        &short_keys(&new.upstream),
        &mut field,
    );
    diff_maps("env", &old.env, &new.env, &mut field);
    diff_maps("output", &old.outputs, &new.outputs, &mut field);
    diff_maps("context", &old.context, &new.context, &mut field);
    out
}

fn diff_maps(
    label: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    field: &mut impl FnMut(String, Option<String>, Option<String>),
) {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        field(
            format!("{label} `{name}`"),
            old.get(name).cloned(),
            new.get(name).cloned(),
        );
    }
}

/// Flatten nested JSON into dotted paths (`a.b.0`) with JSON text values.
pub fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten(&join(&i.to_string()), v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            kind: "run".into(),
            version: 1,
            command: Some("echo hi > <out>/x".into()),
            with: None,
            env: BTreeMap::new(),
            params: BTreeMap::new(),
            inputs: [("a.txt".to_string(), "h1".to_string())].into(),
            upstream: BTreeMap::new(),
            outputs: BTreeMap::new(),
            context: BTreeMap::new(),
        }
    }

    /// Parameters left out set a run's key, not its family's; the others set both.
    #[test]
    fn a_family_key_ignores_only_the_parameters_left_out() {
        let family = ["ranks", "ranks_as", "rank_timeout", "zero"];
        let with = |v: Value| Recipe {
            kind: "model.pretrain".into(),
            with: Some(v),
            ..recipe()
        };
        let one = with(serde_json::json!({ "lr": 0.01 }));
        let two = with(serde_json::json!({ "lr": 0.01, "ranks": 2, "zero": 2,
            "ranks_as": "processes", "rank_timeout": 30 }));
        let other = with(serde_json::json!({ "lr": 0.02, "ranks": 2 }));
        assert_ne!(one.key(), two.key());
        assert_eq!(one.key_without(&family), two.key_without(&family));
        assert_ne!(one.key_without(&family), other.key_without(&family));
    }

    #[test]
    fn key_is_stable_and_sensitive() {
        let a = recipe();
        assert_eq!(a.key(), recipe().key());
        assert_eq!(a.key().len(), 32);
        let mut b = recipe();
        b.inputs.insert("a.txt".into(), "h2".into());
        assert_ne!(a.key(), b.key());
    }

    /// Keys written before the streaming encoding: sort a `serde_json::Value` at every level.
    fn canonical_key(r: &Recipe) -> CacheKey {
        fn canonical(v: Value) -> Value {
            match v {
                Value::Object(map) => {
                    let sorted: BTreeMap<String, Value> =
                        map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
                    Value::Object(sorted.into_iter().collect())
                }
                Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
                other => other,
            }
        }
        let value = canonical(serde_json::to_value(r).unwrap());
        let mut hasher = blake3::Hasher::new();
        hasher.update(SCHEME.as_bytes());
        hasher.update(&serde_json::to_vec(&value).unwrap());
        hasher.finalize().to_hex()[..32].to_string()
    }

    #[test]
    fn streamed_key_equals_sorted_json_key() {
        let mut full = recipe();
        full.command = None;
        full.with = Some(serde_json::json!({"z": [1, {"b": "\u{e9}\"", "a": null}], "a": 1.5}));
        full.env.insert("B".into(), "2".into());
        full.params.insert("lr".into(), "0.1".into());
        full.upstream.insert("tok".into(), "k".repeat(32));
        full.outputs.insert("model".into(), "model.bin".into());
        full.context.insert("device".into(), "cpu".into());
        for r in [recipe(), full] {
            assert_eq!(r.key(), canonical_key(&r));
        }
    }

    #[test]
    fn key_ignores_json_key_order() {
        let mut a = recipe();
        a.with = Some(serde_json::json!({"x": 1, "y": {"b": 2, "a": 1}}));
        let mut b = recipe();
        b.with = Some(serde_json::from_str(r#"{"y": {"a": 1, "b": 2}, "x": 1}"#).unwrap());
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn diff_names_fields() {
        let mut a = recipe();
        a.with = Some(serde_json::json!({"lr": 0.1, "layers": [1, 2]}));
        let mut b = a.clone();
        b.with = Some(serde_json::json!({"lr": 0.2, "layers": [1, 2]}));
        b.inputs.insert("a.txt".into(), "h2".into());
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].to_string(), "param `lr` changed: 0.1 → 0.2");
        assert_eq!(d[1].what, "input `a.txt`");
    }
}
