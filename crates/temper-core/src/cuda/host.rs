//! Buffers parked in pinned host memory (layer inputs kept for backward off the device).
//! Pinned allocations are slow to make, so freed ones return to a pool by size.
//!
//! Every copy runs on the backend's copy stream, so the compute stream goes on while a
//! layer input travels. Ordering is by events: a copy to the host starts once the compute
//! stream has written the buffer, and the device buffer is freed (in compute-stream order)
//! only after the compute stream has waited for that copy, one park later. A copy back is
//! queued early by [`prefetch`] into memory allocated in
//! compute-stream order, and the compute stream waits for it where the buffer is taken.
//! Copies to and from the same pinned memory are ordered by the copy stream itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

use super::paged::PagedSlice;

use super::{dev_err, CudaBackend, CudaBuf};
use crate::{CoreError, DType, Result};

type Pool = Arc<Mutex<HashMap<usize, Vec<PinnedHostSlice<u8>>>>>;

/// A device buffer's bytes in pinned host memory; the memory returns to its pool on drop.
pub struct CudaHost {
    data: Option<PinnedHostSlice<u8>>,
    len: usize,
    dtype: DType,
    pool: Pool,
    /// The copy back to the device queued ahead of use, and the event that ends it.
    ahead: Mutex<Option<(CudaBuf, CudaEvent)>>,
    compute: Arc<CudaStream>,
}

impl Drop for CudaHost {
    fn drop(&mut self) {
        // A copy back that was never taken: the compute stream waits for it before the
        // device buffer is freed in its order.
        if let Ok(mut ahead) = self.ahead.lock() {
            if let Some((buf, done)) = ahead.take() {
                let _ = self.compute.wait(&done);
                drop(buf);
            }
        }
        // The pinned memory goes back to the pool; its next user copies on the copy stream
        // too, so it is written only after the copies queued here have read it.
        if let (Some(data), Ok(mut pool)) = (self.data.take(), self.pool.lock()) {
            pool.entry(data.len()).or_default().push(data);
        }
    }
}

#[derive(Default)]
pub(super) struct HostPool {
    free: Pool,
    /// Parked device buffers whose copy to the host may still run, with its end event.
    in_flight: Mutex<Vec<(CudaBuf, CudaEvent)>>,
}

fn lock_err(what: &str) -> CoreError {
    CoreError::Device(format!("{what} lock poisoned"))
}

impl CudaBackend {
    /// Frees the device buffers of every earlier park, each after the compute stream has
    /// waited for its copy. A layer parks its buffers as one group ([`park_group`]), so the
    /// parks waited for are those of earlier layers, whose copies have had a layer's work to
    /// run beside.
    fn release_parked(&self) -> Result<()> {
        let mut in_flight = self
            .host_pool
            .in_flight
            .lock()
            .map_err(|_| lock_err("parked buffers"))?;
        for (buf, copied) in std::mem::take(&mut *in_flight) {
            self.stream
                .wait(&copied)
                .map_err(dev_err("wait for a copy to host"))?;
            drop(buf);
        }
        Ok(())
    }
}

/// f32 optimizer moments outside the device pool (paged AdamW): pinned host memory mapped
/// into the device's address space, which kernels read and write over the bus, or managed
/// memory the driver pages (`paged.rs`).
pub struct CudaMapped {
    data: PagedSlice<f32>,
    len: usize,
    /// The device's address of the same memory.
    device_ptr: u64,
}

impl CudaBackend {
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

    pub(super) fn mapped_device_ptr(&self, m: &CudaMapped) -> u64 {
        m.device_ptr
    }

    pub(super) fn mapped_len(&self, m: &CudaMapped) -> usize {
        m.len
    }
}

/// Parks a group of buffers ready together (one layer's, or a lone one): the earlier parks
/// are released first (the compute stream waits for whichever copies still run), none of the
/// group's own.
pub(super) fn park_group(be: &CudaBackend, bufs: Vec<CudaBuf>) -> Result<Vec<CudaHost>> {
    be.release_parked()?;
    bufs.into_iter().map(|b| park_queued(be, b)).collect()
}

/// Queues the copy of `buf` to (reused or new) pinned host memory on the copy stream; the
/// device buffer waits in the in-flight list until a later release.
fn park_queued(be: &CudaBackend, buf: CudaBuf) -> Result<CudaHost> {
    let (bytes, len, dtype) = (buf.bytes(), buf.len, buf.dtype);
    let reused = be
        .host_pool
        .free
        .lock()
        .ok()
        .and_then(|mut p| p.get_mut(&bytes).and_then(Vec::pop));
    let mut data = match reused {
        Some(d) => d,
        // SAFETY: the bytes are written by the copy below before anything reads them.
        None => unsafe { be.ctx.alloc_pinned::<u8>(bytes) }
            .map_err(dev_err("alloc pinned host memory"))?,
    };
    if bytes > 0 {
        let written = be
            .stream
            .record_event(None)
            .map_err(dev_err("record event"))?;
        be.copy_stream
            .wait(&written)
            .map_err(dev_err("order a copy to host"))?;
        be.copy_stream
            .memcpy_dtoh(&buf.data, &mut data)
            .map_err(dev_err("copy to host"))?;
        let copied = be
            .copy_stream
            .record_event(None)
            .map_err(dev_err("record event"))?;
        be.host_pool
            .in_flight
            .lock()
            .map_err(|_| lock_err("parked buffers"))?
            .push((buf, copied));
    }
    Ok(CudaHost {
        data: Some(data),
        len,
        dtype,
        pool: be.host_pool.free.clone(),
        ahead: Mutex::new(None),
        compute: be.stream.clone(),
    })
}

/// Queues the copy of `host` back to the device on the copy stream; the buffer is taken
/// by [`restore`]. Does nothing when already queued.
pub(super) fn prefetch(be: &CudaBackend, host: &CudaHost) -> Result<()> {
    be.release_parked()?;
    let mut ahead = host.ahead.lock().map_err(|_| lock_err("prefetch"))?;
    if ahead.is_some() {
        return Ok(());
    }
    let mut out = be.alloc_uninit(host.len, host.dtype)?;
    let allocated = be
        .stream
        .record_event(None)
        .map_err(dev_err("record event"))?;
    be.copy_stream
        .wait(&allocated)
        .map_err(dev_err("order a copy from host"))?;
    if let Some(data) = &host.data {
        if out.bytes() > 0 {
            be.copy_stream
                .memcpy_htod(data, &mut out.data)
                .map_err(dev_err("copy from host"))?;
        }
    }
    let copied = be
        .copy_stream
        .record_event(None)
        .map_err(dev_err("record event"))?;
    *ahead = Some((out, copied));
    Ok(())
}

pub(super) fn restore(be: &CudaBackend, host: &CudaHost) -> Result<CudaBuf> {
    prefetch(be, host)?;
    let (out, copied) = host
        .ahead
        .lock()
        .map_err(|_| lock_err("prefetch"))?
        .take()
        .ok_or_else(|| CoreError::Device("internal: prefetched buffer missing".into()))?;
    be.stream
        .wait(&copied)
        .map_err(dev_err("wait for a copy from host"))?;
    Ok(out)
}

pub(super) fn mapped_zeros(be: &CudaBackend, n: usize) -> Result<CudaMapped> {
    let (data, device_ptr) = be.paged_alloc_zeroed::<f32>(n)?;
    Ok(CudaMapped {
        data,
        len: n,
        device_ptr,
    })
}

pub(super) fn mapped_read(be: &CudaBackend, m: &CudaMapped) -> Result<Vec<f32>> {
    be.synchronize()?;
    let values = m.data.as_slice()?.to_vec();
    be.page_in_after_host_access(&m.data)?;
    Ok(values)
}

/// Managed moments moved to the device before the step that uses them (see `paged.rs`).
pub(super) fn page_in(be: &CudaBackend, m: &CudaMapped) -> Result<()> {
    be.page_in_paged(&m.data)
}

pub(super) fn mapped_write(be: &CudaBackend, m: &mut CudaMapped, values: &[f32]) -> Result<()> {
    be.synchronize()?;
    let len = m.len;
    crate::error::check_len("mapped_write", "values", values.len(), len)?;
    let dst = m.data.as_mut_slice()?;
    dst[..len].copy_from_slice(values);
    be.page_in_after_host_access(&m.data)
}
