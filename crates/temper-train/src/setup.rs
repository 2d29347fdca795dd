//! Setting a run up before its first step: the step counts and schedule its settings and
//! rows decide, the record a checkpoint keeps of them, and the weights and optimizer state
//! to start from (fresh, a PEFT adapter's, or a checkpoint's when resuming, refused when
//! the run differs from the one that wrote it). With several ranks, every rank must start
//! from the same settings, rows and weights.

use temper_core::Backend;
use temper_data::PackedRow;
use temper_model::{adapter, LoraConfig, LoraParams, Model};

use crate::checkpoint::{self, TrainerState};
use crate::dist::collective::Collective;
use crate::dist::shard::Shard;
use crate::error::{Result, TrainError};
use crate::eval::Best;
use crate::optimizer::AdamW;
use crate::schedule::Schedule;
use crate::trainer::{Observer, TrainSettings};

/// What a run's settings and rows decide before its first step.
pub(crate) struct Setup {
    pub shard: Shard,
    pub steps_per_epoch: u64,
    /// The steps the run is asked for (max_steps, or from num_train_epochs).
    pub total_steps: u64,
    pub schedule: Schedule,
    /// The data and batching, which a resumed run and every rank must share.
    pub fingerprint: String,
    /// The inputs a checkpoint records, so that a resumed run can tell what changed.
    pub recorded: TrainerState,
}

impl Setup {
    pub fn new<B: Backend>(
        rows: &[PackedRow],
        s: &TrainSettings,
        coll: &dyn Collective<B>,
    ) -> Result<Setup> {
        if rows.is_empty() {
            return Err(TrainError::Config(
                "the dataset produced no rows to train on".into(),
            ));
        }
        if s.micro_batch_size == 0 || s.grad_accum == 0 {
            return Err(TrainError::Config(
                "per_device_train_batch_size and gradient_accumulation_steps must be at least 1"
                    .into(),
            ));
        }
        let shard = Shard {
            rank: coll.rank(),
            world: coll.world(),
            micro: s.micro_batch_size,
            accum: s.grad_accum,
        };
        let steps_per_epoch = rows.len().div_ceil(shard.rows_per_step()) as u64;
        let total_steps = match s.max_steps {
            Some(n) if n > 0 => n,
            _ => ((s.epochs * steps_per_epoch as f64).ceil() as u64).max(1),
        };
        let warmup = s
            .warmup_steps
            .unwrap_or((s.warmup_ratio * total_steps as f64).ceil() as u64);
        let schedule = Schedule {
            kind: s.schedule,
            lr: s.learning_rate,
            warmup_steps: warmup,
            total_steps,
        };
        let mut fingerprint = format!(
            "rows={} mbs={} accum={} seed={}",
            rows.len(),
            s.micro_batch_size,
            s.grad_accum,
            s.seed
        );
        if shard.world > 1 {
            fingerprint.push_str(&format!(" world={}", shard.world));
        }
        let recorded = TrainerState {
            step: 0,
            total_steps,
            seed: s.seed,
            data_fingerprint: fingerprint.clone(),
            data_hash: Some(rows_hash(rows)),
            base_model: Some(s.base_fingerprint.clone()),
            optimizer: Some(s.optimizer_fingerprint()),
            best_step: None,
            best_eval_loss: None,
            evals_since_best: 0,
        };
        Ok(Setup {
            shard,
            steps_per_epoch,
            total_steps,
            schedule,
            fingerprint,
            recorded,
        })
    }
}

/// What every part of a run reads: the model, the settings, what set-up decided, the ranks.
pub(crate) struct Run<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub s: &'a TrainSettings,
    pub setup: Setup,
    pub coll: &'a dyn Collective<B>,
}

impl<B: Backend> Run<'_, B> {
    /// Rank 0 writes the files and tells the observer.
    pub fn lead(&self) -> bool {
        self.coll.rank() == 0
    }
}

/// Where training starts.
pub(crate) struct Start<B: Backend> {
    pub lora: LoraParams<B>,
    pub opt: AdamW<B>,
    /// Optimizer steps already taken (0, or the checkpoint's).
    pub step: u64,
    /// The evaluations so far (the checkpoint's when resuming).
    pub best: Best,
}

/// The weights and optimizer state to train from: `s.resume_from`'s checkpoint, else
/// `s.init_adapter`'s weights, else PEFT's initialisation. With several ranks, checks that
/// all start alike.
pub(crate) fn start<B: Backend>(
    run: &Run<'_, B>,
    rows: &[PackedRow],
    observer: &mut dyn Observer,
) -> Result<Start<B>> {
    let (model, s, setup) = (run.model, run.s, &run.setup);
    let be = &*model.be;
    let start = match &s.resume_from {
        Some(dir) => resume(run, dir, observer)?,
        None => {
            let lora = match &s.init_adapter {
                Some(dir) => start_from_adapter(be, model, &s.lora, dir)?,
                None => LoraParams::init(be, &model.cfg, &s.lora, s.seed)?,
            };
            let opt = AdamW::new(be, &lora, s.adamw)?;
            Start {
                lora,
                opt,
                step: 0,
                best: Best::default(),
            }
        }
    };
    if setup.shard.world > 1 {
        check_ranks_agree(run, &start.lora, rows, start.step)?;
    }
    Ok(start)
}

/// The checkpoint in `dir`, refused when this run differs from the one that wrote it (unless
/// `resume_changed`, and then rank 0 warns of the differences).
fn resume<B: Backend>(
    run: &Run<'_, B>,
    dir: &std::path::Path,
    observer: &mut dyn Observer,
) -> Result<Start<B>> {
    let (model, s, setup) = (run.model, run.s, &run.setup);
    let r = checkpoint::load(&*model.be, &model.cfg, dir, s.adamw)?;
    let changes = resume_changes(&r.state, &setup.recorded);
    if !changes.is_empty() {
        if !s.resume_changed {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                msg: format!(
                    "this run differs from the one that wrote the checkpoint: {}; \
                     resume with the same inputs, start afresh (--overwrite_output_dir), \
                     or pass --resume-changed to continue anyway",
                    changes.join("; ")
                ),
            });
        }
        if run.lead() {
            observer.on_warning(&format!(
                "warning: resuming {} with changes (--resume-changed): {}",
                dir.display(),
                changes.join("; ")
            ));
        }
    }
    if r.state.data_fingerprint != setup.fingerprint {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            msg: format!(
                "was made with data/batching `{}`, this run has `{}`; resume with the same data and batch settings",
                r.state.data_fingerprint, setup.fingerprint
            ),
        });
    }
    if r.lora.config != s.lora {
        return Err(TrainError::Checkpoint {
            path: dir.to_path_buf(),
            msg: "its LoRA settings differ from this run's; resume with the same lora_* keys"
                .into(),
        });
    }
    let best = match (r.state.best_step, r.state.best_eval_loss) {
        (Some(step), Some(loss)) => Some((step, loss)),
        _ => None,
    };
    Ok(Start {
        lora: r.lora,
        opt: r.opt,
        step: r.state.step,
        best: Best {
            best,
            evals_since_best: r.state.evals_since_best,
        },
    })
}

/// The weights of the PEFT adapter in `dir`, to train on from there: its r, alpha, scaling
/// and targets must be `lora`'s (dropout is a training setting and comes from `lora`).
fn start_from_adapter<B: Backend>(
    be: &B,
    model: &Model<B>,
    lora: &LoraConfig,
    dir: &std::path::Path,
) -> Result<LoraParams<B>> {
    let mut params = adapter::load(be, &model.cfg, dir)?;
    let a = &params.config;
    let same = a.r == lora.r
        && a.alpha == lora.alpha
        && a.use_rslora == lora.use_rslora
        && a.targets == lora.targets;
    if !same {
        return Err(TrainError::Config(format!(
            "init_adapter {}: the adapter has r {}, lora_alpha {}, use_rslora {}, targets {:?}; \
             the run asks for r {}, lora_alpha {}, use_rslora {}, targets {:?}: leave the lora \
             keys out to take the adapter's",
            dir.display(),
            a.r,
            a.alpha,
            a.use_rslora,
            a.targets,
            lora.r,
            lora.alpha,
            lora.use_rslora,
            lora.targets
        )));
    }
    params.config.dropout = lora.dropout;
    Ok(params)
}

/// One FNV-1a step over a 32-bit word: only equality of the hashes matters here.
fn fnv(h: u64, w: u32) -> u64 {
    (h ^ u64::from(w)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The FNV-1a offset basis.
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over 32-bit words of the rows (lengths, ids, labels): equal rows, equal hash.
fn rows_hash(rows: &[PackedRow]) -> String {
    let mut data = FNV_START;
    for r in rows {
        data = fnv(data, r.len() as u32);
        for (&id, &label) in r.input_ids.iter().zip(&r.labels) {
            data = fnv(fnv(data, id), label as u32);
        }
    }
    format!("{data:016x}")
}

/// What differs between a checkpoint's recorded inputs and this run's, as "name: was -> now".
fn resume_changes(state: &TrainerState, now: &TrainerState) -> Vec<String> {
    let mut out = Vec::new();
    for (name, was, is) in [
        (
            "the training data (tokenised rows)",
            &state.data_hash,
            &now.data_hash,
        ),
        ("the base model", &state.base_model, &now.base_model),
        ("the optimizer settings", &state.optimizer, &now.optimizer),
    ] {
        if let (Some(was), Some(is)) = (was, is) {
            if was != is && !is.is_empty() && !was.is_empty() {
                out.push(format!("{name}: `{was}` then, `{is}` now"));
            }
        }
    }
    out
}

/// Before the first step: every rank must train the same parameters on the same rows.
/// Rank 0's settings, a checksum of its rows and one of its parameters are broadcast and
/// compared.
fn check_ranks_agree<B: Backend>(
    run: &Run<'_, B>,
    lora: &LoraParams<B>,
    rows: &[PackedRow],
    start_step: u64,
) -> Result<()> {
    let (be, coll, setup) = (&*run.model.be, run.coll, &run.setup);
    let mut params = FNV_START;
    for p in &lora.params {
        for x in be.download(&p.value)? {
            params = fnv(params, x.to_bits());
        }
    }
    let data = rows_hash(rows);
    let mine = format!(
        "{} start={start_step} steps={} data={data} lora={params:016x}",
        setup.fingerprint, setup.total_steps
    );
    let mut theirs = mine.clone().into_bytes();
    coll.broadcast_bytes(&mut theirs)?;
    let differs = theirs != mine.as_bytes();
    // Every rank learns whether any differs, so all stop together.
    let mut count = [f64::from(u8::from(differs))];
    coll.all_reduce_f64(&mut count)?;
    if differs {
        return Err(TrainError::Distributed(format!(
            "rank {} would train `{mine}` but rank 0 trains `{}`: every rank must run the same config, data and checkpoint",
            coll.rank(),
            String::from_utf8_lossy(&theirs)
        )));
    }
    if count[0] > 0.0 {
        return Err(TrainError::Distributed(format!(
            "{} rank(s) would train other settings, data or parameters than rank {} (see their errors)",
            count[0],
            coll.rank()
        )));
    }
    Ok(())
}
