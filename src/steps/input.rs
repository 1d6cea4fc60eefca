//! Parameters that name project files: a type of their own, so the engine can find every one
//! of them in any kind's parameters and hash what it names into the step's key.
//!
//! A kind declares a file parameter by giving it the type [`InputPath`] (alone, in an
//! `Option`, a list, a map or a nested struct). Its JSON Schema carries the mark
//! [`INPUT_MARK`]; [`input_pointers`] walks a kind's schema and returns where in `with:` such
//! parameters sit, and the engine hashes the literal paths found there. No list to keep in
//! step with the struct: a kind cannot forget a file parameter without also giving it another
//! type, and the tests fail when a path-holding parameter is not covered.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::Value;

use super::{KINDS, StepKind};

/// The schema keyword that marks a parameter as a project file or directory.
pub const INPUT_MARK: &str = "x-dnaflow-input";

/// A file or directory a step reads (relative to the workdir, or an upstream output). The
/// engine hashes its bytes into the step's key and hands it to the kind as an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct InputPath(PathBuf);

impl InputPath {
    /// The path, absolute when the step runs.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for InputPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl std::fmt::Display for InputPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

impl JsonSchema for InputPath {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "InputPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "x-dnaflow-input": true,
        })
    }
}

/// One step of a [`Pointer`] into `with:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A named field of a map.
    Key(String),
    /// Every item of a list, or every value of a map.
    Each,
}

/// Where in `with:` a file parameter sits: `[Key("inputs"), Each]` is every item of `inputs`.
pub type Pointer = Vec<Seg>;

/// A pointer as a person reads it: `inputs.*` for every item of `inputs`.
pub fn pointer_name(pointer: &[Seg]) -> String {
    pointer
        .iter()
        .map(|s| match s {
            Seg::Key(k) => k.as_str(),
            Seg::Each => "*",
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The places in `with:` of `kind` that hold [`InputPath`]s (computed once per kind).
pub fn input_pointers(kind: &StepKind) -> &'static [Pointer] {
    static ALL: OnceLock<HashMap<&'static str, Vec<Pointer>>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        KINDS
            .iter()
            .map(|k| (k.name, pointers_of_schema(k)))
            .collect()
    });
    all.get(kind.name).map(Vec::as_slice).unwrap_or(&[])
}

fn pointers_of_schema(kind: &StepKind) -> Vec<Pointer> {
    let mut generator = SchemaGenerator::default();
    let schema = (kind.schema)(&mut generator).to_value();
    let defs = generator.definitions().clone();
    let mut out = Vec::new();
    collect(&schema, &defs, &mut Vec::new(), &mut out, 0);
    out.dedup();
    out
}

/// Walk a schema, noting the pointer of every subschema that carries [`INPUT_MARK`].
fn collect(
    schema: &Value,
    defs: &serde_json::Map<String, Value>,
    at: &mut Pointer,
    out: &mut Vec<Pointer>,
    depth: usize,
) {
    // Recursive types would loop; no kind's parameters nest this deep.
    if depth > 32 {
        return;
    }
    let Some(obj) = schema.as_object() else {
        return;
    };
    if obj.get(INPUT_MARK) == Some(&Value::Bool(true)) {
        if !out.contains(at) {
            out.push(at.clone());
        }
        return;
    }
    if let Some(Value::String(r)) = obj.get("$ref") {
        let name = r.rsplit('/').next().unwrap_or_default();
        if let Some(def) = defs.get(name) {
            collect(def, defs, at, out, depth + 1);
        }
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(items)) = obj.get(combinator) {
            for item in items {
                collect(item, defs, at, out, depth + 1);
            }
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, sub) in props {
            at.push(Seg::Key(name.clone()));
            collect(sub, defs, at, out, depth + 1);
            at.pop();
        }
    }
    let each = [
        obj.get("items"),
        obj.get("additionalProperties"),
        obj.get("prefixItems"),
    ];
    for sub in each.into_iter().flatten() {
        at.push(Seg::Each);
        match sub {
            Value::Array(tuple) => {
                for item in tuple {
                    collect(item, defs, at, out, depth + 1);
                }
            }
            other => collect(other, defs, at, out, depth + 1),
        }
        at.pop();
    }
}

/// Every string at `pointer` in a JSON value, mutably (for making paths absolute).
pub fn strings_at_mut<'v>(
    value: &'v mut Value,
    pointer: &[Seg],
    f: &mut dyn FnMut(&'v mut String),
) {
    match (pointer.split_first(), value) {
        (None, Value::String(s)) => f(s),
        (Some((Seg::Key(k), rest)), Value::Object(m)) => {
            if let Some(v) = m.get_mut(k) {
                strings_at_mut(v, rest, f);
            }
        }
        (Some((Seg::Each, rest)), Value::Array(items)) => {
            for item in items {
                strings_at_mut(item, rest, f);
            }
        }
        (Some((Seg::Each, rest)), Value::Object(m)) => {
            for v in m.values_mut() {
                strings_at_mut(v, rest, f);
            }
        }
        _ => {}
    }
}

/// Every string at `pointer` in a JSON value, with its dotted name (`inputs.1`).
pub fn strings_at(value: &Value, pointer: &[Seg], name: &str, f: &mut dyn FnMut(String, &str)) {
    let join = |k: &str| {
        if name.is_empty() {
            k.to_string()
        } else {
            format!("{name}.{k}")
        }
    };
    match (pointer.split_first(), value) {
        (None, Value::String(s)) => f(name.to_string(), s),
        (Some((Seg::Key(k), rest)), Value::Object(m)) => {
            if let Some(v) = m.get(k) {
                strings_at(v, rest, &join(k), f);
            }
        }
        (Some((Seg::Each, rest)), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                strings_at(item, rest, &join(&i.to_string()), f);
            }
        }
        (Some((Seg::Each, rest)), Value::Object(m)) => {
            for (k, v) in m {
                strings_at(v, rest, &join(k), f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(kind: &str) -> Vec<String> {
        let kind = super::super::find(kind).expect("kind exists");
        input_pointers(kind)
            .iter()
            .map(|p| pointer_name(p))
            .collect()
    }

    #[test]
    fn file_parameters_are_found_through_options_lists_and_untagged_enums() {
        assert_eq!(pointers("data.split"), ["input"]);
        assert_eq!(pointers("data.concat"), ["inputs", "inputs.*"]);
        let mut pretrain = pointers("model.pretrain");
        pretrain.sort();
        assert_eq!(pretrain, ["init", "tokenizer", "train", "valid"]);
        assert!(pointers("file.write").is_empty());
        assert!(pointers("data.fetch").is_empty());
    }

    #[test]
    fn strings_are_found_and_named_at_their_pointers() {
        let v = json!({"inputs": ["a.csv", "b.csv"], "other": "x"});
        let mut seen = Vec::new();
        let ptr = [Seg::Key("inputs".into()), Seg::Each];
        strings_at(&v, &ptr, "", &mut |name, s| {
            seen.push(format!("{name}={s}"))
        });
        assert_eq!(seen, ["inputs.0=a.csv", "inputs.1=b.csv"]);
        let mut v = v;
        strings_at_mut(&mut v, &ptr, &mut |s| s.insert_str(0, "/w/"));
        assert_eq!(v["inputs"], json!(["/w/a.csv", "/w/b.csv"]));
        assert_eq!(v["other"], "x");
    }

    #[test]
    fn an_input_path_reads_as_a_plain_string() {
        let p: InputPath = serde_json::from_value(json!("data/x.fa")).unwrap();
        assert_eq!(p.path(), Path::new("data/x.fa"));
    }
}
