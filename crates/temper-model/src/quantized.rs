//! 4-bit frozen weights: quantising a bf16/fp16 folder's linear layers as it loads, or reading
//! a folder saved in bitsandbytes' 4-bit layout as it is (no requantising). Quantisation is
//! temper-quant's (bit-exact with bitsandbytes); the backend holds the codes and scales and
//! dequantises each weight right before its GEMM.

use temper_core::{Absmax4, Quant4};
use temper_quant::{Absmax, QuantState, QuantType};

/// Quantise the 7 linear kinds of every decoder layer while loading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeOnLoad {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// Double quantisation of the block scales (bitsandbytes' `bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl Default for QuantizeOnLoad {
    fn default() -> Self {
        QuantizeOnLoad {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }
}

/// How [`crate::Model::load_with`] stores the frozen weights.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// None: as stored (a folder with a bitsandbytes `quantization_config` loads in 4 bits
    /// anyway); Some: quantise the linear layers of a bf16/fp16/f32 folder.
    pub quantize: Option<QuantizeOnLoad>,
}

/// The backend's view of a bitsandbytes 4-bit weight.
pub fn to_quant4(q: &QuantState) -> Quant4 {
    let absmax = match &q.absmax {
        Absmax::Plain(a) => Absmax4::Plain(a.clone()),
        Absmax::Nested(n) => Absmax4::Nested {
            codes: n.codes.clone(),
            map: n.map.clone(),
            nested_absmax: n.nested_absmax.clone(),
            nested_blocksize: temper_quant::double_quant::NESTED_BLOCKSIZE,
            offset: n.offset,
        },
    };
    Quant4 {
        code: *q.quant_type.code(),
        blocksize: q.blocksize,
        numel: q.numel(),
        bytes: q.bytes.clone(),
        absmax,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_view_dequantises_like_temper_quant() {
        let values: Vec<f32> = (0..64 * 300 + 10)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 64) as f32 * 0.01))
            .collect();
        for double in [false, true] {
            for qt in [QuantType::Nf4, QuantType::Fp4] {
                let q = QuantState::quantize(&values, &[values.len()], "float32", 64, qt, double)
                    .expect("quantize");
                let want = q.dequantize_to_f32().expect("dequantize");
                let mut got = vec![0.0; values.len()];
                to_quant4(&q).dequantize_into(&mut got).expect("dequantize");
                assert_eq!(got, want, "{qt:?} double {double}");
            }
        }
    }
}
