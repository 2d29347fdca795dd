//! The MLP in tiles (long sequences whose layers are recomputed for the backward) gives the
//! losses and LoRA gradients of the whole MLP, for a plain (Llama), a fused (Phi-3) and a
//! sandwich-normed (Gemma 2) layer; with dropout, the gradients it returns are those of the
//! losses it reports (the tiles' forward and their rebuild draw the same masks).

mod common;

use std::sync::Arc;

use temper_core::{Backend, CpuBackend};
use temper_model::init::{shape, write_random_model};
use temper_model::lora::LoraParams;
use temper_model::{Checkpointing, LmRows, Model, StepCtx};

/// 48 tokens in two sequences of 24.
fn rows() -> LmRows {
    LmRows::new((0..48).map(|i| (i * 37 + 11) % 500).collect(), 24)
}

fn load(name: &str) -> (tempfile::TempDir, Arc<CpuBackend>, Model<CpuBackend>) {
    let s = shape(name).unwrap_or_else(|| panic!("shape {name}"));
    let dir = tempfile::tempdir().expect("tempdir");
    write_random_model(s, dir.path(), 5).expect("writes");
    let be = Arc::new(CpuBackend::new());
    let model = Model::load(be.clone(), dir.path()).expect("loads");
    (dir, be, model)
}

/// The mean loss and every LoRA gradient of one forward and backward.
fn step(
    be: &CpuBackend,
    model: &Model<CpuBackend>,
    lora: &mut LoraParams<CpuBackend>,
    ckpt: Checkpointing,
    ctx: &StepCtx,
) -> (f64, Vec<Vec<f32>>) {
    let rows = rows();
    lora.zero_grads(be).expect("zero grads");
    let scale = 1.0 / rows.loss_tokens() as f32;
    let losses = model
        .forward_backward(lora, &rows.batch(), scale, ckpt, ctx)
        .expect("forward_backward");
    let mean = losses.iter().map(|&l| l as f64).sum::<f64>() * scale as f64;
    let grads = lora
        .params
        .iter()
        .map(|p| be.download(&p.grad).expect("grad"))
        .collect();
    (mean, grads)
}

fn max_abs(grads: &[Vec<f32>]) -> f32 {
    grads.iter().flatten().fold(0.0f32, |m, g| m.max(g.abs()))
}

#[test]
fn tiled_mlp_gives_the_whole_mlps_losses_and_gradients() {
    for name in ["tiny", "phi3-tiny", "gemma2-tiny"] {
        let (_dir, be, mut model) = load(name);
        let mut lora = common::random_adapter(&*be, &model, 0.0);
        model.mlp_tile_tokens = usize::MAX;
        let (loss_whole, grads_whole) = step(
            &be,
            &model,
            &mut lora,
            Checkpointing::EveryLayer,
            &StepCtx::eval(),
        );
        let scale = max_abs(&grads_whole);
        assert!(scale > 0.0, "{name}: no gradient");
        // 3 tiles of 16 (across the two sequences' boundary), then 7 tiles of 7 and one of 6.
        for tile in [16, 7] {
            model.mlp_tile_tokens = tile;
            for ckpt in [Checkpointing::EveryLayer, Checkpointing::EveryLayerOnHost] {
                let (loss, grads) = step(&be, &model, &mut lora, ckpt, &StepCtx::eval());
                assert!(
                    (loss - loss_whole).abs() <= 1e-6 * loss_whole.abs(),
                    "{name}, tiles of {tile}, {ckpt:?}: loss {loss} vs {loss_whole}"
                );
                for (p, (g, w)) in lora.params.iter().zip(grads.iter().zip(&grads_whole)) {
                    let diff = g
                        .iter()
                        .zip(w)
                        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        diff <= 1e-4 * scale,
                        "{name}, tiles of {tile}, {ckpt:?}: {} differs by {diff} (largest \
                         gradient {scale})",
                        p.key
                    );
                }
            }
        }
        // Without checkpointing nothing is rebuilt, so the MLP stays whole whatever the tile.
        model.mlp_tile_tokens = 16;
        let (loss_off, grads_off) =
            step(&be, &model, &mut lora, Checkpointing::Off, &StepCtx::eval());
        assert!(
            (loss_off - loss_whole).abs() <= 1e-6 * loss_whole.abs(),
            "{name}"
        );
        assert!(max_abs(&grads_off) > 0.0, "{name}");
        println!("{name}: loss {loss_whole:.6}, largest gradient {scale:.4e}");
    }
}

/// With dropout the masks of a tile must be the same in the forward that reports the loss and
/// in the rebuild that gives the gradients: the gradient's length is then the loss's slope
/// along it, measured by central differences.
#[test]
fn tiled_mlp_with_dropout_returns_the_gradient_of_its_loss() {
    let (_dir, be, mut model) = load("tiny");
    let mut lora = common::random_adapter(&*be, &model, 0.2);
    let ctx = StepCtx {
        training: true,
        seed: 7,
    };
    for tile in [usize::MAX, 16] {
        model.mlp_tile_tokens = tile;
        let (_, grads) = step(&be, &model, &mut lora, Checkpointing::EveryLayer, &ctx);
        let norm = grads
            .iter()
            .flatten()
            .map(|&g| (g as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let values: Vec<Vec<f32>> = lora
            .params
            .iter()
            .map(|p| be.download(&p.value).expect("value"))
            .collect();
        let eps = 1e-3;
        let mut at = |sign: f64| -> f64 {
            for (p, (v, g)) in lora.params.iter_mut().zip(values.iter().zip(&grads)) {
                let moved: Vec<f32> = v
                    .iter()
                    .zip(g)
                    .map(|(&v, &g)| (v as f64 + sign * eps * g as f64 / norm) as f32)
                    .collect();
                p.value = be.upload(&moved).expect("upload");
            }
            step(&be, &model, &mut lora, Checkpointing::EveryLayer, &ctx).0
        };
        let slope = (at(1.0) - at(-1.0)) / (2.0 * eps);
        assert!(
            (slope - norm).abs() <= 0.01 * norm,
            "tiles of {tile}: the loss's slope along the gradient {slope} vs its length {norm}"
        );
        for (p, v) in lora.params.iter_mut().zip(&values) {
            p.value = be.upload(v).expect("upload");
        }
        println!("tiles of {tile}: slope {slope:.6e}, gradient length {norm:.6e}");
    }
}

/// Evaluation and generation run the MLP in tiles too (nothing is kept for a backward there):
/// the logits equal the whole MLP's.
#[test]
fn tiled_mlp_gives_the_whole_mlps_logits() {
    for name in ["tiny", "gemma2-tiny"] {
        let (_dir, be, mut model) = load(name);
        let lora = common::random_adapter(&*be, &model, 0.0);
        let rows = rows();
        model.mlp_tile_tokens = usize::MAX;
        let whole = model.logits(Some(&lora), &rows.batch()).expect("logits");
        model.mlp_tile_tokens = 16;
        let tiled = model.logits(Some(&lora), &rows.batch()).expect("logits");
        let scale = whole.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = whole
            .iter()
            .zip(&tiled)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-5 * scale,
            "{name}: logits differ by {diff} (largest {scale})"
        );
    }
}
