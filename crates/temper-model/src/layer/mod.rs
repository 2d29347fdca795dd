//! One decoder layer (pre-norm attention + pre-norm gated MLP): the forward, written once for
//! training and for generation, and its backward. Every model family's variations live here.
//!
//! forward:
//!   xn1 = rmsnorm(x, w1);  q, k, v = xn1 Wq^T, xn1 Wk^T, xn1 Wv^T (+ bias, + LoRA)
//!   (Phi-3) q, k, v = the column blocks of one xn1 Wqkv^T
//!   (Qwen3, Gemma 3) q, k = rmsnorm(q, wq), rmsnorm(k, wk) over each head's D values
//!   q, k = rope(q), rope(k) (over the first rope_dims of each head; Gemma 3's local layers
//!   with their own base);  q *= attn_scale * sqrt(D) when the scale is not 1/sqrt(D)
//!   att = attention(q, k, v) (within the layer's sliding window, scores soft-capped for
//!   Gemma 2);  a = att Wo^T;  (Gemma 2/3) a = rmsnorm(a, wa);  x2 = x + a
//!   xn2 = rmsnorm(x2, w2);  g, u = xn2 Wg^T, xn2 Wu^T (Phi-3: the halves of xn2 Wgu^T)
//!   h = act(g) * u (silu, or gelu-tanh for Gemma);  m = h Wd^T
//!   (Gemma 2/3) m = rmsnorm(m, wm);  out = x2 + m
//! backward walks the same lines bottom-up.
//!
//! The attention is the only step that differs between training and generation
//! ([`Attention`]): varlen attention over packed sequences, or the new tokens' keys and values
//! appended to a KV cache and attended against it. Training keeps the activations for the
//! backward ([`Keep::Activations`]); generation and evaluation keep nothing.
//!
//! files: `acts.rs` what the backward reads, `attention.rs` the two attention modes,
//! `columns.rs` the column blocks of fused projections, `forward.rs`, `backward.rs`.

mod acts;
mod attention;
mod backward;
mod columns;
mod forward;

use temper_core::Backend;

pub use acts::{LayerActs, QkNormActs};
pub use attention::Attention;
pub use forward::Keep;

use crate::batch::StepCtx;
use crate::config::ModelConfig;
use crate::linear::LoraRef;
use crate::lora::{LoraParams, Target};
use crate::rope_tables::RopeTables;
use crate::weights::LayerWeights;

/// Layer `index` of a model, over N tokens at `positions`: what its forward and backward read
/// besides activations and adapters.
pub struct DecoderLayer<'m, B: Backend> {
    pub be: &'m B,
    pub cfg: &'m ModelConfig,
    pub index: usize,
    pub weights: &'m LayerWeights<B>,
    /// The RoPE tables for this layer and these positions (Gemma 3's local ones on its
    /// sliding-window layers, LongRoPE's long ones past the pretrained context).
    pub rope: &'m RopeTables<B>,
    pub positions: &'m [u32], // (N)
}

impl<B: Backend> DecoderLayer<'_, B> {
    /// N, the tokens this layer runs on.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }

    /// The adapter of linear `t` for a forward: dropout only when training, with the mask
    /// seed of this step, layer and target (a recompute draws the same masks).
    fn lora_ref<'a>(
        &self,
        lora: Option<&'a LoraParams<B>>,
        t: Target,
        ctx: &StepCtx,
    ) -> Option<LoraRef<'a, B>> {
        let lora = lora?;
        let (a, b) = lora.get(self.index, t)?;
        Some(LoraRef {
            a,
            b,
            scale: lora.config.scale(),
            dropout: if ctx.training {
                lora.config.dropout
            } else {
                0.0
            },
            seed: ctx.dropout_seed(self.index, t),
        })
    }

    /// The factor q is multiplied by after RoPE so that the attention ops' 1/sqrt(D) gives
    /// the model's own score scale (Gemma 2/3's query_pre_attn_scalar^-0.5).
    fn q_multiplier(&self) -> f32 {
        let m = self.cfg.attn_scale * (self.cfg.head_dim as f64).sqrt();
        if (m - 1.0).abs() < 1e-12 {
            1.0
        } else {
            m as f32
        }
    }
}
