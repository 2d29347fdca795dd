//! The ops the newer model families need (GeGLU, soft caps, partial RoPE, column blocks,
//! LongRoPE frequencies) against references computed another way: values torch printed,
//! plain loops, the uncapped ops, and the host fallbacks against the CPU kernels.
mod common;

use common::*;
use temper_core::backend::{
    copy_columns_via_host, geglu_backward_via_host, geglu_forward_via_host, rope_partial_via_host,
};
use temper_core::cpu::{attention, attention_cache, columns, cross_entropy, geglu, rope};
use temper_core::rope::{inv_freq, RopeScaling};
use temper_core::{AttnShape, Backend, CpuBackend};

#[test]
fn geglu_matches_torch_gelu_tanh() {
    // torch.nn.functional.gelu(x, approximate="tanh") in float64.
    let x = [-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5];
    let torch = [
        -0.0036373920817729943,
        -0.15880800939172324,
        -0.100324649298315,
        0.0,
        0.34571400982514394,
        0.8411919906082768,
        2.484915733910001,
    ];
    let up = [2.0; 7];
    let mut h = [0.0f64; 7];
    geglu::geglu_forward(&mut h, &x, &up);
    let want: Vec<f64> = torch.iter().map(|t| 2.0 * t).collect();
    assert_close("geglu", &h, &want, 1e-15, 1e-300);
}

#[test]
fn column_blocks_split_and_join_back() {
    let (rows, widths) = (5usize, [3usize, 2, 2]);
    let total: usize = widths.iter().sum();
    let fused: Vec<f32> = (0..rows * total).map(|i| i as f32).collect();
    let mut parts: Vec<Vec<f32>> = widths.iter().map(|w| vec![0.0; rows * w]).collect();
    let mut off = 0;
    for (part, &w) in parts.iter_mut().zip(&widths) {
        columns::copy_columns(part, w, 0, &fused, total, off, w, rows).unwrap();
        off += w;
    }
    // Row 1 of the second block: columns 3, 4 of row 1 of the fused matrix.
    assert_eq!(&parts[1][2..4], &[10.0, 11.0]);
    let mut joined = vec![f32::NAN; rows * total];
    let mut off = 0;
    for (part, &w) in parts.iter().zip(&widths) {
        columns::copy_columns(&mut joined, total, off, part, w, 0, w, rows).unwrap();
        off += w;
    }
    assert_eq!(joined, fused);
    let err = columns::copy_columns(&mut joined, total, 6, &fused, total, 0, 2, rows)
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn a_cap_far_above_the_scores_changes_nothing_and_a_small_one_bounds_them() {
    let mut rng = rng(21);
    let (lens, hq, hkv, d) = (vec![9usize, 20], 4usize, 2usize, 8usize);
    let cu = cu_seqlens(&lens);
    let n = *cu.last().unwrap() as usize;
    let q = uniform(&mut rng, n * hq * d, 2.0);
    let k = uniform(&mut rng, n * hkv * d, 2.0);
    let v = uniform(&mut rng, n * hkv * d, 1.0);
    let run = |cap: Option<f32>| {
        let (mut out, mut lse) = (vec![0.0; n * hq * d], vec![0.0; n * hq]);
        attention::attention_forward_capped(
            &mut out,
            &mut lse,
            &q,
            &k,
            &v,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
            cap,
        )
        .unwrap();
        (out, lse)
    };
    let (plain, _) = run(None);
    let (huge, _) = run(Some(1e6));
    assert_close("cap 1e6", &huge, &plain, 1e-7, 1e-300);
    // With cap c every score is in (-c, c): lse of query i is at most ln(i + 1) + c.
    let cap = 0.5;
    let (_, lse) = run(Some(cap));
    for (s, w) in cu.windows(2).enumerate() {
        for i in 0..(w[1] - w[0]) as usize {
            for j in 0..hq {
                let l = lse[(w[0] as usize + i) * hq + j];
                let bound = ((i + 1) as f64).ln() + cap as f64;
                assert!(l <= bound + 1e-12, "seq {s} query {i}: lse {l} > {bound}");
            }
        }
    }
}

#[test]
fn capped_decode_equals_the_last_rows_of_capped_attention() {
    let mut rng = rng(22);
    let (t, hq, hkv, d, cap) = (11usize, 4usize, 2usize, 6usize, Some(0.7f32));
    let q = uniform(&mut rng, t * hq * d, 2.0);
    let k = uniform(&mut rng, t * hkv * d, 2.0);
    let v = uniform(&mut rng, t * hkv * d, 1.0);
    let (mut full, mut lse) = (vec![0.0; t * hq * d], vec![0.0; t * hq]);
    attention::attention_forward_capped(
        &mut full,
        &mut lse,
        &q,
        &k,
        &v,
        &[0, t as u32],
        AttnShape::new(hq, hkv, d),
        None,
        cap,
    )
    .unwrap();
    let past = 7;
    let mut out = vec![0.0; (t - past) * hq * d];
    attention_cache::attention_decode_capped(
        &mut out,
        &q[past * hq * d..],
        &k,
        &v,
        past,
        AttnShape::new(hq, hkv, d),
        cap,
    )
    .unwrap();
    assert_close("capped decode", &out, &full[past * hq * d..], 1e-12, 1e-300);
}

#[test]
fn capped_cross_entropy_equals_the_loss_of_capped_full_logits() {
    let mut rng = rng(23);
    let (n, c, v, cap) = (6usize, 5usize, 11usize, 0.9f64);
    let x = uniform(&mut rng, n * c, 2.0);
    let w = uniform(&mut rng, v * c, 2.0);
    let targets = vec![1, 10, -100, 0, 4, 4];
    let got = cross_entropy::linear_cross_entropy_capped_t::<f64>(
        None,
        &x,
        &w,
        &targets,
        c,
        v,
        1.0,
        4,
        Some(cap as f32),
    )
    .unwrap();
    let cap = cap as f32 as f64;
    for (i, &t) in targets.iter().enumerate() {
        if t < 0 {
            assert_eq!(got[i], 0.0);
            continue;
        }
        let logits: Vec<f64> = (0..v)
            .map(|j| {
                let z: f64 = (0..c).map(|p| x[i * c + p] * w[j * c + p]).sum();
                cap * (z / cap).tanh()
            })
            .collect();
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        let want = lse - logits[t as usize];
        assert!(
            (got[i] - want).abs() < 1e-12,
            "token {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn partial_rope_with_every_dim_rotated_is_rope_and_leaves_the_rest_alone() {
    let mut rng = rng(24);
    let (n, h, d, positions) = (4usize, 3usize, 8usize, 5usize);
    let pos = vec![0u32, 4, 1, 3];
    let x = uniform(&mut rng, n * h * d, 1.0);
    let angles = uniform(&mut rng, positions * d / 2, 3.0);
    let (cos, sin): (Vec<f64>, Vec<f64>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
    let (mut a, mut b) = (x.clone(), x.clone());
    rope::rope_forward(&mut a, &pos, &cos, &sin, h, d).unwrap();
    rope::rope_partial_forward(&mut b, &pos, &cos, &sin, h, d, d).unwrap();
    assert_eq!(a, b);
    // rot = 4: the tables are (P, 2); dims 4..8 of every head are untouched, and dims 0..4
    // are the full rotation of a 4-dim head.
    let rot = 4;
    let cos4: Vec<f64> = (0..positions)
        .flat_map(|p| cos[p * d / 2..p * d / 2 + 2].to_vec())
        .collect();
    let sin4: Vec<f64> = (0..positions)
        .flat_map(|p| sin[p * d / 2..p * d / 2 + 2].to_vec())
        .collect();
    let mut part = x.clone();
    rope::rope_partial_forward(&mut part, &pos, &cos4, &sin4, h, d, rot).unwrap();
    let mut heads4: Vec<f64> = x.chunks(d).flat_map(|hd| hd[..rot].to_vec()).collect();
    rope::rope_forward(&mut heads4, &pos, &cos4, &sin4, h, rot).unwrap();
    for (i, (hd, orig)) in part.chunks(d).zip(x.chunks(d)).enumerate() {
        assert_eq!(
            &hd[rot..],
            &orig[rot..],
            "head row {i}: passed-through dims changed"
        );
        assert_eq!(&hd[..rot], &heads4[i * rot..(i + 1) * rot], "head row {i}");
    }
    let err = rope::rope_partial_forward(&mut part, &pos, &cos4, &sin4, h, d, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("even"), "{err}");
}

#[test]
fn host_fallbacks_equal_the_cpu_kernels() {
    let be = CpuBackend::new();
    let mut rng = rng(25);
    let n = 37;
    let g: Vec<f32> = uniform(&mut rng, n, 4.0)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let u: Vec<f32> = uniform(&mut rng, n, 2.0)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let dh: Vec<f32> = uniform(&mut rng, n, 1.0)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let (gb, ub, dhb) = (
        be.upload(&g).unwrap(),
        be.upload(&u).unwrap(),
        be.upload(&dh).unwrap(),
    );
    let (mut h1, mut h2) = (be.zeros(n).unwrap(), be.zeros(n).unwrap());
    be.geglu_forward(&mut h1, &gb, &ub).unwrap();
    geglu_forward_via_host(&be, &mut h2, &gb, &ub).unwrap();
    assert_eq!(be.download(&h1).unwrap(), be.download(&h2).unwrap());
    let (mut dg1, mut du1, mut dg2, mut du2) = (
        be.zeros(n).unwrap(),
        be.zeros(n).unwrap(),
        be.zeros(n).unwrap(),
        be.zeros(n).unwrap(),
    );
    be.geglu_backward(&mut dg1, &mut du1, &dhb, &gb, &ub)
        .unwrap();
    geglu_backward_via_host(&be, &mut dg2, &mut du2, &dhb, &gb, &ub).unwrap();
    assert_eq!(be.download(&dg1).unwrap(), be.download(&dg2).unwrap());
    assert_eq!(be.download(&du1).unwrap(), be.download(&du2).unwrap());

    let (rows, total) = (3usize, 7usize);
    let src = be
        .upload(&(0..rows * total).map(|i| i as f32).collect::<Vec<_>>())
        .unwrap();
    let (mut a, mut b) = (be.zeros(rows * 2).unwrap(), be.zeros(rows * 2).unwrap());
    be.copy_columns(&mut a, 2, 0, &src, total, 4, 2, rows)
        .unwrap();
    copy_columns_via_host(&be, &mut b, 2, 0, &src, total, 4, 2, rows).unwrap();
    assert_eq!(
        be.download(&a).unwrap(),
        vec![4.0, 5.0, 11.0, 12.0, 18.0, 19.0]
    );
    assert_eq!(be.download(&a).unwrap(), be.download(&b).unwrap());

    let (h, d, rot) = (2usize, 6usize, 4usize);
    let pos = [0u32, 2, 1];
    let x: Vec<f32> = uniform(&mut rng, 3 * h * d, 1.0)
        .iter()
        .map(|&x| x as f32)
        .collect();
    let cos: Vec<f32> = (0..3 * rot / 2).map(|i| (i as f32 * 0.3).cos()).collect();
    let sin: Vec<f32> = (0..3 * rot / 2).map(|i| (i as f32 * 0.3).sin()).collect();
    let (cb, sb) = (be.upload(&cos).unwrap(), be.upload(&sin).unwrap());
    for backward in [false, true] {
        let (mut a, mut b) = (be.upload(&x).unwrap(), be.upload(&x).unwrap());
        if backward {
            be.rope_partial_backward(&mut a, &pos, &cb, &sb, h, d, rot)
                .unwrap();
        } else {
            be.rope_partial_forward(&mut a, &pos, &cb, &sb, h, d, rot)
                .unwrap();
        }
        rope_partial_via_host(&be, &mut b, &pos, &cb, &sb, h, d, rot, backward).unwrap();
        assert_eq!(be.download(&a).unwrap(), be.download(&b).unwrap());
    }
}

#[test]
fn longrope_inv_freq_matches_transformers() {
    // transformers' _compute_longrope_parameters for dim 8, base 1e4, short factors
    // [1, 1.7, 1.1, 3]: 1 / (ext * base ** (arange(0, 8, 2) / 8)) in float32.
    let torch_short: [f32; 4] = [1.0, 0.058_823_53, 0.009_090_909, 0.000_333_333_33];
    let scaling = RopeScaling::LongRope {
        short_factor: vec![1.0, 1.7, 1.1, 3.0],
        long_factor: vec![2.0, 2.0, 2.0, 2.0],
        original_max_position_embeddings: 16.0,
        attention_factor: 1.224744871391589,
    };
    let short = inv_freq(8, 10000.0, Some(&scaling), 16);
    assert_eq!(short, torch_short);
    let long = inv_freq(8, 10000.0, Some(&scaling), 17);
    let plain = inv_freq(8, 10000.0, None, 17);
    for (l, p) in long.iter().zip(&plain) {
        assert!((l - p / 2.0).abs() <= 1e-6 * p, "{l} vs {p} / 2");
    }
    // sqrt(1 + ln(64 / 16) / ln(16)) for a context stretched 4 times.
    assert_eq!(scaling.attention_factor(), 1.224744871391589f64 as f32);
}
