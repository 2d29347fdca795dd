//! Errors of temper-quant: each names the operation or the file, and what to do about it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(
        "{op}: blocksize {blocksize} is not supported; use a power of two from 32 to 4096 \
         (bitsandbytes' sizes; 64 is the default)"
    )]
    Blocksize { op: &'static str, blocksize: usize },
    #[error("{op}: {what} has {got} elements, expected {expected}")]
    Length {
        op: &'static str,
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{op}: the input is empty")]
    Empty { op: &'static str },
    #[error("{op}: element {index} is {value}; only finite values can be quantised")]
    NonFinite {
        op: &'static str,
        index: usize,
        value: f32,
    },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a readable safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    /// A folder or file that is not what the operation needs; `msg` says what to do.
    #[error("{path}: {msg}")]
    Folder { path: PathBuf, msg: String },
    /// An 8-bit weight saved in a tiled layout (`weight_format` other than 0, row-major).
    #[error(
        "tensor `{name}`: weight_format {format:?}: only 0 (row-major) is read; the tiled \
         layouts of bitsandbytes before 0.45 are not (load and save the model again with a \
         current bitsandbytes)"
    )]
    WeightFormat { name: String, format: Vec<u8> },
    /// A tensor of a 4-bit checkpoint that is missing or malformed.
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
}

pub type Result<T, E = QuantError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuantError + '_ {
    move |source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `what` has exactly `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    got: usize,
    expected: usize,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(QuantError::Length {
            op,
            what,
            got,
            expected,
        })
    }
}

/// bitsandbytes' block sizes: powers of two from 32 to 4096.
pub(crate) fn check_blocksize(op: &'static str, blocksize: usize) -> Result<()> {
    if blocksize.is_power_of_two() && (32..=4096).contains(&blocksize) {
        Ok(())
    } else {
        Err(QuantError::Blocksize { op, blocksize })
    }
}

/// Finite input, as quantisation needs (a NaN or infinity would poison its block's absmax).
pub(crate) fn check_finite(op: &'static str, values: &[f32]) -> Result<()> {
    if values.is_empty() {
        return Err(QuantError::Empty { op });
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            op,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}
