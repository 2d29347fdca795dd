//! Chat templates: the Jinja templates of `tokenizer_config.json`, rendered the way
//! Hugging Face transformers renders them (`apply_chat_template`).
//!
//! transformers uses `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[loopcontrols])`, adds `raise_exception`, `strftime_now` and a `tojson`
//! filter, and passes `messages`, `tools=None`, `documents=None`, `add_generation_prompt`
//! and the special tokens (`bos_token`, `eos_token`, ...) as variables. Python string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s pycompat layer. Not supported: the `{% generation %}` tag.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};
use minijinja::{Environment, Error, ErrorKind};

use crate::error::{DataError, Result};
use crate::rows::Message;

const NAME: &str = "chat_template";

/// A compiled chat template plus the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// (variable name, value): bos_token, eos_token, pad_token, unk_token, ...
    vars: Vec<(String, String)>,
}

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
        env.add_template_owned(NAME, source.to_string())
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
            vars,
        })
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

    /// Renders a conversation. A template error, including `raise_exception(...)`,
    /// is returned as [`DataError::Template`] with the template's message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| DataError::Template(format!("{e:#}")))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObj(m.clone())))
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
        tmpl.render(Value::from_object(ctx))
            .map_err(|e| DataError::Template(render_error(&e)))
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

/// A message as a Jinja mapping whose keys iterate in Python's insertion order
/// (`role`, then `content`), so `message | tojson` matches transformers.
#[derive(Debug)]
struct MessageObj(Message);

impl Object for MessageObj {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
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
