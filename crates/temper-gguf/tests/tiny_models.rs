//! Conversion end to end with no download: tiny random llama, qwen2 and qwen3 GGUFs (mixed
//! tensor types, GQA; llama with its own output.weight, qwen2 tied with q/k/v biases, qwen3
//! tied with per-head q/k norms and a head_dim of 128 beside hidden 64) imported,
//! loaded by temper-model, and scored against transformers' loss of the same GGUFs
//! (`tests/fixtures/gguf/tiny_models.json`, made by `scripts/make_gguf_fixtures.py`).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use temper_core::CpuBackend;
use temper_gguf::{import, GgufFile, OutDtype};
use temper_model::{Model, TokenBatch};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

/// Mean next-token loss of one sequence from temper's logits, log-sum-exp in f64.
fn row_loss(model: &Model<CpuBackend>, ids: &[u32]) -> f64 {
    let n = ids.len();
    let positions: Vec<u32> = (0..n as u32).collect(); // (n)
    let mut targets: Vec<i32> = ids[1..].iter().map(|&t| t as i32).collect(); // (n)
    targets.push(-100);
    let batch = TokenBatch {
        ids,
        positions: &positions,
        cu_seqlens: &[0, n as u32],
        targets: &targets,
    };
    let logits = model.logits(None, &batch).unwrap(); // (n, vocab)
    let v = model.cfg.vocab;
    let mut sum = 0f64;
    for (i, &t) in targets[..n - 1].iter().enumerate() {
        let row = &logits[i * v..(i + 1) * v];
        let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let lse = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        sum += lse - row[t as usize] as f64;
    }
    sum / (n - 1) as f64
}

#[test]
fn tiny_llama_qwen2_and_qwen3_match_transformers() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_models.json")).unwrap(),
    )
    .unwrap();
    for m in fx["models"].as_array().unwrap() {
        let name = m["file"].as_str().unwrap();
        let file = GgufFile::open(&fixtures().join(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        import(&file, dir.path(), OutDtype::F32).unwrap();
        let model = Model::load(Arc::new(CpuBackend::new()), dir.path()).unwrap();
        assert_eq!(
            model.cfg.tie_embeddings,
            m["tied"].as_bool().unwrap(),
            "{name}"
        );
        assert_eq!(model.cfg.model_type, m["arch"].as_str().unwrap(), "{name}");
        for (ids, want) in m["ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(m["loss"].as_array().unwrap())
        {
            let ids: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let want = want.as_f64().unwrap();
            let got = row_loss(&model, &ids);
            let rel = (got - want).abs() / want.abs();
            println!(
                "{name}: {} tokens: temper {got:.6} transformers {want:.6} rel err {rel:.2e}",
                ids.len()
            );
            assert!(
                rel <= 1e-4,
                "{name}: temper {got} vs transformers {want} (rel {rel:e})"
            );
        }
    }
}

#[test]
fn half_precision_imports_load_and_stay_close() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_models.json")).unwrap(),
    )
    .unwrap();
    let m = &fx["models"][0];
    let file = GgufFile::open(&fixtures().join(m["file"].as_str().unwrap())).unwrap();
    let ids: Vec<u32> = m["ids"][2]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let want = m["loss"][2].as_f64().unwrap();
    for (dtype, tol) in [(OutDtype::BF16, 2e-2), (OutDtype::F16, 2e-3)] {
        let dir = tempfile::tempdir().unwrap();
        import(&file, dir.path(), dtype).unwrap();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], dtype.torch_name());
        let model = Model::load(Arc::new(CpuBackend::new()), dir.path()).unwrap();
        let got = row_loss(&model, &ids);
        let rel = (got - want).abs() / want;
        println!(
            "{}: loss {got:.5} vs f32 transformers {want:.5} (rel {rel:.1e})",
            dtype.torch_name()
        );
        assert!(rel <= tol, "{}: {got} vs {want}", dtype.torch_name());
    }
}
