//! Gradients summed on the GPUs by NCCL (through cudarc's `nccl` bindings), one process per
//! GPU. The rendezvous connections ([`Tcp`]) stay up beside it as the control plane: they
//! carry the NCCL unique id, the per-step scalars (loss-token counts, the loss, stop flags)
//! and broadcasts, in f64 and in rank order, so those agree bit for bit on every rank.
//!
//! NCCL is opened only here, when a job asks for it ([`crate::dist::nccl_lib::ensure_loadable`]).
//! A collective that does not finish within the timeout (a rank died or hung) aborts the
//! communicator and fails, so no rank waits forever inside NCCL.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::sys as cu;
use cudarc::nccl::{result as nccl, sys};
use temper_core::{Backend, DType};

use crate::dist::collective::{Collective, HostCollective};
use crate::dist::nccl_lib;
use crate::dist::tcp::Tcp;
use crate::error::{Result, TrainError};

/// A device buffer as raw parts: its address, element count and element type.
#[derive(Clone, Copy, Debug)]
pub struct RawDeviceBuf {
    pub ptr: cu::CUdeviceptr,
    pub count: usize,
    pub dtype: DType,
}

/// What NCCL needs from a CUDA backend.
///
/// # Safety
/// `with_raw_buffers` must pass `f` the addresses of `count` elements of `dtype` that stay
/// valid while `f` runs, on the device `cuda_ordinal` names, with every earlier write to
/// them ordered before work queued on `raw_stream`, and must order later uses of the
/// buffers after the work `f` queues on that stream.
pub unsafe trait NcclDevice: Backend {
    /// The CUDA device ordinal this backend computes on (LOCAL_RANK in a job).
    fn cuda_ordinal(&self) -> usize;
    /// Makes the backend's CUDA context current on the calling thread.
    fn bind_to_thread(&self) -> temper_core::Result<()>;
    /// The stream the backend's kernels run on.
    fn raw_stream(&self) -> cu::CUstream;
    /// Calls `f` with the device memory of `bufs`, which it may read and write on
    /// `raw_stream`.
    fn with_raw_buffers(
        &self,
        bufs: &mut [&mut Self::Buf],
        f: &mut dyn FnMut(&[RawDeviceBuf]) -> Result<()>,
    ) -> Result<()>;
}

/// A communicator handle. NCCL communicators may be used from any thread, one call at a
/// time; the mutex in [`Nccl`] provides the "one at a time".
struct Comm(sys::ncclComm_t);
// SAFETY: see above; the pointer is only used under the mutex.
unsafe impl Send for Comm {}

/// A CUDA stream of NCCL's own, so gradient sums run beside the backend's kernels.
struct CommStream(cu::CUstream);
// SAFETY: CUDA streams may be used from any thread of the process.
unsafe impl Send for CommStream {}
unsafe impl Sync for CommStream {}

/// One rank of an NCCL job.
pub struct Nccl<B: NcclDevice> {
    comm: Mutex<Comm>,
    /// Where started (overlapped) sums run; ordered against the backend's stream by events.
    comm_stream: CommStream,
    ctrl: Tcp,
    timeout: Duration,
    _backend: PhantomData<fn() -> B>,
}

/// `waiter` waits (on the device) for the work queued so far on `signaller`.
fn order_after(waiter: cu::CUstream, signaller: cu::CUstream) -> Result<()> {
    let mut ev: cu::CUevent = std::ptr::null_mut();
    // SAFETY: the event is created, recorded and released here; both streams belong to the
    // current context. Destroying a recorded event is allowed: its resources are released
    // once the recorded work completes.
    unsafe {
        let r = cu::cuEventCreate(&mut ev, cu::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32);
        if r != cu::CUresult::CUDA_SUCCESS {
            return Err(dist(format!("cuEventCreate: {r:?}")));
        }
        let r1 = cu::cuEventRecord(ev, signaller);
        let r2 = cu::cuStreamWaitEvent(waiter, ev, 0);
        cu::cuEventDestroy_v2(ev);
        for r in [r1, r2] {
            if r != cu::CUresult::CUDA_SUCCESS {
                return Err(dist(format!("ordering the NCCL stream: {r:?}")));
            }
        }
    }
    Ok(())
}

fn dist(msg: String) -> TrainError {
    TrainError::Distributed(msg)
}

/// NCCL's own words for an error code.
fn describe(e: &nccl::NcclError) -> String {
    // SAFETY: ncclGetErrorString returns a static C string for every code.
    let text = unsafe {
        let p = sys::ncclGetErrorString(e.0);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    format!("{:?} ({text})", e.0)
}

/// ncclCommInitRank on a thread of its own, bound to the calling thread's CUDA context,
/// waited for at most `timeout`: it blocks until every rank has joined, so a rank that died
/// after the rendezvous would otherwise hold the others forever. On a timeout the error is
/// returned and the thread is left blocked; the job is failing, and the process exit ends it.
fn init_comm_within(
    id: sys::ncclUniqueId,
    rank: usize,
    world: usize,
    gpu: usize,
    timeout: Duration,
) -> Result<sys::ncclComm_t> {
    let mut ctx: cu::CUcontext = std::ptr::null_mut();
    // SAFETY: reads the calling thread's current context (bound by the caller).
    let r = unsafe { cu::cuCtxGetCurrent(&mut ctx) };
    if r != cu::CUresult::CUDA_SUCCESS || ctx.is_null() {
        return Err(dist(format!(
            "rank {rank}: no CUDA context is current for NCCL ({r:?})"
        )));
    }
    // Raw pointers are not Send; the context and the communicator may be used from any
    // thread, so they travel as integers.
    let ctx = ctx as usize;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("nccl-init-{rank}"))
        .spawn(move || {
            // SAFETY: the context outlives this thread's use of it (the backend holds it for
            // the whole job); `comm` is written by NCCL; the id came from ncclGetUniqueId on
            // rank 0.
            let out = unsafe {
                let r = cu::cuCtxSetCurrent(ctx as cu::CUcontext);
                if r != cu::CUresult::CUDA_SUCCESS {
                    Err(format!("cuCtxSetCurrent: {r:?}"))
                } else {
                    let mut comm: sys::ncclComm_t = std::ptr::null_mut();
                    nccl::comm_init_rank(&mut comm, world as i32, id, rank as i32)
                        .map(|_| comm as usize)
                        .map_err(|e| describe(&e))
                }
            };
            let _ = tx.send(out);
        })
        .map_err(|e| dist(format!("rank {rank}: starting the NCCL init thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(comm)) => Ok(comm as sys::ncclComm_t),
        Ok(Err(e)) => Err(dist(format!(
            "rank {rank}: ncclCommInitRank (world {world}, GPU {gpu}): {e}; NCCL_DEBUG=INFO says more"
        ))),
        Err(_) => Err(dist(format!(
            "rank {rank}: ncclCommInitRank (world {world}, GPU {gpu}) did not finish within \
             {:.0} s: another rank died or hung after the rendezvous (see its output); raise \
             dist_timeout if it is only slow",
            timeout.as_secs_f64()
        ))),
    }
}

impl<B: NcclDevice> Nccl<B> {
    /// Starts NCCL on `be`'s GPU: rank 0 makes the unique id, `ctrl` (already joined)
    /// hands it to the others, and every rank joins the communicator.
    pub fn new(be: &B, ctrl: Tcp, timeout: Duration) -> Result<Self> {
        nccl_lib::ensure_loadable()?;
        let (rank, world) = (HostCollective::rank(&ctrl), HostCollective::world(&ctrl));
        be.bind_to_thread()?;
        let mut id_bytes = Vec::new();
        if rank == 0 {
            let id = nccl::get_uniqueid()
                .map_err(|e| dist(format!("rank 0: ncclGetUniqueId: {}", describe(&e))))?;
            id_bytes = id.internal.iter().map(|&c| c as u8).collect();
        }
        HostCollective::broadcast_bytes(&ctrl, &mut id_bytes)?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        if id_bytes.len() != id.internal.len() {
            return Err(dist(format!(
                "rank {rank}: the NCCL unique id from rank 0 has {} bytes, expected 128",
                id_bytes.len()
            )));
        }
        for (d, &s) in id.internal.iter_mut().zip(&id_bytes) {
            *d = s as std::ffi::c_char;
        }
        let comm = init_comm_within(id, rank, world, be.cuda_ordinal(), timeout)?;
        let mut stream: cu::CUstream = std::ptr::null_mut();
        // SAFETY: creates a stream in the context bound above; destroyed on drop.
        let r = unsafe {
            cu::cuStreamCreate(
                &mut stream,
                cu::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
            )
        };
        if r != cu::CUresult::CUDA_SUCCESS {
            return Err(dist(format!("rank {rank}: cuStreamCreate: {r:?}")));
        }
        Ok(Nccl {
            comm: Mutex::new(Comm(comm)),
            comm_stream: CommStream(stream),
            ctrl,
            timeout,
            _backend: PhantomData,
        })
    }

    fn comm(&self) -> Result<MutexGuard<'_, Comm>> {
        self.comm
            .lock()
            .map_err(|_| dist("a thread panicked inside an NCCL call".into()))
    }

    /// Waits until `stream` has run everything queued, watching NCCL for errors; on an error
    /// or after the timeout, aborts the communicator so no rank stays blocked in it.
    fn wait(&self, comm: &mut Comm, stream: cu::CUstream, what: &str) -> Result<()> {
        let rank = HostCollective::rank(&self.ctrl);
        let started = Instant::now();
        loop {
            // SAFETY: the stream belongs to the backend, alive while `self` is borrowed.
            match unsafe { cu::cuStreamQuery(stream) } {
                cu::CUresult::CUDA_SUCCESS => return Ok(()),
                cu::CUresult::CUDA_ERROR_NOT_READY => {}
                other => {
                    return Err(dist(format!(
                        "rank {rank}: CUDA error {other:?} while waiting for {what}"
                    )))
                }
            }
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: the communicator is alive (it is destroyed only on drop).
            let _ = unsafe { sys::ncclCommGetAsyncError(comm.0, &mut state) };
            let failed = !matches!(
                state,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            );
            if failed || started.elapsed() > self.timeout {
                // SAFETY: aborting is how NCCL releases a communicator stuck on a lost peer.
                let _ = unsafe { nccl::comm_abort(comm.0) };
                comm.0 = std::ptr::null_mut();
                return Err(dist(if failed {
                    format!(
                        "rank {rank}: NCCL failed during {what}: {}; another rank probably stopped (see its output)",
                        describe(&nccl::NcclError(state))
                    )
                } else {
                    format!(
                        "rank {rank}: {what} did not finish within {:.0} s: a rank died or hung; raise dist_timeout if it is only slow",
                        self.timeout.as_secs_f64()
                    )
                }));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl<B: NcclDevice> Drop for Nccl<B> {
    fn drop(&mut self) {
        if let Ok(c) = self.comm.get_mut() {
            if !c.0.is_null() {
                // SAFETY: the communicator is not used after this.
                let _ = unsafe { nccl::comm_destroy(c.0) };
            }
        }
        if !self.comm_stream.0.is_null() {
            // SAFETY: nothing is queued on the stream after this (finish waited for it).
            let _ = unsafe { cu::cuStreamDestroy_v2(self.comm_stream.0) };
        }
    }
}

impl<B: NcclDevice> Nccl<B> {
    /// One NCCL group of in-place sums of `bufs` on `stream`.
    fn group_all_reduce(
        &self,
        be: &B,
        bufs: &mut [&mut B::Buf],
        stream: cu::CUstream,
    ) -> Result<()> {
        let rank = Collective::<B>::rank(self);
        let comm = self.comm()?;
        if comm.0.is_null() {
            return Err(dist(format!(
                "rank {rank}: the NCCL communicator was aborted after an earlier failure"
            )));
        }
        let fail =
            |call: &str, e: nccl::NcclError| dist(format!("rank {rank}: {call}: {}", describe(&e)));
        let raw_comm = comm.0;
        be.with_raw_buffers(bufs, &mut |raws| {
            nccl::group_start().map_err(|e| fail("ncclGroupStart", e))?;
            for raw in raws {
                // SAFETY: NcclDevice promises `raw` is valid device memory; the caller ordered
                // `stream` after the writes to it. The sum is in place, which NCCL allows.
                let r = unsafe {
                    nccl::all_reduce(
                        raw.ptr as *const std::ffi::c_void,
                        raw.ptr as *mut std::ffi::c_void,
                        raw.count,
                        nccl_dtype(raw.dtype),
                        sys::ncclRedOp_t::ncclSum,
                        raw_comm,
                        stream as sys::cudaStream_t,
                    )
                };
                if let Err(e) = r {
                    let _ = nccl::group_end();
                    return Err(fail("ncclAllReduce", e));
                }
            }
            nccl::group_end().map_err(|e| fail("ncclGroupEnd", e))?;
            Ok(())
        })
    }
}

fn nccl_dtype(d: DType) -> sys::ncclDataType_t {
    match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
    }
}

impl<B: NcclDevice> Collective<B> for Nccl<B> {
    fn rank(&self) -> usize {
        HostCollective::rank(&self.ctrl)
    }
    fn world(&self) -> usize {
        HostCollective::world(&self.ctrl)
    }
    /// One NCCL group of in-place sums on the backend's stream (so it runs after the
    /// backward that wrote the gradients), then a watched wait for it.
    fn all_reduce_bufs(&self, be: &B, bufs: &mut [&mut B::Buf]) -> Result<()> {
        let stream = be.raw_stream();
        self.group_all_reduce(be, bufs, stream)?;
        let mut comm = self.comm()?;
        self.wait(&mut comm, stream, "the gradient all-reduce")
    }
    /// The sums run on NCCL's own stream, after the work queued so far on the backend's.
    fn start_all_reduce_bufs(&self, be: &B, bufs: &mut [&mut B::Buf]) -> Result<()> {
        be.bind_to_thread()?;
        order_after(self.comm_stream.0, be.raw_stream())?;
        self.group_all_reduce(be, bufs, self.comm_stream.0)
    }
    /// The backend's stream waits for every started sum; the host watches them finish.
    fn finish_all_reduces(&self, be: &B) -> Result<()> {
        be.bind_to_thread()?;
        order_after(be.raw_stream(), self.comm_stream.0)?;
        let mut comm = self.comm()?;
        self.wait(&mut comm, self.comm_stream.0, "the gradient all-reduce")
    }
    fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        HostCollective::all_reduce_f64(&self.ctrl, values)
    }
    fn all_reduce_f32(&self, values: &mut [f32]) -> Result<()> {
        HostCollective::all_reduce_f32(&self.ctrl, values)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        HostCollective::broadcast_bytes(&self.ctrl, bytes)
    }
}
