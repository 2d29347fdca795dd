//! SwiGLU: h = silu(gate) * up.
use rayon::prelude::*;

use crate::Float;

/// Elements per rayon task.
const PAR_CHUNK: usize = 1 << 14;

#[inline]
fn sigmoid<T: Float>(g: T) -> T {
    T::one() / (T::one() + (-g).exp())
}

/// h = silu(gate) * up with silu(g) = g * sigmoid(g).
pub fn swiglu_forward<T: Float>(
    h: &mut [T], // (N, f)
    gate: &[T],  // (N, f)
    up: &[T],    // (N, f)
) {
    assert_eq!(gate.len(), h.len(), "swiglu_forward: gate");
    assert_eq!(up.len(), h.len(), "swiglu_forward: up");
    h.par_chunks_mut(PAR_CHUNK)
        .zip(gate.par_chunks(PAR_CHUNK))
        .zip(up.par_chunks(PAR_CHUNK))
        .for_each(|((h, g), u)| {
            for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                *h = g * sigmoid(g) * u;
            }
        });
}

/// dgate = dh * up * sig * (1 + g (1 - sig)) (the derivative of silu), dup = dh * silu(g).
pub fn swiglu_backward<T: Float>(
    dgate: &mut [T], // (N, f)
    dup: &mut [T],   // (N, f)
    dh: &[T],        // (N, f)
    gate: &[T],      // (N, f)
    up: &[T],        // (N, f)
) {
    let n = gate.len();
    assert!(
        dgate.len() == n && dup.len() == n && dh.len() == n && up.len() == n,
        "swiglu_backward: dgate, dup, dh, gate and up must have equal lengths"
    );
    dgate
        .par_chunks_mut(PAR_CHUNK)
        .zip(dup.par_chunks_mut(PAR_CHUNK))
        .zip(dh.par_chunks(PAR_CHUNK))
        .zip(gate.par_chunks(PAR_CHUNK))
        .zip(up.par_chunks(PAR_CHUNK))
        .for_each(|((((dg, du), dh), g), u)| {
            for ((((dg, du), &dh), &g), &u) in dg.iter_mut().zip(du).zip(dh).zip(g).zip(u) {
                let s = sigmoid(g);
                *dg = dh * u * s * (T::one() + g * (T::one() - s));
                *du = dh * g * s;
            }
        });
}
