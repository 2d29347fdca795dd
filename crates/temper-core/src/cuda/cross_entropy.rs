//! The launcher of `kernels/cross_entropy.cu`: the LM head fused with the cross-entropy loss,
//! over chunks of rows (logits of one chunk in memory at a time). Twin:
//! `src/cpu/cross_entropy.rs`.

use super::{dev_err, launch, per_row, CudaBackend, CudaBuf};
use crate::backend::Gemm;
use crate::{DType, Result};

const CROSS_ENTROPY_ROWS: &str = "cross_entropy_rows";

/// Its entry points compiled per storage type (suffixes _f32, _bf16, _f16).
pub(super) const KERNELS: &[&str] = &[CROSS_ENTROPY_ROWS];

/// Per-row losses of logits = x W^T against targets (negative: ignored), in chunks of rows,
/// writing dx (the loss gradient through the head, times grad_scale) when given; with
/// `softcap` the logits are soft-capped first (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_cross_entropy(
    be: &CudaBackend,
    mut dx: Option<&mut CudaBuf>,
    x: &CudaBuf,
    w: &CudaBuf,
    targets: &[i32],
    c: usize,
    v: usize,
    grad_scale: f32,
    chunk: usize,
    softcap: Option<f32>,
) -> Result<Vec<f32>> {
    let n = targets.len();
    let dx_len = dx.as_deref().map(|dx| dx.len);
    crate::checks::linear_cross_entropy(x.len, w.len, dx_len, targets, c, v)?;
    if n == 0 {
        return Ok(vec![]);
    }
    let x = be.converted(x, w.dtype)?;
    // Any negative target is ignored, as on the CPU.
    let clean: Vec<i32> = targets
        .iter()
        .map(|&t| if t < 0 { -1 } else { t })
        .collect();
    let targets_d = be
        .stream
        .clone_htod(&clean)
        .map_err(dev_err("upload targets"))?;
    let chunk = chunk.clamp(1, n);
    // Logits are f32; dlogits take the type of W for the dx GEMM (over the logits when f32).
    let logits = be.alloc(chunk * v, DType::F32)?;
    let separate_grad = dx.is_some() && w.dtype != DType::F32;
    let dlogits = if separate_grad {
        Some(be.alloc(chunk * v, w.dtype)?)
    } else {
        None
    };
    let grad_buf = dlogits.as_ref().unwrap_or(&logits);
    let mut loss = be
        .stream
        .alloc_zeros::<f32>(n)
        .map_err(dev_err("alloc loss"))?;
    let (v32, write) = (v as u32, i32::from(dx.is_some()));
    let cap = softcap.unwrap_or(0.0);
    let ce = be.kernel(CROSS_ENTROPY_ROWS, grad_buf.dtype)?;
    for a in (0..n).step_by(chunk) {
        let b = (a + chunk).min(n);
        let rows = b - a;
        // logits (rows, V) = x[a..b] (rows, c) W^T
        be.matmul_at(&logits, 0, &x, a * c, w, 0, Gemm::nt(rows, v, c))?;
        let logits_ptr = be.ptr(&logits, 0);
        let grad_ptr = be.ptr(grad_buf, 0);
        let mut loss_view = loss.slice_mut(a..b);
        let target_view = targets_d.slice(a..b);
        launch!(
            be,
            ce,
            per_row(rows as u32),
            CROSS_ENTROPY_ROWS,
            &logits_ptr,
            &grad_ptr,
            &mut loss_view,
            &target_view,
            &v32,
            &grad_scale,
            &write,
            &cap
        )?;
        if let Some(dx) = dx.as_deref_mut() {
            // dx[a..b] (rows, c) = dlogits (rows, V) W (V, c)
            be.matmul_at(dx, a * c, grad_buf, 0, w, 0, Gemm::nn(rows, c, v))?;
        }
    }
    be.stream
        .clone_dtoh(&loss)
        .map_err(dev_err("download losses"))
}
