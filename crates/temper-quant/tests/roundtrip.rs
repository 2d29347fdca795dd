//! Round trips at awkward sizes (odd block counts, a partial last block, blocksize 32 and
//! 4096), error bounds, and the errors bad input gets.

use temper_quant::{
    dequantize_4bit, dequantize_blockwise, double_quant, int8_vectorwise_dequant,
    int8_vectorwise_quant, quantize_4bit, quantize_blockwise, signed_map, unsigned_map, QuantError,
    QuantState, QuantType, TensorRef,
};

/// Deterministic values with a spread of block absmax (a small LCG; no rand dependency).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            u * (1.0 + (i % 97) as f32 * 0.05)
        })
        .collect()
}

/// Half the widest gap between neighbouring codes: the worst rounding error relative to
/// the block's absmax.
fn half_gap(code: &[f32]) -> f32 {
    let mut s = code.to_vec();
    s.sort_by(f32::total_cmp);
    s.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0
}

#[test]
fn four_bit_round_trip_at_awkward_sizes() {
    for qt in [QuantType::Nf4, QuantType::Fp4] {
        let bound = half_gap(qt.code());
        for bs in [32, 64, 128, 4096] {
            for n in [1, 2, 31, 33, bs - 1, bs + 1, 7 * bs + 5, 4097, 8003] {
                let x = values(n, (n * bs) as u64);
                let p = quantize_4bit(&x, bs, qt).expect("quantize");
                assert_eq!(p.bytes.len(), n.div_ceil(2));
                assert_eq!(p.absmax.len(), n.div_ceil(bs), "{n} / {bs}");
                if n % 2 == 1 {
                    // The pad nibble is the code of 0.0.
                    let pad = p.bytes[n / 2] & 0x0f;
                    assert_eq!(qt.code()[pad as usize], 0.0, "{qt:?} {n}");
                }
                let d = dequantize_4bit(&p.bytes, &p.absmax, n, bs, qt).expect("dequantize");
                assert_eq!(d, p.dequantize().expect("dequantize"));
                for (i, (&a, &b)) in x.iter().zip(&d).enumerate() {
                    let am = p.absmax[i / bs];
                    assert!(
                        (a - b).abs() <= bound * am * (1.0 + 1e-6),
                        "{qt:?} bs {bs} n {n} [{i}]: {a} -> {b} (absmax {am})"
                    );
                }
                // Each block's largest value is exact (it scales to +-1).
                for (b, block) in x.chunks(bs).enumerate() {
                    let j = (0..block.len())
                        .max_by(|&i, &k| block[i].abs().total_cmp(&block[k].abs()))
                        .expect("non-empty");
                    assert_eq!(d[b * bs + j], block[j], "{qt:?} bs {bs} n {n} block {b}");
                }
            }
        }
    }
}

#[test]
fn zero_blocks_decode_to_zero() {
    let mut x = values(200, 3);
    x[64..128].fill(0.0);
    for qt in [QuantType::Nf4, QuantType::Fp4] {
        let p = quantize_4bit(&x, 64, qt).expect("quantize");
        assert_eq!(p.absmax[1], 0.0);
        let d = p.dequantize().expect("dequantize");
        assert!(d[64..128].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn double_quant_round_trip() {
    // 1000 absmax values: 4 nested blocks, the last partial.
    let absmax: Vec<f32> = values(1000, 9).iter().map(|v| v.abs() + 0.01).collect();
    let n = double_quant(&absmax).expect("double quant");
    assert_eq!(n.codes.len(), 1000);
    assert_eq!(n.nested_absmax.len(), 4);
    let back = n.dequantize().expect("dequantize");
    let bound = half_gap(signed_map());
    for (i, (&a, &b)) in absmax.iter().zip(&back).enumerate() {
        let scale = n.nested_absmax[i / 256];
        assert!(
            (a - b).abs() <= bound * scale * 1.0001 + 1e-7,
            "[{i}] {a} -> {b}"
        );
    }
}

#[test]
fn blockwise_8bit_round_trip() {
    for (map, square) in [(signed_map(), false), (unsigned_map(), true)] {
        let bound = half_gap(map);
        for bs in [32, 256, 4096] {
            let x: Vec<f32> = values(5003, bs as u64)
                .into_iter()
                .map(|v| if square { v * v } else { v })
                .collect();
            let q = quantize_blockwise(&x, map, bs).expect("quantize");
            let d = dequantize_blockwise(&q.codes, &q.absmax, map, bs).expect("dequantize");
            for (i, (&a, &b)) in x.iter().zip(&d).enumerate() {
                let am = q.absmax[i / bs];
                assert!(
                    (a - b).abs() <= bound * am * 1.0001,
                    "bs {bs} [{i}] {a} -> {b}"
                );
            }
        }
    }
}

#[test]
fn int8_round_trip_and_outliers() {
    let (rows, cols) = (7, 33);
    let mut x: Vec<f32> = values(rows * cols, 5).iter().map(|v| v * 1.5).collect();
    x[2 * cols + 5] = 9.5; // an outlier in column 5
    let (r, outlier_cols) = int8_vectorwise_quant(&x, rows, cols, 6.0).expect("quant");
    assert_eq!(outlier_cols, vec![5]);
    assert!(
        (0..rows).all(|i| r.codes[i * cols + 5] == 0),
        "column 5 zeroed"
    );
    let d = int8_vectorwise_dequant(&r.codes, &r.scales, cols).expect("dequant");
    for i in 0..rows {
        for j in (0..cols).filter(|&j| j != 5) {
            let k = i * cols + j;
            assert!(
                (x[k] - d[k]).abs() <= r.scales[i] / 127.0 * 0.5001,
                "[{i},{j}] {} -> {}",
                x[k],
                d[k]
            );
        }
    }
    let (none, outlier_cols) = int8_vectorwise_quant(&x, rows, cols, 0.0).expect("no threshold");
    assert!(outlier_cols.is_empty());
    assert_eq!(none.scales[2], 9.5);
    assert_eq!((none.rows, none.cols), (rows, cols));
}

#[test]
fn quant_state_round_trips_through_its_tensors() {
    let x = values(96 * 40, 11);
    for double in [false, true] {
        let qs = QuantState::quantize(&x, &[96, 40], "float16", 32, QuantType::Nf4, double)
            .expect("quantize");
        let ts = qs.tensors("m.layers.0.q_proj.weight");
        let get = |name: &str| {
            ts.iter().find(|t| t.name == name).map(|t| TensorRef {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data: &t.data,
            })
        };
        let back =
            QuantState::from_tensors(std::path::Path::new("mem"), "m.layers.0.q_proj.weight", get)
                .expect("from_tensors");
        assert_eq!(back, qs);
        assert_eq!(
            ts[0].shape,
            vec![96 * 40 / 2, 1],
            "packed weight is (n/2, 1)"
        );

        // A missing companion tensor is named in the error.
        let get_missing = |name: &str| {
            if name.ends_with(".absmax") {
                None
            } else {
                get(name)
            }
        };
        let e = QuantState::from_tensors(
            std::path::Path::new("mem"),
            "m.layers.0.q_proj.weight",
            get_missing,
        )
        .expect_err("missing absmax");
        assert!(e.to_string().contains("q_proj.weight.absmax"), "{e}");

        // A non-finite scale (a plain absmax, or the nested one of double quantisation) is
        // refused, naming the tensor: it would turn its whole block into NaN.
        let (scales, at) = if double {
            ("m.layers.0.q_proj.weight.nested_absmax", 0)
        } else {
            ("m.layers.0.q_proj.weight.absmax", 1)
        };
        for bad in [f32::NAN, f32::INFINITY] {
            let mut damaged: Vec<_> = ts
                .iter()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data.clone()))
                .collect();
            let (_, _, _, data) = damaged
                .iter_mut()
                .find(|(n, ..)| n == scales)
                .expect("the scales");
            data[4 * at..4 * at + 4].copy_from_slice(&bad.to_le_bytes());
            let get_damaged = |name: &str| {
                damaged
                    .iter()
                    .find(|(n, ..)| n == name)
                    .map(|(_, dtype, shape, data)| TensorRef {
                        dtype: *dtype,
                        shape: shape.clone(),
                        data,
                    })
            };
            let e = QuantState::from_tensors(
                std::path::Path::new("mem"),
                "m.layers.0.q_proj.weight",
                get_damaged,
            )
            .expect_err("a non-finite scale");
            let e = e.to_string();
            assert!(
                e.contains(&format!("tensor `{scales}`"))
                    && e.contains("non-finite value")
                    && e.contains(&format!("at index {at}")),
                "{e}"
            );
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let x = values(100, 1);
    for bs in [0, 16, 48, 8192] {
        let e = quantize_4bit(&x, bs, QuantType::Nf4).expect_err("blocksize");
        assert!(matches!(e, QuantError::Blocksize { .. }), "{e}");
        assert!(quantize_blockwise(&x, signed_map(), bs).is_err());
    }
    assert!(matches!(
        quantize_4bit(&[], 64, QuantType::Nf4),
        Err(QuantError::Empty { .. })
    ));
    let mut nan = x.clone();
    nan[17] = f32::NAN;
    match quantize_4bit(&nan, 64, QuantType::Fp4) {
        Err(QuantError::NonFinite { index, .. }) => assert_eq!(index, 17),
        other => panic!("{other:?}"),
    }
    let p = quantize_4bit(&x, 64, QuantType::Nf4).expect("quantize");
    assert!(dequantize_4bit(&p.bytes, &p.absmax, 101, 64, QuantType::Nf4).is_err());
    assert!(dequantize_4bit(&p.bytes, &p.absmax[..1], 100, 64, QuantType::Nf4).is_err());
    let mut unsorted = *signed_map();
    unsorted.swap(3, 200);
    assert!(
        quantize_blockwise(&x, &unsorted, 256).is_err(),
        "unsorted code"
    );
    assert!(
        int8_vectorwise_quant(&x, 10, 11, 6.0).is_err(),
        "100 != 10 x 11"
    );
    assert!(
        int8_vectorwise_quant(&x, 10, 10, -1.0).is_err(),
        "negative threshold"
    );
    assert!(int8_vectorwise_dequant(&[1, 2, 3], &[1.0], 2).is_err());
    assert!(QuantState::quantize(&x, &[10, 10], "int8", 64, QuantType::Nf4, false).is_err());
    assert!(QuantState::quantize(&x, &[10, 11], "bfloat16", 64, QuantType::Nf4, false).is_err());
}
