//! `temper train CONFIG.yaml [--key value ...]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use temper_core::{Backend, CpuBackend};
use temper_data::Tokenizer;
use temper_model::Model;

use crate::config;
use crate::dataset::prepare;
use crate::device::{self, mib, DeviceChoice};
use crate::progress::Progress;

pub struct TrainArgs {
    pub config: Option<PathBuf>,
    pub overrides: Vec<(String, String)>,
    /// None: fresh run; Some(None): latest checkpoint in output_dir; Some(Some(p)): that one.
    pub resume: Option<Option<PathBuf>>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let (file, base) = config::load(args.config.as_deref(), &args.overrides)?;
    let mut plan = file.resolve(&base, args.resume)?;
    plan.model_dir = crate::model_source::resolve(&plan.model_dir)?;
    match device::resolve(&plan.device)? {
        DeviceChoice::Cpu => run_on(Arc::new(CpuBackend::new()), plan),
        DeviceChoice::Cuda(be) => run_on(be, plan),
    }
}

fn run_on<B: Backend>(be: Arc<B>, plan: config::TrainPlan) -> Result<()> {
    let t0 = Instant::now();
    let model = Model::load(be.clone(), &plan.model_dir)
        .with_context(|| format!("loading model {}", plan.model_dir.display()))?;
    let tok = Tokenizer::from_dir(&plan.model_dir)?;
    let data = prepare(&tok, &plan.data, plan.max_seq_len, plan.packing)?;
    let cfg = &model.cfg;
    eprintln!(
        "model: {} ({} layers, hidden {}, {} heads / {} kv heads, vocab {}) loaded in {:.1}s",
        cfg.model_type,
        cfg.layers,
        cfg.hidden,
        cfg.heads,
        cfg.kv_heads,
        cfg.vocab,
        t0.elapsed().as_secs_f64()
    );
    let s = &plan.settings;
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
    let mut progress = Progress::new(plan.logging_steps);
    let (lora, summary) = temper_train::train(&model, &data.rows, s, &mut progress)?;
    drop(progress);
    eprintln!(
        "trained {} steps ({} trainable parameters) in {:.1}s; loss {:.4} -> {:.4}",
        summary.steps,
        lora.numel(),
        summary.elapsed_s,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.last_loss.unwrap_or(f64::NAN)
    );
    eprintln!("adapter: {}", summary.adapter_dir.display());
    eprintln!(
        "peak memory: {:.1} MiB resident; {} backend peak {:.1} MiB",
        device::peak_rss_bytes().map(mib).unwrap_or(f64::NAN),
        be.name(),
        mib(be.peak_bytes() as u64)
    );
    Ok(())
}
