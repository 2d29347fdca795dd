//! SentencePiece vocabularies (`tokenizer.ggml.model` = llama: Llama 1/2, Mistral, Gemma,
//! Phi-3) as a `tokenizers` BPE model that encodes as llama.cpp's `llm_tokenizer_spm` does
//! (`src/llama-vocab.cpp`).
//!
//! llama.cpp's SPM tokenizer, for each piece of raw text between matched special tokens:
//! prepends " " when `add_space_prefix` (on by default for SPM, `tokenizer.ggml.add_space_prefix`
//! overrides it) and the piece is the first or follows a special token; replaces every " " with
//! "▁"; splits the result into UTF-8 characters; then repeatedly merges the adjacent pair whose
//! concatenation is a token of highest score (`tokenizer.ggml.scores`), the leftmost pair on a
//! tie; a final symbol that is not a token is written as its bytes' `<0xXX>` tokens.
//!
//! The same in `tokenizers`' terms: a normalizer that prepends "▁" and replaces " " with "▁"
//! (`tokenizers` normalizes each piece between added tokens, so the prefix lands where
//! llama.cpp puts it), no pre-tokenizer, and a BPE model with `byte_fallback` whose merges are
//! every pair of tokens (a, b) with a + b a token, ranked by the score of a + b, highest first.
//! BPE merges the lowest-ranked pair, the leftmost on a tie, which is llama.cpp's order as long
//! as pairs of equal score are ranked as llama.cpp's leftmost rule picks them. Scores tie among
//! Llama's runs of "▁" (all -1e9); llama.cpp then grows the leftmost run one "▁" at a time, so
//! among equal scores a pair with the longer left part ranks first.
//!
//! Where the two can still differ: ties between different tokens other than such runs (no
//! vocabulary in llama.cpp's models folder has one that changes a tokenisation: see the
//! random-text test against a plain copy of llama.cpp's loop); special tokens overlapping in the
//! text (llama.cpp matches the longest token first everywhere, `tokenizers` the leftmost); and
//! the whitespace an `RSTRIP` token swallows (llama.cpp: ASCII `isspace`; `tokenizers`: Unicode
//! whitespace).

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use crate::error::{GgufError, Result};
use crate::reader::GgufFile;

/// "▁" (U+2581), SentencePiece's space, which llama.cpp's `llama_escape_whitespace` writes for
/// every " ".
pub const SPACE: &str = "\u{2581}";

/// The parts of tokenizer.json that differ from the byte-level BPE one.
pub(crate) struct SpmParts {
    /// The text `tokenizers` knows each id by (its vocabulary key), in id order.
    pub keys: Vec<String>,
    pub normalizer: Json,
    pub decoder: Json,
    pub model: Json,
}

/// The text llama.cpp keys each token by: the token itself, or `[EMPTY_<id>]` for an empty one
/// (`llama_vocab::impl::load`). Two tokens with the same text are an error: llama.cpp asserts
/// its text -> id map has one entry per token.
pub fn token_keys(file: &GgufFile, tokens: &[&str]) -> Result<Vec<String>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut keys = Vec::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            keys.push(format!("[EMPTY_{id}]"));
            continue;
        }
        if let Some(first) = seen.insert(t, id) {
            return Err(GgufError::Metadata {
                path: file.path().to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
                msg: format!(
                    "holds `{t}` twice (ids {first} and {id}); llama.cpp refuses a SentencePiece \
                     vocabulary whose tokens are not distinct, so the file needs reconverting"
                ),
            });
        }
        keys.push(t.to_string());
    }
    Ok(keys)
}

/// The merges that make llama.cpp's SPM order: every (a, b) with a, b and a + b tokens, as
/// (left id, right id), ranked first to last. `keys`: the token texts in id order; `scores`:
/// one per token.
pub fn spm_merges(keys: &[String], scores: &[f32]) -> Vec<(u32, u32)> {
    let ids: HashMap<&str, u32> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i as u32))
        .collect();
    // (score of a + b, chars in a, id of a + b, left id, right id)
    let mut merges: Vec<(f32, usize, u32, u32, u32)> = Vec::new();
    for (id, key) in keys.iter().enumerate() {
        for (n_chars, (at, _)) in key.char_indices().skip(1).enumerate() {
            let (a, b) = key.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(a), ids.get(b)) {
                merges.push((scores[id], n_chars + 1, id as u32, l, r));
            }
        }
    }
    // Highest score first (llama.cpp's `llm_bigram_spm::comparator`); among equal scores the
    // longer left part first, so a run that has started growing keeps growing as llama.cpp's
    // leftmost rule makes it; then by id, for a stable file.
    merges.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then(y.1.cmp(&x.1))
            .then(x.2.cmp(&y.2))
            .then(x.3.cmp(&y.3))
    });
    merges.into_iter().map(|m| (m.3, m.4)).collect()
}

/// The model, normalizer and decoder for a SentencePiece vocabulary.
pub(crate) fn spm_parts(file: &GgufFile, tokens: &[&str], unk: Option<&str>) -> Result<SpmParts> {
    let path = file.path().to_path_buf();
    let scores = file
        .opt_floats("tokenizer.ggml.scores")?
        .ok_or_else(|| GgufError::Metadata {
            path: path.clone(),
            key: "tokenizer.ggml.scores".into(),
            msg: "is missing; a SentencePiece vocabulary (`tokenizer.ggml.model` = llama) merges \
                  by score, so the file needs reconverting with its scores"
                .into(),
        })?;
    if scores.len() < tokens.len() {
        return Err(GgufError::Metadata {
            path,
            key: "tokenizer.ggml.scores".into(),
            msg: format!(
                "holds {} scores for {} tokens (llama.cpp refuses this too)",
                scores.len(),
                tokens.len()
            ),
        });
    }
    let keys = token_keys(file, tokens)?;
    // llama.cpp's `byte_to_token` needs `<0xXX>` for every byte it falls back to; a vocabulary
    // without them cannot write characters it lacks.
    let byte_tokens = keys.iter().filter(|k| is_byte_token(k)).count();
    if byte_tokens != 256 {
        return Err(GgufError::Unsupported {
            path,
            msg: format!(
                "the SentencePiece vocabulary (`tokenizer.ggml.tokens`) has {byte_tokens} of the \
                 256 byte tokens <0x00>..<0xFF>; llama.cpp writes characters outside the \
                 vocabulary as byte tokens, and temper rebuilds only vocabularies that have them"
            ),
        });
    }
    let add_space_prefix = file
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);

    let merges: Vec<Json> = spm_merges(&keys, &scores)
        .into_iter()
        .map(|(l, r)| json!([keys[l as usize], keys[r as usize]]))
        .collect();
    let vocab: serde_json::Map<String, Json> = keys
        .iter()
        .enumerate()
        .map(|(id, k)| (k.clone(), json!(id)))
        .collect();

    let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            replace_space,
        ]})
    } else {
        replace_space
    };
    // llama.cpp's `token_to_piece`: "▁" back to " ", byte tokens to their byte; `detokenize`
    // drops the space the prefix put before the first token.
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let decoder = json!({"type": "Sequence", "decoders": decoders});
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": false,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": vocab,
        "merges": merges,
    });
    Ok(SpmParts {
        keys,
        normalizer,
        decoder,
        model,
    })
}

/// `<0xXX>` with two upper-case hex digits, as llama.cpp's `byte_to_token` spells them.
fn is_byte_token(k: &str) -> bool {
    let b = k.as_bytes();
    b.len() == 6
        && k.starts_with("<0x")
        && b[5] == b'>'
        && b[3..5]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_scores_and_every_split() {
        // ids:          0    1    2     3      4
        let k = keys(&["a", "b", "ab", "abb", "bb"]);
        let s = [0.0, 0.0, -1.0, -3.0, -2.0];
        // "ab" (score -1) first; then "bb" (-2); then "abb" from "ab"+"b" (left part 2
        // chars) before "a"+"bb".
        assert_eq!(spm_merges(&k, &s), vec![(0, 1), (1, 1), (2, 1), (0, 4)]);
    }

    #[test]
    fn byte_tokens_are_upper_case_hex() {
        assert!(is_byte_token("<0x0A>"));
        assert!(is_byte_token("<0xFF>"));
        assert!(!is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0A"));
        assert!(!is_byte_token("▁<0x0A>"));
    }
}
