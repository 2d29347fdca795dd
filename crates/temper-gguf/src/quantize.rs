//! f32 values to ggml's quantised block formats, as llama.cpp's `quantize` writes them when it
//! has no importance matrix (ggml-quants.c `quantize_row_*_ref`): the same choice of scales
//! and the same rounding, so that the bytes are the ones llama.cpp writes. Every format here is
//! the inverse of its reader in [`crate::dequant`], whose comments give the block layouts.
//!
//! The 32-value formats (Q8_0, Q4_0, Q5_0, Q5_1) take one scale per block from its extreme
//! value; the k-quants (Q4_K, Q5_K, Q6_K, in kquant.rs) search for scales per 16- or
//! 32-value sub-block. Arithmetic is in f32 in the reference's order: a sum accumulated in
//! another order, or fused into an FMA, can move a value across a rounding boundary.

use half::f16;

use crate::dequant::GgmlType;

/// Values per block of the 32-value formats.
const QK: usize = 32;

/// Values per parallel piece of [`quantize_par`]: whole blocks of every type.
const PIECE: usize = 1 << 16;

/// [`quantize`] over pieces of `values` on rayon's threads; the same bytes, since every block
/// is quantised on its own.
pub fn quantize_par(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    use rayon::prelude::*;
    if values.len() <= PIECE {
        return quantize(ty, values, out);
    }
    let pieces: Vec<Result<Vec<u8>, String>> = values
        .par_chunks(PIECE)
        .map(|p| {
            let mut b = Vec::new();
            quantize(ty, p, &mut b).map(|()| b)
        })
        .collect();
    for p in pieces {
        out.extend_from_slice(&p?);
    }
    Ok(())
}

/// Appends `values` as ggml type `ty` to `out`. F32, F16 and BF16 are written value by value;
/// quantised types need a whole number of blocks.
pub fn quantize(ty: GgmlType, values: &[f32], out: &mut Vec<u8>) -> Result<(), String> {
    let block = ty.block().map_or(1, |(len, _)| len);
    if !values.len().is_multiple_of(block) {
        return Err(format!(
            "{} values are not a whole number of {block}-value {ty} blocks",
            values.len()
        ));
    }
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|&x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
        GgmlType::BF16 => values
            .iter()
            .for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
        GgmlType::Q8_0 => values.chunks_exact(QK).for_each(|b| q8_0(b, out)),
        GgmlType::Q4_0 => values.chunks_exact(QK).for_each(|b| q4_0(b, out)),
        GgmlType::Q5_0 => values.chunks_exact(QK).for_each(|b| q5_0(b, out)),
        GgmlType::Q5_1 => values.chunks_exact(QK).for_each(|b| q5_1(b, out)),
        GgmlType::Q4_K => values
            .chunks_exact(crate::kquant::QK_K)
            .for_each(|b| crate::kquant::q4_k(b, out)),
        GgmlType::Q5_K => values
            .chunks_exact(crate::kquant::QK_K)
            .for_each(|b| crate::kquant::q5_k(b, out)),
        GgmlType::Q6_K => values
            .chunks_exact(crate::kquant::QK_K)
            .for_each(|b| crate::kquant::q6_k(b, out)),
        other => return Err(format!("temper does not write {other} tensors")),
    }
    Ok(())
}

/// The value of largest magnitude, with its sign (the first such, as the reference scans).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn put_f16(out: &mut Vec<u8>, x: f32) {
    out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
}

/// Q8_0: d = max|x| / 127; q = x / d rounded half away from zero.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Q4_0: d = -max / 8 for the value of largest magnitude `max`, so that value maps to q = 0
/// (-8 after the offset) and the other sign gets the 7 steps it can reach; q = x / d + 8,
/// truncated after adding one half, at most 15.
fn q4_0(x: &[f32], out: &mut Vec<u8>) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    out.extend((0..QK / 2).map(|j| q(x[j]) | (q(x[j + QK / 2]) << 4)));
}

/// The bit-packing shared by Q5_0 and Q5_1: low nibbles as Q4_0, fifth bits in a u32.
fn put_5bit(q: &[u8; QK], out: &mut Vec<u8>) {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= u32::from(v >> 4 & 1) << j;
    }
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..QK / 2).map(|j| (q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4)));
}

/// Q5_0: as Q4_0 with 16 steps each side: d = -max / 16, q = x / d + 16, at most 31.
fn q5_0(x: &[f32], out: &mut Vec<u8>) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 16.5) as i8).min(31) as u8;
    }
    put_5bit(&q, out);
}

/// Q5_1: the block's range in 31 steps: d = (max - min) / 31, m = min, q = (x - min) / d
/// rounded half up.
fn q5_1(x: &[f32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    put_f16(out, min);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v - min) * id + 0.5) as u8;
    }
    put_5bit(&q, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequant::dequantize;

    #[test]
    fn q4_0_by_hand() {
        // max = -4 (largest magnitude, negative): d = 0.5, so x = -4 -> q 0, x = 3.5 -> q 15.
        let mut x = [0f32; 32];
        x[0] = -4.0;
        x[1] = 3.5;
        x[2] = 1.0;
        x[16] = 0.25; // exactly half a step: 0.5 + 8.5 truncates to 9
        let mut b = Vec::new();
        quantize(GgmlType::Q4_0, &x, &mut b).expect("quantize");
        assert_eq!(&b[0..2], &f16::from_f32(0.5).to_le_bytes());
        assert_eq!(b[2], 9 << 4); // value 0: level 0 (low nibble); value 16: level 9 (high)
        assert_eq!(b[3] & 0x0F, 15);
        assert_eq!(b[4] & 0x0F, 10);
        let y = dequantize(GgmlType::Q4_0, &b, 32).expect("dequantize");
        assert_eq!(&y[..3], &[-4.0, 3.5, 1.0]);
        assert_eq!(y[16], 0.5);
    }

    #[test]
    fn all_zero_blocks_stay_zero() {
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let x = vec![0f32; 256];
            let mut b = Vec::new();
            quantize(ty, &x, &mut b).expect("quantize");
            assert_eq!(dequantize(ty, &b, 256).expect("dequantize"), x, "{ty}");
        }
    }

    #[test]
    fn parallel_pieces_give_the_same_bytes() {
        // Three pieces and a part, of values that are not all alike.
        let x: Vec<f32> = (0..3 * PIECE + 512)
            .map(|i| ((i * 7919 % 1009) as f32 - 500.0) * 1e-3)
            .collect();
        for ty in [GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::F16] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            quantize(ty, &x, &mut a).expect("quantize");
            quantize_par(ty, &x, &mut b).expect("quantize_par");
            assert!(a == b, "{ty}");
        }
    }

    #[test]
    fn partial_blocks_are_refused() {
        let mut b = Vec::new();
        assert!(quantize(GgmlType::Q4_K, &[0.0; 32], &mut b).is_err());
        assert!(quantize(GgmlType::Q5_0, &[0.0; 33], &mut b).is_err());
        assert!(quantize(GgmlType::Q2_K, &[0.0; 256], &mut b).is_err());
    }
}
