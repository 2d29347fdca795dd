//! `quantize_folder` against transformers + bitsandbytes `save_pretrained` (the tiny Llama of
//! tests/fixtures/bnb/model, quantised on the CPU by scripts/make_bnb_fixtures.py), and
//! `load_4bit_folder` on what they saved.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use temper_quant::{
    load_4bit_folder, quantize_folder, ComputeDtype, QuantError, QuantState, QuantType,
    QuantizeOptions,
};

/// Every tensor of a folder: name -> (dtype, shape, bytes).
fn tensors(dir: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).expect("read");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        for (name, v) in st.tensors() {
            out.insert(name, (v.dtype(), v.shape().to_vec(), v.data().to_vec()));
        }
    }
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
}

fn same_as_transformers(variant: &str, opts: QuantizeOptions) {
    let model = common::fixtures().join("model");
    let out = tempfile::tempdir().expect("tempdir");
    let dst = out.path().join("q");
    let s = quantize_folder(&model.join("src"), &dst, &opts).expect("quantize_folder");
    assert_eq!(s.quantized, 14, "2 layers x 7 projections");
    assert_eq!(s.copied, 7, "embeddings, 5 norms, lm_head");
    assert_eq!(s.shards, 4);
    assert!(dst.join("model.safetensors.index.json").exists());
    assert!(dst.join("generation_config.json").exists());

    let want = tensors(&model.join(variant));
    let got = tensors(&dst);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    for (name, (dt, shape, bytes)) in &want {
        let (gdt, gshape, gbytes) = &got[name];
        assert_eq!((dt, shape), (gdt, gshape), "{name}: dtype and shape");
        if bytes != gbytes {
            let n = bytes.iter().zip(gbytes).filter(|(a, b)| a != b).count();
            panic!("{variant}: {name}: {n} of {} bytes differ", bytes.len());
        }
    }
    // config.json: the source's keys plus quantization_config, as transformers writes it.
    assert_eq!(
        json(&dst.join("config.json")),
        json(&model.join(variant).join("config.json")),
        "{variant}: config.json"
    );
    let index = json(&dst.join("model.safetensors.index.json"));
    assert_eq!(
        index["weight_map"].as_object().expect("weight_map").len(),
        got.len()
    );
    println!(
        "{variant}: {} tensors byte-identical to transformers + bitsandbytes",
        got.len()
    );
}

#[test]
fn nf4_double_quant_folder_is_what_transformers_saves() {
    same_as_transformers(
        "nf4_dq",
        QuantizeOptions {
            quant_type: QuantType::Nf4,
            double_quant: true,
            compute_dtype: ComputeDtype::BFloat16,
            ..Default::default()
        },
    );
}

#[test]
fn fp4_folder_is_what_transformers_saves() {
    same_as_transformers(
        "fp4",
        QuantizeOptions {
            quant_type: QuantType::Fp4,
            double_quant: false,
            compute_dtype: ComputeDtype::Float16,
            ..Default::default()
        },
    );
}

#[test]
fn load_4bit_folder_reads_bitsandbytes_output_without_requantising() {
    let model = common::fixtures().join("model");
    let src = tensors(&model.join("src"));
    for (variant, qt, double) in [
        ("nf4_dq", QuantType::Nf4, true),
        ("fp4", QuantType::Fp4, false),
    ] {
        let weights = load_4bit_folder(&model.join(variant)).expect("load");
        assert_eq!(weights.len(), 14);
        for (name, qs) in &weights {
            let (dt, shape, bytes) = &src[name];
            assert_eq!(*dt, Dtype::BF16);
            let x: Vec<f32> = bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            let mine = QuantState::quantize(&x, shape, "bfloat16", 64, qt, double).expect("q");
            assert_eq!(qs, &mine, "{variant}: {name}");
            // Dequantised weights are close to the originals: each error is at most half the
            // widest gap between neighbouring codes (NF4: (1 - 0.6961928) / 2, FP4: 1/6) times
            // the block absmax (plus the double quantisation error of that absmax).
            let deq = qs.dequantize_to_f32().expect("dequantize");
            let absmax = qs.absmax_f32().expect("absmax");
            let half_gap = if qt == QuantType::Nf4 { 0.1520 } else { 0.1667 };
            for (i, (&d, &v)) in deq.iter().zip(&x).enumerate() {
                let a = absmax[i / 64];
                assert!(
                    (d - v).abs() <= half_gap * a * 1.02 + 1e-6,
                    "{name}[{i}]: {d} vs {v}"
                );
            }
        }
    }
}

#[test]
fn refuses_a_quantised_model_and_a_non_empty_out_folder() {
    let model = common::fixtures().join("model");
    let out = tempfile::tempdir().expect("tempdir");
    let e = quantize_folder(
        &model.join("nf4_dq"),
        &out.path().join("a"),
        &Default::default(),
    )
    .expect_err("already quantised");
    assert!(e.to_string().contains("already quantised"), "{e}");

    std::fs::write(out.path().join("notes.txt"), "x").expect("write");
    let e = quantize_folder(&model.join("src"), out.path(), &Default::default())
        .expect_err("non-empty out");
    assert!(e.to_string().contains("--force"), "{e}");
    let opts = QuantizeOptions {
        force: true,
        ..Default::default()
    };
    quantize_folder(&model.join("src"), out.path(), &opts).expect("with force");
    assert!(
        out.path().join("notes.txt").exists(),
        "other files are left alone"
    );

    let e = quantize_folder(&out.path().join("missing"), &out.path().join("b"), &opts)
        .expect_err("missing");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = quantize_folder(&model.join("src"), &model.join("src"), &opts).expect_err("in place");
    assert!(matches!(e, QuantError::Folder { .. }), "{e}");

    let bad = QuantizeOptions {
        blocksize: 48,
        ..Default::default()
    };
    let e = quantize_folder(&model.join("src"), &out.path().join("c"), &bad).expect_err("bs");
    assert!(matches!(e, QuantError::Blocksize { .. }), "{e}");

    let e = load_4bit_folder(&model.join("src")).expect_err("not 4-bit");
    assert!(e.to_string().contains("temper quantize"), "{e}");
}
