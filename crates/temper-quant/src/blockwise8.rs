//! 8-bit blockwise quantisation with a 256-entry code (bitsandbytes' `quantize_blockwise` /
//! `dequantize_blockwise`), as bitsandbytes' 8-bit optimizers store their states (signed
//! dynamic map for the first moment, unsigned for the second, blocks of 256) and as double
//! quantisation stores the 4-bit absmax.

use rayon::prelude::*;

use crate::blocks::{block_absmax, Scale};
use crate::codes::Bucketizer;
use crate::error::{check_blocksize, check_finite, QuantError, Result};

/// A tensor in 8-bit codes with one f32 absmax per block.
#[derive(Clone, Debug, PartialEq)]
pub struct Blockwise8 {
    pub blocksize: usize,
    /// (numel,) index into the code table.
    pub codes: Vec<u8>,
    /// (ceil(numel / blocksize),)
    pub absmax: Vec<f32>,
}

/// Quantises `values` with `code` (256 sorted values, e.g. [`crate::dynamic_map`]): each value
/// scaled by its block's absmax goes to the nearest code (a tie to the lower one).
pub fn quantize_blockwise(
    values: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> Result<Blockwise8> {
    const OP: &str = "quantize_blockwise";
    check_blocksize(OP, blocksize)?;
    check_finite(OP, values)?;
    if !code.windows(2).all(|w| w[0] <= w[1]) {
        return Err(QuantError::Invalid {
            op: OP,
            msg: "the code must be sorted ascending, as dynamic_map's is".into(),
        });
    }
    let table = Bucketizer::new(code);
    let mut codes = vec![0u8; values.len()];
    let mut absmax = vec![0.0f32; values.len().div_ceil(blocksize)];
    codes
        .par_chunks_mut(blocksize)
        .zip(absmax.par_iter_mut())
        .zip(values.par_chunks(blocksize))
        .for_each(|((out, am), block)| {
            let a = block_absmax(block);
            *am = a;
            let scale = Scale::new(a, block.len() < blocksize);
            for (o, &x) in out.iter_mut().zip(block) {
                *o = table.code_of(scale.apply(x));
            }
        });
    Ok(Blockwise8 {
        blocksize,
        codes,
        absmax,
    })
}

/// Dequantises into `out` (codes.len(),): `code[q] * absmax[i / blocksize]` in f32.
pub fn dequantize_blockwise_into(
    codes: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "dequantize_blockwise";
    check_blocksize(OP, blocksize)?;
    if out.len() != codes.len() {
        return Err(QuantError::Length {
            op: OP,
            what: "the output",
            got: out.len(),
            expected: codes.len(),
        });
    }
    if absmax.len() != codes.len().div_ceil(blocksize) {
        return Err(QuantError::Length {
            op: OP,
            what: "absmax",
            got: absmax.len(),
            expected: codes.len().div_ceil(blocksize),
        });
    }
    out.par_chunks_mut(blocksize)
        .zip(codes.par_chunks(blocksize))
        .zip(absmax.par_iter())
        .for_each(|((out, q), &a)| {
            for (o, &q) in out.iter_mut().zip(q) {
                *o = code[q as usize] * a;
            }
        });
    Ok(())
}

/// Dequantises to a new f32 vector.
pub fn dequantize_blockwise(
    codes: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0; codes.len()];
    dequantize_blockwise_into(codes, absmax, code, blocksize, &mut out)?;
    Ok(out)
}
