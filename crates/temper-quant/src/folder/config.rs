//! `quantization_config` as transformers writes it into config.json for
//! `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=..., bnb_4bit_use_double_quant=...,
//! bnb_4bit_compute_dtype=...)` followed by `save_pretrained` (transformers 5).

use serde_json::{json, Value};

use crate::codes::QuantType;

/// The dtype 4-bit layers compute in (`bnb_4bit_compute_dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDtype {
    BFloat16,
    Float16,
    Float32,
}

impl ComputeDtype {
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::BFloat16 => "bfloat16",
            ComputeDtype::Float16 => "float16",
            ComputeDtype::Float32 => "float32",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bfloat16" | "bf16" => Some(ComputeDtype::BFloat16),
            "float16" | "fp16" => Some(ComputeDtype::Float16),
            "float32" | "fp32" => Some(ComputeDtype::Float32),
            _ => None,
        }
    }
}

/// The `quantization_config` object. The block size is not part of it: transformers always
/// quantises with bitsandbytes' default 64, and reads the block size of a saved weight from
/// its quant_state.
pub fn quantization_config(
    quant_type: QuantType,
    double_quant: bool,
    compute: ComputeDtype,
) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": compute.name(),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quant_type.name(),
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    })
}
