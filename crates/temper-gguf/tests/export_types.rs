//! Every export type imported back by temper: f32 and f16 give the original losses exactly,
//! bf16 and the quantised types within their rounding, and each tensor has the type llama.cpp's
//! `quantize` would give it. The model is small and random (hidden 256, so the k-quants apply to
//! its 256-wide rows, and ffn 672, so ffn_down falls back as llama.cpp's does), its weights
//! multiples of f16 steps so that an f16 file holds them exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use temper_core::CpuBackend;
use temper_gguf::mix::{tensor_type, MixModel};
use temper_gguf::{export, import, ExportType, GgmlType, GgufFile, OutDtype};
use temper_model::init::{Family, Shape};
use temper_model::{Model, TokenBatch};

const SHAPE: Shape = Shape {
    name: "export-test",
    family: Family::Llama,
    hidden: 256,
    intermediate: 672,
    layers: 3,
    heads: 4,
    kv_heads: 2,
    head_dim: 64,
    vocab: 1024,
    max_positions: 512,
    rope_theta: 10000.0,
    tie_embeddings: true,
    sliding_window: None,
};

/// Deterministic values in (-1, 1) from a 64-bit LCG.
fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// The random model as an f32 folder, with the tiny example's tokenizer.
fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("config.json"),
        SHAPE.config_json().to_string().as_bytes(),
    )
    .expect("config");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), dir.join(f)).expect("tokenizer");
    }
    let mut state = 15u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = SHAPE
        .tensors()
        .into_iter()
        .map(|(name, shape, is_norm)| {
            let n: usize = shape.iter().product();
            // Embeddings of std ~0.09 (logits of std ~1.4, tied); matrices ~1/sqrt(fan-in).
            let scale = match shape.as_slice() {
                [_, fan_in] if !name.contains("embed") => 1.7 / (*fan_in as f32).sqrt(),
                _ => 0.15,
            };
            let bytes = (0..n)
                .flat_map(|_| {
                    let x = if is_norm {
                        1.0 + 0.1 * lcg(&mut state)
                    } else {
                        scale * lcg(&mut state)
                    };
                    half::f16::from_f32(x).to_f32().to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("view");
            (n.clone(), v)
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::tensor::serialize(views, None).expect("serialize"),
    )
    .expect("weights");
}

/// Mean next-token loss of each row, log-sum-exp in f64.
fn losses(dir: &Path, rows: &[Vec<u32>]) -> Vec<f64> {
    let model = Model::load(Arc::new(CpuBackend::new()), dir).expect("load");
    rows.iter()
        .map(|ids| {
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
            let logits = model.logits(None, &batch).expect("logits"); // (n, vocab)
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
        })
        .collect()
}

#[test]
fn every_export_type_imports_back_with_the_original_losses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let orig = tmp.path().join("orig");
    write_model(&orig);
    let mut state = 7u64;
    let rows: Vec<Vec<u32>> = (0..3)
        .map(|_| {
            (0..20)
                .map(|_| ((lcg(&mut state) + 1.0) * 511.0) as u32)
                .collect()
        })
        .collect();
    let want = losses(&orig, &rows);
    println!("original losses {want:?}");
    // Largest relative change of a row's loss each type may cause.
    for (ty, tol) in [
        (ExportType::F32, 0.0),
        (ExportType::F16, 0.0),
        (ExportType::BF16, 0.002),
        (ExportType::Q8_0, 0.002),
        (ExportType::Q6K, 0.005),
        (ExportType::Q5KM, 0.01),
        (ExportType::Q4KM, 0.03),
        (ExportType::Q4_0, 0.04),
    ] {
        let gguf = tmp.path().join(format!("{}.gguf", ty.name()));
        export(&orig, &gguf, ty, None).expect("export");
        let f = GgufFile::open(&gguf).expect("open");
        let mix = MixModel {
            layers: SHAPE.layers as u64,
            tied: true,
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in &f.tensors {
            assert_eq!(t.ty, tensor_type(ty, mix, &t.name, &t.dims), "{}", t.name);
            *counts.entry(t.ty.name()).or_default() += 1;
        }
        let back = tmp.path().join(format!("back-{}", ty.name()));
        import(&f, &back, OutDtype::F32).expect("import");
        let got = losses(&back, &rows);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w)
            .fold(0f64, f64::max);
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        println!(
            "{:6}: worst relative loss change {worst:.2e} ({counts:?})",
            ty.name()
        );
        assert!(worst <= tol, "{}: {got:?} vs {want:?}", ty.name());
    }
}

/// The type mix on this model and on SmolLM2-135M's shapes (hidden 576: not whole 256-value
/// super-blocks, so llama.cpp falls back to 32-value types).
#[test]
fn type_mix_follows_llama_cpp() {
    let m = MixModel {
        layers: 3,
        tied: true,
    };
    let t = |ty, name: &str, dims: &[u64]| tensor_type(ty, m, name, dims);
    use ExportType::*;
    // use_more_bits(l, 3): 3/8 = 0, 21/8 = 2: layers 2, and (l - 0) % 3 == 2: layer 2.
    assert_eq!(t(Q4KM, "blk.0.attn_v.weight", &[256, 128]), GgmlType::Q4_K);
    assert_eq!(t(Q4KM, "blk.2.attn_v.weight", &[256, 128]), GgmlType::Q6_K);
    assert_eq!(t(Q5KM, "blk.2.attn_v.weight", &[256, 128]), GgmlType::Q6_K);
    assert_eq!(t(Q5KM, "blk.1.attn_q.weight", &[256, 256]), GgmlType::Q5_K);
    assert_eq!(
        t(Q4KM, "blk.2.ffn_down.weight", &[672, 256]),
        GgmlType::Q8_0
    );
    assert_eq!(
        t(Q4KM, "blk.1.ffn_down.weight", &[672, 256]),
        GgmlType::Q5_0
    );
    assert_eq!(
        t(Q5KM, "blk.1.ffn_down.weight", &[672, 256]),
        GgmlType::Q5_1
    );
    assert_eq!(t(Q4KM, "token_embd.weight", &[256, 1024]), GgmlType::Q6_K);
    assert_eq!(t(Q4_0, "token_embd.weight", &[256, 1024]), GgmlType::Q6_K);
    assert_eq!(t(Q8_0, "token_embd.weight", &[256, 1024]), GgmlType::Q8_0);
    assert_eq!(t(Q4_0, "blk.0.attn_v.weight", &[256, 128]), GgmlType::Q4_0);
    assert_eq!(t(Q4KM, "blk.0.attn_norm.weight", &[256]), GgmlType::F32);
    assert_eq!(t(Q6K, "blk.0.ffn_up.weight", &[256, 672]), GgmlType::Q6_K);
    assert_eq!(t(Q6K, "blk.0.ffn_down.weight", &[672, 256]), GgmlType::Q8_0);
    assert_eq!(t(Q4KM, "blk.0.ffn_down.weight", &[100, 256]), GgmlType::F16);
    let untied = MixModel {
        layers: 3,
        tied: false,
    };
    assert_eq!(
        tensor_type(Q4KM, untied, "token_embd.weight", &[256, 1024]),
        GgmlType::Q4_K
    );
    assert_eq!(
        tensor_type(Q4KM, untied, "output.weight", &[256, 1024]),
        GgmlType::Q6_K
    );

    // SmolLM2-135M: 30 layers, hidden 576, ffn 1536, tied.
    let s = MixModel {
        layers: 30,
        tied: true,
    };
    let t = |ty, name: &str, dims: &[u64]| tensor_type(ty, s, name, dims);
    assert_eq!(t(Q4KM, "token_embd.weight", &[576, 49152]), GgmlType::Q8_0);
    assert_eq!(t(Q4KM, "blk.3.attn_q.weight", &[576, 576]), GgmlType::Q5_0);
    assert_eq!(t(Q4KM, "blk.5.attn_v.weight", &[576, 192]), GgmlType::Q8_0);
    assert_eq!(
        t(Q4KM, "blk.5.ffn_down.weight", &[1536, 576]),
        GgmlType::Q6_K
    );
    assert_eq!(
        t(Q4KM, "blk.6.ffn_down.weight", &[1536, 576]),
        GgmlType::Q4_K
    );
    assert_eq!(
        t(Q5KM, "blk.6.ffn_down.weight", &[1536, 576]),
        GgmlType::Q5_K
    );
    assert_eq!(t(Q5KM, "blk.6.ffn_up.weight", &[576, 1536]), GgmlType::Q5_1);
}
