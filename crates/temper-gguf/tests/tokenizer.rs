//! The tokenizer rebuilt from GGUF metadata encodes as llama.cpp does: ids made by
//! `scripts/make_llama_cpp_token_fixtures.py` with llama.cpp's `llama_tokenize` for the small
//! vocabularies of `scripts/make_gguf_fixtures.py`, saved with different `tokenizer.ggml.pre`
//! values and add_bos_token settings. The rebuilt tokenizer.json is loaded with the
//! `tokenizers` crate, as temper-data loads it.

use std::path::PathBuf;

use serde_json::Value;
use temper_gguf::{tokenizer::tokenizer_files, GgufFile};
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// Writes tokenizer.json + tokenizer_config.json for `gguf` into a temp dir and loads the
/// tokenizer.json.
fn rebuilt(gguf: &std::path::Path) -> (tempfile::TempDir, Tokenizer) {
    let file = GgufFile::open(gguf).unwrap();
    let (tok, cfg) = tokenizer_files(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    (dir, t)
}

#[test]
fn small_vocabularies_match_llama_cpp() {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let strings: Vec<&str> = cases["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let mut checked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let (_dir, tok) = rebuilt(&fixtures().join(file));
        for (s, want) in strings.iter().zip(case["ids"].as_array().unwrap()) {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(*s, true).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{file} ({}): {s:?}", case["pre"]);
            checked += 1;
        }
    }
    println!("{checked} encodings equal llama.cpp's");
    assert!(checked >= 4 * 20);
}

#[test]
fn special_tokens_and_template_come_through() {
    let (dir, tok) = rebuilt(&fixtures().join("tok_llama-bpe.gguf"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(
        tok.decode(&[1, 2], false).unwrap(),
        "<|im_start|><|im_end|>"
    );
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert!(cfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(cfg["add_bos_token"], Value::Bool(true));
    assert_eq!(cfg["bos_token"], "<|im_start|>");
    assert_eq!(cfg["eos_token"], "<|im_end|>");
    assert_eq!(cfg["pad_token"], "<|endoftext|>");
}

/// `tok_smollm.gguf` with its `tokenizer.ggml.pre` value ("smollm", a GGUF string: u64 length
/// then bytes) replaced by `name` of the same length, written into `dir`.
fn with_pre(dir: &std::path::Path, name: &str) -> PathBuf {
    let mut bytes = std::fs::read(fixtures().join("tok_smollm.gguf")).unwrap();
    let key = b"tokenizer.ggml.pre";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the key is in the file")
        + key.len();
    // value type (u32, 8 = string), length (u64), bytes
    assert_eq!(&bytes[at..at + 4], &8u32.to_le_bytes());
    assert_eq!(&bytes[at + 4..at + 12], &6u64.to_le_bytes());
    assert_eq!(&bytes[at + 12..at + 18], b"smollm");
    assert_eq!(name.len(), 6);
    bytes[at + 12..at + 18].copy_from_slice(name.as_bytes());
    let path = dir.join(format!("tok_{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn an_unknown_pre_tokenizer_is_an_error_naming_it_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = with_pre(dir.path(), "smolxm");
    let err = tokenizer_files(&GgufFile::open(&path).unwrap())
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("tokenizer.ggml.pre"), "{err}");
    assert!(err.contains("`smolxm`"), "{err}");
    assert!(err.contains("did you mean `smollm`?"), "{err}");

    // Known to llama.cpp, but merged there as raw UTF-8, not in the byte alphabet.
    let path = with_pre(dir.path(), "gemma4");
    let err = tokenizer_files(&GgufFile::open(&path).unwrap())
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains("`gemma4`") && err.contains("raw UTF-8"),
        "{err}"
    );

    // The same file under another name llama.cpp knows loads.
    let path = with_pre(dir.path(), "falcon");
    assert!(tokenizer_files(&GgufFile::open(&path).unwrap()).is_ok());
}
