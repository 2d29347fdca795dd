//! AdamW over the LoRA parameters (32-bit states), and gradient-norm clipping as
//! `torch.nn.utils.clip_grad_norm_` does it.

use rayon::prelude::*;
use temper_core::{AdamWStep, Backend};
use temper_model::LoraParams;

use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Moments in host memory, updated on the CPU (`paged_adamw_32bit`).
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
    /// On the device, updated there (`adamw_torch`).
    Device { m: Vec<B::Buf>, v: Vec<B::Buf> },
    /// In host memory beside a host copy of the parameters, every tensor one after another
    /// (parameter i at `offsets[i]..offsets[i + 1]`): the gradients come over in one copy,
    /// the CPU updates, and the parameters go back in one copy, so no optimizer state takes
    /// device memory (`paged_adamw_32bit`).
    Host {
        m: Vec<f32>,
        v: Vec<f32>,
        params: Vec<f32>,
        offsets: Vec<usize>,
    },
}

/// AdamW with 32-bit moments for every LoRA tensor.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub moments: Moments<B>,
    /// Number of updates taken.
    pub step: u64,
}

/// `x` cut at `offsets` into one mutable slice per parameter.
fn split_mut<'a>(mut x: &'a mut [f32], offsets: &[usize]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (head, tail) = std::mem::take(&mut x).split_at_mut(w[1] - w[0]);
        out.push(head);
        x = tail;
    }
    out
}

impl<B: Backend> AdamW<B> {
    /// Moments on the device, or in host memory when `config.on_host`.
    pub fn new(be: &B, lora: &LoraParams<B>, config: AdamWConfig) -> Result<Self> {
        if config.on_host {
            return Self::new_on_host(be, lora, config);
        }
        let mut m = Vec::with_capacity(lora.params.len());
        let mut v = Vec::with_capacity(lora.params.len());
        for p in &lora.params {
            m.push(be.zeros(be.len(&p.value))?);
            v.push(be.zeros(be.len(&p.value))?);
        }
        Ok(AdamW {
            config,
            moments: Moments::Device { m, v },
            step: 0,
        })
    }

    /// Moments in host memory (see [`Moments::Host`]).
    pub fn new_on_host(be: &B, lora: &LoraParams<B>, config: AdamWConfig) -> Result<Self> {
        let mut offsets = vec![0];
        let mut params = Vec::new();
        for p in &lora.params {
            params.extend(be.download(&p.value)?);
            offsets.push(params.len());
        }
        Ok(AdamW {
            config,
            moments: Moments::Host {
                m: vec![0.0; params.len()],
                v: vec![0.0; params.len()],
                params,
                offsets,
            },
            step: 0,
        })
    }

    /// Parameter i's first and second moments, on the host.
    pub fn moments_of(&self, be: &B, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(match &self.moments {
            Moments::Device { m, v } => (be.download(&m[i])?, be.download(&v[i])?),
            Moments::Host { m, v, offsets, .. } => {
                let r = offsets[i]..offsets[i + 1];
                (m[r.clone()].to_vec(), v[r].to_vec())
            }
        })
    }

    /// Sets parameter i's moments (resuming from a checkpoint).
    pub fn set_moments(&mut self, be: &B, i: usize, m1: &[f32], m2: &[f32]) -> Result<()> {
        match &mut self.moments {
            Moments::Device { m, v } => {
                m[i] = be.upload(m1)?;
                v[i] = be.upload(m2)?;
            }
            Moments::Host { m, v, offsets, .. } => {
                let r = offsets[i]..offsets[i + 1];
                m[r.clone()].copy_from_slice(m1);
                v[r].copy_from_slice(m2);
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
            Moments::Host {
                m,
                v,
                params,
                offsets,
            } => {
                // Gather the gradients on the device, then one copy to the host.
                let mut flat = be.zeros(params.len())?;
                for (p, &off) in lora.params.iter().zip(offsets.iter()) {
                    be.copy_range(&mut flat, off, &p.grad, 0, be.len(&p.grad))?;
                }
                let grads = be.download(&flat)?;
                split_mut(params, offsets)
                    .into_par_iter()
                    .zip(split_mut(m, offsets))
                    .zip(split_mut(v, offsets))
                    .zip(offsets.par_windows(2))
                    .for_each(|(((p, m), v), r)| {
                        temper_core::cpu::adamw::adamw(p, &grads[r[0]..r[1]], m, v, s)
                    });
                // One copy back, then scattered into the parameters.
                let flat = be.upload(params)?;
                for (p, &off) in lora.params.iter_mut().zip(offsets.iter()) {
                    let n = be.len(&p.value);
                    be.copy_range(&mut p.value, 0, &flat, off, n)?;
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
