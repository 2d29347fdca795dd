//! A frozen linear layer with an optional LoRA adapter, forward and backward.
//!
//! forward:  y = x W^T (+ bias) + s * (drop(x) A^T) B^T
//! backward: dx = dy W + drop'(s * (dy B) A);  dB += s * dy^T xa;  dA += (s * dy B)^T drop(x)
//! where xa = drop(x) A^T (N, r) is what the forward keeps. W and the bias get no gradient.

use temper_core::{Backend, Gemm};

use crate::error::Result;
use crate::lora::Param;
use crate::weights::Linear;

/// The adapter of one linear layer during a step.
pub struct LoraRef<'a, B: Backend> {
    pub a: &'a Param<B>, // (r, in)
    pub b: &'a Param<B>, // (out, r)
    pub scale: f32,
    /// Dropout probability, 0 when not training.
    pub dropout: f32,
    pub seed: u64,
}

/// The adapter of one linear layer in backward: gradients are written into A and B.
pub struct LoraMut<'a, B: Backend> {
    pub a: &'a mut Param<B>,
    pub b: &'a mut Param<B>,
    pub scale: f32,
    pub dropout: f32,
    pub seed: u64,
}

/// What the LoRA path keeps for backward.
pub struct LoraSaved<B: Backend> {
    /// drop(x) (N, in), only when dropout > 0 (otherwise x itself is used).
    pub x_dropped: Option<B::Buf>,
    /// drop(x) A^T (N, r)
    pub xa: B::Buf,
}

/// y (n, out) = x (n, in) W^T + bias + LoRA.
pub fn linear_forward<B: Backend>(
    be: &B,
    y: &mut B::Buf,
    x: &B::Buf,
    lin: &Linear<B>,
    n: usize,
    lora: Option<LoraRef<'_, B>>,
) -> Result<Option<LoraSaved<B>>> {
    linear_forward_opt(be, Some(y), x, lin, n, lora)
}

/// [`linear_forward`] where `y` may be None: then only what the LoRA backward keeps is
/// computed (a recomputed layer's last projection, whose output nothing reads).
///
/// With an adapter the LoRA term is written first, y = s xa B^T, and the base GEMM then adds
/// x W^T onto it: the base product reads y in its epilogue, under its own arithmetic,
/// instead of a separate pass reading and writing y again.
pub fn linear_forward_opt<B: Backend>(
    be: &B,
    y: Option<&mut B::Buf>,
    x: &B::Buf,
    lin: &Linear<B>,
    n: usize,
    lora: Option<LoraRef<'_, B>>,
) -> Result<Option<LoraSaved<B>>> {
    let (d_in, d_out) = (lin.d_in, lin.d_out);
    let Some(lora) = lora else {
        be.profile_detail(None);
        if let Some(y) = y {
            base_forward(be, y, x, lin, n, 0.0)?;
        }
        return Ok(None);
    };
    be.profile_detail(Some("lora"));
    let r = lora.a.shape[0];
    let x_dropped = if lora.dropout > 0.0 {
        let mut xd = be.act_uninit(n * d_in)?;
        be.dropout(&mut xd, x, lora.dropout, lora.seed)?;
        Some(xd)
    } else {
        None
    };
    let x_in = x_dropped.as_ref().unwrap_or(x);
    let mut xa = be.act_uninit(n * r)?; // (n, r)
    be.matmul(&mut xa, x_in, lora.a.for_compute(), Gemm::nt(n, r, d_in))?;
    if let Some(y) = y {
        be.matmul(
            y,
            &xa,
            lora.b.for_compute(),
            Gemm::nt(n, d_out, r).alpha(lora.scale),
        )?;
        be.profile_detail(None);
        base_forward(be, y, x, lin, n, 1.0)?;
    }
    be.profile_detail(None);
    Ok(Some(LoraSaved { x_dropped, xa }))
}

/// y (n, out) = x W^T + bias + beta * y.
fn base_forward<B: Backend>(
    be: &B,
    y: &mut B::Buf,
    x: &B::Buf,
    lin: &Linear<B>,
    n: usize,
    beta: f32,
) -> Result<()> {
    let (d_in, d_out) = (lin.d_in, lin.d_out);
    be.matmul(y, x, &*lin.weight(be)?, Gemm::nt(n, d_out, d_in).beta(beta))?;
    if let Some(bias) = &lin.bias {
        be.add_bias(y, bias, d_out)?;
    }
    Ok(())
}

/// Backward of [`linear_forward`]. `dx` (n, in) is written, or accumulated into when
/// `accumulate`; pass None when the input gradient is not needed (LoRA grads still are).
/// Without dropout the LoRA term of dx goes first and the base GEMM adds dy W onto it, as in
/// the forward.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<B: Backend>(
    be: &B,
    dx: Option<&mut B::Buf>,
    accumulate: bool,
    dy: &B::Buf, // (n, out)
    x: &B::Buf,  // (n, in), the forward's input
    lin: &Linear<B>,
    n: usize,
    lora: Option<(LoraMut<'_, B>, &LoraSaved<B>)>,
) -> Result<()> {
    let (d_in, d_out) = (lin.d_in, lin.d_out);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // dx (n, in) = dy W + beta * dx
    let base_dx = |dx: &mut B::Buf, beta: f32| -> Result<()> {
        be.profile_detail(None);
        be.matmul(
            dx,
            dy,
            &*lin.weight(be)?,
            Gemm::nn(n, d_in, d_out).beta(beta),
        )?;
        Ok(())
    };
    let Some((lora, saved)) = lora else {
        if let Some(dx) = dx {
            base_dx(dx, beta)?;
        }
        return Ok(());
    };
    let r = lora.a.shape[0];
    let s = lora.scale;
    be.profile_detail(Some("lora"));
    // dB (out, r) += s * dy^T xa
    be.matmul(
        &mut lora.b.grad,
        dy,
        &saved.xa,
        Gemm::tn(d_out, r, n).alpha(s).beta(1.0),
    )?;
    // dxa (n, r) = s * dy B
    let mut dxa = be.act_uninit(n * r)?;
    be.matmul(
        &mut dxa,
        dy,
        lora.b.for_compute(),
        Gemm::nn(n, r, d_out).alpha(s),
    )?;
    // dA (r, in) += dxa^T drop(x)
    let x_in = saved.x_dropped.as_ref().unwrap_or(x);
    be.matmul(&mut lora.a.grad, &dxa, x_in, Gemm::tn(r, d_in, n).beta(1.0))?;
    if let Some(dx) = dx {
        if lora.dropout > 0.0 {
            base_dx(dx, beta)?;
            be.profile_detail(Some("lora"));
            // d drop(x) = dxa A, then through the same mask.
            let mut dxd = be.act_uninit(n * d_in)?;
            be.matmul(&mut dxd, &dxa, lora.a.for_compute(), Gemm::nn(n, d_in, r))?;
            let mut masked = be.act_uninit(n * d_in)?;
            be.dropout(&mut masked, &dxd, lora.dropout, lora.seed)?;
            be.axpy(dx, 1.0, &masked)?;
        } else {
            // dx = dxa A (+ dx), then += dy W
            be.matmul(
                dx,
                &dxa,
                lora.a.for_compute(),
                Gemm::nn(n, d_in, r).beta(beta),
            )?;
            base_dx(dx, 1.0)?;
        }
    }
    be.profile_detail(None);
    Ok(())
}
