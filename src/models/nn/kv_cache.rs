//! Generation's KV cache, one for every causal architecture: the keys and values each layer
//! has seen, so a new token attends to them without recomputing them.

use burn::prelude::*;

/// Keys and values [B, Hkv, T, dh] of every layer for the positions a model has seen.
#[derive(Debug, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    /// Positions seen so far: the length of the cached keys.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((keys, _))) => keys.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One slot per layer of a model with `layers` layers (kept when already there).
    pub(crate) fn slots(&mut self, layers: usize) -> &mut [Option<(Tensor<B, 4>, Tensor<B, 4>)>] {
        if self.layers.len() != layers {
            self.layers = vec![None; layers];
        }
        &mut self.layers
    }
}
