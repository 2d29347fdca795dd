//! `absmax.mean()` as PyTorch computes it on the CPU, so the double-quantisation offset is
//! the same f32 bitsandbytes stores.
//!
//! PyTorch's CPU `sum` of a contiguous f32 vector (aten/src/ATen/native/cpu/SumKernel.cpp,
//! `cascade_sum`) reads 8-float vectors, keeps 4 independent vector accumulators (ILP), and
//! folds them through 4 levels of partial sums every 16 (or more) steps; the tail that does
//! not fill a vector is added first, then the 8 lanes in order. `mean` is that sum divided by
//! the count in f32. The result does not depend on the CPU's vector width (AVX2 and AVX512
//! builds use 8-float vectors for this kernel), but above 32768 elements PyTorch splits the
//! sum over threads, so there bitsandbytes' own offset depends on its thread count; this is
//! the one-thread order.

/// PyTorch's one-thread CPU `x.sum()` of f32 values.
pub fn torch_sum(x: &[f32]) -> f32 {
    const W: usize = 8;
    let n = x.len();
    if n < W {
        // Fewer elements than one vector: the scalar path of the same algorithm.
        return row_sum::<1>(n, |i| [x[i]])[0];
    }
    let vectors = n / W;
    let lanes = row_sum::<W>(vectors, |i| {
        let mut v = [0.0f32; W];
        v.copy_from_slice(&x[i * W..i * W + W]);
        v
    });
    let mut acc = 0.0f32;
    for &v in &x[vectors * W..] {
        acc += v;
    }
    for l in lanes {
        acc += l;
    }
    acc
}

/// PyTorch's CPU `x.mean()` of f32 values: `sum / n` in f32.
pub fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

fn add<const L: usize>(a: &mut [f32; L], b: &[f32; L]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `row_sum`: the elements seen as rows of 4 (ILP), each column summed by `multi_row_sum`,
/// the leftover elements added to column 0, then columns 1..3 added to column 0.
fn row_sum<const L: usize>(size: usize, elem: impl Fn(usize) -> [f32; L]) -> [f32; L] {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum::<L, ILP>(rows, |i, k| elem(i * ILP + k));
    for i in rows * ILP..size {
        add(&mut partial[0], &elem(i));
    }
    let mut out = partial[0];
    for p in &partial[1..] {
        add(&mut out, p);
    }
    out
}

/// ceil(log2(x)), and 1 for x <= 2 (ATen's `CeilLog2`).
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// `multi_row_sum`: NROWS running sums over `size` steps, cascaded through 4 levels so only
/// partial sums of similar size are added together.
fn multi_row_sum<const L: usize, const NROWS: usize>(
    size: usize,
    elem: impl Fn(usize, usize) -> [f32; L],
) -> [[f32; L]; NROWS] {
    const LEVELS: usize = 4;
    let level_power = std::cmp::max(4, ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; L]; NROWS]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, &elem(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (below, above) = acc.split_at_mut(j);
            for (hi, lo) in above[0].iter_mut().zip(below[j - 1].iter_mut()) {
                add(hi, lo);
                *lo = [0.0; L];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, &elem(i, k));
        }
        i += 1;
    }
    let mut out = acc[0];
    for level in &acc[1..] {
        for (o, a) in out.iter_mut().zip(level) {
            add(o, a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sums_are_exact_where_the_order_cannot_matter() {
        assert_eq!(torch_sum(&[]), 0.0);
        assert_eq!(torch_sum(&[1.5]), 1.5);
        let x: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        assert_eq!(torch_sum(&x), 500_500.0);
        assert_eq!(torch_mean(&x), 500.5);
    }

    #[test]
    fn close_to_an_f64_sum() {
        let x: Vec<f32> = (0..100_003)
            .map(|i| ((i as f32) * 0.618_034).fract() * 0.1 + 0.02)
            .collect();
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        let got = torch_sum(&x) as f64;
        assert!((got - exact).abs() <= exact * 1e-6, "{got} vs {exact}");
    }
}
