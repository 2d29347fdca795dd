//! `init_adapter`: training starts from an adapter PEFT trained (two AdamW steps on the
//! embedded tiny model, scripts/make_merge_fixtures.py), and its first step's loss is the
//! loss PEFT computed for the next batch with that adapter.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{repo, s, temper, text};

fn fixture() -> serde_json::Value {
    let path = repo().join("tests/fixtures/merge/init_adapter.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

/// The next batch of the fixture as a JSONL file of text rows.
fn next_batch(dir: &Path) -> PathBuf {
    let rows: Vec<String> = fixture()["next_texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    let path = dir.join("next.jsonl");
    std::fs::write(&path, rows.join("\n") + "\n").expect("write rows");
    path
}

/// `temper train` on the next batch from the fixture's adapter, one step; `extra` adds keys.
fn train_one_step(dir: &Path, extra: &[&str]) -> Output {
    let data = next_batch(dir);
    let model = repo().join("examples/tiny/model");
    let adapter = repo().join("tests/fixtures/merge/init_adapter");
    let yaml = format!(
        "model: {}\ndata: {}\ninit_adapter: {}\noutput_dir: {}\nmax_steps: 1\n\
         per_device_train_batch_size: 8\nmax_seq_len: 256\ndataset_cache_dir: none\n",
        model.display(),
        data.display(),
        adapter.display(),
        dir.join("run").display()
    );
    let cfg = dir.join("train.yaml");
    std::fs::write(&cfg, yaml).expect("write config");
    let mut args = vec!["train", s(&cfg), "--device", "cpu"];
    args.extend_from_slice(extra);
    temper(&args)
}

#[test]
fn training_from_a_peft_adapter_continues_from_its_loss() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = train_one_step(tmp.path(), &[]);
    assert!(o.status.success(), "train failed:\n{}", text(&o));
    let log = text(&o);
    assert!(
        log.contains("lora_r 4")
            && log.contains("lora_alpha 8")
            && log.contains("(from the adapter)"),
        "{log}"
    );
    let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).expect("metrics");
    let first: serde_json::Value =
        serde_json::from_str(metrics.lines().next().expect("a step")).expect("json");
    let loss = first["loss"].as_f64().expect("loss");
    let want = fixture()["next_loss"].as_f64().expect("next_loss");
    let rel = (loss - want).abs() / want.abs();
    println!("first step from PEFT's adapter: loss {loss:.7} vs PEFT {want:.7} (rel {rel:.2e})");
    assert!(rel <= 1e-5, "{loss} vs {want}");

    // The adapter written after the step keeps the starting adapter's shape.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("run/adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
}

#[test]
fn lora_keys_that_disagree_with_the_adapter_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = train_one_step(tmp.path(), &["--lora_r", "8"]);
    assert!(
        !o.status.success(),
        "a rank-8 run from a rank-4 adapter started"
    );
    let log = text(&o);
    assert!(
        log.contains("lora_r") && log.contains("init_adapter"),
        "{log}"
    );
    // Keys that agree are fine.
    let o = train_one_step(
        tmp.path(),
        &["--lora_r", "4", "--target_modules", "[v_proj, q_proj]"],
    );
    assert!(o.status.success(), "train failed:\n{}", text(&o));
}
