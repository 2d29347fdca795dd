//! `temper train CONFIG.yaml [--key value ...]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use temper_core::{Backend, CpuBackend, CudaBackend};
use temper_data::{PackedRow, Tokenizer};
use temper_model::Model;
use temper_train::Collective;

use crate::config;
use crate::dataset::prepare_quietly;
use crate::device::{self, mib, DeviceChoice};
use crate::dist::{self, DistBackend, Rank};
use crate::interrupt;
use crate::progress::Progress;

pub struct TrainArgs {
    pub config: Option<PathBuf>,
    pub overrides: Vec<(String, String)>,
    /// None: fresh run; Some(None): latest checkpoint in output_dir; Some(Some(p)): that one.
    pub resume: Option<Option<PathBuf>>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (file, base) = config::load(args.config.as_deref(), &args.overrides)?;
    let resolved_yaml = file.resolved_yaml(&base)?;
    let mut plan = file.resolve(&base, args.resume)?;
    plan.resolved_yaml = resolved_yaml;
    plan.model_dir = crate::model_source::resolve(&plan.model_dir)?;
    let rank = dist::from_env()?;
    // Rank 0 owns the output folder: it locks it and, for a fresh run, checks it is empty.
    let _lock = if rank.is_lead() {
        let dir = &plan.settings.output_dir;
        let lock = crate::output_dir::lock(dir)?;
        if plan.settings.resume_from.is_none() {
            crate::output_dir::check_fresh(dir, plan.overwrite_output_dir)?;
        }
        Some(lock)
    } else {
        None
    };
    let timeout = plan.dist_timeout;
    match device::resolve_on(&plan.device, &plan.dtype, rank.local_rank, rank.is_lead())? {
        DeviceChoice::Cpu => {
            let backend = plan.dist_backend;
            run_on(Arc::new(CpuBackend::new()), plan, &rank, |_| {
                if backend == DistBackend::Nccl {
                    bail!("dist_backend nccl needs --device cuda; on the CPU use dist_backend tcp (or auto)");
                }
                Ok(Box::new(dist::host_collective(&rank, timeout)?))
            })
        }
        DeviceChoice::Cuda(be) => {
            let backend = plan.dist_backend;
            run_on(be, plan, &rank, |be| match (backend, rank.world) {
                (DistBackend::Tcp, _) | (DistBackend::Auto, 1) => {
                    Ok(Box::new(dist::host_collective(&rank, timeout)?))
                }
                (DistBackend::Nccl | DistBackend::Auto, _) => cuda_nccl(be, &rank, timeout),
            })
        }
    }
}

/// NCCL on the CUDA backend, with the rendezvous connections as its control plane.
fn cuda_nccl(
    be: &CudaBackend,
    rank: &Rank,
    timeout: std::time::Duration,
) -> Result<Box<dyn Collective<CudaBackend>>> {
    let ctrl = dist::join(rank, timeout)?;
    let nccl = temper_train::Nccl::new(be, ctrl, timeout).with_context(|| {
        format!(
            "rank {}: starting NCCL on GPU {}",
            rank.rank, rank.local_rank
        )
    })?;
    Ok(Box::new(nccl))
}

/// Loads, prepares the data, joins the other ranks (`join` makes the collective), trains.
fn run_on<B: Backend + 'static>(
    be: Arc<B>,
    plan: config::TrainPlan,
    rank: &Rank,
    join: impl FnOnce(&B) -> Result<Box<dyn Collective<B>>>,
) -> Result<()> {
    let lead = rank.is_lead();
    let device = match be.name() {
        "cpu" => temper_model::plan::PlanDevice::Cpu,
        _ => temper_model::plan::PlanDevice::Cuda,
    };
    let (_, predicted) = crate::commands::plan::predict(&plan, be.compute_dtype(), device)?;
    if lead {
        eprintln!("{}", crate::commands::plan::memory_line(&predicted));
    }
    crate::commands::plan::check(&plan, &predicted)?;
    let t0 = Instant::now();
    let model = load_model(be.clone(), &plan)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Recorded in checkpoints: a resumed run must train the same base model.
    let mut plan = plan;
    plan.settings.base_fingerprint =
        temper_model::safetensors_dir::model_fingerprint(&plan.model_dir)
            .with_context(|| format!("reading model {}", plan.model_dir.display()))?;
    let tok = Tokenizer::from_dir(&plan.model_dir)?;
    let data = prepare_quietly(&tok, &plan.data, plan.max_seq_len, plan.packing, !lead)?;
    refuse_nothing_to_train(&data.inner.train_stats, plan.max_seq_len)?;
    let cfg = &model.cfg;
    let s = &plan.settings;
    if lead {
        for note in &plan.notes {
            eprintln!("{note}");
        }
        eprintln!(
            "model: {} ({} layers, hidden {}, {} heads / {} kv heads, vocab {}) loaded in {:.1}s",
            cfg.model_type, cfg.layers, cfg.hidden, cfg.heads, cfg.kv_heads, cfg.vocab, load_s
        );
        eprintln!(
            "lora: r {} alpha {} dropout {} on {} ({})",
            s.lora.r,
            s.lora.alpha,
            s.lora.dropout,
            s.lora
                .targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", "),
            if s.lora.use_rslora {
                "rsLoRA"
            } else {
                "alpha/r"
            }
        );
        if let (Some(dir), None) = (&s.init_adapter, &s.resume_from) {
            eprintln!("lora: starting from the adapter in {}", dir.display());
        }
    }
    // Joining comes after loading, so the wait covers only how far apart the ranks are.
    let coll = join(&be)?;
    if rank.world > 1 {
        // Each rank loads (and quantises) its own copy of the base: say how long each took.
        let mut loads = vec![0.0f64; rank.world];
        loads[rank.rank] = load_s;
        coll.all_reduce_f64(&mut loads)?;
        if lead {
            let each: Vec<String> = loads.iter().map(|t| format!("{t:.1}")).collect();
            eprintln!("ranks loaded the model in {} s", each.join(" / "));
        }
    }
    if lead && rank.world > 1 {
        eprintln!(
            "data parallel: {} ranks, {} rows per step ({} per rank x {} micro-batches x {} ranks)",
            rank.world,
            rank.world * s.micro_batch_size * s.grad_accum,
            s.micro_batch_size,
            s.grad_accum,
            rank.world
        );
    }
    // From here the first Ctrl-C stops training after the step, with a checkpoint.
    interrupt::install(lead);
    let probe = be.clone();
    let tensorboard = if lead && plan.tensorboard {
        let w = crate::tensorboard::EventWriter::create(&s.output_dir.join("runs"))?;
        eprintln!(
            "tensorboard: {} (tensorboard --logdir {})",
            w.path().display(),
            s.output_dir.join("runs").display()
        );
        Some(w)
    } else {
        None
    };
    let mut progress = Progress::new(
        plan.logging_steps,
        be.name(),
        Box::new(move || (probe.live_bytes(), probe.peak_bytes())),
    )
    .with_tensorboard(tensorboard);
    let eval_rows: &[PackedRow] = if plan.eval.every == temper_train::EvalEvery::Never {
        &[]
    } else {
        &data.inner.eval
    };
    let (lora, summary) = temper_train::train_eval(
        &model,
        &data.rows,
        eval_rows,
        s,
        &plan.eval,
        &mut progress,
        &*coll,
    )?;
    drop(progress);
    drop(coll);
    interrupt::set_finished();
    if !lead {
        return finish(summary.interrupted);
    }
    if summary.steps == 0 && !summary.interrupted {
        // A resumed run that was already finished: its metrics, eval and files are there.
        eprintln!(
            "nothing to train: the checkpoint is at step {}, {} this run's {} steps; raise \
             max_steps (or num_train_epochs) to train further",
            summary.start_step,
            if summary.start_step == summary.total_steps {
                "the last of"
            } else {
                "past"
            },
            summary.total_steps
        );
        eprintln!("adapter: {}", summary.adapter_dir.display());
        return Ok(());
    }
    eprintln!(
        "trained {} steps ({} trainable parameters) in {:.1}s; loss {:.4} -> {:.4}",
        summary.steps,
        lora.numel(),
        summary.elapsed_s,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.last_loss.unwrap_or(f64::NAN)
    );
    eprintln!("adapter: {}", summary.adapter_dir.display());
    if summary.interrupted {
        eprintln!(
            "interrupted: stopped after step {}; continue with `--resume`",
            summary.steps
        );
        crate::run_files::write_all(&plan, &tok, &summary, None);
        return finish(true);
    }
    let mut final_eval = None;
    if !data.inner.eval.is_empty() {
        let (loss, tokens) = temper_train::eval_after_training(
            &model,
            &lora,
            &data.inner.eval,
            s.micro_batch_size,
            &summary,
            &plan.eval,
            &s.output_dir,
        )?;
        eprintln!(
            "eval: loss {loss:.4} (perplexity {:.3}) over {tokens} tokens of {} rows",
            loss.exp(),
            data.inner.eval.len()
        );
        final_eval = Some(loss);
    }
    crate::run_files::write_all(&plan, &tok, &summary, final_eval);
    let managed = be.paged_managed_bytes();
    eprintln!(
        "peak memory: {:.1} MiB resident; {} backend peak {:.1} MiB{}",
        device::peak_rss_bytes().map(mib).unwrap_or(f64::NAN),
        be.name(),
        mib(be.peak_bytes() as u64),
        if managed > 0 {
            format!(
                " + {:.1} MiB of paged optimizer state in managed memory",
                mib(managed as u64)
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A run whose rows hold no trained token would take steps of zero loss and write an
/// untrained adapter: refuse it, saying where the trained tokens went.
fn refuse_nothing_to_train(st: &temper_data::Stats, max_seq_len: usize) -> Result<()> {
    if st.trained_tokens > 0 {
        return Ok(());
    }
    let mut why = Vec::new();
    if st.truncated_away > 0 {
        why.push(format!(
            "{} of {} sequences are longer than max_seq_len {max_seq_len} and lost every \
             trained token to truncation (their trained tokens come after token {max_seq_len}): \
             raise max_seq_len",
            st.truncated_away,
            st.sequences.max(st.truncated_away)
        ));
    }
    if st.dropped_fully_masked > 0 {
        why.push(format!(
            "{} sequences were dropped with nothing left to train after truncation to {max_seq_len} tokens: raise max_seq_len",
            st.dropped_fully_masked
        ));
    }
    if st.skipped > 0 {
        why.push(format!("{} rows were skipped as bad", st.skipped));
    }
    if why.is_empty() {
        why.push(
            "every label is masked: check assistant_only_loss / completion_only_loss and the data's roles"
                .into(),
        );
    }
    bail!(
        "the training data has no token to train on ({} rows read): {}",
        st.rows_read,
        why.join("; ")
    )
}

/// A run stopped by Ctrl-C exits with 130 once its checkpoint is written.
fn finish(interrupted: bool) -> Result<()> {
    if interrupted {
        std::process::exit(interrupt::EXIT_CODE);
    }
    Ok(())
}

/// The model as the plan asks, with `rope_scaling` applied over config.json's.
pub(crate) fn load_model<B: Backend>(be: Arc<B>, plan: &config::TrainPlan) -> Result<Model<B>> {
    let dir = &plan.model_dir;
    let mut cfg = temper_model::ModelConfig::from_dir(dir)
        .with_context(|| format!("loading model {}", dir.display()))?;
    if let Some(v) = &plan.rope_scaling {
        let before = cfg.max_positions;
        cfg.apply_rope_scaling(v, plan.max_seq_len)
            .map_err(|e| anyhow::anyhow!("rope_scaling: {e}"))?;
        eprintln!(
            "rope_scaling: {:?}; positions up to {} (max_position_embeddings {before})",
            cfg.rope_scaling, cfg.max_positions
        );
    }
    Model::load_configured(be, dir, cfg, &plan.load)
        .with_context(|| format!("loading model {}", dir.display()))
}
