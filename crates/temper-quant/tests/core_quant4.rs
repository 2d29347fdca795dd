//! `Quant4` (the weights the backends hold; its `dequantize_into` is the CPU twin of the CUDA
//! `dequant4_*` kernels) built from a `QuantState` dequantises to the same bits, so the
//! backend's 4-bit path matches bitsandbytes' fixtures too.

mod common;

use temper_quant::{load_4bit_folder, Quant4, QuantState, QuantType};

fn same_bits(qs: &QuantState, what: &str) {
    let q = Quant4::from_state(qs);
    q.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut core = vec![0.0f32; q.numel];
    q.dequantize_into(&mut core).expect("core dequantize");
    let mine = qs.dequantize_to_f32().expect("dequantize");
    let diff = (0..core.len())
        .filter(|&i| core[i].to_bits() != mine[i].to_bits())
        .count();
    assert_eq!(diff, 0, "{what}: {diff} values differ");
}

#[test]
fn quant4_dequantises_bitsandbytes_fixtures_bit_for_bit() {
    let ops = common::Ops::load();
    for c in ops.cases("quantize_4bit") {
        let name = c["name"].as_str().expect("name");
        let qt = QuantType::parse(c["quant_type"].as_str().expect("qt")).expect("nf4|fp4");
        let qs = QuantState::quantize(
            &ops.f32s(&format!("{name}.input")),
            &common::shape(&c),
            c["dtype"].as_str().expect("dtype"),
            c["blocksize"].as_u64().expect("bs") as usize,
            qt,
            c["nested"].as_bool().expect("nested"),
        )
        .expect("quantize");
        same_bits(&qs, name);
    }
    let model = common::fixtures().join("model");
    for variant in ["nf4_dq", "fp4"] {
        for (name, qs) in load_4bit_folder(&model.join(variant)).expect("load") {
            same_bits(&qs, &format!("{variant}: {name}"));
        }
    }
}
