//! Storage types of device buffers. Activations and frozen weights may be stored in 16 bits;
//! LoRA parameters, their gradients, optimizer moments, norms' rstd and attention's lse are
//! always f32. All arithmetic is f32 whatever the storage.

use std::fmt;
use std::str::FromStr;

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
    fn rounding_matches_the_type() {
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(DType::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
        assert_eq!(DType::F32.round(0.1), 0.1);
    }
}
