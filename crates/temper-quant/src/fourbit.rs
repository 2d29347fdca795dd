//! 4-bit blockwise quantisation (NF4 / FP4), bit-exact with bitsandbytes'
//! `quantize_4bit` / `dequantize_4bit`.
//!
//! The flattened tensor is cut into blocks of `blocksize` consecutive values (the last may be
//! shorter); each block stores its absmax (f32) and each value the 4-bit code nearest to
//! `value / absmax`. Two codes per byte: element 2j in the high nibble, 2j+1 in the low one;
//! an odd count pads the last low nibble with the code of 0.0.

use rayon::prelude::*;

use crate::blocks::{block_absmax, Scale};
use crate::codes::QuantType;
use crate::error::{check_blocksize, check_finite, QuantError, Result};

/// A tensor in 4-bit codes with one f32 absmax per block.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed4 {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// Elements of the original tensor.
    pub numel: usize,
    /// (ceil(numel / 2),) two codes per byte, element 2j in the high nibble.
    pub bytes: Vec<u8>,
    /// (ceil(numel / blocksize),)
    pub absmax: Vec<f32>,
}

impl Packed4 {
    /// The values as f32: `code[q] * absmax[i / blocksize]`.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        dequantize_4bit(
            &self.bytes,
            &self.absmax,
            self.numel,
            self.blocksize,
            self.quant_type,
        )
    }
}

/// Quantises `values` (the flattened tensor, already converted to f32 exactly, as
/// bitsandbytes does with `.float()` for bf16 / fp16 input) to 4-bit codes.
pub fn quantize_4bit(values: &[f32], blocksize: usize, quant_type: QuantType) -> Result<Packed4> {
    const OP: &str = "quantize_4bit";
    check_blocksize(OP, blocksize)?;
    check_finite(OP, values)?;
    let numel = values.len();
    let mut bytes = vec![0u8; numel.div_ceil(2)];
    let mut absmax = vec![0.0f32; numel.div_ceil(blocksize)];
    let table = quant_type.table();
    let pad = table.code_of(0.0);
    bytes
        .par_chunks_mut(blocksize / 2)
        .zip(absmax.par_iter_mut())
        .zip(values.par_chunks(blocksize))
        .for_each(|((out, am), block)| {
            // out (ceil(len / 2),)  block (len <= blocksize,)
            let a = block_absmax(block);
            *am = a;
            let scale = Scale::new(a, block.len() < blocksize);
            for (j, o) in out.iter_mut().enumerate() {
                let hi = table.code_of(scale.apply(block[2 * j]));
                let lo = block
                    .get(2 * j + 1)
                    .map_or(pad, |&x| table.code_of(scale.apply(x)));
                *o = (hi << 4) | lo;
            }
        });
    Ok(Packed4 {
        quant_type,
        blocksize,
        numel,
        bytes,
        absmax,
    })
}

/// Dequantises 4-bit codes into `out` (numel,) in f32: `code[q] * absmax[i / blocksize]`.
pub fn dequantize_4bit_into(
    bytes: &[u8],
    absmax: &[f32],
    blocksize: usize,
    quant_type: QuantType,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "dequantize_4bit";
    check_blocksize(OP, blocksize)?;
    let numel = out.len();
    if bytes.len() != numel.div_ceil(2) {
        return Err(QuantError::Length {
            op: OP,
            what: "the packed bytes",
            got: bytes.len(),
            expected: numel.div_ceil(2),
        });
    }
    if absmax.len() != numel.div_ceil(blocksize) {
        return Err(QuantError::Length {
            op: OP,
            what: "absmax",
            got: absmax.len(),
            expected: numel.div_ceil(blocksize),
        });
    }
    let code = quant_type.code();
    out.par_chunks_mut(blocksize)
        .zip(bytes.par_chunks(blocksize / 2))
        .zip(absmax.par_iter())
        .for_each(|((out, packed), &a)| {
            for (i, o) in out.iter_mut().enumerate() {
                let b = packed[i / 2];
                let q = if i % 2 == 0 { b >> 4 } else { b & 0x0f };
                *o = code[q as usize] * a;
            }
        });
    Ok(())
}

/// Dequantises 4-bit codes to a new f32 vector of `numel` values.
pub fn dequantize_4bit(
    bytes: &[u8],
    absmax: &[f32],
    numel: usize,
    blocksize: usize,
    quant_type: QuantType,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0; numel];
    dequantize_4bit_into(bytes, absmax, blocksize, quant_type, &mut out)?;
    Ok(out)
}
