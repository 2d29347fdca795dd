//! AdamW with 8-bit blockwise moments, as bitsandbytes' `AdamW8bit` (`adamw_8bit`,
//! `paged_adamw_8bit`): each moment is a [`State8`] (temper-quant: one code per value into a
//! 256-entry map, one f32 absmax per block of 256 values). A step dequantises a block,
//! updates it in f32, and requantises it with the block's new absmax.
//!
//! Follows bitsandbytes 0.50's CPU op (`backends/cpu/ops.py`,
//! `_optimizer_update_8bit_blockwise_cpu` with "adam") operation by operation, each rounded as
//! PyTorch's AVX2/AVX-512 kernels round it (measured against them, see
//! `scripts/make_optim8_fixtures.py`):
//!
//! ```text
//! m = map1[q1] * absmax1                 v = map2[q2] * absmax2        (dequantise)
//! m = fma(1 - b1, g, m * b1)             m.mul_(b1).add_(g, alpha=1 - b1)
//! v = fma((1 - b2) * g, g, v * b2)       v.mul_(b2).addcmul_(g, g, value=1 - b2)
//! denom = sqrt(v) / sqrt(1 - b2^t) + eps
//! p *= 1 - lr wd                         (when wd > 0)
//! p = p + (-lr / (1 - b1^t) * m) / denom p.addcdiv_(m, denom, value=-lr / (1 - b1^t))
//! absmax = max |x| over the block; q = nearest code of x * (1 / absmax), clamped to [-1, 1]
//! ```
//!
//! Requantisation is bitsandbytes' PyTorch `quantize_blockwise` (see temper-quant's
//! `state8.rs`). PyTorch's CPU
//! `sqrt` goes through MKL, which is not correctly rounded in the last bit for about 0.5% of
//! inputs; the moments do not depend on it (codes and absmax match bitsandbytes bit for bit)
//! but the parameters can differ in the last bits of those elements' updates.
use rayon::prelude::*;
use temper_quant::state8::{check_state8, dequantize_block, quantize_block, State8, BLOCKSIZE};

use crate::backend::AdamWStep;
use crate::error::check_len;
use crate::optim::Scalars8;
use crate::Result;

/// One 8-bit AdamW step over `param` (n) with `grad` (n), the first moment `m` (signed map)
/// and the second `v` (unsigned map), block by block.
pub fn adamw8bit(
    param: &mut [f32], // (n)
    grad: &[f32],      // (n)
    m: &mut State8,
    v: &mut State8,
    s: AdamWStep,
) -> Result<()> {
    const OP: &str = "adamw8bit";
    let n = param.len();
    check_len(OP, "grad", grad.len(), n)?;
    check_state8(OP, n, m.len(), m.absmax().len())?;
    check_state8(OP, n, v.len(), v.absmax().len())?;
    crate::checks::step_from_one(OP, s.step)?;
    let c = Scalars8::new(s);
    let blocks = n.div_ceil(BLOCKSIZE);
    let partial_tail = !n.is_multiple_of(BLOCKSIZE);
    let (codes1, absmax1, map1, bounds1) = m.parts_mut();
    let (codes2, absmax2, map2, bounds2) = v.parts_mut();
    param
        .par_chunks_mut(BLOCKSIZE)
        .zip(grad.par_chunks(BLOCKSIZE))
        .zip(codes1.par_chunks_mut(BLOCKSIZE))
        .zip(absmax1.par_iter_mut())
        .zip(codes2.par_chunks_mut(BLOCKSIZE))
        .zip(absmax2.par_iter_mut())
        .enumerate()
        .for_each(|(b, (((((p, g), q1), a1), q2), a2))| {
            let partial = partial_tail && b + 1 == blocks;
            let len = p.len();
            let (mut mb, mut vb) = ([0.0f32; BLOCKSIZE], [0.0f32; BLOCKSIZE]);
            let (mb, vb) = (&mut mb[..len], &mut vb[..len]);
            dequantize_block(q1, *a1, map1, mb);
            dequantize_block(q2, *a2, map2, vb);
            for i in 0..len {
                step_one(&mut p[i], g[i], &mut mb[i], &mut vb[i], &c);
            }
            *a1 = quantize_block(mb, bounds1, partial, q1);
            *a2 = quantize_block(vb, bounds2, partial, q2);
        });
    Ok(())
}

/// The update of one element from its dequantised moments (see the module docs).
#[inline]
fn step_one(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, c: &Scalars8) {
    let a = &c.adamw;
    *m = a.w1.mul_add(g, *m * c.b1);
    *v = (a.one_minus_b2 * g).mul_add(g, *v * a.b2);
    let denom = v.sqrt() / a.bc2_sqrt + a.eps;
    if a.apply_decay != 0 {
        *p *= a.decay;
    }
    *p += (a.neg_step_size * *m) / denom;
}
