//! `report` and `serve`: a run as a self-contained HTML page, on disk or live over HTTP.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::Failure;
use super::inspect::find_run;
use crate::cache::runs;
use crate::report::{self, Options};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// A run id (or prefix), a workflow name or its YAML file (its latest run), or a run
    /// record / `--report` JSON file. Default: the newest run in the cache.
    run: Option<String>,
    /// Write the page here (default: report.html).
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
    /// Compare metrics with this run (default: the previous run of the same workflow).
    #[arg(long, value_name = "RUN")]
    vs: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8808)]
    port: u16,
    /// Address to bind; the default serves this machine only (records name files and hosts).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

/// A workflow file's name: the run records are filed under it.
fn workflow_name(file: &Path) -> anyhow::Result<String> {
    let opts = crate::workflow::LoadOptions::default();
    let wf = crate::workflow::load(file, &opts).map_err(|d| {
        anyhow::anyhow!("{}: not a workflow this dnaflow reads: {d}", file.display())
    })?;
    Ok(wf.name.clone())
}

pub fn report(cache_dir: &Path, args: &ReportArgs) -> Result<(), Failure> {
    let what = match args.run.as_deref() {
        Some(f) if f.ends_with(".yaml") || f.ends_with(".yml") => {
            Some(workflow_name(Path::new(f))?)
        }
        other => other.map(str::to_string),
    };
    let run = find_run(cache_dir, what.as_deref())?;
    let runs_dir = cache_dir.join("runs");
    let vs = match &args.vs {
        Some(v) => Some(find_run(cache_dir, Some(v))?),
        None => runs::previous(&runs_dir, &run.workflow, &run.run_id),
    };
    if run.steps.is_empty() && run.running.is_empty() {
        return Err(anyhow::anyhow!(
            "run {} of `{}` has no steps to report",
            run.run_id,
            run.workflow
        )
        .into());
    }
    let opts = Options {
        vs: vs.as_ref(),
        logs: Some(runs::workflow_dir(&runs_dir, &run.workflow).join(&run.run_id)),
        ..Options::default()
    };
    let html = report::render(&run, &opts);
    std::fs::write(&args.output, html)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: run {} of {} ({}){}",
        args.output.display(),
        run.run_id,
        run.workflow,
        run.status,
        vs.map_or(String::new(), |v| format!(", compared with {}", v.run_id))
    );
    Ok(())
}

pub fn serve(cache_dir: &Path, args: &ServeArgs) -> Result<(), Failure> {
    crate::exec::install_interrupt_handler();
    report::serve::serve(cache_dir, &args.host, args.port, |addr| {
        println!(
            "serving the runs of {} at http://{addr}/ (Ctrl-C stops)",
            cache_dir.display()
        );
    })
    .map_err(anyhow::Error::from)?;
    Ok(())
}
