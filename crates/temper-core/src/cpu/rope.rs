//! Rotary embedding, rotate_half layout.
use crate::{Float, Result};

/// x (N, h, d) rotated in place; cos/sin (P, d/2); pos (N) < P else error.
pub fn rope_forward<T: Float>(x: &mut [T], pos: &[u32], cos: &[T], sin: &[T], h: usize, d: usize) -> Result<()> { todo!() }
/// inverse rotation of dx in place
pub fn rope_backward<T: Float>(dx: &mut [T], pos: &[u32], cos: &[T], sin: &[T], h: usize, d: usize) -> Result<()> { todo!() }
