//! Column blocks of row-major matrices: splitting a fused projection's output (Phi-3's
//! `qkv_proj`, `gate_up_proj`) into its parts, and joining the parts' gradients back.
use rayon::prelude::*;

use crate::Result;

/// For every row r < rows: dst[r, dst_off..dst_off + width] = src[r, src_off..src_off + width],
/// with dst (rows, dst_cols) and src (rows, src_cols). Other columns of dst are left as they are.
#[allow(clippy::too_many_arguments)]
pub fn copy_columns<T: Copy + Send + Sync>(
    dst: &mut [T],
    dst_cols: usize,
    dst_off: usize,
    src: &[T],
    src_cols: usize,
    src_off: usize,
    width: usize,
    rows: usize,
) -> Result<()> {
    crate::checks::copy_columns(
        dst.len(),
        dst_cols,
        dst_off,
        src.len(),
        src_cols,
        src_off,
        width,
        rows,
    )?;
    if width == 0 || rows == 0 {
        return Ok(());
    }
    dst.par_chunks_mut(dst_cols)
        .zip(src.par_chunks(src_cols))
        .with_min_len(64)
        .for_each(|(d, s)| {
            d[dst_off..dst_off + width].copy_from_slice(&s[src_off..src_off + width]);
        });
    Ok(())
}
