//! The training loop on the embedded default model (examples/tiny): the loss falls, the
//! saved adapter reloads to identical parameters, a resumed run equals an unbroken one, and
//! gradient accumulation equals one large batch.

use std::path::Path;

use temper_core::{Backend, CpuBackend};
use temper_data::PackedRow;
use temper_model::{adapter, LoraParams, Model};
use temper_train::{train, Silent, TrainSettings};

mod common;
use common::{model, rows, settings};

fn values<B: Backend>(be: &B, lora: &LoraParams<B>) -> Vec<Vec<f32>> {
    lora.params
        .iter()
        .map(|p| be.download(&p.value).expect("download"))
        .collect()
}

#[test]
fn loss_falls_and_the_adapter_reloads_identically() {
    let model = model();
    let data = rows(400);
    let out = tempfile::tempdir().expect("tempdir");
    let s = settings(out.path(), 30);
    let (lora, summary) = train(&model, &data, &s, &mut Silent).expect("train");

    // The mean loss of the last five steps is well below that of the first five.
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).expect("metrics");
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"]
                .as_f64()
                .expect("loss")
        })
        .collect();
    assert_eq!(losses.len(), 30);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    println!("loss: first five steps {head:.3}, last five {tail:.3}");
    assert!(
        tail < head - 0.5,
        "loss did not fall by 0.5: {head:.3} -> {tail:.3}"
    );
    assert_eq!(summary.steps, 30);

    // Reload the written adapter: identical bits.
    let reloaded = adapter::load(&*model.be, &model.cfg, out.path()).expect("reload");
    assert_eq!(reloaded.config, lora.config);
    assert_eq!(values(&*model.be, &reloaded), values(&*model.be, &lora));
}

#[test]
fn resuming_from_a_checkpoint_equals_an_unbroken_run() {
    let model = model();
    let data = rows(120);
    let straight = tempfile::tempdir().expect("tempdir");
    let (full, _) =
        train(&model, &data, &settings(straight.path(), 6), &mut Silent).expect("train");

    let broken = tempfile::tempdir().expect("tempdir");
    let mut first = settings(broken.path(), 6);
    first.save_steps = 3;
    // Stop after 3 of 6 steps: the schedule still plans 6.
    first.max_steps = Some(6);
    let stop_early = StopAfter(3);
    train_until(&model, &data, &first, stop_early);
    let ckpt = broken.path().join("checkpoint-3");
    assert!(ckpt.join("trainer_state.json").exists());
    let mut second = settings(broken.path(), 6);
    second.resume_from = Some(ckpt);
    let (resumed, summary) = train(&model, &data, &second, &mut Silent).expect("resume");
    assert_eq!(
        summary.steps, 3,
        "the resumed run takes the remaining steps"
    );
    assert_eq!(values(&*model.be, &resumed), values(&*model.be, &full));
}

/// Runs the loop but aborts it (as a crash would) once `n` steps are done.
struct StopAfter(u64);

fn train_until(model: &Model<CpuBackend>, data: &[PackedRow], s: &TrainSettings, stop: StopAfter) {
    struct Abort(u64);
    impl temper_train::Observer for Abort {
        fn on_save(&mut self, dir: &Path) {
            if dir.ends_with(format!("checkpoint-{}", self.0)) {
                // Unwinding out of the loop is how this test simulates a killed process.
                std::panic::panic_any("simulated crash");
            }
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(model, data, s, &mut Abort(stop.0))
    }));
    assert!(result.is_err(), "the run should have been interrupted");
}

#[test]
fn accumulating_micro_batches_equals_one_large_batch() {
    let model = model();
    let data = rows(64);
    let a = tempfile::tempdir().expect("tempdir");
    let mut s = settings(a.path(), 2);
    s.lora.dropout = 0.0;
    s.max_grad_norm = 0.0;
    s.micro_batch_size = 1;
    s.grad_accum = 4;
    let (accumulated, _) = train(&model, &data, &s, &mut Silent).expect("train");
    let b = tempfile::tempdir().expect("tempdir");
    s.output_dir = b.path().to_path_buf();
    s.micro_batch_size = 4;
    s.grad_accum = 1;
    // The same rows in the same order each step, split differently.
    let (whole, _) = train(&model, &data, &s, &mut Silent).expect("train");
    let (va, vb) = (values(&*model.be, &accumulated), values(&*model.be, &whole));
    let mut worst = 0f64;
    for (x, y) in va.iter().zip(&vb) {
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs() as f64 / q.abs().max(1e-3) as f64);
        }
    }
    println!("accumulated vs whole batch: worst relative difference {worst:.2e}");
    assert!(
        worst < 1e-3,
        "gradient accumulation differs from one batch: {worst:.2e}"
    );
}
