//! AdamW over the LoRA parameters, with 32-bit moments (`adamw_torch`, `paged_adamw_32bit`)
//! or bitsandbytes' 8-bit blockwise moments (`adamw_8bit`, `paged_adamw_8bit`), and
//! gradient-norm clipping as `torch.nn.utils.clip_grad_norm_` does it.

use temper_core::{AdamWStep, Backend};
use temper_model::LoraParams;
use temper_quant::{signed_map, unsigned_map, State8};

use crate::error::Result;

/// bitsandbytes' `min_8bit_size`: tensors with fewer elements keep 32-bit moments under its
/// 8-bit optimizers.
pub const MIN_8BIT_SIZE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Moments in mapped host memory, updated in place by the device (`paged_adamw_32bit`,
    /// and the 8-bit states of `paged_adamw_8bit`).
    pub on_host: bool,
    /// 8-bit blockwise moments for tensors of at least `min_8bit_size` elements
    /// (`adamw_8bit`, `paged_adamw_8bit`).
    pub states_8bit: bool,
    /// With `states_8bit`, smaller tensors keep f32 moments ([`MIN_8BIT_SIZE`] by default).
    pub min_8bit_size: usize,
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
            states_8bit: false,
            min_8bit_size: MIN_8BIT_SIZE,
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
    /// Under an 8-bit optimizer (`adamw_8bit`, `paged_adamw_8bit`), one entry per parameter.
    Blockwise8(Vec<Moment8<B>>),
}

/// One parameter's moments under an 8-bit optimizer.
pub enum Moment8<B: Backend> {
    /// Fewer than `min_8bit_size` elements: f32 moments on the device, updated by
    /// [`Backend::adamw`]. bitsandbytes keeps these in 32 bits too (and never pages them); its
    /// 32-bit update is the same formula with the operations in another order, so the two
    /// differ by rounding only.
    Full { m: B::Buf, v: B::Buf },
    /// `m` coded with the signed dynamic map, `v` with the unsigned one, blocks of 256; in
    /// mapped host memory with `on_host`.
    Quantized { m: B::State8, v: B::State8 },
}

/// An 8-bit moment as stored in a checkpoint: codes (n) and absmax (ceil(n / 256)).
pub type Codes8 = (Vec<u8>, Vec<f32>);

/// AdamW with 32-bit or 8-bit moments for every LoRA tensor.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    pub moments: Moments<B>,
    /// Number of updates taken.
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    /// Zero moments: on the device, in mapped host memory when `config.on_host`, in 8 bits
    /// (for tensors of at least `min_8bit_size` elements) when `config.states_8bit`.
    pub fn new(be: &B, lora: &LoraParams<B>, config: AdamWConfig) -> Result<Self> {
        let n = lora.params.len();
        let moments = if config.states_8bit {
            let mut states = Vec::with_capacity(n);
            for p in &lora.params {
                let len = be.len(&p.value);
                states.push(if len < config.min_8bit_size {
                    Moment8::Full {
                        m: be.zeros(len)?,
                        v: be.zeros(len)?,
                    }
                } else {
                    Moment8::Quantized {
                        m: be.state8_zeros(len, signed_map(), config.on_host)?,
                        v: be.state8_zeros(len, unsigned_map(), config.on_host)?,
                    }
                });
            }
            Moments::Blockwise8(states)
        } else if config.on_host {
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

    /// Parameter i's first and second moments in f32, on the host (8-bit ones dequantised).
    pub fn moments_of(&self, be: &B, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(match &self.moments {
            Moments::Device { m, v } => (be.download(&m[i])?, be.download(&v[i])?),
            Moments::Host { m, v } => (be.mapped_read(&m[i])?, be.mapped_read(&v[i])?),
            Moments::Blockwise8(states) => match &states[i] {
                Moment8::Full { m, v } => (be.download(m)?, be.download(v)?),
                Moment8::Quantized { m, v } => {
                    let (mc, ma) = be.state8_read(m)?;
                    let (vc, va) = be.state8_read(v)?;
                    (
                        State8::from_parts(mc, ma, signed_map())?.dequantize(),
                        State8::from_parts(vc, va, unsigned_map())?.dequantize(),
                    )
                }
            },
        })
    }

    /// Parameter i's 8-bit moments (first, second), or None when they are f32.
    pub fn state8_of(&self, be: &B, i: usize) -> Result<Option<(Codes8, Codes8)>> {
        Ok(match &self.moments {
            Moments::Blockwise8(states) => match &states[i] {
                Moment8::Quantized { m, v } => Some((be.state8_read(m)?, be.state8_read(v)?)),
                Moment8::Full { .. } => None,
            },
            _ => None,
        })
    }

    /// Sets parameter i's moments from f32 values (resuming from a checkpoint); 8-bit
    /// moments are quantised as a step requantises them.
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
            Moments::Blockwise8(states) => match &mut states[i] {
                Moment8::Full { m, v } => {
                    *m = be.upload(m1)?;
                    *v = be.upload(m2)?;
                }
                Moment8::Quantized { m, v } => {
                    for (state, values, map) in [(m, m1, signed_map()), (v, m2, unsigned_map())] {
                        let mut q = State8::zeros(values.len(), map)?;
                        q.quantize_from(values)?;
                        be.state8_write(state, q.codes(), q.absmax())?;
                    }
                }
            },
        }
        Ok(())
    }

    /// Sets parameter i's 8-bit moments from their codes and absmax. Returns false (setting
    /// nothing) when that parameter's moments are not 8-bit.
    pub fn set_state8(&mut self, be: &B, i: usize, m1: &Codes8, m2: &Codes8) -> Result<bool> {
        if let Moments::Blockwise8(states) = &mut self.moments {
            if let Moment8::Quantized { m, v } = &mut states[i] {
                be.state8_write(m, &m1.0, &m1.1)?;
                be.state8_write(v, &m2.0, &m2.1)?;
                return Ok(true);
            }
        }
        Ok(false)
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
            // Every parameter in one call: one launch on a GPU.
            Moments::Device { m, v } => {
                let mut all: Vec<_> = (lora.params.iter_mut().zip(m).zip(v))
                    .map(|((p, m), v)| (&mut p.value, &p.grad, m, v))
                    .collect();
                be.adamw_all(&mut all, s)?;
            }
            Moments::Host { m, v } => {
                let mut all: Vec<_> = (lora.params.iter_mut().zip(m).zip(v))
                    .map(|((p, m), v)| (&mut p.value, &p.grad, m, v))
                    .collect();
                be.adamw_mapped_all(&mut all, s)?;
            }
            Moments::Blockwise8(states) => {
                for (p, state) in lora.params.iter_mut().zip(states) {
                    match state {
                        Moment8::Full { m, v } => be.adamw(&mut p.value, &p.grad, m, v, s)?,
                        Moment8::Quantized { m, v } => {
                            be.adamw8bit(&mut p.value, &p.grad, m, v, s)?
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm<B: Backend>(be: &B, lora: &LoraParams<B>) -> Result<f64> {
    let grads: Vec<&B::Buf> = lora.params.iter().map(|p| &p.grad).collect();
    Ok(be.sum_squares_all(&grads)?.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (torch's rule:
/// factor = max_norm / (norm + 1e-6), applied only when below 1). Returns the norm before.
pub fn clip_grad_norm<B: Backend>(be: &B, lora: &mut LoraParams<B>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(be, lora)?;
    if max_norm > 0.0 && norm.is_finite() {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            scale_grads(be, lora, factor as f32)?;
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
    scale_grads(be, lora, factor)?;
    Ok(Some(norm))
}

/// Every gradient *= factor, in one call (one launch on a GPU).
fn scale_grads<B: Backend>(be: &B, lora: &mut LoraParams<B>, factor: f32) -> Result<()> {
    let mut grads: Vec<&mut B::Buf> = lora.params.iter_mut().map(|p| &mut p.grad).collect();
    Ok(be.scale_all(&mut grads, factor)?)
}
