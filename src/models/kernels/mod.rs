//! Multi-head attention (packed q|k|v to context), its scaled, masked softmax, layer norm,
//! GPT-2's GELU and the heads transpose as single autodiff nodes with written-out gradients.
//!
//! Under `Autodiff`, burn composes these from tracked element-wise passes: softmax is five
//! (max, subtract, scalar `exp`, sum, divide) and its gradient eight more; layer norm about
//! ten and twenty; scaling and masking the scores two more. On the CPU those passes, not the
//! matrix products, were most of a training step. [`FusedOps`] is a backend extension: the
//! defaults compose the backend's own ops (what CUDA runs), flex overrides them with its own
//! kernels (`cpu.rs`, `cpu_attention.rs`), and `Autodiff<B>` records one node per
//! call.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata, TensorPrimitive};

mod cpu;
mod cpu_attention;
mod dropout;
mod rows;

pub use dropout::{dropout, seed_dropout};

/// Attention score of a position that must not be attended to. Finite (not -inf), because
/// burn's flex softmax turns a row holding -inf into NaN; exp(-1e9 - max) is 0 all the same.
pub const MASKED: f32 = -1e9;

/// sqrt(2/π), GPT-2's GELU constant.
pub(crate) const SQRT_2_OVER_PI: f64 =
    core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
/// The cubic coefficient of GPT-2's GELU.
pub(crate) const GELU_CUBIC: f64 = 0.044715;

/// The ops the models need fast under autodiff, forward and backward. The defaults compose
/// them from the backend's tensor ops; a backend with its own kernels overrides them (flex:
/// `cpu.rs`), and `Autodiff<B>` records each forward as one node whose gradient
/// calls `B`'s backward.
pub trait FusedOps: Backend {
    /// Attention weights from scores [.., Tq, Tk]: softmax over the last axis of
    /// `scale`·scores, with key j hidden from query i when `causal` and j > i (square scores).
    fn fused_softmax(x: FloatTensor<Self>, scale: f64, causal: bool) -> FloatTensor<Self> {
        composed_softmax::<Self>(x, scale, causal)
    }

    /// The gradient of [`FusedOps::fused_softmax`] from its output `y` and the upstream
    /// gradient `g`.
    fn fused_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed_softmax_backward::<Self>(y, g, scale)
    }

    /// Layer norm over the last axis with scale `gamma` and shift `beta` ([d] each).
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }

    /// The gradients of layer norm for its input, `gamma` and `beta`.
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 3] {
        composed_layer_norm_backward::<Self>(x, gamma, g, eps)
    }

    /// [A, B, C, D] → [A, C, B, D]: attention's move between tokens-major and heads-major. The
    /// default is burn's strided view; a backend whose kernels prefer contiguous inputs copies.
    fn swap_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_swap_dims(x, 1, 2)
    }

    /// Multi-head attention on packed `qkv` [B, T, (H + 2·Hkv)·dh] (the H query heads, then
    /// the Hkv key heads, then the Hkv value heads, dh columns each): per query head h,
    /// softmax(scale·q·kᵀ + bias)·v with the key/value head h / (H / Hkv), merged back to
    /// [B, T, H·dh]. The bias is `padding` [B, Tk] (0 or [`MASKED`]), the causal mask and the
    /// spec's ALiBi, all added after the scale.
    fn fused_attention(
        qkv: FloatTensor<Self>,
        padding: Option<FloatTensor<Self>>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        Self::attention_and_weights(qkv, padding, spec).0
    }

    /// [`FusedOps::fused_attention`]'s output and the attention weights [B, H, T, T] its
    /// gradient reuses.
    fn attention_and_weights(
        qkv: FloatTensor<Self>,
        padding: Option<FloatTensor<Self>>,
        spec: &AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention::<Self>(qkv, padding, spec)
    }

    /// The gradient of [`FusedOps::fused_attention`] for `qkv`, from the kept weights and the
    /// upstream gradient `g` [B, T, H·dh]. Causal weights are zero above the diagonal, and a
    /// kernel may skip those products (the composed ones are exact either way).
    fn fused_attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        g: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        composed_attention_backward::<Self>(qkv, weights, g, spec)
    }

    /// RMSNorm over the last axis (LLaMA's): x / sqrt(mean(x²) + eps) · gamma.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composed_rms_norm::<Self>(x, gamma, eps)
    }

    /// The gradients of RMSNorm for its input and `gamma`.
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 2] {
        composed_rms_norm_backward::<Self>(x, gamma, g, eps)
    }

    /// LLaMA's SwiGLU gate: silu(gate)·up, element-wise.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_swiglu::<Self>(gate, up)
    }

    /// Its gradients [gate, up] from the upstream gradient `g`.
    fn fused_swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        composed_swiglu_backward::<Self>(gate, up, g)
    }

    /// Rotary position embedding as transformers applies it (rotate-half) to the first
    /// `heads` heads of `x` [B, T, n·dh] (the query and key heads of packed q | k | v; the
    /// rest pass through): x·cos + rotate_half(x)·sin with `cos`, `sin` [T, dh]. Linear in
    /// x: its gradient is the same rotation with −sin.
    fn fused_rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        composed_rotary::<Self>(x, cos, sin, heads)
    }

    /// GPT-2's tanh-approximated GELU (`gelu_new`).
    fn fused_gelu_new(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_new_and_sigmoid(x).0
    }

    /// `gelu_new`'s output and the σ(u) its gradient reuses.
    fn gelu_new_and_sigmoid(x: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_gelu_new::<Self>(x)
    }

    /// The gradient of `gelu_new` from its input, the σ(u) of the forward and the upstream
    /// gradient.
    fn fused_gelu_new_backward(
        x: FloatTensor<Self>,
        s: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_gelu_new_backward::<Self>(x, s, g)
    }

    /// BERT's exact GELU, x·Φ(x) (Φ the standard normal's distribution function).
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_and_slope(x).0
    }

    /// The exact GELU's output and its slope Φ(x) + x·φ(x), which is all its gradient needs.
    fn gelu_and_slope(x: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_gelu::<Self>(x)
    }

    /// The gradient of [`FusedOps::fused_gelu`]: the upstream gradient times the kept slope.
    fn fused_gelu_backward(slope: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(g, slope)
    }

    /// The matrix product a·b of a [m, k] and b [k, n] (either may be a transposed view): a
    /// dense layer's product and its gradients' products.
    fn fused_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }

    /// A gated linear unit on h [.., 2n] packed as one product gives it: act(h[.., :n]) ·
    /// h[.., n:] (DNABERT-2's GEGLU with the exact GELU, SwiGLU with SiLU), without splitting h.
    fn fused_glu(h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        composed_glu::<Self>(h, gate)
    }

    /// The gradient of [`FusedOps::fused_glu`] for h [.., 2n] from the upstream gradient
    /// g [.., n].
    fn fused_glu_backward(
        h: FloatTensor<Self>,
        g: FloatTensor<Self>,
        gate: Gate,
    ) -> FloatTensor<Self> {
        composed_glu_backward::<Self>(h, g, gate)
    }

    /// Inverted dropout of `x` with the mask that `seed` draws ([`dropout`]): the same seed
    /// draws the same mask, so the gradient is this op on the upstream gradient.
    fn fused_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        dropout::composed_dropout::<Self>(x, prob, seed)
    }
}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cuda {}

#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Vulkan {}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_softmax(x: FloatTensor<Self>, scale: f64, causal: bool) -> FloatTensor<Self> {
        unary_node::<B, C, _>(
            x,
            |x| {
                let y = B::fused_softmax(x, scale, causal);
                (y.clone(), (y, scale))
            },
            |x| B::fused_softmax(x, scale, causal),
            |(y, scale), g| B::fused_softmax_backward(y, g, scale),
        )
    }

    fn fused_attention(
        qkv: FloatTensor<Self>,
        padding: Option<FloatTensor<Self>>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        // The weights are kept from the forward: the backward needs them, not the scores. A
        // padding bias is a constant of the batch: no gradient flows to it.
        let padding = padding.map(|bias| bias.primitive);
        let untracked_padding = padding.clone();
        let (tracked_spec, untracked_spec) = (spec.clone(), spec.clone());
        unary_node::<B, C, _>(
            qkv,
            |qkv| {
                let (ctx, weights) = B::attention_and_weights(qkv.clone(), padding, &tracked_spec);
                (ctx, (qkv, weights, tracked_spec))
            },
            |qkv| B::fused_attention(qkv, untracked_padding, &untracked_spec),
            |(qkv, weights, spec), g| B::fused_attention_backward(qkv, weights, g, &spec),
        )
    }

    fn fused_rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        // cos and sin are constants of the positions: only x gets a gradient.
        let (cos, sin) = (cos.primitive, sin.primitive);
        let (c2, s2) = (cos.clone(), sin.clone());
        unary_node::<B, C, _>(
            x,
            |x| {
                (
                    B::fused_rotary(x, cos.clone(), sin.clone(), heads),
                    (cos, sin, heads),
                )
            },
            |x| B::fused_rotary(x, c2, s2, heads),
            |(cos, sin, heads), g| B::fused_rotary(g, cos, B::float_neg(sin), heads),
        )
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwiGlu;

        impl<B: FusedOps> Backward<B, 2> for SwiGlu {
            type State = (FloatTensor<B>, FloatTensor<B>); // gate, up

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (gate, up) = ops.state;
                let g = grads.consume::<B>(&ops.node);
                let [dgate, dup] = B::fused_swiglu_backward(gate, up, g);
                register::<B, _>(
                    grads,
                    ops.parents.map(|p| p.map(|node| node.id)),
                    [dgate, dup],
                );
            }
        }

        let nodes = [gate.node.clone(), up.node.clone()];
        match SwiGlu.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (gate.primitive.clone(), up.primitive.clone());
                prep.finish(state, B::fused_swiglu(gate.primitive, up.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_swiglu(gate.primitive, up.primitive)),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNorm;

        impl<B: FusedOps> Backward<B, 2> for RmsNorm {
            type State = (FloatTensor<B>, FloatTensor<B>, f64); // input, gamma, eps

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (x, gamma, eps) = ops.state;
                let g = grads.consume::<B>(&ops.node);
                let [dx, dgamma] = B::fused_rms_norm_backward(x, gamma, g, eps);
                register::<B, _>(
                    grads,
                    ops.parents.map(|p| p.map(|node| node.id)),
                    [dx, dgamma],
                );
            }
        }

        let nodes = [x.node.clone(), gamma.node.clone()];
        match RmsNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (x.primitive.clone(), gamma.primitive.clone(), eps);
                prep.finish(state, B::fused_rms_norm(x.primitive, gamma.primitive, eps))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_rms_norm(x.primitive, gamma.primitive, eps))
            }
        }
    }

    fn swap_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        unary_node::<B, C, _>(
            x,
            |x| (B::swap_heads(x), ()),
            B::swap_heads,
            |(), g| B::swap_heads(g),
        )
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNorm;

        impl<B: FusedOps> Backward<B, 3> for LayerNorm {
            type State = (FloatTensor<B>, FloatTensor<B>, f64); // input, gamma, eps

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (x, gamma, eps) = ops.state;
                let g = grads.consume::<B>(&ops.node);
                let [dx, dgamma, dbeta] = B::fused_layer_norm_backward(x, gamma, g, eps);
                register::<B, _>(
                    grads,
                    ops.parents.map(|p| p.map(|node| node.id)),
                    [dx, dgamma, dbeta],
                );
            }
        }

        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match LayerNorm.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = (x.primitive.clone(), gamma.primitive.clone(), eps);
                prep.finish(
                    state,
                    B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
                x.primitive,
                gamma.primitive,
                beta.primitive,
                eps,
            )),
        }
    }

    fn fused_gelu_new(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // σ(u) is kept from the forward, so the backward needs no second pass of exp.
        unary_node::<B, C, _>(
            x,
            |x| {
                let (y, s) = B::gelu_new_and_sigmoid(x.clone());
                (y, (x, s))
            },
            B::fused_gelu_new,
            |(x, s), g| B::fused_gelu_new_backward(x, s, g),
        )
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // The slope is kept from the forward: the backward is one multiplication.
        unary_node::<B, C, _>(x, B::gelu_and_slope, B::fused_gelu, |slope, g| {
            B::fused_gelu_backward(slope, g)
        })
    }

    fn fused_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatMul;

        impl<B: FusedOps> Backward<B, 2> for MatMul {
            // a when b needs its gradient, b when a does.
            type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (a, b) = ops.state;
                let g = grads.consume::<B>(&ops.node);
                let [pa, pb] = ops.parents.map(|p| p.map(|node| node.id));
                // A frozen operand (LoRA's base weights) gets no product at all.
                if let (Some(id), Some(b)) = (pa, b) {
                    let da = B::fused_matmul(g.clone(), B::float_swap_dims(b, 0, 1));
                    grads.register::<B>(id, da);
                }
                if let (Some(id), Some(a)) = (pb, a) {
                    grads.register::<B>(id, B::fused_matmul(B::float_swap_dims(a, 0, 1), g));
                }
            }
        }

        let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
        match MatMul
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    b_tracked.then(|| a.primitive.clone()),
                    a_tracked.then(|| b.primitive.clone()),
                );
                prep.finish(state, B::fused_matmul(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_matmul(a.primitive, b.primitive)),
        }
    }

    fn fused_glu(h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        // h is kept: both halves' gradients come from it.
        unary_node::<B, C, _>(
            h,
            |h| (B::fused_glu(h.clone(), gate), (h, gate)),
            |h| B::fused_glu(h, gate),
            |(h, gate), g| B::fused_glu_backward(h, g, gate),
        )
    }

    fn fused_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        // Only the seed is kept: the backward draws the forward's mask again.
        unary_node::<B, C, _>(
            x,
            |x| (B::fused_dropout(x, prob, seed), (prob, seed)),
            |x| B::fused_dropout(x, prob, seed),
            |(prob, seed), g| B::fused_dropout(g, prob, seed),
        )
    }
}

/// Hand each tracked parent of a node its gradient (untracked parents, such as a constant
/// zero shift, get none).
fn register<B: Backend, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<burn::backend::autodiff::NodeId>; N],
    values: [FloatTensor<B>; N],
) {
    for (parent, grad) in parents.into_iter().zip(values) {
        if let Some(id) = parent {
            grads.register::<B>(id, grad);
        }
    }
}

/// The gradient rule of a one-input node: the input's gradient from what the forward kept and
/// the upstream gradient.
struct UnaryRule<B: Backend, S> {
    backward: fn(S, FloatTensor<B>) -> FloatTensor<B>,
}

impl<B: Backend, S> core::fmt::Debug for UnaryRule<B, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("UnaryRule")
    }
}

impl<B: Backend, S: Clone + Send + core::fmt::Debug + 'static> Backward<B, 1> for UnaryRule<B, S> {
    type State = S;

    fn backward(self, ops: Ops<S, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| (self.backward)(state, g));
    }
}

/// Records x → y as one autodiff node: `tracked` gives y and the state `backward(state, g)`
/// needs for the input's gradient; `untracked` gives y alone when no gradient is wanted.
fn unary_node<B: Backend, C: CheckpointStrategy, S: Clone + Send + core::fmt::Debug + 'static>(
    x: FloatTensor<Autodiff<B, C>>,
    tracked: impl FnOnce(FloatTensor<B>) -> (FloatTensor<B>, S),
    untracked: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
    backward: fn(S, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match (UnaryRule { backward })
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (y, state) = tracked(x.primitive);
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(untracked(x.primitive)),
    }
}

/// softmax(scale·x) over the last axis, future keys masked when `causal`.
pub(crate) fn composed_softmax<B: Backend>(
    x: FloatTensor<B>,
    scale: f64,
    causal: bool,
) -> FloatTensor<B> {
    let shape = x.shape();
    let rank = shape.num_dims();
    let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
    let n = shape.num_elements() / (tq * tk);
    let x = float::<B, 3>(B::float_reshape(x, [n, tq, tk].into()));
    let mut scores = x * scale;
    if causal {
        assert_eq!(tq, tk, "causal attention scores are square");
        // burn's tril_mask is true *outside* the lower triangle: on the future keys.
        let future = Tensor::<B, 2, Bool>::tril_mask([tq, tk], 0, &scores.device());
        scores = scores + future.float().mul_scalar(MASKED).unsqueeze_dim::<3>(0);
    }
    shaped(burn::tensor::activation::softmax(scores, 2), shape)
}

/// What differs between architectures' attention, as one value: head counts (grouped-query
/// when `kv_heads` < `heads`), the scale, causal or not, and ALiBi. Padding is per batch, so
/// it is passed beside the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; each serves `heads / kv_heads` query heads.
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·kᵀ (1/√dh for every architecture so far).
    pub scale: f64,
    /// Query i sees keys j ≤ i (aligned at the end when keys outnumber queries: a KV cache).
    pub causal: bool,
    /// ALiBi slopes, one per query head: −slope·|i − j| added after the scale (symmetric for
    /// an encoder; under a causal mask the same as BLOOM's slope·j up to a per-row constant).
    pub alibi: Option<std::sync::Arc<[f32]>>,
}

impl AttentionSpec {
    /// Plain multi-head attention: `heads` heads over width `d`, scale 1/√dh.
    pub fn multi_head(heads: usize, d: usize, causal: bool) -> AttentionSpec {
        let head_dim = d / heads;
        AttentionSpec {
            heads,
            kv_heads: heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            causal,
            alibi: None,
        }
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Width of packed q | k | v: (H + 2·Hkv)·dh.
    pub fn packed_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the context: H·dh.
    pub fn context_width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// q [B, H, T, dh], k and v [B, Hkv, T, dh] of packed `qkv` [B, T, (H + 2·Hkv)·dh].
pub(crate) fn split_qkv<B: FusedOps>(qkv: Tensor<B, 3>, spec: &AttentionSpec) -> [Tensor<B, 4>; 3] {
    let [b, t, _] = qkv.dims();
    let dh = spec.head_dim;
    let (q, kv) = (spec.heads * dh, spec.kv_heads * dh);
    let part = |start: usize, heads: usize| {
        swap_heads(
            qkv.clone()
                .narrow(2, start, heads * dh)
                .reshape([b, t, heads, dh]),
        )
    };
    [
        part(0, spec.heads),
        part(q, spec.kv_heads),
        part(q + kv, spec.kv_heads),
    ]
}

/// Key/value heads [B, Hkv, T, dh] repeated to [B, Hkv·g, T, dh] (the composed form's
/// grouped-query attention; the CPU kernel reads each key/value head in place instead).
pub(crate) fn repeat_kv<B: Backend>(x: Tensor<B, 4>, group: usize) -> Tensor<B, 4> {
    if group == 1 {
        return x;
    }
    let [b, h, t, dh] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, h, group, t, dh])
        .reshape([b, h * group, t, dh])
}

/// Heads' gradients [B, Hkv·g, T, dh] summed back onto their key/value heads [B, Hkv, T, dh].
fn sum_groups<B: Backend>(x: Tensor<B, 4>, group: usize) -> Tensor<B, 4> {
    if group == 1 {
        return x;
    }
    let [b, h, t, dh] = x.dims();
    x.reshape([b, h / group, group, t, dh])
        .sum_dim(2)
        .reshape([b, h / group, t, dh])
}

/// Heads [B, H, T, dh] back to [B, T, H·dh].
pub(crate) fn merge_heads<B: FusedOps>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, dh] = x.dims();
    swap_heads(x).reshape([b, t, h * dh])
}

/// Everything added to scale·q·kᵀ [B, H, Tq, Tk]: padding keys, the causal mask (query i at
/// position i + Tk − Tq) and ALiBi; `None` when nothing is.
pub(crate) fn attention_bias<B: Backend>(
    spec: &AttentionSpec,
    [b, tq, tk]: [usize; 3],
    padding: Option<Tensor<B, 2>>,
    device: &B::Device,
) -> Option<Tensor<B, 4>> {
    let offset = tk - tq;
    let mut bias: Option<Tensor<B, 4>> = padding.map(|p| p.reshape([b, 1, 1, tk]));
    let add = |bias: Option<Tensor<B, 4>>, t: Tensor<B, 4>| match bias {
        Some(x) => Some(x + t),
        None => Some(t),
    };
    if spec.causal && tq > 1 {
        let future: Vec<f32> = (0..tq * tk)
            .map(|n| {
                if n % tk > n / tk + offset {
                    MASKED
                } else {
                    0.0
                }
            })
            .collect();
        bias = add(
            bias,
            Tensor::from_data(TensorData::new(future, [1, 1, tq, tk]), device),
        );
    }
    if let Some(slopes) = &spec.alibi {
        let h = slopes.len();
        let values: Vec<f32> = (0..h * tq * tk)
            .map(|n| {
                let (head, i, j) = (n / (tq * tk), n / tk % tq + offset, n % tk);
                -slopes[head] * (i as f32 - j as f32).abs()
            })
            .collect();
        bias = add(
            bias,
            Tensor::from_data(TensorData::new(values, [1, h, tq, tk]), device),
        );
    }
    bias
}

/// Attention as separate products and a softmax: (context [B, T, H·dh], weights
/// [B, H, T, T]); key/value heads repeated for grouped-query attention.
pub(crate) fn composed_attention<B: FusedOps>(
    qkv: FloatTensor<B>,
    padding: Option<FloatTensor<B>>,
    spec: &AttentionSpec,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let qkv = float::<B, 3>(qkv);
    let [b, t, _] = qkv.dims();
    let device = qkv.device();
    let [q, k, v] = split_qkv(qkv, spec);
    let (k, v) = (repeat_kv(k, spec.group()), repeat_kv(v, spec.group()));
    let mut scores = q.matmul(k.swap_dims(2, 3)) * spec.scale; // [B, H, T, T]
    if let Some(bias) = attention_bias(spec, [b, t, t], padding.map(float::<B, 2>), &device) {
        scores = scores + bias;
    }
    let weights = burn::tensor::activation::softmax(scores, 3);
    let ctx = merge_heads(weights.clone().matmul(v));
    (
        ctx.into_primitive().tensor(),
        weights.into_primitive().tensor(),
    )
}

/// Its gradient for `qkv`: dV = Pᵀ·dO, dS = softmax′(P, dO·Vᵀ), dQ = dS·K, dK = dSᵀ·Q, the
/// key and value gradients of a group's query heads summed onto their shared head.
pub(crate) fn composed_attention_backward<B: FusedOps>(
    qkv: FloatTensor<B>,
    weights: FloatTensor<B>,
    g: FloatTensor<B>,
    spec: &AttentionSpec,
) -> FloatTensor<B> {
    let [q, k, v] = split_qkv(float::<B, 3>(qkv), spec);
    let group = spec.group();
    let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
    let p = float::<B, 4>(weights);
    let g = float::<B, 3>(g);
    let [b, t, _] = g.dims();
    let go = swap_heads(g.reshape([b, t, spec.heads, spec.head_dim])); // [B, H, T, dh]
    let dv = p.clone().swap_dims(2, 3).matmul(go.clone());
    let dp = go.matmul(v.swap_dims(2, 3));
    let ds = float::<B, 4>(B::fused_softmax_backward(
        p.into_primitive().tensor(),
        dp.into_primitive().tensor(),
        spec.scale,
    ));
    let dq = ds.clone().matmul(k);
    let dk = ds.swap_dims(2, 3).matmul(q);
    let (dk, dv) = (sum_groups(dk, group), sum_groups(dv, group));
    Tensor::cat(vec![merge_heads(dq), merge_heads(dk), merge_heads(dv)], 2)
        .into_primitive()
        .tensor()
}

/// x / sqrt(mean(x²) + eps) · gamma over the last axis.
pub(crate) fn composed_rms_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    let shape = x.shape();
    let x = rows::<B>(x);
    let r = (x.clone() * x.clone())
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    shaped(x * r * float::<B, 1>(gamma).unsqueeze_dim::<2>(0), shape)
}

/// RMSNorm's gradients [input, gamma]: with r = 1/rms and x̂ = x·r, dγ = Σ g·x̂ and
/// dx = r·(g·γ − x̂·mean(g·γ·x̂)).
pub(crate) fn composed_rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    g: FloatTensor<B>,
    eps: f64,
) -> [FloatTensor<B>; 2] {
    let shape = x.shape();
    let (x, g) = (rows::<B>(x), rows::<B>(g));
    let r = (x.clone() * x.clone())
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let xhat = x * r.clone();
    let dgamma = (g.clone() * xhat.clone()).sum_dim(0).flatten::<1>(0, 1);
    let dxhat = g * float::<B, 1>(gamma).unsqueeze_dim::<2>(0);
    let m = (dxhat.clone() * xhat.clone()).mean_dim(1);
    let dx = (dxhat - xhat * m) * r;
    [shaped(dx, shape), dgamma.into_primitive().tensor()]
}

/// silu(gate)·up.
pub(crate) fn composed_swiglu<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = gate.shape();
    let (gate, up) = (flat::<B>(gate), flat::<B>(up));
    shaped(burn::tensor::activation::silu(gate) * up, shape)
}

/// SwiGLU's gradients: with s = σ(gate), d gate = g·up·s·(1 + gate·(1 − s)), d up = g·gate·s.
pub(crate) fn composed_swiglu_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    g: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let shape = gate.shape();
    let (gate, up, g) = (flat::<B>(gate), flat::<B>(up), flat::<B>(g));
    let s = sigmoid(gate.clone());
    let silu = gate.clone() * s.clone();
    let dgate = g.clone() * up * s.clone() * (gate * (s.neg() + 1.0) + 1.0);
    let dup = g * silu;
    [shaped(dgate, shape.clone()), shaped(dup, shape)]
}

/// Rotate-half rotary embedding on the first `heads` heads of x [B, T, n·dh].
pub(crate) fn composed_rotary<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    heads: usize,
) -> FloatTensor<B> {
    let x = float::<B, 3>(x);
    let [b, t, w] = x.dims();
    let (cos, sin) = (float::<B, 2>(cos), float::<B, 2>(sin));
    let dh = cos.dims()[1];
    let half = dh / 2;
    let rot = x
        .clone()
        .narrow(2, 0, heads * dh)
        .reshape([b, t, heads, dh]);
    let (x1, x2) = (
        rot.clone().narrow(3, 0, half),
        rot.clone().narrow(3, half, half),
    );
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let (cos, sin) = (cos.reshape([1, t, 1, dh]), sin.reshape([1, t, 1, dh]));
    let y = (rot * cos + rotated * sin).reshape([b, t, heads * dh]);
    let y = if heads * dh < w {
        Tensor::cat(vec![y, x.narrow(2, heads * dh, w - heads * dh)], 2)
    } else {
        y
    };
    y.into_primitive().tensor()
}

/// Its gradient: scale·y·(g − Σ y·g) per row (masked keys have y = 0, so get 0).
pub(crate) fn composed_softmax_backward<B: Backend>(
    y: FloatTensor<B>,
    g: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let shape = y.shape();
    let (y, g) = (rows::<B>(y), rows::<B>(g));
    let dot = (y.clone() * g.clone()).sum_dim(1);
    shaped(y * (g - dot) * scale, shape)
}

/// Layer norm's gradients [input, gamma, beta], recomputing the row statistics.
pub(crate) fn composed_layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    g: FloatTensor<B>,
    eps: f64,
) -> [FloatTensor<B>; 3] {
    let shape = x.shape();
    let (x, g) = (rows::<B>(x), rows::<B>(g));
    let gamma = float::<B, 1>(gamma);
    let mean = x.clone().mean_dim(1);
    let centered = x - mean;
    let var = (centered.clone() * centered.clone()).mean_dim(1);
    let rstd = (var + eps).sqrt().recip();
    let xhat = centered * rstd.clone();
    let dbeta = g.clone().sum_dim(0).flatten::<1>(0, 1);
    let dgamma = (g.clone() * xhat.clone()).sum_dim(0).flatten::<1>(0, 1);
    let dxhat = g * gamma.unsqueeze_dim::<2>(0);
    let m1 = dxhat.clone().mean_dim(1);
    let m2 = (dxhat.clone() * xhat.clone()).mean_dim(1);
    let dx = (dxhat - m1 - xhat * m2) * rstd;
    [
        shaped(dx, shape),
        dgamma.into_primitive().tensor(),
        dbeta.into_primitive().tensor(),
    ]
}

/// gelu_new as x·σ(u), u = 2·√(2/π)·(x + 0.044715·x³): equal to 0.5·x·(1 + tanh(u/2)), with
/// one `exp` instead of a `tanh` and a `powf`. Returns (output, σ(u)).
pub(crate) fn composed_gelu_new<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let x = flat::<B>(x);
    let cube = x.clone() * x.clone() * x.clone();
    let s = sigmoid((x.clone() + cube * GELU_CUBIC) * (2.0 * SQRT_2_OVER_PI));
    (shaped(x * s.clone(), shape.clone()), shaped(s, shape))
}

/// gelu_new's gradient: g·(s + x·s(1−s)·2k(1 + 3c·x²)) with s = σ(u).
pub(crate) fn composed_gelu_new_backward<B: Backend>(
    x: FloatTensor<B>,
    s: FloatTensor<B>,
    g: FloatTensor<B>,
) -> FloatTensor<B> {
    let shape = x.shape();
    let (x, s, g) = (flat::<B>(x), flat::<B>(s), flat::<B>(g));
    let du = ((x.clone() * x.clone()) * (3.0 * GELU_CUBIC) + 1.0) * (2.0 * SQRT_2_OVER_PI);
    let ds = s.clone() * (s.clone().neg() + 1.0);
    let dy = s + x * ds * du;
    shaped(g * dy, shape)
}

/// The exact GELU as x·Φ(x), Φ(x) = (1 + erf(x/√2))/2, with its slope Φ(x) + x·φ(x),
/// φ(x) = exp(−x²/2)/√(2π). Returns (output, slope).
pub(crate) fn composed_gelu<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let x = flat::<B>(x);
    let cdf = ((x.clone() * core::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
    let pdf = (x.clone() * x.clone() * -0.5).exp() * FRAC_1_SQRT_2PI;
    let slope = cdf.clone() + x.clone() * pdf;
    (shaped(x * cdf, shape.clone()), shaped(slope, shape))
}

/// The activation of a gated linear unit's first half ([`FusedOps::fused_glu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The exact (erf) GELU: GEGLU, as DNABERT-2's MLP.
    Gelu,
    /// SiLU: SwiGLU, as LLaMA's MLP.
    Silu,
}

/// The two halves of h [.., 2n] as [rows, n] each.
fn glu_halves<B: Backend>(h: FloatTensor<B>) -> (Tensor<B, 2>, Tensor<B, 2>, Shape) {
    let mut shape = h.shape();
    let h = rows::<B>(h);
    let n = h.dims()[1] / 2;
    let last = shape.num_dims() - 1;
    shape[last] = n;
    (h.clone().narrow(1, 0, n), h.narrow(1, n, n), shape)
}

/// act(a)·b and act'(a) for the first half a of a gated linear unit.
fn glu_gate<B: Backend>(a: Tensor<B, 2>, gate: Gate) -> (Tensor<B, 2>, Tensor<B, 2>) {
    match gate {
        Gate::Gelu => {
            let cdf = ((a.clone() * core::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
            let pdf = (a.clone() * a.clone() * -0.5).exp() * FRAC_1_SQRT_2PI;
            (a.clone() * cdf.clone(), cdf + a * pdf)
        }
        Gate::Silu => {
            let s = sigmoid(a.clone());
            let slope = s.clone() * (a.clone() * (s.clone().neg() + 1.0) + 1.0);
            (a * s, slope)
        }
    }
}

/// act(h[.., :n])·h[.., n:].
pub(crate) fn composed_glu<B: Backend>(h: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    let (a, b, shape) = glu_halves::<B>(h);
    let (act, _) = glu_gate(a, gate);
    shaped(act * b, shape)
}

/// The gated linear unit's gradient: d a = g·b·act'(a), d b = g·act(a), side by side.
pub(crate) fn composed_glu_backward<B: Backend>(
    h: FloatTensor<B>,
    g: FloatTensor<B>,
    gate: Gate,
) -> FloatTensor<B> {
    let shape = h.shape();
    let (a, b, _) = glu_halves::<B>(h);
    let g = rows::<B>(g);
    let (act, slope) = glu_gate(a, gate);
    let da = g.clone() * b * slope;
    let db = g * act;
    shaped(Tensor::cat(vec![da, db], 1), shape)
}

/// 1/√(2π), the standard normal density at 0.
pub(crate) const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// A primitive as a tensor of rank `D`.
fn float<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// A primitive as one flat axis.
fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    float::<B, 1>(B::float_reshape(x, [n].into()))
}

/// A primitive as [rows, last axis].
fn rows<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 2> {
    let shape = x.shape();
    let d = shape[shape.num_dims() - 1];
    let n = shape.num_elements() / d;
    float::<B, 2>(B::float_reshape(x, [n, d].into()))
}

/// Back to a primitive of the caller's shape.
fn shaped<B: Backend, const D: usize>(x: Tensor<B, D>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(x.into_primitive().tensor(), shape)
}

/// Attention weights [B, H, Tq, Tk] from raw scores: softmax(scale·scores) over the keys,
/// future keys masked when `causal`; one autodiff node.
pub fn attention_softmax<B: FusedOps>(
    scores: Tensor<B, 4>,
    scale: f64,
    causal: bool,
) -> Tensor<B, 4> {
    float(B::fused_softmax(
        scores.into_primitive().tensor(),
        scale,
        causal,
    ))
}

/// Attention on packed q | k | v [B, T, (H + 2·Hkv)·dh] → [B, T, H·dh], one autodiff node
/// (see [`FusedOps::fused_attention`]); `padding` [B, T] is 0 or [`MASKED`] per key.
pub fn attention<B: FusedOps>(
    qkv: Tensor<B, 3>,
    padding: Option<Tensor<B, 2>>,
    spec: &AttentionSpec,
) -> Tensor<B, 3> {
    float(B::fused_attention(
        qkv.into_primitive().tensor(),
        padding.map(|bias| bias.into_primitive().tensor()),
        spec,
    ))
}

/// LLaMA's SwiGLU gate silu(gate)·up, one autodiff node.
pub fn swiglu<B: FusedOps, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    float(B::fused_swiglu(
        gate.into_primitive().tensor(),
        up.into_primitive().tensor(),
    ))
}

/// Rotary embedding on the first `heads` heads of x [B, T, n·dh] with `cos`, `sin` [T, dh];
/// one autodiff node.
pub fn rotary<B: FusedOps>(
    x: Tensor<B, 3>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    heads: usize,
) -> Tensor<B, 3> {
    float(B::fused_rotary(
        x.into_primitive().tensor(),
        cos.into_primitive().tensor(),
        sin.into_primitive().tensor(),
        heads,
    ))
}

/// [A, B, C, D] → [A, C, B, D] as one autodiff node (contiguous on flex).
pub fn swap_heads<B: FusedOps>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    float(B::swap_heads(x.into_primitive().tensor()))
}

/// GPT-2's `gelu_new`, one autodiff node.
pub fn gelu_new<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::fused_gelu_new(x.into_primitive().tensor()))
}

/// a·b for a [m, k] and b [k, n], one autodiff node ([`FusedOps::fused_matmul`]).
pub fn matmul2<B: FusedOps>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    float(B::fused_matmul(
        a.into_primitive().tensor(),
        b.into_primitive().tensor(),
    ))
}

/// A gated linear unit act(h[.., :n])·h[.., n:] on h [.., 2n], one autodiff node.
pub fn glu<B: FusedOps, const D: usize>(h: Tensor<B, D>, gate: Gate) -> Tensor<B, D> {
    float(B::fused_glu(h.into_primitive().tensor(), gate))
}

/// BERT's exact (erf) GELU, one autodiff node.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::fused_gelu(x.into_primitive().tensor()))
}

/// A linear layer as PyTorch's `nn.Linear` (or GPT-2's `Conv1D`) holds it, weight [in, out],
/// and, when LoRA adapts it, the low-rank pair beside it: y = x·W + b + s·(drop(x)·A)·B.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<LowRank<B>>,
}

/// LoRA's trained pair of one layer: A [in, r] (PEFT's `lora_A.weight` [r, in]) and B [r, out]
/// (`lora_B.weight` [out, r]), its scale (α/r, or α/√r with rsLoRA) and input dropout.
#[derive(Module, Debug)]
pub struct LowRank<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: burn::nn::Dropout,
}

/// A layer norm over the last axis with HF's `weight`/`bias`, one autodiff node.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    /// `None` for a bias-free layer norm (ESM C's, `nn.LayerNorm(bias=False)`).
    pub beta: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
}

impl<B: FusedOps> LayerNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gamma = self.gamma.val();
        // A bias-free norm shifts by a constant zero: the same node, no gradient for it.
        let beta = match &self.beta {
            Some(beta) => beta.val(),
            None => gamma.zeros_like(),
        };
        float(B::fused_layer_norm(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.into_primitive().tensor(),
            self.eps,
        ))
    }
}

/// RMSNorm over the last axis with HF's `weight` (LLaMA), one autodiff node.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: FusedOps> RmsNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        float(B::fused_rms_norm(
            x.into_primitive().tensor(),
            self.gamma.val().into_primitive().tensor(),
            self.eps,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::activation::{gelu_approximate, softmax};
    use burn::tensor::{Distribution, TensorData};

    type AB = Autodiff<Flex>;

    fn input(shape: [usize; 3], seed: u64) -> Tensor<AB, 3> {
        let device = Default::default();
        <AB as Backend>::seed(&device, seed);
        Tensor::random(shape, Distribution::Normal(0.0, 2.0), &device).require_grad()
    }

    fn close(a: TensorData, b: TensorData, what: &str) {
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let worst = crate::models::max_abs_diff(&a, &b);
        assert!(worst < 1e-4, "{what}: max |diff| {worst}");
    }

    /// Same values and the same gradients as burn's composed, tracked form.
    fn check(
        fused: impl Fn(Tensor<AB, 3>) -> Tensor<AB, 3>,
        composed: impl Fn(Tensor<AB, 3>) -> Tensor<AB, 3>,
    ) {
        let x = input([2, 5, 16], 7);
        let weights = input([2, 5, 16], 8).detach(); // a non-uniform upstream gradient
        let (a, b) = (fused(x.clone()), composed(x.clone()));
        same_values_and_gradients(a, b, weights, &[(&x, "gradient")]);
    }

    /// The fused and composed outputs agree, and so do the gradients each input in `inputs`
    /// gets through them, with `weights` as a non-uniform upstream gradient.
    fn same_values_and_gradients<const D: usize>(
        fused: Tensor<AB, D>,
        composed: Tensor<AB, D>,
        weights: Tensor<AB, D>,
        inputs: &[(&Tensor<AB, D>, &str)],
    ) {
        close(fused.to_data(), composed.to_data(), "forward");
        let ga = (fused * weights.clone()).sum().backward();
        let gb = (composed * weights).sum().backward();
        for (x, what) in inputs {
            let (da, db) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            assert_eq!(
                da.dims(),
                x.dims(),
                "{what}: the gradient has the input's shape"
            );
            close(da.into_data(), db.into_data(), what);
        }
    }

    /// [`same_values_and_gradients`] for a norm's input and its 1-D gamma.
    fn same_norm_gradients(
        fused: Tensor<AB, 3>,
        composed: Tensor<AB, 3>,
        weights: Tensor<AB, 3>,
        x: &Tensor<AB, 3>,
        gamma: &Tensor<AB, 1>,
    ) {
        close(fused.to_data(), composed.to_data(), "forward");
        let ga = (fused * weights.clone()).sum().backward();
        let gb = (composed * weights).sum().backward();
        close(
            x.grad(&ga).unwrap().into_data(),
            x.grad(&gb).unwrap().into_data(),
            "input gradient",
        );
        close(
            gamma.grad(&ga).unwrap().into_data(),
            gamma.grad(&gb).unwrap().into_data(),
            "gamma gradient",
        );
    }

    #[test]
    fn attention_softmax_matches_composed_scaled_and_masked() {
        let device = Default::default();
        <AB as Backend>::seed(&device, 3);
        let x = Tensor::<AB, 4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 2.0), &device)
            .require_grad();
        let weights =
            Tensor::<AB, 4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        for causal in [false, true] {
            let fused = attention_softmax(x.clone(), 0.3, causal);
            let mut scores = x.clone() * 0.3;
            if causal {
                let future = Tensor::<AB, 2, Bool>::tril_mask([6, 6], 0, &device);
                scores = scores
                    + future
                        .float()
                        .mul_scalar(MASKED)
                        .unsqueeze_dims::<4>(&[0, 1]);
            }
            let composed = softmax(scores, 3);
            close(fused.to_data(), composed.to_data(), "forward");
            if causal {
                let above: f32 = fused
                    .clone()
                    .slice([0..1, 0..1, 0..1, 1..6])
                    .sum()
                    .into_scalar();
                assert_eq!(above, 0.0, "the first query sees only itself");
            }
            let ga = (fused * weights.clone()).sum().backward();
            let gb = (composed * weights.clone()).sum().backward();
            let (da, db) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            assert_eq!(da.dims(), x.dims());
            close(da.into_data(), db.into_data(), "gradient");
        }
    }

    /// The attention node against burn's own ops, tracked: same context, same gradient for
    /// q | k | v, over all keys, causal, and with padding, for several heads and sequences.
    #[test]
    fn attention_matches_composed_products_and_softmax() {
        let device = Default::default();
        <AB as Backend>::seed(&device, 5);
        let (b, t, n_head, dh) = (3, 7, 2, 4);
        let d = n_head * dh;
        let qkv = Tensor::<AB, 3>::random([b, t, 3 * d], Distribution::Normal(0.0, 1.5), &device)
            .require_grad();
        let upstream = Tensor::<AB, 3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);
        // Sequence 1 has 2 padding keys at the end, sequence 2 one in the middle.
        let mut padding = vec![0.0f32; b * t];
        for i in [t + 5, t + 6, 2 * t + 3] {
            padding[i] = MASKED;
        }
        let padding = Tensor::<AB, 2>::from_data(TensorData::new(padding, [b, t]), &device);
        let scale = 0.5;
        for (causal, padded) in [(false, false), (true, false), (false, true), (true, true)] {
            let spec = AttentionSpec {
                scale,
                causal,
                ..AttentionSpec::multi_head(n_head, d, causal)
            };
            let padding = padded.then(|| padding.clone());
            let fused = attention(qkv.clone(), padding.clone(), &spec);
            let heads = |i: usize| {
                qkv.clone()
                    .narrow(2, i * d, d)
                    .reshape([b, t, n_head, dh])
                    .swap_dims(1, 2)
            };
            let mut scores = heads(0).matmul(heads(1).swap_dims(2, 3)) * scale;
            if causal {
                let future = Tensor::<AB, 2, Bool>::tril_mask([t, t], 0, &device);
                scores = scores
                    + future
                        .float()
                        .mul_scalar(MASKED)
                        .unsqueeze_dims::<4>(&[0, 1]);
            }
            if let Some(bias) = &padding {
                scores = scores + bias.clone().reshape([b, 1, 1, t]);
            }
            let composed = softmax(scores, 3)
                .matmul(heads(2))
                .swap_dims(1, 2)
                .reshape([b, t, d]);
            close(fused.to_data(), composed.to_data(), "context");
            let ga = (fused * upstream.clone()).sum().backward();
            let gb = (composed * upstream.clone()).sum().backward();
            let (da, db) = (qkv.grad(&ga).unwrap(), qkv.grad(&gb).unwrap());
            assert_eq!(da.dims(), qkv.dims());
            close(da.into_data(), db.into_data(), "q | k | v gradient");
        }
    }

    /// A bias-free layer norm: the same node with a constant zero shift, and only the input
    /// and gamma get gradients.
    #[test]
    fn bias_free_layer_norm_matches_composed() {
        let device = Default::default();
        let gamma = Tensor::<AB, 1>::from_floats([0.5, -1.0, 2.0, 1.5], &device).require_grad();
        let x = input([3, 2, 4], 29);
        let weights = input([3, 2, 4], 30).detach();
        let ln = LayerNorm {
            gamma: Param::from_tensor(gamma),
            beta: None,
            eps: 1e-5,
        };
        let gamma = ln.gamma.val();
        let fused = ln.forward(x.clone());
        let mean = x.clone().mean_dim(2);
        let c = x.clone() - mean;
        let var = (c.clone() * c.clone()).mean_dim(2);
        let composed = c / (var + 1e-5).sqrt() * gamma.clone().unsqueeze_dims::<3>(&[0, 1]);
        same_norm_gradients(fused, composed, weights, &x, &gamma);
    }

    /// RMSNorm's node against burn's own ops: value, input and gamma gradients.
    #[test]
    fn rms_norm_matches_composed_with_parameter_gradients() {
        let device = Default::default();
        let gamma = Tensor::<AB, 1>::from_floats([0.5, -1.0, 2.0, 1.5], &device).require_grad();
        let x = input([3, 2, 4], 19);
        let weights = input([3, 2, 4], 20).detach();
        let norm = RmsNorm {
            gamma: Param::from_tensor(gamma),
            eps: 1e-6,
        };
        let gamma = norm.gamma.val();
        let fused = norm.forward(x.clone());
        let composed = x.clone() / ((x.clone() * x.clone()).mean_dim(2) + 1e-6).sqrt()
            * gamma.clone().unsqueeze_dims::<3>(&[0, 1]);
        same_norm_gradients(fused, composed, weights, &x, &gamma);
    }

    /// The SwiGLU node against burn's silu and product, both gradients.
    #[test]
    fn swiglu_matches_composed() {
        let gate = input([2, 5, 16], 31);
        let up = input([2, 5, 16], 32);
        let weights = input([2, 5, 16], 33).detach();
        let fused = swiglu(gate.clone(), up.clone());
        let composed = burn::tensor::activation::silu(gate.clone()) * up.clone();
        same_values_and_gradients(
            fused,
            composed,
            weights,
            &[(&gate, "gate gradient"), (&up, "up gradient")],
        );
    }

    /// The product node against burn's matmul, forward and both gradients, on contiguous and
    /// transposed operands, sizes below and above the parallel threshold; a frozen operand
    /// gets no gradient and the other one still does.
    #[test]
    fn matmul_matches_burns_with_views_and_frozen_operands() {
        let two = |shape: [usize; 2], seed: u64| {
            input([1, shape[0], shape[1]], seed)
                .reshape(shape)
                .detach()
                .require_grad()
        };
        // The third is a LoRA adapter's shape: a narrow output, computed transposed.
        for (m, k, n) in [(7, 5, 3), (300, 200, 250), (300, 200, 8)] {
            let weights = two([m, n], 63).detach();
            // Fresh leaves for each comparison: each backward consumes its graph.
            let (a, b) = (two([m, k], 61), two([k, n], 62));
            same_values_and_gradients(
                matmul2(a.clone(), b.clone()),
                a.clone().matmul(b.clone()),
                weights.clone(),
                &[(&a, "a gradient"), (&b, "b gradient")],
            );
            // a·bᵀ and aᵀ·b through transposed views.
            let (a, bt) = (two([m, k], 64), two([n, k], 65));
            same_values_and_gradients(
                matmul2(a.clone(), bt.clone().transpose()),
                a.clone().matmul(bt.clone().transpose()),
                weights.clone(),
                &[(&a, "a gradient (b transposed)"), (&bt, "bᵀ gradient")],
            );
            let (at, b) = (two([k, m], 66), two([k, n], 67));
            same_values_and_gradients(
                matmul2(at.clone().transpose(), b.clone()),
                at.clone().transpose().matmul(b.clone()),
                weights.clone(),
                &[(&at, "aᵀ gradient"), (&b, "b gradient (a transposed)")],
            );
            let a = two([m, k], 68);
            let frozen = Tensor::<AB, 2>::random([k, n], Distribution::Default, &a.device());
            let ours = (matmul2(a.clone(), frozen.clone()) * weights.clone())
                .sum()
                .backward();
            let theirs = (a.clone().matmul(frozen.clone()) * weights)
                .sum()
                .backward();
            assert!(
                frozen.grad(&ours).is_none(),
                "a frozen operand gets no gradient"
            );
            close(
                a.grad(&ours).unwrap().into_data(),
                a.grad(&theirs).unwrap().into_data(),
                "a gradient beside a frozen operand",
            );
        }
    }

    /// The rotary node (its gradient is the rotation by −sin) against burn's own ops on the
    /// first heads of a packed row, the last head passing through.
    #[test]
    fn rotary_matches_composed_and_its_gradient_is_the_inverse_rotation() {
        let device = Default::default();
        let (b, t, heads, dh) = (2, 5, 3, 4);
        let x = input([b, t, heads * dh], 21);
        let weights = input([b, t, heads * dh], 22).detach();
        let angles: Vec<f32> = (0..t * dh)
            .map(|i| (i / dh) as f32 * 0.3 * (1 + i % 2) as f32)
            .collect();
        let table = |f: fn(f32) -> f32| {
            Tensor::<AB, 2>::from_data(
                TensorData::new(angles.iter().map(|&a| f(a)).collect::<Vec<f32>>(), [t, dh]),
                &device,
            )
        };
        let (cos, sin) = (table(f32::cos), table(f32::sin));
        let fused = rotary(x.clone(), cos.clone(), sin.clone(), 2);
        let composed = {
            let rot = x.clone().narrow(2, 0, 2 * dh).reshape([b, t, 2, dh]);
            let (x1, x2) = (
                rot.clone().narrow(3, 0, dh / 2),
                rot.clone().narrow(3, dh / 2, dh / 2),
            );
            let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
            let y = rot * cos.reshape([1, t, 1, dh]) + rotated * sin.reshape([1, t, 1, dh]);
            Tensor::cat(
                vec![y.reshape([b, t, 2 * dh]), x.clone().narrow(2, 2 * dh, dh)],
                2,
            )
        };
        same_values_and_gradients(fused, composed, weights, &[(&x, "gradient")]);
    }

    #[test]
    fn gelu_new_matches_tanh_form() {
        check(gelu_new, gelu_approximate);
    }

    #[test]
    fn layer_norm_matches_composed_with_parameter_gradients() {
        let device = Default::default();
        let gamma = Tensor::<AB, 1>::from_floats([0.5, -1.0, 2.0, 1.5], &device).require_grad();
        let beta = Tensor::<AB, 1>::from_floats([0.1, 0.0, -0.3, 2.0], &device).require_grad();
        let x = input([3, 2, 4], 9);
        let weights = input([3, 2, 4], 10).detach();
        let ln = LayerNorm {
            gamma: Param::from_tensor(gamma),
            beta: Some(Param::from_tensor(beta)),
            eps: 1e-5,
        };
        let (gamma, beta) = (ln.gamma.val(), ln.beta.as_ref().unwrap().val());
        let fused = ln.forward(x.clone());
        let composed = {
            let mean = x.clone().mean_dim(2);
            let c = x.clone() - mean;
            let var = (c.clone() * c.clone()).mean_dim(2);
            c / (var + 1e-5).sqrt() * gamma.clone().unsqueeze_dims::<3>(&[0, 1])
                + beta.clone().unsqueeze_dims::<3>(&[0, 1])
        };
        close(fused.to_data(), composed.to_data(), "forward");
        let ga = (fused * weights.clone()).sum().backward();
        let gb = (composed * weights).sum().backward();
        let (da, db) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
        assert_eq!(da.dims(), x.dims(), "the gradient has the input's shape");
        close(da.into_data(), db.into_data(), "input gradient");
        close(
            gamma.grad(&ga).unwrap().into_data(),
            gamma.grad(&gb).unwrap().into_data(),
            "gamma gradient",
        );
        close(
            beta.grad(&ga).unwrap().into_data(),
            beta.grad(&gb).unwrap().into_data(),
            "beta gradient",
        );
    }
}
