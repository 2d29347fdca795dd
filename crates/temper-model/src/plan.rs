//! Peak memory of a training run, predicted from the shapes alone (no device needed), for
//! `temper plan` and `max_memory`. Counts what the backends allocate: frozen weights and
//! activations in the compute dtype, RoPE tables, LoRA values, gradients and AdamW moments in
//! f32, and the largest set of activations alive at once: at the loss (the logits chunk) or
//! in the backward of the last layer (with the GPU attention's scores for sequences long
//! enough to take cuBLAS), whichever is larger.

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

/// Bytes of AdamW's two f32 moments over every LoRA value (in host memory with paged AdamW).
pub fn adamw_moment_bytes(cfg: &ModelConfig, lora: &LoraConfig) -> usize {
    2 * cfg.layers * lora_values_per_layer(cfg, lora) * F32
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

/// A layer's backward at its peak, beside the residual-stream buffers counted by [`plan`]:
/// the layer's activations `acts` and the temporaries alive with them (see
/// `DecoderLayer::backward` and `linear_backward`), at whichever of two points holds more:
/// - the down projection's backward: every activation, dh (F), and the LoRA backward's
///   dxa (r) and, with dropout, d drop(x) and its masked copy (2 F);
/// - the SwiGLU backward: h is freed and dh, dg, du live (+2 F).
///
/// On the GPU a dequantised or converted weight row block (the widest projection) may live
/// beside them. Measured on the CPU backend for the tiny model, within a few values per token.
fn layer_backward_peak(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    n: usize,
    acts: usize,
    device: PlanDevice,
) -> usize {
    let f = cfg.intermediate;
    let down_lora = if targets(cfg, lora).contains(&Target::Down) {
        n * lora.r + if lora.dropout > 0.0 { 2 * n * f } else { 0 }
    } else {
        0
    };
    let at_down = acts + n * f + down_lora;
    // Phi-3 joins dg and du into one (N, 2F) gradient for gate_up_proj.
    let joined = if cfg.fused_proj { 2 * n * f } else { 0 };
    let at_swiglu = acts + 2 * n * f + joined;
    let widest = cfg.intermediate.max(cfg.hidden).max(cfg.q_dim());
    at_down.max(at_swiglu)
        + match device {
            PlanDevice::Cuda => n * widest,
            PlanDevice::Cpu => 0,
        }
}

/// The adapter's targets as the model resolves them (Phi-3's all-linear is its four fused
/// and plain layers); the given list when it does not resolve (the adapter refuses it).
fn targets(cfg: &ModelConfig, lora: &LoraConfig) -> Vec<crate::lora::Target> {
    crate::lora::resolve_targets(cfg, &lora.targets).unwrap_or_else(|_| lora.targets.clone())
}

/// Scores and probabilities of the GPU attention for sequences of `seq` tokens: none where the
/// flash kernels serve the model (bf16 at their head dims: they need sm_80, where they are on
/// by default); float16 is planned as on a T4, where the GEMM path holds the scores.
fn attention_scores(cfg: &ModelConfig, seq: usize, dtype: DType) -> usize {
    let flash =
        dtype == DType::BF16 && temper_core::cuda::flash_head_dims().contains(&cfg.head_dim);
    if seq < GEMM_ATTENTION_MIN_LEN || flash {
        return 0;
    }
    let per_head = seq * seq * (F32 + dtype.size());
    (SCORES_BUDGET / per_head).clamp(1, cfg.kv_heads.max(1)) * per_head
}

/// Where the step runs: the GPU attention holds its scores in device memory for long
/// sequences; the CPU's works in tiles of host memory outside the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanDevice {
    Cpu,
    Cuda,
}

/// The predicted peak for micro-batches of `tokens` tokens in sequences of at most `seq`,
/// with activations and frozen weights stored as `dtype`.
///
/// A step's activations peak in one of two places, whichever is larger (see
/// `Model::forward_backward_with`):
/// - the loss: every kept layer input, the last hidden state, its norm, the norm's
///   gradient and rstd, and the (chunk, V) logits of the fused LM head and loss;
/// - the backward of the last layer: every kept layer input, the incoming and the
///   outgoing gradient, the layer's activations (recomputed with checkpointing) and its
///   backward temporaries (with the GPU attention's scores).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    tokens: usize,
    seq: usize,
    ckpt: Checkpointing,
    loss_chunk: usize,
    dtype: DType,
    device: PlanDevice,
) -> MemoryPlan {
    let n = tokens;
    let c = cfg.hidden;
    let bytes = dtype.size();
    let lora_values = cfg.layers * lora_values_per_layer(cfg, lora);
    // value, gradient, and AdamW's two moments; on the GPU with 16-bit activations, a copy
    // of the values in that type for the step's GEMMs
    let compute_copies = match device {
        PlanDevice::Cuda if bytes < F32 => lora_values * bytes,
        _ => 0,
    };
    let lora_and_optimizer = 4 * lora_values * F32 + compute_copies;
    let acts = layer_acts(cfg, lora, n, true);
    // Layer inputs (n, c) on the device at the loss and in backward, and the activations
    // kept for every layer.
    let (inputs_at_loss, inputs, every_layer_acts) = match ckpt {
        Checkpointing::EveryLayer => (cfg.layers, cfg.layers, 0),
        // parked in host memory; the layer being run back brings its own back
        Checkpointing::EveryLayerOnHost => (0, 1, 0),
        Checkpointing::Off => (cfg.layers, cfg.layers, cfg.layers * acts),
    };
    // With the inputs on the host, each layer's attention lse (n, heads) stays on the device
    // until its backward; on the GPU the next layer's input and attention output are
    // fetched back ahead of use (from before the loss on).
    let (kept_lse, ahead) = match ckpt {
        Checkpointing::EveryLayerOnHost => (
            n * cfg.heads * F32,
            match device {
                PlanDevice::Cuda => n * (c + cfg.q_dim()) * bytes,
                PlanDevice::Cpu => 0,
            },
        ),
        _ => (0, 0),
    };
    // the last hidden state, its norm and the norm's gradient (n, c) and rstd (n)
    let at_loss_values = (inputs_at_loss + 3) * n * c + n + every_layer_acts;
    // the f32 logits chunk, and its gradient in the compute dtype when that is narrower
    let chunk = loss_chunk.clamp(1, n.max(1)) * cfg.vocab;
    let logits = chunk * F32 + if bytes < F32 { chunk * bytes } else { 0 };
    let at_loss = at_loss_values * bytes + logits + cfg.layers * kept_lse + ahead;
    // dx and dx_in beside the inputs, the final norm's rstd (kept to the end of the
    // step), and the layer's backward; with checkpointing the layer was just recomputed,
    // without it the earlier layers' activations wait their turn
    let in_backward_values = (inputs + 2) * n * c
        + n
        + layer_backward_peak(cfg, lora, n, acts, device)
        + match ckpt {
            Checkpointing::Off => every_layer_acts - acts,
            _ => 0,
        };
    let scores = match device {
        PlanDevice::Cuda => attention_scores(cfg, seq.min(n), dtype),
        PlanDevice::Cpu => 0,
    };
    let in_backward =
        in_backward_values * bytes + scores + cfg.layers.saturating_sub(1) * kept_lse + ahead;
    MemoryPlan {
        weights: weight_values(cfg) * bytes,
        lora_and_optimizer,
        activations: at_loss.max(in_backward),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flash_attention_keeps_no_scores_in_bf16() {
        let shape = crate::init::shape("llama3-8b").expect("shape");
        let text = shape.config_json().to_string();
        let cfg = ModelConfig::from_json(&text, std::path::Path::new("llama3-8b/config.json"))
            .expect("config");
        // bf16 at head dim 128: the flash kernels, no scores; float16 (planned as on a T4):
        // the GEMM path's scores, at least one head of 4096 x 4096.
        assert_eq!(attention_scores(&cfg, 4096, DType::BF16), 0);
        assert!(attention_scores(&cfg, 4096, DType::F16) >= 4096 * 4096 * 6);
    }
}
