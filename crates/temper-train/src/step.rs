//! One optimizer step on one rank: its micro-batches forward and backward (gradients
//! accumulate, and are summed over ranks layer by layer as the last micro-batch's backward
//! goes), one exchange that decides the step for every rank (the loss, whether to stop),
//! then clip, AdamW and the schedule's learning rate.
//!
//! The loss is normalised by the loss tokens of the whole step (all micro-batches of all
//! ranks), not per micro-batch, so every rank takes the step one process would take with
//! the whole global batch.

use std::time::Instant;

use temper_core::{Backend, DType};
use temper_data::{Batch, PackedRow};
use temper_model::{LoraParams, StepCtx};

use crate::batches::{micro_batches, token_batch, StepRows};
use crate::dist::grad_sync::GradSync;
use crate::error::{Result, TrainError};
use crate::loss_scale::LossScaler;
use crate::nonfinite;
use crate::optimizer::{clip_grad_norm, unscale_and_clip, AdamW};
use crate::setup::Run;
use crate::trainer::{Observer, StepReport};

/// What one step did.
pub(crate) struct Stepped {
    pub report: StepReport,
    /// False when loss scaling skipped the step because its gradients overflowed (every
    /// rank sees the same summed gradients, so all skip together).
    pub took_step: bool,
    /// Some rank's observer asked to stop after this step.
    pub stop: bool,
}

/// Takes the steps of one rank.
pub(crate) struct Stepper<'a, B: Backend> {
    run: &'a Run<'a, B>,
    rows: &'a [PackedRow],
    step_rows: StepRows,
    /// float16 activations train with dynamic loss scaling; bf16 and f32 need none.
    scaler: Option<LossScaler>,
    /// When training started (the reports' elapsed time).
    started: Instant,
}

impl<'a, B: Backend> Stepper<'a, B> {
    /// The steps of `run` on `rows`, which started training at `started`.
    pub fn new(run: &'a Run<'a, B>, rows: &'a [PackedRow], started: Instant) -> Self {
        let setup = &run.setup;
        Stepper {
            run,
            rows,
            step_rows: StepRows::new(
                rows.len(),
                run.s.seed,
                setup.shard.rows_per_step(),
                setup.steps_per_epoch,
            ),
            scaler: (run.model.be.compute_dtype() == DType::F16).then(LossScaler::default),
            started,
        }
    }

    /// Step `k` (counted from 0): updates `lora` and `opt`, and leaves the gradients zeroed.
    pub fn step(
        &mut self,
        k: u64,
        lora: &mut LoraParams<B>,
        opt: &mut AdamW<B>,
        observer: &mut dyn Observer,
    ) -> Result<Stepped> {
        let run = self.run;
        let (be, coll, s, setup) = (&*run.model.be, run.coll, run.s, &run.setup);
        let step_started = Instant::now();
        let step_rows = self.step_rows.of(k);
        let batches = micro_batches(self.rows, step_rows, &setup.shard);
        // Loss tokens and tokens of the whole step, over all ranks: the loss is their mean.
        let mut counts = [
            batches.iter().map(|b| b.loss_tokens()).sum::<usize>() as f64,
            batches.iter().map(|b| b.len()).sum::<usize>() as f64,
        ];
        coll.all_reduce_f64(&mut counts)?;
        let (loss_tokens, tokens) = (counts[0] as usize, counts[1] as usize);
        let loss_sum = self.forward_backward(k, &batches, loss_tokens, lora)?;
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
            return Err(TrainError::NonFinite {
                step: k + 1,
                loss,
                why: nonfinite::why_loss(be, lora, opt, s)?,
            });
        }
        let (norm, took_step) = match self.scaler.as_mut() {
            None => (clip_grad_norm(be, lora, s.max_grad_norm)?, true),
            Some(sc) => {
                let norm = unscale_and_clip(be, lora, sc.scale, s.max_grad_norm)?;
                sc.update(norm.is_some());
                (norm.unwrap_or(f64::INFINITY), norm.is_some())
            }
        };
        let lr = setup.schedule.lr_at(k);
        if loss_tokens > 0 && took_step {
            opt.update(be, lora, lr as f32)?;
        }
        lora.zero_grads(be)?;

        let dt = step_started.elapsed().as_secs_f64();
        let report = StepReport {
            step: k + 1,
            total_steps: setup.total_steps,
            epoch: (k + 1) as f64 / setup.steps_per_epoch as f64,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            loss_tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            loss_scale: self.scaler.as_ref().map(|sc| sc.scale as f64),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        };
        Ok(Stepped {
            report,
            took_step,
            stop,
        })
    }

    /// Forward and backward of this rank's micro-batches of step `k`, the gradients summed
    /// over ranks; returns this rank's sum of token losses (nothing runs when the whole step
    /// has no loss token).
    fn forward_backward(
        &mut self,
        k: u64,
        batches: &[Batch],
        loss_tokens: usize,
        lora: &mut LoraParams<B>,
    ) -> Result<f64> {
        let run = self.run;
        let (be, coll, s) = (&*run.model.be, run.coll, run.s);
        let mut loss_sum = 0f64;
        let mut sync = GradSync::new(coll, lora);
        if loss_tokens > 0 {
            let grad_scale = self.scaler.as_ref().map_or(1.0, |sc| sc.scale) / loss_tokens as f32;
            for (j, b) in batches.iter().enumerate() {
                // Dropout is seeded by the global micro-batch index, as one process would.
                let mb = run.setup.shard.first_micro_batch() + j;
                let ctx = StepCtx {
                    training: true,
                    seed: s.seed ^ (k << 20) ^ mb as u64,
                };
                // The last micro-batch sums each layer's gradients over ranks as soon as
                // its backward is queued, overlapping the rest of backward.
                let last = j + 1 == batches.len();
                let losses = run.model.forward_backward_with::<TrainError>(
                    lora,
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
        sync.finish(be, coll, lora)?;
        Ok(loss_sum)
    }
}
