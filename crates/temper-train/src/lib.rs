//! temper-train: optimizers, learning-rate schedules, the training loop, checkpoints and resume.

pub mod checkpoint;
pub mod error;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use error::{Result, TrainError};
pub use optimizer::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{train, Observer, Silent, StepReport, TrainSettings, TrainSummary};
