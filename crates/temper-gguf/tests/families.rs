//! Model families through GGUF: the Qwen3 parity model (per-head q/k norms, head_dim 8 beside
//! hidden 16) and the Llama parity model with llama3 RoPE scaling are exported to GGUF, imported
//! back and give the same logits; llama3 scaling comes back from llama.cpp's `rope_freqs`
//! tensor, including Llama 3.2's own parameters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use temper_core::CpuBackend;
use temper_gguf::config::llama3_from_rope_freqs;
use temper_gguf::{export, import, ExportType, GgufFile, OutDtype};
use temper_model::{Model, TokenBatch};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The parity fixture's model folder with the tiny example's tokenizer beside it (export
/// writes the tokenizer too).
fn model_with_tokenizer(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = root()
        .join("tests/fixtures/parity")
        .join(case)
        .join("model");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let tok = root().join("examples/tiny/model");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn logits(dir: &Path, ids: &[u32]) -> (Vec<f32>, temper_model::ModelConfig) {
    let model = Model::load(Arc::new(CpuBackend::new()), dir).unwrap();
    let n = ids.len();
    let positions: Vec<u32> = (0..n as u32).collect(); // (n)
    let targets = vec![-100i32; n];
    let batch = TokenBatch {
        ids,
        positions: &positions,
        cu_seqlens: &[0, n as u32],
        targets: &targets,
    };
    (model.logits(None, &batch).unwrap(), model.cfg.clone())
}

/// Exports `case`'s model to an f32 GGUF, imports it and compares logits on 40 tokens (past
/// llama_gqa's original context of 32, so every llama3 frequency band matters).
fn round_trip(case: &str) -> temper_model::ModelConfig {
    let src = model_with_tokenizer(case);
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("m.gguf");
    export(src.path(), &gguf, ExportType::F32, None).unwrap();
    let out = tmp.path().join("imported");
    import(&GgufFile::open(&gguf).unwrap(), &out, OutDtype::F32).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| 3 + (i * 37 % 60)).collect();
    let (want, want_cfg) = logits(src.path(), &ids);
    let (got, got_cfg) = logits(&out, &ids);
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "{case}: GGUF round trip, logits rel err {:.2e}",
        diff / scale
    );
    assert!(
        diff <= 1e-5 * scale,
        "{case}: logits off by {diff} (max {scale})"
    );
    assert_eq!(got_cfg.arch, want_cfg.arch, "{case}");
    assert_eq!(got_cfg.head_dim, want_cfg.head_dim, "{case}");
    assert_eq!(got_cfg.qk_norm, want_cfg.qk_norm, "{case}");
    assert_eq!(got_cfg.tie_embeddings, want_cfg.tie_embeddings, "{case}");
    got_cfg
}

#[test]
fn qwen3_round_trips_through_gguf_with_its_qk_norms() {
    let cfg = round_trip("qwen3");
    assert!(cfg.qk_norm && cfg.head_dim == 8 && cfg.hidden == 16);
}

#[test]
fn llama3_rope_scaling_comes_back_from_rope_freqs() {
    let cfg = round_trip("llama_gqa");
    assert!(
        matches!(
            cfg.rope_scaling,
            Some(temper_core::rope::RopeScaling::Llama3 { .. })
        ),
        "{:?}",
        cfg.rope_scaling
    );
}

/// The divisors convert_hf_to_gguf.py writes for a llama3 rope_scaling.
fn rope_freqs(theta: f64, d: usize, factor: f64, low: f64, high: f64, old: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / d as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[test]
fn llama_3_2_rope_freqs_give_its_rope_scaling() {
    // Llama-3.2-1B / 3B: theta 500000, head_dim 64, factor 32, low 1, high 4, original 8192.
    let f = rope_freqs(500000.0, 64, 32.0, 1.0, 4.0, 8192.0);
    let j = llama3_from_rope_freqs(&f, 64, 500000.0).expect("llama3");
    assert_eq!(j["rope_type"], "llama3");
    assert_eq!(j["factor"].as_f64(), Some(32.0));
    assert_eq!(j["low_freq_factor"].as_f64(), Some(1.0));
    assert_eq!(j["high_freq_factor"].as_f64(), Some(4.0));
    assert_eq!(j["original_max_position_embeddings"].as_f64(), Some(8192.0));
    // Other parameters: equivalent ones that give the same divisors.
    let f = rope_freqs(10000.0, 32, 8.0, 2.0, 6.0, 100.0);
    let j = llama3_from_rope_freqs(&f, 32, 10000.0).expect("llama3");
    let g = rope_freqs(
        10000.0,
        32,
        j["factor"].as_f64().unwrap(),
        j["low_freq_factor"].as_f64().unwrap(),
        j["high_freq_factor"].as_f64().unwrap(),
        j["original_max_position_embeddings"].as_f64().unwrap(),
    );
    for (a, b) in f.iter().zip(&g) {
        assert!((a - b).abs() <= 1e-5 * a, "{f:?} vs {g:?}");
    }
    // Not llama3 scaling: refused.
    let mut bad = f.clone();
    bad[0] = 3.0;
    assert!(llama3_from_rope_freqs(&bad, 32, 10000.0).is_none());
    assert!(llama3_from_rope_freqs(&f, 64, 10000.0).is_none());
}
