//! What a layer parks in host memory beside its input when checkpointing keeps the inputs on
//! the host: its attention output (the recompute before its backward then skips the attention
//! forward), the sum after the attention, x + o_proj(att) (the recompute then skips o_proj
//! too), and its queries, keys and values after RoPE (the recompute then skips the q, k and v
//! projections' base GEMMs and RoPE). The model and the memory plan decide with the same rule,
//! so the plan's figures are the step's.

use crate::config::ModelConfig;

/// A switch from the environment: unset or empty gives `default`, `1` on, `0` off, anything
/// else an error naming the variable.
fn switch_from_env(name: &str, default: bool) -> std::result::Result<bool, String> {
    match std::env::var(name).unwrap_or_default().as_str() {
        "" => Ok(default),
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(format!("{name}={other:?}: use 1 (on) or 0 (off)")),
    }
}

/// Whether the parked residual is wanted: on unless `TEMPER_PARK_RESIDUAL=0` (read by the
/// loader and by the plan, so the two agree).
pub fn park_residual_from_env() -> std::result::Result<bool, String> {
    switch_from_env("TEMPER_PARK_RESIDUAL", true)
}

/// Whether parked queries, keys and values are wanted: only with `TEMPER_PARK_QKV=1`. They
/// double what a layer sends over the bus in its forward, which pays only where the bus is
/// faster than the projections they replace (read by the loader and by the plan).
pub fn park_qkv_from_env() -> std::result::Result<bool, String> {
    switch_from_env("TEMPER_PARK_QKV", false)
}

/// What each layer parks beside its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostParking {
    /// The attention output (host) with its log-sum-exp (device).
    pub attention: bool,
    /// The sum after the attention (host); only with `attention`.
    pub residual: bool,
    /// q, k and v after RoPE and the query scale (host); only with `attention`.
    pub qkv: bool,
}

/// Which of the optional parks a run wants (the attention output is always wanted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkingWanted {
    pub residual: bool,
    pub qkv: bool,
}

impl ParkingWanted {
    /// From `TEMPER_PARK_RESIDUAL` and `TEMPER_PARK_QKV`; an error names a variable whose
    /// value is neither 0 nor 1.
    pub fn from_env() -> std::result::Result<Self, String> {
        Ok(ParkingWanted {
            residual: park_residual_from_env()?,
            qkv: park_qkv_from_env()?,
        })
    }

    /// The defaults: the residual parked, q, k and v not.
    pub const DEFAULT: ParkingWanted = ParkingWanted {
        residual: true,
        qkv: false,
    };
}

impl HostParking {
    pub const NOTHING: HostParking = HostParking {
        attention: false,
        residual: false,
        qkv: false,
    };

    /// Values per token each layer parks beside its input.
    pub fn values_per_token(self, cfg: &ModelConfig) -> usize {
        let attention = if self.attention { cfg.q_dim() } else { 0 };
        let residual = if self.residual { cfg.hidden } else { 0 };
        let qkv = if self.qkv {
            cfg.q_dim() + 2 * cfg.kv_dim()
        } else {
            0
        };
        attention + residual + qkv
    }

    /// For a step over `n` tokens in `esize`-byte values: the most that fits, with the layer
    /// inputs, for every layer, in half of the host memory available (`available`, bytes;
    /// unknown: nothing parked). The residual is parked only when wanted and only in layers
    /// whose o_proj output goes straight into the residual (no sandwich norm); q, k and v only
    /// when wanted and only in layers without per-head q/k norms (whose backward reads the
    /// values before the norm). When memory is short, q, k and v are dropped first, then the
    /// residual, then the attention output.
    pub fn decide(
        cfg: &ModelConfig,
        n: usize,
        esize: usize,
        available: Option<u64>,
        wanted: ParkingWanted,
    ) -> HostParking {
        let fits = |p: HostParking| {
            let per_token = (cfg.hidden + p.values_per_token(cfg)) as u64;
            let need = per_token
                .saturating_mul((n * esize) as u64)
                .saturating_mul(cfg.layers as u64);
            available.is_some_and(|avail| need <= avail / 2)
        };
        let mut p = HostParking {
            attention: true,
            residual: wanted.residual && !cfg.sandwich_norms,
            qkv: wanted.qkv && !cfg.qk_norm,
        };
        if !fits(p) {
            p.qkv = false;
        }
        if !fits(p) {
            p.residual = false;
        }
        if fits(p) {
            p
        } else {
            HostParking::NOTHING
        }
    }
}
