//! What a layer parks in host memory beside its input when checkpointing keeps the inputs on
//! the host: its attention output (the recompute before its backward then skips the attention
//! forward) and the sum after the attention, x + o_proj(att) (the recompute then skips o_proj
//! too). The model and the memory plan decide with the same rule, so the plan's figures are
//! the step's.

use crate::config::ModelConfig;

/// Whether the parked residual is wanted: on unless `TEMPER_PARK_RESIDUAL=0` (read by the
/// loader and by the plan, so the two agree).
pub fn park_residual_from_env() -> bool {
    std::env::var("TEMPER_PARK_RESIDUAL").map_or(true, |v| v != "0")
}

/// What each layer parks beside its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostParking {
    /// The attention output (host) with its log-sum-exp (device).
    pub attention: bool,
    /// The sum after the attention (host); only with `attention`.
    pub residual: bool,
}

impl HostParking {
    pub const NOTHING: HostParking = HostParking {
        attention: false,
        residual: false,
    };

    /// Values per token each layer parks beside its input.
    pub fn values_per_token(self, cfg: &ModelConfig) -> usize {
        let attention = if self.attention { cfg.q_dim() } else { 0 };
        let residual = if self.residual { cfg.hidden } else { 0 };
        attention + residual
    }

    /// For a step over `n` tokens in `esize`-byte values: the most that fits, with the layer
    /// inputs, for every layer, in half of the host memory available (`available`, bytes;
    /// unknown: nothing parked). The residual is parked only when `residual_wanted`, only in
    /// layers whose o_proj output goes straight into the residual (no sandwich norm), and is
    /// the first thing dropped when memory is short.
    pub fn decide(
        cfg: &ModelConfig,
        n: usize,
        esize: usize,
        available: Option<u64>,
        residual_wanted: bool,
    ) -> HostParking {
        let fits = |p: HostParking| {
            let per_token = (cfg.hidden + p.values_per_token(cfg)) as u64;
            let need = per_token
                .saturating_mul((n * esize) as u64)
                .saturating_mul(cfg.layers as u64);
            available.is_some_and(|avail| need <= avail / 2)
        };
        let both = HostParking {
            attention: true,
            residual: true,
        };
        let attention = HostParking {
            attention: true,
            residual: false,
        };
        if residual_wanted && !cfg.sandwich_norms && fits(both) {
            both
        } else if fits(attention) {
            attention
        } else {
            HostParking::NOTHING
        }
    }
}
