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
fn optim_adamw_8bit_trains_saves_8bit_states_and_resumes() {
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
        "--device",
        "cpu",
    ];
    let o = temper(&[&base[..], &["--max_steps", "2", "--optim", "adamw_8bit"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    // lora_r 16: mlp.down_proj's A is 16 x 352 = 5632 values, 8-bit (bitsandbytes'
    // min_8bit_size is 4096); q_proj's A is 16 x 128 = 2048, kept in f32.
    let bytes = std::fs::read(out.path().join("checkpoint-2/optimizer.safetensors"))
        .expect("optimizer file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let key = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight";
    let codes = st.tensor(&format!("exp_avg_codes.{key}")).expect("codes");
    assert_eq!(codes.dtype(), safetensors::Dtype::U8);
    assert_eq!(codes.shape(), &[16, 352]);
    assert_eq!(
        st.tensor(&format!("exp_avg_sq_absmax.{key}"))
            .expect("absmax")
            .shape(),
        &[22]
    );
    assert!(st
        .tensor("exp_avg.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .is_ok());
    // Resumed with the states paged (in host memory on a GPU), two more steps.
    let o = temper(
        &[
            &base[..],
            &[
                "--max_steps",
                "4",
                "--optim",
                "paged_adamw_8bit",
                "--resume",
            ],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming at step 2"), "{}", text(&o));
    assert!(out
        .path()
        .join("checkpoint-4/optimizer.safetensors")
        .exists());
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let cfg = repo().join("examples/tiny/train.yaml");
    let o = temper(&["train", cfg.to_str().expect("utf8"), "--lora_rank", "8"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("command line: unknown option `--lora_rank`")
            && t.contains("did you mean `--lora_r`"),
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

/// `plan --longest` finds the length L whose plan fits max_memory while L + 1's does not
/// (the bisection against the plan itself), and says what binds.
#[test]
fn plan_longest_finds_the_last_length_that_fits() {
    let cfg = repo().join("examples/tiny/train.yaml");
    let cfg = cfg.to_str().expect("utf8");
    let peak_mib = |seq: usize| -> f64 {
        let o = temper(&[
            "plan",
            cfg,
            "--max_seq_len",
            &seq.to_string(),
            "--max_memory",
            "1GiB",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        let at = out.find("predicted peak ").expect("a prediction") + "predicted peak ".len();
        let mut words = out[at..].split_whitespace();
        let value: f64 = words.next().expect("a number").parse().expect("a number");
        match words.next() {
            Some("GiB") => value * 1024.0,
            _ => value,
        }
    };
    let limit_mib = 30.0;
    let o = temper(&["plan", "--longest", cfg, "--max_memory", "30MiB"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let at = out.find("longest max_seq_len: ").expect("the answer") + "longest max_seq_len: ".len();
    let longest: usize = out[at..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a length");
    assert!(
        out.contains("one token more needs more device memory"),
        "{out}"
    );
    assert!(peak_mib(longest) <= limit_mib, "{out}");
    assert!(peak_mib(longest + 1) > limit_mib - 0.05, "{out}");
    // With room to spare, the model's context is the bound, and said to be.
    let o = temper(&["plan", "--longest", cfg, "--max_memory", "1GiB"]);
    assert!(
        text(&o).contains("longest max_seq_len: 512 tokens")
            && text(&o).contains("max_position_embeddings (512) comes first"),
        "{}",
        text(&o)
    );
    // Without max_memory and without a GPU, it asks for the memory to fit in.
    let o = temper(&["plan", "--longest", cfg, "--device", "cuda"]);
    if !text(&o).contains("longest max_seq_len") {
        assert!(text(&o).contains("set max_memory"), "{}", text(&o));
    }
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

#[test]
fn load_in_8bit_trains_evaluates_and_plans_8bit_weights() {
    let out = tempfile::tempdir().expect("tempdir");
    let cfg = repo().join("examples/tiny/train.yaml");
    let cfg = cfg.to_str().expect("utf8");
    let o = temper(&[
        "train",
        cfg,
        "--load_in_8bit",
        "true",
        "--max_steps",
        "24",
        "--warmup_steps",
        "4",
        "--save_steps",
        "0",
        "--eval_split",
        "0.05",
        "--dataset_cache_dir",
        "none",
        "--output_dir",
        out.path().to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "train failed:\n{}", text(&o));
    // The loss falls: the last steps' mean is well below the first steps' (each step is a
    // different batch, so single steps are noisy).
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let losses: Vec<f64> = lines.iter().filter_map(|m| m["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 24, "{metrics}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..6]), mean(&losses[18..]));
    println!("load_in_8bit: step losses {losses:.3?}; first 6 mean {first:.3}, last 6 {last:.3}");
    assert!(
        last < 0.8 * first,
        "the loss did not fall: {first} -> {last}"
    );
    // The eval split is scored by the same 8-bit model.
    let eval = lines
        .last()
        .and_then(|m| m["eval_loss"].as_f64())
        .expect("eval_loss");
    assert!(eval.is_finite() && eval > 0.0, "{eval}");

    // plan: 737,280 linear values in a byte each + 4,864 rows of f32 scales, the other
    // 148,608 values (embeddings, norms, RoPE tables) in bf16: 1,053,952 bytes. Planned for a
    // GPU (`--device cuda`; the CPU would hold them in f32), with or without one here.
    let o = temper(&["plan", cfg, "--load_in_8bit", "true", "--device", "cuda"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("weights 1.0 MiB"), "{}", text(&o));
    let o = temper(&["plan", cfg, "--device", "cuda"]);
    assert!(text(&o).contains("weights 1.7 MiB"), "{}", text(&o));
    let o = temper(&[
        "plan",
        cfg,
        "--load_in_8bit",
        "true",
        "--load_in_4bit",
        "true",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("choose one"), "{}", text(&o));
    // bitsandbytes' outlier threshold is accepted (it changes nothing: every column is
    // computed in 16 bits), a negative one is not.
    let with = |t: &str| {
        temper(&[
            "plan",
            cfg,
            "--load_in_8bit",
            "true",
            "--llm_int8_threshold",
            t,
            "--device",
            "cuda",
        ])
    };
    let o = with("6.0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("weights 1.0 MiB"), "{}", text(&o));
    let o = with("-1");
    assert!(!o.status.success());
    assert!(text(&o).contains("llm_int8_threshold -1"), "{}", text(&o));
}

#[test]
fn quantize_writes_a_bitsandbytes_4bit_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("q");
    let model = repo().join("examples/tiny/model");
    let (m, o) = (model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let run = temper(&["quantize", m, "--out", o, "--double-quant"]);
    assert!(run.status.success(), "quantize failed:\n{}", text(&run));

    // config.json: the source's keys plus transformers' quantization_config.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    let q = &cfg["quantization_config"];
    assert_eq!(q["quant_method"], "bitsandbytes");
    assert_eq!(q["load_in_4bit"], true);
    assert_eq!(q["bnb_4bit_quant_type"], "nf4");
    assert_eq!(q["bnb_4bit_use_double_quant"], true);
    assert_eq!(q["bnb_4bit_compute_dtype"], "bfloat16");
    assert_eq!(q["bnb_4bit_quant_storage"], "uint8");
    assert_eq!(cfg["hidden_size"], 128);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} copied");
    }

    let src_bytes = std::fs::read(model.join("model.safetensors")).expect("source");
    let src = safetensors::SafeTensors::deserialize(&src_bytes).expect("source safetensors");
    let bytes = std::fs::read(out.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    // 4 layers x 7 projections x 6 tensors, and the 10 other tensors unchanged.
    assert_eq!(st.names().len(), 4 * 7 * 6 + src.names().len() - 4 * 7);
    let w = "model.layers.1.mlp.down_proj.weight"; // (128, 352)
    let t = |k: &str| st.tensor(k).unwrap_or_else(|e| panic!("{k}: {e}"));
    assert_eq!(t(w).dtype(), safetensors::Dtype::U8);
    assert_eq!(t(w).shape(), &[128 * 352 / 2, 1]);
    assert_eq!(t(&format!("{w}.absmax")).dtype(), safetensors::Dtype::U8);
    assert_eq!(t(&format!("{w}.absmax")).shape(), &[128 * 352 / 64]);
    assert_eq!(t(&format!("{w}.nested_absmax")).shape(), &[3]);
    assert_eq!(t(&format!("{w}.quant_map")).shape(), &[16]);
    assert_eq!(t(&format!("{w}.nested_quant_map")).shape(), &[256]);
    let json = t(&format!("{w}.quant_state.bitsandbytes__nf4"));
    let state: serde_json::Value = serde_json::from_slice(json.data()).expect("quant_state");
    assert_eq!(state["quant_type"], "nf4");
    assert_eq!(state["blocksize"], 64);
    assert_eq!(state["dtype"], "bfloat16");
    assert_eq!(state["shape"], serde_json::json!([128, 352]));
    assert_eq!(state["nested_blocksize"], 256);
    assert_eq!(state["nested_dtype"], "float32");
    assert!(state["nested_offset"].as_f64().expect("offset") > 0.0);
    for k in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(
            t(k).data(),
            src.tensor(k).expect("src").data(),
            "{k} copied"
        );
    }

    // Dequantised weights are within NF4's rounding error of the originals: half the widest
    // code gap, (1 - 0.6961928) / 2, times the block absmax, plus the error of the
    // double-quantised absmax (half the widest gap of the 8-bit dynamic map, 0.0071, times
    // the largest absmax).
    let weights = temper_quant::load_4bit_folder(&out).expect("load");
    assert_eq!(weights.len(), 28);
    for (name, qs) in &weights {
        let orig: Vec<f32> = src
            .tensor(name)
            .expect("source weight")
            .data()
            .chunks_exact(2)
            .map(half_bf16)
            .collect();
        let deq = qs.dequantize_to_f32().expect("dequantize");
        let absmax = qs.absmax_f32().expect("absmax");
        let top = absmax.iter().fold(0.0f32, |m, &a| m.max(a));
        let mut worst = 0.0f32;
        for (i, (&d, &x)) in deq.iter().zip(&orig).enumerate() {
            let err = (d - x).abs() / absmax[i / 64];
            worst = worst.max(err);
            let bound = 0.152 * absmax[i / 64] + 0.0072 * top;
            assert!((d - x).abs() <= bound, "{name}[{i}]: {x} -> {d}");
        }
        assert!(worst > 0.01, "{name}: quantisation changed nothing?");
    }

    // An existing, non-empty --out is refused unless --force.
    let again = temper(&["quantize", m, "--out", o]);
    assert!(!again.status.success());
    assert!(text(&again).contains("--force"), "{}", text(&again));
    let forced = temper(&["quantize", m, "--out", o, "--force", "--quant-type", "fp4"]);
    assert!(forced.status.success(), "{}", text(&forced));

    // A quantised model is not quantised again; a missing folder and bad options are named.
    let twice = temper(&[
        "quantize",
        o,
        "--out",
        tmp.path().join("r").to_str().expect("utf8"),
    ]);
    assert!(
        text(&twice).contains("already quantised"),
        "{}",
        text(&twice)
    );
    let missing = temper(&["quantize", "/no/such/model", "--out", o, "--force"]);
    assert!(
        text(&missing).contains("does not exist"),
        "{}",
        text(&missing)
    );
    let bad = temper(&["quantize", m, "--out", o, "--force", "--quant-type", "int3"]);
    assert!(text(&bad).contains("expected nf4 or fp4"), "{}", text(&bad));
    let bad = temper(&["quantize", m, "--out", o, "--force", "--blocksize", "100"]);
    assert!(text(&bad).contains("power of two"), "{}", text(&bad));
}

/// A little-endian bf16 as f32 (without a `half` dependency in this test crate).
fn half_bf16(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}
