//! RoPE cos/sin tables uploaded once per model, read by every layer's forward and backward.

use temper_core::rope::{self, RopeScaling};
use temper_core::Backend;

use crate::config::ModelConfig;
use crate::error::Result;

/// RoPE cos and sin tables, (P, R/2) for positions 0..P and R rotated dims per head.
pub struct RopeTables<B: Backend> {
    pub cos: B::Buf,
    pub sin: B::Buf,
}

impl<B: Backend> RopeTables<B> {
    pub(crate) fn new(
        be: &B,
        cfg: &ModelConfig,
        theta: f64,
        scaling: Option<&RopeScaling>,
        select: usize,
    ) -> Result<Self> {
        let positions = cfg.max_positions.max(1);
        let inv_freq = rope::inv_freq(cfg.rope_dims, theta, scaling, select);
        let attention_factor = scaling.map_or(1.0, |s| s.attention_factor());
        let (cos, sin) = rope::scaled_tables(&inv_freq, positions, attention_factor);
        Ok(RopeTables {
            cos: be.upload(&cos)?,
            sin: be.upload(&sin)?,
        })
    }
}
