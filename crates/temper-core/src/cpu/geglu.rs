//! GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`):
//! h = gelu_tanh(gate) * up, gelu_tanh(g) = g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))).
use rayon::prelude::*;

use crate::cpu::lit;
use crate::Float;

/// Elements per rayon task.
const PAR_CHUNK: usize = 1 << 14;

/// sqrt(2/pi), and the cubic's coefficient, as torch's `gelu(approximate="tanh")`.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044715;

/// (gelu_tanh(g), d gelu_tanh / dg).
#[inline]
fn gelu_tanh<T: Float>(g: T) -> (T, T) {
    let (k, c, half) = (lit::<T>(SQRT_2_OVER_PI), lit::<T>(CUBIC), lit::<T>(0.5));
    let inner = k * (g + c * g * g * g);
    let t = inner.tanh();
    let value = half * g * (T::one() + t);
    let slope = half * (T::one() + t)
        + half * g * (T::one() - t * t) * k * (T::one() + lit::<T>(3.0) * c * g * g);
    (value, slope)
}

/// h = gelu_tanh(gate) * up.
pub fn geglu_forward<T: Float>(
    h: &mut [T], // (N, f)
    gate: &[T],  // (N, f)
    up: &[T],    // (N, f)
) {
    assert_eq!(gate.len(), h.len(), "geglu_forward: gate");
    assert_eq!(up.len(), h.len(), "geglu_forward: up");
    h.par_chunks_mut(PAR_CHUNK)
        .zip(gate.par_chunks(PAR_CHUNK))
        .zip(up.par_chunks(PAR_CHUNK))
        .for_each(|((h, g), u)| {
            for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                *h = gelu_tanh(g).0 * u;
            }
        });
}

/// dgate = dh * up * gelu_tanh'(g), dup = dh * gelu_tanh(g).
pub fn geglu_backward<T: Float>(
    dgate: &mut [T], // (N, f)
    dup: &mut [T],   // (N, f)
    dh: &[T],        // (N, f)
    gate: &[T],      // (N, f)
    up: &[T],        // (N, f)
) {
    let n = gate.len();
    assert!(
        dgate.len() == n && dup.len() == n && dh.len() == n && up.len() == n,
        "geglu_backward: dgate, dup, dh, gate and up must have equal lengths"
    );
    dgate
        .par_chunks_mut(PAR_CHUNK)
        .zip(dup.par_chunks_mut(PAR_CHUNK))
        .zip(dh.par_chunks(PAR_CHUNK))
        .zip(gate.par_chunks(PAR_CHUNK))
        .zip(up.par_chunks(PAR_CHUNK))
        .for_each(|((((dg, du), dh), g), u)| {
            for ((((dg, du), &dh), &g), &u) in dg.iter_mut().zip(du).zip(dh).zip(g).zip(u) {
                let (value, slope) = gelu_tanh(g);
                *dg = dh * u * slope;
                *du = dh * value;
            }
        });
}
