use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] temper_model::ModelError),
    #[error(transparent)]
    Core(#[from] temper_core::CoreError),
    #[error(transparent)]
    Quant(#[from] temper_quant::QuantError),
    #[error(transparent)]
    Data(#[from] temper_data::DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{0}")]
    Config(String),
    #[error("loss is {loss} at step {step}: {why}")]
    NonFinite { step: u64, loss: f64, why: String },
    /// LoRA weights or optimizer state became NaN or infinite: nothing is saved.
    #[error("after step {step}: {why}; no checkpoint or adapter was written for it")]
    NonFiniteState { step: u64, why: String },
    /// A failure of data-parallel training: rendezvous, a lost or hung rank, NCCL.
    #[error("{0}")]
    Distributed(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
