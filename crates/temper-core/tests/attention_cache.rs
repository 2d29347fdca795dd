//! Cache-based attention (generation) against the full causal `attention_forward`: the last
//! rows of causal attention over a whole sequence must equal attending the same queries to a
//! KV cache, whether the cache is filled at once (prefill) or one token at a time (decode).

mod common;

use common::{rng, to_f32, uniform};
use temper_core::backend::{attention_decode_via_host, copy_range_via_host};
use temper_core::cpu::{attention, attention_cache};
use temper_core::{AttnShape, Backend, CpuBackend};

/// (L, heads, d) shapes with L past one 64-token tile of attention_forward, GQA group 3.
const L: usize = 70;
const HQ: usize = 6;
const HKV: usize = 2;
const D: usize = 20;
const SHAPE: AttnShape = AttnShape::new(HQ, HKV, D);

fn full_attention(q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; L * HQ * D];
    let mut lse = vec![0.0; L * HQ];
    let cu = [0u32, L as u32];
    attention::attention_forward(&mut out, &mut lse, q, k, v, &cu, SHAPE, None).unwrap();
    out
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> (usize, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0.0), |w, (i, e)| if e > w.1 { (i, e) } else { w })
}

#[test]
fn decode_equals_last_rows_of_full_attention_f64() {
    let mut r = rng(7);
    let q = uniform(&mut r, L * HQ * D, 1.5);
    let k = uniform(&mut r, L * HKV * D, 1.5);
    let v = uniform(&mut r, L * HKV * D, 1.0);
    let want = full_attention(&q, &k, &v);
    // Caches with 5 spare rows of NaN: rows past past+n must never be read.
    let cap = L + 5;
    let pad = |x: &[f64]| {
        let mut c = x.to_vec();
        c.resize(cap * HKV * D, f64::NAN);
        c
    };
    let (kc, vc) = (pad(&k), pad(&v));
    for past in [0, 1, 37, 64, L - 1] {
        let n = L - past;
        let mut out = vec![0.0; n * HQ * D];
        attention_cache::attention_decode(&mut out, &q[past * HQ * D..], &kc, &vc, past, SHAPE)
            .unwrap();
        let (i, err) = max_abs_diff(&out, &want[past * HQ * D..]);
        assert!(err < 1e-12, "past {past}: worst element {i} off by {err}");
    }
}

/// Decoding token by token through the Backend, appending each token's k/v to the caches
/// with `copy_range`, reproduces every row of the full attention in f32.
#[test]
fn token_by_token_decode_through_backend_f32() {
    let be = CpuBackend::new();
    let mut r = rng(11);
    let q = uniform(&mut r, L * HQ * D, 1.5);
    let k = uniform(&mut r, L * HKV * D, 1.5);
    let v = uniform(&mut r, L * HKV * D, 1.0);
    let want = full_attention(&q, &k, &v);
    let (qb, kb, vb) = (
        be.upload(&to_f32(&q)).unwrap(),
        be.upload(&to_f32(&k)).unwrap(),
        be.upload(&to_f32(&v)).unwrap(),
    );
    let row = HKV * D;
    let mut kc = be.zeros(L * row).unwrap(); // (L, hkv, d)
    let mut vc = be.zeros(L * row).unwrap();
    let mut got = Vec::with_capacity(L * HQ * D);
    // A 9-token prefill, then one token at a time.
    let mut past = 0;
    for n in std::iter::once(9).chain(std::iter::repeat_n(1, L - 9)) {
        be.copy_range(&mut kc, past * row, &kb, past * row, n * row)
            .unwrap();
        be.copy_range(&mut vc, past * row, &vb, past * row, n * row)
            .unwrap();
        let mut qn = be.zeros(n * HQ * D).unwrap();
        be.copy_range(&mut qn, 0, &qb, past * HQ * D, n * HQ * D)
            .unwrap();
        let mut out = be.zeros(n * HQ * D).unwrap();
        be.attention_decode(&mut out, &qn, &kc, &vc, past, SHAPE)
            .unwrap();
        got.extend(be.download(&out).unwrap().iter().map(|&x| x as f64));
        past += n;
    }
    let (i, err) = max_abs_diff(&got, &want);
    assert!(err < 1e-5, "worst element {i} off by {err}");
}

#[test]
fn decode_rejects_a_cache_too_short() {
    let q = vec![0.0f32; 2 * HQ * D];
    let kc = vec![0.0f32; 4 * HKV * D];
    let mut out = vec![0.0f32; 2 * HQ * D];
    // past 3 + 2 new tokens need 5 cached rows; there are 4.
    let err = attention_cache::attention_decode(&mut out, &q, &kc, &kc, 3, SHAPE)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fewer than past + n = 5"), "{err}");
    assert!(attention_cache::attention_decode(&mut out, &q, &kc, &kc, 2, SHAPE).is_ok());
}

#[test]
fn copy_range_copies_and_checks_bounds() {
    let mut dst = vec![0.0f32; 6];
    attention_cache::copy_range(&mut dst, 2, &[1.0, 2.0, 3.0, 4.0], 1, 3).unwrap();
    assert_eq!(dst, [0.0, 0.0, 2.0, 3.0, 4.0, 0.0]);
    assert!(attention_cache::copy_range(&mut dst, 4, &[1.0; 4], 0, 3).is_err());
    assert!(attention_cache::copy_range(&mut dst, 0, &[1.0; 4], 2, 3).is_err());
    assert!(attention_cache::copy_range(&mut dst, usize::MAX, &[1.0; 4], 0, 1).is_err());
}

/// The trait's default implementations (through the host, what a device backend gets until
/// it overrides them) give exactly the CPU backend's results.
#[test]
fn host_defaults_equal_the_cpu_backend() {
    let be = CpuBackend::new();
    let mut r = rng(13);
    let (past, n, cap) = (17, 3, 24);
    let q = be
        .upload(&to_f32(&uniform(&mut r, n * HQ * D, 1.5)))
        .unwrap();
    let k = be
        .upload(&to_f32(&uniform(&mut r, cap * HKV * D, 1.5)))
        .unwrap();
    let v = be
        .upload(&to_f32(&uniform(&mut r, cap * HKV * D, 1.0)))
        .unwrap();
    let mut want = be.zeros(n * HQ * D).unwrap();
    be.attention_decode(&mut want, &q, &k, &v, past, SHAPE)
        .unwrap();
    let mut got = be.zeros(n * HQ * D).unwrap();
    attention_decode_via_host(&be, &mut got, &q, &k, &v, past, SHAPE).unwrap();
    assert_eq!(be.download(&got).unwrap(), be.download(&want).unwrap());
    assert!(attention_decode_via_host(&be, &mut got, &q, &k, &v, cap, SHAPE).is_err());

    let mut a = be.upload(&[0.0; 8]).unwrap();
    let mut b = be.upload(&[0.0; 8]).unwrap();
    let src = be.upload(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    be.copy_range(&mut a, 3, &src, 1, 4).unwrap();
    copy_range_via_host(&be, &mut b, 3, &src, 1, 4).unwrap();
    assert_eq!(be.download(&b).unwrap(), be.download(&a).unwrap());
    assert_eq!(
        be.download(&b).unwrap(),
        [0.0, 0.0, 0.0, 2.0, 3.0, 4.0, 5.0, 0.0]
    );
    assert!(copy_range_via_host(&be, &mut b, 5, &src, 0, 4).is_err());
}
