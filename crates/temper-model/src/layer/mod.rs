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
//! `columns.rs` the column blocks of fused projections, `mlp.rs` the MLP half over a block
//! of rows (whole, or in tiles for long sequences), `forward.rs`, `backward.rs`.

mod acts;
mod attention;
mod backward;
mod columns;
mod forward;
mod mlp;

use temper_core::Backend;

pub use acts::{LayerActs, QkNormActs};
pub use attention::Attention;
pub use forward::Keep;
pub use mlp::{tile_rows, tiles, MlpActs, Rows, MLP_TILE_TOKENS};

use crate::batch::StepCtx;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{LoraMut, LoraRef, LoraSaved};
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
    /// Sequences longer than this run the MLP in tiles of at most this many tokens and keep
    /// none of it for the backward, which rebuilds it tile by tile ([`MLP_TILE_TOKENS`] when
    /// the layer is recomputed anyway; `usize::MAX` keeps the whole MLP).
    pub mlp_tile_tokens: usize,
}

impl<B: Backend> DecoderLayer<'_, B> {
    /// N, the tokens this layer runs on.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }

    /// The adapter of linear `t` for a forward over the block of rows `tile` (0 for the
    /// whole sequence): dropout only when training, with the mask seed of this step, layer,
    /// target and block (a recompute draws the same masks).
    fn lora_ref<'a>(
        &self,
        lora: Option<&'a LoraParams<B>>,
        t: Target,
        ctx: &StepCtx,
        tile: usize,
    ) -> Option<LoraRef<'a, B>> {
        let lora = lora?;
        let (a, b) = lora.get(self.index, t)?;
        Some(LoraRef {
            a,
            b,
            scale: lora.config.scale(),
            dropout: self.dropout(lora, ctx),
            seed: self.dropout_seed(ctx, t, tile),
        })
    }

    /// The LoRA dropout probability: the adapter's while training, none otherwise.
    fn dropout(&self, lora: &LoraParams<B>, ctx: &StepCtx) -> f32 {
        if ctx.training {
            lora.config.dropout
        } else {
            0.0
        }
    }

    /// The dropout seed of linear `t` on the block of rows `tile`: the step's seed for this
    /// layer and target on tile 0 (the whole sequence), a distinct one on every other tile.
    fn dropout_seed(&self, ctx: &StepCtx, t: Target, tile: usize) -> u64 {
        let seed = ctx.dropout_seed(self.index, t);
        if tile == 0 {
            seed
        } else {
            StepCtx { seed, ..*ctx }.dropout_seed(tile, t)
        }
    }

    /// The backward of linear `t` over the block of rows `rows`: dx (R, in) written, or
    /// accumulated into when `accumulate`, and the target's LoRA gradients added into `lora`,
    /// its values kept by the forward taken out of `saved`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        t: Target,
        saved: &mut [Option<LoraSaved<B>>],
        lora: &mut LoraParams<B>,
        ctx: &StepCtx,
        rows: Rows,
        dx: Option<&mut B::Buf>,
        accumulate: bool,
        dy: &B::Buf,    // (R, out)
        input: &B::Buf, // (R, in)
    ) -> Result<()> {
        let kept = saved[t.index()].take();
        let (scale, dropout) = (lora.config.scale(), self.dropout(lora, ctx));
        let seed = self.dropout_seed(ctx, t, rows.tile);
        let adapter = match (lora.get_mut(self.index, t), kept.as_ref()) {
            (Some((a, b)), Some(kept)) => Some((
                LoraMut {
                    a,
                    b,
                    scale,
                    dropout,
                    seed,
                },
                kept,
            )),
            _ => None,
        };
        let w = self.weights.linear(t)?;
        crate::linear::linear_backward(self.be, dx, accumulate, dy, input, w, rows.len, adapter)
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
