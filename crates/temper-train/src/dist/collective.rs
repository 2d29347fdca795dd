//! The one interface data-parallel training talks to: element-wise sums over all ranks, a
//! broadcast from rank 0 and a barrier.
//!
//! - [`Single`]: world 1, every call returns at once.
//! - [`crate::InProcess`]: N ranks as N threads of one process (tests prove the sharding and
//!   loss-normalisation maths with it, no GPU needed).
//! - [`crate::Tcp`]: ranks as processes, joined through rank 0 over TCP (the CPU backend's
//!   data plane, and NCCL's control plane).
//! - [`crate::Nccl`]: device buffers summed by NCCL.
//!
//! Sums that go through the host accumulate in f64 **in rank order** (rank 0's values, plus
//! rank 1's, ...), so the result never depends on which rank arrived first, and every
//! host-staged implementation gives bit-identical results for the same inputs.

use temper_core::Backend;

use crate::error::Result;

/// Gradients are summed in buckets of at most this many bytes (torch DDP's default size).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Collective operations over the ranks of one training job, for a backend `B`.
///
/// Every rank must make the same calls, with the same lengths, in the same order;
/// implementations report a mismatch as an error rather than mixing unrelated values.
pub trait Collective<B: Backend>: Send + Sync {
    /// This process's (or thread's) index, 0..world.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Sums every buffer element-wise over all ranks, in place; afterwards every rank holds
    /// the same values. The buffers are one bucket: implementations may fuse them.
    fn all_reduce_bufs(&self, be: &B, bufs: &mut [&mut B::Buf]) -> Result<()>;
    /// Starts summing a bucket, ordered after the work already queued on the backend; the
    /// sum may run while the backend goes on with later work (the rest of backward), which
    /// must not write these buffers. [`Collective::finish_all_reduces`] orders everything
    /// after the sums. The default sums at once.
    fn start_all_reduce_bufs(&self, be: &B, bufs: &mut [&mut B::Buf]) -> Result<()> {
        self.all_reduce_bufs(be, bufs)
    }
    /// Waits for (orders the backend's later work after) every sum started so far.
    fn finish_all_reduces(&self, be: &B) -> Result<()> {
        let _ = be;
        Ok(())
    }
    /// Sums host values over all ranks, in place (f64 accumulation in rank order).
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Sums host values over all ranks, in place (f64 accumulation in rank order).
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `bytes` on every rank with rank 0's.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Returns once every rank has reached it.
    fn barrier(&self) -> Result<()> {
        self.all_reduce_f64(&mut [])
    }
    /// The largest gradient bucket, in bytes.
    fn bucket_bytes(&self) -> usize {
        DEFAULT_BUCKET_BYTES
    }
}

/// Collectives whose data passes through host memory. Every such implementation is a
/// [`Collective`] for every backend: device buffers are downloaded, summed, uploaded.
pub trait HostCollective: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()>;
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()>;
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    fn bucket_bytes(&self) -> usize {
        DEFAULT_BUCKET_BYTES
    }
}

impl<B: Backend, H: HostCollective> Collective<B> for H {
    fn rank(&self) -> usize {
        HostCollective::rank(self)
    }
    fn world(&self) -> usize {
        HostCollective::world(self)
    }
    fn all_reduce_bufs(&self, be: &B, bufs: &mut [&mut B::Buf]) -> Result<()> {
        if HostCollective::world(self) == 1 {
            return Ok(());
        }
        // One exchange per bucket: the buffers laid end to end.
        let mut flat = Vec::new();
        let mut lens = Vec::with_capacity(bufs.len());
        for b in bufs.iter() {
            let host = be.download(b)?;
            lens.push(host.len());
            flat.extend_from_slice(&host);
        }
        HostCollective::all_reduce_f32(self, &mut flat)?;
        let mut at = 0;
        for (b, n) in bufs.iter_mut().zip(lens) {
            **b = be.upload(&flat[at..at + n])?;
            at += n;
        }
        Ok(())
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        HostCollective::all_reduce_f64(self, values)
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        HostCollective::all_reduce_f32(self, values)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        HostCollective::broadcast_bytes(self, bytes)
    }
    fn bucket_bytes(&self) -> usize {
        HostCollective::bucket_bytes(self)
    }
}

/// A boxed host collective is one too, so callers can choose the implementation at run time.
impl<H: HostCollective + ?Sized> HostCollective for Box<H> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world(&self) -> usize {
        (**self).world()
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        (**self).all_reduce_f64(values)
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        (**self).all_reduce_f32(values)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        (**self).broadcast_bytes(bytes)
    }
    fn bucket_bytes(&self) -> usize {
        (**self).bucket_bytes()
    }
}

/// World 1: a single process; every collective leaves its input as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl HostCollective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// `out = parts[0] + parts[1] + ...`, accumulated in f64 in rank order. All parts have
/// `out.len()` values (callers check).
pub(crate) fn sum_in_rank_order_f32(parts: &[&[f32]], out: &mut [f32]) {
    let mut acc = vec![0f64; out.len()];
    for p in parts {
        for (a, &x) in acc.iter_mut().zip(p.iter()) {
            *a += f64::from(x);
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

/// `out = parts[0] + parts[1] + ...` in rank order.
pub(crate) fn sum_in_rank_order_f64(parts: &[&[f64]], out: &mut [f64]) {
    out.fill(0.0);
    for p in parts {
        for (a, &x) in out.iter_mut().zip(p.iter()) {
            *a += x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use temper_core::CpuBackend;

    #[test]
    fn single_leaves_values_alone() {
        let be = CpuBackend::new();
        let mut buf = be.upload(&[1.0, -2.0]).expect("upload");
        let c: &dyn Collective<CpuBackend> = &Single;
        c.all_reduce_bufs(&be, &mut [&mut buf]).expect("reduce");
        let mut v = [3.0f64];
        c.all_reduce_f64(&mut v).expect("reduce");
        assert_eq!(be.download(&buf).expect("download"), vec![1.0, -2.0]);
        assert_eq!(v, [3.0]);
        assert_eq!((c.rank(), c.world()), (0, 1));
    }

    #[test]
    fn rank_order_sum_rounds_once() {
        // 1 + 1e-8 + 1e-8 ... in f32 steps would stay 1.0; the f64 accumulator does not.
        let a = [1.0f32];
        let b = [1e-8f32];
        let parts: Vec<&[f32]> = std::iter::once(&a[..])
            .chain(std::iter::repeat_n(&b[..], 100))
            .collect();
        let mut out = [0f32];
        sum_in_rank_order_f32(&parts, &mut out);
        assert_eq!(out[0], (1.0f64 + 100.0 * f64::from(1e-8f32)) as f32);
        assert!(out[0] > 1.0);
    }
}
