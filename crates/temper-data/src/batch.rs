//! A micro-batch in varlen layout: rows laid end to end, one `cu_seqlens` over all
//! their sequences, and targets already shifted.

use crate::pack::PackedRow;
use crate::IGNORE_INDEX;

/// Tokens of several rows concatenated (no padding).
///
/// `targets[t]` is the token that position `t` must predict: `labels[t + 1]` when
/// `t + 1` is in the same sequence, else -100. So the last token of every sequence
/// predicts nothing and packed sequences never leak into each other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub input_ids: Vec<u32>,    // (tokens,)
    pub position_ids: Vec<u32>, // (tokens,) restarting at 0 in each sequence
    pub cu_seqlens: Vec<u32>,   // (sequences + 1,) offsets into tokens, starting at 0
    pub targets: Vec<i32>,      // (tokens,) -100 = no loss
}

impl Batch {
    /// Lays `rows` end to end. Panics if a row's `seq_lens` do not sum to its length
    /// (rows from [`crate::pack`] / [`crate::unpacked`] always do).
    pub fn from_rows(rows: &[&PackedRow]) -> Batch {
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let mut b = Batch {
            input_ids: Vec::with_capacity(total),
            position_ids: Vec::with_capacity(total),
            cu_seqlens: vec![0],
            targets: Vec::with_capacity(total),
        };
        for row in rows {
            let base = b.input_ids.len();
            b.input_ids.extend_from_slice(&row.input_ids);
            b.position_ids.extend_from_slice(&row.position_ids);
            let mut start = 0usize;
            for &n in &row.seq_lens {
                let end = start + n as usize;
                let labels = &row.labels[start..end];
                b.targets.extend(labels.iter().skip(1).copied());
                if n > 0 {
                    b.targets.push(IGNORE_INDEX);
                }
                b.cu_seqlens.push((base + end) as u32);
                start = end;
            }
            assert_eq!(
                start,
                row.len(),
                "PackedRow: seq_lens must sum to the row length"
            );
        }
        b
    }

    /// Number of positions that contribute to the loss.
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }
}
