//! SwiGLU: h = silu(gate) * up.
use crate::Float;

pub fn swiglu_forward<T: Float>(h: &mut [T], gate: &[T], up: &[T]) { todo!() }
pub fn swiglu_backward<T: Float>(dgate: &mut [T], dup: &mut [T], dh: &[T], gate: &[T], up: &[T]) { todo!() }
