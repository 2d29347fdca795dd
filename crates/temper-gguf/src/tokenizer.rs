//! tokenizer.json and tokenizer_config.json rebuilt from a GGUF's `tokenizer.*` metadata,
//! encoding as transformers' own GGUF conversion does (`integrations/gguf/
//! gguf_tokenizer_mapping.py`: `byte_level_tokenizer`, `add_gguf_special_tokens`,
//! `set_split_regex`).
//!
//! Byte-level BPE (`tokenizer.ggml.model` = gpt2): the tokens (respelled in the byte alphabet
//! when they are not already), the merges, a pre-tokenizer chosen by `tokenizer.ggml.pre`,
//! control tokens (type 3) as special added tokens, user-defined ones (type 4) as plain added
//! tokens, and a BOS/EOS post-processor from `tokenizer.ggml.add_bos_token` /
//! `add_eos_token`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use crate::error::{GgufError, Result};
use crate::reader::GgufFile;

/// llama.cpp token types (`enum llama_token_type`).
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

/// Split regexes by `tokenizer.ggml.pre`, as transformers' `GGUF_PRE_TOKENIZER_SPLITS` names
/// them (the models' own pre-tokenizer regexes). A name not here gets GPT-2's byte-level split.
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte -> printable character map (`bytes_to_unicode`): printable Latin-1 bytes map
/// to themselves, the other 68 to U+0100 onwards in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, o) in out.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        *o = if printable {
            char::from_u32(b as u32).unwrap_or('\0')
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    out
}

/// (tokenizer.json, tokenizer_config.json) for the file's tokenizer.
pub fn tokenizer_files(file: &GgufFile) -> Result<(Json, Json)> {
    let model = file.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Unsupported {
            path: file.path().to_path_buf(),
            msg: format!(
                "tokenizer.ggml.model is `{model}`; temper rebuilds byte-level BPE (`gpt2`) tokenizers only so far"
            ),
        });
    }
    let missing = |key: &str| GgufError::Metadata {
        path: file.path().to_path_buf(),
        key: key.into(),
        msg: "is missing".into(),
    };
    let tokens = file
        .opt_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let merges = file
        .opt_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
    let types = file
        .opt_ints("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");

    // The vocabulary, respelled in the byte alphabet where a token is not (later duplicates win,
    // as in a Python dict).
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: BTreeMap<String, u64> = BTreeMap::new();
    for (id, t) in tokens.iter().enumerate() {
        let key = if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(key, id as u64);
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for m in &merges {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(GgufError::Metadata {
                path: file.path().to_path_buf(),
                key: "tokenizer.ggml.merges".into(),
                msg: format!("holds `{m}`, not two tokens separated by a space"),
            });
        };
        merge_pairs.push(json!([a, b]));
    }

    // Added tokens: control tokens spelled in the byte alphabet (others are llama.cpp
    // mislabels, skipped as transformers skips them), then user-defined ones found in the vocab.
    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = match ty {
            TOKEN_CONTROL if in_alphabet(t) => true,
            TOKEN_USER_DEFINED if vocab.contains_key(*t) => false,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
    }

    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ],
        }),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };

    let token_of = |key: &str| -> Result<Option<(u64, String)>> {
        match file.opt_u64(key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id as usize) {
                Some(t) => Ok(Some((id, t.to_string()))),
                None => Err(GgufError::Metadata {
                    path: file.path().to_path_buf(),
                    key: key.into(),
                    msg: format!("is {id}, past the {} tokens", tokens.len()),
                }),
            },
        }
    };
    let bos = token_of("tokenizer.ggml.bos_token_id")?;
    let eos = token_of("tokenizer.ggml.eos_token_id")?;
    let unk = token_of("tokenizer.ggml.unknown_token_id")?;
    let pad = token_of("tokenizer.ggml.padding_token_id")?;
    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let post_processor = template_processing(
        bos.as_ref().filter(|_| add_bos),
        eos.as_ref().filter(|_| add_eos),
    );

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merge_pairs,
        },
    });

    let mut cfg = Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (name, tok) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("unk_token", &unk),
        ("pad_token", &pad),
    ] {
        if let Some((_, t)) = tok {
            cfg.insert(name.into(), json!(t));
        }
    }
    if let Some(t) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert(
        "model_max_length".into(),
        json!(1_000_000_000_000_000_000u64),
    );
    Ok((tokenizer, Json::Object(cfg)))
}

/// A TemplateProcessing post-processor adding `bos` before and `eos` after each sequence.
fn template_processing(bos: Option<&(u64, String)>, eos: Option<&(u64, String)>) -> Json {
    let special =
        |t: &(u64, String), type_id: u32| json!({"SpecialToken": {"id": t.1, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    single.extend(bos.map(|t| special(t, 0)));
    single.push(seq("A", 0));
    single.extend(eos.map(|t| special(t, 0)));
    pair.extend(bos.map(|t| special(t, 0)));
    pair.push(seq("A", 0));
    pair.extend(eos.map(|t| special(t, 0)));
    pair.extend(bos.map(|t| special(t, 1)));
    pair.push(seq("B", 1));
    pair.extend(eos.map(|t| special(t, 1)));
    let mut specials = Map::new();
    for t in bos.iter().chain(eos.iter()) {
        specials.insert(
            t.1.clone(),
            json!({"id": t.1, "ids": [t.0], "tokens": [t.1]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let m = bytes_to_unicode();
        assert_eq!(m[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(m[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[0], 'Ā'); // U+0100
        let distinct: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
