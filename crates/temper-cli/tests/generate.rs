//! `temper generate` end to end on the embedded default (examples/tiny).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use temper_data::Tokenizer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> String {
    repo().join("examples/tiny/model").display().to_string()
}

fn temper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(args)
        .output()
        .expect("temper runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn chat_generation_prints_text_and_the_rate() {
    let m = tiny();
    let o = temper(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "What is 3 plus 4?",
        "--chat",
        "--max-new-tokens",
        "16",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.trim().chars().any(char::is_alphanumeric),
        "no text: {text:?}"
    );
    assert!(
        !text.contains("<|im_end|>") && !text.contains("<|endoftext|>"),
        "{text:?}"
    );
    assert!(stderr(&o).contains("tokens/s"), "{}", stderr(&o));
}

/// The CLI's greedy chat output is transformers' greedy output (fixture made by
/// scripts/make_generate_fixtures.py), rendered, encoded, generated and decoded by temper.
#[test]
fn greedy_chat_output_equals_transformers() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/generate/tiny.json"))
            .expect("fixture"),
    )
    .expect("json");
    let tok = Tokenizer::from_dir(&repo().join("examples/tiny/model")).expect("tokenizer");
    let m = tiny();
    let mut checked = 0;
    for case in fixture["cases"].as_array().expect("cases") {
        let Some(messages) = case["messages"].as_array() else {
            continue;
        };
        if case["model"] != "examples/tiny/model" || messages.len() != 1 {
            continue;
        }
        let prompt = messages[0]["content"].as_str().expect("content");
        let ids: Vec<u32> = case["generated_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect();
        let want = format!("{}\n", tok.decode(&ids, true).expect("decode"));
        let max = case["max_new_tokens"].to_string();
        let o = temper(&[
            "generate",
            "--model",
            &m,
            "--prompt",
            prompt,
            "--chat",
            "--max-new-tokens",
            &max,
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
        assert_eq!(stdout(&o), want, "{}", case["name"]);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} chat cases");
}

#[test]
fn a_seeded_sampling_run_repeats() {
    let m = tiny();
    let run = |seed: &str| {
        let o = temper(&[
            "generate",
            "--model",
            &m,
            "--prompt",
            "Q: What is 83 times 47?\nA:",
            "--max-new-tokens",
            "20",
            "--temperature",
            "1.5",
            "--top-p",
            "0.98",
            "--seed",
            seed,
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
        stdout(&o)
    };
    let a = run("3");
    assert_eq!(a, run("3"));
    assert!(
        ["4", "5", "6"].iter().any(|s| run(s) != a),
        "every seed gave {a:?}"
    );
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let m = tiny();
    let o = temper(&[
        "generate", "--model", &m, "--prompt", "hi", "--top-p", "1.5",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("top_p 1.5 is not in [0, 1]"),
        "{}",
        stderr(&o)
    );
    let o = temper(&[
        "generate", "--model", &m, "--prompt", "hi", "--system", "be brief",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--chat"), "{}", stderr(&o));
    let missing = repo().join("no/such/adapter").display().to_string();
    let o = temper(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "hi",
        "--adapter",
        &missing,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no/such/adapter"), "{}", stderr(&o));
}

/// `temper generate --chat` on SmolLM2-135M-Instruct prints transformers' greedy text for
/// each chat of tests/fixtures/generate/smollm2.json: the GGUF's chat template (with its
/// default system message), the tokenizer and the model together. Needs TEMPER_SMOLLM2 (a
/// model folder of the GGUF dequantised to float32). Run with `--ignored`.
#[test]
#[ignore = "needs TEMPER_SMOLLM2 (SmolLM2-135M-Instruct as an f32 model folder)"]
fn smollm2_chat_output_equals_transformers() {
    let Some(dir) = std::env::var_os("TEMPER_SMOLLM2") else {
        panic!("set TEMPER_SMOLLM2 to SmolLM2-135M-Instruct as an f32 model folder");
    };
    let dir = PathBuf::from(dir);
    let tok = Tokenizer::from_dir(&dir).expect("tokenizer");
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/generate/smollm2.json"))
            .expect("fixture"),
    )
    .expect("json");
    let model = dir.display().to_string();
    for case in fixture["cases"].as_array().expect("cases") {
        let messages = case["messages"].as_array().expect("messages");
        let content = |i: usize| messages[i]["content"].as_str().expect("content");
        let mut args = vec!["generate", "--model", &model, "--chat", "--device", "cpu"];
        let (system, prompt) = match messages.len() {
            1 => (None, content(0)),
            _ => (Some(content(0)), content(1)),
        };
        args.extend(["--prompt", prompt]);
        if let Some(s) = system {
            args.extend(["--system", s]);
        }
        let max = case["max_new_tokens"].to_string();
        args.extend(["--max-new-tokens", &max]);
        let ids: Vec<u32> = case["generated_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect();
        let o = temper(&args);
        assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
        let want = format!("{}\n", tok.decode(&ids, true).expect("decode"));
        assert_eq!(stdout(&o), want, "{}", case["name"]);
    }
}

/// A briefly trained adapter, loaded by `generate --adapter`, changes the greedy output.
#[test]
fn a_trained_adapter_changes_the_output() {
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().display().to_string();
    let cfg = repo()
        .join("examples/tiny/train.yaml")
        .display()
        .to_string();
    let o = temper(&[
        "train",
        &cfg,
        "--max_steps",
        "10",
        "--save_steps",
        "1000",
        "--output_dir",
        &dir,
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "train failed:\n{}", stderr(&o));
    let m = tiny();
    let run = |adapter: Option<&str>| {
        let mut args = vec![
            "generate",
            "--model",
            &m,
            "--prompt",
            "Write 342 in words.",
            "--chat",
            "--max-new-tokens",
            "24",
            "--device",
            "cpu",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let o = temper(&args);
        assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
        stdout(&o)
    };
    let (base, tuned) = (run(None), run(Some(&dir)));
    assert_ne!(
        base, tuned,
        "the adapter left the output unchanged: {base:?}"
    );
}

/// `--model FILE.gguf`: the GGUF is imported once into the cache ($TEMPER_CACHE_DIR) and
/// generates exactly what its imported folder generates.
#[test]
fn a_gguf_model_is_imported_once_and_generates_as_its_folder() {
    let gguf = repo()
        .join("tests/fixtures/gguf/tiny_qwen2.gguf")
        .display()
        .to_string();
    let cache = tempfile::tempdir().expect("tempdir");
    let run = |model: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_temper"))
            .args([
                "generate",
                "--model",
                model,
                "--prompt",
                "Hello there",
                "--max-new-tokens",
                "8",
                "--ignore-eos",
                "--device",
                "cpu",
            ])
            .env("TEMPER_CACHE_DIR", cache.path())
            .output()
            .expect("temper runs");
        assert!(o.status.success(), "generate failed:\n{}", stderr(&o));
        o
    };
    let first = run(&gguf);
    assert!(stderr(&first).contains("importing"), "{}", stderr(&first));
    let second = run(&gguf);
    assert!(
        stderr(&second).contains("imported earlier"),
        "{}",
        stderr(&second)
    );
    assert_eq!(stdout(&first), stdout(&second));
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.path().join("gguf"))
        .expect("the cache folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let folder = run(&dirs[0].display().to_string());
    assert_eq!(stdout(&folder), stdout(&first));
    assert!(
        stderr(&first).contains("8 new tokens"),
        "{}",
        stderr(&first)
    );
}
