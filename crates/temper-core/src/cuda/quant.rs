//! 4-bit frozen weights on the GPU: codes and block scales uploaded once, dequantised into
//! a buffer of the compute dtype right before each GEMM (`kernels/dequant.cu`).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::{dev_err, grid_stride, launch, CudaBackend, CudaBuf};
use crate::error::check_len;
use crate::memory::Accounting;
use crate::{Absmax4, Quant4, Result};

/// Block scales on the device.
enum Scales {
    Plain(CudaSlice<f32>),
    Nested {
        codes: CudaSlice<u8>,
        map: CudaSlice<f32>,
        nested: CudaSlice<f32>,
        nested_blocksize: u32,
        offset: f32,
    },
}

/// A [`Quant4`] in device memory, counted until dropped.
pub struct CudaQuant {
    packed: CudaSlice<u8>,
    code: CudaSlice<f32>,
    scales: Scales,
    blocksize: u32,
    numel: usize,
    bytes: usize,
    accounting: Arc<Accounting>,
}

impl CudaQuant {
    pub fn numel(&self) -> usize {
        self.numel
    }
}

impl Drop for CudaQuant {
    fn drop(&mut self) {
        self.accounting.sub(self.bytes);
    }
}

impl CudaBackend {
    pub(super) fn upload_quant4_impl(&self, q: &Quant4) -> Result<CudaQuant> {
        q.validate()?;
        let up = |e| dev_err("upload 4-bit weight")(e);
        let packed = self.stream.clone_htod(&q.bytes).map_err(up)?;
        let code = self.stream.clone_htod(&q.code[..]).map_err(up)?;
        let scales = match &q.absmax {
            Absmax4::Plain(a) => Scales::Plain(self.stream.clone_htod(a).map_err(up)?),
            Absmax4::Nested {
                codes,
                map,
                nested_absmax,
                nested_blocksize,
                offset,
            } => Scales::Nested {
                codes: self.stream.clone_htod(codes).map_err(up)?,
                map: self.stream.clone_htod(&map[..]).map_err(up)?,
                nested: self.stream.clone_htod(nested_absmax).map_err(up)?,
                nested_blocksize: *nested_blocksize as u32,
                offset: *offset,
            },
        };
        let bytes = q.device_bytes();
        self.accounting.add(bytes);
        Ok(CudaQuant {
            packed,
            code,
            scales,
            blocksize: q.blocksize as u32,
            numel: q.numel,
            bytes,
            accounting: self.accounting.clone(),
        })
    }

    pub(super) fn dequantize4_impl(&self, out: &mut CudaBuf, q: &CudaQuant) -> Result<()> {
        check_len("dequantize4", "out", out.len, q.numel)?;
        if q.numel == 0 {
            return Ok(());
        }
        let n = q.numel as u64;
        let f = self.kernel("dequant4", out.dtype)?;
        let cfg = grid_stride(q.numel.div_ceil(2));
        match &q.scales {
            Scales::Plain(absmax) => {
                let null = 0u64;
                let (nb, offset) = (1u32, 0.0f32);
                launch!(
                    self,
                    f,
                    cfg,
                    "dequantize4",
                    &mut out.data,
                    &q.packed,
                    &q.code,
                    absmax,
                    &null,
                    &null,
                    &null,
                    &nb,
                    &offset,
                    &q.blocksize,
                    &n
                )
            }
            Scales::Nested {
                codes,
                map,
                nested,
                nested_blocksize,
                offset,
            } => {
                let null = 0u64;
                launch!(
                    self,
                    f,
                    cfg,
                    "dequantize4",
                    &mut out.data,
                    &q.packed,
                    &q.code,
                    &null,
                    codes,
                    map,
                    nested,
                    nested_blocksize,
                    offset,
                    &q.blocksize,
                    &n
                )
            }
        }
    }
}
