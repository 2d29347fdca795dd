//! AdamW with 8-bit blockwise moments, as bitsandbytes' `AdamW8bit` (`adamw_8bit`,
//! `paged_adamw_8bit`): each moment is stored as one code per value into a 256-entry map
//! (the signed dynamic map for the first moment, the unsigned one for the second) and one f32
//! absmax per block of 256 values. A step dequantises a block, updates it in f32, and
//! requantises it with the block's new absmax.
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
//! Requantisation is bitsandbytes' PyTorch `quantize_blockwise`: full blocks multiply by the
//! f32 reciprocal of absmax, the partial last block divides by it, absmax is clamped below at
//! 1e-38, and a value exactly halfway between two codes takes the lower one. PyTorch's CPU
//! `sqrt` goes through MKL, which is not correctly rounded in the last bit for about 0.5% of
//! inputs; the moments do not depend on it (codes and absmax match bitsandbytes bit for bit)
//! but the parameters can differ in the last bits of those elements' updates.
use rayon::prelude::*;

use crate::backend::AdamWStep;
use crate::cpu::adamw::Scalars;
use crate::error::check_len;
use crate::{CoreError, Result};

/// Values per quantisation block (bitsandbytes' optimizers hard-code 256).
pub const BLOCKSIZE: usize = 256;

/// The per-step scalars: torch's AdamW ones plus beta1 itself (the first moment is a
/// multiply and a fused add here, not a lerp).
#[derive(Clone, Copy, Debug)]
pub struct Scalars8 {
    pub adamw: Scalars,
    pub b1: f32,
}

impl Scalars8 {
    pub fn new(s: AdamWStep) -> Self {
        Scalars8 {
            adamw: Scalars::new(s),
            b1: crate::cpu::adamw::as_python_float(s.beta1) as f32,
        }
    }
}

/// One moment in 8 bits: `codes[i]` indexes `map`, block `b` of 256 values is scaled by
/// `absmax[b]`. The decision thresholds of `map` are kept beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct State8 {
    /// (n,)
    pub(crate) codes: Vec<u8>,
    /// (ceil(n / 256),)
    pub(crate) absmax: Vec<f32>,
    pub(crate) map: [f32; 256],
    /// (255,) midpoints of neighbouring map entries.
    pub(crate) bounds: [f32; 255],
}

impl State8 {
    /// `n` zeros (every code 0, every absmax 0: dequantises to zero whatever the map).
    pub fn zeros(n: usize, map: &[f32; 256]) -> Result<Self> {
        Ok(State8 {
            codes: vec![0; n],
            absmax: vec![0.0; n.div_ceil(BLOCKSIZE)],
            map: *map,
            bounds: bounds(map)?,
        })
    }

    /// A state holding `codes` (n) and `absmax` (ceil(n / 256)) coded with `map`.
    pub fn from_parts(codes: Vec<u8>, absmax: Vec<f32>, map: &[f32; 256]) -> Result<Self> {
        check_state8("state8", codes.len(), codes.len(), absmax.len())?;
        Ok(State8 {
            codes,
            absmax,
            map: *map,
            bounds: bounds(map)?,
        })
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    pub fn map(&self) -> &[f32; 256] {
        &self.map
    }

    /// Overwrites the codes and absmax (lengths checked).
    pub fn set(&mut self, codes: &[u8], absmax: &[f32]) -> Result<()> {
        check_state8("state8_write", self.codes.len(), codes.len(), absmax.len())?;
        self.codes.copy_from_slice(codes);
        self.absmax.copy_from_slice(absmax);
        Ok(())
    }

    /// The values the state holds: `map[code] * absmax[block]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.codes.len()];
        for ((o, q), &a) in out
            .chunks_mut(BLOCKSIZE)
            .zip(self.codes.chunks(BLOCKSIZE))
            .zip(&self.absmax)
        {
            dequantize_block(q, a, &self.map, o);
        }
        out
    }

    /// Quantises `values` into this state, as a step requantises.
    pub fn quantize_from(&mut self, values: &[f32]) -> Result<()> {
        check_len("state8_quantize", "values", values.len(), self.codes.len())?;
        let partial_tail = !values.len().is_multiple_of(BLOCKSIZE);
        let blocks = self.absmax.len();
        for (b, ((q, a), x)) in self
            .codes
            .chunks_mut(BLOCKSIZE)
            .zip(self.absmax.iter_mut())
            .zip(values.chunks(BLOCKSIZE))
            .enumerate()
        {
            *a = quantize_block(x, &self.bounds, partial_tail && b + 1 == blocks, q);
        }
        Ok(())
    }
}

/// Checks that codes of length `codes` and absmax of length `absmax` fit a state of `n`.
pub fn check_state8(op: &'static str, n: usize, codes: usize, absmax: usize) -> Result<()> {
    check_len(op, "codes", codes, n)?;
    check_len(op, "absmax", absmax, n.div_ceil(BLOCKSIZE))
}

/// The decision thresholds of a sorted 256-entry map: `(map[i] + map[i + 1]) / 2` in f32, as
/// bitsandbytes' `(code[:-1] + code[1:]) / 2`.
pub fn bounds(map: &[f32; 256]) -> Result<[f32; 255]> {
    if !map.windows(2).all(|w| w[0] <= w[1]) {
        return Err(CoreError::Invalid {
            op: "state8",
            msg: "the map must be 256 values sorted ascending, as bitsandbytes' dynamic maps are"
                .into(),
        });
    }
    let mut b = [0.0f32; 255];
    for (i, o) in b.iter_mut().enumerate() {
        *o = (map[i] + map[i + 1]) / 2.0;
    }
    Ok(b)
}

/// The code of a scaled value: the number of thresholds below it (`torch.bucketize(x,
/// bounds, right=False)`: a value on a threshold takes the lower code).
#[inline]
pub fn nearest_code(bounds: &[f32; 255], x: f32) -> u8 {
    bounds.partition_point(|&b| b < x) as u8
}

/// out = map[q] * absmax for one block.
#[inline]
pub fn dequantize_block(q: &[u8], absmax: f32, map: &[f32; 256], out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(q) {
        *o = map[c as usize] * absmax;
    }
}

/// Quantises one block into `q` and returns its absmax. A full block multiplies by the f32
/// reciprocal of absmax, the partial last block of a tensor divides by absmax (bitsandbytes'
/// PyTorch `quantize_blockwise` does both); absmax is clamped below at 1e-38 for the scaling
/// only, and the scaled value to [-1, 1] (a NaN, which the absmax skips, takes code 0 here
/// and on the GPU).
#[inline]
pub fn quantize_block(x: &[f32], bounds: &[f32; 255], partial: bool, q: &mut [u8]) -> f32 {
    let absmax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let a = absmax.max(1e-38);
    let r = 1.0 / a;
    for (o, &v) in q.iter_mut().zip(x) {
        let s = if partial { v / a } else { v * r };
        *o = nearest_code(bounds, s.clamp(-1.0, 1.0));
    }
    absmax
}

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
    check_state8(OP, n, m.codes.len(), m.absmax.len())?;
    check_state8(OP, n, v.codes.len(), v.absmax.len())?;
    crate::checks::step_from_one(OP, s.step)?;
    let c = Scalars8::new(s);
    let blocks = n.div_ceil(BLOCKSIZE);
    let partial_tail = !n.is_multiple_of(BLOCKSIZE);
    let (map1, bounds1, map2, bounds2) = (&m.map, &m.bounds, &v.map, &v.bounds);
    param
        .par_chunks_mut(BLOCKSIZE)
        .zip(grad.par_chunks(BLOCKSIZE))
        .zip(m.codes.par_chunks_mut(BLOCKSIZE))
        .zip(m.absmax.par_iter_mut())
        .zip(v.codes.par_chunks_mut(BLOCKSIZE))
        .zip(v.absmax.par_iter_mut())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn linear_map() -> [f32; 256] {
        let mut m = [0.0f32; 256];
        for (i, v) in m.iter_mut().enumerate() {
            *v = (i as f32 - 127.5) / 127.5;
        }
        m
    }

    #[test]
    fn a_value_on_a_threshold_takes_the_lower_code() {
        let b = bounds(&linear_map()).expect("bounds");
        assert_eq!(nearest_code(&b, b[200]), 200);
        assert_eq!(nearest_code(&b, f32::from_bits(b[200].to_bits() + 1)), 201);
        assert_eq!(nearest_code(&b, -1.0), 0);
        assert_eq!(nearest_code(&b, 1.0), 255);
    }

    #[test]
    fn quantize_then_dequantize_is_within_half_a_code_step() {
        let map = linear_map();
        let mut s = State8::zeros(600, &map).expect("state");
        let x: Vec<f32> = (0..600)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        s.quantize_from(&x).expect("quantize");
        let y = s.dequantize();
        for (b, (xb, yb)) in x.chunks(BLOCKSIZE).zip(y.chunks(BLOCKSIZE)).enumerate() {
            let absmax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(s.absmax[b], absmax);
            for (a, c) in xb.iter().zip(yb) {
                assert!((a - c).abs() <= absmax / 127.5 * 0.5 + 1e-6, "{a} vs {c}");
            }
        }
    }

    #[test]
    fn an_unsorted_map_is_refused() {
        let mut map = linear_map();
        map.swap(3, 4);
        assert!(State8::zeros(10, &map).is_err());
    }
}
