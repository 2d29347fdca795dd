//! The interface model code is written against. One implementation per device: the CPU
//! reference ([`crate::CpuBackend`]) and CUDA ([`crate::CudaBackend`]). Buffers are flat
//! arrays; shapes travel as explicit sizes, llm.c style, and every method documents the
//! layout it expects. Index arrays (token ids, positions, `cu_seqlens`, targets) are host
//! slices: a device backend uploads them.
//!
//! Each buffer has a storage type ([`DType`]). Activations and frozen weights use the
//! backend's [`Backend::compute_dtype`] (`act_zeros`, `upload_frozen`); LoRA parameters,
//! gradients, optimizer state, rstd and lse are f32 (`zeros`, `upload`). The CPU backend
//! stores everything in f32. Ops compute in f32 and accept any mix of storage types.

use temper_quant::{Int8Rows, Quant4, Quantize4Spec};

use crate::{DType, Result};

/// A general matrix product `C = alpha * op(A) op(B) + beta * C`, all row-major.
/// `op(A)` is (m, k): A is stored (m, k), or (k, m) when `ta`. `op(B)` is (k, n): B is stored
/// (k, n), or (n, k) when `tb`. `y = x W^T` for a linear layer is `Gemm::nt(tokens, out, in)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// C (m,n) = A (m,k) B (k,n)
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            ta: false,
            tb: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// C (m,n) = A (m,k) B^T, B stored (n,k)
    pub fn nt(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            ta: false,
            tb: true,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// C (m,n) = A^T B, A stored (k,m), B stored (k,n)
    pub fn tn(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            ta: true,
            tb: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// `beta = 1` accumulates into C.
    pub fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
}

/// One parameter of [`Backend::adamw_all`]: its value, gradient and two moments.
pub type DeviceAdamW<'a, B> = (
    &'a mut <B as Backend>::Buf,
    &'a <B as Backend>::Buf,
    &'a mut <B as Backend>::Buf,
    &'a mut <B as Backend>::Buf,
);

/// One parameter of [`Backend::adamw_mapped_all`]: its value and gradient, and its two
/// moments in mapped host memory.
pub type MappedAdamW<'a, B> = (
    &'a mut <B as Backend>::Buf,
    &'a <B as Backend>::Buf,
    &'a mut <B as Backend>::Mapped,
    &'a mut <B as Backend>::Mapped,
);

/// One AdamW update (decoupled weight decay, bias-corrected), as `torch.optim.AdamW` does it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 for the first update.
    pub step: u64,
}

/// The head layout of an attention op: q and out (N, q_heads, head_dim), k and v
/// (N, kv_heads, head_dim), lse (N, q_heads). Query head j reads kv head
/// j / (q_heads / kv_heads) (grouped-query attention); scores are scaled by 1/sqrt(head_dim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads (hq): a positive multiple of `kv_heads`.
    pub q_heads: usize,
    /// Key and value heads (hkv).
    pub kv_heads: usize,
    /// Values per head (d).
    pub head_dim: usize,
}

impl AttnShape {
    pub const fn new(q_heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        AttnShape {
            q_heads,
            kv_heads,
            head_dim,
        }
    }
}

/// [`Backend::attention_decode`] through the host: download, the CPU kernel, upload. The
/// trait's default, public so that tests can run it on any backend.
pub fn attention_decode_via_host<B: Backend + ?Sized>(
    be: &B,
    out: &mut B::Buf,
    q: &B::Buf,
    k_cache: &B::Buf,
    v_cache: &B::Buf,
    past: usize,
    shape: AttnShape,
) -> Result<()> {
    let mut host = be.download(out)?;
    let (q, k, v) = (
        be.download(q)?,
        be.download(k_cache)?,
        be.download(v_cache)?,
    );
    crate::cpu::attention_cache::attention_decode(&mut host, &q, &k, &v, past, shape)?;
    *out = be.upload_as(&host, be.dtype(out))?;
    Ok(())
}

/// [`Backend::copy_range`] through the host; the trait's default.
pub fn copy_range_via_host<B: Backend + ?Sized>(
    be: &B,
    dst: &mut B::Buf,
    dst_off: usize,
    src: &B::Buf,
    src_off: usize,
    len: usize,
) -> Result<()> {
    let mut host = be.download(dst)?;
    let src = be.download(src)?;
    crate::cpu::attention_cache::copy_range(&mut host, dst_off, &src, src_off, len)?;
    *dst = be.upload_as(&host, be.dtype(dst))?;
    Ok(())
}

/// The error of a backend asked for an op it has no kernel for: names the op and the way out.
pub fn not_on_backend(op: &'static str, backend: &str, what: &str) -> crate::CoreError {
    crate::CoreError::Invalid {
        op,
        msg: format!(
            "{what} is not supported on {} yet; use --device cpu",
            backend.to_uppercase()
        ),
    }
}

/// [`Backend::geglu_forward`] through the host: download, the CPU kernel, upload. The
/// trait's default, public so that tests can run it on any backend.
pub fn geglu_forward_via_host<B: Backend + ?Sized>(
    be: &B,
    h: &mut B::Buf,
    gate: &B::Buf,
    up: &B::Buf,
) -> Result<()> {
    let (g, u) = (be.download(gate)?, be.download(up)?);
    crate::checks::same_len(
        "geglu_forward",
        g.len(),
        &[("up", u.len()), ("h", be.len(h))],
    )?;
    let mut host = vec![0.0f32; g.len()];
    crate::cpu::geglu::geglu_forward(&mut host, &g, &u);
    *h = be.upload_as(&host, be.dtype(h))?;
    Ok(())
}

/// [`Backend::geglu_backward`] through the host; the trait's default.
pub fn geglu_backward_via_host<B: Backend + ?Sized>(
    be: &B,
    dgate: &mut B::Buf,
    dup: &mut B::Buf,
    dh: &B::Buf,
    gate: &B::Buf,
    up: &B::Buf,
) -> Result<()> {
    let (g, u, d) = (be.download(gate)?, be.download(up)?, be.download(dh)?);
    crate::checks::same_len(
        "geglu_backward",
        g.len(),
        &[
            ("dh", d.len()),
            ("up", u.len()),
            ("dgate", be.len(dgate)),
            ("dup", be.len(dup)),
        ],
    )?;
    let (mut dg, mut du) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
    crate::cpu::geglu::geglu_backward(&mut dg, &mut du, &d, &g, &u);
    *dgate = be.upload_as(&dg, be.dtype(dgate))?;
    *dup = be.upload_as(&du, be.dtype(dup))?;
    Ok(())
}

/// [`Backend::copy_columns`] through the host; the trait's default.
#[allow(clippy::too_many_arguments)]
pub fn copy_columns_via_host<B: Backend + ?Sized>(
    be: &B,
    dst: &mut B::Buf,
    dst_cols: usize,
    dst_off: usize,
    src: &B::Buf,
    src_cols: usize,
    src_off: usize,
    width: usize,
    rows: usize,
) -> Result<()> {
    let mut host = be.download(dst)?;
    let src = be.download(src)?;
    crate::cpu::columns::copy_columns(
        &mut host, dst_cols, dst_off, &src, src_cols, src_off, width, rows,
    )?;
    *dst = be.upload_as(&host, be.dtype(dst))?;
    Ok(())
}

/// [`Backend::rope_partial_forward`] (or its backward) through the host; the trait's default
/// when `rot` is less than `d`.
#[allow(clippy::too_many_arguments)]
pub fn rope_partial_via_host<B: Backend + ?Sized>(
    be: &B,
    x: &mut B::Buf,
    pos: &[u32],
    cos: &B::Buf,
    sin: &B::Buf,
    h: usize,
    d: usize,
    rot: usize,
    backward: bool,
) -> Result<()> {
    let mut host = be.download(x)?;
    let (c, s) = (be.download(cos)?, be.download(sin)?);
    if backward {
        crate::cpu::rope::rope_partial_backward(&mut host, pos, &c, &s, h, d, rot)?;
    } else {
        crate::cpu::rope::rope_partial_forward(&mut host, pos, &c, &s, h, d, rot)?;
    }
    *x = be.upload_as(&host, be.dtype(x))?;
    Ok(())
}

pub trait Backend: Send + Sync + 'static {
    /// A flat array on the device.
    type Buf: Send + Sync;
    /// A frozen 4-bit matrix on the device (codes and block scales).
    type Quant: Send + Sync;
    /// A frozen 8-bit matrix on the device (row-wise int8 codes and f32 row scales).
    type Int8: Send + Sync;
    /// A buffer's copy in host memory (pinned on GPUs), for activations kept off the device.
    type Host: Send + Sync;
    /// f32 values in host memory that the device reads and writes in place (pinned and mapped
    /// on GPUs): optimizer state kept off the device.
    type Mapped: Send + Sync;
    /// An AdamW moment in 8 bits, bitsandbytes' blockwise layout: one code per value into a
    /// 256-entry map and one f32 absmax per block of 256 values. In device memory, or in
    /// mapped host memory (updated in place by the device) when made with `on_host`.
    type State8: Send + Sync;

    fn name(&self) -> &'static str;

    // ---- memory ----
    /// A zero-filled f32 buffer of `n` elements.
    fn zeros(&self, n: usize) -> Result<Self::Buf>;
    /// An f32 buffer holding `host`.
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// The storage type of activations and frozen weights on this backend.
    fn compute_dtype(&self) -> DType {
        DType::F32
    }
    /// The storage type of `buf`.
    fn dtype(&self, buf: &Self::Buf) -> DType {
        let _ = buf;
        DType::F32
    }
    /// A zero-filled buffer of `n` elements stored as `dtype` (backends without that type
    /// store f32).
    fn zeros_as(&self, n: usize, dtype: DType) -> Result<Self::Buf> {
        let _ = dtype;
        self.zeros(n)
    }
    /// `host` stored as `dtype` (rounded to nearest even).
    fn upload_as(&self, host: &[f32], dtype: DType) -> Result<Self::Buf> {
        let _ = dtype;
        self.upload(host)
    }
    /// An activation buffer: `n` zeros in the compute dtype.
    fn act_zeros(&self, n: usize) -> Result<Self::Buf> {
        self.zeros_as(n, self.compute_dtype())
    }
    /// A buffer of `n` elements stored as `dtype` whose contents are unspecified: only for
    /// outputs that the next op writes in full (a GEMM with beta 0, a kernel that writes
    /// every element). The CPU backend fills it with NaN, so a test catches a reader.
    fn uninit_as(&self, n: usize, dtype: DType) -> Result<Self::Buf> {
        self.zeros_as(n, dtype)
    }
    /// [`Backend::uninit_as`] in the compute dtype: an activation the next op writes in full.
    fn act_uninit(&self, n: usize) -> Result<Self::Buf> {
        self.uninit_as(n, self.compute_dtype())
    }
    /// A frozen weight in the compute dtype.
    fn upload_frozen(&self, host: &[f32]) -> Result<Self::Buf> {
        self.upload_as(host, self.compute_dtype())
    }
    /// A frozen weight in the compute dtype from its bytes as a file stores them
    /// (little-endian values of `stored`), converted on the way when the types differ.
    fn upload_stored(&self, bytes: &[u8], stored: DType) -> Result<Self::Buf> {
        self.upload_frozen(&crate::dtype::decode_le(bytes, stored))
    }
    /// Moves `buf` to host memory (queued: the copy may still be in flight when this
    /// returns, and the device memory is freed once it has run; [`Backend::restore_from_host`]
    /// is ordered after it).
    fn park_on_host(&self, buf: Self::Buf) -> Result<Self::Host>;
    /// [`Backend::park_on_host`] of a group of buffers that are ready together (what one
    /// layer parks), in order: on a GPU the group's copies queue back to back, and only the
    /// copies of earlier groups are waited for before their device memory is freed.
    fn park_all_on_host(&self, bufs: Vec<Self::Buf>) -> Result<Vec<Self::Host>> {
        bufs.into_iter().map(|b| self.park_on_host(b)).collect()
    }
    /// Starts copying `host` back to the device ahead of [`Backend::restore_from_host`], so
    /// the copy overlaps the work queued between the two (backends without a copy engine do
    /// nothing here).
    fn prefetch_from_host(&self, host: &Self::Host) -> Result<()> {
        let _ = host;
        Ok(())
    }
    /// A device buffer holding the values `park_on_host` saved, in the same storage type.
    fn restore_from_host(&self, host: &Self::Host) -> Result<Self::Buf>;
    /// `n` zeros in mapped host memory.
    fn mapped_zeros(&self, n: usize) -> Result<Self::Mapped>;
    /// The values of mapped memory (after every queued op that writes them).
    fn mapped_read(&self, m: &Self::Mapped) -> Result<Vec<f32>>;
    /// Overwrites mapped memory (after every queued op that uses it).
    fn mapped_write(&self, m: &mut Self::Mapped, values: &[f32]) -> Result<()>;
    /// [`Backend::adamw`] with both moments in mapped host memory.
    fn adamw_mapped(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Mapped,
        v: &mut Self::Mapped,
        s: AdamWStep,
    ) -> Result<()>;
    /// [`Backend::adamw_mapped`] of every (param, grad, m, v) of `params`: one launch where
    /// the backend can, with the same result as one call each.
    fn adamw_mapped_all(&self, params: &mut [MappedAdamW<'_, Self>], s: AdamWStep) -> Result<()> {
        for (p, g, m, v) in params.iter_mut() {
            self.adamw_mapped(p, g, m, v, s)?;
        }
        Ok(())
    }
    /// A zero 8-bit state of `n` values coded with `map` (256 values, ascending), in mapped
    /// host memory when `on_host`.
    fn state8_zeros(&self, n: usize, map: &[f32; 256], on_host: bool) -> Result<Self::State8>;
    /// A state's codes (n) and absmax (ceil(n / 256)), after every queued op that writes them.
    fn state8_read(&self, s: &Self::State8) -> Result<(Vec<u8>, Vec<f32>)>;
    /// Overwrites a state's codes and absmax, after every queued op that uses them.
    fn state8_write(&self, s: &mut Self::State8, codes: &[u8], absmax: &[f32]) -> Result<()>;
    /// [`Backend::adamw`] with 8-bit moments (bitsandbytes' `adamw_8bit` step): each block of
    /// 256 values is dequantised, updated in f32 and requantised to the nearest codes of its
    /// map with the block's new absmax. `m` is made with the signed dynamic map and `v` with
    /// the unsigned one. See [`crate::cpu::adamw8bit`] and [`temper_quant::State8`].
    fn adamw8bit(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::State8,
        v: &mut Self::State8,
        s: AdamWStep,
    ) -> Result<()>;
    /// Copies a 4-bit matrix to the device (it is checked first).
    fn upload_quant4(&self, q: &Quant4) -> Result<Self::Quant>;
    /// out (numel) = the matrix's values, stored in out's type.
    fn dequantize4(&self, out: &mut Self::Buf, q: &Self::Quant) -> Result<()>;
    /// A matrix quantised to 4 bits on the device from its bytes as a file stores them
    /// (little-endian values of `stored`), bit for bit as temper_quant's CPU quantisation
    /// (bitsandbytes' CPU reference) codes the same values; `name` labels errors. None: this
    /// backend has no device quantisation, and the caller quantises with temper_quant on the
    /// host (which is the CPU backend's device).
    fn quantize4(
        &self,
        bytes: &[u8],
        stored: DType,
        spec: &Quantize4Spec,
        name: &str,
    ) -> Result<Option<Self::Quant>> {
        let _ = (bytes, stored, spec, name);
        Ok(None)
    }
    /// Copies an 8-bit matrix to the device (it is checked first).
    fn upload_int8(&self, q: &Int8Rows) -> Result<Self::Int8>;
    /// out (rows * cols) = the matrix's values (code * scale / 127, rounded as
    /// [`Int8Rows::dequantize_into`]), stored in out's type.
    fn dequantize_int8(&self, out: &mut Self::Buf, q: &Self::Int8) -> Result<()>;
    /// A (rows, cols) matrix quantised to row-wise int8 on the device from its bytes as a
    /// file stores them (little-endian values of `stored`), as bitsandbytes' `Int8Params`
    /// codes it: each value rounded to float16, then temper_quant's `int8_vectorwise_quant`
    /// (bit for bit); `name` labels errors. None: this backend has no device quantisation,
    /// and the caller quantises on the host.
    fn quantize_int8(
        &self,
        bytes: &[u8],
        stored: DType,
        rows: usize,
        cols: usize,
        name: &str,
    ) -> Result<Option<Self::Int8>> {
        let _ = (bytes, stored, rows, cols, name);
        Ok(None)
    }
    /// Values are converted to f32 whatever the storage type.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Sets every element to `value`.
    fn fill(&self, buf: &mut Self::Buf, value: f32) -> Result<()>;
    /// [`Backend::fill`] of every buffer of `bufs` (the gradients before a step): one launch
    /// where the backend can.
    fn fill_all(&self, bufs: &mut [&mut Self::Buf], value: f32) -> Result<()> {
        for b in bufs.iter_mut() {
            self.fill(b, value)?;
        }
        Ok(())
    }
    /// dst = src (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;
    /// [`Backend::copy`] of every pair (the adapter's copies in the compute type before a
    /// step): one launch where the backend can.
    fn copy_all(&self, dsts: &mut [&mut Self::Buf], srcs: &[&Self::Buf]) -> Result<()> {
        crate::error::check_len("copy_all", "srcs", srcs.len(), dsts.len())?;
        for (d, s) in dsts.iter_mut().zip(srcs) {
            self.copy(d, s)?;
        }
        Ok(())
    }
    /// Peak bytes this backend has held at once.
    fn peak_bytes(&self) -> usize;
    /// Bytes of paged optimizer state in managed memory, which the driver keeps on the device
    /// while it has room, outside [`Backend::peak_bytes`]'s pool (CUDA with
    /// `TEMPER_PAGED_MEMORY=managed`; 0 elsewhere).
    fn paged_managed_bytes(&self) -> usize {
        0
    }
    /// Bytes this backend holds now.
    fn live_bytes(&self) -> usize {
        0
    }

    // ---- linear algebra ----
    fn matmul(&self, c: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, g: Gemm) -> Result<()>;

    // ---- elementwise ----
    /// y += alpha * x
    fn axpy(&self, y: &mut Self::Buf, alpha: f32, x: &Self::Buf) -> Result<()>;
    /// y *= alpha
    fn scale(&self, y: &mut Self::Buf, alpha: f32) -> Result<()>;
    /// [`Backend::scale`] of every buffer of `ys` (gradient clipping): one launch where the
    /// backend can.
    fn scale_all(&self, ys: &mut [&mut Self::Buf], alpha: f32) -> Result<()> {
        for y in ys.iter_mut() {
            self.scale(y, alpha)?;
        }
        Ok(())
    }
    /// y (rows, c) += bias (c), broadcast over rows.
    fn add_bias(&self, y: &mut Self::Buf, bias: &Self::Buf, c: usize) -> Result<()>;
    /// Sum of squares, accumulated in f64 (for gradient-norm clipping).
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
    /// The sum of squares over every buffer of `xs`, with one wait for the device at the
    /// end rather than one per buffer.
    fn sum_squares_all(&self, xs: &[&Self::Buf]) -> Result<f64> {
        let mut sum = 0.0;
        for x in xs {
            sum += self.sum_squares(x)?;
        }
        Ok(sum)
    }
    /// Inverted dropout: y = x * keep / (1 - p), keep drawn from a counter-based hash of
    /// (seed, index), so the same seed gives the same mask on every device and on recompute.
    /// Backward is the same call on dy.
    fn dropout(&self, y: &mut Self::Buf, x: &Self::Buf, p: f32, seed: u64) -> Result<()>;

    // ---- layers ----
    /// out (N, c) = table[ids[i]] with table (V, c).
    fn embedding_forward(
        &self,
        out: &mut Self::Buf,
        ids: &[u32],
        table: &Self::Buf,
        c: usize,
    ) -> Result<()>;
    /// y (N, c) = x * rstd * w; rstd (N) = 1/sqrt(mean(x^2) + eps).
    fn rmsnorm_forward(
        &self,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        c: usize,
        eps: f32,
    ) -> Result<()>;
    /// dx (N, c) written (not accumulated) from dy, x, w, rstd. The weight is frozen: no dw.
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        c: usize,
    ) -> Result<()>;
    /// Rotates x (N, h, d) in place, rotate_half layout: element i pairs with i + d/2.
    /// cos, sin are (P, d/2) tables indexed by pos (N).
    fn rope_forward(
        &self,
        x: &mut Self::Buf,
        pos: &[u32],
        cos: &Self::Buf,
        sin: &Self::Buf,
        h: usize,
        d: usize,
    ) -> Result<()>;
    /// The inverse rotation, applied in place to dx (N, h, d).
    fn rope_backward(
        &self,
        dx: &mut Self::Buf,
        pos: &[u32],
        cos: &Self::Buf,
        sin: &Self::Buf,
        h: usize,
        d: usize,
    ) -> Result<()>;
    /// Causal attention within each sequence of a varlen batch; hq, hkv and d below are the
    /// `shape`'s q_heads, kv_heads and head_dim.
    /// q (N, hq, d), k and v (N, hkv, d), cu_seqlens (S+1) token offsets with cu[0]=0, cu[S]=N;
    /// query head j reads kv head j / (hq/hkv). Writes out (N, hq, d) and lse (N, hq), the
    /// log-sum-exp of each query's scaled scores (scale 1/sqrt(d)), kept for backward.
    /// `window`: a sliding window (Mistral's `sliding_window`): query i sees only keys j with
    /// j > i - window. None, or a window at least as long as every sequence, is plain causal.
    /// A backend without a windowed kernel refuses a window shorter than a sequence.
    /// `softcap`: the scaled scores soft-capped first (s -> cap * tanh(s / cap), Gemma 2's
    /// `attn_logit_softcapping`); lse is then that of the capped scores. A backend without a
    /// capped kernel for the case refuses a cap, saying which it has.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward_capped(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()>;
    /// Writes dq (N, hq, d), dk and dv (N, hkv, d); `window` and `softcap` as in the forward.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_capped(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()>;
    /// [`Backend::attention_forward_capped`] without a cap.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
    ) -> Result<()> {
        self.attention_forward_capped(out, lse, q, k, v, cu_seqlens, shape, window, None)
    }
    /// [`Backend::attention_backward_capped`] without a cap.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        cu_seqlens: &[u32],
        shape: AttnShape,
        window: Option<usize>,
    ) -> Result<()> {
        self.attention_backward_capped(
            dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, shape, window, None,
        )
    }
    /// Attention of n new queries of one sequence against its KV cache (generation).
    /// q (n, hq, d) at positions past..past+n; k_cache and v_cache (cap, hkv, d) hold the
    /// keys and values of positions 0..past+n in their first rows (the new ones included);
    /// query i sees keys 0..=past+i, scale 1/sqrt(d), query head j reads kv head j/(hq/hkv).
    /// Writes out (n, hq, d): the last n rows of [`Backend::attention_forward`] over the
    /// whole sequence. No lse: there is no backward.
    ///
    /// The default goes through the host with the CPU kernel; device backends override it.
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        past: usize,
        shape: AttnShape,
    ) -> Result<()> {
        attention_decode_via_host(self, out, q, k_cache, v_cache, past, shape)
    }
    /// dst[dst_off..dst_off+len] = src[src_off..src_off+len], e.g. appending a token's keys
    /// to a KV cache (cap, hkv, d) at row `past`, or taking the last row of (N, c).
    ///
    /// The default goes through the host; device backends override it with a memcpy.
    fn copy_range(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    ) -> Result<()> {
        copy_range_via_host(self, dst, dst_off, src, src_off, len)
    }
    /// h = silu(gate) * up, all (N, f).
    fn swiglu_forward(&self, h: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    /// Writes dgate and dup from dh.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dh: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;
    /// h = gelu_tanh(gate) * up, all (N, f): GeGLU with the tanh approximation (Gemma's
    /// `gelu_pytorch_tanh`). The default goes through the host with the CPU kernel.
    fn geglu_forward(&self, h: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()> {
        geglu_forward_via_host(self, h, gate, up)
    }
    /// Writes dgate and dup from dh. The default goes through the host.
    fn geglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dh: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()> {
        geglu_backward_via_host(self, dgate, dup, dh, gate, up)
    }
    /// For every row r < rows: dst[r, dst_off..dst_off+width] = src[r, src_off..src_off+width],
    /// dst (rows, dst_cols), src (rows, src_cols): a fused projection's output split into its
    /// parts, or the parts' gradients joined. The default goes through the host.
    #[allow(clippy::too_many_arguments)]
    fn copy_columns(
        &self,
        dst: &mut Self::Buf,
        dst_cols: usize,
        dst_off: usize,
        src: &Self::Buf,
        src_cols: usize,
        src_off: usize,
        width: usize,
        rows: usize,
    ) -> Result<()> {
        copy_columns_via_host(
            self, dst, dst_cols, dst_off, src, src_cols, src_off, width, rows,
        )
    }
    /// [`Backend::rope_forward`] over the first `rot` values of each head (cos, sin (P, rot/2));
    /// the other d - rot values pass through (a partial rotary factor). With rot == d it is
    /// `rope_forward`; otherwise the default goes through the host.
    #[allow(clippy::too_many_arguments)]
    fn rope_partial_forward(
        &self,
        x: &mut Self::Buf,
        pos: &[u32],
        cos: &Self::Buf,
        sin: &Self::Buf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        if rot == d {
            self.rope_forward(x, pos, cos, sin, h, d)
        } else {
            rope_partial_via_host(self, x, pos, cos, sin, h, d, rot, false)
        }
    }
    /// The backward of [`Backend::rope_partial_forward`], in place on dx.
    #[allow(clippy::too_many_arguments)]
    fn rope_partial_backward(
        &self,
        dx: &mut Self::Buf,
        pos: &[u32],
        cos: &Self::Buf,
        sin: &Self::Buf,
        h: usize,
        d: usize,
        rot: usize,
    ) -> Result<()> {
        if rot == d {
            self.rope_backward(dx, pos, cos, sin, h, d)
        } else {
            rope_partial_via_host(self, dx, pos, cos, sin, h, d, rot, true)
        }
    }
    /// [`Backend::attention_decode`] with soft-capped scores when `softcap` is given. The
    /// default runs a cap through the host with the CPU kernel.
    #[allow(clippy::too_many_arguments)]
    fn attention_decode_capped(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        past: usize,
        shape: AttnShape,
        softcap: Option<f32>,
    ) -> Result<()> {
        if softcap.is_none() {
            return self.attention_decode(out, q, k_cache, v_cache, past, shape);
        }
        let mut host = self.download(out)?;
        let (q, k, v) = (
            self.download(q)?,
            self.download(k_cache)?,
            self.download(v_cache)?,
        );
        crate::cpu::attention_cache::attention_decode_capped(
            &mut host, &q, &k, &v, past, shape, softcap,
        )?;
        *out = self.upload_as(&host, self.dtype(out))?;
        Ok(())
    }
    /// [`Backend::linear_cross_entropy`] with the logits soft-capped first when `softcap` is
    /// given (logit -> cap * tanh(logit / cap), Gemma 2's `final_logit_softcapping`). A
    /// backend without the capped kernel refuses a cap.
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy_capped(
        &self,
        dx: Option<&mut Self::Buf>,
        x: &Self::Buf,
        w: &Self::Buf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
        softcap: Option<f32>,
    ) -> Result<Vec<f32>> {
        if softcap.is_some() {
            return Err(not_on_backend(
                "linear_cross_entropy",
                self.name(),
                "final logit soft-capping (final_logit_softcapping)",
            ));
        }
        self.linear_cross_entropy(dx, x, w, targets, c, v, grad_scale, chunk)
    }
    /// The LM head fused with cross-entropy, chunked over tokens so full logits never exist.
    /// x (N, c), w (V, c), targets (N) with -100 = no loss. Returns each token's loss (N,
    /// 0 where ignored) on the host. When `dx` is given, writes dx (N, c) =
    /// grad_scale * d(sum of token losses)/dx. `chunk` tokens are processed at a time.
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy(
        &self,
        dx: Option<&mut Self::Buf>,
        x: &Self::Buf,
        w: &Self::Buf,
        targets: &[i32],
        c: usize,
        v: usize,
        grad_scale: f32,
        chunk: usize,
    ) -> Result<Vec<f32>>;

    // ---- optimizer ----
    /// One AdamW step over param, with its grad and the two moment buffers.
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        s: AdamWStep,
    ) -> Result<()>;

    /// [`Backend::adamw`] of every (param, grad, m, v) of `params`: one launch where the
    /// backend can, with the same result as one call each.
    fn adamw_all(&self, params: &mut [DeviceAdamW<'_, Self>], s: AdamWStep) -> Result<()> {
        for (p, g, m, v) in params.iter_mut() {
            self.adamw(p, g, m, v, s)?;
        }
        Ok(())
    }

    // ---- profiling ----
    /// Starts (or stops) timing every op on the device, by the stage the model names and the
    /// op's kind. Backends without device timers ignore it.
    fn profile_enable(&self, _on: bool) {}
    /// The part of the step the ops that follow belong to ("forward", "recompute",
    /// "backward", ...), and a detail that refines their kind ("lora" for adapter products).
    fn profile_stage(&self, _stage: &'static str) {}
    fn profile_detail(&self, _detail: Option<&'static str>) {}
    /// Device milliseconds by "stage/op" since the last call, with "idle" for the time the
    /// device waited between ops (launch gaps and host work); empty when not profiling.
    fn profile_take(&self) -> Result<Vec<(String, f64)>> {
        Ok(vec![])
    }
}
