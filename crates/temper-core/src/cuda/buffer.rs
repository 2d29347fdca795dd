//! Device buffers: raw bytes with a storage type, counted by the backend that made them.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use rayon::prelude::*;

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

/// Host values as the bytes of `dtype` (little-endian, rounded to nearest even), converted
/// in parallel.
pub(super) fn encode(host: &[f32], dtype: DType) -> Vec<u8> {
    let size = dtype.size();
    let mut out = vec![0u8; host.len() * size];
    out.par_chunks_mut(size * 4096)
        .zip(host.par_chunks(4096))
        .for_each(|(dst, src)| {
            for (d, &v) in dst.chunks_exact_mut(size).zip(src) {
                match dtype {
                    DType::F32 => d.copy_from_slice(&v.to_le_bytes()),
                    DType::BF16 => d.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                    DType::F16 => d.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                }
            }
        });
    out
}

/// The inverse of [`encode`].
pub(super) fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .par_chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::BF16 => bytes
            .par_chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::F16 => bytes
            .par_chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_in_each_type() {
        let host = [0.0f32, 1.0, -2.5, 3.140625, 1e-3];
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let back = decode(&encode(&host, dt), dt);
            for (a, b) in host.iter().zip(&back) {
                assert_eq!(dt.round(*a), *b);
            }
        }
    }
}
