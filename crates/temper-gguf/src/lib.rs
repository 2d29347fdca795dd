//! GGUF files (llama.cpp's format): a reader for versions 2 and 3, dequantisation of the
//! common tensor types to f32, and conversion of `llama` / `qwen2` models to a Hugging Face
//! folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that
//! temper-model and transformers load.

pub mod config;
pub mod convert;
pub mod dequant;
pub mod error;
pub mod pretokenizer;
pub mod reader;
pub mod tokenizer;

pub use config::GgufArch;
pub use convert::{hf_name, import, unpermute_rows, ImportSummary, OutDtype, IMPORT_VERSION};
pub use dequant::{dequantize, GgmlType};
pub use error::{GgufError, Result};
pub use reader::{GgufFile, TensorInfo, Value};
