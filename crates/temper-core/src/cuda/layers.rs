//! Typed launchers of `kernels/layers.cu`: embedding lookup, RMSNorm forward and backward,
//! RoPE (whole heads or their first `rot` values). Twins: `src/cpu/{embedding,rmsnorm,rope}.rs`.

use cudarc::driver::LaunchConfig;

use super::{check_f32, grid_stride, launch, per_row, CudaBackend, CudaBuf};
use crate::Result;

const EMBEDDING_FORWARD: &str = "embedding_forward";
const RMSNORM_BACKWARD: &str = "rmsnorm_backward";
const RMSNORM_FORWARD: &str = "rmsnorm_forward";
const ROPE: &str = "rope";

/// Its entry points compiled per storage type (suffixes _f32, _bf16, _f16).
pub(super) const KERNELS: &[&str] = &[EMBEDDING_FORWARD, RMSNORM_BACKWARD, RMSNORM_FORWARD, ROPE];

/// out (N, c) = table[ids[i]].
pub(super) fn embedding_forward(
    be: &CudaBackend,
    out: &mut CudaBuf,
    ids: &[u32],
    table: &CudaBuf,
    c: usize,
) -> Result<()> {
    crate::checks::embedding("embedding_forward", out.len, ids, table.len, c)?;
    if ids.is_empty() {
        return Ok(());
    }
    let table = be.converted(table, out.dtype)?;
    let ids_d = be.upload_u32(ids)?;
    let (n, c32) = (ids.len() as u32, c as u32);
    let cfg = LaunchConfig {
        grid_dim: (n, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        be,
        be.kernel(EMBEDDING_FORWARD, out.dtype)?,
        cfg,
        EMBEDDING_FORWARD,
        &mut out.data,
        &*ids_d,
        &table.data,
        &n,
        &c32
    )
}

/// y = x / rms(x) * w per row of c, with rstd = 1 / rms(x) (f32) kept for the backward.
pub(super) fn rmsnorm_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    rstd: &mut CudaBuf,
    x: &CudaBuf,
    w: &CudaBuf,
    c: usize,
    eps: f32,
) -> Result<()> {
    crate::checks::rmsnorm_forward(x.len, w.len, y.len, rstd.len, c)?;
    check_f32("rmsnorm_forward", "rstd", rstd)?;
    let rows = (x.len / c.max(1)) as u32;
    if rows == 0 {
        return Ok(());
    }
    let (x, w) = (be.converted(x, y.dtype)?, be.converted(w, y.dtype)?);
    let c32 = c as u32;
    launch!(
        be,
        be.kernel(RMSNORM_FORWARD, y.dtype)?,
        per_row(rows),
        RMSNORM_FORWARD,
        &mut y.data,
        &mut rstd.data,
        &x.data,
        &w.data,
        &c32,
        &eps
    )
}

/// dx from dy, x, w and the forward's rstd.
pub(super) fn rmsnorm_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    w: &CudaBuf,
    rstd: &CudaBuf,
    c: usize,
) -> Result<()> {
    crate::checks::rmsnorm_backward(x.len, w.len, rstd.len, dy.len, dx.len, c)?;
    check_f32("rmsnorm_backward", "rstd", rstd)?;
    let rows = (x.len / c.max(1)) as u32;
    if rows == 0 {
        return Ok(());
    }
    let dt = dx.dtype;
    let (dy, x, w) = (
        be.converted(dy, dt)?,
        be.converted(x, dt)?,
        be.converted(w, dt)?,
    );
    let c32 = c as u32;
    launch!(
        be,
        be.kernel(RMSNORM_BACKWARD, dt)?,
        per_row(rows),
        RMSNORM_BACKWARD,
        &mut dx.data,
        &dy.data,
        &x.data,
        &w.data,
        &rstd.data,
        &c32
    )
}

/// RoPE in place on x (N, h, d) over the first `rot` values of each head; sign -1 rotates
/// back (the backward).
#[allow(clippy::too_many_arguments)]
pub(super) fn rope(
    be: &CudaBackend,
    x: &mut CudaBuf,
    pos: &[u32],
    cos: &CudaBuf,
    sin: &CudaBuf,
    h: usize,
    d: usize,
    rot: usize,
    sign: f32,
) -> Result<()> {
    let op = match (sign > 0.0, rot == d) {
        (true, true) => "rope_forward",
        (false, true) => "rope_backward",
        (true, false) => "rope_partial_forward",
        (false, false) => "rope_partial_backward",
    };
    if rot == d {
        crate::checks::rope(op, x.len, pos, cos.len, sin.len, h, d)?;
    } else {
        crate::checks::rope_partial(op, x.len, pos, cos.len, sin.len, h, d, rot)?;
    }
    check_f32(op, "cos", cos)?;
    check_f32(op, "sin", sin)?;
    if pos.is_empty() {
        return Ok(());
    }
    let pos_d = be.upload_u32(pos)?;
    let (n, h32, d32, rot32) = (pos.len() as u32, h as u32, d as u32, rot as u32);
    launch!(
        be,
        be.kernel(ROPE, x.dtype)?,
        grid_stride(pos.len() * h * rot / 2),
        op,
        &mut x.data,
        &*pos_d,
        &cos.data,
        &sin.data,
        &n,
        &h32,
        &d32,
        &rot32,
        &sign
    )
}
