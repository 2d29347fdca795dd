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
mod parquet_footer;
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

/// Parses a token cache file's bytes as the pipeline does, returning the number of examples
/// when it is accepted (for fuzzing the cache reader; not part of the stable interface).
#[doc(hidden)]
pub fn parse_token_cache(bytes: &[u8]) -> Option<usize> {
    cache::parse(bytes).map(|c| c.examples.len())
}

/// `body` (a token cache file without its checksum) with the checksum appended, so that
/// fuzzing reaches the size checks behind it (not part of the stable interface).
#[doc(hidden)]
pub fn seal_token_cache(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&cache::checksum(body));
    v
}

/// The body of a small valid token cache file (two examples), a seed for fuzzing.
#[doc(hidden)]
pub fn token_cache_example() -> Vec<u8> {
    cache::encode(&cache::Cached {
        rows_read: 3,
        skipped: 1,
        examples: vec![
            Example {
                input_ids: vec![1, 2, 3],
                labels: vec![IGNORE_INDEX, 2, 3],
            },
            Example {
                input_ids: vec![7],
                labels: vec![7],
            },
        ],
    })
}
