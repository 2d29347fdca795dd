//! temper's quantisers against llama.cpp's: the bytes ggml's `ggml_quantize_chunk` wrote for
//! the same rows (tests/fixtures/quant, scripts/make_quant_fixtures.py), their dequantisation
//! by gguf-py, and the error of each type on weight-like rows.

use std::path::PathBuf;

use temper_gguf::{dequantize, quantize, GgmlType};

const ROW: usize = 512;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/quant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const TYPES: [(&str, GgmlType); 7] = [
    ("q8_0", GgmlType::Q8_0),
    ("q4_0", GgmlType::Q4_0),
    ("q5_0", GgmlType::Q5_0),
    ("q5_1", GgmlType::Q5_1),
    ("q4_k", GgmlType::Q4_K),
    ("q5_k", GgmlType::Q5_K),
    ("q6_k", GgmlType::Q6_K),
];

#[test]
fn every_type_writes_the_bytes_llama_cpp_writes() {
    let x = f32s(&fixture("input.f32"));
    for (name, ty) in TYPES {
        let want = fixture(&format!("{name}.bin"));
        let mut got = Vec::new();
        quantize(ty, &x, &mut got).expect("quantize");
        assert_eq!(got.len(), want.len(), "{name}: length");
        let (block_len, block_bytes) = ty.block().expect("block");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            let block = i / block_bytes;
            panic!(
                "{name}: byte {i} (block {block}: row {}, values {}..) is {:#04x}, llama.cpp \
                 wrote {:#04x}",
                block * block_len / ROW,
                block * block_len % ROW,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn dequantised_as_gguf_py_dequantises() {
    for (name, ty) in TYPES {
        let bytes = fixture(&format!("{name}.bin"));
        let want = f32s(&fixture(&format!("{name}.deq.f32")));
        let got = dequantize(ty, &bytes, want.len()).expect("dequantize");
        assert_eq!(got, want, "{name}");
    }
}

/// RMSE over sigma of weight-like rows, N(0, 1) scaled, quantised and dequantised by temper.
/// The bounds are the usual error of each type on Gaussian data (llama.cpp's figures for
/// 7B-class weights put Q4_0 near 0.1 sigma and Q6_K near 0.02).
#[test]
fn round_trip_error_per_type() {
    let x = f32s(&fixture("input.f32"));
    let w = &x[..ROW]; // N(0, 0.02)
    let sigma = (w.iter().map(|v| v * v).sum::<f32>() / ROW as f32).sqrt();
    for (name, ty, bound) in [
        ("q8_0", GgmlType::Q8_0, 0.006),
        ("q4_0", GgmlType::Q4_0, 0.11),
        ("q5_0", GgmlType::Q5_0, 0.055),
        ("q5_1", GgmlType::Q5_1, 0.05),
        ("q4_k", GgmlType::Q4_K, 0.09),
        ("q5_k", GgmlType::Q5_K, 0.045),
        ("q6_k", GgmlType::Q6_K, 0.022),
    ] {
        let mut b = Vec::new();
        quantize(ty, w, &mut b).expect("quantize");
        let y = dequantize(ty, &b, ROW).expect("dequantize");
        let mse = y.iter().zip(w).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / ROW as f32;
        let rel = mse.sqrt() / sigma;
        println!("{name}: RMSE {:.4} sigma", rel);
        assert!(
            rel < bound,
            "{name}: RMSE {rel} sigma, expected under {bound}"
        );
    }
}

/// Odd block counts and lengths that are not a row of the fixture: every block stands alone,
/// so quantising a tensor at once or block by block gives the same bytes.
#[test]
fn blocks_are_independent() {
    let x = f32s(&fixture("input.f32"));
    for (name, ty) in TYPES {
        let (len, _) = ty.block().expect("block");
        let n = 3 * len.max(256) + if len == 32 { 32 } else { 0 };
        let mut all = Vec::new();
        quantize(ty, &x[..n], &mut all).expect("quantize");
        let mut one_by_one = Vec::new();
        for b in x[..n].chunks(len) {
            quantize(ty, b, &mut one_by_one).expect("quantize");
        }
        assert_eq!(all, one_by_one, "{name}");
    }
}

/// llama.cpp's own bound (tests/test-quantize-fns.cpp): on its synthetic data
/// 0.1 + 2 cos(i), 4096 values, sqrt(sum of squared errors) / n stays under 0.002 for every
/// type of 4 bits or more.
#[test]
fn llama_cpp_quantize_fns_bound() {
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    for (name, ty) in TYPES {
        let mut b = Vec::new();
        quantize(ty, &x, &mut b).expect("quantize");
        let y = dequantize(ty, &b, n).expect("dequantize");
        let sum: f64 = y
            .iter()
            .zip(&x)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let err = sum.sqrt() / n as f64;
        println!("{name}: llama.cpp's total quantization error {err:.5}");
        assert!(err < 0.002, "{name}: {err}");
    }
}
