//! The k-quants llama.cpp writes without an importance matrix (ggml-quants.c
//! `quantize_row_q{4,5,6}_K_ref`): 256-value super-blocks of 8 sub-blocks of 32 (Q4_K, Q5_K:
//! a 6-bit scale and a 6-bit min each) or 16 sub-blocks of 16 (Q6_K: an 8-bit signed scale
//! each), the sub-block scales themselves quantised against one f16 per super-block.
//!
//! The sub-block scales come from a small search rather than from the extreme values:
//! [`scale_min_search`] (ggml's `make_qkx2_quants`) tries 21 or 16 step counts around the
//! nominal one and keeps the (scale, min) of least weighted squared error, the weights being
//! |x| plus the sub-block's RMS; [`symmetric_scale_search`] (ggml's `make_qx_quants` with
//! weights x^2) tries 18 scales around max / -32 and keeps the least-squares best. The
//! searches, their tie-breaking and their f32 sums follow the reference step for step.

/// Values per super-block.
pub const QK_K: usize = 256;

/// Below this a sub-block counts as all zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// `x` rounded to the nearest integer, ties to even, by adding 1.5 * 2^23 and reading the
/// mantissa, as the reference does (valid for |x| < 2^22).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Affine levels 0..=nmax for `x` with per-value `weights`: returns (scale, min) such that
/// x ~ scale * l - min with min >= 0, writing the levels to `l`. First the levels of the full
/// range, then `nstep + 1` step counts nmax + rmin + rdelta * k; a candidate replaces the best
/// when its weighted squared error is smaller.
#[allow(clippy::too_many_arguments)]
fn scale_min_search(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        // Comparisons, not f32::min / max, which may pick either of -0.0 and 0.0.
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = level(iscale, x[i], min);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = level(iscale, x[i], min);
            aux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric levels -nmax..nmax-1 for `x`, weighted by x^2: the scale is the least-squares fit
/// for the levels of max / -nmax, then of 18 nearby step counts, whichever explains the most
/// of sum(w x^2). Writes level + nmax to `l`; returns the scale.
fn symmetric_scale_search(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The scale and min search of Q4_K / Q5_K over one super-block: levels 0..=nmax per 32-value
/// sub-block, then the 8 scales and 8 mins as 6-bit multiples of d and dmin, then the levels
/// again against the rounded scales. Returns (d, dmin, packed scales, levels).
fn scale_min_block(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (f32, f32, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = scale_min_search(
            xs,
            &weights,
            nmax,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_round(max_scale / 63.0);
    let dmin = f16_round(max_min / 63.0);
    for (j, &(sc, m)) in crate::dequant::scale_min_k4(&packed).iter().enumerate() {
        let ds = d * sc as f32;
        if ds == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / ds).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

fn put_f16(out: &mut Vec<u8>, x: f32) {
    out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
}

/// One Q4_K super-block (144 bytes): levels 0..=15, 21 step counts from 14 to 16.
pub fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, scales, l) = scale_min_block(x, 15, -1.0, 20);
    put_f16(out, d);
    put_f16(out, dmin);
    out.extend_from_slice(&scales);
    for c in 0..4 {
        out.extend((0..32).map(|i| l[64 * c + i] | (l[64 * c + 32 + i] << 4)));
    }
}

/// One Q5_K super-block (176 bytes): levels 0..=31, 16 step counts from 30.5 to 32.
pub fn q5_k(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, scales, l) = scale_min_block(x, 31, -0.5, 15);
    put_f16(out, d);
    put_f16(out, dmin);
    out.extend_from_slice(&scales);
    let mut qh = [0u8; 32];
    for (i, &q) in l.iter().enumerate() {
        qh[i % 32] |= (q >> 4) << (i / 32);
    }
    out.extend_from_slice(&qh);
    for c in 0..4 {
        out.extend((0..32).map(|i| (l[64 * c + i] & 0x0F) | ((l[64 * c + 32 + i] & 0x0F) << 4)));
    }
}

/// One Q6_K super-block (210 bytes): levels -32..=31 per 16-value sub-block, the 16 scales as
/// i8 multiples of d = -max_scale / 128 (the scale of largest magnitude maps to -128, clamped
/// to 127 on the other side).
pub fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = symmetric_scale_search(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = *s;
        }
    }
    if max_abs < GROUP_MAX_EPS {
        out.extend(std::iter::repeat_n(0u8, 210));
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_round(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (q, &s) in sc.iter_mut().zip(&scales) {
        *q = nearest_int(iscale * s).min(127) as i8;
    }
    for (j, &s) in sc.iter().enumerate() {
        let ds = d * s as f32;
        if ds == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / ds).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        for i in 0..32 {
            let q = |k: usize| l[128 * h + 32 * k + i];
            ql[64 * h + i] = (q(0) & 0x0F) | ((q(2) & 0x0F) << 4);
            ql[64 * h + 32 + i] = (q(1) & 0x0F) | ((q(3) & 0x0F) << 4);
            qh[32 * h + i] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    put_f16(out, d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.49), 31);
    }
}
