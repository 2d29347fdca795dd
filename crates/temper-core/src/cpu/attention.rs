//! Causal varlen attention with GQA.
use crate::{Float, Result};

#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(out: &mut [T], lse: &mut [T], q: &[T], k: &[T], v: &[T], cu_seqlens: &[u32], hq: usize, hkv: usize, d: usize) -> Result<()> { todo!() }
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(dq: &mut [T], dk: &mut [T], dv: &mut [T], dout: &[T], q: &[T], k: &[T], v: &[T], out: &[T], lse: &[T], cu_seqlens: &[u32], hq: usize, hkv: usize, d: usize) -> Result<()> { todo!() }
