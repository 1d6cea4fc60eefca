//! Dropout whose mask is a pure function of a seed and each element's index.
//!
//! burn's `Dropout` draws an f32 Bernoulli mask element by element through ChaCha20 and keeps
//! it for the backward: in LoRA fine-tuning, where every adapted layer drops its input, that
//! sampling was a quarter of the CPU step. Here element i of a call is kept when a
//! counter-based hash of (seed, i) clears the drop probability, so the flex kernel draws the
//! mask in the same vectorized pass that applies it, and the backward draws it again from the
//! seed instead of keeping it. Each call takes its seed from the calling thread's stream,
//! which the training loop starts from the run's seed, the step and the rank
//! ([`seed_dropout`]): a step's masks depend on those alone, also when ranks run as threads
//! of one process.

use std::cell::Cell;
use std::mem::MaybeUninit;

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, TensorMetadata};

use super::FusedOps;

thread_local! {
    /// This thread's dropout stream: its seed and how many masks it has drawn since.
    static STREAM: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Start this thread's dropout stream: the masks drawn after it follow from `seed` and their
/// order alone. The training loop calls it once per step and rank.
pub fn seed_dropout(seed: u64) {
    STREAM.set((seed, 0));
}

/// The seed of the next mask on this thread.
fn next_seed() -> u64 {
    let (seed, n) = STREAM.get();
    STREAM.set((seed, n + 1));
    splitmix64(seed ^ splitmix64(n))
}

/// Inverted dropout as `burn::nn::Dropout` applies it (an identity at inference, where the
/// backend tracks no gradients, and when `prob` is 0): each element zeroed with probability
/// `prob`, the rest scaled by 1/(1 − prob). One autodiff node whose gradient redraws the mask.
pub fn dropout<B: FusedOps, const D: usize>(
    layer: &burn::nn::Dropout,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if layer.prob == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let y = B::fused_dropout(x.into_primitive().tensor(), layer.prob, next_seed());
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(y))
}

/// SplitMix64's finalizer: a bijection of u64 with full avalanche.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The mask's draw for element `i` under `seed`: two rounds of MurmurHash3's 32-bit
/// finalizer keyed by the seed's halves, in u32 arithmetic so a loop over `i` vectorizes.
#[inline(always)]
pub(crate) fn draw(seed: u64, i: u32) -> u32 {
    #[inline(always)]
    fn fmix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85EB_CA6B);
        h ^= h >> 13;
        h = h.wrapping_mul(0xC2B2_AE35);
        h ^ (h >> 16)
    }
    let h = fmix32(i.wrapping_mul(0x9E37_79B9) ^ seed as u32);
    fmix32(h ^ (seed >> 32) as u32)
}

/// Draws below this are dropped: `prob` of the 2³² draws.
pub(crate) fn threshold(prob: f64) -> u64 {
    (prob.clamp(0.0, 1.0) * 4_294_967_296.0) as u64
}

/// Write `values` with the mask of `seed` applied into `out` (as long), where `values[0]` is
/// element `start` of the tensor: dropped elements become 0, kept ones are scaled by `scale`.
/// One pass into a fresh buffer: an input another node still holds (LoRA's x, shared with the
/// frozen product) would otherwise be copied first and then masked in place.
#[inline(always)]
pub(crate) fn apply(
    values: &[f32],
    out: &mut [MaybeUninit<f32>],
    start: usize,
    seed: u64,
    drop_below: u64,
    scale: f32,
) {
    for (k, (v, o)) in values.iter().zip(out).enumerate() {
        let keep = draw(seed, (start + k) as u32) as u64 >= drop_below;
        o.write(if keep { *v * scale } else { 0.0 });
    }
}

/// Dropout from burn's own ops (the GPU backends): the backend's generator, seeded with
/// `seed` so that the backward, called with the same seed, draws the same mask.
pub(crate) fn composed_dropout<B: Backend>(
    x: FloatTensor<B>,
    prob: f64,
    seed: u64,
) -> FloatTensor<B> {
    let device = B::float_device(&x);
    B::seed(&device, seed);
    let dtype = x.dtype().into();
    let mask = B::float_random(
        x.shape(),
        Distribution::Bernoulli(1.0 - prob),
        &device,
        dtype,
    );
    B::float_mul(x, B::float_mul_scalar(mask, (1.0 / (1.0 - prob)).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::Flex;

    type AB = Autodiff<Flex>;

    /// About `prob` of the elements are dropped, the rest scaled by 1/(1 − prob); the same
    /// seed gives the same mask, the next call another.
    #[test]
    fn drops_about_prob_and_scales_the_rest() {
        let device = Default::default();
        let x = Tensor::<AB, 2>::ones([256, 1000], &device);
        let layer = burn::nn::DropoutConfig::new(0.1).init();
        seed_dropout(7);
        let a = dropout(&layer, x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = dropout(&layer, x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        seed_dropout(7);
        let again = dropout(&layer, x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, again, "the same stream draws the same mask");
        assert_ne!(a, b, "the next call draws another");
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.1).abs() < 0.003, "dropped {dropped}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.9).abs() < 1e-6));
        // Masks of neighbouring calls are independent: they agree as often as chance says.
        let both = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| **x == 0.0 && **y == 0.0)
            .count() as f64;
        assert!((both / a.len() as f64 - 0.01).abs() < 0.002, "{both}");
    }

    /// The gradient is the upstream gradient through the forward's own mask.
    #[test]
    fn the_gradient_passes_through_the_forwards_mask() {
        let device = Default::default();
        let x = Tensor::<AB, 2>::random([64, 300], Distribution::Default, &device).require_grad();
        let layer = burn::nn::DropoutConfig::new(0.3).init();
        seed_dropout(1);
        let y = dropout(&layer, x.clone());
        let weights = Tensor::<AB, 2>::random([64, 300], Distribution::Default, &device);
        let grads = (y.clone() * weights.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let (y, x) = (
            y.into_data().to_vec::<f32>().unwrap(),
            x.into_data().to_vec::<f32>().unwrap(),
        );
        let w = weights.into_data().to_vec::<f32>().unwrap();
        for i in 0..y.len() {
            let kept = y[i] != 0.0 || x[i] == 0.0;
            let want = if kept { w[i] / 0.7 } else { 0.0 };
            assert!((dx[i] - want).abs() < 1e-5, "{i}: {} vs {want}", dx[i]);
        }
    }

    /// Without gradients (inference) and at probability 0 dropout is the identity.
    #[test]
    fn inference_and_zero_probability_pass_through() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([8, 8], &device);
        let layer = burn::nn::DropoutConfig::new(0.5).init();
        assert_eq!(dropout(&layer, x.clone()).into_data(), x.into_data());
        let x = Tensor::<AB, 2>::ones([8, 8], &device);
        let none = burn::nn::DropoutConfig::new(0.0).init();
        assert_eq!(dropout(&none, x.clone()).into_data(), x.into_data());
    }

    /// The composed form (what the GPU backends run) draws the same mask for the same seed,
    /// so its backward, called with the forward's seed, drops what the forward dropped.
    #[test]
    fn the_composed_form_redraws_its_mask_from_the_seed() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([128, 500], &device);
        let draw = |seed| {
            let y = composed_dropout::<Flex>(x.clone().into_primitive().tensor(), 0.3, seed);
            Tensor::<Flex, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (a, again, other) = (draw(5), draw(5), draw(6));
        assert_eq!(a, again);
        assert_ne!(a, other);
        let dropped = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped {dropped}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 1.0 / 0.7).abs() < 1e-5));
    }

    /// The draws are uniform over u32: each of 16 buckets of the top bits holds its share.
    #[test]
    fn draws_are_uniform() {
        let mut buckets = [0usize; 16];
        for i in 0..160_000u32 {
            buckets[(draw(0xDEAD_BEEF_1234, i) >> 28) as usize] += 1;
        }
        for b in buckets {
            assert!((b as f64 - 10_000.0).abs() < 400.0, "{buckets:?}");
        }
    }
}
