//! Row math the CPU kernels share: a vectorizable `exp`, sums in lanes, the softmax of one
//! row of attention scores, and [`simd!`], which runs a kernel's loop with the machine's vector
//! instructions.

/// `simd!(body)`: run `body` compiled for the widest vector instructions this CPU has
/// (AVX-512 with the `avx512` feature, else AVX2 + FMA; the baseline SSE2 where neither is
/// present), chosen at run time. The release binary targets baseline x86-64, so without it
/// every kernel's loop is 4 lanes wide and a u32 product (dropout's hash) has no vector
/// instruction at all. `body` becomes an `#[inline(always)]` closure: a plain closure is
/// compiled once, as its own baseline function that each version calls, so the versions ran
/// no vector code (a profile showed attention's softmax in SSE2 registers). Results are the
/// same bits on every version: Rust never fuses a product and a sum on its own, and the sums
/// run in [`LANES`] fixed partial sums whatever the vector width.
macro_rules! simd {
    ($body:expr $(,)?) => {
        $crate::models::kernels::rows::multiversioned(
            #[inline(always)]
            || $body,
        )
    };
}
pub(crate) use simd;

/// [`simd!`]'s versions: `f()` compiled once per target, picked at run time.
#[cfg_attr(
    feature = "avx512",
    multiversion::multiversion(targets(
        "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2+fma",
        "x86_64+avx2+fma"
    ))
)]
#[cfg_attr(
    not(feature = "avx512"),
    multiversion::multiversion(targets("x86_64+avx2+fma"))
)]
pub(crate) fn multiversioned<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// softmax(scale·row) in place over the first `seen` entries (scale > 0); the rest become 0.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32], scale: f32, seen: usize) {
    let (live, hidden) = row.split_at_mut(seen);
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    for v in live.iter_mut() {
        *v = exp(*v * scale - max);
    }
    let inv = 1.0 / sum(live);
    live.iter_mut().for_each(|v| *v *= inv);
    hidden.fill(0.0);
}

/// Lanes of the vectorizable sums: f32 addition does not reassociate on its own, so a plain
/// `.sum()` stays one scalar chain.
const LANES: usize = 16;

/// Σ term(i) for i < n, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_of(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let body = n / LANES * LANES;
    for start in (0..body).step_by(LANES) {
        for (lane, acc) in acc.iter_mut().enumerate() {
            *acc += term(start + lane);
        }
    }
    acc.iter().sum::<f32>() + (body..n).map(term).sum::<f32>()
}

/// Σ a·b over two equal-length rows.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_of(a.len(), |i| a[i] * b[i])
}

/// Σ a.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    sum_of(a.len(), |i| a[i])
}

/// e^x in straight-line f32 arithmetic, so loops over it vectorize: x = n·ln2 + r with
/// |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 3e-7), 2^n built in
/// the exponent bits. Below -80 it gives exactly 0 and above 80 it saturates at e^80, so
/// neither a softmax (divided by at most a row's length) nor a sigmoid ever produces a
/// subnormal: the next matrix product would run many times slower on them.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let flush = x < -80.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-80.0, 80.0);
    let rounded = x * core::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n sits in the low mantissa bits of `rounded` (1.5·2^23 + n, |n| ≤ 116): taking it from
    // there, not with `n as i32` (a saturating conversion that does not vectorize), keeps the
    // loop in vector registers. Adding 127 − 2^22 (the bias, less the 1.5·2^23's mantissa
    // half) gives the exponent field.
    let bits = rounded.to_bits().wrapping_add(127u32.wrapping_sub(1 << 22)) << 23;
    let e = p * f32::from_bits(bits);
    if flush { 0.0 } else { e }
}
