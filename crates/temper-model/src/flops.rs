//! Model FLOPs of a LoRA training step, per token: what the step needs, without the
//! recompute that gradient checkpointing adds (the count behind "MFU", model FLOPs
//! utilisation, as the PaLM paper defines it for full training, here for a frozen base).
//!
//! Per token, with P the base linear weights of all layers and the LM head:
//! - frozen linears: forward 2 P, backward 2 P (the input gradient only; no weight gradient);
//! - LoRA, per target of in -> out with rank r: forward 2 r (in + out), backward 4 r (in + out)
//!   (dB and dxa read dy, dA and dx read x);
//! - causal attention over sequences of `seq` tokens, per layer: forward 4 Hq D keys (S and
//!   P V), backward twice that, with (seq + 1) / 2 keys per query on average (fewer inside
//!   a sliding window).

use crate::config::ModelConfig;
use crate::lora::{resolve_targets, LoraConfig};

/// Model FLOPs per token of one training step over sequences of `seq` tokens.
pub fn model_flops_per_token(cfg: &ModelConfig, lora: &LoraConfig, seq: usize) -> f64 {
    let per_layer_linear: f64 = cfg
        .linears()
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            (i * o) as f64
        })
        .sum();
    let head = (cfg.vocab * cfg.hidden) as f64;
    let frozen = 4.0 * (cfg.layers as f64 * per_layer_linear + head);

    let targets = resolve_targets(cfg, &lora.targets).unwrap_or_else(|_| lora.targets.clone());
    let lora_per_layer: f64 = targets
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            6.0 * lora.r as f64 * (i + o) as f64
        })
        .sum();
    let adapters = cfg.layers as f64 * lora_per_layer;

    let attention: f64 = (0..cfg.layers)
        .map(|l| {
            let keys = mean_keys(seq, cfg.window(l));
            12.0 * cfg.heads as f64 * cfg.head_dim as f64 * keys
        })
        .sum();
    frozen + adapters + attention
}

/// The mean number of keys a query of a causal sequence of `seq` tokens attends to, within a
/// sliding window of `window` tokens when given.
fn mean_keys(seq: usize, window: Option<usize>) -> f64 {
    if seq == 0 {
        return 0.0;
    }
    let w = window.unwrap_or(seq).min(seq);
    // Queries 0..w see i + 1 keys; the rest see w.
    let ramp = (w * (w + 1) / 2) as f64;
    let flat = ((seq - w) * w) as f64;
    (ramp + flat) / seq as f64
}

/// The dense bf16 tensor-core peak of the GPUs temper is measured on, in FLOP/s, from the
/// device's name (None for the others: their MFU is not printed).
pub fn bf16_peak_flops(device_name: &str) -> Option<f64> {
    let name = device_name.to_ascii_uppercase();
    if name.contains("H100") && name.contains("PCIE") {
        Some(756e12)
    } else if name.contains("H100") || name.contains("H200") || name.contains("GH200") {
        Some(989.4e12)
    } else if name.contains("A100") {
        Some(312e12)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::shape_config as config;
    use crate::lora::Target;

    /// Llama-2-7B, r = 16 on all seven kinds, 1024-token sequences, by hand: linears 32 x
    /// 202,375,168 weights and a 32000 x 4096 head, times 4; LoRA 32 x 96 x (4 x 8192 + 3 x
    /// 15104); attention 32 x 12 x 32 x 128 x 512.5.
    #[test]
    fn llama2_7b_p1_by_hand() {
        let cfg = config("llama2-7b");
        let lora = LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
        };
        let by_hand = 4.0 * (32.0 * 202_375_168.0 + 32000.0 * 4096.0)
            + 32.0 * 96.0 * (4.0 * 8192.0 + 3.0 * 15104.0)
            + 32.0 * 12.0 * 32.0 * 128.0 * 512.5;
        let got = model_flops_per_token(&cfg, &lora, 1024);
        assert!((got - by_hand).abs() < 1.0, "{got} vs {by_hand}");
        // About 27.5 GFLOP per token.
        assert!((got / 1e9 - 27.5).abs() < 0.1, "{got}");
    }

    #[test]
    fn mean_keys_of_causal_and_windowed_sequences() {
        assert_eq!(mean_keys(4, None), 2.5);
        // Window 2 over 4 tokens: 1, 2, 2, 2 keys.
        assert_eq!(mean_keys(4, Some(2)), 1.75);
        assert_eq!(mean_keys(4, Some(100)), 2.5);
        assert_eq!(mean_keys(0, None), 0.0);
    }

    #[test]
    fn known_peaks() {
        assert_eq!(bf16_peak_flops("NVIDIA H100 80GB HBM3"), Some(989.4e12));
        assert_eq!(bf16_peak_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(bf16_peak_flops("NVIDIA H200"), Some(989.4e12));
        assert_eq!(bf16_peak_flops("Tesla T4"), None);
    }
}
