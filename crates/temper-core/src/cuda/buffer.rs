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

/// Host values as the bytes of `dtype` (little-endian, rounded to nearest even).
pub(super) fn encode(host: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(host.len() * dtype.size());
    match dtype {
        DType::F32 => host.iter().for_each(|v| out.extend(v.to_le_bytes())),
        DType::BF16 => host
            .iter()
            .for_each(|&v| out.extend(half::bf16::from_f32(v).to_bits().to_le_bytes())),
        DType::F16 => host
            .iter()
            .for_each(|&v| out.extend(half::f16::from_f32(v).to_bits().to_le_bytes())),
    }
    out
}

/// The inverse of [`encode`].
pub(super) fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
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
