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
    // Every definition so far belongs to some kind's `with:`.
    let kind_defs: Vec<String> = generator.definitions().keys().cloned().collect();
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
        // In `with:` any value may be written as one `${{ … }}` expression (the engine checks
        // what it stands for against the kind's types once it is resolved).
        for name in &kind_defs {
            if let Some(def) = defs.get_mut(name) {
                allow_expressions_inside(def);
            }
        }
        defs.insert(
            EXPRESSION.into(),
            json!({
                "description": "One `${{ … }}` expression (`${{ params.NAME }}`, `${{ matrix.KEY }}`, `${{ steps.NAME.OUTPUT }}`), standing for a value of the type expected here.",
                "type": "string",
                "pattern": "^\\$\\{\\{[^{}]*\\}\\}$"
            }),
        );
    }
    root
}

/// Name of the definition of a string that is exactly one `${{ … }}` expression.
const EXPRESSION: &str = "Expression";

/// Let every value below `schema` (its fields, items, map values) also be an expression.
fn allow_expressions_inside(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.values_mut().for_each(allow_expression);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub @ Value::Object(_)) = obj.get_mut(key) {
            allow_expression(sub);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = obj.get_mut(key) {
            branches.iter_mut().for_each(allow_expressions_inside);
        }
    }
}

/// A value position: the value may also be an expression, unless any string is fine already.
/// Descriptions and defaults stay on the outside, where editors show them.
fn allow_expression(schema: &mut Value) {
    allow_expressions_inside(schema);
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let plain_string = obj.get("type") == Some(&json!("string"))
        && ![
            "enum",
            "const",
            "pattern",
            "format",
            "minLength",
            "maxLength",
        ]
        .iter()
        .any(|k| obj.contains_key(*k));
    if plain_string {
        return;
    }
    let mut outer = serde_json::Map::new();
    for key in ["description", "default", "title"] {
        if let Some(v) = obj.remove(key) {
            outer.insert(key.into(), v);
        }
    }
    let inner = Value::Object(std::mem::take(obj));
    outer.insert(
        "anyOf".into(),
        json!([inner, { "$ref": format!("#/definitions/{EXPRESSION}") }]),
    );
    *obj = outer;
}

/// The schema as the committed file holds it (pretty JSON, trailing newline).
pub fn workflow_schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&workflow_schema()).expect("schema serializes");
    s.push('\n');
    s
}
