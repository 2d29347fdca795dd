//! `quantization_config` as transformers writes it into config.json for
//! `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=..., bnb_4bit_use_double_quant=...,
//! bnb_4bit_compute_dtype=...)` followed by `save_pretrained` (transformers 5), and which
//! layout a folder's config says its linear weights are in ([`stored_bits`]).

use std::path::Path;

use serde_json::{json, Value};

use crate::codes::QuantType;
use crate::error::{io_err, QuantError, Result};

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

/// How config.json says a folder's linear weights are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StoredBits {
    Plain,
    /// bitsandbytes 4-bit (NF4 / FP4) layout.
    FourBit,
    /// bitsandbytes 8-bit (LLM.int8 row-wise) layout.
    EightBit,
}

/// Reads `dir/config.json`: `quantization_config` with `load_in_4bit` (or `_load_in_4bit`)
/// true is 4-bit, else with `load_in_8bit` true 8-bit, else plain.
pub fn stored_bits(dir: &Path) -> Result<StoredBits> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let json: Value = serde_json::from_str(&text).map_err(|source| QuantError::Json {
        path: path.clone(),
        what: "a model config",
        source,
    })?;
    let q = &json["quantization_config"];
    let flag = |key: &str| {
        q[key].as_bool() == Some(true) || q[format!("_{key}").as_str()].as_bool() == Some(true)
    };
    Ok(if flag("load_in_4bit") {
        StoredBits::FourBit
    } else if flag("load_in_8bit") {
        StoredBits::EightBit
    } else {
        StoredBits::Plain
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bits_reads_the_flags_transformers_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let with = |config: Value| {
            std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
            stored_bits(dir.path()).expect("config")
        };
        let four = quantization_config(QuantType::Nf4, true, ComputeDtype::BFloat16);
        assert_eq!(
            with(json!({ "quantization_config": four })),
            StoredBits::FourBit
        );
        assert_eq!(
            with(json!({ "quantization_config": { "_load_in_8bit": true } })),
            StoredBits::EightBit
        );
        assert_eq!(
            with(json!({ "quantization_config": { "load_in_8bit": false } })),
            StoredBits::Plain
        );
        assert_eq!(with(json!({ "hidden_size": 8 })), StoredBits::Plain);
        std::fs::write(dir.path().join("config.json"), "{").expect("write");
        let e = stored_bits(dir.path()).expect_err("not JSON");
        assert!(
            e.to_string().contains("not valid JSON for a model config"),
            "{e}"
        );
    }
}
