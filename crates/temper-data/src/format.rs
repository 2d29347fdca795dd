//! Row layouts other than TRL's, mapped onto [`Row`]: alpaca and sharegpt, named as in
//! LLaMA-Factory's `dataset_info.json` (`formatting: alpaca | sharegpt`).
//!
//! - alpaca: `instruction`, optional `input`, `output`, optional `system` and `history`
//!   (a list of `[query, answer]` pairs). The user turn is `instruction + "\n" + input`
//!   (empty parts dropped), the answer is trained as a completion: the row becomes a
//!   conversational prompt-completion.
//! - sharegpt: `conversations` (or `messages`) of `{"from", "value"}`, with `human`/`user`
//!   -> user, `gpt`/`assistant`/`model`/`function_call` -> assistant, `observation`/`tool`
//!   -> tool, `system` -> system; an optional `system` column is put first. The row
//!   becomes a conversation.
//!
//! With `auto`, a row with `conversations` of `from`/`value` objects is read as sharegpt
//! (TRL converts such rows too), anything else by [`parse_row`].

use serde_json::{Map, Value};

use crate::rows::{json_kind, parse_row, Message, Row};

/// How rows are laid out (the `dataset_format` config key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum DatasetFormat {
    #[default]
    Auto,
    Alpaca,
    ShareGpt,
}

impl DatasetFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "trl" => Some(DatasetFormat::Auto),
            "alpaca" => Some(DatasetFormat::Alpaca),
            "sharegpt" => Some(DatasetFormat::ShareGpt),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Auto => "auto",
            DatasetFormat::Alpaca => "alpaca",
            DatasetFormat::ShareGpt => "sharegpt",
        }
    }
}

/// One JSON object -> a [`Row`] in the given layout; the error names the field.
pub fn to_row(value: &Value, format: DatasetFormat) -> Result<Row, String> {
    match format {
        DatasetFormat::Auto => {
            if is_from_value(value) {
                sharegpt(value)
            } else {
                parse_row(value)
            }
        }
        DatasetFormat::Alpaca => alpaca(value),
        DatasetFormat::ShareGpt => sharegpt(value),
    }
}

fn is_from_value(value: &Value) -> bool {
    value
        .get("conversations")
        .and_then(Value::as_array)
        .and_then(|l| l.first())
        .is_some_and(|m| m.get("from").is_some() && m.get("value").is_some())
}

fn object(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", json_kind(value)))
}

fn string_field(obj: &Map<String, Value>, key: &str, required: bool) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None => Err(format!("alpaca row has no \"{key}\"")),
        Some(other) => Err(format!(
            "\"{key}\" must be a string, got {}",
            json_kind(other)
        )),
    }
}

fn alpaca(value: &Value) -> Result<Row, String> {
    let obj = object(value)?;
    let instruction = string_field(obj, "instruction", true)?;
    let input = string_field(obj, "input", false)?;
    let output = string_field(obj, "output", true)?;
    let system = string_field(obj, "system", false)?;
    let mut prompt = Vec::new();
    if !system.is_empty() {
        prompt.push(Message::new("system", system));
    }
    match obj.get("history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(turns)) => {
            for (i, t) in turns.iter().enumerate() {
                match t.as_array().map(Vec::as_slice) {
                    Some([Value::String(q), Value::String(a)]) => {
                        prompt.push(Message::new("user", q.clone()));
                        prompt.push(Message::new("assistant", a.clone()));
                    }
                    _ => return Err(format!("history[{i}] must be a [query, answer] pair")),
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "\"history\" must be a list of [query, answer] pairs, got {}",
                json_kind(other)
            ))
        }
    }
    let user: Vec<&str> = [instruction.as_str(), input.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    prompt.push(Message::new("user", user.join("\n")));
    Ok(Row::Conversation {
        prompt,
        completion: vec![Message::new("assistant", output)],
    })
}

fn sharegpt_role(from: &str) -> Option<&'static str> {
    Some(match from {
        "human" | "user" => "user",
        "gpt" | "assistant" | "model" | "function_call" => "assistant",
        "observation" | "tool" | "function" => "tool",
        "system" => "system",
        _ => return None,
    })
}

fn sharegpt(value: &Value) -> Result<Row, String> {
    let obj = object(value)?;
    let (field, list) = match (obj.get("conversations"), obj.get("messages")) {
        (Some(v), _) => ("conversations", v),
        (None, Some(v)) => ("messages", v),
        (None, None) => {
            return Err("sharegpt row has no \"conversations\" (or \"messages\") list".into())
        }
    };
    let Some(list) = list.as_array() else {
        return Err(format!(
            "\"{field}\" must be a list, got {}",
            json_kind(list)
        ));
    };
    let mut messages = Vec::new();
    match obj.get("system") {
        Some(Value::String(s)) if !s.is_empty() => messages.push(Message::new("system", s)),
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "\"system\" must be a string, got {}",
                json_kind(other)
            ))
        }
    }
    for (i, m) in list.iter().enumerate() {
        let from = match m.get("from").or_else(|| m.get("role")) {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(format!("{field}[{i}] has no string \"from\"")),
        };
        let role = sharegpt_role(from)
            .ok_or_else(|| format!("{field}[{i}].from: unknown role {from:?}"))?;
        let text = match m.get("value").or_else(|| m.get("content")) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(format!(
                    "{field}[{i}].value must be a string, got {}",
                    json_kind(other)
                ))
            }
            None => return Err(format!("{field}[{i}] has no \"value\"")),
        };
        messages.push(Message::new(role, text));
    }
    Ok(Row::Messages(messages))
}
