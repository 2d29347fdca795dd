//! Dataset files -> JSON records, each knowing the file and line (or row) it came from.
//!
//! Accepted: `.jsonl` (one object a line), `.json` (a list of objects, or an object
//! whose `"data"` is one), `.parquet`, and folders of them (read in name order,
//! recursively), or a Hub dataset id (`owner/name`) found in the local Hugging Face cache
//! (see [`crate::hub`]). A Hugging Face `save_to_disk` folder (`state.json` +
//! `data-*.arrow`) is read through its arrow files.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{DataError, Result};

/// Where a record came from: a file and a 1-based line (JSONL) or a 1-based row
/// (JSON lists, parquet, arrow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: Arc<Path>,
    pub line: usize,
    pub is_line: bool,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_line {
            write!(f, "{}:{}", self.path.display(), self.line)
        } else {
            write!(f, "{}: row {}", self.path.display(), self.line)
        }
    }
}

/// One row of a dataset file as JSON, or why it could not be parsed.
#[derive(Debug, Clone)]
pub struct Record {
    pub origin: Origin,
    pub value: std::result::Result<Value, String>,
}

/// Data files of a source: the file itself, or the dataset files in a folder (sorted by
/// path, recursively; hidden files and `*.json` metadata of `save_to_disk` folders are
/// skipped).
pub fn data_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() && crate::hub::looks_like_hub_id(path) {
        let cache = crate::hub::hub_cache_dir().ok_or_else(|| DataError::Config {
            path: path.to_path_buf(),
            message: "no such file; as a Hub dataset id it needs HF_HUB_CACHE, HF_HOME or HOME to find the local cache".into(),
        })?;
        let id = path.to_string_lossy();
        return data_files(&crate::hub::resolve_in(&cache, &id)?);
    }
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Config {
                path: path.to_path_buf(),
                message: "no such file or folder".into(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    collect(path, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(DataError::Config {
            path: path.to_path_buf(),
            message: "the folder holds no .jsonl, .json, .parquet or .arrow files".into(),
        });
    }
    Ok(out)
}

const METADATA: &[&str] = &[
    "dataset_info.json",
    "state.json",
    "dataset_dict.json",
    "dataset_infos.json",
];

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || METADATA.contains(&name) {
            continue;
        }
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            extension(&p).as_str(),
            "jsonl" | "json" | "parquet" | "arrow"
        ) {
            out.push(p);
        }
    }
    Ok(())
}

fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Every record of one file or folder, in order.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for f in data_files(path)? {
        out.extend(read_file(&f)?);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<Record>> {
    match extension(path).as_str() {
        "json" => read_json(path),
        "parquet" => crate::columnar::read_parquet(path),
        "arrow" => crate::columnar::read_arrow(path),
        _ => read_jsonl_records(path),
    }
}

/// The UTF-8 byte order mark some editors write first; JSON readers skip it.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// A whole file as UTF-8 text (a leading byte order mark removed); invalid UTF-8 is an
/// error naming the line.
fn read_bytes(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let body = bytes.strip_prefix(BOM).unwrap_or(&bytes);
    match std::str::from_utf8(body) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let at = e.valid_up_to();
            let line = body[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(DataError::BadLine {
                path: path.to_path_buf(),
                line,
                message: not_utf8(&body[..at], at),
            })
        }
    }
}

/// Why a line is not text: where its first invalid byte is.
fn not_utf8(before: &[u8], at: usize) -> String {
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!(
        "not valid UTF-8 (byte {col} of the line, offset {at} in the file): dataset files must \
         be UTF-8; convert the file (e.g. `iconv -f latin1 -t utf-8`)"
    )
}

/// JSONL, lines parsed in parallel. Blank lines are skipped; a line that is not UTF-8 is a
/// bad row (named by its line) rather than an error for the whole file.
fn read_jsonl_records(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let body = bytes.strip_prefix(BOM).unwrap_or(&bytes);
    let shared: Arc<Path> = Arc::from(path);
    let lines: Vec<(usize, &[u8])> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .collect();
    Ok(lines
        .par_iter()
        .map(|&(i, line)| Record {
            origin: Origin {
                path: shared.clone(),
                line: i + 1,
                is_line: true,
            },
            value: match std::str::from_utf8(line) {
                Ok(text) => serde_json::from_str(text).map_err(|e| {
                    let msg = json_error(&e);
                    match lone_surrogate(text) {
                        Some(esc) => format!(
                            "{msg}: `{esc}` is a lone UTF-16 surrogate (a \\uD800-\\uDBFF \
                             escape must be followed by a \\uDC00-\\uDFFF one), which is not \
                             a character: fix or remove the escape"
                        ),
                        None => msg,
                    }
                }),
                Err(e) => {
                    let at = e.valid_up_to();
                    Err(format!(
                        "not valid UTF-8 (byte {} of the line): dataset files must be UTF-8; \
                         convert the file (e.g. `iconv -f latin1 -t utf-8`)",
                        at + 1
                    ))
                }
            },
        })
        .collect())
}

/// A JSON list of rows, or `{"data": [...]}` (or any object with exactly one list).
fn read_json(path: &Path) -> Result<Vec<Record>> {
    let text = read_bytes(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DataError::BadLine {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("invalid JSON: {e}"),
    })?;
    let list = match value {
        Value::Array(a) => a,
        Value::Object(mut o) => {
            let key = if o.contains_key("data") {
                Some("data".to_string())
            } else {
                let lists: Vec<&String> = o
                    .iter()
                    .filter(|(_, v)| v.is_array())
                    .map(|(k, _)| k)
                    .collect();
                (lists.len() == 1).then(|| lists[0].clone())
            };
            match key.and_then(|k| o.remove(&k)) {
                Some(Value::Array(a)) => a,
                _ => {
                    return Err(DataError::Config {
                        path: path.to_path_buf(),
                        message: "expected a JSON list of rows or an object with a \"data\" list"
                            .into(),
                    })
                }
            }
        }
        _ => {
            return Err(DataError::Config {
                path: path.to_path_buf(),
                message: "expected a JSON list of rows or an object with a \"data\" list".into(),
            })
        }
    };
    let shared: Arc<Path> = Arc::from(path);
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, value)| Record {
            origin: Origin {
                path: shared.clone(),
                line: i + 1,
                is_line: false,
            },
            value: Ok(value),
        })
        .collect())
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

/// The first `\uXXXX` escape of `text` that is a surrogate without its pair, if any.
fn lone_surrogate(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        let s = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\\' {
            if b[i + 1] == b'u' {
                if let Some(v) = hex(i + 2) {
                    let esc = || String::from_utf8_lossy(&b[i..i + 6]).into_owned();
                    if (0xd800..0xdc00).contains(&v) {
                        let paired = b.get(i + 6) == Some(&b'\\')
                            && b.get(i + 7) == Some(&b'u')
                            && hex(i + 8).is_some_and(|w| (0xdc00..0xe000).contains(&w));
                        if !paired {
                            return Some(esc());
                        }
                        i += 12;
                        continue;
                    }
                    if (0xdc00..0xe000).contains(&v) {
                        return Some(esc());
                    }
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}
