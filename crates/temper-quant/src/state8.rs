//! bitsandbytes' 8-bit optimizer state (`AdamW8bit`, `paged_adamw_8bit`): one moment stored
//! as one code per value into a 256-entry map (the signed dynamic map for the first moment,
//! the unsigned one for the second, [`crate::signed_map`] / [`crate::unsigned_map`]) and one
//! f32 absmax per block of 256 values, and the block (de)quantisation a step does. The step
//! itself is a backend op (temper-core's `Backend::adamw8bit`, CPU twin in
//! `cpu/adamw8bit.rs`).
//!
//! Requantisation is bitsandbytes' PyTorch `quantize_blockwise`: full blocks multiply by the
//! f32 reciprocal of absmax, the partial last block divides by it, absmax is clamped below at
//! 1e-38, and a value exactly halfway between two codes takes the lower one.

use crate::blocks::{block_absmax, Scale};
use crate::error::{check_len, QuantError, Result};

/// Values per quantisation block (bitsandbytes' optimizers hard-code 256).
pub const BLOCKSIZE: usize = 256;

/// One moment in 8 bits: `codes[i]` indexes `map`, block `b` of 256 values is scaled by
/// `absmax[b]`. The decision thresholds of `map` are kept beside it.
#[derive(Clone, Debug, PartialEq)]
pub struct State8 {
    /// (n,)
    codes: Vec<u8>,
    /// (ceil(n / 256),)
    absmax: Vec<f32>,
    map: [f32; 256],
    /// (255,) midpoints of neighbouring map entries.
    bounds: [f32; 255],
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

    /// The parts a step updates in place: the codes and absmax, and the map with its
    /// thresholds.
    pub fn parts_mut(&mut self) -> (&mut [u8], &mut [f32], &[f32; 256], &[f32; 255]) {
        (&mut self.codes, &mut self.absmax, &self.map, &self.bounds)
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
        return Err(QuantError::Invalid {
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
    let absmax = block_absmax(x);
    let scale = Scale::new(absmax, partial);
    for (o, &v) in q.iter_mut().zip(x) {
        *o = nearest_code(bounds, scale.apply(v));
    }
    absmax
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
