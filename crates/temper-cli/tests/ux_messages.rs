//! What a user reads when something is off: `--resume` among other keys and on a finished
//! run, values of the wrong type, command-line typos, axolotl's key names and configs, no
//! backtrace for their own errors, and the CPU notice said once.

mod common;

use std::path::{Path, PathBuf};

use common::{repo, s, temper, temper_with, text};

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

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The steps of the rows of metrics.jsonl that carry `key`.
fn steps_with(rows: &[serde_json::Value], key: &str) -> Vec<u64> {
    rows.iter()
        .filter(|r| r.get(key).is_some())
        .map(|r| r["step"].as_u64().expect("step"))
        .collect()
}

#[test]
fn resume_takes_keys_after_it_and_says_when_a_run_is_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "eval_split: 0.05\n");
    let o = temper(&["train", s(&cfg), "--max_steps", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    // `--resume` with no folder, then a key: the key is not taken as the folder.
    let o = temper(&["train", s(&cfg), "--resume", "--max_steps", "6"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming at step 4 of 6"), "{}", text(&o));
    assert!(text(&o).contains("trained 2 steps"), "{}", text(&o));
    // The final eval rows: one at the end of each run, at the step that run ended on.
    let rows = metrics(dir.path());
    assert_eq!(steps_with(&rows, "eval_loss"), [4, 6], "{rows:?}");
    assert_eq!(steps_with(&rows, "loss"), [1, 2, 3, 4, 5, 6], "{rows:?}");
    // The config before `--resume`, as `temper train --resume CONFIG` reads.
    let o = temper(&["train", "--resume", s(&cfg), "--max_steps", "6"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("nothing to train: the checkpoint is at step 6, the last of this run's 6 steps"),
        "{t}"
    );
    assert!(!t.contains("NaN"), "{t}");
    // Nothing was added to metrics.jsonl by the finished run.
    assert_eq!(metrics(dir.path()), rows);
    let o = temper(&["train", s(&cfg), "--max_steps", "5", "--resume"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the checkpoint is at step 6, past this run's 5 steps"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_key_and_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "lora_r: sixteen\n");
    let o = temper(&["plan", s(&cfg)]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("train.yaml: key `lora_r` has the value `sixteen`")
            && t.contains("expected a whole number"),
        "{t}"
    );
    let cfg = config(dir.path(), "");
    let o = temper(&["train", s(&cfg), "--max_steps", "[1, 2]"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("command line: key `max_steps` has the value `[1,2]`")
            && t.contains("expected a whole number"),
        "{t}"
    );
    let o = temper(&["train", s(&cfg), "--packing", "maybe"]);
    assert!(
        text(&o).contains("key `packing` has the value `maybe`")
            && text(&o).contains("expected true or false"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_command_line_typo_is_blamed_on_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let o = temper(&["train", s(&cfg), "--lerning_rate", "1e-3"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(
            "command line: unknown option `--lerning_rate`; did you mean `--learning_rate`?"
        ),
        "{t}"
    );
    assert!(!t.contains("train.yaml"), "{t}");
    // The same typo in the file is the file's.
    let cfg = config(dir.path(), "lerning_rate: 1.0e-3\n");
    let o = temper(&["train", s(&cfg)]);
    assert!(
        text(&o).contains("train.yaml: unknown key `lerning_rate`; did you mean `learning_rate`?"),
        "{}",
        text(&o)
    );
}

#[test]
fn axolotl_names_get_a_did_you_mean_to_ours() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (theirs, ours) in [
        ("num_epochs: 2", "num_train_epochs"),
        ("micro_batch_size: 2", "per_device_train_batch_size"),
        ("sequence_len: 256", "max_seq_len"),
        ("lora_target_modules: [q_proj]", "target_modules"),
        ("lr_scheduler: cosine", "lr_scheduler_type"),
        ("sample_packing: true", "packing"),
    ] {
        let cfg = config(dir.path(), &format!("{theirs}\n"));
        let o = temper(&["plan", s(&cfg), "--config-format", "temper"]);
        assert!(!o.status.success());
        let name = theirs.split(':').next().expect("name");
        let t = text(&o);
        assert!(
            t.contains(&format!(
                "unknown key `{name}`; did you mean `{ours}`? `{name}` is axolotl's name"
            )),
            "{t}"
        );
    }
    // On the command line too, with dashes.
    let cfg = config(dir.path(), "");
    let o = temper(&["plan", s(&cfg), "--num_epochs", "2"]);
    assert!(
        text(&o).contains("did you mean `--num_train_epochs`?"),
        "{}",
        text(&o)
    );
}

/// An axolotl config for the embedded default, as axolotl's examples write them (empty keys
/// included).
fn axolotl_config(dir: &Path, extra: &str) -> PathBuf {
    let tiny = repo().join("examples/tiny");
    let p = dir.join("axolotl.yml");
    std::fs::write(
        &p,
        format!(
            "base_model: {model}\nmodel_type: LlamaForCausalLM\ntokenizer_type: AutoTokenizer\n\
             load_in_8bit: false\nload_in_4bit: false\nstrict: false\n\
             datasets:\n  - path: {data}\n    type: chat_template\n    field_messages: messages\n\
             \x20   roles_to_train: [\"assistant\"]\n\
             dataset_prepared_path:\nval_set_size: 0.05\noutput_dir: {out}\n\
             adapter: lora\nlora_model_dir:\nsequence_len: 128\nsample_packing: true\n\
             lora_r: 8\nlora_alpha: 16\nlora_dropout: 0.05\nlora_target_linear: true\n\
             lora_fan_in_fan_out:\nwandb_project:\ngradient_accumulation_steps: 1\n\
             micro_batch_size: 2\nnum_epochs: 1\nmax_steps: 3\noptimizer: adamw_torch\n\
             lr_scheduler: cosine\nlearning_rate: 0.0002\ntrain_on_inputs: false\n\
             group_by_length: false\nbf16: auto\nfp16:\ntf32: false\n\
             gradient_checkpointing: true\nlogging_steps: 1\nflash_attention: false\n\
             warmup_steps: 1\neval_steps: 2\ndeepspeed:\nweight_decay: 0.0\n{extra}",
            model = s(&tiny.join("model")),
            data = s(&tiny.join("data/train.jsonl")),
            out = s(&dir.join("out")),
        ),
    )
    .expect("write config");
    p
}

#[test]
fn train_reads_an_axolotl_config_and_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = axolotl_config(dir.path(), "");
    let o = temper(&["train", s(&cfg), "--dataset_cache_dir", "none"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("read as an axolotl config"), "{t}");
    assert!(t.contains("lora: r 8 alpha 16"), "{t}");
    assert!(t.contains("trained 3 steps"), "{t}");
    // The keys as temper resolved them: the mapping, written back in temper's names.
    let resolved =
        std::fs::read_to_string(dir.path().join("out/training_config.yaml")).expect("written");
    for line in [
        "per_device_train_batch_size: 2",
        "max_seq_len: 128",
        "num_train_epochs: 1.0",
        "target_modules: all-linear",
        "assistant_only_loss: true",
        "eval_split: 0.05",
        "lr_scheduler_type: cosine",
    ] {
        assert!(resolved.contains(line), "{line} in:\n{resolved}");
    }
    // Evaluation every eval_steps on the val_set_size rows.
    let rows = metrics(dir.path());
    assert_eq!(steps_with(&rows, "eval_loss"), [2, 3], "{rows:?}");

    // Keys temper does not read are refused by name.
    let cfg = axolotl_config(
        dir.path(),
        "rl: dpo\nspecial_tokens:\n  pad_token: \"<pad>\"\n",
    );
    let o = temper(&["train", s(&cfg)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("these axolotl keys are not read by temper: rl, special_tokens"),
        "{}",
        text(&o)
    );
    // A dataset type temper does not read, named with its place in the list.
    let other = dir.path().join("other.yml");
    std::fs::write(
        &other,
        "base_model: m\ndatasets:\n  - path: a.jsonl\n    type: oasst\n",
    )
    .expect("write");
    let o = temper(&["train", s(&other)]);
    assert!(
        text(&o).contains("datasets[0]: type `oasst` is not one temper reads"),
        "{}",
        text(&o)
    );
    // A wrong value names the key as written in the file.
    let cfg = axolotl_config(dir.path(), "");
    let bad = std::fs::read_to_string(&cfg)
        .expect("read")
        .replace("micro_batch_size: 2", "micro_batch_size: two");
    std::fs::write(&cfg, bad).expect("write");
    let o = temper(&["train", s(&cfg)]);
    assert!(
        text(&o).contains(
            "key `micro_batch_size` (temper's `per_device_train_batch_size`) has the value `two`"
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn an_axolotl_alpaca_dataset_trains_on_the_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("alpaca.jsonl");
    let row = "{\"instruction\": \"What is 2 plus 3?\", \"input\": \"\", \"output\": \"2 plus 3 is 5.\"}\n";
    std::fs::write(&data, row.repeat(8)).expect("write");
    let cfg = dir.path().join("alpaca.yml");
    std::fs::write(
        &cfg,
        format!(
            "base_model: {}\ndatasets:\n  - path: {}\n    type: alpaca\noutput_dir: {}\n\
             sequence_len: 64\nmicro_batch_size: 2\nmax_steps: 2\nadapter: lora\n",
            s(&repo().join("examples/tiny/model")),
            s(&data),
            s(&dir.path().join("out"))
        ),
    )
    .expect("write");
    // Detected by its keys, or named.
    for args in [vec![], vec!["--config-format", "axolotl"]] {
        let out = dir.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        let o = temper(
            &[
                &[
                    "preprocess",
                    s(&cfg),
                    "--show",
                    "1",
                    "--dataset_cache_dir",
                    "none",
                ][..],
                &args,
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        // The instruction is the prompt; only the output is trained.
        assert!(t.contains("[[2 plus 3 is 5."), "{t}");
        assert!(!t.contains("[[What is"), "{t}");
    }
}

#[test]
fn user_errors_have_no_backtrace_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let o = temper_with(
        &["train", s(&cfg), "--lerning_rate", "1e-3"],
        &[("RUST_BACKTRACE", Path::new("1"))],
    );
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.starts_with("Error: command line: unknown option"), "{t}");
    assert!(!t.to_lowercase().contains("backtrace"), "{t}");
    // An error with causes lists them, still without a backtrace.
    let o = temper_with(
        &["train", s(&dir.path().join("missing.yaml"))],
        &[("RUST_BACKTRACE", Path::new("full"))],
    );
    let t = text(&o);
    assert!(
        t.contains("Caused by:") && t.contains("missing.yaml"),
        "{t}"
    );
    assert!(!t.to_lowercase().contains("backtrace"), "{t}");
}

#[test]
fn the_cpu_notice_is_said_once() {
    if temper_core::cuda::unavailable_reason().is_none() {
        return; // a GPU machine: `auto` takes the GPU and says nothing of the CPU
    }
    let home = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let env = [("HOME", home.path())];
    let notices = |o: &std::process::Output| -> Vec<String> {
        text(o)
            .lines()
            .filter(|l| l.contains("device: cpu"))
            .map(str::to_string)
            .collect()
    };
    // The first command says why in full, a later one in a line.
    let o = temper_with(&["plan", s(&cfg), "--device", "auto"], &env);
    assert!(o.status.success(), "{}", text(&o));
    let first = notices(&o);
    assert_eq!(first.len(), 1, "{}", text(&o));
    assert!(first[0].contains("LD_LIBRARY_PATH"), "{first:?}");
    let o = temper_with(&["plan", s(&cfg), "--device", "auto"], &env);
    assert_eq!(
        notices(&o),
        ["device: cpu (no usable GPU, as before; `--device cuda` says why)"]
    );
    // Two ranks on this host: one notice.
    let o = temper_with(
        &[
            "train",
            s(&cfg),
            "--max_steps",
            "1",
            "--nproc_per_node",
            "2",
            "--device",
            "auto",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(notices(&o).len(), 1, "{}", text(&o));
}
