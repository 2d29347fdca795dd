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
    /// Moments in mapped host memory, updated in place by the device (`paged_adamw_32bit`).
    pub on_host: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // transformers' TrainingArguments defaults
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            on_host: false,
        }
    }
}

/// Where AdamW's moments live, in the order of `LoraParams::params`.
pub enum Moments<B: Backend> {
    /// On the device (`adamw_torch`).
    Device { m: Vec<B::Buf>, v: Vec<B::Buf> },
    /// In host memory mapped into the device's address space: the update kernel reads and
    /// writes them over the bus, so no optimizer state takes device memory
    /// (`paged_adamw_32bit`).
    Host {
        m: Vec<B::Mapped>,
        v: Vec<B::Mapped>,
    },
}

/// AdamW with 32-bit moments for every LoRA tensor.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub moments: Moments<B>,
    /// Number of updates taken.
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    /// Moments on the device, or in mapped host memory when `config.on_host`.
    pub fn new(be: &B, lora: &LoraParams<B>, config: AdamWConfig) -> Result<Self> {
        let n = lora.params.len();
        let moments = if config.on_host {
            let (mut m, mut v) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for p in &lora.params {
                m.push(be.mapped_zeros(be.len(&p.value))?);
                v.push(be.mapped_zeros(be.len(&p.value))?);
            }
            Moments::Host { m, v }
        } else {
            let (mut m, mut v) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for p in &lora.params {
                m.push(be.zeros(be.len(&p.value))?);
                v.push(be.zeros(be.len(&p.value))?);
            }
            Moments::Device { m, v }
        };
        Ok(AdamW {
            config,
            moments,
            step: 0,
        })
    }

    /// Parameter i's first and second moments, on the host.
    pub fn moments_of(&self, be: &B, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(match &self.moments {
            Moments::Device { m, v } => (be.download(&m[i])?, be.download(&v[i])?),
            Moments::Host { m, v } => (be.mapped_read(&m[i])?, be.mapped_read(&v[i])?),
        })
    }

    /// Sets parameter i's moments (resuming from a checkpoint).
    pub fn set_moments(&mut self, be: &B, i: usize, m1: &[f32], m2: &[f32]) -> Result<()> {
        match &mut self.moments {
            Moments::Device { m, v } => {
                m[i] = be.upload(m1)?;
                v[i] = be.upload(m2)?;
            }
            Moments::Host { m, v } => {
                be.mapped_write(&mut m[i], m1)?;
                be.mapped_write(&mut v[i], m2)?;
            }
        }
        Ok(())
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
        match &mut self.moments {
            Moments::Device { m, v } => {
                for ((p, m), v) in lora.params.iter_mut().zip(m).zip(v) {
                    be.adamw(&mut p.value, &p.grad, m, v, s)?;
                }
            }
            Moments::Host { m, v } => {
                for ((p, m), v) in lora.params.iter_mut().zip(m).zip(v) {
                    be.adamw_mapped(&mut p.value, &p.grad, m, v, s)?;
                }
            }
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

/// For loss-scaled gradients (all multiplied by `scale`): returns the norm of the true
/// gradients, or None when any is not finite (the step must be skipped). When finite, the
/// gradients are divided by `scale` and clipped to `max_norm` in one pass.
pub fn unscale_and_clip<B: Backend>(
    be: &B,
    lora: &mut LoraParams<B>,
    scale: f32,
    max_norm: f64,
) -> Result<Option<f64>> {
    let scaled = grad_norm(be, lora)?;
    if !scaled.is_finite() {
        return Ok(None);
    }
    let norm = scaled / scale as f64;
    let clip = if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    let factor = (clip / scale as f64) as f32;
    for p in &mut lora.params {
        be.scale(&mut p.grad, factor)?;
    }
    Ok(Some(norm))
}
