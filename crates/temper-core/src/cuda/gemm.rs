//! GEMMs through cuBLAS `cublasGemmEx` / `cublasGemmStridedBatchedEx`: f32, bf16 or f16
//! operands with f32 accumulation (tensor cores for the 16-bit types), into a workspace the
//! backend owns and counts. Row-major throughout: C = op(A) op(B) is computed as the
//! column-major C^T = op(B)^T op(A)^T.

use std::ffi::c_void;

use cudarc::cublas::result::{gemm_ex, gemm_strided_batched_ex};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::{blas_err, elementwise, CudaBackend, CudaBuf};
use crate::backend::Gemm;
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

impl CudaBackend {
    /// A packed row-major operand of `buf` from element `offset`.
    fn operand(&self, buf: &CudaBuf, offset: usize, ld: usize) -> Operand {
        Operand {
            ptr: self.ptr(buf, offset),
            dtype: buf.dtype,
            ld,
            stride: 0,
        }
    }

    /// [`Backend::matmul`] on element ranges: a from `a_off`, b from `b_off`, c from `c_off`,
    /// with any mix of storage types. C is written through its device address, so a shared
    /// reference suffices (the callers hold the only use of it while the stream runs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_at(
        &self,
        c: &CudaBuf,
        c_off: usize,
        a: &CudaBuf,
        a_off: usize,
        b: &CudaBuf,
        b_off: usize,
        g: Gemm,
    ) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        // The operands meet in one type: the 16-bit one when there is one.
        let input_dt = match (a.dtype, b.dtype) {
            (x, y) if x == y => x,
            (DType::F32, y) => y,
            (x, DType::F32) => x,
            _ => c.dtype,
        };
        let a_conv;
        let b_conv;
        let (a, a_off) = if a.dtype == input_dt {
            (a, a_off)
        } else {
            a_conv = self.converted_range(a, a_off, g.m * g.k, input_dt)?;
            (&a_conv, 0)
        };
        let (b, b_off) = if b.dtype == input_dt {
            (b, b_off)
        } else {
            b_conv = self.converted_range(b, b_off, g.k * g.n, input_dt)?;
            (&b_conv, 0)
        };
        let shape = Shape {
            m: g.m,
            n: g.n,
            k: g.k,
            ta: g.ta,
            tb: g.tb,
            alpha: g.alpha,
            beta: g.beta,
            batch: 1,
        };
        let lda = if g.ta { g.m } else { g.k };
        let ldb = if g.tb { g.k } else { g.n };
        let (oa, ob) = (self.operand(a, a_off, lda), self.operand(b, b_off, ldb));
        if c.dtype == input_dt || c.dtype == DType::F32 {
            return self.gemm_raw(shape, oa, ob, self.operand(c, c_off, g.n));
        }
        // cuBLAS has no f32 x f32 -> 16-bit GEMM: go through an f32 copy of C.
        let tmp = self.alloc_uninit(g.m * g.n, DType::F32)?;
        if g.beta != 0.0 {
            elementwise::cast(
                self,
                self.ptr(&tmp, 0),
                DType::F32,
                self.ptr(c, c_off),
                c.dtype,
                g.m * g.n,
            )?;
        }
        self.gemm_raw(shape, oa, ob, self.operand(&tmp, 0, g.n))?;
        let tmp_ptr = self.ptr(&tmp, 0);
        elementwise::cast(
            self,
            self.ptr(c, c_off),
            c.dtype,
            tmp_ptr,
            DType::F32,
            g.m * g.n,
        )
    }

    /// Elements off..off+n of `b` converted to `dt`, in a new buffer.
    fn converted_range(&self, b: &CudaBuf, off: usize, n: usize, dt: DType) -> Result<CudaBuf> {
        let out = self.alloc_uninit(n, dt)?;
        elementwise::cast(self, self.ptr(&out, 0), dt, self.ptr(b, off), b.dtype, n)?;
        Ok(out)
    }
}
