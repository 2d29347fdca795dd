//! Hugging Face model folders in bitsandbytes' 4-bit layout: writing one from a bf16 / fp16
//! folder ([`quantize_folder`], as transformers' `from_pretrained(load_in_4bit=True)` +
//! `save_pretrained` does) and reading one back ([`load_4bit_folder`]).

mod config;
mod load;
mod quantize;
mod shards;

pub use config::{quantization_config, ComputeDtype};
pub use load::load_4bit_folder;
pub use quantize::{
    is_quantized_linear, quantize_folder, quantize_folder_with, QuantizeOptions, QuantizeSummary,
};
pub use shards::weight_files;
