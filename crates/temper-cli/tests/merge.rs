//! `temper merge` end to end: the merged folder scores what the base with its adapter scores
//! (`temper eval`), from a Hugging Face folder, from a quantised base and from a GGUF file.

mod common;

use std::path::Path;
use std::process::Output;

use common::{repo, s, temper_with, text};

use temper_core::{Backend, CpuBackend};
use temper_model::{LoraConfig, LoraParams, ModelConfig, Target};

fn temper(args: &[&str], cache: &Path) -> Output {
    temper_with(args, &[("TEMPER_CACHE_DIR", cache)])
}

/// Each row's loss from `temper eval --json`.
fn eval(model: &Path, adapter: Option<&Path>, data: &Path, cache: &Path) -> Vec<f64> {
    let mut args = vec!["eval", "--model", s(model), "--data", s(data), "--json"];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    args.extend(["--device", "cpu"]);
    let o = temper(&args, cache);
    assert!(o.status.success(), "eval failed:\n{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval json");
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["loss"].as_f64().expect("loss"))
        .collect()
}

fn worst_rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs() / w.abs()))
}

#[test]
fn a_merged_folder_scores_what_the_base_with_its_adapter_scores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny/model");
    // An adapter trained by PEFT (scripts/make_merge_fixtures.py).
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let data = repo().join("examples/tiny/data/eval.jsonl");
    let out = tmp.path().join("merged");
    let o = temper(
        &[
            "merge",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--dtype",
            "float32",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "merge failed:\n{}", text(&o));
    assert!(text(&o).contains("merged 8 LoRA weights"), "{}", text(&o));
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let merged = eval(&out, None, &data, tmp.path());
    let with_adapter = eval(&tiny, Some(&adapter), &data, tmp.path());
    let base = eval(&tiny, None, &data, tmp.path());
    let err = worst_rel(&merged, &with_adapter);
    println!(
        "{} rows: merged vs base + adapter worst rel {err:.2e}; the adapter moves the mean loss \
         by {:.2e}",
        merged.len(),
        (with_adapter.iter().sum::<f64>() - base.iter().sum::<f64>()).abs() / base.len() as f64
    );
    assert!(err <= 1e-5, "{merged:?} vs {with_adapter:?}");
    assert!(
        worst_rel(&base, &with_adapter) > 1e-3,
        "the adapter changes nothing"
    );

    // A second merge into the same folder is refused without --force.
    let again = [
        "merge",
        "--model",
        s(&tiny),
        "--adapter",
        s(&adapter),
        "--out",
        s(&out),
    ];
    let o = temper(&again, tmp.path());
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let mut forced = again.to_vec();
    forced.push("--force");
    let o = temper(&forced, tmp.path());
    assert!(o.status.success(), "forced merge failed:\n{}", text(&o));
    // The base is bfloat16, so is the merge by default.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(cfg["dtype"], "bfloat16");
    assert_eq!(cfg["tie_word_embeddings"], true);
}

#[test]
fn merging_into_a_4bit_base_warns_that_it_is_lossy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tiny = repo().join("examples/tiny/model");
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let out = tmp.path().join("merged");
    let o = temper(
        &[
            "merge",
            "--model",
            s(&tiny),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--load-in-4bit",
            "nf4",
            "--double-quant",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "merge failed:\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning") && err.contains("lossy"), "{err}");
    assert!(err.contains("nf4 with double quantisation"), "{err}");
    assert!(err.contains("max |delta| / max |W|"), "{err}");
}

/// A random adapter on every target for the model in `model`, non-zero A and B.
fn random_adapter(model: &Path, dir: &Path) {
    let be = CpuBackend::new();
    let cfg = ModelConfig::from_dir(model).expect("config");
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut p = LoraParams::init(&be, &cfg, &lora, 3).expect("init");
    for prm in p.params.iter_mut().filter(|prm| prm.key.contains("lora_B")) {
        let n = prm.shape[0] * prm.shape[1];
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3)
            .collect();
        prm.value = be.upload(&v).expect("upload");
    }
    temper_model::adapter::save(&be, &p, "tiny_llama.gguf", dir).expect("save");
}

#[test]
fn a_gguf_base_merges_through_its_import() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = repo().join("tests/fixtures/gguf/tiny_llama.gguf");
    // The import temper makes of the GGUF file, to build an adapter of the right shape.
    let imported = tmp.path().join("imported");
    let o = temper(
        &["import-gguf", s(&gguf), "--out", s(&imported)],
        tmp.path(),
    );
    assert!(o.status.success(), "import failed:\n{}", text(&o));
    let adapter = tmp.path().join("adapter");
    random_adapter(&imported, &adapter);
    let out = tmp.path().join("merged");
    let o = temper(
        &[
            "merge",
            "--model",
            s(&gguf),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
            "--dtype",
            "float32",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "merge failed:\n{}", text(&o));
    assert!(out.join("tokenizer.json").is_file());
    let data = tmp.path().join("rows.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n\
         {\"text\": \"What is 17 plus 25? 17 plus 25 is 42.\"}\n",
    )
    .expect("write rows");
    let merged = eval(&out, None, &data, tmp.path());
    let with_adapter = eval(&gguf, Some(&adapter), &data, tmp.path());
    let err = worst_rel(&merged, &with_adapter);
    println!("gguf: merged vs GGUF + adapter worst rel {err:.2e}");
    assert!(err <= 1e-5, "{merged:?} vs {with_adapter:?}");
}
