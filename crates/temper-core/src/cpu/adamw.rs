//! AdamW as torch.optim.AdamW (decoupled weight decay, bias correction).
use crate::backend::AdamWStep;

pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) { todo!() }
