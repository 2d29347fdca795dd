//! Fused projections (Phi-3's qkv_proj and gate_up_proj): their output's column blocks apart
//! in the forward, and the blocks' gradients side by side again in the backward.

use temper_core::Backend;

use crate::error::Result;

/// The column blocks of a fused projection's output y (N, sum of widths) into `parts`.
pub(crate) fn split_columns<B: Backend>(
    be: &B,
    y: &B::Buf,
    parts: &mut [(&mut B::Buf, usize)],
    n: usize,
) -> Result<()> {
    let total: usize = parts.iter().map(|(_, w)| w).sum();
    let mut off = 0;
    for (dst, width) in parts.iter_mut() {
        be.copy_columns(dst, *width, 0, y, total, off, *width, n)?;
        off += *width;
    }
    Ok(())
}

/// The inverse of [`split_columns`]: the parts' gradients side by side (N, total).
pub(crate) fn join_columns<B: Backend>(
    be: &B,
    parts: &[(&B::Buf, usize)],
    n: usize,
) -> Result<B::Buf> {
    let total: usize = parts.iter().map(|(_, w)| w).sum();
    let mut y = be.act_uninit(n * total)?;
    let mut off = 0;
    for (src, width) in parts {
        be.copy_columns(&mut y, total, off, src, *width, 0, *width, n)?;
        off += *width;
    }
    Ok(y)
}
