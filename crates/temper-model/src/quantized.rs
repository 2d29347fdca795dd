//! 4-bit and 8-bit frozen weights: quantising a bf16/fp16 folder's linear layers as it loads.
//! Quantisation, and reading a folder saved in bitsandbytes' 4-bit or 8-bit layout as it is,
//! are temper-quant's (bit-exact with bitsandbytes); the backend holds the codes and scales
//! and dequantises each weight right before its GEMM.

use rayon::prelude::*;
use temper_core::Backend;
use temper_quant::{Int8Rows, Quant4, QuantState, QuantType, Quantize4Spec};

use crate::error::{ModelError, Result};
use crate::safetensors_dir::SafetensorsDir;

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

/// How [`crate::Model::load_with`] stores the frozen weights. A folder saved by bitsandbytes
/// in 4 or 8 bits loads as stored whatever these say; they apply to weights stored in
/// bf16/fp16/f32.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Some: quantise the linear layers to 4 bits (QLoRA).
    pub quantize: Option<QuantizeOnLoad>,
    /// Quantise the linear layers to 8 bits, row-wise as bitsandbytes' LLM.int8 stores them
    /// (`load_in_8bit`). Not together with `quantize`.
    pub int8: bool,
}

impl LoadOptions {
    /// Refuses contradictory options.
    pub fn check(&self) -> Result<()> {
        if self.int8 && self.quantize.is_some() {
            return Err(ModelError::LoadOptions(
                "8-bit and 4-bit quantisation were both asked for; choose one".into(),
            ));
        }
        Ok(())
    }
}

impl QuantizeOnLoad {
    /// What a backend that quantises on its device needs to know.
    pub fn device_spec(&self) -> Quantize4Spec {
        Quantize4Spec::new(self.quant_type, self.blocksize, self.double_quant)
    }
}

/// Reads linear weight `name` (shape) and quantises it to 4 bits: on the device where the
/// backend can (the GPU: only this tensor travels, in the type the file stores), else with
/// temper-quant on the host. Both give the same bits (bitsandbytes' CPU reference). The
/// file's bytes are read once either way.
pub fn quantize4_on_load<B: Backend>(
    be: &B,
    st: &SafetensorsDir,
    name: &str,
    shape: [usize; 2],
    spec: QuantizeOnLoad,
) -> Result<B::Quant> {
    st.with_stored(name, &shape, |bytes, stored| {
        if let Some(q) = be.quantize4(bytes, stored, &spec.device_spec(), name)? {
            return Ok(q);
        }
        let values = temper_core::dtype::decode_le(bytes, stored);
        let q = QuantState::quantize(
            &values,
            &shape,
            "bfloat16",
            spec.blocksize,
            spec.quant_type,
            spec.double_quant,
        )
        .map_err(|e| ModelError::Quantize {
            name: name.to_string(),
            msg: e.to_string(),
        })?;
        Ok(be.upload_quant4(&Quant4::from_state(&q))?)
    })
}

/// Quantises a linear weight (d_out, d_in) to 8 bits as bitsandbytes' `Int8Params` does when
/// transformers loads with `load_in_8bit`: the weight is cast to float16, then
/// `int8_vectorwise_quant` with no outlier threshold gives an int8 code per value and each
/// row's absmax (`SCB`).
///
/// LLM.int8's outlier threshold (`llm_int8_threshold`, 6.0) concerns the activations at
/// matmul time: bitsandbytes quantises the input row-wise too and keeps its outlier columns
/// in 16 bits. temper dequantises the weight to the compute dtype and runs a 16-bit GEMM, so
/// the activations are never quantised and there is nothing to decompose: the threshold does
/// not apply, and weights are quantised with every column kept, as bitsandbytes stores them.
pub fn to_int8(name: &str, values: &[f32], d_out: usize, d_in: usize) -> Result<Int8Rows> {
    let quantize_err = |msg: String| ModelError::Quantize {
        name: name.to_string(),
        msg,
    };
    let f16: Vec<f32> = values
        .par_iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    if let Some(i) = f16.iter().position(|v| !v.is_finite()) {
        return Err(quantize_err(format!(
            "element {i} is {}, not finite in float16 (8-bit weights are quantised from \
             float16, as bitsandbytes does; float16 holds magnitudes up to 65504)",
            values[i]
        )));
    }
    // No threshold: no outlier columns.
    let (q, _) = temper_quant::int8_vectorwise_quant(&f16, d_out, d_in, 0.0)
        .map_err(|e| quantize_err(e.to_string()))?;
    Ok(q)
}

/// Reads linear weight `name` (d_out, d_in) and quantises it to 8 bits as [`to_int8`] does:
/// on the device where the backend can (only this tensor travels, in the type the file
/// stores), else on the host. Both give the same bits.
pub fn int8_on_load<B: Backend>(
    be: &B,
    st: &SafetensorsDir,
    name: &str,
    d_out: usize,
    d_in: usize,
) -> Result<B::Int8> {
    st.with_stored(name, &[d_out, d_in], |bytes, stored| {
        if let Some(q) = be.quantize_int8(bytes, stored, d_out, d_in, name)? {
            return Ok(q);
        }
        let values = temper_core::dtype::decode_le(bytes, stored);
        Ok(be.upload_int8(&to_int8(name, &values, d_out, d_in)?)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantising the backend's view gives temper-quant's `int8_vectorwise_dequant` (the
    /// bit-exact twin of bitsandbytes') bit for bit, on values with an all-zero row, a row
    /// of one value repeated and rows of very different scales.
    #[test]
    fn int8_dequantises_like_temper_quant() {
        let (rows, cols) = (37, 61);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                match r {
                    3 => 0.0,
                    4 => -0.75,
                    _ => {
                        ((i * 7919 % 1000) as f32 / 500.0 - 1.0)
                            * 10f32.powi(r as i32 % 7 - 4)
                            * if c == 5 { 9.0 } else { 1.0 }
                    }
                }
            })
            .collect();
        let q = to_int8("w", &values, rows, cols).expect("quantize");
        let want =
            temper_quant::int8_vectorwise_dequant(&q.codes, &q.scales, cols).expect("dequantize");
        let mut got = vec![f32::NAN; rows * cols];
        q.dequantize_into(&mut got).expect("dequantize");
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "dequantised values differ from int8_vectorwise_dequant"
        );
        // ... and they are the values to within half a code step of their row, plus the
        // rounding to float16 (2^-11 relative, 2^-25 among its subnormals).
        for (r, row) in got.chunks(cols).enumerate() {
            let step = q.scales[r] / 127.0;
            for (c, &v) in row.iter().enumerate() {
                let x = values[r * cols + c];
                let tol = 0.5 * step * 1.001 + x.abs() * 1e-3 + 3e-8;
                assert!((v - x).abs() <= tol, "({r}, {c}): {v} vs {x}");
            }
        }
        assert!(got[3 * cols..4 * cols].iter().all(|&v| v == 0.0));
        assert!(q.codes[4 * cols..5 * cols].iter().all(|&c| c == -127));
    }

    #[test]
    fn int8_refuses_values_beyond_float16() {
        let err = to_int8("layers.0.w", &[1.0, 7e4, 0.0, 0.0], 2, 2).expect_err("overflow");
        assert!(err.to_string().contains("layers.0.w"), "{err}");
        assert!(err.to_string().contains("65504"), "{err}");
    }
}
