//! Command-line interface: thin commands over the library; prints, never decides.

mod cache_cmd;
mod env_cmd;
mod inspect;
mod kinds_cmd;
mod model_cmd;
mod new_cmd;
mod out_cmd;
mod report_cmd;
mod run_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::diag::{self, Diagnostic, Diagnostics};

/// dnaflow: run gene-sequence language-model workflows (the DNAGPT2 tutorial) from YAML,
/// caching every step so reruns only redo what changed.
#[derive(Parser, Debug)]
#[command(
    name = "dnaflow",
    version,
    propagate_version = true,
    after_help = TOP_HELP,
    after_long_help = TOP_HELP
)]
pub struct Cli {
    /// Cache directory (objects, run records, logs).
    #[arg(long, global = true, env = "DNAFLOW_CACHE", default_value = "cache")]
    cache: PathBuf,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The end of `dnaflow --help`: a first session, where the docs are, and the exit codes.
const TOP_HELP: &str = "\
Examples:
  dnaflow run workflows/ch1-data.yaml              # chapter 1: the data, in a second
  dnaflow check workflows/ch2-2-gpt2.yaml          # train a DNA GPT-2, fail if it loses to a Markov chain
  dnaflow plan workflows/ch2-2-gpt2.yaml --set steps=1500   # what would run, and why
  dnaflow out workflows/ch2-2-gpt2.yaml gpt2.model # where the trained model is

Docs: README.md (start there), docs/glossary.md, docs/ch*.md (one page per chapter).

Exit codes:
  0  success
  1  a step failed, an `expect:` bound failed (check), the run outlasted `budget:`
     (--within-budget), or another error (message on stderr)
  2  a problem in a workflow file (each shown as file:line:column), or bad command-line usage
  130  interrupted (Ctrl-C); the run record says which steps finished";

/// Options that choose what a workflow means (shared by run, plan, check, …).
#[derive(clap::Args, Debug, Clone)]
pub struct WorkflowArgs {
    /// Workflow YAML file.
    file: PathBuf,
    /// Apply a named profile of parameter overrides.
    #[arg(long)]
    profile: Option<String>,
    /// Override a parameter: `--set vocab=4096` (repeatable; applied after --profile).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
    /// Device for every model step (cpu, cuda, cuda:N, auto); overrides their `device:`.
    #[arg(long, value_parser = parse_device)]
    device: Option<String>,
}

fn parse_device(s: &str) -> Result<String, String> {
    crate::models::DeviceSpec::parse(s)?;
    Ok(s.trim().to_ascii_lowercase())
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workflow: the target steps and their ancestors (all steps by default).
    #[command(
        after_help = "Examples:\n  dnaflow run workflows/ch1-data.yaml\n  dnaflow run wf.yaml train --profile full --set lr=3e-4 --report run.json"
    )]
    Run(run_cmd::RunArgs),
    /// Run (or reuse) a workflow, then fail if any `expect:` bound is not met.
    #[command(after_help = "Example (CI gate):\n  dnaflow check workflows/ch2-2-gpt2.yaml")]
    Check(run_cmd::RunArgs),
    /// Dry run: which steps would run, which are cached, and why (writes nothing).
    #[command(after_help = "Example:\n  dnaflow plan wf.yaml --set vocab=2048")]
    Plan(run_cmd::PlanArgs),
    /// Explain a step: every field that changed since the last run, old → new.
    #[command(after_help = "Example:\n  dnaflow why wf.yaml train")]
    Why(run_cmd::WhyArgs),
    /// Write a commented workflow for your own labelled table: split, baselines, fine-tuned
    /// and from-scratch models, scores.
    #[command(after_help = new_cmd::AFTER_HELP)]
    New(new_cmd::NewArgs),
    /// Check a workflow without running anything.
    #[command(after_help = "Example:\n  dnaflow validate workflows/*.yaml")]
    Validate(run_cmd::ValidateArgs),
    /// Print the step graph as text, Graphviz DOT or Mermaid (cached steps marked).
    #[command(
        after_help = "Examples:\n  dnaflow dag wf.yaml\n  dnaflow dag wf.yaml --format dot | dot -Tpng -o dag.png"
    )]
    Dag(inspect::DagArgs),
    /// Show or compare the metrics of runs.
    #[command(
        subcommand,
        after_help = "Examples:\n  dnaflow metrics show\n  dnaflow metrics diff RUN_A RUN_B"
    )]
    Metrics(inspect::MetricsCommand),
    /// Write a run as one self-contained HTML page: DAG, steps, metrics with expect results
    /// and a diff against the previous run, plots, parameters, machine.
    #[command(
        after_help = "Examples:\n  dnaflow report workflows/ch2-2-gpt2.yaml -o gpt2.html\n  dnaflow report 20261203T0753 --vs 20261202T1010"
    )]
    Report(report_cmd::ReportArgs),
    /// Serve the reports of the latest runs on localhost, updated while a run goes on.
    #[command(after_help = "Example:\n  dnaflow serve --port 8808")]
    Serve(report_cmd::ServeArgs),
    /// Inspect and maintain the cache.
    #[command(
        subcommand,
        after_help = "Examples:\n  dnaflow cache ls\n  dnaflow cache gc --max-size 20G --max-age 30d\n  dnaflow cache verify"
    )]
    Cache(cache_cmd::CacheCommand),
    /// List built-in step kinds, or describe one: outputs and a table of its parameters.
    #[command(
        after_help = "Examples:\n  dnaflow kinds\n  dnaflow kinds model.finetune\n  dnaflow kinds model.finetune --json"
    )]
    Kinds(kinds_cmd::KindsArgs),
    /// Print the path of a step's output in the cache (the step must have run with the
    /// workflow's current parameters).
    #[command(
        after_help = "Examples:\n  dnaflow out workflows/ch2-2-gpt2.yaml gpt2.model\n  dnaflow out workflows/ch2-2-gpt2.yaml test.metrics\n  dnaflow out workflows/ch2-1-tokenizer.yaml 'tokenizer[model=bpe]'"
    )]
    Out(out_cmd::OutArgs),
    /// Print the workflow JSON Schema (or write it with --write).
    #[command(after_help = "Example:\n  dnaflow schema --write schemas/workflow.schema.json")]
    Schema(inspect::SchemaArgs),
    /// Describe a model directory: architecture, head, size, checkpoint files; `--load` builds
    /// it and reports load time and peak memory.
    #[command(after_help = "Example:\n  dnaflow model cache/objects/<key>/out/model --load")]
    Model(model_cmd::ModelArgs),
    /// What this machine offers for training: backends, threads, GPUs, memory, caches, versions.
    #[command(after_help = "Example:\n  dnaflow env --json")]
    Env {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one attempt of a built-in step from its job file (started by the scheduler, or by
    /// a cluster job: the same code either way).
    #[command(hide = true)]
    StepExec {
        /// The job file the scheduler wrote.
        job: PathBuf,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  dnaflow completions bash > ~/.local/share/bash-completion/completions/dnaflow"
    )]
    Completions {
        /// The shell to write completions for.
        shell: clap_complete::Shell,
    },
}

/// A failure the CLI reports and turns into an exit code.
pub enum Failure {
    /// Problems in the user's workflow, each with its place.
    Workflow(Vec<Diagnostic>),
    /// Anything else, with context.
    Other(anyhow::Error),
    /// Already reported; exit with this code.
    Exit(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Other(e)
    }
}
impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Failure {
        Failure::Workflow(d.0)
    }
}
impl From<Diagnostic> for Failure {
    fn from(d: Diagnostic) -> Failure {
        Failure::Workflow(vec![d])
    }
}

/// Entry point of the `dnaflow` binary.
pub fn main() -> ExitCode {
    run_cli(Cli::parse())
}

/// The binary's entry point with the arguments given (the first is the program name): what a
/// test runs in-process to drive a whole command exactly as the binary would.
pub fn main_with<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run_cli(Cli::parse_from(args))
}

fn run_cli(cli: Cli) -> ExitCode {
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Run(a) => run_cmd::run(&cli.cache, &a, false),
        Command::Check(a) => run_cmd::run(&cli.cache, &a, true),
        Command::Plan(a) => run_cmd::plan_cmd(&cli.cache, &a),
        Command::Why(a) => run_cmd::why(&cli.cache, &a),
        Command::Validate(a) => run_cmd::validate(&a),
        Command::New(a) => new_cmd::new(&a),
        Command::Dag(a) => inspect::dag(&cli.cache, &a),
        Command::Metrics(m) => inspect::metrics(&cli.cache, &m),
        Command::Report(a) => report_cmd::report(&cli.cache, &a),
        Command::Serve(a) => report_cmd::serve(&cli.cache, &a),
        Command::Cache(c) => cache_cmd::cache(&cli.cache, &c),
        Command::Kinds(a) => kinds_cmd::kinds(&a),
        Command::Out(a) => out_cmd::out(&cli.cache, &a),
        Command::Schema(a) => inspect::schema(&a),
        Command::Model(a) => model_cmd::model(&a).map_err(Failure::from),
        Command::Env { json } => env_cmd::env(&cli.cache, json),
        Command::StepExec { job } => {
            return crate::exec::isolated::child_main(&job, |job, rendezvous, status| {
                // Rank 0 alone writes the step's log (the ranks share it).
                let mut log: Box<dyn std::io::Write + Send> = match rendezvous {
                    Some(r) if r.rank > 0 => Box::new(std::io::sink()),
                    _ => Box::new(std::io::stdout()),
                };
                crate::exec::run_in_process(job, rendezvous, &mut log, status)
            });
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "dnaflow", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Workflow(ds)) => {
            // One problem shared by a step's foreach copies is shown once.
            let mut shown = std::collections::HashSet::new();
            let ds: Vec<&Diagnostic> = ds
                .iter()
                .filter(|d| shown.insert(diag::render(d)))
                .collect();
            for d in &ds {
                eprintln!("{}", diag::render(d));
            }
            if ds.len() > 1 {
                eprintln!("{} problems found", ds.len());
            }
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "dnaflow=info",
        _ => "dnaflow=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .without_time()
        .try_init();
}

/// The GPU code path end to end: chapter 2.2 at a tiny size on the device the model tests run
/// on (`DNAFLOW_TEST_DEVICE`), in-process, so CI's wgpu run builds the library's tests once and
/// no binary (see `.ci/run`). Skipped on the CPU, where the chapter runs in CI anyway.
#[cfg(test)]
mod device_check {
    use crate::models::device::{DeviceSpec, test_device};

    #[test]
    fn ch2_2_trains_and_samples_on_the_test_device() {
        let device = test_device();
        if matches!(device, DeviceSpec::Cpu) {
            eprintln!("skipping: set DNAFLOW_TEST_DEVICE=wgpu or cuda to run ch2-2 on a device");
            return;
        }
        let name = std::env::var("DNAFLOW_TEST_DEVICE").expect("set");
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = tmp.path().join("cache");
        let report = tmp.path().join("report.json");
        let code = super::main_with([
            "dnaflow",
            "--cache",
            cache.to_str().expect("utf-8"),
            "run",
            "workflows/ch2-2-gpt2.yaml",
            "--device",
            &name,
            "--set",
            "steps=10",
            "--set",
            "eval_every=5",
            "--set",
            "n_embd=32",
            "--set",
            "n_layer=1",
            "--set",
            "n_head=2",
            "--set",
            "seq_len=64",
            "--set",
            "batch_size=4",
            "--report",
            report.to_str().expect("utf-8"),
            "-q",
            // This test binary is not dnaflow: it cannot start `dnaflow step-exec`.
            "--in-process",
        ]);
        assert_eq!(
            code,
            std::process::ExitCode::SUCCESS,
            "ch2-2 on {name} failed"
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).unwrap();
        let steps: std::collections::BTreeMap<&str, &serde_json::Value> = r["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| (s["name"].as_str().expect("name"), s))
            .collect();
        for (n, s) in &steps {
            assert!(
                matches!(s["status"].as_str(), Some("ran" | "cached")),
                "ch2-2 on {name}: {n} did not finish: {s}"
            );
        }
        let bits = steps["test"]["metrics"]["bits_per_base"]
            .as_f64()
            .expect("bits");
        let vocab = steps["tokenizer"]["metrics"]["vocab_size"]
            .as_f64()
            .expect("vocab");
        // Better than guessing uniformly among the tokenizer's symbols: it learned on the device.
        assert!(
            bits.is_finite() && bits < vocab.log2(),
            "ch2-2 on {name}: {bits} bits per base (uniform {:.2})",
            vocab.log2()
        );
        eprintln!(
            "ch2-2 on {name}, 10 steps: test {bits:.4} bits per base (uniform {:.2}); {}",
            vocab.log2(),
            ["gpt2", "test", "sample"]
                .iter()
                .map(|n| format!(
                    "{n} {:.1} s",
                    steps[n]["seconds"].as_f64().unwrap_or(f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
