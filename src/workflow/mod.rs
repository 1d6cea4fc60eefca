//! YAML workflow files: parsing with located errors, parameters and profiles, `${{ }}`
//! interpolation, `foreach` expansion, and reference resolution into a typed [`Workflow`].

mod fields;
pub mod located;
pub mod schema;
pub mod syntax;
pub mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics, Source, Span, did_you_mean};
use crate::steps::{self, StepKind};
use located::{Located, Node};
use syntax::{Expectation, StepDef, WorkflowFile};
use template::{Expr, Piece};

/// Choices made on the command line that change what a workflow means.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--profile NAME`
    pub profile: Option<String>,
    /// `--set key=value`, applied after the profile.
    pub sets: Vec<(String, String)>,
    /// `--device`: the device for every step that trains or runs a model.
    pub device: Option<String>,
}

/// A workflow ready to plan: parameters resolved, steps expanded, references bound to steps.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub source: Source,
    /// Directory relative paths and shell commands start from.
    pub workdir: PathBuf,
    pub profile: Option<String>,
    pub params: IndexMap<String, Value>,
    /// `--device` override for model steps; part of their keys.
    pub device: Option<String>,
    /// The default profile's time budget (`budget:`), for `check --within-budget`.
    pub budget: Option<std::time::Duration>,
    /// The workflow's `executor:` (steps and `--executor` may override it).
    pub executor: Option<syntax::ExecutorName>,
    /// Steps in file order (expansions of one `foreach` step stay together).
    pub steps: Vec<Step>,
    /// The workflow's `publish:`, copied once the whole run has succeeded.
    pub publish: Option<Publish>,
}

/// The workflow's `publish:`, resolved.
#[derive(Debug)]
pub struct Publish {
    /// Folder, relative to the workdir (parameters filled in).
    pub to: String,
    /// Which outputs, in the order written: (index into [`Workflow::steps`], output name).
    pub outputs: Vec<(usize, String)>,
}

/// One step after `foreach` expansion.
#[derive(Debug)]
pub struct Step {
    /// Unique name, e.g. `train` or `train[fold=0]`.
    pub name: String,
    /// Name as written in the file (the same for every expansion).
    pub base: String,
    /// Where the step is defined.
    pub span: Span,
    pub matrix: IndexMap<String, Value>,
    pub action: Action,
    /// Project files the step reads; their bytes go into its key.
    pub inputs: Vec<Input>,
    /// Named outputs: name and path inside the output directory (always has `out` and `metrics`).
    /// Shared by the expansions of one step, and by all shell steps with the default outputs.
    pub outputs: Outputs,
    /// Upstream steps (indices into [`Workflow::steps`]), from references and `needs`.
    pub deps: Vec<usize>,
    pub resources: ResourceNeeds,
    pub retries: u32,
    /// The step's own `executor:`.
    pub executor: Option<syntax::ExecutorName>,
    pub env: IndexMap<String, Template>,
    pub expect: Vec<(Located<String>, Expectation)>,
    /// `publish:`: output name → destination (relative to the workdir), copied after success.
    pub publish: Vec<(String, Template)>,
}

/// A step's named outputs: name → path inside its output directory.
pub type Outputs = std::sync::Arc<IndexMap<String, String>>;

/// What a step does.
#[derive(Debug)]
pub enum Action {
    /// A built-in kind with its parameters.
    Uses {
        kind: &'static StepKind,
        with: Param,
    },
    /// A shell command.
    Run { command: Template },
}

/// A project file or directory a step depends on.
#[derive(Debug, Clone)]
pub struct Input {
    /// Path as written (after parameter interpolation), relative to the workdir.
    pub path: String,
    pub span: Span,
    /// The `with:` parameter that names it, for built-in kinds.
    pub param: Option<String>,
}

/// Resources a step occupies while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceNeeds {
    pub cpus: u32,
    pub gpus: u32,
    pub mem_mb: u64,
    /// Nodes the step's ranks spread over; `cpus`, `gpus` and `mem_mb` are per node.
    pub nodes: u32,
    pub span: Span,
}

/// A string whose step references are bound but not yet rendered (paths come from the cache).
#[derive(Debug, Clone, PartialEq)]
pub struct Template(pub Vec<Part>);

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// A workflow parameter in a shell command or `env:` value: rendered as its value, keyed
    /// by name (`<params.NAME>`) with the value beside it, so a changed value is named as such.
    Param {
        name: String,
        text: String,
    },
    /// The step's own output directory.
    Out,
    /// An output of upstream steps; several when it refers to all expansions of a `foreach` step.
    Output {
        steps: Vec<usize>,
        output: String,
    },
}

/// A `with:` value with its step references bound.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Value(Value),
    Template(Template),
    List(Vec<Param>),
    Map(IndexMap<String, Param>),
}

impl Template {
    /// Render, asking `resolve` for the text of each reference (one string per step).
    pub fn render(&self, resolve: &mut dyn FnMut(&Part) -> Vec<String>) -> String {
        let mut s = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => s.push_str(t),
                other => s.push_str(&resolve(other).join(" ")),
            }
        }
        s
    }

    /// Steps this template refers to.
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .flat_map(|p| match p {
                Part::Output { steps, .. } => steps.as_slice(),
                _ => &[],
            })
            .copied()
    }
}

impl Param {
    /// Render to JSON. A string that is exactly one reference to several steps becomes a list.
    pub fn render(&self, resolve: &mut dyn FnMut(&Part) -> Vec<String>) -> Value {
        match self {
            Param::Value(v) => v.clone(),
            Param::Template(t) => match t.0.as_slice() {
                [part @ Part::Output { steps, .. }] if steps.len() > 1 => {
                    Value::Array(resolve(part).into_iter().map(Value::String).collect())
                }
                _ => Value::String(t.render(resolve)),
            },
            Param::List(items) => Value::Array(items.iter().map(|i| i.render(resolve)).collect()),
            Param::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.render(resolve)))
                    .collect(),
            ),
        }
    }

    fn deps(&self, out: &mut Vec<usize>) {
        match self {
            Param::Value(_) => {}
            Param::Template(t) => out.extend(t.deps()),
            Param::List(items) => items.iter().for_each(|i| i.deps(out)),
            Param::Map(m) => m.values().for_each(|v| v.deps(out)),
        }
    }
}

impl Workflow {
    /// Index of the step called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Steps matching a command-line target: an exact name, or a base name (all its expansions).
    pub fn select(&self, target: &str) -> Result<Vec<usize>, String> {
        if let Some(i) = self.index_of(target) {
            return Ok(vec![i]);
        }
        let found: Vec<usize> = (0..self.steps.len())
            .filter(|&i| self.steps[i].base == target)
            .collect();
        if found.is_empty() {
            let hint = did_you_mean(target, self.steps.iter().map(|s| s.base.as_str()))
                .map(|m| format!("; did you mean `{m}`?"))
                .unwrap_or_default();
            return Err(format!(
                "no step `{target}` in {}{hint}",
                self.source.path.display()
            ));
        }
        Ok(found)
    }

    /// Path of an input, absolute.
    pub fn input_path(&self, input: &Input) -> PathBuf {
        self.workdir.join(&input.path)
    }
}

/// Read, check and resolve a workflow file. Every problem found is reported, each with its place.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Workflow, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![
            Diagnostic::file(path, format!("cannot read workflow: {e}"))
                .with_help("check the path; `dnaflow run FILE` takes a workflow YAML file"),
        ])
    })?;
    let source = Source::new(path, text);
    let file = parse(&source).map_err(|d| Diagnostics(vec![d]))?;
    let wf = Resolver::new(&source, opts).resolve(file)?;
    tracing::info!(workflow = %wf.name, steps = wf.steps.len(), workdir = %wf.workdir.display(), profile = ?wf.profile, "loaded workflow");
    Ok(wf)
}

fn parse(source: &Source) -> Result<WorkflowFile, Diagnostic> {
    if source.text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        let start = Span {
            line: 1,
            column: 1,
            ..Span::default()
        };
        return Err(Diagnostic::at(
            source,
            start,
            "the workflow is empty: it needs at least `name` and `steps`",
        )
        .with_help(format!("for example:\n{}", fields::EXAMPLE)));
    }
    let options = serde_saphyr::options! { with_snippet: false, budget: fields::budget() };
    serde_saphyr::from_str_with_options::<WorkflowFile>(&source.text, options).map_err(|e| {
        let span = e
            .location()
            .map(|l| Span::from_location(&l))
            .unwrap_or_default();
        let mut message = e.to_string();
        // The parser appends its own position; ours comes first in the diagnostic.
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        let field = fields::field_at(&source.text, span);
        let (message, help) = match fields::explain(&message, field.as_deref()) {
            Some(explained) => explained,
            None => explain_parse_error(&message),
        };
        let d = Diagnostic::at(source, span, message);
        match help {
            Some(h) => d.with_help(h),
            None => d,
        }
    })
}

/// Parser messages in the words of a workflow author, with a hint where one helps.
fn explain_parse_error(message: &str) -> (String, Option<String>) {
    if let Some(key) = message.strip_prefix("duplicate mapping key: ") {
        let key = key.split(", set DuplicateKeyPolicy").next().unwrap_or(key);
        return (
            format!("duplicate key `{key}`"),
            Some("each key (and each step name) may appear only once in a mapping".into()),
        );
    }
    for (ty, what) in [
        ("u32", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("f64", "a number"),
        ("bool", "true or false"),
    ] {
        if message.starts_with(&format!("invalid {ty}")) {
            return (format!("expected {what}"), None);
        }
    }
    (message.to_string(), unknown_field_hint(message))
}

/// serde lists the expected fields; turn that into a "did you mean".
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let field = rest.split('`').next()?;
    let after = rest.split_once('`').map_or("", |(_, a)| a);
    let expected: Vec<&str> = match after.split_once("expected one of ") {
        // serde-saphyr lists names bare, serde_json in backticks.
        Some((_, list)) => list.split(", ").map(|n| n.trim_matches('`')).collect(),
        None => after.split('`').skip(1).step_by(2).collect(),
    };
    let best = did_you_mean(field, expected.iter().copied());
    Some(match best {
        Some(b) => format!("did you mean `{b}`?"),
        None => format!("allowed here: {}", expected.join(", ")),
    })
}

struct Resolver<'a> {
    source: &'a Source,
    opts: &'a LoadOptions,
    errors: Vec<Diagnostic>,
    params: IndexMap<String, Value>,
    /// `out` and `metrics`: the outputs of every shell step that names none of its own.
    default_outputs: Outputs,
}

/// A step instance during resolution.
struct Instance<'f> {
    name: String,
    base: String,
    span: Span,
    matrix: IndexMap<String, Value>,
    def: &'f StepDef,
    outputs: Outputs,
}

impl<'a> Resolver<'a> {
    fn new(source: &'a Source, opts: &'a LoadOptions) -> Resolver<'a> {
        Resolver {
            source,
            opts,
            errors: Vec::new(),
            params: IndexMap::new(),
            default_outputs: Outputs::new(IndexMap::from([
                ("out".to_string(), String::new()),
                ("metrics".to_string(), "metrics.json".to_string()),
            ])),
        }
    }

    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.errors.push(Diagnostic::at(self.source, span, message));
        self.errors.last_mut().expect("just pushed")
    }

    fn resolve(mut self, file: WorkflowFile) -> Result<Workflow, Diagnostics> {
        let file_dir = self
            .source
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let file_dir = if file_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            file_dir
        };
        let workdir = match &file.workdir {
            Some(w) => {
                let dir = file_dir.join(&w.value);
                if !dir.is_dir() {
                    self.error(
                        w.span,
                        format!("workdir `{}` is not a directory", dir.display()),
                    );
                }
                dir
            }
            None => file_dir,
        };
        let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
        let name = match &file.name {
            Some(n) => {
                if !valid_name(&n.value) {
                    self.error(
                        n.span,
                        format!(
                            "workflow name `{}` may only use letters, digits, `_` and `-`",
                            n.value
                        ),
                    );
                }
                n.value.clone()
            }
            None => self
                .source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow".into()),
        };

        let budget = file
            .budget
            .as_ref()
            .and_then(|b| match humantime::parse_duration(&b.value) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(
                        b.span,
                        format!("`budget: {}` is not a duration: {e}", b.value),
                    )
                    .help = Some("write it like `90s`, `3m` or `1h 30m`".into());
                    None
                }
            });
        self.resolve_params(&file);
        let instances = self.expand(&file);
        let steps = self.bind(&instances, &workdir);
        let publish = file
            .publish
            .as_ref()
            .map(|p| self.resolve_publish(p, &steps));

        if !self.errors.is_empty() {
            return Err(Diagnostics(self.errors));
        }
        Ok(Workflow {
            name,
            description: file.description.clone(),
            source: self.source.clone(),
            workdir,
            profile: self.opts.profile.clone(),
            params: self.params,
            device: self.opts.device.clone(),
            budget,
            executor: file.executor,
            steps,
            publish,
        })
    }

    /// The workflow's `publish:`: its folder with parameters filled in, and each listed output
    /// bound to its step(s); a name that is no step, or an output the step lacks, is an error
    /// at the line that wrote it.
    fn resolve_publish(&mut self, p: &syntax::WorkflowPublish, steps: &[Step]) -> Publish {
        let mut to = String::new();
        match template::parse(&p.to.value) {
            Err(e) => {
                self.error(p.to.span, e);
            }
            Ok(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => to.push_str(&t),
                        Piece::Expr(Expr::Param(name)) if self.params.contains_key(&name) => {
                            to.push_str(&value_text(&self.params[&name]));
                        }
                        Piece::Expr(_) => {
                            self.error(
                                p.to.span,
                                "the workflow's `publish: { to: … }` may use `${{ params.NAME }}` \
                                 (a declared parameter) only",
                            );
                        }
                    }
                }
            }
        }
        if to.trim().is_empty() {
            self.error(p.to.span, "`publish: { to: … }` is empty").help =
                Some("name a folder, e.g. `to: results`".into());
        }
        let mut outputs = Vec::new();
        for item in &p.outputs {
            let written = item.value.trim();
            let (name, output) = match written.strip_prefix("steps.") {
                Some(rest) => match rest.rsplit_once('.') {
                    // `steps.sweep[lr=0.1]`: that dot is the value's.
                    Some((n, o)) if !o.contains(']') => (n, o),
                    _ => (rest, "out"),
                },
                None => (written, "out"),
            };
            let matched: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].name == name || steps[i].base == name)
                .collect();
            let Some(&first) = matched.first() else {
                let hint = crate::diag::did_you_mean(name, steps.iter().map(|s| s.base.as_str()))
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                self.error(
                    item.span,
                    format!("`publish:` names `{written}`, but there is no step `{name}`"),
                )
                .help = Some(format!(
                    "{hint}write `steps.STEP.OUTPUT` for one output or a step's name for all of them"
                ));
                continue;
            };
            if !steps[first].outputs.contains_key(output) {
                let names: Vec<&str> = steps[first].outputs.keys().map(String::as_str).collect();
                self.error(
                    item.span,
                    format!("`publish:` names `{written}`, but `{name}` has no output `{output}`"),
                )
                .help = Some(format!("its outputs: {}", names.join(", ")));
                continue;
            }
            outputs.extend(matched.into_iter().map(|i| (i, output.to_string())));
        }
        if p.outputs.is_empty() {
            self.error(p.to.span, "the workflow's `publish:` lists no `outputs`")
                .help = Some("e.g. `outputs: [steps.train.model, score]`".into());
        }
        Publish { to, outputs }
    }

    fn resolve_params(&mut self, file: &WorkflowFile) {
        for (k, v) in &file.params {
            if !valid_name(&k.value) {
                self.error(
                    k.span,
                    format!(
                        "parameter name `{}` may only use letters, digits, `_` and `-`",
                        k.value
                    ),
                );
            }
            self.params.insert(k.value.clone(), v.value.to_json());
        }
        // Every profile is checked, chosen or not, so a typo shows up before anyone needs it.
        for (name, overrides) in &file.profiles {
            for (k, _) in &overrides.value {
                if !self.params.contains_key(&k.value) {
                    let hint = self.param_hint(&k.value);
                    self.error(
                        k.span,
                        format!(
                            "profile `{}` sets `{}`, which is not a parameter",
                            name.value, k.value
                        ),
                    )
                    .help = Some(format!("declare it under `params:` first{hint}"));
                }
            }
        }
        if let Some(profile) = &self.opts.profile {
            match file.profiles.iter().find(|(k, _)| &k.value == profile) {
                Some((_, overrides)) => {
                    for (k, v) in &overrides.value {
                        if self.params.contains_key(&k.value) {
                            self.params.insert(k.value.clone(), v.value.to_json());
                        }
                    }
                }
                None => {
                    let names: Vec<&str> = file.profiles.keys().map(|k| k.value.as_str()).collect();
                    let help = if names.is_empty() {
                        "this workflow defines no profiles".to_string()
                    } else {
                        format!("profiles here: {}", names.join(", "))
                    };
                    self.errors.push(
                        Diagnostic::file(&self.source.path, format!("no profile `{profile}`"))
                            .with_help(help),
                    );
                }
            }
        }
        for (k, raw) in &self.opts.sets {
            if !self.params.contains_key(k) {
                let hint = self.param_hint(k);
                self.errors.push(
                    Diagnostic::file(
                        &self.source.path,
                        format!("--set {k}=…: `{k}` is not a parameter of this workflow"),
                    )
                    .with_help(format!(
                        "parameters: {}{hint}",
                        self.params.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                );
                continue;
            }
            let value = serde_saphyr::from_str::<Node>(raw)
                .map(|n| n.to_json())
                .unwrap_or_else(|_| Value::String(raw.clone()));
            if let Some(wanted) = set_mismatch(&self.params[k], &value) {
                self.errors.push(
                    Diagnostic::file(
                        &self.source.path,
                        format!("--set {k}={raw}: parameter `{k}` takes {wanted}, not `{raw}`"),
                    )
                    .with_help(format!(
                        "its value here is {}; e.g. `--set {k}={}`",
                        self.params[k], self.params[k]
                    )),
                );
                continue;
            }
            self.params.insert(k.clone(), value);
        }
    }

    fn param_hint(&self, name: &str) -> String {
        did_you_mean(name, self.params.keys().map(String::as_str))
            .map(|m| format!("; did you mean `{m}`?"))
            .unwrap_or_default()
    }

    /// Expand `foreach` steps into instances with readable names.
    fn expand<'f>(&mut self, file: &'f WorkflowFile) -> Vec<Instance<'f>> {
        // At least one instance per step (more with `foreach`); sized so a large workflow's
        // list is not copied as it grows.
        let mut out: Vec<Instance<'f>> = Vec::with_capacity(file.steps.len());
        let mut seen: HashMap<String, Span> = HashMap::with_capacity(file.steps.len());
        for (key, def) in &file.steps {
            let base = key.value.clone();
            if !valid_name(&base) {
                self.error(
                    key.span,
                    format!("step name `{base}` may only use letters, digits, `_` and `-`"),
                )
                .help = Some("dots and brackets are reserved for references and expansions".into());
                continue;
            }
            let def = &def.value;
            let outputs = self.outputs_of(def);
            for matrix in self.matrix_rows(def) {
                let name = if matrix.is_empty() {
                    base.clone()
                } else {
                    let pairs: Vec<String> = matrix
                        .iter()
                        .map(|(k, v)| format!("{k}={}", value_text(v)))
                        .collect();
                    format!("{base}[{}]", pairs.join(","))
                };
                if let Some(prev) = seen.get(&name) {
                    let msg = format!(
                        "two steps are named `{name}` (the other is at line {})",
                        prev.line
                    );
                    self.error(key.span, msg);
                    continue;
                }
                seen.insert(name.clone(), key.span);
                out.push(Instance {
                    name,
                    base: base.clone(),
                    span: key.span,
                    matrix,
                    def,
                    outputs: outputs.clone(),
                });
            }
        }
        out
    }

    fn outputs_of(&mut self, def: &StepDef) -> Outputs {
        if def.uses.is_none() && def.outputs.is_empty() {
            return self.default_outputs.clone();
        }
        let mut outputs = IndexMap::clone(&self.default_outputs);
        if let Some(kind) = def.uses.as_ref().and_then(|u| steps::find(&u.value)) {
            for (name, path) in kind.outputs {
                outputs.insert(name.to_string(), path.to_string());
            }
        }
        for (k, v) in &def.outputs {
            if def.uses.is_some() {
                self.error(
                    k.span,
                    "`outputs:` is for shell steps; a built-in kind names its own outputs",
                );
            } else if outputs.contains_key(&k.value) {
                self.error(k.span, format!("output name `{}` is reserved", k.value));
            } else if !valid_name(&k.value) {
                self.error(
                    k.span,
                    format!(
                        "output name `{}` may only use letters, digits, `_` and `-`",
                        k.value
                    ),
                );
            } else if Path::new(&v.value).is_absolute() || v.value.split('/').any(|c| c == "..") {
                self.error(
                    v.span,
                    format!(
                        "output `{}` must be a path inside the step's output directory",
                        v.value
                    ),
                );
            } else {
                outputs.insert(k.value.clone(), v.value.clone());
            }
        }
        Outputs::new(outputs)
    }

    /// The rows of a `foreach` grid (one empty row for a plain step).
    fn matrix_rows(&mut self, def: &StepDef) -> Vec<IndexMap<String, Value>> {
        let Some(foreach) = &def.foreach else {
            return vec![IndexMap::new()];
        };
        if foreach.value.is_empty() {
            self.error(
                foreach.span,
                "`foreach:` needs at least one key with a list of values",
            );
            return vec![];
        }
        let mut rows = vec![IndexMap::new()];
        for (key, values) in &foreach.value {
            if !valid_name(&key.value) {
                self.error(
                    key.span,
                    format!(
                        "foreach key `{}` may only use letters, digits, `_` and `-`",
                        key.value
                    ),
                );
                return vec![];
            }
            let list = match self.list_value(values) {
                Some(l) if !l.is_empty() => l,
                Some(_) => {
                    self.error(
                        values.span,
                        format!("foreach `{}` has an empty list", key.value),
                    );
                    return vec![];
                }
                None => return vec![],
            };
            rows = rows
                .into_iter()
                .flat_map(|row| {
                    list.iter().map(move |v| {
                        let mut r = row.clone();
                        r.insert(key.value.clone(), v.clone());
                        r
                    })
                })
                .collect();
        }
        rows
    }

    /// A list written inline, or a `${{ params.NAME }}` holding one; a whole number N (written
    /// or from a parameter) counts 0 … N-1, so one parameter (`folds`) sets the copies.
    fn list_value(&mut self, node: &Located<Node>) -> Option<Vec<Value>> {
        let value = match &node.value {
            Node::String(s) => match template::parse(s) {
                Ok(p) => match p.as_slice() {
                    [Piece::Expr(Expr::Param(name))] => match self.params.get(name) {
                        Some(v) => v.clone(),
                        None => {
                            let hint = self.param_hint(name);
                            self.error(node.span, format!("unknown parameter `{name}`{hint}"));
                            return None;
                        }
                    },
                    _ => node.value.to_json(),
                },
                Err(e) => {
                    self.error(node.span, e);
                    return None;
                }
            },
            other => other.to_json(),
        };
        match value {
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => {
                let n = n.as_u64().unwrap_or(0);
                Some((0..n).map(Value::from).collect())
            }
            Value::Array(items) => {
                if let Some(bad) = items.iter().find(|v| v.is_object() || v.is_array()) {
                    self.error(
                        node.span,
                        format!("foreach values must be scalars, found {bad}"),
                    );
                    return None;
                }
                Some(items)
            }
            other => {
                self.error(
                    node.span,
                    format!("foreach values must be a list (or a count), found {other}"),
                );
                None
            }
        }
    }

    /// Resolve every instance's action, references and settings.
    fn bind(&mut self, instances: &[Instance], workdir: &Path) -> Vec<Step> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_base: IndexMap<&str, Vec<usize>> = IndexMap::new();
        for (i, inst) in instances.iter().enumerate() {
            by_name.insert(&inst.name, i);
            by_base.entry(&inst.base).or_default().push(i);
        }
        let index = StepIndex {
            instances,
            by_name,
            by_base,
        };
        let mut steps = Vec::with_capacity(instances.len());
        for (i, inst) in instances.iter().enumerate() {
            steps.extend(self.bind_one(&index, i, inst, workdir));
        }
        steps
    }

    fn bind_one(
        &mut self,
        index: &StepIndex,
        me: usize,
        inst: &Instance,
        workdir: &Path,
    ) -> Option<Step> {
        let def = inst.def;
        let before = self.errors.len();
        let scope = Scope { index, me, inst };

        let action = match (&def.uses, &def.run) {
            (Some(_), Some(run)) => {
                self.error(run.span, "a step has either `uses:` or `run:`, not both");
                None
            }
            (None, None) => {
                self.error(
                    inst.span,
                    format!("step `{}` needs `uses: KIND` or `run: COMMAND`", inst.base),
                );
                None
            }
            (None, Some(run)) => {
                if let Some(w) = &def.with {
                    self.error(
                        w.span,
                        "`with:` gives parameters to a `uses:` kind; a `run:` step has none",
                    )
                    .help = Some("use `${{ params.NAME }}` in the command, or `env:`".into());
                }
                self.template_with(&scope, &run.value, run.span, true, true)
                    .map(|command| Action::Run { command })
            }
            (Some(uses), None) => match steps::find(&uses.value) {
                None => {
                    let names = steps::KINDS.iter().map(|k| k.name);
                    let help = match did_you_mean(&uses.value, names) {
                        Some(m) => format!("did you mean `{m}`? (`dnaflow kinds` lists them all)"),
                        None => "`dnaflow kinds` lists the built-in kinds".to_string(),
                    };
                    self.error(uses.span, format!("unknown step kind `{}`", uses.value))
                        .help = Some(help);
                    None
                }
                Some(kind)
                    if def
                        .with
                        .as_ref()
                        .is_some_and(|w| !matches!(w.value, Node::Map(_) | Node::Null)) =>
                {
                    let (what, example) = fields::form("with").expect("`with` is described");
                    let span = def.with.as_ref().map_or(uses.span, |w| w.span);
                    self.error(span, what).help = Some(format!(
                        "for example: `{example}` (`dnaflow kinds {}` lists its parameters)",
                        kind.name
                    ));
                    None
                }
                Some(kind) => {
                    let empty = Located::new(Node::Map(IndexMap::new()), uses.span);
                    let with_node = def.with.as_ref().unwrap_or(&empty);
                    self.param(&scope, with_node).and_then(|with| {
                        self.check_kind(kind, &with, with_node)
                            .then_some(Action::Uses { kind, with })
                    })
                }
            },
        };

        let mut inputs = Vec::new();
        for i in &def.inputs {
            if let Some(t) = self.template(&scope, &i.value, i.span, false) {
                let path = t.render(&mut |_| vec![]);
                inputs.push(Input {
                    path,
                    span: i.span,
                    param: None,
                });
            }
        }
        // A kind's file parameters (typed `InputPath`) that name project files, not upstream
        // outputs: their bytes enter the key like `inputs:` do.
        if let Some(Action::Uses { kind, with }) = &action {
            let node = def.with.as_ref();
            let mut found = Vec::new();
            for pointer in steps::input_pointers(kind) {
                literal_paths(with, node, pointer, "", &mut |name, path, span| {
                    found.push(Input {
                        path: path.to_string(),
                        span: span.unwrap_or(inst.span),
                        param: Some(name),
                    });
                });
            }
            for input in found {
                if input.path.trim().is_empty() {
                    let name = input.param.as_deref().unwrap_or("a file parameter");
                    self.error(
                        input.span,
                        format!("`{name}` is empty: it names a file or directory"),
                    )
                    .help = Some(
                        "give a path relative to the workdir, or leave the parameter out".into(),
                    );
                } else {
                    inputs.push(input);
                }
            }
        }
        for input in &inputs {
            if !workdir.join(&input.path).exists() {
                self.error(input.span, format!("input `{}` not found", input.path))
                    .help = Some(format!(
                    "looked for {}; paths are relative to the workdir",
                    workdir.join(&input.path).display()
                ));
            }
        }

        let mut deps = Vec::new();
        if let Some(a) = &action {
            match a {
                Action::Run { command } => deps.extend(command.deps()),
                Action::Uses { with, .. } => with.deps(&mut deps),
            }
        }
        let mut publish = Vec::new();
        for (k, v) in &def.publish {
            if !inst.outputs.contains_key(&k.value) {
                let names: Vec<&str> = inst.outputs.keys().map(String::as_str).collect();
                self.error(
                    k.span,
                    format!(
                        "`publish:` names `{}`, which is not an output of this step",
                        k.value
                    ),
                )
                .help = Some(format!("its outputs: {}", names.join(", ")));
                continue;
            }
            if let Some(t) = self.template_with(&scope, &v.value, v.span, false, false) {
                if t.0
                    .iter()
                    .any(|p| matches!(p, Part::Out | Part::Output { .. }))
                {
                    self.error(v.span, "a `publish:` destination may use `${{ params.… }}` and `${{ matrix.… }}` only");
                    continue;
                }
                publish.push((k.value.clone(), t));
            }
        }
        let mut env = IndexMap::new();
        for (k, v) in &def.env {
            if !valid_env_name(&k.value) {
                self.error(
                    k.span,
                    format!("`{}` is not a valid environment variable name", k.value),
                );
            }
            if let Some(t) = self.template_with(&scope, &v.value, v.span, true, true) {
                deps.extend(t.deps());
                env.insert(k.value.clone(), t);
            }
        }
        for need in &def.needs {
            if let Some(found) = self.select_steps(&scope, &need.value, need.span) {
                deps.extend(found);
            }
        }
        deps.sort_unstable();
        deps.dedup();

        let resources = self.resources(def, inst.span);
        match &action {
            Some(Action::Uses { kind, with }) => self.check_ranks(kind, with, &resources),
            Some(Action::Run { .. }) if resources.nodes > 1 => {
                self.error(
                    resources.span,
                    "`nodes` spreads the ranks of a training step; a `run:` command runs once",
                )
                .help = Some("remove `nodes`, or run the command on each node yourself".into());
            }
            _ => {}
        }
        let mut expect = Vec::new();
        for (metric, e) in &def.expect {
            let ex = &e.value;
            if ex.min.is_none() && ex.max.is_none() && ex.equals.is_none() {
                self.error(
                    e.span,
                    format!("expectation on `{}` sets no bound", metric.value),
                )
                .help = Some("use `min`, `max` or `equals` (with optional `tol`)".into());
            } else if ex.tol.is_some() && ex.equals.is_none() {
                self.error(e.span, "`tol` only applies to `equals`");
            } else if let (Some(lo), Some(hi)) = (ex.min, ex.max)
                && lo > hi
            {
                self.error(e.span, format!("`min` {lo} is above `max` {hi}"));
            }
            expect.push((metric.clone(), ex.clone()));
        }

        if self.errors.len() > before {
            return None;
        }
        Some(Step {
            name: inst.name.clone(),
            base: inst.base.clone(),
            span: inst.span,
            matrix: inst.matrix.clone(),
            action: action?,
            inputs,
            outputs: inst.outputs.clone(),
            deps,
            resources,
            retries: def.retries,
            executor: def.executor,
            env,
            expect,
            publish,
        })
    }

    /// `with:` with references replaced by sample paths: one per referenced step, so list
    /// lengths match what the run will pass.
    fn sample(with: &Param) -> serde_json::Value {
        with.render(&mut |part| match part {
            Part::Output { steps, output } => steps
                .iter()
                .map(|i| format!("/upstream/{i}/{output}"))
                .collect(),
            Part::Text(t) | Part::Param { text: t, .. } => vec![t.clone()],
            Part::Out => vec!["/upstream/out".to_string()],
        })
    }

    /// A training step's ranks against its resources: one rank per granted GPU at most,
    /// ranks dealt evenly over `nodes`, and threads only in one process.
    fn check_ranks(&mut self, kind: &StepKind, with: &Param, res: &ResourceNeeds) {
        let sample = Self::sample(with);
        let Some((ranks, how)) = crate::steps::rank_request(kind.name, &sample) else {
            if res.nodes > 1 {
                self.error(
                    res.span,
                    format!(
                        "`nodes` spreads the ranks of a training step; `{}` has none",
                        kind.name
                    ),
                )
                .help = Some(format!(
                    "only {} train on several nodes",
                    crate::steps::RANKED_KINDS.join(", ")
                ));
            }
            return;
        };
        let (gpus, nodes) = (res.gpus as usize, res.nodes as usize);
        let ranks = ranks.unwrap_or(if gpus > 0 { gpus * nodes } else { 1 });
        let problem = if gpus > 0 && ranks > gpus * nodes {
            Some((
                format!(
                    "`ranks` {ranks} is more than the {} GPU(s) the step is granted ({gpus} per \
                     node × {nodes} node(s)): each rank takes one GPU",
                    gpus * nodes
                ),
                format!(
                    "lower `ranks`, or raise `resources.gpus` to {}",
                    ranks.div_ceil(nodes)
                ),
            ))
        } else if !ranks.is_multiple_of(nodes) {
            Some((
                format!("`ranks` {ranks} cannot be dealt evenly over {nodes} nodes"),
                format!("make `ranks` a multiple of {nodes}"),
            ))
        } else if how == crate::steps::RanksAs::Threads && (nodes > 1 || gpus > 1) {
            Some((
                "`ranks_as: threads` runs every rank in one process, on one node's CPU".into(),
                "use `ranks_as: processes` (or leave it out) for GPUs and several nodes".into(),
            ))
        } else {
            None
        };
        if let Some((msg, help)) = problem {
            self.error(res.span, msg).help = Some(help);
        }
    }

    /// Check `with:` against the kind's typed parameters, references replaced by sample paths.
    fn check_kind(&mut self, kind: &StepKind, with: &Param, node: &Located<Node>) -> bool {
        let sample = Self::sample(with);
        match (kind.check)(&sample) {
            Ok(()) => true,
            Err(msg) => {
                // Point at the offending key when serde names one.
                let field = msg.split('`').nth(1).unwrap_or("");
                let span = match &node.value {
                    Node::Map(m) => m.keys().find(|k| k.value == field).map(|k| k.span),
                    _ => None,
                }
                .unwrap_or(node.span);
                let help = unknown_field_hint(&msg).unwrap_or_else(|| {
                    format!("`dnaflow kinds {}` describes its parameters", kind.name)
                });
                self.error(span, format!("bad parameters for `{}`: {msg}", kind.name))
                    .help = Some(help);
                false
            }
        }
    }

    fn param(&mut self, scope: &Scope, node: &Located<Node>) -> Option<Param> {
        Some(match &node.value {
            Node::String(s) => {
                let pieces = match template::parse(s) {
                    Ok(p) => p,
                    Err(e) => {
                        self.error(node.span, e);
                        return None;
                    }
                };
                // A string that is one parameter or matrix value keeps that value's type.
                if let [Piece::Expr(e @ (Expr::Param(_) | Expr::Matrix(_)))] = pieces.as_slice() {
                    let value = self.scalar_expr(scope, e, node.span)?;
                    // A parameter may hold a step's output (`model: "${{ steps.bert.model }}"`),
                    // so a profile or `--set` can swap it for a checkpoint directory; it is
                    // read once, as if written here.
                    if let (Expr::Param(_), Value::String(text)) = (e, &value)
                        && text.contains("${{")
                    {
                        let t = self.template(scope, text, node.span, true)?;
                        return Some(match t.0.as_slice() {
                            [Part::Text(text)] => Param::Value(Value::String(text.clone())),
                            _ => Param::Template(t),
                        });
                    }
                    return Some(Param::Value(value));
                }
                let t = self.template(scope, s, node.span, true)?;
                match t.0.as_slice() {
                    [] => Param::Value(Value::String(String::new())),
                    [Part::Text(text)] => Param::Value(Value::String(text.clone())),
                    _ => Param::Template(t),
                }
            }
            Node::Seq(items) => {
                let mut out = Vec::new();
                for i in items {
                    out.push(self.param(scope, i)?);
                }
                Param::List(out)
            }
            Node::Map(m) => {
                let mut out = IndexMap::new();
                for (k, v) in m {
                    out.insert(k.value.clone(), self.param(scope, v)?);
                }
                Param::Map(out)
            }
            other => Param::Value(other.to_json()),
        })
    }

    fn scalar_expr(&mut self, scope: &Scope, e: &Expr, span: Span) -> Option<Value> {
        match e {
            Expr::Param(name) => match self.params.get(name) {
                Some(v) => Some(v.clone()),
                None => {
                    let hint = self.param_hint(name);
                    self.error(span, format!("unknown parameter `{name}`{hint}"))
                        .help = Some("declare it under `params:`".into());
                    None
                }
            },
            Expr::Matrix(name) => match scope.inst.matrix.get(name) {
                Some(v) => Some(v.clone()),
                None => {
                    let msg = if scope.inst.matrix.is_empty() {
                        format!(
                            "`matrix.{name}` used in step `{}`, which has no `foreach:`",
                            scope.inst.base
                        )
                    } else {
                        let keys: Vec<&str> =
                            scope.inst.matrix.keys().map(String::as_str).collect();
                        format!(
                            "`matrix.{name}` is not a foreach key of `{}` (keys: {})",
                            scope.inst.base,
                            keys.join(", ")
                        )
                    };
                    self.error(span, msg);
                    None
                }
            },
            _ => None,
        }
    }

    /// Bind a string's references. `steps_allowed` is false where only project files may be
    /// named; shell commands and `env:` values (`steps_allowed`, not `with:`) keep parameters
    /// as [`Part::Param`].
    fn template(
        &mut self,
        scope: &Scope,
        s: &str,
        span: Span,
        steps_allowed: bool,
    ) -> Option<Template> {
        self.template_with(scope, s, span, steps_allowed, false)
    }

    fn template_with(
        &mut self,
        scope: &Scope,
        s: &str,
        span: Span,
        steps_allowed: bool,
        keep_params: bool,
    ) -> Option<Template> {
        let pieces = match template::parse(s) {
            Ok(p) => p,
            Err(e) => {
                self.error(span, e);
                return None;
            }
        };
        let mut parts: Vec<Part> = Vec::new();
        let mut ok = true;
        for piece in pieces {
            let part = match piece {
                Piece::Text(t) => Part::Text(t),
                Piece::Expr(e @ (Expr::Param(_) | Expr::Matrix(_))) => {
                    match (self.scalar_expr(scope, &e, span), e) {
                        (Some(v), Expr::Param(name)) if keep_params => Part::Param {
                            name,
                            text: value_text(&v),
                        },
                        (Some(v), _) => Part::Text(value_text(&v)),
                        (None, _) => {
                            ok = false;
                            continue;
                        }
                    }
                }
                Piece::Expr(Expr::Out) if steps_allowed => Part::Out,
                Piece::Expr(Expr::Step { step, output }) if steps_allowed => {
                    match self.select_steps(scope, &step, span) {
                        Some(found) => {
                            for &f in &found {
                                let target = &scope.index.instances[f];
                                if !target.outputs.contains_key(&output) {
                                    let names: Vec<&str> =
                                        target.outputs.keys().map(String::as_str).collect();
                                    let hint = did_you_mean(&output, names.iter().copied())
                                        .map(|m| format!("did you mean `{m}`? "))
                                        .unwrap_or_default();
                                    self.error(
                                        span,
                                        format!("step `{}` has no output `{output}`", target.name),
                                    )
                                    .help =
                                        Some(format!("{hint}its outputs: {}", names.join(", ")));
                                    ok = false;
                                }
                            }
                            Part::Output {
                                steps: found,
                                output,
                            }
                        }
                        None => {
                            ok = false;
                            continue;
                        }
                    }
                }
                Piece::Expr(_) => {
                    self.error(span, "this field names project files: `${{ out }}` and `${{ steps.… }}` are not allowed here")
                        .help = Some("reference upstream outputs in `run:`, `with:` or `env:` instead".into());
                    ok = false;
                    continue;
                }
            };
            match (parts.last_mut(), part) {
                (Some(Part::Text(prev)), Part::Text(t)) => prev.push_str(&t),
                (_, p) => parts.push(p),
            }
        }
        ok.then_some(Template(parts))
    }

    /// The instances a reference `name` means, seen from the current step.
    fn select_steps(&mut self, scope: &Scope, name: &str, span: Span) -> Option<Vec<usize>> {
        let index = scope.index;
        if name == scope.inst.name
            || (name == scope.inst.base && !name.contains('[') && scope.inst.matrix.is_empty())
        {
            self.error(span, format!("step `{}` refers to itself", scope.inst.name))
                .help = Some("a step writes its own results into `${{ out }}`".into());
            return None;
        }
        if name.contains('[') {
            return match index.by_name.get(name) {
                Some(&i) => Some(vec![i]),
                None => {
                    let hint = did_you_mean(name, index.instances.iter().map(|s| s.name.as_str()))
                        .map(|m| format!("did you mean `{m}`?"))
                        .unwrap_or_else(|| "`dnaflow dag FILE` lists the step names".into());
                    self.error(span, format!("unknown step `{name}`")).help = Some(hint);
                    None
                }
            };
        }
        let Some(all) = index.by_base.get(name) else {
            let hint = did_you_mean(name, index.by_base.keys().copied())
                .map(|m| format!("did you mean `{m}`?"))
                .unwrap_or_else(|| {
                    format!(
                        "steps: {}",
                        index.by_base.keys().copied().collect::<Vec<_>>().join(", ")
                    )
                });
            self.error(span, format!("unknown step `{name}`")).help = Some(hint);
            return None;
        };
        // Within a foreach, a reference to a step expanded over the same keys means the matching copy.
        let mine = &scope.inst.matrix;
        let chosen: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| {
                index.instances[i]
                    .matrix
                    .iter()
                    .all(|(k, v)| mine.get(k).is_none_or(|m| m == v))
            })
            .filter(|&i| i != scope.me)
            .collect();
        if chosen.is_empty() {
            self.error(
                span,
                format!("`{name}` has no expansion matching this step's foreach values"),
            );
            return None;
        }
        Some(chosen)
    }

    fn resources(&mut self, def: &StepDef, span: Span) -> ResourceNeeds {
        let mut r = ResourceNeeds {
            cpus: 1,
            gpus: 0,
            mem_mb: 0,
            nodes: 1,
            span,
        };
        let Some(res) = &def.resources else { return r };
        if let Some(n) = &res.nodes {
            r.nodes = self.count(n, "nodes").unwrap_or(1).max(1) as u32;
        }
        if let Some(n) = &res.cpus {
            r.cpus = self.count(n, "cpus").unwrap_or(1).max(1) as u32;
        }
        if let Some(n) = &res.gpus {
            r.gpus = self.count(n, "gpus").unwrap_or(0) as u32;
        }
        if let Some(n) = &res.mem {
            r.mem_mb = self.mem(n).unwrap_or(0);
        }
        if let Some(s) = (res.cpus.as_ref().or(res.gpus.as_ref()))
            .or(res.mem.as_ref())
            .or(res.nodes.as_ref())
        {
            r.span = s.span;
        }
        r
    }

    fn resource_value(&mut self, node: &Located<Node>) -> Option<Value> {
        match &node.value {
            Node::String(s) => match template::parse(s) {
                Ok(p) => match p.as_slice() {
                    [Piece::Expr(Expr::Param(name))] => {
                        let v = self.params.get(name).cloned();
                        if v.is_none() {
                            let hint = self.param_hint(name);
                            self.error(node.span, format!("unknown parameter `{name}`{hint}"));
                        }
                        v
                    }
                    _ => Some(Value::String(s.clone())),
                },
                Err(e) => {
                    self.error(node.span, e);
                    None
                }
            },
            other => Some(other.to_json()),
        }
    }

    fn count(&mut self, node: &Located<Node>, what: &str) -> Option<u64> {
        let v = self.resource_value(node)?;
        match v.as_u64() {
            Some(n) => Some(n),
            None => {
                self.error(
                    node.span,
                    format!("`{what}` must be a whole number, found {v}"),
                );
                None
            }
        }
    }

    fn mem(&mut self, node: &Located<Node>) -> Option<u64> {
        let v = self.resource_value(node)?;
        let parsed = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_mem_mb(s),
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                node.span,
                format!("`mem` must be a size like 512M or 4G, found {v}"),
            );
        }
        parsed
    }
}

struct StepIndex<'i, 'f> {
    instances: &'i [Instance<'f>],
    by_name: HashMap<&'i str, usize>,
    by_base: IndexMap<&'i str, Vec<usize>>,
}

struct Scope<'s, 'i, 'f> {
    index: &'s StepIndex<'i, 'f>,
    me: usize,
    inst: &'s Instance<'f>,
}

/// The literal strings at `pointer` in a kind's `with:` (references to upstream outputs are
/// covered by the upstream keys and skipped), each with its dotted name and, where the YAML
/// spelled it out, its place.
fn literal_paths(
    param: &Param,
    node: Option<&Located<Node>>,
    pointer: &[steps::Seg],
    name: &str,
    found: &mut dyn FnMut(String, &str, Option<Span>),
) {
    use steps::Seg;
    let join = |k: &str| {
        if name.is_empty() {
            k.to_string()
        } else {
            format!("{name}.{k}")
        }
    };
    // The YAML node under `key` (a map key) or at `index` (a list item), when the shapes agree.
    let child_key = |k: &str| match node.map(|n| &n.value) {
        Some(Node::Map(m)) => m.iter().find(|(key, _)| key.value == k).map(|(_, v)| v),
        _ => None,
    };
    let child_index = |i: usize| match node.map(|n| &n.value) {
        Some(Node::Seq(items)) => items.get(i),
        _ => None,
    };
    match (pointer.split_first(), param) {
        (_, Param::Template(_)) => {}
        (_, Param::Value(v)) => {
            let span = node.map(|n| n.span);
            steps::strings_at(v, pointer, name, &mut |n, s| found(n, s, span));
        }
        (Some((Seg::Key(k), rest)), Param::Map(m)) => {
            if let Some(p) = m.get(k) {
                literal_paths(p, child_key(k), rest, &join(k), found);
            }
        }
        (Some((Seg::Each, rest)), Param::List(items)) => {
            for (i, p) in items.iter().enumerate() {
                literal_paths(p, child_index(i), rest, &join(&i.to_string()), found);
            }
        }
        (Some((Seg::Each, rest)), Param::Map(m)) => {
            for (k, p) in m {
                literal_paths(p, child_key(k), rest, &join(k), found);
            }
        }
        _ => {}
    }
}

/// A value as it reads inside a string: text unquoted, lists space-separated.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `512M`, `4G`, `1.5G`, `100` (MiB) → MiB.
pub fn parse_mem_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], s[i..].to_ascii_uppercase()),
        None => (s, String::new()),
    };
    let n: f64 = num.trim().parse().ok()?;
    let factor = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" | "M" => 1.0,
        "K" => 1.0 / 1024.0,
        "G" => 1024.0,
        "T" => 1024.0 * 1024.0,
        _ => return None,
    };
    (n >= 0.0).then(|| (n * factor).ceil() as u64)
}

/// What a `--set` value must be when its type differs from the parameter's value in the file
/// (after the profile): a number stays a number (an integer may become a fraction), a list a
/// list; text takes anything.
fn set_mismatch(current: &Value, new: &Value) -> Option<&'static str> {
    let wanted = match current {
        Value::Number(_) => "a number",
        Value::Bool(_) => "true or false",
        Value::Array(_) => "a list, e.g. [1, 2]",
        Value::Object(_) => "a map, e.g. {a: 1}",
        Value::String(_) | Value::Null => return None,
    };
    let fits = matches!(
        (current, new),
        (Value::Number(_), Value::Number(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Object(_), Value::Object(_))
    );
    (!fits).then_some(wanted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_foreach_count_makes_that_many_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wf.yaml");
        std::fs::write(
            &path,
            "params: { folds: 3 }\nsteps:\n  s:\n    foreach: { fold: \"${{ params.folds }}\" }\n    run: echo ${{ matrix.fold }}\n",
        )
        .expect("write");
        let opts = super::LoadOptions {
            profile: None,
            sets: vec![("folds".into(), "2".into())],
            device: None,
        };
        let wf = super::load(&path, &opts).expect("loads");
        let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s[fold=0]", "s[fold=1]"]);
    }

    #[test]
    fn a_set_value_keeps_the_parameters_type() {
        use serde_json::json;
        assert_eq!(
            super::set_mismatch(&json!(0.002), &json!("abc")),
            Some("a number")
        );
        assert_eq!(super::set_mismatch(&json!(0), &json!(0.5)), None);
        assert_eq!(super::set_mismatch(&json!("char"), &json!(3)), None);
        assert_eq!(
            super::set_mismatch(&json!([1, 2]), &json!(5)),
            Some("a list, e.g. [1, 2]")
        );
        assert_eq!(super::set_mismatch(&json!(true), &json!(false)), None);
    }

    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem_mb("512M"), Some(512));
        assert_eq!(parse_mem_mb("4G"), Some(4096));
        assert_eq!(parse_mem_mb("1.5GiB"), Some(1536));
        assert_eq!(parse_mem_mb("100"), Some(100));
        assert_eq!(parse_mem_mb("lots"), None);
    }
}
