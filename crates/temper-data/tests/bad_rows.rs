//! Bad rows through the pipeline: an error naming the file, line and field, or (with
//! `skip_bad_rows`) skipped and counted while the good rows are kept as they would be
//! alone. alpaca and sharegpt mapping errors name the row and the field.

mod common;

use std::path::{Path, PathBuf};

use temper_data::{
    prepare, to_row, DataConfig, DatasetFormat, Overflow, SftOptions, TemplateChoice, Tokenizer,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(train: PathBuf, format: DatasetFormat, skip: bool) -> DataConfig {
    DataConfig {
        train: vec![train],
        eval: Vec::new(),
        eval_split: 0.0,
        format,
        template: TemplateChoice::Tokenizer,
        sft: SftOptions::default(),
        max_seq_len: 64,
        packing: false,
        overflow: Overflow::Truncate,
        skip_bad_rows: skip,
        seed: 0,
        cache_dir: None,
    }
}

const GOOD: [&str; 3] = [
    r#"{"text": "hello world"}"#,
    r#"{"prompt": "2+2=", "completion": "4"}"#,
    r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
];

/// Lines 1, 3 and 6 good; 2 has a wrong type, 4 is not JSON, 5 is a message without
/// content (7 is blank).
fn bad_file(dir: &Path) -> PathBuf {
    let text = [
        GOOD[0],
        r#"{"text": 5}"#,
        GOOD[1],
        r#"{"text": "#,
        r#"{"messages": [{"role": "user"}]}"#,
        GOOD[2],
        "",
    ]
    .join("\n");
    write(dir, "bad.jsonl", &text)
}

#[test]
fn a_bad_row_is_an_error_naming_file_line_and_field() {
    let tdir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tdir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = bad_file(dir.path());
    let msg = prepare(&tok, &config(path, DatasetFormat::Auto, false))
        .unwrap_err()
        .to_string();
    // The first bad row in file order, whatever order the parallel workers finish in.
    assert!(msg.contains("bad.jsonl:2:"), "{msg}");
    assert!(msg.contains("\"text\" must be a string"), "{msg}");
    assert!(msg.contains("skip_bad_rows"), "{msg}");

    // The later bad rows, each alone, name their line and what is wrong.
    for (line, bad, field) in [
        (4, r#"{"text": "#, "invalid JSON"),
        (
            5,
            r#"{"messages": [{"role": "user"}]}"#,
            "messages[0] has no \"content\"",
        ),
    ] {
        let mut lines = vec![GOOD[0]; line - 1];
        lines.push(bad);
        let p = write(dir.path(), "one.jsonl", &lines.join("\n"));
        let msg = prepare(&tok, &config(p, DatasetFormat::Auto, false))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("one.jsonl:{line}:")), "{msg}");
        assert!(msg.contains(field), "{msg}");
    }
}

#[test]
fn skip_bad_rows_skips_and_counts_them_and_keeps_the_good_rows() {
    let tdir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tdir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = bad_file(dir.path());
    let p = prepare(&tok, &config(path, DatasetFormat::Auto, true)).unwrap();
    assert_eq!(p.train_stats.rows_read, 6);
    assert_eq!(p.train_stats.skipped, 3);
    assert_eq!(p.train_stats.sequences, 3);
    assert_eq!(p.skipped_examples.len(), 3);
    for (m, line) in p.skipped_examples.iter().zip([2, 4, 5]) {
        assert!(m.contains(&format!("bad.jsonl:{line}:")), "{m}");
    }

    // The good rows alone give the same examples and counts (less the skipped).
    let good = write(dir.path(), "good.jsonl", &GOOD.join("\n"));
    let g = prepare(&tok, &config(good, DatasetFormat::Auto, false)).unwrap();
    assert_eq!(p.train_examples, g.train_examples);
    assert_eq!(p.train, g.train);
    assert_eq!(g.train_stats.skipped, 0);
    assert_eq!(p.train_stats.tokens, g.train_stats.tokens);
    assert_eq!(p.train_stats.trained_tokens, g.train_stats.trained_tokens);
    assert!(p.train_stats.tokens > 0);
}

fn mapping_error(format: DatasetFormat, rows: &[&str]) -> String {
    let tdir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tdir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mapped.jsonl", &rows.join("\n"));
    let err = prepare(&tok, &config(path.clone(), format, false)).unwrap_err();
    // With skip_bad_rows the same row is skipped and the others kept.
    let p = prepare(&tok, &config(path, format, true)).unwrap();
    assert_eq!(p.train_stats.skipped, 1);
    assert_eq!(p.train_stats.sequences, rows.len() - 1);
    err.to_string()
}

#[test]
fn alpaca_mapping_errors_name_the_row_and_field() {
    let ok = r#"{"instruction": "Add", "input": "2+2", "output": "4"}"#;
    for (bad, field) in [
        (r#"{"instruction": "Add", "input": "2+2"}"#, "\"output\""),
        (r#"{"input": "2+2", "output": "4"}"#, "\"instruction\""),
        (
            r#"{"instruction": "Add", "output": 4}"#,
            "\"output\" must be a string",
        ),
        (
            r#"{"instruction": "Add", "output": "4", "history": [["q"]]}"#,
            "history[0]",
        ),
    ] {
        let msg = mapping_error(DatasetFormat::Alpaca, &[ok, ok, bad, ok]);
        assert!(msg.contains("mapped.jsonl:3:"), "{msg}");
        assert!(msg.contains(field), "{field}: {msg}");
    }
    // Missing `input` is fine (optional): the user turn is the instruction alone.
    let row = to_row(
        &serde_json::json!({"instruction": "Add", "output": "4"}),
        DatasetFormat::Alpaca,
    )
    .unwrap();
    let temper_data::Row::Conversation { prompt, completion } = row else {
        panic!("alpaca -> conversation")
    };
    assert_eq!(prompt, [temper_data::Message::new("user", "Add")]);
    assert_eq!(completion, [temper_data::Message::new("assistant", "4")]);
}

#[test]
fn sharegpt_mapping_errors_name_the_row_and_field() {
    let ok =
        r#"{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}"#;
    for (bad, field) in [
        (
            r#"{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}"#,
            "conversations[1] has no \"value\"",
        ),
        (
            r#"{"conversations": [{"value": "q"}]}"#,
            "conversations[0] has no string \"from\"",
        ),
        (
            r#"{"conversations": [{"from": "narrator", "value": "q"}]}"#,
            "conversations[0].from: unknown role \"narrator\"",
        ),
        (r#"{"dialogue": []}"#, "no \"conversations\""),
        (
            r#"{"conversations": "q"}"#,
            "\"conversations\" must be a list",
        ),
    ] {
        let msg = mapping_error(DatasetFormat::ShareGpt, &[ok, bad, ok]);
        assert!(msg.contains("mapped.jsonl:2:"), "{msg}");
        assert!(msg.contains(field), "{field}: {msg}");
    }
}
