//! Small elementwise ops: axpy, scale, bias, sum of squares, dropout.
use crate::Float;

/// y += alpha * x
pub fn axpy<T: Float>(y: &mut [T], alpha: f32, x: &[T]) { todo!() }
/// y *= alpha
pub fn scale<T: Float>(y: &mut [T], alpha: f32) { todo!() }
/// y (rows, c) += bias (c)
pub fn add_bias<T: Float>(y: &mut [T], bias: &[T]) { todo!() }
/// sum of x^2 in f64
pub fn sum_squares<T: Float>(x: &[T]) -> f64 { todo!() }
/// y = x * keep(seed, i) / (1 - p); keep from a counter-based hash so every device agrees.
pub fn dropout<T: Float>(y: &mut [T], x: &[T], p: f32, seed: u64) { todo!() }
