//! The `temper` binary end to end on the embedded default (examples/tiny).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(args)
        .output()
        .expect("temper runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn train_writes_a_peft_adapter_that_eval_loads() {
    let out = tempfile::tempdir().expect("tempdir");
    let cfg = repo().join("examples/tiny/train.yaml");
    let o = temper(&[
        "train",
        cfg.to_str().expect("utf8"),
        "--max_steps",
        "12",
        "--save_steps",
        "6",
        "--output_dir",
        out.path().to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "train failed:\n{}", text(&o));

    // PEFT's adapter_config.json fields.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 16);
    assert_eq!(cfg["lora_alpha"], 32.0);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["use_dora"], false);
    assert_eq!(cfg["target_modules"].as_array().expect("list").len(), 7);
    assert!(cfg["base_model_name_or_path"].as_str().is_some());

    // PEFT's tensor names: 4 layers x 7 targets x (A, B).
    let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    assert_eq!(st.names().len(), 4 * 7 * 2);
    let a = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .expect("q_proj A");
    assert_eq!(a.shape(), &[16, 128]);
    let b = st
        .tensor("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight")
        .expect("down_proj B");
    assert_eq!(b.shape(), &[128, 16]);

    // Checkpoints and metrics.
    assert!(out.path().join("checkpoint-6/trainer_state.json").exists());
    assert!(out
        .path()
        .join("checkpoint-12/optimizer.safetensors")
        .exists());
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 12);

    // eval with and without the adapter: the tuned model fits the training data better.
    let data = repo().join("examples/tiny/data/train.jsonl");
    let model = repo().join("examples/tiny/model");
    let eval = |adapter: Option<&Path>| -> serde_json::Value {
        let mut args = vec![
            "eval",
            "--model",
            model.to_str().expect("utf8"),
            "--data",
            data.to_str().expect("utf8"),
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().expect("utf8")]);
        }
        let o = temper(&args);
        assert!(o.status.success(), "eval failed:\n{}", text(&o));
        serde_json::from_slice(&o.stdout).expect("eval --json prints JSON")
    };
    let base = eval(None);
    let tuned = eval(Some(out.path()));
    let (lb, lt) = (
        base["mean_loss"].as_f64().expect("mean"),
        tuned["mean_loss"].as_f64().expect("mean"),
    );
    println!("eval on train data: base {lb:.4}, tuned {lt:.4}");
    assert!(lt < lb, "the adapter did not lower the loss: {lb} -> {lt}");
    let rows = tuned["rows"].as_array().expect("rows");
    assert_eq!(
        rows.len(),
        std::fs::read_to_string(&data)
            .expect("data")
            .lines()
            .count()
    );
    assert!(rows[0]["tokens"].as_u64().expect("tokens") > 0);
}

#[test]
fn resume_continues_from_the_latest_checkpoint() {
    let out = tempfile::tempdir().expect("tempdir");
    let cfg = repo().join("examples/tiny/train.yaml");
    let dir = out.path().to_str().expect("utf8");
    let base = [
        "train",
        cfg.to_str().expect("utf8"),
        "--output_dir",
        dir,
        "--save_steps",
        "2",
    ];
    let o = temper(&[&base[..], &["--max_steps", "4"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let o = temper(&[&base[..], &["--max_steps", "4", "--resume"]].concat());
    // Already finished: resuming the final checkpoint takes no more steps.
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming at step 4"), "{}", text(&o));
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let cfg = repo().join("examples/tiny/train.yaml");
    let o = temper(&["train", cfg.to_str().expect("utf8"), "--lora_rank", "8"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("unknown key `lora_rank`") && t.contains("did you mean `lora_r`"),
        "{t}"
    );
}

#[test]
fn help_documents_every_config_key() {
    let o = temper(&["train", "--help"]);
    assert!(o.status.success());
    let t = text(&o);
    for key in [
        "model",
        "data",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "target_modules",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "gradient_accumulation_steps",
        "max_seq_len",
        "packing",
        "gradient_checkpointing",
        "save_steps",
        "max_grad_norm",
        "seed",
    ] {
        assert!(t.contains(key), "help lacks `{key}`");
    }
}

#[test]
fn device_cuda_without_a_usable_gpu_says_why() {
    let o = temper(&[
        "eval",
        "--model",
        "missing-model",
        "--data",
        "y",
        "--device",
        "cuda",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    match temper_core::cuda::unavailable_reason() {
        // No driver or library here: the error names it and LD_LIBRARY_PATH.
        Some(_) => assert!(
            t.contains("--device cuda") && t.contains("LD_LIBRARY_PATH"),
            "{t}"
        ),
        // A GPU machine: the device starts and the missing model is what fails.
        None => assert!(
            t.contains("device: cuda") && t.contains("missing-model"),
            "{t}"
        ),
    }
}

#[test]
fn a_missing_model_folder_is_named_in_the_error() {
    let o = temper(&[
        "eval",
        "--model",
        "/nonexistent/model",
        "--data",
        "y.jsonl",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/model"), "{}", text(&o));
}

#[test]
fn an_eval_split_is_scored_after_training() {
    let out = tempfile::tempdir().expect("tempdir");
    let cfg = repo().join("examples/tiny/train.yaml");
    let dir = out.path().to_str().expect("utf8");
    let o = temper(&[
        "train",
        cfg.to_str().expect("utf8"),
        "--output_dir",
        dir,
        "--max_steps",
        "4",
        "--eval_split",
        "0.05",
        "--dataset_cache_dir",
        "none",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("eval: loss"), "{}", text(&o));
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().last().expect("a line")).expect("json");
    let loss = last["eval_loss"].as_f64().expect("eval_loss");
    assert!(loss.is_finite() && loss > 0.0, "{last}");
    // 5% of 2,000 rows, all assistant-only: some trained tokens were scored.
    assert!(
        last["eval_tokens"].as_u64().expect("tokens") > 100,
        "{last}"
    );
}

#[test]
fn plan_predicts_memory_and_max_memory_refuses_what_does_not_fit() {
    let cfg = repo().join("examples/tiny/train.yaml");
    let cfg = cfg.to_str().expect("utf8");
    let o = temper(&["plan", cfg, "--max_memory", "1GiB"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("predicted peak"), "{}", text(&o));
    let o = temper(&["plan", cfg, "--max_memory", "1MiB"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("above max_memory 1.0 MiB"),
        "{}",
        text(&o)
    );
    let o = temper(&["plan", cfg, "--max_memory", "lots"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a size"), "{}", text(&o));
    // train checks before it loads anything.
    let o = temper(&[
        "train",
        cfg,
        "--max_memory",
        "1MiB",
        "--output_dir",
        "/nonexistent/never-written",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("above max_memory"), "{}", text(&o));
}
