//! `data.keywords`: multi-label targets from free text by a rule written in the workflow:
//! each label is given by the words that call for it (case-insensitive substrings of the
//! text), and a row gets every label one of whose words its text contains. Rows whose text
//! matches `exclude` are dropped (an annotation that says nothing, such as "hypothetical
//! protein", is not the absence of a function).

use indexmap::IndexMap;
use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{params_of, resolve, take_rows, text_column};
use crate::steps::table::{TABLE_FILE, TableMeta, read_table, write_table_with};
use crate::steps::{InputPath, StepContext, StepError, StepKind, params, write_metrics};

/// Parameters of `data.keywords`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeywordsParams {
    /// The table.
    input: InputPath,
    /// The column of text the rule reads (e.g. `product`).
    column: String,
    /// Each label and the words that give it, e.g. `{ribosomal: [ribosomal], transport:
    /// [transport, permease]}`; matched case-insensitively anywhere in the text.
    labels: IndexMap<String, Vec<String>>,
    /// Drop rows whose text contains any of these words.
    #[serde(default)]
    exclude: Vec<String>,
    /// The output column: the row's labels, sorted, joined by `separator` (empty: none).
    #[serde(default = "crate::steps::table::label_column")]
    output: String,
    /// What joins a row's labels in the output column.
    #[serde(default = "semicolon")]
    separator: String,
}

fn semicolon() -> String {
    ";".into()
}

/// The `data.keywords` kind.
pub static KIND: StepKind = StepKind {
    name: "data.keywords",
    version: 2,
    summary: "multi-label targets from a text column by a keyword rule: each label's words, case-insensitive; rows matching `exclude` dropped (output `table` with the labels `;`-joined in `output`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<KeywordsParams>(),
    check: |with| params::<KeywordsParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &KeywordsParams) -> Result<(), String> {
    if p.labels.is_empty() {
        return Err("`labels` is empty: give each label the words that call for it".into());
    }
    for (label, words) in &p.labels {
        if words.is_empty() || words.iter().any(|w| w.trim().is_empty()) {
            return Err(format!(
                "label `{label}`: give it at least one non-empty word"
            ));
        }
        if label.contains(&p.separator) {
            return Err(format!(
                "label `{label}` contains the separator `{}`",
                p.separator
            ));
        }
    }
    if p.separator.is_empty() {
        return Err("`separator` cannot be empty".into());
    }
    Ok(())
}

/// The labels of one text under the rule, sorted (one spelling of a label set, whatever
/// order the rule lists them in).
fn labels_of<'a>(text: &str, rule: &'a IndexMap<String, Vec<String>>) -> Vec<&'a str> {
    let text = text.to_lowercase();
    let mut labels: Vec<&str> = rule
        .iter()
        .filter(|(_, words)| words.iter().any(|w| text.contains(&w.to_lowercase())))
        .map(|(label, _)| label.as_str())
        .collect();
    labels.sort_unstable();
    labels
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: KeywordsParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let df = read_table(&path)?;
    let texts: Vec<String> = text_column(&df, &p.column, &path, "column")?
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect();
    let excluded = |t: &str| {
        let t = t.to_lowercase();
        p.exclude.iter().any(|w| t.contains(&w.to_lowercase()))
    };
    let keep: Vec<usize> = (0..texts.len()).filter(|&i| !excluded(&texts[i])).collect();
    let mut out = take_rows(&df, &keep)?;
    let sets: Vec<Vec<&str>> = keep
        .iter()
        .map(|&i| labels_of(&texts[i], &p.labels))
        .collect();
    let joined: Vec<String> = sets.iter().map(|s| s.join(&p.separator)).collect();
    if out.column(&p.output).is_ok() {
        out.drop_in_place(&p.output)?;
    }
    out.with_column(Column::new(p.output.as_str().into(), joined))?;
    write_table_with(&mut out, &ctx.out.join(TABLE_FILE), &meta)?;
    let mut counts = serde_json::Map::new();
    for label in p.labels.keys() {
        let n = sets.iter().filter(|s| s.contains(&label.as_str())).count();
        counts.insert(label.clone(), n.into());
    }
    let unlabelled = sets.iter().filter(|s| s.is_empty()).count();
    writeln!(
        ctx.log,
        "{} of {} rows kept ({} excluded); {unlabelled} with no label; per label: {}",
        keep.len(),
        texts.len(),
        texts.len() - keep.len(),
        serde_json::Value::Object(counts.clone())
    )?;
    write_metrics(
        ctx.out,
        &serde_json::json!({
            "rows": keep.len(),
            "excluded": texts.len() - keep.len(),
            "unlabelled": unlabelled,
            "labels": counts,
            "mean_labels": sets.iter().map(Vec::len).sum::<usize>() as f64 / keep.len().max(1) as f64,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_whose_word_occurs_applies() {
        let mut rule = IndexMap::new();
        rule.insert("trna".to_string(), vec!["tRNA".to_string()]);
        rule.insert(
            "synthase".to_string(),
            vec!["synthase".into(), "synthetase".into()],
        );
        rule.insert("transport".to_string(), vec!["permease".into()]);
        assert_eq!(
            labels_of("Alanyl tRNA Synthetase", &rule),
            ["synthase", "trna"]
        );
        assert_eq!(labels_of("Oligopeptide Permease", &rule), ["transport"]);
        assert!(labels_of("GTP Binding Protein", &rule).is_empty());
    }
}
