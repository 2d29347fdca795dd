//! Packed rows as the model's input: which rows each optimizer step takes (the epoch's
//! shuffled order, cut into steps), a rank's micro-batches of them, and the one view of a
//! [`Batch`] as the model's [`TokenBatch`].

use temper_data::{shuffled_order, Batch, PackedRow};
use temper_model::TokenBatch;

use crate::dist::shard::Shard;

/// `b` as the model reads it (borrowed, nothing copied).
pub fn token_batch(b: &Batch) -> TokenBatch<'_> {
    TokenBatch {
        ids: &b.input_ids,
        positions: &b.position_ids,
        cu_seqlens: &b.cu_seqlens,
        targets: &b.targets,
    }
}

/// The rows of each step: epoch e visits the rows in `shuffled_order(rows, seed, e)`, one
/// step `rows_per_step` of them (the last step of an epoch may be short).
pub(crate) struct StepRows {
    rows: usize,
    seed: u64,
    rows_per_step: usize,
    steps_per_epoch: u64,
    /// The epoch `order` is for (u64::MAX: none yet).
    epoch: u64,
    order: Vec<usize>,
}

impl StepRows {
    pub(crate) fn new(rows: usize, seed: u64, rows_per_step: usize, steps_per_epoch: u64) -> Self {
        StepRows {
            rows,
            seed,
            rows_per_step,
            steps_per_epoch,
            epoch: u64::MAX,
            order: Vec::new(),
        }
    }

    /// The indices of step `k`'s rows, over all ranks, in global order.
    pub(crate) fn of(&mut self, k: u64) -> &[usize] {
        let epoch = k / self.steps_per_epoch;
        if epoch != self.epoch {
            self.order = shuffled_order(self.rows, self.seed, epoch);
            self.epoch = epoch;
        }
        let i = (k % self.steps_per_epoch) as usize;
        &self.order[i * self.rows_per_step..((i + 1) * self.rows_per_step).min(self.rows)]
    }
}

/// This rank's micro-batches of a step whose rows are `step_rows` (all ranks').
pub(crate) fn micro_batches(rows: &[PackedRow], step_rows: &[usize], shard: &Shard) -> Vec<Batch> {
    shard
        .mine(step_rows)
        .chunks(shard.micro)
        .map(|ids| {
            let refs: Vec<&PackedRow> = ids.iter().map(|&j| &rows[j]).collect();
            Batch::from_rows(&refs)
        })
        .collect()
}
