//! `data.filter`: keep the rows of a table that pass length, N-fraction, alphabet and column
//! equality tests, streamed batch by batch.

use std::collections::BTreeMap;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Alphabet, params_of, resolve};
use crate::steps::table;
use crate::steps::table::{TABLE_FILE, TableMeta, TableWriter, for_each_batch, write_table_with};
use crate::steps::write_metrics;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params};

/// Parameters of `data.filter`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FilterParams {
    /// The table to filter.
    input: InputPath,
    /// The sequence column.
    #[serde(default = "default_column")]
    column: String,
    /// Drop sequences shorter than this.
    #[serde(default)]
    min_length: Option<usize>,
    /// Drop sequences longer than this.
    #[serde(default)]
    max_length: Option<usize>,
    /// Drop sequences whose fraction of `N` is above this (0–1).
    #[serde(default)]
    max_n_fraction: Option<f64>,
    /// Drop sequences with characters outside this alphabet (case-insensitive).
    #[serde(default)]
    alphabet: Option<Alphabet>,
    /// Keep only rows whose columns equal these values, e.g. `{label: ei}`.
    #[serde(default, rename = "where")]
    where_: BTreeMap<String, serde_json::Value>,
}

fn default_column() -> String {
    "sequence".into()
}

/// The `data.filter` kind.
pub static KIND: StepKind = StepKind {
    name: "data.filter",
    version: 2,
    summary: "keep rows by length, N fraction, alphabet and `where` column values (output `table`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<FilterParams>(),
    check: |with| params::<FilterParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &FilterParams) -> Result<(), String> {
    if let (Some(a), Some(b)) = (p.min_length, p.max_length)
        && a > b
    {
        return Err(format!("`min_length` {a} is above `max_length` {b}"));
    }
    if p.max_n_fraction.is_some_and(|f| !(0.0..=1.0).contains(&f)) {
        return Err("`max_n_fraction` must be between 0 and 1".into());
    }
    for (k, v) in &p.where_ {
        if v.is_array() || v.is_object() {
            return Err(format!("`where.{k}` must be a single value"));
        }
    }
    Ok(())
}

/// Why a row is dropped (the first test it fails), or `None` to keep it.
fn verdict(p: &FilterParams, seq: Option<&str>) -> Option<&'static str> {
    let Some(seq) = seq else {
        return Some("null_sequence");
    };
    let len = seq.len();
    if p.min_length.is_some_and(|m| len < m) {
        return Some("too_short");
    }
    if p.max_length.is_some_and(|m| len > m) {
        return Some("too_long");
    }
    if let Some(f) = p.max_n_fraction {
        let n = seq
            .bytes()
            .filter(|b| b.eq_ignore_ascii_case(&b'N'))
            .count();
        if len > 0 && n as f64 / len as f64 > f {
            return Some("too_many_n");
        }
    }
    if let Some(a) = p.alphabet
        && seq.bytes().any(|b| !a.allows(b.to_ascii_uppercase()))
    {
        return Some("alphabet");
    }
    None
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: FilterParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let path = resolve(ctx, &p.input);
    let meta = TableMeta::carried(&path);
    let out = ctx.out.join(TABLE_FILE);
    let mut writer: Option<TableWriter> = None;
    let mut dropped: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut rows = 0;
    for_each_batch(&path, &[], |df| {
        rows += df.height();
        let seqs = super::text_column(df, &p.column, &path, "column")?;
        let mut keep: Vec<bool> = Vec::with_capacity(df.height());
        let mut why: Vec<Option<&'static str>> = seqs.iter().map(|s| verdict(&p, s)).collect();
        for (col, value) in &p.where_ {
            let values = super::column_as_strings(df, col, &path, &format!("where.{col}"))?;
            let want = value_text(value);
            for (w, v) in why.iter_mut().zip(&values) {
                if w.is_none() && *v != want {
                    *w = Some("where");
                }
            }
        }
        for w in why {
            match w {
                None => keep.push(true),
                Some(r) => {
                    *dropped.entry(r).or_default() += 1;
                    keep.push(false);
                }
            }
        }
        let mask = BooleanChunked::from_slice("keep".into(), &keep);
        let kept = df.filter(&mask)?;
        if writer.is_none() {
            writer = Some(TableWriter::create_with(&out, kept.schema(), &meta)?);
        }
        writer.as_mut().expect("created above").write(&kept)
    })?;
    let kept = match writer {
        Some(w) => w.finish()?,
        None => {
            // No rows at all: an empty table with the input's columns.
            let mut empty = table::read_table(&path)?.clear();
            write_table_with(&mut empty, &out, &meta)?;
            0
        }
    };
    let dropped_total: usize = dropped.values().sum();
    writeln!(ctx.log, "kept {kept} of {rows} rows; dropped {dropped:?}")?;
    write_metrics(
        ctx.out,
        &serde_json::json!({
            "rows": rows,
            "kept": kept,
            "dropped": dropped_total,
            "dropped_by": dropped,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_in_order() {
        let p: FilterParams = serde_json::from_value(serde_json::json!({
            "input": "x", "min_length": 3, "max_length": 6, "max_n_fraction": 0.25, "alphabet": "dna"
        }))
        .unwrap();
        assert_eq!(verdict(&p, Some("AC")), Some("too_short"));
        assert_eq!(verdict(&p, Some("ACGTACG")), Some("too_long"));
        assert_eq!(verdict(&p, Some("ANNT")), Some("too_many_n"));
        assert_eq!(verdict(&p, Some("ACXT")), Some("alphabet"));
        assert_eq!(verdict(&p, Some("acgt")), None);
        assert_eq!(verdict(&p, None), Some("null_sequence"));
    }
}
