//! Planning: compute every selected step's key, decide cached or run, and say why.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::cache::hash::StatCache;
use crate::cache::key::{Change, diff};
use crate::cache::runs::{self, RunRecord, StepRecord, StepStatus};
use crate::cache::{Cache, CacheError, Recipe};
use crate::diag::Diagnostic;
use crate::graph::Dag;
use crate::workflow::{Action, Part, Step, Workflow};

/// What a plan says of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Cached,
    Run,
}

/// The keys and decisions for the selected steps of a workflow.
pub struct Plan<'w> {
    pub wf: &'w Workflow,
    pub dag: Dag,
    /// Steps in dependency order, only the selected ones.
    pub order: Vec<usize>,
    pub keys: Vec<String>,
    pub recipes: Vec<Option<Recipe>>,
    pub decisions: Vec<Decision>,
    pub reasons: Vec<String>,
    /// Per step, its record in the most recent run that included it.
    pub previous: Vec<Option<StepRecord>>,
    /// Whether the workflow ever ran on this cache.
    pub ran_before: bool,
}

/// Errors while planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Input(Diagnostic),
}

impl<'w> Plan<'w> {
    /// Plan `targets` (and their ancestors; every step when empty).
    pub fn new(
        wf: &'w Workflow,
        dag: Dag,
        targets: &[usize],
        cache: &Cache,
    ) -> Result<Plan<'w>, PlanError> {
        let n = wf.steps.len();
        let selected = dag.ancestors(targets);
        let order: Vec<usize> = dag
            .topo_order()
            .into_iter()
            .filter(|&i| selected[i])
            .collect();
        let mut stat = StatCache::load(&cache.stat_cache_path());
        let mut keys = vec![String::new(); n];
        let mut recipes: Vec<Option<Recipe>> = vec![None; n];
        for &i in &order {
            let recipe = recipe(wf, i, &keys, &mut stat)?;
            keys[i] = recipe.key();
            recipes[i] = Some(recipe);
        }
        // A cache that does not exist yet stays so: planning creates nothing.
        if cache.objects().is_dir()
            && let Err(e) = stat.save(&cache.stat_cache_path())
        {
            tracing::warn!("could not save the stat cache: {e}");
        }

        let mut history = History::new(cache, &wf.name);
        let ran_before = !history.ids.is_empty();
        let mut previous = vec![None; n];
        for &i in &order {
            previous[i] = history.step(&wf.steps[i].name);
        }
        let mut decisions = vec![Decision::Run; n];
        let mut reasons = vec![String::new(); n];
        for &i in &order {
            if cache.has(&keys[i]) {
                decisions[i] = Decision::Cached;
                reasons[i] = "cached".into();
            } else {
                reasons[i] = reason(i, &keys, &recipes, ran_before, previous[i].as_ref(), cache);
            }
        }
        for &i in &order {
            tracing::debug!(step = %wf.steps[i].name, key = %keys[i], decision = ?decisions[i], reason = %reasons[i], "planned");
        }
        let plan = Plan {
            wf,
            dag,
            order,
            keys,
            recipes,
            decisions,
            reasons,
            previous,
            ran_before,
        };
        tracing::info!(
            selected = plan.order.len(),
            to_run = plan.to_run(),
            "plan ready"
        );
        Ok(plan)
    }

    /// Steps that would run.
    pub fn to_run(&self) -> usize {
        self.order
            .iter()
            .filter(|&&i| self.decisions[i] == Decision::Run)
            .count()
    }

    /// Field-level changes of step `i` since the previous run (`None`: nothing to compare).
    pub fn changes(&self, i: usize, cache: &Cache) -> Option<(String, Vec<Change>)> {
        let prev = self.previous[i].as_ref()?;
        let old = cache.recipe(&prev.key)?;
        Some((prev.key.clone(), diff(&old, self.recipes[i].as_ref()?)))
    }
}

/// Run records of one workflow, newest first, read only as far back as needed.
struct History {
    dir: std::path::PathBuf,
    ids: Vec<String>,
    /// Loaded records, each with its steps indexed by name.
    loaded: Vec<(RunRecord, HashMap<String, usize>)>,
}

/// How many earlier runs to search for a step missing from the newer ones.
const HISTORY_DEPTH: usize = 20;

impl History {
    fn new(cache: &Cache, workflow: &str) -> History {
        let mut ids = runs::list(&cache.runs(), workflow);
        ids.reverse();
        ids.truncate(HISTORY_DEPTH);
        History {
            dir: runs::workflow_dir(&cache.runs(), workflow),
            ids,
            loaded: Vec::new(),
        }
    }

    /// The step's record in the newest run that has it (a targeted run may have left it out).
    fn step(&mut self, name: &str) -> Option<StepRecord> {
        let mut at = 0;
        loop {
            if at == self.loaded.len() {
                let id = self.ids.get(at)?;
                let rec = runs::read(&self.dir.join(format!("{id}.json"))).ok()?;
                let index = rec
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.clone(), i))
                    .collect();
                self.loaded.push((rec, index));
            }
            let (rec, index) = &self.loaded[at];
            if let Some(&i) = index.get(name) {
                return Some(rec.steps[i].clone());
            }
            at += 1;
        }
    }
}

/// Why step `i` must run, in one line.
fn reason(
    i: usize,
    keys: &[String],
    recipes: &[Option<Recipe>],
    ran_before: bool,
    previous: Option<&StepRecord>,
    cache: &Cache,
) -> String {
    if !ran_before {
        return "first run of this workflow".into();
    }
    let Some(prev) = previous else {
        return "new step (in none of the recent runs)".into();
    };
    if prev.key == keys[i] {
        return match prev.status {
            StepStatus::Failed => "failed in the previous run".into(),
            StepStatus::Skipped => "skipped in the previous run".into(),
            _ => "output no longer in the cache".into(),
        };
    }
    match (cache.recipe(&prev.key), &recipes[i]) {
        (Some(old), Some(new)) => {
            let changes = diff(&old, new);
            match changes.split_first() {
                Some((first, [])) => first.to_string(),
                Some((first, rest)) => format!("{first} (+{} more)", rest.len()),
                None => "recipe changed".into(),
            }
        }
        _ => "inputs changed (the previous recipe was not kept)".into(),
    }
}

/// The recipe of step `i`; upstream keys must already be in `keys`.
fn recipe(
    wf: &Workflow,
    i: usize,
    keys: &[String],
    stat: &mut StatCache,
) -> Result<Recipe, PlanError> {
    let step = &wf.steps[i];
    let mut symbolic = |part: &Part| symbolic_part(wf, part);
    let (kind, version, command, with) = match &step.action {
        Action::Run { command } => (
            "run".to_string(),
            1,
            Some(command.render(&mut symbolic)),
            None,
        ),
        Action::Uses { kind, with } => (
            kind.name.to_string(),
            kind.version,
            None,
            Some(with.render(&mut symbolic)),
        ),
    };
    let env = step
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.render(&mut symbolic)))
        .collect();
    // Workflow parameters the command and `env:` use, by name: their values enter the key here.
    let mut params = BTreeMap::new();
    let templates = match &step.action {
        Action::Run { command } => Some(command),
        Action::Uses { .. } => None,
    };
    for t in templates.into_iter().chain(step.env.values()) {
        for part in &t.0 {
            if let Part::Param { name, text } = part {
                params.insert(name.clone(), text.clone());
            }
        }
    }
    let mut inputs = BTreeMap::new();
    for input in &step.inputs {
        let path = wf.input_path(input);
        let hash = stat.hash_path(&path).map_err(|e| {
            PlanError::Input(
                Diagnostic::at(
                    &wf.source,
                    input.span,
                    format!("cannot read input `{}`: {e}", input.path),
                )
                .with_help("the file must exist and be readable when the workflow runs"),
            )
        })?;
        inputs.insert(input.path.clone(), hash);
    }
    let upstream = step
        .deps
        .iter()
        .map(|&d| (wf.steps[d].name.clone(), keys[d].clone()))
        .collect();
    let outputs = step
        .outputs
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "out" | "metrics"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Recipe {
        kind,
        version,
        command,
        with: with.map(normalize_numbers),
        env,
        params,
        inputs,
        upstream,
        outputs,
        context: device_context(wf, step),
    })
}

/// `--device` enters the keys of the steps it reaches (model steps), and only theirs.
fn device_context(wf: &Workflow, step: &crate::workflow::Step) -> BTreeMap<String, String> {
    let mut context = BTreeMap::new();
    if let (Some(device), Action::Uses { kind, .. }) = (&wf.device, &step.action)
        && crate::steps::uses_device(kind.name)
    {
        context.insert("device".to_string(), device.clone());
    }
    context
}

/// References as they enter a key: by step name (the upstream key is recorded beside it).
fn symbolic_part(wf: &Workflow, part: &Part) -> Vec<String> {
    match part {
        Part::Text(t) => vec![t.clone()],
        Part::Param { name, .. } => vec![format!("<params.{name}>")],
        Part::Out => vec!["<out>".into()],
        Part::Output { steps, output } => steps
            .iter()
            .map(|&s| format!("<steps.{}.{output}>", wf.steps[s].name))
            .collect(),
    }
}

/// `1.0` and `1` mean the same parameter; key them the same.
fn normalize_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9e15 && !n.is_i64() && !n.is_u64() => {
                Value::from(f as i64)
            }
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize_numbers).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The concrete path of a reference, given upstream keys.
pub fn real_part(
    wf: &Workflow,
    cache: &Cache,
    keys: &[String],
    part: &Part,
    out: &std::path::Path,
) -> Vec<String> {
    match part {
        Part::Text(t) | Part::Param { text: t, .. } => vec![t.clone()],
        Part::Out => vec![out.display().to_string()],
        Part::Output { steps, output } => steps
            .iter()
            .map(|&s| output_path(&wf.steps[s], cache, &keys[s], output))
            .collect(),
    }
}

/// Path of a named output of `step` stored under `key`.
pub fn output_path(step: &Step, cache: &Cache, key: &str, output: &str) -> String {
    let base = cache.out_dir(key);
    match step.outputs.get(output).map(String::as_str) {
        Some("") | None => base.display().to_string(),
        Some(rel) => base.join(rel).display().to_string(),
    }
}
