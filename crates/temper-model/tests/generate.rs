//! Generation with a KV cache: (1) cached decoding equals recomputing the whole forward at
//! every step, logits and greedy tokens; (2) greedy tokens equal transformers'
//! `generate(do_sample=False)` (fixtures by scripts/make_generate_fixtures.py), with and
//! without LoRA adapters. SmolLM2's greedy equality, on its GGUF fetched from PyPI, is in
//! crates/temper-gguf/tests/smollm2_generate.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use temper_core::CpuBackend;
use temper_model::generate::{
    generate, sampling, GenerateOptions, KvCache, Sampler, Sampling, StopReason,
};
use temper_model::{adapter, LoraParams, Model, ModelError, TokenBatch};

/// A token callback that does nothing.
fn no_stream(_: u32) -> Result<(), ModelError> {
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

type Cpu = CpuBackend;

fn load(model: &str, adapter_dir: Option<&str>) -> (Model<Cpu>, Option<LoraParams<Cpu>>) {
    let be = Arc::new(CpuBackend::new());
    let m = Model::load(be.clone(), &root().join(model)).expect("model loads");
    let lora =
        adapter_dir.map(|a| adapter::load(&*be, &m.cfg, &root().join(a)).expect("adapter loads"));
    (m, lora)
}

/// Logits (V) of the last token of `ids`, by the full (training) forward over all of them.
fn full_last_logits(m: &Model<Cpu>, lora: Option<&LoraParams<Cpu>>, ids: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let positions: Vec<u32> = (0..n as u32).collect();
    let batch = TokenBatch {
        ids,
        positions: &positions,
        cu_seqlens: &[0, n as u32],
        targets: &vec![-100; n],
    };
    let logits = m.logits(lora, &batch).expect("full forward");
    logits[(n - 1) * m.cfg.vocab..].to_vec()
}

/// max |a - b| / max |b|
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |s, &x| s.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |s, (&x, &y)| s.max((x as f64 - y as f64).abs()));
    diff / scale.max(1e-30)
}

/// Greedy decoding both ways, `steps` tokens, no stop ids: the cached logits match the
/// recomputed ones at every step and the generated tokens are identical.
fn check_cache_equals_recompute(
    model: &str,
    adapter_dir: Option<&str>,
    prompt: &[u32],
    steps: usize,
) {
    let (m, lora) = load(model, adapter_dir);
    let lora = lora.as_ref();

    // Reference: the full forward over prompt + generated so far, every step.
    let mut seq = prompt.to_vec();
    let mut want = Vec::new();
    let mut cache = KvCache::new(&*m.be, &m.cfg, prompt.len() + steps).expect("cache");
    let mut cached = m.forward_cached(lora, prompt, &mut cache).expect("prefill");
    for step in 0..steps {
        let full = full_last_logits(&m, lora, &seq);
        let err = rel_err(&cached, &full);
        assert!(
            err < 1e-5,
            "{model} step {step}: cached logits off by {err:.2e} relative"
        );
        let t = sampling::argmax(&full).expect("argmax");
        want.push(t);
        seq.push(t);
        cached = m
            .forward_cached(lora, &[t], &mut cache)
            .expect("decode step");
    }
    assert_eq!(cache.len(), prompt.len() + steps);

    let opts = GenerateOptions {
        max_new_tokens: steps,
        stop_ids: vec![],
    };
    let mut sampler = Sampler::new(Sampling::greedy(), 0).expect("sampler");
    let mut streamed = Vec::new();
    let got = generate(&m, lora, prompt, &opts, &mut sampler, |t| {
        streamed.push(t);
        Ok::<_, ModelError>(())
    })
    .expect("generate");
    assert_eq!(
        got.tokens, want,
        "{model}: cached greedy tokens differ from recomputed"
    );
    assert_eq!(streamed, want, "every token is streamed once, in order");
    assert_eq!(got.stop, StopReason::MaxNewTokens);
}

#[test]
fn cache_equals_recompute_tiny() {
    // "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n" is not needed
    // here: any ids will do, the chat ones come from the fixture below.
    let prompt = [1, 313, 288, 198, 72, 265, 50, 61, 2, 198, 1, 97];
    check_cache_equals_recompute("examples/tiny/model", None, &prompt, 24);
}

#[test]
fn cache_equals_recompute_llama_gqa_with_adapter() {
    let prompt = [5, 77, 140, 2, 199, 31, 8];
    check_cache_equals_recompute(
        "tests/fixtures/parity/llama_gqa/model",
        Some("tests/fixtures/parity/llama_gqa/adapter"),
        &prompt,
        30,
    );
}

#[test]
fn cache_equals_recompute_qwen2_with_adapter() {
    let prompt = [9, 18, 250, 3];
    check_cache_equals_recompute(
        "tests/fixtures/parity/qwen2/model",
        Some("tests/fixtures/parity/qwen2/adapter"),
        &prompt,
        12,
    );
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn greedy_equals_transformers() {
    let path = root().join("tests/fixtures/generate/tiny.json");
    let text = std::fs::read_to_string(&path).expect("fixture tiny.json");
    let fixture: Value = serde_json::from_str(&text).expect("fixture JSON");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "fixture holds {} cases", cases.len());
    let mut with_adapter = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let adapter_dir = case["adapter"].as_str();
        with_adapter += adapter_dir.is_some() as usize;
        let (m, lora) = load(case["model"].as_str().expect("model"), adapter_dir);
        let opts = GenerateOptions {
            max_new_tokens: case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
            stop_ids: ids(&case["eos_token_ids"]),
        };
        let want = ids(&case["generated_ids"]);
        let mut sampler = Sampler::new(Sampling::greedy(), 0).expect("sampler");
        let got = generate(
            &m,
            lora.as_ref(),
            &ids(&case["prompt_ids"]),
            &opts,
            &mut sampler,
            no_stream,
        )
        .expect("generate");
        assert_eq!(
            got.tokens, want,
            "{name}: temper's greedy tokens differ from transformers'"
        );
        let stopped = want.last().is_some_and(|t| opts.stop_ids.contains(t));
        let reason = if stopped {
            StopReason::StopToken(*want.last().unwrap_or(&0))
        } else {
            StopReason::MaxNewTokens
        };
        assert_eq!(got.stop, reason, "{name}");
    }
    assert!(
        with_adapter >= 4,
        "only {with_adapter} cases carry an adapter"
    );
}

#[test]
fn generation_stops_at_the_context_length() {
    let (mut m, _) = load("examples/tiny/model", None);
    m.cfg.max_positions = 20;
    let prompt: Vec<u32> = (10..25).collect(); // 15 tokens at positions 0..14
    let opts = GenerateOptions {
        max_new_tokens: 100,
        stop_ids: vec![],
    };
    let mut sampler = Sampler::new(Sampling::greedy(), 0).expect("sampler");
    let got = generate(&m, None, &prompt, &opts, &mut sampler, no_stream).expect("generate");
    // Positions 15..19 run the first 5 new tokens; the 6th is emitted but never run.
    assert_eq!(got.tokens.len(), 6);
    assert_eq!(got.stop, StopReason::ContextFull);
    let long: Vec<u32> = (0..21).collect();
    assert!(generate(&m, None, &long, &opts, &mut sampler, no_stream).is_err());
}

/// The cached forward of the newer families (Phi-3's fused projections and partial rotary,
/// Gemma's scaled embeddings and GeGLU, Gemma 2's soft caps and windows shorter than the
/// prompt, Gemma 3's local RoPE base) gives, token by token, the full forward's logits.
#[test]
fn cached_forward_equals_the_full_forward_for_phi3_and_gemma() {
    for (case, len) in [
        ("phi3_longrope", 14), // within Phi-3's original context: short factors throughout
        ("gemma", 18),
        ("gemma2_softcap", 18),
        ("gemma3", 18),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity")
            .join(case);
        let be = Arc::new(CpuBackend::new());
        let m = Model::load(be.clone(), &dir.join("model")).expect("model");
        let lora = adapter::load(&*be, &m.cfg, &dir.join("adapter")).expect("adapter");
        let ids: Vec<u32> = (0..len as u32).map(|i| (i * 11 + 5) % 60).collect();
        let positions: Vec<u32> = (0..len as u32).collect();
        let targets = vec![-100i32; len];
        let full = m
            .logits(
                Some(&lora),
                &TokenBatch {
                    ids: &ids,
                    positions: &positions,
                    cu_seqlens: &[0, len as u32],
                    targets: &targets,
                },
            )
            .expect("logits");
        let v = m.cfg.vocab;
        let mut cache = KvCache::new(&*be, &m.cfg, len).expect("cache");
        let prompt = 9; // longer than the windows of 4
        let mut worst = 0f32;
        let mut got = m
            .forward_cached(Some(&lora), &ids[..prompt], &mut cache)
            .expect("prefill");
        for t in prompt..=len {
            let want = &full[(t - 1) * v..t * v];
            let scale = want.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let diff = got
                .iter()
                .zip(want)
                .fold(0f32, |a, (&g, &w)| a.max((g - w).abs()));
            worst = worst.max(diff / scale);
            if t < len {
                got = m
                    .forward_cached(Some(&lora), &ids[t..t + 1], &mut cache)
                    .expect("decode");
            }
        }
        println!("{case}: cached logits within {worst:.2e} of the full forward");
        assert!(worst < 1e-5, "{case}: {worst:.2e}");
    }
}

/// The one layer forward in its two attention modes: from an empty cache, one token at a
/// time, every position's logits equal the full (training) forward's over the whole
/// sequence, for a Llama with GQA, a Qwen3 (per-head q/k norms before RoPE) and a Mistral
/// whose sliding window (4) is shorter than the sequence (each decoded token reads only the
/// last rows of the cache).
#[test]
fn token_by_token_equals_the_full_forward_for_llama_qwen3_and_mistral() {
    let len = 16;
    for case in ["llama_gqa", "qwen3", "mistral_sliding"] {
        let dir = root().join("tests/fixtures/parity").join(case);
        let be = Arc::new(CpuBackend::new());
        let m = Model::load(be.clone(), &dir.join("model")).expect("model");
        let lora = adapter::load(&*be, &m.cfg, &dir.join("adapter")).expect("adapter");
        let ids: Vec<u32> = (0..len as u32).map(|i| (i * 11 + 5) % 60).collect();
        let positions: Vec<u32> = (0..len as u32).collect();
        let targets = vec![-100i32; len];
        let batch = TokenBatch {
            ids: &ids,
            positions: &positions,
            cu_seqlens: &[0, len as u32],
            targets: &targets,
        };
        let full = m.logits(Some(&lora), &batch).expect("full forward"); // (len, V)
        let v = m.cfg.vocab;
        let mut cache = KvCache::new(&*be, &m.cfg, len).expect("cache");
        let mut worst = 0f64;
        for t in 0..len {
            let got = m
                .forward_cached(Some(&lora), &ids[t..t + 1], &mut cache)
                .expect("decode step");
            let err = rel_err(&got, &full[t * v..(t + 1) * v]);
            assert!(err < 1e-5, "{case} position {t}: {err:.2e} relative");
            worst = worst.max(err);
        }
        assert_eq!(cache.len(), len);
        println!("{case}: token-by-token logits within {worst:.2e} of the full forward");
    }
}
