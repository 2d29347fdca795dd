//! Storage types of device buffers. Activations and frozen weights may be stored in 16 bits;
//! LoRA parameters, their gradients, optimizer moments, norms' rstd and attention's lse are
//! always f32. All arithmetic is f32 whatever the storage.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// The suffix of kernel entry points instantiated for this type (`rmsnorm_forward_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// The name transformers uses (`torch_dtype` in config.json).
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }

    /// Rounds a value to this type and back, as storing and loading it does.
    pub fn round(self, v: f32) -> f32 {
        match self {
            DType::F32 => v,
            DType::BF16 => half::bf16::from_f32(v).to_f32(),
            DType::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// Relative spacing of representable values near 1 (the unit roundoff times two).
    pub fn epsilon(self) -> f32 {
        match self {
            DType::F32 => f32::EPSILON,
            DType::BF16 => 1.0 / 128.0,
            DType::F16 => 1.0 / 1024.0,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hf_name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "float32" | "f32" | "fp32" => Ok(DType::F32),
            "bfloat16" | "bf16" => Ok(DType::BF16),
            "float16" | "f16" | "fp16" | "half" => Ok(DType::F16),
            other => Err(format!(
                "unknown dtype `{other}`: use float32, bfloat16 or float16"
            )),
        }
    }
}

/// One value of `dtype` from its little-endian bytes (`b.len() == dtype.size()`).
#[inline]
fn read_le(b: &[u8], dtype: DType) -> f32 {
    match dtype {
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
    }
}

/// `v` stored as `dtype` (rounded to nearest even) into its little-endian bytes.
#[inline]
fn write_le(d: &mut [u8], v: f32, dtype: DType) {
    match dtype {
        DType::F32 => d.copy_from_slice(&v.to_le_bytes()),
        DType::BF16 => d.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        DType::F16 => d.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
    }
}

/// Values per parallel task of the conversions below.
const CHUNK: usize = 1 << 14;

/// Host values as the little-endian bytes of `dtype` (rounded to nearest even), in parallel.
pub fn encode_le(values: &[f32], dtype: DType) -> Vec<u8> {
    let size = dtype.size();
    let mut out = vec![0u8; values.len() * size];
    out.par_chunks_mut(size * CHUNK)
        .zip(values.par_chunks(CHUNK))
        .for_each(|(dst, src)| {
            for (d, &v) in dst.chunks_exact_mut(size).zip(src) {
                write_le(d, v, dtype);
            }
        });
    out
}

/// Little-endian values of `dtype` (a whole number of them) as f32 (exact), in parallel.
pub fn decode_le(bytes: &[u8], dtype: DType) -> Vec<f32> {
    let size = dtype.size();
    let mut out = vec![0f32; bytes.len() / size];
    out.par_chunks_mut(CHUNK)
        .zip(bytes.par_chunks(size * CHUNK))
        .for_each(|(dst, src)| {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(size)) {
                *d = read_le(b, dtype);
            }
        });
    out
}

/// `src` (little-endian values of `from`) written into `dst` as the same values stored as
/// `to` (a copy when the types agree), in parallel. `dst` holds exactly as many values.
pub fn convert_le(src: &[u8], from: DType, dst: &mut [u8], to: DType) {
    debug_assert_eq!(src.len() / from.size(), dst.len() / to.size());
    let (fs, ts) = (from.size(), to.size());
    dst.par_chunks_mut(ts * CHUNK)
        .zip(src.par_chunks(fs * CHUNK))
        .for_each(|(d, s)| {
            if from == to {
                d.copy_from_slice(s);
            } else {
                for (d, s) in d.chunks_exact_mut(ts).zip(s.chunks_exact(fs)) {
                    write_le(d, read_le(s, from), to);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for d in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(d.hf_name().parse::<DType>(), Ok(d));
            assert_eq!(d.suffix().parse::<DType>(), Ok(d));
        }
        assert!("int8".parse::<DType>().is_err());
    }

    #[test]
    fn encode_decode_and_convert_agree_in_each_type() {
        let host: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 * 0.37).sin() * 10f32.powi(i % 7 - 3))
            .collect();
        for from in [DType::F32, DType::BF16, DType::F16] {
            let bytes = encode_le(&host, from);
            let back = decode_le(&bytes, from);
            for (a, b) in host.iter().zip(&back) {
                assert_eq!(from.round(*a).to_bits(), b.to_bits());
            }
            for to in [DType::F32, DType::BF16, DType::F16] {
                let mut out = vec![0u8; host.len() * to.size()];
                convert_le(&bytes, from, &mut out, to);
                assert_eq!(out, encode_le(&back, to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn rounding_matches_the_type() {
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(DType::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
        assert_eq!(DType::F32.round(0.1), 0.1);
    }
}
