//! The tokenizer rebuilt from GGUF metadata encodes as llama.cpp does: ids made by
//! `scripts/make_llama_cpp_token_fixtures.py` with llama.cpp's `llama_tokenize` for the small
//! vocabularies of `scripts/make_gguf_fixtures.py`, saved with different `tokenizer.ggml.pre`
//! values and add_bos_token settings, and for every `tokenizer.ggml.pre` name llama.cpp
//! knows, written into a vocabulary with merges across every boundary in its strings
//! (`tok_boundaries.gguf`). The rebuilt tokenizer.json is loaded with the `tokenizers` crate,
//! as temper-data loads it.

mod common;

use common::ids;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::Value;
use temper_gguf::pretokenizer::KNOWN_NAMES;
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
            let want = ids(want);
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

/// `tok_smollm.gguf` with `tokenizer.ggml.pre` = `name`, written into `dir`.
fn with_pre(dir: &std::path::Path, name: &str) -> PathBuf {
    let bytes = std::fs::read(fixtures().join("tok_smollm.gguf")).unwrap();
    let path = dir.join(format!("tok_{name}.gguf"));
    std::fs::write(&path, common::with_pre(&bytes, name)).unwrap();
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

#[test]
fn every_pre_tokenizer_name_splits_as_llama_cpp() {
    let base = std::fs::read(fixtures().join("tok_boundaries.gguf")).unwrap();
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("pre_tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let strings: Vec<&str> = fx["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let file_with = |name: &str| {
        let path = tmp.path().join(format!("tok_boundaries-{name}.gguf"));
        std::fs::write(&path, common::with_pre(&base, name)).unwrap();
        GgufFile::open(&path).unwrap()
    };

    // The names llama.cpp knows are the names temper knows.
    let mut names = BTreeSet::new();
    for name in fx["raw_utf8"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        names.insert(name.to_string());
        let err = tokenizer_files(&file_with(name)).unwrap_err().to_string();
        assert!(err.contains("raw UTF-8"), "{name}: {err}");
    }
    for group in fx["groups"].as_array().unwrap() {
        for name in group["names"].as_array().unwrap() {
            names.insert(name.as_str().unwrap().to_string());
        }
    }
    let known: BTreeSet<String> = KNOWN_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, known, "llama.cpp's names and temper's differ");

    // Names that rebuild to the same tokenizer.json load it once.
    let mut loaded: HashMap<String, Tokenizer> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for group in fx["groups"].as_array().unwrap() {
        let want: Vec<Vec<u32>> = group["ids"].as_array().unwrap().iter().map(ids).collect();
        for name in group["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let (json, _) = tokenizer_files(&file_with(name))
                .unwrap_or_else(|e| panic!("{name}: temper refuses it: {e}"));
            let json = json.to_string();
            let tok = loaded.entry(json.clone()).or_insert_with(|| {
                Tokenizer::from_str(&json)
                    .unwrap_or_else(|e| panic!("{name}: loading the rebuilt tokenizer.json: {e}"))
            });
            let mut matched = 0;
            for (s, want) in strings.iter().zip(&want) {
                let got = tok.encode(*s, true).unwrap().get_ids().to_vec();
                if &got == want {
                    matched += 1;
                } else if failures.len() < 20 {
                    failures.push(format!(
                        "{name}: {s:?}\n  llama.cpp {want:?}\n  temper    {got:?}"
                    ));
                }
            }
            checked += 1;
            println!("{name:24} {matched}/{} strings as llama.cpp", strings.len());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        checked + fx["raw_utf8"].as_array().unwrap().len(),
        KNOWN_NAMES.len()
    );
    println!(
        "{checked} pre-tokenizer names split {} strings as llama.cpp does ({} distinct tokenizers)",
        strings.len(),
        loaded.len()
    );
}
