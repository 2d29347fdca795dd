//! Buffers parked in pinned host memory (layer inputs kept for backward off the device).
//! Pinned allocations are slow to make, so freed ones return to a pool by size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::PinnedHostSlice;

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
