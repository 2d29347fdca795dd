//! Which rows each rank trains on. One optimizer step takes `world × micro × accum` rows from
//! the epoch's shuffled order, exactly the rows one process with `accum' = world × accum`
//! would take. Rank r takes the r-th contiguous slice of them (`micro × accum` rows) and
//! splits it into `accum` micro-batches, so rank r's micro-batches are global micro-batches
//! `r·accum .. (r+1)·accum` of that single process, with the same dropout seeds.
//!
//! Contiguous slices rather than interleaving (torch's DistributedSampler takes every
//! world-th row) make a world-W run and a one-process run with W times the accumulation
//! see each micro-batch whole, so even dropout masks agree.

/// The split of a step's rows over ranks and micro-batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
    /// Rows per micro-batch.
    pub micro: usize,
    /// Micro-batches per rank per step.
    pub accum: usize,
}

impl Shard {
    /// Rows of one optimizer step, over all ranks.
    pub fn rows_per_step(&self) -> usize {
        self.world * self.micro * self.accum
    }

    /// This rank's rows of a step (`step_rows` holds all ranks' rows in global order). The
    /// last step of an epoch may be short: later ranks then get fewer rows, or none.
    pub fn mine<'a>(&self, step_rows: &'a [usize]) -> &'a [usize] {
        let per_rank = self.micro * self.accum;
        let lo = (self.rank * per_rank).min(step_rows.len());
        let hi = ((self.rank + 1) * per_rank).min(step_rows.len());
        &step_rows[lo..hi]
    }

    /// The global index (over all ranks) of this rank's first micro-batch in a step.
    pub fn first_micro_batch(&self) -> usize {
        self.rank * self.accum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micro_batches(s: Shard, step_rows: &[usize]) -> Vec<(usize, Vec<usize>)> {
        s.mine(step_rows)
            .chunks(s.micro)
            .enumerate()
            .map(|(j, c)| (s.first_micro_batch() + j, c.to_vec()))
            .collect()
    }

    #[test]
    fn ranks_together_see_one_process_micro_batches() {
        let step_rows: Vec<usize> = (100..124).collect();
        let one = Shard {
            rank: 0,
            world: 1,
            micro: 2,
            accum: 12,
        };
        let expected = micro_batches(one, &step_rows);
        for step in [&step_rows[..], &step_rows[..7], &step_rows[..1]] {
            let expected: Vec<_> = micro_batches(one, step);
            let mut got = Vec::new();
            for rank in 0..3 {
                let s = Shard {
                    rank,
                    world: 3,
                    micro: 2,
                    accum: 4,
                };
                assert_eq!(s.rows_per_step(), one.rows_per_step());
                got.extend(micro_batches(s, step));
            }
            assert_eq!(got, expected);
        }
        assert_eq!(expected.len(), 12);
    }

    #[test]
    fn a_short_last_step_leaves_later_ranks_empty() {
        let s = |rank| Shard {
            rank,
            world: 4,
            micro: 2,
            accum: 1,
        };
        let rows = [7, 8, 9];
        assert_eq!(s(0).mine(&rows), &[7, 8]);
        assert_eq!(s(1).mine(&rows), &[9]);
        assert!(s(2).mine(&rows).is_empty());
        assert!(s(3).mine(&rows).is_empty());
    }
}
