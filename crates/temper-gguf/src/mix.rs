//! Which ggml type each tensor of an export gets: llama.cpp's `quantize` rules
//! (src/llama-quant.cpp, `llama_tensor_get_type`) for a dense llama / qwen model with no
//! importance matrix.
//!
//! - 1-D tensors (norms, biases, rope_freqs) stay f32.
//! - The output matrix, and the token embedding when the output is tied to it, take Q6_K
//!   (Q8_0 when its rows are not whole blocks of the file type, or the file type is Q8_0).
//! - q4_k_m and q5_k_m give Q6_K to attn_v and ffn_down of the layers `use_more_bits` picks:
//!   the first and last eighth, and every third layer between.
//! - A type whose block does not divide a tensor's rows falls back as llama.cpp's does: Q4_K
//!   to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, and to F16 when 32 does not divide the rows either.

use crate::dequant::GgmlType;

/// A file type llama.cpp's `quantize` writes (its `enum llama_ftype`), or one of the
/// unquantised types `convert_hf_to_gguf.py` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4KM,
    Q5KM,
    Q6K,
}

impl ExportType {
    pub const ALL: [Self; 8] = [
        ExportType::F32,
        ExportType::F16,
        ExportType::BF16,
        ExportType::Q8_0,
        ExportType::Q4_0,
        ExportType::Q4KM,
        ExportType::Q5KM,
        ExportType::Q6K,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "float32" => Some(ExportType::F32),
            "float16" => Some(ExportType::F16),
            "bfloat16" => Some(ExportType::BF16),
            s => Self::ALL.into_iter().find(|t| t.name() == s),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportType::F32 => "f32",
            ExportType::F16 => "f16",
            ExportType::BF16 => "bf16",
            ExportType::Q8_0 => "q8_0",
            ExportType::Q4_0 => "q4_0",
            ExportType::Q4KM => "q4_k_m",
            ExportType::Q5KM => "q5_k_m",
            ExportType::Q6K => "q6_k",
        }
    }

    /// `general.file_type` (llama.cpp's `enum llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q4_0 => 2,
            ExportType::Q8_0 => 7,
            ExportType::Q4KM => 15,
            ExportType::Q5KM => 17,
            ExportType::Q6K => 18,
            ExportType::BF16 => 32,
        }
    }

    /// Whether matrices are quantised (and the file carries `general.quantization_version`).
    pub fn is_quantized(self) -> bool {
        !matches!(self, ExportType::F32 | ExportType::F16 | ExportType::BF16)
    }

    /// The type of most matrices (llama.cpp's `llama_ftype_get_default_type`).
    fn default_type(self) -> GgmlType {
        match self {
            ExportType::F32 => GgmlType::F32,
            ExportType::F16 => GgmlType::F16,
            ExportType::BF16 => GgmlType::BF16,
            ExportType::Q8_0 => GgmlType::Q8_0,
            ExportType::Q4_0 => GgmlType::Q4_0,
            ExportType::Q4KM => GgmlType::Q4_K,
            ExportType::Q5KM => GgmlType::Q5_K,
            ExportType::Q6K => GgmlType::Q6_K,
        }
    }
}

/// What the mix needs to know of the model besides a tensor's own name and dims.
#[derive(Clone, Copy, Debug)]
pub struct MixModel {
    /// Decoder layers.
    pub layers: u64,
    /// Whether the output matrix is the token embedding (no `output.weight`).
    pub tied: bool,
}

/// llama.cpp's choice of layers that get more bits: the first and last eighth, and every
/// third layer from the first eighth on.
pub fn use_more_bits(layer: i64, layers: i64) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

fn block_len(ty: GgmlType) -> u64 {
    ty.block().map_or(1, |(len, _)| len as u64)
}

/// The type of tensor `name` (GGUF name, `dims` innermost first) in an export of type `ty`.
pub fn tensor_type(ty: ExportType, model: MixModel, name: &str, dims: &[u64]) -> GgmlType {
    let inner = dims.first().copied().unwrap_or(1);
    if dims.len() < 2 {
        return GgmlType::F32;
    }
    if !ty.is_quantized() {
        return ty.default_type();
    }
    let mut t = ty.default_type();
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<i64>().ok());
    let more_bits = matches!(ty, ExportType::Q4KM | ExportType::Q5KM)
        && layer.is_some_and(|l| use_more_bits(l, model.layers as i64));
    if name == "output.weight" || (model.tied && name == "token_embd.weight") {
        if !inner.is_multiple_of(block_len(t)) {
            t = GgmlType::Q8_0;
        } else if t != GgmlType::Q8_0 {
            t = GgmlType::Q6_K;
        }
    } else if name.contains("attn_v.weight") || name.contains("ffn_down") {
        // llama.cpp counts these tensors in layer order, so its counter is the layer.
        if more_bits {
            t = GgmlType::Q6_K;
        }
    }
    fallback(t, inner)
}

/// llama.cpp's `tensor_type_fallback`: a type for rows of `inner` values when `ty`'s blocks do
/// not divide them.
fn fallback(ty: GgmlType, inner: u64) -> GgmlType {
    if inner.is_multiple_of(block_len(ty)) {
        return ty;
    }
    let t = match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if inner.is_multiple_of(block_len(t)) {
        t
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_of_a_30_layer_model() {
        // n/8 = 3, 7n/8 = 26: layers 0..3, 26..30, and 3 + 3k + 2.
        let picked: Vec<i64> = (0..30).filter(|&l| use_more_bits(l, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn names_parse() {
        for t in ExportType::ALL {
            assert_eq!(ExportType::parse(t.name()), Some(t));
        }
        assert_eq!(ExportType::parse("Q4_K_M"), Some(ExportType::Q4KM));
        assert_eq!(ExportType::parse("q4_k"), None);
    }
}
