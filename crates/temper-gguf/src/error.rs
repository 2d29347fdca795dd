//! Errors of temper-gguf: each names the file and what is wrong with it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a well-formed GGUF file.
    #[error("{path}: not a valid GGUF file: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Well-formed, but something temper cannot convert (an architecture, a tensor type).
    #[error("{path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    /// A metadata key the conversion needs is absent or of the wrong type.
    #[error("{path}: metadata key `{key}` {msg}")]
    Metadata {
        path: PathBuf,
        key: String,
        msg: String,
    },
    /// A tensor's bytes could not be dequantised.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GgufError + '_ {
    move |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    }
}
