//! Small elementwise ops: axpy, scale, bias, sum of squares, dropout.
use rayon::prelude::*;

use crate::cpu::lit;
use crate::Float;

/// Elements per rayon task: below this one thread does the whole array.
const PAR_CHUNK: usize = 1 << 15;

/// y += alpha * x
pub fn axpy<T: Float>(
    y: &mut [T], // (n)
    alpha: f32,
    x: &[T], // (n)
) {
    assert_eq!(x.len(), y.len(), "axpy: x and y differ in length");
    let alpha: T = lit(alpha as f64);
    let kernel = |y: &mut [T], x: &[T]| y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
    if y.len() <= PAR_CHUNK {
        kernel(y, x);
    } else {
        y.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(y, x)| kernel(y, x));
    }
}

/// y *= alpha
pub fn scale<T: Float>(
    y: &mut [T], // (n)
    alpha: f32,
) {
    let alpha: T = lit(alpha as f64);
    let kernel = |y: &mut [T]| y.iter_mut().for_each(|y| *y *= alpha);
    if y.len() <= PAR_CHUNK {
        kernel(y);
    } else {
        y.par_chunks_mut(PAR_CHUNK).for_each(kernel);
    }
}

/// y (rows, c) += bias (c); c = bias.len(). Panics unless y.len() is a multiple of c.
pub fn add_bias<T: Float>(
    y: &mut [T], // (rows, c)
    bias: &[T],  // (c)
) {
    let c = bias.len();
    if y.is_empty() {
        return;
    }
    assert!(
        c > 0 && y.len().is_multiple_of(c),
        "add_bias: y ({}) is not a whole number of rows of {c}",
        y.len()
    );
    let kernel = |row: &mut [T]| row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
    if y.len() <= PAR_CHUNK {
        y.chunks_mut(c).for_each(kernel);
    } else {
        y.par_chunks_mut(c).for_each(kernel);
    }
}

/// sum of x^2 in f64. Partial sums over fixed chunks are added in order, so the result does
/// not depend on how rayon schedules the work.
pub fn sum_squares<T: Float>(x: &[T], // (n)
) -> f64 {
    let kernel = |x: &[T]| {
        x.iter()
            .map(|&v| {
                let v = v.to_f64c();
                v * v
            })
            .sum::<f64>()
    };
    if x.len() <= PAR_CHUNK {
        return kernel(x);
    }
    let partial: Vec<f64> = x.par_chunks(PAR_CHUNK).map(kernel).collect();
    partial.iter().sum()
}

/// The dropout hash: splitmix64 of `seed ^ index * golden`. Any device implementing
/// [`dropout`] must reproduce exactly this (and [`dropout_uniform`]).
#[inline]
pub fn dropout_hash(seed: u64, index: u64) -> u64 {
    let mut z =
        (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) for element `index`: the top 24 bits of [`dropout_hash`] times
/// 2^-24, exact in f32 so every device compares the same number with p.
#[inline]
pub fn dropout_uniform(seed: u64, index: u64) -> f32 {
    (dropout_hash(seed, index) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// Whether element `index` survives dropout with probability `p` of being dropped.
#[inline]
pub fn dropout_keep(seed: u64, index: u64, p: f32) -> bool {
    dropout_uniform(seed, index) >= p
}

/// y = x * keep(seed, i) / (1 - p); keep from a counter-based hash so every device agrees.
/// p <= 0 copies x; p >= 1 zeroes y. The mask depends only on (seed, i), never on threading.
pub fn dropout<T: Float>(
    y: &mut [T], // (n)
    x: &[T],     // (n)
    p: f32,
    seed: u64,
) {
    assert_eq!(x.len(), y.len(), "dropout: x and y differ in length");
    if p <= 0.0 {
        y.copy_from_slice(x);
        return;
    }
    if p >= 1.0 {
        y.fill(T::zero());
        return;
    }
    let inv_keep = T::one() / (T::one() - lit::<T>(p as f64));
    let kernel = |offset: usize, y: &mut [T], x: &[T]| {
        for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = if dropout_keep(seed, (offset + i) as u64, p) {
                x * inv_keep
            } else {
                T::zero()
            };
        }
    };
    if y.len() <= PAR_CHUNK {
        kernel(0, y, x);
    } else {
        y.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .enumerate()
            .for_each(|(chunk, (y, x))| kernel(chunk * PAR_CHUNK, y, x));
    }
}
