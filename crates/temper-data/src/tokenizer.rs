//! A Hugging Face tokenizer folder: `tokenizer.json` (through the `tokenizers` crate)
//! plus `tokenizer_config.json` (special tokens, chat template, add_bos_token, ...).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::processors::template::TemplateProcessing;

use crate::error::{DataError, Result};
use crate::template::ChatTemplate;

/// A special token as named in tokenizer_config.json, with its id when the vocabulary
/// has it.
#[derive(Debug, Clone)]
struct Special {
    text: String,
    id: Option<u32>,
}

/// A tokenizer and what tokenizer_config.json says about it.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<Special>,
    eos: Option<Special>,
    pad: Option<Special>,
    chat_template: Option<ChatTemplate>,
    /// Contents of the added tokens marked special (e.g. `<|im_end|>`), longest first.
    special_texts: Vec<String>,
    clean_up_tokenization_spaces: bool,
    dir: PathBuf,
}

/// transformers classes whose `__init__` rebuilds the post-processor from
/// `add_bos_token` / `add_eos_token` (`LlamaTokenizerFast.update_post_processor`),
/// whatever tokenizer.json says. Defaults there: add_bos_token=True, add_eos_token=False.
const REBUILDS_POST_PROCESSOR: &[&str] = &[
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "CodeLlamaTokenizer",
    "CodeLlamaTokenizerFast",
    "GemmaTokenizer",
    "GemmaTokenizerFast",
];

impl Tokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`. The chat
    /// template comes from tokenizer_config.json's `chat_template` (a string, or a list of
    /// `{name, template}` of which "default" or else the first is used), else from
    /// `chat_template.jinja` or `chat_template.json` beside it.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let text = read(&tok_path)?;
        // Checked as JSON first: the tokenizers library panics on some malformed files
        // (a syntax error inside `decoder`) instead of returning an error.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| DataError::Config {
            path: tok_path.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>());
        let mut inner: tokenizers::Tokenizer = parsed
            .map_err(|_| DataError::Config {
                path: tok_path.clone(),
                message: "not a tokenizers file: the tokenizers library failed on it".into(),
            })?
            .map_err(|e| DataError::Config {
                path: tok_path.clone(),
                message: format!("not a tokenizers file: {e}"),
            })?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            serde_json::from_str(&read(&cfg_path)?).map_err(|e| DataError::Config {
                path: cfg_path.clone(),
                message: format!("invalid JSON: {e}"),
            })?
        } else {
            Value::Object(Default::default())
        };
        let cfg_err = |message: String| DataError::Config {
            path: cfg_path.clone(),
            message,
        };

        let special = |key: &str| -> Result<Option<Special>> {
            Ok(token_text(&cfg, key)
                .map_err(&cfg_err)?
                .map(|text| Special {
                    id: inner.token_to_id(&text),
                    text,
                }))
        };
        let bos = special("bos_token")?;
        let eos = special("eos_token")?;
        let pad = special("pad_token")?;
        let unk = special("unk_token")?;

        let class = cfg.get("tokenizer_class").and_then(Value::as_str);
        if class.is_some_and(|c| REBUILDS_POST_PROCESSOR.contains(&c)) {
            let flag =
                |key: &str, default: bool| cfg.get(key).and_then(Value::as_bool).unwrap_or(default);
            let pp = bos_eos_processor(
                flag("add_bos_token", true).then_some(&bos),
                flag("add_eos_token", false).then_some(&eos),
            )
            .map_err(&cfg_err)?;
            inner.with_post_processor(Some(pp));
        }

        let source = chat_template_source(dir, &cfg).map_err(&cfg_err)?;
        let chat_template = match source {
            None => None,
            Some(src) => {
                let mut t = ChatTemplate::new(
                    &src,
                    bos.as_ref().map(|s| s.text.clone()),
                    eos.as_ref().map(|s| s.text.clone()),
                )
                .map_err(|e| cfg_err(e.to_string()))?
                .with_origin(format!("the chat template of {}", dir.display()));
                for (name, tok) in [("pad_token", &pad), ("unk_token", &unk)] {
                    if let Some(tok) = tok {
                        t = t.with_var(name, &tok.text);
                    }
                }
                Some(t)
            }
        };

        let mut special_texts: Vec<String> = inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .filter(|c| !c.is_empty())
            .collect();
        special_texts.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        special_texts.dedup();

        Ok(Tokenizer {
            inner,
            bos,
            eos,
            pad,
            chat_template,
            special_texts,
            clean_up_tokenization_spaces: cfg
                .get("clean_up_tokenization_spaces")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            dir: dir.to_path_buf(),
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, the post-processor of
    /// tokenizer.json (e.g. a BOS prefix) is applied, as `tokenizer(text)` does in
    /// transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encoding(text, add_special_tokens)?.get_ids().to_vec())
    }

    /// The full encoding (ids, byte offsets into `text`, special-token mask).
    pub(crate) fn encoding(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<tokenizers::Encoding> {
        self.inner
            .encode(text, add_special_tokens)
            .map_err(|e| DataError::Tokenizer(format!("cannot encode: {e}")))
    }

    /// Text of `ids`. `clean_up_tokenization_spaces` from tokenizer_config.json is
    /// honoured as transformers does (" ." -> ".", " n't" -> "n't", ...).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::Tokenizer(format!("cannot decode: {e}")))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Number of token ids, added tokens included (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().and_then(|s| s.id)
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().and_then(|s| s.id)
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().and_then(|s| s.id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|s| s.text.as_str())
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad.as_ref().map(|s| s.text.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|s| s.text.as_str())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Replaces the chat template (e.g. one given in the training config).
    pub fn set_chat_template(&mut self, template: Option<ChatTemplate>) {
        self.chat_template = template;
    }

    /// The folder this tokenizer was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Contents of the special added tokens, longest first.
    pub(crate) fn special_texts(&self) -> &[String] {
        &self.special_texts
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `"<s>"`, `{"content": "<s>", ...}` (an AddedToken) or `null`.
fn token_text(cfg: &Value, key: &str) -> std::result::Result<Option<String>, String> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!(
                "\"{key}\" is an object without a string \"content\""
            )),
        },
        Some(_) => Err(format!(
            "\"{key}\" must be a string or an object with \"content\""
        )),
    }
}

/// `update_post_processor` of LlamaTokenizerFast:
/// single = `[bos] $A [eos]`, pair = `[bos] $A [eos] [bos] $B:1 [eos]`.
fn bos_eos_processor(
    bos: Option<&Option<Special>>,
    eos: Option<&Option<Special>>,
) -> std::result::Result<TemplateProcessing, String> {
    let resolve = |tok: Option<&Option<Special>>,
                   name: &str|
     -> std::result::Result<Option<(String, u32)>, String> {
        match tok {
            None => Ok(None),
            Some(None) => Err(format!(
                "add_{name}_token is true but {name}_token is not set"
            )),
            Some(Some(s)) => match s.id {
                Some(id) => Ok(Some((s.text.clone(), id))),
                None => Err(format!(
                    "{name}_token {:?} is not in tokenizer.json's vocabulary",
                    s.text
                )),
            },
        }
    };
    let bos = resolve(bos, "bos")?;
    let eos = resolve(eos, "eos")?;
    let mut single = Vec::new();
    let mut pair = Vec::new();
    if let Some((b, _)) = &bos {
        single.push(format!("{b}:0"));
    }
    single.push("$A:0".to_string());
    if let Some((e, _)) = &eos {
        single.push(format!("{e}:0"));
    }
    pair.extend(single.iter().cloned());
    if let Some((b, _)) = &bos {
        pair.push(format!("{b}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((e, _)) = &eos {
        pair.push(format!("{e}:1"));
    }
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).collect();
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| format!("bad post-processor template: {e}"))?
        .try_pair(pair)
        .map_err(|e| format!("bad post-processor template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("bad post-processor: {e}"))
}

fn chat_template_source(dir: &Path, cfg: &Value) -> std::result::Result<Option<String>, String> {
    match cfg.get("chat_template") {
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find_map(|t| {
                    let name = t.get("name").and_then(Value::as_str);
                    let tmpl = t.get("template").and_then(Value::as_str)?;
                    (want.is_none() || name == want).then(|| tmpl.to_string())
                })
            };
            return match named(Some("default")).or_else(|| named(None)) {
                Some(t) => Ok(Some(t)),
                None => Err(
                    "\"chat_template\" is a list without any {\"name\", \"template\"} entry"
                        .to_string(),
                ),
            };
        }
        Some(Value::Null) | None => {}
        Some(_) => {
            return Err(
                "\"chat_template\" must be a string or a list of {\"name\", \"template\"}"
                    .to_string(),
            )
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| format!("cannot read {}: {e}", jinja.display()));
    }
    let json = dir.join("chat_template.json");
    if json.exists() {
        let text = std::fs::read_to_string(&json)
            .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid JSON: {e}", json.display()))?;
        return match v.get("chat_template") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!(
                "{} has no string \"chat_template\"",
                json.display()
            )),
        };
    }
    Ok(None)
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
