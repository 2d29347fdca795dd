//! Finite-difference gradient checks in f64 for every op with a backward: each backward is
//! fed R = dL/d(out) for a random linear functional L = sum(R * out), and its result is
//! compared element by element with central differences of L.
mod common;

use common::*;
use rand_chacha::ChaCha8Rng;
use temper_core::cpu::{
    attention, cross_entropy, elementwise, geglu, matmul::matmul, rmsnorm, rope, swiglu,
};
use temper_core::{AttnShape, Gemm};

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = rng(1);
    let (n, c, eps) = (5, 13, 1e-5);
    let x = uniform(&mut rng, n * c, 1.0);
    let w = uniform(&mut rng, c, 1.5);
    let r = uniform(&mut rng, n * c, 1.0);
    let forward = |x: &[f64]| {
        let (mut y, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        rmsnorm::rmsnorm_forward(&mut y, &mut rstd, x, &w, c, eps).unwrap();
        (y, rstd)
    };
    let (_, rstd) = forward(&x);
    let mut dx = vec![f64::NAN; n * c];
    rmsnorm::rmsnorm_backward(&mut dx, &r, &x, &w, &rstd, c).unwrap();
    grad_check("rmsnorm dx", &x, &dx, &r, |x| forward(x).0);
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = rng(2);
    let (n, h, d, positions) = (7, 3, 10, 9);
    // Arbitrary angles: the backward must be the transpose whatever the table holds.
    let angles = uniform(&mut rng, positions * d / 2, 3.0);
    let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
    let pos: Vec<u32> = vec![0, 8, 3, 3, 5, 1, 7];
    let x = uniform(&mut rng, n * h * d, 1.0);
    let r = uniform(&mut rng, n * h * d, 1.0);
    let mut dx = r.clone();
    rope::rope_backward(&mut dx, &pos, &cos, &sin, h, d).unwrap();
    grad_check("rope dx", &x, &dx, &r, |x| {
        let mut y = x.to_vec();
        rope::rope_forward(&mut y, &pos, &cos, &sin, h, d).unwrap();
        y
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = rng(3);
    let n = 300;
    let gate = uniform(&mut rng, n, 6.0);
    let up = uniform(&mut rng, n, 2.0);
    let r = uniform(&mut rng, n, 1.0);
    let forward = |g: &[f64], u: &[f64]| {
        let mut h = vec![0.0; n];
        swiglu::swiglu_forward(&mut h, g, u);
        h
    };
    let (mut dgate, mut dup) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    swiglu::swiglu_backward(&mut dgate, &mut dup, &r, &gate, &up);
    grad_check("swiglu dgate", &gate, &dgate, &r, |g| forward(g, &up));
    grad_check("swiglu dup", &up, &dup, &r, |u| forward(&gate, u));
}

#[test]
fn dropout_backward_is_the_same_mask() {
    let mut rng = rng(4);
    let (n, p, seed) = (1000, 0.3, 42);
    let x = uniform(&mut rng, n, 1.0);
    let r = uniform(&mut rng, n, 1.0);
    let mut dx = vec![f64::NAN; n];
    elementwise::dropout(&mut dx, &r, p, seed);
    assert!(
        dx.contains(&0.0) && dx.iter().any(|&v| v != 0.0),
        "the mask keeps some and drops some"
    );
    grad_check("dropout dx", &x, &dx, &r, |x| {
        let mut y = vec![0.0; n];
        elementwise::dropout(&mut y, x, p, seed);
        y
    });
}

/// The gradients of C = alpha op(A) op(B), computed with matmul itself through the transpose
/// flags, as model code does in its backward: returns (dA, dB) in A's and B's stored layouts.
fn matmul_grads(dc: &[f64], a: &[f64], b: &[f64], g: Gemm) -> (Vec<f64>, Vec<f64>) {
    let Gemm {
        m,
        n,
        k,
        ta,
        tb,
        alpha,
        ..
    } = g;
    let mut da = vec![f64::NAN; m * k];
    let mut db = vec![f64::NAN; k * n];
    let gemm = |m, n, k, ta, tb| Gemm {
        m,
        n,
        k,
        ta,
        tb,
        alpha,
        beta: 0.0,
    };
    if ta {
        // dA stored (k, m) = op(B) dC^T
        matmul(&mut da, b, dc, gemm(k, m, n, tb, true));
    } else {
        // dA (m, k) = dC op(B)^T
        matmul(&mut da, dc, b, gemm(m, k, n, false, !tb));
    }
    if tb {
        // dB stored (n, k) = dC^T op(A)
        matmul(&mut db, dc, a, gemm(n, k, m, true, ta));
    } else {
        // dB (k, n) = op(A)^T dC
        matmul(&mut db, a, dc, gemm(k, n, m, !ta, false));
    }
    (da, db)
}

#[test]
fn matmul_gradients_through_transpose_flags() {
    let mut rng = rng(5);
    let (m, n, k) = (5, 7, 3);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let g = Gemm {
            m,
            n,
            k,
            ta,
            tb,
            alpha: 0.7,
            beta: 0.0,
        };
        let a = uniform(&mut rng, m * k, 1.0);
        let b = uniform(&mut rng, k * n, 1.0);
        let r = uniform(&mut rng, m * n, 1.0);
        let forward = |a: &[f64], b: &[f64]| {
            let mut c = vec![f64::NAN; m * n];
            matmul(&mut c, a, b, g);
            c
        };
        let (da, db) = matmul_grads(&r, &a, &b, g);
        grad_check(&format!("matmul ta={ta} tb={tb} dA"), &a, &da, &r, |a| {
            forward(a, &b)
        });
        grad_check(&format!("matmul ta={ta} tb={tb} dB"), &b, &db, &r, |b| {
            forward(&a, b)
        });
    }
}

/// The attention's gradients (within `window`, scores soft-capped by `cap`) over sequences of
/// `lens` against finite differences: q and k drawn in (-qk, qk), v and the output weights in
/// (-1, 1); outputs start as NaN so that an unwritten element fails.
#[allow(clippy::too_many_arguments)]
fn check_attention(
    name: &str,
    rng: &mut ChaCha8Rng,
    lens: &[usize],
    (hq, hkv, d): (usize, usize, usize),
    qk: f64,
    window: Option<usize>,
    cap: Option<f32>,
) {
    let cu = cu_seqlens(lens);
    let n = *cu.last().unwrap() as usize;
    let q = uniform(rng, n * hq * d, qk);
    let k = uniform(rng, n * hkv * d, qk);
    let v = uniform(rng, n * hkv * d, 1.0);
    let r = uniform(rng, n * hq * d, 1.0);
    let shape = AttnShape::new(hq, hkv, d);
    let forward = |q: &[f64], k: &[f64], v: &[f64]| {
        let (mut out, mut lse) = (vec![f64::NAN; n * hq * d], vec![f64::NAN; n * hq]);
        attention::attention_forward_capped(&mut out, &mut lse, q, k, v, &cu, shape, window, cap)
            .unwrap();
        (out, lse)
    };
    let (out, lse) = forward(&q, &k, &v);
    let mut dq = vec![f64::NAN; q.len()];
    let mut dk = vec![f64::NAN; k.len()];
    let mut dv = vec![f64::NAN; v.len()];
    attention::attention_backward_capped(
        &mut dq, &mut dk, &mut dv, &r, &q, &k, &v, &out, &lse, &cu, shape, window, cap,
    )
    .unwrap();
    grad_check(&format!("{name} dq"), &q, &dq, &r, |q| forward(q, &k, &v).0);
    grad_check(&format!("{name} dk"), &k, &dk, &r, |k| forward(&q, k, &v).0);
    grad_check(&format!("{name} dv"), &v, &dv, &r, |v| forward(&q, &k, v).0);
}

#[test]
fn attention_backward_matches_finite_differences() {
    // GQA 6 query heads over 2 kv heads; sequences of length 1 and lengths not multiples of
    // 8; d = 12 exercises both the 8-wide and the remainder part of the dot products.
    let mut rng = rng(6);
    check_attention(
        "attention",
        &mut rng,
        &[1, 5, 11, 1, 3],
        (6, 2, 12),
        1.0,
        None,
        None,
    );
}

#[test]
fn attention_backward_without_gqa_and_odd_head_dim() {
    let mut rng = rng(7);
    check_attention(
        "attention(mha)",
        &mut rng,
        &[9, 1, 2],
        (2, 2, 5),
        1.5,
        None,
        None,
    );
}

#[test]
fn attention_backward_long_sequence() {
    // 70 and 130 tokens span two and three 64-token tiles.
    let mut rng = rng(9);
    check_attention(
        "attention(long)",
        &mut rng,
        &[70, 2, 130],
        (2, 1, 3),
        1.5,
        None,
        None,
    );
}

#[test]
fn sliding_window_attention_backward_matches_finite_differences() {
    // Window 3 inside short sequences; window 66 on 70- and 130-token sequences, so that
    // query and key tiles of 64 are cut by the window on both sides.
    let mut rng = rng(10);
    for (lens, window, shape) in [
        (vec![9usize, 1, 20], 3usize, (4usize, 2usize, 6usize)),
        (vec![70, 130], 66, (2, 1, 3)),
    ] {
        let name = format!("attention(window {window})");
        check_attention(&name, &mut rng, &lens, shape, 1.5, Some(window), None);
    }
}

#[test]
fn linear_cross_entropy_dx_matches_finite_differences() {
    let mut rng = rng(8);
    let (n, c, v) = (11, 7, 13);
    let x = uniform(&mut rng, n * c, 1.0);
    let w = uniform(&mut rng, v * c, 1.0);
    // -100 and -1 are both ignored; the chunk of 4 does not divide 11.
    let targets: Vec<i32> = vec![3, -100, 12, 0, 5, -1, 7, 7, -100, 1, 9];
    let (grad_scale, chunk) = (0.37f32, 4);
    // L = grad_scale * sum of token losses: r = grad_scale on every token.
    let r = vec![grad_scale as f64; n];
    let losses = |x: &[f64]| {
        cross_entropy::linear_cross_entropy_t::<f64>(None, x, &w, &targets, c, v, 1.0, chunk)
            .unwrap()
    };
    let mut dx = vec![f64::NAN; n * c];
    cross_entropy::linear_cross_entropy_t(Some(&mut dx), &x, &w, &targets, c, v, grad_scale, chunk)
        .unwrap();
    for (i, &t) in targets.iter().enumerate() {
        if t < 0 {
            assert!(
                dx[i * c..(i + 1) * c].iter().all(|&g| g == 0.0),
                "ignored token {i} has a gradient"
            );
        }
    }
    grad_check("linear_cross_entropy dx", &x, &dx, &r, losses);
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let mut rng = rng(11);
    let n = 301;
    let gate = uniform(&mut rng, n, 5.0);
    let up = uniform(&mut rng, n, 2.0);
    let r = uniform(&mut rng, n, 1.0);
    let forward = |g: &[f64], u: &[f64]| {
        let mut h = vec![0.0; n];
        geglu::geglu_forward(&mut h, g, u);
        h
    };
    let (mut dgate, mut dup) = (vec![f64::NAN; n], vec![f64::NAN; n]);
    geglu::geglu_backward(&mut dgate, &mut dup, &r, &gate, &up);
    grad_check("geglu dgate", &gate, &dgate, &r, |g| forward(g, &up));
    grad_check("geglu dup", &up, &dup, &r, |u| forward(&gate, u));
}

#[test]
fn partial_rope_backward_matches_finite_differences() {
    let mut rng = rng(12);
    // 6 of 10 dims rotated: pairs (0, 3), (1, 4), (2, 5); dims 6..10 pass through.
    let (n, h, d, rot, positions) = (5, 2, 10, 6, 7);
    let angles = uniform(&mut rng, positions * rot / 2, 3.0);
    let cos: Vec<f64> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f64> = angles.iter().map(|a| a.sin()).collect();
    let pos: Vec<u32> = vec![0, 6, 2, 2, 4];
    let x = uniform(&mut rng, n * h * d, 1.0);
    let r = uniform(&mut rng, n * h * d, 1.0);
    let mut dx = r.clone();
    rope::rope_partial_backward(&mut dx, &pos, &cos, &sin, h, d, rot).unwrap();
    grad_check("partial rope dx", &x, &dx, &r, |x| {
        let mut y = x.to_vec();
        rope::rope_partial_forward(&mut y, &pos, &cos, &sin, h, d, rot).unwrap();
        y
    });
}

#[test]
fn soft_capped_attention_backward_matches_finite_differences() {
    // A cap of 0.8 on scores of O(1): tanh bends most of them. With and without a window,
    // across a 64-token tile boundary in the second case.
    let mut rng = rng(13);
    for (lens, window, shape) in [
        (vec![9usize, 1, 20], None, (4usize, 2usize, 6usize)),
        (vec![70, 5], Some(66usize), (2, 1, 3)),
    ] {
        let name = format!("capped attention (window {window:?})");
        check_attention(&name, &mut rng, &lens, shape, 2.0, window, Some(0.8));
    }
}

#[test]
fn soft_capped_linear_cross_entropy_dx_matches_finite_differences() {
    let mut rng = rng(14);
    let (n, c, v) = (9, 7, 13);
    let x = uniform(&mut rng, n * c, 1.0);
    let w = uniform(&mut rng, v * c, 1.0);
    let targets: Vec<i32> = vec![3, -100, 12, 0, 5, 7, 7, 1, 9];
    let (grad_scale, chunk, cap) = (0.37f32, 4, Some(1.5f32));
    let r = vec![grad_scale as f64; n];
    let losses = |x: &[f64]| {
        cross_entropy::linear_cross_entropy_capped_t::<f64>(
            None, x, &w, &targets, c, v, 1.0, chunk, cap,
        )
        .unwrap()
    };
    let mut dx = vec![f64::NAN; n * c];
    cross_entropy::linear_cross_entropy_capped_t(
        Some(&mut dx),
        &x,
        &w,
        &targets,
        c,
        v,
        grad_scale,
        chunk,
        cap,
    )
    .unwrap();
    grad_check("capped linear_cross_entropy dx", &x, &dx, &r, losses);
}
