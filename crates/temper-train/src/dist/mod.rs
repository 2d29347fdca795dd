//! Data parallelism: ranks that each train on their own share of the batches and sum their
//! LoRA gradients after every micro-batch's backward.
//!
//! - `collective`: the interface (sum, broadcast, barrier) and the one-rank `Single`;
//!   `grad_sync` sums a model's gradients through it, layer by layer as backward finishes.
//! - `in_process` (threads), `tcp` (processes on one or several hosts, found through
//!   `rendezvous`) and `nccl` (GPUs; `nccl_lib` loads the library, `nccl_cuda` orders its
//!   stream after the backend's) implement it.
//! - `shard`: which batches each rank trains on.

pub mod collective;
pub mod grad_sync;
pub mod in_process;
pub mod nccl;
pub mod nccl_cuda;
pub mod nccl_lib;
pub mod rendezvous;
pub mod shard;
pub mod tcp;
