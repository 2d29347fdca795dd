//! One launch over many f32 tensors: the optimizer's step, gradient clipping's scale and its
//! sum of squares run over every adapter tensor of the model (hundreds of small ones, 448 of
//! each kind for Llama-2-7B with LoRA on all seven projections), where a launch per tensor
//! costs more than the work of most of them. The kernels (`kernels/elementwise.cu`, `*_multi`)
//! read a table of the tensors' addresses and lengths and give each block one chunk of one
//! tensor; the table is kept on the device by content, so a step whose tensors have not moved
//! uploads nothing.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::{dev_err, launch, CudaBackend, CudaBuf};
use crate::{CoreError, DType, Result};

/// Elements per block.
const CHUNK: usize = 16384;
/// Threads per block.
const THREADS: u32 = 256;
/// Tables kept on the device (the optimizer's and the gradients').
pub(super) const TABLE_CACHE: usize = 4;

/// A table of tensors on the device and the launch that covers them.
pub(super) struct TensorTable {
    pub table: Arc<CudaSlice<u64>>,
    pub tensors: u32,
    pub chunk: u64,
    pub cfg: LaunchConfig,
}

impl CudaBackend {
    /// One launch over all tensors in the optimizer's ops when `on`, else one per tensor
    /// (tests; runs take `TEMPER_MULTI_TENSOR`).
    pub fn set_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on;
    }

    /// The table of tensors with `K` addresses each and the given lengths (see the kernels'
    /// comment for its layout); None when there is nothing to do.
    pub(super) fn tensor_table<const K: usize>(
        &self,
        addresses: &[[u64; K]],
        lens: &[usize],
    ) -> Result<Option<TensorTable>> {
        debug_assert_eq!(addresses.len(), lens.len(), "one length per tensor");
        let tensors = addresses.len();
        let mut host: Vec<u64> = Vec::with_capacity(tensors * (K + 1));
        host.extend(addresses.iter().flatten());
        host.extend(lens.iter().map(|&n| n as u64));
        let mut blocks = 0usize;
        for (t, &n) in lens.iter().enumerate() {
            for start in (0..n).step_by(CHUNK) {
                host.extend([t as u64, start as u64]);
                blocks += 1;
            }
        }
        if blocks == 0 {
            return Ok(None);
        }
        let (tensors, blocks) = (u32::try_from(tensors), u32::try_from(blocks));
        let (Ok(tensors), Ok(blocks)) = (tensors, blocks) else {
            return Err(CoreError::Device(
                "too many tensors for one launch".to_string(),
            ));
        };
        Ok(Some(TensorTable {
            table: self.upload_table(&host)?,
            tensors,
            chunk: CHUNK as u64,
            cfg: LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
        }))
    }

    /// The addresses and lengths of `bufs` for one launch over them all, or None where they
    /// take one launch each: one-launch ops switched off, or a buffer that is not f32.
    pub(super) fn one_launch_f32<'a>(
        &self,
        bufs: impl Iterator<Item = &'a CudaBuf>,
    ) -> Option<(Vec<[u64; 1]>, Vec<usize>)> {
        if !self.multi_tensor {
            return None;
        }
        let (mut addresses, mut lens) = (Vec::new(), Vec::new());
        for b in bufs {
            if b.dtype != DType::F32 {
                return None;
            }
            addresses.push([self.ptr(b, 0)]);
            lens.push(b.len);
        }
        Some((addresses, lens))
    }

    /// `host` on the device, reused while the last [`TABLE_CACHE`] tables hold the same values.
    fn upload_table(&self, host: &[u64]) -> Result<Arc<CudaSlice<u64>>> {
        self.upload_cached(&self.table_cache, host, TABLE_CACHE, "tensor tables")
    }
}

// Entry points (f32 only) in kernels/elementwise.cu.
pub(super) const ADAMW_MULTI: &str = "adamw_multi";
pub(super) const FILL_MULTI: &str = "fill_multi";
/// Compiled per storage type (the type written).
pub(super) const CAST_MULTI: &str = "cast_multi";
pub(super) const SCALE_MULTI: &str = "scale_multi";
pub(super) const SUM_SQUARES_MULTI: &str = "sum_squares_multi";

/// One AdamW step of every tensor whose (param, grad, m, v) addresses are in `rows`, f32
/// each, `lens` values long (checked by the caller).
pub(super) fn adamw(
    be: &CudaBackend,
    rows: &[[u64; 4]],
    lens: &[usize],
    s: crate::AdamWStep,
) -> Result<()> {
    let Some(t) = be.tensor_table(rows, lens)? else {
        return Ok(());
    };
    let c = crate::optim::Scalars::new(s);
    launch!(
        be,
        be.kernel(ADAMW_MULTI, DType::F32)?,
        t.cfg,
        ADAMW_MULTI,
        &*t.table,
        &t.tensors,
        &t.chunk,
        &c.decay,
        &c.w1,
        &c.b2,
        &c.one_minus_b2,
        &c.neg_step_size,
        &c.bc2_sqrt,
        &c.eps,
        &c.apply_decay
    )
}

/// dst = src in `to` for every (dst, src) address pair of `rows`, src f32, `lens` values
/// long.
pub(super) fn cast_from_f32(
    be: &CudaBackend,
    rows: &[[u64; 2]],
    lens: &[usize],
    to: DType,
) -> Result<()> {
    let Some(t) = be.tensor_table(rows, lens)? else {
        return Ok(());
    };
    launch!(
        be,
        be.kernel(CAST_MULTI, to)?,
        t.cfg,
        CAST_MULTI,
        &*t.table,
        &t.tensors,
        &t.chunk
    )
}

/// `kernel` (FILL_MULTI: y = x, or SCALE_MULTI: y *= x) over every f32 tensor at
/// `addresses`, `lens` values long.
pub(super) fn each_f32(
    be: &CudaBackend,
    kernel: &'static str,
    addresses: &[[u64; 1]],
    lens: &[usize],
    x: f32,
) -> Result<()> {
    let Some(t) = be.tensor_table(addresses, lens)? else {
        return Ok(());
    };
    launch!(
        be,
        be.kernel(kernel, DType::F32)?,
        t.cfg,
        kernel,
        &*t.table,
        &t.tensors,
        &t.chunk,
        &x
    )
}

/// The sum of the squares of every f32 tensor at `addresses`, `lens` values long, with one
/// wait for the device.
pub(super) fn sum_squares(be: &CudaBackend, addresses: &[[u64; 1]], lens: &[usize]) -> Result<f64> {
    let mut out = be.stream.alloc_zeros::<f64>(1).map_err(dev_err("alloc"))?;
    if let Some(t) = be.tensor_table(addresses, lens)? {
        launch!(
            be,
            be.kernel(SUM_SQUARES_MULTI, DType::F32)?,
            t.cfg,
            SUM_SQUARES_MULTI,
            &mut out,
            &*t.table,
            &t.tensors,
            &t.chunk
        )?;
    }
    let host = be.stream.clone_dtoh(&out).map_err(dev_err("download"))?;
    Ok(host[0])
}
