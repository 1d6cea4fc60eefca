//! `kinds`: the built-in step kinds, and one kind's parameters as a table (or JSON Schema).

use std::io::Write;

use anyhow::anyhow;
use serde_json::{Map, Value};

use super::Failure;
use crate::steps::{self, StepKind};

#[derive(clap::Args, Debug)]
pub struct KindsArgs {
    /// Describe this kind: its outputs and a table of its parameters (type, default, meaning).
    name: Option<String>,
    /// Print the kind's parameters as JSON Schema instead of a table.
    #[arg(long, requires = "name")]
    json: bool,
}

/// One parameter of a kind, as the table shows it.
#[derive(Debug, PartialEq)]
pub(crate) struct ParamRow {
    pub name: String,
    pub required: bool,
    pub ty: String,
    pub default: String,
    pub meaning: String,
}

pub fn kinds(args: &KindsArgs) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`dnaflow kinds … | head`) ends the listing quietly.
    let _ = write_kinds(&mut out, args);
    match &args.name {
        Some(name) if steps::find(name).is_none() => {
            let hint = crate::diag::did_you_mean(name, steps::KINDS.iter().map(|k| k.name))
                .map(|m| format!("; did you mean `{m}`?"))
                .unwrap_or_default();
            Err(anyhow!("no step kind `{name}`{hint} (`dnaflow kinds` lists them)").into())
        }
        _ => Ok(()),
    }
}

fn write_kinds(out: &mut impl Write, args: &KindsArgs) -> std::io::Result<()> {
    let Some(name) = &args.name else {
        for k in steps::KINDS {
            writeln!(out, "{:<18} {}", k.name, k.summary)?;
        }
        return writeln!(
            out,
            "\n`dnaflow kinds KIND` describes one; docs/reference.md has them all."
        );
    };
    let Some(k) = steps::find(name) else {
        return Ok(());
    };
    if args.json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&schema_of(k)).expect("json")
        );
    }
    writeln!(out, "{} (version {}): {}", k.name, k.version, k.summary)?;
    if !k.outputs.is_empty() {
        writeln!(out, "\noutputs (`${{{{ steps.NAME.OUTPUT }}}}`):")?;
        for (n, p) in k.outputs {
            writeln!(out, "  {n:<14} {p}")?;
        }
    }
    let rows = param_rows(&schema_of(k));
    writeln!(out, "\nparameters (`with:`; * required):")?;
    let w_name = rows
        .iter()
        .map(|r| r.name.len() + 1)
        .max()
        .unwrap_or(9)
        .max(9);
    let w_ty = rows
        .iter()
        .map(|r| r.ty.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 28);
    let w_def = rows
        .iter()
        .map(|r| r.default.len())
        .max()
        .unwrap_or(7)
        .clamp(7, 16);
    writeln!(
        out,
        "  {:<w_name$}  {:<w_ty$}  {:<w_def$}  meaning",
        "parameter", "type", "default"
    )?;
    for r in &rows {
        let name = format!("{}{}", r.name, if r.required { "*" } else { "" });
        writeln!(
            out,
            "  {name:<w_name$}  {:<w_ty$}  {:<w_def$}  {}",
            r.ty, r.default, r.meaning
        )?;
    }
    writeln!(
        out,
        "\n`dnaflow kinds {} --json` prints the parameters as JSON Schema.",
        k.name
    )
}

/// A kind's parameters as JSON Schema (draft 7), its definitions included.
fn schema_of(k: &StepKind) -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = (k.schema)(&mut generator);
    let mut value = schema.to_value();
    let defs = generator.take_definitions(true);
    if !defs.is_empty() {
        value["definitions"] = Value::Object(defs);
    }
    value
}

/// The rows of a kind's parameter table, in the schema's order.
pub(crate) fn param_rows(schema: &Value) -> Vec<ParamRow> {
    let empty = Map::new();
    let defs = schema
        .get("definitions")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let root = resolve(schema, defs);
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| ParamRow {
            name: name.clone(),
            required: required.contains(&name.as_str()),
            ty: type_text(p, defs),
            default: match p.get("default") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "-".into(),
            },
            meaning: meaning(p, defs),
        })
        .collect()
}

/// The schema a `$ref` names (itself when it names none).
fn resolve<'a>(v: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| defs.get(name))
        .unwrap_or(v)
}

/// The alternatives of an `anyOf`/`oneOf`, without the `null` of an optional value.
fn alternatives(v: &Value) -> Option<Vec<&Value>> {
    let alts = v.get("anyOf").or_else(|| v.get("oneOf"))?.as_array()?;
    Some(
        alts.iter()
            .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            .collect(),
    )
}

/// A short type: `integer`, `number`, `path`, `a|b|c` for a choice, `list of …`, `map`.
fn type_text(v: &Value, defs: &Map<String, Value>) -> String {
    let v = resolve(v, defs);
    if v.get(crate::steps::INPUT_MARK).is_some() {
        return "path".into();
    }
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|e| {
                e.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect::<Vec<_>>()
            .join("|");
    }
    if let Some(c) = v.get("const") {
        return c
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| c.to_string());
    }
    if let Some(alts) = alternatives(v) {
        let mut parts: Vec<String> = Vec::new();
        for a in alts {
            let t = type_text(a, defs);
            if !parts.contains(&t) {
                parts.push(t);
            }
        }
        let all_consts = parts.iter().all(|p| !p.contains(' '));
        return parts.join(if all_consts { "|" } else { " or " });
    }
    if let Some(a) = v.get("allOf").and_then(Value::as_array)
        && a.len() == 1
    {
        return type_text(&a[0], defs);
    }
    let one = |t: &str| -> String {
        match t {
            "array" => match v.get("items") {
                Some(items) => format!("list of {}", type_text(items, defs)),
                None => "list".into(),
            },
            "object" => "map".into(),
            "boolean" => "true|false".into(),
            other => other.into(),
        }
    };
    match v.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

/// A parameter's description on one line; for a choice without one, the choices' own.
fn meaning(v: &Value, defs: &Map<String, Value>) -> String {
    let text = v
        .get("description")
        .or_else(|| resolve(v, defs).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_of_every_kind_has_a_type_and_a_meaning() {
        let mut missing = Vec::new();
        for k in steps::KINDS {
            let rows = param_rows(&schema_of(k));
            assert!(
                !rows.is_empty(),
                "{} has no parameters in its table",
                k.name
            );
            for r in rows {
                if r.meaning.is_empty() || r.ty.is_empty() || r.ty == "any" && r.name != "metrics" {
                    missing.push(format!("{}.{} ({})", k.name, r.name, r.ty));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "parameters without a type or a description (a doc comment on the field): {missing:?}"
        );
    }

    #[test]
    fn the_table_reads_types_defaults_and_choices() {
        let rows = param_rows(&schema_of(steps::find("model.finetune").expect("kind")));
        let row = |n: &str| rows.iter().find(|r| r.name == n).expect(n);
        assert_eq!(row("lr").ty, "number");
        assert!(!row("lr").meaning.is_empty());
        assert_eq!(row("batch_size").default, "16");
        assert_eq!(row("device").default, "cpu");
        assert!(row("task").ty.contains("seq-cls|"), "{}", row("task").ty);
        assert_eq!(row("train").ty, "path");
        assert!(row("train").required);
    }
}
