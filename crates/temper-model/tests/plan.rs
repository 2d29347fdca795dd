//! The memory plan against the CPU backend's measured peak for the same step: the plan must
//! not under-predict, and must stay within 10% of what was really allocated.

use std::path::Path;
use std::sync::Arc;

use temper_core::{Backend, CpuBackend};
use temper_model::plan::{plan, PlanDevice};
use temper_model::{Checkpointing, LmRows, LoraConfig, LoraParams, Model, StepCtx, Target};

fn measured_and_predicted(dir: &Path, ckpt: Checkpointing, dropout: f32) -> (usize, usize) {
    let be = Arc::new(CpuBackend::new());
    let model = Model::load(be.clone(), dir).expect("model");
    let lora_cfg = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut lora = LoraParams::init(&*be, &model.cfg, &lora_cfg, 1).expect("lora");
    // AdamW's two moments, as the trainer allocates them.
    let moments: Vec<_> = lora
        .params
        .iter()
        .flat_map(|p| [be.zeros(be.len(&p.value)), be.zeros(be.len(&p.value))])
        .collect();
    let (rows, seq) = (4, 256);
    let n = rows * seq;
    let ids: Vec<u32> = (0..n)
        .map(|i| (i * 7919 % model.cfg.vocab) as u32)
        .collect();
    let rows = LmRows::new(ids, seq);
    let batch = rows.batch();
    model
        .forward_backward(
            &mut lora,
            &batch,
            1.0 / n as f32,
            ckpt,
            &StepCtx {
                training: true,
                seed: 3,
            },
        )
        .expect("step");
    drop(moments);
    let predicted = plan(
        &model.cfg,
        &lora_cfg,
        n,
        seq,
        ckpt,
        model.loss_chunk,
        temper_core::DType::F32,
        PlanDevice::Cpu,
        temper_core::memory::host_available_bytes(),
    )
    .total();
    (be.peak_bytes(), predicted)
}

/// The embedded default model (the peak is in a layer's backward), qwen3-tiny (per-head
/// norms, tied embeddings), and a model whose vocabulary dwarfs its layers (the peak is at
/// the loss, in the logits chunk).
fn models(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![(
        "tiny".to_string(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model"),
    )];
    let qwen = temper_model::init::shape("qwen3-tiny")
        .expect("shape")
        .clone();
    let big_vocab = temper_model::init::Shape {
        name: "big-vocab",
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        vocab: 16384,
        max_positions: 512,
        ..qwen.clone()
    };
    for shape in [qwen, big_vocab] {
        let d = dir.join(shape.name);
        temper_model::init::write_random_model(&shape, &d, 5).expect("write model");
        out.push((shape.name.to_string(), d));
    }
    out
}

#[test]
fn the_plan_bounds_the_measured_peak_closely() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, dir) in models(tmp.path()) {
        for (ckpt, dropout) in [
            (Checkpointing::EveryLayer, 0.0),
            (Checkpointing::EveryLayer, 0.1),
            (Checkpointing::EveryLayerOnHost, 0.0),
            (Checkpointing::Off, 0.0),
        ] {
            check(&name, &dir, ckpt, dropout);
        }
    }
}

fn check(name: &str, dir: &Path, ckpt: Checkpointing, dropout: f32) {
    {
        let (measured, predicted) = measured_and_predicted(dir, ckpt, dropout);
        let ratio = predicted as f64 / measured as f64;
        println!("{name} {ckpt:?} dropout {dropout}: measured {measured} bytes, predicted {predicted} ({ratio:.3}x)");
        assert!(
            predicted >= measured,
            "{name} {ckpt:?}: the plan under-predicts: {predicted} < {measured}"
        );
        assert!(
            ratio <= 1.10,
            "{name} {ckpt:?}: the plan is {ratio:.2}x the measured peak"
        );
    }
}

/// Phi-3's fused projections and Gemma 2's extra norms are in the plan too.
#[test]
fn the_plan_bounds_phi3_and_gemma2_peaks() {
    for name in ["phi3-tiny", "gemma2-tiny"] {
        let shape = temper_model::init::shape(name).expect("shape");
        let dir = tempfile::tempdir().expect("tempdir");
        temper_model::init::write_random_model(shape, dir.path(), 5).expect("writes");
        for ckpt in [Checkpointing::EveryLayer, Checkpointing::Off] {
            let (measured, predicted) = measured_and_predicted(dir.path(), ckpt, 0.0);
            let ratio = predicted as f64 / measured as f64;
            println!(
                "{name} {ckpt:?}: measured {measured} bytes, predicted {predicted} ({ratio:.3}x)"
            );
            assert!(predicted >= measured, "{name} {ckpt:?}: under-predicts");
            assert!(ratio <= 1.5, "{name} {ckpt:?}: {ratio:.2}x");
        }
    }
}
