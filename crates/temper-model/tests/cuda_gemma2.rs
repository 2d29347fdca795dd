//! Gemma 2 on the GPU: soft-capped attention (the capped flash kernels), sliding layers and the
//! capped logits, one forward and backward of a random `gemma2-tiny` in bf16 against the same
//! model on the CPU in f32. The kernels alone are twins in temper-core's `cuda_twins`; this
//! checks that the model reaches them with its cap, window and scale.

mod common;

use std::path::Path;
use std::sync::Arc;

use temper_core::{Backend, CpuBackend, CudaBackend, DType};
use temper_model::init::{shape, write_random_model};
use temper_model::{Checkpointing, LmRows, Model, StepCtx};

/// 96 tokens in two sequences of 48: longer than the sliding window the test sets (16).
fn rows() -> LmRows {
    LmRows::new((0..96).map(|i| (i * 37 + 11) % 2000).collect(), 48)
}

/// A random gemma2-tiny whose attention cap (0.5) bends most scores and whose window (16) is
/// shorter than the sequences.
fn write_model(dir: &Path) {
    let s = shape("gemma2-tiny").expect("shape");
    write_random_model(s, dir, 5).expect("writes");
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    cfg["attn_logit_softcapping"] = 0.5.into();
    cfg["sliding_window"] = 16.into();
    std::fs::write(&path, cfg.to_string()).expect("config written");
}

/// The mean loss and every LoRA gradient (concatenated) of one forward and backward.
fn step<B: Backend>(be: Arc<B>, dir: &Path) -> (f64, Vec<f32>) {
    let model = Model::load(be.clone(), dir).expect("loads");
    let mut lora = common::random_adapter(&*be, &model, 0.0);
    let rows = rows();
    let scale = 1.0 / rows.loss_tokens() as f32;
    let ctx = StepCtx {
        training: true,
        seed: 3,
    };
    let losses = model
        .forward_backward(
            &mut lora,
            &rows.batch(),
            scale,
            Checkpointing::EveryLayer,
            &ctx,
        )
        .expect("forward_backward");
    let mean = losses.iter().map(|&l| l as f64).sum::<f64>() * scale as f64;
    let mut grads = vec![];
    for p in &lora.params {
        grads.extend(be.download(&p.grad).expect("grad"));
    }
    (mean, grads)
}

/// |a - b| / |b| over the whole vector.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn gemma2_soft_capped_step_on_cuda_matches_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(dir.path());
    let (cpu_loss, cpu_grads) = step(Arc::new(CpuBackend::new()), dir.path());

    // The cap bites: without it the CPU's gradients move by more than the tolerance below, so
    // a kernel that ignored the cap would fail.
    let path = dir.path().join("config.json");
    let capped = std::fs::read_to_string(&path).expect("config");
    let mut cfg: serde_json::Value = serde_json::from_str(&capped).expect("json");
    cfg["attn_logit_softcapping"] = serde_json::Value::Null;
    std::fs::write(&path, cfg.to_string()).expect("config written");
    let (free_loss, free_grads) = step(Arc::new(CpuBackend::new()), dir.path());
    let moved = rel_err(&free_grads, &cpu_grads);
    println!(
        "cpu: loss {cpu_loss:.5} with the cap, {free_loss:.5} without; grads moved by {moved:.2e}"
    );
    assert!(
        moved > 0.1,
        "the cap of 0.5 moves the gradients by {moved:.2e} only"
    );
    std::fs::write(&path, capped).expect("config written");

    let gpu = CudaBackend::with_dtype(0, DType::BF16).expect("CUDA backend");
    let (gpu_loss, gpu_grads) = step(Arc::new(gpu), dir.path());
    let loss_err = (gpu_loss - cpu_loss).abs() / cpu_loss.abs();
    let grad_err = rel_err(&gpu_grads, &cpu_grads);
    println!("gpu bf16: loss {gpu_loss:.5} (rel {loss_err:.2e}), grads rel {grad_err:.2e}");
    assert!(loss_err < 2e-2, "loss off by {loss_err:.2e}");
    assert!(grad_err < 5e-2, "LoRA gradients off by {grad_err:.2e}");
}
