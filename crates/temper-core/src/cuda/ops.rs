//! [`Backend`] for [`CudaBackend`]: size checks, storage-type dispatch and kernel launches.
//! Attention lives in `attention.rs`. An op whose inputs are stored in different types
//! converts the odd one out to the output's type first (in practice only small buffers,
//! e.g. an f32 LoRA matrix meeting bf16 activations).

use cudarc::driver::LaunchConfig;

use super::gemm::{Operand, Shape};
use super::{check_f32, dev_err, grid_stride, launch, per_row, CudaBackend, CudaBuf};
use crate::backend::{AdamWStep, AttnShape, Backend, Gemm};
use crate::error::check_len;
use crate::{CoreError, DType, Result};

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
            self.cast_raw(
                self.ptr(&tmp, 0),
                DType::F32,
                self.ptr(c, c_off),
                c.dtype,
                g.m * g.n,
            )?;
        }
        self.gemm_raw(shape, oa, ob, self.operand(&tmp, 0, g.n))?;
        let tmp_ptr = self.ptr(&tmp, 0);
        self.cast_raw(self.ptr(c, c_off), c.dtype, tmp_ptr, DType::F32, g.m * g.n)
    }

    /// Elements off..off+n of `b` converted to `dt`, in a new buffer.
    fn converted_range(&self, b: &CudaBuf, off: usize, n: usize, dt: DType) -> Result<CudaBuf> {
        let out = self.alloc_uninit(n, dt)?;
        self.cast_raw(self.ptr(&out, 0), dt, self.ptr(b, off), b.dtype, n)?;
        Ok(out)
    }

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
        check_f32(op, "cos", cos)?;
        check_f32(op, "sin", sin)?;
        if pos.is_empty() {
            return Ok(());
        }
        let pos_d = self.upload_u32(pos)?;
        let (n, h32, d32) = (pos.len() as u32, h as u32, d as u32);
        launch!(
            self,
            self.kernel("rope", x.dtype)?,
            grid_stride(pos.len() * h * d / 2),
            op,
            &mut x.data,
            &*pos_d,
            &cos.data,
            &sin.data,
            &n,
            &h32,
            &d32,
            &sign
        )
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Quant = super::CudaQuant;
    type Int8 = super::CudaInt8;
    type Host = super::CudaHost;
    type Mapped = super::CudaMapped;
    type State8 = super::CudaState8;

    fn mapped_zeros(&self, n: usize) -> Result<super::CudaMapped> {
        self.mapped_zeros_impl(n)
    }

    fn mapped_read(&self, m: &super::CudaMapped) -> Result<Vec<f32>> {
        let mut v = self.mapped_read_impl(m)?;
        v.truncate(self.mapped_len(m));
        Ok(v)
    }

    fn mapped_write(&self, m: &mut super::CudaMapped, values: &[f32]) -> Result<()> {
        self.mapped_write_impl(m, values)
    }

    fn adamw_mapped(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut super::CudaMapped,
        v: &mut super::CudaMapped,
        s: AdamWStep,
    ) -> Result<()> {
        let _span = self.span("optimizer");
        let (m_len, v_len) = (self.mapped_len(m), self.mapped_len(v));
        crate::checks::optimizer_step("adamw", param.len, grad.len, m_len, v_len, s.step)?;
        check_f32("adamw", "param", param)?;
        check_f32("adamw", "grad", grad)?;
        let c = crate::optim::Scalars::new(s);
        let n = param.len as u64;
        let (mp, vp) = (self.mapped_device_ptr(m), self.mapped_device_ptr(v));
        launch!(
            self,
            self.kernel("adamw", DType::F32)?,
            grid_stride(param.len),
            "adamw",
            &mut param.data,
            &grad.data,
            &mp,
            &vp,
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

    fn state8_zeros(&self, n: usize, map: &[f32; 256], on_host: bool) -> Result<super::CudaState8> {
        self.state8_zeros_impl(n, map, on_host)
    }

    fn state8_read(&self, s: &super::CudaState8) -> Result<(Vec<u8>, Vec<f32>)> {
        self.state8_read_impl(s)
    }

    fn state8_write(&self, s: &mut super::CudaState8, codes: &[u8], absmax: &[f32]) -> Result<()> {
        self.state8_write_impl(s, codes, absmax)
    }

    fn adamw8bit(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut super::CudaState8,
        v: &mut super::CudaState8,
        s: AdamWStep,
    ) -> Result<()> {
        let _span = self.span("optimizer");
        self.adamw8bit_impl(param, grad, m, v, s)
    }

    fn park_on_host(&self, buf: CudaBuf) -> Result<super::CudaHost> {
        let _span = self.span("offload_copy");
        self.park_on_host_impl(buf)
    }

    fn prefetch_from_host(&self, host: &super::CudaHost) -> Result<()> {
        let _span = self.span("offload_copy");
        self.prefetch_from_host_impl(host)
    }

    fn restore_from_host(&self, host: &super::CudaHost) -> Result<CudaBuf> {
        let _span = self.span("offload_copy");
        self.restore_from_host_impl(host)
    }

    fn upload_quant4(&self, q: &temper_quant::Quant4) -> Result<super::CudaQuant> {
        self.upload_quant4_impl(q)
    }

    fn dequantize4(&self, out: &mut CudaBuf, q: &super::CudaQuant) -> Result<()> {
        let _span = self.span("dequant");
        self.dequantize4_impl(out, q)
    }

    fn quantize4(
        &self,
        bytes: &[u8],
        stored: DType,
        spec: &temper_quant::Quantize4Spec,
        name: &str,
    ) -> Result<Option<super::CudaQuant>> {
        let values = self.upload_staged(bytes, stored, stored)?;
        self.quantize4_impl(&values, spec, name).map(Some)
    }

    fn quantize_int8(
        &self,
        bytes: &[u8],
        stored: DType,
        rows: usize,
        cols: usize,
        name: &str,
    ) -> Result<Option<super::CudaInt8>> {
        let values = self.upload_staged(bytes, stored, stored)?;
        self.quantize_int8_impl(&values, rows, cols, name).map(Some)
    }

    fn upload_stored(&self, bytes: &[u8], stored: DType) -> Result<CudaBuf> {
        self.upload_staged(bytes, stored, self.compute_dtype)
    }

    fn upload_int8(&self, q: &temper_quant::Int8Rows) -> Result<super::CudaInt8> {
        self.upload_int8_impl(q)
    }

    fn dequantize_int8(&self, out: &mut CudaBuf, q: &super::CudaInt8) -> Result<()> {
        let _span = self.span("dequant");
        self.dequantize_int8_impl(out, q)
    }

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn zeros(&self, n: usize) -> Result<CudaBuf> {
        let _span = self.span("alloc");
        self.alloc(n, DType::F32)
    }

    fn upload(&self, host: &[f32]) -> Result<CudaBuf> {
        let _span = self.span("upload");
        self.upload_as(host, DType::F32)
    }

    fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    fn dtype(&self, buf: &CudaBuf) -> DType {
        buf.dtype
    }

    fn zeros_as(&self, n: usize, dtype: DType) -> Result<CudaBuf> {
        let _span = self.span("alloc");
        self.alloc(n, dtype)
    }

    fn uninit_as(&self, n: usize, dtype: DType) -> Result<CudaBuf> {
        let _span = self.span("alloc");
        self.alloc_uninit(n, dtype)
    }

    fn upload_as(&self, host: &[f32], dtype: DType) -> Result<CudaBuf> {
        let _span = self.span("upload");
        let bytes = crate::dtype::encode_le(host, dtype);
        let data = self.stream.clone_htod(&bytes).map_err(dev_err("upload"))?;
        Ok(self.wrap(data, host.len(), dtype))
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        let _span = self.span("download");
        let bytes = self
            .stream
            .clone_dtoh(&buf.data)
            .map_err(dev_err("download"))?;
        Ok(crate::dtype::decode_le(&bytes, buf.dtype))
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn fill(&self, buf: &mut CudaBuf, value: f32) -> Result<()> {
        let _span = self.span("elementwise");
        let n = buf.len as u64;
        launch!(
            self,
            self.kernel("fill", buf.dtype)?,
            grid_stride(buf.len),
            "fill",
            &mut buf.data,
            &value,
            &n
        )
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        let _span = self.span("elementwise");
        check_len("copy", "dst", dst.len, src.len)?;
        if dst.dtype != src.dtype {
            let to = self.ptr(dst, 0);
            return self.cast_raw(to, dst.dtype, self.ptr(src, 0), src.dtype, src.len);
        }
        self.stream
            .memcpy_dtod(&src.data, &mut dst.data)
            .map_err(dev_err("copy"))
    }

    fn peak_bytes(&self) -> usize {
        self.accounting.peak()
    }

    fn live_bytes(&self) -> usize {
        self.accounting.live()
    }

    fn matmul(&self, c: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, g: Gemm) -> Result<()> {
        let _span = self.span("gemm");
        crate::checks::matmul(a.len, b.len, c.len, g)?;
        self.matmul_at(c, 0, a, 0, b, 0, g)
    }

    fn axpy(&self, y: &mut CudaBuf, alpha: f32, x: &CudaBuf) -> Result<()> {
        let _span = self.span("elementwise");
        check_len("axpy", "x", x.len, y.len)?;
        let x = self.converted(x, y.dtype)?;
        let n = y.len as u64;
        launch!(
            self,
            self.kernel("axpy", y.dtype)?,
            grid_stride(y.len),
            "axpy",
            &mut y.data,
            &alpha,
            &x.data,
            &n
        )
    }

    fn scale(&self, y: &mut CudaBuf, alpha: f32) -> Result<()> {
        let _span = self.span("elementwise");
        let n = y.len as u64;
        launch!(
            self,
            self.kernel("scale", y.dtype)?,
            grid_stride(y.len),
            "scale",
            &mut y.data,
            &alpha,
            &n
        )
    }

    fn add_bias(&self, y: &mut CudaBuf, bias: &CudaBuf, c: usize) -> Result<()> {
        let _span = self.span("elementwise");
        crate::checks::add_bias(y.len, bias.len, c)?;
        let bias = self.converted(bias, y.dtype)?;
        let (n, c32) = (y.len as u64, c as u32);
        launch!(
            self,
            self.kernel("add_bias", y.dtype)?,
            grid_stride(y.len),
            "add_bias",
            &mut y.data,
            &bias.data,
            &n,
            &c32
        )
    }

    fn sum_squares(&self, x: &CudaBuf) -> Result<f64> {
        self.sum_squares_all(&[x])
    }

    fn sum_squares_all(&self, xs: &[&CudaBuf]) -> Result<f64> {
        let _span = self.span("elementwise");
        let mut out = self
            .stream
            .alloc_zeros::<f64>(1)
            .map_err(dev_err("alloc"))?;
        for x in xs {
            let n = x.len as u64;
            launch!(
                self,
                self.kernel("sum_squares", x.dtype)?,
                grid_stride(x.len),
                "sum_squares",
                &mut out,
                &x.data,
                &n
            )?;
        }
        let host = self.stream.clone_dtoh(&out).map_err(dev_err("download"))?;
        Ok(host[0])
    }

    fn dropout(&self, y: &mut CudaBuf, x: &CudaBuf, p: f32, seed: u64) -> Result<()> {
        let _span = self.span("elementwise");
        crate::checks::dropout(y.len, x.len, p)?;
        if p == 0.0 {
            return self.copy(y, x);
        }
        if p >= 1.0 {
            return self.fill(y, 0.0);
        }
        let x = self.converted(x, y.dtype)?;
        let n = y.len as u64;
        launch!(
            self,
            self.kernel("dropout", y.dtype)?,
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
        let _span = self.span("embedding");
        crate::checks::embedding("embedding_forward", out.len, ids, table.len, c)?;
        if ids.is_empty() {
            return Ok(());
        }
        let table = self.converted(table, out.dtype)?;
        let ids_d = self.upload_u32(ids)?;
        let (n, c32) = (ids.len() as u32, c as u32);
        let cfg = LaunchConfig {
            grid_dim: (n, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self,
            self.kernel("embedding_forward", out.dtype)?,
            cfg,
            "embedding_forward",
            &mut out.data,
            &*ids_d,
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
        let _span = self.span("rmsnorm");
        crate::checks::rmsnorm_forward(x.len, w.len, y.len, rstd.len, c)?;
        check_f32("rmsnorm_forward", "rstd", rstd)?;
        let rows = (x.len / c.max(1)) as u32;
        if rows == 0 {
            return Ok(());
        }
        let (x, w) = (self.converted(x, y.dtype)?, self.converted(w, y.dtype)?);
        let c32 = c as u32;
        launch!(
            self,
            self.kernel("rmsnorm_forward", y.dtype)?,
            per_row(rows),
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
        let _span = self.span("rmsnorm");
        crate::checks::rmsnorm_backward(x.len, w.len, rstd.len, dy.len, dx.len, c)?;
        check_f32("rmsnorm_backward", "rstd", rstd)?;
        let rows = (x.len / c.max(1)) as u32;
        if rows == 0 {
            return Ok(());
        }
        let dt = dx.dtype;
        let (dy, x, w) = (
            self.converted(dy, dt)?,
            self.converted(x, dt)?,
            self.converted(w, dt)?,
        );
        let c32 = c as u32;
        launch!(
            self,
            self.kernel("rmsnorm_backward", dt)?,
            per_row(rows),
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
        let _span = self.span("rope");
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
        let _span = self.span("rope");
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
        shape: AttnShape,
        window: Option<usize>,
    ) -> Result<()> {
        crate::checks::window_unsupported("attention_forward", "CUDA", cu_seqlens, window)?;
        let _span = self.span("attention");
        self.attention_forward_impl(out, lse, q, k, v, cu_seqlens, shape)
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
        shape: AttnShape,
        window: Option<usize>,
    ) -> Result<()> {
        crate::checks::window_unsupported("attention_backward", "CUDA", cu_seqlens, window)?;
        let _span = self.span("attention");
        self.attention_backward_impl(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape)
    }

    fn attention_decode(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        past: usize,
        shape: AttnShape,
    ) -> Result<()> {
        let _span = self.span("attention");
        self.attention_decode_impl(out, q, k_cache, v_cache, past, shape)
    }

    fn copy_range(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        let _span = self.span("elementwise");
        crate::checks::copy_range(dst.len, dst_off, src.len, src_off, len)?;
        if len == 0 {
            return Ok(());
        }
        if dst.dtype != src.dtype {
            let to = self.ptr(dst, dst_off);
            return self.cast_raw(to, dst.dtype, self.ptr(src, src_off), src.dtype, len);
        }
        let sz = src.dtype.size();
        let from = src.data.slice(src_off * sz..(src_off + len) * sz);
        let mut to = dst.data.slice_mut(dst_off * sz..(dst_off + len) * sz);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(dev_err("copy_range"))
    }

    fn swiglu_forward(&self, h: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf) -> Result<()> {
        let _span = self.span("swiglu");
        crate::checks::same_len("swiglu_forward", gate.len, &[("up", up.len), ("h", h.len)])?;
        let (gate, up) = (self.converted(gate, h.dtype)?, self.converted(up, h.dtype)?);
        let n = h.len as u64;
        launch!(
            self,
            self.kernel("swiglu_forward", h.dtype)?,
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
        let _span = self.span("swiglu");
        crate::checks::same_len(
            "swiglu_backward",
            gate.len,
            &[
                ("dh", dh.len),
                ("up", up.len),
                ("dgate", dgate.len),
                ("dup", dup.len),
            ],
        )?;
        let dt = dgate.dtype;
        if dup.dtype != dt {
            return Err(CoreError::Invalid {
                op: "swiglu_backward",
                msg: format!("dgate is {dt} but dup is {}", dup.dtype),
            });
        }
        let (dh, gate, up) = (
            self.converted(dh, dt)?,
            self.converted(gate, dt)?,
            self.converted(up, dt)?,
        );
        let n = gate.len as u64;
        launch!(
            self,
            self.kernel("swiglu_backward", dt)?,
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
        let _span = self.span("loss");
        let n = targets.len();
        let dx_len = dx.as_deref().map(|dx| dx.len);
        crate::checks::linear_cross_entropy(x.len, w.len, dx_len, targets, c, v)?;
        if n == 0 {
            return Ok(vec![]);
        }
        let x = self.converted(x, w.dtype)?;
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
        // Logits are f32; dlogits take the type of W for the dx GEMM (over the logits when f32).
        let logits = self.alloc(chunk * v, DType::F32)?;
        let separate_grad = dx.is_some() && w.dtype != DType::F32;
        let dlogits = if separate_grad {
            Some(self.alloc(chunk * v, w.dtype)?)
        } else {
            None
        };
        let grad_buf = dlogits.as_ref().unwrap_or(&logits);
        let mut loss = self
            .stream
            .alloc_zeros::<f32>(n)
            .map_err(dev_err("alloc loss"))?;
        let (v32, write) = (v as u32, i32::from(dx.is_some()));
        let ce = self.kernel("cross_entropy_rows", grad_buf.dtype)?;
        for a in (0..n).step_by(chunk) {
            let b = (a + chunk).min(n);
            let rows = b - a;
            // logits (rows, V) = x[a..b] (rows, c) W^T
            self.matmul_at(&logits, 0, &x, a * c, w, 0, Gemm::nt(rows, v, c))?;
            let logits_ptr = self.ptr(&logits, 0);
            let grad_ptr = self.ptr(grad_buf, 0);
            let mut loss_view = loss.slice_mut(a..b);
            let target_view = targets_d.slice(a..b);
            launch!(
                self,
                ce,
                per_row(rows as u32),
                "cross_entropy_rows",
                &logits_ptr,
                &grad_ptr,
                &mut loss_view,
                &target_view,
                &v32,
                &grad_scale,
                &write
            )?;
            if let Some(dx) = dx.as_deref_mut() {
                // dx[a..b] (rows, c) = dlogits (rows, V) W (V, c)
                self.matmul_at(dx, a * c, grad_buf, 0, w, 0, Gemm::nn(rows, c, v))?;
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
        let _span = self.span("optimizer");
        crate::checks::optimizer_step("adamw", param.len, grad.len, m.len, v.len, s.step)?;
        for (name, b) in [("param", &*param), ("grad", grad), ("m", &*m), ("v", &*v)] {
            check_f32("adamw", name, b)?;
        }
        let c = crate::optim::Scalars::new(s);
        let n = param.len as u64;
        launch!(
            self,
            self.kernel("adamw", DType::F32)?,
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

    fn profile_enable(&self, on: bool) {
        self.profile_enable_impl(on)
    }

    fn profile_stage(&self, stage: &'static str) {
        self.profile_stage_impl(stage)
    }

    fn profile_detail(&self, detail: Option<&'static str>) {
        self.profile_detail_impl(detail)
    }

    fn profile_take(&self) -> Result<Vec<(String, f64)>> {
        self.profile_take_impl()
    }
}
