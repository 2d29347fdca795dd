//! Double quantisation of the 4-bit absmax (QLoRA): the absmax minus their mean, in 8-bit
//! codes of bitsandbytes' signed dynamic map, blocks of 256, one f32 `nested_absmax` per
//! block. Recovered as `map[q] * nested_absmax[i / 256] + offset` in f32 (a multiply, then an
//! add: no fused multiply-add).

use std::sync::LazyLock;

use crate::blockwise8::{dequantize_blockwise_into, quantize_blockwise};
use crate::dynamic_map::dynamic_map;
use crate::error::{check_finite, Result};
use crate::torch_sum::torch_mean;

/// Block size of the nested quantisation (bitsandbytes' `quantize_4bit` hard-codes 256).
pub const NESTED_BLOCKSIZE: usize = 256;

static SIGNED_MAP: LazyLock<[f32; 256]> = LazyLock::new(|| dynamic_map(true));
static UNSIGNED_MAP: LazyLock<[f32; 256]> = LazyLock::new(|| dynamic_map(false));

/// `create_dynamic_map(signed=True)`, computed once.
pub fn signed_map() -> &'static [f32; 256] {
    &SIGNED_MAP
}

/// `create_dynamic_map(signed=False)`, computed once.
pub fn unsigned_map() -> &'static [f32; 256] {
    &UNSIGNED_MAP
}

/// Double-quantised absmax.
#[derive(Clone, Debug, PartialEq)]
pub struct Nested {
    /// (blocks,) 8-bit codes of `absmax - offset`.
    pub codes: Vec<u8>,
    /// (ceil(blocks / 256),)
    pub nested_absmax: Vec<f32>,
    /// The mean of the absmax, as PyTorch's CPU `mean` computes it.
    pub offset: f32,
    /// The 256 values the codes index: [`signed_map`] when made here, the file's
    /// `nested_quant_map` when read (a PyTorch without FMA kernels makes a map that differs
    /// in the last bit of some entries).
    pub map: Box<[f32; 256]>,
}

impl Nested {
    /// The absmax back in f32 (what bitsandbytes dequantises with).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.codes.len()];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    /// The absmax back in f32, into `out` (blocks,).
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        dequantize_blockwise_into(
            &self.codes,
            &self.nested_absmax,
            &self.map,
            NESTED_BLOCKSIZE,
            out,
        )?;
        for a in out.iter_mut() {
            *a += self.offset;
        }
        Ok(())
    }
}

/// Double-quantises `absmax` with offset `mean(absmax)`.
pub fn double_quant(absmax: &[f32]) -> Result<Nested> {
    check_finite("double_quant", absmax)?;
    double_quant_with_offset(absmax, torch_mean(absmax))
}

/// Double-quantises `absmax` around a given offset (e.g. one computed by bitsandbytes on a
/// GPU, whose summation order differs from the CPU's).
pub fn double_quant_with_offset(absmax: &[f32], offset: f32) -> Result<Nested> {
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let q = quantize_blockwise(&centered, signed_map(), NESTED_BLOCKSIZE)?;
    Ok(Nested {
        codes: q.codes,
        nested_absmax: q.absmax,
        offset,
        map: Box::new(*signed_map()),
    })
}
