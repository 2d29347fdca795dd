//! What follows each optimizer step: its metrics line and the observer, an evaluation when
//! one is due (the best step, early stopping), the stuck-gradient warning, a checkpoint when
//! one is due; and the end of the run: the best step's weights when asked for, the adapter
//! written. Only rank 0 writes files and tells the observer; every rank evaluates (each
//! scores its share) and decides to stop alike.

use std::time::Instant;

use temper_core::Backend;
use temper_data::PackedRow;
use temper_model::{adapter, LoraParams};

use crate::checkpoint::{self, TrainerState};
use crate::error::{Result, TrainError};
use crate::eval::{eval_loss, Best, EvalOptions, EvalReport};
use crate::metrics::MetricsLog;
use crate::nonfinite::{blame, non_finite_state};
use crate::optimizer::AdamW;
use crate::setup::Run;
use crate::step::Stepped;
use crate::trainer::{Observer, TrainSummary};

/// Steps in a row with a gradient norm of exactly 0 before a warning.
const STUCK_STEPS: u64 = 20;

/// The record of a run in progress, kept after every step.
pub(crate) struct Reporter<'a, B: Backend> {
    run: &'a Run<'a, B>,
    eval: &'a EvalOptions,
    eval_rows: &'a [PackedRow],
    metrics: MetricsLog,
    best: Best,
    zero_grad_steps: u64,
    summary: TrainSummary,
}

impl<'a, B: Backend> Reporter<'a, B> {
    /// The record of `run`, evaluating on `eval_rows` as `eval` says, from `start_step` on
    /// with the evaluations `best` (a checkpoint's when resuming).
    pub fn new(
        run: &'a Run<'a, B>,
        eval: &'a EvalOptions,
        eval_rows: &'a [PackedRow],
        start_step: u64,
        best: Best,
    ) -> Self {
        let s = run.s;
        Reporter {
            run,
            eval,
            eval_rows,
            metrics: MetricsLog::new(&s.output_dir),
            best,
            zero_grad_steps: 0,
            summary: TrainSummary {
                steps: 0,
                first_loss: None,
                last_loss: None,
                tokens: 0,
                elapsed_s: 0.0,
                adapter_dir: s.output_dir.clone(),
                interrupted: false,
                start_step,
                total_steps: run.setup.total_steps,
                early_stopped: false,
                best: None,
                last_eval: None,
            },
        }
    }

    /// After step `k` (counted from 0) of `stepped`: true when training stops here.
    pub fn after_step(
        &mut self,
        k: u64,
        stepped: &Stepped,
        lora: &LoraParams<B>,
        opt: &AdamW<B>,
        observer: &mut dyn Observer,
    ) -> Result<bool> {
        let (s, setup, lead) = (self.run.s, &self.run.setup, self.run.lead());
        let r = &stepped.report;
        if lead {
            self.metrics.append(r)?;
            observer.on_step(r);
        }
        let summary = &mut self.summary;
        summary.first_loss.get_or_insert(r.loss);
        summary.last_loss = Some(r.loss);
        summary.steps += 1;
        summary.tokens += r.tokens;

        let done = k + 1 == setup.total_steps;
        let eval_now =
            !self.eval_rows.is_empty() && self.eval.every.due(k + 1, setup.steps_per_epoch, done);
        let early_stop = eval_now && self.evaluate(k + 1, done, lora, observer)?;
        self.summary.interrupted = stepped.stop && !done;
        self.watch_for_stuck(stepped, observer);
        let save_now = (s.save_steps > 0 && (k + 1).is_multiple_of(s.save_steps))
            || done
            || stepped.stop
            || early_stop
            || (eval_now && self.eval.load_best_model_at_end);
        if lead && save_now {
            self.save(k + 1, lora, opt, observer)?;
        }
        Ok(stepped.stop || early_stop)
    }

    /// Rank 0 warns once gradients have been exactly 0 for [`STUCK_STEPS`] steps taken in a
    /// row.
    fn watch_for_stuck(&mut self, stepped: &Stepped, observer: &mut dyn Observer) {
        let r = &stepped.report;
        if self.run.lead() && r.grad_norm == 0.0 && r.loss_tokens > 0 && stepped.took_step {
            self.zero_grad_steps += 1;
            if self.zero_grad_steps == STUCK_STEPS {
                observer.on_warning(&format!(
                    "warning: grad_norm has been 0 for {STUCK_STEPS} steps (loss {:.4}): \
                     nothing is learning; check lora_alpha, learning_rate and that the targets \
                     reach the loss",
                    r.loss
                ));
            }
        } else {
            self.zero_grad_steps = 0;
        }
    }

    /// Evaluates after `step` (`done`: the run's last): true when early stopping ends the
    /// run here.
    fn evaluate(
        &mut self,
        step: u64,
        done: bool,
        lora: &LoraParams<B>,
        observer: &mut dyn Observer,
    ) -> Result<bool> {
        let run = self.run;
        let (loss, tokens) = eval_loss(
            run.model,
            lora,
            self.eval_rows,
            self.eval.batch_size,
            run.coll,
        )?;
        let report = EvalReport {
            step,
            eval_loss: loss,
            eval_tokens: tokens,
        };
        if run.lead() {
            self.metrics.append(&report)?;
            observer.on_eval(&report);
        }
        self.best.record(step, loss);
        self.summary.last_eval = Some(report);
        let Some(p) = self.eval.early_stopping_patience else {
            return Ok(false);
        };
        let Best {
            best,
            evals_since_best,
        } = self.best;
        if evals_since_best < p.max(1) || done {
            return Ok(false);
        }
        self.summary.early_stopped = true;
        if run.lead() {
            observer.on_note(&format!(
                "early stopping at step {step}: eval loss has not improved on {:.4} (step {}) for {evals_since_best} evaluations",
                best.map_or(f64::NAN, |b| b.1),
                best.map_or(0, |b| b.0),
            ));
        }
        Ok(true)
    }

    /// Rank 0 saves the checkpoint of `step`, and deletes the ones past `save_total_limit`.
    fn save(
        &mut self,
        step: u64,
        lora: &LoraParams<B>,
        opt: &AdamW<B>,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let (be, s) = (&*self.run.model.be, self.run.s);
        if let Some(what) = non_finite_state(be, lora, opt)? {
            return Err(TrainError::NonFiniteState {
                step,
                why: format!("{what}; {}", blame(s, &what)),
            });
        }
        let best = self.best.best;
        let state = TrainerState {
            step,
            best_step: best.map(|b| b.0),
            best_eval_loss: best.map(|b| b.1),
            evals_since_best: self.best.evals_since_best,
            ..self.run.setup.recorded.clone()
        };
        let dir = checkpoint::save(be, &s.output_dir, lora, opt, &state, &s.base_model)?;
        observer.on_save(&dir);
        if let Some(limit) = self.eval.save_total_limit {
            let keep = best
                .filter(|_| self.eval.load_best_model_at_end)
                .map(|b| b.0);
            for gone in checkpoint::rotate(&s.output_dir, limit, keep)? {
                observer.on_note(&format!(
                    "deleted {} (save_total_limit {limit})",
                    gone.display()
                ));
            }
        }
        Ok(())
    }

    /// The end of the run: with `load_best_model_at_end`, rank 0 takes the best step's
    /// weights (only it wrote the checkpoints); it writes the adapter.
    pub fn finish(
        mut self,
        mut lora: LoraParams<B>,
        started: Instant,
        observer: &mut dyn Observer,
    ) -> Result<(LoraParams<B>, TrainSummary)> {
        let run = self.run;
        let (be, s) = (&*run.model.be, run.s);
        let best = self.best.best;
        self.summary.best = best;
        if run.lead() && self.eval.load_best_model_at_end && !self.summary.interrupted {
            if let Some((step, loss)) = best {
                let last = self.summary.start_step + self.summary.steps;
                if step != last {
                    let dir = checkpoint::checkpoint_dir(&s.output_dir, step);
                    let mut best_lora = adapter::load(be, &run.model.cfg, &dir)?;
                    best_lora.config.dropout = s.lora.dropout;
                    lora = best_lora;
                    observer.on_note(&format!(
                        "load_best_model_at_end: the adapter is step {step}'s (eval loss {loss:.4}), from {}",
                        dir.display()
                    ));
                }
            }
        }
        if run.lead() {
            adapter::save(be, &lora, &s.base_model, &s.output_dir)?;
        }
        self.summary.elapsed_s = started.elapsed().as_secs_f64();
        Ok((lora, self.summary))
    }
}
