//! Helpers shared by the CPU op tests: seeded random data and a finite-difference checker.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Central-difference step.
pub const H: f64 = 1e-6;
/// Relative tolerance between analytic and numeric gradients.
pub const RTOL: f64 = 1e-6;
/// Gradients smaller than this are compared absolutely (a 1e-16 rounding of an output,
/// divided by 2h, is about 1e-10, so tiny gradients cannot be checked relatively).
pub const FLOOR: f64 = 1e-3;

/// Compares `analytic` = dL/dx for L = sum(r * forward(x)) with central differences around
/// `x`, and panics naming the worst element when the relative error exceeds RTOL.
///
/// The difference L(x + h) - L(x - h) is taken output by output before weighting by r, so
/// the outputs that x_i does not touch cancel exactly instead of adding rounding noise.
pub fn grad_check(
    name: &str,
    x: &[f64],
    analytic: &[f64],
    r: &[f64],
    forward: impl Fn(&[f64]) -> Vec<f64>,
) {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xp = x.to_vec();
    let mut worst = (0usize, 0.0f64, 0.0f64, 0.0f64); // index, err, analytic, numeric
    for i in 0..x.len() {
        xp[i] = x[i] + H;
        let plus = forward(&xp);
        xp[i] = x[i] - H;
        let minus = forward(&xp);
        xp[i] = x[i];
        assert_eq!(plus.len(), r.len(), "{name}: output length");
        let numeric = plus
            .iter()
            .zip(&minus)
            .zip(r)
            .map(|((p, m), r)| r * (p - m))
            .sum::<f64>()
            / (2.0 * H);
        let a = analytic[i];
        let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(FLOOR);
        assert!(
            err.is_finite(),
            "{name}[{i}]: analytic {a}, numeric {numeric}"
        );
        if err > worst.1 {
            worst = (i, err, a, numeric);
        }
    }
    let (i, err, a, numeric) = worst;
    println!("{name}: {} elements, worst rel err {err:.2e} at [{i}] (analytic {a:.9e}, numeric {numeric:.9e})", x.len());
    assert!(
        err <= RTOL,
        "{name}: gradient mismatch, worst at [{i}]: analytic {a:.12e} vs numeric {numeric:.12e} (rel err {err:.3e} > {RTOL:.0e})"
    );
}

/// max |a - b| / max(|b|, floor) over all elements, with the index where it occurs.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> (usize, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| (i, (x - y).abs() / y.abs().max(floor)))
        .fold(
            (0, 0.0),
            |w, e| if e.1 > w.1 || e.1.is_nan() { e } else { w },
        )
}

/// Asserts a ~= b elementwise within `tol` relative (absolute below `floor`).
#[track_caller]
pub fn assert_close(name: &str, a: &[f64], b: &[f64], tol: f64, floor: f64) {
    let (i, err) = max_rel_err(a, b, floor);
    assert!(
        err <= tol,
        "{name}: worst mismatch at [{i}]: got {} expected {} (rel err {err:.3e} > {tol:.0e})",
        a[i],
        b[i]
    );
}

pub fn f32_to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// cu_seqlens (S+1) for the given sequence lengths.
pub fn cu_seqlens(lens: &[usize]) -> Vec<u32> {
    let mut cu = vec![0u32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as u32);
    }
    cu
}
