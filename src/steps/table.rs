//! Sequence tables shared by the data and tokenizer kinds: parquet files with an `id` and a
//! `sequence` column (other columns, such as `label` or `split`, ride along), read and written
//! in batches so a big corpus never has to fit in memory at once.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

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

fn ext(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_string();
    name.rsplit('.').next().unwrap_or("").to_string()
}

/// Read a whole table: parquet, CSV, TSV or JSON lines, by file extension.
pub fn read_table(path: &Path) -> Result<DataFrame, StepError> {
    let what = |e: PolarsError| StepError::new(format!("{}: {e}", path.display()));
    match ext(path).as_str() {
        "parquet" => {
            let file =
                File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
            ParquetReader::new(file).finish().map_err(what)
        }
        "csv" | "tsv" => {
            let sep = if ext(path) == "tsv" { b'\t' } else { b',' };
            CsvReadOptions::default()
                .with_has_header(true)
                .with_parse_options(CsvParseOptions::default().with_separator(sep))
                .try_into_reader_with_file_path(Some(path.to_path_buf()))
                .and_then(|r| r.finish())
                .map_err(what)
        }
        "jsonl" | "ndjson" => {
            let file =
                File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
            JsonReader::new(file)
                .with_json_format(JsonFormat::JsonLines)
                .finish()
                .map_err(what)
        }
        other => Err(StepError::new(format!(
            "{}: cannot read a table from `.{other}` files (use parquet, csv, tsv or jsonl)",
            path.display()
        ))),
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
        let file =
            File::open(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        for line in reader.lines() {
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

/// Writes a parquet table batch by batch.
pub struct TableWriter {
    writer: polars::io::parquet::write::BatchedWriter<File>,
    pub rows: usize,
}

impl TableWriter {
    pub fn create(path: &Path, schema: &Schema) -> Result<TableWriter, StepError> {
        let file =
            File::create(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
        let writer = ParquetWriter::new(file)
            .with_row_group_size(Some(BATCH_ROWS))
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
    let file =
        File::create(path).map_err(|e| StepError::new(format!("{}: {e}", path.display())))?;
    ParquetWriter::new(file)
        .with_row_group_size(Some(BATCH_ROWS))
        .finish(df)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
