//! Causal varlen attention with GQA, optionally within a sliding window: with window w,
//! query i sees keys j with i - w < j <= i (transformers' `kv_idx > q_idx - sliding_window`),
//! and optionally with the scores soft-capped (Gemma 2): s -> cap * tanh(s / cap).
//!
//! Work is cut into tiles of at most [`BLOCK`] consecutive tokens of one sequence; rayon runs
//! the tiles in parallel and each tile owns the output rows of its tokens, so no two threads
//! write the same element and results do not depend on scheduling. Inside a tile, products
//! of one head's rows run through `gemm` on strided views of the (N, heads, d) buffers.
//! The backward recomputes probabilities from `lse` (flash-attention style) in two passes:
//! query tiles for dq, key tiles for dk and dv.
use rayon::prelude::*;

use crate::cpu::lit;
use crate::cpu::matmul::{gemm_strided, Strided};
use crate::{AttnShape, Float, Result};

/// Tokens per tile.
const BLOCK: usize = 64;

/// Tokens t0..t1 of the sequence s0..s1.
#[derive(Clone, Copy, Debug)]
struct Tile {
    s0: usize,
    s1: usize,
    t0: usize,
    t1: usize,
}

impl Tile {
    fn len(&self) -> usize {
        self.t1 - self.t0
    }
}

/// Tiles in token order, covering 0..N; empty sequences give none.
fn tiles(cu_seqlens: &[u32]) -> Vec<Tile> {
    let mut out = Vec::new();
    for w in cu_seqlens.windows(2) {
        let (s0, s1) = (w[0] as usize, w[1] as usize);
        for t0 in (s0..s1).step_by(BLOCK) {
            out.push(Tile {
                s0,
                s1,
                t0,
                t1: (t0 + BLOCK).min(s1),
            });
        }
    }
    out
}

/// Splits a (N, row) buffer into the disjoint (tile.len(), row) pieces of the tiles.
fn split_tiles<'a, T>(mut buf: &'a mut [T], tiles: &[Tile], row: usize) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(tiles.len());
    for tile in tiles {
        let (piece, rest) = std::mem::take(&mut buf).split_at_mut(tile.len() * row);
        pieces.push(piece);
        buf = rest;
    }
    pieces
}

/// The first key a query tile starting at t0 of the sequence starting at s0 can see.
fn first_key(s0: usize, t0: usize, window: Option<usize>) -> usize {
    window.map_or(s0, |w| (t0 + 1).saturating_sub(w).max(s0))
}

/// The keys query i sees, as a range of columns of a score row whose column 0 is key `k0`.
fn live_keys(i: usize, k0: usize, window: Option<usize>) -> (usize, usize) {
    let lo = window.map_or(k0, |w| (i + 1).saturating_sub(w).max(k0));
    (lo - k0, i + 1 - k0)
}

/// Rows t0..t0+rows of head `head` in a (N, heads, d) buffer, as a (rows, d) view.
fn head_rows(t0: usize, rows: usize, head: usize, heads: usize, d: usize) -> Strided {
    Strided {
        offset: (t0 * heads + head) * d,
        rows,
        cols: d,
        rs: heads * d,
        cs: 1,
    }
}

/// Writes out (N, hq, d) = softmax(scale q k^T + causal mask) v per sequence and query head,
/// and lse (N, hq) = log-sum-exp of the scaled scores over the allowed keys. `window`: the
/// sliding window (None: every earlier key).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    out: &mut [T],      // (N, hq, d)
    lse: &mut [T],      // (N, hq)
    q: &[T],            // (N, hq, d)
    k: &[T],            // (N, hkv, d)
    v: &[T],            // (N, hkv, d)
    cu_seqlens: &[u32], // (S + 1)
    shape: AttnShape,
    window: Option<usize>,
) -> Result<()> {
    attention_forward_capped(out, lse, q, k, v, cu_seqlens, shape, window, None)
}

/// [`attention_forward`] with the scaled scores soft-capped first when `softcap` is given:
/// s -> cap * tanh(s / cap); the lse is of the capped scores.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_capped<T: Float>(
    out: &mut [T],      // (N, hq, d)
    lse: &mut [T],      // (N, hq)
    q: &[T],            // (N, hq, d)
    k: &[T],            // (N, hkv, d)
    v: &[T],            // (N, hkv, d)
    cu_seqlens: &[u32], // (S + 1)
    shape: AttnShape,
    window: Option<usize>,
    softcap: Option<f32>,
) -> Result<()> {
    const OP: &str = "attention_forward";
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let (group, n) = crate::checks::attention(OP, q.len(), k.len(), v.len(), cu_seqlens, shape)?;
    crate::checks::attention_buffers(OP, n, shape, &[("out", out.len())], &[], lse.len())?;
    let window = crate::checks::attention_window(OP, cu_seqlens, window)?;
    let cap = crate::checks::softcap(OP, softcap)?.map(|c| lit::<T>(c as f64));
    let scale = T::one() / lit::<T>(d as f64).sqrt();
    let tiles = tiles(cu_seqlens);
    let outs = split_tiles(out, &tiles, hq * d);
    let lses = split_tiles(lse, &tiles, hq);
    tiles.into_par_iter().zip(outs).zip(lses).for_each_init(
        Vec::new,
        |p, ((tile, out_t), lse_t)| {
            let Tile { s0, t0, t1, .. } = tile;
            // Queries t0..t1 see keys k0..t1: query i sees columns live_keys(i).
            let k0 = first_key(s0, t0, window);
            let (rows, lk) = (t1 - t0, t1 - k0);
            p.resize(rows * lk, T::zero());
            for j in 0..hq {
                let g = j / group;
                // p (rows, lk) = scale * q_j k_g^T
                gemm_strided(
                    p,
                    Strided::dense(rows, lk),
                    q,
                    head_rows(t0, rows, j, hq, d),
                    k,
                    head_rows(k0, lk, g, hkv, d).t(),
                    scale,
                    T::zero(),
                );
                for (r, row) in p.chunks_exact_mut(lk).enumerate() {
                    let (lo, hi) = live_keys(t0 + r, k0, window);
                    let (row, after) = row.split_at_mut(hi);
                    after.fill(T::zero());
                    let (before, live) = row.split_at_mut(lo);
                    before.fill(T::zero());
                    if let Some(cap) = cap {
                        live.iter_mut().for_each(|s| *s = cap * (*s / cap).tanh());
                    }
                    let max = live.iter().fold(T::neg_infinity(), |m, &s| m.max(s));
                    let mut sum = T::zero();
                    for s in live.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = T::one() / sum;
                    live.iter_mut().for_each(|s| *s *= inv);
                    lse_t[r * hq + j] = max + sum.ln();
                }
                // out_j (rows, d) = softmax (rows, lk) v_g (lk, d)
                gemm_strided(
                    out_t,
                    head_rows(0, rows, j, hq, d),
                    p,
                    Strided::dense(rows, lk),
                    v,
                    head_rows(k0, lk, g, hkv, d),
                    T::one(),
                    T::zero(),
                );
            }
        },
    );
    Ok(())
}

/// Writes dq (N, hq, d), dk and dv (N, hkv, d) (overwritten, not accumulated).
/// With P_ij = exp(s_ij - lse_i) and D_i = dout_i . out_i:
/// dv_j = sum_i P_ij dout_i, dS_ij = P_ij (dout_i . v_j - D_i), dq_i = scale sum_j dS_ij k_j,
/// dk_j = scale sum_i dS_ij q_i, with dk and dv summed over the query heads of a kv group.
/// `window` as in [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dq: &mut [T],       // (N, hq, d)
    dk: &mut [T],       // (N, hkv, d)
    dv: &mut [T],       // (N, hkv, d)
    dout: &[T],         // (N, hq, d)
    q: &[T],            // (N, hq, d)
    k: &[T],            // (N, hkv, d)
    v: &[T],            // (N, hkv, d)
    out: &[T],          // (N, hq, d)
    lse: &[T],          // (N, hq)
    cu_seqlens: &[u32], // (S + 1)
    shape: AttnShape,
    window: Option<usize>,
) -> Result<()> {
    attention_backward_capped(
        dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape, window, None,
    )
}

/// The gradient's factor for a raw score s: with t = tanh(s / cap), the capped score is
/// cap * t and d(cap * t)/ds = 1 - t^2; returns (the capped score, that factor).
#[inline]
fn capped<T: Float>(s: T, cap: Option<T>) -> (T, T) {
    match cap {
        Some(cap) => {
            let t = (s / cap).tanh();
            (cap * t, T::one() - t * t)
        }
        None => (s, T::one()),
    }
}

/// [`attention_backward`] of [`attention_forward_capped`]: dS is multiplied by the cap's
/// derivative 1 - tanh^2(s / cap) before it reaches q and k.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_capped<T: Float>(
    dq: &mut [T],       // (N, hq, d)
    dk: &mut [T],       // (N, hkv, d)
    dv: &mut [T],       // (N, hkv, d)
    dout: &[T],         // (N, hq, d)
    q: &[T],            // (N, hq, d)
    k: &[T],            // (N, hkv, d)
    v: &[T],            // (N, hkv, d)
    out: &[T],          // (N, hq, d)
    lse: &[T],          // (N, hq)
    cu_seqlens: &[u32], // (S + 1)
    shape: AttnShape,
    window: Option<usize>,
    softcap: Option<f32>,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let (group, n) = crate::checks::attention(OP, q.len(), k.len(), v.len(), cu_seqlens, shape)?;
    crate::checks::attention_buffers(
        OP,
        n,
        shape,
        &[("out", out.len()), ("dout", dout.len()), ("dq", dq.len())],
        &[("dk", dk.len()), ("dv", dv.len())],
        lse.len(),
    )?;
    let window = crate::checks::attention_window(OP, cu_seqlens, window)?;
    let cap = crate::checks::softcap(OP, softcap)?.map(|c| lit::<T>(c as f64));
    let scale = T::one() / lit::<T>(d as f64).sqrt();
    let tiles = tiles(cu_seqlens);

    // D (N, hq) = rowsum(dout * out)
    let delta: Vec<T> = dout
        .par_chunks(d)
        .zip(out.par_chunks(d))
        .with_min_len(256)
        .map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| a * b).sum())
        .collect();

    // Pass 1, query tiles: dq_i = scale sum_{j <= i} dS_ij k_j (j inside the window).
    let dqs = split_tiles(dq, &tiles, hq * d);
    tiles.par_iter().zip(dqs).for_each_init(
        || (Vec::new(), Vec::new()),
        |(p, dp), (&tile, dq_t)| {
            let Tile { s0, t0, t1, .. } = tile;
            let k0 = first_key(s0, t0, window);
            let (rows, lk) = (t1 - t0, t1 - k0);
            p.resize(rows * lk, T::zero());
            dp.resize(rows * lk, T::zero());
            for j in 0..hq {
                let g = j / group;
                let (qj, kg) = (head_rows(t0, rows, j, hq, d), head_rows(k0, lk, g, hkv, d));
                gemm_strided(
                    p,
                    Strided::dense(rows, lk),
                    q,
                    qj,
                    k,
                    kg.t(),
                    scale,
                    T::zero(),
                );
                // dp (rows, lk) = dout_j v_g^T
                gemm_strided(
                    dp,
                    Strided::dense(rows, lk),
                    dout,
                    qj,
                    v,
                    kg.t(),
                    T::one(),
                    T::zero(),
                );
                for (r, (row, dp_row)) in
                    p.chunks_exact_mut(lk).zip(dp.chunks_exact(lk)).enumerate()
                {
                    let i = t0 + r;
                    let (lse_i, d_i) = (lse[i * hq + j], delta[i * hq + j]);
                    let (lo, hi) = live_keys(i, k0, window);
                    let (row, after) = row.split_at_mut(hi);
                    after.fill(T::zero());
                    let (before, live) = row.split_at_mut(lo);
                    before.fill(T::zero());
                    for (s, &dp) in live.iter_mut().zip(&dp_row[lo..hi]) {
                        let (sc, dcap) = capped(*s, cap);
                        *s = (sc - lse_i).exp() * (dp - d_i) * dcap; // dS
                    }
                }
                // dq_j (rows, d) = scale * dS (rows, lk) k_g (lk, d)
                gemm_strided(
                    dq_t,
                    head_rows(0, rows, j, hq, d),
                    p,
                    Strided::dense(rows, lk),
                    k,
                    kg,
                    scale,
                    T::zero(),
                );
            }
        },
    );

    // Pass 2, key tiles: dv_t = sum_{i >= t} P_it dout_i, dk_t = scale sum_{i >= t} dS_it q_i,
    // over the queries t0..s1 (those that see the tile's keys: t0..t1 - 1 + w with a window)
    // and every query head of each kv head.
    let dks = split_tiles(dk, &tiles, hkv * d);
    let dvs = split_tiles(dv, &tiles, hkv * d);
    tiles.par_iter().zip(dks).zip(dvs).for_each_init(
        || (Vec::new(), Vec::new()),
        |(pt, dpt), ((&tile, dk_t), dv_t)| {
            let Tile { s1, t0, t1, .. } = tile;
            // Keys t0..t1 are seen by queries t0..q1: key t0 + r by queries t0 + r on (up to,
            // not including, t0 + r + w with a window).
            let q1 = window.map_or(s1, |w| (t1 - 1 + w).min(s1));
            let (rows, lq) = (t1 - t0, q1 - t0);
            pt.resize(rows * lq, T::zero());
            dpt.resize(rows * lq, T::zero());
            for g in 0..hkv {
                let (kg, dkv_g) = (
                    head_rows(t0, rows, g, hkv, d),
                    head_rows(0, rows, g, hkv, d),
                );
                for j in g * group..(g + 1) * group {
                    let qj = head_rows(t0, lq, j, hq, d);
                    // First head of the group overwrites, the others accumulate.
                    let beta = if j == g * group { T::zero() } else { T::one() };
                    // pt (rows, lq) = scale * k_g q_j^T, then P^T
                    gemm_strided(
                        pt,
                        Strided::dense(rows, lq),
                        k,
                        kg,
                        q,
                        qj.t(),
                        scale,
                        T::zero(),
                    );
                    // dpt (rows, lq) = v_g dout_j^T
                    gemm_strided(
                        dpt,
                        Strided::dense(rows, lq),
                        v,
                        kg,
                        dout,
                        qj.t(),
                        T::one(),
                        T::zero(),
                    );
                    for (r, (row, dp_row)) in pt
                        .chunks_exact_mut(lq)
                        .zip(dpt.chunks_exact_mut(lq))
                        .enumerate()
                    {
                        let hi = window.map_or(lq, |w| (r + w).min(lq));
                        row[hi..].fill(T::zero());
                        dp_row[hi..].fill(T::zero());
                        let (masked, live) = row[..hi].split_at_mut(r);
                        masked.fill(T::zero());
                        dp_row[..r].fill(T::zero());
                        for (c, (s, dp)) in live.iter_mut().zip(&mut dp_row[r..hi]).enumerate() {
                            let i = t0 + r + c;
                            let (sc, dcap) = capped(*s, cap);
                            *s = (sc - lse[i * hq + j]).exp(); // P^T
                            *dp = *s * (*dp - delta[i * hq + j]) * dcap; // dS^T
                        }
                    }
                    // dv_g (rows, d) (+)= P^T (rows, lq) dout_j (lq, d)
                    gemm_strided(
                        dv_t,
                        dkv_g,
                        pt,
                        Strided::dense(rows, lq),
                        dout,
                        qj,
                        T::one(),
                        beta,
                    );
                    // dk_g (rows, d) (+)= scale * dS^T (rows, lq) q_j (lq, d)
                    gemm_strided(
                        dk_t,
                        dkv_g,
                        dpt,
                        Strided::dense(rows, lq),
                        q,
                        qj,
                        scale,
                        beta,
                    );
                }
            }
        },
    );
    Ok(())
}
