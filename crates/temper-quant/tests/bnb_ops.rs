//! temper-quant against bitsandbytes 0.50 itself: every case of tests/fixtures/bnb/ops.*
//! (scripts/make_bnb_fixtures.py) must match bit for bit.

mod common;

use common::{bit_diffs, shape, Ops};
use temper_quant::{
    dequantize_blockwise, double_quant, dynamic_map, int8_colwise_quant, int8_vectorwise_dequant,
    int8_vectorwise_quant, quantize_4bit, quantize_blockwise, torch_mean, Absmax, QuantState,
    QuantType, FP4, NF4,
};

#[test]
fn code_tables_and_dynamic_maps_are_bitsandbytes() {
    let ops = Ops::load();
    assert!(bit_diffs(&ops.f32s("code.nf4"), &NF4).is_empty(), "NF4");
    assert!(bit_diffs(&ops.f32s("code.fp4"), &FP4).is_empty(), "FP4");
    for (name, signed) in [("map.signed", true), ("map.unsigned", false)] {
        let d = bit_diffs(&ops.f32s(name), &dynamic_map(signed));
        assert!(d.is_empty(), "{name}: entries {d:?} differ");
    }
}

#[test]
fn mean_is_pytorchs() {
    let ops = Ops::load();
    let sizes = ops.i64s("mean.sizes");
    let want = ops.f32s("mean.values");
    for (&n, &w) in sizes.iter().zip(&want) {
        // The same values as the script's mean_input(n).
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let h = (i as f64 * 2654435761.0) % 4294967296.0 / 4294967296.0;
                (h * 0.1 + 0.02) as f32
            })
            .collect();
        let got = torch_mean(&x);
        assert_eq!(
            got.to_bits(),
            w.to_bits(),
            "mean of {n} values: {got} vs torch {w}"
        );
    }
}

#[test]
fn quantize_4bit_is_bitsandbytes() {
    let ops = Ops::load();
    let mut exact = 0;
    let cases = ops.cases("quantize_4bit");
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        let qt = QuantType::parse(c["quant_type"].as_str().expect("qt")).expect("nf4|fp4");
        let bs = c["blocksize"].as_u64().expect("bs") as usize;
        let nested = c["nested"].as_bool().expect("nested");
        let shape = shape(c);
        let dtype = c["dtype"].as_str().expect("dtype");
        let x = ops.f32s(&format!("{name}.input"));

        let p = quantize_4bit(&x, bs, qt).expect("quantize");
        let packed = ops.raw(&format!("{name}.packed"));
        let bad: Vec<usize> = (0..packed.len())
            .filter(|&i| packed[i] != p.bytes[i])
            .collect();
        assert!(bad.is_empty(), "{name}: packed bytes {bad:?} differ");
        let absmax_key = if nested { "absmax_f32" } else { "absmax" };
        let d = bit_diffs(&p.absmax, &ops.f32s(&format!("{name}.{absmax_key}")));
        assert!(d.is_empty(), "{name}: absmax {d:?} differ");

        let qs = QuantState::quantize(&x, &shape, dtype, bs, qt, nested).expect("state");
        if nested {
            let n = double_quant(&p.absmax).expect("double quant");
            let off = ops.f32s(&format!("{name}.offset"))[0];
            assert_eq!(n.offset.to_bits(), off.to_bits(), "{name}: offset");
            assert_eq!(
                n.codes,
                ops.raw(&format!("{name}.absmax")),
                "{name}: nested codes"
            );
            let d = bit_diffs(
                &n.nested_absmax,
                &ops.f32s(&format!("{name}.nested_absmax")),
            );
            assert!(d.is_empty(), "{name}: nested absmax {d:?} differ");
            assert_eq!(qs.absmax, Absmax::Nested(n));
        }
        let json = String::from_utf8(ops.raw(&format!("{name}.quant_state"))).expect("utf8");
        assert_eq!(qs.json(), json, "{name}: quant_state JSON");

        let deq = qs.dequantize_to_f32().expect("dequantize");
        let d = bit_diffs(&deq, &ops.f32s(&format!("{name}.dequant")));
        assert!(
            d.is_empty(),
            "{name}: dequantized values {:?} differ",
            &d[..d.len().min(8)]
        );
        exact += 1;
    }
    println!("quantize_4bit: {exact}/{} cases bit-exact", cases.len());
}

#[test]
fn blockwise_8bit_is_bitsandbytes() {
    let ops = Ops::load();
    let cases = ops.cases("quantize_blockwise");
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        let bs = c["blocksize"].as_u64().expect("bs") as usize;
        let map = dynamic_map(c["map"] == "signed");
        let x = ops.f32s(&format!("{name}.input"));
        let q = quantize_blockwise(&x, &map, bs).expect("quantize");
        let want = ops.raw(&format!("{name}.codes"));
        let bad: Vec<usize> = (0..want.len()).filter(|&i| want[i] != q.codes[i]).collect();
        assert!(bad.is_empty(), "{name}: codes {bad:?} differ");
        let d = bit_diffs(&q.absmax, &ops.f32s(&format!("{name}.absmax")));
        assert!(d.is_empty(), "{name}: absmax {d:?} differ");
        let deq = dequantize_blockwise(&q.codes, &q.absmax, &map, bs).expect("dequantize");
        let d = bit_diffs(&deq, &ops.f32s(&format!("{name}.dequant")));
        assert!(d.is_empty(), "{name}: dequantized {d:?} differ");
    }
    println!(
        "quantize_blockwise: {}/{} cases bit-exact",
        cases.len(),
        cases.len()
    );
}

#[test]
fn int8_is_bitsandbytes() {
    let ops = Ops::load();
    let cases = ops.cases("int8");
    for c in &cases {
        let name = c["name"].as_str().expect("name");
        let thr = c["threshold"].as_f64().expect("threshold") as f32;
        let s = shape(c);
        let (rows, cols) = (s[0], s[1]);
        let x = ops.f32s(&format!("{name}.input"));

        let (r, outlier_cols) = int8_vectorwise_quant(&x, rows, cols, thr).expect("rows");
        assert_eq!(
            r.codes,
            ops.i8s(&format!("{name}.codes")),
            "{name}: row codes"
        );
        let d = bit_diffs(&r.scales, &ops.f32s(&format!("{name}.row_stats")));
        assert!(d.is_empty(), "{name}: row stats {d:?}");
        let cols_want: Vec<usize> = ops
            .i64s(&format!("{name}.outlier_cols"))
            .iter()
            .map(|&c| c as usize)
            .collect();
        assert_eq!(outlier_cols, cols_want, "{name}: outlier columns");
        let deq = int8_vectorwise_dequant(&r.codes, &r.scales, cols).expect("dequant");
        let d = bit_diffs(&deq, &ops.f32s(&format!("{name}.dequant")));
        assert!(d.is_empty(), "{name}: dequantized {d:?}");

        let k = int8_colwise_quant(&x, rows, cols, thr).expect("cols");
        assert_eq!(
            k.codes,
            ops.i8s(&format!("{name}.col_codes")),
            "{name}: col codes"
        );
        let d = bit_diffs(&k.col_stats, &ops.f32s(&format!("{name}.col_stats")));
        assert!(d.is_empty(), "{name}: col stats {d:?}");
    }
    println!("int8: {}/{} cases bit-exact", cases.len(), cases.len());
}
