//! GEMMs through cuBLAS `cublasGemmEx` / `cublasGemmStridedBatchedEx`: f32, bf16 or f16
//! operands with f32 accumulation (tensor cores for the 16-bit types), into a workspace the
//! backend owns and counts. Row-major throughout: C = op(A) op(B) is computed as the
//! column-major C^T = op(B)^T op(A)^T.

use std::ffi::c_void;

use cudarc::cublas::result::{gemm_ex, gemm_strided_batched_ex};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::{blas_err, CudaBackend};
use crate::{DType, Result};

/// One operand of a (batched) GEMM: a device address, its storage type, the row stride
/// (elements between rows of the matrix as stored) and the stride between batch members.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    pub ptr: u64,
    pub dtype: DType,
    pub ld: usize,
    pub stride: usize,
}

/// Shapes of one row-major GEMM: op(A) (m, k), op(B) (k, n), C (m, n), `batch` times.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
}

fn data_type(d: DType) -> cudaDataType {
    match d {
        DType::F32 => cudaDataType::CUDA_R_32F,
        DType::BF16 => cudaDataType::CUDA_R_16BF,
        DType::F16 => cudaDataType::CUDA_R_16F,
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl CudaBackend {
    /// C = alpha op(A) op(B) + beta C. A and B must share a storage type; C is that type or
    /// f32 (the combinations cuBLAS supports with f32 compute).
    pub(super) fn gemm_raw(&self, s: Shape, a: Operand, b: Operand, c: Operand) -> Result<()> {
        if s.m == 0 || s.n == 0 || s.batch == 0 {
            return Ok(());
        }
        debug_assert_eq!(a.dtype, b.dtype);
        debug_assert!(c.dtype == a.dtype || c.dtype == DType::F32);
        let (alpha, beta) = (s.alpha, s.beta);
        let handle = *self.blas.handle();
        let compute = cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        // SAFETY: the callers checked that every operand's extent lies inside its buffer and
        // keep the buffers alive until the stream has run this GEMM; alpha and beta are host
        // f32 values matching the f32 compute type.
        unsafe {
            if s.batch == 1 {
                gemm_ex(
                    handle,
                    op(s.tb),
                    op(s.ta),
                    s.n as i32,
                    s.m as i32,
                    s.k as i32,
                    &alpha as *const f32 as *const c_void,
                    b.ptr as *const c_void,
                    data_type(b.dtype),
                    b.ld as i32,
                    a.ptr as *const c_void,
                    data_type(a.dtype),
                    a.ld as i32,
                    &beta as *const f32 as *const c_void,
                    c.ptr as *mut c_void,
                    data_type(c.dtype),
                    c.ld as i32,
                    compute,
                    algo,
                )
            } else {
                gemm_strided_batched_ex(
                    handle,
                    op(s.tb),
                    op(s.ta),
                    s.n as i32,
                    s.m as i32,
                    s.k as i32,
                    &alpha as *const f32 as *const c_void,
                    b.ptr as *const c_void,
                    data_type(b.dtype),
                    b.ld as i32,
                    b.stride as i64,
                    a.ptr as *const c_void,
                    data_type(a.dtype),
                    a.ld as i32,
                    a.stride as i64,
                    &beta as *const f32 as *const c_void,
                    c.ptr as *mut c_void,
                    data_type(c.dtype),
                    c.ld as i32,
                    c.stride as i64,
                    s.batch as i32,
                    compute,
                    algo,
                )
            }
        }
        .map_err(blas_err)
    }
}
