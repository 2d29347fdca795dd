//! temper-quant: the quantised formats of QLoRA, bit-exact with bitsandbytes 0.50 (its CPU
//! reference ops; `scripts/make_bnb_fixtures.py` makes the fixtures the tests check).
//!
//! - [`quantize_4bit`] / [`dequantize_4bit`]: NF4 and FP4 codes in blocks of 32..4096 (64 by
//!   default) with an f32 absmax per block; [`double_quant`]: the absmax in 8 bits
//!   (signed dynamic map, blocks of 256, mean offset).
//! - [`quantize_blockwise`] / [`dequantize_blockwise`] with [`dynamic_map`]: the 8-bit
//!   blockwise format of bitsandbytes' 8-bit optimizer states.
//! - [`int8_vectorwise_quant`] / [`int8_colwise_quant`]: LLM.int8 absmax int8 with outlier
//!   columns; [`Int8Rows`]: an 8-bit weight as bitsandbytes stores it and the backends hold it.
//! - [`QuantState`]: one 4-bit weight in transformers + bitsandbytes' safetensors layout;
//!   [`quantize_folder`] / [`load_4bit_folder`]: whole model folders; [`read_int8`]: an
//!   8-bit weight of a folder bitsandbytes saved; [`stored_bits`]: which layout a folder holds.
//! - [`State8`]: one moment of bitsandbytes' 8-bit AdamW (codes of [`dynamic_map`], blocks
//!   of 256).
//! - [`Quant4`]: a 4-bit weight as temper-core's backends hold it (and [`Quantize4Spec`]:
//!   how to quantise one on a device).
//!
//! The 4-bit and 8-bit blockwise functions are the CPU twins of the kernels in
//! `crates/temper-core/kernels/quant.cu` (its header lists the pairs). Pure CPU: no CUDA
//! dependency.

mod blocks;
pub mod blockwise8;
pub mod codes;
pub mod double_quant;
pub mod dynamic_map;
pub mod error;
pub mod folder;
pub mod fourbit;
pub mod int8;
pub mod int8_rows;
pub mod quant4;
pub mod quant_state;
pub mod state8;
pub mod torch_sum;

pub use blockwise8::{
    dequantize_blockwise, dequantize_blockwise_into, quantize_blockwise, Blockwise8,
};
pub use codes::{QuantType, FP4, NF4};
pub use double_quant::{
    double_quant, double_quant_with_offset, signed_map, unsigned_map, Nested, NESTED_BLOCKSIZE,
};
pub use dynamic_map::dynamic_map;
pub use error::{QuantError, Result};
pub use folder::{
    is_quantized_linear, load_4bit_folder, quantization_config, quantize_folder, read_int8,
    stored_bits, weight_files, ComputeDtype, Int8Tensors, QuantizeOptions, QuantizeSummary,
    StoredBits,
};
pub use fourbit::{dequantize_4bit, dequantize_4bit_into, quantize_4bit, Packed4};
pub use int8::{int8_colwise_quant, int8_vectorwise_dequant, int8_vectorwise_quant, Int8Cols};
pub use int8_rows::{Int8Rows, INV_127};
pub use quant4::{Absmax4, NestedSpec, Quant4, Quantize4Spec};
pub use quant_state::{Absmax, OwnedTensor, QuantState, TensorRef};
pub use state8::State8;
pub use torch_sum::{torch_mean, torch_sum};
