//! The tokenizer rebuilt from a GGUF encodes as llama.cpp does: every `ggml-vocab-*.gguf` that
//! llama.cpp keeps in its `models/` folder (vendored in the llama-cpp-python 0.3.36 sdist,
//! fetched once) with its `.inp` / `.out` reference tokenisations, read as llama.cpp's
//! `tests/test-tokenizer-0.cpp` reads them: inputs separated by a
//! `\n__ggml_vocab_test__\n` line, one line of space-separated token ids per input, encoded
//! with `add_special = false` (no BOS) and `parse_special = false` (control tokens in the text
//! are plain text; user-defined ones are still matched).
//!
//! Every vocabulary temper accepts must reproduce every case; the ones it refuses (neither
//! byte-level BPE nor SentencePiece: bert, t5, gemma4) are listed with temper's reason.
//! With llama.cpp 0.3.36's folder: 13 vocabularies, 602 cases, llama-spm and phi-3
//! (SentencePiece) 46 each.

mod common;

use std::path::Path;
use std::str::FromStr;

use temper_gguf::{tokenizer::tokenizer_files, GgufFile};
use tokenizers::Tokenizer;

/// The vocabularies temper must accept (byte-level BPE, `tokenizer.ggml.model` = gpt2, and
/// SentencePiece, `llama`) among those with reference tokenisations.
const ACCEPTED: &[&str] = &[
    "command-r",
    "deepseek-coder",
    "deepseek-llm",
    "falcon",
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "mpt",
    "phi-3",
    "qwen2",
    "qwen35",
    "refact",
    "starcoder",
];

/// (input, expected ids) as test-tokenizer-0.cpp's `read_tests` makes them.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let p = gguf.with_extension(format!("gguf.{ext}"));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let raw = read("inp");
    let outs: Vec<String> = read("out").lines().map(|l| l.trim().to_string()).collect();
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(i) => {
                inputs.push(raw[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                inputs.push(raw[pos..].to_string());
                break;
            }
        }
    }
    assert_eq!(
        inputs.len(),
        outs.len(),
        "{}: inputs and outputs differ in number",
        gguf.display()
    );
    inputs
        .into_iter()
        .zip(outs)
        .map(|(s, o)| {
            let ids = o
                .split(' ')
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().unwrap_or_else(|e| panic!("id `{t}`: {e}")))
                .collect();
            (s, ids)
        })
        .collect()
}

#[test]
fn every_accepted_llama_cpp_vocab_matches_its_reference_tokenisations() {
    let Some(dir) = common::llama_cpp_vocabs() else {
        return;
    };
    let mut ggufs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    ggufs.sort();

    let mut accepted = Vec::new();
    let mut failures = Vec::new();
    for gguf in &ggufs {
        let name = gguf.file_stem().unwrap().to_string_lossy();
        let name = name.trim_start_matches("ggml-vocab-").to_string();
        let file = GgufFile::open(gguf).unwrap();
        let tok_json = match tokenizer_files(&file) {
            Ok((tok, _)) => tok,
            Err(e) => {
                println!("{name:16} skipped: temper refuses it: {e}");
                continue;
            }
        };
        let mut tok = Tokenizer::from_str(&tok_json.to_string())
            .unwrap_or_else(|e| panic!("{name}: loading the rebuilt tokenizer.json: {e}"));
        tok.set_encode_special_tokens(true); // llama.cpp's parse_special = false
        if !gguf.with_extension("gguf.inp").exists() {
            println!("{name:16} loads; skipped: llama.cpp keeps no reference tokenisations for it");
            continue;
        }
        let cases = read_cases(gguf);
        let mut matched = 0;
        for (text, want) in &cases {
            let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            if &got == want {
                matched += 1;
            } else if failures.len() < 20 {
                failures.push(format!(
                    "{name}: {text:?}\n  llama.cpp {want:?}\n  temper    {got:?}"
                ));
            }
        }
        println!("{name:16} {matched}/{} cases match llama.cpp", cases.len());
        accepted.push((name, matched, cases.len()));
    }

    let names: Vec<&str> = accepted.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ACCEPTED, "the vocabularies temper accepts changed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let total: usize = accepted.iter().map(|(_, m, _)| m).sum();
    println!(
        "{total} llama.cpp reference tokenisations reproduced over {} vocabularies",
        accepted.len()
    );
    for (name, matched, n) in &accepted {
        assert_eq!(matched, n, "{name}");
        assert!(*n >= 40, "{name}: only {n} cases");
    }
}

/// Fill-in-the-middle and repository markers in text (`tests/fixtures/gguf/fim_tokens.json`,
/// made by llama.cpp with scripts/make_fim_token_fixtures.py), parse_special off and on:
/// llama.cpp makes such a token control when the file names no id for its kind, so
/// deepseek-coder's user-defined `<｜fim▁begin｜>` is plain text with parse_special off.
#[test]
fn fim_markers_in_text_match_llama_cpp() {
    let Some(dir) = common::llama_cpp_vocabs() else {
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/fim_tokens.json");
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cases = json["cases"].as_array().expect("cases");
    let mut tokenizers: std::collections::HashMap<String, Tokenizer> = Default::default();
    let mut failures = Vec::new();
    for case in cases {
        let vocab = case["vocab"].as_str().expect("vocab");
        let parse_special = case["parse_special"].as_bool().expect("parse_special");
        let input = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let tok = tokenizers.entry(vocab.to_string()).or_insert_with(|| {
            let file = GgufFile::open(&dir.join(format!("ggml-vocab-{vocab}.gguf"))).unwrap();
            let (json, _) = tokenizer_files(&file).unwrap();
            Tokenizer::from_str(&json.to_string()).unwrap()
        });
        tok.set_encode_special_tokens(!parse_special);
        let got = tok.encode(input, false).unwrap().get_ids().to_vec();
        if got != want {
            failures.push(format!(
                "{vocab} parse_special {parse_special}: {input:?}\n  llama.cpp {want:?}\n  temper    {got:?}"
            ));
        }
    }
    assert!(cases.len() >= 30, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
