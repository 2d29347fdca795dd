//! Folders saved in 4 bits by transformers + bitsandbytes (`save_pretrained` after
//! `from_pretrained(load_in_4bit=True)`, crates/temper-quant/tests/fixtures/bnb/model) load
//! as stored, without requantising, and give transformers' losses.
//!
//! tests/fixtures/prequant/<folder>.json holds three fixed rows of token ids, the per-row
//! losses (labels = input ids) and row 0's logits that transformers + bitsandbytes 0.50
//! computed on the CPU from the same folder in f32 (scripts/make_prequant_loss_fixture.py
//! says how). Here temper's CPU backend loads the folder with `Model::load`, must hold every
//! linear weight as `Frozen::Quant4`, and must reproduce those numbers.

use std::sync::Arc;

use temper_core::{Backend, CpuBackend};
use temper_model::weights::{Frozen, Weights};
use temper_model::{LoadOptions, Model, QuantType, QuantizeOnLoad};

/// Relative tolerance on each row's mean loss and on row 0's logits (max |diff| / max |want|).
/// Both sides dequantise to f32 and compute in f32, so what is left is the order of f32
/// sums (GEMMs, softmax, RMSNorm): measured 1.4e-7 on the losses and 3e-7 on the logits.
const TOL: f64 = 1e-5;

mod common;
use common::{bnb_models, logits, max_abs_diff, rel_err, row_losses, worst_rel, FixtureJson};

struct Fixture {
    rows: Vec<Vec<u32>>,
    losses: Vec<f64>,
    logits_row0: Vec<f32>,
    losses_saved_compute_dtype: Vec<f64>,
    saved_compute_dtype: String,
}

fn fixture(folder: &str) -> Fixture {
    let j = FixtureJson::open(folder);
    Fixture {
        rows: j.rows(),
        losses: j.f64s("losses"),
        logits_row0: j.f32s("logits_row0"),
        losses_saved_compute_dtype: j.f64s("losses_saved_compute_dtype"),
        saved_compute_dtype: j.str("saved_compute_dtype"),
    }
}

/// Every linear weight of every layer, dequantised to f32 (panics unless held in 4 bits).
fn dequantised<B: Backend>(be: &B, w: &Weights<B>) -> Vec<(String, Vec<f32>)> {
    common::dequantised(be, w, |name, lin, buf| {
        let Frozen::Quant4(q) = &lin.w else {
            panic!("{name}: not held in 4 bits");
        };
        be.dequantize4(buf, q).expect("dequantize4");
    })
}

fn check_folder(folder: &str) {
    let be = Arc::new(CpuBackend::new());
    let fx = fixture(folder);
    let model = Model::load(be.clone(), &bnb_models().join(folder)).expect("4-bit folder loads");
    // Loaded as stored: all 7 linears of both layers in 4 bits.
    let weights = dequantised(&*be, &model.weights);
    assert_eq!(weights.len(), 7 * model.cfg.layers);

    let got = row_losses(&model, &fx.rows);
    let loss_err = worst_rel(&got, &fx.losses);
    let row0 = logits(&model, &fx.rows[0]);
    let logits_err = rel_err(&row0, &fx.logits_row0);

    // How much of the logits the 4-bit layers make: temper's logits with those layers
    // zeroed differ from the real ones by this much; the error must be a tiny part of it.
    let mut zeroed = Model::load(be.clone(), &bnb_models().join(folder)).expect("loads");
    for layer in &mut zeroed.weights.layers {
        for lin in layer.linears.iter_mut().flatten() {
            lin.w = Frozen::Dense(be.zeros(lin.d_out * lin.d_in).expect("zeros"));
        }
    }
    let contribution = max_abs_diff(&row0, &logits(&zeroed, &fx.rows[0]));
    let err_of_contribution = max_abs_diff(&row0, &fx.logits_row0) / contribution;

    let saved_err = worst_rel(&got, &fx.losses_saved_compute_dtype);
    println!(
        "{folder}: losses {got:?} vs transformers {:?}: worst relative error {loss_err:.2e}; \
         row-0 logits {logits_err:.2e} (max |diff| {:.2e} = {err_of_contribution:.2e} of what the \
         4-bit layers add, {contribution:.3e}); vs transformers with its saved compute dtype \
         {} (and bf16 embedding/norms/head) {saved_err:.2e}",
        fx.losses,
        max_abs_diff(&row0, &fx.logits_row0),
        fx.saved_compute_dtype
    );
    assert!(loss_err <= TOL, "{folder}: losses off by {loss_err:.2e}");
    assert!(
        logits_err <= TOL,
        "{folder}: logits off by {logits_err:.2e}"
    );
    assert!(
        err_of_contribution <= 1e-3,
        "{folder}: logits off by {err_of_contribution:.2e} of the 4-bit layers' part"
    );
    // transformers' own 16-bit run: only rounding apart from the f32 run.
    assert!(
        saved_err <= 1e-3,
        "{folder}: {saved_err:.2e} from transformers' {} run",
        fx.saved_compute_dtype
    );
}

#[test]
fn nf4_double_quant_folder_saved_by_bitsandbytes_gives_transformers_losses() {
    check_folder("nf4_dq");
}

#[test]
fn fp4_folder_saved_by_bitsandbytes_gives_transformers_losses() {
    check_folder("fp4");
}

/// The two folders' losses differ by far more than the tolerance: the comparison above would
/// see a wrong code table or scales.
#[test]
fn nf4_and_fp4_losses_differ_by_far_more_than_the_tolerance() {
    let (a, b) = (fixture("nf4_dq"), fixture("fp4"));
    assert_eq!(a.rows, b.rows);
    let apart = worst_rel(&a.losses, &b.losses);
    println!("nf4_dq vs fp4 losses: {apart:.2e} apart");
    assert!(apart > 20.0 * TOL, "{apart:.2e}");
}

/// The 4-bit folders bitsandbytes saved from `src`, with the load options that quantise
/// `src` the same way (blocksize 64; nf4 with double quantisation, fp4 without).
fn saved_folders() -> [(&'static str, LoadOptions); 2] {
    let opts = |quant_type, double_quant| LoadOptions {
        quantize: Some(QuantizeOnLoad {
            quant_type,
            blocksize: 64,
            double_quant,
        }),
        int8: false,
    };
    [
        ("nf4_dq", opts(QuantType::Nf4, true)),
        ("fp4", opts(QuantType::Fp4, false)),
    ]
}

/// Quantising the bf16 original while loading gives bit for bit the weights bitsandbytes
/// saved (same settings: blocksize 64; nf4 with double quantisation, fp4 without).
#[test]
fn quantising_the_original_on_load_gives_the_saved_weights_bit_for_bit() {
    let be = CpuBackend::new();
    let models = bnb_models();
    let cfg = temper_model::ModelConfig::from_dir(&models.join("src")).expect("config");
    for (folder, opts) in saved_folders() {
        let ours = Weights::load_with(&be, &cfg, &models.join("src"), &opts).expect("quantise");
        let saved = Weights::load(&be, &cfg, &models.join(folder)).expect("4-bit folder");
        let (ours, saved) = (dequantised(&be, &ours), dequantised(&be, &saved));
        assert_eq!(ours.len(), 14);
        for ((name, a), (_, b)) in ours.iter().zip(&saved) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{folder} {name}: dequantised weights differ");
            assert!(a.iter().any(|&x| x != 0.0), "{folder} {name}: all zero");
        }
    }
}

/// The same on the GPU: the CUDA backend quantises each tensor of the bf16 original on the
/// device while loading, and the codes and scales it holds are the bytes bitsandbytes saved.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantising_on_the_gpu_while_loading_gives_the_saved_bytes() {
    use temper_core::{CudaBackend, DType};
    use temper_quant::Absmax4;
    let be = CudaBackend::with_dtype(0, DType::BF16).unwrap_or_else(|e| panic!("CUDA: {e}"));
    let models = bnb_models();
    let cfg = temper_model::ModelConfig::from_dir(&models.join("src")).expect("config");
    for (folder, opts) in saved_folders() {
        let ours = Weights::load_with(&be, &cfg, &models.join("src"), &opts).expect("quantise");
        let saved = temper_quant::load_4bit_folder(&models.join(folder)).expect("4-bit folder");
        let mut compared = 0;
        for (l, layer) in ours.layers.iter().enumerate() {
            for t in temper_model::Target::ALL {
                let name = format!("model.layers.{l}.{}.weight", t.path());
                let Frozen::Quant4(q) = &layer.linear(t).expect("linear").w else {
                    panic!("{name}: not held in 4 bits");
                };
                let got = be.download_quant4(q).expect("download");
                let want = temper_quant::Quant4::from_state(&saved[&name]);
                assert_eq!(got.bytes, want.bytes, "{folder} {name}: packed codes");
                match (&got.absmax, &want.absmax) {
                    (Absmax4::Plain(a), Absmax4::Plain(b)) => {
                        assert_eq!(a, b, "{folder} {name}: absmax")
                    }
                    (
                        Absmax4::Nested {
                            codes: ca,
                            nested_absmax: na,
                            offset: oa,
                            ..
                        },
                        Absmax4::Nested {
                            codes: cb,
                            nested_absmax: nb,
                            offset: ob,
                            ..
                        },
                    ) => {
                        assert_eq!(ca, cb, "{folder} {name}: nested codes");
                        assert_eq!(na, nb, "{folder} {name}: nested absmax");
                        assert_eq!(oa.to_bits(), ob.to_bits(), "{folder} {name}: offset");
                    }
                    _ => panic!("{folder} {name}: double quantisation differs"),
                }
                compared += 1;
            }
        }
        assert_eq!(compared, 7 * cfg.layers);
    }
}
