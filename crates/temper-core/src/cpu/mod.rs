//! The CPU reference: every op as plain loops (rayon across rows, the `gemm` crate for
//! matrix products), generic over [`Float`] so gradient checks run in f64.
//! [`CpuBackend`] runs them in f32.

pub mod adamw;
pub mod adamw8bit;
pub mod attention;
pub mod attention_cache;
pub mod columns;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod geglu;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use temper_quant::{Int8Rows, Quant4, State8};

use crate::backend::{AdamWStep, AttnShape, Backend, Gemm};
use crate::error::check_len;
use crate::memory::Accounting;
use crate::{Float, Result};

/// The CPU backend: buffers are [`CpuBuf`]s of f32.
#[derive(Default)]
pub struct CpuBackend {
    accounting: Arc<Accounting>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps host values as a counted buffer.
    pub fn buf(&self, data: Vec<f32>) -> CpuBuf {
        self.accounting.add(data.len() * std::mem::size_of::<f32>());
        CpuBuf {
            data,
            accounting: self.accounting.clone(),
        }
    }
}

/// Takes `bytes` off the accounting when dropped: for temporaries that are not [`CpuBuf`]s.
struct Uncount<'a>(&'a Accounting, usize);

impl CpuBackend {
    /// Counts the (chunk, V) f32 logits the fused LM head and loss work in while the guard
    /// lives: the step's largest temporary for a big vocabulary, counted as the GPU's are.
    fn count_logits_chunk(&self, n: usize, chunk: usize, v: usize) -> Uncount<'_> {
        let bytes = if n == 0 {
            0
        } else {
            chunk.clamp(1, n) * v * std::mem::size_of::<f32>()
        };
        self.accounting.add(bytes);
        Uncount(&self.accounting, bytes)
    }
}

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

/// A CPU buffer: f32 values, counted by the backend that made it until dropped.
pub struct CpuBuf {
    data: Vec<f32>,
    accounting: Arc<Accounting>,
}

impl Drop for CpuBuf {
    fn drop(&mut self) {
        self.accounting
            .sub(self.data.len() * std::mem::size_of::<f32>());
    }
}

/// A 4-bit matrix held on the host, dequantised on use, counted until dropped.
pub struct CpuQuant {
    q: Quant4,
    accounting: Arc<Accounting>,
}

impl Drop for CpuQuant {
    fn drop(&mut self) {
        self.accounting.sub(self.q.device_bytes());
    }
}

/// An 8-bit matrix held on the host, dequantised on use, counted until dropped.
pub struct CpuInt8 {
    q: Int8Rows,
    accounting: Arc<Accounting>,
}

impl Drop for CpuInt8 {
    fn drop(&mut self) {
        self.accounting.sub(self.q.device_bytes());
    }
}

impl Deref for CpuBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl DerefMut for CpuBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type Quant = CpuQuant;
    type Int8 = CpuInt8;
    /// Host memory is where CPU buffers live already: a copy, not counted as device memory.
    type Host = Vec<f32>;
    type Mapped = Vec<f32>;
    type State8 = State8;

    fn mapped_zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn mapped_read(&self, m: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(m.clone())
    }

    fn mapped_write(&self, m: &mut Vec<f32>, values: &[f32]) -> Result<()> {
        check_len("mapped_write", "values", values.len(), m.len())?;
        m.copy_from_slice(values);
        Ok(())
    }

    fn adamw_mapped(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        s: AdamWStep,
    ) -> Result<()> {
        crate::checks::optimizer_step("adamw", param.len(), grad.len(), m.len(), v.len(), s.step)?;
        adamw::adamw(param, grad, m, v, s);
        Ok(())
    }

    fn state8_zeros(&self, n: usize, map: &[f32; 256], _on_host: bool) -> Result<State8> {
        Ok(State8::zeros(n, map)?)
    }

    fn state8_read(&self, s: &State8) -> Result<(Vec<u8>, Vec<f32>)> {
        Ok((s.codes().to_vec(), s.absmax().to_vec()))
    }

    fn state8_write(&self, s: &mut State8, codes: &[u8], absmax: &[f32]) -> Result<()> {
        Ok(s.set(codes, absmax)?)
    }

    fn adamw8bit(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        m: &mut State8,
        v: &mut State8,
        s: AdamWStep,
    ) -> Result<()> {
        adamw8bit::adamw8bit(param, grad, m, v, s)
    }

    fn park_on_host(&self, buf: CpuBuf) -> Result<Vec<f32>> {
        Ok(buf.data.clone())
    }

    fn restore_from_host(&self, host: &Vec<f32>) -> Result<CpuBuf> {
        Ok(self.buf(host.clone()))
    }

    fn upload_quant4(&self, q: &Quant4) -> Result<CpuQuant> {
        q.validate()?;
        self.accounting.add(q.device_bytes());
        Ok(CpuQuant {
            q: q.clone(),
            accounting: self.accounting.clone(),
        })
    }

    fn dequantize4(&self, out: &mut CpuBuf, q: &CpuQuant) -> Result<()> {
        Ok(q.q.dequantize_into(out)?)
    }

    fn upload_int8(&self, q: &Int8Rows) -> Result<CpuInt8> {
        q.validate()?;
        self.accounting.add(q.device_bytes());
        Ok(CpuInt8 {
            q: q.clone(),
            accounting: self.accounting.clone(),
        })
    }

    fn dequantize_int8(&self, out: &mut CpuBuf, q: &CpuInt8) -> Result<()> {
        Ok(q.q.dequantize_into(out)?)
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn zeros(&self, n: usize) -> Result<CpuBuf> {
        Ok(self.buf(vec![0.0; n]))
    }

    fn uninit_as(&self, n: usize, _dtype: crate::DType) -> Result<CpuBuf> {
        Ok(self.buf(vec![f32::NAN; n]))
    }

    fn upload(&self, host: &[f32]) -> Result<CpuBuf> {
        Ok(self.buf(host.to_vec()))
    }

    fn upload_stored(&self, bytes: &[u8], stored: crate::DType) -> Result<CpuBuf> {
        Ok(self.buf(crate::dtype::decode_le(bytes, stored)))
    }

    fn download(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        Ok(buf.data.clone())
    }

    fn len(&self, buf: &CpuBuf) -> usize {
        buf.len()
    }

    fn fill(&self, buf: &mut CpuBuf, value: f32) -> Result<()> {
        buf.fill(value);
        Ok(())
    }

    fn copy(&self, dst: &mut CpuBuf, src: &CpuBuf) -> Result<()> {
        check_len("copy", "dst", dst.len(), src.len())?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn peak_bytes(&self) -> usize {
        self.accounting.peak()
    }

    fn live_bytes(&self) -> usize {
        self.accounting.live()
    }

    fn matmul(&self, c: &mut CpuBuf, a: &CpuBuf, b: &CpuBuf, g: Gemm) -> Result<()> {
        crate::checks::matmul(a.len(), b.len(), c.len(), g)?;
        matmul::matmul(c, a, b, g);
        Ok(())
    }

    fn axpy(&self, y: &mut CpuBuf, alpha: f32, x: &CpuBuf) -> Result<()> {
        check_len("axpy", "x", x.len(), y.len())?;
        elementwise::axpy(y, alpha, x);
        Ok(())
    }

    fn scale(&self, y: &mut CpuBuf, alpha: f32) -> Result<()> {
        elementwise::scale(y, alpha);
        Ok(())
    }

    fn add_bias(&self, y: &mut CpuBuf, bias: &CpuBuf, c: usize) -> Result<()> {
        crate::checks::add_bias(y.len(), bias.len(), c)?;
        elementwise::add_bias(y, bias);
        Ok(())
    }

    fn sum_squares(&self, x: &CpuBuf) -> Result<f64> {
        Ok(elementwise::sum_squares(x))
    }

    fn dropout(&self, y: &mut CpuBuf, x: &CpuBuf, p: f32, seed: u64) -> Result<()> {
        crate::checks::dropout(y.len(), x.len(), p)?;
        elementwise::dropout(y, x, p, seed);
        Ok(())
    }

    fn embedding_forward(
        &self,
        out: &mut CpuBuf,
        ids: &[u32],
        table: &CpuBuf,
        c: usize,
    ) -> Result<()> {
        embedding::embedding_forward(out, ids, table, c)
    }

    fn rmsnorm_forward(
        &self,
        y: &mut CpuBuf,
        rstd: &mut CpuBuf,
        x: &CpuBuf,
        w: &CpuBuf,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        rmsnorm::rmsnorm_forward(y, rstd, x, w, c, eps as f64)
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut CpuBuf,
        dy: &CpuBuf,
        x: &CpuBuf,
        w: &CpuBuf,
        rstd: &CpuBuf,
        c: usize,
    ) -> Result<()> {
        rmsnorm::rmsnorm_backward(dx, dy, x, w, rstd, c)
    }

    fn rope_forward(
        &self,
        x: &mut CpuBuf,
        pos: &[u32],
        cos: &CpuBuf,
        sin: &CpuBuf,
        h: usize,
        d: usize,
    ) -> Result<()> {
        rope::rope_forward(x, pos, cos, sin, h, d)
    }

    fn rope_backward(
        &self,
        dx: &mut CpuBuf,
        pos: &[u32],
        cos: &CpuBuf,
        sin: &CpuBuf,
        h: usize,
        d: usize,
    ) -> Result<()> {
        rope::rope_backward(dx, pos, cos, sin, h, d)
    }

    fn attention_decode(
        &self,
        out: &mut CpuBuf,
        q: &CpuBuf,
        k_cache: &CpuBuf,
        v_cache: &CpuBuf,
        past: usize,
        shape: AttnShape,
    ) -> Result<()> {
        attention_cache::attention_decode(out, q, k_cache, v_cache, past, shape)
    }

    fn copy_range(
        &self,
        dst: &mut CpuBuf,
        dst_off: usize,
        src: &CpuBuf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        attention_cache::copy_range(dst, dst_off, src, src_off, len)
    }

    fn swiglu_forward(&self, h: &mut CpuBuf, gate: &CpuBuf, up: &CpuBuf) -> Result<()> {
        crate::checks::gated_forward("swiglu_forward", gate.len(), up.len(), h.len())?;
        swiglu::swiglu_forward(h, gate, up);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut CpuBuf,
        dup: &mut CpuBuf,
        dh: &CpuBuf,
        gate: &CpuBuf,
        up: &CpuBuf,
    ) -> Result<()> {
        crate::checks::gated_backward(
            "swiglu_backward",
            gate.len(),
            up.len(),
            dh.len(),
            dgate.len(),
            dup.len(),
        )?;
        swiglu::swiglu_backward(dgate, dup, dh, gate, up);
        Ok(())
    }

    fn geglu_forward(&self, h: &mut CpuBuf, gate: &CpuBuf, up: &CpuBuf) -> Result<()> {
        crate::checks::gated_forward("geglu_forward", gate.len(), up.len(), h.len())?;
        geglu::geglu_forward(h, gate, up);
        Ok(())
    }

    fn geglu_backward(
        &self,
        dgate: &mut CpuBuf,
        dup: &mut CpuBuf,
        dh: &CpuBuf,
        gate: &CpuBuf,
        up: &CpuBuf,
    ) -> Result<()> {
        crate::checks::gated_backward(
            "geglu_backward",
            gate.len(),
            up.len(),
            dh.len(),
            dgate.len(),
            dup.len(),
        )?;
        geglu::geglu_backward(dgate, dup, dh, gate, up);
        Ok(())
    }

    fn copy_columns(
        &self,
        dst: &mut CpuBuf,
        dst_cols: usize,
        dst_off: usize,
        src: &CpuBuf,
        src_cols: usize,
        src_off: usize,
        width: usize,
        rows: usize,
    ) -> Result<()> {
        columns::copy_columns(dst, dst_cols, dst_off, src, src_cols, src_off, width, rows)
    }

    fn rope_partial_forward(
        &self,
        x: &mut CpuBuf,
        pos: &[u32],
        cos: &CpuBuf,
        sin: &CpuBuf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        rope::rope_partial_forward(x, pos, cos, sin, h, d, rot)
    }

    fn rope_partial_backward(
        &self,
        dx: &mut CpuBuf,
        pos: &[u32],
        cos: &CpuBuf,
        sin: &CpuBuf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        rope::rope_partial_backward(dx, pos, cos, sin, h, d, rot)
    }

    fn attention_forward_capped(
        &self,
        out: &mut CpuBuf,
        lse: &mut CpuBuf,
        q: &CpuBuf,
        k: &CpuBuf,
        v: &CpuBuf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()> {
        attention::attention_forward_capped(out, lse, q, k, v, cu_seqlens, shape, window, softcap)
    }

    fn attention_backward_capped(
        &self,
        dq: &mut CpuBuf,
        dk: &mut CpuBuf,
        dv: &mut CpuBuf,
        dout: &CpuBuf,
        q: &CpuBuf,
        k: &CpuBuf,
        v: &CpuBuf,
        out: &CpuBuf,
        lse: &CpuBuf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()> {
        attention::attention_backward_capped(
            dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape, window, softcap,
        )
    }

    fn attention_decode_capped(
        &self,
        out: &mut CpuBuf,
        q: &CpuBuf,
        k_cache: &CpuBuf,
        v_cache: &CpuBuf,
        past: usize,
        shape: AttnShape,
        softcap: Option<f32>,
    ) -> Result<()> {
        attention_cache::attention_decode_capped(out, q, k_cache, v_cache, past, shape, softcap)
    }

    fn linear_cross_entropy_capped(
        &self,
        dx: Option<&mut CpuBuf>,
        x: &CpuBuf,
        w: &CpuBuf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
        softcap: Option<f32>,
    ) -> Result<Vec<f32>> {
        let _counted = self.count_logits_chunk(targets.len(), chunk, v);
        cross_entropy::linear_cross_entropy_capped(
            dx.map(|d| &mut d[..]),
            x,
            w,
            targets,
            c,
            v,
            grad_scale,
            chunk,
            softcap,
        )
    }

    fn linear_cross_entropy(
        &self,
        dx: Option<&mut CpuBuf>,
        x: &CpuBuf,
        w: &CpuBuf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let _counted = self.count_logits_chunk(targets.len(), chunk, v);
        cross_entropy::linear_cross_entropy(
            dx.map(|d| &mut d[..]),
            x,
            w,
            targets,
            c,
            v,
            grad_scale,
            chunk,
        )
    }

    fn adamw(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        m: &mut CpuBuf,
        v: &mut CpuBuf,
        s: AdamWStep,
    ) -> Result<()> {
        crate::checks::optimizer_step("adamw", param.len(), grad.len(), m.len(), v.len(), s.step)?;
        adamw::adamw(param, grad, m, v, s);
        Ok(())
    }
}

/// Checks that a (rows, c) buffer of `len` elements has a positive width and whole rows.
/// Converts an f64 constant to the kernel's element type.
#[inline]
pub(crate) fn lit<T: Float>(x: f64) -> T {
    T::from_f64c(x)
}
