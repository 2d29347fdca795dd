//! Uploading weights as files store them: the bytes are converted (or just copied) into one
//! of two pinned host buffers while the other one's copy to the device runs, so a model
//! loads at the speed of reading its files, without an f32 copy of each tensor on the host.

use std::sync::Mutex;

use cudarc::driver::{result, CudaEvent, DevicePtrMut, PinnedHostSlice};

use super::{dev_err, CudaBackend, CudaBuf};
use crate::dtype::convert_le;
use crate::{CoreError, DType, Result};

/// Bytes of each pinned staging buffer.
const STAGING_BYTES: usize = 64 << 20;

/// Two pinned buffers, each with the event of the last copy out of it.
pub(super) struct Staging {
    slots: Vec<(PinnedHostSlice<u8>, CudaEvent)>,
}

/// Made on first use (a model load) and kept.
#[derive(Default)]
pub(super) struct StagingCell(Mutex<Option<Staging>>);

impl CudaBackend {
    /// `bytes` (little-endian values of `from`) on the device as `to`.
    pub(super) fn upload_staged(&self, bytes: &[u8], from: DType, to: DType) -> Result<CudaBuf> {
        if !bytes.len().is_multiple_of(from.size()) {
            return Err(CoreError::Invalid {
                op: "upload_stored",
                msg: format!(
                    "{} bytes are not a whole number of {from} values",
                    bytes.len()
                ),
            });
        }
        let n = bytes.len() / from.size();
        let mut out = self.alloc(n, to)?;
        if n == 0 {
            return Ok(out);
        }
        let mut cell = self
            .staging
            .0
            .lock()
            .map_err(|_| CoreError::Device("a thread panicked while uploading".into()))?;
        if cell.is_none() {
            let mut slots = Vec::with_capacity(2);
            for _ in 0..2 {
                // SAFETY: staging bytes are always written before they are copied out.
                let host = unsafe { self.ctx.alloc_pinned::<u8>(STAGING_BYTES) }
                    .map_err(dev_err("alloc pinned staging memory"))?;
                let event = self.ctx.new_event(None).map_err(dev_err("staging event"))?;
                slots.push((host, event));
            }
            *cell = Some(Staging { slots });
        }
        let Some(staging) = cell.as_mut() else {
            unreachable!("made above")
        };
        // Values per chunk: what one staging buffer holds in the wider of the two types.
        let per = STAGING_BYTES / from.size().max(to.size());
        let stream = self.stream.clone();
        {
            // The guard records the writes on the stream when the copies are queued.
            let (base, _guard) = out.data.device_ptr_mut(&stream);
            for (k, src) in bytes.chunks(per * from.size()).enumerate() {
                let (host, event) = &mut staging.slots[k % 2];
                // The copy that last read this buffer must be done before it is overwritten.
                event.synchronize().map_err(dev_err("staging wait"))?;
                let len = src.len() / from.size() * to.size();
                let ptr = host.as_mut_ptr().map_err(dev_err("staging memory"))?;
                // SAFETY: `ptr` holds STAGING_BYTES >= len bytes, and no copy reads them now.
                let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                convert_le(src, from, dst, to);
                let offset = (k * per * to.size()) as u64;
                // SAFETY: the destination range lies inside `out` (n values of `to`); the source
                // is pinned memory that stays untouched until `event` says the copy is done.
                unsafe { result::memcpy_htod_async(base + offset, &dst[..], stream.cu_stream()) }
                    .map_err(dev_err("upload"))?;
                event.record(&stream).map_err(dev_err("staging event"))?;
            }
        }
        Ok(out)
    }
}
