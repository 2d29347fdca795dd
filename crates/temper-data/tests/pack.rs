//! Packing, varlen batches and the epoch order, checked against plain recounts.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_data::{pack, shuffled_order, unpacked, Batch, Example, PackedRow};

/// Example `k` has tokens `k * 10_000 + position`, so every token is unique and says
/// where it came from. Every third token is untrained.
fn examples(lens: &[usize]) -> Vec<Example> {
    lens.iter()
        .enumerate()
        .map(|(k, &n)| {
            let input_ids: Vec<u32> = (0..n).map(|p| (k * 10_000 + p) as u32).collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(p, &id)| if p % 3 == 0 { -100 } else { id as i32 })
                .collect();
            Example { input_ids, labels }
        })
        .collect()
}

fn random_lens(n: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..=max)).collect()
}

/// The sequences of a row, split by seq_lens.
fn sequences(row: &PackedRow) -> Vec<(Vec<u32>, Vec<i32>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &n in &row.seq_lens {
        let end = start + n as usize;
        out.push((
            row.input_ids[start..end].to_vec(),
            row.labels[start..end].to_vec(),
        ));
        start = end;
    }
    assert_eq!(start, row.input_ids.len(), "seq_lens must cover the row");
    out
}

#[test]
fn packing_keeps_every_token_once_within_max_len() {
    for (seed, max) in [(1u64, 64usize), (2, 100), (3, 7), (4, 1)] {
        let lens = random_lens(300, 150, seed);
        let exs = examples(&lens);
        let rows = pack(&exs, max);

        // Every (truncated) example appears exactly once, as one whole sequence.
        let mut expected: Vec<(Vec<u32>, Vec<i32>)> = exs
            .iter()
            .filter(|e| !e.input_ids.is_empty())
            .map(|e| {
                let n = e.input_ids.len().min(max);
                (e.input_ids[..n].to_vec(), e.labels[..n].to_vec())
            })
            .collect();
        let mut got: Vec<(Vec<u32>, Vec<i32>)> = rows.iter().flat_map(sequences).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "seed {seed} max {max}");

        let total: usize = expected.iter().map(|s| s.0.len()).sum();
        for row in &rows {
            assert!(!row.input_ids.is_empty());
            assert!(
                row.input_ids.len() <= max,
                "row of {} > {max}",
                row.input_ids.len()
            );
            assert_eq!(row.labels.len(), row.input_ids.len());
            assert_eq!(row.position_ids.len(), row.input_ids.len());
            let mut pos = Vec::new();
            for &n in &row.seq_lens {
                assert!(n > 0);
                pos.extend(0..n);
            }
            assert_eq!(row.position_ids, pos, "positions restart at each sequence");
        }
        // Best-fit-decreasing uses at most 11/9 OPT + 1 bins, and OPT >= ceil(total/max).
        let lower = total.div_ceil(max);
        assert!(
            rows.len() <= lower * 11 / 9 + 1,
            "{} rows for {total} tokens of at most {max}",
            rows.len()
        );
    }
}

#[test]
fn packing_fills_rows_exactly_when_it_can() {
    // 6+4, 5+5, 7+3 fit exactly into three rows of 10.
    let rows = pack(&examples(&[6, 5, 7, 4, 5, 3]), 10);
    assert_eq!(rows.len(), 3);
    let mut lens: Vec<Vec<u32>> = rows.iter().map(|r| r.seq_lens.clone()).collect();
    lens.sort();
    assert_eq!(lens, vec![vec![5, 5], vec![6, 4], vec![7, 3]]);
    // Deterministic.
    assert_eq!(rows, pack(&examples(&[6, 5, 7, 4, 5, 3]), 10));
}

#[test]
fn unpacked_is_one_example_per_row() {
    let exs = examples(&[3, 0, 5]);
    let rows = unpacked(&exs);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].input_ids, exs[0].input_ids);
    assert_eq!(rows[0].seq_lens, vec![3]);
    assert_eq!(rows[0].position_ids, vec![0, 1, 2]);
    assert!(rows[1].input_ids.is_empty() && rows[1].seq_lens.is_empty());
    assert_eq!(rows[2].labels, exs[2].labels);
}

#[test]
fn batch_targets_never_cross_a_sequence() {
    let exs = examples(&random_lens(200, 40, 7));
    let rows = pack(&exs, 48);
    let refs: Vec<&PackedRow> = rows.iter().take(5).collect();
    let b = Batch::from_rows(&refs);

    let tokens: usize = refs.iter().map(|r| r.input_ids.len()).sum();
    assert_eq!(b.len(), tokens);
    assert_eq!(b.targets.len(), tokens);
    assert_eq!(b.position_ids.len(), tokens);
    let seqs: Vec<(Vec<u32>, Vec<i32>)> = refs.iter().flat_map(|r| sequences(r)).collect();
    assert_eq!(b.cu_seqlens.len(), seqs.len() + 1);
    assert_eq!(b.cu_seqlens[0], 0);
    assert_eq!(*b.cu_seqlens.last().unwrap() as usize, tokens);

    let mut loss_tokens = 0;
    for (s, (ids, labels)) in seqs.iter().enumerate() {
        let (a, z) = (b.cu_seqlens[s] as usize, b.cu_seqlens[s + 1] as usize);
        assert_eq!(&b.input_ids[a..z], ids.as_slice());
        for t in a..z {
            let expect = if t + 1 < z { labels[t + 1 - a] } else { -100 };
            assert_eq!(b.targets[t], expect, "token {t} of sequence {s}");
            // A target is a token of the same sequence (ids encode their example).
            if b.targets[t] != -100 {
                assert_eq!(b.targets[t] / 10_000, b.input_ids[t] as i32 / 10_000);
            }
        }
        loss_tokens += labels.iter().skip(1).filter(|&&l| l != -100).count();
        assert_eq!(b.position_ids[a], 0);
    }
    assert_eq!(b.loss_tokens(), loss_tokens);
}

#[test]
fn batch_of_unpacked_rows_concatenates() {
    let exs = examples(&[2, 3]);
    let rows = unpacked(&exs);
    let b = Batch::from_rows(&rows.iter().collect::<Vec<_>>());
    assert_eq!(b.input_ids, vec![0, 1, 10_000, 10_001, 10_002]);
    assert_eq!(b.cu_seqlens, vec![0, 2, 5]);
    assert_eq!(b.position_ids, vec![0, 1, 0, 1, 2]);
    // Labels: [-100, 1], [-100, 10001, 10002] -> targets shifted within each sequence.
    assert_eq!(b.targets, vec![1, -100, 10_001, 10_002, -100]);
    assert_eq!(b.loss_tokens(), 3);
}

#[test]
fn shuffled_order_is_a_deterministic_permutation() {
    for n in [0usize, 1, 2, 17, 1000] {
        let a = shuffled_order(n, 42, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_eq!(a, shuffled_order(n, 42, 0));
    }
    let base = shuffled_order(1000, 42, 0);
    assert_ne!(base, shuffled_order(1000, 42, 1), "epochs differ");
    assert_ne!(base, shuffled_order(1000, 43, 0), "seeds differ");
    assert_ne!(base, (0..1000).collect::<Vec<_>>(), "it shuffles");
    // Roughly uniform: each element's mean position over many epochs is near the middle.
    let n = 10;
    let mut sum = vec![0usize; n];
    let epochs = 4000;
    for e in 0..epochs {
        for (pos, &i) in shuffled_order(n, 5, e).iter().enumerate() {
            sum[i] += pos;
        }
    }
    for (i, &s) in sum.iter().enumerate() {
        let mean = s as f64 / epochs as f64;
        assert!((mean - 4.5).abs() < 0.2, "element {i} mean position {mean}");
    }
}
