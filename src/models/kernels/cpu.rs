//! flex's side of [`FusedOps`]: attention's softmax, layer norm's gradient, GPT-2's GELU and
//! the heads transpose as single passes over f32 rows, split across the step's rayon threads,
//! with an `exp` written so the compiler vectorizes it (flex calls libm's `expf` once per
//! element); whole multi-head attention in `cpu_attention.rs`. Other dtypes fall back to the
//! composed forms.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape, TensorData, TensorMetadata};
use rayon::prelude::*;

use super::cpu_attention::{self, Heads};
use super::dropout;
use super::rows::{dot, exp, simd, softmax_row, sum_of};
use super::{
    AttentionSpec, FRAC_1_SQRT_2PI, FusedOps, GELU_CUBIC, Gate, SQRT_2_OVER_PI, composed_attention,
    composed_attention_backward, composed_gelu, composed_gelu_new, composed_gelu_new_backward,
    composed_glu, composed_glu_backward, composed_layer_norm_backward, composed_rms_norm,
    composed_rms_norm_backward, composed_rotary, composed_softmax, composed_softmax_backward,
    composed_swiglu, composed_swiglu_backward,
};

/// Elements per parallel task for element-wise kernels: big enough to amortize scheduling.
const CHUNK: usize = 1 << 14;

/// Products whose output is fewer columns wide than gemm's widest kernel lanes (f32 on
/// AVX-512) and at least four times as tall are computed transposed ([`FusedOps::fused_matmul`]).
const NARROW_COLUMNS: usize = 16;

impl FusedOps for Flex {
    fn fused_softmax(x: FloatTensor<Self>, scale: f64, causal: bool) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed_softmax::<Flex>(x, scale, causal);
        }
        let shape = x.shape();
        let rank = shape.num_dims();
        let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
        assert!(!causal || tq == tk, "causal attention scores are square");
        let mut out = owned(x);
        let rows = rows_per_task(tk);
        out.storage_mut::<f32>()
            .par_chunks_mut(rows * tk)
            .enumerate()
            .for_each(|(task, block)| {
                simd!({
                    for (r, row) in block.chunks_mut(tk).enumerate() {
                        let query = (task * rows + r) % tq;
                        let seen = if causal { query + 1 } else { tk };
                        softmax_row(row, scale as f32, seen);
                    }
                },)
            });
        out
    }

    fn fused_softmax_backward(
        y: FloatTensor<Self>,
        g: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        if y.dtype() != DType::F32 {
            return composed_softmax_backward::<Flex>(y, g, scale);
        }
        let d = last_dim(&y.shape());
        let y = y.to_contiguous();
        let mut out = owned(g);
        let rows = rows_per_task(d) * d;
        let scale = scale as f32;
        out.storage_mut::<f32>()
            .par_chunks_mut(rows)
            .zip(f32s(&y).par_chunks(rows))
            .for_each(|(gs, ys)| {
                simd!({
                    for (g, y) in gs.chunks_mut(d).zip(ys.chunks(d)) {
                        let dot = dot(y, g);
                        for (g, y) in g.iter_mut().zip(y) {
                            *g = scale * y * (*g - dot);
                        }
                    }
                },)
            });
        out
    }

    fn fused_attention(
        qkv: FloatTensor<Self>,
        padding: Option<FloatTensor<Self>>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        attention(qkv, padding, spec, false).0
    }

    fn attention_and_weights(
        qkv: FloatTensor<Self>,
        padding: Option<FloatTensor<Self>>,
        spec: &AttentionSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (ctx, weights) = attention(qkv, padding, spec, true);
        (ctx, weights.expect("weights were asked for"))
    }

    fn fused_attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        g: FloatTensor<Self>,
        spec: &AttentionSpec,
    ) -> FloatTensor<Self> {
        if qkv.dtype() != DType::F32 || weights.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return composed_attention_backward::<Flex>(qkv, weights, g, spec);
        }
        let shape = qkv.shape();
        let heads = heads(&shape, spec);
        let (qkv, weights, g) = (
            qkv.to_contiguous(),
            weights.to_contiguous(),
            g.to_contiguous(),
        );
        let dqkv = cpu_attention::backward(
            f32s(&qkv),
            f32s(&weights),
            f32s(&g),
            heads,
            spec.scale as f32,
            spec.causal,
        );
        tensor(dqkv, shape)
    }

    fn swap_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return Flex::float_swap_dims(x, 1, 2);
        }
        let shape = x.shape();
        let [a, b, c, d] = [shape[0], shape[1], shape[2], shape[3]];
        let x = x.to_contiguous();
        let xs = f32s(&x);
        let mut out = vec![0.0f32; xs.len()];
        // Block (i, j) of the output is [b, d]: row k of it is row (i, k, j) of the input.
        out.par_chunks_mut(b * d)
            .enumerate()
            .for_each(|(block, out)| {
                simd!({
                    let (i, j) = (block / c, block % c);
                    for (k, row) in out.chunks_mut(d).enumerate() {
                        let from = ((i * b + k) * c + j) * d;
                        row.copy_from_slice(&xs[from..from + d]);
                    }
                },)
            });
        tensor(out, Shape::new([a, c, b, d]))
    }

    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 3] {
        if x.dtype() != DType::F32 || gamma.dtype() != DType::F32 {
            return composed_layer_norm_backward::<Flex>(x, gamma, g, eps);
        }
        let d = last_dim(&x.shape());
        let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
        let (xs, gammas) = (f32s(&x), f32s(&gamma));
        let mut dx = owned(g); // the upstream gradient's buffer becomes dx, row by row
        let rows = rows_per_task(d) * d;
        // Each task sums dgamma and dbeta over its rows; the partial sums are added at the end.
        let (dgamma, dbeta) = dx
            .storage_mut::<f32>()
            .par_chunks_mut(rows)
            .zip(xs.par_chunks(rows))
            .map(|(gs, xs)| {
                simd!({
                    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                    for (g, x) in gs.chunks_mut(d).zip(xs.chunks(d)) {
                        layer_norm_backward_row(x, gammas, g, eps as f32, &mut dgamma, &mut dbeta);
                    }
                    (dgamma, dbeta)
                },)
            })
            .reduce(
                || (vec![0.0f32; d], vec![0.0f32; d]),
                |(mut ga, mut ba), (gb, bb)| {
                    ga.iter_mut().zip(gb).for_each(|(a, b)| *a += b);
                    ba.iter_mut().zip(bb).for_each(|(a, b)| *a += b);
                    (ga, ba)
                },
            );
        [
            dx,
            tensor(dgamma, Shape::new([d])),
            tensor(dbeta, Shape::new([d])),
        ]
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || gamma.dtype() != DType::F32 {
            return composed_rms_norm::<Flex>(x, gamma, eps);
        }
        let d = last_dim(&x.shape());
        let gamma = gamma.to_contiguous();
        let gammas = f32s(&gamma);
        let mut y = owned(x);
        y.storage_mut::<f32>()
            .par_chunks_mut(rows_per_task(d) * d)
            .for_each(|rows| {
                simd!({
                    for row in rows.chunks_mut(d) {
                        let r = rms_reciprocal(row, eps as f32);
                        row.iter_mut().zip(gammas).for_each(|(v, g)| *v *= r * g);
                    }
                },)
            });
        y
    }

    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 2] {
        if x.dtype() != DType::F32 || gamma.dtype() != DType::F32 {
            return composed_rms_norm_backward::<Flex>(x, gamma, g, eps);
        }
        let d = last_dim(&x.shape());
        let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
        let (xs, gammas) = (f32s(&x), f32s(&gamma));
        let mut dx = owned(g); // the upstream gradient's buffer becomes dx, row by row
        let rows = rows_per_task(d) * d;
        let dgamma = dx
            .storage_mut::<f32>()
            .par_chunks_mut(rows)
            .zip(xs.par_chunks(rows))
            .map(|(gs, xs)| {
                simd!({
                    let mut dgamma = vec![0.0f32; d];
                    for (g, x) in gs.chunks_mut(d).zip(xs.chunks(d)) {
                        let r = rms_reciprocal(x, eps as f32);
                        // m = mean(g·γ·x̂); dx = r·(g·γ − x̂·m), x̂ = x·r.
                        let m = sum_of(d, |i| g[i] * gammas[i] * x[i] * r) / d as f32;
                        for i in 0..d {
                            let xhat = x[i] * r;
                            dgamma[i] += g[i] * xhat;
                            g[i] = r * (g[i] * gammas[i] - xhat * m);
                        }
                    }
                    dgamma
                },)
            })
            .reduce(
                || vec![0.0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        [dx, tensor(dgamma, Shape::new([d]))]
    }

    fn fused_rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
            return composed_rotary::<Flex>(x, cos, sin, heads);
        }
        let shape = x.shape();
        let (t, w) = (shape[1], shape[2]);
        let dh = last_dim(&cos.shape());
        let half = dh / 2;
        let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
        let (cs, ss) = (f32s(&cos), f32s(&sin));
        let mut y = owned(x);
        // One task per block of token rows; each row's first `heads` heads rotate in place.
        let rows = rows_per_task(w);
        y.storage_mut::<f32>()
            .par_chunks_mut(rows * w)
            .enumerate()
            .for_each(|(task, block)| {
                simd!({
                    for (r, row) in block.chunks_mut(w).enumerate() {
                        let pos = (task * rows + r) % t;
                        let (c, s) = (&cs[pos * dh..][..dh], &ss[pos * dh..][..dh]);
                        for head in row[..heads * dh].chunks_mut(dh) {
                            for i in 0..half {
                                let (a, b) = (head[i], head[i + half]);
                                head[i] = a * c[i] - b * s[i];
                                head[i + half] = b * c[i + half] + a * s[i + half];
                            }
                        }
                    }
                },)
            });
        y
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
            return composed_swiglu::<Flex>(gate, up);
        }
        let up = up.to_contiguous();
        let ups = f32s(&up);
        let mut y = owned(gate);
        y.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(ups.par_chunks(CHUNK))
            .for_each(|(ys, ups)| {
                simd!({
                    for (y, &u) in ys.iter_mut().zip(ups) {
                        *y = activation(Gate::Silu, *y) * u;
                    }
                },)
            });
        y
    }

    fn fused_swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return composed_swiglu_backward::<Flex>(gate, up, g);
        }
        let shape = gate.shape();
        let (gate, up, g) = (gate.to_contiguous(), up.to_contiguous(), g.to_contiguous());
        let (gs, us, dys) = (f32s(&gate), f32s(&up), f32s(&g));
        // Both gradients are written whole below, so they are not zeroed first.
        let n = gs.len();
        let (mut dgate, mut dup) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
        dgate.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(dup.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
            .zip(
                gs.par_chunks(CHUNK)
                    .zip(us.par_chunks(CHUNK))
                    .zip(dys.par_chunks(CHUNK)),
            )
            .for_each(|((dg, du), ((gs, us), dys))| {
                simd!({
                    for i in 0..gs.len() {
                        let (x, u, dy) = (gs[i], us[i], dys[i]);
                        let s = sigmoid(x);
                        dg[i] = MaybeUninit::new(dy * u * s * (1.0 + x * (1.0 - s)));
                        du[i] = MaybeUninit::new(dy * x * s);
                    }
                },)
            });
        // SAFETY: the chunks cover 0..n of both, and every value of each chunk was written.
        unsafe {
            dgate.set_len(n);
            dup.set_len(n);
        }
        [tensor(dgate, shape.clone()), tensor(dup, shape)]
    }

    fn gelu_new_and_sigmoid(x: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if x.dtype() != DType::F32 {
            return composed_gelu_new::<Flex>(x);
        }
        map_pair(
            x,
            #[inline(always)]
            |x| {
                let sig = sigmoid(gelu_u(x));
                (x * sig, sig)
            },
        )
    }

    fn fused_gelu_new_backward(
        x: FloatTensor<Self>,
        s: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed_gelu_new_backward::<Flex>(x, s, g);
        }
        let (x, s) = (x.to_contiguous(), s.to_contiguous());
        let (xs, ss) = (f32s(&x), f32s(&s));
        let mut out = owned(g);
        let (k, c3) = ((2.0 * SQRT_2_OVER_PI) as f32, (3.0 * GELU_CUBIC) as f32);
        out.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(ss.par_chunks(CHUNK)))
            .for_each(|(gs, (xs, ss))| {
                simd!({
                    for ((g, &x), &s) in gs.iter_mut().zip(xs).zip(ss) {
                        let du = k * (1.0 + c3 * x * x);
                        *g *= s + x * s * (1.0 - s) * du;
                    }
                },)
            });
        out
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed_gelu::<Flex>(x).0;
        }
        let shape = x.shape();
        let x = x.to_contiguous();
        let xs = f32s(&x);
        let mut y = vec![0.0f32; xs.len()];
        y.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(y, xs)| {
                simd!({
                    for (y, &x) in y.iter_mut().zip(xs) {
                        *y = activation(Gate::Gelu, x);
                    }
                },)
            });
        tensor(y, shape)
    }

    fn gelu_and_slope(x: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if x.dtype() != DType::F32 {
            return composed_gelu::<Flex>(x);
        }
        map_pair(
            x,
            #[inline(always)]
            |x| activation_and_slope(Gate::Gelu, x),
        )
    }

    fn fused_matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let (sa, sb) = (a.shape(), b.shape());
        if a.dtype() != DType::F32
            || b.dtype() != DType::F32
            || sa.num_dims() != 2
            || sb.num_dims() != 2
        {
            return Flex::float_matmul(a, b);
        }
        let (m, k, n) = (sa[0], sa[1], sb[1]);
        assert_eq!(sb[0], k, "matmul: [{m}, {k}] · [{}, {n}]", sb[0]);
        let (Some(a_strides), Some(b_strides)) = (strides_2d(&a), strides_2d(&b)) else {
            return Flex::float_matmul(a, b); // a view with a negative stride (a flip)
        };
        if m == 0 || n == 0 || k == 0 {
            return tensor(vec![0.0; m * n], Shape::new([m, n]));
        }
        // flex's own product zeroes its output and then copies it whole to realign it (its
        // byte buffer records alignment 1); gemm writes every element of this one once.
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let parallelism = if m * n * k >= 192 * 192 * 192 {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // gemm's kernels run along the output's contiguous dimension, 16 lanes at a time: an
        // output a few columns wide (a LoRA adapter's [rows, r]) would keep most lanes masked.
        // Such a product is computed as its transpose, bᵀ·aᵀ, its long side contiguous, and
        // transposed back (a few columns: a small copy).
        let narrow = n < NARROW_COLUMNS && m >= 4 * NARROW_COLUMNS;
        let ((rows, cols), lhs, rhs) = if narrow {
            let swap = |(r, c): (usize, usize)| (c, r);
            (
                (n, m),
                (first_f32(&b), swap(b_strides)),
                (first_f32(&a), swap(a_strides)),
            )
        } else {
            (
                (m, n),
                (first_f32(&a), a_strides),
                (first_f32(&b), b_strides),
            )
        };
        // SAFETY: the pointers with these strides address exactly a's [m, k] and b's [k, n]
        // elements inside their buffers (flex's layout; swapping a matrix's strides views its
        // transpose), `out` has room for m·n, and gemm without `add` writes every one of them
        // (k > 0) before `set_len`.
        unsafe {
            cpu_attention::gemm_product(
                (rows, cols, k),
                (out.as_mut_ptr(), cols, false),
                lhs,
                rhs,
                parallelism,
            );
            out.set_len(m * n);
        }
        if narrow {
            out = crate::models::io::weights::transpose(&out, n, m);
        }
        tensor(out, Shape::new([m, n]))
    }

    fn fused_glu(h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        if h.dtype() != DType::F32 {
            return composed_glu::<Flex>(h, gate);
        }
        let mut shape = h.shape();
        let n = last_dim(&shape) / 2;
        let last = shape.num_dims() - 1;
        shape[last] = n;
        let h = h.to_contiguous();
        let hs = f32s(&h);
        let mut y = vec![0.0f32; hs.len() / 2];
        let per = rows_per_task(2 * n);
        y.par_chunks_mut(per * n)
            .zip(hs.par_chunks(per * 2 * n))
            .for_each(|(ys, hs)| {
                simd!({
                    for (y, h) in ys.chunks_mut(n).zip(hs.chunks(2 * n)) {
                        let (a, b) = h.split_at(n);
                        for j in 0..n {
                            y[j] = activation(gate, a[j]) * b[j];
                        }
                    }
                },)
            });
        tensor(y, shape)
    }

    fn fused_glu_backward(
        h: FloatTensor<Self>,
        g: FloatTensor<Self>,
        gate: Gate,
    ) -> FloatTensor<Self> {
        if h.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return composed_glu_backward::<Flex>(h, g, gate);
        }
        let shape = h.shape();
        let n = last_dim(&shape) / 2;
        let (h, g) = (h.to_contiguous(), g.to_contiguous());
        let (hs, gs) = (f32s(&h), f32s(&g));
        let mut dh = vec![0.0f32; hs.len()];
        let per = rows_per_task(2 * n);
        dh.par_chunks_mut(per * 2 * n)
            .zip(hs.par_chunks(per * 2 * n).zip(gs.par_chunks(per * n)))
            .for_each(|(dhs, (hs, gs))| {
                simd!({
                    for ((dh, h), g) in dhs
                        .chunks_mut(2 * n)
                        .zip(hs.chunks(2 * n))
                        .zip(gs.chunks(n))
                    {
                        let (a, b) = h.split_at(n);
                        let (da, db) = dh.split_at_mut(n);
                        for j in 0..n {
                            let (act, slope) = activation_and_slope(gate, a[j]);
                            da[j] = g[j] * b[j] * slope;
                            db[j] = g[j] * act;
                        }
                    }
                },)
            });
        tensor(dh, shape)
    }

    fn fused_dropout(x: FloatTensor<Self>, prob: f64, seed: u64) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return dropout::composed_dropout::<Flex>(x, prob, seed);
        }
        let (drop_below, scale) = (dropout::threshold(prob), (1.0 / (1.0 - prob)) as f32);
        let shape = x.shape();
        let x = x.to_contiguous();
        let xs = f32s(&x);
        let n = xs.len();
        let mut y = Vec::<f32>::with_capacity(n);
        y.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (ys, xs))| {
                simd!(dropout::apply(xs, ys, c * CHUNK, seed, drop_below, scale),)
            });
        // SAFETY: the chunks cover 0..n and `apply` wrote every value of each.
        unsafe { y.set_len(n) };
        tensor(y, shape)
    }
}

/// Two same-shaped f32 outputs of one element-wise function (an activation and what its
/// gradient keeps), in one parallel pass.
fn map_pair(x: FlexTensor, f: impl Fn(f32) -> (f32, f32) + Sync) -> (FlexTensor, FlexTensor) {
    let shape = x.shape();
    let x = x.to_contiguous();
    let xs = f32s(&x);
    let (mut a, mut b) = (vec![0.0f32; xs.len()], vec![0.0f32; xs.len()]);
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks_mut(CHUNK))
        .zip(xs.par_chunks(CHUNK))
        .for_each(|((a, b), xs)| {
            simd!({
                for ((a, b), &x) in a.iter_mut().zip(b.iter_mut()).zip(xs) {
                    (*a, *b) = f(x);
                }
            },)
        });
    (tensor(a, shape.clone()), tensor(b, shape))
}

/// The exact GELU x·Φ(x) or SiLU x·σ(x): BERT's and DNABERT-2's activation, LLaMA's gate.
#[inline(always)]
fn activation(gate: Gate, x: f32) -> f32 {
    match gate {
        Gate::Gelu => x * normal_cdf_and_pdf(x).0,
        Gate::Silu => x * sigmoid(x),
    }
}

/// [`activation`] and its slope: Φ(x) + x·φ(x) for GELU, σ(x)·(1 + x·(1 − σ(x))) for SiLU.
#[inline(always)]
fn activation_and_slope(gate: Gate, x: f32) -> (f32, f32) {
    match gate {
        Gate::Gelu => {
            let (cdf, pdf) = normal_cdf_and_pdf(x);
            (x * cdf, cdf + x * pdf)
        }
        Gate::Silu => {
            let s = sigmoid(x);
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
    }
}

/// Φ(x) and φ(x) of the standard normal, in f32 without branches so the loop vectorizes
/// (flex's `erf` calls libm's `erff` once per element). Φ comes from erfc(|x|/√2) by
/// Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7; 2.1e-7 measured in f32),
/// reflected for x > 0, so the lower tail keeps most of its digits (Φ(−5) within 0.2 %)
/// rather than losing them all to 1 + erf; exp(−x²/2) is shared by both.
#[inline(always)]
fn normal_cdf_and_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let z = x.abs() * core::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let gauss = exp(-0.5 * x * x);
    let tail = 0.5 * poly * gauss; // Φ(−|x|)
    let cdf = if x > 0.0 { 1.0 - tail } else { tail };
    (cdf, FRAC_1_SQRT_2PI as f32 * gauss)
}

/// The heads of packed q | k | v of `shape` [B, T, (H + 2·Hkv)·dh].
fn heads(shape: &Shape, spec: &AttentionSpec) -> Heads {
    let (b, t, w) = (shape[0], shape[1], shape[2]);
    assert_eq!(
        w,
        spec.packed_width(),
        "q | k | v of width {w} do not split into {} + 2·{} heads of {}",
        spec.heads,
        spec.kv_heads,
        spec.head_dim
    );
    Heads {
        b,
        t,
        n_head: spec.heads,
        kv_heads: spec.kv_heads,
        dh: spec.head_dim,
    }
}

/// The kernel on a flex tensor: the context [B, T, H·dh] and, when `keep`, the weights (the
/// composed form for other dtypes).
fn attention(
    qkv: FlexTensor,
    padding: Option<FlexTensor>,
    spec: &AttentionSpec,
    keep: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let bias_dtype = padding.as_ref().map_or(DType::F32, |p| p.dtype());
    if qkv.dtype() != DType::F32 || bias_dtype != DType::F32 {
        let (ctx, weights) = composed_attention::<Flex>(qkv, padding, spec);
        return (ctx, Some(weights));
    }
    let h = heads(&qkv.shape(), spec);
    let qkv = qkv.to_contiguous();
    let padding = padding.map(|p| p.to_contiguous());
    let bias = cpu_attention::Bias {
        padding: padding.as_ref().map(f32s),
        alibi: spec.alibi.as_deref(),
    };
    let (ctx, weights) =
        cpu_attention::forward(f32s(&qkv), bias, h, spec.scale as f32, spec.causal, keep);
    (
        tensor(ctx, Shape::new([h.b, h.t, spec.context_width()])),
        weights.map(|w| tensor(w, Shape::new([h.b, spec.heads, h.t, h.t]))),
    )
}

/// 2·√(2/π)·(x + 0.044715·x³): gelu_new(x) = x·σ(this).
#[inline(always)]
fn gelu_u(x: f32) -> f32 {
    (2.0 * SQRT_2_OVER_PI) as f32 * (x + GELU_CUBIC as f32 * x * x * x)
}

#[inline(always)]
fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + exp(-u))
}

/// One row of layer norm's gradient: the upstream `g` is replaced by dx; gamma's and beta's
/// are added to the sums.
#[inline(always)]
fn layer_norm_backward_row(
    x: &[f32],
    gamma: &[f32],
    g: &mut [f32],
    eps: f32,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let (len, n) = (x.len(), x.len() as f32);
    let mean = sum_of(len, |i| x[i]) / n;
    let var = sum_of(len, |i| (x[i] - mean) * (x[i] - mean)) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..len {
        dgamma[i] += g[i] * (x[i] - mean) * rstd;
        dbeta[i] += g[i];
    }
    // The means of dxhat = g·gamma and of dxhat·xhat.
    let m1 = sum_of(len, |i| g[i] * gamma[i]) / n;
    let m2 = sum_of(len, |i| g[i] * gamma[i] * (x[i] - mean) * rstd) / n;
    for i in 0..len {
        let xhat = (x[i] - mean) * rstd;
        g[i] = rstd * (g[i] * gamma[i] - m1 - xhat * m2);
    }
}

/// 1/sqrt(mean(x²) + eps) of one row.
#[inline(always)]
fn rms_reciprocal(x: &[f32], eps: f32) -> f32 {
    let ms = sum_of(x.len(), |i| x[i] * x[i]) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// The last axis's length.
fn last_dim(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}

/// Rows per parallel task for row kernels: about [`CHUNK`] elements.
fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

/// `x` as one contiguous buffer that the caller may overwrite: its own when nothing else holds
/// it (the usual case for a gradient or fresh scores, so no allocation), else a copy.
fn owned(x: FlexTensor) -> FlexTensor {
    let contiguous = x.to_contiguous();
    drop(x);
    contiguous
}

/// (row, column) strides of a 2-D tensor, in elements; `None` when one is negative.
fn strides_2d(t: &FlexTensor) -> Option<(usize, usize)> {
    let s = t.layout().strides();
    Some((usize::try_from(s[0]).ok()?, usize::try_from(s[1]).ok()?))
}

/// A pointer to a tensor's first element (its view may start inside its buffer).
fn first_f32(t: &FlexTensor) -> *const f32 {
    let all: &[f32] = t.storage();
    // SAFETY: flex keeps the view's start offset inside its buffer.
    unsafe { all.as_ptr().add(t.layout().start_offset()) }
}

/// The f32 values of a contiguous tensor.
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous f32 tensor (checked by the caller)")
}

/// A flex tensor owning `values`.
fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::MASKED;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    fn random(shape: [usize; 3], seed: u64) -> FlexTensor {
        let device = Default::default();
        <Flex as Backend>::seed(&device, seed);
        let t = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        t.into_primitive().tensor()
    }

    fn assert_close(a: FlexTensor, b: FlexTensor, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}: shape");
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        let worst = crate::models::max_abs_diff(&a, &b);
        assert!(worst < 1e-4, "{what}: max |diff| {worst}");
    }

    /// LLaMA's kernels (RMSNorm both ways, rotary, SwiGLU both ways) against the composed forms.
    #[test]
    fn llama_kernels_match_the_composed_forms() {
        let (x, g) = (random([8, 80, 40], 41), random([8, 80, 40], 42));
        let gamma = Flex::float_reshape(random([1, 1, 40], 43), Shape::new([40]));
        assert_close(
            Flex::fused_rms_norm(x.clone(), gamma.clone(), 1e-6),
            composed_rms_norm::<Flex>(x.clone(), gamma.clone(), 1e-6),
            "rms norm",
        );
        let [dx, dgamma] = Flex::fused_rms_norm_backward(x.clone(), gamma.clone(), g.clone(), 1e-6);
        let [cdx, cdgamma] =
            composed_rms_norm_backward::<Flex>(x.clone(), gamma.clone(), g.clone(), 1e-6);
        assert_close(dx, cdx, "rms norm input gradient");
        assert_close(dgamma, cdgamma, "rms norm gamma gradient");
        // [8, 80, 5 heads of 8], the first 3 rotated, positions 0..80.
        let cos = Flex::float_reshape(random([1, 80, 8], 44), Shape::new([80, 8]));
        let sin = Flex::float_reshape(random([1, 80, 8], 45), Shape::new([80, 8]));
        assert_close(
            Flex::fused_rotary(x.clone(), cos.clone(), sin.clone(), 3),
            composed_rotary::<Flex>(x.clone(), cos, sin, 3),
            "rotary",
        );
        assert_close(
            Flex::fused_swiglu(x.clone(), g.clone()),
            composed_swiglu::<Flex>(x.clone(), g.clone()),
            "swiglu",
        );
        let up = random([8, 80, 40], 46);
        let [dg, du] = Flex::fused_swiglu_backward(x.clone(), up.clone(), g.clone());
        let [cdg, cdu] = composed_swiglu_backward::<Flex>(x, up, g);
        assert_close(dg, cdg, "swiglu gate gradient");
        assert_close(du, cdu, "swiglu up gradient");
    }

    /// The gated linear units (GEGLU, SwiGLU on packed halves) match their composed forms,
    /// forward and backward, over rows that span several parallel tasks; the same gradient
    /// as the SwiGLU node on the halves split apart.
    #[test]
    fn glu_kernels_match_the_composed_forms() {
        let h = random([4, 300, 80], 51); // 1,200 rows of 2 · 40
        let g = random([4, 300, 40], 52);
        for gate in [Gate::Gelu, Gate::Silu] {
            assert_close(
                Flex::fused_glu(h.clone(), gate),
                composed_glu::<Flex>(h.clone(), gate),
                &format!("{gate:?} forward"),
            );
            assert_close(
                Flex::fused_glu_backward(h.clone(), g.clone(), gate),
                composed_glu_backward::<Flex>(h.clone(), g.clone(), gate),
                &format!("{gate:?} backward"),
            );
        }
        let t = |x: FlexTensor| {
            Tensor::<Flex, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(x))
        };
        let halves = |x: FlexTensor| {
            let x = t(x);
            (
                x.clone().narrow(2, 0, 40).into_primitive().tensor(),
                x.narrow(2, 40, 40).into_primitive().tensor(),
            )
        };
        let (gate, up) = halves(h.clone());
        assert_close(
            Flex::fused_glu(h.clone(), Gate::Silu),
            Flex::fused_swiglu(gate.clone(), up.clone()),
            "SwiGLU on packed halves",
        );
        let [dgate, dup] = Flex::fused_swiglu_backward(gate, up, g.clone());
        let packed = Tensor::cat(vec![t(dgate), t(dup)], 2)
            .into_primitive()
            .tensor();
        assert_close(
            Flex::fused_glu_backward(h, g, Gate::Silu),
            packed,
            "SwiGLU gradient",
        );
    }

    /// The kernels and the composed forms (what other backends run) agree.
    #[test]
    fn kernels_match_the_composed_forms() {
        // 640 rows of 40: several parallel tasks, so the partial sums of dgamma and dbeta are added.
        let (x, g) = (random([8, 80, 40], 1), random([8, 80, 40], 2));
        let square = Flex::float_reshape(x.clone(), Shape::new([2, 8, 40, 40]));
        let g_square = Flex::float_reshape(g.clone(), Shape::new([2, 8, 40, 40]));
        for causal in [false, true] {
            let y = Flex::fused_softmax(square.clone(), 0.4, causal);
            assert_close(
                y.clone(),
                composed_softmax::<Flex>(square.clone(), 0.4, causal),
                "softmax",
            );
            assert_close(
                Flex::fused_softmax_backward(y.clone(), g_square.clone(), 0.4),
                composed_softmax_backward::<Flex>(y, g_square.clone(), 0.4),
                "softmax gradient",
            );
        }
        // Attention on [3, 70, 3·40] as 5 heads of 8: the kernel's context, weights and
        // gradient against the composed products (what other backends run), over all keys,
        // causal (three blocks of queries, the last one short), and with padding keys (the
        // last 3 of the second sequence).
        let padding: Vec<f32> = (0..3 * 70)
            .map(|i| {
                if i / 70 == 1 && i % 70 >= 67 {
                    MASKED
                } else {
                    0.0
                }
            })
            .collect();
        let padding = tensor(padding, Shape::new([3, 70]));
        // Multi-head (5 heads of 8), grouped-query (4 query heads on 2 key/value heads) and
        // multi-query (4 on 1), each over all keys, causal, with padding, with both, and with
        // symmetric ALiBi.
        for (heads, kv_heads) in [(5, 5), (4, 2), (4, 1)] {
            let base = AttentionSpec {
                kv_heads,
                scale: 0.35,
                ..AttentionSpec::multi_head(heads, heads * 8, false)
            };
            let qkv = random([3, 70, base.packed_width()], 3);
            let g_ctx = random([3, 70, base.context_width()], 4);
            let slopes: std::sync::Arc<[f32]> = (0..heads).map(|h| 0.5 / (h + 1) as f32).collect();
            for (causal, padded, alibi) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, false),
                (false, true, true),
                (true, false, true),
            ] {
                let spec = AttentionSpec {
                    causal,
                    alibi: alibi.then(|| slopes.clone()),
                    ..base.clone()
                };
                let what = format!(
                    "{heads}/{kv_heads} heads, causal {causal}, padded {padded}, alibi {alibi}"
                );
                let padding = padded.then(|| padding.clone());
                let (ctx, weights) =
                    Flex::attention_and_weights(qkv.clone(), padding.clone(), &spec);
                let (want_ctx, want_weights) =
                    composed_attention::<Flex>(qkv.clone(), padding.clone(), &spec);
                assert_close(ctx, want_ctx.clone(), &format!("attention context, {what}"));
                assert_close(
                    weights.clone(),
                    want_weights,
                    &format!("attention weights, {what}"),
                );
                assert_close(
                    Flex::fused_attention(qkv.clone(), padding, &spec),
                    want_ctx,
                    &format!("attention context without weights, {what}"),
                );
                assert_close(
                    Flex::fused_attention_backward(
                        qkv.clone(),
                        weights.clone(),
                        g_ctx.clone(),
                        &spec,
                    ),
                    composed_attention_backward::<Flex>(qkv.clone(), weights, g_ctx.clone(), &spec),
                    &format!("attention gradient, {what}"),
                );
            }
        }
        let x4 = Flex::float_reshape(x.clone(), Shape::new([8, 20, 4, 40]));
        let heads = Flex::swap_heads(x4.clone());
        assert_close(
            heads.clone(),
            Flex::float_swap_dims(x4.clone(), 1, 2),
            "swap_heads",
        );
        assert_close(Flex::swap_heads(heads), x4, "swap_heads twice");
        let (gy, gs) = Flex::gelu_new_and_sigmoid(x.clone());
        let (cy, cs) = composed_gelu_new::<Flex>(x.clone());
        assert_close(gy, cy, "gelu_new");
        assert_close(gs.clone(), cs, "gelu_new sigmoid");
        assert_close(
            Flex::fused_gelu_new_backward(x.clone(), gs.clone(), g.clone()),
            composed_gelu_new_backward::<Flex>(x.clone(), gs, g.clone()),
            "gelu_new gradient",
        );
        let (gy, slope) = Flex::gelu_and_slope(x.clone());
        let (cy, cslope) = composed_gelu::<Flex>(x.clone());
        assert_close(gy, cy.clone(), "gelu");
        assert_close(Flex::fused_gelu(x.clone()), cy, "gelu without its slope");
        assert_close(slope.clone(), cslope.clone(), "gelu slope");
        assert_close(
            Flex::fused_gelu_backward(slope, g.clone()),
            Flex::float_mul(g.clone(), cslope),
            "gelu gradient",
        );
        let device = Default::default();
        let gamma: FlexTensor =
            Tensor::<Flex, 1>::random([40], Distribution::Normal(1.0, 0.5), &device)
                .into_primitive()
                .tensor();
        let fused = Flex::fused_layer_norm_backward(x.clone(), gamma.clone(), g.clone(), 1e-5);
        let composed = composed_layer_norm_backward::<Flex>(x, gamma, g, 1e-5);
        for ((a, b), what) in fused
            .into_iter()
            .zip(composed)
            .zip(["dx", "dgamma", "dbeta"])
        {
            assert_close(a, b, what);
        }
    }

    #[test]
    fn normal_cdf_is_accurate_where_activations_live() {
        // erf by its Maclaurin series in f64: exact to ~1e-11 for |z| <= 4.
        let erf = |z: f64| {
            let (mut term, mut sum) = (z, z);
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let (mut worst_cdf, mut worst_pdf) = (0.0f64, 0.0f64);
        let mut x = -5.5f64;
        while x < 5.5 {
            let (cdf, pdf) = normal_cdf_and_pdf(x as f32);
            let want_cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let want_pdf = (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI;
            worst_cdf = worst_cdf.max((cdf as f64 - want_cdf).abs());
            worst_pdf = worst_pdf.max((pdf as f64 - want_pdf).abs());
            x += 0.00731;
        }
        assert!(worst_cdf < 2.5e-7, "worst |Φ error| {worst_cdf}"); // f32 rounding included
        assert!(worst_pdf < 1e-7, "worst |φ error| {worst_pdf}");
        let (lo, _) = normal_cdf_and_pdf(-5.0);
        assert!(
            (lo as f64 / 2.866_515_7e-7 - 1.0).abs() < 3e-3,
            "Φ(-5) = {lo}"
        );
        assert_eq!(normal_cdf_and_pdf(-100.0), (0.0, 0.0));
        assert_eq!(normal_cdf_and_pdf(100.0).0, 1.0);
    }

    #[test]
    fn exp_is_accurate_across_the_range_training_sees() {
        let mut worst = 0.0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e9), 0.0, "masked scores weigh nothing");
        assert_eq!(exp(0.0), 1.0);
        for x in [-1e9f32, -90.0, -80.0, 0.0, 80.0, 1e9] {
            assert!(exp(x) == 0.0 || exp(x).is_normal(), "exp({x}) = {}", exp(x));
            let s = sigmoid(x);
            assert!(s == 0.0 || s.is_normal(), "sigmoid({x}) = {s}");
        }
    }
}
