//! 4-bit blockwise-quantised frozen weights (bitsandbytes' NF4 / FP4 layout) as temper-core's
//! backends hold them ([`Quant4`]), the CPU twin of the CUDA dequantisation kernel
//! (`crates/temper-core/kernels/dequant.cu`), and how to quantise on a device
//! ([`Quantize4Spec`]). Quantising on the host and the file layout are [`crate::QuantState`]'s.

use crate::double_quant::{signed_map, NESTED_BLOCKSIZE};
use crate::error::{check_len, QuantError, Result};
use crate::quant_state::{Absmax, QuantState};
use crate::QuantType;

/// The block scales of a 4-bit matrix.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax4 {
    /// (blocks,) f32.
    Plain(Vec<f32>),
    /// Double quantisation: absmax[i] = map[codes[i]] * nested_absmax[i / nested_blocksize]
    /// + offset, all in f32.
    Nested {
        codes: Vec<u8>,
        map: Box<[f32; 256]>,
        nested_absmax: Vec<f32>,
        nested_blocksize: usize,
        offset: f32,
    },
}

impl Absmax4 {
    pub fn blocks(&self) -> usize {
        match self {
            Absmax4::Plain(a) => a.len(),
            Absmax4::Nested { codes, .. } => codes.len(),
        }
    }

    /// Block i's absmax in f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Absmax4::Plain(a) => a[i],
            Absmax4::Nested {
                codes,
                map,
                nested_absmax,
                nested_blocksize,
                offset,
            } => map[codes[i] as usize] * nested_absmax[i / nested_blocksize] + offset,
        }
    }

    /// Bytes held (what a device copy takes).
    pub fn bytes(&self) -> usize {
        match self {
            Absmax4::Plain(a) => 4 * a.len(),
            Absmax4::Nested {
                codes,
                nested_absmax,
                ..
            } => codes.len() + 4 * nested_absmax.len() + 4 * 256,
        }
    }
}

/// A matrix of `numel` values in 4-bit codes: element 2j in the high nibble of byte j,
/// 2j+1 in the low one; value = code[q] * absmax[i / blocksize].
#[derive(Clone, Debug, PartialEq)]
pub struct Quant4 {
    /// The 16 values the codes index (NF4 or FP4, bitsandbytes' `quant_map`).
    pub code: [f32; 16],
    pub blocksize: usize,
    pub numel: usize,
    /// (ceil(numel / 2),)
    pub bytes: Vec<u8>,
    pub absmax: Absmax4,
}

impl Quant4 {
    /// Checks that the parts agree with each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(QuantError::Invalid { op: "quant4", msg });
        if self.blocksize == 0 || !self.blocksize.is_multiple_of(2) {
            return bad(format!(
                "blocksize {} is not a positive even number",
                self.blocksize
            ));
        }
        if self.bytes.len() != self.numel.div_ceil(2) {
            return bad(format!(
                "{} packed bytes for {} values (expected {})",
                self.bytes.len(),
                self.numel,
                self.numel.div_ceil(2)
            ));
        }
        let blocks = self.numel.div_ceil(self.blocksize);
        if self.absmax.blocks() != blocks {
            return bad(format!(
                "{} block scales for {} blocks of {}",
                self.absmax.blocks(),
                blocks,
                self.blocksize
            ));
        }
        if let Absmax4::Nested {
            nested_absmax,
            nested_blocksize,
            ..
        } = &self.absmax
        {
            if *nested_blocksize == 0 || nested_absmax.len() != blocks.div_ceil(*nested_blocksize) {
                return bad(format!(
                    "{} nested scales for {blocks} blocks in groups of {nested_blocksize}",
                    nested_absmax.len()
                ));
            }
        }
        Ok(())
    }

    /// The backend's view of a bitsandbytes 4-bit weight (a copy of its codes and scales).
    pub fn from_state(q: &QuantState) -> Quant4 {
        let absmax = match &q.absmax {
            Absmax::Plain(a) => Absmax4::Plain(a.clone()),
            Absmax::Nested(n) => Absmax4::Nested {
                codes: n.codes.clone(),
                map: n.map.clone(),
                nested_absmax: n.nested_absmax.clone(),
                nested_blocksize: NESTED_BLOCKSIZE,
                offset: n.offset,
            },
        };
        Quant4 {
            code: *q.quant_type.code(),
            blocksize: q.blocksize,
            numel: q.numel(),
            bytes: q.bytes.clone(),
            absmax,
        }
    }

    /// Bytes held on a device (codes and scales).
    pub fn device_bytes(&self) -> usize {
        self.bytes.len() + self.absmax.bytes() + 16 * 4
    }

    /// The values in f32, into `out` (numel,). The CPU twin of `dequant4_*`.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        check_len("dequantize4", "out", out.len(), self.numel)?;
        use rayon::prelude::*;
        out.par_chunks_mut(self.blocksize)
            .enumerate()
            .for_each(|(b, block)| {
                let a = self.absmax.get(b);
                let base = b * self.blocksize; // even: blocksize is even
                for (j, v) in block.iter_mut().enumerate() {
                    let i = base + j;
                    let byte = self.bytes[i / 2];
                    let q = if i.is_multiple_of(2) {
                        byte >> 4
                    } else {
                        byte & 15
                    };
                    *v = self.code[q as usize] * a;
                }
            });
        Ok(())
    }
}

/// How to quantise a matrix to 4 bits on a device (bitsandbytes' `quantize_4bit`): the
/// codes, the block size and, for double quantisation, how the block scales are coded.
#[derive(Clone, Debug)]
pub struct Quantize4Spec {
    /// The 16 values codes index ([`crate::NF4`] or [`crate::FP4`]).
    pub code: [f32; 16],
    /// A power of two, 32..=4096.
    pub blocksize: usize,
    pub nested: Option<NestedSpec>,
}

/// Double quantisation of the block scales: `absmax - offset` in 8-bit codes of `map`
/// (256 values, ascending), blocks of `blocksize`, `offset` = [`crate::torch_mean`] of the
/// absmax computed on the host (PyTorch's summation order).
#[derive(Clone, Debug)]
pub struct NestedSpec {
    pub map: Box<[f32; 256]>,
    pub blocksize: usize,
}

impl Quantize4Spec {
    /// bitsandbytes' `quantize_4bit` with `quant_type` codes in blocks of `blocksize`, and
    /// with `double_quant` its nested scales (signed dynamic map, blocks of 256).
    pub fn new(quant_type: QuantType, blocksize: usize, double_quant: bool) -> Self {
        Quantize4Spec {
            code: *quant_type.code(),
            blocksize,
            nested: double_quant.then(|| NestedSpec {
                map: Box::new(*signed_map()),
                blocksize: NESTED_BLOCKSIZE,
            }),
        }
    }

    /// Checks the block sizes the kernels support.
    pub fn validate(&self) -> Result<()> {
        let ok = |b: usize| b.is_power_of_two() && (32..=4096).contains(&b);
        let nested = self.nested.as_ref().map_or(256, |n| n.blocksize);
        if !ok(self.blocksize) || !ok(nested) {
            return Err(QuantError::Invalid {
                op: "quantize4",
                msg: format!(
                    "block sizes {} (nested {nested}): each must be a power of two from 32 to 4096",
                    self.blocksize
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_view_dequantises_like_the_quant_state() {
        let values: Vec<f32> = (0..64 * 300 + 10)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 64) as f32 * 0.01))
            .collect();
        for double in [false, true] {
            for qt in [QuantType::Nf4, QuantType::Fp4] {
                let q = QuantState::quantize(&values, &[values.len()], "float32", 64, qt, double)
                    .expect("quantize");
                let want = q.dequantize_to_f32().expect("dequantize");
                let mut got = vec![0.0; values.len()];
                Quant4::from_state(&q)
                    .dequantize_into(&mut got)
                    .expect("dequantize");
                assert_eq!(got, want, "{qt:?} double {double}");
            }
        }
    }
}
