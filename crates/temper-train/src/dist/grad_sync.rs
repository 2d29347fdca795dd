//! Summing LoRA gradients over ranks, in buckets. Buckets run from the last parameter to the
//! first (the order backward finishes them: last layer first), each at most
//! `Collective::bucket_bytes` unless one tensor alone is larger.

use std::ops::Range;

use temper_core::Backend;
use temper_model::LoraParams;

use crate::dist::collective::Collective;
use crate::error::Result;

/// Consecutive index ranges over tensors of `bytes[i]` bytes, from the last tensor to the
/// first, each summing to at most `cap` bytes (a larger tensor gets a bucket of its own).
pub fn buckets(bytes: &[usize], cap: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut end = bytes.len();
    while end > 0 {
        let mut start = end - 1;
        let mut size = bytes[start];
        while start > 0 && size + bytes[start - 1] <= cap {
            start -= 1;
            size += bytes[start];
        }
        out.push(start..end);
        end = start;
    }
    out
}

/// Sums the gradients bucket by bucket while backward runs: a bucket starts as soon as the
/// layers its tensors belong to are done (the last micro-batch of a step), so the sums of
/// the last layers overlap the backward of the first ones. [`GradSync::finish`] starts what
/// is left and waits for all of it.
pub struct GradSync {
    buckets: Vec<Range<usize>>,
    /// Buckets started so far (they start in order, last tensors first).
    started: usize,
}

impl GradSync {
    pub fn new<B: Backend>(coll: &dyn Collective<B>, lora: &LoraParams<B>) -> Self {
        let bytes: Vec<usize> = lora
            .params
            .iter()
            .map(|p| p.shape[0] * p.shape[1] * 4)
            .collect();
        GradSync {
            buckets: buckets(&bytes, coll.bucket_bytes()),
            started: 0,
        }
    }

    /// Layer `layer`'s backward is queued: starts every bucket within layers >= `layer`.
    pub fn layer_done<B: Backend>(
        &mut self,
        be: &B,
        coll: &dyn Collective<B>,
        lora: &mut LoraParams<B>,
        layer: usize,
    ) -> Result<()> {
        let Some(ready_from) = lora.tail_from_layer(layer) else {
            return Ok(()); // tensors not in layer order: everything starts in finish()
        };
        while let Some(range) = self.buckets.get(self.started).cloned() {
            if range.start < ready_from {
                break;
            }
            self.start(be, coll, lora, range)?;
        }
        Ok(())
    }

    /// Starts the buckets not started yet and waits for every sum.
    pub fn finish<B: Backend>(
        &mut self,
        be: &B,
        coll: &dyn Collective<B>,
        lora: &mut LoraParams<B>,
    ) -> Result<()> {
        while let Some(range) = self.buckets.get(self.started).cloned() {
            self.start(be, coll, lora, range)?;
        }
        coll.finish_all_reduces(be)
    }

    fn start<B: Backend>(
        &mut self,
        be: &B,
        coll: &dyn Collective<B>,
        lora: &mut LoraParams<B>,
        range: Range<usize>,
    ) -> Result<()> {
        let mut bufs: Vec<&mut B::Buf> =
            lora.params[range].iter_mut().map(|p| &mut p.grad).collect();
        coll.start_all_reduce_bufs(be, &mut bufs)?;
        self.started += 1;
        Ok(())
    }
}

/// Replaces every rank's LoRA gradients by their sum over all ranks. At world 1 the host
/// collectives return at once; NCCL still runs (a one-GPU test of the NCCL path).
pub fn all_reduce_grads<B: Backend>(
    be: &B,
    coll: &dyn Collective<B>,
    lora: &mut LoraParams<B>,
) -> Result<()> {
    let bytes: Vec<usize> = lora
        .params
        .iter()
        .map(|p| p.shape[0] * p.shape[1] * 4)
        .collect();
    for range in buckets(&bytes, coll.bucket_bytes()) {
        let mut bufs: Vec<&mut B::Buf> =
            lora.params[range].iter_mut().map(|p| &mut p.grad).collect();
        coll.all_reduce_bufs(be, &mut bufs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_tensor_once_last_first() {
        let bytes = [4, 4, 8, 4, 20, 4];
        let b = buckets(&bytes, 12);
        assert_eq!(b, vec![5..6, 4..5, 2..4, 0..2]);
        assert_eq!(buckets(&bytes, 1000), vec![0..6]);
        assert!(buckets(&[], 8).is_empty());
    }
}
