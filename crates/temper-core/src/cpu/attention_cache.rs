//! Attention of new queries against a KV cache: the decode-time twin of
//! [`super::attention::attention_forward`] for one sequence.
//!
//! The cache holds the keys and values of positions 0..past+n of one sequence, token-major
//! (cap, hkv, d), so appending a token's keys is one contiguous copy. The n new queries sit
//! at positions past..past+n; query i sees keys 0..=past+i, which is exactly what causal
//! attention over the whole sequence gives its last n rows. With past = 0 it is the prefill
//! of a prompt. rayon runs one (query, head) row per task; each row owns its output, so
//! results do not depend on scheduling.
use rayon::prelude::*;

use crate::cpu::lit;
use crate::{AttnShape, Float, Result};

/// Writes out (n, hq, d) = softmax(scale q k^T + causal mask) v for n queries at positions
/// past..past+n, with k and v read from the first past+n rows of the caches (scale
/// 1/sqrt(d)); query head j reads kv head j / (hq/hkv). The caches may be longer than
/// past+n (their capacity); rows beyond are not read.
pub fn attention_decode<T: Float>(
    out: &mut [T], // (n, hq, d)
    q: &[T],       // (n, hq, d)
    k_cache: &[T], // (cap, hkv, d), rows 0..past+n filled
    v_cache: &[T], // (cap, hkv, d), rows 0..past+n filled
    past: usize,
    shape: AttnShape,
) -> Result<()> {
    attention_decode_capped(out, q, k_cache, v_cache, past, shape, None)
}

/// [`attention_decode`] with the scaled scores soft-capped (s -> cap * tanh(s / cap)) when
/// `softcap` is given, as [`super::attention::attention_forward_capped`] does.
pub fn attention_decode_capped<T: Float>(
    out: &mut [T], // (n, hq, d)
    q: &[T],       // (n, hq, d)
    k_cache: &[T], // (cap, hkv, d), rows 0..past+n filled
    v_cache: &[T], // (cap, hkv, d), rows 0..past+n filled
    past: usize,
    shape: AttnShape,
    softcap: Option<f32>,
) -> Result<()> {
    const OP: &str = "attention_decode";
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let cap = crate::checks::softcap(OP, softcap)?.map(|c| lit::<T>(c as f64));
    crate::checks::attention_decode(
        q.len(),
        out.len(),
        k_cache.len(),
        v_cache.len(),
        past,
        shape,
    )?;
    let group = hq / hkv;
    let scale = T::one() / lit::<T>(d as f64).sqrt();
    out.par_chunks_mut(d)
        .enumerate()
        .for_each_init(Vec::new, |s, (r, out_r)| {
            let (i, j) = (r / hq, r % hq);
            let g = j / group;
            let q_r = &q[r * d..(r + 1) * d]; // (d)
            let keys = past + i + 1;
            // s (keys) = scale * q_r . k_t
            s.clear();
            s.extend((0..keys).map(|t| {
                let k_t = &k_cache[(t * hkv + g) * d..][..d];
                let s = scale * q_r.iter().zip(k_t).map(|(&a, &b)| a * b).sum::<T>();
                cap.map_or(s, |cap| cap * (s / cap).tanh())
            }));
            let max = s.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
            let mut sum = T::zero();
            for x in s.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = T::one() / sum;
            // out_r (d) = sum_t p_t v_t
            out_r.fill(T::zero());
            for (t, &p) in s.iter().enumerate() {
                let p = p * inv;
                let v_t = &v_cache[(t * hkv + g) * d..][..d];
                for (o, &v) in out_r.iter_mut().zip(v_t) {
                    *o += p * v;
                }
            }
        });
    Ok(())
}

/// dst[dst_off..dst_off + len] = src[src_off..src_off + len].
pub fn copy_range<T: Copy>(
    dst: &mut [T],
    dst_off: usize,
    src: &[T],
    src_off: usize,
    len: usize,
) -> Result<()> {
    crate::checks::copy_range(dst.len(), dst_off, src.len(), src_off, len)?;
    dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
    Ok(())
}
