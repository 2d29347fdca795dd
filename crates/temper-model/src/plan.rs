//! Peak memory of a training run, predicted from the shapes alone (no device needed), for
//! `temper plan` and `max_memory`. Counts what the backends allocate and count (the same
//! accounting their `peak_bytes` reports): frozen weights and activations in the compute
//! dtype, RoPE tables, norm statistics and the attention's log-sum-exp in f32, LoRA values,
//! gradients and AdamW moments in f32, the GPU's cuBLAS workspace, and the largest set of
//! activations alive at once: at the loss (the logits chunk) or at one of the points of the
//! last layer's backward (see [`layer_backward_peak`]; with the MLP in tiles for long
//! sequences, one tile's), whichever holds more. Beside it, the pinned host memory of layer
//! inputs kept off the device ([`MemoryPlan::host`]).

use temper_core::DType;

use crate::config::ModelConfig;
use crate::layer::{tile_rows, MLP_TILE_TOKENS};
use crate::lora::{LoraConfig, Target};
use crate::model::Checkpointing;
use crate::parking::{HostParking, ParkingWanted};

/// Bytes per f32 value (LoRA, gradients, moments, logits).
const F32: usize = 4;
/// The GPU attention holds at most this many bytes of scores at once (one head at least).
const SCORES_BUDGET: usize = 256 << 20;
/// Sequences from this length on take the GEMM attention path.
const GEMM_ATTENTION_MIN_LEN: usize = 128;
/// The cuBLAS workspace the CUDA backend allocates once and counts (`CUBLAS_WORKSPACE` in
/// temper-core's `cuda/mod.rs`).
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// The predicted peak, by part, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub weights: usize,
    pub lora_and_optimizer: usize,
    pub activations: usize,
    /// Pinned host memory beside the device's: with the layer inputs on the host (GPU), every
    /// layer's input, and its attention output when that goes there too. Not in `total`.
    pub host: usize,
}

impl MemoryPlan {
    /// The device's predicted peak.
    pub fn total(&self) -> usize {
        self.weights + self.lora_and_optimizer + self.activations
    }
}

/// Every frozen value stored in the compute dtype: embeddings, head (unless tied), layers,
/// norms. The RoPE tables are f32 ([`rope_table_bytes`]).
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
    v * c + head + cfg.layers * per_layer + c
}

/// Bytes of the RoPE tables: cos and sin, (P, R/2) each in f32 (uploaded as computed), for
/// P = max_position_embeddings and R the rotated dims per head; a second set for Gemma 3's
/// local layers, and LongRoPE's long tables beside the short ones past the pretrained context
/// (see `Model::from_parts`).
pub fn rope_table_bytes(cfg: &ModelConfig) -> usize {
    let one = cfg.max_positions.max(1) * cfg.rope_dims * F32;
    let local = usize::from(cfg.local_rope_theta.is_some());
    let long = usize::from(matches!(
        &cfg.rope_scaling,
        Some(temper_core::rope::RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        }) if cfg.max_positions.max(1) > *original_max_position_embeddings as usize
    ));
    (1 + local + long) * one
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
    (weight_values(cfg) - linear) * dtype.size()
        + rope_table_bytes(cfg)
        + linear.div_ceil(2)
        + scales
}

/// Bytes of the frozen weights with the 7 linear kinds of every layer in 8 bits (an int8 code
/// per value and an f32 scale per row, as bitsandbytes' LLM.int8 stores them); embeddings,
/// head and norms stay in `dtype`.
pub fn weight_bytes_8bit(cfg: &ModelConfig, dtype: DType) -> usize {
    let (linear, rows) = cfg.linears().iter().fold((0, 0), |(n, r), t| {
        let (i, o) = t.dims(cfg);
        (n + cfg.layers * i * o, r + cfg.layers * o)
    });
    (weight_values(cfg) - linear) * dtype.size() + rope_table_bytes(cfg) + linear + 4 * rows
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

/// Bytes of one layer's activations for n tokens (what [`crate::layer::LayerActs`] holds):
/// the attention half's ([`attention_acts`]) and the MLP's ([`mlp_acts`]).
///
/// A recompute before the backward rebuilds exactly these: with the attention kept on the
/// host its output comes back instead of being recomputed (same size), and it skips the down
/// projection's base GEMM and the residual add, whose output buffer is no activation (the
/// backward never holds one), so neither changes this count.
fn layer_acts(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    n: usize,
    bytes: usize,
    training: bool,
) -> usize {
    attention_acts(cfg, lora, n, bytes, training) + mlp_acts(cfg, lora, n, bytes, training)
}

/// The attention half's activations for n tokens: xn1, x2 (C), q and att (Hq*D), k and v
/// (Hkv*D) in the compute dtype; the norm's rstd (1) and the attention's log-sum-exp (Hq) in
/// f32; Qwen3's pre-norm q and k with an rstd per head, Gemma 2/3's output before its norm
/// (C) with its rstd; the attention targets' kept LoRA values ([`kept_lora`]).
fn attention_acts(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    n: usize,
    bytes: usize,
    training: bool,
) -> usize {
    let c = cfg.hidden;
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let mut values = n * (2 * c + 2 * qd + 2 * kvd);
    let mut stats = n * (1 + cfg.heads);
    if cfg.qk_norm {
        values += n * (qd + kvd);
        stats += n * (cfg.heads + cfg.kv_heads);
    }
    if cfg.sandwich_norms {
        values += n * c;
        stats += n;
    }
    values += kept_lora(cfg, lora, n, training, false);
    values * bytes + stats * F32
}

/// The MLP's activations for n tokens ([`crate::layer::MlpActs`]): xn2 (C), g, u, h (F) in
/// the compute dtype and the norm's rstd (1) in f32; Gemma 2/3's output before its norm (C)
/// with its rstd; the MLP targets' kept LoRA values.
fn mlp_acts(cfg: &ModelConfig, lora: &LoraConfig, n: usize, bytes: usize, training: bool) -> usize {
    let (c, f) = (cfg.hidden, cfg.intermediate);
    let mut values = n * (c + 3 * f);
    let mut stats = n;
    if cfg.sandwich_norms {
        values += n * c;
        stats += n;
    }
    values += kept_lora(cfg, lora, n, training, true);
    values * bytes + stats * F32
}

/// Values the adapter targets of one half of the layer keep for n tokens: xa (r) and, with
/// dropout while training, the dropped input.
fn kept_lora(cfg: &ModelConfig, lora: &LoraConfig, n: usize, training: bool, mlp: bool) -> usize {
    targets(cfg, lora)
        .iter()
        .filter(|t| is_mlp(**t) == mlp)
        .map(|t| {
            let (i, _) = t.dims(cfg);
            n * lora.r
                + if training && lora.dropout > 0.0 {
                    n * i
                } else {
                    0
                }
        })
        .sum()
}

fn is_mlp(t: Target) -> bool {
    matches!(t, Target::Gate | Target::Up | Target::GateUp | Target::Down)
}

/// A layer's backward at its peak, beside the residual-stream buffers counted by [`plan`]
/// (the layer's input, dout, dx): the layer's activations and what is alive with them, at
/// whichever point of `DecoderLayer::backward` holds most. Activations are freed as the walk
/// passes their last use, a target's kept LoRA values (xa, its dropped input) after its own
/// backward; `linear_backward` holds the LoRA's dxa (N, r) throughout, beside either the base
/// GEMM's weight (on the GPU a dequantised 4-bit or 8-bit weight, (out, in), freed after that
/// GEMM) or, with dropout, d drop(x) and its masked copy (2 in), which come after the GEMM.
/// The MLP's points, over the R rows it runs on at once:
/// - the down projection's backward: every activation, dh (F), dxa, and the weight or the
///   dropout's two (R, F);
/// - the SwiGLU backward: h and the down projection's dropped input are freed, dh, dg, du
///   live (+2 F); Phi-3's joined (R, 2F) gradient comes after dh, g and u are freed, so it
///   never holds more;
/// - the gate (and up) projection's backward: h, g, u freed, dg and du (or Phi-3's dgu),
///   dxn2 (C), dxa, and the weight (Phi-3's (2F, C)) or the dropout's two (R, C).
///
/// With the MLP whole (R = N) its activations are the layer's; in tiles of R rows
/// (`mlp_tile`) the layer keeps none of the MLP's, and each tile's rebuild holds its rows of
/// x2 and dout, its own MLP activations and the points above, beside the whole dx2 (N, C).
///
/// The attention side, at the larger of two points, the MLP's activations and x2 freed:
/// - the attention's backward: its inputs (xn1 and the attention's activations), dx2 (C),
///   datt (Hq*D), dq, dk, dv, the backward's row sums (Hq, f32), and the GEMM attention's
///   `scores` when it holds them;
/// - the q/k/v projections' backward: q, k, v, att and datt freed; xn1, dx2, dq, dk, dv, a
///   second copy of them where the family makes one (Qwen3's pre-norm gradients, Phi-3's
///   joined dqkv), dxn1 (C), dxa, and the widest attention-side weight or dropout pair.
///
/// Measured on the CPU backend for the tiny models, within a few values per token; on an
/// H100 for Llama-2-7B and Llama-3-8B under QLoRA (see the tests).
#[allow(clippy::too_many_arguments)]
fn layer_backward_peak(
    cfg: &ModelConfig,
    lora: &LoraConfig,
    n: usize,
    bytes: usize,
    scores: usize,
    device: PlanDevice,
    mlp_tile: Option<usize>,
) -> usize {
    let (c, f) = (cfg.hidden, cfg.intermediate);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let ts = targets(cfg, lora);
    let dropout = lora.dropout > 0.0;
    // dxa of a target with an adapter, over r rows
    let dxa = |t: Target, r: usize| if ts.contains(&t) { r * lora.r } else { 0 };
    // its dropped input, kept from the forward until its backward ends
    let dropped = |t: Target, r: usize| {
        if dropout && ts.contains(&t) {
            r * t.dims(cfg).0
        } else {
            0
        }
    };
    // the larger of the base GEMM's dequantised weight (GPU) and the dropout's d drop(x)
    // and masked copy, which are not alive together
    let weight_or_dropout = |t: Target, r: usize| {
        let (i, o) = t.dims(cfg);
        let weight = match device {
            PlanDevice::Cuda => i * o,
            PlanDevice::Cpu => 0,
        };
        weight.max(if dropout && ts.contains(&t) {
            2 * r * i
        } else {
            0
        })
    };
    let (gate, attn): (&[Target], &[Target]) = if cfg.fused_proj {
        (&[Target::GateUp], &[Target::Qkv, Target::O])
    } else {
        (
            &[Target::Gate, Target::Up],
            &[Target::Q, Target::K, Target::V, Target::O],
        )
    };
    let widest = |list: &[Target], r: usize| -> (usize, usize) {
        list.iter()
            .map(|&t| (dxa(t, r), weight_or_dropout(t, r)))
            .fold((0, 0), |(a, b), (x, y)| (a.max(x), b.max(y)))
    };
    // the MLP backward's temporaries over r rows, at its highest point
    let mlp_temps = |r: usize| {
        let down = Target::Down;
        let at_down = r * f + dxa(down, r) + weight_or_dropout(down, r);
        let at_swiglu = (2 * r * f).saturating_sub(dropped(down, r));
        let (gate_dxa, gate_w) = widest(gate, r);
        let at_gate = (r * c + gate_dxa + gate_w).saturating_sub(r * f + dropped(down, r));
        at_down.max(at_swiglu).max(at_gate) * bytes
    };
    let attention = attention_acts(cfg, lora, n, bytes, true);
    let at_mlp = attention
        + match mlp_tile {
            None => mlp_acts(cfg, lora, n, bytes, true) + mlp_temps(n),
            Some(r) => {
                let r = r.min(n);
                (n + 2 * r) * c * bytes + mlp_acts(cfg, lora, r, bytes, true) + mlp_temps(r)
            }
        };
    let (attn_dxa, attn_w) = widest(attn, n);
    let outside_mlp = attention - n * c * bytes; // x2 freed
    let at_attention =
        outside_mlp + n * (c + 2 * qd + 2 * kvd) * bytes + n * cfg.heads * F32 + scores;
    let copy = if cfg.qk_norm || cfg.fused_proj {
        qd + 2 * kvd
    } else {
        0
    };
    let at_projections = outside_mlp - n * (2 * qd + 2 * kvd) * bytes
        + (n * (2 * c + qd + 2 * kvd + copy) + attn_dxa + attn_w) * bytes;
    at_mlp.max(at_attention).max(at_projections)
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
/// - the loss: the layer inputs kept on the device, the last hidden state, its norm, the
///   norm's gradient and rstd, and the (chunk, V) logits of the fused LM head and loss;
/// - the backward of the last layer: the layer inputs kept on the device (with
///   `EveryLayerOnHost` only the one restored for this layer), the incoming and the outgoing
///   gradient, the layer's activations (recomputed with checkpointing) and its backward's
///   temporaries at their highest point ([`layer_backward_peak`]).
///
/// With the inputs on the host, every layer's log-sum-exp stays on the device until its
/// backward, and on the GPU the next layer's parks (its input and what `parking.rs` adds) are
/// fetched back ahead of use (from before the loss on). The forward never holds more than the
/// backward: a layer's forward holds its activations, its input and output and the previous
/// layer's parks while their copies run (C + the parked width), where its backward holds the
/// same activations beside dx, dx_in, the next layer's prefetch (the same width) and at least
/// one more (N, F).
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
    host_available: Option<u64>,
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
    let acts = layer_acts(cfg, lora, n, bytes, true);
    // With checkpointing, sequences longer than a tile run the MLP in tiles of R rows.
    let mlp_tile = tile_rows(n, MLP_TILE_TOKENS).filter(|_| ckpt.recomputes());
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
    // Without the attention outputs on the host (they would take more than half of its
    // available memory), only the inputs travel and nothing waits on the device.
    // The sum after the attention is parked beside them where host memory allows (unless
    // TEMPER_PARK_RESIDUAL=0): the rule of `parking.rs`, as the step applies it.
    let parking = if ckpt == Checkpointing::EveryLayerOnHost {
        // A bad value is refused when the model loads; the plan takes the defaults then.
        let wanted = ParkingWanted::from_env().unwrap_or(ParkingWanted::DEFAULT);
        HostParking::decide(cfg, n, bytes, host_available, wanted)
    } else {
        HostParking::NOTHING
    };
    let attention_parked = parking.attention;
    let parked = parking.values_per_token(cfg);
    let host = match (ckpt, device) {
        (Checkpointing::EveryLayerOnHost, PlanDevice::Cuda) => {
            cfg.layers * n * (c + parked) * bytes
        }
        _ => 0,
    };
    let (kept_lse, ahead) = match ckpt {
        Checkpointing::EveryLayerOnHost if attention_parked => (
            n * cfg.heads * F32,
            match device {
                PlanDevice::Cuda => n * (c + parked) * bytes,
                PlanDevice::Cpu => 0,
            },
        ),
        Checkpointing::EveryLayerOnHost => (
            0,
            match device {
                PlanDevice::Cuda => n * c * bytes,
                PlanDevice::Cpu => 0,
            },
        ),
        _ => (0, 0),
    };
    // allocated once by the GPU backend, alive throughout
    let workspace = match device {
        PlanDevice::Cuda => CUBLAS_WORKSPACE,
        PlanDevice::Cpu => 0,
    };
    // the final norm's rstd (n), f32, kept to the end of the step
    let final_rstd = n * F32;
    // the last hidden state, its norm and the norm's gradient (n, c)
    let at_loss_values = (inputs_at_loss + 3) * n * c * bytes + every_layer_acts;
    // the f32 logits chunk, and its gradient in the compute dtype when that is narrower
    let chunk = loss_chunk.clamp(1, n.max(1)) * cfg.vocab;
    let logits = chunk * F32 + if bytes < F32 { chunk * bytes } else { 0 };
    let at_loss = at_loss_values + final_rstd + logits + cfg.layers * kept_lse + ahead;
    let scores = match device {
        PlanDevice::Cuda => attention_scores(cfg, seq.min(n), dtype),
        PlanDevice::Cpu => 0,
    };
    // dx and dx_in beside the inputs, and the layer's backward; with checkpointing the layer
    // was just recomputed, without it the earlier layers' activations wait their turn
    let in_backward = (inputs + 2) * n * c * bytes
        + final_rstd
        + layer_backward_peak(cfg, lora, n, bytes, scores, device, mlp_tile)
        + match ckpt {
            Checkpointing::Off => every_layer_acts - acts,
            _ => 0,
        }
        + cfg.layers.saturating_sub(1) * kept_lse
        + ahead;
    MemoryPlan {
        weights: weight_values(cfg) * bytes + rope_table_bytes(cfg),
        lora_and_optimizer,
        activations: at_loss.max(in_backward) + workspace,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::shape_config;

    /// Host memory available on the machine of the measurements below (`free`: 124 GiB).
    const H100_HOST_AVAILABLE: u64 = 124 << 30;

    /// The QLoRA recipe's whole prediction, as `temper plan` makes it: NF4 with double
    /// quantisation (blocks of 64), bf16, LoRA r=16 on the 7 linear kinds without dropout,
    /// paged AdamW (moments in host memory), the layer inputs on the host, on the GPU.
    fn qlora_gib(cfg: &ModelConfig, seq: usize, batch: usize) -> f64 {
        let lora = LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
        };
        let dtype = DType::BF16;
        let ckpt = Checkpointing::EveryLayerOnHost;
        let m = plan(
            cfg,
            &lora,
            seq * batch,
            seq,
            ckpt,
            1024,
            dtype,
            PlanDevice::Cuda,
            Some(H100_HOST_AVAILABLE),
        );
        let total = weight_bytes_4bit(cfg, dtype, 64, true) + m.lora_and_optimizer
            - adamw_moment_bytes(cfg, &lora)
            + m.activations;
        total as f64 / (1u64 << 30) as f64
    }

    /// The peaks measured on an H100 (docs/gpu-notes.md, 2026-12-07, "the MLP in tiles":
    /// `temper bench --device cuda --dtype bfloat16 --load-in-4bit nf4 --double-quant
    /// --paged-optimizer --checkpoint-offload` on random folders of `temper init-model`; bench
    /// trains without LoRA dropout). The Llama-3-8B folder had max_position_embeddings raised
    /// to 131072 for long sequences, which sizes its RoPE tables. The figures are rounded to
    /// 0.01 GiB; the plan must not be below them (beyond that rounding) nor more than 10%
    /// above. P1 (Llama-2-7B 1024 x 4) is the later measurement with the parked residual
    /// (2026-12-08), which the plan now includes; the others were measured before it.
    #[test]
    fn qlora_plans_bound_the_h100_peaks_within_ten_percent() {
        let llama2 = shape_config("llama2-7b");
        let mut llama3 = shape_config("llama3-8b");
        llama3.max_positions = 131072;
        for (name, cfg, seq, batch, measured) in [
            ("Llama-2-7B 1024 x 4", &llama2, 1024, 4, 4.85),
            ("Llama-2-7B 4096 x 1", &llama2, 4096, 1, 4.82),
            ("Llama-3-8B 1024 x 4", &llama3, 1024, 4, 6.70),
            ("Llama-3-8B 16384 x 1", &llama3, 16384, 1, 7.81),
            ("Llama-3-8B 32768 x 1", &llama3, 32768, 1, 9.19),
            ("Llama-3-8B 65536 x 1", &llama3, 65536, 1, 12.06),
            ("Llama-3-8B 131072 x 1", &llama3, 131072, 1, 16.84),
        ] {
            let planned = qlora_gib(cfg, seq, batch);
            let ratio = planned / measured;
            println!("{name}: planned {planned:.3} GiB, measured {measured} ({ratio:.3}x)");
            assert!(
                planned >= measured - 0.005 && ratio <= 1.10,
                "{name}: planned {planned:.3} GiB against {measured} measured ({ratio:.3}x)"
            );
        }
    }

    /// The parked residual adds the hidden width to what each layer parks, except where
    /// sandwich norms keep o_proj's output apart; parked q, k and v add the query width and
    /// twice the key width, except where per-head q/k norms need the values before them. When
    /// host memory is short, q, k and v are dropped first, then the residual, then the
    /// attention outputs.
    #[test]
    fn parks_are_dropped_in_order_when_host_memory_is_short() {
        let llama3 = shape_config("llama3-8b");
        let gemma2 = shape_config("gemma2-tiny");
        let qwen3 = shape_config("qwen3-tiny");
        let park = |residual, qkv| HostParking {
            attention: true,
            residual,
            qkv,
        };
        let (all, both, attention) = (park(true, true), park(true, false), park(false, false));
        assert_eq!(attention.values_per_token(&llama3), 4096);
        assert_eq!(both.values_per_token(&llama3), 8192);
        assert_eq!(all.values_per_token(&llama3), 8192 + 4096 + 2 * 1024);
        let wanted = |residual, qkv| ParkingWanted { residual, qkv };
        // 16k tokens over 32 layers: inputs + attention outputs take 8 GiB in bf16, with the
        // residual 12 GiB, with q, k and v too 18 GiB; half the available memory decides.
        let decide = |gib: u64, w| HostParking::decide(&llama3, 16384, 2, Some(gib << 30), w);
        assert_eq!(decide(36, wanted(true, true)), all);
        assert_eq!(decide(35, wanted(true, true)), both);
        assert_eq!(decide(36, wanted(false, true)), park(false, true));
        assert_eq!(decide(24, wanted(true, false)), both);
        assert_eq!(decide(24, wanted(false, false)), attention);
        assert_eq!(decide(20, wanted(true, true)), attention);
        assert_eq!(decide(15, wanted(true, true)), HostParking::NOTHING);
        assert_eq!(
            HostParking::decide(&llama3, 16384, 2, None, wanted(true, true)),
            HostParking::NOTHING
        );
        // Sandwich norms: never the residual; q/k norms: never q, k and v.
        assert_eq!(
            HostParking::decide(&gemma2, 16, 2, Some(1 << 40), wanted(true, true)),
            park(false, true)
        );
        assert_eq!(
            HostParking::decide(&qwen3, 16, 2, Some(1 << 40), wanted(true, true)),
            both
        );
    }

    /// Llama-3-8B, 32 layers of 4096 values per token in bf16 for each of the input, the
    /// attention output and the parked residual: all three in pinned memory at 16k (12 GiB,
    /// under half of 124 GiB); at 128k only the inputs (32 GiB: with the attention outputs 64
    /// GiB, over half).
    #[test]
    fn host_memory_of_the_offloaded_layer_inputs() {
        let mut cfg = shape_config("llama3-8b");
        cfg.max_positions = 131072;
        let lora = LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
        };
        let host = |seq: usize, device: PlanDevice, ckpt: Checkpointing| {
            let available = Some(H100_HOST_AVAILABLE);
            plan(
                &cfg,
                &lora,
                seq,
                seq,
                ckpt,
                1024,
                DType::BF16,
                device,
                available,
            )
            .host
        };
        let on_host = Checkpointing::EveryLayerOnHost;
        assert_eq!(host(16384, PlanDevice::Cuda, on_host), 12 << 30);
        assert_eq!(host(131072, PlanDevice::Cuda, on_host), 32 << 30);
        assert_eq!(host(16384, PlanDevice::Cuda, Checkpointing::EveryLayer), 0);
        assert_eq!(host(16384, PlanDevice::Cpu, on_host), 0);
    }

    #[test]
    fn flash_attention_keeps_no_scores_in_bf16() {
        let cfg = shape_config("llama3-8b");
        // bf16 at head dim 128: the flash kernels, no scores; float16 (planned as on a T4):
        // the GEMM path's scores, at least one head of 4096 x 4096.
        assert_eq!(attention_scores(&cfg, 4096, DType::BF16), 0);
        assert!(attention_scores(&cfg, 4096, DType::F16) >= 4096 * 4096 * 6);
    }
}
