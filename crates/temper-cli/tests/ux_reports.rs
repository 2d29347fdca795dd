//! During and after training: evaluation during training, the best model, early stopping,
//! checkpoints kept, TensorBoard events, the loss picture, the progress lines and a
//! self-describing output folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, s, temper, text};

fn config(dir: &Path, extra: &str) -> PathBuf {
    let tiny = repo().join("examples/tiny");
    let p = dir.join("train.yaml");
    std::fs::write(
        &p,
        format!(
            "model: {}\ndata: {}\noutput_dir: out\nmax_seq_len: 128\nassistant_only_loss: true\n\
             per_device_train_batch_size: 2\nlearning_rate: 2.0e-3\ndevice: cpu\n\
             dataset_cache_dir: none\neval_split: 0.02\n{extra}",
            s(&tiny.join("model")),
            s(&tiny.join("data/train.jsonl")),
        ),
    )
    .expect("write config");
    p
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn checkpoints(out: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(out)
        .expect("out")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort();
    steps
}

#[test]
fn eval_steps_best_model_save_total_limit_and_the_progress_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        "eval_steps: 2\nload_best_model_at_end: true\nmetric_for_best_model: eval_loss\n\
         save_steps: 2\nsave_total_limit: 1\nlogging_steps: 2\n",
    );
    let o = temper(&["train", s(&cfg), "--max_steps", "6"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let out_dir = dir.path().join("out");
    // Evaluations at steps 2, 4 and 6, logged and shown.
    let evals: Vec<(u64, f64)> = metrics(&out_dir)
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["eval_loss"].as_f64()?)))
        .collect();
    assert_eq!(
        evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [2, 4, 6],
        "{out}"
    );
    assert!(out.contains("eval at step 4: loss"), "{out}");
    // The progress line off a terminal: loss, eval loss, device memory, elapsed, ETA.
    let line = out
        .lines()
        .find(|l| l.starts_with("step 4/6 "))
        .expect("a line at step 4");
    println!("{line}");
    for part in [
        " eval_loss ",
        " | cpu mem ",
        " MiB (peak ",
        " | elapsed ",
        " eta ",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(!out.lines().any(|l| l.starts_with("step 3/6 ")), "{out}");
    // save_total_limit 1: the newest checkpoint and the best one are kept.
    let best = evals
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("best")
        .0;
    let mut want = vec![best, 6];
    want.dedup();
    assert_eq!(checkpoints(&out_dir), want, "{out}");
    // The adapter written is the best step's.
    let adapter = std::fs::read(out_dir.join("adapter_model.safetensors")).expect("adapter");
    let from_best =
        std::fs::read(out_dir.join(format!("checkpoint-{best}/adapter_model.safetensors")))
            .expect("best checkpoint");
    assert_eq!(adapter, from_best);
}

#[test]
fn early_stopping_stops_when_eval_loss_stops_improving() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A learning rate this large makes the eval loss rise after the first steps.
    let cfg = config(
        dir.path(),
        "eval_steps: 1\nearly_stopping_patience: 1\nwarmup_steps: 0\n",
    );
    let o = temper(&[
        "train",
        s(&cfg),
        "--max_steps",
        "40",
        "--learning_rate",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("early stopping at step"), "{}", text(&o));
    let steps = metrics(&dir.path().join("out"))
        .iter()
        .filter(|v| v["loss"].is_number())
        .count();
    assert!(steps < 40, "{}", text(&o));
    // The keys are checked together.
    let o = temper(&["train", s(&cfg), "--eval_steps", "0"]);
    assert!(!o.status.success());
    let cfg = config(dir.path(), "load_best_model_at_end: true\n");
    let o = temper(&["train", s(&cfg)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("set eval_steps"), "{}", text(&o));
}

/// TensorBoard's own reader over the event files: tensorboard==2.21.0 from PyPI, installed
/// once into target/artifacts. None (after saying why) only when the registry is unreachable.
fn tensorboard_python() -> Option<PathBuf> {
    let cache = match std::env::var_os("TEMPER_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => repo().join("target/artifacts"),
    };
    let dir = cache.join("tensorboard-2.21.0");
    if dir.join("tensorboard").is_dir() {
        return Some(dir);
    }
    let partial = cache.join(format!("tensorboard.partial-{}", std::process::id()));
    let o = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&partial)
        .arg("tensorboard==2.21.0")
        .output()
        .expect("python3 -m pip");
    if !o.status.success() {
        let log = text(&o);
        let offline = [
            "NewConnectionError",
            "Max retries exceeded",
            "Temporary failure in name resolution",
            "Network is unreachable",
            "ProxyError",
            "No matching distribution found",
        ];
        if offline.iter().any(|m| log.contains(m)) {
            eprintln!("SKIPPED (TensorBoard reader): the package registry is unreachable:\n{log}");
            return None;
        }
        panic!("pip install tensorboard failed:\n{log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).expect("rename");
    Some(dir)
}

#[test]
fn tensorboard_events_loss_picture_and_a_self_describing_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "eval_steps: 2\nreport_to: tensorboard\n");
    let o = temper(&["train", s(&cfg), "--max_steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = dir.path().join("out");

    // loss.svg, and `temper plot` redraws it.
    let svg = std::fs::read_to_string(out.join("loss.svg")).expect("loss.svg");
    for label in ["train loss", "eval loss", "learning rate", "step"] {
        assert!(svg.contains(label), "{label} missing from loss.svg");
    }
    std::fs::remove_file(out.join("loss.svg")).expect("rm");
    let o = temper(&["plot", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("loss.svg").exists());

    // training_config.yaml runs again as it is; tokenizer files and the template are there.
    let yaml = std::fs::read_to_string(out.join("training_config.yaml")).expect("yaml");
    assert!(yaml.contains("eval_steps: 2"), "{yaml}");
    assert!(yaml.contains("learning_rate: 0.002"), "{yaml}");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let o = temper(&["plan", s(&out.join("training_config.yaml"))]);
    assert!(o.status.success(), "{}", text(&o));
    let card = std::fs::read_to_string(out.join("README.md")).expect("card");
    assert!(card.contains("library_name: peft"), "{card}");
    assert!(card.contains("AutoPeftModelForCausalLM"), "{card}");
    assert!(card.contains("train loss:"), "{card}");
    // base_model_name_or_path: absolute, so PEFT finds the base from anywhere.
    let adapter: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter_config.json")).expect("adapter_config"),
    )
    .expect("json");
    let base = adapter["base_model_name_or_path"].as_str().expect("base");
    assert!(
        Path::new(base).is_absolute() && Path::new(base).join("config.json").exists(),
        "{base}"
    );

    // The TensorBoard events, read back by TensorBoard itself.
    let runs = out.join("runs");
    let events: Vec<_> = std::fs::read_dir(&runs).expect("runs").collect();
    assert_eq!(events.len(), 1);
    let Some(tb) = tensorboard_python() else {
        return;
    };
    let o = Command::new("python3")
        .env("PYTHONPATH", &tb)
        .arg(repo().join("scripts/check_tensorboard.py"))
        .arg(&runs)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    println!("{report}");
    let train_loss = report["train/loss"].as_array().expect("train/loss");
    assert_eq!(train_loss.len(), 4);
    let m = metrics(&out);
    let first = m[0]["loss"].as_f64().expect("loss");
    let tb_first = train_loss[0][1].as_f64().expect("value");
    assert!(
        (first - tb_first).abs() <= 1e-5 * first.abs(),
        "{first} vs {tb_first}"
    );
    assert_eq!(report["eval/loss"].as_array().expect("eval").len(), 2);
    for tag in [
        "train/learning_rate",
        "train/grad_norm",
        "train/tokens_per_second",
        "memory/device_peak_mib",
    ] {
        assert_eq!(report[tag].as_array().map(Vec::len), Some(4), "{tag}");
    }
}
