//! LLM.int8 (Dettmers et al. 2022, arXiv:2208.07339) row-wise and column-wise absmax int8
//! quantisation with outlier columns, bit-exact with bitsandbytes 0.50's
//! `int8_vectorwise_quant` (its PyTorch reference op) and the column half of
//! `int8_double_quant`. Inputs are float16 in bitsandbytes; here they come as f32 holding
//! float16 values. The row-wise result is an [`Int8Rows`], the format bitsandbytes stores.

use crate::error::{check_finite, QuantError, Result};
use crate::int8_rows::{dequantize_rows_into, Int8Rows};
use rayon::prelude::*;

/// Column-wise int8 codes (the second half of `int8_double_quant`).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Cols {
    /// (rows, cols) round(f16(x * 127) / col_stats[c]); 0 for outliers.
    pub codes: Vec<i8>,
    /// (cols,) absmax of each column, outliers left out.
    pub col_stats: Vec<f32>,
}

fn check_matrix(op: &'static str, values: &[f32], rows: usize, cols: usize) -> Result<()> {
    check_finite(op, values)?;
    if values.len() != rows * cols {
        return Err(QuantError::Length {
            op,
            what: "the matrix",
            got: values.len(),
            expected: rows * cols,
        });
    }
    Ok(())
}

fn check_threshold(op: &'static str, threshold: f32) -> Result<()> {
    if threshold.is_finite() && threshold >= 0.0 {
        Ok(())
    } else {
        Err(QuantError::Invalid {
            op,
            msg: format!(
                "threshold {threshold}: use 0 (no outliers) or a positive value such as 6.0"
            ),
        })
    }
}

/// Row-wise quantisation of `values` (rows, cols): the codes `round(x * 127 / scales[r])` and
/// each row's absmax `scales` (bitsandbytes' `row_stats`), and the outlier columns, ascending.
/// With `threshold > 0`, values with |x| >= threshold are outliers: left out of the row
/// absmax and coded 0, and with more than one row their whole columns are coded 0
/// (bitsandbytes keeps those columns in 16 bits). With threshold 0 there are none.
pub fn int8_vectorwise_quant(
    values: &[f32],
    rows: usize,
    cols: usize,
    threshold: f32,
) -> Result<(Int8Rows, Vec<usize>)> {
    const OP: &str = "int8_vectorwise_quant";
    check_matrix(OP, values, rows, cols)?;
    check_threshold(OP, threshold)?;
    let is_outlier = |x: f32| threshold > 0.0 && x.abs() >= threshold;
    let mut outlier = vec![false; cols];
    for row in values.chunks_exact(cols) {
        for (c, &x) in row.iter().enumerate() {
            outlier[c] |= is_outlier(x);
        }
    }
    let mut codes = vec![0i8; rows * cols];
    let mut row_stats = vec![0.0f32; rows];
    // Rows are independent: quantised in parallel, each exactly as alone.
    values
        .par_chunks_exact(cols)
        .zip(codes.par_chunks_exact_mut(cols))
        .zip(row_stats.par_iter_mut())
        .for_each(|((row, out), stat)| {
            let kept = |x: f32| if is_outlier(x) { 0.0 } else { x };
            *stat = row.iter().fold(0.0f32, |m, &x| m.max(kept(x).abs()));
            // `127.0 / row_stats` in PyTorch is `row_stats.reciprocal() * 127.0`.
            let scale = (1.0 / *stat) * 127.0;
            for (o, &x) in out.iter_mut().zip(row) {
                *o = round_to_i8(kept(x) * scale);
            }
            if rows > 1 {
                for (o, _) in out.iter_mut().zip(&outlier).filter(|(_, &f)| f) {
                    *o = 0;
                }
            }
        });
    let q = Int8Rows {
        rows,
        cols,
        codes,
        scales: row_stats,
    };
    Ok((q, (0..cols).filter(|&c| outlier[c]).collect()))
}

/// Column-wise quantisation of `values` (rows, cols) as `int8_double_quant` does it:
/// outliers (|x| >= threshold > 0) are left out of the column absmax and coded 0;
/// the others are `round(f16(x * 127) / col_stats[c])`.
pub fn int8_colwise_quant(
    values: &[f32],
    rows: usize,
    cols: usize,
    threshold: f32,
) -> Result<Int8Cols> {
    const OP: &str = "int8_colwise_quant";
    check_matrix(OP, values, rows, cols)?;
    check_threshold(OP, threshold)?;
    let kept = |x: f32| {
        if threshold > 0.0 && x.abs() >= threshold {
            0.0
        } else {
            x
        }
    };
    let mut col_stats = vec![0.0f32; cols];
    for row in values.chunks_exact(cols) {
        for (s, &x) in col_stats.iter_mut().zip(row) {
            *s = s.max(kept(x).abs());
        }
    }
    let codes = values
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter().zip(&col_stats).map(|(&x, &s)| {
                // `A.mul(127.0)` stays float16, then divides as f32.
                let x127 = half::f16::from_f32(kept(x) * 127.0).to_f32();
                round_to_i8(x127 / s)
            })
        })
        .collect();
    Ok(Int8Cols { codes, col_stats })
}

/// Dequantises row-wise codes (rows, cols) to f32: `q * row_stats[r] * (1/127)`.
pub fn int8_vectorwise_dequant(codes: &[i8], row_stats: &[f32], cols: usize) -> Result<Vec<f32>> {
    const OP: &str = "int8_vectorwise_dequant";
    if cols == 0 || codes.len() != row_stats.len() * cols {
        return Err(QuantError::Length {
            op: OP,
            what: "the codes",
            got: codes.len(),
            expected: row_stats.len() * cols,
        });
    }
    let mut out = vec![0.0; codes.len()];
    dequantize_rows_into(codes, row_stats, cols, &mut out);
    Ok(out)
}

/// `torch.round` (half to even) then the cast to int8. A 0/0 (an all-zero row) gives 0.
fn round_to_i8(x: f32) -> i8 {
    if x.is_nan() {
        0
    } else {
        x.round_ties_even().clamp(-128.0, 127.0) as i8
    }
}
