//! eval, plan and train agree: `temper eval CONFIG.yaml` scores rows as training reads them,
//! and `temper plan` prints the prediction `temper train` makes.

mod common;

use std::path::{Path, PathBuf};

use common::{repo, s, temper, text};

fn config(dir: &Path, extra: &str) -> PathBuf {
    let tiny = repo().join("examples/tiny");
    let p = dir.join("train.yaml");
    std::fs::write(
        &p,
        format!(
            "model: {}\ndata: {}\noutput_dir: {}\nmax_seq_len: 128\nassistant_only_loss: true\n\
             per_device_train_batch_size: 2\ndevice: cpu\ndataset_cache_dir: none\n{extra}",
            s(&tiny.join("model")),
            s(&tiny.join("data/train.jsonl")),
            s(&dir.join("out"))
        ),
    )
    .expect("write config");
    p
}

#[test]
fn eval_with_the_training_config_scores_what_training_scored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "eval_split: 0.02\n");
    let o = temper(&["train", s(&cfg), "--max_steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).expect("metrics");
    let trained_eval = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["eval_loss"].as_f64())
        .next_back()
        .expect("an eval row");
    // The adapter in output_dir, the eval_split rows, the same masks and max_seq_len.
    let o = temper(&["eval", s(&cfg), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("(the config's output_dir)"),
        "{}",
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let mean = v["mean_loss"].as_f64().expect("mean");
    println!("train's eval {trained_eval}, temper eval {mean}");
    assert!(
        (mean - trained_eval).abs() <= 1e-4 * trained_eval.abs(),
        "temper eval {mean} != training's eval {trained_eval}"
    );
    // --config, --adapter none and --data: alpaca rows read with the config's dataset_format.
    let alpaca = dir.path().join("alpaca.jsonl");
    std::fs::write(
        &alpaca,
        "{\"instruction\": \"What is 2 plus 3?\", \"input\": \"\", \"output\": \"2 plus 3 is 5.\"}\n",
    )
    .expect("write");
    let o = temper(&[
        "eval",
        "--config",
        s(&cfg),
        "--adapter",
        "none",
        "--data",
        s(&alpaca),
        "--dataset_format",
        "alpaca",
    ]);
    // --dataset_format is a config key, not an eval flag: the config says it.
    assert!(!o.status.success());
    let cfg2 = config(dir.path(), "dataset_format: alpaca\n");
    let o = temper(&[
        "eval",
        "--config",
        s(&cfg2),
        "--adapter",
        "none",
        "--data",
        s(&alpaca),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("over 1 rows"), "{}", text(&o));
}

/// The `memory: predicted peak ...` line.
fn memory_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("memory: predicted peak"))
        .unwrap_or_else(|| panic!("no memory line in:\n{out}"))
        .to_string()
}

/// The MiB figure after `label` in `line` ("predicted peak 24.8 MiB", "backend peak 24.7 MiB").
fn mib_after(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no {label} in {line}"))
        + label.len()..];
    let number = rest.split_whitespace().next().expect("a number");
    let unit = rest.split_whitespace().nth(1).expect("a unit");
    let v: f64 = number.parse().expect("a number");
    match unit {
        "MiB" => v,
        "GiB" => v * 1024.0,
        other => panic!("unit {other} in {line}"),
    }
}

#[test]
fn plan_prints_the_prediction_train_makes_on_the_same_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The embedded default's settings (4 rows of 256 tokens), with and without
    // checkpointing; enough steps that some micro-batch is packed nearly full.
    for (i, ckpt) in ["true", "false"].iter().enumerate() {
        let sub = dir.path().join(format!("run{i}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let cfg = config(&sub, "");
        let args = [
            "--max_seq_len",
            "256",
            "--per_device_train_batch_size",
            "4",
            "--gradient_checkpointing",
            ckpt,
        ];
        let plan = temper(&[&["plan", s(&cfg)][..], &args].concat());
        assert!(plan.status.success(), "{}", text(&plan));
        assert!(text(&plan).contains("float32"), "{}", text(&plan));
        let train = temper(&[&["train", s(&cfg), "--max_steps", "12"][..], &args].concat());
        assert!(train.status.success(), "{}", text(&train));
        let line = memory_line(&text(&train));
        assert_eq!(memory_line(&text(&plan)), line);
        // The prediction is for a full micro-batch; the CPU backend counts every buffer.
        let predicted = mib_after(&line, "predicted peak ");
        let peak_line = text(&train)
            .lines()
            .find(|l| l.starts_with("peak memory:"))
            .expect("a peak line")
            .to_string();
        let measured = mib_after(&peak_line, "cpu backend peak ");
        println!(
            "gradient_checkpointing {ckpt}: predicted {predicted} MiB, measured {measured} MiB"
        );
        assert!(
            predicted >= measured && predicted <= 1.10 * measured,
            "gradient_checkpointing {ckpt}: predicted {predicted} MiB, measured {measured} MiB"
        );
    }
}
