//! Sequence tables shared by the data and tokenizer kinds: parquet files with an `id` and a
//! `sequence` column (other columns, such as `label` or `split`, ride along), read and written
//! in batches so a big corpus never has to fit in memory at once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::StepError;

/// File name of a step's main table output.
pub const TABLE_FILE: &str = "table.parquet";
/// Rows per parquet row group and per batch when streaming.
pub const BATCH_ROWS: usize = 16_384;

impl From<PolarsError> for StepError {
    fn from(e: PolarsError) -> StepError {
        StepError::new(e.to_string())
    }
}

/// A file opened for buffered reading, decompressed when its name ends in `.gz`.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>, StepError> {
    let file = File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    Ok(if is_gz(path) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    })
}

fn is_gz(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Lowercase extension of a file name, ignoring a final `.gz`.
pub fn ext(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    match name.rsplit_once('.') {
        Some((_, e)) => e.to_string(),
        None => String::new(),
    }
}

/// Read a whole table file: parquet, CSV, TSV, JSON lines or a JSON array (text formats may be
/// gzipped). Errors name the file and say what to check.
pub fn read_table(path: &Path) -> Result<DataFrame, StepError> {
    read_table_as(path, &ext(path))
}

/// Read a whole table file as if its extension were `e` (`csv`, `tsv`, `parquet`, `jsonl`, `json`).
pub fn read_table_as(path: &Path, e: &str) -> Result<DataFrame, StepError> {
    let fail = |e: PolarsError| {
        StepError::new(format!(
            "{}: cannot read as a table: {e} (check that every row has the same number of fields as the header)",
            path.display()
        ))
    };
    if e == "parquet" {
        let file =
            File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        return ParquetReader::new(file).finish().map_err(fail);
    }
    let mut bytes = Vec::new();
    open_text(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    let cursor = std::io::Cursor::new(bytes);
    match e {
        "csv" | "tsv" => {
            let sep = if e == "tsv" { b'\t' } else { b',' };
            let ragged = ragged_row(cursor.get_ref(), sep);
            CsvReadOptions::default()
                .with_has_header(true)
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .into_reader_with_file_handle(cursor)
                .finish()
                .map_err(|e| match ragged {
                    Some((line, got, want)) => StepError::new(format!(
                        "{}: line {line} has {got} fields but the header has {want}; fix that row (quote fields that contain the separator)",
                        path.display()
                    )),
                    None => fail(e),
                })
        }
        "jsonl" | "ndjson" => JsonReader::new(cursor)
            .with_json_format(JsonFormat::JsonLines)
            .finish()
            .map_err(fail),
        "json" => JsonReader::new(cursor)
            .with_json_format(JsonFormat::Json)
            .finish()
            .map_err(fail),
        other => Err(StepError::new(format!(
            "{}: cannot read a table from `.{other}` files (use parquet, csv, tsv, jsonl or json)",
            path.display()
        ))),
    }
}

/// The first row of a CSV/TSV text whose field count differs from the header's: (1-based line,
/// fields, header fields). Quotes (RFC 4180) may hide separators and newlines.
pub fn ragged_row(text: &[u8], sep: u8) -> Option<(usize, usize, usize)> {
    let (mut line, mut start_line, mut fields, mut quoted) = (1, 1, 1, false);
    let mut header: Option<usize> = None;
    let mut empty = true;
    for &b in text {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                if !empty {
                    match header {
                        None => header = Some(fields),
                        Some(h) if h != fields => return Some((start_line, fields, h)),
                        _ => {}
                    }
                }
                line += 1;
                start_line = line;
                fields = 1;
                empty = true;
                continue;
            }
            b'\n' => line += 1,
            b'\r' => continue,
            _ if b == sep && !quoted => fields += 1,
            _ => {}
        }
        empty = false;
    }
    match header {
        Some(h) if !empty && h != fields => Some((start_line, fields, h)),
        _ => None,
    }
}

/// Call `f` with successive row batches of a parquet file (only `columns`, all when empty).
pub fn for_each_batch(
    path: &Path,
    columns: &[&str],
    mut f: impl FnMut(&DataFrame) -> Result<(), StepError>,
) -> Result<(), StepError> {
    if ext(path) != "parquet" {
        let df = read_table(path)?;
        let df = if columns.is_empty() {
            df
        } else {
            df.select(columns.iter().copied())?
        };
        return f(&df);
    }
    let open = || File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())));
    let rows = ParquetReader::new(open()?).num_rows()?;
    let cols = (!columns.is_empty()).then(|| columns.iter().map(|c| c.to_string()).collect());
    let mut offset = 0;
    while offset < rows {
        let df = ParquetReader::new(open()?)
            .with_columns(cols.clone())
            .with_slice(Some((offset, BATCH_ROWS)))
            .finish()?;
        f(&df)?;
        offset += BATCH_ROWS;
    }
    Ok(())
}

/// Call `f` with every non-null value of a string column of a table, or every non-empty line of
/// a text file (`.txt`, the tutorial's one-sequence-per-line format; gzip allowed).
pub fn for_each_sequence(
    path: &Path,
    column: &str,
    mut f: impl FnMut(&str),
) -> Result<(), StepError> {
    if ext(path) == "txt" {
        for line in open_text(path)?.lines() {
            let line = line.map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
            let line = line.trim();
            if !line.is_empty() {
                f(line);
            }
        }
        return Ok(());
    }
    for_each_batch(path, &[column], |df| {
        let col = df
            .column(column)
            .map_err(|_| StepError::new(format!("{}: no column `{column}`", path.display())))?;
        let strings = col.str().map_err(|_| {
            StepError::new(format!("{}: column `{column}` is not text", path.display()))
        })?;
        for s in strings.iter().flatten() {
            f(s);
        }
        Ok(())
    })
}

/// What a sequence table knows beyond its columns, kept in its parquet file's key-value
/// metadata (under [`META_KEY`]) so every data kind hands it on and consumers read it: the
/// alphabet of its sequences and where its rows came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableMeta {
    /// The alphabet of the sequences (`dna`, `rna`, `protein`, `any`, `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<String>,
    /// How the alphabet was decided: `declared` (a step's `alphabet:`) or `detected` (from the
    /// letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet_from: Option<String>,
    /// Letters that are ambiguity codes or outside the alphabet, counted where it was decided.
    #[serde(default)]
    pub ambiguous: u64,
    /// The user's file the rows came from (what errors about rows name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For a table made row for row from another (embeddings, predictions): that table's
    /// [`table_identity`], so scores on one test table are known to be on one test table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_of: Option<String>,
}

/// The identity of a table's rows: the one it records (`rows_of`, a table made row for row
/// from another), else the blake3 of its bytes (16 hex digits), so one cached table, read by
/// any step, has one identity.
pub fn table_identity(path: &Path) -> Result<String, StepError> {
    if let Some(id) = TableMeta::read(path).rows_of {
        return Ok(id);
    }
    let bytes =
        std::fs::read(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    Ok(blake3::hash(&bytes).to_hex()[..16].to_string())
}

/// The parquet metadata key of [`TableMeta`].
pub const META_KEY: &str = "dnaflow.table";

impl TableMeta {
    /// The metadata of a parquet table; empty for other files and tables dnaflow did not write.
    pub fn read(path: &Path) -> TableMeta {
        if ext(path) != "parquet" {
            return TableMeta::default();
        }
        let Ok(file) = File::open(path) else {
            return TableMeta::default();
        };
        let mut reader = ParquetReader::new(file);
        let Ok(meta) = reader.get_metadata() else {
            return TableMeta::default();
        };
        meta.key_value_metadata()
            .iter()
            .flatten()
            .find(|kv| kv.key == META_KEY)
            .and_then(|kv| kv.value.as_deref())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    }

    /// What a data kind's output table carries from its input `path`: the input's metadata,
    /// and the input itself as the rows' source when it names none (a user's own table).
    pub fn carried(path: &Path) -> TableMeta {
        let mut meta = TableMeta::read(path);
        if meta.source.is_none() {
            meta.source = Some(path.display().to_string());
        }
        // A data kind makes other rows: they are no longer the rows of the table named.
        meta.rows_of = None;
        meta
    }

    /// What a table made row for row from `path` carries (model.embed's embeddings, the
    /// predictions of a test table): its alphabet and source, and `path`'s identity.
    pub fn rows_of(path: &Path) -> Result<TableMeta, StepError> {
        Ok(TableMeta {
            rows_of: Some(table_identity(path)?),
            ..TableMeta::carried(path)
        })
    }

    /// What a table stacked from `paths` carries: every source, the alphabet they agree on.
    pub fn stacked<'a>(paths: impl IntoIterator<Item = &'a Path>) -> TableMeta {
        let metas: Vec<TableMeta> = paths.into_iter().map(TableMeta::carried).collect();
        let mut sources: Vec<String> = Vec::new();
        for s in metas.iter().filter_map(|m| m.source.clone()) {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        let agreed = |f: fn(&TableMeta) -> &Option<String>| {
            let first = metas.first().and_then(|m| f(m).clone());
            metas
                .iter()
                .all(|m| *f(m) == first)
                .then_some(first)
                .flatten()
        };
        TableMeta {
            alphabet: agreed(|m| &m.alphabet),
            alphabet_from: agreed(|m| &m.alphabet_from),
            ambiguous: metas.iter().map(|m| m.ambiguous).sum(),
            source: (!sources.is_empty()).then(|| sources.join(", ")),
            rows_of: None,
        }
    }

    /// The rows' origin for messages: ` (rows from FILE)` when known, else empty.
    pub fn origin(&self) -> String {
        match &self.source {
            Some(s) => format!(" (rows from {s})"),
            None => String::new(),
        }
    }

    fn key_value(&self) -> Option<polars::io::parquet::write::KeyValueMetadata> {
        (*self != TableMeta::default()).then(|| {
            polars::io::parquet::write::KeyValueMetadata::from_static(vec![(
                META_KEY.to_string(),
                serde_json::to_string(self).expect("metadata serializes"),
            )])
        })
    }
}

/// Writes a parquet table batch by batch.
pub struct TableWriter {
    writer: polars::io::parquet::write::BatchedWriter<File>,
    pub rows: usize,
}

impl TableWriter {
    pub fn create(path: &Path, schema: &Schema) -> Result<TableWriter, StepError> {
        TableWriter::create_with(path, schema, &TableMeta::default())
    }

    /// [`TableWriter::create`], the table carrying `meta`.
    pub fn create_with(
        path: &Path,
        schema: &Schema,
        meta: &TableMeta,
    ) -> Result<TableWriter, StepError> {
        let file =
            File::create(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        let writer = ParquetWriter::new(file)
            .with_row_group_size(Some(BATCH_ROWS))
            .with_key_value_metadata(meta.key_value())
            .batched(schema)?;
        Ok(TableWriter { writer, rows: 0 })
    }

    pub fn write(&mut self, df: &DataFrame) -> Result<(), StepError> {
        self.rows += df.height();
        self.writer.write_batch(df)?;
        Ok(())
    }

    pub fn finish(self) -> Result<usize, StepError> {
        self.writer.finish()?;
        Ok(self.rows)
    }
}

/// Write a whole table.
pub fn write_table(df: &mut DataFrame, path: &Path) -> Result<(), StepError> {
    write_table_with(df, path, &TableMeta::default())
}

/// Write a whole table carrying `meta`.
pub fn write_table_with(
    df: &mut DataFrame,
    path: &Path,
    meta: &TableMeta,
) -> Result<(), StepError> {
    let file =
        File::create(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    ParquetWriter::new(file)
        .with_row_group_size(Some(BATCH_ROWS))
        .with_key_value_metadata(meta.key_value())
        .finish(df)?;
    Ok(())
}

/// A labelled table read so that a bad value is reported where it sits: file, row, line, id
/// and column. CSV/TSV columns stay text, so every value reaches our parsers and a bad one is
/// named by its row (a failed column type would name none). Shared by the kinds that read
/// labels and targets: baselines, and the scoring of predictions.
pub struct LocatedTable {
    pub path: PathBuf,
    pub df: DataFrame,
    /// Lines before the first row (CSV/TSV: the header), so rows can be named by line too.
    header_lines: Option<usize>,
    /// The column whose value names a row in errors, when the table has it.
    id_column: String,
    /// Where its rows came from (a table a data kind wrote), for errors.
    pub meta: TableMeta,
}

impl LocatedTable {
    /// Read `path` (parquet, JSON lines, CSV or TSV, gzip allowed); rows may be none.
    pub fn read(path: &Path, id_column: &str) -> Result<LocatedTable, StepError> {
        let e = ext(path);
        let (df, header_lines) = match e.as_str() {
            "csv" | "tsv" => (
                read_text_table(path, if e == "tsv" { b'\t' } else { b',' })?,
                Some(1),
            ),
            "jsonl" | "ndjson" => (read_table(path)?, Some(0)),
            _ => (read_table(path)?, None),
        };
        Ok(LocatedTable {
            path: path.to_path_buf(),
            df,
            header_lines,
            id_column: id_column.to_string(),
            meta: TableMeta::read(path),
        })
    }

    /// Column `name`, which the step's parameter `param` chose.
    pub fn column(&self, name: &str, param: &str) -> Result<&Column, StepError> {
        self.df.column(name).map_err(|_| {
            StepError::new(format!(
                "{}: no column `{name}`; the columns are: {}; set `{param}:` to one of them",
                self.path.display(),
                self.df
                    .get_column_names()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// `file (rows from SOURCE): row N (line L, id X), column `c``: where a value sits, and
    /// the user's file its rows came from when a data kind made the table.
    pub fn at(&self, i: usize, column: &str) -> String {
        let mut place = Vec::new();
        if let Some(h) = self.header_lines {
            place.push(format!("line {}", i + 1 + h));
        }
        let id = self.df.column(&self.id_column).ok().and_then(|c| {
            let text = c.cast(&DataType::String).ok()?;
            text.str().ok()?.get(i).map(str::to_string)
        });
        if let Some(id) = id {
            place.push(format!("id `{id}`"));
        }
        let place = if place.is_empty() {
            String::new()
        } else {
            format!(" ({})", place.join(", "))
        };
        format!(
            "{}{}: row {}{place}, column `{column}`",
            self.path.display(),
            self.meta.origin(),
            i + 1
        )
    }

    /// Every value of a column as text; `what` names a missing one in the error.
    pub fn texts(&self, name: &str, param: &str, what: &str) -> Result<Vec<String>, StepError> {
        let col = self.column(name, param)?.cast(&DataType::String)?;
        col.str()?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.map(str::to_string).ok_or_else(|| {
                    StepError::new(format!(
                        "{}: empty; every row needs {what} (drop such rows with data.filter)",
                        self.at(i, name)
                    ))
                })
            })
            .collect()
    }

    /// Class labels of a column in one spelling ([`class_label`]), every row required.
    pub fn labels(&self, name: &str, param: &str) -> Result<Vec<String>, StepError> {
        let col = self.column(name, param)?.cast(&DataType::String)?;
        col.str()?
            .iter()
            .enumerate()
            .map(|(i, v)| match v.map(str::trim) {
                Some(s) if missing_value(s) => Err(StepError::new(format!(
                    "{}: `{s}` marks a missing value, not a class; every row needs a {param} \
                     (fix the row, or drop unlabelled rows with data.filter)",
                    self.at(i, name)
                ))),
                Some(s) if !s.is_empty() => Ok(class_label(s)),
                _ => Err(StepError::new(format!(
                    "{}: empty; every row needs a {param} (drop unlabelled rows with data.filter)",
                    self.at(i, name)
                ))),
            })
            .collect()
    }

    /// Numbers of a column, every row a finite number.
    pub fn numbers(&self, name: &str, param: &str) -> Result<Vec<f64>, StepError> {
        let col = self.column(name, param)?;
        let bad = |i: usize, what: String| StepError::new(format!("{}: {what}", self.at(i, name)));
        let values: Vec<Option<f64>> = if col.dtype().is_primitive_numeric() {
            col.cast(&DataType::Float64)?.f64()?.iter().collect()
        } else if col.dtype() == &DataType::String {
            let mut v = Vec::with_capacity(col.len());
            for (i, s) in col.str()?.iter().enumerate() {
                v.push(match s.map(str::trim) {
                    None | Some("") => None,
                    Some(s) => Some(s.parse::<f64>().map_err(|_| {
                        bad(
                            i,
                            format!(
                                "`{s}` is not a number; `{param}` must be numbers \
                                 (fix the row, or drop it with data.filter)"
                            ),
                        )
                    })?),
                });
            }
            v
        } else {
            return Err(StepError::new(format!(
                "{}: column `{name}` is {}, not numbers; set `{param}:` to a numeric column",
                self.path.display(),
                col.dtype()
            )));
        };
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(x) if x.is_finite() => Ok(x),
                Some(x) => Err(bad(i, format!("{x} is not a finite number"))),
                None => Err(bad(
                    i,
                    format!(
                        "empty; every row needs a {param} value (drop such rows with data.filter)"
                    ),
                )),
            })
            .collect()
    }
}

/// Default column of a labelled table's sequences (serde default of the kinds' `sequence:`).
pub fn sequence_column() -> String {
    "sequence".into()
}

/// Default column of a labelled table's labels or targets.
pub fn label_column() -> String {
    "label".into()
}

/// Default column of a table's row ids.
pub fn id_column() -> String {
    "id".into()
}

/// Read the `role` table (training, test, validation) of a fitted step; rows required.
pub fn read_role(path: &Path, id_column: &str, role: &str) -> Result<LocatedTable, StepError> {
    let table = LocatedTable::read(path, id_column)?;
    if table.df.height() == 0 {
        return Err(StepError::new(format!(
            "{}: the {role} table has no rows (is it an empty split?)",
            path.display()
        )));
    }
    Ok(table)
}

/// The classes of a training table's `labels` in scikit-learn's order; fewer than two is an
/// error naming the file and column.
pub fn training_classes(
    table: &LocatedTable,
    labels: &[String],
    column: &str,
) -> Result<Vec<String>, StepError> {
    let classes = crate::score::sorted_classes(labels.iter().map(String::as_str));
    if classes.len() < 2 {
        return Err(StepError::new(format!(
            "{}: every row of column `{column}` is `{}`; a classifier needs at least two classes",
            table.path.display(),
            classes.join("")
        )));
    }
    Ok(classes)
}

/// Class indices of `labels` among the training `classes`; a class the training table lacks
/// is an error naming the row.
pub fn class_indices(
    table: &LocatedTable,
    labels: &[String],
    classes: &[String],
    label_column: &str,
    train: &Path,
) -> Result<Vec<usize>, StepError> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            classes.iter().position(|c| c == l).ok_or_else(|| {
                StepError::new(format!(
                    "{}: class `{l}` does not occur in the training table {} (its classes: {}); \
                     a model can only predict classes it was trained on: split with \
                     `stratify: {label_column}` so every class reaches train, or drop those rows \
                     with data.filter",
                    table.at(i, label_column),
                    train.display(),
                    classes.join(", ")
                ))
            })
        })
        .collect()
}

/// Multi-label rows: each row's labels, `separator`-separated in the column; an empty or
/// missing value is a row with no label.
pub fn label_sets(
    table: &LocatedTable,
    column: &str,
    separator: &str,
) -> Result<Vec<Vec<String>>, StepError> {
    let col = table.column(column, "label")?.cast(&DataType::String)?;
    Ok(col
        .str()?
        .iter()
        .map(|v| {
            v.unwrap_or("")
                .split(separator)
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(class_label)
                .collect()
        })
        .collect())
}

/// The labels of a multi-label training table, sorted; none at all is an error naming it.
pub fn training_labels(
    table: &LocatedTable,
    sets: &[Vec<String>],
    column: &str,
) -> Result<Vec<String>, StepError> {
    let labels = crate::score::sorted_classes(sets.iter().flatten().map(String::as_str));
    if labels.is_empty() {
        return Err(StepError::new(format!(
            "{}: column `{column}` holds no label in any row; a multi-label model needs at \
             least one",
            table.path.display()
        )));
    }
    Ok(labels)
}

/// Each row's label set as one flag per training label; a label the training table lacks is
/// an error naming the row.
pub fn label_flags(
    table: &LocatedTable,
    sets: &[Vec<String>],
    labels: &[String],
    column: &str,
    train: &Path,
) -> Result<Vec<Vec<bool>>, StepError> {
    sets.iter()
        .enumerate()
        .map(|(i, set)| {
            let mut flags = vec![false; labels.len()];
            for l in set {
                let k = labels.iter().position(|c| c == l).ok_or_else(|| {
                    StepError::new(format!(
                        "{}: label `{l}` does not occur in the training table {} (its labels: \
                         {}); a model can only predict labels it was trained on",
                        table.at(i, column),
                        train.display(),
                        labels.join(", ")
                    ))
                })?;
                flags[k] = true;
            }
            Ok(flags)
        })
        .collect()
}

/// Per-base labels of a table: the label strings and their sequences, each label one character
/// per base (a dot-bracket structure, a DSSP state); another length is an error naming the row.
pub fn label_strings(
    table: &LocatedTable,
    label: &str,
    sequence: &str,
) -> Result<(Vec<String>, Vec<String>), StepError> {
    let labels = table.texts(label, "label", "a label string")?;
    let seqs = table.texts(sequence, "sequence", "a sequence")?;
    for (i, (l, s)) in labels.iter().zip(&seqs).enumerate() {
        let (nl, ns) = (l.chars().count(), s.chars().count());
        if nl != ns {
            return Err(StepError::new(format!(
                "{}: {nl} label characters for a sequence of {ns} bases; `{label}` needs one \
                 label character per base of `{sequence}`",
                table.at(i, label)
            )));
        }
    }
    Ok((labels, seqs))
}

/// The classes of per-base training labels: their characters in scikit-learn's order; fewer
/// than two is an error naming the file and column.
pub fn label_characters(
    table: &LocatedTable,
    labels: &[String],
    column: &str,
) -> Result<Vec<String>, StepError> {
    let chars: Vec<String> = labels
        .iter()
        .flat_map(|s| s.chars())
        .map(String::from)
        .collect();
    let classes = crate::score::sorted_classes(chars.iter().map(String::as_str));
    if classes.len() < 2 {
        return Err(StepError::new(format!(
            "{}: every base of column `{column}` is labelled `{}`; per-base classification \
             needs at least two label characters",
            table.path.display(),
            classes.join("")
        )));
    }
    Ok(classes)
}

/// The class index of every base of every label string among the training `classes`; a
/// character the training table lacks is an error naming the row.
pub fn base_classes(
    table: &LocatedTable,
    labels: &[String],
    classes: &[String],
    label_column: &str,
    train: &Path,
) -> Result<Vec<Vec<u32>>, StepError> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.chars()
                .map(|c| {
                    let c = c.to_string();
                    classes.iter().position(|k| *k == c).map(|k| k as u32).ok_or_else(|| {
                        StepError::new(format!(
                            "{}: label `{c}` does not occur in the training table {} (its label \
                             characters: {}); a model can only predict labels it was trained on",
                            table.at(i, label_column),
                            train.display(),
                            classes.join(" ")
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

/// Whether a cell spells a missing value as pandas and R write one (`NaN`, `NA`, `null`, …):
/// such a label is no class.
pub fn missing_value(s: &str) -> bool {
    ["nan", "na", "n/a", "null", "none", "<na>"]
        .iter()
        .any(|m| s.eq_ignore_ascii_case(m))
}

/// One spelling per class: `1`, `1.0` and ` 1 ` are the class `1`, so true labels, predictions
/// and `prob_1` columns agree whatever wrote them (a text, float or integer column).
pub fn class_label(s: &str) -> String {
    let t = s.trim();
    match t.parse::<f64>() {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => {
            format!("{}", x as i64)
        }
        _ => t.to_string(),
    }
}

/// A CSV/TSV file (gzip allowed) with every column read as text.
fn read_text_table(path: &Path, sep: u8) -> Result<DataFrame, StepError> {
    let mut bytes = Vec::new();
    open_text(path)?
        .read_to_end(&mut bytes)
        .map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    let ragged = ragged_row(&bytes, sep);
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_parse_options(CsvParseOptions::default().with_separator(sep))
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| {
            StepError::new(match ragged {
                Some((line, got, want)) => format!(
                    "{}: line {line} has {got} fields but the header has {want}; fix that row (quote fields that contain the separator)",
                    path.display()
                ),
                None => format!("{}: cannot read as a table: {e}", path.display()),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ragged_rows() {
        assert_eq!(ragged_row(b"a,b\n1,2\n3,4,5\n", b','), Some((3, 3, 2)));
        assert_eq!(ragged_row(b"a,b\n\"x,\ny\",2\n3\n", b','), Some((4, 1, 2)));
        assert_eq!(ragged_row(b"a,b\r\n1,2\r\n\n", b','), None);
        assert_eq!(ragged_row(b"a\tb\n1\t2", b'\t'), None);
        assert_eq!(ragged_row(b"a\tb\n1", b'\t'), Some((2, 1, 2)));
    }

    #[test]
    fn missing_labels_are_no_class() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.csv");
        std::fs::write(&path, "id,sequence,label\na,ACGT,+\nb,ACGA,NaN\n").unwrap();
        let t = LocatedTable::read(&path, "id").unwrap();
        let e = t.labels("label", "label").unwrap_err().message;
        assert!(
            e.contains("row 2 (line 3, id `b`)") && e.contains("`NaN`"),
            "{e}"
        );
        assert!(!missing_value("+") && missing_value("nan") && missing_value("N/A"));
    }

    #[test]
    fn extensions_ignore_gz() {
        assert_eq!(ext(Path::new("a/x.fa.gz")), "fa");
        assert_eq!(ext(Path::new("x.CSV")), "csv");
        assert_eq!(ext(Path::new("noext")), "");
    }

    #[test]
    fn parquet_round_trip_in_batches() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.parquet");
        let n = BATCH_ROWS + 10;
        let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        let seqs: Vec<String> = (0..n).map(|i| "ACGT".repeat(1 + i % 3)).collect();
        let mut df = df!("id" => ids, "sequence" => seqs).unwrap();
        let mut w = TableWriter::create(&path, df.schema()).unwrap();
        w.write(&df.slice(0, 100)).unwrap();
        w.write(&df.slice(100, n)).unwrap();
        assert_eq!(w.finish().unwrap(), n);
        let mut total = 0;
        let mut batches = 0;
        for_each_batch(&path, &["sequence"], |b| {
            total += b.height();
            batches += 1;
            assert_eq!(b.width(), 1);
            Ok(())
        })
        .unwrap();
        assert_eq!((total, batches), (n, 2));
        let mut bases = 0;
        for_each_sequence(&path, "sequence", |s| bases += s.len()).unwrap();
        assert_eq!(bases, (0..n).map(|i| 4 * (1 + i % 3)).sum::<usize>());
        write_table(&mut df, &path).unwrap();
        assert_eq!(read_table(&path).unwrap().height(), n);
    }
}
