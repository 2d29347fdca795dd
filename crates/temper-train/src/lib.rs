//! temper-train: optimizers, learning-rate schedules, the training loop, checkpoints and resume,
//! evaluation and metrics.jsonl, and data parallelism over ranks (threads, processes over TCP,
//! or GPUs over NCCL).

mod batches;
pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod eval;
pub mod loss_scale;
mod metrics;
mod nonfinite;
pub mod optimizer;
mod report;
pub mod schedule;
mod setup;
mod step;
pub mod trainer;

pub use dist::collective::{Collective, HostCollective, Single};
pub use dist::in_process::InProcess;
pub use dist::nccl::{Nccl, NcclDevice};
pub use dist::rendezvous::RendezvousConfig;
pub use dist::tcp::Tcp;
pub use error::{Result, TrainError};
pub use eval::{
    eval_after_training, eval_loss, row_losses, EvalEvery, EvalOptions, EvalReport, RowLoss,
    RowLosses,
};
pub use loss_scale::LossScaler;
pub use optimizer::{AdamW, AdamWConfig, Moment8, Moments, MIN_8BIT_SIZE};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    train, train_eval, train_with, Observer, Silent, StepReport, TrainSettings, TrainSummary,
};
