//! The building blocks every architecture composes: dense layers in the compute precision,
//! self-attention (the fused node, or op by op with dropout, bf16 or a KV cache), and the task
//! heads and generation cache (`heads`, `kv_cache`).

use burn::nn::Dropout;
use burn::prelude::*;

use super::device::Precision;
use super::kernels::{self, AttentionSpec, Dense, FusedOps, LowRank, merge_heads};

pub mod heads;
pub mod kv_cache;

/// `a @ b` in the compute precision (f32 result); a 2-D product in f32 is the fused node
/// ([`kernels::matmul2`]).
pub(crate) fn matmul<B: FusedOps, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    use burn::tensor::FloatDType;
    let dtype = match precision {
        Precision::F32 if D == 2 => {
            // Rank 2 already: the same primitives, no reshape (which would copy a transposed
            // view).
            let two = |x: Tensor<B, D>| Tensor::<B, 2>::from_primitive(x.into_primitive());
            return Tensor::from_primitive(kernels::matmul2(two(a), two(b)).into_primitive());
        }
        Precision::F32 => return a.matmul(b),
        Precision::Bf16 => FloatDType::BF16,
        Precision::F16 => FloatDType::F16,
    };
    a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32)
}

/// Whether attention runs as the one fused node ([`kernels::attention`]): it has no dropout on
/// its weights (none set, or not training) and its products are in f32.
pub(crate) fn attention_fuses<B: Backend>(
    dropout: &Dropout,
    precision: Precision,
    device: &B::Device,
) -> bool {
    precision == Precision::F32 && (dropout.prob == 0.0 || !B::ad_enabled(device))
}

/// Attention op by op on heads: q [B, H, Tq, dh], k and v [B, Hkv, Tk, dh] (keys and
/// values may be longer than the queries: a KV cache): the spec's bias, softmax, dropout on the
/// weights, products in `precision`; the context merged to [B, Tq, H·dh]. What the fused node
/// does not do.
pub(crate) fn attention_stepwise<B: FusedOps>(
    [q, k, v]: [Tensor<B, 4>; 3],
    padding: Option<Tensor<B, 2>>,
    spec: &AttentionSpec,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    let [b, _, tq, _] = q.dims();
    let tk = k.dims()[2];
    let (k, v) = (
        kernels::repeat_kv(k, spec.group()),
        kernels::repeat_kv(v, spec.group()),
    );
    let mut scores = matmul(q.clone(), k.swap_dims(2, 3), precision) * spec.scale; // [B, H, Tq, Tk]
    if let Some(bias) = kernels::attention_bias(spec, [b, tq, tk], padding, &q.device()) {
        scores = scores + bias;
    }
    let weights = kernels::dropout(dropout, kernels::attention_softmax(scores, 1.0, false));
    merge_heads(matmul(weights, v, precision))
}

/// Attention on packed q | k | v [B, T, (H + 2·Hkv)·dh]: the fused node when it can
/// ([`attention_fuses`], no cache), else op by op, with generation's cache slot when there is
/// one (the keys and values of earlier positions join this call's, and the slot keeps all).
pub(crate) fn self_attention<B: FusedOps>(
    qkv: Tensor<B, 3>,
    padding: Option<Tensor<B, 2>>,
    spec: &AttentionSpec,
    cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    if cache.is_none() && attention_fuses::<B>(dropout, precision, &qkv.device()) {
        return kernels::attention(qkv, padding, spec);
    }
    let [q, mut k, mut v] = kernels::split_qkv(qkv, spec);
    if let Some(slot) = cache {
        if let Some((past_k, past_v)) = slot.take() {
            k = Tensor::cat(vec![past_k, k], 2);
            v = Tensor::cat(vec![past_v, v], 2);
        }
        *slot = Some((k.clone(), v.clone()));
    }
    attention_stepwise([q, k, v], padding, spec, dropout, precision)
}

/// A linear layer on [B, T, d_in] with the product in the compute precision, plus its LoRA
/// pair's low-rank update when it has one. The batch and time axes are folded into one, so
/// forward and both gradients are single 2-D GEMMs (a broadcast batched product would run B
/// small ones and sum B weight gradients).
pub(crate) fn dense<B: FusedOps>(
    l: &Dense<B>,
    x: Tensor<B, 3>,
    precision: Precision,
) -> Tensor<B, 3> {
    let Some(lora) = &l.lora else {
        return affine(
            x,
            l.weight.val(),
            l.bias.as_ref().map(|b| b.val()),
            precision,
        );
    };
    let delta = low_rank(lora, x.clone(), precision);
    affine(
        x,
        l.weight.val(),
        l.bias.as_ref().map(|b| b.val()),
        precision,
    ) + delta
}

/// LoRA's update s·(drop(x)·A)·B on [B, T, d_in]: two thin products, so neither the update
/// nor its gradient ever forms a full-size weight. The scale multiplies B ([r, d_out]) rather
/// than the update ([B·T, d_out]): a pass over r rows instead of every token's, forward and
/// backward.
fn low_rank<B: FusedOps>(lora: &LowRank<B>, x: Tensor<B, 3>, precision: Precision) -> Tensor<B, 3> {
    let h = affine(
        kernels::dropout(&lora.dropout, x),
        lora.a.val(),
        None,
        precision,
    );
    affine(h, lora.b.val() * lora.scale, None, precision)
}

/// The LoRA updates of layers whose outputs are packed side by side (attention's q | k | v,
/// computed as one product), packed the same way; `None` when none of them is adapted.
pub(crate) fn packed_low_rank<B: FusedOps>(
    layers: &[&Dense<B>],
    x: Tensor<B, 3>,
    precision: Precision,
) -> Option<Tensor<B, 3>> {
    if layers.iter().all(|l| l.lora.is_none()) {
        return None;
    }
    let [b, t, _] = x.dims();
    let parts = layers
        .iter()
        .map(|l| match &l.lora {
            Some(lora) => low_rank(lora, x.clone(), precision),
            None => Tensor::zeros([b, t, l.weight.dims()[1]], &x.device()),
        })
        .collect();
    Some(Tensor::cat(parts, 2))
}

/// x·weight + bias on [B, T, d_in] with weight [d_in, d_out], as one 2-D product.
pub(crate) fn affine<B: FusedOps>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    precision: Precision,
) -> Tensor<B, 3> {
    let [b, t, d_in] = x.dims();
    let y = matmul(x.reshape([b * t, d_in]), weight, precision);
    let y = match bias {
        Some(bias) => y + bias.unsqueeze_dim::<2>(0),
        None => y,
    };
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// `x + row` for x [N, R, C] and row [R, C], added as [N, R·C] + [1, R·C]: flex runs that
/// shape with its SIMD shared-row kernel, a [1, R, C] broadcast with its scalar strided one.
pub(crate) fn add_per_row<B: Backend>(x: Tensor<B, 3>, row: Tensor<B, 2>) -> Tensor<B, 3> {
    let [n, r, c] = x.dims();
    (x.reshape([n, r * c]) + row.reshape([1, r * c])).reshape([n, r, c])
}
