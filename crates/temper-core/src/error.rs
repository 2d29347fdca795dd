use thiserror::Error;

/// Errors raised by backends and ops. Each names the op and the sizes involved.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("{op}: buffer `{name}` holds {got} elements, expected {expected}")]
    Size {
        op: &'static str,
        name: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("device: {0}")]
    Device(String),
    /// A quantised format's own check (temper-quant).
    #[error(transparent)]
    Quant(#[from] temper_quant::QuantError),
}

pub type Result<T> = std::result::Result<T, CoreError>;

/// Checks that a buffer has exactly `expected` elements.
pub fn check_len(op: &'static str, name: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(CoreError::Size {
            op,
            name,
            got,
            expected,
        })
    }
}
