//! Device buffers: raw bytes with a storage type, counted by the backend that made them.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use crate::memory::Accounting;
use crate::DType;

/// `len` elements of `dtype` in device memory, counted until dropped.
pub struct CudaBuf {
    pub(super) data: CudaSlice<u8>,
    pub(super) len: usize,
    pub(super) dtype: DType,
    pub(super) accounting: Arc<Accounting>,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }

    /// The device memory, e.g. for a collective that reads it in place.
    pub fn raw(&self) -> &CudaSlice<u8> {
        &self.data
    }

    pub fn raw_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.data
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.accounting.sub(self.bytes());
    }
}
