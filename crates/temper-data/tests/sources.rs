//! Dataset sources other than one JSONL file: `.json` (a list, or `{"data": [...]}`),
//! `.parquet` (fixtures written by pyarrow, scripts/make_data_fixtures.py) and folders
//! of files read in name order. Each must give the rows the same data gives as JSONL.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use temper_data::{
    data_files, prepare, read_jsonl, read_records, to_row, DataConfig, DatasetFormat, Overflow,
    Row, SftOptions, TemplateChoice, Tokenizer,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(name)
}

/// The rows of tests/fixtures/data/messages.parquet (scripts/make_data_fixtures.py).
fn messages_rows() -> Vec<Value> {
    vec![
        json!({"id": 1, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello world"}]}),
        json!({"id": 2, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "It is 4."},
        ]}),
        json!({"id": 3, "messages": [{"role": "user", "content": "Héllo ünïcode ✓"}, {"role": "assistant", "content": "again"}]}),
    ]
}

/// The rows of tests/fixtures/data/prompt_completion.parquet.
fn prompt_completion_rows() -> Vec<Value> {
    vec![
        json!({"prompt": "The capital of France is", "completion": " Paris."}),
        json!({"prompt": "The capital of Italy is", "completion": " Rome."}),
    ]
}

fn mixed_rows() -> Vec<Value> {
    vec![
        json!({"text": "hello world"}),
        json!({"prompt": "2+2=", "completion": "4"}),
        json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        json!({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
    ]
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// Rows of a file or folder as `read_records` + `to_row(Auto)` give them.
fn rows_of(path: &Path) -> Vec<Row> {
    read_records(path)
        .unwrap()
        .into_iter()
        .map(|r| to_row(&r.value.unwrap(), DatasetFormat::Auto).unwrap())
        .collect()
}

fn values_of(path: &Path) -> Vec<Value> {
    read_records(path)
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect()
}

#[test]
fn json_list_and_data_object_read_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let rows = mixed_rows();
    let l = write(dir.path(), "rows.jsonl", &jsonl(&rows));
    let a = write(
        dir.path(),
        "list.json",
        &serde_json::to_string_pretty(&rows).unwrap(),
    );
    let d = write(
        dir.path(),
        "data.json",
        &json!({"version": "1", "data": rows}).to_string(),
    );
    let expected = rows_of(&l);
    assert_eq!(expected.len(), 4);
    assert!(matches!(expected[3], Row::Messages(_)), "sharegpt via auto");
    assert_eq!(rows_of(&a), expected);
    assert_eq!(rows_of(&d), expected);
    assert_eq!(values_of(&a), rows);
    assert_eq!(values_of(&d), rows);

    // Origins: JSONL counts lines, JSON lists count rows, both 1-based.
    let recs = read_records(&d).unwrap();
    assert_eq!(recs[2].origin.line, 3);
    assert!(!recs[2].origin.is_line);
    assert!(
        recs[2].origin.to_string().ends_with("data.json: row 3"),
        "{}",
        recs[2].origin
    );
    let recs = read_records(&l).unwrap();
    assert_eq!(recs[2].origin.line, 3);
    assert!(recs[2].origin.to_string().ends_with("rows.jsonl:3"));
}

#[test]
fn json_that_is_not_a_list_of_rows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("scalar.json", "3"),
        ("nolist.json", r#"{"data": {"text": "x"}}"#),
        ("twolists.json", r#"{"a": [], "b": []}"#),
    ] {
        let p = write(dir.path(), name, text);
        let msg = read_records(&p).unwrap_err().to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("\"data\" list"), "{msg}");
    }
    let p = write(
        dir.path(),
        "broken.json",
        "[\n{\"text\": \"a\"},\n{\"text\": }\n]",
    );
    let msg = read_records(&p).unwrap_err().to_string();
    assert!(msg.contains("broken.json:3:"), "{msg}");
}

#[test]
fn parquet_reads_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    for (name, rows) in [
        ("messages.parquet", messages_rows()),
        ("prompt_completion.parquet", prompt_completion_rows()),
    ] {
        let pq = fixture(name);
        let l = write(dir.path(), &format!("{name}.jsonl"), &jsonl(&rows));
        assert_eq!(values_of(&pq), rows, "{name}");
        assert_eq!(rows_of(&pq), rows_of(&l), "{name}");
        assert_eq!(read_jsonl(&pq).unwrap(), read_jsonl(&l).unwrap(), "{name}");
        let recs = read_records(&pq).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.origin.line).collect::<Vec<_>>(),
            (1..=rows.len()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn parquet_with_another_codec_is_an_error_that_says_so() {
    let msg = read_records(&fixture("zstd.parquet"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("zstd.parquet"), "{msg}");
    assert!(msg.contains("snappy"), "{msg}");
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "fake.parquet", "{\"text\": \"x\"}\n");
    let msg = read_records(&p).unwrap_err().to_string();
    assert!(msg.contains("fake.parquet"), "{msg}");
}

#[test]
fn folder_reads_files_in_name_order_and_skips_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    let all = [mixed_rows(), prompt_completion_rows(), messages_rows()].concat();
    // Written in an order that is not the name order.
    std::fs::create_dir_all(root.join("c")).unwrap();
    std::fs::copy(fixture("messages.parquet"), root.join("c/d.parquet")).unwrap();
    write(&root, "b.jsonl", &jsonl(&prompt_completion_rows()));
    write(
        &root,
        "a.json",
        &json!({ "data": mixed_rows() }).to_string(),
    );
    write(&root, "dataset_info.json", r#"{"features": {}}"#);
    write(&root, ".hidden.jsonl", "{\"text\": \"hidden\"}\n");
    write(&root, "notes.txt", "not data");

    let names: Vec<String> = data_files(&root)
        .unwrap()
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["a.json", "b.jsonl", "c/d.parquet"]);

    let one = write(dir.path(), "all.jsonl", &jsonl(&all));
    assert_eq!(values_of(&root), all);
    assert_eq!(rows_of(&root), rows_of(&one));

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    write(&empty, "readme.md", "nothing");
    let msg = data_files(&empty).unwrap_err().to_string();
    assert!(msg.contains("no .jsonl"), "{msg}");
}

fn config(train: PathBuf) -> DataConfig {
    DataConfig {
        train: vec![train],
        eval: Vec::new(),
        eval_split: 0.0,
        format: DatasetFormat::Auto,
        template: TemplateChoice::Tokenizer,
        sft: SftOptions::default(),
        max_seq_len: 64,
        packing: true,
        overflow: Overflow::Truncate,
        skip_bad_rows: false,
        seed: 0,
        cache_dir: None,
    }
}

#[test]
fn pipeline_on_a_folder_equals_pipeline_on_jsonl() {
    let tdir = common::chatml_dir();
    let tok = Tokenizer::from_dir(tdir.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(fixture("messages.parquet"), root.join("2.parquet")).unwrap();
    std::fs::copy(fixture("prompt_completion.parquet"), root.join("1.parquet")).unwrap();
    write(
        &root,
        "0.json",
        &serde_json::to_string(&mixed_rows()).unwrap(),
    );
    let all = [mixed_rows(), prompt_completion_rows(), messages_rows()].concat();
    let one = write(dir.path(), "all.jsonl", &jsonl(&all));

    let a = prepare(&tok, &config(root)).unwrap();
    let b = prepare(&tok, &config(one)).unwrap();
    assert_eq!(a.train_stats.rows_read, all.len());
    assert_eq!(a.train_examples, b.train_examples);
    assert_eq!(a.train, b.train);
    assert_eq!(a.train_stats, b.train_stats);
}
