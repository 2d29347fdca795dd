//! The training loop: micro-batches -> forward/backward (gradients accumulate) -> clip ->
//! AdamW -> schedule, with the loss normalised by the number of loss tokens of the whole
//! optimizer step (all its micro-batches), not per micro-batch.
//!
//! Data parallel ([`train_with`]): each rank trains its slice of the step's rows
//! ([`crate::dist::shard`]), the loss tokens are counted over all ranks before backward, the
//! gradients are summed over ranks before clipping, so every rank takes the step one process
//! would take with the whole global batch. Only rank 0 writes files and reports progress.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use temper_core::{Backend, DType};
use temper_data::{shuffled_order, Batch, PackedRow};
use temper_model::{adapter, Checkpointing, LoraConfig, LoraParams, Model, StepCtx};

use crate::batches::token_batch;
use crate::checkpoint::{self, TrainerState};
use crate::dist::collective::{Collective, Single};
use crate::dist::grad_sync::GradSync;
use crate::dist::shard::Shard;
use crate::error::{io_err, Result, TrainError};
use crate::eval::{eval_loss, EvalOptions, EvalReport};
use crate::loss_scale::LossScaler;
use crate::metrics::MetricsLog;
use crate::optimizer::{clip_grad_norm, unscale_and_clip, AdamW, AdamWConfig};
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

/// FNV-1a over 32-bit words of the rows (lengths, ids, labels): equal rows, equal hash.
fn rows_hash(rows: &[PackedRow]) -> String {
    let fnv = |h: u64, w: u32| (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01b3);
    let mut data = 0xcbf2_9ce4_8422_2325u64;
    for r in rows {
        data = fnv(data, r.len() as u32);
        for (&id, &label) in r.input_ids.iter().zip(&r.labels) {
            data = fnv(fnv(data, id), label as u32);
        }
    }
    format!("{data:016x}")
}

/// What differs between a checkpoint's recorded inputs and this run's, as "name: was -> now".
fn resume_changes(state: &TrainerState, now: &TrainerState) -> Vec<String> {
    let mut out = Vec::new();
    for (name, was, is) in [
        (
            "the training data (tokenised rows)",
            &state.data_hash,
            &now.data_hash,
        ),
        ("the base model", &state.base_model, &now.base_model),
        ("the optimizer settings", &state.optimizer, &now.optimizer),
    ] {
        if let (Some(was), Some(is)) = (was, is) {
            if was != is && !is.is_empty() && !was.is_empty() {
                out.push(format!("{name}: `{was}` then, `{is}` now"));
            }
        }
    }
    out
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

/// The weights of the PEFT adapter in `dir`, to train on from there: its r, alpha, scaling
/// and targets must be `lora`'s (dropout is a training setting and comes from `lora`).
fn start_from_adapter<B: Backend>(
    be: &B,
    model: &Model<B>,
    lora: &LoraConfig,
    dir: &std::path::Path,
) -> Result<LoraParams<B>> {
    let mut params = adapter::load(be, &model.cfg, dir)?;
    let a = &params.config;
    let same = a.r == lora.r
        && a.alpha == lora.alpha
        && a.use_rslora == lora.use_rslora
        && a.targets == lora.targets;
    if !same {
        return Err(TrainError::Config(format!(
            "init_adapter {}: the adapter has r {}, lora_alpha {}, use_rslora {}, targets {:?}; \
             the run asks for r {}, lora_alpha {}, use_rslora {}, targets {:?}: leave the lora \
             keys out to take the adapter's",
            dir.display(),
            a.r,
            a.alpha,
            a.use_rslora,
            a.targets,
            lora.r,
            lora.alpha,
            lora.use_rslora,
            lora.targets
        )));
    }
    params.config.dropout = lora.dropout;
    Ok(params)
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
    let be = &*model.be;
    let s = settings;
    let lead = coll.rank() == 0;
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
    let shard = Shard {
        rank: coll.rank(),
        world: coll.world(),
        micro: s.micro_batch_size,
        accum: s.grad_accum,
    };
    let rows_per_step = shard.rows_per_step();
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
    let mut fingerprint = format!(
        "rows={} mbs={} accum={} seed={}",
        rows.len(),
        s.micro_batch_size,
        s.grad_accum,
        s.seed
    );
    if shard.world > 1 {
        fingerprint.push_str(&format!(" world={}", shard.world));
    }
    if lead {
        std::fs::create_dir_all(&s.output_dir).map_err(io_err(&s.output_dir))?;
    }

    // The inputs a checkpoint records, so that a resumed run can tell what changed.
    let recorded = TrainerState {
        step: 0,
        total_steps,
        seed: s.seed,
        data_fingerprint: fingerprint.clone(),
        data_hash: Some(rows_hash(rows)),
        base_model: Some(s.base_fingerprint.clone()),
        optimizer: Some(s.optimizer_fingerprint()),
        best_step: None,
        best_eval_loss: None,
        evals_since_best: 0,
    };
    let mut best: Option<(u64, f64)> = None;
    let mut evals_since_best = 0u64;
    let (mut lora, mut opt, start_step) = match &s.resume_from {
        Some(dir) => {
            let r = checkpoint::load(be, &model.cfg, dir, s.adamw)?;
            let changes = resume_changes(&r.state, &recorded);
            if !changes.is_empty() {
                if !s.resume_changed {
                    return Err(TrainError::Checkpoint {
                        path: dir.clone(),
                        msg: format!(
                            "this run differs from the one that wrote the checkpoint: {}; \
                             resume with the same inputs, start afresh (--overwrite_output_dir), \
                             or pass --resume-changed to continue anyway",
                            changes.join("; ")
                        ),
                    });
                }
                if lead {
                    observer.on_warning(&format!(
                        "warning: resuming {} with changes (--resume-changed): {}",
                        dir.display(),
                        changes.join("; ")
                    ));
                }
            }
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
            if let (Some(step), Some(loss)) = (r.state.best_step, r.state.best_eval_loss) {
                best = Some((step, loss));
            }
            evals_since_best = r.state.evals_since_best;
            (r.lora, r.opt, r.state.step)
        }
        None => {
            let lora = match &s.init_adapter {
                Some(dir) => start_from_adapter(be, model, &s.lora, dir)?,
                None => LoraParams::init(be, &model.cfg, &s.lora, s.seed)?,
            };
            let opt = AdamW::new(be, &lora, s.adamw)?;
            (lora, opt, 0)
        }
    };
    if shard.world > 1 {
        check_ranks_agree(be, coll, &lora, rows, &fingerprint, start_step, total_steps)?;
    }

    let mut metrics = MetricsLog::new(&s.output_dir);
    if lead {
        metrics.keep_until(start_step)?;
    }

    if lead {
        observer.on_start(start_step, total_steps);
    }
    let started = Instant::now();
    let mut summary = TrainSummary {
        steps: 0,
        first_loss: None,
        last_loss: None,
        tokens: 0,
        elapsed_s: 0.0,
        adapter_dir: s.output_dir.clone(),
        interrupted: false,
        start_step,
        total_steps,
        early_stopped: false,
        best: None,
        last_eval: None,
    };
    // float16 activations train with dynamic loss scaling; bf16 and f32 need none.
    let mut scaler = (be.compute_dtype() == DType::F16).then(LossScaler::default);
    let mut zero_grad_steps = 0u64;
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
        let step_rows = &order[i * rows_per_step..((i + 1) * rows_per_step).min(rows.len())];
        let batches: Vec<Batch> = shard
            .mine(step_rows)
            .chunks(s.micro_batch_size)
            .map(|ids| {
                let refs: Vec<&PackedRow> = ids.iter().map(|&j| &rows[j]).collect();
                Batch::from_rows(&refs)
            })
            .collect();
        // Loss tokens and tokens of the whole step, over all ranks: the loss is their mean.
        let mut counts = [
            batches.iter().map(|b| b.loss_tokens()).sum::<usize>() as f64,
            batches.iter().map(|b| b.len()).sum::<usize>() as f64,
        ];
        coll.all_reduce_f64(&mut counts)?;
        let (loss_tokens, tokens) = (counts[0] as usize, counts[1] as usize);
        let mut loss_sum = 0f64;
        let mut sync = GradSync::new(coll, &lora);
        if loss_tokens > 0 {
            let grad_scale = scaler.as_ref().map_or(1.0, |sc| sc.scale) / loss_tokens as f32;
            for (j, b) in batches.iter().enumerate() {
                // Dropout is seeded by the global micro-batch index, as one process would.
                let mb = shard.first_micro_batch() + j;
                let ctx = StepCtx {
                    training: true,
                    seed: s.seed ^ (k << 20) ^ mb as u64,
                };
                // The last micro-batch sums each layer's gradients over ranks as soon as
                // its backward is queued, overlapping the rest of backward.
                let last = j + 1 == batches.len();
                let losses = model.forward_backward_with::<TrainError>(
                    &mut lora,
                    &token_batch(b),
                    grad_scale,
                    s.checkpointing,
                    &ctx,
                    &mut |l, lora| {
                        if last {
                            sync.layer_done(be, coll, lora, l)?;
                        }
                        Ok(())
                    },
                )?;
                loss_sum += losses.iter().map(|&x| x as f64).sum::<f64>();
            }
        }
        sync.finish(be, coll, &mut lora)?;
        // One exchange decides the step for all ranks: the summed loss (NaN anywhere makes
        // it NaN everywhere) and whether any rank was asked to stop.
        let mut agree = [loss_sum, f64::from(u8::from(observer.stop_requested()))];
        coll.all_reduce_f64(&mut agree)?;
        let (loss_sum, stop) = (agree[0], agree[1] > 0.0);
        let loss = if loss_tokens > 0 {
            loss_sum / loss_tokens as f64
        } else {
            0.0
        };
        if !loss.is_finite() {
            let why = match non_finite_state(be, &lora, &opt)? {
                Some(what) => format!("{what}; {}", blame(s, &what)),
                None => match largest_lora_weight(be, &lora)? {
                    big if big > HUGE_LORA_WEIGHT => format!(
                        "LoRA weights have grown to {big:e}; {}",
                        blame(s, "LoRA weights")
                    ),
                    _ => "the LoRA weights and optimizer state are finite and small, so the \
                          forward pass overflowed: check the data and the base model, or train \
                          in float32 or bfloat16 (`dtype`)"
                        .to_string(),
                },
            };
            return Err(TrainError::NonFinite {
                step: k + 1,
                loss,
                why,
            });
        }
        // With loss scaling, a step whose gradients overflowed is skipped (every rank sees
        // the same summed gradients, so all skip together).
        let (norm, take_step) = match scaler.as_mut() {
            None => (clip_grad_norm(be, &mut lora, s.max_grad_norm)?, true),
            Some(sc) => {
                let norm = unscale_and_clip(be, &mut lora, sc.scale, s.max_grad_norm)?;
                sc.update(norm.is_some());
                (norm.unwrap_or(f64::INFINITY), norm.is_some())
            }
        };
        let lr = schedule.lr_at(k);
        if loss_tokens > 0 && take_step {
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
            loss_scale: scaler.as_ref().map(|sc| sc.scale as f64),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        if lead {
            metrics.append(&report)?;
            observer.on_step(&report);
        }
        summary.first_loss.get_or_insert(loss);
        summary.last_loss = Some(loss);
        summary.steps += 1;
        summary.tokens += tokens;

        let done = k + 1 == total_steps;
        let eval_now = !eval_rows.is_empty() && eval.every.due(k + 1, steps_per_epoch, done);
        let mut early_stop = false;
        if eval_now {
            let (loss, tokens) = eval_loss(model, &lora, eval_rows, eval.batch_size, coll)?;
            let report = EvalReport {
                step: k + 1,
                eval_loss: loss,
                eval_tokens: tokens,
            };
            if lead {
                metrics.append(&report)?;
                observer.on_eval(&report);
            }
            if best.is_none_or(|(_, b)| loss < b) {
                best = Some((k + 1, loss));
                evals_since_best = 0;
            } else {
                evals_since_best += 1;
            }
            summary.last_eval = Some(report);
            if let Some(p) = eval.early_stopping_patience {
                if evals_since_best >= p.max(1) && !done {
                    early_stop = true;
                    summary.early_stopped = true;
                    if lead {
                        observer.on_note(&format!(
                            "early stopping at step {}: eval loss has not improved on {:.4} (step {}) for {evals_since_best} evaluations",
                            k + 1,
                            best.map_or(f64::NAN, |b| b.1),
                            best.map_or(0, |b| b.0),
                        ));
                    }
                }
            }
        }
        summary.interrupted = stop && !done;
        if lead && norm == 0.0 && loss_tokens > 0 && take_step {
            zero_grad_steps += 1;
            if zero_grad_steps == STUCK_STEPS {
                observer.on_warning(&format!(
                    "warning: grad_norm has been 0 for {STUCK_STEPS} steps (loss {loss:.4}): \
                     nothing is learning; check lora_alpha, learning_rate and that the targets \
                     reach the loss"
                ));
            }
        } else {
            zero_grad_steps = 0;
        }
        let save_now = (s.save_steps > 0 && (k + 1) % s.save_steps == 0)
            || done
            || stop
            || early_stop
            || (eval_now && eval.load_best_model_at_end);
        let saving = lead && save_now;
        if saving {
            if let Some(what) = non_finite_state(be, &lora, &opt)? {
                return Err(TrainError::NonFiniteState {
                    step: k + 1,
                    why: format!("{what}; {}", blame(s, &what)),
                });
            }
        }
        if saving {
            let state = TrainerState {
                step: k + 1,
                best_step: best.map(|b| b.0),
                best_eval_loss: best.map(|b| b.1),
                evals_since_best,
                ..recorded.clone()
            };
            let dir = checkpoint::save(be, &s.output_dir, &lora, &opt, &state, &s.base_model)?;
            observer.on_save(&dir);
            if let Some(limit) = eval.save_total_limit {
                let keep = best.filter(|_| eval.load_best_model_at_end).map(|b| b.0);
                for gone in checkpoint::rotate(&s.output_dir, limit, keep)? {
                    observer.on_note(&format!(
                        "deleted {} (save_total_limit {limit})",
                        gone.display()
                    ));
                }
            }
        }
        if stop || early_stop {
            break;
        }
    }
    summary.best = best;
    // Only rank 0 wrote the checkpoints, so only it can read the best one back.
    if lead && eval.load_best_model_at_end && !summary.interrupted {
        if let Some((step, loss)) = best {
            let last = start_step + summary.steps;
            if step != last {
                let dir = checkpoint::checkpoint_dir(&s.output_dir, step);
                let mut best_lora = adapter::load(be, &model.cfg, &dir)?;
                best_lora.config.dropout = s.lora.dropout;
                lora = best_lora;
                observer.on_note(&format!(
                    "load_best_model_at_end: the adapter is step {step}'s (eval loss {loss:.4}), from {}",
                    dir.display()
                ));
            }
        }
    }
    if lead {
        adapter::save(be, &lora, &s.base_model, &s.output_dir)?;
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok((lora, summary))
}

/// Steps in a row with a gradient norm of exactly 0 before a warning.
const STUCK_STEPS: u64 = 20;

/// What holds NaN or infinity: a LoRA weight, or the optimizer's moments (32-bit states;
/// 8-bit states are checked through the weights they update). None when all is finite.
fn non_finite_state<B: Backend>(
    be: &B,
    lora: &LoraParams<B>,
    opt: &AdamW<B>,
) -> Result<Option<String>> {
    for (i, p) in lora.params.iter().enumerate() {
        if opt.state8_of(be, i)?.is_none() {
            let (m, v) = opt.moments_of(be, i)?;
            for (name, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
                if values.iter().any(|x| !x.is_finite()) {
                    return Ok(Some(format!(
                        "the optimizer state {name} of `{}` is not finite",
                        p.key
                    )));
                }
            }
        }
        if be.download(&p.value)?.iter().any(|x| !x.is_finite()) {
            return Ok(Some(format!("LoRA weight `{}` is not finite", p.key)));
        }
    }
    Ok(None)
}

/// A LoRA weight this large overflows the forward pass: the updates, not the data, did it.
const HUGE_LORA_WEIGHT: f32 = 1e4;

/// The largest magnitude among the LoRA weights.
fn largest_lora_weight<B: Backend>(be: &B, lora: &LoraParams<B>) -> Result<f32> {
    let mut big = 0f32;
    for p in &lora.params {
        for x in be.download(&p.value)? {
            big = big.max(x.abs());
        }
    }
    Ok(big)
}

/// The likely cause of non-finite state `what`, from the settings.
fn blame(s: &TrainSettings, what: &str) -> String {
    if s.adamw.eps <= 0.0 {
        format!(
            "adam_epsilon is {}: a parameter whose gradient is 0 gets 0 / 0 = NaN; set \
             adam_epsilon to 1e-8",
            s.adamw.eps
        )
    } else if what.starts_with("the optimizer state") && s.resume_from.is_some() {
        "the optimizer state restored from the checkpoint is not usable: resume from an \
         earlier checkpoint"
            .to_string()
    } else {
        format!(
            "the updates overflowed: learning_rate {} is too high (LoRA usually trains at \
             1e-5 to 1e-3)",
            s.learning_rate
        )
    }
}

/// Before the first step: every rank must train the same parameters on the same rows.
/// Rank 0's settings, a checksum of its rows and one of its parameters are broadcast and
/// compared.
fn check_ranks_agree<B: Backend>(
    be: &B,
    coll: &dyn Collective<B>,
    lora: &LoraParams<B>,
    rows: &[PackedRow],
    fingerprint: &str,
    start_step: u64,
    total_steps: u64,
) -> Result<()> {
    // FNV-1a over 32-bit words: only equality matters here.
    let fnv = |h: u64, w: u32| (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01b3);
    let mut params = 0xcbf2_9ce4_8422_2325u64;
    for p in &lora.params {
        for x in be.download(&p.value)? {
            params = fnv(params, x.to_bits());
        }
    }
    let data = rows_hash(rows);
    let mine = format!(
        "{fingerprint} start={start_step} steps={total_steps} data={data} lora={params:016x}"
    );
    let mut theirs = mine.clone().into_bytes();
    coll.broadcast_bytes(&mut theirs)?;
    let differs = theirs != mine.as_bytes();
    // Every rank learns whether any differs, so all stop together.
    let mut count = [f64::from(u8::from(differs))];
    coll.all_reduce_f64(&mut count)?;
    if differs {
        return Err(TrainError::Distributed(format!(
            "rank {} would train `{mine}` but rank 0 trains `{}`: every rank must run the same config, data and checkpoint",
            coll.rank(),
            String::from_utf8_lossy(&theirs)
        )));
    }
    if count[0] > 0.0 {
        return Err(TrainError::Distributed(format!(
            "{} rank(s) would train other settings, data or parameters than rank {} (see their errors)",
            count[0],
            coll.rank()
        )));
    }
    Ok(())
}
