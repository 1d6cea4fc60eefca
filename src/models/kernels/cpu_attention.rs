//! flex's multi-head attention, forward and backward, straight from the packed q|k|v buffer.
//!
//! One task per (sequence, head): its scores, their softmax and its context are computed with
//! gemm calls on strided views of `qkv` [B, T, (H + 2·Hkv)·dh] and `ctx` [B, T, H·dh]; a
//! key/value head serves its group of query heads in place (grouped-query attention copies
//! nothing), so no head transposes
//! are copied, and the T×T scores of one head stay in cache between the two products instead
//! of crossing memory as a [B, H, T, T] tensor several times. The backward does the same with
//! the kept attention weights: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = scale·P∘(dP − rowsum(P∘dP)),
//! dQ = dS·K, dK = dSᵀ·Q, written into the q, k and v columns of one gradient like `qkv`.
//! Without kept weights (inference) a task's scores are one block of queries at a time, so a
//! long sequence needs [`QUERY_ROWS`]·T scores per thread, never T×T per head.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::rows::{dot, simd, softmax_row};

/// The shape of one attention call: B sequences of T tokens, H query heads and Hkv key/value
/// heads of dh values each, packed per token as q | k | v ((H + 2·Hkv)·dh columns).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub b: usize,
    pub t: usize,
    pub n_head: usize,
    pub kv_heads: usize,
    pub dh: usize,
}

impl Heads {
    /// Width of the context rows: H·dh.
    fn d(&self) -> usize {
        self.n_head * self.dh
    }

    /// Width of the packed q | k | v rows.
    fn w(&self) -> usize {
        (self.n_head + 2 * self.kv_heads) * self.dh
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.n_head / self.kv_heads
    }

    /// Offset in `qkv` of (sequence, query head)'s first query value.
    fn q_offset(&self, task: usize) -> usize {
        let (seq, head) = (task / self.n_head, task % self.n_head);
        seq * self.t * self.w() + head * self.dh
    }

    /// Offsets in `qkv` of the first key and first value of the key/value head that serves
    /// (sequence, query head) `task`.
    fn kv_offsets(&self, task: usize) -> (usize, usize) {
        let (seq, head) = (task / self.n_head, task % self.n_head);
        let kv = head / self.group();
        let row = seq * self.t * self.w();
        let k = row + (self.n_head + kv) * self.dh;
        (k, k + self.kv_heads * self.dh)
    }

    /// Offset of (sequence, head)'s first value in a [B, T, H·dh] tensor; rows are `d` apart.
    fn ctx_offset(&self, task: usize) -> usize {
        let (seq, head) = (task / self.n_head, task % self.n_head);
        seq * self.t * self.d() + head * self.dh
    }
}

/// What is added to a head's scaled scores besides the causal mask: padding [B, T] of the
/// sequence and ALiBi's −slope·|i − j|, both after the scale.
#[derive(Clone, Copy)]
pub(crate) struct Bias<'a> {
    pub padding: Option<&'a [f32]>,
    pub alibi: Option<&'a [f32]>,
}

impl Bias<'_> {
    /// Add the bias of (sequence, head) `task`'s query `i` to its row of raw scores, divided by
    /// `scale` because [`softmax_row`] scales the row afterwards.
    fn add(&self, row: &mut [f32], s: &Heads, task: usize, i: usize, scale: f32) {
        if let Some(padding) = self.padding {
            let seq = task / s.n_head;
            let padding = &padding[seq * s.t..][..s.t];
            row.iter_mut()
                .zip(padding)
                .for_each(|(v, b)| *v += b / scale);
        }
        if let Some(slopes) = self.alibi {
            let slope = slopes[task % s.n_head] / scale;
            for (j, v) in row.iter_mut().enumerate() {
                *v -= slope * (i as f32 - j as f32).abs();
            }
        }
    }
}

/// Queries per block in causal attention: block i's queries see keys 0..(i+1)·BLOCK only, so
/// the products skip most of the masked upper triangle (37.5 % of them at T = 128).
const BLOCK: usize = 32;

/// Queries per block of a non-causal attention that keeps no weights: its scores are this
/// many rows at a time (a 10 kb sequence's T×T scores would be 400 MB per head and thread).
const QUERY_ROWS: usize = 256;

/// (first query, queries, keys they see) of each block of queries: blocks of [`BLOCK`] when
/// `causal`, else of `rows` queries, each seeing every key.
fn query_blocks(
    t: usize,
    causal: bool,
    rows: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let block = if causal {
        BLOCK
    } else {
        rows.clamp(1, t.max(1))
    };
    (0..t).step_by(block).map(move |r0| {
        let m = block.min(t - r0);
        (r0, m, if causal { r0 + m } else { t })
    })
}

/// A pointer that tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own (sequence, head) columns, which no other task touches.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// dst[m×n] = lhs[m×k]·rhs[k×n] (`dst +=` when `add`), each given by its pointer and (row,
/// column) strides, on the calling thread (the attention tasks are the parallelism).
unsafe fn product(
    mnk: (usize, usize, usize),
    dst: (*mut f32, usize, bool),
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
) {
    // SAFETY: as the caller's.
    unsafe {
        gemm_product(
            mnk,
            dst,
            (lhs, lhs_strides),
            (rhs, rhs_strides),
            gemm::Parallelism::None,
        )
    }
}

/// [`product`] with gemm's own `parallelism`: the one call into gemm the CPU kernels make
/// (attention's per-head products, dense layers' `FusedOps::fused_matmul`).
pub(super) unsafe fn gemm_product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, add): (*mut f32, usize, bool),
    (lhs, (lhs_rs, lhs_cs)): (*const f32, (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (*const f32, (usize, usize)),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's pointers and strides stay inside their buffers.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            add,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// softmax(scale·q·kᵀ + bias)·v for every (sequence, query head): the context [B, T, H·dh]
/// and, when `keep`, the attention weights [B, H, T, T]. Key j is hidden from query i when
/// `causal` and j > i; `bias` adds padding and ALiBi after the scale.
pub(crate) fn forward(
    qkv: &[f32],
    bias: Bias,
    s: Heads,
    scale: f32,
    causal: bool,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    forward_blocks(qkv, bias, s, scale, causal, keep, QUERY_ROWS)
}

/// [`forward`], without kept weights reading `query_rows` queries at a time (when not causal).
fn forward_blocks(
    qkv: &[f32],
    bias: Bias,
    s: Heads,
    scale: f32,
    causal: bool,
    keep: bool,
    query_rows: usize,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (t, d, w, dh) = (s.t, s.d(), s.w(), s.dh);
    assert_eq!(qkv.len(), s.b * t * w, "qkv is [B, T, (H + 2·Hkv)·dh]");
    assert!(
        bias.padding.is_none_or(|b| b.len() == s.b * t),
        "padding is [B, T]"
    );
    assert!(
        bias.alibi.is_none_or(|a| a.len() == s.n_head),
        "one ALiBi slope per head"
    );
    let tasks = s.b * s.n_head;
    let mut ctx = vec![0.0f32; s.b * t * d];
    // Kept weights are written whole below (each row's scores, then zeros where the causal
    // blocks skip keys), so they are not zeroed first: 33 MB a layer at B 16, H 8, T 256.
    let mut probs: Vec<f32> = Vec::with_capacity(if keep { tasks * t * t } else { 0 });
    // Kept weights are every query's row; else a block's rows, reused block after block.
    let rows_per_block = if keep { t } else { query_rows };
    let scratch = if causal { BLOCK } else { rows_per_block }.clamp(1, t.max(1)) * t;
    let out = Shared(ctx.as_mut_ptr());
    // The body is inside `simd!`, so it is compiled into each vector version (a closure
    // called from inside them would stay a baseline SSE2 function).
    let one = |task: usize, p: &mut [MaybeUninit<f32>]| {
        simd!({
            let q = qkv[s.q_offset(task)..].as_ptr();
            let (k_at, v_at) = s.kv_offsets(task);
            let o = out;
            for (r0, m, n) in query_blocks(t, causal, rows_per_block) {
                let rows = match keep {
                    true => &mut p[r0 * t..(r0 + m) * t],
                    false => &mut p[..m * t],
                };
                // SAFETY (both blocks): q, k and v are dh columns of T rows w apart inside qkv
                // (checked length); rows holds m×T; the context block is dh columns of T rows d
                // apart inside ctx, and belongs to this task alone. gemm writes the m×n scores
                // without reading them.
                unsafe {
                    let (queries, keys) = (q.add(r0 * w), qkv.as_ptr().add(k_at));
                    product(
                        (m, n, dh),
                        (rows.as_mut_ptr().cast(), t, false),
                        queries,
                        (w, 1),
                        keys,
                        (1, w),
                    );
                }
                for (i, row) in rows.chunks_mut(t).enumerate() {
                    let (scores, skipped) = row.split_at_mut(n);
                    skipped.fill(MaybeUninit::new(0.0));
                    // SAFETY: the product above wrote all n scores of the row.
                    let scores = unsafe { &mut *(scores as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    bias.add(scores, &s, task, r0 + i, scale);
                    softmax_row(scores, scale, if causal { r0 + i + 1 } else { t });
                }
                unsafe {
                    let dst = o.0.add(s.ctx_offset(task) + r0 * d);
                    let v = qkv.as_ptr().add(v_at);
                    product(
                        (m, dh, n),
                        (dst, d, false),
                        rows.as_ptr().cast(),
                        (t, 1),
                        v,
                        (w, 1),
                    );
                }
            }
        },)
    };
    if keep {
        probs.spare_capacity_mut()[..tasks * t * t]
            .par_chunks_mut(t * t)
            .enumerate()
            .for_each(|(task, p)| one(task, p));
        // SAFETY: every task wrote every value of its T×T weights (scores, then zeros).
        unsafe { probs.set_len(tasks * t * t) };
    } else {
        (0..tasks).into_par_iter().for_each_init(
            || vec![MaybeUninit::new(0.0f32); scratch],
            |p, task| one(task, p),
        );
    }
    (ctx, keep.then_some(probs))
}

/// The gradient for `qkv` of [`forward`], from its kept weights `probs` [B, H, T, T] and the
/// context's gradient `g` [B, T, H·dh]. One task per (sequence, key/value head): the query
/// heads of its group run in turn, adding their shares to the shared dK and dV.
pub(crate) fn backward(
    qkv: &[f32],
    probs: &[f32],
    g: &[f32],
    s: Heads,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let (t, d, w, dh) = (s.t, s.d(), s.w(), s.dh);
    let group = s.group();
    assert_eq!(qkv.len(), s.b * t * w, "qkv is [B, T, (H + 2·Hkv)·dh]");
    assert_eq!(
        probs.len(),
        s.b * s.n_head * t * t,
        "weights are [B, H, T, T]"
    );
    assert_eq!(g.len(), s.b * t * d, "the gradient is [B, T, H·dh]");
    let mut dqkv = vec![0.0f32; qkv.len()];
    let out = Shared(dqkv.as_mut_ptr());
    (0..s.b * s.kv_heads).into_par_iter().for_each_init(
        || vec![0.0f32; t * t],
        |ds, kv_task| {
            simd!({
                let o = out;
                let (seq, kv) = (kv_task / s.kv_heads, kv_task % s.kv_heads);
                for head in kv * group..(kv + 1) * group {
                    let task = seq * s.n_head + head;
                    let p = &probs[task * t * t..][..t * t];
                    let (k_at, v_at) = s.kv_offsets(task);
                    // SAFETY (all blocks): as in `forward`; this task's dq columns and its key/value
                    // head's dk and dv columns are its own (one task per key/value head, its query
                    // heads in turn). Keys and values 0..n get every block's share added (dqkv
                    // starts at zero).
                    let q = unsafe { qkv.as_ptr().add(s.q_offset(task)) };
                    let dq = unsafe { o.0.add(s.q_offset(task)) };
                    let (k, dk) = unsafe { (qkv.as_ptr().add(k_at), o.0.add(k_at)) };
                    let (v, dv) = unsafe { (qkv.as_ptr().add(v_at), o.0.add(v_at)) };
                    for (r0, m, n) in query_blocks(t, causal, t) {
                        let (p, ds) = (&p[r0 * t..(r0 + m) * t], &mut ds[r0 * t..(r0 + m) * t]);
                        let go = unsafe { g.as_ptr().add(s.ctx_offset(task) + r0 * d) };
                        unsafe {
                            product((n, dh, m), (dv, w, true), p.as_ptr(), (1, t), go, (d, 1)); // Pᵀ·dO
                            product(
                                (m, n, dh),
                                (ds.as_mut_ptr(), t, false),
                                go,
                                (d, 1),
                                v,
                                (1, w),
                            ); // dO·Vᵀ
                        }
                        for (dp, p) in ds.chunks_mut(t).zip(p.chunks(t)) {
                            let (dp, p) = (&mut dp[..n], &p[..n]);
                            let rowsum = dot(p, dp);
                            for (dp, p) in dp.iter_mut().zip(p) {
                                *dp = scale * p * (*dp - rowsum);
                            }
                        }
                        unsafe {
                            let (queries, dqueries) = (q.add(r0 * w), dq.add(r0 * w));
                            product(
                                (m, dh, n),
                                (dqueries, w, false),
                                ds.as_ptr(),
                                (t, 1),
                                k,
                                (w, 1),
                            ); // dS·K
                            product(
                                (n, dh, m),
                                (dk, w, true),
                                ds.as_ptr(),
                                (1, t),
                                queries,
                                (w, 1),
                            ); // dSᵀ·Q
                        }
                    }
                }
            },)
        },
    );
    dqkv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the queries a block at a time (inference's bounded scratch) gives the context
    /// of the whole T×T scores at once, with padding, causal or not.
    #[test]
    fn query_blocks_give_the_whole_scores_context() {
        let s = Heads {
            b: 2,
            t: 45,
            n_head: 4,
            kv_heads: 2,
            dh: 8,
        };
        let qkv: Vec<f32> = (0..s.b * s.t * s.w())
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut padding = vec![0.0f32; s.b * s.t];
        padding[s.t + 40..].iter_mut().for_each(|p| *p = -1e9);
        let bias = Bias {
            padding: Some(&padding),
            alibi: None,
        };
        for causal in [false, true] {
            let (whole, kept) = forward_blocks(&qkv, bias, s, 0.35, causal, true, s.t);
            assert!(kept.is_some());
            for rows in [1, 7, 45, 300] {
                let (blocks, none) = forward_blocks(&qkv, bias, s, 0.35, causal, false, rows);
                assert!(none.is_none());
                let worst = whole
                    .iter()
                    .zip(&blocks)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-6, "causal {causal}, {rows} rows: {worst}");
            }
        }
    }
}
