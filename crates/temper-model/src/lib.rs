//! temper-model: Hugging Face model folders -> a Llama-family model on a [`Backend`], its
//! forward and backward written by hand, and LoRA adapters in PEFT's format.

pub mod adapter;
pub mod batch;
pub mod config;
pub mod error;
pub mod flops;
pub mod generate;
pub mod init;
pub mod layer;
pub mod linear;
pub mod lora;
pub mod merge;
pub mod model;
pub mod parking;
pub mod plan;
pub mod quantized;
pub mod rope_tables;
pub mod safetensors_dir;
pub mod sharded_out;
pub mod weights;

pub use batch::{LmRows, StepCtx, TokenBatch};
pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use lora::{LoraConfig, LoraParams, Target};
pub use model::{Checkpointing, Model};
pub use quantized::{LoadOptions, QuantizeOnLoad};
pub use temper_core::Backend;
pub use temper_quant::QuantType;
