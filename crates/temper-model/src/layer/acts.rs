//! What a layer's backward reads, kept by its forward (or rebuilt by a recompute).

use temper_core::Backend;

use crate::layer::MlpActs;
use crate::linear::LoraSaved;

/// Everything a layer's backward reads, for N tokens. With gradient checkpointing this is
/// rebuilt from the layer's input just before its backward.
pub struct LayerActs<B: Backend> {
    pub xn1: B::Buf,   // (N, C)
    pub rstd1: B::Buf, // (N)
    pub q: B::Buf,     // (N, Hq*D) after RoPE (and the query scale)
    pub k: B::Buf,     // (N, Hkv*D) after RoPE
    pub v: B::Buf,     // (N, Hkv*D)
    pub att: B::Buf,   // (N, Hq*D)
    pub lse: B::Buf,   // (N, Hq)
    /// Gemma 2/3: the output projection before its norm (N, C), and the norm's rstd (N).
    pub attn_out: Option<(B::Buf, B::Buf)>,
    pub x2: B::Buf, // (N, C)
    /// The MLP's, over all N tokens; None when it runs in tiles (the backward rebuilds each).
    pub mlp: Option<MlpActs<B>>,
    /// The per-head q/k norms' inputs and statistics (Qwen3, Gemma 3).
    pub qk_norm: Option<QkNormActs<B>>,
    /// Per target (indexed by [`crate::lora::Target::index`]); the MLP's are in `mlp`.
    pub lora: Vec<Option<LoraSaved<B>>>,
}

/// What the backward of the per-head q/k RMSNorms reads.
pub struct QkNormActs<B: Backend> {
    pub q_pre: B::Buf,  // (N, Hq*D) the q projection, before its norm
    pub rstd_q: B::Buf, // (N*Hq)
    pub k_pre: B::Buf,  // (N, Hkv*D)
    pub rstd_k: B::Buf, // (N*Hkv)
}
