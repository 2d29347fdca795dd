//! Bad inputs end to end: each must be a clear error that names the file or key and the fix,
//! never a panic, an abort, a hang or a run that exits 0 with a useless result.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo, s, temper_with, text};

fn temper_in(args: &[&str], cache: &Path) -> Output {
    temper_with(args, &[("TEMPER_CACHE_DIR", cache)])
}

/// Runs temper and expects a plain failure (exit 1, not a panic's 101 or a signal) whose
/// output holds every one of `want`; returns the output.
fn fails_with(args: &[&str], want: &[&str]) -> String {
    let cache = tempfile::tempdir().expect("tempdir");
    let o = temper_in(args, cache.path());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "args {args:?}:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
    for w in want {
        assert!(t.contains(w), "expected `{w}` in:\n{t}");
    }
    t
}

fn succeeds(args: &[&str]) -> String {
    let cache = tempfile::tempdir().expect("tempdir");
    let o = temper_in(args, cache.path());
    let t = text(&o);
    assert!(o.status.success(), "args {args:?}:\n{t}");
    t
}

/// A copy of the tiny model in `dir`, with `edit` applied to its config.json.
fn tiny_model(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = repo().join("examples/tiny/model");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    for e in std::fs::read_dir(&src).expect("tiny model") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), model.join(e.file_name())).expect("copy");
    }
    let path = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json")).expect("write");
    model
}

/// A train config over `model` and `data` writing to `out`, with extra YAML lines.
fn train_yaml(dir: &Path, model: &Path, data: &Path, out: &Path, extra: &str) -> PathBuf {
    let path = dir.join("train.yaml");
    std::fs::write(
        &path,
        format!(
            "model: {}\ndata: {}\noutput_dir: {}\ndevice: cpu\ndataset_cache_dir: none\n\
             max_seq_len: 128\nper_device_train_batch_size: 2\nlogging_steps: 1\n{extra}",
            s(model),
            s(data),
            s(out)
        ),
    )
    .expect("write yaml");
    path
}

fn tiny_data() -> PathBuf {
    repo().join("examples/tiny/data/eval.jsonl")
}

// ---- 1. sizes checked before allocation --------------------------------------------------

#[test]
fn huge_num_hidden_layers_is_refused_by_plan_and_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    for layers in [1_000_000_000u64, 1 << 62] {
        let model = tiny_model(dir.path(), |c| c["num_hidden_layers"] = layers.into());
        let want = format!("num_hidden_layers is {layers}, more than temper accepts");
        let yaml = train_yaml(
            dir.path(),
            &model,
            &tiny_data(),
            &dir.path().join("out"),
            "",
        );
        fails_with(&["plan", s(&yaml)], &[&want, "config.json"]);
        fails_with(
            &["eval", "--model", s(&model), "--data", s(&tiny_data())],
            &[&want],
        );
    }
}

#[test]
fn plan_and_bench_refuse_sizes_that_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("examples/tiny/model");
    let yaml = train_yaml(
        dir.path(),
        &model,
        &tiny_data(),
        &dir.path().join("out"),
        "",
    );
    fails_with(
        &[
            "plan",
            s(&yaml),
            "--per_device_train_batch_size",
            "4611686018427387904",
        ],
        &[
            "per_device_train_batch_size",
            "max_seq_len",
            "lower one of them",
        ],
    );
    fails_with(
        &[
            "bench",
            "--model",
            s(&model),
            "--seq",
            "4611686018427387904",
        ],
        &["--seq 4611686018427387904", "max_position_embeddings 512"],
    );
    fails_with(
        &[
            "bench",
            "--model",
            s(&model),
            "--seq",
            "8",
            "--batch",
            "4611686018427387904",
        ],
        &["--batch 4611686018427387904", "tokens"],
    );
}

/// The tiny GGUF fixture with one little-endian value replaced: the `len` bytes that follow
/// the first occurrence of `after` (plus `skip` bytes).
fn patched_gguf(dir: &Path, after: &[u8], skip: usize, value: &[u8]) -> PathBuf {
    let mut bytes =
        std::fs::read(repo().join("tests/fixtures/gguf/tiny_llama.gguf")).expect("gguf");
    let at = bytes
        .windows(after.len())
        .position(|w| w == after)
        .expect("marker in the fixture")
        + after.len()
        + skip;
    bytes[at..at + value.len()].copy_from_slice(value);
    let path = dir.join("bad.gguf");
    std::fs::write(&path, bytes).expect("write");
    path
}

#[test]
fn gguf_block_count_must_match_its_tensors_and_leaves_no_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    // key string, then u32 value type 4 (u32), then the value.
    for count in [1u32 << 31, 0] {
        let gguf = patched_gguf(dir.path(), b"llama.block_count", 4, &count.to_le_bytes());
        let out = dir.path().join(format!("out{count}"));
        fails_with(
            &["import-gguf", s(&gguf), "--out", s(&out)],
            &[
                "llama.block_count",
                &format!("is {count}, but the file holds tensors for"),
            ],
        );
        assert!(!out.join("config.json").exists());
        // Used as --model, it is imported into the cache: refused there too, and nothing is
        // left in the cache to break later runs.
        let cache = dir.path().join("cache");
        let o = temper_in(
            &["eval", "--model", s(&gguf), "--data", s(&tiny_data())],
            &cache,
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("block_count"), "{}", text(&o));
        let left: Vec<_> = walk(&cache)
            .into_iter()
            .filter(|p| p.ends_with("config.json"))
            .collect();
        assert!(left.is_empty(), "the cache keeps a broken import: {left:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn gguf_tensor_dims_past_64_bits_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // token_embd.weight: u32 n_dims (2), then dims[0] (the hidden size), dims[1] (the vocab).
    let name = b"token_embd.weight";
    let gguf = patched_gguf(dir.path(), name, 4 + 8, &(1u64 << 62).to_le_bytes());
    let t = fails_with(
        &["import-gguf", s(&gguf), "--out", s(&dir.path().join("out"))],
        &["token_embd.weight"],
    );
    assert!(t.contains("overflow") || t.contains("2^64"), "{t}");
}

// ---- 2. tensors that do not match the config ----------------------------------------------

#[test]
fn layers_left_unused_by_num_hidden_layers_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), |c| c["num_hidden_layers"] = 2.into());
    fails_with(
        &["eval", "--model", s(&model), "--data", s(&tiny_data())],
        &[
            "num_hidden_layers is 2",
            "model.layers.2.",
            "left unused",
            "set num_hidden_layers to 4",
        ],
    );
    let model = tiny_model(dir.path(), |c| c["num_hidden_layers"] = 0.into());
    fails_with(
        &["eval", "--model", s(&model), "--data", s(&tiny_data())],
        &["num_hidden_layers is 0"],
    );
}

/// Rewrites `model.safetensors` of `dir` with `edit` applied to its (name, f32 values) list.
fn rewrite_tensors(
    path: &Path,
    out: &Path,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = match v.dtype() {
                safetensors::Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|b| f32::from_bits((u32::from(u16::from_le_bytes([b[0], b[1]]))) << 16))
                    .collect(),
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (name, v.shape().to_vec(), values)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, shape, v)| (n, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    std::fs::write(
        out,
        safetensors::tensor::serialize(views, None).expect("serialize"),
    )
    .expect("write");
}

#[test]
fn a_tensor_in_two_shards_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), |_| {});
    let single = model.join("model.safetensors");
    rewrite_tensors(
        &single,
        &model.join("model-00001-of-00002.safetensors"),
        |_| {},
    );
    // The second shard holds a stale copy of the final norm.
    rewrite_tensors(
        &single,
        &model.join("model-00002-of-00002.safetensors"),
        |t| {
            t.retain(|(n, _, _)| n == "model.norm.weight");
            t[0].2.iter_mut().for_each(|x| *x = 7.0);
        },
    );
    std::fs::remove_file(&single).expect("rm");
    let st = std::fs::read(model.join("model-00001-of-00002.safetensors")).expect("read");
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st)
        .expect("st")
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut map = serde_json::Map::new();
    for n in names {
        map.insert(n, "model-00001-of-00002.safetensors".into());
    }
    std::fs::write(
        model.join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": map }).to_string(),
    )
    .expect("index");
    // The index names shard 1 only, so shard 2 is not even read: the index is followed.
    succeeds(&["eval", "--model", s(&model), "--data", s(&tiny_data())]);
    // Once the index lists shard 2 too, the duplicate is refused.
    let mut index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    index["weight_map"]["lm_head.extra"] = "model-00002-of-00002.safetensors".into();
    std::fs::write(
        model.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("index");
    fails_with(
        &["eval", "--model", s(&model), "--data", s(&tiny_data())],
        &[
            "model.norm.weight",
            "is also in",
            "each tensor must be stored once",
        ],
    );
}

// ---- 3. chat templates with limits ----------------------------------------------------------

#[test]
fn runaway_chat_templates_stop_with_an_error_naming_the_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("examples/tiny/model");
    for template in [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        // One repetition of 100 MB (minijinja's largest) per message: refused before it is
        // made, since the budget is smaller (the fuzzer found it taking seconds).
        "{% for m in messages %}{{ 'x' * 100000000 + m['content'] }}{% endfor %}",
    ] {
        let jinja = dir.path().join("t.jinja");
        std::fs::write(&jinja, template).expect("write");
        let yaml = train_yaml(
            dir.path(),
            &model,
            &tiny_data(),
            &dir.path().join("out"),
            &format!("chat_template: {}\nassistant_only_loss: false\n", s(&jinja)),
        );
        fails_with(
            &["preprocess", s(&yaml)],
            &["chat_template key", "budget", "loops or grows a string"],
        );
    }
}

// ---- 4. training on nothing -------------------------------------------------------------

#[test]
fn training_with_every_trained_token_truncated_away_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let yaml = train_yaml(
        dir.path(),
        &repo().join("examples/tiny/model"),
        &tiny_data(),
        &out,
        "assistant_only_loss: true\nassistant_masks: prefix\nmax_steps: 3\n",
    );
    fails_with(
        &["train", s(&yaml), "--max_seq_len", "6"],
        &[
            "no token to train on",
            "longer than max_seq_len 6",
            "raise max_seq_len",
        ],
    );
    assert!(!out.join("adapter_model.safetensors").exists());
}

// ---- 6. config values outside their domain ------------------------------------------------

#[test]
fn config_values_outside_their_domain_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("examples/tiny/model");
    let yaml = train_yaml(
        dir.path(),
        &model,
        &tiny_data(),
        &dir.path().join("out"),
        "",
    );
    for (key, value, want) in [
        (
            "num_train_epochs",
            "0",
            "num_train_epochs is 0; it must be a positive",
        ),
        ("num_train_epochs", "-1", "num_train_epochs is -1"),
        (
            "warmup_ratio",
            "1.5",
            "warmup_ratio is 1.5; it must be a fraction",
        ),
        ("adam_beta1", "1", "adam_beta1 is 1; it must be in [0, 1)"),
        ("adam_beta2", "-0.1", "adam_beta2 is -0.1"),
        ("weight_decay", "-0.01", "weight_decay is -0.01"),
        ("lora_alpha", "0", "lora_alpha is 0; it must be a positive"),
        ("lora_alpha", "-16", "lora_alpha is -16"),
        ("max_steps", "0", "max_steps is 0; it must be at least 1"),
        ("max_steps", "-5", "max_steps is -5"),
        ("adam_epsilon", "0", "adam_epsilon is 0"),
        ("lora_r", "abc", "key `lora_r` has the value `abc`"),
        (
            "learning_rate",
            "fast",
            "key `learning_rate` has the value `fast`",
        ),
    ] {
        fails_with(&["plan", s(&yaml), &format!("--{key}"), value], &[want]);
    }
}

#[test]
fn model_config_values_outside_their_domain_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value, want) in [
        ("rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps is 0"),
        (
            "rms_norm_eps",
            serde_json::json!(-1e-5),
            "rms_norm_eps is -0.00001",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 0.0, "rope_type": "default"}),
            "rope_theta is 0",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": -10000.0, "rope_type": "default"}),
            "rope_theta is -10000",
        ),
    ] {
        let model = tiny_model(dir.path(), |c| c[key] = value.clone());
        let yaml = train_yaml(
            dir.path(),
            &model,
            &tiny_data(),
            &dir.path().join("out"),
            "",
        );
        fails_with(&["plan", s(&yaml)], &[want, "config.json"]);
    }
}

// ---- 7. non-finite values -----------------------------------------------------------------

#[test]
fn non_finite_base_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path(), |_| {});
    let path = model.join("model.safetensors");
    rewrite_tensors(&path, &path, |t| {
        let w = t
            .iter_mut()
            .find(|(n, _, _)| n == "model.layers.1.mlp.up_proj.weight")
            .expect("tensor");
        w.2[5] = f32::NAN;
    });
    fails_with(
        &["eval", "--model", s(&model), "--data", s(&tiny_data())],
        &[
            "model.layers.1.mlp.up_proj.weight",
            "non-finite value (NaN) at index 5",
        ],
    );
}

#[test]
fn a_diverging_run_writes_no_checkpoint_or_adapter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let yaml = train_yaml(
        dir.path(),
        &repo().join("examples/tiny/model"),
        &tiny_data(),
        &out,
        "max_steps: 2\nsave_steps: 1\n",
    );
    fails_with(
        &["train", s(&yaml), "--learning_rate", "3e38"],
        &["learning_rate 300000000000000000000000000000000000000 is too high"],
    );
    assert!(!out.join("adapter_model.safetensors").exists());
    assert!(!out.join("checkpoint-1").exists() || no_nan_checkpoint(&out.join("checkpoint-1")));
}

/// A checkpoint written before the run diverged holds only finite values.
fn no_nan_checkpoint(dir: &Path) -> bool {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).expect("adapter");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("st");
    st.tensors().iter().all(|(_, v)| {
        v.data()
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
    })
}

// ---- 8. resume and output folders -----------------------------------------------------------

fn train_args<'a>(yaml: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", s(yaml)];
    v.extend_from_slice(extra);
    v
}

#[test]
fn a_fresh_run_refuses_a_non_empty_output_dir_unless_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let yaml = train_yaml(
        dir.path(),
        &repo().join("examples/tiny/model"),
        &tiny_data(),
        &out,
        "max_steps: 2\nsave_steps: 2\n",
    );
    succeeds(&train_args(&yaml, &[]));
    let before = std::fs::read(out.join("checkpoint-2/adapter_model.safetensors")).expect("ckpt");
    std::fs::write(out.join("notes.txt"), "mine").expect("write");
    fails_with(
        &train_args(&yaml, &["--max_steps", "1", "--save_steps", "1"]),
        &["is not empty", "--overwrite_output_dir", "--resume"],
    );
    // Nothing was touched.
    assert_eq!(
        std::fs::read(out.join("checkpoint-2/adapter_model.safetensors")).expect("ckpt"),
        before
    );
    assert!(!out.join("checkpoint-1").exists());
    // With --overwrite_output_dir the old run's files go, the others stay.
    succeeds(&train_args(
        &yaml,
        &[
            "--max_steps",
            "1",
            "--save_steps",
            "1",
            "--overwrite_output_dir",
        ],
    ));
    assert!(out.join("checkpoint-1").exists());
    assert!(!out.join("checkpoint-2").exists());
    assert!(out.join("notes.txt").exists());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
}

#[test]
fn a_second_run_on_a_locked_output_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    // A live process holds the lock: this test's own.
    std::fs::write(
        out.join(".temper.lock"),
        format!("{}\n", std::process::id()),
    )
    .expect("lock");
    let yaml = train_yaml(
        dir.path(),
        &repo().join("examples/tiny/model"),
        &tiny_data(),
        &out,
        "max_steps: 1\n",
    );
    fails_with(
        &train_args(&yaml, &[]),
        &[
            "in use by another temper run",
            &format!("pid {}", std::process::id()),
        ],
    );
    assert!(!out.join("metrics.jsonl").exists());
    // A lock left by a process that is gone is taken over.
    std::fs::write(out.join(".temper.lock"), "999999999\n").expect("lock");
    succeeds(&train_args(&yaml, &[]));
    assert!(!out.join(".temper.lock").exists());
}

#[test]
fn resume_refuses_changed_inputs_unless_asked_and_keeps_metrics_single() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let yaml = train_yaml(
        dir.path(),
        &repo().join("examples/tiny/model"),
        &tiny_data(),
        &out,
        "max_steps: 4\nsave_steps: 2\n",
    );
    succeeds(&train_args(&yaml, &[]));
    let ckpt2 = out.join("checkpoint-2");
    // Another learning rate: refused, saying what changed.
    fails_with(
        &train_args(&yaml, &["--resume", s(&ckpt2), "--learning_rate", "1e-3"]),
        &[
            "the optimizer settings",
            "learning_rate=0.0002",
            "learning_rate=0.001",
            "--resume-changed",
        ],
    );
    // Other data: refused.
    let other = dir.path().join("other.jsonl");
    let all = std::fs::read_to_string(tiny_data()).expect("data");
    let rows: Vec<&str> = all.lines().take(40).collect();
    std::fs::write(&other, rows.join("\n")).expect("write");
    fails_with(
        &train_args(&yaml, &["--resume", s(&ckpt2), "--data", s(&other)]),
        &[
            "checkpoint-2",
            "differs from the one that wrote the checkpoint",
        ],
    );
    // Asked for, it resumes and says what changed.
    let t = succeeds(&train_args(
        &yaml,
        &[
            "--resume",
            s(&ckpt2),
            "--learning_rate",
            "1e-3",
            "--resume-changed",
        ],
    ));
    assert!(t.contains("resuming") && t.contains("with changes"), "{t}");
    // Steps 3 and 4 were done twice; metrics.jsonl has each step once.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["step"]
                .as_u64()
                .expect("step")
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "{metrics}");
}

// ---- 9. SIGTERM and SIGHUP save a checkpoint ------------------------------------------------

#[test]
fn sigterm_and_sighup_stop_training_with_a_checkpoint() {
    for sig in ["-TERM", "-HUP"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let yaml = train_yaml(
            dir.path(),
            &repo().join("examples/tiny/model"),
            &tiny_data(),
            &out,
            "max_steps: 100000\n",
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_temper"))
            .args(["train", s(&yaml)])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut log = String::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no step line:\n{log}"));
            log.push_str(&line);
            log.push('\n');
            if line.starts_with("step 2/") {
                break;
            }
        }
        let sent = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let status = child.wait().expect("wait");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            log.push_str(&line);
            log.push('\n');
        }
        assert_eq!(status.code(), Some(130), "{sig}:\n{log}");
        assert!(log.contains("continue with `--resume`"), "{log}");
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        let steps = metrics.lines().count();
        assert!(
            out.join(format!("checkpoint-{steps}/trainer_state.json"))
                .exists(),
            "{sig}: no checkpoint at step {steps}:\n{log}"
        );
    }
}

// ---- 10. init-model and import-gguf keep a non-empty --out --------------------------------

#[test]
fn init_model_and_import_gguf_refuse_a_non_empty_out_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("config.json"), "{\"mine\": true}").expect("write");
    fails_with(
        &["init-model", "--shape", "tiny", "--out", s(&out)],
        &["is not empty", "config.json", "--force"],
    );
    let gguf = repo().join("tests/fixtures/gguf/tiny_llama.gguf");
    fails_with(
        &["import-gguf", s(&gguf), "--out", s(&out)],
        &["is not empty", "--force"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("config.json")).expect("read"),
        "{\"mine\": true}"
    );
    succeeds(&["import-gguf", s(&gguf), "--out", s(&out), "--force"]);
    assert!(out.join("model.safetensors").exists());
}

// ---- 11. data rows --------------------------------------------------------------------------

#[test]
fn bad_bytes_in_data_rows_name_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("examples/tiny/model");
    let good = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#;
    let data = dir.path().join("rows.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"\xef\xbb\xbf"); // a BOM first: accepted
    bytes.extend_from_slice(good.as_bytes());
    bytes.extend_from_slice(b"\n{\"text\": \"caf\xe9\"}\n");
    bytes.extend_from_slice(br#"{"text": "half a pair \ud800 here"}"#);
    bytes.extend_from_slice(b"\n{\"messages\": []}\n");
    bytes.extend_from_slice(good.as_bytes());
    bytes.push(b'\n');
    std::fs::write(&data, &bytes).expect("write");
    let yaml = train_yaml(dir.path(), &model, &data, &dir.path().join("out"), "");
    let line2 = format!("{}:2", data.display());
    fails_with(
        &["preprocess", s(&yaml)],
        &[&line2, "not valid UTF-8", "skip_bad_rows"],
    );
    let t = succeeds(&["preprocess", s(&yaml), "--skip_bad_rows", "true"]);
    // Lines 2 (latin-1), 3 (lone surrogate) and 4 (empty messages) are skipped and counted.
    assert!(t.contains("5 rows read, 3 skipped"), "{t}");
    assert!(t.contains("surrogate"), "{t}");
    assert!(t.contains("messages list is empty"), "{t}");
    // Without skip_bad_rows, an empty messages list alone is skipped and counted, not fatal.
    std::fs::write(&data, format!("{good}\n{{\"messages\": []}}\n")).expect("write");
    let t = succeeds(&["preprocess", s(&yaml)]);
    assert!(t.contains("2 rows read, 1 skipped"), "{t}");
}
