//! A malformed tokenizer.json is an error naming the file, never a panic: the tokenizers
//! library panics on a syntax error inside `decoder` ("Helper") rather than returning one.

use std::path::Path;

use temper_data::Tokenizer;

fn tiny(dir: &Path, edit: impl FnOnce(String) -> String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model");
    let text = std::fs::read_to_string(src.join("tokenizer.json")).expect("tokenizer.json");
    std::fs::write(dir.join("tokenizer.json"), edit(text)).expect("write");
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .expect("copy");
}

#[test]
fn a_syntax_error_inside_the_decoder_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    tiny(dir.path(), |t| {
        t.replacen(
            "\"type\": \"ByteLevel\",\n    \"add_prefix_space\"",
            "\"type\": \"ByteLevel\" \"add_prefix_space\"",
            1,
        )
    });
    let e = Tokenizer::from_dir(dir.path())
        .expect_err("malformed")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn an_intact_tokenizer_still_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    tiny(dir.path(), |t| t);
    let tok = Tokenizer::from_dir(dir.path()).expect("loads");
    assert!(!tok.encode("hello", false).expect("encode").is_empty());
}
