//! LoRA adapters as PEFT describes and saves them: which layers get a low-rank pair
//! (`target_modules`: names, or one regular expression), which are trained in full and saved
//! with the adapter (`modules_to_save`), the scale, and the adapter directory
//! (`adapter_config.json` + `adapter_model.safetensors`, tensors under `base_model.model.`), so
//! `peft.PeftModel.from_pretrained` loads what we write and we load what PEFT writes.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::super::error::ModelError;
use super::weights::Weights;

/// The prefix PEFT puts before the base model's own tensor names in an adapter file.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Which layers LoRA adapts: PEFT matches a list of names against the end of each module's
/// dotted name, and a single string as a regular expression over the whole name.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Names(Vec<String>),
    Regex(String),
}

/// LoRA as PEFT's `LoraConfig` describes it (the fields dnaflow trains and saves).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// rsLoRA: scale α/√r instead of α/r.
    pub rslora: bool,
    pub targets: Targets,
    /// Modules trained in full and saved with the adapter (a new head, resized embeddings).
    pub modules_to_save: Vec<String>,
}

/// Whether the module `name` is `pattern` or ends with `.pattern` (PEFT's rule for names).
fn ends_with_module(name: &str, pattern: &str) -> bool {
    name == pattern
        || name
            .strip_suffix(pattern)
            .is_some_and(|head| head.ends_with('.'))
}

impl LoraSpec {
    /// The factor on the low-rank update: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.r as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }

    /// Whether LoRA adapts the linear layer `module` (its dotted HF name); a module trained in
    /// full (`modules_to_save`) gets no pair, as in PEFT.
    pub fn adapts(&self, module: &str) -> bool {
        if self
            .modules_to_save
            .iter()
            .any(|m| ends_with_module(module, m))
        {
            return false;
        }
        match &self.targets {
            Targets::Names(names) => names.iter().any(|t| ends_with_module(module, t)),
            Targets::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map(|re| re.is_match(module))
                .unwrap_or(false),
        }
    }

    /// Whether the tensor `name` (`{module}.weight`, …) belongs to a module trained in full.
    pub fn saves(&self, tensor: &str) -> bool {
        let module = tensor.rsplit_once('.').map_or(tensor, |(m, _)| m);
        self.modules_to_save
            .iter()
            .any(|m| ends_with_module(module, m))
    }

    /// Whether a tensor trains under this adapter: a LoRA pair's, or a saved module's.
    pub fn trains(&self, tensor: &str) -> bool {
        is_lora_tensor(tensor) || self.saves(tensor)
    }

    /// A well-formed spec: rank at least 1, a finite α, dropout in [0, 1), a regex that
    /// compiles, at least one target.
    pub fn check(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("`r` must be at least 1".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err("`alpha` must be a positive number".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("`dropout` must be in [0, 1)".into());
        }
        match &self.targets {
            Targets::Names(n) if n.is_empty() => {
                Err("`target_modules` names no module (e.g. [q_proj, v_proj])".into())
            }
            Targets::Regex(re) => regex::Regex::new(re)
                .map(|_| ())
                .map_err(|e| format!("`target_modules` is not a regular expression: {e}")),
            Targets::Names(_) => Ok(()),
        }
    }

    /// `adapter_config.json` as PEFT writes it, for a base at `base` (its directory) and a
    /// task type (`CAUSAL_LM`, `SEQ_CLS`, `TOKEN_CLS`, or none).
    pub fn to_peft_json(&self, base: &str, task_type: Option<&str>, fan_in_fan_out: bool) -> Value {
        let targets = match &self.targets {
            Targets::Names(n) => json!(n),
            Targets::Regex(re) => json!(re),
        };
        json!({
            "peft_type": "LORA",
            "task_type": task_type,
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.rslora,
            "target_modules": targets,
            "modules_to_save": if self.modules_to_save.is_empty() { Value::Null } else { json!(self.modules_to_save) },
            "fan_in_fan_out": fan_in_fan_out,
            "bias": "none",
            "init_lora_weights": true,
            "inference_mode": true,
            "use_dora": false,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        })
    }

    /// Read PEFT's `adapter_config.json`; what dnaflow does not compute (DoRA, per-layer ranks,
    /// trained biases, another PEFT method) is an error naming the field.
    pub fn from_peft_json(v: &Value, path: &Path) -> Result<LoraSpec, ModelError> {
        let bad = |what: String| ModelError::Format(format!("{}: {what}", path.display()));
        let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!(
                "`peft_type` is `{peft_type}`; dnaflow loads LoRA adapters only"
            )));
        }
        if v.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(bad("`use_dora: true` (DoRA) is not supported".into()));
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if v.get(field)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!("`{field}` (per-layer ranks) is not supported")));
            }
        }
        if let Some(bias) = v.get("bias").and_then(Value::as_str)
            && bias != "none"
        {
            return Err(bad(format!(
                "`bias: {bias}` is not supported (only `none`)"
            )));
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("`r` is missing".into()))?;
        let targets = match v.get("target_modules") {
            Some(Value::String(re)) => Targets::Regex(re.clone()),
            Some(Value::Array(a)) => Targets::Names(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
            ),
            _ => return Err(bad("`target_modules` is missing".into())),
        };
        let modules_to_save = match v.get("modules_to_save") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        let spec = LoraSpec {
            r: r as usize,
            alpha: v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0),
            dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            targets,
            modules_to_save,
        };
        spec.check().map_err(bad)?;
        Ok(spec)
    }
}

/// Whether a tensor is one of a LoRA pair's (`….lora_A.weight`, `….lora_B.weight`).
pub fn is_lora_tensor(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

/// An adapter directory's config: its spec, and the base model directory it adapts.
pub struct AdapterConfig {
    pub spec: LoraSpec,
    /// PEFT's flag for bases whose layers are stored [in, out] (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
    pub base: PathBuf,
}

/// An adapter directory read: its config, and its tensors under the base model's own names.
pub struct Adapter {
    pub config: AdapterConfig,
    pub weights: Weights,
}

/// Whether `dir` holds an adapter rather than a whole model.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file() && !dir.join("config.json").is_file()
}

/// Read an adapter directory's `adapter_config.json`. Its base is `base_model_name_or_path`, a
/// directory (relative paths from the adapter's own directory); a hub name that is not a
/// directory here is an error saying what to do.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig, ModelError> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: not JSON: {e}", path.display())))?;
    let spec = LoraSpec::from_peft_json(&v, &path)?;
    let named = v
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .unwrap_or("");
    let base = [PathBuf::from(named), dir.join(named)]
        .into_iter()
        .find(|p| !named.is_empty() && p.join("config.json").is_file())
        .ok_or_else(|| {
            ModelError::Format(format!(
                "{}: `base_model_name_or_path` is `{named}`, which is not a model directory here; \
                 set it to the base model's directory (absolute, or relative to the adapter's)",
                path.display()
            ))
        })?;
    Ok(AdapterConfig {
        spec,
        fan_in_fan_out: v
            .get("fan_in_fan_out")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        base,
    })
}

/// Read an adapter directory: its config ([`read_adapter_config`]) and its tensors.
pub fn read_adapter_dir(dir: &Path) -> Result<Adapter, ModelError> {
    let config = read_adapter_config(dir)?;
    let stored = Weights::load(&dir.join(ADAPTER_WEIGHTS))?;
    let mut weights = Weights::new();
    let names: Vec<String> = stored.names().map(String::from).collect();
    for name in names {
        let t = stored.get(&name).expect("listed");
        let own = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name);
        weights.insert(own, t.shape, t.values);
    }
    Ok(Adapter { config, weights })
}

/// Write an adapter directory: `adapter_config.json` and the trained tensors (`weights`, under
/// the base model's names) as `adapter_model.safetensors` under PEFT's prefix.
pub fn write_adapter_dir(dir: &Path, config: &Value, weights: &Weights) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let path = dir.join(ADAPTER_CONFIG);
    let json = serde_json::to_string_pretty(config).expect("json");
    std::fs::write(&path, json).map_err(|e| ModelError::io(&path, e))?;
    let mut prefixed = Weights::new();
    for name in weights.names() {
        let t = weights.get(name).expect("listed");
        prefixed.insert(&format!("{PEFT_PREFIX}{name}"), t.shape, t.values);
    }
    prefixed.save(&dir.join(ADAPTER_WEIGHTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(targets: Targets) -> LoraSpec {
        LoraSpec {
            r: 8,
            alpha: 32.0,
            dropout: 0.05,
            rslora: false,
            targets,
            modules_to_save: vec!["lm_head".into(), "embed_tokens".into()],
        }
    }

    /// Names match whole dotted components at the end, as PEFT's list rule; a string is a
    /// regular expression over the whole name.
    #[test]
    fn targets_match_as_peft_does() {
        let s = spec(Targets::Names(vec!["q_proj".into(), "mlp.up_proj".into()]));
        assert!(s.adapts("model.layers.0.self_attn.q_proj"));
        assert!(s.adapts("model.layers.3.mlp.up_proj"));
        assert!(!s.adapts("model.layers.0.self_attn.xq_proj"));
        assert!(!s.adapts("model.layers.0.self_attn.k_proj"));
        let s = spec(Targets::Regex(r"model\.layers\.[01]\..*_proj".into()));
        assert!(s.adapts("model.layers.1.mlp.down_proj"));
        assert!(!s.adapts("model.layers.2.mlp.down_proj"));
        assert!(!s.adapts("x.model.layers.1.mlp.down_proj"));
    }

    #[test]
    fn trained_tensors_are_the_pairs_and_the_saved_modules() {
        let s = spec(Targets::Names(vec!["q_proj".into()]));
        assert!(s.trains("model.layers.0.self_attn.q_proj.lora_A.weight"));
        assert!(s.trains("lm_head.weight"));
        assert!(s.trains("model.embed_tokens.weight"));
        assert!(!s.trains("model.layers.0.self_attn.q_proj.weight"));
        assert!(!s.trains("model.norm.weight"));
        assert_eq!(s.scale(), 4.0);
        assert_eq!(LoraSpec { rslora: true, ..s }.scale(), 32.0 / 8f64.sqrt());
    }

    /// What we write, we read back the same; what we do not compute is refused by name.
    #[test]
    fn peft_config_round_trips_and_refuses_dora() {
        let s = spec(Targets::Regex(".*q_proj".into()));
        let v = s.to_peft_json("/base", Some("CAUSAL_LM"), false);
        assert_eq!(
            LoraSpec::from_peft_json(&v, Path::new("a.json")).unwrap(),
            s
        );
        let mut dora = v.clone();
        dora["use_dora"] = json!(true);
        let e = LoraSpec::from_peft_json(&dora, Path::new("a.json")).unwrap_err();
        assert!(e.to_string().contains("use_dora"), "{e}");
    }
}
