//! 8-bit frozen weights as bitsandbytes' LLM.int8 stores them (`Int8Params`: `weight` int8
//! codes (out, in) and `SCB` f32 row scales (out,)) and temper-core's backends hold them, and
//! the CPU twin of the CUDA dequantisation kernel (`dequant_int8_*` in
//! `crates/temper-core/kernels/dequant.cu`). Quantising is [`crate::int8_vectorwise_quant`].

use rayon::prelude::*;

use crate::error::{check_len, QuantError, Result};

/// bitsandbytes' `int8_vectorwise_dequant` constant `7.874015718698502e-3` (1/127 as a Python
/// float), rounded to f32 when it multiplies the f32 tensor.
pub const INV_127: f32 = 7.874_015_718_698_502e-3_f64 as f32;

/// A (rows, cols) matrix in row-wise absmax int8: value = code * scale[row] / 127.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    pub rows: usize,
    pub cols: usize,
    /// (rows, cols) row-major.
    pub codes: Vec<i8>,
    /// (rows,) each row's absmax (bitsandbytes' `SCB`).
    pub scales: Vec<f32>,
}

impl Int8Rows {
    /// Checks that the parts agree with each other.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(QuantError::Invalid { op: "int8", msg });
        match self.rows.checked_mul(self.cols) {
            Some(n) if n == self.codes.len() => {}
            _ => {
                return bad(format!(
                    "{} codes for a ({}, {}) matrix",
                    self.codes.len(),
                    self.rows,
                    self.cols
                ))
            }
        }
        if self.scales.len() != self.rows {
            return bad(format!(
                "{} row scales for {} rows",
                self.scales.len(),
                self.rows
            ));
        }
        Ok(())
    }

    pub fn numel(&self) -> usize {
        self.codes.len()
    }

    /// Bytes held on a device: a byte per value and an f32 per row.
    pub fn device_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    /// The values in f32, into `out` (rows * cols). The CPU twin of `dequant_int8_*`.
    ///
    /// Rounded as bitsandbytes' `int8_vectorwise_dequant` (and transformers'
    /// `dequantize_bnb_weight`) compute `A * stats.view(-1, 1) * 7.874015718698502e-3`: the
    /// code times the row scale, rounded to f32, then times [`INV_127`]. (bitsandbytes' CPU
    /// training path `MatMul8bitFp` multiplies the code by `SCB * (1/127)` instead, which can
    /// differ in the last bit of f32.)
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        check_len("dequantize_int8", "out", out.len(), self.numel())?;
        dequantize_rows_into(&self.codes, &self.scales, self.cols, out);
        Ok(())
    }
}

/// `out = codes * scales[row] * INV_127` for codes (rows, cols), rows in parallel; `out` and
/// `codes` have the same length, `scales` one entry per row.
pub(crate) fn dequantize_rows_into(codes: &[i8], scales: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    out.par_chunks_mut(cols)
        .zip(codes.par_chunks(cols))
        .zip(scales.par_iter())
        .for_each(|((row, codes), &s)| {
            for (v, &q) in row.iter_mut().zip(codes) {
                *v = q as f32 * s * INV_127;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantises_code_times_scale_over_127() {
        let q = Int8Rows {
            rows: 2,
            cols: 3,
            codes: vec![127, -128, 0, 1, -1, 64],
            scales: vec![2.0, 0.5],
        };
        q.validate().expect("valid");
        let mut out = vec![0.0; 6];
        q.dequantize_into(&mut out).expect("dequantize");
        let want: Vec<f64> = vec![
            2.0,
            -256.0 / 127.0,
            0.0,
            0.5 / 127.0,
            -0.5 / 127.0,
            32.0 / 127.0,
        ];
        for (g, w) in out.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() <= 1e-6 * w.abs(),
                "{out:?} vs {want:?}"
            );
        }
        assert!(q.dequantize_into(&mut out[..5]).is_err());
    }

    #[test]
    fn validate_names_mismatched_parts() {
        let ok = Int8Rows {
            rows: 3,
            cols: 5,
            codes: vec![0; 15],
            scales: vec![1.0; 3],
        };
        ok.validate().expect("valid");
        let mut bad = ok.clone();
        bad.codes.pop();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.scales.push(1.0);
        assert!(bad.validate().is_err());
        let bad = Int8Rows {
            rows: usize::MAX,
            cols: 2,
            ..ok
        };
        assert!(bad.validate().is_err());
    }
}
