//! The 4-bit code tables (NF4, FP4) and how a scaled value in [-1, 1] picks its code.
//!
//! A value goes to the code whose decision interval holds it. The decision thresholds are the
//! f32 midpoints `(s[i] + s[i+1]) / 2` of the sorted code values, and a value exactly on a
//! threshold takes the lower code: this is `torch.bucketize(x, midpoints)` as in
//! bitsandbytes' reference ops (`backends/default/ops.py`), which the fixtures check.

/// A 4-bit data type of bitsandbytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// NormalFloat4: quantiles of N(0, 1), from the QLoRA paper.
    Nf4,
    /// bitsandbytes' FP4: 1 sign, 2 exponent, 1 mantissa bit.
    Fp4,
}

impl QuantType {
    /// The name bitsandbytes and transformers use: `nf4` / `fp4`.
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nf4" => Some(QuantType::Nf4),
            "fp4" => Some(QuantType::Fp4),
            _ => None,
        }
    }

    /// The 16 values, indexed by code (bitsandbytes' `get_4bit_type`).
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4,
            QuantType::Fp4 => &FP4,
        }
    }

    /// Sorted thresholds and the code of each interval.
    pub(crate) fn table(self) -> &'static Bucketizer<16> {
        match self {
            QuantType::Nf4 => &NF4_TABLE,
            QuantType::Fp4 => &FP4_TABLE,
        }
    }
}

/// NF4 (bitsandbytes `get_4bit_type("nf4")`): `create_normal_map(offset=0.9677083)`, the
/// quantiles of a standard normal with an exact zero, normalised to [-1, 1] (QLoRA,
/// arXiv:2305.14314). The decimal values bitsandbytes 0.50 hard-codes, rounded to f32.
pub const NF4: [f32; 16] = f64s_to_f32s([
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]);

const fn f64s_to_f32s<const N: usize>(x: [f64; N]) -> [f32; N] {
    let mut out = [0.0f32; N];
    let mut i = 0;
    while i < N {
        out[i] = x[i] as f32;
        i += 1;
    }
    out
}

/// FP4 (bitsandbytes `get_4bit_type("fp4")`): codes 0..7 are 0, 0.0625, 8, 12, 4, 6, 2, 3
/// (exponent bias 2, one mantissa bit, subnormals), 8..15 the same negated, all divided by
/// 12 in f32. Code 8 (`-0`) is +0.0: bitsandbytes builds it from the Python integer `-0`.
pub const FP4: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// Decision thresholds of an N-entry code table: `bounds[i]` (f32 midpoint of the i-th and
/// (i+1)-th smallest codes) separates sorted interval i from i+1; `codes[i]` is the code
/// index of sorted interval i (`argsort(code)`, stable, so FP4's two zeros keep their order:
/// 0 below 8).
pub(crate) struct Bucketizer<const N: usize> {
    pub bounds: [f32; N],
    pub codes: [u8; N],
}

impl<const N: usize> Bucketizer<N> {
    pub fn new(code: &[f32; N]) -> Self {
        let mut order: [u8; N] = [0; N];
        for (i, o) in order.iter_mut().enumerate() {
            *o = i as u8;
        }
        // A stable sort: equal values (-0.0 and 0.0 too) keep their index order, as the
        // insertion sort of quant.cu does.
        order.sort_by(|&a, &b| {
            code[a as usize]
                .partial_cmp(&code[b as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut bounds = [f32::INFINITY; N];
        for i in 0..N - 1 {
            let lo = code[order[i] as usize];
            let hi = code[order[i + 1] as usize];
            bounds[i] = (lo + hi) / 2.0;
        }
        Bucketizer {
            bounds,
            codes: order,
        }
    }

    /// The code of `x`: the lowest sorted interval whose upper threshold is >= x
    /// (`torch.bucketize(x, bounds, right=False)`).
    #[inline]
    pub fn code_of(&self, x: f32) -> u8 {
        let i = self.bounds[..N - 1].partition_point(|&b| b < x);
        self.codes[i]
    }
}

static NF4_TABLE: std::sync::LazyLock<Bucketizer<16>> =
    std::sync::LazyLock::new(|| Bucketizer::new(&NF4));
static FP4_TABLE: std::sync::LazyLock<Bucketizer<16>> =
    std::sync::LazyLock::new(|| Bucketizer::new(&FP4));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_thresholds_are_the_cuda_kernels_constants() {
        // bitsandbytes' dQuantizeNF4 decision tree (csrc/kernels.cu), as f32.
        let cuda = f64s_to_f32s([
            -0.8480964004993439,
            -0.6106329262256622,
            -0.4599952697753906,
            -0.33967943489551544,
            -0.23460740596055984,
            -0.13791173323988914,
            -0.045525018125772476,
            0.03979014977812767,
            0.1202552504837513,
            0.2035212516784668,
            0.2920137718319893,
            0.3893125355243683,
            0.5016634166240692,
            0.6427869200706482,
            0.8614784181118011,
        ]);
        let t = QuantType::Nf4.table();
        assert_eq!(&t.bounds[..15], &cuda);
        assert_eq!(
            t.codes,
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    #[test]
    fn fp4_sorted_order_puts_code_0_below_code_8() {
        let t = QuantType::Fp4.table();
        assert_eq!(
            t.codes,
            [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]
        );
        // Exactly zero takes code 0; the smallest positive value takes code 8 (both decode
        // to zero).
        assert_eq!(t.code_of(0.0), 0);
        assert_eq!(t.code_of(-0.0), 0);
        assert_eq!(t.code_of(1e-30), 8);
        assert_eq!(t.code_of(-1e-30), 0);
    }

    #[test]
    fn a_value_on_a_threshold_takes_the_lower_code() {
        let t = QuantType::Nf4.table();
        for i in 0..15 {
            let b = t.bounds[i];
            assert_eq!(t.code_of(b), i as u8);
            assert_eq!(t.code_of(b + b.abs() * 1e-6), i as u8 + 1);
        }
    }
}
