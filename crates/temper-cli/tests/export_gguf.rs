//! `temper export-gguf` end to end: a model with its adapter merged, read back by temper's
//! GGUF reader and importer, gives the merged model's tensors; the LoRA-only file holds the
//! adapter as llama.cpp lays it out.

use std::collections::BTreeMap;
mod common;

use std::path::Path;
use std::process::Output;

use common::{repo, s, temper_with};

use temper_gguf::{unpermute_rows, GgufFile};

fn temper(args: &[&str], cache: &Path) -> Output {
    temper_with(args, &[("TEMPER_CACHE_DIR", cache)])
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "temper failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every tensor of a folder's model.safetensors, in f32.
fn tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = match v.dtype() {
                safetensors::Dtype::F32 => temper_core::DType::F32,
                safetensors::Dtype::BF16 => temper_core::DType::BF16,
                _ => temper_core::DType::F16,
            };
            (n, temper_core::dtype::decode_le(v.data(), d))
        })
        .collect()
}

#[test]
fn an_exported_model_imports_back_to_the_merged_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny/model");
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let merged = tmp.path().join("merged");
    ok(temper(
        &[
            "merge",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&merged),
            "--dtype",
            "float32",
        ],
        tmp.path(),
    ));
    let gguf = tmp.path().join("tiny.gguf");
    ok(temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&gguf),
            "--type",
            "f32",
        ],
        tmp.path(),
    ));
    let f = GgufFile::open(&gguf).expect("temper reads its GGUF");
    assert_eq!(f.str("general.architecture").expect("arch"), "llama");
    assert_eq!(f.str("general.name").expect("name"), "model");
    assert_eq!(f.str("tokenizer.ggml.pre").expect("pre"), "smollm");
    assert_eq!(
        f.opt_u64("tokenizer.ggml.eos_token_id").expect("eos"),
        Some(2)
    );
    assert!(f
        .str("tokenizer.chat_template")
        .expect("template")
        .contains("<|im_start|>"));

    // Imported back, every tensor is the merged one exactly (the q/k permutation undone).
    let back = tmp.path().join("back");
    ok(temper(
        &[
            "import-gguf",
            s(&gguf),
            "--out",
            s(&back),
            "--dtype",
            "float32",
        ],
        tmp.path(),
    ));
    let (want, got) = (tensors(&merged), tensors(&back));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        assert!(w == &got[name], "{name} differs after the round trip");
    }
    // The tokenizer rebuilt from the GGUF encodes as the original (text without digits: the
    // importer, like transformers, does not rebuild SmolLM's digit split).
    let a = temper_data::Tokenizer::from_dir(&tiny).expect("tokenizer");
    let b = temper_data::Tokenizer::from_dir(&back).expect("tokenizer");
    for t in [
        "What colour is a cherry?",
        "<|im_start|>user\nHello there<|im_end|>\n",
    ] {
        assert_eq!(
            a.encode(t, true).expect("encode"),
            b.encode(t, true).expect("encode"),
            "{t}"
        );
    }

    // q8_0: the same model within the 8-bit rounding.
    let q8 = tmp.path().join("tiny-q8_0.gguf");
    ok(temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&q8),
            "--type",
            "q8_0",
        ],
        tmp.path(),
    ));
    let fq = GgufFile::open(&q8).expect("read q8_0");
    let t = fq.tensor("blk.1.ffn_down.weight").expect("tensor");
    assert_eq!(t.ty, temper_gguf::GgmlType::Q8_0);
    let got = fq.tensor_f32(t).expect("dequantise");
    let w = &want["model.layers.1.mlp.down_proj.weight"];
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got
        .iter()
        .zip(w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "q8_0 blk.1.ffn_down: max error {:.2e} of max |w| {scale:.2e}",
        err
    );
    assert!(err <= scale / 127.0, "{err}");

    // An existing file is not replaced without --force.
    let o = temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--out",
            s(&q8),
            "--type",
            "q8_0",
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
}

#[test]
fn a_lora_only_export_holds_the_adapter_as_llama_cpp_reads_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny/model");
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let out = tmp.path().join("lora.gguf");
    ok(temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--type",
            "f32",
            "--lora-only",
        ],
        tmp.path(),
    ));
    let f = GgufFile::open(&out).expect("read");
    assert_eq!(f.str("general.type").expect("type"), "adapter");
    assert_eq!(f.str("adapter.type").expect("adapter.type"), "lora");
    assert_eq!(f.opt_f64("adapter.lora.alpha").expect("alpha"), Some(8.0));
    assert_eq!(f.tensors.len(), 16); // 4 layers x (q, v) x (A, B)
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).expect("adapter");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let read = |k: &str| {
        let v = st.tensor(k).expect("tensor");
        temper_core::dtype::decode_le(v.data(), temper_core::DType::F32)
    };
    let key = |w: &str| format!("base_model.model.model.layers.2.self_attn.q_proj.lora_{w}.weight");
    let a = f.tensor("blk.2.attn_q.weight.lora_a").expect("lora_a");
    assert_eq!(a.dims, [128, 4]);
    assert_eq!(f.tensor_f32(a).expect("a"), read(&key("A")));
    let b = f.tensor("blk.2.attn_q.weight.lora_b").expect("lora_b");
    assert_eq!(b.dims, [4, 128]);
    // B's rows are in llama.cpp's rotary order, as the base's q_proj rows are.
    let b_rows = f.tensor_f32(b).expect("b");
    assert_eq!(unpermute_rows(&b_rows, 128, 4, 4), read(&key("B")));
}

#[test]
fn quantised_types_follow_llama_cpp_and_adapters_stay_unquantised() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny/model");
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let out = tmp.path().join("tiny-q4_k_m.gguf");
    let o = ok(temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--type",
            "q4_k_m",
        ],
        tmp.path(),
    ));
    assert!(String::from_utf8_lossy(&o.stdout).contains("in q4_k_m"));
    let f = GgufFile::open(&out).expect("read");
    assert_eq!(f.opt_u64("general.file_type").expect("file_type"), Some(15));
    assert_eq!(
        f.opt_u64("general.quantization_version").expect("version"),
        Some(2)
    );
    // Rows of 128 are not whole 256-value super-blocks: Q4_K falls back to Q5_0 as in
    // llama.cpp, and the tied embedding (Q6_K) to Q8_0.
    let ty = |n: &str| f.tensor(n).expect("tensor").ty;
    assert_eq!(ty("blk.0.attn_q.weight"), temper_gguf::GgmlType::Q5_0);
    assert_eq!(ty("token_embd.weight"), temper_gguf::GgmlType::Q8_0);
    assert_eq!(ty("blk.0.attn_norm.weight"), temper_gguf::GgmlType::F32);

    let o = temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&tmp.path().join("lora.gguf")),
            "--type",
            "q4_k_m",
            "--lora-only",
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("f32, f16, bf16 or q8_0"));
    let o = temper(
        &[
            "export-gguf",
            "--model",
            s(&tiny),
            "--out",
            s(&tmp.path().join("x.gguf")),
            "--type",
            "q3_k",
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("q4_k_m"));
}
