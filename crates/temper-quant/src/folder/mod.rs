//! Hugging Face model folders in bitsandbytes' layouts: writing a 4-bit one from a bf16 / fp16
//! folder ([`quantize_folder`], as transformers' `from_pretrained(load_in_4bit=True)` +
//! `save_pretrained` does), telling which layout a folder holds ([`stored_bits`]), and
//! reading its weights as stored: 4-bit ([`load_4bit_folder`]) and 8-bit ([`read_int8`]).

mod config;
mod load4;
mod load8;
mod quantize;
mod shards;

pub use config::{quantization_config, stored_bits, ComputeDtype, StoredBits};
pub use load4::load_4bit_folder;
pub use load8::{read_int8, Int8Tensors};
pub use quantize::{
    is_quantized_linear, quantize_folder, quantize_folder_with, QuantizeOptions, QuantizeSummary,
};
pub use shards::weight_files;
