//! Memory for paged optimizer state (`paged_optimizer: true`): values that kernels read and
//! write through a device address but that do not come from the device pool, in one of two
//! homes, chosen by `TEMPER_PAGED_MEMORY`:
//! - `pinned` (the default): pinned host memory mapped into the device's address space. The
//!   state never takes device memory; every optimizer step reads and writes it over the bus.
//! - `managed`: CUDA managed memory, as bitsandbytes' paged optimizers allocate it
//!   (cudaMallocManaged, prefetched to the device before each step): the driver keeps the pages
//!   on the GPU while it has room and moves them to the host under memory pressure, so a step
//!   runs at device speed when memory allows. Those bytes are not in the device pool's peak
//!   (as PyTorch's allocator does not count bitsandbytes' pages); the backend counts them apart
//!   (`Backend::paged_managed_bytes`).
//! - `managed-once`: managed memory as above, prefetched to the device once, when allocated,
//!   and not before every step: a prefetch is a driver call even when nothing moves, and a
//!   step makes one per moment of every adapter tensor. Pages the driver moved to the host
//!   under memory pressure come back when a kernel touches them.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

use super::{dev_err, CudaBackend};
use crate::{CoreError, Result};

/// Where paged optimizer state lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagedMemory {
    Pinned,
    /// Managed memory, prefetched to the device before each step when `each_step`, else once.
    Managed {
        each_step: bool,
    },
}

impl PagedMemory {
    /// From `TEMPER_PAGED_MEMORY` (`pinned` | `managed` | `managed-once`; unset or empty:
    /// pinned).
    pub fn from_env() -> Result<Self> {
        match std::env::var("TEMPER_PAGED_MEMORY")
            .unwrap_or_default()
            .as_str()
        {
            "" | "pinned" => Ok(PagedMemory::Pinned),
            "managed" => Ok(PagedMemory::Managed { each_step: true }),
            "managed-once" => Ok(PagedMemory::Managed { each_step: false }),
            other => Err(CoreError::Device(format!(
                "TEMPER_PAGED_MEMORY={other:?}: use pinned (host memory mapped into the GPU), \
                 managed (CUDA managed memory, kept on the GPU while it has room, prefetched \
                 before each step) or managed-once (the same, prefetched once)"
            ))),
        }
    }
}

/// `len` values of `T` in CUDA managed memory, freed on drop.
pub(super) struct ManagedSlice<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
    counted: Arc<AtomicUsize>,
    _values: PhantomData<T>,
}

// SAFETY: the allocation is owned by this value alone; host access goes through &self /
// &mut self after the device is synchronised, as for PinnedHostSlice.
unsafe impl<T: Send> Send for ManagedSlice<T> {}
unsafe impl<T: Sync> Sync for ManagedSlice<T> {}

impl<T> Drop for ManagedSlice<T> {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: ptr came from cuMemAllocManaged and is freed once, here.
        let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
        let bytes = self.len * std::mem::size_of::<T>();
        self.counted.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Paged values: pinned and mapped, or managed.
pub(super) enum PagedSlice<T> {
    Pinned(PinnedHostSlice<T>),
    Managed(ManagedSlice<T>),
}

impl<T: DeviceRepr + ValidAsZeroBits> PagedSlice<T> {
    /// The values on the host; the caller has synchronised the device.
    pub(super) fn as_slice(&self) -> Result<&[T]> {
        match self {
            PagedSlice::Pinned(p) => p.as_slice().map_err(dev_err("read paged memory")),
            // SAFETY: managed memory is addressable from the host at the same address; the
            // device is idle (the caller synchronised), and len values were allocated.
            PagedSlice::Managed(m) => {
                Ok(unsafe { std::slice::from_raw_parts(m.ptr as *const T, m.len) })
            }
        }
    }

    /// The values on the host, writable; the caller has synchronised the device.
    pub(super) fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        match self {
            PagedSlice::Pinned(p) => p.as_mut_slice().map_err(dev_err("write paged memory")),
            // SAFETY: as in as_slice, with &mut self the only access.
            PagedSlice::Managed(m) => {
                Ok(unsafe { std::slice::from_raw_parts_mut(m.ptr as *mut T, m.len) })
            }
        }
    }
}

impl CudaBackend {
    /// Puts paged optimizer state allocated from now on in `memory` (tests; runs take
    /// `TEMPER_PAGED_MEMORY`).
    pub fn set_paged_memory(&mut self, memory: PagedMemory) {
        self.paged_memory = memory;
    }

    /// `n.max(1)` zeroed values of `T` where `TEMPER_PAGED_MEMORY` says, and their device
    /// address.
    pub(super) fn paged_alloc_zeroed<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<(PagedSlice<T>, u64)> {
        match self.paged_memory {
            PagedMemory::Pinned => {
                let (data, ptr) = self.mapped_alloc_zeroed::<T>(n)?;
                Ok((PagedSlice::Pinned(data), ptr))
            }
            PagedMemory::Managed { .. } => {
                let m = self.managed_alloc_zeroed::<T>(n.max(1))?;
                let ptr = m.ptr;
                Ok((PagedSlice::Managed(m), ptr))
            }
        }
    }

    fn managed_alloc_zeroed<T>(&self, len: usize) -> Result<ManagedSlice<T>> {
        let bytes = len * std::mem::size_of::<T>();
        self.ctx
            .bind_to_thread()
            .map_err(dev_err("bind the context"))?;
        let mut ptr: sys::CUdeviceptr = 0;
        let flags = sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL as u32;
        // SAFETY: ptr receives a new allocation of `bytes` bytes.
        unsafe { sys::cuMemAllocManaged(&mut ptr, bytes, flags) }
            .result()
            .map_err(dev_err("allocate managed memory for the paged optimizer"))?;
        self.managed.fetch_add(bytes, Ordering::Relaxed);
        let slice = ManagedSlice {
            ptr,
            len,
            ctx: self.ctx.clone(),
            counted: self.managed.clone(),
            _values: PhantomData,
        };
        // SAFETY: the range was just allocated; zero bits are valid values of T (the caller's
        // bound on paged_alloc_zeroed).
        unsafe { sys::cuMemsetD8_v2(ptr, 0, bytes) }
            .result()
            .map_err(dev_err("zero managed memory"))?;
        let device = self.device_location();
        // SAFETY: advice and prefetch of a range this slice owns.
        unsafe {
            sys::cuMemAdvise_v2(
                ptr,
                bytes,
                sys::CUmem_advise::CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
                device,
            )
        }
        .result()
        .map_err(dev_err("advise managed memory"))?;
        self.page_in(&slice)?;
        Ok(slice)
    }

    /// Moves managed values to the device ahead of the kernel that uses them (on the compute
    /// stream; nothing moves when they are resident), unless they are prefetched only once.
    /// Pinned values stay where they are.
    pub(super) fn page_in_paged<T>(&self, s: &PagedSlice<T>) -> Result<()> {
        match (s, self.paged_memory) {
            (PagedSlice::Managed(m), PagedMemory::Managed { each_step: true }) => self.page_in(m),
            _ => Ok(()),
        }
    }

    /// Moves managed values back to the device after the host read or wrote them (a
    /// checkpoint saved or resumed), in either managed mode: touched from the host, the pages
    /// moved there, and a mode that prefetches only once would otherwise fault them back one
    /// by one in the next step. Pinned values stay where they are.
    pub(super) fn page_in_after_host_access<T>(&self, s: &PagedSlice<T>) -> Result<()> {
        match s {
            PagedSlice::Managed(m) => self.page_in(m),
            PagedSlice::Pinned(_) => Ok(()),
        }
    }

    fn page_in<T>(&self, m: &ManagedSlice<T>) -> Result<()> {
        let bytes = m.len * std::mem::size_of::<T>();
        // SAFETY: a prefetch of a range the slice owns, ordered on the compute stream.
        unsafe {
            sys::cuMemPrefetchAsync_v2(
                m.ptr,
                bytes,
                self.device_location(),
                0,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(dev_err("prefetch managed memory to the device"))
    }

    fn device_location(&self) -> sys::CUmemLocation {
        sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: self.ctx.ordinal() as i32,
        }
    }
}
