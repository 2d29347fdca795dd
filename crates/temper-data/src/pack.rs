//! Packing examples into rows of at most `max_seq_len` tokens.

use crate::tokenize::Example;

/// Several sequences laid end to end in one row (no padding). `position_ids` restart at
/// 0 for every sequence and `seq_lens` lists the sequence lengths in order, so attention
/// can be kept inside each sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,    // (len,)
    pub labels: Vec<i32>,       // (len,) aligned with input_ids, -100 = no loss
    pub position_ids: Vec<u32>, // (len,)
    pub seq_lens: Vec<u32>,     // (sequences,), sums to len
}

impl PackedRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    fn push(&mut self, ids: &[u32], labels: &[i32]) {
        self.input_ids.extend_from_slice(ids);
        self.labels.extend_from_slice(labels);
        self.position_ids.extend(0..ids.len() as u32);
        self.seq_lens.push(ids.len() as u32);
    }
}

/// What packing does with an example longer than `max_seq_len` (TRL's
/// `packing_strategy`: `bfd` truncates, `bfd_split` splits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Overflow {
    /// Drop the tail.
    #[default]
    Truncate,
    /// Cut into pieces of `max_seq_len` tokens (the last one shorter); each piece is
    /// packed as a sequence of its own.
    Split,
}

/// Packs examples best-fit-decreasing: longest first, each into the fullest row that
/// still has room, else a new row. Examples longer than `max_seq_len` are truncated
/// (their tail is dropped); empty examples are skipped. Rows are not padded, so each
/// has at most `max_seq_len` tokens. The result depends only on the input (ties keep
/// input order), and equals TRL's `pack_dataset(strategy="bfd")` on one batch.
pub fn pack(examples: &[Example], max_seq_len: usize) -> Vec<PackedRow> {
    pack_with(examples, max_seq_len, Overflow::Truncate)
}

/// [`pack`] with a choice of what happens to over-long examples.
pub fn pack_with(examples: &[Example], max_seq_len: usize, overflow: Overflow) -> Vec<PackedRow> {
    if max_seq_len == 0 {
        return Vec::new();
    }
    // (example, token range) of every piece to pack.
    let mut pieces: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        let n = e.input_ids.len();
        match overflow {
            Overflow::Truncate if n > 0 => pieces.push((i, 0..n.min(max_seq_len))),
            Overflow::Split => {
                let mut s = 0;
                while s < n {
                    pieces.push((i, s..(s + max_seq_len).min(n)));
                    s += max_seq_len;
                }
            }
            Overflow::Truncate => {}
        }
    }
    // Stable sort: equal lengths stay in input order.
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&p| std::cmp::Reverse(pieces[p].1.len()));

    let mut rows: Vec<PackedRow> = Vec::new();
    // Free space -> rows with exactly that much free space, oldest first (the best fit
    // is the smallest key >= the piece's length).
    let mut by_free: std::collections::BTreeMap<usize, std::collections::VecDeque<usize>> =
        Default::default();
    for p in order {
        let (i, ref range) = pieces[p];
        let e = &examples[i];
        let n = range.len();
        let fit = by_free.range(n..).next().map(|(&free, _)| free);
        let row = match fit {
            Some(free) => {
                let bucket = by_free.get_mut(&free).expect("key just found");
                let row = bucket.pop_front().expect("buckets are never empty");
                if bucket.is_empty() {
                    by_free.remove(&free);
                }
                row
            }
            None => {
                rows.push(PackedRow::default());
                rows.len() - 1
            }
        };
        rows[row].push(&e.input_ids[range.clone()], &e.labels[range.clone()]);
        let free = max_seq_len - rows[row].len();
        if free > 0 {
            by_free.entry(free).or_default().push_back(row);
        }
    }
    rows
}

/// One example per row, in input order, untruncated. An empty example gives an empty
/// row with no sequence.
pub fn unpacked(examples: &[Example]) -> Vec<PackedRow> {
    examples
        .iter()
        .map(|e| {
            let mut row = PackedRow::default();
            if !e.input_ids.is_empty() {
                row.push(&e.input_ids, &e.labels);
            }
            row
        })
        .collect()
}
