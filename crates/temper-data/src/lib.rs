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
mod error;
mod pack;
mod pyjson;
mod rows;
mod shuffle;
mod template;
mod tokenize;
mod tokenizer;

pub use batch::Batch;
pub use error::{DataError, Result};
pub use pack::{pack, unpacked, PackedRow};
pub use rows::{parse_row, read_jsonl, Message, Row};
pub use shuffle::shuffled_order;
pub use template::ChatTemplate;
pub use tokenize::{tokenize_row, tokenize_rows, Example, TokenizeOptions};
pub use tokenizer::Tokenizer;

/// The label that contributes no loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i32 = -100;
