//! Rotary embedding, rotate_half layout.
use rayon::prelude::*;

use crate::error::check_len;
use crate::{CoreError, Float, Result};

/// Checks shapes and every position against the table before anything is rotated.
fn validate<T>(
    op: &'static str,
    x: &[T],
    pos: &[u32],
    cos: &[T],
    sin: &[T],
    h: usize,
    d: usize,
) -> Result<()> {
    if d == 0 || !d.is_multiple_of(2) || h == 0 {
        return Err(CoreError::Invalid {
            op,
            msg: format!("head_dim {d} must be even and positive, heads {h} positive"),
        });
    }
    check_len(op, "x", x.len(), pos.len() * h * d)?;
    let half = d / 2;
    if !cos.len().is_multiple_of(half) {
        return Err(CoreError::Invalid {
            op,
            msg: format!(
                "cos table of {} elements is not a whole number of rows of d/2 = {half}",
                cos.len()
            ),
        });
    }
    check_len(op, "sin", sin.len(), cos.len())?;
    let positions = cos.len() / half;
    if let Some((t, &p)) = pos
        .iter()
        .enumerate()
        .find(|(_, &p)| p as usize >= positions)
    {
        return Err(CoreError::Invalid {
            op,
            msg: format!(
                "position {p} of token {t} is beyond the {positions} rows of the cos/sin tables"
            ),
        });
    }
    Ok(())
}

/// Rotates every head of every token by angle `sign * pos * inv_freq`: sign +1 is the forward
/// rotation, -1 its transpose (= inverse), which is the backward.
fn rotate<T: Float>(
    x: &mut [T],
    pos: &[u32],
    cos: &[T],
    sin: &[T],
    h: usize,
    d: usize,
    inverse: bool,
) {
    let half = d / 2;
    x.par_chunks_mut(h * d)
        .zip(pos.par_iter())
        .with_min_len((4096 / (h * d)).max(1))
        .for_each(|(token, &p)| {
            let p = p as usize;
            let cos = &cos[p * half..(p + 1) * half];
            let sin = &sin[p * half..(p + 1) * half];
            for head in token.chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
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
    validate("rope_forward", x, pos, cos, sin, h, d)?;
    rotate(x, pos, cos, sin, h, d, false);
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
    validate("rope_backward", dx, pos, cos, sin, h, d)?;
    rotate(dx, pos, cos, sin, h, d, true);
    Ok(())
}
