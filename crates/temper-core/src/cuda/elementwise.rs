//! Typed launchers of `kernels/elementwise.cu`: fill, axpy, scale, bias, sums of squares,
//! dropout, the gated activations (SwiGLU, GeGLU), column blocks, casts between storage types
//! and the f32 AdamW step. Each checks its sizes (`checks.rs`, shared with the CPU twins in
//! `src/cpu/`) and converts an input stored in another type to the output's first.

use super::{check_f32, dev_err, grid_stride, launch, CudaBackend, CudaBuf};
use crate::backend::{AdamWStep, Backend};
use crate::error::check_len;
use crate::{CoreError, DType, Result};

const ADD_BIAS: &str = "add_bias";
const ADAMW: &str = "adamw";
const AXPY: &str = "axpy";
const COPY_COLUMNS: &str = "copy_columns";
const GEGLU_BACKWARD: &str = "geglu_backward";
const GEGLU_FORWARD: &str = "geglu_forward";
const DROPOUT: &str = "dropout";
const FILL: &str = "fill";
const SCALE: &str = "scale";
const SUM_SQUARES: &str = "sum_squares";
const SWIGLU_BACKWARD: &str = "swiglu_backward";
const SWIGLU_FORWARD: &str = "swiglu_forward";

/// Its entry points compiled per storage type (suffixes _f32, _bf16, _f16).
pub(super) const KERNELS: &[&str] = &[
    FILL,
    AXPY,
    SCALE,
    ADD_BIAS,
    SUM_SQUARES,
    DROPOUT,
    SWIGLU_FORWARD,
    SWIGLU_BACKWARD,
    GEGLU_FORWARD,
    GEGLU_BACKWARD,
    COPY_COLUMNS,
    super::multi_tensor::CAST_MULTI,
];
/// Its entry points compiled for f32 only (suffix _f32).
pub(super) const F32_KERNELS: &[&str] = &[
    ADAMW,
    super::multi_tensor::ADAMW_MULTI,
    super::multi_tensor::FILL_MULTI,
    super::multi_tensor::SCALE_MULTI,
    super::multi_tensor::SUM_SQUARES_MULTI,
];

/// Every element of buf = value.
pub(super) fn fill(be: &CudaBackend, buf: &mut CudaBuf, value: f32) -> Result<()> {
    let n = buf.len as u64;
    launch!(
        be,
        be.kernel(FILL, buf.dtype)?,
        grid_stride(buf.len),
        FILL,
        &mut buf.data,
        &value,
        &n
    )
}

/// y += alpha x.
pub(super) fn axpy(be: &CudaBackend, y: &mut CudaBuf, alpha: f32, x: &CudaBuf) -> Result<()> {
    check_len("axpy", "x", x.len, y.len)?;
    let x = be.converted(x, y.dtype)?;
    let n = y.len as u64;
    launch!(
        be,
        be.kernel(AXPY, y.dtype)?,
        grid_stride(y.len),
        AXPY,
        &mut y.data,
        &alpha,
        &x.data,
        &n
    )
}

/// y *= alpha.
pub(super) fn scale(be: &CudaBackend, y: &mut CudaBuf, alpha: f32) -> Result<()> {
    let n = y.len as u64;
    launch!(
        be,
        be.kernel(SCALE, y.dtype)?,
        grid_stride(y.len),
        SCALE,
        &mut y.data,
        &alpha,
        &n
    )
}

/// y (rows, c) += bias (c) on every row.
pub(super) fn add_bias(be: &CudaBackend, y: &mut CudaBuf, bias: &CudaBuf, c: usize) -> Result<()> {
    crate::checks::add_bias(y.len, bias.len, c)?;
    let bias = be.converted(bias, y.dtype)?;
    let (n, c32) = (y.len as u64, c as u32);
    launch!(
        be,
        be.kernel(ADD_BIAS, y.dtype)?,
        grid_stride(y.len),
        ADD_BIAS,
        &mut y.data,
        &bias.data,
        &n,
        &c32
    )
}

/// The sum of the squares of every element of every buffer, in f64.
pub(super) fn sum_squares_all(be: &CudaBackend, xs: &[&CudaBuf]) -> Result<f64> {
    let mut out = be.stream.alloc_zeros::<f64>(1).map_err(dev_err("alloc"))?;
    for x in xs {
        let n = x.len as u64;
        launch!(
            be,
            be.kernel(SUM_SQUARES, x.dtype)?,
            grid_stride(x.len),
            SUM_SQUARES,
            &mut out,
            &x.data,
            &n
        )?;
    }
    let host = be.stream.clone_dtoh(&out).map_err(dev_err("download"))?;
    Ok(host[0])
}

/// y = x with each element zeroed with probability p (a hash of seed and index) and the
/// rest scaled by 1 / (1 - p).
pub(super) fn dropout(
    be: &CudaBackend,
    y: &mut CudaBuf,
    x: &CudaBuf,
    p: f32,
    seed: u64,
) -> Result<()> {
    crate::checks::dropout(y.len, x.len, p)?;
    if p == 0.0 {
        return be.copy(y, x);
    }
    if p >= 1.0 {
        return be.fill(y, 0.0);
    }
    let x = be.converted(x, y.dtype)?;
    let n = y.len as u64;
    launch!(
        be,
        be.kernel(DROPOUT, y.dtype)?,
        grid_stride(y.len),
        DROPOUT,
        &mut y.data,
        &x.data,
        &p,
        &seed,
        &n
    )
}

/// h = act(gate) * up with the kernel `op` (SwiGLU's or GeGLU's).
fn gated_forward(
    be: &CudaBackend,
    op: &'static str,
    h: &mut CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    crate::checks::gated_forward(op, gate.len, up.len, h.len)?;
    let (gate, up) = (be.converted(gate, h.dtype)?, be.converted(up, h.dtype)?);
    let n = h.len as u64;
    launch!(
        be,
        be.kernel(op, h.dtype)?,
        grid_stride(h.len),
        op,
        &mut h.data,
        &gate.data,
        &up.data,
        &n
    )
}

/// dgate, dup from dh with the kernel `op` (SwiGLU's or GeGLU's).
fn gated_backward(
    be: &CudaBackend,
    op: &'static str,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dh: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    crate::checks::gated_backward(op, gate.len, up.len, dh.len, dgate.len, dup.len)?;
    let dt = dgate.dtype;
    if dup.dtype != dt {
        return Err(CoreError::Invalid {
            op,
            msg: format!("dgate is {dt} but dup is {}", dup.dtype),
        });
    }
    let (dh, gate, up) = (
        be.converted(dh, dt)?,
        be.converted(gate, dt)?,
        be.converted(up, dt)?,
    );
    let n = gate.len as u64;
    launch!(
        be,
        be.kernel(op, dt)?,
        grid_stride(gate.len),
        op,
        &mut dgate.data,
        &mut dup.data,
        &dh.data,
        &gate.data,
        &up.data,
        &n
    )
}

/// dst[r, dst_off..dst_off + width] = src[r, src_off..src_off + width] for every row r: a
/// fused projection's column blocks.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_columns(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    dst_cols: usize,
    dst_off: usize,
    src: &CudaBuf,
    src_cols: usize,
    src_off: usize,
    width: usize,
    rows: usize,
) -> Result<()> {
    let op = COPY_COLUMNS;
    crate::checks::copy_columns(
        dst.len, dst_cols, dst_off, src.len, src_cols, src_off, width, rows,
    )?;
    if width == 0 || rows == 0 {
        return Ok(());
    }
    let src = be.converted(src, dst.dtype)?;
    let narrow = |v: usize| {
        u32::try_from(v).map_err(|_| CoreError::Invalid {
            op,
            msg: format!("{v} columns do not fit the kernel's 32-bit column index"),
        })
    };
    let (dc, doff, sc, soff, w) = (
        narrow(dst_cols)?,
        narrow(dst_off)?,
        narrow(src_cols)?,
        narrow(src_off)?,
        narrow(width)?,
    );
    let n = (rows * width) as u64;
    launch!(
        be,
        be.kernel(op, dst.dtype)?,
        grid_stride(rows * width),
        op,
        &mut dst.data,
        &dc,
        &doff,
        &src.data,
        &sc,
        &soff,
        &w,
        &n
    )
}

/// One AdamW step over f32 values (the scalars of `crate::optim`): param and grad in device
/// memory, the two moments at device addresses m and v (device buffers, or pinned host memory
/// mapped into the device's address space for paged AdamW). The caller checked the sizes.
pub(super) fn adamw(
    be: &CudaBackend,
    param: &mut CudaBuf,
    grad: &CudaBuf,
    m: u64,
    v: u64,
    s: AdamWStep,
) -> Result<()> {
    check_f32(ADAMW, "param", param)?;
    check_f32(ADAMW, "grad", grad)?;
    let c = crate::optim::Scalars::new(s);
    let n = param.len as u64;
    launch!(
        be,
        be.kernel(ADAMW, DType::F32)?,
        grid_stride(param.len),
        ADAMW,
        &mut param.data,
        &grad.data,
        &m,
        &v,
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

/// h = silu(gate) * up.
pub(super) fn swiglu_forward(
    be: &CudaBackend,
    h: &mut CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    gated_forward(be, SWIGLU_FORWARD, h, gate, up)
}

/// The backward of [`swiglu_forward`]: dgate and dup from dh.
pub(super) fn swiglu_backward(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dh: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    gated_backward(be, SWIGLU_BACKWARD, dgate, dup, dh, gate, up)
}

/// h = gelu_tanh(gate) * up.
pub(super) fn geglu_forward(
    be: &CudaBackend,
    h: &mut CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    gated_forward(be, GEGLU_FORWARD, h, gate, up)
}

/// The backward of [`geglu_forward`]: dgate and dup from dh.
pub(super) fn geglu_backward(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dh: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
) -> Result<()> {
    gated_backward(be, GEGLU_BACKWARD, dgate, dup, dh, gate, up)
}

/// Converts n elements at device address src (stored as `from`) into dst (stored as `to`):
/// the `cast_{from}_to_{to}` kernels, one per pair of storage types.
pub(super) fn cast(
    be: &CudaBackend,
    dst: u64,
    to: DType,
    src: u64,
    from: DType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = be.kernel_named(&cast_name(from, to))?;
    let n64 = n as u64;
    launch!(be, f, grid_stride(n), "cast", &dst, &src, &n64)
}

/// The cast kernel's name from one storage type to another.
pub(super) fn cast_name(from: DType, to: DType) -> String {
    format!("cast_{}_to_{}", from.suffix(), to.suffix())
}
