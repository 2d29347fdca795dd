//! The JSONL reader: accepted shapes and errors that point at the line.

use std::path::Path;

use temper_data::{read_jsonl, DataError, Message, Row};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn reads_all_row_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ok.jsonl",
        concat!(
            "{\"text\": \"hello\", \"id\": 3}\n",
            "\n",
            "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n",
            "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"a\"}]}",
        ),
    );
    let rows = read_jsonl(&path).unwrap();
    assert_eq!(
        rows,
        vec![
            Row::Text("hello".into()),
            Row::PromptCompletion {
                prompt: "2+2=".into(),
                completion: "4".into()
            },
            Row::Messages(vec![
                Message::new("user", "hi"),
                Message::new("assistant", "yo")
            ]),
            Row::Conversation {
                prompt: vec![Message::new("user", "q")],
                completion: vec![Message::new("assistant", "a")]
            },
        ]
    );
}

fn error_for(line: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "data.jsonl",
        &format!("{{\"text\": \"fine\"}}\n\n{line}\n{{\"text\": \"fine\"}}\n"),
    );
    let err = read_jsonl(&path).unwrap_err();
    assert!(matches!(err, DataError::BadLine { line: 3, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("data.jsonl:3:"), "{msg}");
    msg
}

#[test]
fn bad_lines_name_file_line_and_field() {
    assert!(error_for("{\"text\": 1}").contains("\"text\" must be a string, got a number"));
    assert!(error_for("{\"txt\": \"a\"}").contains("found keys [txt]"));
    assert!(error_for("{\"text\": \"a\"").contains("invalid JSON at column"));
    assert!(error_for("[1, 2]").contains("expected a JSON object"));
    assert!(error_for("{\"prompt\": \"a\"}").contains("\"prompt\" without \"completion\""));
    let m = error_for("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": null}]}");
    assert!(
        m.contains("messages[1].content must be a string, got null"),
        "{m}"
    );
    let m = error_for("{\"messages\": [{\"content\": \"a\"}]}");
    assert!(m.contains("messages[0] has no \"role\""), "{m}");
    let m = error_for("{\"messages\": \"hi\"}");
    assert!(m.contains("\"messages\" must be a list"), "{m}");
}

#[test]
fn missing_file_names_the_path() {
    let err = read_jsonl(Path::new("/nonexistent/train.jsonl")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/train.jsonl"),
        "{err}"
    );
}
