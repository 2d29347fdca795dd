//! Dataset rows: the shapes TRL's SFTTrainer accepts, parsed from one JSON object.
//!
//! `{"text": ..}`, `{"prompt": "..", "completion": ".."}`, `{"messages": [{"role", "content"}, ..]}`
//! and the conversational prompt/completion `{"prompt": [messages], "completion": [messages]}`.
//! Other keys on a row are ignored. Mappings from other layouts (alpaca, sharegpt) are in
//! [`crate::format`]; the files they come from are read by [`crate::source`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{DataError, Result};
use crate::source::read_records;

/// One chat turn. Keys other than `role` and `content` (`name`, `tool_calls`,
/// `tool_call_id`, `reasoning_content`, ...) are kept in `extra` and handed to the chat
/// template as they are. A `null` content (an assistant turn that only calls tools) is
/// read as the empty string.
///
/// Content given as a list of parts (Hugging Face's `[{"type": "text", "text": ..}]`, or
/// LLaMA-Factory's `[{"type": "text", "value": ..}]`) keeps each text part in `parts`;
/// `content` is then their concatenation, which is what a template that iterates the parts
/// writes. Templates that test `content is string` are given the parts as a list (see
/// [`crate::ChatTemplate`]). Other part types (images, audio) are refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The text parts when the content was a list of parts.
    #[serde(skip)]
    pub parts: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            parts: None,
            extra: Map::new(),
        }
    }
}

/// One training example before tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// Plain text: every token is trained.
    Text(String),
    /// Plain prompt and completion: with completion-only loss, only the completion (and
    /// its EOS) is trained.
    PromptCompletion { prompt: String, completion: String },
    /// A conversation split into prompt turns and completion turns (TRL's conversational
    /// prompt-completion): with completion-only loss, only what the completion adds to
    /// the prompt rendered with the generation prompt is trained.
    Conversation {
        prompt: Vec<Message>,
        completion: Vec<Message>,
    },
    /// A conversation rendered with the chat template.
    Messages(Vec<Message>),
}

impl Row {
    /// True for rows rendered with a chat template.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Row::Conversation { .. } | Row::Messages(_))
    }
}

/// Reads a JSONL dataset. Blank lines are skipped; any other line that is not one of
/// the shapes above is an error naming the file, the 1-based line and what was expected.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    read_records(path)?
        .into_iter()
        .map(|r| {
            r.value
                .and_then(|v| parse_row(&v))
                .map_err(|message| DataError::BadLine {
                    path: r.origin.path.to_path_buf(),
                    line: r.origin.line,
                    message,
                })
        })
        .collect()
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
            return Ok(Row::Conversation {
                prompt: parse_messages(p, "prompt")?,
                completion: parse_messages(c, "completion")?,
            });
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
                 found keys [{}] (alpaca and sharegpt rows need `dataset_format`)",
                keys.join(", ")
            ))
        }
    }
}

/// A list of `{"role", "content", ...}` objects. `field` names the list in errors.
pub(crate) fn parse_messages(
    value: &Value,
    field: &str,
) -> std::result::Result<Vec<Message>, String> {
    let Some(list) = value.as_array() else {
        return Err(format!(
            "\"{field}\" must be a list of {{\"role\", \"content\"}} objects, got {}",
            json_kind(value)
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let Some(obj) = m.as_object() else {
                return Err(format!(
                    "{field}[{i}] must be an object with \"role\" and \"content\", got {}",
                    json_kind(m)
                ));
            };
            let role = match obj.get("role") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(format!(
                        "{field}[{i}].role must be a string, got {}",
                        json_kind(other)
                    ))
                }
                None => return Err(format!("{field}[{i}] has no \"role\"")),
            };
            let mut parts = None;
            let content = match obj.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) => {
                    let texts = text_parts(list, &format!("{field}[{i}].content"))?;
                    let joined = texts.concat();
                    parts = Some(texts);
                    joined
                }
                // An assistant turn that only calls tools.
                Some(Value::Null) | None if obj.contains_key("tool_calls") => String::new(),
                Some(other) => {
                    return Err(format!(
                        "{field}[{i}].content must be a string, got {} (or a list of \
                         {{\"type\": \"text\", \"text\": ..}} parts)",
                        json_kind(other)
                    ))
                }
                None => return Err(format!("{field}[{i}] has no \"content\"")),
            };
            let extra = obj
                .iter()
                .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "content")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Ok(Message {
                role,
                content,
                parts,
                extra,
            })
        })
        .collect()
}

/// The texts of a content list: Hugging Face's `{"type": "text", "text": ..}` parts or
/// LLaMA-Factory's `{"type": "text", "value": ..}`. `at` names the list in errors.
fn text_parts(list: &[Value], at: &str) -> std::result::Result<Vec<String>, String> {
    list.iter()
        .enumerate()
        .map(|(j, part)| {
            let Some(obj) = part.as_object() else {
                return Err(format!(
                    "{at}[{j}] must be an object like {{\"type\": \"text\", \"text\": ..}}, got {}",
                    json_kind(part)
                ));
            };
            match obj.get("type").and_then(Value::as_str) {
                Some("text") | None => {}
                Some(other) => {
                    return Err(format!(
                        "{at}[{j}] is a part of type \"{other}\": only text parts can be \
                         trained on (drop the other parts, or keep their rows out of the data)"
                    ))
                }
            }
            match obj.get("text").or_else(|| obj.get("value")) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!(
                    "{at}[{j}].text must be a string, got {}",
                    json_kind(other)
                )),
                None => Err(format!(
                    "{at}[{j}] has no \"text\" (or LLaMA-Factory's \"value\")"
                )),
            }
        })
        .collect()
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
