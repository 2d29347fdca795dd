//! tokenizer.json and tokenizer_config.json rebuilt from a GGUF's `tokenizer.*` metadata,
//! encoding as llama.cpp encodes with the same file (`src/llama-vocab.cpp`).
//!
//! SentencePiece (`tokenizer.ggml.model` = llama): see `spm` for the model; control, unknown
//! and user-defined tokens are matched as below, and BOS is added unless
//! `tokenizer.ggml.add_bos_token` says otherwise (llama.cpp's SPM default).
//!
//! Byte-level BPE (`tokenizer.ggml.model` = gpt2): the tokens (respelled in the byte alphabet
//! when they are not already), the merges, llama.cpp's pre-tokenizer for `tokenizer.ggml.pre`
//! (see `pretokenizer`; a name llama.cpp does not know is an error), control and unknown tokens
//! (types 3 and 2) as special added tokens and user-defined ones (type 4) as plain added tokens,
//! after llama.cpp's overrides by text (end-of-generation texts such as `</s>`, and the
//! fill-in-the-middle markers of a kind the file names no id for, become control tokens), all
//! matched in the raw text before pre-tokenizing as llama.cpp's
//! `tokenizer_st_partition` does (swallowing the whitespace after them where llama.cpp gives
//! them `RSTRIP`: Phi-3's), and a BOS/EOS post-processor from `tokenizer.ggml.add_bos_token` / `add_eos_token`
//! (absent: llama.cpp's default for the pre-tokenizer).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use crate::error::{GgufError, Result};
use crate::pretokenizer::{nearest_name, Behavior, PreTokenizer};
use crate::reader::GgufFile;
use crate::spm::spm_parts;

/// llama.cpp token types (`enum llama_token_type`).
const TOKEN_NORMAL: u64 = 1;
const TOKEN_UNKNOWN: u64 = 2;
const TOKEN_CONTROL: u64 = 3;
const TOKEN_USER_DEFINED: u64 = 4;

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

/// The two kinds of vocabulary temper rebuilds (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `gpt2`: byte-level BPE with merges and a pre-tokenizer.
    ByteLevelBpe,
    /// `llama`: SentencePiece (llama.cpp's SPM), merged by score.
    SentencePiece,
}

/// (tokenizer.json, tokenizer_config.json) for the file's tokenizer.
pub fn tokenizer_files(file: &GgufFile) -> Result<(Json, Json)> {
    let model = file.str("tokenizer.ggml.model")?;
    let kind = match model {
        "gpt2" => Kind::ByteLevelBpe,
        "llama" => Kind::SentencePiece,
        other => {
            return Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!(
                    "tokenizer.ggml.model is `{other}`; temper rebuilds byte-level BPE (`gpt2`) \
                     and SentencePiece (`llama`) tokenizers only so far"
                ),
            })
        }
    };
    let missing = |key: &str| GgufError::Metadata {
        path: file.path().to_path_buf(),
        key: key.into(),
        msg: "is missing".into(),
    };
    let tokens = file
        .opt_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let types = file
        .opt_ints("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    let types = types_after_overrides(file, &tokens, &types)?;

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

    let (keys, parts, default_add_bos) = match kind {
        Kind::ByteLevelBpe => {
            let (keys, parts, add_bos) = byte_level_parts(file, &tokens, &types)?;
            (keys, parts, add_bos)
        }
        Kind::SentencePiece => {
            // llama.cpp's SPM defaults: BOS added, EOS not.
            let unk_key = unk.as_ref().map(|(_, t)| t.as_str());
            let p = spm_parts(file, &tokens, unk_key)?;
            let parts = ModelParts {
                normalizer: p.normalizer,
                pre_tokenizer: Json::Null,
                decoder: p.decoder,
                model: p.model,
            };
            (p.keys, parts, true)
        }
    };

    // Control, unknown and user-defined tokens are matched in the raw text, as llama.cpp
    // matches them before tokenizing the pieces between them.
    let rstrip = rstrip_tokens(file, &tokens, &types)?;
    let mut added = Vec::new();
    for (id, key) in keys.iter().enumerate() {
        let Some(special) = added_kind(&types, id) else {
            continue;
        };
        added.push(json!({
            "id": id, "content": key, "single_word": false, "lstrip": false,
            "rstrip": rstrip.contains(&id), "normalized": false, "special": special,
        }));
    }

    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
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
        "normalizer": parts.normalizer,
        "pre_tokenizer": parts.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": parts.decoder,
        "model": parts.model,
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

/// The parts of tokenizer.json that depend on the kind of vocabulary.
struct ModelParts {
    normalizer: Json,
    pre_tokenizer: Json,
    decoder: Json,
    model: Json,
}

/// Texts llama.cpp makes end-of-generation tokens and so control tokens, whatever type the
/// file gives them (`llama_vocab::impl::load`, "maintain a list of tokens that cause
/// end-of-generation").
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Texts llama.cpp makes user-defined tokens after that, whatever their type (the same
/// function, "quick hack for gpt-oss, always render these tokens").
const ALWAYS_USER_DEFINED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Fill-in-the-middle and repository markers by kind: the metadata keys that name the kind's
/// token (current and deprecated), and the texts llama.cpp recognises when none does
/// (`llama_vocab::impl::load`, "auto-detect special tokens by text").
const FIM_KINDS: &[(&[&str], &[&str])] = &[
    (
        &[
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        ],
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_suf_token_id",
            "tokenizer.ggml.suffix_token_id",
        ],
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        &[
            "tokenizer.ggml.fim_mid_token_id",
            "tokenizer.ggml.middle_token_id",
        ],
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        &["tokenizer.ggml.fim_pad_token_id"],
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        &["tokenizer.ggml.fim_rep_token_id"],
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    (&["tokenizer.ggml.fim_sep_token_id"], &["<|file_sep|>"]),
];

/// The token types as llama.cpp uses them after its overrides by text, in its order: for each
/// fill-in-the-middle kind the file names no (valid) id for, the token with one of the kind's
/// texts becomes control (llama.cpp takes the first its hash map yields; this takes the lowest
/// id, the same token wherever a vocabulary has one); every end-of-generation text becomes
/// control; gpt-oss's channel markers become user-defined. Control is added to a token's
/// attributes there, which makes a user-defined one match only with parse_special, as a
/// control token.
fn types_after_overrides(file: &GgufFile, tokens: &[&str], types: &[u64]) -> Result<Vec<u64>> {
    let mut out: Vec<u64> = (0..tokens.len())
        .map(|id| types.get(id).copied().unwrap_or(TOKEN_NORMAL))
        .collect();
    for (keys, texts) in FIM_KINDS {
        let mut named = false;
        for key in *keys {
            named |= file
                .opt_u64(key)?
                .is_some_and(|id| (id as usize) < tokens.len());
        }
        if named {
            continue;
        }
        if let Some(id) = tokens.iter().position(|t| texts.contains(t)) {
            out[id] = TOKEN_CONTROL;
        }
    }
    for (id, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(t) {
            out[id] = TOKEN_CONTROL;
        }
        if ALWAYS_USER_DEFINED.contains(t) {
            out[id] = TOKEN_USER_DEFINED;
        }
    }
    Ok(out)
}

/// Some(special) for a token matched in the raw text, from its type after llama.cpp's
/// overrides ([`types_after_overrides`]): control and unknown tokens (special: `parse_special`
/// decides) and user-defined ones (always matched).
fn added_kind(types: &[u64], id: usize) -> Option<bool> {
    match types.get(id) {
        Some(&(TOKEN_CONTROL | TOKEN_UNKNOWN)) => Some(true),
        Some(&TOKEN_USER_DEFINED) => Some(false),
        _ => None,
    }
}

/// The ids of matched tokens that swallow the whitespace after them. llama.cpp
/// (`llama_vocab::impl::load`, "set attributes by model/tokenizer/architecture name") gives
/// every control, user-defined and unknown token `RSTRIP` when `general.name` contains "phi-3"
/// or "phi3" (any case), then takes it back from `<unk>`, `<s>` and `<|endoftext|>` and gives
/// it to `</s>`.
fn rstrip_tokens(
    file: &GgufFile,
    tokens: &[&str],
    types: &[u64],
) -> Result<std::collections::HashSet<usize>> {
    let mut out = std::collections::HashSet::new();
    let name = match file.get("general.name") {
        None => return Ok(out),
        Some(v) => v.as_str().ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: "general.name".into(),
            msg: format!("should be a string, is {v:?}"),
        })?,
    };
    let name = name.to_lowercase();
    if !(name.contains("phi-3") || name.contains("phi3")) {
        return Ok(out);
    }
    for (id, t) in tokens.iter().enumerate() {
        let matched = added_kind(types, id).is_some();
        let rstrip = match *t {
            "<unk>" | "<s>" | "<|endoftext|>" => false,
            "</s>" => true,
            _ => matched,
        };
        if rstrip && matched {
            out.insert(id);
        }
    }
    Ok(out)
}

/// The byte-level BPE parts (vocabulary keys, model, pre-tokenizer, decoder) and the default
/// of add_bos_token for its pre-tokenizer.
fn byte_level_parts(
    file: &GgufFile,
    tokens: &[&str],
    types: &[u64],
) -> Result<(Vec<String>, ModelParts, bool)> {
    let merges = file
        .opt_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: "tokenizer.ggml.merges".into(),
            msg: "is missing".into(),
        })?;
    // llama.cpp reads an absent `tokenizer.ggml.pre` as "default".
    let pre_name = match file.get("tokenizer.ggml.pre") {
        None => "default",
        Some(v) => v.as_str().ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: "tokenizer.ggml.pre".into(),
            msg: "is not a string".into(),
        })?,
    };
    let pre = PreTokenizer::from_name(pre_name).ok_or_else(|| GgufError::Metadata {
        path: file.path().to_path_buf(),
        key: "tokenizer.ggml.pre".into(),
        msg: format!(
            "is `{pre_name}`, a pre-tokenizer llama.cpp does not know{}; temper splits text as \
             llama.cpp does and will not guess",
            nearest_name(pre_name)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default()
        ),
    })?;
    if !pre.pre_type.byte_level() {
        return Err(GgufError::Unsupported {
            path: file.path().to_path_buf(),
            msg: format!(
                "tokenizer.ggml.pre is `{pre_name}`, which llama.cpp merges as raw UTF-8 with \
                 <0xXX> byte tokens; temper rebuilds byte-level BPE vocabularies only so far"
            ),
        });
    }

    // The vocabulary (later duplicates win, as in llama.cpp's token_to_id): a plain token not
    // spelled in the byte alphabet is respelled in it; an added token keeps its raw text, which
    // is what `tokenizers` looks its id up by.
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let keys: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            if in_alphabet(t) || added_kind(types, id).is_some() {
                t.to_string()
            } else {
                t.bytes().map(|b| spelling[b as usize]).collect()
            }
        })
        .collect();
    let mut vocab: BTreeMap<String, u64> = BTreeMap::new();
    for (id, key) in keys.iter().enumerate() {
        vocab.insert(key.clone(), id as u64);
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

    // llama.cpp's regexes in order, each splitting the pieces of the one before, then the
    // pieces spelled in the byte alphabet.
    let mut steps: Vec<Json> = pre
        .pre_type
        .steps()
        .map(|step| {
            let behavior = match step.behavior {
                Behavior::Isolated => "Isolated",
                Behavior::MergedWithPrevious => "MergedWithPrevious",
            };
            json!({"type": "Split", "pattern": {"Regex": step.regex}, "behavior": behavior, "invert": false})
        })
        .collect();
    steps.push(
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}),
    );
    let parts = ModelParts {
        normalizer: Json::Null,
        pre_tokenizer: json!({"type": "Sequence", "pretokenizers": steps}),
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        model: json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre.ignore_merges,
            "vocab": vocab,
            "merges": merge_pairs,
        }),
    };
    Ok((keys, parts, pre.add_bos))
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
