//! Rotary embedding, rotate_half layout, over a head's first `rot` values (all of them
//! unless the model rotates only part of each head: Phi's `partial_rotary_factor`).
use rayon::prelude::*;

use crate::{Float, Result};

/// Rotates the first `rot` values of every head of every token by angle
/// `sign * pos * inv_freq`: sign +1 is the forward rotation, -1 its transpose (= inverse),
/// which is the backward. Values rot..d of each head pass through.
#[allow(clippy::too_many_arguments)]
fn rotate<T: Float>(
    x: &mut [T],
    pos: &[u32],
    cos: &[T],
    sin: &[T],
    h: usize,
    d: usize,
    rot: usize,
    inverse: bool,
) {
    let half = rot / 2;
    x.par_chunks_mut(h * d)
        .zip(pos.par_iter())
        .with_min_len((4096 / (h * d)).max(1))
        .for_each(|(token, &p)| {
            let p = p as usize;
            let cos = &cos[p * half..(p + 1) * half];
            let sin = &sin[p * half..(p + 1) * half];
            for head in token.chunks_exact_mut(d) {
                let (x1, x2) = head[..rot].split_at_mut(half);
                for (((a, b), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
                    let (u, v) = (*a, *b);
                    if inverse {
                        *a = u * c + v * s;
                        *b = v * c - u * s;
                    } else {
                        *a = u * c - v * s;
                        *b = v * c + u * s;
                    }
                }
            }
        });
}

/// x (N, h, d) rotated in place; cos/sin (P, d/2); pos (N) < P else error.
/// out[i] = x[i] cos - x[i + d/2] sin, out[i + d/2] = x[i + d/2] cos + x[i] sin.
pub fn rope_forward<T: Float>(
    x: &mut [T], // (N, h, d)
    pos: &[u32], // (N)
    cos: &[T],   // (P, d/2)
    sin: &[T],   // (P, d/2)
    h: usize,
    d: usize,
) -> Result<()> {
    crate::checks::rope("rope_forward", x.len(), pos, cos.len(), sin.len(), h, d)?;
    rotate(x, pos, cos, sin, h, d, d, false);
    Ok(())
}

/// inverse rotation of dx in place: the forward is orthogonal, so its transpose (the gradient
/// map) is the rotation by the opposite angle.
pub fn rope_backward<T: Float>(
    dx: &mut [T], // (N, h, d)
    pos: &[u32],  // (N)
    cos: &[T],    // (P, d/2)
    sin: &[T],    // (P, d/2)
    h: usize,
    d: usize,
) -> Result<()> {
    crate::checks::rope("rope_backward", dx.len(), pos, cos.len(), sin.len(), h, d)?;
    rotate(dx, pos, cos, sin, h, d, d, true);
    Ok(())
}

/// [`rope_forward`] over the first `rot` of each head's d values (cos/sin are (P, rot/2));
/// the other d - rot values pass through, as transformers' partial rotary embedding.
#[allow(clippy::too_many_arguments)]
pub fn rope_partial_forward<T: Float>(
    x: &mut [T], // (N, h, d)
    pos: &[u32], // (N)
    cos: &[T],   // (P, rot/2)
    sin: &[T],   // (P, rot/2)
    h: usize,
    d: usize,
    rot: usize,
) -> Result<()> {
    crate::checks::rope_partial(
        "rope_partial_forward",
        x.len(),
        pos,
        cos.len(),
        sin.len(),
        h,
        d,
        rot,
    )?;
    rotate(x, pos, cos, sin, h, d, rot, false);
    Ok(())
}

/// The backward of [`rope_partial_forward`]: the inverse rotation of the first `rot` values.
#[allow(clippy::too_many_arguments)]
pub fn rope_partial_backward<T: Float>(
    dx: &mut [T], // (N, h, d)
    pos: &[u32],  // (N)
    cos: &[T],    // (P, rot/2)
    sin: &[T],    // (P, rot/2)
    h: usize,
    d: usize,
    rot: usize,
) -> Result<()> {
    crate::checks::rope_partial(
        "rope_partial_backward",
        dx.len(),
        pos,
        cos.len(),
        sin.len(),
        h,
        d,
        rot,
    )?;
    rotate(dx, pos, cos, sin, h, d, rot, true);
    Ok(())
}
