//! Peak memory of a training run, predicted from the shapes alone (no device needed), for
//! `temper plan` and `max_memory`. Counts what the backends allocate: frozen weights and
//! activations in the compute dtype, RoPE tables, LoRA values, gradients and AdamW moments in
//! f32, and the largest set of activations alive at once, which is the backward of one layer
//! (with the GPU attention's scores for sequences long enough to take cuBLAS).

use temper_core::DType;

use crate::config::ModelConfig;
use crate::lora::{LoraConfig, Target};
use crate::model::Checkpointing;

/// Bytes per f32 value (LoRA, gradients, moments, logits).
const F32: usize = 4;
/// The GPU attention holds at most this many bytes of scores at once (one head at least).
const SCORES_BUDGET: usize = 256 << 20;
/// Sequences from this length on take the GEMM attention path.
const GEMM_ATTENTION_MIN_LEN: usize = 128;

/// The predicted peak, by part, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub weights: usize,
    pub lora_and_optimizer: usize,
    pub activations: usize,
}

impl MemoryPlan {
    pub fn total(&self) -> usize {
        self.weights + self.lora_and_optimizer + self.activations
    }
}

/// Every frozen value: embeddings, head (unless tied), layers, norms, RoPE tables.
pub fn weight_values(cfg: &ModelConfig) -> usize {
    let (c, v) = (cfg.hidden, cfg.vocab);
    let per_layer: usize = cfg
        .linears()
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            let bias = if cfg.qkv_bias && matches!(t, Target::Q | Target::K | Target::V) {
                o
            } else {
                0
            };
            i * o + bias
        })
        .sum::<usize>()
        + 2 * c
        + if cfg.sandwich_norms { 2 * c } else { 0 }
        + if cfg.qk_norm { 2 * cfg.head_dim } else { 0 };
    let head = if cfg.tie_embeddings { 0 } else { v * c };
    let rope = cfg.max_positions.max(1) * cfg.head_dim; // cos and sin, (P, d/2) each
    v * c + head + cfg.layers * per_layer + c + rope
}

/// Bytes of the frozen weights with the 7 linear kinds of every layer in 4 bits (codes, and
/// f32 block scales or, with double quantisation, 8-bit ones with an f32 per 256 blocks);
/// embeddings, head and norms stay in `dtype`.
pub fn weight_bytes_4bit(cfg: &ModelConfig, dtype: DType, blocksize: usize, double: bool) -> usize {
    let linear: usize = cfg.layers
        * cfg
            .linears()
            .iter()
            .map(|t| {
                let (i, o) = t.dims(cfg);
                i * o
            })
            .sum::<usize>();
    let blocks = linear.div_ceil(blocksize.max(1));
    let scales = if double {
        blocks + 4 * blocks.div_ceil(256)
    } else {
        4 * blocks
    };
    (weight_values(cfg) - linear) * dtype.size() + linear.div_ceil(2) + scales
}

/// Bytes of the frozen weights with the 7 linear kinds of every layer in 8 bits (an int8 code
/// per value and an f32 scale per row, as bitsandbytes' LLM.int8 stores them); embeddings,
/// head and norms stay in `dtype`.
pub fn weight_bytes_8bit(cfg: &ModelConfig, dtype: DType) -> usize {
    let (linear, rows) = cfg.linears().iter().fold((0, 0), |(n, r), t| {
        let (i, o) = t.dims(cfg);
        (n + cfg.layers * i * o, r + cfg.layers * o)
    });
    (weight_values(cfg) - linear) * dtype.size() + linear + 4 * rows
}

/// LoRA values of one layer.
fn lora_values_per_layer(cfg: &ModelConfig, lora: &LoraConfig) -> usize {
    targets(cfg, lora)
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            lora.r * (i + o)
        })
        .sum()
}

/// Activations of one layer's forward for n tokens (what [`crate::layer::LayerActs`] holds).
fn layer_acts(cfg: &ModelConfig, lora: &LoraConfig, n: usize, training: bool) -> usize {
    let (c, f) = (cfg.hidden, cfg.intermediate);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let base = n * (3 * c + 2 + 2 * qd + 2 * kvd + cfg.heads + 3 * f);
    // Qwen3's per-head norms keep q and k before the norm and an rstd per head.
    let qk_norm = if cfg.qk_norm {
        n * (qd + kvd + cfg.heads + cfg.kv_heads)
    } else {
        0
    };
    // Gemma 2/3 keep the attention and MLP outputs before their norms, with their rstd.
    let sandwich = if cfg.sandwich_norms {
        2 * n * (c + 1)
    } else {
        0
    };
    let base = base + qk_norm + sandwich;
    let lora_saved: usize = targets(cfg, lora)
        .iter()
        .map(|t| {
            let (i, _) = t.dims(cfg);
            n * lora.r
                + if training && lora.dropout > 0.0 {
                    n * i
                } else {
                    0
                }
        })
        .sum();
    base + lora_saved
}

/// The temporaries of one layer's backward at their peak: at the SwiGLU backward, h is freed
/// and dh, dg, du live (+2 F), beside the incoming gradient, the gradient being built and the
/// layer input (3 C), a LoRA scratch and a dequantised or converted weight row block.
fn layer_backward_scratch(cfg: &ModelConfig, lora: &LoraConfig, n: usize) -> usize {
    let (c, f) = (cfg.hidden, cfg.intermediate);
    let widest = cfg.intermediate.max(cfg.hidden).max(cfg.q_dim());
    // Phi-3 joins dg and du into one (N, 2F) gradient for gate_up_proj.
    let joined = if cfg.fused_proj { 2 * f } else { 0 };
    n * (2 * f + 3 * c + joined) + n * lora.r + n * widest
}

/// The adapter's targets as the model resolves them (Phi-3's all-linear is its four fused
/// and plain layers); the given list when it does not resolve (the adapter refuses it).
fn targets(cfg: &ModelConfig, lora: &LoraConfig) -> Vec<crate::lora::Target> {
    crate::lora::resolve_targets(cfg, &lora.targets).unwrap_or_else(|_| lora.targets.clone())
}

/// Scores and probabilities of the GPU attention for sequences of `seq` tokens.
fn attention_scores(cfg: &ModelConfig, seq: usize, dtype: DType) -> usize {
    if seq < GEMM_ATTENTION_MIN_LEN {
        return 0;
    }
    let per_head = seq * seq * (F32 + dtype.size());
    (SCORES_BUDGET / per_head).clamp(1, cfg.kv_heads.max(1)) * per_head
}

/// The predicted peak for micro-batches of `tokens` tokens in sequences of at most `seq`,
/// with activations and frozen weights stored as `dtype`.
pub fn plan(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    tokens: usize,
    seq: usize,
    ckpt: Checkpointing,
    loss_chunk: usize,
    dtype: DType,
) -> MemoryPlan {
    let n = tokens;
    let c = cfg.hidden;
    let bytes = dtype.size();
    let lora_values = cfg.layers * lora_values_per_layer(cfg, lora);
    // value, gradient, and AdamW's two moments
    let lora_and_optimizer = 4 * lora_values * F32;
    let kept = match ckpt {
        // every layer's input, and the layer being recomputed
        Checkpointing::EveryLayer => cfg.layers * n * c + layer_acts(cfg, lora, n, true),
        // the layer's input back from the host, and the layer being recomputed
        Checkpointing::EveryLayerOnHost => n * c + layer_acts(cfg, lora, n, true),
        Checkpointing::Off => cfg.layers * (n * c + layer_acts(cfg, lora, n, true)),
    };
    // final norm output, its gradient and rstd, the running gradient
    let head = (3 * n * c + 2 * n) * bytes;
    // the f32 logits chunk, and its gradient in the compute dtype when that is narrower
    let chunk = loss_chunk.min(n) * cfg.vocab;
    let logits = chunk * F32 + if bytes < F32 { chunk * bytes } else { 0 };
    let activations = (kept + layer_backward_scratch(cfg, lora, n)) * bytes
        + head
        + logits
        + attention_scores(cfg, seq.min(n), dtype);
    MemoryPlan {
        weights: weight_values(cfg) * bytes,
        lora_and_optimizer,
        activations,
    }
}
