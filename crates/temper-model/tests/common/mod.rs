//! Helpers shared by the tests that compare quantised folders with bitsandbytes' numbers
//! (prequantized.rs, int8.rs): the fixture files, per-row losses and error measures; and the
//! random adapter of the model tests that need nonzero LoRA gradients (mlp_tiles.rs,
//! cuda_gemma2.rs).
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::Backend;
use temper_model::lora::{LoraConfig, LoraParams};
use temper_model::weights::{Linear, Weights};
use temper_model::{LmRows, Model, Target};

/// The folders transformers + bitsandbytes saved (crates/temper-quant/tests/fixtures/bnb/model).
pub fn bnb_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../temper-quant/tests/fixtures/bnb/model")
}

/// tests/fixtures/prequant/<name>.json, written by scripts/make_prequant_loss_fixture.py.
pub struct FixtureJson(serde_json::Value);

impl FixtureJson {
    pub fn open(name: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/prequant")
            .join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).expect("fixture json");
        FixtureJson(serde_json::from_str(&text).expect("valid json"))
    }

    /// The token ids of each row.
    pub fn rows(&self) -> Vec<Vec<u32>> {
        self.0["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_u64().expect("token id") as u32)
                    .collect()
            })
            .collect()
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        self.0[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}"))
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        self.f64s(key).iter().map(|&x| x as f32).collect()
    }

    pub fn str(&self, key: &str) -> String {
        self.0[key].as_str().expect(key).to_string()
    }
}

/// Each row's mean loss, every row run alone (as transformers ran them).
pub fn row_losses<B: Backend>(model: &Model<B>, rows: &[Vec<u32>]) -> Vec<f64> {
    rows.iter()
        .map(|ids| {
            let r = LmRows::new(ids.clone(), ids.len());
            let losses = model.token_losses(None, &r.batch()).expect("losses");
            losses.iter().map(|&x| x as f64).sum::<f64>() / r.loss_tokens() as f64
        })
        .collect()
}

/// One row's logits (len, vocab).
pub fn logits<B: Backend>(model: &Model<B>, ids: &[u32]) -> Vec<f32> {
    let r = LmRows::new(ids.to_vec(), ids.len());
    model.logits(None, &r.batch()).expect("logits")
}

/// max |got - want| / max |want|
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    max_abs_diff(got, want) / scale.max(1e-30)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
}

/// The worst |got - want| / |want| over the elements.
pub fn worst_rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs() / w.abs()))
}

/// Every linear weight of every layer, dequantised to f32 by `dequantise` (named
/// `layers.<l>.<path>`); `dequantise` panics on a weight not held as the test expects.
pub fn dequantised<B: Backend>(
    be: &B,
    w: &Weights<B>,
    dequantise: impl Fn(&str, &Linear<B>, &mut B::Buf),
) -> Vec<(String, Vec<f32>)> {
    let mut out = vec![];
    for (l, layer) in w.layers.iter().enumerate() {
        for t in Target::ALL {
            let lin = layer.linear(t).expect("the layer has this linear");
            let name = format!("layers.{l}.{}", t.path());
            let mut buf = be.zeros(lin.d_out * lin.d_in).expect("zeros");
            dequantise(&name, lin, &mut buf);
            out.push((name, be.download(&buf).expect("download")));
        }
    }
    out
}

/// An adapter of rank 4 (alpha 8) on every linear layer with A and B both uniform in
/// [-0.2, 0.2) from one seed (B is zero in a fresh adapter, which would leave A's gradients
/// zero): the same values on every backend.
pub fn random_adapter<B: Backend>(be: &B, model: &Model<B>, dropout: f32) -> LoraParams<B> {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    LoraParams::build(be, &model.cfg, &cfg, |_, shape, _| {
        Ok((0..shape[0] * shape[1])
            .map(|_| rng.random_range(-0.2f32..0.2))
            .collect())
    })
    .expect("adapter")
}
