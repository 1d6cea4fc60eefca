//! `data.load`: FASTA / FASTQ / plain lines (streamed) or a table / Hugging Face dataset
//! directory into a sequence table, with windowing, reverse complements and alphabet checks.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Alphabet, params_of, resolve};
use crate::steps::table;
use crate::steps::table::{BATCH_ROWS, TABLE_FILE, TableMeta, TableWriter, write_table_with};
use crate::steps::write_metrics;
use crate::steps::{InputPath, StepContext, StepError, StepKind, params};

/// Input format of `data.load`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// By extension (`.gz` allowed for fasta, fastq and lines); a directory means `hf`.
    #[default]
    Auto,
    /// FASTA (`>id description` then sequence lines).
    Fasta,
    /// FASTQ (four lines per record).
    Fastq,
    /// One sequence per non-empty line.
    Lines,
    /// Comma-separated table with a header.
    Csv,
    /// Tab-separated table with a header.
    Tsv,
    /// Parquet table.
    Parquet,
    /// JSON lines (one object per line).
    Jsonl,
    /// A local Hugging Face dataset directory or hub-cache snapshot.
    Hf,
}

/// What to do with a record holding characters outside the alphabet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Stop with an error naming the file, record and position.
    #[default]
    Error,
    /// Drop the record (counted in `skipped`).
    Skip,
    /// Replace each invalid character with `N` (`X` for protein/any; counted in `masked_chars`).
    Mask,
}

/// Parameters of `data.load`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LoadParams {
    /// Input file or dataset directory (relative to the workdir).
    path: InputPath,
    /// Input format.
    #[serde(default)]
    format: Format,
    /// Column holding the sequences, for table inputs.
    #[serde(default = "default_column")]
    column: String,
    /// Column holding the ids, for table inputs (default: `id` when present, else the row number).
    #[serde(default)]
    id_column: Option<String>,
    /// For `hf` directories: only data files whose path contains this split name (e.g. `train`).
    #[serde(default)]
    split: Option<String>,
    /// Cut each sequence into windows of this many characters (ids become `id:start-end`, 1-based).
    #[serde(default)]
    window: Option<usize>,
    /// Distance between window starts (default: `window`, no overlap).
    #[serde(default)]
    stride: Option<usize>,
    /// Keep the last, shorter window instead of dropping it.
    #[serde(default)]
    keep_tail: bool,
    /// Also add the reverse complement of each record (or window), id suffixed `/rc`.
    #[serde(default)]
    reverse_complement: bool,
    /// Allowed characters (input is uppercased first, except for `text`). Default: `dna` for
    /// FASTA, FASTQ and lines; for tables, detected from the letters of the sequence column
    /// (most letters A/C/G/T/U/N: dna or rna; ambiguity codes are counted, not decisive).
    #[serde(default)]
    alphabet: Option<Alphabet>,
    /// The alphabet records are checked against: `alphabet`, or the one detected.
    #[serde(skip)]
    #[schemars(skip)]
    effective: Alphabet,
    /// What to do with characters outside the alphabet.
    #[serde(default)]
    on_invalid: OnInvalid,
    /// Drop records shorter than this (before windowing; counted in `too_short`).
    #[serde(default)]
    min_length: Option<usize>,
}

fn default_column() -> String {
    "sequence".into()
}

/// The `data.load` kind.
pub static KIND: StepKind = StepKind {
    name: "data.load",
    version: 2,
    summary: "load FASTA/FASTQ/lines/CSV/TSV/parquet/JSONL or a Hugging Face dataset dir into a sequence table (output `table`)",
    outputs: &[("table", TABLE_FILE)],
    schema: |g| g.subschema_for::<LoadParams>(),
    check: |with| params::<LoadParams>(with).and_then(|p| check(&p)),
    run,
};

fn check(p: &LoadParams) -> Result<(), String> {
    if p.window == Some(0) {
        return Err("`window` must be at least 1".into());
    }
    if p.stride == Some(0) {
        return Err("`stride` must be at least 1".into());
    }
    if p.stride.is_some() && p.window.is_none() {
        return Err("`stride` needs `window`".into());
    }
    if p.keep_tail && p.window.is_none() {
        return Err("`keep_tail` needs `window`".into());
    }
    let alphabet = p.alphabet.unwrap_or_default();
    if p.reverse_complement && p.alphabet.is_some() && !alphabet.is_nucleotide() {
        return Err(format!(
            "`reverse_complement` needs `alphabet: dna` or `rna`, not `{}`",
            alphabet.name()
        ));
    }
    if p.split.is_some() && !matches!(p.format, Format::Auto | Format::Hf) {
        return Err("`split` applies to `format: hf` (dataset directories) only".into());
    }
    Ok(())
}

/// Receives each output row: id and sequence.
type Emit<'a> = &'a mut dyn FnMut(String, &[u8]) -> Result<(), StepError>;
/// Receives each parsed record: 1-based index, id, first line, sequence.
pub type OnRecord<'a> =
    &'a mut dyn FnMut(usize, &str, usize, &mut Vec<u8>) -> Result<(), StepError>;

/// Figures collected while loading.
#[derive(Debug, Default)]
struct Counts {
    records: usize,
    rows: usize,
    bases: u64,
    min_len: Option<usize>,
    max_len: usize,
    skipped: usize,
    masked_records: usize,
    masked_chars: u64,
    too_short: usize,
    /// Letters kept that are not the alphabet's plain ones (`N`, ambiguity codes, `X`).
    ambiguous: u64,
}

/// Where a record came from, for messages.
struct Origin<'a> {
    file: &'a Path,
    index: usize,
    id: &'a str,
    line: Option<usize>,
}

impl Origin<'_> {
    fn describe(&self) -> String {
        let line = self
            .line
            .map(|l| format!(" (starting at line {l})"))
            .unwrap_or_default();
        format!(
            "{}: record `{}` (#{}){line}",
            self.file.display(),
            self.id,
            self.index
        )
    }
}

/// Checks, cleans and cuts records, passing output rows on.
struct Processor<'a> {
    p: &'a LoadParams,
    counts: Counts,
}

impl Processor<'_> {
    /// Handle one record; `emit(id, sequence)` receives every output row.
    fn record(&mut self, origin: &Origin, seq: &mut [u8], emit: Emit<'_>) -> Result<(), StepError> {
        self.counts.records += 1;
        let p = self.p;
        if p.effective.folds_case() {
            seq.make_ascii_uppercase();
        }
        if seq.is_empty() {
            if p.on_invalid == OnInvalid::Skip {
                self.counts.skipped += 1;
                return Ok(());
            }
            return Err(StepError::new(format!(
                "{} is empty; remove it or set `on_invalid: skip`",
                origin.describe()
            )));
        }
        if let Some(pos) = seq.iter().position(|&b| !p.effective.allows(b)) {
            match p.on_invalid {
                OnInvalid::Error => {
                    return Err(StepError::new(format!(
                        "{} position {}: invalid character {} for `alphabet: {}` (allowed: {}); fix the input, choose another `alphabet`, or set `on_invalid: skip` or `mask`",
                        origin.describe(),
                        pos + 1,
                        show_char(seq, pos),
                        p.effective.name(),
                        p.effective.describe()
                    )));
                }
                OnInvalid::Skip => {
                    self.counts.skipped += 1;
                    return Ok(());
                }
                OnInvalid::Mask => {
                    let mask = p.effective.mask();
                    let mut n = 0;
                    for b in seq[pos..].iter_mut() {
                        if !p.effective.allows(*b) {
                            *b = mask;
                            n += 1;
                        }
                    }
                    self.counts.masked_records += 1;
                    self.counts.masked_chars += n;
                }
            }
        }
        if p.min_length.is_some_and(|m| seq.len() < m) {
            self.counts.too_short += 1;
            return Ok(());
        }
        self.counts.ambiguous += seq
            .iter()
            .filter(|b| b.is_ascii_alphabetic() && !p.effective.plain(b.to_ascii_uppercase()))
            .count() as u64;
        match p.window {
            None => self.row(origin.id.to_string(), seq, emit),
            Some(w) => {
                for (a, b) in windows(seq.len(), w, p.stride.unwrap_or(w), p.keep_tail) {
                    self.row(format!("{}:{}-{}", origin.id, a + 1, b), &seq[a..b], emit)?;
                }
                Ok(())
            }
        }
    }

    fn row(&mut self, id: String, seq: &[u8], emit: Emit<'_>) -> Result<(), StepError> {
        let copies = if self.p.reverse_complement { 2 } else { 1 };
        let c = &mut self.counts;
        c.rows += copies;
        c.bases += (seq.len() * copies) as u64;
        c.min_len = Some(c.min_len.map_or(seq.len(), |m| m.min(seq.len())));
        c.max_len = c.max_len.max(seq.len());
        if self.p.reverse_complement {
            let rc = reverse_complement(seq, self.p.effective);
            let rc_id = format!("{id}/rc");
            emit(id, seq)?;
            emit(rc_id, &rc)
        } else {
            emit(id, seq)
        }
    }
}

/// The character at `pos`, quoted, or its code when it is not printable.
fn show_char(seq: &[u8], pos: usize) -> String {
    // Decode the full UTF-8 character starting at `pos` when possible.
    let rest = &seq[pos..seq.len().min(pos + 4)];
    let ch = match std::str::from_utf8(rest) {
        Ok(s) => s.chars().next(),
        Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()])
            .ok()
            .and_then(|s| s.chars().next()),
    };
    match ch {
        Some(c) if !c.is_control() && !c.is_whitespace() => format!("'{c}'"),
        _ => format!("byte 0x{:02X}", seq[pos]),
    }
}

/// Window bounds `[a, b)` over a sequence of length `len`.
pub fn windows(len: usize, window: usize, stride: usize, keep_tail: bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + window <= len {
        out.push((start, start + window));
        start += stride;
    }
    if keep_tail && start < len && out.last().is_none_or(|&(_, b)| b < len) {
        out.push((start, len));
    }
    out
}

/// Reverse complement (DNA: A↔T, C↔G; RNA: A↔U, C↔G; N and others unchanged).
pub fn reverse_complement(seq: &[u8], alphabet: Alphabet) -> Vec<u8> {
    let t = if alphabet == Alphabet::Rna {
        b'U'
    } else {
        b'T'
    };
    seq.iter()
        .rev()
        .map(|&b| match b {
            b'A' => t,
            b'T' | b'U' => b'A',
            b'C' => b'G',
            b'G' => b'C',
            other => other,
        })
        .collect()
}

/// Trim a line's end (`\n`, `\r`, spaces).
fn trim_end(line: &mut Vec<u8>) {
    while line.last().is_some_and(|b| b.is_ascii_whitespace()) {
        line.pop();
    }
}

fn io_err(file: &Path, e: std::io::Error) -> StepError {
    StepError::new(format!("{}: {e}", file.display()))
}

/// Stream FASTA records: `f(index, id, line, sequence)` per record.
pub fn read_fasta(mut r: impl BufRead, file: &Path, f: OnRecord<'_>) -> Result<(), StepError> {
    let mut line = Vec::new();
    let mut seq = Vec::new();
    let mut id: Option<(String, usize)> = None;
    let mut index = 0;
    let mut line_no = 0;
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(file, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        trim_end(&mut line);
        if line.first() == Some(&b'>') {
            if let Some((rid, l)) = id.take() {
                index += 1;
                f(index, &rid, l, &mut seq)?;
                seq.clear();
            }
            let header = String::from_utf8_lossy(&line[1..]);
            let name = header.split_whitespace().next().unwrap_or("").to_string();
            if name.is_empty() {
                return Err(StepError::new(format!(
                    "{}: line {line_no}: record #{} has no id after `>`; give every record a name",
                    file.display(),
                    index + 1
                )));
            }
            id = Some((name, line_no));
        } else if line.is_empty() || line.first() == Some(&b';') {
            continue;
        } else if id.is_none() {
            return Err(StepError::new(format!(
                "{}: line {line_no}: sequence data before the first `>` header; is this a FASTA file? (set `format:` otherwise)",
                file.display()
            )));
        } else {
            seq.extend_from_slice(&line);
        }
    }
    if let Some((rid, l)) = id {
        index += 1;
        f(index, &rid, l, &mut seq)?;
    }
    Ok(())
}

/// Stream FASTQ records (four lines each): `f(index, id, line, sequence)` per record.
pub fn read_fastq(mut r: impl BufRead, file: &Path, f: OnRecord<'_>) -> Result<(), StepError> {
    let mut header = Vec::new();
    let mut seq = Vec::new();
    let mut plus = Vec::new();
    let mut qual = Vec::new();
    let mut index = 0;
    let mut line_no = 0;
    let mut next = |buf: &mut Vec<u8>, line_no: &mut usize| -> Result<bool, StepError> {
        buf.clear();
        let n = r.read_until(b'\n', buf).map_err(|e| io_err(file, e))?;
        if n > 0 {
            *line_no += 1;
        }
        trim_end(buf);
        Ok(n > 0)
    };
    loop {
        // Skip blank lines between records.
        loop {
            if !next(&mut header, &mut line_no)? {
                return Ok(());
            }
            if !header.is_empty() {
                break;
            }
        }
        index += 1;
        let start = line_no;
        if header[0] != b'@' {
            return Err(StepError::new(format!(
                "{}: line {line_no}: record #{index} should start with `@id`, found {:?}; is this a FASTQ file? (set `format:` otherwise)",
                file.display(),
                String::from_utf8_lossy(&header[..header.len().min(40)])
            )));
        }
        let header_text = String::from_utf8_lossy(&header[1..]);
        let id = header_text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() {
            return Err(StepError::new(format!(
                "{}: line {line_no}: record #{index} has no id after `@`; give every record a name",
                file.display()
            )));
        }
        let truncated = || {
            StepError::new(format!(
                "{}: record `{id}` (#{index}) starting at line {start} is truncated: a FASTQ record has four lines (@id, sequence, +, quality)",
                file.display()
            ))
        };
        if !next(&mut seq, &mut line_no)? || !next(&mut plus, &mut line_no)? {
            return Err(truncated());
        }
        if plus.first() != Some(&b'+') {
            return Err(StepError::new(format!(
                "{}: line {line_no}: record `{id}` (#{index}) should have a `+` line here; multi-line FASTQ is not supported",
                file.display()
            )));
        }
        if !next(&mut qual, &mut line_no)? {
            return Err(truncated());
        }
        if qual.len() != seq.len() {
            return Err(StepError::new(format!(
                "{}: line {line_no}: record `{id}` (#{index}) has {} quality characters for {} bases; they must match",
                file.display(),
                qual.len(),
                seq.len()
            )));
        }
        f(index, &id, start, &mut seq)?;
    }
}

/// Stream one sequence per non-empty line: `f(index, id, line, sequence)`, id `lineN`.
pub fn read_lines(mut r: impl BufRead, file: &Path, f: OnRecord<'_>) -> Result<(), StepError> {
    let mut line = Vec::new();
    let mut index = 0;
    let mut line_no = 0;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)
            .map_err(|e| io_err(file, e))?
            == 0
        {
            return Ok(());
        }
        line_no += 1;
        trim_end(&mut line);
        let start = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if start == line.len() {
            continue;
        }
        line.drain(..start);
        index += 1;
        f(index, &format!("line{line_no}"), line_no, &mut line)?;
    }
}

/// The format to use for `path`.
fn detect(path: &Path, format: Format) -> Result<Format, StepError> {
    if format != Format::Auto {
        return Ok(format);
    }
    if path.is_dir() {
        return Ok(Format::Hf);
    }
    Ok(match table::ext(path).as_str() {
        "fa" | "fasta" | "fna" | "fas" | "ffn" | "faa" | "frn" | "mfa" => Format::Fasta,
        "fq" | "fastq" => Format::Fastq,
        "txt" | "seq" | "lines" => Format::Lines,
        "csv" => Format::Csv,
        "tsv" | "tab" => Format::Tsv,
        "parquet" => Format::Parquet,
        "jsonl" | "ndjson" | "json" => Format::Jsonl,
        other => {
            return Err(StepError::new(format!(
                "{}: cannot tell the format from the extension `.{other}`; set `format:` (fasta, fastq, lines, csv, tsv, parquet, jsonl, hf)",
                path.display()
            )));
        }
    })
}

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let mut p: LoadParams = params_of(ctx)?;
    check(&p).map_err(StepError::new)?;
    p.effective = p.alphabet.unwrap_or_default();
    let path = resolve(ctx, &p.path);
    if !path.exists() {
        return Err(StepError::new(format!(
            "{}: no such file or directory; check `path:`",
            path.display()
        )));
    }
    let format = detect(&path, p.format)?;
    let out = ctx.out.join(TABLE_FILE);
    let mut meta = TableMeta {
        source: Some(path.display().to_string()),
        alphabet_from: Some(
            if p.alphabet.is_some() {
                "declared"
            } else {
                "default"
            }
            .into(),
        ),
        ..TableMeta::default()
    };
    let streamed = matches!(format, Format::Fasta | Format::Fastq | Format::Lines);
    let df = match format {
        _ if streamed => None,
        Format::Hf => Some(read_dataset_dir(&path, p.split.as_deref(), ctx)?),
        _ => Some(read_with_format(&path, format)?),
    };
    if let (Some(df), None) = (&df, p.alphabet) {
        // A table names no alphabet: its letters decide.
        let seqs = super::text_column(df, &p.column, &path, "column")?;
        let (alphabet, _) = super::detect_alphabet(seqs.iter().flatten());
        p.effective = alphabet;
        meta.alphabet_from = Some("detected".into());
    }
    meta.alphabet = Some(p.effective.name().into());
    let mut proc = Processor {
        p: &p,
        counts: Counts::default(),
    };
    match df {
        None => stream(&path, format, &mut proc, &out, ctx, &meta)?,
        Some(df) => {
            let mut table = process_table(&df, &path, &mut proc)?;
            meta.ambiguous = proc.counts.ambiguous;
            write_table_with(&mut table, &out, &meta)?;
        }
    }
    let c = &proc.counts;
    writeln!(
        ctx.log,
        "{}: {} records → {} rows, {} bases",
        path.display(),
        c.records,
        c.rows,
        c.bases
    )?;
    if c.records == 0 {
        return Err(StepError::new(format!(
            "{}: no sequences in it (read as {}: {}); check `path:` and `format:`",
            path.display(),
            format_name(format),
            match format {
                Format::Fasta => "an empty file, or no line starting with `>`",
                Format::Fastq => "an empty file, or no record starting with `@`",
                _ => "an empty file or a table without rows",
            }
        )));
    }
    if c.rows == 0 {
        return Err(StepError::new(format!(
            "{}: every one of its {} records was dropped ({} skipped for invalid characters, {} \
             shorter than `min_length`); loosen `on_invalid:`, `alphabet:` or `min_length:`",
            path.display(),
            c.records,
            c.skipped,
            c.too_short
        )));
    }
    let mean = if c.rows > 0 {
        c.bases as f64 / c.rows as f64
    } else {
        0.0
    };
    write_metrics(
        ctx.out,
        &serde_json::json!({
            "records": c.records,
            "rows": c.rows,
            "bases": c.bases,
            "min_length": c.min_len.unwrap_or(0),
            "max_length": c.max_len,
            "mean_length": mean,
            "skipped": c.skipped,
            "too_short": c.too_short,
            "masked_records": c.masked_records,
            "masked_chars": c.masked_chars,
            "alphabet": p.effective.name(),
            "alphabet_from": meta.alphabet_from,
            "ambiguous_letters": c.ambiguous,
        }),
    )
}

/// The YAML spelling of a format, for messages.
fn format_name(format: Format) -> &'static str {
    match format {
        Format::Auto => "auto",
        Format::Fasta => "fasta",
        Format::Fastq => "fastq",
        Format::Lines => "lines",
        Format::Csv => "csv",
        Format::Tsv => "tsv",
        Format::Parquet => "parquet",
        Format::Jsonl => "jsonl",
        Format::Hf => "hf",
    }
}

/// FASTA / FASTQ / lines → parquet, batch by batch.
fn stream(
    path: &Path,
    format: Format,
    proc: &mut Processor,
    out: &Path,
    ctx: &mut StepContext,
    meta: &TableMeta,
) -> Result<(), StepError> {
    let schema = Schema::from_iter([
        Field::new("id".into(), DataType::String),
        Field::new("sequence".into(), DataType::String),
    ]);
    let mut writer = TableWriter::create_with(out, &schema, meta)?;
    let mut ids: Vec<String> = Vec::new();
    let mut seqs: Vec<String> = Vec::new();
    let mut pending_bytes = 0usize;
    let flush = |ids: &mut Vec<String>,
                 seqs: &mut Vec<String>,
                 writer: &mut TableWriter|
     -> Result<(), StepError> {
        let n = ids.len();
        let df = DataFrame::new(
            n,
            vec![
                Column::new("id".into(), std::mem::take(ids)),
                Column::new("sequence".into(), std::mem::take(seqs)),
            ],
        )?;
        writer.write(&df)
    };
    let cancelled = ctx.cancelled;
    let reader = table::open_text(path)?;
    let mut on_record = |index: usize, id: &str, line: usize, seq: &mut Vec<u8>| {
        if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StepError::new("cancelled"));
        }
        let origin = Origin {
            file: path,
            index,
            id,
            line: Some(line),
        };
        proc.record(&origin, seq, &mut |id, s| {
            // Valid ASCII after the alphabet check (`any` allows non-ASCII: keep it lossless).
            seqs.push(String::from_utf8_lossy(s).into_owned());
            ids.push(id);
            pending_bytes += s.len();
            if ids.len() >= BATCH_ROWS || pending_bytes >= 64 << 20 {
                flush(&mut ids, &mut seqs, &mut writer)?;
                pending_bytes = 0;
            }
            Ok(())
        })
    };
    match format {
        Format::Fasta => read_fasta(reader, path, &mut on_record)?,
        Format::Fastq => read_fastq(reader, path, &mut on_record)?,
        _ => read_lines(reader, path, &mut on_record)?,
    }
    if !ids.is_empty() {
        flush(&mut ids, &mut seqs, &mut writer)?;
    }
    writer.finish()?;
    Ok(())
}

fn read_with_format(path: &Path, format: Format) -> Result<DataFrame, StepError> {
    let as_ext = match format {
        Format::Csv => "csv",
        Format::Tsv => "tsv",
        Format::Parquet => "parquet",
        _ if table::ext(path) == "json" => "json",
        _ => "jsonl",
    };
    table::read_table_as(path, as_ext)
}

/// Data files of a Hugging Face dataset directory (or hub-cache snapshot), optionally only
/// those whose relative path mentions `split`.
pub fn dataset_files(dir: &Path, split: Option<&str>) -> Result<Vec<PathBuf>, StepError> {
    let mut all = Vec::new();
    walk(dir, &mut all)?;
    all.sort();
    const META: &[&str] = &[
        "dataset_info.json",
        "dataset_infos.json",
        "dataset_dict.json",
        "state.json",
        "config.json",
    ];
    let is_data = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        !META.contains(&name.as_str())
            && matches!(
                table::ext(p).as_str(),
                "parquet" | "csv" | "tsv" | "jsonl" | "ndjson" | "json"
            )
    };
    let data: Vec<PathBuf> = all.iter().filter(|p| is_data(p)).cloned().collect();
    let chosen: Vec<PathBuf> = match split {
        None => data.clone(),
        Some(s) => data
            .iter()
            .filter(|p| {
                p.strip_prefix(dir)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .to_lowercase()
                    .contains(&s.to_lowercase())
            })
            .cloned()
            .collect(),
    };
    if chosen.is_empty() {
        let rel = |v: &[PathBuf]| {
            let mut names: Vec<String> = v
                .iter()
                .take(20)
                .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                .collect();
            if v.len() > 20 {
                names.push(format!("… {} more", v.len() - 20));
            }
            if names.is_empty() {
                "nothing".to_string()
            } else {
                names.join(", ")
            }
        };
        let arrow = all.iter().any(|p| table::ext(p) == "arrow");
        let hint = if arrow {
            "; `.arrow` files (from `datasets.save_to_disk`) are not supported: export with `ds.to_parquet(...)`"
        } else {
            ""
        };
        return Err(StepError::new(match split {
            Some(s) if !data.is_empty() => format!(
                "{}: no data file has `{s}` in its path (found: {}); check `split:`",
                dir.display(),
                rel(&data)
            ),
            _ => format!(
                "{}: no data files (parquet, csv, tsv, jsonl, json) in this directory; found: {}{hint}",
                dir.display(),
                rel(&all)
            ),
        }));
    }
    Ok(chosen)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StepError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        // `metadata` follows symlinks: hub-cache snapshots link into `blobs/`.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !hidden && out.len() < 100_000 {
                walk(&path, out)?;
            }
        } else if !hidden {
            out.push(path);
        }
    }
    Ok(())
}

fn read_dataset_dir(
    dir: &Path,
    split: Option<&str>,
    ctx: &mut StepContext,
) -> Result<DataFrame, StepError> {
    let files = dataset_files(dir, split)?;
    let mut frames = Vec::new();
    for f in &files {
        writeln!(ctx.log, "reading {}", f.display())?;
        frames.push(table::read_table(f)?);
    }
    super::concat::union_frames(frames)
}

/// Table input → output table with `id`, `sequence` first and the other columns kept.
fn process_table(
    df: &DataFrame,
    path: &Path,
    proc: &mut Processor,
) -> Result<DataFrame, StepError> {
    let p = proc.p;
    let seqs = super::text_column(df, &p.column, path, "column")?;
    let ids: Vec<String> = match &p.id_column {
        Some(c) => super::column_as_strings(df, c, path, "id_column")?,
        None if df.column("id").is_ok() => super::column_as_strings(df, "id", path, "id_column")?,
        None => (1..=df.height()).map(|i| i.to_string()).collect(),
    };
    let mut src: Vec<usize> = Vec::new();
    let mut out_ids: Vec<String> = Vec::new();
    let mut out_seqs: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        buf.clear();
        buf.extend_from_slice(s.unwrap_or("").trim().as_bytes());
        let origin = Origin {
            file: path,
            index: i + 1,
            id: &ids[i],
            line: None,
        };
        proc.record(&origin, &mut buf, &mut |id, seq| {
            src.push(i);
            out_ids.push(id);
            out_seqs.push(String::from_utf8_lossy(seq).into_owned());
            Ok(())
        })?;
    }
    let mut rest = df.clone();
    for name in ["id", "sequence", p.column.as_str()]
        .into_iter()
        .chain(p.id_column.as_deref())
    {
        if rest.column(name).is_ok() {
            rest.drop_in_place(name)?;
        }
    }
    let mut table = super::take_rows(&rest, &src)?;
    let n = out_ids.len();
    table.insert_column(0, Column::new("id".into(), out_ids))?;
    table.insert_column(1, Column::new("sequence".into(), out_seqs))?;
    debug_assert_eq!(table.height(), n);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Recs = Vec<(usize, String, usize, String)>;
    type Reader = fn(&[u8], &Path, OnRecord<'_>) -> Result<(), StepError>;

    fn collect(reader: Reader, text: &str) -> Result<Recs, StepError> {
        let mut v = Vec::new();
        reader(text.as_bytes(), Path::new("in.fa"), &mut |i, id, l, s| {
            v.push((i, id.to_string(), l, String::from_utf8(s.clone()).unwrap()));
            Ok(())
        })?;
        Ok(v)
    }

    fn fasta(text: &str) -> Result<Recs, StepError> {
        collect(|r, f, cb| read_fasta(r, f, cb), text)
    }

    fn fastq(text: &str) -> Result<Recs, StepError> {
        collect(|r, f, cb| read_fastq(r, f, cb), text)
    }

    #[test]
    fn fasta_edge_cases() {
        let r = fasta(">a desc here\r\nAC\r\ngt\n\n>b\n>c\nNNN").unwrap();
        assert_eq!(
            r,
            vec![
                (1, "a".into(), 1, "ACgt".into()),
                (2, "b".into(), 5, "".into()),
                (3, "c".into(), 6, "NNN".into()),
            ]
        );
        assert!(fasta("").unwrap().is_empty());
        assert_eq!(fasta(";comment\n>x\nA").unwrap().len(), 1);
        let e = fasta("ACGT\n>x\nA").unwrap_err().message;
        assert!(
            e.contains("line 1") && e.contains("before the first"),
            "{e}"
        );
        let e = fasta(">x\nA\n> \nC").unwrap_err().message;
        assert!(e.contains("line 3") && e.contains("#2"), "{e}");
    }

    #[test]
    fn fastq_edge_cases() {
        let r = fastq("@r1 x\nACGT\n+\nIIII\n\n@r2\nGG\n+r2\nII\n").unwrap();
        assert_eq!(
            r,
            vec![
                (1, "r1".into(), 1, "ACGT".into()),
                (2, "r2".into(), 6, "GG".into())
            ]
        );
        let e = fastq("@r1\nACGT\n+\nIII\n").unwrap_err().message;
        assert!(e.contains("3 quality characters for 4 bases"), "{e}");
        let e = fastq("@r1\nACGT\n").unwrap_err().message;
        assert!(e.contains("truncated"), "{e}");
        let e = fastq(">r1\nACGT\n+\nIIII\n").unwrap_err().message;
        assert!(e.contains("line 1") && e.contains("`@id`"), "{e}");
        let e = fastq("@r1\nACGT\nIIII\nIIII\n").unwrap_err().message;
        assert!(e.contains("`+` line"), "{e}");
    }

    #[test]
    fn lines_skip_blanks_and_trim() {
        let r = collect(|r, f, cb| read_lines(r, f, cb), "ACGT\n\n  GG \n").unwrap();
        assert_eq!(
            r,
            vec![
                (1, "line1".into(), 1, "ACGT".into()),
                (2, "line3".into(), 3, "GG".into())
            ]
        );
    }

    #[test]
    fn windowing() {
        assert_eq!(windows(10, 4, 4, false), vec![(0, 4), (4, 8)]);
        assert_eq!(windows(10, 4, 4, true), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(windows(8, 4, 4, true), vec![(0, 4), (4, 8)]);
        assert_eq!(windows(10, 4, 3, false), vec![(0, 4), (3, 7), (6, 10)]);
        assert_eq!(windows(3, 4, 4, false), vec![]);
        assert_eq!(windows(3, 4, 4, true), vec![(0, 3)]);
        assert_eq!(windows(230_208, 1000, 1000, false).len(), 230);
    }

    #[test]
    fn reverse_complements() {
        assert_eq!(reverse_complement(b"AACGTN", Alphabet::Dna), b"NACGTT");
        assert_eq!(reverse_complement(b"AACGU", Alphabet::Rna), b"ACGUU");
    }

    fn process(
        p: LoadParams,
        id: &str,
        seq: &str,
    ) -> (Result<Vec<(String, String)>, String>, Counts) {
        let mut proc = Processor {
            p: &p,
            counts: Counts::default(),
        };
        let mut rows = Vec::new();
        let origin = Origin {
            file: Path::new("x.fa"),
            index: 2,
            id,
            line: Some(5),
        };
        let mut buf = seq.as_bytes().to_vec();
        let r = proc.record(&origin, &mut buf, &mut |id, s| {
            rows.push((id, String::from_utf8(s.to_vec()).unwrap()));
            Ok(())
        });
        (r.map(|_| rows).map_err(|e| e.message), proc.counts)
    }

    fn params(extra: serde_json::Value) -> LoadParams {
        let mut v = serde_json::json!({"path": "x"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut p: LoadParams = serde_json::from_value(v).unwrap();
        p.effective = p.alphabet.unwrap_or_default();
        p
    }

    #[test]
    fn prose_keeps_its_case_spaces_and_punctuation_but_not_control_characters() {
        let text = serde_json::json!({"alphabet": "text"});
        let (r, _) = process(
            params(text.clone()),
            "Gen1:3",
            "And God said, Let there be light.",
        );
        assert_eq!(
            r.unwrap(),
            vec![("Gen1:3".into(), "And God said, Let there be light.".into())]
        );
        let (r, _) = process(params(text), "Gen1:4", "And God\tsaw");
        let e = r.unwrap_err();
        assert!(e.contains("position 8: invalid character byte 0x09"), "{e}");
        assert!(e.contains("anything but control characters"), "{e}");
    }

    #[test]
    fn invalid_character_policies() {
        let (r, _) = process(params(serde_json::json!({})), "chr1", "ACGTXAC");
        let e = r.unwrap_err();
        assert!(
            e.contains(
                "x.fa: record `chr1` (#2) (starting at line 5) position 5: invalid character 'X'"
            ),
            "{e}"
        );
        let (r, c) = process(
            params(serde_json::json!({"on_invalid": "skip"})),
            "a",
            "ACRYT",
        );
        assert_eq!(r.unwrap(), vec![]);
        assert_eq!(c.skipped, 1);
        let (r, c) = process(
            params(serde_json::json!({"on_invalid": "mask"})),
            "a",
            "acRyt",
        );
        assert_eq!(r.unwrap(), vec![("a".into(), "ACNNT".into())]);
        assert_eq!((c.masked_records, c.masked_chars), (1, 2));
        let (r, _) = process(params(serde_json::json!({"alphabet": "rna"})), "a", "ACGU");
        assert!(r.is_ok());
        let (r, _) = process(
            params(serde_json::json!({"alphabet": "protein"})),
            "p",
            "MKV*",
        );
        assert!(r.is_ok());
        let (r, c) = process(
            params(serde_json::json!({"alphabet": "protein", "on_invalid": "mask"})),
            "p",
            "MK1",
        );
        assert_eq!(r.unwrap()[0].1, "MKX");
        assert_eq!(c.masked_chars, 1);
        let (r, _) = process(params(serde_json::json!({})), "e", "");
        assert!(r.unwrap_err().contains("is empty"));
        let (r, c) = process(params(serde_json::json!({"on_invalid": "skip"})), "e", "");
        assert!(r.unwrap().is_empty() && c.skipped == 1);
        let (r, _) = process(params(serde_json::json!({})), "u", "ACé");
        assert!(r.unwrap_err().contains("'é'"));
    }

    #[test]
    fn windows_and_rc_rows() {
        let (r, c) = process(
            params(serde_json::json!({"window": 4, "reverse_complement": true})),
            "s",
            "AACCGGTTA",
        );
        assert_eq!(
            r.unwrap(),
            vec![
                ("s:1-4".into(), "AACC".into()),
                ("s:1-4/rc".into(), "GGTT".into()),
                ("s:5-8".into(), "GGTT".into()),
                ("s:5-8/rc".into(), "AACC".into()),
            ]
        );
        assert_eq!((c.records, c.rows, c.bases), (1, 4, 16));
        let (r, c) = process(params(serde_json::json!({"min_length": 10})), "s", "ACGT");
        assert!(r.unwrap().is_empty());
        assert_eq!(c.too_short, 1);
    }

    #[test]
    fn checks_parameters() {
        assert!(check(&params(serde_json::json!({"window": 0}))).is_err());
        assert!(check(&params(serde_json::json!({"stride": 5}))).is_err());
        assert!(
            check(&params(
                serde_json::json!({"alphabet": "protein", "reverse_complement": true})
            ))
            .is_err()
        );
        assert!(check(&params(serde_json::json!({"window": 10, "stride": 5}))).is_ok());
    }

    #[test]
    fn dataset_dir_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("README.md"), "x").unwrap();
        std::fs::write(d.path().join("data/train-00000.csv"), "sequence\nACGT\n").unwrap();
        std::fs::write(d.path().join("data/test-00000.csv"), "sequence\nGG\n").unwrap();
        std::fs::write(d.path().join("dataset_info.json"), "{}").unwrap();
        assert_eq!(dataset_files(d.path(), None).unwrap().len(), 2);
        let t = dataset_files(d.path(), Some("train")).unwrap();
        assert!(t[0].ends_with("data/train-00000.csv") && t.len() == 1);
        let e = dataset_files(d.path(), Some("valid")).unwrap_err().message;
        assert!(e.contains("no data file has `valid`"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::write(empty.path().join("data-00000-of-00001.arrow"), "x").unwrap();
        let e = dataset_files(empty.path(), None).unwrap_err().message;
        assert!(
            e.contains("found: data-00000-of-00001.arrow") && e.contains("to_parquet"),
            "{e}"
        );
    }
}
