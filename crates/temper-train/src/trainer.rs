//! The training loop and what it tells its caller: the settings, the observer, each step's
//! report and the run's summary. A run is set up (`setup.rs`: step counts, fresh start or
//! resume), then takes its steps (`step.rs`: micro-batches forward and backward, clip, AdamW)
//! and after each one reports and saves (`report.rs`: metrics.jsonl, evaluation,
//! checkpoints), and at the end writes the adapter.
//!
//! Data parallel ([`train_with`]): each rank trains its slice of the step's rows
//! ([`crate::dist::shard`]), the loss tokens are counted over all ranks before backward, the
//! gradients are summed over ranks before clipping, so every rank takes the step one process
//! would take with the whole global batch. Only rank 0 writes files and reports progress.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use temper_core::Backend;
use temper_data::PackedRow;
use temper_model::{Checkpointing, LoraConfig, LoraParams, Model};

use crate::dist::collective::{Collective, Single};
use crate::error::{io_err, Result};
use crate::eval::{EvalOptions, EvalReport};
use crate::metrics::MetricsLog;
use crate::optimizer::AdamWConfig;
use crate::report::Reporter;
use crate::schedule::ScheduleKind;
use crate::setup::{self, Run, Setup, Start};
use crate::step::Stepper;

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
    /// Packed rows per micro-batch (on each rank).
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step (on each rank).
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
    /// Start a fresh run from this PEFT adapter's weights instead of PEFT's initialisation;
    /// its r, alpha, use_rslora and targets must be `lora`'s. Unused when resuming: the
    /// checkpoint holds the weights.
    pub init_adapter: Option<PathBuf>,
    /// A fingerprint of the base model's files, recorded in checkpoints and compared on
    /// resume (empty: not known, not compared).
    pub base_fingerprint: String,
    /// Resume even when the data, base model or optimizer settings differ from the
    /// checkpoint's (the differences are printed).
    pub resume_changed: bool,
}

impl TrainSettings {
    /// The optimizer and schedule settings a resumed run must share with its checkpoint
    /// (the step count may change).
    pub fn optimizer_fingerprint(&self) -> String {
        let a = &self.adamw;
        format!(
            "learning_rate={} lr_scheduler_type={:?} warmup_steps={:?} warmup_ratio={} \
             adam_beta1={} adam_beta2={} adam_epsilon={} weight_decay={} max_grad_norm={} \
             states_8bit={}",
            self.learning_rate,
            self.schedule,
            self.warmup_steps,
            self.warmup_ratio,
            a.beta1,
            a.beta2,
            a.eps,
            a.weight_decay,
            self.max_grad_norm,
            a.states_8bit
        )
    }
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
    /// Tokens processed in this step (over all ranks), and loss tokens among them.
    pub tokens: usize,
    pub loss_tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// The float16 loss scale after this step (None without loss scaling); a step whose
    /// gradients overflowed reports grad_norm inf and was not taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
}

/// What the loop tells its caller (progress bars, logs). With several ranks, only rank 0's
/// observer hears `on_start`, `on_step` and `on_save`; every rank's is asked
/// `stop_requested`, and when any says yes all ranks stop after the same step.
pub trait Observer {
    fn on_start(&mut self, _start_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _report: &StepReport) {}
    fn on_save(&mut self, _dir: &std::path::Path) {}
    /// Something the user should know about the run (printed to stderr by default).
    fn on_warning(&mut self, message: &str) {
        eprintln!("{message}");
    }
    fn on_eval(&mut self, _report: &EvalReport) {}
    /// A note for the user (early stopping, checkpoints deleted, the best step loaded).
    fn on_note(&mut self, _note: &str) {}
    /// Asked after every step: true ends training there, with a checkpoint (e.g. on Ctrl-C).
    fn stop_requested(&mut self) -> bool {
        false
    }
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
    /// True when an observer asked to stop before the last step.
    pub interrupted: bool,
    /// The step this run started from (0, or the checkpoint's when resuming).
    pub start_step: u64,
    /// The steps the run was asked for (max_steps, or from num_train_epochs): a resumed
    /// run whose checkpoint is at or past it has nothing to train.
    pub total_steps: u64,
    /// True when `early_stopping_patience` ended training.
    pub early_stopped: bool,
    /// (step, eval loss) of the best evaluation during training.
    pub best: Option<(u64, f64)>,
    /// The last evaluation during training.
    pub last_eval: Option<EvalReport>,
}

/// Trains `settings.lora` adapters on `rows` and writes the adapter to `output_dir`.
pub fn train<B: Backend>(
    model: &Model<B>,
    rows: &[PackedRow],
    settings: &TrainSettings,
    observer: &mut dyn Observer,
) -> Result<(LoraParams<B>, TrainSummary)> {
    train_with(model, rows, settings, observer, &Single)
}

/// [`train`] as one rank of a data-parallel job. Every rank passes the same `rows` and
/// `settings`; `settings.micro_batch_size` and `grad_accum` are per rank, so one optimizer
/// step takes `world × micro_batch_size × grad_accum` rows. Returns the same parameters on
/// every rank; only rank 0 writes metrics, checkpoints and the adapter.
pub fn train_with<B: Backend>(
    model: &Model<B>,
    rows: &[PackedRow],
    settings: &TrainSettings,
    observer: &mut dyn Observer,
    coll: &dyn Collective<B>,
) -> Result<(LoraParams<B>, TrainSummary)> {
    train_eval(
        model,
        rows,
        &[],
        settings,
        &EvalOptions::default(),
        observer,
        coll,
    )
}

/// [`train_with`], evaluating on `eval_rows` during training as `eval` says (every rank passes
/// the same rows).
pub fn train_eval<B: Backend>(
    model: &Model<B>,
    rows: &[PackedRow],
    eval_rows: &[PackedRow],
    settings: &TrainSettings,
    eval: &EvalOptions,
    observer: &mut dyn Observer,
    coll: &dyn Collective<B>,
) -> Result<(LoraParams<B>, TrainSummary)> {
    let s = settings;
    let run = Run {
        model,
        s,
        setup: Setup::new(rows, s, coll)?,
        coll,
    };
    if run.lead() {
        std::fs::create_dir_all(&s.output_dir).map_err(io_err(&s.output_dir))?;
    }
    let Start {
        mut lora,
        mut opt,
        step: start_step,
        best,
    } = setup::start(&run, rows, observer)?;
    if run.lead() {
        MetricsLog::new(&s.output_dir).keep_until(start_step)?;
        observer.on_start(start_step, run.setup.total_steps);
    }
    let started = Instant::now();
    let mut stepper = Stepper::new(&run, rows, started);
    let mut reporter = Reporter::new(&run, eval, eval_rows, start_step, best);
    for k in start_step..run.setup.total_steps {
        let stepped = stepper.step(k, &mut lora, &mut opt, observer)?;
        if reporter.after_step(k, &stepped, &lora, &opt, observer)? {
            break;
        }
    }
    reporter.finish(lora, started, observer)
}
