//! `out`: the path of a step's output, as the workflow means it now, once the step has run.

use anyhow::anyhow;

use super::{Failure, WorkflowArgs, run_cmd};
use crate::exec::Plan;
use crate::workflow::Workflow;

#[derive(clap::Args, Debug)]
pub struct OutArgs {
    #[command(flatten)]
    wf: WorkflowArgs,
    /// A step (its output directory) or STEP.OUTPUT (one named output: `model`, `predictions`,
    /// `metrics`, a shell step's `outputs:`); a foreach copy as `train[fold=0].model`.
    target: String,
}

/// Print the path of the target's output in the cache.
pub fn out(cache_dir: &std::path::Path, args: &OutArgs) -> Result<(), Failure> {
    let (wf, dag, _) = run_cmd::load(&args.wf, &[])?;
    let (step, output) = split_target(&wf, &args.target)?;
    let cache = run_cmd::read_cache(cache_dir)?;
    let plan = Plan::new(&wf, dag, &[step], &cache).map_err(|e| anyhow!("{e}"))?;
    let key = &plan.keys[step];
    let name = &wf.steps[step].name;
    if !cache.has(key) {
        let file = args.wf.file.display();
        return Err(anyhow!(
            "`{name}` has not run with these parameters (in the cache at {}): \
             `dnaflow run {file} {name}` makes it",
            cache_dir.display()
        )
        .into());
    }
    let rel = &wf.steps[step].outputs[output.as_str()];
    let dir = cache.out_dir(key);
    let path = if rel.is_empty() { dir } else { dir.join(rel) };
    println!("{}", path.display());
    Ok(())
}

/// `STEP` or `STEP.OUTPUT` → (step index, output name); `out` when none is named.
fn split_target(wf: &Workflow, target: &str) -> Result<(usize, String), Failure> {
    let pick = |name: &str| -> Result<usize, Failure> {
        let found = wf.select(name).map_err(anyhow::Error::msg)?;
        match found.as_slice() {
            [one] => Ok(*one),
            many => Err(anyhow!(
                "`{name}` has {} copies; name one: {}",
                many.len(),
                many.iter()
                    .map(|&i| format!("`{}`", wf.steps[i].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .into()),
        }
    };
    // A whole name first: a foreach value may hold a dot (`lr=0.1`).
    if wf.index_of(target).is_some() || wf.steps.iter().any(|s| s.base == target) {
        return Ok((pick(target)?, "out".into()));
    }
    let Some((step, output)) = target.rsplit_once('.') else {
        return Ok((pick(target)?, "out".into()));
    };
    let i = pick(step)?;
    if !wf.steps[i].outputs.contains_key(output) {
        let names: Vec<&str> = wf.steps[i].outputs.keys().map(String::as_str).collect();
        return Err(anyhow!(
            "`{}` has no output `{output}`; its outputs: {}",
            wf.steps[i].name,
            names.join(", ")
        )
        .into());
    }
    Ok((i, output.to_string()))
}
