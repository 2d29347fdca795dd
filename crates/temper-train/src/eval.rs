//! Evaluation: when to evaluate during training and what follows from it (the best step,
//! early stopping), the mean eval loss over ranks, the evaluation after training, and each
//! row's loss for `temper eval`.

use std::path::Path;

use serde::Serialize;
use temper_core::Backend;
use temper_data::{Batch, PackedRow};
use temper_model::{LoraParams, Model};

use crate::batches::token_batch;
use crate::dist::collective::{Collective, Single};
use crate::error::Result;
use crate::metrics::MetricsLog;
use crate::trainer::TrainSummary;

/// When to evaluate during training (TrainingArguments' `eval_strategy` / `eval_steps`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvalEvery {
    #[default]
    Never,
    /// Every this many optimizer steps.
    Steps(u64),
    /// At the end of every epoch.
    Epoch,
}

impl EvalEvery {
    /// Whether to evaluate after optimizer step `step` (counted from 1); `last`: it is the
    /// run's last step.
    pub fn due(self, step: u64, steps_per_epoch: u64, last: bool) -> bool {
        match self {
            EvalEvery::Never => false,
            EvalEvery::Steps(n) => step.is_multiple_of(n.max(1)),
            EvalEvery::Epoch => step.is_multiple_of(steps_per_epoch) || last,
        }
    }
}

/// Evaluation during training and what follows from it, named as in transformers'
/// `TrainingArguments`, and how many checkpoints to keep.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub every: EvalEvery,
    /// Packed eval rows per forward pass (0: one).
    pub batch_size: usize,
    /// At the end, write the adapter of the step with the lowest eval loss (a checkpoint is
    /// saved at every evaluation so that it can be).
    pub load_best_model_at_end: bool,
    /// Stop after this many evaluations in a row without a lower eval loss.
    pub early_stopping_patience: Option<u64>,
    /// Keep only the newest this many checkpoints (and the best one when it is tracked).
    pub save_total_limit: Option<usize>,
}

/// One evaluation during training, as reported to observers and written to metrics.jsonl.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub step: u64,
    pub eval_loss: f64,
    pub eval_tokens: usize,
}

/// The lowest eval loss so far and how many evaluations since have not beaten it (what
/// checkpoints record, so that a resumed run goes on counting).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Best {
    /// (step, eval loss).
    pub best: Option<(u64, f64)>,
    pub evals_since_best: u64,
}

impl Best {
    /// Counts evaluation `loss` at `step`.
    pub fn record(&mut self, step: u64, loss: f64) {
        if self.best.is_none_or(|(_, b)| loss < b) {
            self.best = Some((step, loss));
            self.evals_since_best = 0;
        } else {
            self.evals_since_best += 1;
        }
    }
}

/// Mean loss per loss token of `model` with `lora` over `rows`, `rows_per_batch` packed rows
/// at a time, each rank scoring its share: (loss, loss tokens), the same on every rank.
pub fn eval_loss<B: Backend>(
    model: &Model<B>,
    lora: &LoraParams<B>,
    rows: &[PackedRow],
    rows_per_batch: usize,
    coll: &dyn Collective<B>,
) -> Result<(f64, usize)> {
    let mine: Vec<&PackedRow> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % coll.world() == coll.rank())
        .map(|(_, r)| r)
        .collect();
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in mine.chunks(rows_per_batch.max(1)) {
        let b = Batch::from_rows(chunk);
        let losses = model.token_losses(Some(lora), &token_batch(&b))?;
        sum += losses.iter().map(|&x| x as f64).sum::<f64>();
        count += b.loss_tokens();
    }
    let mut both = [sum, count as f64];
    coll.all_reduce_f64(&mut both)?;
    let count = both[1] as usize;
    Ok((
        if count > 0 {
            both[0] / count as f64
        } else {
            f64::NAN
        },
        count,
    ))
}

/// The evaluation after training, on rank 0 alone: [`eval_loss`] of the trained `lora` over
/// `eval_rows`, `rows_per_batch` rows at a time. Its row goes to `output_dir`'s
/// metrics.jsonl unless training evaluated these weights at this step already, or the
/// weights are the best step's (`load_best_model_at_end`), whose row is there.
pub fn eval_after_training<B: Backend>(
    model: &Model<B>,
    lora: &LoraParams<B>,
    eval_rows: &[PackedRow],
    rows_per_batch: usize,
    summary: &TrainSummary,
    eval: &EvalOptions,
    output_dir: &Path,
) -> Result<(f64, usize)> {
    let end_step = summary.start_step + summary.steps;
    let evaluated_at_end = summary.last_eval.as_ref().map(|e| e.step) == Some(end_step);
    let (loss, tokens) = eval_loss(model, lora, eval_rows, rows_per_batch, &Single)?;
    if !evaluated_at_end && !eval.load_best_model_at_end {
        MetricsLog::new(output_dir).append(&EvalReport {
            step: end_step,
            eval_loss: loss,
            eval_tokens: tokens,
        })?;
    }
    Ok((loss, tokens))
}

/// One sequence's mean loss and its loss tokens.
#[derive(Clone, Debug, Serialize)]
pub struct RowLoss {
    pub loss: f64,
    pub tokens: usize,
}

/// Each sequence's loss and the token-weighted mean over all of them (`temper eval --json`
/// writes this as it is).
#[derive(Clone, Debug, Serialize)]
pub struct RowLosses {
    pub mean_loss: f64,
    pub rows: Vec<RowLoss>,
}

/// Tokens per forward pass when scoring several rows together.
const ROW_BATCH_TOKENS: usize = 4096;

/// Each sequence's mean loss (one per row of [`temper_data::unpacked`] rows) and the
/// token-weighted mean, with `lora` or the base model alone.
pub fn row_losses<B: Backend>(
    model: &Model<B>,
    lora: Option<&LoraParams<B>>,
    rows: &[PackedRow],
) -> Result<RowLosses> {
    let mut results: Vec<RowLoss> = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        // Group whole rows up to ROW_BATCH_TOKENS (a longer row goes alone).
        let mut end = start + 1;
        let mut tokens = rows[start].len();
        while end < rows.len() && tokens + rows[end].len() <= ROW_BATCH_TOKENS {
            tokens += rows[end].len();
            end += 1;
        }
        let refs: Vec<_> = rows[start..end].iter().collect();
        let batch = Batch::from_rows(&refs);
        let losses = model.token_losses(lora, &token_batch(&batch))?;
        for w in batch.cu_seqlens.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let counted = batch.targets[a..b].iter().filter(|&&t| t >= 0).count();
            let sum: f64 = losses[a..b].iter().map(|&x| x as f64).sum();
            results.push(RowLoss {
                loss: if counted > 0 {
                    sum / counted as f64
                } else {
                    0.0
                },
                tokens: counted,
            });
        }
        start = end;
    }
    let total_tokens: usize = results.iter().map(|r| r.tokens).sum();
    let total: f64 = results.iter().map(|r| r.loss * r.tokens as f64).sum();
    Ok(RowLosses {
        mean_loss: if total_tokens > 0 {
            total / total_tokens as f64
        } else {
            f64::NAN
        },
        rows: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_steps(every: EvalEvery, steps_per_epoch: u64, total: u64) -> Vec<u64> {
        (1..=total)
            .filter(|&k| every.due(k, steps_per_epoch, k == total))
            .collect()
    }

    #[test]
    fn evaluations_fall_on_the_steps_transformers_picks() {
        assert_eq!(due_steps(EvalEvery::Never, 4, 10), Vec::<u64>::new());
        assert_eq!(due_steps(EvalEvery::Steps(3), 4, 10), [3, 6, 9]);
        // A short last epoch is evaluated at its end too.
        assert_eq!(due_steps(EvalEvery::Epoch, 4, 10), [4, 8, 10]);
        assert_eq!(due_steps(EvalEvery::Steps(0), 4, 3), [1, 2, 3]);
    }

    #[test]
    fn the_best_step_and_the_evaluations_since() {
        let mut b = Best::default();
        let mut seen = Vec::new();
        for (step, loss) in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.0), (5, 1.0), (6, 1.5)] {
            b.record(step, loss);
            seen.push((b.best.unwrap().0, b.evals_since_best));
        }
        // A tie does not beat the best.
        assert_eq!(seen, [(1, 0), (2, 0), (2, 1), (2, 2), (5, 0), (5, 1)]);
    }
}
