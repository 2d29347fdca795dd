//! GGUF files (llama.cpp's format): a reader for versions 2 and 3, dequantisation of the
//! common tensor types to f32, and conversion of `llama`, `qwen2`, `qwen3`, `phi3`, `gemma`,
//! `gemma2` and `gemma3` models to a Hugging Face folder (config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json) that temper-model and transformers load; and the way back: a Hugging Face folder (or a PEFT
//! adapter) written as a GGUF file that llama.cpp loads, quantised as llama.cpp's `quantize`
//! would quantise it.

pub mod config;
pub mod convert;
pub mod dequant;
pub mod error;
pub mod export;
mod kquant;
pub mod mix;
pub mod pretokenizer;
pub mod quantize;
pub mod reader;
pub mod spm;
pub mod tokenizer;
pub mod writer;

pub use config::GgufArch;
pub use convert::{
    hf_name, hf_name_for, import, unpermute_rows, ImportSummary, OutDtype, IMPORT_VERSION,
};
pub use dequant::{dequantize, GgmlType};
pub use error::{GgufError, Result};
pub use export::{export, export_lora, ExportSummary, ExportType};
pub use quantize::quantize;
pub use reader::{GgufFile, TensorInfo, Value};
