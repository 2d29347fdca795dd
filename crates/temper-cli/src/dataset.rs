//! Files -> tokenised, masked, packed rows, with a summary line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use temper_data::{
    pack, read_jsonl, tokenize_rows, unpacked, PackedRow, Row, TokenizeOptions, Tokenizer,
};

pub struct Prepared {
    pub rows: Vec<PackedRow>,
    pub samples: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
}

/// Reads every file, tokenises rows as training renders them, and packs them.
pub fn prepare(
    tok: &Tokenizer,
    files: &[PathBuf],
    max_seq_len: usize,
    packing: bool,
) -> Result<Prepared> {
    let mut rows: Vec<Row> = Vec::new();
    for f in files {
        rows.extend(read_jsonl(f).with_context(|| format!("reading dataset {}", f.display()))?);
    }
    let opts = TokenizeOptions {
        append_eos: true,
        max_seq_len: Some(max_seq_len),
    };
    let examples = tokenize_rows(tok, &rows, &opts)?;
    let tokens = examples.iter().map(|e| e.input_ids.len()).sum();
    let trained_tokens = examples.iter().map(|e| e.trained()).sum();
    let packed = if packing {
        pack(&examples, max_seq_len)
    } else {
        unpacked(&examples)
    };
    Ok(Prepared {
        rows: packed,
        samples: examples.len(),
        tokens,
        trained_tokens,
    })
}
