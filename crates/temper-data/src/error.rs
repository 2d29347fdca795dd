//! The one error type of temper-data: every variant says which file (and line) or
//! which row it is about, so a user can find the bad input without a debugger.

use std::path::PathBuf;

/// Errors from reading datasets, tokenizers and chat templates.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line of a JSONL dataset is malformed.
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        message: String,
    },
    /// A tokenizer file (tokenizer.json, tokenizer_config.json, chat_template.jinja)
    /// is malformed or inconsistent.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The model folder has no chat template but a conversation needs one.
    #[error(
        "rows with \"messages\" need a chat template, but {} has no \"chat_template\" \
         (and there is no chat_template.jinja / chat_template.json beside it): a base model; \
         set `chat_template:` in the config to a template file, the template's text or \
         `chatml` (when the vocabulary has its tokens), or train on \"text\" or \"prompt\"/\"completion\" rows",
        dir.join("tokenizer_config.json").display()
    )]
    NoChatTemplate { dir: PathBuf },
    /// The `tokenizers` crate failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to compile or render (includes `raise_exception`).
    #[error("chat template: {0}")]
    Template(String),
    /// A chat template ran out of its budget: it fails the same way on every row.
    #[error("chat template: {0}")]
    TemplateLimit(String),
    /// A row cannot be turned into tokens (e.g. an assistant turn that cannot be located).
    #[error("{0}")]
    Row(String),
    /// An error about the row at `index` of a dataset.
    #[error("row {index}: {source}")]
    InRow {
        index: usize,
        #[source]
        source: Box<DataError>,
    },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
