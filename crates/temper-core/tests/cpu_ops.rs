//! Forward results of the CPU kernels against references computed another way: naive
//! loops, dense masks, full logits, hand-derived numbers.
mod common;

use common::*;
use temper_core::cpu::{
    adamw, attention, cross_entropy, elementwise, embedding, matmul::matmul, rmsnorm, rope, swiglu,
};
use temper_core::rope::{inv_freq, RopeScaling};
use temper_core::{AdamWStep, AttnShape, Backend, CoreError, CpuBackend, Gemm};

/// Runs `f` on a one-thread rayon pool, to compare with the default (multi-thread) pool.
fn single_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

// ---------------------------------------------------------------- matmul

/// op(A)[i][p] and op(B)[p][j] read straight from the stored layouts.
fn naive_matmul(c: &mut [f64], a: &[f64], b: &[f64], g: Gemm) {
    let Gemm {
        m,
        n,
        k,
        ta,
        tb,
        alpha,
        beta,
    } = g;
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * n + j]
            };
            c[i * n + j] = alpha as f64 * s + old;
        }
    }
}

#[test]
fn matmul_all_transposes_match_triple_loop() {
    let mut rng = rng(10);
    let (m, n, k) = (37, 53, 29);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for (alpha, beta) in [(1.0, 0.0), (1.3, 1.0), (-0.6, 0.5)] {
            let g = Gemm {
                m,
                n,
                k,
                ta,
                tb,
                alpha,
                beta,
            };
            let a = uniform(&mut rng, m * k, 1.0);
            let b = uniform(&mut rng, k * n, 1.0);
            let c0 = uniform(&mut rng, m * n, 1.0);
            let mut expected = c0.clone();
            naive_matmul(&mut expected, &a, &b, g);
            // beta == 0 must not read C: start from NaN.
            let start = |c0: &[f64]| {
                if beta == 0.0 {
                    vec![f64::NAN; m * n]
                } else {
                    c0.to_vec()
                }
            };

            let mut c = start(&c0);
            matmul(&mut c, &a, &b, g);
            assert_close(
                &format!("f64 ta={ta} tb={tb} alpha={alpha} beta={beta}"),
                &c,
                &expected,
                1e-12,
                1.0,
            );

            let mut c32 = to_f32(&start(&c0));
            matmul(&mut c32, &to_f32(&a), &to_f32(&b), g);
            assert_close(
                &format!("f32 ta={ta} tb={tb} alpha={alpha} beta={beta}"),
                &f32_to_f64(&c32),
                &expected,
                1e-5,
                1.0,
            );
        }
    }
}

#[test]
fn matmul_large_multithreaded_and_degenerate_shapes() {
    let mut rng = rng(11);
    // Big enough to take the rayon path.
    let (m, n, k) = (131, 150, 97);
    let g = Gemm::nt(m, n, k).beta(1.0);
    let a = uniform(&mut rng, m * k, 1.0);
    let b = uniform(&mut rng, n * k, 1.0);
    let mut expected = uniform(&mut rng, m * n, 1.0);
    let mut c = to_f32(&expected);
    naive_matmul(&mut expected, &a, &b, g);
    matmul(&mut c, &to_f32(&a), &to_f32(&b), g);
    assert_close("f32 131x150x97", &f32_to_f64(&c), &expected, 1e-5, 1.0);

    // k = 0: C = beta C, and beta = 0 clears NaN.
    let mut c = vec![2.0f64; 6];
    matmul(&mut c, &[], &[], Gemm::nn(2, 3, 0).beta(0.5));
    assert_eq!(c, vec![1.0; 6]);
    let mut c = vec![f64::NAN; 6];
    matmul(&mut c, &[], &[], Gemm::nn(2, 3, 0));
    assert_eq!(c, vec![0.0; 6]);
}

// ---------------------------------------------------------------- attention

/// Dense reference: an explicit (N, N) mask allowing key j for query i iff both lie in one
/// sequence and j <= i, then a softmax over the full row.
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cu: &[u32],
    shape: AttnShape,
) -> (Vec<f64>, Vec<f64>) {
    naive_attention_window(q, k, v, cu, shape, None)
}

/// [`naive_attention`] with a sliding window: key j is allowed for query i iff also
/// j + window > i.
fn naive_attention_window(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cu: &[u32],
    shape: AttnShape,
    window: Option<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
    let n = *cu.last().unwrap() as usize;
    let seq_of: Vec<usize> = (0..n)
        .map(|t| {
            (0..cu.len() - 1)
                .find(|&s| (cu[s] as usize..cu[s + 1] as usize).contains(&t))
                .unwrap()
        })
        .collect();
    let allowed =
        |i: usize, j: usize| seq_of[i] == seq_of[j] && j <= i && window.is_none_or(|w| j + w > i);
    let scale = 1.0 / (d as f64).sqrt();
    let (mut out, mut lse) = (vec![0.0; n * hq * d], vec![0.0; n * hq]);
    for h in 0..hq {
        let g = h / (hq / hkv);
        for i in 0..n {
            let mut scores = vec![f64::NEG_INFINITY; n];
            for (j, s) in scores.iter_mut().enumerate() {
                if allowed(i, j) {
                    *s = scale
                        * (0..d)
                            .map(|x| q[(i * hq + h) * d + x] * k[(j * hkv + g) * d + x])
                            .sum::<f64>();
                }
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            lse[i * hq + h] = max + z.ln();
            for (j, s) in scores.iter().enumerate() {
                let p = (s - max).exp() / z;
                for x in 0..d {
                    out[(i * hq + h) * d + x] += p * v[(j * hkv + g) * d + x];
                }
            }
        }
    }
    (out, lse)
}

fn run_attention<T: temper_core::Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    cu: &[u32],
    shape: AttnShape,
) -> (Vec<T>, Vec<T>) {
    run_attention_window(q, k, v, cu, shape, None)
}

fn run_attention_window<T: temper_core::Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    cu: &[u32],
    shape: AttnShape,
    window: Option<usize>,
) -> (Vec<T>, Vec<T>) {
    let (hq, d) = (shape.q_heads, shape.head_dim);
    let n = q.len() / (hq * d);
    let (mut out, mut lse) = (vec![T::nan(); n * hq * d], vec![T::nan(); n * hq]);
    attention::attention_forward(&mut out, &mut lse, q, k, v, cu, shape, window).unwrap();
    (out, lse)
}

#[test]
fn sliding_window_attention_matches_dense_masked_reference() {
    let mut rng = rng(31);
    let (hq, hkv, d) = (4, 2, 8);
    // Windows shorter than a tile, crossing tile boundaries (64), and as long as the longest
    // sequence (plain causal then).
    let lens = [7, 1, 0, 13, 150];
    let cu = cu_seqlens(&lens);
    let n = *cu.last().unwrap() as usize;
    let q = uniform(&mut rng, n * hq * d, 2.0);
    let k = uniform(&mut rng, n * hkv * d, 2.0);
    let v = uniform(&mut rng, n * hkv * d, 1.0);
    let (full, full_lse) = run_attention(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d));
    for w in [1, 4, 63, 70, 150] {
        let (ref_out, ref_lse) =
            naive_attention_window(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d), Some(w));
        let (out, lse) = run_attention_window(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d), Some(w));
        assert_close(&format!("window {w} out"), &out, &ref_out, 1e-12, 1.0);
        assert_close(&format!("window {w} lse"), &lse, &ref_lse, 1e-12, 1.0);
        if w >= 150 {
            assert_eq!((out, lse), (full.clone(), full_lse.clone()), "window {w}");
        }
    }
    // Window 1: each query sees only itself, so out = v of its kv head.
    let (out, _) = run_attention_window(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d), Some(1));
    for t in 0..n {
        for h in 0..hq {
            let g = h / (hq / hkv);
            let (o, vv) = (&out[(t * hq + h) * d..][..d], &v[(t * hkv + g) * d..][..d]);
            assert_close("window 1 out = v", o, vv, 1e-12, 1.0);
        }
    }
    // A window of 0 is refused.
    let (mut o, mut l) = (vec![0.0; n * hq * d], vec![0.0; n * hq]);
    let err = attention::attention_forward(
        &mut o,
        &mut l,
        &q,
        &k,
        &v,
        &cu,
        AttnShape::new(hq, hkv, d),
        Some(0),
    )
    .unwrap_err();
    assert!(err.to_string().contains("sliding window"), "{err}");
}

#[test]
fn backends_without_a_window_mask_refuse_only_windows_that_matter() {
    use temper_core::checks::window_unsupported;
    let cu = [0u32, 5, 12];
    assert!(window_unsupported("attention_forward", "CUDA", &cu, None).is_ok());
    assert!(window_unsupported("attention_forward", "CUDA", &cu, Some(7)).is_ok());
    assert!(window_unsupported("attention_forward", "CUDA", &cu, Some(4096)).is_ok());
    let err = window_unsupported("attention_forward", "CUDA", &cu, Some(6))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sliding_window is 6")
            && err.contains("max_seq_len <= 6")
            && err.contains("has 7"),
        "{err}"
    );
}

#[test]
fn attention_matches_dense_masked_reference() {
    let mut rng = rng(12);
    let (hq, hkv, d) = (6, 2, 20);
    // Includes a length-1 sequence, an empty one (repeated offset), odd lengths and one
    // spanning several 64-token tiles.
    let lens = [7, 1, 0, 13, 2, 150];
    let cu = cu_seqlens(&lens);
    let n = *cu.last().unwrap() as usize;
    let q = uniform(&mut rng, n * hq * d, 2.0);
    let k = uniform(&mut rng, n * hkv * d, 2.0);
    let v = uniform(&mut rng, n * hkv * d, 1.0);
    let (ref_out, ref_lse) = naive_attention(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d));
    let (out, lse) = run_attention(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d));
    assert_close("attention out f64", &out, &ref_out, 1e-12, 1.0);
    assert_close("attention lse f64", &lse, &ref_lse, 1e-12, 1.0);

    let (out32, lse32) = run_attention(
        &to_f32(&q),
        &to_f32(&k),
        &to_f32(&v),
        &cu,
        AttnShape::new(hq, hkv, d),
    );
    assert_close(
        "attention out f32",
        &f32_to_f64(&out32),
        &ref_out,
        2e-5,
        1.0,
    );
    assert_close(
        "attention lse f32",
        &f32_to_f64(&lse32),
        &ref_lse,
        2e-5,
        1.0,
    );

    // Packed == each sequence run on its own.
    for s in 0..lens.len() {
        let (t0, t1) = (cu[s] as usize, cu[s + 1] as usize);
        let (o, l) = run_attention(
            &q[t0 * hq * d..t1 * hq * d],
            &k[t0 * hkv * d..t1 * hkv * d],
            &v[t0 * hkv * d..t1 * hkv * d],
            &[0, (t1 - t0) as u32],
            AttnShape::new(hq, hkv, d),
        );
        assert_eq!(
            o,
            out[t0 * hq * d..t1 * hq * d],
            "sequence {s} out differs packed vs alone"
        );
        assert_eq!(
            l,
            lse[t0 * hq..t1 * hq],
            "sequence {s} lse differs packed vs alone"
        );
    }

    // Independent of the thread count, backward included.
    let dout = uniform(&mut rng, n * hq * d, 1.0);
    let backward = || {
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        attention::attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
        .unwrap();
        (dq, dk, dv)
    };
    assert_eq!(
        single_thread(|| run_attention(&q, &k, &v, &cu, AttnShape::new(hq, hkv, d))),
        (out.clone(), lse.clone())
    );
    assert!(
        single_thread(backward) == backward(),
        "attention backward depends on the thread count"
    );

    // A single token attends only to itself: out = v, lse = scaled self-score.
    let (o, l) = run_attention(
        &q[..hq * d],
        &k[..hkv * d],
        &v[..hkv * d],
        &[0, 1],
        AttnShape::new(hq, hkv, d),
    );
    assert_close("single token out", &o[..d], &v[..d], 1e-15, 1.0);
    assert_close("single token lse", &l, &ref_lse[..hq], 1e-12, 1.0);
}

#[test]
fn attention_rejects_bad_input() {
    let (hq, hkv, d, n) = (4, 2, 8, 5);
    let q = vec![0.0f32; n * hq * d];
    let kv = vec![0.0f32; n * hkv * d];
    let fwd = |cu: &[u32], hq: usize, hkv: usize, k: &[f32]| {
        let (mut out, mut lse) = (vec![0.0f32; n * hq * d], vec![0.0f32; n * hq]);
        attention::attention_forward(
            &mut out,
            &mut lse,
            &q[..n * hq * d],
            k,
            k,
            cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
    };
    assert!(fwd(&[0, 2, 5], hq, hkv, &kv).is_ok());
    for bad in [&[][..], &[1, 5], &[0, 3, 2, 5], &[0, 4], &[0, 2, 6]] {
        let err = fwd(bad, hq, hkv, &kv).unwrap_err();
        assert!(
            matches!(err, CoreError::Invalid { .. }),
            "cu {bad:?}: {err}"
        );
    }
    assert!(fwd(&[0, 5], 4, 3, &kv).is_err(), "hq not a multiple of hkv");
    assert!(fwd(&[0, 5], 4, 2, &kv[1..]).is_err(), "short k");
    let be = CpuBackend::new();
    let (mut dq, mut dk, mut dv) = (be.buf(q.clone()), be.buf(kv.clone()), be.buf(kv.clone()));
    let lse = be.buf(vec![0.0f32; n * hq]);
    let (qb, kvb) = (be.buf(q.clone()), be.buf(kv.clone()));
    let err = be
        .attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &qb,
            &qb,
            &kvb,
            &kvb,
            &qb,
            &lse,
            &[0, 3, 4],
            AttnShape::new(hq, hkv, d),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("cu_seqlens"), "{err}");
}

// ---------------------------------------------------------------- cross-entropy

/// Full logits, log-softmax and its gradient in f64.
fn naive_cross_entropy(
    x: &[f64],
    w: &[f64],
    targets: &[i32],
    c: usize,
    v: usize,
    grad_scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = targets.len();
    let (mut losses, mut dx) = (vec![0.0; n], vec![0.0; n * c]);
    for (i, &t) in targets.iter().enumerate() {
        if t < 0 {
            continue;
        }
        let logits: Vec<f64> = (0..v)
            .map(|j| (0..c).map(|p| x[i * c + p] * w[j * c + p]).sum())
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        losses[i] = lse - logits[t as usize];
        for j in 0..v {
            let g =
                grad_scale * ((logits[j] - lse).exp() - if j == t as usize { 1.0 } else { 0.0 });
            for p in 0..c {
                dx[i * c + p] += g * w[j * c + p];
            }
        }
    }
    (losses, dx)
}

#[test]
fn cross_entropy_matches_full_logits_for_every_chunk_size() {
    let mut rng = rng(13);
    let (n, c, v, gs) = (23, 9, 31, 0.25f32);
    let x = uniform(&mut rng, n * c, 2.0);
    let w = uniform(&mut rng, v * c, 2.0);
    // -100 and any other negative target are ignored.
    let targets: Vec<i32> = (0..n)
        .map(|i| {
            if i % 5 == 2 {
                -100
            } else if i == 9 {
                -1
            } else {
                (i * 7 % v) as i32
            }
        })
        .collect();
    let (ref_loss, ref_dx) = naive_cross_entropy(&x, &w, &targets, c, v, gs as f64);
    for chunk in [0, 1, 2, 5, 22, 23, 1000] {
        let mut dx = vec![f64::NAN; n * c];
        let loss =
            cross_entropy::linear_cross_entropy_t(Some(&mut dx), &x, &w, &targets, c, v, gs, chunk)
                .unwrap();
        assert_close(&format!("loss chunk {chunk}"), &loss, &ref_loss, 1e-12, 1.0);
        assert_close(&format!("dx chunk {chunk}"), &dx, &ref_dx, 1e-12, 1.0);
        let no_grad =
            cross_entropy::linear_cross_entropy_t::<f64>(None, &x, &w, &targets, c, v, gs, chunk)
                .unwrap();
        assert_eq!(no_grad, loss, "losses depend on whether dx is asked for");
    }
}

#[test]
fn cross_entropy_f32_large_vocab() {
    let mut rng = rng(14);
    let (n, c, v) = (5, 24, 8003);
    let x = uniform(&mut rng, n * c, 1.0);
    let w = uniform(&mut rng, v * c, 1.0);
    let targets = vec![8002, 0, -100, 4001, 17];
    let (ref_loss, ref_dx) = naive_cross_entropy(&x, &w, &targets, c, v, 1.0 / 4.0);
    let be = CpuBackend::new();
    let mut dx = be.buf(vec![f32::NAN; n * c]);
    let loss = be
        .linear_cross_entropy(
            Some(&mut dx),
            &be.buf(to_f32(&x)),
            &be.buf(to_f32(&w)),
            &targets,
            c,
            v,
            0.25,
            2,
        )
        .unwrap();
    assert_close("loss f32 V=8003", &f32_to_f64(&loss), &ref_loss, 1e-5, 1.0);
    assert_close("dx f32 V=8003", &f32_to_f64(&dx), &ref_dx, 1e-5, 1e-2);
    assert_eq!(loss[2], 0.0);
    assert!(dx[2 * c..3 * c].iter().all(|&g| g == 0.0));
    // Same numbers chunk by chunk or all at once (up to matmul blocking).
    let whole = be
        .linear_cross_entropy(
            None,
            &be.buf(to_f32(&x)),
            &be.buf(to_f32(&w)),
            &targets,
            c,
            v,
            0.25,
            64,
        )
        .unwrap();
    assert_close(
        "chunked vs whole",
        &f32_to_f64(&whole),
        &f32_to_f64(&loss),
        1e-6,
        1.0,
    );
}

#[test]
fn cross_entropy_rejects_bad_targets_and_handles_all_ignored() {
    let (c, v) = (3, 4);
    let x = vec![0.5f64; 2 * c];
    let w = vec![0.25f64; v * c];
    let err = cross_entropy::linear_cross_entropy::<f64>(None, &x, &w, &[1, 4], c, v, 1.0, 8)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("target 4") && msg.contains("vocab size 4"),
        "{msg}"
    );
    let mut dx = vec![f64::NAN; 2 * c];
    let loss =
        cross_entropy::linear_cross_entropy(Some(&mut dx), &x, &w, &[-100, -100], c, v, 1.0, 1)
            .unwrap();
    assert_eq!(loss, vec![0.0, 0.0]);
    assert_eq!(dx, vec![0.0; 2 * c]);
    // Uniform logits: loss = ln V.
    let loss =
        cross_entropy::linear_cross_entropy::<f64>(None, &x, &w, &[0, 3], c, v, 1.0, 1).unwrap();
    assert!((loss[0] as f64 - (v as f64).ln()).abs() < 1e-6, "{loss:?}");
}

// ---------------------------------------------------------------- rmsnorm, rope, swiglu

#[test]
fn rmsnorm_matches_formula() {
    let mut rng = rng(15);
    let (n, c, eps) = (9, 37, 1e-6);
    let x = uniform(&mut rng, n * c, 3.0);
    let w = uniform(&mut rng, c, 1.0);
    let mut expected = vec![0.0; n * c];
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
        for j in 0..c {
            expected[i * c + j] = row[j] * r * w[j];
        }
    }
    let be = CpuBackend::new();
    let (mut y, mut rstd) = (be.buf(vec![0.0f32; n * c]), be.buf(vec![0.0f32; n]));
    be.rmsnorm_forward(
        &mut y,
        &mut rstd,
        &be.buf(to_f32(&x)),
        &be.buf(to_f32(&w)),
        c,
        eps as f32,
    )
    .unwrap();
    assert_close("rmsnorm f32", &f32_to_f64(&y), &expected, 1e-6, 1.0);
    let (mut y, mut rstd) = (vec![0.0f64; n * c], vec![0.0f64; n]);
    rmsnorm::rmsnorm_forward(&mut y, &mut rstd, &x, &w, c, eps).unwrap();
    assert_close("rmsnorm f64", &y, &expected, 1e-14, 1.0);
    assert!(be
        .rmsnorm_forward(
            &mut be.buf(vec![0.0; 10]),
            &mut be.buf(vec![0.0; 3]),
            &be.buf(vec![0.0; 10]),
            &be.buf(vec![0.0; 3]),
            3,
            1e-5
        )
        .is_err());
}

#[test]
fn rope_matches_formula_and_backward_inverts_forward() {
    let mut rng = rng(16);
    let (n, h, d) = (6, 2, 8);
    let freqs = inv_freq(d, 10000.0, None, 16);
    let (cos, sin) = temper_core::rope::tables(&freqs, 16);
    let pos = vec![0u32, 15, 3, 3, 9, 1];
    let x = uniform(&mut rng, n * h * d, 1.0);
    let mut y = x.clone();
    rope::rope_forward(&mut y, &pos, &f32_to_f64(&cos), &f32_to_f64(&sin), h, d).unwrap();
    for (t, &p) in pos.iter().enumerate() {
        for head in 0..h {
            let base = (t * h + head) * d;
            for i in 0..d / 2 {
                let angle = (p as f32 * freqs[i]) as f64;
                let (x1, x2) = (x[base + i], x[base + i + d / 2]);
                let want1 = x1 * (angle.cos() as f32 as f64) - x2 * (angle.sin() as f32 as f64);
                let want2 = x2 * (angle.cos() as f32 as f64) + x1 * (angle.sin() as f32 as f64);
                assert!(
                    (y[base + i] - want1).abs() < 1e-12
                        && (y[base + i + d / 2] - want2).abs() < 1e-12,
                    "token {t} head {head} i {i}"
                );
            }
        }
    }
    // Position 0 is the identity.
    assert_eq!(y[..h * d], x[..h * d]);
    // The backward is the inverse rotation (rotations are orthogonal).
    rope::rope_backward(&mut y, &pos, &f32_to_f64(&cos), &f32_to_f64(&sin), h, d).unwrap();
    assert_close("rope roundtrip", &y, &x, 1e-6, 1.0);
    // Positions beyond the table are an error, and nothing is rotated.
    let mut z = x.clone();
    let err = rope::rope_forward(
        &mut z,
        &[0, 1, 2, 16, 4, 5],
        &f32_to_f64(&cos),
        &f32_to_f64(&sin),
        h,
        d,
    )
    .unwrap_err();
    assert!(err.to_string().contains("16"), "{err}");
    assert_eq!(z, x);
}

#[test]
fn llama3_inv_freq_three_regimes() {
    // Llama 3.1: factor 8, low 1, high 4, original context 8192, theta 500000, d = 64.
    let (d, theta, factor, low, high, old_ctx) = (64usize, 500000.0f64, 8.0, 1.0, 4.0, 8192.0);
    let scaling = RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old_ctx,
    };
    let got = inv_freq(d, theta, Some(&scaling), 8192);
    assert_eq!(got.len(), d / 2);
    // Wavelengths below 8192/4 = 2048 are kept, above 8192/1 = 8192 divided by 8, between
    // the two interpolated linearly in old_ctx / wavelen.
    let (mut high_n, mut low_n, mut mid_n) = (0, 0, 0);
    for (i, &g) in got.iter().enumerate() {
        let base = theta.powf(-(2.0 * i as f64) / d as f64);
        let wavelen = 2.0 * std::f64::consts::PI / base;
        let want = if wavelen < old_ctx / high {
            high_n += 1;
            base
        } else if wavelen > old_ctx / low {
            low_n += 1;
            base / factor
        } else {
            mid_n += 1;
            let smooth = (old_ctx / wavelen - low) / (high - low);
            assert!(smooth > 0.0 && smooth < 1.0);
            let v = (1.0 - smooth) * base / factor + smooth * base;
            assert!(
                v > base / factor && v < base,
                "medium frequency {i} not between the two"
            );
            v
        };
        assert!(
            ((g as f64) - want).abs() <= 2e-6 * want,
            "inv_freq[{i}] = {g}, expected {want}"
        );
    }
    // i = 0..=14 high frequency, 15..=17 medium, 18..=31 low.
    assert_eq!((high_n, mid_n, low_n), (15, 3, 14));
    assert_eq!(got[0], 1.0);
    // Unscaled and linear scaling for comparison.
    let plain = inv_freq(d, theta, None, 8192);
    assert_eq!(plain[5], got[5]);
    assert!((got[31] as f64 - plain[31] as f64 / 8.0).abs() <= 1e-6 * got[31] as f64);
    let lin = inv_freq(d, theta, Some(&RopeScaling::Linear { factor: 2.0 }), 8192);
    assert_eq!(lin[3], plain[3] / 2.0);
}

#[test]
fn swiglu_matches_formula() {
    let mut rng = rng(17);
    let n = 50_000; // several rayon chunks
    let g = uniform(&mut rng, n, 10.0);
    let u = uniform(&mut rng, n, 2.0);
    let mut h = vec![0.0; n];
    swiglu::swiglu_forward(&mut h, &g, &u);
    let expected: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    assert_close("swiglu", &h, &expected, 1e-14, 1e-300);
    // Saturated gates stay finite in f32.
    let mut h = vec![0.0f32; 2];
    swiglu::swiglu_forward(&mut h, &[-200.0, 200.0], &[1.0, 1.0]);
    assert_eq!(h, vec![0.0, 200.0]);
}

// ---------------------------------------------------------------- elementwise, embedding

#[test]
fn elementwise_ops() {
    let mut rng = rng(18);
    let n = 100_003;
    let x = uniform(&mut rng, n, 1.0);
    let y0 = uniform(&mut rng, n, 1.0);
    let mut y = y0.clone();
    elementwise::axpy(&mut y, 0.5, &x);
    assert!(y
        .iter()
        .zip(&y0)
        .zip(&x)
        .all(|((y, y0), x)| *y == y0 + 0.5 * x));
    elementwise::scale(&mut y, -2.0);
    assert!(y
        .iter()
        .zip(&y0)
        .zip(&x)
        .all(|((y, y0), x)| *y == -2.0 * (y0 + 0.5 * x)));

    let mut b = vec![1.0f64; 12];
    elementwise::add_bias(&mut b, &[0.5, 1.0, 2.0]);
    assert_eq!(b, [1.5, 2.0, 3.0].repeat(4));
    let be = CpuBackend::new();
    assert!(be
        .add_bias(&mut be.buf(vec![0.0; 10]), &be.buf(vec![0.0; 3]), 3)
        .is_err());

    let x32 = to_f32(&x);
    let want: f64 = x32.iter().map(|&v| v as f64 * v as f64).sum();
    let got = elementwise::sum_squares(&x32);
    assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    assert_eq!(
        got,
        elementwise::sum_squares(&x32),
        "sum_squares is not deterministic"
    );
}

#[test]
fn dropout_mask_statistics_and_determinism() {
    let n = 100_000;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
    for p in [0.1f32, 0.3, 0.5, 0.9] {
        let mut y = vec![0.0f32; n];
        elementwise::dropout(&mut y, &x, p, 1234);
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        // std of the fraction is sqrt(p (1 - p) / n) <= 0.0016
        assert!(
            (dropped - p as f64).abs() < 0.01,
            "p = {p}: dropped {dropped}"
        );
        for (y, x) in y.iter().zip(&x) {
            assert!(
                *y == 0.0 || (*y - x / (1.0 - p)).abs() <= 1e-6 * y.abs(),
                "kept value not scaled by 1/(1-p)"
            );
        }
        // Same seed, same mask; the mask of a prefix does not depend on the array length
        // (so not on how the work was split between threads).
        let mut again = vec![0.0f32; n];
        elementwise::dropout(&mut again, &x, p, 1234);
        assert_eq!(again, y);
        for (i, y) in y.iter().enumerate() {
            assert_eq!(
                *y != 0.0,
                elementwise::dropout_keep(1234, i as u64, p),
                "element {i} against the hash"
            );
        }
        let single = single_thread(|| {
            let mut y1 = vec![0.0f32; n];
            elementwise::dropout(&mut y1, &x, p, 1234);
            y1
        });
        assert_eq!(single, y, "mask depends on the thread count");
        let mut prefix = vec![0.0f32; 1000];
        elementwise::dropout(&mut prefix, &x[..1000], p, 1234);
        assert_eq!(prefix, y[..1000]);
        let mut other = vec![0.0f32; n];
        elementwise::dropout(&mut other, &x, p, 1235);
        assert_ne!(other, y, "another seed gives another mask");
    }
    let mut y = vec![0.0f32; n];
    elementwise::dropout(&mut y, &x, 0.0, 99);
    assert_eq!(y, x, "p = 0 is the identity");
    let be = CpuBackend::new();
    assert!(be.dropout(&mut be.buf(y), &be.buf(x), 1.5, 0).is_err());
}

#[test]
fn embedding_lookup_and_bad_id() {
    let (v, c) = (5, 3);
    let table: Vec<f64> = (0..v * c).map(|i| i as f64).collect();
    let mut out = vec![0.0; 4 * c];
    embedding::embedding_forward(&mut out, &[4, 0, 2, 4], &table, c).unwrap();
    assert_eq!(
        out,
        vec![12.0, 13.0, 14.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 12.0, 13.0, 14.0]
    );
    let err = embedding::embedding_forward(&mut out, &[1, 5, 0, 0], &table, c).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CoreError::Invalid { .. })
            && msg.contains('5')
            && msg.contains("vocab size 5"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- adamw

#[test]
fn adamw_two_steps_by_hand() {
    // lr 0.01, betas (0.9, 0.999), eps 1e-8, weight decay 0.1; p = 0.5, grads 0.2 then -0.1.
    let s = |step| AdamWStep {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
    };
    let be = CpuBackend::new();
    let (mut p, mut m, mut v) = (
        be.buf(vec![0.5f32]),
        be.buf(vec![0.0f32]),
        be.buf(vec![0.0f32]),
    );

    // Step 1: p = 0.5 (1 - 0.001) = 0.4995; m = 0.1 * 0.2 = 0.02; v = 0.001 * 0.04 = 4e-5;
    // bc1 = 0.1, bc2 = 0.001: denom = sqrt(4e-5) / sqrt(0.001) + 1e-8 = 0.2 + 1e-8;
    // p = 0.4995 - (0.01 / 0.1) * 0.02 / (0.2 + 1e-8) = 0.4895000005.
    be.adamw(&mut p, &be.buf(vec![0.2]), &mut m, &mut v, s(1))
        .unwrap();
    let close = |got: f32, want: f64, what: &str| {
        assert!(
            (got as f64 - want).abs() <= 1e-6 * want.abs(),
            "{what}: {got} vs {want}"
        )
    };
    close(m[0], 0.02, "m1");
    close(v[0], 4e-5, "v1");
    close(p[0], 0.4895000005, "p1");

    // Step 2: p = 0.4895000005 * 0.999 = 0.4890105004995; m = 0.9 * 0.02 + 0.1 * -0.1 = 0.008;
    // v = 0.999 * 4e-5 + 0.001 * 0.01 = 4.996e-5; bc1 = 0.19, bc2 = 0.001999;
    // p -= (0.01 / 0.19) * 0.008 / (sqrt(4.996e-5 / 0.001999) + 1e-8) = 0.48634713027...
    be.adamw(&mut p, &be.buf(vec![-0.1]), &mut m, &mut v, s(2))
        .unwrap();
    close(m[0], 0.008, "m2");
    close(v[0], 4.996e-5, "v2");
    let p2 = 0.4890105004995
        - (0.01 / 0.19) * 0.008 / ((4.996e-5f64).sqrt() / 0.001999f64.sqrt() + 1e-8);
    assert!((p2 - 0.48634713027136756).abs() < 1e-15);
    close(p[0], p2, "p2");

    assert!(
        be.adamw(&mut p, &be.buf(vec![0.0]), &mut m, &mut v, s(0))
            .is_err(),
        "step 0"
    );
}

#[test]
fn adamw_large_matches_scalar_formula() {
    // Long enough for the parallel path; no weight decay, step 3.
    let mut rng = rng(19);
    let n = 70_001;
    let p0 = uniform(&mut rng, n, 1.0);
    let g = uniform(&mut rng, n, 1.0);
    let m0 = uniform(&mut rng, n, 0.1);
    let v0: Vec<f64> = uniform(&mut rng, n, 0.1).iter().map(|x| x * x).collect();
    let st = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.0,
        step: 3,
    };
    let (mut p, mut m, mut v) = (to_f32(&p0), to_f32(&m0), to_f32(&v0));
    adamw::adamw(&mut p, &to_f32(&g), &mut m, &mut v, st);
    for i in (0..n).step_by(997) {
        let (p0, g, m0, v0) = (
            p0[i] as f32 as f64,
            g[i] as f32 as f64,
            m0[i] as f32 as f64,
            v0[i] as f32 as f64,
        );
        let m1 = 0.9 * m0 + 0.1 * g;
        let v1 = 0.95 * v0 + 0.05 * g * g;
        let p1 = p0
            - 1e-3 / (1.0 - 0.9f64.powi(3)) * m1
                / (v1.sqrt() / (1.0 - 0.95f64.powi(3)).sqrt() + 1e-6);
        assert!(
            (m[i] as f64 - m1).abs() < 1e-6 && (v[i] as f64 - v1).abs() < 1e-6,
            "moments at {i}"
        );
        assert!(
            (p[i] as f64 - p1).abs() < 2e-6,
            "param at {i}: {} vs {p1}",
            p[i]
        );
    }
}

/// YaRN and dynamic NTK scaling against transformers' own `ROPE_INIT_FUNCTIONS`
/// (fixtures/rope_scaling.json, made by scripts/make_rope_fixtures.py).
#[test]
fn yarn_and_dynamic_inv_freq_match_transformers() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rope_scaling.json"
    ))
    .expect("fixture");
    let fx: serde_json::Value = serde_json::from_str(&text).expect("json");
    let d = fx["head_dim"].as_u64().expect("head_dim") as usize;
    let original = fx["max_position_embeddings"].as_f64().expect("max pos");
    for (name, case) in fx["cases"].as_object().expect("cases") {
        let p = &case["params"];
        let num = |k: &str, default: f64| p.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
        let theta = num("rope_theta", 10000.0);
        let factor = num("factor", 1.0);
        let (scaling, positions) = if p["rope_type"] == "dynamic" {
            let seq = case["seq_len"].as_u64().expect("seq_len") as usize;
            (
                RopeScaling::Dynamic {
                    factor,
                    original_max_position_embeddings: original,
                },
                seq,
            )
        } else {
            let attention_factor = match (p.get("mscale"), p.get("mscale_all_dim")) {
                (Some(m), Some(all)) => {
                    RopeScaling::yarn_mscale(factor, m.as_f64().expect("mscale"))
                        / RopeScaling::yarn_mscale(factor, all.as_f64().expect("mscale_all_dim"))
                }
                _ => RopeScaling::yarn_mscale(factor, 1.0),
            };
            (
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast: num("beta_fast", 32.0),
                    beta_slow: num("beta_slow", 1.0),
                    attention_factor,
                    truncate: true,
                },
                original as usize,
            )
        };
        let want: Vec<f32> = case["inv_freq"]
            .as_array()
            .expect("inv_freq")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        let got = inv_freq(d, theta, Some(&scaling), positions);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-6 * w.abs(),
                "{name}: inv_freq[{i}] = {g}, transformers {w}"
            );
        }
        let att = case["attention_factor"].as_f64().expect("attention_factor") as f32;
        assert!(
            (scaling.attention_factor() - att).abs() <= 1e-6,
            "{name}: attention factor {} vs {att}",
            scaling.attention_factor()
        );
    }
}
