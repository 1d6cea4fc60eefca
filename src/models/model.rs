//! A model as `transformers` knows one: a backbone from the architecture table with one head
//! (its own LM head, or a task head), loaded from and saved to a model directory under the
//! HF class that has that head, so `AutoModelFor{CausalLM,MaskedLM,SequenceClassification,
//! TokenClassification}` loads what we save.

use std::path::Path;

use burn::prelude::*;
use serde_json::{Value, json};

use super::arch::{self, ArchConfig, Backbone, MeanFold, Tokens, read_config};
use super::device::Precision;
use super::error::ModelError;
use super::io::adapter::{self, LoraSpec, Targets};
use super::io::vars::{Declared, Layout, VarState, Vars, collect};
use super::io::weights::{LoadReport, Weights};
use super::kernels::FusedOps;
use super::nn::heads::{HeadLayout, Pool, Task, TaskHead};
use super::nn::kv_cache::KvCache;
use crate::train::Batch;

/// What a model is: its architecture's config, the task its head does, and the LoRA adapter
/// it trains (when it trains one: the base is then frozen).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub config: ArchConfig,
    pub task: Task,
    pub adapter: Option<LoraSpec>,
}

impl ModelSpec {
    /// The HF class of this architecture with this head.
    pub fn class(&self) -> &'static str {
        let arch = self.config.architecture();
        match self.task {
            Task::Lm => arch.lm_class,
            Task::SeqCls { .. } | Task::Regression { .. } | Task::MultiLabel { .. } => {
                arch.seq_cls_class
            }
            Task::TokenCls { .. } => arch.token_cls_class,
        }
    }

    /// The task head's layout; `None` for the LM head.
    pub fn head_layout(&self) -> Option<HeadLayout> {
        match self.task {
            Task::Lm => None,
            Task::SeqCls { .. } | Task::Regression { .. } | Task::MultiLabel { .. } => {
                Some(self.config.architecture().seq_head)
            }
            Task::TokenCls { .. } => Some(self.config.architecture().token_head),
        }
    }

    /// `config.json`: the architecture's fields, the class, and the labels
    /// (`id2label`/`label2id`, `problem_type`) that `transformers` reads.
    pub fn to_hf_json(&self) -> Value {
        let mut v = self.config.to_hf_json();
        let m = v.as_object_mut().expect("config is an object");
        m.insert("architectures".into(), json!([self.class()]));
        let labels: Vec<String> = match &self.task {
            Task::Lm => return v,
            Task::SeqCls { labels } | Task::TokenCls { labels } | Task::MultiLabel { labels } => {
                labels.clone()
            }
            Task::Regression { .. } => vec!["LABEL_0".into()],
        };
        let id2label: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect();
        let label2id: serde_json::Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect();
        m.insert("id2label".into(), Value::Object(id2label));
        m.insert("label2id".into(), Value::Object(label2id));
        if let Task::SeqCls { .. } | Task::Regression { .. } | Task::MultiLabel { .. } = self.task {
            let problem = match self.task {
                Task::Regression { .. } => "regression",
                Task::MultiLabel { .. } => "multi_label_classification",
                _ => "single_label_classification",
            };
            m.insert("problem_type".into(), problem.into());
        }
        v
    }

    /// The spec of a model directory: the head from `architectures` (none: the LM head),
    /// labels from `id2label`, regression from `problem_type`; of an adapter directory, its
    /// base's (the adapter merged in is a model of the same shapes).
    pub fn read(dir: &Path) -> Result<ModelSpec, ModelError> {
        if adapter::is_adapter_dir(dir) {
            return ModelSpec::read(&adapter::read_adapter_config(dir)?.base);
        }
        let (config, json) = read_config(dir)?;
        let arch = config.architecture();
        let class = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or(arch.lm_class);
        let labels = || -> Vec<String> {
            let Some(map) = json.get("id2label").and_then(Value::as_object) else {
                return Vec::new();
            };
            let mut pairs: Vec<(usize, String)> = map
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                .collect();
            pairs.sort();
            pairs.into_iter().map(|p| p.1).collect()
        };
        let problem = json.get("problem_type").and_then(Value::as_str);
        let task = if class == arch.seq_cls_class {
            if problem == Some("regression") {
                Task::Regression { mean: 0.0, sd: 1.0 }
            } else if problem == Some("multi_label_classification") {
                Task::MultiLabel { labels: labels() }
            } else {
                Task::SeqCls { labels: labels() }
            }
        } else if class == arch.token_cls_class {
            Task::TokenCls { labels: labels() }
        } else if class == arch.lm_class
            || class.ends_with("LMHeadModel")
            || class.ends_with("Model")
        {
            Task::Lm
        } else {
            return Err(ModelError::Format(format!(
                "{}: class `{class}` is not one dnaflow builds for {} ({}, {}, {})",
                dir.join("config.json").display(),
                arch.model_type,
                arch.lm_class,
                arch.seq_cls_class,
                arch.token_cls_class
            )));
        };
        Ok(ModelSpec {
            config,
            task,
            adapter: None,
        })
    }

    /// Declare the whole model (backbone, its LM head or the task head) in one walk.
    fn declare<B: FusedOps>(
        &self,
        vars: &mut Vars<B>,
    ) -> Result<(Backbone<B>, Option<TaskHead<B>>), ModelError> {
        let backbone = Backbone::declare(&self.config, vars, self.task == Task::Lm)?;
        let head = self.declare_head(vars);
        Ok((backbone, head))
    }

    fn declare_head<B: FusedOps>(&self, vars: &mut Vars<B>) -> Option<TaskHead<B>> {
        self.head_layout().map(|layout| {
            TaskHead::declare(
                layout,
                self.config.hidden_size(),
                self.task.outputs().expect("a task head has outputs"),
                self.config.classifier_dropout(),
                self.config.initializer_range(),
                vars,
            )
        })
    }

    /// The PEFT task type of this model's head (`CAUSAL_LM`, `SEQ_CLS`, `TOKEN_CLS`; none for a
    /// masked LM, which PEFT has no type for).
    pub fn peft_task_type(&self) -> Option<&'static str> {
        match self.task {
            Task::Lm if self.config.architecture().lm == arch::LmKind::Causal => Some("CAUSAL_LM"),
            Task::Lm => None,
            Task::TokenCls { .. } => Some("TOKEN_CLS"),
            _ => Some("SEQ_CLS"),
        }
    }

    /// Names of the task head's tensors (none for the LM head).
    pub fn head_names(&self) -> Vec<String> {
        self.init_head(0).names().map(String::from).collect()
    }

    /// Fresh tensors of the task head, seeded (none for the LM head).
    fn init_head(&self, seed: u64) -> Weights {
        let mut state = VarState::<burn::backend::Flex>::fresh(seed, &Default::default());
        self.declare_head(&mut state.root());
        state.into_fresh()
    }

    /// Fresh weights for the whole model, seeded, as transformers initialises them.
    pub fn init_weights(&self, seed: u64) -> Result<Weights, ModelError> {
        let mut state = VarState::<burn::backend::Flex>::fresh(seed, &Default::default());
        self.declare(&mut state.root())?;
        Ok(state.into_fresh())
    }
}

/// A backbone and its one head.
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    backbone: Backbone<B>,
    head: Option<TaskHead<B>>,
    #[module(skip)]
    spec: ModelSpec,
    /// Every tensor's HF name, from the walk that built it: what [`Model::to_weights`] saves.
    #[module(skip)]
    declared: std::sync::Arc<Vec<Declared>>,
    /// The padding id a last-token head skips, read from the config once (not per batch).
    #[module(skip)]
    pad: u32,
}

impl<B: FusedOps> Model<B> {
    /// Build from HF tensors under the spec's head. Tensors of the architecture's other heads
    /// are skipped and this head's missing ones initialised fresh (seeded), both reported by
    /// name; any other missing, misshapen or unused tensor is an error.
    pub fn from_weights(
        spec: &ModelSpec,
        mut w: Weights,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Model<B>, LoadReport), ModelError> {
        let arch = spec.config.architecture();
        w.adopt_fresh(spec.init_head(seed ^ 0x4EAD));
        let mut state =
            VarState::<B>::load(&mut w, device).with_adapter(spec.adapter.as_ref(), seed ^ 0x10_4A);
        let (backbone, head) = spec.declare(&mut state.root())?;
        if let Some(lora) = &spec.adapter {
            check_targets(lora, state.linears())?;
        }
        let started: Vec<String> = state.started().to_vec();
        let declared = std::sync::Arc::new(state.declared());
        // What the walk did not take under a head's prefix belongs to another head.
        let others: Vec<String> = w
            .names()
            .filter(|n| arch.head_prefixes.iter().any(|p| n.starts_with(p)))
            .map(String::from)
            .collect();
        for name in others {
            w.skip_other_head(&name);
        }
        let mut report = w.finish()?;
        report.fresh.extend(started);
        let model = Model {
            backbone,
            head,
            spec: spec.clone(),
            declared,
            pad: spec.config.pad_token_id().unwrap_or(0),
        };
        // Under an adapter only its pairs and the saved modules train: the base gets no
        // gradients and no optimizer state.
        let model = match &spec.adapter {
            Some(lora) => {
                let frozen: Vec<String> = model
                    .declared
                    .iter()
                    .filter(|d| !lora.trains(&d.name))
                    .map(|d| d.name.clone())
                    .collect();
                model.freeze(frozen.iter().map(String::as_str))
            }
            None => model,
        };
        Ok((model, report))
    }

    /// Load a model directory (ours or transformers'), under its own head or under `task`.
    pub fn load(
        dir: &Path,
        task: Option<Task>,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Model<B>, LoadReport), ModelError> {
        if adapter::is_adapter_dir(dir) {
            let a = adapter::read_adapter_dir(dir)?;
            let mut spec = ModelSpec::read(&a.config.base)?;
            spec.adapter = Some(a.config.spec);
            if let Some(task) = task {
                spec.task = task;
            }
            let mut w = read_weights(&a.config.base, &spec)?;
            w.extend(a.weights);
            return Model::from_weights(&spec, w, seed, device);
        }
        let mut spec = ModelSpec::read(dir)?;
        if let Some(task) = task {
            spec.task = task;
        }
        let w = read_weights(dir, &spec)?;
        Model::from_weights(&spec, w, seed, device)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone<B> {
        &self.backbone
    }

    /// Run matrix products in `precision` (weights stay f32).
    pub fn with_precision(self, precision: Precision) -> Self {
        Model {
            backbone: self.backbone.with_precision(precision),
            head: self.head.map(|h| h.with_precision(precision)),
            spec: self.spec,
            declared: self.declared,
            pad: self.pad,
        }
    }

    /// Every tensor under its HF name (a regression head still standardised: checkpoints
    /// keep exactly what trains; [`save_model_dir`] folds it).
    pub fn to_weights(&self) -> Weights {
        collect(self, &self.declared)
    }

    /// Parameters that train (the rest are frozen: a LoRA base, `freeze`d layers).
    pub fn trainable_params(&self) -> usize {
        use burn::module::{ModuleVisitor, Param};
        struct Count(usize);
        impl<B: Backend> ModuleVisitor<B> for Count {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let t = param.val();
                if t.is_require_grad() {
                    self.0 += t.shape().num_elements();
                }
            }
        }
        let mut count = Count(0);
        self.visit(&mut count);
        count.0
    }

    /// The tensors that train: under an adapter its pairs and saved modules only (what a
    /// checkpoint and the best evaluation keep; the frozen base is never copied), else all.
    pub fn trained_weights(&self) -> Weights {
        match &self.spec.adapter {
            Some(lora) => {
                let trained: Vec<Declared> = self
                    .declared
                    .iter()
                    .filter(|d| lora.trains(&d.name))
                    .cloned()
                    .collect();
                collect(self, &trained)
            }
            None => self.to_weights(),
        }
    }

    /// This model with the values of `w` (tensors of [`Model::trained_weights`]: a checkpoint,
    /// the best evaluation) put in place; each keeps whether it trains. A name the model does
    /// not declare, or a shape that differs, is an error naming it.
    pub fn restore(self, mut w: Weights) -> Result<Self, ModelError> {
        use burn::module::{ModuleMapper, Param, ParamId};
        let mut problems = Vec::new();
        type Named = (String, Vec<usize>, Vec<f32>);
        let mut values: std::collections::HashMap<ParamId, Named> =
            std::collections::HashMap::new();
        for d in self.declared.iter() {
            let Some(t) = w.remove(&d.name) else {
                continue;
            };
            let (shape, vals) = match d.layout {
                Layout::AsStored => (t.shape, t.values),
                Layout::Transposed if t.shape.len() == 2 => {
                    let (o, i) = (t.shape[0], t.shape[1]);
                    (vec![i, o], super::io::weights::transpose(&t.values, o, i))
                }
                Layout::Transposed => (t.shape, t.values),
            };
            values.insert(d.id, (d.name.clone(), shape, vals));
        }
        let unknown: Vec<&str> = w.names().collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "tensor(s) this model does not have: {}",
                unknown.join(", ")
            ));
        }
        struct Put<'a> {
            values: std::collections::HashMap<ParamId, Named>,
            problems: &'a mut Vec<String>,
        }
        impl<B: Backend> ModuleMapper<B> for Put<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let Some((name, shape, vals)) = self.values.remove(&param.id) else {
                    return param;
                };
                let have = param.val().dims().to_vec();
                if have != shape {
                    self.problems
                        .push(format!("`{name}` has shape {shape:?}, the model {have:?}"));
                    return param;
                }
                let device = param.val().device();
                let id = param.id;
                let t = Tensor::<B, D>::from_data(TensorData::new(vals, have), &device);
                param.transform_for_load(t, id)
            }
        }
        let mut put = Put {
            values,
            problems: &mut problems,
        };
        let model = self.map(&mut put);
        if !problems.is_empty() {
            return Err(ModelError::Weights {
                file: "checkpoint".into(),
                problems: problems.join("\n  "),
            });
        }
        Ok(model)
    }

    /// Every tensor with each LoRA pair folded into its layer (W + s·B·A, as PEFT's
    /// `merge_and_unload`), the pairs dropped: a plain model of the base's shapes.
    pub fn merged_weights(&self) -> Weights {
        let mut w = self.to_weights();
        if let Some(lora) = &self.spec.adapter {
            let stored_as_is: std::collections::HashSet<String> = self
                .declared
                .iter()
                .filter(|d| d.layout == Layout::AsStored)
                .map(|d| d.name.clone())
                .collect();
            merge_pairs(&mut w, lora.scale(), |name| stored_as_is.contains(name));
        }
        w
    }

    /// Write the adapter as PEFT does (`adapter_config.json`, `adapter_model.safetensors`
    /// with the pairs and saved modules), for the base model directory `base`, with the
    /// tokenizer files beside. Without an adapter, the whole model directory.
    pub fn save_adapter_dir(
        &self,
        dir: &Path,
        base: &Path,
        tokenizer: Option<&Path>,
    ) -> Result<(), ModelError> {
        let Some(lora) = &self.spec.adapter else {
            return self.save_dir(dir, tokenizer);
        };
        // PEFT's flag for layers stored [in, out] (GPT-2's Conv1D).
        let fan_in_fan_out = self.declared.iter().any(|d| {
            d.layout == Layout::AsStored
                && d.name
                    .strip_suffix(".weight")
                    .is_some_and(|m| lora.adapts(m))
        });
        let config = lora.to_peft_json(
            &base.display().to_string(),
            self.spec.peft_task_type(),
            fan_in_fan_out,
        );
        let mut weights = self.trained_weights();
        scale_regression(&self.spec, &mut weights, Direction::Fold);
        adapter::write_adapter_dir(dir, &config, &weights)?;
        if let Some(tok) = tokenizer {
            let framing = self.spec.config.architecture().framing;
            copy_tokenizer(tok, dir, framing)?;
        }
        Ok(())
    }

    /// Next-token logits [B, T, vocab] of `ids` following the positions in `cache`, for
    /// generation; `None` when the architecture is not causal or the model has a task head.
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Option<Tensor<B, 3>> {
        if self.head.is_some() {
            return None;
        }
        self.backbone.forward_cached(ids, cache)
    }

    /// [`Model::forward_cached`]'s logits of the last position only [B, 1, vocab] (what
    /// generation samples from).
    pub fn next_logits(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Option<Tensor<B, 3>> {
        if self.head.is_some() {
            return None;
        }
        self.backbone.next_logits(ids, cache)
    }

    /// Write a model directory `transformers` loads (tokenizer files copied beside).
    pub fn save_dir(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<(), ModelError> {
        save_model_dir(dir, &self.spec, self.to_weights(), tokenizer)
    }

    /// The backbone's layers (for `layer:` of embeddings).
    pub fn layers(&self) -> usize {
        self.backbone.layers()
    }

    /// What the head computes, as rows: LM logits [B·T, vocab], token-head outputs [B·T, n],
    /// sequence-head outputs [B, n] (a regression head: the standardised target).
    pub fn forward(&self, batch: &Batch, device: &B::Device) -> Tensor<B, 2> {
        let tokens = tokens(batch, device);
        let logits = match &self.head {
            Some(head) => {
                let h = self.backbone.hidden(&tokens, self.backbone.layers());
                let read = head_reads(head_pool(&self.spec), batch, self.pad())
                    .map(|i| Tensor::from_data(TensorData::new(i, [batch.b]), device));
                return head.forward(h, read);
            }
            None => self.backbone.lm_logits(&tokens), // [B, T, vocab]
        };
        let [b, t, v] = logits.dims();
        logits.reshape([b * t, v])
    }

    /// The LM head's logits [labelled, vocab] at a batch's labelled positions only (in
    /// order), when the model has its LM head and few enough positions are labelled for that
    /// to pay (an answer after its prompt, masked tokens); `None` otherwise.
    pub fn lm_logits_labelled(&self, batch: &Batch, device: &B::Device) -> Option<Tensor<B, 2>> {
        if self.head.is_some() || batch.labelled * 4 > batch.b * batch.t * 3 {
            return None;
        }
        let rows: Vec<i64> = batch
            .labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l != crate::train::batch::IGNORE)
            .map(|(i, _)| i as i64)
            .collect();
        let n = rows.len();
        let rows = Tensor::from_data(TensorData::new(rows, [n]), device);
        Some(self.backbone.lm_logits_at(&tokens(batch, device), rows))
    }

    /// HF's `hidden_states[layer]` [B, T, d] of a batch (`layer` = the number of layers:
    /// the last).
    pub fn hidden(&self, batch: &Batch, layer: usize, device: &B::Device) -> Tensor<B, 3> {
        self.backbone.hidden(&tokens(batch, device), layer)
    }

    fn pad(&self) -> u32 {
        self.pad
    }
}

/// Fold each LoRA pair of `w` into its layer's weight (W += s·B·A; a layer `stored_as_is`
/// [in, out], GPT-2's Conv1D, gets the transpose) and drop the pairs.
fn merge_pairs(w: &mut Weights, scale: f64, stored_as_is: impl Fn(&str) -> bool) {
    let scale = scale as f32;
    let pairs: Vec<String> = w
        .names()
        .filter_map(|n| n.strip_suffix(".lora_A.weight").map(String::from))
        .collect();
    for module in pairs {
        let a = w
            .remove(&format!("{module}.lora_A.weight"))
            .expect("listed");
        let Some(b) = w.remove(&format!("{module}.lora_B.weight")) else {
            continue;
        };
        let name = format!("{module}.weight");
        let Some(mut weight) = w.remove(&name) else {
            continue;
        };
        let (r, d_in, d_out) = (a.shape[0], a.shape[1], b.shape[0]);
        let as_is = stored_as_is(&name);
        for o in 0..d_out {
            for i in 0..d_in {
                let sum: f32 = (0..r)
                    .map(|k| b.values[o * r + k] * a.values[k * d_in + i])
                    .sum();
                let at = if as_is { i * d_out + o } else { o * d_in + i };
                weight.values[at] += scale * sum;
            }
        }
        w.insert(&name, weight.shape, weight.values);
    }
}

/// The weights of a model directory as a model `spec` trains them: a regression head saved in
/// the target's unit standardised again with the spec's mean and sd. An adapter directory
/// gives its base's weights with the adapter merged in (PEFT's `merge_and_unload`).
pub fn read_weights(dir: &Path, spec: &ModelSpec) -> Result<Weights, ModelError> {
    let mut w = if adapter::is_adapter_dir(dir) {
        let a = adapter::read_adapter_dir(dir)?;
        let mut w = Weights::load_dir(&a.config.base)?;
        w.extend(a.weights);
        merge_pairs(&mut w, a.config.spec.scale(), |_| a.config.fan_in_fan_out);
        w
    } else {
        Weights::load_dir(dir)?
    };
    if let Some(layout) = spec.head_layout()
        && w.contains(&format!("{}.weight", layout.classifier))
    {
        scale_regression(spec, &mut w, Direction::Unfold);
    }
    Ok(w)
}

/// Write `weights` of a model `spec` as a model directory `transformers` loads: a regression
/// head folded into the target's own unit, the tokenizer files copied beside.
pub fn save_model_dir(
    dir: &Path,
    spec: &ModelSpec,
    mut weights: Weights,
    tokenizer: Option<&Path>,
) -> Result<(), ModelError> {
    scale_regression(spec, &mut weights, Direction::Fold);
    let framing = spec.config.architecture().framing;
    save_dir(dir, &spec.to_hf_json(), &weights, tokenizer, framing)
}

fn head_pool(spec: &ModelSpec) -> Option<Pool> {
    spec.head_layout().and_then(|l| l.pool)
}

fn tokens<B: Backend>(batch: &Batch, device: &B::Device) -> Tokens<B> {
    let ints =
        |v: &[i64]| Tensor::from_data(TensorData::new(v.to_vec(), [batch.b, batch.t]), device);
    Tokens {
        ids: ints(&batch.ids),
        types: ints(&batch.types),
        mask: ints(&batch.mask),
        padded: batch.mask.contains(&0),
    }
}

/// Per row, the flat index (`row * T + position`) a sequence head reads: the first token, or
/// the last whose id is not `pad` (as transformers finds it; position 0 when all are pad).
pub fn head_reads(pool: Option<Pool>, batch: &Batch, pad: u32) -> Option<Vec<i64>> {
    let t = batch.t;
    let pool = pool?;
    Some(
        (0..batch.b)
            .map(|i| {
                let pos = match pool {
                    Pool::FirstToken => 0,
                    Pool::LastToken => (0..t)
                        .rev()
                        .find(|&j| batch.ids[i * t + j] != pad as i64)
                        .unwrap_or(0),
                };
                (i * t + pos) as i64
            })
            .collect(),
    )
}

enum Direction {
    /// Standardised head → the target's unit (saving).
    Fold,
    /// The target's unit → standardised head (loading).
    Unfold,
}

/// A regression head learns `(y - mean) / sd`; saved, it predicts `y`: its weights times `sd`,
/// and `mean` added to its bias or, for a head without bias (GPT-2's `score`), to the bias of
/// the layer norm it reads, along the head's weight vector (exact: `w·(x + mean·w/|w|²)` =
/// `w·x + mean`). Unfolding undoes both with the same weight vector.
fn scale_regression(spec: &ModelSpec, w: &mut Weights, direction: Direction) {
    let Task::Regression { mean, sd } = spec.task else {
        return;
    };
    if mean == 0.0 && sd == 1.0 {
        return;
    }
    let Some(layout) = spec.head_layout() else {
        return;
    };
    let (mean, sd) = (mean as f32, sd as f32);
    let c = layout.classifier;
    let weight_name = format!("{c}.weight");
    let Some(mut weight) = w.remove(&weight_name) else {
        return;
    };
    let bias = w.remove(&format!("{c}.bias"));
    let shift_norm = |w: &mut Weights, raw: &[f32], sign: f32| {
        let MeanFold::NormBias(norm) = spec.config.architecture().regression_mean else {
            return;
        };
        let name = format!("{norm}.bias");
        let Some(mut beta) = w.remove(&name) else {
            return;
        };
        let sq: f32 = raw.iter().map(|v| v * v).sum();
        if sq > 0.0 {
            for (b, v) in beta.values.iter_mut().zip(raw) {
                *b += sign * mean * v / sq;
            }
        }
        w.insert(&name, beta.shape, beta.values);
    };
    match direction {
        Direction::Fold => {
            weight.values.iter_mut().for_each(|v| *v *= sd);
            match bias {
                Some(mut b) => {
                    b.values.iter_mut().for_each(|v| *v = *v * sd + mean);
                    w.insert(&format!("{c}.bias"), b.shape, b.values);
                }
                None => shift_norm(w, &weight.values, 1.0),
            }
        }
        Direction::Unfold => {
            match bias {
                Some(mut b) => {
                    b.values.iter_mut().for_each(|v| *v = (*v - mean) / sd);
                    w.insert(&format!("{c}.bias"), b.shape, b.values);
                }
                None => shift_norm(w, &weight.values, -1.0),
            }
            weight.values.iter_mut().for_each(|v| *v /= sd);
        }
    }
    w.insert(&weight_name, weight.shape, weight.values);
}

impl<B: FusedOps> Model<B> {
    /// Stop training the tensors `names` (HF names): they get no gradients, so autodiff skips
    /// them and the optimizer leaves them as they are.
    pub fn freeze<'a>(self, names: impl Iterator<Item = &'a str>) -> Self {
        use burn::module::{ModuleMapper, Param, ParamId};
        struct Freeze(std::collections::HashSet<ParamId>);
        impl<B: Backend> ModuleMapper<B> for Freeze {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                if self.0.contains(&param.id) {
                    param.set_require_grad(false)
                } else {
                    param
                }
            }
        }
        let ids = names.map(super::io::weights::param_id).collect();
        self.map(&mut Freeze(ids))
    }
}

/// Largest weights file a saved model directory holds; above it the weights are sharded with
/// an index, as `save_pretrained` does (its default `max_shard_size` is 5 GB).
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Write a model directory: `config.json`, `model.safetensors`, and the tokenizer: the
/// `tokenizer` file as `tokenizer.json` plus the tokenizer_config.json and
/// special_tokens_map.json beside it, when there are.
pub fn save_dir(
    dir: &Path,
    config: &serde_json::Value,
    weights: &Weights,
    tokenizer: Option<&Path>,
    framing: arch::Framing,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let cfg = dir.join("config.json");
    let json = serde_json::to_string_pretty(config).expect("json");
    std::fs::write(&cfg, json).map_err(|e| ModelError::io(&cfg, e))?;
    weights.save_dir(dir, MAX_SHARD_BYTES)?;
    if let Some(tok) = tokenizer {
        copy_tokenizer(tok, dir, framing)?;
    }
    Ok(())
}

/// The `tokenizer` file as `dir/tokenizer.json`, framed as the model was trained, with the
/// tokenizer_config.json and special_tokens_map.json beside it, when there are.
fn copy_tokenizer(tok: &Path, dir: &Path, framing: arch::Framing) -> Result<(), ModelError> {
    write_framed_tokenizer(tok, &dir.join("tokenizer.json"), framing)?;
    copy_tokenizer_configs(tok, dir)
}

/// Copy the tokenizer_config.json, special_tokens_map.json and vocab.txt (ESM's vocabulary)
/// beside the `tokenizer` file into `dir`, when there are: what `AutoTokenizer` reads besides
/// `tokenizer.json`.
pub fn copy_tokenizer_configs(tokenizer: &Path, dir: &Path) -> Result<(), ModelError> {
    let beside = tokenizer.parent().unwrap_or(Path::new("."));
    for name in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        let src = beside.join(name);
        if src.is_file() {
            std::fs::copy(&src, dir.join(name)).map_err(|e| ModelError::io(&src, e))?;
        }
    }
    Ok(())
}

/// Every LoRA target must name a linear layer of the model; one that matches none is an
/// error listing the layers it could have meant.
fn check_targets(
    lora: &LoraSpec,
    (linears, adapted): (&[String], &[String]),
) -> Result<(), ModelError> {
    let mut kinds: Vec<&str> = linears
        .iter()
        .map(|m| m.rsplit('.').next().unwrap_or(m))
        .collect();
    kinds.sort();
    kinds.dedup();
    let unmatched: Vec<String> = match &lora.targets {
        Targets::Names(names) => names
            .iter()
            .filter(|t| {
                !adapted
                    .iter()
                    .any(|m| lora.adapts(m) && (m == *t || m.ends_with(&format!(".{t}"))))
            })
            .cloned()
            .collect(),
        Targets::Regex(re) if adapted.is_empty() => vec![re.clone()],
        Targets::Regex(_) => Vec::new(),
    };
    if unmatched.is_empty() {
        return Ok(());
    }
    Err(ModelError::Config(format!(
        "LoRA `target_modules` {} match(es) no linear layer of this model; its linear layers are: {} \
         (embeddings and heads are trained in full with `modules_to_save`)",
        unmatched
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", "),
        kinds.join(", ")
    )))
}

/// Copy `tokenizer.json` so that it frames inputs as the model was trained: a model trained
/// on bare tokens gets no post-processor (a tokenizer trained here carries `[CLS] … [SEP]`), so
/// `AutoTokenizer.from_pretrained(dir)(seq)` called the default way gives the ids the model saw.
fn write_framed_tokenizer(
    src: &Path,
    dst: &Path,
    framing: arch::Framing,
) -> Result<(), ModelError> {
    let text = arch::read_tokenizer_json(src)?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: not a tokenizer.json: {e}", src.display())))?;
    if framing == arch::Framing::Bare
        && let Some(m) = json.as_object_mut()
    {
        m.insert("post_processor".into(), serde_json::Value::Null);
    }
    let out = serde_json::to_string(&json).expect("json");
    std::fs::write(dst, out).map_err(|e| ModelError::io(dst, e))
}
