//! temper-data: from dataset rows to batches of token ids.
//!
//! The path a row takes:
//! [`read_jsonl`] -> [`Row`] -> [`tokenize_row`] (chat template, loss mask) -> [`Example`]
//! -> [`pack`] / [`unpacked`] -> [`PackedRow`] -> [`Batch::from_rows`] (varlen, `cu_seqlens`,
//! shifted targets), with [`shuffled_order`] choosing the order of rows each epoch.
//!
//! Conventions: `labels` are aligned with `input_ids` (not shifted) and `-100`
//! ([`IGNORE_INDEX`]) means "no loss"; the shift happens once, in [`Batch`].

mod batch;
mod cache;
mod columnar;
mod error;
mod format;
pub mod hub;
mod pack;
mod pipeline;
mod prefix_masks;
mod pyjson;
mod rows;
mod shuffle;
mod source;
mod template;
mod tokenize;
mod tokenizer;

pub use batch::Batch;
pub use error::{DataError, Result};
pub use format::{to_row, DatasetFormat};
pub use pack::{pack, pack_with, unpacked, Overflow, PackedRow};
pub use pipeline::{prepare, DataConfig, Prepared, Stats, TemplateChoice};
pub use rows::{parse_row, read_jsonl, Message, Row};
pub use shuffle::shuffled_order;
pub use source::{data_files, read_records, Origin, Record};
pub use template::{ChatTemplate, CHATML_TEMPLATE};
pub use tokenize::{
    common_prefix_length, no_generation_markers, tokenize_row, tokenize_rows, tokenize_sft,
    AssistantMasks, Example, SftOptions, TokenizeOptions,
};
pub use tokenizer::Tokenizer;

/// The label that contributes no loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i32 = -100;
