//! `temper preprocess` end to end on the embedded default (examples/tiny): the shown
//! examples bracket exactly the assistant turns, and `--out` writes one consistent JSON
//! line per packed row, matching the summary's counts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn temper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(args)
        .output()
        .expect("temper runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// The number just before `word` in the summary line (e.g. "2000 rows read").
fn count_before(summary: &str, word: &str) -> usize {
    let line = summary
        .lines()
        .find(|l| l.starts_with("train data:"))
        .unwrap_or_else(|| panic!("no summary in {summary}"));
    let at = line
        .find(word)
        .unwrap_or_else(|| panic!("{word} in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("count before {word} in {line}"))
}

#[test]
fn preprocess_shows_brackets_and_writes_packed_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("rows.jsonl");
    let cache = tmp.path().join("cache");
    let cfg = repo().join("examples/tiny/train.yaml");
    let args = [
        "preprocess",
        s(&cfg),
        "--show",
        "2",
        "--out",
        s(&out),
        "--dataset_cache_dir",
        s(&cache),
    ];
    let o = temper(&args);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stdout}\n{stderr}");

    // Two examples, trained text in [[brackets]] (stdout is a pipe, so no colour).
    assert!(stdout.contains("--- example 0:"), "{stdout}");
    assert!(stdout.contains("--- example 1:"), "{stdout}");
    assert!(!stdout.contains("--- example 2:"), "{stdout}");
    assert!(!stdout.contains("\x1b["), "no colour codes off a terminal");
    // The first two data rows: the assistant's words are inside brackets, the user's
    // outside (assistant_only_loss in train.yaml).
    let data = std::fs::read_to_string(repo().join("examples/tiny/data/train.jsonl")).unwrap();
    let shown: Vec<&str> = stdout.split("--- example ").skip(1).collect();
    for (row, text) in data.lines().take(2).zip(&shown) {
        let row: Value = serde_json::from_str(row).unwrap();
        let msgs = row["messages"].as_array().unwrap();
        let user = msgs[0]["content"].as_str().unwrap();
        let answer = msgs[1]["content"].as_str().unwrap();
        let (header, text) = text.split_once('\n').unwrap();
        assert!(header.ends_with("(trained in [[brackets]])"), "{header}");
        let trained: Vec<&str> = text
            .split("[[")
            .skip(1)
            .map(|t| t.split("]]").next().unwrap())
            .collect();
        assert_eq!(trained.len(), 1, "one trained run: {text}");
        assert!(
            trained[0].contains(answer),
            "{answer:?} in {:?}",
            trained[0]
        );
        assert!(!trained[0].contains(user), "{text}");
        assert!(text.contains(user), "{text}");
    }

    // --out: one line per packed row, consistent with the summary.
    let rows_n = count_before(&stderr, "rows of");
    let sequences = count_before(&stderr, "sequences");
    let tokens = count_before(&stderr, "tokens (");
    let trained_n = count_before(&stderr, "trained,");
    assert_eq!(count_before(&stderr, "rows read"), data.lines().count());
    let written = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), rows_n);
    assert!(
        rows_n < sequences,
        "packing puts several sequences in a row"
    );
    let (mut seqs, mut toks, mut trained, mut multi) = (0, 0, 0, 0);
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let get = |k: &str| -> Vec<i64> {
            v[k].as_array()
                .unwrap_or_else(|| panic!("{k} in {line}"))
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        };
        let (ids, labels, pos) = (get("input_ids"), get("labels"), get("position_ids"));
        assert_eq!(ids.len(), labels.len());
        assert_eq!(ids.len(), pos.len());
        assert!(!ids.is_empty() && ids.len() <= 256, "max_seq_len 256");
        assert_eq!(pos[0], 0);
        let starts = pos.iter().filter(|&&p| p == 0).count();
        if starts > 1 {
            multi += 1;
        }
        seqs += starts;
        toks += ids.len();
        for i in 0..ids.len() {
            if i > 0 {
                assert!(pos[i] == 0 || pos[i] == pos[i - 1] + 1, "{pos:?}");
            }
            // Labels are the ids where trained, -100 elsewhere; the start of every
            // sequence (the prompt) is never trained.
            assert!(labels[i] == -100 || labels[i] == ids[i], "{line}");
            if pos[i] == 0 {
                assert_eq!(labels[i], -100, "{line}");
            }
        }
        trained += labels.iter().filter(|&&l| l != -100).count();
    }
    assert!(multi > 0);
    assert_eq!(seqs, sequences);
    assert_eq!(toks, tokens);
    assert_eq!(trained, trained_n);
    assert!(trained > 0 && trained < toks);
    assert!(stderr.contains("(tokenised"), "{stderr}");

    // Again: from the cache, the same rows.
    let out2 = tmp.path().join("rows2.jsonl");
    let mut again = args;
    again[5] = s(&out2);
    let o = temper(&again);
    let stderr2 = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr2}");
    assert!(stderr2.contains("(from cache"), "{stderr2}");
    assert_eq!(std::fs::read_to_string(&out2).unwrap(), written);
    assert_eq!(String::from_utf8_lossy(&o.stdout), stdout);
}

#[test]
fn preprocess_bad_rows_error_or_skip_and_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let bad = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}"#;
    std::fs::write(
        tmp.path().join("bad.jsonl"),
        [good, bad, good, good].join("\n"),
    )
    .unwrap();
    let model = repo().join("examples/tiny/model");
    let cfg = tmp.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {}\ndata: bad.jsonl\nmax_seq_len: 64\npacking: false\ndataset_cache_dir: none\n",
            s(&model)
        ),
    )
    .unwrap();
    let o = temper(&["preprocess", s(&cfg)]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    assert!(err.contains("messages[1] has no \"content\""), "{err}");

    let o = temper(&["preprocess", s(&cfg), "--skip_bad_rows", "true"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("4 rows read, 1 skipped, 3 sequences"), "{err}");
    assert!(err.contains("skipped: "), "{err}");
    assert!(err.contains("bad.jsonl:2:"), "{err}");
}
