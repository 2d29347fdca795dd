//! What 4-bit and 8-bit blockwise quantisation share: the absmax of a block and the scaling
//! of its values into [-1, 1].

/// max |x| over a block (exact in f32).
#[inline]
pub(crate) fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// How bitsandbytes' CPU reference ops scale a block: full blocks multiply by the f32
/// reciprocal `1 / absmax`; the partial last block of a tensor divides by absmax. Both clamp
/// absmax below at 1e-38 (an all-zero block scales to zeros) and the result to [-1, 1].
#[derive(Clone, Copy)]
pub(crate) enum Scale {
    Mul(f32),
    Div(f32),
}

impl Scale {
    #[inline]
    pub fn new(absmax: f32, partial_block: bool) -> Self {
        let a = absmax.max(1e-38);
        if partial_block {
            Scale::Div(a)
        } else {
            Scale::Mul(1.0 / a)
        }
    }

    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        let s = match self {
            Scale::Mul(r) => x * r,
            Scale::Div(a) => x / a,
        };
        s.clamp(-1.0, 1.0)
    }
}
