//! Causal varlen attention with GQA on CUDA (twin: src/cpu/attention.rs). 16-bit activations
//! at the head dims flash.rs has kernels for take the flash kernels; the rest take two paths
//! chosen per sequence:
//! - sequences shorter than [`GEMM_MIN_LEN`] (and runs of them) go to the direct kernels,
//!   one block per (token, head);
//! - longer ones go through cuBLAS: for a chunk of heads, S = scale Q K^T (f32), the
//!   `attention_probs` row kernel turns S into P (causal mask; writes lse), then O = P V.
//!   Backward recomputes P from the saved lse, then dV = P^T dO, dP = dO V^T,
//!   dS = P (dP - D) scale (`attention_dscores`), dQ = dS K, dK = dS^T Q.
//!
//! The scores of a chunk take heads * L^2 * (4 + storage bytes); heads are chunked so this
//! stays under [`SCORES_BUDGET`] bytes (at least one head at a time).

use cudarc::driver::LaunchConfig;

use super::gemm::{Operand, Shape};
use super::{check_f32, launch, CudaBackend, CudaBuf, ROW_THREADS};
use crate::{AttnShape, CoreError, DType, Result};

// The entry points of kernels/attention.cu.
pub(super) const ATTENTION_FORWARD: &str = "attention_forward";
pub(super) const ATTENTION_DECODE: &str = "attention_decode";
pub(super) const ATTENTION_BACKWARD_DOT: &str = "attention_backward_dot";
pub(super) const ATTENTION_BACKWARD_DQ: &str = "attention_backward_dq";
pub(super) const ATTENTION_BACKWARD_DKV: &str = "attention_backward_dkv";
pub(super) const ATTENTION_PROBS: &str = "attention_probs";
pub(super) const ATTENTION_DSCORES: &str = "attention_dscores";
/// Its entry points compiled per storage type (suffixes _f32, _bf16, _f16).
pub(super) const KERNELS: &[&str] = &[
    ATTENTION_FORWARD,
    ATTENTION_DECODE,
    ATTENTION_BACKWARD_DOT,
    ATTENTION_BACKWARD_DQ,
    ATTENTION_BACKWARD_DKV,
    ATTENTION_PROBS,
    ATTENTION_DSCORES,
];

/// Sequences at least this long take the GEMM path.
const GEMM_MIN_LEN: usize = 128;
/// Bytes of scores and probabilities held at once by the GEMM path.
const SCORES_BUDGET: usize = 256 << 20;
/// Threads per block of the direct kernels; head_dim may be up to 4 times this.
const ATTN_THREADS: u32 = 128;

/// For each token, the first token of its sequence and one past its last.
fn token_bounds(cu: &[u32], n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; n];
    let mut ends = vec![0u32; n];
    for w in cu.windows(2) {
        for t in w[0]..w[1] {
            starts[t as usize] = w[0];
            ends[t as usize] = w[1];
        }
    }
    (starts, ends)
}

/// The work of one call: token ranges for the direct kernels, sequences for the GEMM path.
struct Plan {
    direct: Vec<(usize, usize)>,
    gemm: Vec<(usize, usize)>,
}

fn plan(cu: &[u32], d: usize) -> Plan {
    let mut p = Plan {
        direct: vec![],
        gemm: vec![],
    };
    let direct_ok = d <= 4 * ATTN_THREADS as usize;
    for w in cu.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        if b == a {
            continue;
        }
        if b - a >= GEMM_MIN_LEN || !direct_ok {
            p.gemm.push((a, b));
        } else if let Some(last) = p.direct.last_mut().filter(|r| r.1 == a) {
            last.1 = b;
        } else {
            p.direct.push((a, b));
        }
    }
    p
}

/// The direct kernels' launch: one block per (token, head) of a run of `tokens` tokens, with
/// `shared_floats` f32 of shared memory.
fn per_token(tokens: usize, heads: u32, shared_floats: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (tokens as u32, heads, 1),
        block_dim: (ATTN_THREADS, 1, 1),
        shared_mem_bytes: shared_floats * 4,
    }
}

/// Geometry shared by the GEMM path's calls for one sequence and one chunk of kv heads.
struct Chunk {
    /// First token and length of the sequence.
    a: usize,
    len: usize,
    /// Position within the GQA group: query head = kv head * group + g.
    g: usize,
    kv0: usize,
    heads: usize,
}

impl Chunk {
    /// One thread block per score row of each head of the chunk (the row kernels).
    fn score_rows(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.len as u32, self.heads as u32, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The GEMM path's scratch, sized for the longest sequence's chunk, and its chunks in order.
struct GemmWork {
    /// Scores S, f32.
    s: CudaBuf,
    /// Probabilities P (and dS in backward), in the activations' type.
    p: CudaBuf,
    chunks: Vec<Chunk>,
}

/// The CUDA attention outside the flash kernels (float32, or a head dim they lack) has no
/// sliding-window mask; how its refusal names it.
const WINDOWLESS: &str = "CUDA attention for float32 or this head dim (only the bf16/f16 flash \
                          kernels have one)";

impl CudaBackend {
    fn chunk_heads(&self, len: usize, hkv: usize, dt: DType) -> usize {
        let per_head = len * len * (4 + dt.size());
        (SCORES_BUDGET / per_head.max(1)).clamp(1, hkv)
    }

    /// Every (sequence, GQA slot, chunk of kv heads) of the GEMM path's sequences `seqs`
    /// (token ranges), slot by slot within a sequence, with scratch for the largest; None
    /// when there are none.
    fn gemm_work(
        &self,
        seqs: &[(usize, usize)],
        hq: usize,
        hkv: usize,
        dt: DType,
    ) -> Result<Option<GemmWork>> {
        let Some(longest) = seqs.iter().map(|(a, b)| b - a).max() else {
            return Ok(None);
        };
        let heads = self.chunk_heads(longest, hkv, dt);
        let s = self.alloc(heads * longest * longest, DType::F32)?;
        let p = self.alloc(heads * longest * longest, dt)?;
        let mut chunks = vec![];
        for &(a, b) in seqs {
            let len = b - a;
            let heads = self.chunk_heads(len, hkv, dt);
            for g in 0..hq / hkv {
                for kv0 in (0..hkv).step_by(heads) {
                    chunks.push(Chunk {
                        a,
                        len,
                        g,
                        kv0,
                        heads: heads.min(hkv - kv0),
                    });
                }
            }
        }
        Ok(Some(GemmWork { s, p, chunks }))
    }

    /// Strided operand: head `h0 + b * hstep` of rows a.. of x (N, heads, d).
    fn heads_operand(
        &self,
        x: &CudaBuf,
        a: usize,
        heads: usize,
        h0: usize,
        hstep: usize,
        d: usize,
    ) -> Operand {
        Operand {
            ptr: self.ptr(x, (a * heads + h0) * d),
            dtype: x.dtype,
            ld: heads * d,
            stride: hstep * d,
        }
    }

    fn scores_operand(&self, s: &CudaBuf, len: usize) -> Operand {
        Operand {
            ptr: self.ptr(s, 0),
            dtype: s.dtype,
            ld: len,
            stride: len * len,
        }
    }

    /// S (heads, L, L) = scale Q K^T for the chunk.
    fn scores(
        &self,
        s: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        c: &Chunk,
        shape: AttnShape,
    ) -> Result<()> {
        let AttnShape {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
        } = shape;
        let group = hq / hkv;
        self.gemm_raw(
            Shape {
                m: c.len,
                n: c.len,
                k: d,
                ta: false,
                tb: true,
                alpha: 1.0 / (d as f32).sqrt(),
                beta: 0.0,
                batch: c.heads,
            },
            self.heads_operand(q, c.a, hq, c.kv0 * group + c.g, group, d),
            self.heads_operand(k, c.a, hkv, c.kv0, 1, d),
            self.scores_operand(s, c.len),
        )
    }

    /// P from S: softmax with the causal mask (writing lse), or exp(S - lse) when `use_lse`.
    fn probs(
        &self,
        p: &mut CudaBuf,
        lse: &CudaBuf,
        s: &CudaBuf,
        c: &Chunk,
        shape: AttnShape,
        use_lse: bool,
    ) -> Result<()> {
        let AttnShape {
            q_heads: hq,
            kv_heads: hkv,
            ..
        } = shape;
        let group = hq / hkv;
        let (len, tok0, hq32) = (c.len as u32, c.a as u32, hq as u32);
        let (h0, hstep, flag) = (
            (c.kv0 * group + c.g) as u32,
            group as u32,
            i32::from(use_lse),
        );
        let lse_ptr = self.ptr(lse, 0);
        let cfg = c.score_rows();
        launch!(
            self,
            self.kernel(ATTENTION_PROBS, p.dtype)?,
            cfg,
            ATTENTION_PROBS,
            &mut p.data,
            &lse_ptr,
            &s.data,
            &len,
            &tok0,
            &hq32,
            &h0,
            &hstep,
            &flag
        )
    }
}

/// Whether the flash kernels serve this attention; soft-capped scores have no other path on
/// CUDA, so a cap without a capped kernel for `dt` and head dim `d` is an error naming those
/// that exist.
fn flash_serves(
    be: &CudaBackend,
    op: &'static str,
    dt: DType,
    d: usize,
    softcap: Option<f32>,
) -> Result<bool> {
    if softcap.is_none() {
        return Ok(be.flash_applies(dt, d));
    }
    if be.flash_applies_capped(dt, d) {
        return Ok(true);
    }
    // The head dims with capped kernels in a 16-bit type here (bf16 from sm_80, f16 on all).
    let mut dims = be.flash_capped_dims(DType::BF16);
    dims.extend(be.flash_capped_dims(DType::F16));
    dims.sort_unstable();
    dims.dedup();
    let fix = if dims.contains(&d) {
        "train with --dtype bfloat16 (or float16), or use --device cpu"
    } else {
        "use --device cpu"
    };
    Err(CoreError::Invalid {
        op,
        msg: format!(
            "soft-capped attention (attn_logit_softcapping) runs on CUDA in the flash kernels, \
             which exist for 16-bit activations with head dims {dims:?} on this GPU; this model \
             has head dim {d} with {dt} activations: {fix}"
        ),
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    be: &CudaBackend,
    out: &mut CudaBuf,
    lse: &mut CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    cu_seqlens: &[u32],
    shape: AttnShape,
    window: Option<usize>,
    softcap: Option<f32>,
) -> Result<()> {
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let op = "attention_forward";
    let (_, n) = crate::checks::attention(op, q.len, k.len, v.len, cu_seqlens, shape)?;
    crate::checks::attention_buffers(op, n, shape, &[("out", out.len)], &[], lse.len)?;
    check_f32(op, "lse", lse)?;
    if n == 0 {
        return Ok(());
    }
    let dt = out.dtype;
    let (q, k, v) = (
        be.converted(q, dt)?,
        be.converted(k, dt)?,
        be.converted(v, dt)?,
    );
    if flash_serves(be, op, dt, d, softcap)? {
        return be.flash_forward(out, lse, &q, &k, &v, cu_seqlens, shape, window, softcap);
    }
    crate::checks::window_unsupported(op, WINDOWLESS, cu_seqlens, window)?;
    let work = plan(cu_seqlens, d);
    let scale = 1.0 / (d as f32).sqrt();
    let (hq32, hkv32, d32) = (hq as u32, hkv as u32, d as u32);
    if !work.direct.is_empty() {
        let (starts, _) = token_bounds(cu_seqlens, n);
        let starts_d = be.upload_u32(&starts)?;
        for &(a, b) in &work.direct {
            let tok0 = a as u32;
            let cfg = per_token(b - a, hq32, d as u32 + ATTN_THREADS + 32);
            launch!(
                be,
                be.kernel(ATTENTION_FORWARD, dt)?,
                cfg,
                op,
                &mut out.data,
                &mut lse.data,
                &q.data,
                &k.data,
                &v.data,
                &*starts_d,
                &tok0,
                &hq32,
                &hkv32,
                &d32,
                &scale
            )?;
        }
    }
    let Some(GemmWork { s, mut p, chunks }) = be.gemm_work(&work.gemm, hq, hkv, dt)? else {
        return Ok(());
    };
    let group = hq / hkv;
    for c in &chunks {
        let (a, len, kv0, g) = (c.a, c.len, c.kv0, c.g);
        be.scores(&s, &q, &k, c, shape)?;

        be.probs(&mut p, lse, &s, c, shape, false)?;
        // O[h] (L, d) = P (L, L) V[kv] (L, d)
        be.gemm_raw(
            Shape {
                m: len,
                n: d,
                k: len,
                ta: false,
                tb: false,
                alpha: 1.0,
                beta: 0.0,
                batch: c.heads,
            },
            be.scores_operand(&p, len),
            be.heads_operand(&v, a, hkv, kv0, 1, d),
            be.heads_operand(out, a, hq, kv0 * group + g, group, d),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &CudaBackend,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
    dout: &CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    out: &CudaBuf,
    lse: &CudaBuf,
    cu_seqlens: &[u32],
    shape: AttnShape,
    window: Option<usize>,
    softcap: Option<f32>,
) -> Result<()> {
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let op = "attention_backward";
    let (_, n) = crate::checks::attention(op, q.len, k.len, v.len, cu_seqlens, shape)?;
    crate::checks::attention_buffers(
        op,
        n,
        shape,
        &[("dq", dq.len), ("dout", dout.len), ("out", out.len)],
        &[("dk", dk.len), ("dv", dv.len)],
        lse.len,
    )?;
    check_f32(op, "lse", lse)?;
    if n == 0 {
        return Ok(());
    }
    let dt = dq.dtype;
    if dk.dtype != dt || dv.dtype != dt {
        return Err(CoreError::Invalid {
            op,
            msg: format!("dq is {dt} but dk is {} and dv {}", dk.dtype, dv.dtype),
        });
    }
    let (dout, q, k, v, out) = (
        be.converted(dout, dt)?,
        be.converted(q, dt)?,
        be.converted(k, dt)?,
        be.converted(v, dt)?,
        be.converted(out, dt)?,
    );
    let scale = 1.0 / (d as f32).sqrt();
    let (hq32, hkv32, d32) = (hq as u32, hkv as u32, d as u32);
    // D (N, hq) = rowsum(dO * O)
    let mut dsum = be.alloc(n * hq, DType::F32)?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, hq32, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        be,
        be.kernel(ATTENTION_BACKWARD_DOT, dt)?,
        cfg,
        ATTENTION_BACKWARD_DOT,
        &mut dsum.data,
        &dout.data,
        &out.data,
        &hq32,
        &d32
    )?;
    if flash_serves(be, op, dt, d, softcap)? {
        return be.flash_backward(
            dq, dk, dv, &dout, &q, &k, &v, lse, &dsum, cu_seqlens, shape, window, softcap,
        );
    }
    crate::checks::window_unsupported(op, WINDOWLESS, cu_seqlens, window)?;
    let work = plan(cu_seqlens, d);
    if !work.direct.is_empty() {
        let (starts, ends) = token_bounds(cu_seqlens, n);
        let starts_d = be.upload_u32(&starts)?;
        let ends_d = be.upload_u32(&ends)?;
        for &(a, b) in &work.direct {
            let tok0 = a as u32;
            let cfg = per_token(b - a, hq32, 2 * d as u32 + ATTN_THREADS);
            launch!(
                be,
                be.kernel(ATTENTION_BACKWARD_DQ, dt)?,
                cfg,
                ATTENTION_BACKWARD_DQ,
                &mut dq.data,
                &dout.data,
                &q.data,
                &k.data,
                &v.data,
                &lse.data,
                &dsum.data,
                &*starts_d,
                &tok0,
                &hq32,
                &hkv32,
                &d32,
                &scale
            )?;
            let cfg = per_token(b - a, hkv32, 2 * d as u32 + 2 * ATTN_THREADS);
            launch!(
                be,
                be.kernel(ATTENTION_BACKWARD_DKV, dt)?,
                cfg,
                ATTENTION_BACKWARD_DKV,
                &mut dk.data,
                &mut dv.data,
                &dout.data,
                &q.data,
                &k.data,
                &v.data,
                &lse.data,
                &dsum.data,
                &*ends_d,
                &tok0,
                &hq32,
                &hkv32,
                &d32,
                &scale
            )?;
        }
    }
    let Some(GemmWork { s, mut p, chunks }) = be.gemm_work(&work.gemm, hq, hkv, dt)? else {
        return Ok(());
    };
    let group = hq / hkv;
    for c in &chunks {
        let (a, len, kv0, g) = (c.a, c.len, c.kv0, c.g);
        // The group's query heads add into the same dK and dV.
        let beta = if g == 0 { 0.0 } else { 1.0 };
        let h0 = kv0 * group + g;
        let gemm_shape = |m, n, k, ta, tb, beta| Shape {
            m,
            n,
            k,
            ta,
            tb,
            alpha: 1.0,
            beta,
            batch: c.heads,
        };
        be.scores(&s, &q, &k, c, shape)?;
        be.probs(&mut p, lse, &s, c, shape, true)?;
        // dV[kv] (L, d) (+)= P^T (L, L) dO[h] (L, d)
        be.gemm_raw(
            gemm_shape(len, d, len, true, false, beta),
            be.scores_operand(&p, len),
            be.heads_operand(&dout, a, hq, h0, group, d),
            be.heads_operand(dv, a, hkv, kv0, 1, d),
        )?;
        // dP (L, L) = dO[h] V[kv]^T, over S
        be.gemm_raw(
            gemm_shape(len, len, d, false, true, 0.0),
            be.heads_operand(&dout, a, hq, h0, group, d),
            be.heads_operand(&v, a, hkv, kv0, 1, d),
            be.scores_operand(&s, len),
        )?;
        // dS = P (dP - D) scale, over P
        let (len32, tok0, h032, hstep) = (len as u32, a as u32, h0 as u32, group as u32);
        let cfg = c.score_rows();
        launch!(
            be,
            be.kernel(ATTENTION_DSCORES, dt)?,
            cfg,
            ATTENTION_DSCORES,
            &mut p.data,
            &s.data,
            &dsum.data,
            &len32,
            &tok0,
            &hq32,
            &h032,
            &hstep,
            &scale
        )?;
        // dQ[h] (L, d) = dS (L, L) K[kv] (L, d)
        be.gemm_raw(
            gemm_shape(len, d, len, false, false, 0.0),
            be.scores_operand(&p, len),
            be.heads_operand(&k, a, hkv, kv0, 1, d),
            be.heads_operand(dq, a, hq, h0, group, d),
        )?;
        // dK[kv] (L, d) (+)= dS^T (L, L) Q[h] (L, d)
        be.gemm_raw(
            gemm_shape(len, d, len, true, false, beta),
            be.scores_operand(&p, len),
            be.heads_operand(&q, a, hq, h0, group, d),
            be.heads_operand(dk, a, hkv, kv0, 1, d),
        )?;
    }
    Ok(())
}

pub(super) fn decode(
    be: &CudaBackend,
    out: &mut CudaBuf,
    q: &CudaBuf,
    k_cache: &CudaBuf,
    v_cache: &CudaBuf,
    past: usize,
    shape: AttnShape,
) -> Result<()> {
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let bad = |msg: String| CoreError::Invalid {
        op: "attention_decode",
        msg,
    };
    let n = crate::checks::attention_decode(q.len, out.len, k_cache.len, v_cache.len, past, shape)?;
    if d > 4 * ATTN_THREADS as usize {
        return Err(bad(format!(
            "head dim {d} is more than the decode kernel's {}",
            4 * ATTN_THREADS
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let dt = out.dtype;
    let (q, k_cache, v_cache) = (
        be.converted(q, dt)?,
        be.converted(k_cache, dt)?,
        be.converted(v_cache, dt)?,
    );
    let scale = 1.0 / (d as f32).sqrt();
    let (past32, hq32, hkv32, d32) = (past as u32, hq as u32, hkv as u32, d as u32);
    let cfg = per_token(n, hq32, d as u32 + ATTN_THREADS + 32);
    launch!(
        be,
        be.kernel(ATTENTION_DECODE, dt)?,
        cfg,
        ATTENTION_DECODE,
        &mut out.data,
        &q.data,
        &k_cache.data,
        &v_cache.data,
        &past32,
        &hq32,
        &hkv32,
        &d32,
        &scale
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sequences_merge_into_direct_runs_and_long_ones_take_gemms() {
        let p = plan(&[0, 5, 9, 9 + 300, 9 + 300 + 3, 9 + 300 + 7], 64);
        assert_eq!(p.direct, vec![(0, 9), (309, 316)]);
        assert_eq!(p.gemm, vec![(9, 309)]);
        // Head dims beyond the direct kernels' reach always take the GEMM path.
        let p = plan(&[0, 5], 1024);
        assert!(p.direct.is_empty());
        assert_eq!(p.gemm, vec![(0, 5)]);
    }
}
