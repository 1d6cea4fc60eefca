//! JSON Schema of the workflow language, generated from the Rust types so it cannot drift.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::syntax::WorkflowFile;
use crate::steps::KINDS;

/// The schema written to `schemas/workflow.schema.json`, with each built-in kind's `with:`.
pub fn workflow_schema() -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let mut kinds = Vec::new();
    for kind in KINDS {
        let schema = (kind.schema)(&mut generator);
        kinds.push((kind, schema));
    }
    let root = generator.root_schema_for::<WorkflowFile>();
    let mut root = root.to_value();

    // `uses:` lists the kinds, and `with:` is checked against the chosen kind's parameters.
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    let all_of: Vec<Value> = kinds
        .iter()
        .map(|(kind, schema)| {
            json!({
                "if": { "properties": { "uses": { "const": kind.name } }, "required": ["uses"] },
                "then": { "properties": { "with": schema.clone() } }
            })
        })
        .collect();
    if let Some(step) = root.pointer_mut("/definitions/StepDef") {
        step["properties"]["uses"] = json!({
            "description": "Built-in step kind (see `dnaflow kinds`).",
            "type": "string",
            "enum": names,
        });
        step["allOf"] = Value::Array(all_of);
        step["oneOf"] = json!([
            { "required": ["uses"], "not": { "required": ["run"] } },
            { "required": ["run"], "not": { "required": ["uses"] } }
        ]);
    }
    if let Some(steps) = root.pointer_mut("/properties/steps") {
        steps["propertyNames"] = json!({ "pattern": "^[A-Za-z0-9_-]+$" });
    }
    // Definitions the kinds registered live in the generator; copy them into the root.
    let extra = generator.take_definitions(true);
    if let Some(defs) = root.get_mut("definitions").and_then(Value::as_object_mut) {
        for (k, v) in extra {
            defs.entry(k).or_insert(v);
        }
    }
    root
}

/// The schema as the committed file holds it (pretty JSON, trailing newline).
pub fn workflow_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&workflow_schema()).expect("schema serializes");
    s.push('\n');
    s
}
