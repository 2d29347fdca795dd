use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: not a readable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{dir}: no tensor named `{name}` in the model's safetensors files{hint}")]
    MissingTensor {
        dir: PathBuf,
        name: String,
        hint: String,
    },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?} (from config.json)")]
    Shape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` is stored as {dtype}; temper reads {expected} here")]
    Dtype {
        name: String,
        dtype: String,
        expected: &'static str,
    },
    #[error("tensor `{name}`: {msg}")]
    Quantize { name: String, msg: String },
    #[error("{path}: tensor `{name}` holds a non-finite value ({value}) at index {index}: the file is damaged or was saved from a diverged run; {fix}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
        fix: &'static str,
    },
    #[error("load options: {0}")]
    LoadOptions(String),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error(transparent)]
    Core(#[from] temper_core::CoreError),
    #[error(transparent)]
    Quant(#[from] temper_quant::QuantError),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}
