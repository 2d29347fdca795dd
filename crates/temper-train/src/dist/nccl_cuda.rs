//! The CUDA backend as NCCL sees it: its context, its stream, and the device memory of its
//! buffers (through cudarc, whose event records keep other streams ordered after NCCL's
//! writes).

use cudarc::driver::sys as cu;
use cudarc::driver::DevicePtrMut;
use temper_core::{CoreError, CudaBackend};

use crate::dist::nccl::{NcclDevice, RawDeviceBuf};
use crate::error::Result;

// SAFETY: the addresses come from cudarc's `device_ptr_mut` on the backend's own stream,
// which makes that stream wait for earlier uses; the returned guards are dropped only after
// `f` has queued its work, recording the writes for later users.
unsafe impl NcclDevice for CudaBackend {
    fn cuda_ordinal(&self) -> usize {
        self.stream().context().ordinal()
    }

    fn bind_to_thread(&self) -> temper_core::Result<()> {
        self.stream()
            .context()
            .bind_to_thread()
            .map_err(|e| CoreError::Device(format!("binding the CUDA context for NCCL: {e:?}")))
    }

    fn raw_stream(&self) -> cu::CUstream {
        self.stream().cu_stream()
    }

    fn with_raw_buffers(
        &self,
        bufs: &mut [&mut Self::Buf],
        f: &mut dyn FnMut(&[RawDeviceBuf]) -> Result<()>,
    ) -> Result<()> {
        let stream = self.stream().clone();
        let mut raws = Vec::with_capacity(bufs.len());
        let mut guards = Vec::with_capacity(bufs.len());
        for b in bufs.iter_mut() {
            let (count, dtype) = (b.len(), b.dtype());
            let (ptr, guard) = b.raw_mut().device_ptr_mut(&stream);
            raws.push(RawDeviceBuf { ptr, count, dtype });
            guards.push(guard);
        }
        let result = f(&raws);
        drop(guards);
        result
    }
}
