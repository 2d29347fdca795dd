//! Rotary position embedding frequencies, computed on the host as transformers does
//! (`_compute_default_rope_parameters`, `_compute_llama3_parameters`,
//! `_compute_linear_scaling_rope_parameters`, `_compute_dynamic_ntk_parameters`,
//! `_compute_yarn_parameters`).

/// The `rope_scaling` entry of config.json that temper understands.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// NTK-aware scaling: past the original context the base grows with the sequence length
    /// (transformers recomputes it from the longest position seen; temper uses the longest
    /// position the model is set up for).
    Dynamic {
        factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN: interpolation for low frequencies, extrapolation for high ones, a ramp between
    /// (from beta_fast / beta_slow rotations), and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// Phi-3's LongRoPE: inv_freq[i] divided by short_factor[i] while every position is within
    /// the pretrained context, by long_factor[i] once one is past it (transformers switches on
    /// the longest position of each forward); cos/sin scaled by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: f64,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The factor cos and sin are multiplied by (YaRN's attention scaling; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        match self {
            RopeScaling::Yarn {
                attention_factor, ..
            }
            | RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor as f32,
            _ => 1.0,
        }
    }

    /// YaRN's default attention factor for a context `factor` times longer.
    pub fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * mscale * factor.ln() + 1.0
        }
    }
}

/// theta^(-2i/d) for i < d/2 in f32, as transformers computes it:
/// 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)).
fn default_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (theta as f32).powf(exponent)
        })
        .collect()
}

/// inv_freq[i] = theta^(-2i/d) for i < d/2, then scaled as the config asks, for a model that
/// sees positions below `positions` (only dynamic scaling depends on it). Returned as f32
/// because transformers keeps `inv_freq` in f32.
pub fn inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: Option<&RopeScaling>,
    positions: usize,
) -> Vec<f32> {
    let base = default_inv_freq(head_dim, theta);
    match scaling {
        None => base,
        Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            ..
        }) => {
            // transformers: 1.0 / (ext_factors * base ** (arange(0, dim, 2) / dim)), in f32.
            let ext = if positions as f64 > *original_max_position_embeddings {
                long_factor
            } else {
                short_factor
            };
            (0..head_dim / 2)
                .map(|i| {
                    let exponent = (2 * i) as f32 / head_dim as f32;
                    let e = ext.get(i).copied().unwrap_or(1.0) as f32;
                    1.0f32 / (e * (theta as f32).powf(exponent))
                })
                .collect()
        }
        Some(RopeScaling::Dynamic {
            factor,
            original_max_position_embeddings,
        }) => {
            let seq_len = (positions as f64).max(*original_max_position_embeddings);
            let d = head_dim as f64;
            let grown = theta
                * ((factor * seq_len / original_max_position_embeddings) - (factor - 1.0))
                    .powf(d / (d - 2.0));
            default_inv_freq(head_dim, grown)
        }
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            ..
        }) => {
            let d = head_dim as f64;
            // The dimension whose wavelength makes `rotations` turns over the original context.
            let correction_dim = |rotations: f64| {
                d * (original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, high) = (low.max(0.0), high.min(d - 1.0));
            let (low, high) = (
                low as f32,
                if low == high { high + 0.001 } else { high } as f32,
            );
            let factor = *factor as f32;
            (0..head_dim / 2)
                .map(|i| {
                    // transformers: pos_freqs = base ** (arange(0, dim, 2) / dim) in f32, then
                    // 1 / pos_freqs and 1 / (factor * pos_freqs).
                    let pos_freq = (theta as f32).powf((2 * i) as f32 / head_dim as f32);
                    let extrapolated = 1.0f32 / pos_freq;
                    let interpolated = 1.0f32 / (factor * pos_freq);
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    interpolated * (1.0 - extrapolation) + extrapolated * extrapolation
                })
                .collect()
        }
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let pi = std::f32::consts::PI;
            let old_ctx = *original_max_position_embeddings as f32;
            let (factor, lo, hi) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let low_freq_wavelen = old_ctx / lo;
            let high_freq_wavelen = old_ctx / hi;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * pi / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables (positions, d/2): angle = pos * inv_freq, the product taken in f32
/// as transformers does, the cosine in f64 then rounded.
pub fn tables(inv_freq: &[f32], positions: usize) -> (Vec<f32>, Vec<f32>) {
    scaled_tables(inv_freq, positions, 1.0)
}

/// [`tables`] with cos and sin multiplied by `attention_factor` in f32 (YaRN).
pub fn scaled_tables(
    inv_freq: &[f32],
    positions: usize,
    attention_factor: f32,
) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = vec![0f32; positions * half];
    let mut sin = vec![0f32; positions * half];
    for p in 0..positions {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = (p as f32 * f) as f64;
            cos[p * half + i] = angle.cos() as f32 * attention_factor;
            sin[p * half + i] = angle.sin() as f32 * attention_factor;
        }
    }
    (cos, sin)
}
