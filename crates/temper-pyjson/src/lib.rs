//! temper-pyjson: JSON as Python's `json.dumps` writes it, the one place its rules live: for files
//! bitsandbytes and transformers compare byte for byte with their own (the quant_state blob,
//! `json.dumps(d)`: `", "` and `": "` separators, insertion order; config.json and the shard
//! index, `indent=2, sort_keys=True`) and for chat templates' `tojson` (temper-data walks
//! minijinja's values with these same float and string rules). Floats are Python's `repr`;
//! strings escape as `ensure_ascii` says.

use serde_json::Value;

/// Python's `repr(float)`: the shortest digits that read back to `x`, positional for
/// 1e-4 <= |x| < 1e16 (with `.0` when integral), else `d.ddde-05` / `1e+16`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// A JSON string literal with Python's escapes and `ensure_ascii=True`.
pub fn py_string(s: &str) -> String {
    py_string_as(s, true)
}

/// A JSON string literal with Python's escapes: control characters always as `\uXXXX`
/// (or their short forms), and with `ensure_ascii` everything outside space..`~` as UTF-16
/// `\uXXXX` units.
pub fn py_string_as(s: &str, ensure_ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        py_float_repr(n.as_f64().unwrap_or(f64::NAN))
    } else {
        n.to_string()
    }
}

/// `json.dumps(value, indent=2, sort_keys=True)`.
pub fn dumps_sorted_indent2(value: &Value) -> String {
    let mut out = String::new();
    write_pretty(&mut out, value, 0);
    out
}

fn write_pretty(out: &mut String, v: &Value, depth: usize) {
    let pad = |d: usize| "  ".repeat(d);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => out.push_str(&py_string(s)),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(a) => {
            out.push_str("[\n");
            for (i, x) in a.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                write_pretty(out, x, depth + 1);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push_str("{\n");
            for (i, k) in keys.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(&py_string(k));
                out.push_str(": ");
                write_pretty(out, &m[k.as_str()], depth + 1);
                out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (x, s) in [
            (0.0860280990600586, "0.0860280990600586"),
            (1e-05, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (10000.0, "10000.0"),
            (6.0, "6.0"),
            (1e16, "1e+16"),
            (1.25e17, "1.25e+17"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5, "-2.5"),
            (5e-324, "5e-324"),
            (2.634650707244873, "2.634650707244873"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn strings_escape_as_python_with_and_without_ensure_ascii() {
        assert_eq!(
            py_string_as("a\"b\\\n\u{1}é\u{7f}😀", true),
            r#""a\"b\\\n\u0001\u00e9\u007f\ud83d\ude00""#
        );
        assert_eq!(py_string_as("a\u{1}é\u{7f}", false), "\"a\\u0001é\u{7f}\"");
    }

    #[test]
    fn sorted_and_indented_like_json_dumps() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1, 2.0, {}], "a": {"y": null, "x": "é"}, "c": []}"#)
                .expect("json");
        assert_eq!(
            dumps_sorted_indent2(&v),
            "{\n  \"a\": {\n    \"x\": \"\\u00e9\",\n    \"y\": null\n  },\n  \"b\": [\n    1,\n    \
             2.0,\n    {}\n  ],\n  \"c\": []\n}"
        );
    }
}
