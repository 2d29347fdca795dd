//! The keys and values of one sequence, per layer, kept between generation steps.

use temper_core::Backend;

use crate::config::ModelConfig;
use crate::error::Result;

/// Per layer, the rotated keys and the values of positions 0..len, token-major so that a
/// new token's rows are appended with one copy. Memory: 2 * layers * capacity * Hkv*D
/// elements, allocated up front.
pub struct KvCache<B: Backend> {
    /// [layer] (capacity, Hkv*D), keys after RoPE
    pub(crate) k: Vec<B::Buf>,
    /// [layer] (capacity, Hkv*D)
    pub(crate) v: Vec<B::Buf>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for up to `capacity` positions.
    pub fn new(be: &B, cfg: &ModelConfig, capacity: usize) -> Result<Self> {
        let row = cfg.kv_dim();
        let mut k = Vec::with_capacity(cfg.layers);
        let mut v = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            k.push(be.act_zeros(capacity * row)?);
            v.push(be.act_zeros(capacity * row)?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Positions cached so far; the next token sits at this position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (the buffers are kept and overwritten).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Marks `n` more positions as filled, once every layer has written them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
