//! `temper init-model`'s small shapes of every family write folders temper loads as that
//! family, holding exactly the parameters the memory plan counts, and a LoRA step on every
//! linear layer runs on them.

use std::sync::Arc;

use temper_core::CpuBackend;
use temper_model::config::Arch;
use temper_model::init::{shape, write_random_model};
use temper_model::lora::{LoraConfig, LoraParams, Target};
use temper_model::{plan, Checkpointing, LmRows, Model, ModelConfig, StepCtx};

fn check(name: &str, arch: Arch, linears: &[Target]) {
    let s = shape(name).unwrap_or_else(|| panic!("shape {name}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let params = write_random_model(s, dir.path(), 3).expect("writes");
    let cfg = ModelConfig::from_dir(dir.path()).expect("config resolves");
    assert_eq!(cfg.arch, arch, "{name}");
    assert_eq!(cfg.linears(), linears, "{name}");
    // The planned values are the folder's parameters (the RoPE tables are counted apart).
    assert_eq!(
        plan::weight_values(&cfg),
        params,
        "{name}: planned parameters"
    );

    let be = Arc::new(CpuBackend::new());
    let model = Model::load(be.clone(), dir.path()).expect("loads");
    let lora_cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut lora = LoraParams::init(&*be, &model.cfg, &lora_cfg, 1).expect("lora");
    assert_eq!(lora.config.targets, linears, "{name}: all-linear");
    let rows = LmRows::new((0..48).map(|i| (i * 7 + 3) % 500).collect(), 24);
    let losses = model
        .forward_backward(
            &mut lora,
            &rows.batch(),
            1.0 / rows.loss_tokens() as f32,
            Checkpointing::EveryLayer,
            &StepCtx::eval(),
        )
        .expect("forward_backward");
    let mean = losses.iter().sum::<f32>() / rows.loss_tokens() as f32;
    // Random weights of std 0.02 give nearly uniform logits: the loss is about ln(vocab).
    let uniform = (cfg.vocab as f32).ln();
    assert!(
        (mean - uniform).abs() < 0.1 * uniform,
        "{name}: loss {mean} vs ln(vocab) {uniform}"
    );
    println!("{name}: {params} parameters, loss {mean:.4} (ln vocab {uniform:.4})");
}

#[test]
fn llama_and_qwen3_tiny_shapes_load() {
    check("tiny", Arch::Llama, &Target::ALL);
    check("qwen3-tiny", Arch::Qwen3, &Target::ALL);
}

#[test]
fn phi3_tiny_shape_loads_with_fused_projections() {
    check("phi3-tiny", Arch::Phi3, &Target::FUSED);
}

#[test]
fn gemma_tiny_shapes_load() {
    check("gemma-tiny", Arch::Gemma, &Target::ALL);
    check("gemma2-tiny", Arch::Gemma2, &Target::ALL);
    check("gemma3-tiny", Arch::Gemma3, &Target::ALL);
}
