//! General matrix product through the `gemm` crate (multithreaded, f32 and f64).
use crate::backend::Gemm;
use crate::Float;

/// C (m, n) = alpha * op(A) op(B) + beta * C, row-major; see [`Gemm`] for the layouts.
pub fn matmul<T: Float>(c: &mut [T], a: &[T], b: &[T], g: Gemm) {
    todo!()
}
