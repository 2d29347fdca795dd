//! AdamW over the LoRA parameters (32-bit states), and gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_` does it.

use temper_core::{AdamWStep, Backend};
use temper_model::LoraParams;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // transformers' TrainingArguments defaults
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments for every LoRA tensor, in the order of `LoraParams::params`.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Number of updates taken.
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, lora: &LoraParams<B>, config: AdamWConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(lora.params.len());
        let mut v = Vec::with_capacity(lora.params.len());
        for p in &lora.params {
            m.push(be.zeros(be.len(&p.value))?);
            v.push(be.zeros(be.len(&p.value))?);
        }
        Ok(AdamW {
            config,
            m,
            v,
            step: 0,
        })
    }

    /// One update of every parameter from its gradient.
    pub fn update(&mut self, be: &B, lora: &mut LoraParams<B>, lr: f32) -> Result<()> {
        self.step += 1;
        let s = AdamWStep {
            lr,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            step: self.step,
        };
        for ((p, m), v) in lora.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
            be.adamw(&mut p.value, &p.grad, m, v, s)?;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm<B: Backend>(be: &B, lora: &LoraParams<B>) -> Result<f64> {
    let mut sum = 0.0;
    for p in &lora.params {
        sum += be.sum_squares(&p.grad)?;
    }
    Ok(sum.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (torch's rule:
/// factor = max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before.
pub fn clip_grad_norm<B: Backend>(be: &B, lora: &mut LoraParams<B>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(be, lora)?;
    if max_norm > 0.0 && norm.is_finite() {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            for p in &mut lora.params {
                be.scale(&mut p.grad, factor as f32)?;
            }
        }
    }
    Ok(norm)
}
