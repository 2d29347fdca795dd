//! The embedded default (examples/tiny) as the training tests use it.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};

use std::sync::Arc;
use temper_data::{pack, read_jsonl, tokenize_rows, PackedRow, TokenizeOptions, Tokenizer};

use temper_core::CpuBackend;
use temper_model::{Checkpointing, LoraConfig, Model, Target};
use temper_train::{AdamWConfig, ScheduleKind, TrainSettings};

pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny")
}

/// The first `max_rows` rows of the tiny chat data, tokenised (EOS appended, at most 128
/// tokens) and packed into rows of 128.
pub fn rows(max_rows: usize) -> Vec<PackedRow> {
    let tok = Tokenizer::from_dir(&tiny().join("model")).expect("tokenizer");
    let mut data = read_jsonl(&tiny().join("data/train.jsonl")).expect("data");
    data.truncate(max_rows);
    let opts = TokenizeOptions {
        append_eos: true,
        max_seq_len: Some(128),
    };
    let examples = tokenize_rows(&tok, &data, &opts).expect("tokenize");
    pack(&examples, 128)
}

/// The training tests' settings: LoRA r 8 alpha 16 with dropout on every linear kind, cosine
/// schedule after 2 warm-up steps, 2 micro-batches of 2 rows per step, AdamW with weight
/// decay, checkpointing, no saves before the end.
pub fn settings(out: &Path, max_steps: u64) -> TrainSettings {
    TrainSettings {
        lora: LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            use_rslora: false,
            targets: Target::ALL.to_vec(),
        },
        learning_rate: 3e-3,
        schedule: ScheduleKind::Cosine,
        warmup_steps: Some(2),
        warmup_ratio: 0.0,
        max_steps: Some(max_steps),
        epochs: 1.0,
        micro_batch_size: 2,
        grad_accum: 2,
        seed: 5,
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        max_grad_norm: 1.0,
        checkpointing: Checkpointing::EveryLayer,
        save_steps: 0,
        output_dir: out.to_path_buf(),
        base_model: "examples/tiny/model".into(),
        resume_from: None,
        init_adapter: None,
        base_fingerprint: String::new(),
        resume_changed: false,
    }
}

/// The tiny model on the CPU.
pub fn model() -> Model<CpuBackend> {
    Model::load(Arc::new(CpuBackend::new()), &tiny().join("model")).expect("model")
}

/// Each step's loss from a run's metrics.jsonl.
pub fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"]
                .as_f64()
                .expect("loss")
        })
        .collect()
}
