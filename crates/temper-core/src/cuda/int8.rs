//! 8-bit frozen weights on the GPU: int8 codes and f32 row scales quantised there
//! (`quantize_int8_rows_*` in `kernels/quant.cu`) or uploaded, dequantised into a buffer of
//! the compute dtype right before each GEMM (`dequant_int8_*` in `kernels/dequant.cu`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig};
use temper_quant::{Int8Rows, INV_127};

use super::{dev_err, grid_stride, launch, CudaBackend, CudaBuf};
use crate::error::check_len;
use crate::memory::Accounting;
use crate::{CoreError, Result};

// Entry points: dequant_int8 (kernels/dequant.cu), quantize_int8_rows (kernels/quant.cu).
pub(super) const DEQUANT_INT8: &str = "dequant_int8";
pub(super) const QUANTIZE_INT8_ROWS: &str = "quantize_int8_rows";

/// An [`Int8Rows`] in device memory, counted until dropped.
pub struct CudaInt8 {
    /// (rows, cols)
    codes: CudaSlice<i8>,
    /// (rows,)
    scales: CudaSlice<f32>,
    cols: usize,
    numel: usize,
    bytes: usize,
    accounting: Arc<Accounting>,
}

impl CudaInt8 {
    pub fn numel(&self) -> usize {
        self.numel
    }
}

impl Drop for CudaInt8 {
    fn drop(&mut self) {
        self.accounting.sub(self.bytes);
    }
}

impl CudaBackend {}

impl CudaBackend {
    /// A copy of an 8-bit matrix in host memory, as [`Backend::upload_int8`] takes it.
    ///
    /// [`Backend::upload_int8`]: crate::Backend::upload_int8
    pub fn download_int8(&self, q: &CudaInt8) -> Result<Int8Rows> {
        let dl = dev_err("download an 8-bit weight");
        let rows = q.numel.checked_div(q.cols).unwrap_or(0);
        let mut codes = self.stream.clone_dtoh(&q.codes).map_err(&dl)?;
        codes.truncate(q.numel);
        let mut scales = self.stream.clone_dtoh(&q.scales).map_err(dl)?;
        scales.truncate(rows);
        Ok(Int8Rows {
            rows,
            cols: q.cols,
            codes,
            scales,
        })
    }
}

pub(super) fn upload(be: &CudaBackend, q: &Int8Rows) -> Result<CudaInt8> {
    q.validate()?;
    let up = |e| dev_err("upload 8-bit weight")(e);
    let codes = be.stream.clone_htod(&q.codes).map_err(up)?;
    let scales = be.stream.clone_htod(&q.scales).map_err(up)?;
    let bytes = q.device_bytes();
    be.accounting.add(bytes);
    Ok(CudaInt8 {
        codes,
        scales,
        cols: q.cols,
        numel: q.numel(),
        bytes,
        accounting: be.accounting.clone(),
    })
}

pub(super) fn dequantize(be: &CudaBackend, out: &mut CudaBuf, q: &CudaInt8) -> Result<()> {
    check_len("dequantize_int8", "out", out.len, q.numel)?;
    if q.numel == 0 {
        return Ok(());
    }
    let (cols, n) = (q.cols as u64, q.numel as u64);
    let f = be.kernel(DEQUANT_INT8, out.dtype)?;
    launch!(
        be,
        f,
        grid_stride(q.numel.div_ceil(8)),
        "dequantize_int8",
        &mut out.data,
        &q.codes,
        &q.scales,
        &INV_127,
        &cols,
        &n
    )
}

/// `values` (rows, cols) quantised row-wise on the GPU.
pub(super) fn quantize(
    be: &CudaBackend,
    values: &CudaBuf,
    rows: usize,
    cols: usize,
    name: &str,
) -> Result<CudaInt8> {
    const OP: &str = "quantize_int8";
    check_len(OP, "values", values.len, rows * cols)?;
    let alloc = dev_err("allocate an 8-bit weight");
    let mut codes = be
        .stream
        .alloc_zeros::<i8>((rows * cols).max(1))
        .map_err(&alloc)?;
    let mut scales = be.stream.alloc_zeros::<f32>(rows.max(1)).map_err(alloc)?;
    if rows * cols > 0 {
        let (rows64, cols32) = (rows as u64, cols as u32);
        let cfg = LaunchConfig {
            grid_dim: (rows.min(65535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            be,
            be.kernel(QUANTIZE_INT8_ROWS, values.dtype)?,
            cfg,
            OP,
            &values.data,
            &mut codes,
            &mut scales,
            &rows64,
            &cols32
        )?;
    }
    let host = be
        .stream
        .clone_dtoh(&scales)
        .map_err(dev_err("download row scales"))?;
    if let Some(r) = host[..rows].iter().position(|s| !s.is_finite()) {
        return Err(CoreError::Invalid {
            op: OP,
            msg: format!(
                "{name}: row {r} holds a value that is not finite in float16 (8-bit weights \
                 are quantised from float16, as bitsandbytes does; float16 holds magnitudes \
                 up to 65504)"
            ),
        });
    }
    let bytes = rows * cols + 4 * rows;
    be.accounting.add(bytes);
    Ok(CudaInt8 {
        codes,
        scales,
        cols,
        numel: rows * cols,
        bytes,
        accounting: be.accounting.clone(),
    })
}
