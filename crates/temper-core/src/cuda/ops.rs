//! [`Backend`] for [`CudaBackend`]: each method names its profiler phase and calls the
//! launcher of its kernel, in the module that mirrors the kernel's file: `elementwise.rs`,
//! `layers.rs`, `cross_entropy.rs`, `attention.rs` and `flash.rs` (attention.cu,
//! flash_attention.cu, flash_hopper.cu), `quant.rs` and `int8.rs` (the 4- and 8-bit formats'
//! kernels in quant.cu and dequant.cu), `optim8.rs`; GEMMs in `gemm.rs`, host memory in
//! `host.rs`. An op whose inputs are stored in different types converts the odd one out to the
//! output's type first (in practice only small buffers, e.g. an f32 LoRA matrix meeting bf16
//! activations).

use super::{
    attention, cross_entropy, elementwise, host, int8, layers, multi_tensor, optim8, profile, quant,
};
use super::{check_f32, dev_err, CudaBackend, CudaBuf};
use crate::backend::{AdamWStep, AttnShape, Backend, Gemm};
use crate::error::check_len;
use crate::{CoreError, DType, Result};

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Quant = super::CudaQuant;
    type Int8 = super::CudaInt8;
    type Host = super::CudaHost;
    type Mapped = super::CudaMapped;
    type State8 = super::CudaState8;

    fn mapped_zeros(&self, n: usize) -> Result<super::CudaMapped> {
        host::mapped_zeros(self, n)
    }

    fn mapped_read(&self, m: &super::CudaMapped) -> Result<Vec<f32>> {
        let mut v = host::mapped_read(self, m)?;
        v.truncate(self.mapped_len(m));
        Ok(v)
    }

    fn mapped_write(&self, m: &mut super::CudaMapped, values: &[f32]) -> Result<()> {
        host::mapped_write(self, m, values)
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
        host::page_in(self, m)?;
        host::page_in(self, v)?;
        let (mp, vp) = (self.mapped_device_ptr(m), self.mapped_device_ptr(v));
        elementwise::adamw(self, param, grad, mp, vp, s)
    }

    fn adamw_mapped_all(
        &self,
        params: &mut [crate::MappedAdamW<'_, Self>],
        s: AdamWStep,
    ) -> Result<()> {
        if !self.multi_tensor {
            for (p, g, m, v) in params.iter_mut() {
                self.adamw_mapped(p, g, m, v, s)?;
            }
            return Ok(());
        }
        let _span = self.span("optimizer");
        let mut rows = Vec::with_capacity(params.len());
        let mut lens = Vec::with_capacity(params.len());
        for (p, g, m, v) in params.iter() {
            let (m_len, v_len) = (self.mapped_len(m), self.mapped_len(v));
            crate::checks::optimizer_step("adamw", p.len, g.len, m_len, v_len, s.step)?;
            check_f32("adamw", "param", p)?;
            check_f32("adamw", "grad", g)?;
            host::page_in(self, m)?;
            host::page_in(self, v)?;
            rows.push([
                self.ptr(p, 0),
                self.ptr(g, 0),
                self.mapped_device_ptr(m),
                self.mapped_device_ptr(v),
            ]);
            lens.push(p.len);
        }
        multi_tensor::adamw(self, &rows, &lens, s)
    }

    fn state8_zeros(&self, n: usize, map: &[f32; 256], on_host: bool) -> Result<super::CudaState8> {
        optim8::zeros(self, n, map, on_host)
    }

    fn state8_read(&self, s: &super::CudaState8) -> Result<(Vec<u8>, Vec<f32>)> {
        optim8::read(self, s)
    }

    fn state8_write(&self, s: &mut super::CudaState8, codes: &[u8], absmax: &[f32]) -> Result<()> {
        optim8::write(self, s, codes, absmax)
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
        optim8::adamw8bit(self, param, grad, m, v, s)
    }

    fn park_on_host(&self, buf: CudaBuf) -> Result<super::CudaHost> {
        let _span = self.span("offload_copy");
        let parked = host::park_group(self, vec![buf])?.pop();
        parked.ok_or_else(|| CoreError::Device("internal: a parked buffer is missing".into()))
    }

    fn park_all_on_host(&self, bufs: Vec<CudaBuf>) -> Result<Vec<super::CudaHost>> {
        let _span = self.span("offload_copy");
        host::park_group(self, bufs)
    }

    fn prefetch_from_host(&self, host: &super::CudaHost) -> Result<()> {
        let _span = self.span("offload_copy");
        host::prefetch(self, host)
    }

    fn restore_from_host(&self, host: &super::CudaHost) -> Result<CudaBuf> {
        let _span = self.span("offload_copy");
        host::restore(self, host)
    }

    fn upload_quant4(&self, q: &temper_quant::Quant4) -> Result<super::CudaQuant> {
        quant::upload(self, q)
    }

    fn dequantize4(&self, out: &mut CudaBuf, q: &super::CudaQuant) -> Result<()> {
        let _span = self.span("dequant");
        quant::dequantize(self, out, q)
    }

    fn quantize4(
        &self,
        bytes: &[u8],
        stored: DType,
        spec: &temper_quant::Quantize4Spec,
        name: &str,
    ) -> Result<Option<super::CudaQuant>> {
        let values = self.upload_staged(bytes, stored, stored)?;
        quant::quantize(self, &values, spec, name).map(Some)
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
        int8::quantize(self, &values, rows, cols, name).map(Some)
    }

    fn upload_stored(&self, bytes: &[u8], stored: DType) -> Result<CudaBuf> {
        self.upload_staged(bytes, stored, self.compute_dtype)
    }

    fn upload_int8(&self, q: &temper_quant::Int8Rows) -> Result<super::CudaInt8> {
        int8::upload(self, q)
    }

    fn dequantize_int8(&self, out: &mut CudaBuf, q: &super::CudaInt8) -> Result<()> {
        let _span = self.span("dequant");
        int8::dequantize(self, out, q)
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
        elementwise::fill(self, buf, value)
    }

    fn fill_all(&self, bufs: &mut [&mut CudaBuf], value: f32) -> Result<()> {
        let _span = self.span("elementwise");
        let Some((addresses, lens)) = self.one_launch_f32(bufs.iter().map(|b| &**b)) else {
            for b in bufs.iter_mut() {
                elementwise::fill(self, b, value)?;
            }
            return Ok(());
        };
        multi_tensor::each_f32(self, multi_tensor::FILL_MULTI, &addresses, &lens, value)
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        let _span = self.span("elementwise");
        check_len("copy", "dst", dst.len, src.len)?;
        if dst.dtype != src.dtype {
            let to = self.ptr(dst, 0);
            return elementwise::cast(self, to, dst.dtype, self.ptr(src, 0), src.dtype, src.len);
        }
        self.stream
            .memcpy_dtod(&src.data, &mut dst.data)
            .map_err(dev_err("copy"))
    }

    fn copy_all(&self, dsts: &mut [&mut CudaBuf], srcs: &[&CudaBuf]) -> Result<()> {
        check_len("copy_all", "srcs", srcs.len(), dsts.len())?;
        let to = dsts.first().map_or(DType::F32, |d| d.dtype);
        let one_launch = self.multi_tensor
            && srcs.iter().all(|s| s.dtype == DType::F32)
            && dsts.iter().all(|d| d.dtype == to);
        if !one_launch {
            for (d, s) in dsts.iter_mut().zip(srcs) {
                self.copy(d, s)?;
            }
            return Ok(());
        }
        let _span = self.span("elementwise");
        let mut rows = Vec::with_capacity(srcs.len());
        let mut lens = Vec::with_capacity(srcs.len());
        for (d, s) in dsts.iter().zip(srcs) {
            check_len("copy_all", "dst", d.len, s.len)?;
            rows.push([self.ptr(d, 0), self.ptr(s, 0)]);
            lens.push(s.len);
        }
        multi_tensor::cast_from_f32(self, &rows, &lens, to)
    }

    fn peak_bytes(&self) -> usize {
        self.accounting.peak()
    }

    fn paged_managed_bytes(&self) -> usize {
        self.managed.load(std::sync::atomic::Ordering::Relaxed)
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
        elementwise::axpy(self, y, alpha, x)
    }

    fn scale(&self, y: &mut CudaBuf, alpha: f32) -> Result<()> {
        let _span = self.span("elementwise");
        elementwise::scale(self, y, alpha)
    }

    fn scale_all(&self, ys: &mut [&mut CudaBuf], alpha: f32) -> Result<()> {
        let _span = self.span("elementwise");
        let Some((addresses, lens)) = self.one_launch_f32(ys.iter().map(|y| &**y)) else {
            for y in ys.iter_mut() {
                elementwise::scale(self, y, alpha)?;
            }
            return Ok(());
        };
        multi_tensor::each_f32(self, multi_tensor::SCALE_MULTI, &addresses, &lens, alpha)
    }

    fn add_bias(&self, y: &mut CudaBuf, bias: &CudaBuf, c: usize) -> Result<()> {
        let _span = self.span("elementwise");
        elementwise::add_bias(self, y, bias, c)
    }

    fn sum_squares(&self, x: &CudaBuf) -> Result<f64> {
        self.sum_squares_all(&[x])
    }

    fn sum_squares_all(&self, xs: &[&CudaBuf]) -> Result<f64> {
        let _span = self.span("elementwise");
        match self.one_launch_f32(xs.iter().copied()) {
            Some((addresses, lens)) => multi_tensor::sum_squares(self, &addresses, &lens),
            None => elementwise::sum_squares_all(self, xs),
        }
    }

    fn dropout(&self, y: &mut CudaBuf, x: &CudaBuf, p: f32, seed: u64) -> Result<()> {
        let _span = self.span("elementwise");
        elementwise::dropout(self, y, x, p, seed)
    }

    fn embedding_forward(
        &self,
        out: &mut CudaBuf,
        ids: &[u32],
        table: &CudaBuf,
        c: usize,
    ) -> Result<()> {
        let _span = self.span("embedding");
        layers::embedding_forward(self, out, ids, table, c)
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
        layers::rmsnorm_forward(self, y, rstd, x, w, c, eps)
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
        layers::rmsnorm_backward(self, dx, dy, x, w, rstd, c)
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
        layers::rope(self, x, pos, cos, sin, h, d, d, 1.0)
    }

    fn rope_partial_forward(
        &self,
        x: &mut CudaBuf,
        pos: &[u32],
        cos: &CudaBuf,
        sin: &CudaBuf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        let _span = self.span("rope");
        layers::rope(self, x, pos, cos, sin, h, d, rot, 1.0)
    }

    fn rope_partial_backward(
        &self,
        dx: &mut CudaBuf,
        pos: &[u32],
        cos: &CudaBuf,
        sin: &CudaBuf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        let _span = self.span("rope");
        layers::rope(self, dx, pos, cos, sin, h, d, rot, -1.0)
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
        layers::rope(self, dx, pos, cos, sin, h, d, d, -1.0)
    }

    fn attention_forward_capped(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()> {
        let op = "attention_forward";
        let window = crate::checks::attention_window(op, cu_seqlens, window)?;
        let softcap = crate::checks::softcap(op, softcap)?;
        let _span = self.span("attention");
        attention::forward(self, out, lse, q, k, v, cu_seqlens, shape, window, softcap)
    }

    fn attention_backward_capped(
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
        softcap: Option<f32>,
    ) -> Result<()> {
        let op = "attention_backward";
        let window = crate::checks::attention_window(op, cu_seqlens, window)?;
        let softcap = crate::checks::softcap(op, softcap)?;
        let _span = self.span("attention");
        attention::backward(
            self, dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape, window, softcap,
        )
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
        attention::decode(self, out, q, k_cache, v_cache, past, shape)
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
            return elementwise::cast(self, to, dst.dtype, self.ptr(src, src_off), src.dtype, len);
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
        elementwise::swiglu_forward(self, h, gate, up)
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
        elementwise::swiglu_backward(self, dgate, dup, dh, gate, up)
    }

    fn copy_columns(
        &self,
        dst: &mut CudaBuf,
        dst_cols: usize,
        dst_off: usize,
        src: &CudaBuf,
        src_cols: usize,
        src_off: usize,
        width: usize,
        rows: usize,
    ) -> Result<()> {
        let _span = self.span("elementwise");
        elementwise::copy_columns(
            self, dst, dst_cols, dst_off, src, src_cols, src_off, width, rows,
        )
    }

    fn geglu_forward(&self, h: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf) -> Result<()> {
        let _span = self.span("swiglu");
        elementwise::geglu_forward(self, h, gate, up)
    }

    fn geglu_backward(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dh: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) -> Result<()> {
        let _span = self.span("swiglu");
        elementwise::geglu_backward(self, dgate, dup, dh, gate, up)
    }

    fn linear_cross_entropy(
        &self,
        dx: Option<&mut CudaBuf>,
        x: &CudaBuf,
        w: &CudaBuf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let _span = self.span("loss");
        cross_entropy::linear_cross_entropy(self, dx, x, w, targets, c, v, grad_scale, chunk, None)
    }

    fn linear_cross_entropy_capped(
        &self,
        dx: Option<&mut CudaBuf>,
        x: &CudaBuf,
        w: &CudaBuf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
        softcap: Option<f32>,
    ) -> Result<Vec<f32>> {
        let _span = self.span("loss");
        let softcap = crate::checks::softcap("linear_cross_entropy", softcap)?;
        cross_entropy::linear_cross_entropy(
            self, dx, x, w, targets, c, v, grad_scale, chunk, softcap,
        )
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
        check_f32("adamw", "m", m)?;
        check_f32("adamw", "v", v)?;
        let (mp, vp) = (self.ptr(m, 0), self.ptr(v, 0));
        elementwise::adamw(self, param, grad, mp, vp, s)
    }

    fn adamw_all(&self, params: &mut [crate::DeviceAdamW<'_, Self>], s: AdamWStep) -> Result<()> {
        if !self.multi_tensor {
            for (p, g, m, v) in params.iter_mut() {
                self.adamw(p, g, m, v, s)?;
            }
            return Ok(());
        }
        let _span = self.span("optimizer");
        let mut rows = Vec::with_capacity(params.len());
        let mut lens = Vec::with_capacity(params.len());
        for (p, g, m, v) in params.iter() {
            crate::checks::optimizer_step("adamw", p.len, g.len, m.len, v.len, s.step)?;
            for (what, b) in [("param", &**p), ("grad", &**g), ("m", &**m), ("v", &**v)] {
                check_f32("adamw", what, b)?;
            }
            rows.push([
                self.ptr(p, 0),
                self.ptr(g, 0),
                self.ptr(m, 0),
                self.ptr(v, 0),
            ]);
            lens.push(p.len);
        }
        multi_tensor::adamw(self, &rows, &lens, s)
    }

    fn profile_enable(&self, on: bool) {
        profile::enable(self, on)
    }

    fn profile_stage(&self, stage: &'static str) {
        profile::stage(self, stage)
    }

    fn profile_detail(&self, detail: Option<&'static str>) {
        profile::detail(self, detail)
    }

    fn profile_take(&self) -> Result<Vec<(String, f64)>> {
        profile::take(self)
    }
}
