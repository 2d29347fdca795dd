//! The training loop: micro-batches -> forward/backward (gradients accumulate) -> clip ->
//! AdamW -> schedule, with the loss normalised by the number of loss tokens of the whole
//! optimizer step (all its micro-batches), not per micro-batch.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use temper_core::Backend;
use temper_data::{shuffled_order, Batch, PackedRow};
use temper_model::{adapter, Checkpointing, LoraConfig, LoraParams, Model, StepCtx, TokenBatch};

use crate::checkpoint::{self, TrainerState};
use crate::error::{io_err, Result, TrainError};
use crate::optimizer::{clip_grad_norm, AdamW, AdamWConfig};
use crate::schedule::{Schedule, ScheduleKind};

/// Resolved training settings (the CLI fills these from the YAML config).
#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub lora: LoraConfig,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: Option<u64>,
    pub warmup_ratio: f64,
    /// Optimizer steps; when None, `epochs` decides.
    pub max_steps: Option<u64>,
    pub epochs: f64,
    /// Packed rows per micro-batch.
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub seed: u64,
    pub adamw: AdamWConfig,
    pub max_grad_norm: f64,
    pub checkpointing: Checkpointing,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_steps: u64,
    pub output_dir: PathBuf,
    /// Written into adapter_config.json's base_model_name_or_path.
    pub base_model: String,
    /// Continue from this checkpoint folder.
    pub resume_from: Option<PathBuf>,
}

/// One optimizer step, as reported to observers and written to metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens processed in this step, and loss tokens among them.
    pub tokens: usize,
    pub loss_tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// What the loop tells its caller (progress bars, logs).
pub trait Observer {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _report: &StepReport) {}
    fn on_save(&mut self, _dir: &std::path::Path) {}
}

/// Observes nothing.
pub struct Silent;
impl Observer for Silent {}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens: usize,
    pub elapsed_s: f64,
    pub adapter_dir: PathBuf,
}

/// Trains `settings.lora` adapters on `rows` and writes the adapter to `output_dir`.
pub fn train<B: Backend>(
    model: &Model<B>,
    rows: &[PackedRow],
    settings: &TrainSettings,
    observer: &mut dyn Observer,
) -> Result<(LoraParams<B>, TrainSummary)> {
    let be = &*model.be;
    let s = settings;
    if rows.is_empty() {
        return Err(TrainError::Config(
            "the dataset produced no rows to train on".into(),
        ));
    }
    if s.micro_batch_size == 0 || s.grad_accum == 0 {
        return Err(TrainError::Config(
            "per_device_train_batch_size and gradient_accumulation_steps must be at least 1".into(),
        ));
    }
    let rows_per_step = s.micro_batch_size * s.grad_accum;
    let steps_per_epoch = rows.len().div_ceil(rows_per_step) as u64;
    let total_steps = match s.max_steps {
        Some(n) if n > 0 => n,
        _ => ((s.epochs * steps_per_epoch as f64).ceil() as u64).max(1),
    };
    let warmup = s
        .warmup_steps
        .unwrap_or((s.warmup_ratio * total_steps as f64).ceil() as u64);
    let schedule = Schedule {
        kind: s.schedule,
        lr: s.learning_rate,
        warmup_steps: warmup,
        total_steps,
    };
    let fingerprint = format!(
        "rows={} mbs={} accum={} seed={}",
        rows.len(),
        s.micro_batch_size,
        s.grad_accum,
        s.seed
    );
    std::fs::create_dir_all(&s.output_dir).map_err(io_err(&s.output_dir))?;

    let (mut lora, mut opt, start_step) = match &s.resume_from {
        Some(dir) => {
            let r = checkpoint::load(be, &model.cfg, dir, s.adamw)?;
            if r.state.data_fingerprint != fingerprint {
                return Err(TrainError::Checkpoint {
                    path: dir.clone(),
                    msg: format!(
                        "was made with data/batching `{}`, this run has `{fingerprint}`; resume with the same data and batch settings",
                        r.state.data_fingerprint
                    ),
                });
            }
            if r.lora.config != s.lora {
                return Err(TrainError::Checkpoint {
                    path: dir.clone(),
                    msg:
                        "its LoRA settings differ from this run's; resume with the same lora_* keys"
                            .into(),
                });
            }
            (r.lora, r.opt, r.state.step)
        }
        None => {
            let lora = LoraParams::init(be, &model.cfg, &s.lora, s.seed)?;
            let opt = AdamW::new(be, &lora, s.adamw)?;
            (lora, opt, 0)
        }
    };

    let metrics_path = s.output_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io_err(&metrics_path))?;

    observer.on_start(start_step, total_steps);
    let started = Instant::now();
    let mut summary = TrainSummary {
        steps: 0,
        first_loss: None,
        last_loss: None,
        tokens: 0,
        elapsed_s: 0.0,
        adapter_dir: s.output_dir.clone(),
    };
    let mut order_epoch = u64::MAX;
    let mut order: Vec<usize> = Vec::new();
    for k in start_step..total_steps {
        let step_started = Instant::now();
        let epoch = k / steps_per_epoch;
        if epoch != order_epoch {
            order = shuffled_order(rows.len(), s.seed, epoch);
            order_epoch = epoch;
        }
        let i = (k % steps_per_epoch) as usize;
        let picked = &order[i * rows_per_step..((i + 1) * rows_per_step).min(rows.len())];
        let batches: Vec<Batch> = picked
            .chunks(s.micro_batch_size)
            .map(|ids| {
                let refs: Vec<&PackedRow> = ids.iter().map(|&j| &rows[j]).collect();
                Batch::from_rows(&refs)
            })
            .collect();
        let loss_tokens: usize = batches.iter().map(|b| b.loss_tokens()).sum();
        let tokens: usize = batches.iter().map(|b| b.len()).sum();
        let mut loss_sum = 0f64;
        if loss_tokens > 0 {
            let grad_scale = 1.0 / loss_tokens as f32;
            for (mb, b) in batches.iter().enumerate() {
                let tb = TokenBatch {
                    ids: &b.input_ids,
                    positions: &b.position_ids,
                    cu_seqlens: &b.cu_seqlens,
                    targets: &b.targets,
                };
                let ctx = StepCtx {
                    training: true,
                    seed: s.seed ^ (k << 20) ^ mb as u64,
                };
                let losses =
                    model.forward_backward(&mut lora, &tb, grad_scale, s.checkpointing, &ctx)?;
                loss_sum += losses.iter().map(|&x| x as f64).sum::<f64>();
            }
        }
        let loss = if loss_tokens > 0 {
            loss_sum / loss_tokens as f64
        } else {
            0.0
        };
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: k + 1, loss });
        }
        let norm = clip_grad_norm(be, &mut lora, s.max_grad_norm)?;
        let lr = schedule.lr_at(k);
        if loss_tokens > 0 {
            opt.update(be, &mut lora, lr as f32)?;
        }
        lora.zero_grads(be)?;

        let dt = step_started.elapsed().as_secs_f64();
        let report = StepReport {
            step: k + 1,
            total_steps,
            epoch: (k + 1) as f64 / steps_per_epoch as f64,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            loss_tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        let line = serde_json::to_string(&report).map_err(|e| TrainError::Config(e.to_string()))?;
        writeln!(metrics, "{line}").map_err(io_err(&metrics_path))?;
        observer.on_step(&report);
        summary.first_loss.get_or_insert(loss);
        summary.last_loss = Some(loss);
        summary.steps += 1;
        summary.tokens += tokens;

        let done = k + 1 == total_steps;
        if (s.save_steps > 0 && (k + 1) % s.save_steps == 0) || done {
            let state = TrainerState {
                step: k + 1,
                total_steps,
                seed: s.seed,
                data_fingerprint: fingerprint.clone(),
            };
            let dir = checkpoint::save(be, &s.output_dir, &lora, &opt, &state, &s.base_model)?;
            observer.on_save(&dir);
        }
    }
    adapter::save(be, &lora, &s.base_model, &s.output_dir)?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok((lora, summary))
}
