//! Chat templates: the Jinja templates of `tokenizer_config.json`, rendered the way
//! Hugging Face transformers renders them (`apply_chat_template`).
//!
//! transformers uses `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[loopcontrols])`, adds `raise_exception`, `strftime_now` and a `tojson`
//! filter, and passes `messages`, `tools=None`, `documents=None`, `add_generation_prompt`
//! and the special tokens (`bos_token`, `eos_token`, ...) as variables. Python string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s pycompat layer.
//!
//! `{% generation %}...{% endgeneration %}` (transformers' `AssistantTracker`) is
//! supported by rewriting the tags into a filter block (`{% filter .. %}`, same
//! whitespace control) whose filter wraps its body in two Unicode noncharacters;
//! [`ChatTemplate::render_tracked`] removes them and returns the byte ranges they
//! enclosed.

use std::ops::Range;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::{DataError, Result};
use crate::rows::Message;

const NAME: &str = "chat_template";
const GEN_FILTER: &str = "__temper_generation";
/// U+FDD0 and U+FDD1 are Unicode noncharacters: never part of interchanged text.
const GEN_OPEN: char = '\u{FDD0}';
const GEN_CLOSE: char = '\u{FDD1}';

/// A ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`) whose assistant turns,
/// with their `<|im_end|>`, are generation blocks. Used only when the config asks for it.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' }}\
{%- if message['role'] == 'assistant' %}\
{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}\
{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// A compiled chat template plus the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    has_generation: bool,
    /// True when the template handles list content itself (it tests `content is string`,
    /// as multimodal templates do): messages whose content was a list of parts are given
    /// to it as `[{"type": "text", "text": ..}]`, as transformers passes them.
    takes_parts: bool,
    /// (variable name, value): bos_token, eos_token, pad_token, unk_token, ...
    vars: Vec<(String, String)>,
    /// Where the template came from, for errors ("the chat_template of FILE").
    origin: String,
}

/// The work one render may do, in minijinja's fuel: about one unit per instruction or per
/// 64 bytes of data made. 1M bounds a render to 64 MiB of strings, still 50 times what a
/// real chat template makes for a long conversation. It is below 100 MB on purpose:
/// minijinja checks a string repetition against the fuel left before allocating it, so
/// `'x' * 100000000` (the largest repetition minijinja allows) is refused at once, where
/// with 2M it was made for every render and took seconds over a few rows.
pub const TEMPLATE_FUEL: u64 = 1 << 20;

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_chars", &self.source.len())
            .field("vars", &self.vars)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos` / `eos` become the `bos_token` / `eos_token` variables
    /// (left undefined when `None`, as transformers does for unset special tokens).
    pub fn new(source: &str, bos: Option<String>, eos: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(
            syntax
                .build()
                .map_err(|e| DataError::Template(format!("{e:#}")))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        let now = civil_now();
        env.add_function("strftime_now", move |fmt: &str| -> String {
            strftime(fmt, &now)
        });
        env.add_filter("tojson", crate::pyjson::tojson);
        env.add_filter(GEN_FILTER, |body: String| -> String {
            format!("{GEN_OPEN}{body}{GEN_CLOSE}")
        });
        let (rewritten, has_generation) = rewrite_generation_tags(source);
        env.add_template_owned(NAME, rewritten)
            .map_err(|e| DataError::Template(format!("cannot compile: {e:#}")))?;
        let mut vars = Vec::new();
        if let Some(b) = bos {
            vars.push(("bos_token".to_string(), b));
        }
        if let Some(e) = eos {
            vars.push(("eos_token".to_string(), e));
        }
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            has_generation,
            takes_parts: takes_parts(source),
            vars,
            origin: "the chat template".to_string(),
        })
    }

    /// Names where the template came from in render errors, e.g. "the chat_template of
    /// model/tokenizer_config.json".
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// Adds or replaces a string variable, e.g. `("pad_token", "<pad>")`.
    pub fn with_var(mut self, name: &str, value: &str) -> Self {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the template has `{% generation %}` blocks (as TRL's
    /// `has_generation_markers`, whitespace-control variants included).
    pub fn has_generation_markers(&self) -> bool {
        self.has_generation
    }

    /// Renders a conversation. A template error, including `raise_exception(...)`,
    /// is returned as [`DataError::Template`] with the template's message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        Ok(self.render_tracked(messages, add_generation_prompt)?.0)
    }

    /// Renders a conversation and returns the byte ranges of the output that
    /// `{% generation %}` blocks produced, in order (empty without such blocks).
    pub fn render_tracked(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<Range<usize>>)> {
        let raw = self.render_raw(messages, add_generation_prompt)?;
        if !self.has_generation {
            return Ok((raw, Vec::new()));
        }
        let mut out = String::with_capacity(raw.len());
        let mut open: Vec<usize> = Vec::new();
        let mut spans = Vec::new();
        for c in raw.chars() {
            match c {
                GEN_OPEN => open.push(out.len()),
                GEN_CLOSE => {
                    if let Some(start) = open.pop() {
                        if open.is_empty() {
                            spans.push(start..out.len());
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Ok((out, spans))
    }

    fn render_raw(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| DataError::Template(format!("{e:#}")))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObj(m.clone(), self.takes_parts)))
            .collect();
        let mut ctx: Vec<(String, Value)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.push(("messages".to_string(), Value::from(msgs)));
        ctx.push((
            "add_generation_prompt".to_string(),
            Value::from(add_generation_prompt),
        ));
        ctx.push(("tools".to_string(), Value::from(())));
        ctx.push(("documents".to_string(), Value::from(())));
        let ctx: std::collections::BTreeMap<String, Value> = ctx.into_iter().collect();
        tmpl.render(Value::from_object(ctx)).map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel {
                DataError::TemplateLimit(format!(
                    "{}: rendering one conversation took more than its budget ({TEMPLATE_FUEL} \
                     steps or {} MiB of text): the template loops or grows a string without \
                     bound; fix it or set the chat_template key to another template",
                    self.origin,
                    (TEMPLATE_FUEL * 64) >> 20
                ))
            } else {
                DataError::Template(render_error(&e))
            }
        })
    }
}

/// minijinja's message, plus the template's own text for `raise_exception`.
fn render_error(e: &Error) -> String {
    if e.kind() == ErrorKind::InvalidOperation {
        if let Some(detail) = e.detail() {
            if let Some(msg) = detail.strip_prefix(RAISED) {
                return msg.to_string();
            }
        }
    }
    format!("{e:#}")
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{msg}"),
    ))
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any `-`/`+` whitespace
/// control) into `{% filter __temper_generation %}` / `{% endfilter %}`. Returns the new
/// source and whether any tag was found.
fn rewrite_generation_tags(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut found = false;
    let mut rest = source;
    while let Some(k) = rest.find("{%") {
        out.push_str(&rest[..k]);
        let tag = &rest[k..];
        // The closing `%}` comes after the opening `{%` (in `{%}` they overlap).
        let Some(end) = tag[2..].find("%}").map(|e| e + 2) else {
            out.push_str(tag);
            return (out, found);
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.trim_end().chars().last() {
            Some(c @ ('-' | '+')) => {
                let t = body.trim_end();
                (&t[..t.len() - 1], c.to_string())
            }
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => {
                found = true;
                out.push_str(&format!("{{%{lead} filter {GEN_FILTER} {trail}%}}"));
            }
            "endgeneration" => out.push_str(&format!("{{%{lead} endfilter {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    (out, found)
}

/// Whether a template iterates list content itself: it tests the content's type
/// (`is string`, `is not string`, `is iterable`) or reads a part's `type`.
fn takes_parts(source: &str) -> bool {
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    [
        "isstring",
        "isnotstring",
        "isiterable",
        "['type']",
        "[\"type\"]",
        ".type==",
    ]
    .iter()
    .any(|m| compact.contains(m))
}

/// A JSON value of a message's extra keys as a Jinja value.
fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        J::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// A message as a Jinja mapping whose keys iterate in Python's insertion order
/// (`role`, `content`, then any other keys of the row), so `message | tojson` matches
/// transformers. With the flag set, content given as parts is the list of parts.
#[derive(Debug)]
struct MessageObj(Message, bool);

impl Object for MessageObj {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(match (&self.0.parts, self.1) {
                (Some(parts), true) => Value::from(
                    parts
                        .iter()
                        .map(|t| {
                            let mut part = std::collections::BTreeMap::new();
                            part.insert("type", Value::from("text"));
                            part.insert("text", Value::from(t.as_str()));
                            Value::from(part)
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => Value::from(self.0.content.as_str()),
            }),
            other => self.0.extra.get(other).map(json_to_value),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        if self.0.extra.is_empty() {
            return Enumerator::Str(&["role", "content"]);
        }
        let mut keys = vec![Value::from("role"), Value::from("content")];
        keys.extend(self.0.extra.keys().map(|k| Value::from(k.as_str())));
        Enumerator::Values(keys)
    }
}

/// A UTC date and time, taken once when the template is built so every render of
/// one dataset (and every prefix rendered to find assistant spans) sees the same date.
#[derive(Debug, Clone, Copy)]
struct Civil {
    year: i64,
    month: u32,   // 1..=12
    day: u32,     // 1..=31
    weekday: u32, // 0 = Monday
    yday: u32,    // 1..=366
    hour: u32,
    minute: u32,
    second: u32,
}

fn civil_now() -> Civil {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    civil_from_unix(secs)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + u32::from(leap && month > 2);
    Civil {
        year,
        month,
        day,
        weekday: (days + 3).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
        yday,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
    }
}

/// The subset of C `strftime` that chat templates use (`%d %b %Y`, `%B`, `%A`, ...).
/// Unknown directives are copied as they are.
fn strftime(fmt: &str, t: &Civil) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month = MONTHS[(t.month - 1) as usize];
    let wday = DAYS[t.weekday as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's "%-d": no padding.
        let mut pad = true;
        let mut d = chars.next();
        if d == Some('-') {
            pad = false;
            d = chars.next();
        }
        let num = |v: u32, w: usize| {
            if pad {
                format!("{v:0w$}")
            } else {
                v.to_string()
            }
        };
        match d {
            Some('d') => out.push_str(&num(t.day, 2)),
            Some('m') => out.push_str(&num(t.month, 2)),
            Some('Y') => out.push_str(&t.year.to_string()),
            Some('y') => out.push_str(&num(t.year.rem_euclid(100) as u32, 2)),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&wday[..3]),
            Some('A') => out.push_str(wday),
            Some('H') => out.push_str(&num(t.hour, 2)),
            Some('M') => out.push_str(&num(t.minute, 2)),
            Some('S') => out.push_str(&num(t.second, 2)),
            Some('j') => out.push_str(&num(t.yday, 3)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if !pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday, day 208 of a leap year.
        let t = civil_from_unix(1_721_952_000);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.yday),
            (2024, 7, 26, 4, 208)
        );
        assert_eq!(strftime("%d %b %Y", &t), "26 Jul 2024");
        assert_eq!(strftime("%A %-d %B %y %j", &t), "Friday 26 July 24 208");
        let t = civil_from_unix(0);
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a", &t),
            "1970-01-01 00:00:00 Thu"
        );
        let t = civil_from_unix(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", &t), "2000-02-29 01:01:01");
    }
}
