//! temper-train: optimizers, learning-rate schedules, the training loop, checkpoints and resume,
//! and data parallelism over ranks (threads, processes over TCP, or GPUs over NCCL).

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod loss_scale;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use dist::collective::{Collective, HostCollective, Single};
pub use dist::in_process::InProcess;
pub use dist::nccl::{Nccl, NcclDevice};
pub use dist::rendezvous::RendezvousConfig;
pub use dist::tcp::Tcp;
pub use error::{Result, TrainError};
pub use loss_scale::LossScaler;
pub use optimizer::{AdamW, AdamWConfig, Moment8, Moments, MIN_8BIT_SIZE};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    eval_loss, train, train_eval, train_with, EvalEvery, EvalOptions, EvalReport, Observer, Silent,
    StepReport, TrainSettings, TrainSummary,
};
