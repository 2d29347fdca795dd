//! Phi-3, Gemma, Gemma 2 and Gemma 3 GGUFs imported back to the Hugging Face folder they were
//! made from. Each GGUF is written here, with temper's GGUF writer, from a random model of the
//! `init-model` shape (phi3-tiny, gemma-tiny, gemma2-tiny, gemma3-tiny; norms random too) in
//! the layout llama.cpp's `convert_hf_to_gguf.py` gives it (vendored in llama-cpp-python
//! 0.3.36, `conversion/phi.py` and `conversion/gemma.py`; each rule named where it is
//! applied). The import must give back every tensor, the config keys temper-model reads, and
//! the same logits.
//!
//! What this checks is that the import inverts the converter as read from its source; no file
//! made by llama.cpp's own converter is used (it needs torch and transformers). With
//! TEMPER_KEEP_FAMILY_GGUFS=DIR the GGUFs and temper's logits are kept for
//! scripts/check_gguf_families_llama_cpp.py, which runs them through llama.cpp (0.3.36, CPU,
//! f32 KV cache, no flash attention). It loads all five, and its logits against temper's of the
//! imported folders (max difference over max |logit|, argmax equal at every position):
//! phi3-tiny 6.8e-7, phi3-tiny with LongRoPE past the original context 5.9e-7, gemma-tiny
//! 1.5e-5, gemma2-tiny 4.5e-4, gemma3-tiny 4.8e-4. The Gemma 2 / 3 gap is llama.cpp's
//! arithmetic, not the import (every tensor comes back to 1e-7): a numpy forward of the same
//! GGUFs written from transformers' Gemma 2 / 3 equations agrees with temper to 1.5e-6, and
//! giving it llama.cpp's CPU GELU (an fp16 lookup table, `GGML_GELU_FP16` in ggml-cpu/vec.h)
//! brings it to 1.5e-4 / 2e-4 of llama.cpp; Gemma 2 / 3's post-norms rescale the small MLP and
//! attention outputs to unit size, which makes such rounding visible where Gemma's is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;
use temper_core::CpuBackend;
use temper_gguf::reader::Value;
use temper_gguf::writer::{write_gguf, OutTensor};
use temper_gguf::{import, GgmlType, GgufFile, OutDtype};
use temper_model::init::{shape, Shape};
use temper_model::{Model, TokenBatch};

/// A small xorshift generator.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The shape's tensors with random values (std ~0.02; norms 0.1 * uniform, so Gemma's
/// 1 + w shift is visible), written as an f32 Hugging Face folder beside the shape's
/// config.json.
fn random_hf_folder(
    s: &Shape,
    dir: &Path,
    edit: &dyn Fn(&mut Json),
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = BTreeMap::new();
    for (name, dims, is_norm) in s.tensors() {
        let n: usize = dims.iter().product();
        let scale = if is_norm { 0.1 } else { 0.035 };
        let v: Vec<f32> = (0..n).map(|_| scale * rng.uniform()).collect();
        out.insert(name, (dims, v));
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = s.config_json();
    edit(&mut cfg);
    cfg["torch_dtype"] = "float32".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let bytes: Vec<Vec<u8>> = out
        .values()
        .map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .zip(&bytes)
        .map(|((name, (dims, _)), b)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    out
}

/// llama.cpp's GGUF name for a transformers tensor of the family (`tensor_mapping.py`), or
/// None for a tensor the converter drops.
fn gguf_name(arch: &str, hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        // GemmaModel / Gemma2Model.filter_tensors: "lm_head is not used in llama.cpp".
        "lm_head.weight" if arch.starts_with("gemma") => return None,
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let gemma23 = arch == "gemma2" || arch == "gemma3";
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma23 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => panic!("no GGUF name for {hf}"),
    };
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// The `<arch>.*` keys each converter's `set_gguf_parameters` writes for the shape's config.
fn arch_metadata(arch: &str, cfg: &Json) -> Vec<(String, Value)> {
    let u = |k: &str| Value::U32(cfg[k].as_u64().unwrap() as u32);
    let f = |k: &str| Value::F32(cfg[k].as_f64().unwrap() as f32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        (key("context_length"), u("max_position_embeddings")),
        (key("embedding_length"), u("hidden_size")),
        (key("feed_forward_length"), u("intermediate_size")),
        (key("block_count"), u("num_hidden_layers")),
        (key("attention.head_count"), u("num_attention_heads")),
        (key("attention.head_count_kv"), u("num_key_value_heads")),
        (key("attention.layer_norm_rms_epsilon"), f("rms_norm_eps")),
    ];
    match arch {
        "phi3" => {
            // Phi3MiniModel.set_gguf_parameters: rope dims = int(rot_pct * n_embd) // n_head;
            // sliding_window None is written as 0.
            let rope_dims =
                cfg["hidden_size"].as_u64().unwrap() / cfg["num_attention_heads"].as_u64().unwrap();
            m.push((
                key("rope.scaling.original_context_length"),
                u("original_max_position_embeddings"),
            ));
            m.push((key("rope.dimension_count"), Value::U32(rope_dims as u32)));
            m.push((key("rope.freq_base"), f("rope_theta")));
            let w = cfg["sliding_window"].as_u64().unwrap_or(0);
            m.push((key("attention.sliding_window"), Value::U32(w as u32)));
            // Phi3MiniModel.generate_extra_tensors: with long factors, LongRoPE's attention
            // factor sqrt(1 + ln(scale) / ln(original context)).
            if cfg["rope_scaling"]["long_factor"].is_array() {
                let scale = cfg["max_position_embeddings"].as_f64().unwrap()
                    / cfg["original_max_position_embeddings"].as_f64().unwrap();
                let orig = cfg["original_max_position_embeddings"].as_f64().unwrap();
                let attn = (1.0 + scale.ln() / orig.ln()).sqrt();
                m.push((key("rope.scaling.attn_factor"), Value::F32(attn as f32)));
            }
        }
        _ => {
            // GemmaModel / Gemma2Model / Gemma3Model: head_dim as key and value length.
            m.push((key("attention.key_length"), u("head_dim")));
            m.push((key("attention.value_length"), u("head_dim")));
        }
    }
    if arch == "gemma2" {
        m.push((key("attn_logit_softcapping"), f("attn_logit_softcapping")));
        m.push((key("final_logit_softcapping"), f("final_logit_softcapping")));
        m.push((key("attention.sliding_window"), u("sliding_window")));
    }
    if arch == "gemma3" {
        // TextModel.set_gguf_parameters: rope_theta, and rope_local_base_freq as
        // rope.freq_base_swa; Gemma3Model: the window unless sliding_window_pattern is 1, the
        // final soft-cap only when set.
        m.push((key("rope.freq_base"), f("rope_theta")));
        m.push((key("rope.freq_base_swa"), f("rope_local_base_freq")));
        if cfg["sliding_window_pattern"].as_u64() != Some(1) {
            m.push((key("attention.sliding_window"), u("sliding_window")));
        }
        if cfg["final_logit_softcapping"].is_number() {
            m.push((key("final_logit_softcapping"), f("final_logit_softcapping")));
        }
    }
    m
}

/// A SentencePiece vocabulary of exactly `n` tokens, as llama.cpp needs one row of
/// token_embd per token: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, "▁t<i>" pieces, and
/// last `<|endoftext|>` (llama.cpp looks it up in any model whose name holds "phi3").
fn spm_vocab(n: usize) -> Vec<(String, Value)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut i = 0;
    while tokens.len() < n - 1 {
        tokens.push(format!("\u{2581}t{i}"));
        i += 1;
    }
    tokens.push("<|endoftext|>".into());
    let types: Vec<Value> = (0..n)
        .map(|id| match id {
            0 => Value::I32(2),
            1 | 2 => Value::I32(3),
            3..=258 => Value::I32(6),
            _ if id == n - 1 => Value::I32(3),
            _ => Value::I32(1),
        })
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
    ]
}

/// The GGUF for `hf` as llama.cpp's converter writes it, with a SentencePiece vocabulary the
/// size of the embedding.
fn write_converter_layout(
    arch: &str,
    cfg: &Json,
    hf: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    path: &Path,
) {
    let mut meta = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (
            "general.name".to_string(),
            Value::String(format!("{arch}-tiny")),
        ),
    ];
    meta.extend(arch_metadata(arch, cfg));
    meta.extend(spm_vocab(cfg["vocab_size"].as_u64().unwrap() as usize));
    let mut tensors = Vec::new();
    let mut data: Vec<Vec<f32>> = Vec::new();
    for (name, (dims, v)) in hf {
        let Some(g) = gguf_name(arch, name) else {
            continue;
        };
        let mut v = v.clone();
        // GemmaModel.modify_tensors / Gemma3Model.norm_shift: `norm.weight` tensors + 1.
        if arch.starts_with("gemma") && name.ends_with("norm.weight") {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        tensors.push(OutTensor {
            name: g,
            dims: dims.iter().rev().map(|&d| d as u64).collect(),
            ty: GgmlType::F32,
        });
        data.push(v);
    }
    // Phi3MiniModel.generate_extra_tensors: the LongRoPE factors as f32 tensors.
    for (which, key) in [("long", "long_factor"), ("short", "short_factor")] {
        if let Some(f) = cfg["rope_scaling"][key].as_array() {
            let v: Vec<f32> = f.iter().map(|x| x.as_f64().unwrap() as f32).collect();
            tensors.push(OutTensor {
                name: format!("rope_factors_{which}.weight"),
                dims: vec![v.len() as u64],
                ty: GgmlType::F32,
            });
            data.push(v);
        }
    }
    write_gguf(path, &meta, &tensors, |i, buf| {
        for x in &data[i] {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        Ok(())
    })
    .unwrap();
}

fn logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let model = Model::load(Arc::new(CpuBackend::new()), dir).unwrap();
    let n = ids.len();
    let positions: Vec<u32> = (0..n as u32).collect(); // (n)
    let targets = vec![-100i32; n]; // (n)
    let batch = TokenBatch {
        ids,
        positions: &positions,
        cu_seqlens: &[0, n as u32],
        targets: &targets,
    };
    model.logits(None, &batch).unwrap() // (n, vocab)
}

fn round_trip(shape_name: &str, arch: &str) {
    round_trip_with(shape_name, arch, |_| {});
}

/// `edit` changes the shape's config.json before the folder is written.
fn round_trip_with(shape_name: &str, arch: &str, edit: impl Fn(&mut Json)) {
    let s = shape(shape_name).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    let hf = random_hf_folder(s, &src, &edit);
    let mut cfg = s.config_json();
    edit(&mut cfg);
    let gguf = tmp.path().join("m.gguf");
    write_converter_layout(arch, &cfg, &hf, &gguf);
    let out = tmp.path().join("imported");
    import(&GgufFile::open(&gguf).unwrap(), &out, OutDtype::F32).unwrap();

    // Every tensor back (Gemma's norms within f32 rounding of the +1 / -1).
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let want_names: Vec<String> = hf
        .keys()
        .filter(|n| !(arch.starts_with("gemma") && n.as_str() == "lm_head.weight"))
        .cloned()
        .collect();
    assert_eq!(names, want_names, "{shape_name}");
    for name in &names {
        let t = st.tensor(name).unwrap();
        let (dims, want) = &hf[name];
        assert_eq!(t.shape(), dims.as_slice(), "{shape_name} {name}");
        let got: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let worst = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-7, "{shape_name} {name}: off by {worst}");
    }

    // The config keys the family's config class reads.
    let got: Json =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let mut keys = vec![
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
        "sliding_window",
    ];
    match arch {
        "phi3" => keys.push("original_max_position_embeddings"),
        "gemma" => keys.extend(["head_dim", "hidden_act"]),
        _ => keys.extend(["head_dim", "hidden_activation"]),
    }
    if arch == "gemma2" || arch == "gemma3" {
        keys.extend([
            "query_pre_attn_scalar",
            "layer_types",
            "final_logit_softcapping",
            "attn_logit_softcapping",
        ]);
    }
    if arch == "gemma3" {
        keys.extend(["rope_local_base_freq", "sliding_window_pattern"]);
    }
    if arch == "phi3" && cfg["rope_scaling"].is_object() {
        for k in ["type", "short_factor", "long_factor"] {
            let (a, b) = (&got["rope_scaling"][k], &cfg["rope_scaling"][k]);
            match (a.as_array(), b.as_array()) {
                (Some(a), Some(b)) => {
                    let close = a.len() == b.len()
                        && a.iter().zip(b).all(|(x, y)| {
                            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-6
                        });
                    assert!(close, "{shape_name}: rope_scaling.{k}");
                }
                _ => assert_eq!(a, b, "{shape_name}: rope_scaling.{k}"),
            }
        }
    }
    for k in keys {
        assert_eq!(got[k], cfg[k], "{shape_name}: config.json `{k}`");
    }
    for k in ["rms_norm_eps", "rope_theta"] {
        let (a, b) = (got[k].as_f64().unwrap(), cfg[k].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "{shape_name}: {k} {a} vs {b}"
        );
    }

    // And the model computes the same (past the original context where LongRoPE is on, so
    // the long factors are used).
    let n = cfg["original_max_position_embeddings"]
        .as_u64()
        .map_or(24, |o| {
            if cfg["rope_scaling"].is_object() {
                o as u32 + 8
            } else {
                24
            }
        });
    let ids: Vec<u32> = (0..n).map(|i| (5 + i * 97) % s.vocab as u32).collect();
    let (want, got) = (logits(&src, &ids), logits(&out, &ids));
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // For a check against llama.cpp itself (scripts/check_gguf_families_llama_cpp.py): the
    // GGUF, the ids and temper's logits of the imported folder.
    if let Some(keep) = std::env::var_os("TEMPER_KEEP_FAMILY_GGUFS") {
        let keep = Path::new(&keep);
        let stem = format!(
            "{shape_name}-{}",
            if cfg["rope_scaling"].is_object() {
                "longrope"
            } else {
                "plain"
            }
        );
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(&gguf, keep.join(format!("{stem}.gguf"))).unwrap();
        let j = serde_json::json!({"ids": ids, "vocab": s.vocab, "logits": got});
        std::fs::write(keep.join(format!("{stem}.json")), j.to_string()).unwrap();
    }
    println!(
        "{shape_name}: {} tensors back, logits rel err {:.2e}",
        names.len(),
        diff / scale
    );
    assert!(diff <= 1e-5 * scale, "{shape_name}: logits off by {diff}");
}

#[test]
fn phi3_gguf_imports_back() {
    round_trip("phi3-tiny", "phi3");
}

/// Phi-3.5-style LongRoPE: short and long factors (16 each for head_dim 32), a context 4x the
/// original; the logits are compared past the original context.
#[test]
fn phi3_longrope_gguf_imports_back() {
    round_trip_with("phi3-tiny", "phi3", |cfg| {
        let short: Vec<f64> = (0..16).map(|i| 1.0 + 0.05 * i as f64).collect();
        let long: Vec<f64> = (0..16).map(|i| 1.0 + 0.5 * i as f64).collect();
        cfg["original_max_position_embeddings"] = 64.into();
        cfg["max_position_embeddings"] = 256.into();
        cfg["rope_scaling"] =
            serde_json::json!({"type": "longrope", "short_factor": short, "long_factor": long});
    });
}

#[test]
fn gemma_gguf_imports_back() {
    round_trip("gemma-tiny", "gemma");
}

#[test]
fn gemma2_gguf_imports_back() {
    round_trip("gemma2-tiny", "gemma2");
}

#[test]
fn gemma3_gguf_imports_back() {
    round_trip("gemma3-tiny", "gemma3");
}
