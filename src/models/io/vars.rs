//! The one walk over a model's Hugging Face tensor names. An architecture declares each tensor
//! once (`vars.pp("model").pp("layers.0").linear("self_attn.q_proj", …)`), and that single
//! declaration builds the module from a checkpoint ([`VarState::load`]), initialises it as
//! transformers' `_init_weights` would ([`VarState::fresh`]), and saves it: the walk records
//! every parameter's name and layout ([`Declared`]), and [`collect`] writes the trained values
//! back under those names. candle's `VarBuilder::pp` does the loading half of this.

use std::collections::HashMap;
use std::fmt::Display;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use super::super::kernels::{Dense, LayerNorm, LowRank, RmsNorm};
use super::adapter::LoraSpec;
use super::weights::{HostTensor, Weights, host, param_id, transpose};

/// How a stored tensor maps onto its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same shape (embeddings, norms, GPT-2's `Conv1D` [in, out]).
    AsStored,
    /// PyTorch's `nn.Linear` weight [out, in], held as burn's [in, out].
    Transposed,
}

/// How a fresh tensor starts, as transformers' `_init_weights` does it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// normal(0, std).
    Normal(f64),
    /// normal(0, std) with one row (the padding token's embedding) zeroed.
    NormalPaddingRow(f64, Option<usize>),
    Zeros,
    Ones,
    /// uniform(-bound, bound): PyTorch's `kaiming_uniform_(a=√5)` is bound 1/√fan_in.
    Uniform(f64),
}

/// Values drawn for a fresh tensor of `stored` shape.
fn draw(init: Init, stored: &[usize], rng: &mut StdRng) -> Vec<f32> {
    let n: usize = stored.iter().product();
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Uniform(bound) => {
            let dist = rand_distr::Uniform::new(-bound as f32, bound as f32).expect("finite bound");
            (0..n).map(|_| dist.sample(rng)).collect()
        }
        Init::Normal(std) | Init::NormalPaddingRow(std, _) => {
            let dist = Normal::new(0.0f32, std as f32).expect("finite std");
            let mut v: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
            if let Init::NormalPaddingRow(_, Some(row)) = init {
                let width = n / stored[0].max(1);
                if row < stored[0] {
                    v[row * width..(row + 1) * width].fill(0.0);
                }
            }
            v
        }
    }
}

/// One parameter the walk met: its HF name, its id (a hash of the name) and its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub id: ParamId,
    pub layout: Layout,
}

#[allow(clippy::large_enum_variant)] // one per walk, never in a collection
enum Source<'w> {
    /// Take each tensor from a checkpoint; missing and misshapen ones are reported by
    /// [`Weights::finish`].
    Load(&'w mut Weights),
    /// Draw each tensor from one seeded stream, in declaration order, and keep a copy.
    Fresh { rng: StdRng, made: Weights },
}

/// What a walk carries from tensor to tensor: where values come from, the device, and the
/// names met so far.
pub struct VarState<'w, B: Backend> {
    source: Source<'w>,
    declared: Vec<Declared>,
    device: B::Device,
    /// The LoRA adapter whose pairs the walk declares beside the layers it targets.
    adapter: Option<LoraSpec>,
    /// Seeds tensors that may be new to a checkpoint (LoRA pairs), each from its own name.
    new_seed: u64,
    /// Every linear layer met (dotted module names), and those the adapter targets.
    linears: Vec<String>,
    adapted: Vec<String>,
    /// Tensors a load did not find and started fresh (a new adapter's pairs).
    started: Vec<String>,
}

impl<'w, B: Backend> VarState<'w, B> {
    /// A walk that takes tensors from `weights`.
    pub fn load(weights: &'w mut Weights, device: &B::Device) -> VarState<'w, B> {
        VarState {
            source: Source::Load(weights),
            declared: Vec::new(),
            device: device.clone(),
            adapter: None,
            new_seed: 0,
            linears: Vec::new(),
            adapted: Vec::new(),
            started: Vec::new(),
        }
    }

    /// A walk that initialises tensors fresh from `seed`.
    pub fn fresh(seed: u64, device: &B::Device) -> VarState<'static, B> {
        VarState {
            source: Source::Fresh {
                rng: StdRng::seed_from_u64(seed),
                made: Weights::new(),
            },
            declared: Vec::new(),
            device: device.clone(),
            adapter: None,
            new_seed: seed,
            linears: Vec::new(),
            adapted: Vec::new(),
            started: Vec::new(),
        }
    }

    /// Declare `adapter`'s LoRA pairs beside the layers it targets; pairs a load does not
    /// find start fresh as PEFT starts them (A kaiming-uniform, B zero), each seeded by
    /// `seed` and its own name, so the base's draws do not move.
    pub fn with_adapter(mut self, adapter: Option<&LoraSpec>, seed: u64) -> Self {
        self.adapter = adapter.cloned();
        self.new_seed = seed;
        self
    }

    /// The linear layers the walk met (dotted module names), and those the adapter adapts.
    pub fn linears(&self) -> (&[String], &[String]) {
        (&self.linears, &self.adapted)
    }

    /// Tensors a load did not find and started fresh.
    pub fn started(&self) -> &[String] {
        &self.started
    }

    /// The root of the names.
    pub fn root(&mut self) -> Vars<'_, 'w, B> {
        Vars {
            state: self,
            prefix: String::new(),
        }
    }

    /// The names met, in declaration order.
    pub fn declared(self) -> Vec<Declared> {
        self.declared
    }

    /// What a fresh walk drew (empty for a load).
    pub fn into_fresh(self) -> Weights {
        match self.source {
            Source::Fresh { made, .. } => made,
            Source::Load(_) => Weights::new(),
        }
    }

    /// The stored values of `name` (shape as stored).
    fn take(&mut self, name: &str, stored: &[usize], init: Init) -> Vec<f32> {
        match &mut self.source {
            Source::Load(w) => w.take(name, stored),
            Source::Fresh { rng, made } => {
                let values = draw(init, stored, rng);
                made.insert(name, stored.to_vec(), values.clone());
                values
            }
        }
    }

    /// The stored values of a tensor a checkpoint may lack (a LoRA pair): taken when there,
    /// else drawn from a stream seeded by its name.
    fn take_new(&mut self, name: &str, stored: &[usize], init: Init) -> Vec<f32> {
        if let Source::Load(w) = &mut self.source
            && w.contains(name)
        {
            return w.take(name, stored);
        }
        let hash = blake3::hash(name.as_bytes());
        let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("8 bytes");
        let mut rng = StdRng::seed_from_u64(self.new_seed ^ u64::from_le_bytes(bytes));
        let values = draw(init, stored, &mut rng);
        match &mut self.source {
            Source::Fresh { made, .. } => made.insert(name, stored.to_vec(), values.clone()),
            Source::Load(w) => w.skip(name),
        }
        self.started.push(name.to_string());
        values
    }
}

/// A position in the walk: the prefix of the names declared through it.
pub struct Vars<'s, 'w, B: Backend> {
    state: &'s mut VarState<'w, B>,
    prefix: String,
}

impl<'w, B: Backend> Vars<'_, 'w, B> {
    /// The names under `name` (`pp` as candle's `VarBuilder` has it).
    pub fn pp(&mut self, name: impl Display) -> Vars<'_, 'w, B> {
        let prefix = self.name(&name.to_string());
        Vars {
            state: self.state,
            prefix,
        }
    }

    fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> B::Device {
        self.state.device.clone()
    }

    /// A tensor stored as it is used.
    pub fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Param<Tensor<B, D>> {
        let name = self.name(name);
        let values = self.state.take(&name, &shape, init);
        self.make(name, values, shape, Layout::AsStored)
    }

    /// An `nn.Linear` weight [out, in] held as [in, out].
    fn transposed(
        &mut self,
        name: &str,
        [d_in, d_out]: [usize; 2],
        init: Init,
    ) -> Param<Tensor<B, 2>> {
        let name = self.name(name);
        let stored = self.state.take(&name, &[d_out, d_in], init);
        let values = transpose(&stored, d_out, d_in);
        self.make(name, values, [d_in, d_out], Layout::Transposed)
    }

    /// The LoRA pair of the linear layer at this prefix, when the adapter targets it:
    /// `lora_A.weight` [r, in] and `lora_B.weight` [out, r], held transposed.
    fn low_rank(&mut self, d_in: usize, d_out: usize) -> Option<LowRank<B>> {
        let module = self.prefix.clone();
        self.state.linears.push(module.clone());
        let spec = self.state.adapter.clone()?;
        if !spec.adapts(&module) {
            return None;
        }
        self.state.adapted.push(module);
        let r = spec.r;
        let a_name = self.name("lora_A.weight");
        let a = self.state.take_new(
            &a_name,
            &[r, d_in],
            Init::Uniform(1.0 / (d_in as f64).sqrt()),
        );
        let a = self.make(
            a_name,
            transpose(&a, r, d_in),
            [d_in, r],
            Layout::Transposed,
        );
        let b_name = self.name("lora_B.weight");
        let b = self.state.take_new(&b_name, &[d_out, r], Init::Zeros);
        let b = self.make(
            b_name,
            transpose(&b, d_out, r),
            [r, d_out],
            Layout::Transposed,
        );
        Some(LowRank {
            a,
            b,
            scale: spec.scale(),
            dropout: DropoutConfig::new(spec.dropout).init(),
        })
    }

    fn make<const D: usize>(
        &mut self,
        name: String,
        values: Vec<f32>,
        shape: [usize; D],
        layout: Layout,
    ) -> Param<Tensor<B, D>> {
        let id = param_id(&name);
        let tensor = Tensor::<B, D>::from_data(TensorData::new(values, shape), &self.state.device);
        self.state.declared.push(Declared { name, id, layout });
        Param::initialized(id, tensor.require_grad())
    }

    /// PyTorch `nn.Linear` `{name}.weight` [out, in] (+ `.bias`): normal(0, std), zero bias.
    pub fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Dense<B> {
        let mut at = self.pp(name);
        Dense {
            weight: at.transposed("weight", [d_in, d_out], Init::Normal(std)),
            bias: bias.then(|| at.param("bias", [d_out], Init::Zeros)),
            lora: at.low_rank(d_in, d_out),
        }
    }

    /// GPT-2's `Conv1D` `{name}.weight` [in, out] + `.bias`: normal(0, std), zero bias.
    pub fn conv1d(&mut self, name: &str, d_in: usize, d_out: usize, std: f64) -> Dense<B> {
        let mut at = self.pp(name);
        Dense {
            weight: at.param("weight", [d_in, d_out], Init::Normal(std)),
            bias: Some(at.param("bias", [d_out], Init::Zeros)),
            lora: at.low_rank(d_in, d_out),
        }
    }

    /// `nn.LayerNorm` `{name}.weight` / `.bias`: ones and zeros.
    pub fn layer_norm(&mut self, name: &str, d: usize, eps: f64) -> LayerNorm<B> {
        let mut at = self.pp(name);
        LayerNorm {
            gamma: at.param("weight", [d], Init::Ones),
            beta: Some(at.param("bias", [d], Init::Zeros)),
            eps,
        }
    }

    /// A bias-free `nn.LayerNorm(bias=False)` `{name}.weight`: ones.
    pub fn layer_norm_without_bias(&mut self, name: &str, d: usize, eps: f64) -> LayerNorm<B> {
        LayerNorm {
            gamma: self.pp(name).param("weight", [d], Init::Ones),
            beta: None,
            eps,
        }
    }

    /// RMSNorm `{name}.weight`: ones.
    pub fn rms_norm(&mut self, name: &str, d: usize, eps: f64) -> RmsNorm<B> {
        RmsNorm {
            gamma: self.pp(name).param("weight", [d], Init::Ones),
            eps,
        }
    }

    /// A tensor a checkpoint may store under another name `stored` (transformers 5.25 saves
    /// ESM's layer norms as `gamma` / `beta`): loaded as `name` when only `stored` is there.
    pub fn alias(&mut self, stored: &str, name: &str) {
        let (stored, name) = (self.name(stored), self.name(name));
        if let Source::Load(w) = &mut self.state.source
            && !w.contains(&name)
            && let Some(t) = w.remove(&stored)
        {
            w.insert(&name, t.shape, t.values);
        }
    }

    /// A constant buffer the checkpoint format carries and its own code needs saved (LucaOne's
    /// rotary `inv_freq`, which the package leaves uninitialised when a checkpoint lacks it):
    /// always `values` (what a checkpoint holds is skipped), saved, never trained.
    pub fn constant(&mut self, name: &str, values: Vec<f32>) -> Param<Tensor<B, 1>> {
        let name = self.name(name);
        let n = values.len();
        match &mut self.state.source {
            Source::Load(w) => w.skip(&name),
            Source::Fresh { made, .. } => made.insert(&name, vec![n], values.clone()),
        }
        self.make(name, values, [n], Layout::AsStored)
            .set_require_grad(false)
    }

    /// A tensor a checkpoint may carry that the model does not use (buffers, tied copies).
    pub fn skip(&mut self, name: &str) {
        let name = self.name(name);
        if let Source::Load(w) = &mut self.state.source {
            w.skip(&name);
        }
    }
}

/// Every declared tensor of `module` under its HF name, in its stored layout: the save half
/// of the walk.
pub fn collect<B: Backend, M: Module<B>>(module: &M, declared: &[Declared]) -> Weights {
    struct Values(HashMap<ParamId, HostTensor>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let (shape, values) = host(param.val());
            self.0.insert(param.id, HostTensor { shape, values });
        }
    }
    let mut values = Values(HashMap::new());
    module.visit(&mut values);
    let mut w = Weights::new();
    for d in declared {
        let Some(t) = values.0.remove(&d.id) else {
            continue; // declared by a walk over a part this module does not hold
        };
        match d.layout {
            Layout::AsStored => w.insert(&d.name, t.shape, t.values),
            Layout::Transposed => {
                let (d_in, d_out) = (t.shape[0], t.shape[1]);
                w.insert(
                    &d.name,
                    vec![d_out, d_in],
                    transpose(&t.values, d_in, d_out),
                );
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// One declaration builds, initialises and saves: the fresh values come back under their
    /// names, a transposed weight in its stored shape, and a load of them gives the same.
    #[test]
    fn one_declaration_loads_inits_and_saves() {
        let dev = Default::default();
        #[derive(Module, Debug)]
        struct Tiny<B: Backend> {
            proj: Dense<B>,
            norm: RmsNorm<B>,
        }
        let declare = |vars: &mut Vars<Flex>| Tiny {
            proj: vars.pp("layer").linear("proj", 3, 2, true, 0.5),
            norm: vars.rms_norm("norm", 2, 1e-6),
        };
        let mut state = VarState::<Flex>::fresh(1, &dev);
        let tiny = declare(&mut state.root());
        let names: Vec<String> = state.declared.iter().map(|d| d.name.clone()).collect();
        assert_eq!(
            names,
            ["layer.proj.weight", "layer.proj.bias", "norm.weight"]
        );
        let declared = state.declared.clone();
        let made = state.into_fresh();
        assert_eq!(made.get("layer.proj.weight").unwrap().shape, vec![2, 3]);
        let saved = collect(&tiny, &declared);
        for name in &names {
            assert_eq!(
                saved.get(name).unwrap().values,
                made.get(name).unwrap().values,
                "{name}"
            );
            assert_eq!(
                saved.get(name).unwrap().shape,
                made.get(name).unwrap().shape,
                "{name}"
            );
        }
        let mut w = saved.clone();
        let mut state = VarState::<Flex>::load(&mut w, &dev);
        let again = declare(&mut state.root());
        let declared = state.declared();
        w.finish().unwrap();
        let resaved = collect(&again, &declared);
        for name in &names {
            assert_eq!(
                resaved.get(name).unwrap().values,
                saved.get(name).unwrap().values
            );
        }
    }
}
