//! SentencePiece-style tokenizer.json files (Gemma's BPE with byte fallback and a `▁`
//! normaliser; a Unigram with Metaspace) load from a Hugging Face folder and encode exactly as
//! transformers' fast tokenizers do. Fixtures: scripts/make_sentencepiece_tokenizer_fixtures.py.

use std::path::Path;

use temper_data::Tokenizer;

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers")
        .join(name);
    let tok = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"),
    )
    .expect("json");
    let cases = expected["cases"].as_array().expect("cases");
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(got, want, "{name}: {text:?}");
    }
    println!("{name}: {} texts encoded as transformers does", cases.len());
}

#[test]
fn gemma_style_bpe_with_byte_fallback_matches_transformers() {
    check("gemma_bpe");
}

#[test]
fn unigram_with_metaspace_matches_transformers() {
    check("unigram");
}
