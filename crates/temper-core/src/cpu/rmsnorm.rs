//! RMSNorm as transformers' LlamaRMSNorm: y = x * rsqrt(mean(x^2) + eps) * w.
use rayon::prelude::*;

use crate::cpu::lit;
use crate::{Float, Result};

/// Rows per rayon task at the least, so tiny rows do not drown in scheduling.
fn min_rows(c: usize) -> usize {
    (4096 / c.max(1)).max(1)
}

/// y (N, c), rstd (N). The sum of squares is accumulated in f64 and the mean rounded to T,
/// which is what a pairwise f32 reduction (torch's) gets to within an ulp.
pub fn rmsnorm_forward<T: Float>(
    y: &mut [T],    // (N, c)
    rstd: &mut [T], // (N)
    x: &[T],        // (N, c)
    w: &[T],        // (c)
    c: usize,
    eps: f64,
) -> Result<()> {
    crate::checks::rmsnorm_forward(x.len(), w.len(), y.len(), rstd.len(), c)?;
    let eps: T = lit(eps);
    y.par_chunks_mut(c)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .with_min_len(min_rows(c))
        .for_each(|((y, r), x)| {
            let ss: f64 = x.iter().map(|&v| v.to_f64c() * v.to_f64c()).sum();
            let mean: T = lit(ss / c as f64);
            let rs = T::one() / (mean + eps).sqrt();
            *r = rs;
            // transformers: weight * (x * rstd)
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = w * (x * rs);
            }
        });
    Ok(())
}

/// dx (N, c) written. With r = rstd and y = x r w, dr/dx_j = -r^3 x_j / c, so
/// dx_j = r (dy_j w_j) - x_j r^3 mean(dy w x). The weight is frozen: no dw.
pub fn rmsnorm_backward<T: Float>(
    dx: &mut [T], // (N, c)
    dy: &[T],     // (N, c)
    x: &[T],      // (N, c)
    w: &[T],      // (c)
    rstd: &[T],   // (N)
    c: usize,
) -> Result<()> {
    crate::checks::rmsnorm_backward(x.len(), w.len(), rstd.len(), dy.len(), dx.len(), c)?;
    let inv_c: T = lit(1.0 / c as f64);
    dx.par_chunks_mut(c)
        .zip(dy.par_chunks(c))
        .zip(x.par_chunks(c))
        .zip(rstd.par_iter())
        .with_min_len(min_rows(c))
        .for_each(|(((dx, dy), x), &r)| {
            let dot: T = dy
                .iter()
                .zip(w)
                .zip(x)
                .map(|((&dy, &w), &x)| dy * w * x)
                .sum();
            let coef = r * r * r * dot * inv_c;
            for (((dx, &dy), &w), &x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                *dx = r * (dy * w) - x * coef;
            }
        });
    Ok(())
}
