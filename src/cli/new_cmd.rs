//! `dnaflow new classify|regress|token-cls TABLE`: a commented workflow for a user's own
//! labelled table — split, baselines, a model fine-tuned from a pretrained one and the same
//! model from scratch, scores — that `dnaflow validate` accepts and `dnaflow run` runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::Failure;
use crate::steps::table::read_table;

/// What the labels are.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// One class per sequence (accuracy, MCC, macro F1).
    Classify,
    /// One number per sequence (RMSE, Pearson).
    Regress,
    /// One label character per base (a dot-bracket structure, a DSSP state).
    TokenCls,
}

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// What the labels are.
    #[arg(value_enum)]
    task: Task,
    /// Your labelled table (CSV, TSV, parquet or JSON lines): a sequence column, a label
    /// column, optionally `id` and a `split` column of train / valid / test.
    table: PathBuf,
    /// Write the workflow here (default: print it).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The column of sequences.
    #[arg(long, default_value = "sequence")]
    sequence: String,
    /// The column of labels (classes, numbers or per-base label strings).
    #[arg(long, default_value = "label")]
    label: String,
    /// Fine-tune this pretrained model directory (a chapter's model, e.g. chapter 2.3's BERT
    /// as `dnaflow run` left it) instead of pretraining a small model on the table itself.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The architecture of the model pretrained here and of the one trained from scratch.
    #[arg(long, default_value = "gpt2", value_parser = ["gpt2", "bert", "llama"])]
    arch: String,
}

/// The help after the options: the whole path from a TSV to a report.
pub const AFTER_HELP: &str = "From your table to a report in three commands:
  dnaflow new classify my_sequences.tsv -o my.yaml   # write the workflow (read its comments)
  dnaflow run my.yaml                                # small default profile: checks the plumbing
  dnaflow report my.yaml -o my.html                  # results first: every model side by side

Then `dnaflow run my.yaml --profile full` on a GPU for the real numbers.";

/// What the workflow needs to know about the table.
struct Shape {
    /// Values of its `split` column, when it has one.
    splits: Option<Vec<String>>,
    rows: usize,
    longest: usize,
}

fn inspect_table(path: &Path, args: &NewArgs) -> anyhow::Result<Shape> {
    let df = read_table(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (column, flag) in [(&args.sequence, "--sequence"), (&args.label, "--label")] {
        if !names.contains(column) {
            bail!(
                "{}: no column `{column}`; its columns are: {}; name the right one with `{flag}`",
                path.display(),
                names.join(", ")
            );
        }
    }
    if df.height() == 0 {
        bail!("{}: the table has no rows", path.display());
    }
    let seqs = df
        .column(&args.sequence)?
        .cast(&polars::prelude::DataType::String)?;
    let longest = seqs
        .str()?
        .iter()
        .flatten()
        .map(str::len)
        .max()
        .unwrap_or(0);
    let splits = match df.column("split") {
        Ok(c) => {
            let c = c.cast(&polars::prelude::DataType::String)?;
            let mut v: Vec<String> = c.str()?.iter().flatten().map(str::to_string).collect();
            v.sort();
            v.dedup();
            Some(v)
        }
        Err(_) => None,
    };
    Ok(Shape {
        splits,
        rows: df.height(),
        longest,
    })
}

/// `dnaflow new`.
pub fn new(args: &NewArgs) -> Result<(), Failure> {
    let table = std::fs::canonicalize(&args.table)
        .with_context(|| format!("{}: cannot read it", args.table.display()))?;
    let shape = inspect_table(&table, args)?;
    let model = match &args.model {
        Some(m) => Some(
            std::fs::canonicalize(m)
                .with_context(|| format!("--model {}: no such directory", m.display()))?,
        ),
        None => None,
    };
    let yaml = workflow(args, &table, model.as_deref(), &shape);
    match &args.output {
        Some(out) => {
            std::fs::write(out, &yaml).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {}; next: `dnaflow run {0}`, then `dnaflow report {0}`",
                out.display()
            );
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

/// YAML for a string: quoted when it needs to be.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The workflow's text.
fn workflow(args: &NewArgs, table: &Path, model: Option<&Path>, shape: &Shape) -> String {
    let stem = table
        .file_stem()
        .map(|s| s.to_string_lossy().replace(['.', ' '], "-"))
        .unwrap_or_else(|| "table".into());
    let (task, what) = match args.task {
        Task::Classify => ("seq-cls", "classify"),
        Task::Regress => ("regression", "regress"),
        Task::TokenCls => ("token-cls", "token-cls"),
    };
    let positions = (shape.longest + 2).next_power_of_two().clamp(32, 512);
    let mut w = String::new();
    let mut line = |s: &str| {
        w.push_str(s);
        w.push('\n');
    };
    line(&format!(
        "# Written by `dnaflow new {what} {}`: edit freely.",
        args.table.display()
    ));
    line(
        "# Run it:     dnaflow run THIS.yaml             (the small default profile: a minute on a CPU)",
    );
    line("#             dnaflow run THIS.yaml --profile full   (a GPU: the numbers to report)");
    line("# Read it:    dnaflow report THIS.yaml -o report.html");
    line(&format!("name: {stem}-{what}"));
    line(&format!(
        "description: >\n  {} on {} ({} rows): two baselines, a model fine-tuned from a\n  pretrained one and the same model from scratch, each scored on the same test rows.",
        match args.task {
            Task::Classify => "Sequence classification",
            Task::Regress => "Sequence regression",
            Task::TokenCls => "Per-base labelling",
        },
        table.display(),
        shape.rows
    ));
    line("params:");
    line("  # The default profile is small on purpose: it checks that every step runs.");
    line("  n_embd: 32");
    line("  n_layer: 1");
    line("  n_head: 2");
    line(&format!(
        "  positions: {positions}   # tokens a model takes (longest sequence: {} letters); longer rows are cut",
        shape.longest
    ));
    line("  pretrain_steps: 30");
    line("  epochs: 2");
    line("  batch_size: 16");
    line("  lr: 0.001");
    line("  device: cpu");
    line("  precision: f32");
    line("profiles:");
    line("  full:            # a GPU: a real model and schedule");
    line("    n_embd: 256");
    line("    n_layer: 6");
    line("    n_head: 8");
    line("    pretrain_steps: 5000");
    line("    epochs: 10");
    line("    batch_size: 32");
    line("    lr: 0.0003");
    line("    device: cuda");
    line("    precision: bf16");
    line("steps:");
    line("  table:");
    line(
        "    description: Your table. Its alphabet is decided from its letters (see the metrics),",
    );
    line("      and ambiguity codes become N, counted in the metrics (on_invalid = mask).");
    line("    uses: data.load");
    line(&format!(
        "    with: {{ path: {}, column: {}, on_invalid: mask }}",
        q(&table.display().to_string()),
        q(&args.sequence)
    ));
    let stratify = if args.task == Task::Classify {
        format!(", stratify: {}", q(&args.label))
    } else {
        String::new()
    };
    let (train, valid, test) = match &shape.splits {
        Some(values) if values.iter().any(|v| v == "valid" || v == "validation") => {
            line("  split:");
            line("    description: The table's own `split` column.");
            line("    uses: data.split");
            line("    with: { input: \"${{ steps.table.table }}\", by_column: split }");
            ("split.train", "split.valid", "split.test")
        }
        Some(_) => {
            line("  split:");
            line("    description: The table's own `split` column (it has no validation rows).");
            line("    uses: data.split");
            line("    with: { input: \"${{ steps.table.table }}\", by_column: split }");
            line("  train_valid:");
            line("    description: 10 % of the training rows become the validation set (seeded).");
            line("    uses: data.split");
            line(&format!(
                "    with: {{ input: \"${{{{ steps.split.train }}}}\", ratios: [0.9, 0.1, 0.0], seed: 42{stratify} }}"
            ));
            ("train_valid.train", "train_valid.valid", "split.test")
        }
        None => {
            line("  split:");
            line("    description: 80 / 10 / 10, seeded (the table has no `split` column).");
            line("    uses: data.split");
            line(&format!(
                "    with: {{ input: \"${{{{ steps.table.table }}}}\", ratios: [0.8, 0.1, 0.1], seed: 42{stratify} }}"
            ));
            ("split.train", "split.valid", "split.test")
        }
    };
    let tables = format!(
        "train: \"${{{{ steps.{train} }}}}\", valid: \"${{{{ steps.{valid} }}}}\", test: \"${{{{ steps.{test} }}}}\""
    );
    let tokenizer = match model {
        Some(dir) => q(&dir.display().to_string()),
        None => {
            line("  tokenizer:");
            line("    description: One token per letter, learned from the training sequences.");
            line("    uses: tokenizer.train");
            line(&format!(
                "    with: {{ input: \"${{{{ steps.{train} }}}}\", model: char }}"
            ));
            "\"${{ steps.tokenizer.tokenizer }}\"".to_string()
        }
    };
    let config = arch_config(&args.arch);
    let init = match model {
        Some(dir) => q(&dir.display().to_string()),
        None => {
            line("  pretrained:");
            line(&format!(
                "    description: A small {} pretrained on the training sequences (chapter 2). Give\n      `dnaflow new --model DIR` to fine-tune a chapter's model instead.",
                args.arch
            ));
            line("    uses: model.pretrain");
            line("    with:");
            line(&format!("      arch: {}", args.arch));
            line(&format!("      tokenizer: {tokenizer}"));
            line(&format!("      train: \"${{{{ steps.{train} }}}}\""));
            line(&format!("      valid: \"${{{{ steps.{valid} }}}}\""));
            line(&format!("      config: {config}"));
            line("      seq_len: \"${{ params.positions }}\"");
            line("      batch_size: \"${{ params.batch_size }}\"");
            line("      steps: \"${{ params.pretrain_steps }}\"");
            line("      lr: \"${{ params.lr }}\"");
            line("      device: \"${{ params.device }}\"");
            line("      precision: \"${{ params.precision }}\"");
            "\"${{ steps.pretrained.model }}\"".to_string()
        }
    };
    let common = |line: &mut dyn FnMut(&str)| {
        line(&format!("      label: {}", q(&args.label)));
        if args.task != Task::TokenCls {
            line("      truncate: true   # cut rows longer than the model's positions");
        }
        line("      batch_size: \"${{ params.batch_size }}\"");
        line("      epochs: \"${{ params.epochs }}\"");
        line("      lr: \"${{ params.lr }}\"");
        line("      seed: 1");
        line("      device: \"${{ params.device }}\"");
        line("      precision: \"${{ params.precision }}\"");
    };
    line("  finetuned:");
    line(
        "    description: The pretrained model with a new head; the validation split picks the weights.",
    );
    line("    uses: model.finetune");
    line("    with:");
    line(&format!("      task: {task}"));
    line(&format!("      init: {init}"));
    for (role, t) in [("train", train), ("valid", valid), ("test", test)] {
        line(&format!("      {role}: \"${{{{ steps.{t} }}}}\""));
    }
    common(&mut line);
    if args.task == Task::TokenCls {
        line(
            "    # expect: { test_f1_macro: { min: 0.8 } }   # your bar, checked by `dnaflow check`",
        );
    }
    line("  scratch:");
    line(
        "    description: The same architecture from random weights, to show what pretraining adds.",
    );
    line("    uses: model.finetune");
    line("    with:");
    line(&format!("      task: {task}"));
    line(&format!("      arch: {}", args.arch));
    line(&format!("      tokenizer: {tokenizer}"));
    line(&format!(
        "      config: {}, {}: \"${{{{ params.positions }}}}\" }}",
        config.strip_suffix(" }").unwrap_or(&config),
        positions_field(&args.arch)
    ));
    for (role, t) in [("train", train), ("valid", valid), ("test", test)] {
        line(&format!("      {role}: \"${{{{ steps.{t} }}}}\""));
    }
    common(&mut line);
    if args.task == Task::TokenCls {
        line("    # expect: { test_f1_macro: { min: 0.8 } }");
    }
    // data.load names the sequence column `sequence`, the downstream kinds' default.
    let columns = format!("label: {}", q(&args.label));
    let baselines: Vec<&str> = match args.task {
        Task::Classify | Task::Regress => {
            let kind = if args.task == Task::Classify {
                "baseline.classify"
            } else {
                "baseline.regress"
            };
            line("  onehot:");
            line("    description: Linear model on the one-hot letters at each position.");
            line(&format!("    uses: {kind}"));
            line(&format!(
                "    with: {{ {tables}, {columns}, features: onehot }}"
            ));
            line("  kmer:");
            line("    description: Linear model on standardised 3-mer frequencies.");
            line(&format!("    uses: {kind}"));
            line(&format!(
                "    with: {{ {tables}, {columns}, features: kmer, k: 3, standardize: true }}"
            ));
            vec!["finetuned", "scratch", "onehot", "kmer"]
        }
        Task::TokenCls => {
            line("  window:");
            line(
                "    description: Logistic regression per base on the one-hot letters 7 either side.",
            );
            line("    uses: baseline.per-base");
            line(&format!("    with: {{ {tables}, {columns}, window: 7 }}"));
            vec![]
        }
    };
    let (score, bar) = match args.task {
        Task::Regress => ("eval.regress", "pearson: { min: 0.5 }"),
        _ => ("eval.classify", "accuracy: { min: 0.8 }"),
    };
    for b in baselines {
        line(&format!("  {b}_score:"));
        line(&format!("    uses: {score}"));
        line(&format!(
            "    with: {{ predictions: \"${{{{ steps.{b}.predictions }}}}\" }}"
        ));
        line(&format!(
            "    # expect: {{ {bar} }}   # your bar, checked by `dnaflow check`"
        ));
    }
    let _ = writeln!(w);
    w
}

/// A small config of `arch` from the workflow's params.
fn arch_config(arch: &str) -> String {
    let p = |name: &str| format!("\"${{{{ params.{name} }}}}\"");
    match arch {
        "gpt2" => format!(
            "{{ n_embd: {}, n_layer: {}, n_head: {} }}",
            p("n_embd"),
            p("n_layer"),
            p("n_head")
        ),
        _ => format!(
            "{{ hidden_size: {}, num_hidden_layers: {}, num_attention_heads: {} }}",
            p("n_embd"),
            p("n_layer"),
            p("n_head")
        ),
    }
}

/// The config field that holds the positions of `arch`.
fn positions_field(arch: &str) -> &'static str {
    crate::models::arch::architecture(arch)
        .map(|a| a.positions_field)
        .unwrap_or("max_position_embeddings")
}
