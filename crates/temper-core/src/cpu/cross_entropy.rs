//! LM head fused with cross-entropy, chunked over tokens.
//!
//! Per chunk of `chunk` tokens: logits (chunk, V) = x_chunk w^T, each counted token's loss
//! = logsumexp(logits) - logits[target], then (when dx is wanted) the logits buffer is
//! overwritten with dlogits = grad_scale (softmax - onehot) and dx_chunk = dlogits w. Only one
//! chunk of logits ever exists.
use rayon::prelude::*;

use crate::backend::Gemm;
use crate::cpu::{lit, matmul::matmul};
use crate::{Float, Result};

/// Losses are returned as f32 on the host; see [`linear_cross_entropy_t`] for the kernel.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy<T: Float>(
    dx: Option<&mut [T]>, // (N, c)
    x: &[T],              // (N, c)
    w: &[T],              // (V, c)
    targets: &[i32],      // (N), negative = ignored
    c: usize,
    v: usize,
    grad_scale: f32,
    chunk: usize,
) -> Result<Vec<f32>> {
    let losses = linear_cross_entropy_t(dx, x, w, targets, c, v, grad_scale, chunk)?;
    Ok(losses.into_iter().map(|l| l.to_f64c() as f32).collect())
}

/// [`linear_cross_entropy`] with the per-token losses kept in T, so f64 gradient checks can
/// difference them without the f32 rounding.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_t<T: Float>(
    dx: Option<&mut [T]>, // (N, c)
    x: &[T],              // (N, c)
    w: &[T],              // (V, c)
    targets: &[i32],      // (N), negative = ignored
    c: usize,
    v: usize,
    grad_scale: f32,
    chunk: usize,
) -> Result<Vec<T>> {
    linear_cross_entropy_capped_t(dx, x, w, targets, c, v, grad_scale, chunk, None)
}

/// [`linear_cross_entropy`] with the logits soft-capped first when `softcap` is given
/// (Gemma 2's `final_logit_softcapping`): logit -> cap * tanh(logit / cap), and dlogits
/// multiplied by the cap's derivative 1 - tanh^2.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_capped<T: Float>(
    dx: Option<&mut [T]>, // (N, c)
    x: &[T],              // (N, c)
    w: &[T],              // (V, c)
    targets: &[i32],      // (N), negative = ignored
    c: usize,
    v: usize,
    grad_scale: f32,
    chunk: usize,
    softcap: Option<f32>,
) -> Result<Vec<f32>> {
    let losses =
        linear_cross_entropy_capped_t(dx, x, w, targets, c, v, grad_scale, chunk, softcap)?;
    Ok(losses.into_iter().map(|l| l.to_f64c() as f32).collect())
}

/// [`linear_cross_entropy_capped`] with the losses kept in T.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_capped_t<T: Float>(
    mut dx: Option<&mut [T]>, // (N, c)
    x: &[T],                  // (N, c)
    w: &[T],                  // (V, c)
    targets: &[i32],          // (N), negative = ignored
    c: usize,
    v: usize,
    grad_scale: f32,
    chunk: usize,
    softcap: Option<f32>,
) -> Result<Vec<T>> {
    const OP: &str = "linear_cross_entropy";
    let cap = crate::checks::softcap(OP, softcap)?.map(|c| lit::<T>(c as f64));
    let n = targets.len();
    let dx_len = dx.as_deref().map(|dx| dx.len());
    crate::checks::linear_cross_entropy(x.len(), w.len(), dx_len, targets, c, v)?;
    let mut losses = vec![T::zero(); n];
    if n == 0 {
        return Ok(losses);
    }
    let chunk = chunk.clamp(1, n);
    let grad_scale: T = lit(grad_scale as f64);
    // (chunk, V): logits, then dlogits in place.
    let mut logits = vec![T::zero(); chunk * v];
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        let tgt = &targets[r0..r0 + rows];
        let x_chunk = &x[r0 * c..(r0 + rows) * c];
        let loss_chunk = &mut losses[r0..r0 + rows];
        if tgt.iter().all(|&t| t < 0) {
            // Nothing counted: losses stay 0 and the gradient is 0, skip both products.
            if let Some(dx) = dx.as_deref_mut() {
                dx[r0 * c..(r0 + rows) * c].fill(T::zero());
            }
            continue;
        }
        let lg = &mut logits[..rows * v];
        matmul(lg, x_chunk, w, Gemm::nt(rows, v, c));
        let want_grad = dx.is_some();
        lg.par_chunks_mut(v.max(1))
            .zip(loss_chunk.par_iter_mut())
            .zip(tgt.par_iter())
            .for_each(|((row, loss), &t)| {
                if t < 0 {
                    if want_grad {
                        row.fill(T::zero());
                    }
                    return;
                }
                let t = t as usize;
                if let Some(cap) = cap {
                    row.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
                }
                let max = row.iter().fold(T::neg_infinity(), |m, &l| m.max(l));
                // Summed in f64: a sequential f32 sum over a 50k vocabulary comes out low by
                // about 1e-4 relative, which the loss would inherit.
                let sum64: f64 = row.iter().map(|&l| (l - max).exp().to_f64c()).sum();
                let sum = T::from_f64c(sum64);
                // logsumexp - logit[t], both relative to the max
                *loss = T::from_f64c(sum64.ln()) - (row[t] - max);
                if want_grad {
                    let inv = grad_scale / sum;
                    match cap {
                        None => {
                            for l in row.iter_mut() {
                                *l = (*l - max).exp() * inv;
                            }
                            row[t] -= grad_scale;
                        }
                        // Back through the cap: d capped / d raw = 1 - (capped / cap)^2.
                        Some(cap) => {
                            for (j, l) in row.iter_mut().enumerate() {
                                let r = *l / cap;
                                let mut g = (*l - max).exp() * inv;
                                if j == t {
                                    g -= grad_scale;
                                }
                                *l = g * (T::one() - r * r);
                            }
                        }
                    }
                }
            });
        if let Some(dx) = dx.as_deref_mut() {
            // dx_chunk (rows, c) = dlogits (rows, V) w (V, c)
            matmul(
                &mut dx[r0 * c..(r0 + rows) * c],
                lg,
                w,
                Gemm::nn(rows, c, v),
            );
        }
    }
    Ok(losses)
}
