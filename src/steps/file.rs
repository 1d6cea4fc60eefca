//! `file.write`: write a text file (and optional metrics); the smallest useful built-in kind.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{StepContext, StepError, StepKind, params};

/// Parameters of `file.write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    /// Text written to `file.txt` in the step's output.
    content: String,
    /// Metrics written to `metrics.json` (for `expect:` checks).
    #[serde(default)]
    metrics: BTreeMap<String, serde_json::Value>,
}

pub static WRITE: StepKind = StepKind {
    name: "file.write",
    version: 1,
    summary: "write `content` to file.txt (output `file`) and optional `metrics`",
    outputs: &[("file", "file.txt")],
    schema: |g| g.subschema_for::<WriteParams>(),
    check: |with| params::<WriteParams>(with).map(|_| ()),
    run,
};

fn run(ctx: &mut StepContext) -> Result<(), StepError> {
    let p: WriteParams = params(ctx.with).map_err(StepError::new)?;
    std::fs::write(ctx.out.join("file.txt"), &p.content)?;
    if !p.metrics.is_empty() {
        super::write_metrics(ctx.out, &serde_json::json!(p.metrics))?;
    }
    writeln!(ctx.log, "wrote {} bytes", p.content.len())?;
    Ok(())
}
