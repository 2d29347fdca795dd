//! AdamW as torch.optim.AdamW (decoupled weight decay, bias correction).
//!
//! Follows torch's `_single_tensor_adam` with `decoupled_weight_decay` (the CPU default,
//! non-foreach, non-amsgrad) operation by operation: scalars are computed in f64 as Python
//! does, tensors in f32, and each tensor op rounds as torch's CPU kernel does (`lerp_` for
//! the first moment, `addcmul_` and `addcdiv_` with the scalar multiplied first).
use rayon::prelude::*;

use crate::backend::AdamWStep;
use crate::optim::Scalars;

/// Elements per rayon task.
const PAR_CHUNK: usize = 1 << 14;

/// One AdamW step:
/// p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g;
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
pub fn adamw(
    param: &mut [f32], // (n)
    grad: &[f32],      // (n)
    m: &mut [f32],     // (n) first moment
    v: &mut [f32],     // (n) second moment
    s: AdamWStep,
) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "adamw: param, grad, m and v differ in length"
    );
    assert!(s.step >= 1, "adamw: step counts from 1");
    let Scalars {
        decay,
        w1,
        b2: b2f,
        one_minus_b2,
        neg_step_size,
        bc2_sqrt,
        eps,
        apply_decay,
    } = Scalars::new(s);
    let apply_decay = apply_decay != 0;

    let kernel = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            if apply_decay {
                *p *= decay;
            }
            // torch lerp: weight < 0.5 uses self + w (end - self), else end - (end - self)(1 - w)
            *m = if w1.abs() < 0.5 {
                *m + w1 * (g - *m)
            } else {
                g - (g - *m) * (1.0 - w1)
            };
            *v *= b2f;
            *v += one_minus_b2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p += neg_step_size * *m / denom;
        }
    };
    if n <= PAR_CHUNK {
        kernel(param, grad, m, v);
    } else {
        param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), m), v)| kernel(p, g, m, v));
    }
}
