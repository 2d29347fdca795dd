//! The 8-bit weights of a folder in bitsandbytes' LLM.int8 layout (transformers +
//! bitsandbytes `save_pretrained` after `load_in_8bit`), as they are stored: no
//! requantisation. Each weight is read when the model loads it, from a [`Int8Tensors`]
//! source (temper-model's safetensors reader, whose errors name the file and tensor).

use crate::error::QuantError;
use crate::int8_rows::Int8Rows;

/// The typed tensor reads [`read_int8`] needs. Each read checks the stored type (and shape)
/// and fails with the source's own error.
pub trait Int8Tensors {
    type Error: From<QuantError>;
    fn contains(&self, name: &str) -> bool;
    /// A U8 tensor's bytes (bitsandbytes' `weight_format` scalar).
    fn read_u8(&self, name: &str) -> Result<Vec<u8>, Self::Error>;
    /// An I8 tensor of shape `expected`.
    fn read_i8(&self, name: &str, expected: &[usize]) -> Result<Vec<i8>, Self::Error>;
    /// A float tensor of shape `expected`, in f32.
    fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, Self::Error>;
}

/// Reads a linear weight saved by transformers + bitsandbytes in 8 bits: `{prefix}.weight`
/// (d_out, d_in) int8 codes, `{prefix}.SCB` (d_out,) f32 row absmax, and maybe
/// `{prefix}.weight_format`, which must say row-major (0): the tiled layouts of bitsandbytes
/// before 0.45 (col32, col_turing, col_ampere) are not read, as bitsandbytes 0.45 on no
/// longer reads them.
pub fn read_int8<S: Int8Tensors>(
    st: &S,
    prefix: &str,
    d_out: usize,
    d_in: usize,
) -> Result<Int8Rows, S::Error> {
    let format_name = format!("{prefix}.weight_format");
    if st.contains(&format_name) {
        let format = st.read_u8(&format_name)?;
        if format != [0] {
            return Err(QuantError::WeightFormat {
                name: format_name,
                format,
            }
            .into());
        }
    }
    Ok(Int8Rows {
        rows: d_out,
        cols: d_in,
        codes: st.read_i8(&format!("{prefix}.weight"), &[d_out, d_in])?,
        scales: st.read_f32(&format!("{prefix}.SCB"), &[d_out])?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Tensors in memory: U8 and I8 as bytes, F32 as values; shapes are not kept.
    #[derive(Default)]
    struct Mem {
        u8s: HashMap<String, Vec<u8>>,
        f32s: HashMap<String, Vec<f32>>,
    }

    impl Int8Tensors for Mem {
        type Error = QuantError;
        fn contains(&self, name: &str) -> bool {
            self.u8s.contains_key(name) || self.f32s.contains_key(name)
        }
        fn read_u8(&self, name: &str) -> Result<Vec<u8>, QuantError> {
            Ok(self.u8s[name].clone())
        }
        fn read_i8(&self, name: &str, _: &[usize]) -> Result<Vec<i8>, QuantError> {
            Ok(self.u8s[name].iter().map(|&b| b as i8).collect())
        }
        fn read_f32(&self, name: &str, _: &[usize]) -> Result<Vec<f32>, QuantError> {
            Ok(self.f32s[name].clone())
        }
    }

    #[test]
    fn reads_row_major_weights_and_refuses_tiled_ones() {
        let mut st = Mem::default();
        st.u8s
            .insert("l.weight".into(), vec![1, 255, 127, 128, 0, 2]);
        st.f32s.insert("l.SCB".into(), vec![2.0, 0.5]);
        let want = Int8Rows {
            rows: 2,
            cols: 3,
            codes: vec![1, -1, 127, -128, 0, 2],
            scales: vec![2.0, 0.5],
        };
        // No weight_format tensor, then a row-major one: the same weight.
        assert_eq!(read_int8(&st, "l", 2, 3).expect("read"), want);
        st.u8s.insert("l.weight_format".into(), vec![0]);
        assert_eq!(read_int8(&st, "l", 2, 3).expect("read"), want);
        st.u8s.insert("l.weight_format".into(), vec![1]);
        let e = read_int8(&st, "l", 2, 3).expect_err("col32 layout");
        assert_eq!(
            e.to_string(),
            "tensor `l.weight_format`: weight_format [1]: only 0 (row-major) is read; the tiled \
             layouts of bitsandbytes before 0.45 are not (load and save the model again with a \
             current bitsandbytes)"
        );
    }
}
