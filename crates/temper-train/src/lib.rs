//! temper-train: optimizers, learning-rate schedules, the training loop, checkpoints and resume,
//! and data parallelism over ranks (threads, processes over TCP, or GPUs over NCCL).

pub mod checkpoint;
pub mod collective;
pub mod error;
pub mod grad_sync;
pub mod in_process;
pub mod loss_scale;
pub mod nccl;
pub mod nccl_cuda;
pub mod nccl_lib;
pub mod optimizer;
pub mod rendezvous;
pub mod schedule;
pub mod shard;
pub mod tcp;
pub mod trainer;

pub use collective::{Collective, HostCollective, Single};
pub use error::{Result, TrainError};
pub use in_process::InProcess;
pub use loss_scale::LossScaler;
pub use nccl::{Nccl, NcclDevice};
pub use optimizer::{AdamW, AdamWConfig, Moment8, Moments, MIN_8BIT_SIZE};
pub use rendezvous::RendezvousConfig;
pub use schedule::{Schedule, ScheduleKind};
pub use tcp::Tcp;
pub use trainer::{
    eval_loss, train, train_eval, train_with, EvalEvery, EvalOptions, EvalReport, Observer, Silent,
    StepReport, TrainSettings, TrainSummary,
};
