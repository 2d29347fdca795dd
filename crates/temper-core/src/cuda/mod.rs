//! The CUDA backend: buffers in device memory, GEMMs through cuBLAS, every other op an NVRTC
//! kernel from `kernels/*.cu` beside its CPU twin in `src/cpu/`. The CUDA libraries are loaded
//! at run time, so the same binary runs on machines without them ([`CudaBackend::new`] says
//! which library is missing instead of failing).

pub mod compile;

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};

use crate::backend::{AdamWStep, Backend, Gemm};
use crate::error::check_len;
use crate::memory::Accounting;
use crate::{CoreError, Result};

/// A device buffer of f32, counted by the backend that made it until dropped.
pub struct CudaBuf {
    data: CudaSlice<f32>,
    len: usize,
    accounting: Arc<Accounting>,
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.accounting.sub(self.len * 4);
    }
}

/// The compiled kernels, one field per entry point.
struct Kernels {
    fill: CudaFunction,
    axpy: CudaFunction,
    scale: CudaFunction,
    add_bias: CudaFunction,
    sum_squares: CudaFunction,
    dropout: CudaFunction,
    swiglu_forward: CudaFunction,
    swiglu_backward: CudaFunction,
    adamw: CudaFunction,
    embedding_forward: CudaFunction,
    rmsnorm_forward: CudaFunction,
    rmsnorm_backward: CudaFunction,
    rope: CudaFunction,
    attention_forward: CudaFunction,
    attention_decode: CudaFunction,
    attention_backward_dot: CudaFunction,
    attention_backward_dq: CudaFunction,
    attention_backward_dkv: CudaFunction,
    cross_entropy_rows: CudaFunction,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    accounting: Arc<Accounting>,
    device_name: String,
}

fn dev_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CoreError {
    move |e| CoreError::Device(format!("{op}: {e:?}"))
}

fn blas_err(e: cudarc::cublas::result::CublasError) -> CoreError {
    CoreError::Device(format!("cuBLAS: {e:?}"))
}

/// Why the CUDA backend cannot start here, or None when every library it needs loads.
pub fn unavailable_reason() -> Option<String> {
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    // SAFETY: these only try to dlopen the libraries.
    let checks: [(&str, bool); 3] = unsafe {
        [
            (
                "libcuda.so (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("libnvrtc.so", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas.so", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    for (lib, present) in checks {
        if !present {
            return Some(format!(
                "{lib} could not be loaded (LD_LIBRARY_PATH={path:?}); on a machine with an NVIDIA GPU, add the CUDA library folder, e.g. /usr/local/cuda/lib64, to LD_LIBRARY_PATH"
            ));
        }
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the NVIDIA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the NVIDIA driver could not list GPUs: {e:?}")),
    }
}

/// A grid-stride launch over n elements.
fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 8192) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of ROW_THREADS per row.
fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per block of the attention kernels; head_dim may be up to 4 times this.
const ATTN_THREADS: u32 = 128;
/// Threads per block of row kernels (RMSNorm, cross-entropy rows).
const ROW_THREADS: u32 = 256;

/// For each token, the first token of its sequence and one past its last. cu_seqlens was
/// checked by [`crate::checks::attention`].
fn token_bounds(cu: &[u32], n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; n];
    let mut ends = vec![0u32; n];
    for w in cu.windows(2) {
        for t in w[0]..w[1] {
            starts[t as usize] = w[0];
            ends[t as usize] = w[1];
        }
    }
    (starts, ends)
}

impl CudaBackend {
    /// Starts on GPU `ordinal`: loads the libraries, compiles (or reads cached) kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(reason) = unavailable_reason() {
            return Err(CoreError::Device(reason));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err("creating the CUDA context"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev_err("compute capability"))?;
        let device_name = ctx.name().map_err(dev_err("device name"))?;
        let arch = compile::arch_for(major, minor)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err)?;
        let mut modules = std::collections::HashMap::new();
        for (name, src) in compile::SOURCES {
            let ptx = compile::compile(name, src, arch)?;
            let module = ctx
                .load_module(ptx)
                .map_err(dev_err("loading a kernel module"))?;
            modules.insert(*name, module);
        }
        let f = |module: &str, name: &str| -> Result<CudaFunction> {
            modules[module]
                .load_function(name)
                .map_err(|e| CoreError::Device(format!("kernel {name} in {module}: {e:?}")))
        };
        let k = Kernels {
            fill: f("elementwise.cu", "fill_f32")?,
            axpy: f("elementwise.cu", "axpy_f32")?,
            scale: f("elementwise.cu", "scale_f32")?,
            add_bias: f("elementwise.cu", "add_bias_f32")?,
            sum_squares: f("elementwise.cu", "sum_squares_f32")?,
            dropout: f("elementwise.cu", "dropout_f32")?,
            swiglu_forward: f("elementwise.cu", "swiglu_forward_f32")?,
            swiglu_backward: f("elementwise.cu", "swiglu_backward_f32")?,
            adamw: f("elementwise.cu", "adamw_f32")?,
            embedding_forward: f("layers.cu", "embedding_forward_f32")?,
            rmsnorm_forward: f("layers.cu", "rmsnorm_forward_f32")?,
            rmsnorm_backward: f("layers.cu", "rmsnorm_backward_f32")?,
            rope: f("layers.cu", "rope_f32")?,
            attention_forward: f("attention.cu", "attention_forward_f32")?,
            attention_decode: f("attention.cu", "attention_decode_f32")?,
            attention_backward_dot: f("attention.cu", "attention_backward_dot_f32")?,
            attention_backward_dq: f("attention.cu", "attention_backward_dq_f32")?,
            attention_backward_dkv: f("attention.cu", "attention_backward_dkv_f32")?,
            cross_entropy_rows: f("cross_entropy.cu", "cross_entropy_rows_f32")?,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            k,
            accounting: Arc::new(Accounting::default()),
            device_name,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err("synchronize"))
    }

    /// Free and total device memory as the driver sees it (the whole process).
    pub fn driver_memory(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(dev_err("bind"))?;
        cudarc::driver::result::mem_get_info().map_err(dev_err("mem_get_info"))
    }

    fn wrap(&self, data: CudaSlice<f32>, len: usize) -> CudaBuf {
        self.accounting.add(len * 4);
        CudaBuf {
            data,
            len,
            accounting: self.accounting.clone(),
        }
    }

    fn upload_u32(&self, host: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream
            .clone_htod(host)
            .map_err(dev_err("upload indices"))
    }

    /// Row-major C = alpha op(A) op(B) + beta C through column-major cuBLAS: C^T = op(B)^T op(A)^T.
    fn gemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        c: &mut C,
        a: &A,
        b: &B,
        g: Gemm,
    ) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(g.tb),
            transb: op(g.ta),
            m: g.n as i32,
            n: g.m as i32,
            k: g.k as i32,
            alpha: g.alpha,
            lda: if g.tb { g.k as i32 } else { g.n as i32 },
            ldb: if g.ta { g.m as i32 } else { g.k as i32 },
            beta: g.beta,
            ldc: g.n as i32,
        };
        // SAFETY: the callers checked that a, b and c hold m*k, k*n and m*n elements.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(blas_err)
    }
}

macro_rules! launch {
    ($self:ident, $f:expr, $cfg:expr, $op:literal, $($arg:expr),* $(,)?) => {{
        let mut builder = $self.stream.launch_builder(&$f);
        $( builder.arg($arg); )*
        // SAFETY: every kernel's arguments match its CUDA signature in kernels/*.cu, and the
        // buffer sizes were checked by the calling method.
        unsafe { builder.launch($cfg) }.map(|_| ()).map_err(dev_err($op))
    }};
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn zeros(&self, n: usize) -> Result<CudaBuf> {
        let data = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(dev_err("alloc"))?;
        Ok(self.wrap(data, n))
    }

    fn upload(&self, host: &[f32]) -> Result<CudaBuf> {
        let data = self.stream.clone_htod(host).map_err(dev_err("upload"))?;
        Ok(self.wrap(data, host.len()))
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.stream
            .clone_dtoh(&buf.data)
            .map_err(dev_err("download"))
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn fill(&self, buf: &mut CudaBuf, value: f32) -> Result<()> {
        let n = buf.len as u64;
        launch!(
            self,
            self.k.fill,
            grid_stride(buf.len),
            "fill",
            &mut buf.data,
            &value,
            &n
        )
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        check_len("copy", "dst", dst.len, src.len)?;
        self.stream
            .memcpy_dtod(&src.data, &mut dst.data)
            .map_err(dev_err("copy"))
    }

    fn peak_bytes(&self) -> usize {
        self.accounting.peak()
    }

    fn matmul(&self, c: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, g: Gemm) -> Result<()> {
        check_len("matmul", "a", a.len, g.m * g.k)?;
        check_len("matmul", "b", b.len, g.k * g.n)?;
        check_len("matmul", "c", c.len, g.m * g.n)?;
        self.gemm(&mut c.data, &a.data, &b.data, g)
    }

    fn axpy(&self, y: &mut CudaBuf, alpha: f32, x: &CudaBuf) -> Result<()> {
        check_len("axpy", "x", x.len, y.len)?;
        let n = y.len as u64;
        launch!(
            self,
            self.k.axpy,
            grid_stride(y.len),
            "axpy",
            &mut y.data,
            &alpha,
            &x.data,
            &n
        )
    }

    fn scale(&self, y: &mut CudaBuf, alpha: f32) -> Result<()> {
        let n = y.len as u64;
        launch!(
            self,
            self.k.scale,
            grid_stride(y.len),
            "scale",
            &mut y.data,
            &alpha,
            &n
        )
    }

    fn add_bias(&self, y: &mut CudaBuf, bias: &CudaBuf, c: usize) -> Result<()> {
        check_len("add_bias", "bias", bias.len, c)?;
        if c == 0 || !y.len.is_multiple_of(c) {
            return Err(CoreError::Invalid {
                op: "add_bias",
                msg: format!("{} values are not whole rows of {c}", y.len),
            });
        }
        let (n, c32) = (y.len as u64, c as u32);
        launch!(
            self,
            self.k.add_bias,
            grid_stride(y.len),
            "add_bias",
            &mut y.data,
            &bias.data,
            &n,
            &c32
        )
    }

    fn sum_squares(&self, x: &CudaBuf) -> Result<f64> {
        let mut out = self
            .stream
            .alloc_zeros::<f64>(1)
            .map_err(dev_err("alloc"))?;
        let n = x.len as u64;
        launch!(
            self,
            self.k.sum_squares,
            grid_stride(x.len),
            "sum_squares",
            &mut out,
            &x.data,
            &n
        )?;
        let host = self.stream.clone_dtoh(&out).map_err(dev_err("download"))?;
        Ok(host[0])
    }

    fn dropout(&self, y: &mut CudaBuf, x: &CudaBuf, p: f32, seed: u64) -> Result<()> {
        check_len("dropout", "x", x.len, y.len)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(CoreError::Invalid {
                op: "dropout",
                msg: format!("p must be in [0, 1], got {p}"),
            });
        }
        if p == 0.0 {
            return self.copy(y, x);
        }
        if p >= 1.0 {
            return self.fill(y, 0.0);
        }
        let n = y.len as u64;
        launch!(
            self,
            self.k.dropout,
            grid_stride(y.len),
            "dropout",
            &mut y.data,
            &x.data,
            &p,
            &seed,
            &n
        )
    }

    fn embedding_forward(
        &self,
        out: &mut CudaBuf,
        ids: &[u32],
        table: &CudaBuf,
        c: usize,
    ) -> Result<()> {
        crate::checks::embedding("embedding_forward", out.len, ids, table.len, c)?;
        if ids.is_empty() {
            return Ok(());
        }
        let ids_d = self.upload_u32(ids)?;
        let (n, c32) = (ids.len() as u32, c as u32);
        let cfg = LaunchConfig {
            grid_dim: (n, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            self.k.embedding_forward,
            cfg,
            "embedding_forward",
            &mut out.data,
            &ids_d,
            &table.data,
            &n,
            &c32
        )
    }

    fn rmsnorm_forward(
        &self,
        y: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("rmsnorm_forward", "w", w.len, c)?;
        check_len("rmsnorm_forward", "y", y.len, x.len)?;
        check_len("rmsnorm_forward", "rstd", rstd.len, x.len / c.max(1))?;
        let rows = (x.len / c.max(1)) as u32;
        if rows == 0 {
            return Ok(());
        }
        let c32 = c as u32;
        let cfg = per_row(rows);
        launch!(
            self,
            self.k.rmsnorm_forward,
            cfg,
            "rmsnorm_forward",
            &mut y.data,
            &mut rstd.data,
            &x.data,
            &w.data,
            &c32,
            &eps
        )
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rstd: &CudaBuf,
        c: usize,
    ) -> Result<()> {
        check_len("rmsnorm_backward", "dy", dy.len, x.len)?;
        check_len("rmsnorm_backward", "dx", dx.len, x.len)?;
        check_len("rmsnorm_backward", "w", w.len, c)?;
        let rows = (x.len / c.max(1)) as u32;
        if rows == 0 {
            return Ok(());
        }
        let c32 = c as u32;
        let cfg = per_row(rows);
        launch!(
            self,
            self.k.rmsnorm_backward,
            cfg,
            "rmsnorm_backward",
            &mut dx.data,
            &dy.data,
            &x.data,
            &w.data,
            &rstd.data,
            &c32
        )
    }

    fn rope_forward(
        &self,
        x: &mut CudaBuf,
        pos: &[u32],
        cos: &CudaBuf,
        sin: &CudaBuf,
        h: usize,
        d: usize,
    ) -> Result<()> {
        self.rope(x, pos, cos, sin, h, d, 1.0)
    }

    fn rope_backward(
        &self,
        dx: &mut CudaBuf,
        pos: &[u32],
        cos: &CudaBuf,
        sin: &CudaBuf,
        h: usize,
        d: usize,
    ) -> Result<()> {
        self.rope(dx, pos, cos, sin, h, d, -1.0)
    }

    fn attention_forward(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        cu_seqlens: &[u32],
        hq: usize,
        hkv: usize,
        d: usize,
    ) -> Result<()> {
        let n = self.check_attention("attention_forward", q, k, v, cu_seqlens, hq, hkv, d)?;
        check_len("attention_forward", "out", out.len, q.len)?;
        check_len("attention_forward", "lse", lse.len, n * hq)?;
        let (starts, _) = token_bounds(cu_seqlens, n);
        if n == 0 {
            return Ok(());
        }
        let starts_d = self.upload_u32(&starts)?;
        let scale = 1.0 / (d as f32).sqrt();
        let (hq32, hkv32, d32) = (hq as u32, hkv as u32, d as u32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, hq32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (d as u32 + ATTN_THREADS + 32) * 4,
        };
        launch!(
            self,
            self.k.attention_forward,
            cfg,
            "attention_forward",
            &mut out.data,
            &mut lse.data,
            &q.data,
            &k.data,
            &v.data,
            &starts_d,
            &hq32,
            &hkv32,
            &d32,
            &scale
        )
    }

    fn attention_backward(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        cu_seqlens: &[u32],
        hq: usize,
        hkv: usize,
        d: usize,
    ) -> Result<()> {
        let n = self.check_attention("attention_backward", q, k, v, cu_seqlens, hq, hkv, d)?;
        for (name, len, want) in [
            ("dq", dq.len, q.len),
            ("dk", dk.len, k.len),
            ("dv", dv.len, v.len),
            ("dout", dout.len, q.len),
            ("out", out.len, q.len),
            ("lse", lse.len, n * hq),
        ] {
            check_len("attention_backward", name, len, want)?;
        }
        let (starts, ends) = token_bounds(cu_seqlens, n);
        if n == 0 {
            return Ok(());
        }
        let starts_d = self.upload_u32(&starts)?;
        let ends_d = self.upload_u32(&ends)?;
        let scale = 1.0 / (d as f32).sqrt();
        let (hq32, hkv32, d32) = (hq as u32, hkv as u32, d as u32);
        let mut dsum = self.zeros(n * hq)?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, hq32, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            self.k.attention_backward_dot,
            cfg,
            "attention_backward_dot",
            &mut dsum.data,
            &dout.data,
            &out.data,
            &hq32,
            &d32
        )?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, hq32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (2 * d as u32 + ATTN_THREADS) * 4,
        };
        launch!(
            self,
            self.k.attention_backward_dq,
            cfg,
            "attention_backward_dq",
            &mut dq.data,
            &dout.data,
            &q.data,
            &k.data,
            &v.data,
            &lse.data,
            &dsum.data,
            &starts_d,
            &hq32,
            &hkv32,
            &d32,
            &scale
        )?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, hkv32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (2 * d as u32 + 2 * ATTN_THREADS) * 4,
        };
        launch!(
            self,
            self.k.attention_backward_dkv,
            cfg,
            "attention_backward_dkv",
            &mut dk.data,
            &mut dv.data,
            &dout.data,
            &q.data,
            &k.data,
            &v.data,
            &lse.data,
            &dsum.data,
            &ends_d,
            &hq32,
            &hkv32,
            &d32,
            &scale
        )
    }

    fn attention_decode(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        past: usize,
        hq: usize,
        hkv: usize,
        d: usize,
    ) -> Result<()> {
        let bad = |msg: String| CoreError::Invalid {
            op: "attention_decode",
            msg,
        };
        if hq == 0 || hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(bad(format!(
                "{hq} query heads are not a multiple of {hkv} kv heads"
            )));
        }
        if d == 0 || d > 4 * ATTN_THREADS as usize || !q.len.is_multiple_of(hq * d) {
            return Err(bad(format!(
                "q holds {} values, not whole rows of {hq} x {d}",
                q.len
            )));
        }
        let n = q.len / (hq * d);
        check_len("attention_decode", "out", out.len, q.len)?;
        check_len("attention_decode", "v_cache", v_cache.len, k_cache.len)?;
        let cap = k_cache.len / (hkv * d);
        if past + n > cap {
            return Err(bad(format!(
                "{past} cached + {n} new positions exceed the cache's {cap} rows"
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let scale = 1.0 / (d as f32).sqrt();
        let (past32, hq32, hkv32, d32) = (past as u32, hq as u32, hkv as u32, d as u32);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, hq32, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (d as u32 + ATTN_THREADS + 32) * 4,
        };
        launch!(
            self,
            self.k.attention_decode,
            cfg,
            "attention_decode",
            &mut out.data,
            &q.data,
            &k_cache.data,
            &v_cache.data,
            &past32,
            &hq32,
            &hkv32,
            &d32,
            &scale
        )
    }

    fn copy_range(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        if dst_off + len > dst.len || src_off + len > src.len {
            return Err(CoreError::Invalid {
                op: "copy_range",
                msg: format!(
                    "{len} values from {src_off} of {} into {dst_off} of {} run past an end",
                    src.len, dst.len
                ),
            });
        }
        if len == 0 {
            return Ok(());
        }
        let from = src.data.slice(src_off..src_off + len);
        let mut to = dst.data.slice_mut(dst_off..dst_off + len);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(dev_err("copy_range"))
    }

    fn swiglu_forward(&self, h: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf) -> Result<()> {
        check_len("swiglu_forward", "up", up.len, gate.len)?;
        check_len("swiglu_forward", "h", h.len, gate.len)?;
        let n = h.len as u64;
        launch!(
            self,
            self.k.swiglu_forward,
            grid_stride(h.len),
            "swiglu_forward",
            &mut h.data,
            &gate.data,
            &up.data,
            &n
        )
    }

    fn swiglu_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dh: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) -> Result<()> {
        for (name, len) in [
            ("dh", dh.len),
            ("up", up.len),
            ("dgate", dgate.len),
            ("dup", dup.len),
        ] {
            check_len("swiglu_backward", name, len, gate.len)?;
        }
        let n = gate.len as u64;
        launch!(
            self,
            self.k.swiglu_backward,
            grid_stride(gate.len),
            "swiglu_backward",
            &mut dgate.data,
            &mut dup.data,
            &dh.data,
            &gate.data,
            &up.data,
            &n
        )
    }

    fn linear_cross_entropy(
        &self,
        mut dx: Option<&mut CudaBuf>,
        x: &CudaBuf,
        w: &CudaBuf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let n = targets.len();
        check_len("linear_cross_entropy", "x", x.len, n * c)?;
        check_len("linear_cross_entropy", "w", w.len, v * c)?;
        if let Some(dx) = dx.as_deref() {
            check_len("linear_cross_entropy", "dx", dx.len, n * c)?;
        }
        if let Some(&bad) = targets.iter().find(|&&t| t >= v as i32) {
            return Err(CoreError::Invalid {
                op: "linear_cross_entropy",
                msg: format!("target {bad} is outside the vocabulary of {v}"),
            });
        }
        if n == 0 {
            return Ok(vec![]);
        }
        // Any negative target is ignored, as on the CPU.
        let clean: Vec<i32> = targets
            .iter()
            .map(|&t| if t < 0 { -1 } else { t })
            .collect();
        let targets_d = self
            .stream
            .clone_htod(&clean)
            .map_err(dev_err("upload targets"))?;
        let chunk = chunk.clamp(1, n);
        let mut logits = self
            .stream
            .alloc_zeros::<f32>(chunk * v)
            .map_err(dev_err("alloc logits"))?;
        let mut loss = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(dev_err("alloc loss"))?;
        let (v32, write) = (v as u32, i32::from(dx.is_some()));
        for a in (0..n).step_by(chunk) {
            let b = (a + chunk).min(n);
            let rows = b - a;
            let mut lview = logits.slice_mut(0..rows * v);
            // logits (rows, V) = x[a..b] (rows, c) W^T
            self.gemm(
                &mut lview,
                &x.data.slice(a * c..b * c),
                &w.data,
                Gemm::nt(rows, v, c),
            )?;
            let cfg = per_row(rows as u32);
            let mut loss_view = loss.slice_mut(a..b);
            let target_view = targets_d.slice(a..b);
            launch!(
                self,
                self.k.cross_entropy_rows,
                cfg,
                "cross_entropy_rows",
                &mut lview,
                &mut loss_view,
                &target_view,
                &v32,
                &grad_scale,
                &write
            )?;
            if let Some(dx) = dx.as_deref_mut() {
                // dx[a..b] (rows, c) = dlogits (rows, V) W (V, c)
                self.gemm(
                    &mut dx.data.slice_mut(a * c..b * c),
                    &lview,
                    &w.data,
                    Gemm::nn(rows, c, v),
                )?;
            }
        }
        self.stream
            .clone_dtoh(&loss)
            .map_err(dev_err("download losses"))
    }

    fn adamw(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        s: AdamWStep,
    ) -> Result<()> {
        check_len("adamw", "grad", grad.len, param.len)?;
        check_len("adamw", "m", m.len, param.len)?;
        check_len("adamw", "v", v.len, param.len)?;
        if s.step == 0 {
            return Err(CoreError::Invalid {
                op: "adamw",
                msg: "step counts from 1".into(),
            });
        }
        let c = crate::cpu::adamw::Scalars::new(s);
        let n = param.len as u64;
        launch!(
            self,
            self.k.adamw,
            grid_stride(param.len),
            "adamw",
            &mut param.data,
            &grad.data,
            &mut m.data,
            &mut v.data,
            &c.decay,
            &c.w1,
            &c.b2,
            &c.one_minus_b2,
            &c.neg_step_size,
            &c.bc2_sqrt,
            &c.eps,
            &c.apply_decay,
            &n
        )
    }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut CudaBuf,
        pos: &[u32],
        cos: &CudaBuf,
        sin: &CudaBuf,
        h: usize,
        d: usize,
        sign: f32,
    ) -> Result<()> {
        let op = if sign > 0.0 {
            "rope_forward"
        } else {
            "rope_backward"
        };
        crate::checks::rope(op, x.len, pos, cos.len, sin.len, h, d)?;
        if pos.is_empty() {
            return Ok(());
        }
        let pos_d = self.upload_u32(pos)?;
        let (n, h32, d32) = (pos.len() as u32, h as u32, d as u32);
        launch!(
            self,
            self.k.rope,
            grid_stride(pos.len() * h * d / 2),
            "rope",
            &mut x.data,
            &pos_d,
            &cos.data,
            &sin.data,
            &n,
            &h32,
            &d32,
            &sign
        )
    }

    /// The shared checks, plus this kernel's head-dim limit and the k/v lengths.
    #[allow(clippy::too_many_arguments)]
    fn check_attention(
        &self,
        op: &'static str,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        cu_seqlens: &[u32],
        hq: usize,
        hkv: usize,
        d: usize,
    ) -> Result<usize> {
        let (_, n) = crate::checks::attention(op, q.len, cu_seqlens, hq, hkv, d)?;
        if d > 4 * ATTN_THREADS as usize {
            return Err(CoreError::Invalid {
                op,
                msg: format!("head dim {d} is above {}", 4 * ATTN_THREADS),
            });
        }
        check_len(op, "k", k.len, n * hkv * d)?;
        check_len(op, "v", v.len, n * hkv * d)?;
        Ok(n)
    }
}
