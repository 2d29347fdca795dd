//! temper-core: the [`Backend`] interface that model code is written against, and the CPU
//! reference implementation of every op (plain loops, rayon and the `gemm` crate).
//!
//! Model code calls only [`Backend`] methods. Each method has a CPU twin in [`cpu`], written
//! generically over [`Float`] so tests can run it in f64 for finite-difference checks. The
//! quantised formats the backends hold (4-bit and 8-bit weights, 8-bit optimizer state) are
//! temper-quant's.

pub mod backend;
pub mod cache;
pub mod checks;
pub mod cpu;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod float;
pub mod memory;
pub mod optim;
pub mod rope;

pub use backend::{AdamWStep, AttnShape, Backend, DeviceAdamW, Gemm, MappedAdamW};
pub use cpu::CpuBackend;
pub use cuda::CudaBackend;
pub use dtype::DType;
pub use error::{CoreError, Result};
pub use float::Float;
