//! Choosing the next token from logits: greedy, or sampling after transformers' logits
//! warpers in transformers' order (`GenerationMixin._get_logits_processor`): temperature
//! first (`TemperatureLogitsWarper`: logits / T), then nucleus (`TopPLogitsWarper`), then a
//! multinomial draw from the softmax.
//!
//! TopPLogitsWarper, as transformers writes it: sort the logits ascending, take the
//! cumulative softmax, remove every token whose cumulative probability is <= 1 - top_p, but
//! always keep the most likely one (min_tokens_to_keep = 1). Removed tokens get -inf.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::CoreError;

use crate::error::{ModelError, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax); otherwise the logits are divided by it before sampling.
    pub temperature: f32,
    /// Nucleus mass in [0, 1]; 1 disables the filter.
    pub top_p: f32,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid(format!(
                "temperature {} must be a finite number >= 0 (0 = greedy)",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(invalid(format!("top_p {} is not in [0, 1]", self.top_p)));
        }
        Ok(())
    }
}

fn invalid(msg: String) -> ModelError {
    ModelError::Core(CoreError::Invalid {
        op: "sampling",
        msg,
    })
}

/// The index of the largest logit, the first one on ties (`torch.argmax`).
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            return Err(invalid(format!("logit {i} is NaN")));
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or_else(|| invalid("no logits".into()))
}

/// The logits after the warpers: divided by the temperature, then the tokens outside the
/// nucleus set to -inf. `s.temperature` must be > 0.
pub fn warp(logits: &[f32], s: &Sampling) -> Vec<f32> {
    let mut w: Vec<f32> = logits.iter().map(|&x| x / s.temperature).collect();
    if s.top_p < 1.0 && !w.is_empty() {
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_by(|&a, &b| w[a].total_cmp(&w[b])); // ascending
        let probs = softmax(&order.iter().map(|&i| w[i]).collect::<Vec<_>>());
        let threshold = 1.0 - s.top_p as f64;
        let mut cum = 0.0;
        // The last (most likely) token is always kept.
        for (&i, &p) in order.iter().zip(&probs).take(order.len() - 1) {
            cum += p;
            if cum <= threshold {
                w[i] = f32::NEG_INFINITY;
            }
        }
    }
    w
}

/// softmax in f64 (-inf gives 0).
pub fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The distribution the next token is drawn from (greedy: all mass on the argmax).
pub fn probabilities(logits: &[f32], s: &Sampling) -> Result<Vec<f64>> {
    s.validate()?;
    if s.is_greedy() {
        let mut p = vec![0.0; logits.len()];
        p[argmax(logits)? as usize] = 1.0;
        return Ok(p);
    }
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        return Err(invalid(format!("logit {i} is NaN")));
    }
    Ok(softmax(&warp(logits, s)))
}

/// Draws tokens with a seeded generator: the same seed, settings and logits give the same
/// tokens on every run.
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Result<Self> {
        sampling.validate()?;
        Ok(Sampler {
            sampling,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The next token from the logits (V) of the last position.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if self.sampling.is_greedy() {
            return argmax(logits);
        }
        let probs = probabilities(logits, &self.sampling)?;
        // Inverse CDF on one uniform draw in [0, 1).
        let u: f64 = self.rng.random();
        let mut cum = 0.0;
        let mut last = None;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last = Some(i);
                if u < cum {
                    return Ok(i as u32);
                }
            }
        }
        // Rounding left the total a hair below u: the last token with mass.
        last.map(|i| i as u32)
            .ok_or_else(|| invalid("no token has positive probability".into()))
    }
}
