//! Buffers parked in pinned host memory (layer inputs kept for backward off the device).
//! Pinned allocations are slow to make, so freed ones return to a pool by size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

use super::{dev_err, CudaBackend, CudaBuf};
use crate::{DType, Result};

type Pool = Arc<Mutex<HashMap<usize, Vec<PinnedHostSlice<u8>>>>>;

/// A device buffer's bytes in pinned host memory; the memory returns to its pool on drop.
pub struct CudaHost {
    data: Option<PinnedHostSlice<u8>>,
    len: usize,
    dtype: DType,
    pool: Pool,
}

impl Drop for CudaHost {
    fn drop(&mut self) {
        if let (Some(data), Ok(mut pool)) = (self.data.take(), self.pool.lock()) {
            pool.entry(data.len()).or_default().push(data);
        }
    }
}

#[derive(Default)]
pub(super) struct HostPool {
    free: Pool,
}

impl CudaBackend {
    pub(super) fn park_on_host_impl(&self, buf: &CudaBuf) -> Result<CudaHost> {
        let bytes = buf.bytes();
        let reused = self
            .host_pool
            .free
            .lock()
            .ok()
            .and_then(|mut p| p.get_mut(&bytes).and_then(Vec::pop));
        let mut data = match reused {
            Some(d) => d,
            // SAFETY: the bytes are written by the copy below before anything reads them.
            None => unsafe { self.ctx.alloc_pinned::<u8>(bytes) }
                .map_err(dev_err("alloc pinned host memory"))?,
        };
        if bytes > 0 {
            self.stream
                .memcpy_dtoh(&buf.data, &mut data)
                .map_err(dev_err("copy to host"))?;
        }
        Ok(CudaHost {
            data: Some(data),
            len: buf.len,
            dtype: buf.dtype,
            pool: self.host_pool.free.clone(),
        })
    }

    pub(super) fn restore_from_host_impl(&self, host: &CudaHost) -> Result<CudaBuf> {
        let mut out = self.alloc(host.len, host.dtype)?;
        if let Some(data) = &host.data {
            if out.bytes() > 0 {
                self.stream
                    .memcpy_htod(data, &mut out.data)
                    .map_err(dev_err("copy from host"))?;
            }
        }
        Ok(out)
    }
}

/// f32 values in pinned host memory mapped into the device's address space: kernels read
/// and write them over the bus, so they take no device memory (optimizer moments).
pub struct CudaMapped {
    data: PinnedHostSlice<f32>,
    len: usize,
    /// The device's address of the same memory.
    device_ptr: u64,
}

impl CudaBackend {
    pub(super) fn mapped_zeros_impl(&self, n: usize) -> Result<CudaMapped> {
        let (data, device_ptr) = self.mapped_alloc_zeroed::<f32>(n)?;
        Ok(CudaMapped {
            data,
            len: n,
            device_ptr,
        })
    }

    /// `n.max(1)` zeroed values of `T` in pinned host memory mapped into the device's address
    /// space, and their device address.
    pub(super) fn mapped_alloc_zeroed<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<(PinnedHostSlice<T>, u64)> {
        use cudarc::driver::sys;
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: the memory is zeroed below before any use.
        let mut data = unsafe { self.ctx.alloc_pinned_with_flags::<T>(n.max(1), flags) }
            .map_err(dev_err("alloc mapped host memory"))?;
        let host = data.as_mut_ptr().map_err(dev_err("mapped host memory"))?;
        // SAFETY: `host` points at n.max(1) values of T just allocated, for which all-zero
        // bits are valid.
        unsafe { std::ptr::write_bytes(host, 0, n.max(1)) };
        let mut device_ptr = 0u64;
        // SAFETY: `host` was allocated with CU_MEMHOSTALLOC_DEVICEMAP in this context.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, host as *mut _, 0) }
            .result()
            .map_err(dev_err("device address of mapped host memory"))?;
        Ok((data, device_ptr))
    }

    pub(super) fn mapped_read_impl(&self, m: &CudaMapped) -> Result<Vec<f32>> {
        self.synchronize()?;
        Ok(m.data
            .as_slice()
            .map_err(dev_err("read mapped memory"))?
            .to_vec())
    }

    pub(super) fn mapped_write_impl(&self, m: &mut CudaMapped, values: &[f32]) -> Result<()> {
        self.synchronize()?;
        let len = m.len;
        crate::error::check_len("mapped_write", "values", values.len(), len)?;
        let dst = m
            .data
            .as_mut_slice()
            .map_err(dev_err("write mapped memory"))?;
        dst[..len].copy_from_slice(values);
        Ok(())
    }

    pub(super) fn mapped_device_ptr(&self, m: &CudaMapped) -> u64 {
        m.device_ptr
    }

    pub(super) fn mapped_len(&self, m: &CudaMapped) -> usize {
        m.len
    }
}
