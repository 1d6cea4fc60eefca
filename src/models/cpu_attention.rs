//! flex's multi-head attention, forward and backward, straight from the packed q|k|v buffer.
//!
//! One task per (sequence, head): its scores, their softmax and its context are computed with
//! gemm calls on strided views of `qkv` [B, T, 3d] and `ctx` [B, T, d], so no head transposes
//! are copied, and the T×T scores of one head stay in cache between the two products instead
//! of crossing memory as a [B, H, T, T] tensor several times. The backward does the same with
//! the kept attention weights: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = scale·P∘(dP − rowsum(P∘dP)),
//! dQ = dS·K, dK = dSᵀ·Q, written into the q, k and v columns of one [B, T, 3d] gradient.

use rayon::prelude::*;

use super::cpu_kernels::{dot, softmax_row};

/// The shape of one attention call: B sequences of T tokens, H heads of dh values each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub b: usize,
    pub t: usize,
    pub n_head: usize,
    pub dh: usize,
}

impl Heads {
    fn d(&self) -> usize {
        self.n_head * self.dh
    }

    /// Offset of (sequence, head)'s first query value in `qkv`; its keys are `d` further on,
    /// its values `2d`; rows are `3d` apart.
    fn qkv_offset(&self, task: usize) -> usize {
        let (seq, head) = (task / self.n_head, task % self.n_head);
        seq * self.t * 3 * self.d() + head * self.dh
    }

    /// Offset of (sequence, head)'s first value in a [B, T, d] tensor; rows are `d` apart.
    fn ctx_offset(&self, task: usize) -> usize {
        let (seq, head) = (task / self.n_head, task % self.n_head);
        seq * self.t * self.d() + head * self.dh
    }
}

/// Queries per block in causal attention: block i's queries see keys 0..(i+1)·BLOCK only, so
/// the products skip most of the masked upper triangle (37.5 % of them at T = 128).
const BLOCK: usize = 32;

/// (first query, queries, keys they see) of each block of queries: one block of all T
/// queries and keys unless `causal`.
fn query_blocks(t: usize, causal: bool) -> impl Iterator<Item = (usize, usize, usize)> {
    let block = if causal { BLOCK } else { t.max(1) };
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
/// column) strides, on the calling thread (the tasks are the parallelism).
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, add): (*mut f32, usize, bool),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
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
            gemm::Parallelism::None,
        );
    }
}

/// softmax(scale·(q·kᵀ + bias))·v for every (sequence, head): the context [B, T, d] and,
/// when `keep`, the attention weights [B, H, T, T]. Key j is hidden from query i when `causal`
/// and j > i; `bias` [B, T] is added to every query's raw scores of its sequence (padding).
pub(crate) fn forward(
    qkv: &[f32],
    bias: Option<&[f32]>,
    s: Heads,
    scale: f32,
    causal: bool,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (t, d, dh) = (s.t, s.d(), s.dh);
    assert_eq!(qkv.len(), s.b * t * 3 * d, "qkv is [B, T, 3d]");
    assert!(bias.is_none_or(|b| b.len() == s.b * t), "bias is [B, T]");
    let tasks = s.b * s.n_head;
    let mut ctx = vec![0.0f32; s.b * t * d];
    let mut probs = if keep {
        vec![0.0f32; tasks * t * t]
    } else {
        Vec::new()
    };
    let out = Shared(ctx.as_mut_ptr());
    let one = |task: usize, p: &mut [f32]| {
        let q = qkv[s.qkv_offset(task)..].as_ptr();
        let bias = bias.map(|bias| &bias[task / s.n_head * t..][..t]);
        let o = out;
        for (r0, m, n) in query_blocks(t, causal) {
            let rows = &mut p[r0 * t..(r0 + m) * t];
            // SAFETY (both blocks): q, k and v are dh columns of T rows 3d apart inside qkv
            // (checked length); rows holds m×T; the context block is dh columns of T rows d
            // apart inside ctx, and belongs to this task alone.
            unsafe {
                let (queries, keys) = (q.add(r0 * 3 * d), q.add(d));
                product(
                    (m, n, dh),
                    (rows.as_mut_ptr(), t, false),
                    queries,
                    (3 * d, 1),
                    keys,
                    (1, 3 * d),
                );
            }
            for (i, row) in rows.chunks_mut(t).enumerate() {
                if let Some(bias) = bias {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
                softmax_row(row, scale, if causal { r0 + i + 1 } else { t });
            }
            unsafe {
                let dst = o.0.add(s.ctx_offset(task) + r0 * d);
                let v = q.add(2 * d);
                product(
                    (m, dh, n),
                    (dst, d, false),
                    rows.as_ptr(),
                    (t, 1),
                    v,
                    (3 * d, 1),
                );
            }
        }
    };
    if keep {
        probs
            .par_chunks_mut(t * t)
            .enumerate()
            .for_each(|(task, p)| one(task, p));
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(|| vec![0.0f32; t * t], |p, task| one(task, p));
    }
    (ctx, keep.then_some(probs))
}

/// The gradient for `qkv` [B, T, 3d] of [`forward`], from its kept weights `probs`
/// [B, H, T, T] and the context's gradient `g` [B, T, d].
pub(crate) fn backward(
    qkv: &[f32],
    probs: &[f32],
    g: &[f32],
    s: Heads,
    scale: f32,
    causal: bool,
) -> Vec<f32> {
    let (t, d, dh) = (s.t, s.d(), s.dh);
    let tasks = s.b * s.n_head;
    assert_eq!(qkv.len(), s.b * t * 3 * d, "qkv is [B, T, 3d]");
    assert_eq!(probs.len(), tasks * t * t, "weights are [B, H, T, T]");
    assert_eq!(g.len(), s.b * t * d, "the gradient is [B, T, d]");
    let mut dqkv = vec![0.0f32; qkv.len()];
    let out = Shared(dqkv.as_mut_ptr());
    probs.par_chunks(t * t).enumerate().for_each_init(
        || vec![0.0f32; t * t],
        |ds, (task, p)| {
            let o = out;
            // SAFETY (all blocks): as in `forward`; this task's dq, dk and dv columns are its
            // own. Keys and values 0..n get every block's share added (dqkv starts at zero).
            let q = unsafe { qkv.as_ptr().add(s.qkv_offset(task)) };
            let dq = unsafe { o.0.add(s.qkv_offset(task)) };
            for (r0, m, n) in query_blocks(t, causal) {
                let (p, ds) = (&p[r0 * t..(r0 + m) * t], &mut ds[r0 * t..(r0 + m) * t]);
                let go = unsafe { g.as_ptr().add(s.ctx_offset(task) + r0 * d) };
                unsafe {
                    let (v, dv) = (q.add(2 * d), dq.add(2 * d));
                    product(
                        (n, dh, m),
                        (dv, 3 * d, true),
                        p.as_ptr(),
                        (1, t),
                        go,
                        (d, 1),
                    ); // Pᵀ·dO
                    product(
                        (m, n, dh),
                        (ds.as_mut_ptr(), t, false),
                        go,
                        (d, 1),
                        v,
                        (1, 3 * d),
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
                    let (k, dk) = (q.add(d), dq.add(d));
                    let (queries, dqueries) = (q.add(r0 * 3 * d), dq.add(r0 * 3 * d));
                    product(
                        (m, dh, n),
                        (dqueries, 3 * d, false),
                        ds.as_ptr(),
                        (t, 1),
                        k,
                        (3 * d, 1),
                    ); // dS·K
                    product(
                        (n, dh, m),
                        (dk, 3 * d, true),
                        ds.as_ptr(),
                        (1, t),
                        queries,
                        (3 * d, 1),
                    ); // dSᵀ·Q
                }
            }
        },
    );
    dqkv
}
