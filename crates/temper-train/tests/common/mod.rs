//! The embedded default (examples/tiny) as the training tests use it.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};

use temper_data::{pack, read_jsonl, tokenize_rows, PackedRow, TokenizeOptions, Tokenizer};

pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny")
}

/// The first `max_rows` rows of the tiny chat data, tokenised (EOS appended, at most 128
/// tokens) and packed into rows of 128.
pub fn rows(max_rows: usize) -> Vec<PackedRow> {
    let tok = Tokenizer::from_dir(&tiny().join("model")).expect("tokenizer");
    let mut data = read_jsonl(&tiny().join("data/train.jsonl")).expect("data");
    data.truncate(max_rows);
    let opts = TokenizeOptions {
        append_eos: true,
        max_seq_len: Some(128),
    };
    let examples = tokenize_rows(&tok, &data, &opts).expect("tokenize");
    pack(&examples, 128)
}
