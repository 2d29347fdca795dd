//! LM head fused with cross-entropy, chunked over tokens.
use crate::{Float, Result};

#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy<T: Float>(dx: Option<&mut [T]>, x: &[T], w: &[T], targets: &[i32], c: usize, v: usize, grad_scale: f32, chunk: usize) -> Result<Vec<f32>> { todo!() }
