//! temper-core's `Quant4` (the weights the backends hold; its `dequantize_into` is the CPU
//! twin of the CUDA `dequant4_*` kernels) built from temper-quant's `QuantState` dequantises
//! to the same bits, so the backend's 4-bit path matches bitsandbytes' fixtures too.

mod common;

use temper_core::{Absmax4, Quant4};
use temper_quant::{load_4bit_folder, Absmax, QuantState, QuantType, NESTED_BLOCKSIZE};

fn to_quant4(qs: &QuantState) -> Quant4 {
    Quant4 {
        code: *qs.quant_type.code(),
        blocksize: qs.blocksize,
        numel: qs.numel(),
        bytes: qs.bytes.clone(),
        absmax: match &qs.absmax {
            Absmax::Plain(a) => Absmax4::Plain(a.clone()),
            Absmax::Nested(n) => Absmax4::Nested {
                codes: n.codes.clone(),
                map: n.map.clone(),
                nested_absmax: n.nested_absmax.clone(),
                nested_blocksize: NESTED_BLOCKSIZE,
                offset: n.offset,
            },
        },
    }
}

fn same_bits(qs: &QuantState, what: &str) {
    let q = to_quant4(qs);
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
