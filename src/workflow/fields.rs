//! The workflow file's fields in words: what each one is and what form it takes, so a parser
//! error ("expected mapping start") becomes a sentence about the field the author wrote.

use crate::diag::Span;

/// A complete small workflow, shown where a file is empty or its top level is wrong.
pub const EXAMPLE: &str = "  name: hello
  steps:
    greet:
      run: echo hello > ${{ out }}/hello.txt";

/// Limits on what the YAML reader takes in. Large enough for workflows of hundreds of
/// thousands of steps (each a handful of nodes), still a guard against runaway input; alias
/// expansion has its own limit (serde-saphyr's default: a million replayed events).
pub const MAX_NODES: usize = 20_000_000;

/// The reader's budget: nodes and events sized by [`MAX_NODES`], scalar text up to 1 GiB.
pub fn budget() -> Option<serde_saphyr::Budget> {
    serde_saphyr::budget! {
        max_nodes: MAX_NODES,
        max_events: 2 * MAX_NODES,
        max_total_scalar_bytes: 1 << 30,
    }
}

/// What a field is and the form it takes, with an example, by field name.
pub fn form(field: &str) -> Option<(&'static str, &'static str)> {
    Some(match field {
        "name" => (
            "`name` is the workflow's name: one word of letters, digits, `_` and `-`",
            "name: ch1-data",
        ),
        "description" => (
            "`description` is text for people reading the file",
            "description: Chapter 1",
        ),
        "workdir" => (
            "`workdir` is a directory, relative to this file, where relative paths start",
            "workdir: ..",
        ),
        "params" => (
            "`params` is a map from parameter names to values",
            "params: { window: 1000, seed: 42 }",
        ),
        "profiles" => (
            "`profiles` is a map from profile names to parameter overrides",
            "profiles: { full: { window: 5000 } }",
        ),
        "steps" => (
            "`steps` is a map from step names to steps",
            "steps:\n    greet:\n      run: echo hello > ${{ out }}/hello.txt",
        ),
        "uses" => (
            "`uses` is the name of a built-in step kind",
            "uses: data.load",
        ),
        "with" => (
            "`with` is a map of the kind's parameters (`dnaflow kinds KIND` lists them)",
            "with: { input: data/x.csv, seed: 1 }",
        ),
        "run" => (
            "`run` is a shell command",
            "run: echo hi > ${{ out }}/hi.txt",
        ),
        "inputs" => (
            "`inputs` is a list of files or directories the step reads",
            "inputs: [data/x.fa, scripts/plot.py]",
        ),
        "outputs" => (
            "`outputs` is a map from output names to paths inside `${{ out }}`",
            "outputs: { model: model.bin }",
        ),
        "needs" => ("`needs` is a list of step names", "needs: [prepare]"),
        "env" => (
            "`env` is a map from environment variable names to values",
            "env: { LC_ALL: C }",
        ),
        "expect" => (
            "`expect` is a map from metric names to bounds (`min`, `max`, `equals`, `tol`)",
            "expect: { accuracy: { min: 0.9 } }",
        ),
        "foreach" => (
            "`foreach` is a map from keys to lists of values; the step runs once per combination",
            "foreach: { fold: [0, 1, 2] }",
        ),
        "resources" => (
            "`resources` is a map of `cpus`, `gpus`, `mem` and `nodes`",
            "resources: { cpus: 4, mem: 8G }",
        ),
        "cpus" => (
            "`cpus` is a whole number of CPU threads, 1 or more",
            "cpus: 4",
        ),
        "gpus" => ("`gpus` is a whole number of GPUs, 0 or more", "gpus: 1"),
        "mem" => ("`mem` is a memory size like `512M` or `8G`", "mem: 8G"),
        "nodes" => (
            "`nodes` is a whole number of nodes a training step's ranks spread over, 1 or more",
            "nodes: 2",
        ),
        "retries" => (
            "`retries` is how many times to retry a failed step: a whole number, 0 or more",
            "retries: 2",
        ),
        "executor" => (
            "`executor` is where steps run: `local` or `slurm`",
            "executor: slurm",
        ),
        "min" | "max" | "tol" => ("a bound is a number", "min: 0.9"),
        _ => return None,
    })
}

/// A parser message, explained for the field it is about. `None`: no better words known.
pub fn explain(message: &str, field: Option<&str>) -> Option<(String, Option<String>)> {
    let breach = message.strip_prefix("budget breached: ");
    let what = breach.map(|b| b.split([' ', '{']).next().unwrap_or_default());
    let aliases = what.is_some_and(|w| w.contains("Alias") || w.contains("Anchor"))
        || message.starts_with("alias replay")
        || message.contains("alias expansion");
    if aliases {
        return Some((
            "the workflow's aliases (`*name`) expand to too much: a guard against input that \
             grows without end when read"
                .into(),
            Some("write the repeated values out, or use `foreach:` for repeated steps".into()),
        ));
    }
    if let Some(what) = what {
        return Some((
            format!(
                "the workflow is too large to read ({what}): more than {MAX_NODES} YAML values \
                 or 1 GiB of text"
            ),
            Some(
                "split it into several workflows, or expand repeated steps with `foreach:` \
                 instead of writing each one out"
                    .into(),
            ),
        ));
    }
    let shape_error = [
        "expected mapping",
        "expected sequence",
        "invalid type",
        "expected a",
    ]
    .iter()
    .any(|m| message.contains(m))
        || message.starts_with("invalid u")
        || message.starts_with("invalid f")
        || message.starts_with("invalid bool");
    if !shape_error {
        return None;
    }
    let (what, example) = form(field?)?;
    let help = if example.contains('\n') {
        format!("for example:\n  {example}")
    } else {
        format!("for example: `{example}`")
    };
    Some((what.to_string(), Some(help)))
}

/// The name of the field whose value starts at `span`: the key on the same line before it
/// (`retries: -3`, also inside `{ … }`), else the key of the nearest line above that is
/// indented less (a block list or map under `steps:`).
pub fn field_at(text: &str, span: Span) -> Option<String> {
    if span.is_unknown() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let index = (span.line as usize).checked_sub(1)?;
    let line = lines.get(index)?;
    let col = (span.column as usize).saturating_sub(1);
    let before: String = line.chars().take(col).collect();
    if let Some(key) = last_key(&before) {
        return Some(key);
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let own = indent(line);
    let own_is_item = line.trim_start().starts_with('-');
    for above in lines[..index].iter().rev() {
        let t = above.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // A block list may sit at its key's own indentation (`steps:` then `- a`).
        if indent(above) < own || (own_is_item && indent(above) == own && !t.starts_with('-')) {
            return last_key(&format!("{above} "));
        }
    }
    None
}

/// The key of the last `key:` in a piece of a line (`  retries: `, `{ a: 1, cpus: `).
fn last_key(before: &str) -> Option<String> {
    let cut = before.rfind(':')?;
    let head = &before[..cut];
    let start = head.rfind(['{', ',', '-']).map_or(0, |i| i + 1);
    let key = head[start..].trim().trim_matches(['"', '\'']);
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    // A colon later on the line is part of the value, not a key's.
    let rest_is_value_start = before[cut + 1..].trim().is_empty();
    (ok && rest_is_value_start).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, column: u32) -> Span {
        Span {
            offset: 0,
            len: 0,
            line,
            column,
        }
    }

    #[test]
    fn the_field_is_the_key_before_the_value_or_the_one_above() {
        let text = "name: x\nparams: [1, 2]\nsteps:\n  - a\n  - b\nother:\n  retries: -3\n";
        assert_eq!(field_at(text, at(2, 9)).as_deref(), Some("params"));
        assert_eq!(field_at(text, at(4, 3)).as_deref(), Some("steps"));
        assert_eq!(field_at(text, at(7, 12)).as_deref(), Some("retries"));
        let flow = "steps:\n  a: { run: x, retries: -3 }\n";
        assert_eq!(field_at(flow, at(2, 25)).as_deref(), Some("retries"));
        let same_indent = "steps:\n- a\n";
        assert_eq!(field_at(same_indent, at(2, 1)).as_deref(), Some("steps"));
    }

    #[test]
    fn shape_errors_are_explained_for_known_fields_only() {
        let (msg, help) = explain("expected mapping start", Some("steps")).unwrap();
        assert!(msg.starts_with("`steps` is a map from step names to steps"));
        assert!(help.unwrap().contains("greet"));
        assert!(explain("expected mapping start", Some("no_such_field")).is_none());
        assert!(explain("duplicate mapping key: a", Some("steps")).is_none());
    }
}
