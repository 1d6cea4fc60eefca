//! `data.concat`: stack tables (streamed batch by batch), union their columns (missing → null)
//! and optionally tag each row with the name of its source.

use std::path::PathBuf;

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{params_of, resolve};
use crate::steps::table;
use crate::steps::table::{TABLE_FILE, TableMeta, TableWriter, for_each_batch};
use crate::steps::write_metrics;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params};

/// One path or a list of paths.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Paths {
    /// A single table.
    One(InputPath),
    /// Several tables.
    Many(Vec<InputPath>),
}

impl Paths {
    /// The paths as a list.
    pub fn list(&self) -> Vec<InputPath> {
        match self {
            Paths::One(s) => vec![s.clone()],
            Paths::Many(v) => v.clone(),
        }
    }
}

/// Parameters of `data.concat`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConcatParams {
    /// Tables to stack, in order (upstream `table` outputs or files).
    inputs: Paths,
    /// One name per input: adds a `source` column with it.
    #[serde(default)]
    sources: Option<Vec<String>>,
}

/// The `data.concat` kind.
pub static KIND: StepKind = StepKind {
    name: "data.concat",
    version: 2,
    summary: "stack tables, union their columns, optional `source` column (output `table`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<ConcatParams>(),
    check: |with| params::<ConcatParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &ConcatParams) -> Result<(), String> {
    let n = p.inputs.list().len();
    if n == 0 {
        return Err("`inputs` is empty: give at least one table".into());
    }
    if let Some(s) = &p.sources
        && s.len() != n
    {
        return Err(format!(
            "`sources` has {} names for {n} inputs: give one name per input",
            s.len()
        ));
    }
    Ok(())
}

/// Union of schemas: columns in first-seen order; a column whose types differ becomes text.
pub fn union_schema<'a>(schemas: impl IntoIterator<Item = &'a Schema>) -> Schema {
    let mut out = Schema::default();
    for s in schemas {
        for (name, dtype) in s.iter() {
            match out.get(name) {
                None => {
                    out.with_column(name.clone(), dtype.clone());
                }
                Some(d) if d != dtype => {
                    // Null-typed columns (all missing) take the other type.
                    let t = if *d == DataType::Null {
                        dtype.clone()
                    } else if *dtype == DataType::Null {
                        d.clone()
                    } else {
                        DataType::String
                    };
                    out.with_column(name.clone(), t);
                }
                _ => {}
            }
        }
    }
    out
}

/// `df` with exactly the columns of `schema`, in order: cast where types differ, null where
/// missing.
pub fn conform(df: &DataFrame, schema: &Schema) -> Result<DataFrame, StepError> {
    let h = df.height();
    let mut cols = Vec::with_capacity(schema.len());
    for (name, dtype) in schema.iter() {
        cols.push(match df.column(name) {
            Ok(c) if c.dtype() == dtype => c.clone(),
            Ok(c) => c.cast(dtype)?,
            Err(_) => Column::full_null(name.clone(), h, dtype),
        });
    }
    Ok(DataFrame::new(h, cols)?)
}

/// Stack whole frames with their columns unioned.
pub fn union_frames(frames: Vec<DataFrame>) -> Result<DataFrame, StepError> {
    let schema = union_schema(frames.iter().map(|f| f.schema().as_ref()));
    let mut out = DataFrame::empty_with_schema(&schema);
    for f in &frames {
        out.vstack_mut_owned(conform(f, &schema)?)?;
    }
    out.rechunk_mut();
    Ok(out)
}

/// The schema of a table file without reading its rows (parquet), or of the whole table.
fn schema_of(path: &std::path::Path) -> Result<Schema, StepError> {
    if table::ext(path) == "parquet" {
        let file = std::fs::File::open(path)
            .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        let df = ParquetReader::new(file)
            .with_slice(Some((0, 0)))
            .finish()
            .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        return Ok(df.schema().as_ref().clone());
    }
    Ok(table::read_table(path)?.schema().as_ref().clone())
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: ConcatParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    let paths: Vec<PathBuf> = p.inputs.list().iter().map(|s| resolve(ctx, s)).collect();
    let mut schemas = Vec::new();
    for path in &paths {
        let mut s = schema_of(path)?;
        if p.sources.is_some() {
            s.with_column("source".into(), DataType::String);
        }
        schemas.push(s);
    }
    let schema = union_schema(schemas.iter());
    let mut writer = TableWriter::create_with(
        &ctx.out.join(TABLE_FILE),
        &schema,
        &TableMeta::stacked(paths.iter().map(PathBuf::as_path)),
    )?;
    let mut per_source = serde_json::Map::new();
    for (k, path) in paths.iter().enumerate() {
        let before = writer.rows;
        let name = p.sources.as_ref().map(|s| s[k].clone());
        let mut write = |df: &DataFrame| -> Result<(), StepError> {
            let mut df = df.clone();
            if let Some(n) = &name {
                if df.column("source").is_ok() {
                    df.drop_in_place("source")?;
                }
                df.with_column(Column::new_scalar(
                    "source".into(),
                    Scalar::new(DataType::String, AnyValue::StringOwned(n.as_str().into())),
                    df.height(),
                ))?;
            }
            writer.write(&conform(&df, &schema)?)
        };
        if table::ext(path) == "parquet" {
            for_each_batch(path, &[], &mut write)?;
        } else {
            write(&table::read_table(path)?)?;
        }
        let rows = writer.rows - before;
        writeln!(ctx.log, "{}: {rows} rows", path.display())?;
        let key = name.unwrap_or_else(|| format!("input{}", k + 1));
        per_source.insert(key, rows.into());
    }
    let rows = writer.finish()?;
    write_metrics(
        ctx.out,
        &serde_json::json!({
            "rows": rows,
            "inputs": paths.len(),
            "columns": schema.len(),
            "per_source": per_source,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_columns_with_nulls_and_text_for_conflicts() {
        let a = df!("id" => ["a"], "sequence" => ["AC"], "label" => [1i64]).unwrap();
        let b =
            df!("id" => ["b"], "sequence" => ["GG"], "label" => ["x"], "extra" => [2.5]).unwrap();
        let u = union_frames(vec![a, b]).unwrap();
        assert_eq!(u.height(), 2);
        assert_eq!(
            u.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["id", "sequence", "label", "extra"]
        );
        assert_eq!(u.column("label").unwrap().dtype(), &DataType::String);
        assert_eq!(u.column("extra").unwrap().null_count(), 1);
    }
}
