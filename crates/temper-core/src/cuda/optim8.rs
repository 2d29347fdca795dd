//! 8-bit AdamW moments on the GPU (`kernels/optim8.cu`): codes and block absmax in device
//! memory (`adamw_8bit`), or in pinned host memory mapped into the device's address space
//! (`paged_adamw_8bit`), with the state's 256-entry map in device memory either way.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig, SyncOnDrop};
use temper_quant::state8::{check_state8, BLOCKSIZE};

use super::paged::PagedSlice;
use super::{check_f32, dev_err, launch, CudaBackend, CudaBuf};
use crate::backend::AdamWStep;
use crate::memory::Accounting;
use crate::optim::Scalars8;
use crate::{DType, Result};

// The entry point of kernels/optim8.cu (f32 only).
pub(super) const ADAMW8BIT: &str = "adamw8bit";

enum Storage {
    Device {
        codes: CudaSlice<u8>,
        absmax: CudaSlice<f32>,
    },
    /// Paged memory (mapped pinned host memory or managed, `paged.rs`); `*_ptr` is the
    /// device's address of the same bytes.
    Mapped {
        codes: PagedSlice<u8>,
        absmax: PagedSlice<f32>,
        codes_ptr: u64,
        absmax_ptr: u64,
    },
}

/// One AdamW moment in 8 bits; device memory it holds is counted until dropped.
pub struct CudaState8 {
    storage: Storage,
    /// (256,) the code values, on the device.
    map: CudaSlice<f32>,
    len: usize,
    device_bytes: usize,
    accounting: Arc<Accounting>,
}

impl Drop for CudaState8 {
    fn drop(&mut self) {
        self.accounting.sub(self.device_bytes);
    }
}

impl CudaState8 {
    fn blocks(&self) -> usize {
        self.len.div_ceil(BLOCKSIZE)
    }
}

impl CudaBackend {
    /// Device addresses of a state's codes and absmax, with the guards that record the write
    /// on the stream when dropped (after the launch that uses them).
    fn state8_ptrs<'a>(&'a self, s: &'a mut Storage) -> (u64, u64, Vec<SyncOnDrop<'a>>) {
        match s {
            Storage::Device { codes, absmax } => {
                let (c, g1) = codes.device_ptr_mut(&self.stream);
                let (a, g2) = absmax.device_ptr_mut(&self.stream);
                (c, a, vec![g1, g2])
            }
            Storage::Mapped {
                codes_ptr,
                absmax_ptr,
                ..
            } => (*codes_ptr, *absmax_ptr, vec![]),
        }
    }

    /// Managed state moved to the device before the step that uses it.
    fn state8_page_in(&self, s: &Storage) -> Result<()> {
        match s {
            Storage::Device { .. } => Ok(()),
            Storage::Mapped { codes, absmax, .. } => {
                self.page_in_paged(codes)?;
                self.page_in_paged(absmax)
            }
        }
    }
}

pub(super) fn zeros(
    be: &CudaBackend,
    n: usize,
    map: &[f32; 256],
    on_host: bool,
) -> Result<CudaState8> {
    // Refuses an unsorted map as the CPU does.
    temper_quant::state8::bounds(map)?;
    let blocks = n.div_ceil(BLOCKSIZE);
    let map_dev = be
        .stream
        .clone_htod(&map[..])
        .map_err(dev_err("upload 8-bit state map"))?;
    let mut device_bytes = 256 * 4;
    let storage = if on_host {
        let (codes, codes_ptr) = be.paged_alloc_zeroed::<u8>(n)?;
        let (absmax, absmax_ptr) = be.paged_alloc_zeroed::<f32>(blocks)?;
        Storage::Mapped {
            codes,
            absmax,
            codes_ptr,
            absmax_ptr,
        }
    } else {
        let alloc = dev_err("alloc 8-bit state");
        device_bytes += n + 4 * blocks;
        Storage::Device {
            codes: be.stream.alloc_zeros::<u8>(n.max(1)).map_err(&alloc)?,
            absmax: be.stream.alloc_zeros::<f32>(blocks.max(1)).map_err(alloc)?,
        }
    };
    be.accounting.add(device_bytes);
    Ok(CudaState8 {
        storage,
        map: map_dev,
        len: n,
        device_bytes,
        accounting: be.accounting.clone(),
    })
}

pub(super) fn read(be: &CudaBackend, s: &CudaState8) -> Result<(Vec<u8>, Vec<f32>)> {
    let (n, blocks) = (s.len, s.blocks());
    match &s.storage {
        Storage::Device { codes, absmax } => {
            let dl = dev_err("download 8-bit state");
            let mut c = be.stream.clone_dtoh(codes).map_err(&dl)?;
            let mut a = be.stream.clone_dtoh(absmax).map_err(dl)?;
            c.truncate(n);
            a.truncate(blocks);
            Ok((c, a))
        }
        Storage::Mapped { codes, absmax, .. } => {
            be.synchronize()?;
            let read = (
                codes.as_slice()?[..n].to_vec(),
                absmax.as_slice()?[..blocks].to_vec(),
            );
            be.page_in_after_host_access(codes)?;
            be.page_in_after_host_access(absmax)?;
            Ok(read)
        }
    }
}

pub(super) fn write(
    be: &CudaBackend,
    s: &mut CudaState8,
    codes: &[u8],
    absmax: &[f32],
) -> Result<()> {
    check_state8("state8_write", s.len, codes.len(), absmax.len())?;
    if s.len == 0 {
        return Ok(());
    }
    match &mut s.storage {
        Storage::Device {
            codes: dc,
            absmax: da,
        } => {
            let up = dev_err("upload 8-bit state");
            be.stream.memcpy_htod(codes, dc).map_err(&up)?;
            be.stream.memcpy_htod(absmax, da).map_err(up)
        }
        Storage::Mapped {
            codes: hc,
            absmax: ha,
            ..
        } => {
            be.synchronize()?;
            hc.as_mut_slice()?[..codes.len()].copy_from_slice(codes);
            ha.as_mut_slice()?[..absmax.len()].copy_from_slice(absmax);
            be.page_in_after_host_access(hc)?;
            be.page_in_after_host_access(ha)
        }
    }
}

pub(super) fn adamw8bit(
    be: &CudaBackend,
    param: &mut CudaBuf,
    grad: &CudaBuf,
    m: &mut CudaState8,
    v: &mut CudaState8,
    s: AdamWStep,
) -> Result<()> {
    const OP: &str = "adamw8bit";
    let n = param.len;
    crate::checks::optimizer_step(OP, n, grad.len, m.len, v.len, s.step)?;
    check_f32(OP, "param", param)?;
    check_f32(OP, "grad", grad)?;
    if n == 0 {
        return Ok(());
    }
    let c = Scalars8::new(s);
    let a = c.adamw;
    be.state8_page_in(&m.storage)?;
    be.state8_page_in(&v.storage)?;
    let (mc, ma, _m_guards) = be.state8_ptrs(&mut m.storage);
    let (vc, va, _v_guards) = be.state8_ptrs(&mut v.storage);
    let (m_map, v_map) = (&m.map, &v.map);
    let n64 = n as u64;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(BLOCKSIZE) as u32, 1, 1),
        block_dim: (BLOCKSIZE as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        be,
        be.kernel(ADAMW8BIT, DType::F32)?,
        cfg,
        OP,
        &mut param.data,
        &grad.data,
        &mc,
        &ma,
        m_map,
        &vc,
        &va,
        v_map,
        &c.b1,
        &a.w1,
        &a.b2,
        &a.one_minus_b2,
        &a.neg_step_size,
        &a.bc2_sqrt,
        &a.eps,
        &a.decay,
        &a.apply_decay,
        &n64
    )
}
