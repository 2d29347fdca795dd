//! bitsandbytes' dynamic 8-bit map (`create_dynamic_map`, Dettmers 2015, "8-Bit
//! Approximations for Parallelism in Deep Learning", arXiv:1511.04561): a dynamic exponent
//! 10^-6 .. 10^0 and a linear fraction whose resolution grows with the exponent.
//!
//! The signed map (used for double quantisation of absmax and for Adam's first moment) has
//! 2^i fraction steps at exponent i, mirrored, plus 0 and 1; the unsigned map (Adam's second
//! moment) has 2^(i+1) steps per exponent, plus 0 and 1. Each step value is the midpoint of a
//! `torch.linspace(0.1, 1, steps + 1)` interval times the power of ten, all in f32 with
//! PyTorch's own rounding, so the 256 values are bit-identical to bitsandbytes'.

/// The 256 sorted values of `create_dynamic_map(signed)` (max_exponent_bits 7, 8 bits).
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXPONENT_BITS {
        let steps = if signed {
            1usize << i
        } else {
            1usize << (i + 1)
        };
        let bounds = linspace(0.1, 1.0, steps + 1);
        // Python's `10 ** (i - 6)`, a double, rounded to f32 when it multiplies the tensor.
        let scale = 10f64.powi(i - (MAX_EXPONENT_BITS - 1)) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` on an x86 CPU with AVX2 or AVX512
/// (PyTorch's kernels for those are compiled with fused multiply-add): the first half counts
/// up from `start`, the second half down from `end`, `step = (end - start) / (steps - 1)`, each
/// `start + step * i` rounded once. PyTorch's plain-C build (`ATEN_CPU_CAPABILITY=default`)
/// rounds twice and gives a map differing in the last bit of 42 signed / 31 unsigned entries;
/// bitsandbytes saves the map it used next to double-quantised weights, and
/// [`crate::QuantState`] reads that one.
fn linspace(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_the_maps() {
        for signed in [true, false] {
            let m = dynamic_map(signed);
            assert!(m.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
            assert_eq!(m[255], 1.0);
            assert!(m.contains(&0.0));
        }
        let s = dynamic_map(true);
        assert!(s[0] < -0.99 && s[0] > -1.0);
        assert_eq!(s.iter().filter(|&&v| v < 0.0).count(), 127);
        let u = dynamic_map(false);
        assert_eq!(u[0], 0.0);
    }
}
