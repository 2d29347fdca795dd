//! Dataset rows and the JSONL reader.
//!
//! One JSON object a line, in one of the shapes TRL's SFTTrainer accepts:
//! `{"text": ..}`, `{"prompt": .., "completion": ..}`, `{"messages": [{"role", "content"}, ..]}`,
//! and the conversational prompt/completion `{"prompt": [messages], "completion": [messages]}`
//! (read as one conversation). Other keys on a line are ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};

/// One chat turn. Keys other than `role` and `content` (e.g. `name`, `tool_calls`) are
/// not kept, so templates never see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// One training example before tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Plain text: every token is trained.
    Text(String),
    /// Only the completion is trained.
    PromptCompletion { prompt: String, completion: String },
    /// A conversation rendered with the chat template: only assistant turns are trained.
    Messages(Vec<Message>),
}

/// Reads a JSONL dataset. Blank lines are skipped; any other line that is not one of
/// the shapes above is an error naming the file, the 1-based line and what was expected.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(json_error(&e)))?;
        rows.push(parse_row(&value).map_err(bad)?);
    }
    Ok(rows)
}

/// serde_json's message without its " at line 1 column N" tail (every line is line 1
/// to it), with the column kept.
fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let msg = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    format!("invalid JSON at column {}: {msg}", e.column())
}

/// Turns one parsed JSON object into a [`Row`]; the error says which field is wrong
/// and what was expected.
pub fn parse_row(value: &Value) -> std::result::Result<Row, String> {
    let Some(obj) = value.as_object() else {
        return Err(format!("expected a JSON object, got {}", json_kind(value)));
    };
    if let Some(messages) = obj.get("messages") {
        return Ok(Row::Messages(parse_messages(messages, "messages")?));
    }
    match (obj.get("prompt"), obj.get("completion")) {
        (Some(Value::String(prompt)), Some(Value::String(completion))) => {
            return Ok(Row::PromptCompletion {
                prompt: prompt.clone(),
                completion: completion.clone(),
            })
        }
        (Some(p @ Value::Array(_)), Some(c @ Value::Array(_))) => {
            let mut messages = parse_messages(p, "prompt")?;
            messages.extend(parse_messages(c, "completion")?);
            return Ok(Row::Messages(messages));
        }
        (Some(p), Some(c)) => {
            return Err(format!(
                "\"prompt\" and \"completion\" must both be strings (or both lists of \
                 messages), got {} and {}",
                json_kind(p),
                json_kind(c)
            ))
        }
        (Some(_), None) => return Err("\"prompt\" without \"completion\"".to_string()),
        (None, Some(_)) => return Err("\"completion\" without \"prompt\"".to_string()),
        (None, None) => {}
    }
    match obj.get("text") {
        Some(Value::String(text)) => Ok(Row::Text(text.clone())),
        Some(other) => Err(format!(
            "\"text\" must be a string, got {}",
            json_kind(other)
        )),
        None => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            Err(format!(
                "expected a \"text\", \"prompt\" + \"completion\", or \"messages\" field; \
                 found keys [{}]",
                keys.join(", ")
            ))
        }
    }
}

fn parse_messages(value: &Value, field: &str) -> std::result::Result<Vec<Message>, String> {
    let Some(list) = value.as_array() else {
        return Err(format!(
            "\"{field}\" must be a list of {{\"role\", \"content\"}} objects, got {}",
            json_kind(value)
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let get = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!(
                    "{field}[{i}].{key} must be a string, got {}",
                    json_kind(other)
                )),
                None if m.is_object() => Err(format!("{field}[{i}] has no \"{key}\"")),
                None => Err(format!(
                    "{field}[{i}] must be an object with \"role\" and \"content\", got {}",
                    json_kind(m)
                )),
            };
            Ok(Message {
                role: get("role")?,
                content: get("content")?,
            })
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
