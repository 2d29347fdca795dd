//! 8-bit frozen weights on the GPU: int8 codes and f32 row scales uploaded once, dequantised
//! into a buffer of the compute dtype right before each GEMM (`dequant_int8_*` in
//! `kernels/dequant.cu`).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::{dev_err, grid_stride, launch, CudaBackend, CudaBuf};
use crate::error::check_len;
use crate::int8::INV_127;
use crate::memory::Accounting;
use crate::{Int8Rows, Result};

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

impl CudaBackend {
    pub(super) fn upload_int8_impl(&self, q: &Int8Rows) -> Result<CudaInt8> {
        q.validate()?;
        let up = |e| dev_err("upload 8-bit weight")(e);
        let codes = self.stream.clone_htod(&q.codes).map_err(up)?;
        let scales = self.stream.clone_htod(&q.scales).map_err(up)?;
        let bytes = q.device_bytes();
        self.accounting.add(bytes);
        Ok(CudaInt8 {
            codes,
            scales,
            cols: q.cols,
            numel: q.numel(),
            bytes,
            accounting: self.accounting.clone(),
        })
    }

    pub(super) fn dequantize_int8_impl(&self, out: &mut CudaBuf, q: &CudaInt8) -> Result<()> {
        check_len("dequantize_int8", "out", out.len, q.numel)?;
        if q.numel == 0 {
            return Ok(());
        }
        let (cols, n) = (q.cols as u64, q.numel as u64);
        let f = self.kernel("dequant_int8", out.dtype)?;
        launch!(
            self,
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
}
