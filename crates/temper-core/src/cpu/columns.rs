//! Column blocks of row-major matrices: splitting a fused projection's output (Phi-3's
//! `qkv_proj`, `gate_up_proj`) into its parts, and joining the parts' gradients back.
use rayon::prelude::*;

use crate::{CoreError, Result};

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
    let bad = |msg: String| CoreError::Invalid {
        op: "copy_columns",
        msg,
    };
    if dst_off + width > dst_cols || src_off + width > src_cols {
        return Err(bad(format!(
            "columns {dst_off}..{} of {dst_cols} (dst) or {src_off}..{} of {src_cols} (src) are out of range",
            dst_off + width,
            src_off + width
        )));
    }
    if dst.len() != rows * dst_cols || src.len() != rows * src_cols {
        return Err(bad(format!(
            "dst holds {} and src {} elements, expected {rows} rows of {dst_cols} and {src_cols}",
            dst.len(),
            src.len()
        )));
    }
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
