//! RMSNorm as transformers' LlamaRMSNorm: y = x * rsqrt(mean(x^2) + eps) * w.
use crate::Float;

/// y (N, c), rstd (N)
pub fn rmsnorm_forward<T: Float>(y: &mut [T], rstd: &mut [T], x: &[T], w: &[T], c: usize, eps: f64) { todo!() }
/// dx (N, c) written
pub fn rmsnorm_backward<T: Float>(dx: &mut [T], dy: &[T], x: &[T], w: &[T], rstd: &[T], c: usize) { todo!() }
